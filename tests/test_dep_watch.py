"""The node's watch over argument refs that can never resolve (``_dep_watch``), one
sweep at a time: a dependency whose owner is not a client of this node is asked for
on the other nodes before it can be judged lost."""

from __future__ import annotations

from types import SimpleNamespace

import attrs

from actorcore.exceptions import ObjectLostError
from actorcore.node.object_manager._dep_watch import DependencyWatch
from actorcore.node.object_manager._directory import ObjectDirectory
from actorcore.protocol import _serialization
from actorcore.protocol._ids import new_put_id


@attrs.define
class _Remote:
    """The node's ``RemoteObjects`` as the watch sees it: what it asks for elsewhere.
    ``others``: whether another node exists to ask (a one-node cluster asks none)."""

    others: bool
    fetching: dict[bytes, str] = attrs.Factory(dict)
    asked: list[bytes] = attrs.Factory(list)

    def need(self, oids):
        for oid in oids:
            self.asked.append(oid)
            if self.others:
                self.fetching[oid] = ""


def _node(remote: _Remote) -> SimpleNamespace:
    """A node with nothing connected, queued or running: no owner, no producer here."""
    sched = SimpleNamespace(running={}, waiting={}, infeasible={}, ready=[])
    return SimpleNamespace(
        directory=ObjectDirectory(), remote=remote, sched=sched,
        clients=SimpleNamespace(live_id_prefixes=set),
        cluster=SimpleNamespace(forwarded_out={}), actors=SimpleNamespace(actors={}))


def _watching(others: bool) -> tuple[_Remote, SimpleNamespace, DependencyWatch, bytes]:
    """A watch over one object a consumer holds and waits for, of an owner not here."""
    remote = _Remote(others=others)
    node = _node(remote)
    watch = DependencyWatch(node)
    oid = new_put_id()
    node.directory.pin([oid])
    node.directory.when_ready(oid, lambda _entry: None)
    watch.watch([oid])
    return remote, node, watch, oid


def test_a_dependency_owned_elsewhere_is_fetched_from_there_not_judged_lost():
    # Its first ask was skipped (a node that served before its view held the
    # others): the sweep asks, and the fetch decides, not two sweeps.
    remote, node, watch, oid = _watching(others=True)
    assert watch.sweep() == [] and watch.sweep() == []
    assert remote.asked == [oid] and oid in remote.fetching
    assert not node.directory.entries[oid].ready


def test_a_dependency_no_node_can_produce_is_lost_at_the_second_sweep():
    _remote, node, watch, oid = _watching(others=False)
    assert watch.sweep() == []  # a suspect
    assert watch.sweep() == [oid]
    entry = node.directory.entries[oid]
    assert entry.ready and entry.is_error
    error = _serialization.loads(entry.data)
    assert isinstance(error, ObjectLostError) and "can never become available" in str(error)
