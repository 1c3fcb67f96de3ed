import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * The layering of docs/architecture.md, held against the code: every import
 * of src/ (generated code aside) is read, and the rules below must hold.
 */
const SRC = resolve(__dirname, '../../src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'gen' && dir === SRC ? [] : sourceFiles(path);
    return path.endsWith('.ts') ? [path] : [];
  });
}

interface Import {
  from: string;
  /** A path relative to src/ (no extension) for our own modules, else the package name. */
  target: string;
  internal: boolean;
}

const IMPORT = /^\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'/gm;

function importsOf(file: string): Import[] {
  const text = readFileSync(file, 'utf8');
  const from = relative(SRC, file).replace(/\.ts$/, '');
  return [...text.matchAll(IMPORT)].map(([, specifier]) => {
    if (!specifier!.startsWith('.')) return { from, target: specifier!.split('/').slice(0, specifier!.startsWith('@') ? 2 : 1).join('/'), internal: false };
    let target = relative(SRC, resolve(dirname(file), specifier!));
    try {
      if (statSync(join(SRC, target)).isDirectory()) target = join(target, 'index');
    } catch {
      // a file
    }
    return { from, target, internal: true };
  });
}

const imports = sourceFiles(SRC).flatMap(importsOf);

/** A folder of src/, or a file at the top of src/ (each its own unit). */
function unit(path: string): string {
  const [first, ...rest] = path.split('/');
  return rest.length === 0 ? `${first}.ts` : first!;
}

function cycles(edges: [string, string][]): string[][] {
  const graph = new Map<string, Set<string>>();
  for (const [a, b] of edges) {
    if (a === b) continue;
    if (!graph.has(a)) graph.set(a, new Set());
    graph.get(a)!.add(b);
  }
  // Tarjan's strongly connected components: any component of more than one node is a cycle.
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (node: string) => {
    indices.set(node, index);
    low.set(node, index++);
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!indices.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node)!, low.get(next)!));
      } else if (onStack.has(next)) low.set(node, Math.min(low.get(node)!, indices.get(next)!));
    }
    if (low.get(node) === indices.get(node)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== node);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const node of graph.keys()) if (!indices.has(node)) visit(node);
  return found;
}

const violations = (rule: (i: Import) => boolean) => imports.filter(rule).map((i) => `${i.from} -> ${i.target}`);

describe('the layering of src/', () => {
  it('reads a plausible number of imports (the check itself works)', () => {
    expect(imports.length).toBeGreaterThan(150);
    expect(imports.some((i) => i.from === 'sidecar' && i.target === 'cache/tiers')).toBe(true);
  });

  it('has no import cycle between files', () => {
    expect(cycles(imports.filter((i) => i.internal).map((i) => [i.from, i.target]))).toEqual([]);
  });

  it('has no import cycle between folders', () => {
    expect(cycles(imports.filter((i) => i.internal).map((i) => [unit(i.from), unit(i.target)]))).toEqual([]);
  });

  it('keeps the core (model, cache, context, locks) free of gRPC, Redis and the generated code', () => {
    const core = /^(model|cache|context|locks)\//;
    expect(violations((i) => core.test(i.from) && (i.internal ? /^(server|gen|redis|ops|client)\//.test(i.target) : /^(@grpc\/|ioredis|@sesamecare-oss\/redlock)/.test(i.target)))).toEqual([]);
  });

  it('lets only src/redis/ import ioredis and the Redlock library', () => {
    expect(violations((i) => !i.internal && /^(ioredis|@sesamecare-oss\/redlock)$/.test(i.target) && !i.from.startsWith('redis/'))).toEqual([]);
  });

  it('keeps src/prompt/ a leaf: pure rules that the sidecar and the client share, importing nothing', () => {
    expect(imports.some((i) => i.from.startsWith('context/') && i.target.startsWith('prompt/'))).toBe(true);
    expect(violations((i) => i.from.startsWith('prompt/') && (!i.internal || !i.target.startsWith('prompt/')))).toEqual([]);
  });

  it('lets the client import nothing of the sidecar: only the generated code, wire/protobuf and prompt/', () => {
    expect(violations((i) => i.from.startsWith('client/') && i.internal && !/^(client|gen|prompt)\//.test(i.target) && i.target !== 'wire/protobuf')).toEqual([]);
  });

  it('keeps src/model/ a leaf', () => {
    expect(violations((i) => i.from.startsWith('model/') && (!i.internal || !i.target.startsWith('model/')))).toEqual([]);
  });

  it('keeps OpenTelemetry in src/ops/ alone, and out of every module loaded when tracing is off (types only, the SDK imported on demand)', () => {
    expect(violations((i) => !i.internal && i.target.startsWith('@opentelemetry/') && !i.from.startsWith('ops/'))).toEqual([]);
    const eager = sourceFiles(SRC).flatMap((file) =>
      [...readFileSync(file, 'utf8').matchAll(/^\s*import\s+(?!type\b)[^'"]*?from\s+'(@opentelemetry\/[^']+)'/gm)].map((m) => `${relative(SRC, file)} -> ${m[1]}`),
    );
    expect(eager).toEqual([]);
    expect(readFileSync(join(SRC, 'ops/tracing.ts'), 'utf8')).toMatch(/await import\('@opentelemetry\/sdk-trace'\)|import\('@opentelemetry\/sdk-trace'\)/);
  });

  it('keeps Lua in src/redis/ alone', () => {
    const lua = sourceFiles(SRC).filter((file) => /redis\.call\(/.test(readFileSync(file, 'utf8'))).map((file) => relative(SRC, file));
    expect(lua.length).toBeGreaterThan(0);
    expect(lua.filter((file) => !file.startsWith('redis/'))).toEqual([]);
  });
});
