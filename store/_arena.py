"""The shared-memory arena: one file in /dev/shm, mapped by the service and clients.

Measured on this machine (benchmarks/store_bench.py, 100 MB payload): a new segment
file per object (create, ftruncate, mmap, copy) runs at ~1.2 GB/s because every page
is allocated and zeroed by the kernel on first touch; copying into pages of an arena
that were touched before runs at memcpy speed (~16 GB/s). So the store uses one
arena file per session, carved up by a best-fit allocator (`Allocator`) that hands
the same pages back to the next object of the same size.

Warm memory. A copy into pages of the arena costs far more the first time, twice
over (measured with a 128 MiB file on this 2-core virtual machine, memcpy of 100 MB
6-9 ms):

1. the kernel allocates and zeroes each page on its first touch by anyone: a cold
   100 MB copy took 70-800 ms. The service does that ahead of use, from a background
   thread (`Arena.prefault`, driven by ``ObjectStoreService``'s ``warm``): a margin
   beyond the highest byte ever allocated (``high_water``; the allocator carves the
   arena from the bottom up). ``posix_fallocate`` alone reserves pages but leaves
   them to be zeroed at first fault; reading them through a mapping
   (``MADV_POPULATE_READ``) zeroes them, and ``MADV_DONTNEED`` then drops the
   service's own page tables again (its RSS does not grow; the pages stay).
2. each process then takes a page fault per 4 KiB page of the arena it touches for
   the first time: 40-120 ms per 100 MB even when the pages exist. A write fault
   maps one page; a read fault maps the up to 16 ready pages around it ("fault
   around", 64 KiB). So a large `Mapping.write` first maps its destination in with
   ``MADV_POPULATE_READ`` (the same read faults, taken inside the kernel), or reads
   one byte per 64 KiB of it: 8-20 ms, after which the copy runs at memcpy speed. (Pages only
   reserved by ``posix_fallocate`` are not "ready": that is why 1. zeroes them.)

The arena is self-describing, so a restarted service rebuilds its index from it:

    [file header, 4096 bytes][block][block]...[block]      blocks tile the file

Every block starts with a header written by the service only (the single writer):
magic, state (free / unsealed / sealed), block size, the object id, and the payload
layout (metadata, pickle stream and out-of-band buffer sizes). Writes are ordered so
that a crash between two of them leaves a walkable arena: on a split the free
remainder's header is written before the used block's; on a free the merged header is
written at the lower block. Clients write payloads only, between ``create`` and
``seal``. The payload is ``metadata | data | buffer 0 | buffer 1 ...`` with every
buffer aligned to 64 bytes (what Arrow and numpy like).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import struct
import threading
from collections.abc import Callable, Sequence

import attrs

from ._allocator import ALIGNMENT, Allocator, align

__all__ = [
    "ARENA_HEADER_SIZE",
    "Arena",
    "BlockInfo",
    "FREE",
    "SEALED",
    "UNSEALED",
    "Mapping",
    "header_size",
    "pack_block_header",
    "payload_layout",
    "run_at_low_priority",
]

FILE_MAGIC = b"ACSTORE1"
FILE_HEADER = struct.Struct("<8sQQQ")  # magic, version, file size, owner pid
#: After the file header: the length and UTF-8 path of the session's spill directory
#: (0: none), so that removing a dead session's arena also finds its files on disk.
SPILL_DIR_FIELD = struct.Struct("<H")
ARENA_HEADER_SIZE = 4096
BLOCK_MAGIC = b"ACB1"
# magic, state, block size, id length, buffer count, metadata length, data length,
# header length (payload starts at block offset + header length)
BLOCK_HEADER = struct.Struct("<4sIQIIQQI")
BLOCK_FIXED = 64
FREE, UNSEALED, SEALED = 0, 1, 2

logger = logging.getLogger("store")

PAGE = mmap.PAGESIZE
#: The kernel's fault-around window: a read fault maps the ready pages of this much
#: of the file around it (``fault_around_bytes``, 64 KiB by default).
FAULT_AROUND = 65536
#: Writes at least this large read one byte per `FAULT_AROUND` of their destination
#: first (see the module docstring, 2.).
PRETOUCH_MIN = 1 << 20
#: A mapping records which of its chunks of this size it has mapped (see
#: ``Mapping._unmapped``).
MAPPED_CHUNK = 1 << 20
#: `Mapping.map_ahead` records its progress after each step of this size.
MAP_AHEAD_STEP = 8 << 20
#: Background threads that fault pages in ahead of use (the service's warmer, a
#: client's `Mapping.map_ahead`) run at this nice value, and as ``SCHED_IDLE``:
#: faulting pages in ahead of use is never worth slowing down the node's start or
#: anyone's tasks. Nice alone is not enough where the kernel groups processes by
#: session (autogroup, the default on most distributions): it ranks the thread only
#: against its own process's threads, while that process's group competes with each
#: worker's and driver's group at full weight. A ``SCHED_IDLE`` thread is at least
#: preempted the moment any other task wakes on its CPU. (Measured on a busy 2-core
#: machine: with the warmer at nice 19 only, init to the first task's result took
#: 0.26 s longer at the median of 8 alternated runs than with no warmer at all.)
BACKGROUND_NICE = 19
MADV_DONTNEED = 4
MADV_POPULATE_READ = 22  # Linux 5.14

_libc = ctypes.CDLL(None, use_errno=True)
_madvise = _libc.madvise  # through ctypes: the GIL is released while it runs
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int
_populate_works = True


def _advise(address: int, length: int, advice: int) -> None:
    if _madvise(address, length, advice) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"madvise({advice}): {os.strerror(code)}")


def payload_layout(
    meta_len: int, data_len: int, buffer_sizes: Sequence[int]
) -> tuple[list[int], int]:
    """Offsets of the buffers within the payload, and the payload length."""
    position = meta_len + data_len
    offsets = []
    for size in buffer_sizes:
        position = align(position)
        offsets.append(position)
        position += size
    return offsets, position


def header_size(id_len: int, nbuf: int) -> int:
    return align(BLOCK_FIXED + id_len + 8 * nbuf)


def pack_block_header(
    state: int,
    size: int,
    object_id: bytes,
    meta_len: int,
    data_len: int,
    buffer_sizes: Sequence[int],
) -> bytes:
    """A used block's whole header (`header_size` bytes): what `Arena.write_block`
    writes in place, and what starts an object file on disk."""
    hdr = header_size(len(object_id), len(buffer_sizes))
    out = bytearray(hdr)
    BLOCK_HEADER.pack_into(
        out, 0, BLOCK_MAGIC, state, size, len(object_id), len(buffer_sizes), meta_len,
        data_len, hdr,
    )
    out[BLOCK_FIXED : BLOCK_FIXED + len(object_id)] = object_id
    if buffer_sizes:
        struct.pack_into(f"<{len(buffer_sizes)}Q", out, BLOCK_FIXED + len(object_id), *buffer_sizes)
    return bytes(out)


@attrs.frozen
class BlockInfo:
    """What a block header says (read back when the index is rebuilt)."""

    offset: int
    size: int
    state: int
    object_id: bytes = b""
    meta_len: int = 0
    data_len: int = 0
    buffer_sizes: tuple[int, ...] = ()
    payload_offset: int = 0

    @property
    def payload_len(self) -> int:
        return payload_layout(self.meta_len, self.data_len, self.buffer_sizes)[1]


class Mapping:
    """A memory map of the arena file (or of one object's file on disk, see
    ``_spill``) with its base address; read-write unless ``readonly``.

    Never unmapped explicitly: zero-copy views hold raw addresses into it, so it lives
    as long as something references it (views keep it alive through their holders)
    and the OS unmaps it when it is garbage collected.
    """

    def __init__(self, path: str, size: int | None = None, *, readonly: bool = False):
        fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            if size is None:
                size = os.fstat(fd).st_size
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            self.mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        self.path = path
        self.size = size
        self.readonly = readonly
        self._anchor: object
        if readonly:  # ctypes wants a writable buffer; pyarrow takes any
            import pyarrow as pa  # imported at first use: see the note in `store._client`

            anchor = pa.py_buffer(self.mmap)
            self._anchor, self.address = anchor, anchor.address
        else:
            self._anchor = ctypes.c_char.from_buffer(self.mmap)
            self.address = ctypes.addressof(self._anchor)
        self.view = memoryview(self.mmap)
        #: One byte per `MAPPED_CHUNK`: non-zero once this process mapped all of it.
        self._mapped = bytearray(-(-size // MAPPED_CHUNK))

    def write(self, offset: int, source: object) -> None:
        """Copy a bytes-like ``source`` to ``offset`` (memcpy, GIL released if big)."""
        if self.readonly:
            raise ValueError(f"{self.path} is mapped read-only")
        with memoryview(source) as src:  # type: ignore[arg-type]
            n = src.nbytes
            if offset < 0 or offset + n > self.size:
                raise ValueError(f"write of {n} bytes at {offset} is outside the arena")
            if n < 65536:
                self.view[offset : offset + n] = src.cast("B") if src.format != "B" or src.ndim != 1 else src
                return
            import pyarrow as pa  # imported at first use: see the note in `store._client`

            address = pa.py_buffer(src).address
            if n < PRETOUCH_MIN:
                ctypes.memmove(self.address + offset, address, n)
                return
            for start, end in self._unmapped(offset, n):
                self._map_in(start, end - start)
            ctypes.memmove(self.address + offset, address, n)
            self._mark_mapped(offset, n)

    # Which pages of the mapping this process has mapped. A copy into pages this
    # process has not touched yet costs a page fault per 4 KiB page (the module
    # docstring, 2.): 6 ms of CPU per 100 MB of page-table entries on this machine
    # even when `_map_in` takes them in bulk, and `_map_in` of pages already mapped
    # still walks them (1.9 ms of CPU per 100 MB, 20 % of the copy). A mapping is
    # never unmapped and nobody punches holes in the arena, so once a range was
    # written through this mapping it stays mapped: `_mapped` remembers that per
    # `MAPPED_CHUNK`, and a later write maps in only what it does not cover (the
    # steady state of a driver's puts: none of it). The record is only advice:
    # should the kernel take pages away (reclaim; `forget`), the copy takes the
    # faults again, nothing worse.

    def _unmapped(self, offset: int, n: int) -> list[tuple[int, int]]:
        """The parts of ``[offset, offset + n)`` not known to be mapped, merged."""
        holes: list[tuple[int, int]] = []
        mapped = self._mapped
        end = offset + n
        for chunk in range(offset // MAPPED_CHUNK, (end - 1) // MAPPED_CHUNK + 1):
            if mapped[chunk]:
                continue
            start = max(offset, chunk * MAPPED_CHUNK)
            stop = min(end, (chunk + 1) * MAPPED_CHUNK)
            if holes and holes[-1][1] == start:
                holes[-1] = (holes[-1][0], stop)
            else:
                holes.append((start, stop))
        return holes

    def _mark_mapped(self, offset: int, n: int) -> None:
        """``[offset, offset + n)`` was just written: its whole chunks are mapped."""
        first = -(-offset // MAPPED_CHUNK)
        last = (offset + n) // MAPPED_CHUNK  # exclusive
        if last > first:
            self._mapped[first:last] = b"\x01" * (last - first)

    def forget(self, offset: int, n: int) -> None:
        """This process dropped its page-table entries for ``[offset, offset + n)``
        (``MADV_DONTNEED``): a later write maps them in again."""
        first = offset // MAPPED_CHUNK
        last = -(-(offset + n) // MAPPED_CHUNK)
        self._mapped[first:last] = bytes(last - first)

    def map_ahead(self, offset: int, n: int) -> int:
        """Map ``[offset, offset + n)`` into this process now, one `MAP_AHEAD_STEP`
        at a time, recording each step as it is done; returns the bytes it mapped.

        For a thread in the background (`StoreClient.map_ahead`): a write meanwhile
        skips the steps already recorded and maps the rest itself (the two may map
        the same pages at once: read faults, harmless). Pages of the file that were
        never touched are zeroed here, as their first writer would have had to.
        """
        mapped = 0
        end = offset + n
        step = offset
        while step < end:  # steps end on a multiple of MAP_AHEAD_STEP (of MAPPED_CHUNK)
            stop = min(end, (step // MAP_AHEAD_STEP + 1) * MAP_AHEAD_STEP)
            for start, hole_end in self._unmapped(step, stop - step):
                self._map_in(start, hole_end - start)
                mapped += hole_end - start
            self._mark_mapped(offset, stop - offset)
            step = stop
        return mapped

    def _map_in(self, offset: int, n: int) -> None:
        """Map the pages of ``[offset, offset + n)`` into this process before a large
        copy (the module docstring, 2.), so that the copy takes no faults: one
        ``MADV_POPULATE_READ`` (the kernel walks the range with its fault-around,
        no trip to user space between faults: 24 ms against 33 ms for the touch
        below per 100 MB, same load), else a read of one byte per 64 KiB. Either
        leaves the bytes alone: both are read faults."""
        global _populate_works
        if _populate_works:
            start = (self.address + offset) // PAGE * PAGE
            end = self.address + offset + n
            if _madvise(start, end - start, MADV_POPULATE_READ) == 0:
                return
            if ctypes.get_errno() == errno.EINVAL:
                _populate_works = False  # a kernel before 5.14
        self.view[offset : offset + n : FAULT_AROUND].tobytes()


def run_at_low_priority(fn: Callable[..., object], *args: object, idle: bool = True) -> None:
    """Run ``fn(*args)`` in a new thread at nice `BACKGROUND_NICE`, and ``SCHED_IDLE``
    unless not ``idle``, and wait for it. A new thread each time: a process may lower
    a thread's priority but not raise it again, so Trio's cached worker threads must
    not be the ones lowered."""
    failure: list[BaseException] = []

    def target() -> None:
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
        except OSError as exc:
            logger.debug("store: cannot lower a background thread's priority: %s", exc)
        try:
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            logger.debug("store: cannot make a background thread SCHED_IDLE: %s", exc)
        try:
            fn(*args)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="store-background", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


class Arena:
    """The service's side of the arena: headers, the allocator, rebuild by scan."""

    def __init__(self, path: str, mapping: Mapping, allocator: Allocator):
        self.path = path
        self.mapping = mapping
        self.allocator = allocator
        #: The end of the highest block ever allocated (pages below it were touched).
        self.high_water = allocator.start
        #: Called (on the service's loop) when an allocation raised ``high_water``.
        self.on_grow: Callable[[], None] | None = None

    @property
    def size(self) -> int:
        return self.mapping.size

    @classmethod
    def open(
        cls, path: str, size: int, *, spill_dir: str | None = None
    ) -> tuple[Arena, list[BlockInfo]]:
        """Open the arena at ``path`` (rebuilding from its headers) or create it.

        Returns the arena and the used blocks found in it (empty when created).
        ``spill_dir`` is recorded in the header for `cleanup_stale_sessions`.
        """
        size = align(size, 4096) + ARENA_HEADER_SIZE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls._reopen(path, spill_dir)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        mapping = Mapping(path, size)
        _write_owner(mapping, size, spill_dir)
        arena = cls(path, mapping, Allocator(ARENA_HEADER_SIZE, size))
        arena.write_free(ARENA_HEADER_SIZE, size - ARENA_HEADER_SIZE)
        return arena, []

    @classmethod
    def _reopen(cls, path: str, spill_dir: str | None) -> tuple[Arena, list[BlockInfo]]:
        mapping = Mapping(path)
        magic, _version, size, _pid = FILE_HEADER.unpack_from(mapping.mmap, 0)
        if magic != FILE_MAGIC or size != mapping.size:
            raise RuntimeError(f"{path} is not an object store arena (or is truncated)")
        _write_owner(mapping, size, spill_dir)  # we are the new owner
        blocks = list(_scan(mapping, ARENA_HEADER_SIZE, size))
        allocator = Allocator.from_blocks(
            ARENA_HEADER_SIZE, size, [(b.offset, b.size, b.state != FREE) for b in blocks]
        )
        # Re-write merged free headers: the scan may have found neighbouring free blocks.
        arena = cls(path, mapping, allocator)
        arena.high_water = max(
            (b.offset + b.size for b in blocks if b.state != FREE), default=ARENA_HEADER_SIZE
        )
        for block in blocks:
            if block.state == FREE and (size := allocator.free_size(block.offset)) is not None:
                arena.write_free(block.offset, size)
        return arena, [b for b in blocks if b.state != FREE]

    # -- headers -------------------------------------------------------------------

    def write_free(self, offset: int, size: int) -> None:
        BLOCK_HEADER.pack_into(self.mapping.mmap, offset, BLOCK_MAGIC, FREE, size, 0, 0, 0, 0, 0)

    def write_block(
        self,
        offset: int,
        size: int,
        object_id: bytes,
        meta_len: int,
        data_len: int,
        buffer_sizes: Sequence[int],
    ) -> int:
        """Write an unsealed block's header; returns the payload's arena offset."""
        header = pack_block_header(UNSEALED, size, object_id, meta_len, data_len, buffer_sizes)
        mm = self.mapping.mmap
        # The fixed part (magic, state) last: a crash before it leaves the old header.
        mm[offset + BLOCK_FIXED : offset + len(header)] = header[BLOCK_FIXED:]
        mm[offset : offset + BLOCK_FIXED] = header[:BLOCK_FIXED]
        return offset + len(header)

    def set_state(self, offset: int, state: int) -> None:
        struct.pack_into("<I", self.mapping.mmap, offset + 4, state)

    def set_size(self, offset: int, size: int) -> None:
        struct.pack_into("<Q", self.mapping.mmap, offset + 8, size)

    # -- allocation ----------------------------------------------------------------

    def allocate(self, nbytes: int) -> tuple[int, int] | None:
        got = self.allocator.allocate(nbytes)
        if got is None:
            return None
        offset, size, remainder = got
        if remainder is not None:
            self.write_free(remainder, self.allocator.free_size(remainder))  # type: ignore[arg-type]
        if offset + size > self.high_water:
            self.high_water = offset + size
            if self.on_grow is not None:
                self.on_grow()
        # The caller writes the used header next (write_block).
        return offset, size

    def shrink(self, offset: int, nbytes: int) -> int:
        """Cut the used block at ``offset`` down to ``nbytes``, its tail freed (its
        free header written here, before the caller rewrites the block's own: a
        crash between the two leaves the old header, which covers the tail);
        returns the block's size now."""
        size, tail = self.allocator.shrink(offset, nbytes)
        if tail is not None:
            self.write_free(*tail)
        return size

    def prefault(self, start: int, end: int) -> None:
        """Allocate and zero the file's pages in ``[start, end)`` now (the module
        docstring, 1.), so that the first write there does not wait for the kernel.

        Any thread: it touches no state of ours, and it never changes a byte already
        written (a client may be copying into the same range right now: reserving
        pages and read faults leave data alone; the kernel zeroes a page only before
        its first use, under the page's lock). ``OSError`` goes to the caller: ENOSPC
        when /dev/shm is full (``posix_fallocate`` first, so that a full /dev/shm is
        an error here, never a SIGBUS).
        """
        global _populate_works
        start = start // PAGE * PAGE
        end = min(-(-end // PAGE) * PAGE, self.size)
        if end <= start:
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, start, end - start)
        finally:
            os.close(fd)
        if not _populate_works:
            return
        try:
            _advise(self.mapping.address + start, end - start, MADV_POPULATE_READ)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _populate_works = False  # a kernel before 5.14: reserved pages only
            logger.info("store: MADV_POPULATE_READ is not supported here; the arena's "
                        "pages are reserved ahead of use but zeroed on first use")
            return
        _advise(self.mapping.address + start, end - start, MADV_DONTNEED)
        self.mapping.forget(start, end - start)

    def free(self, offset: int) -> None:
        merged_offset, merged_size = self.allocator.free(offset)
        self.write_free(merged_offset, merged_size)

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _write_owner(mapping: Mapping, size: int, spill_dir: str | None) -> None:
    """Write the file header: this process owns the arena; its spill directory."""
    raw = os.fsencode(spill_dir) if spill_dir else b""
    if len(raw) > ARENA_HEADER_SIZE - FILE_HEADER.size - SPILL_DIR_FIELD.size:
        raw = b""  # an absurdly long path is not recorded (cleanup then skips it)
    position = FILE_HEADER.size
    SPILL_DIR_FIELD.pack_into(mapping.mmap, position, len(raw))
    position += SPILL_DIR_FIELD.size
    mapping.mmap[position : position + len(raw)] = raw
    FILE_HEADER.pack_into(mapping.mmap, 0, FILE_MAGIC, 1, size, os.getpid())


def arena_header(path: str) -> tuple[int, str | None] | None:
    """``(owner pid, spill directory or None)`` from the arena at ``path``'s header;
    ``None`` if it is not an arena."""
    try:
        with open(path, "rb") as f:
            raw = f.read(ARENA_HEADER_SIZE)
    except OSError:
        return None
    if len(raw) < FILE_HEADER.size + SPILL_DIR_FIELD.size:
        return None
    magic, _version, _size, pid = FILE_HEADER.unpack_from(raw)
    if magic != FILE_MAGIC:
        return None
    (length,) = SPILL_DIR_FIELD.unpack_from(raw, FILE_HEADER.size)
    start = FILE_HEADER.size + SPILL_DIR_FIELD.size
    spill_dir = os.fsdecode(raw[start : start + length]) if length else None
    return pid, spill_dir


def _read_header(mapping: Mapping, offset: int) -> BlockInfo:
    mm = mapping.mmap
    magic, state, size, id_len, nbuf, meta_len, data_len, hdr = BLOCK_HEADER.unpack_from(mm, offset)
    if magic != BLOCK_MAGIC or size < ALIGNMENT or size % ALIGNMENT or offset + size > mapping.size:
        raise RuntimeError(f"corrupt block header at arena offset {offset} of {mapping.path}")
    if state == FREE:
        return BlockInfo(offset, size, FREE)
    position = offset + BLOCK_FIXED
    object_id = bytes(mm[position : position + id_len])
    sizes = struct.unpack_from(f"<{nbuf}Q", mm, position + id_len) if nbuf else ()
    return BlockInfo(offset, size, state, object_id, meta_len, data_len, tuple(sizes), offset + hdr)


def _scan(mapping: Mapping, start: int, end: int):
    offset = start
    while offset < end:
        block = _read_header(mapping, offset)
        yield block
        offset += block.size
