"""What travels between processes: identifiers, specs, messages, values.

``_ids``: job, node, worker, task and object ids. ``_wire``: the index of the
messages between core workers, workers, actor processes and nodes (frozen attrs
classes, one registry per endpoint), defined by pair of endpoints in ``_to_node``,
``_from_node``, ``_direct`` and ``_between_nodes``. ``_messages``: ``TaskSpec`` and the link's constants.
``_actors``: actor specs and call specs. ``_placement``: placement strategies and
bundle resources (checked by the API, reserved by the node). ``_serialization``:
user values, task arguments and errors as bytes.
"""
