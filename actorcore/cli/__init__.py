"""The ``actorcore`` command line (also ``python -m actorcore``).

``_cli``: ``start``, ``stop``, ``status``, ``tree``.
"""
