"""Actor handles: ``handle.method.remote(*args)`` submits a call and returns refs.

A handle is the actor's id plus its method table: picklable, so it can be passed to
tasks and to other actors (inside arguments or return values) and used there alike.

Stateful edges. A caller's first calls are call specs (``CallSpec``) queued on the calling
process's one ordered link to its node, behind everything that process submitted
before (its own earlier calls, the actor's creation, tasks whose results it passes).
The node forwards the calls of each caller to the actor in that order, holding back
a call whose argument refs are not ready yet and every later call of the same caller
behind it; the actor starts them in arrival order. Once those have finished, the
caller's later calls go straight to the actor's process on a link of their own
(``core_worker._direct_calls``), where the actor resolves argument refs itself, in call order.
So calls from one caller — a driver, a task or another actor — execute in
submission order on either path.

Lifetime. A non-detached, unnamed actor lives while some process holds a handle to
it, as in Ray: when the last handle anywhere is gone, the node ends it once the calls
already submitted have finished (and its resources are free again). The node keeps
the set of *holders* of each such actor:

- Each process counts its live handles per actor (``_counts``). The creator is a
  holder from the start (the node knows it from the creation). Any other process
  becomes one when its first handle to the actor appears (unpickled), with a request
  that the node acknowledges before the handle is used; it stops being one when its
  count drops to zero (``actor_drop``, after its own calls have gone out).
- A handle pickled into the arguments of a task or actor call (the *carrier*) is
  pinned by the sending process — counted like a live handle — until the carrier's
  result is here. The receiving process registers before it even runs the call, so
  the actor never sees a moment without a holder while the handle travels. A handle
  in the arguments of an actor creation is held by the node for as long as that new
  actor lives (``ActorSpec.handles``).
- A process that pickles a handle any other way (a return value, ``put``, a plain
  ``pickle.dumps``) cannot know where it went: it stays a holder until it exits.
  Conservative: never ends an actor someone can still call.

A holder process that exits stops holding. Detached actors live until killed; named
ones until killed or their owner exits; the actors of an owner (the creating process)
or of a job whose driver exits end with it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ..core_worker import _worker_state
from ..core_worker._direct_calls import cancel_call, detach, drop_actor, submit_call
from ..core_worker._generator import refs_of_call
from ..core_worker._object_ref import ObjectRef
from ..core_worker._references import Entry
from ..exceptions import ActorcoreSystemError, PendingCallsLimitExceeded
from ..protocol import _wire as w
from ..protocol._actors import BUILTIN_METHODS, CallSpec, ClassMeta, MethodMeta
from ..protocol._ids import STREAMING, new_task_id, return_ids
from ..protocol._serialization import ArgStore, dumps_args
from ._job import default_namespace, request_node
from ._options import check_num_returns, num_returns_code
from ._signatures import check_call_args

logger = logging.getLogger("actorcore.actors")

__all__ = ["ActorHandle", "ActorMethod", "get_actor", "kill", "cancel_actor_call",
           "list_named_actors"]

# This process's live handles (and pins) per counted actor; the actors it holds at
# the node; those it pickled where it cannot follow them (held until it exits).
_counts: dict[bytes, int] = {}
_registered: set[bytes] = set()
_escaped: set[bytes] = set()
_lingering: set[bytes] = set()
_counts_lock = threading.Lock()
# The handles pickled into the arguments being serialised on this thread (a carrier).
_carrying = threading.local()


def dumps_carrying(
    what: str, args: tuple, kwargs: dict, arg_store: ArgStore | None = None,
) -> tuple[bytes, list[bytes], Sequence[bytes], list[bytes]]:
    """``dumps_args`` (``(blob, deps, by_ref)``: large arguments through ``arg_store``),
    also returning the counted actors whose handles it pickled: each is pinned (one
    more count here) until the caller calls ``unpin``. If this raises, nothing stays
    pinned and the ``by_ref`` objects are freed already."""
    previous = getattr(_carrying, "ids", None)
    carried: list[bytes] = []
    _carrying.ids = carried
    try:
        blob, deps, by_ref = dumps_args(what, args, kwargs, ObjectRef, arg_store)
    except BaseException:
        unpin(_worker_state.core, carried)
        raise
    finally:
        _carrying.ids = previous
    return blob, deps, by_ref, carried


def unpin_when_ready(core: Any, oid: bytes, carried: list[bytes]) -> None:
    """Unpin ``carried`` once the carrier's result ``oid`` is here."""
    core.on_ready_callback([oid], functools.partial(unpin, core, carried))


def unpin(core: Any, carried: Sequence[bytes]) -> None:
    for aid in carried:
        _release(core, aid)


def _acquire(core: Any, aid: bytes, created: bool) -> None:
    """One more handle to ``aid`` here; the first one (not ``created`` here) makes
    this process a holder, acknowledged by the node before the handle is used."""
    with _counts_lock:
        n = _counts.get(aid, 0)
        _counts[aid] = n + 1
        register = n == 0 and aid not in _registered
        if register or created:
            _registered.add(aid)
    if register and not created and not core.closed:
        try:
            if _can_block(core):
                request_node(core, w.HoldActor(aid))
            else:  # (a Trio loop: the core's or a Trio actor's) ordered, not awaited
                core.enqueue(w.HoldActor(aid))
        except Exception as exc:  # the link is down: nothing to end the actor either
            logger.warning("registering a handle of actor %s failed: %s", aid.hex(), exc)


def _can_block(core: Any) -> bool:
    if core.in_loop():
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return True
    return False


#: Seconds a worker process stays a holder after its last handle to an actor died:
#: the next task given a handle to the same actor then needs no round trip.
HOLD_LINGER = 1.0


def _release(core: Any, aid: bytes, lingered: bool = False) -> None:
    with _counts_lock:
        if not lingered:
            n = _counts.get(aid, 0) - 1
            if n > 0:
                _counts[aid] = n
                return
            _counts.pop(aid, None)
        elif _counts.get(aid):  # a handle appeared again meanwhile
            return
        if aid in _escaped or aid not in _registered:
            return
        linger = not lingered and core is not None and core.role != "driver"
        if linger:
            if aid in _lingering:  # already on its way
                return
            _lingering.add(aid)
        else:
            _registered.discard(aid)
    if core is None or core.closed:
        return
    if linger:
        try:
            core.trio_token.run_sync_soon(core.loop.start_soon, _release_later, core, aid)
        except trio.RunFinishedError:
            pass
        return
    drop_actor(core, aid)


async def _release_later(core: Any, aid: bytes) -> None:
    await trio.sleep(HOLD_LINGER)
    with _counts_lock:
        _lingering.discard(aid)
    _release(core, aid, lingered=True)


@attrs.define(slots=True, eq=False)
class _CallEntry(Entry):
    """The caller's entry for a result of an actor call: also names the method."""

    method: str | None = None


def cancel_actor_call(core: Any, ref: ObjectRef, force: bool) -> bool:
    """``cancel(ref)`` if ``ref`` is the result of an actor call made here; ``False``
    if it is not (a task's result, or a ref this process did not create)."""
    entry = core.references.entry(ref.binary())
    if entry is None or entry.actor is None:
        return False
    if force:
        raise ValueError(
            f"cancel(force=True) is not supported for actor calls: {ref} is the result "
            f"of {getattr(entry, 'method', None) or 'an actor method'} (killing the "
            f"actor's process would end every call and its state; cancel without force, "
            f"or end the actor with actorcore.kill(handle))"
        )
    if not entry.ready:
        cancel_call(core, entry.actor, ref.task_id())
    return True


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``; ``.options(num_returns=)``."""

    __slots__ = ("_handle", "_name", "_meta", "_num_returns", "_qualname")

    def __init__(self, handle: ActorHandle, name: str, meta: MethodMeta,
                 num_returns: int | None = None) -> None:
        self._handle = handle
        self._name = name
        self._meta = meta
        self._num_returns = meta.num_returns if num_returns is None else num_returns
        self._qualname = f"{handle._meta.class_name}.{name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor method {self._qualname} cannot be called directly; "
            f"use .{self._name}.remote(...)"
        )

    def __repr__(self) -> str:
        return f"<actorcore.ActorMethod {self._qualname} of {self._handle!r}>"

    def options(self, *, num_returns: int | None = None, concurrency_group: str | None = None,
                **unknown: Any) -> ActorMethod:
        if unknown:
            raise ValueError(
                f"unknown option(s) for actor method {self._qualname}: "
                f"{', '.join(sorted(unknown))} (valid: num_returns, concurrency_group)"
            )
        if num_returns is not None:
            check_num_returns(num_returns, "option")
            num_returns = num_returns_code(num_returns)
        meta = self._meta
        if concurrency_group is not None:
            groups = self._handle._meta.concurrency_groups
            if concurrency_group not in groups:
                raise ValueError(
                    f"{self._qualname}.options(concurrency_group={concurrency_group!r}): "
                    f"the actor has no such group (its concurrency_groups: {groups or 'none'})"
                )
            meta = attrs.evolve(meta, concurrency_group=concurrency_group)
        return ActorMethod(self._handle, self._name, meta, num_returns)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        core = _worker_state.core
        if core is None:
            core = _worker_state.auto_core()
        meta = self._meta
        qualname = self._qualname
        check_call_args(qualname, meta, args, kwargs)
        if core.closed:
            core.check_open()
        # Large arguments go by ref, through the store (``by_ref``); handles in them
        # are carried (pinned here until the call's result is back).
        blob, deps, by_ref, carried = dumps_carrying(
            qualname, args, kwargs, core.arg_store())
        if deps:
            core.mark_seen(deps)
        n = self._num_returns
        task_id = new_task_id()
        aid = self._handle._actor_id
        spec = CallSpec(task_id, aid, self._name, qualname, blob, deps, n,
                        core.worker_id, concurrency_group=meta.concurrency_group)
        ids = return_ids(task_id, max(n, 1))
        limit = self._handle._meta.max_pending_calls
        if limit > 0:
            _count_pending(core, aid, limit, qualname, by_ref, carried)
        references = core.references
        for oid in ids:
            references.add(oid, _CallEntry(owned=True, actor=aid, method=qualname))
        # The refs exist before the call leaves: its result may come back at once.
        if n == STREAMING:  # and so may a generator's items
            core.register_stream(task_id)
        out: Any = refs_of_call(core, n, ids)
        # ``submit_call`` frees the argument objects once the call no longer needs them.
        submit_call(core, spec, by_ref)
        if limit > 0:
            core.on_ready_callback([ids[0]], functools.partial(_pending_done, aid))
        if carried:
            unpin_when_ready(core, ids[0], carried)
        return out


# max_pending_calls: the calls of this process to each limited actor that have not
# finished yet (their first result is not here). Counted per process and actor, as
# Ray counts them per actor in its core worker: every handle here shares the count.
_pending: dict[bytes, int] = {}
_pending_lock = threading.Lock()


def _count_pending(core: Any, aid: bytes, limit: int, qualname: str,
                   by_ref: Sequence[bytes], carried: list[bytes]) -> None:
    with _pending_lock:
        n = _pending.get(aid, 0)
        if n < limit:
            _pending[aid] = n + 1
            return
    # Refused: nothing was sent, so what the arguments hold goes back now.
    unpin(core, carried)
    if by_ref:
        core.release_args(by_ref)
    raise PendingCallsLimitExceeded(
        f"{qualname}.remote() was refused: this process has {n} calls to actor "
        f"{aid.hex()[:12]} that have not finished, and the actor was created with "
        f"max_pending_calls={limit}; wait for some of them (get/wait) or create the "
        f"actor with a larger max_pending_calls (-1: no limit)"
    )


def _pending_done(aid: bytes) -> None:
    with _pending_lock:
        n = _pending.get(aid, 0) - 1
        if n > 0:
            _pending[aid] = n
        else:
            _pending.pop(aid, None)


class ActorHandle:
    """A reference to an actor: ``handle.method.remote(...)`` calls it.

    Picklable (pass it to tasks and actors); equal handles name the same actor.
    ``counted``: the actor lives while handles to it do (unnamed, not detached, not
    supervised); ``owned``: it was created by this process.
    """

    def __init__(self, actor_id: bytes, meta: ClassMeta, *, owned: bool = False,
                 counted: bool | None = None) -> None:
        self._actor_id = actor_id
        self._meta = meta
        self._counted = counted = owned if counted is None else counted
        self._core = None
        if counted:
            core = _worker_state.core
            if core is None:
                self._counted = False  # unpickled outside a cluster: nothing to count
                return
            self._core = core
            _acquire(core, actor_id, owned)

    def __getattr__(self, name: str) -> ActorMethod:
        if (name.startswith("__") and name not in BUILTIN_METHODS) or name in (
                "_actor_id", "_meta", "_counted", "_core"):
            raise AttributeError(name)
        mm = self._meta.methods.get(name) or BUILTIN_METHODS.get(name)
        if mm is None:
            own = sorted(m for m in self._meta.methods if m not in BUILTIN_METHODS)
            raise AttributeError(
                f"actor {self._meta.class_name} has no method {name!r} "
                f"(its methods: {', '.join(own) or 'none'})"
            )
        # Not cached on the handle: the method holds the handle (so a call on a
        # temporary handle goes out before the handle's drop), and a cache would make
        # that a cycle that only the garbage collector could end.
        return ActorMethod(self, name, mm)

    @property
    def actor_id(self) -> str:
        return self._actor_id.hex()

    def __repr__(self) -> str:
        return f"Actor({self._meta.class_name}, {self._actor_id.hex()})"

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __reduce__(self) -> Any:
        counted = self._counted
        if counted:
            aid = self._actor_id
            carried = getattr(_carrying, "ids", None)
            with _counts_lock:
                if carried is not None:  # into a task's or call's arguments: pinned
                    _counts[aid] = _counts.get(aid, 0) + 1
                    carried.append(aid)
                else:  # anywhere else: this process holds it until it exits
                    _escaped.add(aid)
        return (_rebuild, (self._actor_id, self._meta, counted))

    def __del__(self) -> None:
        if not self._counted:
            return
        try:
            _release(self._core, self._actor_id)
        except Exception as exc:  # interpreter shutdown: the node drops it with our link
            logger.debug("dropping the handle of actor %s failed: %r", self._actor_id.hex(), exc)


def _rebuild(actor_id: bytes, meta: ClassMeta, counted: bool = False) -> ActorHandle:
    return ActorHandle(actor_id, meta, owned=False, counted=counted)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the live actor named ``name`` in ``namespace``.

    Raises ``ValueError`` naming the name and namespace if there is none (never
    created, or dead: a dead actor's name is free again).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor(name={name!r}): expected a non-empty str")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError(f"get_actor(namespace={namespace!r}): expected a non-empty str")
    core = _worker_state.auto_core()
    ns = namespace or default_namespace()
    found = request_node(core, w.LookupActor(name, ns))
    return ActorHandle(found.actor_id, found.meta, owned=False)


def list_named_actors(all_namespaces: bool = False) -> list[str] | list[dict[str, str]]:
    """The named actors that are not dead (alive, starting or restarting), detached
    or not, as Ray's: their names in the caller's namespace, or with
    ``all_namespaces=True`` ``{"name": ..., "namespace": ...}`` for every namespace."""
    if not isinstance(all_namespaces, bool):
        raise TypeError(f"list_named_actors(all_namespaces={all_namespaces!r}): expected a bool")
    core = _worker_state.auto_core()
    # Every node's named actors: the node reads the GCS name registry on a
    # cluster of several nodes, its own table on one.
    names = request_node(core, w.ActorNames())
    if all_namespaces:
        return [{"name": name, "namespace": ns} for ns, name in names]
    ns = default_namespace()
    return [name for n, name in names if n == ns]


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """End ``actor`` now: pending and later calls fail with ``ActorDiedError``.

    With ``no_restart=False`` an actor with restarts left is restarted instead (its
    constructor runs again in a new process).
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got {type(actor).__name__}: {actor!r:.80}")
    core = _worker_state.auto_core()
    if core.closed:
        raise ActorcoreSystemError("not connected to the cluster any more")
    # The node first, then the direct link. Left first, the link's calls in flight
    # would reach the node as lost before the kill, and the node, which has not
    # seen that process end, ends it (``_resent_lost_call``): its exit could then
    # be handled before the kill and name a SIGKILL as the actor's cause of death.
    # Killed first, the actor is dead (or restarting) at the node before any of its
    # calls comes back, so they fail with the kill as their cause.
    request_node(core, w.KillActor(actor._actor_id, bool(no_restart)))
    detach(core, actor._actor_id)  # later calls go through the node, which knows


def actor_state(actor: ActorHandle) -> dict:
    """The node's record of ``actor``: state, restarts, pid, death cause."""
    core = _worker_state.current_core()
    return request_node(core, w.GetActorState(actor._actor_id))
