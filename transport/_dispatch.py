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

Validation runs at dispatch, not while unpickling: a class whose attrs
``__init__`` validated would fail inside the transport's decoder, where the
endpoint could not answer in its own terms. So message classes keep the default
attrs pickling (their state restored without ``__init__``) and list their checks as
attrs validators; `attrs.validate` runs them here. (Small records carried by the
thousand inside one message, such as the GCS's updates, may pickle compactly
through ``__reduce__`` instead: the endpoint that uses them checks them itself.)

Handlers are ``handler(conn, message, reply)``, plain or ``async``; a plain one
costs no coroutine, which is what the hot paths use. A request's handler answers
through ``reply`` now or later. A class registered ``oneway=True`` is a notice: its
handler gets no reply, and if a peer sends it as a request anyway the dispatcher
answers ``None`` after the handler ran (instead of leaving the caller to time out);
a request class (``oneway=False``) that arrives one-way is refused, since nobody
could get its answer.
"""

from __future__ import annotations

import inspect
import logging
import reprlib
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ._errors import BadMessage
from ._reply import Reply

__all__ = ["Dispatcher", "DispatcherStatistics", "Refuse"]

logger = logging.getLogger("transport.dispatch")

#: ``refuse(conn, reply, error)``: answer a refused request (``reply`` is never None).
Refuse = Callable[[Any, Reply, BadMessage], None]


@attrs.frozen
class _Route:
    handler: Callable[..., Any]
    is_async: bool
    oneway: bool


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
        await self.dispatch(conn, message, reply)

    async def dispatch(self, conn: Any, message: Any, reply: Reply | None) -> None:
        """Hand ``message`` to its handler, or refuse it (see the module docstring)."""
        route = self._routes.get(type(message))
        if route is None:
            self._unknown += 1
            self._refused(conn, reply, BadMessage(
                f"{self.name} does not handle {_describe(message)}",
                endpoint=self.name, message_type=type(message).__qualname__))
            return
        try:
            attrs.validate(message)
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
