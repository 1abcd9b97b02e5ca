"""gcs: the global control store -- sharded, chain-replicated key-value tables with pub/sub.

The paper's GCS (Ray, OSDI 2018, section 4.2.3): all control state of the cluster
lives here, so every other component can be stateless and restart freely.

* `GcsConfig` -- shards (S), replicas per shard (R), durability, limits.
* `plan(config, token)` -- the supervision tree the node builds (`GcsPlan.tree`, a
  `ServiceSpec` tree: ``gcs`` -> ``coordinator``, ``shard_<i>`` -> ``replica_<j>``), and
  ``await plan.wait_ready()`` -> the address clients connect to.
* `GcsService` -- the same tree on plain nurseries (no actorcore kernel needed).
* `open_client(address, token)` -> `GcsClient` with generic ``put/get/delete/scan/
  subscribe`` and typed tables ``nodes, actors, objects, tasks, functions, jobs, kv``.

See `_replica.py` (chain replication, pub/sub), `_coordinator.py` (membership and
repair), `_client.py` (batching, retries, resubscription), `_durable.py` (logs).
"""

from ._client import Entry, Event, GcsClient, Subscription, open_client
from ._config import GcsConfig
from ._coordinator import Coordinator
from ._errors import (
    BadRequest,
    GcsError,
    GcsUnavailable,
    NameTaken,
    SubscriptionLost,
    UnknownTable,
    ValueTooLarge,
    VersionMismatch,
)
from ._protocol import TABLES, shard_of
from ._replica import Replica, ReplicaRemoved
from ._service import GcsPlan, GcsService, ReplicaProcessDied, ReplicaService, ServiceSpec, plan
from ._tables import ACTOR_STATES, TaskEntry

__all__ = [
    "ACTOR_STATES",
    "TABLES",
    "BadRequest",
    "Coordinator",
    "Entry",
    "Event",
    "GcsClient",
    "GcsConfig",
    "GcsError",
    "GcsPlan",
    "GcsService",
    "GcsUnavailable",
    "NameTaken",
    "Replica",
    "ReplicaProcessDied",
    "ReplicaRemoved",
    "ReplicaService",
    "ServiceSpec",
    "Subscription",
    "SubscriptionLost",
    "TaskEntry",
    "UnknownTable",
    "ValueTooLarge",
    "VersionMismatch",
    "open_client",
    "plan",
    "shard_of",
]
