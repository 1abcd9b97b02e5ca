"""The node process (``python -m actorcore.node``): one supervision tree.

::

    node (one_for_one)       _runtime: the node's state and message handlers
    ├── rpc_server           _tree: the listeners (and the tree's assembly)
    ├── gcs                  (head only) the ``gcs`` package
    ├── global_scheduler     global_scheduler/
    ├── local_scheduler      local_scheduler/
    ├── object_manager       the ``store`` package; object_manager/: directory, bookkeeping
    └── worker_pool          worker_pool/: task workers and actor processes
    (beside the tree)        actor_manager/: actors; gcs_client/: the link to the GCS

``__main__``: the command line. ``_calls``: introspection and admin calls.
"""
