// One VT-d remapping unit as the Intel IOMMU driver sees it (struct intel_iommu): the kernel's
// side of drivers/iommu/intel/dmar.c and the unit-level parts of iommu.c. Everything goes
// through the unit's registers (VtdIommu.mmioRead/mmioWrite) and through structures in the
// machine's physical memory, exactly as on hardware:
//
// - bring-up (intel_iommu_init / init_dmars): read CAP/ECAP, clear pending faults, enable
//   queued invalidation (IQT = 0, IQA with DW = 1 and QS = 1 in scalable mode, GCMD.QIE, wait
//   for GSTS.QIES), allocate the root table, latch it (RTADDR with SMT, GCMD.SRTP, wait for
//   GSTS.RTPS, then global context-cache, PASID-cache and IOTLB invalidation), unmask the fault
//   event, and at the end enable translation (GCMD.TE, wait for GSTS.TES);
// - qi_submit_sync: descriptors written at the queue's free head in memory, a wait descriptor
//   with a status write behind them, IQT moved, and the status polled (IQE handling as
//   qi_check_fault does it); register-based invalidation (CCMD, IOTLB_REG) when there is no
//   queue;
// - the invalidation descriptors of include/linux/intel-iommu.h (qi_desc_*: cc_inv, iotlb,
//   dev_tlb, p_iotlb, pc_inv, p_dev_tlb, inv_wait), bit for bit (vtd-model.md C.3);
// - domain-ID allocation (domain_ida: IDs from IDA_START_DID up to cap_ndoms - 1);
// - the primary fault handler (dmar_fault): on the fault event the fault recording registers
//   are read, logged and cleared, so later faults are recorded too.
//
// IOMMU_WAIT_OP polls a status bit; the model completes register side effects within the
// write, so a poll that does not see its bit at once is the kernel's "DMAR hardware is
// malfunctioning" panic, raised here as an InvariantError.

import { type KernelError, kerr } from '../core/errno.ts';
import { invariant } from '../core/invariants.ts';
import type { Tracer } from '../core/trace.ts';
import type { PhysicalMemory } from '../hw/memory.ts';
import { faultReasonInfo } from '../hw/vtd/faults.ts';
import type { MsiMessage, VtdIommu } from '../hw/vtd/iommu.ts';
import {
  DMA_FECTL_IM,
  DMA_FSTS_IQE,
  DMA_FSTS_ITE,
  DMA_FSTS_PFO,
  DMA_FSTS_PPF,
  DMA_FSTS_PRO,
  DMA_GCMD_IRE,
  DMA_GCMD_QIE,
  DMA_GCMD_SRTP,
  DMA_GCMD_TE,
  DMA_GCMD_WBF,
  DMA_GSTS_IRES,
  DMA_GSTS_QIES,
  DMA_GSTS_RTPS,
  DMA_GSTS_TES,
  DMA_GSTS_WBFS,
  DMA_RTADDR_SMT,
} from '../hw/vtd/regs.ts';
import type { FrameAllocator } from './frames.ts';

// ---- registers (Linux names) ----
export const DMAR_CAP_REG = 0x8;
export const DMAR_ECAP_REG = 0x10;
export const DMAR_GCMD_REG = 0x18;
export const DMAR_GSTS_REG = 0x1c;
export const DMAR_RTADDR_REG = 0x20;
export const DMAR_CCMD_REG = 0x28;
export const DMAR_FSTS_REG = 0x34;
export const DMAR_FECTL_REG = 0x38;
export const DMAR_FEDATA_REG = 0x3c;
export const DMAR_FEADDR_REG = 0x40;
export const DMAR_FEUADDR_REG = 0x44;
export const DMAR_IQH_REG = 0x80;
export const DMAR_IQT_REG = 0x88;
export const DMAR_IQA_REG = 0x90;
export const DMAR_IQER_REG = 0xb0;

// Register bits the driver reads and writes: the hardware layer's own definitions (one layout).
export {
  DMA_FECTL_IM,
  DMA_FSTS_IQE,
  DMA_FSTS_ITE,
  DMA_FSTS_PFO,
  DMA_FSTS_PPF,
  DMA_FSTS_PRO,
  DMA_GCMD_IRE,
  DMA_GCMD_QIE,
  DMA_GCMD_SRTP,
  DMA_GCMD_TE,
  DMA_GCMD_WBF,
  DMA_GSTS_IRES,
  DMA_GSTS_QIES,
  DMA_GSTS_RTPS,
  DMA_GSTS_TES,
  DMA_GSTS_WBFS,
  DMA_RTADDR_SMT,
};
export const DMA_FRCD_F = 1 << 31;

// context-cache / IOTLB invalidation granularities (the DMA_CCMD_* / DMA_TLB_* type values,
// as the 2-bit field they become in descriptors and registers)
export const DMA_CCMD_GLOBAL_INVL = 1;
export const DMA_CCMD_DOMAIN_INVL = 2;
export const DMA_CCMD_DEVICE_INVL = 3;
export const DMA_CCMD_MASK_NOBIT = 0;
export const DMA_TLB_GLOBAL_FLUSH = 1;
export const DMA_TLB_DSI_FLUSH = 2;
export const DMA_TLB_PSI_FLUSH = 3;

// queued invalidation
export const QI_LENGTH = 256;
export const QI_FREE = 0;
export const QI_IN_USE = 1;
export const QI_DONE = 2;
export const QI_ABORT = 3;
export const QI_CC_TYPE = 1;
export const QI_IOTLB_TYPE = 2;
export const QI_DIOTLB_TYPE = 3;
export const QI_IWD_TYPE = 5;
export const QI_EIOTLB_TYPE = 6;
export const QI_PC_TYPE = 7;
export const QI_DEIOTLB_TYPE = 8;
export const QI_PGRP_RESP_TYPE = 9;
export const QI_IWD_STATUS_WRITE = 1 << 5;
export const QI_IWD_FENCE = 1 << 6;
export const QI_IWD_PRQ_DRAIN = 1 << 7;
export const QI_GRAN_NONG_PASID = 2;
export const QI_GRAN_PSI_PASID = 3;
export const QI_PC_ALL_PASIDS = 0;
export const QI_PC_PASID_SEL = 1;
export const QI_PC_GLOBAL = 3;
export const QI_OPT_WAIT_DRAIN = 1;
/** Descriptors a qi_batch holds before it is submitted (QI_MAX_BATCHED_DESC_COUNT). */
export const QI_MAX_BATCHED_DESC_COUNT = 16;
/** MAX_AGAW_PFN_WIDTH: a size order meaning "every address". */
export const MAX_AGAW_PFN_WIDTH = 64 - 12;

/** Domain IDs handed out start here (0: caching-mode, 1: FLPT_DEFAULT_DID). */
export const IDA_START_DID = 2;
export const FLPT_DEFAULT_DID = 1;

/** A fault the driver's fault handler took off the unit (what dmar_fault_do_one prints). */
export interface DmarFaultReport {
  readonly iommu: string;
  readonly sid: number;
  readonly pasid?: number;
  readonly addr: bigint;
  readonly reason: number;
  readonly text: string;
  /** DMA Read or DMA Write (the record's T bit). */
  readonly write: boolean;
}

/** CAP/ECAP fields the driver uses (include/linux/intel-iommu.h cap_* / ecap_*). */
export interface DmarCaps {
  ndoms: number;
  rwbf: boolean;
  cm: boolean;
  sagaw: number;
  mgaw: number;
  fro: number;
  sllps: number;
  psi: boolean;
  nfr: number;
  mamv: number;
  dwd: boolean;
  drd: boolean;
  fl1gp: boolean;
  fl5lp: boolean;
  esrtps: boolean;
  coherent: boolean;
  qis: boolean;
  dt: boolean;
  pt: boolean;
  sc: boolean;
  iro: number;
  nest: boolean;
  prs: boolean;
  srs: boolean;
  eafs: boolean;
  pss: number;
  pasid: boolean;
  dit: boolean;
  smts: boolean;
  slads: boolean;
  slts: boolean;
  flts: boolean;
  smpwc: boolean;
}

function bits(v: bigint, shift: number, width: number): number {
  return Number((v >> BigInt(shift)) & ((1n << BigInt(width)) - 1n));
}

function bit(v: bigint, n: number): boolean {
  return ((v >> BigInt(n)) & 1n) === 1n;
}

export function decodeDmarCaps(cap: bigint, ecap: bigint): DmarCaps {
  return {
    ndoms: 2 ** (4 + 2 * bits(cap, 0, 3)),
    rwbf: bit(cap, 4),
    cm: bit(cap, 7),
    sagaw: bits(cap, 8, 5),
    mgaw: bits(cap, 16, 6) + 1,
    fro: bits(cap, 24, 10) * 16,
    sllps: bits(cap, 34, 4),
    psi: bit(cap, 39),
    nfr: bits(cap, 40, 8) + 1,
    mamv: bits(cap, 48, 6),
    dwd: bit(cap, 54),
    drd: bit(cap, 55),
    fl1gp: bit(cap, 56),
    fl5lp: bit(cap, 60),
    esrtps: bit(cap, 63),
    coherent: bit(ecap, 0),
    qis: bit(ecap, 1),
    dt: bit(ecap, 2),
    pt: bit(ecap, 6),
    sc: bit(ecap, 7),
    iro: bits(ecap, 8, 10) * 16,
    nest: bit(ecap, 26),
    prs: bit(ecap, 29),
    srs: bit(ecap, 31),
    eafs: bit(ecap, 34),
    pss: bits(ecap, 35, 5),
    pasid: bit(ecap, 40),
    dit: bit(ecap, 41),
    smts: bit(ecap, 43),
    slads: bit(ecap, 45),
    slts: bit(ecap, 46),
    flts: bit(ecap, 47),
    smpwc: bit(ecap, 48),
  };
}

/** A batch of invalidation descriptors (struct qi_batch): 8 u32 words each. */
export class QiBatch {
  readonly descs = new Uint32Array(QI_MAX_BATCHED_DESC_COUNT * 8);
  index = 0;
  /** Slot for the next descriptor, zeroed. */
  next(): number {
    const o = this.index * 8;
    this.descs.fill(0, o, o + 8);
    return o;
  }
}

/** struct intel_iommu. */
export class IntelIommu {
  readonly unit: VtdIommu;
  readonly name: string;
  readonly seqId: number;
  readonly mem: PhysicalMemory;
  readonly frames: FrameAllocator;
  readonly cap: bigint;
  readonly ecap: bigint;
  readonly c: DmarCaps;
  /** Scalable mode in use (intel_iommu_sm && ecap_smts). */
  readonly sm: boolean;
  /** iommu->agaw and iommu->msagaw. */
  readonly agaw: number;
  readonly msagaw: number;
  /** The software copy of GCMD (iommu->gcmd). */
  gcmd = 0;
  /** Root table frame (0 before bring-up). */
  rootFn = 0;
  /** Context tables by root entry slot (bus * 2 + upper). */
  readonly contextTables = new Map<number, number>();
  // queued invalidation (struct q_inval): descriptors and the status words, in memory
  qiDescFn = 0;
  qiDescFrames = 0;
  qiStatusFn = 0;
  private qiFreeHead = 0;
  private qiFreeTail = 0;
  private qiFreeCnt = QI_LENGTH;
  private readonly waitDesc = new Uint32Array(8);
  /** Domain IDs in use (domain_ida). */
  private readonly dids: Uint8Array;
  didsInUse = 0;
  /** iommu->iommu.max_pasids. */
  readonly maxPasids: number;
  /** The faults the fault handler took off the unit, oldest first. */
  readonly faultLog: DmarFaultReport[] = [];
  /** Invalidation descriptors submitted (for tests and statistics). */
  qiSubmitted = 0;
  tracer: Tracer | null = null;

  constructor(unit: VtdIommu, seqId: number, frames: FrameAllocator) {
    this.unit = unit;
    this.name = unit.name;
    this.seqId = seqId;
    this.mem = unit.mem;
    this.frames = frames;
    this.cap = this.readq(DMAR_CAP_REG);
    this.ecap = this.readq(DMAR_ECAP_REG);
    this.c = decodeDmarCaps(this.cap, this.ecap);
    this.sm = this.c.smts;
    this.agaw = this.calculateAgaw(57);
    this.msagaw = this.calculateAgaw(64);
    this.dids = new Uint8Array(this.c.ndoms);
    this.maxPasids = this.pasidSupported ? 2 * 2 ** this.c.pss : 0;
  }

  // ---- capability helpers (iommu.h) ----

  get pasidSupported(): boolean {
    return this.sm && this.c.pasid;
  }
  get nestedSupported(): boolean {
    return this.sm && this.c.nest;
  }
  get ssadsSupported(): boolean {
    return this.sm && this.c.slads;
  }
  /** rwbf_required. */
  get rwbfRequired(): boolean {
    return this.c.rwbf;
  }
  /** iommu_paging_structure_coherency. */
  get pagingStructureCoherency(): boolean {
    return this.sm ? this.c.smpwc : this.c.coherent;
  }
  /** first_level_by_default. */
  get firstLevelByDefault(): boolean {
    if (!this.sm) return false;
    if (this.c.flts !== this.c.slts) return this.c.flts;
    return true;
  }

  /** __iommu_calculate_sagaw. */
  private sagaw(): number {
    const fl = (1 << 2) | (this.c.fl5lp ? 1 << 3 : 0);
    const sl = this.c.sagaw;
    if (!this.sm || !this.c.flts) return sl;
    if (!this.c.slts) return fl;
    return fl & sl;
  }

  /** __iommu_calculate_agaw: the largest supported AGAW at or below the width's. */
  private calculateAgaw(maxGaw: number): number {
    const sagaw = this.sagaw();
    let agaw = Math.ceil((maxGaw - 30) / 9);
    for (; agaw >= 0; agaw--) if (sagaw & (1 << agaw)) break;
    return agaw;
  }

  /** iommu_superpage_capability. */
  superpageCapability(firstStage: boolean): number {
    if (firstStage) return this.c.fl1gp ? 2 : 1;
    return 32 - Math.clz32(this.c.sllps);
  }

  // ---- register access ----

  readl(off: number): number {
    const v = this.unit.mmioRead(off, 4);
    invariant(typeof v === 'bigint', `${this.name}: register read at 0x${off.toString(16)}`);
    return Number(v);
  }

  readq(off: number): bigint {
    const v = this.unit.mmioRead(off, 8);
    invariant(typeof v === 'bigint', `${this.name}: register read at 0x${off.toString(16)}`);
    return v;
  }

  writel(off: number, v: number): void {
    invariant(this.unit.mmioWrite(off, BigInt(v >>> 0), 4) === null, `${this.name}: register write`);
  }

  writeq(off: number, v: bigint): void {
    invariant(this.unit.mmioWrite(off, v, 8) === null, `${this.name}: register write`);
  }

  /** IOMMU_WAIT_OP on GSTS: the condition must hold once the write completed. */
  private waitGsts(cond: (sts: number) => boolean, what: string): void {
    invariant(
      cond(this.readl(DMAR_GSTS_REG) >>> 0),
      `${this.name}: DMAR hardware is malfunctioning (${what})`,
    );
  }

  private trace(what: string, fields: Record<string, unknown> = {}): void {
    this.tracer?.({ kind: 'intel', what, iommu: this.name, ...fields });
  }

  // ---- bring-up ----

  /**
   * The unit's part of intel_iommu_init/init_dmars up to (not including) enabling
   * translation. Returns ENOMEM when a structure could not be allocated (nothing is left
   * allocated then).
   */
  init(): KernelError | undefined {
    const sts = this.readl(DMAR_GSTS_REG) >>> 0;
    // alloc_iommu: the software GCMD mirrors what is already on
    if (sts & DMA_GSTS_IRES) this.gcmd |= DMA_GCMD_IRE;
    if (sts & DMA_GSTS_TES) this.gcmd |= DMA_GCMD_TE;
    if (sts & DMA_GSTS_QIES) this.gcmd |= DMA_GCMD_QIE;
    // intel_iommu_init_qi: clear old faults, disable a queue left on, enable ours
    this.dmarFault();
    this.disableQi();
    if (this.c.qis) {
      const err = this.enableQi();
      if (err) return err;
    }
    // init_translation_status: translation left enabled and no kdump: switch it off
    if (this.readl(DMAR_GSTS_REG) & DMA_GSTS_TES) this.disableTranslation();
    // iommu_alloc_root_entry
    const root = this.frames.allocFrame();
    if (root === 0) {
      this.freeQi();
      return kerr('ENOMEM', `Allocating root entry for ${this.name} failed`);
    }
    this.rootFn = root;
    this.flushWriteBuffer();
    this.setRootEntry();
    // dmar_set_interrupt: the fault event goes to dmar_fault
    const prev = this.unit.onMsi;
    this.unit.onMsi = (m: MsiMessage) => {
      if (m.source === 'fault') this.dmarFault();
      prev?.(m);
    };
    this.writel(DMAR_FEDATA_REG, 0x4000 + this.seqId);
    this.writel(DMAR_FEADDR_REG, 0xfee00000);
    this.writel(DMAR_FEUADDR_REG, 0);
    this.writel(DMAR_FECTL_REG, 0);
    this.trace('init', { root: `0x${(root * 4096).toString(16)}`, sm: this.sm, qi: this.qiDescFn !== 0 });
    return undefined;
  }

  /** dmar_disable_qi. */
  private disableQi(): void {
    if (!this.c.qis) return;
    const sts = this.readl(DMAR_GSTS_REG);
    if (!(sts & DMA_GSTS_QIES)) return;
    this.gcmd &= ~DMA_GCMD_QIE;
    this.writel(DMAR_GCMD_REG, this.gcmd);
    this.waitGsts((s) => (s & DMA_GSTS_QIES) === 0, 'QIE off');
  }

  /** dmar_enable_qi / __dmar_enable_qi. */
  private enableQi(): KernelError | undefined {
    const n = this.sm ? 2 : 1;
    const desc = this.frames.allocFrames(n);
    if (desc === 0) return kerr('ENOMEM', `${this.name}: no memory for the invalidation queue`);
    const status = this.frames.allocFrame();
    if (status === 0) {
      for (let i = 0; i < n; i++) this.frames.freeFrame(desc + i);
      return kerr('ENOMEM', `${this.name}: no memory for the invalidation status`);
    }
    this.qiDescFn = desc;
    this.qiDescFrames = n;
    this.qiStatusFn = status;
    this.qiFreeHead = 0;
    this.qiFreeTail = 0;
    this.qiFreeCnt = QI_LENGTH;
    let val = BigInt(desc * 4096);
    // DW = 1 and QS = 1 in scalable mode: 256 descriptors of 256 bits
    if (this.sm) val |= (1n << 11n) | 1n;
    this.writel(DMAR_IQT_REG, 0);
    this.writeq(DMAR_IQA_REG, val);
    this.gcmd |= DMA_GCMD_QIE;
    this.writel(DMAR_GCMD_REG, this.gcmd);
    this.waitGsts((s) => (s & DMA_GSTS_QIES) !== 0, 'QIE on');
    return undefined;
  }

  private freeQi(): void {
    if (this.qiDescFn === 0) return;
    this.disableQi();
    for (let i = 0; i < this.qiDescFrames; i++) this.frames.freeFrame(this.qiDescFn + i);
    this.frames.freeFrame(this.qiStatusFn);
    this.qiDescFn = 0;
    this.qiStatusFn = 0;
  }

  /** iommu_set_root_entry: latch the root table, then invalidate every cache. */
  private setRootEntry(): void {
    let addr = BigInt(this.rootFn * 4096);
    if (this.sm) addr |= BigInt(DMA_RTADDR_SMT);
    this.writeq(DMAR_RTADDR_REG, addr);
    this.writel(DMAR_GCMD_REG, this.gcmd | DMA_GCMD_SRTP);
    this.waitGsts((s) => (s & DMA_GSTS_RTPS) !== 0, 'SRTP');
    if (this.c.esrtps) return;
    this.flushContext(0, 0, 0, DMA_CCMD_GLOBAL_INVL);
    if (this.sm) this.qiFlushPasidCache(0, QI_PC_GLOBAL, 0);
    this.flushIotlb(0, 0, 0, 0, DMA_TLB_GLOBAL_FLUSH);
  }

  /** iommu_flush_write_buffer. */
  flushWriteBuffer(): void {
    if (!this.rwbfRequired) return;
    this.writel(DMAR_GCMD_REG, this.gcmd | DMA_GCMD_WBF);
    this.waitGsts((s) => (s & DMA_GSTS_WBFS) === 0, 'WBF');
  }

  /** iommu_enable_translation. */
  enableTranslation(): void {
    this.gcmd |= DMA_GCMD_TE;
    this.writel(DMAR_GCMD_REG, this.gcmd);
    this.waitGsts((s) => (s & DMA_GSTS_TES) !== 0, 'TE on');
  }

  /** iommu_disable_translation. */
  disableTranslation(): void {
    this.gcmd &= ~DMA_GCMD_TE;
    this.writel(DMAR_GCMD_REG, this.gcmd);
    this.waitGsts((s) => (s & DMA_GSTS_TES) === 0, 'TE off');
  }

  // ---- domain IDs ----

  /** ida_alloc_range(domain_ida, IDA_START_DID, ndoms - 1): the lowest free ID, or -1. */
  allocDid(): number {
    const d = this.dids;
    for (let i = IDA_START_DID; i < d.length; i++) {
      if (d[i] === 0) {
        d[i] = 1;
        this.didsInUse++;
        return i;
      }
    }
    return -1;
  }

  freeDid(did: number): void {
    invariant(this.dids[did] === 1, `${this.name}: freeing domain ID ${did} that is not in use`);
    this.dids[did] = 0;
    this.didsInUse--;
  }

  didInUse(did: number): boolean {
    return this.dids[did] === 1;
  }

  // ---- queued invalidation ----

  /** The descriptor shift: 32-byte descriptors in scalable mode, 16-byte otherwise. */
  private get qiShift(): number {
    return this.sm ? 5 : 4;
  }

  private statusAddr(i: number): number {
    return this.qiStatusFn * 4096 + i * 4;
  }

  private statusOf(i: number): number {
    return this.mem.read32(this.statusAddr(i));
  }

  private setStatus(i: number, v: number): void {
    this.mem.write32(this.statusAddr(i), v);
  }

  /** reclaim_free_desc: completed slots from the tail up to the free head. */
  private reclaimFreeDesc(): void {
    while (this.statusOf(this.qiFreeTail) === QI_FREE && this.qiFreeTail !== this.qiFreeHead) {
      this.qiFreeTail = (this.qiFreeTail + 1) % QI_LENGTH;
      this.qiFreeCnt++;
    }
  }

  private writeDesc(index: number, words: Uint32Array, off: number): void {
    const shift = this.qiShift;
    const addr = this.qiDescFn * 4096 + (index << shift);
    const n = 1 << (shift - 2);
    for (let i = 0; i < n; i += 2) this.mem.write64(addr + i * 4, words[off + i]!, words[off + i + 1]!);
  }

  /**
   * qi_submit_sync: `count` descriptors (8 words each, from `descs`) plus a wait descriptor
   * whose status write tells completion. Returns EINVAL when the hardware refused a
   * descriptor (IQE), ETIMEDOUT on a device-TLB invalidation time-out (ITE), else undefined.
   */
  qiSubmitSync(descs: Uint32Array, count: number, options = 0): KernelError | undefined {
    if (this.qiDescFn === 0) return undefined;
    invariant(this.qiFreeCnt >= count + 2, `${this.name}: invalidation queue full`);
    const index = this.qiFreeHead;
    const waitIndex = (index + count) % QI_LENGTH;
    for (let i = 0; i < count; i++) {
      const slot = (index + i) % QI_LENGTH;
      this.writeDesc(slot, descs, i * 8);
      this.setStatus(slot, QI_IN_USE);
    }
    this.setStatus(waitIndex, QI_IN_USE);
    const w = this.waitDesc;
    w.fill(0);
    w[0] = (QI_IWD_STATUS_WRITE | QI_IWD_TYPE | (options & QI_OPT_WAIT_DRAIN ? QI_IWD_PRQ_DRAIN : 0)) >>> 0;
    w[1] = QI_DONE;
    const sa = this.statusAddr(waitIndex);
    w[2] = sa >>> 0;
    w[3] = Math.floor(sa / 4294967296);
    this.writeDesc(waitIndex, w, 0);
    this.qiFreeHead = (this.qiFreeHead + count + 1) % QI_LENGTH;
    this.qiFreeCnt -= count + 1;
    this.qiSubmitted += count;
    this.writel(DMAR_IQT_REG, this.qiFreeHead << this.qiShift);
    let err: KernelError | undefined;
    if (this.statusOf(waitIndex) !== QI_DONE) err = this.qiCheckFault(index, waitIndex);
    for (let i = 0; i <= count; i++) this.setStatus((index + i) % QI_LENGTH, QI_FREE);
    this.reclaimFreeDesc();
    if (err === undefined)
      invariant(this.statusOf(waitIndex) === QI_FREE, `${this.name}: invalidation wait did not complete`);
    return err;
  }

  /**
   * qi_check_fault, for a queue the hardware processed synchronously: an IQE on the first
   * descriptor is cleared after the wait descriptor was copied over the bad one (so the queue
   * moves on), and the submission fails with EINVAL; an ITE aborts it (ETIMEDOUT, where the
   * kernel retries a submission whose wait was aborted: the model's time-outs are permanent).
   */
  private qiCheckFault(index: number, waitIndex: number): KernelError | undefined {
    const fault = this.readl(DMAR_FSTS_REG);
    const shift = this.qiShift;
    if (fault & DMA_FSTS_IQE) {
      const head = (this.readl(DMAR_IQH_REG) >>> shift) % QI_LENGTH;
      // (the kernel only recovers when the refused descriptor is the batch's first; anywhere
      // else it would poll for ever)
      invariant(head === index, `${this.name}: invalidation queue stuck on descriptor ${head}`);
      {
        const buf = new Uint32Array(8);
        const shiftBytes = 1 << shift;
        const src = this.qiDescFn * 4096 + (waitIndex << shift);
        for (let i = 0; i < shiftBytes / 4; i++) buf[i] = this.mem.read32(src + i * 4);
        this.writeDesc(head, buf, 0);
        this.writel(DMAR_FSTS_REG, DMA_FSTS_IQE);
        this.trace('IQE', { head });
        return kerr('EINVAL', `${this.name}: the hardware refused invalidation descriptor ${head}`);
      }
    }
    if (fault & DMA_FSTS_ITE) {
      this.writel(DMAR_FSTS_REG, DMA_FSTS_ITE);
      for (let i = index; i !== (waitIndex + 1) % QI_LENGTH; i = (i + 1) % QI_LENGTH)
        if (this.statusOf(i) === QI_IN_USE) this.setStatus(i, QI_ABORT);
      this.trace('ITE', {});
      return kerr('ETIMEDOUT', `${this.name}: device-TLB invalidation timed out`);
    }
    return undefined;
  }

  // ---- descriptors (qi_desc_*) ----

  /** qi_flush_context / __iommu_flush_context. */
  flushContext(did: number, sid: number, fm: number, type: number): void {
    if (this.qiDescFn === 0) {
      let val = (1n << 63n) | (BigInt(type) << 61n);
      if (type >= DMA_CCMD_DOMAIN_INVL) val |= BigInt(did);
      if (type === DMA_CCMD_DEVICE_INVL) val |= (BigInt(sid) << 16n) | (BigInt(fm) << 32n);
      this.writeq(DMAR_CCMD_REG, val);
      const r = this.readq(DMAR_CCMD_REG);
      invariant(r >> 63n === 0n, `${this.name}: DMAR hardware is malfunctioning (CCMD)`);
      return;
    }
    const b = new Uint32Array(8);
    b[0] = (QI_CC_TYPE | (type << 4) | (did << 16)) >>> 0;
    b[1] = (sid & 0xffff) | ((fm & 3) << 16);
    this.qiSubmitSync(b, 1);
  }

  /** qi_desc_iotlb into a batch slot. */
  descIotlb(
    b: Uint32Array,
    o: number,
    did: number,
    addrLo: number,
    addrHi: number,
    ih: number,
    am: number,
    type: number,
  ): void {
    const dw = this.c.dwd ? 1 : 0;
    const dr = this.c.drd ? 1 : 0;
    b[o] = (QI_IOTLB_TYPE | (type << 4) | (dw << 6) | (dr << 7) | (did << 16)) >>> 0;
    b[o + 1] = 0;
    b[o + 2] = ((addrLo & 0xfffff000) | (ih << 6) | am) >>> 0;
    b[o + 3] = addrHi >>> 0;
  }

  /** qi_flush_iotlb / __iommu_flush_iotlb (type: DMA_TLB_*_FLUSH). */
  flushIotlb(did: number, addrLo: number, addrHi: number, sizeOrder: number, type: number, ih = 0): void {
    if (this.qiDescFn === 0) {
      const tlb = this.c.iro;
      let val = (1n << 63n) | (BigInt(type) << 60n);
      if (type !== DMA_TLB_GLOBAL_FLUSH) val |= BigInt(did) << 32n;
      if (this.c.dwd) val |= 1n << 48n;
      if (type === DMA_TLB_PSI_FLUSH)
        this.writeq(
          tlb,
          (BigInt(addrHi >>> 0) << 32n) | BigInt(((addrLo & 0xfffff000) | (ih << 6) | sizeOrder) >>> 0),
        );
      this.writeq(tlb + 8, val);
      const r = this.readq(tlb + 8);
      invariant(r >> 63n === 0n, `${this.name}: DMAR hardware is malfunctioning (IOTLB)`);
      return;
    }
    const b = new Uint32Array(8);
    this.descIotlb(b, 0, did, addrLo, addrHi, ih, sizeOrder, type);
    this.qiSubmitSync(b, 1);
  }

  /** qi_desc_piotlb / qi_desc_piotlb_all into a batch slot (sizeOrder < 0: all of the PASID). */
  descPiotlb(
    b: Uint32Array,
    o: number,
    did: number,
    pasid: number,
    addrLo: number,
    addrHi: number,
    sizeOrder: number,
    ih: number,
  ): void {
    const gran = sizeOrder < 0 ? QI_GRAN_NONG_PASID : QI_GRAN_PSI_PASID;
    b[o] = (QI_EIOTLB_TYPE | (gran << 4) | (did << 16)) >>> 0;
    b[o + 1] = pasid & 0xfffff;
    if (sizeOrder >= 0) {
      b[o + 2] = ((addrLo & 0xfffff000) | (ih ? 1 << 6 : 0) | sizeOrder) >>> 0;
      b[o + 3] = addrHi >>> 0;
    }
  }

  /** qi_flush_piotlb_all. */
  qiFlushPiotlbAll(did: number, pasid: number): void {
    const b = new Uint32Array(8);
    this.descPiotlb(b, 0, did, pasid, 0, 0, -1, 0);
    this.qiSubmitSync(b, 1);
  }

  /** qi_flush_pasid_cache. */
  qiFlushPasidCache(did: number, granu: number, pasid: number): void {
    const b = new Uint32Array(8);
    b[0] = (QI_PC_TYPE | (granu << 4) | (did << 16)) >>> 0;
    b[1] = pasid & 0xfffff;
    this.qiSubmitSync(b, 1);
  }

  /**
   * qi_desc_dev_iotlb into a batch slot: `mask` is the size order (0: one page;
   * MAX_AGAW_PFN_WIDTH: everything).
   */
  descDevIotlb(
    b: Uint32Array,
    o: number,
    sid: number,
    pfsid: number,
    qdep: number,
    addrLo: number,
    addrHi: number,
    mask: number,
  ): void {
    let lo = addrLo & 0xfffff000;
    let hi = addrHi >>> 0;
    let size = 0;
    if (mask) {
      // addr |= (1 << (VTD_PAGE_SHIFT + mask - 1)) - 1: every bit below the size's
      const b2 = 12 + mask - 1;
      if (b2 >= 32) {
        lo = 0xffffffff;
        hi = (hi | ((2 ** (b2 - 32) - 1) >>> 0)) >>> 0;
      } else lo = (lo | ((2 ** b2 - 1) >>> 0)) >>> 0;
      lo &= 0xfffff000;
      size = 1;
    }
    const q = qdep >= 32 ? 0 : qdep;
    b[o] = (QI_DIOTLB_TYPE | ((pfsid & 0xf) << 12) | ((q & 0x1f) << 16)) >>> 0;
    b[o + 1] = ((sid & 0xffff) | ((pfsid >>> 4) << 20)) >>> 0;
    b[o + 2] = (lo | size) >>> 0;
    b[o + 3] = hi;
  }

  /** qi_desc_dev_iotlb_pasid into a batch slot. */
  descDevIotlbPasid(
    b: Uint32Array,
    o: number,
    sid: number,
    pfsid: number,
    pasid: number,
    qdep: number,
    addrLo: number,
    addrHi: number,
    sizeOrder: number,
  ): void {
    b[o] = (QI_DEIOTLB_TYPE | ((qdep & 0x1f) << 4) | ((pfsid & 0xf) << 12) | ((sid & 0xffff) << 16)) >>> 0;
    b[o + 1] = ((pasid & 0xfffff) | ((pfsid >>> 4) << 20)) >>> 0;
    let lo = addrLo & 0xfffff000;
    let hi = addrHi >>> 0;
    if (sizeOrder) {
      // the bits from 12 up to the size order's become 1, that bit 0, and S = 1
      const top = sizeOrder + 12 - 1;
      for (let k = 12; k < top; k++) {
        if (k < 32) lo = (lo | (1 << k)) >>> 0;
        else hi = (hi | (1 << (k - 32))) >>> 0;
      }
      if (top < 32) lo = (lo & ~(1 << top)) >>> 0;
      else hi = (hi & ~(1 << (top - 32))) >>> 0;
      lo = (lo | (1 << 11)) >>> 0;
    }
    b[o + 2] = lo;
    b[o + 3] = hi;
  }

  /** qi_flush_dev_iotlb. */
  qiFlushDevIotlb(
    sid: number,
    pfsid: number,
    qdep: number,
    addrLo: number,
    addrHi: number,
    mask: number,
  ): void {
    if (!(this.gcmd & DMA_GCMD_TE)) return;
    const b = new Uint32Array(8);
    this.descDevIotlb(b, 0, sid, pfsid, qdep, addrLo, addrHi, mask);
    this.qiSubmitSync(b, 1);
  }

  /** qi_flush_dev_iotlb_pasid. */
  qiFlushDevIotlbPasid(
    sid: number,
    pfsid: number,
    pasid: number,
    qdep: number,
    addrLo: number,
    addrHi: number,
    sizeOrder: number,
  ): void {
    if (!(this.gcmd & DMA_GCMD_TE)) return;
    const b = new Uint32Array(8);
    this.descDevIotlbPasid(b, 0, sid, pfsid, pasid, qdep, addrLo, addrHi, sizeOrder);
    this.qiSubmitSync(b, 1);
  }

  /** qi_batch_flush_descs. */
  flushBatch(batch: QiBatch): void {
    if (batch.index === 0) return;
    this.qiSubmitSync(batch.descs, batch.index);
    batch.descs.fill(0);
    batch.index = 0;
  }

  /** qi_batch_increment_index. */
  batchAdvance(batch: QiBatch): void {
    if (++batch.index === QI_MAX_BATCHED_DESC_COUNT) this.flushBatch(batch);
  }

  // ---- faults ----

  /** dmar_fault: take every pending fault record off the unit, log it and clear it. */
  dmarFault(): void {
    const status = this.readl(DMAR_FSTS_REG);
    if (status & DMA_FSTS_PPF) {
      let index = (status >>> 8) & 0xff;
      const reg = this.c.fro;
      for (;;) {
        const off = reg + index * 16;
        const data = this.readl(off + 12) >>> 0;
        if (!(data & DMA_FRCD_F)) break;
        const reason = data & 0xff;
        const type = (data >>> 30) & 1;
        const pasid = (data >>> 8) & 0xfffff;
        const lo = this.readl(off + 8) >>> 0;
        const sid = lo & 0xffff;
        const pasidPresent = (lo >>> 31) & 1;
        const addr = this.readq(off) & ~0xfffn;
        this.writel(off + 12, DMA_FRCD_F);
        const report: DmarFaultReport = {
          iommu: this.name,
          sid,
          ...(pasidPresent ? { pasid } : {}),
          addr,
          reason,
          text: faultReasonInfo(reason).text,
          write: type === 0,
        };
        this.faultLog.push(report);
        this.trace('fault', {
          sid,
          ...(pasidPresent ? { pasid } : {}),
          addr: `0x${addr.toString(16)}`,
          reason: `0x${reason.toString(16)}`,
          text: report.text,
        });
        index = (index + 1) % this.c.nfr;
      }
    }
    this.writel(DMAR_FSTS_REG, DMA_FSTS_PFO | DMA_FSTS_PPF | DMA_FSTS_PRO);
  }
}
