"""Ray API that programs rely on (issue 14, part two), each on a real embedded
cluster: generator tasks (``num_returns="streaming"`` / ``"dynamic"``), and GPUs.

Every test checks the Ray behaviour and then that the cluster still serves a
follow-up task or actor call.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import trio

import actorcore as ray
from actorcore import exceptions as exc


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """A real embedded cluster with 2 CPUs and 2 (pretend) GPUs for this module."""
    info = ray.init(num_cpus=2, num_gpus=2, log_to_driver=False)
    yield info
    ray.shutdown()


pytestmark = pytest.mark.usefixtures("cluster")


@ray.remote
def add_one(x):
    return x + 1


def _healthy():
    """A follow-up task works: the cluster kept serving."""
    assert ray.get(add_one.remote(41), timeout=30) == 42


# ------------------------------------------------------------- generator tasks


@ray.remote(num_returns="streaming")
def count_up(n, fail_at=None, pause=0.0):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"boom at {i}")
        yield i * 10
        if pause:
            time.sleep(pause)


@ray.remote(num_returns="streaming")
def wait_for_release(release):
    """Yields one item, then waits until ``release`` (an actor) says go."""
    yield "first"
    deadline = time.monotonic() + 30
    while not ray.get(release.is_set.remote()):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    yield "second"


@ray.remote
class Flag:
    def __init__(self):
        self.flag = False

    def set(self):
        self.flag = True

    def is_set(self):
        return self.flag


def test_streaming_task_yields_refs_in_order():
    gen = count_up.remote(5)
    assert isinstance(gen, ray.ObjectRefGenerator)
    refs = list(gen)
    assert ray.get(refs, timeout=30) == [0, 10, 20, 30, 40]
    assert gen.is_finished()
    with pytest.raises(StopIteration):
        next(gen)
    assert ray.get(gen.completed(), timeout=30) == 5  # the end: how many items
    _healthy()


def test_streaming_caller_sees_first_item_before_the_generator_ends():
    release = Flag.remote()
    gen = wait_for_release.remote(release)
    first = gen._next_sync(timeout_s=30)  # the generator is still blocked after it
    assert ray.get(first, timeout=30) == "first"
    with pytest.raises(exc.GetTimeoutError):
        gen._next_sync(timeout_s=0.2)
    ray.get(release.set.remote(), timeout=30)
    assert ray.get(next(gen), timeout=30) == "second"
    assert list(gen) == []
    _healthy()


def test_streaming_exception_is_the_error_of_the_next_ref():
    refs = list(count_up.remote(5, fail_at=2))
    assert len(refs) == 3  # two values, then the error, then the end
    assert ray.get(refs[:2], timeout=30) == [0, 10]
    with pytest.raises(ValueError, match="boom at 2"):
        ray.get(refs[2], timeout=30)
    _healthy()


def test_streaming_large_items_go_through_the_store():
    @ray.remote(num_returns="streaming")
    def big():
        for i in range(3):
            yield np.full(300_000, i, dtype=np.int64)  # 2.4 MB each

    sums = [int(ray.get(r, timeout=30).sum()) for r in big.remote()]
    assert sums == [0, 300_000, 600_000]
    _healthy()


def test_streaming_async_generator_function():
    @ray.remote(num_returns="streaming")
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield i

    assert ray.get(list(agen.remote(4)), timeout=30) == [0, 1, 2, 3]


def test_streaming_not_a_generator_fails_naming_the_function():
    @ray.remote(num_returns="streaming")
    def not_a_generator():
        return 3

    refs = list(not_a_generator.remote())
    assert len(refs) == 1
    with pytest.raises(TypeError, match="not_a_generator has num_returns='streaming'"):
        ray.get(refs[0], timeout=30)
    _healthy()


def test_streaming_async_iteration_from_asyncio_and_trio():
    async def collect():
        return [await ref async for ref in count_up.remote(3)]

    assert asyncio.run(collect()) == [0, 10, 20]
    assert trio.run(collect) == [0, 10, 20]

    async def by_anext():
        gen = count_up.remote(2)
        first = await gen.__anext__()
        second = await gen.__anext__()
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        return [await first, await second]

    assert asyncio.run(by_anext()) == [0, 10]


def test_streaming_from_a_thread_and_nested_in_a_task():
    out: list = []
    t = threading.Thread(target=lambda: out.extend(ray.get(list(count_up.remote(3)))))
    t.start()
    t.join(30)
    assert out == [0, 10, 20]

    @ray.remote
    def consume(n):
        return [ray.get(r) for r in count_up.remote(n)]

    assert ray.get(consume.remote(4), timeout=30) == [0, 10, 20, 30]


def test_cancel_a_streaming_task():
    gen = count_up.remote(1000, pause=0.05)
    assert ray.get(next(gen), timeout=30) == 0
    ray.cancel(gen)
    rest = list(gen)
    assert len(rest) < 999
    with pytest.raises(exc.TaskCancelledError):
        ray.get(rest[-1], timeout=30)
    assert ray.get(rest[:-1], timeout=30) == [10 * (i + 1) for i in range(len(rest) - 1)]
    _healthy()


def test_dynamic_task_returns_one_ref_of_the_refs():
    @ray.remote(num_returns="dynamic")
    def split(n):
        for i in range(n):
            yield [i] * 3

    ref = split.remote(4)
    assert isinstance(ref, ray.ObjectRef)
    dyn = ray.get(ref, timeout=30)
    assert isinstance(dyn, ray.DynamicObjectRefGenerator)
    assert len(dyn) == 4
    assert ray.get(list(dyn), timeout=30) == [[i] * 3 for i in range(4)]

    @ray.remote
    def total(refs_holder):
        return sum(sum(ray.get(r)) for r in refs_holder)

    assert ray.get(total.remote(dyn), timeout=30) == 3 * (0 + 1 + 2 + 3)


def test_dynamic_generator_error_is_the_refs_error():
    @ray.remote(num_returns="dynamic", max_retries=0)
    def broken():
        yield 1
        raise KeyError("dynamic boom")

    with pytest.raises(KeyError, match="dynamic boom"):
        ray.get(broken.remote(), timeout=30)
    _healthy()


def test_num_returns_refuses_other_strings():
    with pytest.raises(ValueError, match="num_returns='stream'"):
        count_up.options(num_returns="stream")


@ray.remote
class Streamer:
    @ray.method(num_returns="streaming")
    def numbers(self, n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise RuntimeError(f"actor boom at {i}")
            yield i

    def ping(self):
        return "pong"


@ray.remote
class AsyncStreamer:
    async def numbers(self, n):
        for i in range(n):
            await asyncio.sleep(0.01)
            yield i

    def sync_numbers(self, n):
        yield from range(n)

    async def ping(self):
        return "pong"


def test_streaming_actor_methods_sync_and_async():
    s = Streamer.remote()
    assert ray.get(list(s.numbers.remote(4)), timeout=30) == [0, 1, 2, 3]
    refs = list(s.numbers.remote(5, fail_at=1))
    assert len(refs) == 2
    with pytest.raises(RuntimeError, match="actor boom at 1"):
        ray.get(refs[1], timeout=30)
    assert ray.get(s.ping.remote(), timeout=30) == "pong"

    a = AsyncStreamer.remote()
    gen = a.numbers.options(num_returns="streaming").remote(3)
    assert ray.get(list(gen), timeout=30) == [0, 1, 2]
    gen = a.sync_numbers.options(num_returns="streaming").remote(3)
    assert ray.get(list(gen), timeout=30) == [0, 1, 2]

    async def collect():
        return [await r async for r in a.numbers.options(num_returns="streaming").remote(3)]

    assert asyncio.run(collect()) == [0, 1, 2]
    assert ray.get(a.ping.remote(), timeout=30) == "pong"


def test_dynamic_actor_method():
    s = Streamer.remote()
    dyn = ray.get(s.numbers.options(num_returns="dynamic").remote(3), timeout=30)
    assert ray.get(list(dyn), timeout=30) == [0, 1, 2]
    _healthy()


# ------------------------------------------------------------------------ GPUs


@ray.remote(num_gpus=1)
def one_gpu(hold=0.0):
    time.sleep(hold)
    return (ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
            ray.get_runtime_context().get_accelerator_ids())


@ray.remote
class Barrier:
    def __init__(self):
        self.arrived = 0

    def arrive(self):
        self.arrived += 1

    def count(self):
        return self.arrived


@ray.remote(num_gpus=0.5, num_cpus=0)  # (the cluster has 2 CPUs: four at once)
def half_gpu(barrier, parties):
    """Returns once ``parties`` tasks hold their half GPU together."""
    ray.get(barrier.arrive.remote())
    deadline = time.monotonic() + 30
    while ray.get(barrier.count.remote()) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("the others never came")
        time.sleep(0.01)
    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@ray.remote
def no_gpu():
    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@ray.remote(num_gpus=1)
class GpuActor:
    def ids(self):
        return (ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                ray.get_runtime_context().get_accelerator_ids())


def test_tasks_get_their_own_gpu_ids_and_cuda_visible_devices():
    ids, env, accel = ray.get(one_gpu.remote(), timeout=30)
    assert len(ids) == 1 and ids[0] in (0, 1)
    assert env == str(ids[0]) and accel == {"GPU": [str(ids[0])]}
    # Two at once hold different GPUs.
    both = ray.get([one_gpu.remote(0.5), one_gpu.remote(0.5)], timeout=30)
    assert sorted(r[0][0] for r in both) == [0, 1]
    assert sorted(r[1] for r in both) == ["0", "1"]
    # A task without GPUs sees none (the variable as the worker started).
    assert ray.get(no_gpu.remote(), timeout=30) == ([], None)

    @ray.remote(num_gpus=2)
    def two():
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")

    assert ray.get(two.remote(), timeout=30) == ([0, 1], "0,1")
    assert ray.get_gpu_ids() == []  # the driver holds none
    _healthy()


def test_fractional_gpus_share_an_id():
    barrier = Barrier.options(num_cpus=0).remote()
    results = ray.get([half_gpu.remote(barrier, 4) for _ in range(4)], timeout=60)
    ids = sorted(r[0][0] for r in results)
    assert ids == [0, 0, 1, 1]  # two halves on each GPU, each sees one id
    assert all(r[1] == str(r[0][0]) for r in results)
    with pytest.raises(ValueError, match="num_gpus=1.5"):
        one_gpu.options(num_gpus=1.5)


def test_actors_hold_their_gpu_ids_while_they_live():
    a = GpuActor.remote()
    ids, env, accel = ray.get(a.ids.remote(), timeout=30)
    assert len(ids) == 1 and env == str(ids[0]) and accel == {"GPU": [str(ids[0])]}
    # The other GPU is what a task gets while the actor holds its own.
    other = ray.get(one_gpu.remote(), timeout=30)[0]
    assert other == [1 - ids[0]]
    ray.kill(a)
    b = GpuActor.remote()
    assert len(ray.get(b.ids.remote(), timeout=30)[0]) == 1
    ray.kill(b)
    _healthy()


# ----------------------------------------------------------------- runtime_env


@pytest.fixture
def code_dirs(tmp_path):
    """A working_dir with a module and a data file, and py_modules (a package and a
    single-file module), each named so that nothing else on the path has them."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "api2_wd_helper.py").write_text('VALUE = "from working_dir"\n')
    (wd / "data.txt").write_text("shipped data\n")
    (wd / ".git").mkdir()
    (wd / ".git" / "big").write_bytes(b"x" * 1000)  # left out, as Ray does
    pkg = tmp_path / "mods" / "api2_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('NAME = "api2_pkg"\n')
    single = tmp_path / "mods" / "api2_single.py"
    single.write_text("X = 7\n")
    return {"wd": str(wd), "pkg": str(pkg), "single": str(single)}


@ray.remote
def where_am_i():
    try:
        import api2_wd_helper

        value = api2_wd_helper.VALUE
    except ImportError:
        value = None
    data = open("data.txt").read().strip() if os.path.exists("data.txt") else None
    return value, data, os.environ.get("API2_VAR"), os.getpid()


def test_working_dir_and_env_vars_per_task(code_dirs):
    env = {"working_dir": code_dirs["wd"], "env_vars": {"API2_VAR": "set"}}
    value, data, var, pid = ray.get(where_am_i.options(runtime_env=env).remote(), timeout=60)
    assert (value, data, var) == ("from working_dir", "shipped data", "set")
    # Tasks without it run in other processes: nothing leaks into them.
    plain = ray.get([where_am_i.remote() for _ in range(4)], timeout=60)
    assert all(r[:3] == (None, None, None) for r in plain)
    assert pid not in {r[3] for r in plain}
    # Again with the env: the same answers (cached package, a worker of that env).
    again = ray.get([where_am_i.options(runtime_env=env).remote() for _ in range(3)], timeout=60)
    assert all(r[:3] == ("from working_dir", "shipped data", "set") for r in again)
    _healthy()


def test_working_dir_is_unpacked_once_per_node_content_addressed(code_dirs, cluster):
    env = {"working_dir": code_dirs["wd"]}
    ray.get(where_am_i.options(runtime_env=env).remote(), timeout=60)
    root = os.path.join(cluster["session_dir"], "runtime_resources")
    unpacked = [d for d in os.listdir(root) if not d.startswith(".")]
    (here,) = [d for d in unpacked
               if os.path.exists(os.path.join(root, d, "api2_wd_helper.py"))]
    assert len(here) == 40  # the SHA-1 of the zip
    assert not os.path.exists(os.path.join(root, here, ".git"))


def test_py_modules_on_sys_path(code_dirs):
    @ray.remote
    def use_modules():
        import api2_pkg
        import api2_single

        return api2_pkg.NAME, api2_single.X

    env = {"py_modules": [code_dirs["pkg"], code_dirs["single"]]}
    assert ray.get(use_modules.options(runtime_env=env).remote(), timeout=60) == ("api2_pkg", 7)


def test_runtime_env_of_an_actor_and_in_remote(code_dirs):
    @ray.remote(runtime_env={"working_dir": code_dirs["wd"], "env_vars": {"API2_VAR": "actor"}})
    class InEnv:
        def report(self):
            import api2_wd_helper

            return api2_wd_helper.VALUE, os.environ.get("API2_VAR")

    a = InEnv.remote()
    assert ray.get(a.report.remote(), timeout=60) == ("from working_dir", "actor")
    ray.kill(a)
    _healthy()


@pytest.mark.parametrize("env, match", [
    ({"pip": ["requests"]}, r"runtime_env\['pip'\] is not supported"),
    ({"conda": "env"}, r"runtime_env\['conda'\] is not supported"),
    ({"uv": ["x"]}, r"runtime_env\['uv'\] is not supported"),
    ({"container": {"image": "x"}}, r"runtime_env\['container'\] is not supported"),
    ({"bogus": 1}, r"runtime_env\['bogus'\]: unknown key"),
    ({"working_dir": "s3://bucket/code.zip"}, "remote URIs are not supported"),
    ({"working_dir": "/nonexistent/dir"}, "not a directory"),
    ({"py_modules": "/tmp"}, "expected a list"),
    ({"env_vars": {"A": 1}}, r"env_vars'\]\['A'\]=1"),
])
def test_runtime_env_refusals_name_the_key(env, match):
    with pytest.raises((ValueError, TypeError), match=match):
        where_am_i.options(runtime_env=env)
    with pytest.raises((ValueError, TypeError), match=match):
        Flag.options(runtime_env=env)


def test_workers_of_other_envs_are_let_go_when_the_pool_is_full():
    # More distinct envs than the pool has workers (2 CPUs): each one still runs,
    # in a process of its own env.
    pids = {}
    for i in range(4):
        env = {"env_vars": {"API2_VAR": f"env{i}"}}
        _value, _data, var, pid = ray.get(where_am_i.options(runtime_env=env).remote(),
                                          timeout=60)
        assert var == f"env{i}"
        pids[i] = pid
    assert len(set(pids.values())) == 4
    assert ray.get(where_am_i.remote(), timeout=60)[2] is None
    _healthy()
