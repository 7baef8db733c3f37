// The wire protocol's constants and the little helpers both ends share (../shared/spec/WIRE.md,
// "Frames"). Everything is little-endian:
//
//     request:  u32 length | u32 op | u32 tag | i32 fd | payload     (length = bytes after itself)
//     response: u32 length | u32 tag | i64 ret | payload
//
// Both the server (server.ts) and the TypeScript client (client.ts) encode and decode frames
// with these helpers directly in Node Buffers, so that no frame costs an object per field.

import { type ErrnoName, errnoName, KernelError } from '../core/errno.ts';

/** The operations of WIRE.md's table, by name. */
export const OP = {
  OPEN: 1,
  CLOSE: 2,
  IOCTL: 3,
  MMAP: 4,
  MUNMAP: 5,
  PEEK: 6,
  POKE: 7,
  READ: 8,
  WRITE: 9,
  MEMFD_CREATE: 10,
  FTRUNCATE: 11,
  IOCTL_VALUE: 12,
} as const;

export type OpName = keyof typeof OP;

/** Op number → name (index 0 unused), for logs. */
export const OP_NAMES: readonly string[] = [
  '',
  ...(Object.keys(OP) as OpName[]).sort((a, b) => OP[a] - OP[b]),
];

/** The fixed part of a request: length, op, tag, fd. */
export const REQUEST_HEADER = 16;
/** The fixed part of a response: length, tag, ret. */
export const RESPONSE_HEADER = 16;
/** The smallest `length` a frame may carry: op, tag and fd (or tag and ret). */
export const MIN_LENGTH = 12;
/** WIRE.md's default frame limit; a frame whose `length` is above it is discarded with -E2BIG. */
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024;

/** Linux's mmap/prot values as WIRE.md lists them. */
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;

const TWO32 = 2 ** 32;

/** The errno name of a wire `ret` (-errno); EIO for a number Linux has no name for here. */
export function wireCode(ret: number): ErrnoName {
  return errnoName(-ret) ?? 'EIO';
}

/** A call that came back with `ret` < 0 as a KernelError (the number, when it has no name here). */
export function wireFailure(what: string, ret: number): KernelError {
  return new KernelError(wireCode(ret), errnoName(-ret) !== undefined ? what : `${what} (errno ${-ret})`);
}

/**
 * A u64 at `off` as a number, or NaN when it is above Number.MAX_SAFE_INTEGER (2^53 - 1): the
 * callers turn NaN into the errno the kernel gives for an out-of-range value.
 */
export function readU64(b: Buffer, off: number): number {
  const hi = b.readUInt32LE(off + 4);
  if (hi > 0x1fffff) return Number.NaN;
  return hi * TWO32 + b.readUInt32LE(off);
}

/** Writes a safe integer (possibly negative) as an i64 or u64. */
export function writeI64(b: Buffer, v: number, off: number): void {
  if ((v | 0) === v) {
    // An int32 (every ret but a mapping's VA): its high half is the sign.
    b.writeInt32LE(v, off);
    b.writeInt32LE(v >> 31, off + 4);
    return;
  }
  const hi = Math.floor(v / TWO32);
  b.writeUInt32LE(v - hi * TWO32, off);
  b.writeInt32LE(hi, off + 4);
}

/** Reads an i64 as a number (exact for every value the server sends: ret is a safe integer). */
export function readI64(b: Buffer, off: number): number {
  return b.readInt32LE(off + 4) * TWO32 + b.readUInt32LE(off);
}

/**
 * Views buf[0, n) of a send or reply buffer, kept by n while the buffer stays the same one:
 * frames come in a few sizes, and making a view per write is a small allocation on every
 * request. Views are kept for n below 256; longer writes get a fresh view.
 */
export class PrefixViews {
  private views: (Buffer | undefined)[] = [];
  private of: Buffer | null = null;

  get(buf: Buffer, n: number): Buffer {
    if (n >= 256) return buf.subarray(0, n);
    if (this.of !== buf) {
      this.views = [];
      this.of = buf;
    }
    let v = this.views[n];
    if (v === undefined) v = this.views[n] = buf.subarray(0, n);
    return v;
  }
}
