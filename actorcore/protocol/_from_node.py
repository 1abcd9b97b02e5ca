"""What a node sends the processes it serves: results to owners, work to workers,
calls to actor processes.

A core worker (driver or worker) dispatches these on its link to the node; a
worker's and an actor process's own dispatchers serve the task and actor ones.
The index of all vocabularies is ``_wire``'s docstring."""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

import transport
from transport import check

from ._wire_checks import DICT, FLAG, ID, INT, OPT_STR, SEQ, STR, spec_named

__all__ = [
    "ActorCall",
    "ActorCallLogged",
    "CreateActor",
    "Execute",
    "ExitWorker",
    "FaultRules",
    "ForwardedLog",
    "InterruptTask",
    "ObjectsReady",
    "ReleaseObjects",
    "StopActor",
]


# -- node -> core worker --------------------------------------------------------------------


@transport.compact
@transport.message
class ObjectsReady:
    """Ready objects ``[(object_id, is_error, data), ...]`` the receiver owns."""

    objects: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class ReleaseObjects:
    """The node holds these large objects now: the producer drops its store refs."""

    object_ids: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class ForwardedLog:
    """Output lines of a worker (``stream`` ``out`` or ``err``), each to be printed
    after ``prefix``."""

    prefix: str = attrs.field(metadata=STR)
    stream: str = attrs.field(metadata=STR)
    lines: list = attrs.field(metadata=SEQ)


@transport.compact
@transport.message
class FaultRules:
    """A fault-rule command for the receiver's transport (``transport.faults.apply``)."""

    command: dict = attrs.field(metadata=DICT)


# -- node -> worker -------------------------------------------------------------------------


@transport.compact
@transport.message
class Execute:
    """Run ``spec`` with the inline values of its dependencies; ``owner_address``:
    where its owner listens for results pushed directly; ``gpu_ids``: the GPUs
    it was given."""

    spec: Any = attrs.field(metadata=spec_named("TaskSpec"))
    dep_data: list = attrs.field(metadata=SEQ)
    owner_address: str | None = attrs.field(default=None, metadata=OPT_STR)
    gpu_ids: tuple = attrs.field(default=(), metadata=check(v.instance_of(tuple)))


@transport.compact
@transport.message
class InterruptTask:
    """Cancel a task queued or running in the worker. ``recursive``: its children
    are cancelled too (the node cancels those it knows of); the worker's own
    submitter fails those still waiting in it for a lease and sends every task
    the task submits from now on through the node (``core_worker._leased_tasks``)."""

    task_id: bytes = attrs.field(metadata=ID)
    recursive: bool = attrs.field(default=False, metadata=FLAG)


@transport.message
class ExitWorker:
    """Exit now (the node no longer wants this process)."""


# -- node -> actor worker -------------------------------------------------------------------


@transport.compact
@transport.message
class CreateActor:
    """Create (or re-create) an actor in this process. ``recovery``: None, or
    ``(checkpoint | None, [(CallSpec, dep_data | None), ...])`` to restore and
    replay before it is ready."""

    spec: Any = attrs.field(metadata=spec_named("ActorSpec"))
    incarnation: int = attrs.field(metadata=INT)
    dep_data: list = attrs.field(metadata=SEQ)
    class_record: dict | None = attrs.field(metadata=check(v.optional(v.instance_of(dict))))
    gpu_ids: tuple = attrs.field(default=(), metadata=check(v.instance_of(tuple)))
    recovery: tuple | None = attrs.field(default=None,
                                         metadata=check(v.optional(v.instance_of(tuple))))


@transport.compact
@transport.message
class ActorCall:
    """One method call, with the inline values of its dependencies (None: none)."""

    spec: Any = attrs.field(metadata=spec_named("CallSpec"))
    dep_data: list | None = attrs.field(metadata=check(v.optional(v.instance_of(list))))


@transport.compact
@transport.message
class ActorCallLogged:
    """The node holds the log entry of that direct call: answer its caller."""

    actor_id: bytes = attrs.field(metadata=ID)
    task_id: bytes = attrs.field(metadata=ID)


@transport.compact
@transport.message
class StopActor:
    """End one actor of a shared process."""

    actor_id: bytes = attrs.field(metadata=ID)


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
