// The IOAS address-space bookkeeping: the model of drivers/iommu/iommufd/io_pagetable.c
// (struct io_pagetable), research iommufd.md B.2–B.4 with the range-level rules of A.3–A.8.
// It keeps, per IOAS:
//   - areas: non-overlapping [iova, last] ranges, each a slice of an IoptPages (the user VA
//     range or file range it maps) with its IOMMU protection; COPY shares IoptPages;
//   - reserved ranges, each with an owner (a domain's aperture complement, a device's reserved
//     regions, or null for the selftest's ADD_RESERVED); they may overlap one another;
//   - allowed ranges (IOMMU_IOAS_ALLOW_IOVAS), which reservations may not cut into and which
//     confine automatic IOVA allocation;
//   - iova_alignment, derived from the domains, the accesses and the huge-pages option.
// Every rule and errno, and the order they are checked in, follow the kernel's code (upstream
// ~v6.17): iopt_alloc_iova, iopt_check_iova, iopt_insert_area, iopt_get_pages,
// iopt_unmap_iova_range, iopt_reserve_iova, iopt_set_allow_iova, iopt_table_add_domain,
// iopt_calculate_iova_alignment, iopt_area_split. It works on ranges only: a 1 GiB map is one
// area. Devices, page pinning and domain page tables belong to other layers, which plug in
// through IoptHooks at the points where the kernel calls into them.

import { type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { invariant } from '../core/invariants.ts';
import { type IntervalNode, IntervalTree } from './interval-tree.ts';

export const ULONG_MAX = 0xffff_ffff_ffff_ffffn;
export const SIZE_MAX = ULONG_MAX;

/** include/linux/iommu.h protection bits, as conv_iommu_prot() builds them. */
export const IOMMU_READ = 1 << 0;
export const IOMMU_WRITE = 1 << 1;
export const IOMMU_CACHE = 1 << 2;

/** iopt_map_pages() flag: pick the IOVA automatically. */
export const IOPT_ALLOC_IOVA = 1 << 0;

/** The allocation sites where the kernel can fail with ENOMEM (fail_nth, C.2). */
export const IOPT_FAULT_SITES = {
  pages: 'iopt_alloc_pages',
  area: 'iopt_area_alloc',
  pagesList: 'iopt_get_pages',
  reserved: 'iopt_reserve_iova',
  allowed: 'iommufd_ioas_load_iovas',
  domains: 'iopt_table_add_domain',
  accessList: 'iopt_add_access',
} as const;

/** How many times an unmap retries areas whose accesses did not let go (iopt_unmap_iova_range). */
const UNMAP_MAX_TRIES = 100;

export interface IovaRange {
  readonly start: bigint;
  readonly last: bigint;
}

/** What io_pagetable needs of an iommu_domain: its page sizes and its aperture. */
export interface IoptDomain {
  readonly pgsizeBitmap: bigint;
  readonly apertureStart: bigint;
  readonly apertureEnd: bigint;
}

/**
 * The calls io_pagetable makes into the layers around it. Each fill hook must undo its own
 * partial work before returning an error, as the kernel's fill functions do.
 */
export interface IoptHooks {
  /** iopt_area_fill_domains: a new area must be mapped into every domain (pinning its pages). */
  fillArea?(area: IoptArea, domains: readonly IoptDomain[]): KernelError | undefined;
  /** iopt_area_unfill_domains: an area is going away; unmap it from every domain. */
  unfillArea?(area: IoptArea, domains: readonly IoptDomain[]): void;
  /** iopt_fill_domain: a domain is being added; map every committed area into it. */
  fillDomain?(domain: IoptDomain, areas: readonly IoptArea[]): KernelError | undefined;
  /** iopt_unfill_domain: a domain is being removed; unmap every area from it. */
  unfillDomain?(domain: IoptDomain, areas: readonly IoptArea[]): void;
  /** iommufd_access_notify_unmap: accesses must drop what they pinned in [iova, iova+length). */
  notifyUnmap?(iova: bigint, length: bigint): void;
}

export type IoptAddressType = 'user' | 'file';

/**
 * struct iopt_pages: the source of an area's memory, a page-aligned window of a user VA range
 * or of a file, shared by every area that maps part of it (COPY and split share it).
 */
export class IoptPages {
  readonly type: IoptAddressType;
  /** The page-aligned start: `uptr` rounded down, or the file offset rounded down. */
  readonly base: bigint;
  readonly npages: bigint;
  readonly writable: boolean;
  /** The mm (user) or file (file) the pages come from; opaque here. */
  readonly source: unknown;
  /** kref: one per area and per in-flight pages-list entry. */
  users = 1;
  constructor(type: IoptAddressType, base: bigint, npages: bigint, writable: boolean, source: unknown) {
    this.type = type;
    this.base = base;
    this.npages = npages;
    this.writable = writable;
    this.source = source;
  }
}

/** struct iopt_area: one mapping of [iova, last] onto a slice of an IoptPages. */
export class IoptArea {
  readonly pages: IoptPages;
  /** Offset into `pages` (from pages.base) of the byte mapped at `iova`. */
  readonly startByte: bigint;
  readonly iova: bigint;
  readonly last: bigint;
  readonly iommuProt: number;
  /** False while the map is in flight (the kernel's area->pages == NULL). */
  committed = false;
  /** In-kernel accesses that pinned pages of this area (area->num_accesses). */
  numAccesses = 0;
  /** Objects that locked this area, e.g. a HW queue (area->num_locks). */
  numLocks = 0;
  /** Set once an unmap has started waiting for the accesses to let go. */
  preventAccess = false;
  /** @internal the tree node, null once removed. */
  node: IntervalNode<IoptArea> | null = null;
  constructor(pages: IoptPages, startByte: bigint, iova: bigint, last: bigint, iommuProt: number) {
    this.pages = pages;
    this.startByte = startByte;
    this.iova = iova;
    this.last = last;
    this.iommuProt = iommuProt;
  }
  get length(): bigint {
    return this.last - this.iova + 1n;
  }
  /** iopt_area_start_byte(): the pages offset of `iova` inside this area. */
  startByteAt(iova: bigint): bigint {
    return this.startByte + (iova - this.iova);
  }
}

/** One entry of a pages list (struct iopt_pages_list): `length` bytes from `startByte`. */
export interface IoptPagesSlice {
  readonly pages: IoptPages;
  readonly startByte: bigint;
  readonly length: bigint;
}

interface Reserved {
  readonly owner: unknown;
}

export interface IoPagetableOptions {
  readonly pageSize?: number;
  /** HPAGE_SIZE: the largest alignment the allocator asks for (2 MiB with THP on x86-64). */
  readonly hpageSize?: number;
  readonly faults?: FaultInjector;
  readonly hooks?: IoptHooks;
}

function isPow2(x: bigint): boolean {
  return x > 0n && (x & (x - 1n)) === 0n;
}

function roundupPowOfTwo(x: bigint): bigint {
  let p = 1n;
  while (p < x) p <<= 1n;
  return p;
}

function lowestBit(x: bigint): bigint {
  return x & -x;
}

const PAGE_4K = 4096n;
const HPAGE_2M = 2n * 1024n * 1024n;
/** An io_pagetable with no layer around it calls out to nothing. */
const NO_HOOKS: IoptHooks = Object.freeze({});

export class IoPagetable {
  readonly pageSize: bigint;
  readonly hpageSize: bigint;
  private readonly faults: FaultInjector | undefined;
  hooks: IoptHooks;

  private readonly areaTree = new IntervalTree<IoptArea>();
  private readonly reservedTree = new IntervalTree<Reserved>();
  private allowedTree = new IntervalTree<null>();

  /** iopt->domains, in the kernel's (compacted) index order. */
  private readonly domainList: IoptDomain[] = [];
  /** iopt->access_list: id → the access's iova_alignment (made with the first access). */
  private accessList: Map<number, bigint> | null = null;
  private disableLargePagesFlag = false;
  private alignment = 1n;

  constructor(opts: IoPagetableOptions = {}) {
    // The defaults as shared constants: an IOAS is made per IOMMU_IOAS_ALLOC, and BigInt() of a
    // number allocates.
    this.pageSize = opts.pageSize === undefined || opts.pageSize === 4096 ? PAGE_4K : BigInt(opts.pageSize);
    this.hpageSize =
      opts.hpageSize === undefined || opts.hpageSize === 2 * 1024 * 1024 ? HPAGE_2M : BigInt(opts.hpageSize);
    if (
      (this.pageSize !== PAGE_4K || this.hpageSize !== HPAGE_2M) &&
      !(isPow2(this.pageSize) && isPow2(this.hpageSize))
    )
      throw new RangeError('page sizes must be powers of two');
    this.faults = opts.faults;
    this.hooks = opts.hooks ?? NO_HOOKS;
  }

  private fail(site: string): boolean {
    const f = this.faults;
    return f?.armed === true && f.shouldFail(site);
  }

  private enomem(site: string): KernelError {
    return kerr('ENOMEM', `${site}: allocation failed`);
  }

  // ---- read-only views --------------------------------------------------------------------------

  /** iopt->iova_alignment. */
  get iovaAlignment(): bigint {
    return this.alignment;
  }

  get disableLargePages(): boolean {
    return this.disableLargePagesFlag;
  }

  get domains(): readonly IoptDomain[] {
    return this.domainList;
  }

  get areaCount(): number {
    return this.areaTree.size;
  }

  /** Every area (committed or in flight), in IOVA order. */
  *areas(): Generator<IoptArea> {
    for (const n of this.areaTree.nodes()) yield n.value;
  }

  /** The areas intersecting [start, last], in IOVA order. */
  *areasIn(start: bigint, last: bigint): Generator<IoptArea> {
    for (const n of this.areaTree.overlapping(start, last)) yield n.value;
  }

  /** The area containing `iova`, if any. */
  areaAt(iova: bigint): IoptArea | undefined {
    return this.areaTree.iterFirst(iova, iova)?.value;
  }

  *reservedRanges(): Generator<IovaRange & { readonly owner: unknown }> {
    for (const n of this.reservedTree.nodes()) yield { start: n.start, last: n.last, owner: n.value.owner };
  }

  *allowedRanges(): Generator<IovaRange> {
    for (const n of this.allowedTree.nodes()) yield { start: n.start, last: n.last };
  }

  /**
   * IOMMU_IOAS_IOVA_RANGES' answer (A.3): every hole of the reserved ranges over [0, ULONG_MAX].
   * Areas and allowed ranges do not narrow it.
   */
  iovaRanges(): IovaRange[] {
    const out: IovaRange[] = [];
    for (const s of this.reservedTree.spans(0n, ULONG_MAX))
      if (s.isHole) out.push({ start: s.start, last: s.last });
    return out;
  }

  // ---- IOVA selection ---------------------------------------------------------------------------

  /**
   * __alloc_iova_check_range: align `start` up (failing on overflow), keep the sub-page offset,
   * and see whether `length` bytes still fit before `last`. Note the kernel's `>= last`: a range
   * whose aligned start is its last byte is refused even for a 1-byte request.
   */
  private checkRange(
    start: bigint,
    last: bigint,
    length: bigint,
    align: bigint,
    pageOffset: bigint,
  ): bigint | null {
    const sum = start + align - 1n;
    if (sum > ULONG_MAX) return null;
    const aligned = (sum & ~(align - 1n)) | pageOffset;
    if (aligned >= last || last - aligned < length - 1n) return null;
    return aligned;
  }

  /** The maximal holes of (reserved ∪ areas) inside [first, last], in order. */
  private *usedHoles(first: bigint, last: bigint): Generator<IovaRange> {
    let pos = first;
    for (;;) {
      const r = this.reservedTree.iterFirst(pos, last);
      const a = this.areaTree.iterFirst(pos, last);
      let n: IovaRange | null = r;
      if (a !== null && (n === null || a.start < n.start)) n = a;
      if (n === null) {
        yield { start: pos, last };
        return;
      }
      if (n.start > pos) yield { start: pos, last: n.start - 1n };
      // Walk to the end of the covered run: anything containing the next byte extends it. Runs
      // of adjacent areas are stepped over whole (the areas never overlap).
      let end = n.last;
      for (;;) {
        if (end >= last) return;
        const p = end + 1n;
        const rr = this.reservedTree.iterFirst(p, p);
        const aa = this.areaTree.contiguousEnd(p);
        if (rr === null && aa === null) break;
        end = rr !== null && (aa === null || rr.last > aa) ? rr.last : aa!;
      }
      pos = end + 1n;
    }
  }

  /**
   * iopt_alloc_iova (B.3): the automatic IOVA for `length` bytes whose source address (user VA,
   * file offset or copy source) is `addr`. Never returns IOVA 0.
   */
  allocIova(addr: bigint, length: bigint): bigint | KernelError {
    const P = this.pageSize;
    const pageOffset = addr % P;
    if (length === 0n || length >= ULONG_MAX / 2n) {
      return kerr('EOVERFLOW', `automatic IOVA: length 0x${length.toString(16)} is 0 or too large`);
    }
    let align = roundupPowOfTwo(length);
    if (addr !== 0n) {
      const natural = lowestBit(addr);
      if (natural < align) align = natural;
    }
    if (align >= this.hpageSize) align = this.hpageSize;
    if (align < this.alignment) {
      return kerr(
        'EINVAL',
        `automatic IOVA: source alignment 0x${align.toString(16)} < iova_alignment ${this.alignment}`,
      );
    }

    const windows: IovaRange[] = [];
    if (this.allowedTree.empty) {
      windows.push({ start: P, last: ULONG_MAX - P });
    } else {
      for (const s of this.allowedTree.spans(P, ULONG_MAX - P)) if (!s.isHole) windows.push(s);
    }
    for (const w of windows) {
      const start = this.checkRange(w.start, w.last, length, align, pageOffset);
      if (start === null) continue;
      for (const hole of this.usedHoles(start, w.last)) {
        const iova = this.checkRange(hole.start, hole.last, length, align, pageOffset);
        if (iova !== null) return iova;
      }
    }
    return kerr('ENOSPC', `no free IOVA range of 0x${length.toString(16)} bytes`);
  }

  /** iopt_check_iova: the rules for a FIXED_IOVA map (A.5 step 8). */
  checkIova(iova: bigint, length: bigint): KernelError | undefined {
    if ((iova & (this.alignment - 1n)) !== 0n) {
      return kerr('EINVAL', `IOVA 0x${iova.toString(16)} is not aligned to ${this.alignment}`);
    }
    const last = iova + length - 1n;
    if (last > ULONG_MAX) return kerr('EOVERFLOW', `IOVA 0x${iova.toString(16)} + length overflows`);
    const r = this.reservedTree.iterFirst(iova, last);
    if (r !== null) {
      return kerr(
        'EINVAL',
        `[0x${iova.toString(16)}, 0x${last.toString(16)}] intersects reserved [0x${r.start.toString(16)}, 0x${r.last.toString(16)}]`,
      );
    }
    const a = this.areaTree.iterFirst(iova, last);
    if (a !== null) {
      return kerr(
        'EEXIST',
        `[0x${iova.toString(16)}, 0x${last.toString(16)}] intersects the area at 0x${a.start.toString(16)}`,
      );
    }
    return undefined;
  }

  // ---- pages ------------------------------------------------------------------------------------

  /** iopt_alloc_pages: the common part of user and file pages. */
  private allocPages(
    type: IoptAddressType,
    base: bigint,
    startByte: bigint,
    length: bigint,
    writable: boolean,
    source: unknown,
  ): IoptPages | KernelError {
    if (length > SIZE_MAX - this.pageSize || length === 0n) {
      return kerr('EINVAL', `length 0x${length.toString(16)} is 0 or too large`);
    }
    if (this.fail(IOPT_FAULT_SITES.pages)) return this.enomem(IOPT_FAULT_SITES.pages);
    const npages = (length + startByte + this.pageSize - 1n) / this.pageSize;
    return new IoptPages(type, base, npages, writable, source);
  }

  /** iopt_alloc_user_pages: the pages for `length` bytes of user memory at `uptr`. */
  allocUserPages(
    uptr: bigint,
    length: bigint,
    writable: boolean,
    source?: unknown,
  ): IoptPagesSlice | KernelError {
    if (uptr + length > ULONG_MAX)
      return kerr('EOVERFLOW', `user_va 0x${uptr.toString(16)} + length overflows`);
    const down = uptr - (uptr % this.pageSize);
    const pages = this.allocPages('user', down, uptr - down, length, writable, source);
    if (pages instanceof IoptPages) return { pages, startByte: uptr - down, length };
    return pages;
  }

  /** iopt_alloc_file_pages: the pages for `length` bytes of a file from offset `start`. */
  allocFilePages(
    file: unknown,
    start: bigint,
    length: bigint,
    writable: boolean,
  ): IoptPagesSlice | KernelError {
    if (length !== 0n && start + length - 1n > ULONG_MAX) {
      return kerr('EOVERFLOW', `file start 0x${start.toString(16)} + length overflows`);
    }
    const down = start - (start % this.pageSize);
    const pages = this.allocPages('file', down, start - down, length, writable, file);
    if (pages instanceof IoptPages) return { pages, startByte: start - down, length };
    return pages;
  }

  /** iopt_put_pages: drop one reference; true when it was the last. */
  putPages(pages: IoptPages): boolean {
    invariant(pages.users > 0, 'iopt_pages: put of a released pages object');
    pages.users--;
    return pages.users === 0;
  }

  /** iopt_free_pages_list: drop the references a pages list holds. */
  freePagesList(list: readonly IoptPagesSlice[]): void {
    for (const s of list) this.putPages(s.pages);
  }

  // ---- map --------------------------------------------------------------------------------------

  /** iopt_insert_area: validate and insert one (uncommitted) area. */
  private insertArea(slice: IoptPagesSlice, iova: bigint, iommuProt: number): IoptArea | KernelError {
    const { pages, startByte, length } = slice;
    if (iommuProt & IOMMU_WRITE && !pages.writable) {
      return kerr('EPERM', 'a writeable mapping of pages that are not writable');
    }
    const pageOffset = startByte % this.pageSize;
    if ((pageOffset & (this.alignment - 1n)) !== 0n) {
      return kerr(
        'EINVAL',
        `sub-page offset 0x${pageOffset.toString(16)} is not aligned to ${this.alignment}`,
      );
    }
    const last = iova + length - 1n;
    if (last > ULONG_MAX) return kerr('EOVERFLOW', 'IOVA + length overflows');
    const byteLast = startByte + length - 1n;
    if (byteLast > ULONG_MAX || byteLast / this.pageSize >= pages.npages) {
      return kerr('EOVERFLOW', 'the slice runs past its pages');
    }
    const area = new IoptArea(pages, startByte, iova, last, iommuProt);
    area.node = this.areaTree.insert(iova, last, area);
    return area;
  }

  /** iopt_abort_area: take an uncommitted area back out. */
  private abortArea(area: IoptArea): void {
    if (area.node !== null) this.areaTree.remove(area.node);
    area.node = null;
  }

  /**
   * iopt_map_pages (with iopt_alloc_area_pages): map a pages list as consecutive areas, at
   * `iova` or (IOPT_ALLOC_IOVA) at an automatic IOVA chosen from the first slice's source
   * address. The list's references are consumed: moved into the areas on success, dropped on
   * failure. Returns the IOVA the first area starts at.
   */
  mapPages(
    list: readonly IoptPagesSlice[],
    length: bigint,
    iova: bigint,
    iommuProt: number,
    flags: number,
  ): { iova: bigint; areas: IoptArea[] } | KernelError {
    const r = this.mapPagesInner(list, length, iova, iommuProt, flags);
    if (!Array.isArray(r)) {
      this.freePagesList(list);
      return r;
    }
    return { iova: r[0]?.iova ?? iova, areas: r };
  }

  private mapPagesInner(
    list: readonly IoptPagesSlice[],
    length: bigint,
    iova: bigint,
    iommuProt: number,
    flags: number,
  ): IoptArea[] | KernelError {
    for (let i = 0; i < list.length; i++) {
      if (this.fail(IOPT_FAULT_SITES.area)) return this.enomem(IOPT_FAULT_SITES.area);
    }
    if ((length & (this.alignment - 1n)) !== 0n || length === 0n) {
      return kerr('EINVAL', `length 0x${length.toString(16)} is 0 or not a multiple of ${this.alignment}`);
    }
    let dst = iova;
    const first = list[0];
    if (first === undefined) return kerr('EINVAL', 'empty pages list');
    if (flags & IOPT_ALLOC_IOVA) {
      const got = this.allocIova(first.pages.base + first.startByte, length);
      if (typeof got !== 'bigint') return got;
      dst = got;
      invariant(
        this.checkIova(dst, length) === undefined,
        'iopt_alloc_iova returned an IOVA iopt_check_iova refuses',
      );
    } else {
      const err = this.checkIova(dst, length);
      if (err) return err;
    }

    const areas: IoptArea[] = [];
    let at = dst;
    for (const slice of list) {
      const a = this.insertArea(slice, at, iommuProt);
      if (!(a instanceof IoptArea)) {
        for (const x of areas) this.abortArea(x);
        return a;
      }
      areas.push(a);
      at += slice.length;
    }

    if (this.domainList.length > 0 && this.hooks.fillArea) {
      for (let i = 0; i < areas.length; i++) {
        const err = this.hooks.fillArea(areas[i]!, this.domainList);
        if (err) {
          for (let j = 0; j < i; j++) this.hooks.unfillArea?.(areas[j]!, this.domainList);
          for (const x of areas) this.abortArea(x);
          return err;
        }
      }
    }
    for (const a of areas) a.committed = true;
    return areas;
  }

  /** iopt_map_user_pages: IOMMU_IOAS_MAP's mapping step (A.5 steps 5–10). */
  mapUserPages(
    uptr: bigint,
    length: bigint,
    iova: bigint,
    iommuProt: number,
    flags: number,
    source?: unknown,
  ): { iova: bigint; area: IoptArea } | KernelError {
    const slice = this.allocUserPages(uptr, length, (iommuProt & IOMMU_WRITE) !== 0, source);
    if (!('pages' in slice)) return slice;
    const r = this.mapPages([slice], length, iova, iommuProt, flags);
    if (!('areas' in r)) return r;
    return { iova: r.iova, area: r.areas[0]! };
  }

  /** iopt_map_file_pages: IOMMU_IOAS_MAP_FILE's mapping step (A.6). */
  mapFilePages(
    file: unknown,
    start: bigint,
    length: bigint,
    iova: bigint,
    iommuProt: number,
    flags: number,
  ): { iova: bigint; area: IoptArea } | KernelError {
    const slice = this.allocFilePages(file, start, length, (iommuProt & IOMMU_WRITE) !== 0);
    if (!('pages' in slice)) return slice;
    const r = this.mapPages([slice], length, iova, iommuProt, flags);
    if (!('areas' in r)) return r;
    return { iova: r.iova, area: r.areas[0]! };
  }

  /**
   * iopt_get_pages: the pages behind [iova, iova+length), which must be covered by contiguous
   * committed areas (COPY's source, A.7). Each entry holds a reference; give the list to
   * mapPages (which consumes it) or freePagesList.
   */
  getPages(iova: bigint, length: bigint): IoptPagesSlice[] | KernelError {
    if (length === 0n) return kerr('EINVAL', 'length is 0');
    const lastIova = iova + length - 1n;
    if (lastIova > ULONG_MAX) return kerr('EOVERFLOW', 'IOVA + length overflows');
    const list: IoptPagesSlice[] = [];
    let cur = iova;
    let area = this.areaTree.iterFirst(iova, iova)?.value ?? null;
    if (area !== null && !area.committed) area = null;
    while (area !== null) {
      if (this.fail(IOPT_FAULT_SITES.pagesList)) {
        this.freePagesList(list);
        return this.enomem(IOPT_FAULT_SITES.pagesList);
      }
      const last = lastIova < area.last ? lastIova : area.last;
      area.pages.users++;
      list.push({ pages: area.pages, startByte: area.startByteAt(cur), length: last - cur + 1n });
      if (lastIova <= area.last) return list;
      cur = area.last + 1n;
      const next = this.areaTree.iterFirst(cur, lastIova)?.value ?? null;
      area = next !== null && next.iova === cur && next.committed ? next : null;
    }
    this.freePagesList(list);
    return kerr(
      'ENOENT',
      `[0x${iova.toString(16)}, 0x${lastIova.toString(16)}] is not fully mapped by contiguous areas`,
    );
  }

  // ---- unmap ------------------------------------------------------------------------------------

  /**
   * iopt_unmap_iova_range (A.8): remove every area inside [start, last]. Areas are taken in
   * IOVA order and the first one that is in flight or locked (EBUSY) or that sticks out of the
   * range (ENOENT) stops the walk; areas removed before that stay removed. Returns the bytes
   * unmapped; no area at all is ENOENT.
   */
  private unmapRange(start: bigint, last: bigint): bigint | KernelError {
    let unmapped = 0n;
    let tries = 0;
    for (;;) {
      const node = this.areaTree.iterFirst(start, last);
      if (node === null) break;
      const area = node.value;
      if (!area.committed)
        return kerr('EBUSY', `the area at 0x${area.iova.toString(16)} is still being mapped`);
      if (area.numLocks > 0) return kerr('EBUSY', `the area at 0x${area.iova.toString(16)} is locked`);
      if (area.iova < start || area.last > last) {
        return kerr(
          'ENOENT',
          `the area [0x${area.iova.toString(16)}, 0x${area.last.toString(16)}] is not fully inside the range: no splitting`,
        );
      }
      if (area.iova !== start) tries = 0;
      if (area.numAccesses > 0) {
        start = area.iova;
        area.preventAccess = true;
        this.hooks.notifyUnmap?.(area.iova, area.length);
        tries++;
        if (tries > UNMAP_MAX_TRIES) {
          return kerr('EDEADLK', `the accesses of the area at 0x${area.iova.toString(16)} do not let go`);
        }
        continue;
      }
      area.committed = false;
      if (this.domainList.length > 0) this.hooks.unfillArea?.(area, this.domainList);
      this.abortArea(area);
      this.putPages(area.pages);
      unmapped += area.length;
    }
    if (unmapped === 0n)
      return kerr('ENOENT', `no area in [0x${start.toString(16)}, 0x${last.toString(16)}]`);
    return unmapped;
  }

  /** iopt_unmap_iova: IOMMU_IOAS_UNMAP of [iova, iova+length). */
  unmapIova(iova: bigint, length: bigint): bigint | KernelError {
    if (length === 0n) return kerr('EINVAL', 'length is 0');
    const last = iova + length - 1n;
    if (last > ULONG_MAX) return kerr('EOVERFLOW', 'IOVA + length overflows');
    return this.unmapRange(iova, last);
  }

  /** iopt_unmap_all: IOMMU_IOAS_UNMAP of everything; an empty IOAS is a success. */
  unmapAll(): bigint | KernelError {
    // Nothing mapped: the kernel's -ENOENT from iopt_unmap_iova_range is swallowed here, so skip
    // building it (destroying an empty IOAS is the common case).
    if (this.areaTree.iterFirst(0n, ULONG_MAX) === null) return 0n;
    const r = this.unmapRange(0n, ULONG_MAX);
    if (typeof r !== 'bigint' && r.code === 'ENOENT') return 0n;
    return r;
  }

  // ---- reserved and allowed ranges ---------------------------------------------------------------

  /**
   * iopt_reserve_iova: reserve [start, last] for `owner`; refused (EADDRINUSE) if an area or an
   * allowed range is there. Reservations may overlap each other.
   */
  reserveIova(start: bigint, last: bigint, owner: unknown): KernelError | undefined {
    if (this.areaTree.iterFirst(start, last) !== null || this.allowedTree.iterFirst(start, last) !== null) {
      return kerr('EADDRINUSE', `[0x${start.toString(16)}, 0x${last.toString(16)}] is mapped or allowed`);
    }
    if (this.fail(IOPT_FAULT_SITES.reserved)) return this.enomem(IOPT_FAULT_SITES.reserved);
    this.reservedTree.insert(start, last, { owner });
    return undefined;
  }

  /** iopt_remove_reserved_iova: drop every reservation `owner` made. */
  removeReservedIova(owner: unknown): void {
    if (this.reservedTree.empty) return;
    const mine: IntervalNode<Reserved>[] = [];
    for (const n of this.reservedTree.nodes()) if (n.value.owner === owner) mine.push(n);
    for (const n of mine) this.reservedTree.remove(n);
  }

  /**
   * IOMMU_IOAS_ALLOW_IOVAS (iommufd_ioas_load_iovas + iopt_set_allow_iova, A.4): replace the
   * allowed list. Ranges are taken one at a time, so an element that is a KernelError (the
   * ioctl layer's copy_from_user fault) is returned when it is reached. Each range needs
   * start < last and no overlap with an earlier one (EINVAL); the new list may not intersect a
   * reserved range (EADDRINUSE). On any error the old list stays.
   */
  setAllowIova(ranges: Iterable<IovaRange | KernelError>): KernelError | undefined {
    const next = new IntervalTree<null>();
    for (const r of ranges) {
      if (!('start' in r)) return r;
      if (r.start >= r.last) {
        return kerr(
          'EINVAL',
          `allowed range [0x${r.start.toString(16)}, 0x${r.last.toString(16)}]: start >= last`,
        );
      }
      if (next.iterFirst(r.start, r.last) !== null) {
        return kerr(
          'EINVAL',
          `allowed range [0x${r.start.toString(16)}, 0x${r.last.toString(16)}] overlaps another`,
        );
      }
      if (this.fail(IOPT_FAULT_SITES.allowed)) return this.enomem(IOPT_FAULT_SITES.allowed);
      next.insert(r.start, r.last, null);
    }
    for (const n of next.nodes()) {
      if (this.reservedTree.iterFirst(n.start, n.last) !== null) {
        return kerr(
          'EADDRINUSE',
          `allowed range [0x${n.start.toString(16)}, 0x${n.last.toString(16)}] is reserved`,
        );
      }
    }
    this.allowedTree = next;
    return undefined;
  }

  // ---- alignment, domains, accesses ---------------------------------------------------------------

  /** iopt_check_iova_alignment: can every area live with a larger alignment? */
  private checkIovaAlignment(newAlign: bigint): KernelError | undefined {
    const mask = newAlign - 1n;
    for (const n of this.areaTree.nodes()) {
      const a = n.value;
      if (
        (a.iova & mask) !== 0n ||
        (a.length & mask) !== 0n ||
        ((a.startByte % this.pageSize) & mask) !== 0n
      ) {
        return kerr('EADDRINUSE', `the area at 0x${a.iova.toString(16)} is not aligned to ${newAlign}`);
      }
    }
    if (this.accessList !== null)
      for (const align of this.accessList.values()) {
        invariant(
          align <= newAlign,
          'iopt_check_iova_alignment: an access needs more than the new alignment',
        );
      }
    return undefined;
  }

  /** The alignment iopt_calculate_iova_alignment would compute now. */
  private computeAlignment(): bigint {
    let a = this.disableLargePagesFlag ? this.pageSize : 1n;
    for (const d of this.domainList) {
      const b = lowestBit(d.pgsizeBitmap);
      if (b > a) a = b;
    }
    if (this.accessList !== null) for (const b of this.accessList.values()) if (b > a) a = b;
    return a;
  }

  /** iopt_calculate_iova_alignment. */
  private recalcAlignment(): KernelError | undefined {
    const a = this.computeAlignment();
    if (a > this.alignment) {
      const err = this.checkIovaAlignment(a);
      if (err) return err;
    }
    this.alignment = a;
    return undefined;
  }

  /**
   * iopt_table_add_domain (B.2): raise the alignment to the domain's smallest page (EINVAL
   * beyond PAGE_SIZE, EADDRINUSE if an area does not fit it), reserve the complement of its
   * aperture, then fill it with every area.
   */
  addDomain(domain: IoptDomain): KernelError | undefined {
    if (this.domainList.includes(domain)) return kerr('EEXIST', 'the domain is already in this IOAS');
    let newAlign = lowestBit(domain.pgsizeBitmap);
    if (newAlign < this.alignment) newAlign = this.alignment;
    if (newAlign > this.pageSize) {
      return kerr('EINVAL', `the domain's smallest page ${newAlign} is larger than PAGE_SIZE`);
    }
    if (newAlign !== this.alignment) {
      const err = this.checkIovaAlignment(newAlign);
      if (err) return err;
    }
    const undo = (err: KernelError): KernelError => {
      this.removeReservedIova(domain);
      return err;
    };
    if (domain.apertureStart !== 0n) {
      const err = this.reserveIova(0n, domain.apertureStart - 1n, domain);
      if (err) return undo(err);
    }
    if (domain.apertureEnd !== ULONG_MAX) {
      const err = this.reserveIova(domain.apertureEnd + 1n, ULONG_MAX, domain);
      if (err) return undo(err);
    }
    if (this.fail(IOPT_FAULT_SITES.domains)) return undo(this.enomem(IOPT_FAULT_SITES.domains));
    if (this.hooks.fillDomain) {
      const err = this.hooks.fillDomain(domain, [...this.committedAreas()]);
      if (err) return undo(err);
    }
    this.alignment = newAlign;
    this.domainList.push(domain);
    return undefined;
  }

  private *committedAreas(): Generator<IoptArea> {
    for (const n of this.areaTree.nodes()) if (n.value.committed) yield n.value;
  }

  /**
   * iopt_table_remove_domain: unfill the domain, drop its reservations and recompute the
   * alignment (which can only stay or fall). The domain list is compacted by moving the last
   * entry into the hole, as the kernel does.
   */
  removeDomain(domain: IoptDomain): void {
    const i = this.domainList.indexOf(domain);
    invariant(i >= 0, 'iopt_table_remove_domain: the domain is not in this IOAS');
    const tail = this.domainList.pop()!;
    if (tail !== domain) this.domainList[i] = tail;
    this.hooks.unfillDomain?.(domain, [...this.committedAreas()]);
    this.removeReservedIova(domain);
    const err = this.recalcAlignment();
    invariant(err === undefined, 'iopt_table_remove_domain: the alignment cannot rise');
  }

  /**
   * iopt_add_access: register an in-kernel access needing `alignment` (PAGE_SIZE for pinning
   * accesses). Returns its list id (xa_limit_16b, lowest free).
   */
  addAccess(alignment: bigint): number | KernelError {
    const list = (this.accessList ??= new Map<number, bigint>());
    let id = 0;
    while (list.has(id)) id++;
    if (id > 0xffff) return kerr('EBUSY', 'no free access id');
    if (this.fail(IOPT_FAULT_SITES.accessList)) return this.enomem(IOPT_FAULT_SITES.accessList);
    list.set(id, alignment);
    const err = this.recalcAlignment();
    if (err) {
      list.delete(id);
      return err;
    }
    return id;
  }

  /** iopt_remove_access. */
  removeAccess(id: number): void {
    invariant(this.accessList?.delete(id) === true, 'iopt_remove_access: unknown access id');
    const err = this.recalcAlignment();
    invariant(err === undefined, 'iopt_remove_access: the alignment cannot rise');
  }

  /** iopt_enable_large_pages: IOMMU_OPTION_HUGE_PAGES = 1. */
  enableLargePages(): void {
    this.disableLargePagesFlag = false;
    const err = this.recalcAlignment();
    invariant(err === undefined, 'iopt_enable_large_pages: the alignment cannot rise');
  }

  /**
   * iopt_disable_large_pages: IOMMU_OPTION_HUGE_PAGES = 0 (A.9). Refused (EINVAL) when domains
   * already hold mappings; EADDRINUSE (and no change) if an area is not PAGE_SIZE aligned.
   */
  disableLargePagesOption(): KernelError | undefined {
    if (this.disableLargePagesFlag) return undefined;
    if (this.domainList.length > 0 && !this.areaTree.empty) {
      return kerr('EINVAL', 'cannot disable large pages while domains hold mappings');
    }
    this.disableLargePagesFlag = true;
    const err = this.recalcAlignment();
    if (err) this.disableLargePagesFlag = false;
    return err;
  }

  // ---- splitting (VFIO type1 compat) -------------------------------------------------------------

  /**
   * iopt_area_split: cut `area` so that `iova` becomes the last byte of its first part. Both
   * parts share the pages. Refused while in flight or unmapping (EBUSY), when the cut is
   * misaligned, when accesses pinned the area, or when a domain could have used huge pages for
   * it (EINVAL).
   */
  private splitArea(area: IoptArea, iova: bigint): KernelError | undefined {
    if (iova === area.iova || iova === area.last) return undefined;
    if (!area.committed || area.preventAccess) return kerr('EBUSY', 'the area is busy');
    const newStart = iova + 1n;
    const mask = this.alignment - 1n;
    if ((newStart & mask) !== 0n || (area.startByteAt(newStart) & mask) !== 0n) {
      return kerr('EINVAL', `cannot cut at 0x${newStart.toString(16)}: not aligned to ${this.alignment}`);
    }
    if (this.fail(IOPT_FAULT_SITES.area)) return this.enomem(IOPT_FAULT_SITES.area);
    if (this.fail(IOPT_FAULT_SITES.area)) return this.enomem(IOPT_FAULT_SITES.area);
    if (area.numAccesses > 0) return kerr('EINVAL', 'cannot split an area with accesses');
    if (this.domainList.length > 0 && !this.disableLargePagesFlag) {
      return kerr('EINVAL', 'cannot split an area a domain may map with huge pages');
    }
    this.abortArea(area);
    const lhs = new IoptArea(area.pages, area.startByte, area.iova, iova, area.iommuProt);
    const rhs = new IoptArea(area.pages, area.startByteAt(newStart), newStart, area.last, area.iommuProt);
    lhs.node = this.areaTree.insert(lhs.iova, lhs.last, lhs);
    rhs.node = this.areaTree.insert(rhs.iova, rhs.last, rhs);
    lhs.committed = rhs.committed = true;
    area.pages.users++;
    return undefined;
  }

  /** iopt_cut_iova: split the areas holding each of `iovas` right after that byte. */
  cutIova(iovas: readonly bigint[]): KernelError | undefined {
    for (const iova of iovas) {
      const n = this.areaTree.iterFirst(iova, iova);
      if (n === null) continue;
      const err = this.splitArea(n.value, iova);
      if (err) return err;
    }
    return undefined;
  }

  // ---- teardown and checking ---------------------------------------------------------------------

  /**
   * iommufd_ioas_destroy: unmap everything, then iopt_destroy_table, which drops the test
   * reservations (owner null) and the allowed list and expects nothing else to be left.
   */
  destroy(): void {
    const r = this.unmapAll();
    invariant(typeof r === 'bigint', 'iommufd_ioas_destroy: unmap of everything failed');
    this.removeReservedIova(null);
    if (!this.allowedTree.empty) this.allowedTree = new IntervalTree<null>();
    invariant(
      this.reservedTree.empty,
      'iopt_destroy_table: reserved ranges left (a domain or device still holds some)',
    );
    invariant(this.domainList.length === 0, 'iopt_destroy_table: domains left');
    invariant((this.accessList?.size ?? 0) === 0, 'iopt_destroy_table: accesses left');
    invariant(this.areaTree.empty, 'iopt_destroy_table: areas left');
  }

  /** The kernel's WARN_ONs and the B.2 invariants, as InvariantError. */
  checkInvariants(): void {
    this.areaTree.checkInvariants();
    this.reservedTree.checkInvariants();
    this.allowedTree.checkInvariants();
    const refs = new Map<IoptPages, number>();
    let prev: IoptArea | null = null;
    const mask = this.alignment - 1n;
    for (const n of this.areaTree.nodes()) {
      const a = n.value;
      invariant(
        a.node === n && n.start === a.iova && n.last === a.last,
        'iopt: area and its tree node agree',
      );
      invariant(a.iova <= a.last, 'iopt: area start <= last');
      if (prev !== null) invariant(prev.last < a.iova, 'iopt: areas do not overlap');
      prev = a;
      invariant(
        (a.iova & mask) === 0n && (a.length & mask) === 0n && ((a.startByte % this.pageSize) & mask) === 0n,
        'iopt: every area is aligned to iova_alignment',
      );
      invariant(
        (a.startByte + a.length - 1n) / this.pageSize < a.pages.npages,
        'iopt: area inside its pages',
      );
      invariant(this.reservedTree.iterFirst(a.iova, a.last) === null, 'iopt: reserved ∩ areas = ∅');
      refs.set(a.pages, (refs.get(a.pages) ?? 0) + 1);
    }
    for (const [pages, count] of refs)
      invariant(pages.users >= count, 'iopt: pages users >= areas using them');
    for (const n of this.allowedTree.nodes()) {
      invariant(n.start < n.last, 'iopt: allowed ranges have start < last');
      invariant(this.reservedTree.iterFirst(n.start, n.last) === null, 'iopt: reserved ∩ allowed = ∅');
    }
    invariant(
      isPow2(this.alignment) && this.alignment <= this.pageSize,
      'iopt: alignment is a power of two <= PAGE_SIZE',
    );
    invariant(
      this.alignment === this.computeAlignment(),
      'iopt: alignment matches domains, accesses and options',
    );
    invariant(new Set(this.domainList).size === this.domainList.length, 'iopt: each domain once');
  }
}
