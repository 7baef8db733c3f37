// The Intel VT-d driver against the VT-d model, through the ioctl engine with real struct bytes:
// a process opens /dev/iommu and a VFIO device file, binds, maps user memory it filled, attaches
// the device (RID or PASID), and the machine's device DMA reads and writes exactly that memory
// through the tables the driver wrote; UNMAP makes the same DMA fault with the spec's reason;
// replace switches translations with no stale IOTLB result; a nested (VT-d stage-1) HWPT over a
// nesting parent translates GVA -> GPA -> HPA. Debug mode (PASIDKIT_DEBUG=1) runs the VT-d
// model's invariants and the driver's (no stale cached translation anywhere) after every ioctl;
// the tests also call them after each DMA. A fail_nth sweep proves nothing leaks.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ERRNO, type ErrnoName } from '../core/errno.ts';
import { InvariantError } from '../core/invariants.ts';
import type { DmaResult } from '../hw/pci.ts';
import { buildCapRegisters, ECAP } from '../hw/vtd/regs.ts';
import { ioctl } from '../iommufd/engine.ts';
import {
  MAP_ANONYMOUS,
  MAP_HUGETLB,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
  type Process,
} from '../iommufd/process.ts';
import { build, decodeAny, IOCTLS, type IoctlName, STRUCTS } from '../iommufd/uapi/index.ts';
import { Machine } from '../machine.ts';
import { DEFAULT_VTD, type DeviceConfig, type MachineConfig, type VtdConfig } from '../machine-config.ts';
import {
  IommuDevice,
  iommuAttachDevicePasid,
  iommuAttachGroup,
  iommuDetachDevicePasid,
  iommuDetachGroup,
  iommuDeviceClaimDmaOwner,
  iommuDeviceReleaseDmaOwner,
} from './core.ts';
import { type DmarDomain, IOMMU_HW_INFO_TYPE_INTEL_VTD } from './intel.ts';
import * as tables from './intel-pasid.ts';
import { pasidEntryAddr, readPasidEntry } from './intel-pasid.ts';

const MAP_RW_FIXED = 1 | 2 | 4; // FIXED_IOVA | WRITEABLE | READABLE
const VFIO_DEVICE_ATTACH_PASID = 1;
const HWPT_ALLOC_NEST_PARENT = 1;
const HWPT_ALLOC_DIRTY_TRACKING = 2;
const HWPT_ALLOC_PASID = 8;
const KiB = 1024;
const MiB = 1024 * 1024;

interface Res {
  ret: number;
  errno: ErrnoName | null;
  out: Record<string, unknown>;
}

function dev(bdf: string, o: Partial<DeviceConfig> = {}): DeviceConfig {
  return { bdf, iommu: 0, pasid_bits: 20, ats: false, ...o };
}

/** A machine with devices, a process on its iommufd host, /dev/iommu open. */
class Host {
  readonly m: Machine;
  readonly p: Process;
  readonly fd: number;
  constructor(
    o: { devices?: DeviceConfig[]; vtd?: Partial<VtdConfig>; memory?: bigint; config?: MachineConfig } = {},
  ) {
    const config: MachineConfig = o.config ?? {
      iommus: [{ ...DEFAULT_VTD, ...o.vtd }],
      memory: o.memory ?? 256n * BigInt(MiB),
      devices: o.devices ?? [dev('00:02.0')],
    };
    this.m = new Machine({ config, debug: true });
    this.p = this.m.iommufd.spawn();
    this.fd = this.p.open('/dev/iommu') as number;
  }
  get intel() {
    return this.m.intel;
  }
  io(name: IoctlName, fields: Record<string, unknown>, fd = this.fd): Res {
    const def = IOCTLS[name];
    const r = ioctl(this.p, fd, def.cmd, build(def.struct!, fields));
    return {
      ret: r.ret,
      errno: r.error?.code ?? null,
      out: decodeAny(def.struct!, r.arg) as Record<string, unknown>,
    };
  }
  ok(name: IoctlName, fields: Record<string, unknown>, fd = this.fd): Record<string, unknown> {
    const r = this.io(name, fields, fd);
    assert.equal(r.ret, 0, `${name}: ${r.errno}`);
    return r.out;
  }
  err(e: ErrnoName, name: IoctlName, fields: Record<string, unknown>, fd = this.fd): void {
    const r = this.io(name, fields, fd);
    assert.equal(r.errno, e, `${name}: expected ${e}, got ${r.errno ?? 'success'}`);
    assert.equal(r.ret, -ERRNO[e]);
  }
  /** Opens /dev/vfio/devices/vfio<i> and binds it: the device's fd and object ID. */
  bind(i = 0): { dfd: number; devId: number } {
    const dfd = this.p.open(`/dev/vfio/devices/vfio${i}`) as number;
    assert.equal(typeof dfd, 'number');
    const devId = this.ok('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: this.fd }, dfd)['out_devid'] as number;
    return { dfd, devId };
  }
  ioas(): number {
    return this.ok('IOMMU_IOAS_ALLOC', {})['out_ioas_id'] as number;
  }
  mmap(len: number, flags = MAP_SHARED | MAP_ANONYMOUS): number {
    const va = this.p.mmap(len, PROT_READ | PROT_WRITE, flags);
    assert.equal(typeof va, 'number');
    return va as number;
  }
  /** Fresh user memory filled with a pattern derived from `seed`. */
  filled(len: number, seed: number): { va: number; bytes: Uint8Array } {
    const va = this.mmap(len);
    const bytes = new Uint8Array(len);
    for (let i = 0; i < len; i++) bytes[i] = (i * 7 + seed * 13 + (i >> 12)) & 0xff;
    assert.equal(this.p.poke(va, bytes), undefined);
    return { va, bytes };
  }
  map(ioas: number, va: number, len: number, iova: number, flags = MAP_RW_FIXED): void {
    this.ok('IOMMU_IOAS_MAP', {
      ioas_id: ioas,
      flags,
      user_va: BigInt(va),
      length: BigInt(len),
      iova: BigInt(iova),
    });
  }
  unmap(ioas: number, iova: number, len: number): void {
    this.ok('IOMMU_IOAS_UNMAP', { ioas_id: ioas, iova: BigInt(iova), length: BigInt(len) });
  }
  hwpt(devId: number, ptId: number, flags = 0, data?: { type: number; bytes: Uint8Array }): number {
    const f: Record<string, unknown> = { flags, dev_id: devId, pt_id: ptId };
    if (data) {
      f['data_type'] = data.type;
      f['data_len'] = data.bytes.length;
      f['data_uptr'] = BigInt(this.place(data.bytes));
    }
    return this.ok('IOMMU_HWPT_ALLOC', f)['out_hwpt_id'] as number;
  }
  attach(dfd: number, ptId: number, pasid?: number): Res {
    return this.io(
      'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
      pasid === undefined ? { pt_id: ptId } : { flags: VFIO_DEVICE_ATTACH_PASID, pt_id: ptId, pasid },
      dfd,
    );
  }
  place(bytes: Uint8Array): number {
    const va = this.mmap(Math.max(bytes.length, 1));
    assert.equal(this.p.poke(va, bytes), undefined);
    return va;
  }
  peek(va: number, len: number): Uint8Array {
    const b = this.p.peek(va, len);
    assert.ok(b instanceof Uint8Array);
    return b;
  }
  /** A DMA by machine device i; checks every invariant afterwards. */
  dma(i: number, req: Parameters<Machine['devices'][number]['dma']>[0]): DmaResult {
    const r = this.m.devices[i]!.dma(req);
    assert.ok(!(r instanceof Error), String(r));
    this.m.checkInvariants();
    return r as DmaResult;
  }
  read(i: number, addr: number, length: number, pasid?: number): Uint8Array {
    const r = this.dma(i, { addr, access: 'read', length, ...(pasid !== undefined ? { pasid } : {}) });
    assert.ok('data' in r, `DMA read at 0x${addr.toString(16)} did not complete: ${JSON.stringify(r, big)}`);
    return r.data!;
  }
  write(i: number, addr: number, data: Uint8Array, pasid?: number): void {
    const r = this.dma(i, { addr, access: 'write', data, ...(pasid !== undefined ? { pasid } : {}) });
    assert.ok('hpa' in r, `DMA write at 0x${addr.toString(16)} did not complete: ${JSON.stringify(r, big)}`);
  }
  fault(
    i: number,
    addr: number,
    access: 'read' | 'write',
    pasid?: number,
  ): { reason: number; recorded: boolean } {
    const req =
      access === 'read' ? { addr, access, length: 8 } : { addr, access, data: new Uint8Array(8).fill(0xee) };
    const r = this.dma(i, { ...req, ...(pasid !== undefined ? { pasid } : {}) } as never);
    assert.ok('fault' in r, `expected a fault at 0x${addr.toString(16)}, got ${JSON.stringify(r, big)}`);
    return r.fault;
  }
  unit(i = 0) {
    return this.intel.units[i]!;
  }
  /** The PASID entry the driver wrote for (device i, pasid), as 16 words (null: none). */
  pasidEntry(i: number, pasid: number): Uint32Array | null {
    const info = this.intel.info(this.intel.devices[i]!);
    const a = pasidEntryAddr(info, pasid);
    return a < 0 ? null : readPasidEntry(info, a);
  }
}

function big(_k: string, v: unknown): unknown {
  return typeof v === 'bigint' ? `0x${v.toString(16)}` : v;
}

function pgttOf(w: Uint32Array | null): number {
  return w === null || (w[0]! & 1) === 0 ? 0 : (w[0]! >>> 6) & 7;
}

/** A VT-d unit with second-level translation only (no FLTS): plain paging HWPTs are SL. */
const SL_ONLY: Partial<VtdConfig> = { ecap: buildCapRegisters(DEFAULT_VTD).ecap & ~ECAP.FLTS };

describe('bring-up through the registers', () => {
  test('root table in scalable mode, queued invalidation, translation enabled; each device has a context entry and a PASID directory', () => {
    const h = new Host({
      devices: [dev('00:02.0'), dev('00:03.0', { pasid_bits: 0 }), dev('00:04.0', { pasid_bits: 8 })],
    });
    const u = h.unit().unit;
    const gsts = Number(u.mmioRead(0x1c, 4) as bigint);
    assert.ok(gsts & (1 << 31), 'GSTS.TES');
    assert.ok(gsts & (1 << 30), 'GSTS.RTPS');
    assert.ok(gsts & (1 << 26), 'GSTS.QIES');
    const rtaddr = u.mmioRead(0x20, 8) as bigint;
    assert.equal(rtaddr & 0xc00n, 0x400n, 'RTADDR.TTM = scalable');
    assert.equal(rtaddr & ~0xfffn, BigInt(h.unit().rootFn * 4096));
    const iqa = u.mmioRead(0x90, 8) as bigint;
    assert.equal(iqa & 0x807n, 0x801n, 'IQA: DW = 1 (256-bit descriptors), QS = 1');
    const mem = h.m.hw.memory;
    // context entries: 00:02.0 with PASIDs (PDTS 7: 2^14 directory entries), 00:03.0 without
    const ctx = (sid: number) => {
      const re = mem.readU64(h.unit().rootFn * 4096 + (sid >>> 8) * 16);
      const ct = Number(re & ~0xfffn);
      return mem.readU64(ct + (sid & 0x7f) * 32);
    };
    const c2 = ctx(0x10);
    assert.equal(c2 & 1n, 1n, 'P');
    assert.equal((c2 >> 3n) & 1n, 1n, 'PASIDE');
    assert.equal((c2 >> 9n) & 7n, 7n, 'PDTS for 2^20 PASIDs');
    const c3 = ctx(0x18);
    assert.equal(c3 & 1n, 1n);
    assert.equal((c3 >> 3n) & 1n, 0n, 'no PASIDE without the PASID capability');
    assert.equal((c3 >> 9n) & 7n, 2n, 'the one-page directory of a device without PASIDs');
    assert.equal((ctx(0x20) >> 3n) & 1n, 1n);
    // max_pasids: from the device's width and ECAP.PSS
    assert.deepEqual(
      h.intel.devices.map((d) => d.maxPasids),
      [2 ** 20, 0, 2 ** 8],
    );
    assert.equal(h.unit().faultLog.length, 0);
    h.m.checkInvariants();
  });

  test('/dev/vfio/devices/vfioN are the machine devices in machine order; the mock devices stay available', () => {
    const h = new Host({ devices: [dev('00:02.0'), dev('00:05.0')] });
    assert.equal(h.m.iommufd.devices.length, 2);
    assert.equal(h.m.iommufd.devices[1]!.name, '00:05.0');
    assert.equal(h.m.iommufd.devices[0]!.driver, h.intel);
    assert.equal(typeof h.p.open('/dev/vfio/devices/vfio1'), 'number');
    assert.notEqual(typeof h.p.open('/dev/vfio/devices/vfio2'), 'number');
    const ioas = h.ioas();
    const r = h.ok('IOMMU_TEST_CMD', { op: 2, id: ioas }); // IOMMU_TEST_OP_MOCK_DOMAIN
    assert.ok(r);
  });
});

describe('RID attach: device DMA goes through the tables of the IOAS', () => {
  for (const variant of ['first-stage (auto domain)', 'second-stage (SL-only unit)'] as const) {
    test(`${variant}: DMA reads what the process wrote, writes land in its memory, UNMAP makes it fault`, () => {
      const fs = variant.startsWith('first');
      const h = new Host(fs ? {} : { vtd: SL_ONLY });
      const { dfd } = h.bind();
      const ioas = h.ioas();
      const { va, bytes } = h.filled(64 * KiB, 1);
      const IOVA = 0x4000_0000;
      h.map(ioas, va, 64 * KiB, IOVA);
      const a = h.attach(dfd, ioas);
      assert.equal(a.ret, 0);
      assert.equal(pgttOf(h.pasidEntry(0, 0)), fs ? 1 : 2, 'RID_PASID entry: PGTT first- or second-level');
      // reads: several pages, one crossing a page boundary
      assert.deepEqual(h.read(0, IOVA, 100), bytes.subarray(0, 100));
      assert.deepEqual(h.read(0, IOVA + 0x3ff0, 0x40), bytes.subarray(0x3ff0, 0x4030));
      assert.deepEqual(h.read(0, IOVA + 0xf000, 4096), bytes.subarray(0xf000, 0x10000));
      // writes land in the user's memory
      const data = new TextEncoder().encode('written by 00:02.0 through VT-d');
      h.write(0, IOVA + 0x2100, data);
      assert.deepEqual(h.peek(va + 0x2100, data.length), data);
      // beyond the mapping: fault
      const before = h.unit().faultLog.length;
      const f0 = h.fault(0, IOVA + 64 * KiB, 'read');
      assert.equal(f0.reason, fs ? 0x71 : 0x86);
      // unmap: the same DMA now faults, with the spec's reason, and the fault is recorded
      h.unmap(ioas, IOVA, 64 * KiB);
      const f = h.fault(0, IOVA, 'read');
      assert.equal(
        f.reason,
        fs ? 0x71 : 0x86,
        fs ? 'SFL.2: FL entry not present' : 'SGN.7: no read permission',
      );
      assert.equal(f.recorded, true);
      const w = h.fault(0, IOVA + 0x2100, 'write');
      assert.equal(w.reason, fs ? 0x71 : 0x85);
      assert.equal(w.recorded, true);
      // the driver's fault handler took the records off the unit (dmar_fault)
      const log = h.unit().faultLog.slice(before);
      assert.deepEqual(
        log.map((x) => [x.sid, x.addr, x.reason, x.write]),
        [
          [0x10, BigInt(IOVA + 64 * KiB), fs ? 0x71 : 0x86, false],
          [0x10, BigInt(IOVA), fs ? 0x71 : 0x86, false],
          [0x10, BigInt(IOVA + 0x2000), fs ? 0x71 : 0x85, true],
        ],
      );
    });
  }

  test('a machine larger than the flat memory layout (16 GiB): the same, through the slot layout', () => {
    const h = new Host({ memory: 16n << 30n, vtd: SL_ONLY });
    assert.equal(h.m.hw.memory.flat, null);
    const { dfd } = h.bind();
    const ioas = h.ioas();
    const { va, bytes } = h.filled(64 * KiB, 14);
    h.map(ioas, va, 64 * KiB, 0x200000);
    assert.equal(h.attach(dfd, ioas).ret, 0);
    assert.deepEqual(h.read(0, 0x200000, 64 * KiB), bytes);
    h.write(0, 0x208000, new Uint8Array([7, 7, 7]));
    assert.deepEqual(h.peek(va + 0x8000, 3), new Uint8Array([7, 7, 7]));
    h.unmap(ioas, 0x200000, 64 * KiB);
    assert.equal(h.fault(0, 0x208000, 'read').reason, 0x86);
  });

  test('a NEST_PARENT HWPT is second-stage on a unit with both stages; read-only maps into it are refused (ERRATA_772415_SPR17)', () => {
    const h = new Host();
    const { dfd, devId } = h.bind();
    const ioas = h.ioas();
    const parent = h.hwpt(devId, ioas, HWPT_ALLOC_NEST_PARENT);
    assert.equal(h.attach(dfd, parent).ret, 0);
    assert.equal(pgttOf(h.pasidEntry(0, 0)), 2);
    const { va, bytes } = h.filled(8 * KiB, 2);
    h.map(ioas, va, 8 * KiB, 0x10000);
    assert.deepEqual(h.read(0, 0x10000, 8 * KiB), bytes);
    h.err('EINVAL', 'IOMMU_IOAS_MAP', {
      ioas_id: ioas,
      flags: 1 | 4,
      user_va: BigInt(va),
      length: BigInt(4 * KiB),
      iova: 0x80000n,
    });
  });

  test('a unit with 5-level first-stage paging and no second stage: first-stage domains with 5 levels (FLPM = 1)', () => {
    const h = new Host({
      vtd: { fl_levels: 5, ecap: buildCapRegisters({ ...DEFAULT_VTD, fl_levels: 5 }).ecap & ~ECAP.SLTS },
    });
    const { dfd } = h.bind();
    const ioas = h.ioas();
    const { va, bytes } = h.filled(4 * KiB, 12);
    h.map(ioas, va, 4 * KiB, 0x7000_0000_0000);
    assert.equal(h.attach(dfd, ioas).ret, 0);
    const pe = h.pasidEntry(0, 0)!;
    assert.equal(pgttOf(pe), 1);
    assert.equal((pe[4]! >>> 2) & 3, 1, 'FLPM: 5-level');
    const d = h.intel.devices[0]!.group.domain.priv as DmarDomain;
    assert.equal(d.pt!.levels, 5);
    assert.deepEqual(h.read(0, 0x7000_0000_0000 + 8, 8), bytes.subarray(8, 16));
  });

  test('the interrupt window is a reserved region of the IOAS once a device is attached', () => {
    const h = new Host();
    const { dfd } = h.bind();
    const va = h.mmap(2 * MiB);
    const busy = h.ioas();
    h.map(busy, va, 2 * MiB, 0xfee00000);
    assert.equal(h.attach(dfd, busy).errno, 'EADDRINUSE', 'the window is mapped: no reservation');
    const ioas = h.ioas();
    assert.equal(h.attach(dfd, ioas).ret, 0);
    h.err('EINVAL', 'IOMMU_IOAS_MAP', {
      ioas_id: ioas,
      flags: MAP_RW_FIXED,
      user_va: BigInt(va),
      length: BigInt(2 * MiB),
      iova: 0xfee00000n,
    });
    h.map(ioas, va, 2 * MiB, 0xfec00000);
  });

  test('huge pages: a 2 MiB-aligned, physically contiguous buffer is mapped with a 2 MiB second-level page', () => {
    const h = new Host({ vtd: SL_ONLY });
    const { dfd } = h.bind();
    const ioas = h.ioas();
    assert.equal(h.attach(dfd, ioas).ret, 0);
    const va = h.mmap(4 * MiB, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB);
    const pattern = new Uint8Array(4 * MiB).map((_, i) => (i >> 9) & 0xff);
    assert.equal(h.p.poke(va, pattern), undefined);
    h.map(ioas, va, 4 * MiB, 0x200000);
    const d = h.intel.devices[0]!.group.domain.priv as DmarDomain;
    d.pt!.pfnToDmaPte(0x200, 0, false);
    assert.equal(d.pt!.level, 2, 'a 2 MiB leaf at level 2');
    assert.deepEqual(h.read(0, 0x200000 + 3 * MiB + 5, 300), pattern.subarray(3 * MiB + 5, 3 * MiB + 305));
    const t = h.unit().unit.iotlb;
    assert.ok(t.levelCount[2]! > 0, 'the IOTLB holds a 2 MiB translation');
    h.unmap(ioas, 0x200000, 4 * MiB);
    assert.equal(h.fault(0, 0x200000 + 3 * MiB, 'read').reason, 0x86);
  });
});

describe('PASID attach through VFIO_DEVICE_ATTACH_IOMMUFD_PT', () => {
  test('DMA with the PASID reads and writes the IOAS memory; requests without PASID stay blocked; UNMAP faults', () => {
    const h = new Host();
    const { dfd, devId } = h.bind();
    const ioas = h.ioas();
    const { va, bytes } = h.filled(16 * KiB, 3);
    h.map(ioas, va, 16 * KiB, 0x100000);
    const hwpt = h.hwpt(devId, ioas, HWPT_ALLOC_PASID);
    assert.equal(h.attach(dfd, hwpt, 0x51).ret, 0);
    assert.equal(pgttOf(h.pasidEntry(0, 0x51)), 1);
    assert.deepEqual(h.read(0, 0x100000, 64, 0x51), bytes.subarray(0, 64));
    const data = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    h.write(0, 0x102ffc, data, 0x51);
    assert.deepEqual(h.peek(va + 0x2ffc, 9), data);
    // the RID is not attached: no PASID table for PASIDs 0-63 yet (SPD.2)
    assert.equal(h.fault(0, 0x100000, 'read').reason, 0x51, 'SPD.2');
    // another PASID of the same table is not attached either (SPT.2)
    assert.equal(h.fault(0, 0x100000, 'read', 0x52).reason, 0x59, 'SPT.2');
    h.unmap(ioas, 0x100000, 16 * KiB);
    const f = h.fault(0, 0x100000, 'read', 0x51);
    assert.equal(f.reason, 0x71);
    assert.equal(f.recorded, true);
    // detach: the entry goes
    h.ok('VFIO_DEVICE_DETACH_IOMMUFD_PT', { flags: 1, pasid: 0x51 }, dfd);
    assert.equal(pgttOf(h.pasidEntry(0, 0x51)), 0);
  });

  test('a second-stage (NEST_PARENT | PASID) HWPT on a PASID, and a PASID of a device on the RID of another', () => {
    const h = new Host({ devices: [dev('00:02.0'), dev('00:03.0')] });
    const a = h.bind(0);
    const b = h.bind(1);
    const ioas = h.ioas();
    const { va, bytes } = h.filled(8 * KiB, 4);
    h.map(ioas, va, 8 * KiB, 0x8000);
    const sl = h.hwpt(a.devId, ioas, HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_PASID);
    assert.equal(h.attach(a.dfd, sl, 9).ret, 0);
    assert.equal(h.attach(b.dfd, sl).ret, 0);
    assert.equal(pgttOf(h.pasidEntry(0, 9)), 2);
    assert.deepEqual(h.read(0, 0x8000, 8 * KiB, 9), bytes);
    assert.deepEqual(h.read(1, 0x8000, 8 * KiB), bytes);
    // one domain, one DID on the unit, two attachments
    const d = h.intel.devices[1]!.group.domain.priv as DmarDomain;
    assert.equal(d.iommuArray.get(h.unit())!.refcnt, 2);
    h.unmap(ioas, 0x8000, 8 * KiB);
    assert.equal(h.fault(0, 0x8000, 'read', 9).reason, 0x86);
    assert.equal(h.fault(1, 0x8000, 'read').reason, 0x86);
  });

  test('a dirty-tracking HWPT cannot go on a PASID; PASIDs beyond the device are refused', () => {
    const h = new Host({
      vtd: { ecap: buildCapRegisters(DEFAULT_VTD).ecap | ECAP.SLADS },
      devices: [dev('00:02.0', { pasid_bits: 8 })],
    });
    const { dfd, devId } = h.bind();
    const ioas = h.ioas();
    const dirty = h.hwpt(devId, ioas, HWPT_ALLOC_DIRTY_TRACKING | HWPT_ALLOC_PASID);
    assert.equal(h.attach(dfd, dirty, 3).errno, 'EINVAL');
    const plain = h.hwpt(devId, ioas, HWPT_ALLOC_PASID);
    assert.equal(h.attach(dfd, plain, 256).errno, 'EINVAL');
    assert.equal(h.attach(dfd, plain, 255).ret, 0);
  });
});

/** Two IOASes with different data at the same IOVA, and a paging HWPT on each. */
function twoSpaces(h: Host, devId: number, flags: number, iova: number) {
  const A = h.ioas();
  const B = h.ioas();
  const a = h.filled(8 * KiB, 10);
  const b = h.filled(8 * KiB, 20);
  h.map(A, a.va, 8 * KiB, iova);
  h.map(B, b.va, 8 * KiB, iova);
  return { A, B, a, b, hA: h.hwpt(devId, A, flags), hB: h.hwpt(devId, B, flags) };
}

describe('replace switches the translation with no stale IOTLB result', () => {
  for (const where of ['RID', 'PASID'] as const) {
    for (const stage of ['first-stage', 'second-stage'] as const) {
      test(`${where} replace, ${stage} HWPTs`, () => {
        const h = new Host();
        const { dfd, devId } = h.bind();
        const pasid = where === 'RID' ? undefined : 0x200;
        const flags = HWPT_ALLOC_PASID | (stage === 'second-stage' ? HWPT_ALLOC_NEST_PARENT : 0);
        const s = twoSpaces(h, devId, flags, 0x70000);
        assert.equal(h.attach(dfd, s.hA, pasid).ret, 0);
        assert.deepEqual(h.read(0, 0x70000, 32, pasid), s.a.bytes.subarray(0, 32));
        assert.deepEqual(h.read(0, 0x71000, 32, pasid), s.a.bytes.subarray(4096, 4128));
        const t = h.unit().unit.iotlb;
        assert.ok(t.count >= 2, 'the translations are cached');
        // replace: the events of the model show the cached translations removed
        const events: Record<string, unknown>[] = [];
        h.m.tracer = (e) => events.push(e as Record<string, unknown>);
        assert.equal(h.attach(dfd, s.hB, pasid).ret, 0, 'replace');
        h.m.tracer = null;
        const removed = events
          .filter((e) => e['kind'] === 'inval')
          .reduce((n, e) => n + ((e['removed'] as number) ?? 0), 0);
        assert.ok(removed >= 2, `the IOTLB entries of the old domain were invalidated (removed ${removed})`);
        const whats = events.filter((e) => e['kind'] === 'inval').map((e) => e['what']);
        assert.ok(whats.includes('pc_inv_dsc'), 'PASID-cache invalidation');
        assert.ok(whats.includes('inv_wait_dsc'), 'completion through a wait descriptor');
        assert.deepEqual(h.read(0, 0x70000, 32, pasid), s.b.bytes.subarray(0, 32), 'B, not a stale A');
        assert.deepEqual(h.read(0, 0x71000, 32, pasid), s.b.bytes.subarray(4096, 4128));
        // and back
        assert.equal(h.attach(dfd, s.hA, pasid).ret, 0);
        assert.deepEqual(h.read(0, 0x70000, 32, pasid), s.a.bytes.subarray(0, 32));
      });
    }
  }

  test('the proof is sensitive: a table change the driver does not invalidate leaves a stale IOTLB hit, and the debug check names it', () => {
    const h = new Host();
    const { dfd } = h.bind();
    const ioas = h.ioas();
    const { va, bytes } = h.filled(4 * KiB, 5);
    h.map(ioas, va, 4 * KiB, 0x9000);
    assert.equal(h.attach(dfd, ioas).ret, 0);
    assert.deepEqual(h.read(0, 0x9000, 16), bytes.subarray(0, 16));
    // clear the leaf behind the driver's back (what a driver forgetting the flush leaves)
    const d = h.intel.devices[0]!.group.domain.priv as DmarDomain;
    const loc = d.pt!.pfnToDmaPte(9, 1, false);
    const lo = d.pt!.lo(loc);
    const hi = d.pt!.hi(loc);
    d.pt!.set(loc, 0, 0);
    const r = h.m.devices[0]!.dma({ addr: 0x9000, access: 'read', length: 16 });
    assert.ok('data' in r && (r as { data: Uint8Array }).data[0] === bytes[0], 'the IOTLB still hits');
    assert.throws(() => h.intel.checkInvariants(), InvariantError);
    d.pt!.set(loc, lo, hi);
    h.m.checkInvariants();
  });

  test('a failed PASID replace keeps the old entry (the new domain is incompatible)', () => {
    const h = new Host({ vtd: { ecap: buildCapRegisters(DEFAULT_VTD).ecap | ECAP.SLADS } });
    const { dfd, devId } = h.bind();
    const ioas = h.ioas();
    const { va, bytes } = h.filled(4 * KiB, 6);
    h.map(ioas, va, 4 * KiB, 0x5000);
    const ok = h.hwpt(devId, ioas, HWPT_ALLOC_PASID);
    assert.equal(h.attach(dfd, ok, 4).ret, 0);
    const before = h.pasidEntry(0, 4);
    const dirty = h.hwpt(devId, ioas, HWPT_ALLOC_PASID | HWPT_ALLOC_DIRTY_TRACKING);
    assert.equal(h.attach(dfd, dirty, 4).errno, 'EINVAL');
    assert.deepEqual(h.pasidEntry(0, 4), before);
    assert.deepEqual(h.read(0, 0x5000, 16, 4), bytes.subarray(0, 16));
  });
});

describe('nested: a VT-d stage-1 HWPT over a NEST_PARENT paging HWPT', () => {
  /** A guest: memory mapped at GPA 0 in an IOAS, with x86-64 tables written by the process. */
  function guest(h: Host, devId: number) {
    const ioas = h.ioas();
    const GMEM = 2 * MiB;
    const gva = h.mmap(GMEM);
    h.map(ioas, gva, GMEM, 0);
    const parent = h.hwpt(devId, ioas, HWPT_ALLOC_NEST_PARENT);
    const put = (gpa: number, v: bigint) => {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, v, true);
      assert.equal(h.p.poke(gva + gpa, b), undefined);
    };
    // stage 1: GVA 0x7f00_0000_0000 + n * 4 KiB -> GPA 0x100000 + n * 4 KiB, tables at GPA 0x1000..
    const GVA = 0x7f00_0000_0000;
    const idx = (a: number, l: number) => Math.floor(a / 2 ** (12 + 9 * (l - 1))) % 512;
    const T = { 4: 0x1000, 3: 0x2000, 2: 0x3000, 1: 0x4000 } as const;
    put(T[4] + idx(GVA, 4) * 8, BigInt(T[3] | 0x27));
    put(T[3] + idx(GVA, 3) * 8, BigInt(T[2] | 0x27));
    put(T[2] + idx(GVA, 2) * 8, BigInt(T[1] | 0x27));
    const leaf = (n: number, gpa: number) => put(T[1] + (idx(GVA, 1) + n) * 8, BigInt(gpa | 0x67));
    for (let n = 0; n < 4; n++) leaf(n, 0x100000 + n * 4096);
    const data = new Uint8Array(16 * KiB).map((_, i) => (i * 3 + 1) & 0xff);
    assert.equal(h.p.poke(gva + 0x100000, data), undefined);
    const s1 = (o: { flags?: bigint; pgtbl?: bigint; aw?: number } = {}) =>
      build(STRUCTS.iommu_hwpt_vtd_s1, {
        flags: o.flags ?? 0n,
        pgtbl_addr: o.pgtbl ?? BigInt(T[4]),
        addr_width: o.aw ?? 48,
      });
    return { ioas, gva, parent, GVA, leaf, data, s1 };
  }

  test('GVA -> GPA -> HPA: the device reads and writes guest memory through both stages; invalidation after a guest change', () => {
    const h = new Host();
    const { dfd, devId } = h.bind();
    const g = guest(h, devId);
    const s1 = h.hwpt(devId, g.parent, 0, { type: 1, bytes: g.s1() });
    assert.equal(h.attach(dfd, s1).ret, 0);
    const pe = h.pasidEntry(0, 0)!;
    assert.equal(pgttOf(pe), 3, 'PGTT nested');
    assert.equal(pe[4]! & ~0xfff, 0x1000, 'FLPTPTR: the guest table address, as given');
    assert.deepEqual(h.read(0, g.GVA + 0x10, 64), g.data.subarray(0x10, 0x50));
    assert.deepEqual(h.read(0, g.GVA + 0x2ff8, 16), g.data.subarray(0x2ff8, 0x3008));
    const msg = new TextEncoder().encode('nested write');
    h.write(0, g.GVA + 0x1000, msg);
    assert.deepEqual(h.peek(g.gva + 0x101000, msg.length), msg);
    // the guest points GVA page 0 at GPA page 3: stale until the guest invalidates
    g.leaf(0, 0x103000);
    const stale = h.m.devices[0]!.dma({ addr: g.GVA, access: 'read', length: 8 });
    assert.ok('data' in stale);
    assert.deepEqual(
      (stale as { data: Uint8Array }).data,
      g.data.subarray(0, 8),
      'the IOTLB still has the old GVA',
    );
    h.m.checkInvariants(); // a guest-owned change waiting for the guest's invalidation is allowed
    const inv = build(STRUCTS.iommu_hwpt_vtd_s1_invalidate, { addr: BigInt(g.GVA), npages: 1n, flags: 0 });
    const r = h.ok('IOMMU_HWPT_INVALIDATE', {
      hwpt_id: s1,
      data_uptr: BigInt(h.place(inv)),
      data_type: 0,
      entry_len: 24,
      entry_num: 1,
    });
    assert.equal(r['entry_num'], 1);
    assert.deepEqual(h.read(0, g.GVA, 8), g.data.subarray(0x3000, 0x3008));
    // "everything" (addr 0, npages U64_MAX)
    g.leaf(0, 0x100000);
    const all = build(STRUCTS.iommu_hwpt_vtd_s1_invalidate, { addr: 0n, npages: 0xffff_ffff_ffff_ffffn });
    h.ok('IOMMU_HWPT_INVALIDATE', {
      hwpt_id: s1,
      data_uptr: BigInt(h.place(all)),
      data_type: 0,
      entry_len: 24,
      entry_num: 1,
    });
    assert.deepEqual(h.read(0, g.GVA, 8), g.data.subarray(0, 8));
    // a stage-2 change (the host unmaps guest memory) is flushed for the nested domain too
    h.unmap(g.ioas, 0, 2 * MiB);
    const f = h.fault(0, g.GVA, 'read');
    assert.equal(f.reason, 0x75, 'SFL.6: the FL-PML4 table GPA has no stage-2 read permission');
  });

  test('PASID attach of a nested HWPT, and replace nested -> paging', () => {
    const h = new Host();
    const { dfd, devId } = h.bind();
    const g = guest(h, devId);
    const s1 = h.hwpt(devId, g.parent, HWPT_ALLOC_PASID, { type: 1, bytes: g.s1() });
    assert.equal(h.attach(dfd, s1, 0x33).ret, 0);
    assert.deepEqual(h.read(0, g.GVA + 4096, 32, 0x33), g.data.subarray(4096, 4128));
    const paging = h.hwpt(devId, g.ioas, HWPT_ALLOC_PASID);
    assert.equal(h.attach(dfd, paging, 0x33).ret, 0);
    assert.equal(pgttOf(h.pasidEntry(0, 0x33)), 1);
    assert.deepEqual(h.read(0, 0x100000, 32, 0x33), g.data.subarray(0, 32), 'now GPA = IOVA');
    assert.equal(h.fault(0, g.GVA + 4096, 'read', 0x33).reason, 0x71, 'the GVA is no IOVA of the IOAS');
  });

  test('HWPT_ALLOC with IOMMU_HWPT_DATA_VTD_S1: the kernel validation and errno', () => {
    const h = new Host();
    const { dfd, devId } = h.bind();
    const g = guest(h, devId);
    const plain = h.hwpt(devId, g.ioas, 0);
    const sl = h.hwpt(devId, g.ioas, HWPT_ALLOC_NEST_PARENT);
    const data = (bytes: Uint8Array, type = 1) => ({
      data_type: type,
      data_len: bytes.length,
      data_uptr: BigInt(h.place(bytes)),
    });
    const alloc = (pt: number, d: Record<string, unknown>, flags = 0) =>
      h.io('IOMMU_HWPT_ALLOC', { flags, dev_id: devId, pt_id: pt, ...d });
    // the parent must be a second-stage nesting parent
    assert.equal(alloc(plain, data(g.s1())).errno, 'EINVAL');
    // data type, flags
    assert.equal(alloc(sl, data(g.s1(), 2)).errno, 'EOPNOTSUPP');
    assert.equal(alloc(sl, data(g.s1()), HWPT_ALLOC_NEST_PARENT).errno, 'EOPNOTSUPP');
    // length: the whole struct (offsetofend __reserved = 24) and no more
    assert.equal(alloc(sl, data(g.s1().subarray(0, 20))).errno, 'EINVAL');
    const longer = new Uint8Array(32);
    longer.set(g.s1());
    assert.equal(alloc(sl, data(longer)).errno, 'EINVAL');
    assert.equal(alloc(sl, { data_type: 1, data_len: 24, data_uptr: 0n }).errno, 'EFAULT');
    // the kernel checks address width and SRE/EAFE when the entry is programmed (attach)
    const bad = (o: Parameters<typeof g.s1>[0]) => h.hwpt(devId, sl, 0, { type: 1, bytes: g.s1(o) });
    assert.equal(h.attach(dfd, bad({ aw: 39 })).errno, 'EINVAL');
    assert.equal(h.attach(dfd, bad({ aw: 57 })).errno, 'EINVAL', 'no FL5LP on the default unit');
    assert.equal(h.attach(dfd, bad({ flags: 1n })).errno, 'EINVAL', 'SRE without ECAP.SRS');
    assert.equal(h.attach(dfd, bad({ flags: 2n })).errno, 'EINVAL', 'EAFE without ECAP.EAFS');
    // a failed attach leaves the RID blocked and nothing half set up
    assert.equal(pgttOf(h.pasidEntry(0, 0)), 0);
    assert.equal(h.attach(dfd, bad({})).ret, 0);
  });

  test('HWPT_INVALIDATE with iommu_hwpt_vtd_s1_invalidate: errno and entry_num written back', () => {
    const h = new Host();
    const { dfd, devId } = h.bind();
    const g = guest(h, devId);
    const s1 = h.hwpt(devId, g.parent, 0, { type: 1, bytes: g.s1() });
    assert.equal(h.attach(dfd, s1).ret, 0);
    const entry = (o: Record<string, unknown>) =>
      build(STRUCTS.iommu_hwpt_vtd_s1_invalidate, { npages: 1n, ...o });
    const inv = (entries: Uint8Array[], o: Record<string, unknown> = {}) => {
      const all = new Uint8Array(entries.length * 24);
      entries.forEach((e, i) => {
        all.set(e, i * 24);
      });
      return h.io('IOMMU_HWPT_INVALIDATE', {
        hwpt_id: s1,
        data_uptr: BigInt(h.place(all)),
        data_type: 0,
        entry_len: 24,
        entry_num: entries.length,
        ...o,
      });
    };
    const good = entry({ addr: BigInt(g.GVA) });
    let r = inv([good, entry({ addr: BigInt(g.GVA + 1) }), good]);
    assert.equal(r.errno, 'EINVAL', 'unaligned address');
    assert.equal(r.out['entry_num'], 1);
    r = inv([entry({ addr: 0x1000n, npages: 0xffff_ffff_ffff_ffffn })]);
    assert.equal(r.errno, 'EINVAL', 'U64_MAX pages from a non-zero address');
    r = inv([good, entry({ addr: BigInt(g.GVA), flags: 2 })]);
    assert.equal(r.errno, 'EOPNOTSUPP');
    assert.equal(r.out['entry_num'], 1);
    r = inv([entry({ addr: BigInt(g.GVA), __reserved: 1 })]);
    assert.equal(r.errno, 'EOPNOTSUPP');
    assert.equal(inv([good], { data_type: 1 }).errno, 'EINVAL', 'wrong data type');
    assert.equal(inv([good], { entry_len: 16 }).errno, 'EINVAL', 'entry shorter than the struct');
    r = inv([good, entry({ addr: BigInt(g.GVA), flags: 1 })]);
    assert.equal(r.ret, 0);
    assert.equal(r.out['entry_num'], 2);
    // a paging HWPT is not invalidated by the user
    h.err('EINVAL', 'IOMMU_HWPT_INVALIDATE', {
      hwpt_id: g.parent,
      data_uptr: 0n,
      data_type: 0,
      entry_len: 24,
      entry_num: 0,
    });
  });
});

describe('GET_HW_INFO, capabilities and dirty tracking', () => {
  test("IOMMU_HW_INFO_TYPE_INTEL_VTD: the unit's CAP and ECAP, the errata flag, out_max_pasid_log2", () => {
    const h = new Host({ devices: [dev('00:02.0'), dev('00:03.0', { pasid_bits: 0 })] });
    const { devId } = h.bind(0);
    const b = h.bind(1);
    const buf = h.mmap(4096);
    const r = h.ok('IOMMU_GET_HW_INFO', { dev_id: devId, data_len: 64, data_uptr: BigInt(buf) });
    assert.equal(r['data_len'], 24);
    assert.equal(r['out_data_type'], IOMMU_HW_INFO_TYPE_INTEL_VTD);
    assert.equal(r['out_max_pasid_log2'], 20);
    assert.equal(r['out_capabilities'], 0n, 'no dirty tracking without ECAP.SLADS');
    const info = decodeAny(STRUCTS.iommu_hw_info_vtd, h.peek(buf, 24)) as Record<string, unknown>;
    const u = h.unit().unit;
    assert.equal(info['flags'], 1, 'IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17');
    assert.equal(info['cap_reg'], u.mmioRead(8, 8));
    assert.equal(info['ecap_reg'], u.mmioRead(0x10, 8));
    assert.deepEqual([...h.peek(buf + 24, 40)], new Array(40).fill(0), 'the rest of the buffer zeroed');
    const r2 = h.ok('IOMMU_GET_HW_INFO', { dev_id: b.devId, flags: 1, in_data_type: 1, data_len: 0 });
    assert.equal(r2['out_max_pasid_log2'], 0);
    h.err('EOPNOTSUPP', 'IOMMU_GET_HW_INFO', { dev_id: devId, flags: 1, in_data_type: 2 });
  });

  test('dirty tracking: EOPNOTSUPP without ECAP.SLADS; with it, a device write sets the second-level D bit the bitmap reports', () => {
    const plain = new Host();
    const p = plain.bind();
    plain.err('EOPNOTSUPP', 'IOMMU_HWPT_ALLOC', {
      flags: HWPT_ALLOC_DIRTY_TRACKING,
      dev_id: p.devId,
      pt_id: plain.ioas(),
    });
    const h = new Host({ vtd: { ecap: buildCapRegisters(DEFAULT_VTD).ecap | ECAP.SLADS } });
    const { dfd, devId } = h.bind();
    const ioas = h.ioas();
    const { va } = h.filled(16 * KiB, 7);
    h.map(ioas, va, 16 * KiB, 0x40000);
    const hwpt = h.hwpt(devId, ioas, HWPT_ALLOC_DIRTY_TRACKING);
    assert.equal(h.attach(dfd, hwpt).ret, 0);
    const caps = h.ok('IOMMU_GET_HW_INFO', { dev_id: devId })['out_capabilities'];
    assert.equal(caps, 1n, 'IOMMU_HW_CAP_DIRTY_TRACKING');
    h.ok('IOMMU_HWPT_SET_DIRTY_TRACKING', { flags: 1, hwpt_id: hwpt });
    assert.equal((h.pasidEntry(0, 0)![0]! >>> 9) & 1, 1, 'SSADE set in the PASID entry');
    h.write(0, 0x42000 + 12, new Uint8Array([0xaa]));
    const bm = h.mmap(4096);
    const get = () => {
      h.ok('IOMMU_HWPT_GET_DIRTY_BITMAP', {
        hwpt_id: hwpt,
        iova: 0x40000n,
        length: BigInt(16 * KiB),
        page_size: 4096n,
        data: BigInt(bm),
      });
      const v = h.peek(bm, 1)[0]!;
      assert.equal(h.p.poke(bm, new Uint8Array(8)), undefined);
      return v;
    };
    assert.equal(get(), 0b0100, 'page 2 is dirty');
    assert.equal(get(), 0, 'and was cleared');
    // the clean entry's cached translation was flushed: the next write dirties it again
    h.write(0, 0x42000 + 64, new Uint8Array([0xbb]));
    h.write(0, 0x40000, new Uint8Array([0xcc]));
    assert.equal(get(), 0b0101);
    h.ok('IOMMU_HWPT_SET_DIRTY_TRACKING', { flags: 0, hwpt_id: hwpt });
    assert.equal((h.pasidEntry(0, 0)![0]! >>> 9) & 1, 0);
  });
});

describe('enforced cache coherency (ECAP.SC)', () => {
  test('paging HWPTs of a snoop-control unit snoop: PGSNP in first-stage PASID entries, SNP in second-stage leaves', () => {
    const h = new Host({ vtd: { ecap: buildCapRegisters(DEFAULT_VTD).ecap | ECAP.SC } });
    const { dfd, devId } = h.bind();
    const ioas = h.ioas();
    const { va } = h.filled(4 * KiB, 13);
    h.map(ioas, va, 4 * KiB, 0x3000);
    const fs = h.hwpt(devId, ioas, HWPT_ALLOC_PASID);
    assert.equal(h.attach(dfd, fs).ret, 0);
    assert.equal((h.pasidEntry(0, 0)![2]! >>> 24) & 1, 1, 'PGSNP');
    const ss = h.hwpt(devId, ioas, HWPT_ALLOC_PASID | HWPT_ALLOC_NEST_PARENT);
    assert.equal(h.attach(dfd, ss, 2).ret, 0);
    const d = h.intel.devices[0]!.group.pasidArray.get(2)!.domain.priv as DmarDomain;
    const loc = d.pt!.pfnToDmaPte(3, 0, false);
    assert.equal(d.pt!.lo(loc) & 0x800, 0x800, 'SNP in the leaf');
    assert.equal(h.read(0, 0x3000, 4, 2).length, 4);
    assert.equal(h.read(0, 0x3000, 4).length, 4);
  });
});

describe('identity and blocked domains (the core API on the driver)', () => {
  test('identity: pass-through PGTT, DMA addresses are physical; blocked: the entry goes and DMA faults', () => {
    const h = new Host();
    const intel = h.intel;
    const d = intel.devices[0]!;
    const owner = {};
    assert.equal(iommuDeviceClaimDmaOwner(d, owner), undefined);
    assert.equal(iommuAttachGroup(intel.identityDomain, d.group, null), undefined);
    assert.equal(pgttOf(h.pasidEntry(0, 0)), 4, 'PGTT pass-through');
    h.m.hw.memory.writeBytes(0x300000n, new Uint8Array([9, 8, 7]));
    assert.deepEqual(h.read(0, 0x300000, 3), new Uint8Array([9, 8, 7]));
    assert.equal(iommuAttachDevicePasid(intel.identityDomain, d, 77, null), undefined);
    assert.deepEqual(h.read(0, 0x300000, 3, 77), new Uint8Array([9, 8, 7]));
    iommuDetachDevicePasid(intel.identityDomain, d, 77);
    assert.equal(h.fault(0, 0x300000, 'read', 77).reason, 0x59);
    iommuDetachGroup(d.group);
    assert.equal(pgttOf(h.pasidEntry(0, 0)), 0);
    assert.equal(h.fault(0, 0x300000, 'read').reason, 0x59);
    iommuDeviceReleaseDmaOwner(d);
    assert.ok(d instanceof IommuDevice);
  });
});

describe('page requests (PRI) through the page request queue', () => {
  test("an ATS device's page request reaches the fault queue of the HWPT at its PASID; the response goes back to the device", () => {
    const h = new Host({ devices: [dev('00:02.0', { ats: true }), dev('00:03.0')] });
    const { dfd, devId } = h.bind(0);
    const other = h.bind(1);
    const ioas = h.ioas();
    const fq = h.ok('IOMMU_FAULT_QUEUE_ALLOC', {});
    const faultFd = fq['out_fault_fd'] as number;
    const hwpt = h.ok('IOMMU_HWPT_ALLOC', {
      flags: HWPT_ALLOC_PASID | 4, // IOMMU_HWPT_FAULT_ID_VALID
      dev_id: devId,
      pt_id: ioas,
      fault_id: fq['out_fault_id'],
    })['out_hwpt_id'] as number;
    // a device without PRI cannot take an IOPF-capable HWPT
    assert.equal(h.attach(other.dfd, hwpt, 0x40).errno, 'ENODEV');
    assert.equal(h.attach(dfd, hwpt, 0x40).ret, 0);
    const pci = h.m.devices[0]!;
    assert.equal(
      pci.pageRequest({ pasid: 0x40, addr: 0x5123, access: 'write', lpig: true, prgi: 7 }),
      'queued',
    );
    const rec = h.p.read(faultFd, 40);
    assert.ok(rec instanceof Uint8Array && rec.length === 40);
    const f = decodeAny(STRUCTS.iommu_hwpt_pgfault, rec) as Record<string, unknown>;
    assert.equal(f['flags'], 1 | 2 | 8, 'PASID_VALID | LAST_PAGE | NEEDS_PASID');
    assert.equal(f['dev_id'], devId);
    assert.equal(f['pasid'], 0x40);
    assert.equal(f['grpid'], 7);
    assert.equal(f['perm'], 2, 'write');
    assert.equal(f['addr'], 0x5000n);
    const resp = new Uint8Array(8);
    new DataView(resp.buffer).setUint32(0, f['cookie'] as number, true);
    assert.equal(h.p.write(faultFd, resp), 8);
    assert.deepEqual(pci.pageResponses.at(-1), { pasid: 0x40, prgi: 7, lpig: true, rc: 0 });
    // a PASID nobody handles faults for: the driver answers INVALID itself
    assert.equal(pci.pageRequest({ pasid: 0x41, addr: 0x6000, access: 'read', prgi: 2 }), 'queued');
    assert.deepEqual(pci.pageResponses.at(-1), { pasid: 0x41, prgi: 2, lpig: true, rc: 1 });
    // a request still pending when the PASID is detached is answered INVALID
    assert.equal(pci.pageRequest({ pasid: 0x40, addr: 0x7000, access: 'read', prgi: 3 }), 'queued');
    const n = pci.pageResponses.length;
    h.ok('VFIO_DEVICE_DETACH_IOMMUFD_PT', { flags: 1, pasid: 0x40 }, dfd);
    assert.equal(pci.pageResponses.length, n + 1);
    assert.deepEqual(pci.pageResponses.at(-1), { pasid: 0x40, prgi: 3, lpig: true, rc: 1 });
    // the queue is empty and the unit has nothing pending
    const u = h.unit().unit;
    assert.equal(u.mmioRead(0xc0, 8), u.mmioRead(0xc8, 8), 'PQH = PQT');
    assert.equal(Number(u.mmioRead(0xdc, 4) as bigint) & 3, 0, 'PRS: no PPR, no PRO');
  });
});

describe('caching mode (CM = 1): not-present entries may be cached, and the driver invalidates them', () => {
  test('a DMA before the attach caches the not-present entries; after attach (and after each map) it goes through', () => {
    const h = new Host({ vtd: { ...SL_ONLY, caching_mode: true } });
    const { dfd, devId } = h.bind();
    const ioas = h.ioas();
    const { va, bytes } = h.filled(8 * KiB, 11);
    h.map(ioas, va, 4 * KiB, 0x10000);
    assert.equal(h.fault(0, 0x10000, 'read').reason, 0x51, 'not attached: SPD.2, now cached');
    assert.equal(h.fault(0, 0x10000, 'read', 5).reason, 0x51);
    assert.ok(h.unit().unit.cacheSizes().pasid >= 2, 'the unit caches the not-present entries');
    const hwpt = h.hwpt(devId, ioas, HWPT_ALLOC_PASID);
    assert.equal(h.attach(dfd, hwpt).ret, 0);
    assert.deepEqual(h.read(0, 0x10000, 16), bytes.subarray(0, 16));
    assert.equal(h.attach(dfd, hwpt, 5).ret, 0);
    assert.deepEqual(h.read(0, 0x10000, 16, 5), bytes.subarray(0, 16));
    // a map into a second-level domain under caching mode is followed by a page-selective flush
    const events: Record<string, unknown>[] = [];
    h.m.tracer = (e) => events.push(e as Record<string, unknown>);
    h.map(ioas, va + 4096, 4 * KiB, 0x11000);
    h.m.tracer = null;
    assert.ok(
      events.some((e) => e['what'] === 'iotlb_inv_dsc' && e['g'] === 3),
      'iotlb PSI after the map',
    );
    assert.deepEqual(h.read(0, 0x11000, 16, 5), bytes.subarray(4096, 4112));
  });
});

describe('two units', () => {
  test('one HWPT on devices behind different units: a domain ID on each, unmap flushes both', () => {
    const h = new Host({
      config: {
        iommus: [{ ...DEFAULT_VTD }, { ...DEFAULT_VTD }],
        memory: 256n * BigInt(MiB),
        devices: [dev('00:02.0'), dev('01:00.0', { iommu: 1 })],
      },
    });
    const a = h.bind(0);
    const b = h.bind(1);
    const ioas = h.ioas();
    const { va, bytes } = h.filled(8 * KiB, 9);
    h.map(ioas, va, 8 * KiB, 0x60000);
    const hwpt = h.hwpt(a.devId, ioas, HWPT_ALLOC_PASID);
    assert.equal(h.attach(a.dfd, hwpt).ret, 0);
    assert.equal(h.attach(b.dfd, hwpt, 5).ret, 0);
    const d = h.intel.devices[0]!.group.domain.priv as DmarDomain;
    assert.deepEqual(
      [...d.iommuArray.keys()].map((u) => u.name),
      ['dmar0', 'dmar1'],
    );
    assert.deepEqual(h.read(0, 0x60000, 16), bytes.subarray(0, 16));
    assert.deepEqual(h.read(1, 0x61000, 16, 5), bytes.subarray(4096, 4112));
    assert.ok(h.unit(0).unit.iotlb.count > 0 && h.unit(1).unit.iotlb.count > 0);
    h.unmap(ioas, 0x60000, 8 * KiB);
    assert.equal(h.unit(0).unit.iotlb.count, 0);
    assert.equal(h.unit(1).unit.iotlb.count, 0);
    assert.equal(h.fault(0, 0x60000, 'read').reason, 0x71);
    assert.equal(h.fault(1, 0x61000, 'read', 5).reason, 0x71);
  });
});

describe('legacy mode (a unit without scalable mode)', () => {
  test('context entries carry the second-level table; no PASIDs, no nesting; faults in legacy codes', () => {
    const h = new Host({
      vtd: { ecap: buildCapRegisters(DEFAULT_VTD).ecap & ~ECAP.SMTS },
      devices: [dev('00:02.0'), dev('00:03.0', { ats: true })],
    });
    const u = h.unit().unit;
    assert.equal((u.mmioRead(0x20, 8) as bigint) & 0xc00n, 0n, 'RTADDR.TTM = legacy');
    assert.equal((u.mmioRead(0x90, 8) as bigint) & 0x800n, 0n, '128-bit invalidation descriptors');
    assert.deepEqual(
      h.intel.devices.map((d) => d.maxPasids),
      [0, 0],
    );
    const a = h.bind(0);
    const b = h.bind(1);
    const ioas = h.ioas();
    const { va, bytes } = h.filled(8 * KiB, 8);
    h.map(ioas, va, 8 * KiB, 0x30000);
    assert.equal(h.attach(a.dfd, ioas).ret, 0);
    assert.equal(h.attach(b.dfd, ioas).ret, 0);
    const mem = h.m.hw.memory;
    const ctx = (sid: number) => {
      const re = mem.readU64(h.unit().rootFn * 4096 + (sid >>> 8) * 16);
      return Number(re & ~0xfffn) + (sid & 0xff) * 16;
    };
    const d = h.intel.devices[0]!.group.domain.priv as DmarDomain;
    const lo = mem.readU64(ctx(0x10));
    assert.equal(lo & 1n, 1n);
    assert.equal((lo >> 2n) & 3n, 0n, 'TT: multi-level');
    assert.equal(lo & ~0xfffn, BigInt(d.pt!.pgd * 4096));
    assert.equal((mem.readU64(ctx(0x18)) >> 2n) & 3n, 1n, 'TT: device-TLB allowed for the ATS device');
    assert.equal((mem.readU64(ctx(0x10) + 8) >> 8n) & 0xffffn, BigInt(d.didOn(h.unit())));
    assert.deepEqual(h.read(0, 0x30000, 8 * KiB), bytes);
    assert.deepEqual(h.read(1, 0x31000, 64), bytes.subarray(4096, 4160));
    assert.ok(h.m.devices[1]!.atcSize() > 0);
    h.write(0, 0x30010, new Uint8Array([1, 2]));
    assert.deepEqual(h.peek(va + 0x10, 2), new Uint8Array([1, 2]));
    h.unmap(ioas, 0x30000, 8 * KiB);
    assert.equal(h.m.devices[1]!.atcSize(), 0);
    assert.equal(h.fault(0, 0x30000, 'read').reason, 0x06, 'legacy LGN.3: no read permission');
    assert.equal(h.fault(1, 0x30000, 'write').reason, 0x05, 'legacy LGN.2: no write permission');
    const hwpt = h.hwpt(a.devId, ioas, 0);
    assert.equal(h.attach(a.dfd, hwpt, 1).errno, 'EINVAL', 'no PASIDs');
    h.err('EOPNOTSUPP', 'IOMMU_HWPT_ALLOC', { flags: HWPT_ALLOC_NEST_PARENT, dev_id: a.devId, pt_id: ioas });
    h.err('EOPNOTSUPP', 'IOMMU_HWPT_ALLOC', {
      flags: HWPT_ALLOC_DIRTY_TRACKING,
      dev_id: a.devId,
      pt_id: ioas,
    });
    // pass-through in legacy mode: TT = 2
    h.ok('VFIO_DEVICE_DETACH_IOMMUFD_PT', {}, a.dfd);
    assert.equal(mem.readU64(ctx(0x10)) & 1n, 0n, 'detached: context entry cleared');
    const dv = h.intel.devices[0]!;
    assert.equal(iommuAttachGroup(h.intel.identityDomain, dv.group, null), undefined);
    assert.equal((mem.readU64(ctx(0x10)) >> 2n) & 3n, 2n);
    h.m.hw.memory.writeBytes(0x500000n, new Uint8Array([4, 5]));
    assert.deepEqual(h.read(0, 0x500000, 2), new Uint8Array([4, 5]));
    iommuDetachGroup(dv.group);
  });
});

describe('ATS: the device-TLB is invalidated with the IOTLB', () => {
  test("unmap and replace drop the device's cached translations", () => {
    const h = new Host({ devices: [dev('00:02.0', { ats: true })] });
    const { dfd, devId } = h.bind();
    const s = twoSpaces(h, devId, HWPT_ALLOC_PASID, 0x20000);
    assert.equal(h.attach(dfd, s.hA).ret, 0);
    const ctx = h.m.devices[0]!;
    assert.deepEqual(h.read(0, 0x20000, 16), s.a.bytes.subarray(0, 16));
    assert.ok(ctx.atcSize() > 0, 'the device cached the translation');
    assert.equal(h.attach(dfd, s.hB).ret, 0);
    assert.equal(ctx.atcSize(), 0);
    assert.deepEqual(h.read(0, 0x20000, 16), s.b.bytes.subarray(0, 16));
    assert.equal(h.attach(dfd, s.hA, 0x44).ret, 0);
    assert.deepEqual(h.read(0, 0x21000, 16, 0x44), s.a.bytes.subarray(4096, 4112));
    h.unmap(s.A, 0x20000, 8 * KiB);
    assert.equal(h.fault(0, 0x21000, 'read', 0x44).reason, 0x71);
    assert.deepEqual(h.read(0, 0x20000, 16), s.b.bytes.subarray(0, 16));
  });
});

describe('fail_nth: every allocation the driver makes can fail, and nothing leaks', () => {
  /** The whole life of a VMM's devices, any step of which may fail; errors are outcomes. */
  function life(h: Host): void {
    const try_ = (name: IoctlName, fields: Record<string, unknown>, fd = h.fd) => h.io(name, fields, fd);
    const dfd0 = h.p.open('/dev/vfio/devices/vfio0') as number;
    const dfd1 = h.p.open('/dev/vfio/devices/vfio1') as number;
    const b0 = try_('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: h.fd }, dfd0).out['out_devid'] as number;
    const b1 = try_('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: h.fd }, dfd1).out['out_devid'] as number;
    const ioas = try_('IOMMU_IOAS_ALLOC', {}).out['out_ioas_id'] as number;
    const small = try_('IOMMU_IOAS_ALLOC', {}).out['out_ioas_id'] as number;
    try_('IOMMU_OPTION', { option_id: 1, op: 0, object_id: small, val64: 0n });
    const va = h.mmap(2 * MiB);
    const map = (id: number, iova: number, len = 2 * MiB) =>
      try_('IOMMU_IOAS_MAP', {
        ioas_id: id,
        flags: MAP_RW_FIXED,
        user_va: BigInt(va),
        length: BigInt(len),
        iova: BigInt(iova),
      });
    map(ioas, 0);
    map(small, 0x40000000);
    const alloc = (dev: number, pt: number, flags: number, data?: Uint8Array) =>
      try_('IOMMU_HWPT_ALLOC', {
        flags,
        dev_id: dev,
        pt_id: pt,
        ...(data ? { data_type: 1, data_len: data.length, data_uptr: BigInt(h.place(data)) } : {}),
      }).out['out_hwpt_id'] as number;
    const attach = (dfd: number, pt: number, pasid?: number) => h.attach(dfd, pt, pasid);
    attach(dfd0, ioas); // auto domain
    attach(dfd1, small);
    const fsP = alloc(b0, ioas, HWPT_ALLOC_PASID);
    const slP = alloc(b0, small, HWPT_ALLOC_PASID | HWPT_ALLOC_NEST_PARENT);
    attach(dfd0, fsP, 100);
    attach(dfd0, slP, 100); // replace
    attach(dfd0, slP, 3000);
    attach(dfd1, fsP, 7);
    attach(dfd0, fsP); // RID replace
    // DMA fills the IOTLB, the PASID cache and the device-TLB (results do not matter here)
    for (const [i, pasid] of [
      [0, undefined],
      [0, 3000],
      [1, undefined],
      [1, 7],
    ] as const)
      h.m.devices[i]!.dma({ addr: 0x1000, access: 'read', length: 8, ...(pasid ? { pasid } : {}) });
    map(ioas, 0x200000, 64 * KiB);
    try_('IOMMU_IOAS_UNMAP', { ioas_id: ioas, iova: 0x200000n, length: BigInt(64 * KiB) });
    const s1 = alloc(
      b1,
      slP,
      HWPT_ALLOC_PASID,
      build(STRUCTS.iommu_hwpt_vtd_s1, { pgtbl_addr: 0x1000n, addr_width: 48 }),
    );
    attach(dfd1, s1);
    attach(dfd1, s1, 9);
    h.m.devices[1]!.dma({ addr: 0x1000, access: 'read', length: 8, pasid: 9 });
    const inv = build(STRUCTS.iommu_hwpt_vtd_s1_invalidate, { addr: 0n, npages: 16n });
    try_('IOMMU_HWPT_INVALIDATE', {
      hwpt_id: s1,
      data_uptr: BigInt(h.place(inv)),
      data_type: 0,
      entry_len: 24,
      entry_num: 1,
    });
    try_('IOMMU_GET_HW_INFO', { dev_id: b0 });
    try_('VFIO_DEVICE_DETACH_IOMMUFD_PT', { flags: 1, pasid: 100 }, dfd0);
    try_('IOMMU_IOAS_UNMAP', { ioas_id: small, iova: 0x40000000n, length: BigInt(2 * MiB) });
  }

  test('the life of two devices, the Nth allocation failing for every N', () => {
    const sites = new Set<string>();
    let n = 1;
    for (; n < 500; n++) {
      const h = new Host({
        devices: [dev('00:02.0', { ats: true }), dev('00:03.0')],
        memory: 64n * BigInt(MiB),
      });
      const phys = h.m.iommufd.phys;
      const intel = h.intel;
      const { pasidTableFrames } = tables;
      const framesOf = () => intel.devices.reduce((s, d) => s + pasidTableFrames(intel.info(d)), 0);
      const kernel0 = phys.kernelLive - framesOf();
      h.m.faults.failNth(n);
      life(h);
      const reached = h.m.faults.injected.length > 0;
      for (const x of h.m.faults.injected) sites.add(x);
      h.m.faults.disarm();
      h.p.exit();
      h.m.checkInvariants();
      assert.equal(intel.liveDomains.size, 0, `N=${n}: a domain leaked`);
      assert.equal(h.unit().didsInUse, 0, `N=${n}: a domain ID leaked`);
      assert.equal(phys.kernelLive - framesOf(), kernel0, `N=${n}: driver frames leaked`);
      assert.equal(phys.totalPins(), 0, `N=${n}: pins leaked`);
      assert.equal(phys.live, 0, `N=${n}: user pages leaked`);
      for (const d of intel.devices) {
        const info = intel.info(d);
        assert.equal(info.domainAttached, false);
        for (const pasid of [0, 7, 9, 100, 3000])
          assert.equal(pgttOf(h.pasidEntry(intel.devices.indexOf(d), pasid)), 0);
        assert.equal(info.pci.atcSize(), 0, 'the device-TLB holds nothing');
      }
      assert.equal(h.unit().unit.iotlb.count, 0, 'nothing cached for translations that are gone');
      if (!reached) break;
    }
    assert.ok(n > 20 && n < 500, `the sweep ended at N=${n}`);
    for (const site of [
      'iommu_alloc_pages_node_sz',
      'intel_paging_domain_alloc',
      'intel_nested_domain_alloc',
      'domain_attach_iommu',
      'domain_add_dev_pasid',
      'cache_tag_assign',
      'domain_qi_batch_alloc',
      'intel_iommu_hw_info',
    ])
      assert.ok(sites.has(site), `the sweep failed the driver's ${site} (sites: ${[...sites].join(' ')})`);
  });
});
