// The global PASID allocator of Linux 6.6+ (research ioasid-core.md A.10, profile g66):
// one IDA for the whole system, `iommu_alloc_global_pasid(dev)` giving the lowest free PASID in
// [IOMMU_FIRST_GLOBAL_PASID, dev->iommu->max_pasids - 1] and IOMMU_PASID_INVALID on failure.
// PASID 0 (IOMMU_NO_PASID) is never handed out: it tags DMA without PASID.

import type { FaultInjector } from '../core/fault.ts';
import type { Tracer } from '../core/trace.ts';
import { IdTable } from './id-table.ts';

export const IOMMU_NO_PASID = 0;
export const IOMMU_FIRST_GLOBAL_PASID = 1;
export const IOMMU_PASID_INVALID = 0xffffffff;

/** What the allocator needs of a device: `dev->iommu->max_pasids`. */
export interface PasidCapable {
  readonly maxPasids: number;
}

export class GlobalPasidAllocator {
  private readonly ida = new IdTable(false);
  private readonly faults: FaultInjector;
  tracer: Tracer | null;

  constructor(faults: FaultInjector, tracer: Tracer | null = null) {
    this.faults = faults;
    this.tracer = tracer;
  }

  iommuAllocGlobalPasid(dev: PasidCapable): number {
    if (dev.maxPasids === 0) return IOMMU_PASID_INVALID;
    if (this.faults.armed && this.faults.shouldFail('global_pasid_ida')) return IOMMU_PASID_INVALID;
    const id = this.ida.lowestFree(IOMMU_FIRST_GLOBAL_PASID, dev.maxPasids - 1);
    if (id < 0) return IOMMU_PASID_INVALID;
    this.ida.insert(id);
    return id;
  }

  iommuFreeGlobalPasid(pasid: number): void {
    if (pasid === IOMMU_PASID_INVALID) {
      this.tracer?.({ kind: 'ioasid', what: 'warn', msg: 'iommu_free_global_pasid: IOMMU_PASID_INVALID' });
      return;
    }
    const ch =
      Number.isInteger(pasid) && pasid >= 0 && pasid <= 0xffffffff ? this.ida.chunkOf(pasid) : undefined;
    if (ch === undefined) {
      this.tracer?.({
        kind: 'ioasid',
        what: 'warn',
        msg: `ida_free called for id=${pasid} which is not allocated`,
      });
      return;
    }
    this.ida.remove(ch, pasid);
  }

  get allocated(): number {
    return this.ida.size;
  }

  ids(): number[] {
    return this.ida.ids();
  }

  checkInvariants(): string | undefined {
    if (this.ida.has(IOMMU_NO_PASID)) return 'global PASID 0 is allocated';
    return this.ida.check();
  }
}
