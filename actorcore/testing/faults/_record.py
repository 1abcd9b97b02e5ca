"""The record of injected faults: what, where and when, readable afterwards."""

from __future__ import annotations

import threading
import time
from collections import Counter

import attrs

__all__ = ["KINDS", "Injected", "check_kind", "clear_record", "counts", "note", "record"]

#: Every fault kind the harness injects (``schedule(kinds=...)``, ``actorcore chaos``).
KINDS = ("crash", "kill", "drop", "delay", "duplicate", "partition")


def check_kind(kind: str) -> str:
    """``kind`` if it is a fault kind, else ``ValueError`` naming it and the kinds."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; the kinds are {', '.join(KINDS)}")
    return kind


@attrs.frozen
class Injected:
    """One injected fault.

    Attributes:
      at: seconds since the epoch when it was injected. kind: one of `KINDS` (or
      ``"heal"``). target: the tree path, pid or endpoints it hit. detail: what the
      cluster answered (or the error, when ``ok`` is false). seed/step: the schedule
      and its step that injected it (``None`` for a direct call).
    """

    at: float
    kind: str
    target: str
    detail: str = ""
    ok: bool = True
    seed: int | None = None
    step: int | None = None

    def line(self, since: float | None = None) -> str:
        when = f"+{self.at - since:7.3f}s" if since is not None else time.strftime(
            "%H:%M:%S", time.localtime(self.at)) + f".{int(self.at * 1000) % 1000:03d}"
        origin = f" [seed {self.seed} step {self.step}]" if self.seed is not None else ""
        status = "" if self.ok else " FAILED"
        return f"{when} {self.kind:<9} {self.target}{status}{origin}: {self.detail}"


_lock = threading.Lock()
_entries: list[Injected] = []


def note(entry: Injected) -> Injected:
    """Append ``entry`` to this process's record."""
    with _lock:
        _entries.append(entry)
    return entry


def record() -> list[Injected]:
    """Every fault injected from this process so far, oldest first (a copy)."""
    with _lock:
        return list(_entries)


def clear_record() -> None:
    """Forget the record (the pytest plugin does this before each test)."""
    with _lock:
        _entries.clear()


def counts(entries: list[Injected] | None = None) -> dict[str, int]:
    """Successful injections per kind."""
    return dict(Counter(e.kind for e in (record() if entries is None else entries) if e.ok))
