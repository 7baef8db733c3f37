import assert from 'node:assert/strict';
import { test } from 'node:test';
import { benchTranslateIotlbHit } from './bench.ts';

test('translate-iotlb-hit does what WORKLOADS.md defines (its check is the sum of the expected addresses)', () => {
  const n = 200_000;
  const r = benchTranslateIotlbHit(n);
  assert.equal(r.workload, 'translate-iotlb-hit');
  assert.equal(r.ops, n);
  assert.ok(r.seconds > 0 && r.opsPerSec > 0);
  let x = 1;
  let sum = 0n;
  for (let k = 0; k < n; k++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const v = x & 511;
    sum += BigInt(2 ** 30 + ((v * 2654435761) % 16384) * 4096 + (k & 0xff8));
  }
  assert.equal(r.check, sum.toString());
});
