// Linux errno values and the typed error that carries them. Every failure pasidkit reports to a
// caller (library, scenario runner, server) is a KernelError: the errno name and number a kernel
// developer recognises, plus a message that names the object and the rule that refused it.
// Numbers are the generic Linux ones (include/uapi/asm-generic/errno-base.h, errno.h).

export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  ENOTBLK: 15,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  EPIPE: 32,
  EDOM: 33,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENOMSG: 42,
  EBADE: 52,
  ENODATA: 61,
  ETIME: 62,
  EOVERFLOW: 75,
  EBADFD: 77,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  ECONNRESET: 104,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EDQUOT: 122,
  ENOTSUPP: 524,
} as const;

export type ErrnoName = keyof typeof ERRNO;

const BY_NUMBER = new Map<number, ErrnoName>(
  (Object.entries(ERRNO) as [ErrnoName, number][]).map(([k, v]) => [v, k]),
);

export function errnoName(errno: number): ErrnoName | undefined {
  return BY_NUMBER.get(Math.abs(errno));
}

export function isErrnoName(s: string): s is ErrnoName {
  return Object.hasOwn(ERRNO, s);
}

/** A failure with a Linux errno. Returned as a value by kernel-style functions, never thrown by them. */
export class KernelError extends Error {
  override readonly name = 'KernelError';
  readonly code: ErrnoName;
  readonly errno: number;
  constructor(code: ErrnoName, message: string) {
    super(`${code}: ${message}`);
    this.code = code;
    this.errno = ERRNO[code];
  }
  /** The kernel's return value for this error: -errno. */
  get ret(): number {
    return -this.errno;
  }
  toJSON(): { errno: ErrnoName; message: string } {
    return { errno: this.code, message: this.message };
  }
}

export function kerr(code: ErrnoName, message: string): KernelError {
  return new KernelError(code, message);
}

export function isKernelError(x: unknown): x is KernelError {
  return x instanceof KernelError;
}

/** Raised only for misuse of the library itself (a bug in the caller's TypeScript), never for modelled failures. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}
