// The benchmark harness of ../shared/bench/WORKLOADS.md: the xorshift32 generator every
// workload restarts from seed 1, the result line shape, and a timer. Workloads themselves live
// beside the code they measure (src/ioasid/bench.ts, src/hw/vtd/bench.ts, ...).

export interface BenchResult {
  workload: string;
  impl?: string;
  ops?: number;
  seconds?: number;
  opsPerSec?: number;
  bytesPerId?: number;
  check?: number | string;
  [k: string]: unknown;
}

/** xorshift32 as WORKLOADS.md defines it, seed 1. */
export class XorShift32 {
  // Kept as int32 so the field stays a small integer (an unsigned value above 2^31 would be
  // boxed as a heap number on every store); next() gives the unsigned value.
  private x = 1;
  /** The current state as int32, for a loop that continues the sequence inline. */
  get state(): number {
    return this.x;
  }
  next(): number {
    let x = this.x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.x = x | 0;
    return x >>> 0;
  }
}

export function now(): number {
  return performance.now() / 1000;
}

export function result(
  workload: string,
  ops: number,
  seconds: number,
  extra: Partial<BenchResult> = {},
): BenchResult {
  return {
    workload,
    ...extra,
    ops,
    seconds: Number(seconds.toFixed(6)),
    opsPerSec: Math.round(ops / seconds),
  };
}
