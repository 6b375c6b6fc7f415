"""examples/python/chat_server.py replays examples/chat_script.txt against the real sidecar and
honours every verdict: warning, end with its options and a locked thread, feedback, an edit that
branches (ForkThread), a user-confirmed end, crisis resources and no end in crisis."""

import os
import subprocess
import sys

from conftest import ROOT


def test_example_chat_server_honours_every_verdict(sidecar, direct):
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python" / "chat_server.py"), "--target", sidecar.addr,
         "--script", str(ROOT / "examples" / "chat_script.txt"), "--tenant", "example-py"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    tags = [line.split("]")[0] + "]" for line in out if line.startswith("[")]
    assert tags == [
        "[warning]", "[ended]", "[options]", "[locked]", "[feedback]", "[branch]", "[ended]", "[options]",
        "[new chat]", "[support]", "[support]",
    ], run.stdout
    assert out.count("[options] /new to start a new chat; /edit N TEXT to edit an earlier message; "
                     "/feedback up|down to tell us what you think") == 2
    assert any(line.startswith("  - Samaritans: call 116 123") for line in out), "GB resources for en-GB"
    assert "[branch] chat-1-edit1: message 2 of chat-1 edited" in out
    assert out[-1].startswith("Assistant: "), "the crisis thread was never ended"

    # What the sidecar saw: the original locked, the branch ended by the user, the crisis thread open.
    original = direct.get_thread("chat-1", tenant_id="example-py")
    assert original.ended and original.harmful_turns == 4
    branch = direct.get_thread("chat-1-edit1", tenant_id="example-py")
    assert branch.ended and branch.turn == 3 and branch.harmful_turns == 0
    crisis = direct.get_thread("chat-2", tenant_id="example-py")
    assert crisis.crisis_active and not crisis.ended and crisis.turn == 3
