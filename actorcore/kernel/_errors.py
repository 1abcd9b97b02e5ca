"""Typed errors of the kernel.

Every error names the thing it is about (the supervisor, the child, the actor) in
its message and carries it as attributes, so that callers can both read and match
them.
"""

from __future__ import annotations

__all__ = [
    "ChildNotRunning",
    "ChildStartFailed",
    "DuplicateChild",
    "InjectedCrash",
    "KernelError",
    "RestartIntensityExceeded",
    "SupervisorFailed",
    "SupervisorNotRunning",
    "UnknownChild",
    "WaitTimeout",
]


class KernelError(Exception):
    """Base class of every error raised by :mod:`actorcore.kernel`."""


# -- supervision ---------------------------------------------------------------------


class SupervisorFailed(KernelError):
    """A supervisor gave up: it stopped its children and failed to its parent.

    Attributes:
      supervisor: the name of the supervisor that failed.
      child: the name of the child whose error made it give up (or ``None``).
      error: that child's exception (also the ``__cause__``), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        supervisor: str,
        child: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.supervisor = supervisor
        self.child = child
        self.error = error


class RestartIntensityExceeded(SupervisorFailed):
    """More than ``max_restarts`` restarts happened within ``max_seconds``.

    Attributes (besides those of :class:`SupervisorFailed`):
      max_restarts, max_seconds: the supervisor's limits.
    """

    def __init__(
        self,
        *,
        supervisor: str,
        child: str,
        error: BaseException | None,
        max_restarts: int,
        max_seconds: float,
    ) -> None:
        message = (
            f"supervisor {supervisor!r} exceeded its restart intensity "
            f"(more than {max_restarts} restart(s) in {max_seconds:g} s); "
            f"last failure in child {child!r}: {_describe(error)}"
        )
        super().__init__(message, supervisor=supervisor, child=child, error=error)
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds


class SupervisorNotRunning(KernelError):
    """A run-time operation was asked of a supervisor that is not running."""

    def __init__(self, supervisor: str, state: str, operation: str) -> None:
        super().__init__(
            f"supervisor {supervisor!r} cannot {operation}: it is {state}, not running"
        )
        self.supervisor = supervisor
        self.state = state


class UnknownChild(KernelError, LookupError):
    """No child of that name (or path) exists."""

    def __init__(self, supervisor: str, name: str, known: list[str] | None = None) -> None:
        message = f"supervisor {supervisor!r} has no child {name!r}"
        if known is not None:
            message += f" (children: {', '.join(map(repr, known)) or 'none'})"
        super().__init__(message)
        self.supervisor = supervisor
        self.name = name

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0])


class DuplicateChild(KernelError, ValueError):
    """A child of that name already exists in this supervisor."""

    def __init__(self, supervisor: str, name: str) -> None:
        super().__init__(f"supervisor {supervisor!r} already has a child named {name!r}")
        self.supervisor = supervisor
        self.name = name


class ChildNotRunning(KernelError):
    """The operation needs the child to be running, and it is not."""

    def __init__(self, supervisor: str, name: str, state: str) -> None:
        super().__init__(f"child {name!r} of supervisor {supervisor!r} is {state}, not running")
        self.supervisor = supervisor
        self.name = name
        self.state = state


class ChildStartFailed(KernelError):
    """A child added at run time (``start_child``) crashed before it was ready.

    The cause (``__cause__`` and ``error``) is the child's own exception. The child
    is not kept by the supervisor.
    """

    def __init__(self, supervisor: str, name: str, error: BaseException | None) -> None:
        reason = _describe(error) if error is not None else "it returned before it was ready"
        super().__init__(f"child {name!r} of supervisor {supervisor!r} failed to start: {reason}")
        self.supervisor = supervisor
        self.name = name
        self.error = error


class InjectedCrash(KernelError):
    """The default exception that ``Supervisor.crash_child`` injects into a child."""


class WaitTimeout(KernelError, TimeoutError):
    """A ``wait_*`` call on a supervisor did not see its condition in time."""


# -- actors ----------------------------------------------------------------------------


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "normal exit"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
