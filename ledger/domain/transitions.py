"""The one table of legal transitions of a job's state.

`decide` checks every command against `TRANSITIONS` before it emits an event, `evolve` moves a
job only to a state the table allows for the event's command, the storage backends build their
CHECK constraints from `STATUSES` / `FINAL`, and the README's table of job states is rendered from
`transition_table()` (a test keeps the two equal). A new state or command is added here first.
"""

from __future__ import annotations

import msgspec

from ..errors import InvalidTransition
from .model import JobStatus

PENDING, RUNNING = JobStatus.PENDING, JobStatus.RUNNING
COMPLETED, FAILED, CANCELLED = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED


class Transition(msgspec.Struct, frozen=True):
    """``command`` moves a job in one of ``sources`` to one of ``targets``; ``why`` for the docs."""

    command: str
    sources: frozenset[JobStatus]
    targets: frozenset[JobStatus]
    why: str
    operator: bool = False  # only an operator's command (`ledger retry`), never a worker's


def _t(
    command: str,
    sources: set[JobStatus],
    targets: set[JobStatus],
    why: str,
    *,
    operator: bool = False,
) -> Transition:
    return Transition(command, frozenset(sources), frozenset(targets), why, operator)


TRANSITIONS: dict[str, Transition] = {
    t.command: t
    for t in (
        _t("create", set(), {PENDING}, "a new job waits to be claimed (not before its run_at)"),
        _t("claim", {PENDING}, {RUNNING}, "a worker takes it under a lease"),
        _t("heartbeat", {RUNNING}, {RUNNING}, "its worker is alive: the lease is extended"),
        _t("log", {PENDING, RUNNING}, {PENDING, RUNNING}, "activity is recorded; state unchanged"),
        _t("complete", {RUNNING}, {COMPLETED}, "its worker finished it with a result"),
        _t(
            "fail",
            {RUNNING},
            {PENDING, FAILED},
            "an attempt failed: retried later while attempts are left, else failed for good",
        ),
        _t(
            "expire",
            {RUNNING},
            {PENDING, FAILED},
            "its lease ran out: retried while attempts are left, else failed",
        ),
        _t("release", {RUNNING}, {PENDING}, "its worker stopped first; the attempt does not count"),
        _t("cancel", {PENDING, RUNNING}, {CANCELLED}, "someone cancelled it"),
        _t("charge", {RUNNING}, {RUNNING}, "its worker recorded spending: its cost grows"),
        _t(
            "retry",
            {FAILED, CANCELLED},
            {PENDING},
            "an operator sends it back for one more attempt (`ledger retry`)",
            operator=True,
        ),
    )
}

STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
# A final state is one no worker or lifecycle command leaves: the job's run is over. Only an
# operator's `retry` (a new decision by a person, recorded as its own event) reopens one.
FINAL: frozenset[JobStatus] = frozenset(
    s for s in STATUSES if not any(s in t.sources for t in TRANSITIONS.values() if not t.operator)
)


def require(job_id: str, status: JobStatus, command: str, *, verb: str = "") -> None:
    """Refuse ``command`` on a job in ``status`` unless the table allows it, with
    `InvalidTransition` saying which states it needs. ``verb``: how the message names the
    command, when not by its name (``log 'progress' to``)."""
    transition = TRANSITIONS[command]
    if status not in transition.sources:
        allowed = " or ".join(s.value for s in STATUSES if s in transition.sources)
        raise InvalidTransition(
            job_id, status.value, verb or command, f"only a {allowed} job can be"
        )


def transition_table() -> str:
    """The table as Markdown, for the README."""
    lines = ["| command | from | to | what it means |", "|---|---|---|---|"]
    for t in TRANSITIONS.values():
        sources = ", ".join(s.value for s in STATUSES if s in t.sources) or "(nothing)"
        targets = ", ".join(s.value for s in STATUSES if s in t.targets)
        lines.append(f"| `{t.command}` | {sources} | {targets} | {t.why} |")
    final = ", ".join(s.value for s in STATUSES if s in FINAL)
    operators = ", ".join(f"`{t.command}`" for t in TRANSITIONS.values() if t.operator)
    lines.append("")
    lines.append(
        f"Final states (no worker or lifecycle command leaves them): {final}; only an "
        f"operator's {operators} reopens one."
    )
    return "\n".join(lines)
