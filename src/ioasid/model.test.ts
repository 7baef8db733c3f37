// Model-based test of the v3 IOASID core: random sequences of operations run against the real
// IoasidCore (debug mode: invariants checked after every operation) and against a small
// reference model written here with plain Maps and arrays, straight from PROFILE.md P1-P10,
// research/ioasid-core.md A.4, B, C.1, D and the project's recorded decisions. Every return
// value, the notification sequence each recorder received, and a summary of the state
// (capacity left, live IDs, orphans, each set's counters) must agree after every step.
//
// IDs, SPIDs, quotas and the capacity (8) are kept small so that collisions, exhausted
// ranges, quota limits and slot reuse happen often.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { KernelError } from '../core/errno.ts';
import { Machine } from '../machine.ts';
import {
  INVALID_IOASID,
  IOASID_SET_TYPE_MM,
  IOASID_SET_TYPE_NULL,
  type IoasidAllocatorOps,
  type IoasidCore,
  IoasidSet,
} from './ioasid.ts';
import {
  IOASID_NOTIFY_NAMES,
  type IoasidNbArgs,
  type IoasidNotifyVal,
  NOTIFY_OK,
  NOTIFY_STOP,
  NOTIFY_STOP_MASK,
  type NotifierBlock,
} from './notifier.ts';

const CAPACITY = 8;
const ALLOC = 1;
const FREE = 2;
const BIND = 3;
const UNBIND = 4;

// ------------------------------------------------------------------------------ operations

type SetRef = number; // index into the handles created so far (mod their number); -1 = NULL
type Op =
  | { k: 'setAlloc'; token: string | null; quota: number; type: number }
  | { k: 'setPut' | 'setGet' | 'forEach'; s: SetRef }
  | { k: 'adjust'; s: SetRef; quota: number }
  | { k: 'alloc'; s: SetRef; min: number; max: number; priv: string | null }
  | { k: 'free' | 'get' | 'put' | 'find'; s: SetRef; id: number }
  | { k: 'attachData'; id: number; data: string | null }
  | { k: 'detachData' | 'detachSpid'; id: number }
  | { k: 'attachSpid'; id: number; spid: number }
  | { k: 'findBySpid'; s: SetRef; spid: number }
  | { k: 'reg' | 'unreg'; s: SetRef; nb: number }
  | { k: 'regMm' | 'unregMm'; token: string | null; nb: number }
  | { k: 'regAlloc' | 'unregAlloc'; ops: number };

const setRef = fc.oneof(
  { weight: 1, arbitrary: fc.constant(-1) },
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 7 }) },
);
const anId = fc.oneof(
  { weight: 12, arbitrary: fc.integer({ min: 0, max: 14 }) },
  { weight: 1, arbitrary: fc.constantFrom(-1, 1.5, INVALID_IOASID) },
);
const aSpid = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 4 }) },
  { weight: 1, arbitrary: fc.constantFrom(INVALID_IOASID, -2) },
);
const token = fc.constantFrom(null, 'mmA', 'mmB');
const nb = fc.integer({ min: 0, max: 3 });
const priv = fc.constantFrom(null, 'p', 'q');

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant('setAlloc' as const),
      token,
      quota: fc.constantFrom(0, 1, 2, 3, 4, 9),
      type: fc.constantFrom(IOASID_SET_TYPE_NULL, IOASID_SET_TYPE_NULL, IOASID_SET_TYPE_MM, 0, 3),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ k: fc.constantFrom('setPut' as const, 'setGet' as const), s: setRef }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('forEach' as const), s: setRef }) },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant('adjust' as const),
      s: setRef,
      quota: fc.integer({ min: -1, max: 6 }),
    }),
  },
  {
    weight: 8,
    arbitrary: fc
      .record({
        s: setRef,
        min: fc.integer({ min: 0, max: 12 }),
        span: fc.integer({ min: -1, max: 6 }),
        priv,
      })
      .map(({ s, min, span, priv }): Op => ({ k: 'alloc', s, min, max: min + span, priv })),
  },
  {
    weight: 8,
    arbitrary: fc.record({
      k: fc.constantFrom('free' as const, 'get' as const, 'put' as const, 'find' as const),
      s: setRef,
      id: anId,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant('attachData' as const),
      id: anId,
      data: fc.constantFrom(null, 'd1', 'd2'),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ k: fc.constantFrom('detachData' as const, 'detachSpid' as const), id: anId }),
  },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('attachSpid' as const), id: anId, spid: aSpid }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('findBySpid' as const), s: setRef, spid: aSpid }) },
  {
    weight: 3,
    arbitrary: fc.record({ k: fc.constantFrom('reg' as const, 'unreg' as const), s: setRef, nb }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ k: fc.constantFrom('regMm' as const, 'unregMm' as const), token, nb }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constantFrom('regAlloc' as const, 'unregAlloc' as const),
      ops: fc.integer({ min: 0, max: 3 }),
    }),
  },
);

// ------------------------------------------------------------------------------ fixtures shared by both sides

/** Notifier blocks: priority and return value. nb 2 stops its chain. */
const NBS: { prio: number; ret: number }[] = [
  { prio: 3, ret: NOTIFY_OK },
  { prio: 1, ret: NOTIFY_OK },
  { prio: 1, ret: NOTIFY_STOP },
  { prio: 0, ret: NOTIFY_OK },
];

/** Custom allocator ops: name and function pair. Ops 0 and 1 share the functions of pair A. */
const OPS: { fns: 'A' | 'B' | 'C' }[] = [{ fns: 'A' }, { fns: 'A' }, { fns: 'B' }, { fns: 'C' }];

/**
 * The allocator function pairs, over a backing store each: A gives the lowest free ID in
 * [2, 9], B in [0, 12] (within the caller's [min, max]); C always answers `min` and its free
 * does nothing (a careless vIOMMU, to reach the "ID already tracked" path).
 */
function customAlloc(fns: 'A' | 'B' | 'C', used: Set<number>, min: number, max: number): number {
  if (fns === 'C') return min;
  const [lo, hi] = fns === 'A' ? [2, 9] : [0, 12];
  for (let i = Math.max(min, lo); i <= Math.min(max, hi); i++) {
    if (!used.has(i)) {
      used.add(i);
      return i;
    }
  }
  return INVALID_IOASID;
}

function isU32(x: number): boolean {
  return Number.isInteger(x) && x >= 0 && x <= 0xffffffff;
}

function evString(nbi: number, event: number, id: number, spid: number, set: number, pdata: unknown): string {
  return `nb${nbi}:${IOASID_NOTIFY_NAMES[event as IoasidNotifyVal]}:${id}:${spid}:s${set}:${String(pdata)}`;
}

// ------------------------------------------------------------------------------ the reference model

interface MEntry {
  nb: number;
  prio: number;
}
interface MSet {
  idx: number;
  slot: number;
  type: number;
  token: string | null;
  quota: number;
  nr: number;
  ref: number;
  dead: boolean;
  chain: MEntry[];
}
interface MRec {
  users: number;
  pending: boolean;
  set: MSet;
  spid: number;
  priv: unknown;
}
interface MAllocator {
  key: string;
  first: number;
  slist: number[];
}

class Model {
  avail = CAPACITY;
  readonly sets: MSet[] = [];
  readonly slots: (MSet | undefined)[] = [];
  /** Tracking table per allocator key ('default', or a function pair), in creation order. */
  readonly tables = new Map<string, Map<number, MRec>>([['default', new Map()]]);
  readonly allocators: MAllocator[] = [];
  active = 'default';
  readonly backing = new Map<string, Set<number>>([
    ['A', new Set()],
    ['B', new Set()],
    ['C', new Set()],
  ]);
  global: MEntry[] = [];
  mm: { nb: number; token: string; set: MSet | null; active: boolean }[] = [];
  readonly log: string[] = [];

  valid(s: MSet | null): s is MSet {
    return s !== null && !s.dead;
  }

  activeTable(): Map<number, MRec> {
    return this.tables.get(this.active)!;
  }

  // -- notifier chains: higher priority first, equal in registration order; stop mask stops
  chainAdd(chain: MEntry[], nbi: number): MEntry[] {
    if (chain.some((e) => e.nb === nbi)) return chain;
    const prio = NBS[nbi]!.prio;
    let i = 0;
    while (i < chain.length && chain[i]!.prio >= prio) i++;
    return [...chain.slice(0, i), { nb: nbi, prio }, ...chain.slice(i)];
  }
  chainRemove(chain: MEntry[], nbi: number): MEntry[] {
    return chain.filter((e) => e.nb !== nbi);
  }
  deliver(chain: MEntry[], event: number, id: number, rec: MRec, spid: number): void {
    for (const e of chain) {
      this.log.push(evString(e.nb, event, id, spid, rec.set.idx, rec.priv));
      if ((NBS[e.nb]!.ret & NOTIFY_STOP_MASK) !== 0) break;
    }
  }
  notify(event: number, id: number, rec: MRec, spid = rec.spid): void {
    if (event === FREE) this.deliver(this.global, event, id, rec, spid);
    this.deliver(rec.set.chain, event, id, rec, spid);
  }

  // -- IDs
  reclaim(key: string, id: number): void {
    const table = this.tables.get(key)!;
    const rec = table.get(id)!;
    if (key !== 'default' && this.allocators.some((a) => a.key === key)) this.backing.get(key)!.delete(id);
    table.delete(id);
    rec.set.nr--;
    if (rec.set.dead && rec.set.nr === 0) this.slots[rec.set.slot] = undefined;
  }
  freeLocked(key: string, id: number, rec: MRec): void {
    rec.pending = true;
    this.notify(FREE, id, rec);
    if (--rec.users === 0) this.reclaim(key, id);
  }

  alloc(s: MSet | null, min: number, max: number, priv: unknown): number {
    if (!this.valid(s)) return INVALID_IOASID;
    if (s.nr >= s.quota) return INVALID_IOASID;
    if (!isU32(min) || !isU32(max)) return INVALID_IOASID;
    if (max === INVALID_IOASID) max = INVALID_IOASID - 1;
    if (min > max) return INVALID_IOASID;
    const table = this.activeTable();
    let id: number;
    if (this.active === 'default') {
      id = min;
      while (table.has(id)) id++;
      if (id > max) return INVALID_IOASID;
    } else {
      const fns = this.active as 'A' | 'B' | 'C';
      id = customAlloc(fns, this.backing.get(fns)!, min, max);
      if (id === INVALID_IOASID) return INVALID_IOASID;
      if (table.has(id)) {
        this.backing.get(fns)!.delete(id);
        return INVALID_IOASID;
      }
    }
    const rec: MRec = { users: 1, pending: false, set: s, spid: INVALID_IOASID, priv };
    table.set(id, rec);
    s.nr++;
    this.notify(ALLOC, id, rec);
    return id;
  }

  free(s: MSet | null, id: number): void {
    const rec = this.activeTable().get(id);
    if (rec === undefined || s === null || rec.set !== s || s.dead || rec.pending) return;
    this.freeLocked(this.active, id, rec);
  }

  get(s: MSet | null, id: number): string | number {
    const rec = this.activeTable().get(id);
    if (rec === undefined) return 'E:EINVAL';
    if (rec.pending) return 'E:EBUSY';
    if (s !== null && rec.set !== s) return 'E:EACCES';
    rec.users++;
    return 0;
  }

  put(s: MSet | null, id: number): boolean {
    const rec = this.activeTable().get(id);
    if (rec === undefined) return false;
    if (s !== null && rec.set !== s) return false;
    if (--rec.users === 0) {
      this.reclaim(this.active, id);
      return true;
    }
    return false;
  }

  find(s: MSet | null, id: number): unknown {
    const rec = this.activeTable().get(id);
    if (rec === undefined || rec.pending) return 'E:ENOENT';
    if (s !== null && rec.set !== s) return 'E:EACCES';
    return rec.priv;
  }

  attachData(id: number, data: unknown): string | number {
    const rec = this.activeTable().get(id);
    if (rec === undefined) return 'E:ENOENT';
    if (rec.priv != null) return 'E:EBUSY';
    rec.priv = data;
    return 0;
  }

  detachData(id: number): void {
    const rec = this.activeTable().get(id);
    if (rec !== undefined) rec.priv = null;
  }

  attachSpid(id: number, spid: number): string | number {
    if (!isU32(spid) || spid === INVALID_IOASID) return 'E:EINVAL';
    const rec = this.activeTable().get(id);
    if (rec === undefined || rec.set.dead) return 'E:ENOENT';
    for (const t of this.tables.values())
      for (const r of t.values()) if (r.set === rec.set && r.spid === spid) return 'E:EINVAL';
    rec.spid = spid;
    this.notify(BIND, id, rec);
    return 0;
  }

  detachSpid(id: number): void {
    const rec = this.activeTable().get(id);
    if (rec === undefined || rec.spid === INVALID_IOASID) return;
    const old = rec.spid;
    rec.spid = INVALID_IOASID;
    this.notify(UNBIND, id, rec, old);
  }

  findBySpid(s: MSet | null, spid: number): number {
    if (!this.valid(s) || spid === INVALID_IOASID) return INVALID_IOASID;
    for (const [id, rec] of this.activeTable()) {
      if (rec.set === s && rec.spid === spid) {
        if (rec.pending) return INVALID_IOASID;
        rec.users++;
        return id;
      }
    }
    return INVALID_IOASID;
  }

  // -- sets
  setAlloc(tok: string | null, quota: number, type: number): MSet | string {
    if (type >= 3) return 'E:EINVAL';
    if (quota === 0) return 'E:EINVAL';
    if (quota > this.avail) return 'E:ENOSPC';
    if (type === IOASID_SET_TYPE_MM) {
      if (tok === null) return 'E:EINVAL';
      if (this.sets.some((s) => !s.dead && s.type === IOASID_SET_TYPE_MM && s.token === tok))
        return 'E:EEXIST';
    } else if (type === IOASID_SET_TYPE_NULL) {
      if (tok !== null) return 'E:EINVAL';
    } else return 'E:EINVAL';
    let slot = 0;
    while (this.slots[slot] !== undefined) slot++;
    const s: MSet = {
      idx: this.sets.length,
      slot,
      type,
      token: tok,
      quota,
      nr: 0,
      ref: 1,
      dead: false,
      chain: [],
    };
    this.slots[slot] = s;
    this.sets.push(s);
    this.avail -= quota;
    if (type === IOASID_SET_TYPE_MM) {
      for (const e of this.mm) {
        if (!e.active && e.token === tok) {
          s.chain = this.chainAdd(s.chain, e.nb);
          e.set = s;
          e.active = true;
        }
      }
    }
    return s;
  }

  setGet(s: MSet | null): void {
    if (this.valid(s)) s.ref++;
  }

  setPut(s: MSet | null): void {
    if (!this.valid(s)) return;
    if (--s.ref > 0) return;
    s.dead = true;
    this.avail += s.quota;
    for (const e of this.mm) {
      if (e.set === s) {
        e.set = null;
        e.active = false;
      }
    }
    const members: [number, string][] = [];
    for (const [key, t] of this.tables) for (const [id, r] of t) if (r.set === s) members.push([id, key]);
    members.sort((a, b) => a[0] - b[0]);
    for (const [id, key] of members) {
      const rec = this.tables.get(key)!.get(id);
      if (rec !== undefined && rec.set === s && !rec.pending) this.freeLocked(key, id, rec);
    }
    s.chain = [];
    if (s.nr === 0) this.slots[s.slot] = undefined;
  }

  adjust(s: MSet | null, quota: number): string | number {
    if (!this.valid(s)) return 'E:EINVAL';
    if (!Number.isInteger(quota) || quota <= 0) return 'E:EINVAL';
    if (s.nr > quota) return 'E:EINVAL';
    if (quota > s.quota && quota - s.quota > this.avail) return 'E:ENOSPC';
    this.avail += s.quota - quota;
    s.quota = quota;
    return 0;
  }

  forEach(s: MSet | null): number[] {
    if (!this.valid(s)) return [];
    const out: number[] = [];
    for (const t of this.tables.values()) for (const [id, r] of t) if (r.set === s) out.push(id);
    return out.sort((a, b) => a - b);
  }

  // -- notifiers
  reg(s: MSet | null, nbi: number): string | number {
    if (s !== null && !this.valid(s)) return 'E:EINVAL';
    if (s === null) this.global = this.chainAdd(this.global, nbi);
    else s.chain = this.chainAdd(s.chain, nbi);
    return 0;
  }

  unreg(s: MSet | null, nbi: number): void {
    if (this.mm.some((e) => e.nb === nbi)) return;
    if (s !== null && !this.valid(s)) return;
    if (s === null) this.global = this.chainRemove(this.global, nbi);
    else s.chain = this.chainRemove(s.chain, nbi);
  }

  regMm(tok: string | null, nbi: number): string | number {
    if (tok === null) return 'E:EINVAL';
    if (this.mm.some((e) => e.token === tok && e.nb === nbi)) return 'E:EBUSY';
    const s = this.sets.find((x) => !x.dead && x.type === IOASID_SET_TYPE_MM && x.token === tok);
    if (s !== undefined) {
      if (s.nr !== 0) return 'E:EBUSY';
      s.chain = this.chainAdd(s.chain, nbi);
      this.mm.unshift({ nb: nbi, token: tok, set: s, active: true });
    } else {
      this.mm.unshift({ nb: nbi, token: tok, set: null, active: false });
    }
    return 0;
  }

  unregMm(tok: string | null, nbi: number): void {
    const i = this.mm.findIndex((e) => e.token === tok && e.nb === nbi);
    if (i < 0) return;
    const e = this.mm[i]!;
    if (e.active && e.set !== null) e.set.chain = this.chainRemove(e.set.chain, nbi);
    this.mm.splice(i, 1);
  }

  // -- custom allocators (research C.1; tables keyed by function pair, P10)
  regAlloc(opsi: number): string | number {
    const key = OPS[opsi]!.fns;
    if (this.allocators.length === 0) {
      if (this.tables.get('default')!.size !== 0) return 'E:EAGAIN';
      this.allocators.push({ key, first: opsi, slist: [opsi] });
      if (!this.tables.has(key)) this.tables.set(key, new Map());
      this.active = key;
      return 0;
    }
    for (const a of this.allocators) {
      if (a.first === opsi) return 'E:EEXIST';
      if (a.key === key) {
        a.slist.push(opsi);
        return 0;
      }
    }
    this.allocators.push({ key, first: opsi, slist: [opsi] });
    if (!this.tables.has(key)) this.tables.set(key, new Map());
    return 0;
  }

  unregAlloc(opsi: number): void {
    const key = OPS[opsi]!.fns;
    const i = this.allocators.findIndex((a) => a.key === key);
    if (i < 0) return;
    const a = this.allocators[i]!;
    if (a.slist.length === 1) {
      this.allocators.splice(i, 1);
      if (this.allocators.length === 0) this.active = 'default';
      else if (this.active === a.key) this.active = this.allocators[0]!.key;
      return;
    }
    const j = a.slist.indexOf(opsi);
    if (j >= 0) a.slist.splice(j, 1);
  }

  orphans(): number[] {
    const out: number[] = [];
    for (const [key, t] of this.tables) if (key !== this.active) out.push(...t.keys());
    return out.sort((a, b) => a - b);
  }
}

// ------------------------------------------------------------------------------ the real side

class Real {
  readonly m = new Machine({ debug: true });
  readonly c: IoasidCore = this.m.ioasid;
  readonly sets: IoasidSet[] = [];
  readonly idxOf = new Map<IoasidSet, number>();
  readonly log: string[] = [];
  readonly nbs: NotifierBlock[];
  readonly ops: IoasidAllocatorOps[];

  constructor() {
    this.c.ioasidInstallCapacity(CAPACITY);
    this.nbs = NBS.map(({ prio, ret }, i) => ({
      priority: prio,
      notifierCall: (event: IoasidNotifyVal, a: IoasidNbArgs): number => {
        const set = a.set === null ? -1 : (this.idxOf.get(a.set) ?? -2);
        this.log.push(evString(i, event, a.id, a.spid, set, a.pdata));
        return ret;
      },
    }));
    const used = { A: new Set<number>(), B: new Set<number>(), C: new Set<number>() };
    const fnsOf = new Map<string, Pick<IoasidAllocatorOps, 'alloc' | 'free'>>();
    for (const k of ['A', 'B', 'C'] as const) {
      fnsOf.set(k, {
        alloc: (min, max) => customAlloc(k, used[k], min, max),
        free: (id) => {
          used[k].delete(id);
        },
      });
    }
    this.ops = OPS.map(({ fns }, i) => ({ ...fnsOf.get(fns)!, pdata: `ops${i}` }));
  }
}

function norm(x: unknown): unknown {
  if (x instanceof KernelError) return `E:${x.code}`;
  if (x instanceof IoasidSet) return 'set';
  return x;
}

function step(op: Op, model: Model, real: Real): void {
  const ms = (r: SetRef): MSet | null =>
    r < 0 || model.sets.length === 0 ? null : model.sets[r % model.sets.length]!;
  const rs = (r: SetRef): IoasidSet | null =>
    r < 0 || real.sets.length === 0 ? null : real.sets[r % real.sets.length]!;
  const c = real.c;
  let want: unknown;
  let got: unknown;
  switch (op.k) {
    case 'setAlloc': {
      const m = model.setAlloc(op.token, op.quota, op.type);
      const r = c.ioasidSetAlloc(op.token, op.quota, op.type);
      want = typeof m === 'string' ? m : `slot${m.slot}`;
      got = r instanceof IoasidSet ? `slot${r.id}` : norm(r);
      if (r instanceof IoasidSet) {
        real.idxOf.set(r, real.sets.length);
        real.sets.push(r);
      }
      break;
    }
    case 'setPut':
      if (op.s < 0) return;
      model.setPut(ms(op.s));
      c.ioasidSetPut(rs(op.s) as IoasidSet);
      break;
    case 'setGet':
      if (op.s < 0) return;
      model.setGet(ms(op.s));
      c.ioasidSetGet(rs(op.s) as IoasidSet);
      break;
    case 'forEach': {
      if (op.s < 0) return;
      want = model.forEach(ms(op.s));
      const seen: number[] = [];
      c.ioasidSetForEachIoasid(rs(op.s) as IoasidSet, (id) => {
        seen.push(id);
      });
      got = seen;
      break;
    }
    case 'adjust':
      if (op.s < 0) return;
      want = model.adjust(ms(op.s), op.quota);
      got = norm(c.ioasidAdjustSet(rs(op.s) as IoasidSet, op.quota));
      break;
    case 'alloc':
      want = model.alloc(ms(op.s), op.min, op.max, op.priv);
      got = c.ioasidAlloc(rs(op.s), op.min, op.max, op.priv);
      break;
    case 'free':
      model.free(ms(op.s), op.id);
      c.ioasidFree(rs(op.s), op.id);
      break;
    case 'get':
      want = model.get(ms(op.s), op.id);
      got = norm(c.ioasidGet(rs(op.s), op.id));
      break;
    case 'put':
      want = model.put(ms(op.s), op.id);
      got = c.ioasidPut(rs(op.s), op.id);
      break;
    case 'find':
      want = model.find(ms(op.s), op.id);
      got = norm(c.ioasidFind(rs(op.s), op.id));
      break;
    case 'attachData':
      want = model.attachData(op.id, op.data);
      got = norm(c.ioasidAttachData(op.id, op.data));
      break;
    case 'detachData':
      model.detachData(op.id);
      c.ioasidDetachData(op.id);
      break;
    case 'attachSpid':
      want = model.attachSpid(op.id, op.spid);
      got = norm(c.ioasidAttachSpid(op.id, op.spid));
      break;
    case 'detachSpid':
      model.detachSpid(op.id);
      c.ioasidDetachSpid(op.id);
      break;
    case 'findBySpid':
      if (op.s < 0) return;
      want = model.findBySpid(ms(op.s), op.spid);
      got = c.ioasidFindBySpid(rs(op.s) as IoasidSet, op.spid);
      break;
    case 'reg':
      want = model.reg(ms(op.s), op.nb);
      got = norm(c.ioasidRegisterNotifier(rs(op.s), real.nbs[op.nb]!));
      break;
    case 'unreg':
      model.unreg(ms(op.s), op.nb);
      c.ioasidUnregisterNotifier(rs(op.s), real.nbs[op.nb]!);
      break;
    case 'regMm':
      want = model.regMm(op.token, op.nb);
      got = norm(c.ioasidRegisterNotifierMm(op.token, real.nbs[op.nb]!));
      break;
    case 'unregMm':
      model.unregMm(op.token, op.nb);
      c.ioasidUnregisterNotifierMm(op.token, real.nbs[op.nb]!);
      break;
    case 'regAlloc':
      want = model.regAlloc(op.ops);
      got = norm(c.ioasidRegisterAllocator(real.ops[op.ops]!));
      break;
    case 'unregAlloc':
      model.unregAlloc(op.ops);
      c.ioasidUnregisterAllocator(real.ops[op.ops]!);
      break;
  }
  const where = JSON.stringify(op);
  assert.deepEqual(got, want, `result of ${where}`);
  assert.deepEqual(real.log, model.log, `notifications after ${where}`);
  assert.deepEqual(
    {
      avail: c.capacityAvailable,
      live: c.liveCount,
      orphans: c.orphans(),
      sets: real.sets.map((s) => [s.nrIoasids, s.quota, s.ref, c.isValidSet(s)]),
    },
    {
      avail: model.avail,
      live: model.activeTable().size,
      orphans: model.orphans(),
      sets: model.sets.map((s) => [s.nr, s.quota, s.ref, !s.dead]),
    },
    `state after ${where}`,
  );
}

/** Every run starts with a NULL set and an MM set, so that most operations have a set to act on. */
const PROLOGUE: Op[] = [
  { k: 'setAlloc', token: null, quota: 3, type: IOASID_SET_TYPE_NULL },
  { k: 'setAlloc', token: 'mmA', quota: 2, type: IOASID_SET_TYPE_MM },
];

function run(ops: Op[]): void {
  const model = new Model();
  const real = new Real();
  for (const op of [...PROLOGUE, ...ops]) step(op, model, real);
  real.m.checkInvariants();
}

const sequences = (op: fc.Arbitrary<Op>) => fc.array(op, { minLength: 1, maxLength: 120, size: 'max' });

test('model: random operation sequences agree with the reference model', () => {
  fc.assert(
    fc.property(sequences(opArb), (ops) => {
      run(ops);
    }),
    { numRuns: 1000 },
  );
});

test('model: allocator-heavy sequences (switches, orphans, shared functions)', () => {
  const heavy = fc.oneof(
    { weight: 3, arbitrary: opArb },
    {
      weight: 2,
      arbitrary: fc.record({
        k: fc.constantFrom('regAlloc' as const, 'unregAlloc' as const),
        ops: fc.integer({ min: 0, max: 3 }),
      }),
    },
  );
  fc.assert(
    fc.property(sequences(heavy), (ops) => {
      run(ops);
    }),
    { numRuns: 500 },
  );
});

test('model: a hand-written sequence through every operation', () => {
  const ops: Op[] = [
    { k: 'regMm', token: 'mmA', nb: 1 },
    { k: 'setAlloc', token: 'mmA', quota: 3, type: IOASID_SET_TYPE_MM },
    { k: 'setAlloc', token: null, quota: 3, type: IOASID_SET_TYPE_NULL },
    { k: 'reg', s: -1, nb: 0 },
    { k: 'reg', s: 1, nb: 2 },
    { k: 'reg', s: 1, nb: 3 },
    { k: 'alloc', s: 0, min: 1, max: 5, priv: 'p' },
    { k: 'alloc', s: 1, min: 1, max: 5, priv: null },
    { k: 'attachSpid', id: 1, spid: 0 },
    { k: 'findBySpid', s: 0, spid: 0 },
    { k: 'free', s: 0, id: 1 },
    { k: 'put', s: 0, id: 1 },
    { k: 'regAlloc', ops: 0 },
    { k: 'free', s: 1, id: 2 },
    { k: 'regAlloc', ops: 0 },
    { k: 'regAlloc', ops: 1 },
    { k: 'regAlloc', ops: 2 },
    { k: 'alloc', s: 1, min: 0, max: 9, priv: 'q' },
    { k: 'unregAlloc', ops: 0 },
    { k: 'unregAlloc', ops: 1 },
    { k: 'alloc', s: 1, min: 0, max: 9, priv: null },
    { k: 'forEach', s: 1 },
    { k: 'setPut', s: 1 },
    { k: 'regAlloc', ops: 3 },
    { k: 'alloc', s: 0, min: 4, max: 9, priv: null },
    { k: 'alloc', s: 0, min: 4, max: 9, priv: null },
    { k: 'adjust', s: 0, quota: 1 },
    { k: 'setPut', s: 0 },
  ];
  run(ops);
});
