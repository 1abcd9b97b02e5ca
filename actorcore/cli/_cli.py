"""The ``actorcore`` command line (also ``python -m actorcore``).

::

    actorcore start --head [--num-cpus N] [--num-gpus N] [--resources JSON]
                           [--object-store-memory BYTES] [--spill-dir DIR]
                           [--num-workers N] [--gcs-shards S] [--gcs-replicas R]
                           [--port P] [--host H]
                           [--tls-cert F --tls-key F --tls-ca F] [--insecure]
                           (the fields of ``session._config.ClusterConfig``)
    actorcore start --address ADDR         (join a cluster: arrives with multi-node)
    actorcore stop
    actorcore status [--address ADDR] [--json]
    actorcore tree   [--address ADDR] [--json] [--watch [SECONDS]]
    actorcore tls init DIR [--days N] [--host NAME ...]

TLS (see SECURITY.md): ``actorcore tls init DIR`` makes a cluster CA and a node
certificate; ``--tls-cert DIR/node.pem --tls-key DIR/node.key --tls-ca DIR/ca.pem``
(or ``ACTORCORE_TLS_CERT/KEY/CA``) then puts every TCP link inside TLS 1.3 with
mutual certificates. Listening on a non-loopback ``--host`` without TLS is refused
unless ``--insecure`` is given.

The head writes its address and token into its session directory and points
``/tmp/actorcore-sessions/session_latest`` at it, so later commands on this machine find it;
``--address`` reaches any other live cluster of this machine (its session directory
holds the token). ``start`` and ``stop`` first reclaim what killed clusters left
behind (shared memory, spill files, sockets; see ``_session.reclaim_dead_sessions``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import gcs
    import store

    from .. import (
        ActorManagerStatistics,
        ControlStatistics,
        DirectoryStatistics,
        SchedulerStatistics,
    )

__all__ = ["main"]


def _err(message: str, code: int = 1) -> int:
    print(f"actorcore: {message}", file=sys.stderr)
    return code


def _fmt_res(res: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items())) or "-"


def _reclaim() -> None:
    """Remove the leftovers of dead sessions and say so (see ``session._session``)."""
    from ..session._session import reclaim_dead_sessions

    try:
        reclaimed = reclaim_dead_sessions()
    except Exception as exc:  # never a reason to refuse the command
        print(f"actorcore: reclaiming the files of dead sessions failed: {exc}", file=sys.stderr)
        return
    if reclaimed:
        print(f"{reclaimed.describe()}:")
        for session in reclaimed.sessions:
            print(f"  {session}")


def cmd_start(args: argparse.Namespace) -> int:
    from ..session._launcher import start_node
    from ..session._session import latest_session

    if args.head == bool(args.address):
        return _err("say --head (start a new cluster) or --address ADDR (join one), "
                    "not both" if args.head else
                    "say --head (start a new cluster) or --address ADDR (join one)", 2)
    from ..session._config import ClusterConfig

    _reclaim()
    config = ClusterConfig.from_namespace(args)
    if config.port is None:
        # A cluster started from the command line can grow: it listens on TCP.
        config = attrs.evolve(config, port=0)
    if args.head:
        running = latest_session()
        if running is not None:
            return _err(f"a cluster is already running on this machine ({running}); "
                        f"run `actorcore stop` first")
        proc = start_node(config, tls=config.tls(), embedded=False)
        print("actorcore head node started")
    else:
        head = args.address if args.address.startswith(("tcp:", "unix:")) \
            else "tcp:" + args.address
        try:
            token = _join_token(head, args.token)
        except ValueError as exc:
            return _err(str(exc), 2)
        proc = start_node(config, head_address=head, token=token, tls=config.tls(),
                          embedded=False)
        print(f"actorcore node started and joined the cluster at {args.address}")
    info = proc.info
    print(f"  node id      {info['node_id']}")
    print(f"  address      {info['address']}")
    if info.get("tcp_address"):
        print(f"  tcp address  {info['tcp_address']}")
    print(f"  gcs          {info.get('gcs_address')}")
    print(f"  security     {_fmt_security(info.get('security'))}")
    print(f"  resources    {_fmt_res(info.get('resources', {}))}")
    print(f"  logs         {info['log_dir']}")
    if (info.get("security") or {}).get("mode") == "insecure":
        print(f"WARNING: plaintext TCP on {info['security']['host']} (--insecure): task "
              f"data crosses the network in clear; see SECURITY.md", file=sys.stderr)
    if args.head:
        tcp = (info.get("tcp_address") or "").removeprefix("tcp:")
        print(f"Join more nodes with `actorcore start --address {tcp}` (the token is in "
              f"{info['session_dir']}/token; on another machine pass --token or "
              f"ACTORCORE_TOKEN).")
    print("Connect from Python on this machine with actorcore.init(address='auto'); "
          "stop the nodes of this machine with `actorcore stop`.")
    return 0


def _join_token(head: str, given: str | None) -> bytes:
    """The cluster token for joining ``head``: ``--token``, else ``ACTORCORE_TOKEN``,
    else the token of the head's session when the head runs on this machine."""
    from ..session._session import find_session, read_token

    raw = given or os.environ.get("ACTORCORE_TOKEN")
    if raw:
        try:
            return bytes.fromhex(raw.strip())
        except ValueError:
            raise ValueError("the cluster token must be hex (the contents of the head's "
                             "'token' file)") from None
    session = find_session(head)
    if session is None:
        raise ValueError(f"no token for the cluster at {head}: no head of this machine "
                         f"listens there; pass --token (the head's 'token' file, hex) or "
                         f"set ACTORCORE_TOKEN")
    return read_token(session)


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop every node of this machine started by `actorcore start` (joined nodes
    first, heads last); embedded clusters belong to their drivers and stay."""
    from ..session._admin import admin_call
    from ..session._session import live_sessions, pid_alive

    sessions = [(s, i) for s, i in live_sessions() if not i.get("embedded")]
    if not sessions:
        _reclaim()
        print("no running actorcore cluster found on this machine")
        return 0
    sessions.sort(key=lambda si: bool(si[1].get("head")))
    for _session, info in sessions:
        pid = int(info["pid"])
        try:
            admin_call(info["address"], "shutdown", timeout=10)
        except Exception:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not pid_alive(pid):  # gone, or a zombie nobody reaps yet
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        role = "head node" if info.get("head") else "node"
        print(f"stopped the actorcore {role} {str(info.get('node_id'))[:12]} "
              f"(pid {pid}, logs in {info['log_dir']})")
    _reclaim()  # some had to be SIGKILLed, or were already gone: their files stay
    return 0


class _Fields(dict):
    """A plain dict of statistics read by attribute, as the typed one it stands for
    (``status_plain``: the CLI does not import the node's modules to read them)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _fields(value: Any) -> Any:
    if isinstance(value, dict):
        return _Fields({k: _fields(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_fields(v) for v in value]
    return value


def cmd_status(args: argparse.Namespace) -> int:
    from ..session._admin import admin_call

    try:
        st = _fields(admin_call(args.address, "status_plain"))
    except ValueError as exc:
        if "status_plain" not in str(exc):
            raise
        st = admin_call(args.address, "status")  # (a node from before it)
    except ConnectionError as exc:
        return _err(str(exc))
    if args.json:
        print(json.dumps(st, indent=2, default=_jsonable))
        return 0
    alive = sum(1 for n in st["nodes"] if n.get("alive", True))
    print(f"actorcore cluster: {alive} node(s) alive, up {st['uptime_s']:.0f} s")
    for n in st["nodes"]:
        role = "head" if n.get("head") else "node"
        where = n.get("tcp_address") or n["address"]
        if n.get("alive", True):
            print(f"  node {n['node_id'][:12]}  {role}  pid {n['pid']}  {where}  "
                  f"free {_fmt_res(n.get('available') or {})}")
        else:
            print(f"  node {n['node_id'][:12]}  {role}  DEAD ({n.get('death_reason')})")
    print("resources (used / total):")
    for k, total in sorted(st["resources_total"].items()):
        print(f"  {k:<10} {st['resources_used'].get(k, 0):g} / {total:g}")
    for line in _status_lines(st):
        print(line)
    print(f"security: {_fmt_security(st.get('security'))}")
    print(f"logs: {st['log_dir']}")
    return 0


def _fmt_security(sec: dict[str, Any] | None) -> str:
    if not sec:
        return "-"
    if sec["mode"] == "tls":
        return f"TLS 1.3, mutual certificates (CA {sec['tls']['ca']}) + cluster token"
    if sec["mode"] == "insecure":
        return (f"INSECURE: plaintext TCP on {sec['host']} (--insecure); "
                f"only the cluster token protects it")
    return "cluster token; Unix sockets and loopback TCP only"


def cmd_tls(args: argparse.Namespace) -> int:
    import transport

    config = transport.create_cluster_certs(args.dir, days=args.days, hosts=args.host or [])
    directory = os.path.dirname(config.cert)
    print(f"created a cluster CA and a node certificate in {directory} (mode 0700):")
    print("  ca.pem    the cluster CA certificate (every node and driver loads it)")
    print("  ca.key    the CA private key (0600): keep it here, not on other machines")
    print(f"  node.pem  the node certificate, valid {args.days} days")
    print("  node.key  its private key (0600)")
    print("Copy ca.pem, node.pem and node.key to every machine of the cluster, then start with")
    print(f"  actorcore start --head --tls-cert {config.cert} --tls-key {config.key} "
          f"--tls-ca {config.ca}")
    print("or set ACTORCORE_TLS_CERT, ACTORCORE_TLS_KEY and ACTORCORE_TLS_CA.")
    return 0


def _jsonable(value: Any) -> Any:
    """``json.dumps`` hook: typed statistics become objects, anything else a string."""
    import attrs

    if attrs.has(type(value)):
        return attrs.asdict(value)
    return str(value)


def _size(n: float) -> str:
    """Bytes as people read them: ``512 B``, ``10.0 MiB``, ``2.0 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def _status_lines(st: dict[str, Any]) -> list[str]:
    """The components' figures (their typed statistics), one line each."""
    s: SchedulerStatistics = st["scheduler"]
    lines = [f"tasks: {s.running} running, {s.queued} queued ({s.waiting} waiting for "
             f"arguments), {s.finished} finished ({s.failed} failed, {s.retried} retried)"]
    if s.unplaced:
        lines.append(f"tasks waiting for a node: {s.unplaced}")
        lines += [f"  {w}" for w in s.unplaced_warnings]
    a: ActorManagerStatistics = st["actors"]
    lines.append(f"actors: {a.alive} alive, {a.pending} pending, {a.restarting} restarting, "
                 f"{a.dead} dead ({a.created} created, {_count(a.restarts, 'restart')}) "
                 f"in {_count(a.processes, 'actor process', 'actor processes')}")
    if a.unplaced:
        lines.append(f"actors waiting for a node: {a.unplaced}")
        lines += [f"  {w}" for w in a.unplaced_warnings]
    w = st["workers"]
    lines.append(f"workers: {w['alive']} alive ({w['started_total']} started, "
                 f"{w['died_total']} exited), {s.idle_workers} idle")
    z = w.get("zygote")
    if z and z["zygote_state"] != "off":
        lines.append(f"zygote: {z['zygote_state']}, {z['forked']} workers forked, "
                     f"{z['spawned']} spawned" + (f" (last error: {z['last_error']})"
                                                  if z["last_error"] else ""))
    o: DirectoryStatistics = st["object_store"]
    lines.append(f"objects: {o.objects} known ({o.ready} ready, {o.pending} pending), "
                 f"{_size(o.bytes_inline)} inline; {o.created} created, {o.freed} freed")
    m: store.StoreStatistics | None = st.get("store")
    if m is not None:
        line = (f"object store: {_size(m.used)} of {_size(m.capacity)} shared memory, "
                f"{_count(m.count, 'object')} ({m.pinned} pinned), "
                f"{_count(m.connections, 'client')}")
        if m.spilled or m.spills or m.disk_allocations:
            line += (f"; on disk {_count(m.spilled, 'object')} ({_size(m.spilled_bytes)}), "
                     f"{_count(m.spills, 'spill')}, {_count(m.restores, 'restore')}, "
                     f"{m.disk_allocations} created on disk")
        lines.append(line)
    elif "store_error" in st:
        lines.append(f"object store: no figures ({st['store_error']})")
    c: ControlStatistics = st["control"]
    lines.append(f"lineage: {_count(c.tasks_recorded, 'task')} recorded, "
                 f"{c.lineage_live_tasks} with live results, {c.lineage_collectable} "
                 f"collectable, {c.lineage_elided} freed before written, "
                 f"{c.lineage_pending} buffered")
    lin = st.get("lineage")
    if lin is not None:
        lines.append(f"rebuilds: {_count(lin.rebuilds, 'task')} re-run for lost objects "
                     f"({lin.rebuilding} now, {lin.failed} refused); {lin.kept} specs kept "
                     f"of {lin.cap}, {lin.evicted} evicted while referenced")
    g: gcs.GcsClientStatistics | None = c.gcs_client
    if g is not None:
        lines.append(f"gcs: {c.address}, {_count(g.writes, 'write')} and "
                     f"{_count(g.reads, 'read')} in {_count(g.batches, 'batch', 'batches')}, "
                     f"{_count(g.retries, 'retry', 'retries')}")
    elif c.backend == "memory":
        lines.append("gcs: none (control state in the node's memory)")
    return lines


_RED = "\x1b[31m"
_YELLOW = "\x1b[33m"
_RESET = "\x1b[0m"


def _highlight(text: str, color: bool) -> str:
    if not color:
        return text
    out = []
    for line in text.splitlines():
        if " failed" in line or "restarting" in line:
            line = _RED + line + _RESET
        elif " restarts " in line:
            line = _YELLOW + line + _RESET
        out.append(line)
    return "\n".join(out)


def cmd_tree(args: argparse.Namespace) -> int:
    from ..api._api import tree
    from ..kernel import format_tree

    color = sys.stdout.isatty()
    while True:
        try:
            snap = tree(args.address)
        except ConnectionError as exc:
            return _err(str(exc))
        if args.json:
            text = json.dumps(snap, indent=2, default=str)
        else:
            text = _highlight(format_tree(snap), color)
        if args.watch is None:
            print(text)
            return 0
        if color:
            sys.stdout.write("\x1b[2J\x1b[H")
        print(time.strftime("%H:%M:%S"), "(Ctrl-C to stop)")
        print(text, flush=True)
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actorcore", description="actorcore cluster control")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start a head node (or join a cluster)")
    s.add_argument("--head", action="store_true")
    s.add_argument("--address", help="join the cluster whose head node listens there")
    s.add_argument("--token", help="the cluster token (hex) for --address (default: "
                   "ACTORCORE_TOKEN, or the head's session on this machine)")
    from ..session._config import add_arguments

    add_arguments(s)  # one flag per ClusterConfig field
    s.set_defaults(fn=cmd_start)
    s = sub.add_parser("stop", help="stop the nodes running on this machine")
    s.set_defaults(fn=cmd_stop)
    s = sub.add_parser("status", help="nodes, resources, object store, log dir")
    s.add_argument("--address")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("tree", help="the live supervision tree")
    s.add_argument("--address")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", type=float, nargs="?", const=1.0, default=None)
    s.set_defaults(fn=cmd_tree)
    s = sub.add_parser("tls", help="TLS material for a cluster")
    tls_sub = s.add_subparsers(dest="tls_command", required=True)
    t = tls_sub.add_parser("init", help="create a cluster CA and a node certificate in DIR")
    t.add_argument("dir")
    t.add_argument("--days", type=int, default=825, help="node certificate validity (825)")
    t.add_argument("--host", action="append", help="extra DNS name or IP to name (repeatable)")
    t.set_defaults(fn=cmd_tls)
    from ._chaos import add_parser as add_chaos

    add_chaos(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `actorcore tree --watch | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 0
    except Exception as exc:  # a clean message, not a traceback, for CLI users
        return _err(f"{type(exc).__name__}: {exc}")


def _run() -> Any:
    sys.exit(main())
