"""Placement groups (issue 14): gang reservation of bundles, tasks and actors in
them, removal, records readable from the API, on real clusters — one node (the
module's embedded 2-CPU cluster) and, for the strategies that span nodes, a
2-3 node ``actorcore.testing.Cluster``.

Every test checks the Ray behaviour and then that the cluster still serves a
follow-up task.
"""

from __future__ import annotations

import importlib
import os
import time

import pytest

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.testing import Cluster
from actorcore.util.placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from actorcore.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup

from .cluster_support import FAST, until


@ray.remote
def add_one(x):
    return x + 1


@ray.remote
def where():
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), os.getpid(), ctx.get_assigned_resources()


@ray.remote
def hang():
    time.sleep(300)


@ray.remote
def current_group():
    pg = get_current_placement_group()
    return None if pg is None else pg.id.hex()


@ray.remote
class Pinger:
    def ping(self):
        return "pong"


def _healthy():
    assert ray.get(add_one.remote(41), timeout=30) == 42


def _cpus_free(n: float) -> bool:
    return ray.available_resources().get("CPU", 0.0) == n


@pytest.fixture(scope="class")
def one_node():
    ray.init(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


# ---------------------------------------------------------------- one node


@pytest.mark.usefixtures("one_node")
class TestOneNode:
    def test_bundles_are_reserved_and_tasks_and_actors_run_in_them(self):
        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
        assert ray.get(pg.ready(), timeout=30) == pg
        assert pg.wait(5) is True
        assert pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0}]
        # The group's CPUs left the node's free pool; its renamed resources joined.
        until(lambda: _cpus_free(0.0), what="the bundles' CPUs taken")
        total = ray.cluster_resources()
        assert total[f"CPU_group_{pg.id.hex()}"] == 2.0
        assert total[f"CPU_group_0_{pg.id.hex()}"] == 1.0
        entry = placement_group_table(pg)
        assert entry["state"] == "CREATED" and entry["strategy"] == "PACK"
        assert entry["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}
        me = ray.get_runtime_context().get_node_id()
        assert entry["bundles_to_node_id"] == {0: me, 1: me}
        assert pg.id.hex() in placement_group_table()
        # Tasks in the group run although the node has no free CPU.
        _, _, res = ray.get(where.options(scheduling_strategy=InGroup(pg, 1)).remote(),
                            timeout=30)
        assert res[f"CPU_group_1_{pg.id.hex()}"] == 1.0
        # Ray's legacy options, and a group passed into a task.
        _, _, res = ray.get(where.options(placement_group=pg).remote(), timeout=30)
        assert res[f"CPU_group_{pg.id.hex()}"] == 1.0
        assert ray.get(current_group.options(placement_group=pg,
                                             placement_group_bundle_index=0).remote(),
                       timeout=30) == pg.id.hex()
        assert ray.get(current_group.options(num_cpus=0).remote(), timeout=30) is None
        a = Pinger.options(num_cpus=1, scheduling_strategy=InGroup(pg, 0)).remote()
        assert ray.get(a.ping.remote(), timeout=30) == "pong"
        remove_placement_group(pg)
        until(lambda: _cpus_free(2.0), what="the bundles' CPUs back")
        assert f"CPU_group_{pg.id.hex()}" not in ray.cluster_resources()
        assert placement_group_table(pg)["state"] == "REMOVED"
        _healthy()

    def test_bad_bundles_and_options_are_refused_naming_the_value(self):
        for bundles, match in [([], "non-empty list"), ([{}], "bundle 0"),
                               ([{"CPU": 1}, {"CPU": -1}], "bundle 1: CPU=-1 cannot be negative"),
                               ([{"CPU": 0}], "asks for no resources"),
                               ([{"CPU": "x"}], "must be a number"),
                               ("CPU", "non-empty list")]:
            with pytest.raises(ValueError, match=match):
                placement_group(bundles)
        with pytest.raises(ValueError, match="strategy='SPREADS'"):
            placement_group([{"CPU": 1}], strategy="SPREADS")
        with pytest.raises(ValueError, match="lifetime='forever'"):
            placement_group([{"CPU": 1}], lifetime="forever")
        pg = placement_group([{"CPU": 1}])
        try:
            assert pg.wait(30)
            with pytest.raises(ValueError, match="out of range.*1 bundle"):
                where.options(scheduling_strategy=InGroup(pg, 1))
            with pytest.raises(ValueError, match="cannot fit into any bundle"):
                where.options(num_cpus=2, placement_group=pg).remote()
            with pytest.raises(ValueError, match="capture_child_tasks=True is not supported"):
                where.options(scheduling_strategy=InGroup(
                    pg, placement_group_capture_child_tasks=True))
            with pytest.raises(ValueError, match="needs a placement group"):
                where.options(placement_group_bundle_index=0)
            with pytest.raises(TypeError, match="expected a PlacementGroup"):
                where.options(placement_group="mine")
        finally:
            remove_placement_group(pg)
        _healthy()

    def test_a_group_the_node_cannot_hold_stays_pending_and_one_waits_for_resources(self):
        too_big = placement_group([{"CPU": 2}, {"CPU": 1}], strategy="STRICT_PACK")
        assert too_big.wait(0.5) is False
        assert placement_group_table(too_big)["state"] == "PENDING"
        first = placement_group([{"CPU": 2}])
        assert first.wait(30)
        second = placement_group([{"CPU": 1}])
        ready = second.ready()
        done, _ = ray.wait([ready], timeout=0.5)
        assert not done and placement_group_table(second)["state"] == "PENDING"
        remove_placement_group(first)  # frees what the pending one waits for
        assert ray.get(ready, timeout=30) == second
        for pg in (too_big, second):
            remove_placement_group(pg)
        until(lambda: _cpus_free(2.0), what="every CPU back")
        _healthy()

    def test_removal_kills_the_groups_tasks_and_actors(self):
        pg = placement_group([{"CPU": 1}, {"CPU": 1}])
        assert pg.wait(30)
        actor = Pinger.options(num_cpus=1, placement_group=pg,
                               placement_group_bundle_index=1).remote()
        assert ray.get(actor.ping.remote(), timeout=30) == "pong"
        running = hang.options(scheduling_strategy=InGroup(pg, 0)).remote()
        queued = hang.options(scheduling_strategy=InGroup(pg, 0)).remote()
        until(lambda: ray.available_resources().get(f"CPU_group_0_{pg.id.hex()}", 1) == 0,
              what="the task running in bundle 0")
        remove_placement_group(pg)
        with pytest.raises(exc.TaskPlacementGroupRemoved, match=pg.id.hex()):
            ray.get(running, timeout=30)
        with pytest.raises(exc.TaskPlacementGroupRemoved):
            ray.get(queued, timeout=30)
        with pytest.raises(exc.ActorPlacementGroupRemoved, match="placement group"):
            ray.get(actor.ping.remote(), timeout=30)
        # Work sent to a removed group fails too, instead of waiting forever.
        with pytest.raises(exc.TaskPlacementGroupRemoved):
            ray.get(where.options(placement_group=pg).remote(), timeout=30)
        assert pg.wait(5) is False  # a removed group is never ready
        remove_placement_group(pg)  # twice: nothing more happens
        until(lambda: _cpus_free(2.0), what="the bundles' CPUs back")
        _healthy()

    def test_named_groups_are_found_by_name_and_names_are_unique(self):
        pg = placement_group([{"CPU": 1}], name="trainers")
        assert get_placement_group("trainers") == pg
        assert get_placement_group("trainers").bundle_specs == [{"CPU": 1.0}]
        with pytest.raises(ValueError, match="'trainers' is already taken"):
            placement_group([{"CPU": 1}], name="trainers")
        with pytest.raises(ValueError, match="no placement group named 'nobody'"):
            get_placement_group("nobody")
        remove_placement_group(pg)
        with pytest.raises(ValueError, match="no placement group named 'trainers'"):
            get_placement_group("trainers")
        again = placement_group([{"CPU": 1}], name="trainers")  # the name is free again
        assert again.wait(30)
        remove_placement_group(again)
        _healthy()

    def test_module_paths_are_rays(self):
        assert ray.util.placement_group is placement_group
        # As in Ray, the function shadows its module on the package; the module
        # is still importable by its path.
        module = importlib.import_module("actorcore.util.placement_group")
        assert module.PlacementGroup is ray.util.PlacementGroup
        assert ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy is InGroup


# ---------------------------------------------------------------- several nodes



@pytest.fixture
def two_nodes():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": FAST})
    try:
        other = c.add_node(num_cpus=1, env_vars=FAST)
        c.connect()
        until(lambda: _cpus_free(2.0), what="both nodes' CPUs in the view")
        yield c, other
    finally:
        c.shutdown()


def test_strategies_across_two_nodes(two_nodes):
    cluster, other = two_nodes
    head = cluster.head_node.node_id
    spread = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert spread.wait(30)
    placed = placement_group_table(spread)["bundles_to_node_id"]
    assert set(placed.values()) == {head, other.node_id}
    # A task in bundle i runs where bundle i is reserved (here: the local bundle).
    local = next(i for i, n in placed.items() if n == head)
    assert ray.get(where.options(scheduling_strategy=InGroup(spread, local)).remote(),
                   timeout=30)[0] == head
    # Both nodes are full now: a STRICT_PACK group waits, and is reserved as soon as
    # the spread group gives its bundles back.
    pack = placement_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_PACK")
    assert pack.wait(0.5) is False
    remove_placement_group(spread)
    assert pack.wait(30)
    assert len(set(placement_group_table(pack)["bundles_to_node_id"].values())) == 1
    remove_placement_group(pack)
    soft = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    assert soft.wait(30)
    assert set(placement_group_table(soft)["bundles_to_node_id"].values()) == {
        head, other.node_id}
    remove_placement_group(soft)
    until(lambda: _cpus_free(2.0), what="every CPU back on both nodes")
    _healthy()


def test_an_infeasible_group_waits_for_a_node_that_can_hold_it(two_nodes):
    cluster, _other = two_nodes
    # Three bundles on distinct nodes: two nodes cannot, whatever they free.
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert pg.wait(1) is False
    assert placement_group_table(pg)["state"] == "PENDING"
    third = cluster.add_node(num_cpus=1, env_vars=FAST)
    assert pg.wait(30)
    assert third.node_id in placement_group_table(pg)["bundles_to_node_id"].values()
    remove_placement_group(pg)
    until(lambda: _cpus_free(3.0), what="every CPU back on three nodes")
    _healthy()
