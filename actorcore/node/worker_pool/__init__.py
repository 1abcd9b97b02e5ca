"""The ``worker_pool`` component: the node's worker processes.

``_pool``: task workers (start, watch, reap). ``_actor_processes``: the processes
that host actors.
"""
