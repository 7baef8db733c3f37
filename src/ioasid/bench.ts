// Benchmarks of the IOASID core (../shared/bench/WORKLOADS.md: alloc-fill, alloc-churn, find,
// pasid-memory) and the peer line for alloc-churn on the most used npm ID allocator. Each
// workload builds its own machine, runs once untimed to warm the JIT, then the timed run.

import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { type BenchResult, now, result, XorShift32 } from '../bench/harness.ts';
import { INVALID_IOASID, IOASID_SET_TYPE_NULL, IoasidCore, IoasidSet } from './ioasid.ts';

const MAXID = 0xfffff;

function freshSet(): { core: IoasidCore; set: IoasidSet } {
  const core = new IoasidCore({ profile: 'v3', debug: false });
  const set = core.ioasidSetAlloc(null, MAXID, IOASID_SET_TYPE_NULL);
  if (!(set instanceof IoasidSet)) throw new Error(`bench: ${set.message}`);
  return { core, set };
}

function allocFillOnce(): BenchResult {
  const { core, set } = freshSet();
  const t0 = now();
  let ops = 0;
  for (let i = 1; i <= MAXID; i++) {
    const id = core.ioasidAlloc(set, 1, MAXID, null);
    if (id !== i) throw new Error(`alloc-fill: got ${id}, expected ${i}`);
    ops++;
  }
  if (core.ioasidAlloc(set, 1, MAXID, null) !== INVALID_IOASID)
    throw new Error('alloc-fill: full space allocated');
  for (let i = 1; i <= MAXID; i++) {
    core.ioasidFree(set, i);
    ops++;
  }
  const t1 = now();
  if (core.liveCount !== 0) throw new Error('alloc-fill: IDs left');
  return result('alloc-fill', ops, t1 - t0);
}

export function benchAllocFill(): BenchResult {
  allocFillOnce();
  return allocFillOnce();
}

function allocChurnOnce(): BenchResult {
  const { core, set } = freshSet();
  for (let i = 1; i <= MAXID; i++) core.ioasidAlloc(set, 1, MAXID, null);
  const rng = new XorShift32();
  const live: number[] = [];
  for (let i = 1; i <= MAXID; i++) {
    if (rng.next() & 1) core.ioasidFree(set, i);
    else live.push(i);
  }
  const n = live.length;
  let sum = 0;
  // xorshift32 inline (the same sequence as XorShift32, continuing from it): a method call and
  // a boxed state per draw would cost as much as the allocator operation being measured.
  let x = rng.next() | 0;
  const t0 = now();
  for (let k = 0; k < 4_000_000; k++) {
    const j = (x >>> 0) % n;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    core.ioasidFree(set, live[j]!);
    const id = core.ioasidAlloc(set, 1, MAXID, null);
    live[j] = id;
    sum += id;
  }
  const t1 = now();
  return result('alloc-churn', 8_000_000, t1 - t0, { check: sum });
}

export function benchAllocChurn(): BenchResult {
  allocChurnOnce();
  return allocChurnOnce();
}

/** The same churn on number-allocator (the npm package mqtt.js uses for packet IDs). */
export async function benchAllocChurnNumberAllocator(): Promise<BenchResult> {
  const { NumberAllocator } = (await import('number-allocator')) as unknown as {
    NumberAllocator: new (min: number, max: number) => { alloc(): number | null; free(n: number): void };
  };
  const a = new NumberAllocator(1, MAXID);
  for (let i = 1; i <= MAXID; i++) a.alloc();
  const rng = new XorShift32();
  const live: number[] = [];
  for (let i = 1; i <= MAXID; i++) {
    if (rng.next() & 1) a.free(i);
    else live.push(i);
  }
  const n = live.length;
  let sum = 0;
  const t0 = now();
  for (let k = 0; k < 4_000_000; k++) {
    const j = rng.next() % n;
    a.free(live[j]!);
    const id = a.alloc() ?? 0;
    live[j] = id;
    sum += id;
  }
  const t1 = now();
  return result('alloc-churn', 8_000_000, t1 - t0, { impl: 'number-allocator', check: sum });
}

function findOnce(): BenchResult {
  const { core, set } = freshSet();
  for (let i = 1; i <= MAXID; i++) core.ioasidAlloc(set, 1, MAXID, { id: i });
  let x = 1;
  let sum = 0;
  const t0 = now();
  for (let k = 0; k < 10_000_000; k++) {
    // xorshift32, seed 1, inline (see allocChurnOnce).
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const id = 1 + ((x >>> 0) % MAXID);
    const p = core.ioasidFind(set, id) as { id: number };
    sum += p.id;
  }
  const t1 = now();
  return result('find', 10_000_000, t1 - t0, { check: sum });
}

export function benchFind(): BenchResult {
  findOnce();
  return findOnce();
}

function gcFn(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

function used(): number {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Bytes per live ID beyond the private-data objects themselves. */
export function benchPasidMemory(): BenchResult {
  const gc = gcFn();
  const objs: { id: number }[] = new Array(MAXID);
  for (let i = 0; i < MAXID; i++) objs[i] = { id: i + 1 };
  gc();
  gc();
  const base = used();
  const { core, set } = freshSet();
  for (let i = 1; i <= MAXID; i++) core.ioasidAlloc(set, 1, MAXID, objs[i - 1]);
  gc();
  gc();
  const after = used();
  if (core.liveCount !== MAXID) throw new Error('pasid-memory: not all allocated');
  return { workload: 'pasid-memory', bytesPerId: Number(((after - base) / MAXID).toFixed(2)) };
}
