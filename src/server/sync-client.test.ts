// The synchronous client (sync-client.ts) against a real `pasidkit serve`, and against servers
// that misbehave. Every server runs in a process of its own: the client blocks this thread
// while a frame is out, so a server on this thread's event loop would never answer.

import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { KernelError } from '../core/errno.ts';
import { IOCTLS } from '../iommufd/uapi/index.ts';
import { IoctlError, PasidkitClient } from './client.ts';
import { OP } from './protocol.ts';
import { PasidkitSyncClient } from './sync-client.ts';
import { outcome, type Step, step, tempDir, u64, until } from './test-utils.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SERVE =
  "import { cmdServe } from './src/cli/serve.ts'; process.exitCode = await cmdServe(process.argv.slice(1));";

interface Child {
  readonly proc: ChildProcess;
  err(): string;
}

function start(args: string[], code = SERVE, tsx = true): Child {
  let err = '';
  const proc = spawn(
    process.execPath,
    [...(tsx ? ['--import', 'tsx'] : []), '--input-type=module', '-e', code, '--', ...args],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return { proc, err: () => err };
}

function stop(c: Child): Promise<void> {
  if (c.proc.exitCode !== null) return Promise.resolve();
  return new Promise((r) => {
    c.proc.once('exit', () => r());
    c.proc.kill('SIGTERM');
  });
}

function throwsErrno(fn: () => unknown, code: string, message?: RegExp): KernelError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof KernelError, `expected a KernelError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code);
  if (message) assert.match(caught.message, message);
  return caught;
}

describe('against pasidkit serve', () => {
  const { dir, cleanup } = tempDir();
  const sock = join(dir, 's.sock');
  let server: Child;
  let port = 0;

  before(async () => {
    server = start(['--socket', sock, '--listen', '127.0.0.1:0']);
    await until(() => (server.err().match(/"event":"listening"/g) ?? []).length === 2, 20_000, 'listening');
    port = Number(/"address":"tcp:127\.0\.0\.1:(\d+)"/.exec(server.err())![1]);
  });
  after(async () => {
    await stop(server);
    cleanup();
  });

  test('typed calls return their results and throw the errno of a failed ioctl', () => {
    const c = new PasidkitSyncClient(sock);
    const fd = c.open('/dev/iommu');
    assert.equal(fd, 0);
    const a = c.ioasAlloc(fd);
    const b = c.ioctlStruct(fd, 'IOMMU_IOAS_ALLOC').out['out_ioas_id'];
    assert.equal(b, a + 1);
    c.destroy(fd, a);
    const e = throwsErrno(() => c.destroy(fd, a), 'ENOENT', /IOMMU_DESTROY of 1/);
    // The argument as the kernel left it comes back with the error, as from ioctl(2).
    assert.ok(e instanceof IoctlError);
    assert.equal(e.arg.readUInt32LE(0), 8);
    assert.equal(e.arg.readUInt32LE(4), a);
    // A bad size is the kernel's EINVAL, from the generic path.
    throwsErrno(
      () => c.ioctlStruct(fd, 'IOMMU_IOAS_ALLOC', { size: 4 }),
      'EINVAL',
      /IOMMU_IOAS_ALLOC on fd 0/,
    );
    // An argument longer than the send buffer, as the kernel takes it: a bigger struct whose
    // tail is zero is accepted, a non-zero tail is E2BIG.
    const big = Buffer.alloc(10_000);
    big.writeUInt32LE(big.length, 0);
    const r = c.ioctl(fd, IOCTLS.IOMMU_IOAS_ALLOC.cmd, big);
    assert.equal(r.ret, 0);
    c.destroy(fd, r.arg.readUInt32LE(8));
    big[9_999] = 1;
    throwsErrno(() => c.ioctl(fd, IOCTLS.IOMMU_IOAS_ALLOC.cmd, big), 'E2BIG');
    assert.equal(c.ioctlValue(fd, IOCTLS.VFIO_GET_API_VERSION.cmd), 0);
    throwsErrno(() => c.ioctlValue(fd, 0x1234), 'ENOTTY');
    throwsErrno(() => c.open('/dev/nothing'), 'ENOENT', /open \/dev\/nothing/);
    c.close(fd);
    throwsErrno(() => c.close(fd), 'EBADF');
    c.end();
    assert.ok(c.ended);
    throwsErrno(() => c.open('/dev/iommu'), 'ECONNRESET', /closed/);
  });

  test('replies longer than the receive buffer, and raw calls that fail', () => {
    const c = new PasidkitSyncClient(`tcp://127.0.0.1:${port}`);
    const len = 3 * 1024 * 1024;
    const va = c.mmap(len, 3, 0x22);
    const bytes = Buffer.alloc(len);
    for (let i = 0; i < len; i += 4096) bytes.writeUInt32LE(i ^ 0x5a5a5a5a, i);
    assert.equal(c.call(OP.POKE, -1, Buffer.concat([u64(va), bytes])).ret, 0);
    const r = c.call(OP.PEEK, -1, Buffer.concat([u64(va), Buffer.from([0, 0, len >>> 16, 0])]));
    assert.equal(r.ret, 0);
    assert.ok(r.payload.equals(bytes));
    // A negative ret is an answer, not an exception, for raw calls.
    assert.equal(c.call(OP.CLOSE, 77).ret, -9);
    throwsErrno(() => c.mmap(0, 3, 0x22), 'EINVAL', /mmap of 0 bytes/);
    c.end();
  });

  test('each call gives what the pipelined client gives: values, errnos, messages, argument bytes', async () => {
    const sync = (c: PasidkitSyncClient, s: Step): unknown => {
      if (s.k === 'alloc') return c.ioasAlloc(s.fd);
      if (s.k === 'destroy') return c.destroy(s.fd, s.id);
      return c.ioctlValue(s.fd, s.request, s.raw);
    };
    const pipelined = (c: PasidkitClient, s: Step): Promise<unknown> => {
      if (s.k === 'alloc') return c.ioasAlloc(s.fd);
      if (s.k === 'destroy') return c.destroy(s.fd, s.id);
      return c.ioctlValue(s.fd, s.request, s.raw);
    };
    await fc.assert(
      fc.asyncProperty(fc.array(step, { maxLength: 40, size: 'medium' }), async (steps) => {
        // Two connections are two processes, each with /dev/iommu at fd 0, a VFIO device at 1
        // and a memfd at 2, and IDs of their own.
        const s = new PasidkitSyncClient(sock);
        const a = await PasidkitClient.connect(sock);
        try {
          assert.deepEqual(
            [
              s.open('/dev/iommu'),
              s.open('/dev/vfio/devices/vfio0'),
              s.call(OP.MEMFD_CREATE, -1, Buffer.from('m')).ret,
            ],
            [await a.open('/dev/iommu'), await a.open('/dev/vfio/devices/vfio0'), await a.memfdCreate('m')],
          );
          for (const st of steps) {
            let got: unknown;
            try {
              got = { value: sync(s, st) };
            } catch (e) {
              got = await outcome(Promise.reject(e));
            }
            assert.deepEqual(got, await outcome(pipelined(a, st)));
          }
        } finally {
          s.end();
          await a.end();
        }
      }),
      { numRuns: 40 },
    );
  });

  test('the event loop running between calls takes nothing from the socket', async () => {
    const c = new PasidkitSyncClient(sock);
    const fd = c.open('/dev/iommu');
    for (let i = 0; i < 50; i++) {
      const id = c.ioasAlloc(fd);
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setTimeout(r, 1));
      c.destroy(fd, id);
    }
    c.end();
  });

  test('end() closes the connection: the server sees its process exit', async () => {
    // 61 requests: no other connection of this suite makes as many, so its log line is ours.
    const ours = /"event":"disconnect","conn":\d+,"pid":\d+,"reason":"eof","requests":61,/;
    const c = new PasidkitSyncClient(sock);
    const fd = c.open('/dev/iommu');
    for (let i = 0; i < 60; i++) c.ioasAlloc(fd);
    await new Promise((r) => setTimeout(r, 200));
    assert.doesNotMatch(server.err(), ours);
    c.end();
    c.end();
    await until(() => ours.test(server.err()), 10_000, 'disconnect');
  });
});

describe('against servers that fail', () => {
  const { dir, cleanup } = tempDir();
  after(cleanup);

  test('no server: the connect errno', () => {
    throwsErrno(() => new PasidkitSyncClient(join(dir, 'nobody.sock')), 'ENOENT', /cannot connect/);
    const stale = join(dir, 'stale.sock');
    writeFileSync(stale, '');
    throwsErrno(() => new PasidkitSyncClient(stale), 'ECONNREFUSED', /cannot connect/);
    assert.throws(() => new PasidkitSyncClient('tcp://127.0.0.1:99999'), /above 65535/);
  });

  // A server that reads one request and then answers as MODE says.
  const BAD = `
    import net from 'node:net';
    const [path, mode] = process.argv.slice(1);
    net.createServer((s) => {
      s.once('data', (b) => {
        const tag = b.readUInt32LE(8);
        const reply = (t, len = 12) => { const r = Buffer.alloc(4 + len); r.writeUInt32LE(len, 0); r.writeUInt32LE(t, 4); return r; };
        if (mode === 'close') s.destroy();
        else if (mode === 'tag') s.write(reply(tag + 1));
        else if (mode === 'short') s.write(reply(tag, 4));
        else if (mode === 'extra') s.write(Buffer.concat([reply(tag), reply(tag + 1)]));
        else if (mode === 'half') { s.write(reply(tag).subarray(0, 9)); setTimeout(() => s.destroy(), 50); }
      });
    }).listen(path);
  `;

  for (const [mode, why] of [
    ['close', /closed the connection/],
    ['half', /closed the connection/],
    ['tag', /not the answer to request 1/],
    ['short', /length 4/],
    ['extra', /not the answer/],
  ] as const) {
    test(`a server that answers with ${mode}: ECONNRESET, then every call fails at once`, async () => {
      const path = join(dir, `${mode}.sock`);
      const bad = start([path, mode], BAD, false);
      try {
        await until(() => existsSync(path), 10_000, 'listening');
        const c = new PasidkitSyncClient(path);
        throwsErrno(() => c.open('/dev/iommu'), 'ECONNRESET', why);
        assert.ok(c.ended);
        throwsErrno(() => c.ioasAlloc(0), 'ECONNRESET');
      } finally {
        await stop(bad);
      }
    });
  }
});

test('the package exports the client as pasidkit/sync-client', async () => {
  const m = await import('pasidkit/sync-client');
  assert.equal(m.PasidkitSyncClient, PasidkitSyncClient);
});
