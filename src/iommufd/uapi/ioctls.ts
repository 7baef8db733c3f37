// The ioctl table: every iommufd ioctl and the VFIO cdev ioctls, with their request numbers
// (computed with the Linux `_IO(type, nr)` encoding, research iommufd.md A.0 and A.22), the struct
// each one takes and the kernel's size rules. For iommufd the rules are the IOCTL_OP table of
// drivers/iommu/iommufd/main.c: `size` = sizeof(struct), `min_size` = offsetofend of the listed
// field. The VFIO container-compat ioctls that /dev/iommu forwards (A.23) are named here too so
// that scenario files can use their numbers; their handler lives with the compat layer.

import { _IO, IOMMUFD_CMD_BASE, IOMMUFD_TYPE, VFIO_BASE, VFIO_TYPE } from './ioc.ts';
import type { StructDef } from './layout.ts';
import * as S from './structs.ts';

export type IoctlFamily = 'iommufd' | 'vfio-device' | 'vfio-container';

export interface IoctlDef {
  readonly name: string;
  readonly family: IoctlFamily;
  /** _IOC_NR of the request number. */
  readonly nr: number;
  /** The full request number, as passed to ioctl(2). */
  readonly cmd: number;
  /** The argument struct; null for an integer argument (VFIO_CHECK_EXTENSION, ...). */
  readonly struct: StructDef | null;
}

const iommufd = (name: string, nr: number, struct: StructDef): IoctlDef => ({
  name,
  family: 'iommufd',
  nr,
  cmd: _IO(IOMMUFD_TYPE, nr),
  struct,
});

const vfio = (name: string, n: number, family: IoctlFamily, struct: StructDef | null): IoctlDef => ({
  name,
  family,
  nr: VFIO_BASE + n,
  cmd: _IO(VFIO_TYPE, VFIO_BASE + n),
  struct,
});

export const IOCTLS = {
  IOMMU_DESTROY: iommufd('IOMMU_DESTROY', 0x80, S.iommu_destroy),
  IOMMU_IOAS_ALLOC: iommufd('IOMMU_IOAS_ALLOC', 0x81, S.iommu_ioas_alloc),
  IOMMU_IOAS_ALLOW_IOVAS: iommufd('IOMMU_IOAS_ALLOW_IOVAS', 0x82, S.iommu_ioas_allow_iovas),
  IOMMU_IOAS_COPY: iommufd('IOMMU_IOAS_COPY', 0x83, S.iommu_ioas_copy),
  IOMMU_IOAS_IOVA_RANGES: iommufd('IOMMU_IOAS_IOVA_RANGES', 0x84, S.iommu_ioas_iova_ranges),
  IOMMU_IOAS_MAP: iommufd('IOMMU_IOAS_MAP', 0x85, S.iommu_ioas_map),
  IOMMU_IOAS_UNMAP: iommufd('IOMMU_IOAS_UNMAP', 0x86, S.iommu_ioas_unmap),
  IOMMU_OPTION: iommufd('IOMMU_OPTION', 0x87, S.iommu_option),
  IOMMU_VFIO_IOAS: iommufd('IOMMU_VFIO_IOAS', 0x88, S.iommu_vfio_ioas),
  IOMMU_HWPT_ALLOC: iommufd('IOMMU_HWPT_ALLOC', 0x89, S.iommu_hwpt_alloc),
  IOMMU_GET_HW_INFO: iommufd('IOMMU_GET_HW_INFO', 0x8a, S.iommu_hw_info),
  IOMMU_HWPT_SET_DIRTY_TRACKING: iommufd(
    'IOMMU_HWPT_SET_DIRTY_TRACKING',
    0x8b,
    S.iommu_hwpt_set_dirty_tracking,
  ),
  IOMMU_HWPT_GET_DIRTY_BITMAP: iommufd('IOMMU_HWPT_GET_DIRTY_BITMAP', 0x8c, S.iommu_hwpt_get_dirty_bitmap),
  IOMMU_HWPT_INVALIDATE: iommufd('IOMMU_HWPT_INVALIDATE', 0x8d, S.iommu_hwpt_invalidate),
  IOMMU_FAULT_QUEUE_ALLOC: iommufd('IOMMU_FAULT_QUEUE_ALLOC', 0x8e, S.iommu_fault_alloc),
  IOMMU_IOAS_MAP_FILE: iommufd('IOMMU_IOAS_MAP_FILE', 0x8f, S.iommu_ioas_map_file),
  IOMMU_VIOMMU_ALLOC: iommufd('IOMMU_VIOMMU_ALLOC', 0x90, S.iommu_viommu_alloc),
  IOMMU_VDEVICE_ALLOC: iommufd('IOMMU_VDEVICE_ALLOC', 0x91, S.iommu_vdevice_alloc),
  IOMMU_IOAS_CHANGE_PROCESS: iommufd('IOMMU_IOAS_CHANGE_PROCESS', 0x92, S.iommu_ioas_change_process),
  IOMMU_VEVENTQ_ALLOC: iommufd('IOMMU_VEVENTQ_ALLOC', 0x93, S.iommu_veventq_alloc),
  IOMMU_HW_QUEUE_ALLOC: iommufd('IOMMU_HW_QUEUE_ALLOC', 0x94, S.iommu_hw_queue_alloc),
  // CONFIG_IOMMUFD_TEST only: _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)
  IOMMU_TEST_CMD: iommufd('IOMMU_TEST_CMD', IOMMUFD_CMD_BASE + 32, S.iommu_test_cmd),

  VFIO_DEVICE_BIND_IOMMUFD: vfio('VFIO_DEVICE_BIND_IOMMUFD', 18, 'vfio-device', S.vfio_device_bind_iommufd),
  VFIO_DEVICE_ATTACH_IOMMUFD_PT: vfio(
    'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
    19,
    'vfio-device',
    S.vfio_device_attach_iommufd_pt,
  ),
  VFIO_DEVICE_DETACH_IOMMUFD_PT: vfio(
    'VFIO_DEVICE_DETACH_IOMMUFD_PT',
    20,
    'vfio-device',
    S.vfio_device_detach_iommufd_pt,
  ),

  VFIO_GET_API_VERSION: vfio('VFIO_GET_API_VERSION', 0, 'vfio-container', null),
  VFIO_CHECK_EXTENSION: vfio('VFIO_CHECK_EXTENSION', 1, 'vfio-container', null),
  VFIO_SET_IOMMU: vfio('VFIO_SET_IOMMU', 2, 'vfio-container', null),
  VFIO_IOMMU_GET_INFO: vfio('VFIO_IOMMU_GET_INFO', 12, 'vfio-container', S.vfio_iommu_type1_info),
  VFIO_IOMMU_MAP_DMA: vfio('VFIO_IOMMU_MAP_DMA', 13, 'vfio-container', S.vfio_iommu_type1_dma_map),
  VFIO_IOMMU_UNMAP_DMA: vfio('VFIO_IOMMU_UNMAP_DMA', 14, 'vfio-container', S.vfio_iommu_type1_dma_unmap),
  VFIO_IOMMU_DIRTY_PAGES: vfio('VFIO_IOMMU_DIRTY_PAGES', 17, 'vfio-container', null),
} as const satisfies Record<string, IoctlDef>;

export type IoctlName = keyof typeof IOCTLS;

const BY_CMD = new Map<number, IoctlDef>(Object.values(IOCTLS).map((d) => [d.cmd, d]));

export function ioctlByName(name: string): IoctlDef | undefined {
  return Object.hasOwn(IOCTLS, name) ? IOCTLS[name as IoctlName] : undefined;
}

export function ioctlByCmd(cmd: number): IoctlDef | undefined {
  return BY_CMD.get(cmd >>> 0);
}

/** The request number of every ioctl, by name. */
export const IOCTL_NUMBERS: Readonly<Record<IoctlName, number>> = Object.fromEntries(
  Object.entries(IOCTLS).map(([k, d]) => [k, d.cmd]),
) as Record<IoctlName, number>;

/**
 * The iommufd dispatch table as main.c builds it: indexed by `nr - IOMMUFD_CMD_BASE`, holes
 * where no ioctl exists. Its length decides which numbers go to the VFIO compat handler
 * instead, so it depends on CONFIG_IOMMUFD_TEST (the test command sits at index 32).
 */
export function iommufdOpTable(testCmd: boolean): readonly (IoctlDef | undefined)[] {
  const ops = Object.values(IOCTLS).filter(
    (d) => d.family === 'iommufd' && (testCmd || d.name !== 'IOMMU_TEST_CMD'),
  ) as IoctlDef[];
  const len = Math.max(...ops.map((d) => d.nr)) - IOMMUFD_CMD_BASE + 1;
  const table = new Array<IoctlDef | undefined>(len).fill(undefined);
  for (const d of ops) table[d.nr - IOMMUFD_CMD_BASE] = d;
  return table;
}
