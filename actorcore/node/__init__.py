"""The node process (``python -m actorcore.node``): one supervision tree.

::

    node (one_for_one)       _runtime: the node's state and message handlers
    ├── rpc_server           _tree: the listeners (and the tree's assembly)
    ├── gcs                  (head only) the ``gcs`` package
    ├── gcs_client           gcs_client/: the link to the GCS, the lineage flusher
    ├── global_scheduler     global_scheduler/
    ├── local_scheduler      local_scheduler/
    ├── object_manager       the ``store`` package; object_manager/: directory, bookkeeping
    ├── store_link           object_manager/_link: the node's own store link
    ├── object_directory     object_manager/_dep_watch: arguments that never arrive
    ├── worker_pool          worker_pool/: task workers and actor processes
    ├── actor_manager        actor_manager/: actors, their calls and GCS records
    └── placement_groups     placement_groups/: bundles, gang reservation, records

``__main__``: the command line. ``_calls``: introspection and admin calls.
"""
