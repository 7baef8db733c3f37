// `pasidkit run --connect`: scenario family 4 runs as a process of a `pasidkit serve` host, over
// the wire protocol, with the same results as on the local host. The server runs in a process of
// its own (the runner's client blocks its thread while a frame is out).

import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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

test('a server that goes away mid-file fails the steps that follow, with what happened', async () => {
  // A server that answers the first frame (the open) with fd 0 and then hangs up.
  const path = join(dir, 'gone.sock');
  const gone = spawn(
    process.execPath,
    [
      '-e',
      `require('node:net').createServer((s) => s.once('data', (b) => {
        const r = Buffer.alloc(16); r.writeUInt32LE(12, 0); r.writeUInt32LE(b.readUInt32LE(8), 4);
        s.end(r);
      })).listen(process.argv[1]);`,
      path,
    ],
    { stdio: 'ignore' },
  );
  try {
    const deadline = Date.now() + 10_000;
    while (!existsSync(path)) {
      if (Date.now() > deadline) throw new Error('the test server did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    const file = join(dir, 'gone.yaml');
    writeFileSync(
      file,
      [
        'scenario: 1',
        'name: the server goes away',
        'steps:',
        '  - open: {path: /dev/iommu}',
        '    as: fd',
        '  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}',
        '    expect: {ret: 0}',
        '  - close: {fd: $fd}',
        '    expect: 0',
        '',
      ].join('\n'),
    );
    const r = spawnSync(process.execPath, [bin, 'run', '--json', '--connect', path, file], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    const steps = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((o) => o['step'] !== undefined);
    assert.deepEqual(
      steps.map((s) => s['ok']),
      [null, false, false],
      r.stdout,
    );
    assert.equal(steps[0]!['result'], 'fd#0');
    for (const s of steps.slice(1))
      assert.match(String(s['error']), /^the connection to the pasidkit server is lost: ECONNRESET: /);
  } finally {
    gone.kill();
  }
});
