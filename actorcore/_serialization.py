"""Serialisation of user values, task arguments and errors.

User values are pickled with cloudpickle (so lambdas and ``__main__`` classes travel)
at pickle protocol 5. Top-level ``ObjectRef`` arguments of a task are *data edges*:
they are replaced by ``_Dep(i)`` placeholders and listed separately, so the scheduler
resolves them before the task runs and the worker substitutes the values. Refs inside
containers are pickled as refs and stay refs.

A failure to pickle gets a :class:`~actorcore.exceptions.SerializationError` naming
the argument and its type, raised in the caller before anything is sent, so the
cluster never sees a half-made task.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from typing import Any

import cloudpickle

from .exceptions import SerializationError, TaskError

logger = logging.getLogger("actorcore.serialization")

__all__ = [
    "dumps",
    "loads",
    "dumps_args",
    "loads_args",
    "error_payload",
    "Dep",
]

_cp_dumps = cloudpickle.dumps
_loads = pickle.loads


class Dep:
    """Placeholder for the i-th top-level ``ObjectRef`` argument of a task."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> Any:
        return (Dep, (self.index,))


def dumps(value: Any, *, what: str = "value") -> bytes:
    """Pickle ``value``; an unpicklable one raises ``SerializationError`` naming it."""
    try:
        return _cp_dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"could not serialize {what} of type {type(value).__module__}."
            f"{type(value).__qualname__}: {exc}"
        ) from exc


def loads(data: bytes | memoryview) -> Any:
    return _loads(data)


def dumps_args(
    function_name: str, args: tuple, kwargs: dict, ref_type: type
) -> tuple[bytes, list[bytes]]:
    """Pickle a call's arguments; return ``(blob, dependency object ids)``.

    A call with no arguments pickles to a constant, so the fast path is one check.
    """
    if not args and not kwargs:
        return _EMPTY_ARGS, []
    deps: list[bytes] = []
    if any(type(a) is ref_type for a in args) or any(
        type(v) is ref_type for v in kwargs.values()
    ):
        new_args = []
        for a in args:
            if type(a) is ref_type:
                new_args.append(Dep(len(deps)))
                deps.append(a.binary())  # type: ignore[attr-defined]
            else:
                new_args.append(a)
        new_kwargs = {}
        for k, v in kwargs.items():
            if type(v) is ref_type:
                new_kwargs[k] = Dep(len(deps))
                deps.append(v.binary())  # type: ignore[attr-defined]
            else:
                new_kwargs[k] = v
        args, kwargs = tuple(new_args), new_kwargs
    try:
        return _cp_dumps((args, kwargs), protocol=5), deps
    except Exception as exc:
        _raise_bad_argument(function_name, args, kwargs, exc)
        raise  # unreachable


_EMPTY_ARGS = pickle.dumps(((), {}), protocol=5)


def _raise_bad_argument(function_name: str, args: tuple, kwargs: dict, exc: Exception) -> None:
    """Find which argument cannot be pickled and raise an error naming it."""
    items = [(f"argument {i}", a) for i, a in enumerate(args)]
    items += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in items:
        try:
            _cp_dumps(value, protocol=5)
        except Exception as inner:
            raise SerializationError(
                f"could not serialize {label} of {function_name}(): "
                f"type {type(value).__module__}.{type(value).__qualname__} "
                f"is not serializable ({inner})"
            ) from inner
    raise SerializationError(
        f"could not serialize the arguments of {function_name}(): {exc}"
    ) from exc


def loads_args(blob: bytes, dep_values: list[Any]) -> tuple[tuple, dict]:
    """Unpickle a call's arguments and substitute resolved dependency values."""
    args, kwargs = _loads(blob)
    if dep_values:
        args = tuple(dep_values[a.index] if type(a) is Dep else a for a in args)
        kwargs = {
            k: (dep_values[v.index] if type(v) is Dep else v) for k, v in kwargs.items()
        }
    return args, kwargs


def error_payload(
    exc: BaseException, function_name: str, pid: int, node_id: str, tb: str | None = None
) -> bytes:
    """Pickle a task's exception as a ``TaskError`` carrying the remote traceback.

    If the exception itself cannot be pickled, the error keeps its text only.
    """
    if isinstance(exc, TaskError):
        # An upstream task's error re-raised here (e.g. ``get`` inside the task):
        # forward it unchanged so the original cause and traceback reach the user.
        try:
            return _cp_dumps(exc, protocol=5)
        except Exception as pickle_err:  # wrapped again below, with its text and traceback
            logger.info("re-raising the upstream error %s of %s: it cannot be pickled (%r)",
                        type(exc).__qualname__, function_name, pickle_err)
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        cause: BaseException | None = pickle.loads(_cp_dumps(exc, protocol=5))
    except Exception:
        cause = None
        tb = tb + f"\n(the exception {type(exc).__qualname__} could not be pickled)"
    err = TaskError(function_name, tb, cause, pid, node_id)
    try:
        return _cp_dumps(err, protocol=5)
    except Exception:
        return _cp_dumps(TaskError(function_name, tb, None, pid, node_id), protocol=5)
