-- ledger: the whole PostgreSQL schema (PostgreSQL 14 or newer: CREATE OR REPLACE TRIGGER).
--
-- Run this whole file as ONE transaction at READ COMMITTED (psycopg: one execute() of the file's
-- text with no parameters, then commit). It is idempotent: a start of a ledger runs it unless
-- the database records this very text's digest (ledger_schema.script_sha256) and the catalog
-- still holds what it made (ledger_schema.catalog_md5: ledger/backends/postgres/catalog.py).
-- Its first statement takes a transaction-scoped advisory lock, so several workers starting
-- together on an empty database run it one after another and all succeed (unlocked, concurrent
-- CREATE TABLE IF NOT EXISTS fails with a duplicate key in pg_type).
--
-- The laws (see DESIGN.md) that this file makes the database itself enforce:
--   * events are append-only: UPDATE, DELETE and TRUNCATE raise;
--   * positions are gap-free and in commit order: the insert trigger takes each position from
--     one counter row, whose row lock serialises appenders until they commit (a sequence would
--     hand out numbers that commit out of order, and a follower reading position > last_seen
--     would skip an event that commits late with a smaller number);
--   * per-job versions are gap-free: a version above the job's last + 1 raises, and
--     UNIQUE (job_id, version) refuses a stale one (SQLSTATE 23505: the backend's
--     ConcurrencyError);
--   * the job states are the JobStatus values, and running <=> a lease (CHECK constraints).
--
-- Upgrades: ledger_schema holds the version this file creates. A later version appends its
-- changes in a block guarded by "version < N" and raises the constant below; a database
-- written by a newer release is refused before anything is changed.

SELECT pg_advisory_xact_lock(1246512978, hashtext(current_schema()));  -- 0x4A4C4752 "JLGR"

CREATE TABLE IF NOT EXISTS ledger_schema (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    version integer NOT NULL CHECK (version >= 1)
);

DO $$
DECLARE
    found_version integer := (SELECT version FROM ledger_schema);
BEGIN
    IF found_version > 1 THEN
        RAISE EXCEPTION 'this ledger was written by a newer release (PostgreSQL schema %, this '
            'code knows up to 1); upgrade the jobledger package', found_version
            USING ERRCODE = 'feature_not_supported';
    END IF;
END
$$;


-- Upgrades add columns with this, not with a bare ALTER TABLE ... ADD COLUMN IF NOT EXISTS: that
-- takes the table's ACCESS EXCLUSIVE lock even when the column is there, so a ledger opening
-- while other processes read and claim would queue behind them and deadlock (measured: four
-- processes opening at once). The lock is taken only when the column is really missing.
CREATE OR REPLACE FUNCTION ledger_add_column(tab text, col text, spec text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass(quote_ident(tab)) AND attname = col AND NOT attisdropped
    ) THEN
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS %I %s', tab, col, spec);
    END IF;
END
$$;


-- Events -------------------------------------------------------------------------------------

-- data is json, not jsonb: json keeps the exact text (key order, duplicate keys, spacing,
-- number spelling), so what is read back equals what was written byte for byte, while the
-- database still refuses a payload that is not JSON and ->/->> work on it. jsonb reorders keys
-- and drops duplicates. Read it as text (data::text, or a text loader for json): psycopg would
-- otherwise parse it into Python objects.
-- recorded_at is timestamptz: microseconds, like the ledger's fixed-width ISO text, so the text
-- the ledger wrote comes back as the same instant and timeutil.to_db() of it gives the same
-- text. Sessions must use TimeZone = 'UTC': in another zone, 9999-12-31 23:59 UTC is year 10000
-- locally and psycopg cannot load it.
CREATE TABLE IF NOT EXISTS events (
    position bigint PRIMARY KEY CHECK (position >= 1),
    job_id text NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    type text NOT NULL,
    data json NOT NULL,
    recorded_at timestamptz NOT NULL,
    UNIQUE (job_id, version)
);
-- The chain hash of each event (ledger/domain/chain.py: SHA-256 hex over the previous hash and
-- the event), written by the appending transaction with the row; NULL for events written before
-- the chain existed (the chain covers them from the first append after the upgrade).
SELECT ledger_add_column('events', 'hash', 'text');

-- The last position handed out. Only the events insert triggers move it, once per INSERT onto
-- its last row, inside the appending transaction: a rolled-back append rolls the counter back
-- with it (no gap), and the row lock makes the next appender wait until this one commits
-- (commit order).
CREATE TABLE IF NOT EXISTS event_counter (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    last_position bigint NOT NULL CHECK (last_position >= 0)
);
-- A new log's counter at 0; a counter row deleted past its triggers comes back at the log's
-- head (its hash NULL: the insert trigger reads it from events, as below).
INSERT INTO event_counter (id, last_position)
    SELECT true, coalesce(max(position), 0) FROM events
    ON CONFLICT (id) DO NOTHING;
-- The chain hash of the event at last_position, moved with it by the insert trigger: an appender
-- reads the log's head (position and hash) from this one row as it locks it. Reading the hash
-- from events in the same statement (a join) is wrong at READ COMMITTED: a locker that waited
-- for the row gets its new version, but the join still sees the events of the statement's
-- older snapshot, so the hash came back NULL and the whole chain was hashed again while every
-- other appender waited (measured: ~1 rehash of the log per contended command). NULL for a
-- counter from before this column, or after an import of unhashed events: read from events.
SELECT ledger_add_column('event_counter', 'last_hash', 'text');

-- The chain hash (ledger/domain/chain.py, encoding version 1) of an event whose row names no hash:
-- SHA-256 over the previous hash, a header of position, version and the byte lengths, then the
-- job id, the type, the time in the ledger's canonical text and the data's exact JSON text.
-- verify recomputes every hash in Python, so this and chain.link cannot drift apart unseen.
CREATE OR REPLACE FUNCTION ledger_chain_link(
    previous bytea, pos bigint, job text, ver bigint, kind text, body text, at timestamptz
) RETURNS text
LANGUAGE sql STABLE AS $$
    -- One expression, no CTE: PostgreSQL inlines it into the trigger's UPDATE, whose plan
    -- PL/pgSQL keeps. With a CTE it ran as a function of its own, planned afresh for every
    -- event (about 85 us of server time an event against 9 inline, measured in a DO loop).
    SELECT encode(sha256(previous || int8send(pos) || int8send(ver)
        || int4send(octet_length(convert_to(job, 'UTF8')))
        || int4send(octet_length(convert_to(kind, 'UTF8')))
        || int4send(octet_length(convert_to(
            to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), 'UTF8')))
        || int8send(octet_length(convert_to(body, 'UTF8'))::bigint)
        || convert_to(job, 'UTF8') || convert_to(kind, 'UTF8')
        || convert_to(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'UTF8')
        || convert_to(body, 'UTF8')), 'hex')
$$;

-- Positions and hashes are handed out here, as each row is inserted, from the counter row: the
-- appending transaction locks that row at its first event and holds it until it commits, and
-- the ledger sends its events, its projection rows and the COMMIT together, so no other appender
-- waits on a round trip to the client (the client learns its positions after the commit, or
-- never: the jobs rows and the checkpoint take them from the log in SQL). A row that names its
-- position and hash (an import, or an older client that chains in Python) is checked and kept.
--
-- Within one INSERT statement the head (position and hash) is carried from row to row in the
-- transaction-local setting ledger.head, and the statement's AFTER trigger writes it to the
-- counter row once, and clears the setting: one UPDATE per statement, not per event. Updating
-- the one row per event cost about 25 us an event and grew with the batch (each update follows
-- the chain of the row's earlier versions in this transaction: 20,000 events took 10-14 s);
-- a 100-row INSERT took 13 ms of server time that way, 4 ms this way. The setting names the
-- transaction it belongs to (one set at session level, or by another transaction, is not
-- taken for a carried head) and the statement's first position, so the AFTER trigger checks
-- that every position handed out is a row inserted: an INSERT that skips a row after its
-- trigger ran (ON CONFLICT DO NOTHING) would leave a gap, and is refused. The counter's own
-- trigger checks that any other move lands on the log's last row (position and hash).
CREATE OR REPLACE FUNCTION ledger_events_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_version bigint;
    head bigint;
    head_hash text;
    first bigint;
    carried text[];
BEGIN
    IF NEW.version > 1 THEN  -- (a job's first event leaves no gap: its look is skipped)
        SELECT coalesce(max(version), 0) INTO last_version FROM events WHERE job_id = NEW.job_id;
        IF NEW.version > last_version + 1 THEN
            RAISE EXCEPTION 'job % is at version %: version % would leave a gap',
                NEW.job_id, last_version, NEW.version USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    -- ledger.head: "<transaction id> <first position> <head position> <head hash>"
    carried := string_to_array(current_setting('ledger.head', true), ' ');
    IF carried[1] IS DISTINCT FROM pg_current_xact_id()::text THEN  -- the statement's first row
        SELECT last_position, last_hash INTO head, head_hash FROM event_counter FOR UPDATE;
        IF head IS NULL THEN
            RAISE EXCEPTION 'event_counter has no row; open the ledger once with this release '
                '(not read-only): its schema run restores the row at the log''s head';
        END IF;
        IF head = 0 AND NEW.position > 1 AND EXISTS (
            SELECT FROM projection_checkpoints
                WHERE name = 'chain_start' AND position = NEW.position) THEN
            -- An empty log importing an export that began later (export_events(after)): it
            -- starts at the export's first position, and its chain at that event's hash, where
            -- the import recorded (first) that the chain starts. Only here: once the log holds
            -- an event, positions run on without gaps.
            head := NEW.position - 1;
        END IF;
        first := head + 1;
    ELSE
        first := carried[2]::bigint;
        head := carried[3]::bigint;
        head_hash := nullif(carried[4], '');
    END IF;
    head := head + 1;
    IF NEW.position IS NULL AND NEW.hash IS NULL THEN
        IF head > 1 AND head_hash IS NULL THEN
            RAISE EXCEPTION 'the hash of event % is unknown, so event % cannot chain onto it; '
                'open the ledger once with this release to record it', head - 1, head;
        END IF;
        NEW.hash := ledger_chain_link(
            CASE WHEN head = 1 THEN sha256(convert_to('jobledger event chain v1', 'UTF8'))
                ELSE decode(head_hash, 'hex') END,
            head, NEW.job_id, NEW.version, NEW.type, NEW.data::text, NEW.recorded_at);
    END IF;
    -- An import may name the positions it expects; they must be the ones the counter gives.
    IF NEW.position IS NOT NULL AND NEW.position <> head THEN
        RAISE EXCEPTION 'event position % given, but the next position is %', NEW.position, head
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.position := head;
    PERFORM set_config('ledger.head',
        pg_current_xact_id()::text || ' ' || first || ' ' || head || ' ' || coalesce(NEW.hash, ''),
        true);
    RETURN NEW;
END
$$;

-- The statement's head, carried by its rows (above), written to the counter row once, after a
-- check that each position handed out is a row of the statement's.
CREATE OR REPLACE FUNCTION ledger_events_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    carried text[] := string_to_array(current_setting('ledger.head', true), ' ');
    rows bigint;
    last bigint;
BEGIN
    IF carried[1] IS DISTINCT FROM pg_current_xact_id()::text THEN
        RETURN NULL;  -- no row of this statement was handed a position
    END IF;
    SELECT count(*), max(position) INTO rows, last FROM added;
    IF rows <> carried[3]::bigint - carried[2]::bigint + 1
        OR last IS DISTINCT FROM carried[3]::bigint THEN
        RAISE EXCEPTION 'this INSERT skipped events after their positions were handed out '
            '(ON CONFLICT DO NOTHING, or a trigger that drops rows): positions % to % would '
            'hold % events, a gap; insert events without skipping any', carried[2], carried[3],
            rows USING ERRCODE = 'check_violation';
    END IF;
    UPDATE event_counter
        SET last_position = carried[3]::bigint, last_hash = nullif(carried[4], '');
    PERFORM set_config('ledger.head', '', true);
    RETURN NULL;
END
$$;

-- A command on a job this process wrote last decides on the row as it wrote it, kept in memory
-- with the row's xmin (the transaction that wrote that version of it), instead of reading it
-- back first: a round trip saved. Its transaction's first statement then locks the row, still
-- at that version and that xmin, or raises here, and the command runs again on the row as it
-- is (SQLSTATE 40001: a serialization failure, which the backend runs again as it does a
-- deadlock). ``locked``: how many rows the lock took (0 or 1). An xmin names one transaction
-- only within 2^31 transactions of it (the 32-bit id wraps around), and a server that lost
-- acknowledged commits (a crash at synchronous_commit off, a failover, a restore) hands their
-- ids out again. So the row also came with the writer's 64-bit transaction id (``written``)
-- and the server's run: 2^31 transactions since, or another run, and the row is read again.
--
-- The run is the server's start (``started``, epoch seconds, checked here) and the token in
-- ledger_run, an UNLOGGED table (checked by the guard's lock itself: the row is locked only
-- where the token is the one the row came with, `jobs_table.guard_statement`). The start
-- changes with a restart, a failover's new server and a restore into another cluster; it does
-- not with recovery from a crash (the postmaster stays). The token does: crash recovery empties
-- every unlogged table, as does a promotion (a standby holds no unlogged rows) and a restore
-- from a physical backup. A crash also ends the writer's connection, and the backend forgets
-- every row when it reconnects; the token covers a client that is not told (a transaction-mode
-- pooler reconnecting for it). A clean restart keeps the token, but loses no commit either, and
-- the start changes anyway. This function is as the release before the token left it, so
-- processes of both releases can share a database during a rolling deploy.
CREATE OR REPLACE FUNCTION ledger_expect_row(locked bigint, job text, written text, started text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF locked = 0 OR extract(epoch FROM pg_postmaster_start_time()) <> started::numeric
        OR pg_current_xact_id()::text::numeric - written::numeric >= 2147483648 THEN
        RAISE EXCEPTION 'job % changed since this process last wrote it (another process or '
            'connection wrote it, or the server restarted); the command runs again on the row '
            'as it is now', job USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;

CREATE UNLOGGED TABLE IF NOT EXISTS ledger_run (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row, or none after a crash
    token text NOT NULL
);
-- Made logged by hand, crash recovery would keep its token. Only then: ALTER TABLE takes the
-- table's ACCESS EXCLUSIVE lock even when it is unlogged already, and a ledger opening while
-- other processes write (their RETURNING reads ledger_run) deadlocked with them (six processes
-- opening an empty database together, tests/backends/postgres/test_processes.py).
DO $$
BEGIN
    IF (SELECT relpersistence FROM pg_class WHERE oid = to_regclass('ledger_run')) <> 'u' THEN
        ALTER TABLE ledger_run SET UNLOGGED;
    END IF;
END
$$;

-- ledger_run's token, made where there is none (the first write that keeps its row after a
-- crash; concurrent ones agree, on the primary key). Called only then: the write reads the
-- table itself first (`combined._RETURNING`).
CREATE OR REPLACE FUNCTION ledger_run_token() RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_run (token) VALUES (gen_random_uuid()::text) ON CONFLICT (id) DO NOTHING;
    RETURN (SELECT token FROM ledger_run);
END
$$;

CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: % is not allowed', TG_ARGV[0], TG_OP;
END
$$;

CREATE OR REPLACE FUNCTION ledger_counter_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The one other change: recording the head's hash where it was unknown (a counter from
    -- before last_hash, or after an import of unhashed events). A wrong one is no hole: the
    -- next event chains onto it, and verify finds that event's hash wrong.
    IF NEW.last_position = OLD.last_position AND NEW.id = OLD.id AND OLD.last_hash IS NULL
        AND NEW.last_hash IS NOT NULL THEN
        RETURN NEW;
    END IF;
    -- Forward, onto the log's last row as it now is (an insert statement's AFTER trigger moves
    -- it past that statement's rows): the positions handed out left no gap and no skip.
    IF NEW.id <> OLD.id OR NEW.last_position <= OLD.last_position OR NOT EXISTS (
        SELECT FROM events WHERE position = NEW.last_position
            AND hash IS NOT DISTINCT FROM NEW.last_hash)
        OR EXISTS (SELECT FROM events WHERE position > NEW.last_position) THEN
        RAISE EXCEPTION 'event_counter moves forward onto the log''s last event only (from % to %)',
            OLD.last_position, NEW.last_position;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER events_before_insert BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_events_before_insert();
CREATE OR REPLACE TRIGGER events_after_insert AFTER INSERT ON events
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_after_insert();
CREATE OR REPLACE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change('events are append-only');
CREATE OR REPLACE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change('events are append-only');
CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change('events are append-only');
-- The WHEN clause lets an insert statement's one move through without calling the function
-- (about 40 us of server time a statement): from a trigger (a hand-typed UPDATE runs at depth
-- 0), forward, to the head this transaction's rows carried (the insert trigger sets
-- ledger.head as it hands each position out); anything else is the function's to judge.
CREATE OR REPLACE TRIGGER event_counter_forward BEFORE UPDATE ON event_counter
    FOR EACH ROW WHEN (NOT (pg_trigger_depth() > 0 AND NEW.id = OLD.id
        AND NEW.last_position > OLD.last_position
        AND current_setting('ledger.head', true) = pg_current_xact_id()::text || ' '
            || split_part(current_setting('ledger.head', true), ' ', 2) || ' '
            || NEW.last_position::text || ' ' || coalesce(NEW.last_hash, '')))
    EXECUTE FUNCTION ledger_counter_before_update();
CREATE OR REPLACE TRIGGER event_counter_no_delete BEFORE DELETE ON event_counter
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change('event_counter only moves forward');
CREATE OR REPLACE TRIGGER event_counter_no_truncate BEFORE TRUNCATE ON event_counter
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change('event_counter only moves forward');


-- Projections --------------------------------------------------------------------------------

-- The jobs projection: the columns of projections/jobs.py, typed. Integers are bigint (the
-- ledger accepts int64), times timestamptz, config text (its exact JSON text: jsonb would
-- reorder it). The status list is JobStatus; a test compares the two.
CREATE TABLE IF NOT EXISTS jobs (
    id text PRIMARY KEY,
    chat_id bigint NOT NULL,
    thread_id bigint,
    user_id text,
    config text NOT NULL,
    status text NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    worker_id text,
    started_at timestamptz,
    completed_at timestamptz,
    result_summary text,
    result_status text,
    cost_cents double precision,
    duration_seconds bigint,
    error_message text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version bigint NOT NULL,
    queue text NOT NULL,
    priority bigint NOT NULL,
    run_at timestamptz NOT NULL,
    attempts bigint NOT NULL,
    max_attempts bigint NOT NULL,
    lease_expires_at timestamptz,
    idempotency_key text,
    created_position bigint NOT NULL,
    lease_seconds double precision,
    CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
);

-- The same indexes as on SQLite, each serving one query; the partial ones stay as small as the
-- live set. Claim: SELECT ... WHERE status = 'pending' AND run_at <= $now [AND queue = ANY($q)]
-- ORDER BY priority DESC, created_at, created_position FOR UPDATE SKIP LOCKED LIMIT 1.
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs
    (priority DESC, created_at, created_position, queue, run_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_expires_at) WHERE status = 'running';
-- jobs_status leaves running jobs out: jobs_lease holds them, and a claim or a complete no
-- longer moves a job's entry between two status regions of this index. The index of an older
-- release (every job, no predicate) is replaced in place (the projection keeps its version).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('jobs_status')
               AND indpred IS NULL) THEN
        DROP INDEX jobs_status;
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at, created_position)
    WHERE status <> 'running';
CREATE INDEX IF NOT EXISTS jobs_chat ON jobs (chat_id, created_at, created_position);
-- A chat's latest finished jobs (the summary's three) from its newest ends, not a sort of its
-- whole history (SQLite's jobs_chat_status serves the same reads; here the planner, with its
-- statistics, takes one chat's running jobs from jobs_lease or jobs_chat). Pending jobs are left
-- out, so a create writes no entry here.
CREATE INDEX IF NOT EXISTS jobs_chat_ended ON jobs
    (chat_id, completed_at DESC NULLS LAST, created_position DESC) WHERE status <> 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Added by the async/worker issue (projection schema 2): the handler's result (its JSON text)
-- and the job's timeout. ADD COLUMN IF NOT EXISTS so an existing database upgrades in place.
SELECT ledger_add_column('jobs', 'result_json', 'text');
SELECT ledger_add_column('jobs', 'timeout_seconds', 'double precision');
-- Added by subagent trees and budgets (projection schema 3): the parent job, the most a job may
-- spend (its claim reserves it), and the cost of the job with all its descendants.
SELECT ledger_add_column('jobs', 'parent_id', 'text');
SELECT ledger_add_column('jobs', 'max_cost_cents', 'double precision');
SELECT ledger_add_column('jobs', 'subtree_cost_cents', 'double precision NOT NULL DEFAULT 0');
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id, created_at, created_position)
    WHERE parent_id IS NOT NULL;
-- Added by instant local rescue (projection schema 4): where a running job's holder runs (host,
-- boot id, pid, process start time), so a claim on that host sees when the holder is gone.
SELECT ledger_add_column('jobs', 'holder_host', 'text');
SELECT ledger_add_column('jobs', 'holder_boot_id', 'text');
SELECT ledger_add_column('jobs', 'holder_pid', 'bigint');
SELECT ledger_add_column('jobs', 'holder_start', 'bigint');

-- The budgets projection (projections/budgets.py): one row per chat whose budget was set (its
-- stream 'chat:<id>' in events). A claim locks its chat's row FOR UPDATE and keeps to the limit.
CREATE TABLE IF NOT EXISTS budgets (
    chat_id bigint PRIMARY KEY,
    limit_cents double precision,
    changed_at timestamptz NOT NULL,
    version bigint NOT NULL
);

-- The queues projection (projections/queues.py): one row per queue an operator paused or
-- resumed (its stream 'queue:<name>' in events). The claim query skips the jobs of a paused one.
CREATE TABLE IF NOT EXISTS queues (
    queue text PRIMARY KEY,
    paused boolean NOT NULL,
    by text,
    reason text,
    changed_at timestamptz NOT NULL,
    version bigint NOT NULL
);

-- Per projection: the last position applied and the projection's schema version, so replay
-- rebuilds after a projection changes and a catch-up starts where it stopped.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name text PRIMARY KEY,
    schema_version integer NOT NULL,
    position bigint NOT NULL
);


-- Wake-ups -----------------------------------------------------------------------------------

-- NOTIFY lives here, in triggers, not in the backend's code: it is then part of the very
-- transaction that appends or makes a job claimable, so it is delivered at commit and never for
-- a rolled-back command; every path that writes (commands, the lease rescuer, replay, import,
-- hand-typed SQL) wakes the waiters, and none can forget to. PostgreSQL folds identical
-- notifications of one transaction into one, so a replay that requeues thousands of jobs sends
-- one per queue.
--
-- A notification is a hint, never the data: listeners re-read (position > last_seen, or a
-- claim), and poll as a fallback. Channels are per database, so ledgers in several schemas of
-- one database wake each other spuriously; that is harmless.
--
-- ledger_events: payload = the highest position the INSERT statement appended.
-- ledger_jobs: payload = the queue of a job that became pending (created, retried, released,
-- rescued, or its run_at moved); '' when the queue name is too long for a payload (8000 bytes):
-- wake for any queue.
CREATE OR REPLACE FUNCTION ledger_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    head bigint := (SELECT max(position) FROM appended);
BEGIN
    IF head IS NOT NULL THEN
        PERFORM pg_notify('ledger_events', head::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION ledger_notify_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'ledger_jobs', CASE WHEN octet_length(NEW.queue) < 8000 THEN NEW.queue ELSE '' END
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_notify_events();
CREATE OR REPLACE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION ledger_notify_jobs();
CREATE OR REPLACE TRIGGER jobs_notify_update AFTER UPDATE ON jobs
    FOR EACH ROW WHEN (
        NEW.status = 'pending'
        AND (OLD.status <> 'pending' OR OLD.run_at IS DISTINCT FROM NEW.run_at)
    )
    EXECUTE FUNCTION ledger_notify_jobs();


-- The SHA-256 of this file's text and the fingerprint of the catalog objects it made, both
-- recorded by the code that runs it (after this file, in the same transaction): an open finding
-- its own text's digest here and the catalog as recorded skips the file, whose DDL takes table
-- locks that other processes' writes conflict with.
SELECT ledger_add_column('ledger_schema', 'script_sha256', 'text');
SELECT ledger_add_column('ledger_schema', 'catalog_md5', 'text');

-- The version this file leaves behind.
INSERT INTO ledger_schema (id, version) VALUES (true, 1)
    ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version
    WHERE ledger_schema.version < EXCLUDED.version;
