"""The API a driver program calls (re-exported by ``actorcore``).

``_api``: ``init``, ``shutdown``, ``get``, ``put``, ``wait``, ``cancel``, ``remote``,
``tree``, cluster introspection. ``_remote_function``: ``@remote`` functions.
``_actor_class``: ``@remote`` classes (creating actors). ``_actor_handle``: actor
handles, ``get_actor``, ``kill``. ``_options``: validation of ``@remote(...)`` and
``.options(...)``. ``_supervisor``: ``supervisor(...)``, user actors under the kernel's
supervisors.
"""
