// Emulated host-physical memory: what the IOMMU's table walks, the invalidation queue's status
// writes and device DMA read and write (SCENARIO.md family 2, vtd-model.md B.2 "read error").
//
// Sparse: 4 KiB frames come into existence on their first write; a read of a frame never written
// gives zeros. Addresses are plain numbers (< 2^52, so exact); 64-bit table entries are handled as
// two u32 halves on the hot path, bigint only at the API edge. An access at or beyond the
// machine's `memory` size is "not backed": the mem_* API answers EFAULT, and the IOMMU turns a
// table read there into the spec's fault for a failed memory access.
//
// Every frame also carries the sequence number of its last write (word FRAME_SEQ_WORD), so the
// IOMMU's invariant checker can tell a cache entry made stale by a later table write (allowed
// until software invalidates) from one that is simply wrong.

import { endianness } from 'node:os';
import { KernelError } from '../core/errno.ts';

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
/** Words of data in a frame; the extra word holds the frame's last-write sequence number. */
export const FRAME_WORDS = 1024;
export const FRAME_SEQ_WORD = 1024;
/** Largest physical address width the model accepts (CAP.MGAW can say no more than 2^52 bytes here). */
export const MAX_PHYS_BITS = 52;

const CHUNK_FRAMES = 32768; // 128 MiB of address space per chunk of the frame directory
const TWO32 = 4294967296;

if (endianness() !== 'LE') throw new Error('pasidkit models little-endian memory through typed arrays');

/** The frame every untouched address reads from. Never written. */
const ZERO_FRAME = new Uint32Array(FRAME_WORDS + 1);

export class PhysicalMemory {
  /** Size in bytes: addresses >= size are not backed. */
  readonly size: number;
  /** Number of backed frames: a frame number >= frameLimit is not backed. */
  readonly frameLimit: number;
  /** Sequence number of the most recent write (any frame). */
  writeSeq = 0;
  /** Frames allocated so far. */
  framesAllocated = 0;
  private readonly chunks: (Uint32Array[] | undefined)[];

  constructor(size: bigint | number) {
    const n = typeof size === 'bigint' ? size : BigInt(size);
    if (n < 0n || n > 1n << BigInt(MAX_PHYS_BITS)) {
      throw new RangeError(`memory size must be in [0, 2^${MAX_PHYS_BITS}], got ${n}`);
    }
    this.size = Number(n);
    this.frameLimit = Math.ceil(this.size / PAGE_SIZE);
    const nChunks = Math.ceil(this.frameLimit / CHUNK_FRAMES);
    // Dense directory for ordinary sizes; beyond that V8 keeps the holey array as a dictionary.
    this.chunks = nChunks <= 1 << 20 ? new Array(nChunks).fill(undefined) : [];
  }

  /** The frame holding frame number `fn` (< frameLimit), for reading: may be the shared zero frame. */
  frame(fn: number): Uint32Array {
    const c = this.chunks[(fn / CHUNK_FRAMES) | 0];
    if (c === undefined) return ZERO_FRAME;
    return c[fn & (CHUNK_FRAMES - 1)]!;
  }

  /** The frame for writing (allocated on first use); stamps it with a new write sequence number. */
  frameForWrite(fn: number): Uint32Array {
    const ci = (fn / CHUNK_FRAMES) | 0;
    let c = this.chunks[ci];
    if (c === undefined) {
      c = new Array<Uint32Array>(CHUNK_FRAMES).fill(ZERO_FRAME);
      this.chunks[ci] = c;
    }
    const i = fn & (CHUNK_FRAMES - 1);
    let f = c[i]!;
    if (f === ZERO_FRAME) {
      f = new Uint32Array(FRAME_WORDS + 1);
      c[i] = f;
      this.framesAllocated++;
    }
    f[FRAME_SEQ_WORD] = ++this.writeSeq;
    return f;
  }

  /** Sequence number of the last write to frame `fn` (0: never written). */
  frameSeq(fn: number): number {
    return this.frame(fn)[FRAME_SEQ_WORD]!;
  }

  /** Whether [addr, addr+len) is entirely backed. */
  backed(addr: number, len: number): boolean {
    return addr >= 0 && len >= 0 && addr + len <= this.size;
  }

  // ---- 32/64-bit accessors on plain-number addresses (callers check `backed` first) ----

  /** u32 at a 4-aligned address. */
  read32(addr: number): number {
    return this.frame(Math.floor(addr / PAGE_SIZE))[(addr % PAGE_SIZE) >>> 2]!;
  }

  write32(addr: number, v: number): void {
    this.frameForWrite(Math.floor(addr / PAGE_SIZE))[(addr % PAGE_SIZE) >>> 2] = v;
  }

  /** Low half of the u64 at an 8-aligned address. */
  readLo(addr: number): number {
    return this.read32(addr);
  }

  /** High half of the u64 at an 8-aligned address. */
  readHi(addr: number): number {
    return this.read32(addr + 4);
  }

  /** u64 at an 8-aligned address, as two halves. */
  write64(addr: number, lo: number, hi: number): void {
    const f = this.frameForWrite(Math.floor(addr / PAGE_SIZE));
    const w = (addr % PAGE_SIZE) >>> 2;
    f[w] = lo;
    f[w + 1] = hi;
  }

  /** u64 at an 8-aligned address as a bigint (not for hot paths). */
  readU64(addr: number): bigint {
    return (BigInt(this.read32(addr + 4)) << 32n) | BigInt(this.read32(addr));
  }

  writeU64(addr: number, v: bigint): void {
    this.write64(addr, Number(v & 0xffffffffn), Number((v >> 32n) & 0xffffffffn));
  }

  // ---- byte ranges (DMA data, unaligned mem_* accesses) ----

  /** Copies [addr, addr+dst.length) into dst. Caller checks `backed`. */
  readInto(addr: number, dst: Uint8Array): void {
    let done = 0;
    while (done < dst.length) {
      const a = addr + done;
      const fn = Math.floor(a / PAGE_SIZE);
      const off = a % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, dst.length - done);
      const f = this.frame(fn);
      dst.set(new Uint8Array(f.buffer, f.byteOffset + off, n), done);
      done += n;
    }
  }

  /** Copies src to [addr, addr+src.length). Caller checks `backed`. */
  writeFrom(addr: number, src: Uint8Array): void {
    let done = 0;
    while (done < src.length) {
      const a = addr + done;
      const fn = Math.floor(a / PAGE_SIZE);
      const off = a % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, src.length - done);
      const f = this.frameForWrite(fn);
      new Uint8Array(f.buffer, f.byteOffset + off, n).set(src.subarray(done, done + n));
      done += n;
    }
  }

  // ---- the mem_* API: bigint addresses and values, KernelError for unbacked memory ----

  private check(addr: bigint, len: number, what: string): number | KernelError {
    if (addr < 0n || addr + BigInt(len) > BigInt(this.size)) {
      return new KernelError(
        'EFAULT',
        `${what} of ${len} bytes at 0x${addr.toString(16)}: not backed (memory is 0x${this.size.toString(16)} bytes)`,
      );
    }
    return Number(addr);
  }

  /** mem_read: a little-endian value of 1, 2, 4 or 8 bytes. */
  read(addr: bigint, size: 1 | 2 | 4 | 8): bigint | KernelError {
    const a = this.check(addr, size, 'mem_read');
    if (typeof a !== 'number') return a;
    const b = new Uint8Array(size);
    this.readInto(a, b);
    let v = 0n;
    for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
    return v;
  }

  /** mem_write: a little-endian value of 1, 2, 4 or 8 bytes (the value is truncated to the size). */
  write(addr: bigint, value: bigint, size: 1 | 2 | 4 | 8): null | KernelError {
    const a = this.check(addr, size, 'mem_write');
    if (typeof a !== 'number') return a;
    const b = new Uint8Array(size);
    let v = BigInt.asUintN(size * 8, value);
    for (let i = 0; i < size; i++) {
      b[i] = Number(v & 0xffn);
      v >>= 8n;
    }
    this.writeFrom(a, b);
    return null;
  }

  /** mem_read of a byte range. */
  readBytes(addr: bigint, length: number): Uint8Array | KernelError {
    const a = this.check(addr, length, 'mem_read');
    if (typeof a !== 'number') return a;
    const b = new Uint8Array(length);
    this.readInto(a, b);
    return b;
  }

  /** mem_write of a byte range. */
  writeBytes(addr: bigint, data: Uint8Array): null | KernelError {
    const a = this.check(addr, data.length, 'mem_write');
    if (typeof a !== 'number') return a;
    this.writeFrom(a, data);
    return null;
  }
}

/** Splits a number address (< 2^53) into its u32 halves. */
export function splitAddr(addr: number): [lo: number, hi: number] {
  const lo = addr >>> 0;
  return [lo, (addr - lo) / TWO32];
}
