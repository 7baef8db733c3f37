// The Intel VT-d IOMMU driver (drivers/iommu/intel/ as iommufd uses it, kernels ~6.17): an
// IommuDriver (core.ts iommu_ops) for the VT-d units of a machine (src/hw/platform.ts) that
// programs them only through their registers and through tables in the machine's physical
// memory, so that device DMA really goes through what it writes. Sources: the kernel's
// iommu.c, pasid.c, nested.c, cache.c, dmar.c; vtd-model.md for the structures; research
// iommufd.md A.11/A.12/A.15 for the uAPI data. The pieces:
//
// - intel-dmar.ts: one unit (bring-up through the registers, the invalidation queue, domain
//   IDs, the fault handler); intel-pasid.ts: PASID tables, PASID entries and scalable-mode
//   context entries with the kernel's invalidation sequences; intel-pgtable.ts: the first- and
//   second-stage page tables;
// - here: device probe (PASID directory and context entry per device, max_pasids from the
//   device and ECAP.PSS, ATS), paging domains (first stage by default when the unit has both
//   stages, second stage for NEST_PARENT and DIRTY_TRACKING, as intel_iommu_domain_alloc_paging_flags
//   decides), map/unmap and the IOTLB gather, cache tags and the flushes they drive
//   (cache_tag_flush_range: PASID-based IOTLB for first-stage and nested domains, page- or
//   domain-selective IOTLB for second-stage ones, device-TLB for ATS devices, all batched
//   behind one wait descriptor), RID attach (the RID_PASID entry), set_dev_pasid with replace
//   (the replace helpers write the new entry over the old one; on failure the old entry
//   stays), blocked and identity (pass-through) domains, nested domains from
//   IOMMU_HWPT_DATA_VTD_S1 and their user invalidation, GET_HW_INFO, dirty tracking when the
//   unit reports ECAP.SLADS (else EOPNOTSUPP), IOPF enablement rules; on a unit without
//   scalable mode (ECAP.SMTS clear), legacy mode: context entries with the second-level table
//   (or pass-through), no PASIDs, no nesting, 128-bit invalidation descriptors.
//
// Page requests (intel-prq.ts): an ATS device on a unit with ECAP.PRS gets PRI (context
// PRE); its page requests reach the IOPF-capable domain attached at their PASID (iommufd's
// fault queue), and the responses go back as page group responses; an IOPF-capable domain
// needs PRI (-ENODEV otherwise).
//
// Model decisions: a device's default domain is the blocking domain (no host driver does DMA
// on this machine); a map that fails part way (a table allocation) unrolls what it wrote, where the kernel
// leaves those entries until the domain is freed; iova_to_phys answers -1 (the core's "not
// mapped"), where the kernel answers 0; a RID attach whose entry could not be programmed
// does not unassign cache tags it never assigned (the kernel's device_block_translation would
// drop a tag another device shares). Nested domains flush with PASID-based IOTLB invalidation
// (the fix "iommu/vt-d: Flush piotlb for SVM and Nested domain").

import { type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { InvariantError, invariant } from '../core/invariants.ts';
import type { Tracer } from '../core/trace.ts';
import type { PciDevice } from '../hw/pci.ts';
import type { Platform } from '../hw/platform.ts';
import { NO_PASID_KEY } from '../hw/vtd/iotlb.ts';
import {
  copyStructFromUserArray,
  copyStructFromUserData,
  type IommuCap,
  IommuDevice,
  type IommuDirtyBitmap,
  type IommuDirtyOps,
  IommuDomain,
  type IommuDomainOps,
  type IommuDriver,
  type IommuPageFault,
  type IommuUserData,
  type IommuUserDataArray,
  iommuProbeDevice,
  iommuReportDeviceFault,
} from './core.ts';
import type { FrameAllocator } from './frames.ts';
import {
  DMA_TLB_DSI_FLUSH,
  DMA_TLB_PSI_FLUSH,
  FLPT_DEFAULT_DID,
  IntelIommu,
  MAX_AGAW_PFN_WIDTH,
  QiBatch,
} from './intel-dmar.ts';
import {
  ADDR_WIDTH_5LEVEL,
  CONTEXT_TT_DEV_IOTLB,
  CONTEXT_TT_MULTI_LEVEL,
  CONTEXT_TT_PASS_THROUGH,
  DeviceDomainInfo,
  IOMMU_NO_PASID,
  intelPasidAllocTable,
  intelPasidReplaceFirstLevel,
  intelPasidReplaceNested,
  intelPasidReplacePassThrough,
  intelPasidReplaceSecondLevel,
  intelPasidSetupDirtyTracking,
  intelPasidSetupFirstLevel,
  intelPasidSetupNested,
  intelPasidSetupPageSnoopControl,
  intelPasidSetupPassThrough,
  intelPasidSetupSecondLevel,
  intelPasidSetupSmContext,
  intelPasidTearDownEntry,
  legacyContextClear,
  legacyContextMap,
  PASID_FLAG_FL5LP,
  PASID_FLAG_PAGE_SNOOP,
  PASID_MAX,
  readPasidEntry,
  type SsTable,
  type VtdS1Config,
} from './intel-pasid.ts';
import {
  agawToLevel,
  agawToWidth,
  DMA_PTE_READ,
  DMA_PTE_SNP,
  DMA_PTE_WRITE,
  DmaPgtable,
  levelSize,
  VTD_PAGE_SIZE,
} from './intel-pgtable.ts';
import { IntelPrq } from './intel-prq.ts';

// ---- uAPI (include/uapi/linux/iommufd.h) ----
export const IOMMU_HW_INFO_TYPE_DEFAULT = 0;
export const IOMMU_HW_INFO_TYPE_INTEL_VTD = 1;
export const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0;
export const IOMMU_HWPT_DATA_VTD_S1 = 1;
export const IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0;
export const IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0;
const HWPT_ALLOC_NEST_PARENT = 1 << 0;
const HWPT_ALLOC_DIRTY_TRACKING = 1 << 1;
const HWPT_ALLOC_PASID = 1 << 3;
const IOMMU_READ = 1;
const IOMMU_WRITE = 2;
/** sizeof(struct iommu_hwpt_vtd_s1), its minimum (offsetofend __reserved) the same. */
const VTD_S1_SIZE = 24;
/** sizeof(struct iommu_hwpt_vtd_s1_invalidate). */
const VTD_S1_INV_SIZE = 24;
const IOAPIC_RANGE_START = 0xfee00000n;
const IOAPIC_RANGE_END = 0xfeefffffn;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

// cache tag types (enum cache_tag_type)
const CACHE_TAG_IOTLB = 0;
const CACHE_TAG_DEVTLB = 1;
const CACHE_TAG_NESTING_IOTLB = 2;
const CACHE_TAG_NESTING_DEVTLB = 3;

/** struct cache_tag. */
interface CacheTag {
  readonly type: number;
  readonly iommu: IntelIommu;
  readonly did: number;
  readonly pasid: number;
  /** The device for device-TLB tags, null for IOTLB tags. */
  readonly dev: DeviceDomainInfo | null;
  users: number;
}

/** struct iommu_domain_info: a domain's ID on one unit. */
interface DomainIommuInfo {
  readonly did: number;
  refcnt: number;
}

export type DmarDomainKind = 'fs' | 'ss' | 'nested';

/** struct dmar_domain. */
export class DmarDomain {
  readonly kind: DmarDomainKind;
  /** The core's view (set right after creation). */
  domain!: IommuDomain;
  /** Page table (first- or second-stage paging domains). */
  readonly pt: DmaPgtable | null;
  readonly gaw: number;
  readonly agaw: number;
  maxAddr: number;
  readonly iommuCoherency: boolean;
  readonly iommuSuperpage: number;
  nestedParent = false;
  dirtyTracking = false;
  forceSnooping = false;
  /** Second stage: leaf entries carry SNP (set_pte_snp). */
  setPteSnp = false;
  hasMappings = false;
  iotlbSyncMap = false;
  readonly iommuArray = new Map<IntelIommu, DomainIommuInfo>();
  /** Devices whose RID uses the domain (domain->devices). */
  readonly devices = new Set<DeviceDomainInfo>();
  /** PASID attachments (domain->dev_pasids). */
  readonly devPasids: { dev: DeviceDomainInfo; pasid: number }[] = [];
  readonly cacheTags: CacheTag[] = [];
  qiBatch: QiBatch | null = null;
  // nested (stage-1 over a nesting parent)
  readonly s2: DmarDomain | null;
  readonly s1Cfg: VtdS1Config | null;
  /** A nesting parent's stage-1 domains (s1_domains). */
  readonly s1Domains = new Set<DmarDomain>();
  // struct iommu_iotlb_gather
  gatherStart = Number.POSITIVE_INFINITY;
  gatherEnd = 0;
  gatherPgsize = 0;
  readonly freelist: number[] = [];
  constructor(
    kind: DmarDomainKind,
    o: {
      pt?: DmaPgtable | null;
      gaw?: number;
      agaw?: number;
      coherency?: boolean;
      superpage?: number;
      s2?: DmarDomain | null;
      s1Cfg?: VtdS1Config | null;
    },
  ) {
    this.kind = kind;
    this.pt = o.pt ?? null;
    this.gaw = o.gaw ?? 0;
    this.agaw = o.agaw ?? 0;
    this.maxAddr = this.gaw ? 2 ** this.gaw - 1 : 0;
    this.iommuCoherency = o.coherency ?? false;
    this.iommuSuperpage = o.superpage ?? 0;
    this.s2 = o.s2 ?? null;
    this.s1Cfg = o.s1Cfg ?? null;
  }

  /** domain_id_iommu. */
  didOn(iommu: IntelIommu): number {
    const i = this.iommuArray.get(iommu);
    invariant(i !== undefined, `intel: the domain has no ID on ${iommu.name}`);
    return i.did;
  }

  /** The second-stage table as a PASID entry sees it. */
  ssTable(): SsTable {
    return {
      pgdFn: this.pt!.pgd,
      agaw: this.agaw,
      dirtyTracking: this.dirtyTracking,
      forceSnooping: this.forceSnooping,
    };
  }
}

function dmar(d: IommuDomain): DmarDomain {
  return d.priv as DmarDomain;
}

function isPaging(d: IommuDomain): boolean {
  return d.type === 'paging' && d.priv instanceof DmarDomain;
}

/** intel_domain_use_piotlb: domains whose IOTLB entries are tagged with the PASID. */
function usePiotlb(d: DmarDomain): boolean {
  return d.kind === 'nested' || d.kind === 'fs';
}

/** ilog2(__roundup_pow_of_two(n)) for n >= 1, on bigints. */
function roundupLog2(n: bigint): number {
  let k = 0;
  while (1n << BigInt(k) < n) k++;
  return k;
}

/**
 * calculate_psi_aligned_address: the address and size order of the smallest aligned
 * power-of-two range of pages covering [start, end].
 */
export function calculatePsiAlignedAddress(start: bigint, end: bigint): { addr: bigint; mask: number } {
  // aligned_nrpages(start, end - start + 1)
  const off = start & 0xfffn;
  let pages = (off + (end - start + 1n) + 0xfffn) >> 12n;
  if (pages <= 0n) pages = 1n;
  let mask = roundupLog2(pages);
  const bitmask = (1n << BigInt(mask)) - 1n;
  const pfn = start >> 12n;
  if (bitmask & pfn) {
    const endPfn = pfn + pages - 1n;
    const shared = ~(pfn ^ endPfn) & ~bitmask & ((1n << 64n) - 1n);
    if (shared === 0n) mask = MAX_AGAW_PFN_WIDTH;
    else {
      let k = 0;
      while (((shared >> BigInt(k)) & 1n) === 0n) k++;
      mask = k;
    }
  }
  const align = 1n << BigInt(12 + mask);
  return { addr: start - (start % align), mask };
}

export interface IntelIommuDriverOptions {
  readonly platform: Platform;
  readonly frames: FrameAllocator;
  readonly faults: FaultInjector;
  readonly tracer?: Tracer | null;
}

export class IntelIommuDriver implements IommuDriver {
  readonly name = 'intel_iommu';
  readonly platform: Platform;
  readonly frames: FrameAllocator;
  readonly faults: FaultInjector;
  readonly units: IntelIommu[];
  readonly blockedDomain: IommuDomain;
  readonly identityDomain: IommuDomain;
  readonly defaultDomain: IommuDomain;
  readonly userPasidTable = false;
  /** intel_pasid_max_id: the PASID space every unit supports. */
  maxPasids = PASID_MAX;
  /** The machine's devices, in machine order, as the IOMMU core sees them. */
  readonly devices: IommuDevice[] = [];
  /** Live paging and nested domains (leak checks). */
  readonly liveDomains = new Set<DmarDomain>();
  /** The page request queues of the units that have one. */
  readonly prqs = new Map<IntelIommu, IntelPrq>();
  private readonly pagingOps: IommuDomainOps;
  private readonly nestedOps: IommuDomainOps;
  private readonly dirtyOps: IommuDirtyOps;
  private tracerFn: Tracer | null;
  private booted = false;

  constructor(o: IntelIommuDriverOptions) {
    this.platform = o.platform;
    this.frames = o.frames;
    this.faults = o.faults;
    this.tracerFn = o.tracer ?? null;
    this.units = o.platform.iommus.map((u, i) => new IntelIommu(u, i, o.frames));
    for (const u of this.units) u.tracer = this.tracerFn;
    this.blockedDomain = new IommuDomain('blocked', this, {
      attachDev: (_d, dev) => this.blockingDomainAttachDev(dev),
      setDevPasid: (_d, dev, pasid, old) => this.blockingDomainSetDevPasid(dev, pasid, old),
      free: () => {},
    });
    this.identityDomain = new IommuDomain('identity', this, {
      attachDev: (_d, dev) => this.identityDomainAttachDev(dev),
      setDevPasid: (d, dev, pasid, old) => this.identityDomainSetDevPasid(d, dev, pasid, old),
      free: () => {},
    });
    this.defaultDomain = this.blockedDomain;
    this.pagingOps = {
      attachDev: (d, dev) => this.intelIommuAttachDevice(d, dev),
      setDevPasid: (d, dev, pasid, old) => this.intelIommuSetDevPasid(d, dev, pasid, old),
      mapPages: (d, iova, paddr, pgsize, pgcount, prot) =>
        this.intelIommuMapPages(d, iova, paddr, pgsize, pgcount, prot),
      mapSmallPages: (d, iova, pfns, first, n, pageSize, prot) =>
        this.intelIommuMapSmall(d, iova, pfns, first, n, pageSize, prot),
      unmapPages: (d, iova, pgsize, pgcount) => this.intelIommuUnmapPages(d, iova, pgsize, pgcount),
      iotlbSync: (d) => this.intelIommuTlbSync(d),
      iovaToPhys: (d, iova) => dmar(d).pt!.iovaToPhys(iova),
      enforceCacheCoherency: (d) => this.intelIommuEnforceCacheCoherency(d),
      free: (d) => this.intelIommuDomainFree(d),
    };
    this.nestedOps = {
      attachDev: (d, dev) => this.intelNestedAttachDev(d, dev),
      setDevPasid: (d, dev, pasid, old) => this.intelNestedSetDevPasid(d, dev, pasid, old),
      cacheInvalidateUser: (d, arr) => this.intelNestedCacheInvalidateUser(d, arr),
      free: (d) => this.intelNestedDomainFree(d),
    };
    this.dirtyOps = {
      setDirtyTracking: (d, enable) => this.intelIommuSetDirtyTracking(d, enable),
      readAndClearDirty: (d, iova, size, flags, dirty) =>
        this.intelIommuReadAndClearDirty(d, iova, size, flags, dirty),
    };
  }

  get tracer(): Tracer | null {
    return this.tracerFn;
  }

  set tracer(t: Tracer | null) {
    this.tracerFn = t;
    for (const u of this.units) u.tracer = t;
  }

  private trace(what: string, fields: Record<string, unknown> = {}): void {
    this.tracerFn?.({ kind: 'intel', what, ...fields });
  }

  // =============================================================================================
  // Bring-up and probe

  /**
   * intel_iommu_init: bring every unit up, probe every device of the machine (iommu core
   * probe: the device joins a group of its own on the default domain), then enable
   * translation. Errors are boot failures (out of memory for the structures).
   */
  init(): KernelError | undefined {
    invariant(!this.booted, 'intel_iommu_init: already initialised');
    this.booted = true;
    for (const u of this.units) if (u.pasidSupported) this.maxPasids = Math.min(this.maxPasids, u.maxPasids);
    for (const u of this.units) {
      const err = u.init();
      if (err) return err;
      if (u.sm && u.c.prs) {
        const prq = new IntelPrq(u);
        const e2 = prq.enable({
          deviceByRid: (iommu, rid) =>
            this.devices.find(
              (d) => this.info(d).iommu === iommu && this.info(d).sid === rid && this.info(d).pci.ats,
            ),
          reportDeviceFault: (dev, fault) => iommuReportDeviceFault(dev, fault),
        });
        if (e2) return e2;
        this.prqs.set(u, prq);
      }
    }
    for (const pci of this.platform.devices) {
      const dev = this.intelIommuProbeDevice(pci);
      if (!(dev instanceof IommuDevice)) return dev;
      this.devices.push(dev);
    }
    for (const u of this.units) u.enableTranslation();
    this.trace('boot', { units: this.units.length, devices: this.devices.length });
    return undefined;
  }

  /** The unit a device sits behind. */
  private unitOf(pci: PciDevice): IntelIommu {
    const u = this.units.find((x) => x.unit === pci.iommu);
    invariant(u !== undefined, `intel: ${pci.bdf} is behind no unit of this machine`);
    return u;
  }

  /** intel_iommu_probe_device + probe_finalize, and the core's probe of the device. */
  private intelIommuProbeDevice(pci: PciDevice): IommuDevice | KernelError {
    const iommu = this.unitOf(pci);
    const info = new DeviceDomainInfo(iommu, pci);
    if (iommu.c.dt && pci.ats) info.atsSupported = true;
    if (iommu.sm) {
      if (iommu.pasidSupported && pci.pasidBits > 0) info.pasidSupported = 1;
      // the model's ATS endpoints send page requests (PRI) too
      if (info.atsSupported && iommu.c.prs) info.priSupported = true;
    }
    if (iommu.sm) {
      const err = intelPasidAllocTable(info, this.maxPasids, this.faults);
      if (err) return err;
      const e2 = intelPasidSetupSmContext(info, this.faults);
      if (e2) return e2;
    }
    // probe_finalize: PASID, then ATS, then PRI (the model's endpoints want the PASID in
    // page group responses, so PRI goes on with PASID)
    if (info.pasidSupported) info.pasidEnabled = true;
    if (iommu.sm && info.atsSupported) info.atsEnabled = true;
    if (info.atsEnabled && info.priSupported) info.priEnabled = true;
    // dev_iommu_get_max_pasids
    const maxPasids =
      iommu.maxPasids && pci.pasidBits > 0 ? Math.min(2 ** pci.pasidBits, iommu.maxPasids) : 0;
    const dev = new IommuDevice(pci.bdf, this, { maxPasids, priv: info });
    iommuProbeDevice(dev);
    return dev;
  }

  /** The driver's state of a device (dev_iommu_priv_get). */
  info(dev: IommuDevice): DeviceDomainInfo {
    return dev.priv as DeviceDomainInfo;
  }

  /** The IommuDevice of a machine device. */
  deviceOf(pci: PciDevice): IommuDevice | undefined {
    return this.devices.find((d) => this.info(d).pci === pci);
  }

  // =============================================================================================
  // iommu_ops

  capable(dev: IommuDevice, cap: IommuCap): boolean {
    const iommu = this.info(dev).iommu;
    switch (cap) {
      case 'CACHE_COHERENCY':
        return true;
      case 'ENFORCE_CACHE_COHERENCY':
        return iommu.c.sc;
      case 'DIRTY_TRACKING':
        return iommu.ssadsSupported;
    }
  }

  /** intel_iommu_hw_info: struct iommu_hw_info_vtd { u32 flags; u32 __reserved; u64 cap_reg; u64 ecap_reg; }. */
  hwInfo(dev: IommuDevice, type: number): { type: number; data: Uint8Array } | KernelError {
    if (type !== IOMMU_HW_INFO_TYPE_DEFAULT && type !== IOMMU_HW_INFO_TYPE_INTEL_VTD)
      return kerr('EOPNOTSUPP', `intel hw_info: type ${type}`);
    if (this.faults.armed && this.faults.shouldFail('intel_iommu_hw_info'))
      return kerr('ENOMEM', 'intel hw_info: allocation failed');
    const iommu = this.info(dev).iommu;
    const data = new Uint8Array(24);
    const dv = new DataView(data.buffer);
    dv.setUint32(0, IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, true);
    dv.setBigUint64(8, iommu.cap, true);
    dv.setBigUint64(16, iommu.ecap, true);
    return { type: IOMMU_HW_INFO_TYPE_INTEL_VTD, data };
  }

  /** intel_iommu_page_response: a page group response through the invalidation queue. */
  pageResponse(dev: IommuDevice, fault: IommuPageFault, code: number): void {
    const info = this.info(dev);
    const prq = this.prqs.get(info.iommu);
    if (!prq) return;
    prq.submitResponse(
      info.sid,
      (fault.flags & 1) !== 0,
      fault.pasid,
      code,
      fault.grpid,
      (fault.flags & 2) !== 0,
    );
  }

  /** intel_iommu_get_resv_regions: the interrupt window is an MSI region (no RMRRs here). */
  getResvRegions(_dev: IommuDevice): { start: bigint; last: bigint }[] {
    return [{ start: IOAPIC_RANGE_START, last: IOAPIC_RANGE_END }];
  }

  // ---- paging domains ----

  /** paging_domain_alloc. */
  private pagingDomainAlloc(iommu: IntelIommu, firstStage: boolean): DmarDomain | KernelError {
    if (this.faults.armed && this.faults.shouldFail('intel_paging_domain_alloc'))
      return kerr('ENOMEM', 'intel: dmar_domain allocation failed');
    let gaw = agawToWidth(iommu.agaw);
    if (gaw > iommu.c.mgaw) gaw = iommu.c.mgaw;
    const superpage = iommu.superpageCapability(firstStage);
    const pt = new DmaPgtable({
      mem: iommu.mem,
      frames: this.frames,
      faults: this.faults,
      firstLevel: firstStage,
      agaw: iommu.agaw,
      gaw,
      superpage,
    });
    if (!pt.init()) return kerr('ENOMEM', 'intel: no memory for the top page table');
    const d = new DmarDomain(firstStage ? 'fs' : 'ss', {
      pt,
      gaw,
      agaw: iommu.agaw,
      coherency: iommu.pagingStructureCoherency,
      superpage,
    });
    let pgsizes = VTD_PAGE_SIZE;
    if (superpage >= 1) pgsizes |= 1 << 21;
    if (superpage >= 2) pgsizes |= 1 << 30;
    // first stage: canonical addresses, so bit gaw - 1 is not usable
    const apertureEnd = firstStage ? 2n ** BigInt(gaw - 1) - 1n : 2n ** BigInt(gaw) - 1n;
    d.domain = new IommuDomain(
      'paging',
      this,
      this.pagingOps,
      { pgsizes, apertureStart: 0n, apertureEnd },
      d,
    );
    this.liveDomains.add(d);
    return d;
  }

  /** intel_iommu_domain_alloc_first_stage. */
  private allocFirstStage(iommu: IntelIommu, flags: number): IommuDomain | KernelError {
    if (flags & ~HWPT_ALLOC_PASID) return kerr('EOPNOTSUPP', 'first stage: flags');
    if (!iommu.sm || !iommu.c.flts) return kerr('EOPNOTSUPP', 'no first-stage translation');
    const d = this.pagingDomainAlloc(iommu, true);
    if (!(d instanceof DmarDomain)) return d;
    if (iommu.rwbfRequired) d.iotlbSyncMap = true;
    return d.domain;
  }

  /** intel_iommu_domain_alloc_second_stage. */
  private allocSecondStage(iommu: IntelIommu, flags: number): IommuDomain | KernelError {
    if (flags & ~(HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING | HWPT_ALLOC_PASID))
      return kerr('EOPNOTSUPP', 'second stage: flags');
    if (
      (flags & HWPT_ALLOC_NEST_PARENT && !iommu.nestedSupported) ||
      (flags & HWPT_ALLOC_DIRTY_TRACKING && !iommu.ssadsSupported)
    )
      return kerr('EOPNOTSUPP', 'nesting or dirty tracking not supported');
    if (iommu.sm && !iommu.c.slts) return kerr('EOPNOTSUPP', 'no second-stage translation');
    const d = this.pagingDomainAlloc(iommu, false);
    if (!(d instanceof DmarDomain)) return d;
    d.nestedParent = (flags & HWPT_ALLOC_NEST_PARENT) !== 0;
    if (flags & HWPT_ALLOC_DIRTY_TRACKING) d.domain.dirtyOps = this.dirtyOps;
    if (iommu.rwbfRequired || iommu.c.cm) d.iotlbSyncMap = true;
    return d.domain;
  }

  /** intel_iommu_domain_alloc_paging_flags: first stage if possible, else second stage. */
  domainAllocPagingFlags(
    dev: IommuDevice,
    flags: number,
    userData: IommuUserData | null,
  ): IommuDomain | KernelError {
    const iommu = this.info(dev).iommu;
    if (userData) return kerr('EOPNOTSUPP', 'intel paging domain: user data');
    const fs = this.allocFirstStage(iommu, flags);
    if (!('code' in fs) || fs.code !== 'EOPNOTSUPP') return fs;
    return this.allocSecondStage(iommu, flags);
  }

  /** intel_iommu_domain_free. */
  private intelIommuDomainFree(domain: IommuDomain): void {
    const d = dmar(domain);
    invariant(!(d.nestedParent && d.s1Domains.size > 0), 'intel: freeing a parent with stage-1 domains');
    invariant(d.devices.size === 0 && d.devPasids.length === 0, 'intel: freeing a domain still attached');
    const pt = d.pt!;
    if (pt.pgd !== 0) {
      const freelist: number[] = [];
      pt.unmap(0, pt.maxPfn, freelist);
      pt.putPages(freelist);
    }
    invariant(pt.pages === 0, 'intel: a freed domain keeps page-table pages');
    this.liveDomains.delete(d);
  }

  // ---- domain IDs ----

  /** domain_attach_iommu. */
  private domainAttachIommu(d: DmarDomain, iommu: IntelIommu): KernelError | undefined {
    if (this.faults.armed && this.faults.shouldFail('domain_attach_iommu'))
      return kerr('ENOMEM', 'domain_attach_iommu: allocation failed');
    const cur = d.iommuArray.get(iommu);
    if (cur) {
      cur.refcnt++;
      return undefined;
    }
    const did = iommu.allocDid();
    if (did < 0) return kerr('ENOSPC', `${iommu.name}: No free domain ids`);
    d.iommuArray.set(iommu, { did, refcnt: 1 });
    return undefined;
  }

  /** domain_detach_iommu. */
  private domainDetachIommu(d: DmarDomain, iommu: IntelIommu): void {
    const info = d.iommuArray.get(iommu);
    invariant(info !== undefined, 'intel: domain_detach_iommu without an ID');
    if (--info.refcnt === 0) {
      iommu.freeDid(info.did);
      d.iommuArray.delete(iommu);
    }
  }

  /** iommu_domain_did: the DID a domain's entries carry on a unit. */
  private iommuDomainDid(domain: IommuDomain, iommu: IntelIommu): number {
    if (domain.type === 'identity') return FLPT_DEFAULT_DID;
    return dmar(domain).didOn(iommu);
  }

  // ---- cache tags (cache.c) ----

  private cacheTagAssign(
    d: DmarDomain,
    did: number,
    info: DeviceDomainInfo,
    pasid: number,
    type: number,
  ): KernelError | undefined {
    if (this.faults.armed && this.faults.shouldFail('cache_tag_assign'))
      return kerr('ENOMEM', 'cache_tag_assign: allocation failed');
    const dev = type === CACHE_TAG_DEVTLB || type === CACHE_TAG_NESTING_DEVTLB ? info : null;
    for (const t of d.cacheTags) {
      if (t.type === type && t.did === did && t.pasid === pasid && t.iommu === info.iommu && t.dev === dev) {
        t.users++;
        return undefined;
      }
    }
    d.cacheTags.push({ type, iommu: info.iommu, did, pasid, dev, users: 1 });
    return undefined;
  }

  private cacheTagUnassign(
    d: DmarDomain,
    did: number,
    info: DeviceDomainInfo,
    pasid: number,
    type: number,
  ): void {
    const dev = type === CACHE_TAG_DEVTLB || type === CACHE_TAG_NESTING_DEVTLB ? info : null;
    const i = d.cacheTags.findIndex(
      (t) => t.type === type && t.did === did && t.pasid === pasid && t.iommu === info.iommu && t.dev === dev,
    );
    if (i >= 0 && --d.cacheTags[i]!.users === 0) d.cacheTags.splice(i, 1);
  }

  /** __cache_tag_assign_domain (with domain_qi_batch_alloc) and its parent form. */
  private cacheTagAssignPair(
    d: DmarDomain,
    did: number,
    info: DeviceDomainInfo,
    pasid: number,
    parent: boolean,
  ): KernelError | undefined {
    if (!d.qiBatch) {
      if (this.faults.armed && this.faults.shouldFail('domain_qi_batch_alloc'))
        return kerr('ENOMEM', 'qi_batch allocation failed');
      d.qiBatch = new QiBatch();
    }
    const it = parent ? CACHE_TAG_NESTING_IOTLB : CACHE_TAG_IOTLB;
    const dt = parent ? CACHE_TAG_NESTING_DEVTLB : CACHE_TAG_DEVTLB;
    const e = this.cacheTagAssign(d, did, info, pasid, it);
    if (e || !info.atsEnabled) return e;
    const e2 = this.cacheTagAssign(d, did, info, pasid, dt);
    if (e2) this.cacheTagUnassign(d, did, info, pasid, it);
    return e2;
  }

  private cacheTagUnassignPair(
    d: DmarDomain,
    did: number,
    info: DeviceDomainInfo,
    pasid: number,
    parent: boolean,
  ): void {
    this.cacheTagUnassign(d, did, info, pasid, parent ? CACHE_TAG_NESTING_IOTLB : CACHE_TAG_IOTLB);
    if (info.atsEnabled)
      this.cacheTagUnassign(d, did, info, pasid, parent ? CACHE_TAG_NESTING_DEVTLB : CACHE_TAG_DEVTLB);
  }

  /** cache_tag_assign_domain. */
  private cacheTagAssignDomain(
    d: DmarDomain,
    info: DeviceDomainInfo,
    pasid: number,
  ): KernelError | undefined {
    const did = d.didOn(info.iommu);
    const e = this.cacheTagAssignPair(d, did, info, pasid, false);
    if (e || d.kind !== 'nested') return e;
    const e2 = this.cacheTagAssignPair(d.s2!, did, info, pasid, true);
    if (e2) this.cacheTagUnassignPair(d, did, info, pasid, false);
    return e2;
  }

  /** cache_tag_unassign_domain. */
  private cacheTagUnassignDomain(d: DmarDomain, info: DeviceDomainInfo, pasid: number): void {
    const did = d.didOn(info.iommu);
    this.cacheTagUnassignPair(d, did, info, pasid, false);
    if (d.kind === 'nested') this.cacheTagUnassignPair(d.s2!, did, info, pasid, true);
  }

  /** cache_tag_flush_iotlb into the domain's batch. */
  private cacheTagFlushIotlb(d: DmarDomain, tag: CacheTag, addr: bigint, mask: number, ih: number): void {
    const iommu = tag.iommu;
    const b = d.qiBatch!;
    const lo = Number(addr & 0xffffffffn);
    const hi = Number((addr >> 32n) & 0xffffffffn);
    if (usePiotlb(d)) {
      const o = b.next();
      if (mask >= MAX_AGAW_PFN_WIDTH) iommu.descPiotlb(b.descs, o, tag.did, tag.pasid, 0, 0, -1, 0);
      else iommu.descPiotlb(b.descs, o, tag.did, tag.pasid, lo, hi, mask, ih);
      iommu.batchAdvance(b);
      return;
    }
    let type = DMA_TLB_PSI_FLUSH;
    let aLo = lo;
    let aHi = hi;
    let am = mask;
    let h = ih;
    if (!iommu.c.psi || mask > iommu.c.mamv) {
      aLo = 0;
      aHi = 0;
      am = 0;
      h = 0;
      type = DMA_TLB_DSI_FLUSH;
    }
    if (iommu.qiDescFn !== 0) {
      const o = b.next();
      iommu.descIotlb(b.descs, o, tag.did, aLo, aHi, h, am, type);
      iommu.batchAdvance(b);
    } else iommu.flushIotlb(tag.did, aLo, aHi, am, type, h);
  }

  /** cache_tag_flush_devtlb_psi into the domain's batch. */
  private cacheTagFlushDevtlb(d: DmarDomain, tag: CacheTag, addr: bigint, mask: number): void {
    const iommu = tag.iommu;
    if (!(iommu.gcmd & (1 << 31))) return;
    const info = tag.dev!;
    const b = d.qiBatch!;
    const lo = Number(addr & 0xffffffffn);
    const hi = Number((addr >> 32n) & 0xffffffffn);
    const o = b.next();
    if (tag.pasid === IOMMU_NO_PASID)
      iommu.descDevIotlb(b.descs, o, info.sid, info.pfsid, info.atsQdep, lo, hi, mask);
    else iommu.descDevIotlbPasid(b.descs, o, info.sid, info.pfsid, tag.pasid, info.atsQdep, lo, hi, mask);
    iommu.batchAdvance(b);
  }

  /** cache_tag_flush_range: invalidate [start, end] wherever the domain may be cached. */
  cacheTagFlushRange(d: DmarDomain, start: bigint, end: bigint, ih: number): void {
    let addr: bigint;
    let mask: number;
    if (start === 0n && end === U64_MAX) {
      addr = 0n;
      mask = MAX_AGAW_PFN_WIDTH;
    } else ({ addr, mask } = calculatePsiAlignedAddress(start, end));
    let iommu: IntelIommu | null = null;
    for (const tag of d.cacheTags) {
      if (iommu && iommu !== tag.iommu) iommu.flushBatch(d.qiBatch!);
      iommu = tag.iommu;
      switch (tag.type) {
        case CACHE_TAG_IOTLB:
        case CACHE_TAG_NESTING_IOTLB:
          this.cacheTagFlushIotlb(d, tag, addr, mask, ih);
          break;
        case CACHE_TAG_NESTING_DEVTLB:
          // the device caches nested results: flush all of it
          this.cacheTagFlushDevtlb(d, tag, 0n, MAX_AGAW_PFN_WIDTH);
          break;
        case CACHE_TAG_DEVTLB:
          this.cacheTagFlushDevtlb(d, tag, addr, mask);
          break;
      }
    }
    if (iommu) iommu.flushBatch(d.qiBatch!);
  }

  /** cache_tag_flush_all. */
  cacheTagFlushAll(d: DmarDomain): void {
    this.cacheTagFlushRange(d, 0n, U64_MAX, 0);
  }

  /** cache_tag_flush_range_np: after new mappings (caching mode or write-buffer flushing). */
  private cacheTagFlushRangeNp(d: DmarDomain, start: bigint, end: bigint): void {
    const { addr, mask } = calculatePsiAlignedAddress(start, end);
    let iommu: IntelIommu | null = null;
    for (const tag of d.cacheTags) {
      if (iommu && iommu !== tag.iommu) iommu.flushBatch(d.qiBatch!);
      iommu = tag.iommu;
      if (!iommu.c.cm || d.kind === 'fs') {
        iommu.flushWriteBuffer();
        continue;
      }
      if (tag.type === CACHE_TAG_IOTLB || tag.type === CACHE_TAG_NESTING_IOTLB)
        this.cacheTagFlushIotlb(d, tag, addr, mask, 0);
    }
    if (iommu) iommu.flushBatch(d.qiBatch!);
  }

  // ---- map / unmap ----

  /** intel_iommu_map_pages (with __domain_mapping and the iotlb_sync_map that follows). */
  private intelIommuMapPages(
    domain: IommuDomain,
    iova: number,
    paddr: number,
    pgsize: number,
    pgcount: number,
    iommuProt: number,
  ): number | KernelError {
    if (pgsize !== 4096 && pgsize !== 1 << 21 && pgsize !== 1 << 30)
      return kerr('EINVAL', `intel map: page size ${pgsize}`);
    if (iova % pgsize !== 0 || paddr % pgsize !== 0) return kerr('EINVAL', 'intel map: unaligned');
    const size = pgsize * pgcount;
    const d = dmar(domain);
    const err = this.domainMapping(d, iova, paddr, size, iommuProt);
    if (err) return err;
    if (d.iotlbSyncMap) this.cacheTagFlushRangeNp(d, BigInt(iova), BigInt(iova + size - 1));
    return size;
  }

  /** intel_iommu_map: prot, the address-width check, then __domain_mapping. */
  private domainMapping(
    d: DmarDomain,
    iova: number,
    hpa: number,
    size: number,
    iommuProt: number,
  ): KernelError | undefined {
    let prot = 0;
    if (iommuProt & IOMMU_READ) prot |= DMA_PTE_READ;
    if (iommuProt & IOMMU_WRITE) prot |= DMA_PTE_WRITE;
    if (d.setPteSnp) prot |= DMA_PTE_SNP;
    const maxAddr = iova + size;
    if (d.maxAddr < maxAddr) {
      if (2 ** d.gaw < maxAddr)
        return kerr('EFAULT', `iommu width (${d.gaw}) is not sufficient for the mapped address`);
      d.maxAddr = maxAddr;
    }
    const pt = d.pt!;
    const iovPfn = Math.floor(iova / VTD_PAGE_SIZE);
    const physPfn = Math.floor(hpa / VTD_PAGE_SIZE);
    const nrPages = Math.ceil(((hpa % VTD_PAGE_SIZE) + size) / VTD_PAGE_SIZE);
    if (!pt.pfnSupported(iovPfn + nrPages - 1)) return kerr('EINVAL', 'intel map: beyond the AGAW');
    if ((prot & (DMA_PTE_READ | DMA_PTE_WRITE)) === 0) return kerr('EINVAL', 'intel map: no permission');
    if (!(prot & DMA_PTE_WRITE) && d.nestedParent)
      return kerr(
        'EINVAL',
        'Read-only mapping is disallowed on the domain which serves as the parent in a nested configuration, due to HW errata (ERRATA_772415_SPR17)',
      );
    d.hasMappings = true;
    const ok = pt.mapRange(iovPfn, physPfn, nrPages, pt.leafAttr(prot), (s, e) =>
      this.cacheTagFlushRange(d, BigInt(s) * 4096n, BigInt(e) * 4096n, 0),
    );
    if (!ok) {
      this.unrollMapping(d, iovPfn, nrPages);
      return kerr('ENOMEM', 'intel map: no memory for a page table');
    }
    return undefined;
  }

  /** Unmaps whatever a failed map call wrote in [iovPfn, iovPfn + n) (see the header). */
  private unrollMapping(d: DmarDomain, iovPfn: number, n: number): void {
    const pt = d.pt!;
    const freelist: number[] = [];
    let pfn = iovPfn;
    const end = iovPfn + n;
    while (pfn < end) {
      const loc = pt.pfnToDmaPte(pfn, 0, false);
      const span = levelSize(loc < 0 ? pt.levels : pt.level);
      if (loc >= 0 && (pt.lo(loc) & 3) !== 0) {
        const first = pfn - (pfn % span);
        pt.unmap(first, first + span - 1, freelist);
      }
      pfn = pfn - (pfn % span) + span;
    }
    this.cacheTagFlushRange(d, BigInt(iovPfn) * 4096n, BigInt(end) * 4096n - 1n, 0);
    pt.putPages(freelist);
  }

  /**
   * iommufd's batch_iommu_map_small: n separate 4 KiB iommu_map calls (each with its
   * iotlb_sync_map), the leaf entries written straight into the tables.
   */
  private intelIommuMapSmall(
    domain: IommuDomain,
    iova: number,
    pfns: Int32Array,
    first: number,
    n: number,
    pageSize: number,
    iommuProt: number,
  ): KernelError | undefined {
    const d = dmar(domain);
    invariant(pageSize === VTD_PAGE_SIZE, 'intel: small pages are 4 KiB');
    let prot = 0;
    if (iommuProt & IOMMU_READ) prot |= DMA_PTE_READ;
    if (iommuProt & IOMMU_WRITE) prot |= DMA_PTE_WRITE;
    if (d.setPteSnp) prot |= DMA_PTE_SNP;
    const pt = d.pt!;
    const iovPfn = iova / VTD_PAGE_SIZE;
    if ((prot & 3) === 0) return kerr('EINVAL', 'intel map: no permission');
    if (!(prot & DMA_PTE_WRITE) && d.nestedParent)
      return kerr('EINVAL', 'Read-only mapping is disallowed on a nesting parent (ERRATA_772415_SPR17)');
    if (!pt.pfnSupported(iovPfn + n - 1)) return kerr('EINVAL', 'intel map: beyond the AGAW');
    const end = iova + n * VTD_PAGE_SIZE;
    if (d.maxAddr < end) {
      if (2 ** d.gaw < end)
        return kerr('EFAULT', `iommu width (${d.gaw}) is not sufficient for the mapped address`);
      d.maxAddr = end;
    }
    d.hasMappings = true;
    const done = pt.mapSmall(iovPfn, pfns, first, n, pt.leafAttr(prot));
    if (done < n) {
      // the pages mapped so far were separate successful maps: iommufd unmaps them
      if (done > 0) {
        this.intelIommuUnmapPages(domain, iova, VTD_PAGE_SIZE, done);
        this.intelIommuTlbSync(domain);
      }
      return kerr('ENOMEM', 'intel map: no memory for a page table');
    }
    if (d.iotlbSyncMap)
      for (let i = 0; i < n; i++) {
        const a = BigInt(iova + i * VTD_PAGE_SIZE);
        this.cacheTagFlushRangeNp(d, a, a + 4095n);
      }
    return undefined;
  }

  /** intel_iommu_unmap_pages / intel_iommu_unmap (the flush comes with iotlbSync). */
  private intelIommuUnmapPages(domain: IommuDomain, iova: number, pgsize: number, pgcount: number): number {
    const d = dmar(domain);
    const pt = d.pt!;
    let size = pgsize * pgcount;
    const loc = pt.pfnToDmaPte(Math.floor(iova / VTD_PAGE_SIZE), 0, false);
    if (loc < 0) return 0;
    const lvlBytes = levelSize(pt.level) * VTD_PAGE_SIZE;
    if (size < lvlBytes) size = lvlBytes;
    const startPfn = Math.floor(iova / VTD_PAGE_SIZE);
    const lastPfn = Math.floor((iova + size - 1) / VTD_PAGE_SIZE);
    pt.unmap(startPfn, lastPfn, d.freelist);
    if (d.maxAddr === iova + size) d.maxAddr = iova;
    // iommu_iotlb_gather_add_page
    const gEnd = iova + size - 1;
    if (
      (d.gatherPgsize !== 0 && d.gatherPgsize !== size) ||
      (d.gatherStart <= d.gatherEnd && (gEnd + 1 < d.gatherStart || iova > d.gatherEnd + 1))
    )
      this.intelIommuTlbSync(domain);
    d.gatherPgsize = size;
    if (iova < d.gatherStart) d.gatherStart = iova;
    if (gEnd > d.gatherEnd) d.gatherEnd = gEnd;
    return size;
  }

  /** intel_iommu_tlb_sync: flush the gathered range, then free the gathered tables. */
  private intelIommuTlbSync(domain: IommuDomain): void {
    const d = dmar(domain);
    if (d.gatherStart <= d.gatherEnd) {
      const ih = d.freelist.length === 0 ? 1 : 0;
      this.cacheTagFlushRange(d, BigInt(d.gatherStart), BigInt(d.gatherEnd), ih);
    }
    d.pt!.putPages(d.freelist);
    d.gatherStart = Number.POSITIVE_INFINITY;
    d.gatherEnd = 0;
    d.gatherPgsize = 0;
  }

  /** domain_support_force_snooping: every unit the domain is attached through has ECAP.SC. */
  private domainSupportForceSnooping(d: DmarDomain): boolean {
    for (const info of d.devices) if (!info.iommu.c.sc) return false;
    for (const x of d.devPasids) if (!x.dev.iommu.c.sc) return false;
    return true;
  }

  /**
   * intel_iommu_enforce_cache_coherency_fs / _ss: first stage sets PGSNP in the PASID entries
   * (now for the attached RIDs, and in every entry written from now on), second stage sets SNP
   * in every leaf, which is only possible before the first mapping.
   */
  private intelIommuEnforceCacheCoherency(domain: IommuDomain): boolean {
    const d = dmar(domain);
    if (d.kind === 'fs') {
      if (d.forceSnooping) return true;
      if (!this.domainSupportForceSnooping(d)) return false;
      d.forceSnooping = true;
      for (const info of d.devices) intelPasidSetupPageSnoopControl(info, IOMMU_NO_PASID, this.faults);
      return true;
    }
    if (!this.domainSupportForceSnooping(d) || d.hasMappings) return false;
    d.setPteSnp = true;
    d.forceSnooping = true;
    return true;
  }

  // ---- attach ----

  /** paging_domain_compatible (with its first- and second-stage halves). */
  private pagingDomainCompatible(domain: IommuDomain, info: DeviceDomainInfo): KernelError | undefined {
    const d = dmar(domain);
    const iommu = info.iommu;
    const ps = domain.pgsizes;
    if (d.kind === 'fs') {
      invariant(!domain.dirtyOps && !d.nestedParent, 'intel: a first-stage domain with dirty ops or nesting');
      if (!iommu.sm || !iommu.c.flts) return kerr('EINVAL', 'the unit has no first-stage translation');
      if (!iommu.c.fl1gp && ps & (1 << 30)) return kerr('EINVAL', 'the unit has no first-stage 1 GiB pages');
      if (iommu.rwbfRequired && !d.iotlbSyncMap) return kerr('EINVAL', 'iotlb sync on map required');
    } else {
      const sllps = iommu.c.sllps;
      if (domain.dirtyOps && !iommu.ssadsSupported) return kerr('EINVAL', 'the unit has no dirty tracking');
      if (d.nestedParent && !iommu.nestedSupported) return kerr('EINVAL', 'the unit has no nesting');
      if (iommu.sm && !iommu.c.slts) return kerr('EINVAL', 'the unit has no second-stage translation');
      if (!(sllps & 1) && ps & (1 << 21)) return kerr('EINVAL', 'the unit has no 2 MiB pages');
      if (!(sllps & 2) && ps & (1 << 30)) return kerr('EINVAL', 'the unit has no 1 GiB pages');
      if ((iommu.rwbfRequired || iommu.c.cm) && !d.iotlbSyncMap)
        return kerr('EINVAL', 'iotlb sync on map required');
    }
    if (d.forceSnooping && !iommu.c.sc) return kerr('EINVAL', 'the unit cannot force snooping');
    if (d.iommuCoherency !== iommu.pagingStructureCoherency)
      return kerr('EINVAL', 'page-walk coherency differs from the unit');
    let aw = agawToWidth(iommu.agaw);
    if (aw > iommu.c.mgaw) aw = iommu.c.mgaw;
    if (d.gaw > aw || d.agaw > iommu.agaw) return kerr('EINVAL', 'the domain is wider than the unit');
    return undefined;
  }

  /** iopf_for_domain_set: an IOPF-capable domain needs PRI (intel_iommu_enable_iopf). */
  private iopfForDomainSet(domain: IommuDomain | null, info: DeviceDomainInfo): KernelError | undefined {
    if (!domain?.iopfHandler) return undefined;
    if (!info.priEnabled) return kerr('ENODEV', `${info.pci.bdf}: PRI is not enabled`);
    info.iopfRefcount++;
    return undefined;
  }

  private iopfForDomainRemove(domain: IommuDomain | null, info: DeviceDomainInfo): void {
    if (!domain?.iopfHandler) return;
    invariant(info.priEnabled && info.iopfRefcount > 0, 'intel: IOPF disabled more often than enabled');
    info.iopfRefcount--;
  }

  private iopfForDomainReplace(
    next: IommuDomain | null,
    old: IommuDomain | null,
    info: DeviceDomainInfo,
  ): KernelError | undefined {
    const e = this.iopfForDomainSet(next, info);
    if (e) return e;
    this.iopfForDomainRemove(old, info);
    return undefined;
  }

  /** device_block_translation: the RID entry goes, and the device leaves its domain. */
  private deviceBlockTranslation(info: DeviceDomainInfo): void {
    if (!info.domainAttached) return;
    const d = info.domain as DmarDomain | null;
    if (d) this.cacheTagUnassignDomain(d, info, IOMMU_NO_PASID);
    if (info.iommu.sm) intelPasidTearDownEntry(info, IOMMU_NO_PASID, false);
    else this.domainContextClear(info);
    info.domainAttached = false;
    if (!d) return;
    d.devices.delete(info);
    this.domainDetachIommu(d, info.iommu);
    info.domain = null;
  }

  /** domain_context_clear (legacy mode): the context entry goes, and ATS is disabled. */
  private domainContextClear(info: DeviceDomainInfo): void {
    legacyContextClear(info, this.faults);
    info.atsEnabled = false;
  }

  /** domain_context_mapping (legacy mode): a second-level context entry, then ATS on. */
  private domainContextMapping(d: DmarDomain, info: DeviceDomainInfo): KernelError | undefined {
    const tt = info.atsSupported ? CONTEXT_TT_DEV_IOTLB : CONTEXT_TT_MULTI_LEVEL;
    const err = legacyContextMap(info, d.didOn(info.iommu), d.pt!.pgd, d.agaw, tt, this.faults);
    if (err) return err;
    if (info.atsSupported) info.atsEnabled = true;
    return undefined;
  }

  /** domain_setup_first_level (with the replace form when `old` is given). */
  private domainSetupFirstLevel(
    info: DeviceDomainInfo,
    d: DmarDomain,
    pasid: number,
    old: IommuDomain | null,
  ): KernelError | undefined {
    const iommu = info.iommu;
    const level = agawToLevel(d.agaw);
    if (level !== 4 && level !== 5) return kerr('EINVAL', `first stage with ${level} levels`);
    let flags = 0;
    if (level === 5) flags |= PASID_FLAG_FL5LP;
    if (d.forceSnooping) flags |= PASID_FLAG_PAGE_SNOOP;
    const did = d.didOn(iommu);
    if (!old) return intelPasidSetupFirstLevel(info, d.pt!.pgd, pasid, did, flags, this.faults);
    return intelPasidReplaceFirstLevel(
      info,
      d.pt!.pgd,
      pasid,
      did,
      this.iommuDomainDid(old, iommu),
      flags,
      this.faults,
    );
  }

  /** domain_setup_second_level. */
  private domainSetupSecondLevel(
    info: DeviceDomainInfo,
    d: DmarDomain,
    pasid: number,
    old: IommuDomain | null,
  ): KernelError | undefined {
    const iommu = info.iommu;
    const did = d.didOn(iommu);
    if (!old) return intelPasidSetupSecondLevel(info, d.ssTable(), pasid, did, this.faults);
    return intelPasidReplaceSecondLevel(
      info,
      d.ssTable(),
      pasid,
      did,
      this.iommuDomainDid(old, iommu),
      this.faults,
    );
  }

  /** dmar_domain_attach_device. */
  private dmarDomainAttachDevice(d: DmarDomain, info: DeviceDomainInfo): KernelError | undefined {
    const iommu = info.iommu;
    const e = this.domainAttachIommu(d, iommu);
    if (e) return e;
    info.domain = d;
    info.domainAttached = true;
    d.devices.add(info);
    let err = !iommu.sm
      ? this.domainContextMapping(d, info)
      : d.kind === 'fs'
        ? this.domainSetupFirstLevel(info, d, IOMMU_NO_PASID, null)
        : this.domainSetupSecondLevel(info, d, IOMMU_NO_PASID, null);
    if (!err) err = this.cacheTagAssignDomain(d, info, IOMMU_NO_PASID);
    if (err) {
      // out_block_translation (device_block_translation), minus the unassign of cache tags
      // this attach never assigned: the kernel's would drop another device's shared tag
      if (iommu.sm) intelPasidTearDownEntry(info, IOMMU_NO_PASID, false);
      else this.domainContextClear(info);
      info.domainAttached = false;
      d.devices.delete(info);
      this.domainDetachIommu(d, iommu);
      info.domain = null;
      return err;
    }
    return undefined;
  }

  /** intel_iommu_attach_device. */
  private intelIommuAttachDevice(domain: IommuDomain, dev: IommuDevice): KernelError | undefined {
    const info = this.info(dev);
    this.deviceBlockTranslation(info);
    const e = this.pagingDomainCompatible(domain, info);
    if (e) return e;
    const e2 = this.iopfForDomainSet(domain, info);
    if (e2) return e2;
    const e3 = this.dmarDomainAttachDevice(dmar(domain), info);
    if (e3) this.iopfForDomainRemove(domain, info);
    return e3;
  }

  /** blocking_domain_attach_dev. */
  private blockingDomainAttachDev(dev: IommuDevice): KernelError | undefined {
    const info = this.info(dev);
    const cur = info.domain as DmarDomain | null;
    this.iopfForDomainRemove(cur ? cur.domain : null, info);
    this.deviceBlockTranslation(info);
    return undefined;
  }

  /** identity_domain_attach_dev: a pass-through RID entry. */
  private identityDomainAttachDev(dev: IommuDevice): KernelError | undefined {
    const info = this.info(dev);
    this.deviceBlockTranslation(info);
    const iommu = info.iommu;
    const err = iommu.sm
      ? intelPasidSetupPassThrough(info, IOMMU_NO_PASID, this.faults)
      : legacyContextMap(info, FLPT_DEFAULT_DID, 0, iommu.msagaw, CONTEXT_TT_PASS_THROUGH, this.faults);
    if (!err) info.domainAttached = true;
    return err;
  }

  // ---- PASID attach ----

  /** domain_add_dev_pasid. */
  private domainAddDevPasid(d: DmarDomain, info: DeviceDomainInfo, pasid: number): KernelError | undefined {
    if (this.faults.armed && this.faults.shouldFail('domain_add_dev_pasid'))
      return kerr('ENOMEM', 'dev_pasid allocation failed');
    const e = this.domainAttachIommu(d, info.iommu);
    if (e) return e;
    const e2 = this.cacheTagAssignDomain(d, info, pasid);
    if (e2) {
      this.domainDetachIommu(d, info.iommu);
      return e2;
    }
    d.devPasids.push({ dev: info, pasid });
    return undefined;
  }

  /** domain_remove_dev_pasid. */
  private domainRemoveDevPasid(domain: IommuDomain | null, info: DeviceDomainInfo, pasid: number): void {
    if (!domain || domain.type === 'identity' || domain.type === 'blocked') return;
    const d = dmar(domain);
    const i = d.devPasids.findIndex((x) => x.dev === info && x.pasid === pasid);
    this.cacheTagUnassignDomain(d, info, pasid);
    this.domainDetachIommu(d, info.iommu);
    invariant(i >= 0, 'intel: domain_remove_dev_pasid of a PASID the domain does not have');
    d.devPasids.splice(i, 1);
  }

  /** intel_iommu_set_dev_pasid. */
  private intelIommuSetDevPasid(
    domain: IommuDomain,
    dev: IommuDevice,
    pasid: number,
    old: IommuDomain | null,
  ): KernelError | undefined {
    const info = this.info(dev);
    const iommu = info.iommu;
    const d = dmar(domain);
    if (!iommu.pasidSupported) return kerr('EOPNOTSUPP', `${iommu.name} has no PASID support`);
    if (domain.dirtyOps) return kerr('EINVAL', 'a dirty-tracking domain cannot be attached to a PASID');
    const e = this.pagingDomainCompatible(domain, info);
    if (e) return e;
    const e2 = this.domainAddDevPasid(d, info, pasid);
    if (e2) return e2;
    const e3 = this.iopfForDomainReplace(domain, old, info);
    if (e3) {
      this.domainRemoveDevPasid(domain, info, pasid);
      return e3;
    }
    const e4 =
      d.kind === 'fs'
        ? this.domainSetupFirstLevel(info, d, pasid, old)
        : this.domainSetupSecondLevel(info, d, pasid, old);
    if (e4) {
      this.iopfForDomainReplace(old, domain, info);
      this.domainRemoveDevPasid(domain, info, pasid);
      return e4;
    }
    this.domainRemoveDevPasid(old, info, pasid);
    return undefined;
  }

  /** blocking_domain_set_dev_pasid. */
  private blockingDomainSetDevPasid(
    dev: IommuDevice,
    pasid: number,
    old: IommuDomain | null,
  ): KernelError | undefined {
    const info = this.info(dev);
    this.iopfForDomainRemove(old, info);
    intelPasidTearDownEntry(info, pasid, false);
    this.domainRemoveDevPasid(old, info, pasid);
    return undefined;
  }

  /** identity_domain_set_dev_pasid. */
  private identityDomainSetDevPasid(
    domain: IommuDomain,
    dev: IommuDevice,
    pasid: number,
    old: IommuDomain | null,
  ): KernelError | undefined {
    const info = this.info(dev);
    const iommu = info.iommu;
    if (!iommu.pasidSupported) return kerr('EOPNOTSUPP', `${iommu.name} has no PASID support`);
    const e = this.iopfForDomainReplace(domain, old, info);
    if (e) return e;
    const err = old
      ? intelPasidReplacePassThrough(info, pasid, this.iommuDomainDid(old, iommu), this.faults)
      : intelPasidSetupPassThrough(info, pasid, this.faults);
    if (err) {
      this.iopfForDomainReplace(old, domain, info);
      return err;
    }
    this.domainRemoveDevPasid(old, info, pasid);
    return undefined;
  }

  // ---- nested domains (nested.c) ----

  /** intel_iommu_domain_alloc_nested. */
  domainAllocNested(
    dev: IommuDevice,
    parent: IommuDomain,
    flags: number,
    userData: IommuUserData,
  ): IommuDomain | KernelError {
    const iommu = this.info(dev).iommu;
    if (!iommu.nestedSupported || flags & ~HWPT_ALLOC_PASID)
      return kerr('EOPNOTSUPP', 'intel nested: no nesting support or unknown flags');
    if (userData.type !== IOMMU_HWPT_DATA_VTD_S1)
      return kerr('EOPNOTSUPP', `intel nested: data type ${userData.type}`);
    if (!isPaging(parent) || dmar(parent).kind !== 'ss' || !dmar(parent).nestedParent)
      return kerr('EINVAL', 'intel nested: the parent is not a second-stage nesting parent');
    const b = copyStructFromUserData(userData, IOMMU_HWPT_DATA_VTD_S1, VTD_S1_SIZE, VTD_S1_SIZE);
    if (!(b instanceof Uint8Array)) return b;
    if (this.faults.armed && this.faults.shouldFail('intel_nested_domain_alloc'))
      return kerr('ENOMEM', 'intel nested: allocation failed');
    const dv = new DataView(b.buffer);
    const s1Cfg: VtdS1Config = {
      flags: dv.getBigUint64(0, true),
      pgtblAddr: dv.getBigUint64(8, true),
      addrWidth: dv.getUint32(16, true),
    };
    const s2 = dmar(parent);
    const d = new DmarDomain('nested', { s2, s1Cfg });
    d.domain = new IommuDomain('nested', this, this.nestedOps, {}, d);
    s2.s1Domains.add(d);
    this.liveDomains.add(d);
    return d.domain;
  }

  /** intel_nested_domain_free. */
  private intelNestedDomainFree(domain: IommuDomain): void {
    const d = dmar(domain);
    invariant(
      d.devices.size === 0 && d.devPasids.length === 0,
      'intel: freeing a nested domain still attached',
    );
    d.s2!.s1Domains.delete(d);
    this.liveDomains.delete(d);
  }

  /** intel_nested_attach_dev. */
  private intelNestedAttachDev(domain: IommuDomain, dev: IommuDevice): KernelError | undefined {
    const info = this.info(dev);
    const iommu = info.iommu;
    const d = dmar(domain);
    this.deviceBlockTranslation(info);
    if (iommu.agaw < d.s2!.agaw) return kerr('ENODEV', 'Adjusted guest address width not compatible');
    const e = this.pagingDomainCompatible(d.s2!.domain, info);
    if (e) return e;
    const e2 = this.domainAttachIommu(d, iommu);
    if (e2) return e2;
    const e3 = this.cacheTagAssignDomain(d, info, IOMMU_NO_PASID);
    if (e3) {
      this.domainDetachIommu(d, iommu);
      return e3;
    }
    const e4 = this.iopfForDomainSet(domain, info);
    if (e4) {
      this.cacheTagUnassignDomain(d, info, IOMMU_NO_PASID);
      this.domainDetachIommu(d, iommu);
      return e4;
    }
    const e5 = intelPasidSetupNested(
      info,
      IOMMU_NO_PASID,
      d.s1Cfg!,
      d.s2!.ssTable(),
      d.didOn(iommu),
      this.faults,
    );
    if (e5) {
      this.iopfForDomainRemove(domain, info);
      this.cacheTagUnassignDomain(d, info, IOMMU_NO_PASID);
      this.domainDetachIommu(d, iommu);
      return e5;
    }
    info.domain = d;
    info.domainAttached = true;
    d.devices.add(info);
    return undefined;
  }

  /** intel_nested_set_dev_pasid. */
  private intelNestedSetDevPasid(
    domain: IommuDomain,
    dev: IommuDevice,
    pasid: number,
    old: IommuDomain | null,
  ): KernelError | undefined {
    const info = this.info(dev);
    const iommu = info.iommu;
    const d = dmar(domain);
    if (!iommu.pasidSupported) return kerr('EOPNOTSUPP', `${iommu.name} has no PASID support`);
    const e = this.pagingDomainCompatible(d.s2!.domain, info);
    if (e) return e;
    const e2 = this.domainAddDevPasid(d, info, pasid);
    if (e2) return e2;
    const e3 = this.iopfForDomainReplace(domain, old, info);
    if (e3) {
      this.domainRemoveDevPasid(domain, info, pasid);
      return e3;
    }
    const did = d.didOn(iommu);
    const e4 = old
      ? intelPasidReplaceNested(
          info,
          pasid,
          this.iommuDomainDid(old, iommu),
          d.s1Cfg!,
          d.s2!.ssTable(),
          did,
          this.faults,
        )
      : intelPasidSetupNested(info, pasid, d.s1Cfg!, d.s2!.ssTable(), did, this.faults);
    if (e4) {
      this.iopfForDomainReplace(old, domain, info);
      this.domainRemoveDevPasid(domain, info, pasid);
      return e4;
    }
    this.domainRemoveDevPasid(old, info, pasid);
    return undefined;
  }

  /** intel_nested_cache_invalidate_user: struct iommu_hwpt_vtd_s1_invalidate entries. */
  private intelNestedCacheInvalidateUser(
    domain: IommuDomain,
    arr: IommuUserDataArray,
  ): { handled: number; err?: KernelError } {
    const d = dmar(domain);
    if (arr.type !== IOMMU_HWPT_INVALIDATE_DATA_VTD_S1)
      return { handled: 0, err: kerr('EINVAL', `intel invalidate: data type ${arr.type}`) };
    let processed = 0;
    for (let i = 0; i < arr.entryNum; i++) {
      const b = copyStructFromUserArray(
        arr,
        IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        i,
        VTD_S1_INV_SIZE,
        VTD_S1_INV_SIZE,
      );
      if (!(b instanceof Uint8Array)) return { handled: processed, err: b };
      const dv = new DataView(b.buffer);
      const addr = dv.getBigUint64(0, true);
      const npages = dv.getBigUint64(8, true);
      const flags = dv.getUint32(16, true);
      const reserved = dv.getUint32(20, true);
      if (flags & ~IOMMU_VTD_INV_FLAGS_LEAF || reserved)
        return { handled: processed, err: kerr('EOPNOTSUPP', 'intel invalidate: flags or __reserved') };
      if (addr % 4096n !== 0n || (npages === U64_MAX && addr !== 0n))
        return { handled: processed, err: kerr('EINVAL', 'intel invalidate: address') };
      // addr + nrpages_to_size(npages) - 1, in 64-bit arithmetic
      const end = (addr + ((npages << 12n) & U64_MAX) - 1n) & U64_MAX;
      this.cacheTagFlushRange(d, addr, end, flags & IOMMU_VTD_INV_FLAGS_LEAF);
      processed++;
    }
    return { handled: processed };
  }

  // ---- dirty tracking ----

  /** intel_iommu_set_dirty_tracking (with the stage-1 domains of a nesting parent). */
  private intelIommuSetDirtyTracking(domain: IommuDomain, enable: boolean): KernelError | undefined {
    const d = dmar(domain);
    if (d.dirtyTracking === enable) return undefined;
    const setAll = (infos: Iterable<DeviceDomainInfo>, on: boolean): KernelError | undefined => {
      for (const info of infos) {
        const e = intelPasidSetupDirtyTracking(info, IOMMU_NO_PASID, on, this.faults);
        if (e) return e;
      }
      return undefined;
    };
    let err = setAll(d.devices, enable);
    if (!err && d.nestedParent) for (const s1 of d.s1Domains) if (!err) err = setAll(s1.devices, enable);
    if (err) {
      setAll(d.devices, d.dirtyTracking);
      for (const s1 of d.s1Domains) setAll(s1.devices, d.dirtyTracking);
      return err;
    }
    d.dirtyTracking = enable;
    return undefined;
  }

  /** intel_iommu_read_and_clear_dirty. */
  private intelIommuReadAndClearDirty(
    domain: IommuDomain,
    iova: number,
    size: number,
    flags: number,
    dirty: IommuDirtyBitmap | null,
  ): KernelError | undefined {
    const d = dmar(domain);
    if (!d.dirtyTracking && dirty) return kerr('EINVAL', 'dirty tracking is off');
    // iommu_dirty_bitmap_record: the bitmap, and the gather the caller's iotlb_sync flushes
    d.pt!.readAndClearDirty(iova, size, flags, (a, l) => {
      dirty?.record(a, l);
      if (a < d.gatherStart) d.gatherStart = a;
      if (a + l - 1 > d.gatherEnd) d.gatherEnd = a + l - 1;
    });
    return undefined;
  }

  // =============================================================================================
  // Invariants

  /**
   * Debug mode: the driver's bookkeeping agrees with itself and with what is in memory, and
   * no cache of the hardware holds a translation the driver's tables no longer give (every
   * IOTLB entry of a device of this driver is what the attached domain translates to now:
   * the driver invalidated everything it changed before returning).
   */
  checkInvariants(): void {
    const didRefs = new Map<IntelIommu, Map<number, number>>();
    for (const d of this.liveDomains) {
      invariant(!d.domain.freed, 'intel: a freed domain is still live');
      if (d.pt) {
        invariant(d.pt.pgd !== 0, 'intel: a live paging domain has its top table');
        invariant(d.pt.countTables() === d.pt.pages, 'intel: page-table pages counted match the tables');
        invariant(d.freelist.length === 0, 'intel: no table waits for a flush between operations');
      }
      for (const [iommu, i] of d.iommuArray) {
        invariant(iommu.didInUse(i.did), `intel: the domain's DID ${i.did} is allocated on ${iommu.name}`);
        const users = d.devices.size + d.devPasids.length;
        invariant(
          i.refcnt ===
            [...d.devices].filter((x) => x.iommu === iommu).length +
              d.devPasids.filter((x) => x.dev.iommu === iommu).length,
          'intel: DID reference count matches attachments',
        );
        invariant(users > 0, 'intel: a domain has a DID only while attached');
        const m = didRefs.get(iommu) ?? new Map<number, number>();
        invariant(!m.has(i.did), `intel: DID ${i.did} of ${iommu.name} belongs to one domain`);
        m.set(i.did, 1);
        didRefs.set(iommu, m);
      }
    }
    for (const u of this.units) {
      const m = didRefs.get(u);
      invariant(u.didsInUse === (m?.size ?? 0), `${u.name}: every allocated DID belongs to a live domain`);
    }
    for (const dev of this.devices) {
      const info = this.info(dev);
      const d = info.domain as DmarDomain | null;
      if (d)
        invariant(d.devices.has(info) && info.domainAttached, 'intel: device and domain agree on the RID');
      if (info.iommu.sm) this.checkDeviceEntries(dev, info);
    }
    for (const u of this.units) this.checkIotlb(u);
  }

  /**
   * The device's context entry points at its PASID directory, and its PASID entries in memory
   * are exactly its attachments: RID_PASID for the RID, one per attached PASID, each with the
   * PGTT, DID and table pointer of its domain; nothing else is present.
   */
  private checkDeviceEntries(dev: IommuDevice, info: DeviceDomainInfo): void {
    const iommu = info.iommu;
    const mem = iommu.mem;
    const t = info.pasidTable!;
    const ct = iommu.contextTables.get((info.sid >>> 8) * 2 + ((info.sid & 0xff) >= 0x80 ? 1 : 0));
    invariant(ct !== undefined, `intel: ${info.pci.bdf} has a context table`);
    const ce = ct * 4096 + (info.sid & 0x7f) * 32;
    const lo = mem.readLo(ce);
    invariant(
      (lo & 1) === 1 && DmaPgtable.frameOf(lo, mem.readHi(ce)) === t.dirFn,
      `intel: the context entry of ${info.pci.bdf} points at its PASID directory`,
    );
    const expected = new Map<number, IommuDomain | null>();
    if (info.domainAttached)
      expected.set(IOMMU_NO_PASID, info.domain ? (info.domain as DmarDomain).domain : null);
    for (const [pasid, e] of dev.group.pasidArray)
      if (e.domain.type !== 'blocked') expected.set(pasid, e.domain);
    const where = (pasid: number) => `intel: PASID entry ${pasid} of ${info.pci.bdf}`;
    let present = 0;
    for (let di = 0; di < t.maxPasid >> 6; di++) {
      const dlo = mem.readLo(t.dirFn * 4096 + di * 8);
      if ((dlo & 1) === 0) continue;
      const tab = DmaPgtable.frameOf(dlo, mem.readHi(t.dirFn * 4096 + di * 8)) * 4096;
      for (let i = 0; i < 64; i++) {
        const w0 = mem.read32(tab + i * 64);
        if ((w0 & 1) === 0) continue;
        present++;
        const pasid = di * 64 + i;
        invariant(expected.has(pasid), `${where(pasid)} is present but nothing is attached there`);
        const domain = expected.get(pasid)!;
        const w = readPasidEntry(info, tab + i * 64);
        const pgtt = (w[0]! >>> 6) & 7;
        const did = w[2]! & 0xffff;
        if (domain === null || domain.type === 'identity') {
          invariant(pgtt === 4 && did === FLPT_DEFAULT_DID, `${where(pasid)} is pass-through`);
          continue;
        }
        const d = dmar(domain);
        invariant(did === d.didOn(iommu), `${where(pasid)} carries its domain's DID`);
        if (d.kind === 'fs') {
          invariant(
            pgtt === 1 && DmaPgtable.frameOf(w[4]!, w[5]!) === d.pt!.pgd,
            `${where(pasid)}: first level`,
          );
        } else if (d.kind === 'ss') {
          invariant(
            pgtt === 2 && DmaPgtable.frameOf(w[0]!, w[1]!) === d.pt!.pgd,
            `${where(pasid)}: second level`,
          );
        } else {
          invariant(
            pgtt === 3 &&
              DmaPgtable.frameOf(w[0]!, w[1]!) === d.s2!.pt!.pgd &&
              (BigInt(w[5]!) << 32n) + BigInt(w[4]! & 0xfffff000) === (d.s1Cfg!.pgtblAddr & ~0xfffn),
            `${where(pasid)}: nested`,
          );
        }
      }
    }
    invariant(present === expected.size, `intel: every attachment of ${info.pci.bdf} has its PASID entry`);
  }

  /**
   * The translation the driver's current state gives for (info, pasid, 4 KiB page): the
   * output (-1: not mapped) and whether it is writable; for a nested domain also the newest
   * write sequence number of the guest's stage-1 table pages read on the way (the guest owns
   * them: a translation cached before the guest changed them may stay until the guest
   * invalidates through IOMMU_HWPT_INVALIDATE).
   */
  expectedTranslation(
    info: DeviceDomainInfo,
    pasid: number,
    page: number,
  ): { hpa: number; write: boolean; guestSeq: number } {
    const none = { hpa: -1, write: false, guestSeq: 0 };
    let domain: IommuDomain | null = null;
    let identity = false;
    const g = this.devices.find((x) => this.info(x) === info)!.group;
    if (pasid === IOMMU_NO_PASID) {
      if (!info.domainAttached) return none;
      if (info.domain) domain = (info.domain as DmarDomain).domain;
      else identity = true;
    } else {
      const e = g.pasidArray.get(pasid);
      if (!e || e.domain.type === 'blocked') return none;
      if (e.domain.type === 'identity') identity = true;
      else domain = e.domain;
    }
    if (identity) return { hpa: page * 4096, write: true, guestSeq: 0 };
    const d = dmar(domain!);
    if (d.kind !== 'nested') {
      const pa = d.pt!.iovaToPhys(page * 4096);
      if (pa < 0) return none;
      const loc = d.pt!.pfnToDmaPte(page, 0, false);
      return { hpa: pa, write: (d.pt!.lo(loc) & DMA_PTE_WRITE) !== 0, guestSeq: 0 };
    }
    return this.nestedTranslation(d, page * 4096);
  }

  /** GVA -> HPA through a nested domain's guest stage 1 and its parent (for the checker). */
  private nestedTranslation(d: DmarDomain, gva: number): { hpa: number; write: boolean; guestSeq: number } {
    const s2 = d.s2!.pt!;
    const mem = s2.mem;
    const levels = d.s1Cfg!.addrWidth === ADDR_WIDTH_5LEVEL ? 5 : 4;
    let tableGpa = Number(d.s1Cfg!.pgtblAddr & ~0xfffn);
    let write = true;
    let guestSeq = 0;
    for (let lvl = levels; lvl >= 1; lvl--) {
      const tableHpa = s2.iovaToPhys(tableGpa);
      if (tableHpa < 0) return { hpa: -1, write: false, guestSeq };
      guestSeq = Math.max(guestSeq, mem.frameSeq(Math.floor(tableHpa / 4096)));
      const idx = Math.floor(gva / 2 ** (12 + 9 * (lvl - 1))) % 512;
      const lo = mem.readLo(tableHpa + idx * 8);
      const hi = mem.readHi(tableHpa + idx * 8);
      if ((lo & 1) === 0) return { hpa: -1, write: false, guestSeq };
      if ((lo & 2) === 0) write = false;
      const addr = DmaPgtable.frameOf(lo, hi) * 4096;
      if (lvl === 1 || (lo & 0x80) !== 0) {
        const span = 2 ** (12 + 9 * (lvl - 1));
        const gpa = addr - (addr % span) + (gva % span);
        const hpa = s2.iovaToPhys(gpa);
        if (hpa < 0) return { hpa: -1, write: false, guestSeq };
        const loc = s2.pfnToDmaPte(Math.floor(gpa / 4096), 0, false);
        if ((s2.lo(loc) & DMA_PTE_WRITE) === 0) write = false;
        return { hpa, write, guestSeq };
      }
      tableGpa = addr;
    }
    return { hpa: -1, write: false, guestSeq };
  }

  /** No IOTLB entry of this driver's devices disagrees with the driver's tables. */
  private checkIotlb(u: IntelIommu): void {
    const t = u.unit.iotlb;
    if (t.count === 0) return;
    for (const h of t.slotsInUse()) {
      const sid = t.sid(h);
      const dev = this.devices.find((x) => this.info(x).sid === sid && this.info(x).iommu === u);
      if (!dev) continue;
      const info = this.info(dev);
      const pk = t.pasidKey(h);
      const pasid = pk === NO_PASID_KEY ? IOMMU_NO_PASID : pk;
      const first = t.firstPage(h);
      const where = `${u.name}: IOTLB entry of ${info.pci.bdf} PASID ${pasid} page 0x${(first * 4096).toString(16)}`;
      const exp = this.expectedTranslation(info, pasid, first);
      if (exp.guestSeq > t.seq[h]!) continue; // the guest changed its stage 1 since: the guest invalidates
      if (exp.hpa < 0)
        throw new InvariantError(
          `invariant violated: ${where} is cached but the driver no longer maps it (stale)`,
        );
      invariant(exp.hpa === t.base[h], `${where}: cached output matches the driver's tables (not stale)`);
      if (!exp.write)
        invariant((t.permU(h) & 2) === 0 && (t.permS(h) & 2) === 0, `${where}: no stale write permission`);
    }
  }
}
