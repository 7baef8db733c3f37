// The client side of the wire benchmarks (../shared/bench/WORKLOADS.md `wire-rtt`,
// `wire-pipelined`), run by src/server/bench.ts in a process of its own, as the workloads
// require. It drives the project's own clients and prints one JSON line with the timed figure:
// {"ops":N,"seconds":S}. Each run is preceded by an untimed warm-up.
//
//   node --import tsx src/server/bench-client.ts rtt SOCKET ITERATIONS WARMUP 1 1 [ioas|null]
//   node --import tsx src/server/bench-client.ts rtt-async SOCKET ITERATIONS WARMUP 1 1 [ioas|null]
//   node --import tsx src/server/bench-client.ts pipelined SOCKET ITERATIONS WARMUP CLIENTS INFLIGHT [ioas|null]
//
// `rtt` uses the synchronous client (sync-client.ts), the one made for one request in flight;
// `rtt-async` the same loop on the pipelined client (client.ts), awaiting each reply; and
// `pipelined` the pipelined client with INFLIGHT requests outstanding per connection.
//
// One iteration is IOMMU_IOAS_ALLOC then IOMMU_DESTROY of the new IOAS: two operations. With
// `null` it is two VFIO_GET_API_VERSION calls instead, ioctls that do next to nothing: the
// figure is then that of the wire layer alone (framing, sockets, both event loops).

import { IOCTLS } from '../iommufd/uapi/index.ts';
import { PasidkitClient } from './client.ts';
import { PasidkitSyncClient } from './sync-client.ts';

/**
 * `inflight` workers share `n` iterations; each has one request outstanding at a time. The
 * iteration is written out in each worker's loop, so that an operation costs the client one
 * promise and one resumption, no more.
 */
function drive(
  c: PasidkitClient,
  fd: number,
  n: number,
  inflight: number,
  op: 'ioas' | 'null',
): Promise<unknown> {
  let left = n;
  const ioas = async () => {
    while (left > 0) {
      left--;
      const id = await c.ioasAlloc(fd);
      await c.destroy(fd, id);
    }
  };
  const nul = async () => {
    while (left > 0) {
      left--;
      await c.ioctlValue(fd, GET_API_VERSION, 0);
      await c.ioctlValue(fd, GET_API_VERSION, 0);
    }
  };
  const workers: Promise<void>[] = [];
  for (let i = 0; i < inflight; i++) workers.push(op === 'ioas' ? ioas() : nul());
  return Promise.all(workers);
}

const GET_API_VERSION = IOCTLS.VFIO_GET_API_VERSION.cmd;

/** The `rtt` loop on the synchronous client: each call returns with its answer. */
function driveSync(c: PasidkitSyncClient, fd: number, n: number, op: 'ioas' | 'null'): void {
  if (op === 'ioas') for (let i = 0; i < n; i++) c.destroy(fd, c.ioasAlloc(fd));
  else
    for (let i = 0; i < n; i++) {
      c.ioctlValue(fd, GET_API_VERSION, 0);
      c.ioctlValue(fd, GET_API_VERSION, 0);
    }
}

function runSync(socket: string, iterations: number, warmup: number, op: 'ioas' | 'null'): void {
  const c = new PasidkitSyncClient(socket);
  const fd = c.open('/dev/iommu');
  driveSync(c, fd, warmup, op);
  const t0 = performance.now();
  driveSync(c, fd, iterations, op);
  const seconds = (performance.now() - t0) / 1000;
  c.end();
  process.stdout.write(`${JSON.stringify({ ops: 2 * iterations, seconds })}\n`);
}

async function main(argv: string[]): Promise<void> {
  const [mode, socket, itersArg, warmArg, clientsArg, inflightArg, opArg] = argv;
  const iterations = Number(itersArg);
  const warmup = Number(warmArg);
  const rtt = mode === 'rtt' || mode === 'rtt-async';
  const nClients = rtt ? 1 : Number(clientsArg);
  const inflight = rtt ? 1 : Number(inflightArg);
  const op = opArg ?? 'ioas';
  if (
    (!rtt && mode !== 'pipelined') ||
    !socket ||
    !(iterations > 0) ||
    !(warmup >= 0) ||
    !(nClients > 0 && inflight > 0) ||
    (op !== 'ioas' && op !== 'null')
  )
    throw new Error(
      'usage: bench-client.ts rtt|rtt-async|pipelined SOCKET ITERATIONS WARMUP CLIENTS INFLIGHT [ioas|null]',
    );
  if (mode === 'rtt') return runSync(socket, iterations, warmup, op);
  const clients = await Promise.all(Array.from({ length: nClients }, () => PasidkitClient.connect(socket)));
  const fds = await Promise.all(clients.map((c) => c.open('/dev/iommu')));
  const run = (n: number) => Promise.all(clients.map((c, i) => drive(c, fds[i]!, n, inflight, op)));
  await run(warmup);
  const t0 = performance.now();
  await run(iterations);
  const seconds = (performance.now() - t0) / 1000;
  await Promise.all(clients.map((c) => c.end()));
  process.stdout.write(`${JSON.stringify({ ops: 2 * iterations * nClients, seconds })}\n`);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`bench-client: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
