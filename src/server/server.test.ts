// Tests of the wire server against ../shared/spec/WIRE.md: framing (lengths, tags, the frame
// limit, bytes split anywhere, pipelining), every op with its error cases, fds returned inside
// structs, privileges, the test command switch, per-connection isolation and limits, process
// exit on disconnect (also mid-frame), graceful shutdown, the log, and the TypeScript client.

import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { ERRNO, KernelError } from '../core/errno.ts';
import { build, decode, IOCTLS, STRUCTS } from '../iommufd/uapi/index.ts';
import { IoctlError, PasidkitClient, parseTarget } from './client.ts';
import { createHost, hostUsage, MachineFileError, parseMachineText } from './host.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, OP, PROT_READ, PROT_WRITE } from './protocol.ts';
import { isLoopback, WireServer } from './server.ts';
import { frame, RawConn, startServer, stopAll, tempDir, u32, u64, until } from './test-utils.ts';

const E = ERRNO;
const I = IOCTLS;
const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

const ioctlPayload = (cmd: number, arg: Uint8Array) => Buffer.concat([u32(cmd), arg]);
const mmapPayload = (len: number, prot: number, flags: number, off = 0) =>
  Buffer.concat([u64(len), u32(prot, flags), u64(off)]);

const zeroUsage = { contexts: 0, objects: 0, pins: 0, pages: 0, domains: 0 };

// A test that fails half-way still stops its server, so that the run ends by itself.
afterEach(stopAll);

describe('framing', () => {
  test('tags are echoed, replies come in request order, lengths are exact', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    const batch: Buffer[] = [];
    for (let i = 0; i < 500; i++) batch.push(frame(OP.OPEN, 1000 + i, -1, Buffer.from('/dev/iommu')));
    c.send(Buffer.concat(batch));
    for (let i = 0; i < 500; i++) {
      const f = await c.next();
      assert.equal(f.tag, 1000 + i);
      assert.equal(f.ret, i); // the lowest free fd each time
      assert.equal(f.payload.length, 0);
    }
    await c.close();
    await t.stop();
  });

  test('frames split at every byte boundary are reassembled', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    const bytes = Buffer.concat([
      frame(OP.OPEN, 1, -1, Buffer.from('/dev/iommu')),
      frame(OP.IOCTL, 2, 0, ioctlPayload(I.IOMMU_IOAS_ALLOC.cmd, build(STRUCTS.iommu_ioas_alloc))),
      frame(OP.CLOSE, 3, 0),
    ]);
    for (let i = 0; i < bytes.length; i++) {
      c.send(bytes.subarray(i, i + 1));
      if (i % 7 === 0) await new Promise((r) => setImmediate(r));
    }
    assert.deepEqual(
      [await c.next(), await c.next(), await c.next()].map((f) => [f.tag, f.ret]),
      [
        [1, 0],
        [2, 0],
        [3, 0],
      ],
    );
    await c.close();
    await t.stop();
  });

  test('a frame above the limit is read, discarded and answered -E2BIG; framing continues', async () => {
    const t = await startServer({ maxFrame: 1024 });
    const c = await RawConn.connect(t.path);
    const big = frame(OP.POKE, 77, -1, Buffer.alloc(5000, 0xab));
    // Sent in pieces, with a valid frame right behind it in the last piece.
    c.send(big.subarray(0, 10));
    await new Promise((r) => setTimeout(r, 10));
    c.send(big.subarray(10, 3000));
    await new Promise((r) => setTimeout(r, 10));
    c.send(Buffer.concat([big.subarray(3000), frame(OP.OPEN, 78, -1, Buffer.from('/dev/iommu'))]));
    const f = await c.next();
    assert.deepEqual([f.tag, f.ret, f.payload.length], [77, -E.E2BIG, 0]);
    const g = await c.next();
    assert.deepEqual([g.tag, g.ret], [78, 0]);
    // Exactly at the limit is fine.
    const atLimit = frame(OP.WRITE, 79, 0, Buffer.alloc(1024 - 12));
    c.send(atLimit);
    assert.equal((await c.next()).ret, -E.EINVAL); // write on /dev/iommu
    assert.ok(t.logs.some((l) => l.event === 'frame-too-large' && l['tag'] === 77));
    await c.close();
    await t.stop();
  });

  test('a length under 12 closes the connection after the replies before it', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    c.send(Buffer.concat([frame(OP.OPEN, 5, -1, Buffer.from('/dev/iommu')), u32(11), Buffer.alloc(11)]));
    assert.equal((await c.next()).tag, 5);
    await c.closed;
    await until(() => t.server.connections === 0, 2000, 'disconnect');
    assert.ok(t.logs.some((l) => l.event === 'protocol-error'));
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    await t.stop();
  });

  test('unknown ops and short IOCTL payloads are -EINVAL with an empty payload', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    for (const op of [0, 13, 0xffffffff]) {
      const f = await c.call(op, -1, Buffer.alloc(8, 1));
      assert.deepEqual([f.ret, f.payload.length], [-E.EINVAL, 0]);
    }
    await c.call(OP.OPEN, -1, Buffer.from('/dev/iommu'));
    const f = await c.call(OP.IOCTL, 0, Buffer.alloc(3));
    assert.deepEqual([f.ret, f.payload.length], [-E.EINVAL, 0]);
    await c.close();
    await t.stop();
  });
});

describe('ops', () => {
  test('OPEN and CLOSE: paths, lowest free fd, EBADF, ENOENT, NUL-terminated paths', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    const open = (p: string | Buffer) => c.call(OP.OPEN, -1, typeof p === 'string' ? Buffer.from(p) : p);
    assert.equal((await open('/dev/iommu')).ret, 0);
    assert.equal((await open('/dev/vfio/devices/vfio0')).ret, 1);
    assert.equal((await open('/dev/vfio/devices/vfio1')).ret, 2);
    assert.equal((await open('/dev/vfio/devices/vfio2')).ret, -E.ENOENT);
    assert.equal((await open('/dev/nope')).ret, -E.ENOENT);
    assert.equal((await open(Buffer.from('/dev/iommu\0'))).ret, 3); // what a C client with strlen+1 sends
    assert.equal((await open('x'.repeat(5000))).ret, -E.ENAMETOOLONG);
    assert.equal((await open(Buffer.from([0xff, 0xfe]))).ret, -E.ENOENT);
    assert.equal((await c.call(OP.CLOSE, 1)).ret, 0);
    assert.equal((await c.call(OP.CLOSE, 1)).ret, -E.EBADF);
    assert.equal((await c.call(OP.CLOSE, -1)).ret, -E.EBADF);
    assert.equal((await c.call(OP.CLOSE, 0, Buffer.alloc(1))).ret, -E.EINVAL);
    assert.equal((await open('/dev/iommu')).ret, 1);
    await c.close();
    await t.stop();
  });

  test('IOCTL: write-back, same length as sent, on failure too; EBADF; ENOTTY', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    await c.call(OP.OPEN, -1, Buffer.from('/dev/iommu'));
    // Bytes past the struct travel back untouched.
    const arg = Buffer.concat([build(STRUCTS.iommu_ioas_alloc), Buffer.from([0, 0, 0, 0])]);
    let f = await c.call(OP.IOCTL, 0, ioctlPayload(I.IOMMU_IOAS_ALLOC.cmd, arg));
    assert.equal(f.ret, 0);
    assert.equal(f.payload.length, 16);
    const ioas = decode(STRUCTS.iommu_ioas_alloc, f.payload).out_ioas_id;
    assert.ok(ioas > 0);
    // IOVA_RANGES with no room answers EMSGSIZE and writes num_iovas back.
    const ranges = build(STRUCTS.iommu_ioas_iova_ranges, { ioas_id: ioas, num_iovas: 0 });
    f = await c.call(OP.IOCTL, 0, ioctlPayload(I.IOMMU_IOAS_IOVA_RANGES.cmd, ranges));
    assert.equal(f.ret, -E.EMSGSIZE);
    assert.equal(f.payload.length, ranges.length);
    assert.equal(decode(STRUCTS.iommu_ioas_iova_ranges, f.payload).num_iovas, 1);
    // Errors keep the bytes as sent.
    const d = build(STRUCTS.iommu_destroy, { id: 999 });
    f = await c.call(OP.IOCTL, 0, ioctlPayload(I.IOMMU_DESTROY.cmd, d));
    assert.deepEqual([f.ret, Buffer.compare(f.payload, Buffer.from(d))], [-E.ENOENT, 0]);
    f = await c.call(OP.IOCTL, 9, ioctlPayload(I.IOMMU_DESTROY.cmd, d));
    assert.deepEqual([f.ret, f.payload.length], [-E.EBADF, 8]);
    f = await c.call(OP.IOCTL, 0, ioctlPayload(0x3b7f, u32(4)));
    assert.equal(f.ret, -E.ENOTTY);
    // An empty argument: the size field cannot be read.
    f = await c.call(OP.IOCTL, 0, u32(I.IOMMU_IOAS_ALLOC.cmd));
    assert.deepEqual([f.ret, f.payload.length], [-E.EFAULT, 0]);
    await c.close();
    await t.stop();
  });

  test('IOCTL_VALUE: integers, NULL, and pointers into the connection memory', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    await c.call(OP.OPEN, -1, Buffer.from('/dev/iommu'));
    const value = (cmd: number, raw: bigint) =>
      c.call(OP.IOCTL_VALUE, 0, Buffer.concat([u32(cmd), u64(raw)]));
    assert.equal((await value(I.VFIO_CHECK_EXTENSION.cmd, 3n)).ret, 1);
    assert.equal((await value(I.VFIO_GET_API_VERSION.cmd, 0n)).ret, 0);
    assert.equal((await value(I.IOMMU_IOAS_ALLOC.cmd, 0n)).ret, -E.EFAULT);
    assert.equal((await value(I.IOMMU_IOAS_ALLOC.cmd, 0x1234_5000n)).ret, -E.EFAULT);
    assert.equal((await value(I.IOMMU_IOAS_ALLOC.cmd, 0xffff_ffff_ffff_f000n)).ret, -E.EFAULT);
    const va = (await c.call(OP.MMAP, -1, mmapPayload(4096, RW, ANON))).ret;
    assert.equal(
      (await c.call(OP.POKE, -1, Buffer.concat([u64(va), build(STRUCTS.iommu_ioas_alloc)]))).ret,
      0,
    );
    const r = await value(I.IOMMU_IOAS_ALLOC.cmd, BigInt(va));
    assert.deepEqual([r.ret, r.payload.length], [0, 0]);
    const peek = await c.call(OP.PEEK, -1, Buffer.concat([u64(va), u32(12)]));
    assert.equal(decode(STRUCTS.iommu_ioas_alloc, peek.payload).out_ioas_id, 1);
    assert.equal((await c.call(OP.IOCTL_VALUE, 0, u32(1))).ret, -E.EINVAL);
    await c.close();
    await t.stop();
  });

  test('MMAP, MUNMAP, PEEK, POKE, and their errors', async () => {
    const t = await startServer({ maxFrame: 64 * 1024, maxMemory: 1 << 20 });
    const c = await RawConn.connect(t.path);
    const va = (await c.call(OP.MMAP, -1, mmapPayload(3 * 4096, RW, ANON))).ret;
    assert.ok(va > 0 && va % 4096 === 0);
    const data = Buffer.from('hello, iommu');
    assert.equal((await c.call(OP.POKE, -1, Buffer.concat([u64(va + 4090), data]))).ret, 0);
    const p = await c.call(OP.PEEK, -1, Buffer.concat([u64(va + 4090), u32(data.length)]));
    assert.deepEqual([p.ret, p.payload.toString()], [0, 'hello, iommu']);
    assert.equal((await c.call(OP.PEEK, -1, Buffer.concat([u64(va), u32(0)]))).payload.length, 0);
    // Errors.
    assert.equal((await c.call(OP.MMAP, -1, mmapPayload(4096, RW, ANON | MAP_FIXED))).ret, -E.EPERM);
    assert.equal((await c.call(OP.MMAP, -1, mmapPayload(4096, RW, MAP_ANONYMOUS))).ret, -E.EINVAL);
    assert.equal((await c.call(OP.MMAP, -1, mmapPayload(0, RW, ANON))).ret, -E.EINVAL);
    assert.equal((await c.call(OP.MMAP, -1, mmapPayload(4096, RW, MAP_SHARED))).ret, -E.EBADF);
    assert.equal((await c.call(OP.MMAP, -1, mmapPayload(2 << 20, RW, ANON))).ret, -E.ENOMEM);
    assert.equal((await c.call(OP.MMAP, -1, Buffer.alloc(23))).ret, -E.EINVAL);
    const peek = (a: number | bigint, n: number) => c.call(OP.PEEK, -1, Buffer.concat([u64(a), u32(n)]));
    assert.equal((await peek(va + 3 * 4096, 1)).ret, -E.EFAULT);
    assert.equal((await peek(2n ** 63n, 1)).ret, -E.EFAULT);
    assert.equal((await peek(va, 64 * 1024)).ret, -E.E2BIG);
    assert.equal((await c.call(OP.POKE, -1, Buffer.concat([u64(0), Buffer.alloc(1)]))).ret, -E.EFAULT);
    assert.equal((await c.call(OP.POKE, -1, Buffer.alloc(7))).ret, -E.EINVAL);
    const munmap = (a: number, n: number) => c.call(OP.MUNMAP, -1, u64(a, n));
    assert.equal((await munmap(va + 1, 4096)).ret, -E.EINVAL);
    assert.equal((await munmap(va + 4096, 4096)).ret, 0);
    assert.equal((await peek(va + 4096, 1)).ret, -E.EFAULT);
    assert.deepEqual((await peek(va + 2 * 4096, 1)).payload, Buffer.from([0]));
    assert.equal((await c.call(OP.MUNMAP, -1, u64(2n ** 62n, 4096))).ret, -E.EINVAL);
    await c.close();
    await until(() => t.server.connections === 0);
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    await t.stop();
  });

  test('MEMFD_CREATE, FTRUNCATE, shared mappings of a memfd', async () => {
    const t = await startServer({ maxMemory: 1 << 20 });
    const c = await RawConn.connect(t.path);
    const mfd = (await c.call(OP.MEMFD_CREATE, -1, Buffer.from('buf'))).ret;
    assert.equal(mfd, 0);
    assert.equal((await c.call(OP.FTRUNCATE, mfd, u64(2 * 4096))).ret, 0);
    const a = (await c.call(OP.MMAP, mfd, mmapPayload(8192, RW, MAP_SHARED))).ret;
    const b = (await c.call(OP.MMAP, mfd, mmapPayload(4096, RW, MAP_SHARED, 4096))).ret;
    await c.call(OP.POKE, -1, Buffer.concat([u64(a + 4096 + 5), Buffer.from([42])]));
    assert.deepEqual(
      (await c.call(OP.PEEK, -1, Buffer.concat([u64(b + 5), u32(1)]))).payload,
      Buffer.from([42]),
    );
    assert.equal((await c.call(OP.FTRUNCATE, mfd, u64(-1n))).ret, -E.EINVAL);
    assert.equal((await c.call(OP.FTRUNCATE, mfd, u64(1n << 40n))).ret, -E.EFBIG);
    assert.equal((await c.call(OP.FTRUNCATE, 9, u64(0))).ret, -E.EBADF);
    assert.equal((await c.call(OP.MEMFD_CREATE, -1, Buffer.from('n'.repeat(250)))).ret, -E.EINVAL);
    const dev = (await c.call(OP.OPEN, -1, Buffer.from('/dev/iommu'))).ret;
    assert.equal((await c.call(OP.FTRUNCATE, dev, u64(0))).ret, -E.EINVAL);
    await c.close();
    await until(() => t.server.connections === 0);
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    await t.stop();
  });

  test('an fd returned inside a struct (fault queue) works with READ, WRITE and CLOSE', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    await c.call(OP.OPEN, -1, Buffer.from('/dev/iommu'));
    const f = await c.call(
      OP.IOCTL,
      0,
      ioctlPayload(I.IOMMU_FAULT_QUEUE_ALLOC.cmd, build(STRUCTS.iommu_fault_alloc)),
    );
    assert.equal(f.ret, 0);
    const out = decode(STRUCTS.iommu_fault_alloc, f.payload);
    assert.equal(out.out_fault_fd, 1);
    const ffd = out.out_fault_fd;
    assert.equal((await c.call(OP.READ, ffd, u32(7))).ret, -E.ESPIPE);
    const r = await c.call(OP.READ, ffd, u32(40));
    assert.deepEqual([r.ret, r.payload.length], [0, 0]);
    assert.equal((await c.call(OP.WRITE, ffd, Buffer.alloc(8))).ret, -E.EINVAL); // no such cookie
    assert.equal((await c.call(OP.WRITE, ffd, Buffer.alloc(7))).ret, -E.ESPIPE);
    assert.equal((await c.call(OP.READ, 5, u32(40))).ret, -E.EBADF);
    assert.equal((await c.call(OP.READ, ffd, u32(40).subarray(0, 3))).ret, -E.EINVAL);
    const destroy = build(STRUCTS.iommu_destroy, { id: out.out_fault_id });
    assert.equal((await c.call(OP.IOCTL, 0, ioctlPayload(I.IOMMU_DESTROY.cmd, destroy))).ret, -E.EBUSY);
    assert.equal((await c.call(OP.CLOSE, ffd)).ret, 0);
    assert.equal((await c.call(OP.IOCTL, 0, ioctlPayload(I.IOMMU_DESTROY.cmd, destroy))).ret, 0);
    await c.close();
    await t.stop();
  });

  test('--unprivileged: no RLIMIT_MODE; --no-test-cmd: IOMMU_TEST_CMD is ENOTTY', async () => {
    for (const [opts, cmd, arg, want] of [
      [
        { privileged: false },
        I.IOMMU_OPTION.cmd,
        build(STRUCTS.iommu_option, { option_id: 0, op: 0, val64: 1n }),
        -E.EPERM,
      ],
      [
        { privileged: true },
        I.IOMMU_OPTION.cmd,
        build(STRUCTS.iommu_option, { option_id: 0, op: 0, val64: 1n }),
        0,
      ],
      [{ testCmd: false }, I.IOMMU_TEST_CMD.cmd, build(STRUCTS.iommu_test_cmd, { op: 2, id: 1 }), -E.ENOTTY],
    ] as const) {
      const t = await startServer(opts);
      const c = await RawConn.connect(t.path);
      await c.call(OP.OPEN, -1, Buffer.from('/dev/iommu'));
      // RLIMIT_MODE may only change while the context has no objects (else EBUSY).
      if (cmd === I.IOMMU_TEST_CMD.cmd)
        await c.call(OP.IOCTL, 0, ioctlPayload(I.IOMMU_IOAS_ALLOC.cmd, build(STRUCTS.iommu_ioas_alloc)));
      assert.equal((await c.call(OP.IOCTL, 0, ioctlPayload(cmd, arg))).ret, want);
      await c.close();
      await t.stop();
    }
  });
});

describe('connections', () => {
  test("--unprivileged: each connection is charged for its own pins, not for the others'", async () => {
    const t = await startServer({ privileged: false });
    const pin = async (c: PasidkitClient, bytes: number) => {
      const fd = await c.open('/dev/iommu');
      const ioas = await c.ioasAlloc(fd);
      await c.testMockDomain(fd, ioas);
      const va = await c.mmap(bytes, RW, MAP_SHARED | MAP_ANONYMOUS);
      return c.ioasMap(fd, { ioasId: ioas, userVa: va, length: bytes });
    };
    // RLIMIT_MEMLOCK is 8 MiB: 6 MiB each is fine for two users, not for one.
    const a = await PasidkitClient.connect(t.path);
    const b = await PasidkitClient.connect(t.path);
    await pin(a, 6 << 20);
    await pin(b, 6 << 20);
    await assert.rejects(pin(a, 4 << 20), (e: KernelError) => e.code === 'ENOMEM');
    await a.end();
    await b.end();
    await until(() => t.server.connections === 0);
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    await t.stop();
  });

  test('each connection is its own process: fds, object IDs and memory are separate', async () => {
    const t = await startServer();
    const a = await PasidkitClient.connect(t.path);
    const b = await PasidkitClient.connect(t.path);
    const fa = await a.open('/dev/iommu');
    const fb = await b.open('/dev/iommu');
    assert.deepEqual([fa, fb], [0, 0]);
    assert.equal(await a.ioasAlloc(fa), 1);
    assert.equal(await b.ioasAlloc(fb), 1);
    const va = await a.mmap(4096);
    await a.poke(va, Buffer.from([1, 2, 3]));
    await assert.rejects(b.peek(va, 3), (e: KernelError) => e.code === 'EFAULT');
    await b.close(fb);
    await assert.rejects(b.close(fb), (e: KernelError) => e.code === 'EBADF');
    await a.destroy(fa, 1); // still there for A
    await a.end();
    await b.end();
    await until(() => t.server.connections === 0);
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    await t.stop();
  });

  test('a disconnect is a process exit: objects destroyed, pins released, also mid-frame', async () => {
    const t = await startServer();
    for (const midFrame of [false, true]) {
      const c = await PasidkitClient.connect(t.path);
      const fd = await c.open('/dev/iommu');
      const ioas = await c.ioasAlloc(fd);
      await c.testMockDomain(fd, ioas);
      const buf = await c.mmap(16 * 4096, RW, MAP_SHARED | MAP_ANONYMOUS);
      await c.ioasMap(fd, { ioasId: ioas, userVa: buf, length: 16 * 4096, iova: 1 << 24 });
      const fq = await c.faultQueueAlloc(fd);
      assert.ok(fq.fd > 0);
      await c.open('/dev/vfio/devices/vfio0');
      const u = hostUsage(t.server.host);
      assert.ok(u.pins >= 16 && u.objects >= 4 && u.contexts === 1, JSON.stringify(u));
      if (midFrame) {
        // Half a frame, then the connection drops.
        const raw = net.connect({ path: t.path });
        await new Promise((r) => raw.once('connect', r));
        raw.write(frame(OP.POKE, 1, -1, Buffer.alloc(100)).subarray(0, 50));
        await new Promise((r) => setTimeout(r, 20));
        raw.destroy();
        c.abort();
      } else await c.end();
      await until(() => t.server.connections === 0);
      assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    }
    assert.ok(t.logs.filter((l) => l.event === 'disconnect').length >= 3);
    await t.stop();
  });

  test('limits: open files (OPEN, MEMFD_CREATE, fds made by ioctls) and mapped memory', async () => {
    const t = await startServer({ maxFiles: 3, maxMemory: 64 * 1024 });
    const c = await PasidkitClient.connect(t.path);
    const fd = await c.open('/dev/iommu');
    await c.memfdCreate('a');
    await c.open('/dev/iommu');
    await assert.rejects(c.open('/dev/iommu'), (e: KernelError) => e.code === 'EMFILE');
    await assert.rejects(c.memfdCreate('b'), (e: KernelError) => e.code === 'EMFILE');
    await assert.rejects(
      c.faultQueueAlloc(fd),
      (e: KernelError) => e instanceof IoctlError && e.code === 'EMFILE',
    );
    await c.close(2);
    const q = await c.faultQueueAlloc(fd);
    assert.equal(q.fd, 2);
    // Memory: 64 KiB in all.
    const a = await c.mmap(48 * 1024);
    await assert.rejects(c.mmap(32 * 1024), (e: KernelError) => e.code === 'ENOMEM');
    await c.munmap(a, 48 * 1024);
    await c.mmap(64 * 1024);
    assert.ok(t.logs.some((l) => l.event === 'limit' && l['limit'] === 'files'));
    assert.ok(t.logs.some((l) => l.event === 'limit' && l['limit'] === 'memory'));
    await c.end();
    await t.stop();
  });

  test('a client that never reads stalls only itself (back-pressure), and still gets every reply at shutdown', async () => {
    const t = await startServer({ maxFrame: 1 << 20 });
    const greedy = await RawConn.connect(t.path);
    const va = (await greedy.call(OP.MMAP, -1, mmapPayload(1 << 20, RW, ANON))).ret;
    greedy.socket.pause();
    // 24 PEEKs of 1 MiB: far more than the server buffers for one connection (4 MiB).
    const N = 24;
    const peeks: Buffer[] = [];
    for (let i = 0; i < N; i++)
      peeks.push(frame(OP.PEEK, i, -1, Buffer.concat([u64(va), u32((1 << 20) - 64)])));
    greedy.send(Buffer.concat(peeks));
    await new Promise((r) => setTimeout(r, 200));
    // Meanwhile another client is served.
    const other = await PasidkitClient.connect(t.path);
    const fd = await other.open('/dev/iommu');
    assert.equal(await other.ioasAlloc(fd), 1);
    await other.end();
    assert.ok(t.logs.some((l) => l.event === 'backpressure'));
    // A shutdown now still runs every frame the greedy client sent, then closes it.
    const closing = t.server.close();
    greedy.socket.resume();
    for (let i = 0; i < N; i++) {
      const f = await greedy.next(10000);
      assert.deepEqual([f.tag, f.ret, f.payload.length], [i, 0, (1 << 20) - 64]);
    }
    await closing;
    await greedy.closed;
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    await t.stop();
  });

  test('graceful shutdown: frames received whole finish, clients close, the socket file goes', async () => {
    const t = await startServer();
    const c = await RawConn.connect(t.path);
    const frames: Buffer[] = [frame(OP.OPEN, 0, -1, Buffer.from('/dev/iommu'))];
    for (let i = 1; i <= 200; i++)
      frames.push(
        frame(OP.IOCTL, i, 0, ioctlPayload(I.IOMMU_IOAS_ALLOC.cmd, build(STRUCTS.iommu_ioas_alloc))),
      );
    c.send(Buffer.concat(frames));
    await until(() => t.server.connections === 1);
    await new Promise((r) => setTimeout(r, 50));
    await t.server.close();
    const got: number[] = [];
    for (;;) {
      try {
        got.push((await c.next(2000)).tag);
      } catch {
        break;
      }
    }
    assert.deepEqual(
      got,
      Array.from({ length: 201 }, (_, i) => i),
    );
    await c.closed;
    assert.equal(t.server.connections, 0);
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    assert.equal(existsSync(t.path), false);
    assert.ok(t.logs.some((l) => l.event === 'shutdown'));
    await t.stop();
  });

  test('log: connect, disconnect, and with verbose one line per request', async () => {
    const t = await startServer({ verbose: true });
    const c = await PasidkitClient.connect(t.path);
    const fd = await c.open('/dev/iommu');
    await c.ioasAlloc(fd);
    await assert.rejects(c.close(42));
    await c.end();
    await until(() => t.logs.some((l) => l.event === 'disconnect'));
    const ev = t.logs.map((l) => l.event);
    assert.deepEqual(ev.slice(0, 2), ['listening', 'connect']);
    const reqs = t.logs.filter((l) => l.event === 'request');
    assert.deepEqual(
      reqs.map((l) => [l['op'], l['ret']]),
      [
        ['OPEN', 0],
        ['IOCTL', 0],
        ['CLOSE', -E.EBADF],
      ],
    );
    for (const l of t.logs) assert.doesNotThrow(() => JSON.stringify(l));
    await t.stop();
  });

  test('listening: loopback TCP, stale socket files replaced, other files refused', async () => {
    assert.ok(
      isLoopback('127.0.0.1') && isLoopback('127.9.8.7') && isLoopback('::1') && isLoopback('localhost'),
    );
    assert.ok(
      !isLoopback('0.0.0.0') && !isLoopback('10.0.0.1') && !isLoopback('::') && !isLoopback('example.com'),
    );
    const { dir, cleanup } = tempDir();
    const s = new WireServer({ log: () => {} });
    await assert.rejects(s.listen({ host: '0.0.0.0', port: 0 }), /loopback/);
    const addr = await s.listen({ host: '127.0.0.1', port: 0 });
    const port = Number(/:(\d+)$/.exec(addr)![1]);
    const c = await PasidkitClient.connect(`127.0.0.1:${port}`);
    assert.equal(await c.open('/dev/iommu'), 0);
    await c.end();
    // A stale socket (a server that died without removing it) is replaced.
    const stale = join(dir, 'stale.sock');
    const dead = net.createServer();
    await new Promise<void>((r) => dead.listen(stale, r));
    (dead as unknown as { _handle: { close(): void } | null })._handle?.close();
    writeFileSync(join(dir, 'plain'), 'x');
    await assert.rejects(s.listen({ path: join(dir, 'plain') }), /not a socket/);
    const other = new WireServer({ log: () => {} });
    await other.listen({ path: join(dir, 'live.sock') });
    await assert.rejects(s.listen({ path: join(dir, 'live.sock') }), /another server/);
    await other.close();
    await s.close();
    cleanup();
    assert.deepEqual(parseTarget('tcp://127.0.0.1:80'), { host: '127.0.0.1', port: 80 });
    assert.deepEqual(parseTarget('[::1]:9'), { host: '::1', port: 9 });
    assert.deepEqual(parseTarget('./a:1'), { path: './a:1' });
    assert.deepEqual(parseTarget('pasidkit.sock'), { path: 'pasidkit.sock' });
  });

  test('a machine file: its devices through the Intel VT-d driver, in machine order', async () => {
    const text =
      'devices:\n  - {bdf: "00:02.0"}\n  - {bdf: "00:03.0", pasid_bits: 0}\n  - {bdf: "00:04.0"}\n';
    const m = parseMachineText('m.yaml', text);
    assert.equal(createHost(m).devices.length, 3);
    assert.equal(createHost(parseMachineText('s.yaml', 'machine:\n  devices: []\n')).devices.length, 0);
    assert.throws(() => parseMachineText('bad.yaml', 'devices: [{bdf: nope}]'), MachineFileError);
    assert.throws(() => parseMachineText('bad.yaml', '- 1'), MachineFileError);
    assert.throws(() => parseMachineText('bad.yaml', 'a: [b'), MachineFileError);
    for (const testCmd of [true, false]) {
      const t = await startServer({ host: createHost(m, { testCmd }) });
      const idle = hostUsage(t.server.host);
      const c = await PasidkitClient.connect(t.path);
      const fd = await c.open('/dev/iommu');
      const d2 = await c.open('/dev/vfio/devices/vfio2');
      await assert.rejects(c.open('/dev/vfio/devices/vfio3'), (e: KernelError) => e.code === 'ENOENT');
      const devid = await c.vfioBind(d2, fd);
      const info = await c.getHwInfo(fd, devid);
      assert.equal(info.info.out_data_type, 1); // IOMMU_HW_INFO_TYPE_INTEL_VTD
      const ioas = await c.ioasAlloc(fd);
      assert.ok((await c.vfioAttach(d2, ioas)) > 0);
      const buf = await c.mmap(4 * 4096, RW, MAP_SHARED | MAP_ANONYMOUS);
      await c.ioasMap(fd, { ioasId: ioas, userVa: buf, length: 4 * 4096, iova: 0x10000 });
      assert.ok(hostUsage(t.server.host).pins >= 4);
      await c.vfioDetach(d2);
      // A mock domain on a fresh IOAS (the mapping at 64 KiB is outside the mock aperture).
      const fresh = await c.ioasAlloc(fd);
      const cmd = build(STRUCTS.iommu_test_cmd, { op: 2, id: fresh });
      const mock = await c.ioctlRaw(fd, I.IOMMU_TEST_CMD.cmd, cmd);
      assert.equal(mock.ret, testCmd ? 0 : -E.ENOTTY);
      await c.end();
      await until(() => t.server.connections === 0);
      // The driver keeps its root and context tables; everything the client made is gone.
      assert.deepEqual(hostUsage(t.server.host), idle);
      assert.equal(hostUsage(t.server.host).pins, 0);
      await t.stop();
    }
  });
});

describe('client', () => {
  test('typed helpers: IOAS, map/unmap, ranges, HWPT, hw info, PASID attach over VFIO cdev', async () => {
    const t = await startServer();
    const c = await PasidkitClient.connect(t.path);
    const fd = await c.open('/dev/iommu');
    const ioas = await c.ioasAlloc(fd);
    const dom = await c.testMockDomain(fd, ioas);
    assert.ok(dom.stdevId > 0 && dom.hwptId > 0 && dom.idevId > 0);
    const buf = await c.mmap(8 * 4096, RW, MAP_SHARED | MAP_ANONYMOUS);
    await c.poke(buf, Buffer.from('dma'));
    const iova = await c.ioasMap(fd, { ioasId: ioas, userVa: buf, length: 8 * 4096 });
    assert.ok(iova >= 1n << 24n);
    await assert.rejects(
      c.ioasMap(fd, { ioasId: ioas, userVa: buf, length: 4096, iova }),
      (e: KernelError) => e instanceof IoctlError && e.code === 'EEXIST',
    );
    const r = await c.ioasIovaRanges(fd, ioas);
    assert.ok(r.ranges.length >= 1 && r.alignment >= 2048n);
    const check = await c.testCmd(fd, 3, dom.hwptId, 'check_map', {
      iova,
      length: 8n * 4096n,
      uptr: BigInt(buf),
    });
    assert.equal(check.ret, 0);
    assert.equal(await c.ioasUnmap(fd, ioas, iova, 8 * 4096), 8n * 4096n);
    await c.ioasAllowIovas(fd, ioas, [{ start: 1n << 24n, last: (1n << 25n) - 1n }]);
    await c.ioasAllowIovas(fd, ioas, []);
    assert.equal(await c.option(fd, { optionId: 1, op: 1, objectId: ioas }), 1n);
    // VFIO cdev with PASID.
    const dfd = await c.open('/dev/vfio/devices/vfio1');
    const devid = await c.vfioBind(dfd, fd);
    const info = await c.getHwInfo(fd, devid);
    assert.equal(info.info.dev_id, devid);
    const pasidHwpt = await c.hwptAlloc(fd, { devId: devid, ptId: ioas, flags: 1 << 3 });
    assert.equal(await c.vfioAttach(dfd, pasidHwpt), pasidHwpt);
    assert.equal(await c.vfioAttach(dfd, pasidHwpt, 5), pasidHwpt);
    await assert.rejects(c.destroy(fd, pasidHwpt), (e: KernelError) => e.code === 'EBUSY');
    await c.vfioDetach(dfd, 5);
    await c.vfioDetach(dfd);
    await c.destroy(fd, pasidHwpt);
    const raw = await c.ioctlStruct(fd, 'IOMMU_IOAS_ALLOC');
    assert.ok((raw.out['out_ioas_id'] as number) > ioas);
    await assert.rejects(c.ioctlStruct(fd, 'VFIO_CHECK_EXTENSION'), /ioctlValue/);
    assert.equal(await c.ioctlValue(fd, I.VFIO_CHECK_EXTENSION.cmd, 3), 1);
    await c.end();
    await until(() => t.server.connections === 0);
    assert.deepEqual(hostUsage(t.server.host), zeroUsage);
    await t.stop();
  });

  test('pipelining: many outstanding requests, matched by tag; a dropped server fails them', async () => {
    const t = await startServer();
    const c = await PasidkitClient.connect(t.path);
    const fd = await c.open('/dev/iommu');
    // 300 objects: the debug checks walk every object after each ioctl.
    const ids = await Promise.all(Array.from({ length: 300 }, () => c.ioasAlloc(fd)));
    assert.deepEqual(
      ids,
      Array.from({ length: 300 }, (_, i) => i + 1),
    );
    const results = await Promise.allSettled(ids.map((id, i) => c.destroy(fd, i % 2 ? id : id + 5000)));
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 150);
    const err = (results[0] as PromiseRejectedResult).reason;
    assert.ok(err instanceof IoctlError && err instanceof KernelError && err.code === 'ENOENT');
    assert.equal(err.arg.length, 8);
    const pending = Promise.allSettled([c.ioasAlloc(fd), c.ioasAlloc(fd)]);
    await t.server.close();
    const late = await pending;
    for (const r of late)
      assert.ok(r.status === 'fulfilled' || (r.reason as KernelError).code === 'ECONNRESET');
    await assert.rejects(c.open('/dev/iommu'), (e: KernelError) => e.code === 'ECONNRESET');
    await t.stop();
  });
});
