// Runs parsed scenarios (SCENARIO.md "Output"): each file on a fresh Machine, each step's
// arguments resolved against earlier results, the step's operation called, its result matched
// against `expect`, and one record per step handed to the caller, who prints text or JSON
// lines. The runner only decodes and encodes: every operation is a library call.

import { KernelError } from '../core/errno.ts';
import { FaultInjector } from '../core/fault.ts';
import { InvariantError } from '../core/invariants.ts';
import { TraceBuffer, type TraceEvent } from '../core/trace.ts';
import { Machine } from '../machine.ts';
import { normaliseBdf } from '../machine-config.ts';
import type { ParsedStep, Scenario } from './parse.ts';
import { parseSize, parseStep } from './parse.ts';
import { Handle, type OpResult, type ParamDef, type Profile, type StepContext } from './registry.ts';
import { type Bindings, matches, normInt, resolveDeep, StepError, toBigInt } from './values.ts';

export interface StepRecord {
  file: string;
  step: number;
  op: string;
  /** true/false for a step with an expect; null without. */
  ok: boolean | null;
  result: OpResult;
  hasExpect: boolean;
  expect?: unknown;
  note?: string;
  trace?: TraceEvent[];
  /** A step that could not run (unresolved reference, wrong argument type at run time). */
  error?: string;
}

export interface FileRecord {
  file: string;
  passed: number;
  failed: number;
  error: string | null;
}

export interface RunOptions {
  trace?: boolean;
  debug?: boolean;
  /** Arm fault injection for each file (fail the Nth allocation). */
  failNth?: number;
  /** Run family 4 (/dev/iommu, VFIO files) on a `pasidkit serve` at this socket or HOST:PORT. */
  connect?: string;
}

/** The per-file state that operations see through StepContext. */
export class ScenarioContext implements StepContext {
  readonly machine: Machine;
  readonly profile: Profile;
  readonly bindings: Bindings = new Map();
  private readonly counters = new Map<string, number>();
  /** Reverse map: library object -> its handle, so results can name objects by handle. */
  readonly handles = new Map<unknown, Handle>();
  readonly traceBuf: TraceBuffer | null;
  /** State families keep per file (recorders, allocator ops, ...). */
  readonly state = new Map<string, unknown>();
  private readonly endHooks: (() => void)[] = [];
  /** `pasidkit run --connect`: where family 4's process lives. */
  readonly connect: string | undefined;

  constructor(scenario: Scenario, opts: RunOptions) {
    this.profile = scenario.profile;
    this.connect = opts.connect;
    this.traceBuf = opts.trace ? new TraceBuffer() : null;
    const faults = new FaultInjector();
    this.machine = new Machine({
      config: scenario.machine,
      profile: scenario.profile,
      ...(opts.debug !== undefined ? { debug: opts.debug } : {}),
      faults,
      tracer: this.traceBuf?.sink ?? null,
    });
    if (opts.failNth !== undefined && opts.failNth > 0) faults.failNth(opts.failNth);
  }

  handle(kind: string, value: unknown): Handle {
    const n = (this.counters.get(kind) ?? 0) + 1;
    this.counters.set(kind, n);
    const h = new Handle(kind, n, value);
    this.handles.set(value, h);
    return h;
  }

  trace(kind: string, what: string, fields: Record<string, unknown> = {}): void {
    this.traceBuf?.sink({ kind, what, ...fields });
  }

  /** Runs `fn` when the file ends (a family's teardown: a process exits, ...). */
  atEnd(fn: () => void): void {
    this.endHooks.push(fn);
  }

  /** The end of the file: every teardown hook, latest first. */
  end(): void {
    while (this.endHooks.length > 0) this.endHooks.pop()!();
  }

  /** Family-private state, made on first use. */
  stateOf<T>(key: string, make: () => T): T {
    let v = this.state.get(key) as T | undefined;
    if (v === undefined) {
      v = make();
      this.state.set(key, v);
    }
    return v;
  }

  runNested(raw: unknown, extra: Record<string, unknown>): OpResult {
    const step = parseStep(raw, 0, { machine: this.machine.config, profile: this.profile }, true);
    const saved = new Map<string, unknown>();
    for (const [k, v] of Object.entries(extra)) {
      if (this.bindings.has(k)) saved.set(k, this.bindings.get(k));
      this.bindings.set(k, v);
    }
    try {
      return this.execute(step);
    } finally {
      for (const k of Object.keys(extra)) {
        if (saved.has(k)) this.bindings.set(k, saved.get(k));
        else this.bindings.delete(k);
      }
    }
  }

  /** Resolve, coerce and run one step; StepError for a step that cannot run. */
  execute(step: ParsedStep): OpResult {
    const args: Record<string, unknown> = {};
    for (const [k, p] of Object.entries(step.params)) {
      if (!(k in step.args)) {
        if (p.default !== undefined) args[k] = p.default;
        continue;
      }
      const raw = step.args[k];
      // "on" actions stay unresolved: `$event` exists only when the callback runs.
      const v = p.kind.type === 'on' ? raw : resolveDeep(raw, this.bindings);
      args[k] = coerce(k, p, v, this);
    }
    return step.def.run(this, args);
  }
}

function coerce(name: string, p: ParamDef, v: unknown, ctx: ScenarioContext): unknown {
  if (v === null && (p.nullable || (p.kind.type === 'handle' && p.kind.nullable))) return null;
  const k = p.kind;
  switch (k.type) {
    case 'u8':
    case 'u16':
    case 'u32':
    case 'int':
    case 'u64': {
      const b = toBigInt(v);
      if (b === undefined) throw new StepError(`${name}: ${String(v)} is not an integer`);
      const hi =
        k.type === 'u8'
          ? 0xffn
          : k.type === 'u16'
            ? 0xffffn
            : k.type === 'u32'
              ? 0xffffffffn
              : k.type === 'u64'
                ? (1n << 64n) - 1n
                : (1n << 63n) - 1n;
      const lo = k.type === 'int' ? -(1n << 63n) : 0n;
      if (b < lo || b > hi) throw new StepError(`${name}: ${b} is out of range for ${k.type}`);
      return k.type === 'u64' ? b : normInt(b);
    }
    case 'size': {
      const s = parseSize(v);
      if (s === undefined) throw new StepError(`${name}: ${String(v)} is not a size`);
      return s;
    }
    case 'bool':
      if (typeof v !== 'boolean') throw new StepError(`${name}: ${String(v)} is not a boolean`);
      return v;
    case 'string':
      if (typeof v !== 'string') throw new StepError(`${name}: ${String(v)} is not a string`);
      return v;
    case 'handle': {
      if (!(v instanceof Handle)) throw new StepError(`${name}: expected a ${k.kind}, got ${describe(v)}`);
      if (v.kind !== k.kind) throw new StepError(`${name}: expected a ${k.kind}, got ${v}`);
      return v.value;
    }
    case 'bdf': {
      if (typeof v !== 'string') throw new StepError(`${name}: ${String(v)} is not a device`);
      const dev = ctx.machine.device(v);
      if (dev === undefined) throw new StepError(`${name}: no device ${v}`);
      return normaliseBdf(v);
    }
    case 'enum':
      if (typeof v !== 'string' || !k.values.includes(v))
        throw new StepError(`${name}: ${String(v)} not allowed`);
      return v;
    case 'any':
    case 'raw':
    case 'on':
      return v;
  }
}

function describe(v: unknown): string {
  if (v instanceof KernelError) return `an error (${v.code})`;
  if (v === null) return 'null';
  if (typeof v === 'object') return 'a value';
  return String(v);
}

/** Runs one parsed scenario, calling `emit` for each step; returns the file record. */
export function runScenario(scenario: Scenario, opts: RunOptions, emit: (r: StepRecord) => void): FileRecord {
  const ctx = new ScenarioContext(scenario, opts);
  try {
    return runSteps(ctx, scenario, emit);
  } finally {
    ctx.end();
  }
}

function runSteps(ctx: ScenarioContext, scenario: Scenario, emit: (r: StepRecord) => void): FileRecord {
  let passed = 0;
  let failed = 0;
  for (const step of scenario.steps) {
    let result: OpResult;
    let error: string | undefined;
    try {
      result = ctx.execute(step);
    } catch (e) {
      if (e instanceof StepError || e instanceof InvariantError) {
        error = e.message;
      } else if (e instanceof Error) {
        error = `internal error: ${e.message}`;
      } else {
        error = `internal error: ${String(e)}`;
      }
      result = { error };
    }
    const trace = ctx.traceBuf?.drain();
    let ok: boolean | null = null;
    if (step.hasExpect) {
      if (error !== undefined) ok = false;
      else {
        try {
          ok = matches(resolveDeep(step.expect, ctx.bindings), result);
        } catch (e) {
          ok = false;
          error = (e as Error).message;
        }
      }
      if (ok) passed++;
      else failed++;
    }
    if (step.as !== undefined) ctx.bindings.set(step.as, result);
    const rec: StepRecord = {
      file: scenario.file,
      step: step.index,
      op: step.op,
      ok,
      result,
      hasExpect: step.hasExpect,
    };
    if (step.hasExpect) rec.expect = step.expect;
    if (step.note !== undefined) rec.note = step.note;
    if (trace !== undefined) rec.trace = trace;
    if (error !== undefined) rec.error = error;
    emit(rec);
  }
  return { file: scenario.file, passed, failed, error: null };
}
