"""The per-node shared-memory object store.

Values are serialised once (`serialize`: cloudpickle, pickle protocol 5 out-of-band
buffers) and live in one shared-memory arena per node, served by
`ObjectStoreService` (tree name ``object_manager``). Clients in the node
(`StoreClient`, or `BlockingStoreClient` from a thread without Trio) write straight
into shared memory and read zero-copy: numpy arrays and Arrow data come back as
read-only views of the arena. ``service.statistics()`` and
``client.store_statistics()`` give `StoreStatistics`; ``client.statistics()`` gives
`StoreClientStatistics` (frozen attrs classes).

Clients and the service talk in the frozen attrs messages of `_messages.py`; each
end dispatches through one `transport.Dispatcher`, and a message it does not handle,
or with fields of the wrong type, fails with `BadRequest` while it serves on.
"""

from ._blocking import BlockingStoreClient
from ._client import ObjectWriter, StoreClient, StoreClientStatistics
from ._core import StoreCore
from ._errors import (
    BadRequest,
    GetTimeoutError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStoreFullError,
    SerializationError,
    StoreClosedError,
    StoreError,
)
from ._payload import Payload
from ._serialize import SerializedValue, deserialize, serialize
from ._service import ObjectStoreService
from ._session import arena_path, cleanup_session, cleanup_stale_sessions, session_files
from ._statistics import StoreStatistics

__all__ = [
    "BadRequest",
    "BlockingStoreClient",
    "GetTimeoutError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectStoreFullError",
    "ObjectStoreService",
    "ObjectWriter",
    "Payload",
    "SerializationError",
    "SerializedValue",
    "StoreClient",
    "StoreClientStatistics",
    "StoreClosedError",
    "StoreCore",
    "StoreError",
    "StoreStatistics",
    "arena_path",
    "cleanup_session",
    "cleanup_stale_sessions",
    "deserialize",
    "serialize",
    "session_files",
]
