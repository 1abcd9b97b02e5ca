"""How the client turns user values into stored bytes and back.

Values are pickled by the client (cloudpickle) and are opaque ``bytes`` to the
replicas, which never unpickle user data (see `_messages.py`). Kept apart from the
client so its subscriptions and typed tables share the decoding and `Entry`.
"""

from __future__ import annotations

import pickle
from typing import Any

import attrs
import cloudpickle

__all__ = ["Entry", "decode", "encode"]


@attrs.frozen
class Entry:
    """A stored value with its version (the sequence number that last wrote it)."""

    value: Any
    version: int


def encode(value: Any) -> bytes:
    return cloudpickle.dumps(value, protocol=5)


def decode(stored: Any) -> Any:
    if isinstance(stored, bytes):
        return pickle.loads(stored)
    return stored

