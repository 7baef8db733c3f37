// The operation table of scenario files (../shared/spec/SCENARIO.md). Each family (IOASID core,
// memory and registers, DMA, iommufd ioctls, whole machines) registers its operations here with
// a parameter list; the parser validates a step's arguments against that list before anything
// runs, and the runner resolves `$NAME` references and calls `run`. Operations only decode their
// arguments and call the library: the library is the one code path.

import type { KernelError } from '../core/errno.ts';
import type { Machine } from '../machine.ts';

export type Profile = 'v3' | 'm55' | 'm511' | 'g66';
export const PROFILES: readonly Profile[] = ['v3', 'm55', 'm511', 'g66'];

/**
 * Parameter kinds. Numbers accept decimal, 0x hex, hex strings, kernel constant names and
 * "A|B" flag combinations (resolved through `constants`).
 * - u8/u16/u32/u64/int: integers in range (u64 arrives as bigint, the others as number)
 * - bool, string, any (any YAML value, kept as parsed: ints as bigint beyond 2^53, else number)
 * - handle: a `$NAME` reference to a handle; `kind` names the handle kind ('set', 'nb', ...)
 * - bdf: a device "bb:dd.f" string naming a machine device
 * - enum: one of `values` (strings)
 * - size: a byte count (number, or a string with KiB/MiB/GiB)
 * - on: a notifier recorder's actions: event name -> nested step, plus `return`
 * - raw: any value; the op's `check` validates it
 */
export type ParamKind =
  | { type: 'u8' | 'u16' | 'u32' | 'u64' | 'int' | 'bool' | 'string' | 'any' | 'bdf' }
  | { type: 'handle'; kind: string; nullable?: boolean }
  | { type: 'enum'; values: readonly string[] }
  | { type: 'size' }
  | { type: 'on' }
  | { type: 'raw' };

export interface ParamDef {
  kind: ParamKind;
  /** Absent from the step: the op receives `undefined` (or this default). */
  optional?: boolean;
  default?: unknown;
  /** Accept null (a NULL pointer / no token). */
  nullable?: boolean;
}

/** A result of an operation, as printed and matched by `expect`. */
export type OpResult =
  | null
  | boolean
  | number
  | bigint
  | string
  | Handle
  | KernelError
  | OpResult[]
  | { [key: string]: OpResult };

/** An opaque handle made by an operation (a set, a recorder, a consumer, a file descriptor). */
export class Handle {
  readonly kind: string;
  readonly seq: number;
  readonly value: unknown;
  constructor(kind: string, seq: number, value: unknown) {
    this.kind = kind;
    this.seq = seq;
    this.value = value;
  }
  toString(): string {
    return `${this.kind}#${this.seq}`;
  }
}

export interface StepContext {
  machine: Machine;
  profile: Profile;
  /** Make a new handle of `kind` wrapping `value` (numbered per kind, from 1, per file). */
  handle(kind: string, value: unknown): Handle;
  /** Run a nested step (used by notifier recorders' "on" actions), with extra bindings. */
  runNested(step: unknown, bindings: Record<string, unknown>): OpResult;
  /** Record a trace event for this step. */
  trace(kind: string, what: string, fields?: Record<string, unknown>): void;
}

export interface OpDef {
  name: string;
  family: 1 | 2 | 3 | 4 | 5;
  /** Profiles that have this operation; absent = every profile. */
  profiles?: readonly Profile[];
  /** Parameters by their kernel names. Profiles may differ: `paramsFor` overrides per profile. */
  params: Record<string, ParamDef>;
  paramsFor?: Partial<Record<Profile, Record<string, ParamDef>>>;
  /** Extra validation after the parameters parsed (return a message to reject the step). */
  check?: (args: Record<string, unknown>) => string | undefined;
  run(ctx: StepContext, args: Record<string, unknown>): OpResult;
}

const ops = new Map<string, OpDef>();

export function registerOps(defs: readonly OpDef[]): void {
  for (const d of defs) {
    if (ops.has(d.name)) throw new Error(`scenario operation ${d.name} registered twice`);
    ops.set(d.name, d);
  }
}

export function lookupOp(name: string): OpDef | undefined {
  return ops.get(name);
}

export function allOps(): OpDef[] {
  return [...ops.values()];
}

/** Kernel constant names usable wherever a number is expected (each family adds its own). */
export const constants = new Map<string, number | bigint>();

export function registerConstants(table: Record<string, number | bigint>): void {
  for (const [k, v] of Object.entries(table)) {
    const old = constants.get(k);
    if (old !== undefined && old !== v) throw new Error(`constant ${k} registered with two values`);
    constants.set(k, v);
  }
}
