"""Applying a task's or actor's ``runtime_env`` in a worker process (see
``api._runtime_env`` for what the caller sends).

Packages (``working_dir``, ``py_modules``) arrive by id: the zip is fetched once
from the node (the GCS function table behind it), unpacked into
``<session>/runtime_resources/<id>/`` — by one process at a time: the first unpacks
into a temporary directory and renames it into place, so a reader sees a whole
directory or none — and reused by every later worker of the node.

A worker process is bound by its node to one environment (the key of the first
task it runs), so the environment is applied once per process and never undone:
the modules a task imported from its ``working_dir`` cannot leak into a task of
another environment.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import zipfile
from typing import Any

import trio

from ..protocol._wire import GetFunction

__all__ = ["apply_runtime_env", "package_dir"]

logger = logging.getLogger("actorcore.runtime_env")

_lock = threading.Lock()
_applied: dict[str, Any] = {"key": None}


def _resources_root() -> str:
    session = os.environ.get("ACTORCORE_SESSION_DIR") or tempfile.gettempdir()
    return os.path.join(session, "runtime_resources")


def package_dir(core: Any, package_id: str) -> str:
    """The unpacked directory of a package (fetched and unpacked on first use)."""
    root = _resources_root()
    target = os.path.join(root, package_id)
    if os.path.isdir(target):
        return target
    record = trio.from_thread.run(
        core.conn.request, GetFunction(bytes.fromhex(package_id)), 60,
        trio_token=core.trio_token,
    )
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{package_id}-", dir=root)
    try:
        with zipfile.ZipFile(io.BytesIO(bytes(record["blob"]))) as zf:
            zf.extractall(tmp)
            for info in zf.infolist():  # keep the files' modes (scripts stay executable)
                mode = info.external_attr >> 16
                if mode:
                    os.chmod(os.path.join(tmp, info.filename), mode)
        try:
            os.rename(tmp, target)
        except OSError:  # another worker put it there first: use theirs
            if not os.path.isdir(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def apply_runtime_env(core: Any, env: dict[str, Any] | None) -> None:
    """Make this process run in ``env`` (from a user thread: fetching a package is a
    request through the core loop). Applied once; a second, different environment
    in one process is refused (the node never sends one)."""
    if not env:
        return
    key = env.get("key")
    with _lock:
        if _applied["key"] == key:
            return
        if _applied["key"] is not None:
            raise RuntimeError(
                f"this worker runs runtime_env {_applied['key']}; it cannot also run {key}")
        paths = []
        for mod in env.get("py_modules") or ():
            paths.append(package_dir(core, mod))
        wd = env.get("working_dir")
        if wd:
            wd_path = package_dir(core, wd)
            paths.insert(0, wd_path)
            os.chdir(wd_path)
        for path in reversed(paths):
            if path not in sys.path:
                sys.path.insert(0, path)
        for name, value in (env.get("env_vars") or {}).items():
            os.environ[name] = value
        _applied["key"] = key
