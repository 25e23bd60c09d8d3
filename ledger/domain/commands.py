"""Commands: what a caller asks the ledger to do, as msgspec Structs that validate themselves.

Each command's fields carry their constraints as types (`Int64`, `Name`, `Finite`, aware
datetimes), so ``msgspec.convert`` checks a call's arguments in one pass; `Command.checked` turns
its complaint into the ledger's own `InvalidArgument` naming the argument, and then runs the few
rules msgspec cannot state (valid Unicode text, JSON-native configs and payloads, time ranges).
All of it happens before any transaction starts, so bad input writes nothing.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Self

import msgspec
from msgspec import Meta

from ..errors import InvalidArgument
from . import events as ev
from . import validate as check
from .backoff import RetryPolicy
from .model import ACTIVITY_TYPES, EventType, JobStatus
from .timeutil import check_aware, seconds

Int64 = Annotated[int, Meta(ge=check.INT64_MIN, le=check.INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=check.INT64_MAX)]
Attempts = Annotated[int, Meta(ge=1, le=check.INT64_MAX)]
Name = Annotated[str, Meta(min_length=1)]
# NaN fails every comparison, so these bounds refuse NaN as well as the infinities.
Finite = Annotated[float, Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]
Aware = Annotated[datetime, Meta(tz=True)]
Duration = float | timedelta  # checked by `timeutil.seconds`: positive and not too long

_AT = re.compile(r"^(?P<why>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"field `(?P<name>[^`]+)`")


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every command. Build one with `checked`, never directly: that is where the
    arguments are validated."""

    _texts: ClassVar[tuple[str, ...]] = ()  # str fields whose Unicode validity must be checked

    @classmethod
    def checked(cls, where: str = "", /, **args: Any) -> Self:
        """The command for ``args``, or `InvalidArgument` naming the argument (prefixed with
        ``where``, such as ``specs[2].``) and what is wrong with it."""
        try:
            command = msgspec.convert(args, cls)
        except msgspec.ValidationError as e:
            raise _invalid(e, args, where) from None
        for name in cls._texts:
            check.text(where + name, getattr(command, name), optional=True)
        return command.refined(where)

    def refined(self, where: str) -> Self:
        """The rules msgspec cannot state; returns the command, normalised where needed."""
        return self


def _invalid(
    error: msgspec.ValidationError, args: Mapping[str, Any], where: str
) -> InvalidArgument:
    message = str(error)
    match = _AT.match(message)
    why, path = (match.group("why"), match.group("path")) if match else (message, None)
    if path:
        field = re.split(r"[.\[]", path[1:], maxsplit=1)[0]
    else:  # "Object contains unknown field `x`", "Object missing required field `x`"
        named = _FIELD.search(why)
        field = named.group("name") if named else ""
        why = why.replace("Object contains unknown", "unknown").replace("Object missing", "missing")
    name = (where + field) if field else (where.rstrip(".") or "arguments")
    return InvalidArgument(name, args.get(field), _plain(why))


# msgspec's wording of a complaint, and the ledger's (said as the rest of its errors say it).
_PLAIN: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), text)
    for pattern, text in (
        (r"^Expected `str` of length >= 1$", "must not be empty"),
        (
            r"^Expected `datetime` with a timezone component",
            "naive datetime; pass one with a timezone (UTC)",
        ),
        (r"^Expected `float` [<>]= .*", "must be a finite number (not NaN or infinity)"),
        (r"^Expected `int` >= (\S+).*", r"must be an int of at least \1"),
        (r"^Expected `int` <= (\S+).*", r"must be an int of at most \1 (it must fit in 64 bits)"),
        (r"^Expected `float \| duration`", "expected seconds (a number) or a timedelta"),
        (r"^Expected `int`", "expected an int"),
        (r"^Expected `str`", "expected a str"),
        (r"^Expected `float`", "expected a number"),
        (r"^Expected `bool`", "expected True or False"),
        (r"`(\w+)`", r"\1"),
    )
)


def _plain(why: str) -> str:
    for pattern, text in _PLAIN:
        why = pattern.sub(text, why, count=1)
    return why[:1].lower() + why[1:]


class CreateJob(Command, frozen=True, kw_only=True):
    chat_id: Int64
    config: Any
    thread_id: Int64 | None = None
    user_id: str | None = None
    queue: Name = "default"
    priority: Int64 = 0
    run_at: Aware | None = None
    max_attempts: Attempts = 1
    idempotency_key: Name | None = None

    _texts: ClassVar[tuple[str, ...]] = ("user_id", "queue", "idempotency_key")

    def refined(self, where: str) -> Self:
        check.json_value(where + "config", self.config)
        if self.run_at is None:
            return self
        return msgspec.structs.replace(self, run_at=check_aware(where + "run_at", self.run_at))

    def event(self) -> ev.JobCreated:
        return ev.JobCreated(
            chat_id=self.chat_id,
            config=self.config,
            thread_id=self.thread_id,
            user_id=self.user_id,
            queue=self.queue,
            priority=self.priority,
            run_at=self.run_at,
            max_attempts=self.max_attempts,
            idempotency_key=self.idempotency_key,
        )


CREATE_KEYS = frozenset(CreateJob.__struct_fields__)


def create_spec(index: int, spec: object) -> CreateJob:
    """One spec of `Ledger.create_jobs`: `create_job`'s arguments by name."""
    if not isinstance(spec, Mapping):
        raise InvalidArgument(f"specs[{index}]", spec, "expected a dict of create_job arguments")
    return CreateJob.checked(f"specs[{index}].", **spec)


class Claim(Command, frozen=True, kw_only=True):
    """``queues`` goes through `queues` (its errors say more than a type mismatch would)."""

    worker_id: Name
    lease: Duration

    _texts: ClassVar[tuple[str, ...]] = ("worker_id",)

    def refined(self, where: str) -> Self:
        return msgspec.structs.replace(self, lease=seconds("lease", self.lease))


class Heartbeat(Command, frozen=True, kw_only=True):
    job_id: str
    worker_id: Name | None = None
    attempt: Attempts | None = None
    lease: Duration | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "worker_id")

    def refined(self, where: str) -> Self:
        if self.lease is None:
            return self
        return msgspec.structs.replace(self, lease=seconds("lease", self.lease))


class Complete(Command, frozen=True, kw_only=True):
    job_id: str
    summary: str
    result_status: str = "success"
    cost_cents: Finite = 0.0
    duration_seconds: Count | None = None
    worker_id: Name | None = None
    attempt: Attempts | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "summary", "result_status", "worker_id")


class Fail(Command, frozen=True, kw_only=True):
    job_id: str
    error: str
    worker_id: Name | None = None
    attempt: Attempts | None = None
    retry: bool = True
    error_type: Name | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "error", "worker_id", "error_type")


class Cancel(Command, frozen=True, kw_only=True):
    job_id: str
    reason: str | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "reason")


class Release(Command, frozen=True, kw_only=True):
    job_id: str
    worker_id: Name
    attempt: Attempts | None = None
    reason: str | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "worker_id", "reason")


class LogActivity(Command, frozen=True, kw_only=True):
    """The type goes through `activity_type`; the payload through `validate.json_bytes`, which
    checks and encodes it once."""

    job_id: str
    expected_version: Count | None = None
    worker_id: Name | None = None
    attempt: Attempts | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "worker_id")


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


_ACTIVITY_BY_NAME: dict[object, EventType] = {t.value: t for t in ACTIVITY_TYPES}


def queues(names: Sequence[str] | None) -> tuple[str, ...] | None:
    """A claim's queue list: None (every queue) or a non-empty list of names."""
    if names is None:
        return None
    if isinstance(names, str):
        raise InvalidArgument("queues", names, "expected a list of queue names, not one string")
    if not isinstance(names, Sequence | set | frozenset):
        raise InvalidArgument("queues", names, "expected a list of queue names")
    checked = tuple(check.text("queue", name, nonempty=True) for name in names)
    if not checked:
        raise InvalidArgument("queues", names, "empty; pass None for every queue")
    return checked


def status(value: str) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError as e:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgument("status", value, f"unknown status; known: {known}") from e


def ledger_target(path: object) -> str:
    """What `Ledger` opens: a str or a path object (``pathlib.Path``), as text.

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
