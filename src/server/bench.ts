// Benchmarks `wire-rtt` and `wire-pipelined` of ../shared/bench/WORKLOADS.md: the server on a
// Unix socket in this process, the project's own client (bench-client.ts) in a process of its
// own; one iteration is IOMMU_IOAS_ALLOC then IOMMU_DESTROY of it (two operations).
//
//   wire-rtt        one client, one request in flight, 100,000 iterations (200,000 ops): the
//                   synchronous client, and for comparison the pipelined one awaiting each reply
//   wire-pipelined  8 clients at once, each with up to 32 requests in flight, 100,000
//                   iterations each (200,000 ops each, 1,600,000 in all); the 8 connections
//                   share one client process, so that on a small machine the figure measures
//                   the server rather than process scheduling
//
// The anchor of `wire-rtt` is Redis: `redis-benchmark -t ping_mbulk -c 1 -P 1` over a Unix
// socket, against a redis-server this module starts on a temporary socket and stops, in the
// same run, interleaved with the timed parts of wire-rtt (see benchWireRtt). Without Redis on
// the machine (as root with apt-get, it is installed from Debian's packages first) the anchor
// line says why it is missing instead of a figure.
//
// Both lines also give the figure of the wire layer alone (`wireOnly...`): the same clients
// with ioctls that do next to nothing, which separates the cost of framing, sockets and event
// loops from the cost of the ioctls in the engine.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { debugEnabled, setDebug } from '../core/invariants.ts';
import { WireServer } from './server.ts';

export interface WireBenchResult {
  workload: string;
  impl?: string;
  ops?: number;
  seconds?: number;
  opsPerSec?: number;
  /** Mean latency of one operation, in microseconds. */
  usPerOp?: number;
  [k: string]: unknown;
}

function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'pasidkit-bench-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLIENT = join(ROOT, 'src', 'server', 'bench-client.ts');

function line(
  workload: string,
  ops: number,
  seconds: number,
  extra: Record<string, unknown> = {},
): WireBenchResult {
  return {
    workload,
    ...extra,
    ops,
    seconds: Number(seconds.toFixed(6)),
    opsPerSec: Math.round(ops / seconds),
    usPerOp: Number(((seconds * 1e6) / ops).toFixed(2)),
  };
}

/** Runs `fn` against a fresh server on a temporary Unix socket, debug checks off (they are not the workload). */
async function withServer<T>(fn: (path: string) => Promise<T>): Promise<T> {
  const { dir, cleanup } = tempDir();
  const debug = debugEnabled();
  setDebug(false);
  const server = new WireServer({ log: () => {} });
  try {
    const path = join(dir, 'bench.sock');
    await server.listen({ path });
    return await fn(path);
  } finally {
    await server.close();
    setDebug(debug);
    cleanup();
  }
}

/** Runs bench-client.ts in a child process; resolves with its {ops, seconds}. */
function runClient(args: string[]): Promise<{ ops: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLIENT, ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, PASIDKIT_DEBUG: '0' },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`bench client exited with ${code}: ${err.trim()}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!) as { ops: number; seconds: number });
      } catch {
        reject(new Error(`bench client printed no result: ${out}${err}`));
      }
    });
  });
}

// ---- Redis, the anchor -------------------------------------------------------------------------

function have(cmd: string): boolean {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

/** redis-server and redis-benchmark, installed from Debian's packages if missing and possible. */
function ensureRedis(mayInstall: boolean): string | null {
  if (have('redis-server') && have('redis-benchmark')) return null;
  if (!mayInstall) return 'redis-server/redis-benchmark not installed';
  const root = process.getuid?.() === 0;
  if (!root || !have('apt-get'))
    return 'redis-server/redis-benchmark not installed (apt-get install redis-server redis-tools)';
  process.stderr.write(
    'bench: installing redis-server and redis-tools from Debian packages for the wire-rtt anchor\n',
  );
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'redis-server', 'redis-tools'], {
      stdio: 'ignore',
      env,
      timeout: 300_000,
    }).status === 0;
  if (!install()) {
    spawnSync('apt-get', ['update', '-qq'], { stdio: 'ignore', env, timeout: 300_000 });
    install();
  }
  return have('redis-server') && have('redis-benchmark')
    ? null
    : 'installing redis-server redis-tools failed';
}

let redisLine: WireBenchResult | null = null;

/** Runs `fn` with a redis-server listening on a temporary Unix socket (null: no Redis). */
async function withRedis<T>(
  mayInstall: boolean,
  fn: (sock: string | null, missing: string) => Promise<T>,
): Promise<T> {
  const missing = ensureRedis(mayInstall);
  if (missing !== null) {
    process.stderr.write(`bench: wire-rtt anchor skipped: ${missing}\n`);
    return fn(null, missing);
  }
  const { dir, cleanup } = tempDir();
  const sock = join(dir, 'redis.sock');
  const args = [
    '--port',
    '0',
    '--unixsocket',
    sock,
    '--unixsocketperm',
    '700',
    '--save',
    '',
    '--appendonly',
    'no',
  ];
  const server = spawn('redis-server', [...args, '--dir', dir], { stdio: 'ignore' });
  try {
    const deadline = Date.now() + 10_000;
    while (!existsSync(sock)) {
      if (Date.now() > deadline) throw new Error('redis-server did not start');
      await new Promise((r) => setTimeout(r, 20));
    }
    return await fn(sock, '');
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    cleanup();
  }
}

/** redis-benchmark PING_MBULK, one connection, no pipelining: the seconds `requests` took. */
function redisPing(sock: string, requests: number): number {
  const csv = execFileSync(
    'redis-benchmark',
    ['-s', sock, '-t', 'ping_mbulk', '-c', '1', '-P', '1', '-n', String(requests), '--csv'],
    { encoding: 'utf8', timeout: 300_000 },
  );
  const row = csv
    .split('\n')
    .map((l) => l.split(',').map((f) => f.replace(/"/g, '')))
    .find((f) => f[0] === 'PING_MBULK');
  const rps = Number(row?.[1]);
  if (!(rps > 0)) throw new Error(`unexpected redis-benchmark output: ${csv}`);
  return requests / rps;
}

const skippedAnchor = (why: string): WireBenchResult => ({
  workload: 'wire-rtt',
  impl: 'redis-ping',
  skipped: why,
});

/**
 * The anchor alone: redis-benchmark PING_MBULK, one connection, no pipelining, over a Unix
 * socket to a redis-server started for it.
 */
export async function benchWireRttRedis(
  opts: { requests?: number; install?: boolean } = {},
): Promise<WireBenchResult> {
  const requests = opts.requests ?? 200_000;
  return withRedis(opts.install ?? true, async (sock, missing) =>
    sock === null
      ? skippedAnchor(missing)
      : line('wire-rtt', requests, redisPing(sock, requests), { impl: 'redis-ping' }),
  );
}

// ---- the workloads -----------------------------------------------------------------------------

/**
 * wire-rtt, with its anchor measured in the same run. The shared machines' load drifts by the
 * second, so the 100,000 timed iterations run in `rounds` parts, each right after a Redis part
 * of as many requests as that part has operations; both figures are the sums of their parts
 * (each client part is a fresh client process that warms up untimed first). The client is the
 * synchronous one (sync-client.ts), the project's client for one request in flight. The line
 * carries the ratio of the per-operation latencies (the target is at most 1.2);
 * `asyncUsPerOp` and `asyncRatioToRedis`, the same loop on the pipelined client awaiting each
 * reply, measured in the same rounds; and `wireOnlyUsPerOp`, the synchronous loop with ioctls
 * that do next to nothing: the wire layer without the engine.
 */
export async function benchWireRtt(
  opts: {
    iterations?: number;
    warmup?: number;
    rounds?: number;
    anchor?: boolean;
    wireOnly?: boolean;
    async?: boolean;
  } = {},
): Promise<WireBenchResult> {
  const iterations = opts.iterations ?? 100_000;
  const warmup = opts.warmup ?? 5_000;
  const rounds = Math.max(1, Math.min(opts.rounds ?? 10, iterations));
  const withAsync = opts.async ?? true;
  redisLine = null;
  const anchor = opts.anchor ?? true;
  const body = (sock: string | null, missing: string) =>
    withServer(async (path) => {
      const ours = { ops: 0, seconds: 0 };
      const pipelined = { ops: 0, seconds: 0 };
      const redis = { ops: 0, seconds: 0 };
      const add = (to: { ops: number; seconds: number }, r: { ops: number; seconds: number }) => {
        to.ops += r.ops;
        to.seconds += r.seconds;
      };
      for (let i = 0; i < rounds; i++) {
        const n = Math.floor(iterations / rounds) + (i < iterations % rounds ? 1 : 0);
        if (sock !== null) add(redis, { ops: 2 * n, seconds: redisPing(sock, 2 * n) });
        add(ours, await runClient(['rtt', path, String(n), String(warmup), '1', '1', 'ioas']));
        if (withAsync)
          add(pipelined, await runClient(['rtt-async', path, String(n), String(warmup), '1', '1', 'ioas']));
      }
      const perOp = (r: { ops: number; seconds: number }) => r.seconds / r.ops;
      const extra: Record<string, unknown> = {};
      if (withAsync) extra['asyncUsPerOp'] = Number((perOp(pipelined) * 1e6).toFixed(2));
      if (opts.wireOnly ?? true) {
        const base = await runClient(['rtt', path, String(iterations), String(warmup), '1', '1', 'null']);
        extra['wireOnlyUsPerOp'] = Number((perOp(base) * 1e6).toFixed(2));
      }
      if (sock !== null) {
        redisLine = line('wire-rtt', redis.ops, redis.seconds, { impl: 'redis-ping' });
        extra['redisUsPerOp'] = redisLine.usPerOp;
        extra['ratioToRedis'] = Number((perOp(ours) / perOp(redis)).toFixed(3));
        if (withAsync) extra['asyncRatioToRedis'] = Number((perOp(pipelined) / perOp(redis)).toFixed(3));
      } else if (anchor) redisLine = skippedAnchor(missing);
      return line('wire-rtt', ours.ops, ours.seconds, { ...extra, rounds });
    });
  return anchor ? withRedis(true, body) : body(null, '');
}

/** The anchor line for the bench table: the Redis figure of the last wire-rtt run (or a new one). */
export async function benchWireRttAnchor(): Promise<WireBenchResult> {
  return redisLine ?? (await benchWireRttRedis());
}

/**
 * wire-pipelined: 8 clients, up to 32 in flight each, 200,000 operations each.
 * `wireOnlyOpsPerSec` is the same run with ioctls that do next to nothing.
 */
export async function benchWirePipelined(
  opts: {
    clients?: number;
    inflight?: number;
    iterations?: number;
    warmup?: number;
    wireOnly?: boolean;
  } = {},
): Promise<WireBenchResult> {
  const clients = opts.clients ?? 8;
  const inflight = opts.inflight ?? 32;
  const iterations = opts.iterations ?? 100_000;
  const warmup = opts.warmup ?? 10_000;
  const { r, base } = await withServer(async (path) => {
    const run = (op: string) =>
      runClient([
        'pipelined',
        path,
        String(iterations),
        String(warmup),
        String(clients),
        String(inflight),
        op,
      ]);
    const r = await run('ioas');
    const base = (opts.wireOnly ?? true) ? await run('null') : null;
    return { r, base };
  });
  const extra: Record<string, unknown> = { clients, inflight };
  if (base) extra['wireOnlyOpsPerSec'] = Math.round(base.ops / base.seconds);
  return line('wire-pipelined', r.ops, r.seconds, extra);
}
