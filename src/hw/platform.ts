// The emulated hardware of one machine (SCENARIO.md `machine:` block, families 2 and 3): its
// physical memory, one VT-d unit per `iommus` entry and one PCI device per `devices` entry,
// each device behind iommus[dev.iommu], with lookups by bus:device.function and source-id.
// The machine and scenario layers build on this; it holds no kernel state.

import { KernelError } from '../core/errno.ts';
import { debugEnabled } from '../core/invariants.ts';
import type { Tracer } from '../core/trace.ts';
import { bdfToSid, type MachineConfig, normaliseBdf } from '../machine-config.ts';
import { PhysicalMemory } from './memory.ts';
import { PciDevice } from './pci.ts';
import { type MsiMessage, VtdIommu } from './vtd/iommu.ts';
import type { VcmdBackend } from './vtd/vcmd.ts';

export interface PlatformOptions {
  tracer?: Tracer | null;
  debug?: boolean;
  /** VCMD backends per IOMMU index (default: each unit's own lowest-free allocator). */
  vcmdBackends?: readonly (VcmdBackend | undefined)[];
  /** Receives every MSI a unit sends (fault events, invalidation completions). */
  onMsi?: ((iommu: number, m: MsiMessage) => void) | null;
}

export interface Platform {
  readonly config: MachineConfig;
  readonly memory: PhysicalMemory;
  readonly iommus: readonly VtdIommu[];
  readonly devices: readonly PciDevice[];
  readonly debug: boolean;
  /** The device with this bus:device.function (any spelling bdfToSid accepts). */
  device(bdf: string): PciDevice | undefined;
  deviceBySid(sid: number): PciDevice | undefined;
  /** Index of an IOMMU by name ("dmar0", ...) or number; undefined if none. */
  iommu(which: number | string): VtdIommu | undefined;
  /** Switches tracing on or off for every unit and device. */
  setTracer(t: Tracer | null): void;
  /** Runs every unit's invariant checker (InvariantError on a violation). */
  checkInvariants(): void;
}

/** Builds the hardware of `config`. Throws RangeError for a configuration that cannot exist. */
export function createPlatform(config: MachineConfig, opts: PlatformOptions = {}): Platform {
  const debug = opts.debug ?? debugEnabled();
  const memory = new PhysicalMemory(config.memory);
  const iommus = config.iommus.map(
    (c, i) =>
      new VtdIommu(memory, c, {
        name: `dmar${i}`,
        tracer: opts.tracer ?? null,
        ...(opts.vcmdBackends?.[i] !== undefined ? { vcmdBackend: opts.vcmdBackends[i] } : {}),
        onMsi: opts.onMsi ? (m) => opts.onMsi!(i, m) : null,
      }),
  );
  const bySid = new Map<number, PciDevice>();
  const devices = config.devices.map((d) => {
    const iommu = iommus[d.iommu];
    if (iommu === undefined) throw new RangeError(`device ${d.bdf}: no iommus[${d.iommu}]`);
    const sid = bdfToSid(d.bdf);
    if (bySid.has(sid)) throw new RangeError(`device ${d.bdf} appears twice`);
    if (!Number.isInteger(d.pasid_bits) || d.pasid_bits < 0 || d.pasid_bits > 20) {
      throw new RangeError(`device ${d.bdf}: pasid_bits must be 0..20`);
    }
    const hwBits = iommu.caps.pasidBits;
    const maxPasids = d.pasid_bits === 0 || hwBits === 0 ? 0 : 2 ** Math.min(d.pasid_bits, hwBits);
    const dev = new PciDevice(
      { bdf: normaliseBdf(d.bdf), sid, pasidBits: d.pasid_bits, ats: d.ats, maxPasids },
      iommu,
      memory,
    );
    dev.tracer = opts.tracer ?? null;
    bySid.set(sid, dev);
    return dev;
  });
  return {
    config,
    memory,
    iommus,
    devices,
    debug,
    device(bdf: string) {
      let sid: number;
      try {
        sid = bdfToSid(bdf);
      } catch {
        return undefined;
      }
      return bySid.get(sid);
    },
    deviceBySid(sid: number) {
      return bySid.get(sid);
    },
    iommu(which: number | string) {
      if (typeof which === 'number') return iommus[which];
      return iommus.find((u) => u.name === which);
    },
    setTracer(t: Tracer | null) {
      for (const u of iommus) u.tracer = t;
      for (const d of devices) d.tracer = t;
    },
    checkInvariants() {
      for (const u of iommus) u.checkInvariants();
    },
  };
}

/** Resolves a register name ("IQT_REG", "FRCD_REG+16") or offset for mmio_read/mmio_write. */
export function registerOffset(iommu: VtdIommu, reg: string | number): number | KernelError {
  if (typeof reg === 'number') return reg;
  const m = /^([A-Z0-9_]+?)(?:\s*\+\s*(\d+|0x[0-9a-f]+))?$/i.exec(reg.trim());
  if (!m) return new KernelError('EINVAL', `not a register name: ${reg}`);
  const name = m[1]!.toUpperCase().replace(/^DMAR_/, '');
  const base = iommu.registers[name];
  if (base === undefined) return new KernelError('EINVAL', `no register ${reg} on ${iommu.name}`);
  return base + (m[2] !== undefined ? Number(m[2]) : 0);
}
