"""Serialisation of user values, task arguments and errors.

User values are pickled with cloudpickle (so lambdas and ``__main__`` classes travel)
at pickle protocol 5. Top-level ``ObjectRef`` arguments of a task are *data edges*:
they are replaced by ``_Dep(i)`` placeholders and listed separately, so the scheduler
resolves them before the task runs and the worker substitutes the values. Refs inside
containers are pickled as refs and stay refs.

Large arguments are passed by ref, as Ray does: a top-level argument of 100 KiB or
more (and the largest ones once the inline arguments of a call pass 10 MiB) is put
in the object store by the caller and replaced by a ``Dep`` like a ref argument, so
a task's message stays small whatever its arguments weigh (``dumps_args``).

A failure to pickle gets a :class:`~actorcore.exceptions.SerializationError` naming
the argument and its type, raised in the caller before anything is sent, so the
cluster never sees a half-made task.
"""

from __future__ import annotations

import logging
import pickle
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Protocol

import cloudpickle

from ..exceptions import SerializationError, TaskError

logger = logging.getLogger("actorcore.serialization")

__all__ = [
    "ARG_INLINE_THRESHOLD",
    "ARGS_INLINE_LIMIT",
    "ArgStore",
    "dumps",
    "loads",
    "dumps_args",
    "loads_args",
    "error_payload",
    "Dep",
]

_cp_dumps = cloudpickle.dumps
_loads = pickle.loads
_dumps = pickle.dumps

#: Types the standard pickler writes exactly as cloudpickle does (by value, with no
#: reducer of cloudpickle's involved), at a sixth of the cost of building a
#: ``CloudPickler`` (1.8 against 12 us for a call's ``((1,), {})``).
_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))


def plain(value: Any) -> bool:
    """Whether ``value`` is a plain scalar, or a short tuple or list of them."""
    t = type(value)
    if t in _PLAIN:
        return True
    if (t is tuple or t is list) and len(value) <= 8:
        return all(type(v) in _PLAIN for v in value)
    return False


def _plain_call(args: tuple, kwargs: dict) -> bool:
    return len(args) <= 8 and all(type(a) in _PLAIN for a in args) and (
        not kwargs or (len(kwargs) <= 8 and all(type(v) in _PLAIN for v in kwargs.values())))


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
        if plain(value):
            return _dumps(value, protocol=5)
        return _cp_dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"could not serialize {what} of type {type(value).__module__}."
            f"{type(value).__qualname__}: {exc}"
        ) from exc


def loads(data: bytes | memoryview) -> Any:
    return _loads(data)


#: A top-level argument whose serialised size reaches this goes through the object
#: store and is passed by ref (Ray: ``max_direct_call_object_size``, 100 KiB).
ARG_INLINE_THRESHOLD = 100 * 1024
#: The arguments a call keeps inline together stay under this; beyond it the
#: largest go through the store too (Ray: ``task_rpc_inlined_bytes_limit``).
ARGS_INLINE_LIMIT = 10 * 1024 * 1024

class ArgStore(Protocol):
    """Where a call's large arguments go: the caller's core worker (see
    ``CoreWorker.put_argument``)."""

    def put_argument(self, label: str, value: Any, serialized: Any) -> bytes:
        """Write ``value`` into the object store as an object the caller owns and
        return its id (``serialized``: its ``store.SerializedValue`` if the size
        was found by serialising it, else ``None``)."""
        ...

    def release_args(self, object_ids: Sequence[bytes]) -> None:
        """Free argument objects the call no longer needs."""
        ...


_NO_ARGS_BY_REF: tuple[bytes, ...] = ()


def dumps_args(
    function_name: str,
    args: tuple,
    kwargs: dict,
    ref_type: type,
    arg_store: ArgStore | None = None,
) -> tuple[bytes, list[bytes], Sequence[bytes]]:
    """Pickle a call's arguments; return ``(blob, dependency object ids, by_ref)``.

    A call with no arguments pickles to a constant, so the fast path is one check.
    With ``arg_store`` (the caller can reach the object store), large top-level
    arguments go into the store, as Ray does: each becomes a dependency like a ref
    argument, and the call's message stays small however large its arguments are
    (a message over the link's frame limit could not be sent at all). ``by_ref``
    lists the objects made so: the caller owns them and frees them (``release_args``)
    once the call no longer needs them; if this raises, they are freed already.
    """
    if not args and not kwargs:
        return _EMPTY_ARGS, [], _NO_ARGS_BY_REF
    if _plain_call(args, kwargs):  # no refs; small unless its strings are large
        blob = _dumps((args, kwargs), protocol=5)
        if len(blob) < ARG_INLINE_THRESHOLD:
            return blob, [], _NO_ARGS_BY_REF
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
    by_ref: list[bytes] = []
    try:
        if arg_store is not None and _maybe_large(args, kwargs):
            # A large buffer is sized without pickling it: spare the copy into a
            # blob that would be thrown away.
            args, kwargs = _promote_large(
                function_name, args, kwargs, deps, arg_store, by_ref, sized_only=True)
        try:
            blob = _cp_dumps((args, kwargs), protocol=5)
        except Exception as exc:
            _raise_bad_argument(function_name, args, kwargs, exc)
            raise  # unreachable
        if arg_store is not None and len(blob) >= ARG_INLINE_THRESHOLD:
            args, kwargs = _promote_large(function_name, args, kwargs, deps, arg_store, by_ref)
            blob = _cp_dumps((args, kwargs), protocol=5)
    except BaseException:
        if by_ref:
            assert arg_store is not None
            arg_store.release_args(by_ref)
        raise
    return blob, deps, by_ref or _NO_ARGS_BY_REF


_getsizeof = sys.getsizeof


def _maybe_large(args: tuple, kwargs: dict) -> bool:
    """Whether an argument may be large by its in-memory size (a C call each: no
    pickling; true for large buffers, which is what matters here)."""
    for a in args:
        if _getsizeof(a) >= ARG_INLINE_THRESHOLD:
            return True
    if kwargs:
        for v in kwargs.values():
            if _getsizeof(v) >= ARG_INLINE_THRESHOLD:
                return True
    return False


def _cheap_size(value: Any) -> int | None:
    """The size of a buffer-like value without pickling it; ``None``: not known."""
    t = type(value)
    if t is bytes or t is bytearray:
        return len(value)
    if t is str:
        return len(value) if value.isascii() else None  # else up to 4 bytes a character
    if t is memoryview:
        return value.nbytes
    if t.__name__ == "ndarray":
        nbytes = getattr(value, "nbytes", None)
        return nbytes if isinstance(nbytes, int) else None
    return None


def _promote_large(
    function_name: str,
    args: tuple,
    kwargs: dict,
    deps: list[bytes],
    arg_store: ArgStore,
    by_ref: list[bytes],
    sized_only: bool = False,
) -> tuple[tuple, dict]:
    """Move the large top-level arguments into the store (see ``dumps_args``).

    ``sized_only``: consider only arguments sized without pickling (buffers).
    """
    import store

    # (size, key, label, value, serialized or None); key: int position or str keyword
    items: list[tuple[int, int | str, str, Any, Any]] = []
    labelled: list[tuple[int | str, str, Any]] = [
        (i, f"argument {i}", a) for i, a in enumerate(args)
    ]
    labelled += [(k, f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for key, label, value in labelled:
        if type(value) is Dep:
            continue
        size = _cheap_size(value)
        ser = None
        if size is None:
            if sized_only:
                continue
            try:
                ser = store.serialize(value)
            except store.SerializationError as exc:
                raise SerializationError(
                    f"could not serialize {label} of {function_name}(): {exc}"
                ) from exc
            size = ser.total_size
        items.append((size, key, f"{label} of {function_name}()", value, ser))
    chosen = [it for it in items if it[0] >= ARG_INLINE_THRESHOLD]
    rest = sorted((it for it in items if it[0] < ARG_INLINE_THRESHOLD), key=lambda it: it[0])
    inline = sum(it[0] for it in rest)
    while rest and inline > ARGS_INLINE_LIMIT and not sized_only:
        it = rest.pop()
        inline -= it[0]
        chosen.append(it)
    if not chosen:
        return args, kwargs
    new_args = list(args)
    new_kwargs = dict(kwargs)
    for _size, key, label, value, ser in chosen:
        oid = arg_store.put_argument(label, value, ser)
        by_ref.append(oid)
        dep = Dep(len(deps))
        deps.append(oid)
        if isinstance(key, int):
            new_args[key] = dep
        else:
            new_kwargs[key] = dep
    return tuple(new_args), new_kwargs


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
