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
  // Records (only when the table keeps them).
  users!: Int32Array;
  state!: Uint8Array;
  set!: Int32Array;
  spid!: Uint32Array;
  priv!: unknown[];

  constructor(records: boolean) {
    if (records) {
      this.users = new Int32Array(CHUNK_IDS);
      this.state = new Uint8Array(CHUNK_IDS);
      this.set = new Int32Array(CHUNK_IDS);
      this.spid = new Uint32Array(CHUNK_IDS);
      this.priv = new Array<unknown>(CHUNK_IDS).fill(null);
    }
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
  private firstFree = 0;

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

  /** Lowest ID not in the table within [min, max] (inclusive, 0 <= min, max <= 0xFFFFFFFF), or -1. */
  lowestFree(min: number, max: number): number {
    let id = Math.max(min, this.firstFree);
    while (id <= max) {
      const ci = id >>> CHUNK_SHIFT;
      const ch = ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
      if (ch === undefined) return id;
      if (ch.count < CHUNK_IDS) {
        const r = ch.findFree(id & CHUNK_MASK);
        if (r >= 0) {
          const found = ci * CHUNK_IDS + r;
          return found <= max ? found : -1;
        }
      }
      const next = this.nextNotFullChunk(ci + 1);
      if (next < 0) return -1;
      id = next * CHUNK_IDS;
    }
    return -1;
  }

  /** lowestFree without the hint, for the self-check. */
  private lowestFreeFrom(min: number): number {
    const saved = this.firstFree;
    this.firstFree = 0;
    const r = this.lowestFree(min, 0xffffffff);
    this.firstFree = saved;
    return r;
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
    if (v === -1) {
      const j = w >>> 5;
      const v1 = ch.l1[j]! | (1 << (w & 31));
      ch.l1[j] = v1;
      if (v1 === -1) ch.l2 |= 1 << j;
    }
    if (++ch.count === CHUNK_IDS) this.full[ci >>> 5]! |= 1 << (ci & 31);
    this.size++;
    if (id === this.firstFree) this.firstFree = id + 1;
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
    if (this.records) ch.priv[off] = null;
    this.size--;
    if (id < this.firstFree) this.firstFree = id;
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
    if (this.firstFree > 0 && this.lowestFreeFrom(0) < this.firstFree)
      return `first-free hint ${this.firstFree} skips a free ID`;
    return undefined;
  }
}

export const ID_TABLE_CHUNK_IDS = CHUNK_IDS;
export const ID_TABLE_CHUNK_MASK = CHUNK_MASK;
