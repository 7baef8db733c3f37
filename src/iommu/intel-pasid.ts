// Per-device PASID tables and scalable-mode context entries: the model of
// drivers/iommu/intel/pasid.c (~6.17) on the machine's physical memory (vtd-model.md A.2-A.4).
//
// A device gets at probe a PASID directory sized for min(its PASIDs, the system's), pointed to
// by its scalable-mode context entry (PASIDDIRPTR, PDTS, RID_PASID = 0, DTE/PASIDE/PRE from
// what the device and the unit support, FPD clear, P). PASID tables (64 entries of 512 bits)
// are allocated on first use of their directory slot and live until the device is released.
// Entries are programmed as the kernel does:
//
// - setup (entry not present; -EBUSY if it is): the new entry, then (caching mode only)
//   PASID-selective PASID-cache and PASID-based IOTLB invalidation (pasid_flush_caches);
// - replace (entry present; -EINVAL if not): the new entry over the old in one write, then
//   PASID-cache within the old DID, PASID-based IOTLB of the old DID, and the device-TLB
//   (intel_pasid_flush_present);
// - tear-down: P cleared, PASID-cache invalidation, then PASID-based IOTLB (first-stage and
//   pass-through) or domain-selective IOTLB (second-stage and nested) of the old DID, the
//   device-TLB, and the entry cleared (intel_pasid_tear_down_entry).
//
// A PASID-table page that cannot be allocated makes the operation fail with -ENODEV, as
// intel_pasid_get_entry's NULL does. Units without scalable mode use the legacy context entries
// at the end of this file (they live in iommu.c in the kernel).

import { type KernelError, kerr } from '../core/errno.ts';
import type { FaultInjector } from '../core/fault.ts';
import { invariant } from '../core/invariants.ts';
import type { PciDevice } from '../hw/pci.ts';
import {
  DMA_CCMD_DEVICE_INVL,
  DMA_CCMD_MASK_NOBIT,
  DMA_TLB_DSI_FLUSH,
  FLPT_DEFAULT_DID,
  type IntelIommu,
  MAX_AGAW_PFN_WIDTH,
  QI_DEIOTLB_TYPE,
  QI_EIOTLB_TYPE,
  QI_GRAN_NONG_PASID,
  QI_IWD_FENCE,
  QI_IWD_TYPE,
  QI_OPT_WAIT_DRAIN,
  QI_PC_PASID_SEL,
} from './intel-dmar.ts';

export const IOMMU_NO_PASID = 0;
export const PASID_PDE_SHIFT = 6;
export const PASID_PTE_MASK = 0x3f;
export const PASID_PTE_PRESENT = 1;
export const PASID_PTE_FPD = 2;
export const PASID_ENTRY_PGTT_FL_ONLY = 1;
export const PASID_ENTRY_PGTT_SL_ONLY = 2;
export const PASID_ENTRY_PGTT_NESTED = 3;
export const PASID_ENTRY_PGTT_PT = 4;
export const PASID_FLAG_FL5LP = 1 << 1;
export const PASID_FLAG_PAGE_SNOOP = 1 << 0;
/** PASID_MAX: the PCIe PASID space. */
export const PASID_MAX = 0x100000;

/** struct iommu_hwpt_vtd_s1 flags. */
export const IOMMU_VTD_S1_SRE = 1 << 0;
export const IOMMU_VTD_S1_EAFE = 1 << 1;
export const IOMMU_VTD_S1_WPE = 1 << 2;
export const ADDR_WIDTH_4LEVEL = 48;
export const ADDR_WIDTH_5LEVEL = 57;

/** struct iommu_hwpt_vtd_s1: the stage-1 a user describes for a nested domain. */
export interface VtdS1Config {
  flags: bigint;
  /** FLPTPTR: guest-physical address of the stage-1 table. */
  pgtblAddr: bigint;
  addrWidth: number;
}

/** struct pasid_table. */
export interface PasidTable {
  /** The directory's first frame (2^order contiguous frames). */
  readonly dirFn: number;
  readonly order: number;
  /** PASIDs the directory can index. */
  readonly maxPasid: number;
}

/** struct device_domain_info: the driver's per-device state. */
export class DeviceDomainInfo {
  readonly iommu: IntelIommu;
  readonly pci: PciDevice;
  readonly bus: number;
  readonly devfn: number;
  readonly sid: number;
  atsSupported = false;
  atsEnabled = false;
  /** pasid_supported: features | 1 when the device has PASID and the unit supports it. */
  pasidSupported = 0;
  pasidEnabled = false;
  priSupported = false;
  priEnabled = false;
  iopfRefcount = 0;
  /** PCI function id of the PF (for DIT); 0 here. */
  readonly pfsid = 0;
  /** ATS invalidate queue depth the device reports (0: the maximum). */
  readonly atsQdep = 0;
  pasidTable: PasidTable | null = null;
  /** The RID's domain (info->domain): a paging or nested dmar_domain. */
  domain: unknown = null;
  /** Something is attached to the RID (info->domain_attached): a domain or identity. */
  domainAttached = false;
  constructor(iommu: IntelIommu, pci: PciDevice) {
    this.iommu = iommu;
    this.pci = pci;
    this.sid = pci.sid;
    this.bus = pci.sid >>> 8;
    this.devfn = pci.sid & 0xff;
  }
}

/** The PASID-entry configuration of a second-stage table (pgd, AW, dirty tracking). */
export interface SsTable {
  readonly pgdFn: number;
  readonly agaw: number;
  readonly dirtyTracking: boolean;
  readonly forceSnooping: boolean;
}

// ---- PASID tables ----

/** intel_pasid_alloc_table: the directory for `info` (probe time). */
export function intelPasidAllocTable(
  info: DeviceDomainInfo,
  pasidMaxId: number,
  faults: FaultInjector,
): KernelError | undefined {
  invariant(info.pasidTable === null, 'intel_pasid_alloc_table: the table exists');
  let maxPasid = 0;
  if (info.pasidSupported) maxPasid = Math.min(2 ** info.pci.pasidBits, pasidMaxId); // pci_max_pasids
  const size = maxPasid >> (PASID_PDE_SHIFT - 3);
  const order = size ? Math.max(0, Math.ceil(Math.log2(size / 4096))) : 0;
  if (faults.armed && faults.shouldFail('iommu_alloc_pages_node_sz'))
    return kerr('ENOMEM', 'PASID directory allocation failed');
  const dir = info.iommu.frames.allocFrames(2 ** order);
  if (dir === 0) return kerr('ENOMEM', 'PASID directory allocation failed');
  info.pasidTable = { dirFn: dir, order, maxPasid: 2 ** (order + 12 + 3) };
  return undefined;
}

/** intel_pasid_free_table: the PASID tables, then the directory. */
export function intelPasidFreeTable(info: DeviceDomainInfo): void {
  const t = info.pasidTable;
  if (!t) return;
  info.pasidTable = null;
  const mem = info.iommu.mem;
  const frames = info.iommu.frames;
  const maxPde = t.maxPasid >> PASID_PDE_SHIFT;
  for (let i = 0; i < maxPde; i++) {
    const a = t.dirFn * 4096 + i * 8;
    const lo = mem.readLo(a);
    if (lo & PASID_PTE_PRESENT) frames.freeFrame((mem.readHi(a) & 0xfffff) * 1048576 + (lo >>> 12));
  }
  for (let i = 0; i < 2 ** t.order; i++) frames.freeFrame(t.dirFn + i);
}

/** The PASID tables hanging off a directory (for leak checks). */
export function pasidTableFrames(info: DeviceDomainInfo): number {
  const t = info.pasidTable;
  if (!t) return 0;
  const mem = info.iommu.mem;
  let n = 2 ** t.order;
  for (let i = 0; i < t.maxPasid >> PASID_PDE_SHIFT; i++) if (mem.readLo(t.dirFn * 4096 + i * 8) & 1) n++;
  return n;
}

/**
 * intel_pasid_get_entry: the address of the PASID entry, allocating its PASID table on first
 * use; -1 when the PASID is beyond the directory or the table cannot be allocated.
 */
export function intelPasidGetEntry(info: DeviceDomainInfo, pasid: number, faults: FaultInjector): number {
  const t = info.pasidTable;
  if (!t || pasid >= t.maxPasid) return -1;
  const mem = info.iommu.mem;
  const de = t.dirFn * 4096 + (pasid >>> PASID_PDE_SHIFT) * 8;
  let lo = mem.readLo(de);
  let hi = mem.readHi(de);
  if ((lo & PASID_PTE_PRESENT) === 0) {
    if (faults.armed && faults.shouldFail('iommu_alloc_pages_node_sz')) return -1;
    const f = info.iommu.frames.allocFrame();
    if (f === 0) return -1;
    lo = ((f % 1048576) * 4096 + PASID_PTE_PRESENT) >>> 0;
    hi = Math.floor(f / 1048576);
    mem.write64(de, lo, hi);
  }
  return ((hi & 0xfffff) * 1048576 + (lo >>> 12)) * 4096 + (pasid & PASID_PTE_MASK) * 64;
}

/** The address of an existing PASID entry (no allocation), or -1. */
export function pasidEntryAddr(info: DeviceDomainInfo, pasid: number): number {
  const t = info.pasidTable;
  if (!t || pasid >= t.maxPasid) return -1;
  const mem = info.iommu.mem;
  const de = t.dirFn * 4096 + (pasid >>> PASID_PDE_SHIFT) * 8;
  const lo = mem.readLo(de);
  if ((lo & PASID_PTE_PRESENT) === 0) return -1;
  return ((mem.readHi(de) & 0xfffff) * 1048576 + (lo >>> 12)) * 4096 + (pasid & PASID_PTE_MASK) * 64;
}

/** The 16 words of a PASID entry in memory. */
export function readPasidEntry(info: DeviceDomainInfo, addr: number): Uint32Array {
  const w = new Uint32Array(16);
  for (let i = 0; i < 16; i++) w[i] = info.iommu.mem.read32(addr + i * 4);
  return w;
}

function writePasidEntry(info: DeviceDomainInfo, addr: number, w: Uint32Array): void {
  for (let i = 0; i < 8; i++) info.iommu.mem.write64(addr + i * 8, w[2 * i]!, w[2 * i + 1]!);
}

export function pasidPteIsPresent(w: Uint32Array): boolean {
  return (w[0]! & PASID_PTE_PRESENT) !== 0;
}
export function pasidGetDomainId(w: Uint32Array): number {
  return w[2]! & 0xffff;
}
export function pasidPteGetPgtt(w: Uint32Array): number {
  return (w[0]! >>> 6) & 7;
}

// pasid_set_* on a word image of the entry (val[q] = words 2q, 2q + 1)
function setSlptr(w: Uint32Array, fn: number): void {
  w[0] = ((w[0]! & 0xfff) | ((fn % 1048576) * 4096)) >>> 0;
  w[1] = Math.floor(fn / 1048576);
}
function setFlptr(w: Uint32Array, lo: number, hi: number): void {
  w[4] = ((w[4]! & 0xfff) | (lo & 0xfffff000)) >>> 0;
  w[5] = hi >>> 0;
}
function setAw(w: Uint32Array, aw: number): void {
  w[0] = ((w[0]! & ~0x1c) | ((aw & 7) << 2)) >>> 0;
}
function setPgtt(w: Uint32Array, t: number): void {
  w[0] = ((w[0]! & ~0x1c0) | ((t & 7) << 6)) >>> 0;
}
function setDid(w: Uint32Array, did: number): void {
  w[2] = ((w[2]! & ~0xffff) | (did & 0xffff)) >>> 0;
}
function setPageSnoop(w: Uint32Array, on: boolean): void {
  w[2] = on ? (w[2]! | (1 << 23)) >>> 0 : (w[2]! & ~(1 << 23)) >>> 0;
}
function setPgsnp(w: Uint32Array): void {
  w[2] = (w[2]! | (1 << 24)) >>> 0;
}
function setSsade(w: Uint32Array, on: boolean): void {
  w[0] = on ? (w[0]! | (1 << 9)) >>> 0 : (w[0]! & ~(1 << 9)) >>> 0;
}

/** pasid_pte_config_first_level. */
function configFirstLevel(iommu: IntelIommu, fsptFn: number, did: number, flags: number): Uint32Array {
  const w = new Uint32Array(16);
  setFlptr(w, (fsptFn % 1048576) * 4096, Math.floor(fsptFn / 1048576));
  if (flags & PASID_FLAG_FL5LP) w[4] = (w[4]! | (1 << 2)) >>> 0;
  if (flags & PASID_FLAG_PAGE_SNOOP) setPgsnp(w);
  setDid(w, did);
  setAw(w, iommu.agaw);
  setPageSnoop(w, iommu.c.smpwc);
  setPgtt(w, PASID_ENTRY_PGTT_FL_ONLY);
  w[0] = (w[0]! | PASID_PTE_PRESENT) >>> 0;
  return w;
}

/** pasid_pte_config_second_level. */
function configSecondLevel(iommu: IntelIommu, t: SsTable, did: number): Uint32Array {
  const w = new Uint32Array(16);
  setDid(w, did);
  setSlptr(w, t.pgdFn);
  setAw(w, t.agaw);
  setPgtt(w, PASID_ENTRY_PGTT_SL_ONLY);
  setPageSnoop(w, iommu.c.smpwc);
  if (t.dirtyTracking) setSsade(w, true);
  w[0] = (w[0]! | PASID_PTE_PRESENT) >>> 0;
  return w;
}

/** pasid_pte_config_pass_through. */
function configPassThrough(iommu: IntelIommu, did: number): Uint32Array {
  const w = new Uint32Array(16);
  setDid(w, did);
  setAw(w, iommu.agaw);
  setPgtt(w, PASID_ENTRY_PGTT_PT);
  setPageSnoop(w, iommu.c.smpwc);
  w[0] = (w[0]! | PASID_PTE_PRESENT) >>> 0;
  return w;
}

/** pasid_pte_config_nestd. */
function configNested(iommu: IntelIommu, s1: VtdS1Config, s2: SsTable, did: number): Uint32Array {
  const w = new Uint32Array(16);
  if (s1.addrWidth === ADDR_WIDTH_5LEVEL) w[4] = (w[4]! | (1 << 2)) >>> 0;
  setFlptr(w, Number(s1.pgtblAddr & 0xffffffffn), Number((s1.pgtblAddr >> 32n) & 0xffffffffn));
  if (s1.flags & BigInt(IOMMU_VTD_S1_SRE)) {
    w[4] = (w[4]! | 1) >>> 0;
    if (s1.flags & BigInt(IOMMU_VTD_S1_WPE)) w[4] = (w[4]! | (1 << 4)) >>> 0;
  }
  if (s1.flags & BigInt(IOMMU_VTD_S1_EAFE)) w[4] = (w[4]! | (1 << 7)) >>> 0;
  if (s2.forceSnooping) setPgsnp(w);
  setSlptr(w, s2.pgdFn);
  setDid(w, did);
  setAw(w, s2.agaw);
  setPageSnoop(w, iommu.c.smpwc);
  if (s2.dirtyTracking) setSsade(w, true);
  setPgtt(w, PASID_ENTRY_PGTT_NESTED);
  w[0] = (w[0]! | PASID_PTE_PRESENT) >>> 0;
  return w;
}

// ---- cache flushes ----

/** pasid_cache_invalidation_with_pasid. */
function pasidCacheInvalidation(iommu: IntelIommu, did: number, pasid: number): void {
  iommu.qiFlushPasidCache(did, QI_PC_PASID_SEL, pasid);
}

/** devtlb_invalidation_with_pasid: the whole device-TLB of the PASID (RID: without PASID). */
export function devtlbInvalidationWithPasid(iommu: IntelIommu, info: DeviceDomainInfo, pasid: number): void {
  if (!info.atsEnabled) return;
  if (pasid === IOMMU_NO_PASID)
    iommu.qiFlushDevIotlb(info.sid, info.pfsid, info.atsQdep, 0, 0, MAX_AGAW_PFN_WIDTH);
  else iommu.qiFlushDevIotlbPasid(info.sid, info.pfsid, pasid, info.atsQdep, 0, 0, MAX_AGAW_PFN_WIDTH);
}

/** pasid_flush_caches: after a non-present -> present change. */
function pasidFlushCaches(iommu: IntelIommu, pasid: number, did: number): void {
  if (iommu.c.cm) {
    pasidCacheInvalidation(iommu, did, pasid);
    iommu.qiFlushPiotlbAll(did, pasid);
  } else iommu.flushWriteBuffer();
}

/** intel_pasid_flush_present: after a present -> present change. */
function intelPasidFlushPresent(iommu: IntelIommu, info: DeviceDomainInfo, pasid: number, did: number): void {
  pasidCacheInvalidation(iommu, did, pasid);
  iommu.qiFlushPiotlbAll(did, pasid);
  devtlbInvalidationWithPasid(iommu, info, pasid);
}

/**
 * intel_iommu_drain_pasid_prq: page requests of the PASID still in the hardware are drained
 * (a fenced wait, PASID-based IOTLB and device-TLB invalidation, with the drain flag).
 */
export function intelIommuDrainPasidPrq(info: DeviceDomainInfo, did: number, pasid: number): void {
  if (!info.priEnabled) return;
  const iommu = info.iommu;
  const b = new Uint32Array(24);
  b[0] = (QI_IWD_FENCE | QI_IWD_TYPE) >>> 0;
  b[1] = 2; // QI_IWD_STATUS_DATA(QI_DONE)
  b[8] = (QI_EIOTLB_TYPE | (QI_GRAN_NONG_PASID << 4) | (did << 16)) >>> 0;
  b[9] = pasid & 0xfffff;
  b[16] = (QI_DEIOTLB_TYPE | ((info.atsQdep & 0x1f) << 4) | ((info.sid & 0xffff) << 16)) >>> 0;
  b[17] = pasid & 0xfffff;
  iommu.qiSubmitSync(b, 3, QI_OPT_WAIT_DRAIN);
}

// ---- entries ----

function getPresentEntry(
  info: DeviceDomainInfo,
  pasid: number,
  faults: FaultInjector,
  wantPresent: boolean,
): number | KernelError {
  const pte = intelPasidGetEntry(info, pasid, faults);
  if (pte < 0) return kerr('ENODEV', `no PASID entry for PASID ${pasid} of ${info.pci.bdf}`);
  const present = (info.iommu.mem.read32(pte) & PASID_PTE_PRESENT) !== 0;
  if (wantPresent && !present) return kerr('EINVAL', `PASID ${pasid} of ${info.pci.bdf} is not set up`);
  if (!wantPresent && present) return kerr('EBUSY', `PASID ${pasid} of ${info.pci.bdf} is in use`);
  return pte;
}

/** Writes a new entry in a not-present slot (the setup helpers' common part). */
function setupEntry(
  info: DeviceDomainInfo,
  pasid: number,
  did: number,
  w: Uint32Array,
  faults: FaultInjector,
): KernelError | undefined {
  const pte = getPresentEntry(info, pasid, faults, false);
  if (typeof pte !== 'number') return pte;
  writePasidEntry(info, pte, w);
  pasidFlushCaches(info.iommu, pasid, did);
  return undefined;
}

/** Writes a new entry over a present one (the replace helpers' common part). */
function replaceEntry(
  info: DeviceDomainInfo,
  pasid: number,
  oldDid: number,
  w: Uint32Array,
  faults: FaultInjector,
): KernelError | undefined {
  const pte = getPresentEntry(info, pasid, faults, true);
  if (typeof pte !== 'number') return pte;
  invariant(
    pasidGetDomainId(readPasidEntry(info, pte)) === oldDid,
    `intel: PASID ${pasid} replace: the entry's DID is not the old domain's`,
  );
  writePasidEntry(info, pte, w);
  intelPasidFlushPresent(info.iommu, info, pasid, oldDid);
  intelIommuDrainPasidPrq(info, oldDid, pasid);
  return undefined;
}

function checkFirstLevel(iommu: IntelIommu, flags: number): KernelError | undefined {
  if (!iommu.c.flts) return kerr('EINVAL', `No first level translation support on ${iommu.name}`);
  if (flags & PASID_FLAG_FL5LP && !iommu.c.fl5lp)
    return kerr('EINVAL', `No 5-level paging support for first-level on ${iommu.name}`);
  return undefined;
}

/** intel_pasid_setup_first_level. */
export function intelPasidSetupFirstLevel(
  info: DeviceDomainInfo,
  fsptFn: number,
  pasid: number,
  did: number,
  flags: number,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  const e = checkFirstLevel(iommu, flags);
  if (e) return e;
  return setupEntry(info, pasid, did, configFirstLevel(iommu, fsptFn, did, flags), faults);
}

/** intel_pasid_replace_first_level. */
export function intelPasidReplaceFirstLevel(
  info: DeviceDomainInfo,
  fsptFn: number,
  pasid: number,
  did: number,
  oldDid: number,
  flags: number,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  const e = checkFirstLevel(iommu, flags);
  if (e) return e;
  return replaceEntry(info, pasid, oldDid, configFirstLevel(iommu, fsptFn, did, flags), faults);
}

/** intel_pasid_setup_second_level. */
export function intelPasidSetupSecondLevel(
  info: DeviceDomainInfo,
  t: SsTable,
  pasid: number,
  did: number,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  if (!iommu.c.slts) return kerr('EINVAL', `No second level translation support on ${iommu.name}`);
  return setupEntry(info, pasid, did, configSecondLevel(iommu, t, did), faults);
}

/** intel_pasid_replace_second_level. */
export function intelPasidReplaceSecondLevel(
  info: DeviceDomainInfo,
  t: SsTable,
  pasid: number,
  did: number,
  oldDid: number,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  if (!iommu.c.slts) return kerr('EINVAL', `No second level translation support on ${iommu.name}`);
  return replaceEntry(info, pasid, oldDid, configSecondLevel(iommu, t, did), faults);
}

/** intel_pasid_setup_pass_through. */
export function intelPasidSetupPassThrough(
  info: DeviceDomainInfo,
  pasid: number,
  faults: FaultInjector,
): KernelError | undefined {
  return setupEntry(info, pasid, FLPT_DEFAULT_DID, configPassThrough(info.iommu, FLPT_DEFAULT_DID), faults);
}

/** intel_pasid_replace_pass_through. */
export function intelPasidReplacePassThrough(
  info: DeviceDomainInfo,
  pasid: number,
  oldDid: number,
  faults: FaultInjector,
): KernelError | undefined {
  return replaceEntry(info, pasid, oldDid, configPassThrough(info.iommu, FLPT_DEFAULT_DID), faults);
}

/** The checks intel_pasid_setup_nested and intel_pasid_replace_nested make first. */
function checkNested(iommu: IntelIommu, s1: VtdS1Config): KernelError | undefined {
  if (s1.addrWidth === ADDR_WIDTH_5LEVEL) {
    if (!iommu.c.fl5lp) return kerr('EINVAL', '5-level paging not supported');
  } else if (s1.addrWidth !== ADDR_WIDTH_4LEVEL)
    return kerr('EINVAL', `Invalid stage-1 address width ${s1.addrWidth}`);
  if (s1.flags & BigInt(IOMMU_VTD_S1_SRE) && !iommu.c.srs)
    return kerr('EINVAL', `No supervisor request support on ${iommu.name}`);
  if (s1.flags & BigInt(IOMMU_VTD_S1_EAFE) && !iommu.c.eafs)
    return kerr('EINVAL', `No extended access flag support on ${iommu.name}`);
  return undefined;
}

/** intel_pasid_setup_nested. */
export function intelPasidSetupNested(
  info: DeviceDomainInfo,
  pasid: number,
  s1: VtdS1Config,
  s2: SsTable,
  did: number,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  const e = checkNested(iommu, s1);
  if (e) return e;
  return setupEntry(info, pasid, did, configNested(iommu, s1, s2, did), faults);
}

/** intel_pasid_replace_nested. */
export function intelPasidReplaceNested(
  info: DeviceDomainInfo,
  pasid: number,
  oldDid: number,
  s1: VtdS1Config,
  s2: SsTable,
  did: number,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  const e = checkNested(iommu, s1);
  if (e) return e;
  return replaceEntry(info, pasid, oldDid, configNested(iommu, s1, s2, did), faults);
}

/** intel_pasid_tear_down_entry. */
export function intelPasidTearDownEntry(info: DeviceDomainInfo, pasid: number, faultIgnore: boolean): void {
  const iommu = info.iommu;
  // (the kernel's lookup would allocate a missing PASID table only to find the entry empty)
  const pte = pasidEntryAddr(info, pasid);
  if (pte < 0) return;
  const w = readPasidEntry(info, pte);
  if (!pasidPteIsPresent(w)) {
    if ((w[0]! & PASID_PTE_FPD) === 0) {
      invariant(w[0] === 0 && w[1] === 0, 'intel: a non-present PASID entry is half set up');
      return;
    }
    // non-present with FPD: clear it and drain
    writePasidEntry(info, pte, new Uint32Array(16));
    intelIommuDrainPasidPrq(info, FLPT_DEFAULT_DID, pasid);
    return;
  }
  const did = pasidGetDomainId(w);
  const pgtt = pasidPteGetPgtt(w);
  // pasid_clear_present
  iommu.mem.write32(pte, (w[0]! & ~PASID_PTE_PRESENT) >>> 0);
  pasidCacheInvalidation(iommu, did, pasid);
  if (pgtt === PASID_ENTRY_PGTT_PT || pgtt === PASID_ENTRY_PGTT_FL_ONLY) iommu.qiFlushPiotlbAll(did, pasid);
  else iommu.flushIotlb(did, 0, 0, 0, DMA_TLB_DSI_FLUSH);
  devtlbInvalidationWithPasid(iommu, info, pasid);
  // intel_pasid_clear_entry: P is already clear, so FPD is not kept even with fault_ignore
  writePasidEntry(info, pte, new Uint32Array(16));
  if (!faultIgnore) intelIommuDrainPasidPrq(info, did, pasid);
}

/** intel_pasid_setup_page_snoop_control: PGSNP in a present entry, then the present-entry flush. */
export function intelPasidSetupPageSnoopControl(
  info: DeviceDomainInfo,
  pasid: number,
  faults: FaultInjector,
): void {
  const iommu = info.iommu;
  const pte = intelPasidGetEntry(info, pasid, faults);
  invariant(
    pte >= 0 && (iommu.mem.read32(pte) & PASID_PTE_PRESENT) !== 0,
    'intel: page snoop on an absent entry',
  );
  const w = readPasidEntry(info, pte);
  setPgsnp(w);
  iommu.mem.write32(pte + 8, w[2]!);
  intelPasidFlushPresent(iommu, info, pasid, pasidGetDomainId(w));
}

/** intel_pasid_setup_dirty_tracking: SSADE on or off in an SL or nested entry. */
export function intelPasidSetupDirtyTracking(
  info: DeviceDomainInfo,
  pasid: number,
  enabled: boolean,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  const pte = intelPasidGetEntry(info, pasid, faults);
  if (pte < 0) return kerr('ENODEV', `Failed to get pasid entry of PASID ${pasid}`);
  const w = readPasidEntry(info, pte);
  const did = pasidGetDomainId(w);
  const pgtt = pasidPteGetPgtt(w);
  if (pgtt !== PASID_ENTRY_PGTT_SL_ONLY && pgtt !== PASID_ENTRY_PGTT_NESTED)
    return kerr('EOPNOTSUPP', `Dirty tracking not supported on translation type ${pgtt}`);
  if (((w[0]! >>> 9) & 1) === (enabled ? 1 : 0)) return undefined;
  setSsade(w, enabled);
  iommu.mem.write32(pte, w[0]!);
  pasidCacheInvalidation(iommu, did, pasid);
  iommu.flushIotlb(did, 0, 0, 0, DMA_TLB_DSI_FLUSH);
  devtlbInvalidationWithPasid(iommu, info, pasid);
  return undefined;
}

// ---- scalable-mode context entries ----

/** Address of the 256-bit context entry of `sid`, allocating its context table (iommu_context_addr). */
export function iommuContextAddr(
  iommu: IntelIommu,
  sid: number,
  alloc: boolean,
  faults: FaultInjector,
): number {
  const bus = sid >>> 8;
  let devfn = sid & 0xff;
  const upper = iommu.sm && devfn >= 0x80 ? 1 : 0;
  const key = bus * 2 + upper;
  let t = iommu.contextTables.get(key);
  if (t === undefined) {
    if (!alloc) return -1;
    if (faults.armed && faults.shouldFail('iommu_alloc_pages_node_sz')) return -1;
    const f = iommu.frames.allocFrame();
    if (f === 0) return -1;
    t = f;
    iommu.contextTables.set(key, t);
    const re = iommu.rootFn * 4096 + bus * 16 + upper * 8;
    iommu.mem.write64(re, ((t % 1048576) * 4096 + 1) >>> 0, Math.floor(t / 1048576));
  }
  if (iommu.sm) devfn = (devfn & 0x7f) * 2;
  return t * 4096 + devfn * 16;
}

/** context_get_sm_pds: PDTS = log2(directory entries) - 7. */
function contextGetSmPds(t: PasidTable): number {
  const maxPde = t.maxPasid >> PASID_PDE_SHIFT;
  const pds = 31 - Math.clz32(maxPde & -maxPde);
  return pds < 7 ? 0 : pds - 7;
}

/** intel_pasid_setup_sm_context (device_pasid_table_setup). */
export function intelPasidSetupSmContext(
  info: DeviceDomainInfo,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  const ce = iommuContextAddr(iommu, info.sid, true, faults);
  if (ce < 0) return kerr('ENOMEM', `no context table for ${info.pci.bdf}`);
  const mem = iommu.mem;
  if (mem.read32(ce) & 1) return undefined;
  const t = info.pasidTable!;
  const pds = contextGetSmPds(t);
  let lo = ((t.dirFn % 1048576) * 4096 + ((pds & 7) << 9)) >>> 0;
  const loHi = Math.floor(t.dirFn / 1048576);
  if (info.atsSupported) lo |= 1 << 2;
  if (info.pasidSupported) lo |= 1 << 3;
  if (info.priSupported) lo |= 1 << 4;
  lo = (lo | 1) >>> 0; // fault processing enabled (FPD clear), present
  // hi: RID2PASID = IOMMU_NO_PASID
  mem.write64(ce + 8, IOMMU_NO_PASID, 0);
  mem.write64(ce, lo, loHi);
  if (iommu.c.cm) {
    iommu.flushContext(0, info.sid, DMA_CCMD_MASK_NOBIT, DMA_CCMD_DEVICE_INVL);
    iommu.flushIotlb(0, 0, 0, 0, DMA_TLB_DSI_FLUSH);
  }
  return undefined;
}

/** intel_context_flush_no_pasid: after a present context entry changed. */
export function intelContextFlushNoPasid(info: DeviceDomainInfo, did: number): void {
  const iommu = info.iommu;
  iommu.flushContext(did, info.sid, DMA_CCMD_MASK_NOBIT, DMA_CCMD_DEVICE_INVL);
  if (!iommu.sm) iommu.flushIotlb(did, 0, 0, 0, DMA_TLB_DSI_FLUSH);
  if (info.atsEnabled) iommu.qiFlushDevIotlb(info.sid, info.pfsid, info.atsQdep, 0, 0, MAX_AGAW_PFN_WIDTH);
}

/** intel_pasid_teardown_sm_context (device_pasid_table_teardown). */
export function intelPasidTeardownSmContext(info: DeviceDomainInfo, faults: FaultInjector): void {
  const iommu = info.iommu;
  const ce = iommuContextAddr(iommu, info.sid, false, faults);
  if (ce < 0) return;
  const did = (iommu.mem.read32(ce + 8) >>> 8) & 0xffff; // context_domain_id (legacy layout)
  iommu.mem.write64(ce, 0, 0);
  iommu.mem.write64(ce + 8, 0, 0);
  intelContextFlushNoPasid(info, did);
}

// ---- legacy-mode context entries (no scalable mode: iommu.c domain_context_mapping_one,
// context_setup_pass_through, domain_context_clear_one) ----

export const CONTEXT_TT_MULTI_LEVEL = 0;
export const CONTEXT_TT_DEV_IOTLB = 1;
export const CONTEXT_TT_PASS_THROUGH = 2;

/** context_present_cache_flush: after a not-present -> present context entry. */
function contextPresentCacheFlush(iommu: IntelIommu, did: number, sid: number): void {
  if (iommu.c.cm) {
    iommu.flushContext(0, sid, DMA_CCMD_MASK_NOBIT, DMA_CCMD_DEVICE_INVL);
    iommu.flushIotlb(did, 0, 0, 0, DMA_TLB_DSI_FLUSH);
  } else iommu.flushWriteBuffer();
}

/**
 * A legacy context entry for the device (domain_context_mapping_one / context_setup_pass_through):
 * DID, the second-level root (not for pass-through), AW, TT, fault processing on, present.
 * Nothing is done if the entry is present already.
 */
export function legacyContextMap(
  info: DeviceDomainInfo,
  did: number,
  slptFn: number,
  aw: number,
  tt: number,
  faults: FaultInjector,
): KernelError | undefined {
  const iommu = info.iommu;
  const ce = iommuContextAddr(iommu, info.sid, true, faults);
  if (ce < 0) return kerr('ENOMEM', `no context table for ${info.pci.bdf}`);
  const mem = iommu.mem;
  if (mem.read32(ce) & 1) return undefined;
  const lo = ((slptFn % 1048576) * 4096 + ((tt & 3) << 2) + 1) >>> 0;
  mem.write64(ce + 8, ((aw & 7) | ((did & 0xffff) << 8)) >>> 0, 0);
  mem.write64(ce, lo, Math.floor(slptFn / 1048576));
  contextPresentCacheFlush(iommu, did, info.sid);
  return undefined;
}

/** domain_context_clear_one: the legacy context entry goes, then its caches. */
export function legacyContextClear(info: DeviceDomainInfo, faults: FaultInjector): void {
  const iommu = info.iommu;
  const ce = iommuContextAddr(iommu, info.sid, false, faults);
  if (ce < 0) return;
  const did = (iommu.mem.read32(ce + 8) >>> 8) & 0xffff;
  iommu.mem.write64(ce, 0, 0);
  iommu.mem.write64(ce + 8, 0, 0);
  intelContextFlushNoPasid(info, did);
}
