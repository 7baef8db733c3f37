// The emulated host's configuration: what a scenario's `machine:` block (SCENARIO.md) or a
// server's machine file describes, already validated and normalised. The defaults and the VT-d
// options are fixed by ../shared/spec/PROFILE.md ("VT-d model").

export interface VtdConfig {
  model: 'vtd';
  /** PASID width: ECAP.PSS = pasid_bits - 1, and the VCMD allocator's range [1, 2^bits - 1]. Default 20. */
  pasid_bits: number;
  /** CAP.CM. Default false. */
  caching_mode: boolean;
  /** First-level paging levels, 4 or 5. Default 4. */
  fl_levels: 4 | 5;
  /** VCMD register layout. Default "3.3". */
  vcmd_layout: '3.3' | '3.2';
  /** Number of fault recording registers. Default 1. */
  fault_records: number;
  /** IOTLB entries; 0 disables the IOTLB. Default 1024. */
  iotlb_entries: number;
  /** QEMU's legacy fault-reason habits. Default false. */
  qemu_compat: boolean;
  /** Raw register overrides, applied last. */
  cap?: bigint;
  ecap?: bigint;
  vccap?: bigint;
}

export type IommuConfig = VtdConfig;

export interface DeviceConfig {
  /** bus:device.function, normalised to lower-case "bb:dd.f". */
  bdf: string;
  /** Index into `iommus`. Default 0. */
  iommu: number;
  /** PASID capability width; 0 = no PASID capability. Default 20. */
  pasid_bits: number;
  /** Device-TLB (ATS). Default false. */
  ats: boolean;
}

export interface MachineConfig {
  iommus: IommuConfig[];
  /** Bytes of physical memory. Default 1 GiB. */
  memory: bigint;
  devices: DeviceConfig[];
}

export const DEFAULT_VTD: VtdConfig = {
  model: 'vtd',
  pasid_bits: 20,
  caching_mode: false,
  fl_levels: 4,
  vcmd_layout: '3.3',
  fault_records: 1,
  iotlb_entries: 1024,
  qemu_compat: false,
};

export function defaultMachineConfig(): MachineConfig {
  return { iommus: [{ ...DEFAULT_VTD }], memory: 1n << 30n, devices: [] };
}

/** Source-id of a bdf string: bus << 8 | dev << 3 | fn. */
export function bdfToSid(bdf: string): number {
  const m = /^([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$/i.exec(bdf);
  if (!m) throw new RangeError(`not a bus:device.function: ${bdf}`);
  const bus = Number.parseInt(m[1]!, 16);
  const dev = Number.parseInt(m[2]!, 16);
  const fn = Number.parseInt(m[3]!, 16);
  if (dev > 31) throw new RangeError(`device number above 31 in ${bdf}`);
  return (bus << 8) | (dev << 3) | fn;
}

export function normaliseBdf(bdf: string): string {
  const sid = bdfToSid(bdf);
  const h = (n: number) => n.toString(16).padStart(2, '0');
  return `${h(sid >> 8)}:${h((sid >> 3) & 31)}.${sid & 7}`;
}
