/**
 * The tokenizers BuildContext can count with: OpenAI's BPE encodings, which
 * other model families' token counts are commonly approximated with as well.
 * o200k_base is GPT-4o's and later models'; cl100k_base GPT-4's and
 * GPT-3.5's (and what Redis's agent-memory-server counts with).
 */
export const TOKENIZERS = ['o200k_base', 'cl100k_base'] as const;

export type TokenizerName = (typeof TOKENIZERS)[number];

export function isTokenizer(name: string): name is TokenizerName {
  return (TOKENIZERS as readonly string[]).includes(name);
}
