// The fast paths of ioasidAlloc, ioasidFree and ioasidFind run only when nothing observes the
// core (no debug checks, tracer or armed faults), which is exactly when the rest of the suite
// (PASIDKIT_DEBUG=1) never takes them. This test runs random sequences on two cores, one quiet
// (fast paths) and one with a tracer (full paths only), and requires identical results and
// identical final state, then the invariants on the quiet one.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { KernelError } from '../core/errno.ts';
import { INVALID_IOASID, IOASID_SET_TYPE_NULL, IoasidCore, IoasidSet } from './ioasid.ts';
import type { NotifierBlock } from './notifier.ts';

type Op =
  | { k: 'alloc'; s: number; min: number; span: number; data: boolean }
  // recent: `id` picks one of the IDs allocated so far (the latest first) instead of naming one
  | { k: 'free' | 'find' | 'get' | 'put'; s: number; id: number; recent: boolean }
  | { k: 'spid'; id: number; spid: number }
  | { k: 'listen'; s: number };

// Mostly small IDs, where sets collide; some across the first chunk boundary (the flat low
// arrays grow there) and some past the flat low range (2^21: chunks of their own).
const small = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0, max: 40 }) },
  { weight: 1, arbitrary: fc.integer({ min: 32760, max: 32780 }) },
  { weight: 1, arbitrary: fc.integer({ min: 2 ** 21 - 10, max: 2 ** 21 + 10 }) },
);
const INSPECT = [
  ...Array.from({ length: 91 }, (_, i) => i),
  ...Array.from({ length: 61 }, (_, i) => 32760 + i),
  ...Array.from({ length: 61 }, (_, i) => 2 ** 21 - 10 + i),
];
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      k: fc.constant('alloc' as const),
      s: fc.integer({ min: 0, max: 2 }),
      min: small,
      span: small,
      data: fc.boolean(),
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      k: fc.constantFrom('free' as const, 'find' as const, 'get' as const, 'put' as const),
      s: fc.integer({ min: -1, max: 2 }),
      id: small,
      recent: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('spid' as const), id: small, spid: small }) },
  {
    weight: 1,
    arbitrary: fc.record({ k: fc.constant('listen' as const), s: fc.integer({ min: -1, max: 2 }) }),
  },
);

function norm(v: unknown): unknown {
  return v instanceof KernelError ? { errno: v.code } : v;
}

function runOn(core: IoasidCore, ops: Op[]): unknown[] {
  const sets: IoasidSet[] = [];
  for (let i = 0; i < 3; i++) {
    const s = core.ioasidSetAlloc(null, 6 + i * 4, IOASID_SET_TYPE_NULL);
    assert.ok(s instanceof IoasidSet);
    sets.push(s);
  }
  const setOf = (i: number) => (i < 0 ? null : sets[i]!);
  const out: unknown[] = [];
  const heard: unknown[] = [];
  // IDs handed out so far, so that frees, finds, gets and puts often name a real one (and free
  // it twice, or from the wrong set) rather than a random number that is mostly absent.
  const given: number[] = [];
  const idOf = (op: { id: number; recent: boolean }) =>
    op.recent && given.length > 0 ? given[given.length - 1 - (op.id % given.length)]! : op.id;
  for (const op of ops) {
    switch (op.k) {
      case 'alloc': {
        const id = core.ioasidAlloc(sets[op.s]!, op.min, op.min + op.span, op.data ? { d: op.min } : null);
        if (id !== INVALID_IOASID) given.push(id);
        out.push(id);
        break;
      }
      case 'free':
        core.ioasidFree(setOf(op.s), idOf(op));
        out.push(null);
        break;
      case 'find':
        out.push(norm(core.ioasidFind(setOf(op.s), idOf(op))));
        break;
      case 'get':
        out.push(norm(core.ioasidGet(setOf(op.s), idOf(op))));
        break;
      case 'put':
        out.push(core.ioasidPut(setOf(op.s), idOf(op)));
        break;
      case 'spid':
        out.push(norm(core.ioasidAttachSpid(op.id, op.spid)));
        break;
      case 'listen': {
        const nb: NotifierBlock = {
          priority: 0,
          notifierCall: (e, a) => {
            heard.push([e, a.id]);
            return 0;
          },
        };
        out.push(norm(core.ioasidRegisterNotifier(setOf(op.s), nb)));
        break;
      }
    }
  }
  out.push(heard);
  for (const id of INSPECT) {
    const r = core.inspect(id);
    out.push(r === undefined ? null : { ...r, set: r.set === undefined ? null : sets.indexOf(r.set) });
  }
  out.push(
    core.liveCount,
    sets.map((s) => s.nrIoasids),
  );
  return out;
}

test('fast paths give exactly what the full paths give', () => {
  fc.assert(
    // A global listener turns the fast free off for the rest of a run: most runs have none,
    // so that the fast free meets every state (mixed owners, stale records, double frees).
    fc.property(fc.boolean(), fc.array(opArb, { minLength: 10, maxLength: 150 }), (global, all) => {
      const ops = global ? all : all.filter((o) => !(o.k === 'listen' && o.s < 0));
      const quiet = new IoasidCore({ debug: false });
      const watched = new IoasidCore({ debug: false, tracer: () => {} });
      assert.deepEqual(runOn(quiet, ops), runOn(watched, ops));
      quiet.checkInvariants();
    }),
    { numRuns: 300 },
  );
});
