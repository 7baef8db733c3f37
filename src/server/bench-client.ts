// The client side of the wire benchmarks (../shared/bench/WORKLOADS.md `wire-rtt`,
// `wire-pipelined`), run by src/server/bench.ts in a process of its own, as the workloads
// require. It drives the project's own client (client.ts) and prints one JSON line with the
// timed figure: {"ops":N,"seconds":S}. Each run is preceded by an untimed warm-up.
//
//   node --import tsx src/server/bench-client.ts rtt SOCKET ITERATIONS WARMUP
//   node --import tsx src/server/bench-client.ts pipelined SOCKET ITERATIONS WARMUP CLIENTS INFLIGHT
//
// One iteration is IOMMU_IOAS_ALLOC then IOMMU_DESTROY of the new IOAS: two operations.

import { PasidkitClient } from './client.ts';

async function rtt(c: PasidkitClient, fd: number, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const id = await c.ioasAlloc(fd);
    await c.destroy(fd, id);
  }
}

/** `inflight` workers share `n` iterations; each has one request outstanding at a time. */
async function pipelined(c: PasidkitClient, fd: number, n: number, inflight: number): Promise<void> {
  let left = n;
  const worker = async () => {
    while (left > 0) {
      left--;
      const id = await c.ioasAlloc(fd);
      await c.destroy(fd, id);
    }
  };
  await Promise.all(Array.from({ length: inflight }, worker));
}

async function main(argv: string[]): Promise<void> {
  const [mode, socket, itersArg, warmArg, clientsArg, inflightArg] = argv;
  const iterations = Number(itersArg);
  const warmup = Number(warmArg);
  if ((mode !== 'rtt' && mode !== 'pipelined') || !socket || !(iterations > 0) || !(warmup >= 0))
    throw new Error('usage: bench-client.ts rtt|pipelined SOCKET ITERATIONS WARMUP [CLIENTS INFLIGHT]');
  const nClients = mode === 'rtt' ? 1 : Number(clientsArg);
  const inflight = mode === 'rtt' ? 1 : Number(inflightArg);
  const clients = await Promise.all(Array.from({ length: nClients }, () => PasidkitClient.connect(socket)));
  const fds = await Promise.all(clients.map((c) => c.open('/dev/iommu')));
  const run = (n: number) =>
    Promise.all(
      clients.map((c, i) => (mode === 'rtt' ? rtt(c, fds[i]!, n) : pipelined(c, fds[i]!, n, inflight))),
    );
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
