import type { NodeRecord } from '../model/node';
import type { TokenizerName } from '../model/tokenizer';
import type { TokenCounter } from './ports';

/**
 * The node's tokens under the tokenizer when they are known without
 * counting: the application's own count when it holds for this tokenizer
 * (used as given), else a count kept from an earlier context.
 */
export function knownTokens(node: NodeRecord, tokenizer: TokenizerName): number | undefined {
  if (node.tokenCount && (node.tokenCountTokenizer === undefined || node.tokenCountTokenizer === '' || node.tokenCountTokenizer === tokenizer)) return node.tokenCount;
  return node.tokens?.[tokenizer];
}

/**
 * Token counts, each computed once per node and tokenizer and kept on the
 * node (L1 keeps the node, so the count lives as long as the node is
 * cached). Concurrent contexts that need the same uncounted nodes share one
 * count of them.
 */
export class TokenCounts {
  private readonly inFlight = new Map<TokenizerName, WeakMap<NodeRecord, Promise<void>>>();

  constructor(private readonly counter: TokenCounter) {}

  /**
   * Makes every node's count under the tokenizer known, counting the nodes
   * that have none. Resolves to the nodes this call counted (for the
   * write-back to Redis); rejects when counting is not possible now.
   */
  async ensure(nodes: readonly NodeRecord[], tokenizer: TokenizerName): Promise<NodeRecord[]> {
    let inFlight = this.inFlight.get(tokenizer);
    if (inFlight === undefined) this.inFlight.set(tokenizer, (inFlight = new WeakMap()));
    const waits = new Set<Promise<void>>();
    const missing = new Set<NodeRecord>();
    for (const node of nodes) {
      if (knownTokens(node, tokenizer) !== undefined) continue;
      const other = inFlight.get(node);
      if (other !== undefined) waits.add(other);
      else if (node.content === '') (node.tokens ??= {})[tokenizer] = 0;
      else missing.add(node);
    }
    const counted = [...missing];
    if (counted.length > 0) {
      const counting = this.counter.count(tokenizer, counted.map((node) => node.content)).then((counts) => {
        counted.forEach((node, index) => ((node.tokens ??= {})[tokenizer] = counts[index]!));
      });
      const settled = () => {
        for (const node of counted) inFlight.delete(node);
      };
      counting.then(settled, settled);
      for (const node of counted) inFlight.set(node, counting);
      waits.add(counting);
    }
    await Promise.all(waits);
    return counted;
  }
}
