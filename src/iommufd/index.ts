// iommufd, the public face: an emulated host (IommufdHost) whose processes open /dev/iommu and
// VFIO device files and issue byte-exact ioctls through one engine (ioctl, ioctlValue,
// ioctlStruct), the IOMMU core and its driver interface (src/iommu), the selftest mock driver,
// and the ioas-map-unmap benchmark. Specs: shared/research/iommufd.md, shared/spec/WIRE.md,
// PROFILE.md (iommufd section); conformance: docs/CONFORMANCE.md.

export * from '../iommu/core.ts';
export { MockIommuDriver } from '../iommu/mock.ts';
export { benchIoasMapUnmap } from './bench.ts';
export {
  type IoctlResult,
  IommufdHost,
  type IommufdHostOptions,
  ioctl,
  ioctlStruct,
  ioctlValue,
  VfioDeviceFile,
} from './engine.ts';
export { IommufdCtx, IommufdFile, IommufdObject, OBJ } from './main.ts';
export {
  DEFAULT_MEMLOCK,
  KFile,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_HUGETLB,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  MemFile,
  PAGE_SIZE,
  PhysMem,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  Process,
  UserMm,
} from './process.ts';
