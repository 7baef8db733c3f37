// VT-d register file layout and capability registers (vtd-model.md section 1 and D.1;
// PROFILE.md "VT-d model" for the default hardware).
//
// Offsets and bit names keep Linux's spelling (include/linux/intel-iommu.h, later
// drivers/iommu/intel/iommu.h). CAP/ECAP/VCCAP are derived from a VtdConfig exactly as PROFILE.md
// describes the default machine, then the raw `cap`/`ecap`/`vccap` overrides replace them; the
// model's behaviour is then decoded back from the final register values (`decodeCaps`), so an
// override changes what the hardware does, not only what it reports.

import type { VtdConfig } from '../../machine-config.ts';

export const DMAR_VER_REG = 0x000;
export const DMAR_CAP_REG = 0x008;
export const DMAR_ECAP_REG = 0x010;
export const DMAR_GCMD_REG = 0x018;
export const DMAR_GSTS_REG = 0x01c;
export const DMAR_RTADDR_REG = 0x020;
export const DMAR_CCMD_REG = 0x028;
export const DMAR_FSTS_REG = 0x034;
export const DMAR_FECTL_REG = 0x038;
export const DMAR_FEDATA_REG = 0x03c;
export const DMAR_FEADDR_REG = 0x040;
export const DMAR_FEUADDR_REG = 0x044;
export const DMAR_AFLOG_REG = 0x058;
export const DMAR_PMEN_REG = 0x064;
export const DMAR_PLMBASE_REG = 0x068;
export const DMAR_PLMLIMIT_REG = 0x06c;
export const DMAR_PHMBASE_REG = 0x070;
export const DMAR_PHMLIMIT_REG = 0x078;
export const DMAR_IQH_REG = 0x080;
export const DMAR_IQT_REG = 0x088;
export const DMAR_IQA_REG = 0x090;
export const DMAR_ICS_REG = 0x09c;
export const DMAR_IECTL_REG = 0x0a0;
export const DMAR_IEDATA_REG = 0x0a4;
export const DMAR_IEADDR_REG = 0x0a8;
export const DMAR_IEUADDR_REG = 0x0ac;
export const DMAR_IQER_REG = 0x0b0;
export const DMAR_IRTA_REG = 0x0b8;
export const DMAR_PQH_REG = 0x0c0;
export const DMAR_PQT_REG = 0x0c8;
export const DMAR_PQA_REG = 0x0d0;
export const DMAR_PRS_REG = 0x0dc;
export const DMAR_PECTL_REG = 0x0e0;
export const DMAR_PEDATA_REG = 0x0e4;
export const DMAR_PEADDR_REG = 0x0e8;
export const DMAR_PEUADDR_REG = 0x0ec;
/** Offset of the register-based IOTLB invalidation pair (IVA, IOTLB); ECAP.IRO = this / 16. */
export const DMAR_IOTLB_REG_OFFSET = 0x0f0;
/** Offset of the fault recording registers; CAP.FRO = this / 16. */
export const DMAR_FRCD_REG_OFFSET = 0x220;
/** Size of the register page. */
export const DMAR_REG_SIZE = 0x1000;

/** Virtual command registers, VT-d 3.3 layout (Linux 5.14-6.3). */
export const VCMD_LAYOUT_33 = { VCCAP: 0xe30, VCMD: 0xe00, VCMD_EO: 0xe08, VCRSP: 0xe10 } as const;
/** Virtual command registers, VT-d <= 3.2 layout (Linux 5.8-5.13, QEMU RFCs). */
export const VCMD_LAYOUT_32 = { VCCAP: 0xe00, VCMD: 0xe10, VCMD_EO: -1, VCRSP: 0xe20 } as const;

/** VER = 0x60 (major 6, minor 0), PROFILE.md. */
export const VTD_VERSION = 0x60;

// GCMD / GSTS bits (same positions)
export const DMA_GCMD_TE = 1 << 31;
export const DMA_GCMD_SRTP = 1 << 30;
export const DMA_GCMD_SFL = 1 << 29;
export const DMA_GCMD_EAFL = 1 << 28;
export const DMA_GCMD_WBF = 1 << 27;
export const DMA_GCMD_QIE = 1 << 26;
export const DMA_GCMD_IRE = 1 << 25;
export const DMA_GCMD_SIRTP = 1 << 24;
export const DMA_GCMD_CFI = 1 << 23;
export const DMA_GSTS_TES = 1 << 31;
export const DMA_GSTS_RTPS = 1 << 30;
export const DMA_GSTS_FLS = 1 << 29;
export const DMA_GSTS_AFLS = 1 << 28;
export const DMA_GSTS_WBFS = 1 << 27;
export const DMA_GSTS_QIES = 1 << 26;
export const DMA_GSTS_IRES = 1 << 25;
export const DMA_GSTS_IRTPS = 1 << 24;
export const DMA_GSTS_CFIS = 1 << 23;

// RTADDR: TTM in 11:10 (scalable mode = 01, Linux DMA_RTADDR_SMT = 1 << 10)
export const DMA_RTADDR_SMT = 1 << 10;
export const RTADDR_TTM_LEGACY = 0;
export const RTADDR_TTM_SCALABLE = 1;

// FSTS
export const DMA_FSTS_PFO = 1 << 0;
export const DMA_FSTS_PPF = 1 << 1;
export const DMA_FSTS_IQE = 1 << 4;
export const DMA_FSTS_ICE = 1 << 5;
export const DMA_FSTS_ITE = 1 << 6;
export const DMA_FSTS_PRO = 1 << 7;
export const DMA_FSTS_FRI_SHIFT = 8;

// FECTL / IECTL / PECTL
export const DMA_FECTL_IM = 1 << 31;
export const DMA_FECTL_IP = 1 << 30;

// ICS
export const DMA_ICS_IWC = 1;

// PRS
export const DMA_PRS_PPR = 1 << 0;
export const DMA_PRS_PRO = 1 << 1;

// CCMD (64-bit): 63 ICC, 62:61 CIRG, 60:59 CAIG, 33:32 FM, 31:16 SID, 15:0 DID
export const DMA_CCMD_ICC = 1n << 63n;
export const DMA_CCMD_GLOBAL_INVL = 1n << 61n;
export const DMA_CCMD_DOMAIN_INVL = 2n << 61n;
export const DMA_CCMD_DEVICE_INVL = 3n << 61n;

// IOTLB_REG (64-bit): 63 IVT, 61:60 IIRG, 58:57 IAIG, 49 DR, 48 DW, 47:32 DID
export const DMA_TLB_IVT = 1n << 63n;
export const DMA_TLB_GLOBAL_FLUSH = 1n << 60n;
export const DMA_TLB_DSI_FLUSH = 2n << 60n;
export const DMA_TLB_PSI_FLUSH = 3n << 60n;
export const DMA_TLB_READ_DRAIN = 1n << 49n;
export const DMA_TLB_WRITE_DRAIN = 1n << 48n;

// VCMD
export const VCMD_CMD_NOP = 0;
export const VCMD_CMD_ALLOC = 1;
export const VCMD_CMD_FREE = 2;
export const VCMD_VRSP_IP = 1;
export const VCCAP_PAS = 1n;
/** Status codes: 3.2 layout (SC in 2:1) and 3.3 layout (SC in 7:1). */
export const VCMD_SC_SUCCESS = 0;
export const VCMD_SC32_UNDEFINED_CMD = 1;
export const VCMD_SC32_NO_PASID = 2;
export const VCMD_SC32_INVALID_PASID = 2;
export const VCMD_SC33_UNDEFINED_CMD = 1;
export const VCMD_SC33_NO_PASID = 16;
export const VCMD_SC33_INVALID_PASID = 16;

// IQERCD.IQEI values
export const IQEI = {
  NOT_AVAILABLE: 0,
  INVALID_TAIL: 1,
  FETCH_ERROR: 2,
  INVALID_TYPE: 3,
  RESERVED_FIELD: 4,
  INVALID_WIDTH: 5,
  /** IQT bit 4 set while 256-bit descriptors are in use (IQA.DW = 1). */
  TAIL_MISALIGNED: 6,
  /** A descriptor whose TTM field is invalid. */
  INVALID_TTM: 7,
} as const;

// CAP bits
export const CAP = {
  ND_SHIFT: 0n,
  AFL: 1n << 3n,
  RWBF: 1n << 4n,
  PLMR: 1n << 5n,
  PHMR: 1n << 6n,
  CM: 1n << 7n,
  SAGAW_SHIFT: 8n,
  MGAW_SHIFT: 16n,
  ZLR: 1n << 22n,
  FRO_SHIFT: 24n,
  SLLPS_SHIFT: 34n,
  PSI: 1n << 39n,
  NFR_SHIFT: 40n,
  MAMV_SHIFT: 48n,
  DWD: 1n << 54n,
  DRD: 1n << 55n,
  FL1GP: 1n << 56n,
  PI: 1n << 59n,
  FL5LP: 1n << 60n,
  ECMDS: 1n << 61n,
  ESIRTPS: 1n << 62n,
  ESRTPS: 1n << 63n,
} as const;

// ECAP bits
export const ECAP = {
  C: 1n << 0n,
  QI: 1n << 1n,
  DT: 1n << 2n,
  IR: 1n << 3n,
  EIM: 1n << 4n,
  PT: 1n << 6n,
  SC: 1n << 7n,
  IRO_SHIFT: 8n,
  MHMV_SHIFT: 20n,
  MTS: 1n << 25n,
  NEST: 1n << 26n,
  DIS: 1n << 27n,
  PASID_LIMIT: 1n << 28n,
  PRS: 1n << 29n,
  ERS: 1n << 30n,
  SRS: 1n << 31n,
  NWFS: 1n << 33n,
  EAFS: 1n << 34n,
  PSS_SHIFT: 35n,
  PASID: 1n << 40n,
  DIT: 1n << 41n,
  PDS: 1n << 42n,
  SMTS: 1n << 43n,
  VCS: 1n << 44n,
  SLADS: 1n << 45n,
  SLTS: 1n << 46n,
  FLTS: 1n << 47n,
  SMPWC: 1n << 48n,
  RPS: 1n << 49n,
  PMS: 1n << 51n,
} as const;

/** MAMV reported with PSI (QEMU's value: 2^18 pages per page-selective invalidation). */
export const VTD_MAMV = 18;
/** Host address width of the default hardware (CAP.MGAW = 47). */
export const VTD_HAW = 48;

/** Register values of a configured VT-d unit, overrides applied. */
export interface VtdRegisterDefaults {
  cap: bigint;
  ecap: bigint;
  vccap: bigint;
}

/** CAP/ECAP/VCCAP for a VtdConfig (PROFILE.md), then the raw overrides. */
export function buildCapRegisters(cfg: VtdConfig): VtdRegisterDefaults {
  if (!Number.isInteger(cfg.pasid_bits) || cfg.pasid_bits < 0 || cfg.pasid_bits > 20) {
    throw new RangeError(`pasid_bits must be 0..20, got ${cfg.pasid_bits}`);
  }
  const maxRecords = (0xe00 - DMAR_FRCD_REG_OFFSET) / 16;
  if (!Number.isInteger(cfg.fault_records) || cfg.fault_records < 1 || cfg.fault_records > maxRecords) {
    throw new RangeError(`fault_records must be 1..${maxRecords}, got ${cfg.fault_records}`);
  }
  if (cfg.fl_levels !== 4 && cfg.fl_levels !== 5) throw new RangeError(`fl_levels must be 4 or 5`);
  let cap =
    (6n << CAP.ND_SHIFT) | // 16-bit domain IDs: 2^(4+2*6)
    (cfg.caching_mode ? CAP.CM : 0n) |
    (0b00110n << CAP.SAGAW_SHIFT) | // 39-bit (3-level) and 48-bit (4-level) second level
    (BigInt(VTD_HAW - 1) << CAP.MGAW_SHIFT) |
    (BigInt(DMAR_FRCD_REG_OFFSET / 16) << CAP.FRO_SHIFT) |
    (0b0011n << CAP.SLLPS_SHIFT) | // 2 MiB and 1 GiB second-level pages
    CAP.PSI |
    (BigInt(cfg.fault_records - 1) << CAP.NFR_SHIFT) |
    (BigInt(VTD_MAMV) << CAP.MAMV_SHIFT) |
    CAP.FL1GP |
    (cfg.fl_levels === 5 ? CAP.FL5LP : 0n);
  const pasid = cfg.pasid_bits > 0;
  let ecap =
    ECAP.QI |
    ECAP.DT |
    ECAP.PT |
    (BigInt(DMAR_IOTLB_REG_OFFSET / 16) << ECAP.IRO_SHIFT) |
    ECAP.NEST |
    ECAP.PRS |
    (pasid ? (BigInt(cfg.pasid_bits - 1) << ECAP.PSS_SHIFT) | ECAP.PASID : 0n) |
    ECAP.SMTS |
    ECAP.VCS |
    ECAP.SLTS |
    ECAP.FLTS;
  let vccap = VCCAP_PAS;
  if (cfg.cap !== undefined) cap = BigInt.asUintN(64, cfg.cap);
  if (cfg.ecap !== undefined) ecap = BigInt.asUintN(64, cfg.ecap);
  if (cfg.vccap !== undefined) vccap = BigInt.asUintN(64, cfg.vccap);
  return { cap, ecap, vccap };
}

/** What the hardware does, decoded from the final CAP/ECAP/VCCAP values. */
export interface VtdCaps {
  nd: number;
  cm: boolean;
  sagaw: number;
  mgaw: number;
  /** Host address width = MGAW + 1 (QEMU's convention, vtd-model.md section 0). */
  haw: number;
  fro: number;
  sllps: number;
  psi: boolean;
  nfr: number;
  mamv: number;
  fl1gp: boolean;
  fl5lp: boolean;
  qi: boolean;
  dt: boolean;
  ir: boolean;
  pt: boolean;
  iro: number;
  nest: boolean;
  prs: boolean;
  ers: boolean;
  srs: boolean;
  eafs: boolean;
  pss: number;
  pasid: boolean;
  /** PASID width in bits the hardware accepts (0 without ECAP.PASID). */
  pasidBits: number;
  smts: boolean;
  vcs: boolean;
  slads: boolean;
  slts: boolean;
  flts: boolean;
  smpwc: boolean;
  vccapPas: boolean;
}

function bits(v: bigint, shift: bigint, width: bigint): number {
  return Number((v >> shift) & ((1n << width) - 1n));
}

export function decodeCaps(r: VtdRegisterDefaults): VtdCaps {
  const { cap, ecap, vccap } = r;
  const mgaw = bits(cap, CAP.MGAW_SHIFT, 6n);
  const pasid = (ecap & ECAP.PASID) !== 0n;
  const pss = bits(ecap, ECAP.PSS_SHIFT, 5n);
  return {
    nd: bits(cap, CAP.ND_SHIFT, 3n),
    cm: (cap & CAP.CM) !== 0n,
    sagaw: bits(cap, CAP.SAGAW_SHIFT, 5n),
    mgaw,
    haw: Math.min(mgaw + 1, 52),
    fro: bits(cap, CAP.FRO_SHIFT, 10n) * 16,
    sllps: bits(cap, CAP.SLLPS_SHIFT, 4n),
    psi: (cap & CAP.PSI) !== 0n,
    nfr: bits(cap, CAP.NFR_SHIFT, 8n) + 1,
    mamv: bits(cap, CAP.MAMV_SHIFT, 6n),
    fl1gp: (cap & CAP.FL1GP) !== 0n,
    fl5lp: (cap & CAP.FL5LP) !== 0n,
    qi: (ecap & ECAP.QI) !== 0n,
    dt: (ecap & ECAP.DT) !== 0n,
    ir: (ecap & ECAP.IR) !== 0n,
    pt: (ecap & ECAP.PT) !== 0n,
    iro: bits(ecap, ECAP.IRO_SHIFT, 10n) * 16,
    nest: (ecap & ECAP.NEST) !== 0n,
    prs: (ecap & ECAP.PRS) !== 0n,
    ers: (ecap & ECAP.ERS) !== 0n,
    srs: (ecap & ECAP.SRS) !== 0n,
    eafs: (ecap & ECAP.EAFS) !== 0n,
    pss,
    pasid,
    pasidBits: pasid ? pss + 1 : 0,
    smts: (ecap & ECAP.SMTS) !== 0n,
    vcs: (ecap & ECAP.VCS) !== 0n,
    slads: (ecap & ECAP.SLADS) !== 0n,
    slts: (ecap & ECAP.SLTS) !== 0n,
    flts: (ecap & ECAP.FLTS) !== 0n,
    smpwc: (ecap & ECAP.SMPWC) !== 0n,
    vccapPas: (ecap & ECAP.VCS) !== 0n && (vccap & VCCAP_PAS) !== 0n,
  };
}

/** Register names for mmio_read/mmio_write (Linux DMAR_*_REG without DMAR_), for a VCMD layout. */
export function registerNames(layout: '3.3' | '3.2', caps: VtdCaps): Record<string, number> {
  const v = layout === '3.3' ? VCMD_LAYOUT_33 : VCMD_LAYOUT_32;
  const names: Record<string, number> = {
    VER_REG: DMAR_VER_REG,
    CAP_REG: DMAR_CAP_REG,
    ECAP_REG: DMAR_ECAP_REG,
    GCMD_REG: DMAR_GCMD_REG,
    GSTS_REG: DMAR_GSTS_REG,
    RTADDR_REG: DMAR_RTADDR_REG,
    CCMD_REG: DMAR_CCMD_REG,
    FSTS_REG: DMAR_FSTS_REG,
    FECTL_REG: DMAR_FECTL_REG,
    FEDATA_REG: DMAR_FEDATA_REG,
    FEADDR_REG: DMAR_FEADDR_REG,
    FEUADDR_REG: DMAR_FEUADDR_REG,
    AFLOG_REG: DMAR_AFLOG_REG,
    PMEN_REG: DMAR_PMEN_REG,
    PLMBASE_REG: DMAR_PLMBASE_REG,
    PLMLIMIT_REG: DMAR_PLMLIMIT_REG,
    PHMBASE_REG: DMAR_PHMBASE_REG,
    PHMLIMIT_REG: DMAR_PHMLIMIT_REG,
    IQH_REG: DMAR_IQH_REG,
    IQT_REG: DMAR_IQT_REG,
    IQA_REG: DMAR_IQA_REG,
    ICS_REG: DMAR_ICS_REG,
    IECTL_REG: DMAR_IECTL_REG,
    IEDATA_REG: DMAR_IEDATA_REG,
    IEADDR_REG: DMAR_IEADDR_REG,
    IEUADDR_REG: DMAR_IEUADDR_REG,
    IQER_REG: DMAR_IQER_REG,
    IQERCD_REG: DMAR_IQER_REG,
    IRTA_REG: DMAR_IRTA_REG,
    PQH_REG: DMAR_PQH_REG,
    PQT_REG: DMAR_PQT_REG,
    PQA_REG: DMAR_PQA_REG,
    PRS_REG: DMAR_PRS_REG,
    PECTL_REG: DMAR_PECTL_REG,
    PEDATA_REG: DMAR_PEDATA_REG,
    PEADDR_REG: DMAR_PEADDR_REG,
    PEUADDR_REG: DMAR_PEUADDR_REG,
    IVA_REG: caps.iro,
    IOTLB_REG: caps.iro + 8,
    FRCD_REG: caps.fro,
    VCCAP_REG: v.VCCAP,
    VCMD_REG: v.VCMD,
    VCRSP_REG: v.VCRSP,
  };
  if (v.VCMD_EO >= 0) names['VCMD_EO_REG'] = v.VCMD_EO;
  return names;
}
