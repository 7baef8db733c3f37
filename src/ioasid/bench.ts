// Benchmarks of the IOASID core (../shared/bench/WORKLOADS.md: alloc-fill, alloc-churn, find,
// pasid-memory) and the peer line for alloc-churn on the most used npm ID allocator. Each
// workload builds its own machine, runs once untimed to warm the JIT, then the timed run.
//
// Each timed loop is a function called on batches of BATCH rounds rather than one loop over all
// of them: V8 compiles a loop that runs for the first time through on-stack replacement, and
// that code keeps boxing numbers on this loop (a minor GC every few ten milliseconds) until the
// function is compiled afresh. In batches, the warm-up run has called the function often enough
// that the timed run executes ordinary optimized code. The work and its order are unchanged.

import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { type BenchResult, now, result, XorShift32 } from '../bench/harness.ts';
import { INVALID_IOASID, IOASID_SET_TYPE_NULL, IoasidCore, IoasidSet } from './ioasid.ts';

const MAXID = 0xfffff;
const BATCH = 100_000;

function freshSet(): { core: IoasidCore; set: IoasidSet } {
  const core = new IoasidCore({ profile: 'v3', debug: false });
  const set = core.ioasidSetAlloc(null, MAXID, IOASID_SET_TYPE_NULL);
  if (!(set instanceof IoasidSet)) throw new Error(`bench: ${set.message}`);
  return { core, set };
}

/** Allocates IDs from..to - 1 (each must be the lowest free one, which is the next). */
function fillBatch(core: IoasidCore, set: IoasidSet, from: number, to: number): void {
  for (let i = from; i < to; i++) {
    const id = core.ioasidAlloc(set, 1, MAXID, null);
    if (id !== i) throw new Error(`alloc-fill: got ${id}, expected ${i}`);
  }
}

function freeBatch(core: IoasidCore, set: IoasidSet, from: number, to: number): void {
  for (let i = from; i < to; i++) core.ioasidFree(set, i);
}

function allocFillOnce(): BenchResult {
  const { core, set } = freshSet();
  const t0 = now();
  for (let i = 1; i <= MAXID; i += BATCH) fillBatch(core, set, i, Math.min(i + BATCH, MAXID + 1));
  if (core.ioasidAlloc(set, 1, MAXID, null) !== INVALID_IOASID)
    throw new Error('alloc-fill: full space allocated');
  for (let i = 1; i <= MAXID; i += BATCH) freeBatch(core, set, i, Math.min(i + BATCH, MAXID + 1));
  const t1 = now();
  if (core.liveCount !== 0) throw new Error('alloc-fill: IDs left');
  return result('alloc-fill', 2 * MAXID, t1 - t0);
}

export function benchAllocFill(): BenchResult {
  allocFillOnce();
  return allocFillOnce();
}

/** rand() % n for an unsigned 32-bit rand() and 0 < n < 2^31, as exact as the integer modulo. */
function modU32(u: number, n: number): number {
  // V8 has no unsigned integer modulo: `u % n` on a value above 2^31 becomes x87 fprem. The
  // quotient through a double is exact here (u * n < 2^53, so u / n cannot round to the next
  // integer), so this is the C reference's `xs() % nlive`.
  return u - Math.floor(u / n) * n;
}

/** Fill 1..MAXID, then free every ID whose draw is odd; the rest, ascending, are `live`. */
function churnSetup(
  alloc: () => number,
  free: (id: number) => void,
  rng: XorShift32,
): { live: Int32Array; n: number } {
  for (let i = 1; i <= MAXID; i++) alloc();
  const live = new Int32Array(MAXID);
  let n = 0;
  for (let i = 1; i <= MAXID; i++) {
    if (rng.next() & 1) free(i);
    else live[n++] = i;
  }
  return { live, n };
}

/** State of a timed loop carried across its batches: the xorshift32 state and the check sum. */
interface LoopState {
  x: number;
  sum: number;
}

/** `rounds` churn rounds: free a random live ID, allocate the lowest free one in its place. */
function churnBatch(
  core: IoasidCore,
  set: IoasidSet,
  live: Int32Array,
  n: number,
  st: LoopState,
  rounds: number,
): void {
  // xorshift32 inline (the same sequence as XorShift32): a method call and a boxed state per
  // draw would cost as much as the allocator operation being measured.
  let x = st.x;
  let sum = 0;
  for (let k = 0; k < rounds; k++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const j = modU32(x >>> 0, n);
    core.ioasidFree(set, live[j]!);
    const id = core.ioasidAlloc(set, 1, MAXID, null);
    live[j] = id;
    sum += id;
  }
  st.x = x;
  st.sum += sum;
}

function allocChurnOnce(): BenchResult {
  const { core, set } = freshSet();
  const rng = new XorShift32();
  const { live, n } = churnSetup(
    () => core.ioasidAlloc(set, 1, MAXID, null),
    (id) => core.ioasidFree(set, id),
    rng,
  );
  const st: LoopState = { x: rng.state, sum: 0 };
  const t0 = now();
  for (let done = 0; done < 4_000_000; done += BATCH) churnBatch(core, set, live, n, st, BATCH);
  const t1 = now();
  return result('alloc-churn', 8_000_000, t1 - t0, { check: st.sum });
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
  const rng = new XorShift32();
  const { live, n } = churnSetup(
    () => a.alloc() ?? 0,
    (id) => a.free(id),
    rng,
  );
  let sum = 0;
  const t0 = now();
  for (let k = 0; k < 4_000_000; k++) {
    const j = modU32(rng.next(), n);
    a.free(live[j]!);
    const id = a.alloc() ?? 0;
    live[j] = id;
    sum += id;
  }
  const t1 = now();
  return result('alloc-churn', 8_000_000, t1 - t0, { impl: 'number-allocator', check: sum });
}

function findBatch(core: IoasidCore, set: IoasidSet, st: LoopState, rounds: number): void {
  let x = st.x;
  let sum = 0;
  for (let k = 0; k < rounds; k++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const id = 1 + ((x >>> 0) % MAXID);
    const p = core.ioasidFind(set, id) as { id: number };
    sum += p.id;
  }
  st.x = x;
  st.sum += sum;
}

function findOnce(): BenchResult {
  const { core, set } = freshSet();
  for (let i = 1; i <= MAXID; i++) core.ioasidAlloc(set, 1, MAXID, { id: i });
  const st: LoopState = { x: 1, sum: 0 };
  const t0 = now();
  for (let done = 0; done < 10_000_000; done += BATCH) findBatch(core, set, st, BATCH);
  const t1 = now();
  return result('find', 10_000_000, t1 - t0, { check: st.sum });
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
  // Use the baseline's array after the last measurement: optimized code may drop a local it no
  // longer reads, and a collected `objs` would hide 8 bytes per ID of our own growth.
  if (objs[MAXID - 1]!.id !== MAXID || core.ioasidFind(set, MAXID) !== objs[MAXID - 1])
    throw new Error('pasid-memory: private data lost');
  return { workload: 'pasid-memory', bytesPerId: Number(((after - base) / MAXID).toFixed(2)) };
}
