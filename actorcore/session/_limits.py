"""Raising this process's limit of open files to what the system allows.

A node holds five descriptors per actor process (its link, two output pipes, two
log files), and a driver two per actor it calls directly (the link and the
duplicate its reading thread polls, ``transport._read_loan``). Most Linux systems
give a process a soft limit of 1,024 open files with a far higher hard limit: with
it a node stopped accepting connections at about 170 actors (``accept failed: [Errno
24] Too many open files``) and those actors never came up. A process may raise its
own soft limit up to the hard one, and Ray does so in every process it starts; so do
the node (whose workers, forked or spawned from it, inherit the limit) and the
driver, at start.
"""

from __future__ import annotations

import logging

__all__ = ["raise_open_files_limit"]

logger = logging.getLogger("actorcore.limits")

#: Enough for thousands of actors; an unlimited hard limit is not taken literally.
TARGET = 1 << 20


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raise the soft limit of open files to the hard limit (at most `TARGET`);
    returns (old, new) soft limits, or ``None`` where there is no such limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    want = TARGET if hard == resource.RLIM_INFINITY else min(hard, TARGET)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as exc:
            logger.info("could not raise the open files limit from %d to %d: %s", soft, want, exc)
            return soft, soft
        return soft, want
    return soft, soft
