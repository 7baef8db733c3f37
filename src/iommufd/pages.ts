// Page pinning and accounting for IOAS areas: the model of drivers/iommu/iommufd/pages.c
// (research iommufd.md B.4, B.8). An IoptPages (one per MAP / MAP_FILE, shared by COPY) gets a
// PagesSource: where its pages come from (a user mm or a memfd), how pins are charged, and a
// per-page pin table. A page is pinned once per IoptPages however many domains mirror it and
// however many accesses pin it ("holders"); the first holder pins it (pin_user_pages with
// FOLL_LONGTERM, which unshares private pages) and charges it, the last one unpins it.
// Charging (iopt_pages_update_pinned): mm->pinned_vm always; user->locked_vm (ACCOUNT_USER) or
// mm->locked_vm (ACCOUNT_MM) against RLIMIT_MEMLOCK, ENOMEM over the limit; nothing for a
// caller with CAP_IPC_LOCK (ACCOUNT_NONE).
//
// The IoptHooks here are where io_pagetable calls out: filling a new area into every domain,
// filling a new domain with every area, and the reverse, each undoing its own partial work on
// failure so that a failed ioctl leaves no pin and no mapping behind.

import { type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { invariant as importedInvariant } from '../core/invariants.ts';
import { type IommuDomain, iommuMap, iommuUnmap } from '../iommu/core.ts';
import type { IoptArea, IoptDomain, IoptHooks, IoptPages } from './io-pagetable.ts';
import { ACCOUNT_MM, ACCOUNT_NONE, ACCOUNT_USER } from './main.ts';
import {
  PAGE_SIZE as IMPORTED_PAGE_SIZE,
  type MemFile,
  type PhysMem,
  type UserAccount,
  type UserMm,
} from './process.ts';

// Local bindings: imported bindings cost a getter call each on hot paths once transpiled.
const invariant: typeof importedInvariant = importedInvariant;
const PAGE_SIZE: number = IMPORTED_PAGE_SIZE;

/** Who is charged for the pins of one IoptPages. */
export interface PinAccount {
  mode: number;
  user: UserAccount;
  mm: UserMm;
  rlimitPages: number;
}

/** What pages.ts needs of an exporter's dma-buf: its physical pages and revocation. */
export interface DmabufLike {
  readonly pfns: Int32Array;
  revoked: boolean;
  get(): void;
  put(): void;
}

/** The source and pin state of an IoptPages (its `source`). */
export class PagesSource {
  readonly kind: 'user' | 'file' | 'dmabuf';
  /** A dma-buf's pages come from its exporter: no pinning of user memory, no charge. */
  dmabuf: DmabufLike | null = null;
  /** User pages: the mm the VA belongs to (source_mm). */
  readonly mm: UserMm | null;
  readonly file: MemFile | null;
  readonly phys: PhysMem;
  acct: PinAccount;
  /** Pinned pfn per page (0 = not pinned) and how many holders want it pinned. */
  pfns: Int32Array;
  holders: Int32Array;
  /** Pages currently pinned (and charged). */
  npinned = 0;
  constructor(
    kind: 'user' | 'file' | 'dmabuf',
    phys: PhysMem,
    mm: UserMm | null,
    file: MemFile | null,
    acct: PinAccount,
  ) {
    this.kind = kind;
    this.phys = phys;
    this.mm = mm;
    this.file = file;
    this.acct = acct;
    this.pfns = new Int32Array(0);
    this.holders = new Int32Array(0);
  }
}

export function sourceOf(pages: IoptPages): PagesSource {
  const s = pages.source;
  invariant(s instanceof PagesSource, 'iopt_pages without a PagesSource');
  if (s.pfns.length !== Number(pages.npages)) {
    s.pfns = new Int32Array(Number(pages.npages));
    s.holders = new Int32Array(Number(pages.npages));
  }
  return s;
}

export function chargePins(acct: PinAccount, n: number): KernelError | undefined {
  if (acct.mode === ACCOUNT_USER) {
    if (acct.user.lockedVm + n > acct.rlimitPages)
      return kerr('ENOMEM', `RLIMIT_MEMLOCK: ${acct.user.lockedVm + n} pages over ${acct.rlimitPages}`);
    acct.user.lockedVm += n;
  } else if (acct.mode === ACCOUNT_MM) {
    if (acct.mm.lockedVm + n > acct.rlimitPages)
      return kerr('ENOMEM', `RLIMIT_MEMLOCK: ${acct.mm.lockedVm + n} pages over ${acct.rlimitPages}`);
    acct.mm.lockedVm += n;
  }
  acct.mm.pinnedVm += n;
  return undefined;
}

export function unchargePins(acct: PinAccount, n: number): void {
  if (acct.mode === ACCOUNT_USER) acct.user.lockedVm -= n;
  else if (acct.mode === ACCOUNT_MM) acct.mm.lockedVm -= n;
  acct.mm.pinnedVm -= n;
  invariant(
    acct.mm.pinnedVm >= 0 && acct.user.lockedVm >= 0 && acct.mm.lockedVm >= 0,
    'pin accounting below zero',
  );
}

export { ACCOUNT_NONE };

/**
 * Hold pages [first, last] of `pages`: pin the ones nobody held yet. All or nothing:
 * EFAULT for user memory that is not there (or an mm that is gone), EINVAL for a file range
 * past the end of the file, ENOMEM over the memlock limit or on an injected failure.
 */
export function pagesHold(
  pages: IoptPages,
  first: number,
  last: number,
  faults: FaultInjector,
): KernelError | undefined {
  const pre = pages.source as PagesSource;
  if (pre.pfns.length !== Number(pages.npages)) {
    // Before making the per-page tables, refuse what cannot exist (as the pin would).
    const err = checkBacked(pre, Number(pages.base), first, last);
    if (err) return err;
    if (pages.npages > MAX_TRACKED_PAGES) return kerr('ENOMEM', 'mapping too large for the model to track');
  }
  const s = sourceOf(pages);
  if (faults.armed && faults.shouldFail('temp_kmalloc'))
    return kerr('ENOMEM', 'pfn_reader: batch allocation failed');
  const holders = s.holders;
  const pfns = s.pfns;
  const phys = s.phys;
  const write = pages.writable;
  const base = Number(pages.base);
  let newly = 0;
  let err: KernelError | undefined;
  let i = first;
  for (; i <= last; i++) {
    if (holders[i]! > 0) {
      holders[i]!++;
      continue;
    }
    let pfn = 0;
    if (s.kind === 'user') {
      const mm = s.mm!;
      if (!mm.alive) {
        err = kerr('EFAULT', 'the mm of these pages is gone');
        break;
      }
      const va = base + i * PAGE_SIZE;
      // Fast path: a run of already-present pages of one shared mapping.
      const vma = mm.findVma(va);
      if (vma?.shared && (!write || vma.prot & 2) && vma.file !== null && !vma.file.hugetlb) {
        const fp = vma.file.pages;
        // Small integers only: VAs divided by PAGE_SIZE would leave the int32 fast path.
        const off = (vma.pgoff + (base - vma.start) / PAGE_SIZE) | 0;
        const end = Math.min(last + 1, ((vma.end - base) / PAGE_SIZE) | 0);
        let j = i;
        while (j < end && holders[j] === 0) {
          const q = fp[off + j]!;
          if (q === 0) break;
          pfns[j] = q;
          holders[j] = 1;
          j++;
        }
        if (j > i) {
          phys.pinPages(pfns, i, j);
          newly += j - i;
          i = j - 1;
          continue;
        }
      }
      pfn = mm.fault(va, write, true);
      if (pfn === 0) {
        err = kerr('EFAULT', `no user page at 0x${va.toString(16)}`);
        break;
      }
    } else if (s.kind === 'dmabuf') {
      pfn = s.dmabuf!.pfns[base / PAGE_SIZE + i] ?? 0;
      if (pfn === 0) {
        err = kerr('EINVAL', 'range is beyond the end of the dma-buf');
        break;
      }
    } else {
      pfn = s.file!.page(base / PAGE_SIZE + i);
      if (pfn === 0) {
        err = kerr('EINVAL', 'file range is beyond the end of the file');
        break;
      }
    }
    phys.pinPage(pfn);
    pfns[i] = pfn;
    holders[i] = 1;
    newly++;
  }
  if (err === undefined && newly > 0) {
    if (faults.armed && faults.shouldFail('pfn_reader_user_update_pinned'))
      err = kerr('ENOMEM', 'pfn_reader_user_update_pinned: injected failure');
    else if (s.kind !== 'dmabuf') err = chargePins(s.acct, newly);
  }
  if (err !== undefined) {
    // Undo exactly what this call did: pages [first, i) were taken (i = last + 1 when the
    // charge failed); nothing was charged.
    for (let j = first; j < i; j++) {
      if (--holders[j]! === 0) {
        phys.unpinPage(pfns[j]!);
        pfns[j] = 0;
      }
    }
    return err;
  }
  s.npinned += newly;
  return undefined;
}

/** The per-page tables of one pages object are bounded: 2^26 pages is 256 GiB. */
const MAX_TRACKED_PAGES = 1n << 26n;

/** Whether pages [first, last] of a source can be pinned at all (EFAULT / EINVAL / ENODEV). */
function checkBacked(s: PagesSource, base: number, first: number, last: number): KernelError | undefined {
  if (s.kind === 'user') {
    const mm = s.mm!;
    if (!mm.alive) return kerr('EFAULT', 'the mm of these pages is gone');
    let va = base + first * PAGE_SIZE;
    const end = base + (last + 1) * PAGE_SIZE;
    while (va < end) {
      const v = mm.findVma(va);
      if (v === null || !Number.isSafeInteger(va))
        return kerr('EFAULT', `no user mapping at 0x${va.toString(16)}`);
      va = v.end;
    }
    return undefined;
  }
  const idx = Math.floor(base / PAGE_SIZE) + last;
  if (s.kind === 'file' && idx >= s.file!.pages.length)
    return kerr('EINVAL', 'file range is beyond the end of the file');
  if (s.kind === 'dmabuf' && idx >= s.dmabuf!.pfns.length)
    return kerr('EINVAL', 'range is beyond the end of the dma-buf');
  return undefined;
}

/** Release a hold on pages [first, last]: the last holder unpins and uncharges. */
export function pagesUnhold(pages: IoptPages, first: number, last: number): void {
  const s = sourceOf(pages);
  const freed = s.phys.releaseHolds(s.pfns, s.holders, first, last);
  if (freed > 0) {
    if (s.kind !== 'dmabuf') unchargePins(s.acct, freed);
    s.npinned -= freed;
  }
}

/** The page index range of an area inside its pages. */
export function areaPageRange(area: IoptArea): { first: number; last: number } {
  const sb = Number(area.startByte);
  const len = Number(area.length);
  return { first: Math.floor(sb / PAGE_SIZE), last: Math.floor((sb + len - 1) / PAGE_SIZE) };
}

/** Map a held area into one domain, contiguous physical runs at a time (batch_to_domain). */
function mapAreaInDomain(area: IoptArea, domain: IommuDomain, small: boolean): KernelError | undefined {
  const s = sourceOf(area.pages);
  const pfns = s.pfns;
  const iova0 = Number(area.iova);
  const len = Number(area.length);
  const sb = Number(area.startByte);
  if (
    small &&
    sb % PAGE_SIZE === 0 &&
    len % PAGE_SIZE === 0 &&
    iova0 % PAGE_SIZE === 0 &&
    domain.ops.mapPages
  ) {
    // batch_iommu_map_small: one map call per page, each of the largest granule <= PAGE_SIZE
    // (what iommu_map's page-size choice gives for a single aligned page).
    const bm = domain.pgsizes & (PAGE_SIZE * 2 - 1);
    if (domain.ops.mapSmallPages && (bm & PAGE_SIZE || bm & (PAGE_SIZE - 1))) {
      return domain.ops.mapSmallPages(
        domain,
        iova0,
        pfns,
        sb / PAGE_SIZE,
        len / PAGE_SIZE,
        PAGE_SIZE,
        area.iommuProt,
      );
    }
    if (bm !== 0) {
      const gran = 2 ** (31 - Math.clz32(bm));
      const count = PAGE_SIZE / gran;
      const map = domain.ops.mapPages;
      const first = sb / PAGE_SIZE;
      const n = len / PAGE_SIZE;
      for (let i = 0; i < n; i++) {
        const r = map(
          domain,
          iova0 + i * PAGE_SIZE,
          pfns[first + i]! * PAGE_SIZE,
          gran,
          count,
          area.iommuProt,
        );
        if (typeof r !== 'number') {
          if (i > 0) iommuUnmap(domain, iova0, i * PAGE_SIZE);
          return r;
        }
      }
      return undefined;
    }
  }
  let off = 0;
  while (off < len) {
    const byte = sb + off;
    const idx = Math.floor(byte / PAGE_SIZE);
    const pa = pfns[idx]! * PAGE_SIZE + (byte % PAGE_SIZE);
    let runEnd = (idx + 1) * PAGE_SIZE - sb; // area offset of the end of this page
    let j = idx;
    // With large pages disabled every page is its own map call (batch_iommu_map_small), so
    // that a later unmap may cut between any two pages.
    while (!small && runEnd < len && pfns[j + 1] === pfns[j]! + 1) {
      j++;
      runEnd += PAGE_SIZE;
    }
    const n = Math.min(runEnd, len) - off;
    const err = iommuMap(domain, iova0 + off, pa, n, area.iommuProt);
    if (err) {
      if (off > 0) iommuUnmap(domain, iova0, off);
      return err;
    }
    off += n;
  }
  return undefined;
}

function unmapAreaFromDomain(area: IoptArea, domain: IommuDomain): void {
  const n = iommuUnmap(domain, Number(area.iova), Number(area.length));
  invariant(n === Number(area.length), 'iopt: unmap of an area from a domain was short');
}

/** IoptHooks plus the dma-buf revocation path (an exporter's move_notify). */
export interface IommufdIoptHooks extends IoptHooks {
  /** Unmap a revoked dma-buf area from every domain and drop its pages. */
  revoke(area: IoptArea, domains: readonly IoptDomain[]): void;
  /** Map an area again once its dma-buf is no longer revoked. */
  restore(area: IoptArea, domains: readonly IoptDomain[]): KernelError | undefined;
  /** Whether the area is mirrored in the domains (held). */
  isHeld(area: IoptArea): boolean;
}

function revoked(a: IoptArea): boolean {
  const s = a.pages.source;
  return s instanceof PagesSource && s.dmabuf !== null && s.dmabuf.revoked;
}

/** What the hooks of an IOAS read from its io_pagetable. */
export interface IoptHooksOwner {
  readonly domains: readonly IoptDomain[];
  readonly disableLargePages: boolean;
}

/**
 * The IoptHooks of one IOAS: pins follow "the IOAS has at least one domain". A class rather
 * than closures over a factory's locals: an IOAS is made by every IOMMU_IOAS_ALLOC, and a
 * dozen closures per IOAS (each wrapped by the transpiler) made IOAS churn allocation-bound.
 */
export class IommufdHooks implements IommufdIoptHooks {
  private readonly faults: FaultInjector;
  private readonly iopt: IoptHooksOwner;
  /** Areas whose pages this IOAS holds; made with the first hold (most IOAS never map). */
  private held: WeakSet<IoptArea> | null = null;

  constructor(faults: FaultInjector, iopt: IoptHooksOwner) {
    this.faults = faults;
    this.iopt = iopt;
  }

  isHeld(a: IoptArea): boolean {
    return this.held?.has(a) === true;
  }

  private smallPages(): boolean {
    return this.iopt.disableLargePages;
  }

  private hold(a: IoptArea): KernelError | undefined {
    if (this.isHeld(a)) return undefined;
    const { first, last } = areaPageRange(a);
    const err = pagesHold(a.pages, first, last, this.faults);
    if (!err) (this.held ??= new WeakSet<IoptArea>()).add(a);
    return err;
  }

  private unhold(a: IoptArea): void {
    if (!this.isHeld(a)) return;
    this.held!.delete(a);
    const { first, last } = areaPageRange(a);
    pagesUnhold(a.pages, first, last);
  }

  fillArea(area: IoptArea, domains: readonly IoptDomain[]): KernelError | undefined {
    // A revoked dma-buf maps nothing until it is restored.
    if (revoked(area)) return undefined;
    const err = this.hold(area);
    if (err) return err;
    for (let i = 0; i < domains.length; i++) {
      const e = mapAreaInDomain(area, domains[i] as IommuDomain, this.smallPages());
      if (e) {
        for (let j = 0; j < i; j++) unmapAreaFromDomain(area, domains[j] as IommuDomain);
        this.unhold(area);
        return e;
      }
    }
    return undefined;
  }

  unfillArea(area: IoptArea, domains: readonly IoptDomain[]): void {
    if (!this.isHeld(area)) return;
    for (const d of domains) unmapAreaFromDomain(area, d as IommuDomain);
    this.unhold(area);
  }

  fillDomain(domain: IoptDomain, areas: readonly IoptArea[]): KernelError | undefined {
    const first = this.iopt.domains.length === 0;
    const done: IoptArea[] = [];
    for (const a of areas) {
      if (revoked(a)) continue;
      const err = first ? this.hold(a) : undefined;
      const e = err ?? mapAreaInDomain(a, domain as IommuDomain, this.smallPages());
      if (e) {
        if (first && !err) this.unhold(a);
        for (const x of done) {
          unmapAreaFromDomain(x, domain as IommuDomain);
          if (first) this.unhold(x);
        }
        return e;
      }
      done.push(a);
    }
    return undefined;
  }

  unfillDomain(domain: IoptDomain, areas: readonly IoptArea[]): void {
    const last = this.iopt.domains.length === 0;
    for (const a of areas) {
      if (!this.isHeld(a)) continue;
      unmapAreaFromDomain(a, domain as IommuDomain);
      if (last) this.unhold(a);
    }
  }

  revoke(area: IoptArea, domains: readonly IoptDomain[]): void {
    this.unfillArea(area, domains);
  }

  restore(area: IoptArea, domains: readonly IoptDomain[]): KernelError | undefined {
    return domains.length > 0 ? this.fillArea(area, domains) : undefined;
  }
}

/** The physical address of byte `off` of `pages` if it is pinned, else -1. */
export function pinnedPhys(pages: IoptPages, off: number): number {
  const s = sourceOf(pages);
  const sb = off;
  const idx = Math.floor(sb / PAGE_SIZE);
  const pfn = s.pfns[idx] ?? 0;
  return pfn === 0 ? -1 : pfn * PAGE_SIZE + (sb % PAGE_SIZE);
}

/**
 * iopt_pages_rw_access: copy between `buf` and `len` bytes of the pages from byte `off`,
 * through the pinned pages where there are some, else through the source (the mm must
 * still be alive).
 */
export function pagesRw(
  pages: IoptPages,
  off: number,
  buf: Uint8Array,
  bufOff: number,
  len: number,
  write: boolean,
): KernelError | undefined {
  const s = sourceOf(pages);
  const base = Number(pages.base);
  while (len > 0) {
    const idx = Math.floor(off / PAGE_SIZE);
    const po = off % PAGE_SIZE;
    const n = Math.min(len, PAGE_SIZE - po);
    let pfn = s.pfns[idx] ?? 0;
    if (pfn === 0) {
      if (s.kind === 'user') {
        if (!s.mm!.alive) return kerr('EFAULT', 'the mm of these pages is gone');
        pfn = s.mm!.fault(base + idx * PAGE_SIZE, write);
      } else pfn = s.file!.page(base / PAGE_SIZE + idx);
      if (pfn === 0) return kerr('EFAULT', 'no page behind this IOVA');
    }
    if (write) s.phys.write(pfn * PAGE_SIZE + po, buf, bufOff, n);
    else s.phys.read(pfn * PAGE_SIZE + po, buf, bufOff, n);
    off += n;
    bufOff += n;
    len -= n;
  }
  return undefined;
}
