"""actorcore: a distributed task-and-actor framework on Trio (the Ray paper's system).

The core API is Ray's, so ``import actorcore as ray`` runs Ray core programs::

    import actorcore as ray

    ray.init()

    @ray.remote
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]
"""

from typing import TYPE_CHECKING, Any

from . import actor, exceptions, util  # ray.actor, ray.exceptions, ray.util
from .api import _api
from .api._actor_class import ActorClass, make_actor_class
from .api._actor_handle import ActorHandle, ActorMethod, get_actor, kill, list_named_actors
from .api._api import (
    ClusterInfo,
    available_resources,
    cancel,
    cluster_resources,
    get,
    init,
    is_initialized,
    method,
    nodes,
    put,
    remote,
    shutdown,
    tree,
    wait,
)
from .api._remote_function import RemoteFunction
from .api._supervisor import SupervisorRef, supervisor
from .core_worker._generator import DynamicObjectRefGenerator, ObjectRefGenerator
from .core_worker._object_ref import ObjectRef
from .runtime_context import RuntimeContext, get_gpu_ids, get_runtime_context

if TYPE_CHECKING:
    from .node.actor_manager._introspect import ActorManagerStatistics
    from .node.gcs_client._control import ControlStatistics
    from .node.local_scheduler._ledger import LedgerStatistics
    from .node.local_scheduler._statistics import SchedulerStatistics
    from .node.object_manager._directory import DirectoryStatistics
    from .worker._cancel import CallGateStatistics

# The node's components' statistics classes, imported when first named: a driver
# never needs the node's modules (the scheduler alone is a thousand lines), and
# every program that imports actorcore would pay for compiling them in.
_LAZY = {
    "ActorManagerStatistics": ".node.actor_manager._introspect",
    "ControlStatistics": ".node.gcs_client._control",
    "LedgerStatistics": ".node.local_scheduler._ledger",
    "SchedulerStatistics": ".node.local_scheduler._statistics",
    "DirectoryStatistics": ".node.object_manager._directory",
    "CallGateStatistics": ".worker._cancel",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'actorcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

__version__ = "0.1.0"

ObjectID = ObjectRef

_api.set_actor_factory(make_actor_class)  # @remote on a class makes an ActorClass

# The node's components report typed statistics (frozen attrs classes):
# SchedulerStatistics, LedgerStatistics, DirectoryStatistics, ActorManagerStatistics, ControlStatistics
# and, per actor, CallGateStatistics; the store's and the GCS's are `store.*Statistics`
# and `gcs.*Statistics`. `actorcore status` shows them.

__all__ = [
    "ActorClass",
    "ActorHandle",
    "actor",
    "ActorManagerStatistics",
    "ActorMethod",
    "CallGateStatistics",
    "ClusterInfo",
    "ControlStatistics",
    "DirectoryStatistics",
    "DynamicObjectRefGenerator",
    "LedgerStatistics",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "RuntimeContext",
    "SchedulerStatistics",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "list_named_actors",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "supervisor",
    "SupervisorRef",
    "tree",
    "util",
    "wait",
]
