"""The ``local_scheduler`` component: the node's task queue, resources and dispatch.

``_scheduler``: ``SchedulerState`` (queues, leases, spill-back to the global
scheduler) and ``LocalScheduler`` (the tree component, the one place that places work).
``_ledger``: ``ResourceLedger``, the one account of the node's resources for tasks
and actors both, whose waiters are woken by releases (no polling).
"""
