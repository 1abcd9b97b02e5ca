"""The messages between core workers, workers, actor processes and nodes.

Every message is a frozen attrs class; each endpoint dispatches what it receives
through one `transport.Dispatcher` (its registry: message class -> handler, one dict
lookup on ``type(message)``), which runs the checks declared on the fields below
before the handler. A message of a class an endpoint does not handle (garbage, a
tuple, another endpoint's message) or with fields of the wrong type is refused: a
request gets a `transport.BadMessage` naming the endpoint and the message's class,
a one-way message is logged and dropped, and the endpoint keeps serving. The store
(``store._messages``) and the GCS (``gcs._messages``) speak the same way.

Core worker (driver or worker) -> node, one-way unless marked *request*:
  `Hello`            *request*: register the link (`HelloInfo`: the role's extras;
                     answered with a `HelloReply`, the node's facts)
  `Bye`              a driver shuts down: no grace period when its link closes
  `Export`           a function, sent once before use
  `Submit`           a batch of `TaskSpec`, `ActorSpec` and `CallSpec`, in order
  `Put`              a batch of put objects (also the large arguments of a call)
  `Fetch`            *request*: answered once every object is ready (`FetchedObjects`)
  `Rebuild`          *request*: a reader found these objects gone from the store
  `Free`             the owner dropped these objects
  `CancelTask`       cancel a task (and, ``recursive``, the tasks it submitted)
  `Blocked` / `Unblocked`  a task waits in ``get`` (its CPU is lent meanwhile)
  `GetFunction`      *request*: a function's export record
  `AdminCall`        *request*: introspection and admin (``node._calls``)
  `HoldActor`, `DropActor`  the sender's first handle to an actor appeared / its
                     last one went (`HoldActor` as a request: answered once held)
  `CancelActorCall`  ``cancel(ref)`` of an actor call sent through the node
  `CreateNamedActor`, `LookupActor`, `RouteActor`, `KillActor`, `GetActorState`,
  `ListActors`, `ActorNames`, `StartSupervisor`  *requests* of the actor manager
                     (answers: `ActorFound`, `ActorRoute`)
Worker -> node:
  `TaskDone`         a task's results (``pushed``: they went to their owner too)
  `StreamItems`      values a generator yielded
Actor worker -> node:
  `ActorUp`          registered; callers may dial ``direct_address``
  `ActorReady`       the constructor finished (``error``: its traceback text)
  `ActorDone`        a call's results (``ran``: it joins the actor's call log)
  `ActorDoneDirect`  large results of direct calls (the node holds them)
  `ActorLog`         a direct call of an actor that replays ran: log it
  `ActorCheckpoint`  the actor's state after the calls reported before it
  `ActorExit`        it called ``exit_actor()``: end it for good
Node -> core worker:
  `ObjectsReady`     results of tasks it owns (also a worker's push to an owner)
  `ReleaseObjects`   the node holds these large objects now: drop your store refs
  `ForwardedLog`     a worker's output lines, for a driver that prints them
  `FaultRules`       a fault-rule command (``testing.faults``)
Node -> worker:
  `Execute`          run a task (``owner_address``: push the results there too)
  `InterruptTask`    cancel a queued or running task
  `ExitWorker`       exit now
Node -> actor worker:
  `CreateActor`      (re)create an actor (``recovery``: checkpoint and calls to
                     replay first, see ``node.actor_manager._replay``)
  `ActorCall`        one method call
  `ActorCallLogged`  the node holds that direct call's log entry: answer its caller
  `CancelActorCall`  drop the call if queued, cancel it if running
  `StopActor`        end one actor of a shared process
Caller <-> actor process (the direct link, ``core_worker._direct_calls``):
  `DirectCall` -> `DirectResult` (``results`` None: the actor is not there);
  `CancelActorCall` behind the call it cancels.
Core worker -> node, placement groups (*requests*, ``util.placement_group``):
  `CreatePlacementGroup`, `RemovePlacementGroup`, `GetPlacementGroup`,
  `PlacementGroupTable`
Node <-> node (``node._peers``; node ids are hex strings; one-way messages queued
together travel as one `PeerBatch`, each then dispatched in order):
  `Hello` (role ``node``), `AdminCall` (``local_tree``, ``fault``, ...)
  tasks (``global_scheduler._forwarding``): `ForwardTasks`, `ForwardedResults`,
  `CancelForwarded`
  objects (``object_manager._remote``): `FetchFromOwner`, `OwnsPrefix` and
  `ReportLost` (*requests*), `FreeCopies`
  transfers (``object_manager._transfer``): `PayloadInfo`, `PayloadChunk`
  (*requests*); tests, benchmarks and admin tools: `PullObject`, `DropCopy`,
  `LocateObject`, `GetTransferStatistics`; fault hooks `SlowChunks`, `DelayStoreHold`
  actors (``actor_manager._remote``): `RemoteActorCreate`, `RemoteActorCall`,
  `RemoteActorDone`, `RemoteActorDied`, `RemoteActorEnd`, `RemoteActorKill`,
  `RemoteActorHold`, `RemoteActorDrop`, `RemoteActorCancel`, `RemoteActorSpec`
  (*request*)
  placement groups (``placement_groups``, coordinator -> node): `PrepareBundles`,
  `CommitBundles`, `RemoveGroup` (*requests*), `ReleaseBundles`

The hot ones (a task's submit, execute, done and ready; an actor call's) pickle as
their class and a tuple of their fields (`transport.compact`): as small and as quick
as the tuples they replace. Their checks are shallow (the container's type, not
every item's): they run once per message on the receiving side.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

import transport
from transport import check

__all__ = [
    "ActorCall",
    "ActorCallLogged",
    "ActorCheckpoint",
    "ActorDone",
    "ActorDoneDirect",
    "ActorExit",
    "ActorFound",
    "ActorLog",
    "ActorNames",
    "ActorReady",
    "ActorRoute",
    "ActorUp",
    "AdminCall",
    "Blocked",
    "Bye",
    "CancelActorCall",
    "CancelForwarded",
    "CancelTask",
    "CommitBundles",
    "CreateActor",
    "CreateNamedActor",
    "CreatePlacementGroup",
    "DelayStoreHold",
    "DirectCall",
    "DirectResult",
    "DropActor",
    "DropCopy",
    "Execute",
    "ExitWorker",
    "Export",
    "FaultRules",
    "Fetch",
    "FetchFromOwner",
    "FetchedObjects",
    "ForwardTasks",
    "ForwardedLog",
    "ForwardedResults",
    "Free",
    "FreeCopies",
    "GetActorState",
    "GetFunction",
    "GetPlacementGroup",
    "GetTransferStatistics",
    "Hello",
    "HelloInfo",
    "HelloReply",
    "HoldActor",
    "InterruptTask",
    "KillActor",
    "ListActors",
    "LocateObject",
    "LookupActor",
    "ObjectsReady",
    "OwnsPrefix",
    "PayloadChunk",
    "PayloadInfo",
    "PeerAck",
    "PeerBatch",
    "PlacementGroupTable",
    "PrepareBundles",
    "PullObject",
    "Put",
    "Rebuild",
    "ReleaseBundles",
    "ReleaseObjects",
    "RemoteActorCall",
    "RemoteActorCancel",
    "RemoteActorCreate",
    "RemoteActorDied",
    "RemoteActorDone",
    "RemoteActorDrop",
    "RemoteActorEnd",
    "RemoteActorHold",
    "RemoteActorKill",
    "RemoteActorSpec",
    "RemoveGroup",
    "RemovePlacementGroup",
    "ReportLost",
    "RouteActor",
    "SlowChunks",
    "StartSupervisor",
    "StopActor",
    "StreamItems",
    "Submit",
    "TaskDone",
    "Unblocked",
]

_id = check(v.instance_of(bytes))
_opt_id = check(v.optional(v.instance_of(bytes)))
_seq = check(v.instance_of((list, tuple)))  # a batch: ids, specs, (oid, is_error, data)
_flag = check(v.instance_of(bool))
_int = check(v.instance_of(int))
_str = check(v.instance_of(str))
_opt_str = check(v.optional(v.instance_of(str)))
_dict = check(v.instance_of(dict))


def _spec(kind: str) -> dict[str, Any]:
    """A field holding a spec of the class named ``kind`` (``TaskSpec``,
    ``CallSpec``, ``ActorSpec``), checked by name: the classes live above this
    module's imports."""

    def is_spec(instance: Any, attribute: Any, value: Any) -> None:
        if type(value).__name__ != kind:
            raise TypeError(f"'{attribute.name}' must be a {kind}, got {value!r:.100}")

    return check(is_spec)


# -- core worker -> node ---------------------------------------------------------------


def _nested(cls: type) -> dict[str, Any]:
    """A field holding a ``cls`` whose own fields' checks run too (a dispatcher
    checks the fields of the message it routes, not those of what they hold)."""
    checks = [(a, a.metadata["check"]) for a in attrs.fields(cls) if "check" in a.metadata]

    def is_checked(instance: Any, attribute: Any, value: Any) -> None:
        if type(value) is not cls:
            raise TypeError(f"'{attribute.name}' must be a {cls.__name__}, got {value!r:.100}")
        for field, field_check in checks:
            try:
                field_check(value, field, getattr(value, field.name))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"in '{attribute.name}': {exc.args[0] if exc.args else exc}") \
                    from None

    return check(is_checked)


@transport.compact
@attrs.frozen(slots=False)
class HelloInfo:
    """What `Hello` tells beyond the role: ``id_prefix``, the prefix of the ids the
    process makes (every role but a node); a node's ``node_id`` (hex); a driver's
    ``job_id``, ``log_to_driver``, ``direct_address`` (where its node's workers push
    its results), ``namespace``, and ``rejoin`` (back after losing its link)."""

    id_prefix: bytes | None = attrs.field(default=None, metadata=_opt_id)
    node_id: str | None = attrs.field(default=None, metadata=_opt_str)
    job_id: bytes | None = attrs.field(default=None, metadata=_opt_id)
    log_to_driver: bool = attrs.field(default=False, metadata=_flag)
    direct_address: str | None = attrs.field(default=None, metadata=_opt_str)
    namespace: str | None = attrs.field(default=None, metadata=_opt_str)
    rejoin: bool = attrs.field(default=False, metadata=_flag)


@transport.compact
@attrs.frozen(slots=False)
class Hello:
    """*Request*: register a link: ``role`` is ``driver``, ``worker``,
    ``actor_worker`` or ``node``; answered with a `HelloReply`."""

    role: str = attrs.field(metadata=_str)
    worker_id: bytes | None = attrs.field(metadata=_opt_id)
    pid: int = attrs.field(metadata=_int)
    info: HelloInfo = attrs.field(factory=HelloInfo, metadata=_nested(HelloInfo))


@attrs.frozen(slots=False)
class Bye:
    """A driver shuts down: when its link closes it is gone (no grace period)."""


@transport.compact
@attrs.frozen(slots=False)
class Export:
    """A function's pickled definition, sent once before its first task."""

    function_id: bytes = attrs.field(metadata=_id)
    blob: bytes = attrs.field(metadata=check(v.instance_of((bytes, bytearray, memoryview))))
    name: str = attrs.field(metadata=_str)
    sys_path: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class Submit:
    """Task specs, actor creations and actor calls, in the order they were made."""

    specs: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class Put:
    """Put objects ``[(object_id, is_error, data), ...]`` (``data`` ``STORE``: in
    the store)."""

    objects: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class Fetch:
    """*Request*: the objects' entries, once every one is ready."""

    object_ids: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class Rebuild:
    """*Request*: a reader found these gone from the node's store; answered as a
    `Fetch` once each is ready again (rebuilt from its lineage, or an error)."""

    object_ids: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class Free:
    """The owner dropped these objects."""

    object_ids: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class CancelTask:
    """``cancel(ref, force=, recursive=)`` of a task."""

    task_id: bytes = attrs.field(metadata=_id)
    force: bool = attrs.field(metadata=_flag)
    recursive: bool = attrs.field(metadata=_flag)


@transport.compact
@attrs.frozen(slots=False)
class Blocked:
    """The worker's task waits in ``get``: its resources are lent meanwhile."""

    task_id: bytes = attrs.field(metadata=_id)


@transport.compact
@attrs.frozen(slots=False)
class Unblocked:
    """The worker's task runs again after a `Blocked`."""

    task_id: bytes = attrs.field(metadata=_id)


@transport.compact
@attrs.frozen(slots=False)
class GetFunction:
    """*Request*: a function's export record (the node's, or the GCS's)."""

    function_id: bytes = attrs.field(metadata=_id)


@transport.compact
@attrs.frozen(slots=False)
class AdminCall:
    """*Request*: an introspection or admin call by name (``node._calls``:
    ``status``, ``tree``, ``nodes``, ``crash``, ``fault``, ...); an unknown name
    is refused with an error naming it."""

    name: str = attrs.field(metadata=_str)
    args: tuple = attrs.field(default=(), metadata=check(v.instance_of(tuple)))


@transport.compact
@attrs.frozen(slots=False)
class HoldActor:
    """The sender's first handle to the actor appeared: it holds the actor (sent
    as a request when the handle must not be used before the node counted it)."""

    actor_id: bytes = attrs.field(metadata=_id)


@transport.compact
@attrs.frozen(slots=False)
class DropActor:
    """The sender holds no handle to the actor any more."""

    actor_id: bytes = attrs.field(metadata=_id)


@transport.compact
@attrs.frozen(slots=False)
class CancelActorCall:
    """``cancel(ref)`` of an actor call: to the node for a call sent through it, to
    the actor's process for one it queued or runs (or on the direct link, behind
    the call)."""

    actor_id: bytes = attrs.field(metadata=_id)
    task_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class CreateNamedActor:
    """*Request*: create a named (or detached) actor, answered once the name is
    taken: None, or (``get_if_exists``) the `ActorFound` holding it, or an error."""

    spec: Any = attrs.field(metadata=_spec("ActorSpec"))
    get_if_exists: bool = attrs.field(metadata=_flag)


@attrs.frozen(slots=False)
class LookupActor:
    """*Request*: ``get_actor(name, namespace)`` -> `ActorFound`."""

    name: str = attrs.field(metadata=_str)
    namespace: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class RouteActor:
    """*Request*: where callers reach the actor directly: an `ActorRoute`, or None
    (through the node)."""

    actor_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class KillActor:
    """*Request*: ``kill(actor, no_restart=)``."""

    actor_id: bytes = attrs.field(metadata=_id)
    no_restart: bool = attrs.field(metadata=_flag)


@attrs.frozen(slots=False)
class GetActorState:
    """*Request*: the actor's state record (``describe``)."""

    actor_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class ListActors:
    """*Request*: the state records of the node's actors."""


@attrs.frozen(slots=False)
class ActorNames:
    """*Request*: ``(namespace, name)`` of every live named actor."""


@attrs.frozen(slots=False)
class StartSupervisor:
    """*Request*: start a user supervisor of actors (``api.supervisor``)."""

    name: str = attrs.field(metadata=_str)
    strategy: str = attrs.field(metadata=_str)
    max_restarts: int = attrs.field(metadata=_int)
    max_seconds: float = attrs.field(metadata=check(v.instance_of(float)))


# -- worker -> node ----------------------------------------------------------------------


@transport.compact
@attrs.frozen(slots=False)
class TaskDone:
    """A task finished: its results ``[(object_id, is_error, data), ...]``;
    ``retry``: run it again (a retryable failure); ``pushed``: the worker pushed
    them to their owner too."""

    task_id: bytes = attrs.field(metadata=_id)
    results: list = attrs.field(metadata=_seq)
    retry: bool = attrs.field(metadata=_flag)
    pushed: bool = attrs.field(default=False, metadata=_flag)


@transport.compact
@attrs.frozen(slots=False)
class StreamItems:
    """Values a generator task or method yielded, owned by ``owner``; ``push``:
    pushed to the owner as they come (not for ``num_returns="dynamic"``)."""

    owner: bytes = attrs.field(metadata=_id)
    results: list = attrs.field(metadata=_seq)
    push: bool = attrs.field(metadata=_flag)


# -- actor worker -> node -----------------------------------------------------------------


@transport.compact
@attrs.frozen(slots=False)
class ActorUp:
    """An actor worker registered (after `Hello`): callers may dial
    ``direct_address`` (None: calls go through the node)."""

    worker_id: bytes = attrs.field(metadata=_id)
    direct_address: str | None = attrs.field(metadata=_opt_str)


@transport.compact
@attrs.frozen(slots=False)
class ActorReady:
    """The actor's constructor finished; ``error``: the text of its exception."""

    actor_id: bytes = attrs.field(metadata=_id)
    incarnation: int = attrs.field(metadata=_int)
    error: str | None = attrs.field(metadata=_opt_str)


@transport.compact
@attrs.frozen(slots=False)
class ActorDone:
    """A call's results; ``ran`` (actors that replay only): the method ran, so the
    call joins the actor's call log."""

    actor_id: bytes = attrs.field(metadata=_id)
    task_id: bytes = attrs.field(metadata=_id)
    results: list = attrs.field(metadata=_seq)
    ran: bool = attrs.field(default=False, metadata=_flag)


@transport.compact
@attrs.frozen(slots=False)
class ActorDoneDirect:
    """Large results of direct calls: the node holds them, like any result."""

    actor_id: bytes = attrs.field(metadata=_id)
    results: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class ActorLog:
    """A direct call of an actor that replays ran: log it (answered with
    `ActorCallLogged`; only then does its caller hear)."""

    actor_id: bytes = attrs.field(metadata=_id)
    incarnation: int = attrs.field(metadata=_int)
    spec: Any = attrs.field(metadata=_spec("CallSpec"))
    results: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class ActorCheckpoint:
    """The actor's state after every call it reported before: it replaces the log."""

    actor_id: bytes = attrs.field(metadata=_id)
    incarnation: int = attrs.field(metadata=_int)
    state: bytes = attrs.field(metadata=check(v.instance_of((bytes, bytearray, memoryview))))


@transport.compact
@attrs.frozen(slots=False)
class ActorExit:
    """The actor called ``exit_actor()``: end it for good."""

    actor_id: bytes = attrs.field(metadata=_id)
    incarnation: int = attrs.field(metadata=_int)


# -- node -> core worker --------------------------------------------------------------------


@transport.compact
@attrs.frozen(slots=False)
class ObjectsReady:
    """Ready objects ``[(object_id, is_error, data), ...]`` the receiver owns."""

    objects: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class ReleaseObjects:
    """The node holds these large objects now: the producer drops its store refs."""

    object_ids: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class ForwardedLog:
    """Output lines of a worker (``stream`` ``out`` or ``err``), each to be printed
    after ``prefix``."""

    prefix: str = attrs.field(metadata=_str)
    stream: str = attrs.field(metadata=_str)
    lines: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class FaultRules:
    """A fault-rule command for the receiver's transport (``transport.faults.apply``)."""

    command: dict = attrs.field(metadata=_dict)


# -- node -> worker -------------------------------------------------------------------------


@transport.compact
@attrs.frozen(slots=False)
class Execute:
    """Run ``spec`` with the inline values of its dependencies; ``owner_address``:
    where its owner listens for results pushed directly; ``gpu_ids``: the GPUs
    it was given."""

    spec: Any = attrs.field(metadata=_spec("TaskSpec"))
    dep_data: list = attrs.field(metadata=_seq)
    owner_address: str | None = attrs.field(default=None, metadata=_opt_str)
    gpu_ids: tuple = attrs.field(default=(), metadata=check(v.instance_of(tuple)))


@transport.compact
@attrs.frozen(slots=False)
class InterruptTask:
    """Cancel a task queued or running in the worker."""

    task_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class ExitWorker:
    """Exit now (the node no longer wants this process)."""


# -- node -> actor worker -------------------------------------------------------------------


@transport.compact
@attrs.frozen(slots=False)
class CreateActor:
    """Create (or re-create) an actor in this process. ``recovery``: None, or
    ``(checkpoint | None, [(CallSpec, dep_data | None), ...])`` to restore and
    replay before it is ready."""

    spec: Any = attrs.field(metadata=_spec("ActorSpec"))
    incarnation: int = attrs.field(metadata=_int)
    dep_data: list = attrs.field(metadata=_seq)
    class_record: dict | None = attrs.field(metadata=check(v.optional(v.instance_of(dict))))
    gpu_ids: tuple = attrs.field(default=(), metadata=check(v.instance_of(tuple)))
    recovery: tuple | None = attrs.field(default=None,
                                         metadata=check(v.optional(v.instance_of(tuple))))


@transport.compact
@attrs.frozen(slots=False)
class ActorCall:
    """One method call, with the inline values of its dependencies (None: none)."""

    spec: Any = attrs.field(metadata=_spec("CallSpec"))
    dep_data: list | None = attrs.field(metadata=check(v.optional(v.instance_of(list))))


@transport.compact
@attrs.frozen(slots=False)
class ActorCallLogged:
    """The node holds the log entry of that direct call: answer its caller."""

    actor_id: bytes = attrs.field(metadata=_id)
    task_id: bytes = attrs.field(metadata=_id)


@transport.compact
@attrs.frozen(slots=False)
class StopActor:
    """End one actor of a shared process."""

    actor_id: bytes = attrs.field(metadata=_id)


# -- caller <-> actor process (direct) ------------------------------------------------------


@transport.compact
@attrs.frozen(slots=False)
class DirectCall:
    """A method call straight to the actor's process."""

    spec: Any = attrs.field(metadata=_spec("CallSpec"))


@transport.compact
@attrs.frozen(slots=False)
class DirectResult:
    """A direct call's results; None: the actor is not in that process (any more),
    the caller goes through the node."""

    task_id: bytes = attrs.field(metadata=_id)
    results: list | None = attrs.field(metadata=check(v.optional(v.instance_of(list))))


# -- placement groups: core worker -> node ----------------------------------------------------


@attrs.frozen(slots=False)
class CreatePlacementGroup:
    """*Request*: ``placement_group(...)``: ``request`` holds ``pg_id`` (hex),
    ``bundles``, ``strategy``, ``name``, ``namespace``, ``lifetime``, ``job_id``."""

    request: dict = attrs.field(metadata=_dict)


@attrs.frozen(slots=False)
class RemovePlacementGroup:
    """*Request*: ``remove_placement_group``, wherever the group is coordinated."""

    pg_id: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class GetPlacementGroup:
    """*Request*: the live group named ``name`` in ``namespace``."""

    name: str = attrs.field(metadata=_str)
    namespace: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class PlacementGroupTable:
    """*Request*: one group's state (``pg_id`` hex), or every group's (None)."""

    pg_id: str | None = attrs.field(metadata=_opt_str)


# -- node <-> node ------------------------------------------------------------------------------
#
# Over ``node._peers`` (node ids are hex strings). One-way messages queued together
# travel as one `PeerBatch`, served in order by the receiving node and acknowledged
# by a `PeerAck`.


@transport.compact
@attrs.frozen(slots=False)
class PeerBatch:
    """One-way messages to one node, queued together, in order: the ``seq``-th batch
    of ``sender``'s link (the receiver handles each number once, see ``node._peers``)."""

    messages: list = attrs.field(metadata=_seq)
    sender: str = attrs.field(metadata=_str)
    seq: int = attrs.field(metadata=_int)


@transport.compact
@attrs.frozen(slots=False)
class PeerAck:
    """receiver -> sender, on the link the batch came by: batches up to ``seq`` are
    handled (``receiver`` is the acknowledging node's id)."""

    receiver: str = attrs.field(metadata=_str)
    seq: int = attrs.field(metadata=_int)


@transport.compact
@attrs.frozen(slots=False)
class ForwardTasks:
    """origin -> target: run these tasks (with the export records of their functions:
    the target must not depend on the GCS having them yet)."""

    origin: str = attrs.field(metadata=_str)
    specs: list = attrs.field(metadata=_seq)
    functions: dict = attrs.field(metadata=_dict)


@transport.compact
@attrs.frozen(slots=False)
class ForwardedResults:
    """target -> origin: results of forwarded tasks (``STORE``: the value stays in the
    target's store)."""

    target: str = attrs.field(metadata=_str)
    results: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class CancelForwarded:
    """origin -> target: cancel a forwarded task."""

    task_id: bytes = attrs.field(metadata=_id)
    force: bool = attrs.field(metadata=_flag)
    recursive: bool = attrs.field(metadata=_flag)


@transport.compact
@attrs.frozen(slots=False)
class FetchFromOwner:
    """*Request* to the owner's node: each object's entry once ready, ``(oid,
    is_error, data, locations)`` (``locations``: the nodes holding a stored value)."""

    requester: str = attrs.field(metadata=_str)
    object_ids: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class OwnsPrefix:
    """*Request*: is a live process with this id prefix on that node?"""

    prefix: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class ReportLost:
    """*Request* to the owner's node: every copy it named for the object failed to
    copy to ``requester`` (``why``); the owner rebuilds it if its store lost it too,
    and answers as `FetchFromOwner` does once it is ready again."""

    requester: str = attrs.field(metadata=_str)
    object_id: bytes = attrs.field(metadata=_id)
    why: str = attrs.field(metadata=_str)


@transport.compact
@attrs.frozen(slots=False)
class FreeCopies:
    """The owner freed these objects: drop your copies."""

    object_ids: list = attrs.field(metadata=_seq)


@transport.compact
@attrs.frozen(slots=False)
class PayloadInfo:
    """*Request* (a pull's first step): ``(meta_len, data_len, buffer_sizes,
    payload_len)`` of the object in the source's store, or None."""

    object_id: bytes = attrs.field(metadata=_id)


def _non_negative(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"'{attribute.name}' must be an int >= 0, got {value!r:.100}")


@transport.compact
@attrs.frozen(slots=False)
class PayloadChunk:
    """*Request*: ``length`` bytes of the object's payload at ``offset`` (out of band)."""

    object_id: bytes = attrs.field(metadata=_id)
    offset: int = attrs.field(metadata=check(_non_negative))
    length: int = attrs.field(metadata=check(_non_negative))


@attrs.frozen(slots=False)
class PullObject:
    """*Request* (tests, benchmarks): copy the object here from one of
    ``locations`` (node ids, tried in order)."""

    object_id: bytes = attrs.field(metadata=_id)
    locations: list = attrs.field(metadata=_seq)


@attrs.frozen(slots=False)
class DropCopy:
    """*Request*: drop this node's copy of a pulled object."""

    object_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class LocateObject:
    """*Request*: the nodes holding the object, as this node knows them."""

    object_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class GetTransferStatistics:
    """*Request*: the node's ``TransferStatistics``."""


def _delay(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) not in (int, float) or not 0.0 <= value <= 60.0:
        raise ValueError(f"'{attribute.name}' must be seconds within [0, 60], got {value!r:.100}")


@attrs.frozen(slots=False)
class SlowChunks:
    """*Request*, a fault hook: the node waits ``chunk_delay`` seconds before
    serving each chunk it is asked for (0: none)."""

    chunk_delay: float = attrs.field(metadata=check(_delay))


@attrs.frozen(slots=False)
class DelayStoreHold:
    """*Request*, a fault hook: the node waits ``hold_delay`` seconds before taking
    its store ref on a reported large value (0: none)."""

    hold_delay: float = attrs.field(metadata=check(_delay))


@attrs.frozen(slots=False)
class RemoteActorCreate:
    """creating node -> host: create the actor there (``origin``: the creating node)."""

    spec: Any = attrs.field(metadata=_spec("ActorSpec"))
    restarts: int = attrs.field(metadata=_int)
    origin: str = attrs.field(metadata=_str)
    dep_data: list = attrs.field(metadata=_seq)
    class_record: dict | None = attrs.field(metadata=check(v.optional(v.instance_of(dict))))


@transport.compact
@attrs.frozen(slots=False)
class RemoteActorCall:
    """calling node -> host: one method call."""

    spec: Any = attrs.field(metadata=_spec("CallSpec"))
    dep_data: list = attrs.field(metadata=_seq)
    origin: str = attrs.field(metadata=_str)


@transport.compact
@attrs.frozen(slots=False)
class RemoteActorDone:
    """host -> calling node: a call's results."""

    actor_id: bytes = attrs.field(metadata=_id)
    task_id: bytes = attrs.field(metadata=_id)
    results: list = attrs.field(metadata=_seq)
    host: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class RemoteActorDied:
    """host -> creating node: the actor is dead, of ``cause``."""

    actor_id: bytes = attrs.field(metadata=_id)
    cause: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class RemoteActorEnd:
    """creating node -> host: end the actor, of ``cause``."""

    actor_id: bytes = attrs.field(metadata=_id)
    cause: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class RemoteActorKill:
    """-> host: ``kill(actor, no_restart=)``."""

    actor_id: bytes = attrs.field(metadata=_id)
    no_restart: bool = attrs.field(metadata=_flag)


@attrs.frozen(slots=False)
class RemoteActorHold:
    """-> host: the process ``holder`` (a worker id) holds a handle to the actor."""

    actor_id: bytes = attrs.field(metadata=_id)
    holder: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class RemoteActorDrop:
    """-> host: ``holder`` holds no handle to the actor any more."""

    actor_id: bytes = attrs.field(metadata=_id)
    holder: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class RemoteActorCancel:
    """-> host: ``cancel(ref)`` of a call forwarded there."""

    actor_id: bytes = attrs.field(metadata=_id)
    task_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class RemoteActorSpec:
    """*Request* -> host: ``(ActorSpec, state, cause)`` of the actor it hosts."""

    actor_id: bytes = attrs.field(metadata=_id)


@attrs.frozen(slots=False)
class PrepareBundles:
    """*Request*, coordinator -> node: phase one, take bundles ``items`` (``[(index,
    {resource: amount}), ...]``) of the group, all or none; answers whether it did."""

    pg_id: str = attrs.field(metadata=_str)
    items: list = attrs.field(metadata=_seq)


@attrs.frozen(slots=False)
class CommitBundles:
    """*Request*, coordinator -> node: phase two, the prepared bundles' resources
    join the node."""

    pg_id: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class ReleaseBundles:
    """Coordinator -> node (a request or not): give back what the group holds there."""

    pg_id: str = attrs.field(metadata=_str)


@attrs.frozen(slots=False)
class RemoveGroup:
    """*Request* -> the group's coordinator: remove it."""

    pg_id: str = attrs.field(metadata=_str)


# -- replies ---------------------------------------------------------------------------------
#
# What the requests above are answered with, where the answer has fields. A reply
# wakes the request that waits for it and is never dispatched, so no registry checks
# it; it is typed so that both ends name its fields instead of counting them.


@transport.compact
@attrs.frozen(slots=False)
class HelloReply:
    """The node's answer to `Hello`: its facts, for errors that name it (``pid``,
    ``head``, ``log_dir``) and the links the process opens next (``store_address``,
    ``gcs_address``). ``peer_handled``, to a node: the last of its numbered batches
    handled here (it resends those after)."""

    node_id: bytes
    address: str
    store_address: str
    gcs_address: str | None
    session_dir: str
    log_dir: str
    pid: int
    head: bool
    peer_handled: int = 0


@transport.compact
@attrs.frozen(slots=False)
class FetchedObjects:
    """The answer to `Fetch` and `Rebuild`: ``[(object_id, is_error, data), ...]``,
    in the order asked."""

    objects: list


@transport.compact
@attrs.frozen(slots=False)
class ActorRoute:
    """The answer to `RouteActor` when callers may reach the actor directly (else
    None): its process's ``address`` and the ``incarnation`` that listens there."""

    address: str
    incarnation: int


@transport.compact
@attrs.frozen(slots=False)
class ActorFound:
    """The answer to `LookupActor`, and to `CreateNamedActor` with ``get_if_exists``
    when the name is taken: the actor's id and its class's ``ClassMeta``."""

    actor_id: bytes
    meta: Any


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
