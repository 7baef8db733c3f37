// Byte-exact C struct layouts for the iommufd/VFIO uAPI, and the generic codecs driven by them.
// A table lists every field by its uAPI name with its offset and type, the struct's sizeof, and
// its minimum size (offsetofend of the last field of the first version, the `min_size` of the
// kernel's IOCTL_OP table, research iommufd.md A.0). Values are little-endian (every ABI iommufd
// runs on that a model cares about; `__aligned_u64` makes the layouts ABI-independent, A.0).
//
// Decoded objects give u64 fields as bigint and u32-or-smaller fields as number, so a decoded
// struct can be compared exactly and re-encoded without loss. Anonymous unions are flattened into
// the parent, as C code reads them (`cmd->add_reserved.start`); a union that has a discriminator
// (IOMMU_TEST_CMD's `op`) decodes only the member the discriminator selects, and every member
// when the discriminator is unknown, so that nothing the user wrote is hidden.

import { UsageError } from '../../core/errno.ts';

export type ScalarType = 'u8' | 'u16' | 'u32' | 's32' | 'u64';

export interface ScalarField {
  readonly name: string;
  readonly offset: number;
  readonly type: ScalarType;
  /** Present for a fixed array (`__u8 __reserved[3]`): the element count. */
  readonly count?: number;
}

export interface StructField {
  readonly name: string;
  readonly offset: number;
  readonly type: 'struct';
  readonly struct: StructDef;
}

export type MemberField = ScalarField | StructField;

export interface UnionField {
  /** Not a uAPI name (the kernel's unions are anonymous): only for messages. */
  readonly name: string;
  readonly offset: number;
  readonly type: 'union';
  readonly size: number;
  /** Member offsets are relative to the union's start. */
  readonly members: readonly MemberField[];
  /** Which member a value of the discriminator field selects. */
  readonly select?: { readonly by: string; readonly map: Readonly<Record<number, string>> };
}

export type Field = ScalarField | StructField | UnionField;

export interface StructDef<N extends string = string, F extends readonly Field[] = readonly Field[]> {
  readonly name: N;
  /** sizeof(struct), what the kernel copies with copy_struct_from_user. */
  readonly size: number;
  /** offsetofend(struct, minField): below it the kernel answers EINVAL. */
  readonly minSize: number;
  readonly minField: string;
  readonly fields: F;
  /** The leading u32 that carries the user's struct size, when the struct has one. */
  readonly sizeField: 'size' | 'argsz' | null;
  /** Valid bits of flag-like fields, as the kernel checks them (unknown bits give EOPNOTSUPP/EINVAL). */
  readonly masks: Readonly<Record<string, number>>;
}

type ScalarValue<F> = F extends { type: 'u64' } ? bigint : number;
type FieldValue<F> = F extends { type: 'struct'; struct: StructDef<string, infer FF> }
  ? Decoded<FF>
  : F extends { count: number }
    ? ScalarValue<F>[]
    : ScalarValue<F>;
type PlainPart<FF extends readonly Field[]> = {
  [F in FF[number] as F extends { type: 'union' } ? never : F['name']]: FieldValue<F>;
};
type UnionMembers<FF extends readonly Field[]> = Extract<FF[number], { type: 'union' }>['members'][number];
type UnionPart<FF extends readonly Field[]> = { [M in UnionMembers<FF> as M['name']]?: FieldValue<M> };

/** The typed object a table decodes to. */
export type Decoded<FF extends readonly Field[]> = PlainPart<FF> & UnionPart<FF>;
export type DecodedStruct<S extends StructDef> = Decoded<S['fields']>;

/** A decoded value in the untyped view (what scenario files and the wire layer handle). */
export type UapiValue = number | bigint | UapiValue[] | { [k: string]: UapiValue };
export type UapiObject = { [k: string]: UapiValue };

const WIDTH: Record<ScalarType, number> = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 };

export function scalarWidth(t: ScalarType): number {
  return WIDTH[t];
}

export function fieldSize(f: Field): number {
  if (f.type === 'struct') return f.struct.size;
  if (f.type === 'union') return f.size;
  return WIDTH[f.type] * (f.count ?? 1);
}

function fieldAlign(f: Field): number {
  if (f.type === 'struct') return structAlign(f.struct);
  if (f.type === 'union') return Math.max(1, ...f.members.map(fieldAlign));
  return WIDTH[f.type];
}

function structAlign(s: StructDef): number {
  return Math.max(1, ...s.fields.map(fieldAlign));
}

/**
 * Declares a struct table and checks it against the C layout rules (natural alignment, no
 * overlap, sizeof rounded up to the struct's alignment), so that a mistyped offset is caught
 * when the module loads rather than as a wrong byte on the wire.
 */
export function defineStruct<const N extends string, const F extends readonly Field[]>(
  name: N,
  size: number,
  minField: string,
  fields: F,
  opts: { sizeField?: 'size' | 'argsz' | null; masks?: Readonly<Record<string, number>> } = {},
): StructDef<N, F> {
  const s: StructDef<N, F> = {
    name,
    size,
    minSize: 0,
    minField,
    fields,
    sizeField:
      opts.sizeField !== undefined
        ? opts.sizeField
        : fields[0]?.name === 'size' || fields[0]?.name === 'argsz'
          ? (fields[0].name as 'size' | 'argsz')
          : null,
    masks: opts.masks ?? {},
  };
  checkLayout(name, size, fields);
  const minSize = offsetofend(s, minField);
  return { ...s, minSize };
}

function checkLayout(where: string, size: number, fields: readonly Field[]): void {
  let end = 0;
  for (const f of fields) {
    const align = fieldAlign(f);
    if (f.offset % align !== 0)
      throw new UsageError(`${where}.${f.name}: offset ${f.offset} not ${align}-aligned`);
    if (f.offset < end)
      throw new UsageError(`${where}.${f.name}: offset ${f.offset} overlaps the previous field`);
    end = f.offset + fieldSize(f);
    if (f.type === 'union') {
      for (const m of f.members) {
        if (m.offset !== 0 && m.type === 'struct') {
          throw new UsageError(`${where}.${m.name}: a union member starts at the union's start`);
        }
        if (m.offset + fieldSize(m) > f.size)
          throw new UsageError(`${where}.${m.name}: larger than its union`);
      }
      const need = Math.max(...f.members.map((m) => m.offset + fieldSize(m)));
      if (need !== f.size)
        throw new UsageError(`${where}.${f.name}: union size ${f.size}, members need ${need}`);
    }
  }
  const align = Math.max(1, ...fields.map(fieldAlign));
  const padded = Math.ceil(end / align) * align;
  if (padded !== size)
    throw new UsageError(`${where}: sizeof is ${padded} by the C rules, table says ${size}`);
}

function findField(s: StructDef, name: string): { f: Field; base: number } | undefined {
  for (const f of s.fields) {
    if (f.type === 'union') {
      for (const m of f.members) if (m.name === name) return { f: m, base: f.offset };
    } else if (f.name === name) {
      return { f, base: 0 };
    }
  }
  return undefined;
}

/** offsetof(struct, field) for a top-level (or anonymous-union) field. */
export function offsetof(s: StructDef, name: string): number {
  const hit = findField(s, name);
  if (!hit) throw new UsageError(`${s.name} has no field ${name}`);
  return hit.base + hit.f.offset;
}

/** offsetofend(struct, field), the kernel macro that min_size is built from. */
export function offsetofend(s: StructDef, name: string): number {
  const hit = findField(s, name);
  if (!hit) throw new UsageError(`${s.name} has no field ${name}`);
  return hit.base + hit.f.offset + fieldSize(hit.f);
}

/** Little-endian u32 at `off` (a DataView per decode costs more than the decode: ioctls are hot). */
function rd32(b: Uint8Array, off: number): number {
  return (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
}

function readScalar(b: Uint8Array, off: number, t: ScalarType): number | bigint {
  switch (t) {
    case 'u8':
      return b[off]!;
    case 'u16':
      return b[off]! | (b[off + 1]! << 8);
    case 'u32':
      return rd32(b, off);
    case 's32':
      return rd32(b, off) | 0;
    case 'u64': {
      const lo = rd32(b, off);
      const hi = rd32(b, off + 4);
      return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo);
    }
  }
}

function decodeFields(fields: readonly Field[], dv: Uint8Array, base: number, out: UapiObject): void {
  for (const f of fields) {
    if (f.type === 'union') {
      const chosen = chooseMembers(f, out);
      for (const m of f.members) {
        if (chosen === null || chosen === m.name) out[m.name] = decodeMember(m, dv, base + f.offset);
      }
    } else {
      out[f.name] = decodeMember(f, dv, base);
    }
  }
}

function chooseMembers(u: UnionField, decodedSoFar: UapiObject): string | null {
  if (!u.select) return null;
  const key = decodedSoFar[u.select.by];
  if (typeof key !== 'number') return null;
  return Object.hasOwn(u.select.map, key) ? (u.select.map[key] ?? null) : null;
}

function decodeMember(f: MemberField, dv: Uint8Array, base: number): UapiValue {
  if (f.type === 'struct') {
    const o: UapiObject = {};
    decodeFields(f.struct.fields, dv, base + f.offset, o);
    return o;
  }
  if (f.count !== undefined) {
    const arr: UapiValue[] = [];
    for (let i = 0; i < f.count; i++) arr.push(readScalar(dv, base + f.offset + i * WIDTH[f.type], f.type));
    return arr;
  }
  return readScalar(dv, base + f.offset, f.type);
}

/**
 * Decodes the first `size` bytes of `bytes` as `s`; bytes past `size` (or past the end of
 * `bytes`) read as zero, as copy_struct_from_user zero-extends a shorter user struct.
 */
export function decode<S extends StructDef>(
  s: S,
  bytes: Uint8Array,
  size: number = s.size,
): DecodedStruct<S> {
  const k = new Uint8Array(s.size);
  const n = Math.max(0, Math.min(size, bytes.length, s.size));
  k.set(bytes.subarray(0, n));
  const out: UapiObject = {};
  decodeFields(s.fields, k, 0, out);
  return out as DecodedStruct<S>;
}

/** The untyped form of decode, for callers that pick the table at run time. */
export function decodeAny(s: StructDef, bytes: Uint8Array, size: number = s.size): UapiObject {
  return decode(s, bytes, size) as unknown as UapiObject;
}

function toBigInt(where: string, v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  throw new UsageError(`${where}: ${String(v)} is not an integer`);
}

function scalarBytes(where: string, t: ScalarType, v: unknown): Uint8Array {
  const b = toBigInt(where, v);
  const w = WIDTH[t];
  const lo = t === 's32' ? -(1n << 31n) : 0n;
  const hi = (1n << BigInt(w * 8)) - 1n;
  if (b < lo || b > hi) throw new UsageError(`${where}: ${b} does not fit in ${t}`);
  const out = new Uint8Array(w);
  let x = BigInt.asUintN(w * 8, b);
  for (let i = 0; i < w; i++) {
    out[i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return out;
}

function put(bytes: Uint8Array, limit: number, off: number, src: Uint8Array): void {
  // A field that straddles the limit is cut byte-wise: the kernel copies a byte prefix.
  const n = Math.min(src.length, limit - off);
  if (n > 0) bytes.set(src.subarray(0, n), off);
}

function encodeFields(
  where: string,
  fields: readonly Field[],
  obj: Readonly<Record<string, unknown>>,
  bytes: Uint8Array,
  limit: number,
  base: number,
): void {
  const known = new Set<string>();
  for (const f of fields) {
    if (f.type === 'union') {
      for (const m of f.members) {
        known.add(m.name);
        const v = obj[m.name];
        if (v !== undefined) encodeMember(`${where}.${m.name}`, m, v, bytes, limit, base + f.offset);
      }
    } else {
      known.add(f.name);
      const v = obj[f.name];
      if (v !== undefined) encodeMember(`${where}.${f.name}`, f, v, bytes, limit, base);
    }
  }
  for (const k of Object.keys(obj)) {
    if (!known.has(k)) throw new UsageError(`${where}: no field named ${k}`);
  }
}

function encodeMember(
  where: string,
  f: MemberField,
  v: unknown,
  bytes: Uint8Array,
  limit: number,
  base: number,
): void {
  if (f.type === 'struct') {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new UsageError(`${where}: expected a mapping of ${f.struct.name} fields`);
    }
    encodeFields(where, f.struct.fields, v as Record<string, unknown>, bytes, limit, base + f.offset);
    return;
  }
  const w = WIDTH[f.type];
  if (f.count !== undefined) {
    if (!Array.isArray(v)) throw new UsageError(`${where}: expected a list of ${f.count} ${f.type}`);
    if (v.length > f.count)
      throw new UsageError(`${where}: ${v.length} elements, the array holds ${f.count}`);
    v.forEach((e, i) => {
      put(bytes, limit, base + f.offset + i * w, scalarBytes(`${where}[${i}]`, f.type, e));
    });
    return;
  }
  put(bytes, limit, base + f.offset, scalarBytes(where, f.type, v));
}

/**
 * Writes the fields present in `obj` into `bytes` in place (fields left out are not touched),
 * never past `limit` bytes: write-back is `copy_to_user(arg, kbuf, min(user_size, sizeof))`.
 * Unknown field names and values that do not fit their type are a UsageError.
 */
export function encode(
  s: StructDef,
  obj: Readonly<Record<string, unknown>>,
  bytes: Uint8Array,
  limit: number = Math.min(bytes.length, s.size),
): void {
  encodeFields(s.name, s.fields, obj, bytes, Math.min(limit, bytes.length), 0);
}

/**
 * A fresh zeroed struct of sizeof bytes holding `obj`; the size field (`size` or `argsz`)
 * defaults to the full struct size, as scenario files expect (SCENARIO.md family 4).
 */
export function build(s: StructDef, obj: Readonly<Record<string, unknown>> = {}): Uint8Array {
  const bytes = new Uint8Array(s.size);
  const withSize =
    s.sizeField !== null && obj[s.sizeField] === undefined ? { ...obj, [s.sizeField]: s.size } : obj;
  encode(s, withSize, bytes);
  return bytes;
}

/** Every byte offset that some field of `s` covers (padding is what is left). */
export function coveredBytes(s: StructDef): boolean[] {
  const cov = new Array<boolean>(s.size).fill(false);
  const mark = (fields: readonly Field[], base: number): void => {
    for (const f of fields) {
      if (f.type === 'union') {
        for (const m of f.members) {
          if (m.type === 'struct') mark(m.struct.fields, base + f.offset + m.offset);
          else for (let i = 0; i < fieldSize(m); i++) cov[base + f.offset + m.offset + i] = true;
        }
      } else if (f.type === 'struct') {
        mark(f.struct.fields, base + f.offset);
      } else {
        for (let i = 0; i < fieldSize(f); i++) cov[base + f.offset + i] = true;
      }
    }
  };
  mark(s.fields, 0);
  return cov;
}
