import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  ALL_CODECS,
  descType,
  type FieldSpec,
  FL_ENTRY,
  FRCD,
  getBits,
  halves,
  INV_WAIT_DSC,
  P_IOTLB_INV_DSC,
  PASID_ENTRY,
  QI_TYPE,
  qword,
  SL_ENTRY,
  SM_CONTEXT_ENTRY,
  SM_ROOT_ENTRY,
  StructCodec,
  setBits,
} from './structs.ts';

function fieldValue(fs: FieldSpec): fc.Arbitrary<number | bigint> {
  const max = (1n << BigInt(fs.w)) - 1n;
  const raw = fc.bigInt({ min: 0n, max });
  if (fs.kind === 'b') return raw.map((v) => v << BigInt(fs.lo));
  if (fs.kind === 'a') return raw.map((v) => Number(v) * 2 ** fs.lo);
  return raw.map((v) => Number(v));
}

for (const codec of ALL_CODECS) {
  const c = codec as unknown as StructCodec<readonly FieldSpec[]>;
  test(`${c.name}: words -> fields -> words is exact for any bits`, () => {
    fc.assert(
      fc.property(fc.uint32Array({ minLength: c.words, maxLength: c.words }), (w) => {
        const back = c.encode(c.decode(w));
        assert.deepEqual(back, w);
      }),
      { numRuns: 200 },
    );
  });
  test(`${c.name}: fields -> words -> fields is exact for in-range values`, () => {
    const rec: Record<string, fc.Arbitrary<number | bigint>> = {};
    for (const fs of c.fields) rec[fs.name] = fieldValue(fs);
    fc.assert(
      fc.property(fc.record(rec), (v0) => {
        const vals = { ...v0 };
        const w = c.encode(vals as never);
        assert.deepEqual(c.decode(w), vals);
        // and at an offset inside a larger buffer, leaving the rest untouched
        const big = new Uint32Array(c.words + 6).fill(0xa5a5a5a5);
        c.encode(vals as never, big, 3);
        assert.deepEqual(c.decode(big, 3), vals);
        assert.equal(big[0], 0xa5a5a5a5);
        assert.equal(big[c.words + 3], 0xa5a5a5a5);
      }),
      { numRuns: 200 },
    );
  });
}

test('field positions match the spec tables (spot checks against hand-built qwords)', () => {
  // SM root entry: LP bit 0, LCTP 63:12, UP bit 64, UCTP 127:76
  const r = SM_ROOT_ENTRY.encode({ lp: 1, lctp: 0x12345000, up: 1, uctp: 0xabc000 });
  assert.equal(qword(r[0]!, r[1]!), 0x12345001n);
  assert.equal(qword(r[2]!, r[3]!), 0xabc001n);
  // SM context: PASIDE bit 3, PDTS 11:9, RID_PASID 83:64, RID_PRIV bit 84
  const ce = SM_CONTEXT_ENTRY.encode({
    p: 1,
    paside: 1,
    pdts: 7,
    pasidDirPtr: 0x7000,
    ridPasid: 0xfffff,
    ridPriv: 1,
  });
  assert.equal(qword(ce[0]!, ce[1]!), 0x7000n | (7n << 9n) | 8n | 1n);
  assert.equal(qword(ce[2]!, ce[3]!), 0x1fffffn);
  // PASID entry: PGTT 8:6, DID 79:64, SRE bit 128, FLPM 131:130, FLPTPTR 191:140
  const pe = PASID_ENTRY.encode({
    p: 1,
    pgtt: 3,
    aw: 2,
    slptptr: 0x5000,
    did: 0x1234,
    sre: 1,
    flpm: 1,
    flptptr: 0x9000,
  });
  assert.equal(qword(pe[0]!, pe[1]!), 0x5000n | (3n << 6n) | (2n << 2n) | 1n);
  assert.equal(qword(pe[2]!, pe[3]!), 0x1234n);
  assert.equal(qword(pe[4]!, pe[5]!), 0x9000n | (1n << 2n) | 1n);
  // FL: XD bit 63; SL: TM bit 62
  const fl = FL_ENTRY.encode({ p: 1, xd: 1, addr: 2 ** 51 - 4096 });
  assert.equal(qword(fl[0]!, fl[1]!), (1n << 63n) | 0x7fffffffff000n | 1n);
  const sl = SL_ENTRY.encode({ r: 1, w: 1, tm: 1, ps: 1 });
  assert.equal(qword(sl[0]!, sl[1]!), (1n << 62n) | 0x83n);
  // p_iotlb: PASID 51:32, canonical upper-half ADDR survives
  const d = P_IOTLB_INV_DSC.encode({ g: 3, did: 7, pasid: 0x12345, am: 9, ih: 1, addr: 0xffff800000000000n });
  assert.equal(descType(d[0]!), QI_TYPE.P_IOTLB_INV);
  assert.equal(qword(d[0]!, d[1]!), (0x12345n << 32n) | (7n << 16n) | (3n << 4n) | 6n);
  assert.equal(qword(d[2]!, d[3]!), 0xffff800000000000n | 0x40n | 9n);
  const wd = INV_WAIT_DSC.encode({ sw: 1, stdata: 2, staddr: 0x1234_5678_9abcn });
  assert.equal(descType(wd[0]!), QI_TYPE.INV_WAIT);
  assert.equal(qword(wd[0]!, wd[1]!), (2n << 32n) | 0x20n | 5n);
  // FRCD: F bit 127, FR 103:96, T bit 126
  const fr = FRCD.encode({ f: 1, fr: 0x59, t: 1, sid: 0x10, fi: 0x1000n });
  assert.equal(qword(fr[2]!, fr[3]!), (1n << 63n) | (1n << 62n) | (0x59n << 32n) | 0x10n);
});

test('getBits/setBits agree with bigint arithmetic (property)', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 63 }),
      fc.integer({ min: 1, max: 52 }),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      fc.bigInt({ min: 0n, max: (1n << 52n) - 1n }),
      (lo, w0, init, val0) => {
        const w = Math.min(w0, 64 - lo);
        const words = new Uint32Array(2);
        [words[0], words[1]] = halves(init);
        const m = (1n << BigInt(w)) - 1n;
        assert.equal(BigInt(getBits(words, 0, 0, lo, w)), (init >> BigInt(lo)) & m);
        const val = val0 & m;
        setBits(words, 0, 0, lo, w, Number(val));
        const expect = (init & ~(m << BigInt(lo))) | (val << BigInt(lo));
        assert.equal(qword(words[0]!, words[1]!), expect);
      },
    ),
    { numRuns: 500 },
  );
});

test('a codec refuses overlapping or missing bits and out-of-range values', () => {
  assert.throws(
    () =>
      new StructCodec('bad', 1, [
        { name: 'a', q: 0, lo: 0, w: 64, kind: 'b' },
        { name: 'b', q: 0, lo: 3, w: 1, kind: 'n' },
      ]),
  );
  assert.throws(() => new StructCodec('gap', 1, [{ name: 'a', q: 0, lo: 0, w: 63, kind: 'b' }]));
  assert.throws(() => FL_ENTRY.encode({ addr: 0x1001 }), RangeError);
  assert.throws(() => FL_ENTRY.encode({ ign52: 4096 }), RangeError);
  assert.throws(() => P_IOTLB_INV_DSC.encode({ addr: 0x1234n }), RangeError);
});
