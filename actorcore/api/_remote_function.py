"""``@remote`` functions: ``f.remote(...)`` submits a task and returns refs at once.

A remote function is exported once per cluster session, by content id (SHA-1 of its
cloudpickle bytes), through the node into the GCS functions table; workers fetch and
cache it on first use. The export message and the task specs travel on one ordered
link, so the export always arrives first.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle

from ..core_worker import _worker_state
from ..core_worker._generator import refs_of_call
from ..exceptions import SerializationError
from ..protocol._ids import STREAMING, new_task_id, return_ids
from ..protocol._messages import TaskSpec
from ..protocol._serialization import dumps
from ..protocol._strategy import strategy_of
from ._actor_handle import dumps_carrying, unpin, unpin_when_ready
from ._options import (
    DEFAULT_MAX_RETRIES,
    num_returns_code,
    resources_of,
    validate_task_options,
)
from ._runtime_env import resolve_runtime_env
from ._signatures import check_call_args, method_meta

__all__ = ["RemoteFunction", "FunctionExport"]


class FunctionExport:
    """A function pickled once, with its content id."""

    __slots__ = ("blob", "function_id", "name")

    def __init__(self, fn: Callable, name: str) -> None:
        try:
            self.blob = cloudpickle.dumps(fn, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"could not serialize remote function {name}: {exc}"
            ) from exc
        self.function_id = hashlib.sha1(self.blob).digest()
        self.name = name


class RemoteFunction:
    """A function made remote by ``@actorcore.remote``.

    Call ``.remote(*args, **kwargs)`` to run it as a task; ``.options(...)`` to
    override its options for one call site. Calling it directly is an error, as in Ray.
    """

    def __init__(self, function: Callable, options: dict[str, Any]) -> None:
        self._function = function
        self._options = validate_task_options(options)
        self._name = getattr(function, "__qualname__", repr(function))
        self._module = getattr(function, "__module__", None)
        self._export: FunctionExport | None = None
        self._export_lock = threading.Lock()
        self._spec_cache: tuple | None = None
        # Checked at every .remote(), as in Ray: a call that could not bind fails
        # here with the TypeError a local call would raise, not later in a worker.
        self._signature = method_meta(function, {}, bound=False)
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly; "
            f"use {self._name}.remote(...) (or {self._name}._function(...) to run it locally)"
        )

    def __repr__(self) -> str:
        return f"<actorcore.RemoteFunction {self._module}.{self._name}>"

    def __reduce__(self) -> Any:
        return (RemoteFunction, (self._function, self._options))

    def options(self, **options: Any) -> _BoundOptions:
        """This function with some options overridden for the next ``.remote()``."""
        merged = dict(self._options)
        merged.update(validate_task_options(options))
        return _BoundOptions(self, merged)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a task running this function; return its ``ObjectRef`` (or refs)."""
        return self._submit(self._options, args, kwargs)

    def _get_export(self) -> FunctionExport:
        export = self._export
        if export is None:
            with self._export_lock:
                if self._export is None:
                    self._export = FunctionExport(self._function, self._name)
                export = self._export
        return export

    def _submit(self, options: dict[str, Any], args: tuple, kwargs: dict) -> Any:
        check_call_args(self._name, self._signature, args, kwargs)
        core = _worker_state.auto_core()
        export = self._get_export()
        # Large arguments go by ref, through the store (``by_ref``): the node pins
        # them while the task needs them, so they are freed right behind it. Actor
        # handles in them are carried: pinned here until the task's result is back.
        blob, deps, by_ref, carried = dumps_carrying(
            self._name, args, kwargs, core.arg_store())
        try:
            return self._submit_spec(core, export, options, blob, deps, carried)
        except BaseException:
            unpin(core, carried)
            raise
        finally:
            if by_ref:
                core.release_args(by_ref)

    def _submit_spec(self, core: Any, export: FunctionExport, options: dict[str, Any],
                     blob: bytes, deps: list[bytes], carried: list[bytes]) -> Any:
        num_returns = num_returns_code(options.get("num_returns", 1))
        if options is self._options and self._spec_cache is not None:
            resources, max_retries, retry_exc, strategy = self._spec_cache
        else:
            resources = resources_of(options)
            max_retries = options.get("max_retries")
            if max_retries is None:
                max_retries = DEFAULT_MAX_RETRIES
            retry_exc = options.get("retry_exceptions") or False
            if retry_exc is not True and retry_exc is not False:
                retry_exc = dumps(tuple(retry_exc), what="retry_exceptions")
            strategy = options.get("scheduling_strategy")
            if strategy is not None:
                strategy = strategy_of(strategy)
            if options is self._options:
                self._spec_cache = (resources, max_retries, retry_exc, strategy)
        task_id = new_task_id()
        spec = TaskSpec(
            task_id=task_id,
            job_id=core.current_job_id(),
            function_id=export.function_id,
            name=options.get("name") or self._name,
            args=blob,
            deps=deps,
            num_returns=num_returns,
            resources=resources,
            max_retries=max_retries,
            retry_exceptions=retry_exc,
            parent_task_id=core.current_task_id(),
            owner=core.worker_id,
            runtime_env=resolve_runtime_env(core, options.get("runtime_env")),
            max_calls=options.get("max_calls") or 0,
            strategy=strategy,
        )
        ids = return_ids(task_id, max(num_returns, 1))
        if num_returns == STREAMING:  # its items may come back at once
            core.register_stream(task_id)
        try:
            core.submit_task(spec, export, ids)
        except BaseException:
            core.drop_stream(task_id)
            raise
        if carried:  # actor handles in the arguments: held here until the task is done
            unpin_when_ready(core, ids[0], carried)
        return refs_of_call(core, num_returns, ids)


class _BoundOptions:
    """The result of ``f.options(...)``: has ``.remote()`` with those options."""

    __slots__ = ("_fn", "_options")

    def __init__(self, fn: RemoteFunction, options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn._submit(self._options, args, kwargs)

    def options(self, **options: Any) -> _BoundOptions:
        merged = dict(self._options)
        merged.update(validate_task_options(options))
        return _BoundOptions(self._fn, merged)
