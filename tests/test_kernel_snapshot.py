"""Snapshots: the contract's shape, merging a service's own fields, format_tree."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import trio
import trio.testing

from actorcore.kernel import ChildSpec, Supervisor, check_snapshot, format_tree

from .test_kernel_support import Behaviour, Log, spec


class Pool:
    """A service with sub-units of its own, like the worker pool."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "worker_pool",
            "pid": None,  # does not hide the supervisor's pid
            "state": "bogus",  # the supervisor is the authority on state
            "size": 1,
            "children": [
                {"name": "worker_0", "kind": "worker", "state": "running", "restarts": 0,
                 "pid": 999999, "node_id": None, "children": []},
            ],
        }


class BadSnapshot(Pool):
    def snapshot(self) -> dict[str, Any]:
        raise RuntimeError("lost track")


async def test_snapshot_has_the_contract_shape_and_merges_service_fields(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = Log()
    sup = Supervisor(
        "node",
        [
            spec("rpc_server", log, default=Behaviour(extra_snapshot={"address": "unix:/x.sock", "kind": "rpc"})),
            Supervisor.spec("gcs", [spec("shard_0", log)], strategy="one_for_all"),
            ChildSpec("worker_pool", Pool),
            ChildSpec("broken", BadSnapshot),
        ],
        node_id="node-1",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.crash_child("rpc_server")
        await sup.wait_running("rpc_server", restarts=1)
        snap = sup.snapshot()
        check_snapshot(snap)
        assert json.loads(json.dumps(snap)) == snap  # plain data
        me = os.getpid()
        assert {k: snap[k] for k in ("name", "kind", "state", "restarts", "pid", "node_id", "strategy")} == {
            "name": "node", "kind": "supervisor", "state": "running", "restarts": 0,
            "pid": me, "node_id": "node-1", "strategy": "one_for_one",
        }
        rpc, gcs, pool, broken = snap["children"]
        assert rpc == {
            "name": "rpc_server", "kind": "rpc", "state": "running", "restarts": 1, "pid": me,
            "node_id": "node-1", "children": [], "address": "unix:/x.sock",
            "last_error": "InjectedCrash: crash injected into child 'rpc_server' of supervisor 'node'",
        }
        assert gcs["strategy"] == "one_for_all" and gcs["node_id"] == "node-1"
        assert gcs["children"][0]["name"] == "shard_0"
        assert gcs["children"][0]["node_id"] == "node-1"  # inherited down the tree
        assert (pool["kind"], pool["state"], pool["pid"], pool["size"]) == ("worker_pool", "running", me, 1)
        assert pool["children"][0]["pid"] == 999999 and pool["children"][0]["node_id"] == "node-1"
        assert broken["snapshot_error"] == "RuntimeError: lost track" and broken["state"] == "running"
        nursery.cancel_scope.cancel()
    check_snapshot(sup.snapshot())
    assert {c["state"] for c in sup.snapshot()["children"]} == {"stopped"}


def test_check_snapshot_names_the_bad_node_and_key() -> None:
    good = {"name": "n", "kind": "supervisor", "state": "running", "restarts": 0, "pid": 1,
            "node_id": None, "children": [
                {"name": "c", "kind": "service", "state": "running", "restarts": 0, "pid": None,
                 "node_id": None, "children": []}]}
    check_snapshot(good)
    bad_state = json.loads(json.dumps(good))
    bad_state["children"][0]["state"] = "sleeping"
    with pytest.raises(ValueError, match="node 'n/c': 'state' must be one of starting, .* got 'sleeping'"):
        check_snapshot(bad_state)
    missing = json.loads(json.dumps(good))
    del missing["children"][0]["pid"]
    with pytest.raises(ValueError, match="node 'n/c' lacks key 'pid'"):
        check_snapshot(missing)
    negative = dict(good, restarts=-1)
    with pytest.raises(ValueError, match="'restarts' must be an int >= 0, got -1"):
        check_snapshot(negative)


def test_format_tree() -> None:
    snapshot = {
        "name": "node", "kind": "supervisor", "strategy": "one_for_one", "state": "running",
        "restarts": 0, "pid": 4242, "node_id": "n1", "children": [
            {"name": "rpc_server", "kind": "service", "state": "running", "restarts": 0,
             "pid": 4242, "node_id": "n1", "children": []},
            {"name": "gcs", "kind": "supervisor", "strategy": "one_for_all", "state": "running",
             "restarts": 1, "pid": 4242, "node_id": "n1", "children": [
                 {"name": "shard_0", "kind": "service", "state": "restarting", "restarts": 2,
                  "pid": 4242, "node_id": "n1", "last_error": "OSError: disk full", "children": []},
                 {"name": "shard_1", "kind": "service", "state": "running", "restarts": 0,
                  "pid": 4242, "node_id": "n1", "last_error": "old news", "children": []},
             ]},
            {"name": "worker_pool", "kind": "service", "state": "running", "restarts": 0,
             "pid": 4242, "node_id": "n1", "children": [
                 {"name": "worker_0", "kind": "worker", "state": "running", "restarts": 0,
                  "pid": 5151, "node_id": "n1", "children": []},
             ]},
        ],
    }
    assert format_tree(snapshot) == "\n".join([
        "node  supervisor one_for_one  running  pid 4242  node n1",
        "├── rpc_server  service  running",
        "├── gcs  supervisor one_for_all  running  restarts 1",
        "│   ├── shard_0  service  restarting  restarts 2  (last error: OSError: disk full)",
        "│   └── shard_1  service  running",
        "└── worker_pool  service  running",
        "    └── worker_0  worker  running  pid 5151",
    ])
