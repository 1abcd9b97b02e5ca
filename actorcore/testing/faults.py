"""Fault injection against a live cluster.

``crash(component)`` makes a named component of a node's supervision tree crash:
the node's supervisor injects an exception into it (the kernel's fault hook), the
component restarts under its supervisor's strategy, and the cluster keeps serving —
components keep their durable state in the GCS or in the node, outside the component.

Every path ``actorcore.tree()`` shows can be crashed, with or without its leading
``cluster/node/``:

- ``"node"`` (or ``"cluster"``): the node's whole tree restarts in order (one
  restart of the node supervisor);
- a component: ``"local_scheduler"``, ``"global_scheduler"``, ``"object_manager"``,
  ``"worker_pool"``, ``"rpc_server"``, ``"gcs/shard_0/replica_0"``, a user
  supervisor by its name — it restarts under its supervisor's strategy;
- ``"worker_pool/worker_3"``: that worker process is killed — its tasks are retried
  (``max_retries``), its actors restarted (``max_restarts``) or they die with
  ``ActorDiedError``;
- ``"worker_pool/worker_3/<actor>"`` or ``"<supervisor>/<actor>"``: that actor
  crashes (its process, or only it in a shared actor process) and its restart
  policy applies; ``"worker_pool/worker_3/task:<name>"``: the task's process dies.

The crash is injected before ``crash`` returns; the restart follows (watch
``actorcore.tree()``: the component's ``restarts`` and ``state``). A component
still restarting from an earlier crash cannot crash again yet (``ValueError``).
"""

from __future__ import annotations

from typing import Any

from ..core_worker import _worker_state

__all__ = ["crash"]


def crash(component: str, node_id: str | None = None, *, address: str | None = None) -> Any:
    """Crash ``component`` on the node ``node_id`` (default: the head / the local node).

    Returns the node's description of what it did. Raises ``ValueError`` naming the
    component if there is no such running component.
    """
    if not isinstance(component, str) or not component:
        raise ValueError(f"crash(): component must be a non-empty tree path, got {component!r}")
    core = _worker_state.core
    if core is not None and address is None:
        if node_id is not None and node_id != core.node_id.hex():
            raise ValueError(
                f"crash(): unknown node {node_id!r} (this single-node cluster has "
                f"{core.node_id.hex()})"
            )
        try:
            return core.call_sync("crash", component)
        except Exception as exc:
            raise _unwrap(exc) from None
    from ..session._admin import admin_call

    try:
        return admin_call(address, "crash", component)
    except Exception as exc:
        raise _unwrap(exc) from None


def _unwrap(exc: Exception) -> Exception:
    """A node-side ValueError/ChildNotRunning arrives as transport.RemoteError."""
    remote_type = getattr(exc, "remote_type", None) or getattr(exc, "type_name", None)
    message = getattr(exc, "remote_message", None) or str(exc)
    if remote_type is not None:
        return ValueError(f"crash() failed: {remote_type}: {message}")
    return exc
