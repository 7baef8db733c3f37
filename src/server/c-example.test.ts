// The C example client (examples/c/pasidkit-client.c) builds with the system's `cc`, warnings
// as errors, and runs against a server on a temporary socket: every line it prints is the
// answer WIRE.md and the kernel's uAPI call for, and its disconnect leaves nothing behind.

import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { hostUsage } from './host.ts';
import { startServer, tempDir, until } from './test-utils.ts';

const run = promisify(execFile);
const SOURCE = fileURLToPath(new URL('../../examples/c/pasidkit-client.c', import.meta.url));
const haveCc = spawnSync('cc', ['--version'], { stdio: 'ignore' }).status === 0;

test('the C example builds with cc and talks to the server', {
  skip: haveCc ? false : 'no cc on this machine',
  timeout: 60_000,
}, async () => {
  const { dir, cleanup } = tempDir();
  const t = await startServer();
  try {
    const bin = join(dir, 'pasidkit-client');
    await run('cc', [
      '-O2',
      '-Wall',
      '-Wextra',
      '-Werror',
      '-std=c11',
      '-D_DEFAULT_SOURCE',
      '-o',
      bin,
      SOURCE,
    ]);
    const { stdout } = await run(bin, [t.path], { timeout: 20_000 });
    const lines = stdout.trim().split('\n');
    const want = [
      /^open \/dev\/iommu: fd 0$/,
      /^mmap: va 0x[0-9a-f]+$/,
      /^IOMMU_IOAS_ALLOC: ret 0, ioas 1$/,
      /^IOMMU_TEST_CMD MOCK_DOMAIN: ret 0, stdev 2 hwpt 4 idev 3$/,
      /^IOMMU_IOAS_MAP: ret 0, iova 0x1000000$/,
      /^IOMMU_IOAS_MAP again: ret -17 \(File exists\)$/,
      /^IOMMU_DESTROY of the IOAS while a domain uses it: ret -16 \(Device or resource busy\)$/,
      /^close: ret 0$/,
    ];
    assert.equal(lines.length, want.length, stdout);
    want.forEach((re, i) => {
      assert.match(lines[i]!, re);
    });
    await until(() => t.server.connections === 0);
    assert.deepEqual(hostUsage(t.server.host), { contexts: 0, objects: 0, pins: 0, pages: 0, domains: 0 });
  } finally {
    await t.stop();
    cleanup();
  }
});
