"""Child specs and the child protocol.

The child protocol (CONTRACTS.md §1) is structural: a *service* is any object with
``async def run(self, *, task_status)`` that calls ``task_status.started(value)``
once it is ready, returns for a normal exit, raises for a crash and treats
cancellation as a request to shut down. It may also have ``def snapshot(self) ->
dict`` whose fields are merged into its supervisor's snapshot of it. Nothing needs
to be imported to be a service, which is what lets ``gcs/`` and ``store/`` be
supervised without depending on ``actorcore``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import trio

__all__ = [
    "RESTART_TYPES",
    "STRATEGIES",
    "ChildSpec",
    "RestartType",
    "Service",
    "Strategy",
]

RestartType = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]

RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")

#: How long a child that is not a supervisor gets to stop after it was cancelled.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0


@runtime_checkable
class Service(Protocol):
    """What a supervisor can run: see the module docstring."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = ...) -> None: ...


def _check_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(
            f"child name must be a non-empty string without '/', got {value!r}"
        )


def _check_start(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(
            f"ChildSpec.start must be a zero-argument callable returning a service, "
            f"got {value!r}"
        )


def _check_restart(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in RESTART_TYPES:
        raise ValueError(
            f"restart must be one of {', '.join(RESTART_TYPES)}, got {value!r}"
        )


def _check_timeout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value < 0:
        raise ValueError(f"shutdown_timeout must be a number >= 0, got {value!r}")


def _default_shutdown_timeout(spec: ChildSpec) -> float:
    # Like Erlang/OTP: a nested supervisor gets as long as its own children need
    # (each of them is bounded by its own timeout), a plain service five seconds.
    return math.inf if spec.kind == "supervisor" else DEFAULT_SHUTDOWN_TIMEOUT


@attrs.frozen
class ChildSpec:
    """How a supervisor starts, restarts and stops one child.

    Attributes:
      name: unique among its siblings; no ``/`` (paths use it as separator).
      start: zero-argument factory returning a *fresh* service object. It is called
        for the first start and again for every restart, so no state leaks from a
        crashed instance into its replacement.
      restart: ``"permanent"`` (always restarted), ``"transient"`` (restarted only
        after a crash, not after a normal return) or ``"temporary"`` (never
        restarted; removed from the supervisor once it exits).
      kind: shown in snapshots (``"service"``; ``"supervisor"`` for nested trees).
        A service's own ``snapshot()["kind"]`` takes precedence.
      shutdown_timeout: seconds the child is given to finish after it was cancelled,
        before the supervisor abandons it (see ``Supervisor``). Defaults to 5 s, or
        infinity for ``kind="supervisor"``.
    """

    name: str = attrs.field(validator=_check_name)
    start: Callable[[], Any] = attrs.field(validator=_check_start)
    restart: RestartType = attrs.field(default="permanent", kw_only=True, validator=_check_restart)
    kind: str = attrs.field(default="service", kw_only=True)
    shutdown_timeout: float = attrs.field(
        default=attrs.Factory(_default_shutdown_timeout, takes_self=True),
        kw_only=True,
        validator=_check_timeout,
    )
