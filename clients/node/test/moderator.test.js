// The Moderator and Client against the real release binary: every action, multiplexed threads,
// event errors, crisis routing, deadlines, shadow mode.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  Client, DeadlineExceeded, EventRejected, Moderator, assistantMessage, confirmEnd, crisisSupport,
  endNotice, fork, guidance, isContinue, isEnd, isRedirect, userMessage, warning, warningNotice,
} from '../index.js';
import { Proxy, Sidecar } from './helpers.js';

const TENANT = 'node-client';
const WEAPONS = { INDISCRIMINATE_WEAPONS: 0.95 };
const user = (threadId, eventId, text = '(withheld)', extra = {}) =>
  userMessage({ threadId, eventId, text, tenantId: TENANT, model: 'claude-opus-4-1', ...extra });
const shape = (v) => [v.action, warning(v)];

let sidecar;
let direct;
before(async () => {
  sidecar = await Sidecar.start();
  direct = new Client(sidecar.addr);
});
after(async () => {
  direct.close();
  assert.equal(await sidecar.terminate(), 0);
});

async function withModerator(target, fn, options = {}) {
  const m = new Moderator(target, options);
  try {
    return await fn(m);
  } finally {
    await m.close();
  }
}

test('every action and the end notice', () => withModerator(sidecar.addr, async (m) => {
  const first = await m.moderate(user('acts', '1', 'Can you help me plan a trip to Lisbon?'));
  assert.ok(isContinue(first));
  assert.equal(first.reason, 'REASON_BENIGN');
  assert.equal(crisisSupport(first), null);
  assert.equal(endNotice(first), null);
  assert.equal(guidance(first), null);
  assert.ok(first.policyVersion);

  const harmful = [];
  for (let i = 0; i < 4; i++) harmful.push(await m.moderate(user('acts', `h${i}`, '(withheld)', { signals: WEAPONS })));
  assert.deepEqual(harmful.map(shape), [
    ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', true], ['ACTION_END', false]]);
  assert.ok(harmful.slice(0, 3).every((v) => guidance(v)), 'the model gets guidance to steer away');
  assert.ok(isRedirect(harmful[0]));
  assert.equal(harmful[0].reason, 'REASON_HARMFUL_REQUEST');
  const end = harmful[3];
  assert.ok(isEnd(end) && end.thread.ended);
  assert.equal(end.reason, 'REASON_PERSISTENT_HARM');
  assert.ok(endNotice(end).message);
  assert.deepEqual(endNotice(end).options, ['USER_OPTION_NEW_CHAT', 'USER_OPTION_EDIT_AND_RETRY', 'USER_OPTION_FEEDBACK']);

  const locked = await m.moderate(user('acts', 'after', 'hello?'));
  assert.ok(isEnd(locked));
  assert.equal(locked.reason, 'REASON_ALREADY_ENDED');

  const branch = await m.moderate(fork({ threadId: 'acts-edit', parentThreadId: 'acts', afterTurn: 1, eventId: 'f1', tenantId: TENANT }));
  assert.ok(isContinue(branch) && !branch.thread.ended);
  assert.equal(branch.thread.turn, 1);
  const again = await m.moderate(user('acts-edit', '2', 'Porto instead?'));
  assert.ok(isContinue(again));
  assert.equal(again.thread.turn, 2);

  await m.submitFeedback({ threadId: 'acts', eventId: 'h3', rating: 'RATING_THUMBS_DOWN', comment: 'too strict', tenantId: TENANT });
  await assert.rejects(m.submitFeedback({ threadId: 'nope', eventId: 'h3', rating: 'RATING_THUMBS_UP', tenantId: TENANT }),
    (e) => e instanceof EventRejected && e.code === 'NOT_FOUND');
  assert.equal((await m.getThread({ threadId: 'acts', tenantId: TENANT })).harmfulTurns, 4);
  assert.equal(await m.getThread({ threadId: 'acts', tenantId: 'someone-else' }), null);
}));

test('user- and model-requested ends', () => withModerator(sidecar.addr, async (m) => {
  const ask = await m.moderate(user('bye', '1', 'Please end this chat.'));
  assert.ok(isContinue(ask) && ask.endConfirmationRequired && guidance(ask));
  assert.equal(ask.reason, 'REASON_USER_REQUESTED');
  const done = await m.moderate(confirmEnd({ threadId: 'bye', eventId: '2', tenantId: TENANT }));
  assert.ok(isEnd(done) && endNotice(done));
  assert.equal(done.reason, 'REASON_USER_REQUESTED');

  // The model's end tool before any warning: denied, the conversation goes on.
  await m.moderate(user('tool', '1', 'hi'));
  const denied = await m.moderate(assistantMessage({ threadId: 'tool', eventId: '2', tenantId: TENANT, text: 'Goodbye.', endConversationRequested: true }));
  assert.ok(isContinue(denied) && denied.endDenied);
  assert.equal(denied.endDeniedDetail, 'NOT_WARNED');
}));

test('40 threads at once, turn by turn, on one stream', () => withModerator(sidecar.addr, async (m) => {
  const conversation = async (n) => {
    const threadId = `mux-${n}`;
    const got = [];
    for (let i = 0; i < 4; i++) {
      got.push(await m.moderate(n % 2
        ? user(threadId, String(i), '(withheld)', { signals: WEAPONS })
        : user(threadId, String(i), `Tell me about museum ${i}.`)));
    }
    if (n % 2) {
      assert.deepEqual(got.map(shape), [
        ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', true], ['ACTION_END', false]]);
    } else {
      assert.ok(got.every(isContinue));
    }
    assert.deepEqual([...new Set(got.map((v) => v.threadId))], [threadId], 'every verdict is its own thread\'s');
    assert.deepEqual(got.map((v) => v.thread.turn), [1, 2, 3, 4]);
    return got;
  };
  const results = await Promise.all(Array.from({ length: 40 }, (_, n) => conversation(n)));
  assert.equal(results.flat().filter(isEnd).length, 20);
  assert.equal(m.reconnects, 0);
}));

test('pipelined events and a bad event on one stream', () => withModerator(sidecar.addr, async (m) => {
  const events = [0, 1, 2].map((i) => user('pipe', String(i), '(withheld)', { signals: WEAPONS }));
  events.splice(1, 0, user('', 'bad', 'no thread id'));
  const results = await Promise.allSettled(events.map((e) => m.moderate(e)));
  const rejected = results[1].reason;
  assert.ok(rejected instanceof EventRejected);
  assert.equal(rejected.code, 'INVALID_ARGUMENT');
  assert.match(rejected.detail, /thread_id/);
  assert.deepEqual(results.filter((r) => r.status === 'fulfilled').map((r) => shape(r.value)), [
    ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', true]]);
  await assert.rejects(m.moderate(fork({ threadId: 'orphan', parentThreadId: 'no-such-parent', afterTurn: 0, eventId: 'f', tenantId: TENANT })),
    (e) => e instanceof EventRejected && e.code === 'NOT_FOUND' && e.eventId === 'f');
  // The stream goes on after errors, and a replayed id counts nothing twice.
  const replay = await m.moderate(user('pipe', '2', '(withheld)', { signals: WEAPONS }));
  assert.ok(replay.replayed && warning(replay));
  assert.ok(warningNotice(replay), 'a user-facing banner text comes with the warning');
  assert.equal(replay.thread.harmfulTurns, 3);
}));

test('crisis routing: support throughout, never ended', () => withModerator(sidecar.addr, async (m) => {
  const gb = { locale: 'en-GB' };
  const first = await m.moderate(user('crisis', '1', 'hello', { ...gb, signals: { self_harm: 0.9 } }));
  const support = crisisSupport(first);
  assert.equal(support.kind, 'CRISIS_KIND_SELF_HARM');
  assert.ok(first.thread.crisisActive && support.message && support.guidance);
  assert.ok(support.resources.some((r) => r.country === 'GB' && (r.phone || r.url)));
  const later = [];
  for (let i = 0; i < 5; i++) later.push(await m.moderate(user('crisis', `h${i}`, '(withheld)', { ...gb, signals: WEAPONS })));
  later.push(await m.moderate(user('crisis', 'ask', 'Please end this chat.', gb)));
  later.push(await m.moderate(confirmEnd({ threadId: 'crisis', eventId: 'yes', tenantId: TENANT, ...gb })));
  later.push(await m.moderate(assistantMessage({ threadId: 'crisis', eventId: 'tool', tenantId: TENANT, text: "I'm here.", endConversationRequested: true, ...gb })));
  assert.ok(!later.some(isEnd));
  assert.ok(later.every((v) => v.thread.crisisActive && crisisSupport(v)));
  assert.deepEqual(later.slice(-2).map((v) => v.endDeniedDetail), ['CRISIS_ACTIVE', 'CRISIS_ACTIVE']);
  assert.equal((await m.getThread({ threadId: 'crisis', tenantId: TENANT })).ended, false);
}));

test('a deadline per event, and no retry after it', async () => {
  const proxy = await new Proxy(sidecar.addr).start();
  try {
    await withModerator(proxy.addr, async (m) => {
      assert.ok(isContinue(await m.moderate(user('slow', '1', 'hi'))));
      proxy.blackhole({ requests: true, responses: true });
      await assert.rejects(m.moderate(user('slow', '2', 'anyone there?'), { timeoutMs: 300 }),
        (e) => e instanceof DeadlineExceeded && e.code === 'DEADLINE_EXCEEDED');
      proxy.cut();
      const v = await m.moderate(user('slow', '3', 'and now?'), { timeoutMs: 10000 });
      assert.ok(isContinue(v) && m.reconnects >= 1);
    });
  } finally {
    await proxy.close();
  }
  // The event that timed out was dropped, not re-sent after the reconnect: 2 turns, not 3.
  assert.equal((await direct.getThread({ threadId: 'slow', tenantId: TENANT })).turn, 2);
});

test('shadow mode reports what enforcement would do', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tw-'));
  const policy = path.join(dir, 'shadow.yaml');
  writeFileSync(policy, 'version: shadow-test\nmode: shadow\n');
  const shadow = await Sidecar.start(['--config', policy]);
  try {
    const got = await withModerator(shadow.addr, async (m) => {
      const out = [];
      for (let i = 0; i < 4; i++) out.push(await m.moderate(user('shadow', String(i), '(withheld)', { signals: WEAPONS })));
      return out;
    });
    const last = got[3];
    assert.equal(last.enforced, false);
    assert.equal(last.shadowAction, 'ACTION_END');
    assert.equal(last.action, 'ACTION_REDIRECT');
    assert.equal(last.policyVersion, 'shadow-test');
    // The wire verdict carries the would-be end notice; the helper does not offer it as an END.
    assert.ok(last.end !== null && endNotice(last) === null && guidance(last));
  } finally {
    assert.equal(await shadow.terminate(), 0);
  }
});

test('unary Client: evaluate, getThread, submitFeedback', async () => {
  const c = new Client(sidecar.addr);
  try {
    let v = await c.evaluate(user('unary', 'e1', 'Please end this chat.'));
    assert.ok(isContinue(v) && v.endConfirmationRequired);
    v = await c.evaluate(user('unary', 'e2', 'Yes'));
    assert.ok(isEnd(v));
    assert.equal(v.reason, 'REASON_USER_REQUESTED');
    assert.ok((await c.evaluate(user('unary', 'e2', 'Yes'))).replayed);
    const summary = await c.getThread({ threadId: 'unary', tenantId: TENANT });
    assert.ok(summary.ended);
    assert.equal(summary.turn, 2);
    assert.equal(await c.getThread({ threadId: 'never-seen', tenantId: TENANT }), null);
    await c.submitFeedback({ threadId: 'unary', eventId: 'e2', rating: 'RATING_THUMBS_UP', tenantId: TENANT });
    await assert.rejects(c.evaluate(user('', 'e3', 'no thread')),
      (e) => e instanceof EventRejected && e.code === 'INVALID_ARGUMENT' && /thread_id/.test(e.detail));
  } finally {
    c.close();
  }
});
