"""``actorcore.supervisor(...)``: user actors under the kernel's supervisors (beyond Ray).

::

    sup = actorcore.supervisor("pipeline", strategy="one_for_all", max_restarts=3,
                               max_seconds=10)
    a = Stage.options(supervisor=sup).remote(1)

The caller's side: it checks the arguments and asks the node, whose actor manager
runs the supervisor (``node.actor_manager._user_supervision`` says how restarts
work).
"""

from __future__ import annotations

from typing import Any

from ..core_worker import _worker_state
from ..kernel import STRATEGIES
from ..protocol._wire import StartSupervisor
from ._job import request_node

__all__ = ["SupervisorRef", "supervisor"]


class SupervisorRef:
    """A user supervisor, by name; pass it as ``A.options(supervisor=ref)``."""

    __slots__ = ("name", "strategy")

    def __init__(self, name: str, strategy: str) -> None:
        self.name = name
        self.strategy = strategy

    def __repr__(self) -> str:
        return f"SupervisorRef({self.name!r}, {self.strategy})"

    def __reduce__(self) -> Any:
        return (SupervisorRef, (self.name, self.strategy))


def supervisor(name: str, *, strategy: str = "one_for_one", max_restarts: int = 3,
               max_seconds: float = 5.0) -> SupervisorRef:
    """Start a supervisor for user actors in the node's tree (see the module docs)."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"supervisor(name={name!r}): expected a non-empty str without '/'")
    if strategy not in STRATEGIES:
        raise ValueError(
            f"supervisor(strategy={strategy!r}): must be one of {', '.join(STRATEGIES)}"
        )
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"supervisor(max_restarts={max_restarts!r}): must be an int >= 0")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float) or not (
        max_seconds > 0
    ):
        raise ValueError(f"supervisor(max_seconds={max_seconds!r}): must be a number > 0")
    core = _worker_state.current_core()
    request_node(core, StartSupervisor(name, strategy, max_restarts, float(max_seconds)))
    return SupervisorRef(name, strategy)
