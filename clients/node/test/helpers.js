// Test helpers: the real release binary on a free port (restartable on the same port), a TCP
// proxy that a test can stall or cut, and polling for conditions that have no push signal.

import { spawn } from 'node:child_process';
import { readFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BINARY = process.env.THREADWARDEN_BIN ?? path.join(ROOT, 'target', 'release', 'threadwarden');

export class Sidecar {
  /** Starts `threadwarden serve`; the address is read from the "serving" log line. */
  static start(args = [], listen = '127.0.0.1:0') {
    if (!existsSync(BINARY)) throw new Error(`build the release binary first: ${BINARY}`);
    const proc = spawn(BINARY, ['serve', '--listen', listen, ...args], {
      env: { ...process.env, RUST_LOG: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve(code ?? signal)));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the sidecar did not start serving')), 20000);
      proc.on('error', reject);
      readline.createInterface({ input: proc.stdout }).on('line', (line) => {
        let record;
        try { record = JSON.parse(line); } catch { return; }
        if (record.message === 'serving') {
          clearTimeout(timer);
          resolve(Object.assign(new Sidecar(), { proc, exited, args, addr: record.listen, port: Number(record.listen.split(':').pop()) }));
        }
      });
    });
  }

  get running() { return this.proc.exitCode === null && this.proc.signalCode === null; }

  /** A new sidecar with the same flags on the SAME address (this one must have exited). */
  restart() { return Sidecar.start(this.args, this.addr); }

  /** SIGTERM: drain, snapshot, exit; resolves with the exit code. */
  terminate() {
    if (this.running) this.proc.kill('SIGTERM');
    return this.exited;
  }

  /** A crash: SIGKILL, nothing drained or snapshotted. */
  kill() {
    if (this.running) this.proc.kill('SIGKILL');
    return this.exited;
  }

  freeze() { this.proc.kill('SIGSTOP'); }

  /** Bytes waiting, unread, in the sidecar's accepted sockets (from /proc/net/tcp). */
  unreadBytes() {
    let total = 0;
    for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 5) continue;
      if (parseInt(f[1].split(':')[1], 16) === this.port && f[3] === '01') total += parseInt(f[4].split(':')[1], 16);
    }
    return total;
  }
}

/** Waits for a condition (sync or async) that has no push signal. */
export async function eventually(condition, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A TCP proxy in front of the sidecar: it can drop one or both directions, and cut every
 *  connection (a real mid-stream disconnect). New connections after a cut are forwarded. */
export class Proxy {
  constructor(upstream) {
    const i = upstream.lastIndexOf(':');
    this.host = upstream.slice(0, i);
    this.port = Number(upstream.slice(i + 1));
    this.dropRequests = this.dropResponses = false;
    this.sockets = new Set();
    this.accepted = 0;
  }

  async start() {
    this.server = net.createServer((client) => {
      this.accepted += 1;
      const upstream = net.connect(this.port, this.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => this.sockets.delete(s));
      }
      client.on('data', (d) => { if (!this.dropRequests) upstream.write(d); });
      upstream.on('data', (d) => { if (!this.dropResponses) client.write(d); });
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.addr = `127.0.0.1:${this.server.address().port}`;
    return this;
  }

  blackhole({ requests = false, responses = false }) {
    this.dropRequests = requests;
    this.dropResponses = responses;
  }

  cut() {
    this.dropRequests = this.dropResponses = false;
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}
