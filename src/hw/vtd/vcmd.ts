// Virtual command interface backends (vtd-model.md section D): the PASID allocator that a VCMD
// "allocate PASID" / "free PASID" command reaches. In a VM this is the host's IOASID set for
// that VM (D.3: QEMU forwarded it to /dev/ioasid or VFIO); the default is a plain lowest-free
// allocator over [1, 2^pasid_bits - 1], the range PROFILE.md gives the VCMD allocator, with the
// lowest-free rule of the host allocator it stands in for (D.3, Linux xa_alloc).

/** What a VCMD command reaches. Both calls complete synchronously (the guest never sees IP=1). */
export interface VcmdBackend {
  /** A free PASID, or -1 when none is available. */
  alloc(): number;
  /** Frees `pasid`; false if it was not allocated (the VCMD answers "invalid PASID"). */
  free(pasid: number): boolean;
}

/** Lowest-free allocator over [min, max] using a bitmap. */
export class LowestFreePasidAllocator implements VcmdBackend {
  readonly min: number;
  readonly max: number;
  private readonly used: Uint32Array;
  /** No free ID below this one. */
  private hint: number;
  inUse = 0;

  constructor(min: number, max: number) {
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 0 || max > 0xfffff) {
      throw new RangeError(`PASID range [${min}, ${max}] is not within 20 bits`);
    }
    this.min = min;
    this.max = max;
    this.used = new Uint32Array(((Math.max(max, 0) + 32) >>> 5) + 1);
    this.hint = min;
  }

  static forBits(bits: number): LowestFreePasidAllocator {
    return new LowestFreePasidAllocator(1, bits > 0 ? 2 ** bits - 1 : 0);
  }

  isAllocated(pasid: number): boolean {
    if (pasid < this.min || pasid > this.max) return false;
    return (this.used[pasid >>> 5]! & (1 << (pasid & 31))) !== 0;
  }

  alloc(): number {
    for (let p = this.hint; p <= this.max; ) {
      const w = this.used[p >>> 5]!;
      if (w === 0xffffffff) {
        p = (p | 31) + 1;
        continue;
      }
      if ((w & (1 << (p & 31))) === 0) {
        this.used[p >>> 5] = w | (1 << (p & 31));
        this.hint = p + 1;
        this.inUse++;
        return p;
      }
      p++;
    }
    this.hint = this.max + 1;
    return -1;
  }

  free(pasid: number): boolean {
    if (!Number.isInteger(pasid) || !this.isAllocated(pasid)) return false;
    this.used[pasid >>> 5]! &= ~(1 << (pasid & 31));
    if (pasid < this.hint) this.hint = pasid;
    this.inUse--;
    return true;
  }
}
