// The iommufd uAPI as data: struct tables and codecs, ioctl numbers, named constants, and the
// generic ioctl validation (research iommufd.md section A). Everything a layer that speaks
// bytes (the wire server, the scenario runner, the ioctl handlers) needs, with no model state.

import { IOMMUFD_CMD, IOMMUFD_ENUMS, IOMMUFD_TEST_ENUMS, LIMITS, VFIO_ENUMS } from './constants.ts';
import { IOCTL_NUMBERS } from './ioctls.ts';

export * from './constants.ts';
export * from './dispatch.ts';
export * from './ioc.ts';
export * from './ioctls.ts';
export * from './layout.ts';
export * from './pointers.ts';
export * from './structs.ts';

/**
 * Every name a scenario file may use for a uAPI value: enums, flags, selftest values, limits
 * and ioctl request numbers. Names are unique across the groups where their values differ;
 * `IOMMU_HW_INFO_TYPE_NONE` and `_DEFAULT` are both 0, as in the kernel.
 */
export const UAPI_CONSTANTS: Readonly<Record<string, number | bigint>> = {
  ...IOMMUFD_CMD,
  ...IOMMUFD_ENUMS,
  ...VFIO_ENUMS,
  ...IOMMUFD_TEST_ENUMS,
  ...LIMITS,
  ...IOCTL_NUMBERS,
};
