"""Commands: what a caller asks the ledger to do, as msgspec Structs that validate themselves.

Each command's fields carry their constraints as types (`Int64`, `Name`, `Finite`, aware
datetimes), so ``msgspec.convert`` checks a call's arguments in one pass; `Command.checked` turns
its complaint into the ledger's own `InvalidArgument` naming the argument, and then runs the few
rules msgspec cannot state (valid Unicode text, JSON-native configs and payloads, time ranges).
All of it happens before any transaction starts, so bad input writes nothing.
"""

from __future__ import annotations

import operator
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, NoReturn, Self

import msgspec
from msgspec import Meta

from ..errors import InvalidArgument
from . import events as ev
from . import validate as check
from .backoff import RetryPolicy
from .model import ACTIVITY_TYPES, EventType, JobStatus
from .state import JobState
from .timeutil import MAX_SECONDS, check_aware, seconds

Int64 = Annotated[int, Meta(ge=check.INT64_MIN, le=check.INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=check.INT64_MAX)]
Attempts = Annotated[int, Meta(ge=1, le=check.INT64_MAX)]
Name = Annotated[str, Meta(min_length=1)]
# A name the storage indexes (queue, idempotency key, parent id, worker id): `validate.key`.
Key = Annotated[str, Meta(min_length=1, max_length=check.MAX_KEY_LENGTH)]
# NaN fails every comparison, so these bounds refuse NaN as well as the infinities.
Finite = Annotated[float, Meta(ge=-1.7976931348623157e308, le=1.7976931348623157e308)]
Aware = Annotated[datetime, Meta(tz=True)]
Cents = Finite  # an amount of cents; `cents` refuses a negative one


def cents(name: str, value: float | None) -> float | None:
    """An amount of cents as a float, refusing a negative one (NaN and infinity are refused by
    the `Finite` type before). ``-0.0`` becomes ``0.0``: a REAL column reads it back so, and a
    command's answer must equal what a read of the job returns."""
    if value is None:
        return None
    if value < 0:
        raise InvalidArgument(name, value, "must not be negative (an amount of cents, 0 or more)")
    return float(value) + 0.0


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
        texts = _TEXT_GETTERS.get(cls) or _text_getter(cls)
        for value in texts(command):
            # the common case, checked here without a call: None, or plain ASCII of sane length
            if value is not None and not (
                type(value) is str and value.isascii() and len(value) <= check.MAX_PAYLOAD_BYTES
            ):
                for name in cls._texts:  # the careful way, naming the argument
                    check.text(where + name, getattr(command, name), optional=True)
                break
        return command.refined(where)

    def refined(self, where: str) -> Self:
        """The rules msgspec cannot state; returns the command, normalised where needed."""
        return self


_TEXT_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _text_getter(cls: type[Command]) -> Callable[[Any], tuple[Any, ...]]:
    """A command class's `_texts` values in one call (`operator.attrgetter`, made once)."""
    names = cls._texts
    if len(names) > 1:
        getter: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)
    elif names:
        only = names[0]
        getter = lambda command: (getattr(command, only),)  # noqa: E731
    else:
        getter = lambda command: ()  # noqa: E731
    _TEXT_GETTERS[cls] = getter
    return getter


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
        (r"^Expected `str` of length <= \d+$", check.TOO_LONG),
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
    queue: Key = "default"
    priority: Int64 = 0
    run_at: Aware | None = None
    max_attempts: Attempts = 1
    idempotency_key: Key | None = None
    timeout: Duration | None = None
    parent_id: Key | None = None
    max_cost_cents: Cents | None = None
    by: str | None = None  # the operator who enqueued it

    _texts: ClassVar[tuple[str, ...]] = ("user_id", "queue", "idempotency_key", "parent_id", "by")

    def refined(self, where: str) -> Self:
        # Encoded once, here, by the JSON-native rule: the event carries the bytes into the log
        # and the fold into the row's config, as they are (a `msgspec.Raw` encodes as itself).
        config = msgspec.Raw(check.json_bytes(where + "config", self.config))
        changes: dict[str, Any] = {"config": config}
        if self.max_cost_cents is not None:
            changes["max_cost_cents"] = cents(where + "max_cost_cents", self.max_cost_cents)
        if self.timeout is not None:
            changes["timeout"] = seconds(where + "timeout", self.timeout)
        if self.run_at is not None:
            changes["run_at"] = check_aware(where + "run_at", self.run_at)
        return msgspec.structs.replace(self, **changes)

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
            timeout=None if self.timeout is None else float(self.timeout),  # type: ignore[arg-type]
            parent_id=self.parent_id,
            max_cost_cents=None if self.max_cost_cents is None else float(self.max_cost_cents),
            by=self.by,
        )


CREATE_KEYS = frozenset(CreateJob.__struct_fields__)


def create_spec(index: int, spec: object) -> CreateJob:
    """One spec of `Ledger.create_jobs`: `create_job`'s arguments by name."""
    if not isinstance(spec, Mapping):
        raise InvalidArgument(f"specs[{index}]", spec, "expected a dict of create_job arguments")
    return CreateJob.checked(f"specs[{index}].", **spec)


class Claim(Command, frozen=True, kw_only=True):
    """``queues`` goes through `queues` (its errors say more than a type mismatch would)."""

    worker_id: Key
    lease: Duration

    _texts: ClassVar[tuple[str, ...]] = ("worker_id",)

    def refined(self, where: str) -> Self:
        lease = self.lease
        if type(lease) is float and 0 < lease < MAX_SECONDS:  # as `seconds` returns it
            return self
        return msgspec.structs.replace(self, lease=seconds("lease", lease))


class Heartbeat(Command, frozen=True, kw_only=True):
    job_id: str
    worker_id: Key | None = None
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
    worker_id: Key | None = None
    attempt: Attempts | None = None
    result: Any = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "summary", "result_status", "worker_id")

    def refined(self, where: str) -> Self:
        if self.result is None:
            return self
        # Encoded once, by the JSON-native rule payloads follow; the event carries the bytes.
        encoded = msgspec.Raw(check.json_bytes(where + "result", self.result))
        return msgspec.structs.replace(self, result=encoded)


class RecordStep(Command, frozen=True, kw_only=True):
    """A durable step's result (`JobContext.step`), fenced by the worker and its attempt."""

    job_id: str
    name: Name
    worker_id: Key
    attempt: Attempts
    result: Any = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "name", "worker_id")

    def refined(self, where: str) -> Self:
        encoded = msgspec.Raw(check.json_bytes(where + "result", self.result))
        return msgspec.structs.replace(self, result=encoded)


class Fail(Command, frozen=True, kw_only=True):
    job_id: str
    error: str
    worker_id: Key | None = None
    attempt: Attempts | None = None
    retry: bool = True
    error_type: Name | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "error", "worker_id", "error_type")


class Cancel(Command, frozen=True, kw_only=True):
    job_id: str
    reason: str | None = None
    cascade: bool = True  # cancel the pending and running descendants too
    by: str | None = None  # the operator who acted

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "reason", "by")


class Retry(Command, frozen=True, kw_only=True):
    """An operator's retry of one failed or cancelled job."""

    job_id: str
    by: str | None = None
    reason: str | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "by", "reason")


class RetryFailed(Command, frozen=True, kw_only=True):
    """Retry every failed job (of ``queue``; finished at or after ``since``)."""

    queue: Key | None = None
    since: Aware | None = None
    by: str | None = None

    _texts: ClassVar[tuple[str, ...]] = ("queue", "by")


def failed_since(state: JobState, since: datetime | None) -> bool:
    """Whether a failed job is one `RetryFailed` with ``since`` takes."""
    return since is None or (state.completed_at is not None and state.completed_at >= since)


class QueueAction(Command, frozen=True, kw_only=True):
    """Pause or resume a queue."""

    queue: Key
    by: str | None = None
    reason: str | None = None

    _texts: ClassVar[tuple[str, ...]] = ("queue", "by", "reason")


class Charge(Command, frozen=True, kw_only=True):
    """Spending on a running job; ``detail`` is any JSON-native value (what was bought)."""

    job_id: str
    cents: Cents
    detail: Any = None
    worker_id: Key | None = None
    attempt: Attempts | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "worker_id")

    def refined(self, where: str) -> Self:
        check.json_value(where + "detail", self.detail)
        return msgspec.structs.replace(self, cents=cents(where + "cents", self.cents))


class SetBudget(Command, frozen=True, kw_only=True):
    chat_id: Int64
    cents: Cents | None

    def refined(self, where: str) -> Self:
        return msgspec.structs.replace(self, cents=cents(where + "cents", self.cents))


class Release(Command, frozen=True, kw_only=True):
    job_id: str
    worker_id: Key
    attempt: Attempts | None = None
    reason: str | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "worker_id", "reason")


class LogActivity(Command, frozen=True, kw_only=True):
    """The type goes through `activity_type`; the payload through `validate.json_bytes`, which
    checks and encodes it once."""

    job_id: str
    expected_version: Count | None = None
    worker_id: Key | None = None
    attempt: Attempts | None = None

    _texts: ClassVar[tuple[str, ...]] = ("job_id", "worker_id")


def activity_type(value: EventType | str, name: str = "type") -> EventType:
    event_type = _ACTIVITY_BY_NAME.get(value) if isinstance(value, str) else None
    if event_type is None:
        allowed = ", ".join(sorted(t.value for t in ACTIVITY_TYPES))
        raise InvalidArgument(
            name,
            value,
            f"log_event and log_events take an activity type ({allowed}); "
            "lifecycle events come from their own calls (complete, fail, ...)",
        )
    return event_type


# The most events one `log_events` call appends. Its transaction holds the log's head from its
# first insert to its COMMIT, so every other append waits for the whole batch (on PostgreSQL
# the insert trigger's work grows with it: 1,000 events took 0.1 s, 20,000 took 10-14 s).
MAX_LOG_EVENTS = 1_000


def activities(events: Any) -> list[tuple[EventType, msgspec.Raw]]:
    """`log_events`' list of ``(type, payload)`` pairs, each checked as `log_event` checks its
    two arguments and its payload encoded once (the event carries the bytes into the log); a
    refusal names the pair (``events[3].payload``) and nothing is written. At most
    `MAX_LOG_EVENTS` pairs."""
    if isinstance(events, str | bytes | Mapping) or not isinstance(events, Iterable):
        raise InvalidArgument("events", events, "expected a list of (type, payload) pairs")
    length = _length(events) if isinstance(events, Sized) else 0
    if length > MAX_LOG_EVENTS:
        _too_many(f"{length} pairs")
    checked = []
    for i, pair in enumerate(events):
        if i == MAX_LOG_EVENTS:
            _too_many(f"more than {MAX_LOG_EVENTS} pairs")
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidArgument(
                f"events[{i}]", pair, "expected a (type, payload) pair, such as ('progress', {})"
            )
        event_type = activity_type(pair[0], f"events[{i}].type")
        payload = msgspec.Raw(check.json_bytes(f"events[{i}].payload", pair[1]))
        checked.append((event_type, payload))
    return checked


def _length(items: Sized) -> int:
    """``len(items)``, or 0 where its ``__len__`` fails (then the pairs are counted as drawn)."""
    try:
        return len(items)
    except Exception:
        return 0


def _too_many(shown: str) -> NoReturn:
    raise InvalidArgument(
        "events",
        shown,
        f"log_events takes at most {MAX_LOG_EVENTS:,} events (the log's head is held until "
        "they commit, and every other append waits); split them over several calls",
    )


_ACTIVITY_BY_NAME: dict[object, EventType] = {t.value: t for t in ACTIVITY_TYPES}


def queues(names: Sequence[str] | None) -> tuple[str, ...] | None:
    """A claim's queue list: None (every queue) or a non-empty list of names."""
    if names is None:
        return None
    if isinstance(names, str):
        raise InvalidArgument("queues", names, "expected a list of queue names, not one string")
    if not isinstance(names, Sequence | set | frozenset):
        raise InvalidArgument("queues", names, "expected a list of queue names")
    checked = tuple(check.key("queue", name) for name in names)
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
