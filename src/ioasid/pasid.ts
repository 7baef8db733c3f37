// The paravirtual PASID API of seed 002 (Lu Baolu's RFC, research ioasid-core.md A.7):
// `iommu_pasid_init/exit/alloc/free/for_each/find`. A consumer (an IOMMU driver, a device
// driver) gets a handle with the PASID range its hardware imposes and draws IDs from the
// system-wide IOASID space through it. On bare metal the requests go to the IOASID core's
// default allocator; in a guest, a vIOMMU registers a custom allocator (VCMD, or virtio) and
// the same calls reach the host through it, with no change to the consumer.
//
// A consumer is an IOASID set of its own (SCENARIO.md): type NULL in v3 (token sets in the
// merged profiles), reserving no capacity, limited only by its range.

import { type KernelError, kerr } from '../core/errno.ts';
import {
  INVALID_IOASID,
  IOASID_SET_TYPE_NULL,
  IOASID_SET_TYPE_TOKEN,
  type IoasidCore,
  IoasidSet,
} from './ioasid.ts';

export class PasidConsumer {
  readonly set: IoasidSet;
  readonly min: number;
  readonly max: number;
  alive = true;
  constructor(set: IoasidSet, min: number, max: number) {
    this.set = set;
    this.min = min;
    this.max = max;
  }
}

function isU32(x: number): boolean {
  return Number.isInteger(x) && x >= 0 && x <= 0xffffffff;
}

export class IommuPasidApi {
  private readonly core: IoasidCore;
  /** The range the platform's IOMMUs impose when a consumer gives none: [1, 2^pasid_bits - 1]. */
  readonly hwMin: number;
  readonly hwMax: number;

  constructor(core: IoasidCore, hwRange: { min: number; max: number }) {
    this.core = core;
    this.hwMin = hwRange.min;
    this.hwMax = hwRange.max;
  }

  private valid(c: PasidConsumer): boolean {
    return c.alive && this.core.isValidSet(c.set);
  }

  iommuPasidInit(range?: { min: number; max: number }): PasidConsumer | KernelError {
    const min = range?.min ?? this.hwMin;
    const max = range?.max ?? this.hwMax;
    if (!isU32(min) || !isU32(max) || max === INVALID_IOASID || min > max)
      return kerr('EINVAL', `iommu_pasid_init: bad PASID range [${min}, ${max}]`);
    const type = this.core.profile === 'v3' ? IOASID_SET_TYPE_NULL : IOASID_SET_TYPE_TOKEN;
    const set = this.core.allocInternalSet(type, max - min + 1);
    if (!(set instanceof IoasidSet)) return set;
    return new PasidConsumer(set, min, max);
  }

  /** The consumer stops consuming: every PASID it holds is freed and the handle dies. */
  iommuPasidExit(c: PasidConsumer): void {
    if (!this.valid(c)) return;
    c.alive = false;
    this.core.ioasidSetPut(c.set);
  }

  /** A PASID in [min, max] clipped to the consumer's range; ENOSPC when none is free. */
  iommuPasidAlloc(c: PasidConsumer, min: number, max: number, priv: unknown = null): number | KernelError {
    if (!this.valid(c)) return kerr('EINVAL', 'iommu_pasid_alloc: not a live PASID consumer');
    if (!isU32(min) || !isU32(max) || min > max)
      return kerr('EINVAL', `iommu_pasid_alloc: bad range [${min}, ${max}]`);
    const lo = Math.max(min, c.min);
    const hi = Math.min(max, c.max);
    if (lo > hi)
      return kerr(
        'EINVAL',
        `iommu_pasid_alloc: [${min}, ${max}] is outside the consumer's [${c.min}, ${c.max}]`,
      );
    const id = this.core.ioasidAlloc(c.set, lo, hi, priv);
    if (id === INVALID_IOASID) return kerr('ENOSPC', `iommu_pasid_alloc: no free PASID in [${lo}, ${hi}]`);
    return id;
  }

  iommuPasidFree(c: PasidConsumer, id: number): void {
    if (!this.valid(c)) return;
    switch (this.core.profile) {
      case 'v3':
        this.core.ioasidFree(c.set, id);
        return;
      case 'm511':
        this.core.ioasidPut(c.set, id);
        return;
      default:
        // No refcount: free at once, but only an ID this consumer owns.
        if (this.core.inspect(id)?.set === c.set) this.core.releaseNow(id);
    }
  }

  /** Calls fn for each of the consumer's PASIDs in ascending order; a non-zero return stops and is returned. */
  iommuPasidForEach(c: PasidConsumer, fn: (id: number, priv: unknown) => number): number | KernelError {
    if (!this.valid(c)) return kerr('EINVAL', 'iommu_pasid_for_each: not a live PASID consumer');
    for (const { id, priv } of this.core.setMemberRecords(c.set)) {
      const r = fn(id, priv ?? null);
      if (r !== 0) return r;
    }
    return 0;
  }

  iommuPasidFind(c: PasidConsumer, id: number): unknown {
    if (!this.valid(c)) return kerr('EINVAL', 'iommu_pasid_find: not a live PASID consumer');
    return this.core.ioasidFind(c.set, id);
  }
}
