"""Typed tables for the runtime, over the generic `GcsClient` API.

Each is a thin, documented facade: which table a record lives in, how its key is
formed, which operations must be atomic. Values are whatever the runtime stores
(attrs instances, dicts, bytes): the client pickles them, the replicas never look
inside. Ids may be ``str`` or ``bytes``.

A table needs only the generic key-value API of its client (`KeyValueApi`, which
`GcsClient` implements), so this module does not import the client's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import attrs

from ._codec import Entry
from ._errors import NameTaken, VersionMismatch
from ._messages import Key
from ._subscription import Subscription

__all__ = [
    "ACTOR_STATES",
    "ActorTable",
    "FunctionTable",
    "JobTable",
    "KeyValueApi",
    "KvTable",
    "NodeTable",
    "ObjectTable",
    "TaskEntry",
    "TaskTable",
]

ACTOR_STATES = ("pending", "alive", "restarting", "dead")


class KeyValueApi(Protocol):
    """The generic API of `GcsClient` the typed tables are written over."""

    async def put(self, table: str, key: Key, value: Any, *,
                  expect_version: int | None = None) -> int: ...

    async def put_if_absent(self, table: str, key: Key, value: Any) -> bool: ...

    async def get(self, table: str, key: Key, default: Any = None) -> Any: ...

    async def get_entry(self, table: str, key: Key) -> Entry | None: ...

    async def delete(self, table: str, key: Key, *, expect_version: int | None = None) -> bool: ...

    async def set_add(self, table: str, key: Key, member: str | bytes | int) -> bool: ...

    async def set_remove(self, table: str, key: Key, member: str | bytes | int) -> bool: ...

    async def mark_collectable(self, table: str, key: Key) -> bool: ...

    async def put_many(self, table: str, items: list[tuple[Key, Any]], *,
                       return_exceptions: bool = False,
                       plain_pickle: bool = False) -> list[Any]: ...

    async def mark_collectable_many(self, table: str, keys: list[Key], *,
                                    return_exceptions: bool = False) -> list[Any]: ...

    async def update(self, table: str, key: Key, fn: Callable[[Any], Any], *,
                     default: Any = None, retries: int = 100) -> Any: ...

    async def scan(self, table: str, prefix: Key = "", *,
                   limit: int | None = None) -> list[tuple[Key, Any]]: ...

    def subscribe(self, table: str, *, key: Key | None = None,
                  prefix: Key | None = None) -> AbstractAsyncContextManager[Subscription]: ...


class _Table:
    table = ""

    def __init__(self, client: KeyValueApi) -> None:
        self._client = client

    async def put(self, key: Key, value: Any) -> int:
        return await self._client.put(self.table, key, value)

    async def get(self, key: Key, default: Any = None) -> Any:
        return await self._client.get(self.table, key, default)

    async def get_entry(self, key: Key) -> Entry | None:
        return await self._client.get_entry(self.table, key)

    async def delete(self, key: Key) -> bool:
        return await self._client.delete(self.table, key)

    async def scan(self, prefix: Key = "", *, limit: int | None = None) -> list[tuple[Key, Any]]:
        return await self._client.scan(self.table, prefix, limit=limit)

    async def update(self, key: Key, fn: Callable[[Any], Any], *, default: Any = None) -> Any:
        return await self._client.update(self.table, key, fn, default=default)

    @asynccontextmanager
    async def subscribe(self, key: Key | None = None, *,
                        prefix: Key | None = None) -> AsyncIterator[Subscription]:
        async with self._client.subscribe(self.table, key=key, prefix=prefix) as sub:
            yield sub


def _evolve(record: Any, changes: dict[str, Any]) -> Any:
    if attrs.has(type(record)):
        return attrs.evolve(record, **changes)
    if isinstance(record, dict):
        return {**record, **changes}
    raise TypeError(f"cannot update fields {sorted(changes)} of a {type(record).__name__}; "
                    "store attrs instances or dicts")


class NodeTable(_Table):
    """``nodes[node_id]`` = the node's info (address, resources, ...);
    ``heartbeats[node_id]`` = its latest liveness report (kept apart: it changes often)."""

    table = "nodes"

    async def register(self, node_id: Key, info: Any) -> int:
        return await self.put(node_id, info)

    async def heartbeat(self, node_id: Key, report: Any) -> int:
        return await self._client.put("heartbeats", node_id, report)

    async def last_heartbeat(self, node_id: Key) -> Any:
        return await self._client.get("heartbeats", node_id)

    async def set_fields(self, node_id: Key, **changes: Any) -> Any:
        """Atomically change fields of the node's record (e.g. ``alive=False``)."""
        return await self.update(node_id, lambda r: _evolve(r, changes))

    async def list(self) -> list[tuple[Key, Any]]:
        return await self.scan()


class ActorTable(_Table):
    """``actors[actor_id]`` = the actor's record (state, location, ...);
    ``actor_names[namespace/name]`` = actor id: the name registry."""

    table = "actors"

    async def set_fields(self, actor_id: Key, **changes: Any) -> Any:
        """Atomically change fields (``state=...``, ``location=...``) of the record."""
        state = changes.get("state")
        if state is not None and state not in ACTOR_STATES:
            raise ValueError(f"actor state must be one of {ACTOR_STATES}, got {state!r}")
        return await self.update(actor_id, lambda r: _evolve(r, changes))

    @staticmethod
    def _name_key(name: str, namespace: str) -> str:
        for what, value in (("name", name), ("namespace", namespace)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"actor {what} must be a non-empty str, got {value!r}")
        return f"{namespace}\x00{name}"

    async def register_name(self, name: str, actor_id: Key, *, namespace: str = "default") -> None:
        """Atomically claim ``name`` in ``namespace``; `NameTaken` if someone has it."""
        key = self._name_key(name, namespace)
        try:
            await self._client.put("actor_names", key, actor_id, expect_version=0)
        except VersionMismatch:
            owner = await self._client.get("actor_names", key)
            raise NameTaken(
                f"actor name {name!r} is already taken in namespace {namespace!r} "
                f"(by actor {owner!r})", name=name, namespace=namespace, owner=owner,
            ) from None

    async def lookup_name(self, name: str, *, namespace: str = "default") -> Any:
        """The actor id registered under ``name``, or None."""
        return await self._client.get("actor_names", self._name_key(name, namespace))

    async def unregister_name(self, name: str, *, namespace: str = "default",
                              actor_id: Key | None = None) -> bool:
        """Release ``name``; with ``actor_id``, only if it still names that actor."""
        key = self._name_key(name, namespace)
        if actor_id is None:
            return await self._client.delete("actor_names", key)
        entry = await self._client.get_entry("actor_names", key)
        if entry is None or entry.value != actor_id:
            return False
        try:
            return await self._client.delete("actor_names", key, expect_version=entry.version)
        except VersionMismatch:
            return False

    async def list_names(self, *, namespace: str = "default") -> list[tuple[str, Any]]:
        rows = await self._client.scan("actor_names", f"{namespace}\x00")
        return [(str(k).split("\x00", 1)[1], v) for k, v in rows]


class ObjectTable(_Table):
    """``objects[object_id]`` = info (size, owner, ...);
    ``object_locations[object_id]`` = the set of node ids holding a copy."""

    table = "objects"

    async def add_location(self, object_id: Key, node_id: str | bytes) -> bool:
        return await self._client.set_add("object_locations", object_id, node_id)

    async def remove_location(self, object_id: Key, node_id: str | bytes) -> bool:
        return await self._client.set_remove("object_locations", object_id, node_id)

    async def locations(self, object_id: Key) -> frozenset[Any]:
        found = await self._client.get("object_locations", object_id)
        return frozenset() if found is None else frozenset(found)

    @asynccontextmanager
    async def subscribe_locations(self, object_id: Key) -> AsyncIterator[Subscription]:
        async with self._client.subscribe("object_locations", key=object_id) as sub:
            yield sub

    async def remove(self, object_id: Key) -> None:
        await self._client.delete("objects", object_id)
        await self._client.delete("object_locations", object_id)


@attrs.frozen
class TaskEntry:
    """A task's lineage record: the spec that re-running it needs, and its status."""

    spec: Any
    status: str

    def __reduce__(self) -> tuple:
        # Its two fields, not attrs' state dict: the node pickles one entry per
        # task it records (``TaskTable.add_many``), and attrs' ``__getstate__``
        # and ``__setstate__`` are Python calls around a dict (about a quarter of
        # the entry's pickling, 5 us of ~20 on this machine). Entries pickled
        # before load as ever (attrs' ``__setstate__`` is still there).
        return (TaskEntry, (self.spec, self.status))


class TaskTable(_Table):
    """``tasks[task_id]`` = `TaskEntry` (the lineage). Entries the runtime no longer
    needs are marked collectable and flushed beyond the GCS's ``lineage_cap``."""

    table = "tasks"

    async def add(self, task_id: Key, spec: Any, status: str = "pending") -> int:
        return await self.put(task_id, TaskEntry(spec, status))

    async def set_status(self, task_id: Key, status: str) -> TaskEntry:
        def change(entry: TaskEntry | None) -> TaskEntry:
            if entry is None:
                raise KeyError(f"no task {task_id!r} in the task table")
            return attrs.evolve(entry, status=status)

        return await self.update(task_id, change)

    async def mark_collectable(self, task_id: Key) -> bool:
        return await self._client.mark_collectable(self.table, task_id)

    async def add_many(self, items: list[tuple[Key, Any]], status: str = "pending") -> list[int]:
        """`add` for many ``(task_id, spec)`` pairs: one waiting task per shard, not
        one per task (the runtime records every task's spec; see `GcsClient.write_many`).
        Specs are plain data (builtins, importable classes): encoded with plain pickle."""
        return await self._client.put_many(
            self.table, [(task_id, TaskEntry(spec, status)) for task_id, spec in items],
            plain_pickle=True)

    async def mark_collectable_many(self, task_ids: list[Key]) -> list[bool]:
        """`mark_collectable` for many tasks (their outputs are all released)."""
        return [bool(r) for r in await self._client.mark_collectable_many(self.table, task_ids)]


class FunctionTable(_Table):
    """``functions[function_id]`` = exported code (pickled by the runtime), once per id."""

    table = "functions"

    async def export(self, function_id: Key, blob: Any) -> bool:
        """Store unless already exported; True if this call stored it."""
        return await self._client.put_if_absent(self.table, function_id, blob)


class JobTable(_Table):
    table = "jobs"


class KvTable(_Table):
    """The user key-value space, with namespaces (``namespace/key``)."""

    table = "kv"

    @staticmethod
    def _key(key: Key, namespace: str | None) -> Key:
        if namespace is None:
            return key
        if isinstance(key, bytes):
            return namespace.encode() + b"\x00" + key
        return f"{namespace}\x00{key}"

    async def put(self, key: Key, value: Any, *, namespace: str | None = None,
                  overwrite: bool = True) -> int:
        k = self._key(key, namespace)
        if overwrite:
            return await self._client.put(self.table, k, value)
        return int(await self._client.put_if_absent(self.table, k, value))

    async def get(self, key: Key, default: Any = None, *,
                  namespace: str | None = None) -> Any:
        return await self._client.get(self.table, self._key(key, namespace), default)

    async def delete(self, key: Key, *, namespace: str | None = None) -> bool:
        return await self._client.delete(self.table, self._key(key, namespace))

    async def exists(self, key: Key, *, namespace: str | None = None) -> bool:
        return await self._client.get_entry(self.table, self._key(key, namespace)) is not None

    async def keys(self, prefix: Key = "", *, namespace: str | None = None) -> list[Key]:
        rows = await self._client.scan(self.table, self._key(prefix, namespace))
        if namespace is None:
            return [k for k, _ in rows]
        skip = len(self._key(prefix[:0], namespace))
        return [k[skip:] for k, _ in rows]
