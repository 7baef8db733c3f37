// Scenario family 1 (SCENARIO.md "Operation families" 1): the IOASID core of each profile, the
// paravirtual PASID API and the global PASID API. Each operation decodes its arguments, calls
// the library (src/ioasid/) and encodes the kernel's result: an ID, a boolean, {errno}, null for
// void, or a handle for something created or registered.

import { type KernelError, kerr } from '../core/errno.ts';
import { IOMMU_NO_PASID, IOMMU_PASID_INVALID } from '../ioasid/global-pasid.ts';
import { IdTable } from '../ioasid/id-table.ts';
import {
  INVALID_IOASID,
  IOASID_SET_TYPE_MM,
  IOASID_SET_TYPE_NULL,
  IOASID_SET_TYPE_TOKEN,
  type IoasidAllocatorOps,
  IoasidSet,
  PCI_PASID_MAX,
} from '../ioasid/ioasid.ts';
import {
  IOASID_NOTIFY_ALLOC,
  IOASID_NOTIFY_BIND,
  IOASID_NOTIFY_FREE,
  IOASID_NOTIFY_NAMES,
  IOASID_NOTIFY_UNBIND,
  IOASID_PRIO_CPU,
  IOASID_PRIO_DEVICE,
  IOASID_PRIO_IOMMU,
  IOASID_PRIO_LAST,
  type IoasidNbArgs,
  type IoasidNotifyVal,
  NOTIFY_BAD,
  NOTIFY_DONE,
  NOTIFY_OK,
  NOTIFY_STOP,
  NOTIFY_STOP_MASK,
  type NotifierBlock,
} from '../ioasid/notifier.ts';
import { PasidConsumer } from '../ioasid/pasid.ts';
import {
  type Handle,
  type OpDef,
  type OpResult,
  type ParamDef,
  type Profile,
  registerConstants,
  registerOps,
  type StepContext,
} from './registry.ts';
import type { ScenarioContext } from './runner.ts';
import { StepError, toBigInt } from './values.ts';

registerConstants({
  INVALID_IOASID,
  PCI_PASID_MAX,
  IOASID_SET_TYPE_NULL,
  IOASID_SET_TYPE_MM,
  IOASID_SET_TYPE_NR: 3,
  IOASID_PRIO_LAST,
  IOASID_PRIO_DEVICE,
  IOASID_PRIO_IOMMU,
  IOASID_PRIO_CPU,
  IOASID_NOTIFY_ALLOC,
  IOASID_NOTIFY_FREE,
  IOASID_NOTIFY_BIND,
  IOASID_NOTIFY_UNBIND,
  NOTIFY_DONE,
  NOTIFY_OK,
  NOTIFY_STOP_MASK,
  NOTIFY_BAD,
  NOTIFY_STOP,
  IOMMU_NO_PASID,
  IOMMU_FIRST_GLOBAL_PASID: 1,
  IOMMU_PASID_INVALID,
});

const u32: ParamDef = { kind: { type: 'u32' } };
const optU32: ParamDef = { kind: { type: 'u32' }, optional: true };
const any: ParamDef = { kind: { type: 'any' }, optional: true, default: null, nullable: true };
const setParam: ParamDef = { kind: { type: 'handle', kind: 'set' } };
const setOrNull: ParamDef = { kind: { type: 'handle', kind: 'set', nullable: true }, nullable: true };
const optSetOrNull: ParamDef = { ...setOrNull, optional: true, default: null };
const consumer: ParamDef = { kind: { type: 'handle', kind: 'consumer' } };
const nbParam: ParamDef = { kind: { type: 'handle', kind: 'nb' } };

const V3: readonly Profile[] = ['v3'];
const MERGED: readonly Profile[] = ['m55', 'm511'];
const WITH_CORE: readonly Profile[] = ['v3', 'm55', 'm511'];

function sctx(ctx: StepContext): ScenarioContext {
  return ctx as ScenarioContext;
}

/** The handle that names a library object in results (a set in an event payload, ...). */
function handleOf(ctx: StepContext, v: unknown): Handle | null {
  return sctx(ctx).handles.get(v) ?? null;
}

function errOr0(r: 0 | KernelError): OpResult {
  return r;
}

// ------------------------------------------------------------------ notifier recorders

interface RecordedEvent {
  event: string;
  id: number;
  spid: number;
  set: Handle | null;
  pdata: unknown;
}

interface RecorderState {
  log: { nb: Handle; ev: RecordedEvent }[];
}

/** A notifier block that records what it receives and may act on it ("on" in SCENARIO.md). */
class Recorder implements NotifierBlock {
  priority: number;
  readonly events: RecordedEvent[] = [];
  on: Record<string, unknown> = {};
  ret = NOTIFY_OK;
  handle!: Handle;
  private readonly ctx: ScenarioContext;

  constructor(ctx: ScenarioContext, priority: number) {
    this.ctx = ctx;
    this.priority = priority;
  }

  notifierCall(event: IoasidNotifyVal, args: IoasidNbArgs): number {
    const name = IOASID_NOTIFY_NAMES[event];
    const ev: RecordedEvent = {
      event: name,
      id: args.id,
      spid: args.spid,
      set: args.set === null ? null : handleOf(this.ctx, args.set),
      pdata: args.pdata,
    };
    this.events.push(ev);
    this.ctx.stateOf<RecorderState>('recorders', () => ({ log: [] })).log.push({ nb: this.handle, ev });
    const action = this.on[name];
    if (action !== undefined) {
      try {
        const r = this.ctx.runNested(action, { event: ev });
        this.ctx.trace('notify', 'action', { nb: this.handle.toString(), event: name, result: r });
      } catch (e) {
        this.ctx.trace('notify', 'action-failed', {
          nb: this.handle.toString(),
          event: name,
          error: String(e),
        });
      }
    }
    return this.ret;
  }
}

function recorderFor(ctx: StepContext, args: Record<string, unknown>): Recorder {
  const existing = args['nb'] as Recorder | undefined;
  const prio = args['priority'] as number | undefined;
  let rec: Recorder;
  if (existing !== undefined) {
    rec = existing;
    if (prio !== undefined) rec.priority = prio;
  } else {
    rec = new Recorder(sctx(ctx), prio ?? IOASID_PRIO_LAST);
  }
  const on = args['on'] as Record<string, unknown> | undefined;
  if (on !== undefined) {
    const { return: ret, ...actions } = on;
    rec.on = actions;
    if (ret !== undefined) {
      const b = toBigInt(ret);
      if (b === undefined) throw new StepError(`"on".return: ${String(ret)} is not an integer`);
      rec.ret = Number(b);
    }
  }
  return rec;
}

/** A new recorder gets a handle; an existing one keeps its own. */
function recorderResult(ctx: StepContext, rec: Recorder, r: 0 | KernelError): OpResult {
  if (r !== 0) return r;
  if (rec.handle === undefined) rec.handle = ctx.handle('nb', rec);
  return rec.handle;
}

const recorderParams: Record<string, ParamDef> = {
  priority: { kind: { type: 'int' }, optional: true },
  nb: { ...nbParam, optional: true },
  on: { kind: { type: 'on' }, optional: true },
};

// ------------------------------------------------------------------ custom allocators

interface AllocatorFns {
  alloc: IoasidAllocatorOps['alloc'];
  free: IoasidAllocatorOps['free'];
  /** The IDs this allocator has handed out (the vIOMMU's, or host's, view). */
  table: IdTable;
}

interface AllocatorState {
  ops: Map<string, IoasidAllocatorOps & { pdata: { name: string; range: [number, number] } }>;
  fns: Map<string, AllocatorFns>;
}

function makeFns(): AllocatorFns {
  const table = new IdTable(false);
  return {
    table,
    // Lowest free ID in the intersection of the ops' range (pdata) and the caller's [min, max].
    alloc(min, max, pdata) {
      const [lo, hi] = (pdata as { range: [number, number] }).range;
      const a = Math.max(min, lo);
      const b = Math.min(max, hi);
      if (a > b) return INVALID_IOASID;
      const id = table.lowestFree(a, b);
      if (id < 0) return INVALID_IOASID;
      table.insert(id);
      return id;
    },
    free(id) {
      const ch = table.chunkOf(id);
      if (ch !== undefined) table.remove(ch, id);
    },
  };
}

function opsFor(ctx: StepContext, raw: unknown): IoasidAllocatorOps {
  const st = sctx(ctx).stateOf<AllocatorState>('allocators', () => ({ ops: new Map(), fns: new Map() }));
  const spec = raw as { name: string; range?: unknown[]; fns?: string };
  let range: [number, number] | undefined;
  if (spec.range !== undefined) {
    const lo = toBigInt(spec.range[0]);
    const hi = toBigInt(spec.range[1]);
    if (lo === undefined || hi === undefined) throw new StepError('ops.range: two integers');
    range = [Number(lo), Number(hi)];
  }
  const old = st.ops.get(spec.name);
  if (old !== undefined) {
    if (range !== undefined && (range[0] !== old.pdata.range[0] || range[1] !== old.pdata.range[1]))
      throw new StepError(`ops ${spec.name} was declared with range [${old.pdata.range.join(', ')}]`);
    return old;
  }
  const fnsKey = spec.fns ?? `ops:${spec.name}`;
  let fns = st.fns.get(fnsKey);
  if (fns === undefined) {
    fns = makeFns();
    st.fns.set(fnsKey, fns);
  }
  const ops = { alloc: fns.alloc, free: fns.free, pdata: { name: spec.name, range: range ?? [1, 0xfffff] } };
  st.ops.set(spec.name, ops);
  return ops;
}

function checkOps(args: Record<string, unknown>): string | undefined {
  const o = args['ops'];
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return 'ops: a mapping {name, range, fns}';
  for (const k of Object.keys(o)) if (!['name', 'range', 'fns'].includes(k)) return `ops: unknown key ${k}`;
  const r = o as Record<string, unknown>;
  if (typeof r['name'] !== 'string') return 'ops.name: a string naming the ops';
  if (r['fns'] !== undefined && typeof r['fns'] !== 'string')
    return 'ops.fns: a string naming shared functions';
  if (r['range'] !== undefined) {
    const range = r['range'];
    if (!Array.isArray(range) || range.length !== 2) return 'ops.range: [min, max]';
    const lo = toBigInt(range[0]);
    const hi = toBigInt(range[1]);
    if (lo === undefined || hi === undefined || lo < 0n || hi > 0xffffffffn || lo > hi)
      return 'ops.range: two u32 integers, min <= max';
  }
  return undefined;
}

// ------------------------------------------------------------------ the operations

function setAlloc(ctx: StepContext, args: Record<string, unknown>): OpResult {
  const core = ctx.machine.ioasid;
  const r =
    ctx.profile === 'v3'
      ? core.ioasidSetAlloc(args['token'] ?? null, args['quota'] as number, args['type'] as number)
      : core.allocInternalSet(IOASID_SET_TYPE_TOKEN, 0xffffffff);
  return r instanceof IoasidSet ? ctx.handle('set', r) : r;
}

const ops: OpDef[] = [
  {
    name: 'ioasid_install_capacity',
    family: 1,
    profiles: V3,
    params: { total: u32 },
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidInstallCapacity(a['total'] as number);
      return null;
    },
  },
  {
    name: 'ioasid_get_capacity',
    family: 1,
    profiles: V3,
    params: {},
    run: (ctx) => ctx.machine.ioasid.ioasidGetCapacity(),
  },
  {
    name: 'ioasid_set_alloc',
    family: 1,
    params: {},
    paramsFor: {
      v3: {
        token: { kind: { type: 'any' }, nullable: true },
        quota: u32,
        type: { kind: { type: 'int' } },
      },
    },
    run: setAlloc,
  },
  {
    name: 'ioasid_set_get',
    family: 1,
    profiles: V3,
    params: { set: setParam },
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidSetGet(a['set'] as IoasidSet);
      return null;
    },
  },
  {
    name: 'ioasid_set_put',
    family: 1,
    profiles: V3,
    params: { set: setParam },
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidSetPut(a['set'] as IoasidSet);
      return null;
    },
  },
  {
    name: 'ioasid_adjust_set',
    family: 1,
    profiles: V3,
    params: { set: setParam, quota: { kind: { type: 'int' } } },
    run: (ctx, a) => errOr0(ctx.machine.ioasid.ioasidAdjustSet(a['set'] as IoasidSet, a['quota'] as number)),
  },
  {
    name: 'ioasid_set_for_each_ioasid',
    family: 1,
    profiles: V3,
    params: { set: setParam },
    run: (ctx, a) => {
      const out: number[] = [];
      ctx.machine.ioasid.ioasidSetForEachIoasid(a['set'] as IoasidSet, (id) => {
        out.push(id);
      });
      return out;
    },
  },
  {
    name: 'ioasid_alloc',
    family: 1,
    profiles: WITH_CORE,
    params: { set: setOrNull, min: u32, max: u32, private: any },
    run: (ctx, a) =>
      ctx.machine.ioasid.ioasidAlloc(
        a['set'] as IoasidSet | null,
        a['min'] as number,
        a['max'] as number,
        a['private'] ?? null,
      ),
  },
  {
    name: 'ioasid_free',
    family: 1,
    profiles: ['v3', 'm55'],
    params: { set: setOrNull, ioasid: u32 },
    paramsFor: { m55: { ioasid: u32 } },
    run: (ctx, a) => {
      if (ctx.profile === 'v3')
        ctx.machine.ioasid.ioasidFree(a['set'] as IoasidSet | null, a['ioasid'] as number);
      else ctx.machine.ioasid.releaseNow(a['ioasid'] as number);
      return null;
    },
  },
  {
    name: 'ioasid_get',
    family: 1,
    profiles: ['v3', 'm511'],
    params: { set: setOrNull, ioasid: u32 },
    paramsFor: { m511: { ioasid: u32 } },
    run: (ctx, a) => {
      if (ctx.profile === 'v3')
        return errOr0(ctx.machine.ioasid.ioasidGet(a['set'] as IoasidSet | null, a['ioasid'] as number));
      ctx.machine.ioasid.getRefUnchecked(a['ioasid'] as number);
      return null;
    },
  },
  {
    name: 'ioasid_put',
    family: 1,
    profiles: ['v3', 'm511'],
    params: { set: setOrNull, ioasid: u32 },
    paramsFor: { m511: { ioasid: u32 } },
    run: (ctx, a) =>
      ctx.machine.ioasid.ioasidPut(
        ctx.profile === 'v3' ? (a['set'] as IoasidSet | null) : null,
        a['ioasid'] as number,
      ),
  },
  {
    name: 'ioasid_find',
    family: 1,
    profiles: WITH_CORE,
    params: { set: setOrNull, ioasid: u32 },
    run: (ctx, a) =>
      ctx.machine.ioasid.ioasidFind(a['set'] as IoasidSet | null, a['ioasid'] as number) as OpResult,
  },
  {
    name: 'ioasid_set_data',
    family: 1,
    profiles: MERGED,
    params: { ioasid: u32, data: any },
    run: (ctx, a) => errOr0(ctx.machine.ioasid.ioasidSetData(a['ioasid'] as number, a['data'] ?? null)),
  },
  {
    name: 'ioasid_attach_data',
    family: 1,
    profiles: V3,
    params: { ioasid: u32, data: any },
    run: (ctx, a) => errOr0(ctx.machine.ioasid.ioasidAttachData(a['ioasid'] as number, a['data'] ?? null)),
  },
  {
    name: 'ioasid_detach_data',
    family: 1,
    profiles: V3,
    params: { ioasid: u32 },
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidDetachData(a['ioasid'] as number);
      return null;
    },
  },
  {
    name: 'ioasid_attach_spid',
    family: 1,
    profiles: V3,
    params: { ioasid: u32, spid: u32 },
    run: (ctx, a) => errOr0(ctx.machine.ioasid.ioasidAttachSpid(a['ioasid'] as number, a['spid'] as number)),
  },
  {
    name: 'ioasid_detach_spid',
    family: 1,
    profiles: V3,
    params: { ioasid: u32 },
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidDetachSpid(a['ioasid'] as number);
      return null;
    },
  },
  {
    name: 'ioasid_find_by_spid',
    family: 1,
    profiles: V3,
    params: { set: setParam, spid: u32 },
    run: (ctx, a) => ctx.machine.ioasid.ioasidFindBySpid(a['set'] as IoasidSet, a['spid'] as number),
  },
  {
    name: 'ioasid_register_allocator',
    family: 1,
    profiles: WITH_CORE,
    params: { ops: { kind: { type: 'raw' } } },
    check: checkOps,
    run: (ctx, a) => {
      const o = opsFor(ctx, a['ops']);
      const r = ctx.machine.ioasid.ioasidRegisterAllocator(o);
      return r === 0 ? ctx.handle('allocator', o) : r;
    },
  },
  {
    name: 'ioasid_unregister_allocator',
    family: 1,
    profiles: WITH_CORE,
    params: { ops: { kind: { type: 'raw' } } },
    check: checkOps,
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidUnregisterAllocator(opsFor(ctx, a['ops']));
      return null;
    },
  },
  {
    name: 'ioasid_register_notifier',
    family: 1,
    profiles: V3,
    params: { set: optSetOrNull, ...recorderParams },
    run: (ctx, a) => {
      const rec = recorderFor(ctx, a);
      return recorderResult(
        ctx,
        rec,
        ctx.machine.ioasid.ioasidRegisterNotifier(a['set'] as IoasidSet | null, rec),
      );
    },
  },
  {
    name: 'ioasid_unregister_notifier',
    family: 1,
    profiles: V3,
    params: { set: optSetOrNull, nb: nbParam },
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidUnregisterNotifier(a['set'] as IoasidSet | null, a['nb'] as Recorder);
      return null;
    },
  },
  {
    name: 'ioasid_register_notifier_mm',
    family: 1,
    profiles: V3,
    params: { mm: { kind: { type: 'any' }, nullable: true }, ...recorderParams },
    run: (ctx, a) => {
      const rec = recorderFor(ctx, a);
      return recorderResult(ctx, rec, ctx.machine.ioasid.ioasidRegisterNotifierMm(a['mm'] ?? null, rec));
    },
  },
  {
    name: 'ioasid_unregister_notifier_mm',
    family: 1,
    profiles: V3,
    params: { mm: { kind: { type: 'any' }, nullable: true }, nb: nbParam },
    run: (ctx, a) => {
      ctx.machine.ioasid.ioasidUnregisterNotifierMm(a['mm'] ?? null, a['nb'] as Recorder);
      return null;
    },
  },
  {
    name: 'events',
    family: 1,
    profiles: V3,
    params: { nb: { ...nbParam, optional: true } },
    run: (ctx, a) => {
      const st = sctx(ctx).stateOf<RecorderState>('recorders', () => ({ log: [] }));
      const nb = a['nb'] as Recorder | undefined;
      if (nb !== undefined) {
        const evs = nb.events.splice(0, nb.events.length);
        st.log = st.log.filter((e) => e.nb !== nb.handle);
        return evs.map((e) => ({ ...e }) as unknown as OpResult);
      }
      const all = st.log.map((e) => ({ nb: e.nb, ...e.ev }) as unknown as OpResult);
      st.log = [];
      for (const h of sctx(ctx).handles.values())
        if (h.kind === 'nb') (h.value as Recorder).events.length = 0;
      return all;
    },
  },
  // ---------------------------------------------------------------- paravirtual PASID API
  {
    name: 'iommu_pasid_init',
    family: 1,
    params: { min: optU32, max: optU32 },
    check: (a) =>
      (a['min'] === undefined) !== (a['max'] === undefined) ? 'give both min and max, or neither' : undefined,
    run: (ctx, a) => {
      const r = ctx.machine.pasid.iommuPasidInit(
        a['min'] === undefined ? undefined : { min: a['min'] as number, max: a['max'] as number },
      );
      return r instanceof PasidConsumer ? ctx.handle('consumer', r) : r;
    },
  },
  {
    name: 'iommu_pasid_exit',
    family: 1,
    params: { pasid: consumer },
    run: (ctx, a) => {
      ctx.machine.pasid.iommuPasidExit(a['pasid'] as PasidConsumer);
      return null;
    },
  },
  {
    name: 'iommu_pasid_alloc',
    family: 1,
    params: { pasid: consumer, min: u32, max: u32, private: any },
    run: (ctx, a) =>
      ctx.machine.pasid.iommuPasidAlloc(
        a['pasid'] as PasidConsumer,
        a['min'] as number,
        a['max'] as number,
        a['private'] ?? null,
      ),
  },
  {
    name: 'iommu_pasid_free',
    family: 1,
    params: { pasid: consumer, ioasid: u32 },
    run: (ctx, a) => {
      ctx.machine.pasid.iommuPasidFree(a['pasid'] as PasidConsumer, a['ioasid'] as number);
      return null;
    },
  },
  {
    name: 'iommu_pasid_for_each',
    family: 1,
    params: { pasid: consumer },
    run: (ctx, a) => {
      const ids: number[] = [];
      const r = ctx.machine.pasid.iommuPasidForEach(a['pasid'] as PasidConsumer, (id) => {
        ids.push(id);
        return 0;
      });
      return typeof r === 'number' ? ids : r;
    },
  },
  {
    name: 'iommu_pasid_find',
    family: 1,
    params: { pasid: consumer, ioasid: u32 },
    run: (ctx, a) =>
      ctx.machine.pasid.iommuPasidFind(a['pasid'] as PasidConsumer, a['ioasid'] as number) as OpResult,
  },
  // ---------------------------------------------------------------- global PASID API (g66)
  {
    name: 'iommu_alloc_global_pasid',
    family: 1,
    params: { dev: { kind: { type: 'bdf' } } },
    run: (ctx, a) => {
      const dev = ctx.machine.device(a['dev'] as string);
      if (dev === undefined) return kerr('ENODEV', `no device ${String(a['dev'])}`);
      return ctx.machine.globalPasid.iommuAllocGlobalPasid(dev);
    },
  },
  {
    name: 'iommu_free_global_pasid',
    family: 1,
    params: { pasid: u32 },
    run: (ctx, a) => {
      ctx.machine.globalPasid.iommuFreeGlobalPasid(a['pasid'] as number);
      return null;
    },
  },
];

registerOps(ops);
