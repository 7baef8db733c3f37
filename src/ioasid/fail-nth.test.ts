// fail_nth sweeps: for each workload, make the nth injectable allocation fail, for n = 1, 2, ...
// until the workload runs without reaching n. At every n:
//  - each call that fails does so because of the injection made during it (and each injection
//    makes its call fail), with the outcome its site dictates: -ENOMEM for a kzalloc,
//    -ENOSPC for the set-ID xarray, INVALID_IOASID from ioasid_alloc, IOMMU_PASID_INVALID from
//    the global IDA; never a throw, never a partial success (no ALLOC notification, no ID
//    handed out, no quota or capacity taken);
//  - after the workload's teardown (free/put/unregister everything it obtained) nothing leaks:
//    no live IDs, no orphans, the capacity all available, no live sets but those expected, no
//    global PASIDs, the custom allocators' backing stores empty;
//  - the invariants hold (debug mode checks them after every operation as well).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KernelError } from '../core/errno.ts';
import { Machine } from '../machine.ts';
import { IOMMU_PASID_INVALID } from './global-pasid.ts';
import { INVALID_IOASID, IOASID_SET_TYPE_MM, IOASID_SET_TYPE_NULL, IoasidSet } from './ioasid.ts';
import { PasidConsumer } from './pasid.ts';
import { type Ev, lowestFreeFns, opsOf, Recorder } from './test-util.ts';

type Outcome = 'ok' | 'INVALID' | string;

function outcome(r: unknown): Outcome {
  if (r instanceof KernelError) return r.code;
  if (r === INVALID_IOASID || r === IOMMU_PASID_INVALID) return 'INVALID';
  return 'ok';
}

/** What a failure at each site looks like to the caller of each kind of call. */
const SET_ALLOC = { ioasid_set: 'ENOMEM', ioasid_sets_xa: 'ENOSPC' };
const ID_ALLOC = { ioasid_data: 'INVALID', ioasid_xa_alloc: 'INVALID' };
// iommu_pasid_alloc sees only ioasid_alloc's INVALID_IOASID, which it reports as -ENOSPC.
const PASID_ALLOC = { ioasid_data: 'ENOSPC', ioasid_xa_alloc: 'ENOSPC' };
const REG_ALLOCATOR = { ioasid_allocator_data: 'ENOMEM' };
const REG_MM = { ioasid_nb_entry: 'ENOMEM' };
const GLOBAL = { global_pasid_ida: 'INVALID' };

/** One run of a workload at one n: calls go through `op`, which checks each against the injections. */
class Run {
  readonly m: Machine;
  readonly n: number;
  failures = 0;
  constructor(m: Machine, n: number) {
    this.m = m;
    this.n = n;
  }

  op<T>(what: string, sites: Record<string, string>, f: () => T): T {
    const before = this.m.faults.injected.length;
    let r: T;
    try {
      r = f();
    } catch (e) {
      assert.fail(`n=${this.n} ${what} threw ${String(e)}`);
    }
    const now = this.m.faults.injected.slice(before);
    const got = outcome(r);
    if (now.length === 0) {
      assert.equal(got, 'ok', `n=${this.n} ${what} failed (${got}) without an injection`);
    } else {
      assert.equal(now.length, 1);
      const site = now[0]!;
      const want = sites[site];
      assert.ok(want !== undefined, `n=${this.n} ${what}: injection at unexpected site ${site}`);
      assert.equal(got, want, `n=${this.n} ${what}: failure at ${site}`);
      this.failures++;
    }
    return r;
  }
}

interface Leaks {
  /** Sets the workload keeps on purpose (created before the sweep). */
  sets?: number;
}

function assertClean(m: Machine, n: number, keep: Leaks = {}): void {
  const c = m.ioasid;
  assert.equal(c.liveCount, 0, `n=${n}: live IDs left`);
  assert.deepEqual(c.orphans(), [], `n=${n}: orphans left`);
  assert.equal(c.liveSets().length, keep.sets ?? 0, `n=${n}: live sets`);
  const reserved = c.liveSets().reduce((a, s) => a + (s.reserves ? s.quota : 0), 0);
  assert.equal(c.capacityAvailable + reserved, c.ioasidGetCapacity(), `n=${n}: capacity`);
  assert.equal(m.globalPasid.allocated, 0, `n=${n}: global PASIDs left`);
  assert.equal(c.customAllocatorActive, false, `n=${n}: custom allocator left`);
  m.checkInvariants();
}

/**
 * Sweeps n upward; `work` runs the workload under injection and returns its teardown. Returns
 * the number of n values that injected a failure (the workload's injectable allocations).
 */
function sweep(
  work: (r: Run) => () => void,
  opts: { prepare?: (m: Machine) => void; keep?: Leaks; minSites?: number } = {},
): number {
  let n = 1;
  for (; ; n++) {
    assert.ok(n < 500, 'the sweep does not terminate');
    const m = new Machine({ debug: true });
    opts.prepare?.(m);
    const run = new Run(m, n);
    m.faults.failNth(n);
    const teardown = work(run);
    const injected = [...m.faults.injected];
    m.faults.disarm();
    assert.equal(run.failures, injected.length, `n=${n}: every injection surfaced as a failure`);
    teardown();
    assertClean(m, n, opts.keep);
    if (injected.length === 0) break;
  }
  const sites = n - 1;
  assert.ok(sites >= (opts.minSites ?? 1), `only ${sites} injectable sites reached`);
  return sites;
}

function isSet(x: unknown): x is IoasidSet {
  return x instanceof IoasidSet;
}

describe('fail_nth sweeps', () => {
  test('fail-nth: ioasid_set_alloc (NULL and MM sets)', () => {
    const sites = sweep((r) => {
      const c = r.m.ioasid;
      const a = r.op('set_alloc NULL', SET_ALLOC, () => c.ioasidSetAlloc(null, 10, IOASID_SET_TYPE_NULL));
      const b = r.op('set_alloc MM', SET_ALLOC, () => c.ioasidSetAlloc('mm', 20, IOASID_SET_TYPE_MM));
      const d = r.op('set_alloc NULL', SET_ALLOC, () => c.ioasidSetAlloc(null, 1, IOASID_SET_TYPE_NULL));
      const made = [a, b, d].filter(isSet);
      const quota = made.reduce((acc, s) => acc + s.quota, 0);
      assert.equal(c.capacityAvailable, c.ioasidGetCapacity() - quota, 'a failed set reserved nothing');
      assert.deepEqual(
        made.map((s) => s.id),
        made.map((_, i) => i),
        'a failed set took no set ID',
      );
      return () => {
        for (const s of made) c.ioasidSetPut(s);
      };
    });
    assert.equal(sites, 6);
  });

  test('fail-nth: ioasid_alloc in a set', () => {
    let set: IoasidSet | null = null;
    const log: Ev[] = [];
    sweep(
      (r) => {
        const c = r.m.ioasid;
        const s = set!;
        log.length = 0;
        const ids: number[] = [];
        for (let i = 0; i < 3; i++) {
          const id = r.op('ioasid_alloc', ID_ALLOC, () => c.ioasidAlloc(s, 1, 100, `p${i}`));
          if (id !== INVALID_IOASID) ids.push(id);
        }
        assert.deepEqual(
          ids,
          ids.map((_, i) => i + 1),
          'lowest free: no ID consumed by a failure',
        );
        assert.equal(s.nrIoasids, ids.length, 'no quota taken by a failure');
        assert.deepEqual(
          log.map((e) => e.id),
          ids,
          'ALLOC only for IDs handed out',
        );
        return () => {
          for (const id of ids) c.ioasidFree(s, id);
        };
      },
      {
        prepare: (m) => {
          const s = m.ioasid.ioasidSetAlloc(null, 3, IOASID_SET_TYPE_NULL);
          assert.ok(isSet(s));
          set = s;
          m.ioasid.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
        },
        keep: { sets: 1 },
        minSites: 6,
      },
    );
  });

  test('fail-nth: custom allocator registration (distinct and shared functions), then allocation', () => {
    sweep((r) => {
      const c = r.m.ioasid;
      const A = lowestFreeFns(10, 20);
      const B = lowestFreeFns(30, 40);
      const a1 = opsOf(A, 'a1');
      const a2 = opsOf(A, 'a2');
      const b = opsOf(B, 'b');
      const ok = [a1, a2, b].filter(
        (ops) => r.op('register_allocator', REG_ALLOCATOR, () => c.ioasidRegisterAllocator(ops)) === 0,
      );
      const s = r.op('set_alloc', SET_ALLOC, () => c.ioasidSetAlloc(null, 4, IOASID_SET_TYPE_NULL));
      const ids: number[] = [];
      if (isSet(s)) {
        for (let i = 0; i < 2; i++) {
          const id = r.op('ioasid_alloc (custom)', ID_ALLOC, () => c.ioasidAlloc(s, 0, 100));
          if (id !== INVALID_IOASID) ids.push(id);
        }
        const active = ok.length === 0 ? null : ok[0] === b ? B : A;
        if (active !== null)
          assert.deepEqual([...active.used].sort(), ids, 'the allocator holds exactly our IDs');
      }
      return () => {
        if (isSet(s)) {
          for (const id of ids) c.ioasidFree(s, id);
          c.ioasidSetPut(s);
        }
        for (const ops of ok) c.ioasidUnregisterAllocator(ops);
        assert.deepEqual([...A.used, ...B.used], [], 'backing stores empty');
      };
    });
  });

  test('fail-nth: mm notifier registration (pending and on an existing set)', () => {
    sweep((r) => {
      const c = r.m.ioasid;
      const log: Ev[] = [];
      const r1 = new Recorder('r1', 0, log);
      const r2 = new Recorder('r2', 0, log);
      const pending = r.op('register_notifier_mm (pending)', REG_MM, () =>
        c.ioasidRegisterNotifierMm('mm', r1),
      );
      const s = r.op('set_alloc MM', SET_ALLOC, () => c.ioasidSetAlloc('mm', 4, IOASID_SET_TYPE_MM));
      let onSet: unknown = null;
      const ids: number[] = [];
      if (isSet(s)) {
        onSet = r.op('register_notifier_mm (set exists)', REG_MM, () => c.ioasidRegisterNotifierMm('mm', r2));
        const id = r.op('ioasid_alloc', ID_ALLOC, () => c.ioasidAlloc(s, 1, 10));
        if (id !== INVALID_IOASID) ids.push(id);
        const want = [pending === 0 ? 'r1' : null, onSet === 0 ? 'r2' : null].filter((x) => x !== null);
        assert.deepEqual(
          log.map((e) => e.nb).sort(),
          ids.length === 0 ? [] : want.sort(),
          'exactly the registrations that succeeded deliver',
        );
      }
      return () => {
        if (isSet(s)) {
          for (const id of ids) c.ioasidFree(s, id);
          c.ioasidSetPut(s);
        }
        if (pending === 0) c.ioasidUnregisterNotifierMm('mm', r1);
        if (onSet === 0) c.ioasidUnregisterNotifierMm('mm', r2);
        // No registration is left behind: a new set for the token delivers to nobody.
        log.length = 0;
        const again = c.ioasidSetAlloc('mm', 1, IOASID_SET_TYPE_MM);
        assert.ok(isSet(again));
        c.ioasidFree(again, c.ioasidAlloc(again, 1, 10));
        assert.deepEqual(log, []);
        c.ioasidSetPut(again);
      };
    });
  });

  test('fail-nth: PASID consumer init and alloc', () => {
    sweep(
      (r) => {
        const api = r.m.pasid;
        const p = r.op('iommu_pasid_init', SET_ALLOC, () => api.iommuPasidInit({ min: 1, max: 50 }));
        const q = r.op('iommu_pasid_init', SET_ALLOC, () => api.iommuPasidInit());
        const got: [PasidConsumer, number][] = [];
        for (const c of [p, q]) {
          if (!(c instanceof PasidConsumer)) continue;
          for (let i = 0; i < 2; i++) {
            const id = r.op('iommu_pasid_alloc', PASID_ALLOC, () => api.iommuPasidAlloc(c, 0, 100));
            if (typeof id === 'number') got.push([c, id]);
          }
        }
        assert.deepEqual(
          got.map(([, id]) => id),
          got.map((_, i) => i + 1),
          'no PASID consumed by a failure',
        );
        return () => {
          const first = got[0];
          if (first !== undefined) api.iommuPasidFree(first[0], first[1]); // one freed explicitly, the rest by exit
          for (const c of [p, q]) if (c instanceof PasidConsumer) api.iommuPasidExit(c);
        };
      },
      { minSites: 6 },
    );
  });

  test('fail-nth: global PASID allocation', () => {
    const sites = sweep((r) => {
      const g = r.m.globalPasid;
      const dev = { maxPasids: 16 };
      const got: number[] = [];
      for (let i = 0; i < 4; i++) {
        const p = r.op('iommu_alloc_global_pasid', GLOBAL, () => g.iommuAllocGlobalPasid(dev));
        if (p !== IOMMU_PASID_INVALID) got.push(p);
      }
      assert.deepEqual(
        got,
        got.map((_, i) => i + 1),
      );
      return () => {
        for (const p of got) g.iommuFreeGlobalPasid(p);
      };
    });
    assert.equal(sites, 4);
  });

  test('fail-nth: a multi-step workload across the whole core', () => {
    sweep(
      (r) => {
        const c = r.m.ioasid;
        const api = r.m.pasid;
        const undo: (() => void)[] = [];
        const log: Ev[] = [];
        const fns = lowestFreeFns(100, 199);
        const ops = opsOf(fns);
        if (r.op('register_allocator', REG_ALLOCATOR, () => c.ioasidRegisterAllocator(ops)) === 0)
          undo.push(() => c.ioasidUnregisterAllocator(ops));
        const g = new Recorder('g', 1, log);
        c.ioasidRegisterNotifier(null, g);
        undo.push(() => c.ioasidUnregisterNotifier(null, g));
        const mmRec = new Recorder('mm', 0, log);
        const mmOk =
          r.op('register_notifier_mm', REG_MM, () => c.ioasidRegisterNotifierMm('vm', mmRec)) === 0;
        if (mmOk) undo.push(() => c.ioasidUnregisterNotifierMm('vm', mmRec));
        const vm = r.op('set_alloc MM', SET_ALLOC, () => c.ioasidSetAlloc('vm', 8, IOASID_SET_TYPE_MM));
        const other = r.op('set_alloc NULL', SET_ALLOC, () =>
          c.ioasidSetAlloc(null, 8, IOASID_SET_TYPE_NULL),
        );
        const vmIds: number[] = [];
        for (const s of [vm, other]) {
          if (!isSet(s)) continue;
          const ids: number[] = s === vm ? vmIds : [];
          for (let i = 0; i < 3; i++) {
            const id: number = r.op('ioasid_alloc', ID_ALLOC, () => c.ioasidAlloc(s, 0, 1000, i));
            if (id === INVALID_IOASID) continue;
            assert.equal(c.ioasidAttachSpid(id, 1000 + ids.length), 0);
            ids.push(id);
          }
          // A second holder on the first ID; the set is destroyed with it outstanding.
          const held = ids[0];
          if (held !== undefined) {
            assert.equal(c.ioasidFindBySpid(s, 1000), held);
          }
          if (ids[1] !== undefined) c.ioasidFree(s, ids[1]);
          undo.push(() => {
            c.ioasidSetPut(s);
            if (held !== undefined) assert.equal(c.ioasidPut(s, held), true);
          });
        }
        const p = r.op('iommu_pasid_init', SET_ALLOC, () => api.iommuPasidInit({ min: 1, max: 500 }));
        if (p instanceof PasidConsumer) {
          for (let i = 0; i < 2; i++)
            r.op('iommu_pasid_alloc', PASID_ALLOC, () => api.iommuPasidAlloc(p, 0, 1000));
          undo.push(() => api.iommuPasidExit(p));
        }
        const gp = r.op('iommu_alloc_global_pasid', GLOBAL, () =>
          r.m.globalPasid.iommuAllocGlobalPasid({ maxPasids: 8 }),
        );
        if (gp !== IOMMU_PASID_INVALID) undo.push(() => r.m.globalPasid.iommuFreeGlobalPasid(gp));
        // ALLOC (set chain: the mm recorder on the vm set) exactly for the IDs handed out.
        assert.deepEqual(
          log.filter((e) => e.event === 'IOASID_NOTIFY_ALLOC').map((e) => e.id),
          mmOk ? vmIds : [],
        );
        return () => {
          for (const f of undo.reverse()) f();
          assert.deepEqual([...fns.used], [], 'every ID went back to the custom allocator');
        };
      },
      { minSites: 15 },
    );
  });
});
