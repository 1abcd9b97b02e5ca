"""Helpers for the transport tests: spawning `transport_peer.py` processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

PEER = str(Path(__file__).resolve().parent / "transport_peer.py")
TOKEN = "test-cluster-token"


async def spawn_peer(*args: str, limit: float = 30) -> tuple[trio.Process, str]:
    """Start ``transport_peer.py ARGS``; return the process and its first output line."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, PEER, *args], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    data = b""
    with trio.fail_after(limit):
        while b"\n" not in data:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                break
            data += chunk
    return proc, data.decode().split("\n", 1)[0]


async def run_peer(*args: str, limit: float = 30) -> str:
    """Run ``transport_peer.py ARGS`` to completion; return its output."""
    with trio.fail_after(limit):
        result = await trio.run_process(
            [sys.executable, PEER, *args], capture_stdout=True, check=False
        )
    return result.stdout.decode().strip()


async def stop(proc: trio.Process) -> None:
    proc.kill()
    with trio.move_on_after(10):
        await proc.wait()
