// The page tables of an Intel VT-d paging domain, kept in the machine's physical memory where
// the hardware walks them: the model of the dma_pte code of drivers/iommu/intel/iommu.c
// (pfn_to_dma_pte, __domain_mapping, switch_to_super_page, dma_pte_clear_level /
// domain_unmap, dma_pte_free_pagetable, intel_iommu_iova_to_phys,
// intel_iommu_read_and_clear_dirty) for the kernels the profile follows (~6.17, before the
// generic page-table library).
//
// One table format serves both stages, as in the kernel: a second-stage (second-level,
// vtd-model.md A.6) leaf is ADDR | R | W [| PS], a table entry R | W; a first-stage
// (first-level, x86-64 format, A.5) leaf is ADDR | P | R/W | U/S | A [| D] [| PS], a table entry
// P | R/W | U/S | A. Levels = AGAW + 2 (4 for the 48-bit AGAW of the default hardware).
// Superpages (2 MiB, 1 GiB) are used where the IOVA, the physical address and the length allow
// and the domain's superpage capability says so.
//
// Hot path: entries are two u32 halves read and written straight in the flat memory array
// (PhysicalMemory.flat) when the machine has one; every table page a batch writes is stamped
// once as written (PhysicalMemory.writeWord), which is what the VT-d model's invariant checker
// uses to tell a stale cached translation from a wrong one. Machines larger than the flat
// layout go through the PhysicalMemory accessors. An entry's location is `frame * 512 + index`.

import type { FaultInjector } from '../core/fault.ts';
import { invariant as importedInvariant } from '../core/invariants.ts';
import type { PhysicalMemory } from '../hw/memory.ts';
import type { FrameAllocator } from './frames.ts';

// A local binding: imported bindings cost a getter call each on hot paths once transpiled.
const invariant: typeof importedInvariant = importedInvariant;

export const VTD_PAGE_SHIFT = 12;
export const VTD_PAGE_SIZE = 4096;
export const DMA_PTE_READ = 1;
export const DMA_PTE_WRITE = 2;
export const DMA_PTE_LARGE_PAGE = 1 << 7;
export const DMA_PTE_SNP = 1 << 11;
export const DMA_FL_PTE_PRESENT = 1;
export const DMA_FL_PTE_US = 1 << 2;
export const DMA_FL_PTE_ACCESS = 1 << 5;
export const DMA_FL_PTE_DIRTY = 1 << 6;
export const DMA_SL_PTE_DIRTY = 1 << 9;
export const IOMMU_DIRTY_NO_CLEAR = 1;

/** agaw_to_level. */
export function agawToLevel(agaw: number): number {
  return agaw + 2;
}

/** agaw_to_width. */
export function agawToWidth(agaw: number): number {
  return Math.min(30 + agaw * 9, 64);
}

/** width_to_agaw. */
export function widthToAgaw(width: number): number {
  return Math.ceil((width - 30) / 9);
}

/** lvl_to_nr_pages / level_size: 4 KiB pages an entry at `level` spans. */
export function levelSize(level: number): number {
  return 2 ** (9 * (level - 1));
}

/** pfn_level_offset. */
function levelOffset(pfn: number, level: number): number {
  return Math.floor(pfn / 2 ** (9 * (level - 1))) % 512;
}

/** The unmap side's freelist (iommu_pages_list): table frames freed after the IOTLB flush. */
export type PageList = number[];

export class DmaPgtable {
  readonly mem: PhysicalMemory;
  readonly flat: Uint32Array | null;
  readonly frames: FrameAllocator;
  readonly faults: FaultInjector;
  /** First-stage (x86-64) entries rather than second-stage ones. */
  readonly firstLevel: boolean;
  readonly agaw: number;
  readonly levels: number;
  /** DOMAIN_MAX_PFN(gaw). */
  readonly maxPfn: number;
  /** Pfns at or above this are beyond the AGAW (domain_pfn_supported). */
  private readonly pfnLimit: number;
  /** Superpage levels the domain may use (1: 2 MiB, 2: 2 MiB and 1 GiB). */
  readonly superpage: number;
  /** The top table's frame (0 once the whole table is freed). */
  pgd: number;
  /** Table pages in use, the top one included. */
  pages = 0;
  /** Table entries' low bits: READ | WRITE (| US | ACCESS for the first stage). */
  private readonly tableBits: number;
  /** Level of the entry the last walk stopped at (pfn_to_dma_pte's *target_level). */
  level = 0;
  /** The leaf table of the last hot-path walk: its first pfn and frame (-1: none). */
  private cacheBase = -1;
  private cacheFn = 0;

  constructor(o: {
    mem: PhysicalMemory;
    frames: FrameAllocator;
    faults: FaultInjector;
    firstLevel: boolean;
    agaw: number;
    gaw: number;
    superpage: number;
  }) {
    this.mem = o.mem;
    this.flat = o.mem.flat;
    this.frames = o.frames;
    this.faults = o.faults;
    this.firstLevel = o.firstLevel;
    this.agaw = o.agaw;
    this.levels = agawToLevel(o.agaw);
    this.maxPfn = 2 ** (o.gaw - VTD_PAGE_SHIFT) - 1;
    this.pfnLimit = 2 ** (agawToWidth(o.agaw) - VTD_PAGE_SHIFT);
    this.superpage = o.superpage;
    this.tableBits = DMA_PTE_READ | DMA_PTE_WRITE | (o.firstLevel ? DMA_FL_PTE_US | DMA_FL_PTE_ACCESS : 0);
    this.pgd = 0;
  }

  /** Allocates the top table (paging_domain_alloc: "always allocate the top pgd"). */
  init(): boolean {
    const f = this.allocTable();
    if (f === 0) return false;
    this.pgd = f;
    return true;
  }

  // ---- entries ----

  lo(loc: number): number {
    const flat = this.flat;
    return flat !== null ? flat[loc * 2]! : this.mem.readLo(loc * 8);
  }

  hi(loc: number): number {
    const flat = this.flat;
    return flat !== null ? flat[loc * 2 + 1]! : this.mem.readHi(loc * 8);
  }

  /** Writes an entry (stamping its table page as written). */
  set(loc: number, lo: number, hi: number): void {
    this.mem.write64(loc * 8, lo >>> 0, hi >>> 0);
  }

  /** dma_pte_addr as a frame number. */
  static frameOf(lo: number, hi: number): number {
    return (hi & 0xfffff) * 1048576 + (lo >>> 12);
  }

  private allocTable(): number {
    if (this.faults.armed && this.faults.shouldFail('iommu_alloc_pages_node_sz')) return 0;
    const f = this.frames.allocFrame();
    if (f !== 0) this.pages++;
    return f;
  }

  /** iommu_free_pages of a table page. */
  freeTable(fn: number): void {
    if (fn === this.cacheFn) this.cacheBase = -1;
    this.pages--;
    this.frames.freeFrame(fn);
  }

  /** domain_pfn_supported. */
  pfnSupported(pfn: number): boolean {
    return pfn < this.pfnLimit;
  }

  /**
   * pfn_to_dma_pte: the entry for `pfn` at level `target`, allocating missing tables on the
   * way (`alloc`); target 0 stops at the first superpage or non-present entry (or the leaf).
   * Returns the location and leaves the level in `this.level`; -1 when the pfn is beyond the
   * AGAW or a table could not be allocated.
   */
  pfnToDmaPte(pfn: number, target: number, alloc = true): number {
    if (!this.pfnSupported(pfn) || this.pgd === 0) return -1;
    let fn = this.pgd;
    let level = this.levels;
    for (;;) {
      const loc = fn * 512 + levelOffset(pfn, level);
      let lo = this.lo(loc);
      let hi = this.hi(loc);
      const present = (lo & 3) !== 0;
      if (target === 0 && ((lo & DMA_PTE_LARGE_PAGE) !== 0 || !present)) {
        this.level = level;
        return loc;
      }
      if (level === target) {
        this.level = level;
        return loc;
      }
      if (!present) {
        if (!alloc) return -1;
        const t = this.allocTable();
        if (t === 0) return -1;
        lo = ((t % 1048576) * 4096 + this.tableBits) >>> 0;
        hi = Math.floor(t / 1048576);
        this.set(loc, lo, hi);
      }
      if (level === 1) {
        this.level = 1;
        return loc;
      }
      fn = DmaPgtable.frameOf(lo, hi);
      level--;
    }
  }

  /** The leaf attributes of a mapping with `prot` (DMA_PTE_READ/WRITE/SNP bits). */
  leafAttr(prot: number): number {
    let attr = prot & (DMA_PTE_READ | DMA_PTE_WRITE | DMA_PTE_SNP);
    if (this.firstLevel) {
      attr |= DMA_FL_PTE_PRESENT | DMA_FL_PTE_US | DMA_FL_PTE_ACCESS;
      if (prot & DMA_PTE_WRITE) attr |= DMA_FL_PTE_DIRTY;
    }
    return attr;
  }

  /** hardware_largepage_caps: the largest level usable at iovPfn/physPfn for `pages`. */
  largepageLevel(iovPfn: number, physPfn: number, pages: number): number {
    let support = this.superpage;
    let level = 1;
    let iv = iovPfn;
    let ph = physPfn;
    let n = pages;
    while (support > 0 && iv % 512 === 0 && ph % 512 === 0) {
      n = Math.floor(n / 512);
      if (n === 0) break;
      iv /= 512;
      ph /= 512;
      level++;
      support--;
    }
    return level;
  }

  /**
   * __domain_mapping's page-table part: maps nrPages 4 KiB pages iovPfn.. -> physPfn.., using
   * superpages where possible. `onSuperPageSwitch(start, end)` is the IOTLB flush
   * switch_to_super_page does after freeing smaller tables. Returns false when a table could
   * not be allocated (what is already written stays, as in the kernel).
   */
  mapRange(
    iovPfn: number,
    physPfn: number,
    nrPages: number,
    attr: number,
    onSuperPageSwitch: (startPfn: number, endPfn: number) => void,
  ): boolean {
    let loc = -1;
    let largeLvl = 1;
    let lvlPages = 1;
    while (nrPages > 0) {
      if (loc < 0) {
        largeLvl = this.largepageLevel(iovPfn, physPfn, nrPages);
        loc = this.pfnToDmaPte(iovPfn, largeLvl);
        if (loc < 0) return false;
        lvlPages = levelSize(largeLvl);
        if (largeLvl > 1) {
          const toNextPage = 512 - (loc % 512);
          const pagesToRemove = Math.min(nrPages, toNextPage * lvlPages);
          this.switchToSuperPage(iovPfn, iovPfn + pagesToRemove - 1, largeLvl, onSuperPageSwitch);
        }
      }
      const lo = ((physPfn % 1048576) * 4096 + attr + (largeLvl > 1 ? DMA_PTE_LARGE_PAGE : 0)) >>> 0;
      const hi = Math.floor(physPfn / 1048576);
      const oldLo = this.lo(loc);
      const oldHi = this.hi(loc);
      // The kernel's "DMA PTE for vPFN already set" WARN: iommufd never maps over a mapping.
      invariant(oldLo === 0 && oldHi === 0, `intel: DMA PTE for vPFN 0x${iovPfn.toString(16)} already set`);
      this.set(loc, lo, hi);
      nrPages -= lvlPages;
      iovPfn += lvlPages;
      physPfn += lvlPages;
      loc++;
      if (nrPages === 0 || loc % 512 === 0 || (largeLvl > 1 && nrPages < lvlPages)) loc = -1;
    }
    return true;
  }

  /**
   * The hot path of iommufd's small-page batches: `n` separate 4 KiB mappings of
   * iovPfn + i -> pfns[first + i], written straight into the leaf tables. Returns how many
   * pages were mapped (< n only when a table could not be allocated).
   */
  mapSmall(iovPfn: number, pfns: Int32Array, first: number, n: number, attr: number): number {
    const flat = this.flat;
    let i = 0;
    while (i < n) {
      const pfn = iovPfn + i;
      const idx0 = pfn % 512;
      const base = pfn - idx0;
      let fn: number;
      if (base === this.cacheBase) fn = this.cacheFn;
      else {
        const loc = this.pfnToDmaPte(pfn, 1);
        if (loc < 0) return i;
        fn = Math.floor(loc / 512);
        this.cacheBase = base;
        this.cacheFn = fn;
      }
      const cnt = Math.min(512 - idx0, n - i);
      if (flat !== null) {
        let wi = fn * 1024 + idx0 * 2;
        let k = first + i;
        const end = k + cnt;
        for (; k < end; k++, wi += 2) {
          const p = pfns[k]!;
          invariant((flat[wi]! | flat[wi + 1]!) === 0, 'intel: DMA PTE already set');
          flat[wi] = ((p & 0xfffff) * 4096 + attr) >>> 0;
          flat[wi + 1] = p >>> 20;
        }
        // stamp the table page as written (the model's cache checker reads the stamps)
        this.mem.writeWord(fn, idx0 * 2, flat[fn * 1024 + idx0 * 2]!);
      } else {
        for (let k = 0; k < cnt; k++) {
          const p = pfns[first + i + k]!;
          const loc = fn * 512 + idx0 + k;
          invariant((this.lo(loc) | this.hi(loc)) === 0, 'intel: DMA PTE already set');
          this.set(loc, ((p & 0xfffff) * 4096 + attr) >>> 0, p >>> 20);
        }
      }
      i += cnt;
    }
    return n;
  }

  /** switch_to_super_page: free smaller tables where superpages are about to go. */
  private switchToSuperPage(
    startPfn: number,
    endPfn: number,
    level: number,
    flush: (startPfn: number, endPfn: number) => void,
  ): void {
    const lvlPages = levelSize(level);
    let loc = -1;
    while (startPfn <= endPfn) {
      if (loc < 0) loc = this.pfnToDmaPte(startPfn, level);
      if (loc < 0) return;
      if ((this.lo(loc) & 3) !== 0) {
        this.freePagetable(startPfn, startPfn + lvlPages - 1, level + 1);
        flush(startPfn, endPfn);
      }
      loc++;
      startPfn += lvlPages;
      if (loc % 512 === 0) loc = -1;
    }
  }

  /** dma_pfn_level_pte: the entry at `level` for pfn, or -1 (largePage.v: where it stopped). */
  private pfnLevelPte(pfn: number, level: number, large: { v: number }): number {
    let fn = this.pgd;
    let total = this.levels;
    while (level <= total) {
      const loc = fn * 512 + levelOffset(pfn, total);
      if (level === total) return loc;
      const lo = this.lo(loc);
      if ((lo & 3) === 0) {
        large.v = total;
        break;
      }
      if (lo & DMA_PTE_LARGE_PAGE) {
        large.v = total;
        return loc;
      }
      fn = DmaPgtable.frameOf(lo, this.hi(loc));
      total--;
    }
    return -1;
  }

  /** dma_pte_clear_range: clear the lowest-level entries of [startPfn, lastPfn]. */
  private clearRange(startPfn: number, lastPfn: number): void {
    invariant(this.pfnSupported(lastPfn) && startPfn <= lastPfn, 'intel: dma_pte_clear_range bounds');
    const large = { v: 1 };
    do {
      large.v = 1;
      let loc = this.pfnLevelPte(startPfn, 1, large);
      if (loc < 0) {
        const span = levelSize(large.v + 1);
        startPfn = startPfn + 1 + ((span - ((startPfn + 1) % span)) % span);
        continue;
      }
      do {
        this.set(loc, 0, 0);
        startPfn += levelSize(large.v);
        loc++;
      } while (startPfn <= lastPfn && loc % 512 !== 0);
    } while (startPfn !== 0 && startPfn <= lastPfn);
  }

  /** dma_pte_free_level: free the tables below `retain` that [start, last] covers entirely. */
  private freeLevel(
    level: number,
    retain: number,
    tableFn: number,
    pfn: number,
    start: number,
    last: number,
  ): void {
    pfn = Math.max(start, pfn);
    let loc = tableFn * 512 + levelOffset(pfn, level);
    const size = levelSize(level);
    do {
      const lo = this.lo(loc);
      const levelPfn = pfn - (pfn % size);
      if ((lo & 3) !== 0 && (lo & DMA_PTE_LARGE_PAGE) === 0) {
        const child = DmaPgtable.frameOf(lo, this.hi(loc));
        if (level > 2) this.freeLevel(level - 1, retain, child, levelPfn, start, last);
        if (level < retain && !(start > levelPfn || last < levelPfn + size - 1)) {
          this.set(loc, 0, 0);
          this.freeTable(child);
        }
      }
      pfn = levelPfn + size;
      loc++;
    } while (loc % 512 !== 0 && pfn <= last);
  }

  /** dma_pte_free_pagetable. */
  freePagetable(startPfn: number, lastPfn: number, retainLevel: number): void {
    this.clearRange(startPfn, lastPfn);
    this.freeLevel(this.levels, retainLevel, this.pgd, 0, startPfn, lastPfn);
    if (startPfn === 0 && lastPfn === this.maxPfn) {
      this.freeTable(this.pgd);
      this.pgd = 0;
    }
  }

  /** dma_pte_list_pagetables: every table under `parentLoc` goes on the freelist. */
  private listPagetables(level: number, parentLoc: number, freelist: PageList): void {
    const fn = DmaPgtable.frameOf(this.lo(parentLoc), this.hi(parentLoc));
    freelist.push(fn);
    if (level === 1) return;
    const flat = this.flat;
    for (let i = 0; i < 512; i++) {
      const loc = fn * 512 + i;
      const lo = flat !== null ? flat[loc * 2]! : this.lo(loc);
      if ((lo & 3) !== 0 && (lo & DMA_PTE_LARGE_PAGE) === 0) this.listPagetables(level - 1, loc, freelist);
    }
  }

  /** dma_pte_clear_level. */
  private clearLevel(
    level: number,
    tableFn: number,
    pfn: number,
    start: number,
    last: number,
    freelist: PageList,
  ): void {
    pfn = Math.max(start, pfn);
    let loc = tableFn * 512 + levelOffset(pfn, level);
    const size = levelSize(level);
    do {
      const levelPfn = pfn - (pfn % size);
      const lo = this.lo(loc);
      if ((lo & 3) !== 0) {
        if (start <= levelPfn && last >= levelPfn + size - 1) {
          // The tables below go away entirely: listed, not cleared.
          if (level > 1 && (lo & DMA_PTE_LARGE_PAGE) === 0) this.listPagetables(level - 1, loc, freelist);
          this.set(loc, 0, 0);
        } else if (level > 1) {
          invariant((lo & DMA_PTE_LARGE_PAGE) === 0, 'intel: unmap of part of a superpage');
          this.clearLevel(level - 1, DmaPgtable.frameOf(lo, this.hi(loc)), levelPfn, start, last, freelist);
        }
      }
      pfn = levelPfn + size;
      loc++;
    } while (loc % 512 !== 0 && pfn <= last);
  }

  /** domain_unmap: clear [startPfn, lastPfn]; freed tables go on `freelist`. */
  unmap(startPfn: number, lastPfn: number, freelist: PageList): void {
    invariant(this.pfnSupported(lastPfn) && startPfn <= lastPfn, 'intel: domain_unmap bounds');
    this.cacheBase = -1;
    this.clearLevel(this.levels, this.pgd, 0, startPfn, lastPfn, freelist);
    if (startPfn === 0 && lastPfn === this.maxPfn) {
      freelist.push(this.pgd);
      this.pgd = 0;
    }
  }

  /** Frees the frames of a freelist (iommu_put_pages_list), after the IOTLB flush. */
  putPages(freelist: PageList): void {
    for (const fn of freelist) this.freeTable(fn);
    freelist.length = 0;
  }

  /** intel_iommu_iova_to_phys: the physical address, or -1 when nothing is mapped there. */
  iovaToPhys(iova: number): number {
    const loc = this.pfnToDmaPte(Math.floor(iova / VTD_PAGE_SIZE), 0, false);
    if (loc < 0) return -1;
    const lo = this.lo(loc);
    if ((lo & 3) === 0) return -1;
    const span = levelSize(this.level) * VTD_PAGE_SIZE;
    const base = DmaPgtable.frameOf(lo, this.hi(loc)) * VTD_PAGE_SIZE;
    return base - (base % span) + (iova % span);
  }

  /**
   * The second-stage half of intel_iommu_read_and_clear_dirty: for each mapped page of
   * [iova, iova + size), test (and unless NO_CLEAR, clear) the D bit and report it.
   */
  readAndClearDirty(
    iova: number,
    size: number,
    flags: number,
    record: ((iova: number, len: number) => void) | null,
  ): void {
    const end = iova + size - 1;
    do {
      const loc = this.pfnToDmaPte(Math.floor(iova / VTD_PAGE_SIZE), 0, false);
      const lvl = loc < 0 ? this.levels : this.level;
      const pgsize = levelSize(lvl) * VTD_PAGE_SIZE;
      if (loc >= 0) {
        const lo = this.lo(loc);
        if ((lo & 3) !== 0 && lo & DMA_SL_PTE_DIRTY) {
          if (!(flags & IOMMU_DIRTY_NO_CLEAR)) this.set(loc, lo & ~DMA_SL_PTE_DIRTY, this.hi(loc));
          record?.(iova, pgsize);
        }
      }
      iova += pgsize;
    } while (iova < end);
  }

  /** Counts the table pages reachable from the top (for the invariant checker). */
  countTables(): number {
    if (this.pgd === 0) return 0;
    const walk = (fn: number, level: number): number => {
      let n = 1;
      if (level === 1) return n;
      for (let i = 0; i < 512; i++) {
        const loc = fn * 512 + i;
        const lo = this.lo(loc);
        if ((lo & 3) !== 0 && (lo & DMA_PTE_LARGE_PAGE) === 0)
          n += walk(DmaPgtable.frameOf(lo, this.hi(loc)), level - 1);
      }
      return n;
    };
    return walk(this.pgd, this.levels);
  }
}
