// vEVENTQs and HW queues of a vIOMMU: the model of the vEVENTQ half of
// drivers/iommu/iommufd/eventq.c and the HW queue part of viommu.c (research iommufd.md A.19,
// A.20). A vEVENTQ is a bounded queue of driver events read through its own fd; past `depth`
// pending events the next one is replaced by a single LOST_EVENTS header, and sequence numbers
// wrap at INT_MAX. A HW queue pins and *locks* the IOAS range it lives in, so IOAS_UNMAP of it
// is EBUSY until the queue is destroyed; a later-index queue holds a reference on the previous.

import { type KernelError, kerr } from '../core/errno.ts';
import { Viommu } from './hw_pagetable.ts';
import { type IoptArea, ULONG_MAX } from './io-pagetable.ts';
import { type IommufdCtx, type IommufdFile, IommufdObject, OBJ } from './main.ts';
import { pagesHold, pagesUnhold, sourceOf } from './pages.ts';
import { KFile, PAGE_SIZE, type Process } from './process.ts';
import { respond, type Ucmd } from './ucmd.ts';

export const VEVENTQ_FLAG_LOST_EVENTS = 1;
const HDR = 8;
const INT_MAX = 0x7fff_ffff;

interface Vevent {
  readonly flags: number;
  readonly sequence: number;
  readonly data: Uint8Array;
  readonly lost: boolean;
}

export class Veventq extends IommufdObject {
  readonly type = OBJ.VEVENTQ;
  readonly viommu: Viommu;
  readonly eventType: number;
  readonly depth: number;
  readonly deliver: Vevent[] = [];
  numEvents = 0;
  sequence = 0;
  /** Open vEVENTQ fds (each holds a users reference). */
  fileRefs = 0;
  constructor(ctx: IommufdCtx, viommu: Viommu, eventType: number, depth: number) {
    super(ctx);
    this.viommu = viommu;
    this.eventType = eventType;
    this.depth = depth;
  }
  /** iommufd_viommu_report_event for this queue. */
  report(data: Uint8Array): void {
    const lost = this.numEvents === this.depth;
    // Do not add a lost-events header more than once.
    if (lost && this.deliver.some((e) => e.lost)) return;
    const ev: Vevent = {
      flags: lost ? VEVENTQ_FLAG_LOST_EVENTS : 0,
      sequence: this.sequence,
      data: lost ? new Uint8Array(0) : data,
      lost,
    };
    this.sequence = (this.sequence + 1) & INT_MAX;
    if (!lost) this.numEvents++;
    this.deliver.push(ev);
  }
  read(count: number, newest: boolean): Uint8Array | KernelError {
    const out: Uint8Array[] = [];
    let done = 0;
    while (this.deliver.length > 0) {
      const cur = this.deliver[0]!;
      if (done >= count || HDR > count - done) break;
      if (!cur.lost && HDR + cur.data.length > count - done) break;
      const b = new Uint8Array(HDR + cur.data.length);
      const dv = new DataView(b.buffer);
      dv.setUint32(0, cur.flags, true);
      dv.setUint32(4, cur.sequence, true);
      b.set(cur.data, HDR);
      out.push(b);
      done += b.length;
      this.deliver.shift();
      if (!cur.lost) this.numEvents--;
    }
    // Newest kernels refuse a read that cannot take the next event (older ones return 0).
    if (done === 0 && newest && (count < HDR || this.deliver.length > 0))
      return kerr('EINVAL', `read of ${count} bytes cannot take the next vEVENT`);
    const r = new Uint8Array(done);
    let o = 0;
    for (const b of out) {
      r.set(b, o);
      o += b.length;
    }
    return r;
  }
  destroy(): void {
    this.deliver.length = 0;
    this.numEvents = 0;
    const i = this.viommu.veventqs.indexOf(this);
    if (i >= 0) this.viommu.veventqs.splice(i, 1);
    this.viommu.users--;
  }
}

export class VeventqFile extends KFile {
  readonly kind = 'iommufd-veventq';
  readonly q: Veventq;
  readonly ictxFile: IommufdFile;
  constructor(q: Veventq, ictxFile: IommufdFile) {
    super();
    this.q = q;
    this.ictxFile = ictxFile;
  }
  override read(_p: Process, count: number): Uint8Array | KernelError {
    return this.q.read(count, this.q.ctx.host.version === 'newest');
  }
  override write(): number | KernelError {
    return kerr('EINVAL', 'a vEVENTQ cannot be written');
  }
  release(): void {
    this.q.users--;
    this.q.fileRefs--;
    this.ictxFile.put();
  }
}

export function veventqAllocIoctl(u: Ucmd, ictxFile: IommufdFile): number | KernelError {
  const c = u.cmd;
  const type = c['type'] as number;
  if (c['flags'] !== 0 || c['__reserved'] !== 0 || type === 0)
    return kerr('EOPNOTSUPP', 'IOMMU_VEVENTQ_ALLOC: flags, __reserved or type DEFAULT');
  const depth = c['veventq_depth'] as number;
  if (depth === 0) return kerr('EINVAL', 'veventq_depth is 0');
  if (u.ctx.host.version === 'newest' && depth > 1 << 19) return kerr('EINVAL', 'veventq_depth too large');
  const v = u.ctx.get(c['viommu_id'] as number, OBJ.VIOMMU);
  if (!(v instanceof Viommu)) return v as KernelError;
  if (v.veventqs.some((q) => q.eventType === type))
    return kerr('EEXIST', 'a vEVENTQ of this type exists on the vIOMMU');
  const q = u.ctx.alloc(new Veventq(u.ctx, v, type, depth));
  if (!(q instanceof Veventq)) return q;
  v.users++;
  v.veventqs.push(q);
  if (u.ctx.fail('anon_inode_getfile')) {
    u.ctx.abortAndDestroy(q);
    return kerr('ENOMEM', 'anon_inode_getfile: injected failure');
  }
  const file = new VeventqFile(q, ictxFile);
  const fd = u.p.installFd(file);
  q.users++;
  q.fileRefs++;
  ictxFile.get();
  const err = respond(u, { out_veventq_id: q.id, out_veventq_fd: fd });
  if (err) {
    u.p.close(fd);
    u.ctx.abortAndDestroy(q);
    return err;
  }
  u.ctx.finalize(q);
  return 0;
}

/** iommufd_viommu_report_event: EOPNOTSUPP when the vIOMMU has no queue of that type. */
export function viommuReportEvent(v: Viommu, type: number, data: Uint8Array): KernelError | undefined {
  const q = v.veventqs.find((x) => x.eventType === type);
  if (!q) return kerr('EOPNOTSUPP', 'no vEVENTQ of that type');
  q.report(data);
  return undefined;
}

// ---- HW queues -------------------------------------------------------------------------------------

export class HwQueue extends IommufdObject {
  readonly type = OBJ.HW_QUEUE;
  readonly viommu: Viommu;
  index = -1;
  prev: HwQueue | null = null;
  pins: { area: IoptArea; first: number; last: number }[] = [];
  constructor(ctx: IommufdCtx, viommu: Viommu) {
    super(ctx);
    this.viommu = viommu;
  }
  destroy(): void {
    if (this.index >= 0) this.viommu.drv.hwQueueDestroy?.(this.index);
    if (this.prev) this.prev.users--;
    for (const p of this.pins) {
      pagesUnhold(p.area.pages, p.first, p.last);
      p.area.numLocks--;
    }
    this.pins = [];
    this.viommu.users--;
  }
}

export function hwQueueAllocIoctl(u: Ucmd): number | KernelError {
  const c = u.cmd;
  const type = c['type'] as number;
  if (c['flags'] !== 0 || type === 0)
    return kerr('EOPNOTSUPP', 'IOMMU_HW_QUEUE_ALLOC: flags or type DEFAULT');
  const length = c['length'] as bigint;
  const iova = c['nesting_parent_iova'] as bigint;
  if (length === 0n) return kerr('EINVAL', 'length is 0');
  if (iova + length - 1n > ULONG_MAX) return kerr('EOVERFLOW', 'iova + length overflows');
  if (u.ctx.fail('hw_queue_pages')) return kerr('ENOMEM', 'page array allocation failed');
  const v = u.ctx.get(c['viommu_id'] as number, OBJ.VIOMMU);
  if (!(v instanceof Viommu)) return v as KernelError;
  if (!v.drv.hwQueueInit || !(v.drv.hwQueueSupported?.(type) ?? false))
    return kerr('EOPNOTSUPP', `no HW queue of type 0x${type.toString(16)}`);
  const q = u.ctx.alloc(new HwQueue(u.ctx, v));
  if (!(q instanceof HwQueue)) return q;
  v.users++;
  // iopt_pin_pages(lock_area): pin and lock the whole range in the parent's IOAS.
  const iopt = v.hwpt.ioas.iopt;
  const last = iova + length - 1n;
  let cur = iova;
  let basePa = -1;
  let prevPfn = -1;
  for (;;) {
    const area = iopt.areaAt(cur);
    if (!area?.committed) {
      u.ctx.abortAndDestroy(q);
      return kerr('ENOENT', `IOVA 0x${cur.toString(16)} is not mapped in the parent IOAS`);
    }
    const to = area.last < last ? area.last : last;
    const first = Math.floor(Number(area.startByteAt(cur)) / PAGE_SIZE);
    const lastIdx = Math.floor(Number(area.startByteAt(to)) / PAGE_SIZE);
    const err = pagesHold(area.pages, first, lastIdx, u.ctx.faults);
    if (err) {
      u.ctx.abortAndDestroy(q);
      return err;
    }
    area.numLocks++;
    q.pins.push({ area, first, last: lastIdx });
    const pfns = sourceOf(area.pages).pfns;
    for (let i = first; i <= lastIdx; i++) {
      if (prevPfn >= 0 && pfns[i] !== prevPfn + 1) {
        u.ctx.abortAndDestroy(q);
        return kerr('EFAULT', 'the HW queue memory is not physically contiguous');
      }
      prevPfn = pfns[i]!;
    }
    if (basePa < 0) basePa = pfns[first]! * PAGE_SIZE + (Number(area.startByteAt(cur)) % PAGE_SIZE);
    if (to === last) break;
    cur = to + 1n;
  }
  const r = v.drv.hwQueueInit(c['index'] as number, basePa, iova);
  if (!('prev' in r)) {
    u.ctx.abortAndDestroy(q);
    return r;
  }
  q.index = c['index'] as number;
  if (r.prev !== null) {
    for (const o of u.ctx.objects.values())
      if (o instanceof HwQueue && o.viommu === v && o.index === r.prev && o !== q) {
        q.prev = o;
        o.users++;
      }
  }
  const err = respond(u, { out_hw_queue_id: q.id });
  if (err) {
    u.ctx.abortAndDestroy(q);
    return err;
  }
  u.ctx.finalize(q);
  return 0;
}
