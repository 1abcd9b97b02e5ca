"""The node's object store, sized and configured: how much shared memory it gets,
how it may use the disk, how long a restarted store waits for its clients, and
the ``memory`` resource the node offers tasks beside it.

Each setting comes from the node's config or, failing that, its environment
(``ACTORCORE_OBJECT_STORE_*``, ``ACTORCORE_LOCAL_FS_CAPACITY_THRESHOLD``,
``ACTORCORE_STORE_RECOVERY_GRACE``) or the machine, and a bad value is refused
with its name before the node starts. The store service itself is ``store/``'s;
the node runs it as its ``object_manager`` child.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import store

__all__ = ["default_store_capacity", "default_task_memory", "make_store_service",
           "store_disk_options", "store_recovery_grace"]


def make_store_service(address: str, token: bytes, capacity: int | None, spill_dir: Path,
                       prefix: str) -> store.ObjectStoreService:
    """The node's ``store.ObjectStoreService`` (``capacity`` None: the default)."""
    import store  # noqa: F811 (with its dependencies: only the node process needs it)

    return store.ObjectStoreService(
        address,
        token,
        capacity=capacity or default_store_capacity(),
        spill_dir=str(spill_dir),
        prefix=prefix,
        **store_disk_options(),
        # A restart of ``object_manager`` (the supervisor cancels it, exactly as
        # for a shutdown) must find the arena and spill files where they were:
        # the node removes them when it stops (``NodeRuntime.run``).
        cleanup_on_cancel=False,
        recovery_grace=store_recovery_grace(),
    )


def store_disk_options() -> dict[str, Any]:
    """How the store may use the disk and memory (from the node's environment): objects
    shared memory cannot take go to files in the session's spill directory unless
    ``ACTORCORE_OBJECT_STORE_DISK_FALLBACK=0``; spills and those files stop at
    ``ACTORCORE_LOCAL_FS_CAPACITY_THRESHOLD`` of the disk (default 0.95, Ray's).
    ``ACTORCORE_OBJECT_STORE_PREFAULT``: how many bytes of the arena the store keeps
    faulted in ahead of use (default 256 MiB), ``0`` for none, ``all`` for all of it."""
    fallback = os.environ.get("ACTORCORE_OBJECT_STORE_DISK_FALLBACK", "1").strip()
    if fallback not in ("0", "1"):
        raise ValueError(f"ACTORCORE_OBJECT_STORE_DISK_FALLBACK must be 0 or 1, got {fallback!r}")
    raw = os.environ.get("ACTORCORE_LOCAL_FS_CAPACITY_THRESHOLD", "0.95")
    try:
        threshold = float(raw)
    except ValueError:
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"ACTORCORE_LOCAL_FS_CAPACITY_THRESHOLD must be a fraction in [0, 1], got {raw!r}"
        )
    options: dict[str, Any] = {"disk_fallback": fallback == "1", "disk_threshold": threshold}
    warm = os.environ.get("ACTORCORE_OBJECT_STORE_PREFAULT", "").strip().lower()
    if warm == "all":
        options["prefault"] = True
    elif warm:
        if not warm.isdigit():
            raise ValueError(
                f"ACTORCORE_OBJECT_STORE_PREFAULT must be a number of bytes or 'all', got {warm!r}"
            )
        options["warm"] = int(warm)
    return options


def default_task_memory(store_capacity: int) -> int:
    """The node's ``memory`` resource when not given: the memory available now (as
    ``MemAvailable``, within the cgroup's limit) less the object store's, as Ray
    computes it; at least a tenth of what is available, so ``memory=`` requests of
    a small machine stay placeable."""
    available = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if not available:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError):
            available = 4 << 30
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            available = min(available, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return max(available - store_capacity, available // 10)


def default_store_capacity() -> int:
    """30% of the machine's memory, at most 2 GiB (the arena is sparse until used)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 4 << 30
    return int(min(total * 0.3, 2 << 30))


def store_recovery_grace() -> float:
    """Seconds a restarted store keeps unclaimed objects it found in its arena
    (``ACTORCORE_STORE_RECOVERY_GRACE``; every live client claims its own at once)."""
    raw = os.environ.get("ACTORCORE_STORE_RECOVERY_GRACE", "30")
    try:
        grace = float(raw)
    except ValueError:
        raise ValueError(f"ACTORCORE_STORE_RECOVERY_GRACE must be a number, got {raw!r}") from None
    if not grace >= 0:
        raise ValueError(f"ACTORCORE_STORE_RECOVERY_GRACE must be >= 0 seconds, got {raw!r}")
    return grace

