// DMA-remapping fault reasons (vtd-model.md B.5): the scalable-mode codes with their spec
// condition names (SRT.1, SCT.6, ...), Linux's description strings, whether the fault is
// "qualified" (suppressed by a Fault Processing Disable bit), and the legacy codes that legacy
// mode (TTM=00) uses and that the `qemu_compat` option reproduces in scalable mode.
//
// Fault recording itself (B.6: FRCD registers, FSTS PPF/PFO/FRI, fault events) lives in the
// VtdIommu class, which owns the register file.

/** Scalable-mode fault reasons by value. */
export const FR = {
  SM_RTA_INV: 0x30, // RTA.1
  SM_RTA_TTM0_PASID: 0x31, // RTA.2
  SM_RTA_TTM0_PRQ: 0x32, // RTA.3
  SM_RTA_4: 0x33, // RTA.4
  SM_ROOT_ACCESS: 0x38, // SRT.1
  SM_ROOT_P: 0x39, // SRT.2
  SM_ROOT_RSVD: 0x3a, // SRT.3
  SM_CTX_ACCESS: 0x40, // SCT.1
  SM_CTX_P: 0x41, // SCT.2
  SM_CTX_RSVD: 0x42, // SCT.3
  SM_CTX_INV: 0x43, // SCT.4
  SM_CTX_DTE: 0x44, // SCT.5
  SM_CTX_PASIDE: 0x45, // SCT.6
  SM_CTX_PASID_MAX: 0x46, // SCT.7
  SM_CTX_PRE: 0x47, // SCT.8
  SM_CTX_RID_PASID: 0x48, // SCT.9
  SM_PDIR_ACCESS: 0x50, // SPD.1
  SM_PDIR_P: 0x51, // SPD.2
  SM_PDIR_RSVD: 0x52, // SPD.3
  SM_PTE_ACCESS: 0x58, // SPT.1
  SM_PTE_P: 0x59, // SPT.2
  SM_PTE_RSVD: 0x5a, // SPT.3
  SM_PTE_INV: 0x5b, // SPT.4
  SM_PTE_ERE: 0x5c, // SPT.5
  SM_PTE_SRE: 0x5d, // SPT.6
  SM_FL_ACCESS: 0x70, // SFL.1
  SM_FL_P: 0x71, // SFL.2
  SM_FL_RSVD: 0x72, // SFL.3
  SM_FL_PML4_ACCESS: 0x73, // SFL.4
  SM_FL_NESTED_MGAW: 0x74, // SFL.5
  SM_FL_NESTED_PML4_READ: 0x75, // SFL.6
  SM_FL_NESTED_READ: 0x76, // SFL.7
  SM_FL_NESTED_WRITE: 0x77, // SFL.8
  SM_SL_ACCESS: 0x78, // SSL.1
  SM_SL_RW: 0x79, // SSL.2
  SM_SL_RSVD: 0x7a, // SSL.3
  SM_SL_PTR_INV: 0x7b, // SSL.4
  SM_SL_AD_NOSNOOP: 0x7c, // SSL.5
  SM_SL_6: 0x7d, // SSL.6
  SM_NON_CANONICAL: 0x80, // SGN.1
  SM_US: 0x81, // SGN.2
  SM_EXEC: 0x82, // SGN.3
  SM_ADDR_BEYOND: 0x83, // SGN.4
  SM_SL_ADDR_BEYOND: 0x84, // SGN.5
  SM_WRITE: 0x85, // SGN.6
  SM_READ: 0x86, // SGN.7
  SM_INTERRUPT_ADDR: 0x87, // SGN.8
  SM_SGN_9: 0x88, // SGN.9
  SM_SGN_10: 0x89, // SGN.10
  SM_FL_AD_NOSNOOP: 0x90, // SFL.9
  SM_FL_AD_FAILED: 0x91, // SFL.10
} as const;

/** Legacy (TTM=00) fault reasons (QEMU enum VTDFaultReason, Linux dma_remap_fault_reasons[]). */
export const LFR = {
  ROOT_ENTRY_P: 0x01,
  CONTEXT_ENTRY_P: 0x02,
  CONTEXT_ENTRY_INV: 0x03,
  ADDR_BEYOND_MGAW: 0x04,
  WRITE: 0x05,
  READ: 0x06,
  PAGING_ENTRY_INV: 0x07,
  ROOT_TABLE_INV: 0x08,
  CONTEXT_TABLE_INV: 0x09,
  ROOT_ENTRY_RSVD: 0x0a,
  CONTEXT_ENTRY_RSVD: 0x0b,
  PAGING_ENTRY_RSVD: 0x0c,
  CONTEXT_ENTRY_TT: 0x0d,
  INTERRUPT_ADDR: 0x0e,
} as const;

export interface FaultReasonInfo {
  /** Spec condition code, e.g. 'SPT.2'. */
  cond: string;
  /** Linux's description (drivers/iommu/intel/dmar.c). */
  text: string;
  /** Qualified faults are not recorded when a Fault Processing Disable bit applies. */
  qualified: boolean;
}

const R = (cond: string, text: string, qualified: boolean): FaultReasonInfo => ({ cond, text, qualified });

export const FAULT_REASONS: ReadonlyMap<number, FaultReasonInfo> = new Map([
  [LFR.ROOT_ENTRY_P, R('LRT.2', 'Present bit in root entry is clear', false)],
  [LFR.CONTEXT_ENTRY_P, R('LCT.2', 'Present bit in context entry is clear', true)],
  [LFR.CONTEXT_ENTRY_INV, R('LCT.4', 'Invalid context entry', true)],
  [LFR.ADDR_BEYOND_MGAW, R('LGN.1', 'Access beyond MGAW', true)],
  [LFR.WRITE, R('LGN.2', 'PTE Write access is not set', true)],
  [LFR.READ, R('LGN.3', 'PTE Read access is not set', true)],
  [LFR.PAGING_ENTRY_INV, R('LSL.1', 'Next page table ptr is invalid', true)],
  [LFR.ROOT_TABLE_INV, R('LRT.1', 'Root table address invalid', false)],
  [LFR.CONTEXT_TABLE_INV, R('LCT.1', 'Context table ptr is invalid', false)],
  [LFR.ROOT_ENTRY_RSVD, R('LRT.3', 'non-zero reserved fields in RTP', false)],
  [LFR.CONTEXT_ENTRY_RSVD, R('LCT.3', 'non-zero reserved fields in CTP', false)],
  [LFR.PAGING_ENTRY_RSVD, R('LSL.2', 'non-zero reserved fields in PTE', true)],
  [LFR.CONTEXT_ENTRY_TT, R('LCT.5', 'PCE for translation request specifies blocking', true)],
  [LFR.INTERRUPT_ADDR, R('LGN.4', 'Interrupt address range', true)],
  [FR.SM_RTA_INV, R('RTA.1', 'SM: Invalid Root Table Address', false)],
  [FR.SM_RTA_TTM0_PASID, R('RTA.2', 'SM: TTM 0 for request with PASID', false)],
  [FR.SM_RTA_TTM0_PRQ, R('RTA.3', 'SM: TTM 0 for page group request', false)],
  [FR.SM_RTA_4, R('RTA.4', 'SM: Root table address fault', false)],
  [FR.SM_ROOT_ACCESS, R('SRT.1', 'SM: Error attempting to access Root Entry', false)],
  [FR.SM_ROOT_P, R('SRT.2', 'SM: Present bit in Root Entry is clear', false)],
  [FR.SM_ROOT_RSVD, R('SRT.3', 'SM: Non-zero reserved field set in Root Entry', false)],
  [FR.SM_CTX_ACCESS, R('SCT.1', 'SM: Error attempting to access Context Entry', false)],
  [FR.SM_CTX_P, R('SCT.2', 'SM: Present bit in Context Entry is clear', true)],
  [FR.SM_CTX_RSVD, R('SCT.3', 'SM: Non-zero reserved field set in the Context Entry', false)],
  [FR.SM_CTX_INV, R('SCT.4', 'SM: Invalid Context Entry', true)],
  [FR.SM_CTX_DTE, R('SCT.5', 'SM: DTE field in Context Entry is clear', true)],
  [FR.SM_CTX_PASIDE, R('SCT.6', 'SM: PASID Enable field in Context Entry is clear', true)],
  [FR.SM_CTX_PASID_MAX, R('SCT.7', 'SM: PASID is larger than the max in Context Entry', true)],
  [FR.SM_CTX_PRE, R('SCT.8', 'SM: PRE field in Context-Entry is clear', true)],
  [FR.SM_CTX_RID_PASID, R('SCT.9', 'SM: RID_PASID field error in Context-Entry', true)],
  [FR.SM_PDIR_ACCESS, R('SPD.1', 'SM: Error attempting to access the PASID Directory Entry', false)],
  [FR.SM_PDIR_P, R('SPD.2', 'SM: Present bit in Directory Entry is clear', true)],
  [FR.SM_PDIR_RSVD, R('SPD.3', 'SM: Non-zero reserved field set in PASID Directory Entry', true)],
  [FR.SM_PTE_ACCESS, R('SPT.1', 'SM: Error attempting to access PASID Table Entry', false)],
  [FR.SM_PTE_P, R('SPT.2', 'SM: Present bit in PASID Table Entry is clear', true)],
  [FR.SM_PTE_RSVD, R('SPT.3', 'SM: Non-zero reserved field set in PASID Table Entry', true)],
  [FR.SM_PTE_INV, R('SPT.4', 'SM: Invalid Scalable-Mode PASID Table Entry', true)],
  [FR.SM_PTE_ERE, R('SPT.5', 'SM: ERE field is clear in PASID Table Entry', true)],
  [FR.SM_PTE_SRE, R('SPT.6', 'SM: SRE field is clear in PASID Table Entry', true)],
  [FR.SM_FL_ACCESS, R('SFL.1', 'SM: Error attempting to access first-level paging entry', true)],
  [FR.SM_FL_P, R('SFL.2', 'SM: Present bit in first-level paging entry is clear', true)],
  [FR.SM_FL_RSVD, R('SFL.3', 'SM: Non-zero reserved field set in first-level paging entry', true)],
  [FR.SM_FL_PML4_ACCESS, R('SFL.4', 'SM: Error attempting to access FL-PML4 entry', true)],
  [FR.SM_FL_NESTED_MGAW, R('SFL.5', 'SM: First-level entry address beyond MGAW in Nested translation', true)],
  [
    FR.SM_FL_NESTED_PML4_READ,
    R('SFL.6', 'SM: Read permission error in FL-PML4 entry in Nested translation', true),
  ],
  [
    FR.SM_FL_NESTED_READ,
    R('SFL.7', 'SM: Read permission error in first-level paging entry in Nested translation', true),
  ],
  [
    FR.SM_FL_NESTED_WRITE,
    R('SFL.8', 'SM: Write permission error in first-level paging entry in Nested translation', true),
  ],
  [FR.SM_SL_ACCESS, R('SSL.1', 'SM: Error attempting to access second-level paging entry', true)],
  [FR.SM_SL_RW, R('SSL.2', 'SM: Read/Write permission error in second-level paging entry', true)],
  [FR.SM_SL_RSVD, R('SSL.3', 'SM: Non-zero reserved field set in second-level paging entry', true)],
  [FR.SM_SL_PTR_INV, R('SSL.4', 'SM: Invalid second-level page table pointer', true)],
  [
    FR.SM_SL_AD_NOSNOOP,
    R('SSL.5', 'SM: A/D bit update needed in second-level entry when set up in no snoop', true),
  ],
  [FR.SM_SL_6, R('SSL.6', 'SM: second-level fault (later spec addition)', true)],
  [FR.SM_NON_CANONICAL, R('SGN.1', 'SM: Address in first-level translation is not canonical', true)],
  [FR.SM_US, R('SGN.2', 'SM: U/S set 0 for first-level translation with user privilege', true)],
  [FR.SM_EXEC, R('SGN.3', 'SM: No execute permission for request with PASID and ER=1', true)],
  [FR.SM_ADDR_BEYOND, R('SGN.4', 'SM: Address beyond the DMA hardware max', true)],
  [FR.SM_SL_ADDR_BEYOND, R('SGN.5', 'SM: Second-level entry address beyond the max', true)],
  [FR.SM_WRITE, R('SGN.6', 'SM: No write permission for Write/AtomicOp request', true)],
  [FR.SM_READ, R('SGN.7', 'SM: No read permission for Read/AtomicOp request', true)],
  [FR.SM_INTERRUPT_ADDR, R('SGN.8', 'SM: Invalid address-interrupt address', true)],
  [FR.SM_SGN_9, R('SGN.9', 'SM: general fault (later spec addition)', true)],
  [FR.SM_SGN_10, R('SGN.10', 'SM: general fault (later spec addition)', true)],
  [
    FR.SM_FL_AD_NOSNOOP,
    R('SFL.9', 'SM: A/D bit update needed in first-level entry when set up in no snoop', true),
  ],
  [FR.SM_FL_AD_FAILED, R('SFL.10', 'SM: First-level A/D bit update failed', true)],
]);

export function faultReasonInfo(reason: number): FaultReasonInfo {
  return FAULT_REASONS.get(reason) ?? { cond: '?', text: 'Unknown', qualified: true };
}

/** Which walk produced a fault: permission codes map to legacy codes only for the second level. */
export const STAGE_NONE = 0;
export const STAGE_FL = 1;
export const STAGE_SL = 2;

/**
 * The legacy code for a scalable-mode reason: what legacy mode (TTM=00) reports for the same
 * condition, and what QEMU reports in scalable mode (vtd-model.md B.5 "QEMU enum" column:
 * root/context/second-level faults reuse the legacy codes; first-level ones keep SM codes).
 */
export function legacyReason(reason: number, stage: number): number {
  switch (reason) {
    case FR.SM_ROOT_ACCESS:
      return LFR.ROOT_TABLE_INV;
    case FR.SM_ROOT_P:
      return LFR.ROOT_ENTRY_P;
    case FR.SM_ROOT_RSVD:
      return LFR.ROOT_ENTRY_RSVD;
    case FR.SM_CTX_ACCESS:
      return LFR.CONTEXT_TABLE_INV;
    case FR.SM_CTX_P:
      return LFR.CONTEXT_ENTRY_P;
    case FR.SM_CTX_RSVD:
      return LFR.CONTEXT_ENTRY_RSVD;
    case FR.SM_CTX_INV:
      return LFR.CONTEXT_ENTRY_INV;
    case FR.SM_CTX_DTE:
      return LFR.CONTEXT_ENTRY_TT;
    case FR.SM_SL_ACCESS:
      return LFR.PAGING_ENTRY_INV;
    case FR.SM_SL_RSVD:
      return LFR.PAGING_ENTRY_RSVD;
    case FR.SM_SL_PTR_INV:
      return LFR.CONTEXT_ENTRY_INV;
    case FR.SM_ADDR_BEYOND:
      return LFR.ADDR_BEYOND_MGAW;
    case FR.SM_WRITE:
      return stage === STAGE_SL ? LFR.WRITE : reason;
    case FR.SM_READ:
      return stage === STAGE_SL ? LFR.READ : reason;
    default:
      return reason;
  }
}

/** Access kinds of a request, as bits: an execute request is a read with ER=1, an atomic is R|W. */
export const ACCESS_R = 1;
export const ACCESS_W = 2;
export const ACCESS_X = 4;
export const ACCESS_READ = ACCESS_R;
export const ACCESS_WRITE = ACCESS_W;
export const ACCESS_EXEC = ACCESS_R | ACCESS_X;
export const ACCESS_ATOMIC = ACCESS_R | ACCESS_W;

/** Address type of a request (PCIe AT field). */
export const AT_UNTRANSLATED = 0;
export const AT_TRANSLATION_REQ = 1;
export const AT_TRANSLATED = 2;
