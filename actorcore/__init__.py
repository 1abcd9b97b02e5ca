"""actorcore: a distributed task-and-actor framework on Trio (the Ray paper's system).

The core API is Ray's, so ``import actorcore as ray`` runs Ray core programs::

    import actorcore as ray

    ray.init()

    @ray.remote
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]
"""

from . import _api, exceptions
from ._actor_cancel import CallGateStatistics
from ._actor_class import ActorClass, make_actor_class
from ._actor_handle import ActorHandle, ActorMethod, get_actor, kill
from ._actor_introspect import ActorManagerStatistics
from ._api import (
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
from ._control import ControlStatistics
from ._directory import DirectoryStatistics
from ._object_ref import ObjectRef
from ._remote_function import RemoteFunction
from ._scheduler import SchedulerStatistics
from ._user_supervision import SupervisorRef, supervisor
from .runtime_context import RuntimeContext, get_runtime_context

__version__ = "0.1.0"

ObjectID = ObjectRef

_api._actor_factory = make_actor_class  # @remote on a class makes an ActorClass

# The node's components report typed statistics (frozen attrs classes):
# SchedulerStatistics, DirectoryStatistics, ActorManagerStatistics, ControlStatistics
# and, per actor, CallGateStatistics; the store's and the GCS's are `store.*Statistics`
# and `gcs.*Statistics`. `actorcore status` shows them.

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorManagerStatistics",
    "ActorMethod",
    "CallGateStatistics",
    "ClusterInfo",
    "ControlStatistics",
    "DirectoryStatistics",
    "ObjectID",
    "ObjectRef",
    "RemoteFunction",
    "RuntimeContext",
    "SchedulerStatistics",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "supervisor",
    "SupervisorRef",
    "tree",
    "wait",
]
