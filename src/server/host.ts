// The emulated host a `pasidkit serve` process exposes (../shared/spec/WIRE.md, "Transport" and
// "Paths"): one IommufdHost shared by every connection, built from a machine file (the
// `machine:` block of a scenario, SCENARIO.md) or from the defaults.
//
// With a machine file the host is the machine's own (src/machine.ts): the Intel VT-d driver
// boots over the machine's VT-d units and /dev/vfio/devices/vfioN is the machine's device N,
// counted from 0 in machine order. Without one it is the engine's default host: two devices of
// the selftest mock IOMMU driver, both PASID-capable, as vfio0 and vfio1. Either way
// IOMMU_TEST_CMD and its mock devices are there unless `testCmd` is false.

import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { IntelIommuDriver } from '../iommu/intel.ts';
import { IommufdHost } from '../iommufd/engine.ts';
import { PhysMem } from '../iommufd/process.ts';
import { Machine } from '../machine.ts';
import type { MachineConfig } from '../machine-config.ts';
import { parseMachine, ScenarioSyntaxError } from '../scenario/parse.ts';

/** A machine file that cannot be read or is not a valid `machine:` block. */
export class MachineFileError extends Error {
  override readonly name = 'MachineFileError';
}

/**
 * Reads a machine file: YAML whose top level is either the `machine:` block itself or a mapping
 * with a `machine:` key (so a scenario file can serve as its own machine file).
 */
export function loadMachineFile(path: string): MachineConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new MachineFileError(`${path}: cannot read: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  return parseMachineText(path, text);
}

export function parseMachineText(name: string, text: string): MachineConfig {
  const doc = parseDocument(text, { intAsBigInt: true, uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length > 0) throw new MachineFileError(`${name}: YAML: ${doc.errors[0]!.message}`);
  let raw: unknown = doc.toJS({ maxAliasCount: 1000 });
  if (raw !== null && typeof raw === 'object' && !Array.isArray(raw) && 'machine' in raw) {
    raw = (raw as { machine: unknown }).machine;
  }
  if (raw !== null && raw !== undefined && (typeof raw !== 'object' || Array.isArray(raw))) {
    throw new MachineFileError(`${name}: a machine file is a mapping (the machine: block of a scenario)`);
  }
  try {
    return parseMachine(raw);
  } catch (e) {
    if (e instanceof ScenarioSyntaxError) throw new MachineFileError(`${name}: ${e.message}`);
    throw e;
  }
}

export interface HostOptions {
  /** CONFIG_IOMMUFD_TEST: IOMMU_TEST_CMD and its mock devices (default true; `--no-test-cmd`). */
  readonly testCmd?: boolean;
}

/** The host for a machine (null: the engine's default host). */
export function createHost(machine: MachineConfig | null, opts: HostOptions = {}): IommufdHost {
  const testCmd = opts.testCmd ?? true;
  if (machine === null) return new IommufdHost({ testCmd });
  const m = new Machine({ config: machine });
  if (testCmd) return m.iommufd;
  // What Machine.iommufd builds, with CONFIG_IOMMUFD_TEST off: MachineOptions has no switch
  // for it (yet), and the machine's own host always has the test command.
  const phys = new PhysMem(m.hw.memory);
  const intel = new IntelIommuDriver({ platform: m.hw, frames: phys, faults: m.faults, tracer: null });
  const err = intel.init();
  if (err) throw new MachineFileError(`intel_iommu_init failed: ${err.message}`);
  return new IommufdHost({
    testCmd: false,
    faults: m.faults,
    phys,
    devices: intel.devices,
    checkInvariants: () => {
      intel.checkInvariants();
      m.hw.checkInvariants();
    },
  });
}

/** What a host still holds for processes (leak checks after clients disconnect). */
export interface HostUsage {
  /** /dev/iommu contexts not yet released. */
  readonly contexts: number;
  /** iommufd objects in those contexts. */
  readonly objects: number;
  /** Pinned physical pages. */
  readonly pins: number;
  /** Allocated physical pages. */
  readonly pages: number;
  /** Mock IOMMU domains alive. */
  readonly domains: number;
}

export function hostUsage(host: IommufdHost): HostUsage {
  let contexts = 0;
  let objects = 0;
  for (const ctx of host.contexts) {
    if (ctx.closed) continue;
    contexts++;
    objects += ctx.objects.size;
  }
  return {
    contexts,
    objects,
    pins: host.phys.totalPins(),
    pages: host.phys.live,
    domains: host.mock.liveDomains.size,
  };
}
