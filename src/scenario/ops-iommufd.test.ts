// Scenario family 4 against SCENARIO.md and WIRE.md: ioctl steps are refused at parse time for
// unknown requests and fields, inline pointers land in process memory with their companion
// count/length fields filled, what the kernel writes back through them is decoded, descriptors
// the kernel returns are fd handles that work with read/write/close, each file's process is torn
// down when the file ends, and the family-4 examples run through the CLI with the --json shape.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { IommufdHost } from '../iommufd/engine.ts';
import { Handle, parseScenario, runScenario, ScenarioSyntaxError, type StepRecord } from './index.ts';
import { ScenarioContext } from './runner.ts';
import { toJsonValue } from './values.ts';

function run(text: string, trace = false): { steps: StepRecord[]; passed: number; failed: number } {
  const sc = parseScenario('t.yaml', text);
  const steps: StepRecord[] = [];
  const r = runScenario(sc, { debug: true, trace }, (s) => steps.push(s));
  return { steps, passed: r.passed, failed: r.failed };
}

/** Runs a file and asserts that every expectation held and no step errored. */
function runOk(text: string, trace = false): StepRecord[] {
  const r = run(text, trace);
  const bad = r.steps.filter((s) => s.ok === false || s.error !== undefined);
  assert.deepEqual(
    bad.map((s) => ({ step: s.step, result: toJsonValue(s.result), error: s.error })),
    [],
  );
  return r.steps;
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

// One machine device, so that /dev/vfio/devices/vfio0 exists (SCENARIO.md: one per machine device).
const HEAD =
  'scenario: 1\nmachine: {devices: [{bdf: "00:02.0"}]}\nsteps:\n  - open: {path: /dev/iommu}\n    as: fd\n';
const step = (s: string) => `${HEAD}  - ${s}\n`;
const json = (v: unknown) => toJsonValue(v) as Record<string, unknown>;

describe('parse-time validation', () => {
  test('an unknown request name or a request that takes a value', () => {
    const e = malformed(step('ioctl: {fd: $fd, cmd: IOMMU_IOAS_FROB}'));
    assert.equal(e.step, 2);
    assert.match(e.message, /cmd: "IOMMU_IOAS_FROB" is not an ioctl name or request number/);
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: VFIO_CHECK_EXTENSION, arg: {x: 1}}')).message,
      /takes an integer argument: give value/,
    );
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: 0x3b95, arg: {size: 8}}')).message,
      /no known request: give its argument as bytes or value/,
    );
  });

  test('unknown fields, at the top, in a union member, in an inline element', () => {
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC, arg: {flagz: 1}}')).message,
      /arg: iommu_ioas_alloc has no field flagz \(it has size, flags, out_ioas_id\)/,
    );
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: IOMMU_TEST_CMD, arg: {op: 2, mock_domain: {out_hwpt: 1}}}'))
        .message,
      /arg\.mock_domain: mock_domain has no field out_hwpt/,
    );
    assert.match(
      malformed(
        step('ioctl: {fd: $fd, cmd: IOMMU_IOAS_IOVA_RANGES, arg: {allowed_iovas: [{start: 0, end: 1}]}}'),
      ).message,
      /allowed_iovas: no field set of iommu_iova_range has start, end/,
    );
    assert.match(
      malformed(
        step(
          'ioctl: {fd: $fd, cmd: IOMMU_HWPT_ALLOC, arg: {data_type: IOMMU_HWPT_DATA_SELFTEST, data_uptr: {iotlb: 1, colour: 2}}}',
        ),
      ).message,
      /data_uptr: no field set of iommu_hwpt_selftest has iotlb, colour/,
    );
  });

  test('values that cannot be the field: range, unknown names, bad bytes, bad fd, two argument forms', () => {
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: IOMMU_DESTROY, arg: {id: 0x100000000}}')).message,
      /arg\.id: 4294967296 does not fit u32/,
    );
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: IOMMU_DESTROY, arg: {id: NOT_A_NAME}}')).message,
      /arg\.id: "NOT_A_NAME" is not an integer or a known constant/,
    );
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: IOMMU_IOAS_MAP, arg: {user_va: "abc"}}')).message,
      /inline bytes are hex digit pairs/,
    );
    assert.match(malformed(step('ioctl: {fd: x, cmd: IOMMU_IOAS_ALLOC}')).message, /not a file descriptor/);
    assert.match(
      malformed(step('ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC, arg: {}, value: 0}')).message,
      /give one of arg, bytes, value/,
    );
    assert.match(malformed(step('ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC, bytes: "0"}')).message, /hex bytes/);
    assert.match(malformed(step('ioctl: {fd: $fd, colour: 1, cmd: IOMMU_IOAS_ALLOC}')).message, /colour/);
    assert.match(malformed(step('poke: {va: 0, bytes: "zz"}')).message, /hex bytes/);
    assert.match(malformed(step('open: {}')).message, /missing argument path/);
  });

  test('a request named by a $reference is checked when the step runs: the step fails, the file runs', () => {
    const r = run(`${HEAD}  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}
    as: a
  - ioctl: {fd: $fd, cmd: $a.arg.size, arg: {}}
    expect: ok
  - ioctl: {fd: $a, cmd: IOMMU_IOAS_ALLOC}
    expect: ok
  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}
    expect: {ret: 0, arg: {out_ioas_id: 2}}
`);
    assert.equal(r.failed, 2);
    assert.match(r.steps[2]!.error ?? '', /0xc is no known request/);
    assert.match(r.steps[3]!.error ?? '', /fd: .* is not a file descriptor/);
    assert.equal(r.steps[4]!.ok, true);
  });
});

describe('inline pointers and companion fields', () => {
  test('a list fills num_iovas; a given count is kept; the kernel writes the list back', () => {
    const steps = runOk(`${HEAD}  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}
    as: ioas
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_ALLOW_IOVAS
      arg: {ioas_id: $ioas.arg.out_ioas_id, allowed_iovas: [{start: 0x1000, last: 0x1fff}, {start: 0x10000, last: 0x1ffff}]}
    as: allow
    expect: {ret: 0, arg: {num_iovas: 2}}
  - ioctl:
      fd: $fd
      cmd: IOMMU_TEST_CMD
      arg: {op: IOMMU_TEST_OP_ADD_RESERVED, id: $ioas.arg.out_ioas_id, add_reserved: {start: 0x1000, length: 0x1000}}
    expect: {errno: EADDRINUSE}
    note: inside the allowed ranges
  - ioctl:
      fd: $fd
      cmd: IOMMU_TEST_CMD
      arg: {op: IOMMU_TEST_OP_ADD_RESERVED, id: $ioas.arg.out_ioas_id, add_reserved: {start: 0x4000, length: 0x1000}}
    expect: ok
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_IOVA_RANGES
      arg: {ioas_id: $ioas.arg.out_ioas_id, allowed_iovas: [{}, {}, {}]}
    expect:
      ret: 0
      arg:
        num_iovas: 2
        allowed_iovas: [{start: 0, last: 0x3fff}, {start: 0x5000, last: U64_MAX}, {start: 0, last: 0}]
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_IOVA_RANGES
      arg: {ioas_id: $ioas.arg.out_ioas_id, num_iovas: 1, allowed_iovas: [{}, {last: 7}]}
    expect: {errno: EMSGSIZE}
`);
    // An `in` pointer keeps its address: an integer VA in the process.
    const allow = json(steps[2]!.result)['arg'] as Record<string, unknown>;
    assert.equal(typeof allow['allowed_iovas'], 'number');
    assert.ok((allow['allowed_iovas'] as number) > 0);
  });

  test('bytes given inline: length or count filled, the memory readable at the address in the result', () => {
    runOk(`${HEAD}  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}
    as: ioas
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_MAP
      arg: {flags: IOMMU_IOAS_MAP_READABLE, ioas_id: $ioas.arg.out_ioas_id, user_va: "00 11 22 33 44"}
    as: m
    expect: {ret: 0, arg: {length: 5}}
  - peek: {va: $m.arg.user_va, length: 6}
    expect: "001122334400"
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_MAP
      arg: {flags: IOMMU_IOAS_MAP_READABLE, ioas_id: $ioas.arg.out_ioas_id, user_va: "0x7f0000000000", length: 0x1000}
    expect: {ret: 0, arg: {user_va: 0x7f0000000000}}
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_MAP
      arg: {flags: IOMMU_IOAS_MAP_READABLE, ioas_id: $ioas.arg.out_ioas_id, user_va: "000102", length: 2}
    expect: {ret: 0, arg: {length: 2}}
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_IOVA_RANGES
      arg: {ioas_id: $ioas.arg.out_ioas_id, allowed_iovas: "ffffffffffffffff ffffffffffffffff"}
    expect: {ret: 0, arg: {num_iovas: 1, allowed_iovas: "0000000000000000 ffffffffffffffff"}}
    note: "bytes for an array of structs: the count follows from sizeof, the result is bytes again"
`);
  });

  test('HWPT_INVALIDATE: entry_num and entry_len filled; the kernel reports entries handled, on failure in the trace', () => {
    const r = run(
      `${HEAD}  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}
    as: ioas
  - ioctl: {fd: $fd, cmd: IOMMU_TEST_CMD, arg: {op: IOMMU_TEST_OP_MOCK_DOMAIN, id: $ioas.arg.out_ioas_id}}
    as: mock
  - ioctl:
      fd: $fd
      cmd: IOMMU_HWPT_ALLOC
      arg: {flags: IOMMU_HWPT_ALLOC_NEST_PARENT, dev_id: $mock.arg.mock_domain.out_idev_id, pt_id: $ioas.arg.out_ioas_id}
    as: parent
    expect: ok
  - ioctl:
      fd: $fd
      cmd: IOMMU_HWPT_ALLOC
      arg: {dev_id: $mock.arg.mock_domain.out_idev_id, pt_id: $parent.arg.out_hwpt_id,
            data_type: IOMMU_HWPT_DATA_SELFTEST, data_uptr: {iotlb: IOMMU_TEST_IOTLB_DEFAULT}}
    as: nested
    expect: {ret: 0, arg: {data_len: 8}}
  - ioctl:
      fd: $fd
      cmd: IOMMU_HWPT_INVALIDATE
      arg:
        hwpt_id: $nested.arg.out_hwpt_id
        data_type: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
        data_uptr: [{iotlb_id: 0}, {iotlb_id: 1}]
    expect: {ret: 0, arg: {entry_num: 2, entry_len: 8}}
  - ioctl:
      fd: $fd
      cmd: IOMMU_HWPT_INVALIDATE
      arg:
        hwpt_id: $nested.arg.out_hwpt_id
        data_type: IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
        data_uptr: [{iotlb_id: 0}, {iotlb_id: 99}, {iotlb_id: 1}]
    expect: {errno: EINVAL}
`,
      true,
    );
    assert.equal(r.failed, 0, JSON.stringify(r.steps.map((s) => toJsonValue(s.result))));
    const ev = r.steps[6]!.trace!.find((e) => e.kind === 'iommufd' && e.what === 'ioctl')!;
    assert.equal(ev['errno'], 'EINVAL');
    assert.equal((json(ev)['arg'] as Record<string, unknown>)['entry_num'], 1);
  });

  test('IOMMU_GET_HW_INFO: an out struct chosen by the type the kernel reports', () => {
    const steps = runOk(`${HEAD}  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}
    as: ioas
  - ioctl: {fd: $fd, cmd: IOMMU_TEST_CMD, arg: {op: IOMMU_TEST_OP_MOCK_DOMAIN, id: $ioas.arg.out_ioas_id}}
    as: mock
  - ioctl:
      fd: $fd
      cmd: IOMMU_GET_HW_INFO
      arg: {dev_id: $mock.arg.mock_domain.out_idev_id, data_uptr: "00000000 00000000 ffffffff"}
    expect: {ret: 0, arg: {data_len: 8, data_uptr: "00000000 efbeadde 00000000"}}
    note: given as bytes, read back as bytes; data_len is what the kernel wrote, the rest it cleared
`);
    assert.equal(steps.length, 4);
  });
});

describe('descriptors', () => {
  test('an out_fault_fd is an fd handle that read, write and close take; ret as a new fd too', () => {
    const steps = runOk(`${HEAD}  - memfd_create: {name: buffer}
    as: mfd
  - ftruncate: {fd: $mfd, length: 8KiB}
    expect: 0
  - mmap: {length: 8KiB, fd: $mfd}
    as: m1
  - mmap: {length: 8KiB, fd: $mfd, flags: MAP_SHARED, prot: PROT_READ}
    as: m2
  - poke: {va: $m1+4096, bytes: "cafe"}
    expect: 0
  - peek: {va: $m2+4096, length: 2}
    expect: "cafe"
  - poke: {va: $m2, bytes: "00"}
    expect: {errno: EFAULT}
  - ioctl: {fd: $fd, cmd: IOMMU_FAULT_QUEUE_ALLOC}
    as: fq
    expect: {ret: 0, arg: {out_fault_id: 1}}
  - read: {fd: $fq.arg.out_fault_fd, count: 40}
    expect: ""
  - write: {fd: $fq.arg.out_fault_fd, bytes: "0000000000000000"}
    expect: {errno: EINVAL}
  - ioctl: {fd: $fd, cmd: IOMMU_DESTROY, arg: {id: $fq.arg.out_fault_id}}
    expect: {errno: EBUSY}
  - close: {fd: $fq.arg.out_fault_fd}
    expect: 0
  - read: {fd: $fq.arg.out_fault_fd, count: 40}
    expect: {errno: EBADF}
  - ioctl: {fd: $fd, cmd: IOMMU_DESTROY, arg: {id: $fq.arg.out_fault_id}}
    expect: {ret: 0}
  - ioctl: {fd: $fd, cmd: IOMMU_TEST_CMD, arg: {op: IOMMU_TEST_OP_DMABUF_GET, dmabuf_get: {length: 4096}}}
    as: dmabuf
    expect: ok
  - close: {fd: $dmabuf.ret}
    expect: 0
  - close: {fd: 0}
    expect: 0
  - close: {fd: 0}
    expect: {errno: EBADF}
`);
    assert.deepEqual(toJsonValue(steps[0]!.result), 'fd#0');
    assert.deepEqual(toJsonValue(steps[1]!.result), 'fd#1');
    const fq = json(steps[8]!.result)['arg'] as Record<string, unknown>;
    assert.equal(fq['out_fault_fd'], 'fd#2');
    assert.ok(
      (steps[8]!.result as Record<string, Record<string, unknown>>)['arg']!['out_fault_fd'] instanceof Handle,
    );
    assert.equal(json(steps[15]!.result)['ret'], 'fd#2');
  });

  test('value: an integer argument, NULL, or a struct in process memory read and written back there', () => {
    runOk(`${HEAD}  - ioctl: {fd: $fd, cmd: VFIO_CHECK_EXTENSION, value: VFIO_TYPE1v2_IOMMU}
    expect: {ret: 1}
  - ioctl: {fd: $fd, cmd: VFIO_CHECK_EXTENSION}
    expect: {ret: 0}
  - mmap: {length: 4096}
    as: buf
  - poke: {va: $buf, bytes: "0c000000 00000000 00000000"}
  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC, value: $buf}
    expect: {ret: 0, arg: {size: 12, out_ioas_id: 1}}
  - peek: {va: $buf, length: 12}
    expect: "0c000000 00000000 01000000"
  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC, value: 0}
    expect: {errno: EFAULT}
  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC, value: 0xffffffff00000000}
    expect: {errno: EFAULT}
`);
  });
});

describe('the process of a file', () => {
  const FILE = `${HEAD}  - mmap: {length: 64KiB}
    as: buf
  - ioctl: {fd: $fd, cmd: IOMMU_IOAS_ALLOC}
    as: ioas
  - ioctl: {fd: $fd, cmd: IOMMU_TEST_CMD, arg: {op: IOMMU_TEST_OP_MOCK_DOMAIN, id: $ioas.arg.out_ioas_id}}
  - ioctl:
      fd: $fd
      cmd: IOMMU_IOAS_MAP
      arg: {flags: IOMMU_IOAS_MAP_READABLE|IOMMU_IOAS_MAP_WRITEABLE|IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id: $ioas.arg.out_ioas_id, user_va: $buf, length: 0x10000, iova: MOCK_APERTURE_START}
    expect: ok
  - open: {path: /dev/vfio/devices/vfio0}
    expect: ok
`;

  /** Runs a file's steps on a context kept for inspection (as runScenario does, without ending it). */
  const start = (text: string): ScenarioContext => {
    const sc = parseScenario('a.yaml', text);
    const ctx = new ScenarioContext(sc, { debug: true });
    for (const s of sc.steps) {
      const r = ctx.execute(s);
      assert.ok(!(r instanceof Error), String(r));
      if (s.as !== undefined) ctx.bindings.set(s.as, r);
    }
    return ctx;
  };

  test('exits when its file ends: every descriptor closed, every object destroyed, every pin released', () => {
    const ctx = start(FILE);
    const host: IommufdHost = ctx.machine.iommufd;
    assert.ok(host.phys.totalPins() >= 16, 'the mapping is pinned while the file runs');
    const ictx = [...host.contexts][0]!;
    assert.equal(ictx.closed, false);
    ctx.end();
    assert.equal(ictx.closed, true);
    assert.equal(host.phys.totalPins(), 0);
    assert.equal(host.phys.live, 0);
  });

  test('runScenario ends every file it runs; each file has its own descriptors', () => {
    const sc = parseScenario('a.yaml', FILE);
    const steps: StepRecord[] = [];
    runScenario(sc, { debug: true }, (s) => steps.push(s));
    assert.equal(toJsonValue(steps[0]!.result), 'fd#0');
    // A second file starts from descriptor 0 on a fresh process, and is torn down at its end.
    const ctx = start(FILE);
    const host = ctx.machine.iommufd;
    assert.ok(host.phys.totalPins() > 0);
    ctx.end();
    assert.equal(host.phys.totalPins(), 0);
    assert.equal(host.phys.live, 0);
  });
});

describe('pasidkit run on the family-4 examples', () => {
  const root = join(import.meta.dirname, '..', '..');
  const files = readdirSync(join(root, 'examples'))
    .filter((n) => /^2\d-.*\.yaml$/.test(n))
    .map((n) => join(root, 'examples', n));

  test('there are examples numbered from 20', () => {
    assert.ok(files.length >= 4);
  });

  test('--json --check: every step line and file line has the fixed shape, and all pass', () => {
    const r = spawnSync(
      process.execPath,
      [join(root, 'bin', 'pasidkit.js'), 'run', '--json', '--check', ...files],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const lines = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const fileLines = lines.filter((l) => 'passed' in l);
    assert.equal(fileLines.length, files.length);
    for (const l of fileLines) {
      assert.deepEqual(Object.keys(l), ['file', 'passed', 'failed', 'error']);
      assert.equal(l['failed'], 0);
      assert.equal(l['error'], null);
      assert.ok((l['passed'] as number) > 0);
    }
    for (const l of lines.filter((x) => 'step' in x)) {
      const keys = Object.keys(l);
      assert.deepEqual(keys.slice(0, 5), ['file', 'step', 'op', 'ok', 'result']);
      assert.ok(
        keys.every((k) => ['file', 'step', 'op', 'ok', 'result', 'expect', 'note'].includes(k)),
        keys.join(),
      );
      assert.equal('expect' in l, l['ok'] !== null);
      assert.notEqual(l['ok'], false);
    }
    // Results print as SCENARIO.md fixes: fd handles by name, u64 beyond 2^53 as hex strings.
    const first = lines[0]!;
    assert.equal(first['op'], 'open');
    assert.equal(first['result'], 'fd#0');
    assert.ok(r.stdout.includes('"last":"0xffffffffffffffff"'));
  });
});
