"""Injecting faults into a live cluster: crash, kill and link rules.

A `Faults` object is the harness bound to one cluster: the one this process is
connected to (``address=None`` after ``actorcore.init``), or any other by address
(``Faults(cluster.address)``, what ``actorcore chaos`` uses). Every call goes to one
node, which does what it owns and hands the rest to the node that owns it
(``actorcore/node/_faults.py``), so the caller needs no route to the other nodes.

Endpoint names. Link faults act on transport connections, which match rules by the
names their endpoints announce (``transport.faults``). The names are stable:

==========================  ================================================
``node-<id8>``              a node: its Unix listener, its links to other nodes
                            and to the GCS (``<id8>``: the first 8 hex digits)
``node-<id8>-tcp``          the node's TCP listener (other nodes, remote drivers)
``worker_<n>``              worker and actor processes (``n`` is per node)
``driver-<pid>``            a driver's link to its node
``gcs/coordinator``,
``gcs/<replica>``           the GCS (on the head); ``<replica>`` is
                            ``s<shard>r<slot>-<8 hex>``, new at each restart
``admin-<pid>``             a CLI or ``tree(address=...)`` call
``faults-*``                the harness's control links: never faulted
==========================  ================================================

The harness takes friendlier names and turns them into patterns (`endpoint`):
``"node:<id prefix>"``, ``"gcs"``, ``"gcs/shard_0/replica_1"`` (a replica slot, as
the tree names it: whichever replica runs there, restarts included), ``"driver"``,
``"worker"``, ``"worker_3"``, or any ``fnmatch`` pattern of the names above;
``None`` is any endpoint.
"""

from __future__ import annotations

import re
import signal as _signal
import time
import uuid
from typing import Any

import transport

from ._record import Injected, note

__all__ = ["Faults", "LinkFault", "endpoint", "where"]


def endpoint(name: str | None) -> str | None:
    """The transport name pattern for a harness endpoint name (module docstring)."""
    if name is None or name == "*":
        return None
    if not isinstance(name, str) or not name:
        raise ValueError(f"an endpoint must be a non-empty name or None, got {name!r}")
    if name.startswith("node:"):
        prefix = name[len("node:"):].lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise ValueError(f"endpoint {name!r}: 'node:' takes a hex node id prefix")
        return f"node-{prefix[:8]}*"
    if name == "gcs":
        return "gcs/*"
    if name.startswith("gcs/shard_"):
        slot = _SLOT.fullmatch(name)
        if slot is None:
            raise ValueError(f"endpoint {name!r}: a GCS replica slot is "
                             f"'gcs/shard_<i>/replica_<j>' (a number or '*' each), as "
                             f"actorcore.tree() shows it")
        shard, index = (n if n == "*" else str(int(n)) for n in (slot[1], slot[2]))
        return f"gcs/s{shard}r{index}-*"
    if name == "driver":
        return "driver-*"
    if name == "worker":
        return "worker_*"
    if name.startswith("worker_") and name[len("worker_"):].isdigit():
        return f"{name}*"
    if not name.startswith(_KNOWN) and name.strip("*?") != "":
        raise ValueError(
            f"unknown endpoint {name!r}: expected 'node:<id prefix>', 'gcs', 'driver', "
            f"'worker', 'worker_<n>', or a pattern of transport names starting with "
            f"{', '.join(repr(k) for k in _KNOWN)}")
    return name


#: A GCS replica slot as the tree names it.
_SLOT = re.compile(r"gcs/shard_(\d+|\*)/replica_(\d+|\*)")

#: How every transport name of a cluster process starts (the module docstring).
_KNOWN = ("node-", "worker_", "driver-", "gcs/", "admin-", "*", "?", "[")


def where(done: dict) -> str:
    """``"2 node(s)"``, ``"1 node(s), 3 GCS replica process(es)"``: what a rules
    command reached, from its answer (node ids, and ``gcs/<replica>`` keys)."""
    replicas = sum(1 for key in done if str(key).startswith("gcs/"))
    text = f"{len(done) - replicas} node(s)"
    return f"{text}, {replicas} GCS replica process(es)" if replicas else text


def _link_broke(exc: BaseException) -> bool:
    """Whether ``exc`` says the link to the node broke (the call may be sent again)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, transport.ConnectionLost):
            return True
        seen = seen.__cause__ or seen.__context__
    return "ConnectionLost" in repr(exc) or "connection to" in str(exc)


def _unwrap(exc: BaseException) -> BaseException:
    """A node's ValueError arrives as a transport.RemoteError: give it back as one."""
    remote = getattr(exc, "remote_exception", None)
    if isinstance(remote, (ValueError, LookupError)):
        return remote
    remote_type = getattr(exc, "remote_type", None)
    if remote_type is not None:
        short = str(remote_type).rsplit(".", 1)[-1]
        return ValueError(f"{short}: {getattr(exc, 'remote_message', exc)}")
    return exc


class LinkFault:
    """Rules installed in every process of the cluster, under one tag.

    Installed when made; a context manager that heals on exit; `heal` to heal
    earlier (idempotent).
    """

    def __init__(self, faults: Faults, kind: str, target: str, rules: list[transport.faults.Rule],
                 seed: int | None = None, step: int | None = None) -> None:
        self.faults = faults
        self.kind = kind
        self.target = target
        self.rules = rules
        self.tag = f"{kind}-{uuid.uuid4().hex[:12]}"
        self.healed = False
        command = {"op": "install", "tag": self.tag, "rules": [r.to_dict() for r in rules]}
        try:
            done = faults._rules(command)
        except BaseException as exc:
            note(Injected(time.time(), kind, target, str(exc), False, seed, step))
            raise
        note(Injected(time.time(), kind, target,
                      f"{len(rules)} rule(s) in {where(done)} and their processes",
                      True, seed, step))

    def heal(self) -> dict:
        """Remove the rules everywhere; returns how many each process removed (node
        ids, and ``gcs/<replica>`` for GCS replica processes), ``{}`` if healed
        before."""
        if self.healed:
            return {}
        self.healed = True
        done = dict(self.faults._rules({"op": "heal", "tag": self.tag}))
        note(Injected(time.time(), "heal", self.target, f"{self.kind} healed"))
        return done

    def __enter__(self) -> LinkFault:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.heal()

    def __repr__(self) -> str:
        state = "healed" if self.healed else "active"
        return f"<LinkFault {self.kind} {self.target} ({state})>"


class Faults:
    """The fault harness bound to a cluster (see the module docstring)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def call(self, op: str, *args: Any, timeout: float = 30.0) -> Any:
        """``("call", "fault", (op, *args))`` on the cluster's node."""
        from ...core_worker import _worker_state

        core = _worker_state.core
        # The driver's own link may be the one a rule breaks (a reset, a break
        # after a frame): rule commands are idempotent by tag, so one whose link
        # broke is sent again once the driver has redialled; a crash or a kill is
        # not sent twice.
        attempts = 5 if op == "rules" else 1
        for attempt in range(attempts):
            try:
                if core is not None and self.address is None:
                    return core.call_sync("fault", op, *args, timeout=timeout)
                from ...session._admin import admin_call

                return admin_call(self.address, "fault", op, *args, timeout=timeout)
            except Exception as exc:
                if attempt + 1 < attempts and _link_broke(exc):
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise _unwrap(exc) from None
        raise AssertionError("unreachable")

    def _rules(self, command: dict) -> dict:
        # Here first (a driver's own links), then every node and its processes.
        transport.faults.apply(command)
        return dict(self.call("rules", command, "cluster"))

    # ---------------------------------------------------------------- processes

    def crash(self, path: str, *, seed: int | None = None, step: int | None = None) -> str:
        """Crash the component, actor or worker at tree ``path`` on any node.

        ``path`` is what ``actorcore.tree()`` shows, with ``node:<id prefix>/`` in
        front to name a node other than the one this process is connected to
        (``"node:3fa2/local_scheduler"``, ``"node:3fa2/worker_pool/worker_1/Counter"``).
        Raises ``ValueError`` naming the path and what exists there if nothing does.
        """
        if not isinstance(path, str) or not path.strip("/"):
            raise ValueError(f"crash(): component must be a non-empty tree path, got {path!r}")
        try:
            what = str(self.call("crash", path))
        except BaseException as exc:
            note(Injected(time.time(), "crash", path, str(exc), False, seed, step))
            raise
        note(Injected(time.time(), "crash", path, what, True, seed, step))
        return what

    def kill(self, target: str | int, signal: int = _signal.SIGKILL, *,
             seed: int | None = None, step: int | None = None) -> dict:
        """Send ``signal`` to a process of the cluster: a pid, or a tree path
        (``"node:3fa2/worker_pool/worker_2"``, ``"gcs/shard_0/replica_1"`` with its own
        process, ``"node:3fa2"`` for the whole node). The node that owns the process
        sends the signal. ``ValueError`` for a pid no node has, or a path that is not
        a process of its own."""
        if isinstance(target, bool) or not isinstance(target, (int, str)) or target == "":
            raise ValueError(f"kill(): a pid or a tree path is needed, got {target!r}")
        sig = int(signal)
        try:
            _signal.Signals(sig)
        except ValueError:
            raise ValueError(f"kill(): {signal!r} is not a signal") from None
        try:
            done = dict(self.call("kill", target, sig))
        except BaseException as exc:
            note(Injected(time.time(), "kill", str(target), str(exc), False, seed, step))
            raise
        note(Injected(time.time(), "kill", str(target),
                      f"{done['signal']} to {done['path']} (pid {done['pid']}) on node "
                      f"{done['node_id'][:8]}", True, seed, step))
        return done

    # -------------------------------------------------------------------- links

    def drop(self, p: float = 1.0, a: str | None = None, b: str | None = None, *,
             both: bool = True, **kw: Any) -> LinkFault:
        """Drop messages between endpoints ``a`` and ``b`` with probability ``p``
        (from ``a`` to ``b`` only with ``both=False``)."""
        return self._link("drop", a, b, both, kw, lambda s, d: [
            transport.faults.Rule("drop", s, d, probability=p)])

    def delay(self, seconds: float, jitter: float = 0.0, a: str | None = None,
              b: str | None = None, *, both: bool = True, **kw: Any) -> LinkFault:
        """Delay messages between ``a`` and ``b`` by ``seconds`` plus up to ``jitter``
        (five even steps from ``seconds`` to ``seconds + jitter``, equally likely)."""
        if jitter < 0:
            raise ValueError(f"delay(): jitter must be >= 0, got {jitter!r}")
        steps = 5 if jitter > 0 else 1

        def rules(s: str | None, d: str | None) -> list[transport.faults.Rule]:
            # The first rule that matches and fires decides: 1/5, 1/4, ... 1/1 make
            # each step equally likely.
            return [transport.faults.Rule(
                "delay", s, d, delay=seconds + jitter * i / max(steps - 1, 1),
                probability=1.0 / (steps - i)) for i in range(steps)]

        return self._link("delay", a, b, both, kw, rules)

    def duplicate(self, p: float = 1.0, a: str | None = None, b: str | None = None, *,
                  both: bool = True, **kw: Any) -> LinkFault:
        """Send messages between ``a`` and ``b`` twice, with probability ``p``."""
        return self._link("duplicate", a, b, both, kw, lambda s, d: [
            transport.faults.Rule("duplicate", s, d, probability=p)])

    def partition(self, a: str, b: str, **kw: Any) -> LinkFault:
        """Cut ``a`` from ``b``: messages both ways dropped, new connections refused."""
        if a is None or b is None:
            raise ValueError("partition(): name both sides (a partition of everything "
                             "from everything is a dead cluster)")
        return self._link("partition", a, b, True, kw, lambda s, d: [
            transport.faults.Rule("refuse", s, d)])

    def _link(self, kind: str, a: str | None, b: str | None, both: bool, kw: dict,
              make: Any) -> LinkFault:
        seed, step = kw.pop("seed", None), kw.pop("step", None)
        if kw:
            raise TypeError(f"{kind}(): unexpected arguments {sorted(kw)}")
        src, dst = endpoint(a), endpoint(b)
        self._check_nodes(a, b)
        rules = list(make(src, dst))
        if both and src != dst:
            rules += make(dst, src)
        arrow = "<->" if both else "->"
        return LinkFault(self, kind, f"{a or '*'} {arrow} {b or '*'}", rules, seed, step)

    def _check_nodes(self, *names: str | None) -> None:
        """A ``node:<prefix>`` endpoint must name a live node (a typo would fault
        nothing, silently)."""
        wanted = [n for n in names if isinstance(n, str) and n.startswith("node:")]
        if not wanted:
            return
        live = [str(sub.get("node_id")) for sub in self.tree().get("children") or ()
                if sub.get("node_id") and sub.get("state") != "unreachable"]
        for name in wanted:
            prefix = name[len("node:"):].lower()
            if not any(node_id.startswith(prefix) for node_id in live):
                raise ValueError(
                    f"endpoint {name!r}: no live node has an id starting with {prefix!r} "
                    f"(live nodes: {', '.join(sorted(i[:8] for i in live))})")

    def heal_all(self) -> dict:
        """Remove every link fault in every process of the cluster."""
        done = self._rules({"op": "clear"})
        note(Injected(time.time(), "heal", "*", f"all link faults healed ({where(done)})"))
        return done

    # ----------------------------------------------------------------- targets

    def tree(self) -> dict:
        from ...core_worker import _worker_state
        from ...session._admin import admin_call

        if _worker_state.core is not None and self.address is None:
            return dict(_worker_state.core.call_sync("tree"))
        return dict(admin_call(self.address, "tree"))

    def paths(self, tree: dict | None = None) -> list[tuple[str, dict]]:
        """Every (path, snapshot entry) of the cluster's tree, each path with its
        node selector (``node:<id8>/...``): what `crash` and `kill` take."""
        tree = self.tree() if tree is None else tree
        out: list[tuple[str, dict]] = []

        def walk(entry: dict, path: str) -> None:
            for child in entry.get("children") or ():
                here = f"{path}/{child['name']}"
                out.append((here, child))
                walk(child, here)

        for sub in tree.get("children") or ():
            if sub.get("state") == "unreachable" or not sub.get("node_id"):
                continue
            base = f"node:{str(sub['node_id'])[:8]}"
            out.append((base, sub))
            walk(sub, base)
        return out
