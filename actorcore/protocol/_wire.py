"""The messages between core workers, workers, actor processes and nodes: the index.

The classes live in one module per pair of endpoints -- ``_to_node`` (what
processes send their node, and its answers), ``_from_node`` (what the node sends
them), ``_direct`` (caller <-> actor process) and ``_between_nodes`` (node <->
node) -- with their field checks in ``_wire_checks``. Every one is importable from
here (``from ..protocol import _wire as w``; ``w.Submit``), as listed below.

Every message is a frozen attrs class; each endpoint dispatches what it receives
through one `transport.Dispatcher` (its registry: message class -> handler, one dict
lookup on ``type(message)``), which runs the checks declared on the fields below
before the handler. A message of a class an endpoint does not handle (garbage, a
tuple, another endpoint's message) or with fields of the wrong type is refused: a
request gets a `transport.BadMessage` naming the endpoint and the message's class,
a one-way message is logged and dropped, and the endpoint keeps serving. The store
(``store._messages``) and the GCS (``gcs._messages``) speak the same way.

Core worker (driver or worker) -> node, one-way unless marked *request*:
  `Hello`            *request*: register the link (`HelloInfo`: the role's extras;
                     answered with a `HelloReply`, the node's facts)
  `Bye`              a driver shuts down: no grace period when its link closes
  `Export`           a function, sent once before use
  `Submit`           a batch of `TaskSpec`, `ActorSpec` and `CallSpec`, in order
  `Put`              a batch of put objects (also the large arguments of a call)
  `Fetch`            *request*: answered once every object is ready (`FetchedObjects`)
  `Rebuild`          *request*: a reader found these objects gone from the store
  `Free`             the owner dropped these objects
  `CancelTask`       cancel a task (and, ``recursive``, the tasks it submitted)
  `Blocked` / `Unblocked`  a task waits in ``get`` (its CPU is lent meanwhile)
  `GetFunction`      *request*: a function's export record
  `AdminCall`        *request*: introspection and admin (``node._calls``)
  `HoldActor`, `DropActor`  the sender's first handle to an actor appeared / its
                     last one went (`HoldActor` as a request: answered once held)
  `CancelActorCall`  ``cancel(ref)`` of an actor call sent through the node
  `CreateNamedActor`, `LookupActor`, `RouteActor`, `KillActor`, `GetActorState`,
  `ListActors`, `ActorNames`, `StartSupervisor`  *requests* of the actor manager
                     (answers: `ActorFound`, `ActorRoute`)
Worker -> node:
  `TaskDone`         a task's results (``pushed``: they went to their owner too)
  `StreamItems`      values a generator yielded
Actor worker -> node:
  `ActorUp`          registered; callers may dial ``direct_address``
  `ActorReady`       the constructor finished (``error``: its traceback text)
  `ActorDone`        a call's results (``ran``: it joins the actor's call log)
  `ActorDoneDirect`  large results of direct calls (the node holds them)
  `ActorLog`         a direct call of an actor that replays ran: log it
  `ActorCheckpoint`  the actor's state after the calls reported before it
  `ActorExit`        it called ``exit_actor()``: end it for good
Node -> core worker:
  `ObjectsReady`     results of tasks it owns (also a worker's push to an owner)
  `ReleaseObjects`   the node holds these large objects now: drop your store refs
  `ForwardedLog`     a worker's output lines, for a driver that prints them
  `FaultRules`       a fault-rule command (``testing.faults``)
Node -> worker:
  `Execute`          run a task (``owner_address``: push the results there too)
  `InterruptTask`    cancel a queued or running task
  `ExitWorker`       exit now
Node -> actor worker:
  `CreateActor`      (re)create an actor (``recovery``: checkpoint and calls to
                     replay first, see ``node.actor_manager._replay``)
  `ActorCall`        one method call
  `ActorCallLogged`  the node holds that direct call's log entry: answer its caller
  `CancelActorCall`  drop the call if queued, cancel it if running
  `StopActor`        end one actor of a shared process
Caller <-> actor process (the direct link, ``core_worker._direct_calls``):
  `DirectCall` -> `DirectResult` (``results`` None: the actor is not there);
  `DirectCalls` (a burst in one frame) -> `DirectResults` (answers ready together);
  `CancelActorCall` behind the call it cancels.
Worker leases (``_leases``; ``core_worker._leased_tasks``, ``node.local_scheduler._leases``):
  submitter -> node: `RequestLease` *request* -> `LeaseReply`; `ReturnLease`;
  `LeasedTasksLost` (the leased worker's link broke with tasks on it)
  submitter -> leased worker (its direct socket): `LeasedTask`, `CancelLeasedTask`;
  each task's end (its small results) comes back on the same link: `LeasedTaskDone`
  leased worker -> node: `LeasedStart` (the node tracks the task from here on)
Core worker -> node, placement groups (*requests*, ``util.placement_group``):
  `CreatePlacementGroup`, `RemovePlacementGroup`, `GetPlacementGroup`,
  `PlacementGroupTable`
Node <-> node (``node._peers``; node ids are hex strings; one-way messages queued
together travel as one `PeerBatch`, each then dispatched in order):
  `Hello` (role ``node``), `AdminCall` (``local_tree``, ``fault``, ...)
  tasks (``global_scheduler._forwarding``): `ForwardTasks`, `ForwardedResults`,
  `CancelForwarded`
  objects (``object_manager._remote``): `FetchFromOwner`, `OwnsPrefix` and
  `ReportLost` (*requests*), `FreeCopies`
  transfers (``object_manager._transfer``): `PayloadInfo`, `PayloadChunk`
  (*requests*); tests, benchmarks and admin tools: `PullObject`, `DropCopy`,
  `LocateObject`, `GetTransferStatistics`; fault hooks `SlowChunks`, `DelayStoreHold`
  actors (``actor_manager._remote``): `RemoteActorCreate`, `RemoteActorCall`,
  `RemoteActorDone`, `RemoteActorDied`, `RemoteActorEnd`, `RemoteActorKill`,
  `RemoteActorHold`, `RemoteActorDrop`, `RemoteActorCancel`, `RemoteActorSpec`
  (*request*)
  placement groups (``placement_groups``, coordinator -> node): `PrepareBundles`,
  `CommitBundles`, `RemoveGroup` (*requests*), `ReleaseBundles`

Answers. A request whose answer has fields is answered with a reply class (below,
after the messages): `HelloReply`, `FetchedObjects`, `ActorRoute`, `ActorFound`,
`OwnerEntry` (a list of them), `PayloadLayout`, `HostedActor`, `BundlesPrepared`.
Two kinds of answer stay plain values on purpose:
- `AdminCall` and the placement-group requests answer with dicts and lists of
  plain values: they are JSON-like documents that the CLI prints (``actorcore
  status --json``) and tests read by key, not fields two endpoints agree on.
- `GetFunction` answers with the function's export record as a dict, the same
  dict the GCS function table holds and `ForwardTasks` carries.

Every message class is a `transport.message` (a frozen attrs class without slots,
compared, hashed and printed by shared functions: see there why). The hot ones (a
task's submit, execute, done and ready; an actor call's) pickle as
their class and a tuple of their fields (`transport.compact`): as small and as quick
as the tuples they replace. Their checks are shallow (the container's type, not
every item's): they run once per message on the receiving side.
"""

from __future__ import annotations

from ._between_nodes import (
    BundlesPrepared,
    CancelForwarded,
    CommitBundles,
    DelayStoreHold,
    DropCopy,
    FetchFromOwner,
    ForwardedResults,
    ForwardTasks,
    FreeCopies,
    GetTransferStatistics,
    HostedActor,
    LocateObject,
    OwnerEntry,
    OwnsPrefix,
    PayloadChunk,
    PayloadInfo,
    PayloadLayout,
    PeerAck,
    PeerBatch,
    PrepareBundles,
    PullObject,
    ReleaseBundles,
    RemoteActorCall,
    RemoteActorCancel,
    RemoteActorCreate,
    RemoteActorDied,
    RemoteActorDone,
    RemoteActorDrop,
    RemoteActorEnd,
    RemoteActorHold,
    RemoteActorKill,
    RemoteActorSpec,
    RemoveGroup,
    ReportLost,
    SlowChunks,
)
from ._direct import (
    DirectCall,
    DirectCalls,
    DirectResult,
    DirectResults,
)
from ._from_node import (
    ActorCall,
    ActorCallLogged,
    CreateActor,
    Execute,
    ExitWorker,
    FaultRules,
    ForwardedLog,
    InterruptTask,
    ObjectsReady,
    ReleaseObjects,
    StopActor,
)
from ._leases import (
    CancelLeasedTask,
    LeasedStart,
    LeasedTask,
    LeasedTaskDone,
    LeasedTasksLost,
    LeaseReply,
    RequestLease,
    ReturnLease,
)
from ._to_node import (
    ActorCheckpoint,
    ActorDone,
    ActorDoneDirect,
    ActorExit,
    ActorFound,
    ActorLog,
    ActorNames,
    ActorReady,
    ActorRoute,
    ActorUp,
    AdminCall,
    Blocked,
    Bye,
    CancelActorCall,
    CancelTask,
    CreateNamedActor,
    CreatePlacementGroup,
    DropActor,
    Export,
    Fetch,
    FetchedObjects,
    Free,
    GetActorState,
    GetFunction,
    GetPlacementGroup,
    Hello,
    HelloInfo,
    HelloReply,
    HoldActor,
    KillActor,
    ListActors,
    LookupActor,
    PlacementGroupTable,
    Put,
    Rebuild,
    RemovePlacementGroup,
    RouteActor,
    StartSupervisor,
    StreamItems,
    Submit,
    TaskDone,
    Unblocked,
)

__all__ = [
    "ActorCall",
    "ActorCallLogged",
    "ActorCheckpoint",
    "ActorDone",
    "ActorDoneDirect",
    "ActorExit",
    "ActorFound",
    "ActorLog",
    "ActorNames",
    "ActorReady",
    "ActorRoute",
    "ActorUp",
    "AdminCall",
    "Blocked",
    "BundlesPrepared",
    "Bye",
    "CancelActorCall",
    "CancelForwarded",
    "CancelLeasedTask",
    "CancelTask",
    "CommitBundles",
    "CreateActor",
    "CreateNamedActor",
    "CreatePlacementGroup",
    "DelayStoreHold",
    "DirectCall",
    "DirectCalls",
    "DirectResult",
    "DirectResults",
    "DropActor",
    "DropCopy",
    "Execute",
    "ExitWorker",
    "Export",
    "FaultRules",
    "Fetch",
    "FetchFromOwner",
    "FetchedObjects",
    "ForwardTasks",
    "ForwardedLog",
    "ForwardedResults",
    "Free",
    "FreeCopies",
    "GetActorState",
    "GetFunction",
    "GetPlacementGroup",
    "GetTransferStatistics",
    "Hello",
    "HelloInfo",
    "HelloReply",
    "HoldActor",
    "HostedActor",
    "InterruptTask",
    "KillActor",
    "LeaseReply",
    "LeasedStart",
    "LeasedTask",
    "LeasedTaskDone",
    "LeasedTasksLost",
    "ListActors",
    "LocateObject",
    "LookupActor",
    "ObjectsReady",
    "OwnerEntry",
    "OwnsPrefix",
    "PayloadChunk",
    "PayloadInfo",
    "PayloadLayout",
    "PeerAck",
    "PeerBatch",
    "PlacementGroupTable",
    "PrepareBundles",
    "PullObject",
    "Put",
    "Rebuild",
    "ReleaseBundles",
    "ReleaseObjects",
    "RemoteActorCall",
    "RemoteActorCancel",
    "RemoteActorCreate",
    "RemoteActorDied",
    "RemoteActorDone",
    "RemoteActorDrop",
    "RemoteActorEnd",
    "RemoteActorHold",
    "RemoteActorKill",
    "RemoteActorSpec",
    "RemoveGroup",
    "RemovePlacementGroup",
    "ReportLost",
    "RequestLease",
    "ReturnLease",
    "RouteActor",
    "SlowChunks",
    "StartSupervisor",
    "StopActor",
    "StreamItems",
    "Submit",
    "TaskDone",
    "Unblocked",
]
