"""The floor under a sync actor call: a raw Unix-socket ping-pong between two Python
processes, each message pickled, one at a time.

    .venv/bin/python benchmarks/pingpong_floor.py [--calls N] [--rounds R]

A caller process sends a length-prefixed pickled request (a method name, an argument
tuple, a call number) over a ``socketpair`` to a forked echo process, which unpickles
it, pickles the answer and writes it back; the caller reads and unpickles the answer
before it sends the next. Both sides block in ``recv``: each round trip is two kernel
wake-ups, two ``sendall``/``recv`` pairs, and four pickle steps -- what a sync actor
call cannot do without, and nothing else (no threads, no event loop, no bookkeeping).

For each round: the rate, the CPU time per round trip of both processes (from
``/proc``), and the 10th, 50th, 90th and 99th percentile of one round trip's latency; then
the medians. ``--work-us`` spins that long per message in each process, before each
write or, with ``--work-after-send``, between the write and the next blocking read:
where a process's own work sits around its write, under load (see the README's
section on sync calls under load). ``actor_cpu_bench.py`` prints the same columns for ``ray.get(a.f.remote())``,
so the two compare line by line (run them alternately: the machine's load moves both).
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import stat_cpu  # noqa: E402

#: A frame's header: the pickled body's length.
LENGTH = struct.Struct("!I")


def send_message(sock: socket.socket, message: object) -> None:
    """Pickle ``message`` and write it as one length-prefixed frame."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(LENGTH.pack(len(body)) + body)


def receive_message(sock: socket.socket) -> object:
    """Read one frame (blocking) and unpickle it; ``EOFError`` at the end of the stream."""
    header = _receive_exactly(sock, LENGTH.size)
    (length,) = LENGTH.unpack(header)
    return pickle.loads(_receive_exactly(sock, length))


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the peer closed the socket")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def busy(seconds: float) -> None:
    """Spin for ``seconds`` of wall clock (Python work standing in for bookkeeping)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def serve_echo(sock: socket.socket, work: float, work_after_send: bool) -> None:
    """(The forked echo process.) Answer each request with its argument until EOF,
    spinning ``work`` seconds per request before or after its answer's write."""
    try:
        while True:
            method, args, number = receive_message(sock)  # type: ignore[misc]
            if not work_after_send:
                busy(work)
            send_message(sock, (number, args[0] if method == "f" and args else None))
            if work_after_send:
                busy(work)
    except EOFError:
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=2000, help="round trips per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work-us", type=float, default=0.0,
                   help="spin this long per message in each process (bookkeeping's stand-in)")
    p.add_argument("--work-after-send", action="store_true",
                   help="spin after each write, before the next blocking read, not before it")
    args = p.parse_args()
    work = args.work_us / 1e6

    caller, echo = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        caller.close()
        serve_echo(echo, work, args.work_after_send)
        os._exit(0)
    echo.close()
    for _ in range(200):  # both processes warm
        send_message(caller, ("f", (None,), 0))
        receive_message(caller)
    rows = []
    me = os.getpid()
    for r in range(args.rounds):
        n = args.calls
        cpu0 = stat_cpu(f"/proc/{me}/stat") + stat_cpu(f"/proc/{child}/stat")
        latencies = []
        clock = time.perf_counter
        t0 = clock()
        for number in range(n):
            s0 = clock()
            if not args.work_after_send:
                busy(work)
            send_message(caller, ("f", (None,), number))
            if args.work_after_send:
                busy(work)
            receive_message(caller)
            latencies.append(clock() - s0)
        wall = clock() - t0
        cpu = (stat_cpu(f"/proc/{me}/stat") + stat_cpu(f"/proc/{child}/stat") - cpu0) / n * 1e6
        latencies.sort()
        pct = [latencies[n * q // 100] * 1e6 for q in (10, 50, 90, 99)]
        print(f"round {r + 1}: {n / wall:8,.0f}/s  CPU/round trip {cpu:4.0f} us  latency "
              "p10/p50/p90/p99 " + "/".join(f"{us:.0f}" for us in pct) + " us", flush=True)
        rows.append([n / wall, cpu, *pct])
    caller.close()
    os.waitpid(child, 0)
    names = ["rate/s", "CPU/round trip", "p10", "p50", "p90", "p99"]
    cols = list(zip(*rows, strict=True))
    print("medians: " + ", ".join(
        f"{name} {statistics.median(col):,.0f}" for name, col in zip(names, cols, strict=True)))


if __name__ == "__main__":
    main()
