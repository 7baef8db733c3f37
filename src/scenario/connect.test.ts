// `pasidkit run --connect`: scenario family 4 runs as a process of a `pasidkit serve` host, over
// the wire protocol, with the same results as on the local host. The server runs in a process of
// its own (the runner's client blocks its thread while a frame is out).

import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

const root = join(import.meta.dirname, '..', '..');
const bin = join(root, 'bin', 'pasidkit.js');
const dir = mkdtempSync(join(tmpdir(), 'pasidkit-connect-'));
const sock = join(dir, 'pk.sock');
let server: ChildProcess;

before(async () => {
  server = spawn(process.execPath, [bin, 'serve', '--socket', sock], { stdio: 'ignore' });
  const deadline = Date.now() + 20_000;
  while (!existsSync(sock)) {
    if (Date.now() > deadline) throw new Error('pasidkit serve did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
});

after(() => {
  server.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

// Examples that use only family 4 (24 also does device DMA on the local machine's hardware).
const FILES = ['20-ioas-map.yaml', '21-mock-pasid.yaml', '22-vfio-cdev.yaml', '23-uapi-size-rules.yaml'].map(
  (f) => join(root, 'examples', f),
);

test('the family-4 examples pass against a server, step for step as they do locally', () => {
  const remote = spawnSync(process.execPath, [bin, 'run', '--json', '--connect', sock, ...FILES], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(remote.status, 0, remote.stdout + remote.stderr);
  const local = spawnSync(process.execPath, [bin, 'run', '--json', ...FILES], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(local.status, 0);
  const results = (out: string) =>
    out
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .map((o) => [o['file'], o['step'], o['ok'], o['passed'], o['failed']]);
  assert.deepEqual(results(remote.stdout), results(local.stdout));
});

test('a server that is not there is a clear error, not a hang', () => {
  const r = spawnSync(process.execPath, [bin, 'run', '--connect', join(dir, 'nobody.sock'), FILES[0]!], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /cannot connect to the pasidkit server/);
});
