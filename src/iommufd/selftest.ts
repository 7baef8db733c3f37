// IOMMU_TEST_CMD: the model of drivers/iommu/iommufd/selftest.c's iommufd_test() (research
// iommufd.md A.24, D). Mock devices are created on the mock driver and bound to the context as
// IOMMUFD_OBJ_SELFTEST objects (destroy = detach + unbind + delete the device); accesses are
// files (close = destroy) whose driver keeps a list of pinned items and drops the ones an
// IOAS_UNMAP covers; the check ops read the mock page tables and the pin counts of user pages.

import { type KernelError, kerr } from '../core/errno.ts';
import {
  IOMMU_NO_PASID,
  type IommuDevice,
  iommuReleaseDevice,
  iommuReportDeviceFault,
} from '../iommu/core.ts';
import {
  IOMMU_VEVENTQ_TYPE_SELFTEST,
  MOCK_IO_PAGE_SIZE,
  type MockIommuDriver,
  mockDev,
  mockLookup,
  mockMarkDirty,
  mockNested,
  mockPaging,
} from '../iommu/mock.ts';
import {
  attachedHwpt,
  deviceAttach,
  deviceBind,
  deviceDetach,
  deviceReplace,
  deviceUnbind,
  getDevice,
  IommufdDevice,
} from './device.ts';
import { HwPagetable, HwptNested, HwptPaging, Viommu } from './hw_pagetable.ts';
import { ULONG_MAX } from './io-pagetable.ts';
import {
  type AccessPin,
  accessCreate,
  accessDestroy,
  accessPinPages,
  accessReplaceIoas,
  accessRw,
  accessUnpin,
  type DmabufFileLike,
  dmabufSetRevoked,
  getIoas,
  Ioas,
  IommufdAccess,
} from './ioas.ts';
import { type IommufdCtx, type IommufdFile, IommufdObject, OBJ } from './main.ts';
import { KFile, PAGE_SIZE, type Process } from './process.ts';
import { respond, type Ucmd, userPtr } from './ucmd.ts';
import { viommuReportEvent } from './viommu.ts';

export const TEST_OP = {
  ADD_RESERVED: 1,
  MOCK_DOMAIN: 2,
  MD_CHECK_MAP: 3,
  MD_CHECK_REFS: 4,
  CREATE_ACCESS: 5,
  DESTROY_ACCESS_PAGES: 6,
  ACCESS_PAGES: 7,
  ACCESS_RW: 8,
  SET_TEMP_MEMORY_LIMIT: 9,
  MOCK_DOMAIN_REPLACE: 10,
  ACCESS_REPLACE_IOAS: 11,
  MOCK_DOMAIN_FLAGS: 12,
  DIRTY: 13,
  MD_CHECK_IOTLB: 14,
  TRIGGER_IOPF: 15,
  DEV_CHECK_CACHE: 16,
  TRIGGER_VEVENT: 17,
  PASID_ATTACH: 18,
  PASID_REPLACE: 19,
  PASID_DETACH: 20,
  PASID_CHECK_HWPT: 21,
  DMABUF_GET: 22,
  DMABUF_REVOKE: 23,
} as const;

const MOCK_FLAGS_ACCESS_WRITE = 1 << 0;
const MOCK_FLAGS_ACCESS_SYZ = 1 << 16;
const MOCK_ACCESS_RW_WRITE = 1 << 0;
const MOCK_ACCESS_RW_SLOW_PATH = 1 << 2;
const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0;
const SIXTEEN_MIB = 16 * 1024 * 1024;

/** IOMMUFD_OBJ_SELFTEST wrapping a mock device and its binding. */
export class SelftestObj extends IommufdObject {
  readonly type = OBJ.SELFTEST;
  idev: IommufdDevice | null = null;
  dev: IommuDevice | null = null;
  destroy(): void {
    const idev = this.idev;
    if (idev) {
      // The kernel expects the test to have detached its PASIDs; detach any it left.
      for (const [pasid, a] of [...idev.igroup.pasidAttach])
        if (pasid !== IOMMU_NO_PASID && a.devices.has(idev.id)) deviceDetach(idev, pasid);
      deviceDetach(idev, IOMMU_NO_PASID);
      deviceUnbind(idev);
    }
    if (this.dev) iommuReleaseDevice(this.dev);
    this.idev = null;
    this.dev = null;
  }
}

interface AccessItem {
  readonly id: number;
  readonly iova: bigint;
  readonly length: bigint;
  readonly pins: AccessPin[];
}

/** The selftest access file (struct selftest_access). */
export class AccessFile extends KFile {
  readonly kind = 'iommufd-test-access';
  access: IommufdAccess | null = null;
  readonly items = new Map<number, AccessItem>();
  nextId = 0;
  readonly ictxFile: IommufdFile;
  constructor(ictxFile: IommufdFile) {
    super();
    this.ictxFile = ictxFile;
  }
  /** The access driver's unmap op: drop every item in [iova, iova+length). */
  unmap(iova: bigint, length: bigint): void {
    const last = iova + length - 1n;
    for (const [id, it] of [...this.items]) {
      if (iova > it.iova + it.length - 1n || last < it.iova) continue;
      accessUnpin(it.pins);
      this.items.delete(id);
    }
  }
  release(): void {
    if (this.access) {
      this.unmap(0n, ULONG_MAX);
      accessDestroy(this.access);
      this.access = null;
    }
    this.ictxFile.put();
  }
}

/** The selftest dma-buf exporter (iommufd_test_dmabuf_get): zeroed contiguous memory. */
export class DmabufFile extends KFile implements DmabufFileLike {
  readonly kind = 'dmabuf' as const;
  readonly size: number;
  readonly pfns: Int32Array;
  revoked = false;
  readonly importers = new Set<Ioas>();
  private refs = 1;
  private readonly phys: Process['host']['phys'];
  constructor(phys: Process['host']['phys'], size: number) {
    super();
    this.phys = phys;
    this.size = size;
    const n = Math.ceil(size / PAGE_SIZE);
    const base = phys.allocContig(n, 1);
    // Out of memory: no pages (pfns[0] is 0, the caller fails with ENOMEM).
    this.pfns = base === 0 ? new Int32Array(n) : new Int32Array(n).map((_, i) => base + i);
  }
  get(): void {
    this.refs++;
  }
  put(): void {
    if (--this.refs === 0) for (const pfn of this.pfns) this.phys.put(pfn);
  }
  release(): void {
    this.put();
  }
}

function getAccessFile(p: Process, fd: number): AccessFile | KernelError {
  const f = p.file(fd);
  if (!(f instanceof AccessFile) || !f.access) return kerr('EBADFD', `fd ${fd} is not a selftest access`);
  return f;
}

function getSelftest(ctx: IommufdCtx, id: number): SelftestObj | KernelError {
  const o = ctx.get(id, OBJ.SELFTEST);
  return o instanceof SelftestObj && o.idev
    ? o
    : o instanceof IommufdObject
      ? kerr('ENOENT', 'not a mock device')
      : o;
}

function getMdPaging(ctx: IommufdCtx, id: number): HwptPaging | KernelError {
  const o = ctx.get(id, OBJ.HWPT_PAGING);
  if (!(o instanceof HwptPaging)) return o as KernelError;
  if (!o.domain || !mockPaging(o.domain)) return kerr('EINVAL', `HWPT ${id} is not a mock paging domain`);
  return o;
}

function mockDomain(
  u: Ucmd,
  drv: MockIommuDriver,
  devFlags: number,
  member: 'mock_domain' | 'mock_domain_flags',
): number | KernelError {
  const ctx = u.ctx;
  const sobj = ctx.alloc(new SelftestObj(ctx));
  if (!(sobj instanceof SelftestObj)) return sobj;
  const dev = drv.createDevice(devFlags);
  if (!('driver' in dev)) {
    ctx.abort(sobj);
    return dev;
  }
  sobj.dev = dev;
  const idev = deviceBind(ctx, dev);
  if (!(idev instanceof IommufdDevice)) {
    iommuReleaseDevice(dev);
    ctx.abort(sobj);
    return idev;
  }
  sobj.idev = idev;
  const pt = { id: u.cmd['id'] as number };
  const err = deviceAttach(idev, IOMMU_NO_PASID, pt);
  const undo = (e: KernelError): KernelError => {
    deviceUnbind(idev);
    iommuReleaseDevice(dev);
    sobj.idev = null;
    sobj.dev = null;
    ctx.abort(sobj);
    return e;
  };
  if (err) return undo(err);
  const rerr = respond(u, { [member]: { out_stdev_id: sobj.id, out_hwpt_id: pt.id, out_idev_id: idev.id } });
  if (rerr) {
    deviceDetach(idev, IOMMU_NO_PASID);
    return undo(rerr);
  }
  ctx.finalize(sobj);
  return 0;
}

export function testCmdIoctl(u: Ucmd, drv: MockIommuDriver, ictxFile: IommufdFile): number | KernelError {
  const c = u.cmd;
  const ctx = u.ctx;
  const p = u.p;
  const op = c['op'] as number;
  const id = c['id'] as number;
  const m = (name: string): Record<string, unknown> => (c[name] ?? {}) as Record<string, unknown>;
  switch (op) {
    case TEST_OP.ADD_RESERVED: {
      const a = m('add_reserved');
      const ioas = getIoas(ctx, id);
      if (!(ioas instanceof Ioas)) return ioas;
      const start = a['start'] as bigint;
      const last = BigInt.asUintN(64, start + (a['length'] as bigint) - 1n);
      return ioas.iopt.reserveIova(start, last, null) ?? 0;
    }
    case TEST_OP.MOCK_DOMAIN:
      return mockDomain(u, drv, 0, 'mock_domain');
    case TEST_OP.MOCK_DOMAIN_FLAGS:
      return mockDomain(u, drv, m('mock_domain_flags')['dev_flags'] as number, 'mock_domain_flags');
    case TEST_OP.MOCK_DOMAIN_REPLACE: {
      const s = getSelftest(ctx, id);
      if (!(s instanceof SelftestObj)) return s;
      const pt = { id: m('mock_domain_replace')['pt_id'] as number };
      const err = deviceReplace(s.idev!, IOMMU_NO_PASID, pt);
      if (err) return err;
      return respond(u, { mock_domain_replace: { pt_id: pt.id } }) ?? 0;
    }
    case TEST_OP.MD_CHECK_MAP: {
      const a = m('check_map');
      const iova = a['iova'] as bigint;
      const length = a['length'] as bigint;
      const uptr = a['uptr'] as bigint;
      const S = BigInt(MOCK_IO_PAGE_SIZE);
      if (iova % S || length % S || uptr % S || uptr + length > ULONG_MAX)
        return kerr('EINVAL', 'MD_CHECK_MAP: misaligned');
      const h = getMdPaging(ctx, id);
      if (!(h instanceof HwptPaging)) return h;
      const mp = mockPaging(h.domain!)!;
      for (let off = 0n; off < length; off += S) {
        const va = userPtr(uptr, Number(off));
        if (va < 0) return kerr('EFAULT', 'bad uptr');
        const pfn = p.mm.fault(va - (va % PAGE_SIZE), false);
        if (pfn === 0) return kerr('EFAULT', `no user page at 0x${va.toString(16)}`);
        const e = mockLookup(mp, Number(iova + off));
        if (!e || e.paddr !== pfn * PAGE_SIZE + (va % PAGE_SIZE))
          return kerr(
            'EINVAL',
            `MD_CHECK_MAP: IOVA 0x${(iova + off).toString(16)} does not map the user page`,
          );
      }
      return 0;
    }
    case TEST_OP.MD_CHECK_REFS: {
      const a = m('check_refs');
      const length = a['length'] as bigint;
      const uptr = a['uptr'] as bigint;
      const refs = a['refs'] as number;
      if (length % BigInt(PAGE_SIZE) || uptr % BigInt(PAGE_SIZE) || uptr + length > ULONG_MAX)
        return kerr('EINVAL', 'MD_CHECK_REFS: misaligned');
      for (let off = 0n; off < length; off += BigInt(PAGE_SIZE)) {
        const va = userPtr(uptr, Number(off));
        const pfn = va < 0 ? 0 : p.mm.fault(va, false);
        if (pfn === 0) return kerr('EFAULT', `no user page at 0x${va.toString(16)}`);
        // Compound (huge) pages are not checked, as in the kernel.
        if (p.mm.findVma(va)?.file?.hugetlb) continue;
        if (p.host.phys.pinCount(pfn) !== refs)
          return kerr(
            'EIO',
            `page at 0x${va.toString(16)} has ${p.host.phys.pinCount(pfn)} pins, expected ${refs}`,
          );
      }
      return 0;
    }
    case TEST_OP.CREATE_ACCESS: {
      const flags = m('create_access')['flags'] as number;
      if (flags & ~MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)
        return kerr('EOPNOTSUPP', 'CREATE_ACCESS: flags');
      const file = new AccessFile(ictxFile);
      const ops = {
        needsPinPages: (flags & MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES) !== 0,
        unmap: (_a: IommufdAccess, iova: bigint, length: bigint) => file.unmap(iova, length),
      };
      const a = accessCreate(ctx, ops, id);
      if (!(a instanceof IommufdAccess)) return a;
      const fd = p.installFd(file);
      ictxFile.get();
      file.access = a;
      const err = respond(u, { create_access: { out_access_fd: fd } });
      if (err) {
        p.close(fd);
        return err;
      }
      return 0;
    }
    case TEST_OP.DESTROY_ACCESS_PAGES: {
      const f = getAccessFile(p, id);
      if (!(f instanceof AccessFile)) return f;
      const itemId = m('destroy_access_pages')['access_pages_id'] as number;
      const it = f.items.get(itemId);
      if (!it) return kerr('ENOENT', `no access pages item ${itemId}`);
      accessUnpin(it.pins);
      f.items.delete(itemId);
      return 0;
    }
    case TEST_OP.ACCESS_PAGES: {
      const a = m('access_pages');
      const flags = a['flags'] as number;
      const iova = a['iova'] as bigint;
      const length = a['length'] as bigint;
      const uptr = a['uptr'] as bigint;
      if (length > BigInt(SIXTEEN_MIB)) return kerr('ENOMEM', 'ACCESS_PAGES: length over 16 MiB');
      if (flags & ~(MOCK_FLAGS_ACCESS_WRITE | MOCK_FLAGS_ACCESS_SYZ))
        return kerr('EOPNOTSUPP', 'ACCESS_PAGES: flags');
      const f = getAccessFile(p, id);
      if (!(f instanceof AccessFile)) return f;
      if (!f.access!.ops.needsPinPages) return kerr('EOPNOTSUPP', 'the access cannot pin pages');
      const r = accessPinPages(f.access!, iova, length, (flags & MOCK_FLAGS_ACCESS_WRITE) !== 0);
      if (!('pins' in r)) return r;
      if (uptr !== 0n) {
        // iommufd_test_check_pages: the pinned pages are the user's pages.
        const start = userPtr(uptr) - Number(iova % BigInt(PAGE_SIZE));
        for (let i = 0; i < r.pfns.length; i++) {
          const pfn =
            start < 0 ? 0 : p.mm.fault(start + i * PAGE_SIZE - ((start + i * PAGE_SIZE) % PAGE_SIZE), false);
          if (pfn !== r.pfns[i]) {
            accessUnpin(r.pins);
            return kerr('EBADE', 'the pinned pages are not the user pages');
          }
        }
      }
      if (ctx.fail('iommufd_test_access_item')) {
        accessUnpin(r.pins);
        return kerr('ENOMEM', 'access item allocation failed');
      }
      const itemId = f.nextId++;
      f.items.set(itemId, { id: itemId, iova, length, pins: r.pins });
      return respond(u, { access_pages: { ...a, out_access_pages_id: itemId } }) ?? 0;
    }
    case TEST_OP.ACCESS_RW: {
      const a = m('access_rw');
      const flags = a['flags'] as number;
      const length = a['length'] as bigint;
      if (length > BigInt(SIXTEEN_MIB)) return kerr('ENOMEM', 'ACCESS_RW: length over 16 MiB');
      if (flags & ~(MOCK_ACCESS_RW_WRITE | MOCK_ACCESS_RW_SLOW_PATH | MOCK_FLAGS_ACCESS_SYZ))
        return kerr('EOPNOTSUPP', 'ACCESS_RW: flags');
      const f = getAccessFile(p, id);
      if (!(f instanceof AccessFile)) return f;
      if (ctx.fail('iommufd_test_access_rw_buf'))
        return kerr('ENOMEM', 'ACCESS_RW: buffer allocation failed');
      const n = Number(length);
      const va = userPtr(a['uptr'] as bigint);
      const write = (flags & MOCK_ACCESS_RW_WRITE) !== 0;
      let buf: Uint8Array = new Uint8Array(n);
      if (write && n > 0) {
        const b = va < 0 ? kerr('EFAULT', 'bad uptr') : p.mm.copyFromUser(va, n);
        if (!(b instanceof Uint8Array)) return b;
        buf = b;
      }
      const err = accessRw(f.access!, a['iova'] as bigint, buf, write);
      if (err) return err;
      if (!write && n > 0) {
        const e = va < 0 ? kerr('EFAULT', 'bad uptr') : p.mm.copyToUser(va, buf);
        if (e) return e;
      }
      return 0;
    }
    case TEST_OP.SET_TEMP_MEMORY_LIMIT: {
      const limit = m('memory_limit')['limit'] as number;
      if (limit < 12) return kerr('EINVAL', 'memory limit below 12');
      ctx.tempMemoryLimit = limit;
      return 0;
    }
    case TEST_OP.ACCESS_REPLACE_IOAS: {
      const f = getAccessFile(p, id);
      if (!(f instanceof AccessFile)) return f;
      return accessReplaceIoas(f.access!, m('access_replace_ioas')['ioas_id'] as number) ?? 0;
    }
    case TEST_OP.DIRTY: {
      const a = m('dirty');
      const iova = a['iova'] as bigint;
      const length = a['length'] as bigint;
      const ps = a['page_size'] as bigint;
      const uptr = a['uptr'] as bigint;
      if (ps === 0n || length === 0n || iova % ps || length % ps || uptr === 0n)
        return kerr('EINVAL', 'DIRTY: bad arguments');
      const h = getMdPaging(ctx, id);
      if (!(h instanceof HwptPaging)) return h;
      const mp = mockPaging(h.domain!)!;
      if (!mp.dirtyTracking) return kerr('EINVAL', 'DIRTY: dirty tracking is off');
      const nbits = Number(length / ps);
      const bm = p.mm.copyFromUser(userPtr(uptr), Math.ceil(nbits / 8));
      if (!(bm instanceof Uint8Array)) return bm;
      const count = mockMarkDirty(mp, Number(iova), Number(ps), bm, nbits);
      return respond(u, { dirty: { ...a, out_nr_dirty: BigInt(count) } }) ?? 0;
    }
    case TEST_OP.MD_CHECK_IOTLB: {
      const a = m('check_iotlb');
      const o = ctx.get(id, OBJ.HWPT_NESTED);
      if (!(o instanceof HwptNested)) return o as KernelError;
      const n = mockNested(o.domain!);
      if (!n) return kerr('EINVAL', 'not a mock nested domain');
      const i = a['id'] as number;
      if (i > 3 || n.iotlb[i] !== a['iotlb'])
        return kerr('EINVAL', `IOTLB[${i}] is 0x${(n.iotlb[i] ?? 0).toString(16)}`);
      return 0;
    }
    case TEST_OP.TRIGGER_IOPF: {
      const a = m('trigger_iopf');
      const idev = getDevice(ctx, a['dev_id'] as number);
      if (!(idev instanceof IommufdDevice)) return idev;
      const pasid = a['pasid'] as number;
      iommuReportDeviceFault(idev.dev, {
        flags: 2 | (pasid !== IOMMU_NO_PASID ? 1 : 0),
        pasid,
        grpid: a['grpid'] as number,
        perm: a['perm'] as number,
        addr: a['addr'] as bigint,
      });
      return 0;
    }
    case TEST_OP.DEV_CHECK_CACHE: {
      const a = m('check_dev_cache');
      const idev = getDevice(ctx, id);
      if (!(idev instanceof IommufdDevice)) return idev;
      const i = a['id'] as number;
      const md = mockDev(idev.dev);
      if (i > 3 || md.cache[i] !== a['cache']) return kerr('EINVAL', `device cache[${i}] mismatch`);
      return 0;
    }
    case TEST_OP.TRIGGER_VEVENT: {
      const idev = getDevice(ctx, m('trigger_vevent')['dev_id'] as number);
      if (!(idev instanceof IommufdDevice)) return idev;
      const md = mockDev(idev.dev);
      if (!md.viommu || !md.vdevId)
        return kerr('ENOENT', 'the device is not on a vIOMMU nested domain with a vDEVICE');
      let v: Viommu | null = null;
      for (const o of ctx.objects.values()) if (o instanceof Viommu && o.drv === md.viommu) v = o;
      if (!v) return kerr('ENOENT', 'no vIOMMU');
      // struct iommu_viommu_event_selftest { u32 virt_id; }
      const ev = new Uint8Array(4);
      new DataView(ev.buffer).setUint32(0, Number(md.vdevId), true);
      return viommuReportEvent(v, IOMMU_VEVENTQ_TYPE_SELFTEST, ev) ?? 0;
    }
    case TEST_OP.PASID_ATTACH: {
      const s = getSelftest(ctx, id);
      if (!(s instanceof SelftestObj)) return s;
      const a = m('pasid_attach');
      const pasid = a['pasid'] as number;
      const pt = { id: a['pt_id'] as number };
      const err = deviceAttach(s.idev!, pasid, pt);
      if (err) return err;
      const rerr = respond(u, { pasid_attach: { pasid, pt_id: pt.id } });
      if (rerr) deviceDetach(s.idev!, pasid);
      return rerr ?? 0;
    }
    case TEST_OP.PASID_REPLACE: {
      const s = getSelftest(ctx, id);
      if (!(s instanceof SelftestObj)) return s;
      const a = m('pasid_replace');
      const pt = { id: a['pt_id'] as number };
      return deviceReplace(s.idev!, a['pasid'] as number, pt) ?? 0;
    }
    case TEST_OP.PASID_DETACH: {
      const s = getSelftest(ctx, id);
      if (!(s instanceof SelftestObj)) return s;
      deviceDetach(s.idev!, m('pasid_detach')['pasid'] as number);
      return 0;
    }
    case TEST_OP.PASID_CHECK_HWPT: {
      const s = getSelftest(ctx, id);
      if (!(s instanceof SelftestObj)) return s;
      const a = m('pasid_check');
      const cur = attachedHwpt(s.idev!, a['pasid'] as number);
      const hid = a['hwpt_id'] as number;
      if (hid === 0) return cur ? kerr('EINVAL', 'a domain is attached at that PASID') : 0;
      const h = ctx.get(hid, 'ANY');
      if (!(h instanceof HwPagetable)) return h instanceof IommufdObject ? kerr('ENOENT', 'not a HWPT') : h;
      return cur && cur.domain === h.domain ? 0 : kerr('EINVAL', 'another domain is attached at that PASID');
    }
    case TEST_OP.DMABUF_GET: {
      const a = m('dmabuf_get');
      const len = a['length'] as number;
      if (len === 0 || len > PAGE_SIZE * 512) return kerr('EINVAL', `dma-buf length ${len}`);
      if (ctx.fail('iommufd_test_dmabuf_get')) return kerr('ENOMEM', 'dma-buf allocation failed');
      // The fd is the ioctl's return value (dma_buf_fd).
      const size = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
      const dmabuf = new DmabufFile(p.host.phys, size);
      if (dmabuf.pfns.length > 0 && dmabuf.pfns[0] === 0) return kerr('ENOMEM', 'no contiguous memory left');
      return p.installFd(dmabuf);
    }
    case TEST_OP.DMABUF_REVOKE: {
      const a = m('dmabuf_revoke');
      const f = p.file(a['dmabuf_fd'] as number);
      if (!(f instanceof KFile)) return f;
      if (!(f instanceof DmabufFile)) return kerr('EINVAL', 'not a selftest dma-buf');
      return dmabufSetRevoked(f, (a['revoked'] as number) !== 0) ?? 0;
    }
    default:
      return kerr('EOPNOTSUPP', `IOMMU_TEST_CMD op ${op}`);
  }
}
