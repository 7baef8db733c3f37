// The VT-d DMA-remapping unit: register file (vtd-model.md section 1), scalable-mode and legacy
// translation (B.2-B.4) with every fault reason as a value (B.5) and fault recording (B.6), the
// context cache, PASID cache and IOTLB (C.1), the invalidation queue and register-based
// invalidation with the removal rules of C.4 (C.2, C.3), the virtual command interface (D) and
// device-TLB invalidation towards ATS endpoints.
//
// Hot path: `translate(sid, pasid, addr, access, priv)` returns the host-physical address as a
// number, or a negative XLATE_* code; fault details are left in `lastFault`. An IOTLB hit
// allocates nothing and reads only typed arrays. The walk reads emulated memory frames directly
// and keeps 64-bit entries as u32 halves.
//
// Model decisions that the research marks [I] are stated where they are made; the main ones:
// - requests without PASID carry no privilege or execute bit (those live in the PASID TLP
//   prefix), so they use the context entry's RID_PRIV and an execute request is a read;
// - a field whose capability the hardware does not report (DTE without ECAP.DT, SRE without
//   ECAP.SRS, ...) makes the entry invalid (SCT.4 0x43 / SPT.4 0x5B);
// - A/D updates need a snooped walk only when the hardware reports ECAP.SMPWC: with SMPWC and
//   PWSNP=0 an A/D update faults SFL.9 0x90 (first level) or SSL.5 0x7C (second level);
// - with CM=1 the context and PASID caches also keep not-present entries (negative caching), so
//   software that skips the not-present->present invalidation keeps faulting, as on real
//   hardware with caching mode;
// - SFL.10 0x91 (A/D update failed) has no trigger: an entry that could be read can be written.

import { KernelError } from '../../core/errno.ts';
import { InvariantError, invariant } from '../../core/invariants.ts';
import type { Tracer } from '../../core/trace.ts';
import type { VtdConfig } from '../../machine-config.ts';
import type { PhysicalMemory } from '../memory.ts';
import * as memory from '../memory.ts';
import * as faults from './faults.ts';
import type { Iotlb } from './iotlb.ts';
import * as iotlbMod from './iotlb.ts';
import type { VtdCaps, VtdRegisterDefaults } from './regs.ts';
import * as regs from './regs.ts';
import * as structs from './structs.ts';
import type { VcmdBackend } from './vcmd.ts';
import * as vcmd from './vcmd.ts';

// Imported bindings become accessor calls once the module is transpiled (tsx); the translation
// hot path reads these module-level copies instead.
const {
  ACCESS_R,
  ACCESS_W,
  ACCESS_X,
  AT_TRANSLATED,
  AT_TRANSLATION_REQ,
  AT_UNTRANSLATED,
  FR,
  faultReasonInfo,
  LFR,
  legacyReason,
  STAGE_FL,
  STAGE_NONE,
  STAGE_SL,
} = faults;
const {
  buildCapRegisters,
  DMA_FECTL_IM,
  DMA_FECTL_IP,
  DMA_FSTS_ICE,
  DMA_FSTS_IQE,
  DMA_FSTS_ITE,
  DMA_FSTS_PFO,
  DMA_FSTS_PPF,
  DMA_FSTS_PRO,
  DMA_GCMD_QIE,
  DMA_GCMD_SRTP,
  DMA_GCMD_TE,
  DMA_GSTS_QIES,
  DMA_GSTS_RTPS,
  DMA_GSTS_TES,
  DMA_ICS_IWC,
  DMA_PRS_PPR,
  DMA_PRS_PRO,
  DMAR_CAP_REG,
  DMAR_CCMD_REG,
  DMAR_ECAP_REG,
  DMAR_FEADDR_REG,
  DMAR_FECTL_REG,
  DMAR_FEDATA_REG,
  DMAR_FEUADDR_REG,
  DMAR_FSTS_REG,
  DMAR_GCMD_REG,
  DMAR_GSTS_REG,
  DMAR_ICS_REG,
  DMAR_IEADDR_REG,
  DMAR_IECTL_REG,
  DMAR_IEDATA_REG,
  DMAR_IEUADDR_REG,
  DMAR_IQA_REG,
  DMAR_IQER_REG,
  DMAR_IQH_REG,
  DMAR_IQT_REG,
  DMAR_PEADDR_REG,
  DMAR_PECTL_REG,
  DMAR_PEDATA_REG,
  DMAR_PEUADDR_REG,
  DMAR_PQA_REG,
  DMAR_PQH_REG,
  DMAR_PQT_REG,
  DMAR_PRS_REG,
  DMAR_REG_SIZE,
  DMAR_RTADDR_REG,
  DMAR_VER_REG,
  decodeCaps,
  IQEI,
  RTADDR_TTM_LEGACY,
  RTADDR_TTM_SCALABLE,
  registerNames,
  VCMD_CMD_ALLOC,
  VCMD_CMD_FREE,
  VCMD_CMD_NOP,
  VCMD_LAYOUT_32,
  VCMD_LAYOUT_33,
  VCMD_SC32_INVALID_PASID,
  VCMD_SC32_NO_PASID,
  VCMD_SC32_UNDEFINED_CMD,
  VCMD_SC33_INVALID_PASID,
  VCMD_SC33_NO_PASID,
  VCMD_SC33_UNDEFINED_CMD,
  VTD_VERSION,
} = regs;
const { NO_PASID_KEY } = iotlbMod;
const { SLAB_SHIFT, SLAB_MASK } = memory;
const { descType, QI_TYPE, qword, PAGE_REQ_DSC } = structs;
const { LowestFreePasidAllocator } = vcmd;

/** translate() results below zero. */
export const XLATE_FAULT = -1;
/** A write without PASID to 0xFEEx_xxxx: an interrupt request, not DMA. */
export const XLATE_INTERRUPT = -2;
/** Not translated and not a DMA fault: a read without PASID of the interrupt range (UR). */
export const XLATE_ABORT = -3;

export const PGTT_FL = 1;
export const PGTT_SL = 2;
export const PGTT_NESTED = 3;
export const PGTT_PT = 4;

const TWO32 = 4294967296;
const INV_TWO32 = 1 / TWO32;
const INT_LO = 0xfee00000;
const INT_HI = 0xfeefffff;
const INT_LO_FN = INT_LO / 4096;
const INT_HI_FN = INT_HI >>> 12;

// nestedQuick's reserved high-word bits for a 48-bit host address width (setQuick checks it):
// FL: address bits 51:48; SL: those and TM (bit 62); SL table pointers: also every address bit
// beyond flat memory (at most 8 GiB, so of the high word only bit 0 may be set)
const QUICK_FL_RSVD_HI = 0xf0000;
const QUICK_SL_LEAF_RSVD_HI = 0x400f0000;
const QUICK_SL_RSVD_HI = 0x400ffffe;

// second-level walk modes: which fault a missing permission or a too-large address gives
const SLM_DIRECT = 0; // PGTT=2: SGN.6/7/3, SGN.4
const SLM_FINAL = 1; // nested, final GPA: SGN.6/7/3, SGN.5
const SLM_TABLE_TOP = 2; // nested, FL-PML4 table GPA: SFL.6, SFL.5
const SLM_TABLE = 3; // nested, lower FL table GPA: SFL.7, SFL.5
const SLM_AD = 4; // nested, A/D write to an FL entry: SFL.8, SFL.5

/** A cached context entry (context cache, C.1). */
class CtxEntry {
  sid = 0;
  /** raw words as read (8 in scalable mode, 4 legacy), plus the root entry words */
  readonly words = new Uint32Array(8);
  readonly root = new Uint32Array(4);
  /** 0 = usable; otherwise the fault a cached not-present entry gives (CM=1 only). */
  fault = 0;
  fpd = 0;
  legacy = false;
  dte = 0;
  paside = 0;
  pre = 0;
  pdts = 0;
  dirFn = 0;
  ridPasid = 0;
  ridPriv = 0;
  /** Requests with PASID >= this fault SCT.7; RID_PASID >= this faults SCT.9. */
  maxPasid = 0;
  /**
   * A request with a PASID below this passes every context-entry check of an untranslated
   * request (scalable mode, no fault, PASIDE set): nestedQuick's one test for all of them.
   */
  quickMaxPasid = 0;
  /** legacy mode: TT and the second-level setup, as a PeEntry for the shared walker */
  tt = 0;
  legacyPe: PeEntry | null = null;
  seq = 0;
  rootFn = 0;
  ctxFn = 0;
}

/** A cached PASID-table entry (PASID cache, C.1), decoded for the walk. */
class PeEntry {
  sid = 0;
  pasid = 0;
  readonly words = new Uint32Array(16);
  pde0 = 0;
  pde1 = 0;
  fault = 0;
  fpd = 0;
  pgtt = 0;
  did = 0;
  aw = 0;
  slLevels = 0;
  slLimitBits = 0;
  /** Input addresses must have hi < slLimitHi and (when the limit is below 2^32) lo < slLimitLo. */
  slLimitHi = 0;
  slLimitLo = 0;
  /** The unrolled second-level fast path applies: 4 levels, no A/D tracking, root backed, 32-bit+ limit. */
  slFastOk = false;
  /** nestedQuick applies (see setQuick); then the word index of the SL root in flat memory. */
  quick = 0;
  slRootWi = 0;
  /** The FL root GPA's low word as an int32, and the bits every FL entry needs (P, A, EA if EAFE). */
  qFlLo = 0;
  flNeed = 0;
  slee = 0;
  slade = 0;
  slptFn = 0;
  pwsnp = 0;
  sre = 0;
  ere = 0;
  flpm = 0;
  wpe = 0;
  nxe = 0;
  smep = 0;
  eafe = 0;
  flLo = 0;
  flHi = 0;
  seq = 0;
  dirFn = 0;
  tableFn = 0;
}

/** The endpoint side of ATS: what device-TLB invalidations and page responses reach. */
export interface AtsEndpoint {
  readonly sid: number;
  readonly ats: boolean;
  /** Drops device-TLB entries of `pasid` (-1: requests without PASID; `allPasids`: any) overlapping the range. */
  invalidateDevTlb(pasid: number, allPasids: boolean, firstPage: number, pages: number): void;
  /** A page group response from the IOMMU (page_grp_resp_dsc). */
  pageGroupResponse?(resp: { pasid: number | undefined; prgi: number; lpig: boolean; rc: number }): void;
}

/** Fault details of the last translation that faulted. */
export interface VtdFault {
  reason: number;
  cond: string;
  text: string;
  recorded: boolean;
  sid: number;
  pasid?: number;
  addr: bigint;
  access: number;
  privileged: boolean;
  at: number;
}

export interface MsiMessage {
  source: 'fault' | 'invalidation' | 'page-request';
  addr: bigint;
  data: number;
}

export interface VtdIommuOptions {
  tracer?: Tracer | null;
  vcmdBackend?: VcmdBackend;
  /** Receives the unit's MSIs (fault events, invalidation completion, page requests). */
  onMsi?: ((m: MsiMessage) => void) | null;
  name?: string;
}

function hex(lo: number, hi: number): string {
  return `0x${qword(lo, hi).toString(16)}`;
}

function fnOf(lo: number, hi: number): number {
  return (hi & 0xfffff) * 1048576 + (lo >>> 12);
}

/** Index into the table at level `lvl` (1..5) of a 64-bit address given as halves. */
function levelIndex(hi: number, lo: number, lvl: number): number {
  switch (lvl) {
    case 1:
      return (lo >>> 12) & 511;
    case 2:
      return (lo >>> 21) & 511;
    case 3:
      return ((lo >>> 30) | (hi << 2)) & 511;
    case 4:
      return (hi >>> 7) & 511;
    default:
      return (hi >>> 16) & 511;
  }
}

/** Permissions every second-level level must grant for a DMA access (SL-only or nested final). */
function slReq(access: number, slee: number): number {
  return (access & (ACCESS_R | ACCESS_W)) | (slee === 1 ? access & ACCESS_X : 0);
}

/** The fault for a second-level permission failure, by walk mode (cold path). */
function slPermFault(mode: number, acc: number, access: number, slee: number): number {
  if (mode === SLM_AD) return FR.SM_FL_NESTED_WRITE;
  if (mode === SLM_TABLE_TOP) return FR.SM_FL_NESTED_PML4_READ;
  if (mode === SLM_TABLE) return FR.SM_FL_NESTED_READ;
  if (access & ACCESS_W && (acc & 2) === 0) return FR.SM_WRITE;
  if ((access & ACCESS_R || access === 0) && (acc & 1) === 0) return FR.SM_READ;
  if (access & ACCESS_X && slee === 1 && (acc & 4) === 0) return FR.SM_EXEC;
  return FR.SM_READ;
}

function setSlLimit(pe: PeEntry): void {
  const lb = pe.slLimitBits;
  pe.slLimitHi = lb >= 32 ? 2 ** (lb - 32) : 1;
  pe.slLimitLo = lb >= 32 ? TWO32 : 2 ** lb;
}

/** Low-word mask of the page frame of a leaf at `lvl` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB). */
function leafBaseMaskLo(lvl: number): number {
  return lvl === 1 ? 0xfffff000 : lvl === 2 ? 0xffe00000 : 0xc0000000;
}

export class VtdIommu {
  readonly name: string;
  readonly mem: PhysicalMemory;
  readonly config: VtdConfig;
  readonly regValues: VtdRegisterDefaults;
  readonly caps: VtdCaps;
  tracer: Tracer | null;
  onMsi: ((m: MsiMessage) => void) | null;
  readonly vcmdBackend: VcmdBackend;
  /** Register names (Linux DMAR_*_REG without DMAR_) to offsets. */
  readonly registers: Record<string, number>;
  readonly iotlb: Iotlb;

  // ---- register state ----
  private gsts = 0;
  /** GSTS.TES as 0/1: gsts holds bit 31, so it is stored as a double; the hot paths test this. */
  private te = 0;
  private rtaddrLo = 0;
  private rtaddrHi = 0;
  /** root table latched by SRTP */
  private rtaFn = 0;
  private ttm = 0;
  private rtaSeq = 0;
  private ccmdLo = 0;
  private ccmdHi = 0;
  private fsts = 0;
  private fectl = DMA_FECTL_IM;
  private fedata = 0;
  private feaddr = 0;
  private feuaddr = 0;
  private iqh = 0;
  private iqt = 0;
  private iqaLo = 0;
  private iqaHi = 0;
  private ics = 0;
  private iectl = DMA_FECTL_IM;
  private iedata = 0;
  private ieaddr = 0;
  private ieuaddr = 0;
  private iqercdLo = 0;
  private iqercdHi = 0;
  private pqh = 0;
  private pqt = 0;
  private pqaLo = 0;
  private pqaHi = 0;
  private prs = 0;
  private pectl = DMA_FECTL_IM;
  private pedata = 0;
  private peaddr = 0;
  private peuaddr = 0;
  private ivaLo = 0;
  private ivaHi = 0;
  private iotlbRegLo = 0;
  private iotlbRegHi = 0;
  /** FRCD registers: 4 words each (lo qword, hi qword). */
  private readonly frcd: Uint32Array;
  private frcdNext = 0;
  private vcmdLo = 0;
  private vcmdHi = 0;
  private vcmdEoLo = 0;
  private vcmdEoHi = 0;
  private vcrspLo = 0;
  private vcrspHi = 0;
  private readonly vcmdLayout: typeof VCMD_LAYOUT_33 | typeof VCMD_LAYOUT_32;

  // ---- caches ----
  private readonly ctxCache = new Map<number, CtxEntry>();
  private mruCtxSid = -1;
  private mruCtx: CtxEntry | null = null;
  private readonly peCache = new Map<number, PeEntry>();
  private mruPeKey = -1;
  private mruPe: PeEntry | null = null;
  private readonly endpoints = new Map<number, AtsEndpoint>();

  // ---- derived constants ----
  /** bits 51:HAW of a pointer's high word */
  private readonly hawHiMask: number;
  private readonly sagaw: number;
  private readonly sllps: number;
  /** Second-level reserved bits by level: low word of a leaf / non-leaf entry, and the high word. */
  private readonly slRsvdLeaf = new Int32Array(6);
  private readonly slRsvdNonLeaf = new Int32Array(6);
  private readonly slRsvdHi: number;
  /** First-level reserved low-word bits by level. */
  private readonly flRsvdLeaf = new Int32Array(6);
  private readonly flRsvdNonLeaf = new Int32Array(6);
  /**
   * nestedQuick: the last word index of flat memory; a table's base ORed with an entry's index is
   * at most this exactly when the table is backed.
   */
  private readonly quickLastWi: number;

  // ---- walk outputs (no allocation per translation) ----
  private fr = 0;
  private stage = STAGE_NONE;
  private fpd = 0;
  private outLevel = 1;
  private outPermU = 0;
  private outPermS = 0;
  private slLevel = 1;
  private slPerm = 0;
  /** pure (side-effect-free) re-walk for the invariant checker */
  private pure = false;
  private pureSeq = 0;

  /** Details of the last fault a translation raised. */
  lastFault: VtdFault | null = null;
  /** Faults raised (recorded or not) and MSIs sent, for statistics. */
  faultCount = 0;
  msiCount = 0;
  walkCount = 0;
  /** Page-group responses seen without an endpoint to deliver them to. */
  readonly strayResponses: { sid: number; pasid: number | undefined; prgi: number; rc: number }[] = [];

  constructor(mem: PhysicalMemory, config: VtdConfig, opts: VtdIommuOptions = {}) {
    this.name = opts.name ?? 'dmar0';
    this.mem = mem;
    this.config = config;
    this.regValues = buildCapRegisters(config);
    this.caps = decodeCaps(this.regValues);
    this.tracer = opts.tracer ?? null;
    this.onMsi = opts.onMsi ?? null;
    this.vcmdBackend = opts.vcmdBackend ?? LowestFreePasidAllocator.forBits(config.pasid_bits);
    this.vcmdLayout = config.vcmd_layout === '3.2' ? VCMD_LAYOUT_32 : VCMD_LAYOUT_33;
    this.registers = registerNames(config.vcmd_layout, this.caps);
    this.iotlb = new iotlbMod.Iotlb(config.iotlb_entries);
    this.frcd = new Uint32Array(this.caps.nfr * 4);
    const h = this.caps.haw;
    this.hawHiMask = h >= 52 ? 0 : (0xfffff & ~((1 << Math.max(h - 32, 0)) - 1)) >>> 0;
    this.sagaw = this.caps.sagaw;
    this.sllps = this.caps.sllps;
    // SL: SNP (bit 11) only in leaves; PS reserved in the top levels and where SLLPS lacks the size;
    // the page frame of a large page must be aligned. TM (bit 62) and bits above HAW are reserved.
    this.slRsvdLeaf.set([
      0,
      0,
      (this.sllps & 1) === 0 ? 0x80 : 0x1ff000,
      (this.sllps & 2) === 0 ? 0x80 : 0x3ffff000,
      0,
      0,
    ]);
    this.slRsvdNonLeaf.set([0, 0, 0x800, 0x800, 0x880, 0x880]);
    this.slRsvdHi = (this.hawHiMask | 0x40000000) >>> 0;
    // FL: PS reserved in PML4E/PML5E, and in a PDPE without FL1GP; large-page frames aligned.
    this.flRsvdLeaf.set([0, 0, 0x1fe000, 0x3fffe000, 0, 0]);
    this.flRsvdNonLeaf.set([0, 0, 0, this.caps.fl1gp ? 0 : 0x80, 0x80, 0x80]);
    this.quickLastWi = mem.flat32 !== null ? mem.frameLimit * 1024 - 1 : -1;
  }

  // =============================================================================================
  // Translation entry points

  /**
   * Translates an untranslated DMA request. `pasid` < 0 means a request without PASID; `access`
   * is ACCESS_* bits. Returns the host-physical address, or XLATE_FAULT (see `lastFault`),
   * XLATE_INTERRUPT or XLATE_ABORT. Addresses are numbers below 2^53; use translate64 beyond.
   */
  translate(sid: number, pasid: number, addr: number, access: number, priv: boolean): number {
    const lo = addr >>> 0;
    const hi = (addr - lo) * INV_TWO32; // exact: a power of two, and cheaper than a division
    // Fast paths, small enough to inline into a DMA loop: a 4 KiB IOTLB hit for a request with
    // PASID, or with no IOTLB, nestedQuick. Everything else (and a hit that needs tracing) takes
    // translateMiss. (TurboFan inlines at most 460 bytes of bytecode: keep this function short.)
    const t = this.iotlb;
    if (pasid >= 0 && t.count !== 0 && this.te !== 0 && this.tracer === null) {
      const vlo = (hi << 20) | (lo >>> 12);
      const vhi = (hi >>> 12) | 0x1000000;
      const k = t.keys;
      let h = Math.imul(vlo ^ (pasid << 7) ^ (sid << 13) ^ vhi, 0x9e3779b1) >>> t.shift;
      for (;;) {
        const i = h << 2;
        // `|`, not `+`: i is a multiple of 4, and an OR needs no overflow check
        if (k[i] === vlo && k[i | 1] === vhi && k[i | 2] === pasid && k[i | 3] === sid) {
          if ((t.perm[(h << 1) | (priv ? 1 : 0)]! & access) === access) return t.base[h]! + (lo & 0xfff);
          break;
        }
        if (k[i | 3] === -1) break;
        h = (h + 1) & t.mask;
      }
    } else if (pasid >= 0 && t.capacity === 0) {
      // no IOTLB: the common nested walk without the general walk's calls
      const f = this.nestedQuick(sid, pasid, hi, lo | 0, access, priv);
      if (f >= 0) return f * 4096 + (lo & 0xfff);
    }
    // `+`: the call's result then joins the fast paths' as a double, so a caller that inlines
    // this function gets its address as a raw double, not as a newly allocated heap number
    return +this.translateMiss(sid, pasid, hi, lo | 0, access, priv);
  }

  /** As translate, with the 64-bit input address as u32 halves. */
  translate64(sid: number, pasid: number, hi: number, lo: number, access: number, priv: boolean): number {
    if (pasid >= 0 && this.iotlb.capacity === 0) {
      const f = this.nestedQuick(sid, pasid, hi, lo, access, priv);
      if (f >= 0) return f * 4096 + (lo & 0xfff);
    }
    return this.translateMiss(sid, pasid, hi, lo, access, priv);
  }

  /** translate64 past nestedQuick (translate: past its IOTLB probe too). */
  private translateMiss(
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
  ): number {
    if (pasid < 0) {
      if (hi === 0 && lo >>> 20 === 0xfee) return access & ACCESS_W ? XLATE_INTERRUPT : XLATE_ABORT;
      // no PASID prefix: no execute-requested bit
      if (access & ACCESS_X) access = (access & ~ACCESS_X) | ACCESS_R;
    }
    if ((this.gsts & DMA_GSTS_TES) === 0) return hi * TWO32 + (lo >>> 0);
    const t = this.iotlb;
    if (t.count !== 0) {
      const pk = pasid < 0 ? NO_PASID_KEY : pasid;
      let h = t.find(sid, pk, (hi << 20) | (lo >>> 12), (hi >>> 12) | (1 << 24));
      if (h >= 0) {
        if ((t.perm[(h << 1) + (priv ? 1 : 0)]! & access) === access) {
          if (this.tracer !== null) this.traceHit(sid, pasid, h);
          return t.base[h]! + (lo & 0xfff);
        }
      } else {
        const lc = t.levelCount;
        if (lc[2] !== 0) {
          h = t.find(sid, pk, (hi << 11) | (lo >>> 21), (hi >>> 21) | (2 << 24));
          if (h >= 0 && (t.perm[(h << 1) + (priv ? 1 : 0)]! & access) === access) {
            if (this.tracer !== null) this.traceHit(sid, pasid, h);
            return t.base[h]! + (lo & 0x1fffff);
          }
        }
        if (lc[3] !== 0) {
          h = t.find(sid, pk, (hi << 2) | (lo >>> 30), (hi >>> 30) | (3 << 24));
          if (h >= 0 && (t.perm[(h << 1) + (priv ? 1 : 0)]! & access) === access) {
            if (this.tracer !== null) this.traceHit(sid, pasid, h);
            return t.base[h]! + (lo & 0x3fffffff);
          }
        }
      }
      t.misses++;
    }
    const f = this.translateSlow(sid, pasid, hi, lo, access, priv, AT_UNTRANSLATED);
    return f < 0 ? f : f * 4096 + (lo & 0xfff);
  }

  /**
   * The translate entry point with the request spelled out (bigint address, optional PASID) and
   * an object result; translate/translate64 are the allocation-free forms of the same thing.
   */
  translateRequest(req: {
    sid: number;
    pasid?: number | undefined;
    addr: bigint;
    access: number;
    privileged?: boolean;
  }): { hpa: bigint } | { fault: VtdFault } | { interrupt: true } | { abort: true } {
    const a = BigInt.asUintN(64, req.addr);
    const r = this.translate64(
      req.sid,
      req.pasid ?? -1,
      Number(a >> 32n),
      Number(a & 0xffffffffn),
      req.access,
      req.privileged === true,
    );
    if (r === XLATE_FAULT) return { fault: this.lastFault! };
    if (r === XLATE_INTERRUPT) return { interrupt: true };
    if (r === XLATE_ABORT) return { abort: true };
    return { hpa: BigInt(r) };
  }

  /**
   * An ATS translation request: the walk of an untranslated request, but faults of the paging
   * structures are answered as a completion without permission (not recorded), while faults of
   * the root/context/PASID structures are recorded (VT-d 4.2.3). On success returns the HPA and
   * leaves the permissions the endpoint may cache in `atsPerm` and the page size in `atsPageShift`.
   */
  translateAts(sid: number, pasid: number, hi: number, lo: number, access: number, priv: boolean): number {
    if (pasid < 0 && access & ACCESS_X) access = (access & ~ACCESS_X) | ACCESS_R;
    if ((this.gsts & DMA_GSTS_TES) === 0) {
      this.atsPerm = ACCESS_R | ACCESS_W;
      this.atsPageShift = 12;
      return hi * TWO32 + (lo >>> 0);
    }
    const f = this.translateSlow(sid, pasid, hi, lo, access, priv, AT_TRANSLATION_REQ);
    const r = f < 0 ? f : f * 4096 + (lo & 0xfff);
    if (r >= 0) {
      this.atsPerm = priv ? this.outPermS : this.outPermU;
      this.atsPageShift = 12 + 9 * (this.outLevel - 1);
    }
    return r;
  }
  atsPerm = 0;
  atsPageShift = 12;

  /** A translated request (AT=10) from an ATS endpoint: allowed only if the context entry's DTE is set. */
  translateTranslated(
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
  ): number {
    if ((this.gsts & DMA_GSTS_TES) === 0) return hi * TWO32 + (lo >>> 0);
    this.fr = 0;
    this.fpd = 0;
    this.stage = STAGE_NONE;
    const ce = this.lookupContext(sid, pasid);
    if (ce === null) return this.raise(sid, pasid, hi, lo, access, priv, AT_TRANSLATED);
    const allowed = ce.legacy ? ce.tt === 1 : ce.dte === 1;
    if (!allowed) {
      this.fr = FR.SM_CTX_DTE;
      this.fpd = ce.fpd;
      return this.raise(sid, pasid, hi, lo, access, priv, AT_TRANSLATED);
    }
    return hi * TWO32 + (lo >>> 0);
  }

  private traceHit(sid: number, pasid: number, h: number): void {
    const t = this.iotlb;
    this.tracer!({
      kind: 'walk',
      what: 'iotlb-hit',
      iommu: this.name,
      sid,
      ...(pasid >= 0 ? { pasid } : {}),
      did: t.did[h],
      level: t.level(h),
      hpa: `0x${t.base[h]!.toString(16)}`,
    });
  }

  private traceStep(what: string, level: number, fn: number, wi: number, lo: number, hi: number): void {
    this.tracer!({
      kind: 'walk',
      what,
      iommu: this.name,
      level,
      addr: `0x${(fn * 4096 + wi * 4).toString(16)}`,
      entry: hex(lo, hi),
    });
  }

  /** The walk after an IOTLB miss; records a fault or fills the IOTLB. Returns the output frame number or XLATE_FAULT. */
  private translateSlow(
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
    at: number,
  ): number {
    this.walkCount++;
    this.fastMem = this.tracer === null && !this.pure ? this.mem.flat : null;
    this.fr = 0;
    this.fpd = 0;
    this.stage = STAGE_NONE;
    const ce = this.lookupContext(sid, pasid);
    if (ce === null) return this.raise(sid, pasid, hi, lo, access, priv, at);
    this.fpd = ce.fpd;
    let pe: PeEntry;
    let effPasid: number;
    let effPriv = priv;
    if (ce.legacy) {
      if (at === AT_TRANSLATION_REQ && ce.tt !== 1)
        return this.fail(FR.SM_CTX_DTE, ce.fpd, sid, pasid, hi, lo, access, priv, at);
      pe = ce.legacyPe!;
      effPasid = -1;
      effPriv = false;
    } else {
      if (at !== AT_UNTRANSLATED && ce.dte === 0)
        return this.fail(FR.SM_CTX_DTE, ce.fpd, sid, pasid, hi, lo, access, priv, at);
      if (pasid >= 0) {
        if (ce.paside === 0) return this.fail(FR.SM_CTX_PASIDE, ce.fpd, sid, pasid, hi, lo, access, priv, at);
        if (pasid >= ce.maxPasid)
          return this.fail(FR.SM_CTX_PASID_MAX, ce.fpd, sid, pasid, hi, lo, access, priv, at);
        effPasid = pasid;
      } else {
        effPasid = ce.ridPasid;
        if (effPasid >= ce.maxPasid)
          return this.fail(FR.SM_CTX_RID_PASID, ce.fpd, sid, pasid, hi, lo, access, priv, at);
        effPriv = ce.ridPriv === 1;
      }
      const p = this.lookupPasidEntry(ce, sid, effPasid);
      if (p === null) return this.raise(sid, pasid, hi, lo, access, priv, at);
      pe = p;
      this.fpd = pe.fpd;
      if (access & ACCESS_X && pe.ere === 0)
        return this.fail(FR.SM_PTE_ERE, pe.fpd, sid, pasid, hi, lo, access, priv, at);
      if (effPriv && pe.sre === 0)
        return this.fail(FR.SM_PTE_SRE, pe.fpd, sid, pasid, hi, lo, access, priv, at);
    }
    let ofn: number;
    switch (pe.pgtt) {
      case PGTT_PT:
        ofn = this.passThrough(hi, lo);
        break;
      case PGTT_SL:
        ofn = this.slFast(pe, hi, lo, slReq(access, pe.slee));
        if (ofn < 0) ofn = this.slWalk(pe, hi, lo, access, SLM_DIRECT);
        if (ofn >= 0) {
          this.outLevel = this.slLevel;
          const m = this.slPerm | (pe.slee === 0 && this.slPerm & ACCESS_R ? ACCESS_X : 0);
          this.outPermU = m & (pe.ere ? 7 : 3);
          this.outPermS = pe.sre ? this.outPermU : 0;
        }
        break;
      default:
        ofn = pe.pgtt === PGTT_NESTED ? this.nestedFast(pe, hi, lo, access, effPriv) : -1;
        if (ofn < 0) ofn = this.flWalk(pe, hi, lo, access, effPriv, pe.pgtt === PGTT_NESTED);
    }
    if (ofn < 0) return this.raise(sid, pasid, hi, lo, access, priv, at);
    // what a cached translation may grant: execute only with ERE, supervisor requests only with SRE
    if (pe.ere === 0) {
      this.outPermU &= ~ACCESS_X;
      this.outPermS &= ~ACCESS_X;
    }
    if (pe.sre === 0) this.outPermS = 0;
    // SGN.8: the translated page must not overlap the interrupt address range
    const pages = this.outLevel === 1 ? 1 : this.outLevel === 2 ? 512 : 262144;
    const baseFn = ofn - (ofn & (pages - 1));
    if (baseFn <= INT_HI_FN && baseFn + pages > INT_LO_FN) {
      return this.fail(FR.SM_INTERRUPT_ADDR, this.fpd, sid, pasid, hi, lo, access, priv, at);
    }
    if (pasid < 0) {
      // a hit must not depend on the request's privilege: there is none without PASID
      const m = effPriv ? this.outPermS : this.outPermU;
      this.outPermU = m;
      this.outPermS = m;
    }
    if (!this.pure && at !== AT_TRANSLATED && this.iotlb.capacity !== 0) {
      const l = this.outLevel;
      const vs = 12 + 9 * (l - 1);
      let vlo: number;
      let vhi: number;
      if (vs < 32) {
        vlo = (hi << (32 - vs)) | (lo >>> vs);
        vhi = hi >>> vs;
      } else {
        vlo = hi >>> (vs - 32);
        vhi = 0;
      }
      this.iotlb.insert(
        sid,
        pasid < 0 ? NO_PASID_KEY : pasid,
        vlo,
        vhi | (l << 24),
        pe.did,
        Math.max(effPasid, 0),
        pe.pgtt,
        this.outPermU,
        this.outPermS,
        baseFn * 4096,
        // as old as the oldest cached structure it was built from: a table write after that is
        // a pending change that explains a stale entry
        Math.min(pe.seq, ce.seq),
      );
    }
    return ofn;
  }

  private passThrough(hi: number, lo: number): number {
    // PT output is the input; beyond the host address width nothing is addressable (SGN.4)
    if (this.caps.haw < 64 && hi >= 2 ** (this.caps.haw - 32)) {
      this.fr = FR.SM_ADDR_BEYOND;
      return -1;
    }
    this.outLevel = 1;
    this.outPermU = ACCESS_R | ACCESS_W | ACCESS_X;
    this.outPermS = ACCESS_R | ACCESS_W | ACCESS_X;
    return hi * 1048576 + (lo >>> 12);
  }

  /** Sets the fault reason and FPD and raises it. */
  private fail(
    reason: number,
    fpd: number,
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
    at: number,
  ): number {
    this.fr = reason;
    this.fpd = fpd;
    return this.raise(sid, pasid, hi, lo, access, priv, at);
  }

  // =============================================================================================
  // Context and PASID structures

  /** The context entry for `sid` from the context cache or memory; null with fr/fpd set on a fault. */
  private lookupContext(sid: number, pasid: number): CtxEntry | null {
    let ce: CtxEntry | undefined;
    if (!this.pure) {
      if (sid === this.mruCtxSid) ce = this.mruCtx!;
      else {
        ce = this.ctxCache.get(sid);
        if (ce !== undefined) {
          this.mruCtxSid = sid;
          this.mruCtx = ce;
        }
      }
      if (ce !== undefined) {
        if (ce.fault !== 0) {
          this.fr = ce.fault;
          this.fpd = ce.fpd;
          return null;
        }
        if (ce.legacy && pasid >= 0) {
          this.fr = FR.SM_RTA_TTM0_PASID;
          return null;
        }
        return ce;
      }
    }
    const ttm = this.ttm;
    if (ttm > RTADDR_TTM_SCALABLE || (ttm === RTADDR_TTM_SCALABLE && !this.caps.smts)) {
      this.fr = FR.SM_RTA_INV;
      return null;
    }
    if (ttm === RTADDR_TTM_LEGACY) {
      if (pasid >= 0) {
        this.fr = FR.SM_RTA_TTM0_PASID;
        return null;
      }
      return this.fetchLegacyContext(sid);
    }
    return this.fetchSmContext(sid);
  }

  private noteRead(fn: number): void {
    const s = this.mem.frameSeq(fn);
    if (s > this.pureSeq) this.pureSeq = s;
  }

  private fetchSmContext(sid: number): CtxEntry | null {
    const mem = this.mem;
    const bus = sid >>> 8;
    const devfn = sid & 0xff;
    if (this.rtaFn >= mem.frameLimit) {
      this.fr = FR.SM_ROOT_ACCESS;
      return null;
    }
    const rf = mem.frame(this.rtaFn);
    if (this.pure) this.noteRead(this.rtaFn);
    const rw = bus * 4;
    const lo0 = rf[rw]!;
    const hi0 = rf[rw + 1]!;
    const lo1 = rf[rw + 2]!;
    const hi1 = rf[rw + 3]!;
    const upper = devfn >= 0x80;
    if (this.tracer !== null)
      this.traceStep('root', 0, this.rtaFn, rw + (upper ? 2 : 0), upper ? lo1 : lo0, upper ? hi1 : hi0);
    if (((upper ? lo1 : lo0) & 1) === 0) {
      this.fr = FR.SM_ROOT_P;
      return null;
    }
    const ptrRsvd = (0xfff00000 | this.hawHiMask) >>> 0;
    if (((lo0 | lo1) & 0xffe) !== 0 || ((hi0 | hi1) & ptrRsvd) !== 0) {
      this.fr = FR.SM_ROOT_RSVD;
      return null;
    }
    const ctpFn = upper ? fnOf(lo1, hi1) : fnOf(lo0, hi0);
    if (ctpFn >= mem.frameLimit) {
      this.fr = FR.SM_CTX_ACCESS;
      return null;
    }
    const cf = mem.frame(ctpFn);
    if (this.pure) this.noteRead(ctpFn);
    const cw = (devfn & 0x7f) * 8;
    const ce = new CtxEntry();
    ce.sid = sid;
    ce.seq = this.mem.writeSeq;
    ce.rootFn = this.rtaFn;
    ce.ctxFn = ctpFn;
    ce.root.set(rf.subarray(rw, rw + 4));
    ce.words.set(cf.subarray(cw, cw + 8));
    const w = ce.words;
    const w0 = w[0]!;
    if (this.tracer !== null) this.traceStep('context', 0, ctpFn, cw, w0, w[1]!);
    ce.fpd = (w0 >>> 1) & 1;
    if ((w0 & 1) === 0) {
      this.fr = FR.SM_CTX_P;
      this.fpd = ce.fpd;
      if (this.caps.cm && !this.pure) {
        ce.fault = FR.SM_CTX_P;
        this.ctxCache.set(sid, ce);
      }
      return null;
    }
    if (
      (w0 & 0x1e0) !== 0 ||
      (w[1]! & ptrRsvd) !== 0 ||
      (w[2]! & 0xffe00000) !== 0 ||
      w[3] !== 0 ||
      w[4] !== 0 ||
      w[5] !== 0 ||
      w[6] !== 0 ||
      w[7] !== 0
    ) {
      this.fr = FR.SM_CTX_RSVD;
      return null;
    }
    ce.dte = (w0 >>> 2) & 1;
    ce.paside = (w0 >>> 3) & 1;
    ce.pre = (w0 >>> 4) & 1;
    ce.pdts = (w0 >>> 9) & 7;
    ce.dirFn = fnOf(w0, w[1]!);
    ce.ridPasid = w[2]! & 0xfffff;
    ce.ridPriv = (w[2]! >>> 20) & 1;
    const caps = this.caps;
    let max = 2 ** (ce.pdts + 13);
    const hwMax = caps.pasid ? 2 ** caps.pasidBits : max;
    if (
      (ce.dte === 1 && !caps.dt) ||
      (ce.paside === 1 && !caps.pasid) ||
      (ce.pre === 1 && (!caps.prs || ce.dte === 0))
    ) {
      this.fr = FR.SM_CTX_INV;
      this.fpd = ce.fpd;
      return null;
    }
    // A directory sized beyond the unit's PASID width is not an error (Linux sizes it from the
    // device and a page at least): PASIDs past the unit's width are simply out of range.
    if (max > hwMax) max = hwMax;
    ce.maxPasid = max;
    if (ce.paside === 1) ce.quickMaxPasid = max | 0; // (a small integer, not a double field)
    if (!this.pure) {
      this.ctxCache.set(sid, ce);
      this.mruCtxSid = sid;
      this.mruCtx = ce;
    }
    return ce;
  }

  private fetchLegacyContext(sid: number): CtxEntry | null {
    const mem = this.mem;
    const bus = sid >>> 8;
    const devfn = sid & 0xff;
    if (this.rtaFn >= mem.frameLimit) {
      this.fr = FR.SM_ROOT_ACCESS;
      return null;
    }
    const rf = mem.frame(this.rtaFn);
    if (this.pure) this.noteRead(this.rtaFn);
    const rw = bus * 4;
    const lo0 = rf[rw]!;
    const hi0 = rf[rw + 1]!;
    if (this.tracer !== null) this.traceStep('root', 0, this.rtaFn, rw, lo0, hi0);
    if ((lo0 & 1) === 0) {
      this.fr = FR.SM_ROOT_P;
      return null;
    }
    const ptrRsvd = (0xfff00000 | this.hawHiMask) >>> 0;
    if ((lo0 & 0xffe) !== 0 || (hi0 & ptrRsvd) !== 0 || rf[rw + 2] !== 0 || rf[rw + 3] !== 0) {
      this.fr = FR.SM_ROOT_RSVD;
      return null;
    }
    const ctpFn = fnOf(lo0, hi0);
    if (ctpFn >= mem.frameLimit) {
      this.fr = FR.SM_CTX_ACCESS;
      return null;
    }
    const cf = mem.frame(ctpFn);
    if (this.pure) this.noteRead(ctpFn);
    const cw = devfn * 4;
    const ce = new CtxEntry();
    ce.legacy = true;
    ce.sid = sid;
    ce.seq = this.mem.writeSeq;
    ce.rootFn = this.rtaFn;
    ce.ctxFn = ctpFn;
    ce.root.set(rf.subarray(rw, rw + 4));
    ce.words.set(cf.subarray(cw, cw + 4));
    const w = ce.words;
    if (this.tracer !== null) this.traceStep('context', 0, ctpFn, cw, w[0]!, w[1]!);
    ce.fpd = (w[0]! >>> 1) & 1;
    if ((w[0]! & 1) === 0) {
      this.fr = FR.SM_CTX_P;
      this.fpd = ce.fpd;
      if (this.caps.cm && !this.pure) {
        ce.fault = FR.SM_CTX_P;
        this.ctxCache.set(sid, ce);
      }
      return null;
    }
    if ((w[0]! & 0xff0) !== 0 || (w[1]! & ptrRsvd) !== 0 || (w[2]! & 0xff000080) !== 0 || w[3] !== 0) {
      this.fr = FR.SM_CTX_RSVD;
      return null;
    }
    ce.tt = (w[0]! >>> 2) & 3;
    const aw = w[2]! & 7;
    const caps = this.caps;
    if (
      ce.tt === 3 ||
      (ce.tt === 1 && !caps.dt) ||
      (ce.tt === 2 && !caps.pt) ||
      (ce.tt !== 2 && (this.sagaw & (1 << aw)) === 0)
    ) {
      this.fr = FR.SM_CTX_INV;
      this.fpd = ce.fpd;
      return null;
    }
    const pe = new PeEntry();
    pe.sid = sid;
    pe.pgtt = ce.tt === 2 ? PGTT_PT : PGTT_SL;
    pe.did = (w[2]! >>> 8) & 0xffff;
    pe.aw = aw;
    pe.slLevels = aw + 2;
    pe.slLimitBits = Math.min(30 + 9 * aw, this.caps.mgaw + 1);
    setSlLimit(pe);
    pe.slptFn = fnOf(w[0]!, w[1]!);
    pe.pwsnp = 1;
    pe.fpd = ce.fpd;
    pe.seq = ce.seq;
    this.setSlFast(pe);
    ce.legacyPe = pe;
    if (!this.pure) {
      this.ctxCache.set(sid, ce);
      this.mruCtxSid = sid;
      this.mruCtx = ce;
    }
    return ce;
  }

  /** The PASID-table entry for (sid, pasid) from the PASID cache or memory. */
  private lookupPasidEntry(ce: CtxEntry, sid: number, pasid: number): PeEntry | null {
    const key = sid * 1048576 + pasid;
    if (!this.pure) {
      let pe: PeEntry | undefined;
      if (key === this.mruPeKey) pe = this.mruPe!;
      else {
        pe = this.peCache.get(key);
        if (pe !== undefined) {
          this.mruPeKey = key;
          this.mruPe = pe;
        }
      }
      if (pe !== undefined) {
        if (pe.fault !== 0) {
          this.fr = pe.fault;
          this.fpd = pe.fpd;
          return null;
        }
        return pe;
      }
    }
    const mem = this.mem;
    const di = pasid >>> 6;
    const dirFn = ce.dirFn + (di >>> 9);
    this.fpd = ce.fpd;
    if (dirFn >= mem.frameLimit) {
      this.fr = FR.SM_PDIR_ACCESS;
      return null;
    }
    const df = mem.frame(dirFn);
    if (this.pure) this.noteRead(dirFn);
    const dw = (di & 511) * 2;
    const d0 = df[dw]!;
    const d1 = df[dw + 1]!;
    if (this.tracer !== null) this.traceStep('pasid-dir', 0, dirFn, dw, d0, d1);
    const pe = new PeEntry();
    pe.sid = sid;
    pe.pasid = pasid;
    pe.pde0 = d0;
    pe.pde1 = d1;
    pe.dirFn = dirFn;
    pe.seq = Math.min(this.mem.writeSeq, ce.seq);
    pe.fpd = ce.fpd | ((d0 >>> 1) & 1);
    this.fpd = pe.fpd;
    if ((d0 & 1) === 0) {
      this.fr = FR.SM_PDIR_P;
      if (this.caps.cm && !this.pure) {
        pe.fault = FR.SM_PDIR_P;
        pe.did = -1;
        this.peCache.set(key, pe);
      }
      return null;
    }
    const ptrRsvd = (0xfff00000 | this.hawHiMask) >>> 0;
    if ((d0 & 0xffc) !== 0 || (d1 & ptrRsvd) !== 0) {
      this.fr = FR.SM_PDIR_RSVD;
      return null;
    }
    const tFn = fnOf(d0, d1);
    pe.tableFn = tFn;
    if (tFn >= mem.frameLimit) {
      this.fr = FR.SM_PTE_ACCESS;
      return null;
    }
    const tf = mem.frame(tFn);
    if (this.pure) this.noteRead(tFn);
    const tw = (pasid & 63) * 16;
    pe.words.set(tf.subarray(tw, tw + 16));
    const w = pe.words;
    const w0 = w[0]!;
    if (this.tracer !== null) this.traceStep('pasid-entry', 0, tFn, tw, w0, w[1]!);
    pe.fpd |= (w0 >>> 1) & 1;
    this.fpd = pe.fpd;
    if ((w0 & 1) === 0) {
      this.fr = FR.SM_PTE_P;
      if (this.caps.cm && !this.pure) {
        pe.fault = FR.SM_PTE_P;
        pe.did = -1;
        this.peCache.set(key, pe);
      }
      return null;
    }
    let rsvd = (w0 & 0xc00) | (w[1]! & ptrRsvd) | (w[2]! & 0x7f0000) | (w[4]! & 0xf00) | (w[5]! & ptrRsvd);
    for (let i = 6; i < 16; i++) rsvd |= w[i]!;
    if (rsvd !== 0) {
      this.fr = FR.SM_PTE_RSVD;
      return null;
    }
    const caps = this.caps;
    pe.aw = (w0 >>> 2) & 7;
    pe.slee = (w0 >>> 5) & 1;
    pe.pgtt = (w0 >>> 6) & 7;
    pe.slade = (w0 >>> 9) & 1;
    pe.slptFn = fnOf(w0, w[1]!);
    pe.did = w[2]! & 0xffff;
    pe.pwsnp = (w[2]! >>> 23) & 1;
    const w4 = w[4]!;
    pe.sre = w4 & 1;
    pe.ere = (w4 >>> 1) & 1;
    pe.flpm = (w4 >>> 2) & 3;
    pe.wpe = (w4 >>> 4) & 1;
    pe.nxe = (w4 >>> 5) & 1;
    pe.smep = (w4 >>> 6) & 1;
    pe.eafe = (w4 >>> 7) & 1;
    pe.flLo = w4 & 0xfffff000;
    pe.flHi = w[5]! & 0xfffff;
    pe.slLevels = pe.aw + 2;
    pe.slLimitBits = Math.min(30 + 9 * pe.aw, caps.mgaw + 1);
    setSlLimit(pe);
    const g = pe.pgtt;
    const usesSl = g === PGTT_SL || g === PGTT_NESTED;
    const usesFl = g === PGTT_FL || g === PGTT_NESTED;
    if (
      (g === PGTT_FL && !caps.flts) ||
      (g === PGTT_SL && !caps.slts) ||
      (g === PGTT_NESTED && !(caps.nest && caps.flts && caps.slts)) ||
      (g === PGTT_PT && !caps.pt) ||
      g === 0 ||
      g > PGTT_PT ||
      (usesSl && (pe.aw > 4 || (this.sagaw & (1 << pe.aw)) === 0)) ||
      (usesFl && (pe.flpm > 1 || (pe.flpm === 1 && !caps.fl5lp))) ||
      (pe.sre === 1 && !caps.srs) ||
      (pe.ere === 1 && !caps.ers) ||
      (pe.eafe === 1 && !caps.eafs) ||
      (pe.slade === 1 && !caps.slads)
    ) {
      this.fr = FR.SM_PTE_INV;
      return null;
    }
    this.setSlFast(pe);
    this.setQuick(pe);
    if (!this.pure) {
      this.peCache.set(key, pe);
      this.mruPeKey = key;
      this.mruPe = pe;
    }
    return pe;
  }

  // =============================================================================================
  // Paging structures

  private setSlFast(pe: PeEntry): void {
    pe.slFastOk =
      pe.slLevels === 4 && pe.slade === 0 && pe.slLimitLo === TWO32 && pe.slptFn < this.mem.frameLimit;
  }

  /** Flat memory while nothing observes the walk (no tracer, not an invariant re-walk). */
  private fastMem: Uint32Array | null = null;

  /**
   * The second-level walk's common case, small enough to be inlined into its callers: flat
   * memory, no tracing, no A/D tracking, every level granting `req`, no reserved bit. Returns the
   * output frame number (slLevel/slPerm set), or -1 for anything else, which the caller hands to
   * slWalk: that walk has no side effects to repeat and produces the exact fault.
   */
  private slFast(pe: PeEntry, gHi: number, gLo: number, req: number): number {
    const flat = this.fastMem;
    if (flat === null || !pe.slFastOk || gHi >= pe.slLimitHi) return -1;
    const limit = this.mem.frameLimit;
    const rsvdHi = this.slRsvdHi;
    // the four levels unrolled; a large page (PS) or anything unusual goes to slWalk
    let wi = pe.slptFn * 1024 + (((gHi >>> 7) & 511) << 1);
    let lo = flat[wi]!;
    let hi = flat[wi + 1]!;
    let acc = lo;
    if ((acc & req) !== req || (acc & 3) === 0 || (hi & rsvdHi) !== 0 || (lo & 0x880) !== 0) return -1;
    let fn = (hi & 0xfffff) * 1048576 + (lo >>> 12);
    if (fn >= limit) return -1;
    wi = fn * 1024 + ((((gLo >>> 30) | (gHi << 2)) & 511) << 1);
    lo = flat[wi]!;
    hi = flat[wi + 1]!;
    acc &= lo;
    if ((acc & req) !== req || (acc & 3) === 0 || (hi & rsvdHi) !== 0 || (lo & 0x880) !== 0) return -1;
    fn = (hi & 0xfffff) * 1048576 + (lo >>> 12);
    if (fn >= limit) return -1;
    wi = fn * 1024 + (((gLo >>> 21) & 511) << 1);
    lo = flat[wi]!;
    hi = flat[wi + 1]!;
    acc &= lo;
    if ((acc & req) !== req || (acc & 3) === 0 || (hi & rsvdHi) !== 0 || (lo & 0x880) !== 0) return -1;
    fn = (hi & 0xfffff) * 1048576 + (lo >>> 12);
    if (fn >= limit) return -1;
    wi = fn * 1024 + (((gLo >>> 12) & 511) << 1);
    lo = flat[wi]!;
    hi = flat[wi + 1]!;
    acc &= lo;
    if ((acc & req) !== req || (acc & 3) === 0 || (hi & rsvdHi) !== 0) return -1;
    this.slLevel = 1;
    this.slPerm = acc & (pe.slee === 1 ? 7 : 3);
    return (hi & 0xfffff) * 1048576 + (lo >>> 12);
  }

  /**
   * The nested walk's common case (4-level first level over the unrolled second level, 4 KiB
   * first-level pages whose accessed bits are already set, nothing observing): no side effects,
   * so -1 simply hands the request to flWalk, which produces the exact result or fault.
   */
  private nestedFast(pe: PeEntry, hi: number, lo: number, access: number, priv: boolean): number {
    const flat = this.fastMem;
    if (flat === null || pe.flpm !== 0 || !pe.slFastOk) return -1;
    const top = hi >>> 15;
    if (top !== 0 && top !== 0x1ffff) return -1;
    const limit = this.mem.frameLimit;
    const hiRsvd = this.hawHiMask;
    const user = !priv;
    const write = access & ACCESS_W;
    // P and A always (a clear A needs a write: flWalk does it), U/S and R/W when the request needs them
    const need =
      0x21 | (pe.eafe === 1 ? 0x400 : 0) | (user ? 4 : 0) | (write !== 0 && (user || pe.wpe === 1) ? 2 : 0);
    const xdFaults = (access & ACCESS_X) !== 0 && pe.nxe === 1;
    let tgLo = pe.flLo;
    let tgHi = pe.flHi;
    let all = 7;
    let xdAny = 0;
    let dirty = false;
    const slRoot = pe.slptFn;
    const slHiLimit = pe.slLimitHi;
    const slRsvdHi = this.slRsvdHi;
    for (let lvl = 4; lvl >= 1; lvl--) {
      // the table's GPA through the second level (4 levels, 4 KiB pages, readable), inline
      if (tgHi >= slHiLimit) return -1;
      // (unrolled: SL-PML4E, PDPE, PDE need R and no PS/SNP; the PTE needs R)
      let si = slRoot * 1024 + (((tgHi >>> 7) & 511) << 1);
      let sLo = flat[si]!;
      let sHi = flat[si + 1]!;
      if ((sLo & 0x881) !== 1 || (sHi & slRsvdHi) !== 0) return -1;
      let tFn = (sHi & 0xfffff) * 1048576 + (sLo >>> 12);
      if (tFn >= limit) return -1;
      si = tFn * 1024 + ((((tgLo >>> 30) | (tgHi << 2)) & 511) << 1);
      sLo = flat[si]!;
      sHi = flat[si + 1]!;
      if ((sLo & 0x881) !== 1 || (sHi & slRsvdHi) !== 0) return -1;
      tFn = (sHi & 0xfffff) * 1048576 + (sLo >>> 12);
      if (tFn >= limit) return -1;
      si = tFn * 1024 + (((tgLo >>> 21) & 511) << 1);
      sLo = flat[si]!;
      sHi = flat[si + 1]!;
      if ((sLo & 0x881) !== 1 || (sHi & slRsvdHi) !== 0) return -1;
      tFn = (sHi & 0xfffff) * 1048576 + (sLo >>> 12);
      if (tFn >= limit) return -1;
      si = tFn * 1024 + (((tgLo >>> 12) & 511) << 1);
      sLo = flat[si]!;
      sHi = flat[si + 1]!;
      if ((sLo & 1) === 0 || (sHi & slRsvdHi) !== 0) return -1;
      tFn = (sHi & 0xfffff) * 1048576 + (sLo >>> 12);
      if (tFn >= limit) return -1;
      const wi = tFn * 1024 + (levelIndex(hi, lo, lvl) << 1);
      const eLo = flat[wi]!;
      const eHi = flat[wi + 1]!;
      const xd = eHi >>> 31;
      // PS outside the last level (large page or reserved) and reserved address bits: flWalk decides
      if (
        (eLo & need) !== need ||
        (eHi & hiRsvd) !== 0 ||
        (lvl > 1 && (eLo & 0x80) !== 0) ||
        (xdFaults && xd === 1)
      ) {
        return -1;
      }
      all &= eLo;
      xdAny |= xd;
      tgLo = eLo & 0xfffff000;
      tgHi = eHi & 0xfffff;
      if (lvl === 1) {
        dirty = (eLo & 0x40) !== 0;
        if (write !== 0 && !dirty) return -1; // setting D is a write: flWalk does it
      }
    }
    const out = this.slFast(pe, tgHi, tgLo | (lo & 0xfff), slReq(access, pe.slee));
    if (out < 0) return -1;
    const usAll = (all >>> 2) & 1;
    const rwAll = (all >>> 1) & 1;
    if ((access & ACCESS_X) !== 0 && priv && pe.smep === 1 && usAll === 1) return -1;
    const noExec = pe.nxe === 1 && xdAny === 1;
    let pu = usAll === 1 ? ACCESS_R | (rwAll === 1 && dirty ? ACCESS_W : 0) | (noExec ? 0 : ACCESS_X) : 0;
    let ps =
      ACCESS_R |
      ((pe.wpe === 0 || rwAll === 1) && dirty ? ACCESS_W : 0) |
      (noExec || (pe.smep === 1 && usAll === 1) ? 0 : ACCESS_X);
    if (pe.ere === 0) {
      pu &= ~ACCESS_X;
      ps &= ~ACCESS_X;
    }
    if (pe.sre === 0) ps = 0;
    const sp = this.slPerm | (pe.slee === 0 && this.slPerm & ACCESS_R ? ACCESS_X : 0);
    this.outLevel = 1;
    this.outPermU = pu & sp;
    this.outPermS = ps & sp;
    return out;
  }

  /**
   * Whether nestedQuick may walk for this PASID entry: nested, 4-level first level over the
   * unrolled second level, flat memory, a 48-bit host address width (the default; its reserved
   * bits are literals in the walk), and every GPA a first-level entry can hold below the second
   * level's limit (so the walk needs no limit check of its own).
   */
  private setQuick(pe: PeEntry): void {
    const ok =
      this.mem.flat32 !== null &&
      pe.pgtt === PGTT_NESTED &&
      pe.flpm === 0 &&
      pe.slFastOk &&
      this.hawHiMask === QUICK_FL_RSVD_HI &&
      this.slRsvdHi === QUICK_SL_LEAF_RSVD_HI &&
      (0xfffff & ~this.hawHiMask) < pe.slLimitHi &&
      pe.flHi < pe.slLimitHi;
    pe.quick = ok ? 1 : 0;
    pe.slRootWi = ok ? pe.slptFn * 1024 : 0;
    pe.qFlLo = pe.flLo | 0;
    pe.flNeed = 0x21 | (pe.eafe === 1 ? 0x400 : 0);
  }

  /**
   * A nested translation with no IOTLB, in its common case: the request's context and PASID
   * entries are the most recently used ones, the PASID entry qualifies (setQuick), the access is
   * a read or a write, and every entry on the way is present, grants the access, has its accessed
   * bit (and for a write the leaf's dirty bit) set and no reserved or large-page bit. It makes the
   * full walk's 24 reads in the same order, straight-line in one function on int32 values and
   * without the calls of translateSlow/nestedFast/slFast: a walk is a chain of dependent loads,
   * mostly cache misses, and every instruction between them delays the next. A table pointer
   * beyond flat memory also hands the request over. Returns the output frame number, or -1
   * having changed nothing: the full path then produces the exact fault or A/D update.
   */
  private nestedQuick(
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
  ): number {
    if (sid !== this.mruCtxSid || sid * 1048576 + pasid !== this.mruPeKey) return -1;
    const pe = this.mruPe!;
    if (pe.quick === 0 || pasid >= this.mruCtx!.quickMaxPasid) return -1;
    if (this.te === 0 || this.tracer !== null) return -1;
    // reads and writes (execute and probes take the full path), canonical lower half
    if (access === 0 || (access & ~(ACCESS_R | ACCESS_W)) !== 0 || !(hi >= 0 && hi < 0x8000)) return -1;
    if (priv === true && pe.sre === 0) return -1;
    const m = this.mem.flat32!;
    // `| 0`: the field holds a value beyond the small-integer range, so it is stored as a
    // double; truncated once here, every comparison below is an integer one
    const last = this.quickLastWi | 0;
    // literals, not variables: the walk needs every register it can get
    const tRs = QUICK_SL_RSVD_HI;
    const fRs = QUICK_FL_RSVD_HI;
    const vHi = hi | 0;
    const write = access & ACCESS_W;
    const user = priv !== true;
    // FL: P, A (EA), U/S for a user request, R/W for a write that honours it; PS clear above the
    // leaf (a large page or a reserved bit); the leaf's D for a write (setting it is a write)
    const need = pe.flNeed | (user ? 4 : 0) | (write !== 0 && (user || pe.wpe === 1) ? 2 : 0);
    const upper = need | 0x80;
    const leaf = write !== 0 ? need | 0x40 : need;
    const root = pe.slRootWi;
    // Each table's GPA goes through the second level: R at every level, PS and SNP clear above
    // the leaf, the next table inside flat memory. For an entry (lo, hi) whose hi bits 19:1 are
    // clear (tRs), the word index of entry `i` of the table it points to is
    // ((lo >>> 2) & 0x3ffffc00) | (((hi & 1) << 30) | i * 2): grouped so that three operations
    // separate one load from the next (the walk is a chain of dependent loads), and
    // non-negative, so the index needs no sign extension.
    let gLo = pe.qFlLo;
    let gHi = pe.flHi;
    let eLo = 0;
    let eHi = 0;
    let wi = root | ((gHi >>> 6) & 0x3fe);
    // ---- FL PML4 table
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | (((gLo >>> 29) | (gHi << 3)) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 20) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 11) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 1) === 0 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((vHi >>> 6) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & upper) !== need || (eHi & fRs) !== 0) return -1;
    gLo = eLo & 0xfffff000;
    gHi = eHi;
    // ---- FL PDP table
    wi = root | ((gHi >>> 6) & 0x3fe);
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | (((gLo >>> 29) | (gHi << 3)) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 20) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 11) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 1) === 0 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | (((lo >>> 29) | (vHi << 3)) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & upper) !== need || (eHi & fRs) !== 0) return -1;
    gLo = eLo & 0xfffff000;
    gHi = eHi;
    // ---- FL page directory
    wi = root | ((gHi >>> 6) & 0x3fe);
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | (((gLo >>> 29) | (gHi << 3)) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 20) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 11) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 1) === 0 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((lo >>> 20) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & upper) !== need || (eHi & fRs) !== 0) return -1;
    gLo = eLo & 0xfffff000;
    gHi = eHi;
    // ---- FL page table
    wi = root | ((gHi >>> 6) & 0x3fe);
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | (((gLo >>> 29) | (gHi << 3)) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 20) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 0x881) !== 1 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 11) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & 1) === 0 || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((lo >>> 11) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & leaf) !== leaf || (eHi & fRs) !== 0) return -1;
    // ---- the output GPA through the second level, for the access itself
    gLo = (eLo & 0xfffff000) | (lo & 0xfff);
    gHi = eHi;
    const sNeed = write !== 0 ? (access & ACCESS_R) | ACCESS_W : ACCESS_R;
    const sUpper = sNeed | 0x880;
    wi = root | ((gHi >>> 6) & 0x3fe);
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & sUpper) !== sNeed || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | (((gLo >>> 29) | (gHi << 3)) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & sUpper) !== sNeed || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 20) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    if ((eLo & sUpper) !== sNeed || (eHi & tRs) !== 0) return -1;
    wi = ((eLo >>> 2) & 0x3ffffc00) | (((eHi & 1) << 30) | ((gLo >>> 11) & 0x3fe));
    if (wi > last) return -1;
    eLo = m[wi]!;
    eHi = m[wi | 1]!;
    // the output need not be backed memory: only the reserved bits
    if ((eLo & sNeed) !== sNeed || (eHi & QUICK_SL_LEAF_RSVD_HI) !== 0) return -1;
    const out = (eHi & 0xfffff) * 1048576 + (eLo >>> 12);
    if (out >= INT_LO_FN && out <= INT_HI_FN) return -1; // SGN.8: the full path faults
    this.walkCount++;
    return out;
  }

  /**
   * Second-level walk of (gHi, gLo) for `access`. Returns the output's frame number (a small
   * integer, so nothing is boxed) or -1 with fr set.
   * Leaves the leaf level in slLevel and the permissions a cached translation may grant in slPerm
   * (W only once the dirty bit is set when the entry tracks dirtiness).
   */
  private slWalk(pe: PeEntry, gHi: number, gLo: number, access: number, mode: number): number {
    if (gHi >= pe.slLimitHi || gLo >>> 0 >= pe.slLimitLo) {
      this.stage = STAGE_SL;
      this.fr =
        mode === SLM_DIRECT
          ? FR.SM_ADDR_BEYOND
          : mode === SLM_FINAL
            ? FR.SM_SL_ADDR_BEYOND
            : FR.SM_FL_NESTED_MGAW;
      return -1;
    }
    const mem = this.mem;
    const flat = mem.flat;
    const slotOf = mem.slotOf;
    const slabs = mem.slabs;
    const limit = mem.frameLimit;
    const pure = this.pure;
    const traced = this.tracer !== null;
    const levels = pe.slLevels;
    const slee = pe.slee;
    const slade = pe.slade === 1 && !pure;
    const hiRsvd = this.slRsvdHi;
    const write = access & ACCESS_W;
    // permissions every level must grant (R=1, W=2, X=4): a not-present entry (R=W=0) never passes
    const req =
      mode <= SLM_FINAL
        ? (access & (ACCESS_R | ACCESS_W)) | (slee === 1 ? access & ACCESS_X : 0)
        : mode === SLM_AD
          ? ACCESS_R | ACCESS_W
          : ACCESS_R;
    let fn = pe.slptFn;
    let acc = 7;
    for (let lvl = levels; lvl >= 1; lvl--) {
      if (fn >= limit) {
        this.stage = STAGE_SL;
        this.fr = lvl === levels ? FR.SM_SL_PTR_INV : FR.SM_SL_ACCESS;
        return -1;
      }
      if (pure) this.noteRead(fn);
      const ei = levelIndex(gHi, gLo, lvl) << 1;
      let arr: Uint32Array;
      let wi: number;
      if (flat !== null) {
        arr = flat;
        wi = fn * 1024 + ei;
      } else {
        const slot = slotOf !== null ? slotOf[fn]! : mem.slot(fn);
        arr = slabs[slot >>> SLAB_SHIFT]!;
        wi = ((slot & SLAB_MASK) << 10) + ei;
      }
      let eLo = arr[wi]!;
      const eHi = arr[wi + 1]!;
      if (traced) this.traceStep('sl', lvl, fn, ei, eLo, eHi);
      acc &= eLo;
      if ((acc & req) !== req || (acc & 3) === 0) {
        this.stage = STAGE_SL;
        this.fr = slPermFault(mode, acc, access, slee);
        return -1;
      }
      const leaf = lvl === 1 || ((eLo & 0x80) !== 0 && lvl <= 3);
      if ((eLo & (leaf ? this.slRsvdLeaf[lvl]! : this.slRsvdNonLeaf[lvl]!)) !== 0 || (eHi & hiRsvd) !== 0) {
        this.stage = STAGE_SL;
        this.fr = FR.SM_SL_RSVD;
        return -1;
      }
      if (slade && ((eLo & 0x100) === 0 || (leaf && write !== 0 && (eLo & 0x200) === 0))) {
        if (this.caps.smpwc && pe.pwsnp === 0) {
          this.stage = STAGE_SL;
          this.fr = FR.SM_SL_AD_NOSNOOP;
          return -1;
        }
        eLo = (eLo | 0x100 | (leaf && write !== 0 ? 0x200 : 0)) >>> 0;
        mem.writeWordHw(fn, ei, eLo);
      }
      if (leaf) {
        this.slLevel = lvl;
        let perm = acc & (slee === 1 ? 7 : 3);
        if (pe.slade === 1 && (eLo & 0x200) === 0) perm &= ~ACCESS_W;
        this.slPerm = perm;
        const ml = leafBaseMaskLo(lvl);
        return (eHi & 0xfffff) * 1048576 + (((eLo & ml) >>> 12) | ((gLo & ~ml) >>> 12));
      }
      fn = (eHi & 0xfffff) * 1048576 + (eLo >>> 12);
    }
    this.stage = STAGE_SL;
    this.fr = FR.SM_SL_ACCESS;
    return -1;
  }

  /**
   * First-level walk (PGTT=1), or nested (PGTT=3) where every table address and the output are
   * guest-physical and go through the second level. Returns the output's frame number or -1;
   * leaves outLevel/outPermU/outPermS.
   */
  private flWalk(
    pe: PeEntry,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
    nested: boolean,
  ): number {
    const levels = 4 + pe.flpm;
    const top = levels === 4 ? hi >>> 15 : hi >>> 24;
    if (top !== 0 && top !== (levels === 4 ? 0x1ffff : 0xff)) {
      this.stage = STAGE_FL;
      this.fr = FR.SM_NON_CANONICAL;
      return -1;
    }
    const mem = this.mem;
    const flat = mem.flat;
    const slotOf = mem.slotOf;
    const slabs = mem.slabs;
    const limit = mem.frameLimit;
    const pure = this.pure;
    const traced = this.tracer !== null;
    const probe = access === 0;
    const user = !priv && !probe;
    const write = access & ACCESS_W;
    const exec = access & ACCESS_X;
    const wpe = pe.wpe;
    const nxe = pe.nxe;
    const hiRsvd = this.hawHiMask;
    // bits every entry must have: P; U/S for a user request; R/W for a write that honours it
    const need = 1 | (user ? 4 : 0) | (write !== 0 && (user || wpe === 1) ? 2 : 0);
    const xdFaults = exec !== 0 && nxe === 1;
    const adNeed = 0x20 | (pe.eafe === 1 ? 0x400 : 0);
    const rsvdLeaf = this.flRsvdLeaf;
    const rsvdNonLeaf = this.flRsvdNonLeaf;
    const large1g = rsvdNonLeaf[3] === 0;
    // the current table: its address in the first level's space (GPA when nested) and its frame
    let tgLo = pe.flLo;
    let tgHi = pe.flHi;
    let tFn = nested ? 0 : fnOf(tgLo, tgHi);
    let all = 7; // P, R/W, U/S ANDed over the levels
    let xdAny = 0;
    for (let lvl = levels; lvl >= 1; lvl--) {
      if (nested) {
        tFn = this.slFast(pe, tgHi, tgLo, ACCESS_R);
        if (tFn < 0) tFn = this.slWalk(pe, tgHi, tgLo, ACCESS_R, lvl === levels ? SLM_TABLE_TOP : SLM_TABLE);
        if (tFn < 0) return -1;
      }
      if (tFn >= limit) {
        this.stage = STAGE_FL;
        this.fr = lvl === levels ? FR.SM_FL_PML4_ACCESS : FR.SM_FL_ACCESS;
        return -1;
      }
      if (pure) this.noteRead(tFn);
      const ei = levelIndex(hi, lo, lvl) << 1;
      let arr: Uint32Array;
      let wi: number;
      if (flat !== null) {
        arr = flat;
        wi = tFn * 1024 + ei;
      } else {
        const slot = slotOf !== null ? slotOf[tFn]! : mem.slot(tFn);
        arr = slabs[slot >>> SLAB_SHIFT]!;
        wi = ((slot & SLAB_MASK) << 10) + ei;
      }
      let eLo = arr[wi]!;
      const eHi = arr[wi + 1]!;
      if (traced) this.traceStep(nested ? 'fl-nested' : 'fl', lvl, tFn, ei, eLo, eHi);
      if ((eLo & need) !== need) {
        this.stage = STAGE_FL;
        this.fr = (eLo & 1) === 0 ? FR.SM_FL_P : user && (eLo & 4) === 0 ? FR.SM_US : FR.SM_WRITE;
        return -1;
      }
      all &= eLo;
      xdAny |= eHi >>> 31;
      if (xdFaults && eHi >>> 31 === 1) {
        this.stage = STAGE_FL;
        this.fr = FR.SM_EXEC;
        return -1;
      }
      const leaf = lvl === 1 || ((eLo & 0x80) !== 0 && (lvl === 2 || (lvl === 3 && large1g)));
      if ((eLo & (leaf ? rsvdLeaf[lvl]! : rsvdNonLeaf[lvl]!)) !== 0 || (eHi & hiRsvd) !== 0) {
        this.stage = STAGE_FL;
        this.fr = FR.SM_FL_RSVD;
        return -1;
      }
      if (!pure) {
        const ad = leaf && write !== 0 ? adNeed | 0x40 : adNeed;
        if ((eLo & ad) !== ad) {
          if (this.caps.smpwc && pe.pwsnp === 0) {
            this.stage = STAGE_FL;
            this.fr = FR.SM_FL_AD_NOSNOOP;
            return -1;
          }
          if (nested) {
            // the A/D write goes to the FL entry's guest-physical page: needs SL write permission
            if (this.slWalk(pe, tgHi, tgLo, ACCESS_W | ACCESS_R, SLM_AD) < 0) return -1;
          }
          eLo = (eLo | ad) >>> 0;
          mem.writeWordHw(tFn, ei, eLo);
        }
      }
      if (leaf) {
        const usAll = (all >>> 2) & 1;
        const rwAll = (all >>> 1) & 1;
        if (exec !== 0 && priv && pe.smep === 1 && usAll === 1) {
          this.stage = STAGE_FL;
          this.fr = FR.SM_EXEC;
          return -1;
        }
        const ml = leafBaseMaskLo(lvl);
        const dirty = (eLo & 0x40) !== 0;
        const noExec = nxe === 1 && xdAny === 1;
        let pu = usAll === 1 ? ACCESS_R | (rwAll === 1 && dirty ? ACCESS_W : 0) | (noExec ? 0 : ACCESS_X) : 0;
        let ps2 =
          ACCESS_R |
          ((wpe === 0 || rwAll === 1) && dirty ? ACCESS_W : 0) |
          (noExec || (pe.smep === 1 && usAll === 1) ? 0 : ACCESS_X);
        if (pe.ere === 0) {
          pu &= ~ACCESS_X;
          ps2 &= ~ACCESS_X;
        }
        if (pe.sre === 0) ps2 = 0;
        let level = lvl;
        let out: number;
        if (nested) {
          const oLo = (eLo & ml) | (lo & ~ml);
          out = probe ? -1 : this.slFast(pe, eHi & 0xfffff, oLo, slReq(access, pe.slee));
          if (out < 0) out = this.slWalk(pe, eHi & 0xfffff, oLo, probe ? 0 : access, SLM_FINAL);
          if (out < 0) return -1;
          if (this.slLevel < level) level = this.slLevel;
          const sp = this.slPerm | (pe.slee === 0 && this.slPerm & ACCESS_R ? ACCESS_X : 0);
          pu &= sp;
          ps2 &= sp;
        } else out = (eHi & 0xfffff) * 1048576 + (((eLo & ml) >>> 12) | ((lo & ~ml) >>> 12));
        this.outLevel = level;
        this.outPermU = pu;
        this.outPermS = ps2;
        return out;
      }
      tgLo = eLo & 0xfffff000;
      tgHi = eHi & 0xfffff;
      if (!nested) tFn = tgHi * 1048576 + (eLo >>> 12);
    }
    this.stage = STAGE_FL;
    this.fr = FR.SM_FL_ACCESS;
    return -1;
  }

  // =============================================================================================
  // Faults (B.6)

  /** Reports the fault in `fr` for a request: maps codes for legacy mode / qemu_compat, records it. */
  private raise(
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
    at: number,
  ): number {
    if (this.pure) return XLATE_FAULT;
    let reason = this.fr;
    if (this.ttm === RTADDR_TTM_LEGACY && reason >= 0x38) {
      reason = reason === FR.SM_INTERRUPT_ADDR ? LFR.INTERRUPT_ADDR : legacyReason(reason, this.stage);
    } else if (this.config.qemu_compat) reason = legacyReason(reason, this.stage);
    const info = faultReasonInfo(reason);
    this.faultCount++;
    // An ATS translation request that fails in the paging structures gets a completion without
    // permission, not a recorded fault.
    const atsNoPerm =
      at === AT_TRANSLATION_REQ && (this.stage !== STAGE_NONE || reason === FR.SM_INTERRUPT_ADDR);
    let recorded = false;
    if (!atsNoPerm && !(info.qualified && this.fpd !== 0)) {
      recorded = this.recordFault(sid, pasid, hi, lo, reason, access, priv, at);
    }
    const addr = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
    const f: VtdFault = {
      reason,
      cond: info.cond,
      text: info.text,
      recorded,
      sid,
      addr,
      access,
      privileged: priv,
      at,
    };
    if (pasid >= 0) f.pasid = pasid;
    this.lastFault = f;
    if (this.tracer !== null) {
      this.tracer({
        kind: 'vtd',
        what: 'fault',
        iommu: this.name,
        reason: `0x${reason.toString(16)}`,
        cond: info.cond,
        text: info.text,
        recorded,
        sid,
        ...(pasid >= 0 ? { pasid } : {}),
        addr: `0x${addr.toString(16)}`,
      });
    }
    return XLATE_FAULT;
  }

  /** Primary fault logging; returns whether the fault was recorded. */
  private recordFault(
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    reason: number,
    access: number,
    priv: boolean,
    at: number,
  ): boolean {
    if (this.fsts & DMA_FSTS_PFO) return false;
    const n = this.caps.nfr;
    const r = this.frcd;
    // "compression": a pending record for the same source-id absorbs the new fault
    for (let i = 0; i < n; i++) {
      if (r[i * 4 + 3]! >>> 31 === 1 && (r[i * 4 + 2]! & 0xffff) === sid) return false;
    }
    const i = this.frcdNext;
    if (r[i * 4 + 3]! >>> 31 === 1) {
      this.setFsts(this.fsts | DMA_FSTS_PFO);
      return false;
    }
    r[i * 4] = (lo & 0xfffff000) >>> 0;
    r[i * 4 + 1] = hi >>> 0;
    r[i * 4 + 2] =
      ((sid & 0xffff) |
        (priv && pasid >= 0 ? 1 << 29 : 0) |
        (access & ACCESS_X ? 1 << 30 : 0) |
        (pasid >= 0 ? 1 << 31 : 0)) >>>
      0;
    const pv = Math.max(pasid, 0);
    r[i * 4 + 3] =
      ((reason & 0xff) |
        ((pv & 0xfffff) << 8) |
        ((at & 3) << 28) |
        ((access & ACCESS_W) === 0 ? 1 << 30 : 0) |
        (1 << 31)) >>>
      0;
    if ((this.fsts & DMA_FSTS_PPF) === 0) {
      this.fsts = (this.fsts & ~(0xff << 8)) | (i << 8);
      this.setFsts(this.fsts | DMA_FSTS_PPF);
    }
    this.frcdNext = (i + 1) % n;
    return true;
  }

  /** Sets FSTS, raising a fault event when a status bit appears and none was pending. */
  private setFsts(v: number): void {
    const pendingBits =
      DMA_FSTS_PFO | DMA_FSTS_PPF | DMA_FSTS_IQE | DMA_FSTS_ICE | DMA_FSTS_ITE | DMA_FSTS_PRO;
    const before = this.fsts & pendingBits;
    this.fsts = v >>> 0;
    if (before === 0 && (this.fsts & pendingBits) !== 0) this.faultEvent();
  }

  private faultEvent(): void {
    this.fectl |= DMA_FECTL_IP;
    if ((this.fectl & DMA_FECTL_IM) === 0) this.sendMsi('fault');
  }

  private sendMsi(source: MsiMessage['source']): void {
    let addr: bigint;
    let data: number;
    if (source === 'fault') {
      this.fectl &= ~DMA_FECTL_IP;
      addr = (BigInt(this.feuaddr >>> 0) << 32n) | BigInt(this.feaddr >>> 0);
      data = this.fedata;
    } else if (source === 'invalidation') {
      this.iectl &= ~DMA_FECTL_IP;
      addr = (BigInt(this.ieuaddr >>> 0) << 32n) | BigInt(this.ieaddr >>> 0);
      data = this.iedata;
    } else {
      this.pectl &= ~DMA_FECTL_IP;
      addr = (BigInt(this.peuaddr >>> 0) << 32n) | BigInt(this.peaddr >>> 0);
      data = this.pedata;
    }
    this.msiCount++;
    const m: MsiMessage = { source, addr, data };
    if (this.tracer !== null) {
      this.tracer({
        kind: 'vtd',
        what: 'msi',
        iommu: this.name,
        source,
        addr: `0x${addr.toString(16)}`,
        data,
      });
    }
    this.onMsi?.(m);
  }

  /** PPF = OR of the F bits, recomputed when software clears one. */
  private recomputePpf(): void {
    let any = false;
    for (let i = 0; i < this.caps.nfr; i++) if (this.frcd[i * 4 + 3]! >>> 31 === 1) any = true;
    this.fsts = any ? this.fsts | DMA_FSTS_PPF : this.fsts & ~DMA_FSTS_PPF;
  }

  // =============================================================================================
  // MMIO

  /** Reads a register. Misaligned or out-of-page accesses are refused (EINVAL). */
  mmioRead(offset: number, size: 4 | 8): bigint | KernelError {
    const bad = this.checkMmio(offset, size);
    if (bad) return bad;
    if (size === 8) {
      const lo = this.read32(offset);
      const hi = this.read32(offset + 4);
      return qword(lo, hi);
    }
    return BigInt(this.read32(offset) >>> 0);
  }

  /** Writes a register; its side effects are complete when this returns. */
  mmioWrite(offset: number, value: bigint, size: 4 | 8): KernelError | null {
    const bad = this.checkMmio(offset, size);
    if (bad) return bad;
    const v = BigInt.asUintN(size * 8, value);
    const lo = Number(v & 0xffffffffn);
    if (size === 8) this.write64(offset, lo, Number(v >> 32n));
    else this.write32(offset, lo);
    return null;
  }

  private checkMmio(offset: number, size: number): KernelError | null {
    if (
      (size !== 4 && size !== 8) ||
      !Number.isInteger(offset) ||
      offset < 0 ||
      offset + size > DMAR_REG_SIZE
    ) {
      return new KernelError(
        'EINVAL',
        `MMIO access of ${size} bytes at 0x${offset.toString(16)} is outside the register page`,
      );
    }
    if (offset % size !== 0)
      return new KernelError(
        'EINVAL',
        `MMIO access of ${size} bytes at 0x${offset.toString(16)} is misaligned`,
      );
    return null;
  }

  /** Value of the 32-bit register word at `off` (4-aligned). */
  private read32(off: number): number {
    const caps = this.caps;
    const rv = this.regValues;
    switch (off) {
      case DMAR_VER_REG:
        return VTD_VERSION;
      case DMAR_CAP_REG:
        return Number(rv.cap & 0xffffffffn);
      case DMAR_CAP_REG + 4:
        return Number(rv.cap >> 32n);
      case DMAR_ECAP_REG:
        return Number(rv.ecap & 0xffffffffn);
      case DMAR_ECAP_REG + 4:
        return Number(rv.ecap >> 32n);
      case DMAR_GCMD_REG:
        return 0;
      case DMAR_GSTS_REG:
        return this.gsts >>> 0;
      case DMAR_RTADDR_REG:
        return this.rtaddrLo >>> 0;
      case DMAR_RTADDR_REG + 4:
        return this.rtaddrHi >>> 0;
      case DMAR_CCMD_REG:
        return this.ccmdLo >>> 0;
      case DMAR_CCMD_REG + 4:
        return this.ccmdHi >>> 0;
      case DMAR_FSTS_REG:
        return this.fsts >>> 0;
      case DMAR_FECTL_REG:
        return this.fectl >>> 0;
      case DMAR_FEDATA_REG:
        return this.fedata >>> 0;
      case DMAR_FEADDR_REG:
        return this.feaddr >>> 0;
      case DMAR_FEUADDR_REG:
        return this.feuaddr >>> 0;
    }
    if (caps.qi) {
      switch (off) {
        case DMAR_IQH_REG:
          return this.iqh >>> 0;
        case DMAR_IQT_REG:
          return this.iqt >>> 0;
        case DMAR_IQA_REG:
          return this.iqaLo >>> 0;
        case DMAR_IQA_REG + 4:
          return this.iqaHi >>> 0;
        case DMAR_ICS_REG:
          return this.ics >>> 0;
        case DMAR_IECTL_REG:
          return this.iectl >>> 0;
        case DMAR_IEDATA_REG:
          return this.iedata >>> 0;
        case DMAR_IEADDR_REG:
          return this.ieaddr >>> 0;
        case DMAR_IEUADDR_REG:
          return this.ieuaddr >>> 0;
        case DMAR_IQER_REG:
          return this.iqercdLo >>> 0;
        case DMAR_IQER_REG + 4:
          return this.iqercdHi >>> 0;
      }
    }
    if (caps.prs) {
      switch (off) {
        case DMAR_PQH_REG:
          return this.pqh >>> 0;
        case DMAR_PQT_REG:
          return this.pqt >>> 0;
        case DMAR_PQA_REG:
          return this.pqaLo >>> 0;
        case DMAR_PQA_REG + 4:
          return this.pqaHi >>> 0;
        case DMAR_PRS_REG:
          return this.prs >>> 0;
        case DMAR_PECTL_REG:
          return this.pectl >>> 0;
        case DMAR_PEDATA_REG:
          return this.pedata >>> 0;
        case DMAR_PEADDR_REG:
          return this.peaddr >>> 0;
        case DMAR_PEUADDR_REG:
          return this.peuaddr >>> 0;
      }
    }
    if (off === caps.iro) return this.ivaLo >>> 0;
    if (off === caps.iro + 4) return this.ivaHi >>> 0;
    if (off === caps.iro + 8) return this.iotlbRegLo >>> 0;
    if (off === caps.iro + 12) return this.iotlbRegHi >>> 0;
    const fo = off - caps.fro;
    if (fo >= 0 && fo < caps.nfr * 16) return this.frcd[fo >>> 2]! >>> 0;
    if (caps.vcs) {
      const v = this.vcmdLayout;
      switch (off) {
        case v.VCCAP:
          return Number(rv.vccap & 0xffffffffn);
        case v.VCCAP + 4:
          return Number(rv.vccap >> 32n);
        case v.VCMD:
          return this.vcmdLo >>> 0;
        case v.VCMD + 4:
          return this.vcmdHi >>> 0;
        case v.VCRSP:
          return this.vcrspLo >>> 0;
        case v.VCRSP + 4:
          return this.vcrspHi >>> 0;
      }
      if (v.VCMD_EO >= 0 && off === v.VCMD_EO) return this.vcmdEoLo >>> 0;
      if (v.VCMD_EO >= 0 && off === v.VCMD_EO + 4) return this.vcmdEoHi >>> 0;
    }
    return 0;
  }

  /** A 64-bit write: both halves land before the side effect runs. */
  private write64(off: number, lo: number, hi: number): void {
    const caps = this.caps;
    const v = this.vcmdLayout;
    if (off === DMAR_CCMD_REG) {
      this.ccmdLo = lo;
      this.ccmdHi = hi;
      this.ccmdCommand();
    } else if (off === caps.iro + 8) {
      this.iotlbRegLo = lo;
      this.iotlbRegHi = hi;
      this.iotlbRegCommand();
    } else if (caps.vcs && off === v.VCMD) {
      this.vcmdLo = lo;
      this.vcmdHi = hi;
      this.vcmdCommand();
    } else if (off === DMAR_RTADDR_REG || off === DMAR_IQA_REG || off === DMAR_PQA_REG || off === caps.iro) {
      this.write32(off + 4, hi);
      this.write32(off, lo);
    } else {
      this.write32(off, lo);
      this.write32(off + 4, hi);
    }
  }

  private write32(off: number, val: number): void {
    const caps = this.caps;
    const v = val >>> 0;
    const hawHi = caps.haw >= 64 ? 0xffffffff : caps.haw <= 32 ? 0 : (2 ** (caps.haw - 32) - 1) >>> 0;
    switch (off) {
      case DMAR_GCMD_REG:
        this.gcmdWrite(v);
        return;
      case DMAR_RTADDR_REG:
        this.rtaddrLo = (v & 0xfffffc00) >>> 0;
        return;
      case DMAR_RTADDR_REG + 4:
        this.rtaddrHi = (v & hawHi) >>> 0;
        return;
      case DMAR_CCMD_REG:
        this.ccmdLo = v;
        return;
      case DMAR_CCMD_REG + 4:
        this.ccmdHi = v;
        this.ccmdCommand();
        return;
      case DMAR_FSTS_REG: {
        const clear = v & (DMA_FSTS_PFO | DMA_FSTS_IQE | DMA_FSTS_ICE | DMA_FSTS_ITE | DMA_FSTS_PRO);
        const resume = clear & (DMA_FSTS_IQE | DMA_FSTS_ITE);
        this.fsts = (this.fsts & ~clear) >>> 0;
        if (resume) this.processQueue();
        return;
      }
      case DMAR_FECTL_REG:
        this.fectl = ((v & DMA_FECTL_IM) | (this.fectl & DMA_FECTL_IP)) >>> 0;
        if ((this.fectl & (DMA_FECTL_IM | DMA_FECTL_IP)) === DMA_FECTL_IP) this.sendMsi('fault');
        return;
      case DMAR_FEDATA_REG:
        this.fedata = v;
        return;
      case DMAR_FEADDR_REG:
        this.feaddr = (v & 0xfffffffc) >>> 0;
        return;
      case DMAR_FEUADDR_REG:
        this.feuaddr = v;
        return;
    }
    if (caps.qi) {
      switch (off) {
        case DMAR_IQT_REG:
          this.iqt = v & 0x7fff0;
          this.processQueue();
          return;
        case DMAR_IQA_REG:
          this.iqaLo = (v & 0xfffff807) >>> 0;
          this.iqh = 0;
          this.iqt = 0;
          return;
        case DMAR_IQA_REG + 4:
          this.iqaHi = (v & hawHi) >>> 0;
          this.iqh = 0;
          this.iqt = 0;
          return;
        case DMAR_ICS_REG:
          if (v & DMA_ICS_IWC) this.ics &= ~DMA_ICS_IWC;
          return;
        case DMAR_IECTL_REG:
          this.iectl = ((v & DMA_FECTL_IM) | (this.iectl & DMA_FECTL_IP)) >>> 0;
          if ((this.iectl & (DMA_FECTL_IM | DMA_FECTL_IP)) === DMA_FECTL_IP) this.sendMsi('invalidation');
          return;
        case DMAR_IEDATA_REG:
          this.iedata = v;
          return;
        case DMAR_IEADDR_REG:
          this.ieaddr = (v & 0xfffffffc) >>> 0;
          return;
        case DMAR_IEUADDR_REG:
          this.ieuaddr = v;
          return;
      }
    }
    if (caps.prs) {
      switch (off) {
        case DMAR_PQH_REG:
          this.pqh = v & 0x7ffe0;
          return;
        case DMAR_PQA_REG:
          this.pqaLo = (v & 0xfffff007) >>> 0;
          return;
        case DMAR_PQA_REG + 4:
          this.pqaHi = (v & hawHi) >>> 0;
          return;
        case DMAR_PRS_REG:
          this.prs &= ~(v & (DMA_PRS_PPR | DMA_PRS_PRO));
          return;
        case DMAR_PECTL_REG:
          this.pectl = ((v & DMA_FECTL_IM) | (this.pectl & DMA_FECTL_IP)) >>> 0;
          if ((this.pectl & (DMA_FECTL_IM | DMA_FECTL_IP)) === DMA_FECTL_IP) this.sendMsi('page-request');
          return;
        case DMAR_PEDATA_REG:
          this.pedata = v;
          return;
        case DMAR_PEADDR_REG:
          this.peaddr = (v & 0xfffffffc) >>> 0;
          return;
        case DMAR_PEUADDR_REG:
          this.peuaddr = v;
          return;
      }
    }
    if (off === caps.iro) {
      this.ivaLo = (v & 0xfffff07f) >>> 0;
      return;
    }
    if (off === caps.iro + 4) {
      this.ivaHi = v;
      return;
    }
    if (off === caps.iro + 8) {
      this.iotlbRegLo = v;
      return;
    }
    if (off === caps.iro + 12) {
      this.iotlbRegHi = v;
      this.iotlbRegCommand();
      return;
    }
    const fo = off - caps.fro;
    if (fo >= 0 && fo < caps.nfr * 16) {
      // only F (bit 127) is writable, write-1-to-clear
      if ((fo & 15) === 12 && v >>> 31 === 1) {
        this.frcd[fo >>> 2] = this.frcd[fo >>> 2]! & 0x7fffffff;
        this.recomputePpf();
      }
      return;
    }
    if (caps.vcs) {
      const vl = this.vcmdLayout;
      if (off === vl.VCMD) {
        this.vcmdLo = v;
        this.vcmdCommand();
      } else if (off === vl.VCMD + 4) this.vcmdHi = v;
      else if (vl.VCMD_EO >= 0 && off === vl.VCMD_EO) this.vcmdEoLo = v;
      else if (vl.VCMD_EO >= 0 && off === vl.VCMD_EO + 4) this.vcmdEoHi = v;
    }
    // everything else is read-only or reserved: writes are ignored
  }

  private gcmdWrite(v: number): void {
    const tr = this.tracer;
    if (v & DMA_GCMD_SRTP) {
      this.rtaFn = fnOf(this.rtaddrLo, this.rtaddrHi);
      this.ttm = (this.rtaddrLo >>> 10) & 3;
      this.rtaSeq = ++this.mem.writeSeq;
      this.gsts |= DMA_GSTS_RTPS;
      if (tr !== null) {
        tr({
          kind: 'vtd',
          what: 'SRTP',
          iommu: this.name,
          rta: `0x${(this.rtaFn * 4096).toString(16)}`,
          ttm: this.ttm,
        });
      }
    }
    const te = (v & DMA_GCMD_TE) !== 0;
    if (te !== ((this.gsts & DMA_GSTS_TES) !== 0)) {
      this.gsts = te ? this.gsts | DMA_GSTS_TES : this.gsts & ~DMA_GSTS_TES;
      this.te = te ? 1 : 0;
      if (tr !== null) tr({ kind: 'vtd', what: te ? 'TE enabled' : 'TE disabled', iommu: this.name });
    }
    const qie = (v & DMA_GCMD_QIE) !== 0;
    if (this.caps.qi && qie !== ((this.gsts & DMA_GSTS_QIES) !== 0)) {
      if (qie) {
        this.gsts |= DMA_GSTS_QIES;
        this.iqh = 0;
        this.processQueue();
      } else {
        this.gsts &= ~DMA_GSTS_QIES;
        this.iqh = 0;
      }
    }
    this.gsts >>>= 0;
    // SFL/EAFL (no advanced fault logging), WBF (CAP.RWBF=0), IRE/SIRTP/CFI (ECAP.IR=0): nothing to do
  }

  // =============================================================================================
  // Invalidation

  private trInval(what: string, fields: Record<string, unknown>, removed: number): void {
    this.tracer?.({ kind: 'inval', what, iommu: this.name, ...fields, removed });
  }

  /** Context-cache invalidation: g 1 global, 2 domain, 3 device. Returns entries removed. */
  invalidateContextCache(g: number, did: number, sid: number, fm: number): number {
    let n = 0;
    const m = fm === 1 ? 4 : fm === 2 ? 6 : fm === 3 ? 7 : 0;
    for (const [k, ce] of this.ctxCache) {
      let hit: boolean;
      if (g === 1) hit = true;
      else if (g === 2) hit = !ce.legacy || ce.legacyPe === null || ce.legacyPe.did === did || ce.fault !== 0;
      else hit = (ce.sid & ~m) === (sid & ~m);
      if (hit) {
        this.ctxCache.delete(k);
        n++;
      }
    }
    this.mruCtxSid = -1;
    this.mruCtx = null;
    return n;
  }

  /** PASID-cache invalidation: g 0 DID-selective, 1 PASID-selective within DID, 3 global. */
  invalidatePasidCache(g: number, did: number, pasid: number): number {
    let n = 0;
    for (const [k, pe] of this.peCache) {
      const didHit = pe.did === did || pe.fault !== 0;
      const hit = g === 3 || (g === 0 && didHit) || (g === 1 && didHit && pe.pasid === pasid);
      if (hit) {
        this.peCache.delete(k);
        n++;
      }
    }
    this.mruPeKey = -1;
    this.mruPe = null;
    return n;
  }

  /**
   * IOTLB invalidation (iotlb_inv_dsc / IOTLB_REG): g 1 global, 2 domain, 3 page-selective
   * (DID, 4 KiB page number, AM). Page-selective removes second-level and pass-through entries
   * whose range overlaps, and every first-level and nested entry of the domain (C.4).
   */
  invalidateIotlb(g: number, did: number, page: number, am: number): number {
    const t = this.iotlb;
    if (g === 1) {
      const n = t.count;
      t.clear();
      return n;
    }
    if (g === 2) return t.removeIf((h) => t.did[h] === did);
    const size = 2 ** am;
    const start = page - (page % size);
    return t.removeIf((h) => {
      if (t.did[h] !== did) return false;
      const pg = t.pgtt[h];
      if (pg === PGTT_FL || pg === PGTT_NESTED) return true;
      const first = t.firstPage(h);
      const n = 2 ** (9 * (t.level(h) - 1));
      return first < start + size && start < first + n;
    });
  }

  /**
   * PASID-based IOTLB invalidation: g 2 all of (DID, PASID); g 3 page-selective within PASID,
   * which removes only first-level and nested entries (C.4: SL and PT entries are not removed).
   */
  invalidatePasidIotlb(g: number, did: number, pasid: number, page: number, am: number): number {
    const t = this.iotlb;
    if (g === 2) return t.removeIf((h) => t.did[h] === did && t.pasid[h] === pasid);
    const size = 2 ** am;
    const start = page - (page % size);
    return t.removeIf((h) => {
      if (t.did[h] !== did || t.pasid[h] !== pasid) return false;
      const pg = t.pgtt[h];
      if (pg !== PGTT_FL && pg !== PGTT_NESTED) return false;
      const first = t.firstPage(h);
      const n = 2 ** (9 * (t.level(h) - 1));
      return first < start + size && start < first + n;
    });
  }

  private ccmdCommand(): void {
    if (this.ccmdHi >>> 31 === 0) return;
    const cirg = (this.ccmdHi >>> 29) & 3;
    let caig = 0;
    if ((this.gsts & DMA_GSTS_QIES) === 0 && cirg !== 0) {
      const did = this.ccmdLo & 0xffff;
      const sid = this.ccmdLo >>> 16;
      const fm = this.ccmdHi & 3;
      // scalable-mode context entries carry no domain-id: domain-selective acts globally
      caig = cirg === 2 && this.ttm === RTADDR_TTM_SCALABLE ? 1 : cirg;
      const n = this.invalidateContextCache(caig, did, sid, fm);
      this.trInval('CCMD', { granularity: caig, did, sid, fm }, n);
    }
    this.ccmdHi = ((this.ccmdHi & ~0x98000000) | (caig << 27)) >>> 0;
  }

  private iotlbRegCommand(): void {
    if (this.iotlbRegHi >>> 31 === 0) return;
    const iirg = (this.iotlbRegHi >>> 28) & 3;
    let iaig = 0;
    if ((this.gsts & DMA_GSTS_QIES) === 0 && iirg !== 0) {
      const did = this.iotlbRegHi & 0xffff;
      const am = this.ivaLo & 0x3f;
      const page = this.ivaHi * 1048576 + (this.ivaLo >>> 12);
      iaig = iirg === 3 && !this.caps.psi ? 2 : iirg;
      if (iaig === 3 && am > this.caps.mamv) iaig = 0;
      if (iaig !== 0) {
        const n = this.invalidateIotlb(iaig, did, page, am);
        this.trInval('IOTLB_REG', { granularity: iaig, did, page: `0x${(page * 4096).toString(16)}`, am }, n);
      }
    }
    this.iotlbRegHi = ((this.iotlbRegHi & ~(1 << 31) & ~(3 << 25)) | (iaig << 25)) >>> 0;
  }

  /** Registers an ATS endpoint for device-TLB invalidations and page responses. */
  attachEndpoint(ep: AtsEndpoint): void {
    this.endpoints.set(ep.sid, ep);
  }

  /** Sets IQE with an error code; the head stays on the offending descriptor. */
  private iqError(iqei: number): void {
    this.iqercdLo = (this.iqercdLo & ~0xf) | iqei;
    this.setFsts(this.fsts | DMA_FSTS_IQE);
    this.tracer?.({ kind: 'inval', what: 'IQE', iommu: this.name, iqei, head: this.iqh });
  }

  /** Processes the invalidation queue from IQH up to IQT. */
  private processQueue(): void {
    if ((this.gsts & DMA_GSTS_QIES) === 0 || this.fsts & (DMA_FSTS_IQE | DMA_FSTS_ITE)) return;
    const dw = (this.iqaLo >>> 11) & 1;
    const qs = this.iqaLo & 7;
    const entries = dw ? 2 ** (qs + 7) : 2 ** (qs + 8);
    const shift = dw ? 5 : 4;
    const tail = this.iqt >>> shift;
    let head = this.iqh >>> shift;
    if (dw && !this.caps.smts) {
      this.iqError(IQEI.INVALID_WIDTH);
      return;
    }
    if (dw && this.iqt & 0x10) {
      this.iqError(IQEI.TAIL_MISALIGNED);
      return;
    }
    if (tail >= entries) {
      this.iqError(IQEI.INVALID_TAIL);
      return;
    }
    if (head === tail) return;
    const base = fnOf(this.iqaLo, this.iqaHi) * 4096;
    const nw = dw ? 8 : 4;
    const desc = new Uint32Array(8);
    while (head !== tail) {
      const a = base + head * (nw * 4);
      if (!this.mem.backed(a, nw * 4)) {
        this.iqError(IQEI.FETCH_ERROR);
        return;
      }
      desc.fill(0);
      const f = this.mem.frame(Math.floor(a / 4096));
      const w0 = (a % 4096) >>> 2;
      for (let i = 0; i < nw; i++) desc[i] = f[w0 + i]!;
      const err = this.execDescriptor(desc, dw === 1);
      if (err !== 0) {
        this.iqError(err);
        return;
      }
      head = (head + 1) % entries;
      this.iqh = head << shift;
      if (this.fsts & DMA_FSTS_ITE) return;
    }
  }

  /** Executes one descriptor; returns 0 or the IQEI error code. */
  private execDescriptor(d: Uint32Array, wide: boolean): number {
    const type = descType(d[0]!);
    const upperZero = !wide || (d[4] === 0 && d[5] === 0 && d[6] === 0 && d[7] === 0);
    const caps = this.caps;
    switch (type) {
      case QI_TYPE.CC_INV: {
        if ((d[0]! & 0xf1c0) !== 0 || (d[1]! & 0xfffc0000) !== 0 || d[2] !== 0 || d[3] !== 0 || !upperZero) {
          return IQEI.RESERVED_FIELD;
        }
        const g = (d[0]! >>> 4) & 3;
        if (g === 0) return IQEI.RESERVED_FIELD;
        const did = d[0]! >>> 16;
        const sid = d[1]! & 0xffff;
        const fm = (d[1]! >>> 16) & 3;
        const eg = g === 2 && this.ttm === RTADDR_TTM_SCALABLE ? 1 : g;
        const n = this.invalidateContextCache(eg, did, sid, fm);
        this.trInval('cc_inv_dsc', { g, did, sid, fm }, n);
        return 0;
      }
      case QI_TYPE.IOTLB_INV: {
        if ((d[0]! & 0xf100) !== 0 || d[1] !== 0 || (d[2]! & 0xf80) !== 0 || !upperZero)
          return IQEI.RESERVED_FIELD;
        let g = (d[0]! >>> 4) & 3;
        if (g === 0) return IQEI.RESERVED_FIELD;
        const did = d[0]! >>> 16;
        const am = d[2]! & 0x3f;
        if (g === 3 && !caps.psi) g = 2;
        if (g === 3 && am > caps.mamv) return IQEI.RESERVED_FIELD;
        const page = d[3]! * 1048576 + (d[2]! >>> 12);
        const n = this.invalidateIotlb(g, did, page, am);
        this.trInval(
          'iotlb_inv_dsc',
          { g, did, addr: `0x${qword(d[2]! & 0xfffff000, d[3]!).toString(16)}`, am },
          n,
        );
        return 0;
      }
      case QI_TYPE.DEV_TLB_INV: {
        if ((d[0]! & 0xffe001f0) !== 0 || (d[1]! & 0x000f0000) !== 0 || (d[2]! & 0xffe) !== 0 || !upperZero) {
          return IQEI.RESERVED_FIELD;
        }
        const sid = d[1]! & 0xffff;
        return this.devTlbInvalidate(sid, -1, false, d[2]! & 1, d[2]!, d[3]!, 'dev_tlb_inv_dsc');
      }
      case QI_TYPE.IEC_INV: {
        if (!caps.ir) return IQEI.INVALID_TYPE;
        if (
          (d[0]! & 0x07fff1e0) !== 0 ||
          (d[1]! & 0xffff0000) !== 0 ||
          d[2] !== 0 ||
          d[3] !== 0 ||
          !upperZero
        ) {
          return IQEI.RESERVED_FIELD;
        }
        this.trInval('iec_inv_dsc', {}, 0);
        return 0;
      }
      case QI_TYPE.INV_WAIT: {
        const rsvd0 = 0xfffff100 | (caps.prs ? 0 : 0x80);
        if ((d[0]! & rsvd0) !== 0 || (d[2]! & 3) !== 0 || !upperZero) return IQEI.RESERVED_FIELD;
        const iflag = (d[0]! >>> 4) & 1;
        const sw = (d[0]! >>> 5) & 1;
        const staddr = d[3]! * TWO32 + (d[2]! & 0xfffffffc);
        if (sw) {
          if (this.mem.backed(staddr, 4)) this.mem.write32(staddr, d[1]!);
          else
            this.tracer?.({
              kind: 'inval',
              what: 'status write to unbacked memory',
              iommu: this.name,
              staddr,
            });
        }
        if (iflag && (this.ics & DMA_ICS_IWC) === 0) {
          this.ics |= DMA_ICS_IWC;
          this.iectl |= DMA_FECTL_IP;
          if ((this.iectl & DMA_FECTL_IM) === 0) this.sendMsi('invalidation');
        }
        this.trInval('inv_wait_dsc', { if: iflag, sw, status: d[1]!, staddr: `0x${staddr.toString(16)}` }, 0);
        return 0;
      }
      case QI_TYPE.P_IOTLB_INV: {
        if (!wide) return IQEI.INVALID_TYPE;
        if ((d[0]! & 0xf1c0) !== 0 || (d[1]! & 0xfff00000) !== 0 || (d[2]! & 0xf80) !== 0 || !upperZero) {
          return IQEI.RESERVED_FIELD;
        }
        const g = (d[0]! >>> 4) & 3;
        if (g < 2) return IQEI.RESERVED_FIELD;
        const did = d[0]! >>> 16;
        const pasid = d[1]! & 0xfffff;
        const am = d[2]! & 0x3f;
        if (g === 3 && am > caps.mamv) return IQEI.RESERVED_FIELD;
        const page = d[3]! * 1048576 + (d[2]! >>> 12);
        const n = this.invalidatePasidIotlb(g, did, pasid, page, am);
        this.trInval(
          'p_iotlb_inv_dsc',
          { g, did, pasid, addr: `0x${qword(d[2]! & 0xfffff000, d[3]!).toString(16)}`, am },
          n,
        );
        return 0;
      }
      case QI_TYPE.PC_INV: {
        if (!wide) return IQEI.INVALID_TYPE;
        if ((d[0]! & 0xf1c0) !== 0 || (d[1]! & 0xfff00000) !== 0 || d[2] !== 0 || d[3] !== 0 || !upperZero) {
          return IQEI.RESERVED_FIELD;
        }
        const g = (d[0]! >>> 4) & 3;
        if (g === 2) return IQEI.RESERVED_FIELD;
        const did = d[0]! >>> 16;
        const pasid = d[1]! & 0xfffff;
        const n = this.invalidatePasidCache(g, did, pasid);
        this.trInval('pc_inv_dsc', { g, did, pasid }, n);
        return 0;
      }
      case QI_TYPE.P_DEV_TLB_INV: {
        if (!wide) return IQEI.INVALID_TYPE;
        if ((d[2]! & 0x7fe) !== 0 || !upperZero) return IQEI.RESERVED_FIELD;
        const sid = d[0]! >>> 16;
        const pasid = d[1]! & 0xfffff;
        const global = (d[2]! & 1) === 1;
        return this.devTlbInvalidate(
          sid,
          pasid,
          global,
          (d[2]! >>> 11) & 1,
          d[2]!,
          d[3]!,
          'p_dev_tlb_inv_dsc',
        );
      }
      case QI_TYPE.PAGE_GRP_RESP: {
        if (!wide || !caps.prs) return IQEI.INVALID_TYPE;
        if ((d[0]! & 0x1c0) !== 0 || (d[1]! & 0xfff00000) !== 0 || (d[2]! & 0xfffff003) !== 0 || d[3] !== 0) {
          return IQEI.RESERVED_FIELD;
        }
        const pp = (d[0]! >>> 4) & 1;
        const rid = d[0]! >>> 16;
        const resp = {
          pasid: pp ? d[1]! & 0xfffff : undefined,
          prgi: (d[2]! >>> 3) & 0x1ff,
          lpig: ((d[2]! >>> 2) & 1) === 1,
          rc: (d[0]! >>> 12) & 0xf,
        };
        const ep = this.endpoints.get(rid);
        if (ep?.pageGroupResponse) ep.pageGroupResponse(resp);
        else this.strayResponses.push({ sid: rid, pasid: resp.pasid, prgi: resp.prgi, rc: resp.rc });
        this.trInval('page_grp_resp_dsc', { rid, ...resp }, 0);
        return 0;
      }
      default:
        return IQEI.INVALID_TYPE;
    }
  }

  /**
   * Sends a device-TLB invalidation to the endpoint `sid`. S=0: the 4 KiB page at ADDR; S=1:
   * the size is given by the lowest clear address bit at or above bit 12 (C.3). An endpoint that
   * does not exist or has no device-TLB never answers: invalidation time-out (ITE).
   */
  private devTlbInvalidate(
    sid: number,
    pasid: number,
    global: boolean,
    s: number,
    lo: number,
    hi: number,
    what: string,
  ): number {
    let page = hi * 1048576 + (lo >>> 12);
    let pages = 1;
    if (s === 1) {
      let k = 0;
      while (k < 52 && Math.floor(page / 2 ** k) % 2 === 1) k++;
      pages = 2 ** (k + 1);
      page -= page % pages;
    }
    const ep = this.endpoints.get(sid);
    if (ep === undefined || !ep.ats) {
      this.iqercdHi = ((this.iqercdHi & 0xffff0000) | sid) >>> 0;
      this.setFsts(this.fsts | DMA_FSTS_ITE);
      this.trInval(what, { sid, timeout: true }, 0);
      return 0;
    }
    ep.invalidateDevTlb(pasid, global, page, pages);
    this.trInval(
      what,
      { sid, ...(pasid >= 0 ? { pasid } : {}), global, addr: `0x${(page * 4096).toString(16)}`, pages },
      0,
    );
    return 0;
  }

  // =============================================================================================
  // Page requests (E)

  /**
   * A page request from an endpoint (PCIe PRI) for the page holding (hi, lo). Checked against
   * the root and context entries (legacy mode: RTA.3 0x32; context PRE clear: SCT.8 0x47), then
   * written as a page_req_dsc at PQT; sets PRS.PPR and signals the page-request event. A full
   * queue sets PRS.PRO and drops the request. Returns 'queued', 'overflow' or XLATE_FAULT
   * (details in lastFault).
   */
  pageRequest(
    sid: number,
    pasid: number,
    hi: number,
    lo: number,
    access: number,
    priv: boolean,
    lpig: boolean,
    prgi: number,
  ): 'queued' | 'overflow' | number {
    this.fr = 0;
    this.fpd = 0;
    this.stage = STAGE_NONE;
    if (this.ttm === RTADDR_TTM_LEGACY) {
      this.fr = FR.SM_RTA_TTM0_PRQ;
      return this.raise(sid, pasid, hi, lo, access, priv, AT_UNTRANSLATED);
    }
    const ce = this.lookupContext(sid, pasid);
    if (ce === null) return this.raise(sid, pasid, hi, lo, access, priv, AT_UNTRANSLATED);
    if (ce.pre === 0)
      return this.fail(FR.SM_CTX_PRE, ce.fpd, sid, pasid, hi, lo, access, priv, AT_UNTRANSLATED);
    const entries = 2 ** ((this.pqaLo & 7) + 7);
    const tail = (this.pqt >>> 5) % entries;
    const head = (this.pqh >>> 5) % entries;
    const base = fnOf(this.pqaLo, this.pqaHi) * 4096;
    const slot = base + tail * 32;
    if (this.prs & DMA_PRS_PRO || (tail + 1) % entries === head || !this.mem.backed(slot, 32)) {
      this.prs |= DMA_PRS_PRO;
      this.tracer?.({ kind: 'vtd', what: 'page request overflow', iommu: this.name, sid });
      return 'overflow';
    }
    const d = PAGE_REQ_DSC.encode({
      type: 1,
      pasidPresent: pasid >= 0 ? 1 : 0,
      rid: sid,
      pasid: Math.max(pasid, 0),
      exeReq: access & ACCESS_X ? 1 : 0,
      pmReq: priv && pasid >= 0 ? 1 : 0,
      rdReq: access & ACCESS_R ? 1 : 0,
      wrReq: access & ACCESS_W ? 1 : 0,
      lpig: lpig ? 1 : 0,
      prgIndex: prgi & 0x1ff,
      addr: qword(lo & 0xfffff000, hi),
    });
    for (let i = 0; i < 8; i += 2) this.mem.write64(slot + i * 4, d[i]!, d[i + 1]!);
    this.pqt = ((tail + 1) % entries) << 5;
    const wasPending = (this.prs & DMA_PRS_PPR) !== 0;
    this.prs |= DMA_PRS_PPR;
    if (!wasPending) {
      this.pectl |= DMA_FECTL_IP;
      if ((this.pectl & DMA_FECTL_IM) === 0) this.sendMsi('page-request');
    }
    this.tracer?.({
      kind: 'vtd',
      what: 'page request',
      iommu: this.name,
      sid,
      ...(pasid >= 0 ? { pasid } : {}),
      addr: hex(lo & 0xfffff000, hi),
      prgi,
      lpig,
    });
    return 'queued';
  }

  // =============================================================================================
  // Virtual command (D)

  private vcmdCommand(): void {
    if (!this.caps.vccapPas || this.vcrspLo & 1) return;
    const v33 = this.config.vcmd_layout !== '3.2';
    const cmd = this.vcmdLo & 0xff;
    const operand = v33 ? (this.vcmdLo >>> 16) | ((this.vcmdHi & 0xf) << 16) : (this.vcmdLo >>> 8) & 0xfffff;
    let sc = 0;
    let result = 0;
    if (cmd === VCMD_CMD_ALLOC) {
      const p = this.vcmdBackend.alloc();
      if (p < 0) sc = v33 ? VCMD_SC33_NO_PASID : VCMD_SC32_NO_PASID;
      else result = p;
    } else if (cmd === VCMD_CMD_FREE) {
      if (!this.vcmdBackend.free(operand)) sc = v33 ? VCMD_SC33_INVALID_PASID : VCMD_SC32_INVALID_PASID;
    } else if (cmd !== VCMD_CMD_NOP) sc = v33 ? VCMD_SC33_UNDEFINED_CMD : VCMD_SC32_UNDEFINED_CMD;
    // completes within the write: IP is never observed set
    if (v33) {
      this.vcrspLo = ((sc & 0x7f) << 1) | ((result & 0xffff) << 16);
      this.vcrspHi = result >>> 16;
    } else {
      this.vcrspLo = ((sc & 3) << 1) | ((result & 0xfffff) << 8);
      this.vcrspHi = 0;
    }
    this.vcrspLo >>>= 0;
    this.tracer?.({ kind: 'vtd', what: 'VCMD', iommu: this.name, cmd, operand, status: sc, result });
  }

  // =============================================================================================
  // Inspection

  /** Whether translation is enabled (GSTS.TES). */
  get translationEnabled(): boolean {
    return (this.gsts & DMA_GSTS_TES) !== 0;
  }

  /** Entries currently held by the context cache, PASID cache and IOTLB. */
  cacheSizes(): { context: number; pasid: number; iotlb: number } {
    return { context: this.ctxCache.size, pasid: this.peCache.size, iotlb: this.iotlb.count };
  }

  /** Decoded fault recording registers. */
  faultRecords(): {
    index: number;
    f: boolean;
    reason: number;
    sid: number;
    pasid?: number;
    addr: bigint;
    read: boolean;
  }[] {
    const out = [];
    for (let i = 0; i < this.caps.nfr; i++) {
      const r = this.frcd;
      const w2 = r[i * 4 + 2]!;
      const w3 = r[i * 4 + 3]!;
      const rec: {
        index: number;
        f: boolean;
        reason: number;
        sid: number;
        pasid?: number;
        addr: bigint;
        read: boolean;
      } = {
        index: i,
        f: w3 >>> 31 === 1,
        reason: w3 & 0xff,
        sid: w2 & 0xffff,
        addr: qword(r[i * 4]!, r[i * 4 + 1]!),
        read: ((w3 >>> 30) & 1) === 1,
      };
      if (w2 >>> 31 === 1) rec.pasid = (w3 >>> 8) & 0xfffff;
      out.push(rec);
    }
    return out;
  }

  // =============================================================================================
  // Invariants

  /**
   * Checks that every cached context entry, PASID entry and IOTLB translation agrees with the
   * tables in memory unless a table page it depends on (or the root pointer) changed after the
   * entry was cached and no invalidation has removed it yet; and that the fault-recording and
   * queue bookkeeping is consistent. Throws InvariantError.
   */
  checkInvariants(): void {
    const nfr = this.caps.nfr;
    let anyF = false;
    for (let i = 0; i < nfr; i++) if (this.frcd[i * 4 + 3]! >>> 31 === 1) anyF = true;
    invariant(
      anyF === ((this.fsts & DMA_FSTS_PPF) !== 0),
      `${this.name}: FSTS.PPF must equal the OR of the FRCD F bits`,
    );
    invariant(
      ((this.fsts >>> 8) & 0xff) < nfr,
      `${this.name}: FSTS.FRI must index a fault recording register`,
    );
    invariant(this.frcdNext < nfr, `${this.name}: next fault record index in range`);
    const t = this.iotlb;
    invariant(t.count <= Math.max(t.capacity, 0), `${this.name}: IOTLB holds at most its capacity`);
    let lc = 0;
    for (let l = 0; l < 6; l++) lc += t.levelCount[l]!;
    invariant(lc === t.count, `${this.name}: IOTLB per-level counts add up`);
    if ((this.gsts & DMA_GSTS_QIES) !== 0) {
      const dw = (this.iqaLo >>> 11) & 1;
      const entries = dw ? 2 ** ((this.iqaLo & 7) + 7) : 2 ** ((this.iqaLo & 7) + 8);
      invariant(this.iqh >>> (dw ? 5 : 4) < entries, `${this.name}: IQH inside the queue`);
    }
    const mem = this.mem;
    const changed = (fn: number, seq: number) => fn < mem.frameLimit && mem.frameSeq(fn) > seq;
    const explained = (seq: number) => this.rtaSeq > seq;
    for (const ce of this.ctxCache.values()) {
      if (explained(ce.seq) || changed(ce.rootFn, ce.seq) || changed(ce.ctxFn, ce.seq)) continue;
      const rw = (ce.sid >>> 8) * 4;
      const rf = mem.frame(ce.rootFn);
      for (let i = 0; i < 4; i++) {
        invariant(
          rf[rw + i] === ce.root[i],
          `${this.name}: cached root entry for sid 0x${ce.sid.toString(16)} matches memory`,
        );
      }
      const cw = ce.legacy ? (ce.sid & 0xff) * 4 : (ce.sid & 0x7f) * 8;
      const cf = mem.frame(ce.ctxFn);
      for (let i = 0; i < (ce.legacy ? 4 : 8); i++) {
        invariant(
          cf[cw + i] === ce.words[i],
          `${this.name}: cached context entry for sid 0x${ce.sid.toString(16)} matches memory`,
        );
      }
    }
    for (const pe of this.peCache.values()) {
      if (explained(pe.seq) || changed(pe.dirFn, pe.seq) || (pe.tableFn !== 0 && changed(pe.tableFn, pe.seq)))
        continue;
      const ce = this.ctxCache.get(pe.sid);
      if (ce !== undefined && (changed(ce.rootFn, pe.seq) || changed(ce.ctxFn, pe.seq))) continue;
      const df = mem.frame(pe.dirFn);
      const dw = ((pe.pasid >>> 6) & 511) * 2;
      invariant(
        df[dw] === pe.pde0 && df[dw + 1] === pe.pde1,
        `${this.name}: cached PASID-directory entry for sid 0x${pe.sid.toString(16)} pasid ${pe.pasid} matches memory`,
      );
      if (pe.fault === 0) {
        const tf = mem.frame(pe.tableFn);
        const tw = (pe.pasid & 63) * 16;
        for (let i = 0; i < 16; i++) {
          invariant(
            tf[tw + i] === pe.words[i],
            `${this.name}: cached PASID entry for sid 0x${pe.sid.toString(16)} pasid ${pe.pasid} matches memory`,
          );
        }
      }
    }
    for (const h of t.slotsInUse()) this.checkIotlbEntry(h);
  }

  private checkIotlbEntry(h: number): void {
    const t = this.iotlb;
    const seq = t.seq[h]!;
    if (this.rtaSeq > seq) return;
    const sid = t.sid(h);
    const pk = t.pasidKey(h);
    const level = t.level(h);
    const first = t.firstPage(h);
    const lo = ((first % 1048576) * 4096) >>> 0;
    const hi = Math.floor(first / 1048576);
    const addr = qword(lo, hi);
    const savedTracer = this.tracer;
    const savedFault = this.lastFault;
    this.tracer = null;
    this.pure = true;
    this.pureSeq = 0;
    let hpa: number;
    try {
      const f = this.translateSlow(sid, pk === NO_PASID_KEY ? -1 : pk, hi, lo, 0, false, AT_UNTRANSLATED);
      hpa = f < 0 ? f : f * 4096;
    } finally {
      this.pure = false;
      this.tracer = savedTracer;
      this.lastFault = savedFault;
      this.walkCount--;
    }
    if (this.pureSeq > seq) return; // a table on the current walk changed after the fill: stale is allowed
    const where = `${this.name}: IOTLB entry sid 0x${sid.toString(16)} pasid ${pk === NO_PASID_KEY ? 'none' : pk} page 0x${addr.toString(16)}`;
    if (hpa < 0)
      throw new InvariantError(
        `invariant violated: ${where} is cached but the tables no longer translate it`,
      );
    invariant(this.outLevel === level, `${where}: cached page level matches the tables`);
    invariant(hpa === t.base[h], `${where}: cached output address matches the tables`);
    const pu = this.outPermU;
    const ps = this.outPermS;
    invariant((t.permU(h) & ~pu) === 0, `${where}: cached user permissions are granted by the tables`);
    invariant((t.permS(h) & ~ps) === 0, `${where}: cached supervisor permissions are granted by the tables`);
  }
}
