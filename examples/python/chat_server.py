#!/usr/bin/env python3
"""A minimal chat-server loop that honours every threadwarden verdict.

    pip install ./clients/python
    threadwarden serve &                                   # listens on 127.0.0.1:50051
    python examples/python/chat_server.py                  # type messages and commands
    python examples/python/chat_server.py --script examples/chat_script.txt

Every user message and every assistant reply goes to the sidecar on one Moderate stream:
- CONTINUE: the (stand-in) model answers; with end_confirmation_required it asks the user to
  confirm that ending is permanent, and /confirm sends ConfirmEnd;
- REDIRECT: the model refuses, following verdict.guidance; with verdict.warning the user is told
  that continuing may end the chat;
- END: the thread is locked and the end notice is shown with its options: /new (new chat),
  /edit N TEXT (branch from an earlier message: ForkThread), /feedback up|down [COMMENT];
- crisis support, on any verdict: the message and the resources for the user's locale.

A "[category=score]" prefix on a line stands in for your platform's own moderation model: it is
sent as a signal. The model here is a stand-in that only shows where the guidance goes.
"""

import argparse
import asyncio
import re
import sys

from threadwarden_client import (
    DeadlineExceeded,
    EventRejected,
    Moderator,
    Rating,
    Unavailable,
    UserOption,
    assistant_message,
    confirm_end,
    fork,
    user_message,
)

OPTIONS = {
    UserOption.NEW_CHAT: "/new to start a new chat",
    UserOption.EDIT_AND_RETRY: "/edit N TEXT to edit an earlier message",
    UserOption.FEEDBACK: "/feedback up|down to tell us what you think",
}
LABEL = re.compile(r"^\[(\w+)=([0-9.]+)\]\s*")


def model_reply(verdict, turn):
    """Stand-in for the model: a real server puts verdict.guidance (and crisis.guidance) into
    the model's instructions for this turn."""
    if verdict is not None and verdict.crisis is not None:
        return "I'm really glad you told me. I'm here with you, and I'd like to keep talking."
    if verdict is not None and verdict.is_redirect:
        reply = "I can't help with that, but I'm happy to help with something related and safe."
        if verdict.warning:
            reply += " If you keep asking for this, I may have to end our conversation."
        return reply
    if verdict is not None and verdict.end_confirmation_required:
        return "Just to confirm: ending is permanent for this chat. Type /confirm to end it, or carry on."
    return f"Happy to help with that (answer to your message {turn})."


class ChatServer:
    """One user's session: the current thread, its state in the UI, and the sidecar."""

    def __init__(self, moderator, tenant, locale, model):
        self.m, self.tenant, self.locale, self.model = moderator, tenant, locale, model
        self.chats = 0
        self.new_chat()

    def new_chat(self, thread=None, turn=0):
        if thread is None:
            self.chats += 1
            thread = f"chat-{self.chats}"
        self.thread, self.turn, self.seq = thread, turn, 0
        self.locked = self.confirm_pending = False
        self.last_event_id = None
        self.edits = 0

    def ids(self):
        self.seq += 1
        return {"event_id": f"{self.thread}-e{self.seq}", "tenant_id": self.tenant, "locale": self.locale,
                "model": self.model}

    async def decide(self, event):
        """The verdict, or None when the sidecar could not be asked (fail open: carry on)."""
        try:
            verdict = await self.m.moderate(event)
        except (DeadlineExceeded, Unavailable) as e:
            print(f"[moderation unavailable: {type(e).__name__}] carrying on")
            return None
        except EventRejected as e:
            print(f"[error] {e.code}: {e.message}")
            raise
        self.last_event_id = event.event_id
        self.show(verdict)
        return verdict

    def show(self, verdict):
        if verdict.crisis is not None:
            print(f"[support] {verdict.crisis.message}")
            for r in verdict.crisis.resources:
                parts = [r.phone and f"call {r.phone}", r.sms, r.url, r.hours]
                print(f"  - {r.name}: " + ", ".join(p for p in parts if p))
        if verdict.warning:
            print("[warning] Continuing with this may end the conversation.")
        if verdict.is_end:
            self.locked = True
            print(f"[ended] {verdict.end_notice.message}")
            print("[options] " + "; ".join(OPTIONS[o] for o in verdict.end_options))

    async def message(self, text, signals):
        if self.locked:
            print("[locked] This chat has ended: /new, /edit N TEXT or /feedback.")
            return
        print(f"You: {text}")
        verdict = await self.decide(user_message(self.thread, text, signals=signals, **self.ids()))
        if verdict is not None:
            self.turn = verdict.thread.turn
            self.confirm_pending = verdict.end_confirmation_required
            if verdict.is_end:
                return
        reply = model_reply(verdict, self.turn)
        refused = verdict is not None and verdict.is_redirect
        checked = await self.decide(assistant_message(self.thread, reply, refused=refused, **self.ids()))
        if checked is not None and checked.is_redirect:
            print("[withheld] The assistant's reply was withheld; it will try again.")
        elif not self.locked:
            print(f"Assistant: {reply}")

    async def command(self, line):
        name, _, rest = line.partition(" ")
        if name == "/confirm":
            if not self.confirm_pending or self.locked:
                print("[info] There is nothing to confirm.")
                return
            self.confirm_pending = False
            await self.decide(confirm_end(self.thread, **self.ids()))
        elif name == "/new":
            self.new_chat()
            print(f"[new chat] {self.thread}")
        elif name == "/edit":
            n, _, text = rest.partition(" ")
            if not n.isdigit() or not 1 <= int(n) <= self.turn or not text:
                print(f"[info] Usage: /edit N TEXT, with N from 1 to {self.turn}.")
                return
            parent, self.edits = self.thread, self.edits + 1
            branch = f"{parent}-edit{self.edits}"
            # The branch starts from the parent's state before message N; the parent stays as it is.
            verdict = await self.decide(fork(branch, parent, int(n) - 1, **self.ids()))
            if verdict is not None:
                self.new_chat(branch, turn=verdict.thread.turn)
                print(f"[branch] {branch}: message {n} of {parent} edited")
                await self.message(text, None)
        elif name == "/feedback":
            rating, _, comment = rest.partition(" ")
            if rating not in ("up", "down") or self.last_event_id is None:
                print("[info] Usage: /feedback up|down [COMMENT], after a verdict.")
                return
            await self.m.submit_feedback(self.thread, self.last_event_id,
                                         Rating.THUMBS_UP if rating == "up" else Rating.THUMBS_DOWN,
                                         comment=comment, tenant_id=self.tenant)
            print(f"[feedback] Thank you: thumbs {rating} recorded.")
        else:
            print(f"[info] Unknown command {name}.")

    async def handle(self, line):
        line = line.strip()
        if not line or line.startswith("#"):
            return
        if line.startswith("/"):
            print(f"> {line}")
            await self.command(line)
            return
        signals = {}
        while (label := LABEL.match(line)):
            signals[label.group(1)] = float(label.group(2))
            line = line[label.end():]
        await self.message(line, signals)


async def lines(path):
    if path:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line
        return
    while (line := await asyncio.to_thread(sys.stdin.readline)):
        yield line


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the sidecar's address")
    parser.add_argument("--script", help="read the user's lines from this file instead of stdin")
    parser.add_argument("--tenant", default="example")
    parser.add_argument("--locale", default="en-GB")
    parser.add_argument("--model", default="example-model")
    parser.add_argument("--deadline", type=float, default=2.0, help="seconds to wait for a verdict")
    args = parser.parse_args()
    async with Moderator(args.target, deadline=args.deadline) as moderator:
        server = ChatServer(moderator, args.tenant, args.locale, args.model)
        async for line in lines(args.script):
            await server.handle(line)


if __name__ == "__main__":
    asyncio.run(main())
