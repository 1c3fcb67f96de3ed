import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = join(__dirname, '..', '..');

/** What an app that imports the client must never load: the sidecar's code and its server-side dependencies. */
const SERVER_SIDE = /[\\/](dist[\\/](server|redis|cache|context|locks|ops|model)[\\/]|dist[\\/](sidecar|main|config|log|errors|version)\.js$|node_modules[\\/](ioredis|pino|prom-client|snappy|@sesamecare-oss|grpc-health-check|@grpc[\\/]reflection)[\\/])/;

describe('the client package', () => {
  beforeAll(async () => {
    // The build an app installs: tsc into dist/, as `npm run build` does.
    await run(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: root, timeout: 120_000 });
  }, 180_000);

  it('is importable as context-cache/client (and as the package itself), with typings', async () => {
    const { stdout } = await run(process.execPath, ['-e', "const a = require('context-cache/client'); const b = require('context-cache'); console.log(JSON.stringify([typeof a.ContextCacheClient, a === b]))"], { cwd: root });
    expect(JSON.parse(stdout)).toEqual(['function', true]);
    const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { exports: Record<string, { types: string; default: string }> };
    for (const path of [manifest.exports['./client']!.types, manifest.exports['./client']!.default]) expect(existsSync(join(root, path)), path).toBe(true);
    expect(readFileSync(join(root, manifest.exports['./client']!.types), 'utf8')).toContain('ContextCacheClient');
  });

  it('loads no sidecar code: no ioredis, pino, prom-client, nothing of src/server, redis, cache, context, locks, ops', async () => {
    const script = "require('context-cache/client'); process.stdout.write(JSON.stringify(Object.keys(require.cache)))";
    const { stdout } = await run(process.execPath, ['-e', script], { cwd: root });
    const loaded = JSON.parse(stdout) as string[];
    expect(loaded.some((path) => path.endsWith(join('dist', 'client', 'index.js')))).toBe(true);
    expect(loaded.filter((path) => SERVER_SIDE.test(path))).toEqual([]);
    // The check itself can fail: the sidecar's entry point loads what the client must not.
    const { stdout: sidecar } = await run(process.execPath, ['-e', "require('./dist/sidecar.js'); process.stdout.write(JSON.stringify(Object.keys(require.cache)))"], { cwd: root });
    expect((JSON.parse(sidecar) as string[]).filter((path) => SERVER_SIDE.test(path)).length).toBeGreaterThan(10);
  });
});
