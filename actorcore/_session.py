"""Session directories: where a cluster keeps its sockets, token and logs.

A head node creates ``/tmp/actorcore-sessions/session_<time>_<pid>/`` (the root can be moved
with ``ACTORCORE_TMPDIR``) holding::

    token          the cluster token (mode 0600)
    session.json   address, TCP address, node id, pid, log dir (written when ready)
    sockets/       the node's Unix socket
    logs/          node.log, worker-<n>-<pid>.out/.err, ...

and points ``/tmp/actorcore-sessions/session_latest`` at it, so that ``actorcore status``,
``actorcore tree`` and ``init(address="auto")`` on the same machine find the
cluster without being told. Shutdown removes the sockets, ``session.json`` and the
``session_latest`` link (if it still points here); the logs stay.

Permissions: the root (when we create it), the session directory and its folders
are owner-only (0700), the token and the socket files 0600, so other users of the
machine can neither read the token nor reach a socket. A ``session_latest`` that
points at a directory another user owns is ignored: it could lead a driver to a
cluster that is not its user's.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = [
    "root_dir",
    "check_root",
    "new_session_dir",
    "write_token",
    "read_token",
    "write_session_info",
    "read_session_info",
    "latest_session",
    "link_latest",
    "unlink_latest",
]


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
    path = root / f"session_{stamp}_{os.getpid()}{secrets.token_hex(1)}"
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
        info = read_session_info(target)
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return target


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
