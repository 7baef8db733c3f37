import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KernelError } from '../core/errno.ts';
import { DEFAULT_VTD, type MachineConfig } from '../machine-config.ts';
import type { DmaResult } from './pci.ts';
import { createPlatform, registerOffset } from './platform.ts';
import { mapFl, VtdTables } from './vtd/tables.ts';

const GiB = 2n ** 30n;

function machine(extra: Partial<MachineConfig> = {}): MachineConfig {
  return {
    iommus: [{ ...DEFAULT_VTD }, { ...DEFAULT_VTD, pasid_bits: 8 }],
    memory: GiB,
    devices: [
      { bdf: '00:02.0', iommu: 0, pasid_bits: 20, ats: false },
      { bdf: '00:03.0', iommu: 0, pasid_bits: 0, ats: false },
      { bdf: '01:00.1', iommu: 1, pasid_bits: 20, ats: true },
    ],
    ...extra,
  };
}

/** One device behind a first-level PASID 1 and a pass-through RID_PASID, translation on. */
function setup() {
  const p = createPlatform(machine());
  const u = p.iommus[0]!;
  const tb = new VtdTables(p.memory, 0x100000, 0x1000000);
  const dir = tb.allocPasidDir(7);
  tb.setContext(0x10, { p: 1, paside: 1, pdts: 7, pasidDirPtr: dir });
  const fl = tb.pages.alloc();
  tb.setPasidEntry(dir, 1, { p: 1, pgtt: 1, did: 1, aw: 2, flptptr: fl });
  tb.setPasidEntry(dir, 0, { p: 1, pgtt: 4, did: 2, aw: 2 });
  // two virtually contiguous pages on physically distant frames, and a page at the end of memory
  mapFl(p.memory, fl, 0x10000, 0x200000, {}, () => tb.pages.alloc());
  mapFl(p.memory, fl, 0x11000, 0x500000, {}, () => tb.pages.alloc());
  mapFl(p.memory, fl, 0x12000, 0x3fff_f000, {}, () => tb.pages.alloc());
  mapFl(p.memory, fl, 0x13000, 0x4000_0000, {}, () => tb.pages.alloc()); // beyond 1 GiB
  mapFl(p.memory, fl, 0x15000, 0x600000, {}, () => tb.pages.alloc()); // 0x16000 stays unmapped
  tb.install(u);
  return { p, u, dev: p.device('00:02.0')! };
}

function ok(r: DmaResult | KernelError): { hpa: bigint; data?: Uint8Array } {
  assert.ok(
    !(r instanceof KernelError) && 'hpa' in r,
    `expected a DMA result, got ${JSON.stringify(r, (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))}`,
  );
  return r;
}

test('createPlatform: memory, units, devices by bdf and source-id, max_pasids capped by the IOMMU', () => {
  const p = createPlatform(machine());
  assert.equal(p.memory.size, 2 ** 30);
  assert.equal(p.iommus.length, 2);
  assert.equal(p.iommus[1]!.name, 'dmar1');
  assert.equal(p.iommu('dmar1'), p.iommus[1]);
  assert.equal(p.devices.length, 3);
  assert.equal(p.device('0:2.0'), p.devices[0]);
  assert.equal(p.device('01:00.1')!.sid, 0x101);
  assert.equal(p.deviceBySid(0x18), p.devices[1]);
  assert.equal(p.device('zz'), undefined);
  assert.equal(p.devices[0]!.maxPasids, 2 ** 20);
  assert.equal(p.devices[1]!.maxPasids, 0);
  assert.equal(p.devices[2]!.maxPasids, 2 ** 8, 'capped by dmar1 (pasid_bits 8)');
  assert.equal(p.devices[2]!.iommu, p.iommus[1]);
  assert.throws(
    () => createPlatform(machine({ devices: [{ bdf: '00:02.0', iommu: 5, pasid_bits: 20, ats: false }] })),
    RangeError,
  );
  assert.throws(
    () =>
      createPlatform(
        machine({
          devices: [
            { bdf: '00:02.0', iommu: 0, pasid_bits: 20, ats: false },
            { bdf: '0:2.0', iommu: 0, pasid_bits: 20, ats: false },
          ],
        }),
      ),
    RangeError,
  );
  p.checkInvariants();
});

test('registerOffset resolves Linux register names, FRCD_REG+N and offsets', () => {
  const p = createPlatform(machine());
  const u = p.iommus[0]!;
  assert.equal(registerOffset(u, 'IQT_REG'), 0x88);
  assert.equal(registerOffset(u, 'DMAR_GSTS_REG'), 0x1c);
  assert.equal(registerOffset(u, 'FRCD_REG+8'), 0x228);
  assert.equal(registerOffset(u, 'FRCD_REG + 0x10'), 0x230);
  assert.equal(registerOffset(u, 'VCMD_REG'), 0xe00);
  assert.equal(registerOffset(u, 0x34), 0x34);
  assert.ok(registerOffset(u, 'NOPE_REG') instanceof KernelError);
});

test('dma moves bytes page by page through the translation, both directions', () => {
  const { p, dev } = setup();
  const data = Uint8Array.from({ length: 6000 }, (_, i) => i & 0xff);
  const w = ok(dev.dma({ pasid: 1, addr: 0x10100, access: 'write', data }));
  assert.equal(w.hpa, 0x200100n);
  // the bytes landed on both frames
  assert.deepEqual(p.memory.readBytes(0x200100n, 3840), data.subarray(0, 3840));
  assert.deepEqual(p.memory.readBytes(0x500000n, 6000 - 3840), data.subarray(3840));
  const r = ok(dev.dma({ pasid: 1, addr: 0x10100, access: 'read', length: 6000 }));
  assert.deepEqual(r.data, data);
  // no PASID: RID_PASID (0) is pass-through
  const id = ok(dev.dma({ addr: 0x300000, access: 'read', length: 4 }));
  assert.equal(id.hpa, 0x300000n);
  // zero-length reads still translate
  assert.deepEqual(ok(dev.dma({ pasid: 1, addr: 0x11008, access: 'read' })), { hpa: 0x500008n });
});

test('dma faults are values: the reason, whether recorded, and how far the transfer got', () => {
  const { dev } = setup();
  const r = dev.dma({ pasid: 1, addr: 0x15f00, access: 'write', data: new Uint8Array(0x2000) });
  assert.ok(!(r instanceof KernelError) && 'fault' in r);
  assert.equal(r.fault.reason, 0x71, 'the second page is not mapped');
  assert.equal(r.fault.recorded, true);
  assert.equal(r.fault.addr, 0x16000n);
  assert.equal(r.fault.pasid, 1);
  assert.equal(r.fault.done, 0x100);
  assert.equal(r.fault.iommu, 'dmar0');
});

test('a write without PASID to 0xFEE00000-0xFEEFFFFF is an interrupt request', () => {
  const { dev } = setup();
  const r = dev.dma({ addr: 0xfee0_1000, access: 'write', data: Uint8Array.of(0x31, 0, 0, 0) });
  assert.deepEqual(r, { interrupt: { addr: 0xfee0_1000n, data: 0x31 } });
  const rd = dev.dma({ addr: 0xfee0_1000, access: 'read', length: 4 });
  assert.ok(!(rd instanceof KernelError) && 'abort' in rd);
});

test('DMA to memory that is not backed completes as an unsupported request, not an IOMMU fault', () => {
  const { dev } = setup();
  const r = dev.dma({ pasid: 1, addr: 0x13000, access: 'read', length: 8 });
  assert.ok(!(r instanceof KernelError) && 'abort' in r);
  assert.equal(r.abort.hpa, 0x4000_0000n);
  const edge = dev.dma({ pasid: 1, addr: 0x12ff8, access: 'read', length: 16 });
  assert.ok(!(edge instanceof KernelError) && 'abort' in edge);
  assert.equal(edge.abort.done, 8);
  // translation disabled: the address goes straight to memory
  const p2 = createPlatform(machine());
  const d2 = p2.device('00:02.0')!;
  assert.deepEqual(ok(d2.dma({ addr: 0x1000, access: 'read', length: 2 })).data, new Uint8Array(2));
  assert.ok('abort' in (d2.dma({ addr: 2n ** 40n, access: 'read', length: 2 }) as object));
});

test('requests a device cannot express are refused with EINVAL', () => {
  const { p, dev } = setup();
  const nopasid = p.device('00:03.0')!;
  assert.ok(nopasid.dma({ pasid: 1, addr: 0, access: 'read' }) instanceof KernelError);
  assert.ok(dev.dma({ pasid: 2 ** 20, addr: 0, access: 'read' }) instanceof KernelError);
  assert.ok(p.device('01:00.1')!.dma({ pasid: 256, addr: 0, access: 'read' }) instanceof KernelError);
  assert.ok(dev.dma({ addr: -1n, access: 'read' }) instanceof KernelError);
  assert.ok(dev.dma({ addr: 2n ** 64n - 2n, access: 'read', length: 4 }) instanceof KernelError);
  assert.ok(dev.pageRequest({ addr: 0, access: 'read' }) instanceof KernelError, 'no ATS/PRI');
});

test('tracing covers DMA, walk steps and faults; setTracer switches it for every unit and device', () => {
  const { p, dev } = setup();
  const ev: { kind: string; what: string }[] = [];
  p.setTracer((e) => ev.push(e));
  ok(dev.dma({ pasid: 1, addr: 0x10000, access: 'read', length: 4 }));
  assert.ok(ev.some((e) => e.kind === 'walk' && e.what === 'fl'));
  assert.ok(ev.some((e) => e.kind === 'dma' && e.what === 'read'));
  p.setTracer(null);
  const n = ev.length;
  ok(dev.dma({ pasid: 1, addr: 0x10000, access: 'read', length: 4 }));
  assert.equal(ev.length, n);
});

test('an ATS device sends page requests into the IOMMU page request queue', () => {
  const p = createPlatform(machine());
  const u = p.iommus[1]!;
  const dev = p.device('01:00.1')!;
  const tb = new VtdTables(p.memory, 0x100000, 0x1000000);
  const dir = tb.allocPasidDir(7);
  tb.setContext(0x101, { p: 1, dte: 1, pre: 1, paside: 1, pdts: 0, pasidDirPtr: dir });
  tb.install(u);
  const pq = tb.pages.alloc();
  u.mmioWrite(0xd0, BigInt(pq), 8);
  assert.equal(dev.pageRequest({ pasid: 3, addr: 0x4000_1234n, access: 'write', prgi: 7 }), 'queued');
  assert.equal((p.memory.readU64(pq) >> 32n) & 0xfffffn, 3n);
  assert.equal(p.memory.readU64(pq + 8) & ~0xfffn, 0x4000_1000n);
  tb.setContext(0x101, { p: 1, dte: 1, paside: 1, pdts: 0, pasidDirPtr: dir });
  u.invalidateContextCache(1, 0, 0, 0);
  const f = dev.pageRequest({ pasid: 3, addr: 0x5000, access: 'read' });
  assert.ok(typeof f === 'object' && !(f instanceof KernelError) && f.fault.reason === 0x47);
});
