// The scenario engine against SCENARIO.md: every bundled example passes, malformed files are
// refused with the step and the reason, references and expect forms behave as specified, and
// the CLI's exit codes and --json lines have the fixed shape.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { KernelError } from '../core/errno.ts';
import { Handle, parseScenario, runScenario, ScenarioSyntaxError, type StepRecord } from './index.ts';
import { matches, toJsonValue } from './values.ts';

function run(text: string): { steps: StepRecord[]; passed: number; failed: number } {
  const sc = parseScenario('t.yaml', text);
  const steps: StepRecord[] = [];
  const r = runScenario(sc, { debug: true }, (s) => steps.push(s));
  return { steps, passed: r.passed, failed: r.failed };
}

function malformed(text: string): ScenarioSyntaxError {
  try {
    parseScenario('bad.yaml', text);
  } catch (e) {
    assert.ok(e instanceof ScenarioSyntaxError, String(e));
    return e;
  }
  assert.fail('expected a malformed-file error');
}

describe('bundled examples', () => {
  const dir = join(import.meta.dirname, '..', '..', 'examples');
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.yaml'))) {
    test(f, async () => {
      const { readFileSync } = await import('node:fs');
      const sc = parseScenario(f, readFileSync(join(dir, f), 'utf8'));
      const failures: StepRecord[] = [];
      const r = runScenario(sc, { debug: true, trace: true }, (s) => {
        if (s.ok === false || s.error !== undefined) failures.push(s);
      });
      assert.deepEqual(failures, []);
      assert.ok(r.passed > 0);
    });
  }
});

describe('malformed files', () => {
  test('unknown operation names the step', () => {
    const e = malformed(
      'scenario: 1\nsteps:\n  - ioasid_alloc: {set: null, min: 1, max: 2}\n  - no_such_op: {}\n',
    );
    assert.equal(e.step, 2);
    assert.match(e.message, /unknown operation no_such_op/);
  });
  test('missing and unknown arguments', () => {
    assert.match(
      malformed('scenario: 1\nsteps:\n  - ioasid_alloc: {set: null, min: 1}\n').message,
      /missing argument max/,
    );
    assert.match(
      malformed('scenario: 1\nsteps:\n  - ioasid_alloc: {set: null, min: 1, max: 2, colour: red}\n').message,
      /unknown argument colour/,
    );
  });
  test('out-of-range and non-integer values', () => {
    assert.match(
      malformed('scenario: 1\nsteps:\n  - ioasid_alloc: {set: null, min: -1, max: 2}\n').message,
      /out of range/,
    );
    assert.match(
      malformed('scenario: 1\nsteps:\n  - ioasid_alloc: {set: null, min: NOT_A_CONSTANT, max: 2}\n').message,
      /not an integer or a known constant/,
    );
  });
  test('two operations in one step', () => {
    assert.match(
      malformed('scenario: 1\nsteps:\n  - {ioasid_get_capacity: {}, ioasid_install_capacity: {total: 1}}\n')
        .message,
      /one operation per step/,
    );
  });
  test('operation missing from the profile', () => {
    assert.match(
      malformed('scenario: 1\nprofile: m55\nsteps:\n  - ioasid_attach_spid: {ioasid: 1, spid: 2}\n').message,
      /does not exist in profile m55/,
    );
    assert.match(
      malformed('scenario: 1\nprofile: m511\nsteps:\n  - ioasid_get: {set: null, ioasid: 1}\n').message,
      /unknown argument set/,
    );
  });
  test('bad machine blocks', () => {
    assert.match(
      malformed('scenario: 1\nmachine: {iommus: [{model: vtd, colour: 1}]}\nsteps: []\n').message,
      /colour/,
    );
    assert.match(
      malformed('scenario: 1\nmachine: {devices: [{bdf: "00:02.0", iommu: 3}]}\nsteps: []\n').message,
      /iommu 3/,
    );
    assert.match(
      malformed('scenario: 1\nmachine: {devices: [{bdf: "0:2.0"}, {bdf: "00:02.0"}]}\nsteps: []\n').message,
      /appears twice/,
    );
    assert.match(
      malformed('scenario: 1\nsteps:\n  - iommu_alloc_global_pasid: {dev: "00:09.0"}\n').message,
      /no device/,
    );
  });
  test('wrong version, bad YAML, bad nested step', () => {
    assert.ok(malformed('scenario: 2\nsteps: []\n'));
    assert.match(malformed('scenario: 1\nsteps: [\n').message, /YAML/);
    assert.match(
      malformed(
        'scenario: 1\nsteps:\n  - ioasid_register_notifier: {set: null, "on": {IOASID_NOTIFY_FREE: {bogus: {}}}}\n',
      ).message,
      /unknown operation bogus/,
    );
  });
});

describe('references and expectations', () => {
  test('$NAME.field, $NAME+N and an unresolved reference', () => {
    const { steps, failed } = run(`
scenario: 1
steps:
  - ioasid_set_alloc: {token: null, quota: 10, type: IOASID_SET_TYPE_NULL}
    as: s
  - ioasid_alloc: {set: $s, min: 5, max: 9, private: {next: 7}}
    as: a
  - ioasid_alloc: {set: $s, min: $a+2, max: 9}
    expect: 7
  - ioasid_find: {set: $s, ioasid: $a}
    as: data
  - ioasid_alloc: {set: $s, min: $data.next, max: 9}
    expect: 8
  - ioasid_alloc: {set: $s, min: $nothing, max: 9}
    expect: ok
`);
    assert.equal(failed, 1);
    const last = steps.at(-1)!;
    assert.equal(last.ok, false);
    assert.match(last.error ?? '', /unresolved reference \$nothing/);
  });
  test('expect forms', () => {
    assert.ok(matches('ok', 5));
    assert.ok(!matches('ok', new KernelError('EINVAL', 'x')));
    assert.ok(matches({ errno: 'EINVAL' }, new KernelError('EINVAL', 'x')));
    assert.ok(matches({ errno: 22 }, new KernelError('EINVAL', 'x')));
    assert.ok(!matches({ errno: 'ENOENT' }, new KernelError('EINVAL', 'x')));
    assert.ok(matches('INVALID_IOASID', 0xffffffff));
    assert.ok(matches('0xffffffff', 0xffffffff));
    assert.ok(matches({ a: 1 }, { a: 1, b: 2 }));
    assert.ok(!matches({ c: 1 }, { a: 1 }));
    assert.ok(matches([1, { x: 'y' }], [1, { x: 'y', z: 0 }]));
    assert.ok(!matches([1], [1, 2]));
    assert.ok(matches(null, null));
    assert.ok(!matches(null, 0));
    assert.ok(matches('DE AD be ef', 'deadbeef'));
    assert.ok(matches({ fault: {} }, { fault: { reason: 0x71 } }));
    assert.ok(!matches('ok', { fault: { reason: 0x71 } }));
    const h = new Handle('set', 1, {});
    assert.ok(matches(h, h));
    assert.ok(!matches(h, new Handle('set', 2, {})));
  });
  test('JSON values: big integers as hex strings, handles and errors by name', () => {
    assert.equal(toJsonValue(2n ** 60n), '0x1000000000000000');
    assert.equal(toJsonValue(2n ** 40n), 2 ** 40);
    assert.equal(toJsonValue(new Handle('set', 3, null)), 'set#3');
    assert.deepEqual(toJsonValue(new KernelError('ENOSPC', 'x')), { errno: 'ENOSPC' });
  });
});

describe('pasidkit run', () => {
  const bin = join(import.meta.dirname, '..', '..', 'bin', 'pasidkit.js');
  const cli = (args: string[], input?: string) =>
    spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', ...(input ? { input } : {}) });
  const tmp = join(import.meta.dirname, '..', '..', 'tmp');
  test('exit codes and the closing line', async () => {
    const { mkdirSync, writeFileSync } = await import('node:fs');
    mkdirSync(tmp, { recursive: true });
    const good = join(tmp, 'good.yaml');
    const bad = join(tmp, 'bad.yaml');
    const failing = join(tmp, 'failing.yaml');
    writeFileSync(good, 'scenario: 1\nsteps:\n  - ioasid_get_capacity: {}\n    expect: 0x100000\n');
    writeFileSync(failing, 'scenario: 1\nsteps:\n  - ioasid_get_capacity: {}\n    expect: 5\n');
    writeFileSync(bad, 'scenario: 1\nsteps:\n  - ioasid_get_capacity: {x: 1}\n');
    let r = cli(['run', good]);
    assert.equal(r.status, 0);
    assert.match(r.stdout, /^1 passed, 0 failed$/m);
    r = cli(['run', failing, good]);
    assert.equal(r.status, 1);
    assert.match(r.stdout, /^1 passed, 1 failed$/m);
    r = cli(['run', bad, good]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /bad\.yaml: malformed: step 1: ioasid_get_capacity: unknown argument x/);
    assert.match(r.stdout, /^1 passed, 0 failed$/m);
    r = cli(['run', join(tmp, 'missing.yaml')]);
    assert.equal(r.status, 2);
    r = cli(['run', '--json', good, bad]);
    const lines = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(lines[0], {
      file: good,
      step: 1,
      op: 'ioasid_get_capacity',
      ok: true,
      result: 0x100000,
      expect: 0x100000,
    });
    assert.deepEqual(lines[1], { file: good, passed: 1, failed: 0, error: null });
    assert.equal(lines[2]!['file'], bad);
    assert.match(String(lines[2]!['error']), /step 1/);
    r = cli(['nonsense']);
    assert.equal(r.status, 2);
    r = cli(['--version']);
    assert.equal(r.status, 0);
  });
  test('--json on the examples has the shape ../shared/spec/check/run-json checks', () => {
    const checker = join(import.meta.dirname, '..', '..', '..', 'shared', 'spec', 'check', 'run-json');
    const dir = join(import.meta.dirname, '..', '..', 'examples');
    const files = readdirSync(dir)
      .filter((n) => n.endsWith('.yaml'))
      .map((n) => join(dir, n));
    const r = cli(['run', '--json', '--trace', ...files]);
    assert.equal(r.status, 0, r.stderr);
    const chk = spawnSync('python3', [checker], { input: r.stdout, encoding: 'utf8' });
    if (chk.error) return; // no python3 or no ../shared here: the shape is also checked above
    assert.equal(chk.status, 0, chk.stdout);
    assert.match(chk.stdout, / 0 problems/);
  });
});
