// IdTable against an obviously correct model (a sorted Set): lowest-free search over the whole
// u32 space, chunk and word boundaries, the search hint and its pending run, the core's fast
// alloc and free over the flat low arrays, and the self-check.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { IdTable, ownFor } from './id-table.ts';

function modelLowest(used: Set<number>, min: number, max: number): number {
  for (let id = min; id <= max; id++) if (!used.has(id)) return id;
  return -1;
}

// Interesting places: chunk (2^15) and word (32) boundaries, the top of the u32 space.
const BASES = [0, 1, 31, 32, 1023, 32767, 32768, 65535, 2 ** 20 - 2, 2 ** 21 - 1, 2 ** 31 - 5, 2 ** 32 - 40];
const idArb = fc
  .tuple(fc.constantFrom(...BASES), fc.integer({ min: 0, max: 70 }))
  .map(([b, d]) => Math.min(b + d, 2 ** 32 - 1));

type Op =
  | { k: 'take'; min: number; span: number }
  | { k: 'lowest'; min: number; span: number }
  | { k: 'insert'; id: number }
  | { k: 'remove'; id: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constant('take' as const), min: idArb, span: fc.integer({ min: 0, max: 80 }) }),
  fc.record({ k: fc.constant('lowest' as const), min: idArb, span: fc.integer({ min: 0, max: 80 }) }),
  fc.record({ k: fc.constant('insert' as const), id: idArb }),
  fc.record({ k: fc.constant('remove' as const), id: idArb }),
);

describe('IdTable', () => {
  test('random operations agree with a Set, and the self-check holds', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 200 }), (ops) => {
        const t = new IdTable(true);
        const used = new Set<number>();
        for (const op of ops) {
          if (op.k === 'take' || op.k === 'lowest') {
            const max = Math.min(op.min + op.span, 2 ** 32 - 1);
            const want = modelLowest(used, op.min, max);
            if (op.k === 'take') {
              const got = t.takeLowest(op.min, max);
              assert.equal(got, want);
              if (got >= 0) {
                used.add(got);
                assert.ok(t.lastChunk !== undefined && t.chunkOf(got) === t.lastChunk);
              }
            } else {
              assert.equal(t.lowestFree(op.min, max), want);
            }
          } else if (op.k === 'insert') {
            if (!used.has(op.id)) {
              t.insert(op.id);
              used.add(op.id);
            }
          } else {
            const ch = t.chunkOf(op.id);
            assert.equal(ch !== undefined, used.has(op.id));
            if (ch !== undefined) {
              t.remove(ch, op.id);
              used.delete(op.id);
            }
          }
          assert.equal(t.size, used.size);
        }
        assert.equal(t.check(), undefined);
        assert.deepEqual(
          t.ids(),
          [...used].sort((a, b) => a - b),
        );
      }),
      { numRuns: 300 },
    );
  });

  test('a fill of [1, 2^20 - 1] hands out 1, 2, 3, ... then fails', () => {
    const t = new IdTable(false);
    for (let i = 1; i < 2 ** 20; i++) assert.equal(t.takeLowest(1, 2 ** 20 - 1), i);
    assert.equal(t.takeLowest(1, 2 ** 20 - 1), -1);
    assert.equal(t.lowestFree(0, 2 ** 20), 0);
    t.remove(t.chunkOf(77777)!, 77777);
    assert.equal(t.lowestFree(1, 2 ** 20 - 1), 77777);
    assert.equal(t.check(), undefined);
  });

  test('records survive neighbours and are cleared on removal', () => {
    const t = new IdTable(true);
    const a = t.insert(5);
    a.initRecord(5, 3, 1, { x: 1 });
    a.setSpid(5, 0xfffffffe);
    t.insert(6).initRecord(6, 0, 2, null);
    assert.equal(a.getSet(5), 3);
    assert.equal(a.getState(5), 1);
    assert.equal(a.getSpid(5), 0xfffffffe);
    assert.deepEqual(a.getPriv(5), { x: 1 });
    assert.equal(a.getSpid(6), 0xffffffff);
    assert.equal(a.getPriv(6), null);
    t.remove(a, 5);
    t.insert(5).initRecord(5, 1, 1, null);
    assert.equal(a.getSpid(5), 0xffffffff);
    assert.equal(a.getPriv(5), null);
    assert.equal(a.getUsers(5), 1);
  });
  test('fast alloc and free (allocOwned, freeOwned) agree with a Map, with the self-check after every step', () => {
    // Small ranges, two sets and raw inserts, so that holes, the pending run, word and chunk
    // boundaries and the growth of the flat arrays all come up often.
    const fastOp = fc.oneof(
      fc.record({
        k: fc.constant('alloc' as const),
        set: fc.integer({ min: 0, max: 1 }),
        min: fc.constantFrom(0, 1, 30, 32767),
        span: fc.integer({ min: 0, max: 200 }),
      }),
      fc.record({
        k: fc.constant('free' as const),
        set: fc.integer({ min: 0, max: 1 }),
        id: fc.oneof(fc.integer({ min: 0, max: 240 }), fc.integer({ min: 32760, max: 32900 })),
      }),
      fc.record({
        k: fc.constant('insert' as const),
        id: fc.oneof(fc.integer({ min: 0, max: 240 }), fc.integer({ min: 32760, max: 32900 })),
      }),
    );
    fc.assert(
      fc.property(fc.array(fastOp, { maxLength: 150 }), (ops) => {
        const t = new IdTable(true);
        const used = new Map<number, number>(); // id -> set (-1: a raw insert, no record)
        for (const op of ops) {
          if (op.k === 'alloc') {
            const max = op.min + op.span;
            let want = -1;
            for (let id = op.min; id <= max; id++)
              if (!used.has(id)) {
                want = id;
                break;
              }
            const got = t.allocOwned(op.min, max, ownFor(op.set, 1), null);
            assert.equal(got, want);
            if (got >= 0) used.set(got, op.set);
          } else if (op.k === 'free') {
            const ok = t.freeOwned(op.id, ownFor(op.set, 1));
            assert.equal(ok, used.get(op.id) === op.set);
            if (ok) used.delete(op.id);
          } else if (!used.has(op.id)) {
            t.insert(op.id);
            used.set(op.id, -1);
          }
          assert.equal(t.size, used.size);
          assert.equal(t.check(), undefined);
        }
        assert.deepEqual(
          t.ids(),
          [...used.keys()].sort((a, b) => a - b),
        );
      }),
      { numRuns: 150 },
    );
  });

  test('a hole in the hint: filling it runs the hint on over the pending run', () => {
    const t = new IdTable(true);
    const own = ownFor(0, 1);
    for (let i = 1; i <= 5000; i++) assert.equal(t.allocOwned(1, 0xfffff, own, null), i);
    // A churn step: free something low, allocate the lowest free (the hole), then the next
    // allocation must be the frontier, found from the pending run without a search.
    assert.ok(t.freeOwned(1234, own));
    assert.equal(t.check(), undefined);
    assert.equal(t.allocOwned(1, 0xfffff, own, null), 1234);
    assert.equal(t.allocOwned(1, 0xfffff, own, null), 5001);
    // A free inside the pending run cuts it short; the hint never claims a free ID.
    assert.ok(t.freeOwned(100, own));
    assert.ok(t.freeOwned(3000, own));
    assert.equal(t.check(), undefined);
    assert.equal(t.allocOwned(1, 0xfffff, own, null), 100);
    assert.equal(t.allocOwned(1, 0xfffff, own, null), 3000);
    assert.equal(t.allocOwned(1, 0xfffff, own, null), 5002);
    assert.equal(t.check(), undefined);
  });
  test('a removal leaves the compact record behind, and no reader takes it for a present ID', () => {
    const t = new IdTable(true);
    const a = ownFor(0, 1);
    const b = ownFor(1, 1);
    // Two sets' SIMPLE IDs in the low chunks: the group is mixed, so the u16 decides.
    assert.equal(t.allocOwned(1, 100, a, { n: 1 }), 1);
    assert.equal(t.allocOwned(1, 100, b, null), 2);
    assert.equal(t.allocOwned(3_000_000, 3_000_100, a, null), 3_000_000);
    assert.equal(t.allocOwned(3_000_000, 3_000_100, b, null), 3_000_001);
    assert.ok(t.freeOwned(1, a));
    assert.ok(t.freeOwned(3_000_000, a));
    // Freed: a second free and a lookup fail although the stale u16 still says "set a".
    assert.equal(t.freeOwned(1, a), false);
    assert.equal(t.freeOwned(3_000_000, a), false);
    assert.equal(t.lookupActive(1, 1), undefined);
    assert.equal(t.size, 2);
    // A raw insert over the stale record starts with none.
    t.insert(1);
    assert.equal(t.freeOwned(1, a), false);
    assert.equal(t.lookupActive(1, 1), undefined);
    assert.equal(t.check(), undefined);
  });
});
