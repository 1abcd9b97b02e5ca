"""Flat frames: a one-way message sent as the plain tuple of its fields.

Why. A sync actor call is two one-way frames (`DirectCall` out, `DirectResult`
back), and a measurable part of each side's Python time went to pickling them as
classes. Extension codes (``_codes``) spare the *receiver* an import per class, but
CPython's pickler still imports the module of every class it writes and checks that
the name leads back to it (``save_global``), about 1-2 µs per class per frame, and
the call's frame holds two classes (the `DirectCall` and its ``CallSpec``). A tuple
of bytes, strings and numbers pickles with none of that: ``pickle.dumps`` of the
call as a flat tuple takes a quarter of the time of the call as classes
(``benchmarks/README.md``, the section on flat frames).

How. `register_flat` gives a frozen attrs message class a code (its `wire_code`,
so every process computes the same one on its own) and two functions: ``fields``,
the message -> a tuple of plain values (the default: the class's fields in order;
a nested class is flattened by a ``fields`` of the registrant's own, which returns
None for a message it cannot flatten -- a field of the wrong type, say: that one
travels as an ordinary frame, and the receiver's `Dispatcher` refuses it as
malformed as before), and ``build``, called with the tuple's values -> the message
(the default: the class). The sender (``_wire.encode_frame``) pickles
``fields(message)`` instead of the message, in band (no buffer callback: half the
cost of pickling such a small tuple; a `pickle.PickleBuffer` in a flat message is
copied into the stream, so register only small control messages), and writes the
class's code in the frame's request-id field, which a one-way frame does not
otherwise use (it is 0 there); the receiver (``_wire.decode_body``) reads the tuple
and calls ``build``. The typed class stays what both ends handle: a handler never
sees the tuple, and a `Dispatcher` checks the built message as it checks any other.

What can go wrong, and what happens then:

* a code this process did not register (a peer of another version): the frame is
  a message that failed to decode, exactly like a pickle naming an unknown class --
  logged and dropped, the connection serves on (``ValueError`` naming the code);
* a frame whose body is not the tuple ``build`` expects (corrupt, or a peer of
  another version whose class has other fields): the same, with a ``ValueError``
  naming the class and what was wrong.

Only one-way frames are ever flat: a request's and a reply's request id is theirs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import attrs

from ._codes import wire_code

__all__ = ["build_flat", "flat_encoders", "register_flat"]

#: class -> (code, fields): read by ``_wire.encode_frame`` for every one-way frame.
flat_encoders: dict[type, tuple[int, Callable[[Any], tuple | None]]] = {}
# code -> (class, build)
_decoders: dict[int, tuple[type, Callable[..., Any]]] = {}


def register_flat(cls: type, *, fields: Callable[[Any], tuple | None] | None = None,
                  build: Callable[..., Any] | None = None) -> int:
    """Send instances of the attrs class ``cls`` in one-way frames as the flat tuple
    ``fields(message)``, rebuilt by ``build(*values)`` (see the module docstring);
    ``fields`` returning None sends that message as an ordinary frame. Returns the
    class's code. Idempotent for the same class.

    Raises ``TypeError`` if ``cls`` is not an attrs class, ``ValueError`` if its code
    is another flat class's.
    """
    if not (isinstance(cls, type) and attrs.has(cls)):
        raise TypeError(f"register_flat() takes an attrs message class, got {cls!r}")
    code = wire_code(cls)
    other = _decoders.get(code)
    if other is not None and other[0] is not cls:
        raise ValueError(f"register_flat(): {cls.__qualname__} and {other[0].__qualname__} "
                         f"have the same code {code:#x}")
    if fields is None:
        names = [a.name for a in attrs.fields(cls)]
        if len(names) > 1:
            fields = operator.attrgetter(*names)
        else:
            get = operator.attrgetter(*names) if names else None

            def fields(message: Any) -> tuple:
                return (get(message),) if get is not None else ()
    flat_encoders[cls] = (code, fields)
    _decoders[code] = (cls, cls if build is None else build)
    return code


def build_flat(code: int, values: Any) -> Any:
    """The message of a flat frame of ``code`` whose body unpickled to ``values``.

    Raises ``ValueError`` for a code not registered here or values its class's
    ``build`` refuses (the frame is a message that failed to decode: the transport
    logs and drops it, the connection serves on)."""
    try:
        cls, build = _decoders[code]
    except KeyError:
        raise ValueError(f"flat frame of unknown message code {code:#x} (a class this "
                         "process never registered with register_flat)") from None
    if type(values) is not tuple:
        raise ValueError(f"malformed flat frame of {cls.__qualname__}: its body is a "
                         f"{type(values).__name__}, not a tuple")
    try:
        return build(*values)
    except Exception as exc:
        raise ValueError(f"malformed flat frame of {cls.__qualname__} ({len(values)} "
                         f"values): {type(exc).__name__}: {exc}") from None
