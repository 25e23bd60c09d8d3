"""The fingerprint of the schema objects ``schema.sql`` defines, as the database's catalog holds
them: what an open compares to decide whether the file must run again.

Why not the file's digest alone: the digest says which text ran last, not that what it made is
still there and still its own. An older release running its own ``schema.sql`` after this one (a
rolling deploy: an old worker starting late) puts back its function bodies and leaves this
release's digest in place; someone may drop an index (``jobs_idempotency``) or a table
(``queues``), or disable a trigger by hand. Each changes the fingerprint, so the next open by
this release runs the file again and records the fingerprint anew.

The fingerprint is the MD5 of the sorted definitions, as PostgreSQL prints them, of the file's
tables (every column: name, type, NOT NULL, default; every constraint), indexes, functions and
triggers (with whether each is enabled), and each table's persistence (ledger_run must stay
UNLOGGED: crash recovery emptying it is what it is for), all in the current schema. One query, a few
milliseconds; the names are read from the file's own ``CREATE`` statements, so a new object in
the file is covered without a list to keep.
"""

from __future__ import annotations

import re

_CREATED = re.compile(
    r"^\s*CREATE (?:OR REPLACE |UNIQUE |UNLOGGED )?(TABLE|INDEX|FUNCTION|TRIGGER) "
    r"(?:IF NOT EXISTS )?(\w+)",
    re.MULTILINE,
)

# The current schema by its exact name (``current_schema()::regnamespace`` reads the text as an
# unquoted name: ``Mixed_x`` became ``mixed_x``, another schema or none).
_HERE = "to_regnamespace(quote_ident(current_schema()))::oid"

_FINGERPRINT = """(SELECT md5(coalesce(string_agg(item, E'\\n' ORDER BY item), '')) FROM (
    SELECT 'column ' || c.relname || '.' || a.attname || ' ' ||
        format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE ''
        END || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') AS item
    FROM pg_class AS c
    JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE c.relnamespace = {here} AND c.relkind = 'r'
        AND c.relname = ANY({tables})
    UNION ALL
    SELECT 'table ' || c.relname || ' persistence ' || c.relpersistence::text
    FROM pg_class AS c
    WHERE c.relnamespace = {here} AND c.relkind = 'r' AND c.relname = ANY({tables})
    UNION ALL
    SELECT 'constraint ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
    FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid
    WHERE c.relnamespace = {here} AND c.relname = ANY({tables})
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(c.oid) FROM pg_class AS c
    WHERE c.relnamespace = {here} AND c.relkind = 'i'
        AND c.relname = ANY({indexes})
    UNION ALL
    SELECT 'function ' || pg_get_functiondef(p.oid) FROM pg_proc AS p
    WHERE p.pronamespace = {here} AND p.proname = ANY({functions})
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
    FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
    WHERE c.relnamespace = {here} AND NOT t.tgisinternal
        AND t.tgname = ANY({triggers})
) AS items)"""


def created_names(schema: str) -> dict[str, set[str]]:
    """The names of the tables, indexes, functions and triggers ``schema`` (a file's text)
    creates, by kind (``TABLE``, ``INDEX``, ``FUNCTION``, ``TRIGGER``)."""
    names: dict[str, set[str]] = {kind: set() for kind in ("TABLE", "INDEX", "FUNCTION", "TRIGGER")}
    for kind, name in _CREATED.findall(schema):
        names[kind].add(name)
    return names


def fingerprint_query(schema: str) -> str:
    """A scalar subquery (no parameters: it is appended to the file's own text too) giving the
    fingerprint of the objects ``schema`` (the file's text) creates."""
    names = created_names(schema)

    def array(kind: str) -> str:
        return "ARRAY[" + ", ".join(f"'{n}'" for n in sorted(names[kind])) + "]::name[]"

    return _FINGERPRINT.format(
        here=_HERE,
        tables=array("TABLE"),
        indexes=array("INDEX"),
        functions=array("FUNCTION"),
        triggers=array("TRIGGER"),
    )
