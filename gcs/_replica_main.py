"""Entry point of a replica process: ``python -m gcs._replica_main``.

Reads one JSON line of parameters from stdin (`LaunchParams`: the token travels
there, never on the command line; so does the node's TLS config, which becomes this
process's default for its TCP links: ``transport.set_default_tls``; so do the fault
rules installed in the GCS's replica processes at the time), prints
``READY <address>`` once serving, and exits when its parent closes stdin (so a dead
node never leaves orphan replicas) or when the replica is removed from its chain.

After the parameters, stdin is the node's control channel for fault injection:
each line is ``{"id": n, "faults": <transport.faults command>}``, applied to this
process's rule table, and answered on stdout by one line
``FAULTS {"id": n, "ok": true, "result": ...}`` (or ``"ok": false, "error": "..."``).
A pipe is no transport link, so no rule can cut the channel that heals it.

A spare (``--spare``, started through ``_spares._BOOT``) first says ``SPARE`` on
stdout once imported and then waits for its parameters like any other; one whose
stdin closes before they come exits quietly (code 0).

``--lifeline <fd>``: the page of the parent's `Lifeline`, whose mutex this process
locks first and holds until it dies (the parent learns of the death before the
kernel closes our sockets: see `_lifeline.py`).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import Any

import trio

import transport

from . import _lifeline as lifeline
from ._config import FAULTS_ANSWER, SPARE_READY, LaunchParams
from ._replica import Replica, ReplicaRemoved


def _install(fault_rules: dict[str, list[dict[str, Any]]]) -> None:
    for tag, rules in fault_rules.items():
        transport.faults.apply({"op": "install", "tag": tag, "rules": rules})


def _answer(line: bytes) -> str:
    """The stdout line that answers the command line ``line``."""
    ident: Any = None
    try:
        message = json.loads(line)
        ident = message["id"]
        result = transport.faults.apply(message["faults"])
        answer: dict[str, Any] = {"id": ident, "ok": True, "result": result}
    except Exception as exc:  # a bad command is answered, the replica serves on
        answer = {"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return FAULTS_ANSWER + json.dumps(answer) + "\n"


async def _main(params: LaunchParams, rest: bytes) -> None:
    transport.set_default_tls(
        None if params.tls is None else transport.TlsConfig(**params.tls),
        insecure=params.insecure,
    )
    _install(params.fault_rules)
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

        async def control() -> None:
            buffer = rest
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        sys.stdout.write(_answer(line))
                        sys.stdout.flush()
                chunk = await stdin.receive_some()
                if not chunk:  # the node closed our stdin (or died): stop
                    nursery.cancel_scope.cancel()
                    return
                buffer += chunk

        nursery.start_soon(control)


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is a ``kind``, or an exception group of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kind) for inner in exc.exceptions)
    return isinstance(exc, kind)


def _first_line(fd: int) -> tuple[bytes, bytes]:
    """The first line of ``fd`` and what was read after it (unbuffered: the rest of
    the stream is read by the control channel)."""
    buffer = b""
    while b"\n" not in buffer:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    return line, rest


def _wait_as_spare(idle: bool) -> None:
    """A spare (``_spares.py``): imported by now; back to normal priority if it
    imported at idle priority, then say so and wait for the parameters."""
    if idle:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    sys.stdout.write(SPARE_READY + "\n")
    sys.stdout.flush()


def _freeze_imports() -> None:
    """Move everything imported so far out of the collector's sight (`gc.freeze`).

    A fresh replica process holds some 100,000 objects of its imports (trio,
    attrs, the transport, the messages), and its first full collection walked
    them all: 120-250 ms on a loaded machine, 0.1-3 s after the start, i.e. during
    its join or just after its promotion to tail, with every commit of the shard
    held meanwhile (traced: a 144 ms full collection in the tail was a whole
    154 ms stall of the writers). Collected and frozen once here -- for a spare
    before it leaves idle priority, off any failover's path -- a full collection
    later walks only what the replica made since. (The zygote does the same for
    the workers it forks.)
    """
    gc.collect()
    gc.freeze()


def _hold_lifeline(args: list[str]) -> None:
    """``--lifeline <fd>``: hold the parent's lifeline for the life of this process
    (`_lifeline.py`), before saying ``SPARE`` or ``READY``."""
    if "--lifeline" in args:
        lifeline.hold(int(args[args.index("--lifeline") + 1]))


def main() -> None:
    _hold_lifeline(sys.argv[1:])
    _freeze_imports()
    if "--spare" in sys.argv[1:]:
        _wait_as_spare("--idle" in sys.argv[1:])
    line, rest = _first_line(sys.stdin.fileno())
    if not line.strip():
        sys.exit(0)  # stdin closed before any parameters came: a spare never taken
    params = LaunchParams.from_json(line)
    try:
        trio.run(_main, params, rest)
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
