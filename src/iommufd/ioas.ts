// The IOAS object and its ioctls, plus in-kernel accesses: the model of
// drivers/iommu/iommufd/ioas.c and the access half of device.c (research iommufd.md A.1–A.10,
// A.21, B.2–B.4, B.8). Every handler checks its fields in the kernel's order and answers with
// the kernel's errno; address-space rules live in io-pagetable.ts, pinning in pages.ts.
//
// Handlers take a Ucmd (the kernel copy of the struct plus the user's bytes to write back) and
// return 0 or a KernelError; a handler that creates an object finalizes it only once nothing
// can fail any more, so a failed ioctl leaves no object and no ID behind.

import { type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE } from '../iommu/core.ts';
import {
  IOPT_ALLOC_IOVA,
  IoPagetable,
  type IoptArea,
  type IoptPages,
  type IoptPagesSlice,
  type IovaRange,
  ULONG_MAX,
} from './io-pagetable.ts';
import { ACCOUNT_MM, ACCOUNT_NONE, type IommufdCtx, IommufdObject, OBJ } from './main.ts';
import {
  areaPageRange,
  chargePins,
  type DmabufLike,
  IommufdHooks,
  type IommufdIoptHooks,
  PagesSource,
  type PinAccount,
  pagesHold,
  pagesRw,
  pagesUnhold,
  sourceOf,
  unchargePins,
} from './pages.ts';
import { KFile, MemFile, PAGE_SIZE, type Process } from './process.ts';
import { offsetof, STRUCTS, ucmdRespond } from './uapi/index.ts';
import { kU32, respond, setKU32, type Ucmd, userPtr } from './ucmd.ts';

const MAP_FIXED_IOVA = 1 << 0;
const MAP_WRITEABLE = 1 << 1;
const MAP_READABLE = 1 << 2;
const MAP_FLAGS = MAP_FIXED_IOVA | MAP_WRITEABLE | MAP_READABLE;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** The io_pagetable of an IOAS; dropping the last reference to pages releases their source. */
class IommufdIopt extends IoPagetable {
  override putPages(pages: IoptPages): boolean {
    const last = super.putPages(pages);
    if (last) releasePagesSource(pages);
    return last;
  }
}

/** The hooks of an IOAS, which also tell its accesses about unmaps. */
class IoasHooks extends IommufdHooks {
  private readonly ioas: Ioas;
  constructor(ioas: Ioas, faults: FaultInjector, iopt: IoPagetable) {
    super(faults, iopt);
    this.ioas = ioas;
  }
  notifyUnmap(iova: bigint, length: bigint): void {
    const accesses = this.ioas.accesses;
    if (accesses === null || accesses.size === 0) return;
    for (const a of [...accesses]) a.ops.unmap(a, iova, length);
  }
}

export class Ioas extends IommufdObject {
  readonly type = OBJ.IOAS;
  readonly iopt: IoPagetable;
  readonly hooks: IommufdIoptHooks;
  /** HWPT_PAGINGs on this IOAS in creation order (ioas->hwpt_list). */
  readonly hwptList: import('./hw_pagetable.ts').HwptPaging[] = [];
  /** The in-kernel accesses attached here; made with the first one (most IOAS have none). */
  accesses: Set<IommufdAccess> | null = null;
  constructor(ctx: IommufdCtx) {
    super(ctx);
    const faults = ctx.faults;
    const iopt = new IommufdIopt({ pageSize: PAGE_SIZE, faults });
    const hooks = new IoasHooks(this, faults, iopt);
    iopt.hooks = hooks;
    this.hooks = hooks;
    this.iopt = iopt;
  }
  destroy(): void {
    this.iopt.destroy();
  }
}

/** conv_iommu_prot. */
function convProt(flags: number): number {
  let p = IOMMU_CACHE;
  if (flags & MAP_WRITEABLE) p |= IOMMU_WRITE;
  if (flags & MAP_READABLE) p |= IOMMU_READ;
  return p;
}

/** The pin account for pages created now by `p` (iopt_alloc_pages + the context's mode). */
export function pinAccountFor(ctx: IommufdCtx, p: Process): PinAccount {
  return {
    mode: p.creds.capIpcLock ? ACCOUNT_NONE : ctx.accountMode,
    user: p.user,
    mm: p.mm,
    rlimitPages: Math.floor(p.creds.rlimitMemlock / PAGE_SIZE),
  };
}

export function getIoas(ctx: IommufdCtx, id: number): Ioas | KernelError {
  const o = ctx.get(id, OBJ.IOAS);
  return o instanceof Ioas ? o : (o as KernelError);
}

// ---- IOMMU_IOAS_ALLOC ------------------------------------------------------------------------

// The two hottest handlers (every IOAS lifetime is one of each) read and write their u32
// fields in kbuf directly instead of through the generic codec: same bytes, same order.
const IOAS_ALLOC_FLAGS = offsetof(STRUCTS.iommu_ioas_alloc, 'flags');
const IOAS_ALLOC_OUT_ID = offsetof(STRUCTS.iommu_ioas_alloc, 'out_ioas_id');
const DESTROY_ID = offsetof(STRUCTS.iommu_destroy, 'id');

export function ioasAlloc(u: Ucmd): number | KernelError {
  if (kU32(u, IOAS_ALLOC_FLAGS) !== 0) return kerr('EOPNOTSUPP', 'IOMMU_IOAS_ALLOC: flags must be 0');
  const ioas = u.ctx.alloc(new Ioas(u.ctx));
  if (!(ioas instanceof Ioas)) return ioas;
  setKU32(u, IOAS_ALLOC_OUT_ID, ioas.id);
  const err = ucmdRespond(u.arg, u.kbuf, u.userSize);
  if (err) {
    u.ctx.abortAndDestroy(ioas);
    return err;
  }
  u.ctx.finalize(ioas);
  return 0;
}

// ---- IOMMU_IOAS_IOVA_RANGES --------------------------------------------------------------------

export function ioasIovaRanges(u: Ucmd): number | KernelError {
  const c = u.cmd;
  if (c['__reserved'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_IOAS_IOVA_RANGES: __reserved');
  const ioas = getIoas(u.ctx, c['ioas_id'] as number);
  if (!(ioas instanceof Ioas)) return ioas;
  const max = c['num_iovas'] as number;
  const ptr = c['allowed_iovas'] as bigint;
  const ranges = ioas.iopt.iovaRanges();
  for (let i = 0; i < ranges.length && i < max; i++) {
    const r = ranges[i]!;
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    dv.setBigUint64(0, r.start, true);
    dv.setBigUint64(8, r.last, true);
    const va = userPtr(ptr, i * 16);
    const err = va < 0 ? kerr('EFAULT', 'bad allowed_iovas pointer') : u.p.mm.copyToUser(va, b);
    if (err) return err;
  }
  const err = respond(u, { num_iovas: ranges.length, out_iova_alignment: ioas.iopt.iovaAlignment });
  if (err) return err;
  if (ranges.length > max) return kerr('EMSGSIZE', `${ranges.length} ranges, room for ${max}`);
  return 0;
}

// ---- IOMMU_IOAS_ALLOW_IOVAS --------------------------------------------------------------------

/** Reads `num` struct iommu_iova_range from user memory lazily (the kernel copies one at a time). */
function* userRanges(p: Process, ptr: bigint, num: number): Generator<IovaRange | KernelError> {
  for (let i = 0; i < num; i++) {
    const va = userPtr(ptr, i * 16);
    const b = va < 0 ? kerr('EFAULT', 'bad allowed_iovas pointer') : p.mm.copyFromUser(va, 16);
    if (!(b instanceof Uint8Array)) {
      yield b;
      return;
    }
    const dv = new DataView(b.buffer);
    yield { start: dv.getBigUint64(0, true), last: dv.getBigUint64(8, true) };
  }
}

export function ioasAllowIovas(u: Ucmd): number | KernelError {
  const c = u.cmd;
  if (c['__reserved'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_IOAS_ALLOW_IOVAS: __reserved');
  const ioas = getIoas(u.ctx, c['ioas_id'] as number);
  if (!(ioas instanceof Ioas)) return ioas;
  const err = ioas.iopt.setAllowIova(userRanges(u.p, c['allowed_iovas'] as bigint, c['num_iovas'] as number));
  return err ?? 0;
}

// ---- IOMMU_IOAS_MAP / MAP_FILE / COPY ----------------------------------------------------------

export function ioasMap(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const flags = c['flags'] as number;
  if (flags & ~MAP_FLAGS || c['__reserved'] !== 0)
    return kerr('EOPNOTSUPP', 'IOMMU_IOAS_MAP: unknown flags or __reserved');
  const iova = c['iova'] as bigint;
  const length = c['length'] as bigint;
  if (iova >= ULONG_MAX || length >= ULONG_MAX)
    return kerr('EOVERFLOW', 'IOMMU_IOAS_MAP: iova or length too large');
  if (!(flags & (MAP_READABLE | MAP_WRITEABLE)))
    return kerr('EINVAL', 'IOMMU_IOAS_MAP: neither READABLE nor WRITEABLE');
  const ioas = getIoas(u.ctx, c['ioas_id'] as number);
  if (!(ioas instanceof Ioas)) return ioas;
  const src = new PagesSource('user', u.p.host.phys, u.p.mm, null, pinAccountFor(u.ctx, u.p));
  const r = ioas.iopt.mapUserPages(
    c['user_va'] as bigint,
    length,
    iova,
    convProt(flags),
    flags & MAP_FIXED_IOVA ? 0 : IOPT_ALLOC_IOVA,
    src,
  );
  if (!('area' in r)) return r;
  return respond(u, { iova: r.iova }) ?? 0;
}

export function ioasMapFile(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const flags = c['flags'] as number;
  if (flags & ~MAP_FLAGS) return kerr('EOPNOTSUPP', 'IOMMU_IOAS_MAP_FILE: unknown flags');
  const iova = c['iova'] as bigint;
  const length = c['length'] as bigint;
  if (iova >= ULONG_MAX || length >= ULONG_MAX)
    return kerr('EOVERFLOW', 'IOMMU_IOAS_MAP_FILE: iova or length too large');
  if (!(flags & (MAP_READABLE | MAP_WRITEABLE)))
    return kerr('EINVAL', 'IOMMU_IOAS_MAP_FILE: neither READABLE nor WRITEABLE');
  const ioas = getIoas(u.ctx, c['ioas_id'] as number);
  if (!(ioas instanceof Ioas)) return ioas;
  const f = u.p.file(c['fd'] as number);
  if (!(f instanceof KFile)) return kerr('EBADF', `fd ${c['fd']} is not open`);
  const start = c['start'] as bigint;
  if (isDmabuf(f)) return mapDmabuf(u, ioas, f, start, length, iova, flags);
  if (!(f instanceof MemFile)) return kerr('EINVAL', `a ${f.kind} file cannot be mapped`);
  const slice = ioas.iopt.allocFilePages(f, start, length, (flags & MAP_WRITEABLE) !== 0);
  if (!('pages' in slice)) return slice;
  // The pages' source is the file; pins are charged to the caller's mm.
  (slice.pages as { source: unknown }).source = new PagesSource(
    'file',
    u.p.host.phys,
    u.p.mm,
    f,
    pinAccountFor(u.ctx, u.p),
  );
  f.getUser();
  fileRefs.set(slice.pages, f);
  return mapSliceRespond(u, ioas, slice, length, iova, flags);
}

/** The common end of MAP_FILE and a dma-buf map: map the one slice, report the IOVA. */
function mapSliceRespond(
  u: Ucmd,
  ioas: Ioas,
  slice: IoptPagesSlice,
  length: bigint,
  iova: bigint,
  flags: number,
): number | KernelError {
  const r = ioas.iopt.mapPages(
    [slice],
    length,
    iova,
    convProt(flags),
    flags & MAP_FIXED_IOVA ? 0 : IOPT_ALLOC_IOVA,
  );
  if (!('areas' in r)) return r;
  return respond(u, { iova: r.iova }) ?? 0;
}

/** The file reference each MAP_FILE pages object holds (get_file), dropped with the pages. */
const fileRefs = new WeakMap<IoptPages, MemFile>();

/** A dma-buf file (the selftest's exporter): its pages, revocation, and the IOASes importing it. */
export interface DmabufFileLike extends DmabufLike {
  readonly kind: 'dmabuf';
  readonly size: number;
  readonly importers: Set<Ioas>;
}

function isDmabuf(f: KFile): f is KFile & DmabufFileLike {
  return f.kind === 'dmabuf';
}

/** iopt_map_dmabuf: the exporter's pages, no pinning of user memory. */
function mapDmabuf(
  u: Ucmd,
  ioas: Ioas,
  d: DmabufFileLike,
  start: bigint,
  length: bigint,
  iova: bigint,
  flags: number,
): number | KernelError {
  const size = BigInt(d.size);
  if (length === 0n || start >= size || start + length > size)
    return kerr('EINVAL', 'range outside the dma-buf');
  if (d.revoked) return kerr('ENODEV', 'the dma-buf is revoked');
  const slice = ioas.iopt.allocFilePages(d, start, length, (flags & MAP_WRITEABLE) !== 0);
  if (!('pages' in slice)) return slice;
  const src = new PagesSource('dmabuf', u.p.host.phys, u.p.mm, null, pinAccountFor(u.ctx, u.p));
  src.dmabuf = d;
  (slice.pages as { source: unknown }).source = src;
  d.get();
  d.importers.add(ioas);
  return mapSliceRespond(u, ioas, slice, length, iova, flags);
}

/** dma_buf_move_notify for the test exporter: revoke or restore every importing area. */
export function dmabufSetRevoked(d: DmabufFileLike, revoke: boolean): KernelError | undefined {
  if (d.revoked === revoke) return undefined;
  d.revoked = revoke;
  for (const ioas of d.importers) {
    if (ioas.users === 0) continue;
    for (const a of ioas.iopt.areas()) {
      const s = a.pages.source;
      if (!(s instanceof PagesSource) || s.dmabuf !== d || !a.committed) continue;
      if (revoke) ioas.hooks.revoke(a, ioas.iopt.domains);
      else {
        const err = ioas.hooks.restore(a, ioas.iopt.domains);
        if (err) return err;
      }
    }
  }
  return undefined;
}

/** The source of pages whose last reference went: drop the file or dma-buf reference. */
function releasePagesSource(pages: IoptPages): void {
  releaseFilePages(pages);
  const s = pages.source;
  if (s instanceof PagesSource && s.dmabuf) {
    s.dmabuf.put();
    s.dmabuf = null;
  }
}

export function ioasCopy(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const flags = c['flags'] as number;
  if (flags & ~MAP_FLAGS) return kerr('EOPNOTSUPP', 'IOMMU_IOAS_COPY: unknown flags');
  const length = c['length'] as bigint;
  if (length >= ULONG_MAX || (c['src_iova'] as bigint) >= ULONG_MAX || (c['dst_iova'] as bigint) >= ULONG_MAX)
    return kerr('EOVERFLOW', 'IOMMU_IOAS_COPY: value too large');
  if (!(flags & (MAP_READABLE | MAP_WRITEABLE)))
    return kerr('EINVAL', 'IOMMU_IOAS_COPY: neither READABLE nor WRITEABLE');
  const src = getIoas(u.ctx, c['src_ioas_id'] as number);
  if (!(src instanceof Ioas)) return src;
  const list = src.iopt.getPages(c['src_iova'] as bigint, length);
  if (!Array.isArray(list)) return list;
  const dst = getIoas(u.ctx, c['dst_ioas_id'] as number);
  if (!(dst instanceof Ioas)) {
    src.iopt.freePagesList(list);
    return dst;
  }
  const r = dst.iopt.mapPages(
    list,
    length,
    c['dst_iova'] as bigint,
    convProt(flags),
    flags & MAP_FIXED_IOVA ? 0 : IOPT_ALLOC_IOVA,
  );
  if (!('areas' in r)) return r;
  return respond(u, { dst_iova: r.iova }) ?? 0;
}

// ---- IOMMU_IOAS_UNMAP ------------------------------------------------------------------------

export function ioasUnmap(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const ioas = getIoas(u.ctx, c['ioas_id'] as number);
  if (!(ioas instanceof Ioas)) return ioas;
  const iova = c['iova'] as bigint;
  const length = c['length'] as bigint;
  let r: bigint | KernelError;
  if (iova === 0n && length === U64_MAX) r = ioas.iopt.unmapAll();
  else {
    if (iova >= ULONG_MAX || length >= ULONG_MAX)
      return kerr('EOVERFLOW', 'IOMMU_IOAS_UNMAP: value too large');
    r = ioas.iopt.unmapIova(iova, length);
  }
  if (typeof r !== 'bigint') return r;
  return respond(u, { length: r }) ?? 0;
}

// ---- IOMMU_OPTION ------------------------------------------------------------------------------

export function ioasOption(u: Ucmd): number | KernelError {
  const c = u.cmd;
  if (c['__reserved'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_OPTION: __reserved');
  const op = c['op'] as number;
  let val = c['val64'] as bigint;
  if (c['option_id'] === 0) {
    // IOMMU_OPTION_RLIMIT_MODE
    if (c['object_id'] !== 0) return kerr('EOPNOTSUPP', 'RLIMIT_MODE is global: object_id must be 0');
    if (op === 1) val = u.ctx.accountMode === ACCOUNT_MM ? 1n : 0n;
    else if (op === 0) {
      if (!u.p.creds.capSysResource) return kerr('EPERM', 'RLIMIT_MODE SET needs CAP_SYS_RESOURCE');
      if (u.ctx.objects.size > 0) return kerr('EBUSY', 'RLIMIT_MODE SET with objects in the context');
      if (val === 0n) u.ctx.accountMode = 1;
      else if (val === 1n) u.ctx.accountMode = ACCOUNT_MM;
      else return kerr('EINVAL', `RLIMIT_MODE value ${val}`);
    } else return kerr('EOPNOTSUPP', `IOMMU_OPTION op ${op}`);
  } else if (c['option_id'] === 1) {
    // IOMMU_OPTION_HUGE_PAGES, per IOAS
    const ioas = getIoas(u.ctx, c['object_id'] as number);
    if (!(ioas instanceof Ioas)) return ioas;
    if (op === 1) val = ioas.iopt.disableLargePages ? 0n : 1n;
    else if (op === 0) {
      if (val === 0n) {
        const err = ioas.iopt.disableLargePagesOption();
        if (err) return err;
      } else if (val === 1n) ioas.iopt.enableLargePages();
      else return kerr('EINVAL', `HUGE_PAGES value ${val}`);
    } else return kerr('EOPNOTSUPP', `IOMMU_OPTION op ${op}`);
  } else return kerr('EOPNOTSUPP', `IOMMU_OPTION option_id ${c['option_id']}`);
  // Only val64 is copied back.
  return respond(u, { val64: val }, 'val64') ?? 0;
}

// ---- IOMMU_VFIO_IOAS -------------------------------------------------------------------------

export function vfioIoas(u: Ucmd): number | KernelError {
  const c = u.cmd;
  if (c['__reserved'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_VFIO_IOAS: __reserved');
  const op = c['op'] as number;
  if (op === 0) {
    const ioas = u.ctx.vfioIoas;
    if (!ioas || !u.ctx.objects.has(ioas.id)) return kerr('ENODEV', 'no VFIO compat IOAS');
    return respond(u, { ioas_id: ioas.id }) ?? 0;
  }
  if (op === 1) {
    const ioas = getIoas(u.ctx, c['ioas_id'] as number);
    if (!(ioas instanceof Ioas)) return ioas;
    u.ctx.vfioIoas = ioas;
    return 0;
  }
  if (op === 2) {
    u.ctx.vfioIoas = null;
    return 0;
  }
  return kerr('EOPNOTSUPP', `IOMMU_VFIO_IOAS op ${op}`);
}

// ---- IOMMU_DESTROY -------------------------------------------------------------------------------

export function destroyIoctl(u: Ucmd): number | KernelError {
  return u.ctx.destroyId(kU32(u, DESTROY_ID)) ?? 0;
}

// ---- IOMMU_IOAS_CHANGE_PROCESS -------------------------------------------------------------------

export function ioasChangeProcess(u: Ucmd): number | KernelError {
  if (u.cmd['__reserved'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_IOAS_CHANGE_PROCESS: __reserved');
  const sources = new Set<PagesSource>();
  for (const o of u.ctx.objects.values()) {
    if (!(o instanceof Ioas)) continue;
    for (const a of o.iopt.areas()) {
      const s = sourceOf(a.pages);
      if (s.kind !== 'file') return kerr('EINVAL', 'IOMMU_IOAS_CHANGE_PROCESS: a non-file mapping exists');
      sources.add(s);
    }
  }
  const next = pinAccountFor(u.ctx, u.p);
  // Charge the new owner first; roll back if any charge fails, then uncharge the old owners.
  const charged: PagesSource[] = [];
  for (const s of sources) {
    if (s.acct.mm === next.mm && s.acct.user === next.user) continue;
    const err = chargePins(
      { ...next, mode: s.acct.mode === ACCOUNT_NONE ? ACCOUNT_NONE : next.mode },
      s.npinned,
    );
    if (err) {
      for (const d of charged)
        unchargePins({ ...next, mode: d.acct.mode === ACCOUNT_NONE ? ACCOUNT_NONE : next.mode }, d.npinned);
      return err;
    }
    charged.push(s);
  }
  for (const s of charged) {
    unchargePins(s.acct, s.npinned);
    s.acct = { ...next, mode: s.acct.mode === ACCOUNT_NONE ? ACCOUNT_NONE : next.mode };
  }
  return 0;
}

/** Drop the MAP_FILE file reference when the last area of the pages is gone. */
export function releaseFilePages(pages: IoptPages): void {
  const f = fileRefs.get(pages);
  if (f && pages.users === 0) {
    fileRefs.delete(pages);
    f.putUser();
  }
}

// ---- in-kernel accesses (iommufd_access) ---------------------------------------------------------

export interface AccessOps {
  readonly needsPinPages: boolean;
  /** The driver must drop everything it pinned in [iova, iova+length). */
  unmap(access: IommufdAccess, iova: bigint, length: bigint): void;
}

/** One pinned piece of an access: a page range of one area. */
export interface AccessPin {
  readonly area: IoptArea;
  readonly first: number;
  readonly last: number;
}

export class IommufdAccess extends IommufdObject {
  readonly type = OBJ.ACCESS;
  readonly ops: AccessOps;
  ioas: Ioas | null = null;
  iopptAccessId = -1;
  constructor(ctx: IommufdCtx, ops: AccessOps) {
    super(ctx);
    this.ops = ops;
  }
  destroy(): void {
    accessDetach(this);
  }
}

/** iommufd_access_create + attach: an access on an IOAS (users: creator + table). */
export function accessCreate(ctx: IommufdCtx, ops: AccessOps, ioasId: number): IommufdAccess | KernelError {
  const a = ctx.alloc(new IommufdAccess(ctx, ops));
  if (!(a instanceof IommufdAccess)) return a;
  const ioas = getIoas(ctx, ioasId);
  if (!(ioas instanceof Ioas)) {
    ctx.abort(a);
    return ioas;
  }
  const err = accessAttachIoas(a, ioas);
  if (err) {
    ctx.abort(a);
    return err;
  }
  // The calling driver is a user until iommufd_access_destroy.
  a.users++;
  ctx.finalize(a);
  return a;
}

function accessAttachIoas(a: IommufdAccess, ioas: Ioas): KernelError | undefined {
  const id = ioas.iopt.addAccess(a.ops.needsPinPages ? BigInt(PAGE_SIZE) : 1n);
  if (typeof id !== 'number') return id;
  a.iopptAccessId = id;
  a.ioas = ioas;
  (ioas.accesses ??= new Set()).add(a);
  ioas.users++;
  return undefined;
}

function accessDetach(a: IommufdAccess): void {
  const ioas = a.ioas;
  if (!ioas) return;
  a.ops.unmap(a, 0n, ULONG_MAX);
  ioas.iopt.removeAccess(a.iopptAccessId);
  ioas.accesses?.delete(a);
  ioas.users--;
  a.ioas = null;
}

/** iommufd_access_destroy: the driver lets go; the object goes away. */
export function accessDestroy(a: IommufdAccess): void {
  a.users--;
  a.ctx.removeObject(a);
}

/** iommufd_access_replace: move to another IOAS (everything pinned on the old one is dropped). */
export function accessReplaceIoas(a: IommufdAccess, ioasId: number): KernelError | undefined {
  const ioas = getIoas(a.ctx, ioasId);
  if (!(ioas instanceof Ioas)) return ioas;
  if (ioas === a.ioas) return undefined;
  const old = a.ioas;
  const oldId = a.iopptAccessId;
  const id = ioas.iopt.addAccess(a.ops.needsPinPages ? BigInt(PAGE_SIZE) : 1n);
  if (typeof id !== 'number') return id;
  if (old) {
    a.ops.unmap(a, 0n, ULONG_MAX);
    old.iopt.removeAccess(oldId);
    old.accesses?.delete(a);
    old.users--;
  }
  a.iopptAccessId = id;
  a.ioas = ioas;
  (ioas.accesses ??= new Set()).add(a);
  ioas.users++;
  return undefined;
}

/** Walk the contiguous areas covering [iova, last] (iopt_for_each_contig_area). */
function contigAreas(
  ioas: Ioas,
  iova: bigint,
  last: bigint,
): { area: IoptArea; from: bigint; to: bigint }[] | KernelError {
  const out: { area: IoptArea; from: bigint; to: bigint }[] = [];
  let cur = iova;
  for (;;) {
    const area = ioas.iopt.areaAt(cur);
    if (!area?.committed) return kerr('ENOENT', `IOVA 0x${cur.toString(16)} is not mapped`);
    const to = area.last < last ? area.last : last;
    out.push({ area, from: cur, to });
    if (to === last) return out;
    cur = to + 1n;
  }
}

/** iommufd_access_pin_pages: pin [iova, iova+length) and return each page's pfn. */
export function accessPinPages(
  a: IommufdAccess,
  iova: bigint,
  length: bigint,
  write: boolean,
): { pins: AccessPin[]; pfns: number[] } | KernelError {
  if (!a.ops.needsPinPages) return kerr('EINVAL', 'access cannot pin pages');
  if (length === 0n) return kerr('EINVAL', 'length is 0');
  const last = iova + length - 1n;
  if (last > ULONG_MAX) return kerr('EOVERFLOW', 'iova + length overflows');
  const ioas = a.ioas;
  if (!ioas) return kerr('ENOENT', 'access has no IOAS');
  const parts = contigAreas(ioas, iova, last);
  if (!Array.isArray(parts)) return parts;
  const pins: AccessPin[] = [];
  const pfns: number[] = [];
  const undo = (e: KernelError): KernelError => {
    accessUnpin(pins);
    return e;
  };
  for (let i = 0; i < parts.length; i++) {
    const { area, from, to } = parts[i]!;
    if (area.preventAccess) return undo(kerr('EINVAL', 'area is being unmapped'));
    const sb = area.startByteAt(from);
    const eb = area.startByteAt(to);
    // iopt_area_contig_is_aligned: interior boundaries must fall on page boundaries.
    if (
      (i > 0 && sb % BigInt(PAGE_SIZE) !== 0n) ||
      (i < parts.length - 1 && eb % BigInt(PAGE_SIZE) !== BigInt(PAGE_SIZE - 1))
    )
      return undo(kerr('EINVAL', 'areas are not page-aligned at their boundary'));
    if (!(area.iommuProt & (write ? IOMMU_WRITE : IOMMU_READ)))
      return undo(kerr('EPERM', 'area protection refuses the access'));
    const first = Math.floor(Number(sb) / PAGE_SIZE);
    const lastIdx = Math.floor(Number(eb) / PAGE_SIZE);
    const err = pagesHold(area.pages, first, lastIdx, a.ctx.faults);
    if (err) return undo(err);
    area.numAccesses++;
    pins.push({ area, first, last: lastIdx });
    const s = sourceOf(area.pages);
    for (let j = first; j <= lastIdx; j++) pfns.push(s.pfns[j]!);
  }
  return { pins, pfns };
}

export function accessUnpin(pins: readonly AccessPin[]): void {
  for (const p of pins) {
    pagesUnhold(p.area.pages, p.first, p.last);
    p.area.numAccesses--;
  }
}

/** iommufd_access_rw: CPU read/write through the IOAS. */
export function accessRw(
  a: IommufdAccess,
  iova: bigint,
  buf: Uint8Array,
  write: boolean,
): KernelError | undefined {
  if (buf.length === 0) return undefined;
  const ioas = a.ioas;
  if (!ioas) return kerr('ENOENT', 'access has no IOAS');
  const last = iova + BigInt(buf.length) - 1n;
  if (last > ULONG_MAX) return kerr('EOVERFLOW', 'iova + length overflows');
  const parts = contigAreas(ioas, iova, last);
  if (!Array.isArray(parts)) return parts;
  let off = 0;
  for (const { area, from, to } of parts) {
    if (area.preventAccess) return kerr('EINVAL', 'area is being unmapped');
    if (!(area.iommuProt & (write ? IOMMU_WRITE : IOMMU_READ)))
      return kerr('EPERM', 'area protection refuses the access');
    const n = Number(to - from + 1n);
    const err = pagesRw(area.pages, Number(area.startByteAt(from)), buf, off, n, write);
    if (err) return err;
    off += n;
  }
  return undefined;
}

export { areaPageRange };
