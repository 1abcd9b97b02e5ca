"""Entry point of a replica process: ``python -m gcs._replica_main``.

Reads one JSON line of parameters from stdin (`LaunchParams`: the token travels
there, never on the command line; so does the node's TLS config, which becomes this
process's default for its TCP links: ``transport.set_default_tls``), prints
``READY <address>`` once serving, and exits when its parent closes stdin (so a dead
node never leaves orphan replicas) or when the replica is removed from its chain.
"""

from __future__ import annotations

import sys

import trio

import transport

from ._config import LaunchParams
from ._replica import Replica, ReplicaRemoved


async def _main(params: LaunchParams) -> None:
    transport.set_default_tls(
        None if params.tls is None else transport.TlsConfig(**params.tls),
        insecure=params.insecure,
    )
    replica = Replica(
        params.config,
        shard=params.shard,
        token=params.token,
        coordinator=params.coordinator,
        name=params.name,
    )
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())

    async with trio.open_nursery() as nursery:
        address = await nursery.start(replica.run)
        sys.stdout.write(f"READY {address}\n")
        sys.stdout.flush()

        async def watch_parent() -> None:
            while await stdin.receive_some():
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_parent)


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is a ``kind``, or an exception group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kind) for inner in exc.exceptions)
    return isinstance(exc, kind)


def main() -> None:
    params = LaunchParams.from_json(sys.stdin.buffer.readline())
    try:
        trio.run(_main, params)
    except BaseException as exc:
        # Expected ends exit quietly with a telling code; anything else is a bug
        # and keeps its traceback (on stderr, inherited from the node).
        if _only(exc, ReplicaRemoved):
            sys.exit(3)
        if _only(exc, KeyboardInterrupt):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
