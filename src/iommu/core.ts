// The IOMMU core: the model of drivers/iommu/iommu.c as iommufd uses it (research iommufd.md
// B.5–B.7, D). It owns iommu_domain objects (blocked, identity, paging, nested), device groups
// with their current RID domain and their per-PASID array, and the driver interface
// (`IommuDriver` = struct iommu_ops, `IommuDomainOps` = struct iommu_domain_ops) through which a
// driver — the selftest mock (mock.ts) or a hardware driver such as VT-d — plugs in.
//
// Rules kept from the kernel: a group is attached as a whole (every device gets the domain or
// none does: a failing device rolls the others back); a group owned for user DMA starts on the
// blocking domain; iommu_attach_group refuses a group already on a non-default domain (EBUSY);
// a PASID attach needs a device with PASID capability and a free pasid_array slot (EINVAL /
// EBUSY); a PASID replace of an unattached PASID is EINVAL and a failed replace keeps the old
// domain (set_dev_pasid must leave the old configuration in place on failure); PASID detach
// installs the blocked domain through set_dev_pasid.

import { type KernelError, kerr } from '../core/errno.ts';
import { invariant } from '../core/invariants.ts';

export const IOMMU_NO_PASID = 0;

export const IOMMU_DOMAIN_BLOCKED = 'blocked';
export const IOMMU_DOMAIN_IDENTITY = 'identity';
export const IOMMU_DOMAIN_PAGING = 'paging';
export const IOMMU_DOMAIN_NESTED = 'nested';
export type IommuDomainType = 'blocked' | 'identity' | 'paging' | 'nested';

/** enum iommu_cap. */
export type IommuCap = 'CACHE_COHERENCY' | 'ENFORCE_CACHE_COHERENCY' | 'DIRTY_TRACKING';

/** include/linux/iommu.h prot bits. */
export const IOMMU_READ = 1;
export const IOMMU_WRITE = 2;
export const IOMMU_CACHE = 4;

/** struct iommu_user_data: a driver-specific blob in user memory (HWPT_ALLOC data_uptr). */
export interface IommuUserData {
  readonly type: number;
  readonly len: number;
  /**
   * Reads `len` bytes from user memory (null uptr or a bad address → EFAULT). The core's
   * iommu_copy_struct_from_user() is `copyStructFromUserData` below.
   */
  read(off: number, len: number): Uint8Array | KernelError;
}

/** struct iommu_user_data_array: an array of entries in user memory (HWPT_INVALIDATE). */
export interface IommuUserDataArray {
  readonly type: number;
  readonly entryLen: number;
  readonly entryNum: number;
  read(off: number, len: number): Uint8Array | KernelError;
}

/**
 * __iommu_copy_struct_from_user: the type must match (EINVAL), the user length must lie in
 * [minLen, ksize] (EINVAL), then copy_struct_from_user (EFAULT); zero-extended to ksize.
 */
export function copyStructFromUserData(
  data: {
    readonly type: number;
    readonly len: number;
    read(off: number, len: number): Uint8Array | KernelError;
  },
  type: number,
  ksize: number,
  minLen: number,
  base = 0,
): Uint8Array | KernelError {
  if (data.type !== type)
    return kerr('EINVAL', `user data type 0x${data.type.toString(16)} is not 0x${type.toString(16)}`);
  if (data.len < minLen || data.len > ksize)
    return kerr('EINVAL', `user data length ${data.len} outside [${minLen}, ${ksize}]`);
  const b = data.read(base, data.len);
  if (!(b instanceof Uint8Array)) return b;
  const k = new Uint8Array(ksize);
  k.set(b);
  return k;
}

/** iommu_copy_struct_from_user_array: entry `index` of an array. */
export function copyStructFromUserArray(
  arr: IommuUserDataArray,
  type: number,
  index: number,
  ksize: number,
  minLen: number,
): Uint8Array | KernelError {
  if (index >= arr.entryNum) return kerr('EINVAL', 'entry index past entry_num');
  return copyStructFromUserData(
    { type: arr.type, len: arr.entryLen, read: (o, l) => arr.read(o, l) },
    type,
    ksize,
    minLen,
    index * arr.entryLen,
  );
}

/** A page request (struct iopf_fault / iommu_fault_page_request). */
export interface IommuPageFault {
  flags: number;
  pasid: number;
  grpid: number;
  perm: number;
  addr: bigint;
}

/** Writes dirty IOVA ranges (struct iommu_dirty_bitmap over an iova_bitmap). */
export interface IommuDirtyBitmap {
  record(iova: number, length: number): void;
}

export interface IommuDirtyOps {
  setDirtyTracking(domain: IommuDomain, enable: boolean): KernelError | undefined;
  readAndClearDirty(
    domain: IommuDomain,
    iova: number,
    size: number,
    flags: number,
    dirty: IommuDirtyBitmap | null,
  ): KernelError | undefined;
}

/** struct iommu_domain_ops. */
export interface IommuDomainOps {
  attachDev?(domain: IommuDomain, dev: IommuDevice, old: IommuDomain | null): KernelError | undefined;
  setDevPasid?(
    domain: IommuDomain,
    dev: IommuDevice,
    pasid: number,
    old: IommuDomain | null,
  ): KernelError | undefined;
  /** Map `pgcount` pages of `pgsize` at iova → paddr; returns the bytes mapped or an error. */
  mapPages?(
    domain: IommuDomain,
    iova: number,
    paddr: number,
    pgsize: number,
    pgcount: number,
    prot: number,
  ): number | KernelError;
  /**
   * Optional batch form of `pageCount` separate mapPages calls, one per CPU page of
   * `pageSize` bytes (iommufd's batch_iommu_map_small loop), page i at iova + i * pageSize →
   * pfns[first + i] * pageSize. Same observable result as the separate calls; it only saves a
   * call per page on the hot path.
   */
  mapSmallPages?(
    domain: IommuDomain,
    iova: number,
    pfns: Int32Array,
    first: number,
    pageCount: number,
    pageSize: number,
    prot: number,
  ): KernelError | undefined;
  /** Returns the bytes unmapped. */
  unmapPages?(domain: IommuDomain, iova: number, pgsize: number, pgcount: number): number;
  iotlbSync?(domain: IommuDomain): void;
  iovaToPhys?(domain: IommuDomain, iova: number): number;
  cacheInvalidateUser?(domain: IommuDomain, arr: IommuUserDataArray): { handled: number; err?: KernelError };
  /** enforce_cache_coherency: make every DMA of the domain snoop; false if it cannot (any more). */
  enforceCacheCoherency?(domain: IommuDomain): boolean;
  free(domain: IommuDomain): void;
}

let domainSeq = 0;

/** struct iommu_domain. Implements the io_pagetable's view (IoptDomain) of a paging domain. */
export class IommuDomain {
  readonly type: IommuDomainType;
  readonly ops: IommuDomainOps;
  readonly owner: IommuDriver;
  /** Page sizes (bit set = supported), a number bitmap for the hot path and a bigint for iopt. */
  readonly pgsizes: number;
  readonly pgsizeBitmap: bigint;
  readonly apertureStart: bigint;
  readonly apertureEnd: bigint;
  dirtyOps: IommuDirtyOps | null = null;
  /** Set by iommufd for IOPF-capable HWPTs: where page requests go. */
  iopfHandler: ((dev: IommuDevice, fault: IommuPageFault) => void) | null = null;
  /** Driver-private state. */
  priv: unknown;
  readonly seq = ++domainSeq;
  freed = false;
  constructor(
    type: IommuDomainType,
    owner: IommuDriver,
    ops: IommuDomainOps,
    geometry: { pgsizes?: number; apertureStart?: bigint; apertureEnd?: bigint } = {},
    priv: unknown = null,
  ) {
    this.type = type;
    this.owner = owner;
    this.ops = ops;
    this.pgsizes = geometry.pgsizes ?? 0;
    this.pgsizeBitmap = BigInt(this.pgsizes);
    this.apertureStart = geometry.apertureStart ?? 0n;
    this.apertureEnd = geometry.apertureEnd ?? 0xffff_ffff_ffff_ffffn;
    this.priv = priv;
  }
}

/** struct iommu_ops: what a driver provides. */
export interface IommuDriver {
  readonly name: string;
  capable(dev: IommuDevice, cap: IommuCap): boolean;
  /** hw_info: the driver's info blob for `type` (DEFAULT picks the native one). */
  hwInfo?(dev: IommuDevice, type: number): { type: number; data: Uint8Array } | KernelError;
  domainAllocPagingFlags(
    dev: IommuDevice,
    flags: number,
    userData: IommuUserData | null,
  ): IommuDomain | KernelError;
  domainAllocNested?(
    dev: IommuDevice,
    parent: IommuDomain,
    flags: number,
    userData: IommuUserData,
  ): IommuDomain | KernelError;
  readonly blockedDomain: IommuDomain;
  readonly identityDomain?: IommuDomain;
  /** The domain a group starts on (iommu_ops.default_domain). */
  readonly defaultDomain?: IommuDomain;
  /** Reserved IOVA regions of a device (MSI windows, ...). */
  getResvRegions?(dev: IommuDevice): { start: bigint; last: bigint; swMsi?: boolean }[];
  pageResponse?(dev: IommuDevice, fault: IommuPageFault, code: number): void;
  /** get_viommu_size != 0: the driver has a vIOMMU of this type for the device. */
  viommuTypeSupported?(dev: IommuDevice, type: number): boolean;
  /** Driver-specific vIOMMU support (get_viommu_size + viommu_init). */
  viommuAlloc?(
    dev: IommuDevice,
    parent: IommuDomain,
    type: number,
    userData: IommuUserData | null,
  ): IommuViommuDriverState | KernelError;
  /** Faults on an unattached PASID go to a nested domain on the RID (iommu_ops.user_pasid_table). */
  readonly userPasidTable?: boolean;
  /** The value reported as out_max_pasid_log2 cap and the PASID limit per IOMMU instance. */
  readonly maxPasids: number;
}

/** The driver half of an iommufd_viommu. */
export interface IommuViommuDriverState {
  /** Data copied back to the user (may be empty). */
  readonly outData: Uint8Array | null;
  allocDomainNested?(flags: number, userData: IommuUserData): IommuDomain | KernelError;
  cacheInvalidate?(arr: IommuUserDataArray): { handled: number; err?: KernelError };
  destroy?(): void;
  /** HW queues (get_hw_queue_size != 0 for this type). */
  hwQueueSupported?(type: number): boolean;
  /**
   * hw_queue_init_phys: index checks and the physical address check; returns the index of
   * the queue this one depends on, or null.
   */
  hwQueueInit?(index: number, basePa: number, iova: bigint): { prev: number | null } | KernelError;
  hwQueueDestroy?(index: number): void;
  /** Pages of an mmap-able region the driver wants (iommufd_viommu_alloc_mmap), or 0. */
  readonly mmapPages?: number;
  /** Fill the region (its first page at `pa`) and report where it was placed. */
  mmapSetup?(
    write: (pa: number, bytes: Uint8Array) => void,
    pa: number,
    offset: number,
    length: number,
  ): void;
  /** Set by the vdevice layer: virt_id → device. */
  vdevs: Map<bigint, IommuDevice>;
}

/** struct device plus its dev_iommu. */
export class IommuDevice {
  readonly name: string;
  readonly driver: IommuDriver;
  group!: IommuGroup;
  /** dev->iommu->max_pasids: 0 for a device without PASID. */
  readonly maxPasids: number;
  /** PCI PASID capability control bits (IOMMU_HW_CAP_PCI_PASID_EXEC/PRIV). */
  readonly pasidExec: boolean;
  readonly pasidPriv: boolean;
  /** Driver-private state. */
  priv: unknown;
  /** Who claimed DMA ownership (iommu_device_claim_dma_owner). */
  dmaOwner: object | null = null;
  constructor(
    name: string,
    driver: IommuDriver,
    opts: { maxPasids?: number; pasidExec?: boolean; pasidPriv?: boolean; priv?: unknown } = {},
  ) {
    this.name = name;
    this.driver = driver;
    this.maxPasids = opts.maxPasids ?? 0;
    this.pasidExec = opts.pasidExec ?? false;
    this.pasidPriv = opts.pasidPriv ?? false;
    this.priv = opts.priv ?? null;
  }
}

export interface PasidEntry {
  readonly domain: IommuDomain;
  readonly handle: unknown;
}

let groupSeq = 0;

/** struct iommu_group. */
export class IommuGroup {
  readonly id = ++groupSeq;
  readonly devices: IommuDevice[] = [];
  domain: IommuDomain;
  readonly defaultDomain: IommuDomain;
  readonly blockingDomain: IommuDomain;
  /** The handle of the current RID attachment (iommufd's). */
  handle: unknown = null;
  readonly pasidArray = new Map<number, PasidEntry>();
  owner: object | null = null;
  ownerCnt = 0;
  constructor(driver: IommuDriver) {
    this.blockingDomain = driver.blockedDomain;
    this.defaultDomain = driver.defaultDomain ?? driver.blockedDomain;
    this.domain = this.defaultDomain;
  }
}

/** iommu_probe_device: put the device in a group of its own (as the mock bus does). */
export function iommuProbeDevice(dev: IommuDevice, group?: IommuGroup): IommuGroup {
  const g = group ?? new IommuGroup(dev.driver);
  g.devices.push(dev);
  dev.group = g;
  return g;
}

export function iommuReleaseDevice(dev: IommuDevice): void {
  const g = dev.group;
  invariant(g.pasidArray.size === 0 || g.devices.length > 1, 'iommu_release_device: PASIDs still attached');
  const i = g.devices.indexOf(dev);
  if (i >= 0) g.devices.splice(i, 1);
}

/**
 * __iommu_group_set_domain: attach every device or none. A device whose attach fails makes
 * the devices already moved, and the failing one (a driver may have changed its state before
 * failing), go back to the old domain (err_revert).
 */
function groupSetDomain(group: IommuGroup, domain: IommuDomain): KernelError | undefined {
  const old = group.domain;
  if (old === domain) return undefined;
  const done: IommuDevice[] = [];
  for (const dev of group.devices) {
    done.push(dev);
    const err = domain.ops.attachDev?.(domain, dev, old) ?? undefined;
    if (err) {
      for (const d of done) {
        const e = old.ops.attachDev?.(old, d, null);
        invariant(e === undefined, 'iommu: reattaching the previous domain cannot fail');
      }
      return err;
    }
  }
  group.domain = domain;
  return undefined;
}

/** iommu_device_claim_dma_owner: the group goes to the blocking domain for user DMA. */
export function iommuDeviceClaimDmaOwner(dev: IommuDevice, owner: object): KernelError | undefined {
  const g = dev.group;
  if (g.ownerCnt > 0) {
    if (g.owner !== owner) return kerr('EBUSY', `group of ${dev.name} is owned by someone else`);
    g.ownerCnt++;
    return undefined;
  }
  if (g.domain !== g.defaultDomain) return kerr('EBUSY', `group of ${dev.name} is in use`);
  const err = groupSetDomain(g, g.blockingDomain);
  if (err) return err;
  g.owner = owner;
  g.ownerCnt = 1;
  return undefined;
}

export function iommuDeviceReleaseDmaOwner(dev: IommuDevice): void {
  const g = dev.group;
  invariant(g.ownerCnt > 0, 'iommu_device_release_dma_owner: not owned');
  if (--g.ownerCnt === 0) {
    g.owner = null;
    const err = groupSetDomain(g, g.defaultDomain);
    invariant(err === undefined, 'iommu: returning to the default domain cannot fail');
  }
}

/** iommu_attach_group (used with a handle: iommu_attach_group_handle). */
export function iommuAttachGroup(
  domain: IommuDomain,
  group: IommuGroup,
  handle: unknown,
): KernelError | undefined {
  if (group.domain !== group.defaultDomain && group.domain !== group.blockingDomain) {
    return kerr('EBUSY', 'the group is already attached to a domain');
  }
  const err = groupSetDomain(group, domain);
  if (err) return err;
  group.handle = handle;
  return undefined;
}

/** iommu_replace_group_handle: switch domains; on failure the old one stays. */
export function iommuReplaceGroup(
  domain: IommuDomain,
  group: IommuGroup,
  handle: unknown,
): KernelError | undefined {
  const err = groupSetDomain(group, domain);
  if (err) return err;
  group.handle = handle;
  return undefined;
}

/** iommu_detach_group_handle: back to the blocking domain (the group stays owned). */
export function iommuDetachGroup(group: IommuGroup): void {
  const err = groupSetDomain(group, group.owner ? group.blockingDomain : group.defaultDomain);
  invariant(err === undefined, 'iommu: blocking a group cannot fail');
  group.handle = null;
}

function setGroupPasid(
  domain: IommuDomain,
  group: IommuGroup,
  pasid: number,
  old: IommuDomain | null,
): KernelError | undefined {
  const done: IommuDevice[] = [];
  for (const dev of group.devices) {
    const err = domain.ops.setDevPasid?.(domain, dev, pasid, old);
    if (err) {
      // Put the devices already switched back where they were (the old domain, or blocked).
      const back = old ?? group.blockingDomain;
      for (const d of done) back.ops.setDevPasid?.(back, d, pasid, domain);
      return err;
    }
    done.push(dev);
  }
  return undefined;
}

function pasidChecks(domain: IommuDomain, dev: IommuDevice, pasid: number): KernelError | undefined {
  if (!domain.ops.setDevPasid || !dev.driver.blockedDomain.ops.setDevPasid)
    return kerr('EOPNOTSUPP', 'the domain or driver cannot attach PASIDs');
  if (domain.owner !== dev.driver || pasid === IOMMU_NO_PASID)
    return kerr('EINVAL', `PASID ${pasid}: not a PASID, or a domain of another driver`);
  for (const d of dev.group.devices) {
    if (d.maxPasids === 0 || pasid >= d.maxPasids)
      return kerr('EINVAL', `device ${d.name} cannot use PASID ${pasid} (max_pasids ${d.maxPasids})`);
  }
  return undefined;
}

/** iommu_attach_device_pasid. */
export function iommuAttachDevicePasid(
  domain: IommuDomain,
  dev: IommuDevice,
  pasid: number,
  handle: unknown,
): KernelError | undefined {
  const e = pasidChecks(domain, dev, pasid);
  if (e) return e;
  const g = dev.group;
  if (g.pasidArray.has(pasid)) return kerr('EBUSY', `PASID ${pasid} is already attached`);
  const err = setGroupPasid(domain, g, pasid, null);
  if (err) return err;
  g.pasidArray.set(pasid, { domain, handle });
  return undefined;
}

/** iommu_replace_device_pasid: only an attached PASID can be replaced; failure keeps the old. */
export function iommuReplaceDevicePasid(
  domain: IommuDomain,
  dev: IommuDevice,
  pasid: number,
  handle: unknown,
): KernelError | undefined {
  const e = pasidChecks(domain, dev, pasid);
  if (e) return e;
  const g = dev.group;
  const cur = g.pasidArray.get(pasid);
  if (!cur) return kerr('EINVAL', `PASID ${pasid} is not attached: nothing to replace`);
  if (cur.domain !== domain) {
    const err = setGroupPasid(domain, g, pasid, cur.domain);
    if (err) return err;
  }
  g.pasidArray.set(pasid, { domain, handle });
  return undefined;
}

/** iommu_detach_device_pasid: the blocked domain takes the PASID. */
export function iommuDetachDevicePasid(domain: IommuDomain, dev: IommuDevice, pasid: number): void {
  const g = dev.group;
  const cur = g.pasidArray.get(pasid);
  invariant(cur !== undefined && cur.domain === domain, 'iommu_detach_device_pasid: not attached there');
  const blocked = g.blockingDomain;
  for (const d of g.devices) blocked.ops.setDevPasid?.(blocked, d, pasid, domain);
  g.pasidArray.delete(pasid);
}

/** The domain attached at `pasid` (the RID for IOMMU_NO_PASID), with its handle. */
export function iommuGetDomainForPasid(dev: IommuDevice, pasid: number): PasidEntry | null {
  const g = dev.group;
  if (pasid === IOMMU_NO_PASID) return { domain: g.domain, handle: g.handle };
  return g.pasidArray.get(pasid) ?? null;
}

/**
 * iommu_pgsize: the largest page size usable at iova/paddr for `size` bytes, and how many of
 * them fit before a larger size could take over.
 */
function pgsize(
  domain: IommuDomain,
  iova: number,
  paddr: number,
  size: number,
): { pg: number; count: number } {
  // Page-size bitmaps are below 2^31 (up to 1 GiB pages), so plain bit operations work.
  const bm = domain.pgsizes;
  let pg = 0;
  for (let b = 1; b <= size && b <= 0x40000000; b *= 2) {
    if (iova % b !== 0 || paddr % b !== 0) break;
    if (bm & b) pg = b;
  }
  if (pg === 0) return { pg: 0, count: 0 };
  let count = Math.floor(size / pg);
  // Stop at the next boundary where a larger supported size could start.
  const larger = bm & ~(pg * 2 - 1);
  if (larger !== 0) {
    const b = larger & -larger;
    if (iova % b === paddr % b) {
      const toBoundary = (b - (iova % b)) / pg;
      if (toBoundary < count) count = toBoundary;
    }
  }
  return { pg, count: Math.max(1, count) };
}

/** iommu_map: map [iova, iova+size) → paddr. On failure nothing stays mapped. */
export function iommuMap(
  domain: IommuDomain,
  iova: number,
  paddr: number,
  size: number,
  prot: number,
): KernelError | undefined {
  const map = domain.ops.mapPages;
  if (!map) return kerr('ENODEV', 'domain cannot map');
  const min = domain.pgsizes & -domain.pgsizes;
  if ((iova | paddr | size) % min !== 0) return kerr('EINVAL', 'iommu_map: unaligned');
  let done = 0;
  while (done < size) {
    const { pg, count } = pgsize(domain, iova + done, paddr + done, size - done);
    if (pg === 0) {
      iommuUnmap(domain, iova, done);
      return kerr('EINVAL', 'iommu_map: no page size fits');
    }
    const r = map(domain, iova + done, paddr + done, pg, count, prot);
    if (typeof r !== 'number') {
      iommuUnmap(domain, iova, done);
      return r;
    }
    done += r;
  }
  return undefined;
}

/** iommu_unmap: returns the bytes unmapped. */
export function iommuUnmap(domain: IommuDomain, iova: number, size: number): number {
  const unmap = domain.ops.unmapPages;
  if (!unmap || size === 0) return 0;
  const min = domain.pgsizes & -domain.pgsizes;
  let done = 0;
  while (done < size) {
    const r = unmap(domain, iova + done, min, (size - done) / min);
    if (r === 0) break;
    done += r;
  }
  domain.ops.iotlbSync?.(domain);
  return done;
}

export function iommuIovaToPhys(domain: IommuDomain, iova: number): number {
  return domain.ops.iovaToPhys?.(domain, iova) ?? -1;
}

export function iommuDomainFree(domain: IommuDomain): void {
  invariant(!domain.freed, 'iommu_domain_free: double free');
  domain.freed = true;
  domain.ops.free(domain);
}

/** iommu_report_device_fault: route a page request to the domain attached at its PASID. */
export function iommuReportDeviceFault(dev: IommuDevice, fault: IommuPageFault): KernelError | undefined {
  let e = iommuGetDomainForPasid(dev, fault.pasid);
  if (!e && fault.flags & 1 && dev.driver.userPasidTable) {
    // A user-managed PASID table: faults of any PASID go to the nested domain on the RID.
    const rid = iommuGetDomainForPasid(dev, IOMMU_NO_PASID);
    if (rid?.domain.type === 'nested') e = rid;
  }
  if (!e?.domain.iopfHandler) return kerr('ENODEV', 'no IOPF-capable domain at that PASID');
  e.domain.iopfHandler(dev, fault);
  return undefined;
}
