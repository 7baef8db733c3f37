// Scenario family 4 (SCENARIO.md "Operation families" 4, with WIRE.md's semantics): a scenario
// file is one user process on the machine's iommufd host (src/iommufd/process.ts), which drives
// /dev/iommu and the VFIO device files /dev/vfio/devices/vfioN byte-exactly, as a C program
// would. The operations are the process's system calls, in the kernel's spelling: `open`,
// `close`, `ioctl`, `mmap`, `munmap`, `read`, `write`, `memfd_create`, `ftruncate`, plus `poke`
// and `peek` for the process's own memory. `ioctl` builds the uAPI struct from a mapping of its
// fields by their uAPI names (src/iommufd/uapi/), places inline pointer data in process memory,
// calls the one ioctl entry point (src/iommufd/engine.ts) and decodes what the kernel left.
//
// Spellings (decisions where SCENARIO.md is silent are marked *):
// - `open: {path}` → a file descriptor handle `fd#N`, N being the descriptor number (*), or
//   `{errno}`. Every `fd:` argument takes such a handle or a plain integer. `close: {fd}` → 0.
// - `mmap: {length, prot, flags, fd, offset, addr}` → the VA as an integer. Defaults (*):
//   `prot: PROT_READ|PROT_WRITE`; `flags: MAP_PRIVATE|MAP_ANONYMOUS`, or `MAP_SHARED` with
//   an `fd`; `offset: 0`; `addr` is only used with MAP_FIXED. `munmap: {va, length}` → 0.
// - `poke: {va, bytes}` → 0 (*); `peek: {va, length}` → hex. Both fault as the process would.
// - `read: {fd, count}` → hex; `write: {fd, bytes}` → the count written;
//   `memfd_create: {name, flags}` → fd handle (MFD_HUGETLB honoured); `ftruncate: {fd, length}` → 0.
// - `ioctl: {fd, cmd, arg}`: `cmd` is a request name of the uAPI tables (IOMMU_*, VFIO_*,
//   IOMMU_TEST_CMD) or a number. The argument is given one of three ways:
//     `arg: {...}`  the struct by field name: nested structs and IOMMU_TEST_CMD's union members
//                   as nested mappings, fixed arrays as lists; fields left out are zero except
//                   `size`/`argsz` (sizeof by default). A `size` above sizeof zero-extends the
//                   argument to that many bytes (up to 64 KiB; beyond, the kernel reads past the
//                   argument and faults) (*). Result `{ret, arg}`.
//     `bytes: hex`  the argument's raw bytes (a struct with non-zero bytes past sizeof, for
//                   example) (*). Result `{ret, arg, bytes}`: arg decoded when the request has a
//                   struct, bytes as the kernel left them.
//     `value: N`    the raw argument value, WIRE.md's IOCTL_VALUE (*): an integer for
//                   VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU, 0 for NULL, or an address in the
//                   process (`$buf`), read and written back there. Result `{ret}`, plus `arg`
//                   decoded from that memory when the request has a struct and it is readable.
//   Without any of them a struct request gets `arg: {}` and a value request `value: 0`.
//   Failure gives `{errno: NAME}`; what the kernel wrote back on failure (IOVA_RANGES'
//   EMSGSIZE num_iovas, HWPT_INVALIDATE's entry_num) is in the step's trace (*).
// - Pointer fields (pointers.ts POINTER_FIELDS) may be given inline: a list of structs (e.g.
//   `allowed_iovas: [{start: 0, last: 0xfff}]`, `allowed_iovas: [{}, {}]` for room the kernel
//   fills), one struct as a mapping (`data_uptr: {iotlb: ...}`, the struct chosen by the type
//   field, or by the fields given), or bytes as a hex string (digit pairs; an address written
//   as a string must start with 0x) (*). The runner maps fresh memory for it (MAP_PRIVATE,
//   kept until the process exits: the kernel may use it later, as IOAS_MAP pins lazily),
//   passes its address, and fills the companion count/length fields unless given. In the
//   result, an inline `out`/`inout` pointer field holds what the kernel wrote there (a list of
//   structs, a struct or hex); an `in` pointer field keeps its address (*).
// - A descriptor the kernel returns (an `out_*_fd` field, or a return value that is a new
//   descriptor, as IOMMU_TEST_OP_DMABUF_GET's) is an `fd#N` handle.
// - The process exits when its file ends: every descriptor is closed and the mm torn down
//   (a teardown hook the runner calls when the file ends).

import { errnoName, KernelError, kerr, UsageError } from '../core/errno.ts';
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_HUGETLB,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
} from '../iommufd/process.ts';
import {
  build,
  decodeAny,
  encode,
  IOMMUFD_TEST_ENUMS,
  type IoctlDef,
  ioctlByCmd,
  ioctlByName,
  type MemberField,
  type PointerField,
  pointerFields,
  STRUCTS,
  type StructDef,
  UAPI_CONSTANTS,
  type UapiObject,
} from '../iommufd/uapi/index.ts';
import { PasidkitSyncClient } from '../server/sync-client.ts';
import { parseHexBytes, toHex } from './ops-hw.ts';
import { LocalProcess, RemoteProcess, type ScenarioProcess } from './process-target.ts';
import {
  constants,
  Handle,
  type OpDef,
  type OpResult,
  type ParamDef,
  registerConstants,
  registerOps,
  type StepContext,
} from './registry.ts';
import type { ScenarioContext } from './runner.ts';
import { isRef, normInt, StepError, show, toBigInt } from './values.ts';

/** memfd_create(2) flags (include/uapi/linux/memfd.h). */
const MFD_CLOEXEC = 0x1;
const MFD_ALLOW_SEALING = 0x2;
const MFD_HUGETLB = 0x4;

registerConstants(UAPI_CONSTANTS);
registerConstants({
  PROT_NONE: 0,
  PROT_READ,
  PROT_WRITE,
  PROT_EXEC,
  MAP_SHARED,
  MAP_PRIVATE,
  MAP_FIXED,
  MAP_ANONYMOUS,
  MAP_POPULATE,
  MAP_HUGETLB,
  MFD_CLOEXEC,
  MFD_ALLOW_SEALING,
  MFD_HUGETLB,
});

/** Bytes of zero-extension a `size` larger than sizeof may ask for (a struct in a 64 KiB buffer). */
const MAX_ARG_EXTENSION = 64 * 1024;
/** Largest element stride the runner lays an inline list out at (entry_len given larger: sizeof). */
const MAX_STRIDE = 4096;

// ------------------------------------------------------------------ the process of a file

interface FileState {
  readonly proc: ScenarioProcess;
}

function fileState(ctx: StepContext): FileState {
  const sctx = ctx as ScenarioContext;
  return sctx.stateOf<FileState>('iommufd', () => {
    // Under `pasidkit run --connect`, the process is a connection to that server's host.
    const proc: ScenarioProcess =
      sctx.connect !== undefined
        ? new RemoteProcess(new PasidkitSyncClient(sctx.connect))
        : new LocalProcess(ctx.machine.iommufd.spawn());
    // exit(2) when the file ends: every descriptor closed (every iommufd object destroyed,
    // every pin released), the mm torn down.
    sctx.atEnd(() => proc.exit());
    return { proc };
  });
}

function fdHandle(fd: number): Handle {
  return new Handle('fd', fd, fd);
}

/** An `fd:` argument: an fd handle or an integer. */
function fdArg(name: string, v: unknown): number {
  if (v instanceof Handle) {
    if (v.kind !== 'fd') throw new StepError(`${name}: expected a file descriptor, got ${v}`);
    return v.value as number;
  }
  const b = toBigInt(v);
  if (b === undefined || b < -(1n << 31n) || b >= 1n << 31n)
    throw new StepError(`${name}: ${show(v)} is not a file descriptor`);
  return Number(b);
}

function checkFd(v: unknown): string | undefined {
  if (isRef(v)) return undefined;
  const b = toBigInt(v);
  return b !== undefined && b >= -(1n << 31n) && b < 1n << 31n
    ? undefined
    : `fd: ${show(v)} is not a file descriptor ($handle or integer)`;
}

function checkHex(name: string, v: unknown): string | undefined {
  if (v === undefined || isRef(v)) return undefined;
  return typeof v === 'string' && parseHexBytes(v) !== undefined
    ? undefined
    : `${name}: hex bytes, two digits a byte (white space allowed, no 0x)`;
}

function bytesArg(name: string, v: unknown): Uint8Array {
  const b = typeof v === 'string' ? parseHexBytes(v) : undefined;
  if (b === undefined) throw new StepError(`${name}: not a hex byte string`);
  return b;
}

/** A user VA as a number; undefined when no mapping can hold it. */
function vaArg(v: unknown): number | undefined {
  const b = v as bigint;
  return b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : undefined;
}

function retOr0(e: KernelError | undefined): OpResult {
  return e ?? 0;
}

// ------------------------------------------------------------------ struct tables

const FIELD_MAPS = new Map<StructDef, Map<string, MemberField>>();

/** Every field a mapping may name: the struct's own, and those of its anonymous unions. */
function fieldMap(s: StructDef): Map<string, MemberField> {
  let m = FIELD_MAPS.get(s);
  if (m === undefined) {
    m = new Map();
    for (const f of s.fields) {
      if (f.type === 'union') for (const u of f.members) m.set(u.name, u);
      else m.set(f.name, f);
    }
    FIELD_MAPS.set(s, m);
  }
  return m;
}

const POINTERS = new Map<string, Map<string, PointerField>>();

/** The pointer fields of a top-level struct, by path ("allowed_iovas", "check_map.uptr"). */
function pointersOf(s: StructDef): Map<string, PointerField> {
  let m = POINTERS.get(s.name);
  if (m === undefined) {
    m = new Map(pointerFields(s.name).map((p) => [p.field, p]));
    POINTERS.set(s.name, m);
  }
  return m;
}

/**
 * Structs a type value can select besides the table's: 0xdeadbeef in HWPT_INVALIDATE is the
 * selftest HWPT invalidation and also the selftest vIOMMU one (only the object behind hwpt_id
 * decides), so the fields given choose.
 */
const EXTRA_ELEMS: Readonly<Record<string, Readonly<Record<number, readonly StructDef[]>>>> = {
  'iommu_hwpt_invalidate.data_uptr': {
    [IOMMUFD_TEST_ENUMS.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST]: [STRUCTS.iommu_viommu_invalidate_selftest],
  },
};

/** The structs an inline pointer may hold, given its type field's value (undefined: not known yet). */
function elemCandidates(p: PointerField, type: bigint | undefined): StructDef[] {
  if (p.elem) return [p.elem];
  if (!p.elemBy) return [];
  const extra = EXTRA_ELEMS[`${p.struct}.${p.field}`] ?? {};
  if (type !== undefined && type <= 0xffffffffn) {
    const k = Number(type);
    const main = p.elemBy.map[k];
    return [...(main ? [main] : []), ...(extra[k] ?? [])];
  }
  return [...Object.values(p.elemBy.map), ...Object.values(extra).flat()];
}

/** The first candidate whose fields cover every key given; for bare `{}` the largest (the most room). */
function pickElem(cands: readonly StructDef[], keySets: readonly string[][]): StructDef | undefined {
  const ok = cands.filter((c) => keySets.every((ks) => ks.every((k) => fieldMap(c).has(k))));
  if (ok.length === 0) return undefined;
  if (keySets.every((ks) => ks.length === 0)) return ok.reduce((a, b) => (b.size > a.size ? b : a));
  return ok[0];
}

function isMapping(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Handle);
}

function getPath(o: Record<string, unknown>, path: string): unknown {
  let v: unknown = o;
  for (const k of path.split('.')) {
    if (!isMapping(v)) return undefined;
    v = v[k];
  }
  return v;
}

function setPath(o: Record<string, unknown>, path: string, value: unknown): void {
  const ks = path.split('.');
  let cur = o;
  for (const k of ks.slice(0, -1)) {
    let next = cur[k];
    if (!isMapping(next)) {
      next = {};
      cur[k] = next;
    }
    cur = next as Record<string, unknown>;
  }
  cur[ks[ks.length - 1]!] = value;
}

/**
 * How a pointer field's value is meant: inline data (a list, a mapping, hex bytes) or an
 * address (a number, a 0x string, a constant). A string is bytes unless it reads as an address.
 */
function inlineKind(v: unknown): 'list' | 'struct' | 'bytes' | null {
  if (Array.isArray(v)) return 'list';
  if (isMapping(v)) return 'struct';
  if (typeof v === 'string') {
    const s = v.trim();
    if (/^[+-]?0x/i.test(s) || s.includes('|') || constants.has(s)) return null;
    return 'bytes';
  }
  return null;
}

// ------------------------------------------------------------------ parse-time validation

const SCALAR_RANGE: Record<string, [bigint, bigint]> = {
  u8: [0n, 0xffn],
  u16: [0n, 0xffffn],
  u32: [0n, 0xffffffffn],
  s32: [-(1n << 31n), (1n << 31n) - 1n],
  u64: [0n, (1n << 64n) - 1n],
};

function checkInt(where: string, type: string, v: unknown): string | undefined {
  if (isRef(v)) return undefined;
  const b = toBigInt(v);
  if (b === undefined) return `${where}: ${show(v)} is not an integer or a known constant`;
  const [lo, hi] = SCALAR_RANGE[type] ?? SCALAR_RANGE['u64']!;
  // Negative values of unsigned fields are their two's complement, as C converts them.
  const min = type === 's32' ? lo : -(hi + 1n) / 2n;
  if (b < min || b > hi) return `${where}: ${b} does not fit ${type}`;
  return undefined;
}

function checkElems(where: string, p: PointerField, type: unknown, elems: unknown[]): string | undefined {
  const t = isRef(type) ? undefined : toBigInt(type);
  const cands = elemCandidates(p, t);
  if (cands.length === 0)
    return `${where}: ${p.elemBy ? `no struct known for ${p.elemBy.field} ${show(type)}` : 'takes bytes (hex), not structs'}`;
  const maps = elems.filter(isMapping);
  for (const e of elems)
    if (!isMapping(e) && !isRef(e)) return `${where}: each element is a mapping of struct fields`;
  const elem = pickElem(
    cands,
    maps.map((m) => Object.keys(m)),
  );
  if (elem === undefined)
    return `${where}: no field set of ${cands.map((c) => c.name).join(' or ')} has ${[...new Set(maps.flatMap((m) => Object.keys(m)))].join(', ')}`;
  for (const [i, m] of maps.entries()) {
    const e = checkStruct(`${where}[${i}]`, elem, m, '', new Map(), {});
    if (e) return e;
  }
  return undefined;
}

/** A mapping of `s`'s fields as a file gives it; `top` is the whole argument (for type fields). */
function checkStruct(
  where: string,
  s: StructDef,
  obj: Record<string, unknown>,
  prefix: string,
  ptrs: Map<string, PointerField>,
  top: Record<string, unknown>,
): string | undefined {
  const fields = fieldMap(s);
  for (const [k, v] of Object.entries(obj)) {
    const f = fields.get(k);
    const w = `${where}.${k}`;
    if (f === undefined)
      return `${where}: ${s.name} has no field ${k} (it has ${[...fields.keys()].join(', ')})`;
    if (isRef(v)) continue;
    if (f.type === 'struct') {
      if (!isMapping(v)) return `${w}: a mapping of ${f.struct.name} fields`;
      const e = checkStruct(w, f.struct, v, `${prefix}${k}.`, ptrs, top);
      if (e) return e;
      continue;
    }
    const p = ptrs.get(prefix + k);
    if (p) {
      const kind = inlineKind(v);
      const type = p.elemBy ? getPath(top, p.elemBy.field) : undefined;
      if (kind === 'bytes') {
        if (parseHexBytes(v as string) === undefined)
          return `${w}: inline bytes are hex digit pairs (an address as a string starts with 0x)`;
        continue;
      }
      if (kind === 'list') {
        const e = checkElems(w, p, type, v as unknown[]);
        if (e) return e;
        continue;
      }
      if (kind === 'struct') {
        const e = checkElems(w, p, type, [v]);
        if (e) return e;
        continue;
      }
      const e = checkInt(w, 'u64', v);
      if (e) return e;
      continue;
    }
    if (f.count !== undefined) {
      if (!Array.isArray(v)) return `${w}: a list of up to ${f.count} ${f.type}`;
      if (v.length > f.count) return `${w}: ${v.length} elements, the array holds ${f.count}`;
      for (const [i, x] of v.entries()) {
        const e = checkInt(`${w}[${i}]`, f.type, x);
        if (e) return e;
      }
      continue;
    }
    const e = checkInt(w, f.type, v);
    if (e) return e;
  }
  return undefined;
}

/** The request a literal `cmd` names; null for a $reference (checked when the step runs). */
function requestOf(cmd: unknown): { def: IoctlDef | undefined; cmd: number } | null | string {
  if (isRef(cmd)) return null;
  if (typeof cmd === 'string') {
    const d = ioctlByName(cmd.trim());
    if (d) return { def: d, cmd: d.cmd };
  }
  const b = toBigInt(cmd);
  if (b === undefined) return `cmd: ${show(cmd)} is not an ioctl name or request number`;
  if (b < 0n || b > 0xffffffffn) return `cmd: ${b} is not a 32-bit request number`;
  return { def: ioctlByCmd(Number(b)), cmd: Number(b) };
}

function checkIoctl(a: Record<string, unknown>): string | undefined {
  const e = checkFd(a['fd']);
  if (e) return e;
  const given = ['arg', 'bytes', 'value'].filter((k) => a[k] !== undefined);
  if (given.length > 1) return `give one of arg, bytes, value (not ${given.join(' and ')})`;
  const hx = checkHex('bytes', a['bytes']);
  if (hx) return hx;
  if (a['value'] !== undefined) {
    const ve = checkInt('value', 'u64', a['value']);
    if (ve) return ve;
  }
  const req = requestOf(a['cmd']);
  if (typeof req === 'string') return req;
  const arg = a['arg'];
  if (arg === undefined || isRef(arg)) return undefined;
  if (!isMapping(arg)) return 'arg: a mapping of the struct fields';
  if (req === null) return undefined;
  if (req.def === undefined)
    return `cmd: 0x${req.cmd.toString(16)} is no known request: give its argument as bytes or value`;
  const s = req.def.struct;
  if (s === null) return `${req.def.name} takes an integer argument: give value, not arg`;
  return checkStruct('arg', s, arg, '', pointersOf(s), arg);
}

// ------------------------------------------------------------------ building an argument

interface Placed {
  /** Path of the pointer field in the struct. */
  readonly path: string;
  readonly ptr: PointerField;
  readonly va: number;
  readonly len: number;
  readonly kind: 'list' | 'struct' | 'bytes';
  readonly elem: StructDef | undefined;
  readonly count: number;
  readonly stride: number;
  readonly before: Uint8Array;
}

function toInt(where: string, v: unknown): bigint {
  if (v instanceof Handle) {
    if (v.kind === 'fd') return BigInt(v.value as number);
    throw new StepError(`${where}: ${v} is not a number`);
  }
  const b = toBigInt(v);
  if (b === undefined) throw new StepError(`${where}: ${show(v)} is not an integer or a known constant`);
  return b;
}

/** Two's complement for negative values of unsigned fields, as C converts them. */
function fitUnsigned(b: bigint, type: string): bigint {
  if (b >= 0n || type === 's32') return b;
  const bits = type === 'u8' ? 8 : type === 'u16' ? 16 : type === 'u32' ? 32 : 64;
  return BigInt.asUintN(bits, b);
}

interface Pending {
  readonly path: string;
  readonly ptr: PointerField;
  readonly value: unknown;
  readonly kind: 'list' | 'struct' | 'bytes';
}

/** The file's mapping as the codec's object (integers as bigint), collecting inline pointers. */
function convertStruct(
  where: string,
  s: StructDef,
  obj: Record<string, unknown>,
  prefix: string,
  ptrs: Map<string, PointerField>,
  pending: Pending[],
): Record<string, unknown> {
  const fields = fieldMap(s);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    const f = fields.get(k);
    const w = `${where}.${k}`;
    if (f === undefined) throw new StepError(`${where}: ${s.name} has no field ${k}`);
    if (f.type === 'struct') {
      if (!isMapping(v)) throw new StepError(`${w}: a mapping of ${f.struct.name} fields`);
      out[k] = convertStruct(w, f.struct, v, `${prefix}${k}.`, ptrs, pending);
      continue;
    }
    const p = ptrs.get(prefix + k);
    const kind = p ? inlineKind(v) : null;
    if (p && kind) {
      pending.push({ path: prefix + k, ptr: p, value: v, kind });
      out[k] = 0n;
      continue;
    }
    if (f.count !== undefined) {
      if (!Array.isArray(v)) throw new StepError(`${w}: a list of up to ${f.count} ${f.type}`);
      out[k] = v.map((x, i) => fitUnsigned(toInt(`${w}[${i}]`, x), f.type));
      continue;
    }
    out[k] = fitUnsigned(toInt(w, v), f.type);
  }
  return out;
}

function encodeElem(where: string, elem: StructDef, v: unknown, slot: Uint8Array): void {
  if (!isMapping(v)) throw new StepError(`${where}: each element is a mapping of ${elem.name} fields`);
  const obj = convertStruct(where, elem, v, '', new Map(), []);
  try {
    encode(elem, obj, slot, Math.min(slot.length, elem.size));
  } catch (e) {
    if (e instanceof UsageError) throw new StepError(`${where}: ${e.message}`);
    throw e;
  }
}

/** Puts an inline pointer's data in fresh process memory; sets the pointer and its companions. */
function place(proc: ScenarioProcess, conv: Record<string, unknown>, pd: Pending): Placed {
  const { ptr, path } = pd;
  const w = `arg.${path}`;
  const typeRaw = ptr.elemBy ? getPath(conv, ptr.elemBy.field) : undefined;
  const type = typeof typeRaw === 'bigint' ? typeRaw : undefined;
  const given = (f: string | undefined): bigint | undefined =>
    f === undefined ? undefined : (getPath(conv, f) as bigint | undefined);
  let data: Uint8Array;
  let elem: StructDef | undefined;
  let count = 0;
  let stride = 0;
  if (pd.kind === 'bytes') {
    data = bytesArg(w, pd.value);
    const cands = elemCandidates(ptr, type);
    elem = cands.length === 1 ? cands[0] : undefined;
    stride = elem?.size ?? 1;
    count = Math.floor(data.length / stride);
  } else {
    const elems = pd.kind === 'list' ? (pd.value as unknown[]) : [pd.value];
    const cands = elemCandidates(ptr, type);
    elem = pickElem(
      cands,
      elems.map((e) => (isMapping(e) ? Object.keys(e) : [])),
    );
    if (elem === undefined)
      throw new StepError(
        cands.length === 0
          ? `${w}: no struct for this pointer${ptr.elemBy ? ` with ${ptr.elemBy.field} ${String(typeRaw ?? 0)}` : ''}: give bytes`
          : `${w}: the fields given fit none of ${cands.map((c) => c.name).join(', ')}`,
      );
    const entryLen = ptr.count !== undefined ? given(ptr.len) : undefined;
    stride =
      entryLen !== undefined && entryLen > 0n && entryLen <= BigInt(MAX_STRIDE)
        ? Number(entryLen)
        : elem.size;
    count = elems.length;
    data = new Uint8Array(count * stride);
    for (const [i, e] of elems.entries())
      encodeElem(`${w}[${i}]`, elem, e, data.subarray(i * stride, (i + 1) * stride));
  }
  const va = proc.mmap(Math.max(data.length, 1), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (va instanceof KernelError) throw new StepError(`${w}: cannot map memory for it: ${va.message}`);
  if (data.length > 0) {
    const e = proc.poke(va, data);
    if (e) throw new StepError(`${w}: ${e.message}`);
  }
  setPath(conv, path, BigInt(va));
  // Bytes for an array whose element struct is not known: its count and stride are the file's to give.
  const knowsShape = ptr.count === undefined || elem !== undefined;
  if (knowsShape && ptr.count !== undefined && given(ptr.count) === undefined)
    setPath(conv, ptr.count, BigInt(count));
  if (knowsShape && ptr.len !== undefined && given(ptr.len) === undefined)
    setPath(conv, ptr.len, BigInt(ptr.count !== undefined ? stride : data.length));
  return { path, ptr, va, len: data.length, kind: pd.kind, elem, count, stride, before: data };
}

/** The argument bytes for `arg: {...}`: sizeof bytes, zero-extended to a larger `size`. */
function buildArg(
  proc: ScenarioProcess,
  s: StructDef,
  arg: Record<string, unknown>,
): { bytes: Uint8Array; placed: Placed[] } {
  const pending: Pending[] = [];
  const conv = convertStruct('arg', s, arg, '', pointersOf(s), pending);
  const placed = pending.map((p) => place(proc, conv, p));
  let head: Uint8Array;
  try {
    head = build(s, conv);
  } catch (e) {
    if (e instanceof UsageError) throw new StepError(`arg: ${e.message}`);
    throw e;
  }
  const user = s.sizeField !== null ? conv[s.sizeField] : undefined;
  const usize = typeof user === 'bigint' ? user : BigInt(s.size);
  const len = usize > BigInt(s.size) && usize <= BigInt(MAX_ARG_EXTENSION) ? Number(usize) : s.size;
  const bytes = new Uint8Array(len);
  bytes.set(head);
  return { bytes, placed };
}

// ------------------------------------------------------------------ decoding a result

/** A decoded struct as a result: integers as numbers where exact. */
function norm(v: unknown): OpResult {
  if (typeof v === 'bigint') return normInt(v);
  if (Array.isArray(v)) return v.map(norm);
  if (isMapping(v)) {
    const o: Record<string, OpResult> = {};
    for (const [k, x] of Object.entries(v)) o[k] = norm(x);
    return o;
  }
  return v as OpResult;
}

/** What an inline pointer's memory holds now, in the form it was given. */
function readPlaced(proc: ScenarioProcess, pl: Placed, decoded: UapiObject): OpResult {
  const now = proc.peek(pl.va, pl.len);
  if (now instanceof KernelError) return now;
  if (pl.kind === 'bytes') return toHex(now);
  let elem = pl.elem;
  if (pl.ptr.elemBy) {
    // The kernel may say which struct it wrote (IOMMU_GET_HW_INFO's out_data_type).
    const t = getPath(decoded, pl.ptr.elemBy.field);
    const chosen = typeof t === 'number' ? pl.ptr.elemBy.map[t] : undefined;
    if (chosen && pl.kind !== 'list') elem = chosen;
  }
  if (elem === undefined) return toHex(now);
  if (pl.kind === 'struct') return norm(decodeAny(elem, now));
  const out: OpResult[] = [];
  for (let i = 0; i < pl.count; i++)
    out.push(norm(decodeAny(elem, now.subarray(i * pl.stride, (i + 1) * pl.stride))));
  return out;
}

/** Descriptors the call installed: `out_*_fd` fields that name one become fd handles. */
function fdFields(v: OpResult, fresh: ReadonlySet<number>): OpResult {
  if (!isMapping(v)) return v;
  const o = v as Record<string, OpResult>;
  for (const [k, x] of Object.entries(o)) {
    if (/^out_\w*fd$/.test(k) && typeof x === 'number' && fresh.has(x)) o[k] = fdHandle(x);
    else if (isMapping(x)) o[k] = fdFields(x, fresh);
  }
  return o;
}

function decodeResult(
  proc: ScenarioProcess,
  s: StructDef | null,
  bytes: Uint8Array,
  placed: readonly Placed[],
  fresh: ReadonlySet<number>,
): OpResult {
  if (s === null) return null;
  const raw = decodeAny(s, bytes);
  const out = norm(raw) as Record<string, OpResult>;
  for (const pl of placed) if (pl.ptr.direction !== 'in') setPath(out, pl.path, readPlaced(proc, pl, raw));
  return fdFields(out, fresh);
}

function errorOf(r: { ret: number; error?: KernelError }): KernelError {
  return r.error ?? kerr(errnoName(r.ret) ?? 'EINVAL', `ioctl returned ${r.ret}`);
}

function runIoctl(ctx: StepContext, a: Record<string, unknown>): OpResult {
  const { proc } = fileState(ctx);
  const fd = fdArg('fd', a['fd']);
  const req = requestOf(a['cmd']);
  if (typeof req === 'string') throw new StepError(req);
  if (req === null) throw new StepError('cmd: unresolved');
  const def = req.def;
  const s = def?.struct ?? null;
  const name = def?.name ?? `0x${req.cmd.toString(16)}`;
  const before = new Set(proc.openFds());
  const freshFds = (): Set<number> => new Set(proc.openFds().filter((f) => !before.has(f)));
  const traceCall = (ret: number, err: KernelError | undefined, extra: Record<string, unknown> = {}) =>
    ctx.trace('iommufd', 'ioctl', {
      fd,
      cmd: name,
      ret,
      ...(err ? { errno: err.code, message: err.message } : {}),
      ...extra,
    });
  const retOf = (ret: number, fresh: ReadonlySet<number>): OpResult =>
    ret > 0 && fresh.has(ret) ? fdHandle(ret) : ret;

  let mode = a['arg'] !== undefined ? 'arg' : a['bytes'] !== undefined ? 'bytes' : 'value';
  if (mode === 'value' && a['value'] === undefined && s !== null) mode = 'arg';

  if (mode === 'value') {
    const raw = a['value'] === undefined ? 0n : fitUnsigned(toInt('value', a['value']), 'u64');
    const r = proc.ioctlValue(fd, req.cmd, raw);
    if (r.ret < 0) {
      const err = errorOf(r);
      traceCall(r.ret, err);
      return err;
    }
    traceCall(r.ret, undefined);
    const fresh = freshFds();
    const res: Record<string, OpResult> = { ret: retOf(r.ret, fresh) };
    if (s !== null && r.arg.length > 0) res['arg'] = decodeResult(proc, s, r.arg, [], fresh);
    return res;
  }

  let sent: Uint8Array;
  let placed: Placed[] = [];
  if (mode === 'bytes') sent = bytesArg('bytes', a['bytes']);
  else {
    if (def === undefined) throw new StepError(`cmd: ${name} is no known request: give bytes or value`);
    if (s === null) throw new StepError(`${name} takes an integer argument: give value, not arg`);
    const arg = a['arg'] ?? {};
    if (!isMapping(arg)) throw new StepError('arg: a mapping of the struct fields');
    ({ bytes: sent, placed } = buildArg(proc, s, arg));
  }
  const r = proc.ioctl(fd, req.cmd, sent);
  const fresh = freshFds();
  if (r.ret < 0) {
    const err = errorOf(r);
    // Some ioctls write results back when they fail: show them in the trace.
    const changed =
      r.arg.some((b, i) => b !== sent[i]) ||
      placed.some((pl) => {
        if (pl.ptr.direction === 'in') return false;
        const now = proc.peek(pl.va, pl.len);
        return now instanceof Uint8Array && now.some((b, i) => b !== pl.before[i]);
      });
    traceCall(r.ret, err, changed && s !== null ? { arg: decodeResult(proc, s, r.arg, placed, fresh) } : {});
    return err;
  }
  traceCall(r.ret, undefined);
  const res: Record<string, OpResult> = { ret: retOf(r.ret, fresh) };
  if (s !== null) res['arg'] = decodeResult(proc, s, r.arg, placed, fresh);
  if (mode === 'bytes') res['bytes'] = toHex(r.arg);
  return res;
}

// ------------------------------------------------------------------ the operations

const fdParam: ParamDef = { kind: { type: 'raw' } };
const u64: ParamDef = { kind: { type: 'u64' } };
const optU32: ParamDef = { kind: { type: 'u32' }, optional: true };
const optU64: ParamDef = { kind: { type: 'u64' }, optional: true };

const ops: OpDef[] = [
  {
    name: 'open',
    family: 4,
    params: { path: { kind: { type: 'string' } } },
    run: (ctx, a) => {
      const r = fileState(ctx).proc.open(a['path'] as string);
      return typeof r === 'number' ? fdHandle(r) : r;
    },
  },
  {
    name: 'close',
    family: 4,
    params: { fd: fdParam },
    check: (a) => checkFd(a['fd']),
    run: (ctx, a) => retOr0(fileState(ctx).proc.close(fdArg('fd', a['fd']))),
  },
  {
    name: 'ioctl',
    family: 4,
    params: {
      fd: fdParam,
      cmd: { kind: { type: 'raw' } },
      arg: { kind: { type: 'raw' }, optional: true },
      bytes: { kind: { type: 'raw' }, optional: true },
      value: { kind: { type: 'raw' }, optional: true },
    },
    check: checkIoctl,
    run: runIoctl,
  },
  {
    name: 'mmap',
    family: 4,
    params: {
      length: { kind: { type: 'size' } },
      prot: optU32,
      flags: optU32,
      fd: { kind: { type: 'raw' }, optional: true },
      offset: optU64,
      addr: optU64,
    },
    check: (a) => (a['fd'] === undefined ? undefined : checkFd(a['fd'])),
    run: (ctx, a) => {
      const { proc } = fileState(ctx);
      const hasFd = a['fd'] !== undefined;
      const fd = hasFd ? fdArg('fd', a['fd']) : -1;
      const prot = (a['prot'] as number | undefined) ?? PROT_READ | PROT_WRITE;
      const flags = (a['flags'] as number | undefined) ?? (hasFd ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS);
      const length = Number(a['length'] as bigint);
      const offset = Number((a['offset'] as bigint | undefined) ?? 0n);
      const addr = vaArg((a['addr'] as bigint | undefined) ?? 0n);
      if (addr === undefined) return kerr('ENOMEM', 'mmap: address beyond the user address space');
      return proc.mmap(length, prot, flags, fd, offset, addr);
    },
  },
  {
    name: 'munmap',
    family: 4,
    params: { va: u64, length: { kind: { type: 'size' } } },
    run: (ctx, a) => {
      const va = vaArg(a['va']);
      if (va === undefined) return kerr('EINVAL', 'munmap: address beyond the user address space');
      return retOr0(fileState(ctx).proc.munmap(va, Number(a['length'] as bigint)));
    },
  },
  {
    name: 'poke',
    family: 4,
    params: { va: u64, bytes: { kind: { type: 'string' } } },
    check: (a) => checkHex('bytes', a['bytes']),
    run: (ctx, a) => {
      const va = vaArg(a['va']);
      if (va === undefined) return kerr('EFAULT', 'poke: address beyond the user address space');
      return retOr0(fileState(ctx).proc.poke(va, bytesArg('bytes', a['bytes'])));
    },
  },
  {
    name: 'peek',
    family: 4,
    params: { va: u64, length: { kind: { type: 'size' } } },
    run: (ctx, a) => {
      const va = vaArg(a['va']);
      const length = a['length'] as bigint;
      if (length > 1n << 26n) throw new StepError('peek: at most 64 MiB at a time');
      if (va === undefined) return kerr('EFAULT', 'peek: address beyond the user address space');
      const r = fileState(ctx).proc.peek(va, Number(length));
      return r instanceof KernelError ? r : toHex(r);
    },
  },
  {
    name: 'read',
    family: 4,
    params: { fd: fdParam, count: { kind: { type: 'u32' } } },
    check: (a) => checkFd(a['fd']),
    run: (ctx, a) => {
      const r = fileState(ctx).proc.read(fdArg('fd', a['fd']), a['count'] as number);
      return r instanceof KernelError ? r : toHex(r);
    },
  },
  {
    name: 'write',
    family: 4,
    params: { fd: fdParam, bytes: { kind: { type: 'string' } } },
    check: (a) => checkFd(a['fd']) ?? checkHex('bytes', a['bytes']),
    run: (ctx, a) => fileState(ctx).proc.write(fdArg('fd', a['fd']), bytesArg('bytes', a['bytes'])),
  },
  {
    name: 'memfd_create',
    family: 4,
    params: { name: { kind: { type: 'string' } }, flags: optU32 },
    run: (ctx, a) => {
      const flags = (a['flags'] as number | undefined) ?? 0;
      if ((flags & ~(MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB)) !== 0)
        return kerr('EINVAL', `memfd_create: unknown flags 0x${flags.toString(16)}`);
      const fd = fileState(ctx).proc.memfdCreate(a['name'] as string, (flags & MFD_HUGETLB) !== 0);
      return typeof fd === 'number' ? fdHandle(fd) : fd;
    },
  },
  {
    name: 'ftruncate',
    family: 4,
    params: { fd: fdParam, length: { kind: { type: 'size' } } },
    check: (a) => checkFd(a['fd']),
    run: (ctx, a) => {
      const len = a['length'] as bigint;
      const n = len <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(len) : -1;
      return retOr0(fileState(ctx).proc.ftruncate(fdArg('fd', a['fd']), n));
    },
  },
];

registerOps(ops);
