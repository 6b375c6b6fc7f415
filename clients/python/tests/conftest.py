"""Fixtures: the real release binary on a free port (restartable on the same port), a TCP proxy
that a test can stall or cut, and a direct blocking client for checking thread summaries."""

import asyncio
import json
import os
import pathlib
import queue
import signal
import subprocess
import threading
import time

import pytest

from threadwarden_client import Client

ROOT = pathlib.Path(__file__).resolve().parents[3]
BINARY = pathlib.Path(os.environ.get("THREADWARDEN_BIN", ROOT / "target" / "release" / "threadwarden"))


class Sidecar:
    """A running `threadwarden serve`."""

    def __init__(self, *args, listen="127.0.0.1:0"):
        assert BINARY.exists(), f"build the release binary first: {BINARY}"
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen([str(BINARY), "serve", "--listen", listen, *self.args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "RUST_LOG": "info"})
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 20
        while True:  # the port is read from the "serving" log line, never guessed
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "serving":
                self.addr = record["listen"]
                self.port = int(self.addr.rsplit(":", 1)[1])
                return

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def restart(self):
        """A new sidecar with the same flags on the SAME address (the old one must be gone)."""
        assert self.proc.poll() is not None, "stop it first"
        return Sidecar(*self.args, listen=self.addr)

    def terminate(self, timeout=15):
        """SIGTERM: drain, snapshot, exit. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)

    def kill(self):
        """A crash: SIGKILL, nothing drained or snapshotted."""
        self.proc.kill()
        self.proc.wait(timeout=15)

    def freeze(self):
        self.proc.send_signal(signal.SIGSTOP)

    def unread_bytes(self):
        """Bytes waiting, unread, in the sidecar's accepted sockets (from /proc/net/tcp)."""
        total = 0
        for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if int(local.split(":")[1], 16) == self.port and state == "01":  # ESTABLISHED
                total += int(queues.split(":")[1], 16)
        return total


@pytest.fixture
def sidecar():
    s = Sidecar()
    yield s
    if s.proc.poll() is None:
        assert s.terminate() == 0


@pytest.fixture
def direct(sidecar):
    """A blocking client straight to the sidecar (not through any proxy)."""
    with Client(sidecar.addr) as client:
        yield client


async def eventually(condition, timeout=10.0):
    """Waits for a condition that has no push signal (e.g. the sidecar's thread state)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Proxy:
    """A TCP proxy in front of the sidecar: it can drop one or both directions, and cut every
    connection (a real mid-stream disconnect). New connections after a cut are forwarded normally."""

    def __init__(self, upstream):
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.drop_requests = self.drop_responses = False
        self.connections = set()
        self.accepted = 0

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.addr = "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]
        return self

    def blackhole(self, requests=False, responses=False):
        self.drop_requests, self.drop_responses = requests, responses

    def cut(self):
        self.drop_requests = self.drop_responses = False
        for writer in list(self.connections):
            writer.transport.abort()
        self.connections.clear()

    async def _handle(self, client_reader, client_writer):
        self.accepted += 1
        server_reader, server_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        self.connections |= {client_writer, server_writer}

        async def pipe(reader, writer, dropped):
            try:
                while data := await reader.read(65536):
                    if not dropped():
                        writer.write(data)
                        await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client_reader, server_writer, lambda: self.drop_requests),
                             pipe(server_reader, client_writer, lambda: self.drop_responses))

    async def close(self):
        self.cut()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def proxy(sidecar):
    p = await Proxy(sidecar.addr).start()
    yield p
    await p.close()
