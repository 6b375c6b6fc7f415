// Real mid-stream disconnects: the Moderator re-opens its stream, re-sends what is un-answered,
// and every moderate() call resolves exactly once with the right verdict; the sidecar's thread
// summaries prove that nothing was counted twice.

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { Client, Moderator, isContinue, packageDefinition, userMessage, warning } from '../index.js';
import { Proxy, Sidecar, eventually } from './helpers.js';

const TENANT = 'node-reconnect';
const SECRET = 'my very private message text';
const harmful = (threadId, i) => userMessage({
  threadId, eventId: `h${i}`, text: `${SECRET} #${i}`, tenantId: TENANT, signals: { INDISCRIMINATE_WEAPONS: 0.95 },
});
const settledOnce = (promises) => {
  const counts = promises.map(() => 0);
  promises.forEach((p, i) => p.then(() => { counts[i] += 1; }, () => { counts[i] += 1; }));
  return counts;
};

test('cut connection after the sidecar decided: re-sent, answered as replays', async () => {
  const sidecar = await Sidecar.start();
  const proxy = await new Proxy(sidecar.addr).start();
  const direct = new Client(sidecar.addr);
  const logs = [];
  const logger = { info: (m) => logs.push(m), warn: (m) => logs.push(m) };
  const m = new Moderator(proxy.addr, { deadlineMs: 20000, logger });
  try {
    assert.ok(isContinue(await m.moderate(userMessage({ threadId: 'cut', eventId: 'h0', text: SECRET, tenantId: TENANT }))));
    proxy.blackhole({ responses: true });
    let answered = 0;
    const calls = [1, 2, 3, 4].map((i) => m.moderate(harmful('cut', i)).finally(() => { answered += 1; }));
    const counts = settledOnce(calls);
    await eventually(async () => (await direct.getThread({ threadId: 'cut', tenantId: TENANT })).turn === 5);
    assert.equal(answered, 0, 'decided by the sidecar, un-answered at the client');
    proxy.cut();
    const verdicts = await Promise.all(calls);
    assert.deepEqual(verdicts.map((v) => [v.action, warning(v), v.replayed]), [
      ['ACTION_REDIRECT', false, true], ['ACTION_REDIRECT', false, true],
      ['ACTION_REDIRECT', true, true], ['ACTION_END', false, true]]);
    assert.ok(m.reconnects >= 1 && proxy.accepted >= 2);
    await m.close();
    assert.deepEqual(counts, [1, 1, 1, 1], 'each call settled exactly once');
    const summary = await direct.getThread({ threadId: 'cut', tenantId: TENANT });
    assert.deepEqual([summary.turn, summary.harmfulTurns, summary.ended], [5, 4, true]);
    assert.ok(logs.some((l) => l.includes('re-sending')), 'the reconnect is logged');
    assert.ok(!logs.some((l) => l.includes(SECRET)), 'no message text in client logs');
  } finally {
    await m.close();
    direct.close();
    await proxy.close();
    assert.equal(await sidecar.terminate(), 0);
  }
});

test('sidecar crash and restart on the same port', async () => {
  const state = path.join(mkdtempSync(path.join(tmpdir(), 'tw-')), 'state.bin');
  const first = await Sidecar.start(['--state-file', state, '--grace', '1s']);
  const started = [first];
  const m = new Moderator(first.addr, { deadlineMs: 30000 });
  try {
    assert.ok(isContinue(await m.moderate(userMessage({ threadId: 'warm', eventId: 'w', text: 'hi', tenantId: TENANT }))));

    // 1. A crash with two events on the wire, unread by the (frozen) sidecar.
    first.freeze();
    let answered = 0;
    let calls = [1, 2].map((i) => m.moderate(harmful('crash', i)).finally(() => { answered += 1; }));
    // What the two requests take on the wire (gRPC framing + message), HTTP/2 frames aside.
    const { requestSerialize } = packageDefinition['threadwarden.v1.ModerationService'].Moderate;
    const onWire = [1, 2].reduce((n, i) => n + 5 + requestSerialize({ event: harmful('crash', i) }).length, 0);
    await eventually(() => first.unreadBytes() >= onWire);
    await first.kill();
    assert.equal(answered, 0);
    const second = await first.restart();
    started.push(second);
    const got = await Promise.all(calls);
    assert.deepEqual(got.map((v) => [v.action, v.replayed]), [['ACTION_REDIRECT', false], ['ACTION_REDIRECT', false]]);

    // 2. A graceful restart (SIGTERM: drain, snapshot), with events sent while it is down.
    assert.equal(await second.terminate(), 0);
    calls = [3, 4].map((i) => m.moderate(harmful('crash', i)));
    const third = await second.restart();
    started.push(third);
    got.push(...await Promise.all(calls));
    assert.ok(m.reconnects >= 2);
    await m.close();

    assert.deepEqual(got.map((v) => [v.action, warning(v)]), [
      ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', false], ['ACTION_REDIRECT', true], ['ACTION_END', false]]);
    assert.deepEqual(got.map((v) => v.thread.turn), [1, 2, 3, 4], 'each event counted once, across two restarts');
    assert.ok(got[3].thread.ended && got[3].thread.harmfulTurns === 4);
    assert.equal(third.addr, first.addr);
    assert.equal(await third.terminate(), 0);
  } finally {
    await m.close();
    for (const s of started) await s.kill();
  }
});
