// The translation benchmark workloads of shared/bench/WORKLOADS.md, run against the VT-d model
// through its normal DMA-translate entry point (source-id + PASID + address + access), with
// every table written into emulated memory as a driver would:
//   translate-iotlb-hit   first-level PASID, 4-level tables, 512 hot pages, every lookup an IOTLB hit
//   translate-nested-walk nested PASID (4-level FL over 4-level SL), IOTLB off, 24 memory references each
// The `check` value is the sum of the translated addresses, the same sum the C reference prints.

import { DEFAULT_VTD, type VtdConfig } from '../../machine-config.ts';
import { PhysicalMemory } from '../memory.ts';
import * as faults from './faults.ts';
import { PGTT_FL, PGTT_NESTED, VtdIommu } from './iommu.ts';
import { mapFl, mapSl, PageAllocator, VtdTables } from './tables.ts';

export interface BenchResult {
  workload: string;
  ops: number;
  seconds: number;
  opsPerSec: number;
  /** Sum of the translated addresses (decimal), comparable with the C reference's. */
  check?: string;
}

// a module-level copy: imported bindings are accessor calls after transpilation
const ACCESS_READ = faults.ACCESS_READ;
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const SID = 0x0010; // 00:02.0

function result(workload: string, ops: number, seconds: number, check: bigint): BenchResult {
  return { workload, ops, seconds, opsPerSec: Math.round(ops / seconds), check: check.toString() };
}

function setupIotlbHit(): VtdIommu {
  const mem = new PhysicalMemory(2n * BigInt(GiB));
  const cfg: VtdConfig = { ...DEFAULT_VTD };
  const iommu = new VtdIommu(mem, cfg);
  const tb = new VtdTables(mem, 256 * MiB, GiB);
  const dir = tb.allocPasidDir(7);
  tb.setContext(SID, { p: 1, paside: 1, pdts: 7, pasidDirPtr: dir });
  const flRoot = tb.pages.alloc();
  tb.setPasidEntry(dir, 1, { p: 1, pgtt: PGTT_FL, did: 1, aw: 2, flptptr: flRoot });
  const alloc = () => tb.pages.alloc();
  for (let v = 0; v < (64 * MiB) / 4096; v++) {
    mapFl(mem, flRoot, v * 4096, GiB + ((v * 2654435761) % 16384) * 4096, { rw: true, us: true }, alloc);
  }
  tb.install(iommu);
  for (let v = 0; v < 512; v++) iommu.translate(SID, 1, v * 4096, ACCESS_READ, false);
  iommu.iotlb.misses = 0;
  return iommu;
}

// The timed loops run in batches, each a call of a small function: run once in full as the
// warm-up, a loop would be entered afterwards through on-stack replacement, whose code may box
// numbers and allocate; a function called again and again runs its ordinary optimized code. The
// xorshift32 state carries from one batch to the next (seed 1, as WORKLOADS.md restarts it).
const BATCH = 100_000;
let rng = 1;

function iotlbHitBatch(iommu: VtdIommu, k0: number, end: number): number {
  let x = rng;
  let sum = 0;
  for (let k = k0; k < end; k++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const va = ((x & 511) << 12) | (k & 0xff8);
    const h = iommu.translate(SID, 1, va, ACCESS_READ, false);
    if (h < 0) throw new Error(`translate-iotlb-hit: fault at 0x${va.toString(16)}`);
    sum += h;
  }
  rng = x;
  return sum;
}

function runIotlbHit(iommu: VtdIommu, n: number): { seconds: number; check: bigint } {
  rng = 1;
  let total = 0n;
  const t0 = process.hrtime.bigint();
  for (let k0 = 0; k0 < n; k0 += BATCH) total += BigInt(iotlbHitBatch(iommu, k0, Math.min(n, k0 + BATCH)));
  const t1 = process.hrtime.bigint();
  return { seconds: Number(t1 - t0) / 1e9, check: total };
}

/** translate-iotlb-hit (WORKLOADS.md): 10,000,000 IOTLB-hit read translations. */
export function benchTranslateIotlbHit(ops = 10_000_000): BenchResult {
  const iommu = setupIotlbHit();
  runIotlbHit(iommu, ops); // warm-up (JIT)
  const r = runIotlbHit(iommu, ops);
  if (iommu.iotlb.misses !== 0) throw new Error(`translate-iotlb-hit: ${iommu.iotlb.misses} IOTLB misses`);
  return result('translate-iotlb-hit', ops, r.seconds, r.check);
}

function setupNested(): VtdIommu {
  const mem = new PhysicalMemory(8n * BigInt(GiB));
  const cfg: VtdConfig = { ...DEFAULT_VTD, iotlb_entries: 0 };
  const iommu = new VtdIommu(mem, cfg);
  const tb = new VtdTables(mem, 512 * MiB, 4 * GiB);
  const dir = tb.allocPasidDir(7);
  tb.setContext(SID, { p: 1, paside: 1, pdts: 7, pasidDirPtr: dir });
  const slRoot = tb.pages.alloc();
  const hostAlloc = () => tb.pages.alloc();
  // second level: GPA [0, 4 GiB) -> HPA GPA + 4 GiB, 4 KiB pages
  for (let g = 0; g < (4 * GiB) / 4096; g++)
    mapSl(mem, slRoot, g * 4096, g * 4096 + 4 * GiB, { r: true, w: true }, hostAlloc);
  // first level in guest memory from GPA 16 MiB: GVA page v in [0, 1 GiB) -> GPA page (v * 2654435761) mod 2^20
  const guest = new PageAllocator(16 * MiB, 4 * GiB);
  const g2h = (a: number) => a + 4 * GiB;
  const flRoot = guest.alloc();
  const galloc = () => guest.alloc();
  for (let v = 0; v < GiB / 4096; v++) {
    mapFl(mem, flRoot, v * 4096, ((v * 2654435761) % 2 ** 20) * 4096, { rw: true, us: true }, galloc, g2h);
  }
  tb.setPasidEntry(dir, 1, { p: 1, pgtt: PGTT_NESTED, did: 1, aw: 2, slptptr: slRoot, flptptr: flRoot });
  tb.install(iommu);
  return iommu;
}

function nestedBatch(iommu: VtdIommu, k0: number, end: number): number {
  let x = rng;
  let sum = 0;
  for (let k = k0; k < end; k++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const gva = (x & 0x3ffff) * 4096 + (k & 0xff8);
    const h = iommu.translate(SID, 1, gva, ACCESS_READ, false);
    if (h < 0) throw new Error(`translate-nested-walk: fault at 0x${gva.toString(16)}`);
    sum += h;
  }
  rng = x;
  return sum;
}

function runNested(iommu: VtdIommu, n: number): { seconds: number; check: bigint } {
  rng = 1;
  let total = 0n;
  const t0 = process.hrtime.bigint();
  for (let k0 = 0; k0 < n; k0 += BATCH) total += BigInt(nestedBatch(iommu, k0, Math.min(n, k0 + BATCH)));
  const t1 = process.hrtime.bigint();
  return { seconds: Number(t1 - t0) / 1e9, check: total };
}

/** translate-nested-walk (WORKLOADS.md): 2,000,000 full nested walks (IOTLB off). */
export function benchTranslateNestedWalk(ops = 2_000_000): BenchResult {
  const iommu = setupNested();
  runNested(iommu, ops); // warm-up (JIT; also sets the accessed bits, as the reference's first touch does)
  const r = runNested(iommu, ops);
  return result('translate-nested-walk', ops, r.seconds, r.check);
}
