"""Actor: tell/ask, ordering, timeouts, backpressure, hooks, supervision."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actorcore.kernel import (
    Actor,
    ActorStopped,
    AskTimeout,
    ChildSpec,
    MailboxFull,
    Supervisor,
    check_snapshot,
)


class Counter(Actor):
    """Keeps a list of what it was told; answers questions about it."""

    def __init__(self, *, events: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.seen: list[Any] = []
        self.events = events if events is not None else []

    async def on_start(self) -> None:
        self.events.append("on_start")

    async def on_stop(self) -> None:
        await trio.sleep(1)  # shielded: may await its cleanup
        self.events.append("on_stop")

    async def on_failure(self, exc: BaseException) -> None:
        self.events.append(f"on_failure {exc!r}")

    async def receive(self, message: Any) -> Any:
        match message:
            case ("add", value):
                self.seen.append(value)
                return len(self.seen)
            case "get":
                return list(self.seen)
            case ("wait", trio.Event() as event):
                await event.wait()
                return "waited"
            case ("sleep", seconds):
                await trio.sleep(seconds)
                return "slept"
            case ("fail", text):
                raise ValueError(text)
            case "stop":
                self.stop()
                return "stopping"
        raise TypeError(f"unknown message {message!r}")


async def test_tell_then_ask_sees_messages_in_order(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for i in range(100):
            await actor.tell(("add", i))
        assert await actor.ask("get") == list(range(100))
        assert await actor.ask(("add", "x")) == 101
        stats = actor.statistics()
        assert (stats.name, stats.state, stats.processed, stats.queued) == ("Counter", "running", 102, 0)
        nursery.cancel_scope.cancel()
    assert actor.events == ["on_start", "on_stop"]
    assert actor.state == "stopped"


async def test_concurrent_senders_keep_their_own_order(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter(mailbox_size=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)

        async def sender(tag: str) -> None:
            for i in range(50):
                await actor.tell(("add", (tag, i)))

        async with trio.open_nursery() as senders:
            for tag in "abc":
                senders.start_soon(sender, tag)
        seen = await actor.ask("get")
        for tag in "abc":
            assert [i for t, i in seen if t == tag] == list(range(50))
        nursery.cancel_scope.cancel()


async def test_ask_timeout(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter(name="slowpoke")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        t0 = trio.current_time()
        with pytest.raises(AskTimeout, match="actor 'slowpoke' did not reply to \\('sleep', 60\\) within 2 s") as info:
            await actor.ask(("sleep", 60), timeout=2)
        assert info.value.actor == "slowpoke" and isinstance(info.value, TimeoutError)
        assert trio.current_time() - t0 == pytest.approx(2)
        # the message is still handled (it was delivered); later asks queue behind it
        assert await actor.ask(("add", 1), timeout=100) == 1
        assert trio.current_time() - t0 == pytest.approx(60)
        nursery.cancel_scope.cancel()


async def test_handler_error_fails_the_ask_crashes_the_actor_and_fails_pending_asks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Counter(name="fragile")
    results: dict[str, Any] = {}

    async def ask(key: str, message: Any) -> None:
        try:
            results[key] = await actor.ask(message)
        except Exception as exc:
            results[key] = exc

    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="bad input")):
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            gate = trio.Event()
            nursery.start_soon(ask, "first", ("wait", gate))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "boom", ("fail", "bad input"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ask, "after", ("add", 1))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
    assert results["first"] == "waited"
    assert isinstance(results["boom"], ValueError)
    assert isinstance(results["after"], ActorStopped)
    assert "actor 'fragile' stopped before replying to ('add', 1)" in str(results["after"])
    assert actor.events == ["on_start", "on_failure ValueError('bad input')"]
    assert actor.state == "failed"
    with pytest.raises(ActorStopped, match="actor 'fragile' is failed; cannot deliver 'get'"):
        await actor.ask("get")
    with pytest.raises(ActorStopped):
        actor.tell_nowait("get")


async def test_pending_asks_fail_when_the_actor_is_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter()
    errors: list[BaseException] = []

    async def ask(message: Any) -> None:
        try:
            await actor.ask(message)
        except ActorStopped as exc:
            errors.append(exc)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            outer.start_soon(ask, ("wait", trio.Event()))  # in flight when cancelled
            await trio.testing.wait_all_tasks_blocked()
            outer.start_soon(ask, "get")  # still queued
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(errors) == 2
    assert actor.events == ["on_start", "on_stop"]


async def test_bounded_mailbox_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter(name="tiny", mailbox_size=2)
    actor.tell_nowait(("add", 1))  # the mailbox exists before the actor runs
    actor.tell_nowait(("add", 2))
    with pytest.raises(MailboxFull, match="mailbox of actor 'tiny' is full \\(2 messages\\); dropped \\('add', 3\\)"):
        actor.tell_nowait(("add", 3))
    sent = trio.Event()

    async def blocked_sender() -> None:
        await actor.tell(("add", 3))  # waits for room
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        assert actor.statistics().senders_waiting == 1
        assert actor.snapshot()["mailbox"] == 2
        await nursery.start(actor.run)
        await sent.wait()
        assert await actor.ask("get") == [1, 2, 3]
        nursery.cancel_scope.cancel()


async def test_stop_returns_normally_after_the_current_message(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert await actor.ask("stop") == "stopping"
    assert actor.state == "stopped"
    assert actor.events == ["on_start", "on_stop"]
    idle = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(idle.run)
        await trio.testing.wait_all_tasks_blocked()
        idle.stop()  # from outside, while it waits for mail
    assert idle.state == "stopped"


async def test_crash_in_on_start_is_a_crash_during_start(autojump_clock: trio.testing.MockClock) -> None:
    class NoStart(Actor):
        async def on_start(self) -> None:
            raise OSError("cannot open")

    actor = NoStart()
    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError, match="cannot open"):
            await nursery.start(actor.run)
    assert actor.state == "failed"
    with pytest.raises(RuntimeError, match="already run"):
        await actor.run()


async def test_supervised_actor_is_restarted_fresh_after_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor("node", [ChildSpec("counter", Counter)], node_id="n1")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        first = sup.child("counter")
        await first.tell(("add", 1))
        with pytest.raises(ValueError, match="oops"):
            await first.ask(("fail", "oops"))
        await sup.wait_running("counter", restarts=1)
        second = sup.child("counter")
        assert second is not first and await second.ask("get") == []
        snap = sup.snapshot()
        check_snapshot(snap)
        entry = snap["children"][0]
        assert entry["kind"] == "actor" and entry["class"] == "Counter"
        assert (entry["restarts"], entry["mailbox"], entry["mailbox_size"], entry["processed"]) == (1, 0, 1000, 1)
        assert entry["last_error"] == "ValueError: oops" and entry["node_id"] == "n1"
        sup.crash_child("counter")
        await sup.wait_running("counter", restarts=2)
        nursery.cancel_scope.cancel()


async def test_ask_timeout_covers_waiting_for_mailbox_room(autojump_clock: trio.testing.MockClock) -> None:
    actor = Counter(name="full", mailbox_size=1)
    actor.tell_nowait(("add", 1))  # not running: the mailbox stays full
    t0 = trio.current_time()
    with pytest.raises(AskTimeout, match="actor 'full' did not reply to 'get' within 5 s"):
        await actor.ask("get", timeout=5)
    assert trio.current_time() - t0 == pytest.approx(5)


async def test_blocked_sender_gets_actor_stopped_when_the_actor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    actor = Counter(name="busy", mailbox_size=1)
    outcome: list[BaseException] = []

    async def sender() -> None:
        try:
            await actor.tell(("add", 2))
        except ActorStopped as exc:
            outcome.append(exc)

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            gate = trio.Event()
            await actor.tell(("wait", gate))  # the actor is now busy ...
            await actor.tell(("add", 1))  # ... and its mailbox full
            outer.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert actor.statistics().senders_waiting == 1
            nursery.cancel_scope.cancel()
    assert len(outcome) == 1 and "actor 'busy'" in str(outcome[0])


def test_bad_mailbox_size_is_named() -> None:
    with pytest.raises(ValueError, match="actor 'x': mailbox_size must be an int >= 0, got -1"):
        Counter(name="x", mailbox_size=-1)
