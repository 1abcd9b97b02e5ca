"""``actorcore.actor``: the actor API under Ray's module name (``ray.actor``).

``exit_actor()`` ends the calling actor from inside one of its methods; the actor
classes, handles and methods are the ones ``actorcore`` exports.
"""

from __future__ import annotations

from typing import NoReturn

from .api._actor_class import ActorClass
from .api._actor_handle import ActorHandle, ActorMethod
from .api._api import method
from .core_worker import _worker_state
from .exceptions import ActorExitRequest

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "method"]


def exit_actor() -> NoReturn:
    """End the calling actor now, from inside one of its methods, as Ray's.

    The method stops where it is (``except Exception`` does not catch the exit);
    its caller, and every caller of a call queued behind it, gets
    ``ActorDiedError`` saying the actor exited on its own. The actor is not
    restarted, whatever its ``max_restarts``, and its resources and name are free
    again. Calls made later fail with the same error. From an async method the
    exit takes effect the same way (the other coroutines running in the actor are
    cancelled with it).

    Outside an actor's methods it raises ``TypeError`` (use ``actorcore.kill(handle)``
    to end an actor from elsewhere).
    """
    if _worker_state.current_actor_run() is None:
        raise TypeError(
            "exit_actor() was called outside an actor: it ends the actor whose method "
            "calls it; to end an actor from a driver or a task, use actorcore.kill(handle)"
        )
    raise ActorExitRequest(0)
