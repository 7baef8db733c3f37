// Scenario families 2 and 3 (SCENARIO.md): physical memory and VT-d registers at the hardware
// level (`mem_read`, `mem_write`, `mmio_read`, `mmio_write`), and device DMA through the
// IOMMU's translate path (`dma`). Nothing is checked for the caller here: a register write does
// what the hardware does with it, and a DMA gives the hardware's outcome (an address, a fault,
// an interrupt request).

import { KernelError, kerr } from '../core/errno.ts';
import type { DmaAccess } from '../hw/pci.ts';
import { registerOffset } from '../hw/platform.ts';
import type { OpDef, OpResult, ParamDef } from './registry.ts';
import { registerOps } from './registry.ts';
import { normInt, StepError } from './values.ts';

const u64: ParamDef = { kind: { type: 'u64' } };
const size1248: ParamDef = { kind: { type: 'u8' }, optional: true };
const size48: ParamDef = { kind: { type: 'u8' }, optional: true };

/** A literal size must be one of `allowed` (a $reference is checked when the step runs). */
function checkSize(v: unknown, allowed: readonly number[]): string | undefined {
  if (v === undefined || (typeof v === 'string' && v.startsWith('$'))) return undefined;
  return allowed.includes(Number(v)) ? undefined : `size: one of ${allowed.join(', ')}`;
}

function sizeArg(v: unknown, allowed: readonly number[]): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!allowed.includes(n)) throw new StepError(`size: one of ${allowed.join(', ')}, not ${String(v)}`);
  return n;
}

/** Hex byte string: two digits a byte, white space ignored, no 0x. */
export function parseHexBytes(s: string): Uint8Array | undefined {
  const h = s.replace(/\s+/g, '');
  if (h.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(h)) return undefined;
  return Uint8Array.from(Buffer.from(h, 'hex'));
}

export function toHex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

function checkHex(name: string, v: unknown): string | undefined {
  if (v === undefined || (typeof v === 'string' && v.startsWith('$'))) return undefined;
  return typeof v === 'string' && parseHexBytes(v) !== undefined
    ? undefined
    : `${name}: hex bytes, two digits a byte (white space allowed, no 0x)`;
}

function bytesArg(name: string, v: unknown): Uint8Array {
  if (v instanceof Uint8Array) return v;
  const b = typeof v === 'string' ? parseHexBytes(v) : undefined;
  if (b === undefined) throw new StepError(`${name}: not a hex byte string`);
  return b;
}

/** Registers that are 64 bits wide (Linux's dmar register layout): mmio_* default to size 8 for them. */
const WIDE = new Set([
  'CAP_REG',
  'ECAP_REG',
  'RTADDR_REG',
  'CCMD_REG',
  'AFLOG_REG',
  'PHMBASE_REG',
  'PHMLIMIT_REG',
  'IQH_REG',
  'IQT_REG',
  'IQA_REG',
  'IQER_REG',
  'IQERCD_REG',
  'IRTA_REG',
  'PQH_REG',
  'PQT_REG',
  'PQA_REG',
  'MTRRCAP_REG',
  'MTRRDEF_REG',
  'VCCAP_REG',
  'VCMD_REG',
  'VCRSP_REG',
  'VCMD_EO_REG',
  'IVA_REG',
  'IOTLB_REG',
  'FRCD_REG',
]);

function defaultSize(reg: unknown): 4 | 8 {
  if (typeof reg !== 'string') return 4;
  const name = reg
    .trim()
    .toUpperCase()
    .replace(/^DMAR_/, '')
    .split(/\s*\+/)[0]!;
  return WIDE.has(name) ? 8 : 4;
}

function regParam(ctx: Parameters<OpDef['run']>[0], a: Record<string, unknown>) {
  const idx = (a['iommu'] as number | undefined) ?? 0;
  const iommu = ctx.machine.hw.iommu(idx);
  if (iommu === undefined) return kerr('ENODEV', `no iommus[${idx}] in this machine`);
  const reg = a['reg'];
  const off =
    typeof reg === 'number' || typeof reg === 'bigint'
      ? Number(reg)
      : typeof reg === 'string'
        ? registerOffset(iommu, reg)
        : kerr('EINVAL', 'reg: a register name or an offset');
  if (off instanceof KernelError) return off;
  const size = (a['size'] as number | undefined) ?? defaultSize(reg);
  return { iommu, off, size: size as 4 | 8 };
}

function checkReg(a: Record<string, unknown>): string | undefined {
  const r = a['reg'];
  if (typeof r === 'string' || typeof r === 'number' || typeof r === 'bigint') return undefined;
  return 'reg: a register name (IQT_REG, FRCD_REG+8, ...) or an offset';
}

/** A DMA result in SCENARIO.md's form: integers as numbers where exact, data as hex. */
function dmaResult(r: unknown): OpResult {
  if (r instanceof KernelError) return r;
  if (r instanceof Uint8Array) return toHex(r);
  if (typeof r === 'bigint') return normInt(r);
  if (Array.isArray(r)) return r.map(dmaResult);
  if (r !== null && typeof r === 'object') {
    const out: Record<string, OpResult> = {};
    for (const [k, v] of Object.entries(r)) if (v !== undefined) out[k] = dmaResult(v);
    return out;
  }
  return r as OpResult;
}

const ops: OpDef[] = [
  {
    name: 'mem_write',
    family: 2,
    params: {
      addr: u64,
      value: { kind: { type: 'u64' }, optional: true },
      size: size1248,
      bytes: { kind: { type: 'string' }, optional: true },
    },
    check: (a) => {
      const hasValue = a['value'] !== undefined;
      const hasBytes = a['bytes'] !== undefined;
      if (hasValue === hasBytes) return 'give value (with size) or bytes';
      if (hasValue && a['size'] === undefined) return 'value needs size: 1, 2, 4 or 8';
      return checkSize(a['size'], [1, 2, 4, 8]) ?? checkHex('bytes', a['bytes']);
    },
    run: (ctx, a) => {
      const mem = ctx.machine.hw.memory;
      const addr = a['addr'] as bigint;
      if (a['bytes'] !== undefined) return mem.writeBytes(addr, bytesArg('bytes', a['bytes']));
      const size = sizeArg(a['size'], [1, 2, 4, 8]) as 1 | 2 | 4 | 8;
      const value = a['value'] as bigint;
      if (value >= 1n << BigInt(size * 8))
        throw new StepError(`value 0x${value.toString(16)} does not fit ${size} bytes`);
      return mem.write(addr, value, size);
    },
  },
  {
    name: 'mem_read',
    family: 2,
    params: { addr: u64, size: { kind: { type: 'u8' } } },
    check: (a) => checkSize(a['size'], [1, 2, 4, 8]),
    run: (ctx, a) => {
      const size = sizeArg(a['size'], [1, 2, 4, 8]) as 1 | 2 | 4 | 8;
      const r = ctx.machine.hw.memory.read(a['addr'] as bigint, size);
      return r instanceof KernelError ? r : normInt(r);
    },
  },
  {
    name: 'mmio_write',
    family: 2,
    params: {
      iommu: { kind: { type: 'u8' }, optional: true },
      reg: { kind: { type: 'raw' } },
      value: u64,
      size: size48,
    },
    check: (a) => checkReg(a) ?? checkSize(a['size'], [4, 8]),
    run: (ctx, a) => {
      const p = regParam(ctx, { ...a, size: sizeArg(a['size'], [4, 8]) });
      if (p instanceof KernelError) return p;
      const value = a['value'] as bigint;
      if (p.size === 4 && value > 0xffffffffn) throw new StepError('value does not fit a 4-byte write');
      return p.iommu.mmioWrite(p.off, value, p.size);
    },
  },
  {
    name: 'mmio_read',
    family: 2,
    params: {
      iommu: { kind: { type: 'u8' }, optional: true },
      reg: { kind: { type: 'raw' } },
      size: size48,
    },
    check: (a) => checkReg(a) ?? checkSize(a['size'], [4, 8]),
    run: (ctx, a) => {
      const p = regParam(ctx, { ...a, size: sizeArg(a['size'], [4, 8]) });
      if (p instanceof KernelError) return p;
      const r = p.iommu.mmioRead(p.off, p.size);
      return r instanceof KernelError ? r : normInt(r);
    },
  },
  {
    name: 'dma',
    family: 3,
    params: {
      device: { kind: { type: 'bdf' } },
      pasid: { kind: { type: 'u32' }, optional: true },
      addr: u64,
      access: { kind: { type: 'enum', values: ['read', 'write', 'exec', 'atomic'] } },
      privileged: { kind: { type: 'bool' }, optional: true },
      data: { kind: { type: 'string' }, optional: true },
      length: { kind: { type: 'u32' }, optional: true },
    },
    check: (a) => {
      if (a['data'] !== undefined && a['length'] !== undefined)
        return 'give data (a write) or length (a read), not both';
      if (a['data'] !== undefined && a['access'] !== 'write') return 'data moves bytes on a write only';
      if (a['length'] !== undefined && a['access'] === 'write')
        return 'length reads bytes: use data for a write';
      return checkHex('data', a['data']);
    },
    run: (ctx, a) => {
      const dev = ctx.machine.device(a['device'] as string);
      if (dev === undefined) return kerr('ENODEV', `no device ${String(a['device'])}`);
      const req: Parameters<typeof dev.dma>[0] = {
        addr: a['addr'] as bigint,
        access: a['access'] as DmaAccess,
        privileged: (a['privileged'] as boolean | undefined) ?? false,
      };
      if (a['pasid'] !== undefined) req.pasid = a['pasid'] as number;
      if (a['data'] !== undefined) req.data = bytesArg('data', a['data']);
      if (a['length'] !== undefined) req.length = a['length'] as number;
      return dmaResult(dev.dma(req));
    },
  },
];

registerOps(ops);
