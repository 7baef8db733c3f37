// The fast paths of ioasidAlloc, ioasidFree and ioasidFind run only when nothing observes the
// core (no debug checks, tracer or armed faults), which is exactly when the rest of the suite
// (PASIDKIT_DEBUG=1) never takes them. This test runs random sequences on two cores, one quiet
// (fast paths) and one with a tracer (full paths only), and requires identical results and
// identical final state, then the invariants on the quiet one.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { KernelError } from '../core/errno.ts';
import { IOASID_SET_TYPE_NULL, IoasidCore, IoasidSet } from './ioasid.ts';
import type { NotifierBlock } from './notifier.ts';

type Op =
  | { k: 'alloc'; s: number; min: number; span: number; data: boolean }
  | { k: 'free' | 'find' | 'get' | 'put'; s: number; id: number }
  | { k: 'spid'; id: number; spid: number }
  | { k: 'listen'; s: number };

const small = fc.integer({ min: 0, max: 40 });
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
  for (const op of ops) {
    switch (op.k) {
      case 'alloc':
        out.push(core.ioasidAlloc(sets[op.s]!, op.min, op.min + op.span, op.data ? { d: op.min } : null));
        break;
      case 'free':
        core.ioasidFree(setOf(op.s), op.id);
        out.push(null);
        break;
      case 'find':
        out.push(norm(core.ioasidFind(setOf(op.s), op.id)));
        break;
      case 'get':
        out.push(norm(core.ioasidGet(setOf(op.s), op.id)));
        break;
      case 'put':
        out.push(core.ioasidPut(setOf(op.s), op.id));
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
  for (let id = 0; id <= 90; id++) {
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
    fc.property(fc.array(opArb, { maxLength: 150 }), (ops) => {
      const quiet = new IoasidCore({ debug: false });
      const watched = new IoasidCore({ debug: false, tracer: () => {} });
      assert.deepEqual(runOn(quiet, ops), runOn(watched, ops));
      quiet.checkInvariants();
    }),
    { numRuns: 400 },
  );
});
