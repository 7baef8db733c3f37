// The user-pointer fields of the uAPI structs and what they point at, so that a layer that
// builds arguments from data (the scenario runner: SCENARIO.md family 4 lets a pointer field be
// given inline, with its companion length or count filled from it) or that prints results can
// find the data behind a pointer without knowing each ioctl. Which driver struct a `data_uptr`
// carries depends on a type field (research iommufd.md A.11, A.12, A.15, A.17, A.24).

import { IOMMUFD_ENUMS, IOMMUFD_TEST_ENUMS } from './constants.ts';
import type { StructDef } from './layout.ts';
import * as S from './structs.ts';

export interface PointerField {
  /** The C struct holding the pointer, and the pointer field (a dotted path inside IOMMU_TEST_CMD's union). */
  readonly struct: string;
  readonly field: string;
  /** in: the kernel reads it; out: the kernel writes it; inout: both. */
  readonly direction: 'in' | 'out' | 'inout';
  /** The field giving the element count (arrays) or the byte length (bytes), if any. */
  readonly count?: string;
  readonly len?: string;
  /** Array element or pointed-to struct, when fixed. */
  readonly elem?: StructDef;
  /** When the pointed-to struct depends on a type field: that field and the struct per value. */
  readonly elemBy?: { readonly field: string; readonly map: Readonly<Record<number, StructDef>> };
}

const E = IOMMUFD_ENUMS;
const T = IOMMUFD_TEST_ENUMS;

export const POINTER_FIELDS: readonly PointerField[] = [
  {
    struct: 'iommu_ioas_iova_ranges',
    field: 'allowed_iovas',
    direction: 'out',
    count: 'num_iovas',
    elem: S.iommu_iova_range,
  },
  {
    struct: 'iommu_ioas_allow_iovas',
    field: 'allowed_iovas',
    direction: 'in',
    count: 'num_iovas',
    elem: S.iommu_iova_range,
  },
  { struct: 'iommu_ioas_map', field: 'user_va', direction: 'in', len: 'length' },
  {
    struct: 'iommu_hwpt_alloc',
    field: 'data_uptr',
    direction: 'in',
    len: 'data_len',
    elemBy: {
      field: 'data_type',
      map: {
        [E.IOMMU_HWPT_DATA_VTD_S1]: S.iommu_hwpt_vtd_s1,
        [E.IOMMU_HWPT_DATA_ARM_SMMUV3]: S.iommu_hwpt_arm_smmuv3,
        [T.IOMMU_HWPT_DATA_SELFTEST]: S.iommu_hwpt_selftest,
      },
    },
  },
  {
    struct: 'iommu_hw_info',
    field: 'data_uptr',
    direction: 'out',
    len: 'data_len',
    elemBy: {
      field: 'out_data_type',
      map: {
        [E.IOMMU_HW_INFO_TYPE_INTEL_VTD]: S.iommu_hw_info_vtd,
        [E.IOMMU_HW_INFO_TYPE_ARM_SMMUV3]: S.iommu_hw_info_arm_smmuv3,
        [E.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV]: S.iommu_hw_info_tegra241_cmdqv,
        [T.IOMMU_HW_INFO_TYPE_SELFTEST]: S.iommu_test_hw_info,
      },
    },
  },
  // The bitmap's size follows from length / page_size (one bit per page, in u64 words).
  { struct: 'iommu_hwpt_get_dirty_bitmap', field: 'data', direction: 'out' },
  {
    struct: 'iommu_hwpt_invalidate',
    field: 'data_uptr',
    direction: 'in',
    count: 'entry_num',
    len: 'entry_len',
    // 0xdeadbeef is also IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST (iommu_viommu_invalidate_selftest)
    // when hwpt_id names a vIOMMU: only the object behind hwpt_id decides.
    elemBy: {
      field: 'data_type',
      map: {
        [E.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1]: S.iommu_hwpt_vtd_s1_invalidate,
        [E.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3]: S.iommu_viommu_arm_smmuv3_invalidate,
        [T.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST]: S.iommu_hwpt_invalidate_selftest,
      },
    },
  },
  {
    struct: 'iommu_viommu_alloc',
    field: 'data_uptr',
    direction: 'inout',
    len: 'data_len',
    elemBy: {
      field: 'type',
      map: {
        [E.IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV]: S.iommu_viommu_tegra241_cmdqv,
        [T.IOMMU_VIOMMU_TYPE_SELFTEST]: S.iommu_viommu_selftest,
      },
    },
  },
  // A 16-byte UUID, read only with VFIO_DEVICE_BIND_FLAG_TOKEN.
  { struct: 'vfio_device_bind_iommufd', field: 'token_uuid_ptr', direction: 'in' },
  { struct: 'iommu_test_cmd', field: 'check_map.uptr', direction: 'in', len: 'check_map.length' },
  { struct: 'iommu_test_cmd', field: 'check_refs.uptr', direction: 'in', len: 'check_refs.length' },
  { struct: 'iommu_test_cmd', field: 'access_pages.uptr', direction: 'in', len: 'access_pages.length' },
  { struct: 'iommu_test_cmd', field: 'access_rw.uptr', direction: 'inout', len: 'access_rw.length' },
  // The dirty bitmap: one bit per page_size of [iova, iova + length).
  { struct: 'iommu_test_cmd', field: 'dirty.uptr', direction: 'in' },
];

/** The pointer fields of one struct, by C struct name. */
export function pointerFields(structName: string): PointerField[] {
  return POINTER_FIELDS.filter((p) => p.struct === structName);
}
