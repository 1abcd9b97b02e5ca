"""The cost of typed messages (``actorcore.protocol._wire``) beside the tuples they
replaced, in one process: pickled size, pickle + unpickle time, and dispatch time.

    .venv/bin/python benchmarks/messages_bench.py [--quick]

For each message on a task's or an actor call's path the same content is built both
ways -- the ``_wire`` class and the old ``(op, *fields)`` tuple -- and measured with
the transport's codec (pickle protocol 5). Dispatch compares the endpoints' two
registries: a `transport.Dispatcher` (one dict lookup on ``type(message)``, the
field checks, then the handler) against the old handler dict keyed by
``message[0]`` (no checks at all). Times are CPU time of this process (a shared
machine's other processes do not count); rounds of the two alternate; each figure is the
fastest of 7 rounds (on a shared machine, the cost without other processes' stalls).
"""

from __future__ import annotations

import argparse
import pickle
import time
from typing import Any

import trio

import transport
from actorcore.protocol import _wire as w
from actorcore.protocol._actors import CallSpec
from actorcore.protocol._messages import TaskSpec

TASK_ID = b"t" * 24
OID = b"o" * 28


def _spec() -> TaskSpec:
    return TaskSpec(task_id=TASK_ID, job_id=b"j" * 4, function_id=b"f" * 28, name="f",
                    args=b"\x80\x05" + b"a" * 40, deps=[], num_returns=1,
                    resources={"CPU": 1.0}, max_retries=3, retry_exceptions=False,
                    parent_task_id=None, owner=b"w" * 16)


def _call() -> CallSpec:
    return CallSpec(task_id=TASK_ID, actor_id=b"a" * 16, method="add", name="Counter.add",
                    args=b"\x80\x05" + b"a" * 20, deps=[], num_returns=1, owner=b"w" * 16)


def cases() -> list[tuple[str, Any, tuple]]:
    results = [(OID, False, b"\x80\x05K\x02.")]
    spec = _spec()
    cases = [
        ("Submit (1 task)", w.Submit([spec]), ("submit", [spec])),
        ("Execute", w.Execute(spec, [], None, ()), ("execute", spec, [])),
        ("TaskDone", w.TaskDone(TASK_ID, results, False, True),
         ("done", TASK_ID, results, False, True)),
        ("ObjectsReady", w.ObjectsReady(results), ("ready", results)),
        ("Put", w.Put(results), ("put", results)),
        ("Free", w.Free([OID]), ("free", [OID])),
    ]
    call = _call()
    cases += [
        ("ActorCall", w.ActorCall(call, None), ("actor_call", call, None)),
        ("ActorDone", w.ActorDone(b"a" * 16, TASK_ID, results, False),
         ("actor_done", b"a" * 16, TASK_ID, results)),
        ("DirectCall", w.DirectCall(call), ("dcall", call)),
        ("DirectResult", w.DirectResult(TASK_ID, results), ("dresult", TASK_ID, results)),
    ]
    return cases


ROUNDS = 7


def _interleaved(a: Any, b: Any, n: int) -> tuple[float, float]:
    """Seconds per call of ``a`` and of ``b``: rounds of each in turn (so that load
    from elsewhere falls on both alike), the fastest round of each (the cost itself,
    without the stalls of a shared machine)."""
    best_a = best_b = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for _ in range(n):
            a()
        t1 = time.process_time()
        for _ in range(n):
            b()
        t2 = time.process_time()
        best_a, best_b = min(best_a, (t1 - t0) / n), min(best_b, (t2 - t1) / n)
    return best_a, best_b


def _dispatch_cost(message: Any, old: tuple, n: int) -> tuple[float, float]:
    """Seconds per message through a Dispatcher and through the old op dict."""

    def handler(conn: Any, m: Any, reply: Any = None) -> None:
        pass

    d = transport.Dispatcher("bench")
    d.register(type(message), handler, oneway=True)
    handlers = {old[0]: handler}

    async def old_handle(conn: Any, m: Any, reply: Any) -> None:  # the node's old handle
        try:
            h = handlers[m[0]]
        except (KeyError, TypeError, IndexError):
            raise ValueError(f"unknown message {m!r:.100}") from None
        h(conn, m, reply)

    async def rounds(handle: Any, m: Any) -> float:
        t0 = time.process_time()
        for _ in range(n):
            await handle(None, m, None)
        return (time.process_time() - t0) / n

    async def main() -> tuple[float, float]:
        best_new = best_old = float("inf")
        for _ in range(ROUNDS):
            best_new = min(best_new, await rounds(d, message))
            best_old = min(best_old, await rounds(old_handle, old))
        return best_new, best_old

    return trio.run(main)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    n = 2_000 if p.parse_args().quick else 20_000
    print(f"{'message':<18}{'bytes':>8}{'tuple':>8}{'codec us':>10}{'tuple':>8}"
          f"{'dispatch us':>13}{'op dict':>9}")
    for name, message, old in cases():
        size, old_size = (len(pickle.dumps(x, protocol=5)) for x in (message, old))
        codec, old_codec = _interleaved(
            lambda m=message: pickle.loads(pickle.dumps(m, protocol=5)),
            lambda m=old: pickle.loads(pickle.dumps(m, protocol=5)), n)
        typed, untyped = _dispatch_cost(message, old, n)
        print(f"{name:<18}{size:>8}{old_size:>8}{codec * 1e6:>10.2f}{old_codec * 1e6:>8.2f}"
              f"{typed * 1e6:>13.2f}{untyped * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
