"""Configuration spelled once (``session._config``): ``init()``'s keywords, the CLI's
``start`` flags and the node's argv all come from ``ClusterConfig``; bad values are
refused naming the option as it was spelled; every ``ACTORCORE_*`` variable the
code reads is in ``ENVIRONMENT`` (and README), and a bad one is refused by name."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.cli._cli import build_parser
from actorcore.cli._cli import main as cli_main
from actorcore.node.__main__ import parse_args as node_parse_args
from actorcore.session import _config
from actorcore.session._config import ENVIRONMENT, ClusterConfig, env_table, env_value

from .cluster_support import HANG_GUARD

ROOT = Path(__file__).resolve().parent.parent

#: A value other than the default for every field (as the CLI would parse it).
NON_DEFAULT = {
    "num_cpus": 3.0,
    "num_gpus": 1.0,
    "resources": {"TPU": 4.0},
    "object_store_memory": 1 << 26,
    "spill_dir": "/tmp/acs-spill-x",
    "num_workers": 2,
    "gcs_shards": 2,
    "gcs_replicas": 3,
    "lineage_cap": 500,
    "port": 0,
    "host": "0.0.0.0",
    "tls_cert": "/certs/node.pem",
    "tls_key": "/certs/node.key",
    "tls_ca": "/certs/ca.pem",
    "insecure": True,
}


def _start_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["start"]  # type: ignore[attr-defined]


def test_every_field_is_an_init_keyword_a_cli_flag_and_a_node_flag():
    assert set(NON_DEFAULT) == set(_config.options())  # keep this test's table complete
    init_params = inspect.signature(ray.init).parameters
    cli_flags = {s for a in _start_parser()._actions for s in a.option_strings}
    node = node_parse_args(["--session-dir", "x"])
    for name, option in _config.options().items():
        if option.init is not None:
            assert option.init in init_params, name
        else:  # not an init() keyword on purpose, and the reason is written down
            assert option.why_not_init, name
        assert option.flag in cli_flags, name
        assert hasattr(node, name), name
    assert "--spill-dir" in cli_flags


def test_node_argv_and_cli_flags_round_trip_through_the_one_class():
    config = ClusterConfig(**NON_DEFAULT)
    argv = config.node_argv()
    node = node_parse_args(["--session-dir", "x", "--head", *argv])
    assert ClusterConfig.from_namespace(node) == config
    cli = build_parser().parse_args(["start", "--head", *argv])
    assert ClusterConfig.from_namespace(cli) == config
    # Defaults are not spelled on the node's command line at all.
    assert ClusterConfig().node_argv() == []
    assert ClusterConfig(num_cpus=2).node_argv() == ["--num-cpus", "2"]


def test_init_keywords_map_to_fields():
    given = {o.init: NON_DEFAULT[name] for name, o in _config.options().items() if o.init}
    config = ClusterConfig.from_init(given)
    for name, option in _config.options().items():
        expected = NON_DEFAULT[name] if option.init else attrs.fields_dict(ClusterConfig)[name].default
        assert getattr(config, name) == expected, name


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_cpus": -1}, exc.ConfigurationError, r"init\(num_cpus=-1\): must be a number >= 0"),
        ({"num_gpus": "2"}, exc.ConfigurationError, r"init\(num_gpus='2'\): expected a number"),
        ({"num_cpus": float("nan")}, exc.ConfigurationError, r"init\(num_cpus=nan\)"),
        ({"gcs_shards": 0}, exc.ConfigurationError, r"init\(gcs_shards=0\): must be a whole number >= 1"),
        ({"gcs_replicas": 1.5}, exc.ConfigurationError, r"init\(gcs_replicas=1.5\)"),
        ({"num_workers": -2}, exc.ConfigurationError, r"init\(num_workers=-2\)"),
        ({"object_store_memory": 0}, exc.ConfigurationError, r"init\(object_store_memory=0\)"),
        ({"resources": [1]}, TypeError, r"init\(resources=\[1\]\): expected a dict"),
        ({"resources": {"CPU": 1}}, exc.ConfigurationError, r"use num_cpus/num_gpus, not resources\['CPU'\]"),
        ({"resources": {"TPU": -1}}, exc.ConfigurationError, r"resources\['TPU'\]=-1 must be a number >= 0"),
        ({"tls_cert": 5}, TypeError, r"init\(tls_cert=5\): expected a path"),
        ({"tls_cert": "/x/node.pem"}, ValueError, r"missing init\(tls_key=\), init\(tls_ca=\)"),
    ],
)
def test_bad_init_values_are_refused_naming_the_keyword(kwargs, error, match):
    if ray.is_initialized():
        pytest.skip("a cluster is connected in this process")
    with pytest.raises(error, match=match):
        ray.init(**kwargs)
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--num-cpus", "-1"], "--num-cpus"),
        (["--gcs-shards", "0"], "--gcs-shards"),
        (["--resources", "{not json"], "--resources"),
        (["--resources", '{"GPU": 1}'], "--resources"),
        (["--port", "70000"], "--port"),
        (["--object-store-memory", "lots"], "--object-store-memory"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["start", "--head", *argv])
    assert info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        node_parse_args(["--session-dir", "x", *argv])
    assert f"argument {flag}:" in capsys.readouterr().err


def test_every_environment_variable_read_is_listed_once_and_in_readme():
    used = set()
    for package in ("actorcore", "store", "gcs", "transport"):
        for path in (ROOT / package).rglob("*.py"):
            # (not "ACTORCORE_TLS_CERT/KEY/CA", prose for three listed names)
            used |= set(re.findall(r"ACTORCORE_[A-Z0-9_]*[A-Z0-9]\b(?!/)", path.read_text()))
    listed = [v.name for v in ENVIRONMENT]
    assert len(listed) == len(set(listed))
    assert used - set(listed) == set(), "read but not listed in session._config.ENVIRONMENT"
    assert set(listed) - used == set(), "listed but read nowhere"
    readme = (ROOT / "README.md").read_text()
    assert env_table() in readme, "README's table of variables is not env_table()'s"


@pytest.mark.parametrize(
    ("name", "raw", "match"),
    [
        ("ACTORCORE_DIRECT_CALLS", "maybe", r"ACTORCORE_DIRECT_CALLS='maybe': expected 0 or 1"),
        ("ACTORCORE_IDLE_WORKER_TIMEOUT", "ten", r"ACTORCORE_IDLE_WORKER_TIMEOUT='ten': not a number"),
        ("ACTORCORE_WORKER_START_TIMEOUT", "-1", r"ACTORCORE_WORKER_START_TIMEOUT='-1': must be"),
        ("ACTORCORE_MAX_STARTING_WORKERS", "0", r"ACTORCORE_MAX_STARTING_WORKERS='0'"),
        ("ACTORCORE_GCS_LINEAGE_CAP", "1.5", r"ACTORCORE_GCS_LINEAGE_CAP='1.5': not a whole"),
    ],
)
def test_env_value_refuses_a_bad_value_naming_the_variable(name, raw, match):
    with pytest.raises(exc.ConfigurationError, match=match):
        env_value(name, {name: raw})


def test_env_value_defaults_and_the_deprecated_alias(caplog):
    assert env_value("ACTORCORE_DIRECT_CALLS", {}) is True
    assert env_value("ACTORCORE_DIRECT_CALLS", {"ACTORCORE_DIRECT_CALLS": "0"}) is False
    assert env_value("ACTORCORE_IDLE_WORKER_TIMEOUT", {}) == 10.0
    assert env_value("ACTORCORE_ADDRESS", {}) is None
    # One polarity: ACTORCORE_NO_DIRECT=1 is the old spelling of ACTORCORE_DIRECT_CALLS=0.
    with caplog.at_level("WARNING", logger="actorcore.config"):
        assert env_value("ACTORCORE_DIRECT_CALLS", {"ACTORCORE_NO_DIRECT": "1"}) is False
    assert "ACTORCORE_NO_DIRECT is deprecated: set ACTORCORE_DIRECT_CALLS=0" in caplog.text
    # The new name wins over the old one.
    both = {"ACTORCORE_NO_DIRECT": "1", "ACTORCORE_DIRECT_CALLS": "1"}
    assert env_value("ACTORCORE_DIRECT_CALLS", both) is True


def test_a_bad_switch_is_refused_when_the_process_starts():
    env = dict(os.environ, ACTORCORE_DIRECT_CALLS="off")
    r = subprocess.run([sys.executable, "-c", "import actorcore"], env=env,
                       capture_output=True, text=True, timeout=HANG_GUARD)
    assert r.returncode != 0
    assert "ACTORCORE_DIRECT_CALLS='off': expected 0 or 1" in r.stderr


def test_a_bad_node_variable_fails_init_naming_it_then_the_next_init_works(monkeypatch):
    if ray.is_initialized():
        pytest.skip("a cluster is connected in this process")
    monkeypatch.setenv("ACTORCORE_IDLE_WORKER_TIMEOUT", "soon")
    with pytest.raises(exc.ActorcoreSystemError, match=r"ACTORCORE_IDLE_WORKER_TIMEOUT='soon'"):
        ray.init(num_cpus=1, _node_timeout=30)
    assert not ray.is_initialized()
    monkeypatch.delenv("ACTORCORE_IDLE_WORKER_TIMEOUT")
    ray.init(num_cpus=1, gcs_shards=2)
    try:
        @ray.remote
        def double(x):
            return 2 * x

        assert ray.get(double.remote(21), timeout=60) == 42
        assert ray.cluster_resources()["CPU"] == 1.0
    finally:
        ray.shutdown()


# ------------------------------------------------- the memory check (worker_pool._memory)


def test_memory_settings_defaults_ray_fallbacks_and_bad_values():
    from actorcore.node.worker_pool._memory import MemoryPolicy

    assert MemoryPolicy.from_env({}) == MemoryPolicy(0.95, "fail", 0.25)
    # Ray's names are read when ours are not set; ours win.
    rays = {"RAY_memory_usage_threshold": "0.8", "RAY_memory_monitor_refresh_ms": "0"}
    assert MemoryPolicy.from_env(rays) == MemoryPolicy(0.8, "fail", 0.0)
    assert not MemoryPolicy.from_env(rays).enabled  # Ray's 0: no monitor
    ours = dict(rays, ACTORCORE_MEMORY_USAGE_THRESHOLD="0.5",
                ACTORCORE_MEMORY_MONITOR_REFRESH_MS="100", ACTORCORE_LOW_MEMORY_POLICY="Wait")
    assert MemoryPolicy.from_env(ours) == MemoryPolicy(0.5, "wait", 0.1)
    for env, match in [
        ({"ACTORCORE_MEMORY_USAGE_THRESHOLD": "1.5"}, r"ACTORCORE_MEMORY_USAGE_THRESHOLD='1.5': "
                                                      r"must be a fraction in \[0, 1\]"),
        ({"ACTORCORE_MEMORY_USAGE_THRESHOLD": "most"}, r"ACTORCORE_MEMORY_USAGE_THRESHOLD='most'"),
        ({"RAY_memory_usage_threshold": "-0.1"}, r"RAY_memory_usage_threshold='-0.1'"),
        ({"ACTORCORE_LOW_MEMORY_POLICY": "kill"}, r"ACTORCORE_LOW_MEMORY_POLICY='kill': "
                                                  r"expected one of fail, wait"),
        ({"ACTORCORE_MEMORY_MONITOR_REFRESH_MS": "-1"}, r"ACTORCORE_MEMORY_MONITOR_REFRESH_MS='-1'"),
        ({"RAY_memory_monitor_refresh_ms": "often"}, r"RAY_memory_monitor_refresh_ms='often'"),
    ]:
        with pytest.raises(exc.ConfigurationError, match=match):
            MemoryPolicy.from_env(env)


def _status_actors():
    from actorcore import _api

    return _api._call("status")["actors"]


def test_low_memory_refuses_an_actor_with_a_typed_error_and_the_cluster_goes_on(monkeypatch):
    if ray.is_initialized():
        pytest.skip("a cluster is connected in this process")
    # Threshold 0: any memory use is "above" it, so no actor process may start.
    monkeypatch.setenv("ACTORCORE_MEMORY_USAGE_THRESHOLD", "0")
    ray.init(num_cpus=1)
    try:
        @ray.remote
        class A:
            def ping(self):
                return 1

        @ray.remote
        def double(x):
            return 2 * x

        a = A.remote()
        with pytest.raises(exc.ActorOutOfMemoryError) as info:
            ray.get(a.ping.remote(), timeout=60)
        text = str(info.value)
        assert isinstance(info.value, exc.ActorDiedError)  # it is dead, for good
        assert "low on memory" in text and "exceeds the memory usage threshold of 0.0" in text
        assert re.search(r"\d+\.\d\dGB / \d+\.\d\dGB \(0\.\d{3}\)", text), text
        assert "ACTORCORE_MEMORY_USAGE_THRESHOLD" in text
        with pytest.raises(exc.ActorOutOfMemoryError):  # a shared host is refused too
            ray.get(A.options(placement="shared").remote().ping.remote(), timeout=60)
        # The node goes on: tasks run, a later call still gets the typed error.
        assert ray.get(double.remote(21), timeout=60) == 42
        with pytest.raises(exc.ActorOutOfMemoryError):
            ray.get(a.ping.remote(), timeout=60)
        st = _status_actors()
        assert st.memory_refused == 2 and st.processes == 0 and st.processes_queued == 0, st
    finally:
        ray.shutdown()
    monkeypatch.delenv("ACTORCORE_MEMORY_USAGE_THRESHOLD")
    ray.init(num_cpus=1)
    try:
        assert ray.get(A.remote().ping.remote(), timeout=60) == 1
    finally:
        ray.shutdown()


def test_low_memory_policy_wait_keeps_the_actor_pending(monkeypatch):
    if ray.is_initialized():
        pytest.skip("a cluster is connected in this process")
    monkeypatch.setenv("ACTORCORE_MEMORY_USAGE_THRESHOLD", "0")
    monkeypatch.setenv("ACTORCORE_LOW_MEMORY_POLICY", "wait")
    monkeypatch.setenv("ACTORCORE_MEMORY_MONITOR_REFRESH_MS", "20")
    ray.init(num_cpus=1)
    try:
        @ray.remote
        class A:
            def ping(self):
                return 1

        a = A.remote()
        ref = a.ping.remote()
        ready, _ = ray.wait([ref], timeout=1.0)
        assert ready == []  # waits for memory: neither run nor failed
        st = _status_actors()
        assert st.pending == 1 and st.processes_queued == 1 and st.memory_deferred >= 1, st
        assert st.memory_refused == 0, st
        assert ray.get(ray.remote(lambda: 3).remote(), timeout=60) == 3
        ray.kill(a)  # a waiting start can be given up
        with pytest.raises(exc.ActorDiedError, match="killed"):
            ray.get(ref, timeout=60)
        st = _status_actors()
        assert st.processes_queued == 0 and st.pending == 0, st
    finally:
        ray.shutdown()
