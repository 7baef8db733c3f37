// Benchmark `ioas-map-unmap` (shared/bench/WORKLOADS.md, C reference bench/ref/map_ref.c):
// one IOAS, one paging HWPT in VT-d second-level format attached to one device,
// IOMMU_OPTION_HUGE_PAGES = 0 (4 KiB pages only), 1 GiB of user memory touched before timing;
// timed: 4 rounds of IOMMU_IOAS_MAP (FIXED_IOVA, READABLE, WRITEABLE) of it at IOVA 0 followed
// by IOMMU_IOAS_UNMAP, counted per 4 KiB page mapped or unmapped. Every call goes through the
// ioctl engine with real struct bytes, so the figure includes pinning, accounting, the
// io_pagetable, the Intel driver writing second-level entries into the machine's memory, and
// the IOTLB invalidation through the invalidation queue that each unmap ends with.
//
// The machine: 2 GiB of memory (the 1 GiB buffer and the tables come from it), one VT-d unit
// reporting second-level translation only (ECAP.FLTS clear, as QEMU's scalable mode without
// x-flts), so the kernel's choice for a plain paging HWPT is the second-level format; one
// device behind it, bound through its VFIO cdev.

import type { BenchResult } from '../bench/harness.ts';
import { FaultInjector } from '../core/fault.ts';
import { createPlatform } from '../hw/platform.ts';
import { buildCapRegisters, ECAP } from '../hw/vtd/regs.ts';
import { IntelIommuDriver } from '../iommu/intel.ts';
import { DEFAULT_VTD } from '../machine-config.ts';
import { IommufdHost, ioctl } from './engine.ts';
import { MAP_ANONYMOUS, MAP_SHARED, PAGE_SIZE, PhysMem, PROT_READ, PROT_WRITE } from './process.ts';
import { build, decodeAny, IOCTLS } from './uapi/index.ts';

export type { BenchResult };

export function benchIoasMapUnmap(opts: { bytes?: number; rounds?: number } = {}): BenchResult {
  const bytes = opts.bytes ?? 1 << 30;
  const rounds = opts.rounds ?? 4;
  const ecap = buildCapRegisters(DEFAULT_VTD).ecap & ~ECAP.FLTS;
  const platform = createPlatform(
    {
      iommus: [{ ...DEFAULT_VTD, ecap }],
      memory: BigInt(bytes) * 2n,
      devices: [{ bdf: '00:02.0', iommu: 0, pasid_bits: 20, ats: false }],
    },
    { debug: false },
  );
  const phys = new PhysMem(platform.memory);
  const faults = new FaultInjector();
  const intel = new IntelIommuDriver({ platform, frames: phys, faults });
  const booted = intel.init();
  if (booted) throw new Error(`intel_iommu_init: ${booted.message}`);
  const host = new IommufdHost({ phys, devices: intel.devices, faults });
  const p = host.spawn();
  const fd = p.open('/dev/iommu') as number;
  const dfd = p.open('/dev/vfio/devices/vfio0') as number;
  const call = (f: number, name: keyof typeof IOCTLS, fields: Record<string, unknown>) => {
    const def = IOCTLS[name];
    const r = ioctl(p, f, def.cmd, build(def.struct!, fields));
    if (r.ret !== 0) throw new Error(`${name} failed: ${r.error?.message}`);
    return decodeAny(def.struct!, r.arg);
  };
  const devId = call(dfd, 'VFIO_DEVICE_BIND_IOMMUFD', { iommufd: fd })['out_devid'] as number;
  const ioas = call(fd, 'IOMMU_IOAS_ALLOC', {})['out_ioas_id'] as number;
  call(fd, 'IOMMU_OPTION', { option_id: 1, op: 0, object_id: ioas, val64: 0n });
  const hwpt = call(fd, 'IOMMU_HWPT_ALLOC', { dev_id: devId, pt_id: ioas })['out_hwpt_id'] as number;
  call(dfd, 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', { pt_id: hwpt });
  const domain = intel.devices[0]!.group.domain;
  const kind = (domain.priv as { kind?: string }).kind;
  if (kind !== 'ss') throw new Error(`the HWPT is not a second-level domain (${kind})`);
  const buf = p.mmap(bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
  // Touch the memory before timing (allowed by the workload).
  for (let va = buf; va < buf + bytes; va += PAGE_SIZE) p.mm.fault(va, true);
  const iova = 0n;
  const map = { ioas_id: ioas, flags: 7, user_va: BigInt(buf), length: BigInt(bytes), iova };
  const unmap = { ioas_id: ioas, iova, length: BigInt(bytes) };
  // Warm the JIT first (untimed, as WORKLOADS.md allows; the C reference needs no warm-up):
  // a few small rounds, then one round of the whole workload.
  const warm = Math.min(bytes, 32 << 20);
  for (let r = 0; r < 3; r++) {
    call(fd, 'IOMMU_IOAS_MAP', { ...map, length: BigInt(warm) });
    call(fd, 'IOMMU_IOAS_UNMAP', { ...unmap, length: BigInt(warm) });
  }
  call(fd, 'IOMMU_IOAS_MAP', map);
  call(fd, 'IOMMU_IOAS_UNMAP', unmap);
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) {
    call(fd, 'IOMMU_IOAS_MAP', map);
    call(fd, 'IOMMU_IOAS_UNMAP', unmap);
  }
  const seconds = (performance.now() - t0) / 1000;
  p.exit();
  const ops = rounds * (bytes / PAGE_SIZE) * 2;
  return {
    workload: 'ioas-map-unmap',
    ops,
    seconds: Number(seconds.toFixed(6)),
    opsPerSec: Math.round(ops / seconds),
    domain: 'vtd-sl',
  };
}
