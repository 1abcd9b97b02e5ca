"""``init()``'s Ray options: each is honoured (checked on a real cluster) or refused
with an error naming it, before anything starts; the job's namespace is the truth in
the driver, its tasks and its actors."""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import time
from pathlib import Path

import pytest

import actorcore as ray
from actorcore import exceptions as exc

from .cluster_support import HANG_GUARD


@pytest.fixture
def short_tmp():
    """A directory with a short path (a session root must leave room for socket names;
    pytest's ``tmp_path`` is often too long for that)."""
    with tempfile.TemporaryDirectory(prefix="acs-init-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def no_cluster():
    if ray.is_initialized():
        pytest.skip("a cluster is connected in this process")
    yield
    ray.shutdown()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"local_mode": True}, NotImplementedError, r"local_mode=True"),
        ({"job_config": object()}, NotImplementedError, r"job_config="),
        ({"_system_config": {"max_io_workers": 2}}, ValueError, r"_system_config.*max_io_workers"),
        ({"include_dashboard": True}, ValueError, r"include_dashboard=True.*no dashboard"),
        ({"dashboard_port": 8265}, ValueError, r"dashboard_port=8265"),
        ({"dashboard_host": "0.0.0.0"}, ValueError, r"dashboard_host='0.0.0.0'"),
        ({"runtime_env": {"pip": ["requests"], "env_vars": {}}}, ValueError,
         r"runtime_env\['pip'\] is not supported"),
        ({"runtime_env": {"env_vars": {"A": 1}}}, TypeError, r"env_vars'\]\['A'\]=1"),
        ({"runtime_env": {"env_vars": {"A=B": "1"}}}, ValueError, r"'A=B' is not a valid"),
        ({"runtime_env": ["env_vars"]}, TypeError, r"runtime_env=\['env_vars'\]"),
        ({"logging_level": "LOUD"}, ValueError, r"logging_level='LOUD'"),
        ({"namespace": ""}, ValueError, r"namespace=''"),
        ({"_temp_dir": "/tmp/" + "x" * 60}, ValueError,
         r"init\(_temp_dir='/tmp/x+'\) is 65 bytes long.*at most \d+ bytes"),
        ({"object_spilling_directory": "/proc/no-such/spill"}, ValueError,
         r"object_spilling_directory='/proc/no-such/spill'\): cannot create it"),
        ({"bogus_option": 1}, TypeError, r"unexpected keyword argument\(s\): bogus_option"),
    ],
)
def test_unsupported_or_bad_options_are_refused_by_name(no_cluster, kwargs, error, match):
    with pytest.raises(error, match=match):
        ray.init(**kwargs)
    assert not ray.is_initialized()


def test_new_cluster_options_are_refused_when_joining(no_cluster, short_tmp):
    for kwargs in ({"_temp_dir": str(short_tmp)},
                   {"object_spilling_directory": str(short_tmp)},
                   {"runtime_env": {"env_vars": {"A": "1"}}}):
        (name,) = kwargs
        with pytest.raises(ValueError, match=rf"init\({name}\) applies to a new cluster"):
            ray.init(address="unix:/nonexistent/node.sock", **kwargs)
    assert not ray.is_initialized()


def test_neutral_ray_options_are_accepted(no_cluster):
    info = ray.init(num_cpus=1, include_dashboard=False, dashboard_port=8265, local_mode=False,
                    runtime_env={}, _system_config={}, job_config=None, configure_logging=False,
                    log_to_driver=False)
    assert ray.get_runtime_context().namespace == "default"
    assert info["session_dir"]


@ray.remote
def task_view():
    ctx = ray.get_runtime_context()
    return ctx.namespace, os.environ.get("ACTORCORE_TEST_VAR"), ctx.get_job_id()


@ray.remote
def make_named(name):
    # A named actor created by a task goes to the job's namespace, as the driver's do.
    Probe.options(name=name).remote()
    return ray.get(ray.get_actor(name).view.remote())


@ray.remote(max_restarts=1, max_task_retries=1)
class Probe:
    def view(self):
        ctx = ray.get_runtime_context()
        return (ctx.namespace, os.environ.get("ACTORCORE_TEST_VAR"), ctx.get_job_id(),
                ctx.was_current_actor_reconstructed)

    def pid(self):
        return os.getpid()


def test_options_that_map_onto_the_runtime_are_honoured(no_cluster, short_tmp):
    root = short_tmp / "root"
    spill = short_tmp / "spill"
    info = ray.init(
        num_cpus=1,
        log_to_driver=False,
        namespace="ns-init",
        runtime_env={"env_vars": {"ACTORCORE_TEST_VAR": "from-runtime-env"}},
        _temp_dir=str(root),
        object_spilling_directory=str(spill),
        object_store_memory=8 << 20,
        logging_level="WARNING",
    )
    # _temp_dir: the session (sockets, token, logs) lives under it, with its latest link.
    session = Path(info["session_dir"])
    assert session.parent == root and (session / "token").exists()
    assert (root / "session_latest").resolve() == session.resolve()
    assert info["address"].startswith(f"unix:{root}/")
    # logging_level: the runtime's loggers in this process.
    assert logging.getLogger("actorcore").level == logging.WARNING

    # namespace and env_vars: the same in the driver, a task and an actor.
    ctx = ray.get_runtime_context()
    assert ctx.namespace == "ns-init" and ctx.get()["namespace"] == "ns-init"
    job = ctx.get_job_id()
    assert os.environ.get("ACTORCORE_TEST_VAR") is None  # workers only, as in Ray
    assert ray.get(task_view.remote(), timeout=60) == ("ns-init", "from-runtime-env", job)
    p = Probe.options(name="probe").remote()
    assert ray.get(p.view.remote(), timeout=60) == ("ns-init", "from-runtime-env", job, False)
    assert ray.get_actor("probe", namespace="ns-init") == p
    with pytest.raises(ValueError, match="no live actor named 'probe' in namespace 'default'"):
        ray.get_actor("probe", namespace="default")
    assert ray.get(make_named.remote("from_task"), timeout=60)[0] == "ns-init"
    assert ray.get_actor("from_task", namespace="ns-init") is not None

    # object_spilling_directory: three 4 MiB objects in an 8 MiB store spill there.
    values = [bytes([i]) * (4 << 20) for i in range(3)]
    refs = [ray.put(v) for v in values]
    prefix = f"actorcore-{session.name}"
    spilled = glob.glob(str(spill / f"{prefix}*.spill"))
    assert spilled, f"nothing spilled into {spill}: {os.listdir(spill)}"
    assert not glob.glob(str(session / "spill" / "*.spill"))
    assert [ray.get(r, timeout=60) == v for r, v in zip(refs, values, strict=True)] == [True] * 3
    del refs
    ray.shutdown()
    deadline = time.monotonic() + 10
    while glob.glob(str(spill / f"{prefix}*.spill")):
        assert time.monotonic() < deadline, os.listdir(spill)
        time.sleep(0.05)
    assert spill.is_dir()  # the user's directory stays; only our files go


def test_init_namespace_reaches_named_actor_lookup_in_tasks_default_otherwise(no_cluster):
    ray.init(num_cpus=1, log_to_driver=False)
    assert ray.get_runtime_context().namespace == "default"
    assert ray.get(task_view.remote(), timeout=60)[0] == "default"
    with pytest.raises(RuntimeError, match="only defined inside an actor"):
        _ = ray.get_runtime_context().was_current_actor_reconstructed
    with pytest.raises(exc.TaskError, match="only defined inside an actor"):
        ray.get(_reconstructed_in_a_task.remote(), timeout=60)


@ray.remote
def _reconstructed_in_a_task():
    return ray.get_runtime_context().was_current_actor_reconstructed


# A fresh driver's plain `init()` spawns its node before it imports the runtime
# (`api._early_init`): the driver's imports then overlap the node's start. Each
# run records, for every node process spawned, whether Trio was loaded then, and
# whether that node is still alive once `init` returned or raised.
_SPAWN_PROBE = """
import json, subprocess, sys
spawned = []
class Popen(subprocess.Popen):
    def __init__(self, args, *a, **k):
        super().__init__(args, *a, **k)
        if "actorcore.node" in args:
            spawned.append((self, "trio" in sys.modules))
subprocess.Popen = Popen
import actorcore as ray
loaded_on_import = "trio" in sys.modules
try:
    ray.init(**json.loads(sys.argv[1]))
    raised = None
except Exception as e:
    raised = type(e).__name__
    ray.init(num_cpus=1)  # the runtime is loaded now: the usual path
alive = [p.poll() is None for p, _ in spawned]
result = ray.get(ray.remote(lambda: 42).remote(), timeout=60)
print(json.dumps({"loaded_on_import": loaded_on_import, "trio_at_spawn": [t for _, t in spawned],
                  "alive": alive, "raised": raised, "result": result}))
ray.shutdown()
"""


def _spawn_probe(root: Path, init_kwargs: dict) -> dict:
    import json
    import subprocess
    import sys

    env = dict(os.environ, ACTORCORE_TMPDIR=str(root))
    env.pop("ACTORCORE_ADDRESS", None)
    r = subprocess.run([sys.executable, "-c", _SPAWN_PROBE, json.dumps(init_kwargs)],
                       env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_fresh_drivers_init_spawns_its_node_before_loading_the_runtime(short_tmp):
    out = _spawn_probe(short_tmp, {"num_cpus": 1, "log_to_driver": False})
    assert out == {"loaded_on_import": False, "trio_at_spawn": [False], "alive": [True],
                   "raised": None, "result": 42}


def test_a_node_spawned_early_for_an_init_that_raises_is_stopped(short_tmp):
    # namespace="" is refused by `init()` after the early node was spawned for it.
    out = _spawn_probe(short_tmp, {"num_cpus": 1, "namespace": ""})
    assert out["raised"] == "ValueError"
    assert out["trio_at_spawn"] == [False, True]  # the second: the usual path's
    assert out["alive"] == [False, True]
    assert out["result"] == 42
