// The ioctl engine: the one entry point through which the library's typed calls, the scenario
// runner and the wire server reach iommufd (WIRE.md). `ioctl(process, fd, request, argBytes)`
// behaves like ioctl(2) on the process's file: /dev/iommu contexts go through the generic
// validation of research A.0 (iommufdIoctlCheck) once, then to a typed handler; VFIO device
// files take VFIO_DEVICE_BIND/ATTACH/DETACH (A.22). The argument bytes come back as the kernel
// left them, on failure too where the kernel writes results back.
//
// The host (IommufdHost) is the emulated kernel the processes run on: physical memory, the
// per-uid accounts, the mock IOMMU driver (CONFIG_IOMMUFD_TEST), the emulated machine's
// devices behind /dev/vfio/devices/vfioN, fault injection and the debug-mode invariant checks.

import { type KernelError, kerr } from '../core/errno.ts';
import { FaultInjector } from '../core/fault.ts';
import { debugEnabled, invariant } from '../core/invariants.ts';
import { IOMMU_NO_PASID, type IommuDevice, type IommuDomain, iommuIovaToPhys } from '../iommu/core.ts';
import { MockIommuDriver } from '../iommu/mock.ts';
import { checkUsersGraph } from './check.ts';
import {
  deviceAttach,
  deviceBind,
  deviceDetach,
  deviceReplace,
  deviceUnbind,
  IommufdDevice,
} from './device.ts';
import {
  faultQueueAllocIoctl,
  getDirtyBitmapIoctl,
  getHwInfoIoctl,
  type HwptPaging,
  hwptAllocIoctl,
  hwptInvalidateIoctl,
  setDirtyTrackingIoctl,
  vdeviceAllocIoctl,
  viommuAllocIoctl,
} from './hw_pagetable.ts';
import {
  destroyIoctl,
  Ioas,
  ioasAlloc,
  ioasAllowIovas,
  ioasChangeProcess,
  ioasCopy,
  ioasIovaRanges,
  ioasMap,
  ioasMapFile,
  ioasOption,
  ioasUnmap,
  vfioIoas,
} from './ioas.ts';
import { IommufdCtx, IommufdFile } from './main.ts';
import { sourceOf } from './pages.ts';
import { KFile, PhysMem, Process, type ProcessHost, UserAccount } from './process.ts';
import { testCmdIoctl } from './selftest.ts';
import {
  build,
  copyToUser,
  decodeAny,
  IOCTLS,
  type IoctlName,
  ioctlByCmd,
  iommufdIoctlCheck,
  type UapiObject,
  unknownIoctl,
  vfioAttachIommufdPtCheck,
  vfioBindIommufdCheck,
  vfioDetachIommufdPtCheck,
} from './uapi/index.ts';
import { makeUcmd, type Ucmd } from './ucmd.ts';
import { vfioCompatIoctl } from './vfio_compat.ts';
import { hwQueueAllocIoctl, veventqAllocIoctl } from './viommu.ts';

export interface IoctlResult {
  /** The return value: >= 0 on success, -errno on failure. */
  readonly ret: number;
  /** The argument bytes as the kernel left them (same length as given). */
  readonly arg: Uint8Array;
  /** The error, for messages. */
  readonly error?: KernelError;
}

export interface IommufdHostOptions {
  /** CONFIG_IOMMUFD_TEST: IOMMU_TEST_CMD and the mock devices (default true). */
  readonly testCmd?: boolean;
  readonly version?: 'newest' | 'v6.8';
  /** Devices of the emulated machine, in machine order (/dev/vfio/devices/vfioN). */
  readonly devices?: readonly IommuDevice[];
  /** How many mock devices to expose as VFIO devices when `devices` is not given. */
  readonly mockVfioDevices?: number;
  readonly faults?: FaultInjector;
  /**
   * The host's page pool (default: a standalone PhysMem). A machine passes one backed by its
   * physical memory, shared with its IOMMU driver, so that device DMA reaches user pages.
   */
  readonly phys?: PhysMem;
  /** More debug-mode checks to run after every ioctl (the IOMMU driver's and the hardware's). */
  readonly checkInvariants?: () => void;
}

type Handler = (u: Ucmd, file: IommufdFile) => number | KernelError;

export class IommufdHost implements ProcessHost {
  readonly phys: PhysMem;
  readonly faults: FaultInjector;
  private readonly extraChecks: (() => void) | null;
  readonly testCmd: boolean;
  readonly version: 'newest' | 'v6.8';
  readonly mock: MockIommuDriver;
  readonly devices: IommuDevice[];
  private readonly users = new Map<number, UserAccount>();
  private pid = 1;
  /** Every context ever opened that is still alive (for leak checks). */
  readonly contexts = new Set<IommufdCtx>();
  private readonly handlers: Map<number, Handler>;
  /** iommufdIoctlCheck's options, made once rather than per ioctl. */
  readonly checkOpts: { readonly testCmd: boolean };

  constructor(opts: IommufdHostOptions = {}) {
    this.faults = opts.faults ?? new FaultInjector();
    this.phys = opts.phys ?? new PhysMem();
    this.extraChecks = opts.checkInvariants ?? null;
    this.testCmd = opts.testCmd ?? true;
    this.version = opts.version ?? 'newest';
    this.checkOpts = { testCmd: this.testCmd };
    this.mock = new MockIommuDriver(this.faults);
    if (opts.devices) this.devices = [...opts.devices];
    else {
      this.devices = [];
      for (let i = 0; i < (opts.mockVfioDevices ?? 2); i++) {
        const d = this.mock.createDevice(4);
        invariant('driver' in d, 'mock device creation');
        this.devices.push(d);
      }
    }
    const drv = this.mock;
    const I = IOCTLS;
    this.handlers = new Map<number, Handler>([
      [I.IOMMU_DESTROY.cmd, destroyIoctl],
      [I.IOMMU_IOAS_ALLOC.cmd, ioasAlloc],
      [I.IOMMU_IOAS_ALLOW_IOVAS.cmd, ioasAllowIovas],
      [I.IOMMU_IOAS_COPY.cmd, ioasCopy],
      [I.IOMMU_IOAS_IOVA_RANGES.cmd, ioasIovaRanges],
      [I.IOMMU_IOAS_MAP.cmd, ioasMap],
      [I.IOMMU_IOAS_UNMAP.cmd, ioasUnmap],
      [I.IOMMU_OPTION.cmd, ioasOption],
      [I.IOMMU_VFIO_IOAS.cmd, vfioIoas],
      [I.IOMMU_HWPT_ALLOC.cmd, hwptAllocIoctl],
      [I.IOMMU_GET_HW_INFO.cmd, getHwInfoIoctl],
      [I.IOMMU_HWPT_SET_DIRTY_TRACKING.cmd, setDirtyTrackingIoctl],
      [I.IOMMU_HWPT_GET_DIRTY_BITMAP.cmd, getDirtyBitmapIoctl],
      [I.IOMMU_HWPT_INVALIDATE.cmd, hwptInvalidateIoctl],
      [I.IOMMU_FAULT_QUEUE_ALLOC.cmd, (u, f) => faultQueueAllocIoctl(u, f)],
      [I.IOMMU_IOAS_MAP_FILE.cmd, ioasMapFile],
      [I.IOMMU_VIOMMU_ALLOC.cmd, viommuAllocIoctl],
      [I.IOMMU_VDEVICE_ALLOC.cmd, vdeviceAllocIoctl],
      [I.IOMMU_IOAS_CHANGE_PROCESS.cmd, ioasChangeProcess],
      [I.IOMMU_VEVENTQ_ALLOC.cmd, (u, f) => veventqAllocIoctl(u, f)],
      [I.IOMMU_HW_QUEUE_ALLOC.cmd, hwQueueAllocIoctl],
      [I.IOMMU_TEST_CMD.cmd, (u, f) => testCmdIoctl(u, drv, f)],
    ]);
  }

  nextPid(): number {
    return this.pid++;
  }

  user(uid: number): UserAccount {
    let u = this.users.get(uid);
    if (!u) {
      u = new UserAccount(uid);
      this.users.set(uid, u);
    }
    return u;
  }

  /** A new process (root by default, as the kernel selftests run). */
  spawn(opts: { privileged?: boolean; uid?: number } = {}): Process {
    return new Process(this, opts);
  }

  openPath(p: Process, path: string): KFile | KernelError {
    if (path === '/dev/iommu') {
      if (this.faults.armed && this.faults.shouldFail('iommufd_fops_open'))
        return kerr('ENOMEM', 'open: injected failure');
      const ctx = new IommufdCtx(this, p);
      this.contexts.add(ctx);
      return new IommufdFile(ctx);
    }
    const m = /^\/dev\/vfio\/devices\/vfio(\d+)$/.exec(path);
    if (m) {
      const dev = this.devices[Number(m[1])];
      if (!dev) return kerr('ENOENT', `${path}: no such device`);
      return new VfioDeviceFile(dev);
    }
    return kerr('ENOENT', `${path}: no such file`);
  }

  /** The handler table entry for an iommufd request number. */
  handler(cmd: number): Handler | undefined {
    return this.handlers.get(cmd >>> 0);
  }

  /** Debug mode: every model invariant of research G, after each ioctl. */
  checkInvariants(): void {
    for (const ctx of this.contexts) {
      if (ctx.closed) {
        this.contexts.delete(ctx);
        continue;
      }
      ctx.checkInvariants();
      checkUsersGraph(ctx);
      for (const o of ctx.objects.values()) {
        if (o instanceof Ioas) {
          o.iopt.checkInvariants();
          checkDomainsMirror(o);
        }
      }
    }
    this.extraChecks?.();
  }
}

/** Every committed area is mapped in every domain of its IOAS, page by page, onto its pinned pages. */
function checkDomainsMirror(ioas: Ioas): void {
  const doms = ioas.iopt.domains;
  if (doms.length === 0) return;
  for (const a of ioas.iopt.areas()) {
    if (!a.committed) continue;
    const s = sourceOf(a.pages);
    if (s.dmabuf?.revoked) continue;
    const len = Number(a.length);
    // Every CPU page of small areas, and a stride through big ones (plus the last byte), so
    // the check stays cheap enough to run after every ioctl.
    const npages = Math.ceil(len / 4096);
    const stride = npages <= 1024 ? 4096 : 4096 * Math.ceil(npages / 256);
    const offs: number[] = [];
    for (let off = 0; off < len; off += stride) offs.push(off);
    offs.push(len - 1);
    for (const off of offs) {
      const byte = Number(a.startByte) + off;
      const pfn = s.pfns[Math.floor(byte / 4096)] ?? 0;
      invariant(pfn !== 0, 'iommufd: an area mirrored in a domain has its pages pinned');
      for (const d of doms) {
        const dom = d as IommuDomain;
        if (!dom.ops.iovaToPhys) continue;
        const pa = iommuIovaToPhys(dom, Number(a.iova) + off);
        invariant(
          pa === pfn * 4096 + (byte % 4096),
          'iommufd: every area is mirrored in every domain of its IOAS',
        );
      }
    }
  }
}

/** A VFIO device cdev (/dev/vfio/devices/vfioN) and its iommufd binding (drivers/vfio/iommufd.c). */
export class VfioDeviceFile extends KFile {
  readonly kind = 'vfio-device';
  readonly dev: IommuDevice;
  idev: IommufdDevice | null = null;
  ictxFile: IommufdFile | null = null;
  ridAttached = false;
  readonly pasids = new Set<number>();
  constructor(dev: IommuDevice) {
    super();
    this.dev = dev;
  }
  release(): void {
    this.unbind();
  }
  unbind(): void {
    const idev = this.idev;
    if (!idev) return;
    for (const p of this.pasids) deviceDetach(idev, p);
    this.pasids.clear();
    if (this.ridAttached) deviceDetach(idev, IOMMU_NO_PASID);
    this.ridAttached = false;
    deviceUnbind(idev);
    this.idev = null;
    this.ictxFile?.put();
    this.ictxFile = null;
  }
}

function vfioDeviceIoctl(
  p: Process,
  f: VfioDeviceFile,
  cmd: number,
  arg: Uint8Array | null,
): number | KernelError {
  const I = IOCTLS;
  if (cmd === I.VFIO_DEVICE_BIND_IOMMUFD.cmd) {
    const r = vfioBindIommufdCheck(arg);
    if (!('args' in r)) return r;
    if (f.idev) return kerr('EINVAL', 'the device is already bound');
    const icf = p.file(r.args.iommufd);
    if (!(icf instanceof KFile)) return kerr('EBADF', `fd ${r.args.iommufd} is not open`);
    if (!(icf instanceof IommufdFile)) return kerr('EBADFD', `fd ${r.args.iommufd} is not an iommufd`);
    const idev = deviceBind(icf.ctx, f.dev);
    if (!(idev instanceof IommufdDevice)) return idev;
    f.idev = idev;
    f.ictxFile = icf;
    icf.get();
    const out = new Uint8Array(4);
    new DataView(out.buffer).setUint32(0, idev.id, true);
    const err = copyToUser(arg, 12, out);
    if (err) {
      f.unbind();
      return err;
    }
    return 0;
  }
  if (cmd === I.VFIO_DEVICE_ATTACH_IOMMUFD_PT.cmd) {
    if (!f.idev) return kerr('EINVAL', 'the device is not bound to an iommufd');
    const r = vfioAttachIommufdPtCheck(arg, { pasidSupported: true });
    if (!('args' in r)) return r;
    const idev = f.idev;
    const pt = { id: r.args.pt_id };
    if (r.args.flags & 1) {
      const pasid = r.args.pasid;
      if (f.pasids.has(pasid)) {
        const e = deviceReplace(idev, pasid, pt);
        if (e) return e;
      } else {
        const e = deviceAttach(idev, pasid, pt);
        if (e) return e;
        f.pasids.add(pasid);
      }
    } else {
      const e = f.ridAttached
        ? deviceReplace(idev, IOMMU_NO_PASID, pt)
        : deviceAttach(idev, IOMMU_NO_PASID, pt);
      if (e) return e;
      f.ridAttached = true;
    }
    const out = new Uint8Array(4);
    new DataView(out.buffer).setUint32(0, pt.id, true);
    return copyToUser(arg, 8, out) ?? 0;
  }
  if (cmd === I.VFIO_DEVICE_DETACH_IOMMUFD_PT.cmd) {
    if (!f.idev) return kerr('EINVAL', 'the device is not bound to an iommufd');
    const r = vfioDetachIommufdPtCheck(arg, { pasidSupported: true });
    if (!('args' in r)) return r;
    if (r.args.flags & 1) {
      if (f.pasids.delete(r.args.pasid)) deviceDetach(f.idev, r.args.pasid);
    } else if (f.ridAttached) {
      deviceDetach(f.idev, IOMMU_NO_PASID);
      f.ridAttached = false;
    }
    return 0;
  }
  return unknownIoctl(cmd);
}

function iommufdFileIoctl(
  host: IommufdHost,
  p: Process,
  f: IommufdFile,
  cmd: number,
  arg: Uint8Array | null,
): number | KernelError {
  const chk = iommufdIoctlCheck(cmd, arg, host.checkOpts);
  if (chk.kind === 'compat') return vfioCompatIoctl(p, f.ctx, cmd, arg);
  if (chk.kind === 'error') return chk.error;
  const h = host.handler(chk.ioctl.cmd);
  if (!h) return unknownIoctl(cmd);
  const u = makeUcmd(p, f.ctx, chk.struct, chk.kbuf, arg ?? new Uint8Array(0), chk.userSize);
  return h(u, f);
}

/**
 * ioctl(2) on `fd` of `p` with the argument bytes the pointer points at (null: a pointer that
 * faults, such as NULL). The bytes are not modified; the result carries the written-back copy.
 */
export function ioctl(p: Process, fd: number, request: number, argBytes: Uint8Array | null): IoctlResult {
  const arg = argBytes ? argBytes.slice() : null;
  const r = ioctlCall(p, fd, request, arg);
  const out = arg ?? new Uint8Array(0);
  if (typeof r === 'number') return { ret: r, arg: out };
  return { ret: -r.errno, arg: out, error: r };
}

/**
 * ioctl(2) whose argument bytes are `arg` itself: the kernel's write-back lands in it, as in the
 * user memory a real ioctl writes to. For a caller that owns a copy already (the wire server),
 * so that the bytes are not copied twice and no result object is made; the return value is
 * `ret` (>= 0, or -errno).
 */
export function ioctlInPlace(p: Process, fd: number, request: number, arg: Uint8Array | null): number {
  const r = ioctlCall(p, fd, request, arg);
  return typeof r === 'number' ? r : -r.errno;
}

function ioctlCall(p: Process, fd: number, request: number, arg: Uint8Array | null): number | KernelError {
  const host = p.host as IommufdHost;
  const f = p.file(fd);
  let r: number | KernelError;
  if (!(f instanceof KFile)) r = f;
  else if (f instanceof IommufdFile) r = iommufdFileIoctl(host, p, f, request >>> 0, arg);
  else if (f instanceof VfioDeviceFile) r = vfioDeviceIoctl(p, f, request >>> 0, arg);
  else r = kerr('ENOTTY', `ioctl on a ${f.kind} file`);
  if (debugEnabled()) host.checkInvariants();
  return r;
}

/**
 * ioctl(2) with a raw argument value: an integer argument (VFIO_CHECK_EXTENSION,
 * VFIO_SET_IOMMU), or a pointer into the process's own memory, which is read from there and
 * written back there (any other address faults, as copy_from_user would).
 */
export function ioctlValue(p: Process, fd: number, request: number, raw: bigint): IoctlResult {
  const def = ioctlByCmd(request >>> 0);
  const f = p.file(fd);
  if (def && def.struct === null && f instanceof IommufdFile) {
    const host = p.host as IommufdHost;
    const r = vfioCompatIoctl(p, f.ctx, request >>> 0, null, raw);
    if (debugEnabled()) host.checkInvariants();
    return typeof r === 'number'
      ? { ret: r, arg: new Uint8Array(0) }
      : { ret: -r.errno, arg: new Uint8Array(0), error: r };
  }
  if (raw === 0n || raw > BigInt(Number.MAX_SAFE_INTEGER)) return ioctl(p, fd, request, null);
  const va = Number(raw);
  const before = p.mm.readablePrefix(va, 1 << 20);
  const res = ioctl(p, fd, request, before.length ? before : null);
  // Write back what the kernel changed, byte for byte.
  for (let i = 0; i < before.length; i++) {
    if (res.arg[i] !== before[i]) {
      let j = i;
      while (j < before.length && res.arg[j] !== before[j]) j++;
      p.mm.copyToUser(va + i, res.arg.subarray(i, j));
      i = j;
    }
  }
  return res;
}

/**
 * The typed form of `ioctl` for library callers and the scenario runner: an ioctl by name
 * with its struct given as fields (the size field defaults to sizeof, as SCENARIO.md says),
 * returning the struct as the kernel left it, decoded.
 */
export function ioctlStruct(
  p: Process,
  fd: number,
  name: IoctlName,
  fields: Readonly<Record<string, unknown>> = {},
): IoctlResult & { readonly out: UapiObject } {
  const def = IOCTLS[name];
  if (def.struct === null) {
    const raw = fields['arg'];
    const r = ioctlValue(
      p,
      fd,
      def.cmd,
      typeof raw === 'bigint' ? raw : BigInt((raw as number | undefined) ?? 0),
    );
    return { ...r, out: {} };
  }
  const r = ioctl(p, fd, def.cmd, build(def.struct, fields));
  return { ...r, out: decodeAny(def.struct, r.arg) };
}

/** The domain of a paging HWPT (for tests and scenario inspection). */
export function hwptDomain(h: HwptPaging) {
  return h.domain;
}
