"""`Dispatcher`: one registry per endpoint, from message class to handler.

Messages between our processes are frozen attrs classes (the packages above define
their own vocabularies). An endpoint -- the handler of one kind of connection --
registers one handler per message class, and the dispatcher is that connection's
handler: it looks the class up, checks the message against the class's attrs
validators, and calls the handler. Nothing else decides what a message means: no
tags, no tuple lengths.

What a peer cannot do to an endpoint: a message of a class the endpoint does not
know (garbage, a tuple, another endpoint's message), or of a known class with
fields of the wrong type or missing (an older peer, a bug), is *refused*: a request
gets a typed error reply -- by default `BadMessage`, or whatever the endpoint's
``refuse`` hook answers (the GCS answers its errors as values) -- and a one-way
message is logged and dropped. Either way the endpoint keeps serving, the
connection stays up, and ``statistics()`` counts it.

Validation runs at dispatch, not while unpickling nor while building: a class
whose attrs ``__init__`` validated would fail inside the transport's decoder, where
the endpoint could not answer in its own terms, and would make every sender pay
for checks its peer repeats anyway. So a message's fields declare their checks with
`check` (attrs-style validators kept in the field's metadata), the dispatcher runs
them when the message arrives, and the class can pickle compactly (`compact`).
Plain attrs validators, if a class has some, are run here too.

`compact` makes a message class pickle as its class and a tuple of its fields and
rebuild through its ``__init__`` (so only for classes without attrs validators).

Cost: a typed message is meant to cost what the ``(op, *fields)`` tuple it replaced
cost. So `register` compiles each class's checks into one function of plain
``isinstance`` tests (`_compile_checks`) -- no validator call per field on the hot
path -- and the validators themselves run only when that function says no, to word
the refusal exactly as they would. `compact` defines ``__reduce_ex__`` itself: the
pickler calls it directly, where an inherited one first goes through
``object.__reduce_ex__`` to find ``__reduce__``.

Handlers are ``handler(conn, message, reply)``, plain or ``async``; a plain one
costs no coroutine, which is what the hot paths use. A request's handler answers
through ``reply`` now or later. A class registered ``oneway=True`` is a notice: its
handler gets no reply, and if a peer sends it as a request anyway the dispatcher
answers ``None`` after the handler ran (instead of leaving the caller to time out);
a request class (``oneway=False``) that arrives one-way is refused, since nobody
could get its answer.
"""

from __future__ import annotations

import copyreg
import inspect
import logging
import operator
import reprlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs

from ._errors import BadMessage
from ._reply import Reply

# The validators `_compile_checks` inlines (attrs' own classes, by the type of what
# ``instance_of``, ``optional`` and ``and_`` return, so no private import).
_InstanceOf: Any = type(attrs.validators.instance_of(int))
_Optional: Any = type(attrs.validators.optional(attrs.validators.instance_of(int)))
_And: Any = type(attrs.validators.and_(attrs.validators.instance_of(int)))

__all__ = ["Dispatcher", "DispatcherStatistics", "Refuse", "check", "compact"]

logger = logging.getLogger("transport.dispatch")

#: ``refuse(conn, reply, error)``: answer a refused request (``reply`` is never None).
Refuse = Callable[[Any, Reply, BadMessage], None]


_Checks = tuple[tuple[Callable[..., Any], Any], ...]


@attrs.define
class _Route:
    handler: Callable[..., Any]
    is_async: bool
    oneway: bool
    #: The class's checks (`check`) and validators with their fields, looked up
    #: once instead of per message; None until its first message (`_checks_of`).
    checks: _Checks | None = None
    #: ``passes(message)``: the checks compiled into one function (`_compile_checks`),
    #: True when they all hold; None when the class has none.
    passes: Callable[[Any], bool] | None = None


# A class's checks are compiled once per process, at its first message: a process
# registers a few hundred classes on dozens of endpoints at its start (compiling each
# cost 15-20 ms of the node's start-up), and most of them never arrive.
_CHECKS: dict[type, tuple[_Checks, Callable[[Any], bool] | None]] = {}


def _checks_of(cls: type) -> tuple[_Checks, Callable[[Any], bool] | None]:
    """``cls``'s checks and their compiled test, built at the first call."""
    found = _CHECKS.get(cls)
    if found is None:
        checks = tuple((check, a) for a in attrs.fields(cls)
                       for check in (a.validator, a.metadata.get("check")) if check is not None)
        found = _CHECKS[cls] = (checks, _compile_checks(cls, checks))
    return found


@attrs.frozen(kw_only=True)
class DispatcherStatistics:
    """Figures of one `Dispatcher`.

    Attributes:
      name: the endpoint's name; routes: message classes it handles.
      dispatched: messages handed to a handler.
      unknown: messages of a class it does not handle; malformed: messages of a
        known class whose fields failed its validators (both refused).
    """

    name: str
    routes: int
    dispatched: int
    unknown: int
    malformed: int


_C = TypeVar("_C", bound=type)


def check(*validators: Any) -> dict[str, Any]:
    """Field metadata: ``attrs.field(metadata=check(v1, ...))`` has a `Dispatcher` run
    the attrs-style validators when the message arrives -- not when it is built or
    unpickled."""
    return {"check": validators[0] if len(validators) == 1 else attrs.validators.and_(*validators)}


def compact(cls: _C) -> _C:
    """Class decorator (outside ``@attrs.frozen``): pickle instances as the class and
    a tuple of the fields, rebuilt by calling the class -- about half the bytes and
    the time of the default (a dict of field names), and as cheap as a tuple inside
    a list of thousands; registered in ``copyreg``'s dispatch table, so the pickler
    finds the reduction by the type alone. Since the rebuild runs ``__init__``, use it only for classes
    without validators: a failing one would fail inside the transport's decoder,
    where no endpoint can answer in its own terms."""
    target: Any = cls
    if not attrs.has(target):
        raise TypeError(f"compact() needs an attrs class, got {cls!r}")
    fields = attrs.fields(target)
    if any(a.validator is not None for a in fields):
        raise TypeError(f"compact() would validate {cls.__qualname__} while unpickling: "
                        "check it at dispatch instead (keep the default pickling)")
    names = [a.name for a in fields]
    get: Callable[[Any], Any]
    if len(names) > 1:
        get = operator.attrgetter(*names)  # C: the tuple of the fields in one call
    elif names:
        one = operator.attrgetter(names[0])

        def get(obj: Any) -> tuple[Any, ...]:
            return (one(obj),)
    else:
        def get(obj: Any) -> tuple[Any, ...]:
            return ()

    def reduce(self: Any) -> tuple[Any, tuple[Any, ...]]:
        return (cls, get(self))

    def __reduce_ex__(self: Any, protocol: int) -> tuple[Any, tuple[Any, ...]]:
        return (cls, get(self))

    # The pickler finds ``reduce`` in copyreg's dispatch table (one dict lookup on
    # the type) before it would look for a ``__reduce_ex__`` and bind it: 0.2 us of
    # a small message's 4 us. ``__reduce__``/``__reduce_ex__`` stay for whatever
    # asks the object itself (they are what the table gives); the inherited
    # ``object.__reduce_ex__`` would look ``__reduce__`` up first.
    setattr(cls, "__reduce__", reduce)  # noqa: B010 (after attrs built the class)
    setattr(cls, "__reduce_ex__", __reduce_ex__)  # noqa: B010
    copyreg.pickle(cls, reduce)
    return cls


def _test(validator: Any, value: str, names: dict[str, Any]) -> str | None:
    """An expression true when ``validator`` accepts ``value`` (an expression), for
    the validators this can inline (``instance_of``, ``optional``, ``and_``); None
    for any other, which the compiled function calls instead."""
    if isinstance(validator, _InstanceOf):
        name = f"_t{len(names)}"
        names[name] = validator.type
        return f"isinstance({value}, {name})"
    if isinstance(validator, _Optional):
        inner = _test(validator.validator, value, names)
        return None if inner is None else f"({value} is None or {inner})"
    if isinstance(validator, _And):
        parts = [_test(each, value, names) for each in validator._validators]
        if any(part is None for part in parts):
            return None
        return "(" + " and ".join(parts) + ")"  # type: ignore[arg-type]
    return None


def _compile_checks(cls: type,
                    checks: tuple[tuple[Callable[..., Any], Any], ...]) -> Callable[[Any], bool] | None:
    """One function running all of ``cls``'s checks: ``isinstance`` tests inlined,
    other validators called (they raise when they refuse). It returns False instead
    of raising for the inlined ones: the dispatcher then runs the validators to word
    the refusal. A missing field raises AttributeError, as the validators would."""
    if not checks:
        return None
    names: dict[str, Any] = {}
    lines = ["def passes(m):"]
    for i, (validator, field) in enumerate(checks):
        value = f"m.{field.name}"
        test = _test(validator, value, names)
        if test is None:
            names[f"_c{i}"], names[f"_f{i}"] = validator, field
            lines.append(f"    _c{i}(m, _f{i}, {value})")
        else:
            lines.append(f"    if not {test}: return False")
    lines.append("    return True")
    code = compile("\n".join(lines), f"<checks of {cls.__qualname__}>", "exec")
    exec(code, names)  # noqa: S102 (our own text, from field names and validators)
    passes: Callable[[Any], bool] = names["passes"]
    return passes


def _fail(conn: Any, reply: Reply, error: BadMessage) -> None:
    reply.fail(error)


class Dispatcher:
    """The registry of one endpoint; an instance is its connection handler.

    ``refuse`` answers a refused request (default: fail it with the `BadMessage`,
    which the caller gets as a `RemoteError` carrying it).
    """

    def __init__(self, name: str, *, refuse: Refuse = _fail) -> None:
        self.name = name
        self._refuse = refuse
        self._routes: dict[type, _Route] = {}
        self._dispatched = 0
        self._unknown = 0
        self._malformed = 0

    def register(self, cls: type, handler: Callable[..., Any] | Callable[..., Awaitable[Any]],
                 *, oneway: bool = False) -> None:
        """Route messages of exactly ``cls`` (an attrs class) to ``handler``."""
        if not attrs.has(cls):
            raise TypeError(f"{self.name}: a message class must be an attrs class, got {cls!r}")
        if cls in self._routes:
            raise ValueError(f"{self.name}: {cls.__qualname__} is registered already")
        self._routes[cls] = _Route(handler, inspect.iscoroutinefunction(handler), oneway)

    def handles(self, cls: type) -> bool:
        return cls in self._routes

    async def __call__(self, conn: Any, message: Any, reply: Reply | None) -> None:
        """Hand ``message`` to its handler, or refuse it (see the module docstring)."""
        route = self._routes.get(type(message))
        if route is None:
            self._unknown += 1
            self._refused(conn, reply, BadMessage(
                f"{self.name} does not handle {_describe(message)}",
                endpoint=self.name, message_type=type(message).__qualname__))
            return
        checks = route.checks
        if checks is None:
            checks, passes = _checks_of(type(message))
            route.checks, route.passes = checks, passes
        try:
            if route.passes is not None and not route.passes(message):
                for check, field in checks:  # word the refusal
                    check(message, field, getattr(message, field.name))
        except Exception as exc:  # a validator's TypeError/ValueError, a missing field
            self._malformed += 1
            self._refused(conn, reply, BadMessage(
                f"{self.name} got a malformed {type(message).__qualname__}: {_reason(exc)}",
                endpoint=self.name, message_type=type(message).__qualname__))
            return
        if reply is None and not route.oneway:
            self._malformed += 1
            self._refused(conn, None, BadMessage(
                f"{self.name} got the request {type(message).__qualname__} as a one-way "
                "message: nobody could get its answer",
                endpoint=self.name, message_type=type(message).__qualname__))
            return
        self._dispatched += 1
        if route.oneway:
            if route.is_async:
                await route.handler(conn, message)
            else:
                route.handler(conn, message)
            if reply is not None:
                reply.send(None)
        elif route.is_async:
            await route.handler(conn, message, reply)
        else:
            route.handler(conn, message, reply)

    #: The same as calling the dispatcher (for an endpoint that dispatches a message
    #: it unwrapped from another).
    dispatch = __call__

    def _refused(self, conn: Any, reply: Reply | None, error: BadMessage) -> None:
        if reply is None:
            logger.warning("%s: dropped a one-way message from %s: %s", self.name,
                           getattr(conn, "peer_name", "?"), error)
            return
        self._refuse(conn, reply, error)

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(name=self.name, routes=len(self._routes),
                                    dispatched=self._dispatched, unknown=self._unknown,
                                    malformed=self._malformed)


def _reason(exc: Exception) -> str:
    """A validator's message (attrs' carry the attribute and the value after it)."""
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return repr(exc)


def _describe(message: Any) -> str:
    return f"messages of type {type(message).__qualname__} ({reprlib.repr(message)})"
