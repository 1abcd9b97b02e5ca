"""``python -m actorcore.node``: run a node process (see ``_runtime`` for the design).

Started by ``actorcore.init()`` (embedded cluster) or ``actorcore start``. Options:

  --session-dir DIR   the session directory (token inside; sockets and logs go there)
  --head              carry the GCS and write session.json / session_latest
  --num-cpus N, --num-gpus N, --resources JSON, --num-workers N
  --port P            also listen on TCP (head; 0 picks a port)
  --host H            the interface of the TCP listeners (node and GCS; default loopback)
  --tls-cert F, --tls-key F, --tls-ca F
                      TLS 1.3 with mutual certificates on every TCP link (else read
                      from ACTORCORE_TLS_CERT/KEY/CA); passed on to the GCS replicas
  --insecure          allow plaintext TCP on a non-loopback --host (refused otherwise)
  --gcs-shards S, --gcs-replicas R, --object-store-memory BYTES
  --spill-dir DIR     where the store spills (default: the session's spill/)
  --ready-fd FD       write one JSON line (the session info) there once serving
  --parent-fd FD      stop when this pipe closes (the driver of an embedded cluster)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from ..protocol._ids import new_node_id
from ..session import _security
from ..session._session import link_latest, read_token
from ._runtime import NodeConfig, NodeRuntime

__all__ = ["main"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m actorcore.node")
    p.add_argument("--session-dir", required=True)
    p.add_argument("--head", action="store_true")
    p.add_argument("--num-cpus", type=float)
    p.add_argument("--num-gpus", type=float, default=0)
    p.add_argument("--resources", default="{}")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--gcs-shards", type=int, default=1)
    p.add_argument("--gcs-replicas", type=int, default=1)
    p.add_argument("--object-store-memory", type=int)
    p.add_argument("--spill-dir")
    p.add_argument("--no-gcs", action="store_true")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--parent-fd", type=int)
    return p.parse_args(argv)


async def _watch_parent(fd: int, stop: trio.Event) -> None:
    """Return when the driver's end of the pipe closes (EOF or error)."""
    os.set_blocking(fd, False)
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not data:
            break
    logging.getLogger("actorcore.node").info("driver pipe closed: stopping")
    stop.set()


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            logging.getLogger("actorcore.node").info("signal %s: stopping", signum)
            stop.set()
            return


async def amain(args: argparse.Namespace) -> None:
    session_dir = Path(args.session_dir)
    resources = {k: float(v) for k, v in json.loads(args.resources).items()}
    resources["CPU"] = float(args.num_cpus if args.num_cpus is not None else (os.cpu_count() or 1))
    if args.num_gpus:
        resources["GPU"] = float(args.num_gpus)
    tls = _security.tls_config(args.tls_cert, args.tls_key, args.tls_ca)
    _security.check_listen(args.host, tls, args.insecure)
    _security.apply(tls, args.insecure)
    config = NodeConfig(
        session_dir=session_dir,
        token=read_token(session_dir),
        node_id=new_node_id(),
        head=args.head,
        resources=resources,
        num_workers=args.num_workers,
        port=args.port,
        host=args.host,
        tls=tls,
        insecure=args.insecure,
        gcs_shards=args.gcs_shards,
        gcs_replicas=args.gcs_replicas,
        object_store_memory=args.object_store_memory,
        spill_dir=Path(args.spill_dir) if args.spill_dir else None,
        use_gcs=not args.no_gcs,
    )
    node = NodeRuntime(config)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, node.shutdown_requested)
        if args.parent_fd is not None:
            nursery.start_soon(_watch_parent, args.parent_fd, node.shutdown_requested)
        info = await nursery.start(node.run)
        if args.head:
            link_latest(session_dir)
        if args.ready_fd is not None:
            with os.fdopen(args.ready_fd, "w") as f:
                f.write(json.dumps(info) + "\n")
        await node.shutdown_requested.wait()
        # node.run's cleanup (stop the tree, kill workers, remove sockets) is shielded.
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        filename=str(Path(args.session_dir) / "logs" / "node.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    profile = os.environ.get("ACTORCORE_PROFILE_NODE")
    if profile:  # a development aid: cProfile stats of the node's main thread
        import cProfile

        prof = cProfile.Profile()
        try:
            prof.runcall(trio.run, amain, args)
        finally:
            prof.dump_stats(profile)
    else:
        trio.run(amain, args)


if __name__ == "__main__":
    main()
