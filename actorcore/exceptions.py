"""The exceptions a user of actorcore can see, with Ray's names as aliases.

Every error the runtime raises is an :class:`ActorcoreError` (alias ``RayError``), so
``except ray.exceptions.RayError`` in a Ray program keeps working with
``import actorcore as ray``.

A task that raises reaches ``get`` as a :class:`TaskError` (alias ``RayTaskError``).
:meth:`TaskError.as_instanceof_cause` builds, as Ray does, a dynamic subclass of both
``TaskError`` and the original exception's type, so both ``except TaskError`` and
``except ValueError`` catch a remote ``ValueError``. The remote traceback text travels
with it and is part of ``str(error)``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorPlacementGroupRemoved",
    "TaskPlacementGroupRemoved",
    "ActorcoreError",
    "RayError",
    "TaskError",
    "RayTaskError",
    "WorkerCrashedError",
    "GetTimeoutError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectStoreFullError",
    "MessageTooLargeError",
    "ConfigurationError",
    "TaskCancelledError",
    "TaskUnschedulableError",
    "ActorcoreSystemError",
    "RaySystemError",
    "NotInitializedError",
    "SerializationError",
    "ActorError",
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "ActorOutOfMemoryError",
    "PendingCallsLimitExceeded",
    "LocalRayletDiedError",
    "NodeDiedError",
    "ObjectTransferError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError",
]


class ActorcoreError(Exception):
    """Base class of every error raised by actorcore."""


RayError = ActorcoreError


class ActorcoreSystemError(ActorcoreError):
    """The system itself failed (a component, a link): not the user's code."""


RaySystemError = ActorcoreSystemError


class NotInitializedError(ActorcoreError, RuntimeError):
    """An API call that needs a cluster was made before ``actorcore.init()``."""


class SerializationError(ActorcoreError, TypeError):
    """A value could not be serialised (pickled) to travel to another process."""


class TaskError(ActorcoreError):
    """A task (or actor method) raised; carries the cause and the remote traceback.

    Attributes:
        function_name: the task's name (its function's qualified name).
        traceback_str: the remote traceback, formatted.
        cause: the original exception, when it could be pickled back (else ``None``).
        pid: the process id of the worker that ran it.
        node_id: hex id of the node it ran on.
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None = None,
        pid: int | None = None,
        node_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node_id = node_id
        # Not super(): in a dual class the next __init__ would be the cause type's,
        # whose signature is unknown.
        Exception.__init__(self, function_name)

    def __reduce__(self) -> Any:
        return (
            _rebuild_task_error,
            (self.function_name, self.traceback_str, self.cause, self.pid, self.node_id),
        )

    def __str__(self) -> str:
        where = f"(pid={self.pid}, node={(self.node_id or '-')[:8]})"
        cause = "" if self.cause is None else f"{type(self.cause).__name__}: {self.cause}\n"
        return (
            f"{type(self).__name__}: task {self.function_name} failed {where}\n"
            f"{cause}{self.traceback_str.rstrip()}"
        )

    def as_instanceof_cause(self) -> TaskError:
        """This error as an instance of both ``TaskError`` and the cause's type."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, TaskError):
            return self
        cls = _dual_class(cause_cls)
        if cls is None:
            return self
        err = cls(self.function_name, self.traceback_str, self.cause, self.pid, self.node_id)
        return err


RayTaskError = TaskError

_dual_cache: dict[type, type | None] = {}


def _dual_class(cause_cls: type) -> type | None:
    """The cached ``TaskError(<cause>)`` class deriving from both types."""
    try:
        return _dual_cache[cause_cls]
    except KeyError:
        pass
    try:
        cls: type | None = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {
                "__init__": TaskError.__init__,
                "__str__": TaskError.__str__,
                "__reduce__": TaskError.__reduce__,
                "__module__": __name__,
            },
        )
    except TypeError:  # e.g. a final class or an incompatible layout
        cls = None
    _dual_cache[cause_cls] = cls
    return cls


def _rebuild_task_error(
    function_name: str,
    traceback_str: str,
    cause: BaseException | None,
    pid: int | None,
    node_id: str | None,
) -> TaskError:
    return TaskError(function_name, traceback_str, cause, pid, node_id).as_instanceof_cause()


class WorkerCrashedError(ActorcoreError):
    """The worker process running a task died (after every allowed retry)."""


class NodeDiedError(ActorcoreSystemError):
    """The node a task or driver depended on died (or stayed unreachable); the
    message names the node, its pid and address, how it ended, and its log dir."""


LocalRayletDiedError = NodeDiedError


class GetTimeoutError(ActorcoreError, TimeoutError):
    """``get(..., timeout=)`` ran out of time before every object was ready."""


class ObjectLostError(ActorcoreError):
    """An object's value is gone and cannot be rebuilt; the message says why.

    Raised as itself for an object made by ``put`` whose only copy is gone (a
    ``put`` has no lineage to re-run); its subclasses say why a task's return could
    not be rebuilt either.
    """


class OwnerDiedError(ObjectLostError):
    """The process that owned an object died, so its value is gone."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Every copy of a task's return is gone and re-running its task cannot bring it
    back (for example it is the result of an actor call, which is not re-run); the
    message names the object, its task and why."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """A lost object was not rebuilt: its task has no retries left (``max_retries``
    counts every re-run, for a worker's death, a node's, or a rebuild)."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """A lost object was not rebuilt: the lineage of its task (or of a task it
    depends on) was evicted by the lineage cap (``init(lineage_cap=...)``)."""


class ObjectTransferError(ObjectLostError):
    """No node could give a copy of an object to the node that pulled it.

    ``object_id`` (hex), ``size`` (bytes, ``None`` if no node ever said) and
    ``tried`` (each node asked, hex id -> why it could not give the object) say
    what failed; the message names them all. A subclass of `ObjectLostError`: for
    the caller the value is out of reach.
    """

    def __init__(self, message: str = "", *, object_id: str = "", size: int | None = None,
                 tried: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id
        self.size = size
        self.tried = dict(tried or {})

    def __reduce__(self) -> Any:  # keep the fields across processes
        return (_rebuild_transfer_error, (str(self), self.object_id, self.size, self.tried))


def _rebuild_transfer_error(message: str, object_id: str, size: int | None,
                            tried: dict[str, str]) -> ObjectTransferError:
    return ObjectTransferError(message, object_id=object_id, size=size, tried=tried)


class ObjectStoreFullError(ActorcoreError):
    """The object store is full and nothing can be freed or spilled.

    ``capacity``, ``used`` and ``requested`` are the store's size, its bytes in use
    and the bytes the failed allocation asked for (0 when unknown); the message also
    says what holds the memory and why the disk fallback could not take the value.
    """

    def __init__(
        self, message: str = "", *, capacity: int = 0, used: int = 0, requested: int = 0
    ) -> None:
        super().__init__(message)
        self.capacity = capacity
        self.used = used
        self.requested = requested

    def __reduce__(self) -> Any:  # keep the sizes across processes
        return (
            _rebuild_store_full,
            (str(self), self.capacity, self.used, self.requested),
        )


def _rebuild_store_full(message: str, capacity: int, used: int, requested: int) -> ObjectStoreFullError:
    return ObjectStoreFullError(message, capacity=capacity, used=used, requested=requested)


class MessageTooLargeError(ActorcoreError, ValueError):
    """A task, actor call, function or value cannot travel to the node: its message
    is larger than the link's frame limit and could not go through the object store
    instead. The message names what was too large and both sizes."""


class ConfigurationError(ActorcoreError, ValueError):
    """A configuration value that cannot be used, refused before anything starts. The
    message names the option as it was given: ``init(num_cpus=-1)``, a command line
    flag, or an ``ACTORCORE_*`` environment variable, and what it must be."""


class TaskCancelledError(ActorcoreError):
    """The task was cancelled with ``cancel(ref)``."""

    def __init__(self, task_id: bytes | str | None = None, message: str | None = None) -> None:
        self.task_id = task_id
        tid = task_id.hex() if isinstance(task_id, bytes) else task_id
        super().__init__(message or f"task {tid} was cancelled")

    def __reduce__(self) -> tuple:
        # ``args`` holds only the message: rebuilt from it, the message was taken for
        # the task id and wrapped again ("task task ... was cancelled was cancelled").
        return (type(self), (self.task_id, str(self)))


class TaskUnschedulableError(ActorcoreError):
    """No node in the cluster can ever satisfy the task's resource request."""


class TaskPlacementGroupRemoved(ActorcoreError):
    """The task's placement group was removed (before or while it ran), as Ray's."""


class ActorError(ActorcoreError):
    """An actor could not run a method call (base of the actor errors)."""


RayActorError = ActorError


class ActorDiedError(ActorError):
    """The actor is dead; the message says why (constructor raised, killed, ...)."""


class ActorUnavailableError(ActorError):
    """The actor is temporarily unreachable (restarting)."""


class ActorUnschedulableError(ActorError):
    """No node can ever satisfy the actor's resource request."""


class ActorOutOfMemoryError(ActorDiedError):
    """The actor's process was not started: memory use on its node was above the
    threshold (``ACTORCORE_MEMORY_USAGE_THRESHOLD``, Ray's
    ``RAY_memory_usage_threshold``). The message gives the usage and the threshold."""


class ActorPlacementGroupRemoved(ActorError):
    """The actor's placement group was removed, which killed it (as Ray's)."""


class PendingCallsLimitExceeded(ActorcoreError):
    """``.remote()`` on an actor created with ``max_pending_calls=n`` while this
    process already has ``n`` calls to it that have not finished (as Ray's)."""


class ActorExitRequest(SystemExit):
    """Raised by ``actorcore.actor.exit_actor()`` inside an actor method: it unwinds
    the method (``except Exception`` does not catch it) and the actor's host ends
    the actor. Not an error a caller ever sees: the caller gets ``ActorDiedError``."""
