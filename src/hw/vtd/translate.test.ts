import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ACCESS_ATOMIC,
  ACCESS_EXEC,
  ACCESS_READ,
  ACCESS_WRITE,
  AT_TRANSLATION_REQ,
  faultReasonInfo,
} from './faults.ts';
import { XLATE_ABORT, XLATE_FAULT, XLATE_INTERRUPT } from './iommu.ts';
import {
  CAP,
  DMA_GCMD_SRTP,
  DMA_GCMD_TE,
  DMA_RTADDR_SMT,
  DMAR_GCMD_REG,
  DMAR_RTADDR_REG,
  ECAP,
} from './regs.ts';
import { entryAddr } from './tables.ts';
import { GiB, Rig, SID } from './test-rig.ts';

/** Every fault reason a test in this file produced (checked against the full list at the end). */
const seen = new Set<number>();

function expectFault(
  r: { hpa: number } | { fault: number; recorded: boolean },
  reason: number,
  recorded?: boolean,
): void {
  assert.ok(
    'fault' in r,
    `expected fault 0x${reason.toString(16)}, got hpa 0x${'hpa' in r ? r.hpa.toString(16) : ''}`,
  );
  assert.equal(
    r.fault,
    reason,
    `fault 0x${r.fault.toString(16)} (${faultReasonInfo(r.fault).cond}), expected 0x${reason.toString(16)}`,
  );
  if (recorded !== undefined) assert.equal(r.recorded, recorded, 'recorded');
  seen.add(reason);
}

function expectHpa(r: { hpa: number } | { fault: number; recorded: boolean }, hpa: number): void {
  assert.ok(
    'hpa' in r,
    `expected hpa 0x${hpa.toString(16)}, got fault ${'fault' in r ? `0x${r.fault.toString(16)}` : ''}`,
  );
  assert.equal(r.hpa, hpa);
}

const ECAP_DEFAULT_EXTRA = (extra: bigint) => {
  const r = new Rig();
  return r.iommu.regValues.ecap | extra;
};

// ------------------------------------------------------------------------------------------
// root-table address and root entries

test('RTA.1 0x30: reserved TTM, or scalable mode on hardware without SMTS', () => {
  const r = new Rig();
  r.iommu.mmioWrite(DMAR_RTADDR_REG, BigInt(r.tb.root) | (2n << 10n), 8);
  r.iommu.mmioWrite(DMAR_GCMD_REG, BigInt((DMA_GCMD_TE | DMA_GCMD_SRTP) >>> 0), 4);
  r.fl(1);
  expectFault(r.t(1, 0x1000), 0x30, true);
  const noSm = new Rig({ ecap: ECAP_DEFAULT_EXTRA(0n) & ~ECAP.SMTS });
  expectFault(noSm.t(-1, 0x1000), 0x30);
});

test('SRT.1 0x38: root table beyond memory; SRT.2 0x39: LP/UP clear; SRT.3 0x3A: reserved bits', () => {
  const r = new Rig({}, { install: false });
  r.iommu.mmioWrite(DMAR_RTADDR_REG, BigInt(2 * GiB) | BigInt(DMA_RTADDR_SMT), 8);
  r.iommu.mmioWrite(DMAR_GCMD_REG, BigInt((DMA_GCMD_TE | DMA_GCMD_SRTP) >>> 0), 4);
  expectFault(r.t(-1, 0x1000), 0x38, true);

  const r2 = new Rig();
  expectFault(r2.t(-1, 0x1000, ACCESS_READ, false, 0x0100), 0x39, true); // bus 1 has no root entry
  expectFault(r2.t(-1, 0x1000, ACCESS_READ, false, 0x0080), 0x39); // upper half of bus 0 not present
  const re = r2.tb.root; // bus 0 root entry
  r2.mem.write64(re, r2.mem.readLo(re) | 2, r2.mem.readHi(re));
  r2.flushAll();
  expectFault(r2.t(-1, 0x1000), 0x3a);
  // a context-table pointer above the host address width is reserved too
  r2.mem.write64(re, (r2.mem.readLo(re) & ~2) >>> 0, 0x10000);
  r2.flushAll();
  expectFault(r2.t(-1, 0x1000), 0x3a);
});

// ------------------------------------------------------------------------------------------
// context entries

test('SCT.1 0x40: context table beyond memory; SCT.2 0x41: P clear; FPD suppresses SCT.2 but not SCT.1', () => {
  const r = new Rig();
  r.mem.write64(r.tb.root + 16, (2 * GiB + 1) >>> 0, 0); // bus 1 -> context table at 2 GiB (not backed)
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0100), 0x40, true);
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0018), 0x41, false); // the only record is still pending: PFO
  const r2 = new Rig({ fault_records: 4 });
  expectFault(r2.t(-1, 0, ACCESS_READ, false, 0x0018), 0x41, true);
  r2.tb.setContext(0x0020, { p: 0, fpd: 1 });
  expectFault(r2.t(-1, 0, ACCESS_READ, false, 0x0020), 0x41, false);
});

test('SCT.3 0x42: reserved bits in the context entry', () => {
  for (const bad of [{ rsvd0: 1 }, { rsvd1: 1 }, { rsvd2: 1n }, { rsvd3: 1n << 63n }, { pasidDirPtrHi: 1 }]) {
    const r = new Rig({}, { ctx: bad });
    r.fl(1);
    expectFault(r.t(1, 0), 0x42, true);
  }
});

test('SCT.4 0x43: invalid context entry (capability-gated fields, PRE without DTE); PDTS beyond the PASID width is not', () => {
  const noDt = new Rig({ ecap: ECAP_DEFAULT_EXTRA(0n) & ~ECAP.DT }, { ctx: { dte: 1 } });
  expectFault(noDt.t(-1, 0), 0x43);
  const preNoDte = new Rig({}, { ctx: { pre: 1 } });
  expectFault(preNoDte.t(-1, 0), 0x43);
  // Linux sizes the directory from a page at least (PDTS >= 2) whatever the unit's width: the
  // entry is valid, and the unit's width still bounds the PASIDs (SCT.7).
  const narrow = new Rig({ pasid_bits: 16 }, { ctx: { pdts: 7 } });
  narrow.pt(0);
  expectHpa(narrow.t(-1, 0x1234), 0x1234);
  const small = new Rig({ pasid_bits: 8 }, { ctx: { pdts: 2 } });
  small.pt(255);
  expectHpa(small.t(255, 0x1234), 0x1234);
  expectFault(small.t(256, 0x1234), 0x46);
  const ok = new Rig({ pasid_bits: 16 }, { ctx: { pdts: 3 } });
  ok.pt(0);
  expectHpa(ok.t(-1, 0x1234), 0x1234);
  // the smallest directory (PDTS=0, 8192 PASIDs) is what a narrower PASID space uses; the
  // hardware width still bounds the PASIDs (SCT.7)
  const tiny = new Rig({ pasid_bits: 8 }, { ctx: { pdts: 0 } });
  tiny.pt(255);
  expectHpa(tiny.t(255, 0x1234), 0x1234);
  expectFault(tiny.t(256, 0x1234), 0x46);
});

test('SCT.5 0x44: translation request (and translated request) with DTE clear', () => {
  const r = new Rig();
  r.mapFl(r.fl(1), 0, 0x200000);
  const h = r.iommu.translateAts(SID, 1, 0, 0, ACCESS_READ, false);
  assert.equal(h, XLATE_FAULT);
  assert.equal(r.iommu.lastFault!.reason, 0x44);
  assert.equal(r.iommu.lastFault!.at, AT_TRANSLATION_REQ);
  assert.equal(r.iommu.translateTranslated(SID, 1, 0, 0x5000, ACCESS_READ, false), XLATE_FAULT);
  assert.equal(r.iommu.lastFault!.reason, 0x44);
  seen.add(0x44);
  const ok = new Rig({}, { ctx: { dte: 1 } });
  assert.equal(ok.iommu.translateTranslated(SID, 1, 0, 0x5000, ACCESS_READ, false), 0x5000);
});

test('SCT.6 0x45: request with PASID while PASIDE is clear; SCT.7 0x46: PASID beyond PDTS; SCT.9 0x48: RID_PASID beyond', () => {
  const r = new Rig({}, { ctx: { paside: 0 } });
  r.pt(0);
  expectHpa(r.t(-1, 0x5000), 0x5000);
  expectFault(r.t(0, 0x5000), 0x45);
  const small = new Rig({}, { ctx: { pdts: 0 } }); // 2^7 directory entries * 64 = 8192 PASIDs
  small.pt(8191);
  expectHpa(small.t(8191, 0x6000), 0x6000);
  expectFault(small.t(8192, 0x6000), 0x46);
  const rid = new Rig({}, { ctx: { pdts: 0, ridPasid: 9000 } });
  expectFault(rid.t(-1, 0x6000), 0x48);
});

test('RID_PASID selects the PASID entry of requests without PASID, with RID_PRIV as their privilege', () => {
  const r = new Rig({ ecap: ECAP_DEFAULT_EXTRA(ECAP.SRS) }, { ctx: { ridPasid: 7, ridPriv: 1 } });
  const root = r.fl(7, { sre: 1 });
  r.mapFl(root, 0x3000, 0x40_0000, { us: false }); // supervisor-only page
  expectHpa(r.t(-1, 0x3010), 0x40_0010); // RID_PRIV=1: a supervisor request
  const u = new Rig({}, { ctx: { ridPasid: 7 } });
  const root2 = u.fl(7);
  u.mapFl(root2, 0x3000, 0x40_0000, { us: false });
  expectFault(u.t(-1, 0x3010), 0x81); // RID_PRIV=0: a user request
  // a no-PASID request's execute bit does not exist: it is a read
  u.mapFl(root2, 0x4000, 0x50_0000);
  expectHpa(u.t(-1, 0x4000, ACCESS_EXEC), 0x50_0000);
});

// ------------------------------------------------------------------------------------------
// PASID directory and table

test('SPD.1 0x50, SPD.2 0x51, SPD.3 0x52: PASID-directory faults', () => {
  const r = new Rig({}, { ctx: { pasidDirPtr: 2 * GiB } });
  expectFault(r.t(1, 0), 0x50, true);
  const r2 = new Rig();
  expectFault(r2.t(64, 0), 0x51, true); // directory entry 1 never written
  const r3 = new Rig();
  r3.mem.write64(r3.dir + 8, 0x80000 | 1, 0); // entry for PASIDs 64..127: present, no FPD
  r3.mem.write64(r3.dir + 16, 0x81000 | 3, 0); // entry for 128..191: present, FPD set
  r3.mem.write64(r3.dir + 24, 0x82000 | 1 | 0x10, 0); // reserved bit 4
  expectFault(r3.t(192, 0), 0x52, true);
  r3.mem.write64(r3.dir + 32, 2, 0); // not present, FPD=1: not recorded
  expectFault(r3.t(256, 0), 0x51, false);
});

test('SPT.1 0x58, SPT.2 0x59 (with FPD), SPT.3 0x5A: PASID-table entry faults', () => {
  const r = new Rig({ fault_records: 8 });
  r.mem.write64(r.dir + 8, (2 * GiB + 1) >>> 0, 0);
  expectFault(r.t(64, 0), 0x58, true);
  r.fl(1);
  expectFault(r.t(2, 0, ACCESS_READ, false, SID), 0x59);
  r.tb.setPasidEntry(r.dir, 3, { p: 0, fpd: 1 });
  expectFault(r.t(3, 0), 0x59, false);
  for (const bad of [
    { rsvd0: 1 },
    { rsvd1: 4 },
    { rsvd2: 1 },
    { rsvd3: 1n },
    { rsvd7: 1n << 40n },
    { flptptrHi: 1 },
  ]) {
    const q = new Rig();
    q.tb.setPasidEntry(q.dir, 1, { p: 1, pgtt: 1, did: 1, aw: 2, flptptr: 0x200000, ...bad });
    expectFault(q.t(1, 0), 0x5a, true);
  }
});

test('SPT.4 0x5B: invalid PGTT, AW, FLPM, unsupported modes and capability-gated fields', () => {
  const cases: [Partial<Parameters<Rig['tb']['setPasidEntry']>[2]>, bigint?][] = [
    [{ pgtt: 0 }],
    [{ pgtt: 5 }],
    [{ pgtt: 7 }],
    [{ pgtt: 2, aw: 3 }], // 57-bit second level not in SAGAW
    [{ pgtt: 2, aw: 0 }],
    [{ pgtt: 1, flpm: 1 }], // 5-level first level without FL5LP
    [{ pgtt: 1, flpm: 2 }],
    [{ pgtt: 1, sre: 1 }], // SRS = 0
    [{ pgtt: 1, ere: 1 }], // ERS = 0
    [{ pgtt: 1, eafe: 1 }], // EAFS = 0
    [{ pgtt: 2, slade: 1 }], // SLADS = 0
  ];
  for (const [pe] of cases) {
    const r = new Rig();
    r.tb.setPasidEntry(r.dir, 1, { p: 1, did: 1, aw: 2, flptptr: 0x200000, slptptr: 0x201000, ...pe });
    expectFault(r.t(1, 0), 0x5b);
  }
  const noNest = new Rig({ ecap: ECAP_DEFAULT_EXTRA(0n) & ~ECAP.NEST });
  noNest.nested(1);
  expectFault(noNest.t(1, 0), 0x5b);
  const noFl = new Rig({ ecap: ECAP_DEFAULT_EXTRA(0n) & ~ECAP.FLTS });
  noFl.fl(1);
  expectFault(noFl.t(1, 0), 0x5b);
  const noPt = new Rig({ ecap: ECAP_DEFAULT_EXTRA(0n) & ~ECAP.PT });
  noPt.pt(1);
  expectFault(noPt.t(1, 0), 0x5b);
});

test('SPT.5 0x5C: execute request with ERE clear; SPT.6 0x5D: supervisor request with SRE clear', () => {
  const r = new Rig();
  const root = r.fl(1);
  r.mapFl(root, 0, 0x300000);
  expectHpa(r.t(1, 0), 0x300000);
  expectFault(r.t(1, 0, ACCESS_EXEC), 0x5c);
  expectFault(r.t(1, 0, ACCESS_READ, true), 0x5d);
});

// ------------------------------------------------------------------------------------------
// first level

test('first level: 4 KiB / 2 MiB / 1 GiB pages, offsets, A and D updates', () => {
  const r = new Rig({}, { memory: 4 * GiB });
  const root = r.fl(1);
  const leaf = r.mapFl(root, 0x7000, 0x123000);
  r.mapFl(root, 0x4020_0000, 0x80_0000, { leafLevel: 2 });
  r.mapFl(root, 0x8000_0000, 0x4000_0000, { leafLevel: 3 });
  expectHpa(r.t(1, 0x7abc), 0x123abc);
  const e = r.entry(leaf);
  assert.equal(e & 0x60n, 0x20n, 'read sets A, not D');
  expectHpa(r.t(1, 0x7abc, ACCESS_WRITE), 0x123abc);
  assert.equal(r.entry(leaf) & 0x60n, 0x60n, 'write sets D');
  const l4 = r.entry(root);
  assert.equal(l4 & 0x20n, 0x20n, 'A set in upper levels');
  expectHpa(r.t(1, 0x4021_2345), 0x81_2345);
  expectHpa(r.t(1, 0x8123_4567), 0x4123_4567);
});

test('first level: SFL.4 0x73, SFL.1 0x70, SFL.2 0x71, SFL.3 0x72, SGN.1 0x80', () => {
  const r = new Rig();
  r.fl(1, { flptptr: 2 * GiB });
  expectFault(r.t(1, 0x1000), 0x73, true);
  const r2 = new Rig();
  const root = r2.fl(1);
  r2.mem.write64(root, (2 * GiB + 7) >>> 0, 0); // PML4E -> PDPT at 2 GiB
  expectFault(r2.t(1, 0x1000), 0x70);
  expectFault(r2.t(1, 0x80_0000_0000), 0x71); // PML4E 1 not present
  const r3 = new Rig();
  const root3 = r3.fl(1);
  r3.mem.write64(root3, 0x200000 | 0x87, 0); // PS in a PML4E
  expectFault(r3.t(1, 0x1000), 0x72);
  const r4 = new Rig();
  const root4 = r4.fl(1);
  r4.mapFl(root4, 0x1000, 0x5000, { extraHi: 0x10000 }); // address bit 48 (above HAW)
  expectFault(r4.t(1, 0x1000), 0x72);
  r4.mapFl(root4, 0x20_0000, 0x40_0000, { leafLevel: 2, extraLo: 0x2000 }); // misaligned 2 MiB frame
  expectFault(r4.t(1, 0x20_0000), 0x72);
  expectFault(r4.t(1, 0x0000_8000_0000_0000n), 0x80);
  expectFault(r4.t(1, 0xffff_7fff_ffff_f000n), 0x80);
  const noGp = new Rig({ cap: new Rig().iommu.regValues.cap & ~CAP.FL1GP });
  const rootG = noGp.fl(1);
  noGp.mapFl(rootG, 0x4000_0000, 0x4000_0000, { leafLevel: 3 });
  expectFault(noGp.t(1, 0x4000_0000), 0x72); // PS in a PDPE without FL1GP
});

test('first level: canonical upper-half addresses translate', () => {
  const r = new Rig();
  const root = r.fl(1);
  const va = 0xffff_8000_0000_0000n + 0x5000n;
  // map by hand: index 256 at level 4
  const t3 = r.alloc();
  const t2 = r.alloc();
  const t1 = r.alloc();
  r.mem.write64(root + 256 * 8, t3 | 7, 0);
  r.mem.write64(t3, t2 | 7, 0);
  r.mem.write64(t2, t1 | 7, 0);
  r.mem.write64(t1 + 5 * 8, 0x77000 | 7, 0);
  expectHpa(r.t(1, va + 0x12n), 0x77012);
});

test('first level: U/S (SGN.2 0x81), R/W with and without WPE (SGN.6 0x85), XD with NXE and SMEP (SGN.3 0x82)', () => {
  const ecap = ECAP_DEFAULT_EXTRA(ECAP.SRS | ECAP.ERS);
  const r = new Rig({ ecap });
  const root = r.fl(1, { sre: 1, ere: 1, nxe: 1 });
  r.mapFl(root, 0x1000, 0x10000, { us: false });
  r.mapFl(root, 0x2000, 0x20000, { rw: false });
  r.mapFl(root, 0x3000, 0x30000, { xd: true });
  expectFault(r.t(1, 0x1000), 0x81);
  expectHpa(r.t(1, 0x1000, ACCESS_READ, true), 0x10000);
  expectFault(r.t(1, 0x2000, ACCESS_WRITE), 0x85);
  expectFault(r.t(1, 0x2000, ACCESS_ATOMIC), 0x85);
  expectHpa(r.t(1, 0x2000, ACCESS_WRITE, true), 0x20000); // supervisor, WPE=0: R/W ignored
  expectFault(r.t(1, 0x3000, ACCESS_EXEC), 0x82);
  expectHpa(r.t(1, 0x3000), 0x30000);
  expectHpa(r.t(1, 0x2000, ACCESS_EXEC), 0x20000);
  const w = new Rig({ ecap });
  const rootW = w.fl(1, { sre: 1, wpe: 1, ere: 1, smep: 1 });
  w.mapFl(rootW, 0x2000, 0x20000, { rw: false });
  expectFault(w.t(1, 0x2000, ACCESS_WRITE, true), 0x85); // WPE: supervisor writes honour R/W
  w.mapFl(rootW, 0x4000, 0x40000); // a user page
  expectFault(w.t(1, 0x4000, ACCESS_EXEC, true), 0x82); // SMEP
  expectHpa(w.t(1, 0x4000, ACCESS_EXEC, false), 0x40000);
  // without NXE the XD bit is ignored
  const n = new Rig({ ecap });
  const rootN = n.fl(1, { ere: 1 });
  n.mapFl(rootN, 0x3000, 0x30000, { xd: true });
  expectHpa(n.t(1, 0x3000, ACCESS_EXEC), 0x30000);
});

test('SFL.9 0x90: first-level A/D update on a non-snooped walk (ECAP.SMPWC, PWSNP clear)', () => {
  const r = new Rig({ ecap: ECAP_DEFAULT_EXTRA(ECAP.SMPWC) });
  const root = r.fl(1);
  r.mapFl(root, 0x1000, 0x10000);
  expectFault(r.t(1, 0x1000), 0x90);
  const ok = new Rig({ ecap: ECAP_DEFAULT_EXTRA(ECAP.SMPWC) });
  const root2 = ok.fl(1, { pwsnp: 1 });
  ok.mapFl(root2, 0x1000, 0x10000);
  expectHpa(ok.t(1, 0x1000), 0x10000);
  // already accessed (and dirty) entries need no update: no fault even with PWSNP clear
  const pre = new Rig({ ecap: ECAP_DEFAULT_EXTRA(ECAP.SMPWC) });
  const root3 = pre.fl(1);
  pre.mapFl(root3, 0x1000, 0x10000, { a: true });
  for (const a of [root3]) pre.mem.write64(a, pre.mem.readLo(a) | 0x20, 0);
  const l3 = Number(pre.entry(root3) & 0xffff_ffff_f000n);
  pre.mem.write64(l3, pre.mem.readLo(l3) | 0x20, 0);
  const l2 = Number(pre.entry(l3) & 0xffff_ffff_f000n);
  pre.mem.write64(l2, pre.mem.readLo(l2) | 0x20, 0);
  expectHpa(pre.t(1, 0x1000), 0x10000);
});

test('first level: 5-level paging with FL5LP', () => {
  const r = new Rig({ fl_levels: 5 });
  const root = r.fl(1, { flpm: 1 });
  r.mapFl(root, 2 ** 50 + 0x3000, 0x99000, { levels: 5 });
  expectHpa(r.t(1, 2 ** 50 + 0x3004), 0x99004);
  expectFault(r.t(1, 0x0100_0000_0000_0000n), 0x80); // bit 56 set, 63:57 clear
});

test('SGN.8 0x87: a translation into the interrupt range', () => {
  const r = new Rig();
  const root = r.fl(1);
  r.mapFl(root, 0x5000, 0xfee0_0000);
  r.mapFl(root, 0x20_0000, 0xfee0_0000, { leafLevel: 2 });
  expectFault(r.t(1, 0x5000, ACCESS_WRITE), 0x87);
  expectFault(r.t(1, 0x20_0000), 0x87);
  r.pt(2);
  expectFault(r.t(2, 0xfee0_1000), 0x87);
  expectHpa(r.t(2, 0xfef0_0000), 0xfef0_0000);
});

test('requests without PASID to 0xFEEx_xxxx: a write is an interrupt, a read is an unsupported request', () => {
  const r = new Rig();
  r.pt(0);
  assert.deepEqual(r.iommu.translateRequest({ sid: SID, addr: 0xfee0_0000n, access: ACCESS_WRITE }), {
    interrupt: true,
  });
  assert.deepEqual(r.iommu.translateRequest({ sid: SID, addr: 0xfee0_0000n, access: ACCESS_READ }), {
    abort: true,
  });
  assert.deepEqual(
    r.iommu.translateRequest({ sid: SID, pasid: undefined, addr: 0x1000n, access: ACCESS_READ }),
    { hpa: 0x1000n },
  );
  const f = r.iommu.translateRequest({ sid: SID, pasid: 3, addr: 0x1000n, access: ACCESS_READ });
  assert.ok('fault' in f && f.fault.reason === 0x59 && f.fault.pasid === 3);
  assert.equal(r.iommu.translate(SID, -1, 0xfee0_0000, ACCESS_WRITE, false), XLATE_INTERRUPT);
  assert.equal(r.iommu.translate(SID, -1, 0xfeef_fffc, ACCESS_READ, false), XLATE_ABORT);
  assert.equal(r.iommu.translate(SID, -1, 0xfef0_0000, ACCESS_READ, false), 0xfef0_0000);
});

// ------------------------------------------------------------------------------------------
// second level

test('second level: pages, permissions (SGN.6 0x85, SGN.7 0x86 incl. not present), beyond AGAW (SGN.4 0x83)', () => {
  const r = new Rig();
  const root = r.sl(1);
  r.mapSl(root, 0x1000, 0x11000, { r: true, w: false });
  r.mapSl(root, 0x2000, 0x22000, { r: false, w: true });
  r.mapSl(root, 0x4000_0000, 0x0400_0000, { leafLevel: 2 });
  r.mapSl(root, 0x8000_0000, 0x0, { leafLevel: 3 });
  expectHpa(r.t(1, 0x1008), 0x11008);
  expectFault(r.t(1, 0x1008, ACCESS_WRITE), 0x85);
  expectFault(r.t(1, 0x2008), 0x86);
  expectHpa(r.t(1, 0x2008, ACCESS_WRITE), 0x22008);
  expectFault(r.t(1, 0x3000), 0x86); // not present = no read permission
  expectFault(r.t(1, 0x3000, ACCESS_WRITE), 0x85);
  expectHpa(r.t(1, 0x4012_3456), 0x0412_3456);
  expectHpa(r.t(1, 0x8765_4321), 0x0765_4321);
  expectFault(r.t(1, 2 ** 48), 0x83);
  const r39 = new Rig();
  r39.sl(1, { aw: 1 });
  expectFault(r39.t(1, 2 ** 39), 0x83);
  // requests without PASID use RID_PASID's entry (PASID 0)
  const root0 = r.sl(0);
  r.mapSl(root0, 0x9000, 0x99000);
  expectHpa(r.t(-1, 0x9010), 0x99010);
});

test('second level: SSL.4 0x7B, SSL.1 0x78, SSL.3 0x7A, execute with SLEE (SGN.3 0x82)', () => {
  const r = new Rig();
  r.sl(1, { slptptr: 2 * GiB });
  expectFault(r.t(1, 0), 0x7b);
  const r2 = new Rig();
  const root = r2.sl(1);
  r2.mem.write64(root, (2 * GiB + 3) >>> 0, 0);
  expectFault(r2.t(1, 0), 0x78);
  const r3 = new Rig();
  const root3 = r3.sl(1);
  r3.mapSl(root3, 0x1000, 0x5000, { extraHi: 0x4000_0000 }); // TM (bit 62)
  expectFault(r3.t(1, 0x1000), 0x7a);
  r3.mem.write64(root3 + 8, 0x300000 | 0x83, 0); // PS in an SL-PML4E
  expectFault(r3.t(1, 0x80_0000_0000), 0x7a);
  r3.mapSl(root3, 0x4000_0000, 0x400_0000, { leafLevel: 2, extraLo: 0x1000 }); // misaligned 2 MiB frame
  expectFault(r3.t(1, 0x4000_0000), 0x7a);
  const ecap = ECAP_DEFAULT_EXTRA(ECAP.ERS);
  const x = new Rig({ ecap });
  const rootX = x.sl(1, { slee: 1, ere: 1 });
  x.mapSl(rootX, 0x1000, 0x5000, { x: false });
  x.mapSl(rootX, 0x2000, 0x6000, { x: true });
  expectFault(x.t(1, 0x1000, ACCESS_EXEC), 0x82);
  expectHpa(x.t(1, 0x2000, ACCESS_EXEC), 0x6000);
  const noSleeX = new Rig({ ecap });
  const rootY = noSleeX.sl(1, { ere: 1 });
  noSleeX.mapSl(rootY, 0x1000, 0x5000, { x: false });
  expectHpa(noSleeX.t(1, 0x1000, ACCESS_EXEC), 0x5000); // SLEE clear: X not checked
});

test('second level A/D with SLADE (SLADS), and SSL.5 0x7C on a non-snooped walk', () => {
  const ecap = ECAP_DEFAULT_EXTRA(ECAP.SLADS);
  const r = new Rig({ ecap });
  const root = r.sl(1, { slade: 1 });
  const leaf = r.mapSl(root, 0x1000, 0x5000);
  expectHpa(r.t(1, 0x1000), 0x5000);
  assert.equal(r.entry(leaf) & 0x300n, 0x100n);
  expectHpa(r.t(1, 0x1000, ACCESS_WRITE), 0x5000);
  assert.equal(r.entry(leaf) & 0x300n, 0x300n);
  assert.equal(r.entry(root) & 0x100n, 0x100n);
  const ns = new Rig({ ecap: ecap | ECAP.SMPWC });
  const root2 = ns.sl(1, { slade: 1 });
  ns.mapSl(root2, 0x1000, 0x5000);
  expectFault(ns.t(1, 0x1000), 0x7c);
});

// ------------------------------------------------------------------------------------------
// nested

test('nested: a full walk through both levels, with A bits in guest tables', () => {
  const r = new Rig();
  const { flRoot } = r.nested(1);
  const leaf = r.mapGuestFl(flRoot, 0x1234_5000, 0x40_0000); // GVA -> GPA 4 MiB
  expectHpa(r.t(1, 0x1234_5678), r.guestBase + 0x40_0678);
  assert.equal(r.entry(r.g2h(0) + leaf - r.guestBase) & 0x20n, 0x20n, 'A set in the guest PTE');
  expectHpa(r.t(1, 0x1234_5678, ACCESS_WRITE), r.guestBase + 0x40_0678);
  expectFault(r.t(1, 0x2234_5000), 0x71);
});

test('nested: SFL.5 0x74, SFL.6 0x75, SFL.7 0x76, SFL.8 0x77, SGN.5 0x84 and final SL permissions', () => {
  // FLPTPTR beyond the second level's 39-bit input range
  const a = new Rig();
  a.nested(1, { aw: 1, flptptr: 2 ** 40 });
  expectFault(a.t(1, 0), 0x74);
  // FL-PML4 page not readable in the second level
  const b = new Rig();
  const { flRoot, slRoot } = b.nested(1);
  b.mapGuestFl(flRoot, 0x1000, 0x40_0000);
  const l2 = entryAddr(b.mem, slRoot, flRoot, 2, 4, 3)!; // the 2 MiB SL leaf holding the FL root
  b.mem.write64(l2, (b.mem.readLo(l2) & ~1) >>> 0, b.mem.readHi(l2)); // write-only
  expectFault(b.t(1, 0x1000), 0x75);
  // a lower FL table whose GPA the second level does not map
  const c = new Rig();
  const nc = c.nested(1);
  c.mem.write64(c.g2h(nc.flRoot), (0x0800_0000 | 7) >>> 0, 0); // PML4E -> GPA 128 MiB (not mapped)
  expectFault(c.t(1, 0x1000), 0x76);
  // a lower FL table beyond the second level's range
  c.mem.write64(c.g2h(nc.flRoot) + 8, 7, 0x100); // PML4E 1 -> GPA 2^40 with 39-bit... (48-bit here: mapped? no)
  expectFault(c.t(1, 0x80_0000_0000), 0x76);
  // A/D update of a guest FL entry whose page is read-only in the second level
  const d = new Rig();
  const nd = d.nested(1, {}, { r: true, w: false });
  d.mapGuestFl(nd.flRoot, 0x1000, 0x40_0000);
  expectFault(d.t(1, 0x1000), 0x77);
  // the FL output GPA beyond a 39-bit second level
  const e = new Rig();
  const ne = e.nested(1, { aw: 1 }, { levels: 3 });
  e.mapGuestFl(ne.flRoot, 0x1000, 2 ** 40);
  expectFault(e.t(1, 0x1000), 0x84);
  // final second-level permissions (the 2 MiB SL leaf holding the output GPA)
  const f = new Rig();
  const nf = f.nested(1);
  f.mapGuestFl(nf.flRoot, 0x1000, 0x40_0000);
  const leaf = entryAddr(f.mem, nf.slRoot, 0x40_0000, 2, 4, 3)!;
  f.mem.write64(leaf, (f.mem.readLo(leaf) & ~2) >>> 0, f.mem.readHi(leaf)); // read-only
  expectHpa(f.t(1, 0x1000), f.g2h(0x40_0000));
  expectFault(f.t(1, 0x1000, ACCESS_WRITE), 0x85);
  f.mem.write64(leaf, (f.mem.readLo(leaf) & ~3) >>> 0, f.mem.readHi(leaf)); // no access
  f.flushAll();
  expectFault(f.t(1, 0x1000), 0x86);
});

test('nested with no IOTLB: the quick walk steps aside for tracing, translation disabled and a changed context entry', () => {
  const r = new Rig({ iotlb_entries: 0 });
  const { flRoot } = r.nested(1, {}, { leafLevel: 1 }, 20 * 2 ** 20); // guest tables from 16 MiB
  r.mapGuestFl(flRoot, 0x1234_5000, 0x40_0000);
  const hpa = r.guestBase + 0x40_0678;
  expectHpa(r.t(1, 0x1234_5678), hpa); // the full walk: it sets the accessed bits
  const walks = r.iommu.walkCount;
  expectHpa(r.t(1, 0x1234_5678), hpa); // the quick walk
  expectHpa(r.t(1, 0x1234_5678, ACCESS_WRITE), hpa); // the full walk sets D, then the quick one
  expectHpa(r.t(1, 0x1234_5678, ACCESS_WRITE), hpa);
  assert.equal(r.iommu.walkCount, walks + 3);
  // a tracer sees every one of the 24 reads
  const ev: string[] = [];
  r.iommu.tracer = (e) => ev.push(e.what);
  expectHpa(r.t(1, 0x1234_5678), hpa);
  const level = ['sl', 'sl', 'sl', 'sl', 'fl-nested'];
  assert.deepEqual(ev, [...level, ...level, ...level, ...level, 'sl', 'sl', 'sl', 'sl']);
  r.iommu.tracer = null;
  // translation disabled: untranslated
  r.iommu.mmioWrite(DMAR_GCMD_REG, 0n, 4);
  expectHpa(r.t(1, 0x1234_5678), 0x1234_5678);
  r.iommu.mmioWrite(DMAR_GCMD_REG, BigInt(DMA_GCMD_TE), 4);
  expectHpa(r.t(1, 0x1234_5678), hpa);
  expectHpa(r.t(1, 0x1234_5678), hpa);
  // PASIDE cleared and only the context cache invalidated (the PASID cache keeps the entry)
  r.tb.setContext(SID, { p: 1, paside: 0, pdts: 7, pasidDirPtr: r.dir });
  r.iommu.invalidateContextCache(1, 0, 0, 0);
  expectFault(r.t(1, 0x1234_5678), 0x45);
  expectFault(r.t(1, 0x1234_5678), 0x45);
  // a PASID beyond a smaller directory
  r.tb.setContext(SID, { p: 1, paside: 1, pdts: 0, pasidDirPtr: r.dir });
  r.iommu.invalidateContextCache(1, 0, 0, 0);
  expectHpa(r.t(1, 0x1234_5678), hpa);
  r.iommu.checkInvariants();
});

// ------------------------------------------------------------------------------------------
// pass-through and translation disabled

test('pass-through: identity with PASID, SGN.4 0x83 beyond the host address width', () => {
  const r = new Rig();
  r.pt(9);
  expectHpa(r.t(9, 0x1234_5678), 0x1234_5678);
  expectHpa(r.t(9, 0x1234_5678, ACCESS_WRITE), 0x1234_5678);
  expectFault(r.t(9, 2 ** 48), 0x83);
});

test('translation disabled: requests pass through untranslated', () => {
  const r = new Rig({}, { install: false });
  assert.equal(r.iommu.translationEnabled, false);
  expectHpa(r.t(5, 0x4242_0000), 0x4242_0000);
  expectHpa(r.t(-1, 0x1000, ACCESS_WRITE), 0x1000);
});

// ------------------------------------------------------------------------------------------
// legacy mode (TTM=00) and qemu_compat

test('legacy mode: second-level and pass-through contexts, and every legacy fault reason', () => {
  const r = new Rig({ fault_records: 16 }, { install: false });
  const slRoot = r.alloc();
  r.mapSl(slRoot, 0x1000, 0x5000, { w: false });
  r.mapSl(slRoot, 0x2000, 0x6000, { r: false, w: true });
  r.tb.setLegacyContext(0x0010, { slptptr: slRoot, aw: 2, did: 7 });
  r.tb.setLegacyContext(0x0011, { slptptr: 0, aw: 2, did: 8, tt: 2 });
  r.tb.setLegacyContext(0x0012, { slptptr: slRoot, aw: 3, did: 9 }); // AW not in SAGAW
  r.tb.setLegacyContext(0x0013, { p: 0, slptptr: 0, aw: 2, did: 1 });
  r.tb.install(r.iommu, { legacy: true });
  expectHpa(r.t(-1, 0x1010, ACCESS_READ, false, 0x10), 0x5010);
  expectHpa(r.t(-1, 0xabc000, ACCESS_READ, false, 0x11), 0xabc000);
  expectFault(r.t(1, 0x1000, ACCESS_READ, false, 0x10), 0x31); // RTA.2: request with PASID
  expectFault(r.t(-1, 0x1000, ACCESS_WRITE, false, 0x10), 0x05);
  expectFault(r.t(-1, 0x2000, ACCESS_READ, false, 0x10), 0x06);
  expectFault(r.t(-1, 0x0, ACCESS_READ, false, 0x12), 0x03);
  expectFault(r.t(-1, 0x0, ACCESS_READ, false, 0x13), 0x02);
  expectFault(r.t(-1, 0x0, ACCESS_READ, false, 0x0100), 0x01);
  expectFault(r.t(-1, 2 ** 48, ACCESS_READ, false, 0x10), 0x04);
  const slRoot2 = r.alloc();
  r.mem.write64(slRoot2, (2 * GiB + 3) >>> 0, 0);
  r.tb.setLegacyContext(0x0014, { slptptr: slRoot2, aw: 2, did: 9 });
  expectFault(r.t(-1, 0x0, ACCESS_READ, false, 0x14), 0x07);
  const slRoot3 = r.alloc();
  r.mapSl(slRoot3, 0x0, 0x7000, { extraHi: 0x4000_0000 });
  r.tb.setLegacyContext(0x0015, { slptptr: slRoot3, aw: 2, did: 9 });
  expectFault(r.t(-1, 0x0, ACCESS_READ, false, 0x15), 0x0c);
  r.mapSl(slRoot, 0x3000, 0xfee0_0000);
  expectFault(r.t(-1, 0x3000, ACCESS_READ, false, 0x10), 0x0e);
  assert.equal(r.iommu.translateAts(0x10, -1, 0, 0x1000, ACCESS_READ, false), XLATE_FAULT);
  assert.equal(r.iommu.lastFault!.reason, 0x0d);
  seen.add(0x0d);
  // reserved bits in a legacy context entry, and in a legacy root entry
  const ctxAddr = r.tb.setLegacyContext(0x0016, { slptptr: slRoot, aw: 2, did: 9 });
  r.mem.write64(ctxAddr + 8, 2 | (9 << 8) | 0x80, 0);
  expectFault(r.t(-1, 0x1000, ACCESS_READ, false, 0x16), 0x0b);
  r.mem.write64(r.tb.root + 2 * 16 + 8, 1, 0); // bus 2 root entry: upper qword reserved
  r.mem.write64(r.tb.root + 2 * 16, 0x300000 | 1, 0);
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0200), 0x0a);
  r.mem.write64(r.tb.root + 3 * 16, (2 * GiB + 1) >>> 0, 0);
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0300), 0x09);
  const r2 = new Rig({}, { install: false });
  r2.iommu.mmioWrite(DMAR_RTADDR_REG, BigInt(2 * GiB), 8);
  r2.iommu.mmioWrite(DMAR_GCMD_REG, BigInt((DMA_GCMD_TE | DMA_GCMD_SRTP) >>> 0), 4);
  expectFault(r2.t(-1, 0x1000), 0x08);
});

test('qemu_compat reports QEMU legacy codes for root/context/second-level faults, SM codes for first level', () => {
  const r = new Rig({ qemu_compat: true, fault_records: 8 });
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0018), 0x02);
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0100), 0x01);
  const root = r.sl(0);
  r.mapSl(root, 0x1000, 0x5000, { w: false });
  expectFault(r.t(-1, 0x1000, ACCESS_WRITE), 0x05);
  expectFault(r.t(-1, 0x2000), 0x06);
  expectFault(r.t(-1, 2 ** 48), 0x04);
  const fl = r.fl(1);
  r.mapFl(fl, 0x1000, 0x5000, { rw: false });
  expectFault(r.t(1, 0x2000), 0x71);
  expectFault(r.t(1, 0x1000, ACCESS_WRITE), 0x85);
});

// ------------------------------------------------------------------------------------------
// page requests

test('page requests: queued in the PRQ, RTA.3 0x32 in legacy mode, SCT.8 0x47 without PRE', () => {
  const r = new Rig({}, { ctx: { dte: 1, pre: 1 } });
  const pq = r.alloc();
  r.iommu.mmioWrite(r.iommu.registers['PQA_REG']!, BigInt(pq), 8);
  r.iommu.mmioWrite(r.iommu.registers['PECTL_REG']!, 0n, 4);
  const msis: string[] = [];
  r.iommu.onMsi = (m) => msis.push(m.source);
  assert.equal(r.iommu.pageRequest(SID, 5, 0, 0x1234_5000, ACCESS_WRITE, false, true, 3), 'queued');
  assert.equal(r.iommu.mmioRead(r.iommu.registers['PQT_REG']!, 8), 0x20n);
  assert.equal(Number(r.iommu.mmioRead(r.iommu.registers['PRS_REG']!, 4)) & 1, 1);
  assert.deepEqual(msis, ['page-request']);
  const q0 = r.mem.readU64(pq);
  const q1 = r.mem.readU64(pq + 8);
  assert.equal(q0 & 0xffn, 1n);
  assert.equal((q0 >> 8n) & 1n, 1n, 'PASID present');
  assert.equal((q0 >> 16n) & 0xffffn, BigInt(SID));
  assert.equal((q0 >> 32n) & 0xfffffn, 5n);
  assert.equal(q1 & ~0xfffn, 0x1234_5000n);
  assert.equal((q1 >> 1n) & 1n, 1n, 'write requested');
  assert.equal((q1 >> 2n) & 1n, 1n, 'LPIG');
  assert.equal((q1 >> 3n) & 0x1ffn, 3n);
  const noPre = new Rig({}, { ctx: { dte: 1 } });
  assert.equal(noPre.iommu.pageRequest(SID, 5, 0, 0x1000, ACCESS_READ, false, true, 0), XLATE_FAULT);
  assert.equal(noPre.iommu.lastFault!.reason, 0x47);
  seen.add(0x47);
  const leg = new Rig({}, { install: false });
  leg.tb.install(leg.iommu, { legacy: true });
  assert.equal(leg.iommu.pageRequest(SID, -1, 0, 0x1000, ACCESS_READ, false, true, 0), XLATE_FAULT);
  assert.equal(leg.iommu.lastFault!.reason, 0x32);
  seen.add(0x32);
  // a full queue (2^7 entries for PQS=0) overflows: PRS.PRO
  for (let i = 0; i < 126; i++) r.iommu.pageRequest(SID, 5, 0, 0x1000, ACCESS_READ, false, true, 0);
  assert.equal(r.iommu.pageRequest(SID, 5, 0, 0x1000, ACCESS_READ, false, true, 0), 'overflow');
  assert.equal(Number(r.iommu.mmioRead(r.iommu.registers['PRS_REG']!, 4)) & 2, 2);
});

// ------------------------------------------------------------------------------------------
// fault recording (B.6)

test('fault recording: FRCD fields, FSTS.PPF/FRI, F cleared by software, compression by source-id', () => {
  const r = new Rig({ fault_records: 2 });
  const root = r.fl(3);
  r.mapFl(root, 0x1000, 0x5000, { rw: false });
  expectFault(r.t(3, 0x1abc, ACCESS_WRITE), 0x85, true);
  const [f0] = r.iommu.faultRecords();
  assert.deepEqual(f0, { index: 0, f: true, reason: 0x85, sid: SID, addr: 0x1000n, read: false, pasid: 3 });
  const fsts = Number(r.iommu.mmioRead(0x34, 4));
  assert.equal(fsts & 2, 2, 'PPF');
  assert.equal((fsts >> 8) & 0xff, 0, 'FRI');
  // the raw register: F (bit 127), T=0 (write), PP, PV, FR
  const hi = r.iommu.mmioRead(0x228, 8) as bigint;
  assert.equal(hi >> 63n, 1n);
  assert.equal((hi >> 62n) & 1n, 0n);
  assert.equal((hi >> 31n) & 1n, 1n);
  assert.equal((hi >> 40n) & 0xfffffn, 3n);
  assert.equal((hi >> 32n) & 0xffn, 0x85n);
  // same source-id again: compressed, not recorded
  expectFault(r.t(3, 0x2000), 0x71, false);
  // another source-id: the next record
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0018), 0x41, true);
  assert.equal(r.iommu.faultRecords()[1]!.sid, 0x18);
  // software clears record 0's F: PPF stays (record 1 pending), then clears record 1: PPF drops
  r.iommu.mmioWrite(0x22c, 0x8000_0000n, 4);
  assert.equal(Number(r.iommu.mmioRead(0x34, 4)) & 2, 2);
  r.iommu.mmioWrite(0x23c, 0x8000_0000n, 4);
  assert.equal(Number(r.iommu.mmioRead(0x34, 4)) & 2, 0);
  r.iommu.checkInvariants();
});

test('fault recording: overflow sets PFO and drops faults until software clears it', () => {
  const r = new Rig({ fault_records: 1 });
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0018), 0x41, true);
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0020), 0x41, false);
  assert.equal(Number(r.iommu.mmioRead(0x34, 4)) & 1, 1, 'PFO');
  r.iommu.mmioWrite(0x22c, 0x8000_0000n, 4); // free the record
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0020), 0x41, false); // PFO still set: dropped
  r.iommu.mmioWrite(0x34, 1n, 4); // clear PFO (RW1C)
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0020), 0x41, true);
  assert.equal(r.iommu.faultRecords()[0]!.sid, 0x20);
});

test('fault events: an MSI when the first fault is recorded, deferred while masked', () => {
  const r = new Rig({ fault_records: 4 });
  const msis: { source: string; addr: bigint; data: number }[] = [];
  r.iommu.onMsi = (m) => msis.push(m);
  r.iommu.mmioWrite(0x3c, 0x41n, 4); // FEDATA
  r.iommu.mmioWrite(0x40, 0xfee0_0000n, 4); // FEADDR
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0018), 0x41, true);
  assert.equal(msis.length, 0, 'FECTL.IM is set at reset');
  assert.equal(Number(r.iommu.mmioRead(0x38, 4)) >>> 30, 3, 'IM and IP');
  r.iommu.mmioWrite(0x38, 0n, 4); // unmask: the pending event is delivered
  assert.deepEqual(msis, [{ source: 'fault', addr: 0xfee0_0000n, data: 0x41 }]);
  assert.equal(Number(r.iommu.mmioRead(0x38, 4)) >>> 30, 0);
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0020), 0x41, true);
  assert.equal(msis.length, 1, 'PPF already set: no new event');
  r.iommu.mmioWrite(0x22c, 0x8000_0000n, 4);
  r.iommu.mmioWrite(0x23c, 0x8000_0000n, 4);
  expectFault(r.t(-1, 0, ACCESS_READ, false, 0x0028), 0x41, true);
  assert.equal(msis.length, 2);
});

test('tracing shows each step of a walk and the fault', () => {
  const r = new Rig();
  const root = r.fl(1);
  r.mapFl(root, 0x1000, 0x5000);
  const ev: { kind: string; what: string }[] = [];
  r.iommu.tracer = (e) => ev.push(e);
  r.t(1, 0x1000);
  assert.deepEqual(
    ev.map((e) => e.what),
    ['root', 'context', 'pasid-dir', 'pasid-entry', 'fl', 'fl', 'fl', 'fl'],
  );
  ev.length = 0;
  r.t(1, 0x1000);
  assert.deepEqual(
    ev.map((e) => e.what),
    ['iotlb-hit'],
  );
  ev.length = 0;
  r.t(1, 0x9000);
  assert.equal(ev.at(-1)!.what, 'fault');
});

test('walks work the same on a machine large enough for the slot memory layout', () => {
  const r = new Rig({}, { memory: 16 * GiB });
  assert.equal(r.mem.flat, null);
  const fl = r.fl(1);
  r.mapFl(fl, 0x1000, 12 * GiB);
  const sl = r.sl(2);
  r.mapSl(sl, 0x2000, 9 * GiB);
  const { flRoot } = r.nested(3, {}, { leafLevel: 1 }, 20 * 2 ** 20);
  r.mapGuestFl(flRoot, 0x3000, 0x10_0000);
  expectHpa(r.t(1, 0x1010), 12 * GiB + 0x10);
  expectHpa(r.t(2, 0x2020, ACCESS_WRITE), 9 * GiB + 0x20);
  expectHpa(r.t(3, 0x3030), r.g2h(0x10_0030));
  expectFault(r.t(1, 0x5000), 0x71);
  r.iommu.checkInvariants();
});

test('every fault reason the model can raise is reached by a test', () => {
  // Exempt (PROFILE.md): 0x79 (not raised under the 0x85/0x86 rule), 0x33, 0x7D, 0x88, 0x89 (no
  // trigger in the spec the model has); 0x91 has no trigger here either (an entry that could be
  // read can be written). Interrupt-remapping reasons 0x20-0x29 are out of scope (ECAP.IR = 0).
  const all = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x30, 0x31, 0x32,
    0x38, 0x39, 0x3a, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x50, 0x51, 0x52, 0x58, 0x59,
    0x5a, 0x5b, 0x5c, 0x5d, 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x7a, 0x7b, 0x7c, 0x80,
    0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x90,
  ];
  const missing = all.filter((r) => !seen.has(r)).map((r) => `0x${r.toString(16)}`);
  assert.deepEqual(missing, []);
});
