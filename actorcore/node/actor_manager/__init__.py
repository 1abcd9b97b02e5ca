"""The actor manager: actor creation, placement, calls, restarts and death.

``_manager``: ``ActorManager``. ``_calls``: forwarding method calls in submission
order. ``_introspect``: what it shows (``actor_state``, tree entries).
``_user_supervision``: user actors under the kernel's supervisors.
"""
