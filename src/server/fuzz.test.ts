// Robustness of the wire server (issue 5 acceptance): 100,000+ random and mutated frames over
// many connections, with lengths corrupted as well, so that framing itself is fuzzed. An
// independent reference walk of each connection's byte stream (WIRE.md "Frames") says which
// replies must come back, with which tags and payload sizes; the server must never crash or
// hang, must answer exactly that, must leave a bystander client's state untouched, and must
// leave nothing behind once the fuzzing clients are gone. A second part measures the heap across
// many connect, work and disconnect cycles: it must not grow.

import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { errnoName } from '../core/errno.ts';
import { build, IOCTLS, type IoctlDef, STRUCTS } from '../iommufd/uapi/index.ts';
import { PasidkitClient } from './client.ts';
import { hostUsage } from './host.ts';
import { MAP_ANONYMOUS, MAP_SHARED, MIN_LENGTH, OP, PROT_READ, PROT_WRITE } from './protocol.ts';
import { type Frame, RawConn, startServer, type TestServer, until } from './test-utils.ts';

const MAX_FRAME = 4096;
const TOTAL_FRAMES = 100_000;
const SESSIONS = 40;
const PARALLEL = 4;

/** xorshift32 (seeded, as the benchmarks use), with helpers. */
class Rng {
  private x: number;
  constructor(seed: number) {
    this.x = seed | 0 || 1;
  }
  next(): number {
    let x = this.x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.x = x | 0;
    return x >>> 0;
  }
  below(n: number): number {
    return this.next() % n;
  }
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.below(a.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}

const DEFS: IoctlDef[] = Object.values(IOCTLS);
const PATHS = [
  '/dev/iommu',
  '/dev/vfio/devices/vfio0',
  '/dev/vfio/devices/vfio1',
  '/dev/vfio/devices/vfio9',
  '/x',
];
const VA_BASE = 0x7f00_0000_0000;

function u64(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % 2 ** 32, off);
  b.writeUInt32LE(Math.floor(v / 2 ** 32), off + 4);
}

/** A plausible value for a struct field: small IDs, VAs near the mappings, or anything. */
function fieldValue(r: Rng, name: string, type: string): number | bigint {
  const k = r.below(10);
  if (type === 'u64') {
    if (k < 3) return BigInt(VA_BASE + r.below(64) * 4096);
    if (k < 5) return BigInt(r.below(16) * 4096);
    if (k < 6) return 0xffff_ffff_ffff_ffffn;
    if (k < 8) return BigInt((1 << 24) + r.below(256) * 2048);
    return BigInt(r.next()) * BigInt(r.next());
  }
  const max = type === 'u8' ? 0xff : type === 'u16' ? 0xffff : 0xffffffff;
  if (name === 'size' || name === 'argsz') return k < 7 ? -1 : r.below(80);
  if (k < 6) return r.below(8);
  if (k < 8) return 1 << r.below(type === 'u8' ? 8 : type === 'u16' ? 16 : 31);
  return (r.next() & max) >>> 0;
}

/** Struct bytes for an ioctl: fields filled at random, `size` mostly right, then mutated. */
function ioctlArg(r: Rng, def: IoctlDef): Buffer {
  const s = def.struct;
  if (s === null || r.chance(0.1)) return r.bytes(r.below(80));
  const fields: Record<string, unknown> = {};
  for (const f of s.fields) {
    if (f.type === 'union') {
      if (def.name === 'IOMMU_TEST_CMD') fields['op'] = 1 + r.below(24);
      continue;
    }
    if (f.type === 'struct' || f.count !== undefined || f.name === 'op') continue;
    const v = fieldValue(r, f.name, f.type);
    if (v !== -1) fields[f.name] = v;
  }
  if (def.name === 'IOMMU_TEST_CMD' && fields['op'] === undefined) fields['op'] = 1 + r.below(24);
  const b = Buffer.from(build(s, fields));
  if (def.name === 'IOMMU_TEST_CMD') {
    // The union member: random words, with IDs and VAs where they often are.
    for (let off = 16; off < 64; off += 8)
      u64(b, off, r.chance(0.5) ? r.below(8) : VA_BASE + r.below(64) * 4096);
  }
  let out = b;
  if (r.chance(0.2)) out = out.subarray(0, r.below(out.length + 1));
  if (r.chance(0.1))
    out = Buffer.concat([out, r.chance(0.5) ? Buffer.alloc(r.below(64)) : r.bytes(r.below(64))]);
  if (r.chance(0.3))
    for (let i = r.below(4); i >= 0 && out.length > 0; i--) out[r.below(out.length)] = r.next() & 0xff;
  return out;
}

function header(op: number, tag: number, fd: number, payload: Buffer): Buffer {
  const b = Buffer.allocUnsafe(16 + payload.length);
  b.writeUInt32LE(MIN_LENGTH + payload.length, 0);
  b.writeUInt32LE(op >>> 0, 4);
  b.writeUInt32LE(tag >>> 0, 8);
  b.writeInt32LE(fd, 12);
  payload.copy(b, 16);
  return b;
}

/** One random frame's bytes (its length field may be corrupted). */
function randomFrame(r: Rng, tag: number): Buffer {
  const fd = r.chance(0.8) ? r.below(5) : r.pick([-1, -2, 99, 0x7fffffff]);
  const k = r.below(100);
  let f: Buffer;
  if (k < 35) {
    const def = r.pick(DEFS);
    // Mostly on fd 0, the /dev/iommu every session opens first, so ioctls get past EBADF.
    const ifd = def.family === 'iommufd' && r.chance(0.7) ? 0 : fd;
    f = header(
      OP.IOCTL,
      tag,
      ifd,
      Buffer.concat([Buffer.from(new Uint32Array([def.cmd]).buffer), ioctlArg(r, def)]),
    );
  } else if (k < 42) {
    const cmd = r.chance(0.5) ? 0x3b00 + r.below(0x100) : r.next();
    f = header(
      OP.IOCTL,
      tag,
      fd,
      Buffer.concat([Buffer.from(new Uint32Array([cmd]).buffer), r.bytes(r.below(40))]),
    );
  } else if (k < 48) {
    const p = Buffer.alloc(12);
    p.writeUInt32LE(r.pick(DEFS).cmd, 0);
    u64(p, 4, r.pick([0, 3, 1, VA_BASE + r.below(64) * 4096, 2 ** 52]));
    f = header(OP.IOCTL_VALUE, tag, fd, r.chance(0.9) ? p : p.subarray(0, r.below(12)));
  } else if (k < 53) {
    const path = r.chance(0.9) ? Buffer.from(r.pick(PATHS)) : r.bytes(r.below(30));
    f = header(OP.OPEN, tag, -1, path);
  } else if (k < 60) {
    f = header(OP.CLOSE, tag, 1 + r.below(6), Buffer.alloc(r.chance(0.95) ? 0 : 1));
  } else if (k < 68) {
    const p = Buffer.alloc(24);
    u64(p, 0, r.pick([4096, 8192, 65536, 0, 3, 1 << 20, 2 ** 40]));
    p.writeUInt32LE(r.pick([3, 1, 0, 7]), 8);
    p.writeUInt32LE(r.pick([0x22, 0x21, 0x01, 0x02, 0x32, 0x20, r.next()]), 12);
    u64(p, 16, r.pick([0, 4096, 3, 2 ** 52]));
    f = header(OP.MMAP, tag, r.chance(0.5) ? -1 : fd, p);
  } else if (k < 72) {
    const p = Buffer.alloc(16);
    u64(p, 0, VA_BASE + r.below(32) * 4096 * (r.chance(0.5) ? 512 : 1));
    u64(p, 8, r.pick([4096, 8192, 1 << 21, 0, 2 ** 52]));
    f = header(OP.MUNMAP, tag, -1, p);
  } else if (k < 78) {
    const p = Buffer.alloc(12);
    u64(p, 0, r.chance(0.7) ? VA_BASE + r.below(1 << 22) : r.next() * 4096);
    p.writeUInt32LE(r.pick([0, 1, 8, 4096, 70000]), 8);
    f = header(OP.PEEK, tag, -1, p);
  } else if (k < 83) {
    const p = Buffer.concat([Buffer.alloc(8), r.bytes(r.below(300))]);
    u64(p, 0, r.chance(0.7) ? VA_BASE + r.below(1 << 22) : r.next());
    f = header(OP.POKE, tag, -1, p);
  } else if (k < 87) {
    f = header(OP.READ, tag, fd, Buffer.from(new Uint32Array([r.pick([40, 80, 7, 0, 0xffffffff])]).buffer));
  } else if (k < 90) {
    f = header(OP.WRITE, tag, fd, r.bytes(r.pick([8, 16, 3, 0])));
  } else if (k < 93) {
    f = header(OP.MEMFD_CREATE, tag, -1, r.bytes(r.below(10)));
  } else if (k < 95) {
    const p = Buffer.alloc(8);
    u64(p, 0, r.pick([0, 4096, 65536, 2 ** 40]));
    f = header(OP.FTRUNCATE, tag, fd, p);
  } else {
    f = header(r.below(20), tag, fd, r.bytes(r.below(40)));
  }
  // Corrupt the length now and then: framing must hold, and the reference walk follows it.
  if (r.chance(0.01)) {
    const big = MAX_FRAME + 1 + r.below(3000);
    f = Buffer.concat([f, Buffer.alloc(Math.max(0, big + 4 - f.length))]);
    f.writeUInt32LE(big, 0);
  } else if (r.chance(0.0005)) {
    f.writeUInt32LE(Math.max(MIN_LENGTH, f.length - 4 - r.below(8)), 0);
  }
  return f;
}

interface Expect {
  tag: number;
  /** The IOCTL's argument length, or -1 (the payload must then be empty when ret < 0). */
  arg: number;
  oversized: boolean;
}

/** The reference framing walk: which replies the bytes so far must produce. */
class Walker {
  private stream = Buffer.alloc(0);
  private off = 0;
  closed = false;
  /** Bytes the frame at the front still needs (a corrupted length can make this huge). */
  get needs(): number {
    if (this.stream.length - this.off < 4) return 0;
    return this.stream.readUInt32LE(this.off) + 4 - (this.stream.length - this.off);
  }
  feed(bytes: Buffer, out: Expect[]): void {
    this.stream = Buffer.concat([this.stream.subarray(this.off), bytes]);
    this.off = 0;
    const s = this.stream;
    while (!this.closed && s.length - this.off >= 4) {
      const len = s.readUInt32LE(this.off);
      if (len < MIN_LENGTH) {
        this.closed = true;
        break;
      }
      if (s.length - this.off < len + 4) break;
      const op = s.readUInt32LE(this.off + 4);
      const tag = s.readUInt32LE(this.off + 8);
      if (len > MAX_FRAME) out.push({ tag, arg: -1, oversized: true });
      else out.push({ tag, arg: op === OP.IOCTL && len >= 16 ? len - 16 : -1, oversized: false });
      this.off += len + 4;
    }
  }
}

/** Replies seen, by errno name or "ok" (printed as a diagnostic: how deep the fuzz reaches). */
const outcomes = new Map<string, number>();
let replies = 0;

function checkReply(f: Frame, e: Expect): void {
  replies++;
  const k = `${e.arg >= 0 ? 'ioctl' : 'op'} ${f.ret >= 0 ? 'ok' : (errnoName(f.ret) ?? f.ret)}`;
  outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
  assert.equal(f.tag, e.tag);
  assert.ok(Number.isSafeInteger(f.ret) && f.ret >= -4095, `ret ${f.ret}`);
  if (e.oversized) assert.equal(f.ret, -7);
  if (e.arg >= 0) assert.equal(f.payload.length, e.arg, 'an IOCTL reply carries the argument, same length');
  else if (f.ret < 0) assert.equal(f.payload.length, 0, 'a failed op other than IOCTL has no payload');
}

/** One connection's worth of frames; resolves with the number of replies checked. */
async function fuzzSession(path: string, seed: number, frames: number): Promise<number> {
  const r = new Rng(seed);
  const c = await RawConn.connect(path);
  const w = new Walker();
  let sent = 0;
  let got = 0;
  let tag = seed * 1_000_000;
  const first = header(OP.OPEN, tag++, -1, Buffer.from('/dev/iommu'));
  c.send(first);
  checkReply(await c.next(), { tag: tag - 1, arg: -1, oversized: false });
  got++;
  w.feed(first, []);
  // A corrupted length may swallow everything after it: then this connection is done.
  while (sent < frames && !w.closed && w.needs < 1 << 20) {
    const batch: Buffer[] = [];
    const n = Math.min(frames - sent, 50 + r.below(200));
    for (let i = 0; i < n; i++) batch.push(randomFrame(r, tag++));
    sent += n;
    // Rarely, a frame too short to carry a tag: the server must close the connection.
    if (r.chance(0.005)) batch.push(Buffer.from([4, 0, 0, 0, 1, 2, 3, 4]));
    const bytes = Buffer.concat(batch);
    const expect: Expect[] = [];
    w.feed(bytes, expect);
    // Split the batch at random points: framing must not depend on how bytes arrive.
    let at = 0;
    while (at < bytes.length) {
      const step = r.chance(0.3) ? 1 + r.below(64) : bytes.length;
      c.send(bytes.subarray(at, at + step));
      at += step;
    }
    for (const e of expect) checkReply(await c.next(10_000), e);
    got += expect.length;
  }
  if (w.closed) await c.closed;
  else await c.close();
  assert.equal(c.pending, 0, 'no reply beyond the ones the frames call for');
  return got;
}

const gc: () => void = (() => {
  v8.setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

function heap(): number {
  for (let i = 0; i < 3; i++) gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

describe('fuzz', () => {
  let t2: TestServer | null = null;
  afterEach(async () => {
    await t2?.stop();
    t2 = null;
  });

  test(`${TOTAL_FRAMES} random and mutated frames: no crash, no hang, exact framing, a bystander untouched`, {
    timeout: 120_000,
  }, async (ctx) => {
    const t = await startServer({ maxFrame: MAX_FRAME, maxMemory: 256 * 1024, maxFiles: 64 });
    // Even a failing run stops by itself: the server closes every connection.
    t2 = t;
    // The bystander: an IOAS with a mock domain, a pinned mapping of known bytes, a fault queue.
    const b = await PasidkitClient.connect(t.path);
    const bfd = await b.open('/dev/iommu');
    const ioas = await b.ioasAlloc(bfd);
    const dom = await b.testMockDomain(bfd, ioas);
    const buf = await b.mmap(8 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
    const pattern = Buffer.from(Array.from({ length: 8 * 4096 }, (_, i) => (i * 7) & 0xff));
    for (let off = 0; off < pattern.length; off += 2048)
      await b.poke(buf + off, pattern.subarray(off, off + 2048));
    const iova = await b.ioasMap(bfd, { ioasId: ioas, userVa: buf, length: 8 * 4096, iova: 1 << 24 });
    const fq = await b.faultQueueAlloc(bfd);
    const before = hostUsage(t.server.host);

    let total = 0;
    let seed = 1;
    const per = Math.ceil(TOTAL_FRAMES / SESSIONS);
    while (total < TOTAL_FRAMES) {
      const runs: Promise<number>[] = [];
      for (let i = 0; i < PARALLEL; i++) runs.push(fuzzSession(t.path, seed++, per));
      for (const n of await Promise.all(runs)) total += n;
    }
    assert.equal(total, replies);
    ctx.diagnostic(
      `${seed - 1} connections, ${replies} replies: ${JSON.stringify(Object.fromEntries([...outcomes].sort((a, b) => b[1] - a[1])))}`,
    );
    await until(() => t.server.connections === 1, 5000, 'fuzz clients gone');
    assert.ok(
      !t.logs.some((l) => l.event === 'internal-error'),
      JSON.stringify(t.logs.find((l) => l.event === 'internal-error')),
    );

    // The bystander's state is exactly as it was.
    assert.deepEqual(hostUsage(t.server.host), before);
    for (let off = 0; off < pattern.length; off += 2048)
      assert.deepEqual(await b.peek(buf + off, 2048), pattern.subarray(off, off + 2048));
    const check = await b.testCmd(bfd, 3, dom.hwptId, 'check_map', {
      iova,
      length: 8n * 4096n,
      uptr: BigInt(buf),
    });
    assert.equal(check.ret, 0);
    assert.deepEqual(await b.read(fq.fd, 40), Buffer.alloc(0));
    assert.equal(await b.ioasUnmap(bfd, ioas, iova, 8 * 4096), 8n * 4096n);
    await b.end();
    await until(() => t.server.connections === 0);
    assert.deepEqual(hostUsage(t.server.host), { contexts: 0, objects: 0, pins: 0, pages: 0, domains: 0 });
  });

  test('the heap does not grow across connections', { timeout: 60_000 }, async (ctx) => {
    const t = await startServer({ log: () => {} });
    t2 = t;
    const cycle = async () => {
      const c = await PasidkitClient.connect(t.path);
      const fd = await c.open('/dev/iommu');
      const ioas = await c.ioasAlloc(fd);
      await c.testMockDomain(fd, ioas);
      const va = await c.mmap(4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      await c.ioasMap(fd, { ioasId: ioas, userVa: va, length: 4 * 4096 });
      await c.faultQueueAlloc(fd);
      await c.memfdCreate('m');
      await c.open('/dev/vfio/devices/vfio0');
      await c.ioctlRaw(fd, IOCTLS.IOMMU_IOAS_ALLOC.cmd, build(STRUCTS.iommu_ioas_alloc));
      // Half a frame left behind at the end.
      c.abort();
    };
    for (let i = 0; i < 100; i++) await cycle();
    await until(() => t.server.connections === 0);
    const h0 = heap();
    const N = 400;
    for (let i = 0; i < N; i++) await cycle();
    await until(() => t.server.connections === 0);
    const h1 = heap();
    assert.deepEqual(hostUsage(t.server.host), { contexts: 0, objects: 0, pins: 0, pages: 0, domains: 0 });
    assert.equal(t.server.host.contexts.size, 0);
    ctx.diagnostic(`heap ${h0} -> ${h1} bytes over ${N} connections`);
    // A leak of even one small object per connection would show: 400 x 2.5 KiB.
    assert.ok(h1 - h0 < 1024 * 1024, `heap grew by ${h1 - h0} bytes over ${N} connections`);
  });
});
