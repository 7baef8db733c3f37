// What every ioctl handler receives (struct iommufd_ucmd): the calling process and context,
// the kernel's copy of the struct (sizeof bytes, zero-extended, research A.0 step 5) decoded
// once, and the user's argument bytes that results are written back into, never more than
// min(user size, sizeof) of them (iommufd_ucmd_respond).

import type { KernelError } from '../core/errno.ts';
import type { IommufdCtx } from './main.ts';
import type { Process } from './process.ts';
import { decodeAny, encode, respondField, type StructDef, ucmdRespond } from './uapi/index.ts';

export interface Ucmd {
  readonly p: Process;
  readonly ctx: IommufdCtx;
  readonly struct: StructDef;
  /** The kernel's copy; respond() updates it before copying it back. */
  readonly kbuf: Uint8Array;
  /** The user's bytes at the argument pointer. */
  readonly arg: Uint8Array;
  readonly userSize: number;
  /** The decoded kernel copy (u64 fields as bigint). */
  readonly cmd: Readonly<Record<string, unknown>>;
}

export function makeUcmd(
  p: Process,
  ctx: IommufdCtx,
  struct: StructDef,
  kbuf: Uint8Array,
  arg: Uint8Array,
  userSize: number,
): Ucmd {
  return { p, ctx, struct, kbuf, arg, userSize, cmd: decodeAny(struct, kbuf) };
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
