"""`GcsConfig`: everything the node needs to decide to build a GCS; `LaunchParams`:
what a replica process is started with."""

from __future__ import annotations

import json
from typing import Any

import attrs

__all__ = ["GcsConfig", "LaunchParams"]


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"GcsConfig.{attribute.name} must be an int >= 1, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"GcsConfig.{attribute.name} must be an int >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class GcsConfig:
    """Shape and limits of one GCS.

    shards: number of key-hash shards (S).
    replicas: chain length per shard (R). With R >= 2 each replica runs in its own
      process (``python -m gcs._replica_main``), so one process death is survivable.
    processes: force replicas into their own processes (True) or into the node
      process (False); ``None`` means "own processes iff replicas >= 2".
    host: interface the coordinator and the replicas listen on (TCP). Loopback by
      default; a multi-node cluster gives the head's address here.
    durable_dir: directory for the shard logs; ``None`` (the embedded cluster) keeps
      everything in memory only.
    fsync: fsync the log after every batch (slow; default only flushes to the OS, which
      survives a process crash but not a machine crash).
    max_value_bytes: largest accepted value (pickled size); larger gets `ValueTooLarge`.
    replay_buffer: committed updates each replica keeps for resubscription and chain
      repair (uncommitted ones are always kept).
    dedup_entries: remembered (client id, sequence) pairs per shard, so a retried write
      is applied once.
    lineage_cap: entries marked collectable that a shard keeps per table before flushing
      (evicting) the oldest; 0 evicts at once.
    heartbeat_interval / heartbeat_timeout: the coordinator's liveness probe of each
      replica (a connection loss is detected at once; the probe finds hung replicas).
    compact_every: log records after which a replica rewrites its log as one snapshot.
    recovery_grace: how long a restarted coordinator waits for the replicas of a shard
      to re-register before it decides the shard's chain from those it heard (it
      decides at once when every slot, or every member of the latest chain, is back).
    coordinator_patience: how long a replica keeps redialing a lost coordinator
      (serving meanwhile) before it gives up and exits.
    spare_replicas: replica processes kept started ahead, imported and waiting, for
      the replica slots that restart (``_spares.py``: a replacement then starts
      without paying the imports inside the failover). Only with replicas in their
      own processes; 0 starts none.
    """

    shards: int = attrs.field(default=1, validator=_positive)
    replicas: int = attrs.field(default=1, validator=_positive)
    processes: bool | None = None
    host: str = "127.0.0.1"
    durable_dir: str | None = None
    fsync: bool = False
    max_value_bytes: int = 32 * 1024 * 1024
    replay_buffer: int = 20_000
    dedup_entries: int = 200_000
    lineage_cap: int = 10_000
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 3.0
    compact_every: int = 200_000
    recovery_grace: float = 3.0
    coordinator_patience: float = 60.0
    spare_replicas: int = attrs.field(default=1, validator=_non_negative)

    @property
    def use_processes(self) -> bool:
        return self.replicas >= 2 if self.processes is None else self.processes


#: The prefix of a replica process's answer to a fault command, on its stdout
#: (written by ``_replica_main``, read by `ReplicaService`; here, where both look,
#: so that the service need not import the module the process runs as ``__main__``).
FAULTS_ANSWER = "FAULTS "

#: A spare replica process's first line on its stdout, once it has imported
#: everything and waits for its `LaunchParams` (``_spares.py``).
SPARE_READY = "SPARE"


@attrs.frozen(kw_only=True)
class LaunchParams:
    """What a replica process is started with (one JSON line on its stdin)."""

    config: GcsConfig
    shard: int
    name: str
    token: bytes
    coordinator: str
    #: The node's TLS config for TCP links (`transport.TlsConfig.as_dict`), or None.
    tls: dict[str, Any] | None
    insecure: bool
    #: The `transport.faults` rules installed in the GCS's replica processes when
    #: this one starts, by tag (rule dicts): in force from its first frame.
    fault_rules: dict[str, list[dict[str, Any]]] = attrs.Factory(dict)

    def to_json(self) -> str:
        return json.dumps({
            "config": attrs.asdict(self.config), "shard": self.shard, "name": self.name,
            "token": self.token.hex(), "coordinator": self.coordinator, "tls": self.tls,
            "insecure": self.insecure, "fault_rules": self.fault_rules})

    @classmethod
    def from_json(cls, line: str | bytes) -> LaunchParams:
        raw = json.loads(line)
        return cls(config=GcsConfig(**raw["config"]), shard=int(raw["shard"]),
                   name=str(raw["name"]), token=bytes.fromhex(raw["token"]),
                   coordinator=str(raw["coordinator"]), tls=raw["tls"],
                   insecure=bool(raw["insecure"]),
                   fault_rules=dict(raw.get("fault_rules") or {}))
