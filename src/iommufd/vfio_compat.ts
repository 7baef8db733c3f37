// The VFIO type1 container emulation on /dev/iommu: the model of
// drivers/iommu/iommufd/vfio_compat.c (research iommufd.md A.23). Request numbers outside the
// iommufd table land here; they act on the context's compat IOAS (IOMMU_VFIO_IOAS). TYPE1 (v1)
// turns large pages off on it so that unmaps may cut mappings; TYPE1v2 cannot split (ENOENT).
// Maps made here are always charged VFIO style (ACCOUNT_MM).

import { type KernelError, kerr } from '../core/errno.ts';
import { IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE } from '../iommu/core.ts';
import { ULONG_MAX } from './io-pagetable.ts';
import { Ioas, pinAccountFor } from './ioas.ts';
import { ACCOUNT_MM, ACCOUNT_NONE, type IommufdCtx } from './main.ts';
import { PagesSource } from './pages.ts';
import { PAGE_SIZE, type Process } from './process.ts';
import { copyFromUser, copyToUser, IOCTLS, unknownIoctl } from './uapi/index.ts';

const VFIO_TYPE1_IOMMU = 1;
const VFIO_TYPE1v2_IOMMU = 3;
const VFIO_DMA_CC_IOMMU = 4;
const VFIO_UNMAP_ALL = 9;
const DMA_MAP_READ = 1;
const DMA_MAP_WRITE = 2;
const UNMAP_FLAG_ALL = 2;
const INFO_PGSIZES = 1;
const INFO_CAPS = 2;

function compatIoas(ctx: IommufdCtx): Ioas | KernelError {
  const i = ctx.vfioIoas;
  if (!i || ctx.objects.get(i.id) !== i) return kerr('ENODEV', 'no VFIO compat IOAS');
  return i;
}

function u32(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(off, true);
}
function u64(b: Uint8Array, off: number): bigint {
  return new DataView(b.buffer, b.byteOffset).getBigUint64(off, true);
}
function le(n: number, v: number | bigint): Uint8Array {
  const b = new Uint8Array(n);
  const dv = new DataView(b.buffer);
  if (n === 4) dv.setUint32(0, Number(v), true);
  else if (n === 2) dv.setUint16(0, Number(v), true);
  else dv.setBigUint64(0, BigInt(v), true);
  return b;
}

export function vfioCompatIoctl(
  p: Process,
  ctx: IommufdCtx,
  cmd: number,
  arg: Uint8Array | null,
  raw = 0n,
): number | KernelError {
  const I = IOCTLS;
  switch (cmd) {
    case I.VFIO_GET_API_VERSION.cmd:
      return 0;
    case I.VFIO_CHECK_EXTENSION.cmd: {
      const t = Number(raw);
      if (t === VFIO_TYPE1_IOMMU || t === VFIO_TYPE1v2_IOMMU || t === VFIO_UNMAP_ALL) return 1;
      if (t === VFIO_DMA_CC_IOMMU) {
        const ioas = compatIoas(ctx);
        if (!(ioas instanceof Ioas)) return ioas;
        // No modelled IOMMU enforces cache coherency.
        return ioas.hwptList.length === 0 ? 1 : 0;
      }
      return 0;
    }
    case I.VFIO_SET_IOMMU.cmd: {
      const t = Number(raw);
      if (t !== VFIO_TYPE1_IOMMU && t !== VFIO_TYPE1v2_IOMMU)
        return kerr('EINVAL', `VFIO_SET_IOMMU type ${t}`);
      const ioas = compatIoas(ctx);
      if (!(ioas instanceof Ioas)) return ioas;
      if (t === VFIO_TYPE1_IOMMU) return ioas.iopt.disableLargePagesOption() ?? 0;
      return 0;
    }
    case I.VFIO_IOMMU_MAP_DMA.cmd: {
      const h = copyFromUser(arg, 0, 32, 'VFIO_IOMMU_MAP_DMA');
      if (!(h instanceof Uint8Array)) return h;
      const flags = u32(h, 4);
      if (u32(h, 0) < 32 || flags & ~(DMA_MAP_READ | DMA_MAP_WRITE))
        return kerr('EINVAL', 'VFIO_IOMMU_MAP_DMA: argsz or flags');
      const ioas = compatIoas(ctx);
      if (!(ioas instanceof Ioas)) return ioas;
      let prot = IOMMU_CACHE;
      if (flags & DMA_MAP_READ) prot |= IOMMU_READ;
      if (flags & DMA_MAP_WRITE) prot |= IOMMU_WRITE;
      const acct = pinAccountFor(ctx, p);
      if (acct.mode !== ACCOUNT_NONE) acct.mode = ACCOUNT_MM;
      const src = new PagesSource('user', p.host.phys, p.mm, null, acct);
      const r = ioas.iopt.mapUserPages(u64(h, 8), u64(h, 24), u64(h, 16), prot, 0, src);
      return 'area' in r ? 0 : r;
    }
    case I.VFIO_IOMMU_UNMAP_DMA.cmd: {
      const h = copyFromUser(arg, 0, 24, 'VFIO_IOMMU_UNMAP_DMA');
      if (!(h instanceof Uint8Array)) return h;
      const flags = u32(h, 4);
      if (u32(h, 0) < 24 || flags & ~UNMAP_FLAG_ALL)
        return kerr('EINVAL', 'VFIO_IOMMU_UNMAP_DMA: argsz or flags');
      const ioas = compatIoas(ctx);
      if (!(ioas instanceof Ioas)) return ioas;
      const iova = u64(h, 8);
      const size = u64(h, 16);
      let r: bigint | KernelError;
      if (flags & UNMAP_FLAG_ALL) {
        if (iova !== 0n || size !== 0n) return kerr('EINVAL', 'UNMAP_FLAG_ALL needs iova 0 and size 0');
        r = ioas.iopt.unmapAll();
      } else {
        if (size === 0n || iova + size - 1n > ULONG_MAX)
          return kerr('EINVAL', 'VFIO_IOMMU_UNMAP_DMA: bad range');
        if (ioas.iopt.disableLargePages) {
          const cuts = iova ? [iova + size - 1n, iova - 1n] : [iova + size - 1n];
          const e = ioas.iopt.cutIova(cuts);
          if (e) return e;
        }
        // Unmapping an empty range is a success of size 0 (newest kernels).
        const any = ioas.iopt.areasIn(iova, iova + size - 1n).next();
        r = any.done && ctx.host.version === 'newest' ? 0n : ioas.iopt.unmapIova(iova, size);
      }
      if (typeof r !== 'bigint') return r;
      return copyToUser(arg, 16, le(8, r)) ?? 0;
    }
    case I.VFIO_IOMMU_GET_INFO.cmd: {
      const h = copyFromUser(arg, 0, 16, 'VFIO_IOMMU_GET_INFO');
      if (!(h instanceof Uint8Array)) return h;
      const argsz = u32(h, 0);
      if (argsz < 16) return kerr('EINVAL', 'VFIO_IOMMU_GET_INFO: argsz');
      const minsz = Math.min(argsz, 24);
      const ioas = compatIoas(ctx);
      if (!(ioas instanceof Ioas)) return ioas;
      let pg = -1n & ULONG_MAX;
      for (const d of ioas.iopt.domains) pg &= d.pgsizeBitmap;
      const P = BigInt(PAGE_SIZE);
      if (pg & (P - 1n)) pg = (pg & ~(P - 1n)) | P;
      if (pg < ioas.iopt.iovaAlignment) pg = ioas.iopt.iovaAlignment;
      // The capability chain: IOVA_RANGE (the holes) then DMA_AVAIL, each 8-byte aligned.
      const ranges = ioas.iopt.iovaRanges();
      const caps: Uint8Array[] = [];
      const iovaCap = new Uint8Array(16 + 16 * ranges.length);
      const dv = new DataView(iovaCap.buffer);
      dv.setUint16(0, 1, true);
      dv.setUint16(2, 1, true);
      dv.setUint32(8, ranges.length, true);
      ranges.forEach((r, i) => {
        dv.setBigUint64(16 + i * 16, r.start, true);
        dv.setBigUint64(24 + i * 16, r.last, true);
      });
      caps.push(iovaCap);
      const avail = new Uint8Array(12);
      const dv2 = new DataView(avail.buffer);
      dv2.setUint16(0, 3, true);
      dv2.setUint16(2, 1, true);
      dv2.setUint32(8, 0xffffffff, true);
      caps.push(avail);
      let total = 24;
      let lastCap = -1;
      for (const c of caps) {
        const room = argsz > total ? argsz - total : 0;
        if (c === iovaCap) {
          // Each range that fits, then the header once the whole cap fits (fill_cap_iova).
          for (let i = 0; i < ranges.length; i++) {
            if (room >= 16 + 16 * (i + 1)) {
              const e = copyToUser(arg, total + 16 + 16 * i, c.subarray(16 + 16 * i, 32 + 16 * i));
              if (e) return e;
            }
          }
          if (room >= c.length) {
            const e = copyToUser(arg, total, c.subarray(0, 16));
            if (e) return e;
          }
        } else if (room >= c.length) {
          const e = copyToUser(arg, total, c);
          if (e) return e;
        }
        const size = Math.ceil(c.length / 8) * 8;
        if (lastCap >= 0 && argsz >= total) {
          const e = copyToUser(arg, lastCap + 4, le(4, total));
          if (e) return e;
        }
        lastCap = total;
        total += size;
      }
      const info = new Uint8Array(24);
      const di = new DataView(info.buffer);
      di.setUint32(0, total, true);
      di.setUint32(4, INFO_PGSIZES | INFO_CAPS, true);
      di.setBigUint64(8, pg, true);
      di.setUint32(16, argsz >= total ? 24 : 0, true);
      return copyToUser(arg, 0, info.subarray(0, minsz)) ?? 0;
    }
    default:
      return unknownIoctl(cmd);
  }
}
