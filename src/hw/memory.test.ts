import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { KernelError } from '../core/errno.ts';
import { PAGE_SIZE, PhysicalMemory, splitAddr } from './memory.ts';

test('untouched memory reads as zero and allocates nothing', () => {
  const m = new PhysicalMemory(1n << 30n);
  assert.equal(m.read(0x1234n, 8), 0n);
  assert.deepEqual(m.readBytes(0x3fff_fff0n, 16), new Uint8Array(16));
  assert.equal(m.framesAllocated, 0);
});

test('values round-trip little-endian at every size, including across a frame boundary', () => {
  const m = new PhysicalMemory(1n << 30n);
  assert.equal(m.write(0x1000n, 0x1122334455667788n, 8), null);
  assert.equal(m.read(0x1000n, 4), 0x55667788n);
  assert.equal(m.read(0x1004n, 4), 0x11223344n);
  assert.equal(m.read(0x1000n, 1), 0x88n);
  assert.equal(m.write(0x1ffdn, 0xaabbccddeeff0011n, 8), null);
  assert.equal(m.read(0x1ffdn, 8), 0xaabbccddeeff0011n);
  assert.equal(m.read(0x2000n, 2), 0xddeen);
  assert.equal(m.write(0x10n, 0x1ffn, 1), null, 'value truncated to the size');
  assert.equal(m.read(0x10n, 2), 0xffn);
});

test('accesses at or beyond the size are EFAULT', () => {
  const m = new PhysicalMemory(0x10000n);
  const e = m.read(0x10000n, 1);
  assert.ok(e instanceof KernelError);
  assert.equal(e.code, 'EFAULT');
  const w = m.write(0xfffcn, 0n, 8);
  assert.ok(w instanceof KernelError);
  assert.equal(m.read(0xfff8n, 8), 0n);
  assert.ok(m.readBytes(-1n, 1) instanceof KernelError);
  assert.ok(m.writeBytes(0xffffn, new Uint8Array(2)) instanceof KernelError);
  assert.equal(m.framesAllocated, 0, 'a refused write allocates nothing');
});

test('52-bit addresses are sparse and exact', () => {
  const m = new PhysicalMemory(1n << 52n);
  const a = (1n << 52n) - 8n;
  assert.equal(m.write(a, 0xdeadbeefcafef00dn, 8), null);
  assert.equal(m.read(a, 8), 0xdeadbeefcafef00dn);
  assert.equal(m.read(a - 4096n, 8), 0n);
  assert.equal(m.framesAllocated, 1);
  const n = Number(a);
  assert.equal(m.readLo(n), 0xcafef00d);
  assert.equal(m.readHi(n), 0xdeadbeef);
});

test('byte ranges match value accesses (property)', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 3 * PAGE_SIZE }),
      fc.uint8Array({ minLength: 0, maxLength: 2 * PAGE_SIZE }),
      (off, data) => {
        const m = new PhysicalMemory(16n * 4096n);
        assert.equal(m.writeBytes(BigInt(off), data), null);
        const back = m.readBytes(BigInt(off), data.length);
        assert.deepEqual(back, data);
        if (data.length >= 1) assert.equal(m.read(BigInt(off), 1), BigInt(data[0]!));
      },
    ),
    { numRuns: 100 },
  );
});

test('writes stamp the frame with an increasing sequence number', () => {
  const m = new PhysicalMemory(1n << 30n);
  assert.equal(m.frameSeq(5), 0);
  m.write64(5 * 4096, 1, 2);
  const s1 = m.frameSeq(5);
  m.write32(6 * 4096, 7);
  assert.ok(m.frameSeq(6) > s1);
  assert.equal(m.readU64(5 * 4096), (2n << 32n) | 1n);
  m.writeU64(5 * 4096 + 8, 0xffffffff00000001n);
  assert.equal(m.readHi(5 * 4096 + 8), 0xffffffff);
  assert.deepEqual(splitAddr(2 ** 40 + 5), [5, 256]);
});

test('both layouts: flat (up to 8 GiB) and slots (beyond) behave the same', () => {
  for (const size of [1n << 30n, 1n << 36n, 1n << 52n]) {
    const m = new PhysicalMemory(size);
    assert.equal(m.flat !== null, size <= 1n << 33n);
    const a = Number(size) - 4096 * 3;
    m.write64(a, 0x1234, 0x5678);
    assert.equal(m.readU64(a), 0x5678_0000_1234n);
    assert.deepEqual(m.frame(Math.floor(a / 4096)).subarray(0, 2), Uint32Array.of(0x1234, 0x5678));
    const seq = m.frameSeq(Math.floor(a / 4096));
    // the IOMMU's own A/D updates do not count as writes
    m.writeWordHw(Math.floor(a / 4096), 0, 0x1234 | 0x40);
    assert.equal(m.frameSeq(Math.floor(a / 4096)), seq);
    assert.equal(m.readLo(a), 0x1274);
    // on a never-written frame it is an ordinary write
    m.writeWordHw(7, 3, 9);
    assert.ok(m.frameSeq(7) > seq);
    assert.equal(m.read32(7 * 4096 + 12), 9);
    assert.equal(m.framesAllocated, 2);
  }
});
