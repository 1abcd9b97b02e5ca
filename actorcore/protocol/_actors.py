"""The actor records that travel between callers, the node and actor workers.

Actor creation and actor method calls ride the same ordered ``_wire.Submit``
batches as task specs (the node tells them apart by type), so a call can never
overtake the creation of its actor, a submit it depends on, or an earlier call of the
same caller: that one link's order *is* the stateful edge of the paper (§3).

The messages about actors (``ActorUp``, ``ActorDone``, ``CreateActor``,
``ActorCall``, ``DirectCall``, ...) are listed, by direction, in ``_wire``.
"""

from __future__ import annotations

from typing import Any

import attrs

import transport

from ..exceptions import TaskCancelledError
from . import _serialization
from ._ids import return_ids

__all__ = ["ActorSpec", "CallSpec", "ClassMeta", "MethodMeta", "cancelled_results",
           "BUILTIN_METHODS", "EXIT_CAUSE"]


@attrs.frozen(slots=True)
class MethodMeta:
    """What a caller needs to know about one method (checked before sending)."""

    num_returns: int = 1
    is_async: bool = False
    pos_names: tuple[str, ...] = ()  # positional parameters (without self)
    pos_required: int = 0  # how many of them have no default
    varargs: bool = True  # takes *args
    kw_names: frozenset[str] | None = None  # names passable by keyword; None: **kwargs
    kwonly_required: tuple[str, ...] = ()
    pos_only: int = 0  # how many of pos_names are positional-only
    concurrency_group: str | None = None  # ``@method(concurrency_group=)``; None: default


@attrs.frozen(slots=True)
class ClassMeta:
    """A remote class as its handles see it: name, methods, concurrency model."""

    class_name: str
    module: str | None
    methods: dict[str, MethodMeta]
    is_async: bool
    # The options of one actor that its handles apply (``attrs.evolve``d per creation):
    # the named groups, name -> concurrency (``concurrency_groups=``), and how many
    # unfinished calls a caller process may have (``max_pending_calls``; -1: no limit).
    concurrency_groups: dict[str, int] = attrs.Factory(dict)
    max_pending_calls: int = -1


#: The methods every actor has besides its class's, as in Ray: ``__ray_ready__()``
#: (True once it is up), ``__ray_terminate__()`` (ends it after the calls queued
#: before), ``__ray_call__(fn, *args, **kwargs)`` (``fn(instance, *args, **kwargs)``
#: in the actor). The actor's host runs them (``worker._actor_host``).
BUILTIN_METHODS: dict[str, MethodMeta] = {
    "__ray_ready__": MethodMeta(varargs=False, kw_names=frozenset()),
    "__ray_terminate__": MethodMeta(varargs=False, kw_names=frozenset()),
    "__ray_call__": MethodMeta(pos_names=("fn",), pos_required=1, varargs=True),
}

#: Why an actor that called ``exit_actor()`` (or got ``__ray_terminate__``) is dead.
EXIT_CAUSE = ("it exited on its own with actorcore.actor.exit_actor() (or "
              "__ray_terminate__); an intended exit is never restarted")


@attrs.define(slots=True, eq=False)
class ActorSpec:
    """Everything needed to create (and re-create, on restart) an actor."""

    actor_id: bytes
    job_id: bytes
    class_id: bytes  # the function id of the exported class
    meta: ClassMeta
    args: bytes
    deps: list[bytes]
    resources: dict[str, float]
    max_restarts: int
    max_task_retries: int
    max_concurrency: int
    async_backend: str  # "asyncio" | "trio" (async actors only)
    name: str | None
    namespace: str
    detached: bool
    placement: str  # "process" | "shared"
    supervisor: str | None
    restart: str  # restart type under a supervisor
    owner: bytes
    job_namespace: str = "default"  # its job's (init(namespace=)), not its name's
    # Counted actors whose handles are in its constructor's arguments: the node holds
    # them for as long as this actor lives (see ``api/_actor_handle``).
    handles: tuple[bytes, ...] = ()
    # ``api._runtime_env``: applied in its process when it is created (None: none).
    runtime_env: dict | None = None
    # Where it may run: ``None`` (DEFAULT), ``"SPREAD"`` or a ``NodeAffinity``
    # (``protocol._strategy.strategy_of``).
    strategy: Any = None
    # Recovery by replay (``@remote(checkpoint_interval=N)``, see ``node.actor_manager
    # ._replay``): ``None``, Ray's restart (the constructor again); ``0``, every call
    # logged and replayed after a restart; ``N >= 1``, a checkpoint every ``N`` calls
    # and only the calls since the last one replayed.
    checkpoint_interval: int | None = None

    @property
    def replays(self) -> bool:
        return self.checkpoint_interval is not None

    @property
    def task_id(self) -> bytes:
        return self.actor_id

    def return_ids(self) -> list[bytes]:
        return []

    def short_id(self) -> str:
        """12 hex digits that tell actors apart: the creating process's id prefix and
        the counter (the middle bytes are mostly zeros)."""
        h = self.actor_id.hex()
        return h[:4] + h[-8:]

    def describe(self) -> str:
        name = f", name {self.name!r}" if self.name else ""
        return f"{self.meta.class_name} (actor {self.short_id()}{name})"


@attrs.define(slots=True, eq=False)
class CallSpec:
    """One actor method call. Shaped like a ``TaskSpec`` where the executor reads it."""

    task_id: bytes
    actor_id: bytes
    method: str
    name: str  # "Class.method", for errors and the tree
    args: bytes
    deps: list[bytes]
    num_returns: int
    owner: bytes
    max_retries: int = 0  # never retried by the executor: the node resends
    retry_exceptions: bool = False
    attempt: int = 0
    # >0: resent through the node after the direct link to that incarnation broke
    # while the call was in flight (the node then applies max_task_retries).
    lost_incarnation: int = 0
    # ``.options(concurrency_group=)`` at the call site; None: the method's own group.
    concurrency_group: str | None = None

    def __reduce__(self) -> tuple:
        # A tuple of fields (not attrs' state dict): smaller, faster frames; a call
        # travels twice (caller -> node -> actor).
        return (
            CallSpec,
            (self.task_id, self.actor_id, self.method, self.name, self.args, self.deps,
             self.num_returns, self.owner, self.max_retries, self.retry_exceptions,
             self.attempt, self.lost_incarnation, self.concurrency_group),
        )

    def return_ids(self) -> list[bytes]:
        return return_ids(self.task_id, max(self.num_returns, 1))


def cancelled_results(spec: CallSpec, when: str) -> list[tuple[bytes, bool, bytes]]:
    """The results of a cancelled call: ``TaskCancelledError`` for each of its refs."""
    payload = _serialization.dumps(
        TaskCancelledError(spec.task_id, f"actor call {spec.name} was cancelled {when}"))
    return [(oid, True, payload) for oid in spec.return_ids()]


# The specs ride in messages: they travel as extension codes too (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
