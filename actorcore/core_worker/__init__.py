"""The core worker: the runtime inside every driver and worker process.

``_core_worker``: submission, ownership of returned objects, ``get``/``wait``, the
link to the node. ``_driver``: the driver's Trio loop in a background thread.
``_object_ref``: ``ObjectRef``. ``_store_link``: large values through the node's
shared-memory store. ``_direct_calls``: actor calls straight to the actor's process.
``_worker_state``: the process's current core worker and task context.
"""
