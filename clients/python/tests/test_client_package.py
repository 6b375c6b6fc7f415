"""The installed package matches the repository: stubs generated from today's proto/, enums equal
to the proto's."""

import pathlib

import pytest

import threadwarden_client as tw
from threadwarden_client import pb2

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[3] / "proto"


def test_installed_stubs_are_generated_from_the_repository_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    from google.protobuf import descriptor_pb2

    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}",
                        "threadwarden/v1/moderation.proto"]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # the embedded descriptor omits json_name
        for field in message.field:
            field.ClearField("json_name")
    installed = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
    assert installed == fresh, "reinstall the client: pip install ./clients/python"


@pytest.mark.parametrize("ours, proto_enum, prefix", [
    (tw.Action, pb2.Action, "ACTION_"), (tw.Reason, pb2.Reason, "REASON_"),
    (tw.Category, pb2.Category, "CATEGORY_"), (tw.CrisisKind, pb2.CrisisKind, "CRISIS_KIND_"),
    (tw.UserOption, pb2.UserOption, "USER_OPTION_"), (tw.Rating, pb2.Rating, "RATING_"),
])
def test_enums_match_the_proto(ours, proto_enum, prefix):
    expected = {v.name.removeprefix(prefix): v.number for v in proto_enum.DESCRIPTOR.values if v.number}
    assert {m.name: m.value for m in ours} == expected


def test_event_builders():
    e = tw.user_message("t", "hi", tenant_id="acme", locale="en-GB", signals={"self_harm": 0.9, tw.Category.HATE: 0.2})
    assert e.WhichOneof("payload") == "user_message" and len(e.event_id) == 32
    assert [(s.category, round(s.score, 2)) for s in e.signals] == [(pb2.CATEGORY_SELF_HARM, 0.9), (pb2.CATEGORY_HATE, 0.2)]
    a = tw.assistant_message("t", "bye", refused=True, end_conversation_requested=True, event_id="a1")
    assert a.assistant_message.refused and a.assistant_message.end_conversation_requested and a.event_id == "a1"
    f = tw.fork("t2", "t", 3)
    assert (f.fork.parent_thread_id, f.fork.after_turn) == ("t", 3)
    assert tw.confirm_end("t").WhichOneof("payload") == "confirm_end"
    with pytest.raises(KeyError):
        tw.user_message("t", "x", signals={"no_such_category": 1.0})
