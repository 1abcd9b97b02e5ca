"""How the client turns user values into stored bytes and back.

Values are pickled by the client (cloudpickle) and are opaque ``bytes`` to the
replicas, which never unpickle user data (see `_protocol.py`). Kept apart from the
client so its subscriptions decode events with the same function as its reads.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

__all__ = ["decode", "encode"]


def encode(value: Any) -> bytes:
    return cloudpickle.dumps(value, protocol=5)


def decode(stored: Any) -> Any:
    if isinstance(stored, bytes):
        return pickle.loads(stored)
    return stored

