"""What travels between processes: identifiers, specs, messages, values.

``_ids``: job, node, worker, task and object ids. ``_messages``: the messages
between core workers and the node, and ``TaskSpec``. ``_actors``: actor specs and
call specs. ``_placement``: placement strategies and bundle
resources (checked by the API, reserved by the node). ``_serialization``: user values, task arguments and errors as bytes.
"""
