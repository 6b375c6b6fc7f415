"""Real mid-stream disconnects: the Moderator re-opens its stream, re-sends what is un-answered,
and every moderate() call resolves exactly once with the right verdict; the sidecar's thread
summaries prove that nothing was counted twice."""

import asyncio
import logging

from threadwarden_client import Action, Category, Moderator, pb2, user_message

from conftest import Sidecar, eventually

TENANT = "py-reconnect"
WEAPONS = {Category.INDISCRIMINATE_WEAPONS: 0.95}
SECRET = "my very private message text"


def harmful(thread, i):
    return user_message(thread, f"{SECRET} #{i}", event_id=f"h{i}", tenant_id=TENANT, signals=WEAPONS)


async def test_cut_connection_after_the_sidecar_decided(sidecar, proxy, direct, caplog):
    """The sidecar decides four events but the client never sees the answers (the proxy drops
    them), then the connection is cut: the client reconnects, re-sends the four, and gets the
    original verdicts back as replays."""
    caplog.set_level(logging.DEBUG)
    async with Moderator(proxy.addr, deadline=20) as m:
        assert (await m.moderate(user_message("cut", SECRET, event_id="h0", tenant_id=TENANT))).is_continue
        proxy.blackhole(responses=True)
        calls = [asyncio.create_task(m.moderate(harmful("cut", i))) for i in range(1, 5)]
        await eventually(lambda: direct.get_thread("cut", tenant_id=TENANT).turn == 5)
        assert not any(c.done() for c in calls), "decided by the sidecar, un-answered at the client"
        proxy.cut()
        verdicts = await asyncio.gather(*calls)
        assert m.reconnects >= 1 and proxy.accepted >= 2
    assert [(v.action, v.warning, v.replayed) for v in verdicts] == [
        (Action.REDIRECT, False, True), (Action.REDIRECT, False, True),
        (Action.REDIRECT, True, True), (Action.END, False, True)]
    summary = direct.get_thread("cut", tenant_id=TENANT)
    assert (summary.turn, summary.harmful_turns, summary.ended) == (5, 4, True)
    assert "re-sending" in caplog.text, "the reconnect is logged"
    assert SECRET not in caplog.text, "no message text in client logs"


async def test_sidecar_crash_and_restart_on_the_same_port(tmp_path):
    """Events on the wire when the sidecar crashes, and events sent while no sidecar is up, are
    delivered by the restarted sidecar (same port, same state file) exactly once."""
    state = tmp_path / "state.bin"
    first = Sidecar("--state-file", state, "--grace", "1s")
    second = third = None
    try:
        async with Moderator(first.addr, deadline=30) as m:
            assert (await m.moderate(user_message("warm", "hi", event_id="w", tenant_id=TENANT))).is_continue

            # 1. A crash with two events on the wire, unread by the (frozen) sidecar.
            first.freeze()
            calls = [asyncio.create_task(m.moderate(harmful("crash", i))) for i in (1, 2)]
            on_wire = sum(5 + pb2.ModerateRequest(event=harmful("crash", i)).ByteSize() for i in (1, 2))
            await eventually(lambda: first.unread_bytes() >= on_wire)
            first.kill()
            assert not any(c.done() for c in calls)
            second = first.restart()
            got = await asyncio.gather(*calls)
            assert [(v.action, v.replayed) for v in got] == [(Action.REDIRECT, False), (Action.REDIRECT, False)]

            # 2. A graceful restart (SIGTERM: drain, snapshot), with events sent while it is down.
            assert second.terminate() == 0
            calls = [asyncio.create_task(m.moderate(harmful("crash", i))) for i in (3, 4)]
            third = second.restart()
            got += await asyncio.gather(*calls)
            assert m.reconnects >= 2
        assert [(v.action, v.warning) for v in got] == [
            (Action.REDIRECT, False), (Action.REDIRECT, False), (Action.REDIRECT, True), (Action.END, False)]
        assert [v.thread.turn for v in got] == [1, 2, 3, 4], "each event counted once, across two restarts"
        assert got[-1].thread.ended and got[-1].thread.harmful_turns == 4
        assert third.addr == first.addr
        assert third.terminate() == 0
    finally:
        for s in (first, second, third):
            if s is not None and s.proc.poll() is None:
                s.kill()
