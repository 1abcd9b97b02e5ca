"""Spill files: an evicted object's block (header and payload) as one file on disk.

A spill file is written to a temporary name and renamed, so a file with the final
name is always complete; a restarted service finds the spilled objects by listing
the directory. No fsync: the store survives its own crashes, not the machine's.
"""

from __future__ import annotations

import os

from ._arena import BLOCK_FIXED, BLOCK_HEADER, BLOCK_MAGIC, FREE, BlockInfo

__all__ = ["read_spill_header", "restore_spill", "spill_path", "write_spill", "scan_spills"]

SUFFIX = ".spill"


def spill_path(spill_dir: str, prefix: str, object_id: bytes) -> str:
    return os.path.join(spill_dir, f"{prefix}-{object_id.hex()}{SUFFIX}")


def write_spill(path: str, block: memoryview) -> int:
    """Write ``block`` to ``path`` atomically; returns the bytes written."""
    tmp = path + ".tmp"
    with open(tmp, "wb", buffering=0) as f:
        written = 0
        while written < block.nbytes:
            written += f.write(block[written:])
    os.replace(tmp, path)
    return written


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
