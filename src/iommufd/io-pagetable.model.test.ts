// Model-based tests: the interval tree against brute force, and io_pagetable against a trivially
// correct reference that keeps plain sorted arrays of ranges and states each rule of research
// iommufd.md A.3–A.8 and B.2–B.3 directly (automatic IOVA: first fit over the holes of
// reserved ∪ areas inside the allowed windows, with the kernel's alignment arithmetic).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { isKernelError } from '../core/errno.ts';
import { IntervalTree } from './interval-tree.ts';
import {
  IOMMU_CACHE,
  IOMMU_READ,
  IOMMU_WRITE,
  IOPT_ALLOC_IOVA,
  IoPagetable,
  ULONG_MAX,
} from './io-pagetable.ts';

const P = 4096n;
const HPAGE = 2n << 20n;
const RW = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE;

interface R {
  start: bigint;
  last: bigint;
}

describe('interval tree', () => {
  test('iterFirst/iterNext/spans agree with brute force', () => {
    const op = fc.oneof(
      fc.record({ k: fc.constant('ins' as const), s: fc.nat({ max: 120 }), len: fc.nat({ max: 30 }) }),
      fc.record({ k: fc.constant('del' as const), i: fc.nat() }),
    );
    fc.assert(
      fc.property(
        fc.array(op, { maxLength: 60 }),
        fc.nat({ max: 150 }),
        fc.nat({ max: 60 }),
        (ops, qs, qlen) => {
          const t = new IntervalTree<number>();
          const live: { node: ReturnType<typeof t.insert>; s: bigint; l: bigint; id: number }[] = [];
          let id = 0;
          for (const o of ops) {
            if (o.k === 'ins') {
              const s = BigInt(o.s);
              const l = s + BigInt(o.len);
              live.push({ node: t.insert(s, l, id), s, l, id });
              id++;
            } else if (live.length > 0) {
              const [x] = live.splice(o.i % live.length, 1);
              t.remove(x!.node);
            }
            t.checkInvariants();
          }
          const qS = BigInt(qs);
          const qL = qS + BigInt(qlen);
          const expect = live
            .filter((x) => x.s <= qL && x.l >= qS)
            .sort((a, b) => (a.s === b.s ? a.id - b.id : a.s < b.s ? -1 : 1))
            .map((x) => x.id);
          assert.deepEqual(
            [...t.overlapping(qS, qL)].map((n) => n.value),
            expect,
          );
          // spans: rebuild coverage per point inside the window and compare.
          const covered = (p: bigint) => live.some((x) => x.s <= p && p <= x.l);
          const got = [...t.spans(qS, qL)];
          let pos = qS;
          for (const sp of got) {
            assert.equal(sp.start, pos);
            for (let p = sp.start; p <= sp.last; p++) assert.equal(covered(p), !sp.isHole);
            pos = sp.last + 1n;
          }
          assert.equal(pos, qL + 1n);
          for (let i = 1; i < got.length; i++) assert.notEqual(got[i]!.isHole, got[i - 1]!.isHole);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('interval tree runs', () => {
  test('contiguousEnd finds the end of a run of back-to-back disjoint intervals', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.tuple(
            fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat({ max: 3 }) }),
            fc.integer({ min: 1, max: 4 }),
          ),
          { maxLength: 80 },
        ),
        fc.array(fc.nat(), { maxLength: 20 }),
        fc.nat({ max: 300 }),
        (pieces, removals, probe) => {
          // Disjoint intervals: each starts `gap` after the previous one ends.
          const ivs: { s: bigint; l: bigint }[] = [];
          let at = 0n;
          for (const [gap, length] of pieces) {
            const s = at + BigInt(gap);
            ivs.push({ s, l: s + BigInt(length) - 1n });
            at = s + BigInt(length);
          }
          const t = new IntervalTree<null>();
          const order = ivs.map((_, i) => i).sort((a, b) => ((a * 7919) % 101) - ((b * 7919) % 101));
          const nodes = new Map<number, ReturnType<typeof t.insert>>();
          for (const i of order) nodes.set(i, t.insert(ivs[i]!.s, ivs[i]!.l, null));
          const live = new Set(nodes.keys());
          for (const r of removals) {
            if (live.size === 0) break;
            const i = [...live][r % live.size]!;
            t.remove(nodes.get(i)!);
            live.delete(i);
          }
          t.checkInvariants();
          const alive = [...live].sort((a, b) => a - b).map((i) => ivs[i]!);
          const p = BigInt(probe);
          const k = alive.findIndex((x) => x.s <= p && p <= x.l);
          let want: bigint | null = null;
          if (k >= 0) {
            let j = k;
            while (j + 1 < alive.length && alive[j + 1]!.s === alive[j]!.l + 1n) j++;
            want = alive[j]!.l;
          }
          assert.equal(t.contiguousEnd(p), want);
        },
      ),
      { numRuns: 500 },
    );
  });
});

// ---- the reference -------------------------------------------------------------------------------

function merged(rs: readonly R[]): R[] {
  const sorted = [...rs].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const out: R[] = [];
  for (const r of sorted) {
    const top = out[out.length - 1];
    if (top && r.start <= top.last + 1n) {
      if (r.last > top.last) top.last = r.last;
    } else out.push({ start: r.start, last: r.last });
  }
  return out;
}

function holes(cover: readonly R[], first: bigint, last: bigint): R[] {
  const out: R[] = [];
  let pos = first;
  for (const r of cover) {
    if (r.last < pos) continue;
    if (r.start > last) break;
    if (r.start > pos) out.push({ start: pos, last: r.start - 1n });
    pos = r.last + 1n;
    if (pos > last) return out;
  }
  out.push({ start: pos, last });
  return out;
}

const maxB = (a: bigint, b: bigint) => (a > b ? a : b);
const minB = (a: bigint, b: bigint) => (a < b ? a : b);
const hits = (rs: readonly R[], s: bigint, l: bigint) => rs.some((r) => r.start <= l && r.last >= s);

interface RefArea extends R {
  /** The source address of the area's first byte. */
  src: bigint;
}

class Ref {
  areas: RefArea[] = [];
  reserved: (R & { owner: string | null })[] = [];
  allowed: R[] = [];
  align: bigint;
  constructor(align: bigint, reserved: R[]) {
    this.align = align;
    for (const r of reserved) this.reserved.push({ ...r, owner: 'domain' });
  }

  private fits(start: bigint, last: bigint, length: bigint, align: bigint, po: bigint): bigint | null {
    if (start + align - 1n > ULONG_MAX) return null;
    const a = ((start + align - 1n) / align) * align + po - ((((start + align - 1n) / align) * align) & po);
    if (a >= last || last - a < length - 1n) return null;
    return a;
  }

  alloc(addr: bigint, length: bigint): bigint | string {
    if (length === 0n || length >= ULONG_MAX / 2n) return 'EOVERFLOW';
    let align = 1n;
    while (align < length) align *= 2n;
    if (addr !== 0n) {
      let nat = 1n;
      while (addr % (nat * 2n) === 0n) nat *= 2n;
      if (nat < align) align = nat;
    }
    if (align >= HPAGE) align = HPAGE;
    if (align < this.align) return 'EINVAL';
    const win: R = { start: P, last: ULONG_MAX - P };
    const windows =
      this.allowed.length === 0
        ? [win]
        : merged(this.allowed)
            .filter((r) => r.last >= win.start && r.start <= win.last)
            .map((r) => ({
              start: maxB(r.start, win.start),
              last: minB(r.last, win.last),
            }));
    const cover = merged([...this.reserved, ...this.areas]);
    for (const w of windows) {
      const s = this.fits(w.start, w.last, length, align, addr % P);
      if (s === null) continue;
      for (const h of holes(cover, s, w.last)) {
        const got = this.fits(h.start, h.last, length, align, addr % P);
        if (got !== null) return got;
      }
    }
    return 'ENOSPC';
  }

  place(pieces: { src: bigint; length: bigint }[], length: bigint, iova: bigint | null): bigint | string {
    const mask = this.align - 1n;
    if ((length & mask) !== 0n) return 'EINVAL';
    let at: bigint;
    if (iova === null) {
      const r = this.alloc(pieces[0]!.src, length);
      if (typeof r === 'string') return r;
      at = r;
    } else {
      if ((iova & mask) !== 0n) return 'EINVAL';
      if (iova + length - 1n > ULONG_MAX) return 'EOVERFLOW';
      if (hits(this.reserved, iova, iova + length - 1n)) return 'EINVAL';
      if (hits(this.areas, iova, iova + length - 1n)) return 'EEXIST';
      at = iova;
    }
    for (const p of pieces) if (((p.src % P) & mask) !== 0n) return 'EINVAL';
    const first = at;
    for (const p of pieces) {
      this.areas.push({ start: at, last: at + p.length - 1n, src: p.src });
      at += p.length;
    }
    this.areas.sort((a, b) => (a.start < b.start ? -1 : 1));
    return first;
  }

  map(uptr: bigint, length: bigint, iova: bigint | null): bigint | string {
    if (uptr + length > ULONG_MAX) return 'EOVERFLOW';
    if (length === 0n || length > ULONG_MAX - P) return 'EINVAL';
    return this.place([{ src: uptr, length }], length, iova);
  }

  copy(src: bigint, length: bigint, iova: bigint | null): bigint | string {
    if (length === 0n) return 'EINVAL';
    const last = src + length - 1n;
    if (last > ULONG_MAX) return 'EOVERFLOW';
    const pieces: { src: bigint; length: bigint }[] = [];
    let cur = src;
    for (;;) {
      const a = this.areas.find((x) => x.start <= cur && cur <= x.last);
      if (!a || (pieces.length > 0 && a.start !== cur)) return 'ENOENT';
      const end = last < a.last ? last : a.last;
      pieces.push({ src: a.src + (cur - a.start), length: end - cur + 1n });
      if (end === last) break;
      cur = end + 1n;
    }
    return this.place(pieces, length, iova);
  }

  unmap(iova: bigint, length: bigint): bigint | string {
    if (length === 0n) return 'EINVAL';
    const last = iova + length - 1n;
    if (last > ULONG_MAX) return 'EOVERFLOW';
    return this.unmapRange(iova, last);
  }

  unmapRange(s: bigint, l: bigint): bigint | string {
    let total = 0n;
    for (const a of this.areas.filter((x) => x.start <= l && x.last >= s)) {
      if (a.start < s || a.last > l) return 'ENOENT';
      this.areas.splice(this.areas.indexOf(a), 1);
      total += a.last - a.start + 1n;
    }
    return total === 0n ? 'ENOENT' : total;
  }

  unmapAll(): bigint | string {
    const r = this.unmapRange(0n, ULONG_MAX);
    return r === 'ENOENT' ? 0n : r;
  }

  reserve(s: bigint, l: bigint, owner: string | null): string {
    if (hits(this.areas, s, l) || hits(this.allowed, s, l)) return 'EADDRINUSE';
    this.reserved.push({ start: s, last: l, owner });
    return 'ok';
  }

  unreserve(owner: string | null): string {
    this.reserved = this.reserved.filter((r) => r.owner !== owner);
    return 'ok';
  }

  allow(list: R[]): string {
    for (let i = 0; i < list.length; i++) {
      const r = list[i]!;
      if (r.start >= r.last) return 'EINVAL';
      if (hits(list.slice(0, i), r.start, r.last)) return 'EINVAL';
    }
    for (const r of list) if (hits(this.reserved, r.start, r.last)) return 'EADDRINUSE';
    this.allowed = list.map((r) => ({ ...r }));
    return 'ok';
  }

  ranges(): R[] {
    return holes(merged(this.reserved), 0n, ULONG_MAX);
  }
}

// ---- the commands --------------------------------------------------------------------------------

const BUFFER = 0x7f00_0000_0000n;
const unit = (max: number) => fc.nat({ max }).map((k) => BigInt(k) * 0x100n);
const addr = fc.oneof(
  { weight: 8, arbitrary: unit(400) },
  { weight: 1, arbitrary: fc.bigInt({ min: ULONG_MAX - 0x3000n, max: ULONG_MAX }) },
);
const len = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 1, max: 48 }).map((k) => BigInt(k) * 0x100n) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 0x3000n }) },
  { weight: 1, arbitrary: fc.constantFrom(1n, 2n, 3n) },
  // Past HPAGE_SIZE the allocator's alignment is capped at 2 MiB.
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 8 }).map((k) => BigInt(k) << 20n) },
  { weight: 1, arbitrary: fc.constantFrom(ULONG_MAX / 2n, ULONG_MAX - P + 1n, ULONG_MAX) },
);
const uptr = fc.oneof(
  { weight: 6, arbitrary: unit(64).map((o) => BUFFER + o) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: 0x5000n }) },
  { weight: 1, arbitrary: fc.bigInt({ min: ULONG_MAX - 0x3000n, max: ULONG_MAX }) },
);
const owner = fc.constantFrom(null, 'a', 'b');
const range = fc
  .tuple(unit(400), fc.integer({ min: -1, max: 40 }))
  .map(([s, k]) => ({ start: s, last: s + BigInt(k) * 0x100n }));

const command = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('mapFixed' as const), uptr, len, iova: addr }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('mapAuto' as const), uptr, len }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('copy' as const),
      src: addr,
      len,
      iova: fc.option(addr, { nil: null }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('unmap' as const), iova: addr, len }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('unmapAll' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('reserve' as const), r: range, owner }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('unreserve' as const), owner }) },
  {
    weight: 2,
    arbitrary: fc.record({ op: fc.constant('allow' as const), list: fc.array(range, { maxLength: 3 }) }),
  },
);

type Cmd = typeof command extends fc.Arbitrary<infer C> ? C : never;

function show(r: unknown): string {
  if (isKernelError(r)) return r.code;
  if (typeof r === 'bigint') return `0x${r.toString(16)}`;
  if (r === undefined) return 'ok';
  return String(r);
}

function applyReal(io: IoPagetable, c: Cmd): string {
  switch (c.op) {
    case 'mapFixed': {
      const r = io.mapUserPages(c.uptr, c.len, c.iova, RW, 0);
      return isKernelError(r) ? r.code : show(r.iova);
    }
    case 'mapAuto': {
      const r = io.mapUserPages(c.uptr, c.len, 0n, RW, IOPT_ALLOC_IOVA);
      return isKernelError(r) ? r.code : show(r.iova);
    }
    case 'copy': {
      const list = io.getPages(c.src, c.len);
      if (isKernelError(list)) return list.code;
      const r = io.mapPages(list, c.len, c.iova ?? 0n, RW, c.iova === null ? IOPT_ALLOC_IOVA : 0);
      return isKernelError(r) ? r.code : show(r.iova);
    }
    case 'unmap':
      return show(io.unmapIova(c.iova, c.len));
    case 'unmapAll':
      return show(io.unmapAll());
    case 'reserve':
      return show(io.reserveIova(c.r.start, c.r.last, c.owner));
    case 'unreserve':
      io.removeReservedIova(c.owner);
      return 'ok';
    case 'allow':
      return show(io.setAllowIova(c.list));
  }
}

function applyRef(ref: Ref, c: Cmd): string {
  switch (c.op) {
    case 'mapFixed':
      return show(ref.map(c.uptr, c.len, c.iova));
    case 'mapAuto':
      return show(ref.map(c.uptr, c.len, null));
    case 'copy':
      return show(ref.copy(c.src, c.len, c.iova));
    case 'unmap':
      return show(ref.unmap(c.iova, c.len));
    case 'unmapAll':
      return show(ref.unmapAll());
    case 'reserve':
      return ref.reserve(c.r.start, c.r.last, c.owner);
    case 'unreserve':
      return ref.unreserve(c.owner);
    case 'allow':
      return ref.allow(c.list);
  }
}

function check(withDomain: boolean) {
  fc.assert(
    fc.property(fc.array(command, { maxLength: 40 }), (cmds) => {
      const io = new IoPagetable();
      const aperture = {
        pgsizeBitmap: 0x800n | P,
        apertureStart: 0x1000n,
        apertureEnd: ULONG_MAX - 0x10000n,
      };
      const ref = withDomain
        ? new Ref(0x800n, [
            { start: 0n, last: 0xfffn },
            { start: ULONG_MAX - 0xffffn, last: ULONG_MAX },
          ])
        : new Ref(1n, []);
      if (withDomain) assert.equal(io.addDomain(aperture), undefined);
      for (const c of cmds) {
        const got = applyReal(io, c);
        const want = applyRef(ref, c);
        assert.equal(
          got,
          want,
          `${c.op} ${JSON.stringify(c, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))}`,
        );
        io.checkInvariants();
        assert.deepEqual(
          [...io.areas()].map((a) => [a.iova, a.last, a.pages.base + a.startByte]),
          ref.areas.map((a) => [a.start, a.last, a.src]),
        );
        assert.deepEqual(io.iovaRanges(), ref.ranges());
      }
      const pages = new Set([...io.areas()].map((a) => a.pages));
      assert.equal(show(io.unmapAll()), show(ref.unmapAll()));
      for (const p of pages) assert.equal(p.users, 0, 'every pages reference is dropped once unmapped');
    }),
    { numRuns: 400 },
  );
}

describe('io_pagetable against the reference', () => {
  test('map/copy/unmap/reserve/allow, alignment 1', () => check(false));
  test('map/copy/unmap/reserve/allow, under a 2 KiB-page domain with an aperture', () => check(true));
});
