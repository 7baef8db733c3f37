// The generic part of every iommufd ioctl, before any handler runs: research iommufd.md A.0
// (iommufd_fops_ioctl in drivers/iommu/iommufd/main.c) and the size rules of the VFIO cdev
// ioctls (A.22, drivers/vfio/device_cdev.c). The outcome order is the kernel's:
//   1. nr outside the iommufd table        → the VFIO compat handler (ENOTTY for what it lacks)
//   2. get_user(size) faults               → EFAULT
//   3. hole in the table / other encoding  → ENOTTY (-ENOIOCTLCMD as userspace sees it)
//   4. size < min_size                     → EINVAL
//   5. copy_struct_from_user: bytes past sizeof must be zero → E2BIG, a fault there or in the
//      copied head → EFAULT; a shorter user struct is zero-extended.
//
// User memory is modelled as the bytes readable at the argument pointer: `null` is an address
// that faults outright (NULL), and reading past the end of the array faults. Only the bytes the
// kernel itself reads are read, so a byte the kernel would not touch can never change an outcome.

import { type KernelError, kerr } from '../../core/errno.ts';
import { _IOC_NR, IOMMUFD_CMD_BASE } from './ioc.ts';
import { type IoctlDef, iommufdOpTable } from './ioctls.ts';
import { type DecodedStruct, decode, fieldSize, offsetof, type StructDef } from './layout.ts';
import {
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_detach_iommufd_pt,
} from './structs.ts';

/** The readable user bytes at an ioctl's argument pointer; null for a pointer that faults. */
export type UserArg = Uint8Array | null;

function fault(what: string): KernelError {
  return kerr('EFAULT', `${what}: bad user address`);
}

/** get_user() of a u32 at `off`. */
export function getUserU32(arg: UserArg, off: number, what = 'get_user'): number | KernelError {
  if (arg === null || off < 0 || off + 4 > arg.length) return fault(what);
  return (arg[off]! | (arg[off + 1]! << 8) | (arg[off + 2]! << 16) | (arg[off + 3]! << 24)) >>> 0;
}

/** copy_from_user() of `len` bytes at `off`; all or nothing. */
export function copyFromUser(
  arg: UserArg,
  off: number,
  len: number,
  what = 'copy_from_user',
): Uint8Array | KernelError {
  if (len === 0) return new Uint8Array(0);
  if (arg === null || off < 0 || off + len > arg.length) return fault(what);
  return arg.slice(off, off + len);
}

/**
 * copy_to_user() of `src` at `off`. Like the kernel it copies what it can before the fault and
 * then reports EFAULT, so a short user buffer still receives the leading bytes.
 */
export function copyToUser(
  arg: UserArg,
  off: number,
  src: Uint8Array,
  what = 'copy_to_user',
): KernelError | undefined {
  if (src.length === 0) return undefined;
  if (arg === null || off < 0) return fault(what);
  const room = Math.max(0, Math.min(src.length, arg.length - off));
  arg.set(src.subarray(0, room), off);
  return room < src.length ? fault(what) : undefined;
}

/**
 * copy_struct_from_user(dst, ksize, src, usize) (include/linux/uaccess.h): the trailing bytes
 * [ksize, usize) are checked first (non-zero → E2BIG, fault → EFAULT), then the common prefix
 * is copied (fault → EFAULT). The result is always ksize bytes, zero-extended.
 */
export function copyStructFromUser(ksize: number, arg: UserArg, usize: number): Uint8Array | KernelError {
  const size = Math.min(ksize, usize);
  if (usize > ksize) {
    // check_zeroed_user reads in order; a non-zero byte seen before the fault wins.
    if (arg === null) return fault('copy_struct_from_user');
    for (let i = ksize; i < usize; i++) {
      if (i >= arg.length) return fault('copy_struct_from_user');
      if (arg[i] !== 0)
        return kerr('E2BIG', `non-zero byte at offset ${i}, past the ${ksize}-byte struct the kernel knows`);
    }
  }
  // The common prefix, all or nothing (copy_from_user); copied by hand because the structs are
  // a few dozen bytes, where a slice and a TypedArray.set cost more than the copy.
  if (size > 0 && (arg === null || size > arg.length)) return fault('copy_struct_from_user');
  const k = new Uint8Array(ksize);
  for (let i = 0; i < size; i++) k[i] = arg![i]!;
  return k;
}

export type IommufdIoctlCheck =
  /** Not an iommufd table number: iommufd_vfio_ioctl() takes it (and answers ENOTTY if unknown). */
  | { readonly kind: 'compat' }
  | { readonly kind: 'error'; readonly error: KernelError }
  | {
      readonly kind: 'ok';
      readonly ioctl: IoctlDef;
      readonly struct: StructDef;
      /** The user's `size`: write-back is limited to it (iommufd_ucmd_respond). */
      readonly userSize: number;
      /** The kernel's copy: sizeof bytes, zero-extended. */
      readonly kbuf: Uint8Array;
    };

const TABLES = new Map<boolean, readonly (IoctlDef | undefined)[]>();
function opTable(testCmd: boolean): readonly (IoctlDef | undefined)[] {
  let t = TABLES.get(testCmd);
  if (!t) TABLES.set(testCmd, (t = iommufdOpTable(testCmd)));
  return t;
}

/**
 * The generic validation of an ioctl on /dev/iommu, in the kernel's order (A.0). `testCmd` is
 * CONFIG_IOMMUFD_TEST: it makes the table long enough to reach IOMMU_TEST_CMD, which also turns
 * the numbers between the last real ioctl and it into holes (EFAULT/ENOTTY) instead of compat.
 */
export function iommufdIoctlCheck(cmd: number, arg: UserArg, opts: { testCmd: boolean }): IommufdIoctlCheck {
  const ucmd = cmd >>> 0;
  const table = opTable(opts.testCmd);
  const nr = _IOC_NR(ucmd);
  if (nr < IOMMUFD_CMD_BASE || nr - IOMMUFD_CMD_BASE >= table.length) return { kind: 'compat' };

  const userSize = getUserU32(arg, 0, 'get_user(size)');
  if (typeof userSize !== 'number') return { kind: 'error', error: userSize };

  const op = table[nr - IOMMUFD_CMD_BASE];
  if (op === undefined || op.cmd !== ucmd || op.struct === null) {
    return { kind: 'error', error: unknownIoctl(ucmd) };
  }
  const s = op.struct;
  if (userSize < s.minSize) {
    return {
      kind: 'error',
      error: kerr(
        'EINVAL',
        `${op.name}: size ${userSize} is below the minimum ${s.minSize} (offsetofend ${s.minField})`,
      ),
    };
  }
  const kbuf = copyStructFromUser(s.size, arg, userSize);
  if (!(kbuf instanceof Uint8Array)) return { kind: 'error', error: kbuf };
  return { kind: 'ok', ioctl: op, struct: s, userSize, kbuf };
}

/** What userspace gets for an ioctl number nobody handles (-ENOIOCTLCMD becomes ENOTTY). */
export function unknownIoctl(cmd: number): KernelError {
  return kerr('ENOTTY', `ioctl 0x${(cmd >>> 0).toString(16)} is not supported`);
}

/**
 * iommufd_ucmd_respond(): copy the kernel's struct back, `min(user_size, len)` bytes; the rest
 * of the user's buffer is left as it was.
 */
export function ucmdRespond(
  arg: UserArg,
  kbuf: Uint8Array,
  userSize: number,
  len: number = kbuf.length,
): KernelError | undefined {
  // copy_to_user of kbuf[0, n) at 0, written out by hand (see copyStructFromUser).
  const n = Math.min(userSize, len, kbuf.length);
  if (n <= 0) return undefined;
  if (arg === null) return fault('iommufd_ucmd_respond');
  const room = Math.min(n, arg.length);
  for (let i = 0; i < room; i++) arg[i] = kbuf[i]!;
  return room < n ? fault('iommufd_ucmd_respond') : undefined;
}

/** copy_to_user of one field of the kernel's struct, as IOMMU_OPTION (val64) and others do. */
export function respondField(
  arg: UserArg,
  s: StructDef,
  field: string,
  kbuf: Uint8Array,
): KernelError | undefined {
  const off = offsetof(s, field);
  const f = s.fields.find((x) => x.name === field);
  const len = f ? fieldSize(f) : 0;
  return copyToUser(arg, off, kbuf.subarray(off, off + len), `copy_to_user(${s.name}.${field})`);
}

// ---- VFIO cdev ioctls (A.22) -------------------------------------------------------------------

export interface VfioChecked<S extends StructDef> {
  readonly kbuf: Uint8Array;
  readonly args: DecodedStruct<S>;
}

const BIND_MINSZ = 16; // offsetofend(struct vfio_device_bind_iommufd, out_devid)

/**
 * VFIO_DEVICE_BIND_IOMMUFD up to the point where the device state matters
 * (vfio_df_ioctl_bind_iommufd). The upstream fix "vfio: Fix ksize arg while copying user struct
 * in vfio_df_ioctl_bind_iommufd()" copies sizeof(bind) (24), so token_uuid_ptr is read when
 * argsz covers it and bytes past 24 must be zero.
 */
export function vfioBindIommufdCheck(
  arg: UserArg,
): VfioChecked<typeof vfio_device_bind_iommufd> | KernelError {
  const s = vfio_device_bind_iommufd;
  const argsz = getUserU32(arg, 0, 'get_user(argsz)');
  if (typeof argsz !== 'number') return argsz;
  if (argsz < BIND_MINSZ) return kerr('EINVAL', `VFIO_DEVICE_BIND_IOMMUFD: argsz ${argsz} < ${BIND_MINSZ}`);
  const kbuf = copyStructFromUser(s.size, arg, argsz);
  if (!(kbuf instanceof Uint8Array)) return kbuf;
  const args = decode(s, kbuf);
  if (args.iommufd < 0)
    return kerr('EINVAL', `VFIO_DEVICE_BIND_IOMMUFD: iommufd ${args.iommufd} is negative`);
  if ((args.flags & ~(s.masks['flags'] ?? 0)) !== 0) {
    return kerr('EINVAL', `VFIO_DEVICE_BIND_IOMMUFD: unknown flags 0x${args.flags.toString(16)}`);
  }
  return { kbuf, args };
}

/**
 * The VFIO "xend" rule shared by attach and detach: the fixed head is always read, and the
 * PASID flag extends the struct by its `pasid` field, which argsz must then cover.
 * `pasidSupported` is whether the device driver has pasid_attach_ioas/pasid_detach_ioas.
 */
function vfioPasidStructCheck<S extends StructDef>(
  name: string,
  s: S,
  minField: string,
  arg: UserArg,
  pasidSupported: boolean,
): VfioChecked<S> | KernelError {
  const minsz = offsetof(s, minField) + 4;
  const head = copyFromUser(arg, 0, minsz, `${name} copy_from_user`);
  if (!(head instanceof Uint8Array)) return head;
  const kbuf = new Uint8Array(s.size);
  kbuf.set(head);
  const fixed = decode(s, kbuf) as unknown as { argsz: number; flags: number };
  if (fixed.argsz < minsz) return kerr('EINVAL', `${name}: argsz ${fixed.argsz} < ${minsz}`);
  const PASID = 1;
  if ((fixed.flags & ~PASID) !== 0)
    return kerr('EINVAL', `${name}: unknown flags 0x${fixed.flags.toString(16)}`);
  if (fixed.flags & PASID) {
    if (!pasidSupported) return kerr('EOPNOTSUPP', `${name}: the device driver has no PASID support`);
    const xend = offsetof(s, 'pasid') + 4;
    if (fixed.argsz < xend)
      return kerr('EINVAL', `${name}: argsz ${fixed.argsz} < ${xend} with the PASID flag`);
    const ext = copyFromUser(arg, minsz, xend - minsz, `${name} copy_from_user(pasid)`);
    if (!(ext instanceof Uint8Array)) return ext;
    kbuf.set(ext, minsz);
  }
  return { kbuf, args: decode(s, kbuf) };
}

/** VFIO_DEVICE_ATTACH_IOMMUFD_PT's argument rules (vfio_df_ioctl_attach_pt). */
export function vfioAttachIommufdPtCheck(
  arg: UserArg,
  opts: { pasidSupported: boolean },
): VfioChecked<typeof vfio_device_attach_iommufd_pt> | KernelError {
  return vfioPasidStructCheck(
    'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
    vfio_device_attach_iommufd_pt,
    'pt_id',
    arg,
    opts.pasidSupported,
  );
}

/** VFIO_DEVICE_DETACH_IOMMUFD_PT's argument rules (vfio_df_ioctl_detach_pt). */
export function vfioDetachIommufdPtCheck(
  arg: UserArg,
  opts: { pasidSupported: boolean },
): VfioChecked<typeof vfio_device_detach_iommufd_pt> | KernelError {
  return vfioPasidStructCheck(
    'VFIO_DEVICE_DETACH_IOMMUFD_PT',
    vfio_device_detach_iommufd_pt,
    'flags',
    arg,
    opts.pasidSupported,
  );
}
