"""Introspection and admin calls served by a node (``("call", name, args)``).

``tree``, ``status``, ``cluster_resources``, ``available_resources``, ``nodes``,
``crash`` (the fault hook of ``actorcore.testing.faults``), ``kill_worker`` and
``shutdown``. Each answers its ``Reply`` now, or later from a task for calls that
read the GCS.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .kernel import InjectedCrash

__all__ = ["dispatch_call"]


def _tree(node: Any) -> dict:
    sup = node.supervisor
    snap = sup.snapshot()
    snap["address"] = node.unix_address
    return {"name": "cluster", "kind": "cluster", "state": "running", "restarts": 0,
            "pid": None, "node_id": None, "children": [snap]}


def _status(node: Any) -> dict:
    sched = node.sched.statistics()
    used = {k: v - sched["available"].get(k, 0.0) for k, v in sched["total"].items()}
    return {
        "nodes": [node.node_info()],
        "resources_total": sched["total"],
        "resources_used": used,
        "scheduler": sched,
        "object_store": node.directory.statistics(),
        "workers": {
            "alive": len(node.pool.alive()),
            "started_total": node.pool.started_total,
            "died_total": node.pool.died_total,
        },
        # lineage_live_tasks: tasks with a return still alive (their lineage is kept).
        "control": {**node.control.statistics(), "lineage_live_tasks": len(node.objects.live_returns)},
        "log_dir": str(node.config.session_dir / "logs"),
        "session_dir": str(node.config.session_dir),
        "security": node.security_info(),
        "uptime_s": time.time() - node.started_at,
        "pid": os.getpid(),
    }


def _crash(node: Any, component: str) -> str:
    sup = node.supervisor
    parts = [p for p in component.split("/") if p]
    if parts and parts[0] == "node":
        parts = parts[1:]
    if not parts:
        raise ValueError("crash(): name a component, e.g. 'local_scheduler'")
    if parts[0] == "worker_pool" and len(parts) == 2:
        name = parts[1]
        for w in node.pool.alive():
            if f"worker_{w.index}" == name:
                node.pool.kill(w)
                return f"killed {name} (pid {w.pid})"
        raise ValueError(f"crash(): no live worker named {name!r}")
    parent = sup if len(parts) == 1 else sup.find("/".join(parts[:-1]))
    parent.child(parts[-1])  # raises now, naming it, if there is no such running child

    def inject() -> None:
        parent.crash_child(parts[-1], InjectedCrash(f"crash injected into {component!r}"))

    # After the reply has left: crashing rpc_server closes the caller's connection.
    node._call_later(0.05, inject)
    return f"crashed {component}"


def dispatch_call(node: Any, name: str, args: tuple, reply: Any) -> None:
    try:
        if name == "status" and node.store_link is not None and node._nursery is not None:

            async def with_store() -> None:
                st = _status(node)
                try:
                    with __import__("trio").move_on_after(5):
                        st["store"] = await node.store_link.statistics()
                except Exception as exc:
                    st["store_error"] = str(exc)
                reply.send(st)

            node._nursery.start_soon(with_store)
        elif name == "tree":
            reply.send(_tree(node))
        elif name == "status":
            reply.send(_status(node))
        elif name == "cluster_resources":
            reply.send(dict(node.sched.total))
        elif name == "available_resources":
            reply.send({k: max(v, 0.0) for k, v in node.sched.available.items()})
        elif name == "nodes":
            info = node.node_info()
            reply.send([{
                "NodeID": info["node_id"],
                "Alive": True,
                "Resources": info["resources"],
                "NodeManagerAddress": "127.0.0.1",
                "address": info["address"],
                "pid": info["pid"],
                "is_head": info["head"],
            }])
        elif name == "crash":
            reply.send(_crash(node, args[0]))
        elif name == "shutdown":
            reply.send("stopping")
            node.shutdown_requested.set()
        elif name == "ping":
            reply.send("pong")
        elif name == "job_namespace":  # where a job's tasks and actors find names
            reply.send((node.jobs.get(args[0]) or {}).get("namespace"))
        else:
            raise ValueError(f"unknown call {name!r}")
    except Exception as exc:
        if not reply.done:
            reply.fail(exc)
