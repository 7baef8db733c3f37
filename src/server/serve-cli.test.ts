// `pasidkit serve` as a process (src/cli/serve.ts): help and exit codes, clean one-line errors
// for bad input (never a stack trace), the Unix socket and loopback TCP at once, the JSON log on
// stderr, ../shared/spec/check/wire-smoke against both addresses (when python3 and the shared
// checks are there), and a graceful SIGTERM that removes the socket file and exits 0.

import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PasidkitClient } from './client.ts';
import { tempDir, until } from './test-utils.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SMOKE = join(ROOT, '..', 'shared', 'spec', 'check', 'wire-smoke');
const havePython = spawnSync('python3', ['--version'], { stdio: 'ignore' }).status === 0;
const RUN =
  "import { cmdServe } from './src/cli/serve.ts'; process.exitCode = await cmdServe(process.argv.slice(1));";

function serve(args: string[]): {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  done: Promise<number>;
} {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', RUN, '--', ...args],
    {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? -1)));
  return { child, out: () => out, err: () => err, done };
}

describe('pasidkit serve', () => {
  test('--help, and exit code 2 with a one-line message for bad input', { timeout: 60_000 }, async () => {
    const { dir, cleanup } = tempDir();
    writeFileSync(join(dir, 'plain'), 'not a socket');
    writeFileSync(join(dir, 'bad.yaml'), 'devices: [{bdf: "zz"}]\n');
    const cases: [string[], number, RegExp][] = [
      [['--help'], 0, /Usage: pasidkit serve/],
      [['--bogus'], 2, /bogus/],
      [['extra'], 2, /unexpected argument extra/],
      [['--listen', '10.1.2.3:80'], 2, /not a loopback address.*--allow-remote/],
      [['--listen', 'nonsense'], 2, /HOST:PORT/],
      [['--listen', '127.0.0.1:70000'], 2, /above 65535/],
      [['--max-frame', '12'], 2, /--max-frame/],
      [['--max-frame', 'lots'], 2, /not a size/],
      [['--max-files', '0'], 2, /at least 1/],
      [['--machine', join(dir, 'missing.yaml')], 2, /cannot read: ENOENT/],
      [['--machine', join(dir, 'bad.yaml')], 2, /bad\.yaml: machine:/],
      [['--socket', join(dir, 'plain')], 2, /not a socket/],
    ];
    const runs = cases.map(([args]) => serve(args));
    const codes = await Promise.all(runs.map((r) => r.done));
    cases.forEach(([args, want, re], i) => {
      const r = runs[i]!;
      assert.equal(codes[i], want, `${args.join(' ')}: ${r.err()}`);
      const text = want === 0 ? r.out() : r.err();
      assert.match(text, re, args.join(' '));
      assert.doesNotMatch(r.err(), /\n\s+at /, 'no stack trace');
    });
    cleanup();
  });

  test('a machine file, Unix socket and loopback TCP, JSON log, wire-smoke, graceful SIGTERM', {
    timeout: 60_000,
  }, async (ctx) => {
    const { dir, cleanup } = tempDir();
    const sock = join(dir, 'p.sock');
    const machine = join(dir, 'machine.yaml');
    writeFileSync(machine, 'scenario: 1\nmachine:\n  devices:\n    - {bdf: "00:02.0"}\nsteps: []\n');
    const s = serve(['--socket', sock, '--listen', '127.0.0.1:0', '--verbose', '--machine', machine]);
    try {
      await until(() => (s.err().match(/"event":"listening"/g) ?? []).length === 2, 20_000, 'listening');
      const port = Number(/"address":"tcp:127\.0\.0\.1:(\d+)"/.exec(s.err())![1]);
      for (const target of [sock, `127.0.0.1:${port}`]) {
        const c = await PasidkitClient.connect(target);
        const fd = await c.open('/dev/iommu');
        assert.equal(await c.ioasAlloc(fd), 1);
        // The machine file's one device, and no other.
        assert.equal(await c.open('/dev/vfio/devices/vfio0'), 1);
        await assert.rejects(c.open('/dev/vfio/devices/vfio1'), /ENOENT/);
        await c.end();
      }
      if (havePython && existsSync(SMOKE)) {
        for (const target of [sock, `tcp://127.0.0.1:${port}`]) {
          const r = spawnSync('python3', [SMOKE, '--socket', target], { encoding: 'utf8', timeout: 20_000 });
          assert.equal(r.status, 0, r.stdout + r.stderr);
          assert.match(r.stdout, /7 passed, 0 failed/);
        }
      } else ctx.diagnostic('wire-smoke skipped: python3 or ../shared/spec/check/wire-smoke is missing');
      // A client still connected when the signal comes is closed by the shutdown.
      const last = await PasidkitClient.connect(sock);
      await last.open('/dev/iommu');
      s.child.kill('SIGTERM');
      assert.equal(await s.done, 0);
      await assert.rejects(last.open('/dev/iommu'), /ECONNRESET/);
      assert.equal(existsSync(sock), false, 'the socket file is removed');
      const lines = s
        .err()
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { event: string });
      const events = new Set(lines.map((l) => l.event));
      for (const e of ['listening', 'connect', 'request', 'disconnect', 'shutdown', 'stopped'])
        assert.ok(events.has(e), e);
    } finally {
      s.child.kill('SIGKILL');
      cleanup();
    }
  });
});
