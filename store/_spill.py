"""Object files on disk: an evicted object's block (header and payload) as one file,
and objects created on disk when shared memory cannot take them.

A spill file is written to a temporary name and renamed, so a file with the final
name is always complete; a restarted service finds the spilled objects by listing
the directory. No fsync: the store survives its own crashes, not the machine's.

An object created on disk (the fallback of a full store, see ``_core``) has the same
layout: it is born as ``<name>.spill.tmp`` with its header, its disk blocks reserved
up front (`create_object_file`), filled by its writer through a shared mapping, and
renamed to its final name when sealed (`seal_object_file`). From then on it is a
spilled object like any other, and readers may map the file instead of restoring it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import Any

from ._arena import BLOCK_FIXED, BLOCK_HEADER, BLOCK_MAGIC, FREE, SEALED, BlockInfo

__all__ = [
    "create_object_file",
    "disk_refusal",
    "read_at",
    "read_spill_header",
    "restore_spill",
    "scan_spills",
    "seal_object_file",
    "spill_path",
    "write_at",
    "write_spill",
]

SUFFIX = ".spill"


def spill_path(spill_dir: str, prefix: str, object_id: bytes) -> str:
    return os.path.join(spill_dir, f"{prefix}-{object_id.hex()}{SUFFIX}")


def write_spill(path: str, block: memoryview) -> int:
    """Write ``block`` to ``path`` atomically; returns the bytes written. A failed
    write (a full disk) leaves no temporary file behind."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb", buffering=0) as f:
            written = 0
            while written < block.nbytes:
                written += f.write(block[written:])
    except BaseException:
        _unlink(tmp)
        raise
    os.replace(tmp, path)
    return written


def create_object_file(path: str, header: bytes, length: int) -> None:
    """Create ``path`` (it must not exist) of ``length`` bytes starting with
    ``header``. Its disk blocks are allocated now (``posix_fallocate``): a writer
    that maps a sparse file and meets a full disk half way dies of SIGBUS, while
    here a full disk is an ``OSError`` (ENOSPC) before anything is written."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, length)
        _pwrite_all(fd, header, 0)
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def seal_object_file(tmp: str, path: str) -> None:
    """Mark the object file ``tmp`` sealed and give it its final name ``path``."""
    fd = os.open(tmp, os.O_WRONLY)
    try:
        _pwrite_all(fd, struct.pack("<I", SEALED), 4)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_at(path: str, pieces: Iterable[tuple[int, Any]]) -> None:
    """Write each ``(offset, bytes-like)`` of ``pieces`` into the file at ``path``."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, data in pieces:
            _pwrite_all(fd, data, offset)
    finally:
        os.close(fd)


def read_at(path: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of the file at ``path``."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{path} is truncated: {len(data)} of {size} bytes at {offset}")
    return data


def disk_refusal(directory: str, need: int, threshold: float) -> str | None:
    """Why ``need`` more bytes may not go to the disk of ``directory`` (``None``: they
    may): the disk would be more than ``threshold`` (a fraction) full, or has not
    that much room at all."""
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        return f"the disk of {directory} cannot be used: {exc}"
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    if need <= free and total - free + need <= threshold * total:
        return None
    return (
        f"the disk of {directory} has {free} bytes free of {total}; {need} more would "
        f"fill it past its limit of {threshold:.0%}"
    )


def _pwrite_all(fd: int, data: Any, offset: int) -> None:
    with memoryview(data) as raw, raw.cast("B") as view:
        done = 0
        while done < view.nbytes:
            done += os.pwrite(fd, view[done:], offset + done)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def restore_spill(path: str, dest: memoryview) -> None:
    """Read the spill file at ``path`` into ``dest`` (exactly its size)."""
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < dest.nbytes:
            n = f.readinto(dest[done:])
            if not n:
                raise OSError(f"spill file {path} is truncated at {done} of {dest.nbytes} bytes")
            done += n


def read_spill_header(path: str) -> BlockInfo:
    """The block header stored at the start of a spill file (``offset`` is 0)."""
    with open(path, "rb") as f:
        fixed = f.read(BLOCK_FIXED)
        magic, state, size, id_len, nbuf, meta_len, data_len, hdr = BLOCK_HEADER.unpack_from(fixed)
        if magic != BLOCK_MAGIC or state == FREE:
            raise OSError(f"{path} is not a spill file")
        rest = f.read(id_len + 8 * nbuf)
    import struct

    sizes = struct.unpack_from(f"<{nbuf}Q", rest, id_len) if nbuf else ()
    return BlockInfo(0, size, state, rest[:id_len], meta_len, data_len, tuple(sizes), hdr)


def scan_spills(spill_dir: str, prefix: str) -> list[tuple[str, BlockInfo]]:
    """Complete spill files of this session (temporary leftovers are removed)."""
    found: list[tuple[str, BlockInfo]] = []
    try:
        names = os.listdir(spill_dir)
    except FileNotFoundError:
        return found
    for name in names:
        if not name.startswith(prefix + "-"):
            continue
        path = os.path.join(spill_dir, name)
        if name.endswith(SUFFIX + ".tmp"):
            os.unlink(path)
        elif name.endswith(SUFFIX):
            try:
                found.append((path, read_spill_header(path)))
            except (OSError, ValueError, UnicodeError):
                os.unlink(path)
    return found
