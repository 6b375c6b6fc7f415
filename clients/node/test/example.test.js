// examples/node/chat_server.mjs replays examples/chat_script.txt against the real sidecar and
// honours every verdict: warning, end with its options and a locked thread, feedback, an edit
// that branches (ForkThread), a user-confirmed end, crisis resources and no end in crisis.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

import { Client } from '../index.js';
import { ROOT, Sidecar } from './helpers.js';

test('the example chat server honours every verdict', async () => {
  const sidecar = await Sidecar.start();
  const direct = new Client(sidecar.addr);
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [
      path.join(ROOT, 'examples', 'node', 'chat_server.mjs'), '--target', sidecar.addr,
      '--script', path.join(ROOT, 'examples', 'chat_script.txt'), '--tenant', 'example-node',
    ], { timeout: 60000 });
    const out = stdout.trimEnd().split('\n');
    assert.deepEqual(out.filter((l) => l.startsWith('[')).map((l) => l.split(']')[0] + ']'), [
      '[warning]', '[ended]', '[options]', '[locked]', '[feedback]', '[branch]', '[ended]', '[options]',
      '[new chat]', '[support]', '[support]',
    ], stdout);
    assert.equal(out.filter((l) => l === '[options] /new to start a new chat; /edit N TEXT to edit an earlier message; '
      + '/feedback up|down to tell us what you think').length, 2);
    assert.ok(out.some((l) => l.startsWith('  - Samaritans: call 116 123')), 'GB resources for en-GB');
    assert.ok(out.includes('[branch] chat-1-edit1: message 2 of chat-1 edited'));
    assert.ok(out.at(-1).startsWith('Assistant: '), 'the crisis thread was never ended');

    // What the sidecar saw: the original locked, the branch ended by the user, the crisis thread open.
    const original = await direct.getThread({ threadId: 'chat-1', tenantId: 'example-node' });
    assert.ok(original.ended && original.harmfulTurns === 4);
    const branch = await direct.getThread({ threadId: 'chat-1-edit1', tenantId: 'example-node' });
    assert.deepEqual([branch.ended, branch.turn, branch.harmfulTurns], [true, 3, 0]);
    const crisis = await direct.getThread({ threadId: 'chat-2', tenantId: 'example-node' });
    assert.deepEqual([crisis.crisisActive, crisis.ended, crisis.turn], [true, false, 3]);
  } finally {
    direct.close();
    assert.equal(await sidecar.terminate(), 0);
  }
});
