// A user process as iommufd sees it (WIRE.md "process = fd table + user address space",
// research iommufd.md B.4 and G): a file table that hands out the lowest free descriptor, as
// Linux's alloc_fd does; an mm of page-granular mappings (anonymous, shared or private, and
// memfd-backed) over a host-wide physical page pool; and the counters the kernel keeps for
// pinned memory (mm->pinned_vm "VmPin", mm->locked_vm "VmLck", user->locked_vm) with the
// RLIMIT_MEMLOCK check that iommufd's page accounting applies.
//
// Physical pages are numbers (pfns) with a reference count and a pin count in typed arrays, so
// the pin/unpin and map/unmap hot paths touch no objects. A long-term pin of a private mapping
// "unshares" the page first (FOLL_LONGTERM breaks COW at pin time), which is why a later CPU
// write to a read-only pinned private page does not move it (selftest `ro_unshare`).

import { ERRNO, type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { invariant as importedInvariant } from '../core/invariants.ts';
import type { PhysicalMemory } from '../hw/memory.ts';
import type { FrameAllocator } from '../iommu/frames.ts';

// A local binding: imported bindings cost a getter call each on hot paths once transpiled.
const invariant: typeof importedInvariant = importedInvariant;

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;
/** Pages per 2 MiB huge page. */
export const HPAGE_PAGES = 512;

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;

/** One zeroed page, the source of zero-fills of recycled frames in the machine's memory. */
const ZERO_PAGE = new Uint8Array(PAGE_SIZE);

/**
 * The host's physical memory: pages by pfn, with reference and pin counts (struct page).
 *
 * Standalone (no backing), the pool is unbounded and a page's bytes live in a map, made on the
 * first write: the selftest ports' hosts use this. Backed by a machine's PhysicalMemory
 * (src/hw/memory.ts), pfn is the physical frame number, the bytes are the machine's memory,
 * the pool is bounded by its size (an allocation beyond it fails with 0, as out of memory), and
 * the same pool gives the IOMMU driver its table frames (FrameAllocator, counted in
 * `kernelLive` rather than `live`), so that device DMA through the driver's tables lands in
 * the user's pages. Frame 0 is never handed out in either mode: 0 means "no page".
 */
export class PhysMem implements FrameAllocator {
  private ref = new Int32Array(1024);
  private pin = new Int32Array(1024);
  private readonly data = new Map<number, Uint8Array>();
  private readonly freeList: number[] = [];
  private next = 1; // pfn 0 is never handed out: 0 means "no page" in every table
  /** The machine's memory holding the pages' bytes, or null (standalone). */
  readonly backing: PhysicalMemory | null;
  /** Frames that exist: backed mode only (Infinity standalone). */
  private readonly limit: number;
  /** User pages currently allocated. */
  live = 0;
  /** Frames held by the IOMMU driver (allocFrame / allocFrames). */
  kernelLive = 0;

  constructor(backing: PhysicalMemory | null = null) {
    this.backing = backing;
    this.limit = backing ? backing.frameLimit : Number.POSITIVE_INFINITY;
  }

  private grow(min: number): void {
    let n = this.ref.length;
    while (n <= min) n *= 2;
    const r = new Int32Array(n);
    r.set(this.ref);
    this.ref = r;
    const p = new Int32Array(n);
    p.set(this.pin);
    this.pin = p;
  }

  /**
   * Zeroes a frame of the backing memory before it is handed out: always for a recycled frame,
   * and for a fresh one only if something wrote it (never-written frames read as zeros).
   */
  private zero(pfn: number, recycled: boolean): void {
    const m = this.backing!;
    if (!recycled && m.frameSeq(pfn) === 0) return;
    const flat = m.flat;
    if (flat !== null) {
      flat.fill(0, pfn * 1024, pfn * 1024 + 1024);
      m.writeWord(pfn, 0, 0); // stamps the frame as written now
    } else m.writeFrom(pfn * PAGE_SIZE, ZERO_PAGE);
  }

  /** A zeroed page with one reference; 0 when a backed pool is exhausted. */
  alloc(): number {
    let pfn: number;
    let recycled = false;
    if (this.freeList.length > 0) {
      pfn = this.freeList.pop()!;
      recycled = true;
    } else {
      if (this.next >= this.limit) return 0;
      pfn = this.next++;
    }
    if (pfn >= this.ref.length) this.grow(pfn);
    this.ref[pfn] = 1;
    this.live++;
    if (this.backing !== null) this.zero(pfn, recycled);
    return pfn;
  }

  get(pfn: number): void {
    this.ref[pfn]!++;
  }

  put(pfn: number): void {
    const r = --this.ref[pfn]!;
    invariant(r >= 0, 'PhysMem: page reference count below zero');
    if (r === 0) {
      invariant(this.pin[pfn] === 0, 'PhysMem: freeing a pinned page');
      if (this.backing === null) this.data.delete(pfn);
      this.freeList.push(pfn);
      this.live--;
    }
  }

  /**
   * `n` physically contiguous pages aligned to `align` pages (a huge page), each with one
   * reference. Taken from fresh memory, never from the free list; 0 when a backed pool has no
   * such run left (frames skipped for the alignment go to the free list).
   */
  allocContig(n: number, align: number): number {
    const start = Math.ceil(this.next / align) * align;
    if (start + n > this.limit) return 0;
    if (this.backing !== null) for (let f = this.next; f < start; f++) this.freeList.push(f);
    this.next = start + n;
    if (this.next >= this.ref.length) this.grow(this.next);
    for (let i = 0; i < n; i++) {
      this.ref[start + i] = 1;
      if (this.backing !== null) this.zero(start + i, false);
    }
    this.live += n;
    return start;
  }

  // ---- FrameAllocator: the IOMMU driver's frames, from the same pool ----

  allocFrame(): number {
    const pfn = this.alloc();
    if (pfn !== 0) {
      this.live--;
      this.kernelLive++;
    }
    return pfn;
  }

  allocFrames(n: number): number {
    if (n === 1) return this.allocFrame();
    const pfn = this.allocContig(n, 1);
    if (pfn !== 0) {
      this.live -= n;
      this.kernelLive += n;
    }
    return pfn;
  }

  freeFrame(pfn: number): void {
    invariant(
      this.ref[pfn] === 1 && this.pin[pfn] === 0,
      'PhysMem: freeing a frame that is not a driver frame',
    );
    this.kernelLive--;
    this.live++;
    this.put(pfn);
  }

  /** pin_user_pages of pfns[from, to): the hot path of pinning, no call per page. */
  pinPages(pfns: Int32Array, from: number, to: number): void {
    const ref = this.ref;
    const pin = this.pin;
    for (let i = from; i < to; i++) {
      const pfn = pfns[i]!;
      ref[pfn]!++;
      pin[pfn]!++;
    }
  }

  /**
   * The unpin hot path of a pin table: drop one hold on each of holders[first..last]; a page
   * whose last hold goes is unpinned (and freed if nothing else references it). Returns how
   * many pages were unpinned.
   */
  releaseHolds(pfns: Int32Array, holders: Int32Array, first: number, last: number): number {
    const ref = this.ref;
    const pin = this.pin;
    const standalone = this.backing === null;
    let freed = 0;
    for (let i = first; i <= last; i++) {
      const h = --holders[i]!;
      if (h > 0) continue;
      invariant(h === 0, 'iopt_pages: unhold of a page nobody holds');
      const pfn = pfns[i]!;
      pfns[i] = 0;
      invariant(pin[pfn]! > 0, 'PhysMem: unpin of a page that is not pinned');
      pin[pfn]!--;
      if (--ref[pfn]! === 0) {
        if (standalone) this.data.delete(pfn);
        this.freeList.push(pfn);
        this.live--;
      }
      freed++;
    }
    return freed;
  }

  /** pin_user_pages: a pin also holds a reference, so the page outlives munmap. */
  pinPage(pfn: number): void {
    this.ref[pfn]!++;
    this.pin[pfn]!++;
  }

  unpinPage(pfn: number): void {
    const p = --this.pin[pfn]!;
    invariant(p >= 0, 'PhysMem: unpin of a page that is not pinned');
    this.put(pfn);
  }

  pinCount(pfn: number): number {
    return this.pin[pfn] ?? 0;
  }

  refCount(pfn: number): number {
    return this.ref[pfn] ?? 0;
  }

  /** Total pins over all pages (for leak checks). */
  totalPins(): number {
    let s = 0;
    for (let i = 0; i < this.next && i < this.pin.length; i++) s += this.pin[i]!;
    return s;
  }

  /** Standalone: the page's bytes, made on first write; reads of an untouched page see zeros. */
  private bytes(pfn: number, forWrite: boolean): Uint8Array | null {
    let d = this.data.get(pfn);
    if (d === undefined && forWrite) {
      d = new Uint8Array(PAGE_SIZE);
      this.data.set(pfn, d);
    }
    return d ?? null;
  }

  copyPage(dst: number, src: number): void {
    const m = this.backing;
    if (m !== null) {
      const b = new Uint8Array(PAGE_SIZE);
      m.readInto(src * PAGE_SIZE, b);
      m.writeFrom(dst * PAGE_SIZE, b);
      return;
    }
    const s = this.data.get(src);
    if (s) this.bytes(dst, true)!.set(s);
  }

  /** Read `len` bytes at physical address `pa` (may cross pages). */
  read(pa: number, dst: Uint8Array, off = 0, len = dst.length): void {
    const m = this.backing;
    if (m !== null) {
      m.readInto(pa, dst.subarray(off, off + len));
      return;
    }
    while (len > 0) {
      const pfn = Math.floor(pa / PAGE_SIZE);
      const po = pa % PAGE_SIZE;
      const n = Math.min(len, PAGE_SIZE - po);
      const d = this.bytes(pfn, false);
      if (d) dst.set(d.subarray(po, po + n), off);
      else dst.fill(0, off, off + n);
      pa += n;
      off += n;
      len -= n;
    }
  }

  write(pa: number, src: Uint8Array, off = 0, len = src.length): void {
    const m = this.backing;
    if (m !== null) {
      m.writeFrom(pa, src.subarray(off, off + len));
      return;
    }
    while (len > 0) {
      const pfn = Math.floor(pa / PAGE_SIZE);
      const po = pa % PAGE_SIZE;
      const n = Math.min(len, PAGE_SIZE - po);
      this.bytes(pfn, true)!.set(src.subarray(off, off + n), po);
      pa += n;
      off += n;
      len -= n;
    }
  }
}

/** An open file description (struct file): shared by dup'ed/forked descriptors. */
export abstract class KFile {
  abstract readonly kind: string;
  /** Descriptors referring to this file (fput on the last one calls release). */
  fdRefs = 0;
  /** Called when the last descriptor closes. */
  abstract release(): void;
  read(_p: Process, _count: number): Uint8Array | KernelError {
    return kerr('EINVAL', `read on a ${this.kind} file`);
  }
  write(_p: Process, _bytes: Uint8Array): number | KernelError {
    return kerr('EINVAL', `write on a ${this.kind} file`);
  }
  /** f_op->mmap for files that are not memfds: the pages to map, as a file object. */
  mmapFile(
    _p: Process,
    _offset: number,
    _length: number,
    _prot: number,
    _flags: number,
  ): MemFile | KernelError {
    return kerr('ENODEV', `mmap of a ${this.kind} file`);
  }
}

/** A memfd (shmem file); also the backing of MAP_SHARED|MAP_ANONYMOUS memory. */
export class MemFile extends KFile {
  readonly kind = 'memfd';
  readonly name: string;
  readonly phys: PhysMem;
  size = 0;
  /** pfn of each file page, 0 = not yet allocated. */
  pages = new Int32Array(0);
  /** Mappings and fds keeping the file alive. */
  users = 0;
  /** Called when the last mapping or fd goes (a vma_ops close for driver mappings). */
  onRelease: (() => void) | null = null;
  readonly hugetlb: boolean;
  constructor(phys: PhysMem, name: string, hugetlb = false) {
    super();
    this.phys = phys;
    this.name = name;
    this.hugetlb = hugetlb;
  }
  release(): void {
    this.putUser();
  }
  getUser(): void {
    this.users++;
  }
  putUser(): void {
    if (--this.users === 0) {
      this.truncate(0);
      const r = this.onRelease;
      this.onRelease = null;
      r?.();
    }
  }
  truncate(size: number): void {
    const npages = Math.ceil(size / PAGE_SIZE);
    if (npages < this.pages.length) {
      for (let i = npages; i < this.pages.length; i++) {
        const pfn = this.pages[i]!;
        if (pfn !== 0) this.phys.put(pfn);
      }
      this.pages = this.pages.slice(0, npages);
    } else if (npages > this.pages.length) {
      const p = new Int32Array(npages);
      p.set(this.pages);
      this.pages = p;
    }
    this.size = size;
  }
  /** The page at file page index `idx`, allocated on first use; 0 if beyond the end. */
  page(idx: number): number {
    if (idx >= this.pages.length) return 0;
    let pfn = this.pages[idx]!;
    if (pfn === 0) {
      if (this.hugetlb) {
        // hugetlbfs: the whole 2 MiB folio at once, physically contiguous and aligned.
        const first = idx - (idx % HPAGE_PAGES);
        const base = this.phys.allocContig(HPAGE_PAGES, HPAGE_PAGES);
        if (base === 0) return 0; // out of memory
        for (let i = 0; i < HPAGE_PAGES; i++) {
          if (first + i < this.pages.length && this.pages[first + i] === 0) this.pages[first + i] = base + i;
          else this.phys.put(base + i);
        }
        return this.pages[idx]!;
      }
      pfn = this.phys.alloc();
      this.pages[idx] = pfn;
    }
    return pfn;
  }
}

export interface Vma {
  start: number;
  /** Exclusive end. */
  end: number;
  prot: number;
  shared: boolean;
  file: MemFile | null;
  /** File page index of `start`. */
  pgoff: number;
  /** Private pages (anonymous, or COW copies of file pages), 0 = not present. */
  priv: Int32Array | null;
}

/** A user address space (struct mm_struct). */
export class UserMm {
  readonly phys: PhysMem;
  readonly vmas: Vma[] = [];
  /** mm->pinned_vm and mm->locked_vm, in pages. */
  pinnedVm = 0;
  lockedVm = 0;
  /** False once the owning process exited (mmget_not_zero fails). */
  alive = true;
  private nextVa = 0x7f00_0000_0000;
  private last: Vma | null = null;
  constructor(phys: PhysMem) {
    this.phys = phys;
  }

  findVma(va: number): Vma | null {
    const l = this.last;
    if (l !== null && va >= l.start && va < l.end) return l;
    const v = this.vmas;
    let lo = 0;
    let hi = v.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const m = v[mid]!;
      if (va < m.start) hi = mid - 1;
      else if (va >= m.end) lo = mid + 1;
      else {
        this.last = m;
        return m;
      }
    }
    return null;
  }

  private insert(vma: Vma): void {
    let i = 0;
    while (i < this.vmas.length && this.vmas[i]!.start < vma.start) i++;
    this.vmas.splice(i, 0, vma);
  }

  private freeRange(len: number): number {
    // 2 MiB-aligned so that buffers are huge-page aligned, as the selftests' buffers are.
    const HP = 2 * 1024 * 1024;
    const va = Math.ceil(this.nextVa / HP) * HP;
    this.nextVa = va + Math.ceil(len / HP) * HP + HP;
    return va;
  }

  mmap(
    addr: number,
    length: number,
    prot: number,
    flags: number,
    file: MemFile | null,
    offset: number,
  ): number | KernelError {
    if (length <= 0 || !Number.isSafeInteger(length)) return kerr('EINVAL', 'mmap: bad length');
    // The model keeps a table entry per page: an emulated process gets at most 64 GiB a mapping.
    if (length > 2 ** 36) return kerr('ENOMEM', 'mmap: larger than the emulated host allows');
    if (offset % PAGE_SIZE !== 0) return kerr('EINVAL', 'mmap: offset not page aligned');
    const shared = (flags & MAP_SHARED) !== 0;
    if (shared === ((flags & MAP_PRIVATE) !== 0)) return kerr('EINVAL', 'mmap: need one of SHARED/PRIVATE');
    const len = Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    let start: number;
    if (flags & MAP_FIXED) {
      if (addr % PAGE_SIZE !== 0) return kerr('EINVAL', 'mmap: MAP_FIXED address not page aligned');
      start = addr;
      this.munmap(start, len);
    } else {
      start = this.freeRange(len);
    }
    let backing = file;
    if (backing === null && shared) {
      // Shared anonymous memory is shmem: one object that fork shares.
      backing = new MemFile(this.phys, 'dev/zero', (flags & MAP_HUGETLB) !== 0);
      backing.truncate(len);
    }
    if (backing) backing.getUser();
    const vma: Vma = {
      start,
      end: start + len,
      prot,
      shared,
      file: backing,
      pgoff: file ? offset / PAGE_SIZE : 0,
      priv: shared ? null : new Int32Array(len / PAGE_SIZE),
    };
    this.insert(vma);
    if (flags & MAP_POPULATE) for (let va = start; va < start + len; va += PAGE_SIZE) this.fault(va, false);
    return start;
  }

  munmap(addr: number, length: number): KernelError | undefined {
    if (addr % PAGE_SIZE !== 0 || length <= 0) return kerr('EINVAL', 'munmap: bad range');
    const end = addr + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    this.last = null;
    const keep: Vma[] = [];
    for (const v of this.vmas) {
      if (v.end <= addr || v.start >= end) {
        keep.push(v);
        continue;
      }
      // Left and right remainders survive as their own VMAs.
      if (v.start < addr) keep.push(this.slice(v, v.start, addr));
      if (v.end > end) keep.push(this.slice(v, end, v.end));
      this.dropPages(v, Math.max(v.start, addr), Math.min(v.end, end));
      if (v.file) v.file.putUser();
    }
    this.vmas.length = 0;
    this.vmas.push(...keep.sort((a, b) => a.start - b.start));
    return undefined;
  }

  private slice(v: Vma, s: number, e: number): Vma {
    if (v.file) v.file.getUser();
    const first = (s - v.start) / PAGE_SIZE;
    return {
      start: s,
      end: e,
      prot: v.prot,
      shared: v.shared,
      file: v.file,
      pgoff: v.pgoff + first,
      priv: v.priv ? v.priv.slice(first, first + (e - s) / PAGE_SIZE) : null,
    };
  }

  private dropPages(v: Vma, s: number, e: number): void {
    if (!v.priv) return;
    for (let va = s; va < e; va += PAGE_SIZE) {
      const i = (va - v.start) / PAGE_SIZE;
      const pfn = v.priv[i]!;
      if (pfn !== 0) {
        this.phys.put(pfn);
        v.priv[i] = 0;
      }
    }
  }

  /**
   * Fault in the page at `va` (handle_mm_fault): the pfn, or 0 if there is no mapping, the
   * protection refuses the access, or a file mapping is past the end of its file (SIGBUS).
   * `unshare` gives a private mapping its own copy even for a read (FOLL_LONGTERM pins).
   */
  fault(va: number, write: boolean, unshare = false): number {
    const v = this.findVma(va);
    if (v === null) return 0;
    if (write ? (v.prot & PROT_WRITE) === 0 : (v.prot & (PROT_READ | PROT_WRITE)) === 0) return 0;
    const idx = Math.floor((va - v.start) / PAGE_SIZE);
    if (v.shared) return v.file!.page(v.pgoff + idx);
    const priv = v.priv!;
    const cur = priv[idx]!;
    if (cur !== 0) return cur;
    if (v.file === null) {
      const pfn = this.phys.alloc();
      priv[idx] = pfn;
      return pfn;
    }
    const fpfn = v.file.page(v.pgoff + idx);
    if (fpfn === 0) return 0;
    if (!write && !unshare) return fpfn;
    const pfn = this.phys.alloc();
    if (pfn === 0) return 0; // out of memory
    this.phys.copyPage(pfn, fpfn);
    priv[idx] = pfn;
    return pfn;
  }

  /** The pfn currently mapped at `va` without faulting anything in (follow_page), or 0. */
  peekPfn(va: number): number {
    const v = this.findVma(va);
    if (v === null) return 0;
    const idx = Math.floor((va - v.start) / PAGE_SIZE);
    if (v.shared) return v.file!.pages[v.pgoff + idx] ?? 0;
    const p = v.priv![idx]!;
    if (p !== 0 || v.file === null) return p;
    return v.file.pages[v.pgoff + idx] ?? 0;
  }

  /** copy_from_user: all of [va, va+len) or EFAULT. */
  copyFromUser(va: number, len: number): Uint8Array | KernelError {
    const out = new Uint8Array(len);
    let off = 0;
    while (off < len) {
      const a = va + off;
      const pfn = this.fault(a - (a % PAGE_SIZE), false);
      if (pfn === 0 || !Number.isSafeInteger(a))
        return kerr('EFAULT', `no readable user memory at 0x${a.toString(16)}`);
      const po = a % PAGE_SIZE;
      const n = Math.min(len - off, PAGE_SIZE - po);
      this.phys.read(pfn * PAGE_SIZE + po, out, off, n);
      off += n;
    }
    return out;
  }

  /** copy_to_user: copies up to the first fault, then EFAULT (like the kernel). */
  copyToUser(va: number, src: Uint8Array): KernelError | undefined {
    let off = 0;
    while (off < src.length) {
      const a = va + off;
      const pfn = Number.isSafeInteger(a) ? this.fault(a - (a % PAGE_SIZE), true) : 0;
      if (pfn === 0) return kerr('EFAULT', `no writable user memory at 0x${a.toString(16)}`);
      const po = a % PAGE_SIZE;
      const n = Math.min(src.length - off, PAGE_SIZE - po);
      this.phys.write(pfn * PAGE_SIZE + po, src, off, n);
      off += n;
    }
    return undefined;
  }

  /** The longest readable prefix of [va, va+max) (for raw-pointer ioctl arguments). */
  readablePrefix(va: number, max: number): Uint8Array {
    let len = 0;
    while (len < max) {
      const a = va + len;
      if (!Number.isSafeInteger(a) || a < 0 || this.fault(a - (a % PAGE_SIZE), false) === 0) break;
      len += PAGE_SIZE - (a % PAGE_SIZE);
    }
    const r = this.copyFromUser(va, Math.min(len, max));
    return r instanceof Uint8Array ? r : new Uint8Array(0);
  }

  /** dup_mmap for fork: shared mappings are shared, private pages copied (pinned pages must be). */
  fork(): UserMm {
    const c = new UserMm(this.phys);
    c.nextVa = this.nextVa;
    for (const v of this.vmas) {
      if (v.file) v.file.getUser();
      let priv: Int32Array | null = null;
      if (v.priv) {
        priv = new Int32Array(v.priv.length);
        for (let i = 0; i < priv.length; i++) {
          const p = v.priv[i]!;
          if (p !== 0) {
            // Out of memory (0): the child's page stays absent.
            const q = this.phys.alloc();
            if (q !== 0) this.phys.copyPage(q, p);
            priv[i] = q;
          }
        }
      }
      c.vmas.push({ ...v, priv });
    }
    return c;
  }

  /** exit_mmap: drop every mapping. Pins survive (they hold their own references). */
  destroy(): void {
    for (const v of [...this.vmas]) this.munmap(v.start, v.end - v.start);
    this.alive = false;
  }
}

/** struct user_struct: per-uid locked memory, shared by every process of the user. */
export class UserAccount {
  readonly uid: number;
  lockedVm = 0;
  constructor(uid: number) {
    this.uid = uid;
  }
}

export interface Creds {
  readonly uid: number;
  capSysResource: boolean;
  capIpcLock: boolean;
  /** RLIMIT_MEMLOCK in bytes. */
  rlimitMemlock: number;
}

/** What a process needs of the host it runs on (the kernel around it). */
export interface ProcessHost {
  readonly phys: PhysMem;
  readonly faults: FaultInjector;
  user(uid: number): UserAccount;
  /** open(2) of a path: a new file description or an error. */
  openPath(p: Process, path: string): KFile | KernelError;
  nextPid(): number;
}

/** Default RLIMIT_MEMLOCK for an ordinary user (Linux's 8 MiB). */
export const DEFAULT_MEMLOCK = 8 * 1024 * 1024;

export class Process {
  readonly host: ProcessHost;
  readonly pid: number;
  readonly creds: Creds;
  readonly user: UserAccount;
  mm: UserMm;
  private readonly fds: (KFile | undefined)[] = [];
  alive = true;

  constructor(host: ProcessHost, opts: { privileged?: boolean; uid?: number; mm?: UserMm } = {}) {
    this.host = host;
    this.pid = host.nextPid();
    const priv = opts.privileged ?? true;
    const uid = opts.uid ?? (priv ? 0 : 1000);
    this.creds = {
      uid,
      capSysResource: priv,
      capIpcLock: priv,
      rlimitMemlock: DEFAULT_MEMLOCK,
    };
    this.user = host.user(uid);
    this.mm = opts.mm ?? new UserMm(host.phys);
  }

  /** fd_install at the lowest free descriptor. */
  installFd(f: KFile): number {
    let fd = 0;
    while (this.fds[fd] !== undefined) fd++;
    this.fds[fd] = f;
    f.fdRefs++;
    return fd;
  }

  file(fd: number): KFile | KernelError {
    const f = Number.isInteger(fd) && fd >= 0 ? this.fds[fd] : undefined;
    return f ?? kerr('EBADF', `fd ${fd} is not open`);
  }

  /** Every open descriptor, in order. */
  openFds(): number[] {
    const out: number[] = [];
    this.fds.forEach((f, i) => {
      if (f) out.push(i);
    });
    return out;
  }

  open(path: string): number | KernelError {
    const f = this.host.openPath(this, path);
    if (f instanceof KFile) return this.installFd(f);
    return f;
  }

  close(fd: number): KernelError | undefined {
    const f = this.file(fd);
    if (!(f instanceof KFile)) return f;
    this.fds[fd] = undefined;
    while (this.fds.length > 0 && this.fds[this.fds.length - 1] === undefined) this.fds.pop();
    if (--f.fdRefs === 0) f.release();
    return undefined;
  }

  mmap(length: number, prot: number, flags: number, fd = -1, offset = 0, addr = 0): number | KernelError {
    let file: MemFile | null = null;
    if ((flags & MAP_ANONYMOUS) === 0) {
      const f = this.file(fd);
      if (!(f instanceof KFile)) return f;
      if (f instanceof MemFile) file = f;
      else {
        const m = f.mmapFile(this, offset, length, prot, flags);
        if (!(m instanceof MemFile)) return m;
        return this.mm.mmap(addr, length, prot, flags, m, 0);
      }
    }
    return this.mm.mmap(addr, length, prot, flags, file, offset);
  }

  munmap(va: number, length: number): KernelError | undefined {
    return this.mm.munmap(va, length);
  }

  peek(va: number, length: number): Uint8Array | KernelError {
    return this.mm.copyFromUser(va, length);
  }

  poke(va: number, bytes: Uint8Array): KernelError | undefined {
    return this.mm.copyToUser(va, bytes);
  }

  memfdCreate(name: string, hugetlb = false): number {
    const f = new MemFile(this.host.phys, name, hugetlb);
    f.getUser();
    return this.installFd(f);
  }

  ftruncate(fd: number, size: number): KernelError | undefined {
    const f = this.file(fd);
    if (!(f instanceof KFile)) return f;
    if (!(f instanceof MemFile)) return kerr('EINVAL', `ftruncate of a ${f.kind} file`);
    if (size < 0 || !Number.isSafeInteger(size)) return kerr('EINVAL', 'ftruncate: bad size');
    f.truncate(size);
    return undefined;
  }

  read(fd: number, count: number): Uint8Array | KernelError {
    const f = this.file(fd);
    if (!(f instanceof KFile)) return f;
    return f.read(this, count);
  }

  write(fd: number, bytes: Uint8Array): number | KernelError {
    const f = this.file(fd);
    if (!(f instanceof KFile)) return f;
    return f.write(this, bytes);
  }

  /** fork(2): a child with a copy of the mm and the same open files. */
  fork(): Process {
    const c = new Process(this.host, {
      privileged: this.creds.capSysResource,
      uid: this.creds.uid,
      mm: this.mm.fork(),
    });
    c.creds.capIpcLock = this.creds.capIpcLock;
    c.creds.rlimitMemlock = this.creds.rlimitMemlock;
    this.fds.forEach((f, i) => {
      if (f) {
        c.fds[i] = f;
        f.fdRefs++;
      }
    });
    return c;
  }

  /** exit(2): close every descriptor, then tear the mm down. */
  exit(): void {
    if (!this.alive) return;
    for (const fd of this.openFds()) this.close(fd);
    this.mm.destroy();
    this.alive = false;
  }
}

export function errnoOf(e: KernelError): number {
  return ERRNO[e.code];
}
