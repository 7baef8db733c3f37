// Differential test of the server's two input paths: connections accepted by its own listeners
// read into a buffer of their own (Node's onread, see adopt in server.ts), while sockets handed
// to attach() are fed by 'data' events. The same byte stream, cut at random points, must get the
// same replies byte for byte on both: every op, write-back, oversized frames that are skipped,
// frames split across reads.

import assert from 'node:assert/strict';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { afterEach, test } from 'node:test';
import fc from 'fast-check';
import { build, IOCTLS, STRUCTS } from '../iommufd/uapi/index.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, OP, PROT_READ, PROT_WRITE } from './protocol.ts';
import { frame, RawConn, startServer, stopAll, u32, u64 } from './test-utils.ts';

afterEach(stopAll);

const MAX_FRAME = 4096;

const request = fc.oneof(
  fc.constant(frame(OP.OPEN, 1, -1, Buffer.from('/dev/iommu'))),
  fc.constant(
    frame(OP.IOCTL, 2, 0, Buffer.concat([u32(IOCTLS.IOMMU_IOAS_ALLOC.cmd), build(STRUCTS.iommu_ioas_alloc)])),
  ),
  fc
    .nat({ max: 4 })
    .map((id) =>
      frame(
        OP.IOCTL,
        3,
        0,
        Buffer.concat([u32(IOCTLS.IOMMU_DESTROY.cmd), build(STRUCTS.iommu_destroy, { id })]),
      ),
    ),
  fc
    .tuple(
      fc.constantFrom(...Object.values(IOCTLS).map((d) => d.cmd)),
      fc.uint8Array({ maxLength: 48 }),
      fc.nat(3),
    )
    .map(([cmd, arg, fd]) => frame(OP.IOCTL, 4, fd, Buffer.concat([u32(cmd), arg]))),
  fc.constant(frame(OP.IOCTL_VALUE, 5, 0, Buffer.concat([u32(IOCTLS.VFIO_GET_API_VERSION.cmd), u64(0)]))),
  fc.constant(
    frame(
      OP.MMAP,
      6,
      -1,
      Buffer.concat([u64(8192), u32(PROT_READ | PROT_WRITE), u32(MAP_PRIVATE | MAP_ANONYMOUS), u64(0)]),
    ),
  ),
  fc.nat(3).map((fd) => frame(OP.CLOSE, 7, fd)),
  // Over the frame limit: read, skipped, answered with E2BIG.
  fc.nat({ max: 3 * MAX_FRAME }).map((n) => frame(OP.POKE, 8, -1, Buffer.alloc(MAX_FRAME + n, 0xaa))),
  fc.uint8Array({ maxLength: 16 }).map((b) => frame(99, 9, -1, b)),
);

test('reading into a buffer of its own answers as the data events do, byte for byte', async () => {
  const t = await startServer({ maxFrame: MAX_FRAME });
  const plainPath = join(dirname(t.path), 'plain.sock');
  const plain = net.createServer((s) => t.server.attach(s));
  await new Promise<void>((resolve) => plain.listen(plainPath, resolve));
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(request, { minLength: 1, maxLength: 30, size: 'medium' }),
        fc.array(fc.nat(), { maxLength: 8 }),
        async (frames, cuts) => {
          const bytes = Buffer.concat(frames);
          const at = [...new Set(cuts.map((c) => c % bytes.length))].sort((a, b) => a - b);
          const replies = async (path: string) => {
            const c = await RawConn.connect(path);
            let from = 0;
            for (const to of [...at, bytes.length]) {
              c.send(bytes.subarray(from, to));
              from = to;
              await new Promise((r) => setImmediate(r));
            }
            const out = [];
            for (let i = 0; i < frames.length; i++) out.push(await c.next());
            await c.close();
            return out;
          };
          assert.deepEqual(await replies(t.path), await replies(plainPath));
        },
      ),
      { numRuns: 40 },
    );
  } finally {
    await new Promise((r) => plain.close(r));
  }
});
