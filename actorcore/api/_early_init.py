"""The package's ``actorcore.init`` in a fresh driver: spawn the node, then load the
runtime while it starts (see `session._launcher`, "A node spawned ahead of init()").

Nothing here imports Trio, the protocol or the core worker: the point is to spawn
the node before they are imported. Only a plain ``init()`` is served this way (the
keywords below, no address, no TLS, no runtime environment, no directories); any
other goes straight to `actorcore.api._api.init`, as does every ``init()`` once the
runtime is loaded (a worker's, a driver's second one, one after ``@remote``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["init"]

#: The keywords of a plain ``init()``: those that shape the node (read by
#: `ClusterConfig.from_init`, as `_api.init` reads them) or not the node at all.
PLAIN = frozenset({
    "num_cpus", "num_gpus", "resources", "object_store_memory", "gcs_shards",
    "gcs_replicas", "lineage_cap", "num_workers", "log_to_driver",
    "ignore_reinit_error", "namespace", "logging_level", "configure_logging",
})


def init(args: tuple[Any, ...], kwargs: dict[str, Any], load_runtime: Callable[[], None]) -> Any:
    """``actorcore.init(*args, **kwargs)``; ``load_runtime``: the package's."""
    from ..session import _launcher

    spawned = _spawn_early(args, kwargs)
    try:
        load_runtime()  # while the node starts, if it was spawned
        from ._api import init as real_init

        return real_init(*args, **kwargs)
    finally:
        if spawned:
            _launcher.drop_early()  # not adopted: `init` raised, or chose otherwise


def _spawn_early(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Spawn the node of a plain ``init()`` in a fresh driver; whether it did. Any
    error is left for `_api.init` to meet and raise in its own words."""
    if args or not PLAIN.issuperset(kwargs):
        return False
    if "actorcore.core_worker._worker_state" in sys.modules:
        return False  # the runtime is loaded: a worker, or nothing to overlap
    from ..session import _config, _launcher, _security

    try:
        if _config.env_value("ACTORCORE_ADDRESS"):
            return False
        if any(os.environ.get(name) for name in _security.ENV.values()):
            return False
        _launcher.spawn_early(_config.ClusterConfig.from_init(kwargs))
    except Exception:  # noqa: BLE001 - `_api.init` raises it, or spawns its own
        return False
    return True
