"""The ``local_scheduler`` component: the node's task queue, resources and dispatch.

``_scheduler``: ``SchedulerState`` (queues, leases, spill-back to the global
scheduler); ``_cancels``: its cancels and the other ends decided from outside a
task (a departed owner, a removed placement group, the global scheduler's
verdicts); ``_component``: ``LocalScheduler`` (the tree component, the one place
that places work); ``_workers``: ``WorkerInfo``, a task worker as dispatch sees it;
``_queues``: ``ReadyQueues``, one FIFO per resource shape; ``_statistics``: what
it reports.
``_ledger``: ``ResourceLedger``, the one account of the node's resources for tasks
and actors both, whose waiters are woken by releases (no polling).
"""
