"""The services the node supervises, and the plan that tells it how to nest them.

The node must not know the GCS's internals, so `plan` returns a plain description
(`ServiceSpec` tree) of what to supervise::

    gcs           (supervisor, one_for_one)
    ├── coordinator   kind gcs_coordinator  (the chain master; clients connect here)
    ├── shard_0       (supervisor, one_for_one)
    │   ├── replica_0 kind gcs_replica, pid of its own process when replicas >= 2
    │   └── ...
    └── shard_<S-1>

``one_for_one`` at the top: a coordinator crash restarts the coordinator alone. The
replicas keep serving (the coordinator is not on the data path), redial it at the
same address and register again with their chain view and progress; the new
coordinator rebuilds every chain from those reports (see `_coordinator.py`,
"Restart"), so its restart loses nothing and clients do not notice it. A replica's
`run` raises when its process dies, so the shard supervisor restarts it; the new
incarnation registers under a fresh name and joins its chain behind the tail by
state transfer.

`GcsService` runs the same plan with plain nurseries and a minimal restart loop, for
using the GCS without actorcore's kernel (benchmarks, scripts, the GCS's own tests).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import trio

import transport

from ._config import GcsConfig
from ._coordinator import Coordinator
from ._replica import Replica

__all__ = ["GcsPlan", "GcsService", "ReplicaProcessDied", "ReplicaService", "ServiceSpec", "plan"]


# The replica processes must import this very `gcs` package, wherever it lives.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ReplicaProcessDied(Exception):
    """A replica's process exited (killed, crashed, or removed from its chain)."""


@attrs.frozen
class ServiceSpec:
    """One node of the supervision tree to build.

    A leaf has a ``factory`` (called for every (re)start; returns a child-protocol
    service); a supervisor has ``children`` and a ``strategy``.
    """

    name: str
    kind: str
    factory: Callable[[], Any] | None = None
    children: tuple[ServiceSpec, ...] = ()
    strategy: str = "one_for_one"
    restart: str = "permanent"
    max_restarts: int = 10
    max_seconds: float = 10.0


@attrs.define(eq=False)
class GcsPlan:
    """What the node needs to run a GCS: the tree to supervise and where clients go."""

    config: GcsConfig
    token: bytes
    tree: ServiceSpec = attrs.field(init=False)
    coordinator: Coordinator | None = None
    _address_ready: trio.Event = attrs.Factory(trio.Event)
    #: One per GCS: clients merge layouts by epoch within it, across coordinator restarts.
    generation: str = attrs.Factory(lambda: uuid.uuid4().hex)
    #: Coordinator incarnations started so far.
    coordinator_starts: int = 0
    _coordinator_changed: trio.Event = attrs.Factory(trio.Event)
    #: Replicas whose service has ended (process exited): a recovering coordinator
    #: need not wait for them.
    exited: set[str] = attrs.Factory(set)
    #: The last epoch any coordinator incarnation published, per shard.
    epochs: dict[int, int] = attrs.Factory(dict)

    def _replica_exited(self, name: str) -> None:
        self.exited.add(name)
        if self.coordinator is not None:
            self.coordinator.replica_exited(name)

    @property
    def address(self) -> str | None:
        """The coordinator's address (clients connect here), once it started."""
        return self.coordinator.address if self.coordinator is not None else None

    async def wait_address(self, timeout: float = 30.0) -> str:  # noqa: ASYNC109 (public API, like the transport contract)
        with trio.fail_after(timeout):
            while self.address is None:
                await self._address_ready.wait()
        assert self.address is not None
        return self.address

    async def wait_ready(self, timeout: float = 30.0) -> str:  # noqa: ASYNC109 (public API, like the transport contract)
        """Wait until every shard has its full chain; return the client address."""
        with trio.fail_after(timeout):
            address = await self.wait_address()
            while True:
                coordinator = self.coordinator
                assert coordinator is not None
                if await self._unless_replaced(coordinator, coordinator.wait_ready(timeout)):
                    return address

    async def wait_removed(self, name: str) -> None:
        """Return once the coordinator (whichever incarnation) declared ``name`` dead."""
        while True:
            coordinator = self.coordinator
            if coordinator is None:
                await self._coordinator_changed.wait()
            elif await self._unless_replaced(coordinator, coordinator.wait_removed(name)):
                return

    async def _unless_replaced(self, coordinator: Coordinator, wait: Any) -> bool:
        """Await ``wait``; False (and ``wait`` cancelled) if ``coordinator`` is
        replaced by a new incarnation first."""
        done = False
        changed = self._coordinator_changed
        async with trio.open_nursery() as nursery:
            async def waiter() -> None:
                nonlocal done
                await wait
                done = True
                nursery.cancel_scope.cancel()

            async def replaced() -> None:
                await changed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(waiter)
            nursery.start_soon(replaced)
        return done

    def _new_coordinator(self) -> Coordinator:
        previous = self.address
        # A restarted coordinator keeps its address (clients and replicas redial it)
        # and rebuilds the chains from the replicas' reports.
        self.coordinator = Coordinator(self.config, self.token, address=previous,
                                       generation=self.generation,
                                       recover=self.coordinator_starts > 0,
                                       exited=self.exited, epochs=self.epochs)
        self.coordinator_starts += 1
        self._coordinator_changed.set()
        self._coordinator_changed = trio.Event()
        coordinator = self.coordinator
        plan = self

        class _Announcing:
            def snapshot(self) -> dict[str, Any]:
                return coordinator.snapshot()

            async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                async with trio.open_nursery() as nursery:
                    address = await nursery.start(coordinator.run)
                    plan._address_ready.set()
                    plan._address_ready = trio.Event()
                    task_status.started(address)

        return _Announcing()  # type: ignore[return-value]


def plan(config: GcsConfig, token: bytes) -> GcsPlan:
    """Describe the GCS supervision tree for ``config`` (see the module docstring)."""
    result = GcsPlan(config, token)
    shards = []
    for shard in range(config.shards):
        replicas = tuple(
            ServiceSpec(
                name=f"replica_{j}",
                kind="gcs_replica",
                factory=functools.partial(ReplicaService, result, shard, j),
            )
            for j in range(config.replicas)
        )
        shards.append(ServiceSpec(name=f"shard_{shard}", kind="supervisor", children=replicas,
                                  strategy="one_for_one", max_restarts=50, max_seconds=10.0))
    result.tree = ServiceSpec(
        name="gcs",
        kind="supervisor",
        strategy="one_for_one",
        children=(
            ServiceSpec(name="coordinator", kind="gcs_coordinator",
                        factory=result._new_coordinator),
            *shards,
        ),
    )
    return result


class ReplicaService:
    """Child-protocol service for one replica slot (``shard_<i>/replica_<j>``).

    With ``config.use_processes`` it runs the replica in its own process
    (``python -m gcs._replica_main``) and raises `ReplicaProcessDied` when that process
    exits; otherwise it runs the replica in this process.
    """

    def __init__(self, plan: GcsPlan, shard: int, index: int) -> None:
        self.plan = plan
        self.shard = shard
        self.index = index
        self.name = f"s{shard}r{index}-{uuid.uuid4().hex[:8]}"
        self.pid: int | None = None
        self.address: str | None = None
        self.process: trio.Process | None = None

    def snapshot(self) -> dict[str, Any]:
        role = "down"
        coordinator = self.plan.coordinator
        if coordinator is not None:
            cfg = coordinator.chain(self.shard)
            if cfg.learner == self.name:
                role = "learner"
            elif self.name in cfg.chain:
                i = cfg.chain.index(self.name)
                role = "+".join(r for r, on in (("head", i == 0), ("tail", i == len(cfg.chain) - 1)) if on) or "middle"
            else:
                role = "joining"
        return {"kind": "gcs_replica", "pid": self.pid, "address": self.address,
                "role": role, "replica": self.name}

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            self.plan._replica_exited(self.name)

    async def _run(self, task_status: trio.TaskStatus[Any]) -> None:
        coordinator = await self.plan.wait_address()
        if not self.plan.config.use_processes:
            self.pid = os.getpid()
            replica = Replica(self.plan.config, shard=self.shard, token=self.plan.token,
                              coordinator=coordinator, name=self.name)
            async with trio.open_nursery() as nursery:
                self.address = await nursery.start(replica.run)
                task_status.started(self.address)
            return
        await self._run_process(coordinator, task_status)

    async def _run_process(self, coordinator: str, task_status: trio.TaskStatus[Any]) -> None:
        params = {
            "config": attrs.asdict(self.plan.config),
            "shard": self.shard,
            "name": self.name,
            "token": self.plan.token.hex(),
            "coordinator": coordinator,
            # The process's TLS mode for TCP links goes along (see _replica_main).
            "tls": None if (tls := transport.default_tls()) is None else tls.as_dict(),
            "insecure": transport.insecure_allowed(),
        }
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gcs._replica_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self.process = process
        self.pid = process.pid
        try:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send_all(json.dumps(params).encode() + b"\n")
            buffer = b""
            with trio.fail_after(60):
                while b"\n" not in buffer:
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        raise ReplicaProcessDied(
                            f"GCS replica {self.name} (pid {process.pid}) exited before it "
                            f"was ready (exit code {await process.wait()})"
                        )
                    buffer += chunk
            line = buffer.split(b"\n", 1)[0].decode()
            if not line.startswith("READY "):
                raise ReplicaProcessDied(f"GCS replica {self.name} said {line!r}, not READY")
            self.address = line[len("READY "):]
            task_status.started(self.address)
            async with trio.open_nursery() as nursery:

                async def watch_membership() -> None:
                    # Declared dead while its process lives (it missed its heartbeats,
                    # e.g. it hangs): kill it, so it is replaced by a fresh one.
                    await self.plan.wait_removed(self.name)
                    if process.returncode is None:
                        process.kill()

                nursery.start_soon(watch_membership)
                code = await process.wait()
                nursery.cancel_scope.cancel()
            raise ReplicaProcessDied(
                f"GCS replica {self.name} of shard {self.shard} (pid {process.pid}) "
                f"exited with code {code}"
            )
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process)


async def _stop(process: trio.Process) -> None:
    """Stop a replica process: TERM, then KILL after a grace period; always reap it."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(2.0):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            await stream.aclose()


class GcsService:
    """Run a whole GCS without actorcore's kernel (plain nurseries, restart loops).

    ``run`` reports the client address once every shard has its full chain. A crashed
    replica is restarted (after ``restart_delay``); anything else propagates.
    """

    def __init__(self, config: GcsConfig, token: bytes, *, restart_delay: float = 0.05) -> None:
        self.config = config
        self.token = token
        self.plan = plan(config, token)
        self.restart_delay = restart_delay
        self.services: dict[tuple[int, int], ReplicaService] = {}
        self.restarts = 0

    @property
    def coordinator(self) -> Coordinator:
        assert self.plan.coordinator is not None
        return self.plan.coordinator

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            coordinator_spec = self.plan.tree.children[0]
            assert coordinator_spec.factory is not None
            await nursery.start(coordinator_spec.factory().run)
            for shard_spec in self.plan.tree.children[1:]:
                for replica_spec in shard_spec.children:
                    nursery.start_soon(self._keep_running, replica_spec)
            task_status.started(await self.plan.wait_ready())

    async def _keep_running(self, spec: ServiceSpec) -> None:
        assert spec.factory is not None
        while True:
            service = spec.factory()
            self.services[(service.shard, service.index)] = service
            try:
                await service.run()
            except (ReplicaProcessDied, Exception):  # noqa: B014 -- a crash: restart
                pass
            self.restarts += 1
            await trio.sleep(self.restart_delay)

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "gcs", "shards": {
            f"{s}/{r}": svc.snapshot() for (s, r), svc in sorted(self.services.items())}}
