// Devices bound to an iommufd context and their attachments: the model of
// drivers/iommu/iommufd/device.c (research iommufd.md B.5–B.7). A bound device is an
// IOMMUFD_OBJ_DEVICE whose driver (VFIO or the selftest) holds a `users` reference until
// unbind. Per iommu_group and per PASID (the RID is IOMMU_NO_PASID), the context keeps which
// HWPT the group is attached to and which of its devices are in that attachment; every device
// in it holds a reference on the HWPT and on itself.
//
// attach: EBUSY if the device already has this PASID; EINVAL if another device of the group
// uses a different HWPT; PASID compatibility (B.7) is checked before the driver is called;
// attaching an IOAS picks (or makes) an auto-domain. replace: EINVAL unless attached; the
// same HWPT is a no-op; failure keeps the old attachment. detach: silent if not attached;
// auto-domains die with their last device.

import { type KernelError, kerr } from '../core/errno.ts';
import {
  IOMMU_NO_PASID,
  type IommuDevice,
  iommuAttachDevicePasid,
  iommuAttachGroup,
  iommuDetachDevicePasid,
  iommuDetachGroup,
  iommuDeviceClaimDmaOwner,
  iommuDeviceReleaseDmaOwner,
  iommuReplaceDevicePasid,
  iommuReplaceGroup,
} from '../iommu/core.ts';
import {
  findHwptPaging,
  HwPagetable,
  HwptPaging,
  hwptPagingAlloc,
  setAttachHooks,
  type Vdevice,
} from './hw_pagetable.ts';
import { Ioas } from './ioas.ts';
import { type IommufdCtx, type IommufdGroup, IommufdObject, OBJ } from './main.ts';

export class IommufdDevice extends IommufdObject {
  readonly type = OBJ.DEVICE;
  readonly dev: IommuDevice;
  readonly igroup: IommufdGroup;
  vdev: Vdevice | null = null;
  destroying = false;
  constructor(ctx: IommufdCtx, dev: IommuDevice, igroup: IommufdGroup) {
    super(ctx);
    this.dev = dev;
    this.igroup = igroup;
  }
  destroy(): void {
    this.destroying = true;
    if (this.vdev) removeVdevTombstone(this.vdev);
    iommuDeviceReleaseDmaOwner(this.dev);
    if (--this.igroup.users === 0) this.ctx.groups.delete(this.igroup.group);
  }
}

/** A destroyed vDEVICE's ID stays reserved (DESTROY gives ENOENT) until the context closes. */
function removeVdevTombstone(vd: Vdevice): void {
  const ctx = vd.ctx;
  vd.destroy();
  ctx.objects.delete(vd.id);
  ctx.tombstones.add(vd.id);
}

export function getDevice(ctx: IommufdCtx, id: number): IommufdDevice | KernelError {
  const o = ctx.get(id, OBJ.DEVICE);
  return o instanceof IommufdDevice ? o : (o as KernelError);
}

/** iommufd_device_bind: claim DMA ownership and make the DEVICE object. */
export function deviceBind(ctx: IommufdCtx, dev: IommuDevice): IommufdDevice | KernelError {
  if (!dev.driver.capable(dev, 'CACHE_COHERENCY')) return kerr('EINVAL', `${dev.name} is not cache coherent`);
  if (ctx.fail('iommufd_get_group')) return kerr('ENOMEM', 'iommufd_get_group: injected failure');
  const igroup = ctx.getGroup(dev.group);
  igroup.users++;
  const undoGroup = (): void => {
    if (--igroup.users === 0) ctx.groups.delete(igroup.group);
  };
  const err = iommuDeviceClaimDmaOwner(dev, ctx);
  if (err) {
    undoGroup();
    return err;
  }
  const idev = ctx.alloc(new IommufdDevice(ctx, dev, igroup));
  if (!(idev instanceof IommufdDevice)) {
    iommuDeviceReleaseDmaOwner(dev);
    undoGroup();
    return idev;
  }
  // The calling driver is a user until unbind.
  idev.users++;
  ctx.finalize(idev);
  return idev;
}

/** iommufd_device_unbind: everything must already be detached. */
export function deviceUnbind(idev: IommufdDevice): void {
  idev.users--;
  idev.ctx.removeObject(idev);
}

function isAttached(idev: IommufdDevice, pasid: number): boolean {
  return idev.igroup.pasidAttach.get(pasid)?.devices.has(idev.id) ?? false;
}

/** iommufd_hwpt_pasid_compat (B.7). */
function pasidCompat(h: HwPagetable, idev: IommufdDevice, pasid: number): KernelError | undefined {
  const ig = idev.igroup;
  if (pasid === IOMMU_NO_PASID) {
    if (!h.pasidCompat)
      for (const p of ig.pasidAttach.keys())
        if (p !== IOMMU_NO_PASID)
          return kerr('EINVAL', 'PASIDs of the group are attached: the RID needs a PASID-compatible HWPT');
    return undefined;
  }
  if (!h.pasidCompat) return kerr('EINVAL', `HWPT ${h.id} was not allocated with IOMMU_HWPT_ALLOC_PASID`);
  const rid = ig.pasidAttach.get(IOMMU_NO_PASID);
  if (rid && !rid.hwpt.pasidCompat)
    return kerr('EINVAL', 'the RID is attached to a HWPT that is not PASID-compatible');
  return undefined;
}

/** The attach handle iommufd gives the core (struct iommufd_attach_handle). */
interface AttachHandle {
  readonly idev: IommufdDevice;
  readonly hwpt: HwPagetable;
}

/** iommufd_hwpt_attach_device. */
function hwptAttachDevice(h: HwPagetable, idev: IommufdDevice, pasid: number): KernelError | undefined {
  const e = pasidCompat(h, idev, pasid);
  if (e) return e;
  if (idev.ctx.fail('iommufd_attach_handle')) return kerr('ENOMEM', 'attach handle allocation failed');
  const handle: AttachHandle = { idev, hwpt: h };
  if (pasid === IOMMU_NO_PASID) return iommuAttachGroup(h.domain!, idev.igroup.group, handle);
  return iommuAttachDevicePasid(h.domain!, idev.dev, pasid, handle);
}

function hwptDetachDevice(h: HwPagetable, idev: IommufdDevice, pasid: number): void {
  if (pasid === IOMMU_NO_PASID) iommuDetachGroup(idev.igroup.group);
  else iommuDetachDevicePasid(h.domain!, idev.dev, pasid);
  h.fault?.autoRespond(idev.dev, pasid);
}

/** iopt_table_enforce_dev_resv_regions for the RID: the device's reserved IOVA go into the IOAS. */
function attachReservedIova(idev: IommufdDevice, hp: HwptPaging): KernelError | undefined {
  if (idev.ctx.fail('iopt_table_enforce_dev_resv_regions'))
    return kerr('EINVAL', 'iopt_table_enforce_dev_resv_regions: injected failure');
  const regions = idev.dev.driver.getResvRegions?.(idev.dev) ?? [];
  for (const r of regions) {
    const err = hp.ioas.iopt.reserveIova(r.start, r.last, idev.dev);
    if (err) {
      hp.ioas.iopt.removeReservedIova(idev.dev);
      return err;
    }
  }
  return undefined;
}

/** iommufd_hw_pagetable_attach (the body of iommufd_device_do_attach). */
export function hwptAttach(idev: IommufdDevice, pasid: number, h: HwPagetable): KernelError | undefined {
  const ig = idev.igroup;
  let attach = ig.pasidAttach.get(pasid);
  const fresh = attach === undefined;
  if (fresh && idev.ctx.fail('iommufd_attach')) return kerr('ENOMEM', 'iommufd_attach allocation failed');
  const old = attach?.hwpt ?? null;
  if (attach?.devices.has(idev.id))
    return kerr('EBUSY', `device ${idev.id} is already attached at PASID ${pasid}`);
  if (old && old !== h) return kerr('EINVAL', 'another device of the group is attached to a different HWPT');
  const hp = pasid === IOMMU_NO_PASID ? findHwptPaging(h) : null;
  if (hp) {
    const err = attachReservedIova(idev, hp);
    if (err) return err;
  }
  if (!old) {
    const err = hwptAttachDevice(h, idev, pasid);
    if (err) {
      if (hp) hp.ioas.iopt.removeReservedIova(idev.dev);
      return err;
    }
    attach = { hwpt: h, devices: new Map() };
    ig.pasidAttach.set(pasid, attach);
  }
  h.users++;
  attach!.devices.set(idev.id, idev);
  return undefined;
}

/** iommufd_hw_pagetable_detach: returns the HWPT the device left, or null. */
export function hwptDetach(idev: IommufdDevice, pasid: number): HwPagetable | null {
  const ig = idev.igroup;
  const attach = ig.pasidAttach.get(pasid);
  if (!attach?.devices.delete(idev.id)) return null;
  const h = attach.hwpt;
  if (attach.devices.size === 0) {
    hwptDetachDevice(h, idev, pasid);
    ig.pasidAttach.delete(pasid);
  }
  if (pasid === IOMMU_NO_PASID && h instanceof HwPagetable)
    findHwptPaging(h).ioas.iopt.removeReservedIova(idev.dev);
  return h;
}

setAttachHooks(hwptAttach, (idev, pasid) => {
  hwptDetach(idev, pasid);
});

/** iommufd_hw_pagetable_put: auto-domains go away with their last user. */
function hwptPut(ctx: IommufdCtx, h: HwPagetable): void {
  if (h instanceof HwptPaging && h.autoDomain) ctx.putAndTryDestroy(h);
  else h.users--;
}

/** iommufd_device_do_replace: returns the HWPT left behind (the caller puts it), or null. */
function doReplace(idev: IommufdDevice, pasid: number, h: HwPagetable): HwPagetable | null | KernelError {
  const ig = idev.igroup;
  const attach = ig.pasidAttach.get(pasid);
  if (!attach) return kerr('EINVAL', `PASID ${pasid} is not attached: nothing to replace`);
  const old = attach.hwpt;
  if (!isAttached(idev, pasid)) return kerr('EINVAL', 'this device is not in the attachment');
  if (h === old) return null;
  const hp = pasid === IOMMU_NO_PASID ? findHwptPaging(h) : null;
  const oldHp = pasid === IOMMU_NO_PASID ? findHwptPaging(old) : null;
  const newIoas = hp && (!oldHp || oldHp.ioas !== hp.ioas);
  if (hp && newIoas) {
    for (const d of attach.devices.values()) {
      const err = attachReservedIova(d, hp);
      if (err) {
        for (const x of attach.devices.values()) hp.ioas.iopt.removeReservedIova(x.dev);
        return err;
      }
    }
  }
  const undoResv = (): void => {
    if (hp && newIoas) for (const x of attach.devices.values()) hp.ioas.iopt.removeReservedIova(x.dev);
  };
  const e = pasidCompat(h, idev, pasid);
  if (e) {
    undoResv();
    return e;
  }
  if (idev.ctx.fail('iommufd_attach_handle')) {
    undoResv();
    return kerr('ENOMEM', 'attach handle allocation failed');
  }
  const handle: AttachHandle = { idev, hwpt: h };
  const err =
    pasid === IOMMU_NO_PASID
      ? iommuReplaceGroup(h.domain!, ig.group, handle)
      : iommuReplaceDevicePasid(h.domain!, idev.dev, pasid, handle);
  if (err) {
    undoResv();
    return err;
  }
  old.fault?.autoRespond(idev.dev, pasid);
  if (oldHp && (!hp || hp.ioas !== oldHp.ioas))
    for (const x of attach.devices.values()) oldHp.ioas.iopt.removeReservedIova(x.dev);
  attach.hwpt = h;
  const n = attach.devices.size;
  h.users += n;
  if (n > 1) old.users -= n - 1;
  return old;
}

type DoFn = (idev: IommufdDevice, pasid: number, h: HwPagetable) => HwPagetable | null | KernelError;

const doAttach: DoFn = (idev, pasid, h) => hwptAttach(idev, pasid, h) ?? null;

/** iommufd_device_auto_get_domain: reuse a compatible auto-domain of the IOAS or make one. */
function autoGetDomain(
  idev: IommufdDevice,
  pasid: number,
  ioas: Ioas,
  ptId: { id: number },
  fn: DoFn,
): HwPagetable | null | KernelError {
  const immediate = fn === doAttach;
  for (const hp of [...ioas.hwptList]) {
    if (!hp.autoDomain) continue;
    const r = fn(idev, pasid, hp);
    if (r !== null && !(r instanceof HwPagetable)) {
      // EINVAL means "incompatible, try the next one"; anything else is final.
      if (r.code === 'EINVAL') continue;
      return r;
    }
    ptId.id = hp.id;
    return r;
  }
  const hp = hwptPagingAlloc(idev.ctx, ioas, idev, pasid, 0, immediate, null);
  if (!(hp instanceof HwptPaging)) return hp;
  let r: HwPagetable | null | KernelError = null;
  if (!immediate) {
    r = fn(idev, pasid, hp);
    if (r !== null && !(r instanceof HwPagetable)) {
      idev.ctx.abortAndDestroy(hp);
      return r;
    }
  }
  hp.autoDomain = true;
  ptId.id = hp.id;
  idev.ctx.finalize(hp);
  return r;
}

/** iommufd_device_change_pt. */
function changePt(
  idev: IommufdDevice,
  pasid: number,
  ptId: { id: number },
  fn: DoFn,
): KernelError | undefined {
  const pt = idev.ctx.get(ptId.id, 'ANY');
  if (!(pt instanceof IommufdObject)) return pt;
  let r: HwPagetable | null | KernelError;
  if (pt instanceof HwPagetable) r = fn(idev, pasid, pt);
  else if (pt instanceof Ioas) {
    if (pasid !== IOMMU_NO_PASID) {
      // Auto-domains are never PASID-compatible (B.7).
      return kerr('EINVAL', 'an IOAS cannot be attached to a PASID');
    }
    r = autoGetDomain(idev, pasid, pt, ptId, fn);
  } else return kerr('EINVAL', `object ${pt.id} (${pt.type}) cannot be attached`);
  if (r !== null && !(r instanceof HwPagetable)) return r;
  if (r) hwptPut(idev.ctx, r);
  return undefined;
}

/** iommufd_device_attach: on success `ptId.id` is the HWPT actually attached. */
export function deviceAttach(
  idev: IommufdDevice,
  pasid: number,
  ptId: { id: number },
): KernelError | undefined {
  const err = changePt(idev, pasid, ptId, doAttach);
  if (err) return err;
  idev.users++;
  return undefined;
}

export function deviceReplace(
  idev: IommufdDevice,
  pasid: number,
  ptId: { id: number },
): KernelError | undefined {
  return changePt(idev, pasid, ptId, doReplace);
}

export function deviceDetach(idev: IommufdDevice, pasid: number): void {
  const h = hwptDetach(idev, pasid);
  if (!h) return;
  hwptPut(idev.ctx, h);
  idev.users--;
}

/** The HWPT attached at `pasid` for this device's group, if any. */
export function attachedHwpt(idev: IommufdDevice, pasid: number): HwPagetable | null {
  return idev.igroup.pasidAttach.get(pasid)?.hwpt ?? null;
}
