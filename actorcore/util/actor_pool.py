"""``ActorPool``: schedule work over a fixed set of actors (Ray's ``ray.util.ActorPool``).

The pool is a plain object in the caller's process: it hands each value to an idle
actor (``fn(actor, value)`` returns the call's ref), keeps the values that find no
idle actor in submission order, and gives an actor back to the idle set once the
result of its call has been taken (``get_next`` / ``get_next_unordered``). An actor
whose call failed with ``ActorDiedError`` is not given back: the pool carries on with
the others instead of handing work to a dead actor for ever.

Not thread-safe, as Ray's: one thread drives a pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..api._api import get, wait
from ..core_worker._object_ref import ObjectRef
from ..exceptions import ActorDiedError

__all__ = ["ActorPool"]

_TIMED_OUT = "Timed out waiting for result"


def _refs_of(future: Any) -> list[ObjectRef]:
    """The refs to wait for: ``fn`` returns one ref, or a list of them
    (``num_returns > 1``)."""
    refs = list(future) if isinstance(future, list | tuple) else [future]
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(
                f"ActorPool: the function given to submit/map must return the ObjectRef "
                f"of an actor call (e.g. lambda a, v: a.method.remote(v)), got "
                f"{type(r).__name__}: {r!r:.80}"
            )
    return refs


def _key(future: Any) -> Any:
    return tuple(future) if isinstance(future, list) else future


class ActorPool:
    """Operate on a fixed pool of actors (see the module docstring)::

        pool = ActorPool([A.remote(), A.remote()])
        list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))   # [2, 4, 6, 8]
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle_actors: list[Any] = list(actors)
        # the key of a call's ref(s) -> (its submission index, its actor)
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}
        self._index_to_future: dict[int, Any] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: list[tuple[Callable[[Any, Any], Any], Any]] = []

    def map(self, fn: Callable[[Any, Any], Any], values: Iterable[Any]) -> Iterator[Any]:
        """Apply ``fn(actor, value)`` over ``values`` on the pool's actors; an
        iterator of the results in the order of ``values`` (iterate it to drive the
        work). Results of earlier submits not yet taken are dropped first."""
        self._drop_unreturned(ordered=True)
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable[[Any, Any], Any],
                      values: Iterable[Any]) -> Iterator[Any]:
        """As ``map``, but the results come in the order they finish."""
        self._drop_unreturned(ordered=False)
        for v in values:
            self.submit(fn, v)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _drop_unreturned(self, ordered: bool) -> None:
        while self.has_next():
            try:
                if ordered:
                    self.get_next(timeout=0, ignore_if_timedout=True)
                else:
                    self.get_next_unordered(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Schedule ``fn(actor, value)`` on an idle actor, or once one is free; take
        the result with ``get_next()`` or ``get_next_unordered()``. The actor is
        busy until its result has been taken."""
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        try:
            future = fn(actor, value)
            _refs_of(future)
        except BaseException:
            self._idle_actors.append(actor)
            raise
        self._future_to_actor[_key(future)] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether a submitted value's result has not been taken yet."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting up to ``timeout`` seconds.

        ``TimeoutError`` when time runs out (with ``ignore_if_timedout`` that value is
        skipped: its actor goes back to the pool); ``StopIteration`` with nothing
        submitted; a task's error is raised here, as ``get`` raises it.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            refs = _refs_of(future)
            ready, _ = wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMED_OUT)
                timed_out = True
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _i, actor = self._future_to_actor.pop(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMED_OUT}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Any next result (the first to finish), waiting up to ``timeout`` seconds;
        ``TimeoutError`` / ``StopIteration`` as ``get_next``."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        firsts = {_refs_of(self._index_to_future[i])[0]: key
                  for key, (i, _a) in self._future_to_actor.items()}
        ready, _ = wait(list(firsts), num_returns=1, timeout=timeout)
        if ready:
            key = firsts[ready[0]]
        elif not ignore_if_timedout:
            raise TimeoutError(_TIMED_OUT)
        else:
            key = next(iter(self._future_to_actor))
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        if not ready:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMED_OUT}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def _get_result(self, future: Any, actor: Any) -> Any:
        alive = True
        try:
            return get(future)
        except ActorDiedError:
            alive = False
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.pop(0))

    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted value waits for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any:
        """Take an idle actor out of the pool; None if none is free."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add ``actor`` to the pool's idle actors (``ValueError`` if it is in the
        pool already); a value waiting for an actor goes to it at once."""
        busy = [a for _i, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
