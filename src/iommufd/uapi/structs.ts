// One table per uAPI struct of iommufd (include/uapi/linux/iommufd.h), the VFIO cdev ioctls
// (include/uapi/linux/vfio.h) and the selftest command (drivers/iommu/iommufd/iommufd_test.h),
// with the driver-specific data structs that travel behind a `data_uptr`. Offsets, sizes and
// minimum sizes are those of research iommufd.md A.1–A.24, re-checked against the kernel headers
// (upstream ~v6.17–6.19); defineStruct also checks every table against the C layout rules.
// `masks` are the flag bits the kernel accepts in that field (research A.2–A.22).

import { defineStruct, type StructDef } from './layout.ts';

const u32 = <const N extends string>(name: N, offset: number) => ({ name, offset, type: 'u32' }) as const;
const s32 = <const N extends string>(name: N, offset: number) => ({ name, offset, type: 's32' }) as const;
const u16 = <const N extends string>(name: N, offset: number) => ({ name, offset, type: 'u16' }) as const;
const u8 = <const N extends string>(name: N, offset: number) => ({ name, offset, type: 'u8' }) as const;
const u64 = <const N extends string>(name: N, offset: number) => ({ name, offset, type: 'u64' }) as const;

// ---- include/uapi/linux/iommufd.h -------------------------------------------------------------

export const iommu_destroy = defineStruct('iommu_destroy', 8, 'id', [u32('size', 0), u32('id', 4)]);

export const iommu_ioas_alloc = defineStruct(
  'iommu_ioas_alloc',
  12,
  'out_ioas_id',
  [u32('size', 0), u32('flags', 4), u32('out_ioas_id', 8)],
  { masks: { flags: 0 } },
);

export const iommu_iova_range = defineStruct('iommu_iova_range', 16, 'last', [
  u64('start', 0),
  u64('last', 8),
]);

export const iommu_ioas_iova_ranges = defineStruct('iommu_ioas_iova_ranges', 32, 'out_iova_alignment', [
  u32('size', 0),
  u32('ioas_id', 4),
  u32('num_iovas', 8),
  u32('__reserved', 12),
  u64('allowed_iovas', 16),
  u64('out_iova_alignment', 24),
]);

export const iommu_ioas_allow_iovas = defineStruct('iommu_ioas_allow_iovas', 24, 'allowed_iovas', [
  u32('size', 0),
  u32('ioas_id', 4),
  u32('num_iovas', 8),
  u32('__reserved', 12),
  u64('allowed_iovas', 16),
]);

const MAP_FLAGS = 0b111; // FIXED_IOVA | WRITEABLE | READABLE

export const iommu_ioas_map = defineStruct(
  'iommu_ioas_map',
  40,
  'iova',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('ioas_id', 8),
    u32('__reserved', 12),
    u64('user_va', 16),
    u64('length', 24),
    u64('iova', 32),
  ],
  { masks: { flags: MAP_FLAGS } },
);

export const iommu_ioas_map_file = defineStruct(
  'iommu_ioas_map_file',
  40,
  'iova',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('ioas_id', 8),
    s32('fd', 12),
    u64('start', 16),
    u64('length', 24),
    u64('iova', 32),
  ],
  { masks: { flags: MAP_FLAGS } },
);

export const iommu_ioas_copy = defineStruct(
  'iommu_ioas_copy',
  40,
  'src_iova',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('dst_ioas_id', 8),
    u32('src_ioas_id', 12),
    u64('length', 16),
    u64('dst_iova', 24),
    u64('src_iova', 32),
  ],
  { masks: { flags: MAP_FLAGS } },
);

export const iommu_ioas_unmap = defineStruct('iommu_ioas_unmap', 24, 'length', [
  u32('size', 0),
  u32('ioas_id', 4),
  u64('iova', 8),
  u64('length', 16),
]);

export const iommu_option = defineStruct('iommu_option', 24, 'val64', [
  u32('size', 0),
  u32('option_id', 4),
  u16('op', 8),
  u16('__reserved', 10),
  u32('object_id', 12),
  u64('val64', 16),
]);

export const iommu_vfio_ioas = defineStruct('iommu_vfio_ioas', 12, '__reserved', [
  u32('size', 0),
  u32('ioas_id', 4),
  u16('op', 8),
  u16('__reserved', 10),
]);

export const iommu_hwpt_alloc = defineStruct(
  'iommu_hwpt_alloc',
  48,
  '__reserved',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('dev_id', 8),
    u32('pt_id', 12),
    u32('out_hwpt_id', 16),
    u32('__reserved', 20),
    u32('data_type', 24),
    u32('data_len', 28),
    u64('data_uptr', 32),
    u32('fault_id', 40),
    u32('__reserved2', 44),
  ],
  { masks: { flags: 0b1111 } },
);

export const iommu_hwpt_vtd_s1 = defineStruct(
  'iommu_hwpt_vtd_s1',
  24,
  '__reserved',
  [u64('flags', 0), u64('pgtbl_addr', 8), u32('addr_width', 16), u32('__reserved', 20)],
  { masks: { flags: 0b111 } },
);

export const iommu_hwpt_arm_smmuv3 = defineStruct('iommu_hwpt_arm_smmuv3', 16, 'ste', [
  { name: 'ste', offset: 0, type: 'u64', count: 2 },
]);

export const iommu_hw_info_vtd = defineStruct(
  'iommu_hw_info_vtd',
  24,
  'ecap_reg',
  [u32('flags', 0), u32('__reserved', 4), u64('cap_reg', 8), u64('ecap_reg', 16)],
  { masks: { flags: 0b1 } },
);

export const iommu_hw_info_arm_smmuv3 = defineStruct('iommu_hw_info_arm_smmuv3', 40, 'aidr', [
  u32('flags', 0),
  u32('__reserved', 4),
  { name: 'idr', offset: 8, type: 'u32', count: 6 },
  u32('iidr', 32),
  u32('aidr', 36),
]);

export const iommu_hw_info_tegra241_cmdqv = defineStruct('iommu_hw_info_tegra241_cmdqv', 8, '__reserved', [
  u32('flags', 0),
  u8('version', 4),
  u8('log2vcmdqs', 5),
  u8('log2vsids', 6),
  u8('__reserved', 7),
]);

export const iommu_hw_info = defineStruct(
  'iommu_hw_info',
  40,
  '__reserved',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('dev_id', 8),
    u32('data_len', 12),
    u64('data_uptr', 16),
    {
      name: 'union',
      offset: 24,
      type: 'union',
      size: 4,
      members: [u32('in_data_type', 0), u32('out_data_type', 0)],
    },
    u8('out_max_pasid_log2', 28),
    { name: '__reserved', offset: 29, type: 'u8', count: 3 },
    u64('out_capabilities', 32),
  ],
  { masks: { flags: 0b1 } },
);

export const iommu_hwpt_set_dirty_tracking = defineStruct(
  'iommu_hwpt_set_dirty_tracking',
  16,
  '__reserved',
  [u32('size', 0), u32('flags', 4), u32('hwpt_id', 8), u32('__reserved', 12)],
  { masks: { flags: 0b1 } },
);

export const iommu_hwpt_get_dirty_bitmap = defineStruct(
  'iommu_hwpt_get_dirty_bitmap',
  48,
  'data',
  [
    u32('size', 0),
    u32('hwpt_id', 4),
    u32('flags', 8),
    u32('__reserved', 12),
    u64('iova', 16),
    u64('length', 24),
    u64('page_size', 32),
    u64('data', 40),
  ],
  { masks: { flags: 0b1 } },
);

export const iommu_hwpt_invalidate = defineStruct('iommu_hwpt_invalidate', 32, '__reserved', [
  u32('size', 0),
  u32('hwpt_id', 4),
  u64('data_uptr', 8),
  u32('data_type', 16),
  u32('entry_len', 20),
  u32('entry_num', 24),
  u32('__reserved', 28),
]);

export const iommu_hwpt_vtd_s1_invalidate = defineStruct(
  'iommu_hwpt_vtd_s1_invalidate',
  24,
  '__reserved',
  [u64('addr', 0), u64('npages', 8), u32('flags', 16), u32('__reserved', 20)],
  { masks: { flags: 0b1 } },
);

export const iommu_viommu_arm_smmuv3_invalidate = defineStruct(
  'iommu_viommu_arm_smmuv3_invalidate',
  16,
  'cmd',
  [{ name: 'cmd', offset: 0, type: 'u64', count: 2 }],
);

export const iommu_hwpt_pgfault = defineStruct(
  'iommu_hwpt_pgfault',
  40,
  'cookie',
  [
    u32('flags', 0),
    u32('dev_id', 4),
    u32('pasid', 8),
    u32('grpid', 12),
    u32('perm', 16),
    u32('__reserved', 20),
    u64('addr', 24),
    u32('length', 32),
    u32('cookie', 36),
  ],
  { masks: { flags: 0b11, perm: 0b1111 } },
);

export const iommu_hwpt_page_response = defineStruct('iommu_hwpt_page_response', 8, 'code', [
  u32('cookie', 0),
  u32('code', 4),
]);

export const iommu_fault_alloc = defineStruct(
  'iommu_fault_alloc',
  16,
  'out_fault_fd',
  [u32('size', 0), u32('flags', 4), u32('out_fault_id', 8), u32('out_fault_fd', 12)],
  { masks: { flags: 0 } },
);

export const iommu_viommu_tegra241_cmdqv = defineStruct(
  'iommu_viommu_tegra241_cmdqv',
  16,
  'out_vintf_mmap_length',
  [u64('out_vintf_mmap_offset', 0), u64('out_vintf_mmap_length', 8)],
);

export const iommu_viommu_alloc = defineStruct(
  'iommu_viommu_alloc',
  40,
  'out_viommu_id',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('type', 8),
    u32('dev_id', 12),
    u32('hwpt_id', 16),
    u32('out_viommu_id', 20),
    u32('data_len', 24),
    u32('__reserved', 28),
    u64('data_uptr', 32),
  ],
  { masks: { flags: 0 } },
);

export const iommu_vdevice_alloc = defineStruct('iommu_vdevice_alloc', 24, 'virt_id', [
  u32('size', 0),
  u32('viommu_id', 4),
  u32('dev_id', 8),
  u32('out_vdevice_id', 12),
  u64('virt_id', 16),
]);

export const iommu_ioas_change_process = defineStruct('iommu_ioas_change_process', 8, '__reserved', [
  u32('size', 0),
  u32('__reserved', 4),
]);

export const iommufd_vevent_header = defineStruct(
  'iommufd_vevent_header',
  8,
  'sequence',
  [u32('flags', 0), u32('sequence', 4)],
  { masks: { flags: 0b1 } },
);

export const iommu_vevent_arm_smmuv3 = defineStruct('iommu_vevent_arm_smmuv3', 32, 'evt', [
  { name: 'evt', offset: 0, type: 'u64', count: 4 },
]);

export const iommu_vevent_tegra241_cmdqv = defineStruct('iommu_vevent_tegra241_cmdqv', 16, 'lvcmdq_err_map', [
  { name: 'lvcmdq_err_map', offset: 0, type: 'u64', count: 2 },
]);

export const iommu_veventq_alloc = defineStruct(
  'iommu_veventq_alloc',
  32,
  'out_veventq_fd',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('viommu_id', 8),
    u32('type', 12),
    u32('veventq_depth', 16),
    u32('out_veventq_id', 20),
    u32('out_veventq_fd', 24),
    u32('__reserved', 28),
  ],
  { masks: { flags: 0 } },
);

export const iommu_hw_queue_alloc = defineStruct(
  'iommu_hw_queue_alloc',
  40,
  'length',
  [
    u32('size', 0),
    u32('flags', 4),
    u32('viommu_id', 8),
    u32('type', 12),
    u32('index', 16),
    u32('out_hw_queue_id', 20),
    u64('nesting_parent_iova', 24),
    u64('length', 32),
  ],
  { masks: { flags: 0 } },
);

// ---- include/uapi/linux/vfio.h (cdev path, research A.22) -----------------------------------

export const vfio_device_bind_iommufd = defineStruct(
  'vfio_device_bind_iommufd',
  24,
  'out_devid',
  [u32('argsz', 0), u32('flags', 4), s32('iommufd', 8), u32('out_devid', 12), u64('token_uuid_ptr', 16)],
  { masks: { flags: 0b1 } },
);

export const vfio_device_attach_iommufd_pt = defineStruct(
  'vfio_device_attach_iommufd_pt',
  16,
  'pt_id',
  [u32('argsz', 0), u32('flags', 4), u32('pt_id', 8), u32('pasid', 12)],
  { masks: { flags: 0b1 } },
);

export const vfio_device_detach_iommufd_pt = defineStruct(
  'vfio_device_detach_iommufd_pt',
  12,
  'flags',
  [u32('argsz', 0), u32('flags', 4), u32('pasid', 8)],
  { masks: { flags: 0b1 } },
);

// ---- include/uapi/linux/vfio.h, the container ioctls /dev/iommu emulates (research A.23) -------
// min_size here is the `minsz` the compat code checks argsz against (vfio_compat.c).

export const vfio_iommu_type1_info = defineStruct(
  'vfio_iommu_type1_info',
  24,
  'iova_pgsizes',
  [u32('argsz', 0), u32('flags', 4), u64('iova_pgsizes', 8), u32('cap_offset', 16), u32('pad', 20)],
  { masks: { flags: 0b111 } },
);

export const vfio_iommu_type1_dma_map = defineStruct(
  'vfio_iommu_type1_dma_map',
  32,
  'size',
  [u32('argsz', 0), u32('flags', 4), u64('vaddr', 8), u64('iova', 16), u64('size', 24)],
  { masks: { flags: 0b11 } },
);

export const vfio_iommu_type1_dma_unmap = defineStruct(
  'vfio_iommu_type1_dma_unmap',
  24,
  'size',
  [u32('argsz', 0), u32('flags', 4), u64('iova', 8), u64('size', 16)],
  { masks: { flags: 0b10 } },
);

export const vfio_info_cap_header = defineStruct('vfio_info_cap_header', 8, 'next', [
  u16('id', 0),
  u16('version', 2),
  u32('next', 4),
]);

export const vfio_iova_range = defineStruct('vfio_iova_range', 16, 'end', [u64('start', 0), u64('end', 8)]);

/** Followed by nr_iovas struct vfio_iova_range (a flexible array, not part of sizeof). */
export const vfio_iommu_type1_info_cap_iova_range = defineStruct(
  'vfio_iommu_type1_info_cap_iova_range',
  16,
  'reserved',
  [
    { name: 'header', offset: 0, type: 'struct', struct: vfio_info_cap_header },
    u32('nr_iovas', 8),
    u32('reserved', 12),
  ],
);

export const vfio_iommu_type1_info_dma_avail = defineStruct('vfio_iommu_type1_info_dma_avail', 12, 'avail', [
  { name: 'header', offset: 0, type: 'struct', struct: vfio_info_cap_header },
  u32('avail', 8),
]);

// ---- drivers/iommu/iommufd/iommufd_test.h (research A.24) -----------------------------------

const member = <const N extends string, const S extends StructDef>(name: N, struct: S) =>
  ({ name, offset: 0, type: 'struct', struct }) as const;

export const TEST_CMD_UNION = {
  add_reserved: defineStruct('add_reserved', 16, 'length', [u64('start', 0), u64('length', 8)]),
  mock_domain: defineStruct('mock_domain', 12, 'out_idev_id', [
    u32('out_stdev_id', 0),
    u32('out_hwpt_id', 4),
    u32('out_idev_id', 8),
  ]),
  mock_domain_flags: defineStruct('mock_domain_flags', 16, 'dev_flags', [
    u32('out_stdev_id', 0),
    u32('out_hwpt_id', 4),
    u32('out_idev_id', 8),
    u32('dev_flags', 12),
  ]),
  mock_domain_replace: defineStruct('mock_domain_replace', 4, 'pt_id', [u32('pt_id', 0)]),
  check_map: defineStruct('check_map', 24, 'uptr', [u64('iova', 0), u64('length', 8), u64('uptr', 16)]),
  check_refs: defineStruct('check_refs', 24, 'refs', [u64('length', 0), u64('uptr', 8), u32('refs', 16)]),
  create_access: defineStruct('create_access', 8, 'flags', [u32('out_access_fd', 0), u32('flags', 4)]),
  destroy_access_pages: defineStruct('destroy_access_pages', 4, 'access_pages_id', [
    u32('access_pages_id', 0),
  ]),
  access_pages: defineStruct('access_pages', 32, 'uptr', [
    u32('flags', 0),
    u32('out_access_pages_id', 4),
    u64('iova', 8),
    u64('length', 16),
    u64('uptr', 24),
  ]),
  access_rw: defineStruct('access_rw', 32, 'flags', [
    u64('iova', 0),
    u64('length', 8),
    u64('uptr', 16),
    u32('flags', 24),
  ]),
  memory_limit: defineStruct('memory_limit', 4, 'limit', [u32('limit', 0)]),
  access_replace_ioas: defineStruct('access_replace_ioas', 4, 'ioas_id', [u32('ioas_id', 0)]),
  dirty: defineStruct('dirty', 48, 'out_nr_dirty', [
    u32('flags', 0),
    u64('iova', 8),
    u64('length', 16),
    u64('page_size', 24),
    u64('uptr', 32),
    u64('out_nr_dirty', 40),
  ]),
  check_iotlb: defineStruct('check_iotlb', 8, 'iotlb', [u32('id', 0), u32('iotlb', 4)]),
  trigger_iopf: defineStruct('trigger_iopf', 24, 'addr', [
    u32('dev_id', 0),
    u32('pasid', 4),
    u32('grpid', 8),
    u32('perm', 12),
    u64('addr', 16),
  ]),
  check_dev_cache: defineStruct('check_dev_cache', 8, 'cache', [u32('id', 0), u32('cache', 4)]),
  trigger_vevent: defineStruct('trigger_vevent', 4, 'dev_id', [u32('dev_id', 0)]),
  pasid_attach: defineStruct('pasid_attach', 8, 'pt_id', [u32('pasid', 0), u32('pt_id', 4)]),
  pasid_replace: defineStruct('pasid_replace', 8, 'pt_id', [u32('pasid', 0), u32('pt_id', 4)]),
  pasid_detach: defineStruct('pasid_detach', 4, 'pasid', [u32('pasid', 0)]),
  pasid_check: defineStruct('pasid_check', 8, 'hwpt_id', [u32('pasid', 0), u32('hwpt_id', 4)]),
  dmabuf_get: defineStruct('dmabuf_get', 8, 'open_flags', [u32('length', 0), u32('open_flags', 4)]),
  dmabuf_revoke: defineStruct('dmabuf_revoke', 8, 'revoked', [s32('dmabuf_fd', 0), u32('revoked', 4)]),
} as const;

/** IOMMU_TEST_OP_* value → the union member that op reads (iommufd_test() in selftest.c). */
export const TEST_OP_MEMBER: Readonly<Record<number, keyof typeof TEST_CMD_UNION>> = {
  1: 'add_reserved',
  2: 'mock_domain',
  3: 'check_map',
  4: 'check_refs',
  5: 'create_access',
  6: 'destroy_access_pages',
  7: 'access_pages',
  8: 'access_rw',
  9: 'memory_limit',
  10: 'mock_domain_replace',
  11: 'access_replace_ioas',
  12: 'mock_domain_flags',
  13: 'dirty',
  14: 'check_iotlb',
  15: 'trigger_iopf',
  16: 'check_dev_cache',
  17: 'trigger_vevent',
  18: 'pasid_attach',
  19: 'pasid_replace',
  20: 'pasid_detach',
  21: 'pasid_check',
  22: 'dmabuf_get',
  23: 'dmabuf_revoke',
};

const U = TEST_CMD_UNION;

export const iommu_test_cmd = defineStruct('iommu_test_cmd', 72, 'last', [
  u32('size', 0),
  u32('op', 4),
  u32('id', 8),
  u32('__reserved', 12),
  {
    name: 'union',
    offset: 16,
    type: 'union',
    size: 48,
    select: { by: 'op', map: TEST_OP_MEMBER },
    members: [
      member('add_reserved', U.add_reserved),
      member('mock_domain', U.mock_domain),
      member('mock_domain_flags', U.mock_domain_flags),
      member('mock_domain_replace', U.mock_domain_replace),
      member('check_map', U.check_map),
      member('check_refs', U.check_refs),
      member('create_access', U.create_access),
      member('destroy_access_pages', U.destroy_access_pages),
      member('access_pages', U.access_pages),
      member('access_rw', U.access_rw),
      member('memory_limit', U.memory_limit),
      member('access_replace_ioas', U.access_replace_ioas),
      member('dirty', U.dirty),
      member('check_iotlb', U.check_iotlb),
      member('trigger_iopf', U.trigger_iopf),
      member('check_dev_cache', U.check_dev_cache),
      member('trigger_vevent', U.trigger_vevent),
      member('pasid_attach', U.pasid_attach),
      member('pasid_replace', U.pasid_replace),
      member('pasid_detach', U.pasid_detach),
      member('pasid_check', U.pasid_check),
      member('dmabuf_get', U.dmabuf_get),
      member('dmabuf_revoke', U.dmabuf_revoke),
    ],
  },
  u32('last', 64),
]);

export const iommu_test_hw_info = defineStruct('iommu_test_hw_info', 8, 'test_reg', [
  u32('flags', 0),
  u32('test_reg', 4),
]);

export const iommu_hwpt_selftest = defineStruct('iommu_hwpt_selftest', 8, 'iotlb', [
  u32('iotlb', 0),
  u32('pagetable_type', 4),
]);

export const iommu_hwpt_invalidate_selftest = defineStruct(
  'iommu_hwpt_invalidate_selftest',
  8,
  'iotlb_id',
  [u32('flags', 0), u32('iotlb_id', 4)],
  { masks: { flags: 0b1 } },
);

export const iommu_viommu_selftest = defineStruct('iommu_viommu_selftest', 24, 'out_data', [
  u32('in_data', 0),
  u32('out_data', 4),
  u64('out_mmap_offset', 8),
  u64('out_mmap_length', 16),
]);

export const iommu_viommu_invalidate_selftest = defineStruct(
  'iommu_viommu_invalidate_selftest',
  12,
  'cache_id',
  [u32('flags', 0), u32('vdev_id', 4), u32('cache_id', 8)],
  { masks: { flags: 0b1 } },
);

export const iommu_viommu_event_selftest = defineStruct('iommu_viommu_event_selftest', 4, 'virt_id', [
  u32('virt_id', 0),
]);

/** Every table by its C struct name (union members of iommu_test_cmd are not listed). */
export const STRUCTS = {
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_iova_range,
  iommu_ioas_iova_ranges,
  iommu_ioas_allow_iovas,
  iommu_ioas_map,
  iommu_ioas_map_file,
  iommu_ioas_copy,
  iommu_ioas_unmap,
  iommu_option,
  iommu_vfio_ioas,
  iommu_hwpt_alloc,
  iommu_hwpt_vtd_s1,
  iommu_hwpt_arm_smmuv3,
  iommu_hw_info_vtd,
  iommu_hw_info_arm_smmuv3,
  iommu_hw_info_tegra241_cmdqv,
  iommu_hw_info,
  iommu_hwpt_set_dirty_tracking,
  iommu_hwpt_get_dirty_bitmap,
  iommu_hwpt_invalidate,
  iommu_hwpt_vtd_s1_invalidate,
  iommu_viommu_arm_smmuv3_invalidate,
  iommu_hwpt_pgfault,
  iommu_hwpt_page_response,
  iommu_fault_alloc,
  iommu_viommu_tegra241_cmdqv,
  iommu_viommu_alloc,
  iommu_vdevice_alloc,
  iommu_ioas_change_process,
  iommufd_vevent_header,
  iommu_vevent_arm_smmuv3,
  iommu_vevent_tegra241_cmdqv,
  iommu_veventq_alloc,
  iommu_hw_queue_alloc,
  vfio_device_bind_iommufd,
  vfio_device_attach_iommufd_pt,
  vfio_device_detach_iommufd_pt,
  vfio_iommu_type1_info,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_info_cap_header,
  vfio_iova_range,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iommu_type1_info_dma_avail,
  iommu_test_cmd,
  iommu_test_hw_info,
  iommu_hwpt_selftest,
  iommu_hwpt_invalidate_selftest,
  iommu_viommu_selftest,
  iommu_viommu_invalidate_selftest,
  iommu_viommu_event_selftest,
} as const;

export type StructName = keyof typeof STRUCTS;
