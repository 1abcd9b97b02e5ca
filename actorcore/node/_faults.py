"""Fault injection served by a node: the other half of ``actorcore.testing.faults``.

A driver (or ``actorcore chaos``) sends ``AdminCall("fault", (op, *args))`` to any node
of the cluster; that node does what it owns and hands the rest to the node that owns
it. Ops:

- ``("crash", path)``: ``path`` is any path of ``actorcore.tree()`` with an optional
  node selector, ``node:<id prefix>/local_scheduler`` (or ``cluster/node:<prefix>/...``);
  without one it means this node (the single-node paths keep working). The owning
  node crashes the component (``_calls._crash``).
- ``("kill", target, signal)``: ``target`` a pid or a tree path. The node whose tree
  holds the process sends the signal; ``node:<prefix>`` alone is the node's own
  process (with SIGKILL its worker and GCS replica processes die with it, as when
  a machine fails). A pid no node owns is a ``ValueError`` naming the pids there are.
- ``("rules", command, scope)``: a `transport.faults` command (``install``/``heal``
  by tag, ``clear``) applied in this node's process and forwarded to every process
  connected to it (workers, actor processes, drivers) and, on a head whose GCS runs
  replicas in processes of their own, to those (over their stdin: ``gcs.ReplicaFaults``,
  answered before the call returns); with ``scope="cluster"`` also to every other
  live node, which does the same. The answer maps each node id, and each replica
  process as ``gcs/<replica>``, to what it did.

Control links. A fault rule may cut exactly the links a heal would travel (a
partition between two nodes drops their peer link's messages and refuses new ones).
So node-to-node fault calls do not use the peer links: each opens a short-lived
connection named ``faults-<id8>``, and `transport.faults` never applies a rule to an
endpoint named ``faults-*``. Towards the node's own processes the order does the same
job: a command is sent to them *before* it is applied here when it installs rules
(so a node->worker drop cannot swallow its own installation) and *after* it when it
heals (the node's rule is gone before the heal leaves). Processes that connect later
(a restarted worker) get the installed rules at their hello (``greet``).
"""

from __future__ import annotations

import logging
import os
import signal as _signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import transport

from ..kernel import KernelError
from ..protocol._wire import AdminCall, FaultRules

__all__ = ["NodeFaults", "split_node"]

logger = logging.getLogger("actorcore.node")

#: How long a node waits for another node's answer to a fault call.
PEER_TIMEOUT = 10.0


def split_node(path: str) -> tuple[str | None, str]:
    """``"cluster/node:ab12/worker_pool"`` -> ``("ab12", "worker_pool")``; a path
    without a node selector -> ``(None, path)``."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["cluster"]:
        parts = parts[1:]
    if parts and parts[0].startswith("node:"):
        return parts[0][len("node:"):], "/".join(parts[1:])
    return None, "/".join(parts)


def _walk(entry: dict, path: str = "") -> Any:
    """(path below the node, entry) for every entry of a node's tree snapshot."""
    for child in entry.get("children") or ():
        here = f"{path}/{child['name']}" if path else str(child["name"])
        yield here, child
        yield from _walk(child, here)


class NodeFaults:
    """The node's fault ops (see the module docstring)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        #: Rules installed cluster-wide by tag (as rule dicts), for late joiners.
        self.installed: dict[str, list[dict]] = {}

    # ------------------------------------------------------------------ routing

    def resolve(self, prefix: str | None) -> str:
        """The full hex id of the live node whose id starts with ``prefix``."""
        node = self.node
        if prefix is None:
            return str(node.node_hex)
        ids = {node.node_hex} | {s.node_id for s in node.view.others()}
        found = sorted(i for i in ids if i.startswith(prefix.lower()))
        if len(found) == 1:
            return found[0]
        if not prefix or not found:
            raise ValueError(
                f"no live node with id prefix {prefix!r} (live nodes: "
                f"{', '.join(sorted(i[:8] for i in ids))})")
        raise ValueError(f"node id prefix {prefix!r} is ambiguous: {', '.join(found)}")

    async def on_peer(self, node_id: str, *call: Any) -> Any:
        """``AdminCall("fault", call)`` on another node, over a control link."""
        address = self.node.view.address_of(node_id)
        if address is None:
            raise ValueError(f"node {node_id[:12]} has no TCP address")
        with trio.fail_after(PEER_TIMEOUT):
            async with transport.open_connection(
                address, self.node.config.token, name=f"faults-{self.node.node_hex[:8]}"
            ) as conn:
                try:
                    return await conn.request(AdminCall("fault", call))
                except transport.RemoteError as exc:
                    # Its ValueError (a bad path there) is the caller's, as if local.
                    if isinstance(exc.remote_exception, ValueError):
                        raise exc.remote_exception from None
                    raise

    # --------------------------------------------------------------- the calls

    def call(self, conn: Any, args: tuple, reply: Any) -> None:
        """Serve ``AdminCall("fault", args)`` (answers ``reply`` now or from a task)."""
        op, rest = args[0], tuple(args[1:])
        ops: dict[str, Callable[..., Awaitable[Any]]] = {
            "crash": self._crash, "kill": self._kill, "kill_local": self._kill_local,
            "rules": self._rules}
        if op not in ops:
            raise ValueError(f"unknown fault op {op!r}; expected one of {sorted(ops)}")

        async def serve() -> None:
            try:
                reply.send(await ops[op](conn, *rest))
            except Exception as exc:
                if not reply.done:
                    reply.fail(exc)

        if not self.node.spawn(serve):
            raise RuntimeError("the node is stopping")

    async def _crash(self, conn: Any, path: str) -> str:
        from ._calls import _crash

        if not isinstance(path, str) or not path.strip("/"):
            raise ValueError(f"crash(): a tree path is needed, got {path!r}")
        prefix, rest = split_node(path)
        target = self.resolve(prefix)
        if target != self.node.node_hex:
            return str(await self.on_peer(target, "crash", f"node:{target}/{rest}"))
        try:
            what = _crash(self.node, rest or "node")
        except (KernelError, LookupError) as exc:  # no such child, or not running now
            raise ValueError(f"crash(): {rest!r} on node {target[:8]}: {exc}") from None
        return f"node:{target[:8]}: {what}"

    async def _kill(self, conn: Any, target: Any, sig: int = _signal.SIGKILL) -> dict:
        sig = int(sig)
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            raise ValueError(f"kill(): a pid or a tree path is needed, got {target!r}")
        if isinstance(target, int) or target.isdigit():
            return await self._kill_pid(conn, int(target), sig)
        prefix, rest = split_node(target)
        node_id = self.resolve(prefix)
        if node_id != self.node.node_hex:
            return dict(await self.on_peer(node_id, "kill", f"node:{node_id}/{rest}", sig))
        if not rest or rest == "node":
            return self._kill_node(conn, sig)
        snap = self.node.supervisor.snapshot()
        entries = dict(_walk(snap))
        if rest.startswith("node/"):
            rest = rest[len("node/"):]
        entry = entries.get(rest)
        if entry is None:
            known = sorted(p for p, e in entries.items() if e.get("pid") not in (None, os.getpid()))
            raise ValueError(
                f"kill(): no {rest!r} in the tree of node {node_id[:8]} (its processes: "
                f"{', '.join(known) or 'none but the node'})")
        pid = entry.get("pid")
        if pid is None or pid == os.getpid():
            raise ValueError(
                f"kill(): {rest!r} runs inside the process of node {node_id[:8]} "
                f"(pid {os.getpid()}): crash() it, or kill 'node:{node_id[:8]}'")
        return self._signal(int(pid), sig, rest)

    async def _kill_pid(self, conn: Any, pid: int, sig: int) -> dict:
        node = self.node
        mine = await self._kill_local(conn, pid, sig)
        if mine is not None:
            return mine
        for status in node.view.others():
            theirs = await self.on_peer(status.node_id, "kill_local", pid, sig)
            if theirs is not None:
                return dict(theirs)
        raise ValueError(
            f"kill(): pid {pid} is not a process of this cluster (none of nodes "
            f"{', '.join([node.node_hex[:8], *(s.node_id[:8] for s in node.view.others())])} "
            f"has it; actorcore.tree() shows their pids)")

    async def _kill_local(self, conn: Any, pid: int, sig: int) -> dict | None:
        """Signal ``pid`` if it is this node's or one of its processes, else ``None``."""
        if pid == os.getpid():
            return self._kill_node(conn, sig)
        for path, entry in _walk(self.node.supervisor.snapshot()):
            if entry.get("pid") == pid:
                return self._signal(pid, sig, path)
        return None

    def _signal(self, pid: int, sig: int, path: str) -> dict:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            raise ValueError(f"kill(): {path} (pid {pid}) has already exited") from None
        name = _signal.Signals(sig).name
        logger.warning("fault injected: %s sent to %s (pid %d)", name, path, pid)
        return {"node_id": self.node.node_hex, "path": path, "pid": pid, "signal": name}

    def _kill_node(self, conn: Any, sig: int) -> dict:
        """Signal this node's own process once the answer is out (see below)."""
        node = self.node
        pids = []
        if sig == _signal.SIGKILL:  # a machine failure: its processes die with it
            pids = [int(e["pid"]) for _p, e in _walk(node.supervisor.snapshot())
                    if e.get("pid") not in (None, os.getpid())]

        async def die() -> None:
            # The answer must leave before the process does: closing the caller's
            # connection flushes what is queued on it (within the timeout), and the
            # caller sees its reply, then the link close.
            try:
                await conn.aclose(flush_timeout=2.0)
            except Exception as exc:
                logger.info("closing the fault caller's link before dying: %r", exc)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            os.kill(os.getpid(), sig)

        node.spawn(die)
        name = _signal.Signals(sig).name
        logger.warning("fault injected: %s sent to node %s itself", name, node.node_hex[:12])
        return {"node_id": node.node_hex, "path": f"node:{node.node_hex[:8]}",
                "pid": os.getpid(), "signal": name, "processes": pids}

    async def _rules(self, conn: Any, command: dict, scope: str = "node") -> dict:
        if scope not in ("node", "cluster"):
            raise ValueError(f"fault rules: scope must be 'node' or 'cluster', got {scope!r}")
        op = command.get("op") if isinstance(command, dict) else None
        if op not in ("install", "heal", "clear"):
            raise ValueError(f"fault rules: op must be install, heal or clear, got {op!r}")
        if op == "install":  # checked here, before it goes anywhere
            for rule in command["rules"]:
                transport.faults.Rule.from_dict(rule)
        node = self.node
        done = {node.node_hex: self.apply(command)}
        if node.gcs_plan is not None:
            # The replica processes' own tables (their links to each other, and
            # their side of the nodes' links to them); a pipe carries the command,
            # so no rule can cut it. Their answers go back as ``gcs/<replica>``.
            for name, result in (await node.gcs_plan.faults.apply(command)).items():
                done[f"gcs/{name}"] = result
        if scope == "cluster":
            async def one(node_id: str) -> None:
                try:
                    done.update(await self.on_peer(node_id, "rules", command, "node"))
                except Exception as exc:
                    logger.warning("fault rules for node %s failed: %r", node_id[:12], exc)
                    done[node_id] = f"failed: {exc}"

            async with trio.open_nursery() as nursery:
                for status in node.view.others():
                    nursery.start_soon(one, status.node_id)
        return done

    def apply(self, command: dict) -> Any:
        """Apply ``command`` here and forward it to this node's processes, in the
        order the module docstring explains."""
        op = command["op"]
        if op == "install":
            self.installed[str(command["tag"])] = list(command["rules"])
            self._forward(command)
            return transport.faults.apply(command)
        if op == "heal":
            self.installed.pop(str(command["tag"]), None)
        else:
            self.installed.clear()
        result = transport.faults.apply(command)
        self._forward(command)
        return result

    def _forward(self, command: dict) -> None:
        for conn, client in list(self.node.clients.by_conn.items()):
            if client.role == "node" or conn.closed:
                continue
            try:
                conn.send_nowait(FaultRules(command))
            except Exception as exc:
                logger.warning("could not forward a fault rule command to %s: %r",
                               conn.peer_name, exc)

    def greet(self, conn: Any) -> None:
        """A process said hello: give it the rules installed now."""
        for tag, rules in self.installed.items():
            try:
                conn.send_nowait(FaultRules({"op": "install", "tag": tag, "rules": rules}))
            except Exception as exc:
                logger.warning("could not send the fault rules to %s: %r", conn.peer_name, exc)
