"""A Ray core program, unchanged but for its import: estimate pi by Monte Carlo.

    .venv/bin/python examples/ray_compat.py
"""

import random
import time

import actorcore as ray  # the only line that differs from the Ray version

ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)


@ray.remote
def sample(num_samples, seed):
    rng = random.Random(seed)
    inside = 0
    for _ in range(num_samples):
        x, y = rng.random(), rng.random()
        inside += x * x + y * y <= 1.0
    return inside


@ray.remote
def total(*counts):
    return sum(counts)


start = time.time()
batches = [sample.remote(20_000, seed) for seed in range(16)]

# Process results as they come in, the Ray way.
done = 0
pending = list(batches)
while pending:
    ready, pending = ray.wait(pending, num_returns=min(4, len(pending)), timeout=30)
    done += len(ready)
    print(f"{done}/{len(batches)} batches finished")

inside = ray.get(total.remote(*batches))  # refs as arguments: resolved before it runs
pi = 4 * inside / (16 * 20_000)
print(f"pi is about {pi:.4f} ({time.time() - start:.2f} s, "
      f"cluster resources {ray.cluster_resources()})")
assert done == len(batches) and abs(pi - 3.1416) < 0.05
assert inside == sum(ray.get(batches))

# A task no node can run yet waits for one that can (as in Ray), with a warning
# in the log and in `actorcore status`; it is not an error.
gpu_task = sample.options(num_gpus=1).remote(10, 0)
try:
    ray.get(gpu_task, timeout=1)
except ray.exceptions.GetTimeoutError:
    print("a task asking for a GPU this machine lacks waits for a node that has one")
else:
    raise AssertionError("a task asking for a missing GPU ran")
ray.cancel(gpu_task)

ray.shutdown()
