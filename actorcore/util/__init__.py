"""``actorcore.util``: utilities built on the core API, under Ray's names.

``ActorPool`` (``actor_pool``): a fixed set of actors that values are mapped over.
``queue.Queue`` (``from actorcore.util.queue import Queue, Empty, Full``): a FIFO
queue held by an actor, shared by the tasks and actors it is passed to.
``scheduling_strategies``: ``NodeAffinitySchedulingStrategy`` (and ``"SPREAD"``).
"""

from . import queue, scheduling_strategies
from .actor_pool import ActorPool

__all__ = ["ActorPool", "queue", "scheduling_strategies"]
