// Benchmark `ioas-map-unmap` (shared/bench/WORKLOADS.md, C reference bench/ref/map_ref.c):
// one IOAS, one paging HWPT attached to one device, IOMMU_OPTION_HUGE_PAGES = 0, 1 GiB of user
// memory touched before timing; timed: 4 rounds of IOMMU_IOAS_MAP (FIXED_IOVA, READABLE,
// WRITEABLE) of it followed by IOMMU_IOAS_UNMAP, counted per 4 KiB page mapped or unmapped.
// Every call goes through the ioctl engine with real struct bytes, so the figure includes
// pinning, accounting, the io_pagetable and the domain's page table.
//
// The workload asks for a VT-d second-level paging domain. Until the VT-d IOMMU driver exists
// the HWPT is the selftest mock's paging domain (2 KiB IO pages, aperture from 16 MiB, so the
// fixed IOVA is MOCK_APERTURE_START rather than 0); the result says which domain was measured.

import type { BenchResult } from '../bench/harness.ts';
import { IommufdHost, ioctl } from './engine.ts';
import { MAP_ANONYMOUS, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE } from './process.ts';
import { build, decodeAny, IOCTLS } from './uapi/index.ts';

/** The bench harness's result; `domain` says which paging domain the HWPT was. */
export type { BenchResult };

export function benchIoasMapUnmap(opts: { bytes?: number; rounds?: number } = {}): BenchResult {
  const bytes = opts.bytes ?? 1 << 30;
  const rounds = opts.rounds ?? 4;
  const host = new IommufdHost({ mockVfioDevices: 0 });
  const p = host.spawn();
  const fd = p.open('/dev/iommu') as number;
  const call = (name: keyof typeof IOCTLS, fields: Record<string, unknown>) => {
    const def = IOCTLS[name];
    const r = ioctl(p, fd, def.cmd, build(def.struct!, fields));
    if (r.ret !== 0) throw new Error(`${name} failed: ${r.error?.message}`);
    return decodeAny(def.struct!, r.arg);
  };
  const ioas = call('IOMMU_IOAS_ALLOC', {})['out_ioas_id'] as number;
  call('IOMMU_OPTION', { option_id: 1, op: 0, object_id: ioas, val64: 0n });
  // One device attached to a paging HWPT on the IOAS (IOMMU_TEST_OP_MOCK_DOMAIN).
  call('IOMMU_TEST_CMD', { op: 2, id: ioas });
  const buf = p.mmap(bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
  // Touch the memory before timing (allowed by the workload).
  for (let va = buf; va < buf + bytes; va += PAGE_SIZE) p.mm.fault(va, true);
  const iova = 1n << 24n;
  const map = { ioas_id: ioas, flags: 7, user_va: BigInt(buf), length: BigInt(bytes), iova };
  const unmap = { ioas_id: ioas, iova, length: BigInt(bytes) };
  // Warm the JIT on a small range first (untimed), as the C reference needs no warm-up.
  const warm = Math.min(bytes, 32 << 20);
  for (let r = 0; r < 3; r++) {
    call('IOMMU_IOAS_MAP', { ...map, length: BigInt(warm) });
    call('IOMMU_IOAS_UNMAP', { ...unmap, length: BigInt(warm) });
  }
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) {
    call('IOMMU_IOAS_MAP', map);
    call('IOMMU_IOAS_UNMAP', unmap);
  }
  const seconds = (performance.now() - t0) / 1000;
  p.exit();
  const ops = rounds * (bytes / PAGE_SIZE) * 2;
  return {
    workload: 'ioas-map-unmap',
    ops,
    seconds: Number(seconds.toFixed(6)),
    opsPerSec: Math.round(ops / seconds),
    domain: 'mock',
  };
}
