"""Snapshots: the plain-data view of a supervision tree, and how to print it.

The shape is a public contract (CONTRACTS.md §1): every node has ``name``,
``kind``, ``state``, ``restarts``, ``pid``, ``node_id`` and ``children``; extra keys
are allowed. ``actorcore tree`` prints it with :func:`format_tree`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["SNAPSHOT_KEYS", "STATES", "check_snapshot", "format_tree"]

STATES: tuple[str, ...] = ("starting", "running", "restarting", "stopping", "stopped", "failed")
SNAPSHOT_KEYS: tuple[str, ...] = (
    "name", "kind", "state", "restarts", "pid", "node_id", "children",
)


def child_entry(
    *,
    name: str,
    kind: str,
    state: str,
    restarts: int,
    node_id: str | None,
    service: Any,
    last_error: BaseException | None,
) -> dict[str, Any]:
    """A supervisor's snapshot of one child: its own record, merged with the
    service's ``snapshot()`` dict if it has one. The supervisor stays the authority
    on ``name``, ``state`` and ``restarts``; a service's ``None`` for ``pid`` or
    ``node_id`` does not hide the supervisor's value; node ids are inherited down
    the service's own ``children``."""
    entry: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "state": state,
        "restarts": restarts,
        "pid": os.getpid(),
        "node_id": node_id,
        "children": [],
    }
    snapshot = getattr(service, "snapshot", None)
    if callable(snapshot):
        try:
            extra = snapshot()
            if not isinstance(extra, dict):
                raise TypeError(f"snapshot() returned {type(extra).__name__}, not dict")
        except Exception as exc:
            entry["snapshot_error"] = _describe_error(exc)
        else:
            for key, value in extra.items():
                if key in ("name", "state", "restarts"):
                    continue
                if key in ("pid", "node_id") and value is None:
                    continue
                entry[key] = value
    if last_error is not None:
        entry["last_error"] = _describe_error(last_error)
    _inherit_node_id(entry["children"], entry["node_id"])
    return entry


def _describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _inherit_node_id(entries: Any, node_id: str | None) -> None:
    if node_id is None or not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, dict):
            if entry.get("node_id") is None:
                entry["node_id"] = node_id
            _inherit_node_id(entry.get("children"), entry["node_id"])


def check_snapshot(snapshot: Mapping[str, Any], *, path: str = "") -> None:
    """Raise ``ValueError`` naming the node and key if ``snapshot`` (recursively)
    is not in the contract's shape."""
    where = f"{path}/{snapshot.get('name', '?')}" if path else str(snapshot.get("name", "?"))
    if not isinstance(snapshot, Mapping):
        raise ValueError(f"snapshot node under {path or 'the root'!r} is not a dict: {snapshot!r}")
    for key in SNAPSHOT_KEYS:
        if key not in snapshot:
            raise ValueError(f"snapshot node {where!r} lacks key {key!r}")
    checks: list[tuple[str, bool, str]] = [
        ("name", isinstance(snapshot["name"], str), "a str"),
        ("kind", isinstance(snapshot["kind"], str), "a str"),
        ("state", snapshot["state"] in STATES, f"one of {', '.join(STATES)}"),
        ("restarts", _is_int(snapshot["restarts"]) and snapshot["restarts"] >= 0, "an int >= 0"),
        ("pid", snapshot["pid"] is None or _is_int(snapshot["pid"]), "an int or None"),
        ("node_id", snapshot["node_id"] is None or isinstance(snapshot["node_id"], str), "a str or None"),
        ("children", isinstance(snapshot["children"], list), "a list"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ValueError(
                f"snapshot node {where!r}: {key!r} must be {expected}, got {snapshot[key]!r}"
            )
    for child in snapshot["children"]:
        if not isinstance(child, Mapping):
            raise ValueError(f"snapshot node {where!r} has a child that is not a dict: {child!r}")
        check_snapshot(child, path=where)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def format_tree(snapshot: Mapping[str, Any]) -> str:
    """Render a snapshot as an indented tree, one node per line::

        node  supervisor one_for_one  running  pid 4242  node n1
        ├── rpc_server  service  running
        ├── gcs  supervisor one_for_one  running  restarts 1
        │   └── shard_0  service  restarting  restarts 2  (last error: OSError: ...)
        └── worker_pool  service  running

    Shown per node: name, kind (and strategy, if any), state, restarts when not
    zero, pid and node when they differ from the parent's, and the last error while
    the node is restarting or failed.
    """
    lines = [_describe(snapshot, parent=None)]
    _render_children(snapshot, "", lines)
    return "\n".join(lines)


def _render_children(node: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    children = node.get("children") or []
    for index, child in enumerate(children):
        last = index == len(children) - 1
        lines.append(prefix + ("└── " if last else "├── ") + _describe(child, parent=node))
        _render_children(child, prefix + ("    " if last else "│   "), lines)


def _describe(node: Mapping[str, Any], *, parent: Mapping[str, Any] | None) -> str:
    parts = [str(node.get("name", "?"))]
    kind = str(node.get("kind", "?"))
    if node.get("strategy"):
        kind += f" {node['strategy']}"
    elif node.get("class"):  # a user actor: its class beside its name
        kind += f" {node['class']}"
    parts.append(kind)
    state = str(node.get("state", "?"))
    parts.append(state)
    restarts = node.get("restarts") or 0
    if restarts:
        parts.append(f"restarts {restarts}")
    pid = node.get("pid")
    if pid is not None and (parent is None or parent.get("pid") != pid):
        parts.append(f"pid {pid}")
    node_id = node.get("node_id")
    if node_id is not None and (parent is None or parent.get("node_id") != node_id):
        parts.append(f"node {node_id}")
    line = "  ".join(parts)
    if state in ("restarting", "failed") and node.get("last_error"):
        line += f"  (last error: {node['last_error']})"
    return line
