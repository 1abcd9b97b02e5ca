"""The worker process (``python -m actorcore.worker``): runs user code.

``_process``: the process (its link to the node, the main). ``_executor``: tasks
in executors. ``_actor_host``: user actors (``_threaded_host``, ``_async_host``,
``_host_context``). ``_cancel``: cancelling actor calls.
``_actor_process``: the process hosting actors (``python -m
actorcore.worker._actor_process``).
"""
