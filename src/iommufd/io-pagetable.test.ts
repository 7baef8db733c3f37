// io_pagetable rules, one test per errno case of research iommufd.md A.3–A.8 and B.2–B.3 that is
// a range-level rule; several are the selftests' own scenarios (iommufd.c iommufd_ioas.*) at the
// range level. Model-based properties live in io-pagetable.model.test.ts.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isKernelError, type KernelError, kerr } from '../core/errno.ts';
import { FaultInjector } from '../core/fault.ts';
import { InvariantError } from '../core/invariants.ts';
import {
  IOMMU_CACHE,
  IOMMU_READ,
  IOMMU_WRITE,
  IOPT_ALLOC_IOVA,
  IoPagetable,
  type IoptArea,
  type IoptDomain,
  ULONG_MAX,
} from './io-pagetable.ts';

const P = 4096n;
const RW = IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE;
const FIXED = 0;
const AUTO = IOPT_ALLOC_IOVA;
/** The selftests' buffer: huge-page aligned, so its natural alignment never limits auto IOVA. */
const BUFFER = 0x7f00_0000_0000n;
const MOCK_APERTURE_START = 1n << 24n;
const MOCK_APERTURE_LAST = (1n << 31n) - 1n;
const MOCK_PAGE_SIZE = 2048n;

function mockDomain(): IoptDomain {
  return {
    pgsizeBitmap: MOCK_PAGE_SIZE | P,
    apertureStart: MOCK_APERTURE_START,
    apertureEnd: MOCK_APERTURE_LAST,
  };
}

function code(r: unknown): string {
  return isKernelError(r) ? r.code : 'ok';
}

function ok<T>(r: T | KernelError): T {
  if (isKernelError(r)) assert.fail(`unexpected ${r.message}`);
  return r;
}

function map(io: IoPagetable, iova: bigint, length: bigint, uptr = BUFFER, flags = FIXED, prot = RW) {
  return io.mapUserPages(uptr, length, iova, prot, flags);
}

function spans(io: IoPagetable): [bigint, bigint][] {
  return [...io.areas()].map((a) => [a.iova, a.last]);
}

describe('a fresh IOAS', () => {
  test('has no areas, alignment 1 and the whole space as one range (A.2, A.3)', () => {
    const io = new IoPagetable();
    assert.equal(io.iovaAlignment, 1n);
    assert.deepEqual(io.iovaRanges(), [{ start: 0n, last: ULONG_MAX }]);
    assert.equal(io.areaCount, 0);
    io.checkInvariants();
  });
});

describe('fixed maps and unmaps (A.5, A.8)', () => {
  test('selftest area: unmap of nothing, single pages, no splitting, overlaps, unmap all', () => {
    for (const base of [0n, MOCK_APERTURE_START]) {
      const io = new IoPagetable();
      if (base !== 0n) ok(io.addDomain(mockDomain()));
      assert.equal(code(io.unmapIova(base, 10n * P)), 'ENOENT');
      for (let i = 0n; i < 10n; i++) ok(map(io, base + i * P, P));
      for (let i = 0n; i < 10n; i++) assert.equal(ok(io.unmapIova(base + i * P, P)), P);
      ok(map(io, base + 16n * P, 2n * P));
      assert.equal(code(io.unmapIova(base + 16n * P, P)), 'ENOENT');
      assert.equal(code(io.unmapIova(base + 17n * P, P)), 'ENOENT');
      for (const [at, len] of [
        [16n, 2n],
        [16n, 1n],
        [17n, 1n],
        [15n, 2n],
        [15n, 3n],
      ] as const) {
        assert.equal(code(map(io, base + at * P, len * P)), 'EEXIST', `${at}+${len}`);
      }
      assert.equal(ok(io.unmapAll()), 2n * P);
      assert.equal(ok(io.unmapAll()), 0n);
      io.checkInvariants();
    }
  });

  test('selftest unmap_fully_contained_areas: partial areas are ENOENT, holes are fine', () => {
    const io = new IoPagetable();
    const B = 4n * P;
    for (let i = 0n; i < 4n; i++) ok(map(io, B + i * 16n * P, 8n * P));
    assert.equal(code(io.unmapIova(B - 4n * P, 8n * P)), 'ENOENT');
    assert.equal(code(io.unmapIova(B + 3n * 16n * P + 8n * P - 4n * P, 8n * P)), 'ENOENT');
    assert.equal(ok(io.unmapIova(B - 4n * P, 3n * 16n * P + 8n * P + 4n * P)), 32n * P);
    assert.equal(io.areaCount, 0);
  });

  test('an unmap that stops at a partial area keeps what it already removed', () => {
    const io = new IoPagetable();
    ok(map(io, 0n, P));
    ok(map(io, 2n * P, 2n * P));
    assert.equal(code(io.unmapIova(0n, 3n * P)), 'ENOENT');
    assert.deepEqual(spans(io), [[2n * P, 4n * P - 1n]]);
  });

  test('unmap argument rules: length 0 is EINVAL, a wrapping range is EOVERFLOW', () => {
    const io = new IoPagetable();
    assert.equal(code(io.unmapIova(0n, 0n)), 'EINVAL');
    assert.equal(code(io.unmapIova(ULONG_MAX, 2n)), 'EOVERFLOW');
  });

  test('map argument rules: user_va + length overflow, length 0, alignment, overflow of the IOVA', () => {
    const io = new IoPagetable();
    assert.equal(code(map(io, 0n, P, ULONG_MAX - 10n)), 'EOVERFLOW');
    assert.equal(code(map(io, 0n, 0n)), 'EINVAL');
    assert.equal(code(map(io, 0n, ULONG_MAX - P + 1n, 0n)), 'EINVAL');
    assert.equal(code(map(io, ULONG_MAX - P + 2n, P, 0n)), 'EOVERFLOW');
    ok(io.addDomain({ pgsizeBitmap: P, apertureStart: 0n, apertureEnd: ULONG_MAX }));
    assert.equal(io.iovaAlignment, P);
    assert.equal(code(map(io, 0n, P + 1n)), 'EINVAL');
    assert.equal(code(map(io, 1n, P)), 'EINVAL');
    // The sub-page offset of user_va must be aligned too (A.5 step 9).
    assert.equal(code(map(io, 0n, P, BUFFER + 0x800n)), 'EINVAL');
    io.checkInvariants();
  });

  test('a fixed map into a reserved range is EINVAL, into an area EEXIST; reserved is checked first', () => {
    const io = new IoPagetable();
    ok(io.reserveIova(0n, P - 1n, null));
    ok(map(io, 2n * P, P));
    assert.equal(code(map(io, 0n, P)), 'EINVAL');
    assert.equal(code(map(io, 2n * P, P)), 'EEXIST');
    ok(io.reserveIova(3n * P, 3n * P, null));
    assert.equal(code(map(io, 2n * P, 2n * P)), 'EINVAL');
  });

  test('a writeable mapping of read-only pages is EPERM (COPY with WRITEABLE of a READABLE map)', () => {
    const io = new IoPagetable();
    ok(map(io, 0n, P, BUFFER, FIXED, IOMMU_READ | IOMMU_CACHE));
    const pages = ok(io.getPages(0n, P));
    assert.equal(code(io.mapPages(pages, P, 8n * P, RW, FIXED)), 'EPERM');
    assert.equal(io.areaCount, 1);
    assert.equal(io.areaAt(0n)?.pages.users, 1);
  });

  test('locked and in-flight areas make unmap EBUSY, before the containment check', () => {
    const io = new IoPagetable();
    const a = ok(map(io, 0n, 2n * P)).area;
    a.numLocks = 1;
    assert.equal(code(io.unmapIova(0n, P)), 'EBUSY');
    a.numLocks = 0;
    let seen = '';
    io.hooks = {
      fillArea: () => {
        seen = code(io.unmapIova(4n * P, P));
        return undefined;
      },
    };
    ok(io.addDomain({ pgsizeBitmap: 1n, apertureStart: 0n, apertureEnd: ULONG_MAX }));
    ok(map(io, 4n * P, P));
    assert.equal(seen, 'EBUSY');
  });

  test('accesses are asked to unpin; an access that never lets go is EDEADLK after 100 retries', () => {
    const io = new IoPagetable();
    const a = ok(map(io, 0n, P)).area;
    a.numAccesses = 1;
    const calls: bigint[] = [];
    io.hooks = {
      notifyUnmap: (iova, length) => {
        calls.push(iova, length);
        a.numAccesses = 0;
      },
    };
    assert.equal(ok(io.unmapIova(0n, P)), P);
    assert.deepEqual(calls, [0n, P]);
    const b = ok(map(io, 0n, P)).area;
    b.numAccesses = 1;
    let n = 0;
    io.hooks = { notifyUnmap: () => void n++ };
    assert.equal(code(io.unmapIova(0n, P)), 'EDEADLK');
    assert.equal(n, 101);
    assert.equal(b.preventAccess, true);
  });
});

describe('automatic IOVA (B.3)', () => {
  test('selftest area_auto_iova: alignment, reserved ranges avoided, allowed ranges honoured', () => {
    for (const withDomain of [false, true]) {
      const io = new IoPagetable();
      if (withDomain) ok(io.addDomain(mockDomain()));
      const iovas: bigint[] = [];
      for (let i = 1n; i <= 10n; i++) {
        const iova = ok(map(io, 0n, i * P, BUFFER, AUTO)).iova;
        const len = i * P;
        assert.equal(iova % lowest(len), 0n, `length ${len}`);
        iovas.push(iova);
      }
      for (let i = 0; i < 10; i++) ok(io.unmapIova(iovas[i]!, BigInt(i + 1) * P));

      ok(io.reserveIova(4n * P, 104n * P - 1n, null));
      for (let i = 1n; i <= 10n; i++) {
        const iova = ok(map(io, 0n, i * P, BUFFER, AUTO)).iova;
        assert.ok(iova + i * P - 1n < 4n * P || iova >= 104n * P);
        iovas[Number(i) - 1] = iova;
      }
      for (let i = 0; i < 10; i++) ok(io.unmapIova(iovas[i]!, BigInt(i + 1) * P));

      assert.equal(code(io.setAllowIova([{ start: P, last: 600n * P }])), 'EADDRINUSE');
      const allowed = withDomain
        ? { start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }
        : { start: 200n * P, last: 600n * P - 1n };
      ok(io.setAllowIova([allowed]));
      for (let i = 1n; i <= 10n; i++) {
        const iova = ok(map(io, 0n, i * P, BUFFER, AUTO)).iova;
        assert.ok(iova >= allowed.start && iova + i * P - 1n <= allowed.last);
      }
      io.checkInvariants();
    }
  });

  test('selftest reserved_overflow: an alignment that would wrap past ULONG_MAX is ENOSPC', () => {
    const io = new IoPagetable();
    const start = 6n;
    ok(io.reserveIova(start, start + 0xffff_ffff_ffff_8001n - 1n, null));
    assert.equal(code(map(io, 0n, 0x5000n, BUFFER, AUTO)), 'ENOSPC');
  });

  test('IOVA 0 is never picked and the first fitting hole wins', () => {
    const io = new IoPagetable();
    assert.equal(ok(map(io, 0n, P, 0n, AUTO)).iova, P);
    assert.equal(ok(map(io, 0n, P, 0n, AUTO)).iova, 2n * P);
    assert.equal(ok(map(io, 0n, 2n * P, 0n, AUTO)).iova, 4n * P);
    ok(io.unmapIova(P, P));
    assert.equal(ok(map(io, 0n, P, 0n, AUTO)).iova, P);
  });

  test('the source address limits the alignment and its sub-page offset is kept', () => {
    const io = new IoPagetable();
    // 8 KiB from a VA aligned only to 16 bytes: alignment 16, offset 0x10 kept.
    const iova = ok(map(io, 0n, 0x2000n, BUFFER + 0x10n, AUTO)).iova;
    assert.equal(iova, P | 0x10n);
    // Huge lengths are capped at HPAGE_SIZE alignment.
    const big = ok(map(io, 0n, 16n << 20n, BUFFER, AUTO)).iova;
    assert.equal(big % (2n << 20n), 0n);
  });

  test('auto allocation errors: length 0 or >= ULONG_MAX/2 is EOVERFLOW; a source aligned below iova_alignment is EINVAL', () => {
    const io = new IoPagetable();
    assert.equal(code(io.allocIova(BUFFER, 0n)), 'EOVERFLOW');
    assert.equal(code(io.allocIova(BUFFER, ULONG_MAX / 2n)), 'EOVERFLOW');
    ok(io.addDomain(mockDomain()));
    assert.equal(code(io.allocIova(BUFFER + 0x400n, 0x800n)), 'EINVAL');
    assert.equal(code(io.allocIova(BUFFER, 0x400n)), 'EINVAL');
    assert.equal(ok(io.allocIova(BUFFER, 0x800n)), MOCK_APERTURE_START);
  });

  test('selftest ioas_iova_alloc: with a mock domain lengths must be MOCK_PAGE_SIZE multiples', () => {
    const io = new IoPagetable();
    ok(io.addDomain(mockDomain()));
    for (let length = 1n; length < 2n * P; length++) {
      const r = map(io, 0n, length, BUFFER, AUTO);
      if (length % MOCK_PAGE_SIZE !== 0n) {
        assert.equal(code(r), 'EINVAL', `${length}`);
      } else {
        ok(io.unmapIova(ok(r).iova, length));
      }
    }
  });

  test('a one-byte hole is never used, even for a one-byte map (the kernel checks aligned >= last)', () => {
    const io = new IoPagetable();
    ok(io.setAllowIova([{ start: 0x10000n, last: 0x10001n }]));
    ok(map(io, 0x10000n, 1n, BUFFER));
    assert.equal(code(map(io, 0n, 1n, BUFFER, AUTO)), 'ENOSPC');
    ok(io.unmapAll());
    assert.equal(ok(map(io, 0n, 1n, BUFFER, AUTO)).iova, 0x10000n);
  });

  test('no room anywhere is ENOSPC', () => {
    const io = new IoPagetable();
    // Alignment is part of fitting: 2 pages need a 2-page aligned start inside the window.
    ok(io.setAllowIova([{ start: P, last: 3n * P - 1n }]));
    assert.equal(code(map(io, 0n, 2n * P, 0n, AUTO)), 'ENOSPC');
    ok(io.setAllowIova([{ start: 2n * P, last: 4n * P - 1n }]));
    assert.equal(ok(map(io, 0n, 2n * P, 0n, AUTO)).iova, 2n * P);
    assert.equal(code(map(io, 0n, P, 0n, AUTO)), 'ENOSPC');
  });
});

describe('reserved and allowed ranges (A.4, B.2)', () => {
  test('selftest area_allowed: reservations and allowed ranges exclude each other', () => {
    const io = new IoPagetable();
    const base = 0n;
    ok(io.setAllowIova([{ start: base, last: base + 600n * P }]));
    assert.equal(code(io.reserveIova(base + 16n * P, base + 18n * P - 1n, null)), 'EADDRINUSE');
    ok(io.setAllowIova([]));
    ok(io.reserveIova(base + 16n * P, base + 18n * P - 1n, null));
    assert.equal(code(io.setAllowIova([{ start: base, last: base + 600n * P }])), 'EADDRINUSE');
    assert.deepEqual([...io.allowedRanges()], []);
  });

  test('a reservation over an area is EADDRINUSE', () => {
    const io = new IoPagetable();
    ok(map(io, 8n * P, P));
    assert.equal(code(io.reserveIova(0n, 8n * P, 'dev')), 'EADDRINUSE');
    ok(io.reserveIova(0n, 8n * P - 1n, 'dev'));
  });

  test('ALLOW_IOVAS: start >= last and overlaps within the list are EINVAL; the old list stays', () => {
    const io = new IoPagetable();
    ok(io.setAllowIova([{ start: 0n, last: P }]));
    assert.equal(code(io.setAllowIova([{ start: 5n, last: 5n }])), 'EINVAL');
    assert.equal(
      code(
        io.setAllowIova([
          { start: 0n, last: 10n },
          { start: 10n, last: 20n },
        ]),
      ),
      'EINVAL',
    );
    assert.deepEqual([...io.allowedRanges()], [{ start: 0n, last: P }]);
    const fault = kerr('EFAULT', 'copy_from_user');
    assert.equal(io.setAllowIova([{ start: 0n, last: 10n }, fault]), fault);
  });

  test('selftest iova_ranges: holes of the reserved ranges, alignment from the domain', () => {
    const io = new IoPagetable();
    assert.deepEqual(io.iovaRanges(), [{ start: 0n, last: ULONG_MAX }]);
    ok(io.reserveIova(P, 2n * P - 1n, null));
    assert.deepEqual(io.iovaRanges(), [
      { start: 0n, last: P - 1n },
      { start: 2n * P, last: ULONG_MAX },
    ]);
    const d = mockDomain();
    ok(io.addDomain(d));
    assert.deepEqual(io.iovaRanges(), [{ start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST }]);
    assert.equal(io.iovaAlignment, MOCK_PAGE_SIZE);
    io.removeDomain(d);
    assert.equal(io.iovaAlignment, 1n);
    assert.equal(io.iovaRanges().length, 2);
  });

  test('removing an owner drops only its reservations; overlapping reservations are kept apart', () => {
    const io = new IoPagetable();
    ok(io.reserveIova(0n, 10n, 'a'));
    ok(io.reserveIova(5n, 20n, 'b'));
    io.removeReservedIova('a');
    assert.deepEqual(io.iovaRanges(), [
      { start: 0n, last: 4n },
      { start: 21n, last: ULONG_MAX },
    ]);
  });
});

describe('domains, accesses and alignment (B.2, A.9)', () => {
  test('a domain reserves its aperture complement; areas outside it make the add EADDRINUSE', () => {
    const io = new IoPagetable();
    ok(map(io, 0n, P));
    assert.equal(code(io.addDomain(mockDomain())), 'EADDRINUSE');
    assert.deepEqual([...io.reservedRanges()], []);
    assert.equal(io.iovaAlignment, 1n);
    ok(io.unmapAll());
    ok(io.addDomain(mockDomain()));
    assert.equal(io.domains.length, 1);
  });

  test('an allowed range outside the aperture blocks the domain', () => {
    const io = new IoPagetable();
    ok(io.setAllowIova([{ start: 0n, last: P }]));
    assert.equal(code(io.addDomain(mockDomain())), 'EADDRINUSE');
  });

  test('a smallest page above PAGE_SIZE is EINVAL; misaligned areas are EADDRINUSE', () => {
    const io = new IoPagetable();
    assert.equal(
      code(io.addDomain({ pgsizeBitmap: 2n * P, apertureStart: 0n, apertureEnd: ULONG_MAX })),
      'EINVAL',
    );
    ok(map(io, 0x800n, 0x800n));
    assert.equal(
      code(io.addDomain({ pgsizeBitmap: P, apertureStart: 0n, apertureEnd: ULONG_MAX })),
      'EADDRINUSE',
    );
    ok(io.addDomain({ pgsizeBitmap: MOCK_PAGE_SIZE, apertureStart: 0n, apertureEnd: ULONG_MAX }));
  });

  test('fill failures roll the domain add back; unfill runs on remove', () => {
    const io = new IoPagetable();
    ok(io.addDomain(mockDomain()));
    ok(map(io, MOCK_APERTURE_START, P));
    const d2: IoptDomain = { pgsizeBitmap: P, apertureStart: 0n, apertureEnd: ULONG_MAX };
    const events: string[] = [];
    io.hooks = {
      fillDomain: (_d, areas) => {
        events.push(`fill ${areas.length}`);
        return kerr('ENOENT', 'mock map_pages failed');
      },
      unfillDomain: (_d, areas) => void events.push(`unfill ${areas.length}`),
    };
    assert.equal(code(io.addDomain(d2)), 'ENOENT');
    assert.equal(io.domains.length, 1);
    assert.equal(io.iovaAlignment, MOCK_PAGE_SIZE);
    assert.equal(io.iovaRanges().length, 1);
    io.hooks = {
      fillDomain: () => undefined,
      unfillDomain: (_d, areas) => void events.push(`unfill ${areas.length}`),
    };
    const d3: IoptDomain = { pgsizeBitmap: P, apertureStart: 0n, apertureEnd: ULONG_MAX };
    ok(io.addDomain(d3));
    assert.equal(io.iovaAlignment, P);
    io.removeDomain(d3);
    assert.equal(io.iovaAlignment, MOCK_PAGE_SIZE);
    assert.deepEqual(events, ['fill 1', 'unfill 1']);
    io.checkInvariants();
  });

  test('fillArea failures abort the map and unfill the areas already filled', () => {
    const io = new IoPagetable();
    ok(io.addDomain({ pgsizeBitmap: 1n, apertureStart: 0n, apertureEnd: ULONG_MAX }));
    ok(map(io, 0n, P));
    ok(map(io, P, P));
    const src = ok(io.getPages(0n, 2n * P));
    const events: string[] = [];
    let n = 0;
    io.hooks = {
      fillArea: (a: IoptArea) => {
        events.push(`fill ${a.iova}`);
        return ++n === 2 ? kerr('ENOENT', 'mock map_pages failed') : undefined;
      },
      unfillArea: (a: IoptArea) => void events.push(`unfill ${a.iova}`),
    };
    assert.equal(code(io.mapPages(src, 2n * P, 16n * P, RW, FIXED)), 'ENOENT');
    assert.deepEqual(events, [`fill ${16n * P}`, `fill ${17n * P}`, `unfill ${16n * P}`]);
    assert.equal(io.areaCount, 2);
    assert.equal(io.areaAt(0n)?.pages.users, 1);
  });

  test('selftest ioas_align_change: HUGE_PAGES=0 raises the alignment to PAGE_SIZE', () => {
    const io = new IoPagetable();
    ok(map(io, MOCK_APERTURE_START, P));
    ok(io.disableLargePagesOption());
    assert.equal(io.iovaAlignment, P);
    assert.equal(code(map(io, MOCK_APERTURE_START + P, P, BUFFER + MOCK_PAGE_SIZE)), 'EINVAL');
    ok(io.disableLargePagesOption());
    io.enableLargePages();
    ok(map(io, MOCK_APERTURE_START + P, P, BUFFER + MOCK_PAGE_SIZE));
    assert.equal(code(io.disableLargePagesOption()), 'EADDRINUSE');
    assert.equal(io.disableLargePages, false);
    assert.equal(io.iovaAlignment, 1n);
  });

  test('HUGE_PAGES=0 with domains holding areas is EINVAL', () => {
    const io = new IoPagetable();
    ok(io.addDomain(mockDomain()));
    ok(io.disableLargePagesOption());
    io.enableLargePages();
    ok(map(io, MOCK_APERTURE_START, P));
    assert.equal(code(io.disableLargePagesOption()), 'EINVAL');
  });

  test('accesses raise the alignment; a misaligned area refuses them', () => {
    const io = new IoPagetable();
    const id = ok(io.addAccess(P));
    assert.equal(io.iovaAlignment, P);
    io.removeAccess(id);
    ok(map(io, 0x800n, 0x800n));
    assert.equal(code(io.addAccess(P)), 'EADDRINUSE');
    assert.equal(io.iovaAlignment, 1n);
    io.checkInvariants();
  });
});

describe('copy (A.7) and split', () => {
  test('selftest copy_area and copy_sweep: any contiguous sub-range of the source', () => {
    const src = new IoPagetable();
    ok(src.addDomain(mockDomain()));
    const size = 16n * P;
    const last = MOCK_APERTURE_START + size - 1n;
    ok(map(src, MOCK_APERTURE_START, size));
    const dst = new IoPagetable();
    ok(dst.addDomain(mockDomain()));
    for (let iova = MOCK_APERTURE_START - P; iova <= last; iova += 511n) {
      const pages = src.getPages(iova, MOCK_PAGE_SIZE);
      if (iova < MOCK_APERTURE_START || iova + MOCK_PAGE_SIZE - 1n > last) {
        assert.equal(code(pages), 'ENOENT', `0x${iova.toString(16)}`);
        continue;
      }
      const r = dst.mapPages(ok(pages), MOCK_PAGE_SIZE, MOCK_APERTURE_START, RW, FIXED);
      if (((iova - MOCK_APERTURE_START) % P) & (MOCK_PAGE_SIZE - 1n)) {
        // The sweep's odd steps give sub-page offsets the mock's 2 KiB alignment refuses.
        assert.equal(code(r), 'EINVAL');
        continue;
      }
      ok(r);
      ok(dst.unmapIova(MOCK_APERTURE_START, MOCK_PAGE_SIZE));
    }
    assert.equal(src.areaAt(MOCK_APERTURE_START)?.pages.users, 1);
  });

  test('a copy of several areas makes one area per piece, sharing the pages', () => {
    const io = new IoPagetable();
    const a = ok(map(io, 0n, 2n * P, BUFFER)).area;
    const b = ok(map(io, 2n * P, 2n * P, BUFFER + 0x10000n)).area;
    const list = ok(io.getPages(P, 2n * P));
    assert.equal(list.length, 2);
    assert.deepEqual(
      list.map((s) => [s.startByte, s.length]),
      [
        [P, P],
        [0n, P],
      ],
    );
    const other = new IoPagetable();
    const r = ok(other.mapPages(list, 2n * P, 0n, RW, AUTO));
    assert.equal(r.areas.length, 2);
    // The auto IOVA follows the first piece's source address (BUFFER + P).
    assert.equal(r.iova, P);
    assert.equal(a.pages.users, 2);
    assert.equal(b.pages.users, 2);
    ok(io.unmapAll());
    assert.equal(a.pages.users, 1);
    ok(other.unmapAll());
    assert.equal(a.pages.users, 0);
    assert.equal(b.pages.users, 0);
  });

  test('a gap, a pending area, length 0 or a wrapping range in the source', () => {
    const io = new IoPagetable();
    ok(map(io, 0n, P));
    ok(map(io, 2n * P, P));
    assert.equal(code(io.getPages(0n, 3n * P)), 'ENOENT');
    assert.equal(code(io.getPages(0n, 0n)), 'EINVAL');
    assert.equal(code(io.getPages(ULONG_MAX, 2n)), 'EOVERFLOW');
    assert.equal(io.areaAt(0n)?.pages.users, 1);
  });

  test('cutIova splits areas for VFIO type1 compat, sharing the pages', () => {
    const io = new IoPagetable();
    const a = ok(map(io, 0n, 4n * P)).area;
    ok(io.cutIova([P - 1n, 3n * P - 1n, 100n * P]));
    assert.deepEqual(spans(io), [
      [0n, P - 1n],
      [P, 3n * P - 1n],
      [3n * P, 4n * P - 1n],
    ]);
    assert.equal(a.pages.users, 3);
    assert.equal(ok(io.unmapIova(P, 2n * P)), 2n * P);
    ok(io.disableLargePagesOption());
    assert.equal(code(io.cutIova([0x7ffn])), 'EINVAL');
    io.checkInvariants();
    const io2 = new IoPagetable();
    ok(io2.addDomain({ pgsizeBitmap: 1n, apertureStart: 0n, apertureEnd: ULONG_MAX }));
    ok(map(io2, 0n, 2n * P));
    assert.equal(code(io2.cutIova([P - 1n])), 'EINVAL');
    ok(io2.unmapAll());
    ok(io2.disableLargePagesOption());
    ok(map(io2, 0n, 2n * P));
    ok(io2.cutIova([P - 1n]));
    const io3 = new IoPagetable();
    ok(map(io3, 0n, 2n * P)).area.numAccesses = 1;
    assert.equal(code(io3.cutIova([P - 1n])), 'EINVAL');
  });
});

describe('teardown and fault injection', () => {
  test('destroy unmaps everything and drops test reservations; leftovers are a bug', () => {
    const io = new IoPagetable();
    ok(map(io, 0n, P));
    ok(io.reserveIova(8n * P, 9n * P, null));
    ok(io.setAllowIova([{ start: 16n * P, last: 17n * P }]));
    io.destroy();
    assert.equal(io.areaCount, 0);
    const io2 = new IoPagetable();
    ok(io2.addDomain(mockDomain()));
    assert.throws(() => io2.destroy(), InvariantError);
  });

  test('fail_nth sweep: every allocation site fails cleanly and leaves the table as it was', () => {
    const run = (io: IoPagetable) => {
      const steps: (() => unknown)[] = [
        () => io.reserveIova(0n, P - 1n, null),
        () => io.setAllowIova([{ start: 16n * P, last: 64n * P }]),
        () => map(io, 0n, 2n * P, BUFFER, AUTO),
        () => map(io, 40n * P, 2n * P),
        () => io.getPages(40n * P, 2n * P),
        () => io.addDomain({ pgsizeBitmap: P, apertureStart: P, apertureEnd: ULONG_MAX - 1n }),
        () => io.addAccess(P),
      ];
      const results: string[] = [];
      for (const s of steps) {
        const before = JSON.stringify(snapshot(io));
        const r = s();
        if (isKernelError(r)) {
          // Only the injected failure is ENOMEM; a later step may fail for its consequences.
          if (!results.includes('ENOMEM')) assert.equal(r.code, 'ENOMEM');
          assert.equal(JSON.stringify(snapshot(io)), before, 'a failed step changes nothing');
        } else if (Array.isArray(r)) {
          io.freePagesList(r);
        }
        results.push(code(r));
        io.checkInvariants();
      }
      return results;
    };
    const base = run(new IoPagetable());
    assert.deepEqual(base, ['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok']);
    let n = 1;
    for (; ; n++) {
      const fi = new FaultInjector();
      const io = new IoPagetable({ faults: fi });
      fi.failNth(n);
      const r = run(io);
      if (fi.injected.length === 0) break;
      assert.equal(r.filter((x) => x === 'ENOMEM').length, 1, `n=${n}`);
    }
    assert.ok(n > 7, `every step reached an allocation site (${n})`);
  });
});

function lowest(x: bigint): bigint {
  return x & -x;
}

function snapshot(io: IoPagetable) {
  return {
    areas: [...io.areas()].map((a) => [a.iova, a.last, a.startByte, a.pages.users].map(String)),
    reserved: [...io.reservedRanges()].map((r) => [r.start, r.last].map(String)),
    allowed: [...io.allowedRanges()].map((r) => [r.start, r.last].map(String)),
    align: String(io.iovaAlignment),
    domains: io.domains.length,
  };
}
