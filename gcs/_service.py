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

There is one restart mechanism, the supervisor's: this package describes the tree
and its services follow the child protocol (CONTRACTS.md §1), and whoever runs the
GCS -- the node, a test, a benchmark -- turns the plan into kernel child specs
(leaves into ``ChildSpec``, branches into ``Supervisor.spec``). The package never
imports the kernel and runs nothing of its own around the services.

A replica process gets its parameters as one JSON line on stdin (`LaunchParams`: the
token travels there, never on the command line) and answers ``READY <address>``.
A slot that restarts takes a *spare* if one is ready: a replica process started
ahead, imported, waiting for those parameters (``_spares.py``; the ``gcs/
replica_spares`` leaf keeps ``GcsConfig.spare_replicas`` of them), so the
replacement does not pay its imports inside the failover.

Fault rules. Replicas in the node's process share its `transport.faults` table;
replicas in processes of their own have one each, and `ReplicaFaults` (the plan's
``faults``) keeps them in step with the node's: a command (install or heal by tag,
clear) goes down every replica process's stdin and is answered on its stdout
(`_replica_main`), and a replica started later gets the installed rules in its
`LaunchParams`, in force from its first frame.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import signal
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import trio

import transport

from ._config import FAULTS_ANSWER, GcsConfig, LaunchParams
from ._coordinator import Coordinator
from ._lifeline import Lifeline
from ._replica import Replica
from ._spares import ReplicaSpares, SpareKeeper, open_replica_process, replica_environment

__all__ = [
    "CoordinatorService",
    "GcsPlan",
    "ReplicaFaults",
    "ReplicaProcessDied",
    "ReplicaService",
    "ServiceSpec",
    "plan",
]


logger = logging.getLogger("gcs")

#: How long a fault command waits for a replica process's answer.
FAULT_COMMAND_TIMEOUT = 5.0


class ReplicaProcessDied(Exception):
    """A replica's process exited (killed, crashed, or removed from its chain)."""


@attrs.define(eq=False)
class ReplicaFaults:
    """The `transport.faults` rules of a GCS's replica processes (module docstring).

    ``installed`` is what a replica starting now is given; ``generation`` counts
    the commands, so a replica that started while one was on its way knows to take
    the whole table again (`ReplicaService`).
    """

    installed: dict[str, list[dict[str, Any]]] = attrs.Factory(dict)
    generation: int = 0
    #: The replica services whose process answers commands now.
    attached: set[ReplicaService] = attrs.Factory(set)
    # One command at a time, to every process, answered before the next: tasks that
    # send concurrently could reach a process in another order than they were
    # recorded (an install after its heal would stay for good).
    lock: trio.Lock = attrs.Factory(trio.Lock)

    def record(self, command: dict[str, Any]) -> None:
        """Keep what ``command`` changes (checked first: a bad rule goes nowhere)."""
        op = command.get("op") if isinstance(command, dict) else None
        if op == "install":
            rules = list(command["rules"])
            for rule in rules:
                transport.faults.Rule.from_dict(rule)
            self.installed[str(command["tag"])] = rules
        elif op == "heal":
            self.installed.pop(str(command["tag"]), None)
        elif op == "clear":
            self.installed.clear()
        else:
            raise ValueError(f"GCS fault rules: op must be install, heal or clear, got {op!r}")
        self.generation += 1

    async def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        """Record ``command`` and run it in every replica process; their answers by
        replica name (``"failed: ..."`` for one that did not answer: it died, and
        its replacement starts with the table)."""
        async with self.lock:
            self.record(command)
            return await self._send(command)

    async def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        done: dict[str, Any] = {}

        async def one(service: ReplicaService) -> None:
            try:
                done[service.name] = await service.fault_command(command)
            except (ReplicaProcessDied, trio.TooSlowError, ValueError) as exc:
                logger.warning("fault rules for GCS replica %s: %s", service.name, exc)
                done[service.name] = f"failed: {exc}"

        async with trio.open_nursery() as nursery:
            for service in list(self.attached):
                nursery.start_soon(one, service)
        return done


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
    #: The fault rules of the replica processes (the module docstring).
    faults: ReplicaFaults = attrs.Factory(ReplicaFaults)
    #: Replica processes started ahead for the slots that restart (``_spares.py``).
    spares: ReplicaSpares = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        wanted = self.config.spare_replicas if self.config.use_processes else 0
        self.spares = ReplicaSpares(wanted)

    def replica_exited(self, name: str) -> None:
        """The process of replica ``name`` exited (its service ended): a recovering
        coordinator need not wait for it."""
        self.exited.add(name)
        if self.coordinator is not None:
            self.coordinator.replica_exited(name)

    def replica_died(self, name: str) -> None:
        """The process of replica ``name`` died (its lifeline says so, before its
        sockets close): the coordinator cuts it out now; it will not register again."""
        if self.coordinator is not None:
            self.coordinator.replica_died(name)
        self.replica_exited(name)

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

    def new_coordinator(self) -> CoordinatorService:
        """The ``coordinator`` leaf's factory: a new incarnation, which keeps the
        address of the previous one (clients and replicas redial it) and rebuilds
        the chains from the replicas' reports."""
        self.coordinator = Coordinator(self.config, self.token, address=self.address,
                                       generation=self.generation,
                                       recover=self.coordinator_starts > 0,
                                       exited=self.exited, epochs=self.epochs)
        self.coordinator_starts += 1
        self._coordinator_changed.set()
        self._coordinator_changed = trio.Event()
        return CoordinatorService(self, self.coordinator)

    def coordinator_listening(self) -> None:
        """The current coordinator listens: wake whoever waits for the address."""
        self._address_ready.set()
        self._address_ready = trio.Event()


class CoordinatorService:
    """Child-protocol service of one coordinator incarnation: it tells the plan once
    the coordinator listens (the replicas wait for its address)."""

    def __init__(self, plan: GcsPlan, coordinator: Coordinator) -> None:
        self.plan = plan
        self.coordinator = coordinator

    def snapshot(self) -> dict[str, Any]:
        return self.coordinator.snapshot()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(self.coordinator.run)
            self.plan.coordinator_listening()
            task_status.started(address)


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
    keeper: tuple[ServiceSpec, ...] = ()
    if result.spares.wanted:
        keeper = (ServiceSpec(name="replica_spares", kind="gcs_spares",
                              factory=functools.partial(SpareKeeper, result.spares, _stop)),)
    result.tree = ServiceSpec(
        name="gcs",
        kind="supervisor",
        strategy="one_for_one",
        children=(
            ServiceSpec(name="coordinator", kind="gcs_coordinator",
                        factory=result.new_coordinator),
            *shards,
            *keeper,
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
        #: Its process's lifeline (`_lifeline.py`), where the platform has them.
        self.lifeline: Lifeline | None = None
        #: How the death of its process was first known: "lifeline" or "reap"
        #: (None while it lives, or without a process).
        self.death_told_by: str | None = None
        # The fault-command channel to the process (its stdin; answers on stdout).
        self._commands = trio.Lock()
        self._command_ids = itertools.count(1)
        self._answers: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._stdout = b""

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
            self.plan.replica_exited(self.name)

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
        params = LaunchParams(
            config=self.plan.config,
            shard=self.shard,
            name=self.name,
            token=self.plan.token,
            coordinator=coordinator,
            # The process's TLS mode for TCP links goes along (see _replica_main).
            tls=None if (tls := transport.default_tls()) is None else tls.as_dict(),
            insecure=transport.insecure_allowed(),
            fault_rules=dict(self.plan.faults.installed),
        )
        generation = self.plan.faults.generation
        # A spare has imported already (``_spares.py``); else spawn one now.
        taken = self.plan.spares.take()
        if taken is None:
            taken = await open_replica_process(spare=False, env=replica_environment())
        process, lifeline = taken
        self.process = process
        self.lifeline = lifeline
        self.pid = process.pid
        try:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send_all(params.to_json().encode() + b"\n")
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
            line, self._stdout = buffer.split(b"\n", 1)
            if not line.startswith(b"READY "):
                raise ReplicaProcessDied(f"GCS replica {self.name} said {line!r}, not READY")
            self.address = line[len(b"READY "):].decode()
            if lifeline is not None:
                lifeline.watch(functools.partial(self._process_died, "lifeline"))
            task_status.started(self.address)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_answers, process)
                self.plan.faults.attached.add(self)
                if self.plan.faults.generation != generation:
                    # A command left while this process started, with the table it
                    # got: it takes the whole table now.
                    nursery.start_soon(self._resync)

                async def watch_membership() -> None:
                    # Declared dead while its process lives (it missed its heartbeats,
                    # e.g. it hangs): kill it, so it is replaced by a fresh one.
                    await self.plan.wait_removed(self.name)
                    if process.returncode is None:
                        process.kill()

                nursery.start_soon(watch_membership)
                code = await process.wait()
                nursery.cancel_scope.cancel()
            # Reaped, so dead for certain: cut it out now if its lifeline did not
            # (one that could not be held, or a reap seen in the same pass of the
            # loop as the lifeline's callback, and run first), whatever its sockets
            # do; its slot's new replica joins a repaired chain.
            self._process_died("reap")
            raise ReplicaProcessDied(
                f"GCS replica {self.name} of shard {self.shard} (pid {process.pid}) "
                f"exited with code {code}"
            )
        finally:
            if lifeline is not None:
                lifeline.disarm()  # stopped on purpose below, or told already
            self.plan.faults.attached.discard(self)
            with trio.CancelScope(shield=True):
                await _stop(process)

    def _process_died(self, told_by: str) -> None:
        """The process died: its lifeline says so (``told_by`` "lifeline",
        `_lifeline.py`: before the kernel closes its sockets), or it was reaped
        ("reap"). The first of the two cuts it out of its chain; the second finds
        it gone."""
        if self.death_told_by is None:
            self.death_told_by = told_by
        self.plan.replica_died(self.name)

    # --------------------------------------------------------- fault commands

    async def fault_command(self, command: dict[str, Any]) -> Any:
        """Run a `transport.faults` command in the replica's process; its result.

        Raises `ReplicaProcessDied` if the process is gone, `trio.TooSlowError` if it
        does not answer within ``FAULT_COMMAND_TIMEOUT``, `ValueError` with its words
        if it refused the command.
        """
        process = self.process
        if process is None or process.stdin is None or process.returncode is not None:
            raise ReplicaProcessDied(f"GCS replica {self.name} has no running process")
        ident = next(self._command_ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._answers[ident] = send
        try:
            with trio.fail_after(FAULT_COMMAND_TIMEOUT):
                line = json.dumps({"id": ident, "faults": command}).encode() + b"\n"
                async with self._commands:
                    try:
                        await process.stdin.send_all(line)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        raise ReplicaProcessDied(
                            f"GCS replica {self.name} (pid {process.pid}) exited") from None
                try:
                    answer = await receive.receive()
                except trio.EndOfChannel:
                    raise ReplicaProcessDied(
                        f"GCS replica {self.name} (pid {process.pid}) exited before it "
                        f"answered a fault command") from None
        finally:
            self._answers.pop(ident, None)
        if not answer.get("ok"):
            raise ValueError(f"GCS replica {self.name}: {answer.get('error')}")
        return answer.get("result")

    async def _resync(self) -> None:
        """Give the process the whole table (after a start that raced a command)."""
        faults = self.plan.faults
        try:
            async with faults.lock:  # (the table cannot change meanwhile)
                await self.fault_command({"op": "clear"})
                for tag, rules in list(faults.installed.items()):
                    await self.fault_command({"op": "install", "tag": tag, "rules": rules})
        except (ReplicaProcessDied, trio.TooSlowError, ValueError) as exc:
            logger.warning("fault rules for GCS replica %s: %s", self.name, exc)

    async def _read_answers(self, process: trio.Process) -> None:
        """Hand each ``FAULTS`` line of the process's stdout to its command."""
        assert process.stdout is not None
        buffer = self._stdout
        try:
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    if not text.startswith(FAULTS_ANSWER):
                        logger.info("GCS replica %s said %r", self.name, text[:200])
                        continue
                    try:
                        answer = json.loads(text[len(FAULTS_ANSWER):])
                    except ValueError:
                        logger.warning("GCS replica %s: a garbled answer %r", self.name,
                                       text[:200])
                        continue
                    send = self._answers.get(answer.get("id"))
                    if send is not None:
                        send.send_nowait(answer)
                try:
                    chunk = await process.stdout.receive_some()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    return
                buffer += chunk
        finally:
            for send in self._answers.values():
                send.close()


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
