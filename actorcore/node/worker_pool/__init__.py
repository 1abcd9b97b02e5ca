"""The ``worker_pool`` component: the node's worker processes.

``_pool``: task workers (start, watch, reap). ``_actor_processes``: the processes
that host actors. ``_zygote``: the node's zygote, which forks both kinds with their
imports done (``actorcore.worker._zygote`` is the process itself).
"""
