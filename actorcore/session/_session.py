"""Session directories: where a cluster keeps its sockets, token and logs.

A head node creates ``/tmp/actorcore-sessions/session_<time>_<pid>/`` (the root can be moved
with ``ACTORCORE_TMPDIR``) holding::

    token          the cluster token (mode 0600)
    node.pid       the node process's pid (written by its launcher)
    session.json   address, TCP address, node id, pid, log dir (written when ready)
    sockets/       the node's Unix socket (and its store's, its workers')
    spill/         the store's spill files
    logs/          node.log, worker-<n>-<pid>.out/.err, ...

and points ``/tmp/actorcore-sessions/session_latest`` at it, so that ``actorcore status``,
``actorcore tree`` and ``init(address="auto")`` on the same machine find the
cluster without being told. ``--address`` finds any live local session by its
address (``find_session``): a Unix socket's session is the directory it lives in,
a TCP address is looked up in the ``session.json`` files under the root.
Shutdown removes the sockets, ``session.json`` and the ``session_latest`` link (if
it still points here); the logs stay.

A node killed with SIGKILL cleans up nothing: its arena stays in ``/dev/shm``
(hundreds of MB), its spill files and sockets stay on disk. ``actorcore start``,
``actorcore stop`` and ``init()`` call ``reclaim_dead_sessions``, which removes
them for every session whose node process is really gone. Other clusters — other
users', other roots', still starting — run beside ours on the same machine, so a
session is only reclaimed on positive evidence: a pid recorded for it (its
``session.json`` or ``node.pid``) that no longer exists. A session with no pid yet
(being created), or whose pid is alive, is left alone; so is any arena whose owner
(the pid in its header) is alive.

Permissions: the root (when we create it), the session directory and its folders
are owner-only (0700), the token and the socket files 0600, so other users of the
machine can neither read the token nor reach a socket. A ``session_latest`` that
points at a directory another user owns is ignored: it could lead a driver to a
cluster that is not its user's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "root_dir",
    "check_root",
    "new_session_dir",
    "write_token",
    "read_token",
    "write_node_pid",
    "write_session_info",
    "read_session_info",
    "latest_session",
    "link_latest",
    "unlink_latest",
    "session_pid",
    "pid_alive",
    "find_session",
    "Reclaimed",
    "reclaim_dead_sessions",
]

logger = logging.getLogger("actorcore.session")

#: Arenas of actorcore sessions in /dev/shm start so (the store's prefix is
#: ``actorcore-<session dir name>``); other arenas are not ours to judge.
ARENA_PREFIX = "actorcore-session_"


def root_dir() -> Path:
    """Where sessions live: ``$ACTORCORE_TMPDIR``, else ``/tmp/actorcore-sessions``.

    Not ``/tmp/actorcore``: a folder named like the package beside a script in /tmp
    would shadow an editable install of ``actorcore`` as an empty namespace package.
    """
    return Path(os.environ.get("ACTORCORE_TMPDIR", "/tmp/actorcore-sessions"))


#: The longest path the runtime gives a socket below the root (the pid and the
#: counter at their widest): a driver's listening socket.
_LONGEST_SOCKET_TAIL = len("/session_20260101-000000_4194304ff/sockets/driver-4194304-ffff.sock")

#: A Unix socket path holds at most 107 bytes (``sun_path`` is 108, NUL included).
MAX_SOCKET_PATH = 107


def check_root(root: Path, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (the setting that chose ``root``, with its
    value) if sockets under ``root`` could not be bound.

    The sockets of a session live below its root, and a Unix socket path is limited
    to 107 bytes: a long root would fail later, inside the node, with an error that
    no longer names the setting that caused it.
    """
    size = len(os.fsencode(str(root)))
    longest = size + _LONGEST_SOCKET_TAIL
    if longest > MAX_SOCKET_PATH:
        raise ValueError(
            f"{what} is {size} bytes long: the session's Unix sockets under it "
            f"would take up to {longest} bytes, more than the {MAX_SOCKET_PATH} a socket path "
            f"can hold; use a directory of at most {MAX_SOCKET_PATH - _LONGEST_SOCKET_TAIL} bytes"
        )


def new_session_dir(root: Path | None = None) -> Path:
    """A fresh session directory under ``root`` (default: ``root_dir()``)."""
    if root is None:
        root = root_dir()
    if not root.exists():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"session_{stamp}_{os.getpid()}{secrets.token_hex(3)}"
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)  # whatever the umask
    for sub in ("sockets", "logs"):
        (path / sub).mkdir(mode=0o700)
        os.chmod(path / sub, 0o700)
    return path


def write_token(session_dir: Path, token: bytes) -> None:
    path = session_dir / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token.hex())


def read_token(session_dir: Path) -> bytes:
    return bytes.fromhex((session_dir / "token").read_text().strip())


def write_node_pid(session_dir: Path, pid: int) -> None:
    """Record the node's pid at once (``session.json`` comes only when it is ready),
    so that a node killed while starting can be told dead and reclaimed."""
    tmp = session_dir / "node.pid.tmp"
    tmp.write_text(str(pid))
    os.replace(tmp, session_dir / "node.pid")


def write_session_info(session_dir: Path, info: dict[str, Any]) -> None:
    tmp = session_dir / "session.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, session_dir / "session.json")


def read_session_info(session_dir: Path) -> dict[str, Any]:
    return json.loads((session_dir / "session.json").read_text())


def latest_session() -> Path | None:
    """The session ``session_latest`` points at, if it is still live."""
    link = root_dir() / "session_latest"
    try:
        target = Path(os.readlink(link))
    except OSError:
        return None
    if not (target / "session.json").exists():
        return None
    try:
        if target.stat().st_uid != os.getuid():
            return None  # another user's cluster (see the module docstring)
    except OSError:
        return None
    try:
        pid = int(read_session_info(target)["pid"])
    except (OSError, ValueError, KeyError):
        return None
    return target if pid_alive(pid) else None


def link_latest(session_dir: Path) -> None:
    link = root_dir() / "session_latest"
    tmp = root_dir() / f".session_latest.{os.getpid()}"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(session_dir, tmp)
    os.replace(tmp, link)


def unlink_latest(session_dir: Path) -> None:
    link = root_dir() / "session_latest"
    try:
        if Path(os.readlink(link)) == session_dir:
            link.unlink()
    except OSError:
        pass


def session_pid(session_dir: Path) -> int | None:
    """The pid of the session's node (None: not recorded yet, or unreadable)."""
    try:
        return int(read_session_info(session_dir)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return int((session_dir / "node.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine. A zombie is dead: a
    node whose launcher exited is re-parented to pid 1, which may reap it late."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc to ask: it exists
    # "pid (comm) S ...": the state follows the last ')' (comm may hold any bytes).
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def live_sessions() -> list[tuple[Path, dict[str, Any]]]:
    """The sessions of this user's live nodes on this machine, with their info."""
    out = []
    for session in _sessions():
        try:
            info = read_session_info(session)
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid_alive(pid):
            out.append((session, info))
    return out


def _sessions() -> list[Path]:
    try:
        entries = list(root_dir().iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.name.startswith("session_") and p.name != "session_latest"
                  and not p.is_symlink() and p.is_dir())


_LOOPBACK = {"127.0.0.1", "localhost", "0.0.0.0", "::1", "[::1]", ""}


def _same_address(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    if a.startswith("tcp:") and b.startswith("tcp:"):
        ha, _, pa = a[4:].rpartition(":")
        hb, _, pb = b[4:].rpartition(":")
        return pa == pb and ha in _LOOPBACK and hb in _LOOPBACK
    return False


def find_session(address: str) -> Path | None:
    """The directory of the live local session serving ``address`` ("unix:..." or
    "tcp:host:port"), or None.

    A node's Unix socket lives in ``<session>/sockets/``, so its session (and its
    token) is found from the path alone, whatever root it was started under. A TCP
    address is looked up among the live sessions under ``root_dir()``.
    """
    if address.startswith("unix:"):
        sock = Path(address[len("unix:"):])
        session = sock.parent.parent
        if sock.parent.name == "sockets" and (session / "token").is_file():
            return session
        return None
    for session in _sessions():
        try:
            info = read_session_info(session)
        except (OSError, ValueError):
            continue
        if not any(_same_address(address, info.get(k)) for k in ("address", "tcp_address")):
            continue
        pid = session_pid(session)
        if pid is not None and pid_alive(pid):
            return session
    return None


@attrs.define
class Reclaimed:
    """What ``reclaim_dead_sessions`` removed."""

    sessions: list[str] = attrs.Factory(list)  # session dirs of dead nodes
    paths: list[str] = attrs.Factory(list)  # arenas, spill files, sockets, session.json
    bytes: int = 0  # memory and disk the removed arenas and spill files held

    def __bool__(self) -> bool:
        return bool(self.paths)

    def describe(self) -> str:
        return (f"reclaimed {self.bytes / 1e6:.0f} MB of shared memory and spill files, "
                f"{len(self.paths)} file(s), left by {len(self.sessions)} dead session(s)")


def _held_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512  # arenas are sparse: what they really hold
    except OSError:
        return 0


def reclaim_dead_sessions(shm_dir: str = "/dev/shm") -> Reclaimed:
    """Remove what killed nodes left behind (see the module docstring): for each
    session under ``root_dir()`` whose node pid is gone, its arena, spill files,
    sockets and ``session.json``; then, in ``shm_dir``, any actorcore session arena
    whose owner pid is gone (sessions of other roots). Never raises: what cannot be
    removed is logged and left."""
    out = Reclaimed()
    for session in _sessions():
        pid = session_pid(session)
        if pid is None or pid_alive(pid):
            continue
        import store  # only once there is something to look at: every init() runs this
        prefix = f"actorcore-{session.name}"
        spill_dir = str(session / "spill")
        try:
            files = store.session_files(prefix, shm_dir=shm_dir, spill_dir=spill_dir)
            held = sum(_held_bytes(f) for f in files)
            removed = store.cleanup_session(prefix, shm_dir=shm_dir, spill_dir=spill_dir)
        except OSError as exc:
            logger.warning("reclaiming the store files of dead session %s failed: %s", session, exc)
            removed, held = [], 0
        for path in [*(session / "sockets").glob("*"), session / "session.json"]:
            try:
                path.unlink()
                removed.append(str(path))
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("could not remove %s of dead session %s: %s", path, session, exc)
        unlink_latest(session)
        if removed:
            out.sessions.append(str(session))
            out.paths += removed
            out.bytes += held
            logger.info("reclaimed dead session %s (node pid %d): %s", session, pid, removed)
    try:
        names = [n for n in os.listdir(shm_dir) if n.startswith(ARENA_PREFIX) and n.endswith(".arena")]
    except OSError as exc:
        logger.warning("listing %s for arenas of dead nodes failed: %s", shm_dir, exc)
        names = []
    uid = os.getuid()
    for name in names:
        arena = os.path.join(shm_dir, name)
        try:
            if os.stat(arena).st_uid != uid:
                continue  # another user's: not ours to remove (and we could not)
            import store
            held = _held_bytes(arena)
            # The store removes it only if the owner pid in its header is gone.
            removed = store.cleanup_stale_sessions(shm_dir, name_prefix=name[: -len(".arena")])
        except FileNotFoundError:
            continue  # its node stopped meanwhile, or another reclaimer was faster
        except OSError as exc:
            logger.warning("reclaiming %s failed: %s", arena, exc)
            continue
        for gone in removed:
            out.paths.append(gone)
            out.bytes += held if gone == arena else 0
            out.sessions.append(gone)
            logger.info("reclaimed the arena %s of a dead node (another session root)", gone)
    return out
