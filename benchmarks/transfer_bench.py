"""Object transfer between two nodes: 100 MB, MB/s, beside a raw TCP loopback floor
and Ray, in the same run.

    .venv/bin/python benchmarks/transfer_bench.py [--no-ray] [--quick] [--mb 100]

- ``tcp floor``: two processes and a plain socket on loopback, the same bytes: the
  sender ``sendall``s a ready buffer, the receiver ``recv_into``s a preallocated one.
- ``actorcore``: a two-node ``actorcore.testing.Cluster``; the value is written into
  the head's store, the second node pulls it (`PullObject`: the node's
  ``transfers.pull``, chunked and pipelined into its own store), timed from the
  request to the sealed copy. A new object each round.
- ``ray``: ``ray.cluster_utils.Cluster`` with two nodes; the driver (on the head)
  ``put``s the array, a task pinned to the second node by a custom resource reads
  one element of it (Ray pulls the argument into that node's store). The time of an
  identical task with a tiny argument is subtracted. Ray's Python: ``$RAY_PYTHON``,
  else ``/tmp/rayenv/bin/python``.

Each figure is the median of the rounds, after one warm-up round.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from actorcore.protocol._wire import DropCopy, PullObject

MB = 1 << 20
HERE = Path(__file__).resolve().parent


def tcp_floor(nbytes: int, rounds: int) -> float:
    """MB/s of ``nbytes`` through a loopback socket between two processes."""
    sender = (
        "import socket,sys\n"
        "n=int(sys.argv[1]); port=int(sys.argv[2]); rounds=int(sys.argv[3])\n"
        "buf=bytes(n)\n"
        "for _ in range(rounds):\n"
        "    s=socket.create_connection(('127.0.0.1',port)); s.sendall(buf); s.close()\n"
    )
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", sender, str(nbytes), str(port), str(rounds + 1)])
    buf = bytearray(nbytes)
    view = memoryview(buf)
    times = []
    try:
        for _ in range(rounds + 1):
            conn, _ = lsock.accept()
            start = time.perf_counter()
            got = 0
            while got < nbytes:
                k = conn.recv_into(view[got:], min(nbytes - got, 4 * MB))
                if k == 0:
                    raise RuntimeError("sender closed early")
                got += k
            times.append(time.perf_counter() - start)
            conn.close()
    finally:
        proc.wait(30)
        lsock.close()
    return nbytes / MB / statistics.median(times[1:])


def actorcore_transfer(nbytes: int, rounds: int) -> float:
    sys.path.insert(0, str(HERE.parent))
    import numpy as np
    import trio

    import store
    import transport
    from actorcore.session._security import tls_config  # the cluster's (ACTORCORE_TLS_*), if any
    from actorcore.testing import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 4 * nbytes})
    try:
        b = cluster.add_node(num_cpus=1, object_store_memory=4 * nbytes)
        head = cluster.head_node
        assert head is not None
        token = head.process.token
        value = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)

        async def main() -> list[float]:
            times = []
            src_addr = f"unix:{head.session_dir / 'sockets' / 'store.sock'}"
            async with await store.StoreClient.connect(src_addr, token) as src, \
                    transport.open_connection(f"tcp:{b.address}", token, name="bench",
                                              tls=tls_config()) as conn:
                for i in range(rounds + 1):
                    oid = os.urandom(20) + i.to_bytes(8, "big")
                    await src.put(oid, value)
                    start = time.perf_counter()
                    await conn.request(PullObject(oid, [head.node_id]), timeout=120)
                    times.append(time.perf_counter() - start)
                    await conn.request(DropCopy(oid), timeout=30)
                    await src.remove_ref(oid)
            return times

        times = trio.run(main)
    finally:
        cluster.shutdown()
    return nbytes / MB / statistics.median(times[1:])


RAY_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np
import ray
from ray.cluster_utils import Cluster

nbytes, rounds = int(sys.argv[1]), int(sys.argv[2])
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "object_store_memory": 4 * nbytes})
cluster.add_node(num_cpus=1, resources={"n2": 1}, object_store_memory=4 * nbytes)
ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)

@ray.remote(resources={"n2": 1}, num_cpus=0)
def first(a):
    return int(a[0])

value = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
small = np.zeros(8, dtype=np.uint8)
ray.get(first.remote(small))
times, base = [], []
for _ in range(rounds + 1):
    t = time.perf_counter(); ray.get(first.remote(small)); base.append(time.perf_counter() - t)
    ref = ray.put(value)
    t = time.perf_counter(); ray.get(first.remote(ref)); times.append(time.perf_counter() - t)
    del ref
took = statistics.median(times[1:]) - statistics.median(base[1:])
print("RESULT " + json.dumps({"mb_s": nbytes / (1 << 20) / took}))
ray.shutdown()
cluster.shutdown()
"""


def ray_transfer(nbytes: int, rounds: int) -> float | None:
    python = os.environ.get("RAY_PYTHON", "/tmp/rayenv/bin/python")
    if not os.path.exists(python):
        print(f"ray: no interpreter at {python}; skipped")
        return None
    out = subprocess.run([python, "-c", RAY_SCRIPT, str(nbytes), str(rounds)],
                         capture_output=True, text=True, timeout=600)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(f"ray failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return None
    return float(json.loads(line[len("RESULT "):])["mb_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    nbytes = args.mb * MB
    floor = tcp_floor(nbytes, rounds)
    ours = actorcore_transfer(nbytes, rounds)
    ray = None if args.no_ray else ray_transfer(nbytes, rounds)
    print(f"{args.mb} MB between two nodes, median of {rounds} rounds (MB/s):")
    print(f"  tcp floor   {floor:9.0f}")
    print(f"  actorcore   {ours:9.0f}   {ours / floor:6.1%} of the floor")
    if ray is not None:
        print(f"  ray         {ray:9.0f}   actorcore / ray = {ours / ray:.2f}x")
    print("RESULT " + json.dumps({"floor_mb_s": floor, "actorcore_mb_s": ours, "ray_mb_s": ray}))


if __name__ == "__main__":
    main()
