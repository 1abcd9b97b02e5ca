"""The memory check before an actor process starts.

Why. Every actor of the default kind has a process of its own: about 10 MB of
private memory each even forked from the zygote (Ray's take ~100 MB). A program that creates thousands of actors on one
machine (a hostile probe made 2,000 on a 24 GB, 2-core machine) used to start them
all until the machine ran out of memory, and then the kernel's OOM killer chose
whom to kill -- the node, the driver, another user's process -- with no error
anywhere that said why. Ray has a memory monitor for the same reason (it kills
workers above ``memory_usage_threshold``); here the check comes earlier, before the
process exists: a start that would be made while the machine's memory use is above
the threshold is not made.

What then (``ACTORCORE_LOW_MEMORY_POLICY``):

* ``fail`` (the default): the actors that process was for die at once with
  `ActorOutOfMemoryError`, whose message names the memory in use, the total and
  the threshold; the caller's ``get`` raises it (their constructors never ran, so
  restarting them would only be refused again: they are not restarted). The
  cluster goes on: actors already up keep working, and later creations start again
  once memory is free.
* ``wait``: the start waits in the start queue (``_actor_processes``) and is tried
  again every refresh period, until memory use is below the threshold; the actor
  stays pending meanwhile (its calls queue), as a task waits for resources.

The reading. Memory in use is the machine's total less ``MemAvailable``
(``/proc/meminfo``: free memory plus what the kernel can reclaim at once), or, in a
cgroup (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) whose limit is below the
machine's, the cgroup's usage less its inactive file pages against that limit, as
Ray's memory monitor reads it. A reading is reused for ``refresh`` seconds
(``ACTORCORE_MEMORY_MONITOR_REFRESH_MS``, Ray's default of 250 ms), so a burst of a
thousand creations reads ``/proc`` a few times, not a thousand: the cap on
processes starting at once (``_actor_processes``) keeps a burst from outrunning a
stale reading by more than that cap. ``0`` turns the check off, as
``RAY_memory_monitor_refresh_ms=0`` turns off Ray's monitor.

Settings: ``ACTORCORE_MEMORY_USAGE_THRESHOLD`` (a fraction in [0, 1], default 0.95),
``ACTORCORE_LOW_MEMORY_POLICY`` (``fail`` or ``wait``),
``ACTORCORE_MEMORY_MONITOR_REFRESH_MS`` (milliseconds >= 0, default 250); Ray's
``RAY_memory_usage_threshold`` and ``RAY_memory_monitor_refresh_ms`` are read when
ours are not set. A bad value is refused when the node starts, naming the variable.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from ...exceptions import ConfigurationError
from ...session._config import env_value

__all__ = [
    "MemoryCheck",
    "MemoryPolicy",
    "MemoryUsage",
    "read_memory",
    "refusal",
]

POLICIES = ("fail", "wait")


@attrs.frozen
class MemoryUsage:
    """One reading: bytes in use of ``total`` (the machine's, or its cgroup's)."""

    used: int
    total: int
    where: str = "node"  # "node", or "cgroup" when a cgroup's limit is the total

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0

    def describe(self) -> str:
        return f"{_gb(self.used)} / {_gb(self.total)} ({self.fraction:.3f})"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}GB"


@attrs.frozen
class MemoryPolicy:
    """The settings (see the module docstring)."""

    threshold: float = 0.95
    policy: str = "fail"
    refresh: float = 0.25  # seconds; 0: no check

    @property
    def enabled(self) -> bool:
        return self.refresh > 0 and self.threshold < 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MemoryPolicy:
        """Read the settings, ours first, then Ray's; a bad value raises
        `ConfigurationError` naming the variable it came from."""
        env = os.environ if environ is None else environ
        threshold = env_value("ACTORCORE_MEMORY_USAGE_THRESHOLD", env)
        refresh_ms = env_value("ACTORCORE_MEMORY_MONITOR_REFRESH_MS", env)
        policy = str(env_value("ACTORCORE_LOW_MEMORY_POLICY", env)).strip().lower()
        if policy not in POLICIES:
            raise ConfigurationError(
                f"ACTORCORE_LOW_MEMORY_POLICY={env.get('ACTORCORE_LOW_MEMORY_POLICY')!r}: "
                f"expected one of {', '.join(POLICIES)} (what an actor start does while "
                f"memory use is above ACTORCORE_MEMORY_USAGE_THRESHOLD)")
        return cls(threshold=threshold, policy=policy, refresh=refresh_ms / 1000)


# ------------------------------------------------------------------- reading


def _meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _cgroup_usage(total: int, root: Path = Path("/sys/fs/cgroup")) -> MemoryUsage | None:
    """The cgroup's usage against its limit, if it has one below ``total``."""
    for limit_file, usage_file, stat_file, inactive_key in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
         "memory/memory.stat", "total_inactive_file"),  # v1
    ):
        limit = _read_int(root / limit_file)
        if limit is None or limit >= total:
            continue
        usage = _read_int(root / usage_file)
        if usage is None:
            continue
        inactive = 0
        try:
            for line in (root / stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
                    break
        except (OSError, ValueError):
            pass
        return MemoryUsage(max(usage - inactive, 0), limit, "cgroup")
    return None


def read_memory() -> MemoryUsage | None:
    """Memory in use now (see the module docstring); ``None``: unreadable here
    (not Linux), and the check lets every start through."""
    try:
        info = _meminfo()
    except OSError:
        return None
    total = info.get("MemTotal")
    if not total:
        return None
    available = info.get("MemAvailable", info.get("MemFree", 0))
    return _cgroup_usage(total) or MemoryUsage(total - available, total)


def refusal(usage: MemoryUsage, policy: MemoryPolicy, node: str, what: str) -> str:
    """The cause a refused actor dies with (Ray-style: the node, the usage, the
    threshold, what to do)."""
    where = "its cgroup" if usage.where == "cgroup" else "the node"
    return (
        f"{what} was not started because the node is low on memory. Memory on {where} "
        f"(ID: {node}) is {usage.describe()}, which exceeds the memory usage threshold "
        f"of {policy.threshold}. Free memory (fewer actors: each has a process of its "
        f"own, or placement='shared' for many small ones), "
        f"raise ACTORCORE_MEMORY_USAGE_THRESHOLD, or set ACTORCORE_LOW_MEMORY_POLICY=wait "
        f"to have actor starts wait for memory instead."
    )


class MemoryCheck:
    """Whether a process may start now: `over` gives the reading that says no.

    Readings are reused for ``policy.refresh`` seconds (``read`` and ``clock`` are
    for tests)."""

    def __init__(self, policy: MemoryPolicy,
                 read: Callable[[], MemoryUsage | None] = read_memory,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._read = read
        self._clock = clock
        self._last: MemoryUsage | None = None
        self._at = -float("inf")
        self.refused = 0  # starts refused (policy fail), for status and tests
        self.deferred = 0  # start attempts put off (policy wait)

    def usage(self) -> MemoryUsage | None:
        now = self._clock()
        if now - self._at >= self.policy.refresh:
            self._last = self._read()
            self._at = now
        return self._last

    def over(self) -> MemoryUsage | None:
        """The reading if memory use is above the threshold (no start now), else None."""
        if not self.policy.enabled:
            return None
        usage = self.usage()
        if usage is None or usage.fraction <= self.policy.threshold:
            return None
        return usage
