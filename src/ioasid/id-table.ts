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

/**
 * The compact record, one u16 per ID (`Chunk.own`). Bits 0-13: the owning set's slot + 1 (0: no
 * set, or a slot too large to tag); bit 14: ACTIVE; bit 15: SIMPLE, the record is exactly
 * {that set, ACTIVE, one user, no SPID} and `rec` is not written at all. That is the state of
 * almost every live ID, and it lets alloc, free and find decide from two bytes in a dense array
 * instead of a cold eight-byte record: on a full PASID space the random accesses of a free or a
 * lookup hit a 2 MiB array rather than an 8 MiB one. 0 for an absent ID.
 */
export const OWN_SET_MASK = 0x3fff;
export const OWN_ACTIVE = 0x4000;
export const OWN_SIMPLE = 0x8000;
/** SimpleGroup.owner when SIMPLE IDs of several sets share the group. */
export const SIMPLE_MIXED = -2;
/** State value of an ACTIVE record (IOASID_STATE_ACTIVE; the table does not import the core). */
const STATE_ACTIVE = 1;

/** The compact record for (set, state) with one user and no SPID. */
export function ownFor(setId: number, state: number): number {
  const tag = setId >= 0 && setId < OWN_SET_MASK ? setId + 1 : 0;
  if (tag === 0) return 0;
  return state === STATE_ACTIVE ? tag | OWN_ACTIVE | OWN_SIMPLE : tag;
}

/** Who owns the SIMPLE IDs of some chunks: the low chunks share one group, a high chunk has its own. */
export class SimpleGroup {
  /** 0: no SIMPLE ID; a set tag: all are that set's; SIMPLE_MIXED: several sets'. */
  owner = 0;
  count = 0;
}

/** Private data of some chunks: one flat array for the low chunks, one per high chunk; made on first use. */
export class PrivStore {
  privs: unknown[] | null = null;
  cap: number;
  constructor(cap: number) {
    this.cap = cap;
  }
}

/** The owner of two groups of SIMPLE IDs taken together (`b` holding `bCount` of them). */
function mergeOwner(a: number, b: number, bCount: number): number {
  if (bCount === 0) return a;
  return a === b ? a : SIMPLE_MIXED;
}

/** A group's counters against a count taken from the bitmaps (a group once mixed may stay so). */
function checkGroup(g: SimpleGroup, owner: number, count: number): string | undefined {
  if (g.count !== count) return `SIMPLE count ${g.count} but ${count} bits`;
  if (g.owner !== owner && !(g.owner === SIMPLE_MIXED && count > 0))
    return `SIMPLE owner ${g.owner} but the IDs give ${owner}`;
  return undefined;
}

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
   * Records (only when the table keeps them). `own` is the compact record above, for every
   * present ID. `rec` holds the full record, two int32 per ID [meta, users] with
   * meta = (set + 1) << 3 | HAS_SPID << 2 | state, and is read only where `own` lacks SIMPLE; it
   * is made the first time such a record exists. SPIDs and private data live in arrays made on
   * first use too, so a table whose IDs carry neither costs no JS array at all (allocating and
   * scanning large JS arrays is what a fill of the PASID space would otherwise spend its time on).
   */
  own!: Uint16Array;
  /**
   * Bit per ID: `own` has SIMPLE. While every such ID of the chunk's group belongs to one set,
   * `grp.owner` is that set's tag, and "is this ID a SIMPLE one of set S" is a bit test in a
   * bitmap instead of a read of the ID's own u16: on a full PASID space the bitmap (128 KiB)
   * stays in the L2 cache where `own` (2 MiB) does not.
   */
  simple!: Int32Array;
  grp!: SimpleGroup;
  /** Private data: `store.privs[base + off]`. */
  store!: PrivStore;
  base = 0;
  rec: Int32Array | null = null;
  spids: Int32Array | null = null;

  /**
   * A chunk of a table with records gets its compact arrays from the table: views into the
   * table's flat arrays for the low chunks (so the hot paths index them by ID, with no chunk
   * lookup), arrays of its own above.
   */
  constructor(records: boolean) {
    if (!records) return;
    this.own = new Uint16Array(CHUNK_IDS);
    this.simple = new Int32Array(L0_WORDS);
    this.grp = new SimpleGroup();
    this.store = new PrivStore(CHUNK_IDS);
  }

  /** Every write of `own` outside the hot paths goes here, which keep `simple` the same way. */
  private setOwn(off: number, v: number): void {
    const bit = 1 << (off & 31);
    if ((this.simple[off >>> 5]! & bit) !== 0) this.dropSimple(off);
    this.own[off] = v;
    if ((v & OWN_SIMPLE) !== 0) this.addSimple(off, v & OWN_SET_MASK);
  }

  addSimple(off: number, tag: number): void {
    this.simple[off >>> 5]! |= 1 << (off & 31);
    const g = this.grp;
    if (g.count++ === 0) g.owner = tag;
    else if (g.owner !== tag) g.owner = SIMPLE_MIXED;
  }

  dropSimple(off: number): void {
    this.simple[off >>> 5]! &= ~(1 << (off & 31));
    const g = this.grp;
    if (--g.count === 0) g.owner = 0;
  }

  private fullRec(): Int32Array {
    if (this.rec === null) this.rec = new Int32Array(CHUNK_IDS * 2);
    return this.rec;
  }

  initRecord(off: number, setId: number, state: number, priv: unknown): void {
    const o = ownFor(setId, state);
    this.setOwn(off, o);
    if ((o & OWN_SIMPLE) === 0) {
      const rec = this.fullRec();
      const i = off << 1;
      rec[i] = ((setId + 1) << 3) | state;
      rec[i + 1] = 1;
    }
    if (priv != null) this.setPriv(off, priv);
  }

  /** The full record's meta word (a SIMPLE record is expanded on the fly). */
  private meta(off: number): number {
    const o = this.own[off]!;
    if ((o & OWN_SIMPLE) !== 0) return ((o & OWN_SET_MASK) << 3) | STATE_ACTIVE;
    // No full record made yet: an ID inserted without initRecord reads as the zero record.
    return this.rec === null ? 0 : this.rec[off << 1]!;
  }

  /** Before a change to the record: write a SIMPLE record out to `rec` and drop the bit. */
  private expand(off: number): Int32Array {
    const rec = this.fullRec();
    const o = this.own[off]!;
    if ((o & OWN_SIMPLE) !== 0) {
      const i = off << 1;
      rec[i] = ((o & OWN_SET_MASK) << 3) | STATE_ACTIVE;
      rec[i + 1] = 1;
      this.setOwn(off, o & ~OWN_SIMPLE);
    }
    return rec;
  }

  /** After a change to the record: recompute `own` from `rec` (SIMPLE again when it qualifies). */
  private settle(off: number): void {
    const i = off << 1;
    const meta = this.rec![i]!;
    const setId = (meta >> 3) - 1;
    const state = meta & 3;
    const base = ownFor(setId, state);
    if (base === 0) this.setOwn(off, 0);
    else if ((meta & META_HAS_SPID) === 0 && this.rec![i + 1] === 1) this.setOwn(off, base);
    else this.setOwn(off, base & ~OWN_SIMPLE);
  }

  getUsers(off: number): number {
    if ((this.own[off]! & OWN_SIMPLE) !== 0) return 1;
    return this.rec === null ? 0 : this.rec[(off << 1) | 1]!;
  }

  setUsers(off: number, v: number): void {
    this.expand(off)[(off << 1) | 1] = v;
    this.settle(off);
  }

  /** Adds d to the users count; returns the new count. */
  addUsers(off: number, d: number): number {
    const rec = this.expand(off);
    const i = (off << 1) | 1;
    const v = rec[i]! + d;
    rec[i] = v;
    this.settle(off);
    return v;
  }

  getState(off: number): number {
    return this.meta(off) & 3;
  }

  setState(off: number, state: number): void {
    const rec = this.expand(off);
    const i = off << 1;
    rec[i] = (rec[i]! & ~3) | state;
    this.settle(off);
  }

  /** The set slot of the record (-1: no set). */
  getSet(off: number): number {
    return (this.meta(off) >> 3) - 1;
  }

  setSet(off: number, setId: number): void {
    const rec = this.expand(off);
    const i = off << 1;
    rec[i] = ((setId + 1) << 3) | (rec[i]! & 7);
    this.settle(off);
  }

  /** The SPID, or 0xFFFFFFFF (INVALID_IOASID) when none is attached. */
  getSpid(off: number): number {
    return (this.meta(off) & META_HAS_SPID) !== 0 ? this.spids![off]! >>> 0 : 0xffffffff;
  }

  setSpid(off: number, spid: number): void {
    const rec = this.expand(off);
    const i = off << 1;
    if (spid === 0xffffffff) {
      rec[i] = rec[i]! & ~META_HAS_SPID;
    } else {
      if (this.spids === null) this.spids = new Int32Array(CHUNK_IDS);
      this.spids[off] = spid | 0;
      rec[i] = rec[i]! | META_HAS_SPID;
    }
    this.settle(off);
  }

  getPriv(off: number): unknown {
    const p = this.store.privs;
    return p === null ? null : p[this.base + off];
  }

  setPriv(off: number, priv: unknown): void {
    const st = this.store;
    if (st.privs === null) {
      if (priv == null) return;
      st.privs = new Array<unknown>(st.cap).fill(null);
    }
    st.privs[this.base + off] = priv ?? null;
  }

  /** Drop the private data reference (the ID is going). */
  clearPriv(off: number): void {
    const p = this.store.privs;
    if (p !== null) p[this.base + off] = null;
  }

  /** The compact records agree with the bitmap and the full records (for IdTable.check). */
  checkOwn(): string | undefined {
    const words = new Int32Array(this.own.buffer, this.own.byteOffset, CHUNK_IDS >>> 1);
    let count = 0;
    let owner = 0;
    for (let w = 0; w < L0_WORDS; w++) {
      const used = this.l0[w]!;
      const simple = this.simple[w]!;
      if ((simple & ~used) !== 0) return `word ${w}: SIMPLE bits on absent IDs`;
      if (used === 0) {
        // No ID of this word is present: its 32 compact records (16 int32) must all be 0.
        for (let k = w << 4; k < (w + 1) << 4; k++)
          if (words[k] !== 0) return `absent IDs of word ${w} have compact records`;
        continue;
      }
      for (let b = 0; b < 32; b++) {
        const off = (w << 5) | b;
        const bad = this.checkOwnAt(off, (used & (1 << b)) !== 0);
        if (bad !== undefined) return bad;
        const o = this.own[off]!;
        const isSimple = ((simple >>> b) & 1) === 1;
        if (isSimple !== ((o & OWN_SIMPLE) !== 0)) return `offset ${off}: SIMPLE bit disagrees with ${o}`;
        if (isSimple) {
          const tag = o & OWN_SET_MASK;
          owner = count++ === 0 ? tag : owner === tag ? owner : SIMPLE_MIXED;
        }
      }
    }
    this.checkedSimple = count;
    this.checkedOwner = owner;
    return undefined;
  }

  /** What the last checkOwn counted (the table adds them up per group). */
  checkedSimple = 0;
  checkedOwner = 0;

  private checkOwnAt(off: number, present: boolean): string | undefined {
    const o = this.own[off]!;
    if (!present) return o === 0 ? undefined : `absent offset ${off} has compact record ${o}`;
    if ((o & OWN_SIMPLE) !== 0) {
      return (o & OWN_ACTIVE) === 0 || (o & OWN_SET_MASK) === 0
        ? `offset ${off}: SIMPLE compact record ${o} without a set or ACTIVE`
        : undefined;
    }
    const meta = this.rec === null ? 0 : this.rec[off << 1]!;
    const users = this.rec === null ? 0 : this.rec[(off << 1) | 1]!;
    const base = ownFor((meta >> 3) - 1, meta & 3);
    const simple = (meta & META_HAS_SPID) === 0 && users === 1;
    const want = base === 0 ? 0 : simple ? base : base & ~OWN_SIMPLE;
    return o === want ? undefined : `offset ${off}: compact record ${o} but the full record gives ${want}`;
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
  readonly low: (Chunk | undefined)[] = Array.from({ length: LOW_CHUNKS }, () => undefined);
  private readonly high = new Map<number, Chunk>();
  private readonly full = new Int32Array(TOP_WORDS);
  /** Indices of the chunks made so far, ascending, so scans skip the empty space. */
  private readonly made: number[] = [];
  private readonly records: boolean;
  /**
   * The compact records, SIMPLE bitmap and private data of the low chunks, flat and indexed by
   * ID: the hot paths of the core (find above all) then reach an ID's state in one typed-array
   * access, not through a chunk object (each hop is several dependent loads, and a random
   * lookup's cost is set by how many such loads sit in front of its cache misses). Cover chunks
   * [0, lowCap / 2^15), grown by doubling as low chunks are made.
   */
  lowOwn = new Uint16Array(0);
  lowSimple = new Int32Array(0);
  lowCap = 0;
  readonly lowGroup = new SimpleGroup();
  readonly lowStore = new PrivStore(0);
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

  /** The chunk that would hold `id`, whether or not the ID is present. */
  chunkAt(id: number): Chunk | undefined {
    const ci = id >>> CHUNK_SHIFT;
    return ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
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
    return this.takeLowestOwn(min, max, -1);
  }

  /**
   * takeLowest, and when `own` is not -1 the new ID's compact record is set to it in the same
   * step (the core's fast alloc), so the chunk is not looked up again.
   */
  private takeLowestOwn(min: number, max: number, own: number): number {
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
            if (start !== this.hintHi) this.hintLo = start;
            this.hintHi = id + 1;
            if (own !== -1) {
              ch.own[(w << 5) | b] = own;
              ch.addSimple((w << 5) | b, own & OWN_SET_MASK);
            } else this.lastChunk = ch;
            return id;
          }
        }
      }
    }
    return this.takeLowestSearch(min, max, own);
  }

  /** takeLowestOwn when the first word it looks at has no free ID: kept out of line so the common case inlines. */
  private takeLowestSearch(min: number, max: number, own: number): number {
    const id = this.lowestFree(min, max);
    if (id < 0) return -1;
    const ch = this.insert(id);
    if (own !== -1) {
      ch.own[id & CHUNK_MASK] = own;
      ch.addSimple(id & CHUNK_MASK, own & OWN_SET_MASK);
    } else this.lastChunk = ch;
    return id;
  }

  /**
   * The core's fast alloc: takeLowest, then the compact record `own` (a SIMPLE value, see
   * OWN_SIMPLE) and the private data. -1 if no ID in [min, max] is free.
   */
  allocOwned(min: number, max: number, own: number, priv: unknown): number {
    const id = this.takeLowestOwn(min, max, own);
    if (priv !== null && id >= 0) this.chunkAt(id)!.setPriv(id & CHUNK_MASK, priv);
    return id;
  }

  /**
   * The core's fast find: the private data of `id` if it is an ACTIVE ID of the set whose
   * compact tag is `ownTag` (`findTag` = tag | ACTIVE), else undefined (never stored: no private
   * data is null), which sends the caller to the full path, the one that tells the reasons
   * apart. Comparing with undefined is a pointer compare, where a sentinel object imported from
   * here would cost a generic equality call. Only the low chunks: a Map lookup here would double
   * the code the caller's loop inlines.
   */
  lookupActive(id: number, ownTag: number, findTag: number): unknown {
    if (id >>> 0 !== id || id >= this.lowCap) return undefined;
    if (
      this.lowGroup.owner === ownTag
        ? (this.lowSimple[id >>> 5]! & (1 << (id & 31))) !== 0 || (this.lowOwn[id]! & ~OWN_SIMPLE) === findTag
        : (this.lowOwn[id]! & ~OWN_SIMPLE) === findTag
    ) {
      const privs = this.lowStore.privs;
      return privs === null ? null : privs[id];
    }
    return undefined;
  }

  /**
   * The core's fast free: if `id` is present with exactly the compact record `own` (a SIMPLE
   * value: that set, ACTIVE, one user, no SPID), remove it and return true; otherwise change
   * nothing and return false. One u16 compare decides, with no presence test first: `own` is 0
   * for every absent ID.
   */
  freeOwned(id: number, own: number): boolean {
    if (id >>> 0 !== id) return false;
    let ch: Chunk | undefined;
    if (id < this.lowCap) {
      // The decision from the flat arrays; the chunk only for the bitmaps remove() clears.
      if (this.lowGroup.owner === (own & OWN_SET_MASK)) {
        if ((this.lowSimple[id >>> 5]! & (1 << (id & 31))) === 0) return false;
      } else if (this.lowOwn[id] !== own) return false;
      ch = this.low[id >>> CHUNK_SHIFT]!;
    } else {
      const ci = id >>> CHUNK_SHIFT;
      ch = ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
      if (ch === undefined) return false;
      const off = id & CHUNK_MASK;
      if (ch.grp.owner === (own & OWN_SET_MASK)) {
        if ((ch.simple[off >>> 5]! & (1 << (off & 31))) === 0) return false;
      } else if (ch.own[off] !== own) return false;
    }
    this.remove(ch, id);
    return true;
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

  /** Give low chunk `ci` its views into the flat arrays, growing them first if they stop short. */
  private bindLow(ch: Chunk, ci: number): void {
    if ((ci + 1) * CHUNK_IDS > this.lowCap) this.growLow(ci + 1);
    this.viewLow(ch, ci);
    ch.grp = this.lowGroup;
    ch.store = this.lowStore;
  }

  private viewLow(ch: Chunk, ci: number): void {
    ch.own = this.lowOwn.subarray(ci * CHUNK_IDS, (ci + 1) * CHUNK_IDS);
    ch.simple = this.lowSimple.subarray(ci * L0_WORDS, (ci + 1) * L0_WORDS);
    ch.base = ci * CHUNK_IDS;
  }

  private growLow(chunks: number): void {
    let n = 1;
    while (n < chunks) n <<= 1;
    const cap = n * CHUNK_IDS;
    const own = new Uint16Array(cap);
    own.set(this.lowOwn);
    const simple = new Int32Array(cap >>> 5);
    simple.set(this.lowSimple);
    this.lowOwn = own;
    this.lowSimple = simple;
    const old = this.lowStore.privs;
    if (old !== null) {
      const privs = new Array<unknown>(cap).fill(null);
      for (let i = 0; i < this.lowCap; i++) privs[i] = old[i];
      this.lowStore.privs = privs;
    }
    this.lowStore.cap = cap;
    this.lowCap = cap;
    for (let ci = 0; ci < LOW_CHUNKS; ci++) {
      const ch = this.low[ci];
      if (ch !== undefined) this.viewLow(ch, ci);
    }
  }

  /** Mark `id` present (it must be absent); returns its chunk for the caller to fill the record. */
  insert(id: number): Chunk {
    const ci = id >>> CHUNK_SHIFT;
    let ch = ci < LOW_CHUNKS ? this.low[ci] : this.high.get(ci);
    if (ch === undefined) {
      ch = new Chunk(this.records && ci >= LOW_CHUNKS);
      if (ci < LOW_CHUNKS) {
        this.low[ci] = ch;
        if (this.records) this.bindLow(ch, ci);
      } else this.high.set(ci, ch);
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
    const was = ch.l0[w]!;
    ch.l0[w] = was & ~(1 << (off & 31));
    if (was === -1) {
      // The word was full, so its l1 bit (and maybe the l2 bit above it) was set.
      ch.l1[w >>> 5]! &= ~(1 << (w & 31));
      ch.l2 &= ~(1 << (w >>> 5));
    }
    if (ch.count-- === CHUNK_IDS) this.full[ci >>> 5]! &= ~(1 << (ci & 31));
    if (this.records) {
      // Drop the reference now (the kernel frees the record). `rec` may keep stale words: it is
      // read only for present IDs whose `own` lacks SIMPLE, and initRecord rewrites it.
      // Through the bitmap, not a read of own[off]: that would be the one cache miss of a free.
      if ((ch.simple[w]! & (1 << (off & 31))) !== 0) ch.dropSimple(off);
      ch.own[off] = 0;
      ch.clearPriv(off);
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
    let lowOwner = 0;
    let lowCount = 0;
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
      if (this.records) {
        const bad = ch.checkOwn();
        if (bad !== undefined) return `chunk ${ci}: ${bad}`;
        if (ci < LOW_CHUNKS) {
          lowOwner =
            lowCount === 0 ? ch.checkedOwner : mergeOwner(lowOwner, ch.checkedOwner, ch.checkedSimple);
          lowCount += ch.checkedSimple;
        } else {
          const g = checkGroup(ch.grp, ch.checkedOwner, ch.checkedSimple);
          if (g !== undefined) return `chunk ${ci}: ${g}`;
        }
      }
      if (isFull !== (n === CHUNK_IDS)) return `chunk ${ci}: top-level full bit disagrees`;
      total += n;
    }
    if (total !== this.size) return `table size ${this.size} but ${total} IDs present`;
    if (this.records) {
      const g = checkGroup(this.lowGroup, lowOwner, lowCount);
      if (g !== undefined) return `low chunks: ${g}`;
      // The flat arrays past the made chunks hold nothing.
      for (let ci = 0; ci < this.lowCap / CHUNK_IDS; ci++) {
        if (this.low[ci] !== undefined) continue;
        for (let k = ci * L0_WORDS; k < (ci + 1) * L0_WORDS; k++)
          if (this.lowSimple[k] !== 0) return `SIMPLE bits in unmade chunk ${ci}`;
      }
    }
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
