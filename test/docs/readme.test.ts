import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONFIG_VARIABLES } from '../../src/config';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { ReflectionStream } from '../helpers/reflection';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

const root = join(__dirname, '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const run = promisify(execFile);
const BUF = join(root, 'node_modules', '.bin', 'buf');

/** The README's grpcurl and curl lines, in order, from its sh code blocks. */
function documentedCommands(): string[] {
  const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  return blocks.flatMap((block) => block.split('\n').filter((line) => /^(grpcurl|curl) /.test(line)));
}

/** Splits a shell line into words, honouring single quotes (all the README uses). */
function words(line: string): string[] {
  return [...line.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

describe('README', () => {
  it('shows the two commands near the top, and .ci/run runs the test command', () => {
    const top = readme.split('\n').slice(0, 15).join('\n');
    expect(top).toContain('npm install && npm start');
    expect(top).toContain('npm install && npm test');
    expect(readFileSync(join(root, '.ci', 'run'), 'utf8')).toMatch(/^npm install && npm test$/m);
  });

  it('documents exactly the configuration the sidecar reads, with its defaults', () => {
    const table = readme.slice(readme.indexOf('<!-- config-table:start'), readme.indexOf('<!-- config-table:end'));
    const rows = [...table.matchAll(/^\| `([A-Z0-9_]+)` \| (.+?) \| (.+?) \|$/gm)].map((m) => ({ name: m[1]!, default: m[2]!.replace(/`/g, ''), help: m[3]! }));
    expect(rows.map((row) => row.name).sort()).toEqual(Object.keys(CONFIG_VARIABLES).sort());
    for (const row of rows) {
      const documented = CONFIG_VARIABLES[row.name as keyof typeof CONFIG_VARIABLES];
      expect(row.default, row.name).toBe(documented.default);
      expect(row.help, row.name).toBe(documented.help);
    }
  });

  describe('the client example runs as written', () => {
    const fixture = sidecarsOnRedis(1, { CONTEXT_CACHE_NAMESPACE: 'readme-client' });

    it('is ten lines, and prints the loaded value, a near-cache hit, and one hit', async () => {
      const marker = readme.indexOf('<!-- client-example');
      expect(marker).toBeGreaterThan(0);
      const example = /```ts\n([\s\S]*?)```/.exec(readme.slice(marker))![1]!;
      expect(example.trimEnd().split('\n').length).toBeLessThanOrEqual(10);
      expect(example).toContain("from 'context-cache/client'");
      // The same program, pointed at this test's sidecar and at the client's source.
      const sc = fixture.sidecars[0]!;
      const program = example.replace("'context-cache/client'", JSON.stringify(join(root, 'src', 'client', 'index.ts'))).replace("'127.0.0.1:50051'", JSON.stringify(sc.address));
      const dir = mkdtempSync(join(tmpdir(), 'readme-client-'));
      try {
        writeFileSync(join(dir, 'example.mts'), program);
        const { stdout } = await run(process.execPath, ['--import', 'tsx', join(dir, 'example.mts')], { cwd: root, timeout: 30_000 });
        expect(stdout.trim()).toBe('{"id":"42","name":"Ada"} true 1');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      // The example filled the cache through the sidecar, and its tag invalidation reached it.
      expect(sc.sidecar.tiers.counters.published).toBeGreaterThanOrEqual(2);
      expect((await sc.client.get({ key: 'profile:42' })).found).toBe(false);
    });
  });

  describe('the grpcurl walk-through works as written', () => {
    let redis: TestRedis;
    let sc: TestSidecar;

    beforeAll(async () => {
      redis = await startRedis();
      sc = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'readme' });
      await waitFor(() => sc.sidecar.tiers.mode === 'coherent', 'the sidecar to subscribe');
    });
    afterAll(async () => {
      await closeAllSidecars();
      await redis.stop();
    });

    it('runs every documented command against a real sidecar (buf curl stands in for grpcurl)', async () => {
      const commands = documentedCommands();
      expect(commands.length).toBeGreaterThanOrEqual(15);
      const address = sc.address;
      const url = (method: string) => `http://${address}/${method}`;
      const curl = (args: string[]) => run(BUF, ['curl', '--protocol', 'grpc', '--http2-prior-knowledge', ...args], { timeout: 20_000 });
      let watch: { output: () => string; stop(): void } | undefined;

      try {
        for (const command of commands) {
          const argv = words(command);
          if (argv[0] === 'curl') {
            const target = argv.find((word) => word.startsWith('127.0.0.1:50053'))!;
            const response = await fetch(`http://${target.replace('127.0.0.1:50053', sc.sidecar.adminAddress!)}`);
            expect(response.status, command).toBe(200);
            expect(await response.text(), command).toMatch(/^context_cache_/m);
            continue;
          }
          expect(argv.slice(0, 2), command).toEqual(['grpcurl', '-plaintext']);
          const hostIndex = argv.indexOf('127.0.0.1:50051');
          expect(hostIndex, command).toBeGreaterThan(0);
          const rest = argv.slice(hostIndex + 1);
          const data = argv.includes('-d') ? argv[argv.indexOf('-d') + 1]! : undefined;

          if (rest[0] === 'list') {
            const { stdout } = await curl(['--list-services', `http://${address}`]);
            for (const service of ['contextcache.v1.ContextCache', 'grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection']) {
              expect(stdout, command).toContain(service);
            }
          } else if (rest[0] === 'describe') {
            const reflection = new ReflectionStream(address, 'v1');
            try {
              const answer = await reflection.ask({ $case: 'fileContainingSymbol', value: rest[1]! });
              expect(answer.messageResponse?.$case, command).toBe('fileDescriptorResponse');
            } finally {
              await reflection.close();
            }
          } else if (rest[0]!.endsWith('/Watch')) {
            const child = spawn(BUF, ['curl', '--protocol', 'grpc', '--http2-prior-knowledge', '-d', data!, url(rest[0]!)]);
            let output = '';
            child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
            child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
            watch = { output: () => output, stop: () => child.kill('SIGTERM') };
            await waitFor(() => output.includes('"started"'), `the Watch stream to start: ${output}`);
          } else {
            const { stdout } = await curl(['-d', data ?? '{}', url(rest[0]!)]);
            expect(stdout.length, command).toBeGreaterThan(0);
            if (rest[0]!.endsWith('/Get')) expect(JSON.parse(stdout), command).toMatchObject({ found: true, value: 'aGVsbG8=' });
            if (rest[0]!.endsWith('/BuildContext') && data!.includes('max_tokens')) {
              // The summary in place of the four older messages, then the newest: 21 + 9 tokens (o200k_base).
              const built = JSON.parse(stdout) as { nodes: { node: { id: string }; reason: string; tokenCount: number }[]; totalTokens: string; droppedNodes: number; needsSummary?: boolean };
              expect(built.nodes.map((n) => [n.node.id, n.reason, n.tokenCount]), command).toEqual([
                ['m5', 'INCLUSION_REASON_SUMMARY', 21],
                ['m6', 'INCLUSION_REASON_CONVERSATION', 9],
              ]);
              expect([built.totalTokens, built.droppedNodes, built.needsSummary ?? false], command).toEqual(['30', 4, false]);
            } else if (rest[0]!.endsWith('/BuildContext')) {
              const built = JSON.parse(stdout) as { nodes: { node: { id: string }; reason: string }[] };
              // The node of chat-0 that m3 references, then the path to m3.
              expect(built.nodes.map((n) => [n.node.id, n.reason]), command).toEqual([
                ['a1', 'INCLUSION_REASON_REFERENCE'],
                ['m1', 'INCLUSION_REASON_CONVERSATION'],
                ['m2', 'INCLUSION_REASON_CONVERSATION'],
                ['m3', 'INCLUSION_REASON_CONVERSATION'],
              ]);
            }
            if (rest[0]!.endsWith('Health/Check')) expect(JSON.parse(stdout), command).toEqual({ status: 'SERVING' });
          }
        }
        // The watcher saw the writes made after it started.
        await waitFor(() => watch?.output().includes('"nodeAppended"'), 'the appended node on the Watch stream');
        expect(watch!.output()).toContain('"keyInvalidated"');
        expect(watch!.output()).toContain('"tagsInvalidated"');
      } finally {
        watch?.stop();
      }
    });
  });
});
