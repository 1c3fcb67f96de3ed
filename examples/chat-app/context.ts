/**
 * What goes into a prompt: the conversation's path to its newest message,
 * and the messages it references (across conversations, by short ID),
 * within a character budget. The rule is the sidecar's BuildContext rule
 * (for conversations without pinned or summary messages), so both modes
 * give the same prompt:
 *  - the newest message always;
 *  - then the referenced messages, each if it still fits (in the order they
 *    are named: newest message first);
 *  - then the conversation from newest to oldest while it fits;
 *  - in the prompt: references oldest first, then the conversation.
 */
import type { Message } from './store';

export interface PromptContext {
  /** Referenced messages, oldest first. */
  references: Message[];
  /** The conversation: the kept part of the path, first message first. */
  conversation: Message[];
  /** Messages left out for the budget. */
  droppedNodes: number;
  totalChars: number;
}

/** The short IDs a path references, in the order they count for the budget: newest message first, each once. */
export function referencedShortIds(path: readonly Message[]): string[] {
  const seen = new Set<string>();
  for (let at = path.length - 1; at >= 0; at--) for (const shortId of path[at]!.refs) seen.add(shortId);
  return [...seen];
}

/**
 * The references in budget order (as `referencedShortIds` names them), each
 * message once, none that is on the path itself; short IDs no message
 * carries (a deleted conversation) are skipped.
 */
export function orderReferences(path: readonly Message[], found: ReadonlyMap<string, Message>): Message[] {
  const included = new Set(path.map((message) => message.id));
  const references: Message[] = [];
  for (const shortId of referencedShortIds(path)) {
    const message = found.get(shortId);
    if (message === undefined || included.has(message.id)) continue;
    included.add(message.id);
    references.push(message);
  }
  return references;
}

/** Cuts a path and its references (in budget order) to `maxChars` (0: no limit). */
export function selectWithinBudget(path: readonly Message[], references: readonly Message[], maxChars: number): PromptContext {
  const limit = maxChars || Number.POSITIVE_INFINITY;
  let used = 0;
  let first = path.length - 1;
  if (first >= 0) used += path[first]!.content.length;
  const kept: Message[] = [];
  for (const reference of references) {
    if (used + reference.content.length > limit) continue;
    used += reference.content.length;
    kept.push(reference);
  }
  while (first > 0 && used + path[first - 1]!.content.length <= limit) used += path[--first]!.content.length;
  const conversation = first < 0 ? [] : path.slice(first);
  return {
    references: kept.sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime()),
    conversation,
    droppedNodes: Math.max(0, first) + (references.length - kept.length),
    totalChars: used,
  };
}
