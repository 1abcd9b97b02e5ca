"""What core workers (drivers, workers) and actor processes send their node, and
the node's typed answers.

These are the messages a node's dispatcher serves for the processes of its own
node (and for drivers that joined from elsewhere): registration, submission, puts
and fetches, a task's or an actor call's results, the actor manager's and the
placement groups' requests. Every process that talks to a node imports this
vocabulary; the index of all of them is ``_wire``'s docstring."""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

import transport
from transport import check

from ._wire_checks import DICT, FLAG, ID, INT, OPT_ID, OPT_STR, SEQ, STR, nested, spec_named

__all__ = [
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
    "CancelTask",
    "CreateNamedActor",
    "CreatePlacementGroup",
    "DropActor",
    "Export",
    "Fetch",
    "FetchedObjects",
    "Free",
    "GetActorState",
    "GetFunction",
    "GetPlacementGroup",
    "Hello",
    "HelloInfo",
    "HelloReply",
    "HoldActor",
    "KillActor",
    "ListActors",
    "LookupActor",
    "PlacementGroupTable",
    "Put",
    "Rebuild",
    "RemovePlacementGroup",
    "RouteActor",
    "StartSupervisor",
    "StreamItems",
    "Submit",
    "TaskDone",
    "Unblocked",
]


# -- core worker -> node ---------------------------------------------------------------


@transport.compact
@transport.message
class HelloInfo:
    """What `Hello` tells beyond the role: ``id_prefix``, the prefix of the ids the
    process makes (every role but a node); a node's ``node_id`` (hex); a driver's
    ``job_id``, ``log_to_driver``, ``direct_address`` (where its node's workers push
    its results), ``namespace``, and ``rejoin`` (back after losing its link)."""

    id_prefix: bytes | None = attrs.field(default=None, metadata=OPT_ID)
    node_id: str | None = attrs.field(default=None, metadata=OPT_STR)
    job_id: bytes | None = attrs.field(default=None, metadata=OPT_ID)
    log_to_driver: bool = attrs.field(default=False, metadata=FLAG)
    direct_address: str | None = attrs.field(default=None, metadata=OPT_STR)
    namespace: str | None = attrs.field(default=None, metadata=OPT_STR)
    rejoin: bool = attrs.field(default=False, metadata=FLAG)


@transport.compact
@transport.message
class Hello:
    """*Request*: register a link: ``role`` is ``driver``, ``worker``,
    ``actor_worker`` or ``node``; answered with a `HelloReply`."""

    role: str = attrs.field(metadata=STR)
    worker_id: bytes | None = attrs.field(metadata=OPT_ID)
    pid: int = attrs.field(metadata=INT)
    info: HelloInfo = attrs.field(factory=HelloInfo, metadata=nested(HelloInfo))


@transport.message
class Bye:
    """A driver shuts down: when its link closes it is gone (no grace period)."""


@transport.compact
@transport.message
class Export:
    """A function's pickled definition, sent once before its first task."""

    function_id: bytes = attrs.field(metadata=ID)
    blob: bytes = attrs.field(metadata=check(v.instance_of((bytes, bytearray, memoryview))))
    name: str = attrs.field(metadata=STR)
    sys_path: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class Submit:
    """Task specs, actor creations and actor calls, in the order they were made."""

    specs: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class Put:
    """Put objects ``[(object_id, is_error, data), ...]`` (``data`` ``STORE``: in
    the store)."""

    objects: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class Fetch:
    """*Request*: the objects' entries, once every one is ready."""

    object_ids: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class Rebuild:
    """*Request*: a reader found these gone from the node's store; answered as a
    `Fetch` once each is ready again (rebuilt from its lineage, or an error)."""

    object_ids: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class Free:
    """The owner dropped these objects."""

    object_ids: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class CancelTask:
    """``cancel(ref, force=, recursive=)`` of a task."""

    task_id: bytes = attrs.field(metadata=ID)
    force: bool = attrs.field(metadata=FLAG)
    recursive: bool = attrs.field(metadata=FLAG)


@transport.compact
@transport.message
class Blocked:
    """The worker's task waits in ``get``: its resources are lent meanwhile."""

    task_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class Unblocked:
    """The worker's task runs again after a `Blocked`."""

    task_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class GetFunction:
    """*Request*: a function's export record (the node's, or the GCS's)."""

    function_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class AdminCall:
    """*Request*: an introspection or admin call by name (``node._calls``:
    ``status``, ``tree``, ``nodes``, ``crash``, ``fault``, ...); an unknown name
    is refused with an error naming it."""

    name: str = attrs.field(metadata=STR)
    args: tuple = attrs.field(default=(), metadata=check(v.instance_of(tuple)))


@transport.compact
@transport.message
class HoldActor:
    """The sender's first handle to the actor appeared: it holds the actor (sent
    as a request when the handle must not be used before the node counted it)."""

    actor_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class DropActor:
    """The sender holds no handle to the actor any more."""

    actor_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class CancelActorCall:
    """``cancel(ref)`` of an actor call: to the node for a call sent through it, to
    the actor's process for one it queued or runs (or on the direct link, behind
    the call)."""

    actor_id: bytes = attrs.field(metadata=ID)
    task_id: bytes = attrs.field(metadata=ID)


@transport.message
class CreateNamedActor:
    """*Request*: create a named (or detached) actor, answered once the name is
    taken: None, or (``get_if_exists``) the `ActorFound` holding it, or an error."""

    spec: Any = attrs.field(metadata=spec_named("ActorSpec"))
    get_if_exists: bool = attrs.field(metadata=FLAG)


@transport.message
class LookupActor:
    """*Request*: ``get_actor(name, namespace)`` -> `ActorFound`."""

    name: str = attrs.field(metadata=STR)
    namespace: str = attrs.field(metadata=STR)


@transport.message
class RouteActor:
    """*Request*: where callers reach the actor directly: an `ActorRoute`, or None
    (through the node)."""

    actor_id: bytes = attrs.field(metadata=ID)


@transport.message
class KillActor:
    """*Request*: ``kill(actor, no_restart=)``."""

    actor_id: bytes = attrs.field(metadata=ID)
    no_restart: bool = attrs.field(metadata=FLAG)


@transport.message
class GetActorState:
    """*Request*: the actor's state record (``describe``)."""

    actor_id: bytes = attrs.field(metadata=ID)


@transport.message
class ListActors:
    """*Request*: the state records of the node's actors."""


@transport.message
class ActorNames:
    """*Request*: ``(namespace, name)`` of every live named actor."""


@transport.message
class StartSupervisor:
    """*Request*: start a user supervisor of actors (``api.supervisor``)."""

    name: str = attrs.field(metadata=STR)
    strategy: str = attrs.field(metadata=STR)
    max_restarts: int = attrs.field(metadata=INT)
    max_seconds: float = attrs.field(metadata=check(v.instance_of(float)))


# -- worker -> node ----------------------------------------------------------------------


@transport.compact
@transport.message
class TaskDone:
    """A task finished: its results ``[(object_id, is_error, data), ...]``;
    ``retry``: run it again (a retryable failure); ``pushed``: the worker pushed
    them to their owner too."""

    task_id: bytes = attrs.field(metadata=ID)
    results: list = attrs.field(metadata=SEQ)
    retry: bool = attrs.field(metadata=FLAG)
    pushed: bool = attrs.field(default=False, metadata=FLAG)


@transport.compact
@transport.message
class StreamItems:
    """Values a generator task or method yielded, owned by ``owner``; ``push``:
    pushed to the owner as they come (not for ``num_returns="dynamic"``)."""

    owner: bytes = attrs.field(metadata=ID)
    results: list = attrs.field(metadata=SEQ)
    push: bool = attrs.field(metadata=FLAG)


# -- actor worker -> node -----------------------------------------------------------------


@transport.compact
@transport.message
class ActorUp:
    """An actor worker registered (after `Hello`): callers may dial
    ``direct_address`` (None: calls go through the node)."""

    worker_id: bytes = attrs.field(metadata=ID)
    direct_address: str | None = attrs.field(metadata=OPT_STR)


@transport.compact
@transport.message
class ActorReady:
    """The actor's constructor finished; ``error``: the text of its exception."""

    actor_id: bytes = attrs.field(metadata=ID)
    incarnation: int = attrs.field(metadata=INT)
    error: str | None = attrs.field(metadata=OPT_STR)


@transport.compact
@transport.message
class ActorDone:
    """A call's results; ``ran`` (actors that replay only): the method ran, so the
    call joins the actor's call log."""

    actor_id: bytes = attrs.field(metadata=ID)
    task_id: bytes = attrs.field(metadata=ID)
    results: list = attrs.field(metadata=SEQ)
    ran: bool = attrs.field(default=False, metadata=FLAG)


@transport.compact
@transport.message
class ActorDoneDirect:
    """Large results of direct calls: the node holds them, like any result."""

    actor_id: bytes = attrs.field(metadata=ID)
    results: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class ActorLog:
    """A direct call of an actor that replays ran: log it (answered with
    `ActorCallLogged`; only then does its caller hear)."""

    actor_id: bytes = attrs.field(metadata=ID)
    incarnation: int = attrs.field(metadata=INT)
    spec: Any = attrs.field(metadata=spec_named("CallSpec"))
    results: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class ActorCheckpoint:
    """The actor's state after every call it reported before: it replaces the log."""

    actor_id: bytes = attrs.field(metadata=ID)
    incarnation: int = attrs.field(metadata=INT)
    state: bytes = attrs.field(metadata=check(v.instance_of((bytes, bytearray, memoryview))))


@transport.compact
@transport.message
class ActorExit:
    """The actor called ``exit_actor()``: end it for good."""

    actor_id: bytes = attrs.field(metadata=ID)
    incarnation: int = attrs.field(metadata=INT)


# -- placement groups: core worker -> node ----------------------------------------------------


@transport.message
class CreatePlacementGroup:
    """*Request*: ``placement_group(...)``: ``request`` holds ``pg_id`` (hex),
    ``bundles``, ``strategy``, ``name``, ``namespace``, ``lifetime``, ``job_id``."""

    request: dict = attrs.field(metadata=DICT)


@transport.message
class RemovePlacementGroup:
    """*Request*: ``remove_placement_group``, wherever the group is coordinated."""

    pg_id: str = attrs.field(metadata=STR)


@transport.message
class GetPlacementGroup:
    """*Request*: the live group named ``name`` in ``namespace``."""

    name: str = attrs.field(metadata=STR)
    namespace: str = attrs.field(metadata=STR)


@transport.message
class PlacementGroupTable:
    """*Request*: one group's state (``pg_id`` hex), or every group's (None)."""

    pg_id: str | None = attrs.field(metadata=OPT_STR)


# -- replies ---------------------------------------------------------------------------------
#
# What the requests above are answered with, where the answer has fields. A reply
# wakes the request that waits for it and is never dispatched, so no registry checks
# it; it is typed so that both ends name its fields instead of counting them.


@transport.compact
@transport.message
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
@transport.message
class FetchedObjects:
    """The answer to `Fetch` and `Rebuild`: ``[(object_id, is_error, data), ...]``,
    in the order asked."""

    objects: list


@transport.compact
@transport.message
class ActorRoute:
    """The answer to `RouteActor` when callers may reach the actor directly (else
    None): its process's ``address`` and the ``incarnation`` that listens there."""

    address: str
    incarnation: int


@transport.compact
@transport.message
class ActorFound:
    """The answer to `LookupActor`, and to `CreateNamedActor` with ``get_if_exists``
    when the name is taken: the actor's id and its class's ``ClassMeta``."""

    actor_id: bytes
    meta: Any


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
