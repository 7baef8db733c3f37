// Scenario families 2 and 3 (SCENARIO.md) at the scenario level: mem_* sizes, byte strings and
// EFAULT past the end of memory, register names and default access sizes of mmio_*, DMA results
// (addresses, data across pages, faults, interrupt requests), the step errors and malformed-file
// errors of these operations, and the walk steps that --trace shows.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { parseScenario, runScenario, ScenarioSyntaxError, type StepRecord } from './index.ts';
import { toJsonValue } from './values.ts';

/** A file with this machine block and these steps (YAML step lines, indented by two). */
function file(machine: string, steps: string): string {
  return `scenario: 1\nmachine: ${machine}\nsteps:\n${steps}`;
}

const MACHINE =
  '{memory: 1MiB, devices: [{bdf: "00:02.0"}, {bdf: "00:03.0", pasid_bits: 0}, {bdf: "00:04.0", pasid_bits: 4}]}';

function run(text: string, trace = false): StepRecord[] {
  const steps: StepRecord[] = [];
  runScenario(parseScenario('t.yaml', text), { debug: true, trace }, (s) => steps.push(s));
  return steps;
}

/** Each step's result in its JSON form; a step that could not run gives {error: message}. */
function results(steps: string, machine = MACHINE): unknown[] {
  return run(file(machine, steps)).map((s) =>
    s.error !== undefined ? { error: s.error } : toJsonValue(s.result),
  );
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

/**
 * Root table 0x10000 -> context of 00:02.0 -> PASID 0 (its RID_PASID), second level at 0x20000
 * mapping IOVA 0x1000 -> 0x80000, 0x2000 -> 0x40000 and 0x5000 -> 0xfee00000 (R|W), 0x3000
 * unmapped; scalable mode, translation on (the layout of examples/11-vtd-bringup.yaml).
 */
const SL_BRINGUP = `  - mem_write: {addr: 0x10000, value: 0x11001, size: 8}
  - mem_write: {addr: 0x11200, value: 0x12009, size: 8}
  - mem_write: {addr: 0x12000, value: 0x13001, size: 8}
  - mem_write: {addr: 0x13000, value: 0x20089, size: 8}
  - mem_write: {addr: 0x13008, value: 1, size: 8}
  - mem_write: {addr: 0x20000, value: 0x21003, size: 8}
  - mem_write: {addr: 0x21000, value: 0x22003, size: 8}
  - mem_write: {addr: 0x22000, value: 0x23003, size: 8}
  - mem_write: {addr: 0x23008, value: 0x80003, size: 8}
  - mem_write: {addr: 0x23010, value: 0x40003, size: 8}
  - mem_write: {addr: 0x23028, value: 0xfee00003, size: 8}
  - mmio_write: {reg: RTADDR_REG, value: "0x10000|0x400"}
  - mmio_write: {reg: GCMD_REG, value: 0x40000000}
  - mmio_write: {reg: GCMD_REG, value: 0x80000000}
`;
const BRINGUP_STEPS = 14;

/** Results of the steps after SL_BRINGUP. */
function translated(steps: string): unknown[] {
  const r = results(SL_BRINGUP + steps);
  assert.deepEqual(r.slice(0, BRINGUP_STEPS), Array(BRINGUP_STEPS).fill(null));
  return r.slice(BRINGUP_STEPS);
}

describe('mem_write and mem_read', () => {
  test('values of 1, 2, 4 and 8 bytes are little-endian; above 2^53 they print as hex strings', () => {
    assert.deepEqual(
      results(`  - mem_write: {addr: 0x1000, value: "0x1122334455667788", size: 8}
  - mem_read: {addr: 0x1000, size: 1}
  - mem_read: {addr: 0x1001, size: 2}
  - mem_read: {addr: 0x1004, size: 4}
  - mem_read: {addr: 0x1000, size: 8}
  - mem_write: {addr: 0x1002, value: 0xabcd, size: 2}
  - mem_write: {addr: 0x1007, value: 0xee, size: 1}
  - mem_read: {addr: 0x1000, size: 8}
  - mem_write: {addr: 0x1000, value: 0x1fffffffffffff, size: 8}
  - mem_read: {addr: 0x1000, size: 8}
`),
      [
        null,
        0x88,
        0x6677,
        0x11223344,
        '0x1122334455667788',
        null,
        null,
        '0xee223344abcd7788',
        null,
        0x1fffffffffffff,
      ],
    );
  });

  test('bytes: two hex digits a byte, white space and case ignored; memory starts zeroed', () => {
    assert.deepEqual(
      results(`  - mem_read: {addr: 0x2000, size: 8}
  - mem_write: {addr: 0x2001, bytes: "DE ad\\tBe eF"}
  - mem_read: {addr: 0x2000, size: 8}
  - mem_write: {addr: 0x2008, bytes: ""}
  - mem_read: {addr: 0x2008, size: 1}
`),
      [0, null, 0xefbeadde00, null, 0],
    );
  });

  test('EFAULT at the end of memory, beyond it, and for a range that straddles it', () => {
    assert.deepEqual(
      results(`  - mem_read: {addr: 0xffff8, size: 8}
  - mem_write: {addr: 0xfffff, value: 0x5a, size: 1}
  - mem_read: {addr: 0x100000, size: 1}
  - mem_write: {addr: 0x100000, value: 1, size: 4}
  - mem_read: {addr: 0xffffc, size: 8}
  - mem_write: {addr: 0xffffc, value: 1, size: 8}
  - mem_write: {addr: 0xffffe, bytes: "010203"}
  - mem_read: {addr: "0xffffffffffffffff", size: 1}
  - mem_read: {addr: 0xfffff, size: 1}
`),
      [
        0,
        null,
        { errno: 'EFAULT' },
        { errno: 'EFAULT' },
        { errno: 'EFAULT' },
        { errno: 'EFAULT' },
        { errno: 'EFAULT' },
        { errno: 'EFAULT' },
        0x5a,
      ],
    );
  });

  test('a value too wide for its size fails that step only; an EFAULT matches {errno: EFAULT}', () => {
    const steps = run(
      file(
        MACHINE,
        `  - mem_write: {addr: 0x1000, value: 0x100, size: 1}
    expect: null
  - mem_write: {addr: 0x1000, value: 0x10000, size: 2}
  - mem_write: {addr: 0x1000, value: 0xff, size: 1}
    expect: null
  - mem_read: {addr: 0x1000, size: 2}
    expect: 0xff
  - mem_read: {addr: 0x100000, size: 2}
    expect: {errno: EFAULT}
`,
      ),
    );
    assert.equal(steps[0]!.ok, false);
    assert.match(steps[0]!.error ?? '', /value 0x100 does not fit 1 bytes/);
    assert.match(steps[1]!.error ?? '', /value 0x10000 does not fit 2 bytes/);
    assert.deepEqual(
      steps.slice(2).map((s) => s.ok),
      [true, true, true],
    );
  });

  test('malformed: a literal bad size, value without size, value and bytes, bad hex, no size to read', () => {
    const bad = (s: string) => malformed(file(MACHINE, `  - mem_read: {addr: 0, size: 1}\n  - ${s}\n`));
    for (const [s, why] of [
      ['mem_write: {addr: 0, value: 1, size: 3}', /size: one of 1, 2, 4, 8/],
      ['mem_write: {addr: 0, value: 1}', /value needs size/],
      ['mem_write: {addr: 0, value: 1, size: 1, bytes: "00"}', /give value \(with size\) or bytes/],
      ['mem_write: {addr: 0}', /give value \(with size\) or bytes/],
      ['mem_write: {addr: 0, bytes: "abc"}', /bytes: hex bytes/],
      ['mem_write: {addr: 0, bytes: "0x00"}', /bytes: hex bytes/],
      ['mem_write: {addr: 0, bytes: "zz"}', /bytes: hex bytes/],
      ['mem_read: {addr: 0}', /missing argument size/],
      ['mem_read: {addr: 0, size: 16}', /size: one of 1, 2, 4, 8/],
      ['mem_read: {addr: -1, size: 1}', /out of range/],
      ['mem_write: {addr: 0, value: "0x10000000000000000", size: 8}', /out of range for u64/],
    ] as const) {
      const e = bad(s);
      assert.equal(e.step, 2, s);
      assert.match(e.message, why, s);
    }
  });
});

describe('mmio_read and mmio_write', () => {
  // A fault to read back: a root table of zeroes at 0, so any DMA finds no root entry (SRT.2).
  const FAULT = `  - mmio_write: {reg: RTADDR_REG, value: 0x400}
  - mmio_write: {reg: GCMD_REG, value: 0x40000000}
  - mmio_write: {reg: GCMD_REG, value: 0x80000000}
  - dma: {device: "00:02.0", addr: 0x1234, access: read}
`;

  test('register names: Linux names without DMAR_ (with it too, any case), NAME+N in decimal or hex, offsets', () => {
    const r = results(`${FAULT}  - mmio_read: {reg: FRCD_REG}
  - mmio_read: {reg: FRCD_REG+8}
  - mmio_read: {reg: "FRCD_REG + 0x8"}
  - mmio_read: {reg: 0x228, size: 8}
  - mmio_read: {reg: FRCD_REG+12, size: 4}
  - mmio_read: {reg: DMAR_FSTS_REG}
  - mmio_read: {reg: fsts_reg}
  - mmio_read: {reg: 0x34}
  - mmio_read: {reg: GSTS_REG}
  - mmio_read: {reg: VER_REG}
`);
    assert.deepEqual(r.slice(0, 4), [
      null,
      null,
      null,
      {
        fault: {
          reason: 0x39,
          cond: 'SRT.2',
          text: 'SM: Present bit in Root Entry is clear',
          recorded: true,
          iommu: 'dmar0',
          sid: 0x10,
          addr: 0x1234,
          access: 'read',
          privileged: false,
          done: 0,
        },
      },
    ]);
    assert.deepEqual(r.slice(4), [
      0x1000, // FI: the page of the faulting address
      '0xc000003900000010', // F | T=read | FR=0x39 | SID 0x0010
      '0xc000003900000010',
      '0xc000003900000010',
      0xc0000039,
      0x2, // FSTS.PPF, FRI=0
      0x2,
      0x2,
      0xc0000000, // TES | RTPS
      0x60,
    ]);
  });

  test('write-1-to-clear through FRCD_REG+12 and FRCD_REG+8', () => {
    assert.deepEqual(
      results(`${FAULT}  - mmio_write: {reg: FRCD_REG+12, value: 0x80000000, size: 4}
  - mmio_read: {reg: FRCD_REG+8}
  - mmio_read: {reg: FSTS_REG}
  - dma: {device: "00:02.0", addr: 0x5678, access: write, data: "00"}
  - mmio_read: {reg: FRCD_REG+8}
  - mmio_write: {reg: FRCD_REG+8, value: "0x8000000000000000"}
  - mmio_read: {reg: FRCD_REG+8}
  - mmio_read: {reg: FRCD_REG}
`).slice(4),
      [
        null,
        '0x4000003900000010', // F cleared; T (read), FR and SID stay
        0, // no F bit left: PPF clear
        {
          fault: {
            reason: 0x39,
            cond: 'SRT.2',
            text: 'SM: Present bit in Root Entry is clear',
            recorded: true,
            iommu: 'dmar0',
            sid: 0x10,
            addr: 0x5678,
            access: 'write',
            privileged: false,
            done: 0,
          },
        },
        '0x8000003900000010', // recorded again: F | T=write | FR | SID
        null,
        0x3900000010,
        0x5000,
      ],
    );
  });

  test('an unknown register, a misaligned or out-of-page access: EINVAL; a missing unit: ENODEV', () => {
    assert.deepEqual(
      results(`  - mmio_read: {reg: NO_SUCH_REG}
  - mmio_write: {reg: GCMD, value: 1}
  - mmio_read: {reg: "CAP_REG+"}
  - mmio_read: {reg: FRCD_REG+12}
  - mmio_read: {reg: 0x22}
  - mmio_read: {reg: 0xffc, size: 8}
  - mmio_read: {reg: 0x1000}
  - mmio_read: {iommu: 1, reg: GSTS_REG}
  - mmio_write: {iommu: 1, reg: GCMD_REG, value: 0}
`),
      [
        { errno: 'EINVAL' },
        { errno: 'EINVAL' },
        { errno: 'EINVAL' },
        { errno: 'EINVAL' }, // FRCD_REG is 64-bit: the default 8 bytes at +12 are misaligned
        { errno: 'EINVAL' },
        { errno: 'EINVAL' },
        { errno: 'EINVAL' },
        { errno: 'ENODEV' },
        { errno: 'ENODEV' },
      ],
    );
  });

  test('default sizes: 8 bytes for the 64-bit registers, 4 for the others', () => {
    const r = results(`  - mmio_read: {reg: CAP_REG}
  - mmio_read: {reg: CAP_REG, size: 4}
  - mmio_read: {reg: CAP_REG+4, size: 4}
  - mmio_read: {reg: ECAP_REG}
  - mmio_write: {reg: RTADDR_REG, value: "0x123400000400"}
  - mmio_read: {reg: RTADDR_REG}
  - mmio_read: {reg: RTADDR_REG, size: 4}
  - mmio_write: {reg: RTADDR_REG, value: 0x5000}
  - mmio_read: {reg: RTADDR_REG}
  - mmio_write: {reg: IQA_REG, value: 0x7000, size: 4}
  - mmio_read: {reg: IQA_REG}
  - mmio_read: {reg: GSTS_REG}
  - mmio_read: {reg: GSTS_REG, size: 8}
  - mmio_read: {reg: VCRSP_REG}
  - mmio_read: {reg: VER_REG}
`);
    assert.deepEqual(r, [
      '0x112008c222f0606', // PROFILE.md's CAP, all 64 bits
      0x222f0606,
      0x0112008c,
      0xd99824000f46,
      null,
      0x123400000400, // both halves written by one 8-byte write
      0x400,
      null,
      0x5000, // an 8-byte write of a small value clears the high half
      null,
      0x7000,
      0,
      { errno: 'EINVAL' }, // GSTS is 32-bit at 0x1c: 8 bytes there would be misaligned
      0,
      0x60,
    ]);
  });

  test('IQERCD_REG defaults to 8 bytes, like DMAR_IQER_REG (the same 64-bit register)', () => {
    // An invalidation time-out: a device-TLB invalidation for 00:02.0, which has no ATS, sets
    // FSTS.ITE and puts the source-id in IQERCD.ITESID (47:32).
    const r = results(`  - mmio_write: {reg: IQA_REG, value: 0x14000}
  - mmio_write: {reg: GCMD_REG, value: 0x4000000}
  - mem_write: {addr: 0x14000, value: 0x1000000003, size: 8}
  - mmio_write: {reg: IQT_REG, value: 0x10}
  - mmio_read: {reg: FSTS_REG}
  - mmio_read: {reg: IQER_REG}
  - mmio_read: {reg: IQERCD_REG, size: 8}
  - mmio_read: {reg: IQERCD_REG}
`);
    assert.deepEqual(r.slice(4), [0x40, 0x1000000000, 0x1000000000, 0x1000000000]);
  });

  test('a value too wide for a 4-byte access fails that step; malformed: bad size or reg', () => {
    const steps = run(
      file(
        MACHINE,
        `  - mmio_write: {reg: FSTS_REG, value: 0x100000000}
  - mmio_write: {reg: GCMD_REG, value: 0x100000000, size: 4}
  - mmio_write: {reg: RTADDR_REG, value: 0x100000000}
  - mmio_read: {reg: RTADDR_REG}
    expect: 0x100000000
`,
      ),
    );
    assert.match(steps[0]!.error ?? '', /does not fit a 4-byte write/);
    assert.match(steps[1]!.error ?? '', /does not fit a 4-byte write/);
    assert.equal(steps[2]!.error, undefined);
    assert.equal(steps[3]!.ok, true);
    for (const [s, why] of [
      ['mmio_read: {reg: GSTS_REG, size: 2}', /size: one of 4, 8/],
      ['mmio_write: {reg: GSTS_REG, value: 0, size: 1}', /size: one of 4, 8/],
      ['mmio_read: {reg: [1]}', /reg: a register name/],
      ['mmio_read: {}', /missing argument reg/],
      ['mmio_write: {reg: GCMD_REG}', /missing argument value/],
    ] as const) {
      const e = malformed(file(MACHINE, `  - ${s}\n`));
      assert.equal(e.step, 1, s);
      assert.match(e.message, why, s);
    }
  });

  test('a register write has done its work when the step ends (queue up to the new tail)', () => {
    assert.deepEqual(
      results(`  - mmio_write: {reg: IQA_REG, value: "0x14000|0x800"}
  - mmio_write: {reg: GCMD_REG, value: 0x4000000}
  - mem_write: {addr: 0x14000, value: 0x200000025, size: 8}
  - mem_write: {addr: 0x14008, value: 0x15000, size: 8}
  - mmio_write: {reg: IQT_REG, value: 0x20}
  - mem_read: {addr: 0x15000, size: 4}
  - mmio_read: {reg: IQH_REG}
`).slice(5),
      [2, 0x20],
    );
  });
});

describe('dma', () => {
  test('without translation the address is the HPA; data moves both ways, also across pages', () => {
    assert.deepEqual(
      results(`  - dma: {device: "00:02.0", addr: 0xffc, access: write, data: "0102030405060708"}
  - mem_read: {addr: 0xffc, size: 8}
  - dma: {device: "00:02.0", addr: 0xffe, access: read, length: 4}
  - dma: {device: "00:02.0", addr: 0x1000, access: read}
  - dma: {device: "00:02.0", addr: 0x1000, access: read, length: 0}
  - dma: {device: "00:02.0", pasid: 7, addr: 0x1000, access: exec}
  - dma: {device: "00:02.0", addr: 0x1000, access: atomic}
`),
      [
        { hpa: 0xffc },
        '0x807060504030201',
        { hpa: 0xffe, data: '03040506' },
        { hpa: 0x1000 },
        { hpa: 0x1000, data: '' },
        { hpa: 0x1000 },
        { hpa: 0x1000 },
      ],
    );
  });

  test('an address memory does not back completes as an unsupported request, after the bytes that fit', () => {
    assert.deepEqual(
      results(`  - dma: {device: "00:02.0", addr: 0xffffe, access: read, length: 4}
  - dma: {device: "00:02.0", addr: 0x100000, access: write, data: "00"}
`),
      [
        { abort: { reason: 'unsupported-request', addr: 0x100000, hpa: 0x100000, done: 2 } },
        { abort: { reason: 'unsupported-request', addr: 0x100000, hpa: 0x100000, done: 0 } },
      ],
    );
  });

  test('a DMA crossing a page boundary translates each page; a fault stops it after the bytes before', () => {
    assert.deepEqual(
      translated(`  - dma: {device: "00:02.0", addr: 0x1ffc, access: write, data: "a1a2a3a4 b1b2b3b4"}
  - mem_read: {addr: 0x80ffc, size: 4}
  - mem_read: {addr: 0x40000, size: 4}
  - mem_read: {addr: 0x81000, size: 4}
  - dma: {device: "00:02.0", addr: 0x1ffe, access: read, length: 4}
  - dma: {device: "00:02.0", addr: 0x2ffa, access: write, data: "c1c2c3c4c5c6c7c8"}
  - mem_read: {addr: 0x40ff8, size: 8}
  - dma: {device: "00:02.0", addr: 0x2ffe, access: read, length: 4}
`),
      [
        { hpa: 0x80ffc },
        0xa4a3a2a1,
        0xb4b3b2b1,
        0, // not the next HPA page: the next IOVA page is elsewhere
        { hpa: 0x80ffe, data: 'a3a4b1b2' },
        {
          fault: {
            reason: 0x85,
            cond: 'SGN.6',
            text: 'SM: No write permission for Write/AtomicOp request',
            recorded: true,
            iommu: 'dmar0',
            sid: 0x10,
            addr: 0x3000, // the first byte of the page that faulted
            access: 'write',
            privileged: false,
            done: 6,
          },
        },
        '0xc6c5c4c3c2c10000', // the six bytes before the fault landed
        {
          fault: {
            reason: 0x86,
            cond: 'SGN.7',
            text: 'SM: No read permission for Read/AtomicOp request',
            recorded: false,
            iommu: 'dmar0',
            sid: 0x10,
            addr: 0x3000,
            access: 'read',
            privileged: false,
            done: 2,
          },
        },
      ],
    );
  });

  test('results bind: $NAME.hpa, and expect matches a fault by reason', () => {
    const steps = run(
      file(
        MACHINE,
        `${SL_BRINGUP}  - dma: {device: "00:02.0", addr: 0x1010, access: write, data: "77"}
    as: d
  - mem_read: {addr: $d.hpa, size: 1}
    expect: 0x77
  - mem_read: {addr: $d.hpa-0x10, size: 1}
    expect: 0
  - dma: {device: "00:02.0", addr: 0x3000, access: read}
    expect: {fault: {reason: 0x86}}
  - dma: {device: "00:02.0", addr: 0x3000, access: read}
    expect: {fault: {}}
  - dma: {device: "00:02.0", addr: 0x3000, access: read}
    expect: ok
  - dma: {device: "00:02.0", addr: 0x1000, access: read}
    expect: {fault: {}}
`,
      ),
    );
    assert.deepEqual(
      steps.slice(BRINGUP_STEPS).map((s) => s.ok),
      [null, true, true, true, true, false, false],
    );
  });

  test('interrupt requests: a write without PASID to 0xFEE00000-0xFEEFFFFF is not a DMA', () => {
    const r = translated(`  - dma: {device: "00:02.0", addr: 0xfee00000, access: write, data: "41000000"}
  - dma: {device: "00:02.0", addr: 0xfeefff00, access: write, data: "2a010000 ffff"}
  - dma: {device: "00:02.0", addr: 0xfee00000, access: read, length: 4}
  - dma: {device: "00:02.0", addr: 0x5000, access: write, data: "41000000"}
  - dma: {device: "00:02.0", addr: 0xfef00000, access: write, data: "00"}
`);
    assert.deepEqual(r.slice(0, 3), [
      { interrupt: { addr: 0xfee00000, data: 0x41 } },
      { interrupt: { addr: 0xfeefff00, data: 0x12a } },
      { abort: { reason: 'unsupported-request', addr: 0xfee00000, done: 0 } },
    ]);
    // translated to the interrupt range: refused by the IOMMU (SGN.8), not an interrupt
    assert.deepEqual((r[3] as { fault: { reason: number; cond: string } }).fault.reason, 0x87);
    assert.equal((r[3] as { fault: { reason: number; cond: string } }).fault.cond, 'SGN.8');
    // just past the range: an ordinary DMA, here to an unmapped IOVA
    assert.equal((r[4] as { fault: { reason: number } }).fault.reason, 0x85);
    // without translation, too: the range is decided on the request, before TE is looked at
    assert.deepEqual(
      results('  - dma: {device: "00:02.0", addr: 0xfee01000, access: write, data: "05000000"}\n'),
      [{ interrupt: { addr: 0xfee01000, data: 5 } }],
    );
  });

  test('a PASID the device cannot express: EINVAL, nothing reaches the IOMMU', () => {
    assert.deepEqual(
      results(`  - dma: {device: "00:03.0", pasid: 1, addr: 0x1000, access: read}
  - dma: {device: "00:04.0", pasid: 16, addr: 0x1000, access: read}
  - dma: {device: "00:04.0", pasid: 15, addr: 0x1000, access: read}
  - dma: {device: "00:03.0", addr: 0x1000, access: read}
`),
      [{ errno: 'EINVAL' }, { errno: 'EINVAL' }, { hpa: 0x1000 }, { hpa: 0x1000 }],
    );
  });

  test('malformed dma steps name the step and the reason', () => {
    for (const [s, why] of [
      ['dma: {device: "00:02.0", addr: 0, access: read, data: "00"}', /data moves bytes on a write only/],
      ['dma: {device: "00:02.0", addr: 0, access: exec, data: "00"}', /data moves bytes on a write only/],
      ['dma: {device: "00:02.0", addr: 0, access: write, length: 4}', /length reads bytes: use data/],
      ['dma: {device: "00:02.0", addr: 0, access: write, data: "00", length: 1}', /not both/],
      ['dma: {device: "00:02.0", addr: 0, access: write, data: "0g"}', /data: hex bytes/],
      ['dma: {device: "00:02.0", addr: 0, access: write, data: "123"}', /data: hex bytes/],
      ['dma: {device: "00:02.0", addr: 0, access: fly}', /access/],
      ['dma: {device: "00:02.0", addr: 0, access: read, length: -1}', /length/],
      ['dma: {device: "00:02.0", addr: 0}', /missing argument access/],
      ['dma: {device: "00:09.0", addr: 0, access: read}', /no device/],
      ['dma: {device: "00:02.0", addr: 0, access: read, size: 4}', /unknown argument size/],
    ] as const) {
      const e = malformed(
        file(MACHINE, `  - mem_read: {addr: 0, size: 1}\n  - mem_read: {addr: 0, size: 1}\n  - ${s}\n`),
      );
      assert.equal(e.step, 3, s);
      assert.match(e.message, why, s);
    }
  });
});

describe('pasidkit run', () => {
  const bin = join(import.meta.dirname, '..', '..', 'bin', 'pasidkit.js');
  const dir = mkdtempSync(join(tmpdir(), 'pasidkit-ops-hw-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const cli = (args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });

  test('a malformed dma step: exit 2, the file and the step on stderr, the other files still run', () => {
    const bad = join(dir, 'bad.yaml');
    const good = join(dir, 'good.yaml');
    writeFileSync(
      bad,
      file(
        MACHINE,
        '  - mem_read: {addr: 0, size: 1}\n  - dma: {device: "00:02.0", addr: 0, access: read, data: "00"}\n',
      ),
    );
    writeFileSync(
      good,
      file(MACHINE, '  - mem_read: {addr: 0x100000, size: 1}\n    expect: {errno: EFAULT}\n'),
    );
    const r = cli(['run', bad, good]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /bad\.yaml: malformed: step 2: dma: data moves bytes on a write only/);
    assert.match(r.stdout, /^1 passed, 0 failed$/m);
  });

  test('--trace shows the walk of each DMA: root, context, PASID directory and entry, each level', () => {
    const f = join(dir, 'walk.yaml');
    writeFileSync(
      f,
      file(
        MACHINE,
        `${SL_BRINGUP}  - dma: {device: "00:02.0", addr: 0x1008, access: read, length: 8}
    expect: {hpa: 0x80008}
  - dma: {device: "00:02.0", addr: 0x1010, access: read, length: 8}
    expect: {hpa: 0x80010}
`,
      ),
    );
    const text = cli(['run', '--trace', f]);
    assert.equal(text.status, 0, text.stderr);
    const walk = [...text.stdout.matchAll(/"kind":"walk","what":"([a-z-]+)","iommu":"dmar0"[^\n]*/g)].map(
      (m) => m[0],
    );
    assert.deepEqual(
      walk.map((w) => /"what":"([a-z-]+)"/.exec(w)![1]),
      ['root', 'context', 'pasid-dir', 'pasid-entry', 'sl', 'sl', 'sl', 'sl', 'iotlb-hit'],
    );
    assert.match(walk[0]!, /"addr":"0x10000","entry":"0x11001"/);
    assert.match(walk[7]!, /"level":1,"addr":"0x23008","entry":"0x80003"/);

    const json = cli(['run', '--json', '--trace', f]);
    assert.equal(json.status, 0, json.stderr);
    const lines = json.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const dma = lines.filter((l) => l['op'] === 'dma');
    assert.equal(dma.length, 2);
    const trace = dma[0]!['trace'] as Record<string, unknown>[];
    assert.deepEqual(
      trace.filter((e) => e['kind'] === 'walk' && e['what'] === 'sl').map((e) => [e['level'], e['addr']]),
      [
        [4, '0x20000'],
        [3, '0x21000'],
        [2, '0x22000'],
        [1, '0x23008'],
      ],
    );
    assert.deepEqual(trace.at(-1), {
      kind: 'dma',
      what: 'read',
      sid: 0x10,
      addr: '0x1008',
      hpa: '0x80008',
      length: 8,
    });
    assert.deepEqual(dma[0]!['result'], { hpa: 0x80008, data: '0000000000000000' });
    assert.deepEqual(lines.at(-1), { file: f, passed: 2, failed: 0, error: null });
  });
});
