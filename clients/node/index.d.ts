// Types for threadwarden-client (index.js). Messages are the proto's, as @grpc/proto-loader
// decodes them: camelCase fields, enums as their proto names, unset messages as null.
// test/types.test.js checks that every proto field appears here and type-checks a usage file.

import type { ChannelCredentials, ChannelOptions, ServiceClientConstructor } from '@grpc/grpc-js';
import type { PackageDefinition } from '@grpc/proto-loader';

// --- enums --------------------------------------------------------------------------------

export type ClassifierTier = 'CLASSIFIER_TIER_UNSPECIFIED' | 'CLASSIFIER_TIER_RULES' | 'CLASSIFIER_TIER_SEMANTIC' | 'CLASSIFIER_TIER_EXTERNAL';
export type ExternalStatus =
  | 'EXTERNAL_STATUS_UNSPECIFIED' | 'EXTERNAL_STATUS_SKIPPED' | 'EXTERNAL_STATUS_AGREED'
  | 'EXTERNAL_STATUS_DISAGREED' | 'EXTERNAL_STATUS_END_VETOED' | 'EXTERNAL_STATUS_TIMEOUT'
  | 'EXTERNAL_STATUS_BREAKER_OPEN' | 'EXTERNAL_STATUS_OVERLOADED' | 'EXTERNAL_STATUS_CONNECT_ERROR'
  | 'EXTERNAL_STATUS_HTTP_ERROR' | 'EXTERNAL_STATUS_PARSE_ERROR';
export type Action = 'ACTION_UNSPECIFIED' | 'ACTION_CONTINUE' | 'ACTION_REDIRECT' | 'ACTION_END';
export type Reason =
  | 'REASON_UNSPECIFIED' | 'REASON_BENIGN' | 'REASON_HARMFUL_REQUEST' | 'REASON_ABUSE' | 'REASON_CRISIS'
  | 'REASON_PERSISTENT_HARM' | 'REASON_PERSISTENT_ABUSE' | 'REASON_USER_REQUESTED'
  | 'REASON_MODEL_REQUESTED' | 'REASON_ALREADY_ENDED' | 'REASON_ASSISTANT_OUTPUT';
export type Category =
  | 'CATEGORY_UNSPECIFIED' | 'CATEGORY_CHILD_SEXUAL_EXPLOITATION' | 'CATEGORY_INDISCRIMINATE_WEAPONS'
  | 'CATEGORY_VIOLENT_EXTREMISM' | 'CATEGORY_VIOLENT_CRIME' | 'CATEGORY_CYBER_ATTACK' | 'CATEGORY_ABUSE'
  | 'CATEGORY_HATE' | 'CATEGORY_SEXUAL' | 'CATEGORY_SELF_HARM' | 'CATEGORY_HARM_TO_OTHERS';
export type CrisisKind =
  | 'CRISIS_KIND_UNSPECIFIED' | 'CRISIS_KIND_SELF_HARM' | 'CRISIS_KIND_HARM_TO_OTHERS' | 'CRISIS_KIND_THIRD_PARTY';
export type UserOption =
  | 'USER_OPTION_UNSPECIFIED' | 'USER_OPTION_NEW_CHAT' | 'USER_OPTION_EDIT_AND_RETRY' | 'USER_OPTION_FEEDBACK';
export type Rating = 'RATING_UNSPECIFIED' | 'RATING_THUMBS_UP' | 'RATING_THUMBS_DOWN';

/** A category name without its prefix, in either case: 'SELF_HARM', 'self_harm'. */
export type CategoryName = Exclude<Category, 'CATEGORY_UNSPECIFIED'> extends `CATEGORY_${infer N}` ? N | Lowercase<N> : never;

// --- messages -----------------------------------------------------------------------------

export interface Signal {
  category: Category;
  score: number;
  source: string;
}

export interface UserMessage {
  text: string;
}

export interface AssistantMessage {
  text: string;
  refused: boolean;
  endConversationRequested: boolean;
}

export interface ForkThread {
  parentThreadId: string;
  afterTurn: number;
}

export interface ConfirmEnd {}

interface EventBase {
  eventId: string;
  threadId: string;
  tenantId?: string;
  model?: string;
  locale?: string;
  signals?: Signal[];
  /** W3C trace context of this event; the call's `traceparent` metadata is used when empty. */
  traceparent?: string;
}

/** One event; exactly one payload field is set. */
export type ConversationEvent = EventBase & (
  | { userMessage: UserMessage }
  | { assistantMessage: AssistantMessage }
  | { fork: ForkThread }
  | { confirmEnd: ConfirmEnd }
);

export interface CategoryScore {
  category: Category;
  score: number;
}

export interface Redirect {
  guidance: string;
  warning: boolean;
  /** With `warning`: a short user-facing notice a chat UI may show as a banner. */
  userNotice: string;
}

export interface EndNotice {
  message: string;
  options: UserOption[];
}

export interface CrisisResource {
  name: string;
  phone: string;
  sms: string;
  url: string;
  hours: string;
  country: string;
}

export interface CrisisSupport {
  kind: CrisisKind;
  message: string;
  resources: CrisisResource[];
  guidance: string;
}

export interface ThreadSummary {
  turn: number;
  harmfulTurns: number;
  redirects: number;
  warned: boolean;
  ended: boolean;
  crisisActive: boolean;
  /** Crisis active, or a crisis score above the suspect threshold: never ended by escalation or the model. */
  crisisSuspected: boolean;
  /** Harmful and abusive user turns the assistant was exposed to on the thread; never reset. */
  exposures: number;
}

export interface Verdict {
  threadId: string;
  action: Action;
  reason: Reason;
  categories: CategoryScore[];
  /** Also set in shadow mode for a would-be redirect: use guidance()/warning(), which follow action. */
  redirect: Redirect | null;
  /** Also set in shadow mode for a would-be END: use endNotice(), which follows action. */
  end: EndNotice | null;
  crisis: CrisisSupport | null;
  thread: ThreadSummary;
  enforced: boolean;
  shadowAction: Action;
  endConfirmationRequired: boolean;
  endDenied: boolean;
  policyVersion: string;
  truncated: boolean;
  replayed: boolean;
  endDeniedDetail: string;
  /** Decided from the sidecar's local copy because the shared state store did not answer. */
  degraded: boolean;
  /** The classifier tiers this verdict was decided on (empty for events without text). */
  tiers: ClassifierTier[];
  /** What the external guard model did on this event. */
  external: ExternalStatus;
}

export interface EventError {
  code: string;
  message: string;
}

// Request/response messages of the raw service, for use with ModerationServiceClient.
export interface ModerateRequest { event: ConversationEvent }
export interface ModerateResponse { eventId: string; threadId: string; result?: 'verdict' | 'error'; verdict?: Verdict | null; error?: EventError | null }
export interface EvaluateRequest { event: ConversationEvent }
export interface EvaluateResponse { verdict: Verdict }
export interface GetThreadRequest { tenantId: string; threadId: string }
export interface GetThreadResponse { thread: ThreadSummary }
export interface SubmitFeedbackRequest { tenantId: string; threadId: string; eventId: string; rating: Rating; comment: string }
export interface SubmitFeedbackResponse {}

// --- errors -------------------------------------------------------------------------------

export class ThreadwardenError extends Error {}

/** The sidecar could not decide this event (bad input, unknown parent thread, ...). */
export class EventRejected extends ThreadwardenError {
  constructor(code: string, message: string, eventId?: string);
  /** 'INVALID_ARGUMENT' | 'NOT_FOUND' | 'FAILED_PRECONDITION' | 'ALREADY_EXISTS' | 'PERMISSION_DENIED' */
  readonly code: string;
  /** The sidecar's explanation, naming the offending field. */
  readonly detail: string;
  readonly eventId: string;
}

/** No verdict within the event's deadline; the event is no longer retried. */
export class DeadlineExceeded extends ThreadwardenError {
  constructor(message: string);
  readonly code: 'DEADLINE_EXCEEDED';
}

/** The sidecar cannot be used (non-retryable stream failure, or the client was closed). */
export class Unavailable extends ThreadwardenError {
  constructor(code: string, details?: string);
  /** The gRPC status name, e.g. 'UNAUTHENTICATED', 'CANCELLED'. */
  readonly code: string;
  readonly details: string;
}

// --- events -------------------------------------------------------------------------------

export interface EventOptions {
  threadId: string;
  /** Your own message id, so that a retry reuses it; a random UUID when absent. */
  eventId?: string;
  tenantId?: string;
  model?: string;
  /** BCP-47, e.g. 'en-GB': picks the crisis resources. */
  locale?: string;
  /** Your own classifier's labels, merged with the sidecar's (maximum per category). */
  signals?: Partial<Record<CategoryName, number>>;
  signalSource?: string;
  /** W3C trace context ("00-<trace-id>-<span-id>-<flags>") to join the event's span to. */
  traceparent?: string;
}

export function userMessage(options: EventOptions & { text: string }): ConversationEvent & { userMessage: UserMessage };
export function assistantMessage(
  options: EventOptions & { text: string; refused?: boolean; endConversationRequested?: boolean },
): ConversationEvent & { assistantMessage: AssistantMessage };
export function fork(
  options: Omit<EventOptions, 'signals' | 'signalSource'> & { parentThreadId: string; afterTurn: number },
): ConversationEvent & { fork: ForkThread };
export function confirmEnd(options: Omit<EventOptions, 'signals' | 'signalSource'>): ConversationEvent & { confirmEnd: ConfirmEnd };

// --- verdict helpers ----------------------------------------------------------------------

export function isContinue(v: Verdict): boolean;
export function isRedirect(v: Verdict): boolean;
export function isEnd(v: Verdict): v is Verdict & { action: 'ACTION_END'; end: EndNotice };
export function warning(v: Verdict): boolean;
/** With a warning: a short user-facing text a chat UI may show as a banner, or null. */
export function warningNotice(v: Verdict): string | null;
export function guidance(v: Verdict): string | null;
export function endNotice(v: Verdict): EndNotice | null;
export function crisisSupport(v: Verdict): CrisisSupport | null;

// --- clients ------------------------------------------------------------------------------

export interface ClientOptions {
  /** Default deadline of each call, in ms (5000). */
  deadlineMs?: number;
  /** Sent with every call, e.g. an authorization token. */
  metadata?: Record<string, string>;
  /** Insecure (plaintext) by default: the sidecar listens on loopback. */
  credentials?: ChannelCredentials;
  channelOptions?: ChannelOptions;
}

export interface CallOptions {
  timeoutMs?: number;
}

export class Client {
  constructor(target: string, options?: ClientOptions);
  readonly deadlineMs: number;
  evaluate(event: ConversationEvent, options?: CallOptions): Promise<Verdict>;
  getThread(thread: { threadId: string; tenantId?: string }, options?: CallOptions): Promise<ThreadSummary | null>;
  submitFeedback(
    feedback: { threadId: string; eventId: string; rating: Rating; comment?: string; tenantId?: string },
    options?: CallOptions,
  ): Promise<void>;
  close(): void;
}

export interface Logger {
  info?(message: string): void;
  warn?(message: string): void;
}

export interface ModeratorOptions extends ClientOptions {
  /** Delay before re-opening a broken stream: [first, max] in ms, doubling ([50, 2000]). */
  backoffMs?: [number, number];
  /** Reconnects and anomalies are logged here (ids and codes only, never message text). */
  logger?: Logger | null;
}

export class Moderator extends Client {
  constructor(target: string, options?: ModeratorOptions);
  /** How many times the stream was re-opened after it broke. */
  readonly reconnects: number;
  moderate(event: ConversationEvent, options?: CallOptions): Promise<Verdict>;
  close(options?: CallOptions): Promise<void>;
}

export const packageDefinition: PackageDefinition;
export const ModerationServiceClient: ServiceClientConstructor;
