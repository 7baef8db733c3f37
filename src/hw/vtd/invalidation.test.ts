import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvariantError } from '../../core/invariants.ts';
import { DEFAULT_VTD } from '../../machine-config.ts';
import { createPlatform } from '../platform.ts';
import { ACCESS_READ, ACCESS_WRITE } from './faults.ts';
import { NO_PASID_KEY } from './iotlb.ts';
import {
  DMA_CCMD_DEVICE_INVL,
  DMA_CCMD_GLOBAL_INVL,
  DMA_CCMD_ICC,
  DMA_TLB_DSI_FLUSH,
  DMA_TLB_IVT,
  DMA_TLB_PSI_FLUSH,
} from './regs.ts';
import {
  CC_INV_DSC,
  DEV_TLB_INV_DSC,
  IEC_INV_DSC,
  INV_WAIT_DSC,
  IOTLB_INV_DSC,
  P_DEV_TLB_INV_DSC,
  P_IOTLB_INV_DSC,
  PAGE_GRP_RESP_DSC,
  PC_INV_DSC,
} from './structs.ts';
import { InvalidationQueue, mapFl, mapSl, VtdTables } from './tables.ts';
import { GiB, Rig, SID } from './test-rig.ts';

const FSTS = 0x34;
const IQH = 0x80;
const IQT = 0x88;
const IQERCD = 0xb0;

/** A rig with FL (PASID 1, DID 1), SL (2, DID 2), nested (3, DID 3) and PT (4, DID 4), each with cached translations. */
function populated() {
  const r = new Rig({ fault_records: 8 });
  const fl = r.fl(1, { did: 1 });
  const sl = r.sl(2, { did: 2 });
  const { flRoot } = r.nested(3, { did: 3 });
  r.pt(4, { did: 4 });
  for (let i = 0; i < 4; i++) {
    r.mapFl(fl, 0x10_0000 + i * 0x1000, 0x20_0000 + i * 0x1000);
    r.mapSl(sl, 0x10_0000 + i * 0x1000, 0x30_0000 + i * 0x1000);
    r.mapGuestFl(flRoot, 0x10_0000 + i * 0x1000, 0x40_0000 + i * 0x1000);
  }
  r.mapSl(sl, 0x4000_0000, 0x0080_0000, { leafLevel: 2 });
  const fill = () => {
    for (let i = 0; i < 4; i++)
      for (const p of [1, 2, 3, 4]) assert.ok('hpa' in r.t(p, 0x10_0000 + i * 0x1000));
    assert.ok('hpa' in r.t(2, 0x4010_0000));
  };
  fill();
  return { r, fill };
}

function cached(r: Rig, pasid: number, addr: number, level = 1): boolean {
  const t = r.iommu.iotlb;
  const shift = 12 + 9 * (level - 1);
  const vpn = Math.floor(addr / 2 ** shift);
  return (
    t.find(SID, pasid < 0 ? NO_PASID_KEY : pasid, vpn | 0, Math.floor(vpn / 2 ** 32) | (level << 24)) >= 0
  );
}

function snapshot(r: Rig): string[] {
  const out: string[] = [];
  for (const p of [1, 2, 3, 4])
    for (let i = 0; i < 4; i++) if (cached(r, p, 0x10_0000 + i * 0x1000)) out.push(`${p}:${i}`);
  if (cached(r, 2, 0x4000_0000, 2)) out.push('2:2M');
  return out;
}

const ALL = [
  '1:0',
  '1:1',
  '1:2',
  '1:3',
  '2:0',
  '2:1',
  '2:2',
  '2:3',
  '3:0',
  '3:1',
  '3:2',
  '3:3',
  '4:0',
  '4:1',
  '4:2',
  '4:3',
  '2:2M',
];

test('iotlb_inv_dsc: global, domain-selective, page-selective (C.4 removal rules)', () => {
  const { r, fill } = populated();
  assert.deepEqual(snapshot(r), ALL);
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 1 })));
  assert.deepEqual(snapshot(r), []);
  fill();
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 2, did: 2 })));
  assert.deepEqual(
    snapshot(r),
    ALL.filter((k) => !k.startsWith('2:')),
  );
  fill();
  // PSI of SL pages 0x101000..0x102fff (AM=1): only those SL entries; every FL/nested entry of DID 1
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 3, did: 2, addr: 0x10_2000n, am: 1 })));
  assert.deepEqual(
    snapshot(r),
    ALL.filter((k) => k !== '2:2' && k !== '2:3'),
  );
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 3, did: 1, addr: 0x10_0000n, am: 0 })));
  assert.deepEqual(
    snapshot(r),
    ALL.filter((k) => k !== '2:2' && k !== '2:3' && !k.startsWith('1:')),
  );
  // a page inside a cached 2 MiB entry removes it
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 3, did: 2, addr: 0x4012_3000n, am: 0 })));
  assert.equal(cached(r, 2, 0x4000_0000, 2), false);
  // PSI of a pass-through domain removes its entries in range
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 3, did: 4, addr: 0x10_0000n, am: 2 })));
  assert.equal(snapshot(r).filter((k) => k.startsWith('4:')).length, 0);
});

test('p_iotlb_inv_dsc: all of (DID, PASID); page-selective removes first-level and nested entries only', () => {
  const { r, fill } = populated();
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 2, did: 2, pasid: 2 })));
  assert.deepEqual(
    snapshot(r),
    ALL.filter((k) => !k.startsWith('2:')),
  );
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 2, did: 4, pasid: 4 })));
  assert.deepEqual(
    snapshot(r).filter((k) => k.startsWith('4:')),
    [],
  );
  fill();
  // DID must match as well as PASID
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 2, did: 9, pasid: 1 })));
  assert.deepEqual(snapshot(r), ALL);
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 3, did: 1, pasid: 1, addr: 0x10_1000n, am: 0 })));
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 3, did: 3, pasid: 3, addr: 0x10_2000n, am: 1 })));
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 3, did: 2, pasid: 2, addr: 0x10_0000n, am: 2 })));
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 3, did: 4, pasid: 4, addr: 0x10_0000n, am: 2 })));
  assert.deepEqual(
    snapshot(r),
    ALL.filter((k) => k !== '1:1' && k !== '3:2' && k !== '3:3'),
  );
  // a canonical upper-half address is a valid page-selective target
  assert.ok(
    r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 3, did: 1, pasid: 1, addr: 0xffff_8000_0000_0000n, am: 0 })),
  );
});

test('a stale IOTLB entry is allowed until the right invalidation, then the tables win', () => {
  const r = new Rig();
  const root = r.fl(1);
  const leaf = r.mapFl(root, 0x1000, 0x5000);
  assert.deepEqual(r.t(1, 0x1000), { hpa: 0x5000 });
  r.mem.write64(leaf, 0x6000 | 0x67, 0); // remap without invalidating
  assert.deepEqual(r.t(1, 0x1000), { hpa: 0x5000 }, 'stale until invalidated');
  r.iommu.checkInvariants(); // a pending change explains it
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 3, did: 9, addr: 0x1000n })));
  assert.deepEqual(r.t(1, 0x1000), { hpa: 0x5000 }, 'another domain: still stale');
  assert.ok(r.qi!.submit(P_IOTLB_INV_DSC.encode({ g: 3, did: 1, pasid: 1, addr: 0x1000n })));
  assert.deepEqual(r.t(1, 0x1000), { hpa: 0x6000 });
  r.iommu.checkInvariants();
});

test('the invariant checker rejects a cached translation no table write explains', () => {
  const r = new Rig();
  const root = r.fl(1);
  r.mapFl(root, 0x1000, 0x5000);
  r.t(1, 0x1000);
  r.iommu.checkInvariants();
  const h = r.iommu.iotlb.slotsInUse()[0]!;
  r.iommu.iotlb.base[h] = 0x7000;
  assert.throws(() => r.iommu.checkInvariants(), InvariantError);
});

test('pc_inv_dsc: DID-selective, PASID-selective within DID, global; G=10 is reserved', () => {
  const r = new Rig();
  const root = r.fl(1, { did: 1 });
  r.fl(5, { did: 1 });
  r.sl(2, { did: 2 });
  r.mapFl(root, 0x1000, 0x5000);
  for (const p of [1, 2, 5]) r.t(p, 0x1000);
  assert.equal(r.iommu.cacheSizes().pasid, 3);
  // change PASID 1's entry (first-level root) without invalidating: the cached entry is still used
  const other = r.alloc();
  r.mapFl(other, 0x9000, 0x9000);
  r.tb.setPasidEntry(r.dir, 1, { p: 1, pgtt: 1, did: 1, aw: 2, flptptr: other });
  assert.equal('fault' in r.t(1, 0x9000), true, 'old first-level root still cached');
  r.iommu.checkInvariants();
  // an IOTLB entry built from the stale cached PASID entry is explained by the same pending write
  assert.ok(r.qi!.submit(IOTLB_INV_DSC.encode({ g: 1 })));
  assert.deepEqual(r.t(1, 0x1000), { hpa: 0x5000 });
  r.iommu.checkInvariants();
  assert.ok(r.qi!.submit(PC_INV_DSC.encode({ g: 1, did: 2, pasid: 1 })), 'wrong DID: nothing');
  assert.equal(r.iommu.cacheSizes().pasid, 3);
  assert.ok(r.qi!.submit(PC_INV_DSC.encode({ g: 1, did: 1, pasid: 1 })));
  assert.equal(r.iommu.cacheSizes().pasid, 2);
  assert.deepEqual(r.t(1, 0x9000), { hpa: 0x9000 });
  assert.ok(r.qi!.submit(PC_INV_DSC.encode({ g: 0, did: 1 })));
  assert.equal(r.iommu.cacheSizes().pasid, 1);
  assert.ok(r.qi!.submit(PC_INV_DSC.encode({ g: 3 })));
  assert.equal(r.iommu.cacheSizes().pasid, 0);
  assert.equal(r.qi!.submit(PC_INV_DSC.encode({ g: 2 })), false);
  assert.equal(Number(r.iommu.mmioRead(FSTS, 4)) & 0x10, 0x10);
  assert.equal(Number(r.iommu.mmioRead(IQERCD, 8)) & 0xf, 4);
});

test('cc_inv_dsc: global, domain (global in scalable mode), device with function masks', () => {
  const r = new Rig();
  const sids = [0x10, 0x11, 0x12, 0x13, 0x14, 0x17, 0x18];
  for (const s of sids) r.tb.setContext(s, { p: 1, paside: 1, pdts: 7, pasidDirPtr: r.dir });
  r.pt(0);
  const fillAll = () => {
    r.iommu.invalidateIotlb(1, 0, 0, 0); // so each request walks (and refills the context cache)
    for (const s of sids) assert.ok('hpa' in r.t(-1, 0x1000, ACCESS_READ, false, s));
    assert.equal(r.iommu.cacheSizes().context, sids.length);
  };
  fillAll();
  assert.ok(r.qi!.submit(CC_INV_DSC.encode({ g: 3, sid: 0x10, fm: 0 })));
  assert.equal(r.iommu.cacheSizes().context, sids.length - 1);
  fillAll();
  // FM=10 ignores devfn bits 2:1: 0x10, 0x12 and 0x14 match 0x10; 0x11, 0x13, 0x17, 0x18 do not
  assert.ok(r.qi!.submit(CC_INV_DSC.encode({ g: 3, sid: 0x10, fm: 2 })));
  assert.equal(r.iommu.cacheSizes().context, sids.length - 3);
  fillAll();
  assert.ok(r.qi!.submit(CC_INV_DSC.encode({ g: 3, sid: 0x14, fm: 3 }))); // every function of device 2
  assert.equal(r.iommu.cacheSizes().context, 1);
  fillAll();
  assert.ok(r.qi!.submit(CC_INV_DSC.encode({ g: 2, did: 77 })));
  assert.equal(r.iommu.cacheSizes().context, 0);
  fillAll();
  assert.ok(r.qi!.submit(CC_INV_DSC.encode({ g: 1 })));
  assert.equal(r.iommu.cacheSizes().context, 0);
  assert.equal(r.qi!.submit(CC_INV_DSC.encode({ g: 0 })), false, 'G=00 is invalid');
});

test('caching mode: not-present context and PASID entries stay cached until invalidated', () => {
  const r = new Rig({ caching_mode: true, fault_records: 8 });
  assert.equal(Object.hasOwn(r.t(-1, 0x1000, ACCESS_READ, false, 0x18), 'fault'), true);
  r.tb.setContext(0x18, { p: 1, paside: 1, pdts: 7, pasidDirPtr: r.dir });
  r.pt(0);
  assert.deepEqual(
    r.t(-1, 0x1000, ACCESS_READ, false, 0x18),
    { fault: 0x41, recorded: false },
    'negative entry cached',
  );
  assert.ok(r.qi!.submit(CC_INV_DSC.encode({ g: 3, sid: 0x18 })));
  assert.deepEqual(r.t(-1, 0x1000, ACCESS_READ, false, 0x18), { hpa: 0x1000 });
  // PASID entry: not present -> present needs a PASID-cache invalidation under CM
  assert.equal(Object.hasOwn(r.t(7, 0x1000), 'fault'), true);
  r.pt(7, { did: 5 });
  assert.equal((r.t(7, 0x1000) as { fault: number }).fault, 0x59);
  assert.ok(r.qi!.submit(PC_INV_DSC.encode({ g: 1, did: 5, pasid: 7 })));
  assert.deepEqual(r.t(7, 0x1000), { hpa: 0x1000 });
  r.iommu.checkInvariants();
  // without caching mode nothing negative is kept
  const n = new Rig();
  n.t(7, 0x1000);
  n.pt(7);
  assert.deepEqual(n.t(7, 0x1000), { hpa: 0x1000 });
});

test('inv_wait_dsc: status write, completion interrupt (ICS.IWC, IECTL), unbacked status address', () => {
  const r = new Rig();
  const msis: string[] = [];
  r.iommu.onMsi = (m) => msis.push(m.source);
  r.iommu.mmioWrite(0xa0, 0n, 4); // unmask IECTL
  r.qi!.push(INV_WAIT_DSC.encode({ sw: 1, if: 1, stdata: 0xdead, staddr: 0x5000n }));
  r.qi!.kick();
  assert.equal(r.mem.read32(0x5000), 0xdead);
  assert.equal(Number(r.iommu.mmioRead(0x9c, 4)), 1, 'ICS.IWC');
  assert.deepEqual(msis, ['invalidation']);
  r.qi!.push(INV_WAIT_DSC.encode({ if: 1 }));
  r.qi!.kick();
  assert.equal(msis.length, 1, 'IWC still set: no new interrupt');
  r.iommu.mmioWrite(0x9c, 1n, 4);
  assert.equal(Number(r.iommu.mmioRead(0x9c, 4)), 0);
  r.qi!.push(INV_WAIT_DSC.encode({ sw: 1, stdata: 1, staddr: BigInt(4 * GiB) }));
  r.qi!.push(INV_WAIT_DSC.encode({ fn: 1, pd: 1 }));
  r.qi!.kick();
  assert.equal(Number(r.iommu.mmioRead(FSTS, 4)) & 0x10, 0, 'no error');
  assert.equal(r.iommu.mmioRead(IQH, 8), r.iommu.mmioRead(IQT, 8));
});

test('invalidation queue errors (IQE): type, reserved bits, width, tail, fetch; the head stays; clearing IQE resumes', () => {
  const cases: [string, Uint32Array, number][] = [
    ['type 0', new Uint32Array(8), 3],
    ['type 10', new Uint32Array([0x20a, 0, 0, 0, 0, 0, 0, 0]), 3],
    ['type 15', new Uint32Array([0xf, 0, 0, 0, 0, 0, 0, 0]), 3],
    ['iec without IR', IEC_INV_DSC.encode({ g: 1 }), 3],
    ['cc reserved', CC_INV_DSC.encode({ g: 1, rsvd1: 1 }), 4],
    ['cc qw1', CC_INV_DSC.encode({ g: 1, rsvd3: 1n }), 4],
    ['iotlb reserved', IOTLB_INV_DSC.encode({ g: 1, rsvd3: 1 }), 4],
    ['iotlb G=0', IOTLB_INV_DSC.encode({ g: 0 }), 4],
    ['iotlb AM>MAMV', IOTLB_INV_DSC.encode({ g: 3, am: 19 }), 4],
    ['dev_tlb reserved', DEV_TLB_INV_DSC.encode({ rsvd1: 1 }), 4],
    ['wait reserved', INV_WAIT_DSC.encode({ rsvd1: 1 }), 4],
    ['wait staddr bits', INV_WAIT_DSC.encode({ rsvd2: 1 }), 4],
    ['p_iotlb G=1', P_IOTLB_INV_DSC.encode({ g: 1 }), 4],
    ['p_iotlb reserved', P_IOTLB_INV_DSC.encode({ g: 2, rsvd2: 1 }), 4],
    ['p_iotlb qw2', P_IOTLB_INV_DSC.encode({ g: 2, rsvd4: 1n }), 4],
    ['pc reserved', PC_INV_DSC.encode({ g: 3, rsvd3: 1n }), 4],
    ['p_dev_tlb reserved', P_DEV_TLB_INV_DSC.encode({ rsvd0: 1 }), 4],
    ['page_grp_resp reserved', PAGE_GRP_RESP_DSC.encode({ rsvd0: 1 }), 4],
    [
      '128-bit type in a 256-bit slot with qw2 set',
      new Uint32Array([...IOTLB_INV_DSC.encode({ g: 1 }), 1, 0, 0, 0]),
      4,
    ],
  ];
  for (const [name, d, iqei] of cases) {
    const r = new Rig();
    r.qi!.submit(IOTLB_INV_DSC.encode({ g: 1 }));
    const head0 = r.iommu.mmioRead(IQH, 8) as bigint;
    r.qi!.push(d);
    r.qi!.push(INV_WAIT_DSC.encode({ sw: 1, stdata: 7, staddr: 0x5000n }));
    r.qi!.kick();
    assert.equal(Number(r.iommu.mmioRead(FSTS, 4)) & 0x10, 0x10, `${name}: IQE`);
    assert.equal(Number(r.iommu.mmioRead(IQERCD, 8)) & 0xf, iqei, `${name}: IQEI`);
    assert.equal(r.iommu.mmioRead(IQH, 8), head0, `${name}: head on the bad descriptor`);
    assert.equal(r.mem.read32(0x5000), 0, `${name}: nothing after it ran`);
    // software replaces the bad descriptor with a wait (as Linux's qi_check_fault does) and clears IQE
    const slot = r.qi!.base + Number(head0);
    const w = INV_WAIT_DSC.encode({ sw: 1, stdata: 3, staddr: 0x6000n });
    for (let i = 0; i < 8; i += 2) r.mem.write64(slot + i * 4, w[i] ?? 0, w[i + 1] ?? 0);
    r.iommu.mmioWrite(FSTS, 0x10n, 4);
    assert.equal(r.mem.read32(0x6000), 3, `${name}: resumed`);
    assert.equal(r.mem.read32(0x5000), 7, `${name}: and went on`);
  }
});

test('invalidation queue: 128-bit queue rejects 256-bit descriptor types; misaligned and invalid tail; fetch error; DW without SMTS', () => {
  const r = new Rig({}, { qi: false });
  const q = new InvalidationQueue(r.mem, r.iommu, r.alloc(), 0xff000, { wide: false });
  assert.ok(q.submit(IOTLB_INV_DSC.encode({ g: 1 })));
  q.push(P_IOTLB_INV_DSC.encode({ g: 2 }));
  q.kick();
  assert.equal(Number(r.iommu.mmioRead(IQERCD, 8)) & 0xf, 3);
  const t = new Rig();
  t.iommu.mmioWrite(IQT, 0x10n, 4); // bit 4 with 256-bit descriptors: IQEI 6, tail misaligned
  assert.equal(Number(t.iommu.mmioRead(IQERCD, 8)) & 0xf, 6);
  const t2 = new Rig();
  t2.iommu.mmioWrite(IQT, BigInt(200 << 5), 4); // beyond 128 entries
  assert.equal(Number(t2.iommu.mmioRead(IQERCD, 8)) & 0xf, 1);
  const f = new Rig({}, { qi: false });
  const qf = new InvalidationQueue(f.mem, f.iommu, 2 * GiB, 0xff000);
  assert.equal(qf.base, 2 * GiB);
  f.iommu.mmioWrite(IQT, 0x20n, 4);
  assert.equal(Number(f.iommu.mmioRead(IQERCD, 8)) & 0xf, 2);
  const base = new Rig();
  const w = new Rig({ ecap: base.iommu.regValues.ecap & ~(1n << 43n) }, { qi: false, install: false });
  const qw = new InvalidationQueue(w.mem, w.iommu, w.alloc(), 0xff000);
  qw.push(IOTLB_INV_DSC.encode({ g: 1 }));
  qw.kick();
  assert.equal(Number(w.iommu.mmioRead(IQERCD, 8)) & 0xf, 5);
});

test('dev_tlb_inv_dsc and p_dev_tlb_inv_dsc reach the ATS endpoint; sizes; ITE for a device that never answers', () => {
  const cfg = {
    iommus: [{ ...DEFAULT_VTD }],
    memory: BigInt(GiB),
    devices: [{ bdf: '00:02.0', iommu: 0, pasid_bits: 20, ats: true }],
  };
  const p = createPlatform(cfg);
  const iommu = p.iommus[0]!;
  const mem = p.memory;
  const tb = new VtdTables(mem, 0x100000, 0x1000000);
  const dir = tb.allocPasidDir(7);
  tb.setContext(0x10, { p: 1, dte: 1, paside: 1, pdts: 7, pasidDirPtr: dir });
  const fl = tb.pages.alloc();
  tb.setPasidEntry(dir, 1, { p: 1, pgtt: 1, did: 1, aw: 2, flptptr: fl });
  const sl = tb.pages.alloc();
  tb.setPasidEntry(dir, 0, { p: 1, pgtt: 2, did: 2, aw: 2, slptptr: sl });
  for (let i = 0; i < 8; i++) {
    mapFlLocal(mem, fl, 0x10000 + i * 0x1000, 0x200000 + i * 0x1000, tb);
    mapSlLocal(mem, sl, 0x10000 + i * 0x1000, 0x300000 + i * 0x1000, tb);
  }
  tb.install(iommu);
  const qi = new InvalidationQueue(mem, iommu, tb.pages.alloc(), 0xff000);
  const dev = p.device('00:02.0')!;
  const fill = () => {
    for (let i = 0; i < 8; i++) {
      assert.ok('hpa' in (dev.dma({ pasid: 1, addr: 0x10000 + i * 0x1000, access: 'read' }) as object));
      assert.ok('hpa' in (dev.dma({ addr: 0x10000 + i * 0x1000, access: 'read' }) as object));
    }
  };
  fill();
  assert.equal(dev.atcSize(), 16);
  const hits = dev.atcHits;
  fill();
  assert.equal(dev.atcHits, hits + 16, 'served from the device-TLB');
  // no-PASID entries: one page, then 4 pages (S=1, ADDR bit 12 set, bit 13 clear -> 16 KiB)
  assert.ok(qi.submit(DEV_TLB_INV_DSC.encode({ sid: 0x10, addr: 0x10000n })));
  assert.equal(dev.atcSize(), 15);
  assert.ok(qi.submit(DEV_TLB_INV_DSC.encode({ sid: 0x10, s: 1, addr: 0x11000n })));
  assert.equal(dev.atcSize(), 12);
  // PASID 1, everything (S=1 with ADDR 0x7fff_ffff_ffff_f000)
  assert.ok(qi.submit(P_DEV_TLB_INV_DSC.encode({ sid: 0x10, pasid: 1, s: 1, addr: 0x7fff_ffff_ffff_f000n })));
  assert.equal(dev.atcSize(), 4);
  // global bit: every PASID's entries in range
  fill();
  assert.ok(
    qi.submit(P_DEV_TLB_INV_DSC.encode({ sid: 0x10, pasid: 9, g: 1, s: 1, addr: 0x7fff_ffff_ffff_f000n })),
  );
  assert.equal(dev.atcSize(), 0);
  // a device-TLB invalidation to a source-id with no ATS endpoint times out: ITE, ITESID; queue stops
  qi.push(DEV_TLB_INV_DSC.encode({ sid: 0x0200 }));
  qi.push(INV_WAIT_DSC.encode({ sw: 1, stdata: 5, staddr: 0x7000n }));
  qi.kick();
  assert.equal(Number(iommu.mmioRead(FSTS, 4)) & 0x40, 0x40);
  assert.equal(Number(((iommu.mmioRead(IQERCD, 8) as bigint) >> 32n) & 0xffffn), 0x0200);
  assert.equal(mem.read32(0x7000), 0);
  iommu.mmioWrite(FSTS, 0x40n, 4);
  assert.equal(mem.read32(0x7000), 5, 'resumes after ITE is cleared');
  p.checkInvariants();
});

test('page_grp_resp_dsc is delivered to the endpoint', () => {
  const p = createPlatform({
    iommus: [{ ...DEFAULT_VTD }],
    memory: BigInt(GiB),
    devices: [{ bdf: '00:02.0', iommu: 0, pasid_bits: 20, ats: true }],
  });
  const tb = new VtdTables(p.memory, 0x100000, 0x1000000);
  tb.install(p.iommus[0]!);
  const qi = new InvalidationQueue(p.memory, p.iommus[0]!, tb.pages.alloc(), 0xff000);
  assert.ok(qi.submit(PAGE_GRP_RESP_DSC.encode({ pp: 1, rid: 0x10, pasid: 6, prgi: 5, lpig: 1, rc: 0 })));
  assert.deepEqual(p.device('00:02.0')!.pageResponses, [{ pasid: 6, prgi: 5, lpig: true, rc: 0 }]);
  assert.ok(qi.submit(PAGE_GRP_RESP_DSC.encode({ rid: 0x99, rc: 1 })));
  assert.equal(p.iommus[0]!.strayResponses.length, 1);
});

test('register-based invalidation: CCMD and IOTLB_REG (with CAIG/IAIG), ignored while QI is enabled', () => {
  const r = new Rig({}, { qi: false });
  const root = r.sl(0, { did: 2 });
  r.mapSl(root, 0x1000, 0x5000);
  r.mapSl(root, 0x2000, 0x6000);
  r.t(-1, 0x1000);
  r.t(-1, 0x2000);
  assert.equal(r.iommu.cacheSizes().iotlb, 2);
  const iva = r.iommu.registers['IVA_REG']!;
  const iotlb = r.iommu.registers['IOTLB_REG']!;
  assert.equal(iva, 0xf0);
  r.iommu.mmioWrite(iva, 0x1000n, 8);
  r.iommu.mmioWrite(iotlb, DMA_TLB_IVT | DMA_TLB_PSI_FLUSH | (2n << 32n), 8);
  const v = r.iommu.mmioRead(iotlb, 8) as bigint;
  assert.equal(v >> 63n, 0n, 'IVT cleared when done');
  assert.equal((v >> 57n) & 3n, 3n, 'IAIG = page-selective');
  assert.equal(r.iommu.cacheSizes().iotlb, 1);
  r.iommu.mmioWrite(iotlb, DMA_TLB_IVT | DMA_TLB_DSI_FLUSH | (2n << 32n), 8);
  assert.equal(r.iommu.cacheSizes().iotlb, 0);
  assert.equal(r.iommu.cacheSizes().context, 1);
  r.iommu.mmioWrite(0x28, DMA_CCMD_ICC | DMA_CCMD_DEVICE_INVL | (0x10n << 16n), 8);
  const c = r.iommu.mmioRead(0x28, 8) as bigint;
  assert.equal(c >> 63n, 0n);
  assert.equal((c >> 59n) & 3n, 3n, 'CAIG = device');
  assert.equal(r.iommu.cacheSizes().context, 0);
  r.t(-1, 0x1000);
  r.iommu.mmioWrite(0x28, DMA_CCMD_ICC | DMA_CCMD_GLOBAL_INVL, 8);
  assert.equal(r.iommu.cacheSizes().context, 0);
  // with QI enabled the registers do nothing
  const q = new Rig();
  q.pt(0);
  q.t(-1, 0x1000);
  q.iommu.mmioWrite(0x28, DMA_CCMD_ICC | DMA_CCMD_GLOBAL_INVL, 8);
  assert.equal(q.iommu.cacheSizes().context, 1);
  assert.equal(((q.iommu.mmioRead(0x28, 8) as bigint) >> 59n) & 3n, 0n, 'CAIG = not performed');
});

test('ATS: a translation request failing in the paging structures is a no-permission completion, not a recorded fault', () => {
  const r = new Rig({}, { ctx: { dte: 1 } });
  r.fl(1);
  assert.equal(r.iommu.translateAts(SID, 1, 0, 0x5000, ACCESS_WRITE, false), -1);
  assert.equal(r.iommu.lastFault!.reason, 0x71);
  assert.equal(r.iommu.lastFault!.recorded, false);
  assert.equal(r.iommu.faultRecords()[0]!.f, false);
});

function mapFlLocal(mem: Rig['mem'], root: number, va: number, pa: number, tb: VtdTables): void {
  mapFl(mem, root, va, pa, {}, () => tb.pages.alloc());
}

function mapSlLocal(mem: Rig['mem'], root: number, gpa: number, hpa: number, tb: VtdTables): void {
  mapSl(mem, root, gpa, hpa, {}, () => tb.pages.alloc());
}
