// The page request queue of a VT-d unit as the Intel driver runs it: the model of
// drivers/iommu/intel/prq.c (vtd-model.md E). At bring-up (intel_iommu_enable_prq) the driver
// gives the unit a 64 KiB queue (PQA with PRQ_ORDER 4, PQH = PQT = 0) and unmasks the
// page-request event; on the event (prq_event_thread) it clears PRS.PPR, walks the 32-byte
// descriptors from PQH to PQT, answers malformed requests itself (handle_bad_prq_event),
// drops stop markers, reports the others to the IOMMU core (intel_prq_report ->
// iommu_report_device_fault, which answers INVALID when no domain takes page faults at that
// PASID), moves PQH to the tail and clears PRS.PRO once the queue is empty. Responses go back
// through the invalidation queue as page group response descriptors
// (intel_iommu_page_response).

import type { KernelError } from '../core/errno.ts';
import { kerr } from '../core/errno.ts';
import type { IommuDevice, IommuPageFault } from './core.ts';
import { type IntelIommu, QI_PGRP_RESP_TYPE } from './intel-dmar.ts';

export const DMAR_PQH_REG = 0xc0;
export const DMAR_PQT_REG = 0xc8;
export const DMAR_PQA_REG = 0xd0;
export const DMAR_PRS_REG = 0xdc;
export const DMAR_PECTL_REG = 0xe0;
export const DMAR_PEDATA_REG = 0xe4;
export const DMAR_PEADDR_REG = 0xe8;
export const DMAR_PEUADDR_REG = 0xec;
export const DMA_PRS_PPR = 1 << 0;
export const DMA_PRS_PRO = 1 << 1;
/** PRQ_ORDER: 2^4 pages of descriptors. */
export const PRQ_ORDER = 4;
const PRQ_SIZE = (1 << PRQ_ORDER) * 4096;
const PRQ_RING_MASK = PRQ_SIZE - 0x20;

// struct iommu_fault_page_request flags
export const IOMMU_FAULT_PAGE_REQUEST_PASID_VALID = 1 << 0;
export const IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE = 1 << 1;
export const IOMMU_FAULT_PAGE_REQUEST_PRIV_DATA = 1 << 2;
export const IOMMU_FAULT_PAGE_REQUEST_NEEDS_PASID = 1 << 3;
// perm
export const IOMMU_FAULT_PERM_READ = 1 << 0;
export const IOMMU_FAULT_PERM_WRITE = 1 << 1;
export const IOMMU_FAULT_PERM_EXEC = 1 << 2;
export const IOMMU_FAULT_PERM_PRIV = 1 << 3;
// enum iommu_page_response_code
export const IOMMU_PAGE_RESP_SUCCESS = 0;
export const IOMMU_PAGE_RESP_INVALID = 1;
export const IOMMU_PAGE_RESP_FAILURE = 2;

/** A page request descriptor as the handler decodes it (struct page_req_dsc). */
interface PageReq {
  pasidPresent: boolean;
  privDataPresent: boolean;
  rid: number;
  pasid: number;
  exeReq: boolean;
  pmReq: boolean;
  rdReq: boolean;
  wrReq: boolean;
  lpig: boolean;
  prgIndex: number;
  addr: bigint;
}

/** What the PRQ handler needs from the driver. */
export interface PrqOwner {
  /** device_rbtree_find: the probed ATS-capable device with this requester ID. */
  deviceByRid(iommu: IntelIommu, rid: number): IommuDevice | undefined;
  /** iommu_report_device_fault; an error means no domain took it. */
  reportDeviceFault(dev: IommuDevice, fault: IommuPageFault): KernelError | undefined;
}

/** The PRQ of one unit. */
export class IntelPrq {
  readonly iommu: IntelIommu;
  /** First frame of the queue (0: not enabled). */
  prqFn = 0;
  /** Page requests handled, and the ones answered as bad (statistics). */
  handled = 0;
  bad = 0;
  private owner: PrqOwner | null = null;
  constructor(iommu: IntelIommu) {
    this.iommu = iommu;
  }

  /** intel_iommu_enable_prq (with the page-request event's interrupt set up). */
  enable(owner: PrqOwner): KernelError | undefined {
    const iommu = this.iommu;
    const f = iommu.frames.allocFrames(1 << PRQ_ORDER);
    if (f === 0) return kerr('ENOMEM', `IOMMU: ${iommu.name}: Failed to allocate page request queue`);
    this.prqFn = f;
    this.owner = owner;
    iommu.writeq(DMAR_PQH_REG, 0n);
    iommu.writeq(DMAR_PQT_REG, 0n);
    iommu.writeq(DMAR_PQA_REG, BigInt(f * 4096) | BigInt(PRQ_ORDER));
    const prev = iommu.unit.onMsi;
    iommu.unit.onMsi = (m) => {
      if (m.source === 'page-request') this.eventThread();
      prev?.(m);
    };
    iommu.writel(DMAR_PEDATA_REG, 0x4100 + iommu.seqId);
    iommu.writel(DMAR_PEADDR_REG, 0xfee00000);
    iommu.writel(DMAR_PEUADDR_REG, 0);
    iommu.writel(DMAR_PECTL_REG, 0);
    return undefined;
  }

  private readDesc(off: number): PageReq {
    const mem = this.iommu.mem;
    const a = this.prqFn * 4096 + off;
    const w0 = mem.read32(a);
    const w1 = mem.read32(a + 4);
    const w2 = mem.read32(a + 8);
    const w3 = mem.read32(a + 12);
    return {
      pasidPresent: ((w0 >>> 8) & 1) === 1,
      privDataPresent: ((w0 >>> 9) & 1) === 1,
      rid: w0 >>> 16,
      pasid: w1 & 0xfffff,
      exeReq: ((w1 >>> 20) & 1) === 1,
      pmReq: ((w1 >>> 21) & 1) === 1,
      rdReq: (w2 & 1) === 1,
      wrReq: ((w2 >>> 1) & 1) === 1,
      lpig: ((w2 >>> 2) & 1) === 1,
      prgIndex: (w2 >>> 3) & 0x1ff,
      addr: (BigInt(w3 >>> 0) << 32n) | BigInt((w2 & 0xfffff000) >>> 0),
    };
  }

  /** handle_bad_prq_event: only the last request of a group gets an answer. */
  private badEvent(req: PageReq, code: number): void {
    this.bad++;
    if (!req.lpig) return;
    this.submitResponse(req.rid, req.pasidPresent, req.pasid, code, req.prgIndex, true);
  }

  /** A page group response descriptor through the invalidation queue. */
  submitResponse(
    rid: number,
    pasidPresent: boolean,
    pasid: number,
    code: number,
    prgi: number,
    lpig: boolean,
  ): void {
    const b = new Uint32Array(8);
    b[0] =
      (QI_PGRP_RESP_TYPE | (pasidPresent ? 1 << 4 : 0) | ((code & 0xf) << 12) | ((rid & 0xffff) << 16)) >>> 0;
    b[1] = pasid & 0xfffff;
    b[2] = (((prgi & 0x1ff) << 3) | (lpig ? 1 << 2 : 0)) >>> 0;
    this.iommu.qiSubmitSync(b, 1);
  }

  /** prq_event_thread. */
  eventThread(): void {
    const iommu = this.iommu;
    const owner = this.owner!;
    // clear PPR first, so a request arriving meanwhile raises a new event
    iommu.writel(DMAR_PRS_REG, DMA_PRS_PPR);
    const tail = Number(iommu.readq(DMAR_PQT_REG) & BigInt(PRQ_RING_MASK));
    let head = Number(iommu.readq(DMAR_PQH_REG) & BigInt(PRQ_RING_MASK));
    while (head !== tail) {
      const req = this.readDesc(head);
      const canonical = req.addr < 1n << 47n || req.addr >= 0xffff_8000_0000_0000n;
      if (!canonical) this.badEvent(req, IOMMU_PAGE_RESP_INVALID);
      else if (req.pmReq && (req.rdReq || req.wrReq)) this.badEvent(req, IOMMU_PAGE_RESP_INVALID);
      else if (req.exeReq && req.rdReq) this.badEvent(req, IOMMU_PAGE_RESP_INVALID);
      else if (req.lpig && !req.rdReq && !req.wrReq) {
        // a stop marker: no response
      } else {
        const dev = owner.deviceByRid(iommu, req.rid);
        if (!dev) this.badEvent(req, IOMMU_PAGE_RESP_INVALID);
        else this.report(dev, req);
      }
      head = (head + 0x20) & PRQ_RING_MASK;
    }
    iommu.writeq(DMAR_PQH_REG, BigInt(tail));
    if (iommu.readl(DMAR_PRS_REG) & DMA_PRS_PRO) {
      const h = Number(iommu.readq(DMAR_PQH_REG) & BigInt(PRQ_RING_MASK));
      const t = Number(iommu.readq(DMAR_PQT_REG) & BigInt(PRQ_RING_MASK));
      if (h === t) iommu.writel(DMAR_PRS_REG, DMA_PRS_PRO);
    }
  }

  /** intel_prq_report, with iommu_report_device_fault's INVALID answer when nobody takes it. */
  private report(dev: IommuDevice, req: PageReq): void {
    this.handled++;
    let flags = 0;
    if (req.lpig) flags |= IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE;
    if (req.pasidPresent)
      flags |= IOMMU_FAULT_PAGE_REQUEST_PASID_VALID | IOMMU_FAULT_PAGE_REQUEST_NEEDS_PASID;
    if (req.privDataPresent) flags |= IOMMU_FAULT_PAGE_REQUEST_PRIV_DATA;
    let perm = 0;
    if (req.rdReq) perm |= IOMMU_FAULT_PERM_READ;
    if (req.wrReq) perm |= IOMMU_FAULT_PERM_WRITE;
    if (req.exeReq) perm |= IOMMU_FAULT_PERM_EXEC;
    if (req.pmReq) perm |= IOMMU_FAULT_PERM_PRIV;
    const fault: IommuPageFault = { flags, pasid: req.pasid, grpid: req.prgIndex, perm, addr: req.addr };
    const err = this.owner!.reportDeviceFault(dev, fault);
    // iopf_error_response: nobody takes the fault, so it is answered INVALID
    if (err)
      this.submitResponse(
        req.rid,
        req.pasidPresent,
        req.pasid,
        IOMMU_PAGE_RESP_INVALID,
        req.prgIndex,
        req.lpig,
      );
  }
}
