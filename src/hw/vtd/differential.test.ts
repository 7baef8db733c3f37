// Differential test: random scalable-mode tables and random requests through the model (with
// its context cache, PASID cache, IOTLB and fast paths) and through a straightforward walker
// written here from vtd-model.md B.2-B.4 (bigint arithmetic, no caches, no side effects). With
// nothing changed since the last invalidation they must agree exactly; after one table write
// and before any invalidation the model may also answer from the old tables (a stale cached
// result, which the spec allows); after the invalidations Linux issues they agree again.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { DEFAULT_VTD } from '../../machine-config.ts';
import { ACCESS_R, ACCESS_W, ACCESS_X } from './faults.ts';
import { VtdIommu, XLATE_FAULT } from './iommu.ts';
import { buildCapRegisters, ECAP } from './regs.ts';
import { entryAddr } from './tables.ts';
import { Rig, SID } from './test-rig.ts';

type Res = { hpa: bigint } | { fault: number };

const M48 = (1n << 48n) - 1n;
const ADDR = 0x000f_ffff_ffff_f000n;
const bit = (v: bigint, b: number) => (v >> BigInt(b)) & 1n;

/**
 * The reference: reads memory through `rd` (qword at a byte address), returns the outcome. The
 * hardware is the default one, with supervisor requests (ECAP.SRS) if `srs`.
 */
function reference(
  rd: (a: bigint) => bigint | null,
  rta: bigint,
  sid: number,
  pasidIn: number | undefined,
  addr: bigint,
  accessIn: number,
  privIn: boolean,
  srs = false,
): Res {
  const F = (fault: number): Res => ({ fault });
  let access = accessIn;
  if (pasidIn === undefined) {
    if (addr >> 20n === 0xfeen && access & ACCESS_W) return { fault: -2 };
    if (addr >> 20n === 0xfeen) return { fault: -3 };
    if (access & ACCESS_X) access = (access & ~ACCESS_X) | ACCESS_R;
  }
  const needR = (access & ACCESS_R) !== 0;
  const needW = (access & ACCESS_W) !== 0;
  const needX = (access & ACCESS_X) !== 0;
  // root
  const bus = BigInt(sid >> 8);
  const devfn = sid & 0xff;
  const r0 = rd(rta + bus * 16n);
  const r1 = rd(rta + bus * 16n + 8n);
  if (r0 === null || r1 === null) return F(0x38);
  const re = devfn < 0x80 ? r0 : r1;
  if (bit(re, 0) === 0n) return F(0x39);
  if (((r0 | r1) & 0xffen) !== 0n || ((r0 | r1) & ~M48 & ~0xfffn) !== 0n) return F(0x3a);
  // context
  const ctp = re & ADDR;
  const c = [0, 1, 2, 3].map((i) => rd(ctp + BigInt((devfn & 0x7f) * 32 + i * 8)));
  if (c.some((x) => x === null)) return F(0x40);
  const [c0, c1, c2, c3] = c as bigint[];
  if (bit(c0!, 0) === 0n) return F(0x41);
  if ((c0! & 0x1e0n) !== 0n || (c0! & ~M48 & ~0xfffn) !== 0n || c1! >> 21n !== 0n || c2 !== 0n || c3 !== 0n)
    return F(0x42);
  const pdts = Number((c0! >> 9n) & 7n);
  const maxPasid = 2 ** (pdts + 13);
  if (bit(c0!, 4) === 1n && bit(c0!, 2) === 0n) return F(0x43);
  let pasid: number;
  let priv = privIn;
  if (pasidIn !== undefined) {
    if (bit(c0!, 3) === 0n) return F(0x45);
    if (pasidIn >= maxPasid) return F(0x46);
    pasid = pasidIn;
  } else {
    pasid = Number(c1! & 0xfffffn);
    if (pasid >= maxPasid) return F(0x48);
    priv = bit(c1!, 20) === 1n;
  }
  // PASID directory and table
  const pde = rd((c0! & ADDR) + BigInt(pasid >> 6) * 8n);
  if (pde === null) return F(0x50);
  if (bit(pde, 0) === 0n) return F(0x51);
  if ((pde & 0xffcn) !== 0n || (pde & ~M48 & ~0xfffn) !== 0n) return F(0x52);
  const pe: bigint[] = [];
  for (let i = 0; i < 8; i++) {
    const q = rd((pde & ADDR) + BigInt((pasid & 63) * 64 + i * 8));
    if (q === null) return F(0x58);
    pe.push(q);
  }
  const [p0, p1, p2] = pe as [bigint, bigint, bigint];
  if (bit(p0, 0) === 0n) return F(0x59);
  if (
    (p0 & 0xc00n) !== 0n ||
    (p0 & ~M48 & ~0xfffn) !== 0n ||
    (p1 & 0x7f_0000n) !== 0n ||
    (p2 & 0xf00n) !== 0n ||
    (p2 & ~M48 & ~0xfffn) !== 0n ||
    pe.slice(3).some((q) => q !== 0n)
  ) {
    return F(0x5a);
  }
  const aw = Number((p0 >> 2n) & 7n);
  const pgtt = Number((p0 >> 6n) & 7n);
  const slee = bit(p0, 5) === 1n;
  const sre = bit(p2, 0) === 1n;
  const ere = bit(p2, 1) === 1n;
  const flpm = Number((p2 >> 2n) & 3n);
  const wpe = bit(p2, 4) === 1n;
  const nxe = bit(p2, 5) === 1n;
  const smep = bit(p2, 6) === 1n;
  // default hardware: SAGAW 39/48, no FL5LP, ERS/EAFS/SLADS clear, SRS as given
  if (
    ![1, 2, 3, 4].includes(pgtt) ||
    ((pgtt === 2 || pgtt === 3) && aw !== 1 && aw !== 2) ||
    ((pgtt === 1 || pgtt === 3) && flpm !== 0) ||
    (sre && !srs) ||
    ere ||
    bit(p2, 7) === 1n ||
    bit(p0, 9) === 1n
  ) {
    return F(0x5b);
  }
  if (needX && !ere) return F(0x5c);
  if (priv && !sre) return F(0x5d);
  const slLevels = aw + 2;
  const slLimit = 1n << BigInt(Math.min(30 + 9 * aw, 48));
  const slRoot = p0 & ADDR;

  // second level: mode 'direct' | 'final' | 'top' | 'table' | 'ad'
  const sl = (
    gpa: bigint,
    mode: string,
    r: boolean,
    w: boolean,
    x: boolean,
  ): { out: bigint; lvl: number } | number => {
    if (gpa >= slLimit) return mode === 'direct' ? 0x83 : mode === 'final' ? 0x84 : 0x74;
    let t = slRoot;
    let accR = 1n;
    let accW = 1n;
    let accX = 1n;
    for (let lvl = slLevels; lvl >= 1; lvl--) {
      const e = rd(t + ((gpa >> BigInt(12 + 9 * (lvl - 1))) & 511n) * 8n);
      if (e === null) return lvl === slLevels ? 0x7b : 0x78;
      accR &= bit(e, 0);
      accW &= bit(e, 1);
      accX &= bit(e, 2);
      if (mode === 'top' || mode === 'table') {
        if (accR === 0n) return mode === 'top' ? 0x75 : 0x76;
      } else if (mode === 'ad') {
        if (accR === 0n || accW === 0n) return 0x77;
      } else {
        if (w && accW === 0n) return 0x85;
        if (r && accR === 0n) return 0x86;
        if (x && slee && accX === 0n) return 0x82;
      }
      const ps = bit(e, 7) === 1n;
      const leaf = lvl === 1 || (ps && lvl <= 3);
      let rsvd = (e >> 48n) & 0xfn ? 1n : 0n;
      if (bit(e, 62)) rsvd = 1n;
      if (!leaf && (bit(e, 11) || (lvl >= 4 && ps))) rsvd = 1n;
      if (leaf && lvl === 2 && ((e >> 12n) & 0x1ffn) !== 0n) rsvd = 1n;
      if (leaf && lvl === 3 && ((e >> 12n) & 0x3ffffn) !== 0n) rsvd = 1n;
      if (rsvd) return 0x7a;
      if (leaf) {
        const size = 1n << BigInt(12 + 9 * (lvl - 1));
        return { out: (e & ADDR & ~(size - 1n)) | (gpa & (size - 1n)), lvl };
      }
      t = e & ADDR;
    }
    return 0x78;
  };

  const window = (out: bigint, lvl: number): boolean => {
    const size = 1n << BigInt(12 + 9 * (lvl - 1));
    const base = out & ~(size - 1n);
    return base <= 0xfeef_ffffn && base + size > 0xfee0_0000n;
  };

  if (pgtt === 4) {
    if (addr >= 1n << 48n) return F(0x83);
    if (window(addr, 1)) return F(0x87);
    return { hpa: addr };
  }
  if (pgtt === 2) {
    const o = sl(addr, 'direct', needR, needW, needX);
    if (typeof o === 'number') return F(o);
    if (window(o.out, o.lvl)) return F(0x87);
    return { hpa: o.out };
  }
  // first level, or nested
  const nested = pgtt === 3;
  const top = addr >> 47n;
  if (top !== 0n && top !== 0x1ffffn) return F(0x80);
  const user = !priv;
  let tg = p2 & ADDR;
  let usAll = true;
  for (let lvl = 4; lvl >= 1; lvl--) {
    let th = tg;
    if (nested) {
      const o = sl(tg, lvl === 4 ? 'top' : 'table', true, false, false);
      if (typeof o === 'number') return F(o);
      th = o.out;
    }
    const e = rd(th + ((addr >> BigInt(12 + 9 * (lvl - 1))) & 511n) * 8n);
    if (e === null) return F(lvl === 4 ? 0x73 : 0x70);
    if (bit(e, 0) === 0n) return F(0x71);
    if (bit(e, 2) === 0n) usAll = false;
    if (user && bit(e, 2) === 0n) return F(0x81);
    if (needW && bit(e, 1) === 0n && (user || wpe)) return F(0x85);
    if (needX && bit(e, 63) && nxe) return F(0x82);
    const ps = bit(e, 7) === 1n;
    const leaf = lvl === 1 || (ps && (lvl === 2 || lvl === 3));
    let rsvd = ((e >> 48n) & 0xfn) !== 0n;
    if (lvl === 4 && ps) rsvd = true;
    if (leaf && lvl === 2 && ((e >> 13n) & 0xffn) !== 0n) rsvd = true;
    if (leaf && lvl === 3 && ((e >> 13n) & 0x1ffffn) !== 0n) rsvd = true;
    if (rsvd) return F(0x72);
    const needAd = bit(e, 5) === 0n || (leaf && needW && bit(e, 6) === 0n);
    if (nested && needAd) {
      const o = sl(tg, 'ad', true, true, false);
      if (typeof o === 'number') return F(o);
    }
    if (leaf) {
      if (needX && priv && smep && usAll) return F(0x82);
      const size = 1n << BigInt(12 + 9 * (lvl - 1));
      const out = (e & ADDR & ~(size - 1n)) | (addr & (size - 1n));
      if (!nested) {
        if (window(out, lvl)) return F(0x87);
        return { hpa: out };
      }
      const o = sl(out, 'final', needR, needW, needX);
      if (typeof o === 'number') return F(o);
      if (window(o.out, Math.min(lvl, o.lvl))) return F(0x87);
      return { hpa: o.out };
    }
    tg = e & ADDR;
  }
  return F(0x70);
}

// ---------------------------------------------------------------------------------------------
// random machines

interface World {
  rig: Rig;
  /** byte addresses of every table entry that exists, for mutations */
  entries: number[];
  /** interesting input addresses */
  vas: number[];
}

function buildWorld(seed: number, iotlb: number): World {
  // a tiny deterministic PRNG so one fast-check integer describes a whole machine
  let s = seed >>> 0 || 1;
  const rnd = (n: number) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
  const rig = new Rig({ iotlb_entries: iotlb, fault_records: 8 }, { ctx: { ridPasid: rnd(4) } });
  const entries: number[] = [];
  const vas: number[] = [];
  for (let pasid = 0; pasid < 4; pasid++) {
    const kind = rnd(6); // 0 FL, 1 SL, 2 nested, 3 PT, 4 FL (again), 5 odd entry
    const did = 1 + rnd(3);
    if (kind === 0 || kind === 4) {
      const root = rig.fl(pasid, { did, wpe: rnd(2), nxe: rnd(2), smep: rnd(2), p: rnd(10) === 0 ? 0 : 1 });
      for (let i = 0; i < 6; i++) {
        const va = (rnd(4) * 0x4000_0000 + rnd(3) * 0x20_0000 + rnd(4) * 0x1000) >>> 0;
        const big = rnd(5) === 0;
        const leaf = rig.mapFl(
          root,
          big ? va - (va % 0x20_0000) : va,
          (0x100_0000 + rnd(64) * 0x20_0000 + (big ? 0 : rnd(512) * 0x1000)) >>> 0,
          {
            leafLevel: big ? 2 : 1,
            rw: rnd(4) !== 0,
            us: rnd(4) !== 0,
            xd: rnd(3) === 0,
            extraLo: rnd(12) === 0 ? 1 << (12 + rnd(9)) : 0,
          },
        );
        entries.push(leaf);
        vas.push(va, va + 0x123);
      }
      if (rnd(6) === 0) rig.mapFl(root, 0x7000, 0xfee0_0000); // into the interrupt window
      vas.push(0x7000);
    } else if (kind === 1) {
      const root = rig.sl(pasid, { did, aw: rnd(5) === 0 ? 1 : 2 });
      const levels = 4;
      for (let i = 0; i < 6; i++) {
        const va = (rnd(4) * 0x4000_0000 + rnd(3) * 0x20_0000 + rnd(4) * 0x1000) >>> 0;
        const big = rnd(5) === 0;
        const leaf = rig.mapSl(
          root,
          big ? va - (va % 0x20_0000) : va,
          (0x100_0000 + rnd(64) * 0x20_0000 + (big ? 0 : rnd(512) * 0x1000)) >>> 0,
          {
            levels,
            leafLevel: big ? 2 : 1,
            r: rnd(5) !== 0,
            w: rnd(3) !== 0,
            x: rnd(2) === 0,
            extraHi: rnd(15) === 0 ? 0x4000_0000 : 0,
          },
        );
        entries.push(leaf);
        vas.push(va, va + 0x456);
      }
    } else if (kind === 2) {
      // 4 KiB second-level pages (the fast nested walk) over 20 MiB, or 2 MiB pages over 128 MiB
      const small = rnd(2) === 0;
      const { flRoot, slRoot } = rig.nested(
        pasid,
        { did },
        { w: rnd(8) !== 0, leafLevel: small ? 1 : 2 },
        small ? 20 * 0x10_0000 : 128 * 0x10_0000,
      );
      for (let i = 0; i < 6; i++) {
        const va = (rnd(4) * 0x4000_0000 + rnd(3) * 0x20_0000 + rnd(4) * 0x1000) >>> 0;
        const leaf = rig.mapGuestFl(
          flRoot,
          va,
          (rnd(small ? 22 : 100) * 0x10_0000 + rnd(256) * 0x1000) >>> 0,
          {
            rw: rnd(4) !== 0,
            us: rnd(5) !== 0,
          },
        );
        entries.push(leaf + 0); // the HPA of the guest PTE (tables map GPA g to HPA g + guestBase)
        vas.push(va, va + 0x789);
      }
      entries.push(slRoot);
    } else if (kind === 3) {
      rig.pt(pasid, { did });
      vas.push(0xfee0_0000, 0x1234_5000);
    } else {
      rig.tb.setPasidEntry(rig.dir, pasid, {
        p: 1,
        pgtt: rnd(8),
        did,
        aw: rnd(4),
        flptptr: 0x200000,
        slptptr: 0x201000,
      });
    }
  }
  vas.push(0xfee0_0010, 0x8000_0000_0000, 0xffff_8000_0000_1000);
  return { rig, entries, vas };
}

/** The model's answer through translate64, or (`viaTranslate`, addresses below 2^53) translate. */
function model(
  rig: Rig,
  pasid: number | undefined,
  addr: bigint,
  access: number,
  priv: boolean,
  viaTranslate = false,
): Res {
  const r =
    viaTranslate && addr < 1n << 53n
      ? rig.iommu.translate(SID, pasid ?? -1, Number(addr), access, priv)
      : rig.iommu.translate64(
          SID,
          pasid ?? -1,
          Number(addr >> 32n),
          Number(addr & 0xffff_ffffn),
          access,
          priv,
        );
  if (r === XLATE_FAULT) return { fault: rig.iommu.lastFault!.reason };
  if (r < 0) return { fault: r };
  return { hpa: BigInt(r) };
}

function ref(
  rig: Rig,
  pasid: number | undefined,
  addr: bigint,
  access: number,
  priv: boolean,
  srs = false,
): Res {
  const mem = rig.mem;
  const rd = (a: bigint) => (a + 8n <= BigInt(mem.size) ? mem.readU64(Number(a)) : null);
  return reference(rd, BigInt(rig.tb.root), SID, pasid, addr, access, priv, srs);
}

const show = (r: Res) => ('hpa' in r ? `hpa 0x${r.hpa.toString(16)}` : `fault 0x${r.fault.toString(16)}`);

const arbReq = fc.record({
  pasid: fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined }),
  vaIndex: fc.nat(),
  access: fc.constantFrom(ACCESS_R, ACCESS_W, ACCESS_R | ACCESS_W, ACCESS_R | ACCESS_X),
  priv: fc.boolean(),
  viaTranslate: fc.boolean(),
});

const arbStep = fc.oneof(
  { weight: 6, arbitrary: arbReq.map((r) => ({ kind: 'req' as const, ...r })) },
  {
    weight: 1,
    arbitrary: fc
      .record({ entry: fc.nat(), xorLo: fc.integer({ min: 1, max: 0xfff }) })
      .map((m) => ({ kind: 'mut' as const, ...m })),
  },
);

test('differential: the model agrees with a cache-less reference walker, stale results only between a table write and its invalidation', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 0x7fff_ffff }),
      fc.constantFrom(0, 4, 1024),
      fc.array(arbStep, { minLength: 10, maxLength: 60 }),
      (seed, iotlb, steps) => checkRun(seed, iotlb, steps),
    ),
    { numRuns: 120 },
  );
});

type Step =
  | {
      kind: 'req';
      pasid: number | undefined;
      vaIndex: number;
      access: number;
      priv: boolean;
      viaTranslate?: boolean;
    }
  | { kind: 'mut'; entry: number; xorLo: number };

export function checkRun(seed: number, iotlb: number, steps: Step[]): void {
  const { rig, entries, vas } = buildWorld(seed, iotlb);
  const mem = rig.mem;
  // the single table write since the last invalidation: where, and the qword it replaced
  let pending: { addr: number; old: bigint } | null = null;
  for (const st of steps) {
    if (st.kind === 'mut') {
      if (entries.length === 0) continue;
      if (pending !== null) {
        // a second write: invalidate first, as software must
        rig.flushAll();
        pending = null;
      }
      const a = entries[st.entry % entries.length]!;
      const old = mem.readU64(a);
      mem.write64(a, (mem.readLo(a) ^ st.xorLo) >>> 0, mem.readHi(a));
      pending = { addr: a, old };
      continue;
    }
    const va = BigInt(vas[st.vaIndex % vas.length]!);
    const want = ref(rig, st.pasid, va, st.access, st.priv);
    let wantOld: Res | null = null;
    if (pending !== null) {
      const cur = mem.readU64(pending.addr);
      mem.writeU64(pending.addr, pending.old | (cur & 0x660n)); // the old entry, with today's A/D
      wantOld = ref(rig, st.pasid, va, st.access, st.priv);
      mem.writeU64(pending.addr, cur);
    }
    const got = model(rig, st.pasid, va, st.access, st.priv, st.viaTranslate === true);
    const same = (x: Res) => show(x) === show(got);
    if (!same(want) && !(wantOld !== null && same(wantOld))) {
      assert.fail(
        `pasid ${st.pasid} va 0x${va.toString(16)} access ${st.access} priv ${st.priv}: model ${show(got)}, reference ${show(want)}${wantOld ? ` (before the write: ${show(wantOld)})` : ''}`,
      );
    }
  }
  // after the invalidations every request agrees with the tables
  rig.flushAll();
  for (const v of vas) {
    for (const pasid of [undefined, 0, 1, 2, 3]) {
      for (const access of [ACCESS_R, ACCESS_W]) {
        const va = BigInt(v);
        const want = ref(rig, pasid, va, access, false);
        const got = model(rig, pasid, va, access, false);
        assert.equal(
          show(got),
          show(want),
          `after invalidation: pasid ${pasid} va 0x${va.toString(16)} access ${access}`,
        );
        // and again, now possibly from the IOTLB (or, without one, the nested quick path)
        assert.equal(show(model(rig, pasid, va, access, false)), show(want));
        assert.equal(show(model(rig, pasid, va, access, false, true)), show(want));
      }
    }
  }
  rig.iommu.checkInvariants();
}

test('differential: tracing (the general walk) and the fast paths give the same answers', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 0x7fff_ffff }), (seed) => {
      const a = buildWorld(seed, 0);
      const b = buildWorld(seed, 0);
      b.rig.iommu.tracer = () => {};
      for (const v of a.vas) {
        for (const pasid of [undefined, 0, 1, 2, 3]) {
          for (const access of [ACCESS_R, ACCESS_W, ACCESS_R | ACCESS_X]) {
            const va = BigInt(v);
            assert.equal(
              show(model(a.rig, pasid, va, access, false)),
              show(model(b.rig, pasid, va, access, false)),
            );
          }
        }
      }
    }),
    { numRuns: 40 },
  );
});

// ---------------------------------------------------------------------------------------------
// Nested translation without an IOTLB (nestedQuick): no cache stands between the tables and the
// answer, so after any change of any bit of any paging entry on the way the model must agree
// with the reference at once, whichever path answered.

interface NestedWorld {
  rig: Rig;
  /** Per PASID (1..3), the addresses it maps, and two non-canonical or unmapped ones. */
  vas: number[][];
  /**
   * Per PASID, the HPAs of the paging entries (both stages) the walks of its `vas` read, once per
   * read (an entry many walks share is as likely to change as it is important), each with the
   * index in `vas` of the address whose walk read it.
   */
  entries: [hpa: number, vaIndex: number][][];
}

function nestedWorld(seed: number): NestedWorld {
  let s = seed >>> 0 || 1;
  const rnd = (n: number) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
  // supervisor requests are possible (ECAP.SRS), so the quick path's supervisor rules are tested
  const cfg = { ...DEFAULT_VTD, iotlb_entries: 0, fault_records: 8 };
  const rig = new Rig({ ...cfg, ecap: buildCapRegisters(cfg).ecap | ECAP.SRS });
  const vas: number[][] = [[]];
  const roots: { sl: number; fl: number }[] = [];
  for (let pasid = 1; pasid <= 3; pasid++) {
    const { flRoot, slRoot } = rig.nested(
      pasid,
      { did: pasid, wpe: rnd(2), sre: rnd(3) === 0 ? 0 : 1 },
      { w: rnd(10) !== 0, leafLevel: 1 },
      24 * 0x10_0000,
    );
    roots.push({ sl: slRoot, fl: flRoot });
    const mine: number[] = [];
    vas.push(mine);
    // one guest-physical page the second level maps into the interrupt window (SGN.8)
    rig.mapSl(slRoot, 32 * 0x10_0000, 0xfee0_0000, { leafLevel: 1 });
    for (let i = 0; i < 6; i++) {
      const va = (rnd(4) * 0x4000_0000 + rnd(3) * 0x20_0000 + rnd(6) * 0x1000) >>> 0;
      const gpa = i === 0 && rnd(3) === 0 ? 32 * 0x10_0000 : rnd(26) * 0x10_0000 + rnd(256) * 0x1000;
      // the leaf already accessed, so the quick path also meets leaves it must refuse
      rig.mapGuestFl(flRoot, va, gpa >>> 0, { rw: rnd(4) !== 0, us: rnd(6) !== 0, a: true, d: rnd(2) === 0 });
      mine.push(va, va + 0x9a8);
    }
    // not canonical, though the table maps it: an address with bit 47 set (translate takes it too);
    // and one in the upper half
    const nc = mine[0]! + 2 ** 47;
    rig.mapGuestFl(flRoot, nc, 0x10_0000, { a: true, d: true });
    for (let lvl = 4; lvl >= 2; lvl--) {
      const ea = entryAddr(rig.mem, flRoot, nc, lvl, 4, 1, rig.g2h)!;
      rig.mem.write64(ea, (rig.mem.readLo(ea) | 0x20) >>> 0, rig.mem.readHi(ea)); // accessed
    }
    mine.push(mine[0]! + 2 ** 47, 0xffff_8000_0000_1000);
  }
  // every paging entry a walk of one of these addresses reads, while they are present
  const mem = rig.mem;
  const entries: [number, number][][] = [[]];
  let mine: [number, number][] = [];
  let vi = 0;
  const slWalk = (root: number, gpa: number): number | null => {
    let t = root;
    for (let lvl = 4; lvl >= 1; lvl--) {
      const ea = t + (Math.floor(gpa / 2 ** (12 + 9 * (lvl - 1))) % 512) * 8;
      if (ea + 8 > mem.size) return null;
      mine.push([ea, vi]);
      const lo = mem.readLo(ea);
      if ((lo & 3) === 0) return null;
      t = (mem.readHi(ea) & 0xfffff) * 2 ** 32 + ((lo & 0xfffff000) >>> 0);
    }
    return t;
  };
  for (const [i, { sl, fl }] of roots.entries()) {
    mine = [];
    entries.push(mine);
    for (const [j, va] of vas[i + 1]!.entries()) {
      if (va >= 2 ** 47) continue;
      vi = j;
      let tg = fl;
      for (let lvl = 4; lvl >= 1; lvl--) {
        const th = slWalk(sl, tg);
        if (th === null) break;
        const ea = th + (Math.floor(va / 2 ** (12 + 9 * (lvl - 1))) % 512) * 8;
        if (ea + 8 > mem.size) break;
        mine.push([ea, vi]);
        const lo = mem.readLo(ea);
        if ((lo & 1) === 0) break;
        tg = (mem.readHi(ea) & 0xfffff) * 2 ** 32 + ((lo & 0xfffff000) >>> 0);
        if (lvl === 1) slWalk(sl, tg);
      }
    }
  }
  // one read and one write of each address: the accessed (and dirty) bits the walks may set
  for (let pasid = 1; pasid <= 3; pasid++) {
    for (const va of vas[pasid]!) {
      for (const access of [ACCESS_R, ACCESS_W]) model(rig, pasid, BigInt(va), access, false);
    }
  }
  return { rig, vas, entries };
}

const arbNestedReq = fc.record({
  vaIndex: fc.nat(),
  access: fc.constantFrom(ACCESS_R, ACCESS_R, ACCESS_R, ACCESS_W, ACCESS_R | ACCESS_W, ACCESS_R | ACCESS_X),
  priv: fc.integer({ min: 0, max: 4 }).map((n) => n === 0),
  viaTranslate: fc.boolean(),
  /** Asked again at once: the first answer may come from the full walk, the next ones quick. */
  times: fc.integer({ min: 1, max: 3 }),
  /** After a flip: the address whose walk read the flipped entry, not `vaIndex`. */
  flipped: fc.boolean(),
});

/**
 * Requests of one PASID, after one bit of one entry its walks read has been flipped (or not);
 * then the bit is flipped back unless `keep`.
 */
const arbNestedStep = fc.record({
  pasid: fc.integer({ min: 1, max: 3 }),
  flip: fc.option(
    fc.record({
      // (unbiased: every entry and every bit as likely)
      entry: fc.noBias(fc.integer({ min: 0, max: 0x3fff_ffff })),
      // (as an index into the qword) P/R, R/W/W, U/S/X, A, D, PS, SNP, address bits on both
      // sides of the 4 GiB and memory-size lines, bits beyond HAW, TM, XD
      bit: fc.noBias(
        fc.constantFrom(0, 1, 2, 5, 6, 7, 11, 12, 21, 28, 29, 30, 31, 32, 33, 45, 48, 51, 62, 63),
      ),
      keep: fc.integer({ min: 0, max: 5 }).map((n) => n === 0),
    }),
    { nil: undefined, freq: 2 },
  ),
  reqs: fc.array(arbNestedReq, { minLength: 1, maxLength: 4 }),
});

test('differential: nested walks with no IOTLB (the quick path) agree with the reference after any bit of any entry on the way changes', () => {
  // count the answers the quick path gave, so the property is known to exercise it
  const proto = VtdIommu.prototype as unknown as Record<string, (...a: unknown[]) => number>;
  const original = proto.nestedQuick!;
  let quick = 0;
  proto.nestedQuick = function (this: unknown, ...a: unknown[]) {
    const r = original.apply(this, a);
    if (r >= 0) quick++;
    return r;
  };
  try {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 0x7fff_ffff }),
        fc.array(arbNestedStep, { minLength: 5, maxLength: 40 }),
        (seed, steps) => {
          const { rig, vas, entries } = nestedWorld(seed);
          const mem = rig.mem;
          const flip = (a: number, bit: number) => {
            const m = (1 << (bit & 31)) >>> 0;
            const lo = mem.readLo(a);
            const hi = mem.readHi(a);
            mem.write64(a, bit >= 32 ? lo : (lo ^ m) >>> 0, bit >= 32 ? (hi ^ m) >>> 0 : hi);
          };
          for (const st of steps) {
            const mine = entries[st.pasid]!;
            const [at, atVa] =
              st.flip === undefined || mine.length === 0 ? [-1, 0] : mine[st.flip.entry % mine.length]!;
            const saved = at >= 0 ? mem.readU64(at) : 0n;
            if (at >= 0) flip(at, st.flip!.bit);
            for (const q of st.reqs) {
              const list = vas[st.pasid]!;
              const va = BigInt(list[at >= 0 && q.flipped ? atVa : q.vaIndex % list.length]!);
              for (let i = 0; i < q.times; i++) {
                const want = ref(rig, st.pasid, va, q.access, q.priv, true);
                const walks = rig.iommu.walkCount;
                const got = model(rig, st.pasid, va, q.access, q.priv, q.viaTranslate);
                assert.equal(rig.iommu.walkCount, walks + 1, 'every translation is one walk');
                assert.equal(
                  show(got),
                  show(want),
                  `pasid ${st.pasid} va 0x${va.toString(16)} access ${q.access} priv ${q.priv} (request ${i + 1})`,
                );
              }
            }
            if (at >= 0 && !st.flip!.keep) mem.writeU64(at, saved);
          }
          rig.iommu.checkInvariants();
        },
      ),
      { numRuns: 150 },
    );
  } finally {
    proto.nestedQuick = original;
  }
  assert.ok(quick > 500, `the quick path answered ${quick} requests`);
});

test('differential: nested walks with no IOTLB agree with the reference with each bit of each entry of a walk flipped in turn', () => {
  for (const seed of [1, 0x2545_f491, 0x7654_3210]) {
    const { rig, vas, entries } = nestedWorld(seed);
    const mem = rig.mem;
    const flip = (a: number, bit: number) => {
      const m = (1 << (bit & 31)) >>> 0;
      const lo = mem.readLo(a);
      const hi = mem.readHi(a);
      mem.write64(a, bit >= 32 ? lo : (lo ^ m) >>> 0, bit >= 32 ? (hi ^ m) >>> 0 : hi);
    };
    for (let pasid = 1; pasid <= 3; pasid++) {
      // the walk of the first address (both stages, 24 reads when it completes), entry by entry
      const walk = [...new Set(entries[pasid]!.filter(([, vi]) => vi === 0).map(([a]) => a))];
      const va = BigInt(vas[pasid]![0]!);
      for (const at of walk) {
        for (const bit of [0, 1, 2, 5, 6, 7, 11, 12, 21, 28, 29, 30, 31, 32, 33, 45, 48, 51, 62, 63]) {
          const saved = mem.readU64(at);
          flip(at, bit);
          for (const access of [ACCESS_R, ACCESS_W, ACCESS_R | ACCESS_W]) {
            for (const priv of [false, true]) {
              // twice: the second answer is the quick path's whenever it applies
              for (const viaTranslate of [false, true]) {
                const want = ref(rig, pasid, va, access, priv, true);
                const got = model(rig, pasid, va, access, priv, viaTranslate);
                assert.equal(
                  show(got),
                  show(want),
                  `pasid ${pasid} entry 0x${at.toString(16)} bit ${bit} access ${access} priv ${priv}`,
                );
              }
            }
          }
          mem.writeU64(at, saved);
        }
      }
    }
    rig.iommu.checkInvariants();
  }
});
