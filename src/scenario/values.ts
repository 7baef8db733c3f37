// Values of scenario files (SCENARIO.md "Steps" and "Output"): integers written in decimal, hex
// or as kernel constant names ("A|B" for flags), `$NAME` references into earlier results, the
// matching rules of `expect`, and the JSON form of results (integers past 2^53 - 1 as lower-case
// hex strings, handles as "set#1", errors as {errno: NAME}).

import { isErrnoName, KernelError } from '../core/errno.ts';
import { constants, Handle, type OpResult } from './registry.ts';

/** A failure to evaluate a step's arguments: the step fails with this message, the file is not malformed. */
export class StepError extends Error {
  override readonly name = 'StepError';
}

const HEX = /^[+-]?0x[0-9a-f]+$/i;
const DEC = /^[+-]?[0-9]+$/;

/** An integer from a YAML value: bigint, number, "0x..", decimal string, constant name, or "A|B". */
export function toBigInt(v: unknown): bigint | undefined {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') return Number.isSafeInteger(v) ? BigInt(v) : undefined;
  if (typeof v === 'boolean') return v ? 1n : 0n;
  if (typeof v !== 'string') return undefined;
  const s = v.trim();
  if (s.includes('|')) {
    let acc = 0n;
    for (const part of s.split('|')) {
      const p = toBigInt(part.trim());
      if (p === undefined) return undefined;
      acc |= p;
    }
    return acc;
  }
  if (HEX.test(s)) return s.startsWith('-') ? -BigInt(s.slice(1)) : BigInt(s.replace(/^\+/, ''));
  if (DEC.test(s)) return BigInt(s);
  const c = constants.get(s);
  if (c !== undefined) return BigInt(c);
  return undefined;
}

/** A bigint as a number when it fits exactly, else left as bigint. */
export function normInt(b: bigint): number | bigint {
  return b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
}

/** Deep-convert a parsed YAML value: safe bigints become numbers. */
export function normalise(v: unknown): unknown {
  if (typeof v === 'bigint') return normInt(v);
  if (Array.isArray(v)) return v.map(normalise);
  if (v !== null && typeof v === 'object' && !(v instanceof Handle) && !(v instanceof KernelError)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = normalise(x);
    return out;
  }
  return v;
}

export type Bindings = Map<string, unknown>;

const REF = /^\$([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)(?:([+-])(0x[0-9a-fA-F]+|[0-9]+))?$/;

export function isRef(v: unknown): v is string {
  return typeof v === 'string' && v.startsWith('$');
}

/** Whether a `$...` string is a well-formed reference (checked at parse time). */
export function isWellFormedRef(s: string): boolean {
  return REF.test(s);
}

/** Resolve `$NAME`, `$NAME.a.b`, `$NAME+N`, `$NAME.a-N`. */
export function resolveRef(s: string, b: Bindings): unknown {
  const m = REF.exec(s);
  if (!m) throw new StepError(`malformed reference ${s}`);
  const name = m[1]!;
  if (!b.has(name)) throw new StepError(`unresolved reference $${name}`);
  let v: unknown = b.get(name);
  const path = m[2] ? m[2].slice(1).split('.') : [];
  for (const f of path) {
    if (v instanceof KernelError)
      throw new StepError(`$${name} is an error (${v.code}), it has no field ${f}`);
    if (v === null || typeof v !== 'object') throw new StepError(`${s}: no field ${f}`);
    if (Array.isArray(v)) {
      const i = Number(f);
      if (!Number.isInteger(i) || i < 0 || i >= v.length) throw new StepError(`${s}: no element ${f}`);
      v = v[i];
    } else {
      if (!Object.hasOwn(v, f)) throw new StepError(`${s}: no field ${f}`);
      v = (v as Record<string, unknown>)[f];
    }
  }
  if (m[3] !== undefined) {
    const base = toBigInt(v);
    if (base === undefined) throw new StepError(`${s}: ${String(v)} is not an integer`);
    const off = BigInt(m[4]!);
    return normInt(m[3] === '+' ? base + off : base - off);
  }
  return v;
}

/** Replace every `$...` reference inside a value (deeply). */
export function resolveDeep(v: unknown, b: Bindings): unknown {
  if (isRef(v)) return resolveRef(v, b);
  if (Array.isArray(v)) return v.map((x) => resolveDeep(x, b));
  if (v !== null && typeof v === 'object' && !(v instanceof Handle) && !(v instanceof KernelError)) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = resolveDeep(x, b);
    return out;
  }
  return v;
}

function isHexBytes(s: string): boolean {
  return /^[0-9a-f\s]*$/i.test(s) && s.replace(/\s+/g, '').length % 2 === 0;
}

/** Does `actual` satisfy `expect` (already reference-resolved)? */
export function matches(expect: unknown, actual: OpResult | undefined): boolean {
  if (expect === 'ok') {
    if (actual instanceof KernelError) return false;
    if (actual !== null && typeof actual === 'object' && !Array.isArray(actual) && 'fault' in actual)
      return false;
    return true;
  }
  if (expect === null || expect === undefined) return actual === null || actual === undefined;
  if (actual instanceof KernelError) {
    if (expect !== null && typeof expect === 'object' && !Array.isArray(expect)) {
      const keys = Object.keys(expect);
      if (keys.length === 1 && keys[0] === 'errno') {
        const e = (expect as Record<string, unknown>)['errno'];
        if (typeof e === 'string' && isErrnoName(e)) return e === actual.code;
        const n = toBigInt(e);
        return n !== undefined && (n === BigInt(actual.errno) || n === BigInt(-actual.errno));
      }
    }
    return false;
  }
  if (expect instanceof Handle) return actual === expect;
  if (Array.isArray(expect)) {
    return (
      Array.isArray(actual) &&
      actual.length === expect.length &&
      expect.every((e, i) => matches(e, actual[i]))
    );
  }
  if (typeof expect === 'object') {
    if (actual === null || typeof actual !== 'object' || Array.isArray(actual) || actual instanceof Handle)
      return false;
    const rec = actual as Record<string, OpResult>;
    for (const [k, e] of Object.entries(expect as Record<string, unknown>)) {
      if (!Object.hasOwn(rec, k)) return false;
      if (!matches(e, rec[k])) return false;
    }
    return true;
  }
  // Scalars.
  if (typeof actual === 'string') {
    if (typeof expect === 'string') {
      if (expect === actual) return true;
      if (isHexBytes(expect) && isHexBytes(actual))
        return expect.replace(/\s+/g, '').toLowerCase() === actual.replace(/\s+/g, '').toLowerCase();
    }
    return false;
  }
  if (typeof actual === 'boolean') return typeof expect === 'boolean' && expect === actual;
  if (typeof actual === 'number' || typeof actual === 'bigint') {
    if (typeof expect === 'boolean') return false;
    const e = toBigInt(expect);
    return e !== undefined && e === BigInt(actual);
  }
  if (actual instanceof Handle) return false;
  return false;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A result in the JSON form SCENARIO.md fixes. */
export function toJsonValue(v: unknown): unknown {
  if (v === undefined || v === null) return null;
  if (typeof v === 'bigint') return v > MAX_SAFE || v < -MAX_SAFE ? `0x${v.toString(16)}` : Number(v);
  if (typeof v === 'number') {
    if (Number.isInteger(v) && !Number.isSafeInteger(v)) return `0x${BigInt(v).toString(16)}`;
    return v;
  }
  if (v instanceof Handle) return v.toString();
  if (v instanceof KernelError) return { errno: v.code };
  if (Array.isArray(v)) return v.map(toJsonValue);
  if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
  if (typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = toJsonValue(x);
    return out;
  }
  return v;
}

/** A compact one-line rendering for text output. */
export function show(v: unknown): string {
  return JSON.stringify(toJsonValue(v)) ?? 'null';
}
