"""``python -m actorcore.node``: run a node process (see ``_runtime`` for the design).

Started by ``actorcore.init()`` (embedded cluster) or ``actorcore start``. The
cluster's options (``--num-cpus``, ``--resources``, ``--tls-cert``, ``--spill-dir``,
...) are the fields of ``session._config.ClusterConfig``, whose ``node_argv`` the
launcher passes; besides them:

  --session-dir DIR   the session directory (token inside; sockets and logs go there)
  --head              carry the GCS and write session_latest
  --head-address ADDR join the cluster of the head node at ADDR (its TCP address)
  --no-gcs            keep the control state in the node's memory (no GCS)
  --ready-fd FD       write one JSON line (the session info) there once serving
  --parent-fd FD      stop when this pipe closes (the driver of an embedded cluster)

The zygote first
----------------
The node's first zygote (``worker_pool._zygote``) is forked from this process as the
first thing ``main`` does, before the node imports its own modules (``_runtime``
and what it pulls in: the scheduler, the GCS, the store) and before any thread or
Trio loop exists. By then ``actorcore``'s package (Trio, attrs, the protocol) is
imported, about half of what a worker imports, so the zygote pays only the rest
and does it while the node imports and starts its tree; it is ready before the
node is, and the first workers are forked from it. Spawned as ``python -m
actorcore.worker._zygote`` after the node's start instead, it was ready 0.5-1 s
after the node, and the first task waited for it (or for workers spawned beside
it). The child runs ``actorcore.worker._zygote.serve_forked``, named by string as
the spawned zygote's module is: the node does not import the worker's modules.
The pool adopts the child (`Zygote.adopt`); a zygote that replaces it later is
spawned as before. Not forked: with ``ACTORCORE_WORKER_ZYGOTE=0`` or
``ACTORCORE_WORKER_ZYGOTE_AT_START=0``, or when a thread already exists (a fork
would copy a process in flux).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..session import _config, _limits

if TYPE_CHECKING:
    import trio

__all__ = ["main"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m actorcore.node")
    p.add_argument("--session-dir", required=True)
    p.add_argument("--head", action="store_true")
    p.add_argument("--head-address", help="join the cluster whose head node listens there")
    _config.add_arguments(p)
    p.add_argument("--no-gcs", action="store_true")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--parent-fd", type=int)
    return p.parse_args(argv)


def fork_zygote(session_dir: Path) -> tuple[int, socket.socket] | None:
    """Fork the node's first zygote (see "The zygote first"): its pid and the node's
    end of its control socket, or ``None`` (the pool spawns one as usual)."""
    if not (_config.env_value("ACTORCORE_WORKER_ZYGOTE")
            and _config.env_value("ACTORCORE_WORKER_ZYGOTE_AT_START")):
        return None
    try:
        if len(os.listdir("/proc/self/task")) != 1:
            return None
    except OSError:
        return None
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        parent.close()
        child.close()
        return None
    if pid == 0:  # the zygote: never returns here
        try:
            parent.close()
            import importlib

            zygote = importlib.import_module("actorcore.worker._zygote")
            zygote.serve_forked(child.fileno(), str(session_dir / "logs"))
        finally:
            os._exit(70)
    child.close()
    return pid, parent


async def _watch_parent(fd: int, stop: trio.Event) -> None:
    """Return when the driver's end of the pipe closes (EOF or error)."""
    import trio

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
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            logging.getLogger("actorcore.node").info("signal %s: stopping", signum)
            stop.set()
            return


async def amain(args: argparse.Namespace,
                early_zygote: tuple[int, socket.socket] | None = None) -> None:
    import trio

    import transport

    from ..protocol._ids import new_node_id
    from ..session import _security
    from ..session._session import link_latest, read_token
    from ._runtime import NodeConfig, NodeRuntime
    from ._tree import check_join

    session_dir = Path(args.session_dir)
    cluster = _config.ClusterConfig.from_namespace(args)
    resources = dict(cluster.resources)
    resources["CPU"] = float(cluster.num_cpus if cluster.num_cpus is not None
                             else (os.cpu_count() or 1))
    if cluster.num_gpus:
        resources["GPU"] = float(cluster.num_gpus)
    tls = cluster.tls()
    _security.check_listen(cluster.host, tls, cluster.insecure)
    _security.apply(tls, cluster.insecure)
    config = NodeConfig(
        session_dir=session_dir,
        token=read_token(session_dir),
        node_id=new_node_id(),
        head=args.head,
        head_address=args.head_address,
        embedded=args.parent_fd is not None,
        resources=resources,
        num_workers=cluster.num_workers,
        port=cluster.port,
        host=cluster.host,
        tls=tls,
        insecure=cluster.insecure,
        gcs_shards=cluster.gcs_shards,
        gcs_replicas=cluster.gcs_replicas,
        lineage_cap=cluster.lineage_cap,
        object_store_memory=cluster.object_store_memory,
        spill_dir=Path(cluster.spill_dir) if cluster.spill_dir else None,
        use_gcs=not args.no_gcs,
    )
    if args.head_address is not None:
        try:
            await check_join(args.head_address, config.token)
        except (transport.TransportError, trio.TooSlowError) as exc:
            # Refused by the head for good, or no head there: tell the launcher the
            # error's type and message (it raises the same type), and stop before
            # starting anything.
            logging.getLogger("actorcore.node").error(
                "joining the head at %s failed: %s", args.head_address, exc)
            if args.ready_fd is not None:
                with os.fdopen(args.ready_fd, "w") as f:
                    message = str(exc) or f"{type(exc).__name__}: the head did not answer"
                    f.write(json.dumps({"refused": {"type": type(exc).__name__,
                                                    "message": message}}) + "\n")
            raise SystemExit(1) from None
    node = NodeRuntime(config)
    if early_zygote is not None:
        node.pool.zygote.adopt(*early_zygote)
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
        # First the node tells the cluster it leaves, over its GCS link: cancelling
        # now would stop the tree (and that link) under it, and the head would
        # declare a cleanly stopped node dead for "no heartbeat" a timeout later.
        # (Bounded: the leave itself gives up after 2 s.)
        with trio.move_on_after(5.0):
            await node.left.wait()
        # node.run's cleanup (stop the tree, kill workers, remove sockets) is shielded.
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # What the zygote forked next inherits: the runtime's API (Trio, attrs, the
    # protocol), about half of a worker's imports ("The zygote first"), which a
    # plain `import actorcore` no longer loads (named by string: the node's modules
    # do not import the package above them).
    import importlib

    importlib.import_module("actorcore").load_runtime()
    # Thousands of actors need thousands of descriptors here, and the workers forked
    # or spawned from here inherit the limit (``session._limits``).
    _limits.raise_open_files_limit()
    early_zygote = fork_zygote(Path(args.session_dir))
    import trio

    logging.basicConfig(
        filename=str(Path(args.session_dir) / "logs" / "node.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    profile = _config.env_value("ACTORCORE_PROFILE_NODE")
    if profile:  # a development aid: cProfile stats of the node's main thread
        import cProfile

        prof = cProfile.Profile()
        try:
            prof.runcall(trio.run, amain, args, early_zygote)
        finally:
            prof.dump_stats(profile)
    else:
        trio.run(amain, args, early_zygote)


if __name__ == "__main__":
    main()
