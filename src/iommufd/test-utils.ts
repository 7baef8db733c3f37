// Test helpers mirroring tools/testing/selftests/iommu/iommufd_utils.h: each `test_*` /
// `_test_*` macro of the kernel selftests becomes a method that builds the real struct bytes
// with the uAPI codecs, runs them through the ioctl engine on a process of an emulated host,
// and decodes what the kernel wrote back. Pointers inside structs point into the process's own
// memory, as in C. Used by the conformance ports (*.kselftest.test.ts); not a test itself.

import assert from 'node:assert/strict';
import { ERRNO, type ErrnoName } from '../core/errno.ts';
import { IommufdHost, type IommufdHostOptions, ioctl, ioctlValue } from './engine.ts';
import { MAP_ANONYMOUS, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE, type Process } from './process.ts';
import { build, decodeAny, IOCTLS, type IoctlName, STRUCTS, type UapiObject } from './uapi/index.ts';

export const MOCK_APERTURE_START = 1 << 24;
export const MOCK_APERTURE_LAST = 2 ** 31 - 1;
export const MOCK_PAGE_SIZE = PAGE_SIZE / 2;
export const MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE;
export const HUGEPAGE_SIZE = 2 * 1024 * 1024;
export const U64_MAX = 0xffff_ffff_ffff_ffffn;
export const SIZE_MAX = U64_MAX;
export const UINT32_MAX = 0xffffffff;

export const MAP_RW = (1 << 1) | (1 << 2);
export const MAP_FIXED_IOVA = 1 << 0;

export interface Res {
  readonly ret: number;
  /** errno name on failure, null on success. */
  readonly errno: ErrnoName | null;
  /** The struct as the kernel left it. */
  readonly out: UapiObject;
  readonly bytes: Uint8Array;
}

/** One selftest process: an emulated host, a process, /dev/iommu open, and the global buffers. */
export class Kt {
  readonly host: IommufdHost;
  readonly p: Process;
  fd: number;
  /** The global `buffer` (16 pages, MAP_SHARED|MAP_ANONYMOUS, huge-page aligned). */
  readonly buffer: number;
  readonly BUFFER_SIZE: number;
  /** The memfd and its shared mapping (`mfd`, `mfd_buffer`). */
  readonly mfd: number;
  readonly mfdBuffer: number;

  constructor(opts: IommufdHostOptions & { bufferSize?: number; privileged?: boolean } = {}) {
    this.host = new IommufdHost(opts);
    this.p = this.host.spawn({ privileged: opts.privileged ?? true });
    this.BUFFER_SIZE = opts.bufferSize ?? PAGE_SIZE * 16;
    this.buffer = this.mmap(this.BUFFER_SIZE);
    this.mfd = this.p.memfdCreate('buffer');
    assert.equal(this.p.ftruncate(this.mfd, this.BUFFER_SIZE), undefined);
    this.mfdBuffer = this.okNum(
      this.p.mmap(this.BUFFER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, this.mfd, 0),
    );
    this.fd = this.okNum(this.p.open('/dev/iommu'));
  }

  okNum(x: unknown): number {
    assert.equal(typeof x, 'number', `expected a number, got ${String(x)}`);
    return x as number;
  }

  mmap(len: number, flags = MAP_SHARED | MAP_ANONYMOUS, prot = PROT_READ | PROT_WRITE): number {
    return this.okNum(this.p.mmap(len, prot, flags));
  }

  /** Put bytes in process memory at a fresh mapping; returns the VA. */
  place(bytes: Uint8Array): number {
    const va = this.mmap(Math.max(bytes.length, 1));
    if (bytes.length) assert.equal(this.p.poke(va, bytes), undefined);
    return va;
  }

  /** Run an ioctl by name with struct fields; `size` defaults to sizeof. */
  ioctl(
    name: IoctlName,
    fields: Readonly<Record<string, unknown>> = {},
    opts: { fd?: number; bytes?: Uint8Array } = {},
  ): Res {
    const def = IOCTLS[name];
    const s = def.struct!;
    const bytes = opts.bytes ?? build(s, fields);
    const r = ioctl(this.p, opts.fd ?? this.fd, def.cmd, bytes);
    const errno = r.ret < 0 ? (r.error?.code ?? null) : null;
    return { ret: r.ret, errno, out: decodeAny(s, r.arg), bytes: r.arg };
  }

  /** ioctl by request number with raw argument bytes (null: a faulting pointer). */
  ioctlRaw(cmd: number, bytes: Uint8Array | null): Res {
    const r = ioctl(this.p, this.fd, cmd, bytes);
    return { ret: r.ret, errno: r.ret < 0 ? (r.error?.code ?? null) : null, out: {}, bytes: r.arg };
  }

  /** ioctl with an integer argument (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU). */
  ioctlValue(name: IoctlName, raw: bigint | number): Res {
    const r = ioctlValue(this.p, this.fd, IOCTLS[name].cmd, BigInt(raw));
    return { ret: r.ret, errno: r.ret < 0 ? (r.error?.code ?? null) : null, out: {}, bytes: r.arg };
  }

  ok(r: Res, what = 'ioctl'): Res {
    assert.equal(r.ret, 0, `${what} failed: ${r.errno}`);
    return r;
  }

  /** EXPECT_ERRNO(e, cmd). */
  err(e: ErrnoName, r: Res, what = 'ioctl'): void {
    assert.equal(r.errno, e, `${what}: expected ${e}, got ${r.errno ?? `ret ${r.ret}`}`);
    assert.equal(r.ret, -ERRNO[e]);
  }

  testCmd(
    op: number,
    id: number,
    member: string | null,
    fields: Record<string, unknown> = {},
    opts: { fd?: number } = {},
  ): Res {
    return this.ioctl('IOMMU_TEST_CMD', member ? { op, id, [member]: fields } : { op, id }, opts);
  }

  // ---- iommufd_utils.h -----------------------------------------------------------------------

  ioasAlloc(): number {
    return this.ok(this.ioctl('IOMMU_IOAS_ALLOC')).out['out_ioas_id'] as number;
  }
  _destroy(id: number, fd = this.fd): Res {
    return this.ioctl('IOMMU_DESTROY', { id }, { fd });
  }
  destroy(id: number): void {
    this.ok(this._destroy(id), `destroy ${id}`);
  }
  _ioasMap(
    ioasId: number,
    va: number | bigint,
    length: number | bigint,
    iova: number | bigint,
    flags: number,
  ): Res {
    return this.ioctl('IOMMU_IOAS_MAP', {
      ioas_id: ioasId,
      user_va: BigInt(va),
      length: BigInt(length),
      iova: BigInt(iova),
      flags,
    });
  }
  ioasMap(ioasId: number, va: number | bigint, length: number | bigint): bigint {
    return this.ok(this._ioasMap(ioasId, va, length, 0, MAP_RW), 'ioas_map').out['iova'] as bigint;
  }
  ioasMapFixed(ioasId: number, va: number | bigint, length: number | bigint, iova: number | bigint): void {
    this.ok(this._ioasMap(ioasId, va, length, iova, MAP_RW | MAP_FIXED_IOVA), 'ioas_map_fixed');
  }
  _ioasMapFile(
    ioasId: number,
    mfd: number,
    start: number,
    length: number | bigint,
    iova: number | bigint,
    flags: number,
  ): Res {
    return this.ioctl('IOMMU_IOAS_MAP_FILE', {
      ioas_id: ioasId,
      fd: mfd,
      start: BigInt(start),
      length: BigInt(length),
      iova: BigInt(iova),
      flags,
    });
  }
  ioasMapFile(ioasId: number, mfd: number, start: number, length: number | bigint): bigint {
    return this.ok(this._ioasMapFile(ioasId, mfd, start, length, 0, MAP_RW), 'ioas_map_file').out[
      'iova'
    ] as bigint;
  }
  _ioasUnmap(ioasId: number, iova: number | bigint, length: number | bigint): Res {
    return this.ioctl('IOMMU_IOAS_UNMAP', { ioas_id: ioasId, iova: BigInt(iova), length: BigInt(length) });
  }
  ioasUnmap(ioasId: number, iova: number | bigint, length: number | bigint): bigint {
    return this.ok(this._ioasUnmap(ioasId, iova, length), 'ioas_unmap').out['length'] as bigint;
  }
  _mockDomain(ptId: number, flags?: number): Res {
    if (flags === undefined) return this.testCmd(2, ptId, 'mock_domain');
    return this.testCmd(12, ptId, 'mock_domain_flags', { dev_flags: flags });
  }
  mockDomain(ptId: number, flags?: number): { stdev: number; hwpt: number; idev: number } {
    const r = this.ok(this._mockDomain(ptId, flags), 'mock_domain');
    const m = r.out[flags === undefined ? 'mock_domain' : 'mock_domain_flags'] as Record<string, number>;
    return { stdev: m['out_stdev_id']!, hwpt: m['out_hwpt_id']!, idev: m['out_idev_id']! };
  }
  _mockDomainReplace(stdev: number, ptId: number): Res {
    return this.testCmd(10, stdev, 'mock_domain_replace', { pt_id: ptId });
  }
  mockDomainReplace(stdev: number, ptId: number): number {
    return (
      this.ok(this._mockDomainReplace(stdev, ptId), 'mock_domain_replace').out[
        'mock_domain_replace'
      ] as Record<string, number>
    )['pt_id']!;
  }
  _hwptAlloc(
    devId: number,
    ptId: number,
    flags: number,
    opts: { faultId?: number; dataType?: number; data?: Uint8Array | null; dataLen?: number } = {},
  ): Res {
    let uptr = 0n;
    if (opts.data) uptr = BigInt(this.place(opts.data));
    return this.ioctl('IOMMU_HWPT_ALLOC', {
      flags,
      dev_id: devId,
      pt_id: ptId,
      data_type: opts.dataType ?? 0,
      data_len: opts.dataLen ?? opts.data?.length ?? 0,
      data_uptr: uptr,
      fault_id: opts.faultId ?? 0,
    });
  }
  hwptAlloc(devId: number, ptId: number, flags: number, opts: Parameters<Kt['_hwptAlloc']>[3] = {}): number {
    return this.ok(this._hwptAlloc(devId, ptId, flags, opts), 'hwpt_alloc').out['out_hwpt_id'] as number;
  }
  checkRefs(va: number, length: number, refs: number): void {
    this.ok(
      this.testCmd(4, 0, 'check_refs', { length: BigInt(length), uptr: BigInt(va), refs }),
      `check_refs(${refs})`,
    );
  }
  checkMap(hwpt: number, va: number, iova: number | bigint, length: number): Res {
    return this.testCmd(3, hwpt, 'check_map', {
      iova: BigInt(iova),
      length: BigInt(length),
      uptr: BigInt(va),
    });
  }
  setTempMemoryLimit(limit: number): Res {
    return this.testCmd(9, 0, 'memory_limit', { limit });
  }
  createAccess(ioasId: number, flags: number): number {
    const r = this.ok(this.testCmd(5, ioasId, 'create_access', { flags }), 'create_access');
    return (r.out['create_access'] as Record<string, number>)['out_access_fd']!;
  }
  destroyAccess(fd: number): void {
    assert.equal(this.p.close(fd), undefined);
  }
  _destroyAccessPages(accessFd: number, id: number): Res {
    return this.testCmd(6, accessFd, 'destroy_access_pages', { access_pages_id: id });
  }
  accessPages(accessFd: number, iova: number | bigint, length: number, uptr: number, flags = 0): Res {
    return this.testCmd(7, accessFd, 'access_pages', {
      flags,
      iova: BigInt(iova),
      length: BigInt(length),
      uptr: BigInt(uptr),
    });
  }
  accessRw(accessFd: number, iova: number | bigint, length: number, uptr: number, flags: number): Res {
    return this.testCmd(8, accessFd, 'access_rw', {
      iova: BigInt(iova),
      length: BigInt(length),
      uptr: BigInt(uptr),
      flags,
    });
  }
  devCheckCache(idev: number, id: number, cache: number): Res {
    return this.testCmd(16, idev, 'check_dev_cache', { id, cache });
  }
  checkIotlb(hwpt: number, id: number, iotlb: number): Res {
    return this.testCmd(14, hwpt, 'check_iotlb', { id, iotlb });
  }
  _pasidAttach(stdev: number, pasid: number, ptId: number): Res {
    return this.testCmd(18, stdev, 'pasid_attach', { pasid, pt_id: ptId });
  }
  _pasidReplace(stdev: number, pasid: number, ptId: number): Res {
    return this.testCmd(19, stdev, 'pasid_replace', { pasid, pt_id: ptId });
  }
  _pasidDetach(stdev: number, pasid: number): Res {
    return this.testCmd(20, stdev, 'pasid_detach', { pasid });
  }
  pasidCheckHwpt(stdev: number, pasid: number, hwpt: number): Res {
    return this.testCmd(21, stdev, 'pasid_check', { pasid, hwpt_id: hwpt });
  }
  faultAlloc(): { id: number; fd: number } {
    const r = this.ok(this.ioctl('IOMMU_FAULT_QUEUE_ALLOC'), 'fault_alloc');
    return { id: r.out['out_fault_id'] as number, fd: r.out['out_fault_fd'] as number };
  }
  /** test_cmd_trigger_iopf(_pasid): inject a page request, read it from the fault fd, answer it. */
  triggerIopf(devId: number, faultFd: number, pasid = 0x1): void {
    this.ok(
      this.testCmd(15, 0, 'trigger_iopf', {
        dev_id: devId,
        pasid,
        grpid: 0x2,
        perm: 1 | 2,
        addr: 0xdeadbeaf000n,
      }),
      'trigger_iopf',
    );
    const fault = this.p.read(faultFd, 40);
    assert.ok(fault instanceof Uint8Array && fault.length === 40, 'one fault is delivered');
    const dv = new DataView(fault.buffer, fault.byteOffset);
    assert.equal(dv.getUint32(8, true), pasid);
    const resp = new Uint8Array(8);
    new DataView(resp.buffer).setUint32(0, dv.getUint32(36, true), true);
    assert.equal(this.p.write(faultFd, resp), 8);
  }
  viommuAlloc(
    devId: number,
    hwptId: number,
    type: number,
    data: Uint8Array | null = null,
    dataVa?: number,
  ): Res {
    const va = data ? (dataVa ?? this.place(data)) : 0;
    if (data && dataVa !== undefined) this.p.poke(dataVa, data);
    return this.ioctl('IOMMU_VIOMMU_ALLOC', {
      dev_id: devId,
      hwpt_id: hwptId,
      type,
      data_len: data?.length ?? 0,
      data_uptr: BigInt(va),
    });
  }
  vdeviceAlloc(viommuId: number, devId: number, virtId: number): Res {
    return this.ioctl('IOMMU_VDEVICE_ALLOC', { viommu_id: viommuId, dev_id: devId, virt_id: BigInt(virtId) });
  }
  /** test_cmd_get_dmabuf: the dma-buf fd is the ioctl's return value. */
  getDmabuf(length: number): number {
    const r = this.testCmd(22, 0, 'dmabuf_get', { length, open_flags: 0 });
    assert.ok(r.ret > 0, `dmabuf_get failed: ${r.errno}`);
    return r.ret;
  }
  revokeDmabuf(fd: number, revoked: boolean): void {
    this.ok(
      this.testCmd(23, 0, 'dmabuf_revoke', { dmabuf_fd: fd, revoked: revoked ? 1 : 0 }),
      'dmabuf_revoke',
    );
  }
  _veventqAlloc(viommuId: number, type: number, depth = 2): Res {
    return this.ioctl('IOMMU_VEVENTQ_ALLOC', { viommu_id: viommuId, type, veventq_depth: depth });
  }
  _hwQueueAlloc(viommuId: number, type: number, index: number, iova: bigint, length: number | bigint): Res {
    return this.ioctl('IOMMU_HW_QUEUE_ALLOC', {
      viommu_id: viommuId,
      type,
      index,
      nesting_parent_iova: iova,
      length: BigInt(length),
    });
  }
  /** _test_cmd_trigger_vevents */
  triggerVevents(devId: number, n: number): void {
    for (let i = 0; i < n; i++)
      this.ok(this.testCmd(17, 0, 'trigger_vevent', { dev_id: devId }), 'trigger_vevent');
  }
  /** _test_cmd_read_vevents: null on success, else the errno the C helper sets. */
  readVevents(fd: number, n: number, virtId: number, prev: { seq: number }): ErrnoName | null {
    const data = this.p.read(fd, n * 12);
    if (!(data instanceof Uint8Array) || data.length === 0) return 'EFAULT';
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let i = 0; i < n; i++) {
      const flags = i * 12 + 4 <= data.length ? dv.getUint32(i * 12, true) : 0;
      const seq = i * 12 + 8 <= data.length ? dv.getUint32(i * 12 + 4, true) : 0;
      if (flags & 1 || seq - prev.seq > 1) {
        prev.seq = seq;
        return 'EOVERFLOW';
      }
      prev.seq = seq;
      // As the C helper, the payload of the first event is checked.
      if (dv.getUint32(8, true) !== virtId) return 'EINVAL';
    }
    return null;
  }
  /** _test_cmd_hwpt_invalidate: returns rc and the entry_num written back. */
  invalidate(
    id: number,
    reqs: Uint8Array | null,
    dataType: number,
    entryLen: number,
    num: number,
  ): { r: Res; num: number } {
    const uptr = reqs ? BigInt(this.place(reqs)) : 0n;
    const r = this.ioctl('IOMMU_HWPT_INVALIDATE', {
      hwpt_id: id,
      data_uptr: uptr,
      data_type: dataType,
      entry_len: entryLen,
      entry_num: num,
    });
    return { r, num: r.out['entry_num'] as number };
  }
  getHwInfo(
    devId: number,
    dataLen: number,
    opts: { type?: number; flags?: number } = {},
  ): { r: Res; data: Uint8Array } {
    const va = dataLen ? this.mmap(Math.max(dataLen, 1)) : 0;
    if (dataLen) this.p.poke(va, new Uint8Array(dataLen).fill(0xaa));
    const r = this.ioctl('IOMMU_GET_HW_INFO', {
      dev_id: devId,
      data_len: dataLen,
      data_uptr: BigInt(va),
      in_data_type: opts.type ?? 0,
      flags: opts.flags ?? (opts.type !== undefined ? 1 : 0),
    });
    const data = dataLen ? (this.p.peek(va, dataLen) as Uint8Array) : new Uint8Array(0);
    return { r, data };
  }

  /** teardown_iommufd: close, reopen /dev/iommu, every page of the buffer has no pin left. */
  teardown(): void {
    assert.equal(this.p.close(this.fd), undefined);
    this.fd = this.okNum(this.p.open('/dev/iommu'));
    this.checkRefs(this.buffer, this.BUFFER_SIZE, 0);
    assert.equal(this.p.close(this.fd), undefined);
  }
}

export { PAGE_SIZE, STRUCTS };
