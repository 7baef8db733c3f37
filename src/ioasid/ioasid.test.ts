// The IOASID core against ../shared/spec/PROFILE.md P1-P10 and research/ioasid-core.md
// (A.1-A.4, A.7, A.10, B, C, D, F), with the project's recorded decisions. Every test runs a
// debug-mode machine (checkInvariants after each outermost operation) and checks the
// invariants again at the end.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ERRNO, KernelError } from '../core/errno.ts';
import { InvariantError } from '../core/invariants.ts';
import { Machine } from '../machine.ts';
import { DEFAULT_VTD, type MachineConfig } from '../machine-config.ts';
import { IOMMU_PASID_INVALID } from './global-pasid.ts';
import {
  INVALID_IOASID,
  IOASID_SET_TYPE_MM,
  IOASID_SET_TYPE_NR,
  IOASID_SET_TYPE_NULL,
  IOASID_SET_TYPE_TOKEN,
  IOASID_STATE_ACTIVE,
  IOASID_STATE_FREE_PENDING,
  type IoasidSet,
  PCI_PASID_MAX,
} from './ioasid.ts';
import {
  IOASID_PRIO_CPU,
  IOASID_PRIO_DEVICE,
  IOASID_PRIO_IOMMU,
  IOASID_PRIO_LAST,
  NOTIFY_BAD,
  NOTIFY_DONE,
  NOTIFY_OK,
  NOTIFY_STOP,
  NOTIFY_STOP_MASK,
} from './notifier.ts';
import { PasidConsumer } from './pasid.ts';
import {
  assertErr,
  assertSet,
  brief,
  type Ev,
  fixture,
  lowestFreeFns,
  opsOf,
  Recorder,
} from './test-util.ts';

function nullSet(m: Machine, quota: number): IoasidSet {
  const s = m.ioasid.ioasidSetAlloc(null, quota, IOASID_SET_TYPE_NULL);
  assertSet(s);
  return s;
}

function mmSet(m: Machine, token: unknown, quota: number): IoasidSet {
  const s = m.ioasid.ioasidSetAlloc(token, quota, IOASID_SET_TYPE_MM);
  assertSet(s);
  return s;
}

// ------------------------------------------------------------------------------------ P1

describe('P1: ID space and ioasid_alloc', () => {
  test('P1: constants: INVALID_IOASID is 0xFFFFFFFF, the default capacity is 2^20', () => {
    const { m } = fixture();
    assert.equal(INVALID_IOASID, 0xffffffff);
    assert.equal(PCI_PASID_MAX, 0x100000);
    assert.equal(m.ioasid.ioasidGetCapacity(), 0x100000);
    assert.equal(m.ioasid.capacityAvailable, 0x100000);
  });

  test('P1: lowest free ID in [min, max] inclusive, 0 included, holes refilled lowest first', () => {
    const { m } = fixture();
    const s = nullSet(m, 100);
    const c = m.ioasid;
    assert.equal(c.ioasidAlloc(s, 0, 10), 0);
    assert.equal(c.ioasidAlloc(s, 0, 10), 1);
    assert.equal(c.ioasidAlloc(s, 5, 10), 5);
    assert.equal(c.ioasidAlloc(s, 0, 10), 2);
    assert.equal(c.ioasidAlloc(s, 7, 7), 7, 'min == max is a one-ID range');
    assert.equal(c.ioasidAlloc(s, 7, 7), INVALID_IOASID);
    c.ioasidFree(s, 1);
    assert.equal(c.ioasidAlloc(s, 0, 10), 1, 'the freed hole is the lowest free again');
    assert.equal(c.ioasidAlloc(s, 9, 10), 9);
    assert.equal(c.ioasidAlloc(s, 9, 10), 10, 'max is inclusive');
    assert.equal(c.ioasidAlloc(s, 9, 10), INVALID_IOASID, 'range exhausted');
    m.checkInvariants();
  });

  test('P1: failures return INVALID_IOASID and change nothing (no partial success)', () => {
    const { m } = fixture();
    const s = nullSet(m, 2);
    const c = m.ioasid;
    assert.equal(c.ioasidAlloc(s, 3, 3), 3);
    const before = { live: c.liveCount, nr: s.nrIoasids };
    assert.equal(c.ioasidAlloc(s, 3, 3), INVALID_IOASID, 'range full');
    assert.equal(c.ioasidAlloc(s, 10, 5), INVALID_IOASID, 'min > max');
    assert.deepEqual({ live: c.liveCount, nr: s.nrIoasids }, before);
    assert.equal(c.ioasidAlloc(s, 4, 4), 4);
    assert.equal(c.ioasidAlloc(s, 5, 5), INVALID_IOASID, 'quota');
    assert.equal(s.nrIoasids, 2);
    assert.equal(c.liveCount, 2);
    m.checkInvariants();
  });

  test('P1: max 0xFFFFFFFF is clipped to 0xFFFFFFFE, so INVALID_IOASID is never an ID', () => {
    const { m } = fixture();
    const s = nullSet(m, 10);
    const c = m.ioasid;
    assert.equal(c.ioasidAlloc(s, 0xfffffffd, 0xffffffff), 0xfffffffd);
    assert.equal(c.ioasidAlloc(s, 0xfffffffd, 0xffffffff), 0xfffffffe);
    assert.equal(c.ioasidAlloc(s, 0xfffffffd, 0xffffffff), INVALID_IOASID);
    assert.equal(c.ioasidAlloc(s, 0xffffffff, 0xffffffff), INVALID_IOASID);
    assert.equal(s.nrIoasids, 2);
    assert.equal(c.inspect(0xffffffff), undefined);
    m.checkInvariants();
  });

  test('P1: capacity is a reservation budget, not a bound on ID values', () => {
    const { m } = fixture();
    const c = m.ioasid;
    c.ioasidInstallCapacity(100);
    assert.equal(c.ioasidGetCapacity(), 100);
    const s = nullSet(m, 10);
    assert.equal(c.ioasidAlloc(s, 5000, 6000), 5000);
    assert.equal(c.ioasidAlloc(s, PCI_PASID_MAX + 7, 0xfffffffe), PCI_PASID_MAX + 7);
    m.checkInvariants();
  });

  test('P1: lowest-free holds across the ID table chunk boundary (2^15) and in sparse high IDs', () => {
    const { m } = fixture();
    const s = nullSet(m, 10);
    const c = m.ioasid;
    assert.equal(c.ioasidAlloc(s, 32767, 32768), 32767);
    assert.equal(c.ioasidAlloc(s, 32767, 32768), 32768);
    assert.equal(c.ioasidAlloc(s, 32767, 32768), INVALID_IOASID);
    assert.equal(c.ioasidAlloc(s, 32766, 40000), 32766);
    assert.equal(c.ioasidAlloc(s, 32766, 40000), 32769);
    assert.equal(c.ioasidAlloc(s, 0x7fff_ffff, 0x8000_0001), 0x7fff_ffff);
    assert.equal(c.ioasidAlloc(s, 0x7fff_ffff, 0x8000_0001), 0x8000_0000);
    c.ioasidFree(s, 32767);
    assert.equal(c.ioasidAlloc(s, 0, 0xfffffffe), 0);
    assert.equal(c.ioasidAlloc(s, 32000, 0xfffffffe), 32000);
    assert.equal(c.ioasidAlloc(s, 32767, 0xfffffffe), 32767);
    m.checkInvariants();
  });

  test('P1: filling a whole 2^15 chunk moves on to the next one', () => {
    const { m } = fixture({ debug: false });
    const s = nullSet(m, 40000);
    const c = m.ioasid;
    for (let i = 0; i < 32768; i++) assert.equal(c.ioasidAlloc(s, 0, 0xfffffffe), i);
    assert.equal(c.ioasidAlloc(s, 0, 0xfffffffe), 32768);
    assert.equal(c.ioasidAlloc(s, 100, 32767), INVALID_IOASID, 'the full chunk has no room');
    c.ioasidFree(s, 20000);
    assert.equal(c.ioasidAlloc(s, 100, 0xfffffffe), 20000);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P2

describe('P2: no new references once the free has started', () => {
  test('P2: FREE_PENDING: ioasid_get -> EBUSY, ioasid_find -> ENOENT, find_by_spid -> INVALID', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const id = c.ioasidAlloc(s, 1, 10, 'priv');
    assert.equal(c.ioasidAttachSpid(id, 77), 0);
    assert.equal(c.ioasidGet(s, id), 0, 'a second holder');
    c.ioasidFree(s, id);
    assert.equal(c.inspect(id)?.state, IOASID_STATE_FREE_PENDING);
    assert.equal(c.inspect(id)?.users, 1);
    assertErr(c.ioasidGet(s, id), 'EBUSY');
    assertErr(c.ioasidGet(null, id), 'EBUSY');
    assertErr(c.ioasidFind(s, id), 'ENOENT');
    assertErr(c.ioasidFind(null, id), 'ENOENT');
    assert.equal(c.ioasidFindBySpid(s, 77), INVALID_IOASID);
    assert.equal(c.inspect(id)?.users, 1, 'none of the refused lookups took a reference');
    // The existing holder keeps working: private data survives, put reclaims.
    assert.equal(c.inspect(id)?.priv, 'priv');
    assert.equal(s.nrIoasids, 1, 'FREE_PENDING still counts against the quota');
    assert.equal(c.ioasidPut(s, id), true);
    assert.equal(c.inspect(id), undefined);
    assert.equal(s.nrIoasids, 0);
    assert.equal(c.ioasidAlloc(s, 1, 10), id, 'the ID is reusable once reclaimed');
    m.checkInvariants();
  });

  test('P2: before the free, get/find/find_by_spid take references as usual', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const id = c.ioasidAlloc(s, 1, 10, { x: 1 });
    assert.deepEqual(c.ioasidFind(s, id), { x: 1 });
    assert.deepEqual(c.ioasidFind(null, id), { x: 1 });
    assert.equal(c.ioasidGet(s, id), 0);
    assert.equal(c.ioasidAttachSpid(id, 5), 0);
    assert.equal(c.ioasidFindBySpid(s, 5), id);
    assert.equal(c.inspect(id)?.users, 3);
    c.ioasidFree(s, id);
    assert.equal(c.ioasidPut(s, id), false);
    assert.equal(c.ioasidPut(s, id), true);
    assert.equal(c.liveCount, 0);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P3

describe('P3: ioasid_free ownership', () => {
  test('P3: ioasid_free(NULL, id) and ioasid_free(other_set, id): no effect, a warning', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const a = nullSet(m, 4);
    const b = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, log));
    c.ioasidRegisterNotifier(a, new Recorder('a', 0, log));
    const id = c.ioasidAlloc(a, 1, 10, 'mine');
    log.length = 0;
    warnings();
    c.ioasidFree(null, id);
    assert.equal(warnings().length, 1);
    c.ioasidFree(b, id);
    assert.equal(warnings().length, 1);
    assert.deepEqual(log, [], 'no FREE notification');
    assert.equal(c.inspect(id)?.state, IOASID_STATE_ACTIVE);
    assert.equal(c.inspect(id)?.users, 1);
    assert.equal(c.ioasidFind(a, id), 'mine');
    assert.equal(a.nrIoasids, 1);
    assert.equal(b.nrIoasids, 0);
    c.ioasidFree(a, id);
    assert.deepEqual(brief(log), ['g:FREE:1', 'a:FREE:1']);
    assert.equal(c.liveCount, 0);
    m.checkInvariants();
  });

  test('P3: without a tracer the refusal is still silent and harmless', () => {
    const m = new Machine({ debug: true });
    const c = m.ioasid;
    const a = nullSet(m, 4);
    const id = c.ioasidAlloc(a, 1, 10);
    c.ioasidFree(null, id);
    assert.equal(c.inspect(id)?.state, IOASID_STATE_ACTIVE);
    m.checkInvariants();
  });

  test('P3: a stale handle whose set slot was reused owns nothing (get/put/find/free)', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const old = nullSet(m, 4);
    c.ioasidSetPut(old);
    const fresh = nullSet(m, 4);
    assert.equal(fresh.id, old.id, 'the slot was reused');
    const id = c.ioasidAlloc(fresh, 1, 10, 'fresh');
    warnings();
    assertErr(c.ioasidGet(old, id), 'EACCES');
    assertErr(c.ioasidFind(old, id), 'EACCES');
    assert.equal(c.ioasidPut(old, id), false);
    c.ioasidFree(old, id);
    assert.ok(warnings().length >= 2);
    assert.equal(c.inspect(id)?.users, 1);
    assert.equal(c.inspect(id)?.state, IOASID_STATE_ACTIVE);
    m.checkInvariants();
  });

  test('P3: a handle from another machine owns nothing here', () => {
    const { m } = fixture();
    const other = new Machine({ debug: true });
    const foreign = nullSet(other, 4);
    const mine = nullSet(m, 4);
    assert.equal(foreign.id, mine.id);
    const c = m.ioasid;
    const id = c.ioasidAlloc(mine, 1, 10);
    assert.equal(c.ioasidAlloc(foreign, 1, 10), INVALID_IOASID);
    assertErr(c.ioasidGet(foreign, id), 'EACCES');
    assert.equal(c.ioasidPut(foreign, id), false);
    c.ioasidFree(foreign, id);
    assert.equal(c.inspect(id)?.state, IOASID_STATE_ACTIVE);
    assert.equal(c.inspect(id)?.users, 1);
    m.checkInvariants();
    other.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P4

describe('P4: notifier priorities and the stop bit', () => {
  test('P4: the priority values are the v3 code values', () => {
    assert.equal(IOASID_PRIO_LAST, 0);
    assert.equal(IOASID_PRIO_DEVICE, 1);
    assert.equal(IOASID_PRIO_IOMMU, 2);
    assert.equal(IOASID_PRIO_CPU, 3);
    assert.equal(NOTIFY_STOP_MASK, 0x8000);
    assert.equal(NOTIFY_STOP, 0x8001);
    assert.equal(NOTIFY_BAD, 0x8002);
  });

  test('P4: higher priority first, equal priority in registration order', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    const order: [string, number][] = [
      ['a', IOASID_PRIO_LAST],
      ['b', IOASID_PRIO_CPU],
      ['c', IOASID_PRIO_DEVICE],
      ['d', IOASID_PRIO_IOMMU],
      ['e', IOASID_PRIO_DEVICE],
      ['f', IOASID_PRIO_CPU],
      ['g', IOASID_PRIO_LAST],
    ];
    for (const [n, p] of order) {
      assert.equal(c.ioasidRegisterNotifier(null, new Recorder(`G${n}`, p, log)), 0);
      assert.equal(c.ioasidRegisterNotifier(s, new Recorder(`S${n}`, p, log)), 0);
    }
    const id = c.ioasidAlloc(s, 1, 10);
    assert.deepEqual(
      log.map((e) => e.nb),
      ['Sb', 'Sf', 'Sd', 'Sc', 'Se', 'Sa', 'Sg'],
      'ALLOC: set chain only, by priority',
    );
    log.length = 0;
    c.ioasidFree(s, id);
    assert.deepEqual(
      log.map((e) => e.nb),
      ['Gb', 'Gf', 'Gd', 'Gc', 'Ge', 'Ga', 'Gg', 'Sb', 'Sf', 'Sd', 'Sc', 'Se', 'Sa', 'Sg'],
    );
    m.checkInvariants();
  });

  test('P4: a return value with bit 0x8000 stops that chain only', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(null, new Recorder('g1', IOASID_PRIO_CPU, log, NOTIFY_OK));
    c.ioasidRegisterNotifier(null, new Recorder('g2', IOASID_PRIO_IOMMU, log, NOTIFY_STOP));
    c.ioasidRegisterNotifier(null, new Recorder('g3', IOASID_PRIO_LAST, log, NOTIFY_OK));
    c.ioasidRegisterNotifier(s, new Recorder('s1', IOASID_PRIO_CPU, log, NOTIFY_DONE));
    c.ioasidRegisterNotifier(s, new Recorder('s2', IOASID_PRIO_DEVICE, log, NOTIFY_BAD));
    c.ioasidRegisterNotifier(s, new Recorder('s3', IOASID_PRIO_DEVICE, log, NOTIFY_OK));
    const id = c.ioasidAlloc(s, 1, 10);
    c.ioasidFree(s, id);
    assert.deepEqual(brief(log), [
      's1:ALLOC:1',
      's2:ALLOC:1',
      'g1:FREE:1',
      'g2:FREE:1',
      's1:FREE:1',
      's2:FREE:1',
    ]);
    assert.equal(c.liveCount, 0, 'the core ignores notifier return values');
    m.checkInvariants();
  });

  test('P4: a stop mask with other bits (0x8000 | x) also stops', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(s, new Recorder('s1', 2, log, 0x4001));
    c.ioasidRegisterNotifier(s, new Recorder('s2', 1, log, 0x8000 | 0x40));
    c.ioasidRegisterNotifier(s, new Recorder('s3', 0, log));
    c.ioasidAlloc(s, 1, 10);
    assert.deepEqual(brief(log), ['s1:ALLOC:1', 's2:ALLOC:1'], '0x4001 continues, 0x8040 stops');
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P5

describe('P5: SPID bind/unbind payloads', () => {
  test('P5: UNBIND carries the SPID being detached; BIND the new one; both on the set chain only', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, log));
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    const id = c.ioasidAlloc(s, 1, 10, 'p');
    log.length = 0;
    assert.equal(c.ioasidAttachSpid(id, 42), 0);
    c.ioasidDetachSpid(id);
    assert.deepEqual(
      log.map((e) => [e.nb, e.event, e.id, e.spid, e.pdata]),
      [
        ['s', 'IOASID_NOTIFY_BIND', id, 42, 'p'],
        ['s', 'IOASID_NOTIFY_UNBIND', id, 42, 'p'],
      ],
    );
    assert.equal(log[1]?.set, s);
    assert.equal(c.inspect(id)?.spid, INVALID_IOASID, 'cleared after the detach');
    assert.equal(c.ioasidFindBySpid(s, 42), INVALID_IOASID);
    m.checkInvariants();
  });

  test('P5/P8: a second detach emits nothing (level-triggered) and warns', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    const id = c.ioasidAlloc(s, 1, 10);
    c.ioasidAttachSpid(id, 0);
    c.ioasidDetachSpid(id);
    warnings();
    log.length = 0;
    c.ioasidDetachSpid(id);
    assert.deepEqual(log, []);
    assert.equal(warnings().length, 1);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P6

describe('P6: ioasid_set_alloc quota checks', () => {
  test('P6: quota 0 -> EINVAL; above the remaining capacity -> ENOSPC; exactly the rest is fine', () => {
    const { m } = fixture();
    const c = m.ioasid;
    assertErr(c.ioasidSetAlloc(null, 0, IOASID_SET_TYPE_NULL), 'EINVAL');
    assertErr(c.ioasidSetAlloc(null, PCI_PASID_MAX + 1, IOASID_SET_TYPE_NULL), 'ENOSPC');
    const a = nullSet(m, 1000);
    assert.equal(c.capacityAvailable, PCI_PASID_MAX - 1000);
    assertErr(c.ioasidSetAlloc(null, PCI_PASID_MAX - 999, IOASID_SET_TYPE_NULL), 'ENOSPC');
    const b = nullSet(m, PCI_PASID_MAX - 1000);
    assert.equal(c.capacityAvailable, 0);
    assertErr(c.ioasidSetAlloc(null, 1, IOASID_SET_TYPE_NULL), 'ENOSPC');
    assert.equal(c.liveSets().length, 2);
    c.ioasidSetPut(a);
    c.ioasidSetPut(b);
    assert.equal(c.capacityAvailable, PCI_PASID_MAX);
    m.checkInvariants();
  });

  test('P6: the errors are KernelError values (never thrown) with Linux errno numbers', () => {
    const { m } = fixture();
    const e = m.ioasid.ioasidSetAlloc(null, 0, IOASID_SET_TYPE_NULL);
    assert.ok(e instanceof KernelError);
    assert.equal(e.code, 'EINVAL');
    assert.equal(e.errno, 22);
    assert.equal(e.ret, -22);
    const f = m.ioasid.ioasidSetAlloc(null, 0x200000, IOASID_SET_TYPE_NULL);
    assert.ok(f instanceof KernelError);
    assert.equal(f.errno, ERRNO.ENOSPC);
  });

  test('P6: check order: type, then quota 0, then capacity, then the type rules', () => {
    const { m } = fixture();
    const c = m.ioasid;
    assertErr(c.ioasidSetAlloc(null, 0, IOASID_SET_TYPE_NR), 'EINVAL');
    assertErr(c.ioasidSetAlloc(null, PCI_PASID_MAX + 1, 7), 'EINVAL');
    assertErr(c.ioasidSetAlloc('tok', 0, IOASID_SET_TYPE_NULL), 'EINVAL');
    // Capacity is checked before the type switch (research A.4.2 step 3 before 4).
    assertErr(c.ioasidSetAlloc('tok', PCI_PASID_MAX + 1, IOASID_SET_TYPE_NULL), 'ENOSPC');
    assertErr(c.ioasidSetAlloc(null, PCI_PASID_MAX + 1, IOASID_SET_TYPE_MM), 'ENOSPC');
    assertErr(c.ioasidSetAlloc(null, 1, IOASID_SET_TYPE_TOKEN), 'EINVAL');
    assertErr(c.ioasidSetAlloc(null, 1, -1), 'EINVAL');
    assertErr(c.ioasidSetAlloc('tok', 1, IOASID_SET_TYPE_NULL), 'EINVAL');
    assertErr(c.ioasidSetAlloc(null, 1, IOASID_SET_TYPE_MM), 'EINVAL');
    assertErr(c.ioasidSetAlloc(undefined, 1, IOASID_SET_TYPE_MM), 'EINVAL');
    const mm = mmSet(m, 'mm1', 1);
    assertErr(c.ioasidSetAlloc('mm1', 1, IOASID_SET_TYPE_MM), 'EEXIST');
    assert.equal(mm.token, 'mm1');
    assert.equal(c.capacityAvailable, PCI_PASID_MAX - 1, 'no failed call reserved anything');
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P7

describe('P7: set IDs are independent of quota', () => {
  test('P7: a set can take all the remaining capacity whatever set IDs exist', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const a = nullSet(m, 1);
    assert.equal(a.id, 0);
    // Raw v3 limits the set ID to capacity_avail - quota = 0, which set 0 holds: -ENOSPC there.
    const b = nullSet(m, PCI_PASID_MAX - 1);
    assert.equal(b.id, 1);
    assert.equal(c.capacityAvailable, 0);
    assertErr(c.ioasidSetAlloc(null, 1, IOASID_SET_TYPE_NULL), 'ENOSPC');
    c.ioasidSetPut(a);
    const a2 = nullSet(m, 1);
    assert.equal(a2.id, 0, 'the lowest free set ID is reused, with the last unit of capacity');
    assert.equal(c.ioasidAdjustSet(b, 10), 0);
    const d = nullSet(m, PCI_PASID_MAX - 11);
    assert.equal(d.id, 2);
    assert.equal(c.capacityAvailable, 0);
    m.checkInvariants();
  });

  test('P7: set IDs are the lowest free slot', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const sets = [0, 1, 2, 3].map(() => nullSet(m, 1));
    assert.deepEqual(
      sets.map((s) => s.id),
      [0, 1, 2, 3],
    );
    c.ioasidSetPut(sets[1]!);
    c.ioasidSetPut(sets[2]!);
    assert.equal(nullSet(m, 1).id, 1);
    assert.equal(nullSet(m, 1).id, 2);
    assert.equal(nullSet(m, 1).id, 4);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P8

describe('P8: notification timing and level', () => {
  test('P8: FREE with the only reference: emitted before the drop, then the ID is reclaimed', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    const seen: unknown[] = [];
    const g = new Recorder('g', 0, log);
    g.on = (_ev, args) => {
      seen.push(c.inspect(args.id)?.state, c.liveCount, s.nrIoasids);
    };
    c.ioasidRegisterNotifier(null, g);
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    const id = c.ioasidAlloc(s, 3, 10, 'data');
    c.ioasidFree(s, id);
    assert.deepEqual(brief(log), ['s:ALLOC:3', 'g:FREE:3', 's:FREE:3'], 'global first, then set');
    assert.deepEqual(seen, [IOASID_STATE_FREE_PENDING, 1, 1], 'the record still exists during FREE');
    assert.equal(log[1]?.pdata, 'data');
    assert.equal(log[1]?.set, s);
    assert.equal(log[1]?.spid, INVALID_IOASID);
    assert.equal(c.inspect(id), undefined);
    assert.equal(s.nrIoasids, 0);
    m.checkInvariants();
  });

  test('P8: ALLOC goes to the set chain only, after nr_ioasids is incremented', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const other = nullSet(m, 4);
    const log: Ev[] = [];
    const rec = new Recorder('s', 0, log);
    const nr: number[] = [];
    rec.on = () => {
      nr.push(s.nrIoasids);
    };
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, log));
    c.ioasidRegisterNotifier(s, rec);
    c.ioasidRegisterNotifier(other, new Recorder('o', 0, log));
    c.ioasidAlloc(s, 1, 10, 7);
    assert.deepEqual(brief(log), ['s:ALLOC:1']);
    assert.equal(log[0]?.pdata, 7);
    assert.deepEqual(nr, [1]);
    m.checkInvariants();
  });

  test('P8: each transition notifies once: a second free emits nothing; put never emits FREE', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, log));
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    const a = c.ioasidAlloc(s, 1, 10);
    const b = c.ioasidAlloc(s, 1, 10);
    c.ioasidGet(s, a);
    log.length = 0;
    c.ioasidFree(s, a);
    c.ioasidFree(s, a);
    c.ioasidFree(s, a);
    assert.deepEqual(brief(log), ['g:FREE:1', 's:FREE:1']);
    assert.equal(c.inspect(a)?.users, 1, 'only one reference dropped by all those frees');
    assert.equal(c.ioasidPut(s, a), true);
    // b: reclaimed by put alone (no free called): no FREE at all.
    assert.equal(c.ioasidPut(s, b), true);
    assert.deepEqual(brief(log), ['g:FREE:1', 's:FREE:1']);
    assert.equal(c.liveCount, 0);
    m.checkInvariants();
  });

  test('P8: trace events name the notification and the chains it went to', () => {
    const { m, tb } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, []));
    const id = c.ioasidAlloc(s, 1, 10);
    c.ioasidFree(s, id);
    const notes = tb.drain().filter((e) => e.kind === 'notify');
    assert.deepEqual(
      notes.map((e) => [e.what, e.id, e.chains]),
      [
        ['IOASID_NOTIFY_ALLOC', 1, []],
        ['IOASID_NOTIFY_FREE', 1, ['global']],
      ],
    );
  });
});

// ------------------------------------------------------------------------------------ P9
// (the full set of re-entrancy cases is in reentrancy.test.ts)

describe('P9: callbacks may re-enter the core', () => {
  test('P9: a FREE callback drops the last reference of the notified ID: reclaimed once, no crash', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    const g = new Recorder('g', 0, log);
    g.on = (_ev, args) => {
      c.ioasidPut(null, args.id);
    };
    c.ioasidRegisterNotifier(null, g);
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    const id = c.ioasidAlloc(s, 1, 10);
    c.ioasidFree(s, id);
    assert.deepEqual(brief(log), ['s:ALLOC:1', 'g:FREE:1', 's:FREE:1']);
    assert.equal(c.liveCount, 0);
    assert.equal(s.nrIoasids, 0);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ P10

describe('P10: custom allocators', () => {
  test('P10: first registration with IDs in the default allocator -> EAGAIN, nothing registered', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const id = c.ioasidAlloc(s, 1, 10);
    const fns = lowestFreeFns(100, 200);
    assertErr(c.ioasidRegisterAllocator(opsOf(fns)), 'EAGAIN');
    assert.equal(c.customAllocatorActive, false);
    c.ioasidFree(s, id);
    assert.equal(c.ioasidRegisterAllocator(opsOf(fns)), 0);
    assert.equal(c.customAllocatorActive, true);
    assert.equal(c.ioasidAlloc(s, 1, 150), 100, 'allocations go through the custom allocator');
    assert.deepEqual(fns.calls, ['alloc(1,150)']);
    m.checkInvariants();
  });

  test('P10: the same ops twice -> EEXIST', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const ops = opsOf(lowestFreeFns(1, 10));
    assert.equal(c.ioasidRegisterAllocator(ops), 0);
    assertErr(c.ioasidRegisterAllocator(ops), 'EEXIST');
    const other = opsOf(lowestFreeFns(1, 10));
    assert.equal(c.ioasidRegisterAllocator(other), 0);
    assertErr(c.ioasidRegisterAllocator(other), 'EEXIST');
    m.checkInvariants();
  });

  test('P10: ops sharing functions share one entry and one ID space; outstanding IDs preserved', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 10);
    const fns = lowestFreeFns(1, 100);
    const o1 = opsOf(fns, 'pd1');
    const o2 = opsOf(fns, 'pd2');
    assert.equal(c.ioasidRegisterAllocator(o1), 0);
    assert.equal(c.ioasidRegisterAllocator(o2), 0, 'same functions: joins the entry');
    const a = c.ioasidAlloc(s, 1, 100);
    c.ioasidUnregisterAllocator(o1);
    assert.equal(c.customAllocatorActive, true, 'o2 still provides the functions');
    assert.deepEqual(c.orphans(), []);
    assert.equal(c.inspect(a)?.state, IOASID_STATE_ACTIVE, 'outstanding IDs preserved');
    assert.equal(c.ioasidAlloc(s, 1, 100), 2, 'the same ID space');
    m.checkInvariants();
  });

  test("P10: the entry's first ops supplies pdata for every call", () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 10);
    const seen: unknown[] = [];
    const used = new Set<number>();
    const alloc = (min: number, _max: number, pdata: unknown) => {
      seen.push(pdata);
      let i = min;
      while (used.has(i)) i++;
      used.add(i);
      return i;
    };
    const free = (id: number, pdata: unknown) => {
      seen.push(pdata);
      used.delete(id);
    };
    c.ioasidRegisterAllocator({ alloc, free, pdata: 'first' });
    c.ioasidRegisterAllocator({ alloc, free, pdata: 'second' });
    const id = c.ioasidAlloc(s, 1, 10);
    c.ioasidFree(s, id);
    assert.deepEqual(seen, ['first', 'first']);
    m.checkInvariants();
  });

  test('P10: unregistering switches to the first remaining allocator in registration order, else default', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 10);
    const A = lowestFreeFns(100, 199);
    const B = lowestFreeFns(200, 299);
    const C = lowestFreeFns(300, 399);
    const oa = opsOf(A);
    const ob = opsOf(B);
    const oc = opsOf(C);
    c.ioasidRegisterAllocator(oa);
    c.ioasidRegisterAllocator(ob);
    c.ioasidRegisterAllocator(oc);
    assert.equal(c.ioasidAlloc(s, 0, 1000), 100, 'the first registered is active');
    c.ioasidUnregisterAllocator(oc);
    assert.equal(c.ioasidAlloc(s, 0, 1000), 101, 'unregistering an inactive one changes nothing');
    c.ioasidRegisterAllocator(oc);
    c.ioasidUnregisterAllocator(oa);
    assert.equal(c.ioasidAlloc(s, 0, 1000), 200, 'B is next in registration order');
    c.ioasidUnregisterAllocator(ob);
    assert.equal(c.ioasidAlloc(s, 0, 1000), 300);
    c.ioasidUnregisterAllocator(oc);
    assert.equal(c.customAllocatorActive, false);
    assert.equal(c.ioasidAlloc(s, 0, 1000), 0, 'back to the default allocator');
    m.checkInvariants();
  });

  test('P10: IDs outstanding at a switch are orphans: unfindable, listed, counted in the quota, never freed', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 3);
    const A = lowestFreeFns(10, 20);
    const oa = opsOf(A);
    c.ioasidRegisterAllocator(oa);
    const x = c.ioasidAlloc(s, 0, 100, 'x-data');
    const y = c.ioasidAlloc(s, 0, 100);
    assert.deepEqual([x, y], [10, 11]);
    c.ioasidAttachSpid(x, 900);
    warnings();
    c.ioasidUnregisterAllocator(oa);
    const w = warnings();
    assert.equal(w.length, 1, 'the switch is reported');
    assert.deepEqual(w[0]?.['ids'], [10, 11]);
    assert.deepEqual(A.calls, ['alloc(0,100)', 'alloc(0,100)'], 'never silently freed');
    assert.deepEqual(c.orphans(), [10, 11]);
    assert.equal(c.liveCount, 0);
    assertErr(c.ioasidFind(s, x), 'ENOENT');
    assertErr(c.ioasidGet(s, x), 'EINVAL');
    assert.equal(c.ioasidFindBySpid(s, 900), INVALID_IOASID);
    c.ioasidFree(s, x);
    assert.deepEqual(c.orphans(), [10, 11], 'free cannot reach an orphan');
    assert.equal(s.nrIoasids, 2, 'still counted in the set');
    assert.equal(c.ioasidAlloc(s, 0, 100), 0);
    assert.equal(c.ioasidAlloc(s, 0, 100), INVALID_IOASID, 'quota 3 = 2 orphans + 1');
    assert.deepEqual(c.setMembers(s), [0, 10, 11]);
    m.checkInvariants();
  });

  test('P10: orphans become findable again when an allocator with those functions is active again', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 5);
    const A = lowestFreeFns(10, 20);
    c.ioasidRegisterAllocator(opsOf(A));
    const x = c.ioasidAlloc(s, 0, 100, 'x-data');
    c.ioasidAttachSpid(x, 900);
    c.ioasidUnregisterAllocator(opsOf(A)); // matched by functions (research C.1 sharp edge)
    assert.deepEqual(c.orphans(), [10]);
    // Different ops object, same functions: the tracking table is keyed by the function pair.
    assert.equal(c.ioasidRegisterAllocator(opsOf(A, 'new')), 0);
    assert.deepEqual(c.orphans(), []);
    assert.equal(c.ioasidFind(s, x), 'x-data');
    assert.equal(c.ioasidFindBySpid(s, 900), x);
    assert.equal(c.ioasidPut(s, x), false);
    c.ioasidFree(s, x);
    assert.equal(c.liveCount, 0);
    assert.deepEqual(A.calls.at(-1), 'free(10)');
    m.checkInvariants();
  });

  test('P10: an orphan number reused by the new allocator is a different record', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const a = nullSet(m, 5);
    const b = nullSet(m, 5);
    const A = lowestFreeFns(5, 9);
    c.ioasidRegisterAllocator(opsOf(A));
    const x = c.ioasidAlloc(a, 0, 100, 'orphan');
    c.ioasidAttachSpid(x, 100);
    c.ioasidUnregisterAllocator(opsOf(A));
    const y = c.ioasidAlloc(b, 5, 9, 'other');
    assert.equal(y, x, 'the default allocator hands out the same number');
    assert.equal(c.ioasidFindBySpid(a, 100), INVALID_IOASID, "not the orphan's SPID on b's record");
    assert.equal(c.inspect(y)?.users, 1);
    assertErr(c.ioasidFind(a, y), 'EACCES');
    assert.equal(c.ioasidAttachSpid(y, 100), 0, 'SPIDs are unique per set only');
    const seen: [number, unknown][] = [];
    c.ioasidSetForEachIoasid(a, (id) => {
      seen.push([id, null]);
    });
    assert.deepEqual(seen, [[5, null]], 'for_each still lists the orphan');
    m.checkInvariants();
  });

  test('P10: a custom allocator returning an ID already tracked: the ID is handed back, INVALID', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 5);
    const calls: string[] = [];
    const ops = {
      pdata: null,
      alloc: (min: number) => {
        calls.push(`alloc ${min}`);
        return min;
      },
      free: (id: number) => {
        calls.push(`free ${id}`);
      },
    };
    c.ioasidRegisterAllocator(ops);
    assert.equal(c.ioasidAlloc(s, 7, 9), 7);
    warnings();
    assert.equal(c.ioasidAlloc(s, 7, 9), INVALID_IOASID);
    assert.equal(warnings().length, 1);
    assert.deepEqual(calls, ['alloc 7', 'alloc 7', 'free 7']);
    assert.equal(s.nrIoasids, 1);
    // No range check on a custom result (research C.1).
    const wild = { pdata: null, alloc: () => 5000, free: () => {} };
    c.ioasidUnregisterAllocator(ops);
    c.ioasidRegisterAllocator(wild);
    assert.equal(c.ioasidAlloc(s, 1, 10), 5000);
    // A result that is not a u32: INVALID.
    const bad = { pdata: null, alloc: () => -3, free: () => {} };
    c.ioasidUnregisterAllocator(wild);
    c.ioasidRegisterAllocator(bad);
    assert.equal(c.ioasidAlloc(s, 1, 10), INVALID_IOASID);
    m.checkInvariants();
  });

  test('P10: unregister with nothing registered, or unknown functions: a warning, no change', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    warnings();
    c.ioasidUnregisterAllocator(opsOf(lowestFreeFns(1, 2)));
    assert.equal(warnings().length, 1);
    c.ioasidRegisterAllocator(opsOf(lowestFreeFns(1, 2)));
    c.ioasidUnregisterAllocator(opsOf(lowestFreeFns(1, 2)));
    assert.equal(warnings().length, 1);
    assert.equal(c.customAllocatorActive, true);
    m.checkInvariants();
  });

  test('P10: a destroyed set frees its orphans too, in ascending order with the others', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 5);
    const A = lowestFreeFns(5, 9);
    c.ioasidRegisterAllocator(opsOf(A));
    c.ioasidAlloc(s, 0, 100);
    c.ioasidUnregisterAllocator(opsOf(A));
    c.ioasidAlloc(s, 7, 100);
    c.ioasidAlloc(s, 1, 100);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    c.ioasidSetPut(s);
    assert.deepEqual(brief(log), ['s:FREE:1', 's:FREE:5', 's:FREE:7']);
    assert.deepEqual(c.orphans(), []);
    assert.equal(c.liveSets().length, 0);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ sets

describe('set life cycle', () => {
  test('set get/put: the set lives until its last reference goes', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    assert.equal(s.ref, 1);
    c.ioasidSetGet(s);
    assert.equal(s.ref, 2);
    c.ioasidSetPut(s);
    assert.equal(c.isValidSet(s), true);
    assert.equal(c.ioasidAlloc(s, 1, 10), 1);
    c.ioasidSetPut(s);
    assert.equal(c.isValidSet(s), false);
    assert.equal(c.liveSets().length, 0);
    m.checkInvariants();
  });

  test('destroy frees every member (FREE each, ascending), returns the quota; referenced members linger', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 10);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, log));
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    for (const min of [5, 2, 8, 3]) c.ioasidAlloc(s, min, 20, `p${min}`);
    assert.equal(c.ioasidGet(s, 3), 0, 'someone else holds 3');
    const already = c.ioasidAlloc(s, 9, 9);
    c.ioasidGet(s, already);
    c.ioasidFree(s, already); // FREE_PENDING before the destroy: not notified again
    log.length = 0;
    assert.equal(c.capacityAvailable, PCI_PASID_MAX - 10);
    c.ioasidSetPut(s);
    assert.deepEqual(brief(log), [
      'g:FREE:2',
      's:FREE:2',
      'g:FREE:3',
      's:FREE:3',
      'g:FREE:5',
      's:FREE:5',
      'g:FREE:8',
      's:FREE:8',
    ]);
    assert.equal(log[2]?.pdata, 'p3');
    assert.equal(c.capacityAvailable, PCI_PASID_MAX, 'quota returned at once');
    assert.deepEqual(c.liveSets(), []);
    assert.equal(c.isValidSet(s), false);
    // 3 and 9 linger FREE_PENDING; the set's slot stays taken meanwhile.
    assert.equal(c.liveCount, 2);
    assert.equal(c.inspect(3)?.state, IOASID_STATE_FREE_PENDING);
    assert.equal(c.inspect(3)?.set, s);
    assert.notEqual(nullSet(m, 1).id, s.id, 'slot still held');
    warnings();
    assert.equal(c.ioasidPut(s, 3), true, 'the old handle still works for put');
    assert.equal(warnings().length, 0);
    assertErr(c.ioasidGet(s, 9), 'EBUSY');
    c.ioasidFree(s, 9);
    assert.equal(c.liveCount, 1);
    assert.equal(c.ioasidPut(null, 9), true);
    assert.equal(c.liveCount, 0);
    assert.equal(nullSet(m, 1).id, s.id, 'slot released with its last member');
    assert.deepEqual(brief(log).length, 8, 'no more notifications');
    m.checkInvariants();
  });

  test("an empty set releases its slot at once; a destroyed set's chain is gone", () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 10);
    const log: Ev[] = [];
    const rec = new Recorder('s', 0, log);
    c.ioasidRegisterNotifier(s, rec);
    c.ioasidSetPut(s);
    const t = nullSet(m, 10);
    assert.equal(t.id, s.id);
    c.ioasidAlloc(t, 1, 10);
    assert.deepEqual(log, [], "the old set's listener is not on the new set");
    m.checkInvariants();
  });

  test('a destroyed set handle: every API gives its invalid-set outcome', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 10);
    const id = c.ioasidAlloc(s, 1, 10);
    c.ioasidGet(s, id);
    c.ioasidSetPut(s);
    warnings();
    assert.equal(c.ioasidAlloc(s, 1, 10), INVALID_IOASID);
    assertErr(c.ioasidAdjustSet(s, 5), 'EINVAL');
    assertErr(c.ioasidRegisterNotifier(s, new Recorder('x', 0, [])), 'EINVAL');
    assert.equal(c.ioasidFindBySpid(s, 1), INVALID_IOASID);
    c.ioasidSetGet(s);
    c.ioasidSetPut(s);
    c.ioasidUnregisterNotifier(s, new Recorder('x', 0, []));
    let visited = 0;
    c.ioasidSetForEachIoasid(s, () => {
      visited++;
    });
    c.ioasidFree(s, id);
    assert.equal(visited, 0);
    assert.equal(warnings().length, 7);
    assert.equal(s.ref, 0);
    assertErr(c.ioasidAttachSpid(id, 3), 'ENOENT');
    assert.equal(c.ioasidPut(s, id), true);
    m.checkInvariants();
  });

  test('ioasid_set_for_each_ioasid: ascending, FREE_PENDING included', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 10);
    const other = nullSet(m, 10);
    for (const min of [7, 3, 5]) c.ioasidAlloc(s, min, 20);
    c.ioasidAlloc(other, 4, 4);
    c.ioasidGet(s, 5);
    c.ioasidFree(s, 5);
    const seen: number[] = [];
    c.ioasidSetForEachIoasid(s, (id) => {
      seen.push(id);
    });
    assert.deepEqual(seen, [3, 5, 7]);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ quota

describe('quota and capacity accounting', () => {
  test('nr_ioasids counts live IDs (FREE_PENDING included) and limits allocation', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 2);
    const a = c.ioasidAlloc(s, 1, 100);
    assert.equal(c.ioasidAlloc(s, 1, 100), 2);
    assert.equal(c.ioasidAlloc(s, 1, 100), INVALID_IOASID);
    c.ioasidGet(s, a);
    c.ioasidFree(s, a);
    assert.equal(s.nrIoasids, 2);
    assert.equal(c.ioasidAlloc(s, 1, 100), INVALID_IOASID, 'FREE_PENDING still counts');
    c.ioasidPut(s, a);
    assert.equal(s.nrIoasids, 1);
    assert.equal(c.ioasidAlloc(s, 1, 100), a);
    assert.equal(c.capacityAvailable, PCI_PASID_MAX - 2, 'alloc and reclaim leave capacity alone');
    m.checkInvariants();
  });

  test('ioasid_adjust_set: EINVAL for <= 0 or below nr_ioasids, ENOSPC above what is left', () => {
    const { m } = fixture();
    const c = m.ioasid;
    c.ioasidInstallCapacity(10);
    const s = nullSet(m, 4);
    const t = nullSet(m, 3);
    assert.equal(c.capacityAvailable, 3);
    for (let i = 0; i < 3; i++) c.ioasidAlloc(s, 0, 100);
    assertErr(c.ioasidAdjustSet(s, 0), 'EINVAL');
    assertErr(c.ioasidAdjustSet(s, -1), 'EINVAL');
    assertErr(c.ioasidAdjustSet(s, 2), 'EINVAL');
    assertErr(c.ioasidAdjustSet(s, 8), 'ENOSPC');
    assert.equal(s.quota, 4);
    assert.equal(c.ioasidAdjustSet(s, 7), 0);
    assert.equal(c.capacityAvailable, 0);
    assert.equal(c.ioasidAdjustSet(s, 3), 0, 'down to nr_ioasids is fine');
    assert.equal(c.capacityAvailable, 4);
    assert.equal(c.ioasidAlloc(s, 0, 100), INVALID_IOASID);
    assert.equal(c.ioasidAdjustSet(t, 7), 0);
    assert.equal(c.capacityAvailable, 0);
    assert.equal(c.ioasidAdjustSet(t, 7), 0, 'same quota: no change');
    m.checkInvariants();
  });

  test('ioasid_install_capacity: only while default, keeps reserved quota, refuses below it', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    nullSet(m, 30);
    warnings();
    c.ioasidInstallCapacity(20);
    assert.equal(warnings().length, 1, 'below the reserved quota');
    assert.equal(c.ioasidGetCapacity(), PCI_PASID_MAX);
    c.ioasidInstallCapacity(100);
    assert.equal(c.ioasidGetCapacity(), 100);
    assert.equal(c.capacityAvailable, 70, 'avail = total - reserved');
    c.ioasidInstallCapacity(200);
    assert.equal(warnings().length, 1, 'already set');
    assert.equal(c.ioasidGetCapacity(), 100);
    c.ioasidInstallCapacity(-5);
    c.ioasidInstallCapacity(1.5);
    assert.equal(c.ioasidGetCapacity(), 100);
    m.checkInvariants();
  });

  test('ioasid_install_capacity: capacity 0 or PCI_PASID_MAX may be installed over', () => {
    const { m } = fixture();
    const c = m.ioasid;
    c.ioasidInstallCapacity(0);
    assert.equal(c.ioasidGetCapacity(), 0);
    assertErr(c.ioasidSetAlloc(null, 1, IOASID_SET_TYPE_NULL), 'ENOSPC');
    c.ioasidInstallCapacity(PCI_PASID_MAX);
    c.ioasidInstallCapacity(50);
    assert.equal(c.ioasidGetCapacity(), 50);
    assert.equal(c.capacityAvailable, 50);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ SPIDs

describe('SPIDs', () => {
  test('attach: EINVAL for INVALID_IOASID or a SPID used in the set, ENOENT for an unknown IOASID', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const t = nullSet(m, 4);
    const a = c.ioasidAlloc(s, 1, 10);
    const b = c.ioasidAlloc(s, 1, 10);
    const x = c.ioasidAlloc(t, 1, 10);
    assertErr(c.ioasidAttachSpid(a, INVALID_IOASID), 'EINVAL');
    assertErr(c.ioasidAttachSpid(99, 5), 'ENOENT');
    assert.equal(c.ioasidAttachSpid(a, 5), 0);
    assertErr(c.ioasidAttachSpid(b, 5), 'EINVAL');
    assertErr(c.ioasidAttachSpid(a, 5), 'EINVAL', 'even on the ID that has it');
    assert.equal(c.inspect(a)?.users, 1, 'the uniqueness check takes no reference (research 0.3 fix 4)');
    assert.equal(c.ioasidAttachSpid(x, 5), 0, 'unique per set only');
    assert.equal(c.ioasidAttachSpid(b, 0), 0, 'SPID 0 is fine');
    m.checkInvariants();
  });

  test('find_by_spid takes a reference; the SPID goes with the record at reclaim', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const t = nullSet(m, 4);
    const a = c.ioasidAlloc(s, 1, 10);
    c.ioasidAttachSpid(a, 500);
    assert.equal(c.ioasidFindBySpid(t, 500), INVALID_IOASID, 'another set');
    assert.equal(c.ioasidFindBySpid(s, 501), INVALID_IOASID);
    assert.equal(c.ioasidFindBySpid(s, 500), a);
    assert.equal(c.inspect(a)?.users, 2);
    c.ioasidPut(s, a);
    c.ioasidPut(s, a);
    assert.equal(c.liveCount, 0);
    const b = c.ioasidAlloc(s, 1, 10);
    assert.equal(b, a);
    assert.equal(c.inspect(b)?.spid, INVALID_IOASID);
    assert.equal(c.ioasidFindBySpid(s, 500), INVALID_IOASID);
    assert.equal(c.ioasidAttachSpid(b, 500), 0, 'the SPID was released at reclaim');
    m.checkInvariants();
  });

  test('re-attaching replaces the SPID (a new BIND); the old SPID is free again', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(s, new Recorder('s', 0, log));
    const a = c.ioasidAlloc(s, 1, 10);
    const b = c.ioasidAlloc(s, 1, 10);
    c.ioasidAttachSpid(a, 1);
    c.ioasidAttachSpid(a, 2);
    assert.equal(c.ioasidFindBySpid(s, 1), INVALID_IOASID);
    assert.equal(c.ioasidAttachSpid(b, 1), 0);
    assert.deepEqual(
      log.filter((e) => e.event === 'IOASID_NOTIFY_BIND').map((e) => [e.id, e.spid]),
      [
        [a, 1],
        [a, 2],
        [b, 1],
      ],
    );
    m.checkInvariants();
  });

  test('attach/detach data: attach only when empty (EBUSY), detach clears, unknown ID', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const a = c.ioasidAlloc(s, 1, 10);
    assert.equal(c.ioasidAttachData(a, 'one'), 0);
    assertErr(c.ioasidAttachData(a, 'two'), 'EBUSY');
    assert.equal(c.ioasidFind(s, a), 'one');
    c.ioasidDetachData(a);
    assert.equal(c.ioasidFind(s, a), null);
    assert.equal(c.ioasidAttachData(a, 'two'), 0);
    assertErr(c.ioasidAttachData(77, 'x'), 'ENOENT');
    warnings();
    c.ioasidDetachData(77);
    assert.equal(warnings().length, 1);
    // ioasid_find's getter: called with the data (even null); false -> NULL.
    const got: unknown[] = [];
    assert.equal(
      c.ioasidFind(s, a, (p) => {
        got.push(p);
        return false;
      }),
      null,
    );
    const b = c.ioasidAlloc(s, 1, 10);
    assert.equal(
      c.ioasidFind(s, b, (p) => {
        got.push(p);
        return true;
      }),
      null,
    );
    assert.deepEqual(got, ['two', null]);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ notifiers

describe('notifier registration', () => {
  test('the same block twice on one chain: a warning, 0, chain unchanged', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const log: Ev[] = [];
    const r = new Recorder('r', 0, log);
    assert.equal(c.ioasidRegisterNotifier(s, r), 0);
    warnings();
    assert.equal(c.ioasidRegisterNotifier(s, r), 0);
    assert.equal(warnings().length, 1);
    assert.equal(c.ioasidRegisterNotifier(null, r), 0, 'another chain is fine');
    assert.equal(warnings().length, 0);
    const id = c.ioasidAlloc(s, 1, 10);
    c.ioasidFree(s, id);
    assert.deepEqual(brief(log), ['r:ALLOC:1', 'r:FREE:1', 'r:FREE:1']);
    c.ioasidUnregisterNotifier(s, r);
    c.ioasidAlloc(s, 1, 10);
    assert.equal(log.length, 3, 'one unregister removes it');
    c.ioasidUnregisterNotifier(s, r);
    assert.equal(warnings().length, 1, 'not registered');
    m.checkInvariants();
  });

  test('register on an invalid set -> EINVAL', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    c.ioasidSetPut(s);
    assertErr(c.ioasidRegisterNotifier(s, new Recorder('r', 0, [])), 'EINVAL');
    assertErr(c.ioasidRegisterNotifier(nullSet(new Machine(), 1), new Recorder('r', 0, [])), 'EINVAL');
    m.checkInvariants();
  });

  test('global chain first, then the set chain, for every member of every set', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const a = nullSet(m, 4);
    const b = nullSet(m, 4);
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(a, new Recorder('a', IOASID_PRIO_CPU, log));
    c.ioasidRegisterNotifier(null, new Recorder('g', IOASID_PRIO_LAST, log));
    c.ioasidRegisterNotifier(b, new Recorder('b', IOASID_PRIO_CPU, log));
    const x = c.ioasidAlloc(a, 1, 10);
    const y = c.ioasidAlloc(b, 1, 10);
    c.ioasidFree(b, y);
    c.ioasidFree(a, x);
    assert.deepEqual(brief(log), ['a:ALLOC:1', 'b:ALLOC:2', 'g:FREE:2', 'b:FREE:2', 'g:FREE:1', 'a:FREE:1']);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ mm

describe('mm notifier registration (pending list)', () => {
  test('register before the MM set exists; the set picks it up; destroy parks it; a new set picks it up', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const log: Ev[] = [];
    const r = new Recorder('r', 0, log);
    assert.equal(c.ioasidRegisterNotifierMm('mm1', r), 0);
    const nul = nullSet(m, 4);
    const other = mmSet(m, 'mm2', 4);
    c.ioasidAlloc(nul, 1, 10);
    c.ioasidAlloc(other, 1, 10);
    assert.deepEqual(log, [], 'NULL sets and other tokens ignore the pending entry');
    const s1 = mmSet(m, 'mm1', 4);
    const id = c.ioasidAlloc(s1, 1, 10);
    c.ioasidFree(s1, id);
    assert.deepEqual(brief(log), ['r:ALLOC:3', 'r:FREE:3']);
    assert.equal(c.ioasidAlloc(s1, 1, 10), 3);
    c.ioasidSetPut(s1);
    assert.deepEqual(brief(log).slice(2), ['r:ALLOC:3', 'r:FREE:3'], 'FREE at destroy still reaches it');
    log.length = 0;
    const s2 = mmSet(m, 'mm1', 4);
    c.ioasidAlloc(s2, 1, 10);
    assert.deepEqual(brief(log), ['r:ALLOC:3'], 'a new set with the same token picks it up');
    m.checkInvariants();
  });

  test('register on an existing empty MM set: active at once; on a non-empty one -> EBUSY', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = mmSet(m, 'mm', 4);
    const log: Ev[] = [];
    const r1 = new Recorder('r1', 0, log);
    const r2 = new Recorder('r2', 0, log);
    assert.equal(c.ioasidRegisterNotifierMm('mm', r1), 0);
    const id = c.ioasidAlloc(s, 1, 10);
    assertErr(c.ioasidRegisterNotifierMm('mm', r2), 'EBUSY');
    c.ioasidFree(s, id);
    assert.deepEqual(brief(log), ['r1:ALLOC:1', 'r1:FREE:1']);
    assert.equal(c.ioasidRegisterNotifierMm('mm', r2), 0, 'empty again');
    m.checkInvariants();
  });

  test('EINVAL without an mm; EBUSY for the same (mm, nb) twice; the same nb for two mms is fine', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const r = new Recorder('r', 0, []);
    assertErr(c.ioasidRegisterNotifierMm(null, r), 'EINVAL');
    assertErr(c.ioasidRegisterNotifierMm(undefined, r), 'EINVAL');
    assert.equal(c.ioasidRegisterNotifierMm('a', r), 0);
    assertErr(c.ioasidRegisterNotifierMm('a', r), 'EBUSY');
    assert.equal(c.ioasidRegisterNotifierMm('b', r), 0);
    mmSet(m, 'a', 1);
    assertErr(c.ioasidRegisterNotifierMm('a', r), 'EBUSY');
    m.checkInvariants();
  });

  test('unregister_notifier refuses a pending-list nb; unregister_notifier_mm removes it', () => {
    const { m, warnings } = fixture();
    const c = m.ioasid;
    const log: Ev[] = [];
    const r = new Recorder('r', 0, log);
    c.ioasidRegisterNotifierMm('mm', r);
    const s = mmSet(m, 'mm', 4);
    warnings();
    c.ioasidUnregisterNotifier(s, r);
    assert.equal(warnings().length, 1);
    c.ioasidAlloc(s, 1, 10);
    assert.equal(log.length, 1, 'still registered');
    c.ioasidUnregisterNotifierMm('mm', r);
    c.ioasidAlloc(s, 1, 10);
    assert.equal(log.length, 1, 'gone');
    c.ioasidUnregisterNotifierMm('mm', r);
    assert.equal(warnings().length, 1, 'not registered');
    // Unregistering a parked (inactive) entry.
    c.ioasidRegisterNotifierMm('mm2', r);
    c.ioasidUnregisterNotifierMm('mm2', r);
    const s2 = mmSet(m, 'mm2', 4);
    c.ioasidAlloc(s2, 1, 10);
    assert.equal(log.length, 1);
    m.checkInvariants();
  });

  test('pending entries are registered with their priority, newest entry first among equals', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const log: Ev[] = [];
    c.ioasidRegisterNotifierMm('mm', new Recorder('old', IOASID_PRIO_DEVICE, log));
    c.ioasidRegisterNotifierMm('mm', new Recorder('cpu', IOASID_PRIO_CPU, log));
    c.ioasidRegisterNotifierMm('mm', new Recorder('new', IOASID_PRIO_DEVICE, log));
    const s = mmSet(m, 'mm', 4);
    c.ioasidAlloc(s, 1, 10);
    assert.deepEqual(
      log.map((e) => e.nb),
      ['cpu', 'new', 'old'],
    );
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ profiles

describe('merged profiles', () => {
  test('m55: set tokens, alloc from 0 with a NULL set, find/set_data, ioasid_free(id) at once', () => {
    const { m, warnings } = fixture({ profile: 'm55' });
    const c = m.ioasid;
    assert.equal(c.profile, 'm55');
    const tok = c.allocInternalSet(IOASID_SET_TYPE_TOKEN, 0xffffffff);
    assertSet(tok);
    const tok2 = c.allocInternalSet(IOASID_SET_TYPE_TOKEN, 0xffffffff);
    assertSet(tok2);
    assert.equal(c.capacityAvailable, PCI_PASID_MAX, 'tokens reserve no capacity');
    assert.equal(c.ioasidAlloc(null, 0, 10, 'n'), 0, 'index 0 is allocatable (XA_FLAGS_ALLOC)');
    assert.equal(c.ioasidAlloc(tok, 0, 10, 't'), 1);
    assert.equal(c.ioasidFind(null, 1), 't', 'NULL set: no ownership check on find');
    assertErr(c.ioasidFind(tok2, 1), 'EACCES');
    assert.equal(c.ioasidFind(tok, 1), 't');
    assertErr(c.ioasidFind(tok, 5), 'ENOENT');
    assert.equal(c.ioasidSetData(1, 'u'), 0);
    assert.equal(c.ioasidSetData(1, 'v'), 0, 'set_data overwrites non-NULL data');
    assert.equal(c.ioasidFind(tok, 1), 'v');
    assertErr(c.ioasidSetData(5, 'x'), 'ENOENT');
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, log));
    c.releaseNow(1);
    assert.equal(c.inspect(1), undefined);
    assert.equal(tok.nrIoasids, 0);
    warnings();
    c.releaseNow(1);
    assert.equal(warnings().length, 1, 'unknown: pr_err, no-op');
    c.releaseNow(0);
    assert.deepEqual(log, [], 'm55 has no notifications');
    assert.equal(c.liveCount, 0);
    m.checkInvariants();
  });

  test('m55: custom allocators follow the same rules', () => {
    const { m } = fixture({ profile: 'm55' });
    const c = m.ioasid;
    const id = c.ioasidAlloc(null, 1, 10);
    const fns = lowestFreeFns(50, 60);
    assertErr(c.ioasidRegisterAllocator(opsOf(fns)), 'EAGAIN');
    c.releaseNow(id);
    assert.equal(c.ioasidRegisterAllocator(opsOf(fns)), 0);
    assert.equal(c.ioasidAlloc(null, 1, 100), 50);
    c.releaseNow(50);
    assert.deepEqual(fns.calls, ['alloc(1,100)', 'free(50)']);
    m.checkInvariants();
  });

  test('m511: refcounted get/put; put returns true when it frees; unknown IDs warn', () => {
    const { m, warnings } = fixture({ profile: 'm511' });
    const c = m.ioasid;
    const tok = c.allocInternalSet(IOASID_SET_TYPE_TOKEN, 0xffffffff);
    assertSet(tok);
    const id = c.ioasidAlloc(tok, 1, 10, 'd');
    const nul = c.ioasidAlloc(null, 1, 10);
    c.getRefUnchecked(id);
    assert.equal(c.inspect(id)?.users, 2);
    assert.equal(c.ioasidPut(null, id), false);
    assert.equal(c.ioasidFind(tok, id), 'd');
    assert.equal(c.ioasidPut(null, id), true);
    assert.equal(c.inspect(id), undefined);
    warnings();
    assert.equal(c.ioasidPut(null, id), false);
    c.getRefUnchecked(id);
    assert.equal(warnings().length, 2);
    assert.equal(c.ioasidPut(null, nul), true);
    assert.equal(c.liveCount, 0);
    assert.equal(tok.nrIoasids, 0);
    m.checkInvariants();
  });

  test('v3: ioasid_alloc with a NULL set -> INVALID_IOASID', () => {
    const { m, warnings } = fixture();
    warnings();
    assert.equal(m.ioasid.ioasidAlloc(null, 1, 10), INVALID_IOASID);
    assert.equal(warnings().length, 1);
    assert.equal(m.ioasid.liveCount, 0);
  });

  test('g66: the global PASID allocator: lowest free in [1, max_pasids - 1]', () => {
    const m = new Machine({ debug: true, profile: 'g66' });
    const dev = { maxPasids: 4 };
    const g = m.globalPasid;
    assert.deepEqual(
      [1, 2, 3].map(() => g.iommuAllocGlobalPasid(dev)),
      [1, 2, 3],
    );
    assert.equal(g.iommuAllocGlobalPasid(dev), IOMMU_PASID_INVALID);
    g.iommuFreeGlobalPasid(2);
    assert.equal(g.iommuAllocGlobalPasid(dev), 2);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ debug

describe('debug mode', () => {
  test('the default follows PASIDKIT_DEBUG (the test runner sets it)', () => {
    const env = process.env['PASIDKIT_DEBUG'];
    assert.equal(new Machine().debug, env === '1' || env === 'true');
    assert.equal(new Machine({ debug: false }).ioasid.debug, false);
    assert.equal(new Machine({ debug: true }).ioasid.debug, true);
  });

  test('a corrupted model is caught after the next operation', () => {
    const m = new Machine({ debug: true });
    const s = nullSet(m, 4);
    m.ioasid.ioasidAlloc(s, 1, 10);
    s.nrIoasids = 5;
    assert.throws(() => m.ioasid.ioasidAlloc(s, 1, 10), InvariantError);
  });

  test('without debug the operation runs; checkInvariants still finds it', () => {
    const m = new Machine({ debug: false });
    const s = nullSet(m, 4);
    m.ioasid.ioasidAlloc(s, 1, 10);
    s.nrIoasids = 3;
    m.ioasid.ioasidAlloc(s, 1, 10);
    assert.throws(() => m.checkInvariants(), InvariantError);
  });
});

// ------------------------------------------------------------------------------------ PASID API

function machineWith(iommuBits: number, devices: [string, number][] = []): MachineConfig {
  return {
    iommus: [{ ...DEFAULT_VTD, pasid_bits: iommuBits }],
    memory: 1n << 30n,
    devices: devices.map(([bdf, bits]) => ({ bdf, iommu: 0, pasid_bits: bits, ats: false })),
  };
}

function consumer(m: Machine, range?: { min: number; max: number }): PasidConsumer {
  const c = m.pasid.iommuPasidInit(range);
  assert.ok(c instanceof PasidConsumer, String(c));
  return c;
}

describe('PASID consumer API (iommu_pasid_*)', () => {
  test('init without a range takes the hardware range [1, 2^pasid_bits - 1]', () => {
    const { m } = fixture();
    const p = consumer(m);
    assert.deepEqual([p.min, p.max], [1, 0xfffff]);
    assert.equal(m.pasid.iommuPasidAlloc(p, 0, 0xffffffff), 1, 'PASID 0 is outside the range');
    const small = fixture({ config: machineWith(4) }).m;
    const q = consumer(small);
    assert.deepEqual([q.min, q.max], [1, 15]);
    m.checkInvariants();
  });

  test('a consumer reserves no capacity and draws from the system-wide space', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const p = consumer(m, { min: 1, max: 100 });
    const q = consumer(m, { min: 1, max: 100 });
    assert.equal(c.capacityAvailable, PCI_PASID_MAX);
    const s = nullSet(m, 4);
    assert.equal(c.ioasidAlloc(s, 1, 100), 1);
    assert.equal(m.pasid.iommuPasidAlloc(p, 1, 100), 2);
    assert.equal(m.pasid.iommuPasidAlloc(q, 1, 100), 3);
    assert.equal(m.pasid.iommuPasidAlloc(p, 1, 100), 4);
    m.checkInvariants();
  });

  test('alloc is clipped to the consumer range; ENOSPC when nothing is free; EINVAL for bad ranges', () => {
    const { m } = fixture();
    const api = m.pasid;
    const p = consumer(m, { min: 100, max: 103 });
    assert.equal(api.iommuPasidAlloc(p, 0, 101, 'a'), 100);
    assert.equal(api.iommuPasidAlloc(p, 0, 101), 101);
    assertErr(api.iommuPasidAlloc(p, 0, 101), 'ENOSPC');
    assert.equal(api.iommuPasidAlloc(p, 102, 0xffffffff), 102);
    assert.equal(api.iommuPasidAlloc(p, 0, 0xffffffff), 103);
    assertErr(api.iommuPasidAlloc(p, 0, 0xffffffff), 'ENOSPC');
    assertErr(api.iommuPasidAlloc(p, 104, 200), 'EINVAL', 'outside the range');
    assertErr(api.iommuPasidAlloc(p, 0, 99), 'EINVAL');
    assertErr(api.iommuPasidAlloc(p, 102, 101), 'EINVAL', 'min > max');
    assertErr(api.iommuPasidAlloc(p, 1.5, 200), 'EINVAL');
    assertErr(api.iommuPasidAlloc(p, -1, 200), 'EINVAL');
    assertErr(api.iommuPasidAlloc(p, 0, 2 ** 32), 'EINVAL');
    assert.equal(m.ioasid.liveCount, 4);
    m.checkInvariants();
  });

  test('init with a bad range -> EINVAL', () => {
    const { m } = fixture();
    assertErr(m.pasid.iommuPasidInit({ min: 5, max: 4 }), 'EINVAL');
    assertErr(m.pasid.iommuPasidInit({ min: -1, max: 4 }), 'EINVAL');
    assertErr(m.pasid.iommuPasidInit({ min: 0, max: 0xffffffff }), 'EINVAL');
    assertErr(m.pasid.iommuPasidInit({ min: 0, max: 2.5 }), 'EINVAL');
    assert.equal(m.ioasid.liveSets().length, 0);
    assert.ok(m.pasid.iommuPasidInit({ min: 0, max: 0 }) instanceof PasidConsumer);
    m.checkInvariants();
  });

  test("find gives the private data; ENOENT unknown; EACCES another consumer's PASID", () => {
    const { m } = fixture();
    const api = m.pasid;
    const p = consumer(m);
    const q = consumer(m);
    const a = api.iommuPasidAlloc(p, 1, 100, { dev: 'a' });
    const b = api.iommuPasidAlloc(q, 1, 100, 'b');
    assert.deepEqual(api.iommuPasidFind(p, a as number), { dev: 'a' });
    assertErr(api.iommuPasidFind(p, b as number), 'EACCES');
    assertErr(api.iommuPasidFind(p, 77), 'ENOENT');
    api.iommuPasidFree(p, b as number);
    assert.equal(api.iommuPasidFind(q, b as number), 'b', 'another consumer cannot free it');
    api.iommuPasidFree(q, b as number);
    assertErr(api.iommuPasidFind(q, b as number), 'ENOENT');
    m.checkInvariants();
  });

  test('for_each: ascending, with private data; a non-zero return stops and is returned', () => {
    const { m } = fixture();
    const api = m.pasid;
    const p = consumer(m);
    const q = consumer(m);
    for (const min of [30, 10, 20]) api.iommuPasidAlloc(p, min, 100, `d${min}`);
    api.iommuPasidAlloc(q, 1, 100);
    const seen: [number, unknown][] = [];
    assert.equal(
      api.iommuPasidForEach(p, (id, priv) => {
        seen.push([id, priv]);
        return 0;
      }),
      0,
    );
    assert.deepEqual(seen, [
      [10, 'd10'],
      [20, 'd20'],
      [30, 'd30'],
    ]);
    const stopped: number[] = [];
    assert.equal(
      api.iommuPasidForEach(p, (id) => {
        stopped.push(id);
        return id === 20 ? -22 : 0;
      }),
      -22,
    );
    assert.deepEqual(stopped, [10, 20]);
    m.checkInvariants();
  });

  test('exit frees every PASID of the consumer (FREE each, ascending) and kills the handle', () => {
    const { m } = fixture();
    const api = m.pasid;
    const c = m.ioasid;
    const log: Ev[] = [];
    c.ioasidRegisterNotifier(null, new Recorder('g', 0, log));
    const p = consumer(m);
    const q = consumer(m);
    for (const min of [30, 10, 20]) api.iommuPasidAlloc(p, min, 100);
    const keep = api.iommuPasidAlloc(q, 1, 100);
    api.iommuPasidExit(p);
    assert.deepEqual(brief(log), ['g:FREE:10', 'g:FREE:20', 'g:FREE:30']);
    assert.equal(c.liveCount, 1);
    assert.equal(c.liveSets().length, 1);
    assertErr(api.iommuPasidAlloc(p, 1, 100), 'EINVAL');
    assertErr(
      api.iommuPasidForEach(p, () => 0),
      'EINVAL',
    );
    assertErr(api.iommuPasidFind(p, 10), 'EINVAL');
    api.iommuPasidFree(p, 10);
    api.iommuPasidExit(p);
    assert.equal(api.iommuPasidFind(q, keep as number), null);
    api.iommuPasidExit(q);
    assert.equal(c.liveCount, 0);
    assert.equal(c.liveSets().length, 0);
    m.checkInvariants();
  });

  test('a consumer of another machine is not a consumer here', () => {
    const { m } = fixture();
    const other = new Machine({ debug: true });
    const p = consumer(other);
    consumer(m);
    assertErr(m.pasid.iommuPasidAlloc(p, 1, 10), 'EINVAL');
    m.pasid.iommuPasidExit(p);
    assert.equal(other.ioasid.liveSets().length, 1);
  });

  test('with a custom allocator registered, allocation goes through it with the clipped range', () => {
    const { m } = fixture();
    const api = m.pasid;
    const fns = lowestFreeFns(40, 1000);
    assert.equal(m.ioasid.ioasidRegisterAllocator(opsOf(fns)), 0);
    const p = consumer(m, { min: 10, max: 50 });
    assert.equal(api.iommuPasidAlloc(p, 0, 0xffffffff), 40);
    assert.equal(api.iommuPasidAlloc(p, 45, 100), 45);
    api.iommuPasidFree(p, 40);
    assert.deepEqual(fns.calls, ['alloc(10,50)', 'alloc(45,50)', 'free(40)']);
    for (let i = 0; i < 10; i++) assert.equal(typeof api.iommuPasidAlloc(p, 0, 100), 'number');
    assertErr(api.iommuPasidAlloc(p, 0, 100), 'ENOSPC', 'the custom allocator has nothing left in range');
    api.iommuPasidExit(p);
    assert.deepEqual([...fns.used], [], 'exit returned everything to the allocator');
    m.checkInvariants();
  });

  test('for_each reports an orphaned PASID with its own data, not that of a reused number', () => {
    const { m } = fixture();
    const api = m.pasid;
    const fns = lowestFreeFns(5, 9);
    m.ioasid.ioasidRegisterAllocator(opsOf(fns));
    const p = consumer(m, { min: 1, max: 20 });
    assert.equal(api.iommuPasidAlloc(p, 1, 20, 'mine'), 5);
    m.ioasid.ioasidUnregisterAllocator(opsOf(fns));
    const q = consumer(m, { min: 5, max: 5 });
    assert.equal(api.iommuPasidAlloc(q, 1, 20, 'theirs'), 5);
    const seen: [number, unknown][] = [];
    api.iommuPasidForEach(p, (id, priv) => {
      seen.push([id, priv]);
      return 0;
    });
    assert.deepEqual(seen, [[5, 'mine']]);
    m.checkInvariants();
  });

  test("m55 and m511 consumers: free releases only the consumer's own PASID", () => {
    for (const profile of ['m55', 'm511'] as const) {
      const { m } = fixture({ profile });
      const api = m.pasid;
      const p = consumer(m);
      const q = consumer(m);
      const a = api.iommuPasidAlloc(p, 1, 10) as number;
      const b = api.iommuPasidAlloc(q, 1, 10) as number;
      api.iommuPasidFree(p, b);
      assert.equal(m.ioasid.liveCount, 2, profile);
      api.iommuPasidFree(p, a);
      assert.equal(m.ioasid.liveCount, 1, profile);
      api.iommuPasidExit(q);
      assert.equal(m.ioasid.liveCount, 0, profile);
      m.checkInvariants();
    }
  });
});

// ------------------------------------------------------------------------------------ global PASID

describe('global PASID API (iommu_alloc_global_pasid)', () => {
  const cfg = machineWith(20, [
    ['00:02.0', 20],
    ['00:03.0', 0],
    ['00:04.0', 2],
  ]);

  test('lowest free in [1, max_pasids - 1], one space for every device, PASID 0 never', () => {
    const { m } = fixture({ config: cfg });
    const big = m.device('00:02.0')!;
    const small = m.device('00:04.0')!;
    assert.equal(big.maxPasids, 2 ** 20);
    assert.equal(small.maxPasids, 4);
    const g = m.globalPasid;
    assert.equal(g.iommuAllocGlobalPasid(big), 1);
    assert.equal(g.iommuAllocGlobalPasid(small), 2);
    assert.equal(g.iommuAllocGlobalPasid(small), 3);
    assert.equal(g.iommuAllocGlobalPasid(small), IOMMU_PASID_INVALID, '[1, 3] is full');
    assert.equal(g.iommuAllocGlobalPasid(big), 4);
    g.iommuFreeGlobalPasid(2);
    assert.equal(g.iommuAllocGlobalPasid(big), 2);
    assert.deepEqual(g.ids(), [1, 2, 3, 4]);
    assert.equal(m.ioasid.liveCount, 0, 'independent of the IOASID core');
    m.checkInvariants();
  });

  test('a device without PASIDs (max_pasids 0) -> IOMMU_PASID_INVALID; max_pasids 1 has none either', () => {
    const { m } = fixture({ config: cfg });
    const none = m.device('00:03.0')!;
    assert.equal(none.maxPasids, 0);
    assert.equal(m.globalPasid.iommuAllocGlobalPasid(none), IOMMU_PASID_INVALID);
    assert.equal(m.globalPasid.iommuAllocGlobalPasid({ maxPasids: 1 }), IOMMU_PASID_INVALID);
    assert.equal(m.globalPasid.allocated, 0);
    m.checkInvariants();
  });

  test("a device's max_pasids is capped by its IOMMU", () => {
    const { m } = fixture({ config: machineWith(3, [['00:02.0', 20]]) });
    assert.equal(m.device('00:02.0')!.maxPasids, 8);
  });

  test('double free, free of INVALID or of 0: a warning, no change', () => {
    const { m, warnings } = fixture({ config: cfg });
    const g = m.globalPasid;
    const dev = m.device('00:02.0')!;
    const p = g.iommuAllocGlobalPasid(dev);
    g.iommuFreeGlobalPasid(p);
    warnings();
    g.iommuFreeGlobalPasid(p);
    assert.equal(warnings().length, 1);
    g.iommuFreeGlobalPasid(IOMMU_PASID_INVALID);
    assert.equal(warnings().length, 1);
    g.iommuFreeGlobalPasid(0);
    g.iommuFreeGlobalPasid(-1);
    g.iommuFreeGlobalPasid(1.5);
    assert.equal(warnings().length, 3);
    assert.equal(g.allocated, 0);
    assert.equal(g.iommuAllocGlobalPasid(dev), 1);
    m.checkInvariants();
  });
});

// ------------------------------------------------------------------------------------ bad input

describe('bad input: the kernel outcome, never a throw, never corrupted state', () => {
  const weird = [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 32, 2 ** 53, -0.5];

  test('non-integer and out-of-range IDs and SPIDs', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    const id = c.ioasidAlloc(s, 1, 10, 'keep');
    c.ioasidAttachSpid(id, 9);
    for (const w of [...weird, INVALID_IOASID]) {
      assert.equal(c.ioasidAlloc(s, w, 10), INVALID_IOASID);
      if (w !== INVALID_IOASID) assert.equal(c.ioasidAlloc(s, 0, w), INVALID_IOASID);
      c.ioasidFree(s, w);
      assertErr(c.ioasidGet(s, w), 'EINVAL');
      assert.equal(c.ioasidPut(s, w), false);
      assertErr(c.ioasidFind(s, w), 'ENOENT');
      assertErr(c.ioasidAttachData(w, 'x'), 'ENOENT');
      c.ioasidDetachData(w);
      c.ioasidDetachSpid(w);
      assertErr(c.ioasidAttachSpid(w, 3), 'ENOENT');
      assertErr(c.ioasidAttachSpid(id, w), 'EINVAL');
      assert.equal(c.ioasidFindBySpid(s, w), INVALID_IOASID);
      assert.equal(c.inspect(w), undefined);
    }
    assert.equal(c.ioasidFind(s, id), 'keep');
    assert.equal(c.inspect(id)?.users, 1);
    assert.equal(c.inspect(id)?.spid, 9);
    m.checkInvariants();
  });

  test('bad quotas, types and capacities', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const s = nullSet(m, 4);
    for (const w of weird) {
      const r = c.ioasidSetAlloc(null, w, IOASID_SET_TYPE_NULL);
      assert.ok(r instanceof KernelError, `quota ${w}`);
      assert.ok(c.ioasidSetAlloc(null, 1, w) instanceof KernelError, `type ${w}`);
      assert.ok(c.ioasidAdjustSet(s, w) instanceof KernelError, `adjust ${w}`);
      c.ioasidInstallCapacity(w);
    }
    assert.equal(s.quota, 4);
    assert.equal(c.ioasidGetCapacity(), PCI_PASID_MAX);
    assert.equal(c.liveSets().length, 1);
    m.checkInvariants();
  });

  test('null, stale and foreign set handles where a set is required', () => {
    const { m } = fixture();
    const c = m.ioasid;
    const none = null as unknown as IoasidSet;
    const stale = nullSet(m, 4);
    c.ioasidSetPut(stale);
    const foreign = nullSet(new Machine(), 4);
    for (const h of [none, stale, foreign]) {
      assert.doesNotThrow(() => {
        c.ioasidSetGet(h);
        c.ioasidSetPut(h);
        assertErr(c.ioasidAdjustSet(h, 3), 'EINVAL');
        assert.equal(c.ioasidFindBySpid(h, 1), INVALID_IOASID);
        c.ioasidSetForEachIoasid(h, () => assert.fail('visited'));
        assert.equal(c.ioasidAlloc(h, 1, 10), INVALID_IOASID);
      });
    }
    assert.equal(c.capacityAvailable, PCI_PASID_MAX);
    assert.equal(c.liveSets().length, 0);
    m.checkInvariants();
  });
});
