"""Where a session's files live, and removing them after a killed driver or node."""

from __future__ import annotations

import os

__all__ = [
    "DEFAULT_SHM_DIR",
    "arena_path",
    "cleanup_session",
    "cleanup_stale_sessions",
    "session_files",
]

DEFAULT_SHM_DIR = "/dev/shm"


def arena_path(prefix: str, shm_dir: str = DEFAULT_SHM_DIR) -> str:
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"bad object store session prefix {prefix!r} (a plain file name is needed)")
    return os.path.join(shm_dir, f"{prefix}.arena")


def session_files(prefix: str, *, shm_dir: str = DEFAULT_SHM_DIR, spill_dir: str | None = None) -> list[str]:
    """Every file of the session ``prefix``: its arena and its spill files."""
    found = []
    path = arena_path(prefix, shm_dir)
    if os.path.exists(path):
        found.append(path)
    return found + _spill_files(prefix, spill_dir)


def _spill_files(prefix: str, spill_dir: str | None) -> list[str]:
    """The session's files in ``spill_dir``: spilled objects, objects created on
    disk, and the temporary files of either."""
    if spill_dir is None or not os.path.isdir(spill_dir):
        return []
    return [
        os.path.join(spill_dir, name)
        for name in os.listdir(spill_dir)
        if name.startswith(prefix + "-") and ".spill" in name
    ]


def _unlink_all(paths: list[str]) -> list[str]:
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def cleanup_session(
    prefix: str, *, shm_dir: str = DEFAULT_SHM_DIR, spill_dir: str | None = None
) -> list[str]:
    """Remove the session's arena from shared memory and its spill files.

    For the runtime to call when a node or driver was killed before its store could
    shut down. Processes that still map the arena keep their mapping (the memory is
    returned when the last one unmaps). Returns the removed paths.
    """
    return _unlink_all(session_files(prefix, shm_dir=shm_dir, spill_dir=spill_dir))


def cleanup_stale_sessions(shm_dir: str = DEFAULT_SHM_DIR, *, name_prefix: str = "actorcore") -> list[str]:
    """Remove arenas (``<name_prefix>*.arena``) whose owning process is gone, and
    the files their sessions left on disk (spilled objects, objects created on disk).

    The owner's pid and the spill directory are written in each arena's header by
    the service that opened it last; an arena whose owner no longer exists was left
    by a killed node. Returns the removed paths.
    """
    from ._arena import arena_header

    removed = []
    for name in os.listdir(shm_dir):
        if not (name.startswith(name_prefix) and name.endswith(".arena")):
            continue
        path = os.path.join(shm_dir, name)
        found = arena_header(path)
        if found is None or _alive(found[0]):
            continue
        # The files on disk first: the arena is what says where they are.
        removed += _unlink_all(_spill_files(name[: -len(".arena")], found[1]))
        removed += _unlink_all([path])
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs; a zombie is dead (a killed node re-parented to a
    pid 1 that does not reap would otherwise keep its arena for ever). The runtime's
    ``actorcore.session.pid_alive`` is the same test: store imports nothing above it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: signal 0 said it exists
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"
    return True
