// Differential test of the client's direct-settling calls (ioasAlloc, destroy, ioctlValue),
// which take their result straight out of the receive buffer, against the same calls written
// over the generic call()/ioctl() path they replace: two connections to one server (two
// processes with their own iommufd contexts) run the same sequence, one with each form, and
// every result or error (class, errno, message, written-back bytes) must be the same. Also:
// hundreds of requests in flight (the request ring grows), and frames written while the socket
// still holds an earlier write (the send buffer is not reused then).

import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import fc from 'fast-check';
import { errnoName, KernelError } from '../core/errno.ts';
import { build, IOCTLS, STRUCTS } from '../iommufd/uapi/index.ts';
import { IoctlError, OP, PasidkitClient } from './client.ts';
import { outcome, type Step, startServer, step, stopAll, u32, u64 } from './test-utils.ts';

afterEach(stopAll);

const code = (ret: number) => errnoName(-ret) ?? 'EIO';

/** The generic forms, as the client wrote them before it settled these calls directly. */
const ref = {
  async ioasAlloc(c: PasidkitClient, fd: number): Promise<number> {
    const r = await c.ioctl(fd, IOCTLS.IOMMU_IOAS_ALLOC.cmd, build(STRUCTS.iommu_ioas_alloc));
    return r.arg.readUInt32LE(8);
  },
  async destroy(c: PasidkitClient, fd: number, id: number): Promise<void> {
    const arg = build(STRUCTS.iommu_destroy, { id: id >>> 0 });
    const r = await c.call(OP.IOCTL, fd, Buffer.concat([u32(IOCTLS.IOMMU_DESTROY.cmd), arg]));
    if (r.ret < 0) throw new IoctlError(code(r.ret), `IOMMU_DESTROY of ${id}`, r.payload);
  },
  async ioctlValue(c: PasidkitClient, fd: number, request: number, raw: bigint | number): Promise<number> {
    const r = await c.call(
      OP.IOCTL_VALUE,
      fd,
      Buffer.concat([u32(request), u64(BigInt.asUintN(64, BigInt(raw)))]),
    );
    if (r.ret < 0) {
      const known = errnoName(-r.ret) !== undefined;
      const what = `ioctl 0x${(request >>> 0).toString(16)} on fd ${fd}`;
      throw new KernelError(code(r.ret), `${what}${known ? '' : ` (errno ${-r.ret})`}`);
    }
    return r.ret;
  },
};

function run(c: PasidkitClient, s: Step, fast: boolean): Promise<unknown> {
  if (s.k === 'alloc') return fast ? c.ioasAlloc(s.fd) : ref.ioasAlloc(c, s.fd);
  if (s.k === 'destroy') return fast ? c.destroy(s.fd, s.id) : ref.destroy(c, s.fd, s.id);
  return fast ? c.ioctlValue(s.fd, s.request, s.raw) : ref.ioctlValue(c, s.fd, s.request, s.raw);
}

/** A connection with /dev/iommu at fd 0, a VFIO device at 1 and a memfd at 2. */
async function connect(path: string): Promise<PasidkitClient> {
  const c = await PasidkitClient.connect(path);
  assert.equal(await c.open('/dev/iommu'), 0);
  assert.equal(await c.open('/dev/vfio/devices/vfio0'), 1);
  assert.equal(await c.memfdCreate('m'), 2);
  return c;
}

describe('client calls settled from the receive buffer', () => {
  test('give what the generic call path gives, one at a time and pipelined', async () => {
    const t = await startServer();
    await fc.assert(
      fc.asyncProperty(
        fc.array(step, { maxLength: 40, size: 'medium' }),
        fc.boolean(),
        async (steps, pipelined) => {
          const fast = await connect(t.path);
          const slow = await connect(t.path);
          try {
            if (pipelined) {
              const a = await Promise.all(steps.map((s) => outcome(run(fast, s, true))));
              const b = await Promise.all(steps.map((s) => outcome(run(slow, s, false))));
              assert.deepEqual(a, b);
            } else {
              for (const s of steps)
                assert.deepEqual(await outcome(run(fast, s, true)), await outcome(run(slow, s, false)));
            }
          } finally {
            await fast.end();
            await slow.end();
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  test('hundreds in flight, and frames made while the socket still holds a big write', async () => {
    const t = await startServer();
    const c = await connect(t.path);
    const pattern = (seed: number) => {
      const b = Buffer.alloc(4 * 1024 * 1024);
      for (let i = 0; i < b.length; i += 512) b[i] = (i / 512 + seed) & 0xff;
      return b;
    };
    const big = [pattern(1), pattern(2)];
    const va = [await c.mmap(big[0]!.length), await c.mmap(big[1]!.length)];
    // The server runs in this thread: until this test yields to the event loop it reads nothing,
    // so the socket keeps most of the first write while the next frames are made.
    const first = c.poke(va[0]!, big[0]!);
    await null;
    await null;
    const second = c.poke(va[1]!, big[1]!);
    const allocs: Promise<number>[] = [];
    for (let i = 0; i < 500; i++) allocs.push(c.ioasAlloc(0));
    await first;
    await second;
    assert.deepEqual(
      await Promise.all(allocs),
      Array.from({ length: 500 }, (_, i) => i + 1),
    );
    assert.ok((await c.peek(va[0]!, big[0]!.length)).equals(big[0]!));
    assert.ok((await c.peek(va[1]!, big[1]!.length)).equals(big[1]!));
    await Promise.all(Array.from({ length: 500 }, (_, i) => c.destroy(0, i + 1)));
    await assert.rejects(c.destroy(0, 1), (e: unknown) => e instanceof IoctlError && e.code === 'ENOENT');
    await c.end();
  });

  test('a dropped connection fails what is outstanding, of every kind', async () => {
    const t = await startServer();
    const c = await connect(t.path);
    const p = [
      c.ioasAlloc(0),
      c.destroy(0, 1),
      c.ioctlValue(0, IOCTLS.VFIO_GET_API_VERSION.cmd),
      c.call(OP.CLOSE, 5),
    ];
    c.abort();
    for (const r of await Promise.allSettled(p)) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.status === 'rejected' && r.reason instanceof KernelError && r.reason.code === 'ECONNRESET');
    }
  });
});
