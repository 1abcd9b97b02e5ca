"""Flat frames (``transport._flat``): the direct link's messages travel as the plain
tuple of their fields, keyed by a code in the one-way frame's request-id field, and
come out as the typed classes; an unknown code or a malformed body is a message
that failed to decode, refused with a clear error while the connection serves on."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import transport
from actorcore.protocol import _wire as w
from actorcore.protocol._actors import CallSpec
from transport import _wire as frames

pytestmark = pytest.mark.usefixtures("no_faults")

TOKEN = b"flat-token"


@transport.message
class Plain:
    """A flat class with the default fields and build."""

    a: int
    b: Any = None


transport.register_flat(Plain)


def _spec(**changes: Any) -> CallSpec:
    spec = CallSpec(os.urandom(24), os.urandom(16), "f", "Echo.f", b"\x80\x05N.", [os.urandom(28)],
                    2, os.urandom(28), max_retries=3, retry_exceptions=True, attempt=1,
                    lost_incarnation=4, concurrency_group="io")
    return attrs.evolve(spec, **changes)


def _decode(chunks: list) -> tuple[int, int, Any]:
    data = b"".join(bytes(c) for c in chunks)
    body_len, kind, nbufs, rid = frames.HEADER.unpack_from(data)
    assert body_len == len(data) - frames.HEADER_SIZE
    body = memoryview(data)[frames.HEADER_SIZE:]
    return kind, rid, frames.decode_body(body, nbufs, rid if kind == frames.ONEWAY else 0)


def _same_spec(a: CallSpec, b: CallSpec) -> None:
    assert attrs.asdict(a, recurse=False) == attrs.asdict(b, recurse=False)  # (eq is identity)


@pytest.mark.parametrize("alone", [False, True])
def test_a_direct_call_round_trips_flat(alone: bool) -> None:
    spec = _spec()
    chunks, size = frames.encode_frame(frames.ONEWAY, 0, w.DirectCall(spec, alone))
    kind, rid, got = _decode(chunks)
    assert (kind, rid) == (frames.ONEWAY, transport.wire_code(w.DirectCall))
    assert type(got) is w.DirectCall and got.alone is alone
    assert type(got.spec) is CallSpec
    _same_spec(got.spec, spec)


def test_the_other_direct_messages_round_trip_flat() -> None:
    specs = [_spec(), _spec(deps=[], concurrency_group=None)]
    results = [(os.urandom(28), False, b"\x80\x05K\x01."), (os.urandom(28), True, b"err")]
    for message in (w.DirectCalls(specs), w.DirectResult(os.urandom(24), results),
                    w.DirectResult(os.urandom(24), None),
                    w.DirectResults([(os.urandom(24), results), (os.urandom(24), [])]),
                    Plain(1, [b"x"])):
        chunks, _size = frames.encode_frame(frames.ONEWAY, 0, message)
        kind, rid, got = _decode(chunks)
        assert rid == transport.wire_code(type(message))
        assert type(got) is type(message)
        if type(message) is w.DirectCalls:
            for a, b in zip(got.specs, specs, strict=True):
                _same_spec(a, b)
        else:
            assert got == message


def test_only_one_way_frames_are_flat() -> None:
    # A request's (and a reply's) request id is its own: the message is pickled.
    message = w.DirectResult(os.urandom(24), [])
    chunks, _size = frames.encode_frame(frames.REQUEST, 7, message)
    kind, rid, got = _decode(chunks)
    assert (kind, rid) == (frames.REQUEST, 7)
    assert got == message


def test_a_call_that_cannot_be_flattened_goes_as_an_ordinary_frame() -> None:
    # (a junk spec: the receiver's Dispatcher refuses it as malformed, as before)
    for message in (w.DirectCall("not a CallSpec"), w.DirectCalls([_spec(), "junk"])):
        chunks, _size = frames.encode_frame(frames.ONEWAY, 0, message)
        kind, rid, got = _decode(chunks)
        assert (kind, rid) == (frames.ONEWAY, 0)
        assert type(got) is type(message)


def test_an_unknown_code_is_refused_clearly() -> None:
    body = memoryview(pickle.dumps((1, 2), 5))
    with pytest.raises(ValueError, match="unknown message code 0x7"):
        frames.decode_body(body, 0, transport.CODE_BASE + 1)


@pytest.mark.parametrize(("values", "match"), [
    ([1, 2], "of DirectCall: its body is a list, not a tuple"),
    ((1, 2), r"of DirectCall \(2 values\): TypeError"),
    ((), r"of DirectCall \(0 values\)"),
])
def test_a_malformed_body_is_refused_clearly(values: Any, match: str) -> None:
    body = memoryview(pickle.dumps(values, 5))
    with pytest.raises(ValueError, match=match):
        frames.decode_body(body, 0, transport.wire_code(w.DirectCall))


def test_register_flat_refuses_what_it_cannot_flatten() -> None:
    with pytest.raises(TypeError, match="attrs message class"):
        transport.register_flat(int)
    assert transport.register_flat(Plain) == transport.wire_code(Plain)  # idempotent


async def test_bad_flat_frames_are_dropped_and_the_link_serves_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    got: list[Any] = []
    arrived = trio.Event()

    async def handler(conn: transport.Connection, message: Any, reply: Any) -> None:
        got.append(message)
        if reply is not None:
            reply.send("pong")
        if type(message) is Plain and message.a == 2:
            arrived.set()

    def raw(code: int, values: Any) -> tuple[list[bytes | memoryview], int]:
        data = pickle.dumps(values, 5)
        return [frames.HEADER.pack(len(data), frames.ONEWAY, 0, code) + data], \
            frames.HEADER_SIZE + len(data)

    server = transport.Server(f"unix:{tmp_path}/f.sock", TOKEN, handler, name="flat")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        async with transport.open_connection(address, TOKEN) as conn:
            with caplog.at_level(logging.WARNING, logger="transport"):
                await conn.send(Plain(1))
                conn._push(*raw(transport.CODE_BASE + 3, (1,)))  # unknown code
                conn._push(*raw(transport.wire_code(w.DirectCall), "junk"))  # malformed
                await conn.send(Plain(2))
                with trio.fail_after(10):
                    await arrived.wait()
                assert await conn.request("ping") == "pong"  # the link serves on
        nursery.cancel_scope.cancel()
    assert got == [Plain(1), Plain(2), "ping"]
    text = caplog.text
    assert "unknown message code" in text
    assert "malformed flat frame of DirectCall" in text
