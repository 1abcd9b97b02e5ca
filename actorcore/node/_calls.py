"""Introspection and admin calls served by a node (`AdminCall`: ``name``, ``args``).

``tree``, ``status``, ``cluster_resources``, ``available_resources``, ``nodes``,
``crash`` (the fault hook of ``actorcore.testing.faults``), ``kill_worker``,
``job_namespace``, ``task`` (where a task is on the node: what a test that waits
too long prints) and ``shutdown``. Each answers its ``Reply`` now, or later from a
task for calls that read the GCS.

``status`` answers a dict whose component entries are the components' typed
statistics (``SchedulerStatistics``, ``DirectoryStatistics``, ``ActorManagerStatistics``,
``ControlStatistics``, ``store.StoreStatistics``): its callers import them too.
``actorcore status --json`` turns them into JSON objects with ``attrs.asdict``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..kernel import InjectedCrash
from ..protocol._wire import AdminCall
from .actor_manager._introspect import actor_entry

__all__ = ["CALLS", "dispatch_call"]


def _statuses(node: Any) -> list:
    """Every node the cluster knows (dead ones too), this one with its live figures."""
    from .gcs_client._membership import NodeStatus

    out = []
    me = NodeStatus.from_record(node.node_info(), None)
    me = attrs.evolve(me, available={k: max(v, 0.0) for k, v in node.sched.available_to_report().items()})
    seen = False
    for status in node.view.nodes.values():
        if status.node_id == node.node_hex:
            out.append(me)
            seen = True
        else:
            out.append(status)
    if not seen:
        out.insert(0, me)
    return out


def _alive(node: Any) -> list:
    return [s for s in _statuses(node) if s.alive]


def _sum(parts: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for res in parts:
        for k, v in res.items():
            total[k] = total.get(k, 0.0) + max(v, 0.0)
    return total


def _node_entry(node: Any, status: Any) -> dict:
    """One entry of ``nodes()``, with Ray's keys."""
    info = status.info
    return {
        "NodeID": status.node_id,
        "Alive": status.alive,
        "Resources": dict(status.resources),
        "NodeManagerAddress": status.host,
        "address": status.address or info.get("address"),
        "pid": status.pid,
        "is_head": status.head,
        "death_reason": status.death_reason,
        "session_dir": info.get("session_dir"),
    }


def _local_tree(node: Any) -> dict:
    """This node's own supervision tree."""
    snap = node.supervisor.snapshot()
    snap["address"] = node.unix_address
    snap["tcp_address"] = node.tcp_address
    snap["head"] = node.config.head
    return snap


def _cluster_tree(children: list[dict]) -> dict:
    return {"name": "cluster", "kind": "cluster", "state": "running", "restarts": 0,
            "pid": None, "node_id": None, "children": children}


async def _tree(node: Any, reply: Any) -> None:
    """The cluster's tree: one subtree per live node, this one's first; a node that
    does not answer within 5 s shows as ``unreachable``."""
    import trio

    others = node.view.others()
    subtrees: dict[str, dict] = {}

    async def one(status: Any) -> None:
        try:
            with trio.fail_after(5.0):
                subtrees[status.node_id] = await node.peers.request(
                    status.node_id, AdminCall("local_tree"))
        except Exception as exc:
            subtrees[status.node_id] = {
                "name": "node", "kind": "node", "state": "unreachable", "restarts": 0,
                "pid": status.pid, "node_id": status.node_id, "children": [],
                "error": str(exc) or type(exc).__name__}

    async with trio.open_nursery() as nursery:
        for status in others:
            nursery.start_soon(one, status)
    children = [_local_tree(node)] + [subtrees[s.node_id] for s in others]
    reply.send(_cluster_tree(children))


def _status(node: Any) -> dict:
    sched = node.sched.statistics()
    statuses = _statuses(node)
    alive = [st for st in statuses if st.alive]
    total = _sum(st.resources for st in alive)
    free = _sum(st.available for st in alive)
    return {
        # Every node of the cluster (this one first), dead ones with their reason.
        "nodes": [dict(st.info, alive=st.alive, death_reason=st.death_reason,
                       available=st.available, queued=st.queued) for st in statuses],
        "resources_total": total,
        "resources_used": {k: v - free.get(k, 0.0) for k, v in total.items()},
        "scheduler": sched,
        "ledger": node.sched.ledger.statistics(),
        "object_store": node.directory.statistics(),
        "actors": node.actors.statistics(),
        "workers": {
            "alive": len(node.pool.alive()),
            "started_total": node.pool.started_total,
            "died_total": node.pool.died_total,
            "zygote": node.pool.zygote.statistics(),
        },
        "control": attrs.evolve(node.control.statistics(),
                                lineage_live_tasks=node.objects.lineage.live_tasks()),
        "lineage": node.objects.lineage.statistics(),
        "log_dir": str(node.config.session_dir / "logs"),
        "session_dir": str(node.config.session_dir),
        "security": node.security_info(),
        "uptime_s": time.time() - node.started_at,
        "pid": os.getpid(),
    }


def _crash(node: Any, component: str) -> str:
    """Crash the component at the tree path ``component`` (any path ``tree()`` shows).

    - ``node`` (or ``cluster``, its root on a one-node cluster): the node's whole
      tree crashes and starts again in order, one restart of the node supervisor.
    - A system component or a GCS path (``local_scheduler``, ``gcs/shard_0``, ...):
      the kernel's fault hook; it restarts under its supervisor's strategy.
    - A user supervisor (``<name>``): likewise; it comes back with its actors.
    - ``worker_pool/worker_<n>``: that worker process is SIGKILLed — a task worker
      (its tasks are retried by their ``max_retries``) or an actor process (its
      actors restart by their ``max_restarts``, or die with ``ActorDiedError``).
    - ``worker_pool/worker_<n>/<actor>`` and ``<supervisor>/<actor>``: the actor
      crashes — its process dies (a dedicated one), or only it fails in a shared
      actor process; its restart policy (``max_restarts``, its supervisor) applies.
    - ``worker_pool/worker_<n>/task:<name>``: the process running the task dies.
    - ``worker_pool/zygote``: the zygote process is SIGKILLed; it restarts.

    Raises ``ValueError`` naming the path and what exists there if nothing does.
    """
    sup = node.supervisor
    parts = [p for p in component.split("/") if p]
    if parts[:1] == ["cluster"]:
        parts = parts[1:]
    if parts[:1] == ["node"]:
        parts = parts[1:]
    if not parts:
        return _crash_node(node, component)
    if parts[0] == "worker_pool" and len(parts) >= 2:
        return _crash_in_pool(node, parts[1], "/".join(parts[2:]))
    us = node.actors.supervisors.get(parts[0])
    if us is not None and len(parts) >= 2:
        return _crash_supervised(node, us, "/".join(parts[1:]))
    parent = sup if len(parts) == 1 else sup.find("/".join(parts[:-1]))
    # Raises (to the caller, naming it) if there is no such child, or it is not
    # running (e.g. still restarting from the last crash). The crash is injected
    # now: the caller's link survives even a crash of rpc_server (``_tree``).
    parent.crash_child(parts[-1], InjectedCrash(f"crash injected into {component!r}"))
    return f"crashed {component}"


def _crash_node(node: Any, component: str) -> str:
    """The node's supervisor crashes: the node restarts its whole tree in order,
    counted as one restart (``Supervisor.crash_all``), as a parent would."""
    crashed = node.supervisor.crash_all(InjectedCrash(f"crash injected into {component!r}"))
    if not crashed:
        raise ValueError(f"crash(): nothing of {component!r} is running (restarting?)")
    return f"crashed {component} ({', '.join(crashed)})"


def _crash_in_pool(node: Any, worker_name: str, below: str) -> str:
    zygote = node.pool.zygote
    if worker_name == "zygote" and not below:
        if zygote.state not in ("running", "starting") or zygote.process is None:
            raise ValueError(f"crash(): worker_pool/zygote is not running (it is {zygote.state})")
        pid = zygote.pid
        zygote.process.kill()
        return f"killed zygote (pid {pid}); it restarts, and workers are spawned meanwhile"
    for w in node.pool.alive():
        if f"worker_{w.index}" == worker_name and w.process is not None:
            running = [f"task:{spec.name}" for spec in w.tasks.values()]
            if below and below not in running:
                raise ValueError(
                    f"crash(): worker_pool/{worker_name} runs no {below!r} (it runs "
                    f"{', '.join(map(repr, running)) or 'no task'})"
                )
            node.pool.kill(w)
            return f"killed {worker_name} (pid {w.pid})"
    manager = node.actors
    for aw in manager.workers.values():
        if f"worker_{aw.index}" != worker_name:
            continue
        if not below:
            if aw.process is None:
                raise ValueError(f"crash(): worker_pool/{worker_name} is still starting")
            manager.kill_worker(aw)
            return f"killed {worker_name} (pid {aw.pid}), the process of its actors"
        for rec in list(aw.actors.values()):
            if rec.state != "dead" and actor_entry(rec, node.node_hex)["name"] == below:
                return manager.crash_actor(rec)
        raise ValueError(
            f"crash(): no live actor {below!r} in worker_pool/{worker_name} (it hosts "
            f"{', '.join(repr(actor_entry(r, node.node_hex)['name']) for r in aw.actors.values()) or 'none'})"
        )
    known = sorted(
        [f"worker_{w.index}" for w in node.pool.alive()]
        + [f"worker_{aw.index}" for aw in manager.workers.values()],
        key=lambda n: int(n.split("_")[1]),
    )
    raise ValueError(
        f"crash(): no live worker named {worker_name!r} (live: {', '.join(known) or 'none'})"
    )


def _crash_supervised(node: Any, us: Any, name: str) -> str:
    rec = us.members.get(name)
    if rec is None or rec.state == "dead":
        raise ValueError(
            f"crash(): supervisor {us.name!r} has no live actor {name!r} (it has "
            f"{', '.join(map(repr, us.members)) or 'none'})"
        )
    return node.actors.crash_actor(rec)


#: How long a call that reports the cluster waits for its node to read the nodes
#: table again (`ClusterView.refreshed`) before it answers from the view as it is.
FRESH_VIEW_WAIT = 2.0


async def _read_view_again(node: Any) -> None:
    with trio.move_on_after(FRESH_VIEW_WAIT):
        await node.view.refreshed()


def _fresh(fn: Callable[..., Any]) -> Callable[..., None]:
    """A call whose answer is ``fn(node, *args)`` taken after the node read the nodes
    table again: a node whose ``actorcore start --address`` returned is in
    ``status``, ``nodes()`` and the resource totals at once, not a heartbeat later.
    """

    def call(node: Any, reply: Any, *args: Any) -> None:
        async def answer() -> None:
            await _read_view_again(node)
            reply.send(fn(node, *args))

        if not node.view.followed or not node.spawn(answer):
            reply.send(fn(node, *args))

    return call


def _status_call(node: Any, reply: Any) -> None:
    if node.store_link is None or not node.serving:
        _fresh(_status)(node, reply)
        return

    async def with_store() -> None:
        if node.view.followed:
            await _read_view_again(node)
        st = _status(node)
        try:
            with trio.move_on_after(5) as scope:
                st["store"] = await node.store_link.statistics()
            if scope.cancelled_caught:
                st["store_error"] = "the object store did not answer within 5 s"
        except Exception as exc:
            st["store_error"] = str(exc)
        reply.send(st)

    node.spawn(with_store)


# ``actorcore status`` asks for ``status_plain``: the same answer, its typed
# statistics (attrs classes of the node's modules) turned into plain dicts and
# lists. Unpickling the typed answer imported the modules that define them (the
# scheduler, the directory, the actor manager, the lineage, the GCS client: half
# of the node) in the CLI's process, which does nothing else with them: most of
# the CPU a status took.


def _plain(value: Any) -> Any:
    """``value`` with every attrs instance, at any depth, a dict of its fields and
    of its public properties (``SchedulerStatistics.queued``)."""
    cls = type(value)
    if attrs.has(cls):
        out = {f.name: _plain(getattr(value, f.name)) for f in attrs.fields(cls)}
        for name in dir(cls):
            if not name.startswith("_") and isinstance(getattr(cls, name, None), property):
                out[name] = _plain(getattr(value, name))
        return out
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@attrs.frozen
class _PlainReply:
    """A reply that sends its answer `_plain`."""

    reply: Any

    @property
    def done(self) -> bool:
        return bool(self.reply.done)

    def send(self, value: Any) -> None:
        self.reply.send(_plain(value))

    def fail(self, exc: BaseException) -> None:
        self.reply.fail(exc)


def _status_plain_call(node: Any, reply: Any) -> None:
    _status_call(node, _PlainReply(reply))


def _tree_call(node: Any, reply: Any) -> None:
    if not node.view.multi or not node.spawn(_tree, node, reply):
        reply.send(_cluster_tree([_local_tree(node)]))


def _shutdown_call(node: Any, reply: Any) -> None:
    reply.send("stopping")
    node.shutdown_requested.set()


def _task(node: Any, task_hex: str) -> dict:
    """Where the task ``task_hex`` is on this node, as its parts see it: in the
    scheduler (``waiting`` for arguments, ``ready``, ``running`` on a worker,
    ``unplaced`` with the global scheduler), forwarded to or from another node,
    and the state of its returns in the directory. Empty parts are left out: an
    empty answer means the node knows nothing of it (anymore)."""
    try:
        tid = bytes.fromhex(task_hex)
    except ValueError:
        raise ValueError(f"task id {task_hex!r} is not hex") from None
    sched = node.sched
    where: dict[str, Any] = {}
    record = sched.waiting.get(tid)
    if record is not None:
        where["waiting"] = {"deps_missing": record.missing,
                            "deps": [d.hex() for d in record.spec.deps]}
    if any(spec.task_id == tid for spec in sched.ready):
        where["ready"] = True
    worker = sched.running.get(tid)
    if worker is not None:
        where["running"] = {"worker": worker.index, "pid": worker.pid, "state": worker.state,
                            "blocked": tid in worker.blocked_tasks,
                            "queued": tid in worker.queued}
    if tid in sched.infeasible:
        where["unplaced"] = True
    if tid in sched.cancelled:
        where["cancelled"] = True
    out = node.cluster.forwarded_out.get(tid)
    if out is not None:
        where["forwarded_to"] = out[1]
    came = node.cluster.forwarded_in.get(tid)
    if came is not None:
        where["forwarded_from"] = came
    returns = {}
    for oid, entry in node.directory.entries.items():
        if oid[: len(tid)] == tid:
            returns[oid.hex()] = {"ready": entry.ready, "is_error": entry.is_error,
                                  "pins": entry.pins,
                                  "waiters": len(entry.waiters or ())}
    if returns:
        where["returns"] = returns
    return where


def _links(node: Any) -> dict:
    """This node's links to other nodes as its sending side sees them, and the
    connections other nodes opened to it, as this receiving side sees them."""
    out = node.peers.describe()
    out["accepted"] = {
        client.pid: attrs.asdict(conn.statistics())
        for conn, client in node.clients.by_conn.items() if client.role == "node"}
    return out


def _answer(fn: Callable[..., Any]) -> Callable[..., None]:
    """A call whose answer is ``fn(node, *args)``, at once."""
    return lambda node, reply, *args: reply.send(fn(node, *args))


#: The admin calls (`AdminCall` ``name``): ``name -> (number of arguments,
#: handler(node, reply, *args))``. ``fault`` is the node's own (``_faults``): it
#: needs the caller's link.
CALLS: dict[str, tuple[int, Callable[..., None]]] = {
    "status": (0, _status_call),
    # The same in plain dicts and lists, for the CLI (see `_plain`).
    "status_plain": (0, _status_plain_call),
    "tree": (0, _tree_call),
    "local_tree": (0, _answer(_local_tree)),
    "cluster_resources": (0, _fresh(lambda node: _sum(s.resources for s in _alive(node)))),
    "available_resources": (0, _fresh(lambda node: _sum(s.available for s in _alive(node)))),
    "nodes": (0, _fresh(lambda node: [_node_entry(node, s) for s in _statuses(node)])),
    "crash": (1, _answer(_crash)),
    "shutdown": (0, _shutdown_call),
    # A joining node asks its head where the GCS is.
    "cluster_info": (0, _answer(lambda node: {"gcs_address": node.gcs_address,
                                              "node_id": node.node_hex,
                                              "head": node.config.head})),
    "ping": (0, _answer(lambda node: "pong")),
    "task": (1, _answer(_task)),
    "links": (0, _answer(_links)),
    # What init(namespace=) said; None: unknown job.
    "job_namespace": (1, _answer(lambda node, job_id: node.jobs.get(job_id, {}).get("namespace"))),
}


def dispatch_call(node: Any, name: str, args: tuple, reply: Any) -> None:
    """Serve ``AdminCall(name, args)`` through `CALLS`; an unknown name or a wrong
    number of arguments is the caller's ``ValueError``, naming them."""
    try:
        entry = CALLS.get(name)
        if entry is None:
            raise ValueError(f"unknown call {name!r}; the node serves "
                             f"{', '.join(sorted([*CALLS, 'fault']))}")
        arity, handler = entry
        if len(args) != arity:
            raise ValueError(f"the call {name!r} takes {arity} argument(s), got {len(args)}: "
                             f"{args!r:.100}")
        handler(node, reply, *args)
    except Exception as exc:
        if not reply.done:
            reply.fail(exc)
