"""The public API functions: ``init``, ``get``, ``put``, ``wait``, ``remote``, ...

These are thin: they check their arguments (errors name the bad value) and call the
process's core worker. Before ``init()``, the calls that Ray connects on first use
(``get``, ``put``, ``wait``, ``cancel``, ``get_actor``, ``kill``,
``get_runtime_context`` and every ``.remote()``) call ``init()`` themselves
(``_worker_state.auto_core()``); the others raise a clear ``NotInitializedError``.
In a worker process the core worker is set at start-up, so the same calls work
inside tasks (nested tasks, ``get`` of refs).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..core_worker import _worker_state
from ..core_worker._object_ref import ObjectRef
from ..session import _limits
from ..session._launcher import HeadProcess, find_cluster, start_head
from ._options import check_num_returns
from ._remote_function import RemoteFunction
from ._runtime_env import set_job_runtime_env, validate_runtime_env

__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "get",
    "put",
    "wait",
    "cancel",
    "cluster_resources",
    "available_resources",
    "nodes",
    "tree",
    "method",
]

logger = logging.getLogger("actorcore.api")

_lock = threading.RLock()
_state: dict[str, Any] = {"loop": None, "head": None, "info": None}

# Hook for remote classes (actors, issue 6): ``_actor_factory(cls, options)``.
_actor_factory: Callable[[type, dict], Any] | None = None


def set_actor_factory(factory: Callable[[type, dict], Any]) -> None:
    """What ``@remote`` on a class makes (``ActorClass``; set by the package, whose
    API layer below the actor classes cannot import them)."""
    global _actor_factory
    _actor_factory = factory


class ClusterInfo(dict):
    """What ``init()`` returns: address, node id, session and log directories."""

    @property
    def address_info(self) -> dict:
        return dict(self)

    def __enter__(self) -> ClusterInfo:
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown()


def is_initialized() -> bool:
    """Whether this process is connected to a cluster (``init()`` was called)."""
    return _worker_state.core is not None


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    gcs_shards: int | None = None,
    gcs_replicas: int | None = None,
    lineage_cap: int | None = None,
    num_workers: int | None = None,
    log_to_driver: bool = True,
    ignore_reinit_error: bool = False,
    namespace: str | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    tls_ca: str | os.PathLike[str] | None = None,
    runtime_env: dict[str, Any] | None = None,
    object_spilling_directory: str | os.PathLike[str] | None = None,
    _temp_dir: str | os.PathLike[str] | None = None,
    logging_level: int | str | None = None,
    configure_logging: bool = True,
    local_mode: bool = False,
    job_config: Any = None,
    _system_config: dict[str, Any] | None = None,
    include_dashboard: bool | None = None,
    dashboard_host: str | None = None,
    dashboard_port: int | None = None,
    _node_timeout: float = 60.0,
    **unknown: Any,
) -> ClusterInfo:
    """Connect this process to a cluster; with no ``address``, start a local one.

    ``address``: ``None`` starts an embedded cluster (a head node process and one
    worker per CPU) that lives as long as this process; ``"auto"`` joins the cluster
    ``actorcore start --head`` started on this machine; ``"unix:/path"``,
    ``"tcp:host:port"`` or ``"host:port"`` join that one (the token comes from the
    local session or ``ACTORCORE_TOKEN``). ``ACTORCORE_ADDRESS`` in the environment
    stands in for a missing ``address``.

    ``tls_cert``, ``tls_key``, ``tls_ca`` (else ``ACTORCORE_TLS_CERT/KEY/CA``): TLS 1.3
    with mutual certificates signed by the cluster CA on every TCP link of this
    driver (and, for an embedded cluster, of its node and GCS); a cluster joined over
    TCP must use the same mode (see SECURITY.md). A cluster of this machine's session
    that uses TLS is joined with the files it records.
    ``namespace``: where named actors of this job go and are looked up (default
    ``"default"``); tasks and actors of the job see it too.

    Ray's options, each honoured or refused by name (a ``ValueError`` or
    ``NotImplementedError`` before anything starts), never silently ignored. Those
    marked *new cluster* apply only when no ``address`` is given:

    - ``runtime_env``: ``env_vars`` (*new cluster*) are set in the environment of
      every worker and actor process (and the node); ``working_dir`` and
      ``py_modules`` are shipped to the cluster and are the default of every task
      and actor of this job (see ``api._runtime_env``); ``pip``, ``conda``, ``uv``,
      ``container`` and unknown keys are refused naming the key.
    - ``lineage_cap`` (*new cluster*): how many task specs each node keeps for
      rebuilding lost objects (default ``ACTORCORE_GCS_LINEAGE_CAP``, 10000); past
      it the oldest are evicted, and an object that needs one fails with
      ``ObjectReconstructionFailedLineageEvictedError``.
    - ``object_spilling_directory`` (*new cluster*): where the store spills objects
      that do not fit in memory (default: the session's ``spill/``).
    - ``_temp_dir`` (*new cluster*): the root of the session directory (sockets,
      token, logs), instead of ``$ACTORCORE_TMPDIR`` or ``/tmp/actorcore-sessions``.
    - ``logging_level``: the level of this process's ``actorcore``, ``transport`` and
      ``store`` loggers; ``configure_logging=False`` leaves logging untouched (no
      session log file for this driver).
    - ``include_dashboard``, ``dashboard_host``, ``dashboard_port``: there is no
      dashboard (``actorcore status`` and ``actorcore tree`` show the cluster), so
      only ``include_dashboard=False`` or leaving them unset is accepted.
    - ``local_mode=True``, ``job_config``, ``_system_config``: refused.
    """
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    from ..session import _config, _security

    cluster = _config.ClusterConfig.from_init(locals())  # each bad value raised by name

    _refuse_unsupported(local_mode, job_config, _system_config, include_dashboard,
                        dashboard_host, dashboard_port)
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError(f"init(namespace={namespace!r}): expected a non-empty str")
    job_env = validate_runtime_env(runtime_env, "init()") or {}
    env_vars = job_env.pop("env_vars", None)  # the node's and its workers' environment
    level = _logging_level(logging_level)
    new_cluster = {"runtime_env": env_vars, "object_spilling_directory": object_spilling_directory,
                   "_temp_dir": _temp_dir}
    with _lock:
        core = _worker_state.core
        if core is not None and core.role != "driver":
            # Inside a task or actor: already connected to the node it runs on.
            return ClusterInfo(node_id=core.node_id.hex(), address=core.node_address,
                               gcs_address=core.gcs_address)
        if is_initialized():
            if ignore_reinit_error:
                return _state["info"]
            raise RuntimeError(
                "actorcore.init() was already called; call actorcore.shutdown() first "
                "(or pass ignore_reinit_error=True)"
            )
        if address is None:
            address = _config.env_value("ACTORCORE_ADDRESS") or None
        # Two descriptors per actor this driver calls directly (``session._limits``);
        # an embedded node started below inherits the limit too.
        _limits.raise_open_files_limit()
        _reclaim_dead_sessions()
        tls = cluster.tls(spelled="init")  # the files given, else ACTORCORE_TLS_*
        head: HeadProcess | None = None
        if address is None:
            temp_dir = _directory_option("_temp_dir", _temp_dir)
            spill_dir = _directory_option("object_spilling_directory", object_spilling_directory)
            if spill_dir is not None:
                cluster = attrs.evolve(cluster, spill_dir=str(spill_dir))
            head = start_head(
                cluster,
                tls=tls,
                embedded=True,
                timeout=_node_timeout,
                temp_dir=temp_dir,
                env_vars=env_vars,
                while_starting=_import_driver,
            )
            node_address, token, info = head.info["address"], head.token, head.info
        else:
            if any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory)):
                raise ValueError(
                    "num_cpus/num_gpus/resources/object_store_memory describe a new cluster; "
                    f"they cannot be given when joining one at {address!r}"
                )
            given = sorted(k for k, v in new_cluster.items() if v)
            if given:
                raise ValueError(
                    f"init({', '.join(given)}) applies to a new cluster, which init() starts "
                    f"only without an address; the cluster at {address!r} is already running"
                )
            node_address, token, info = find_cluster(address)
            if tls is None:
                tls = _security.session_tls(info)
        from ..core_worker._driver import DriverLoop
        from ..protocol._ids import renew_prefix

        # Ids of this session must not look like those of an earlier one in this
        # process: the node tells a ref whose owner is gone by its id's prefix.
        renew_prefix()
        _security.apply(tls)  # every TCP link of this process (the driver's)
        loop = DriverLoop(node_address, token, log_to_driver=log_to_driver,
                          namespace=namespace or "default",
                          node_process=head.process if head is not None else None)
        try:
            core = loop.start()
        except BaseException:
            if head is not None:
                head.stop()
            raise
        _worker_state.set_core(core)
        from ._job import set_default_namespace

        set_default_namespace(namespace)  # where named actors go and are looked up
        _state["loop"] = loop
        _state["head"] = head
        if configure_logging:
            _configure_logging(info.get("log_dir"), level)
        result = ClusterInfo(
            address=node_address,
            node_id=core.node_id.hex(),
            session_dir=info.get("session_dir"),
            log_dir=info.get("log_dir"),
            gcs_address=info.get("gcs_address"),
            tcp_address=info.get("tcp_address"),
            job_id=core.job_id.hex(),
        )
        _state["info"] = result
        set_job_runtime_env(job_env)  # working_dir, py_modules: every task's and actor's
        return result


def _import_driver() -> None:
    """Import what the driver's core needs (its loop, the store's client), while the
    node it will connect to starts: off the path from ``init()`` to the first result."""
    import store  # noqa: F401

    from ..core_worker import _driver  # noqa: F401


def _reclaim_dead_sessions() -> None:
    """Remove the shared memory, spill files and sockets of killed clusters on this
    machine (only those whose node process is gone: see ``session._session``)."""
    from ..session._session import reclaim_dead_sessions

    try:
        reclaimed = reclaim_dead_sessions()
    except Exception as exc:  # never a reason not to start
        logging.getLogger("actorcore").warning("reclaiming dead sessions failed: %s", exc)
        return
    if reclaimed:
        logging.getLogger("actorcore").info("%s: %s", reclaimed.describe(), reclaimed.sessions)


def auto_init() -> None:
    """``init()`` with its defaults unless connected (``_worker_state.auto_core``)."""
    with _lock:
        if not is_initialized():
            info = init()
            logging.getLogger("actorcore").info(
                "started a local cluster (init() was not called): %s", info.get("address"))


_worker_state.auto_init = auto_init


_DASHBOARD_HOSTS = (None, "127.0.0.1", "localhost")


def _refuse_unsupported(
    local_mode: Any, job_config: Any, system_config: Any, include_dashboard: Any,
    dashboard_host: Any, dashboard_port: Any,
) -> None:
    """Ray ``init`` options with no meaning here: accepted only with their neutral
    values, otherwise refused naming the option (never silently ignored)."""
    if local_mode not in (False, None):
        raise NotImplementedError(
            f"init(local_mode={local_mode!r}) is not supported by actorcore: tasks and actors "
            "always run in worker processes (for a debugger, run the function directly)"
        )
    if job_config is not None:
        raise NotImplementedError(
            f"init(job_config={job_config!r}) is not supported by actorcore: it has no per-job "
            "configuration (for environment variables use runtime_env={'env_vars': {...}})"
        )
    if system_config:
        raise ValueError(
            f"init(_system_config=...) is not supported by actorcore; got the keys "
            f"{', '.join(sorted(map(str, system_config)))} (its settings are init() keywords "
            "and ACTORCORE_* environment variables)"
        )
    if include_dashboard:
        raise ValueError(
            f"init(include_dashboard={include_dashboard!r}): actorcore has no dashboard "
            "(`actorcore status` and `actorcore tree` show the cluster)"
        )
    if include_dashboard is None:  # False: Ray itself ignores where it would have gone
        if dashboard_host not in _DASHBOARD_HOSTS:
            raise ValueError(f"init(dashboard_host={dashboard_host!r}): actorcore has no dashboard")
        if dashboard_port is not None:
            raise ValueError(f"init(dashboard_port={dashboard_port!r}): actorcore has no dashboard")


def _logging_level(level: Any) -> int | None:
    if level is None:
        return None
    if isinstance(level, str):
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            raise ValueError(
                f"init(logging_level={level!r}): not a logging level "
                "(DEBUG, INFO, WARNING, ERROR, CRITICAL, or a number)"
            )
        return number
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"init(logging_level={level!r}): expected a level name or a number >= 0")
    return level


def _directory_option(name: str, value: Any) -> Path | None:
    """An absolute directory for ``init(name=value)``, created if missing; a
    ``ValueError`` naming the option when it cannot be used."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError(f"init({name}={value!r}): expected a directory path")
    path = Path(os.fspath(value)).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"init({name}={str(value)!r}): cannot create it: {exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"init({name}={str(value)!r}): not writable by this user")
    return path


def _configure_logging(log_dir: str | None, level: int | None) -> None:
    """This driver's own runtime log (actorcore, transport, store) in the session's log
    dir; ``level`` (``init(logging_level=)``) for those loggers, else INFO for ours."""
    names = ("actorcore", "transport", "store")
    if level is not None:
        for name in names:
            logging.getLogger(name).setLevel(level)
    if not log_dir or _state.get("log_handler") is not None:
        return
    try:
        handler = logging.FileHandler(os.path.join(log_dir, f"driver-{os.getpid()}.log"))
    except OSError as exc:
        logger.warning("cannot write this driver's log in %s: %s", log_dir, exc)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO if level is None else level)
    for name in names:
        logging.getLogger(name).addHandler(handler)
    runtime = logging.getLogger("actorcore")
    if runtime.level == logging.NOTSET:
        runtime.setLevel(logging.INFO)  # our own records; transport/store keep theirs
    _state["log_handler"] = handler


def shutdown() -> None:
    """Disconnect; an embedded cluster is stopped (no process, socket or segment left)."""
    with _lock:
        loop = _state["loop"]
        head = _state["head"]
        core = _worker_state.core
        if core is None or core.role != "driver":
            return
        node_alive = head is not None and head.process.poll() is None
        if node_alive and loop is not None and loop.core is not None and not loop.core.closed:
            try:
                loop.core.call_sync("shutdown", timeout=5)
            except Exception as exc:  # stopped below anyway: its pipe closes, then SIGKILL
                logger.info("asking the embedded node to shut down failed: %r", exc)
        if loop is not None:
            loop.stop()
        _worker_state.set_core(None)
        set_job_runtime_env(None)
        if head is not None:
            head.stop()
        _state.update(loop=None, head=None, info=None)
        from ..session import _security

        _security.apply(None)


atexit.register(shutdown)


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote function (or a class an actor class).

    ``@remote`` bare, or ``@remote(num_cpus=..., num_returns=..., ...)``.
    """
    if len(args) == 1 and not options and (inspect.isfunction(args[0]) or inspect.isclass(args[0])
                                           or callable(args[0])):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "remote() takes a function or class, or only keyword options, e.g. "
            "@remote(num_cpus=2); got positional arguments " + repr(args)
        )

    def decorator(obj: Any) -> Any:
        return _make_remote(obj, options)

    return decorator


def _make_remote(obj: Any, options: dict) -> Any:
    if inspect.isclass(obj):
        if _actor_factory is None:  # set by `actorcore.load_runtime`
            from ._actor_class import make_actor_class

            set_actor_factory(make_actor_class)
        assert _actor_factory is not None
        return _actor_factory(obj, options)
    if not callable(obj):
        raise TypeError(f"remote() needs a function or a class, got {obj!r}")
    return RemoteFunction(obj, options)


#: Ray's ``@method`` options that have no per-method counterpart here, and where to
#: set what they mean instead.
_METHOD_OPTIONS_REFUSED = {
    "max_task_retries": "set max_task_retries on the actor class or its .options()",
    "retry_exceptions": "actor method calls are not retried on exceptions",
    "tensor_transport": "values travel through the object store",
    "enable_task_events": "there are no task events to record",
}


def method(*args: Any, **options: Any) -> Any:
    """Annotate an actor method: ``@method(num_returns=2)`` (or bare ``@method``).

    ``num_returns`` and ``concurrency_group`` (the name of one of the actor's
    ``concurrency_groups``: its calls run within that group's limit, see
    ``worker._actor_host``) are the per-method options; any other (Ray's
    ``max_task_retries``, ...) is refused with an error that names it, where the
    method is defined.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return method()(args[0])
    if args:
        raise TypeError(
            f"method() takes only keyword options, e.g. @method(num_returns=2); got {args!r:.80}"
        )
    for key in sorted(set(options) - {"num_returns", "concurrency_group"}):
        why = _METHOD_OPTIONS_REFUSED.get(key, "valid: num_returns, concurrency_group")
        raise ValueError(f"@method({key}={options[key]!r}) is not supported by actorcore ({why})")
    check_num_returns(options.get("num_returns", 1), "@method")
    group = options.get("concurrency_group")
    if group is not None and (not isinstance(group, str) or not group):
        raise TypeError(f"@method(concurrency_group={group!r}): expected a group's name (str)")

    def decorator(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"@method(...) decorates an actor method, got {fn!r:.80}")
        fn.__actorcore_method_options__ = options  # type: ignore[attr-defined]
        return fn

    return decorator


_JUST_REFS = frozenset((ObjectRef,))


def _as_ref_list(refs: Any, fn: str) -> tuple[list[ObjectRef], bool]:
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, list | tuple):
        if set(map(type, refs)) <= _JUST_REFS:  # one C-level pass: thousands of refs
            return list(refs), False
        for i, r in enumerate(refs):
            if not isinstance(r, ObjectRef):
                raise TypeError(
                    f"{fn}() expects an ObjectRef or a list of ObjectRefs; "
                    f"item {i} is {type(r).__name__}: {r!r:.80}"
                )
        return list(refs), False
    raise TypeError(
        f"{fn}() expects an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}: "
        f"{refs!r:.80}"
    )


def _check_timeout(timeout: Any, fn: str) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0
    ):
        raise ValueError(f"{fn}(timeout={timeout!r}): must be None or a number >= 0")


def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """The value(s) of ``object_refs`` (one ref or a list), waiting up to ``timeout`` s.

    A task's exception is raised here (an instance of both ``TaskError`` and the
    original type, with the remote traceback) as soon as any one of ``object_refs``
    holds an error, without waiting for the others (as Ray); ``GetTimeoutError``
    when time runs out.
    """
    if type(object_refs) is ObjectRef and timeout is None:  # the sync call's
        return _worker_state.auto_core().get_one(object_refs, None)
    refs, single = _as_ref_list(object_refs, "get")
    _check_timeout(timeout, "get")
    values = _worker_state.auto_core().get(refs, timeout)
    return values[0] if single else values


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the cluster; return its ``ObjectRef``."""
    return _worker_state.auto_core().put(value)


def wait(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Split ``object_refs`` into (ready, not ready) once ``num_returns`` are ready.

    Returns early after ``timeout`` seconds with what is ready by then. Order within
    each list follows ``object_refs``.
    """
    if isinstance(object_refs, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, got a single ObjectRef")
    refs, _ = _as_ref_list(object_refs, "wait")
    if not refs:
        _check_timeout(timeout, "wait")
        _worker_state.auto_core()
        return [], []  # as Ray: nothing to wait for, whatever num_returns says
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 0:
        raise ValueError(f"wait(num_returns={num_returns!r}): must be an int >= 0")
    if num_returns > len(refs):
        raise ValueError(
            f"wait(num_returns={num_returns}) is more than the {len(refs)} refs given"
        )
    _check_timeout(timeout, "wait")
    return _worker_state.auto_core().wait(refs, num_returns, timeout)  # refuses duplicates


def cancel(object_ref: Any, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task or actor method call that produces ``object_ref``.

    A queued task never runs; a running one gets ``TaskCancelledError`` raised inside
    it (``force=True``: its worker process is killed). ``get`` then raises
    ``TaskCancelledError``. Cancelling a finished task does nothing.

    Actor method calls (``handle.method.remote()``, cancelled by the process that
    made them), as in Ray: a call still queued for the actor is dropped — it never
    runs and ``get`` raises ``TaskCancelledError`` at once; a running call of an
    async actor is cancelled (its coroutine sees ``asyncio.CancelledError`` or
    ``trio.Cancelled``) and ``get`` raises ``TaskCancelledError``; a running call of
    a threaded actor cannot be interrupted, so it finishes and its result stands.
    The actor lives on and the caller's other calls keep their order.
    ``force=True`` raises ``ValueError`` for an actor call (use ``kill``).

    ``recursive=True`` (the default, as in Ray): the tasks the cancelled task
    submitted, and the tasks those submitted, are cancelled the same way (``force``
    included), and so is any task it submits after the cancel while it still runs.
    Actor method calls it made are not cancelled. ``recursive=False``: only this one.

    An ``ObjectRefGenerator`` (``num_returns="streaming"``) cancels its task: the
    items it yielded stand, the next ref raises ``TaskCancelledError``, then the
    iteration ends.
    """
    from ..core_worker._generator import ObjectRefGenerator

    if isinstance(object_ref, ObjectRefGenerator):
        object_ref = object_ref.completed()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef, got {type(object_ref).__name__}")
    from ._actor_handle import cancel_actor_call

    core = _worker_state.auto_core()
    core.check_open()
    if not cancel_actor_call(core, object_ref, force):
        core.cancel(object_ref, bool(force), bool(recursive))


def _call(name: str, *args: Any) -> Any:
    core = _worker_state.current_core()
    core.check_open()  # after the node died: NodeDiedError, saying which and why
    return core.call_sync(name, *args)


def cluster_resources() -> dict[str, float]:
    """The total resources of the cluster, e.g. ``{"CPU": 2.0}``."""
    return _call("cluster_resources")


def available_resources() -> dict[str, float]:
    """The resources not held by running tasks right now."""
    return _call("available_resources")


def nodes() -> list[dict]:
    """One dict per node (``NodeID``, ``Alive``, ``Resources``, ...), as Ray's."""
    return _call("nodes")


def tree(address: str | None = None) -> dict:
    """The live supervision tree of the cluster, in the kernel's snapshot shape.

    Without ``address``: the cluster this process is connected to, else the one
    running on this machine.
    """
    if address is None and is_initialized():
        return _call("tree")
    from ..session._admin import admin_call

    return admin_call(address, "tree")
