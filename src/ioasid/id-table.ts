// The ID table behind every allocator in the IOASID core: what the kernel keeps in an
// XA_FLAGS_ALLOC xarray (ioasid.c's `active_allocator->xa`) and what an IDA keeps for the global
// PASID space. It answers "lowest free ID in [min, max]" (xa_alloc / ida_alloc_range semantics,
// research ioasid-core.md A.1) over the whole u32 space, and stores the per-ID record of an
// `ioasid_data` (users, state, set, spid, private) in typed arrays.
//
// Layout: the 2^32 space is cut into chunks of 2^15 IDs. A chunk has a two-level bitmap (1024
// words of used bits; 32 words of "word full" bits and one word of "l1 word full" bits) and, if
// the table keeps records, one typed array per field. A top-level bitmap of full chunks lets the
// search skip dense regions, as the C reference's upper bitmap levels do. The low 2^21 IDs (past
// any PCIe PASID) keep all of that in flat arrays indexed by ID, of which their chunks hold
// views: the hot paths (alloc, free, find) reach an ID's bits and record without a chunk object.
// Everything on those paths is plain numbers and typed arrays: no allocation per call.

const CHUNK_SHIFT = 15;
const CHUNK_IDS = 1 << CHUNK_SHIFT; // 32768
const CHUNK_MASK = CHUNK_IDS - 1;
const L0_WORDS = CHUNK_IDS >>> 5; // 1024
const L1_WORDS = L0_WORDS >>> 5; // 32
/** A chunk's l1 array: its 32 l1 words, then the word of "l1 word full" bits (the chunk's l2). */
const L1_STRIDE = L1_WORDS + 1;
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
 * lookup hit a 2 MiB array rather than an 8 MiB one. Meaningless for an absent ID (see Chunk.own).
 */
export const OWN_SET_MASK = 0x3fff;
export const OWN_ACTIVE = 0x4000;
export const OWN_SIMPLE = 0x8000;
/** GroupState.simpleOwner when SIMPLE IDs of several sets share the group. */
export const SIMPLE_MIXED = -2;
/** State value of an ACTIVE record (IOASID_STATE_ACTIVE; the table does not import the core). */
const STATE_ACTIVE = 1;

/** The compact record for (set, state) with one user and no SPID. */
export function ownFor(setId: number, state: number): number {
  const tag = setId >= 0 && setId < OWN_SET_MASK ? setId + 1 : 0;
  if (tag === 0) return 0;
  return state === STATE_ACTIVE ? tag | OWN_ACTIVE | OWN_SIMPLE : tag;
}

/**
 * Who owns the SIMPLE IDs of some chunks: the low chunks share one group (the IdTable itself
 * holds its fields, one load closer for the hot paths), a high chunk has a SimpleGroup of its own.
 */
export interface GroupState {
  /** 0: no SIMPLE ID; a set tag: all are that set's; SIMPLE_MIXED: several sets'. */
  simpleOwner: number;
  /** Present IDs whose record is SIMPLE. */
  simpleCount: number;
  /**
   * Present IDs whose record is not SIMPLE. While it is 0 and one set owns the SIMPLE IDs,
   * "is this a SIMPLE ID of set S" is the presence bit alone: a free or a find then reads one
   * bitmap word, the one a free must write anyway.
   */
  nonSimple: number;
}

export class SimpleGroup implements GroupState {
  simpleOwner = 0;
  simpleCount = 0;
  nonSimple = 0;
}

/**
 * Private data of some chunks, made on first use: one flat array indexed by ID for the low
 * chunks (held by the IdTable itself), one array per high chunk (a PrivStore).
 */
export interface PrivHolder {
  privs: unknown[] | null;
  privCap: number;
}

/** Store `priv` at index i of h's private data, making the array on first use (not for null). */
function setPrivIn(h: PrivHolder, i: number, priv: unknown): void {
  if (h.privs === null) {
    if (priv == null) return;
    h.privs = new Array<unknown>(h.privCap).fill(null);
  }
  h.privs[i] = priv ?? null;
}

export class PrivStore implements PrivHolder {
  privs: unknown[] | null = null;
  privCap: number;
  constructor(cap: number) {
    this.privCap = cap;
  }
}

/** The owner of two groups of SIMPLE IDs taken together (`b` holding `bCount` of them). */
function mergeOwner(a: number, b: number, bCount: number): number {
  if (bCount === 0) return a;
  return a === b ? a : SIMPLE_MIXED;
}

/** A group's counters against a count taken from the bitmaps (a group once mixed may stay so). */
function checkGroup(g: GroupState, owner: number, count: number, nonSimple: number): string | undefined {
  if (g.simpleCount !== count) return `SIMPLE count ${g.simpleCount} but ${count} bits`;
  if (g.nonSimple !== nonSimple) return `non-SIMPLE count ${g.nonSimple} but ${nonSimple} IDs`;
  if (g.simpleOwner !== owner && !(g.simpleOwner === SIMPLE_MIXED && count > 0))
    return `SIMPLE owner ${g.simpleOwner} but the IDs give ${owner}`;
  return undefined;
}

/** Index of the lowest set bit of a non-zero 32-bit value. */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

export class Chunk {
  /** Bit per ID: present. For a low chunk, a view into IdTable.lowL0. */
  l0!: Int32Array;
  /**
   * Words 0-31: bit j of word i set = l0 word 32i + j is all ones (its 32 IDs are used). Word 32:
   * bit i set = l1 word i is all ones; the chunk is full when word 32 is. A view into
   * IdTable.lowL1 for a low chunk.
   */
  l1!: Int32Array;
  /**
   * Records (only when the table keeps them). `own` is the compact record above, for every
   * present ID; an absent ID's is whatever its last owner left (a removal does not clear it, so
   * a free touches no line of this 2 MiB array; insert clears it), and every reader tests
   * presence first. `rec` holds the full record, two int32 per ID [meta, users] with
   * meta = (set + 1) << 3 | HAS_SPID << 2 | state, and is read only where `own` lacks SIMPLE; it
   * is made the first time such a record exists. SPIDs and private data live in arrays made on
   * first use too, so a table whose IDs carry neither costs no JS array at all (allocating and
   * scanning large JS arrays is what a fill of the PASID space would otherwise spend its time on).
   */
  own!: Uint16Array;
  /**
   * Bit per present ID: `own` has SIMPLE (an absent ID's bit is stale, like its `own`: the fast
   * free writes neither; insert clears both). While every such ID of the chunk's group belongs
   * to one set, `grp.simpleOwner` is that set's tag, and "is this ID a SIMPLE one of set S" is a
   * bit test in a bitmap instead of a read of the ID's own u16: on a full PASID space the bitmap
   * (128 KiB) stays in the L2 cache where `own` (2 MiB) does not. While no present ID of the
   * group is other than SIMPLE (`grp.nonSimple` 0), the presence bit alone answers it.
   */
  simple!: Int32Array;
  grp!: GroupState;
  /** Private data: `store.privs[base + off]`. */
  store!: PrivHolder;
  base = 0;
  rec: Int32Array | null = null;
  spids: Int32Array | null = null;

  /**
   * A high chunk owns its arrays. A low chunk (`low`) gets views into the table's flat arrays
   * instead (IdTable.viewLow), so the hot paths index them by ID, with no chunk lookup.
   */
  constructor(records: boolean, low: boolean) {
    if (low) return;
    this.l0 = new Int32Array(L0_WORDS);
    this.l1 = new Int32Array(L1_STRIDE);
    if (!records) return;
    this.own = new Uint16Array(CHUNK_IDS);
    this.simple = new Int32Array(L0_WORDS);
    this.grp = new SimpleGroup();
    this.store = new PrivStore(CHUNK_IDS);
  }

  /** All 2^15 IDs are present. */
  isFull(): boolean {
    return this.l1[L1_WORDS] === -1;
  }

  /** Every write of `own` outside the hot paths goes here, which keep `simple` the same way. */
  private setOwn(off: number, v: number): void {
    const bit = 1 << (off & 31);
    if ((this.simple[off >>> 5]! & bit) !== 0) {
      this.dropSimple(off);
      this.grp.nonSimple++;
    }
    this.own[off] = v;
    if ((v & OWN_SIMPLE) !== 0) {
      this.addSimple(off, v & OWN_SET_MASK);
      this.grp.nonSimple--;
    }
  }

  /** A just-inserted ID (no record yet, so counted as not SIMPLE) gets the SIMPLE record `own`. */
  initSimple(off: number, own: number): void {
    this.own[off] = own;
    this.addSimple(off, own & OWN_SET_MASK);
    this.grp.nonSimple--;
  }

  addSimple(off: number, tag: number): void {
    this.simple[off >>> 5]! |= 1 << (off & 31);
    const g = this.grp;
    if (g.simpleCount++ === 0) g.simpleOwner = tag;
    else if (g.simpleOwner !== tag) g.simpleOwner = SIMPLE_MIXED;
  }

  dropSimple(off: number): void {
    this.simple[off >>> 5]! &= ~(1 << (off & 31));
    const g = this.grp;
    if (--g.simpleCount === 0) g.simpleOwner = 0;
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
    setPrivIn(this.store, this.base + off, priv);
  }

  /** Drop the private data reference (the ID is going). */
  clearPriv(off: number): void {
    const p = this.store.privs;
    if (p !== null) p[this.base + off] = null;
  }

  /** The compact records agree with the bitmap and the full records (for IdTable.check). */
  checkOwn(): string | undefined {
    let count = 0;
    let others = 0;
    let owner = 0;
    for (let w = 0; w < L0_WORDS; w++) {
      const used = this.l0[w]!;
      const simple = this.simple[w]!;
      // An absent ID's compact record and SIMPLE bit mean nothing (see `own`).
      for (let b = 0; b < 32; b++) {
        if ((used & (1 << b)) === 0) continue;
        const off = (w << 5) | b;
        const bad = this.checkOwnAt(off);
        if (bad !== undefined) return bad;
        const o = this.own[off]!;
        const isSimple = ((simple >>> b) & 1) === 1;
        if (isSimple !== ((o & OWN_SIMPLE) !== 0)) return `offset ${off}: SIMPLE bit disagrees with ${o}`;
        if (isSimple) {
          const tag = o & OWN_SET_MASK;
          owner = count++ === 0 ? tag : owner === tag ? owner : SIMPLE_MIXED;
        } else others++;
      }
    }
    this.checkedSimple = count;
    this.checkedOthers = others;
    this.checkedOwner = owner;
    return undefined;
  }

  /** What the last checkOwn counted (the table adds them up per group). */
  checkedSimple = 0;
  checkedOthers = 0;
  checkedOwner = 0;

  private checkOwnAt(off: number): string | undefined {
    const o = this.own[off]!;
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

  /** After a bit set made l0 word w all ones: its l1 bit, maybe the l2 bit; true if the chunk is now full. */
  markWordFull(w: number): boolean {
    const l1 = this.l1;
    const j = w >>> 5;
    const v1 = l1[j]! | (1 << (w & 31));
    l1[j] = v1;
    if (v1 !== -1) return false;
    const v2 = l1[L1_WORDS]! | (1 << j);
    l1[L1_WORDS] = v2;
    return v2 === -1;
  }

  /** After a bit clear in l0 word w, which was all ones: its l1 and l2 bits go. */
  markWordNotFull(w: number): void {
    const l1 = this.l1;
    l1[w >>> 5]! &= ~(1 << (w & 31));
    l1[L1_WORDS]! &= ~(1 << (w >>> 5));
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
      const g = ~l1[L1_WORDS]! & (-1 << j1);
      if (g === 0) return -1;
      j = ctz(g);
      f = ~l1[j]!;
    }
    const ww = (j << 5) | ctz(f);
    return (ww << 5) | ctz(~l0[ww]!);
  }
}

/** A set of u32 IDs with lowest-free search and optional per-ID records. */
export class IdTable implements GroupState, PrivHolder {
  /**
   * Chunk i covers IDs [i * 2^15, (i + 1) * 2^15). The first LOW_CHUNKS (2^21 IDs, past any PCIe
   * PASID) sit in a small packed array, the rest in a Map: a 2^17-slot array would fall into
   * V8's slow dictionary mode. Every low chunk below lowCap exists; none above it.
   */
  readonly low: (Chunk | undefined)[] = Array.from({ length: LOW_CHUNKS }, () => undefined);
  private readonly high = new Map<number, Chunk>();
  private readonly full = new Int32Array(TOP_WORDS);
  /** Indices of the chunks made so far, ascending, so scans skip the empty space. */
  private readonly made: number[] = [];
  private readonly records: boolean;
  /**
   * The bitmaps, compact records, SIMPLE bitmap and private data of the low chunks, flat and
   * indexed by ID (lowL1: L1_STRIDE words per chunk): the hot paths of the core reach an ID's
   * state in one typed-array access, not through a chunk object (each hop is several dependent
   * loads, and a random lookup's cost is set by how many such loads sit in front of its cache
   * misses; a sequential one's by how many instructions it runs). They cover chunks
   * [0, lowCap / 2^15), grown by doubling; the chunks hold views into them.
   */
  lowL0 = new Int32Array(0);
  lowL1 = new Int32Array(0);
  lowOwn = new Uint16Array(0);
  lowSimple = new Int32Array(0);
  lowCap = 0;
  /** The low chunks' GroupState and PrivHolder (see there). */
  simpleOwner = 0;
  simpleCount = 0;
  nonSimple = 0;
  privs: unknown[] | null = null;
  privCap = 0;
  /** Number of IDs in the table. */
  size = 0;
  /**
   * Search hint: every ID in [hintLo, hintHi) is in the table. A search whose min falls in that
   * run starts at hintHi; each search teaches the hint the run it found ([min, result)), so a
   * fill or a churn with the same min finds its ID in the first word it looks at.
   */
  private hintLo = 0;
  private hintHi = 0;
  /**
   * A second known run of present IDs, [pendLo, pendHi) (empty: both 0): what was left of the
   * hint above a hole that a removal made in it. When an allocation fills the hole, the hint
   * runs on to pendHi, so the search after it does not have to find the frontier again (the
   * pattern of a churn: a random free, then an allocation of the lowest free ID).
   */
  private pendLo = 0;
  private pendHi = 0;

  constructor(records: boolean) {
    this.records = records;
    // V8 treats a field never stored to since its initialisation as a constant of the object's
    // shape, and optimized code that read it as one is thrown away on the first store of
    // another value. The pending run is first set by a free, so a fill's code would be thrown
    // away (and compiled again) when the first free comes. Stored twice here, the fields are
    // ordinary mutable fields from the start.
    this.pendLo = 1;
    this.pendLo = 0;
    this.pendHi = 1;
    this.pendHi = 0;
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

  /** lowestFree + insert in one step; -1 if no ID is free. The chunk is left in `lastChunk` for the record. */
  takeLowest(min: number, max: number): number {
    const id = this.lowestFree(min, max);
    if (id < 0) return -1;
    this.lastChunk = this.insert(id);
    return id;
  }

  /**
   * The core's fast alloc: the lowest free ID in [min, max] (0 <= min <= max < 2^31), with the
   * compact record `own` (a SIMPLE value, see OWN_SIMPLE) and the private data; -1 if none is
   * free. The common case is a handful of word operations on the flat low arrays: the first
   * free ID sits in the word the hint points at. Everything else goes through the search.
   */
  allocOwned(min: number, max: number, own: number, priv: unknown): number {
    const lo = this.hintLo;
    const hi = this.hintHi;
    // min in [lo, hi] (see holeAt for the single compare)
    const start = (min - lo) >>> 0 <= (hi - lo) >>> 0 ? hi : min;
    if (start < this.lowCap && start <= max) {
      const w = start >>> 5;
      const l0 = this.lowL0;
      const old = l0[w]!;
      const bits = ~old & (-1 << (start & 31));
      if (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        const id = (w << 5) | b;
        if (id <= max) {
          const v = old | (1 << b);
          l0[w] = v;
          if (v === -1) this.lowWordFull(w);
          this.size++;
          // [start, id) are used; with the ID just taken, [.., id] is one used run. (The stores
          // here and below are unconditional on purpose: a property store first reached after
          // the code was optimized, as on the first call of a run, throws that code away.)
          this.hintLo = start !== hi ? start : lo;
          this.hintHi = id + 1 === this.pendLo ? this.takePend() : id + 1;
          this.lowOwn[id] = own;
          this.lowSimple[w]! |= 1 << b;
          const tag = own & OWN_SET_MASK;
          const n = this.simpleCount;
          this.simpleCount = n + 1;
          this.simpleOwner = n === 0 || this.simpleOwner === tag ? tag : SIMPLE_MIXED;
          if (priv !== null) setPrivIn(this, id, priv);
          return id;
        }
      }
    }
    return this.allocOwnedSearch(min, max, own, priv);
  }

  /** allocOwned when the word the hint points at has no free ID: out of line, so the common case inlines. */
  private allocOwnedSearch(min: number, max: number, own: number, priv: unknown): number {
    const id = this.lowestFree(min, max);
    if (id < 0) return -1;
    const ch = this.insert(id);
    const off = id & CHUNK_MASK;
    ch.initSimple(off, own);
    if (priv !== null) ch.setPriv(off, priv);
    return id;
  }

  /**
   * Low l0 word w (an index into lowL0) became all ones: its bit in lowL1. In a churn this
   * happens on almost every allocation (it fills the hole a free left in a full word), hence
   * the flat arrays and no chunk object; the rarer full l1 word goes out of line.
   */
  private lowWordFull(w: number): void {
    const ci = w >>> 10;
    const i = ci * L1_STRIDE + ((w >>> 5) & 31);
    const l1 = this.lowL1;
    const v1 = l1[i]! | (1 << (w & 31));
    l1[i] = v1;
    if (v1 === -1) this.lowL1WordFull(ci, (w >>> 5) & 31);
  }

  /** Low chunk ci's l1 word j became all ones. */
  private lowL1WordFull(ci: number, j: number): void {
    const i = ci * L1_STRIDE + L1_WORDS;
    const v2 = this.lowL1[i]! | (1 << j);
    this.lowL1[i] = v2;
    if (v2 === -1) this.full[ci >>> 5]! |= 1 << (ci & 31);
  }

  /** The hint reaches the pending run: it runs on to its end, and the pending run is used up. */
  private takePend(): number {
    const hi = this.pendHi;
    this.pendLo = 0;
    this.pendHi = 0;
    return hi;
  }

  /**
   * The core's fast find: the private data of `id` if it is an ACTIVE ID of the set whose
   * compact tag is `ownTag` (-1: none), else undefined (never stored: no private
   * data is null), which sends the caller to the full path, the one that tells the reasons
   * apart. Comparing with undefined is a pointer compare, where a sentinel object imported from
   * here would cost a generic equality call. Only the low chunks: a Map lookup here would double
   * the code the caller's loop inlines.
   */
  lookupActive(id: number, ownTag: number): unknown {
    if (id >>> 0 !== id || id >= this.lowCap) return undefined;
    const w = id >>> 5;
    const bit = 1 << (id & 31);
    if (
      (this.lowL0[w]! & bit) !== 0 &&
      // A SIMPLE ID of the set (see GroupState.nonSimple), or any present ID with the set's tag
      // and ACTIVE (ownTag -1 matches no record, as -1 | ACTIVE is -1).
      ((this.simpleOwner === ownTag && (this.nonSimple === 0 || (this.lowSimple[w]! & bit) !== 0)) ||
        (this.lowOwn[id]! & ~OWN_SIMPLE) === (ownTag | OWN_ACTIVE))
    ) {
      const privs = this.privs;
      return privs === null ? null : privs[id];
    }
    return undefined;
  }

  /**
   * The core's fast free: if `id` is present with exactly the compact record `own` (a SIMPLE
   * value: that set, ACTIVE, one user, no SPID), remove it and return true; otherwise change
   * nothing and return false. While one set owns every SIMPLE ID, one bit decides; otherwise
   * the presence bit and the u16. A low ID is removed through the flat arrays alone, and its
   * compact record is left as it is (see Chunk.own).
   */
  freeOwned(id: number, own: number): boolean {
    if (id >>> 0 !== id) return false;
    if (id >= this.lowCap) return this.freeOwnedHigh(id, own);
    const w = id >>> 5;
    const bit = 1 << (id & 31);
    const l0 = this.lowL0;
    const was = l0[w]!;
    // While one set owns every SIMPLE ID, presence (and the SIMPLE bit, unless every present ID
    // is SIMPLE) decides; otherwise presence and the u16. The SIMPLE bit is left as it is, like
    // the u16 (see Chunk.simple).
    if ((was & bit) === 0) return false;
    if (this.simpleOwner === (own & OWN_SET_MASK)) {
      if (this.nonSimple !== 0 && (this.lowSimple[w]! & bit) === 0) return false;
    } else if (this.lowOwn[id] !== own) return false;
    l0[w] = was & ~bit;
    if (was === -1) {
      // The word was full (in a churn, nearly always): clear the bits above it, as the C
      // reference does, here rather than in a call.
      const ci = w >>> 10;
      const j = (w >>> 5) & 31;
      const l1 = this.lowL1;
      const b1 = ci * L1_STRIDE;
      l1[b1 + j]! &= ~(1 << (w & 31));
      l1[b1 + L1_WORDS]! &= ~(1 << j);
      this.full[ci >>> 5]! &= ~(1 << (ci & 31));
    }
    const n = this.simpleCount - 1;
    this.simpleCount = n;
    this.simpleOwner = n === 0 ? 0 : this.simpleOwner;
    const privs = this.privs;
    if (privs !== null) privs[id] = null;
    this.size--;
    this.holeAt(id);
    return true;
  }

  private freeOwnedHigh(id: number, own: number): boolean {
    const ch = this.high.get(id >>> CHUNK_SHIFT);
    if (ch === undefined) return false;
    const off = id & CHUNK_MASK;
    const bit = 1 << (off & 31);
    if ((ch.l0[off >>> 5]! & bit) === 0) return false;
    if (ch.grp.simpleOwner === (own & OWN_SET_MASK)) {
      if ((ch.simple[off >>> 5]! & bit) === 0) return false;
    } else if (ch.own[off] !== own) return false;
    this.remove(ch, id);
    return true;
  }

  /**
   * `id` left the table: the known runs of present IDs stop short of it. A hole in the hint
   * leaves what was above it as the pending run. (Without branches around the stores: see
   * allocOwned. An empty pending run [p, p) is harmless.)
   */
  private holeAt(id: number): void {
    const lo = this.hintLo;
    const hi = this.hintHi;
    const pendLo = this.pendLo;
    const pendHi = this.pendHi;
    // id in [lo, hi) as one unsigned compare (lo <= hi always): a compare skipped by && on the
    // first calls has no type feedback, and reaching it later would throw the code away too.
    const inHint = (id - lo) >>> 0 < (hi - lo) >>> 0;
    const inPend = (id - pendLo) >>> 0 < (pendHi - pendLo) >>> 0;
    const next = id + 1;
    this.pendLo = inHint ? next : pendLo;
    this.pendHi = inHint ? hi : inPend ? id : pendHi;
    this.hintHi = inHint ? id : hi;
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
      if (!ch.isFull()) {
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

  private addMade(ci: number): void {
    let i = this.made.length;
    this.made.push(ci);
    while (i > 0 && this.made[i - 1]! > ci) {
      this.made[i] = this.made[i - 1]!;
      i--;
    }
    this.made[i] = ci;
  }

  /** Grow the flat low arrays to at least `chunks` chunks (a power of two), making the new chunks. */
  private growLow(chunks: number): void {
    let n = 1;
    while (n < chunks) n <<= 1;
    const cap = n * CHUNK_IDS;
    const l0 = new Int32Array(cap >>> 5);
    l0.set(this.lowL0);
    const l1 = new Int32Array(n * L1_STRIDE);
    l1.set(this.lowL1);
    this.lowL0 = l0;
    this.lowL1 = l1;
    if (this.records) {
      const own = new Uint16Array(cap);
      own.set(this.lowOwn);
      const simple = new Int32Array(cap >>> 5);
      simple.set(this.lowSimple);
      this.lowOwn = own;
      this.lowSimple = simple;
      const old = this.privs;
      if (old !== null) {
        const privs = new Array<unknown>(cap).fill(null);
        for (let i = 0; i < this.privCap; i++) privs[i] = old[i];
        this.privs = privs;
      }
      this.privCap = cap;
    }
    this.lowCap = cap;
    for (let ci = 0; ci < n; ci++) {
      let ch = this.low[ci];
      if (ch === undefined) {
        ch = new Chunk(this.records, true);
        this.low[ci] = ch;
        this.addMade(ci);
        if (this.records) {
          ch.grp = this;
          ch.store = this;
        }
      }
      this.viewLow(ch, ci);
    }
  }

  private viewLow(ch: Chunk, ci: number): void {
    ch.l0 = this.lowL0.subarray(ci * L0_WORDS, (ci + 1) * L0_WORDS);
    ch.l1 = this.lowL1.subarray(ci * L1_STRIDE, (ci + 1) * L1_STRIDE);
    if (!this.records) return;
    ch.own = this.lowOwn.subarray(ci * CHUNK_IDS, (ci + 1) * CHUNK_IDS);
    ch.simple = this.lowSimple.subarray(ci * L0_WORDS, (ci + 1) * L0_WORDS);
    ch.base = ci * CHUNK_IDS;
  }

  /** Mark `id` present (it must be absent); returns its chunk for the caller to fill the record. */
  insert(id: number): Chunk {
    const ci = id >>> CHUNK_SHIFT;
    let ch: Chunk | undefined;
    if (ci < LOW_CHUNKS) {
      if (id >= this.lowCap) this.growLow(ci + 1);
      ch = this.low[ci]!;
    } else {
      ch = this.high.get(ci);
      if (ch === undefined) {
        ch = new Chunk(this.records, false);
        this.high.set(ci, ch);
        this.addMade(ci);
      }
    }
    const off = id & CHUNK_MASK;
    const w = off >>> 5;
    const v = ch.l0[w]! | (1 << (off & 31));
    ch.l0[w] = v;
    if (v === -1 && ch.markWordFull(w)) this.full[ci >>> 5]! |= 1 << (ci & 31);
    // A removal leaves the compact record and the SIMPLE bit behind (see Chunk.own): a new ID
    // starts with no record, which is not SIMPLE.
    if (this.records) {
      ch.own[off] = 0;
      ch.simple[w]! &= ~(1 << (off & 31));
      ch.grp.nonSimple++;
    }
    this.size++;
    if (id === this.hintHi) this.hintHi = id + 1 === this.pendLo ? this.takePend() : id + 1;
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
      // The word was full, so its l1 bit (and maybe the l2 and top-level bits above it) were set.
      ch.markWordNotFull(w);
      this.full[ci >>> 5]! &= ~(1 << (ci & 31));
    }
    if (this.records) {
      // Drop the reference now (the kernel frees the record). `rec` may keep stale words: it is
      // read only for present IDs whose `own` lacks SIMPLE, and initRecord rewrites it; `own`
      // stays as it is (see Chunk.own). SIMPLE or not is the bitmap's word, not a read of
      // own[off]: that would be a cache miss more.
      if ((ch.simple[w]! & (1 << (off & 31))) !== 0) ch.dropSimple(off);
      else ch.grp.nonSimple--;
      ch.clearPriv(off);
    }
    this.size--;
    this.holeAt(id);
  }

  /** Calls fn for every ID in ascending order. fn must not insert or remove. */
  forEach(fn: (id: number, ch: Chunk, off: number) => void): void {
    if (this.size === 0) return;
    for (const ci of this.made) {
      const ch = this.chunk(ci)!;
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
    for (let ci = 0; ci < LOW_CHUNKS; ci++)
      if ((this.low[ci] !== undefined) !== ci * CHUNK_IDS < this.lowCap)
        return `low chunk ${ci} made or not made against the flat arrays' capacity ${this.lowCap}`;
    let lowOwner = 0;
    let lowCount = 0;
    let lowOthers = 0;
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
        if (((ch.l1[L1_WORDS]! >>> j) & 1) !== (ch.l1[j] === -1 ? 1 : 0))
          return `chunk ${ci} l1 word ${j}: l2 bit disagrees`;
      }
      if (this.records) {
        const bad = ch.checkOwn();
        if (bad !== undefined) return `chunk ${ci}: ${bad}`;
        if (ci < LOW_CHUNKS) {
          lowOwner =
            lowCount === 0 ? ch.checkedOwner : mergeOwner(lowOwner, ch.checkedOwner, ch.checkedSimple);
          lowCount += ch.checkedSimple;
          lowOthers += ch.checkedOthers;
        } else {
          const g = checkGroup(ch.grp, ch.checkedOwner, ch.checkedSimple, ch.checkedOthers);
          if (g !== undefined) return `chunk ${ci}: ${g}`;
        }
      }
      if (isFull !== (n === CHUNK_IDS)) return `chunk ${ci}: top-level full bit disagrees`;
      total += n;
    }
    if (total !== this.size) return `table size ${this.size} but ${total} IDs present`;
    if (this.records) {
      const g = checkGroup(this, lowOwner, lowCount, lowOthers);
      if (g !== undefined) return `low chunks: ${g}`;
    }
    for (const [lo, hi, what] of [
      [this.hintLo, this.hintHi, 'search hint'],
      [this.pendLo, this.pendHi, 'pending run'],
    ] as const) {
      if (hi <= lo) continue;
      const free = this.scanFrom(lo);
      if (free >= 0 && free < hi) return `${what} [${lo}, ${hi}) holds free ID ${free}`;
    }
    return undefined;
  }
}

export const ID_TABLE_CHUNK_IDS = CHUNK_IDS;
export const ID_TABLE_CHUNK_MASK = CHUNK_MASK;
