/**
 * What snappy buys on chat-like data: single messages by size, and whole
 * session payloads (what PutSessionNodes stores), built from real English
 * text — the README files of the packages installed in node_modules — not
 * random words. Reports the compression ratio and µs per KiB both ways,
 * which is what CONTEXT_CACHE_COMPRESSION_THRESHOLD is chosen from.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { compressSync, uncompressSync } from 'snappy';
import type { NodeRecord } from '../src/model/node';
import { type Bench, type BenchReport, formatTable } from './lib';

/** Paragraphs of prose from package READMEs: code blocks, tables, links and markup removed. */
export function englishParagraphs(limit = 4000): string[] {
  const root = join(__dirname, '..', 'node_modules');
  const files: string[] = [];
  const visit = (dir: string, depth: number) => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const name of names.sort()) {
      const path = join(dir, name);
      if (/^readme\.md$/i.test(name)) files.push(path);
      else if (depth < 2 && !name.startsWith('.') && statSync(path).isDirectory()) visit(path, name.startsWith('@') ? depth : depth + 1);
    }
  };
  visit(root, 0);
  const paragraphs: string[] = [];
  for (const file of files) {
    const text = readFileSync(file, 'utf8').replace(/```[\s\S]*?```/g, '');
    for (const block of text.split(/\n\s*\n/)) {
      const prose = block
        .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
        .replace(/<[^>]+>/g, '')
        .replace(/[`*_#>|]/g, '')
        .replace(/\s+/g, ' ')
        .trim();
      // Prose: long enough, mostly letters, ends like a sentence.
      if (prose.length >= 80 && /[.!?]$/.test(prose) && (prose.match(/[a-zA-Z ]/g)?.length ?? 0) / prose.length > 0.9) paragraphs.push(prose);
      if (paragraphs.length >= limit) return paragraphs;
    }
  }
  return paragraphs;
}

/** A conversation: short user turns, longer assistant turns, like a chat app's session. */
export function chatSession(sessionId: string, nodes: number, paragraphs: string[], offset: number): NodeRecord[] {
  const session: NodeRecord[] = [];
  let cursor = offset;
  const take = (count: number) => {
    const parts: string[] = [];
    for (let i = 0; i < count; i++) parts.push(paragraphs[cursor++ % paragraphs.length]!);
    return parts.join('\n\n');
  };
  for (let n = 0; n < nodes; n++) {
    const user = n % 2 === 0;
    const content = user ? take(1).split('. ').slice(0, 2).join('. ') : take(1 + (n % 4));
    session.push({
      id: `${sessionId}-${n}`,
      shortId: `${sessionId}-${n.toString(36)}`,
      sessionId,
      parentId: n === 0 ? '' : `${sessionId}-${n - 1}`,
      role: user ? 2 : 3,
      content,
      createdAt: Date.UTC(2026, 0, 1) + n * 30_000,
      metadata: user ? {} : { model: 'assistant-large', tokens: String(Math.round(content.length / 4)) },
      refs: n % 17 === 5 ? [`ref${n}`] : [],
    });
  }
  return session;
}

interface Measured {
  values: number;
  rawBytes: number;
  storedBytes: number;
  compressUsPerKiB: number;
  decompressUsPerKiB: number;
}

function measure(values: Buffer[], rounds: number): Measured {
  let rawBytes = 0;
  let storedBytes = 0;
  const compressed = values.map((value) => {
    const out = compressSync(value);
    rawBytes += value.length;
    storedBytes += Math.min(out.length, value.length);
    return out;
  });
  const time = (work: () => void) => {
    const started = process.hrtime.bigint();
    for (let r = 0; r < rounds; r++) work();
    return Number(process.hrtime.bigint() - started) / 1000 / rounds;
  };
  const compressUs = time(() => values.forEach((value) => compressSync(value)));
  const decompressUs = time(() => compressed.forEach((value) => uncompressSync(value)));
  const kib = rawBytes / 1024;
  return { values: values.length, rawBytes, storedBytes, compressUsPerKiB: compressUs / kib, decompressUsPerKiB: decompressUs / kib };
}

export const compression: Bench = {
  name: 'compression',
  async run(): Promise<BenchReport> {
    const paragraphs = englishParagraphs();
    if (paragraphs.length < 200) throw new Error(`only ${paragraphs.length} paragraphs of English found in node_modules; run npm install first`);
    const sessions = Array.from({ length: 40 }, (_, i) => chatSession(`session${i}`, 200, paragraphs, i * 97));
    const messages = sessions.flat().map((node) => Buffer.from(JSON.stringify(node)));
    const buckets: [string, (size: number) => boolean][] = [
      ['single message < 256 B', (size) => size < 256],
      ['single message 256 B-1 KiB', (size) => size >= 256 && size < 1024],
      ['single message 1-4 KiB', (size) => size >= 1024 && size < 4096],
      ['single message >= 4 KiB', (size) => size >= 4096],
    ];
    const rows: [string, Measured][] = buckets.map(([name, test]) => [name, measure(messages.filter((m) => test(m.length)), 20)]);
    const payloads = sessions.map((session) => Buffer.from(JSON.stringify(session)));
    const whole = measure(payloads, 20);
    rows.push(['whole session (200 nodes)', whole]);

    const table = formatTable(
      ['payload', 'values', 'avg bytes', 'stored/raw', 'saved', 'compress µs/KiB', 'decompress µs/KiB'],
      rows.map(([name, m]) => [
        name,
        String(m.values),
        (m.rawBytes / Math.max(1, m.values)).toFixed(0),
        (m.storedBytes / m.rawBytes).toFixed(3),
        `${((1 - m.storedBytes / m.rawBytes) * 100).toFixed(1)}%`,
        m.compressUsPerKiB.toFixed(2),
        m.decompressUsPerKiB.toFixed(2),
      ]),
    );
    return {
      title: `Snappy on chat-like data (${paragraphs.length} paragraphs of English from package READMEs; 40 sessions x 200 nodes)`,
      results: [],
      notes: [
        table,
        `whole-session payloads: ${((1 - whole.storedBytes / whole.rawBytes) * 100).toFixed(1)}% smaller (target >= 45%)`,
        'Values below 1 KiB gain little and cost a call into the native codec each; the default threshold (CONTEXT_CACHE_COMPRESSION_THRESHOLD=1KiB) follows from this table.',
      ],
    };
  },
};
