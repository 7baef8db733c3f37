// The IOTLB: cached final translations (vtd-model.md C.1, C.4; G.1 for QEMU's structure, whose
// policy is kept: a fixed capacity, 1024 by default, and the whole cache is dropped when a fill
// finds it full).
//
// Looked up before the context/PASID walk, as QEMU does, keyed by what the request carries:
// source-id, the request's PASID (or NO_PASID_KEY for a request without PASID), page number and
// page level (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB). Each entry also holds the tags invalidations
// match on: domain-id, the effective PASID (RID_PASID for requests without PASID) and the PGTT
// that produced it. The permissions stored are those a hit may grant without a walk, separately
// for user and supervisor requests; an access they do not cover goes to the walk, which either
// faults or (for a first write to a clean page) sets the dirty bit and refills the entry.
//
// Open addressing in typed arrays, the four key words of a slot side by side (one cache line);
// no allocation on lookup or fill; removal rebuilds the table.

/** IOTLB key for requests without PASID (PASIDs are 20 bits). */
export const NO_PASID_KEY = 0x100000;

/** Key word layout per slot in `keys`: [vlo, vhi | level << 24, pasid key, sid (-1 = empty)]. */
export const K_VLO = 0;
export const K_VHI = 1;
export const K_PASID = 2;
export const K_SID = 3;

export class Iotlb {
  /** Entries the cache holds before it is flushed on the next fill; 0 = no IOTLB. */
  readonly capacity: number;
  readonly shift: number;
  readonly mask: number;
  count = 0;
  /** Lookups that missed (hits are not counted: the hit path stays a pure load sequence). */
  misses = 0;
  fills = 0;
  overflows = 0;
  /** 4 words per slot, see K_*. */
  readonly keys: Int32Array;
  /** Per slot: domain-id, effective PASID, PGTT. */
  readonly did: Int32Array;
  readonly pasid: Int32Array;
  readonly pgtt: Uint8Array;
  /** Per slot: [permissions for user requests, for supervisor requests] (ACCESS_* bits). */
  readonly perm: Uint8Array;
  /** Output page base (host physical). */
  readonly base: Float64Array;
  /** Memory write sequence number when filled (for the invariant checker). */
  readonly seq: Float64Array;
  /** Entries per level, so a lookup skips levels that hold nothing. */
  readonly levelCount = new Int32Array(6);

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 0 || capacity > 1 << 24) {
      throw new RangeError(`iotlb_entries must be an integer in [0, 2^24], got ${capacity}`);
    }
    this.capacity = capacity;
    let bits = 4;
    while (1 << bits < capacity * 2) bits++;
    this.shift = 32 - bits;
    const size = 1 << bits;
    this.mask = size - 1;
    this.keys = new Int32Array(size * 4);
    for (let h = 0; h < size; h++) this.keys[h * 4 + K_SID] = -1;
    this.did = new Int32Array(size);
    this.pasid = new Int32Array(size);
    this.pgtt = new Uint8Array(size);
    this.perm = new Uint8Array(size * 2);
    this.base = new Float64Array(size);
    this.seq = new Float64Array(size);
  }

  get slots(): number {
    return this.mask + 1;
  }

  /** First slot to probe for a key. */
  hash(sid: number, pk: number, vlo: number, vhi: number): number {
    return Math.imul(vlo ^ (pk << 7) ^ (sid << 13) ^ vhi, 0x9e3779b1) >>> this.shift;
  }

  /** Slot of the entry with this key, or -1. `vhi` includes the level (vpnHi | level << 24). */
  find(sid: number, pk: number, vlo: number, vhi: number): number {
    const k = this.keys;
    const mask = this.mask;
    let h = Math.imul(vlo ^ (pk << 7) ^ (sid << 13) ^ vhi, 0x9e3779b1) >>> this.shift;
    for (;;) {
      const i = h << 2;
      if (k[i] === vlo && k[i + 1] === vhi && k[i + 2] === pk && k[i + 3] === sid) return h;
      if (k[i + 3] === -1) return -1;
      h = (h + 1) & mask;
    }
  }

  /** Adds or replaces an entry. Drops everything first when full (QEMU's policy). */
  insert(
    sid: number,
    pk: number,
    vlo: number,
    vhi: number,
    did: number,
    pasid: number,
    pgtt: number,
    permU: number,
    permS: number,
    base: number,
    seq: number,
  ): void {
    if (this.capacity === 0) return;
    let h = this.find(sid, pk, vlo, vhi);
    if (h < 0) {
      if (this.count >= this.capacity) {
        this.clear();
        this.overflows++;
      }
      h = this.hash(sid, pk, vlo, vhi);
      while (this.keys[(h << 2) + K_SID] !== -1) h = (h + 1) & this.mask;
      this.count++;
      this.levelCount[vhi >>> 24]!++;
    }
    this.fills++;
    const i = h << 2;
    this.keys[i + K_VLO] = vlo;
    this.keys[i + K_VHI] = vhi;
    this.keys[i + K_PASID] = pk;
    this.keys[i + K_SID] = sid;
    this.did[h] = did;
    this.pasid[h] = pasid;
    this.pgtt[h] = pgtt;
    this.perm[h << 1] = permU;
    this.perm[(h << 1) + 1] = permS;
    this.base[h] = base;
    this.seq[h] = seq;
  }

  clear(): void {
    for (let h = 0; h <= this.mask; h++) this.keys[(h << 2) + K_SID] = -1;
    this.count = 0;
    this.levelCount.fill(0);
  }

  sid(slot: number): number {
    return this.keys[(slot << 2) + K_SID]!;
  }

  pasidKey(slot: number): number {
    return this.keys[(slot << 2) + K_PASID]!;
  }

  level(slot: number): number {
    return this.keys[(slot << 2) + K_VHI]! >>> 24;
  }

  permU(slot: number): number {
    return this.perm[slot << 1]!;
  }

  permS(slot: number): number {
    return this.perm[(slot << 1) + 1]!;
  }

  /** First 4 KiB page number the entry covers. */
  firstPage(slot: number): number {
    const i = slot << 2;
    const vhi = this.keys[i + K_VHI]!;
    const level = vhi >>> 24;
    const vpn = (vhi & 0xffffff) * 4294967296 + (this.keys[i + K_VLO]! >>> 0);
    return vpn * 2 ** (9 * (level - 1));
  }

  /** Removes every entry `pred` selects; returns how many. */
  removeIf(pred: (slot: number) => boolean): number {
    if (this.count === 0) return 0;
    const keep: number[] = [];
    let removed = 0;
    for (let h = 0; h <= this.mask; h++) {
      if (this.keys[(h << 2) + K_SID] === -1) continue;
      if (pred(h)) removed++;
      else keep.push(h);
    }
    if (removed === 0) return 0;
    const saved = keep.map((h) => ({
      k: this.keys.slice(h << 2, (h << 2) + 4),
      did: this.did[h]!,
      pasid: this.pasid[h]!,
      pgtt: this.pgtt[h]!,
      pu: this.perm[h << 1]!,
      ps: this.perm[(h << 1) + 1]!,
      base: this.base[h]!,
      seq: this.seq[h]!,
    }));
    this.clear();
    for (const e of saved) {
      this.insert(
        e.k[K_SID]!,
        e.k[K_PASID]!,
        e.k[K_VLO]!,
        e.k[K_VHI]!,
        e.did,
        e.pasid,
        e.pgtt,
        e.pu,
        e.ps,
        e.base,
        e.seq,
      );
      this.fills--;
    }
    return removed;
  }

  /** Occupied slots, for inspection and the invariant checker. */
  slotsInUse(): number[] {
    const out: number[] = [];
    for (let h = 0; h <= this.mask; h++) if (this.keys[(h << 2) + K_SID] !== -1) out.push(h);
    return out;
  }
}
