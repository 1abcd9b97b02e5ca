"""What injected faults (``transport.faults``) do to one connection's outgoing frames.

Injected faults model what a real network does to a reliable ordered stream: it
delays frames (never reorders them) or the connection breaks. A "drop" loses the
frame and resets the link (what was queued behind it too, as a reset does); a
"duplicate" delivers the frame and then breaks the link, so the sender cannot tell
whether it arrived and sends it again on its next connection (the receiver sees it
twice); a "refuse" (partition) resets the link at its first frame, and the
handshake refuses new ones until it heals. Every user of a link thus needs the same
thing: redial, resend what was unanswered, and tolerate a repeat.

`LinkFaults` owns the frames a delay holds back and the count of frames faults
took; it acts on its connection only through `FaultedLink`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from . import faults

__all__ = ["FaultedLink", "LinkFaults"]

Chunks = list[bytes | memoryview]


class FaultedLink(Protocol):
    """What `LinkFaults` uses of its connection."""

    @property
    def closed(self) -> bool: ...

    def running(self) -> bool:
        """Whether the connection's tasks run (``start_task`` has where to start)."""

    def push_frame(self, chunks: Chunks, size: int) -> None:
        """Queue an encoded frame for the writer (no fault applied)."""

    def start_task(self, fn: Callable[[], Awaitable[None]]) -> bool:
        """Start ``fn`` beside the connection's tasks; False once it is closing."""

    def reset(self, reason: str) -> None:
        """Close the link at once, as a network reset would."""

    async def reset_when_flushed(self) -> None:
        """Close the link once what was sent so far has left (a duplicate's reset)."""


class LinkFaults:
    """The injected faults of one connection (see the module docstring)."""

    def __init__(self, link: FaultedLink, name: str, peer_name: str) -> None:
        self._link = link
        self._name = name
        self._peer_name = peer_name
        #: frames dropped, duplicated or refused by injected faults
        self.dropped = 0
        # frames held back by a delay fault: (release time, chunks, size), in order
        self._delayed: collections.deque[tuple[float, Chunks, int]] = collections.deque()

    def holding(self) -> bool:
        """Whether frames are held back (later frames queue behind them)."""
        return bool(self._delayed)

    def held(self) -> int:
        """How many frames are held back."""
        return len(self._delayed)

    def clear(self) -> None:
        """The link closed: what is held back never leaves."""
        self._delayed.clear()

    def send(self, kind_name: str, chunks: Chunks, size: int) -> None:
        """Send a frame of kind ``kind_name`` as the installed fault rules say."""
        if faults._active:
            rule = faults.decide(self._name, self._peer_name, kind_name)
            if rule is not None and self._act(rule, chunks, size):
                return
        if self._delayed:
            self._hold(0.0, chunks, size)  # behind the frames still held back
            return
        self._link.push_frame(chunks, size)

    def _act(self, rule: faults.Rule, chunks: Chunks, size: int) -> bool:
        """Act on ``rule`` for one outgoing frame; True if the frame is dealt with."""
        action = rule.action
        link = self._link
        if action == "delay":
            if not link.running() or link.closed:
                return False
            self._hold(rule.delay, chunks, size)
            return True
        self.dropped += 1
        if action == "duplicate":
            if self._delayed:
                self._hold(0.0, chunks, size)
            else:
                link.push_frame(chunks, size)
            link.start_task(link.reset_when_flushed)
            return True
        link.reset(f"link reset by an injected fault ({action} {self._name!r} -> "
                   f"{self._peer_name!r})")
        return True

    def _hold(self, delay: float, chunks: Chunks, size: int) -> None:
        """Hold a frame back ``delay`` seconds, never overtaking those held before it:
        a delay slows a link down, a stream never reorders."""
        release = max(trio.current_time() + delay,
                      self._delayed[-1][0] if self._delayed else -math.inf)
        self._delayed.append((release, chunks, size))
        if len(self._delayed) == 1 and not self._link.start_task(self._release):
            self._delayed.clear()  # closing: nothing more leaves

    async def _release(self) -> None:
        link = self._link
        while self._delayed and not link.closed:
            release, chunks, size = self._delayed[0]
            await trio.sleep_until(release)
            if link.closed:
                break
            self._delayed.popleft()
            link.push_frame(chunks, size)
        self._delayed.clear()
