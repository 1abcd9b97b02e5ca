"""The public surface without a cluster: names, errors, options, refs, decorators."""

from __future__ import annotations

import pickle

import pytest

import actorcore as ray
from actorcore import exceptions as exc


def test_ray_names_exist():
    for name in ("init", "shutdown", "is_initialized", "remote", "get", "put", "wait",
                 "cancel", "get_runtime_context", "cluster_resources", "available_resources",
                 "nodes", "tree", "ObjectRef", "method", "kill", "get_actor"):
        assert hasattr(ray, name), name
        assert name in ray.__all__, name
    for alias, real in (("RayError", "ActorcoreError"), ("RayTaskError", "TaskError"),
                        ("RaySystemError", "ActorcoreSystemError"), ("RayActorError", "ActorError")):
        assert getattr(exc, alias) is getattr(exc, real)
    for name in ("WorkerCrashedError", "GetTimeoutError", "ObjectLostError",
                 "TaskCancelledError", "TaskUnschedulableError", "ObjectStoreFullError"):
        assert issubclass(getattr(exc, name), exc.RayError)


class NeedsArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)
        self.a, self.b = a, b


def test_task_error_is_also_the_cause_type_and_pickles():
    err = exc.TaskError("f", "Traceback: ...", NeedsArgs(1, 2), pid=7, node_id="ab" * 16)
    dual = err.as_instanceof_cause()
    assert isinstance(dual, exc.TaskError) and isinstance(dual, NeedsArgs)
    assert dual.cause.a == 1 and "NeedsArgs" in str(dual) and "pid=7" in str(dual)
    again = pickle.loads(pickle.dumps(dual))
    assert isinstance(again, NeedsArgs) and isinstance(again, exc.RayTaskError)
    assert again.traceback_str == "Traceback: ..."
    plain = exc.TaskError("f", "tb", None)
    assert plain.as_instanceof_cause() is plain
    assert isinstance(exc.GetTimeoutError("x"), TimeoutError)
    assert isinstance(exc.SerializationError("x"), TypeError)
    original = exc.TaskCancelledError(b"\x01" * 16, "task f was cancelled")
    cancelled = pickle.loads(pickle.dumps(original))
    assert str(cancelled) == "task f was cancelled" and cancelled.task_id == b"\x01" * 16


def test_remote_decorator_forms_and_option_errors():
    @ray.remote
    def f(x):
        return x

    @ray.remote(num_cpus=2, num_returns=2, max_retries=0)
    def g():
        return 1, 2

    assert isinstance(f, ray.RemoteFunction) and g._options["num_cpus"] == 2
    with pytest.raises(TypeError, match="directly"):
        f(1)
    with pytest.raises(TypeError, match="positional"):
        ray.remote(1, 2)
    with pytest.raises(ValueError, match="unknown option.*nmu_cpus"):
        ray.remote(nmu_cpus=1)(lambda: None)
    with pytest.raises(ValueError, match="num_gpus=-1"):
        f.options(num_gpus=-1)
    with pytest.raises(TypeError, match="resources"):
        f.options(resources=["GPU"])
    with pytest.raises(ValueError, match="use num_cpus"):
        f.options(resources={"CPU": 1})
    with pytest.raises(ValueError, match="num_returns"):
        f.options(num_returns=-1)
    with pytest.raises(ValueError, match="max_retries"):
        f.options(max_retries=-2)


def test_ray_options_we_do_not_implement_are_refused_not_ignored():
    @ray.remote
    def f():
        return 1

    @ray.remote
    class A:
        pass

    # The neutral values Ray programs commonly pass are accepted...
    f.options(scheduling_strategy="SPREAD", runtime_env={})
    A.options(max_pending_calls=-1, concurrency_groups=None)
    # ...anything that would change behaviour is refused, naming the option.
    with pytest.raises(ValueError, match=r"runtime_env\['pip'\] is not supported"):
        f.options(runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="scheduling_strategy='NODE_AFFINITY'"):
        f.options(scheduling_strategy="NODE_AFFINITY")
    # (concurrency_groups and max_pending_calls are implemented: tests/test_ray_api.py)
    A.options(concurrency_groups={"io": 2}, max_pending_calls=10)
    with pytest.raises(ValueError, match="max_pending_calls=-2"):
        A.options(max_pending_calls=-2)


def test_method_options_are_implemented_or_refused_by_name():
    @ray.method
    def bare(self):
        return 1

    @ray.method(num_returns=2)
    def two(self):
        return 1, 2

    assert bare.__actorcore_method_options__ == {}
    assert two.__actorcore_method_options__ == {"num_returns": 2}
    assert ray.method(concurrency_group="io")(bare).__actorcore_method_options__ == {
        "concurrency_group": "io"}
    for key, value in (("max_task_retries", 3),
                       ("retry_exceptions", True), ("bogus", 1)):
        with pytest.raises(ValueError, match=rf"@method\({key}={value!r}\) is not supported"):
            ray.method(**{key: value})
    with pytest.raises(ValueError, match="num_returns='stream'"):
        ray.method(num_returns="stream")  # "streaming" and "dynamic": test_ray_api2
    with pytest.raises(TypeError, match="keyword options"):
        ray.method(1, 2)


def test_object_ref_basics():
    ref = ray.ObjectRef(b"\x01" * 20)
    assert ref == ray.ObjectRef(b"\x01" * 20) and len({ref, ray.ObjectRef(b"\x01" * 20)}) == 1
    assert ref.hex() == "01" * 20 and ref.binary() == b"\x01" * 20
    assert pickle.loads(pickle.dumps(ref)) == ref
    with pytest.raises(ValueError, match="20 bytes"):
        ray.ObjectRef(b"short")


def test_calls_need_init_and_name_the_fix(monkeypatch):
    if ray.is_initialized():
        pytest.skip("a cluster is connected in this process")
    # Without the implicit init() of the first call (tests/test_ray_semantics.py).
    monkeypatch.setenv("ACTORCORE_ENABLE_AUTO_CONNECT", "0")
    with pytest.raises(exc.NotInitializedError, match=r"actorcore.init\(\)"):
        ray.put(1)
    with pytest.raises(exc.NotInitializedError):
        ray.get(ray.ObjectRef(b"\x02" * 20))
