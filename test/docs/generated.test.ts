import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { descriptorSetBase64 } from '../../src/gen/descriptor-set';

const root = join(__dirname, '..', '..');
const run = promisify(execFile);
const BUF = join(root, 'node_modules', '.bin', 'buf');
const env = { ...process.env, PATH: `${join(root, 'node_modules', '.bin')}:${process.env.PATH}` };

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

describe('the proto contract', () => {
  it('passes buf lint (STANDARD and COMMENTS)', async () => {
    await expect(run(BUF, ['lint'], { cwd: root, env })).resolves.toBeDefined();
  });

  it('src/gen is what `npm run generate` produces from it (never edited by hand)', async () => {
    const out = mkdtempSync(join(tmpdir(), 'cc-gen-'));
    try {
      await run(BUF, ['generate', '--output', out], { cwd: root, env, timeout: 60_000 });
      const generated = files(join(out, 'src', 'gen')).map((path) => relative(join(out, 'src', 'gen'), path));
      const committed = files(join(root, 'src', 'gen')).map((path) => relative(join(root, 'src', 'gen'), path)).filter((path) => path !== 'descriptor-set.ts');
      expect(committed.sort()).toEqual(generated.sort());
      for (const path of generated) {
        expect(readFileSync(join(root, 'src', 'gen', path), 'utf8'), path).toBe(readFileSync(join(out, 'src', 'gen', path), 'utf8'));
      }
      const { stdout } = await run(BUF, ['build', '--as-file-descriptor-set', '-o', '-#format=binpb'], { cwd: root, env, encoding: 'buffer', maxBuffer: 64 << 20 });
      expect(Buffer.from(stdout).toString('base64')).toBe(descriptorSetBase64);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});
