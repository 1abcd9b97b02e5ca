"""``actorcore.util``: utilities built on the core API, under Ray's names.

``ActorPool`` (``actor_pool``): a fixed set of actors that values are mapped over.
``queue.Queue`` (``from actorcore.util.queue import Queue, Empty, Full``): a FIFO
queue held by an actor, shared by the tasks and actors it is passed to.
"""

from . import queue
from .actor_pool import ActorPool

__all__ = ["ActorPool", "queue"]
