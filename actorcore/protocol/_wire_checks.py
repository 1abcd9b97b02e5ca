"""The checks declared on message fields (``attrs.field(metadata=...)``), shared
by the vocabularies of ``_wire``: a dispatcher runs a message's checks before its
handler, so a field of the wrong type is refused with the field's name."""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

from transport import check

__all__ = [
    "DICT",
    "FLAG",
    "ID",
    "INT",
    "OPT_ID",
    "OPT_STR",
    "SEQ",
    "STR",
    "nested",
    "non_negative",
    "seconds_up_to_a_minute",
    "spec_named",
]

ID = check(v.instance_of(bytes))
OPT_ID = check(v.optional(v.instance_of(bytes)))
SEQ = check(v.instance_of((list, tuple)))  # a batch: ids, specs, (oid, is_error, data)
FLAG = check(v.instance_of(bool))
INT = check(v.instance_of(int))
STR = check(v.instance_of(str))
OPT_STR = check(v.optional(v.instance_of(str)))
DICT = check(v.instance_of(dict))


def spec_named(kind: str) -> dict[str, Any]:
    """A field holding a spec of the class named ``kind`` (``TaskSpec``,
    ``CallSpec``, ``ActorSpec``), checked by name: the classes live above this
    module's imports."""

    def is_spec(instance: Any, attribute: Any, value: Any) -> None:
        if type(value).__name__ != kind:
            raise TypeError(f"'{attribute.name}' must be a {kind}, got {value!r:.100}")

    return check(is_spec)


def nested(cls: type) -> dict[str, Any]:
    """A field holding a ``cls`` whose own fields' checks run too (a dispatcher
    checks the fields of the message it routes, not those of what they hold)."""
    checks = [(a, a.metadata["check"]) for a in attrs.fields(cls) if "check" in a.metadata]

    def is_checked(instance: Any, attribute: Any, value: Any) -> None:
        if type(value) is not cls:
            raise TypeError(f"'{attribute.name}' must be a {cls.__name__}, got {value!r:.100}")
        for field, field_check in checks:
            try:
                field_check(value, field, getattr(value, field.name))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"in '{attribute.name}': {exc.args[0] if exc.args else exc}") \
                    from None

    return check(is_checked)


def non_negative(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"'{attribute.name}' must be an int >= 0, got {value!r:.100}")


def seconds_up_to_a_minute(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) not in (int, float) or not 0.0 <= value <= 60.0:
        raise ValueError(f"'{attribute.name}' must be seconds within [0, 60], got {value!r:.100}")
