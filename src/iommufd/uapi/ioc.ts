// The Linux ioctl request-number encoding (include/uapi/asm-generic/ioctl.h), as used by every
// iommufd and VFIO ioctl. iommufd numbers are all `_IO(';', nr)`: no size and no direction bits,
// because the struct size travels in the struct's own first u32 (research iommufd.md A.0). The
// generic layout is kept complete so that a `_IOW`/`_IOWR`-encoded number, which iommufd must
// refuse with ENOTTY, can be built and recognised too.

export const _IOC_NRBITS = 8;
export const _IOC_TYPEBITS = 8;
export const _IOC_SIZEBITS = 14;
export const _IOC_DIRBITS = 2;

export const _IOC_NRSHIFT = 0;
export const _IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS;
export const _IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS;
export const _IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS;

export const _IOC_NONE = 0;
export const _IOC_WRITE = 1;
export const _IOC_READ = 2;

const mask = (bits: number): number => (1 << bits) - 1;

function checkField(what: string, v: number, bits: number): void {
  if (!Number.isInteger(v) || v < 0 || v > mask(bits)) {
    throw new RangeError(`ioctl ${what} ${v} does not fit in ${bits} bits`);
  }
}

/** `_IOC(dir, type, nr, size)`; the result is the unsigned 32-bit request number. */
export function _IOC(dir: number, type: number, nr: number, size: number): number {
  checkField('dir', dir, _IOC_DIRBITS);
  checkField('type', type, _IOC_TYPEBITS);
  checkField('nr', nr, _IOC_NRBITS);
  checkField('size', size, _IOC_SIZEBITS);
  return (
    ((dir << _IOC_DIRSHIFT) | (type << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)) >>>
    0
  );
}

export const _IO = (type: number, nr: number): number => _IOC(_IOC_NONE, type, nr, 0);
export const _IOR = (type: number, nr: number, size: number): number => _IOC(_IOC_READ, type, nr, size);
export const _IOW = (type: number, nr: number, size: number): number => _IOC(_IOC_WRITE, type, nr, size);
export const _IOWR = (type: number, nr: number, size: number): number =>
  _IOC(_IOC_READ | _IOC_WRITE, type, nr, size);

export const _IOC_NR = (cmd: number): number => (cmd >>> _IOC_NRSHIFT) & mask(_IOC_NRBITS);
export const _IOC_TYPE = (cmd: number): number => (cmd >>> _IOC_TYPESHIFT) & mask(_IOC_TYPEBITS);
export const _IOC_SIZE = (cmd: number): number => (cmd >>> _IOC_SIZESHIFT) & mask(_IOC_SIZEBITS);
export const _IOC_DIR = (cmd: number): number => (cmd >>> _IOC_DIRSHIFT) & mask(_IOC_DIRBITS);

/** The ioctl "type" character of both iommufd and VFIO. */
export const IOMMUFD_TYPE = 0x3b; // ';'
export const VFIO_TYPE = 0x3b; // ';'
export const IOMMUFD_CMD_BASE = 0x80;
export const VFIO_BASE = 100;
