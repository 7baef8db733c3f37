// The pasidkit library: everything a program needs to drive an emulated host.

export { ERRNO, type ErrnoName, errnoName, isKernelError, KernelError } from './core/errno.ts';
export { FaultInjector } from './core/fault.ts';
export { InvariantError, setDebug } from './core/invariants.ts';
export { TraceBuffer, type TraceEvent, type Tracer } from './core/trace.ts';
export * from './ioasid/global-pasid.ts';
export * from './ioasid/ioasid.ts';
export * from './ioasid/notifier.ts';
export * from './ioasid/pasid.ts';
export type { DmarDomain, IntelIommuDriver } from './iommu/intel.ts';
export type { DmarFaultReport } from './iommu/intel-dmar.ts';
export { Machine, type MachineDevice, type MachineOptions } from './machine.ts';
export * from './machine-config.ts';
export { parseScenario, runScenario } from './scenario/index.ts';
