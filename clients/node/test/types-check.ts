// Type-checked (never run) by test/types.test.js: typical use of the client from TypeScript.
import {
  Client, DeadlineExceeded, EventRejected, Moderator, assistantMessage, confirmEnd, crisisSupport, endNotice,
  fork, guidance, isEnd, userMessage, warning,
  type CrisisResource, type ThreadSummary, type UserOption, type Verdict,
} from '../index.js';

async function turn(moderator: Moderator, threadId: string, text: string): Promise<string[]> {
  const shown: string[] = [];
  try {
    const verdict: Verdict = await moderator.moderate(
      userMessage({ threadId, eventId: 'm1', text, locale: 'en-GB', signals: { SELF_HARM: 0.9, hate: 0.1 } }),
      { timeoutMs: 2000 });
    const crisis = crisisSupport(verdict);
    if (crisis) crisis.resources.forEach((r: CrisisResource) => shown.push(`${r.name} ${r.phone}`));
    if (warning(verdict)) shown.push('warning');
    if (isEnd(verdict)) {
      const options: UserOption[] = verdict.end.options;
      shown.push(verdict.end.message, ...options);
    }
    const steer: string | null = guidance(verdict);
    if (steer) shown.push(steer);
    const notice = endNotice(verdict);
    if (notice) shown.push(notice.message);
    const turnNo: number = verdict.thread.turn;
    shown.push(String(turnNo), verdict.action, verdict.reason, verdict.shadowAction);
  } catch (e) {
    if (e instanceof EventRejected) shown.push(e.code, e.detail, e.eventId);
    else if (e instanceof DeadlineExceeded) shown.push(e.code);
    else throw e;
  }
  await moderator.moderate(assistantMessage({ threadId, text: 'Hi', refused: false, endConversationRequested: true }));
  await moderator.moderate(fork({ threadId: `${threadId}-b`, parentThreadId: threadId, afterTurn: 0 }));
  await moderator.moderate(confirmEnd({ threadId }));
  // @ts-expect-error: not a category
  userMessage({ threadId, text, signals: { NOT_A_CATEGORY: 1 } });
  // @ts-expect-error: a fork carries no text
  fork({ threadId, parentThreadId: 'p', afterTurn: 0, text: 'x' });
  return shown;
}

async function unary(client: Client): Promise<ThreadSummary | null> {
  await client.submitFeedback({ threadId: 't', eventId: 'e', rating: 'RATING_THUMBS_DOWN' });
  // @ts-expect-error: not a rating
  await client.submitFeedback({ threadId: 't', eventId: 'e', rating: 'RATING_MEH' });
  return client.getThread({ threadId: 't' });
}

export { turn, unary };
export const moderator = new Moderator('127.0.0.1:50051', { deadlineMs: 2000, backoffMs: [50, 1000], logger: console });
