// Builds VT-d translation structures in emulated memory the way a driver would (vtd-model.md
// A.1-A.6): root and scalable-mode context tables, PASID directories and tables, first- and
// second-level page tables, plus the register sequence that points an IOMMU at them and the
// invalidation-queue submission a driver uses. The tests and the benchmarks use it; it writes
// real entries through PhysicalMemory, so the model under test reads exactly what is here.

import type { PhysicalMemory } from '../memory.ts';
import {
  DMA_GCMD_QIE,
  DMA_GCMD_SRTP,
  DMA_GCMD_TE,
  DMA_RTADDR_SMT,
  DMAR_GCMD_REG,
  DMAR_IQA_REG,
  DMAR_IQT_REG,
  DMAR_RTADDR_REG,
} from './regs.ts';
import {
  INV_WAIT_DSC,
  PASID_DIR_ENTRY,
  PASID_ENTRY,
  type PasidEntry,
  SM_CONTEXT_ENTRY,
  type SmContextEntry,
} from './structs.ts';

const TWO32 = 4294967296;

/** What a translation-structure builder needs from the IOMMU: its MMIO registers. */
export interface MmioTarget {
  mmioRead(offset: number, size: 4 | 8): bigint | Error;
  mmioWrite(offset: number, value: bigint, size: 4 | 8): Error | null;
}

export interface FlMapOptions {
  /** Paging levels (4 or 5). */
  levels?: number;
  /** Level of the leaf: 1 (4 KiB), 2 (2 MiB), 3 (1 GiB). */
  leafLevel?: number;
  rw?: boolean;
  us?: boolean;
  xd?: boolean;
  /** Pre-set accessed/dirty in the leaf. */
  a?: boolean;
  d?: boolean;
  /** Extra low bits ORed into the leaf (tests of reserved bits). */
  extraLo?: number;
  /** Extra high bits ORed into the leaf's high word. */
  extraHi?: number;
}

export interface SlMapOptions {
  levels?: number;
  leafLevel?: number;
  r?: boolean;
  w?: boolean;
  x?: boolean;
  extraLo?: number;
  extraHi?: number;
}

/**
 * A bump allocator of zeroed 4 KiB pages plus table writers. `toHpa` maps a table address in
 * the tables' own address space to where it lives in host memory: identity for host tables,
 * GPA -> HPA for guest (nested first-level) tables.
 */
export class PageAllocator {
  next: number;
  readonly end: number;
  constructor(start: number, end: number) {
    this.next = start;
    this.end = end;
  }
  alloc(): number {
    if (this.next + 4096 > this.end) throw new RangeError('page allocator exhausted');
    const p = this.next;
    this.next += 4096;
    return p;
  }
}

export class VtdTables {
  readonly mem: PhysicalMemory;
  readonly pages: PageAllocator;
  readonly root: number;
  private readonly ctxTables = new Map<number, number>();

  constructor(mem: PhysicalMemory, start = 0x100000, end = Math.min(mem.size, 2 ** 52)) {
    this.mem = mem;
    this.pages = new PageAllocator(start, end);
    this.root = this.pages.alloc();
  }

  /** Points the IOMMU at the root table in scalable mode and latches it (SRTP). */
  install(iommu: MmioTarget, opts: { legacy?: boolean; enable?: boolean } = {}): void {
    const v = BigInt(this.root) | (opts.legacy ? 0n : BigInt(DMA_RTADDR_SMT));
    iommu.mmioWrite(DMAR_RTADDR_REG, v, 8);
    const gsts = Number(iommu.mmioRead(0x1c, 4) as bigint);
    const keep = gsts & (DMA_GCMD_TE | DMA_GCMD_QIE);
    iommu.mmioWrite(DMAR_GCMD_REG, BigInt((keep | DMA_GCMD_SRTP) >>> 0), 4);
    if (opts.enable !== false) iommu.mmioWrite(DMAR_GCMD_REG, BigInt((keep | DMA_GCMD_TE) >>> 0), 4);
  }

  /** Context-table page for one half of a bus (allocated on first use, root entry written). */
  contextTable(sid: number): number {
    const bus = sid >>> 8;
    const upper = (sid & 0xff) >= 0x80 ? 1 : 0;
    const key = bus * 2 + upper;
    let t = this.ctxTables.get(key);
    if (t === undefined) {
      t = this.pages.alloc();
      this.ctxTables.set(key, t);
      this.mem.write64(this.root + bus * 16 + upper * 8, (t | 1) >>> 0, Math.floor(t / TWO32));
    }
    return t;
  }

  /** Writes the scalable-mode context entry of `sid`. */
  setContext(sid: number, fields: Partial<SmContextEntry>): number {
    const t = this.contextTable(sid);
    const addr = t + (sid & 0x7f) * 32;
    const w = SM_CONTEXT_ENTRY.encode(fields);
    for (let i = 0; i < 4; i++) this.mem.write64(addr + i * 8, w[2 * i]!, w[2 * i + 1]!);
    return addr;
  }

  /** Writes a legacy root entry and legacy context entry (TTM=00). */
  setLegacyContext(
    sid: number,
    e: { p?: number; fpd?: number; tt?: number; slptptr: number; aw: number; did: number },
  ): number {
    const bus = sid >>> 8;
    let t = this.ctxTables.get(bus * 2);
    if (t === undefined) {
      t = this.pages.alloc();
      this.ctxTables.set(bus * 2, t);
      this.mem.write64(this.root + bus * 16, (t | 1) >>> 0, Math.floor(t / TWO32));
    }
    const addr = t + (sid & 0xff) * 16;
    const lo = ((e.p ?? 1) | ((e.fpd ?? 0) << 1) | ((e.tt ?? 0) << 2) | (e.slptptr % TWO32)) >>> 0;
    this.mem.write64(addr, lo, Math.floor(e.slptptr / TWO32));
    this.mem.write64(addr + 8, (e.aw | (e.did << 8)) >>> 0, 0);
    return addr;
  }

  /** A PASID directory with 2^(pdts+7) entries (contiguous pages). */
  allocPasidDir(pdts = 7): number {
    const pages = Math.max(1, (2 ** (pdts + 7) * 8) / 4096);
    const first = this.pages.alloc();
    for (let i = 1; i < pages; i++) this.pages.alloc();
    return first;
  }

  /** Writes the PASID-table entry for `pasid` (allocating its PASID table and directory entry). */
  setPasidEntry(
    dir: number,
    pasid: number,
    fields: Partial<PasidEntry>,
    dirFields: { fpd?: number } = {},
  ): number {
    const de = dir + (pasid >>> 6) * 8;
    let lo = this.mem.readLo(de);
    let hi = this.mem.readHi(de);
    if ((lo & 1) === 0) {
      const t = this.pages.alloc();
      const w = PASID_DIR_ENTRY.encode({ p: 1, fpd: dirFields.fpd ?? 0, pasidTablePtr: t });
      lo = w[0]!;
      hi = w[1]!;
      this.mem.write64(de, lo, hi);
    }
    const table = (hi & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
    const addr = table + (pasid & 63) * 64;
    const w = PASID_ENTRY.encode(fields);
    for (let i = 0; i < 8; i++) this.mem.write64(addr + i * 8, w[2 * i]!, w[2 * i + 1]!);
    return addr;
  }

  /** Address of the PASID-table entry for `pasid` (0 if its directory entry is not present). */
  pasidEntryAddr(dir: number, pasid: number): number {
    const de = dir + (pasid >>> 6) * 8;
    const lo = this.mem.readLo(de);
    if ((lo & 1) === 0) return 0;
    const hi = this.mem.readHi(de);
    return (hi & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0) + (pasid & 63) * 64;
  }
}

function index(va: number, lvl: number): number {
  return Math.floor(va / 2 ** (12 + 9 * (lvl - 1))) % 512;
}

/**
 * Maps `va` -> `pa` in a first-level (x86-64) table rooted at `root` (an address in the tables'
 * own space); `toHpa` says where a table address lives in host memory, `alloc` gives new table
 * pages in the tables' space. Intermediate entries are P|RW|US. Returns the leaf entry's HPA.
 */
export function mapFl(
  mem: PhysicalMemory,
  root: number,
  va: number,
  pa: number,
  o: FlMapOptions,
  alloc: () => number,
  toHpa: (a: number) => number = (a) => a,
): number {
  const levels = o.levels ?? 4;
  const leaf = o.leafLevel ?? 1;
  let t = root;
  for (let lvl = levels; lvl > leaf; lvl--) {
    const ea = toHpa(t) + index(va, lvl) * 8;
    const lo = mem.readLo(ea);
    if ((lo & 1) === 0) {
      const n = alloc();
      mem.write64(ea, ((n % TWO32) | 7) >>> 0, Math.floor(n / TWO32));
      t = n;
    } else t = (mem.readHi(ea) & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
  }
  const ea = toHpa(t) + index(va, leaf) * 8;
  const lo =
    ((pa % TWO32) |
      1 |
      (o.rw !== false ? 2 : 0) |
      (o.us !== false ? 4 : 0) |
      (o.a ? 0x20 : 0) |
      (o.d ? 0x40 : 0) |
      (leaf > 1 ? 0x80 : 0) |
      (o.extraLo ?? 0)) >>>
    0;
  const hi = (Math.floor(pa / TWO32) | (o.xd ? 0x80000000 : 0) | (o.extraHi ?? 0)) >>> 0;
  mem.write64(ea, lo, hi);
  return ea;
}

/** Maps `gpa` -> `hpa` in a second-level table rooted at `root` (HPA). Intermediate entries are R|W|X. */
export function mapSl(
  mem: PhysicalMemory,
  root: number,
  gpa: number,
  hpa: number,
  o: SlMapOptions,
  alloc: () => number,
): number {
  const levels = o.levels ?? 4;
  const leaf = o.leafLevel ?? 1;
  let t = root;
  for (let lvl = levels; lvl > leaf; lvl--) {
    const ea = t + index(gpa, lvl) * 8;
    const lo = mem.readLo(ea);
    if ((lo & 7) === 0) {
      const n = alloc();
      mem.write64(ea, ((n % TWO32) | 7) >>> 0, Math.floor(n / TWO32));
      t = n;
    } else t = (mem.readHi(ea) & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
  }
  const ea = t + index(gpa, leaf) * 8;
  const lo =
    ((hpa % TWO32) |
      (o.r !== false ? 1 : 0) |
      (o.w !== false ? 2 : 0) |
      (o.x ? 4 : 0) |
      (leaf > 1 ? 0x80 : 0) |
      (o.extraLo ?? 0)) >>>
    0;
  mem.write64(ea, lo, (Math.floor(hpa / TWO32) | (o.extraHi ?? 0)) >>> 0);
  return ea;
}

/** Address of the paging entry for `va` at `level` (undefined if an upper level is not present). */
export function entryAddr(
  mem: PhysicalMemory,
  root: number,
  va: number,
  level: number,
  levels = 4,
  presentMask = 1,
  toHpa: (a: number) => number = (a) => a,
): number | undefined {
  let t = root;
  for (let lvl = levels; lvl > level; lvl--) {
    const ea = toHpa(t) + index(va, lvl) * 8;
    const lo = mem.readLo(ea);
    if ((lo & presentMask) === 0) return undefined;
    t = (mem.readHi(ea) & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
  }
  return toHpa(t) + index(va, level) * 8;
}

/**
 * An invalidation queue driven the way Linux's qi_submit_sync does: descriptors written at the
 * tail, each batch followed by a wait descriptor with a status write, then IQT written.
 */
export class InvalidationQueue {
  readonly mem: PhysicalMemory;
  readonly iommu: MmioTarget;
  readonly base: number;
  readonly wide: boolean;
  readonly entries: number;
  readonly status: number;
  tail = 0;

  constructor(
    mem: PhysicalMemory,
    iommu: MmioTarget,
    base: number,
    status: number,
    opts: { wide?: boolean; qs?: number } = {},
  ) {
    this.mem = mem;
    this.iommu = iommu;
    this.base = base;
    this.status = status;
    this.wide = opts.wide ?? true;
    const qs = opts.qs ?? 0;
    this.entries = this.wide ? 2 ** (qs + 7) : 2 ** (qs + 8);
    iommu.mmioWrite(DMAR_IQT_REG, 0n, 4);
    iommu.mmioWrite(DMAR_IQA_REG, BigInt(base) | (this.wide ? 1n << 11n : 0n) | BigInt(qs), 8);
    const gsts = Number(iommu.mmioRead(0x1c, 4) as bigint);
    iommu.mmioWrite(DMAR_GCMD_REG, BigInt(((gsts & DMA_GCMD_TE) | DMA_GCMD_QIE) >>> 0), 4);
  }

  /** Writes descriptors (each 2 or 4 qwords as u32 words) without moving IQT. */
  push(desc: Uint32Array): void {
    const size = this.wide ? 32 : 16;
    const a = this.base + this.tail * size;
    const words = Math.min(desc.length, size / 4);
    for (let i = 0; i < size / 4; i += 2)
      this.mem.write64(a + i * 4, i < words ? desc[i]! : 0, i + 1 < words ? desc[i + 1]! : 0);
    this.tail = (this.tail + 1) % this.entries;
  }

  /** Moves IQT to the current tail (the IOMMU processes everything up to it). */
  kick(): void {
    this.iommu.mmioWrite(DMAR_IQT_REG, BigInt(this.tail << (this.wide ? 5 : 4)), 4);
  }

  /** Submits descriptors plus a status-writing wait; returns true when the status was written. */
  submit(...descs: Uint32Array[]): boolean {
    for (const d of descs) this.push(d);
    this.mem.write32(this.status, 1);
    this.push(INV_WAIT_DSC.encode({ sw: 1, stdata: 2, staddr: BigInt(this.status) }));
    this.kick();
    return this.mem.read32(this.status) === 2;
  }
}
