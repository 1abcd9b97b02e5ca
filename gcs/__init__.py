"""gcs: the global control store -- sharded, chain-replicated key-value tables with pub/sub.

The paper's GCS (Ray, OSDI 2018, section 4.2.3): all control state of the cluster
lives here, so every other component can be stateless and restart freely.

Public surface
--------------
* `GcsConfig` -- shards (S), replicas per shard (R), durability, limits.
* `plan(config, token)` -> `GcsPlan`: the supervision tree to build (``plan.tree``, a
  `ServiceSpec` tree: ``gcs`` -> ``coordinator``, ``shard_<i>`` -> ``replica_<j>``)
  and ``await plan.wait_ready()`` -> the address clients connect to. Its leaves are
  child-protocol services; whoever runs the GCS (the node, a test) supervises them
  with the kernel: one restart mechanism, and this package never imports it.
* `open_client(address, token)` -> `GcsClient` with generic ``put/get/delete/scan/
  subscribe/update/set_add/set_remove/mark_collectable``, their batched forms
  ``write_many/put_many/mark_collectable_many`` (one waiting task per shard, not per
  op; same idempotent retries) and typed tables ``nodes, actors, objects, tasks,
  functions, jobs, kv`` (``tasks.add_many/mark_collectable_many`` for the lineage).
* Statistics are frozen attrs classes: `GcsClientStatistics` (``client.statistics()``),
  `CoordinatorStatistics` with a `ChainStatistics` per shard, `ReplicaStatistics` with
  its `PublisherStatistics`, `ShardStateStatistics` and `ShardLogStatistics`; the
  coordinator and the replicas answer a `Stats` message with theirs.
* `messages`: the wire vocabulary (`_messages.py`), every message a frozen attrs class.

Design
------
Data model. Ten fixed tables (`TABLES`); keys are ``str`` or ``bytes``; values are
pickled by the client (cloudpickle) and are opaque ``bytes`` to the replicas, which
therefore never unpickle user data and never need user classes. One server-side
type exists besides: a ``frozenset`` of plain members, changed atomically by
``set_add``/``set_remove`` (object locations). Every key has a *version*: the shard
sequence number of the update that last wrote it, which gives compare-and-set
(``expect_version``; 0 = absent) and with it atomic register-if-absent (the actor
name registry) and read-modify-write (`GcsClient.update`).

Sharding. ``shard_of(key) = crc32(key) % S`` -- the key alone, so all tables'
entries for one id live on one shard. Operations on one key are linearizable; there
are no cross-shard transactions. Scans and prefix subscriptions fan out to every
shard; their order is per shard.

Chain replication (`_replica.py`; the links along the chain -- forwarding, state
transfer, acks -- are its `ChainLink` component, `_chain_link.py`). Each shard is a chain of R replicas. The head
executes writes (checks versions and set membership, numbers the resulting updates
with the shard's next sequence numbers), every replica applies updates in sequence
order and forwards them down; the tail commits and acknowledges back up; the head
answers. Reads go to the tail, so they only see committed writes. A replica keeps
every uncommitted update plus the last ``replay_buffer`` committed ones in its log,
which serves three purposes with one mechanism: resending to a new successor after a
repair, state transfer to a replacement (a successor too far behind first gets a
snapshot), and replay to a resubscribing subscriber.

Membership (`_coordinator.py`). One coordinator per GCS (in the head node process)
holds the chains and pushes every change, with a per-shard epoch, to the replicas and
the clients. It detects a dead replica at once through a never-answered request on
its connection (the kernel closes a dead process's sockets) and a hung one by
heartbeat; it cuts it out of its chain (the neighbours link up, head or tail role
moves on), and the replica's supervising service kills the process if it still
lives. The supervisor restarts the slot; the new incarnation registers, becomes the
*learner* behind the tail, catches up by state transfer while clients keep going,
and is then appended as the new tail (reads switch to it only once it has applied
everything the old tail had acknowledged).

Coordinator restart. The coordinator is off the data path and its state (the
chains) is recoverable from the replicas, so its crash loses nothing: the ``gcs``
supervisor is ``one_for_one`` (the shards live on), the chains keep serving under
their last config, replicas and clients redial the same address, and the replicas
register again with their chain view, epoch and progress. The new incarnation
rebuilds each shard's chain from the highest-epoch view (filtered to the replicas
that are back, in the view's order), bumps the epoch and pushes it; replicas that
died meanwhile are left out and replaced as usual. Subscriptions are untouched (they
live on the tails). The reasoning about races is in `_coordinator.py`, "Restart".

Clients (`_client.py`; per-shard queues in `_shard_queue.py`, the coordinator link
and layout in `_coordinator_link.py`, the replica links in `_replica_links.py`,
subscriptions in `_subscription.py`). Calls are
batched per shard (one request carries everything queued since the last send) and
pipelined (many batches in flight). Writes carry (client id, sequence number) and
the shard remembers recent results (replicated), so a retry after a failure is
answered, not applied twice. A client retries until its operation timeout (then
`GcsUnavailable`), waiting for a newer layout between tries.
Reads carry the highest sequence number the client has seen, so its reads never go
backwards. Subscriptions resume after a failover from their last sequence number +
1 and drop duplicates: each update exactly once, in order (per shard).

Durability (`_durable.py`). With ``durable_dir`` every replica appends each applied
batch to its own log (length + CRC framed pickle records; a snapshot first, periodic
compaction). After a whole-GCS restart the first replica of each shard to register
recovers the longest log, the others join by state transfer. Without it (the embedded
cluster) the GCS survives R-1 failures per shard but not a restart of the head node.

Memory. The log, the dedup record and each subscriber's outbox are bounded; lineage
is bounded by `GcsClient.mark_collectable` / ``tasks.mark_collectable`` (and their
``_many`` forms, which the runtime uses once all of a task's returns are freed): entries the
runtime no longer needs are kept up to ``lineage_cap`` per table and shard, and the
oldest beyond it are flushed from memory (in durable mode their history stays in the
log until the next compaction).

Messages. Every message between processes is a frozen attrs class (`_messages.py`);
each endpoint dispatches through one `transport.Dispatcher`. A message of a type the
endpoint does not handle, or with fields of the wrong type, is refused with
`BadRequest` and the endpoint keeps serving.

Bad input. Every operation is validated by the replica before it touches state; a
bad one gets a typed `GcsError` (`UnknownTable`, `BadRequest`, `ValueTooLarge`, ...)
naming the fault, as the result of that one operation, and the shard keeps serving.

Not done / limits: the coordinator lives and dies with the head node (like the
paper's); a crash of the coordinator alone is survived (above), but a crash of the
whole ``gcs`` supervisor stops its replicas: a durable GCS recovers from its logs, an
in-memory one starts empty (a new shard *history*: clients notice, drop the sequence
numbers they saw and carry on; subscribers get `SubscriptionLost`); no cross-shard
atomicity; a subscriber slower than its
outbox (100,000 events) is resubscribed from the replay buffer and gets
`SubscriptionLost` if that is too short.
"""

from . import _messages as messages
from ._client import Entry, Event, GcsClient, GcsClientStatistics, Subscription, open_client
from ._config import GcsConfig, LaunchParams
from ._coordinator import ChainStatistics, Coordinator, CoordinatorStatistics
from ._durable import ShardLogStatistics
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
from ._pubsub import PublisherStatistics
from ._replica import Replica, ReplicaRemoved, ReplicaStatistics
from ._service import (
    CoordinatorService,
    GcsPlan,
    ReplicaFaults,
    ReplicaProcessDied,
    ReplicaService,
    ServiceSpec,
    plan,
)
from ._state import ShardStateStatistics
from ._tables import ACTOR_STATES, TaskEntry

__all__ = [
    "ACTOR_STATES",
    "TABLES",
    "BadRequest",
    "ChainStatistics",
    "Coordinator",
    "CoordinatorService",
    "CoordinatorStatistics",
    "Entry",
    "Event",
    "GcsClient",
    "GcsClientStatistics",
    "GcsConfig",
    "GcsError",
    "GcsPlan",
    "GcsUnavailable",
    "LaunchParams",
    "NameTaken",
    "PublisherStatistics",
    "Replica",
    "ReplicaFaults",
    "ReplicaProcessDied",
    "ReplicaRemoved",
    "ReplicaService",
    "ReplicaStatistics",
    "ServiceSpec",
    "ShardLogStatistics",
    "ShardStateStatistics",
    "Subscription",
    "SubscriptionLost",
    "TaskEntry",
    "UnknownTable",
    "ValueTooLarge",
    "VersionMismatch",
    "messages",
    "open_client",
    "plan",
    "shard_of",
]
