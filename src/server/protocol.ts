// The wire protocol's constants and the little helpers both ends share (../shared/spec/WIRE.md,
// "Frames"). Everything is little-endian:
//
//     request:  u32 length | u32 op | u32 tag | i32 fd | payload     (length = bytes after itself)
//     response: u32 length | u32 tag | i64 ret | payload
//
// The server (server.ts) and both TypeScript clients (client.ts, sync-client.ts) encode and
// decode frames with these helpers directly in Node Buffers, so that no frame costs an object
// per field; the clients also share the payload writers and the errors of failed calls.

import { type ErrnoName, errnoName, KernelError } from '../core/errno.ts';
import { build, IOCTLS, offsetof, STRUCTS } from '../iommufd/uapi/index.ts';

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

// ---- request payloads that both clients write in place ------------------------------------

/** IOCTL_VALUE's payload: u32 request | u64 raw argument. */
export const IOCTL_VALUE_PAYLOAD = 12;
/** MMAP's payload: u64 length | u32 prot | u32 flags | u64 offset. */
export const MMAP_PAYLOAD = 24;

/**
 * An ioctl's raw argument as IOCTL_VALUE carries it: a u32 stays a number, anything else
 * becomes a u64 (BigInt throws here, before a frame is begun, for a value that is no integer).
 */
export function ioctlValueArg(raw: bigint | number): number | bigint {
  return typeof raw === 'number' && raw >= 0 && raw <= 0xffffffff && Number.isInteger(raw)
    ? raw
    : BigInt.asUintN(64, BigInt(raw));
}

export function putIoctlValue(b: Buffer, at: number, request: number, arg: number | bigint): void {
  b.writeUInt32LE(request >>> 0, at);
  if (typeof arg === 'number') {
    b.writeUInt32LE(arg, at + 4);
    b.writeUInt32LE(0, at + 8);
  } else b.writeBigUInt64LE(arg, at + 4);
}

export function putMmap(
  b: Buffer,
  at: number,
  length: number,
  prot: number,
  flags: number,
  offset: number,
): void {
  writeI64(b, length, at);
  b.writeUInt32LE(prot >>> 0, at + 8);
  b.writeUInt32LE(flags >>> 0, at + 12);
  writeI64(b, offset, at + 16);
}

/** IOCTL's payload: u32 request | the argument bytes. */
export function putIoctl(b: Buffer, at: number, request: number, arg: Uint8Array): void {
  b.writeUInt32LE(request >>> 0, at);
  b.set(arg, at + 4);
}

// The two ioctls of the wire-rtt loop have their own writers: their arguments never change
// but for the ID, so they are built once and patched.
const IOAS_ALLOC_ARG = build(STRUCTS.iommu_ioas_alloc);
const IOAS_ALLOC_CMD = IOCTLS.IOMMU_IOAS_ALLOC.cmd;
const DESTROY_ID = offsetof(STRUCTS.iommu_destroy, 'id');
const DESTROY_SIZE = STRUCTS.iommu_destroy.size;
const DESTROY_CMD = IOCTLS.IOMMU_DESTROY.cmd;

/** IOCTL's payload for IOMMU_IOAS_ALLOC. */
export const IOAS_ALLOC_PAYLOAD = 4 + IOAS_ALLOC_ARG.length;
/** Where the new ID is in IOMMU_IOAS_ALLOC's reply payload (the written-back struct). */
export const OUT_IOAS_ID = offsetof(STRUCTS.iommu_ioas_alloc, 'out_ioas_id');

export function putIoasAlloc(b: Buffer, at: number): void {
  putIoctl(b, at, IOAS_ALLOC_CMD, IOAS_ALLOC_ARG);
}

/** IOCTL's payload for IOMMU_DESTROY. */
export const DESTROY_PAYLOAD = 4 + DESTROY_SIZE;

export function putDestroy(b: Buffer, at: number, id: number): void {
  b.writeUInt32LE(DESTROY_CMD, at);
  b.writeUInt32LE(DESTROY_SIZE, at + 4);
  b.writeUInt32LE(id >>> 0, at + 4 + DESTROY_ID);
}
