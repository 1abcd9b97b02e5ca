"""The cost of typed messages (``actorcore.protocol._wire``) beside the tuples they
replaced, in one process: pickled size, encode + decode time, and dispatch time.

    .venv/bin/python benchmarks/messages_bench.py [--quick]

For each message on a task's or an actor call's path the same content is built both
ways -- the ``_wire`` class and the old ``(op, *fields)`` tuple -- and measured with
the transport's codec (``transport._wire.encode_frame`` + ``decode_body``: pickle
protocol 5 in a frame). The typed message is measured twice: as it travels, its
class named by its extension code (``transport._codes``), and with the codes taken
out of copyreg for the round, its class named by module and name as before they
existed (and the direct link's messages out of their flat frames, ``transport._flat``);
so the codes' saving is a ratio within one run. Dispatch compares the endpoints' two
registries: a `transport.Dispatcher` (one dict lookup on ``type(message)``, the
field checks, then the handler) against the old handler dict keyed by
``message[0]`` (no checks at all). Times are CPU time of this process (a shared
machine's other processes do not count); rounds of the two alternate; each figure is the
fastest of 7 rounds (on a shared machine, the cost without other processes' stalls).
"""

from __future__ import annotations

import argparse
import contextlib
import copyreg
import pickle
import time
from collections.abc import Iterator
from typing import Any

import trio

import transport
from actorcore.protocol import _wire as w
from actorcore.protocol._actors import CallSpec
from actorcore.protocol._messages import TaskSpec
from transport import _codes, _flat
from transport import _wire as frames

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


@contextlib.contextmanager
def _names() -> Iterator[None]:
    """Within the block, message classes pickle by module and name (their extension
    codes taken out of copyreg, and its cache cleared), as before the codes; and
    no class travels in a flat frame (``transport._flat``), as before those."""
    codes = dict(_codes._codes)
    flat = dict(_flat.flat_encoders)
    _flat.flat_encoders.clear()
    for cls, code in codes.items():
        copyreg.remove_extension(cls.__module__, cls.__qualname__, code)
    try:
        yield
    finally:
        for cls, code in codes.items():
            copyreg.add_extension(cls.__module__, cls.__qualname__, code)
        _flat.flat_encoders.update(flat)


def _codec(message: Any) -> Any:
    """Encode ``message`` into a frame and decode it, as two processes would."""
    chunks, _size = frames.encode_frame(frames.ONEWAY, 0, message)
    flat = frames.HEADER.unpack_from(chunks[0])[3]  # a flat frame's code (transport._flat)
    return frames.decode_body(memoryview(chunks[0])[frames.HEADER_SIZE:], 0, flat)


def _interleaved(fns: list[tuple[Any, Any]], n: int) -> list[float]:
    """Seconds per call of each ``fn`` (run within its context): rounds of each in
    turn (so that load from elsewhere falls on all alike), the fastest round of each
    (the cost itself, without the stalls of a shared machine)."""
    best = [float("inf")] * len(fns)
    for _ in range(ROUNDS):
        for i, (fn, context) in enumerate(fns):
            with context():
                t0 = time.process_time()
                for _ in range(n):
                    fn()
                best[i] = min(best[i], (time.process_time() - t0) / n)
    return best


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
    print(f"{'':<18}{'bytes':>22}{'encode + decode, us':>30}{'dispatch, us':>24}")
    print(f"{'message':<18}{'codes':>8}{'names':>7}{'tuple':>7}{'codes':>9}{'names':>7}"
          f"{'tuple':>7}{'codes/tuple':>13}{'registry':>12}{'op dict':>9}")
    for name, message, old in cases():
        size, old_size = (len(pickle.dumps(x, protocol=5)) for x in (message, old))
        with _names():
            named_size = len(pickle.dumps(message, protocol=5))
        codes, names, untyped_codec = _interleaved(
            [(lambda m=message: _codec(m), contextlib.nullcontext),
             (lambda m=message: _codec(m), _names),
             (lambda m=old: _codec(m), contextlib.nullcontext)], n)
        typed, untyped = _dispatch_cost(message, old, n)
        print(f"{name:<18}{size:>8}{named_size:>7}{old_size:>7}{codes * 1e6:>9.2f}"
              f"{names * 1e6:>7.2f}{untyped_codec * 1e6:>7.2f}{codes / untyped_codec:>12.2f}x"
              f"{typed * 1e6:>12.2f}{untyped * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
