"""Transport benchmarks: round-trip latency, pipelined throughput, codecs.

    python benchmarks/transport_bench.py [--quick]
    python benchmarks/transport_bench.py --tls [--quick]

Everything runs between two processes over a Unix socket, on this machine, in this
run, and is printed beside the floor: a bare blocking socket + pickle ping-pong
(length-prefixed frames, no framework at all). A ping-pong with Trio on both ends
(non-blocking socket, `wait_readable`, pickle; nothing else) is printed too: the floor
for any Trio-based transport.

``--tls`` instead measures the cost of TLS: the same cases between two processes over
TCP on loopback, plaintext and TLS 1.3 (mutual certificates made for the run),
interleaved where it matters, plus the time to connect (TCP + TLS + token handshake).
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import pickle
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

import transport  # noqa: E402

TOKEN = b"bench-token"
MESSAGE = {"op": "echo", "id": 123456, "args": (b"\x07" * 20, "node-3f2a/worker-7"), "ok": True}
_LEN = struct.Struct("<I")


# ----------------------------------------------------------------------------- peers


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError
        got += k
    return bytes(buf)


def peer_bare(path: str) -> None:
    """Blocking socket + pickle echo server (the floor)."""
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(1)
    print("READY", flush=True)
    sock, _ = lsock.accept()
    try:
        while True:
            (n,) = _LEN.unpack(_recv_exactly(sock, 4))
            msg = pickle.loads(_recv_exactly(sock, n))
            data = pickle.dumps(msg, 5)
            sock.sendall(_LEN.pack(len(data)) + data)
    except EOFError:
        pass


def _tls_config(tls_dir: str | None) -> transport.TlsConfig | None:
    if not tls_dir:
        return None
    return transport.TlsConfig(f"{tls_dir}/node.pem", f"{tls_dir}/node.key", f"{tls_dir}/ca.pem")


def peer_transport(address: str, tls_dir: str | None = None) -> None:
    count = 0

    async def handler(conn: transport.Connection, msg: Any, reply: transport.Reply | None) -> None:
        nonlocal count
        if reply is None:
            count += 1
        elif msg == "count":
            reply.send(count)
        elif isinstance(msg, memoryview):
            reply.send(pickle.PickleBuffer(msg))
        else:
            reply.send(msg)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = transport.Server(
                address, TOKEN, handler, name="bench-peer", tls=_tls_config(tls_dir)
            )
            bound = await nursery.start(server.run)
            print(f"READY {bound}", flush=True)

    trio.run(main)


def spawn_at(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start a peer; return it and what it printed after READY (its address, if any)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"peer {args} did not start: {line!r}")
    return proc, line[len("READY"):].strip()


def spawn(*args: str) -> subprocess.Popen[str]:
    return spawn_at(*args)[0]


# ----------------------------------------------------------------------------- measurements


def summarize(samples_ns: list[int]) -> tuple[float, float]:
    samples_ns.sort()
    median = statistics.median(samples_ns) / 1000
    p99 = samples_ns[int(len(samples_ns) * 0.99)] / 1000
    return median, p99


def rtt_bare(sock: socket.socket, n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        data = pickle.dumps(MESSAGE, 5)
        sock.sendall(_LEN.pack(len(data)) + data)
        (k,) = _LEN.unpack(_recv_exactly(sock, 4))
        pickle.loads(_recv_exactly(sock, k))
        out.append(clock() - t0)


async def _trio_recv_frame(sock: socket.socket, buf: bytearray) -> Any:
    while True:
        if len(buf) >= 4:
            (k,) = _LEN.unpack_from(buf)
            if len(buf) >= 4 + k:
                msg = pickle.loads(buf[4 : 4 + k])
                del buf[: 4 + k]
                return msg
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if not data:
            raise EOFError
        buf += data


def peer_trio(path: str) -> None:
    """Trio + non-blocking socket + pickle echo server (the floor for a Trio transport)."""

    async def main() -> None:
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(1)
        print("READY", flush=True)
        sock, _ = lsock.accept()
        sock.setblocking(False)
        buf = bytearray()
        try:
            while True:
                data = pickle.dumps(await _trio_recv_frame(sock, buf), 5)
                sock.send(_LEN.pack(len(data)) + data)
        except EOFError:
            pass

    trio.run(main)


async def rtt_trio(sock: socket.socket, buf: bytearray, n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        data = pickle.dumps(MESSAGE, 5)
        sock.send(_LEN.pack(len(data)) + data)
        await _trio_recv_frame(sock, buf)
        out.append(clock() - t0)


async def rtt_transport(conn: transport.Connection, n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await conn.request(MESSAGE)
        out.append(clock() - t0)


async def bench_rtt(tmp: str, n: int, rounds: int = 10) -> dict[str, tuple[float, float]]:
    """Round trips of the three ping-pongs, interleaved in rounds so that load from
    anything else on the machine affects them alike."""
    peers = [
        spawn("--peer-bare", f"{tmp}/bare.sock"),
        spawn("--peer-trio", f"{tmp}/trio.sock"),
        spawn("--peer-transport", f"unix:{tmp}/rtt.sock"),
    ]
    try:
        bare = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bare.connect(f"{tmp}/bare.sock")
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(f"{tmp}/trio.sock")
        raw.setblocking(False)
        buf = bytearray()
        samples: dict[str, list[int]] = {"bare": [], "trio": [], "transport": []}
        async with transport.open_connection(f"unix:{tmp}/rtt.sock", TOKEN, name="bench") as conn:
            per_round = n // rounds
            for r in range(rounds + 1):
                sink: dict[str, list[int]] = {k: [] for k in samples} if r == 0 else samples
                rtt_bare(bare, per_round, sink["bare"])  # round 0 warms up
                await rtt_trio(raw, buf, per_round, sink["trio"])
                await rtt_transport(conn, per_round, sink["transport"])
        bare.close()
        raw.close()
    finally:
        for p in peers:
            p.kill()
            p.wait()
    return {k: summarize(v) for k, v in samples.items()}


async def bench_oneway(address: str, n: int, tls: transport.TlsConfig | None = None) -> float:
    """Pipelined small one-way messages; timed until the peer has counted them all."""
    async with transport.open_connection(address, TOKEN, name="bench", tls=tls) as conn:
        base = await conn.request("count")
        t0 = time.perf_counter()
        for _ in range(n):
            await conn.send(MESSAGE)
        got = await conn.request("count")
        elapsed = time.perf_counter() - t0
        assert got - base == n, (got, base, n)
    return n / elapsed


async def bench_oneway_nowait(address: str, n: int, batch: int = 256) -> float:
    async with transport.open_connection(address, TOKEN, name="bench") as conn:
        base = await conn.request("count")
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            for _ in range(min(batch, n - i)):
                conn.send_nowait(MESSAGE)
            await trio.lowlevel.checkpoint()
        got = await conn.request("count")
        elapsed = time.perf_counter() - t0
        assert got - base == n, (got, base, n)
    return n / elapsed


async def bench_requests(
    address: str, n: int, concurrency: int, tls: transport.TlsConfig | None = None
) -> float:
    async with transport.open_connection(address, TOKEN, name="bench", tls=tls) as conn:
        per_task = n // concurrency

        async def worker() -> None:
            for _ in range(per_task):
                await conn.request(MESSAGE)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - t0
    return per_task * concurrency / elapsed


CODEC_MESSAGES: dict[str, Any] = {
    "small tuple": ("task_done", 123456, b"\x01" * 20, True),
    "status dict": {"op": "task_done", "id": 123456, "node": "node-3f2a", "worker": 7, "ok": True,
                    "returns": ["ab" * 10]},
    "task spec": {"fn": b"\x02" * 20, "args": [1, 2.5, b"x" * 100], "kwargs": {},
                  "resources": {"CPU": 1.0}, "returns": [b"\x03" * 20], "owner": "driver", "retries": 3},
}


async def bench_bulk(
    address: str, size: int, rounds: int, tls: transport.TlsConfig | None = None
) -> float:
    """Bytes per second of a large out-of-band buffer sent and echoed back (both ways)."""
    payload = pickle.PickleBuffer(bytearray(size))
    async with transport.open_connection(address, TOKEN, name="bench", tls=tls) as conn:
        await conn.request(payload)  # warm up
        t0 = time.perf_counter()
        for _ in range(rounds):
            back = await conn.request(payload)
            assert len(back) == size
        elapsed = time.perf_counter() - t0
    return 2 * size * rounds / elapsed


def bench_codecs(n: int) -> dict[str, dict[str, float | None]]:
    """Encode + decode time (microseconds) per message shape and codec (None: cannot)."""
    codecs: dict[str, tuple[Any, Any]] = {
        "pickle5": (lambda m: pickle.dumps(m, 5), pickle.loads),
        "marshal": (marshal.dumps, marshal.loads),
        "json": (lambda m: json.dumps(m).encode(), json.loads),
    }
    try:
        import msgpack

        codecs["msgpack*"] = (msgpack.packb, msgpack.unpackb)
    except ImportError:
        pass
    out: dict[str, dict[str, float | None]] = {}
    for shape, msg in CODEC_MESSAGES.items():
        out[shape] = {}
        for name, (enc, dec) in codecs.items():
            try:
                dec(enc(msg))
            except (TypeError, ValueError):
                out[shape][name] = None
                continue
            t0 = time.perf_counter()
            for _ in range(n):
                dec(enc(msg))
            out[shape][name] = (time.perf_counter() - t0) / n * 1e6
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--peer-bare", help=argparse.SUPPRESS)
    parser.add_argument("--peer-transport", help=argparse.SUPPRESS)
    parser.add_argument("--tls", action="store_true",
                        help="measure TLS: TCP on loopback, plaintext vs TLS 1.3")
    parser.add_argument("--peer-trio", help=argparse.SUPPRESS)
    parser.add_argument("--peer-tls-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_bare:
        return peer_bare(args.peer_bare)
    if args.peer_transport:
        return peer_transport(args.peer_transport, args.peer_tls_dir)
    if args.peer_trio:
        return peer_trio(args.peer_trio)

    n_rtt = 5_000 if args.quick else 20_000
    n_msgs = 100_000 if args.quick else 300_000
    with tempfile.TemporaryDirectory(prefix="tbench-") as tmp:
        if args.tls:
            run_tls(args, tmp, n_rtt, n_msgs)
        else:
            run_all(args, tmp, n_rtt, n_msgs)


# ----------------------------------------------------------------------------- TLS


async def bench_rtt_modes(
    modes: dict[str, tuple[str, transport.TlsConfig | None]], n: int, rounds: int = 10
) -> dict[str, tuple[float, float]]:
    """Round trips on each mode's connection, interleaved in rounds (round 0 warms up)."""
    samples: dict[str, list[int]] = {m: [] for m in modes}
    conns = {}
    for mode, (address, tls) in modes.items():
        conns[mode] = await transport.connect(address, TOKEN, name="bench", tls=tls)
    per_round = n // rounds
    for r in range(rounds + 1):
        for mode, conn in conns.items():
            sink: list[int] = [] if r == 0 else samples[mode]
            await rtt_transport(conn, per_round, sink)
    for conn in conns.values():
        await conn.aclose()
    return {m: summarize(v) for m, v in samples.items()}


async def bench_connect(address: str, tls: transport.TlsConfig | None, n: int) -> float:
    """Median milliseconds to connect: TCP, TLS handshake (if any), token handshake."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        conn = await transport.connect(address, TOKEN, name="bench", tls=tls)
        times.append(time.perf_counter_ns() - t0)
        await conn.aclose()
    return statistics.median(times) / 1e6


def run_tls(args: argparse.Namespace, tmp: str, n_rtt: int, n_msgs: int) -> None:
    tls_dir = f"{tmp}/tls"
    config = transport.create_cluster_certs(tls_dir)
    print(f"transport TLS benchmark: python {sys.version.split()[0]}, trio {trio.__version__}, "
          f"{os.cpu_count()} CPUs, TCP on loopback between two processes")
    plain_peer, plain = spawn_at("--peer-transport", "tcp:127.0.0.1:0")
    tls_peer, secure = spawn_at("--peer-transport", "tcp:127.0.0.1:0", "--peer-tls-dir", tls_dir)
    results: dict[str, dict[str, float]] = {"plain": {}, "tls": {}}
    try:
        rtt = trio.run(bench_rtt_modes, {"plain": (plain, None), "tls": (secure, config)}, n_rtt)
        bulk_rounds = 4 if args.quick else 10
        for mode, address, tls in (("plain", plain, None), ("tls", secure, config)):
            out = results[mode]
            out["rtt"], out["p99"] = rtt[mode]
            out["connect"] = trio.run(bench_connect, address, tls, 20 if args.quick else 50)
            out["oneway"] = trio.run(bench_oneway, address, n_msgs, tls)
            out["requests"] = trio.run(bench_requests, address, n_msgs // 3, 100, tls)
            out["bulk"] = trio.run(bench_bulk, address, 64 * 1024 * 1024, bulk_rounds, tls) / 1e9
    finally:
        for p in (plain_peer, tls_peer):
            p.kill()
            p.wait()
    rows = [
        ("round trip, median (us)", "rtt", "{:10.1f}"),
        ("round trip, p99 (us)", "p99", "{:10.1f}"),
        ("connect + handshakes, median (ms)", "connect", "{:10.2f}"),
        ("one-way, await send() (msg/s)", "oneway", "{:10,.0f}"),
        ("requests, 100 callers (msg/s)", "requests", "{:10,.0f}"),
        ("64 MiB out-of-band echo (GB/s)", "bulk", "{:10.2f}"),
    ]
    print(f"\n{'':38s}{'plain':>10s}{'TLS 1.3':>10s}{'TLS/plain':>11s}")
    for label, key, fmt in rows:
        p, t = results["plain"][key], results["tls"][key]
        print(f"  {label:36s}{fmt.format(p)}{fmt.format(t)}{t / p:10.2f}x")


def run_all(args: argparse.Namespace, tmp: str, n_rtt: int, n_msgs: int) -> None:
    """Every case, with the benchmark's sockets in ``tmp`` (removed afterwards)."""
    print(f"transport benchmark: python {sys.version.split()[0]}, trio {trio.__version__}, "
          f"{os.cpu_count()} CPUs, Unix socket between two processes")

    codec = bench_codecs(50_000)
    names = list(next(iter(codec.values())))
    print("\ncodecs: encode + decode, microseconds (* not a dependency; n/a: cannot encode it)")
    print("  " + " " * 14 + "".join(f"{n:>10s}" for n in names))
    for shape, row in codec.items():
        cells = "".join(f"{'n/a':>10s}" if v is None else f"{v:10.2f}" for v in row.values())
        print(f"  {shape:14s}{cells}")

    rtt = trio.run(bench_rtt, tmp, n_rtt)
    floor, trio_floor, ours = rtt["bare"], rtt["trio"], rtt["transport"]

    peer = spawn("--peer-transport", f"unix:{tmp}/t.sock")
    try:
        address = f"unix:{tmp}/t.sock"
        oneway = trio.run(bench_oneway, address, n_msgs)
        nowait = trio.run(bench_oneway_nowait, address, n_msgs)
        req1 = trio.run(bench_requests, address, n_msgs // 3, 100)
        bulk = trio.run(bench_bulk, address, 64 * 1024 * 1024, 4 if args.quick else 10)
    finally:
        peer.kill()
        peer.wait()

    print("\nround trip (us)                         median     p99")
    print(f"  bare blocking socket + pickle         {floor[0]:7.1f} {floor[1]:7.1f}   (the floor)")
    print(f"  bare Trio socket + pickle, both ends  {trio_floor[0]:7.1f} {trio_floor[1]:7.1f}   (the Trio floor)")
    print(f"  transport request/reply               {ours[0]:7.1f} {ours[1]:7.1f}")
    print(f"  ratio transport / bare floor          {ours[0] / floor[0]:7.2f}x          (target <= 2x)")
    print(f"  ratio transport / Trio floor          {ours[0] / trio_floor[0]:7.2f}x")
    print("\nthroughput (messages/s)")
    print(f"  one-way, await conn.send()            {oneway:10,.0f}   (target >= 100,000)")
    print(f"  one-way, conn.send_nowait()           {nowait:10,.0f}")
    print(f"  requests, 100 concurrent callers      {req1:10,.0f}")
    print(f"\nbulk: 64 MiB out-of-band buffer echoed  {bulk / 1e9:7.2f} GB/s")


if __name__ == "__main__":
    main()
