// What every ioctl handler receives (struct iommufd_ucmd): the calling process and context,
// the kernel's copy of the struct (sizeof bytes, zero-extended, research A.0 step 5) decoded
// once, when first read, and the user's argument bytes that results are written back into,
// never more than min(user size, sizeof) of them (iommufd_ucmd_respond).

import type { KernelError } from '../core/errno.ts';
import type { IommufdCtx } from './main.ts';
import type { Process } from './process.ts';
import { decodeAny, encode, respondField, type StructDef, ucmdRespond } from './uapi/index.ts';

export class Ucmd {
  readonly p: Process;
  readonly ctx: IommufdCtx;
  readonly struct: StructDef;
  /** The kernel's copy; respond() updates it before copying it back. */
  readonly kbuf: Uint8Array;
  /** The user's bytes at the argument pointer. */
  readonly arg: Uint8Array;
  readonly userSize: number;
  private decoded: Readonly<Record<string, unknown>> | null = null;
  constructor(
    p: Process,
    ctx: IommufdCtx,
    struct: StructDef,
    kbuf: Uint8Array,
    arg: Uint8Array,
    userSize: number,
  ) {
    this.p = p;
    this.ctx = ctx;
    this.struct = struct;
    this.kbuf = kbuf;
    this.arg = arg;
    this.userSize = userSize;
  }
  /**
   * The decoded kernel copy (u64 fields as bigint), decoded on first use from the kernel copy
   * as it stands then: handlers read their fields before they write results into kbuf, and the
   * hottest ones (IOAS_ALLOC, DESTROY) read kbuf directly and never pay for the generic decode.
   */
  get cmd(): Readonly<Record<string, unknown>> {
    return (this.decoded ??= decodeAny(this.struct, this.kbuf));
  }
}

export function makeUcmd(
  p: Process,
  ctx: IommufdCtx,
  struct: StructDef,
  kbuf: Uint8Array,
  arg: Uint8Array,
  userSize: number,
): Ucmd {
  return new Ucmd(p, ctx, struct, kbuf, arg, userSize);
}

/** A u32 field of the kernel copy, by its offset (for handlers that skip the generic decode). */
export function kU32(u: Ucmd, off: number): number {
  const b = u.kbuf;
  return (b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24)) >>> 0;
}

/**
 * Stores a u32 field in the kernel copy (what respond() does for one u32 field), for handlers
 * that never read `cmd`: a `cmd` decoded after this would show the stored value.
 */
export function setKU32(u: Ucmd, off: number, v: number): void {
  const b = u.kbuf;
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
  b[off + 2] = (v >>> 16) & 0xff;
  b[off + 3] = (v >>> 24) & 0xff;
}

/**
 * Store `fields` in the kernel copy and copy it back to the user: the whole struct (up to the
 * user's size), or only `only` (IOMMU_OPTION copies back val64 alone).
 */
export function respond(
  u: Ucmd,
  fields: Readonly<Record<string, unknown>>,
  only?: string,
): KernelError | undefined {
  // The fields as the user passed them are decoded before kbuf changes (cmd is lazy).
  void u.cmd;
  encode(u.struct, fields, u.kbuf);
  if (only !== undefined) return respondField(u.arg, u.struct, only, u.kbuf);
  return ucmdRespond(u.arg, u.kbuf, u.userSize);
}

/** A user pointer plus offset as a VA, or -1 for NULL or an address no mapping can have. */
export function userPtr(ptr: bigint, off = 0): number {
  if (ptr === 0n) return -1;
  const v = ptr + BigInt(off);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(v);
}
