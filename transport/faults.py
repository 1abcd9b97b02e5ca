"""Fault injection: reset, delay, or break links between named endpoints.

Rules are plain data (`Rule`, convertible to and from a dict) kept in a process-local
table, so a test can install them directly and a remote control message can carry
them to another process (``faults.add(Rule.from_dict(d))``). They can be added,
removed and cleared while connections run; every message consults the current table.

Matching: each endpoint has the name it announced in the handshake (``name=`` of
`connect` / `Server`). A rule matches a message going from endpoint ``src`` to
endpoint ``dst`` (`fnmatch` patterns; ``None`` matches any name) of message ``kind``
(``"request"``, ``"reply"``, ``"oneway"``, or ``None`` for all), and fires with
``probability`` (draws from a seedable RNG, see `seed`). The first rule that matches
and fires decides. Rules act where the message is *sent*: to disturb messages from B
to A, install the rule in B's process.

Rules carry an optional ``tag``: a harness that installs the same rules in many
processes names them with one tag, so ``install`` (replace the rules of a tag) and
``heal`` (remove them) are idempotent and mean the same everywhere.

Endpoints whose name starts with ``CONTROL_PREFIX`` (``"faults-"``) are never
faulted, in either direction: they are the harness's own control connections, and a
heal must get through the partition it heals.

Actions. Every link is a reliable ordered stream (TCP, Unix socket, TLS): a real
network never loses or doubles one frame inside a live stream and never reorders
them; it slows down, or the connection breaks. The actions model exactly that:

  ``drop``       the frame is lost and the connection is reset (closed at once, with
                 whatever was queued behind it; its pending requests fail with
                 `ConnectionLost`). The sender redials and resends what was unanswered.
  ``delay``      the frame leaves ``delay`` seconds later; frames sent after it on the
                 same connection wait behind it (order is preserved, as on a slow link).
  ``duplicate``  the frame is sent, then the connection breaks (half-closed once the
                 frame is written): the sender cannot know it arrived, resends it on
                 its next connection, and the receiver sees it twice. (Frames are never
                 doubled inside one stream.)
  ``refuse``     a partition: the connection resets at its first frame, and new
                 connections between the two endpoints are refused (checked in both
                 directions at the handshake; `connect` raises `ConnectError`).

So every user of a link must redial, resend what was not answered, and handle a
repeat idempotently; docs/faults.md says how each link of a cluster does it.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from typing import Any

import attrs

__all__ = [
    "ACTIONS",
    "CONTROL_PREFIX",
    "Rule",
    "add",
    "apply",
    "clear",
    "decide",
    "delay",
    "drop",
    "duplicate",
    "heal",
    "injected",
    "install",
    "partition",
    "refuse",
    "refused",
    "remove",
    "rules",
    "seed",
]

ACTIONS = ("drop", "delay", "duplicate", "refuse")
#: Endpoint names starting with this are fault-control links: no rule applies to them.
CONTROL_PREFIX = "faults-"
KINDS = ("request", "reply", "oneway")


def _check_action(_inst: Any, _attr: Any, value: str) -> None:
    if value not in ACTIONS:
        raise ValueError(f"unknown fault action {value!r}; expected one of {ACTIONS}")


def _check_kind(_inst: Any, _attr: Any, value: str | None) -> None:
    if value is not None and value not in KINDS:
        raise ValueError(f"unknown message kind {value!r}; expected one of {KINDS} or None")


def _check_probability(_inst: Any, _attr: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability must be within [0, 1], got {value!r}")


def _check_delay(_inst: Any, _attr: Any, value: float) -> None:
    if value < 0:
        raise ValueError(f"delay must be >= 0 seconds, got {value!r}")


@attrs.frozen
class Rule:
    """One fault rule (plain data). See the module docstring for the semantics."""

    action: str = attrs.field(validator=_check_action)
    src: str | None = None
    dst: str | None = None
    kind: str | None = attrs.field(default=None, validator=_check_kind)
    delay: float = attrs.field(default=0.0, validator=_check_delay)
    probability: float = attrs.field(default=1.0, validator=_check_probability)
    tag: str | None = None

    def matches(self, src: str, dst: str, kind: str | None) -> bool:
        """Whether this rule applies to a message of ``kind`` from ``src`` to ``dst``."""
        return (
            not src.startswith(CONTROL_PREFIX)
            and not dst.startswith(CONTROL_PREFIX)
            and (self.src is None or fnmatchcase(src, self.src))
            and (self.dst is None or fnmatchcase(dst, self.dst))
            and (self.kind is None or kind is None or self.kind == kind)
        )

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        unknown = set(data) - {f.name for f in attrs.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault rule fields {sorted(unknown)}")
        return cls(**data)


# The table. `_active` is an immutable snapshot rebuilt on every change so the hot
# path (`decide`, called per message only when rules exist) iterates without locks.
_table: dict[int, Rule] = {}
_ids = itertools.count(1)
_active: tuple[Rule, ...] = ()
_rng = random.Random()
# A process forked after this import (a worker forked from its node's zygote) draws
# its own faults, not the same sequence as its siblings.
os.register_at_fork(after_in_child=_rng.seed)


def _rebuild() -> None:
    global _active
    _active = tuple(_table.values())


def add(rule: Rule) -> int:
    """Install ``rule``; return its id (for `remove`)."""
    if not isinstance(rule, Rule):
        raise TypeError(f"expected a faults.Rule, got {rule!r}")
    rule_id = next(_ids)
    _table[rule_id] = rule
    _rebuild()
    return rule_id


def remove(rule_id: int) -> None:
    """Remove the rule with this id. Raises `KeyError` naming the id if there is none."""
    try:
        del _table[rule_id]
    except KeyError:
        raise KeyError(f"no fault rule with id {rule_id!r}") from None
    _rebuild()


def clear() -> None:
    """Remove every rule."""
    _table.clear()
    _rebuild()


def install(tag: str, new_rules: list[Rule]) -> list[int]:
    """Replace the rules tagged ``tag`` by ``new_rules`` (each given that tag); idempotent."""
    heal(tag)
    return [add(attrs.evolve(rule, tag=tag)) for rule in new_rules]


def heal(tag: str) -> int:
    """Remove every rule tagged ``tag``; returns how many there were."""
    gone = [rule_id for rule_id, rule in _table.items() if rule.tag == tag]
    for rule_id in gone:
        del _table[rule_id]
    _rebuild()
    return len(gone)


def rules() -> dict[int, Rule]:
    """The installed rules by id (a copy)."""
    return dict(_table)


def seed(value: int | None) -> None:
    """Seed the RNG used for ``probability`` < 1, for reproducible runs."""
    _rng.seed(value)


@contextmanager
def injected(*new_rules: Rule) -> Iterator[list[int]]:
    """Install rules for the duration of a ``with`` block (yields their ids)."""
    ids = [add(r) for r in new_rules]
    try:
        yield ids
    finally:
        for rule_id in ids:
            _table.pop(rule_id, None)
        _rebuild()


def decide(src: str, dst: str, kind: str) -> Rule | None:
    """The rule that fires for this message, or ``None`` to send it normally."""
    for rule in _active:
        if rule.matches(src, dst, kind) and (
            rule.probability >= 1.0 or _rng.random() < rule.probability
        ):
            return rule
    return None


def refused(a: str, b: str) -> Rule | None:
    """A ``refuse`` rule between endpoints ``a`` and ``b`` (either direction), if any."""
    for rule in _active:
        if rule.action == "refuse" and (rule.matches(a, b, None) or rule.matches(b, a, None)):
            return rule
    return None


def drop(src: str | None = None, dst: str | None = None, **kw: Any) -> Rule:
    """A rule losing a message from ``src`` to ``dst`` and resetting its connection."""
    return Rule("drop", src, dst, **kw)


def delay(seconds: float, src: str | None = None, dst: str | None = None, **kw: Any) -> Rule:
    """A rule delaying messages from ``src`` to ``dst`` by ``seconds``."""
    return Rule("delay", src, dst, delay=seconds, **kw)


def duplicate(src: str | None = None, dst: str | None = None, **kw: Any) -> Rule:
    """A rule breaking the connection from ``src`` to ``dst`` right after a message
    (which the sender will resend: the receiver sees it twice)."""
    return Rule("duplicate", src, dst, **kw)


def refuse(src: str | None = None, dst: str | None = None, **kw: Any) -> Rule:
    """A rule resetting connections from ``src`` to ``dst`` and refusing new ones."""
    return Rule("refuse", src, dst, **kw)


def partition(a: str | None, b: str | None) -> list[Rule]:
    """The two rules of a full partition between endpoints ``a`` and ``b``."""
    return [Rule("refuse", a, b), Rule("refuse", b, a)]


def apply(command: dict[str, Any]) -> Any:
    """Run a fault command given as plain data (what a remote control message carries).

    ``{"op": "add", "rule": {...}}`` -> rule id; ``{"op": "remove", "id": n}``;
    ``{"op": "clear"}``; ``{"op": "list"}`` -> ``{id: rule dict}``;
    ``{"op": "seed", "value": n}``; ``{"op": "install", "tag": t, "rules": [{...}]}``
    -> rule ids; ``{"op": "heal", "tag": t}`` -> how many rules it removed. Raises
    `ValueError` naming a bad command.
    """
    if not isinstance(command, dict):
        raise ValueError(f"a fault command must be a dict, got {command!r}")
    op = command.get("op")
    if op == "add":
        return add(Rule.from_dict(command["rule"]))
    if op == "remove":
        return remove(command["id"])
    if op == "clear":
        return clear()
    if op == "list":
        return {rule_id: rule.to_dict() for rule_id, rule in _table.items()}
    if op == "seed":
        return seed(command["value"])
    if op == "install":
        return install(str(command["tag"]), [Rule.from_dict(r) for r in command["rules"]])
    if op == "heal":
        return heal(str(command["tag"]))
    raise ValueError(
        f"unknown fault command op {op!r}; expected add, remove, clear, list, seed, "
        f"install or heal")
