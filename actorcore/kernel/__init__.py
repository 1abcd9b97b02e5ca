"""The supervised actor kernel of actorcore.

Every system component is a supervised service: a :class:`Supervisor` runs child
services from :class:`ChildSpec`\\ s, restarts them by strategy within a restart
intensity and stops them in reverse start order. Services follow a structural
child protocol (see ``_spec.py`` and CONTRACTS.md §1), so code that supervises or
is supervised does not need to import this package. The kernel imports nothing else of actorcore.
"""

from ._child import ChildInfo
from ._errors import (
    ChildNotRunning,
    ChildStartFailed,
    DuplicateChild,
    InjectedCrash,
    KernelError,
    RestartIntensityExceeded,
    SupervisorFailed,
    SupervisorNotRunning,
    UnknownChild,
    WaitTimeout,
)
from ._snapshot import SNAPSHOT_KEYS, STATES, check_snapshot, format_tree
from ._spec import RESTART_TYPES, STRATEGIES, ChildSpec, RestartType, Service, Strategy
from ._supervisor import Supervisor, SupervisorStatistics

__all__ = [
    "RESTART_TYPES",
    "SNAPSHOT_KEYS",
    "STATES",
    "STRATEGIES",
    "ChildInfo",
    "ChildNotRunning",
    "ChildSpec",
    "ChildStartFailed",
    "DuplicateChild",
    "InjectedCrash",
    "KernelError",
    "RestartIntensityExceeded",
    "RestartType",
    "Service",
    "Strategy",
    "Supervisor",
    "SupervisorFailed",
    "SupervisorNotRunning",
    "SupervisorStatistics",
    "UnknownChild",
    "WaitTimeout",
    "check_snapshot",
    "format_tree",
]
