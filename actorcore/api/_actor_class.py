"""``@remote`` classes: ``A.remote(*args)`` creates an actor and returns its handle.

The class is exported once (cloudpickle, by content id) like a remote function; the
creation is an ``ActorSpec`` queued on the caller's ordered link to its node, so the
handle is usable at once and calls made through it queue behind the creation. A
named actor is created with a request instead: the name is claimed atomically (in the
GCS actors table) before ``.remote()`` returns, so a taken name raises here.

Bad input fails in the caller, before anything is sent: an unknown option, a
constructor or method called with the wrong arguments (checked against the
signature, as a local call would be), an argument that cannot be pickled (the error
names it).
"""

from __future__ import annotations

import threading
from typing import Any

import attrs

from ..core_worker import _worker_state
from ..protocol._actors import ActorSpec, ClassMeta, MethodMeta
from ..protocol._ids import new_task_id
from ..protocol._wire import CreateNamedActor, Submit
from ._actor_handle import ActorHandle, dumps_carrying, unpin
from ._job import default_namespace, request_node
from ._options import resources_of, validate_actor_options
from ._remote_function import FunctionExport
from ._runtime_env import resolve_runtime_env
from ._signatures import check_call_args, class_meta

__all__ = ["ActorClass", "make_actor_class"]

#: Concurrency of an async actor when ``max_concurrency`` is not given (as Ray's).
DEFAULT_ASYNC_CONCURRENCY = 1000


class ActorClass:
    """A class made remote by ``@actorcore.remote``.

    ``A.remote(*args, **kwargs)`` creates an actor and returns an :class:`ActorHandle`;
    ``A.options(name=..., namespace=..., lifetime="detached", num_cpus=...,
    max_restarts=..., max_task_retries=..., max_concurrency=..., placement="shared",
    supervisor=...)`` overrides options for one creation. Instantiating it directly
    is an error, as in Ray (the original class is ``A.__actorcore_class__``).
    """

    def __init__(self, cls: type, options: dict[str, Any],
                 _metas: tuple[ClassMeta, MethodMeta] | None = None) -> None:
        self.__actorcore_class__ = cls
        self._options = validate_actor_options(options)
        _check_extra_options(self._options)
        self._meta, self._ctor = class_meta(cls) if _metas is None else _metas
        self._export: FunctionExport | None = None
        self._lock = threading.Lock()
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"actor class {self._meta.class_name} cannot be instantiated directly; "
            f"use {self._meta.class_name}.remote(...)"
        )

    def __getattr__(self, name: str) -> Any:
        # What the user's class has and we do not: its class attributes, static and
        # class methods (``A.CONSTANT``, ``A.helper()``), as in Ray, whose actor
        # class derives from the user's.
        cls = self.__dict__.get("__actorcore_class__")
        if cls is None:
            raise AttributeError(name)
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(
                f"actor class {cls.__qualname__} has no attribute {name!r}"
            ) from None

    def __repr__(self) -> str:
        return f"<actorcore.ActorClass {self._meta.module}.{self._meta.class_name}>"

    def __reduce__(self) -> Any:
        # The method table travels along: a class whose methods create actors of
        # their own class is rebuilt while it is still being unpickled (an empty
        # skeleton), so its table cannot be read from it then.
        return (ActorClass, (self.__actorcore_class__, self._options, (self._meta, self._ctor)))

    def options(self, **options: Any) -> _ActorOptions:
        merged = dict(self._options)
        checked = validate_actor_options(options)
        _check_extra_options(checked)
        merged.update(checked)
        return _ActorOptions(self, merged)

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._create(self._options, args, kwargs)

    def _get_export(self) -> FunctionExport:
        if self._export is None:
            with self._lock:
                if self._export is None:
                    self._export = FunctionExport(self.__actorcore_class__, self._meta.class_name)
        return self._export

    def _meta_for(self, options: dict[str, Any]) -> ClassMeta:
        """The method table with this creation's ``concurrency_groups`` and
        ``max_pending_calls`` (its handles apply them); a method placed in a group
        the actor does not define is refused here, naming both."""
        meta = self._meta
        groups = dict(options.get("concurrency_groups") or {})
        pending = options.get("max_pending_calls")
        pending = -1 if pending is None else pending
        for name, mm in meta.methods.items():
            if mm.concurrency_group is not None and mm.concurrency_group not in groups:
                raise ValueError(
                    f"{meta.class_name}.{name} is in concurrency_group="
                    f"{mm.concurrency_group!r}, which the actor does not define (its "
                    f"concurrency_groups: {groups or 'none'}); define it with "
                    f"@remote(concurrency_groups={{{mm.concurrency_group!r}: n}}) or "
                    f".options(concurrency_groups=...)"
                )
        if not groups and pending == -1:
            return meta
        return attrs.evolve(meta, concurrency_groups=groups, max_pending_calls=pending)

    def _create(self, options: dict[str, Any], args: tuple, kwargs: dict) -> ActorHandle:
        self._meta_for(options)  # a bad concurrency group fails before any work
        core = _worker_state.auto_core()
        what = f"{self._meta.class_name}.__init__"
        check_call_args(what, self._ctor, args, kwargs)
        self._get_export()  # a class that does not pickle fails before any argument is put
        # Large arguments go by ref, through the store (``by_ref``): the node pins
        # them while the actor lives (its restarts need them), so they are freed
        # right behind its creation. Actor handles in them are carried: the node
        # holds them for the new actor's life (``ActorSpec.handles``).
        blob, deps, by_ref, carried = dumps_carrying(what, args, kwargs, core.arg_store())
        try:
            return self._create_spec(core, options, blob, deps, carried)
        finally:
            unpin(core, carried)  # the node holds them now, for the new actor's life
            if by_ref:
                core.release_args(by_ref)

    def _create_spec(self, core: Any, options: dict[str, Any], blob: bytes,
                     deps: list[bytes], carried: list[bytes]) -> ActorHandle:
        meta = self._meta_for(options)
        export = self._get_export()
        core.check_args_fit(f"{meta.class_name}.__init__", blob)
        if deps:
            core.mark_seen(deps)
        name = options.get("name")
        namespace = options.get("namespace") or default_namespace()
        is_async = meta.is_async
        mc = options.get("max_concurrency")
        if mc is None:
            mc = DEFAULT_ASYNC_CONCURRENCY if is_async else 1
        sup = options.get("supervisor")
        sup_name = getattr(sup, "name", sup)
        backend = getattr(self.__actorcore_class__, "__actorcore_backend__", "asyncio")
        if backend not in ("asyncio", "trio"):
            raise ValueError(
                f"{meta.class_name}.__actorcore_backend__={backend!r}: must be 'asyncio' or 'trio'"
            )
        interval = options.get("checkpoint_interval")
        if interval is not None:
            _check_replayable(self.__actorcore_class__, meta, mc, interval)
        runtime_env = resolve_runtime_env(core, options.get("runtime_env"))
        if runtime_env and options.get("placement") == "shared":
            raise ValueError(
                f"actor {meta.class_name}: runtime_env needs a process of its own; "
                "it cannot be given with placement='shared'")
        spec = ActorSpec(
            actor_id=new_task_id(),
            job_id=core.current_job_id(),
            class_id=export.function_id,
            meta=meta,
            args=blob,
            deps=deps,
            resources=resources_of(options, default_cpus=0),
            max_restarts=options.get("max_restarts") or 0,
            max_task_retries=options.get("max_task_retries") or 0,
            max_concurrency=mc,
            async_backend=backend,
            name=name,
            namespace=namespace,
            detached=options.get("lifetime") == "detached",
            placement=options.get("placement") or "process",
            supervisor=sup_name,
            restart="permanent",
            owner=core.worker_id,
            job_namespace=default_namespace(),
            handles=tuple(carried),
            runtime_env=runtime_env,
            strategy=_strategy(options.get("scheduling_strategy")),
            checkpoint_interval=interval,
        )
        _ensure_exported(core, export)
        if name is None and sup_name is None:
            core.enqueue(Submit([spec]))
            return ActorHandle(spec.actor_id, meta, owned=True, counted=not spec.detached)
        found = request_node(core, CreateNamedActor(spec, bool(options.get("get_if_exists"))))
        if found is not None:  # get_if_exists found the one already there
            return ActorHandle(found.actor_id, found.meta, owned=False)
        # A named actor lives until it is killed or its owner exits: its handles do not
        # count (anyone can get_actor() it again).
        return ActorHandle(spec.actor_id, meta, owned=False)


#: The methods an actor class that checkpoints (``checkpoint_interval >= 1``) writes.
CHECKPOINT_METHOD = "__actorcore_checkpoint__"
RESTORE_METHOD = "__actorcore_restore__"


def _check_replayable(cls: type, meta: ClassMeta, max_concurrency: int,
                      interval: int) -> None:
    """An actor recovered by replay must run its calls one at a time (the log is the
    order they ran in) and, to checkpoint, say how its state is saved and restored."""
    what = f"actor {meta.class_name} with checkpoint_interval={interval}"
    if max_concurrency != 1 or meta.concurrency_groups:
        raise ValueError(
            f"{what}: replay needs calls that run one at a time, in one order; "
            f"max_concurrency={max_concurrency} and concurrency_groups="
            f"{dict(meta.concurrency_groups)!r} allow several at once (use "
            "max_concurrency=1 and no concurrency groups)")
    if interval >= 1:
        missing = [m for m in (CHECKPOINT_METHOD, RESTORE_METHOD)
                   if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(
                f"{what}: the class must define {' and '.join(missing)} "
                f"({CHECKPOINT_METHOD}(self) returns its state, {RESTORE_METHOD}(self, "
                "state) takes it back); or use checkpoint_interval=0 to replay every "
                "call from the constructor")


def _check_extra_options(options: dict[str, Any]) -> None:
    placement = options.get("placement")
    if placement not in (None, "process", "shared"):
        raise ValueError(f"option placement={placement!r}: must be 'process' or 'shared'")
    sup = options.get("supervisor")
    if sup is not None and not isinstance(getattr(sup, "name", sup), str):
        raise TypeError(f"option supervisor={sup!r}: expected a supervisor or its name")
    if options.get("get_if_exists") and not options.get("name"):
        raise ValueError("option get_if_exists=True needs a name")


def _ensure_exported(core: Any, export: FunctionExport) -> None:
    core.ensure_exported(export, "actor class")


class _ActorOptions:
    """``A.options(...)``: ``.remote()`` with those options."""

    __slots__ = ("_cls", "_options")

    def __init__(self, cls: ActorClass, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._cls._create(self._options, args, kwargs)

    def options(self, **options: Any) -> _ActorOptions:
        return self._cls.options(**{**self._options, **options})


def make_actor_class(cls: type, options: dict[str, Any]) -> ActorClass:
    """The ``_api.set_actor_factory`` hook: ``@remote`` on a class."""
    return ActorClass(cls, options)


def _strategy(value: Any) -> Any:
    """The wire form of ``scheduling_strategy`` (None for the default: no import)."""
    if value is None or value == "DEFAULT":
        return None
    from ..protocol._strategy import strategy_of

    return strategy_of(value)
