"""store: the service and its clients, with real processes, sockets and /dev/shm."""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pyarrow as pa
import pytest
import trio

import store
import store._arena
import store._client
import store._messages

TOKEN = b"store-test-token"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20


def _no_leftovers(prefix: str) -> None:
    assert [f for f in os.listdir("/dev/shm") if f.startswith(prefix)] == []


@pytest.fixture
def prefix(request):
    name = f"actorcore-test-{os.getpid()}-{request.node.name[:40]}".replace("[", "_").replace("]", "_")
    yield name
    leftovers = store.cleanup_session(name)
    assert leftovers == [], f"segments left in /dev/shm: {leftovers}"


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
    _no_leftovers(prefix)  # shutdown removes the session's segments


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


async def _wait_for(predicate, what: str, limit: float = 10.0) -> None:
    """Poll a condition another process or a one-way message changes (no event to
    await across processes); fails after ``limit`` seconds naming ``what``."""
    with trio.move_on_after(limit):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for: {what}")


def _child(script: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )


async def _readline(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(proc.stdout.readline)


async def _node_killed_after_puts(tmp_path, prefix: str, values: str) -> None:
    """A node in a child process: a store service and a client that puts ``values``
    (a Python expression: a list of ``(object_id, value)``, may use ``np``); then the
    child is SIGKILLed, leaving its arena behind."""
    proc = _child(
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
        assert (await _readline(proc)).strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


async def test_put_get_numpy_arrow_and_small(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        array = np.arange(1_000_000, dtype=np.int64)
        table = pa.table({"a": np.arange(200_000), "s": [str(i) for i in range(200_000)]})
        await client.put(b"array", array)
        await client.put(b"table", table)
        await client.put(b"small", {"x": [1, 2, 3]})
        got = await client.get(b"array")
        np.testing.assert_array_equal(got, array)
        assert not got.flags.writeable
        lo = client._mapping.address
        hi = lo + client._mapping.size
        assert lo <= got.ctypes.data < hi  # a view of the arena, not a copy
        got_table = await client.get(b"table")
        assert got_table.equals(table)
        for column in got_table.columns:
            for chunk in column.chunks:
                assert all(lo <= b.address < hi for b in chunk.buffers() if b is not None)
        assert await client.get(b"small") == {"x": [1, 2, 3]}
        assert await client.contains(b"array") and not await client.contains(b"nope")
        stats = await client.store_statistics()
        assert stats.count == 3 and stats.capacity >= 64 * MB and stats.small == 1
        chunk = await client.read_chunk(b"array", 0, 100)
        info = await client.object_info(b"array")
        assert len(chunk) == 100 and info.payload_len >= array.nbytes
        with pytest.raises(ValueError, match="outside object"):
            await client.read_chunk(b"array", info.payload_len - 10, 100)
        with pytest.raises(store.ObjectExistsError):
            await client.put(b"array", array)


async def test_zero_copy_across_processes(tmp_path, prefix):
    """Two processes see the same bytes of the same mapping: a change made through
    the parent's mapping is visible in the child's read-only array."""
    async with running_store(tmp_path, prefix) as (service, client):
        await client.put(b"shared", np.arange(1 << 20, dtype=np.int64))
        mine = await client.get(b"shared")
        my_offset = mine.ctypes.data - client._mapping.address
        proc = _child(
            """
            import sys, trio, store
            async def main():
                c = await store.StoreClient.connect(sys.argv[1], b"store-test-token")
                a = await c.get(b"shared")
                address = a.ctypes.data
                mapped = any(
                    int(lo, 16) <= address < int(hi, 16)
                    for line in open("/proc/self/maps") if c.arena_path in line
                    for lo, hi in [line.split()[0].split("-")]
                )
                print(address - c._mapping.address, a.flags.writeable, mapped, int(a[0]), flush=True)
                await trio.to_thread.run_sync(sys.stdin.readline)
                print(int(a[0]), flush=True)
                await c.aclose()
            trio.run(main)
            """,
            service.address,
        )
        try:
            offset, writeable, mapped, first = (await _readline(proc)).split()
            assert int(offset) == my_offset
            assert writeable == "False" and mapped == "True" and first == "0"
            # Write through the parent's (writable) mapping of the same pages.
            client._mapping.mmap[my_offset : my_offset + 8] = np.int64(4242).tobytes()
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert (await _readline(proc)).strip() == "4242"
            assert mine[0] == 4242
        finally:
            proc.kill()
            proc.wait()


async def test_ref_counting_frees_memory(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        baseline = service.statistics().used
        for i in range(5):
            await client.put(b"obj%d" % i, np.ones(MB, dtype=np.uint8) * i)
        await client.add_ref(b"obj0")  # a second ref (e.g. nested in another object)
        views = [await client.get(b"obj%d" % i) for i in range(5)]
        assert service.statistics().used >= baseline + 5 * MB
        for i in range(5):
            await client.remove_ref(b"obj%d" % i)
        # Live views keep the memory (and the objects) even without refs.
        await client.contains(b"obj0")  # a round trip: the one-way remove_refs are in
        assert service.statistics().count == 5
        del views
        gc.collect()
        # obj0 still has a ref: the client keeps its view cached (get without a round
        # trip); the others are released.
        await _wait_for(lambda: service.statistics().views == 1, "views released")
        assert service.statistics().count == 1
        assert client.statistics().cached_leases == 1
        await client.remove_ref(b"obj0")
        await _wait_for(lambda: service.statistics().count == 0, "obj0 freed")
        assert service.statistics().used == baseline
        # A second client's refs die with its connection.
        other = await store.StoreClient.connect(service.address, TOKEN, name="other")
        await other.put(b"theirs", np.zeros(MB, dtype=np.uint8))
        assert service.statistics().used > baseline
        await other.aclose()
        await _wait_for(lambda: service.statistics().used == baseline, "dead client's refs dropped")


async def test_spill_and_restore_under_small_capacity(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=8 * MB, spill_dir=str(spill)) as (service, client):
        arrays = [np.full(3 * MB // 8, i, dtype=np.int64) for i in range(6)]
        for i, array in enumerate(arrays):
            await client.put(b"s%d" % i, array)
        stats = service.statistics()
        assert stats.spills >= 4 and stats.spilled >= 4
        assert stats.used <= 8 * MB
        assert len(os.listdir(spill)) == stats.spilled
        for i, array in enumerate(arrays):  # restored transparently
            got = await client.get(b"s%d" % i)
            np.testing.assert_array_equal(got, array)
            del got
            gc.collect()
        assert service.statistics().restores >= 4
        for i in range(6):
            await client.remove_ref(b"s%d" % i)
        await _wait_for(lambda: service.statistics().count == 0, "all freed")
        assert os.listdir(spill) == []


async def test_refs_count_only_objects_the_store_has(tmp_path, prefix):
    """A ref taken on a missing id keeps nothing: not counted, so the object later
    put under that id (a lost value rebuilt) goes when its writer lets it go; and a
    spilled object whose file vanished takes its refs with it when found lost."""
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=8 * MB, spill_dir=str(spill)) as (
            service, client):
        other = await store.StoreClient.connect(service.address, TOKEN, name="other")
        try:
            await other.add_ref(b"ghost")  # nothing by that id yet
            await other.contains(b"ghost")  # a round trip: the one-way add_ref is in
            await client.put(b"ghost", np.ones(MB, dtype=np.uint8))
            await client.remove_ref(b"ghost")
            await _wait_for(lambda: service.statistics().count == 0,
                            "the object freed with its writer's ref")

            arrays = [np.full(3 * MB // 8, i, dtype=np.int64) for i in range(4)]
            for i, array in enumerate(arrays):
                await client.put(b"s%d" % i, array)
                await other.add_ref(b"s%d" % i)
            spilled = [name for name in os.listdir(spill) if name.endswith(".spill")]
            assert spilled
            lost = next(b"s%d" % i for i in range(4) if (b"s%d" % i).hex() in spilled[0])
            os.unlink(spill / spilled[0])
            kept = [b"s%d" % i for i in range(4) if b"s%d" % i != lost]
            # Asking finds it lost as reading does (the file is checked).
            assert await client.missing([*kept, lost, b"never"]) == [lost, b"never"]
            with pytest.raises(store.ObjectNotFoundError):
                await client.get(lost, timeout=0)  # gone: a get without a wait says so
            assert not await client.contains(lost)
            # Rebuilt under the same id: only its new writer's ref holds it.
            await client.remove_ref(lost)
            await other.remove_ref(lost)
            await client.put(lost, np.zeros(MB, dtype=np.uint8))
            await client.remove_ref(lost)
            await _wait_for(lambda: service.statistics().count == 3,
                            "the rebuilt object freed with its writer's ref")
            for i in range(4):
                await client.remove_ref(b"s%d" % i)
                await other.remove_ref(b"s%d" % i)
            await _wait_for(lambda: service.statistics().count == 0, "all freed")
        finally:
            await other.aclose()


async def test_store_full_error_names_capacity_and_holders(tmp_path, prefix):
    async with running_store(tmp_path, prefix, capacity=4 * MB) as (service, client):
        await client.put(b"a", np.zeros(MB, dtype=np.uint8))
        await client.put(b"b", np.zeros(2 * MB, dtype=np.uint8))
        await client.pin(b"b")
        view = await client.get(b"a")
        with pytest.raises(store.ObjectStoreFullError) as info:
            await client.put(b"c", np.zeros(2 * MB, dtype=np.uint8))
        error = info.value
        assert error.capacity == 4 * MB
        assert "capacity 4194304 bytes" in str(error)
        assert "pinned" in str(error) and "spilling disabled" not in str(error).split("held by")[0]
        assert error.holders[0][0] == b"b"
        # The store keeps working, and the failed put left nothing behind.
        assert not await client.contains(b"c")
        assert service.statistics().unsealed == 0
        del view
        await client.unpin(b"b")
        await client.remove_ref(b"b")
        await client.put(b"c", np.zeros(2 * MB, dtype=np.uint8))
        with pytest.raises(store.ObjectNotFoundError):
            await client.pin(b"missing")


async def test_get_timeout_and_waiting_get(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        with pytest.raises(store.GetTimeoutError, match="within 0.2 s"):
            await client.get(b"later", timeout=0.2)
        with pytest.raises(store.ObjectNotFoundError):
            await client.get(b"later", timeout=0)
        async with trio.open_nursery() as nursery:
            result = []

            async def getter():
                result.append(await client.get(b"later", timeout=10))

            nursery.start_soon(getter)
            await trio.sleep(0.05)
            await client.put(b"later", np.arange(100_000))
        np.testing.assert_array_equal(result[0], np.arange(100_000))


async def test_unpicklable_value(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        with pytest.raises(store.SerializationError, match="lock"):
            await client.put(b"bad", {"lock": threading.Lock()})
        assert not await client.contains(b"bad")
        await client.put(b"good", 1)
        assert await client.get(b"good") == 1


async def test_blocking_client_from_a_plain_thread(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        blocking = store.BlockingStoreClient(client)
        token = trio.lowlevel.current_trio_token()
        result = {}

        def user_code():  # a thread not started by Trio (like a Pykka actor)
            blocking.put(b"big", np.arange(1_000_000))
            blocking.put(b"small", "hello")
            result["big"] = int(blocking.get(b"big").sum())
            result["small"] = blocking.get(b"small")
            result["contains"] = blocking.contains(b"big")

        thread = threading.Thread(target=user_code)
        thread.start()
        await trio.to_thread.run_sync(thread.join)
        assert result == {"big": sum(range(1_000_000)), "small": "hello", "contains": True}
        assert token is blocking._token


async def test_a_blocking_put_is_visible_before_its_seal_is_read(tmp_path, prefix):
    # A blocking put sends its seal without waiting for the answer and returns. The
    # seal is held back here (an injected delay on the writer's link); meanwhile
    # another client's lookups of the object wait for it and answer as if it had
    # come first: contains, get, pin, info, missing.
    from transport import faults

    async with running_store(tmp_path, prefix) as (service, client):
        writer = await store.StoreClient.connect(service.address, TOKEN, name="writer")
        blocking = store.BlockingStoreClient(writer)
        value = np.arange(1_000_000)
        try:
            # (The delay holds back the put's create as well: the put takes 1.5 s.)
            with faults.injected(faults.delay(1.5, src="writer", kind="request")):
                await trio.to_thread.run_sync(blocking.put, b"big", value)
                assert service.statistics().unsealed == 1  # its seal is held back
                assert writer.refs[b"big"] == 1
                assert await client.contains(b"big")  # (it waited for the seal)
                assert service.statistics().unsealed == 0
                assert await client.missing([b"big", b"other"]) == [b"other"]
                await client.pin(b"big")
                assert (await client.object_info(b"big")).state == "sealed"
                assert int((await client.get(b"big", timeout=0)).sum()) == int(value.sum())
                await client.unpin(b"big")
            # The writer's answer came: its own reads need no round trip.
            await _wait_for(lambda: writer.holds(b"big"), "the writer's view of its object")
            assert int(blocking.get(b"big").sum()) == int(value.sum())
        finally:
            await writer.aclose()


async def test_lookups_waiting_for_a_seal_end_when_the_writer_goes(tmp_path, prefix):
    # An object created with ``seal_follows`` whose writer goes before sealing it:
    # the lookups that waited for its seal answer that it is not here.
    async with running_store(tmp_path, prefix) as (service, client):
        writer = await store.StoreClient.connect(service.address, TOKEN, name="writer")
        await writer._call(store._messages.Create(b"never", 0, 100, (1 << 20,), True,
                                                  seal_follows=True), 10)
        found: dict[str, object] = {}

        async def look() -> None:
            found["contains"] = await client.contains(b"never")
            try:
                await client.get(b"never", timeout=0)
            except store.ObjectNotFoundError as exc:
                found["get"] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(look)
            await _wait_for(lambda: service.statistics().waiting_gets >= 1, "a waiting lookup")
            assert found == {}
            await writer.aclose()
        assert found["contains"] is False
        assert isinstance(found["get"], store.ObjectNotFoundError)
        assert service.statistics().unsealed == 0


async def test_crash_and_restart_keeps_sealed_objects(tmp_path, prefix):
    spill = tmp_path / "spill"
    service = store.ObjectStoreService(
        f"unix:{tmp_path}/store.sock", TOKEN, prefix=prefix, capacity=8 * MB,
        spill_dir=str(spill), recovery_grace=0.5,
    )
    async with restarted_on_crash(service) as ready_recv:
        address = await ready_recv.receive()
        client = await store.StoreClient.connect(address, TOKEN)
        arrays = {b"x%d" % i: np.full(MB, i, dtype=np.int32) for i in range(4)}
        for oid, array in arrays.items():  # 16 MB into 8 MB: some are spilled
            await client.put(oid, array)
        await client.put(b"small", "tiny")
        assert service.statistics().spilled >= 1
        service.crash()
        await ready_recv.receive()
        assert service.runs == 2
        with pytest.raises(store.StoreClosedError):
            await client.contains(b"small")
        await client.reconnect()  # reattaches its refs and views
        for oid, array in arrays.items():
            np.testing.assert_array_equal(await client.get(oid), array)
        assert await client.get(b"small") == "tiny"
        # A client that did not reconnect loses nothing either: objects found at the
        # restart are kept for the grace period.
        fresh = await store.StoreClient.connect(service.address, TOKEN)
        await fresh.put(b"new", np.zeros(MB, dtype=np.uint8), take_ref=False)
        assert not await fresh.contains(b"new")  # nobody refs it: freed at once
        await fresh.aclose()
        with trio.fail_after(10):
            await service.recovery_finished.wait()  # the grace period (0.5 s) is over
        assert service.statistics().count == 5  # all claimed, none dropped
        for oid in arrays:
            await client.remove_ref(oid)
        await client.remove_ref(b"small")
        await _wait_for(lambda: service.statistics().count == 0, "all freed")
        await client.aclose()
    _no_leftovers(prefix)
    assert os.listdir(spill) == []


async def test_a_seal_the_crashed_service_never_read_is_claimed_on_reconnect(tmp_path, prefix):
    # A blocking put returned; its seal, held back on the link, dies with the
    # service. The restarted service finds the object's block unsealed; the
    # writer's reconnect claims it as sealed, and the value is there, whole.
    from transport import faults

    service = store.ObjectStoreService(
        f"unix:{tmp_path}/store.sock", TOKEN, prefix=prefix, capacity=32 * MB,
        recovery_grace=0.5)
    async with restarted_on_crash(service) as ready_recv:
        address = await ready_recv.receive()
        writer = await store.StoreClient.connect(address, TOKEN, name="writer")
        blocking = store.BlockingStoreClient(writer)
        value = np.arange(1_000_000)
        # (The delay holds back the put's create as well: the put takes 2 s.)
        with faults.injected(faults.delay(2, src="writer", kind="request")):
            await trio.to_thread.run_sync(blocking.put, b"big", value)
            assert service.statistics().unsealed == 1
            service.crash()
            await ready_recv.receive()
        await writer.reconnect()
        with trio.fail_after(10):
            await service.recovery_finished.wait()  # unclaimed blocks are gone now
        np.testing.assert_array_equal(await writer.get(b"big"), value)
        assert service.statistics().count == 1
        await writer.remove_ref(b"big")
        await _wait_for(lambda: service.statistics().count == 0, "freed with its last ref")
        await writer.aclose()
    _no_leftovers(prefix)


async def test_writer_killed_mid_put_leaves_nothing(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        baseline = service.statistics().used
        proc = _child(
            """
            import sys, trio, numpy as np, store
            async def main():
                c = await store.StoreClient.connect(sys.argv[1], b"store-test-token")
                value = store.serialize(np.ones(4 << 20, dtype=np.uint8))
                mapping, payload = await c._create(b"half", value, True, 10)
                mapping.write(payload, memoryview(value.buffers[0])[: 1 << 20])
                print("writing", flush=True)
                await trio.sleep_forever()
            trio.run(main)
            """,
            service.address,
        )
        try:
            assert (await _readline(proc)).strip() == "writing"
            assert service.statistics().unsealed == 1
            assert not await client.contains(b"half")
            with pytest.raises(store.GetTimeoutError):
                await client.get(b"half", timeout=0.1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        await _wait_for(lambda: service.statistics().unsealed == 0, "unsealed reclaimed")
        assert service.statistics().used == baseline
        assert not await client.contains(b"half")


async def test_cleanup_session_after_a_killed_node(tmp_path, prefix):
    await _node_killed_after_puts(tmp_path, prefix, '[(b"x", np.ones(1 << 17))]')
    assert store.session_files(prefix) == [store.arena_path(prefix)]
    assert store.cleanup_stale_sessions(name_prefix=prefix) == [store.arena_path(prefix)]
    assert store.cleanup_session(prefix) == []
    _no_leftovers(prefix)


async def test_bad_capacity_and_prefix():
    with pytest.raises(ValueError, match="capacity"):
        store.ObjectStoreService("unix:/tmp/x.sock", TOKEN, capacity=0)
    with pytest.raises(ValueError, match="prefix"):
        store.arena_path("../etc")


async def test_node_killed_then_new_service_recovers_the_arena(tmp_path, prefix):
    await _node_killed_after_puts(
        tmp_path, prefix, '[(b"x", np.arange(1 << 17)), (b"y", "small")]'
    )
    async with running_store(tmp_path, prefix, capacity=8 * MB) as (service, client):
        np.testing.assert_array_equal(await client.get(b"x"), np.arange(1 << 17))
        assert await client.get(b"y") == "small"
        assert service.statistics().count == 2


async def test_delete_pin_and_chunks_of_spilled_objects(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill)) as (service, client):
        first = np.full(MB // 8, 7, dtype=np.int64)
        await client.put(b"first", first)
        await client.pin(b"first")
        await client.put(b"second", np.ones(MB // 8, dtype=np.int64))
        await client.put(b"third", np.ones(5 * MB // 2, dtype=np.uint8))  # must spill: not "first"
        info = await client.object_info(b"second")
        assert info.state == "spilled"
        assert (await client.object_info(b"first")).state == "sealed"  # pinned stays
        chunk = await client.read_chunk(b"second", 0, 64)
        assert len(chunk) == 64
        await client.unpin(b"first")
        # delete: gone from the index at once; memory under a live view stays valid.
        view = await client.get(b"first")
        assert await client.delete(b"first") is True
        assert not await client.contains(b"first")
        assert await client.delete(b"first") is False
        np.testing.assert_array_equal(view, first)
        await client.put(b"first", "the id is free again")
        assert await client.get(b"first") == "the id is free again"


async def test_chunked_transfer_between_two_stores(tmp_path, prefix):
    """What a node-to-node pull does: layout + chunks from one store into another."""
    (tmp_path / "b").mkdir()
    async with running_store(tmp_path, prefix) as (_, source), running_store(
        tmp_path / "b", prefix + "-b"
    ) as (target_service, target):
        table = pa.table({"a": np.arange(300_000), "s": [str(i) for i in range(300_000)]})
        await source.put(b"t", table, metadata=b"meta")
        info = await source.object_info(b"t")
        chunk = 1 << 20
        writer = await target.create(
            b"t", meta_len=info.meta_len, data_len=info.data_len,
            buffer_sizes=info.buffer_sizes,
        )
        assert not await target.contains(b"t")  # nothing visible before the seal
        async with writer:
            for offset in range(0, info.payload_len, chunk):
                size = min(chunk, info.payload_len - offset)
                writer.write(offset, await source.read_chunk(b"t", offset, size))
            with pytest.raises(ValueError, match="does not fit"):
                writer.write(info.payload_len, b"x")
        assert (await target.get(b"t")).equals(table)
        assert (await target.get_serialized(b"t")).metadata == b"meta"
        # An aborted transfer leaves nothing behind.
        used = target_service.statistics().used
        with pytest.raises(RuntimeError):
            async with await target.create(b"u", meta_len=0, data_len=10, buffer_sizes=[1 << 20]):
                raise RuntimeError("link dropped")
        await _wait_for(lambda: target_service.statistics().used == used, "aborted block freed")
        assert not await target.contains(b"u")


# -- objects larger than shared memory: the disk fallback -------------------------------


def _mapped_files() -> set[str]:
    """Paths of the files this process maps (from /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def _on_disk(spill) -> list[str]:
    return sorted(os.listdir(spill)) if os.path.isdir(spill) else []


async def test_object_larger_than_the_store_is_created_on_disk_and_read_zero_copy(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill)) as (service, client):
        big = np.arange(6 * MB // 8, dtype=np.int64)  # 6 MB into 4 MB
        await client.put(b"big", big)
        stats = service.statistics()
        assert stats.disk_allocations == 1 and stats.spilled == 1 and stats.unsealed == 0
        assert stats.used == 0  # nothing of it in shared memory
        [name] = _on_disk(spill)
        assert name.endswith(".spill")
        path = str(spill / name)
        # Another process reads it zero-copy: a read-only view of the mapped file.
        proc = _child(
            """
            import sys, store, trio
            async def main():
                c = await store.StoreClient.connect(sys.argv[1], b"store-test-token")
                a = await c.get(b"big")
                address = a.ctypes.data
                mapped = any(
                    int(lo, 16) <= address < int(hi, 16)
                    for line in open("/proc/self/maps") if sys.argv[2] in line
                    for lo, hi in [line.split()[0].split("-")]
                )
                print(a.flags.writeable, mapped, int(a.sum()), flush=True)
                await c.aclose()
            trio.run(main)
            """,
            service.address, path,
        )
        try:
            writeable, mapped, total = (await _readline(proc)).split()
        finally:
            proc.wait()
        assert (writeable, mapped, int(total)) == ("False", "True", int(big.sum()))
        got = await client.get(b"big")
        np.testing.assert_array_equal(got, big)
        assert not got.flags.writeable and path in _mapped_files()
        # Small objects still go to shared memory while it lives on disk.
        await client.put(b"small", np.ones(MB, dtype=np.uint8))
        assert service.statistics().used > 0
        # Freed with its last ref once its views are gone: the file goes too.
        await client.remove_ref(b"big")
        assert _on_disk(spill) == [name]  # ``got`` still maps it
        del got
        gc.collect()
        await _wait_for(lambda: _on_disk(spill) == [], "the file of the freed object removed")
        assert not await client.contains(b"big")


async def test_get_of_more_than_the_store_maps_spilled_objects(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=8 * MB, spill_dir=str(spill)) as (service, client):
        arrays = [np.full(3 * MB // 8, i, dtype=np.int64) for i in range(5)]  # 15 MB
        for i, array in enumerate(arrays):
            await client.put(b"o%d" % i, array)
        assert service.statistics().spilled >= 2
        held = [await client.get(b"o%d" % i) for i in range(5)]  # all alive at once
        for got, array in zip(held, arrays, strict=True):
            np.testing.assert_array_equal(got, array)
        stats = service.statistics()
        assert stats.file_reads >= 1 and stats.file_views >= 1
        assert stats.disk_allocations == 0
        del held, got
        gc.collect()
        for i in range(5):
            await client.remove_ref(b"o%d" % i)
        await _wait_for(lambda: service.statistics().count == 0, "all freed")
        assert _on_disk(spill) == []
        assert service.statistics().file_views == 0


async def test_full_store_of_pinned_and_viewed_objects_falls_back_to_disk(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill)) as (service, client):
        await client.put(b"pinned", np.zeros(2 * MB, dtype=np.uint8))
        await client.pin(b"pinned")
        await client.put(b"viewed", np.ones(MB + MB // 2, dtype=np.uint8))
        view = await client.get(b"viewed")
        await client.put(b"third", np.full(2 * MB, 3, dtype=np.uint8))  # no room, none spillable
        assert service.statistics().disk_allocations == 1
        assert (await client.object_info(b"third")).state == "spilled"
        assert (await client.object_info(b"pinned")).state == "sealed"
        assert int((await client.get(b"third"))[0]) == 3
        # Small values (sent inside the request) that no longer fit go to disk too.
        smalls = {b"small%d" % i: bytes([i]) * 60_000 for i in range(20)}  # 1.2 MB
        for oid, value in smalls.items():
            await client.put(oid, value)
            await client.pin(oid)  # so that the next one cannot spill it
        assert service.statistics().disk_allocations > 1
        async with await store.StoreClient.connect(service.address, TOKEN) as other:
            for oid, value in smalls.items():  # read back by the service, from disk
                assert await other.get(oid) == value
        del view
        await client.unpin(b"pinned")


async def test_full_disk_or_no_fallback_gives_a_clear_error_and_leaves_nothing(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(
        tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill), disk_threshold=0.0
    ) as (service, client):
        with pytest.raises(store.ObjectStoreFullError) as info:
            await client.put(b"big", np.zeros(6 * MB, dtype=np.uint8))
        text = str(info.value)
        assert "capacity 4194304 bytes" in text and "past its limit of 0%" in text, text
        assert info.value.requested > 6 * MB and info.value.capacity == 4 * MB
        # Spilling to make room is refused the same way, with the reason.
        await client.put(b"a", np.zeros(3 * MB, dtype=np.uint8))
        with pytest.raises(store.ObjectStoreFullError, match="nothing can be spilled"):
            await client.put(b"b", np.zeros(3 * MB, dtype=np.uint8))
        assert _on_disk(spill) == [] and service.statistics().unsealed == 0
        await client.remove_ref(b"a")
        await client.put(b"b", np.zeros(3 * MB, dtype=np.uint8))  # the store serves on
    async with running_store(
        tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill), disk_fallback=False
    ) as (service, client):
        with pytest.raises(store.ObjectStoreFullError, match="the disk fallback is disabled"):
            await client.put(b"big", np.zeros(6 * MB, dtype=np.uint8))
        assert _on_disk(spill) == []


async def test_writer_killed_while_writing_on_disk_leaves_no_file(tmp_path, prefix):
    spill = tmp_path / "spill"
    async with running_store(tmp_path, prefix, capacity=4 * MB, spill_dir=str(spill)) as (service, client):
        proc = _child(
            """
            import sys, trio, numpy as np, store
            async def main():
                c = await store.StoreClient.connect(sys.argv[1], b"store-test-token")
                value = store.serialize(np.ones(6 << 20, dtype=np.uint8))
                mapping, payload = await c._create(b"half", value, True, 10)
                mapping.write(payload, memoryview(value.buffers[0])[: 1 << 20])
                print("writing", mapping.path, flush=True)
                await trio.sleep_forever()
            trio.run(main)
            """,
            service.address,
        )
        try:
            word, path = (await _readline(proc)).split()
            assert word == "writing" and path.endswith(".spill.tmp")
            assert _on_disk(spill) == [path.rsplit("/", 1)[1]]
            assert not await client.contains(b"half")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        await _wait_for(lambda: service.statistics().unsealed == 0, "unsealed reclaimed")
        assert _on_disk(spill) == []


async def test_stale_session_cleanup_removes_its_files_on_disk(tmp_path, prefix):
    spill = tmp_path / "spill"
    proc = _child(
        """
        import sys, trio, numpy as np, store
        async def main():
            s = store.ObjectStoreService(sys.argv[1], b"store-test-token", capacity=4 << 20,
                                         prefix=sys.argv[2], spill_dir=sys.argv[3])
            async with trio.open_nursery() as n:
                address = await n.start(s.run)
                c = await store.StoreClient.connect(address, b"store-test-token")
                await c.put(b"big", np.ones(6 << 20, dtype=np.uint8))
                print("ready", flush=True)
                await trio.sleep_forever()
        trio.run(main)
        """,
        f"unix:{tmp_path}/node.sock", prefix, str(spill),
    )
    try:
        assert (await _readline(proc)).strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [name] = _on_disk(spill)
    removed = store.cleanup_stale_sessions(name_prefix=prefix)
    assert sorted(removed) == sorted([store.arena_path(prefix), str(spill / name)])
    assert _on_disk(spill) == []


def _faulted_in(path: str) -> int:
    """Bytes of a /dev/shm file that have pages (tmpfs allocates them on first use)."""
    return os.stat(path).st_blocks * 512


def _rss_shmem() -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("RssShmem:"))


async def test_arena_is_kept_warm_ahead_of_use(tmp_path, prefix):
    header = 4096
    rss = _rss_shmem()
    async with running_store(tmp_path, prefix, capacity=64 * MB, warm=16 * MB) as (service, client):
        with trio.fail_after(30):
            await service.wait_warm()
        # Faulted in at start, without a put: the header and 16 MiB above it; not
        # left mapped in the service's process (it would count in its RSS).
        assert service.statistics().prefaulted == header + 16 * MB
        assert _faulted_in(service.arena_path) == header + 16 * MB
        assert _rss_shmem() - rss < 4 * MB
        # A put raises the high water mark: the margin moves up with it.
        await client.put(b"a", np.full(24 * MB, 7, dtype=np.uint8))
        with trio.fail_after(30):
            await service.wait_warm()
        stats = service.statistics()
        assert stats.used > 24 * MB
        assert stats.prefaulted >= header + stats.used + 12 * MB
        # (give or take the page the free remainder's header was written to)
        assert 0 <= _faulted_in(service.arena_path) - stats.prefaulted <= 4096
        assert int(np.asarray(await client.get(b"a")).sum()) == 7 * 24 * MB


async def test_warm_never_goes_past_the_capacity_and_can_be_turned_off(tmp_path, prefix):
    async with running_store(tmp_path, prefix, capacity=8 * MB) as (service, _client):
        with trio.fail_after(30):
            await service.wait_warm()  # the default margin (256 MiB) is more than the arena
        assert service.statistics().prefaulted == 4096 + 8 * MB
        assert _faulted_in(service.arena_path) == 4096 + 8 * MB
    async with running_store(tmp_path, prefix, capacity=8 * MB, warm=0) as (service, client):
        await client.put(b"a", np.ones(MB, dtype=np.uint8))
        assert service.statistics().prefaulted == 0
        assert _faulted_in(service.arena_path) < 2 * MB
    with pytest.raises(ValueError, match="warm"):
        store.ObjectStoreService("unix:/tmp/x.sock", TOKEN, capacity=MB, warm=-1)


async def test_puts_racing_the_warmer_keep_their_bytes(tmp_path, prefix):
    # The whole arena is faulted in from the start while puts land on pages the
    # warmer has not reached yet: it must never change a byte already written.
    async with running_store(tmp_path, prefix, capacity=160 * MB, prefault=True) as (service, client):
        for i in range(16):
            await client.put(b"v%d" % i, np.full(8 * MB, i + 1, dtype=np.uint8))
        with trio.fail_after(60):
            await service.wait_warm()
        assert service.statistics().prefaulted == 4096 + 160 * MB
        for i in range(16):
            value = np.asarray(await client.get(b"v%d" % i))
            assert value.min() == value.max() == i + 1


async def test_a_hostile_peer_gets_typed_refusals_and_the_store_serves_on(tmp_path, prefix):
    """Garbage, unknown message types and known types with wrong fields, sent to a
    store service in another process: each request fails with `store.BadRequest`
    naming what was wrong, one-way junk is dropped, and the store keeps serving."""
    import attrs

    import transport
    from store import _messages as m

    proc = _child(
        """
        import sys, trio, store
        async def main():
            s = store.ObjectStoreService(sys.argv[1], b"store-test-token", capacity=8 << 20,
                                         prefix=sys.argv[2])
            async with trio.open_nursery() as n:
                print(await n.start(s.run), flush=True)
                await trio.to_thread.run_sync(sys.stdin.read)
                n.cancel_scope.cancel()
        trio.run(main)
        """,
        f"unix:{tmp_path}/hostile.sock", prefix,
    )
    try:
        address = (await _readline(proc)).strip()
        async with transport.open_connection(address, TOKEN, name="hostile") as conn:
            with attrs.validators.disabled():  # what a buggy or older peer would build
                wrong = [m.Get("not-bytes", None), m.Create(b"x", -1, 0, (), True),
                         m.PutInline(b"x", b"", 42, [], True), m.Seal(b"x", "yes")]
            for junk, says in [
                (42, "does not handle messages of type int"),
                (("get", b"x", None), "does not handle messages of type tuple"),
                (m.DropCache(), "does not handle messages of type DropCache"),
                (wrong[0], "malformed Get: 'object_id' must be <class 'bytes'>"),
                (wrong[1], "malformed Create: 'meta_len' must be >= 0: -1"),
                (wrong[2], "malformed PutInline: 'data' must be"),
                (wrong[3], "malformed Seal: 'with_view' must be <class 'bool'>"),
                (m.WithReleases([], ("get", b"x")), "does not handle messages of type tuple"),
            ]:
                with pytest.raises(transport.RemoteError) as info:
                    await conn.request(junk, timeout=5)
                assert isinstance(info.value.remote_exception, store.BadRequest), info.value
                assert says in str(info.value.remote_exception)
            await conn.send(("add_ref", b"x", 1))  # one-way junk: logged, dropped
            await conn.send(m.Get(b"x"))  # a request sent one-way: nobody could get the answer
        async with await store.StoreClient.connect(address, TOKEN) as client:
            with pytest.raises(store.BadRequest):  # through the client's own error path
                await client._call(wrong[0], 5)
            await client.put(b"after", np.arange(100_000))
            assert int((await client.get(b"after")).sum()) == sum(range(100_000))
            with pytest.raises(store.GetTimeoutError):
                await client.get(b"missing", timeout=0.1)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def _thread_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def test_a_mapping_maps_its_pages_in_once(prefix):
    # A write into pages this process has not mapped maps them in first (bulk read
    # faults); a later write into the same pages takes no fault at all, and skips
    # the walk too (the mapping remembers what it mapped) until told they are gone.
    path = f"/dev/shm/{prefix}.mapping"
    with open(path, "wb") as f:
        f.truncate(32 * MB)
    try:
        mapping = store._arena.Mapping(path)
        value = np.arange(16 * MB, dtype=np.uint8)
        reversed_value = value[::-1].copy()
        before = _thread_faults()
        mapping.write(4096, value)
        first = _thread_faults() - before
        before = _thread_faults()
        mapping.write(4096, reversed_value)
        second = _thread_faults() - before
        assert first >= 16 * MB // 65536, first  # one read fault per 64 KiB at best
        assert second < 8, second
        assert bytes(mapping.view[4096 : 4096 + 16 * MB]) == reversed_value.tobytes()
        # A range dropped from this process's page tables is mapped in again.
        store._arena._advise(mapping.address, 32 * MB, store._arena.MADV_DONTNEED)
        mapping.forget(0, 32 * MB)
        before = _thread_faults()
        mapping.write(4096, value)
        assert _thread_faults() - before >= 16 * MB // 65536
        assert bytes(mapping.view[4096 : 4096 + 16 * MB]) == value.tobytes()
    finally:
        os.unlink(path)


async def test_a_client_maps_the_warm_margin_ahead_of_its_puts(tmp_path, prefix):
    async with running_store(tmp_path, prefix, capacity=64 * MB, warm=24 * MB) as (service, client):
        with trio.fail_after(30):
            await service.wait_warm()
        rss = _rss_shmem()
        with trio.fail_after(30):
            assert await client.map_ahead() == 24 * MB
        # Mapped into this process: its RSS counts the (shared, existing) pages.
        assert _rss_shmem() - rss >= 23 * MB
        stats = client.statistics()
        assert stats.mapped_ahead == 24 * MB and stats.map_ahead_seconds > 0
        # Mapping again maps nothing new; a put into the margin needs no page-table
        # entries of its own (an unmapped 6 MiB would take 96 read faults or more).
        # Below the client's copy-in-a-thread size, so that the copy runs in this
        # thread and only this thread's faults are counted (the service's warmer
        # runs in this process too, in threads of its own).
        assert await client.map_ahead() == 0
        fives = np.full(6 * MB, 5, dtype=np.uint8)
        assert fives.nbytes < store._client.COPY_IN_THREAD
        before = _thread_faults()
        await client.put(b"a", fives)
        assert _thread_faults() - before < 32
        value = np.asarray(await client.get(b"a"))
        assert value.min() == value.max() == 5
    async with running_store(tmp_path, prefix, capacity=8 * MB, warm=0) as (service, client):
        assert await client.map_ahead() == 0  # no margin: nothing to map
