"""The direct link between a caller and an actor's process
(``core_worker._direct_calls``): a call once the caller's earlier calls through the
node have finished, and its result. Served by the actor process's direct socket and
by the caller's result socket; the index of all vocabularies is ``_wire``'s
docstring."""

from __future__ import annotations

import operator
from typing import Any

import attrs
from attrs import validators as v

import transport
from transport import check

from ._actors import CallSpec
from ._wire_checks import ID, spec_named

__all__ = [
    "DirectCall",
    "DirectCalls",
    "DirectResult",
    "DirectResults",
]


# -- caller <-> actor process (direct) ------------------------------------------------------


@transport.compact
@transport.message
class DirectCall:
    """A method call straight to the actor's process. ``alone``: a sync call (no
    other call of this caller to the actor in flight, and a thread of the caller
    waits for its answer: ``core_worker._direct_calls.Route._alone``), which the
    actor's thread may read and answer itself with no burst of calls to read one by
    one behind it (``worker._threaded_host``)."""

    spec: Any = attrs.field(metadata=spec_named("CallSpec"))
    alone: bool = False


@transport.compact
@transport.message
class DirectCalls:
    """Several method calls straight to the actor's process, in submission order: a
    caller's burst leaves as one frame (one pickle, one decode) instead of one per
    call."""

    specs: list = attrs.field(metadata=check(v.deep_iterable(
        member_validator=spec_named("CallSpec")["check"], iterable_validator=v.instance_of(list))))


@transport.compact
@transport.message
class DirectResult:
    """A direct call's results; None: the actor is not in that process (any more),
    the caller goes through the node."""

    task_id: bytes = attrs.field(metadata=ID)
    results: list | None = attrs.field(metadata=check(v.optional(v.instance_of(list))))


@transport.compact
@transport.message
class DirectResults:
    """Several direct calls' results, as ``(task_id, results)`` pairs: the answers to
    a burst that were ready together leave as one frame. Never carries the ``None``
    of `DirectResult` (the actor is not here): that one travels alone."""

    answers: list = attrs.field(metadata=check(v.deep_iterable(
        member_validator=v.instance_of(tuple), iterable_validator=v.instance_of(list))))


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))


# ... and in flat frames (transport._flat): a call as the tuple of its spec's fields
# (and ``alone``), a burst as a list of such tuples, results as their fields. The
# sync call's two frames then pickle no class at all; the spec is rebuilt as
# unpickling it would (``CallSpec.__reduce__``: the class called with its fields).

_spec_fields = operator.attrgetter(*(a.name for a in attrs.fields(CallSpec)))


def _call_fields(m: DirectCall) -> tuple | None:
    spec = m.spec
    if type(spec) is not CallSpec:
        return None  # an ordinary frame: the receiver refuses it as malformed
    return (*_spec_fields(spec), m.alone)


def _call_build(*values: Any) -> DirectCall:
    return DirectCall(CallSpec(*values[:-1]), values[-1])


def _calls_fields(m: DirectCalls) -> tuple | None:
    specs = m.specs
    if type(specs) is not list or any(type(spec) is not CallSpec for spec in specs):
        return None
    return ([_spec_fields(spec) for spec in specs],)


def _calls_build(specs: list) -> DirectCalls:
    return DirectCalls([CallSpec(*fields) for fields in specs])


transport.register_flat(DirectCall, fields=_call_fields, build=_call_build)
transport.register_flat(DirectCalls, fields=_calls_fields, build=_calls_build)
transport.register_flat(DirectResult)
transport.register_flat(DirectResults)
