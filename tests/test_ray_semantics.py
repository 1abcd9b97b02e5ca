"""Semantics that Ray programs rely on (issue 14), each on a real embedded cluster.

Every test checks the Ray behaviour and then that the cluster still serves a
follow-up task or actor call.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import actorcore as ray
from actorcore import exceptions as exc

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
def add_one(x):
    return x + 1


@ray.remote
def fail(message="boom"):
    raise ValueError(message)


@ray.remote
def sleep_then(value, seconds):
    time.sleep(seconds)
    return value


def _run_driver(code, *args, flags=(), env=None, timeout=120, stderr=False):
    """Run ``code`` as a driver program of its own (it must exit 0); return its
    stdout, or with ``stderr`` both."""
    out = subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code), *args],
                         capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, **(env or {})))
    assert out.returncode == 0, f"driver failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr if stderr else out.stdout


def _joining(cluster):
    """The environment of a driver joining the test cluster (by its token: other
    tests start sessions of their own, so it need not be the latest one)."""
    token = open(os.path.join(cluster["session_dir"], "token")).read().strip()
    return {"ACTORCORE_TOKEN": token}


def _healthy():
    """A follow-up task works: the cluster kept serving."""
    assert ray.get(add_one.remote(41), timeout=30) == 42


# --------------------------------------------------------------- 1. tasks from actors


@ray.remote
class Submitter:
    """Submits tasks and actor calls from its methods: it owns what they return."""

    def task(self, x):
        return ray.get(add_one.remote(x))

    def task_from_thread(self, x):
        out = []
        t = threading.Thread(target=lambda: out.append(ray.get(add_one.remote(x))))
        t.start()
        t.join(30)
        return out[0]

    def actor(self):
        self.inner = Submitter.remote()
        return ray.get(self.inner.task.remote(1))

    def keep(self, x):
        self.ref = add_one.remote(x)  # a ref this actor owns, read later
        return None

    def read_kept(self):
        return ray.get(self.ref)


@ray.remote
class AsyncSubmitter:
    async def task(self, x):
        return await add_one.remote(x)

    async def actor(self):
        self.inner = Submitter.remote()
        return await self.inner.task.remote(2)


def test_tasks_and_actor_calls_from_actor_methods():
    sync = Submitter.remote()
    threaded = Submitter.options(max_concurrency=3).remote()
    asynchronous = AsyncSubmitter.remote()
    for actor in (sync, threaded):
        assert ray.get(actor.task.remote(1), timeout=30) == 2
        assert ray.get(actor.task_from_thread.remote(2), timeout=30) == 3
        assert ray.get(actor.actor.remote(), timeout=30) == 2
        ray.get(actor.keep.remote(10), timeout=30)
        assert ray.get(actor.read_kept.remote(), timeout=30) == 11
    assert ray.get(asynchronous.task.remote(5), timeout=30) == 6
    assert ray.get(asynchronous.actor.remote(), timeout=30) == 3
    _healthy()


# ------------------------------------------------------------------------ 2. wait([])


def test_wait_on_an_empty_list():
    assert ray.wait([]) == ([], [])
    assert ray.wait([], num_returns=3, timeout=0) == ([], [])
    with pytest.raises(ValueError, match="timeout"):
        ray.wait([], timeout=-1)
    _healthy()


# ------------------------------------------------------- 3. get raises at the first error


def test_get_raises_as_soon_as_one_ref_holds_an_error():
    slow = sleep_then.remote("late", 20)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="early failure"):
        ray.get([slow, fail.remote("early failure")], timeout=60)
    assert time.monotonic() - t0 < 10, "get waited for the slow ref before raising"
    ray.cancel(slow, force=True)
    # The first error in list order when several are ready; a timeout still times out.
    a, b = fail.remote("first"), fail.remote("second")
    ray.wait([a, b], num_returns=2, timeout=30)
    with pytest.raises(ValueError, match="first"):
        ray.get([sleep_then.remote(0, 0), a, b], timeout=30)
    with pytest.raises(exc.GetTimeoutError):
        ray.get([sleep_then.remote(0, 1)], timeout=0.2)
    _healthy()


# ------------------------------------------------- 4. TypeError at .remote() for a bad call


def _sig_cases():
    """(source of a function, args, kwargs) over defaults, *args, **kwargs,
    keyword-only and positional-only parameters."""
    rnd = random.Random(14)
    cases = []
    for _ in range(300):
        parts, names, defaulted = [], iter("abcdefgh"), False
        n_posonly, n_pos = rnd.randint(0, 2), rnd.randint(0, 3)
        for i in range(n_posonly + n_pos):
            name = next(names)
            defaulted = defaulted or rnd.random() < 0.3
            parts.append(name + "=0" if defaulted else name)
            if i == n_posonly - 1:
                parts.append("/")
        kwonly = [next(names) + ("=0" if rnd.random() < 0.5 else "")
                  for _ in range(rnd.randint(0, 2))]
        if rnd.random() < 0.4:
            parts.append("*args")
        elif kwonly:
            parts.append("*")
        parts += kwonly
        if rnd.random() < 0.4:
            parts.append("**kw")
        src = f"def f({', '.join(parts)}):\n    return 0\n"
        for _ in range(10):
            args = tuple(range(rnd.randint(0, 5)))
            kwargs = {k: 1 for k in rnd.sample("abcdefghz", rnd.randint(0, 3))}
            cases.append((src, args, kwargs))
    return cases


def test_call_checks_agree_with_python_on_every_signature_shape():
    from actorcore.api._signatures import check_call_args, method_meta

    for src, args, kwargs in _sig_cases():
        namespace: dict = {}
        exec(src, namespace)
        fn = namespace["f"]
        try:
            fn(*args, **kwargs)
            expected = None
        except TypeError as e:
            expected = e
        try:
            check_call_args("f", method_meta(fn, {}, bound=False), args, kwargs)
            got = None
        except TypeError as e:
            got = e
        assert (expected is None) == (got is None), (src, args, kwargs, expected, got)


@ray.remote
def signature(a, b=2, *rest, c, d=4, **extra):
    return (a, b, rest, c, d, extra)


@ray.remote
def positional_only(a, /, b):
    return (a, b)


@ray.remote
class Signed:
    def __init__(self, x, *, y=0):
        self.x = x + y

    def method(self, a, b=1):
        return self.x + a + b


def test_bad_arguments_raise_type_error_at_the_call_site():
    assert ray.get(signature.remote(1, c=3), timeout=30) == (1, 2, (), 3, 4, {})
    assert ray.get(signature.remote(1, 2, 3, c=3, z=9), timeout=30) == (1, 2, (3,), 3, 4, {"z": 9})
    for call, message in [
        (lambda: signature.remote(c=1), "missing 1 required argument: 'a'"),
        (lambda: signature.remote(1), "missing 1 required argument: 'c'"),
        (lambda: signature.remote(1, a=2, c=3), "multiple values for argument 'a'"),
        (lambda: positional_only.remote(a=1, b=2), "positional-only"),
        (lambda: positional_only.remote(1, 2, 3), "takes 2 positional arguments but 3"),
        (lambda: add_one.options(name="renamed").remote(1, y=2), "unexpected keyword argument 'y'"),
        (lambda: Signed.remote(), "missing 1 required argument: 'x'"),
        (lambda: Signed.remote(1, 2), "takes 1 positional argument but 2"),
        (lambda: Signed.remote(1, z=2), "unexpected keyword argument 'z'"),
    ]:
        with pytest.raises(TypeError, match=message):
            call()
    actor = Signed.remote(1, y=1)
    with pytest.raises(TypeError, match=r"Signed.method\(\) takes from 1 to 2 positional"):
        actor.method.remote(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        actor.method.remote(1, c=3)
    assert ray.get(actor.method.remote(1, b=2), timeout=30) == 5
    _healthy()


def test_builtins_made_remote_are_checked_too():
    remote_len = ray.remote(len)
    assert ray.get(remote_len.remote([1, 2, 3]), timeout=30) == 3
    with pytest.raises(TypeError, match="len"):
        remote_len.remote()


# ------------------------------------- 7. methods, class attributes and static methods


@ray.remote
class Shadowed:
    LIMIT = 7

    def __init__(self):
        self.value = "an attribute named like a method"  # shadows nothing remotely
        self.get_value = 5

    def get_value(self):
        return "method"

    @staticmethod
    def double(x):
        return 2 * x

    @classmethod
    def limit(cls, extra=0):
        return cls.LIMIT + extra


def test_methods_class_attributes_and_static_methods_as_in_ray():
    actor = Shadowed.remote()
    assert ray.get(actor.get_value.remote(), timeout=30) == "method"
    assert Shadowed.LIMIT == 7
    assert Shadowed.double(4) == 8
    assert Shadowed.limit(1) == 8
    assert ray.get(actor.double.remote(5), timeout=30) == 10
    assert ray.get(actor.limit.remote(extra=2), timeout=30) == 9
    with pytest.raises(TypeError, match="double"):
        actor.double.remote(1, 2)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        Shadowed.missing  # noqa: B018
    assert ray.get(actor.get_value.remote(), timeout=30) == "method"
    _healthy()


# ------------------------------------------------------ 8. get_actor in the job's namespace


def test_tasks_and_actors_use_their_jobs_namespace(cluster):
    out = _run_driver("""
        import sys
        import actorcore as ray

        ray.init(address=sys.argv[1], namespace="ns14")

        @ray.remote
        class Named:
            def ping(self):
                return "pong"

        @ray.remote
        class Looker:
            def look(self, name):
                return ray.get(ray.get_actor(name).ping.remote())

            def namespace(self):
                return ray.get_runtime_context().namespace

        @ray.remote
        def look(name):
            return ray.get(ray.get_actor(name).ping.remote())

        @ray.remote
        def create(name):
            Named.options(name=name, lifetime="detached").remote()
            return ray.get_runtime_context().namespace

        named = Named.options(name="svc14").remote()
        looker = Looker.remote()
        print(ray.get(looker.look.remote("svc14")), ray.get(look.remote("svc14")),
              ray.get(looker.namespace.remote()), ray.get(create.remote("made14")))
        made = ray.get_actor("made14")  # created in a task: in the job's namespace
        print(ray.get(made.ping.remote()), ray.get_actor("made14", namespace="ns14") == made)
        ray.kill(made)
    """, cluster["address"], env=_joining(cluster))
    assert out.split() == ["pong", "pong", "ns14", "ns14", "pong", "True"]
    _healthy()


# ------------------------------------------------------------ 9. memory= is a resource


@ray.remote
def memory_left():
    return ray.available_resources().get("memory", 0.0)


@ray.remote
class MemoryHolder:
    def left(self):
        return ray.available_resources().get("memory", 0.0)


def test_memory_is_a_resource_accounted_against_the_node():
    total = ray.cluster_resources()["memory"]
    assert total > 0
    need = int(total * 0.6)
    # Held while the task runs, and given back afterwards.
    assert ray.get(memory_left.options(memory=need).remote(), timeout=30) == pytest.approx(
        total - need)
    assert ray.get(memory_left.options(memory=100 << 20).remote(), timeout=30) > 0
    # An actor holds it for its lifetime: a second one of the same size waits.
    holder = MemoryHolder.options(memory=need).remote()
    assert ray.get(holder.left.remote(), timeout=30) == pytest.approx(total - need)
    second = MemoryHolder.options(memory=need).remote()
    ready, _ = ray.wait([second.left.remote()], timeout=1)
    assert not ready, "two actors were given 120% of the node's memory"
    ray.kill(holder)
    assert ray.get(second.left.remote(), timeout=30) == pytest.approx(total - need)
    ray.kill(second)
    too_big = memory_left.options(memory=int(total * 2)).remote()
    with pytest.raises(exc.GetTimeoutError):  # waits for a node with that memory
        ray.get(too_big, timeout=0.3)
    ray.cancel(too_big)
    _healthy()


# ------------------------------------------- 11. workers inherit the interpreter's flags


def test_workers_inherit_the_drivers_site_flags():
    # -S leaves the site directories out: the driver (and so its workers) find the
    # packages through PYTHONPATH only, as in a hermetic build.
    import actorcore

    paths = [p for p in sys.path if p.endswith("site-packages")]
    paths.append(os.path.dirname(os.path.dirname(actorcore.__file__)))
    out = _run_driver("""
        import sys
        import actorcore as ray

        ray.init(num_cpus=1, log_to_driver=False)

        @ray.remote
        def flags():
            return (sys.flags.no_site, sys.flags.no_user_site)

        @ray.remote
        class Flags:
            def flags(self):
                return (sys.flags.no_site, sys.flags.no_user_site)

        print(ray.get(flags.remote()), ray.get(Flags.remote().flags.remote()))
    """, flags=("-S", "-s"), env={"PYTHONPATH": os.pathsep.join(paths)})
    assert out.strip() == "(1, 1) (1, 1)"
    _healthy()


# ------------------------------------------------- 12. the first API call calls init()


def test_the_first_api_call_calls_init():
    out = _run_driver("""
        import actorcore as ray

        @ray.remote
        def square(x):
            return x * x

        assert not ray.is_initialized()
        ref = square.remote(4)          # init() happens here
        print(ray.is_initialized(), ray.get(ref), ray.get(ray.put("v")))
        print(ray.get_runtime_context().get_node_id() == ray.nodes()[0]["NodeID"])
    """, env={"ACTORCORE_ADDRESS": ""})
    assert out.split() == ["True", "16", "v", "True"]
    out = _run_driver("""
        import actorcore as ray
        ray.get(ray.put(1))
        print(ray.is_initialized())
    """, env={"ACTORCORE_ADDRESS": ""})
    assert out.strip() == "True"
    out = _run_driver("""
        import actorcore as ray
        try:
            ray.put(1)
        except ray.exceptions.NotInitializedError as e:
            print("refused:", e)
    """, env={"ACTORCORE_ENABLE_AUTO_CONNECT": "0"})
    assert "refused" in out and "ACTORCORE_ENABLE_AUTO_CONNECT=0" in out
    _healthy()


# ------------------------------------- 13. "Unhandled error" for an error nobody read


def test_an_error_nobody_read_is_reported_when_its_ref_is_collected(cluster):
    err = _run_driver("""
        import logging, sys, threading
        import actorcore as ray
        from actorcore.core_worker import _worker_state

        ray.init(address=sys.argv[1])
        reported, two = [], threading.Event()

        class Seen(logging.Handler):
            def emit(self, record):
                reported.append(record.getMessage())
                if len(reported) >= 2:
                    two.set()

        @ray.remote
        def fail(message):
            raise ValueError(message)

        @ray.remote
        def echo(x):
            return x

        # Not reported: read by get, seen ready by wait, passed to another task.
        read = fail.remote("read-by-get")
        try:
            ray.get(read)
        except ValueError:
            pass
        waited = fail.remote("seen-by-wait")
        ray.wait([waited], timeout=30)
        passed = fail.remote("passed-on")
        try:
            ray.get(echo.remote(passed))
        except ValueError:
            pass
        del read, waited, passed
        logging.getLogger("actorcore.unhandled").addHandler(Seen())

        # Reported: a ref collected before its task failed, and one collected after.
        fail.remote("collected-before-it-failed")
        kept, failed = fail.remote("collected-after-it-failed"), threading.Event()
        _worker_state.core.on_ready_callback([kept.binary()], failed.set)
        assert failed.wait(30)
        del kept
        assert two.wait(30), reported
        print(sorted(m.split(": ")[-1].split()[0] for m in reported))
    """, cluster["address"], env=_joining(cluster), stderr=True)
    assert "Unhandled error (suppress with 'ACTORCORE_IGNORE_UNHANDLED_ERRORS=1')" in err
    assert "collected-before-it-failed" in err and "collected-after-it-failed" in err
    for quiet in ("read-by-get", "seen-by-wait", "passed-on"):
        assert quiet not in err
    _healthy()


def test_a_cancelled_task_s_error_is_not_unhandled_and_a_worker_reports_once(cluster):
    """As Ray: only a task's failure (its exception, its worker's death) is an
    "Unhandled error"; a cancel was asked for (a recursive cancel would log each
    child its parent dropped). A worker's report is one line, not one per handler."""
    err = _run_driver("""
        import sys, threading, time
        import actorcore as ray
        from actorcore.core_worker import _worker_state

        ray.init(address=sys.argv[1])

        @ray.remote
        def sleeper():
            time.sleep(60)

        @ray.remote
        def fail(message):
            raise ValueError(message)

        @ray.remote
        def drops_a_failure(message):
            ref, failed = fail.remote(message), threading.Event()
            _worker_state.core.on_ready_callback([ref.binary()], failed.set)
            assert failed.wait(60)
            del ref
            return 1

        cancelled = [sleeper.remote() for _ in range(2)]
        for ref in cancelled:
            ray.cancel(ref)
        done = threading.Event()
        _worker_state.core.on_ready_callback([r.binary() for r in cancelled], done.set)
        assert done.wait(60)
        del cancelled, ref  # collected with their cancel's error in: not reported
        assert ray.get(drops_a_failure.remote("dropped-in-a-worker"), timeout=60) == 1
        kept, failed = fail.remote("dropped-by-the-driver"), threading.Event()
        _worker_state.core.on_ready_callback([kept.binary()], failed.set)
        assert failed.wait(60)
        del kept
        time.sleep(0.5)  # the worker's line travels to this console (log_to_driver)
    """, cluster["address"], env=_joining(cluster), stderr=True)
    assert "dropped-by-the-driver" in err and "dropped-in-a-worker" in err
    assert err.count("Unhandled error") == 2, err  # one line each, the worker's too
    assert "cancelled" not in err, err
    _healthy()


# ------------------------------------- 6. calls are ordered per caller, and only per caller


@ray.remote
class Recorder:
    def __init__(self):
        self.seen = []

    def record(self, x):
        self.seen.append(x)
        return x

    def log(self):
        return self.seen


@ray.remote(num_cpus=0)
class Caller:
    """Another caller (its own process), ready before the test starts."""

    def call_and_time(self, actor, x):
        t0 = time.monotonic()
        ray.get(actor.record.remote(x))
        return time.monotonic() - t0


def _direct_route_up(actor, timeout=30):
    """Call ``actor`` until this driver's calls to it go straight to its process."""
    from actorcore.core_worker import _worker_state

    deadline = time.monotonic() + timeout
    while True:
        ray.get(actor.record.remote("warm-up"), timeout=30)
        route = _worker_state.core.actor_routes.get(actor._actor_id)
        if route is not None and route.mode == "direct":
            return
        assert time.monotonic() < deadline, "the direct route to the actor never came up"


@pytest.mark.parametrize("path", ["node", "direct"])
def test_a_call_waiting_for_its_argument_holds_back_only_its_own_callers_calls(path):
    actor = Recorder.remote()
    caller = Caller.remote()
    assert ray.get(caller.call_and_time.remote(actor, "warm-up"), timeout=30) >= 0
    if path == "direct":
        _direct_route_up(actor)
    else:
        ray.get(actor.record.remote("warm-up"), timeout=30)
    gate = sleep_then.remote("slow-argument", 4)
    held = actor.record.remote(gate)         # waits for its argument...
    behind = actor.record.remote("behind")   # ...and so does this caller's next call
    other = ray.get(caller.call_and_time.remote(actor, "other caller"), timeout=30)
    assert other < 2.5, f"another caller's call waited {other:.1f} s behind an argument"
    assert ray.get([held, behind], timeout=30) == ["slow-argument", "behind"]
    log = [x for x in ray.get(actor.log.remote(), timeout=30) if x != "warm-up"]
    assert log == ["other caller", "slow-argument", "behind"]
    _healthy()


# ------------------------------------------- 10. tasks run on the worker's main thread


@ray.remote
def on_main_thread():
    import signal

    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # main thread only
    signal.signal(signal.SIGUSR1, previous)
    return threading.current_thread() is threading.main_thread()


@ray.remote
def parent_of_main_thread_tasks(n):
    # Blocked in get: its children run meanwhile (on another worker's main thread,
    # or on a helper thread of this one: its main thread is busy), and the parent
    # is still on the main thread afterwards.
    children = ray.get([add_one.remote(i) for i in range(n)])
    return threading.current_thread() is threading.main_thread(), children


@ray.remote
class ThreadOf:
    def __init__(self):
        self.constructed_on_main = threading.current_thread() is threading.main_thread()

    def where(self):
        return self.constructed_on_main, threading.current_thread() is threading.main_thread()

    def signals(self):
        return on_main_thread._function()


@ray.remote
class AsyncThreadOf:
    async def where(self):
        return threading.current_thread() is threading.main_thread()


def test_tasks_run_on_the_worker_processes_main_thread():
    assert ray.get([on_main_thread.remote() for _ in range(6)], timeout=60) == [True] * 6
    assert ray.get(parent_of_main_thread_tasks.remote(4), timeout=60) == (True, [1, 2, 3, 4])
    # Actors as in Ray: a plain one on its process's main thread, a threaded or an
    # async one (its event loop) on threads of their own.
    plain = ThreadOf.remote()
    assert ray.get([plain.where.remote(), plain.signals.remote()], timeout=30) == [
        (True, True), True]
    threaded = ThreadOf.options(max_concurrency=2).remote()
    assert ray.get(threaded.where.remote(), timeout=30) == (False, False)
    assert ray.get(AsyncThreadOf.remote().where.remote(), timeout=30) is False
    _healthy()


def test_workers_exit_with_their_node_even_when_its_pipes_are_gone():
    # The core loop, not the main thread, ends a worker: when its node is killed,
    # its report to stderr (a pipe to the dead node) fails, and it must still exit.
    out = _run_driver("""
        import os, signal, time
        import actorcore as ray

        ray.init(num_cpus=1, log_to_driver=False)

        @ray.remote
        def pid():
            return os.getpid()

        @ray.remote
        class Plain:
            def pid(self):
                return os.getpid()

        pids = [ray.get(pid.remote()), ray.get(Plain.remote().pid.remote())]
        os.kill(ray.nodes()[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 20
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in pids if os.path.exists(f"/proc/{p}")
                     and open(f"/proc/{p}/stat").read().split()[2] != "Z"]
        print("left running:", alive)
        for p in alive:
            os.kill(p, signal.SIGKILL)
        os._exit(0)
    """, env={"ACTORCORE_ADDRESS": ""})
    assert "left running: []" in out
