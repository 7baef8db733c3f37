// HW pagetables, fault queues, vIOMMUs and vDEVICEs: the model of
// drivers/iommu/iommufd/hw_pagetable.c, eventq.c (fault part) and viommu.c (research
// iommufd.md A.11–A.18, B.5). A HWPT_PAGING wraps a paging iommu_domain mirroring its IOAS
// (an auto-domain when made by attaching a device to an IOAS); a HWPT_NESTED wraps a
// driver-built stage-1 domain over a NEST_PARENT paging HWPT, directly or through a vIOMMU.
// Each object holds `users` references on what it depends on (B.1) and drops them in its
// destroy op.

import { type KernelError, kerr } from '../core/errno.ts';
import { invariant } from '../core/invariants.ts';
import {
  type IommuDevice,
  type IommuDomain,
  type IommuPageFault,
  type IommuUserData,
  type IommuUserDataArray,
  type IommuViommuDriverState,
  iommuDomainFree,
} from '../iommu/core.ts';
import { getDevice, IommufdDevice } from './device.ts';
import { ULONG_MAX } from './io-pagetable.ts';
import { Ioas } from './ioas.ts';
import { type IommufdCtx, type IommufdFile, IommufdObject, OBJ } from './main.ts';
import { KFile, PAGE_SIZE, type Process } from './process.ts';
import { respond, type Ucmd, userPtr } from './ucmd.ts';

export const HWPT_ALLOC_NEST_PARENT = 1 << 0;
export const HWPT_ALLOC_DIRTY_TRACKING = 1 << 1;
export const HWPT_FAULT_ID_VALID = 1 << 2;
export const HWPT_ALLOC_PASID = 1 << 3;
const IOMMU_HWPT_DATA_NONE = 0;

export abstract class HwPagetable extends IommufdObject {
  domain: IommuDomain | null = null;
  fault: FaultObject | null = null;
  /** Allocated with IOMMU_HWPT_ALLOC_PASID. */
  pasidCompat = false;
  dropFault(): void {
    if (this.fault) {
      this.fault.users--;
      this.fault = null;
    }
  }
}

export class HwptPaging extends HwPagetable {
  readonly type = OBJ.HWPT_PAGING;
  readonly ioas: Ioas;
  autoDomain = false;
  nestParent = false;
  /** Every DMA through the domain snoops (iommu_ops enforce_cache_coherency succeeded). */
  enforceCacheCoherency = false;
  /** On ioas.hwptList and in the io_pagetable's domain list. */
  inIoas = false;
  constructor(ctx: IommufdCtx, ioas: Ioas) {
    super(ctx);
    this.ioas = ioas;
  }
  destroy(): void {
    if (this.inIoas) {
      const i = this.ioas.hwptList.indexOf(this);
      if (i >= 0) this.ioas.hwptList.splice(i, 1);
      this.ioas.iopt.removeDomain(this.domain!);
      this.inIoas = false;
    }
    if (this.domain) iommuDomainFree(this.domain);
    this.domain = null;
    this.dropFault();
    this.ioas.users--;
  }
}

export class HwptNested extends HwPagetable {
  readonly type = OBJ.HWPT_NESTED;
  readonly parent: HwptPaging;
  readonly viommu: Viommu | null;
  constructor(ctx: IommufdCtx, parent: HwptPaging, viommu: Viommu | null) {
    super(ctx);
    this.parent = parent;
    this.viommu = viommu;
  }
  destroy(): void {
    if (this.domain) iommuDomainFree(this.domain);
    this.domain = null;
    this.dropFault();
    if (this.viommu) this.viommu.users--;
    else this.parent.users--;
  }
}

/** find_hwpt_paging: the paging HWPT behind a HWPT (a nested one's parent). */
export function findHwptPaging(h: HwPagetable): HwptPaging {
  return h instanceof HwptPaging ? h : (h as HwptNested).parent;
}

/** A user-data view over process memory (struct iommu_user_data). */
export function userData(p: Process, type: number, uptr: bigint, len: number): IommuUserData {
  return {
    type,
    len,
    read(off: number, n: number) {
      const va = userPtr(uptr, off);
      if (va < 0) return kerr('EFAULT', 'bad user data pointer');
      return p.mm.copyFromUser(va, n);
    },
  };
}

export function userDataArray(
  p: Process,
  type: number,
  uptr: bigint,
  entryLen: number,
  entryNum: number,
): IommuUserDataArray {
  return {
    type,
    entryLen,
    entryNum,
    read(off: number, n: number) {
      const va = userPtr(uptr, off);
      if (va < 0) return kerr('EFAULT', 'bad user data pointer');
      return p.mm.copyFromUser(va, n);
    },
  };
}

/**
 * iommufd_hwpt_paging_alloc: a paging HWPT on `ioas` for `idev`'s IOMMU. With
 * `immediateAttach` the device is attached before the domain joins the IOAS (the auto-domain
 * attach path); on any failure the object is aborted. Not finalized: the caller does that.
 */
export function hwptPagingAlloc(
  ctx: IommufdCtx,
  ioas: Ioas,
  idev: IommufdDevice,
  pasid: number,
  flags: number,
  immediateAttach: boolean,
  data: IommuUserData | null,
): HwptPaging | KernelError {
  const valid = HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_DIRTY_TRACKING | HWPT_FAULT_ID_VALID | HWPT_ALLOC_PASID;
  if (flags & ~valid) return kerr('EOPNOTSUPP', `HWPT paging: unknown flags 0x${flags.toString(16)}`);
  const dev = idev.dev;
  if (flags & HWPT_ALLOC_DIRTY_TRACKING && !dev.driver.capable(dev, 'DIRTY_TRACKING'))
    return kerr('EOPNOTSUPP', 'the device cannot track dirty pages');
  if (flags & HWPT_FAULT_ID_VALID && flags & HWPT_ALLOC_NEST_PARENT)
    return kerr('EOPNOTSUPP', 'a nesting parent cannot take faults');
  const h = ctx.alloc(new HwptPaging(ctx, ioas));
  if (!(h instanceof HwptPaging)) return h;
  h.pasidCompat = (flags & HWPT_ALLOC_PASID) !== 0;
  h.nestParent = (flags & HWPT_ALLOC_NEST_PARENT) !== 0;
  ioas.users++;
  const d = dev.driver.domainAllocPagingFlags(dev, flags & ~HWPT_FAULT_ID_VALID, data);
  if (!('ops' in d)) {
    ctx.abortAndDestroy(h);
    return d;
  }
  h.domain = d;
  // Set the coherency mode before the domain gets mappings (iommufd_hwpt_paging_enforce_cc):
  // a driver reporting IOMMU_CAP_ENFORCE_CACHE_COHERENCY must manage it on a new domain.
  if (dev.driver.capable(dev, 'ENFORCE_CACHE_COHERENCY')) {
    h.enforceCacheCoherency = d.ops.enforceCacheCoherency?.(d) ?? false;
    if (!h.enforceCacheCoherency) {
      ctx.abortAndDestroy(h);
      return kerr('EINVAL', 'the driver could not enforce cache coherency on a new domain');
    }
  }
  if (immediateAttach) {
    const err = hwptAttachDo(idev, pasid, h);
    if (err) {
      ctx.abortAndDestroy(h);
      return err;
    }
  }
  const err = ioas.iopt.addDomain(d);
  if (err) {
    if (immediateAttach) hwptDetachDo(idev, pasid);
    ctx.abortAndDestroy(h);
    return err;
  }
  h.inIoas = true;
  ioas.hwptList.push(h);
  return h;
}

// Set by device.ts (which imports this module) to avoid an import cycle at load time.
let hwptAttachDo: (idev: IommufdDevice, pasid: number, h: HwPagetable) => KernelError | undefined = () =>
  kerr('EINVAL', 'not ready');
let hwptDetachDo: (idev: IommufdDevice, pasid: number) => void = () => {};
export function setAttachHooks(attach: typeof hwptAttachDo, detach: typeof hwptDetachDo): void {
  hwptAttachDo = attach;
  hwptDetachDo = detach;
}

/** iommufd_hwpt_nested_alloc. */
function hwptNestedAlloc(
  ctx: IommufdCtx,
  parent: HwptPaging,
  idev: IommufdDevice,
  flags: number,
  data: IommuUserData,
): HwptNested | KernelError {
  const drv = idev.dev.driver;
  if (flags & ~(HWPT_FAULT_ID_VALID | HWPT_ALLOC_PASID) || data.len === 0 || !drv.domainAllocNested)
    return kerr('EOPNOTSUPP', 'HWPT nested: unsupported flags, no data, or no nesting in the driver');
  if (parent.autoDomain || !parent.nestParent || parent.domain?.owner !== drv)
    return kerr('EINVAL', 'HWPT nested: the parent is not a nesting parent of this IOMMU');
  const h = ctx.alloc(new HwptNested(ctx, parent, null));
  if (!(h instanceof HwptNested)) return h;
  h.pasidCompat = (flags & HWPT_ALLOC_PASID) !== 0;
  parent.users++;
  const d = drv.domainAllocNested(idev.dev, parent.domain, flags & ~HWPT_FAULT_ID_VALID, data);
  if (!('ops' in d)) {
    ctx.abortAndDestroy(h);
    return d;
  }
  h.domain = d;
  if (d.type !== 'nested') {
    ctx.abortAndDestroy(h);
    return kerr('EINVAL', 'the driver returned a domain that is not nested');
  }
  return h;
}

/** iommufd_viommu_alloc_hwpt_nested. */
function viommuAllocHwptNested(
  ctx: IommufdCtx,
  v: Viommu,
  flags: number,
  data: IommuUserData,
): HwptNested | KernelError {
  if (flags & ~(HWPT_FAULT_ID_VALID | HWPT_ALLOC_PASID))
    return kerr('EOPNOTSUPP', 'vIOMMU nested: unknown flags');
  if (data.len === 0) return kerr('EOPNOTSUPP', 'vIOMMU nested: no data');
  if (!v.drv.allocDomainNested) return kerr('EOPNOTSUPP', 'vIOMMU cannot allocate nested domains');
  const h = ctx.alloc(new HwptNested(ctx, v.hwpt, v));
  if (!(h instanceof HwptNested)) return h;
  h.pasidCompat = (flags & HWPT_ALLOC_PASID) !== 0;
  v.users++;
  const d = v.drv.allocDomainNested(flags & ~HWPT_FAULT_ID_VALID, data);
  if (!('ops' in d)) {
    ctx.abortAndDestroy(h);
    return d;
  }
  h.domain = d;
  return h;
}

// ---- IOMMU_HWPT_ALLOC --------------------------------------------------------------------------

export function hwptAllocIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  if (c['__reserved'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_HWPT_ALLOC: __reserved');
  const dataType = c['data_type'] as number;
  const dataLen = c['data_len'] as number;
  if (
    (dataType === IOMMU_HWPT_DATA_NONE && dataLen !== 0) ||
    (dataType !== IOMMU_HWPT_DATA_NONE && dataLen === 0)
  )
    return kerr('EINVAL', 'IOMMU_HWPT_ALLOC: data_type and data_len disagree');
  const idev = getDevice(u.ctx, c['dev_id'] as number);
  if (!(idev instanceof IommufdDevice)) return idev;
  const pt = u.ctx.get(c['pt_id'] as number, 'ANY');
  if (!(pt instanceof IommufdObject))
    return kerr('EINVAL', `IOMMU_HWPT_ALLOC: pt_id ${c['pt_id']} does not exist`);
  const flags = c['flags'] as number;
  const data = userData(u.p, dataType, c['data_uptr'] as bigint, dataLen);
  let h: HwPagetable | KernelError;
  if (pt instanceof Ioas) h = hwptPagingAlloc(u.ctx, pt, idev, 0, flags, false, dataLen ? data : null);
  else if (pt instanceof HwptPaging) h = hwptNestedAlloc(u.ctx, pt, idev, flags, data);
  else if (pt instanceof Viommu) {
    if (pt.driver !== idev.dev.driver)
      return kerr('EINVAL', 'the device is behind another IOMMU than the vIOMMU');
    h = viommuAllocHwptNested(u.ctx, pt, flags, data);
  } else return kerr('EINVAL', `IOMMU_HWPT_ALLOC: pt_id ${pt.id} is a ${pt.type}`);
  if (!(h instanceof HwPagetable)) return h;
  if (flags & HWPT_FAULT_ID_VALID) {
    const f = u.ctx.get(c['fault_id'] as number, OBJ.FAULT);
    if (!(f instanceof FaultObject)) {
      u.ctx.abortAndDestroy(h);
      return f as KernelError;
    }
    h.fault = f;
    f.users++;
    const fault = f;
    h.domain!.iopfHandler = (dev, pf) => fault.report(dev, pf);
  }
  const err = respond(u, { out_hwpt_id: h.id });
  if (err) {
    u.ctx.abortAndDestroy(h);
    return err;
  }
  u.ctx.finalize(h);
  return 0;
}

// ---- IOMMU_GET_HW_INFO ---------------------------------------------------------------------------

const HW_INFO_FLAG_INPUT_TYPE = 1;
const HW_CAP_DIRTY_TRACKING = 1;
const HW_CAP_PCI_PASID_EXEC = 2;
const HW_CAP_PCI_PASID_PRIV = 4;

export function getHwInfoIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const flags = c['flags'] as number;
  if (flags & ~HW_INFO_FLAG_INPUT_TYPE) return kerr('EOPNOTSUPP', 'IOMMU_GET_HW_INFO: unknown flags');
  for (const r of c['__reserved'] as number[])
    if (r !== 0) return kerr('EOPNOTSUPP', 'IOMMU_GET_HW_INFO: __reserved');
  const inType = flags & HW_INFO_FLAG_INPUT_TYPE ? (c['in_data_type'] as number) : 0;
  const idev = getDevice(u.ctx, c['dev_id'] as number);
  if (!(idev instanceof IommufdDevice)) return idev;
  const dev = idev.dev;
  let data: Uint8Array = new Uint8Array(0);
  let outType = 0;
  if (dev.driver.hwInfo) {
    const r = dev.driver.hwInfo(dev, inType);
    if (!('data' in r)) return r;
    data = r.data;
    outType = r.type;
  }
  const userLen = c['data_len'] as number;
  const copyLen = Math.min(userLen, data.length);
  if (userLen > 0) {
    const out = new Uint8Array(userLen);
    out.set(data.subarray(0, copyLen));
    const va = userPtr(c['data_uptr'] as bigint);
    const err = va < 0 ? kerr('EFAULT', 'bad data_uptr') : u.p.mm.copyToUser(va, out);
    if (err) return err;
  }
  let caps = 0n;
  if (dev.driver.capable(dev, 'DIRTY_TRACKING')) caps |= BigInt(HW_CAP_DIRTY_TRACKING);
  let log2 = 0;
  if (dev.maxPasids) {
    log2 = Math.floor(Math.log2(dev.maxPasids));
    if (dev.pasidExec) caps |= BigInt(HW_CAP_PCI_PASID_EXEC);
    if (dev.pasidPriv) caps |= BigInt(HW_CAP_PCI_PASID_PRIV);
  }
  return (
    respond(u, {
      data_len: data.length,
      out_data_type: outType,
      out_capabilities: caps,
      out_max_pasid_log2: log2,
    }) ?? 0
  );
}

// ---- dirty tracking ----------------------------------------------------------------------------

function getHwptPaging(ctx: IommufdCtx, id: number): HwptPaging | KernelError {
  const o = ctx.get(id, OBJ.HWPT_PAGING);
  return o instanceof HwptPaging ? o : (o as KernelError);
}

export function setDirtyTrackingIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const flags = c['flags'] as number;
  if (flags & ~1) return kerr('EOPNOTSUPP', 'IOMMU_HWPT_SET_DIRTY_TRACKING: unknown flags');
  const h = getHwptPaging(u.ctx, c['hwpt_id'] as number);
  if (!(h instanceof HwptPaging)) return h;
  const d = h.domain!;
  const ops = d.dirtyOps;
  if (!ops) return kerr('EOPNOTSUPP', 'the HWPT was not allocated with DIRTY_TRACKING');
  const enable = (flags & 1) !== 0;
  if (enable) {
    // A clean snapshot: clear the dirty bits of every mapped area first.
    for (const a of h.ioas.iopt.areas()) {
      const err = ops.readAndClearDirty(d, Number(a.iova), Number(a.length), 0, null);
      if (err) return err;
    }
    // iopt_clear_dirty_data: the cleared entries may be cached (iommu_iotlb_sync of the gather)
    d.ops.iotlbSync?.(d);
  }
  return ops.setDirtyTracking(d, enable) ?? 0;
}

export function getDirtyBitmapIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const flags = c['flags'] as number;
  if (flags & ~1 || c['__reserved'] !== 0)
    return kerr('EOPNOTSUPP', 'IOMMU_HWPT_GET_DIRTY_BITMAP: flags or __reserved');
  const h = getHwptPaging(u.ctx, c['hwpt_id'] as number);
  if (!(h instanceof HwptPaging)) return h;
  const iova = c['iova'] as bigint;
  const length = c['length'] as bigint;
  const pageSize = c['page_size'] as bigint;
  const last = iova + length - 1n;
  if (last > ULONG_MAX || length === 0n) return kerr('EOVERFLOW', 'iova + length overflows');
  const align = h.ioas.iopt.iovaAlignment;
  if (iova % align !== 0n || (last + 1n) % align !== 0n)
    return kerr('EINVAL', 'range not aligned to the IOAS alignment');
  if (pageSize === 0n) return kerr('EINVAL', 'page_size is 0');
  if (iova % pageSize !== 0n || (last + 1n) % pageSize !== 0n)
    return kerr('EINVAL', 'range not aligned to page_size');
  const d = h.domain!;
  if (!d.dirtyOps) return kerr('EOPNOTSUPP', 'the HWPT has no dirty tracking');
  if (u.ctx.fail('iova_bitmap_alloc')) return kerr('ENOMEM', 'iova_bitmap_alloc: injected failure');
  const ps = Number(pageSize);
  const base = Number(iova);
  const nbits = Number(length / pageSize);
  const bits = new Uint8Array(Math.ceil(nbits / 8));
  const touched = new Set<number>();
  const record = {
    record(riova: number, rlen: number) {
      const s = Math.max(riova, base);
      const e = Math.min(riova + rlen, base + nbits * ps);
      for (let x = Math.floor((s - base) / ps); x * ps + base < e; x++) {
        bits[x >> 3]! |= 1 << (x & 7);
        touched.add(x >> 3);
      }
    },
  };
  for (const a of h.ioas.iopt.areasIn(iova, last)) {
    const s = bigMax(a.iova, iova);
    const e = a.last < last ? a.last : last;
    const err = d.dirtyOps.readAndClearDirty(d, Number(s), Number(e - s + 1n), flags, record);
    if (err) return err;
  }
  // iommu_read_and_clear_dirty: translations of the entries just cleaned are flushed, so the
  // next write sets the dirty bit again (iommu_iotlb_sync of the gather)
  if (!(flags & 1)) d.ops.iotlbSync?.(d);
  // iova_bitmap sets bits in the user's bitmap: only bytes holding a set bit are written.
  const data = c['data'] as bigint;
  for (const i of touched) {
    const va = userPtr(data, i);
    if (va < 0) return kerr('EFAULT', 'bad bitmap pointer');
    const cur = u.p.mm.copyFromUser(va, 1);
    if (!(cur instanceof Uint8Array)) return cur;
    cur[0]! |= bits[i]!;
    const err = u.p.mm.copyToUser(va, cur);
    if (err) return err;
  }
  return 0;
}

// ---- IOMMU_HWPT_INVALIDATE -----------------------------------------------------------------------

export function hwptInvalidateIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  let done = 0;
  const run = (): KernelError | undefined => {
    if (c['__reserved'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_HWPT_INVALIDATE: __reserved');
    const num = c['entry_num'] as number;
    const len = c['entry_len'] as number;
    if (num !== 0 && ((c['data_uptr'] as bigint) === 0n || len === 0))
      return kerr('EINVAL', 'entries given without a pointer or a length');
    if (u.ctx.host.version === 'newest' && (len > PAGE_SIZE || num > 1 << 19))
      return kerr('EINVAL', 'entry_len or entry_num too large');
    const o = u.ctx.get(c['hwpt_id'] as number, 'ANY');
    if (!(o instanceof IommufdObject)) return o;
    const arr = userDataArray(u.p, c['data_type'] as number, c['data_uptr'] as bigint, len, num);
    let r: { handled: number; err?: KernelError };
    if (o instanceof HwptNested) {
      const inv = o.domain?.ops.cacheInvalidateUser;
      if (!inv) return kerr('EOPNOTSUPP', 'the domain has no user cache invalidation');
      r = inv(o.domain!, arr);
    } else if (o instanceof Viommu) {
      if (!o.drv.cacheInvalidate) return kerr('EOPNOTSUPP', 'the vIOMMU has no cache invalidation');
      r = o.drv.cacheInvalidate(arr);
    } else if (o instanceof HwptPaging && u.ctx.host.version === 'v6.8') {
      return kerr('ENOENT', 'a paging HWPT cannot be invalidated');
    } else return kerr('EINVAL', `object ${o.id} (${o.type}) cannot be invalidated`);
    done = r.handled;
    return r.err;
  };
  const err = run();
  // entry_num is always written back: the number of entries handled.
  if (respond(u, { entry_num: done })) return kerr('EFAULT', 'IOMMU_HWPT_INVALIDATE: write-back faulted');
  return err ?? 0;
}

// ---- fault queues (eventq.c) ---------------------------------------------------------------------

interface PendingFault {
  readonly idevId: number;
  readonly fault: IommuPageFault;
  readonly dev: IommuDevice;
}

/** enum iommu_page_response_code: IOMMU_PAGE_RESP_INVALID. */
const IOMMU_PAGE_RESP_INVALID = 1;
export const PGFAULT_SIZE = 40;
export const PAGE_RESPONSE_SIZE = 8;

export class FaultObject extends IommufdObject {
  readonly type = OBJ.FAULT;
  readonly deliver: PendingFault[] = [];
  readonly response = new Map<number, PendingFault>();
  private nextCookie = 1;
  /** Open fault fds (each holds a users reference). */
  fileRefs = 0;
  constructor(ctx: IommufdCtx) {
    super(ctx);
  }
  /** iommufd_fault_iopf_handler: queue a page request from `dev`. */
  report(dev: IommuDevice, fault: IommuPageFault): void {
    let idevId = 0;
    for (const o of this.ctx.objects.values()) if (o instanceof IommufdDevice && o.dev === dev) idevId = o.id;
    this.deliver.push({ idevId, fault, dev });
  }
  /**
   * iommufd_auto_response_faults: everything pending for `dev` at `pasid` (detach/replace
   * away) is answered INVALID through the driver (iopf_group_response), delivered or not.
   */
  autoRespond(dev: IommuDevice, pasid: number): void {
    const answered: PendingFault[] = [];
    for (let i = 0; i < this.deliver.length; i++) {
      const f = this.deliver[i]!;
      if (f.dev === dev && f.fault.pasid === pasid) {
        this.deliver.splice(i--, 1);
        answered.push(f);
      }
    }
    for (const [k, f] of this.response)
      if (f.dev === dev && f.fault.pasid === pasid) {
        this.response.delete(k);
        answered.push(f);
      }
    for (const f of answered) f.dev.driver.pageResponse?.(f.dev, f.fault, IOMMU_PAGE_RESP_INVALID);
  }
  read(count: number): Uint8Array | KernelError {
    if (count % PGFAULT_SIZE !== 0) return kerr('ESPIPE', 'read count is not a multiple of the fault size');
    const out: Uint8Array[] = [];
    let done = 0;
    while (this.deliver.length > 0 && done + PGFAULT_SIZE <= count) {
      const f = this.deliver.shift()!;
      let cookie = this.nextCookie;
      while (this.response.has(cookie)) cookie++;
      this.nextCookie = cookie + 1;
      this.response.set(cookie, f);
      const b = new Uint8Array(PGFAULT_SIZE);
      const dv = new DataView(b.buffer);
      dv.setUint32(0, f.fault.flags, true);
      dv.setUint32(4, f.idevId, true);
      dv.setUint32(8, f.fault.pasid, true);
      dv.setUint32(12, f.fault.grpid, true);
      dv.setUint32(16, f.fault.perm, true);
      dv.setBigUint64(24, f.fault.addr, true);
      dv.setUint32(32, 0, true);
      dv.setUint32(36, cookie, true);
      out.push(b);
      done += PGFAULT_SIZE;
    }
    const r = new Uint8Array(done);
    out.forEach((b, i) => {
      r.set(b, i * PGFAULT_SIZE);
    });
    return r;
  }
  write(bytes: Uint8Array): number | KernelError {
    if (bytes.length % PAGE_RESPONSE_SIZE !== 0)
      return kerr('ESPIPE', 'write count is not a multiple of the response size');
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let done = 0;
    let err: KernelError | undefined;
    while (done < bytes.length) {
      const cookie = dv.getUint32(done, true);
      const code = dv.getUint32(done + 4, true);
      if (code !== 0 && code !== 1) {
        err = kerr('EINVAL', `page response code ${code}`);
        break;
      }
      const f = this.response.get(cookie);
      if (!f) {
        err = kerr('EINVAL', `no fault with cookie ${cookie}`);
        break;
      }
      this.response.delete(cookie);
      f.dev.driver.pageResponse?.(f.dev, f.fault, code);
      done += PAGE_RESPONSE_SIZE;
    }
    return done > 0 ? done : (err ?? 0);
  }
  destroy(): void {
    this.deliver.length = 0;
    this.response.clear();
  }
}

/** The fault queue's file: holds a reference on the FAULT object and on the iommufd file. */
export class FaultFile extends KFile {
  readonly kind = 'iommufd-fault';
  readonly fault: FaultObject;
  readonly ictxFile: IommufdFile;
  constructor(fault: FaultObject, ictxFile: IommufdFile) {
    super();
    this.fault = fault;
    this.ictxFile = ictxFile;
  }
  override read(_p: Process, count: number): Uint8Array | KernelError {
    return this.fault.read(count);
  }
  override write(_p: Process, bytes: Uint8Array): number | KernelError {
    return this.fault.write(bytes);
  }
  release(): void {
    this.fault.users--;
    this.fault.fileRefs--;
    this.ictxFile.put();
  }
}

export function faultQueueAllocIoctl(u: Ucmd, ictxFile: IommufdFile): number | KernelError {
  if (u.cmd['flags'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_FAULT_QUEUE_ALLOC: flags');
  const f = u.ctx.alloc(new FaultObject(u.ctx));
  if (!(f instanceof FaultObject)) return f;
  if (u.ctx.fail('anon_inode_getfile')) {
    u.ctx.abortAndDestroy(f);
    return kerr('ENOMEM', 'anon_inode_getfile: injected failure');
  }
  const file = new FaultFile(f, ictxFile);
  // The fd number is reserved first (get_unused_fd_flags) but installed last.
  const fd = u.p.installFd(file);
  const err = respond(u, { out_fault_id: f.id, out_fault_fd: fd });
  if (err) {
    u.p.close(fd);
    u.ctx.abortAndDestroy(f);
    return err;
  }
  f.users++;
  f.fileRefs++;
  ictxFile.get();
  u.ctx.finalize(f);
  return 0;
}

// ---- vIOMMU and vDEVICE ----------------------------------------------------------------------------

export class Viommu extends IommufdObject {
  readonly type = OBJ.VIOMMU;
  readonly hwpt: HwptPaging;
  readonly drv: IommuViommuDriverState;
  readonly driver: IommuDevice['driver'];
  readonly viommuType: number;
  readonly veventqs: import('./viommu.ts').Veventq[] = [];
  constructor(
    ctx: IommufdCtx,
    hwpt: HwptPaging,
    drv: IommuViommuDriverState,
    driver: IommuDevice['driver'],
    type: number,
  ) {
    super(ctx);
    this.hwpt = hwpt;
    this.drv = drv;
    this.driver = driver;
    this.viommuType = type;
  }
  /** The driver's mmap region (offset in the context's mmap space, and its pages). */
  mmapOffset = -1;
  mmapPfns: Int32Array | null = null;
  destroy(): void {
    if (this.mmapOffset >= 0) {
      this.ctx.mmapRegions.delete(this.mmapOffset);
      const phys = this.ctx.opener.host.phys;
      for (const pfn of this.mmapPfns!) phys.put(pfn);
      this.mmapOffset = -1;
    }
    this.drv.destroy?.();
    this.hwpt.users--;
  }
}

export function viommuAllocIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const type = c['type'] as number;
  if (c['flags'] !== 0 || type === 0) return kerr('EOPNOTSUPP', 'IOMMU_VIOMMU_ALLOC: flags or type DEFAULT');
  const idev = getDevice(u.ctx, c['dev_id'] as number);
  if (!(idev instanceof IommufdDevice)) return idev;
  const drv = idev.dev.driver;
  if (!drv.viommuAlloc || !(drv.viommuTypeSupported?.(idev.dev, type) ?? false))
    return kerr('EOPNOTSUPP', `the IOMMU has no vIOMMU of type 0x${type.toString(16)}`);
  const h = getHwptPaging(u.ctx, c['hwpt_id'] as number);
  if (!(h instanceof HwptPaging)) return h;
  if (!h.nestParent) return kerr('EINVAL', 'the HWPT is not a nesting parent');
  const dataLen = c['data_len'] as number;
  const data = dataLen ? userData(u.p, type, c['data_uptr'] as bigint, dataLen) : null;
  const state = drv.viommuAlloc(idev.dev, h.domain!, type, data);
  if (!('vdevs' in state)) return state;
  const v = u.ctx.alloc(new Viommu(u.ctx, h, state, drv, type));
  if (!(v instanceof Viommu)) {
    state.destroy?.();
    return v;
  }
  h.users++;
  if (state.mmapPages && state.mmapSetup) {
    const phys = u.p.host.phys;
    const base = phys.allocContig(state.mmapPages, 1);
    if (base === 0) {
      u.ctx.abortAndDestroy(v);
      return kerr('ENOMEM', 'vIOMMU mmap region: out of memory');
    }
    const pfns = new Int32Array(state.mmapPages).map((_, i) => base + i);
    v.mmapPfns = pfns;
    v.mmapOffset = u.ctx.allocMmap(v, pfns);
    state.mmapSetup((pa, b) => phys.write(pa, b), base * PAGE_SIZE, v.mmapOffset, pfns.length * PAGE_SIZE);
  }
  if (state.outData && dataLen) {
    const va = userPtr(c['data_uptr'] as bigint);
    const err = va < 0 ? kerr('EFAULT', 'bad data_uptr') : u.p.mm.copyToUser(va, state.outData);
    if (err) {
      u.ctx.abortAndDestroy(v);
      return err;
    }
  }
  const err = respond(u, { out_viommu_id: v.id });
  if (err) {
    u.ctx.abortAndDestroy(v);
    return err;
  }
  u.ctx.finalize(v);
  return 0;
}

export class Vdevice extends IommufdObject {
  readonly type = OBJ.VDEVICE;
  readonly viommu: Viommu;
  readonly idev: IommufdDevice;
  readonly virtId: bigint;
  constructor(ctx: IommufdCtx, viommu: Viommu, idev: IommufdDevice, virtId: bigint) {
    super(ctx);
    this.viommu = viommu;
    this.idev = idev;
    this.virtId = virtId;
  }
  destroy(): void {
    if (this.viommu.drv.vdevs.get(this.virtId) === this.idev.dev) this.viommu.drv.vdevs.delete(this.virtId);
    if (this.idev.vdev === this) this.idev.vdev = null;
    this.viommu.users--;
  }
}

export function vdeviceAllocIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const virtId = c['virt_id'] as bigint;
  if (virtId > ULONG_MAX) return kerr('EINVAL', 'virt_id too large');
  const v = u.ctx.get(c['viommu_id'] as number, OBJ.VIOMMU);
  if (!(v instanceof Viommu)) return v as KernelError;
  const idev = getDevice(u.ctx, c['dev_id'] as number);
  if (!(idev instanceof IommufdDevice)) return idev;
  if (idev.dev.driver !== v.driver) return kerr('EINVAL', 'the device is behind another IOMMU');
  if (idev.destroying) return kerr('ENOENT', 'the device is going away');
  if (idev.vdev) return kerr('EEXIST', 'the device already has a vDEVICE');
  const vd = u.ctx.alloc(new Vdevice(u.ctx, v, idev, virtId));
  if (!(vd instanceof Vdevice)) return vd;
  v.users++;
  if (v.drv.vdevs.has(virtId)) {
    u.ctx.abortAndDestroy(vd);
    return kerr('EEXIST', `virt_id 0x${virtId.toString(16)} is taken on this vIOMMU`);
  }
  v.drv.vdevs.set(virtId, idev.dev);
  idev.vdev = vd;
  const err = respond(u, { out_vdevice_id: vd.id });
  if (err) {
    u.ctx.abortAndDestroy(vd);
    return err;
  }
  u.ctx.finalize(vd);
  return 0;
}

export function assertHwpt(h: unknown): asserts h is HwPagetable {
  invariant(h instanceof HwPagetable, 'not a HWPT');
}

export type { IommuViommuDriverState };

function bigMax(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
