"""The ``actorcore`` command line (also ``python -m actorcore``).

::

    actorcore start --head [--num-cpus N] [--num-gpus N] [--resources JSON]
                           [--gcs-shards S] [--gcs-replicas R] [--port P]
                           [--object-store-memory BYTES]
    actorcore start --address ADDR         (join a cluster: arrives with multi-node)
    actorcore stop
    actorcore status [--address ADDR] [--json]
    actorcore tree   [--address ADDR] [--json] [--watch [SECONDS]]

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
from typing import Any

__all__ = ["main"]


def _err(message: str, code: int = 1) -> int:
    print(f"actorcore: {message}", file=sys.stderr)
    return code


def _fmt_res(res: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(res.items())) or "-"


def _reclaim() -> None:
    """Remove the leftovers of dead sessions and say so (see ``_session``)."""
    from ._session import reclaim_dead_sessions

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
    from ._launcher import start_head
    from ._session import latest_session

    if args.address:
        return _err(
            "joining a node to an existing cluster (start --address) is not available in "
            "this single-node build; start a head with `actorcore start --head`",
            2,
        )
    if not args.head:
        return _err("say --head (start a new cluster) or --address ADDR (join one)", 2)
    _reclaim()
    running = latest_session()
    if running is not None:
        return _err(f"a cluster is already running on this machine ({running}); "
                    f"run `actorcore stop` first")
    resources = json.loads(args.resources) if args.resources else None
    head = start_head(
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        resources=resources,
        object_store_memory=args.object_store_memory,
        gcs_shards=args.gcs_shards,
        gcs_replicas=args.gcs_replicas,
        port=args.port,
        embedded=False,
    )
    info = head.info
    print("actorcore head node started")
    print(f"  node id      {info['node_id']}")
    print(f"  address      {info['address']}")
    if info.get("tcp_address"):
        print(f"  tcp address  {info['tcp_address']}")
    print(f"  gcs          {info.get('gcs_address')}")
    print(f"  resources    {_fmt_res(info.get('resources', {}))}")
    print(f"  logs         {info['log_dir']}")
    print("Connect from Python on this machine with actorcore.init(address='auto'); "
          "stop it with `actorcore stop`.")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from ._admin import admin_call
    from ._session import latest_session, read_session_info

    session = latest_session()
    if session is None:
        _reclaim()
        print("no running actorcore cluster found on this machine")
        return 0
    info = read_session_info(session)
    pid = int(info["pid"])
    try:
        admin_call(None, "shutdown", timeout=10)
    except Exception:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(f"stopped the actorcore cluster (node pid {pid}, logs in {info['log_dir']})")
    _reclaim()  # it had to be SIGKILLed, or it was already gone: its files stay
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ._admin import admin_call

    try:
        st = admin_call(args.address, "status")
    except ConnectionError as exc:
        return _err(str(exc))
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"actorcore cluster: {len(st['nodes'])} node(s), up {st['uptime_s']:.0f} s")
    for n in st["nodes"]:
        role = "head" if n.get("head") else "worker node"
        print(f"  node {n['node_id'][:12]}  {role}  pid {n['pid']}  {n['address']}")
    print("resources (used / total):")
    for k, total in sorted(st["resources_total"].items()):
        print(f"  {k:<10} {st['resources_used'].get(k, 0):g} / {total:g}")
    s = st["scheduler"]
    print(f"tasks: {s['running']} running, {s['ready'] + s['waiting']} queued, "
          f"{s['finished']} finished ({s['failed']} failed, {s['retried']} retried)")
    w = st["workers"]
    print(f"workers: {w['alive']} alive ({w['started_total']} started, {w['died_total']} exited)")
    o = st["object_store"]
    print(f"object store: {o['objects']} objects, {o['bytes_inline'] / 1e6:.2f} MB inline"
          + (f", shared memory {st['store']['used'] / 1e6:.1f} / {st['store']['capacity'] / 1e6:.0f} MB"
             if st.get("store") else ""))
    print(f"logs: {st['log_dir']}")
    return 0


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
    from ._api import tree
    from .kernel import format_tree

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
    s.add_argument("--address")
    s.add_argument("--num-cpus", type=float)
    s.add_argument("--num-gpus", type=float)
    s.add_argument("--resources", help='JSON, e.g. \'{"TPU": 4}\'')
    s.add_argument("--gcs-shards", type=int)
    s.add_argument("--gcs-replicas", type=int)
    s.add_argument("--port", type=int, help="also listen on TCP (0 picks a port)")
    s.add_argument("--object-store-memory", type=int)
    s.set_defaults(fn=cmd_start)
    s = sub.add_parser("stop", help="stop the cluster running on this machine")
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
