// A small VT-d test machine for the hw tests: memory, one VT-d unit in scalable mode with
// translation enabled, one device's context entry and PASID directory, an invalidation queue,
// and helpers that program PASID entries and page tables the way a driver would (tables.ts).

import { DEFAULT_VTD, type VtdConfig } from '../../machine-config.ts';
import { PhysicalMemory } from '../memory.ts';
import * as faults from './faults.ts';
import { PGTT_FL, PGTT_NESTED, PGTT_PT, PGTT_SL, VtdIommu, XLATE_FAULT } from './iommu.ts';
import type { PasidEntry, SmContextEntry } from './structs.ts';
import {
  type FlMapOptions,
  InvalidationQueue,
  mapFl,
  mapSl,
  PageAllocator,
  type SlMapOptions,
  VtdTables,
} from './tables.ts';

export const SID = 0x0010; // 00:02.0
export const MiB = 2 ** 20;
export const GiB = 2 ** 30;

export interface RigOptions {
  memory?: number;
  sid?: number;
  ctx?: Partial<SmContextEntry>;
  /** Leave translation disabled / the root pointer unset. */
  install?: boolean;
  /** Set up an invalidation queue (default true). */
  qi?: boolean;
}

export type Outcome = { hpa: number } | { fault: number; recorded: boolean };

export class Rig {
  readonly mem: PhysicalMemory;
  readonly iommu: VtdIommu;
  readonly tb: VtdTables;
  readonly sid: number;
  readonly dir: number;
  readonly qi: InvalidationQueue | null;
  /** Guest memory for nested first-level tables: GPA g lives at HPA g + guestBase. */
  readonly guestBase = 256 * MiB;
  readonly guest = new PageAllocator(16 * MiB, 128 * MiB);

  constructor(cfg: Partial<VtdConfig> = {}, o: RigOptions = {}) {
    this.mem = new PhysicalMemory(o.memory ?? GiB);
    this.iommu = new VtdIommu(this.mem, { ...DEFAULT_VTD, ...cfg });
    this.tb = new VtdTables(this.mem, MiB, 16 * MiB);
    this.sid = o.sid ?? SID;
    this.dir = this.tb.allocPasidDir(7);
    this.tb.setContext(this.sid, { p: 1, paside: 1, pdts: 7, pasidDirPtr: this.dir, ...o.ctx });
    if (o.install !== false) this.tb.install(this.iommu);
    this.qi =
      o.qi === false || o.install === false
        ? null
        : new InvalidationQueue(this.mem, this.iommu, this.tb.pages.alloc(), 0xff000);
  }

  alloc = (): number => this.tb.pages.alloc();
  galloc = (): number => this.guest.alloc();
  g2h = (a: number): number => a + this.guestBase;

  /** PASID entry with PGTT=FL and a fresh first-level root; returns the root. */
  fl(pasid: number, pe: Partial<PasidEntry> = {}): number {
    const root = this.alloc();
    this.tb.setPasidEntry(this.dir, pasid, { p: 1, pgtt: PGTT_FL, did: 1, aw: 2, flptptr: root, ...pe });
    return root;
  }

  /** PASID entry with PGTT=SL and a fresh second-level root; returns the root. */
  sl(pasid: number, pe: Partial<PasidEntry> = {}): number {
    const root = this.alloc();
    this.tb.setPasidEntry(this.dir, pasid, { p: 1, pgtt: PGTT_SL, did: 2, aw: 2, slptptr: root, ...pe });
    return root;
  }

  /**
   * PASID entry with PGTT=nested: SL maps guest memory GPA [0, size) -> HPA + guestBase, with
   * 2 MiB pages unless slOpts.leafLevel says otherwise.
   */
  nested(
    pasid: number,
    pe: Partial<PasidEntry> = {},
    slOpts: SlMapOptions = {},
    size = 128 * MiB,
  ): { flRoot: number; slRoot: number } {
    const slRoot = this.alloc();
    const leafLevel = slOpts.leafLevel ?? 2;
    const step = leafLevel === 1 ? 4096 : 2 * MiB;
    for (let g = 0; g < size; g += step) {
      mapSl(this.mem, slRoot, g, g + this.guestBase, { ...slOpts, leafLevel }, this.alloc);
    }
    const flRoot = this.galloc();
    this.tb.setPasidEntry(this.dir, pasid, {
      p: 1,
      pgtt: PGTT_NESTED,
      did: 3,
      aw: 2,
      slptptr: slRoot,
      flptptr: flRoot,
      ...pe,
    });
    return { flRoot, slRoot };
  }

  pt(pasid: number, pe: Partial<PasidEntry> = {}): void {
    this.tb.setPasidEntry(this.dir, pasid, { p: 1, pgtt: PGTT_PT, did: 4, aw: 2, ...pe });
  }

  mapFl(root: number, va: number, pa: number, o: FlMapOptions = {}): number {
    return mapFl(this.mem, root, va, pa, o, this.alloc);
  }

  /** Maps in a guest (nested) first-level table: table pages come from guest memory. */
  mapGuestFl(root: number, gva: number, gpa: number, o: FlMapOptions = {}): number {
    return mapFl(this.mem, root, gva, gpa, o, this.galloc, this.g2h);
  }

  mapSl(root: number, gpa: number, hpa: number, o: SlMapOptions = {}): number {
    return mapSl(this.mem, root, gpa, hpa, o, this.alloc);
  }

  /** Translates (pasid < 0: without PASID) and returns the outcome. */
  t(
    pasid: number,
    addr: number | bigint,
    access: number = faults.ACCESS_READ,
    priv = false,
    sid = this.sid,
  ): Outcome {
    const a = BigInt(addr);
    const r = this.iommu.translate64(sid, pasid, Number(a >> 32n), Number(a & 0xffffffffn), access, priv);
    if (r === XLATE_FAULT)
      return { fault: this.iommu.lastFault!.reason, recorded: this.iommu.lastFault!.recorded };
    return { hpa: r };
  }

  /** Reads the 8-byte entry at an HPA as a bigint. */
  entry(addr: number): bigint {
    return this.mem.readU64(addr);
  }

  /** Clears every cache the way Linux does after a structure change (global invalidations). */
  flushAll(): void {
    this.iommu.invalidateContextCache(1, 0, 0, 0);
    this.iommu.invalidatePasidCache(3, 0, 0);
    this.iommu.invalidateIotlb(1, 0, 0, 0);
  }
}
