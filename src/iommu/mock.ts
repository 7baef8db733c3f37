// The selftest mock IOMMU driver (drivers/iommu/iommufd/selftest.c, CONFIG_IOMMUFD_TEST), as
// research iommufd.md D describes it for the ~6.17 kernels the profile follows: paging domains
// with an aperture of [16 MiB, 2 GiB - 1] and 2 KiB IO pages (plus 1 MiB pages for a
// HUGE_IOVA device) stored per 2 KiB entry with START/LAST/DIRTY/HUGE marks; dirty tracking;
// nested domains carrying a 4-entry mock IOTLB; a blocking domain; PASID support with the
// "PASID 1024 fake error" that lets tests exercise replace rollback; hw_info
// {flags 0, test_reg 0xdeadbeef}; a SELFTEST vIOMMU with per-device mock caches.
//
// The START/LAST marks let the model prove what the kernel's WARN_ONs prove: every unmap
// iommufd issues begins where a map began and ends where a map ended (it never splits).

import { type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { invariant as importedInvariant } from '../core/invariants.ts';
import {
  copyStructFromUserArray,
  copyStructFromUserData,
  IOMMU_DOMAIN_BLOCKED,
  IommuDevice,
  type IommuDirtyBitmap,
  type IommuDirtyOps,
  IommuDomain,
  type IommuDomainOps,
  type IommuDriver,
  type IommuUserData,
  type IommuUserDataArray,
  type IommuViommuDriverState,
  iommuProbeDevice,
} from './core.ts';

// A local binding: imported bindings cost a getter call each on hot paths once transpiled.
const invariant: typeof importedInvariant = importedInvariant;

export const MOCK_APERTURE_START = 1 << 24;
export const MOCK_APERTURE_LAST = 2 ** 31 - 1;
export const MOCK_IO_PAGE_SIZE = 2048;
export const MOCK_HUGE_PAGE_SIZE = 512 * MOCK_IO_PAGE_SIZE;
export const MOCK_PASID_WIDTH = 20;
export const MOCK_NESTED_DOMAIN_IOTLB_NUM = 4;
export const MOCK_DEV_CACHE_NUM = 4;
export const IOMMU_TEST_IOTLB_DEFAULT = 0xbadbeef;
export const IOMMU_TEST_DEV_CACHE_DEFAULT = 0xbaddad;
export const IOMMU_HW_INFO_TYPE_DEFAULT = 0;
export const IOMMU_HW_INFO_TYPE_SELFTEST = 0xfeedbeef;
export const IOMMU_HW_INFO_SELFTEST_REGVAL = 0xdeadbeef;
export const IOMMU_HWPT_DATA_SELFTEST = 0xdead;
export const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
export const IOMMU_VIOMMU_TYPE_SELFTEST = 0xdeadbeef;
export const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
export const IOMMU_TEST_INVALIDATE_FLAG_ALL = 1;
export const IOMMU_TEST_PASID_RESERVED = 1024;
export const IOMMU_HW_QUEUE_TYPE_SELFTEST = 0xdeadbeef;
export const IOMMU_TEST_HW_QUEUE_MAX = 2;
export const IOMMU_VEVENTQ_TYPE_SELFTEST = 0xbeefbeef;

export const MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0;
export const MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1;
export const MOCK_FLAGS_DEVICE_PASID = 1 << 2;
const MOCK_DEV_FLAGS = MOCK_FLAGS_DEVICE_NO_DIRTY | MOCK_FLAGS_DEVICE_HUGE_IOVA | MOCK_FLAGS_DEVICE_PASID;

const HWPT_ALLOC_NEST_PARENT = 1 << 0;
const HWPT_ALLOC_DIRTY_TRACKING = 1 << 1;
const HWPT_ALLOC_PASID = 1 << 3;
export const IOMMU_DIRTY_NO_CLEAR = 1;

// Entry encoding: the 2 KiB-aligned physical address plus flag bits below 2048.
const PFN_PRESENT = 1;
const PFN_START = 2;
const PFN_LAST = 4;
const PFN_DIRTY = 8;
const PFN_HUGE = 16;
const PFN_FLAGS = 31;

const CHUNK_SHIFT = 16; // entries per storage chunk: 64 Ki × 2 KiB = 128 MiB of IOVA
const CHUNK = 1 << CHUNK_SHIFT;

export interface MockDev {
  readonly flags: number;
  readonly id: number;
  readonly cache: Uint32Array;
  pasid1024FakeError: boolean;
  /** The vIOMMU of the nested domain the RID is attached to, and the device's virt_id there. */
  viommu: MockViommu | null;
  vdevId: bigint;
}

/** The storage of a mock paging domain: 2 KiB entries in lazily made chunks. */
export class MockPaging {
  readonly chunks = new Map<number, Float64Array>();
  dirtyTracking = false;
  readonly huge: boolean;
  /** Entries in use (for invariant checks). */
  count = 0;
  constructor(huge: boolean) {
    this.huge = huge;
  }
  private lastCi = -1;
  private lastChunk: Float64Array | undefined;
  private chunk(ci: number): Float64Array | undefined {
    if (ci === this.lastCi) return this.lastChunk;
    const c = this.chunks.get(ci);
    if (c !== undefined) {
      this.lastCi = ci;
      this.lastChunk = c;
    }
    return c;
  }
  load(idx: number): number {
    const c = this.chunk(idx >>> CHUNK_SHIFT);
    return c === undefined ? 0 : c[idx & (CHUNK - 1)]!;
  }
  store(idx: number, v: number): number {
    const ci = idx >>> CHUNK_SHIFT;
    let c = this.chunk(ci);
    if (c === undefined) {
      c = new Float64Array(CHUNK);
      this.chunks.set(ci, c);
    }
    const o = idx & (CHUNK - 1);
    const old = c[o]!;
    c[o] = v;
    if (old === 0 && v !== 0) this.count++;
    else if (old !== 0 && v === 0) this.count--;
    return old;
  }
}

export interface MockNested {
  readonly parent: IommuDomain;
  readonly iotlb: Uint32Array;
  readonly viommu: MockViommu | null;
}

export class MockViommu implements IommuViommuDriverState {
  readonly outData: Uint8Array | null;
  readonly vdevs = new Map<bigint, IommuDevice>();
  readonly driver: MockIommuDriver;
  readonly parent: IommuDomain;
  readonly inData: number;
  readonly hwQueues: (boolean | undefined)[] = [];
  /** With user data the mock exposes a 2-page region whose first u32 is in_data. */
  readonly mmapPages: number;
  constructor(driver: MockIommuDriver, parent: IommuDomain, outData: Uint8Array | null, inData: number) {
    this.driver = driver;
    this.parent = parent;
    this.outData = outData;
    this.inData = inData;
    this.mmapPages = outData ? 2 : 0;
  }
  mmapSetup(
    write: (pa: number, bytes: Uint8Array) => void,
    pa: number,
    offset: number,
    length: number,
  ): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, this.inData, true);
    write(pa, b);
    if (this.outData && this.outData.length >= 24) {
      const dv = new DataView(this.outData.buffer, this.outData.byteOffset);
      dv.setBigUint64(8, BigInt(offset), true);
      dv.setBigUint64(16, BigInt(length), true);
    }
  }
  hwQueueSupported(type: number): boolean {
    return type === IOMMU_HW_QUEUE_TYPE_SELFTEST;
  }
  /** mock_hw_queue_init_phys. */
  hwQueueInit(index: number, basePa: number, iova: bigint): { prev: number | null } | KernelError {
    if (index >= IOMMU_TEST_HW_QUEUE_MAX) return kerr('EINVAL', `HW queue index ${index}`);
    if (this.hwQueues[index]) return kerr('EEXIST', `HW queue ${index} exists`);
    if (index && !this.hwQueues[index - 1]) return kerr('EIO', `HW queue ${index - 1} must exist first`);
    // Catches a core that converted the physical address wrongly.
    const pa = this.parent.ops.iovaToPhys?.(this.parent, Number(iova)) ?? -1;
    if (pa !== basePa) return kerr('EFAULT', 'HW queue base does not match the parent translation');
    this.hwQueues[index] = true;
    return { prev: index ? index - 1 : null };
  }
  hwQueueDestroy(index: number): void {
    this.hwQueues[index] = undefined;
  }
  allocDomainNested(flags: number, userData: IommuUserData): IommuDomain | KernelError {
    if (flags & ~HWPT_ALLOC_PASID) return kerr('EOPNOTSUPP', 'mock vIOMMU nested: unknown flags');
    return this.driver.allocNested(this.parent, userData, this);
  }
  cacheInvalidate(arr: IommuUserDataArray): { handled: number; err?: KernelError } {
    if (arr.type !== IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST)
      return { handled: 0, err: kerr('EINVAL', 'mock vIOMMU invalidate: wrong data type') };
    let n = 0;
    for (let i = 0; i < arr.entryNum; i++) {
      // struct iommu_viommu_invalidate_selftest { u32 flags; u32 vdev_id; u32 cache_id; }
      const b = copyStructFromUserArray(arr, IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, i, 12, 12);
      if (!(b instanceof Uint8Array)) return { handled: n, err: b };
      const dv = new DataView(b.buffer);
      const flags = dv.getUint32(0, true);
      const vdevId = dv.getUint32(4, true);
      const cacheId = dv.getUint32(8, true);
      if (flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL)
        return { handled: n, err: kerr('EOPNOTSUPP', 'mock vIOMMU invalidate: unknown flags') };
      if (cacheId > MOCK_DEV_CACHE_NUM - 1)
        return { handled: n, err: kerr('EINVAL', `mock vIOMMU invalidate: cache_id ${cacheId}`) };
      const dev = this.vdevs.get(BigInt(vdevId));
      if (!dev)
        return {
          handled: n,
          err: kerr('EINVAL', `mock vIOMMU invalidate: no vdev 0x${vdevId.toString(16)}`),
        };
      const md = mockDev(dev);
      if (flags & IOMMU_TEST_INVALIDATE_FLAG_ALL) md.cache.fill(0);
      else md.cache[cacheId] = 0;
      n++;
    }
    return { handled: n };
  }
}

export function mockDev(dev: IommuDevice): MockDev {
  return dev.priv as MockDev;
}

export function mockPaging(d: IommuDomain): MockPaging | null {
  return d.priv instanceof MockPaging ? d.priv : null;
}

export function mockNested(d: IommuDomain): MockNested | null {
  const p = d.priv as MockNested | null;
  return d.type === 'nested' && p !== null && 'iotlb' in p ? p : null;
}

/** mock_domain_set_dev_pasid_nop and the PASID 1024 fake-error state machine (research D). */
function mockSetDevPasid(domain: IommuDomain, dev: IommuDevice, pasid: number): KernelError | undefined {
  const md = mockDev(dev);
  if (domain.type !== IOMMU_DOMAIN_BLOCKED && domain.dirtyOps && md.flags & MOCK_FLAGS_DEVICE_NO_DIRTY)
    return kerr('EINVAL', 'dirty-tracking domain on a device without dirty tracking');
  if (pasid === IOMMU_TEST_PASID_RESERVED) {
    if (domain.type === IOMMU_DOMAIN_BLOCKED) md.pasid1024FakeError = false;
    else if (md.pasid1024FakeError) {
      md.pasid1024FakeError = false;
      return kerr('ENOMEM', 'mock: the fake error of PASID 1024');
    } else md.pasid1024FakeError = true;
  }
  return undefined;
}

/** mock_domain_nop_attach. */
function mockAttachDev(domain: IommuDomain, dev: IommuDevice): KernelError | undefined {
  const md = mockDev(dev);
  if (domain.dirtyOps && md.flags & MOCK_FLAGS_DEVICE_NO_DIRTY)
    return kerr('EINVAL', 'dirty-tracking domain on a device without dirty tracking');
  let viommu: MockViommu | null = null;
  let vdevId = 0n;
  const n = mockNested(domain);
  if (n?.viommu) {
    viommu = n.viommu;
    let found = false;
    for (const [vid, d] of viommu.vdevs)
      if (d === dev) {
        vdevId = vid;
        found = true;
      }
    if (!found) return kerr('ENOENT', `${dev.name} has no vDEVICE on the vIOMMU of this nested domain`);
  }
  md.viommu = viommu;
  md.vdevId = vdevId;
  return undefined;
}

const blockedOps: IommuDomainOps = {
  attachDev: (_d, dev) => {
    mockDev(dev).viommu = null;
    return undefined;
  },
  setDevPasid: (d, dev, pasid) => mockSetDevPasid(d, dev, pasid),
  free: () => {},
};

export class MockIommuDriver implements IommuDriver {
  readonly name = 'mock_iommu';
  readonly maxPasids = 1 << MOCK_PASID_WIDTH;
  readonly userPasidTable = true;
  readonly blockedDomain: IommuDomain;
  readonly defaultDomain: IommuDomain;
  readonly faults: FaultInjector;
  private devSeq = 0;
  private readonly pagingOps: IommuDomainOps;
  private readonly nestedOps: IommuDomainOps;
  private readonly dirtyOps: IommuDirtyOps;
  /** Live domains (for leak checks). */
  readonly liveDomains = new Set<IommuDomain>();

  constructor(faults: FaultInjector) {
    this.faults = faults;
    this.blockedDomain = new IommuDomain('blocked', this, blockedOps);
    this.defaultDomain = this.blockedDomain;
    const faultsRef = faults;
    this.pagingOps = {
      attachDev: (d, dev) => mockAttachDev(d, dev),
      setDevPasid: (d, dev, pasid) => mockSetDevPasid(d, dev, pasid),
      mapPages: (d, iova, paddr, pgsize, pgcount) => {
        if (faultsRef.armed && faultsRef.shouldFail('mock_domain_map_pages'))
          return kerr('ENOENT', 'mock_domain_map_pages: injected failure');
        return mockMapPages(d.priv as MockPaging, iova, paddr, pgsize, pgcount);
      },
      mapSmallPages: (d, iova, pfns, first, n, pageSize) => {
        // As n separate mapPages calls; the injected failure can hit any of them.
        if (faultsRef.armed) {
          for (let i = 0; i < n; i++) {
            if (faultsRef.shouldFail('mock_domain_map_pages')) {
              if (i > 0) mockUnmapPages(d, iova, MOCK_IO_PAGE_SIZE, (i * pageSize) / MOCK_IO_PAGE_SIZE);
              return kerr('ENOENT', 'mock_domain_map_pages: injected failure');
            }
            mockMapPages(
              d.priv as MockPaging,
              iova + i * pageSize,
              pfns[first + i]! * pageSize,
              MOCK_IO_PAGE_SIZE,
              pageSize / MOCK_IO_PAGE_SIZE,
            );
          }
          return undefined;
        }
        mockMapSmall(d.priv as MockPaging, iova, pfns, first, n, pageSize);
        return undefined;
      },
      unmapPages: (d, iova, pgsize, pgcount) => mockUnmapPages(d, iova, pgsize, pgcount),
      iovaToPhys: (d, iova) => {
        const v = mockPaging(d)!.load(Math.floor(iova / MOCK_IO_PAGE_SIZE));
        return v === 0 ? -1 : v - (v % 2048) + (iova % MOCK_IO_PAGE_SIZE);
      },
      free: (d) => {
        this.liveDomains.delete(d);
      },
    };
    this.nestedOps = {
      attachDev: (d, dev) => mockAttachDev(d, dev),
      setDevPasid: (d, dev, pasid) => mockSetDevPasid(d, dev, pasid),
      cacheInvalidateUser: (d, arr) => mockNestedInvalidate(mockNested(d)!, arr),
      free: (d) => {
        this.liveDomains.delete(d);
      },
    };
    this.dirtyOps = {
      setDirtyTracking: (d, enable) => {
        mockPaging(d)!.dirtyTracking = enable;
        return undefined;
      },
      readAndClearDirty: (d, iova, size, flags, dirty) =>
        mockReadAndClearDirty(mockPaging(d)!, iova, size, flags, dirty),
    };
  }

  /** mock_dev_create: a new device on the mock bus, in a group of its own. */
  private fail(site: string): boolean {
    return this.faults.armed && this.faults.shouldFail(site);
  }

  createDevice(flags: number): IommuDevice | KernelError {
    if (flags & ~MOCK_DEV_FLAGS)
      return kerr('EINVAL', `mock_dev_create: unknown flags 0x${flags.toString(16)}`);
    if (this.fail('mock_dev_create')) return kerr('ENOMEM', 'mock_dev_create: allocation failed');
    const id = this.devSeq++;
    const priv: MockDev = {
      flags,
      id,
      cache: new Uint32Array(MOCK_DEV_CACHE_NUM).fill(IOMMU_TEST_DEV_CACHE_DEFAULT),
      pasid1024FakeError: false,
      viommu: null,
      vdevId: 0n,
    };
    const dev = new IommuDevice(`iommufd_mock${id}`, this, {
      maxPasids: flags & MOCK_FLAGS_DEVICE_PASID ? 1 << MOCK_PASID_WIDTH : 0,
      priv,
    });
    iommuProbeDevice(dev);
    return dev;
  }

  capable(dev: IommuDevice, cap: 'CACHE_COHERENCY' | 'ENFORCE_CACHE_COHERENCY' | 'DIRTY_TRACKING'): boolean {
    if (cap === 'CACHE_COHERENCY') return true;
    if (cap === 'DIRTY_TRACKING') return (mockDev(dev).flags & MOCK_FLAGS_DEVICE_NO_DIRTY) === 0;
    return false;
  }

  hwInfo(_dev: IommuDevice, type: number): { type: number; data: Uint8Array } | KernelError {
    if (type !== IOMMU_HW_INFO_TYPE_DEFAULT && type !== IOMMU_HW_INFO_TYPE_SELFTEST)
      return kerr('EOPNOTSUPP', `mock hw_info: type 0x${type.toString(16)}`);
    const data = new Uint8Array(8);
    new DataView(data.buffer).setUint32(4, IOMMU_HW_INFO_SELFTEST_REGVAL, true);
    return { type: IOMMU_HW_INFO_TYPE_SELFTEST, data };
  }

  domainAllocPagingFlags(
    dev: IommuDevice,
    flags: number,
    userData: IommuUserData | null,
  ): IommuDomain | KernelError {
    const dirty = (flags & HWPT_ALLOC_DIRTY_TRACKING) !== 0;
    const noDirty = (mockDev(dev).flags & MOCK_FLAGS_DEVICE_NO_DIRTY) !== 0;
    if (
      flags & ~(HWPT_ALLOC_DIRTY_TRACKING | HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_PASID) ||
      (dirty && noDirty) ||
      userData
    )
      return kerr('EOPNOTSUPP', 'mock paging domain: unsupported flags or user data');
    if (this.fail('mock_domain_alloc_paging')) return kerr('ENOMEM', 'mock paging domain: allocation failed');
    const huge = (mockDev(dev).flags & MOCK_FLAGS_DEVICE_HUGE_IOVA) !== 0;
    const d = new IommuDomain(
      'paging',
      this,
      this.pagingOps,
      {
        pgsizes: MOCK_IO_PAGE_SIZE | (huge ? MOCK_HUGE_PAGE_SIZE : 0),
        apertureStart: BigInt(MOCK_APERTURE_START),
        apertureEnd: BigInt(MOCK_APERTURE_LAST),
      },
      new MockPaging(huge),
    );
    if (dirty) d.dirtyOps = this.dirtyOps;
    this.liveDomains.add(d);
    return d;
  }

  /** __mock_domain_alloc_nested. */
  allocNested(
    parent: IommuDomain,
    userData: IommuUserData,
    viommu: MockViommu | null,
  ): IommuDomain | KernelError {
    if (userData.type !== IOMMU_HWPT_DATA_SELFTEST)
      return kerr('EOPNOTSUPP', `mock nested: data type 0x${userData.type.toString(16)}`);
    // struct iommu_hwpt_selftest { u32 iotlb; u32 pagetable_type; }, min offsetofend(iotlb)
    const b = copyStructFromUserData(userData, IOMMU_HWPT_DATA_SELFTEST, 8, 4);
    if (!(b instanceof Uint8Array)) return b;
    if (this.fail('mock_domain_alloc_nested')) return kerr('ENOMEM', 'mock nested domain: allocation failed');
    const iotlb = new DataView(b.buffer).getUint32(0, true);
    const d = new IommuDomain('nested', this, this.nestedOps, {}, {
      parent,
      iotlb: new Uint32Array(MOCK_NESTED_DOMAIN_IOTLB_NUM).fill(iotlb),
      viommu,
    } satisfies MockNested);
    this.liveDomains.add(d);
    return d;
  }

  domainAllocNested(
    _dev: IommuDevice,
    parent: IommuDomain,
    flags: number,
    userData: IommuUserData,
  ): IommuDomain | KernelError {
    if (flags & ~HWPT_ALLOC_PASID) return kerr('EOPNOTSUPP', 'mock nested: unknown flags');
    if (parent.owner !== this || !mockPaging(parent))
      return kerr('EINVAL', 'mock nested: parent is not a mock paging domain');
    return this.allocNested(parent, userData, null);
  }

  viommuTypeSupported(_dev: IommuDevice, type: number): boolean {
    return type === IOMMU_VIOMMU_TYPE_SELFTEST;
  }

  viommuAlloc(
    _dev: IommuDevice,
    parent: IommuDomain,
    type: number,
    userData: IommuUserData | null,
  ): IommuViommuDriverState | KernelError {
    if (type !== IOMMU_VIOMMU_TYPE_SELFTEST)
      return kerr('EOPNOTSUPP', `mock vIOMMU: type 0x${type.toString(16)}`);
    if (this.fail('mock_viommu_init')) return kerr('ENOMEM', 'mock vIOMMU: allocation failed');
    let out: Uint8Array | null = null;
    let inData = 0;
    if (userData) {
      // struct iommu_viommu_selftest { u32 in_data; u32 out_data; u64 out_mmap_offset; u64 out_mmap_length; }
      const b = copyStructFromUserData(userData, IOMMU_VIOMMU_TYPE_SELFTEST, 24, 8);
      if (!(b instanceof Uint8Array)) return b;
      const dv = new DataView(b.buffer);
      inData = dv.getUint32(0, true);
      dv.setUint32(4, inData, true);
      out = b.subarray(0, Math.min(userData.len, 24));
    }
    return new MockViommu(this, parent, out, inData);
  }
}

function mockMapPages(m: MockPaging, iova: number, paddr: number, pgsize: number, pgcount: number): number {
  const huge = pgsize !== MOCK_IO_PAGE_SIZE ? PFN_HUGE : 0;
  const n = (pgsize / MOCK_IO_PAGE_SIZE) * pgcount;
  let idx = iova / MOCK_IO_PAGE_SIZE;
  let pa = paddr;
  for (let i = 0; i < n; i++) {
    let f = PFN_PRESENT | huge;
    if (i === 0) f |= PFN_START;
    if (i === n - 1) f |= PFN_LAST;
    if (m.store(idx, pa + f) !== 0) invariant(false, 'mock_domain_map_pages: IOVA already mapped');
    idx++;
    pa += MOCK_IO_PAGE_SIZE;
  }
  return n * MOCK_IO_PAGE_SIZE;
}

/** n pages of pageSize, each its own map call: START on its first IO page, LAST on its last. */
function mockMapSmall(
  m: MockPaging,
  iova: number,
  pfns: Int32Array,
  first: number,
  n: number,
  pageSize: number,
): void {
  const per = pageSize / MOCK_IO_PAGE_SIZE;
  let idx = iova / MOCK_IO_PAGE_SIZE;
  for (let i = 0; i < n; i++) {
    let pa = pfns[first + i]! * pageSize;
    for (let k = 0; k < per; k++) {
      let f = PFN_PRESENT;
      if (k === 0) f |= PFN_START;
      if (k === per - 1) f |= PFN_LAST;
      if (m.store(idx, pa + f) !== 0) invariant(false, 'mock_domain_map_pages: IOVA already mapped');
      idx++;
      pa += MOCK_IO_PAGE_SIZE;
    }
  }
}

function mockUnmapPages(d: IommuDomain, iova: number, pgsize: number, pgcount: number): number {
  const m = d.priv as MockPaging;
  const n = (pgsize / MOCK_IO_PAGE_SIZE) * pgcount;
  let idx = iova / MOCK_IO_PAGE_SIZE;
  const checkMarks = (d.pgsizes & MOCK_HUGE_PAGE_SIZE) === 0;
  for (let i = 0; i < n; i++) {
    const old = m.store(idx, 0);
    if (checkMarks && old !== 0) {
      // The kernel's WARN_ONs: iommufd's unmaps are a strict superset of its maps.
      if (i === 0)
        invariant(
          (old % 2048) & PFN_START,
          'mock_domain_unmap_pages: unmap does not start where a map started',
        );
      if (i === n - 1)
        invariant((old % 2048) & PFN_LAST, 'mock_domain_unmap_pages: unmap does not end where a map ended');
    }
    idx++;
  }
  return n * MOCK_IO_PAGE_SIZE;
}

function mockReadAndClearDirty(
  m: MockPaging,
  iova: number,
  size: number,
  flags: number,
  dirty: IommuDirtyBitmap | null,
): KernelError | undefined {
  if (!m.dirtyTracking && dirty) return kerr('EINVAL', 'mock: dirty tracking is off');
  const end = iova + size;
  let cur = iova;
  while (cur < end) {
    const idx = cur / MOCK_IO_PAGE_SIZE;
    const v = m.load(idx);
    if (v === 0) {
      cur += MOCK_IO_PAGE_SIZE;
      continue;
    }
    if ((v % 2048) & PFN_HUGE) {
      const base = cur - (cur % MOCK_HUGE_PAGE_SIZE);
      const bidx = base / MOCK_IO_PAGE_SIZE;
      let any = false;
      for (let i = 0; i < 512; i++) {
        const w = m.load(bidx + i);
        if (w !== 0 && (w % 2048) & PFN_DIRTY) {
          any = true;
          if (!(flags & IOMMU_DIRTY_NO_CLEAR)) m.store(bidx + i, w - PFN_DIRTY);
        }
      }
      if (any) dirty?.record(base, MOCK_HUGE_PAGE_SIZE);
      cur = base + MOCK_HUGE_PAGE_SIZE;
      continue;
    }
    if ((v % 2048) & PFN_DIRTY) {
      if (!(flags & IOMMU_DIRTY_NO_CLEAR)) m.store(idx, v - PFN_DIRTY);
      dirty?.record(cur, MOCK_IO_PAGE_SIZE);
    }
    cur += MOCK_IO_PAGE_SIZE;
  }
  return undefined;
}

/** IOMMU_TEST_OP_DIRTY: mark the entries selected by a bitmap; returns how many existed. */
export function mockMarkDirty(
  m: MockPaging,
  iova: number,
  pageSize: number,
  bitmap: Uint8Array,
  nbits: number,
): number {
  let count = 0;
  for (let i = 0; i < nbits; i++) {
    if (((bitmap[i >> 3] ?? 0) & (1 << (i & 7))) === 0) continue;
    // As the kernel does, the entry is looked up by cur / page_size.
    const idx = Math.floor((iova + i * pageSize) / pageSize);
    const v = m.load(idx);
    if (v !== 0) {
      if (((v % 2048) & PFN_DIRTY) === 0) m.store(idx, v + PFN_DIRTY);
      count++;
    }
  }
  return count;
}

/** The entry at `iova` as {paddr, flags}, or null (for MD_CHECK_MAP and invariants). */
export function mockLookup(m: MockPaging, iova: number): { paddr: number; flags: number } | null {
  const v = m.load(Math.floor(iova / MOCK_IO_PAGE_SIZE));
  if (v === 0) return null;
  const f = v % 2048;
  return { paddr: v - f, flags: f & PFN_FLAGS };
}

function mockNestedInvalidate(
  n: MockNested,
  arr: IommuUserDataArray,
): { handled: number; err?: KernelError } {
  if (arr.type !== IOMMU_HWPT_INVALIDATE_DATA_SELFTEST)
    return { handled: 0, err: kerr('EINVAL', 'mock nested invalidate: wrong data type') };
  let handled = 0;
  for (let i = 0; i < arr.entryNum; i++) {
    // struct iommu_hwpt_invalidate_selftest { u32 flags; u32 iotlb_id; }
    const b = copyStructFromUserArray(arr, IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, i, 8, 8);
    if (!(b instanceof Uint8Array)) return { handled, err: b };
    const dv = new DataView(b.buffer);
    const flags = dv.getUint32(0, true);
    const id = dv.getUint32(4, true);
    if (flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL)
      return { handled, err: kerr('EOPNOTSUPP', 'mock nested invalidate: unknown flags') };
    if (id > MOCK_NESTED_DOMAIN_IOTLB_NUM - 1)
      return { handled, err: kerr('EINVAL', `mock nested invalidate: iotlb_id ${id}`) };
    if (flags & IOMMU_TEST_INVALIDATE_FLAG_ALL) n.iotlb.fill(0);
    else n.iotlb[id] = 0;
    handled++;
  }
  return { handled };
}
