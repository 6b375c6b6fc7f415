"""The Moderator and Client against the real release binary: every action, multiplexed threads,
event errors, crisis routing, deadlines, shadow mode."""

import asyncio

import pytest

from threadwarden_client import (
    Action,
    Category,
    Client,
    CrisisKind,
    DeadlineExceeded,
    EventRejected,
    Moderator,
    Rating,
    Reason,
    UserOption,
    assistant_message,
    confirm_end,
    fork,
    user_message,
)

from conftest import Sidecar

TENANT = "py-client"
WEAPONS = {Category.INDISCRIMINATE_WEAPONS: 0.95}


def user(thread, eid, text="(withheld)", **kw):
    return user_message(thread, text, event_id=eid, tenant_id=TENANT, model="claude-opus-4-1", **kw)


async def test_every_action_and_the_end_notice(sidecar):
    async with Moderator(sidecar.addr) as m:
        v = await m.moderate(user("acts", "1", "Can you help me plan a trip to Lisbon?"))
        assert v.is_continue and v.action is Action.CONTINUE and v.reason is Reason.BENIGN
        assert v.crisis is None and v.end_notice is None and v.guidance is None and v.policy_version

        harmful = [await m.moderate(user("acts", f"h{i}", signals=WEAPONS)) for i in range(4)]
        assert [(v.action, v.warning) for v in harmful] == [
            (Action.REDIRECT, False), (Action.REDIRECT, False), (Action.REDIRECT, True), (Action.END, False)]
        assert all(v.guidance for v in harmful[:3]), "the model gets guidance to steer away"
        assert harmful[2].warning_notice and harmful[0].warning_notice is None, "a banner text with the warning"
        assert harmful[0].is_redirect and harmful[0].reason is Reason.HARMFUL_REQUEST
        end = harmful[3]
        assert end.is_end and end.reason is Reason.PERSISTENT_HARM and end.thread.ended
        assert end.end_notice.message
        assert end.end_options == (UserOption.NEW_CHAT, UserOption.EDIT_AND_RETRY, UserOption.FEEDBACK)

        locked = await m.moderate(user("acts", "after", "hello?"))
        assert locked.is_end and locked.reason is Reason.ALREADY_ENDED

        branch = await m.moderate(fork("acts-edit", "acts", 1, event_id="f1", tenant_id=TENANT))
        assert branch.is_continue and not branch.thread.ended and branch.thread.turn == 1
        again = await m.moderate(user("acts-edit", "2", "Porto instead?"))
        assert again.is_continue and again.thread.turn == 2

        await m.submit_feedback("acts", "h3", Rating.THUMBS_DOWN, comment="too strict", tenant_id=TENANT)
        with pytest.raises(EventRejected) as e:
            await m.submit_feedback("nope", "h3", "thumbs_up", tenant_id=TENANT)
        assert e.value.code == "NOT_FOUND"
        assert (await m.get_thread("acts", tenant_id=TENANT)).harmful_turns == 4
        assert await m.get_thread("acts", tenant_id="someone-else") is None


async def test_user_and_model_requested_ends(sidecar):
    async with Moderator(sidecar.addr) as m:
        ask = await m.moderate(user("bye", "1", "Please end this chat."))
        assert ask.is_continue and ask.end_confirmation_required and ask.guidance
        assert ask.reason is Reason.USER_REQUESTED
        done = await m.moderate(confirm_end("bye", event_id="2", tenant_id=TENANT))
        assert done.is_end and done.reason is Reason.USER_REQUESTED and done.end_notice

        # The model's end tool before any warning: denied, the conversation goes on.
        await m.moderate(user("tool", "1", "hi"))
        denied = await m.moderate(assistant_message("tool", "Goodbye.", end_conversation_requested=True,
                                                    event_id="2", tenant_id=TENANT))
        assert denied.is_continue and denied.end_denied and denied.end_denied_detail == "NOT_WARNED"


async def test_multiplexed_threads_on_one_stream(sidecar):
    """40 threads at once, turn by turn each, on one stream: every verdict is its own event's,
    even though every thread uses the same event ids."""
    async with Moderator(sidecar.addr) as m:
        async def conversation(n):
            thread = f"mux-{n}"
            if n % 2:  # a persistent severe request
                got = [await m.moderate(user(thread, str(i), signals=WEAPONS)) for i in range(4)]
                assert [(v.action, v.warning) for v in got] == [
                    (Action.REDIRECT, False), (Action.REDIRECT, False), (Action.REDIRECT, True), (Action.END, False)]
            else:  # an ordinary chat
                got = [await m.moderate(user(thread, str(i), f"Tell me about museum {i}.")) for i in range(4)]
                assert all(v.is_continue for v in got)
            assert {v.thread_id for v in got} == {thread}
            assert [v.thread.turn for v in got] == [1, 2, 3, 4]
            return got

        results = await asyncio.gather(*(conversation(n) for n in range(40)))
        assert m.reconnects == 0
    assert sum(v.is_end for got in results for v in got) == 20


async def test_pipelined_events_and_a_bad_event_on_one_thread(sidecar):
    async with Moderator(sidecar.addr) as m:
        events = [user("pipe", str(i), signals=WEAPONS) for i in range(3)]
        events.insert(1, user("", "bad", "no thread id"))
        results = await asyncio.gather(*(m.moderate(e) for e in events), return_exceptions=True)
        assert isinstance(results[1], EventRejected)
        assert results[1].code == "INVALID_ARGUMENT" and "thread_id" in results[1].message
        assert [(v.action, v.warning) for v in results[0:1] + results[2:]] == [
            (Action.REDIRECT, False), (Action.REDIRECT, False), (Action.REDIRECT, True)]
        with pytest.raises(EventRejected) as e:
            await m.moderate(fork("orphan", "no-such-parent", 0, event_id="f", tenant_id=TENANT))
        assert e.value.code == "NOT_FOUND" and e.value.event_id == "f"
        # The stream goes on after errors, and a replayed id counts nothing twice.
        replay = await m.moderate(user("pipe", "2", signals=WEAPONS))
        assert replay.replayed and replay.warning and replay.thread.harmful_turns == 3


async def test_crisis_routing_never_ends(sidecar):
    async with Moderator(sidecar.addr) as m:
        first = await m.moderate(user("crisis", "1", "hello", locale="en-GB", signals={"self_harm": 0.9}))
        assert first.crisis_kind is CrisisKind.SELF_HARM and first.thread.crisis_active
        assert first.crisis.message and first.crisis.guidance
        assert any(r.country == "GB" and (r.phone or r.url) for r in first.crisis.resources)
        # Persistent severe requests, an end request, a confirmation and the model's end tool:
        # crisis support throughout, never an END.
        later = [await m.moderate(user("crisis", f"h{i}", locale="en-GB", signals=WEAPONS)) for i in range(5)]
        later.append(await m.moderate(user("crisis", "ask", "Please end this chat.", locale="en-GB")))
        later.append(await m.moderate(confirm_end("crisis", event_id="yes", tenant_id=TENANT, locale="en-GB")))
        later.append(await m.moderate(assistant_message("crisis", "I'm here.", end_conversation_requested=True,
                                                        event_id="tool", tenant_id=TENANT, locale="en-GB")))
        assert not any(v.is_end for v in later)
        assert all(v.thread.crisis_active and v.crisis is not None for v in later)
        assert [v.end_denied_detail for v in later[-2:]] == ["CRISIS_ACTIVE", "CRISIS_ACTIVE"]
        assert not (await m.get_thread("crisis", tenant_id=TENANT)).ended


async def test_deadline_per_event_and_no_retry_after_it(sidecar, proxy, direct):
    async with Moderator(proxy.addr) as m:
        assert (await m.moderate(user("slow", "1", "hi"))).is_continue
        proxy.blackhole(requests=True, responses=True)
        with pytest.raises(DeadlineExceeded) as e:
            await m.moderate(user("slow", "2", "anyone there?"), timeout=0.3)
        assert isinstance(e.value, TimeoutError)
        proxy.cut()
        v = await m.moderate(user("slow", "3", "and now?"), timeout=10)
        assert v.is_continue and m.reconnects >= 1
    # The event that timed out was dropped, not re-sent after the reconnect: 2 turns, not 3.
    assert direct.get_thread("slow", tenant_id=TENANT).turn == 2


async def test_shadow_mode_reports_what_enforcement_would_do(tmp_path):
    policy = tmp_path / "shadow.yaml"
    policy.write_text("version: shadow-test\nmode: shadow\n")
    s = Sidecar("--config", policy)
    try:
        async with Moderator(s.addr) as m:
            got = [await m.moderate(user("shadow", str(i), signals=WEAPONS)) for i in range(4)]
        last = got[-1]
        assert not last.enforced and last.shadow_action is Action.END and last.action is Action.REDIRECT
        assert last.policy_version == "shadow-test"
        # The wire verdict carries the would-be end notice; the helper does not offer it as an END.
        assert last.raw.HasField("end") and last.end_notice is None and last.end_options == ()
        assert last.guidance, "a capped END is still steered away"
    finally:
        assert s.terminate() == 0


def test_sync_client_evaluate_thread_and_feedback(sidecar):
    with Client(sidecar.addr) as c:
        v = c.evaluate(user("sync", "e1", "Please end this chat."))
        assert v.is_continue and v.end_confirmation_required
        v = c.evaluate(user("sync", "e2", "Yes"))
        assert v.is_end and v.reason is Reason.USER_REQUESTED
        assert c.evaluate(user("sync", "e2", "Yes")).replayed
        summary = c.get_thread("sync", tenant_id=TENANT)
        assert summary.ended and summary.turn == 2
        assert c.get_thread("never-seen", tenant_id=TENANT) is None
        c.submit_feedback("sync", "e2", Rating.THUMBS_UP, tenant_id=TENANT)
        with pytest.raises(EventRejected) as e:
            c.evaluate(user("", "e3", "no thread"))
        assert e.value.code == "INVALID_ARGUMENT" and "thread_id" in e.value.message
