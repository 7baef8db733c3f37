// One emulated host: the IOASID core with its PASID APIs, and (below them) the hardware of the
// `machine:` block. Everything a scenario step, a library user or a server connection touches
// hangs off one Machine, so that two machines never share state, just as two hosts would not.

import { FaultInjector } from './core/fault.ts';
import { debugEnabled, InvariantError } from './core/invariants.ts';
import type { Tracer } from './core/trace.ts';
import { GlobalPasidAllocator, type PasidCapable } from './ioasid/global-pasid.ts';
import { IoasidCore, type IoasidProfile } from './ioasid/ioasid.ts';
import { IommuPasidApi } from './ioasid/pasid.ts';
import {
  type DeviceConfig,
  defaultMachineConfig,
  type MachineConfig,
  normaliseBdf,
} from './machine-config.ts';

export interface MachineOptions {
  config?: MachineConfig;
  profile?: IoasidProfile;
  /** Assert the invariants after every operation (default: PASIDKIT_DEBUG). */
  debug?: boolean;
  faults?: FaultInjector;
  tracer?: Tracer | null;
}

/** A device as the IOMMU core sees it: its bdf and `dev->iommu->max_pasids`. */
export interface MachineDevice extends PasidCapable {
  readonly bdf: string;
  readonly config: DeviceConfig;
}

export class Machine {
  readonly config: MachineConfig;
  readonly profile: IoasidProfile;
  readonly debug: boolean;
  readonly faults: FaultInjector;
  private tracerFn: Tracer | null;
  readonly ioasid: IoasidCore;
  readonly pasid: IommuPasidApi;
  readonly globalPasid: GlobalPasidAllocator;
  readonly devices: MachineDevice[];
  private readonly byBdf = new Map<string, MachineDevice>();

  constructor(opts: MachineOptions = {}) {
    this.config = opts.config ?? defaultMachineConfig();
    this.profile = opts.profile ?? 'v3';
    this.debug = opts.debug ?? debugEnabled();
    this.faults = opts.faults ?? new FaultInjector();
    this.tracerFn = opts.tracer ?? null;
    this.ioasid = new IoasidCore({
      profile: this.profile,
      faults: this.faults,
      tracer: this.tracerFn,
      debug: this.debug,
    });
    // The system PASID width is the narrowest IOMMU's (init_dmars: min over IOMMUs).
    const bits = Math.min(20, ...this.config.iommus.map((i) => i.pasid_bits));
    this.pasid = new IommuPasidApi(this.ioasid, { min: 1, max: 2 ** bits - 1 });
    this.globalPasid = new GlobalPasidAllocator(this.faults, this.tracerFn);
    this.devices = this.config.devices.map((d) => {
      const iommuBits = this.config.iommus[d.iommu]?.pasid_bits ?? 0;
      const bitsOf = Math.min(d.pasid_bits, iommuBits);
      const dev: MachineDevice = { bdf: d.bdf, config: d, maxPasids: d.pasid_bits === 0 ? 0 : 2 ** bitsOf };
      this.byBdf.set(d.bdf, dev);
      return dev;
    });
  }

  get tracer(): Tracer | null {
    return this.tracerFn;
  }

  set tracer(t: Tracer | null) {
    this.tracerFn = t;
    this.ioasid.tracer = t;
    this.globalPasid.tracer = t;
  }

  device(bdf: string): MachineDevice | undefined {
    let key: string;
    try {
      key = normaliseBdf(bdf);
    } catch {
      return undefined;
    }
    return this.byBdf.get(key);
  }

  /** Every layer's invariants; throws InvariantError naming the first that fails. */
  checkInvariants(): void {
    this.ioasid.checkInvariants();
    const g = this.globalPasid.checkInvariants();
    if (g !== undefined) throw new InvariantError(`global PASID: ${g}`);
  }
}
