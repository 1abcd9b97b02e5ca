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

from . import exceptions  # ray.exceptions (no import of the runtime)

if TYPE_CHECKING:
    from . import actor, util  # ray.actor, ray.util
    from .api._actor_class import ActorClass
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
    from .node.actor_manager._introspect import ActorManagerStatistics
    from .node.gcs_client._control import ControlStatistics
    from .node.local_scheduler._ledger import LedgerStatistics
    from .node.local_scheduler._statistics import SchedulerStatistics
    from .node.object_manager._directory import DirectoryStatistics
    from .runtime_context import RuntimeContext, get_gpu_ids, get_runtime_context
    from .worker._cancel import CallGateStatistics

    ObjectID = ObjectRef

__version__ = "0.1.0"


def _check_switches() -> None:
    """Refuse a bad value of a switch the runtime reads when its module loads, at
    ``import actorcore`` as before the package loaded the runtime lazily (a
    `ConfigurationError` naming the variable), not at some later first use."""
    import os

    names = ("ACTORCORE_DIRECT_CALLS", "ACTORCORE_DIRECT_TASKS")
    if any(name in os.environ for name in (*names, "ACTORCORE_NO_DIRECT")):
        from .session._config import env_value

        for name in names:
            env_value(name)


_check_switches()

# The package loads nothing of the runtime on import. Every name of the API is
# looked up on first use (`__getattr__`): the first one loads the whole runtime API
# at once (`load_runtime`: Trio, attrs' classes, the protocol, the core worker;
# about 0.3 s of CPU), and binds all its names here, so that later lookups are
# plain attribute reads. `init` is the exception: a fresh driver's `init()` first
# spawns its node (`_early_init`), and only then loads the runtime, which it does
# while the node starts (see `session._launcher`, "A node spawned ahead of init()").
# The node's components' statistics classes are never loaded with the API: a driver
# never needs the node's modules (the scheduler alone is a thousand lines).
_LAZY = {
    "ActorManagerStatistics": ".node.actor_manager._introspect",
    "ControlStatistics": ".node.gcs_client._control",
    "LedgerStatistics": ".node.local_scheduler._ledger",
    "SchedulerStatistics": ".node.local_scheduler._statistics",
    "DirectoryStatistics": ".node.object_manager._directory",
    "CallGateStatistics": ".worker._cancel",
}


#: Where each name of the runtime's API lives (`load_runtime`).
_RUNTIME = {
    **dict.fromkeys(("actor", "util"), ""),  # ray.actor, ray.util: the submodules
    "ActorClass": ".api._actor_class",
    **dict.fromkeys(("ActorHandle", "ActorMethod", "get_actor", "kill", "list_named_actors"),
                    ".api._actor_handle"),
    **dict.fromkeys(("ClusterInfo", "available_resources", "cancel", "cluster_resources", "get",
                     "init", "is_initialized", "method", "nodes", "put", "remote", "shutdown",
                     "tree", "wait"), ".api._api"),
    "RemoteFunction": ".api._remote_function",
    **dict.fromkeys(("SupervisorRef", "supervisor"), ".api._supervisor"),
    **dict.fromkeys(("DynamicObjectRefGenerator", "ObjectRefGenerator"),
                    ".core_worker._generator"),
    "ObjectRef": ".core_worker._object_ref",
    **dict.fromkeys(("RuntimeContext", "get_gpu_ids", "get_runtime_context"), ".runtime_context"),
}


def load_runtime() -> None:
    """Import the runtime's API and bind its names in this package (what ``import
    actorcore`` did at once before it became lazy). Idempotent, any thread."""
    import importlib

    from .api import _api
    from .api._actor_class import make_actor_class

    _api.set_actor_factory(make_actor_class)  # @remote on a class makes an ActorClass
    names: dict[str, Any] = {}
    for name, module in _RUNTIME.items():
        if module:
            names[name] = getattr(importlib.import_module(module, __name__), name)
        else:
            names[name] = importlib.import_module(f".{name}", __name__)
    names["ObjectID"] = names["ObjectRef"]
    names["_api"] = _api  # `actorcore._api`: the API's state, as tests and tools reach it
    globals().update(names)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
    elif name in _RUNTIME or name in ("ObjectID", "_api"):
        load_runtime()
        value = globals()[name]
    else:
        raise AttributeError(f"module 'actorcore' has no attribute {name!r}")
    globals()[name] = value
    return value


if not TYPE_CHECKING:

    class _Init:
        """``actorcore.init`` until the runtime is loaded: in a fresh driver it spawns
        the node first (`api._early_init`), then loads the runtime and calls the
        real `actorcore.api._api.init` (whose signature and docstring it shows)."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from .api import _early_init

            return _early_init.init(args, kwargs, load_runtime)

        @property
        def __signature__(self) -> Any:
            import inspect

            from .api._api import init

            return inspect.signature(init)

        @property
        def __doc__(self) -> Any:  # type: ignore[override]
            from .api._api import init

            return init.__doc__

        def __repr__(self) -> str:
            return "<function actorcore.init>"

    init = _Init()

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
