"""The ``local_scheduler`` component: the node's task queue, resources and dispatch.

``_scheduler``: ``SchedulerState`` (queues, resource ledger, leases, spill-back to the
global scheduler) and ``LocalScheduler`` (the tree component).
"""
