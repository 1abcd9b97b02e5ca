"""A connection's reusable receive buffer: reserved address space, not resident memory.

Why. The reader of every connection receives into one reused buffer of
`RECV_CHUNK` (256 KiB) so that a burst of small frames is read and decoded in one
``recv`` (``_connection``'s docstring), and a thread that borrows the read side
(``_read_loan``) has one of its own. As ``bytearray(RECV_CHUNK)`` each of them was
256 KiB of resident memory from the first byte on, zero-filled at creation, whether
the link ever carried more than a 100-byte ping or not. A driver holds one link to
every actor it calls directly, and a caller's thread borrows each link's read side
(``core_worker._reply_reads``): 2 x 256 KiB per actor handle. A driver pinging 2,000
actors grew by 535 KB per actor (1 GB), and so did the node and every process with
many links.

How. The buffer is an anonymous private mapping (``mmap(-1, size)``). The kernel
gives it pages only when they are first written, so a link that only ever carries
small frames has the one or two pages at the start of its buffer resident (a
``recv_into`` writes only the bytes it received), and the rest is address space.
A burst that filled more of it leaves those pages resident until the owner says it
is idle: `RecvBuffer.release` (``madvise``) then hands back every
page beyond the first `KEEP` bytes and beyond the bytes still buffered. The reader
calls it only when it is about to wait for input and the high-water mark of its
reads since the last release passed `KEEP`, so a link of small frames never pays
the system call, and one carrying bursts pays one call per burst.

Which advice. ``MADV_DONTNEED`` unmaps the pages at once (the process's RSS drops),
and the next burst faults in zeroed pages again; ``MADV_FREE`` only marks them free:
the kernel takes them when it needs memory (they count as available memory at once,
``LazyFree`` in ``smaps``, though still in the RSS until taken), and a page written
again before that is simply kept, without a fault. Measured with both ends of a link in
one process, a burst of 100 one-way 1 KB frames cost 3.4-3.5 us of CPU per frame with
a bytearray, 4.0-4.5 with ``MADV_DONTNEED`` and 3.6-3.7 with ``MADV_FREE`` (medians of
9 interleaved rounds at load 2.5; a ping-pong showed no difference). So ``MADV_FREE``
where the kernel has it.

Nothing of the buffer is ever handed out beyond the handling of one frame (the
messages decoded from it are copies; a frame with out-of-band buffers or larger than
the buffer gets its own bytearray), so a released page is never one a message
still reads; what a released page reads afterwards (zeros, or its old bytes) does
not matter, as the reader reads only what a ``recv`` wrote since.
"""

from __future__ import annotations

import mmap

__all__ = ["ADVICE", "KEEP", "RecvBuffer"]

_PAGE = mmap.PAGESIZE

#: Bytes at the start of a buffer that stay resident across releases: a link's
#: ordinary frames land there, and they should not fault a page on every burst.
KEEP = 16 * 1024

#: How pages go back: ``MADV_FREE`` (Linux 4.5+) where the kernel has it, else
#: ``MADV_DONTNEED``; ``None`` (no madvise on this system): never, and the buffer is a
#: bytearray that was never zero-filled. See "Which advice" above.
ADVICE: int | None = getattr(mmap, "MADV_FREE", None) or getattr(mmap, "MADV_DONTNEED", None)


_NOHUGEPAGE = getattr(mmap, "MADV_NOHUGEPAGE", None)


class RecvBuffer:
    """A receive buffer of ``size`` bytes whose pages become resident only once
    written, and are handed back by `release` (see the module docstring).

    ``view`` is a writable memoryview of the whole buffer, for ``recv_into`` and
    ``struct.unpack_from``; `close` unmaps it once no view of it is left.
    """

    __slots__ = ("_map", "advice", "releases", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if _NOHUGEPAGE is not None:
            # Never a transparent huge page: where THP is "always", the kernel could
            # back the first byte written with 2 MiB (neighbouring buffers share one
            # mapping once merged), 256 KiB per buffer again.
            try:
                self._map.madvise(_NOHUGEPAGE)
            except OSError:
                pass
        self.view = memoryview(self._map)
        self.releases = 0  # madvise calls made (statistics, tests)
        self.advice = ADVICE

    def release(self, high: int, live: int = 0) -> None:
        """Hand back the pages written since the last release (up to the high-water
        mark ``high``), keeping the first `KEEP` bytes and the first ``live`` bytes
        (data still buffered, at the start of the buffer)."""
        advice = self.advice
        if advice is None:
            return
        start = max(KEEP, live)
        start = -(-start // _PAGE) * _PAGE
        stop = min(-(-high // _PAGE) * _PAGE, self.size)
        if stop <= start:
            return
        try:
            self._map.madvise(advice, start, stop - start)
        except ValueError:  # closed
            return
        except OSError:  # a kernel without MADV_FREE (EINVAL): fall back for good
            global ADVICE
            if advice == getattr(mmap, "MADV_DONTNEED", None):
                return
            ADVICE = self.advice = getattr(mmap, "MADV_DONTNEED", None)
            self.release(high, live)
            return
        self.releases += 1

    def close(self) -> None:
        """Unmap now if nothing still views the buffer (else when the last view goes)."""
        self.view.release()
        try:
            self._map.close()
        except BufferError:  # a slice is still alive somewhere: GC unmaps it later
            pass

    def __len__(self) -> int:
        return self.size
