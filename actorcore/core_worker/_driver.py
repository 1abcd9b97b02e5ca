"""The driver's core loop: a Trio loop in a background thread.

``init()`` starts ``DriverLoop`` (a daemon thread running ``trio.run``); the loop
connects to the node, registers as a driver, builds the ``CoreWorker`` and then
serves until ``stop()``. The user's thread calls the core worker's sync methods:
submits and puts never wait for the loop (see ``_core_worker``); ``get``/``wait`` on
values not yet here enter it with ``trio.from_thread.run``.

If the link to the node dies, the loop redials it for ``RECONNECT_WINDOW`` seconds
(an ``rpc_server`` restart drops every link of a live node). If the node's process
is gone — the driver can tell for a node on this machine: it holds the process of
an embedded cluster, and knows the pid of any other local node from its hello —
it stops at once. Either way every waiting and later call then fails with a
``NodeDiedError`` naming the node, its pid and address, how it ended and where its
logs are, instead of hanging on a dead loop.

Worker output forwarded by the node (``log_to_driver``) is printed here, each line
prefixed with where it ran, to this process's stdout or stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import trio

import transport

from ..exceptions import ActorcoreSystemError, NodeDiedError
from ..protocol import _wire as w
from ..protocol._ids import id_prefix, new_job_id, new_worker_id
from ..protocol._messages import RECONNECT_WINDOW, REJOIN_TIMEOUT
from ..session._session import pid_alive
from ._core_worker import CoreWorker
from ._direct_calls import DIRECT_CALLS, LINK_TIMEOUT

__all__ = ["DriverLoop", "RECONNECT_WINDOW"]

logger = logging.getLogger("actorcore.driver")


class DriverLoop:
    def __init__(
        self,
        address: str,
        token: bytes,
        *,
        log_to_driver: bool = True,
        namespace: str = "default",
        node_process: subprocess.Popen | None = None,
    ) -> None:
        self.address = address
        self.token = token
        self.log_to_driver = log_to_driver
        self.namespace = namespace  # the job's; its tasks ask the node for it
        self.node_process = node_process  # the node of an embedded cluster
        self.core: CoreWorker | None = None
        #: The node's answer to our `Hello` (None until it came).
        self.info: w.HelloReply | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopping = False
        self._direct: str | None = None
        # What the node (and, on the direct socket, a worker pushing results) sends.
        self._handle = self._dispatcher()
        self._thread = threading.Thread(target=self._thread_main, name="actorcore-core", daemon=True)

    def start(self, timeout: float = 30.0) -> CoreWorker:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ActorcoreSystemError(f"connecting to the node at {self.address} timed out")
        if isinstance(self._error, transport.TlsError):
            raise self._error  # a TLS mode or certificate problem: its type says which
        if self._error is not None:
            raise ActorcoreSystemError(
                f"could not connect to the node at {self.address}: {self._error}"
            ) from self._error
        assert self.core is not None
        return self.core

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = self._error or exc
            self._ready.set()

    def _dispatcher(self) -> transport.Dispatcher:
        """The registry of what the node sends a driver (``protocol._wire``)."""
        d = transport.Dispatcher(f"driver-{os.getpid()}")
        d.register(w.ObjectsReady, self._h_ready, oneway=True)
        d.register(w.ReleaseObjects, self._h_release, oneway=True)
        d.register(w.ForwardedLog, _print_log, oneway=True)
        # A fault rule command the node forwards (``testing.faults``).
        d.register(w.FaultRules, lambda conn, m: transport.faults.apply(m.command), oneway=True)
        return d

    def _h_ready(self, conn: Any, m: w.ObjectsReady) -> None:
        if self.core is not None:
            self.core.on_objects_ready(m.objects)

    def _h_release(self, conn: Any, m: w.ReleaseObjects) -> None:
        """The node holds these large objects now."""
        if self.core is not None and self.core.store is not None:
            self.core.store.release_soon(m.object_ids)

    async def _link(self, client: transport.Client, *, task_status: Any) -> None:
        """Keep the link to the node; after a loss, reconnect for ``RECONNECT_WINDOW``.

        The node's ``rpc_server`` can restart (its supervisor does that after a
        crash); its connections die with it. The driver then dials again, registers
        under the same worker id (the node kept its objects and queued tasks for a
        grace period), and fetches the results of its tasks that were pushed while
        the link was down. Only if the node stays unreachable does every waiting
        call fail with ``ActorcoreSystemError``.

        A rejoin must land while the node still keeps the driver's state: every
        attempt must have rejoined by ``REJOIN_TIMEOUT`` after the window, which
        the node's ``DRIVER_GRACE`` covers (``protocol._messages``).
        """
        try:
            await client.run(task_status=task_status)
            return  # closed by us
        except Exception as exc:
            if self.core is None:
                raise  # before it started: nursery.start() re-raises it to _main
            lost: BaseException = exc
        deadline = trio.current_time() + RECONNECT_WINDOW
        while not self._stopping:
            gone = self._node_gone()
            if gone is not None or trio.current_time() > deadline:
                self.core.connection_lost(self._node_lost_error(lost, gone))
                return
            await trio.sleep(0.05)
            client = transport.Client(
                self.address, self.token, name=f"driver-{os.getpid()}", handler=self._handle
            )
            rejoined = False
            try:
                async with trio.open_nursery() as nursery:
                    with trio.move_on_at(deadline + REJOIN_TIMEOUT):
                        conn = await nursery.start(client.run)
                        await self._rejoin(conn)
                        rejoined = True
                    if not rejoined:  # the node would have dropped us by now
                        raise TimeoutError(
                            f"a rejoin started within the window was not answered "
                            f"{REJOIN_TIMEOUT:g} s after it")
            except Exception as exc:
                lost = exc
                if rejoined:  # a new loss after a good rejoin: a new window
                    deadline = trio.current_time() + RECONNECT_WINDOW

    def _node_gone(self) -> str | None:
        """How the node's process ended, if the driver can tell that it did."""
        proc = self.node_process
        if proc is not None:
            code = proc.poll()
            if code is None:
                return None
            if code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = "?"
                return f"its process was killed by signal {-code} ({name})"
            return f"its process exited with code {code}"
        pid = self.info.pid if self.info is not None else None
        if pid is None or not self.address.startswith("unix:"):
            return None  # not on this machine: only the silence tells
        return None if pid_alive(pid) else "its process is gone"

    def _node_lost_error(self, lost: BaseException, gone: str | None) -> NodeDiedError:
        """The error every waiting and later call gets once the node is lost."""
        info = self.info
        node = info.node_id.hex()[:12] if info is not None else "?"
        what = "head node" if info is None or info.head else "node"
        where = f"the {what} {node} (pid {info.pid if info is not None else '?'}, {self.address})"
        if gone is not None:
            text = f"{where} died: {gone}"
        else:
            text = (f"{where} is unreachable: the link to it was lost and it did not answer "
                    f"for {RECONNECT_WINDOW:g} s (last error: {_leaf(lost)}); it has "
                    f"probably died")
        log_dir = info.log_dir if info is not None else None
        if log_dir:
            text += f". Its logs are in {log_dir} (node.log, node.err)"
            tail = _tail(Path(log_dir) / "node.err", 8)
            if tail:
                text += f"; the end of node.err:\n{tail}"
        return NodeDiedError(text)

    async def _listen(self, nursery: trio.Nursery) -> str | None:
        """Listen for results that workers of this node push straight to us.

        Only beside a node reached over its Unix socket (same machine, same session
        directory); results then take one hop (worker -> driver) instead of two
        (measured: ~15 % off a one-at-a-time task here). ``ACTORCORE_DIRECT_CALLS=0``
        turns it off (every result then comes through the node), as it turns off
        direct actor calls.
        """
        if not self.address.startswith("unix:") or not DIRECT_CALLS:
            return None
        sockets = os.path.dirname(self.address[len("unix:"):])
        path = os.path.join(sockets, f"driver-{os.getpid()}-{os.urandom(2).hex()}.sock")
        server = transport.Server(
            f"unix:{path}", self.token, self._handle, name=f"driver-{os.getpid()}-direct",
            handshake_timeout=LINK_TIMEOUT,
        )
        try:
            return await nursery.start(server.run)
        except Exception as exc:  # not fatal: results come through the node
            logger.info("cannot listen for pushed results at %s: %r", path, exc)
            return None

    async def _rejoin(self, conn: Any) -> None:
        core = self.core
        assert core is not None
        await conn.request(
            w.Hello("driver", core.worker_id, os.getpid(),
                    w.HelloInfo(job_id=core.job_id, log_to_driver=self.log_to_driver,
                                rejoin=True, direct_address=self._direct,
                                namespace=self.namespace, id_prefix=id_prefix())),
            timeout=30,
        )
        core.reconnected(conn)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as outer:
            client = transport.Client(
                self.address, self.token, name=f"driver-{os.getpid()}", handler=self._handle
            )
            try:
                conn = await outer.start(self._link, client)
            except Exception as exc:
                self._error = exc
                self._ready.set()
                return
            job_id = new_job_id()
            worker_id = new_worker_id()
            direct = self._direct = await self._listen(outer)
            try:
                info = await conn.request(
                    w.Hello("driver", worker_id, os.getpid(),
                            w.HelloInfo(job_id=job_id, log_to_driver=self.log_to_driver,
                                        direct_address=direct, namespace=self.namespace,
                                        id_prefix=id_prefix())),
                    timeout=30,
                )
            except Exception as exc:
                self._error = exc
                self._ready.set()
                outer.cancel_scope.cancel()
                return
            self.info = info
            core = CoreWorker(
                role="driver",
                worker_id=worker_id,
                job_id=job_id,
                node_id=info.node_id,
                conn=conn,
                gcs_address=info.gcs_address,
                node_address=self.address,
            )
            self.core = core
            self._conn = conn
            try:
                await core.serve(outer, info.store_address, self.token)
            except Exception as exc:
                self._error = exc
                self._ready.set()
                outer.cancel_scope.cancel()
                return
            if core.store is not None:
                outer.start_soon(core.store.map_ahead)
            self._ready.set()
            await self._stop.wait()
            self._stopping = True
            conn = core.conn
            # Tell the node this is an exit, not a dropped link: it ends our actors at
            # once instead of waiting for us to reconnect.
            core.enqueue(w.Bye())
            core.close()
            # Let queued one-way messages (frees, puts) go out before closing, while
            # the link is up: once the node has gone (``shutdown()`` stops an embedded
            # one first) they never will, and waiting for them held every
            # ``shutdown()`` 2 s.
            with trio.move_on_after(2):
                while core.has_queued() and not core.conn.closed:  # noqa: ASYNC110
                    await trio.sleep(0.005)
            with trio.move_on_after(2):
                if core.store is not None:
                    await core.store.aclose()
                await conn.aclose(flush_timeout=1.0)
            outer.cancel_scope.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        token, stop = self._token, self._stop
        if token is not None and stop is not None:
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)


def _leaf(exc: BaseException) -> str:
    """The first innermost error of ``exc`` (Trio wraps a link's error in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _print_log(conn: Any, m: w.ForwardedLog) -> None:
    """A worker's output lines, printed after their prefix (``log_to_driver``)."""
    out = sys.stderr if m.stream == "err" else sys.stdout
    try:
        out.write("".join(f"{m.prefix} {line}\n" for line in m.lines))
        out.flush()
    except Exception as exc:  # our stdout/stderr is closed or broken
        logger.info("could not print %d forwarded %s line(s): %r", len(m.lines), m.prefix, exc)
