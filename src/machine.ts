// One emulated host: the IOASID core with its PASID APIs, and (below them) the hardware of the
// `machine:` block. Everything a scenario step, a library user or a server connection touches
// hangs off one Machine, so that two machines never share state, just as two hosts would not.

import { FaultInjector } from './core/fault.ts';
import { debugEnabled, InvariantError } from './core/invariants.ts';
import type { Tracer } from './core/trace.ts';
import type { PciDevice } from './hw/pci.ts';
import { createPlatform, type Platform } from './hw/platform.ts';
import { GlobalPasidAllocator, type PasidCapable } from './ioasid/global-pasid.ts';
import { IoasidCore, type IoasidProfile } from './ioasid/ioasid.ts';
import { IommuPasidApi } from './ioasid/pasid.ts';
import { IntelIommuDriver } from './iommu/intel.ts';
import { IommufdHost } from './iommufd/engine.ts';
import { PhysMem } from './iommufd/process.ts';
import { defaultMachineConfig, type MachineConfig } from './machine-config.ts';

export interface MachineOptions {
  config?: MachineConfig;
  profile?: IoasidProfile;
  /** Assert the invariants after every operation (default: PASIDKIT_DEBUG). */
  debug?: boolean;
  faults?: FaultInjector;
  tracer?: Tracer | null;
}

/** A device as the IOMMU core sees it: its bdf and `dev->iommu->max_pasids`. */
export type MachineDevice = PciDevice & PasidCapable;

export class Machine {
  readonly config: MachineConfig;
  readonly profile: IoasidProfile;
  readonly debug: boolean;
  readonly faults: FaultInjector;
  private tracerFn: Tracer | null;
  readonly ioasid: IoasidCore;
  readonly pasid: IommuPasidApi;
  readonly globalPasid: GlobalPasidAllocator;
  /** The hardware: physical memory, the VT-d units, the PCI devices. */
  readonly hw: Platform;
  readonly devices: readonly MachineDevice[];

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
    this.hw = createPlatform(this.config, { tracer: this.tracerFn, debug: this.debug });
    this.devices = this.hw.devices;
    // The system PASID width is the narrowest IOMMU's (init_dmars: min over IOMMUs).
    const bits = Math.min(20, ...this.hw.iommus.map((u) => u.caps.pasidBits));
    this.pasid = new IommuPasidApi(this.ioasid, { min: 1, max: 2 ** bits - 1 });
    this.globalPasid = new GlobalPasidAllocator(this.faults, this.tracerFn);
  }

  private iommufdHost: IommufdHost | undefined;
  private intelDriver: IntelIommuDriver | undefined;

  /**
   * The kernel side of /dev/iommu and the VFIO device files on this host (made on first use:
   * most machines never open them). Processes (src/iommufd/process.ts) run on it. Making it
   * boots the kernel's IOMMU side: the Intel VT-d driver takes the machine's VT-d units over
   * (from then on they belong to the kernel) and probes every device; /dev/vfio/devices/vfioN
   * is the machine's device N through that driver. User pages and the driver's tables come
   * from one pool in the machine's physical memory, so device DMA reaches user memory.
   */
  get iommufd(): IommufdHost {
    if (this.iommufdHost === undefined) {
      const phys = new PhysMem(this.hw.memory);
      const intel = new IntelIommuDriver({
        platform: this.hw,
        frames: phys,
        faults: this.faults,
        tracer: this.tracerFn,
      });
      const err = intel.init();
      if (err) throw new Error(`intel_iommu_init failed: ${err.message}`);
      this.intelDriver = intel;
      this.iommufdHost = new IommufdHost({
        faults: this.faults,
        phys,
        devices: intel.devices,
        checkInvariants: () => {
          intel.checkInvariants();
          this.hw.checkInvariants();
        },
      });
    }
    return this.iommufdHost;
  }

  /** The Intel IOMMU driver (booted with the iommufd host). */
  get intel(): IntelIommuDriver {
    void this.iommufd;
    return this.intelDriver!;
  }

  get tracer(): Tracer | null {
    return this.tracerFn;
  }

  set tracer(t: Tracer | null) {
    this.tracerFn = t;
    this.ioasid.tracer = t;
    this.globalPasid.tracer = t;
    this.hw.setTracer(t);
    if (this.intelDriver) this.intelDriver.tracer = t;
  }

  device(bdf: string): MachineDevice | undefined {
    return this.hw.device(bdf);
  }

  /** Every layer's invariants; throws InvariantError naming the first that fails. */
  checkInvariants(): void {
    this.ioasid.checkInvariants();
    const g = this.globalPasid.checkInvariants();
    if (g !== undefined) throw new InvariantError(`global PASID: ${g}`);
    this.hw.checkInvariants();
    this.intelDriver?.checkInvariants();
    this.iommufdHost?.checkInvariants();
  }
}
