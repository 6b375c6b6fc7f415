"""A scripted conversation against the real release binary, from a Python grpcio client."""

import grpc
import pytest


def event(pb2, eid, thread, text=None, **kw):
    e = pb2.ConversationEvent(event_id=eid, thread_id=thread, tenant_id="py", model="claude-opus-4-1",
                              locale=kw.pop("locale", "en-US"))
    if text is not None:
        e.user_message.text = text
    for category, score in kw.pop("signals", []):
        e.signals.add(category=category, score=score, source="pytest")
    if kw.pop("confirm_end", False):
        e.confirm_end.SetInParent()
    if "fork" in kw:
        parent, after = kw.pop("fork")
        e.fork.parent_thread_id = parent
        e.fork.after_turn = after
    assert not kw, kw
    return e


def test_scripted_conversation_on_one_stream(pb, stub):
    pb2, _ = pb
    weapons = pb2.CATEGORY_INDISCRIMINATE_WEAPONS
    script = [
        event(pb2, "1", "py-a", "Hi! Can you help me plan a trip to Lisbon?"),
        event(pb2, "2", "py-b", "hello", signals=[(pb2.CATEGORY_SELF_HARM, 0.9)], locale="en-GB"),
    ] + [
        event(pb2, f"h{i}", "py-a", "(withheld)", signals=[(weapons, 0.95)]) for i in range(4)
    ] + [
        event(pb2, "after", "py-a", "ok, what about museums?"),
        event(pb2, "bad", "", "no thread id"),
        event(pb2, "fork", "py-a2", fork=("py-a", 1)),
    ]
    responses = list(stub.Moderate(pb2.ModerateRequest(event=e) for e in script))
    assert [r.event_id for r in responses] == [e.event_id for e in script], "one response per event, in order"

    first = responses[0].verdict
    assert first.action == pb2.ACTION_CONTINUE and first.reason == pb2.REASON_BENIGN
    assert first.policy_version

    crisis = responses[1].verdict
    assert crisis.crisis.kind == pb2.CRISIS_KIND_SELF_HARM
    assert any(r.country == "GB" for r in crisis.crisis.resources)
    assert crisis.thread.crisis_active

    actions = [(r.verdict.action, r.verdict.redirect.warning) for r in responses[2:6]]
    assert actions == [
        (pb2.ACTION_REDIRECT, False),
        (pb2.ACTION_REDIRECT, False),
        (pb2.ACTION_REDIRECT, True),
        (pb2.ACTION_END, False),
    ]
    end = responses[5].verdict
    assert end.reason == pb2.REASON_PERSISTENT_HARM
    assert list(end.end.options) == [pb2.USER_OPTION_NEW_CHAT, pb2.USER_OPTION_EDIT_AND_RETRY, pb2.USER_OPTION_FEEDBACK]
    assert responses[6].verdict.reason == pb2.REASON_ALREADY_ENDED

    err = responses[7].error
    assert err.code == "INVALID_ARGUMENT" and "thread_id" in err.message

    branch = responses[8].verdict
    assert branch.action == pb2.ACTION_CONTINUE and not branch.thread.ended and branch.thread.turn == 1


def test_unary_thread_summary_and_feedback(pb, stub):
    pb2, _ = pb
    v = stub.Evaluate(pb2.EvaluateRequest(event=event(pb2, "e1", "py-c", "What's a good name for a cat?"))).verdict
    assert v.action == pb2.ACTION_CONTINUE
    summary = stub.GetThread(pb2.GetThreadRequest(tenant_id="py", thread_id="py-c")).thread
    assert summary.turn == 1 and not summary.ended
    assert summary.exposures == 0, "a benign turn exposes the assistant to nothing"
    stub.SubmitFeedback(pb2.SubmitFeedbackRequest(tenant_id="py", thread_id="py-c", event_id="e1",
                                                  rating=pb2.RATING_THUMBS_UP))
    with pytest.raises(grpc.RpcError) as e:
        stub.SubmitFeedback(pb2.SubmitFeedbackRequest(tenant_id="py", thread_id="nope", event_id="e1",
                                                      rating=pb2.RATING_THUMBS_UP))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.GetThread(pb2.GetThreadRequest(tenant_id="other-tenant", thread_id="py-c"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_user_requested_end_needs_confirmation(pb, stub):
    pb2, _ = pb
    v = stub.Evaluate(pb2.EvaluateRequest(event=event(pb2, "q1", "py-d", "Please end this chat."))).verdict
    assert v.action == pb2.ACTION_CONTINUE and v.end_confirmation_required
    assert v.redirect.guidance, "the model is told how to ask for confirmation"
    v = stub.Evaluate(pb2.EvaluateRequest(event=event(pb2, "q2", "py-d", "yes"))).verdict
    assert v.action == pb2.ACTION_END and v.reason == pb2.REASON_USER_REQUESTED


def test_reflection_v1alpha_with_grpcio_reflection(sidecar):
    """grpcio-reflection's client speaks grpc.reflection.v1alpha, as Postman, Evans and older
    grpcurl builds do: it must list the services and describe the API without the .proto."""
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(sidecar.addr)
    try:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "threadwarden.v1.ModerationService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services, services
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("threadwarden.v1.ModerationService")
        assert [m.name for m in service.methods] == ["Moderate", "Evaluate", "GetThread", "SubmitFeedback"]
        summary = pool.FindMessageTypeByName("threadwarden.v1.ThreadSummary")
        assert summary.fields_by_name["exposures"].number == 8
        assert summary.fields_by_name["crisis_suspected"].number == 7
    finally:
        channel.close()


def test_oversized_message_is_resource_exhausted(pb, stub):
    """An 8 MiB request, over the default 4 MiB limit: RESOURCE_EXHAUSTED, as grpc-core says it."""
    pb2, _ = pb
    big = event(pb2, "big", "py-big", "a" * (8 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as e:
        stub.Evaluate(pb2.EvaluateRequest(event=big))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.details().startswith("Received message larger than max ("), e.value.details()
    v = stub.Evaluate(pb2.EvaluateRequest(event=event(pb2, "small", "py-big", "hello"))).verdict
    assert v.action == pb2.ACTION_CONTINUE and v.thread.turn == 1
