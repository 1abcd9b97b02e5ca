"""A replica process's lifeline: its death is known before its sockets close."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import pytest
import trio
import trio.testing

import gcs
from actorcore.kernel import Supervisor
from gcs._lifeline import Lifeline

from .test_gcs_support import TOKEN, kernel_specs

pytestmark = pytest.mark.skipif(Lifeline.open() is None,
                                reason="no robust shared mutexes (Linux with glibc)")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gcs.__file__)))
_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from gcs import _lifeline
print("held" if _lifeline.hold(int(sys.argv[1])) else "not held", flush=True)
sys.stdin.read()
"""


async def _holder(lifeline: Lifeline) -> trio.Process:
    assert lifeline.fd is not None
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _HOLDER.format(root=_ROOT), str(lifeline.fd)],
        stdin=-1, stdout=-1, pass_fds=(lifeline.fd,))
    lifeline.spawned()
    assert process.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            line += await process.stdout.receive_some()
    assert line == b"held\n"
    return process


@pytest.mark.parametrize("end", ["sigkill", "exit"])
async def test_a_lifeline_tells_the_death_of_its_holder(end: str) -> None:
    lifeline = Lifeline.open()
    assert lifeline is not None
    process = await _holder(lifeline)
    assert process.stdin is not None
    if end == "sigkill":
        process.kill()
    else:
        await process.stdin.aclose()  # it returns from main and exits
    with trio.fail_after(10):
        await lifeline.wait_gone()
    await process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            await stream.aclose()


def _dup_sockets(pid: int) -> list[int]:
    """Copies of every socket of process ``pid`` into this one (``pidfd_getfd``): the
    connections then outlive the process, as if its exit were slow to close them."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    copies = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            copy = libc.syscall(438, pidfd, int(fd), 0)  # SYS_pidfd_getfd
            if copy < 0:
                for c in copies:
                    os.close(c)
                pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
            copies.append(copy)
    finally:
        os.close(pidfd)
    return copies


async def test_a_dead_head_is_cut_out_and_written_past_while_its_sockets_live(nursery) -> None:
    # The head is stopped with a write in flight to it, its sockets are copied into
    # this process, and it is killed: its links never close, and the heartbeat is
    # too slow to matter. Its lifeline tells the coordinator, which cuts it out;
    # the client abandons the write in flight to it and resends it to the new head.
    plan = gcs.plan(gcs.GcsConfig(shards=1, replicas=3, heartbeat_interval=30.0,
                                  heartbeat_timeout=30.0), TOKEN)
    root = Supervisor("node", [kernel_specs(plan.tree)])
    await nursery.start(root.run)
    await plan.wait_ready(30)
    coordinator = plan.coordinator
    assert coordinator is not None
    head = coordinator.chain(0).chain[0]
    service = next(root.find(f"gcs/shard_0/replica_{j}") for j in range(3)
                   if root.find(f"gcs/shard_0/replica_{j}").name == head)
    pid = service.pid
    async with gcs.open_client(plan.address, TOKEN, timeout=20) as c:
        await c.put("kv", "before", 1)
        os.kill(pid, signal.SIGSTOP)
        copies = _dup_sockets(pid)
        try:
            done = trio.Event()

            async def write() -> None:
                await c.put("kv", "during", 2)
                done.set()

            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()  # the write waits for the head
            assert not done.is_set()
            os.kill(pid, signal.SIGKILL)
            # The loop is held (this call blocks it) until the lifeline handed the
            # death over and the process is a zombie: the loop's next pass finds
            # the hand-over and the reaped pidfd at once, and runs their tasks in
            # either order. The reap must not outrun the lifeline then.
            assert service.lifeline is not None
            assert service.lifeline.handed_over.wait(10)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # noqa: ASYNC222 (blocks the loop on purpose)
            # Inside the client's timeout (20 s) and the heartbeat's (30 s): only the
            # lifeline and the resend can end it in time. (3 s was exceeded once in
            # a full suite on two busy cores.)
            with trio.fail_after(10):
                await plan.wait_removed(head)
                await done.wait()
            assert head not in coordinator.chain(0).chain
            assert service.death_told_by == "lifeline"
            assert await c.get("kv", "before") == 1 and await c.get("kv", "during") == 2
        finally:
            for copy in copies:
                os.close(copy)
