#!/usr/bin/env node
// A minimal chat-server loop that honours every threadwarden verdict.
//
//   (cd clients/node && npm ci)
//   threadwarden serve &                                   # listens on 127.0.0.1:50051
//   node examples/node/chat_server.mjs                     # type messages and commands
//   node examples/node/chat_server.mjs --script examples/chat_script.txt
//
// Every user message and every assistant reply goes to the sidecar on one Moderate stream:
// - CONTINUE: the (stand-in) model answers; with endConfirmationRequired it asks the user to
//   confirm that ending is permanent, and /confirm sends ConfirmEnd;
// - REDIRECT: the model refuses, following guidance(verdict); with warning(verdict) the user is
//   told that continuing may end the chat;
// - END: the thread is locked and the end notice is shown with its options: /new (new chat),
//   /edit N TEXT (branch from an earlier message: ForkThread), /feedback up|down [COMMENT];
// - crisis support, on any verdict: the message and the resources for the user's locale.
//
// A "[category=score]" prefix on a line stands in for your platform's own moderation model: it
// is sent as a signal. The model here is a stand-in that only shows where the guidance goes.

import { createReadStream } from 'node:fs';
import readline from 'node:readline';
import { parseArgs } from 'node:util';

// In your project: import { ... } from 'threadwarden-client';
import {
  DeadlineExceeded, EventRejected, Moderator, Unavailable, assistantMessage, confirmEnd, crisisSupport,
  endNotice, fork, isEnd, isRedirect, userMessage, warning,
} from '../../clients/node/index.js';

const OPTIONS = {
  USER_OPTION_NEW_CHAT: '/new to start a new chat',
  USER_OPTION_EDIT_AND_RETRY: '/edit N TEXT to edit an earlier message',
  USER_OPTION_FEEDBACK: '/feedback up|down to tell us what you think',
};
const LABEL = /^\[(\w+)=([0-9.]+)\]\s*/;

/** Stand-in for the model: a real server puts guidance(verdict) (and crisis.guidance) into the
 *  model's instructions for this turn. */
function modelReply(verdict, turn) {
  if (verdict && crisisSupport(verdict)) return "I'm really glad you told me. I'm here with you, and I'd like to keep talking.";
  if (verdict && isRedirect(verdict)) {
    let reply = "I can't help with that, but I'm happy to help with something related and safe.";
    if (warning(verdict)) reply += ' If you keep asking for this, I may have to end our conversation.';
    return reply;
  }
  if (verdict?.endConfirmationRequired) return 'Just to confirm: ending is permanent for this chat. Type /confirm to end it, or carry on.';
  return `Happy to help with that (answer to your message ${turn}).`;
}

/** One user's session: the current thread, its state in the UI, and the sidecar. */
class ChatServer {
  constructor(moderator, { tenant, locale, model }) {
    Object.assign(this, { m: moderator, tenant, locale, model, chats: 0 });
    this.newChat();
  }

  newChat(thread = null, turn = 0) {
    if (thread === null) thread = `chat-${++this.chats}`;
    Object.assign(this, { thread, turn, seq: 0, locked: false, confirmPending: false, lastEventId: null, edits: 0 });
  }

  ids() {
    this.seq += 1;
    return { threadId: this.thread, eventId: `${this.thread}-e${this.seq}`, tenantId: this.tenant, locale: this.locale, model: this.model };
  }

  /** The verdict, or null when the sidecar could not be asked (fail open: carry on). */
  async decide(event) {
    let verdict;
    try {
      verdict = await this.m.moderate(event);
    } catch (e) {
      if (e instanceof DeadlineExceeded || e instanceof Unavailable) {
        console.log(`[moderation unavailable: ${e.name}] carrying on`);
        return null;
      }
      if (e instanceof EventRejected) console.log(`[error] ${e.code}: ${e.detail}`);
      throw e;
    }
    this.lastEventId = event.eventId;
    this.show(verdict);
    return verdict;
  }

  show(verdict) {
    const crisis = crisisSupport(verdict);
    if (crisis) {
      console.log(`[support] ${crisis.message}`);
      for (const r of crisis.resources) {
        console.log(`  - ${r.name}: ${[r.phone && `call ${r.phone}`, r.sms, r.url, r.hours].filter(Boolean).join(', ')}`);
      }
    }
    if (warning(verdict)) console.log('[warning] Continuing with this may end the conversation.');
    if (isEnd(verdict)) {
      this.locked = true;
      const notice = endNotice(verdict);
      console.log(`[ended] ${notice.message}`);
      console.log(`[options] ${notice.options.map((o) => OPTIONS[o]).join('; ')}`);
    }
  }

  async message(text, signals) {
    if (this.locked) {
      console.log('[locked] This chat has ended: /new, /edit N TEXT or /feedback.');
      return;
    }
    console.log(`You: ${text}`);
    const verdict = await this.decide(userMessage({ ...this.ids(), text, signals }));
    if (verdict) {
      this.turn = verdict.thread.turn;
      this.confirmPending = verdict.endConfirmationRequired;
      if (isEnd(verdict)) return;
    }
    const reply = modelReply(verdict, this.turn);
    const checked = await this.decide(assistantMessage({ ...this.ids(), text: reply, refused: Boolean(verdict && isRedirect(verdict)) }));
    if (checked && isRedirect(checked)) console.log("[withheld] The assistant's reply was withheld; it will try again.");
    else if (!this.locked) console.log(`Assistant: ${reply}`);
  }

  async command(line) {
    const [name, ...words] = line.split(' ');
    if (name === '/confirm') {
      if (!this.confirmPending || this.locked) {
        console.log('[info] There is nothing to confirm.');
        return;
      }
      this.confirmPending = false;
      await this.decide(confirmEnd(this.ids()));
    } else if (name === '/new') {
      this.newChat();
      console.log(`[new chat] ${this.thread}`);
    } else if (name === '/edit') {
      const [n, ...textWords] = words;
      const text = textWords.join(' ');
      if (!/^\d+$/.test(n ?? '') || Number(n) < 1 || Number(n) > this.turn || !text) {
        console.log(`[info] Usage: /edit N TEXT, with N from 1 to ${this.turn}.`);
        return;
      }
      const parent = this.thread;
      this.edits += 1;
      const branch = `${parent}-edit${this.edits}`;
      // The branch starts from the parent's state before message N; the parent stays as it is.
      const verdict = await this.decide(fork({ ...this.ids(), threadId: branch, parentThreadId: parent, afterTurn: Number(n) - 1 }));
      if (verdict) {
        this.newChat(branch, verdict.thread.turn);
        console.log(`[branch] ${branch}: message ${n} of ${parent} edited`);
        await this.message(text, undefined);
      }
    } else if (name === '/feedback') {
      const [rating, ...comment] = words;
      if (!['up', 'down'].includes(rating) || this.lastEventId === null) {
        console.log('[info] Usage: /feedback up|down [COMMENT], after a verdict.');
        return;
      }
      await this.m.submitFeedback({
        threadId: this.thread, eventId: this.lastEventId, tenantId: this.tenant, comment: comment.join(' '),
        rating: rating === 'up' ? 'RATING_THUMBS_UP' : 'RATING_THUMBS_DOWN',
      });
      console.log(`[feedback] Thank you: thumbs ${rating} recorded.`);
    } else {
      console.log(`[info] Unknown command ${name}.`);
    }
  }

  async handle(raw) {
    let line = raw.trim();
    if (!line || line.startsWith('#')) return;
    if (line.startsWith('/')) {
      console.log(`> ${line}`);
      await this.command(line);
      return;
    }
    const signals = {};
    for (let label; (label = LABEL.exec(line));) {
      signals[label[1]] = Number(label[2]);
      line = line.slice(label[0].length);
    }
    await this.message(line, signals);
  }
}

const { values: args } = parseArgs({
  options: {
    target: { type: 'string', default: '127.0.0.1:50051' },
    script: { type: 'string' },
    tenant: { type: 'string', default: 'example' },
    locale: { type: 'string', default: 'en-GB' },
    model: { type: 'string', default: 'example-model' },
    deadline: { type: 'string', default: '2000' },
  },
});

const moderator = new Moderator(args.target, { deadlineMs: Number(args.deadline) });
const server = new ChatServer(moderator, args);
try {
  const input = args.script ? createReadStream(args.script, 'utf8') : process.stdin;
  for await (const line of readline.createInterface({ input, crlfDelay: Infinity })) await server.handle(line);
} finally {
  await moderator.close();
}
