"""The pytest plugin (entry point ``pytest11``): its fixtures give a fresh
multi-node cluster and the fault harness bound to it, and a failing test's report
lists the faults injected during it."""

from __future__ import annotations

pytest_plugins = ["pytester"]

INNER = '''
import actorcore
import pytest


@pytest.mark.actorcore_cluster(nodes=2, num_cpus=1)
def test_fails_under_faults(actorcore_cluster, actorcore_faults):
    alive = [n for n in actorcore.nodes() if n["Alive"]]
    assert len(alive) == 2
    head = "node:" + actorcore_cluster.head_node.node_id[:8]
    with actorcore_faults.delay(0.01, a="driver", b=head):
        pass
    actorcore_faults.crash(head + "/global_scheduler")
    actorcore_faults.drop(0.1, a="worker", b=head)  # left for the fixture to heal
    assert False, "boom"


def test_passes_without_a_section():
    assert True
'''


def _registered() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "actorcore.testing.pytest_plugin"
               for ep in entry_points(group="pytest11"))


def test_the_plugin_is_an_entry_point():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {
        "actorcore": "actorcore.testing.pytest_plugin"}


def test_plugin_fixtures_and_the_report_of_a_failing_test(pytester):
    pytester.makepyfile(test_inner=INNER)
    # An install from before the entry point (``pip install -e .`` refreshes it)
    # gets the plugin by name.
    load = [] if _registered() else ["-p", "actorcore.testing.pytest_plugin"]
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", *load, timeout=120)
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "actorcore injected faults" in out, out
    assert "delay" in out and "/global_scheduler" in out and "drop" in out, out
    assert "heal" in out  # the delay's context manager healed it
    # Reported once: for the failing test only.
    assert out.count("actorcore injected faults") == 1, out
