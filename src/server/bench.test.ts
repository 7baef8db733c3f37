// The wire benchmarks run end to end at a small size (the figures themselves come from
// `pasidkit bench`): a server, a client process, result lines of the WORKLOADS.md shape, and the
// Redis anchor when Redis is on the machine (never installed by a test).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { benchWirePipelined, benchWireRtt, benchWireRttRedis } from './bench.ts';

test('wire-rtt and wire-pipelined at a small size, and the Redis anchor line', {
  timeout: 60_000,
}, async () => {
  const rtt = await benchWireRtt({ iterations: 300, warmup: 10, rounds: 2, anchor: false });
  assert.ok((rtt['wireOnlyUsPerOp'] as number) > 0);
  assert.ok((rtt['asyncUsPerOp'] as number) > 0);
  assert.equal(rtt.workload, 'wire-rtt');
  assert.equal(rtt.ops, 600);
  assert.ok(rtt.seconds! > 0 && rtt.opsPerSec! > 0 && rtt.usPerOp! > 0);
  const pipe = await benchWirePipelined({ clients: 3, inflight: 4, iterations: 200, warmup: 10 });
  assert.deepEqual([pipe.workload, pipe.ops, pipe.clients, pipe.inflight], ['wire-pipelined', 1200, 3, 4]);
  const redis = await benchWireRttRedis({ requests: 2000, install: false });
  assert.equal(redis.workload, 'wire-rtt');
  assert.equal(redis.impl, 'redis-ping');
  if (redis['skipped'] === undefined) assert.ok(redis.opsPerSec! > 0 && redis.ops === 2000);
  else assert.match(String(redis['skipped']), /not installed/);
});
