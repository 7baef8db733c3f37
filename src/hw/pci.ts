// PCI endpoints with the PASID capability and an optional ATS device-TLB, and their DMA engine
// (SCENARIO.md family 3 `dma`; vtd-model.md B.1 request model, C.1 device-TLB, C.3 device-TLB
// invalidation sizes).
//
// A DMA goes page by page through the IOMMU's translate entry point and moves bytes to or from
// emulated memory. Faults come back as values. A write without PASID to 0xFEE00000-0xFEEFFFFF
// is an interrupt request, not a DMA. Model decisions:
// - a device without the PASID capability, or a PASID at or beyond its max_pasids, cannot
//   express the request: the caller gets EINVAL (nothing reaches the IOMMU);
// - a translated address that memory does not back completes as an Unsupported Request: the
//   result is `{abort: ...}`, not an IOMMU fault (the IOMMU translated it; nothing backs it);
// - an ATS device caches successful translation completions (4 KiB granules, with the R/W/X
//   the IOMMU granted) and then issues translated requests; device-TLB invalidations from the
//   IOMMU remove them.

import { KernelError } from '../core/errno.ts';
import type { Tracer } from '../core/trace.ts';
import type { PhysicalMemory } from './memory.ts';
import * as faults from './vtd/faults.ts';
import type { AtsEndpoint, VtdIommu } from './vtd/iommu.ts';
import * as iommuMod from './vtd/iommu.ts';

const { ACCESS_R, ACCESS_W, ACCESS_X, ACCESS_ATOMIC } = faults;
const { XLATE_FAULT, XLATE_INTERRUPT, XLATE_ABORT } = iommuMod;

export type DmaAccess = 'read' | 'write' | 'exec' | 'atomic';

export interface DmaRequest {
  /** Omitted: a request without PASID. */
  pasid?: number;
  addr: bigint | number;
  access: DmaAccess;
  privileged?: boolean;
  /** Bytes to write (a write moves them). */
  data?: Uint8Array;
  /** Bytes to read (a read returns them). */
  length?: number;
}

export interface DmaFault {
  reason: number;
  cond: string;
  text: string;
  recorded: boolean;
  iommu: string;
  sid: number;
  pasid?: number;
  addr: bigint;
  access: DmaAccess;
  privileged: boolean;
  /** Bytes moved before the faulting page (a DMA crossing pages stops at the first fault). */
  done: number;
}

export type DmaResult =
  | { hpa: bigint; data?: Uint8Array }
  | { fault: DmaFault }
  | { interrupt: { addr: bigint; data: number } }
  | { abort: { reason: 'unsupported-request'; addr: bigint; hpa?: bigint; done: number } };

export interface PciDeviceOptions {
  bdf: string;
  sid: number;
  /** PASID capability width; 0 = no PASID capability. */
  pasidBits: number;
  /** Device-TLB (ATS). */
  ats: boolean;
  /** 2^pasidBits capped by the IOMMU's PASID width (0 without either). */
  maxPasids: number;
}

const TWO32 = 4294967296;
const NO_PASID = -1;

function accessBits(a: DmaAccess): number {
  switch (a) {
    case 'read':
      return ACCESS_R;
    case 'write':
      return ACCESS_W;
    case 'exec':
      return ACCESS_R | ACCESS_X;
    default:
      return ACCESS_ATOMIC;
  }
}

/** One device-TLB entry: a 4 KiB page's host frame and the permissions the IOMMU granted. */
interface AtcEntry {
  frame: number;
  perm: number;
}

export class PciDevice implements AtsEndpoint {
  readonly bdf: string;
  readonly sid: number;
  readonly pasidBits: number;
  readonly ats: boolean;
  readonly maxPasids: number;
  readonly iommu: VtdIommu;
  readonly mem: PhysicalMemory;
  tracer: Tracer | null = null;
  /** Device-TLB: PASID (-1 = none) -> 4 KiB page number -> entry. */
  private readonly atc = new Map<number, Map<number, AtcEntry>>();
  /** Counters. */
  atcHits = 0;
  atcMisses = 0;
  atcInvalidations = 0;
  readonly pageResponses: { pasid: number | undefined; prgi: number; lpig: boolean; rc: number }[] = [];

  constructor(o: PciDeviceOptions, iommu: VtdIommu, mem: PhysicalMemory) {
    this.bdf = o.bdf;
    this.sid = o.sid;
    this.pasidBits = o.pasidBits;
    this.ats = o.ats;
    this.maxPasids = o.maxPasids;
    this.iommu = iommu;
    this.mem = mem;
    iommu.attachEndpoint(this);
  }

  // ---- AtsEndpoint ----

  invalidateDevTlb(pasid: number, allPasids: boolean, firstPage: number, pages: number): void {
    const end = firstPage + pages;
    const drop = (m: Map<number, AtcEntry>) => {
      for (const vpn of m.keys()) {
        if (vpn >= firstPage && vpn < end) {
          m.delete(vpn);
          this.atcInvalidations++;
        }
      }
    };
    if (allPasids) for (const m of this.atc.values()) drop(m);
    else {
      const m = this.atc.get(pasid);
      if (m !== undefined) drop(m);
    }
  }

  pageGroupResponse(resp: { pasid: number | undefined; prgi: number; lpig: boolean; rc: number }): void {
    this.pageResponses.push(resp);
  }

  /** Device-TLB entries held (for inspection and tests). */
  atcSize(): number {
    let n = 0;
    for (const m of this.atc.values()) n += m.size;
    return n;
  }

  /** Drops the whole device-TLB (what a function-level reset does). */
  resetAtc(): void {
    this.atc.clear();
  }

  // ---- DMA ----

  /** Performs a DMA. Returns the result as a value; EINVAL for a request the device cannot express. */
  dma(req: DmaRequest): DmaResult | KernelError {
    const pasid = req.pasid ?? NO_PASID;
    if (req.pasid !== undefined) {
      if (this.pasidBits === 0) return new KernelError('EINVAL', `${this.bdf} has no PASID capability`);
      if (!Number.isInteger(pasid) || pasid < 0 || pasid >= this.maxPasids) {
        return new KernelError(
          'EINVAL',
          `PASID ${req.pasid} is beyond ${this.bdf}'s max_pasids ${this.maxPasids}`,
        );
      }
    }
    const addr = typeof req.addr === 'bigint' ? req.addr : BigInt(req.addr);
    if (addr < 0n || addr >= 1n << 64n)
      return new KernelError('EINVAL', `DMA address 0x${addr.toString(16)} is not 64-bit`);
    const access = accessBits(req.access);
    const priv = req.privileged === true;
    const isWrite = (access & ACCESS_W) !== 0;
    const data = req.data;
    let length: number;
    if (isWrite && data !== undefined) length = data.length;
    else if (!isWrite && req.length !== undefined) {
      if (!Number.isInteger(req.length) || req.length < 0)
        return new KernelError('EINVAL', `DMA length ${req.length}`);
      length = req.length;
    } else length = 0;
    if (addr + BigInt(length) > 1n << 64n)
      return new KernelError('EINVAL', 'DMA crosses the top of the address space');
    const out = isWrite ? undefined : new Uint8Array(length);
    let firstHpa: bigint | undefined;
    let done = 0;
    // at least one translation, even for a zero-length request
    do {
      const a = addr + BigInt(done);
      const hi = Number(a >> 32n);
      const lo = Number(a & 0xffffffffn);
      const inPage = 4096 - (lo & 0xfff);
      const n = Math.min(inPage, length - done);
      const h = this.translateOne(pasid, hi, lo, access, priv);
      if (h === XLATE_INTERRUPT) {
        const word =
          data !== undefined && data.length >= 4
            ? new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true)
            : 0;
        this.trace({
          kind: 'dma',
          what: 'interrupt',
          sid: this.sid,
          addr: `0x${a.toString(16)}`,
          data: word,
        });
        return { interrupt: { addr: a, data: word } };
      }
      if (h === XLATE_ABORT) return { abort: { reason: 'unsupported-request', addr: a, done } };
      if (h === XLATE_FAULT) {
        const f = this.iommu.lastFault!;
        const fault: DmaFault = {
          reason: f.reason,
          cond: f.cond,
          text: f.text,
          recorded: f.recorded,
          iommu: this.iommu.name,
          sid: this.sid,
          addr: a,
          access: req.access,
          privileged: priv,
          done,
        };
        if (req.pasid !== undefined) fault.pasid = pasid;
        return { fault };
      }
      const hpa = BigInt(h);
      firstHpa ??= hpa;
      if (n > 0) {
        if (!this.mem.backed(h, n)) return { abort: { reason: 'unsupported-request', addr: a, hpa, done } };
        if (isWrite) this.mem.writeFrom(h, data!.subarray(done, done + n));
        else this.mem.readInto(h, out!.subarray(done, done + n));
      }
      done += n;
    } while (done < length);
    this.trace({
      kind: 'dma',
      what: req.access,
      sid: this.sid,
      ...(req.pasid !== undefined ? { pasid } : {}),
      addr: `0x${addr.toString(16)}`,
      hpa: `0x${firstHpa!.toString(16)}`,
      length,
    });
    return out !== undefined && req.length !== undefined ? { hpa: firstHpa!, data: out } : { hpa: firstHpa! };
  }

  /**
   * Sends a page request (PCIe PRI) for the page holding `addr`, as an ATS device does after a
   * translation completion without the permission it needs. Returns 'queued', 'overflow' (the
   * IOMMU's page request queue was full) or the fault the IOMMU reported.
   */
  pageRequest(req: {
    pasid?: number;
    addr: bigint | number;
    access: DmaAccess;
    privileged?: boolean;
    lpig?: boolean;
    prgi?: number;
  }): 'queued' | 'overflow' | { fault: DmaFault } | KernelError {
    if (!this.ats) return new KernelError('EINVAL', `${this.bdf} has no ATS/PRI capability`);
    const pasid = req.pasid ?? NO_PASID;
    if (req.pasid !== undefined && (this.pasidBits === 0 || pasid < 0 || pasid >= this.maxPasids)) {
      return new KernelError('EINVAL', `PASID ${req.pasid} is not usable by ${this.bdf}`);
    }
    const a = typeof req.addr === 'bigint' ? req.addr : BigInt(req.addr);
    const priv = req.privileged === true;
    const r = this.iommu.pageRequest(
      this.sid,
      pasid,
      Number((a >> 32n) & 0xffffffffn),
      Number(a & 0xffffffffn),
      accessBits(req.access),
      priv,
      req.lpig ?? true,
      req.prgi ?? 0,
    );
    if (typeof r === 'string') return r;
    const f = this.iommu.lastFault!;
    const fault: DmaFault = {
      reason: f.reason,
      cond: f.cond,
      text: f.text,
      recorded: f.recorded,
      iommu: this.iommu.name,
      sid: this.sid,
      addr: a,
      access: req.access,
      privileged: priv,
      done: 0,
    };
    if (req.pasid !== undefined) fault.pasid = pasid;
    return { fault };
  }

  /** One page's translation: through the device-TLB for an ATS device, else an untranslated request. */
  private translateOne(pasid: number, hi: number, lo: number, access: number, priv: boolean): number {
    const iommu = this.iommu;
    if (!this.ats || !iommu.translationEnabled || (pasid === NO_PASID && hi === 0 && lo >>> 20 === 0xfee)) {
      return iommu.translate64(this.sid, pasid, hi, lo, access, priv);
    }
    // ATS: device-TLB first; on a miss, a translation request fills it
    const vpn = hi * 1048576 + (lo >>> 12);
    let m = this.atc.get(pasid);
    let e = m?.get(vpn);
    if (e === undefined || (e.perm & access) !== access) {
      this.atcMisses++;
      const h = iommu.translateAts(this.sid, pasid, hi, lo, access, priv);
      if (h < 0) return h;
      e = { frame: Math.floor(h / 4096), perm: iommu.atsPerm };
      if (m === undefined) {
        m = new Map();
        this.atc.set(pasid, m);
      }
      m.set(vpn, e);
    } else this.atcHits++;
    const th = e.frame * 4096;
    const r = iommu.translateTranslated(this.sid, pasid, Math.floor(th / TWO32), th >>> 0, access, priv);
    return r < 0 ? r : r + (lo & 0xfff);
  }

  private trace(ev: { kind: string; what: string; [k: string]: unknown }): void {
    this.tracer?.(ev);
  }
}
