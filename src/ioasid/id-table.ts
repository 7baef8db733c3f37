// The ID table behind every allocator in the IOASID core: what the kernel keeps in an
// XA_FLAGS_ALLOC xarray (ioasid.c's `active_allocator->xa`) and what an IDA keeps for the global
// PASID space. It answers "lowest free ID in [min, max]" (xa_alloc / ida_alloc_range semantics,
// research ioasid-core.md A.1) over the whole u32 space, and stores the per-ID record of an
// `ioasid_data` (users, state, set, spid, private) in typed arrays.
//
// Layout: the 2^32 space is cut into chunks of 2^15 IDs, made on first use. A chunk has a
// two-level bitmap (1024 words of used bits; 32 words of "word full" bits) and, if the table
// keeps records, one typed array per field. A top-level bitmap of full chunks lets the search
// skip dense regions, as the C reference's upper bitmap levels do. Everything on the alloc /
// free / lookup path is plain numbers and typed arrays: no allocation per call.

const CHUNK_SHIFT = 15;
const CHUNK_IDS = 1 << CHUNK_SHIFT; // 32768
const CHUNK_MASK = CHUNK_IDS - 1;
const L0_WORDS = CHUNK_IDS >>> 5; // 1024
const L1_WORDS = L0_WORDS >>> 5; // 32
const NCHUNKS = 2 ** 32 / CHUNK_IDS; // 131072
const TOP_WORDS = NCHUNKS >>> 5; // 4096
const LOW_CHUNKS = 64;
/** Record meta bit: an SPID is attached. */
export const META_HAS_SPID = 4;

/** Index of the lowest set bit of a non-zero 32-bit value. */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

export class Chunk {
  readonly l0 = new Int32Array(L0_WORDS);
  readonly l1 = new Int32Array(L1_WORDS);
  /** Bit j set = l1 word j is all ones (its 1024 IDs are used). */
  l2 = 0;
  count = 0;
  /**
   * Records (only when the table keeps them): two int32 per ID, [meta, users], with
   * meta = (set + 1) << 3 | HAS_SPID << 2 | state. SPIDs and private data live in arrays made
   * on first use, so a table whose IDs carry neither costs no JS array at all (allocating and
   * scanning large JS arrays is what a fill of the PASID space would otherwise spend its time on).
   */
  rec!: Int32Array;
  spids: Int32Array | null = null;
  privs: unknown[] | null = null;

  constructor(records: boolean) {
    if (records) this.rec = new Int32Array(CHUNK_IDS * 2);
  }

  initRecord(off: number, setId: number, state: number, priv: unknown): void {
    const i = off << 1;
    this.rec[i] = ((setId + 1) << 3) | state;
    this.rec[i + 1] = 1;
    if (priv != null) this.setPriv(off, priv);
  }

  getUsers(off: number): number {
    return this.rec[(off << 1) | 1]!;
  }

  setUsers(off: number, v: number): void {
    this.rec[(off << 1) | 1] = v;
  }

  /** Adds d to the users count; returns the new count. */
  addUsers(off: number, d: number): number {
    const i = (off << 1) | 1;
    const v = this.rec[i]! + d;
    this.rec[i] = v;
    return v;
  }

  getState(off: number): number {
    return this.rec[off << 1]! & 3;
  }

  setState(off: number, state: number): void {
    const i = off << 1;
    this.rec[i] = (this.rec[i]! & ~3) | state;
  }

  /** The set slot of the record (-1: no set). */
  getSet(off: number): number {
    return (this.rec[off << 1]! >> 3) - 1;
  }

  setSet(off: number, setId: number): void {
    const i = off << 1;
    this.rec[i] = ((setId + 1) << 3) | (this.rec[i]! & 7);
  }

  /** The SPID, or 0xFFFFFFFF (INVALID_IOASID) when none is attached. */
  getSpid(off: number): number {
    return (this.rec[off << 1]! & META_HAS_SPID) !== 0 ? this.spids![off]! >>> 0 : 0xffffffff;
  }

  setSpid(off: number, spid: number): void {
    const i = off << 1;
    if (spid === 0xffffffff) {
      this.rec[i] = this.rec[i]! & ~META_HAS_SPID;
      return;
    }
    if (this.spids === null) this.spids = new Int32Array(CHUNK_IDS);
    this.spids[off] = spid | 0;
    this.rec[i] = this.rec[i]! | META_HAS_SPID;
  }

  getPriv(off: number): unknown {
    return this.privs === null ? null : this.privs[off];
  }

  setPriv(off: number, priv: unknown): void {
    if (this.privs === null) {
      if (priv == null) return;
      this.privs = new Array<unknown>(CHUNK_IDS).fill(null);
    }
    this.privs[off] = priv ?? null;
  }

  /** Bookkeeping after a bit set made l0 word w all ones. */
  markWordFull(w: number): void {
    const j = w >>> 5;
    const v1 = this.l1[j]! | (1 << (w & 31));
    this.l1[j] = v1;
    if (v1 === -1) this.l2 |= 1 << j;
  }

  /** Lowest free offset >= off in this chunk, or -1. Three ctz steps at most: no scanning. */
  findFree(off: number): number {
    const l0 = this.l0;
    const w = off >>> 5;
    const bits = ~l0[w]! & (-1 << (off & 31));
    if (bits !== 0) return (w << 5) | ctz(bits);
    if (w === L0_WORDS - 1) return -1;
    const w1 = w + 1;
    const l1 = this.l1;
    let j = w1 >>> 5;
    let f = ~l1[j]! & (-1 << (w1 & 31));
    if (f === 0) {
      if (j === L1_WORDS - 1) return -1;
      const j1 = j + 1;
      const g = ~this.l2 & (-1 << j1);
      if (g === 0) return -1;
      j = ctz(g);
      f = ~l1[j]!;
    }
    const ww = (j << 5) | ctz(f);
    return (ww << 5) | ctz(~l0[ww]!);
  }
}

/** A set of u32 IDs with lowest-free search and optional per-ID records. */
export class IdTable {
  /**
   * Chunk i covers IDs [i * 2^15, (i + 1) * 2^15). The first LOW_CHUNKS (2^21 IDs, past any PCIe
   * PASID) sit in a small packed array, the rest in a Map: a 2^17-slot array would fall into
   * V8's slow dictionary mode.
   */
  private readonly low: (Chunk | undefined)[] = Array.from({ length: LOW_CHUNKS }, () => undefined);
  private readonly high = new Map<number, Chunk>();
  private readonly full = new Int32Array(TOP_WORDS);
  /** Indices of the chunks made so far, ascending, so scans skip the empty space. */
  private readonly made: number[] = [];
  private readonly records: boolean;
  /** Number of IDs in the table. */
  size = 0;
  /** Every ID below this one is in the table: searches from below it may start here. */
  /**
   * Search hint: every ID in [hintLo, hintHi) is in the table. A search whose min falls in that
   * run starts at hintHi; each search teaches the hint the run it found ([min, result)), so a
   * fill or a churn with the same min finds its ID in the first word it looks at.
   */
  private hintLo = 0;
  private hintHi = 0;

  constructor(records: boolean) {
    this.records = records;
  }

  /** Chunk holding `id` if the ID is present, else undefined. Hot path for lookups. */
  chunkOf(id: number): Chunk | undefined {
    const ci = id >>> CHUNK_SHIFT;
    const ch = ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
    if (ch === undefined) return undefined;
    const off = id & CHUNK_MASK;
    return (ch.l0[off >>> 5]! & (1 << (off & 31))) !== 0 ? ch : undefined;
  }

  private chunk(ci: number): Chunk | undefined {
    return ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
  }

  has(id: number): boolean {
    return this.chunkOf(id) !== undefined;
  }

  /** The chunk the last takeLowest() inserted into. */
  lastChunk: Chunk | undefined = undefined;

  /**
   * lowestFree + insert in one step; -1 if no ID is free. The common case (the first free ID
   * sits in the word the first-free hint points at) is a handful of word operations; the rest
   * goes through lowestFree and insert. The chunk is left in `lastChunk` for the record.
   */
  takeLowest(min: number, max: number): number {
    const start = min >= this.hintLo && min <= this.hintHi ? this.hintHi : min;
    const ci = start >>> CHUNK_SHIFT;
    if (start <= max && ci < LOW_CHUNKS) {
      const ch = this.low[ci];
      if (ch !== undefined) {
        const off = start & CHUNK_MASK;
        const w = off >>> 5;
        const l0 = ch.l0;
        const old = l0[w]!;
        const bits = ~old & (-1 << (off & 31));
        if (bits !== 0) {
          const b = 31 - Math.clz32(bits & -bits);
          const id = (ci << CHUNK_SHIFT) | (w << 5) | b;
          if (id <= max) {
            const v = old | (1 << b);
            l0[w] = v;
            if (v === -1) ch.markWordFull(w);
            if (++ch.count === CHUNK_IDS) this.full[ci >>> 5]! |= 1 << (ci & 31);
            this.size++;
            // [start, id) are used; with the ID just taken, [.., id] is one used run.
            if (start === this.hintHi) this.hintHi = id + 1;
            else {
              this.hintLo = start;
              this.hintHi = id + 1;
            }
            this.lastChunk = ch;
            return id;
          }
        }
      }
    }
    const id = this.lowestFree(min, max);
    if (id < 0) return -1;
    this.lastChunk = this.insert(id);
    return id;
  }

  /** Lowest ID not in the table within [min, max] (inclusive, 0 <= min, max <= 0xFFFFFFFF), or -1. */
  lowestFree(min: number, max: number): number {
    if (min > max) return -1;
    const fromHint = min >= this.hintLo && min <= this.hintHi;
    const start = fromHint ? this.hintHi : min;
    const found = this.scanFrom(start);
    // What the scan learnt holds whatever max says: [start, found) are all used.
    // (When nothing is free the hint stays: 2^32 would turn the fields into heap doubles.)
    if (found >= 0) {
      if (fromHint) this.hintHi = found;
      else {
        this.hintLo = min;
        this.hintHi = found;
      }
    }
    return found >= 0 && found <= max ? found : -1;
  }

  /** Lowest ID not in the table at or above `start` (no hint), or -1. */
  private scanFrom(start: number): number {
    let id = start;
    while (id <= 0xffffffff) {
      const ci = id >>> CHUNK_SHIFT;
      const ch = ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
      if (ch === undefined) return id;
      if (ch.count < CHUNK_IDS) {
        const r = ch.findFree(id & CHUNK_MASK);
        if (r >= 0) return ci * CHUNK_IDS + r;
      }
      const next = this.nextNotFullChunk(ci + 1);
      if (next < 0) return -1;
      id = next * CHUNK_IDS;
    }
    return -1;
  }

  private nextNotFullChunk(from: number): number {
    let c = from;
    const full = this.full;
    while (c < NCHUNKS) {
      const j = c >>> 5;
      const f = ~full[j]! & (-1 << (c & 31));
      if (f !== 0) return (j << 5) | ctz(f);
      c = (j + 1) << 5;
    }
    return -1;
  }

  /** Mark `id` present (it must be absent); returns its chunk for the caller to fill the record. */
  insert(id: number): Chunk {
    const ci = id >>> CHUNK_SHIFT;
    let ch = ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
    if (ch === undefined) {
      ch = new Chunk(this.records);
      if (ci < LOW_CHUNKS) this.low[ci] = ch;
      else this.high.set(ci, ch);
      let i = this.made.length;
      this.made.push(ci);
      while (i > 0 && this.made[i - 1]! > ci) {
        this.made[i] = this.made[i - 1]!;
        i--;
      }
      this.made[i] = ci;
    }
    const off = id & CHUNK_MASK;
    const w = off >>> 5;
    const v = ch.l0[w]! | (1 << (off & 31));
    ch.l0[w] = v;
    if (v === -1) ch.markWordFull(w);
    if (++ch.count === CHUNK_IDS) this.full[ci >>> 5]! |= 1 << (ci & 31);
    this.size++;
    if (id === this.hintHi) this.hintHi = id + 1;
    return ch;
  }

  /** Remove `id` (it must be present in `ch`). */
  remove(ch: Chunk, id: number): void {
    const ci = id >>> CHUNK_SHIFT;
    const off = id & CHUNK_MASK;
    const w = off >>> 5;
    ch.l0[w]! &= ~(1 << (off & 31));
    ch.l1[w >>> 5]! &= ~(1 << (w & 31));
    ch.l2 &= ~(1 << (w >>> 5));
    if (ch.count-- === CHUNK_IDS) this.full[ci >>> 5]! &= ~(1 << (ci & 31));
    if (this.records) {
      // Drop the reference now (the kernel frees the record); clear the SPID bit with the rest.
      ch.rec[off << 1] = 0;
      if (ch.privs !== null) ch.privs[off] = null;
    }
    this.size--;
    if (id >= this.hintLo && id < this.hintHi) this.hintHi = id;
  }

  /** Calls fn for every ID in ascending order. fn must not insert or remove. */
  forEach(fn: (id: number, ch: Chunk, off: number) => void): void {
    if (this.size === 0) return;
    for (const ci of this.made) {
      const ch = this.chunk(ci)!;
      if (ch.count === 0) continue;
      const base = ci * CHUNK_IDS;
      for (let w = 0; w < L0_WORDS; w++) {
        let bits = ch.l0[w]!;
        while (bits !== 0) {
          const b = ctz(bits);
          bits &= bits - 1;
          const off = (w << 5) | b;
          fn(base + off, ch, off);
        }
      }
    }
  }

  /** All IDs, ascending. */
  ids(): number[] {
    const out: number[] = [];
    this.forEach((id) => {
      out.push(id);
    });
    return out;
  }

  /** Structural self-check for the invariant checker: counts and summary bits agree with the bitmap. */
  check(): string | undefined {
    let total = 0;
    for (let j = 0; j < TOP_WORDS; j++) {
      let f = this.full[j]!;
      while (f !== 0) {
        const ci = (j << 5) | ctz(f);
        f &= f - 1;
        if (this.chunk(ci) === undefined) return `chunk ${ci} marked full but absent`;
      }
    }
    for (const ci of this.made) {
      const ch = this.chunk(ci)!;
      const isFull = (this.full[ci >>> 5]! & (1 << (ci & 31))) !== 0;
      let n = 0;
      for (let w = 0; w < L0_WORDS; w++) {
        const v = ch.l0[w]!;
        let x = v;
        while (x !== 0) {
          x &= x - 1;
          n++;
        }
        const fullBit = (ch.l1[w >>> 5]! & (1 << (w & 31))) !== 0;
        if (fullBit !== (v === -1)) return `chunk ${ci} word ${w}: full bit disagrees with bitmap`;
      }
      for (let j = 0; j < L1_WORDS; j++) {
        if (((ch.l2 >>> j) & 1) !== (ch.l1[j] === -1 ? 1 : 0))
          return `chunk ${ci} l1 word ${j}: l2 bit disagrees`;
      }
      if (n !== ch.count) return `chunk ${ci}: count ${ch.count} but ${n} bits set`;
      if (isFull !== (n === CHUNK_IDS)) return `chunk ${ci}: top-level full bit disagrees`;
      total += n;
    }
    if (total !== this.size) return `table size ${this.size} but ${total} IDs present`;
    if (this.hintHi > this.hintLo) {
      const free = this.scanFrom(this.hintLo);
      if (free >= 0 && free < this.hintHi)
        return `search hint [${this.hintLo}, ${this.hintHi}) holds free ID ${free}`;
    }
    return undefined;
  }
}

export const ID_TABLE_CHUNK_IDS = CHUNK_IDS;
export const ID_TABLE_CHUNK_MASK = CHUNK_MASK;
