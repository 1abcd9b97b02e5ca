"""What the store's service tests share: a service and client running in the test,
a service restarted on a crash, and nodes in child processes (each test's session
prefix is the ``prefix`` fixture of ``conftest``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import trio

import store
import store._arena
import store._client
import store._messages

TOKEN = b"store-test-token"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20


def no_leftovers(prefix: str) -> None:
    assert [f for f in os.listdir("/dev/shm") if f.startswith(prefix)] == []


@contextlib.asynccontextmanager
async def running_store(tmp_path, prefix, **kwargs):
    kwargs.setdefault("capacity", 64 * MB)
    service = store.ObjectStoreService(f"unix:{tmp_path}/store.sock", TOKEN, prefix=prefix, **kwargs)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(service.run)
        client = await store.StoreClient.connect(address, TOKEN, name="test")
        try:
            yield service, client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()
    no_leftovers(prefix)  # shutdown removes the session's segments


@contextlib.asynccontextmanager
async def restarted_on_crash(service):
    """``service`` run and restarted whenever it crashes, like the node's
    one_for_one supervisor; yields a channel that receives its address at its start
    and at each restart."""
    ready_send, ready_recv = trio.open_memory_channel[str](10)

    async def supervisor():
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    ready_send.send_nowait(await nursery.start(service.run))
            except Exception:
                continue

    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor)
        yield ready_recv
        nursery.cancel_scope.cancel()


async def wait_for(predicate, what: str, limit: float = 10.0) -> None:
    """Poll a condition another process or a one-way message changes (no event to
    await across processes); fails after ``limit`` seconds naming ``what``."""
    with trio.move_on_after(limit):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for: {what}")


def python_child(script: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )


async def read_line(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(proc.stdout.readline)


async def node_killed_after_puts(tmp_path, prefix: str, values: str) -> None:
    """A node in a child process: a store service and a client that puts ``values``
    (a Python expression: a list of ``(object_id, value)``, may use ``np``); then the
    child is SIGKILLed, leaving its arena behind."""
    proc = python_child(
        """
        import sys, trio, numpy as np, store
        async def main():
            s = store.ObjectStoreService(sys.argv[1], b"store-test-token", capacity=8 << 20, prefix=sys.argv[2])
            async with trio.open_nursery() as n:
                address = await n.start(s.run)
                c = await store.StoreClient.connect(address, b"store-test-token")
                for oid, value in eval(sys.argv[3]):
                    await c.put(oid, value)
                print("ready", flush=True)
                await trio.sleep_forever()
        trio.run(main)
        """,
        f"unix:{tmp_path}/node.sock", prefix, values,
    )
    try:
        assert (await read_line(proc)).strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
