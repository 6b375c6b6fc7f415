"""Fixtures: stubs generated from proto/ with grpcio-tools, and the real release binary on a free port."""

import json
import os
import pathlib
import subprocess
import sys
import threading
import queue

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = pathlib.Path(os.environ.get("THREADWARDEN_BIN", ROOT / "target" / "release" / "threadwarden"))


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """Generate the Python stubs from proto/ at test time; nothing generated is checked in."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    proto_root = ROOT / "proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(proto_root / "threadwarden" / "v1" / "moderation.proto"),
    ])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    from threadwarden.v1 import moderation_pb2, moderation_pb2_grpc

    return moderation_pb2, moderation_pb2_grpc


class Sidecar:
    def __init__(self, proc, addr, lines):
        self.proc, self.addr, self.lines = proc, addr, lines

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        return self.proc.returncode


def start_sidecar(*args):
    assert BINARY.exists(), f"build the release binary first: {BINARY}"
    proc = subprocess.Popen(
        [str(BINARY), "serve", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RUST_LOG": "info"},
    )
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        line = lines.get(timeout=20)
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") == "serving":
            return Sidecar(proc, record["listen"], lines)


@pytest.fixture
def sidecar():
    s = start_sidecar()
    yield s
    assert s.stop() == 0


@pytest.fixture
def stub(pb, sidecar):
    _, pb_grpc = pb
    channel = grpc.insecure_channel(sidecar.addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    yield pb_grpc.ModerationServiceStub(channel)
    channel.close()
