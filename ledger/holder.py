"""Where a claim's holder runs, and whether that process still exists (Linux ``/proc``).

A claim records its holder: the host name, the machine's boot id, the process id and the
process's start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot). A pid can be
reused after a process dies, but not with the same start time in the same boot, so the triple
(boot id, pid, start time) names one process for good. On the same host, a claim that finds a
running job whose holder process is gone rescues it at once (`Service.claim`); holders on other
hosts keep their lease.

Only a certain death counts: the boot id is another (the machine rebooted since), no process has
that pid, the process with that pid started at another time, or it is a zombie (it exited and
waits for its parent to reap it). Anything this module cannot read (no ``/proc``, a permission
error) counts as alive, so a live process is never judged dead. On platforms without ``/proc``
`current` returns None: claims record no holder and the lease alone decides, as before.

This is I/O, so it lives in the faces, not in the domain: `Ledger.claim` gathers the facts and
passes `is_gone` to the service.
"""

from __future__ import annotations

import functools
import os
import socket

import msgspec

_BOOT_ID = "/proc/sys/kernel/random/boot_id"


class Holder(msgspec.Struct, frozen=True):
    """One process on one host, as a claim records it."""

    host: str
    boot_id: str
    pid: int
    start: int  # clock ticks since boot (``/proc/<pid>/stat`` field 22)


@functools.cache
def _host_and_boot() -> tuple[str, str] | None:
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            boot_id = f.read().strip()
    except OSError:
        return None
    return (socket.gethostname(), boot_id) if boot_id else None


def host() -> str | None:
    """This host's name when holder checks work here (Linux), else None."""
    facts = _host_and_boot()
    return None if facts is None else facts[0]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, or None when no process has that pid. `OSError`
    other than "not found" (a permission error, say) is raised: the caller must not guess."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # field 2, the command name, is in parentheses and may hold spaces and ')': split after
    # the last ')'. What follows starts at field 3 (the state); field 22 is index 19.
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


_pid_cache: dict[int, Holder | None] = {}


def current() -> Holder | None:
    """The calling process as a holder (cached per pid: a fork gets its own), or None where
    holders cannot be checked."""
    pid = os.getpid()
    if pid not in _pid_cache:
        facts = _host_and_boot()
        stat = None
        if facts is not None:
            try:
                stat = _stat(pid)
            except (OSError, ValueError, IndexError):
                stat = None
        _pid_cache[pid] = (
            None if facts is None or stat is None else Holder(facts[0], facts[1], pid, stat[1])
        )
    return _pid_cache[pid]


def is_gone(boot_id: str | None, pid: int | None, start: int | None) -> bool:
    """Whether the process a claim on THIS host recorded is certainly not running any more."""
    facts = _host_and_boot()
    if facts is None or boot_id is None or pid is None or start is None:
        return False
    if boot_id != facts[1]:
        return True  # recorded in an earlier boot of this machine
    me = current()
    if me is not None and pid == me.pid and start == me.start:
        return False  # the calling process itself: alive, no /proc read needed
    try:
        stat = _stat(pid)
    except (OSError, ValueError, IndexError):
        return False  # cannot tell: alive
    if stat is None:
        return True
    state, started = stat
    return started != start or state in ("Z", "X")
