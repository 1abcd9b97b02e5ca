"""The actor manager: actor creation, placement, calls, restarts and death.

``_manager``: ``ActorManager``, which composes the rest and handles the actor
messages. ``_lifecycle``: its actors' creation, placement, processes and death.
``_record``: an actor as the node knows it. ``_calls``: forwarding method calls in
submission order.
``_names``: names, claimed in the GCS. ``_holders``: who holds handles to which
actor. ``_replay`` and ``_call_logs``: call logs and checkpoints of actors that
replay. ``_remote``: actors hosted on other nodes. ``_gcs_records``: the actor
table written behind to the GCS. ``_introspect``: what it shows (``actor_state``,
tree entries). ``_user_supervision``: user actors under the kernel's supervisors.
"""
