"""Typed messages between processes (``actorcore.protocol._wire``): a hostile peer on a
raw connection -- garbage, tuples of the old protocol, another endpoint's messages,
known messages with fields of the wrong type -- gets a typed error naming the
endpoint and the message, and every endpoint keeps serving: the node, the driver's
socket workers push results to, and an actor process's direct-call socket."""

from __future__ import annotations

import functools
import pickle
import sys
import types
from typing import Any

import attrs
import pytest
import trio

import actorcore as ray
import transport
from actorcore import _api
from actorcore.core_worker._worker_state import current_core
from actorcore.protocol import _wire as w
from gcs import _messages as gcs_messages

from .cluster_support import until

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@attrs.frozen
class OnlyHere:
    """A class of a module that exists only in this process: a message of it does
    not even decode at the other end."""

    x: int


_ONLY_HERE = types.ModuleType("actorcore_test_only_in_this_process")
OnlyHere.__module__ = _ONLY_HERE.__name__
_ONLY_HERE.OnlyHere = OnlyHere  # type: ignore[attr-defined]
sys.modules[_ONLY_HERE.__name__] = _ONLY_HERE


@ray.remote
def plus_one(x: int) -> int:
    return x + 1


@ray.remote(num_cpus=1)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        import os

        return os.getpid()


#: What no endpoint handles, with what its refusal says.
FOREIGN: list[tuple[Any, str]] = [
    (("submit", []), "does not handle messages of type tuple"),
    (("nonsense",), "does not handle messages of type tuple"),
    (b"\x80\x04garbage", "does not handle messages of type bytes"),
    (42, "does not handle messages of type int"),
    (None, "does not handle messages of type NoneType"),
    (gcs_messages.Ping(), "does not handle messages of type Ping"),
]


async def _refused(conn: Any, message: Any) -> transport.BadMessage:
    with pytest.raises(transport.RemoteError) as info:
        await conn.request(message, timeout=30)
    error = info.value.remote_exception
    assert isinstance(error, transport.BadMessage), repr(error)
    return error


async def _hostile(address: str, token: bytes, endpoint: str,
                   malformed: list[tuple[Any, str]], *, decodes: bool | None = False) -> None:
    """Send the endpoint at ``address`` every kind of junk on one connection; check
    each refusal, then send it all again one-way: the connection stays up."""
    async with transport.open_connection(address, token, name="hostile") as conn:
        for junk, says in FOREIGN + malformed:
            error = await _refused(conn, junk)
            assert says in str(error), (junk, str(error))
            assert error.endpoint.startswith(endpoint), (error.endpoint, endpoint)
            assert error.message_type == type(junk).__qualname__
        # A message another process cannot even unpickle (the driver's own socket
        # can: there it is one more class it does not handle; ``decodes`` None: a
        # process that may have the module, forked from one that had it).
        with pytest.raises(transport.RemoteError) as info:
            await conn.request(OnlyHere(1), timeout=30)
        error = info.value.remote_exception
        if decodes or (decodes is None and isinstance(error, transport.BadMessage)):
            assert isinstance(error, transport.BadMessage), repr(error)
            assert "does not handle messages of type OnlyHere" in str(error)
        else:
            assert isinstance(error, transport.ProtocolError), repr(error)
            assert "could not decode" in str(error)
        # One-way junk is logged and dropped (a request class sent one-way too: nobody
        # could get its answer); the connection stays up.
        for junk, _says in FOREIGN + malformed:
            await conn.send(junk)
        await conn.send(OnlyHere(2))
        assert not conn.closed


def _core() -> Any:
    core = current_core()
    assert core is not None
    return core


def _node_request(message: Any) -> Any:
    core = _core()

    async def go() -> Any:
        async with transport.open_connection(core.node_address, core.token,
                                             name="test-request") as conn:
            return await conn.request(message, timeout=30)

    return trio.run(go)


def test_the_node_refuses_what_it_does_not_handle_and_serves_on() -> None:
    core = _core()
    malformed = [
        (w.Fetch("not a list"), "malformed Fetch: 'object_ids' must be"),
        (w.Hello(7, None, 1, w.HelloInfo()), "malformed Hello: 'role' must be"),
        (w.Hello("driver", None, 1, {"job_id": b"j"}),
         "malformed Hello: 'info' must be a HelloInfo"),
        (w.Hello("driver", None, 1, w.HelloInfo(job_id="j")),
         "malformed Hello: in 'info': 'job_id' must be"),
        (w.AdminCall(b"status", ()), "malformed AdminCall: 'name' must be"),
        (w.CancelTask(b"t" * 24, "yes", False), "malformed CancelTask: 'force' must be"),
        (w.KillActor("someone", True), "malformed KillActor: 'actor_id' must be"),
        (w.Submit("specs"), "malformed Submit: 'specs' must be"),
        # The node's message to a worker, sent to the node.
        (w.ExitWorker(), "does not handle messages of type ExitWorker"),
        # What other nodes send.
        (w.PayloadChunk(b"o" * 28, -1, 10), "malformed PayloadChunk: 'offset' must be an int"),
        (w.SlowChunks(600.0), "'chunk_delay' must be seconds within [0, 60], got 600.0"),
        (w.PrepareBundles("pg", "bundles"), "malformed PrepareBundles: 'items' must be"),
        (w.PeerBatch(None, "node-x", 0), "malformed PeerBatch: 'messages' must be"),
    ]
    before = _node_request(w.AdminCall("cluster_info"))
    trio.run(_hostile, core.node_address, core.token, "node-", malformed)

    async def junk_in_a_batch() -> None:
        # A batch as another node sends it, with junk between good messages: each is
        # dispatched (or refused) on its own; the junk is dropped, the rest served.
        async with transport.open_connection(core.node_address, core.token,
                                             name="hostile-peer") as conn:
            await conn.send(w.PeerBatch([("n_free", []), w.FreeCopies("x"), 7,
                                         w.FreeCopies([])], "hostile-node", 1))
            assert await conn.request(w.AdminCall("ping"), timeout=30) == "pong"

    trio.run(junk_in_a_batch)
    assert ray.get(plus_one.remote(1)) == 2
    after = _node_request(w.AdminCall("cluster_info"))
    assert after["node_id"] == before["node_id"]
    # An unknown admin call is the handler's error, naming it.
    with pytest.raises(transport.RemoteError, match="unknown call 'no_such_call'"):
        _node_request(w.AdminCall("no_such_call"))
    with pytest.raises(transport.RemoteError, match="'fault' needs an op"):
        _node_request(w.AdminCall("fault"))
    with pytest.raises(transport.RemoteError, match=r"'crash' takes 1 argument\(s\), got 0"):
        _node_request(w.AdminCall("crash"))
    assert ray.get([plus_one.remote(i) for i in range(10)]) == list(range(1, 11))


def test_the_drivers_result_socket_refuses_junk_and_serves_on() -> None:
    """Workers push results to the driver's own socket (``_driver._listen``)."""
    address = _api._state["loop"]._direct
    assert address is not None
    malformed = [
        (w.ObjectsReady(b"oids"), "malformed ObjectsReady: 'objects' must be"),
        (w.Execute("spec", []), "does not handle messages of type Execute"),
    ]
    trio.run(functools.partial(_hostile, address, _core().token, "driver-", malformed,
                               decodes=True))
    # Results still arrive (pushed there by the worker, or through the node).
    assert ray.get([plus_one.remote(i) for i in range(20)]) == list(range(1, 21))


def test_an_actor_process_refuses_junk_on_its_direct_socket_and_serves_on() -> None:
    counter = Counter.remote()
    assert ray.get(counter.add.remote()) == 1
    pid = ray.get(counter.pid.remote())
    route = _node_request(w.RouteActor(counter._actor_id))
    assert isinstance(route, w.ActorRoute), "the actor has no direct socket"
    address = route.address
    malformed = [
        (w.DirectCall("not a CallSpec"), "malformed DirectCall: 'spec' must be a CallSpec"),
        (w.CancelActorCall(counter._actor_id, 5), "malformed CancelActorCall: 'task_id'"),
        # The node's message to an actor process, on the callers' socket.
        (w.ActorCall(None, None), "does not handle messages of type ActorCall"),
    ]
    trio.run(functools.partial(_hostile, address, _core().token, "worker_", malformed,
                               decodes=None))
    # The same process, with its state, still answers calls.
    assert ray.get([counter.add.remote() for _ in range(3)]) == [2, 3, 4]
    assert ray.get(counter.pid.remote()) == pid


def test_hot_messages_pickle_as_compactly_as_tuples() -> None:
    """The messages of every task and call pickle as their class's extension code and
    a tuple of their fields: within a few bytes of the tuple they replaced (its op
    string against the code), never a module, a class name or a dict of names."""
    results = [(b"o" * 28, False, b"x" * 16)]
    for message, old in [
        (w.TaskDone(b"t" * 24, results, False, True), ("done", b"t" * 24, results, False, True)),
        (w.ObjectsReady(results), ("ready", results)),
        (w.Put(results), ("put", results)),
        (w.Free([b"o" * 28]), ("free", [b"o" * 28])),
        (w.DirectResult(b"t" * 24, results), ("dresult", b"t" * 24, results)),
    ]:
        data = pickle.dumps(message, protocol=5)
        old_size = len(pickle.dumps(old, protocol=5))
        assert len(data) <= old_size + 4, (type(message).__name__, len(data), old_size)
        assert b"actorcore" not in data and type(message).__name__.encode() not in data
        assert pickle.loads(data) == message


def _vocabularies() -> list[type]:
    from actorcore.protocol import (
        _actors,
        _between_nodes,
        _direct,
        _from_node,
        _messages,
        _to_node,
    )
    from store import _messages as store_messages

    return [cls for module in (_to_node, _from_node, _direct, _between_nodes, _actors,
                               _messages, store_messages, gcs_messages)
            for cls in transport.classes_of(module.__name__)]


def test_every_message_class_travels_as_its_own_extension_code() -> None:
    """Every class of the three vocabularies (and the specs inside messages) has its
    code, derived from its name, in the private range, unique: no process can decode
    one class's code as another's."""
    classes = _vocabularies()
    assert len(classes) > 150
    codes = {cls: transport.registered_code(cls) for cls in classes}
    assert all(code == transport.wire_code(cls) for cls, code in codes.items()), codes
    assert len(set(codes.values())) == len(classes)
    assert all(transport.CODE_BASE <= c < transport.CODE_BASE + transport.CODE_SPAN
               for c in codes.values())
    for cls in (w.TaskDone, w.Execute, w.DirectCall, w.HelloReply):
        assert codes[cls] is not None, cls


@transport.compact
@attrs.frozen(slots=False)
class CodedHere:
    """A class with an extension code only this process registered: the node gets
    a code it does not know."""

    x: int


_CODED = types.ModuleType("actorcore_test_coded_in_this_process")
CodedHere.__module__ = _CODED.__name__
_CODED.CodedHere = CodedHere  # type: ignore[attr-defined]
sys.modules[_CODED.__name__] = _CODED
transport.register_codes(CodedHere)


def test_a_code_the_node_does_not_know_is_refused_and_the_node_serves_on() -> None:
    core = _core()

    async def go() -> None:
        async with transport.open_connection(core.node_address, core.token,
                                             name="hostile-codes") as conn:
            with pytest.raises(transport.RemoteError) as info:
                await conn.request(CodedHere(1), timeout=30)
            error = info.value.remote_exception
            assert isinstance(error, transport.ProtocolError), repr(error)
            assert "could not decode" in str(error)
            assert f"unregistered extension code {transport.wire_code(CodedHere)}" in str(error)
            # Inside a peer batch too (the batch itself does not decode), and one-way.
            await conn.send(w.PeerBatch([CodedHere(2)], "hostile-node", 2))
            await conn.send(CodedHere(3))
            assert await conn.request(w.AdminCall("ping"), timeout=30) == "pong"
            assert not conn.closed

    trio.run(go)
    assert ray.get(plus_one.remote(41)) == 42


@ray.remote
class Named:
    def hi(self) -> str:
        return "hi"


def test_the_answers_of_the_task_and_call_path_are_typed() -> None:
    """`Hello`, `Fetch`, `RouteActor` and `LookupActor` are answered with their reply
    classes (and the API reads their fields)."""
    core = _core()
    welcome = _api._state["loop"].info
    assert isinstance(welcome, w.HelloReply)
    assert welcome.node_id.hex() == _node_request(w.AdminCall("cluster_info"))["node_id"]
    assert welcome.address == core.node_address and welcome.pid > 0
    ref = ray.put(b"x" * 10)
    fetched = _node_request(w.Fetch([ref.binary()]))
    assert isinstance(fetched, w.FetchedObjects)
    [(oid, is_error, _data)] = fetched.objects
    assert oid == ref.binary() and is_error is False
    actor = Named.options(name="typed-replies", namespace="protocol-test").remote()
    assert ray.get(actor.hi.remote()) == "hi"
    found = _node_request(w.LookupActor("typed-replies", "protocol-test"))
    assert isinstance(found, w.ActorFound) and found.actor_id == actor._actor_id
    again = Named.options(name="typed-replies", namespace="protocol-test",
                          get_if_exists=True).remote()
    assert again._actor_id == actor._actor_id
    assert ray.get(ray.get_actor("typed-replies", namespace="protocol-test").hi.remote()) == "hi"
    ray.kill(actor)


def test_the_answers_between_nodes_are_typed() -> None:
    """What one node asks another -- an object's entry at its owner, a pull's payload
    layout, a hosted actor, a bundle reservation -- is answered with a reply class.
    Asked here on a raw link to the node, as a peer node would."""
    small = ray.put(b"x" * 10)
    large = ray.put(b"y" * (2 << 20))  # in the store: its entry names where
    entries = _node_request(w.FetchFromOwner("0" * 32, [small.binary(), large.binary()]))
    assert [type(e) for e in entries] == [w.OwnerEntry, w.OwnerEntry]
    inline, stored = entries
    assert inline.object_id == small.binary() and inline.is_error is False
    assert inline.locations is None and inline.data is not None
    assert stored.object_id == large.binary() and stored.data is None
    node_hex = _node_request(w.AdminCall("cluster_info"))["node_id"]
    assert stored.locations == [node_hex]
    layout = _node_request(w.PayloadInfo(large.binary()))
    assert isinstance(layout, w.PayloadLayout)
    assert layout.payload_len >= 2 << 20 and layout.meta_len >= 0 and layout.data_len >= 0
    assert _node_request(w.PayloadInfo(b"\x07" * 28)) is None  # not in the store
    actor = Named.remote()
    assert ray.get(actor.hi.remote()) == "hi"
    hosted = _node_request(w.RemoteActorSpec(actor._actor_id))
    assert isinstance(hosted, w.HostedActor)
    assert hosted.spec.actor_id == actor._actor_id and hosted.state == "alive"
    assert hosted.cause is None
    refused = _node_request(w.PrepareBundles("typed-reply-pg", [(0, {"CPU": 1e6})]))
    assert refused == w.BundlesPrepared(False, refused.why) and "cannot take" in refused.why
    ray.kill(actor)
    assert ray.get(plus_one.remote(1)) == 2  # the node serves on


@ray.remote
class Gate:
    def __init__(self) -> None:
        import asyncio

        self.opened = asyncio.Event()

    async def wait(self) -> int:
        await self.opened.wait()
        return 1

    async def open(self) -> None:
        self.opened.set()


@ray.remote
def get_first(refs: list) -> int:
    return ray.get(refs[0])


def test_the_task_call_says_where_a_task_is() -> None:
    """``AdminCall("task", id)`` answers what the node knows of a task: what a
    test that waited too long prints."""

    def where(ref: Any) -> dict:
        return _node_request(w.AdminCall("task", (ref.task_id().hex(),)))

    gate = Gate.remote()
    waiting = plus_one.remote(gate.wait.remote())  # a data edge not ready yet
    blocked = get_first.remote([gate.wait.remote()])  # running, blocked in get
    seen = until(lambda: (where(waiting), where(blocked))
                 if "running" in where(blocked) and where(blocked)["running"]["blocked"]
                 else None, "the task blocked in get")
    assert seen[0]["waiting"]["deps_missing"] == 1, seen[0]
    assert seen[1]["running"]["pid"], seen[1]
    ray.get(gate.open.remote())
    assert ray.get([waiting, blocked]) == [2, 1]
    # The result reaches the driver first (pushed by the worker), the node after.
    until(lambda: not ({"waiting", "running"} & set(where(waiting))),
          "the node to see the task done")
    assert _node_request(w.AdminCall("task", ("00" * 16,))) == {}
    with pytest.raises(transport.RemoteError, match="task id 'zz' is not hex"):
        _node_request(w.AdminCall("task", ("zz",)))
    ray.kill(gate)
