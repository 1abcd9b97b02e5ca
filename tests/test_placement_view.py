"""The placement policy over a `ClusterView` of many nodes, without a cluster: the
view's cached live list and each status's cached load follow every refresh, and
one-resource requests are judged exactly as `fits` judges them."""

from __future__ import annotations

import attrs
import trio

from actorcore.node.gcs_client._membership import ClusterView, NodeStatus
from actorcore.node.global_scheduler._placement import SPREAD, SpreadState, choose_node


def _record(nid: str, cpus: float, **extra: float) -> dict:
    return {"node_id": nid, "tcp_address": f"tcp:127.0.0.9:{len(nid)}",
            "resources": {"CPU": cpus, **extra}, "alive": True}


async def test_the_view_and_loads_follow_each_refresh() -> None:
    view = ClusterView("a" * 32)
    ids = [c * 32 for c in "abcd"]
    records = [_record(nid, 4.0) for nid in ids]
    view.apply(records, {nid: {"available": {"CPU": 4.0}, "queued": 0} for nid in ids})
    assert {s.node_id for s in view.alive()} == set(ids)
    # The least loaded node with room wins; its load comes from its heartbeat.
    beats = {nid: {"available": {"CPU": 1.0}, "queued": 0} for nid in ids}
    beats["c" * 32] = {"available": {"CPU": 3.0}, "queued": 0}
    view.apply(records, beats)
    assert view.get("c" * 32).load() == 0.25  # type: ignore[union-attr]
    assert choose_node({"CPU": 2.0}, None, view).node_id == "c" * 32
    # A refresh that declares a node dead drops it from the live list at once.
    records[2] = {**records[2], "alive": False, "death_reason": "test"}
    view.apply(records, beats)
    assert "c" * 32 not in {s.node_id for s in view.alive()}
    assert choose_node({"CPU": 1.0}, None, view).node_id != "c" * 32
    # Only CPU 2.0 fits nowhere now: the least loaded feasible node queues it.
    assert choose_node({"CPU": 2.0}, None, view).node_id in ids
    # A caller's list is its own: changing it does not change the view.
    live = view.alive()
    live.clear()
    assert len(view.alive()) == 3
    # A status evolved with other free resources has the load of those.
    status = view.get("a" * 32)
    assert status is not None
    assert attrs.evolve(status, available={"CPU": 4.0}).load() == 0.0
    assert NodeStatus(node_id="x", address=None, resources={"CPU": 2.0},
                      available={"CPU": 0.0}, queued=4).load() == 3.0
    await trio.lowlevel.checkpoint()


async def test_one_resource_requests_keep_fits_tolerance_and_missing_resources() -> None:
    view = ClusterView("a" * 32)
    records = [_record("a" * 32, 1.0), _record("b" * 32, 1.0, GPU=1.0)]
    view.apply(records, {"a" * 32: {"available": {"CPU": 0.3 + 0.3 + 0.4 - 1e-12}},
                         "b" * 32: {"available": {"CPU": 0.0, "GPU": 1.0}}})
    # 0.3 + 0.3 + 0.4 - 1e-12 free: a float sum that `fits` accepts for 1.0.
    assert choose_node({"CPU": 1.0}, None, view).node_id == "a" * 32
    assert choose_node({"GPU": 1.0}, None, view).node_id == "b" * 32
    none = choose_node({"TPU": 1.0}, None, view)
    assert none.node_id is None and none.infeasible and "TPU" in none.reason
    spread = SpreadState()
    picks = {choose_node({"CPU": 1.0}, SPREAD, view, spread=spread).node_id for _ in range(4)}
    assert picks == {"a" * 32, "b" * 32}
    await trio.lowlevel.checkpoint()


async def test_a_node_whose_queue_claims_its_free_resources_is_not_free() -> None:
    """This node (``a``) has its CPU free but one task queued for it (waiting for a
    worker to start): the next task goes to an idle node, not behind that one; with
    every node busy, a tie in load goes to another node."""
    view = ClusterView("a" * 32)
    records = [_record("a" * 32, 1.0), _record("b" * 32, 1.0)]
    view.apply(records, {"a" * 32: {"available": {"CPU": 1.0}, "queued": 1},
                         "b" * 32: {"available": {"CPU": 1.0}, "queued": 0}})
    assert choose_node({"CPU": 1.0}, None, view).node_id == "b" * 32
    view.apply(records, {"a" * 32: {"available": {"CPU": 1.0}, "queued": 1},
                         "b" * 32: {"available": {"CPU": 0.0}, "queued": 0}})
    assert choose_node({"CPU": 1.0}, None, view).node_id == "b" * 32
    await trio.lowlevel.checkpoint()


async def test_multi_follows_each_refresh_and_the_seed() -> None:
    # ``multi`` (another live node exists) is kept with the live list: it follows a
    # join, a death and the seed as that list does.
    me, other = "a" * 32, "b" * 32
    view = ClusterView(me)
    assert not view.multi
    view.seed(_record(me, 2.0))
    assert not view.multi
    view.apply([_record(me, 2.0), _record(other, 2.0)], {})
    assert view.multi
    view.apply([_record(me, 2.0), {**_record(other, 2.0), "alive": False}], {})
    assert not view.multi
    view.apply([_record(me, 2.0), _record(other, 2.0)], {})
    assert view.multi
