"""Starting a head node process and finding running clusters.

``start_head`` creates a session directory and token, spawns ``python -m
actorcore.node --head`` and waits for the one JSON line it writes on ``--ready-fd``
once its tree is serving. If the node dies or stays silent past the timeout, the
error carries the tail of its log files.

An embedded cluster (``init()`` without address) also gets ``--parent-fd``: the read
end of a pipe whose write end only the driver holds (close-on-exec, so no child of
the driver inherits it). When the driver exits — normally, by an exception, or by
SIGKILL — the kernel closes the write end, the node sees EOF and shuts down, its
workers die with their links, and sockets and shared memory are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..exceptions import ActorcoreSystemError
from . import _security
from ._config import ClusterConfig
from ._session import (
    check_root,
    find_session,
    latest_session,
    new_session_dir,
    pid_alive,
    read_session_info,
    read_token,
    root_dir,
    session_pid,
    write_node_pid,
    write_token,
)

if TYPE_CHECKING:
    import transport

__all__ = ["HeadProcess", "start_head", "start_node", "find_cluster", "log_tail"]

logger = logging.getLogger("actorcore.launcher")


@attrs.define(eq=False)
class HeadProcess:
    process: subprocess.Popen
    info: dict[str, Any]
    token: bytes
    session_dir: Path
    parent_fd: int | None  # the driver's end of the death pipe (embedded only)
    spill_dir: Path | None = None  # the store's spill directory, when not the session's

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node: close the pipe (embedded) or SIGTERM it, then wait."""
        if self.parent_fd is not None:
            try:
                os.close(self.parent_fd)
            except OSError:
                pass
            self.parent_fd = None
        else:
            try:
                self.process.terminate()
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # A node that died without cleaning up (SIGKILL, crash) leaves its store's
        # shared memory behind: remove it (a no-op after a clean stop).
        try:
            import store

            store.cleanup_session(
                f"actorcore-{self.session_dir.name}",
                spill_dir=str(self.spill_dir or self.session_dir / "spill"),
            )
        except Exception as exc:
            logger.warning("removing the shared memory and spill files of session %s failed: %r",
                           self.session_dir, exc)


def log_tail(session_dir: Path, lines: int = 30) -> str:
    """The last lines of the node's log files, for error messages."""
    out = []
    for name in ("node.err", "node.out", "node.log"):
        path = session_dir / "logs" / name
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            continue
        if text:
            out.append(f"--- {path} ---")
            out.extend(text[-lines:])
    return "\n".join(out) or "(the node wrote no log)"


def start_head(
    config: ClusterConfig | None = None,
    *,
    tls: transport.TlsConfig | None = None,
    embedded: bool = True,
    timeout: float = 60.0,
    temp_dir: Path | None = None,
    env_vars: dict[str, str] | None = None,
    while_starting: Callable[[], object] | None = None,
    **options: Any,
) -> HeadProcess:
    """Start a head node (see `start_node`)."""
    return start_node(config, tls=tls, embedded=embedded, timeout=timeout,
                      temp_dir=temp_dir, env_vars=env_vars, while_starting=while_starting,
                      **options)


def start_node(
    config: ClusterConfig | None = None,
    *,
    head_address: str | None = None,
    token: bytes | None = None,
    tls: transport.TlsConfig | None = None,
    embedded: bool = True,
    timeout: float = 60.0,
    temp_dir: Path | None = None,
    env_vars: dict[str, str] | None = None,
    while_starting: Callable[[], object] | None = None,
    **options: Any,
) -> HeadProcess:
    """Start a node with ``config`` (or the `ClusterConfig` fields given as
    ``options``, checked here); return once it serves.

    Without ``head_address`` it is the head of a new cluster (a new token). With
    it, the node joins the cluster whose head listens there, with that cluster's
    ``token``; it gets a session directory of its own (nodes share nothing but TCP).

    ``tls``: a `transport.TlsConfig` standing in for ``config``'s ``tls_*`` files.
    ``temp_dir``: the root of its session directory (default ``root_dir()``; the node
    and its workers see it as ``ACTORCORE_TMPDIR``). ``env_vars``: set in the
    environment of the node and of every worker and actor process it starts.
    ``while_starting``: called once the node's process is spawned, before waiting for
    it to serve: the caller's own preparation (the driver's imports, 40-70 ms) then
    overlaps the node's start (its interpreter and imports, about half a second).
    """
    if config is None:
        config = ClusterConfig.from_values(options, "start_head")
    elif options:
        raise TypeError(f"start_head(): give a config or options, not both ({sorted(options)})")
    starting = None
    if head_address is None and embedded:
        starting = _take_early((config, tls, temp_dir, env_vars))
    if starting is None:
        starting = _spawn(config, head_address=head_address, token=token, tls=tls,
                          embedded=embedded, temp_dir=temp_dir, env_vars=env_vars)
    return starting.wait(timeout, while_starting)


@attrs.define(eq=False)
class _Starting:
    """A node process spawned and not yet serving (`_spawn`; `wait` for it)."""

    process: subprocess.Popen
    config: ClusterConfig
    head_address: str | None
    token: bytes
    session_dir: Path
    ready_r: int  # the read end of the node's ready pipe
    parent_w: int | None  # the driver's end of the death pipe (embedded only)

    def _end(self, grace: float = 0.0) -> int:
        """Close the death pipe and reap the node: after ``grace`` seconds for it to
        exit by itself, then (or at once) by SIGKILL. Its exit code."""
        if self.parent_w is not None:
            fd, self.parent_w = self.parent_w, None
            with contextlib.suppress(OSError):
                os.close(fd)
        if grace:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self.process.wait(grace)
        self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        """Stop the node before it served (the death pipe, then SIGKILL)."""
        with contextlib.suppress(OSError):
            os.close(self.ready_r)
        self._end()
        try:
            import store

            store.cleanup_session(f"actorcore-{self.session_dir.name}",
                                  spill_dir=str(self.session_dir / "spill"))
        except Exception as exc:
            logger.warning("removing the shared memory of session %s failed: %r",
                           self.session_dir, exc)

    def wait(self, timeout: float, while_starting: Callable[[], object] | None) -> HeadProcess:
        """Run ``while_starting``, then wait for the node's ready line (``timeout``)."""
        proc, session_dir, head_address = self.process, self.session_dir, self.head_address
        try:
            if while_starting is not None:
                while_starting()
            line = _read_line(self.ready_r, timeout, proc,
                              "the head node" if head_address is None else
                              f"the node joining the cluster at {head_address}")
        except BaseException:
            self._end()
            raise
        finally:
            os.close(self.ready_r)
        if not line:
            code = self._end()
            raise ActorcoreSystemError(
                f"the {'head ' if head_address is None else ''}node process exited (code {code}) "
                f"before it was ready.\n"
                f"{log_tail(session_dir)}"
            )
        info = json.loads(line)
        refused = info.get("refused")
        if refused is not None:
            # The head refused this node for good (TLS mode or CA, token), or no head
            # answered: the node exits; raise the transport error it met (a TooSlowError
            # of a head that accepts but never answers becomes a TransportError).
            self._end(grace=10)
            import transport

            kind = {"TlsMismatch": transport.TlsMismatch, "TlsError": transport.TlsError,
                    "AuthenticationFailed": transport.AuthenticationFailed,
                    "ConnectError": transport.ConnectError,
                    "ConnectionLost": transport.ConnectionLost}.get(
                        str(refused.get("type")), transport.TransportError)
            raise kind(f"joining the cluster at {head_address}: {refused.get('message')}")
        spill_dir = Path(self.config.spill_dir) if self.config.spill_dir else None
        return HeadProcess(proc, info, self.token, session_dir, self.parent_w, spill_dir)


def _spawn(
    config: ClusterConfig,
    *,
    head_address: str | None,
    token: bytes | None,
    tls: transport.TlsConfig | None,
    embedded: bool,
    temp_dir: Path | None,
    env_vars: dict[str, str] | None,
) -> _Starting:
    """Spawn the node's process (`start_node`'s first half)."""
    if tls is not None:
        config = attrs.evolve(config, tls_cert=tls.cert, tls_key=tls.key, tls_ca=tls.ca)
    else:
        tls = config.tls(env={})  # the files named; the environment was read by the caller
    # Refused here, before anything starts, with the error that says how to fix it.
    # (The node logs the --insecure warning; `actorcore start` prints it.)
    _security.check_listen(config.host, tls, config.insecure, warn=False)
    root = temp_dir or root_dir()
    what = f"init(_temp_dir={str(root)!r})" if temp_dir else f"ACTORCORE_TMPDIR={str(root)!r}"
    check_root(root, what)
    session_dir = new_session_dir(root)
    if head_address is None:
        token = secrets.token_bytes(32)
    elif token is None:
        raise ValueError(f"joining the cluster at {head_address}: its token is needed")
    write_token(session_dir, token)
    ready_r, ready_w = os.pipe()
    pass_fds = [ready_w]
    argv = [
        # -P: the working directory does not come first on the node's path, so a
        # folder there named like one of our packages cannot shadow it.
        sys.executable, *site_flags(), "-P", "-m", "actorcore.node",
        "--session-dir", str(session_dir),
        *(["--head"] if head_address is None else ["--head-address", head_address]),
        "--ready-fd", str(ready_w),
    ]
    parent_w: int | None = None
    parent_r = -1
    if embedded:
        parent_r, parent_w = os.pipe()
        pass_fds.append(parent_r)
        argv += ["--parent-fd", str(parent_r)]
    argv += config.node_argv()
    logs = session_dir / "logs"
    env = dict(os.environ)
    env.update(env_vars or {})
    env["ACTORCORE_TMPDIR"] = str(root)
    # The node's own environment names its session, as its workers' does: the zygote
    # it forks at its start (and the workers that zygote forks) keep the environment
    # block the node started with, which is how `testing.Cluster.remove_node` finds
    # them once they are no longer below the node.
    env["ACTORCORE_SESSION_DIR"] = str(session_dir)
    # Our packages first; the driver's working directory last, so that workers (which
    # start with -P too) import the user's own modules from it as `python -m` would.
    env["PYTHONPATH"] = os.pathsep.join(
        [_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        + [os.getcwd()]
    )
    with open(logs / "node.out", "ab") as out, open(logs / "node.err", "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            pass_fds=pass_fds,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    os.close(ready_w)
    if embedded:
        os.close(parent_r)
    write_node_pid(session_dir, proc.pid)
    assert token is not None
    return _Starting(proc, config, head_address, token, session_dir, ready_r, parent_w)


# A node spawned ahead of `init()`: the head of a fresh driver's embedded cluster.
#
# A driver's `import actorcore; actorcore.init()` used to import the whole runtime
# (Trio, attrs' classes, the protocol, the core worker: about 0.3 s of CPU) before it
# spawned its node, whose own start (its interpreter, the same imports, its tree:
# about 0.6 s) then ran while the driver waited. `import actorcore` now loads none of
# that, and the package's `init` spawns the node first (`spawn_early`, from modules
# that do not import Trio), then imports the runtime while the node starts: on two
# cores the two imports overlap. `init()` itself then calls `start_head` as always,
# which adopts the early node when it was spawned with the very arguments it would
# spawn one with (`_take_early`), and spawns its own otherwise. A node nobody
# adopted (`init()` raised on a bad argument first, or chose other arguments) is
# killed (`drop_early`) before the package's `init` returns or raises.

_early: tuple[tuple[Any, ...], _Starting] | None = None


def spawn_early(config: ClusterConfig, *, temp_dir: Path | None = None,
                env_vars: dict[str, str] | None = None) -> None:
    """Spawn the embedded head node that ``init()`` is about to ask for (no TLS),
    to be adopted by the `start_head` of the same arguments (see above)."""
    global _early
    if _early is not None:
        return
    starting = _spawn(config, head_address=None, token=None, tls=None, embedded=True,
                      temp_dir=temp_dir, env_vars=env_vars)
    _early = ((config, None, temp_dir, env_vars), starting)


def _take_early(key: tuple[Any, ...]) -> _Starting | None:
    """The early node if it was spawned with ``key``'s arguments; else kill it."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    if early[0] == key:
        return early[1]
    early[1].kill()
    return None


def drop_early() -> None:
    """Kill the early node if `start_head` did not adopt it."""
    global _early
    early, _early = _early, None
    if early is not None:
        early[1].kill()


def _package_root() -> str:
    """The directory holding the ``actorcore`` package (so children can import it):
    the parent of ``actorcore/``, never ``actorcore/`` itself, whose folders (``api``,
    ``node``, ``session``, ...) would shadow the user's modules of the same names."""
    return str(Path(__file__).resolve().parents[2])  # <root>/actorcore/session/_launcher.py


def site_flags() -> list[str]:
    """This interpreter's ``-S`` and ``-s`` flags, for the Python processes it starts
    (the node, which passes them on to its workers), as Ray does: a hermetic
    program's workers must not import from the site directories it left out."""
    return (["-S"] if sys.flags.no_site else []) + (["-s"] if sys.flags.no_user_site else [])


def _read_line(fd: int, timeout: float, proc: subprocess.Popen,
               what: str = "the head node") -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ActorcoreSystemError(
                f"{what} did not become ready within {timeout} s.\n"
                f"{log_tail(Path(_session_of(proc)))}"
            )
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    return buf.decode().strip()


def _session_of(proc: subprocess.Popen) -> str:
    args = list(proc.args)  # type: ignore[arg-type]
    return str(args[args.index("--session-dir") + 1])


def find_cluster(address: str | None) -> tuple[str, bytes, dict[str, Any]]:
    """Resolve ``address`` ("auto", a session's address, or None) to (address, token, info)."""
    if address in (None, "auto", "local"):
        session = latest_session()
        if session is None:
            raise ConnectionError(
                "no running actorcore cluster found on this machine "
                "(start one with `actorcore start --head`, or call actorcore.init())"
            )
        info = read_session_info(session)
        return info["address"], read_token(session), info
    addr = address
    if not addr.startswith(("unix:", "tcp:")):
        addr = "tcp:" + addr
    session = find_session(addr)
    if session is not None:
        pid = session_pid(session)
        if pid is not None and not pid_alive(pid):
            raise ConnectionError(
                f"the cluster at {address!r} is not running: its node (pid {pid}) is gone; "
                f"its logs are in {session / 'logs'}"
            )
        try:
            info = read_session_info(session)
        except (OSError, ValueError):  # a node still starting, or one that is gone
            info = {"address": addr, "session_dir": str(session),
                    "log_dir": str(session / "logs")}
        return addr, read_token(session), info
    token_hex = os.environ.get("ACTORCORE_TOKEN")
    if not token_hex:
        where = ("no session directory holds that socket" if addr.startswith("unix:")
                 else f"no live session under {root_dir()} listens there")
        raise ConnectionError(
            f"no token for cluster {address!r}: {where}; set ACTORCORE_TOKEN to the "
            f"cluster's token (the 'token' file in its session directory)"
        )
    try:
        token = bytes.fromhex(token_hex)
    except ValueError:
        raise ConnectionError(
            f"ACTORCORE_TOKEN is not a hex string ({len(token_hex)} characters); it must be "
            f"the contents of the cluster's 'token' file"
        ) from None
    return addr, token, {"address": addr}
