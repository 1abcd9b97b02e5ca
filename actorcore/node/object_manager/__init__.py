"""The ``object_manager`` component: the node's objects.

``_directory``: the object directory (every object the node knows, ready or
pending). ``_objects``: puts, fetches, frees, the node's store refs and lineage
counts. The store service itself is the ``store`` package.
"""
