// Named constants of the iommufd uAPI (include/uapi/linux/iommufd.h), the VFIO cdev and
// container-compat uAPI (include/uapi/linux/vfio.h) and the selftest uAPI
// (drivers/iommu/iommufd/iommufd_test.h), spelled exactly as the kernel spells them, so that
// scenario files can name them (SCENARIO.md: "constants are written by their kernel names").
// Values follow research iommufd.md A.1–A.24 and were checked against the kernel headers.
// Each group is an `as const` object for typed use; UAPI_CONSTANTS merges them for lookup by name.

import { IOMMUFD_CMD_BASE, IOMMUFD_TYPE, VFIO_BASE, VFIO_TYPE } from './ioc.ts';

export const IOMMUFD_CMD = {
  IOMMUFD_CMD_BASE,
  IOMMUFD_CMD_DESTROY: 0x80,
  IOMMUFD_CMD_IOAS_ALLOC: 0x81,
  IOMMUFD_CMD_IOAS_ALLOW_IOVAS: 0x82,
  IOMMUFD_CMD_IOAS_COPY: 0x83,
  IOMMUFD_CMD_IOAS_IOVA_RANGES: 0x84,
  IOMMUFD_CMD_IOAS_MAP: 0x85,
  IOMMUFD_CMD_IOAS_UNMAP: 0x86,
  IOMMUFD_CMD_OPTION: 0x87,
  IOMMUFD_CMD_VFIO_IOAS: 0x88,
  IOMMUFD_CMD_HWPT_ALLOC: 0x89,
  IOMMUFD_CMD_GET_HW_INFO: 0x8a,
  IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING: 0x8b,
  IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP: 0x8c,
  IOMMUFD_CMD_HWPT_INVALIDATE: 0x8d,
  IOMMUFD_CMD_FAULT_QUEUE_ALLOC: 0x8e,
  IOMMUFD_CMD_IOAS_MAP_FILE: 0x8f,
  IOMMUFD_CMD_VIOMMU_ALLOC: 0x90,
  IOMMUFD_CMD_VDEVICE_ALLOC: 0x91,
  IOMMUFD_CMD_IOAS_CHANGE_PROCESS: 0x92,
  IOMMUFD_CMD_VEVENTQ_ALLOC: 0x93,
  IOMMUFD_CMD_HW_QUEUE_ALLOC: 0x94,
} as const;

export const IOMMUFD_ENUMS = {
  IOMMUFD_TYPE,
  // enum iommufd_ioas_map_flags
  IOMMU_IOAS_MAP_FIXED_IOVA: 1 << 0,
  IOMMU_IOAS_MAP_WRITEABLE: 1 << 1,
  IOMMU_IOAS_MAP_READABLE: 1 << 2,
  // enum iommufd_option, enum iommufd_option_ops
  IOMMU_OPTION_RLIMIT_MODE: 0,
  IOMMU_OPTION_HUGE_PAGES: 1,
  IOMMU_OPTION_OP_SET: 0,
  IOMMU_OPTION_OP_GET: 1,
  // enum iommufd_vfio_ioas_op
  IOMMU_VFIO_IOAS_GET: 0,
  IOMMU_VFIO_IOAS_SET: 1,
  IOMMU_VFIO_IOAS_CLEAR: 2,
  // enum iommufd_hwpt_alloc_flags
  IOMMU_HWPT_ALLOC_NEST_PARENT: 1 << 0,
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING: 1 << 1,
  IOMMU_HWPT_FAULT_ID_VALID: 1 << 2,
  IOMMU_HWPT_ALLOC_PASID: 1 << 3,
  // enum iommu_hwpt_vtd_s1_flags
  IOMMU_VTD_S1_SRE: 1 << 0,
  IOMMU_VTD_S1_EAFE: 1 << 1,
  IOMMU_VTD_S1_WPE: 1 << 2,
  // enum iommu_hwpt_data_type
  IOMMU_HWPT_DATA_NONE: 0,
  IOMMU_HWPT_DATA_VTD_S1: 1,
  IOMMU_HWPT_DATA_ARM_SMMUV3: 2,
  // enum iommu_hw_info_vtd_flags
  IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17: 1 << 0,
  // enum iommu_hw_info_type
  IOMMU_HW_INFO_TYPE_NONE: 0,
  IOMMU_HW_INFO_TYPE_DEFAULT: 0,
  IOMMU_HW_INFO_TYPE_INTEL_VTD: 1,
  IOMMU_HW_INFO_TYPE_ARM_SMMUV3: 2,
  IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV: 3,
  // enum iommufd_hw_capabilities
  IOMMU_HW_CAP_DIRTY_TRACKING: 1 << 0,
  IOMMU_HW_CAP_PCI_PASID_EXEC: 1 << 1,
  IOMMU_HW_CAP_PCI_PASID_PRIV: 1 << 2,
  // enum iommufd_hw_info_flags
  IOMMU_HW_INFO_FLAG_INPUT_TYPE: 1 << 0,
  // enum iommufd_hwpt_set_dirty_tracking_flags
  IOMMU_HWPT_DIRTY_TRACKING_ENABLE: 1,
  // enum iommufd_hwpt_get_dirty_bitmap_flags
  IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: 1,
  // enum iommu_hwpt_invalidate_data_type
  IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: 0,
  IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: 1,
  // enum iommu_hwpt_vtd_s1_invalidate_flags
  IOMMU_VTD_INV_FLAGS_LEAF: 1 << 0,
  // enum iommu_hwpt_pgfault_flags, enum iommu_hwpt_pgfault_perm
  IOMMU_PGFAULT_FLAGS_PASID_VALID: 1 << 0,
  IOMMU_PGFAULT_FLAGS_LAST_PAGE: 1 << 1,
  IOMMU_PGFAULT_PERM_READ: 1 << 0,
  IOMMU_PGFAULT_PERM_WRITE: 1 << 1,
  IOMMU_PGFAULT_PERM_EXEC: 1 << 2,
  IOMMU_PGFAULT_PERM_PRIV: 1 << 3,
  // enum iommufd_page_response_code
  IOMMUFD_PAGE_RESP_SUCCESS: 0,
  IOMMUFD_PAGE_RESP_INVALID: 1,
  // enum iommu_viommu_type
  IOMMU_VIOMMU_TYPE_DEFAULT: 0,
  IOMMU_VIOMMU_TYPE_ARM_SMMUV3: 1,
  IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV: 2,
  // enum iommu_veventq_flag, enum iommu_veventq_type
  IOMMU_VEVENTQ_FLAG_LOST_EVENTS: 1 << 0,
  IOMMU_VEVENTQ_TYPE_DEFAULT: 0,
  IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: 1,
  IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: 2,
  // enum iommu_hw_queue_type
  IOMMU_HW_QUEUE_TYPE_DEFAULT: 0,
  IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV: 1,
  // include/linux/iommu.h: the kernel-internal "no PASID" (the RID), used by the test ops
  IOMMU_NO_PASID: 0,
} as const;

/** include/uapi/linux/vfio.h: the cdev (bind/attach/detach) and container-compat values. */
export const VFIO_ENUMS = {
  VFIO_TYPE,
  VFIO_BASE,
  VFIO_API_VERSION: 0,
  // extensions (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU)
  VFIO_TYPE1_IOMMU: 1,
  VFIO_SPAPR_TCE_IOMMU: 2,
  VFIO_TYPE1v2_IOMMU: 3,
  VFIO_DMA_CC_IOMMU: 4,
  VFIO_EEH: 5,
  VFIO_SPAPR_TCE_v2_IOMMU: 7,
  VFIO_NOIOMMU_IOMMU: 8,
  VFIO_UNMAP_ALL: 9,
  VFIO_UPDATE_VADDR: 10,
  // struct vfio_device_bind_iommufd / attach / detach flags
  VFIO_DEVICE_BIND_FLAG_TOKEN: 1 << 0,
  VFIO_DEVICE_ATTACH_PASID: 1 << 0,
  VFIO_DEVICE_DETACH_PASID: 1 << 0,
  // struct vfio_iommu_type1_dma_map / dma_unmap flags
  VFIO_DMA_MAP_FLAG_READ: 1 << 0,
  VFIO_DMA_MAP_FLAG_WRITE: 1 << 1,
  VFIO_DMA_MAP_FLAG_VADDR: 1 << 2,
  VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: 1 << 0,
  VFIO_DMA_UNMAP_FLAG_ALL: 1 << 1,
  VFIO_DMA_UNMAP_FLAG_VADDR: 1 << 2,
  // struct vfio_iommu_type1_info flags and capability ids
  VFIO_IOMMU_INFO_PGSIZES: 1 << 0,
  VFIO_IOMMU_INFO_CAPS: 1 << 1,
  VFIO_IOMMU_INFO_DIRTY_PGS: 1 << 2,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: 1,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: 2,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: 3,
} as const;

/** drivers/iommu/iommufd/iommufd_test.h (CONFIG_IOMMUFD_TEST), research A.24. */
export const IOMMUFD_TEST_ENUMS = {
  IOMMU_TEST_OP_ADD_RESERVED: 1,
  IOMMU_TEST_OP_MOCK_DOMAIN: 2,
  IOMMU_TEST_OP_MD_CHECK_MAP: 3,
  IOMMU_TEST_OP_MD_CHECK_REFS: 4,
  IOMMU_TEST_OP_CREATE_ACCESS: 5,
  IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: 6,
  IOMMU_TEST_OP_ACCESS_PAGES: 7,
  IOMMU_TEST_OP_ACCESS_RW: 8,
  IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: 9,
  IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: 10,
  IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: 11,
  IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: 12,
  IOMMU_TEST_OP_DIRTY: 13,
  IOMMU_TEST_OP_MD_CHECK_IOTLB: 14,
  IOMMU_TEST_OP_TRIGGER_IOPF: 15,
  IOMMU_TEST_OP_DEV_CHECK_CACHE: 16,
  IOMMU_TEST_OP_TRIGGER_VEVENT: 17,
  IOMMU_TEST_OP_PASID_ATTACH: 18,
  IOMMU_TEST_OP_PASID_REPLACE: 19,
  IOMMU_TEST_OP_PASID_DETACH: 20,
  IOMMU_TEST_OP_PASID_CHECK_HWPT: 21,
  IOMMU_TEST_OP_DMABUF_GET: 22,
  IOMMU_TEST_OP_DMABUF_REVOKE: 23,
  MOCK_IOMMUPT_DEFAULT: 0,
  MOCK_IOMMUPT_HUGE: 1,
  MOCK_APERTURE_START: 1 << 24,
  MOCK_APERTURE_LAST: 2 ** 31 - 1,
  MOCK_PAGE_SIZE: 2048,
  MOCK_HUGE_PAGE_SIZE: 512 * 2048,
  MOCK_FLAGS_ACCESS_WRITE: 1 << 0,
  MOCK_FLAGS_ACCESS_SYZ: 1 << 16,
  MOCK_ACCESS_RW_WRITE: 1 << 0,
  MOCK_ACCESS_RW_SLOW_PATH: 1 << 2,
  MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES: 1 << 0,
  MOCK_FLAGS_DEVICE_NO_DIRTY: 1 << 0,
  // Kernels up to ~6.18 only; 6.19 selects huge pages with iommu_hwpt_selftest.pagetable_type.
  MOCK_FLAGS_DEVICE_HUGE_IOVA: 1 << 1,
  MOCK_FLAGS_DEVICE_PASID: 1 << 2,
  MOCK_NESTED_DOMAIN_IOTLB_ID_MAX: 3,
  MOCK_NESTED_DOMAIN_IOTLB_NUM: 4,
  MOCK_DEV_CACHE_ID_MAX: 3,
  MOCK_DEV_CACHE_NUM: 4,
  IOMMU_TEST_PASID_RESERVED: 1024,
  MOCK_PASID_WIDTH: 20,
  IOMMU_HW_INFO_TYPE_SELFTEST: 0xfeedbeef,
  IOMMU_HW_INFO_SELFTEST_REGVAL: 0xdeadbeef,
  IOMMU_HWPT_DATA_SELFTEST: 0xdead,
  IOMMU_TEST_IOTLB_DEFAULT: 0xbadbeef,
  IOMMU_TEST_DEV_CACHE_DEFAULT: 0xbaddad,
  IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: 0xdeadbeef,
  IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID: 0xdadbeef,
  IOMMU_TEST_INVALIDATE_FLAG_ALL: 1 << 0,
  IOMMU_VIOMMU_TYPE_SELFTEST: 0xdeadbeef,
  IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: 0xdeadbeef,
  IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID: 0xdadbeef,
  IOMMU_VEVENTQ_TYPE_SELFTEST: 0xbeefbeef,
  IOMMU_HW_QUEUE_TYPE_SELFTEST: 0xdeadbeef,
  IOMMU_TEST_HW_QUEUE_MAX: 2,
} as const;

/** Values the uAPI uses as "all ones" limits (u64 as bigint). */
export const LIMITS = {
  U32_MAX: 0xffffffff,
  U64_MAX: 0xffff_ffff_ffff_ffffn,
  ULONG_MAX: 0xffff_ffff_ffff_ffffn,
  SIZE_MAX: 0xffff_ffff_ffff_ffffn,
} as const;
