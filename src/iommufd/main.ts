// The iommufd context and its objects: the model of drivers/iommu/iommufd/main.c (research
// iommufd.md A.0, A.1, A.9, A.10, B.1). One IommufdCtx per open of /dev/iommu; objects live in
// an ID table with u32 IDs in [1, 2^31 - 1], lowest free first (xa_alloc with
// XA_FLAGS_ALLOC1). An ID is reserved at allocation and published at finalize, so a failed
// ioctl releases its ID and leaves nothing behind (iommufd_object_abort_and_destroy). Each
// object counts its `users`; DESTROY succeeds only on an object nobody else references
// (refcount_dec_if_one, else EBUSY). Closing the context destroys objects leaf-first until
// none are left, as iommufd_fops_release does.

import { type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { invariant } from '../core/invariants.ts';
import { IdTable } from '../ioasid/id-table.ts';
import type { IommuGroup } from '../iommu/core.ts';
import { KFile, MAP_SHARED, MemFile, PAGE_SIZE, PROT_EXEC, type Process } from './process.ts';

export const OBJ = {
  ANY: 'ANY',
  DEVICE: 'DEVICE',
  HWPT_PAGING: 'HWPT_PAGING',
  HWPT_NESTED: 'HWPT_NESTED',
  IOAS: 'IOAS',
  ACCESS: 'ACCESS',
  FAULT: 'FAULT',
  VIOMMU: 'VIOMMU',
  VDEVICE: 'VDEVICE',
  VEVENTQ: 'VEVENTQ',
  HW_QUEUE: 'HW_QUEUE',
  SELFTEST: 'SELFTEST',
} as const;
export type ObjType = Exclude<(typeof OBJ)[keyof typeof OBJ], 'ANY'>;

/** IOPT_PAGES_ACCOUNT_*: how pinned pages are charged. */
export const ACCOUNT_NONE = 0;
export const ACCOUNT_USER = 1;
export const ACCOUNT_MM = 2;

/** struct iommufd_object. */
export abstract class IommufdObject {
  abstract readonly type: ObjType;
  readonly ctx: IommufdCtx;
  id = 0;
  /** refcount users: 1 for the table's own reference. */
  users = 1;
  /** False until finalize: lookups by ID do not see it. */
  published = false;
  constructor(ctx: IommufdCtx) {
    this.ctx = ctx;
  }
  /** The type's destroy op: drop every reference this object holds. */
  abstract destroy(): void;
}

/** Per-context bookkeeping of an iommu_group (struct iommufd_group). */
export interface IommufdGroupAttach {
  hwpt: import('./hw_pagetable.ts').HwPagetable;
  /** idev object id → device. */
  readonly devices: Map<number, import('./device.ts').IommufdDevice>;
}

export class IommufdGroup {
  readonly group: IommuGroup;
  readonly pasidAttach = new Map<number, IommufdGroupAttach>();
  /** Devices of this ctx bound in the group. */
  users = 0;
  constructor(group: IommuGroup) {
    this.group = group;
  }
}

/** What a context needs from the host kernel around it. */
export interface IommufdCtxHost {
  readonly faults: FaultInjector;
  readonly testCmd: boolean;
  /** Newest-kernel behaviour by default; 'v6.8' selects the older errno of [ver] rules. */
  readonly version: 'newest' | 'v6.8';
}

const ID_MIN = 1;
const ID_MAX = 0x7fff_ffff;

export class IommufdCtx {
  readonly host: IommufdCtxHost;
  /** The process that opened /dev/iommu (file credentials). */
  readonly opener: Process;
  private readonly ids = new IdTable(false);
  readonly objects = new Map<number, IommufdObject>();
  accountMode: number = ACCOUNT_USER;
  vfioIoas: import('./ioas.ts').Ioas | null = null;
  readonly groups = new Map<IommuGroup, IommufdGroup>();
  /** IDs of destroyed vDEVICEs: reserved (DESTROY gives ENOENT) until the context closes. */
  readonly tombstones = new Set<number>();
  /** The /dev/iommu file of this context (other files take references on it). */
  file: IommufdFile | null = null;
  /** Driver mmap regions (ictx->mt_mmap): offset → region. */
  readonly mmapRegions = new Map<number, { length: number; pfns: Int32Array; owner: IommufdObject }>();
  /** Live mmaps of each region owner (each holds a users reference). */
  readonly mmapRefs = new Map<IommufdObject, number>();
  /** Test-op state: the pin batch size (IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT). */
  tempMemoryLimit = 65536;
  /** VFIO compat: type1 (v1) mode turns large pages off on the compat IOAS. */
  closed = false;

  constructor(host: IommufdCtxHost, opener: Process) {
    this.host = host;
    this.opener = opener;
  }

  get faults(): FaultInjector {
    return this.host.faults;
  }

  fail(site: string): boolean {
    const f = this.host.faults;
    return f.armed && f.shouldFail(site);
  }

  /** iommufd_object_alloc: reserve the lowest free ID (not yet visible to lookups). */
  alloc<T extends IommufdObject>(obj: T): T | KernelError {
    if (this.fail('iommufd_object_alloc')) return kerr('ENOMEM', 'iommufd_object_alloc: allocation failed');
    const id = this.ids.lowestFree(ID_MIN, ID_MAX);
    if (id < 0) return kerr('ENOSPC', 'iommufd: no free object ID');
    this.ids.insert(id);
    obj.id = id;
    this.objects.set(id, obj);
    return obj;
  }

  /** iommufd_object_finalize: publish. */
  finalize(obj: IommufdObject): void {
    invariant(this.objects.get(obj.id) === obj && !obj.published, 'iommufd_object_finalize: not reserved');
    obj.published = true;
  }

  /** iommufd_object_abort: release the ID of an object that never got published or built. */
  abort(obj: IommufdObject): void {
    invariant(this.objects.get(obj.id) === obj, 'iommufd_object_abort: not in the table');
    this.objects.delete(obj.id);
    const ch = this.ids.chunkOf(obj.id);
    if (ch) this.ids.remove(ch, obj.id);
  }

  /** iommufd_object_abort_and_destroy: undo a partly built object. */
  abortAndDestroy(obj: IommufdObject): void {
    obj.destroy();
    this.abort(obj);
  }

  /**
   * iommufd_get_object: a published object of `type` (or any type). The kernel's lookup is a
   * fault-injection site (fail_iommufd), failing as a missing object would.
   */
  get(id: number, type: ObjType | 'ANY'): IommufdObject | KernelError {
    if (this.fail('iommufd_get_object')) return kerr('ENOENT', 'iommufd_get_object: injected failure');
    const o = this.objects.get(id);
    if (!o?.published) return kerr('ENOENT', `no object with ID ${id}`);
    if (type !== 'ANY' && o.type !== type)
      return kerr('ENOENT', `object ${id} is a ${o.type}, not a ${type}`);
    return o;
  }

  /** iommufd_object_remove via IOMMU_DESTROY: only an unreferenced object goes. */
  destroyId(id: number): KernelError | undefined {
    const o = this.get(id, 'ANY');
    if (!(o instanceof IommufdObject)) return o;
    if (o.users !== 1) return kerr('EBUSY', `object ${id} (${o.type}) is in use (users ${o.users})`);
    this.removeObject(o);
    return undefined;
  }

  /** Take an object out of the table and run its destroy op (its users must be 1). */
  removeObject(o: IommufdObject): void {
    invariant(o.users === 1, `iommufd: destroying ${o.type} ${o.id} with users ${o.users}`);
    o.users = 0;
    this.objects.delete(o.id);
    const ch = this.ids.chunkOf(o.id);
    if (ch) this.ids.remove(ch, o.id);
    if (this.vfioIoas === (o as unknown)) this.vfioIoas = null;
    o.destroy();
  }

  /** Drop a reference; destroy the object if only the table's remains (iommufd_object_put_and_try_destroy). */
  putAndTryDestroy(o: IommufdObject): void {
    o.users--;
    if (o.users === 1 && o.published && this.objects.get(o.id) === o) this.removeObject(o);
  }

  /** Group bookkeeping shared by the devices of one iommu_group. */
  getGroup(g: IommuGroup): IommufdGroup {
    let ig = this.groups.get(g);
    if (!ig) {
      ig = new IommufdGroup(g);
      this.groups.set(g, ig);
    }
    return ig;
  }

  /** iommufd_ctx_alloc_mmap: the lowest free page-aligned offset from PAGE_SIZE up. */
  allocMmap(owner: IommufdObject, pfns: Int32Array): number {
    const length = pfns.length * PAGE_SIZE;
    let off = PAGE_SIZE;
    for (const [o, r] of [...this.mmapRegions].sort((a, b) => a[0] - b[0])) {
      if (off + length <= o) break;
      off = Math.max(off, o + r.length);
    }
    this.mmapRegions.set(off, { length, pfns, owner });
    return off;
  }

  /** iommufd_fops_mmap: only a whole region, shared, not executable. */
  mmapRegion(offset: number, length: number, prot: number, flags: number): MemFile | KernelError {
    if (prot & PROT_EXEC) return kerr('EPERM', 'iommufd mmap cannot be executable');
    if (!(flags & MAP_SHARED)) return kerr('EINVAL', 'iommufd mmap must be MAP_SHARED');
    let hit: { length: number; pfns: Int32Array; owner: IommufdObject } | undefined;
    let start = -1;
    for (const [o, r] of this.mmapRegions)
      if (offset >= o && offset < o + r.length) {
        hit = r;
        start = o;
      }
    if (!hit) return kerr('ENXIO', `no mmap region at offset 0x${offset.toString(16)}`);
    if (start !== offset || length !== hit.length) return kerr('ENXIO', 'only a whole region can be mapped');
    const region = hit;
    const phys = this.opener.host.phys;
    const m = new MemFile(phys, 'iommufd-mmap');
    m.truncate(length);
    for (let i = 0; i < region.pfns.length; i++) {
      phys.get(region.pfns[i]!);
      m.pages[i] = region.pfns[i]!;
    }
    // Each live mapping holds a reference on the region's owner.
    region.owner.users++;
    this.mmapRefs.set(region.owner, (this.mmapRefs.get(region.owner) ?? 0) + 1);
    m.onRelease = () => {
      region.owner.users--;
      this.mmapRefs.set(region.owner, (this.mmapRefs.get(region.owner) ?? 1) - 1);
    };
    return m;
  }

  /** iommufd_fops_release: destroy leaf-first until nothing is left. */
  release(): void {
    this.closed = true;
    for (;;) {
      if (this.objects.size === 0) break;
      let destroyed = 0;
      for (const o of [...this.objects.values()]) {
        if (this.objects.get(o.id) !== o) continue;
        if (o.users !== 1) continue;
        this.removeObject(o);
        destroyed++;
      }
      invariant(destroyed > 0, 'iommufd_fops_release: objects left that are still referenced');
    }
    this.vfioIoas = null;
  }

  /** The B.1 reference graph must explain every users count (debug check). */
  checkInvariants(): void {
    for (const [id, o] of this.objects) {
      invariant(o.id === id, 'iommufd: object ID matches its slot');
      invariant(o.users >= 1, 'iommufd: live object has users >= 1');
      invariant(this.ids.has(id), 'iommufd: object ID is allocated');
    }
  }
}

/** The file of an open /dev/iommu. Accesses, fault queues and bound devices keep it open. */
export class IommufdFile extends KFile {
  readonly kind = 'iommufd';
  readonly ctx: IommufdCtx;
  /** References from other files (access fds, fault fds, bound VFIO devices): get_file(). */
  extraRefs = 0;
  constructor(ctx: IommufdCtx) {
    super();
    this.ctx = ctx;
    ctx.file = this;
  }
  get(): void {
    this.extraRefs++;
  }
  put(): void {
    if (--this.extraRefs === 0 && this.fdRefs === 0) this.ctx.release();
  }
  release(): void {
    if (this.extraRefs === 0) this.ctx.release();
  }
  override mmapFile(
    _p: Process,
    offset: number,
    length: number,
    prot: number,
    flags: number,
  ): MemFile | KernelError {
    return this.ctx.mmapRegion(offset, length, prot, flags);
  }
}
