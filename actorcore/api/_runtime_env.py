"""``runtime_env``: the environment a task or actor runs in (``init``, ``@remote``,
``.options``).

Honoured, as in Ray:

- ``env_vars``: set in the process's environment while the task runs (for an
  actor, for its life).
- ``working_dir``: a local directory, zipped and content-addressed (SHA-1 of the
  zip), uploaded once through the GCS function table (the same path as a remote
  function's code), unpacked and cached per node in the session directory
  (``runtime_resources/<hash>``); the task runs with it as its working directory and
  first on ``sys.path``.
- ``py_modules``: local package directories or module files, shipped the same way,
  each on ``sys.path``.

Refused with an error naming the key: ``pip``, ``conda``, ``uv``, ``container``
(and ``image_uri``), which would install software where the cluster runs, and any
key not listed here. Remote URIs (``s3://...``) for ``working_dir``/``py_modules``
are refused too: nothing here can fetch them.

A ``RuntimeEnv`` (what specs carry) is plain data: the env vars, the package ids
and a ``key`` naming the whole environment. The node never runs two different
environments in one worker process: a worker is bound to the key of the first task
it runs (see ``local_scheduler``), as Ray's worker pool is keyed by runtime env.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Mapping
from typing import Any

from ..core_worker import _worker_state

__all__ = ["validate_runtime_env", "prepare_runtime_env", "merge_runtime_env",
           "resolve_runtime_env", "set_job_runtime_env", "MAX_PACKAGE_BYTES"]

#: The largest zipped ``working_dir`` or ``py_modules`` entry (a GCS value holds it).
MAX_PACKAGE_BYTES = 30 * 1024 * 1024

_REFUSED = {
    "pip": "it would install packages where the cluster runs",
    "conda": "it would create conda environments where the cluster runs",
    "uv": "it would install packages where the cluster runs",
    "container": "it would run workers in containers",
    "image_uri": "it would run workers in containers",
}
_HONOURED = ("env_vars", "working_dir", "py_modules")

# Left out of a working_dir's zip, as Ray leaves out version-control folders.
_SKIPPED_DIRS = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def validate_runtime_env(env: Any, where: str) -> dict[str, Any] | None:
    """Check a ``runtime_env`` as the user wrote it; ``None`` for an empty one."""
    if env is None:
        return None
    if not isinstance(env, Mapping):
        raise TypeError(
            f"{where} runtime_env={env!r:.80}: expected a dict such as {{'env_vars': {{...}}}}")
    for key in env:
        if key in _REFUSED:
            raise ValueError(
                f"{where} runtime_env[{key!r}] is not supported by actorcore ({_REFUSED[key]}); "
                "install what the code needs where the cluster runs, and use "
                "'working_dir' or 'py_modules' to ship your own code")
        if key not in _HONOURED:
            raise ValueError(
                f"{where} runtime_env[{key!r}]: unknown key (actorcore honours "
                f"{', '.join(repr(k) for k in _HONOURED)})")
    out: dict[str, Any] = {}
    env_vars = env.get("env_vars")
    if env_vars:
        if not isinstance(env_vars, Mapping):
            raise TypeError(
                f"{where} runtime_env['env_vars']={env_vars!r:.80}: expected a dict of str -> str")
        for k, v in env_vars.items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise ValueError(
                    f"{where} runtime_env['env_vars']: {k!r} is not a valid variable name")
            if not isinstance(v, str):
                raise TypeError(f"{where} runtime_env['env_vars'][{k!r}]={v!r}: expected a "
                                f"str, got {type(v).__name__}")
        out["env_vars"] = dict(env_vars)
    wd = env.get("working_dir")
    if wd is not None:
        out["working_dir"] = _local_path(wd, "working_dir", where, want_dir=True)
    mods = env.get("py_modules")
    if mods is not None:
        if isinstance(mods, str | os.PathLike) or not isinstance(mods, list | tuple):
            raise TypeError(f"{where} runtime_env['py_modules']={mods!r:.80}: expected a list "
                            "of local directories or .py files")
        out["py_modules"] = [_local_path(m, "py_modules", where, want_dir=False) for m in mods]
    return out or None


def _local_path(value: Any, key: str, where: str, *, want_dir: bool) -> str:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{where} runtime_env[{key!r}]={value!r:.80}: expected a local path")
    text = os.fspath(value)
    if "://" in text:
        raise ValueError(
            f"{where} runtime_env[{key!r}]={text!r}: remote URIs are not supported by "
            "actorcore (give a local directory; it is uploaded to the cluster)")
    path = os.path.abspath(os.path.expanduser(text))
    if want_dir and not os.path.isdir(path):
        raise ValueError(f"{where} runtime_env[{key!r}]={text!r}: not a directory")
    if not want_dir and not (os.path.isdir(path) or (os.path.isfile(path)
                                                      and path.endswith(".py"))):
        raise ValueError(
            f"{where} runtime_env[{key!r}]: {text!r} is neither a directory nor a .py file")
    return path


def merge_runtime_env(job: dict[str, Any] | None, task: dict[str, Any] | None
                      ) -> dict[str, Any] | None:
    """A task's env over its job's (or parent's), as Ray: each key of the task's
    replaces the job's, except ``env_vars``, which are merged (the task's win)."""
    if not job:
        return task
    if not task:
        return job
    out = dict(job)
    out.update(task)
    if "env_vars" in job and "env_vars" in task:
        out["env_vars"] = {**job["env_vars"], **task["env_vars"]}
    return out


class _Package:
    """A zipped directory or module, exported once like a function (``ensure_exported``)."""

    __slots__ = ("blob", "function_id", "name")

    def __init__(self, blob: bytes, name: str) -> None:
        self.blob = blob
        self.function_id = hashlib.sha1(blob).digest()
        self.name = name


_packages: dict[tuple[str, str], tuple[float, _Package]] = {}


def _zip(path: str, key: str, *, as_module: bool) -> _Package:
    """``path`` as a zip with fixed timestamps (the same files: the same id).
    ``as_module``: the zip holds the directory (or file) itself, not its content."""
    import zipfile  # here: every driver imports this module, few ship a working_dir

    buf = io.BytesIO()
    base = os.path.dirname(path) if as_module else path
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if os.path.isfile(path):
            files = [path]
        else:
            files = []
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
                files.extend(os.path.join(root, n) for n in sorted(names))
        for file in files:
            st = os.stat(file)
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            if total > MAX_PACKAGE_BYTES:
                raise ValueError(
                    f"runtime_env[{key!r}]: {path} holds more than "
                    f"{MAX_PACKAGE_BYTES // (1024 * 1024)} MiB of files; ship large data "
                    "with put() or read it from shared storage instead")
            info = zipfile.ZipInfo(os.path.relpath(file, base), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (st.st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(file, "rb") as f:
                zf.writestr(info, f.read())
    blob = buf.getvalue()
    return _Package(blob, f"runtime_env[{key!r}] {path}")


def _package(path: str, key: str, as_module: bool) -> _Package:
    """The package of ``path``, made again only when a file under it changed."""
    stamp = _newest(path)
    cached = _packages.get((key, path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    pkg = _zip(path, key, as_module=as_module)
    _packages[(key, path)] = (stamp, pkg)
    return pkg


def _newest(path: str) -> float:
    if os.path.isfile(path):
        return os.stat(path).st_mtime
    newest = os.stat(path).st_mtime
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        for n in (*dirs, *names):
            try:
                newest = max(newest, os.stat(os.path.join(root, n)).st_mtime)
            except OSError:
                pass
    return newest


def prepare_runtime_env(core: Any, env: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a spec carries for ``env`` (checked by ``validate_runtime_env``): its env
    vars, the ids of its packages (exported to the cluster once, before the spec on
    the same link) and a ``key`` naming the whole environment."""
    if not env:
        return None
    out: dict[str, Any] = {}
    if env.get("env_vars"):
        out["env_vars"] = dict(sorted(env["env_vars"].items()))
    if env.get("working_dir"):
        pkg = _package(env["working_dir"], "working_dir", as_module=False)
        core.ensure_exported(pkg, "runtime_env working_dir")
        out["working_dir"] = pkg.function_id.hex()
    if env.get("py_modules"):
        ids = []
        for path in env["py_modules"]:
            pkg = _package(path, "py_modules", as_module=True)
            core.ensure_exported(pkg, "runtime_env py_modules")
            ids.append(pkg.function_id.hex())
        out["py_modules"] = ids
    return _keyed(out)


def _keyed(env: dict[str, Any]) -> dict[str, Any] | None:
    env = {k: v for k, v in env.items() if k != "key" and v}
    if not env:
        return None
    env["key"] = hashlib.sha1(repr(sorted(env.items())).encode()).hexdigest()
    return env


def resolve_runtime_env(core: Any, own: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the spec of a task or actor submitted here carries: its own env (checked)
    over the one it inherits — the running task's or actor's (as Ray's nested tasks
    do), else the job's (``init(runtime_env=...)``)."""
    spec = getattr(_worker_state.task_context, "spec", None)
    base = getattr(spec, "runtime_env", None) if spec is not None else None
    if base is None:
        base = _job_env.get("prepared")
        if base is None and _job_env.get("env"):
            base = _job_env["prepared"] = prepare_runtime_env(core, _job_env["env"])
    if not own:
        return base
    merged = merge_runtime_env(base, prepare_runtime_env(core, own))
    return _keyed(merged) if merged else None


_job_env: dict[str, Any] = {}


def set_job_runtime_env(env: dict[str, Any] | None) -> None:
    """The driver's ``init(runtime_env=...)``: the default of every task and actor."""
    _job_env.clear()
    if env:
        _job_env["env"] = env
