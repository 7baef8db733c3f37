// The `pasidkit` command. Sub-commands: run (scenario files), bench (the WORKLOADS.md
// benchmarks), demo (what `npm start` runs). Exit codes: 0 ok, 1 an expectation failed,
// 2 usage or input error. Data goes to stdout (`--json` where output is data); diagnostics to
// stderr; colour only on a TTY and never with NO_COLOR.

import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { WORKLOADS } from '../bench/index.ts';
import { setDebug } from '../core/invariants.ts';
import {
  type FileRecord,
  parseScenario,
  runScenario,
  ScenarioSyntaxError,
  type StepRecord,
  show,
  toJsonValue,
} from '../scenario/index.ts';
import { PasidkitSyncClient } from '../server/sync-client.ts';
import { colour, progress, progressDone } from './output.ts';
import { cmdServe } from './serve.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

const HELP = `pasidkit ${VERSION}: an executable model of the Linux IOMMU address-space-ID stack

Usage: pasidkit <command> [options]

Commands:
  run FILE...      run scenario files (SCENARIO.md) and check their expectations
  bench [NAME...]  run the benchmark workloads (../shared/bench/WORKLOADS.md)
  demo             run the bundled example scenarios (what npm start does)
  serve            serve an emulated host's /dev/iommu over a socket (WIRE.md)

Options:
  -h, --help       show help (also: pasidkit <command> --help)
  -V, --version    print the version

Exit codes: 0 ok, 1 an expectation failed, 2 usage or input error.
Environment: PASIDKIT_DEBUG=1 checks the model's invariants after every operation;
PASIDKIT_FAIL_NTH=N fails the Nth allocation (fault injection); NO_COLOR disables colour.`;

const RUN_HELP = `Usage: pasidkit run FILE... [--json] [--trace] [--check] [--fail-nth N] [--connect SOCKET]

Runs each scenario file on a fresh emulated machine, prints every step and its result, and a
closing line "N passed, N failed" over the steps that have an expect.

  --json          one JSON object per line: per step and per file (SCENARIO.md "Output")
  --trace         show the events inside each step (notifications, walks, invalidations)
  --check         assert the model's invariants after every operation (as PASIDKIT_DEBUG=1)
  --fail-nth N    make the Nth allocation of each file fail, as the kernel's fail_nth does
  --connect S     run family 4 (/dev/iommu, VFIO files) as a process of the pasidkit serve at
                  S (a Unix socket path, or HOST:PORT); the other families stay local

Exit codes: 0 every expectation held, 1 one failed, 2 a file was malformed or unreadable.`;

const BENCH_HELP = `Usage: pasidkit bench [NAME...] [--json]

Runs the benchmark workloads of ../shared/bench/WORKLOADS.md (all, or the ones named) and prints
one line per workload; peer implementations get their own line with an "impl" key.

  --json   one JSON object per line (the shape ../shared/bench/ref/run prints)

Workloads: ${WORKLOADS.map((w) => w.name).join(', ')}`;

const DEMO_HELP = `Usage: pasidkit demo [--json]

Runs the example scenarios bundled in examples/ and prints their results.`;

class UsageFailure extends Error {}

type OptionSpec = Record<string, { type: 'boolean' | 'string'; short?: string }>;

function parse(
  args: string[],
  options: OptionSpec,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({
      args,
      options: { help: { type: 'boolean', short: 'h' }, ...options },
      allowPositionals: true,
      strict: true,
    });
    return { values: r.values as Record<string, string | boolean | undefined>, positionals: r.positionals };
  } catch (e) {
    throw new UsageFailure((e as Error).message);
  }
}

function formatStep(r: StepRecord, showTrace: boolean): string {
  const mark = r.ok === null ? '' : r.ok ? colour('green', '  ok') : colour('red', '  FAILED');
  const lines = [`  [${r.step}] ${r.op} -> ${show(r.result)}${mark}`];
  if (r.note) lines.push(colour('dim', `      # ${r.note}`));
  if (r.ok === false) {
    lines.push(`      expected: ${JSON.stringify(toJsonValue(r.expect))}`);
    lines.push(`      actual:   ${show(r.result)}`);
  }
  if (showTrace && r.trace)
    for (const ev of r.trace) lines.push(colour('dim', `      ${JSON.stringify(toJsonValue(ev))}`));
  return lines.join('\n');
}

function runFiles(
  files: string[],
  opts: { json: boolean; trace: boolean; failNth?: number; connect?: string },
): number {
  let passed = 0;
  let failed = 0;
  let malformed = false;
  const out = (s: string) => process.stdout.write(`${s}\n`);
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      malformed = true;
      const msg = `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
      if (opts.json) out(JSON.stringify({ file, passed: 0, failed: 0, error: msg }));
      else process.stderr.write(`${file}: ${msg}\n`);
      continue;
    }
    let scenario: ReturnType<typeof parseScenario>;
    try {
      scenario = parseScenario(file, text);
    } catch (e) {
      if (!(e instanceof ScenarioSyntaxError)) throw e;
      malformed = true;
      if (opts.json) out(JSON.stringify({ file, passed: 0, failed: 0, error: e.message }));
      else process.stderr.write(`${file}: malformed: ${e.message}\n`);
      continue;
    }
    if (!opts.json) out(colour('bold', `${file}: ${scenario.name}`));
    const rec: FileRecord = runScenario(
      scenario,
      {
        trace: opts.trace,
        ...(opts.failNth !== undefined ? { failNth: opts.failNth } : {}),
        ...(opts.connect !== undefined ? { connect: opts.connect } : {}),
      },
      (r) => {
        if (opts.json) {
          const line: Record<string, unknown> = {
            file: r.file,
            step: r.step,
            op: r.op,
            ok: r.ok,
            result: toJsonValue(r.result),
          };
          if (r.hasExpect) line['expect'] = toJsonValue(r.expect);
          if (r.error !== undefined) line['error'] = r.error;
          if (r.note !== undefined) line['note'] = r.note;
          if (opts.trace) line['trace'] = toJsonValue(r.trace ?? []);
          out(JSON.stringify(line));
        } else {
          out(formatStep(r, opts.trace));
        }
      },
    );
    passed += rec.passed;
    failed += rec.failed;
    if (opts.json) out(JSON.stringify(rec));
  }
  if (!opts.json) out(`${passed} passed, ${failed} failed`);
  return malformed ? 2 : failed > 0 ? 1 : 0;
}

function cmdRun(args: string[]): number {
  const { values, positionals } = parse(args, {
    json: { type: 'boolean' },
    trace: { type: 'boolean' },
    check: { type: 'boolean' },
    'fail-nth': { type: 'string' },
    connect: { type: 'string' },
  });
  if (values['help']) {
    console.log(RUN_HELP);
    return 0;
  }
  if (positionals.length === 0) throw new UsageFailure('run: no scenario files given');
  if (typeof values['connect'] === 'string') {
    // Refuse at once, rather than failing every family-4 step of every file.
    try {
      new PasidkitSyncClient(values['connect']).end();
    } catch (e) {
      throw new UsageFailure(`run: ${(e as Error).message}`);
    }
  }
  if (values['check']) setDebug(true);
  let failNth: number | undefined;
  if (values['fail-nth'] !== undefined) {
    failNth = Number(values['fail-nth'] as string);
    if (!Number.isInteger(failNth) || failNth < 1)
      throw new UsageFailure('--fail-nth takes a positive integer');
  } else if (process.env['PASIDKIT_FAIL_NTH']) {
    failNth = Number(process.env['PASIDKIT_FAIL_NTH']);
  }
  return runFiles(positionals, {
    json: values['json'] === true,
    trace: values['trace'] === true,
    ...(failNth !== undefined ? { failNth } : {}),
    ...(typeof values['connect'] === 'string' ? { connect: values['connect'] } : {}),
  });
}

async function cmdBench(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { json: { type: 'boolean' } });
  if (values['help']) {
    console.log(BENCH_HELP);
    return 0;
  }
  const unknown = positionals.filter((n) => !WORKLOADS.some((w) => w.name === n));
  if (unknown.length > 0) throw new UsageFailure(`bench: unknown workload ${unknown.join(', ')}`);
  const chosen = positionals.length === 0 ? WORKLOADS : WORKLOADS.filter((w) => positionals.includes(w.name));
  for (const w of chosen) {
    progress(`bench: ${w.name} ...`);
    const lines = [await w.run()];
    for (const p of w.peers ?? []) {
      progress(`bench: ${w.name} (peer) ...`);
      lines.push(await p());
    }
    progressDone();
    for (const r of lines) {
      if (values['json']) console.log(JSON.stringify(r));
      else {
        const what = r.impl ? `${r.workload} [${r.impl}]` : r.workload;
        const figure =
          r.bytesPerId !== undefined
            ? `${r.bytesPerId} bytes per ID`
            : r['skipped'] !== undefined
              ? `skipped: ${String(r['skipped'])}`
              : `${r.ops} ops in ${r.seconds} s = ${(r.opsPerSec ?? 0).toLocaleString('en-US')} ops/s`;
        console.log(`${what.padEnd(36)} ${figure}`);
      }
    }
  }
  return 0;
}

function cmdDemo(args: string[]): number {
  const { values } = parse(args, { json: { type: 'boolean' } });
  if (values['help']) {
    console.log(DEMO_HELP);
    return 0;
  }
  const dir = join(ROOT, 'examples');
  const files = readExamples(dir).map((f) => relative(process.cwd(), f) || f);
  return runFiles(files, { json: values['json'] === true, trace: false });
}

function readExamples(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'))
    .sort()
    .map((f) => join(dir, f));
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        console.log(HELP);
        return cmd === undefined ? 2 : 0;
      case '-V':
      case '--version':
        console.log(VERSION);
        return 0;
      case 'run':
        return cmdRun(rest);
      case 'bench':
        return await cmdBench(rest);
      case 'demo':
        return cmdDemo(rest);
      case 'serve':
        return await cmdServe(rest);
      default:
        throw new UsageFailure(`unknown command ${cmd}`);
    }
  } catch (e) {
    if (e instanceof UsageFailure) {
      process.stderr.write(`pasidkit: ${e.message}\n(see pasidkit --help)\n`);
      return 2;
    }
    throw e;
  }
}

// A reader that goes away (`| head`) is not an error of ours.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw e;
});

process.exitCode = await main(process.argv.slice(2));
