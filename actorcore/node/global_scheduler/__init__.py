"""The ``global_scheduler`` component: places what no local scheduler can take.

``_scheduler``: ``GlobalScheduler``.
"""
