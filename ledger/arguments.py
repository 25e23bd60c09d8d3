"""Turning the public API's arguments into checked values and events, before any transaction.

Kept apart from `core` so the command code reads as the state machine, and every rule about
what a caller may pass lives in one place (with `validate` for the generic checks).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from . import events as ev
from . import validate as check
from .backoff import RetryPolicy
from .errors import InvalidArgument
from .model import ACTIVITY_TYPES, EventType, JobStatus
from .timeutil import check_aware

CREATE_KEYS = frozenset(
    {
        "chat_id",
        "config",
        "thread_id",
        "user_id",
        "queue",
        "priority",
        "run_at",
        "max_attempts",
        "idempotency_key",
    }
)


def ledger_path(path: object) -> str:
    """The file name `Ledger` opens: a str or a path object (``pathlib.Path``), as text.

    APSW takes only str, and hands SQLite UTF-8: a bytes path, an embedded NUL or an
    undecodable name (a lone surrogate from ``os.fsdecode``) would fail inside APSW with a
    TypeError, ValueError or UnicodeEncodeError; refuse them here instead."""
    name = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(name, str):
        raise InvalidArgument(
            "path", path, "expected a str or a pathlib.Path naming the ledger file (or ':memory:')"
        )
    if "\0" in name:
        raise InvalidArgument("path", path, "contains a NUL character, which no file name can")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(
            "path", path, "not valid Unicode (SQLite takes UTF-8 file names); rename the file"
        ) from e
    return name


def ledger_options(clock: object, readonly: object, retry_policy: object, rng: object) -> None:
    """`Ledger`'s other arguments, checked before the file is opened."""
    if clock is not None and not callable(clock):
        raise InvalidArgument("clock", clock, "expected a callable returning an aware datetime")
    if not isinstance(readonly, bool):
        raise InvalidArgument("readonly", readonly, "expected True or False")
    if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
        raise InvalidArgument("retry_policy", retry_policy, "expected a ledger.RetryPolicy")
    if rng is not None and not isinstance(rng, random.Random):
        raise InvalidArgument("rng", rng, "expected a random.Random")


def created_event(args: dict[str, Any]) -> ev.JobCreated:
    run_at = args["run_at"]
    return ev.JobCreated(
        chat_id=check.integer("chat_id", args["chat_id"]),
        config=check.json_value("config", args["config"]),
        thread_id=check.integer("thread_id", args["thread_id"], optional=True),
        user_id=check.text("user_id", args["user_id"], optional=True),
        queue=check.text("queue", args["queue"], nonempty=True),
        priority=check.integer("priority", args["priority"]),
        run_at=None if run_at is None else check_aware("run_at", run_at),
        max_attempts=check.integer("max_attempts", args["max_attempts"], minimum=1),
        idempotency_key=check.text(
            "idempotency_key", args["idempotency_key"], optional=True, nonempty=True
        ),
    )


def spec(index: int, spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise InvalidArgument(f"specs[{index}]", spec, "expected a dict of create_job arguments")
    unknown = set(spec) - CREATE_KEYS
    if unknown:
        raise InvalidArgument(f"specs[{index}]", sorted(unknown), "unknown create_job arguments")
    for required in ("chat_id", "config"):
        if required not in spec:
            raise InvalidArgument(f"specs[{index}]", spec, f"missing {required!r}")
    defaults = dict(
        thread_id=None,
        user_id=None,
        queue="default",
        priority=0,
        run_at=None,
        max_attempts=1,
        idempotency_key=None,
    )
    return defaults | dict(spec)


def queues(queues: Sequence[str] | None) -> tuple[str, ...] | None:
    if queues is None:
        return None
    if isinstance(queues, str):
        raise InvalidArgument("queues", queues, "expected a list of queue names, not one string")
    names = tuple(check.text("queue", name, nonempty=True) for name in queues)
    if not names:
        raise InvalidArgument("queues", queues, "empty; pass None for every queue")
    return names


def status(value: str) -> str:
    try:
        return JobStatus(value).value
    except ValueError as e:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgument("status", value, f"unknown status; known: {known}") from e


_ACTIVITY_BY_NAME: dict[object, EventType] = {t.value: t for t in ACTIVITY_TYPES}


def activity_type(value: EventType | str) -> EventType:
    event_type = _ACTIVITY_BY_NAME.get(value) if isinstance(value, str) else None
    if event_type is None:
        allowed = ", ".join(sorted(t.value for t in ACTIVITY_TYPES))
        raise InvalidArgument(
            "type",
            value,
            f"log_event takes an activity type ({allowed}); "
            "lifecycle events come from their own calls (complete, fail, ...)",
        )
    return event_type
