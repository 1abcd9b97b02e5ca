"""Transport tests of typed dispatch: a `Dispatcher` routes frozen attrs messages by
class and refuses what it does not know in its validators' words; registered classes
travel as extension codes derived from their names; `compact` classes as tuples."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import transport

TOKEN = b"local-token"


@attrs.frozen
class _Add:
    a: int = attrs.field(validator=attrs.validators.instance_of(int))
    b: int = attrs.field(validator=attrs.validators.instance_of(int))


@attrs.frozen
class _Note:
    text: str = attrs.field(validator=attrs.validators.instance_of(str))


@attrs.frozen
class _Slow:
    value: Any


@transport.compact
@attrs.frozen(slots=False)
class _Mul:
    """Checked when it arrives, not when built; pickled as its class and a tuple."""

    a: int = attrs.field(metadata=transport.check(attrs.validators.instance_of(int)))
    b: int = attrs.field(metadata=transport.check(attrs.validators.instance_of(int)))


def test_compact_pickles_a_tuple_and_refuses_classes_that_validate() -> None:
    assert _Mul(2, 3).__reduce__() == (_Mul, (2, 3))
    assert pickle.loads(pickle.dumps(_Mul("2", 3))) == _Mul("2", 3)  # not checked here
    with pytest.raises(TypeError, match="would validate _Add while unpickling"):
        transport.compact(_Add)


async def test_dispatcher_routes_by_class_and_refuses_what_it_does_not_know(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notes: list[str] = []
    noted = trio.Event()
    dispatcher = transport.Dispatcher("adder")

    def note(conn: transport.Connection, message: _Note) -> None:
        notes.append(message.text)
        noted.set()

    async def slow(conn: transport.Connection, message: _Slow, reply: transport.Reply) -> None:
        await trio.lowlevel.checkpoint()
        reply.send(message.value)

    dispatcher.register(_Add, lambda conn, m, reply: reply.send(m.a + m.b))
    dispatcher.register(_Note, note, oneway=True)
    dispatcher.register(_Slow, slow)
    dispatcher.register(_Mul, lambda conn, m, reply: reply.send(m.a * m.b))
    with pytest.raises(ValueError, match="registered already"):
        dispatcher.register(_Add, note)
    with pytest.raises(TypeError, match="must be an attrs class"):
        dispatcher.register(tuple, note)

    server = transport.Server(f"unix:{tmp_path}/d.sock", TOKEN, dispatcher, name="adder")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN, name="hostile") as conn:
            assert await conn.request(_Add(2, 3), timeout=5) == 5
            assert await conn.request(_Slow("later"), timeout=5) == "later"
            # Garbage, a plain tuple, an unknown class: typed refusals naming the type.
            for junk, named in [(42, "int"), (("add", 1, 2), "tuple"), (_Unknown(), "_Unknown")]:
                with pytest.raises(transport.RemoteError) as info:
                    await conn.request(junk, timeout=5)
                refused = info.value.remote_exception
                assert isinstance(refused, transport.BadMessage), refused
                assert refused.endpoint == "adder" and refused.message_type == named
                assert f"adder does not handle messages of type {named}" in str(refused)
            # A known class with fields of the wrong type (validators run at dispatch,
            # not while unpickling, so the endpoint answers it in its own terms).
            with attrs.validators.disabled():
                bad = _Add("2", 3)  # as a buggy or older peer would build it
            with pytest.raises(transport.RemoteError) as info:
                await conn.request(bad, timeout=5)
            assert isinstance(info.value.remote_exception, transport.BadMessage)
            assert "adder got a malformed _Add: 'a' must be <class 'int'> (got '2'" in str(
                info.value.remote_exception)
            assert await conn.request(_Mul(6, 7), timeout=5) == 42
            with pytest.raises(transport.RemoteError, match="malformed _Mul: 'b' must be"):
                await conn.request(_Mul(6, "7"), timeout=5)  # built freely, checked on arrival
            # A request class sent one-way is dropped with a log line; a notice sent
            # as a request is answered None once handled.
            with caplog.at_level(logging.WARNING, logger="transport.dispatch"):
                await conn.send(_Add(1, 1))
                assert await conn.request(_Note("asked"), timeout=5) is None
            assert "request _Add as a one-way message" in caplog.text
            await conn.send(_Note("told"))
            with trio.fail_after(5):
                while len(notes) < 2:
                    noted = trio.Event()
                    await noted.wait()
            assert notes == ["asked", "told"]
            assert await conn.request(_Add(20, 22), timeout=5) == 42  # serving on
        stats = dispatcher.statistics()
        assert (stats.routes, stats.unknown, stats.malformed, stats.dispatched) == (4, 3, 3, 6)
        nursery.cancel_scope.cancel()


class _Unknown:
    def __repr__(self) -> str:
        return "<an object the endpoint never heard of>"


def _even(instance: Any, attribute: Any, value: Any) -> None:
    if value % 2:
        raise ValueError(f"'{attribute.name}' must be even, got {value!r}")


@transport.compact
@attrs.frozen(slots=False)
class _Mixed:
    """Each kind of check a dispatcher compiles: inlined, nested, and called."""

    key: bytes | None = attrs.field(
        metadata=transport.check(attrs.validators.optional(attrs.validators.instance_of(bytes))))
    count: int = attrs.field(
        metadata=transport.check(attrs.validators.instance_of(int), _even))
    items: list = attrs.field(
        metadata=transport.check(attrs.validators.instance_of((list, tuple))))
    free: Any = None


async def test_a_dispatcher_refuses_in_the_validators_words_what_its_compiled_checks_refuse(
        tmp_path: Path) -> None:
    dispatcher = transport.Dispatcher("mixed")
    dispatcher.register(_Mixed, lambda conn, m, reply: reply.send(m.count))
    server = transport.Server(f"unix:{tmp_path}/m.sock", TOKEN, dispatcher, name="mixed")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN, name="hostile") as conn:
            assert await conn.request(_Mixed(None, 2, []), timeout=5) == 2
            assert await conn.request(_Mixed(b"k", 4, (), object), timeout=5) == 4
            for bad, says in [
                (_Mixed("k", 2, []), "malformed _Mixed: 'key' must be <class 'bytes'> (got 'k'"),
                (_Mixed(None, "2", []), "malformed _Mixed: 'count' must be <class 'int'>"),
                (_Mixed(None, 3, []), "malformed _Mixed: 'count' must be even, got 3"),
                (_Mixed(None, 2, {}), "malformed _Mixed: 'items' must be"),
            ]:
                with pytest.raises(transport.RemoteError) as info:
                    await conn.request(bad, timeout=5)
                refused = info.value.remote_exception
                assert isinstance(refused, transport.BadMessage), refused
                assert says in str(refused), str(refused)
                assert (refused.endpoint, refused.message_type) == ("mixed", "_Mixed")
            assert await conn.request(_Mixed(b"", 0, []), timeout=5) == 0  # serving on
        stats = dispatcher.statistics()
        assert (stats.malformed, stats.dispatched) == (4, 3)
        nursery.cancel_scope.cancel()


def _module_of(name: str, **classes: type) -> Any:
    """A module in ``sys.modules`` holding ``classes`` (so pickles can name them)."""
    import sys
    import types

    module = types.ModuleType(name)
    for key, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, key
        setattr(module, key, cls)
    sys.modules[name] = module
    return module


def test_registered_classes_travel_as_extension_codes_derived_from_their_names() -> None:
    import copyreg
    import pickletools

    @transport.compact
    @attrs.frozen(slots=False)
    class Note:
        text: str

    _module_of("transport_test_codes_a", Note=Note)
    assert transport.registered_code(Note) is None
    named = pickle.dumps(Note("hi"), protocol=5)
    assert b"transport_test_codes_a" in named
    transport.register_codes(Note)
    transport.register_codes(Note)  # again: a no-op
    code = transport.registered_code(Note)
    assert code == transport.wire_code(Note)
    assert transport.CODE_BASE <= code < transport.CODE_BASE + transport.CODE_SPAN
    # The code is the name's: the same in any process, whatever else is registered.
    assert code == transport.CODE_BASE + (
        __import__("zlib").crc32(b"transport_test_codes_a:Note") & (transport.CODE_SPAN - 1))
    coded = pickle.dumps(Note("hi"), protocol=5)
    assert b"transport_test_codes_a" not in coded and len(coded) < len(named)
    ops = [op.name for op, _arg, _pos in pickletools.genops(coded)]
    assert "EXT4" in ops and "STACK_GLOBAL" not in ops
    assert pickle.loads(coded) == Note("hi")
    # A process that never registered the code cannot decode it, and says so.
    copyreg.remove_extension("transport_test_codes_a", "Note", code)
    with pytest.raises(ValueError, match="unregistered extension code"):
        pickle.loads(coded)
    copyreg.add_extension("transport_test_codes_a", "Note", code)
    assert pickle.loads(coded) == Note("hi")


def test_register_codes_refuses_what_no_pickle_can_name_and_names_a_clash() -> None:
    with pytest.raises(TypeError, match="takes classes, got 'Note'"):
        transport.register_codes("Note")  # type: ignore[arg-type]

    @attrs.frozen
    class Local:
        x: int

    with pytest.raises(TypeError, match="not reachable by its module and qualified name"):
        transport.register_codes(Local)
    # Two names whose codes clash (found by search: 22 bits of CRC-32, so a few
    # thousand names that differ in many bytes share one).
    import hashlib
    import zlib

    seen: dict[int, str] = {}
    module = "transport_test_codes_b"
    for i in range(100_000):
        name = "C" + hashlib.sha1(str(i).encode()).hexdigest()[:12]
        low = zlib.crc32(f"{module}:{name}".encode()) & (transport.CODE_SPAN - 1)
        if low in seen:
            first, second = seen[low], name
            break
        seen[low] = name
    else:
        pytest.fail("no clash found")
    one = attrs.frozen(type(first, (), {"__annotations__": {"x": "int"}}))
    two = attrs.frozen(type(second, (), {"__annotations__": {"x": "int"}}))
    _module_of(module, **{first: one, second: two})
    transport.register_codes(one)
    with pytest.raises(ValueError, match=rf"{module}\.{second} and {module}\.{first} have the "
                                         r"same wire code 0x7a[0-9a-f]+: rename one of them"):
        transport.register_codes(two)
    assert transport.registered_code(two) is None
    assert pickle.loads(pickle.dumps(two(1), protocol=5)) == two(1)  # by name, as before
