"""store: the service and its clients, with real processes, sockets and /dev/shm."""

from __future__ import annotations

import gc
import os
import signal
import threading

import numpy as np
import pyarrow as pa
import pytest
import trio

import store
import store._arena
import store._client
import store._messages

from .store_support import (
    MB,
    TOKEN,
    no_leftovers,
    node_killed_after_puts,
    python_child,
    read_line,
    restarted_on_crash,
    running_store,
    wait_for,
)


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
        proc = python_child(
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
            offset, writeable, mapped, first = (await read_line(proc)).split()
            assert int(offset) == my_offset
            assert writeable == "False" and mapped == "True" and first == "0"
            # Write through the parent's (writable) mapping of the same pages.
            client._mapping.mmap[my_offset : my_offset + 8] = np.int64(4242).tobytes()
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert (await read_line(proc)).strip() == "4242"
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
        await wait_for(lambda: service.statistics().views == 1, "views released")
        assert service.statistics().count == 1
        assert client.statistics().cached_leases == 1
        await client.remove_ref(b"obj0")
        await wait_for(lambda: service.statistics().count == 0, "obj0 freed")
        assert service.statistics().used == baseline
        # A second client's refs die with its connection.
        other = await store.StoreClient.connect(service.address, TOKEN, name="other")
        await other.put(b"theirs", np.zeros(MB, dtype=np.uint8))
        assert service.statistics().used > baseline
        await other.aclose()
        await wait_for(lambda: service.statistics().used == baseline, "dead client's refs dropped")


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
        await wait_for(lambda: service.statistics().count == 0, "all freed")
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
            await wait_for(lambda: service.statistics().count == 0,
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
            await wait_for(lambda: service.statistics().count == 3,
                            "the rebuilt object freed with its writer's ref")
            for i in range(4):
                await client.remove_ref(b"s%d" % i)
                await other.remove_ref(b"s%d" % i)
            await wait_for(lambda: service.statistics().count == 0, "all freed")
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
            await wait_for(lambda: writer.holds(b"big"), "the writer's view of its object")
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
            await wait_for(lambda: service.statistics().waiting_gets >= 1, "a waiting lookup")
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
        await wait_for(lambda: service.statistics().count == 0, "all freed")
        await client.aclose()
    no_leftovers(prefix)
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
        await wait_for(lambda: service.statistics().count == 0, "freed with its last ref")
        await writer.aclose()
    no_leftovers(prefix)


async def test_writer_killed_mid_put_leaves_nothing(tmp_path, prefix):
    async with running_store(tmp_path, prefix) as (service, client):
        baseline = service.statistics().used
        proc = python_child(
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
            assert (await read_line(proc)).strip() == "writing"
            assert service.statistics().unsealed == 1
            assert not await client.contains(b"half")
            with pytest.raises(store.GetTimeoutError):
                await client.get(b"half", timeout=0.1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        await wait_for(lambda: service.statistics().unsealed == 0, "unsealed reclaimed")
        assert service.statistics().used == baseline
        assert not await client.contains(b"half")


async def test_cleanup_session_after_a_killed_node(tmp_path, prefix):
    await node_killed_after_puts(tmp_path, prefix, '[(b"x", np.ones(1 << 17))]')
    assert store.session_files(prefix) == [store.arena_path(prefix)]
    assert store.cleanup_stale_sessions(name_prefix=prefix) == [store.arena_path(prefix)]
    assert store.cleanup_session(prefix) == []
    no_leftovers(prefix)


async def test_bad_capacity_and_prefix():
    with pytest.raises(ValueError, match="capacity"):
        store.ObjectStoreService("unix:/tmp/x.sock", TOKEN, capacity=0)
    with pytest.raises(ValueError, match="prefix"):
        store.arena_path("../etc")


async def test_node_killed_then_new_service_recovers_the_arena(tmp_path, prefix):
    await node_killed_after_puts(
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
        await wait_for(lambda: target_service.statistics().used == used, "aborted block freed")
        assert not await target.contains(b"u")



async def test_a_hostile_peer_gets_typed_refusals_and_the_store_serves_on(tmp_path, prefix):
    """Garbage, unknown message types and known types with wrong fields, sent to a
    store service in another process: each request fails with `store.BadRequest`
    naming what was wrong, one-way junk is dropped, and the store keeps serving."""
    import attrs

    import transport
    from store import _messages as m

    proc = python_child(
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
        address = (await read_line(proc)).strip()
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

