import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { KernelError } from '../../core/errno.ts';
import { DEFAULT_VTD, type VtdConfig } from '../../machine-config.ts';
import { PhysicalMemory } from '../memory.ts';
import { VtdIommu } from './iommu.ts';
import { buildCapRegisters, CAP, decodeCaps, ECAP, VCMD_CMD_ALLOC, VCMD_CMD_FREE } from './regs.ts';
import { LowestFreePasidAllocator, type VcmdBackend } from './vcmd.ts';

function unit(cfg: Partial<VtdConfig> = {}, backend?: VcmdBackend): VtdIommu {
  return new VtdIommu(
    new PhysicalMemory(1n << 30n),
    { ...DEFAULT_VTD, ...cfg },
    backend ? { vcmdBackend: backend } : {},
  );
}

function rd(u: VtdIommu, off: number, size: 4 | 8 = 4): bigint {
  const v = u.mmioRead(off, size);
  assert.ok(typeof v === 'bigint', `read 0x${off.toString(16)}`);
  return v;
}

// Linux's decoders (drivers/iommu/intel/iommu.h), to read the registers the way the driver does
const cap_sagaw = (c: bigint) => (c >> 8n) & 0x1fn;
const cap_mgaw = (c: bigint) => ((c >> 16n) & 0x3fn) + 1n;
const cap_fault_reg_offset = (c: bigint) => ((c >> 24n) & 0x3ffn) * 16n;
const cap_super_page_val = (c: bigint) => (c >> 34n) & 0xfn;
const cap_num_fault_regs = (c: bigint) => ((c >> 40n) & 0xffn) + 1n;
const cap_ndoms = (c: bigint) => 1n << (4n + 2n * (c & 7n));
const ecap_iotlb_offset = (e: bigint) => ((e >> 8n) & 0x3ffn) * 16n;
const ecap_pss = (e: bigint) => (e >> 35n) & 0x1fn;

test("the default VT-d reports exactly PROFILE.md's hardware in VER, CAP, ECAP and VCCAP", () => {
  const u = unit();
  assert.equal(rd(u, 0x0), 0x60n);
  const cap = rd(u, 0x8, 8);
  const ecap = rd(u, 0x10, 8);
  assert.equal(cap, 0x0112_008c_222f_0606n);
  assert.equal(ecap, 0x0000_d998_2400_0f46n);
  assert.equal(cap_sagaw(cap), 0b00110n, '39- and 48-bit second level');
  assert.equal(cap_mgaw(cap), 48n);
  assert.equal(cap_fault_reg_offset(cap), 0x220n);
  assert.equal(cap_super_page_val(cap), 0b11n, '2 MiB and 1 GiB');
  assert.equal(cap_num_fault_regs(cap), 1n);
  assert.equal(cap_ndoms(cap), 65536n);
  for (const b of [CAP.PSI, CAP.FL1GP]) assert.notEqual(cap & b, 0n);
  for (const b of [CAP.CM, CAP.FL5LP, CAP.RWBF, CAP.AFL, CAP.ESRTPS, CAP.PI]) assert.equal(cap & b, 0n);
  assert.equal((cap >> 48n) & 0x3fn, 18n, 'MAMV');
  for (const b of [
    ECAP.QI,
    ECAP.DT,
    ECAP.PT,
    ECAP.NEST,
    ECAP.PRS,
    ECAP.PASID,
    ECAP.SMTS,
    ECAP.VCS,
    ECAP.SLTS,
    ECAP.FLTS,
  ]) {
    assert.notEqual(ecap & b, 0n);
  }
  for (const b of [ECAP.SRS, ECAP.ERS, ECAP.IR, ECAP.C, ECAP.SC, ECAP.SLADS, ECAP.EAFS, ECAP.SMPWC])
    assert.equal(ecap & b, 0n);
  assert.equal(ecap_pss(ecap), 19n);
  assert.equal(ecap_iotlb_offset(ecap), 0xf0n);
  assert.equal(rd(u, 0xe30, 8), 1n, 'VCCAP.PAS in the 3.3 layout');
  assert.equal(u.caps.haw, 48);
  assert.equal(u.caps.pasidBits, 20);
});

test('options change the registers: pasid_bits, caching_mode, fl_levels, fault_records, vcmd_layout', () => {
  const p = unit({ pasid_bits: 8 });
  assert.equal(ecap_pss(rd(p, 0x10, 8)), 7n);
  const np = unit({ pasid_bits: 0 });
  assert.equal(rd(np, 0x10, 8) & ECAP.PASID, 0n);
  assert.equal(np.caps.pasidBits, 0);
  assert.notEqual(rd(unit({ caching_mode: true }), 0x8, 8) & CAP.CM, 0n);
  assert.notEqual(rd(unit({ fl_levels: 5 }), 0x8, 8) & CAP.FL5LP, 0n);
  const f = unit({ fault_records: 4 });
  assert.equal(cap_num_fault_regs(rd(f, 0x8, 8)), 4n);
  assert.equal(f.registers['FRCD_REG'], 0x220);
  const v = unit({ vcmd_layout: '3.2' });
  assert.equal(v.registers['VCCAP_REG'], 0xe00);
  assert.equal(v.registers['VCMD_REG'], 0xe10);
  assert.equal(v.registers['VCRSP_REG'], 0xe20);
  assert.equal(rd(v, 0xe00, 8), 1n);
  assert.throws(() => unit({ pasid_bits: 21 }), RangeError);
  assert.throws(() => unit({ fault_records: 0 }), RangeError);
  assert.throws(() => unit({ iotlb_entries: -1 }), RangeError);
});

test('raw cap/ecap/vccap overrides replace the registers and change behaviour', () => {
  const base = buildCapRegisters({ ...DEFAULT_VTD });
  const u = unit({ cap: base.cap | CAP.CM, ecap: base.ecap & ~ECAP.VCS, vccap: 0n });
  assert.equal(rd(u, 0x8, 8), base.cap | CAP.CM);
  assert.equal(u.caps.cm, true);
  assert.equal(u.caps.vcs, false);
  assert.equal(rd(u, 0xe30, 8), 0n, 'no virtual command registers without ECAP.VCS');
  const nfr = unit({ cap: (base.cap & ~(0xffn << 40n)) | (7n << 40n) });
  assert.equal(nfr.caps.nfr, 8);
  assert.deepEqual(decodeCaps(base).pasidBits, 20);
});

test('read-only and reserved registers ignore writes; GCMD reads 0; GSTS follows commands', () => {
  const u = unit();
  const cap = rd(u, 0x8, 8);
  u.mmioWrite(0x8, 0n, 8);
  u.mmioWrite(0x10, 0n, 8);
  u.mmioWrite(0x0, 0xffn, 4);
  assert.equal(rd(u, 0x8, 8), cap);
  assert.equal(rd(u, 0x0), 0x60n);
  assert.equal(rd(u, 0x4), 0n);
  u.mmioWrite(0x4, 0xffff_ffffn, 4);
  assert.equal(rd(u, 0x4), 0n, 'reserved offset');
  assert.equal(rd(u, 0x1c), 0n);
  u.mmioWrite(0x1c, 0xffff_ffffn, 4);
  assert.equal(rd(u, 0x1c), 0n, 'GSTS is read-only');
  u.mmioWrite(0x20, 0xffff_ffff_ffff_ffffn, 8);
  assert.equal(
    rd(u, 0x20, 8),
    0x0000_ffff_ffff_fc00n,
    'RTADDR: bits 9:0 reserved, bits above HAW not implemented',
  );
  u.mmioWrite(0x20, 0x12_3000n | (1n << 10n), 8);
  u.mmioWrite(0x18, BigInt(1 << 30), 4); // SRTP
  assert.equal(rd(u, 0x18), 0n, 'GCMD reads as 0');
  assert.equal(rd(u, 0x1c) & BigInt(1 << 30), BigInt(1 << 30), 'RTPS');
  u.mmioWrite(0x18, BigInt((1 << 31) >>> 0), 4); // TE
  assert.equal(rd(u, 0x1c) >> 31n, 1n, 'TES');
  assert.equal(u.translationEnabled, true);
  u.mmioWrite(0x18, BigInt(1 << 26), 4); // QIE alone: TE off, QI on
  assert.equal(rd(u, 0x1c) >> 31n, 0n);
  assert.equal((rd(u, 0x1c) >> 26n) & 1n, 1n, 'QIES');
  // FSTS: PPF and FRI are read-only
  u.mmioWrite(0x34, 0xffff_ffffn, 4);
  assert.equal(rd(u, 0x34), 0n);
  // FECTL: IM set at reset, IP read-only
  assert.equal(rd(u, 0x38), 0x8000_0000n);
  u.mmioWrite(0x38, 0x4000_0000n, 4);
  assert.equal(rd(u, 0x38), 0n);
  // IQA: base, DW, QS; writing it resets IQH and IQT
  u.mmioWrite(0x88, 0x40n, 4);
  assert.equal(rd(u, 0x88, 8), 0x40n);
  u.mmioWrite(0x90, 0x5000n | (1n << 11n) | 2n | 0xf0n, 8);
  assert.equal(rd(u, 0x90, 8), 0x5000n | (1n << 11n) | 2n, 'IQA reserved bits 10:3 read 0');
  assert.equal(rd(u, 0x88, 8), 0n);
  u.mmioWrite(0x80, 0x20n, 8);
  assert.equal(rd(u, 0x80, 8), 0n, 'IQH is read-only');
  // FRCD: only F is writable (write-1-to-clear)
  u.mmioWrite(0x220, 0xffff_ffff_ffff_ffffn, 8);
  u.mmioWrite(0x228, 0x7fff_ffff_ffff_ffffn, 8);
  assert.equal(rd(u, 0x220, 8), 0n);
  assert.equal(rd(u, 0x228, 8), 0n);
});

test('MMIO accesses that are misaligned, of another size or outside the page are refused (EINVAL)', () => {
  const u = unit();
  for (const [off, size] of [
    [0x2, 4],
    [0xc, 8],
    [0x1000, 4],
    [0xffc, 8],
    [-4, 4],
  ] as const) {
    const r = u.mmioRead(off, size);
    assert.ok(r instanceof KernelError && r.code === 'EINVAL', `read 0x${off.toString(16)}/${size}`);
    const w = u.mmioWrite(off, 0n, size);
    assert.ok(w instanceof KernelError && w.code === 'EINVAL');
  }
  const r2 = u.mmioRead(0x8, 2 as 4);
  assert.ok(r2 instanceof KernelError);
  // 32-bit halves of a 64-bit register
  assert.equal(rd(u, 0x8) | (rd(u, 0xc) << 32n), rd(u, 0x8, 8));
});

test('VCMD, 3.3 layout: allocate lowest free PASIDs, free, errors (SC 16), undefined command', () => {
  const u = unit({ pasid_bits: 2 }); // allocator range [1, 3]
  const vcmd = u.registers['VCMD_REG']!;
  const vcrsp = u.registers['VCRSP_REG']!;
  const cmd = (c: number, operand = 0n) => {
    u.mmioWrite(vcmd, BigInt(c) | (operand << 16n), 8);
    const r = rd(u, vcrsp, 8);
    return { ip: Number(r & 1n), sc: Number((r & 0xffn) >> 1n), pasid: Number((r >> 16n) & 0xfffffn) };
  };
  assert.deepEqual(cmd(VCMD_CMD_ALLOC), { ip: 0, sc: 0, pasid: 1 });
  assert.deepEqual(cmd(VCMD_CMD_ALLOC), { ip: 0, sc: 0, pasid: 2 });
  assert.deepEqual(cmd(VCMD_CMD_ALLOC), { ip: 0, sc: 0, pasid: 3 });
  assert.deepEqual(cmd(VCMD_CMD_ALLOC), { ip: 0, sc: 16, pasid: 0 }, 'no PASID available');
  assert.deepEqual(cmd(VCMD_CMD_FREE, 2n), { ip: 0, sc: 0, pasid: 0 });
  assert.deepEqual(cmd(VCMD_CMD_FREE, 2n), { ip: 0, sc: 16, pasid: 0 }, 'invalid PASID');
  assert.deepEqual(cmd(VCMD_CMD_ALLOC), { ip: 0, sc: 0, pasid: 2 }, 'lowest free again');
  assert.deepEqual(cmd(0x7f), { ip: 0, sc: 1, pasid: 0 });
  assert.equal(rd(u, vcmd, 8), 0x7fn, 'VCMD reads back');
});

test('VCMD, 3.2 layout: operand and result in 27:8, status in 2:1 (no PASID / invalid PASID = 2)', () => {
  const u = unit({ vcmd_layout: '3.2', pasid_bits: 1 });
  const cmd = (c: number, operand = 0n) => {
    u.mmioWrite(0xe10, BigInt(c) | (operand << 8n), 8);
    const r = rd(u, 0xe20, 8);
    return { sc: Number((r >> 1n) & 3n), pasid: Number((r >> 8n) & 0xfffffn) };
  };
  assert.deepEqual(cmd(VCMD_CMD_ALLOC), { sc: 0, pasid: 1 });
  assert.deepEqual(cmd(VCMD_CMD_ALLOC), { sc: 2, pasid: 0 });
  assert.deepEqual(cmd(VCMD_CMD_FREE, 1n), { sc: 0, pasid: 0 });
  assert.deepEqual(cmd(VCMD_CMD_FREE, 5n), { sc: 2, pasid: 0 });
  assert.deepEqual(cmd(3), { sc: 1, pasid: 0 });
});

test('VCMD reaches a custom backend (the host IOASID set of a VM); without VCCAP.PAS commands are ignored', () => {
  const calls: string[] = [];
  const backend: VcmdBackend = {
    alloc: () => {
      calls.push('alloc');
      return 0x12345;
    },
    free: (p) => {
      calls.push(`free ${p}`);
      return p === 0x12345;
    },
  };
  const u = unit({}, backend);
  u.mmioWrite(0xe00, 1n, 8);
  assert.equal((rd(u, 0xe10, 8) >> 16n) & 0xfffffn, 0x12345n);
  u.mmioWrite(0xe00, 2n | (0x12345n << 16n), 8);
  assert.equal(rd(u, 0xe10, 8) & 0xffn, 0n);
  assert.deepEqual(calls, ['alloc', 'free 74565']);
  const off = unit({ vccap: 0n }, backend);
  off.mmioWrite(0xe00, 1n, 8);
  assert.equal(rd(off, 0xe10, 8), 0n);
  assert.equal(calls.length, 2);
});

test('the default VCMD allocator hands out the lowest free PASID (property, against a set model)', () => {
  fc.assert(
    fc.property(
      fc.array(fc.oneof(fc.constant(-1), fc.integer({ min: 0, max: 40 })), { maxLength: 200 }),
      (ops) => {
        const a = new LowestFreePasidAllocator(1, 32);
        const model = new Set<number>();
        for (const op of ops) {
          if (op < 0) {
            let want = -1;
            for (let p = 1; p <= 32; p++) {
              if (!model.has(p)) {
                want = p;
                break;
              }
            }
            assert.equal(a.alloc(), want);
            if (want > 0) model.add(want);
          } else {
            assert.equal(a.free(op), model.delete(op));
          }
        }
        assert.equal(a.inUse, model.size);
      },
    ),
    { numRuns: 200 },
  );
});
