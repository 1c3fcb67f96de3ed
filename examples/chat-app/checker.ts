/**
 * The correctness check of every turn: the load generator keeps its own
 * record of every message it wrote (committed) and every conversation it
 * deleted, and holds each built context against the context that record
 * calls for — every message of the path, within the budget, in order, with
 * the content it was written with, and the messages it references.
 */
import { orderReferences, selectWithinBudget, type PromptContext } from './context';
import type { Message } from './store';

/** What the load generator wrote, as it wrote it: the ground truth the checker trusts instead of either mode. */
export class GroundTruth {
  private readonly messages = new Map<string, Message>();
  private readonly byShortId = new Map<string, Message>();
  private readonly bySession = new Map<string, Message[]>();

  record(message: Message): void {
    this.messages.set(message.id, message);
    this.byShortId.set(message.shortId, message);
    let session = this.bySession.get(message.sessionId);
    if (session === undefined) this.bySession.set(message.sessionId, (session = []));
    session.push(message);
  }

  deleteSession(sessionId: string): void {
    for (const message of this.bySession.get(sessionId) ?? []) {
      this.messages.delete(message.id);
      this.byShortId.delete(message.shortId);
    }
    this.bySession.delete(sessionId);
  }

  get(id: string): Message | undefined {
    return this.messages.get(id);
  }

  session(sessionId: string): readonly Message[] {
    return this.bySession.get(sessionId) ?? [];
  }

  /** The path from the conversation's first message to `headId`. */
  path(headId: string): Message[] {
    const path: Message[] = [];
    for (let message = this.messages.get(headId); message !== undefined; message = message.parentId ? this.messages.get(message.parentId) : undefined) path.push(message);
    return path.reverse();
  }

  /** The context a prompt ending at `headId` must get. */
  expected(headId: string, maxChars: number): PromptContext {
    const path = this.path(headId);
    return selectWithinBudget(path, orderReferences(path, this.byShortId), maxChars);
  }
}

export interface CheckTotals {
  turns: number;
  /** Messages the contexts had to hold (conversation and references). */
  messagesExpected: number;
  /** Path messages the budget leaves in that a context lacked. */
  missingMessages: number;
  /** Referenced messages the budget leaves in that a context lacked. */
  missingReferences: number;
  /** Messages in the wrong order (the path from its first message; references oldest first). */
  outOfOrder: number;
  /** Messages in a context that do not belong there (another branch, a deleted conversation). */
  unexpected: number;
  /** Messages whose content, parent or depth differ from what was written. */
  wrongContent: number;
}

export interface ContextChecker {
  readonly totals: CheckTotals;
  /** The first failures, described (at most 20). */
  readonly failures: string[];
  /** Checks one built context; returns the number of faults found in it. */
  check(truth: GroundTruth, headId: string, maxChars: number, built: PromptContext, label: string): number;
}

const MAX_FAILURES_KEPT = 20;

export function emptyTotals(): CheckTotals {
  return { turns: 0, messagesExpected: 0, missingMessages: 0, missingReferences: 0, outOfOrder: 0, unexpected: 0, wrongContent: 0 };
}

export function addTotals(a: CheckTotals, b: CheckTotals): CheckTotals {
  const sum = emptyTotals();
  for (const key of Object.keys(sum) as (keyof CheckTotals)[]) sum[key] = a[key] + b[key];
  return sum;
}

export function faultsOf(totals: CheckTotals): number {
  return totals.missingMessages + totals.missingReferences + totals.outOfOrder + totals.unexpected + totals.wrongContent;
}

export function createChecker(): ContextChecker {
  const totals = emptyTotals();
  const failures: string[] = [];
  return {
    totals,
    failures,
    check(truth, headId, maxChars, built, label) {
      const want = truth.expected(headId, maxChars);
      totals.turns++;
      totals.messagesExpected += want.conversation.length + want.references.length;
      const fault = { missing: 0, missingRefs: 0, order: 0, unexpected: 0, content: 0 };

      const compare = (wanted: readonly Message[], got: readonly Message[], kind: 'conversation' | 'references') => {
        const position = new Map(wanted.map((message, at) => [message.id, at]));
        const seen = new Set<string>();
        let previous = -1;
        let previousTime = Number.NEGATIVE_INFINITY;
        for (const message of got) {
          const at = position.get(message.id);
          if (at === undefined || seen.has(message.id)) {
            fault.unexpected++;
            continue;
          }
          seen.add(message.id);
          if (kind === 'conversation' ? at < previous : message.createdAt.getTime() < previousTime) fault.order++;
          previous = at;
          previousTime = message.createdAt.getTime();
          const truthMessage = wanted[at]!;
          if (message.content !== truthMessage.content || message.parentId !== truthMessage.parentId || message.depth !== truthMessage.depth) fault.content++;
        }
        const absent = wanted.filter((message) => !seen.has(message.id)).length;
        if (kind === 'conversation') fault.missing += absent;
        else fault.missingRefs += absent;
      };
      compare(want.conversation, built.conversation, 'conversation');
      compare(want.references, built.references, 'references');

      totals.missingMessages += fault.missing;
      totals.missingReferences += fault.missingRefs;
      totals.outOfOrder += fault.order;
      totals.unexpected += fault.unexpected;
      totals.wrongContent += fault.content;
      const faults = fault.missing + fault.missingRefs + fault.order + fault.unexpected + fault.content;
      if (faults > 0 && failures.length < MAX_FAILURES_KEPT) {
        failures.push(
          `${label}: head ${headId}: ${fault.missing} missing, ${fault.missingRefs} missing references, ${fault.order} out of order, ${fault.unexpected} unexpected, ${fault.content} wrong content ` +
            `(wanted ${want.conversation.length}+${want.references.length} refs, got ${built.conversation.length}+${built.references.length} refs, dropped ${built.droppedNodes})`,
        );
      }
      return faults;
    },
  };
}
