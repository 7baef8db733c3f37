// The IOASID core: the kernel's drivers/iommu/ioasid.c as the "IOASID extensions for guest SVA"
// v3 series defines it (research ioasid-core.md A.4, B, C, D), with the fixes and choices that
// ../shared/spec/PROFILE.md P1-P10 fix. One engine serves every profile: `v3` (sets with quota,
// refcounts, states, SPIDs, notifications), `m511` (merged v5.11: refcounted get/put, opaque
// set tokens), `m55` (merged v5.5: alloc/free/find/set_data) and `g66` (no IOASID core in use;
// the global PASID API of global-pasid.ts). The profile only switches rules on and off; the
// facades in profiles.ts give each profile its kernel signatures.
//
// What the kernel keeps in xarrays lives in IdTables (id-table.ts): one per allocator (the
// default one, and one per set of custom allocator functions), each ID with its record.
// Kernel globals (capacity, the set xarray, the allocator list, the global notifier chain) are
// fields of one IoasidCore, so that each emulated machine has its own.

import { type KernelError, kerr } from '../core/errno.ts';
import { FaultInjector } from '../core/fault.ts';
import { debugEnabled, InvariantError } from '../core/invariants.ts';
import type { Tracer } from '../core/trace.ts';
import {
  type Chunk,
  ID_TABLE_CHUNK_MASK,
  IdTable,
  OWN_ACTIVE,
  OWN_SET_MASK,
  OWN_SIMPLE,
} from './id-table.ts';
import {
  IOASID_NOTIFY_ALLOC,
  IOASID_NOTIFY_BIND,
  IOASID_NOTIFY_FLAG_ALL,
  IOASID_NOTIFY_FLAG_SET,
  IOASID_NOTIFY_FREE,
  IOASID_NOTIFY_NAMES,
  IOASID_NOTIFY_UNBIND,
  type IoasidNotifyVal,
  type NotifierBlock,
  NotifierChain,
} from './notifier.ts';

export const INVALID_IOASID = 0xffffffff;
/** PCI_PASID_MAX: the default system capacity (P1). */
export const PCI_PASID_MAX = 0x100000;

export const IOASID_SET_TYPE_NULL = 1;
export const IOASID_SET_TYPE_MM = 2;
export const IOASID_SET_TYPE_NR = 3;
/** Not a kernel type: the opaque `DECLARE_IOASID_SET` token of the merged profiles. */
export const IOASID_SET_TYPE_TOKEN = 0;

export const IOASID_STATE_INACTIVE = 0;
export const IOASID_STATE_ACTIVE = 1;
export const IOASID_STATE_FREE_PENDING = 2;

export type IoasidProfile = 'v3' | 'm55' | 'm511' | 'g66';

/** Set IDs stay below 2^28 so that they fit a record's packed meta word. */
const MAX_SET_ID = (1 << 28) - 2;

/** Record field value for an ID allocated with no set (merged profiles, `set == NULL`). */
const NO_SET = -1;

export class IoasidSet {
  /** Index in the core's set table (the kernel's `set->id` in `ioasid_sets`). */
  readonly id: number;
  readonly token: unknown;
  readonly type: number;
  /** Counts against the system capacity (false for PASID-consumer and token sets). */
  readonly reserves: boolean;
  quota: number;
  nrIoasids = 0;
  ref = 1;
  /** Destroyed: no API accepts the handle; the slot lives on until its last FREE_PENDING ID is reclaimed. */
  get dead(): boolean {
    return this.isDead;
  }
  set dead(v: boolean) {
    this.isDead = v;
    this.refreshFast();
  }
  private isDead = false;
  readonly nh = new NotifierChain();
  /** SPID -> system IOASID, for uniqueness and ioasid_find_by_spid. */
  readonly spids = new Map<number, number>();
  /** The core that made the set (null for a handle made outside one: no fast path accepts it). */
  readonly core: object | null;
  /**
   * A number that names `core` (0: none), for the fast paths' "is this set one of mine": an
   * integer compare where comparing object references costs V8 a type check of the loaded
   * field first.
   */
  readonly coreUid: number;
  /**
   * The compact record (id-table.ts OWN_*) of an ID of this set in the common state, while the
   * fast paths may take it: set live, no set notifier to call. -1 otherwise.
   */
  fastTag = -1;
  /** The set's tag in compact records (slot + 1) while it is live; -1 otherwise. */
  ownTag = -1;

  constructor(
    id: number,
    token: unknown,
    type: number,
    quota: number,
    reserves: boolean,
    core: object | null = null,
    coreUid = 0,
  ) {
    this.id = id;
    this.token = token;
    this.type = type;
    this.quota = quota;
    this.reserves = reserves;
    this.core = core;
    this.coreUid = core === null ? 0 : coreUid;
    this.nh.onChange = () => this.refreshFast();
    this.refreshFast();
  }

  private refreshFast(): void {
    const tag = this.id + 1;
    const ok = this.core !== null && !this.isDead && tag <= OWN_SET_MASK;
    this.ownTag = ok ? tag : -1;
    this.fastTag = ok && this.nh.length === 0 ? tag | OWN_ACTIVE | OWN_SIMPLE : -1;
  }

  toString(): string {
    return `ioasid_set ${this.id}`;
  }
}

/** struct ioasid_allocator_ops. Two ops "use the same functions" when alloc and free are identical. */
export interface IoasidAllocatorOps {
  alloc(min: number, max: number, pdata: unknown): number;
  free(id: number, pdata: unknown): void;
  pdata: unknown;
}

/** struct ioasid_allocator_data: an allocator and the ops sharing its functions (slist). */
interface AllocatorData {
  /** First ops: its pdata is passed to every call (research C.1). null for the default allocator. */
  ops: IoasidAllocatorOps | null;
  slist: IoasidAllocatorOps[];
  table: IdTable;
}

/** Uids of the cores made so far (IoasidCore.uid). */
let coreUids = 0;

/** A pending or active registration of ioasid_register_notifier_mm (research D.4). */
interface MmNotifierEntry {
  nb: NotifierBlock;
  token: unknown;
  set: IoasidSet | null;
  active: boolean;
}

export interface IoasidCoreOptions {
  profile?: IoasidProfile;
  faults?: FaultInjector;
  tracer?: Tracer | null;
  debug?: boolean;
}

function isU32(x: number): boolean {
  return Number.isInteger(x) && x >= 0 && x <= 0xffffffff;
}

export class IoasidCore {
  readonly profile: IoasidProfile;
  readonly faults: FaultInjector;
  private tracerFn: Tracer | null = null;
  private debugOn = false;

  get tracer(): Tracer | null {
    return this.tracerFn;
  }
  set tracer(t: Tracer | null) {
    this.tracerFn = t;
    this.refreshFast();
  }
  get debug(): boolean {
    return this.debugOn;
  }
  set debug(on: boolean) {
    this.debugOn = on;
    this.refreshFast();
  }
  /** Names this core in its sets (IoasidSet.coreUid). */
  private readonly uid = ++coreUids;
  /**
   * The fast paths of alloc and find may run: v3, the default allocator, no invariant checks
   * and no tracer (fault injection is checked per call: the injector is armed from outside).
   * `fastFree` adds: no global notifier to call.
   */
  private fast = false;
  private fastFree = false;

  private readonly refcounted: boolean;
  private readonly v3: boolean;

  private capacity = PCI_PASID_MAX;
  private capacityAvail = PCI_PASID_MAX;

  private readonly setIds = new IdTable(false);
  private readonly sets: (IoasidSet | undefined)[] = [];

  private readonly defaultAllocator: AllocatorData = { ops: null, slist: [], table: new IdTable(true) };
  private readonly allocators: AllocatorData[] = [];
  private active: AllocatorData;
  /** `active.table`, one load closer for the hot paths. */
  private table: IdTable;
  /** Tracking tables by allocator functions, so IDs orphaned at a switch are found again if those functions return (P10). */
  private readonly tablesByFns = new Map<
    IoasidAllocatorOps['alloc'],
    Map<IoasidAllocatorOps['free'], IdTable>
  >();

  private readonly globalChain = new NotifierChain();
  private readonly mmEntries: MmNotifierEntry[] = [];

  /** IDs held by an in-flight FREE delivery (P9): a callback cannot drop them to zero under the caller. */
  /** Pins per table: the same number may be a different record in another allocator's table (P10). */
  private readonly pinned = new Map<IdTable, Map<number, number>>();
  private depth = 0;

  constructor(opts: IoasidCoreOptions = {}) {
    this.profile = opts.profile ?? 'v3';
    this.faults = opts.faults ?? new FaultInjector();
    this.tracerFn = opts.tracer ?? null;
    this.debugOn = opts.debug ?? debugEnabled();
    this.refcounted = this.profile === 'v3' || this.profile === 'm511';
    this.v3 = this.profile === 'v3';
    this.active = this.defaultAllocator;
    this.table = this.defaultAllocator.table;
    this.globalChain.onChange = () => this.refreshFast();
    this.refreshFast();
  }

  private refreshFast(): void {
    this.fast = this.v3 && !this.debugOn && this.tracerFn === null && this.active === this.defaultAllocator;
    this.fastFree = this.fast && this.globalChain.length === 0;
  }

  /** Switch the active allocator (and the table every ID operation looks in). */
  private activate(a: AllocatorData): void {
    this.active = a;
    this.table = a.table;
    this.refreshFast();
  }

  // ---------------------------------------------------------------- helpers

  private warn(msg: string, fields: Record<string, unknown> = {}): void {
    if (this.tracer !== null) this.tracer({ kind: 'ioasid', what: 'warn', msg, ...fields });
  }

  private enter(): void {
    this.depth++;
  }

  private leave(): void {
    if (--this.depth === 0 && this.debug) this.maybeCheck();
  }

  private opsSinceCheck = 0;

  /**
   * The full check is O(live IDs), so it runs after every operation while the state is small
   * (the tests' usual case) and after every 1024th once it is large, so that a debug-mode fill of
   * the whole PASID space stays linear.
   */
  private maybeCheck(): void {
    if (this.liveCount <= 4096 || ++this.opsSinceCheck >= 1024) {
      this.opsSinceCheck = 0;
      this.checkInvariants();
    }
  }

  /** A set handle that the API accepts: allocated, not destroyed. */
  isValidSet(set: IoasidSet | null | undefined): set is IoasidSet {
    return set != null && this.sets[set.id] === set && !set.dead;
  }

  /**
   * `set` owns a record whose set field is `setId`: the same object, not just the same slot
   * number (a stale or foreign handle may carry a slot number that a live set now uses).
   */
  private owns(set: IoasidSet, setId: number): boolean {
    return setId === set.id && this.sets[setId] === set;
  }

  private setOfRecord(setId: number): IoasidSet | undefined {
    return setId === NO_SET ? undefined : this.sets[setId];
  }

  private notify(
    event: IoasidNotifyVal,
    flags: number,
    set: IoasidSet | undefined,
    id: number,
    ch: Chunk,
    off: number,
    spid: number = ch.getSpid(off),
  ): void {
    const toGlobal = (flags & IOASID_NOTIFY_FLAG_ALL) !== 0 && this.globalChain.length !== 0;
    const toSet = (flags & IOASID_NOTIFY_FLAG_SET) !== 0 && set !== undefined && set.nh.length !== 0;
    if (!toGlobal && !toSet && this.tracer === null) return;
    const args = { id, spid, set: set ?? null, pdata: ch.getPriv(off) };
    if (this.tracer !== null) {
      this.tracer({
        kind: 'notify',
        what: IOASID_NOTIFY_NAMES[event],
        id,
        spid: args.spid,
        chains: [toGlobal ? 'global' : null, toSet ? 'set' : null].filter((c) => c !== null),
      });
    }
    // Global first, then the set's chain (P8; research D.3). Both listener lists are taken at
    // emission (research G.4 lesson 4): a global callback that destroys the set or unregisters
    // a set listener does not take this event away from the set chain.
    const setEntries = toSet ? set.nh.snapshot() : null;
    if (toGlobal) this.globalChain.call(event, args);
    if (setEntries !== null) NotifierChain.callEntries(setEntries, event, { ...args });
  }

  private tableFor(ops: IoasidAllocatorOps): IdTable {
    let byFree = this.tablesByFns.get(ops.alloc);
    if (byFree === undefined) {
      byFree = new Map();
      this.tablesByFns.set(ops.alloc, byFree);
    }
    let t = byFree.get(ops.free);
    if (t === undefined) {
      t = new IdTable(true);
      byFree.set(ops.free, t);
    }
    return t;
  }

  private allTables(): IdTable[] {
    const out = [this.defaultAllocator.table];
    for (const m of this.tablesByFns.values()) for (const t of m.values()) out.push(t);
    return out;
  }

  /** The registered allocator (if any) whose tracking table is `table`. */
  private allocatorOfTable(table: IdTable): AllocatorData | undefined {
    if (table === this.defaultAllocator.table) return this.defaultAllocator;
    return this.allocators.find((a) => a.table === table);
  }

  /** ioasid_do_free_locked: return the ID to its allocator and drop it from its set. */
  private reclaim(table: IdTable, ch: Chunk, id: number): void {
    const off = id & ID_TABLE_CHUNK_MASK;
    const setId = ch.getSet(off);
    const spid = ch.getSpid(off);
    const alloc = this.allocatorOfTable(table);
    if (alloc?.ops != null) alloc.ops.free(id, alloc.ops.pdata);
    else if (alloc === undefined) this.warn('orphaned IOASID reclaimed while its allocator is gone', { id });
    table.remove(ch, id);
    const set = this.setOfRecord(setId);
    if (set !== undefined) {
      if (spid !== INVALID_IOASID && set.spids.get(spid) === id) set.spids.delete(spid);
      set.nrIoasids--;
      if (set.dead && set.nrIoasids === 0) this.releaseSetSlot(set);
    }
  }

  private releaseSetSlot(set: IoasidSet): void {
    this.sets[set.id] = undefined;
    const ch = this.setIds.chunkOf(set.id);
    if (ch !== undefined) this.setIds.remove(ch, set.id);
  }

  /** ioasid_free_locked after its checks: FREE_PENDING, FREE notification, drop the allocation reference. */
  private freeLocked(table: IdTable, ch: Chunk, id: number, set: IoasidSet | undefined): void {
    const off = id & ID_TABLE_CHUNK_MASK;
    ch.setState(off, IOASID_STATE_FREE_PENDING);
    if (this.v3 && (this.globalChain.length !== 0 || (set !== undefined && set.nh.length !== 0))) {
      // Pin the record across the callbacks (P9): one of them may drop the last reference.
      ch.addUsers(off, 1);
      let pins = this.pinned.get(table);
      if (pins === undefined) this.pinned.set(table, (pins = new Map()));
      pins.set(id, (pins.get(id) ?? 0) + 1);
      try {
        this.notify(IOASID_NOTIFY_FREE, IOASID_NOTIFY_FLAG_ALL | IOASID_NOTIFY_FLAG_SET, set, id, ch, off);
      } finally {
        const n = pins.get(id)! - 1;
        if (n !== 0) pins.set(id, n);
        else if (pins.delete(id) && pins.size === 0) this.pinned.delete(table);
        ch.addUsers(off, -1);
      }
      // A callback that dropped the allocation reference has done the free's put for it.
      if (ch.getUsers(off) === 0) {
        this.reclaim(table, ch, id);
        return;
      }
    } else if (this.v3 && this.tracer !== null) {
      this.notify(IOASID_NOTIFY_FREE, IOASID_NOTIFY_FLAG_ALL | IOASID_NOTIFY_FLAG_SET, set, id, ch, off);
    }
    if (ch.addUsers(off, -1) === 0) this.reclaim(table, ch, id);
  }

  // ---------------------------------------------------------------- capacity (A.4.1)

  ioasidInstallCapacity(total: number): void {
    this.enter();
    try {
      if (!isU32(total)) {
        this.warn('ioasid_install_capacity: total is not a u32', { total });
        return;
      }
      if (this.capacity !== 0 && this.capacity !== PCI_PASID_MAX) {
        this.warn('ioasid_install_capacity: capacity already set', { capacity: this.capacity });
        return;
      }
      // Quota already reserved by sets stays reserved (the raw v3 code forgets it; see README decisions).
      const reserved = this.capacity - this.capacityAvail;
      if (total < reserved) {
        this.warn('ioasid_install_capacity: below the quota sets already reserve', { total, reserved });
        return;
      }
      this.capacity = total;
      this.capacityAvail = total - reserved;
    } finally {
      this.leave();
    }
  }

  ioasidGetCapacity(): number {
    return this.capacity;
  }

  /** Capacity not reserved by any set's quota. */
  get capacityAvailable(): number {
    return this.capacityAvail;
  }

  // ---------------------------------------------------------------- sets (A.4.2)

  ioasidSetAlloc(token: unknown, quota: number, type: number): IoasidSet | KernelError {
    this.enter();
    try {
      if (!Number.isInteger(type) || type >= IOASID_SET_TYPE_NR)
        return kerr('EINVAL', `ioasid_set_alloc: type ${type} is not an ioasid_set_type`);
      if (!isU32(quota)) return kerr('EINVAL', `ioasid_set_alloc: quota ${quota} is not a u32`);
      if (quota === 0) return kerr('EINVAL', 'ioasid_set_alloc: quota 0 (P6: a set needs a quota)');
      if (quota > this.capacityAvail)
        return kerr(
          'ENOSPC',
          `ioasid_set_alloc: quota ${quota} exceeds the ${this.capacityAvail} IOASIDs of capacity left`,
        );
      if (type === IOASID_SET_TYPE_MM) {
        if (token == null) return kerr('EINVAL', 'ioasid_set_alloc: an MM-type set needs a token');
        if (this.findMmSet(token) !== undefined)
          return kerr('EEXIST', `ioasid_set_alloc: an MM-type set with token ${String(token)} exists`);
      } else if (type === IOASID_SET_TYPE_NULL) {
        if (token != null) return kerr('EINVAL', 'ioasid_set_alloc: a NULL-type set takes no token');
      } else {
        return kerr('EINVAL', `ioasid_set_alloc: type ${type} is not an ioasid_set_type`);
      }
      const set = this.newSet(token, type, quota, true);
      if (!(set instanceof IoasidSet)) return set;
      if (type === IOASID_SET_TYPE_MM) this.addPendingNotifiers(set);
      return set;
    } finally {
      this.leave();
    }
  }

  /** kzalloc the set, take a set ID (independent of quota, P7), reserve the quota. */
  private newSet(token: unknown, type: number, quota: number, reserves: boolean): IoasidSet | KernelError {
    if (this.faults.armed && this.faults.shouldFail('ioasid_set')) {
      return kerr('ENOMEM', 'ioasid_set_alloc: out of memory for the set');
    }
    if (this.faults.armed && this.faults.shouldFail('ioasid_sets_xa')) {
      return kerr('ENOSPC', 'ioasid_set_alloc: no set ID left in ioasid_sets');
    }
    const id = this.setIds.lowestFree(0, MAX_SET_ID);
    if (id < 0) return kerr('ENOSPC', 'ioasid_set_alloc: no set ID left in ioasid_sets');
    this.setIds.insert(id);
    const set = new IoasidSet(id, token, type, quota, reserves, this, this.uid);
    this.sets[id] = set;
    if (reserves) this.capacityAvail -= quota;
    return set;
  }

  /** An internal set for a PASID consumer or a merged-profile token: no capacity reserved. */
  allocInternalSet(type: number, quota: number): IoasidSet | KernelError {
    this.enter();
    try {
      return this.newSet(null, type, quota, false);
    } finally {
      this.leave();
    }
  }

  private findMmSet(token: unknown): IoasidSet | undefined {
    for (const s of this.sets) {
      if (s !== undefined && !s.dead && s.type === IOASID_SET_TYPE_MM && s.token === token) return s;
    }
    return undefined;
  }

  ioasidSetGet(set: IoasidSet): void {
    if (!this.isValidSet(set)) {
      this.warn('ioasid_set_get: invalid set');
      return;
    }
    set.ref++;
  }

  ioasidSetPut(set: IoasidSet): void {
    this.enter();
    try {
      if (!this.isValidSet(set)) {
        this.warn('ioasid_set_put: invalid set');
        return;
      }
      if (--set.ref === 0) this.destroySet(set);
    } finally {
      this.leave();
    }
  }

  /** The last set reference is gone: free every member, return the quota, park its mm notifiers. */
  private destroySet(set: IoasidSet): void {
    set.dead = true;
    if (set.reserves) this.capacityAvail += set.quota;
    for (const e of this.mmEntries) {
      if (e.set === set) {
        e.set = null;
        e.active = false;
      }
    }
    // Every member, ascending by ID across all tables (orphans included, P10).
    const members: [number, IdTable][] = [];
    for (const table of this.allTables()) {
      table.forEach((id, ch, off) => {
        if (ch.getSet(off) === set.id) members.push([id, table]);
      });
    }
    members.sort((a, b) => a[0] - b[0]);
    for (const [id, table] of members) {
      const ch = table.chunkOf(id);
      if (ch === undefined) continue; // reclaimed by a callback meanwhile
      const off = id & ID_TABLE_CHUNK_MASK;
      if (ch.getSet(off) !== set.id || ch.getState(off) === IOASID_STATE_FREE_PENDING) continue;
      if (table !== this.active.table) this.warn('set destroyed with an orphaned IOASID', { id });
      this.freeLocked(table, ch, id, set);
    }
    set.nh.clear();
    if (set.nrIoasids === 0) this.releaseSetSlot(set);
  }

  ioasidAdjustSet(set: IoasidSet, quota: number): 0 | KernelError {
    this.enter();
    try {
      if (!this.isValidSet(set)) return kerr('EINVAL', 'ioasid_adjust_set: invalid set');
      if (!Number.isInteger(quota) || quota <= 0)
        return kerr('EINVAL', `ioasid_adjust_set: quota ${quota} must be positive`);
      if (set.nrIoasids > quota)
        return kerr('EINVAL', `ioasid_adjust_set: ${set} holds ${set.nrIoasids} IOASIDs, more than ${quota}`);
      if (set.reserves && quota > set.quota && quota - set.quota > this.capacityAvail)
        return kerr(
          'ENOSPC',
          `ioasid_adjust_set: raising ${set} by ${quota - set.quota} exceeds the ${this.capacityAvail} left`,
        );
      if (set.reserves) this.capacityAvail += set.quota - quota;
      set.quota = quota;
      return 0;
    } finally {
      this.leave();
    }
  }

  /** IDs of a set in ascending order (FREE_PENDING ones included), in every allocator's table. */
  setMembers(set: IoasidSet): number[] {
    return this.setMemberRecords(set).map((r) => r.id);
  }

  /** As setMembers, with each record's private data (read from the record's own table, orphans too). */
  setMemberRecords(set: IoasidSet): { id: number; priv: unknown }[] {
    const out: { id: number; priv: unknown }[] = [];
    for (const table of this.allTables()) {
      table.forEach((id, ch, off) => {
        if (ch.getSet(off) === set.id) out.push({ id, priv: ch.getPriv(off) });
      });
    }
    return out.sort((a, b) => a.id - b.id);
  }

  ioasidSetForEachIoasid(set: IoasidSet, fn: (id: number) => void): void {
    this.enter();
    try {
      if (!this.isValidSet(set)) {
        this.warn('ioasid_set_for_each_ioasid: invalid set');
        return;
      }
      for (const id of this.setMembers(set)) fn(id);
    } finally {
      this.leave();
    }
  }

  // ---------------------------------------------------------------- IDs (A.4.3)

  /** Lowest free ID in [min, max] from the active allocator, or INVALID_IOASID on any failure (P1). */
  ioasidAlloc(set: IoasidSet | null, min: number, max: number, priv: unknown = null): number {
    // The common case in a few loads and stores: a live set of this core with room and no
    // listeners, the default allocator, nothing watching (debug, trace, fault injection). Anything
    // else, and any failure, takes the full path below, which is the reference the fast path
    // must equal (fastpath.test.ts).
    if (
      this.fast &&
      set !== null &&
      set.fastTag > 0 &&
      set.coreUid === this.uid &&
      set.nrIoasids < set.quota &&
      // Non-negative int32 bounds, min <= max: int32 compares only, and max < INVALID_IOASID.
      (min | 0) === min &&
      (max | 0) === max &&
      min >= 0 &&
      min <= max &&
      !this.faults.armed
    ) {
      const id = this.table.allocOwned(min, max, set.fastTag, priv);
      if (id >= 0) {
        set.nrIoasids++;
        return id;
      }
    }
    return this.allocFull(set, min, max, priv);
  }

  private allocFull(set: IoasidSet | null, min: number, max: number, priv: unknown): number {
    this.depth++;
    try {
      let setId = NO_SET;
      if (set !== null) {
        if (this.sets[set.id] !== set || set.dead) {
          this.warn('ioasid_alloc: invalid set');
          return INVALID_IOASID;
        }
        if (set.nrIoasids >= set.quota) {
          this.warn('ioasid_alloc: IOASID set out of quota', { set: set.id, quota: set.quota });
          return INVALID_IOASID;
        }
        setId = set.id;
      } else if (this.v3) {
        this.warn('ioasid_alloc: invalid set');
        return INVALID_IOASID;
      }
      if (!isU32(min) || !isU32(max)) return INVALID_IOASID;
      // An ID equal to INVALID_IOASID could not be told from failure.
      if (max === INVALID_IOASID) max = INVALID_IOASID - 1;
      if (min > max) return INVALID_IOASID;
      if (this.faults.armed && this.faults.shouldFail('ioasid_data')) return INVALID_IOASID;
      const a = this.active;
      const table = a.table;
      let id: number;
      if (a.ops === null) {
        if (this.faults.armed && this.faults.shouldFail('ioasid_xa_alloc')) return INVALID_IOASID;
        id = table.lowestFree(min, max);
        if (id < 0) return INVALID_IOASID;
      } else {
        id = a.ops.alloc(min, max, a.ops.pdata);
        if (id === INVALID_IOASID) return INVALID_IOASID;
        if (!isU32(id)) {
          this.warn('ioasid_alloc: custom allocator returned a non-u32', { id });
          return INVALID_IOASID;
        }
        // Record exactly that ID; if it is taken (or the record store fails), hand it back.
        if (table.has(id) || (this.faults.armed && this.faults.shouldFail('ioasid_xa_alloc'))) {
          this.warn('ioasid_alloc: custom allocator gave an ID in use', { id });
          a.ops.free(id, a.ops.pdata);
          return INVALID_IOASID;
        }
      }
      const ch = table.insert(id);
      const off = id & ID_TABLE_CHUNK_MASK;
      ch.initRecord(off, setId, IOASID_STATE_ACTIVE, priv);
      if (set !== null) {
        set.nrIoasids++;
        if (this.v3) this.notify(IOASID_NOTIFY_ALLOC, IOASID_NOTIFY_FLAG_SET, set, id, ch, off);
      }
      return id;
    } finally {
      if (--this.depth === 0 && this.debug) this.maybeCheck();
    }
  }

  /** v3 ioasid_free(set, id): start the free (FREE_PENDING, FREE event), drop the allocation reference. */
  ioasidFree(set: IoasidSet | null, id: number): void {
    // Fast path: an ID of this set in the common state (ACTIVE, one user, no SPID), nobody
    // listening or watching. Freeing it reclaims it at once, as the full path would.
    if (
      this.fastFree &&
      set !== null &&
      set.fastTag > 0 &&
      set.coreUid === this.uid &&
      !this.faults.armed &&
      this.table.freeOwned(id, set.fastTag)
    ) {
      set.nrIoasids--;
      return;
    }
    this.freeFull(set, id);
  }

  private freeFull(set: IoasidSet | null, id: number): void {
    this.depth++;
    try {
      const table = this.active.table;
      const ch = isU32(id) ? table.chunkOf(id) : undefined;
      if (ch === undefined) {
        this.warn('ioasid_free: unknown IOASID', { id });
        return;
      }
      const off = id & ID_TABLE_CHUNK_MASK;
      // P3: ownership is the security property; NULL is no owner.
      if (set === null || !this.owns(set, ch.getSet(off))) {
        this.warn('ioasid_free: set does not own the IOASID', { id });
        return;
      }
      if (set.dead) {
        this.warn('ioasid_free: set already destroyed', { id });
        return;
      }
      if (ch.getState(off) === IOASID_STATE_FREE_PENDING) return; // level-triggered (P8)
      this.freeLocked(table, ch, id, set);
    } finally {
      if (--this.depth === 0 && this.debug) this.maybeCheck();
    }
  }

  /** Merged-profile free (m55 `ioasid_free(id)`, g66-era no-refcount free): reclaim at once. */
  releaseNow(id: number): void {
    this.enter();
    try {
      const table = this.active.table;
      const ch = isU32(id) ? table.chunkOf(id) : undefined;
      if (ch === undefined) {
        this.warn('ioasid_free: unknown IOASID', { id });
        return;
      }
      this.reclaim(table, ch, id);
    } finally {
      this.leave();
    }
  }

  ioasidGet(set: IoasidSet | null, id: number): 0 | KernelError {
    this.enter();
    try {
      const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
      if (ch === undefined) return kerr('EINVAL', `ioasid_get: IOASID ${id} is not allocated`);
      const off = id & ID_TABLE_CHUNK_MASK;
      if (ch.getState(off) === IOASID_STATE_FREE_PENDING)
        return kerr('EBUSY', `ioasid_get: IOASID ${id} is being freed (P2: no new references)`);
      if (set !== null && !this.owns(set, ch.getSet(off)))
        return kerr('EACCES', `ioasid_get: IOASID ${id} does not belong to ${set}`);
      ch.addUsers(off, 1);
      return 0;
    } finally {
      this.leave();
    }
  }

  /** m511 `ioasid_get(id)`: take a reference, no checks but existence. */
  getRefUnchecked(id: number): void {
    this.enter();
    try {
      const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
      if (ch === undefined) {
        this.warn('ioasid_get: unknown IOASID', { id });
        return;
      }
      ch.addUsers(id & ID_TABLE_CHUNK_MASK, 1);
    } finally {
      this.leave();
    }
  }

  /** Drop a reference; true iff that reclaimed the ID. */
  ioasidPut(set: IoasidSet | null, id: number): boolean {
    this.enter();
    try {
      const table = this.active.table;
      const ch = isU32(id) ? table.chunkOf(id) : undefined;
      if (ch === undefined) {
        this.warn('ioasid_put: unknown IOASID', { id });
        return false;
      }
      const off = id & ID_TABLE_CHUNK_MASK;
      if (set !== null && !this.owns(set, ch.getSet(off))) {
        this.warn('ioasid_put: set does not own the IOASID', { id });
        return false;
      }
      if (ch.getUsers(off) === 1 && this.pinned.get(table)?.has(id) === true) {
        // Only the in-flight FREE's own pin is left: a put more than the caller holds.
        this.warn('ioasid_put: refcount underflow', { id });
        return false;
      }
      if (ch.addUsers(off, -1) === 0) {
        this.reclaim(table, ch, id);
        return true;
      }
      return false;
    } finally {
      this.leave();
    }
  }

  /** Private data of an ID, or ENOENT (unknown or, in v3, being freed: P2) / EACCES (other set). */
  ioasidFind(set: IoasidSet | null, id: number, getter?: (priv: unknown) => boolean): unknown {
    // Kept small so that it inlines into the caller's loop: an ACTIVE ID of a live set of this
    // core is a bit test. Everything else is decided out of line.
    if (set !== null && set.coreUid === this.uid) {
      const priv = this.table.lookupActive(id, set.ownTag);
      if (priv !== undefined) return getter === undefined || getter(priv) ? priv : null;
    }
    return this.findFull(set, id, getter);
  }

  private findFull(set: IoasidSet | null, id: number, getter?: (priv: unknown) => boolean): unknown {
    const ch = isU32(id) ? this.table.chunkOf(id) : undefined;
    if (ch !== undefined) {
      const off = id & ID_TABLE_CHUNK_MASK;
      if (
        (ch.getState(off) !== IOASID_STATE_FREE_PENDING || !this.v3) &&
        (set === null || this.owns(set, ch.getSet(off)))
      ) {
        const priv = ch.getPriv(off);
        return getter === undefined || getter(priv) ? priv : null;
      }
    }
    return this.findError(set, id);
  }

  private findError(set: IoasidSet | null, id: number): KernelError {
    const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
    if (ch === undefined) return kerr('ENOENT', `ioasid_find: IOASID ${id} is not allocated`);
    if (ch.getState(id & ID_TABLE_CHUNK_MASK) === IOASID_STATE_FREE_PENDING)
      return kerr('ENOENT', `ioasid_find: IOASID ${id} is being freed (P2)`);
    return kerr('EACCES', `ioasid_find: IOASID ${id} does not belong to ${set}`);
  }

  /** v3 ioasid_attach_data: set private data if there is none. */
  ioasidAttachData(id: number, data: unknown): 0 | KernelError {
    this.enter();
    try {
      const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
      if (ch === undefined) return kerr('ENOENT', `ioasid_attach_data: IOASID ${id} is not allocated`);
      const off = id & ID_TABLE_CHUNK_MASK;
      if (ch.getPriv(off) != null)
        return kerr('EBUSY', `ioasid_attach_data: IOASID ${id} already has private data`);
      ch.setPriv(off, data);
      return 0;
    } finally {
      this.leave();
    }
  }

  /** Merged-profile ioasid_set_data: replace private data unconditionally. */
  ioasidSetData(id: number, data: unknown): 0 | KernelError {
    this.enter();
    try {
      const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
      if (ch === undefined) return kerr('ENOENT', `ioasid_set_data: IOASID ${id} is not allocated`);
      ch.setPriv(id & ID_TABLE_CHUNK_MASK, data);
      return 0;
    } finally {
      this.leave();
    }
  }

  ioasidDetachData(id: number): void {
    this.enter();
    try {
      const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
      if (ch === undefined) {
        this.warn('ioasid_detach_data: unknown IOASID', { id });
        return;
      }
      ch.setPriv(id & ID_TABLE_CHUNK_MASK, null);
    } finally {
      this.leave();
    }
  }

  ioasidAttachSpid(id: number, spid: number): 0 | KernelError {
    this.enter();
    try {
      if (!isU32(spid) || spid === INVALID_IOASID) return kerr('EINVAL', 'ioasid_attach_spid: invalid SPID');
      const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
      if (ch === undefined) return kerr('ENOENT', `ioasid_attach_spid: IOASID ${id} is not allocated`);
      const off = id & ID_TABLE_CHUNK_MASK;
      const set = this.setOfRecord(ch.getSet(off));
      if (set === undefined || set.dead) return kerr('ENOENT', `ioasid_attach_spid: IOASID ${id} has no set`);
      // Uniqueness check takes no reference (research 0.3 fix 4).
      if (set.spids.has(spid))
        return kerr('EINVAL', `ioasid_attach_spid: SPID ${spid} is already used in ${set}`);
      const old = ch.getSpid(off);
      if (old !== INVALID_IOASID) set.spids.delete(old);
      ch.setSpid(off, spid);
      set.spids.set(spid, id);
      this.notify(IOASID_NOTIFY_BIND, IOASID_NOTIFY_FLAG_SET, set, id, ch, off);
      return 0;
    } finally {
      this.leave();
    }
  }

  ioasidDetachSpid(id: number): void {
    this.enter();
    try {
      const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
      if (ch === undefined) {
        this.warn('ioasid_detach_spid: unknown IOASID', { id });
        return;
      }
      const off = id & ID_TABLE_CHUNK_MASK;
      const spid = ch.getSpid(off);
      if (spid === INVALID_IOASID) {
        this.warn('ioasid_detach_spid: IOASID has no SPID', { id });
        return;
      }
      const set = this.setOfRecord(ch.getSet(off));
      // Clear before notifying, so that a callback's own detach_spid is a no-op (one UNBIND per
      // transition, P8) rather than a recursion; P5: the payload still carries the detached SPID.
      ch.setSpid(off, INVALID_IOASID);
      if (set !== undefined && set.spids.get(spid) === id) set.spids.delete(spid);
      this.notify(IOASID_NOTIFY_UNBIND, IOASID_NOTIFY_FLAG_SET, set, id, ch, off, spid);
    } finally {
      this.leave();
    }
  }

  /** System IOASID bound to `spid` in `set`, with a new reference taken; INVALID_IOASID if none. */
  ioasidFindBySpid(set: IoasidSet, spid: number): number {
    this.enter();
    try {
      if (!this.isValidSet(set)) {
        this.warn('ioasid_find_by_spid: invalid set');
        return INVALID_IOASID;
      }
      const id = set.spids.get(spid);
      if (id === undefined) return INVALID_IOASID;
      const ch = this.active.table.chunkOf(id);
      const off = id & ID_TABLE_CHUNK_MASK;
      // Orphaned by an allocator switch: the active table may hold another record under that number.
      if (ch === undefined || ch.getSet(off) !== set.id || ch.getSpid(off) !== spid) return INVALID_IOASID;
      // P2: no new references once the free has started.
      if (ch.getState(off) === IOASID_STATE_FREE_PENDING) return INVALID_IOASID;
      ch.addUsers(off, 1);
      return id;
    } finally {
      this.leave();
    }
  }

  // ---------------------------------------------------------------- custom allocators (C.1, P10)

  ioasidRegisterAllocator(ops: IoasidAllocatorOps): 0 | KernelError {
    this.enter();
    try {
      if (this.faults.armed && this.faults.shouldFail('ioasid_allocator_data'))
        return kerr('ENOMEM', 'ioasid_register_allocator: out of memory for the allocator data');
      if (this.allocators.length === 0) {
        if (this.defaultAllocator.table.size !== 0)
          return kerr(
            'EAGAIN',
            `ioasid_register_allocator: the default allocator has ${this.defaultAllocator.table.size} IOASIDs outstanding`,
          );
        const a: AllocatorData = { ops, slist: [ops], table: this.tableFor(ops) };
        this.allocators.push(a);
        this.activate(a);
        this.trace('allocator', 'active', a);
        return 0;
      }
      for (const a of this.allocators) {
        if (a.ops === ops)
          return kerr('EEXIST', 'ioasid_register_allocator: these ops are already registered');
        if (a.ops !== null && a.ops.alloc === ops.alloc && a.ops.free === ops.free) {
          // Same functions: share the entry and its IOASID space (research C.1 rule 4).
          a.slist.push(ops);
          return 0;
        }
      }
      this.allocators.push({ ops, slist: [ops], table: this.tableFor(ops) });
      return 0;
    } finally {
      this.leave();
    }
  }

  ioasidUnregisterAllocator(ops: IoasidAllocatorOps): void {
    this.enter();
    try {
      if (this.allocators.length === 0) {
        this.warn('ioasid_unregister_allocator: no custom IOASID allocators active');
        return;
      }
      const idx = this.allocators.findIndex(
        (a) => a.ops !== null && a.ops.alloc === ops.alloc && a.ops.free === ops.free,
      );
      if (idx < 0) {
        this.warn('ioasid_unregister_allocator: ops not registered');
        return;
      }
      const a = this.allocators[idx]!;
      if (a.slist.length === 1) {
        this.allocators.splice(idx, 1);
        if (a.table.size !== 0) {
          // P10: reported, never silently freed.
          this.warn('ioasid_unregister_allocator: IOASIDs outstanding become orphans', {
            ids: a.table.ids(),
          });
        }
        if (this.allocators.length === 0) this.activate(this.defaultAllocator);
        else if (this.active === a) this.activate(this.allocators[0]!);
        this.trace('allocator', 'active', this.active);
        return;
      }
      const j = a.slist.indexOf(ops);
      if (j >= 0) a.slist.splice(j, 1);
    } finally {
      this.leave();
    }
  }

  private trace(kind: string, what: string, a: AllocatorData): void {
    if (this.tracer !== null)
      this.tracer({ kind: 'ioasid', what: `${kind} ${what}`, custom: a.ops !== null });
  }

  /** IDs tracked by allocators other than the active one (P10's orphans). */
  orphans(): number[] {
    const out: number[] = [];
    for (const t of this.allTables()) if (t !== this.active.table) out.push(...t.ids());
    return out.sort((a, b) => a - b);
  }

  // ---------------------------------------------------------------- notifiers (A.4.4, D)

  ioasidRegisterNotifier(set: IoasidSet | null, nb: NotifierBlock): 0 | KernelError {
    this.enter();
    try {
      let chain = this.globalChain;
      if (set !== null) {
        if (!this.isValidSet(set)) return kerr('EINVAL', 'ioasid_register_notifier: invalid set');
        chain = set.nh;
      }
      // The chain code of that era warns on a double registration and leaves the chain as it is.
      if (!chain.register(nb)) this.warn('ioasid_register_notifier: double register detected');
      return 0;
    } finally {
      this.leave();
    }
  }

  ioasidUnregisterNotifier(set: IoasidSet | null, nb: NotifierBlock): void {
    this.enter();
    try {
      if (this.mmEntries.some((e) => e.nb === nb)) {
        this.warn('ioasid_unregister_notifier: cannot unregister NB from pending list');
        return;
      }
      let chain = this.globalChain;
      if (set !== null) {
        if (!this.isValidSet(set)) {
          this.warn('ioasid_unregister_notifier: invalid set');
          return;
        }
        chain = set.nh;
      }
      if (!chain.unregister(nb)) this.warn('ioasid_unregister_notifier: not registered');
    } finally {
      this.leave();
    }
  }

  ioasidRegisterNotifierMm(mm: unknown, nb: NotifierBlock): 0 | KernelError {
    this.enter();
    try {
      if (mm == null) return kerr('EINVAL', 'ioasid_register_notifier_mm: no mm');
      if (this.mmEntries.some((e) => e.token === mm && e.nb === nb))
        return kerr('EBUSY', 'ioasid_register_notifier_mm: already registered for this mm');
      if (this.faults.armed && this.faults.shouldFail('ioasid_nb_entry'))
        return kerr('ENOMEM', 'ioasid_register_notifier_mm: out of memory for the pending entry');
      const set = this.findMmSet(mm);
      if (set !== undefined) {
        if (set.nrIoasids !== 0)
          return kerr(
            'EBUSY',
            `ioasid_register_notifier_mm: ${set} is not empty (register on empty sets only)`,
          );
        set.nh.register(nb);
        this.mmEntries.unshift({ nb, token: mm, set, active: true });
      } else {
        this.mmEntries.unshift({ nb, token: mm, set: null, active: false });
      }
      return 0;
    } finally {
      this.leave();
    }
  }

  ioasidUnregisterNotifierMm(mm: unknown, nb: NotifierBlock): void {
    this.enter();
    try {
      const i = this.mmEntries.findIndex((e) => e.token === mm && e.nb === nb);
      if (i < 0) {
        this.warn('ioasid_unregister_notifier_mm: not registered');
        return;
      }
      const e = this.mmEntries[i]!;
      if (e.active && e.set !== null) e.set.nh.unregister(nb);
      this.mmEntries.splice(i, 1);
    } finally {
      this.leave();
    }
  }

  /** A new MM-type set picks up the notifiers waiting for its token (research D.4). */
  private addPendingNotifiers(set: IoasidSet): void {
    for (const e of this.mmEntries) {
      if (!e.active && e.token === set.token) {
        set.nh.register(e.nb);
        e.set = set;
        e.active = true;
      }
    }
  }

  // ---------------------------------------------------------------- introspection

  /** Sets the API still accepts, by set ID. */
  liveSets(): IoasidSet[] {
    return this.sets.filter((s): s is IoasidSet => s !== undefined && !s.dead);
  }

  /** A snapshot of one ID's record in the active allocator, or undefined. */
  inspect(
    id: number,
  ): { users: number; state: number; set: IoasidSet | undefined; spid: number; priv: unknown } | undefined {
    const ch = isU32(id) ? this.active.table.chunkOf(id) : undefined;
    if (ch === undefined) return undefined;
    const off = id & ID_TABLE_CHUNK_MASK;
    return {
      users: ch.getUsers(off),
      state: ch.getState(off),
      set: this.setOfRecord(ch.getSet(off)),
      spid: ch.getSpid(off),
      priv: ch.getPriv(off),
    };
  }

  /** Number of IDs the active allocator holds. */
  get liveCount(): number {
    return this.active.table.size;
  }

  get customAllocatorActive(): boolean {
    return this.active.ops !== null;
  }

  // ---------------------------------------------------------------- invariants

  /**
   * The model's invariants (debug mode runs this after every outermost operation):
   * each table's bitmap is self-consistent; every record has users >= 1 and a known state;
   * each set's nr_ioasids equals the IDs recorded for it (orphans included, P10); SPIDs are
   * unique per set and the SPID index matches the records; destroyed sets linger only while
   * they still have members; capacity_avail + reserved quotas = capacity; every active mm
   * notifier entry sits on its live set's chain.
   */
  checkInvariants(): void {
    const fail = (rule: string): never => {
      throw new InvariantError(`ioasid: ${rule}`);
    };
    const perSet = new Map<number, number>();
    const spidSeen = new Map<number, Map<number, number>>();
    for (const table of this.allTables()) {
      const bad = table.check();
      if (bad !== undefined) fail(bad);
      table.forEach((id, ch, off) => {
        const users = ch.getUsers(off);
        const state = ch.getState(off);
        if (users < 1) fail(`IOASID ${id} is allocated with ${users} users`);
        if (state !== IOASID_STATE_ACTIVE && state !== IOASID_STATE_FREE_PENDING)
          fail(`IOASID ${id} in state ${state}`);
        if (this.pinned.size === 0 && this.depth === 0 && !this.refcounted && users !== 1)
          fail(`IOASID ${id} has ${users} users in a profile without refcounts`);
        const setId = ch.getSet(off);
        if (setId !== NO_SET) {
          const set = this.sets[setId];
          if (set === undefined) fail(`IOASID ${id} belongs to set slot ${setId}, which is empty`);
          perSet.set(setId, (perSet.get(setId) ?? 0) + 1);
          const spid = ch.getSpid(off);
          if (spid !== INVALID_IOASID) {
            let m = spidSeen.get(setId);
            if (m === undefined) spidSeen.set(setId, (m = new Map()));
            if (m.has(spid)) fail(`SPID ${spid} bound twice in set ${setId}`);
            m.set(spid, id);
          }
        } else if (ch.getSpid(off) !== INVALID_IOASID) {
          fail(`IOASID ${id} has an SPID but no set`);
        }
      });
    }
    let reserved = 0;
    const setSlots = this.setIds.ids();
    for (const sid of setSlots) if (this.sets[sid] === undefined) fail(`set ID ${sid} taken but no set`);
    for (let i = 0; i < this.sets.length; i++) {
      const set = this.sets[i];
      if (set === undefined) continue;
      if (set.id !== i) fail(`set slot ${i} holds set ${set.id}`);
      if (!this.setIds.has(i)) fail(`set ${i} lives but its ID is free`);
      const n = perSet.get(i) ?? 0;
      if (n !== set.nrIoasids) fail(`${set}: nr_ioasids ${set.nrIoasids} but ${n} IOASIDs recorded`);
      if (set.nrIoasids > set.quota && !set.dead)
        fail(`${set}: ${set.nrIoasids} IOASIDs above quota ${set.quota}`);
      if (set.dead) {
        if (set.nrIoasids === 0) fail(`${set}: destroyed and empty but its slot is still held`);
      } else {
        if (set.ref < 1) fail(`${set}: live with ref ${set.ref}`);
        if (set.reserves) reserved += set.quota;
      }
      const seen = spidSeen.get(i) ?? new Map<number, number>();
      if (!set.dead) {
        if (seen.size !== set.spids.size)
          fail(`${set}: SPID index has ${set.spids.size} entries, records ${seen.size}`);
        for (const [spid, id] of seen)
          if (set.spids.get(spid) !== id) fail(`${set}: SPID ${spid} index disagrees`);
      }
    }
    if (this.capacityAvail < 0) fail(`capacity_avail ${this.capacityAvail} is negative`);
    if (this.capacityAvail + reserved !== this.capacity)
      fail(`capacity_avail ${this.capacityAvail} + reserved ${reserved} != capacity ${this.capacity}`);
    for (const e of this.mmEntries) {
      if (e.active) {
        if (e.set === null || !this.isValidSet(e.set)) fail('an active mm notifier entry has no live set');
        else if (!e.set.nh.has(e.nb)) fail('an active mm notifier entry is not on its set chain');
      } else if (e.set !== null) fail('an inactive mm notifier entry still names a set');
    }
    if (this.allocators.length === 0 && this.active !== this.defaultAllocator)
      fail('no custom allocator registered but the default is not active');
    if (this.allocators.length !== 0 && !this.allocators.includes(this.active))
      fail('custom allocators registered but none of them is active');
  }
}
