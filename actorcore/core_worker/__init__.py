"""The core worker: the runtime inside every driver and worker process.

``_core_worker``: ``CoreWorker``, the facade the API and the worker process call;
it assembles the parts below and keeps submission (tasks, puts, exports).
``_loop``: the core loop's thread, token and nursery. ``_node_link``: the link to
the node and its outbox. ``_references``: the objects this process knows (entries,
local refs, streams). ``_waiting``: ``get``/``wait``/``await``, fetches, rebuilds of
lost values. ``_driver``: the driver's Trio loop in a background thread.
``_object_ref``: ``ObjectRef``. ``_store_link``: large values through the node's
shared-memory store. ``_direct_calls``: actor calls straight to the actor's process.
``_generator``: ``ObjectRefGenerator``. ``_worker_state``: the process's current
core worker and task context.
"""
