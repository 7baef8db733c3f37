// Parsing and validation of scenario files (SCENARIO.md): YAML 1.2 with 64-bit integers kept
// exact (`intAsBigInt`), the top level and the `machine:` block checked with zod, every step
// checked against its operation's parameter list. Anything wrong is reported with the file, the
// step number and what is wrong, before a single step runs (exit code 2).

import { parseDocument } from 'yaml';
import { z } from 'zod';
import {
  DEFAULT_VTD,
  type DeviceConfig,
  type MachineConfig,
  normaliseBdf,
  type VtdConfig,
} from '../machine-config.ts';
import { lookupOp, type OpDef, type ParamDef, type ParamKind, PROFILES, type Profile } from './registry.ts';
import { isRef, isWellFormedRef, normalise, toBigInt } from './values.ts';

export interface ParsedStep {
  /** 1-based, in file order. */
  index: number;
  op: string;
  def: OpDef;
  /** Arguments as written (safe integers as numbers), references unresolved. */
  args: Record<string, unknown>;
  params: Record<string, ParamDef>;
  as?: string;
  hasExpect: boolean;
  /** The expect as written (constants by name, safe integers as numbers). */
  expect?: unknown;
  note?: string;
}

export interface Scenario {
  file: string;
  name: string;
  profile: Profile;
  machine: MachineConfig;
  steps: ParsedStep[];
}

export class ScenarioSyntaxError extends Error {
  override readonly name = 'ScenarioSyntaxError';
  readonly step: number | undefined;
  constructor(message: string, step?: number) {
    super(step === undefined ? message : `step ${step}: ${message}`);
    this.step = step;
  }
}

const SIZE_UNITS: Record<string, bigint> = {
  '': 1n,
  B: 1n,
  KiB: 1n << 10n,
  MiB: 1n << 20n,
  GiB: 1n << 30n,
  TiB: 1n << 40n,
};

export function parseSize(v: unknown): bigint | undefined {
  if (typeof v === 'bigint') return v >= 0n ? v : undefined;
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^\s*(0x[0-9a-f]+|[0-9]+)\s*(B|KiB|MiB|GiB|TiB)?\s*$/i.exec(v);
  if (!m) return undefined;
  const unit = Object.keys(SIZE_UNITS).find((u) => u.toLowerCase() === (m[2] ?? '').toLowerCase()) ?? '';
  return BigInt(m[1]!) * SIZE_UNITS[unit]!;
}

const int = (lo: number, hi: number) =>
  z.custom<unknown>((v) => {
    const b = toBigInt(v);
    return b !== undefined && b >= BigInt(lo) && b <= BigInt(hi);
  }, `an integer in [${lo}, ${hi}]`);

const u64 = z.custom<unknown>((v) => {
  const b = toBigInt(v);
  return b !== undefined && b >= 0n && b < 1n << 64n;
}, 'a 64-bit unsigned integer');

const vtdSchema = z
  .object({
    model: z.literal('vtd'),
    pasid_bits: int(1, 20).optional(),
    caching_mode: z.boolean().optional(),
    fl_levels: int(4, 5).optional(),
    vcmd_layout: z.enum(['3.3', '3.2']).optional(),
    fault_records: int(1, 256).optional(),
    iotlb_entries: int(0, 1 << 20).optional(),
    qemu_compat: z.boolean().optional(),
    cap: u64.optional(),
    ecap: u64.optional(),
    vccap: u64.optional(),
  })
  .strict();

const deviceSchema = z
  .object({
    bdf: z.string().refine((s) => {
      try {
        normaliseBdf(s);
        return true;
      } catch {
        return false;
      }
    }, 'a bus:device.function such as "00:02.0"'),
    iommu: int(0, 255).optional(),
    pasid_bits: int(0, 20).optional(),
    ats: z.boolean().optional(),
  })
  .strict();

const machineSchema = z
  .object({
    iommus: z.array(vtdSchema).min(1).optional(),
    memory: z
      .custom<unknown>((v) => parseSize(v) !== undefined, 'a size: bytes, or with KiB, MiB, GiB')
      .optional(),
    devices: z.array(deviceSchema).optional(),
  })
  .strict();

const topSchema = z
  .object({
    scenario: z.custom<unknown>((v) => toBigInt(v) === 1n, 'scenario: 1 (the format version)'),
    name: z.string().optional(),
    description: z.string().optional(),
    profile: z.enum(PROFILES as [Profile, ...Profile[]]).optional(),
    machine: machineSchema.optional(),
    steps: z.array(z.unknown()),
  })
  .strict();

function num(v: unknown): number {
  return Number(toBigInt(v));
}

export function parseMachine(raw: unknown): MachineConfig {
  const r = machineSchema.safeParse(raw ?? {});
  if (!r.success) throw new ScenarioSyntaxError(`machine: ${z.prettifyError(r.error)}`);
  const m = r.data;
  const iommus: VtdConfig[] = (m.iommus ?? [{ model: 'vtd' as const }]).map((i) => {
    const c: VtdConfig = { ...DEFAULT_VTD };
    if (i.pasid_bits !== undefined) c.pasid_bits = num(i.pasid_bits);
    if (i.caching_mode !== undefined) c.caching_mode = i.caching_mode;
    if (i.fl_levels !== undefined) c.fl_levels = num(i.fl_levels) as 4 | 5;
    if (i.vcmd_layout !== undefined) c.vcmd_layout = i.vcmd_layout;
    if (i.fault_records !== undefined) c.fault_records = num(i.fault_records);
    if (i.iotlb_entries !== undefined) c.iotlb_entries = num(i.iotlb_entries);
    if (i.qemu_compat !== undefined) c.qemu_compat = i.qemu_compat;
    if (i.cap !== undefined) c.cap = toBigInt(i.cap)!;
    if (i.ecap !== undefined) c.ecap = toBigInt(i.ecap)!;
    if (i.vccap !== undefined) c.vccap = toBigInt(i.vccap)!;
    return c;
  });
  const seen = new Set<string>();
  const devices: DeviceConfig[] = (m.devices ?? []).map((d, n) => {
    const bdf = normaliseBdf(d.bdf);
    if (seen.has(bdf)) throw new ScenarioSyntaxError(`machine: devices[${n}]: bdf ${bdf} appears twice`);
    seen.add(bdf);
    const iommu = d.iommu === undefined ? 0 : num(d.iommu);
    if (iommu >= iommus.length)
      throw new ScenarioSyntaxError(
        `machine: devices[${n}]: iommu ${iommu} but there are ${iommus.length} IOMMUs`,
      );
    return {
      bdf,
      iommu,
      pasid_bits: d.pasid_bits === undefined ? 20 : num(d.pasid_bits),
      ats: d.ats ?? false,
    };
  });
  const memory = m.memory === undefined ? 1n << 30n : parseSize(m.memory)!;
  if (memory === 0n || memory > 1n << 52n)
    throw new ScenarioSyntaxError('machine: memory must be in (0, 2^52]');
  return { iommus, memory, devices };
}

const RANGES: Record<string, [bigint, bigint]> = {
  u8: [0n, 0xffn],
  u16: [0n, 0xffffn],
  u32: [0n, 0xffffffffn],
  u64: [0n, (1n << 64n) - 1n],
  int: [-(1n << 63n), (1n << 63n) - 1n],
};

export interface CheckEnv {
  machine: MachineConfig;
  profile: Profile;
}

/** Checks a literal argument value against its kind; undefined when acceptable. */
export function checkValue(kind: ParamKind, v: unknown, env: CheckEnv): string | undefined {
  if (isRef(v)) return isWellFormedRef(v) ? undefined : `malformed reference ${v}`;
  switch (kind.type) {
    case 'u8':
    case 'u16':
    case 'u32':
    case 'u64':
    case 'int': {
      const b = toBigInt(v);
      if (b === undefined) return `${JSON.stringify(v)} is not an integer or a known constant`;
      const [lo, hi] = RANGES[kind.type]!;
      if (b < lo || b > hi) return `${b} is out of range for ${kind.type}`;
      return undefined;
    }
    case 'size':
      return parseSize(v) === undefined ? `${JSON.stringify(v)} is not a size` : undefined;
    case 'bool':
      return typeof v === 'boolean' ? undefined : `${JSON.stringify(v)} is not true or false`;
    case 'string':
      return typeof v === 'string' ? undefined : `${JSON.stringify(v)} is not a string`;
    case 'any':
    case 'raw':
      return undefined;
    case 'handle':
      return v === null && kind.nullable ? undefined : `expected a $reference to a ${kind.kind}`;
    case 'bdf': {
      if (typeof v !== 'string') return `${JSON.stringify(v)} is not a bus:device.function string`;
      let bdf: string;
      try {
        bdf = normaliseBdf(v);
      } catch {
        return `${v} is not a bus:device.function string`;
      }
      return env.machine.devices.some((d) => d.bdf === bdf) ? undefined : `no device ${v} in the machine`;
    }
    case 'enum':
      return typeof v === 'string' && kind.values.includes(v)
        ? undefined
        : `${JSON.stringify(v)} is not one of ${kind.values.join(', ')}`;
    case 'on':
      return checkOn(v, env);
  }
}

const NOTIFY_EVENTS = [
  'IOASID_NOTIFY_ALLOC',
  'IOASID_NOTIFY_FREE',
  'IOASID_NOTIFY_BIND',
  'IOASID_NOTIFY_UNBIND',
];

function checkOn(v: unknown, env: CheckEnv): string | undefined {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    return '"on" must be a mapping of event names to steps';
  for (const [k, x] of Object.entries(v)) {
    if (k === 'return') {
      const e = checkValue({ type: 'int' }, x, env);
      if (e) return `"on".return: ${e}`;
      continue;
    }
    if (!NOTIFY_EVENTS.includes(k)) return `"on": ${k} is not an IOASID notification event`;
    try {
      parseStep(x, 0, env, true);
    } catch (err) {
      return `"on".${k}: ${(err as Error).message.replace(/^step 0: /, '')}`;
    }
  }
  return undefined;
}

const STEP_KEYS = new Set(['as', 'expect', 'note']);

export function parseStep(raw: unknown, index: number, env: CheckEnv, nested = false): ParsedStep {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    throw new ScenarioSyntaxError('a step must be a mapping with one operation', index);
  const entries = Object.entries(raw as Record<string, unknown>);
  const opKeys = entries.filter(([k]) => !STEP_KEYS.has(k));
  if (opKeys.length !== 1)
    throw new ScenarioSyntaxError(
      opKeys.length === 0
        ? 'no operation in the step'
        : `one operation per step, found ${opKeys.map(([k]) => k).join(', ')}`,
      index,
    );
  const [op, rawArgs] = opKeys[0]!;
  const def = lookupOp(op);
  if (def === undefined) throw new ScenarioSyntaxError(`unknown operation ${op}`, index);
  if (def.profiles !== undefined && !def.profiles.includes(env.profile))
    throw new ScenarioSyntaxError(`${op} does not exist in profile ${env.profile}`, index);
  const params = def.paramsFor?.[env.profile] ?? def.params;
  const args = normalise(rawArgs ?? {}) as Record<string, unknown>;
  if (args === null || typeof args !== 'object' || Array.isArray(args))
    throw new ScenarioSyntaxError(`${op}: arguments must be a mapping`, index);
  for (const [k, v] of Object.entries(args)) {
    const p = params[k];
    if (p === undefined)
      throw new ScenarioSyntaxError(
        `${op}: unknown argument ${k} (takes ${Object.keys(params).join(', ') || 'no arguments'})`,
        index,
      );
    if (v === null && p.nullable) continue;
    const e = checkValue(p.kind, v, env);
    if (e) throw new ScenarioSyntaxError(`${op}.${k}: ${e}`, index);
  }
  for (const [k, p] of Object.entries(params)) {
    if (!p.optional && !(k in args)) throw new ScenarioSyntaxError(`${op}: missing argument ${k}`, index);
  }
  if (def.check) {
    const e = def.check(args);
    if (e) throw new ScenarioSyntaxError(`${op}: ${e}`, index);
  }
  const rec = raw as Record<string, unknown>;
  const step: ParsedStep = { index, op, def, args, params, hasExpect: 'expect' in rec };
  if ('as' in rec) {
    if (nested) throw new ScenarioSyntaxError('a step inside "on" cannot bind a name with as:', index);
    if (typeof rec['as'] !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(rec['as']))
      throw new ScenarioSyntaxError('as: must be a name (letters, digits, _)', index);
    step.as = rec['as'];
  }
  if ('expect' in rec) step.expect = normalise(rec['expect']);
  if ('note' in rec) {
    if (typeof rec['note'] !== 'string') throw new ScenarioSyntaxError('note: must be text', index);
    step.note = rec['note'];
  }
  return step;
}

/** Parses one scenario file's text; throws ScenarioSyntaxError with the step number on any problem. */
export function parseScenario(file: string, text: string): Scenario {
  const doc = parseDocument(text, { intAsBigInt: true, uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length > 0) throw new ScenarioSyntaxError(`YAML: ${doc.errors[0]!.message}`);
  const raw: unknown = doc.toJS({ maxAliasCount: 1000 });
  const r = topSchema.safeParse(raw);
  if (!r.success) throw new ScenarioSyntaxError(z.prettifyError(r.error).replace(/\n/g, ' '));
  const top = r.data;
  const profile: Profile = top.profile ?? 'v3';
  const machine = parseMachine(top.machine);
  const env: CheckEnv = { machine, profile };
  const steps = top.steps.map((s, i) => parseStep(s, i + 1, env));
  return { file, name: top.name ?? file, profile, machine, steps };
}
