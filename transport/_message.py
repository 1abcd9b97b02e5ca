"""`message`: the class decorator of every wire message.

A message is a frozen attrs class without slots (its generated ``__init__`` writes
the instance dict directly: half the cost of a frozen slotted one). What it does
not get from attrs is a generated ``__eq__``, ``__hash__`` and ``__repr__``: attrs
writes each class's methods as Python source and compiles it, about 0.6 ms of CPU
per class with all four methods and under half that with ``__init__`` alone. Every
process imports all of our ~170 message classes before it can do anything (the
driver at ``import actorcore``, the node, the GCS replicas), so those three methods
were 50-60 ms of each process's start-up, on the path from ``init()`` to the first
result. Here they are three shared functions over a per-class getter of the fields
(one C call, `operator.attrgetter`), with the values attrs would give:

- ``==`` (and ``!=``, Python's default inverse): the same class and equal fields
  (another class: ``NotImplemented``);
- ``hash``: of the class and the fields;
- ``repr``: ``Name(field=value, ...)``, recursion-safe as attrs' is.

A message is compared, hashed and printed rarely (tests, logs, the odd dict key),
so the call through the shared function costs nothing that matters.
"""

from __future__ import annotations

import operator
import reprlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

__all__ = ["message"]

_C = TypeVar("_C", bound=type)


def _fields_getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A function returning an instance's fields as a tuple, in one C call when it can."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    if names:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    get = self.__message_fields__
    return get(self) == get(other)


def _hash(self: Any) -> int:
    return hash((self.__class__, self.__message_fields__(self)))


@reprlib.recursive_repr("...")
def _repr(self: Any) -> str:
    cls = self.__class__
    values = cls.__message_fields__(self)
    fields = ", ".join(f"{name}={value!r}"
                       for name, value in zip(cls.__message_names__, values, strict=True))
    return f"{cls.__qualname__}({fields})"


def _message(cls: _C) -> _C:
    """Class decorator: ``cls`` as a frozen attrs class without slots, compared,
    hashed and printed by its fields (see the module docstring)."""
    built: Any = attrs.frozen(cls, slots=False, eq=False, repr=False)
    names = [a.name for a in attrs.fields(built)]
    built.__message_names__ = tuple(names)
    built.__message_fields__ = staticmethod(_fields_getter(names))
    built.__eq__ = _eq
    built.__hash__ = _hash
    built.__repr__ = _repr
    return built


if TYPE_CHECKING:
    # The type checker's attrs plugin knows a message class for what it is (its
    # ``__init__``, ``attrs.fields``, ``attrs.evolve``) only through attrs' own name.
    from attrs import frozen as message
else:
    message = _message
