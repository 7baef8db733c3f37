// P9: notifier callbacks re-entering the IOASID core. Callbacks put the notified ID (its last
// reference included), free other IDs, allocate, destroy the set, and register or unregister
// notifiers while an event is being delivered. What must hold every time: no double free (a
// custom allocator sees each ID freed once), no lost event (every listener on the chain at
// emission gets it, each transition once), no crash, and the invariants after.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { INVALID_IOASID, IOASID_SET_TYPE_NULL, IOASID_STATE_FREE_PENDING, type IoasidSet } from './ioasid.ts';
import { IOASID_NOTIFY_BIND, IOASID_NOTIFY_FREE, IOASID_NOTIFY_UNBIND } from './notifier.ts';
import {
  assertSet,
  brief,
  type Ev,
  type Fixture,
  fixture,
  lowestFreeFns,
  opsOf,
  Recorder,
} from './test-util.ts';

function setup(quota = 50): Fixture & {
  s: IoasidSet;
  log: Ev[];
  g: Recorder;
  r: Recorder;
  fns: ReturnType<typeof lowestFreeFns>;
} {
  const f = fixture();
  const c = f.m.ioasid;
  // A custom allocator with a visible backing store: every free it receives is logged.
  const fns = lowestFreeFns(1, 1000);
  assert.equal(c.ioasidRegisterAllocator(opsOf(fns)), 0);
  const s = c.ioasidSetAlloc(null, quota, IOASID_SET_TYPE_NULL);
  assertSet(s);
  const log: Ev[] = [];
  const g = new Recorder('g', 0, log);
  const r = new Recorder('s', 0, log);
  c.ioasidRegisterNotifier(null, g);
  c.ioasidRegisterNotifier(s, r);
  return { ...f, s, log, g, r, fns };
}

function frees(fns: { calls: string[] }): string[] {
  return fns.calls.filter((x) => x.startsWith('free'));
}

describe('P9: notifier callbacks re-entering the core', () => {
  test('P9: a FREE callback puts the allocation reference: reclaimed once, the free does not drop it again', () => {
    const { m, s, log, g, fns, warnings } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    const results: boolean[] = [];
    g.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_FREE) results.push(c.ioasidPut(null, args.id));
    };
    c.ioasidFree(s, id);
    assert.deepEqual(results, [false], 'pinned during delivery: the put cannot reclaim under the caller');
    assert.deepEqual(brief(log).slice(1), ['g:FREE:1', 's:FREE:1'], 'the set chain still got it');
    assert.equal(c.inspect(id), undefined);
    assert.deepEqual(frees(fns), ['free(1)']);
    assert.equal(s.nrIoasids, 0);
    warnings();
    assert.equal(c.ioasidAlloc(s, 1, 100), id, 'reusable afterwards');
    m.checkInvariants();
  });

  test('P9: a put beyond the references held is refused with a warning (refcount underflow)', () => {
    const { m, s, g, fns, warnings } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    const results: boolean[] = [];
    g.on = (ev, args) => {
      if (ev !== IOASID_NOTIFY_FREE) return;
      for (let i = 0; i < 3; i++) results.push(c.ioasidPut(null, args.id));
    };
    warnings();
    c.ioasidFree(s, id);
    assert.deepEqual(results, [false, false, false]);
    const w = warnings();
    assert.equal(w.filter((e) => String(e['msg']).includes('underflow')).length, 2);
    assert.deepEqual(frees(fns), ['free(1)']);
    assert.equal(c.liveCount, 0);
    m.checkInvariants();
  });

  test('P9: the VT-d listener pattern: bind took a reference, FREE drops it, the free drops its own', () => {
    const { m, s, log, g, fns } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    assert.equal(c.ioasidGet(null, id), 0, 'the bind reference');
    g.on = (ev, args) => {
      if (ev !== IOASID_NOTIFY_FREE) return;
      c.ioasidDetachData(args.id);
      c.ioasidPut(null, args.id);
    };
    c.ioasidFree(s, id);
    assert.equal(c.liveCount, 0);
    assert.deepEqual(frees(fns), ['free(1)']);
    assert.deepEqual(brief(log), ['s:ALLOC:1', 'g:FREE:1', 's:FREE:1']);
    m.checkInvariants();
  });

  test('P9: with another holder, a callback put of two references leaves nothing for the free to drop', () => {
    const { m, s, g, fns, warnings } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    c.ioasidGet(s, id);
    g.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_FREE) {
        c.ioasidPut(null, args.id);
        c.ioasidPut(null, args.id);
      }
    };
    warnings();
    c.ioasidFree(s, id);
    assert.equal(warnings().length, 0);
    assert.equal(c.liveCount, 0);
    assert.deepEqual(frees(fns), ['free(1)']);
    m.checkInvariants();
  });

  test('P9: a callback that frees the notified ID again: no second FREE, one reference dropped', () => {
    const { m, s, log, g, fns } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    c.ioasidGet(s, id);
    g.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_FREE) c.ioasidFree(s, args.id);
    };
    c.ioasidFree(s, id);
    assert.deepEqual(brief(log).slice(1), ['g:FREE:1', 's:FREE:1']);
    assert.equal(c.inspect(id)?.users, 1);
    assert.equal(c.inspect(id)?.state, IOASID_STATE_FREE_PENDING);
    c.ioasidPut(s, id);
    assert.deepEqual(frees(fns), ['free(1)']);
    m.checkInvariants();
  });

  test('P9: callbacks that free other IDs: every event delivered once to every listener', () => {
    const { m, s, log, g, fns } = setup();
    const c = m.ioasid;
    const ids = [1, 2, 3, 4].map(() => c.ioasidAlloc(s, 1, 100));
    log.length = 0;
    // Freeing 1 frees 3, which frees 2 (nested twice); 4 stays.
    g.on = (ev, args) => {
      if (ev !== IOASID_NOTIFY_FREE) return;
      if (args.id === 1) c.ioasidFree(s, 3);
      if (args.id === 3) c.ioasidFree(s, 2);
      if (args.id === 2) c.ioasidFree(s, 1); // already FREE_PENDING: nothing
    };
    c.ioasidFree(s, ids[0]!);
    assert.deepEqual(brief(log), ['g:FREE:1', 'g:FREE:3', 'g:FREE:2', 's:FREE:2', 's:FREE:3', 's:FREE:1']);
    assert.deepEqual(frees(fns).sort(), ['free(1)', 'free(2)', 'free(3)']);
    assert.equal(c.liveCount, 1);
    assert.equal(s.nrIoasids, 1);
    m.checkInvariants();
  });

  test('P9: a long cascade of nested frees (each FREE frees the next ID)', () => {
    const { m, s, log, g, fns } = setup(300);
    const c = m.ioasid;
    for (let i = 0; i < 300; i++) c.ioasidAlloc(s, 1, 1000);
    log.length = 0;
    g.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_FREE && args.id < 300) c.ioasidFree(s, args.id + 1);
    };
    c.ioasidFree(s, 1);
    assert.equal(log.length, 600);
    assert.equal(c.liveCount, 0);
    assert.equal(frees(fns).length, 300);
    m.checkInvariants();
  });

  test('P9: a callback that allocates: the ID being freed is not handed out while pinned', () => {
    const { m, s, log, g, fns } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 1);
    assert.equal(id, 1);
    const got: number[] = [];
    g.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_FREE && args.id === 1) {
        got.push(c.ioasidAlloc(s, 1, 1));
        got.push(c.ioasidAlloc(s, 1, 5, 'new'));
      }
    };
    c.ioasidFree(s, id);
    assert.deepEqual(got, [INVALID_IOASID, 2]);
    assert.deepEqual(brief(log), ['s:ALLOC:1', 'g:FREE:1', 's:ALLOC:2', 's:FREE:1']);
    assert.equal(c.inspect(1), undefined);
    assert.equal(c.ioasidFind(s, 2), 'new');
    assert.deepEqual(frees(fns), ['free(1)']);
    m.checkInvariants();
  });

  test('P9: a global FREE callback that destroys the set: no lost event, no double free', () => {
    const { m, s, log, g, fns } = setup();
    const c = m.ioasid;
    for (let i = 0; i < 4; i++) c.ioasidAlloc(s, 1, 100);
    c.ioasidGet(s, 4);
    log.length = 0;
    g.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_FREE && args.id === 2) c.ioasidSetPut(s);
    };
    c.ioasidFree(s, 2);
    // 2's FREE reached the set chain although the set died while the global chain ran.
    assert.deepEqual(brief(log), [
      'g:FREE:2',
      'g:FREE:1',
      's:FREE:1',
      'g:FREE:3',
      's:FREE:3',
      'g:FREE:4',
      's:FREE:4',
      's:FREE:2',
    ]);
    assert.equal(c.isValidSet(s), false);
    assert.deepEqual(c.setMembers(s), [4], '4 is still referenced');
    assert.deepEqual(frees(fns).sort(), ['free(1)', 'free(2)', 'free(3)']);
    assert.equal(c.ioasidPut(s, 4), true);
    assert.deepEqual(frees(fns).length, 4);
    assert.equal(c.liveCount, 0);
    assert.equal(c.liveSets().length, 0);
    assert.equal(c.capacityAvailable, c.ioasidGetCapacity());
    m.checkInvariants();
  });

  test('P9: a set-chain callback during destroy puts the last reference of lingering IDs', () => {
    const { m, s, log, r, fns } = setup();
    const c = m.ioasid;
    for (let i = 0; i < 3; i++) {
      const id = c.ioasidAlloc(s, 1, 100);
      c.ioasidGet(s, id); // a device holds each
    }
    log.length = 0;
    r.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_FREE) c.ioasidPut(args.set, args.id); // the device lets go
    };
    c.ioasidSetPut(s);
    assert.deepEqual(brief(log), ['g:FREE:1', 's:FREE:1', 'g:FREE:2', 's:FREE:2', 'g:FREE:3', 's:FREE:3']);
    assert.equal(c.liveCount, 0);
    assert.deepEqual(frees(fns), ['free(1)', 'free(2)', 'free(3)']);
    assert.equal(c.liveSets().length, 0);
    m.checkInvariants();
  });

  test('P9: a callback that destroys the set during destroy, or twice: a warning, nothing else', () => {
    const { m, s, log, r, fns, warnings } = setup();
    const c = m.ioasid;
    c.ioasidAlloc(s, 1, 100);
    c.ioasidAlloc(s, 1, 100);
    log.length = 0;
    r.on = () => {
      c.ioasidSetPut(s);
    };
    warnings();
    c.ioasidSetPut(s);
    assert.equal(warnings().length, 2);
    assert.equal(log.length, 4);
    assert.deepEqual(frees(fns), ['free(1)', 'free(2)']);
    m.checkInvariants();
  });

  test('P9: an ALLOC callback that frees the new ID: one ALLOC, one FREE, reclaimed', () => {
    const { m, s, log, r, fns } = setup();
    const c = m.ioasid;
    r.on = (ev, args) => {
      if (ev === 1) c.ioasidFree(s, args.id);
    };
    c.ioasidAlloc(s, 1, 100);
    assert.deepEqual(brief(log), ['s:ALLOC:1', 'g:FREE:1', 's:FREE:1']);
    assert.equal(c.liveCount, 0);
    assert.deepEqual(frees(fns), ['free(1)']);
    m.checkInvariants();
  });

  test('P9: an ALLOC callback that allocates again stops at the quota', () => {
    const { m, s, log, r } = setup(5);
    const c = m.ioasid;
    r.on = (ev) => {
      if (ev === 1) c.ioasidAlloc(s, 1, 100);
    };
    c.ioasidAlloc(s, 1, 100);
    assert.equal(log.length, 5);
    assert.equal(s.nrIoasids, 5);
    m.checkInvariants();
  });

  test('P9: register/unregister during delivery: the walk uses the chains as they were at emission', () => {
    const { m, s, log, g, r } = setup();
    const c = m.ioasid;
    const later = new Recorder('later', 0, log);
    c.ioasidRegisterNotifier(null, later);
    const late = new Recorder('late', 0, log);
    const sLate = new Recorder('sLate', 0, log);
    const a = c.ioasidAlloc(s, 1, 100);
    const b = c.ioasidAlloc(s, 1, 100);
    log.length = 0;
    let first = true;
    g.on = (ev) => {
      if (ev !== IOASID_NOTIFY_FREE || !first) return;
      first = false;
      c.ioasidRegisterNotifier(null, late);
      c.ioasidUnregisterNotifier(null, later);
      c.ioasidRegisterNotifier(s, sLate);
      c.ioasidUnregisterNotifier(s, r);
    };
    c.ioasidFree(s, a);
    assert.deepEqual(brief(log), ['g:FREE:1', 'later:FREE:1', 's:FREE:1']);
    log.length = 0;
    c.ioasidFree(s, b);
    assert.deepEqual(brief(log), ['g:FREE:2', 'late:FREE:2', 'sLate:FREE:2']);
    m.checkInvariants();
  });

  test('P9: an UNBIND callback that detaches the SPID again: no recursion, one UNBIND', () => {
    const { m, s, log, r } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    c.ioasidAttachSpid(id, 33);
    let calls = 0;
    r.on = (ev, args) => {
      if (ev !== IOASID_NOTIFY_UNBIND) return;
      if (++calls > 10) throw new Error('recursion');
      c.ioasidDetachSpid(args.id);
    };
    c.ioasidDetachSpid(id);
    assert.equal(calls, 1);
    assert.deepEqual(
      log.filter((e) => e.event === 'IOASID_NOTIFY_UNBIND').map((e) => e.spid),
      [33],
    );
    assert.equal(c.inspect(id)?.spid, INVALID_IOASID);
    m.checkInvariants();
  });

  test('P9: a BIND callback that detaches, and an UNBIND callback that re-binds', () => {
    const { m, s, log, r } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    let rebound = false;
    r.on = (ev, args) => {
      if (ev === IOASID_NOTIFY_BIND && args.spid === 1) c.ioasidDetachSpid(args.id);
      if (ev === IOASID_NOTIFY_UNBIND && !rebound) {
        rebound = true;
        assert.equal(c.ioasidAttachSpid(args.id, 2), 0);
      }
    };
    assert.equal(c.ioasidAttachSpid(id, 1), 0);
    assert.deepEqual(
      log.slice(1).map((e) => [e.event.replace('IOASID_NOTIFY_', ''), e.spid]),
      [
        ['BIND', 1],
        ['UNBIND', 1],
        ['BIND', 2],
      ],
    );
    assert.equal(c.inspect(id)?.spid, 2, 'the re-bind inside the UNBIND callback is kept');
    assert.equal(c.ioasidFindBySpid(s, 2), id);
    assert.equal(c.ioasidFindBySpid(s, 1), INVALID_IOASID);
    m.checkInvariants();
  });

  test('P9: the pin is per record: a callback that switches allocators may put a same-numbered ID', () => {
    const { m, s, g, fns, warnings } = setup();
    const c = m.ioasid;
    const x = c.ioasidAlloc(s, 5, 5);
    const got: unknown[] = [];
    g.on = (ev) => {
      if (ev !== IOASID_NOTIFY_FREE) return;
      g.on = null;
      c.ioasidUnregisterAllocator(opsOf(fns)); // x becomes an orphan mid-delivery
      const y = c.ioasidAlloc(s, x, x); // the default allocator: same number, another record
      got.push(y, c.ioasidPut(s, y), c.inspect(y));
    };
    warnings();
    c.ioasidFree(s, x);
    assert.deepEqual(got, [x, true, undefined], "the new record's only reference was dropped");
    assert.equal(
      warnings().filter((e) => String(e['msg']).includes('underflow')).length,
      0,
      'not mistaken for the pinned orphan',
    );
    assert.equal(c.liveCount, 0);
    assert.deepEqual(c.orphans(), []);
    m.checkInvariants();
  });

  test('P9: a FREE callback on an ID with a SPID: find_by_spid refuses it (P2), detach works', () => {
    const { m, s, log, g } = setup();
    const c = m.ioasid;
    const id = c.ioasidAlloc(s, 1, 100);
    c.ioasidAttachSpid(id, 7);
    const seen: number[] = [];
    g.on = (ev, args) => {
      if (ev !== IOASID_NOTIFY_FREE) return;
      seen.push(c.ioasidFindBySpid(s, 7));
      c.ioasidDetachSpid(args.id);
    };
    c.ioasidFree(s, id);
    assert.deepEqual(seen, [INVALID_IOASID]);
    assert.deepEqual(brief(log).slice(2), ['g:FREE:1', 's:UNBIND:1', 's:FREE:1']);
    assert.equal(log.at(-1)?.spid, 7, 'the payload is a snapshot taken at emission');
    assert.equal(c.liveCount, 0);
    m.checkInvariants();
  });
});
