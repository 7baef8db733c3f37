// Emulated host-physical memory: what the IOMMU's table walks, the invalidation queue's status
// writes and device DMA read and write (SCENARIO.md family 2, vtd-model.md B.2 "read error").
//
// Sparse: 4 KiB frames come into existence on their first write; a read of a frame never written
// gives zeros. Addresses are plain numbers (< 2^52, so exact); 64-bit table entries are handled as
// two u32 halves on the hot path, bigint only at the API edge. An access at or beyond the
// machine's `memory` size is "not backed": the mem_* API answers EFAULT, and the IOMMU turns a
// table read there into the spec's fault for a failed memory access.
//
// Layout, chosen for the table walk (shared/bench/WORKLOADS.md translate-nested-walk):
// - machines up to FLAT_MAX_BYTES keep their frames at their physical position in one buffer
//   whose pages the operating system only materialises when first written (the zero-filled
//   allocation is lazily backed, as the C reference's mmap is), so a table read is one load;
// - larger machines map a frame number to a slot (`slotOf`, a flat Int32Array up to 2^28
//   frames, a Map beyond), slots living side by side in slabs of SLAB_FRAMES frames, slot 0
//   being the shared zero frame.
// Either way a frame counts as allocated from its first write, and every frame carries the
// sequence number of its last write, so the IOMMU's invariant checker can tell a cache entry made
// stale by a later table write (allowed until software invalidates) from one that is wrong.

import { endianness } from 'node:os';
import { KernelError } from '../core/errno.ts';

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const FRAME_WORDS = 1024;
/** Frames per slab: slot s lives in slabs[s >>> SLAB_SHIFT] at word ((s & SLAB_MASK) << 10). */
export const SLAB_SHIFT = 8;
export const SLAB_FRAMES = 1 << SLAB_SHIFT;
export const SLAB_MASK = SLAB_FRAMES - 1;
/** Largest physical address width the model accepts. */
export const MAX_PHYS_BITS = 52;

/** Machines up to this size use the flat layout (2^31 words: every index is an int32). */
export const FLAT_MAX_BYTES = 2 ** 33;
const SLOT_FLAT_LIMIT = 2 ** 28;
const TWO32 = 4294967296;

if (endianness() !== 'LE') throw new Error('pasidkit models little-endian memory through typed arrays');

export class PhysicalMemory {
  /** Size in bytes: addresses >= size are not backed. */
  readonly size: number;
  /** Number of backed frames: a frame number >= frameLimit is not backed. */
  readonly frameLimit: number;
  /** Flat layout: word i of frame fn is flat[fn * 1024 + i]. Null for the slot layout. */
  readonly flat: Uint32Array | null;
  /**
   * The same words as `flat`, signed: a walk that only tests bits and builds indices keeps every
   * value an int32 this way, where a u32 load must be checked for the sign bit before such use.
   */
  readonly flat32: Int32Array | null;
  private readonly flatSeq: Float64Array | null;
  private flatFrames = 0;
  /** Slot layout: frame number -> slot (0 = never written), when a flat map fits. */
  readonly slotOf: Int32Array | null;
  private readonly slotMap: Map<number, number> | null;
  /** Frame data, SLAB_FRAMES frames per slab. */
  readonly slabs: Uint32Array[] = [];
  private readonly seqs: Float64Array[] = [];
  private nextSlot = 1;
  /** Sequence number of the most recent write (any frame). */
  writeSeq = 0;

  constructor(size: bigint | number) {
    const n = typeof size === 'bigint' ? size : BigInt(size);
    if (n < 0n || n > 1n << BigInt(MAX_PHYS_BITS)) {
      throw new RangeError(`memory size must be in [0, 2^${MAX_PHYS_BITS}], got ${n}`);
    }
    this.size = Number(n);
    this.frameLimit = Math.ceil(this.size / PAGE_SIZE);
    if (this.size <= FLAT_MAX_BYTES) {
      this.flat = new Uint32Array(this.frameLimit * FRAME_WORDS);
      this.flat32 = new Int32Array(this.flat.buffer);
      this.flatSeq = new Float64Array(this.frameLimit);
      this.slotOf = null;
      this.slotMap = null;
      return;
    }
    this.flat = null;
    this.flat32 = null;
    this.flatSeq = null;
    if (this.frameLimit <= SLOT_FLAT_LIMIT) {
      this.slotOf = new Int32Array(this.frameLimit);
      this.slotMap = null;
    } else {
      this.slotOf = null;
      this.slotMap = new Map();
    }
    this.addSlab(); // slab 0 holds the zero frame in slot 0
  }

  private addSlab(): void {
    this.slabs.push(new Uint32Array(SLAB_FRAMES * FRAME_WORDS));
    this.seqs.push(new Float64Array(SLAB_FRAMES));
  }

  /** Frames written so far. */
  get framesAllocated(): number {
    return this.flat !== null ? this.flatFrames : this.nextSlot - 1;
  }

  /**
   * Where word 0 of frame `fn` (< frameLimit) is, for reading: sets `rdArr` and returns the index
   * in it. A never-written frame reads as zeros.
   */
  locate(fn: number): number {
    const flat = this.flat;
    if (flat !== null) {
      this.rdArr = flat;
      return fn * FRAME_WORDS;
    }
    const s = this.slot(fn);
    this.rdArr = this.slabs[s >>> SLAB_SHIFT]!;
    return (s & SLAB_MASK) << 10;
  }
  /** The array `locate` pointed into. */
  rdArr: Uint32Array = new Uint32Array(0);

  /** Slot of frame `fn` (< frameLimit) in the slot layout; 0 when never written (reads as zeros). */
  slot(fn: number): number {
    const so = this.slotOf;
    if (so !== null) return so[fn]!;
    return this.slotMap!.get(fn) ?? 0;
  }

  /** Slot of frame `fn`, allocated if needed, stamped with a new write sequence number. */
  slotForWrite(fn: number): number {
    let s = this.slot(fn);
    if (s === 0) {
      s = this.nextSlot++;
      if (s >>> SLAB_SHIFT >= this.slabs.length) this.addSlab();
      if (this.slotOf !== null) this.slotOf[fn] = s;
      else this.slotMap!.set(fn, s);
    }
    this.seqs[s >>> SLAB_SHIFT]![s & SLAB_MASK] = ++this.writeSeq;
    return s;
  }

  /** Sequence number of the last write to frame `fn` (0: never written). */
  frameSeq(fn: number): number {
    if (this.flatSeq !== null) return this.flatSeq[fn]!;
    const s = this.slot(fn);
    return s === 0 ? 0 : this.seqs[s >>> SLAB_SHIFT]![s & SLAB_MASK]!;
  }

  /** Stamps frame `fn` as written now (flat layout); returns the index of its word 0. */
  private touchFlat(fn: number): number {
    const seq = this.flatSeq!;
    if (seq[fn] === 0) this.flatFrames++;
    seq[fn] = ++this.writeSeq;
    return fn * FRAME_WORDS;
  }

  /** The 1024 words of frame `fn` (a view; the zero frame when never written). Not for hot paths. */
  frame(fn: number): Uint32Array {
    if (this.flat !== null) return this.flat.subarray(fn * FRAME_WORDS, (fn + 1) * FRAME_WORDS);
    const s = this.slot(fn);
    const base = (s & SLAB_MASK) << 10;
    return this.slabs[s >>> SLAB_SHIFT]!.subarray(base, base + FRAME_WORDS);
  }

  /** Writes word `wi` (0..1023) of frame `fn`. */
  writeWord(fn: number, wi: number, v: number): void {
    if (this.flat !== null) {
      this.flat[this.touchFlat(fn) + wi] = v;
      return;
    }
    const s = this.slotForWrite(fn);
    this.slabs[s >>> SLAB_SHIFT]![((s & SLAB_MASK) << 10) + wi] = v;
  }

  /**
   * Writes word `wi` of an already written frame without counting as a software write: the
   * IOMMU's own accessed/dirty updates, which change no translation and so explain no stale
   * cache entry. (A never-written frame is written normally.)
   */
  writeWordHw(fn: number, wi: number, v: number): void {
    const flat = this.flat;
    if (flat !== null && this.flatSeq![fn] !== 0) {
      flat[fn * FRAME_WORDS + wi] = v;
      return;
    }
    const s = flat === null ? this.slot(fn) : 0;
    if (s === 0) {
      this.writeWord(fn, wi, v);
      return;
    }
    this.slabs[s >>> SLAB_SHIFT]![((s & SLAB_MASK) << 10) + wi] = v;
  }

  /** Whether [addr, addr+len) is entirely backed. */
  backed(addr: number, len: number): boolean {
    return addr >= 0 && len >= 0 && addr + len <= this.size;
  }

  // ---- 32/64-bit accessors on plain-number addresses (callers check `backed` first) ----

  /** u32 at a 4-aligned address. */
  read32(addr: number): number {
    const i = this.locate(Math.floor(addr / PAGE_SIZE));
    return this.rdArr[i + ((addr % PAGE_SIZE) >>> 2)]!;
  }

  write32(addr: number, v: number): void {
    this.writeWord(Math.floor(addr / PAGE_SIZE), (addr % PAGE_SIZE) >>> 2, v);
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
    const flat = this.flat;
    if (flat !== null) {
      const i = this.touchFlat(Math.floor(addr / PAGE_SIZE)) + ((addr % PAGE_SIZE) >>> 2);
      flat[i] = lo;
      flat[i + 1] = hi;
      return;
    }
    const s = this.slotForWrite(Math.floor(addr / PAGE_SIZE));
    const i = ((s & SLAB_MASK) << 10) + ((addr % PAGE_SIZE) >>> 2);
    const slab = this.slabs[s >>> SLAB_SHIFT]!;
    slab[i] = lo;
    slab[i + 1] = hi;
  }

  /** u64 at an 8-aligned address as a bigint (not for hot paths). */
  readU64(addr: number): bigint {
    return (BigInt(this.read32(addr + 4)) << 32n) | BigInt(this.read32(addr));
  }

  writeU64(addr: number, v: bigint): void {
    this.write64(addr, Number(v & 0xffffffffn), Number((v >> 32n) & 0xffffffffn));
  }

  // ---- byte ranges (DMA data, unaligned mem_* accesses) ----

  /** Byte view of frame `fn`; `write` stamps it as written (and allocates it). */
  private bytesOf(fn: number, write: boolean): Uint8Array {
    if (this.flat !== null) {
      if (write) this.touchFlat(fn);
      return new Uint8Array(this.flat.buffer, fn * PAGE_SIZE, PAGE_SIZE);
    }
    const s = write ? this.slotForWrite(fn) : this.slot(fn);
    const slab = this.slabs[s >>> SLAB_SHIFT]!;
    return new Uint8Array(slab.buffer, slab.byteOffset + ((s & SLAB_MASK) << 12), PAGE_SIZE);
  }

  /** Copies [addr, addr+dst.length) into dst. Caller checks `backed`. */
  readInto(addr: number, dst: Uint8Array): void {
    let done = 0;
    while (done < dst.length) {
      const a = addr + done;
      const off = a % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, dst.length - done);
      dst.set(this.bytesOf(Math.floor(a / PAGE_SIZE), false).subarray(off, off + n), done);
      done += n;
    }
  }

  /** Copies src to [addr, addr+src.length). Caller checks `backed`. */
  writeFrom(addr: number, src: Uint8Array): void {
    let done = 0;
    while (done < src.length) {
      const a = addr + done;
      const off = a % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - off, src.length - done);
      this.bytesOf(Math.floor(a / PAGE_SIZE), true).set(src.subarray(done, done + n), off);
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
