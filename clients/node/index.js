// threadwarden-client: a Node client for the threadwarden moderation sidecar.
//
//   const moderator = new Moderator('127.0.0.1:50051');
//   const verdict = await moderator.moderate(userMessage({ threadId, eventId, text }));
//   if (isEnd(verdict)) { ... }
//   await moderator.close();
//
// Messages are plain objects in camelCase (as @grpc/proto-loader decodes them), enums are their
// proto names ('ACTION_END'). Types are in index.d.ts; the guide is docs/integration.md.

import { existsSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const PROTO_FILE = 'threadwarden/v1/moderation.proto';
const here = path.dirname(fileURLToPath(import.meta.url));
// The repository's proto/ when used in place; the copy that `npm pack` puts in the package.
const protoRoot = [path.join(here, '..', '..', 'proto'), path.join(here, 'proto')]
  .find((dir) => existsSync(path.join(dir, PROTO_FILE)));
if (!protoRoot) throw new Error(`threadwarden-client: ${PROTO_FILE} not found`);

export const packageDefinition = protoLoader.loadSync(PROTO_FILE, {
  includeDirs: [protoRoot],
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(packageDefinition).threadwarden.v1;
/** The raw generated service client constructor. */
export const ModerationServiceClient = v1.ModerationService;

// --- errors -------------------------------------------------------------------------------

export class ThreadwardenError extends Error {}

/** The sidecar could not decide this event; `code` is a stable reason, `message` names the field. */
export class EventRejected extends ThreadwardenError {
  constructor(code, message, eventId = '') {
    super(`${code}: ${message}`);
    this.name = 'EventRejected';
    this.code = code;
    this.detail = message;
    this.eventId = eventId;
  }
}

/** No verdict within the event's deadline; the event is no longer retried. */
export class DeadlineExceeded extends ThreadwardenError {
  constructor(message) {
    super(message);
    this.name = 'DeadlineExceeded';
    this.code = 'DEADLINE_EXCEEDED';
  }
}

/** The sidecar cannot be used: a non-retryable stream failure, or the client was closed. */
export class Unavailable extends ThreadwardenError {
  constructor(code, details = '') {
    super(details ? `${code}: ${details}` : code);
    this.name = 'Unavailable';
    this.code = code;
    this.details = details;
  }
}

const REJECTED = new Set(['INVALID_ARGUMENT', 'NOT_FOUND', 'FAILED_PRECONDITION', 'ALREADY_EXISTS', 'PERMISSION_DENIED']);
const RETRYABLE = new Set([
  grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED, grpc.status.ABORTED,
  grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.CANCELLED,
]);

function rpcError(err, eventId = '') {
  const code = grpc.status[err.code] ?? 'UNKNOWN';
  if (REJECTED.has(code)) return new EventRejected(code, err.details ?? '', eventId);
  if (code === 'DEADLINE_EXCEEDED') return new DeadlineExceeded(`no answer within the deadline${eventId ? ` for event ${eventId}` : ''}`);
  return new Unavailable(code, err.details ?? '');
}

// --- events -------------------------------------------------------------------------------

function base({ threadId, eventId, tenantId = '', model = '', locale = '', signals, signalSource = '', traceparent = '' }) {
  return {
    eventId: eventId || randomUUID(),
    threadId,
    tenantId,
    model,
    locale,
    traceparent,
    signals: Object.entries(signals ?? {}).map(([category, score]) => ({
      category: 'CATEGORY_' + category.toUpperCase().replace(/^CATEGORY_/, ''),
      score,
      source: signalSource,
    })),
  };
}

/** A user's message. Pass your own message id as `eventId` so that a retry reuses it.
 *  `signals`: your own classifier's labels, e.g. `{ SELF_HARM: 0.9 }`. */
export function userMessage({ text, ...rest }) {
  return { ...base(rest), userMessage: { text } };
}

/** The model's reply; `endConversationRequested`: the model called its end tool. */
export function assistantMessage({ text, refused = false, endConversationRequested = false, ...rest }) {
  return { ...base(rest), assistantMessage: { text, refused, endConversationRequested } };
}

/** The user edited an earlier message: `threadId` names the NEW branch, which starts from the
 *  parent's state as of `afterTurn` (to edit user message N, pass N - 1). */
export function fork({ parentThreadId, afterTurn, ...rest }) {
  return { ...base(rest), fork: { parentThreadId, afterTurn } };
}

/** The user pressed "yes, end this chat" after a verdict with endConfirmationRequired. */
export function confirmEnd(rest) {
  return { ...base(rest), confirmEnd: {} };
}

// --- verdict helpers (they follow `action`: in shadow mode `redirect` and `end` describe what
// enforcement would have done while `action` stays capped) --------------------------------------

export const isContinue = (v) => v.action === 'ACTION_CONTINUE';
/** The model must refuse and steer away, following `guidance(v)`. */
export const isRedirect = (v) => v.action === 'ACTION_REDIRECT';
/** Lock the thread and show `endNotice(v)`. */
export const isEnd = (v) => v.action === 'ACTION_END';
/** The model must tell the user that continuing may end the conversation. */
export const warning = (v) => isRedirect(v) && Boolean(v.redirect?.warning);
/** With a warning: a short user-facing text a chat UI may show as a banner, or null. */
export const warningNotice = (v) => (warning(v) && v.redirect?.userNotice) || null;
/** Guidance for the model on a REDIRECT, or on how to ask the user to confirm an end. */
export const guidance = (v) => (isRedirect(v) || v.endConfirmationRequired ? v.redirect?.guidance || null : null);
/** The notice to show when the thread ends ({ message, options }); null unless END. */
export const endNotice = (v) => (isEnd(v) ? v.end : null);
/** Crisis support to show (message, resources) and to pass the model (guidance), or null. */
export const crisisSupport = (v) => v.crisis ?? null;

// --- unary helpers --------------------------------------------------------------------------

const CHANNEL_OPTIONS = {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 2000,
};

/** Evaluate, GetThread and SubmitFeedback as promises. */
export class Client {
  constructor(target, { deadlineMs = 5000, metadata = {}, credentials, channelOptions = {} } = {}) {
    this.deadlineMs = deadlineMs;
    this.metadata = new grpc.Metadata();
    for (const [k, v] of Object.entries(metadata)) this.metadata.set(k, v);
    this.stub = new ModerationServiceClient(target, credentials ?? grpc.credentials.createInsecure(),
      { ...CHANNEL_OPTIONS, ...channelOptions });
  }

  #unary(method, request, timeoutMs, eventId) {
    const deadline = new Date(Date.now() + (timeoutMs ?? this.deadlineMs));
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata, { deadline }, (err, response) =>
        (err ? reject(rpcError(err, eventId)) : resolve(response)));
    });
  }

  /** The verdict for one event over the unary Evaluate RPC. */
  async evaluate(event, { timeoutMs } = {}) {
    return (await this.#unary('Evaluate', { event }, timeoutMs, event.eventId)).verdict;
  }

  /** The thread's summary (no message text), or null if the sidecar does not know it. */
  async getThread({ threadId, tenantId = '' }, { timeoutMs } = {}) {
    try {
      return (await this.#unary('GetThread', { threadId, tenantId }, timeoutMs)).thread;
    } catch (e) {
      if (e.code === 'NOT_FOUND') return null;
      throw e;
    }
  }

  /** Rates the verdict of `eventId`: rating 'RATING_THUMBS_UP' or 'RATING_THUMBS_DOWN'. */
  async submitFeedback({ threadId, eventId, rating, comment = '', tenantId = '' }, { timeoutMs } = {}) {
    await this.#unary('SubmitFeedback', { threadId, eventId, rating, comment, tenantId }, timeoutMs, eventId);
  }

  close() {
    this.stub.close();
  }
}

// --- the stream -----------------------------------------------------------------------------

const keyOf = (e) => JSON.stringify([e.tenantId ?? '', e.threadId ?? '', e.eventId ?? '']);

/**
 * Owns one bidirectional Moderate stream, multiplexing every thread of a chat server.
 *
 * `moderate(event)` resolves with the verdict for that event. If the stream breaks, it is
 * re-opened and every event still waiting is re-sent in order (event ids are idempotent on the
 * sidecar, so nothing is counted twice). Each call has a deadline (`deadlineMs` unless
 * `timeoutMs` is given), after which it rejects with DeadlineExceeded and is no longer retried.
 */
export class Moderator extends Client {
  #pending = new Map();
  #call = null;
  #inflight = [];
  #closing = false;
  #timer = null;
  #delay;
  #backoff;
  #logger;

  constructor(target, { backoffMs = [50, 2000], logger = null, ...options } = {}) {
    super(target, options);
    this.#backoff = backoffMs;
    this.#delay = backoffMs[0];
    this.#logger = logger;
    /** How many times the stream was re-opened after it broke. */
    this.reconnects = 0;
  }

  /** The verdict for `event`. Rejects with EventRejected (bad event: code and message),
   *  DeadlineExceeded (no verdict in time) or Unavailable (stream failed for good, or closed). */
  moderate(event, { timeoutMs } = {}) {
    if (this.#closing) return Promise.reject(new Unavailable('CANCELLED', 'the moderator is closed'));
    const key = keyOf(event);
    let entry = this.#pending.get(key);
    if (!entry) { // a duplicate of an event still waiting shares its verdict
      entry = { event, key, waiters: new Set(), done: false };
      entry.settled = new Promise((resolve) => { entry.onSettled = resolve; });
      this.#pending.set(key, entry);
      if (this.#call) this.#send(entry);
      else if (!this.#timer) this.#open();
    }
    const ms = timeoutMs ?? this.deadlineMs;
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      waiter.timer = setTimeout(() => {
        entry.waiters.delete(waiter);
        if (entry.waiters.size === 0 && !entry.done) {
          // Nobody waits any more: stop retrying it. If it was already sent the sidecar decides
          // it anyway; re-sending the same eventId later returns that verdict.
          entry.done = true;
          entry.onSettled();
          if (this.#pending.get(key) === entry) this.#pending.delete(key);
        }
        reject(new DeadlineExceeded(`no verdict for event ${event.eventId} within ${ms} ms`));
      }, ms);
      entry.waiters.add(waiter);
    });
  }

  #settle(entry, error, verdict) {
    entry.done = true;
    entry.onSettled();
    if (this.#pending.get(entry.key) === entry) this.#pending.delete(entry.key);
    for (const w of entry.waiters) {
      clearTimeout(w.timer);
      if (error) w.reject(error);
      else w.resolve(verdict);
    }
    entry.waiters.clear();
  }

  #open() {
    this.#timer = null;
    const metadata = this.metadata.clone();
    metadata.setOptions({ waitForReady: true });
    const call = this.stub.Moderate(metadata);
    const inflight = [];
    this.#call = call;
    this.#inflight = inflight;
    call.on('data', (response) => {
      this.#delay = this.#backoff[0];
      this.#resolve(response, inflight);
    });
    call.on('error', (err) => this.#lost(call, err));
    call.on('end', () => this.#lost(call, null));
    // Everything un-answered goes first, in the order it was submitted.
    for (const entry of this.#pending.values()) this.#send(entry);
  }

  #send(entry) {
    if (entry.done) return;
    this.#inflight.push(entry);
    this.#call.write({ event: entry.event });
  }

  #resolve(response, inflight) {
    // Responses come in request order, but match on the event id (and the verdict's thread)
    // anyway: the first in-flight event that fits is the one answered.
    // Every response carries the thread id (errors too); older sidecars only on verdicts.
    const threadId = response.threadId || (response.result === 'verdict' ? response.verdict.threadId : null);
    const i = inflight.findIndex((e) => e.event.eventId === response.eventId
      && (threadId === null || e.event.threadId === threadId));
    if (i < 0) {
      this.#logger?.warn?.(`threadwarden: a response matched no event in flight (eventId ${response.eventId})`);
      return;
    }
    const [entry] = inflight.splice(i, 1);
    if (entry.done) return;
    if (response.result === 'verdict') this.#settle(entry, null, response.verdict);
    else if (response.result === 'error') this.#settle(entry, new EventRejected(response.error.code, response.error.message, response.eventId));
    else this.#settle(entry, new EventRejected('UNKNOWN', 'the sidecar sent an empty result', response.eventId));
  }

  #lost(call, err) {
    if (this.#call !== call) return; // 'error' and 'end' can both fire
    this.#call = null;
    call.removeAllListeners('data');
    call.on('error', () => {}); // a late error on a dropped call must not crash the process
    call.cancel();
    if (this.#closing) return;
    if (err && !RETRYABLE.has(err.code)) {
      this.#logger?.warn?.(`threadwarden: moderate stream failed (${grpc.status[err.code]}); failing ${this.#pending.size} waiting calls`);
      this.#failAll(new Unavailable(grpc.status[err.code] ?? 'UNKNOWN', err.details ?? ''));
    } else {
      this.#logger?.info?.(`threadwarden: moderate stream broke (${err ? grpc.status[err.code] : 'ended'}); re-opening and re-sending ${this.#pending.size} un-answered events`);
    }
    this.#timer = setTimeout(() => {
      this.reconnects += 1;
      this.#open();
    }, this.#delay);
    this.#delay = Math.min(this.#delay * 2, this.#backoff[1]);
  }

  #failAll(error) {
    for (const entry of [...this.#pending.values()]) this.#settle(entry, error);
    this.#pending.clear();
  }

  /** Waits up to `timeoutMs` for un-answered events, then closes the stream and the channel.
   *  Calls still waiting reject with Unavailable. */
  async close({ timeoutMs = 5000 } = {}) {
    if (this.#closing) return;
    const waiting = [...this.#pending.values()].map((e) => e.settled);
    if (waiting.length) {
      let timer;
      await Promise.race([Promise.all(waiting), new Promise((r) => { timer = setTimeout(r, timeoutMs); })]);
      clearTimeout(timer);
    }
    this.#closing = true;
    clearTimeout(this.#timer);
    const call = this.#call;
    if (call) {
      // Half-close: the sidecar answers what it has and ends the stream cleanly.
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 1000);
        const done = () => { clearTimeout(timer); resolve(); };
        call.on('end', done);
        call.on('error', done);
        call.end();
      });
      call.cancel();
    }
    this.#failAll(new Unavailable('CANCELLED', 'the moderator was closed'));
    super.close();
  }
}
