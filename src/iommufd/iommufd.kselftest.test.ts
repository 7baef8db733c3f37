// Port of tools/testing/selftests/iommu/iommufd.c (Linux ~6.17; research iommufd.md C.1)
// against the mock driver, through the ioctl engine, with real struct bytes. Each kernel test
// is a `describe('<fixture>.<test>')` whose subtests are the fixture's variants (named as the
// kernel names them); every test ends with the fixture teardown, which proves that no page of
// the global buffer is left pinned (teardown_iommufd). docs/CONFORMANCE.md lists the status of
// every kernel test.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ErrnoName } from '../core/errno.ts';
import {
  MAP_ANONYMOUS,
  MAP_HUGETLB,
  MAP_POPULATE,
  MAP_PRIVATE,
  MAP_SHARED,
  PROT_READ,
  PROT_WRITE,
} from './process.ts';
import {
  HUGEPAGE_SIZE,
  Kt,
  MAP_FIXED_IOVA,
  MAP_RW,
  MOCK_APERTURE_LAST,
  MOCK_APERTURE_START,
  MOCK_HUGE_PAGE_SIZE,
  MOCK_PAGE_SIZE,
  PAGE_SIZE,
  SIZE_MAX,
  STRUCTS,
  U64_MAX,
  UINT32_MAX,
} from './test-utils.ts';
import { build, IOCTLS, type IoctlName, offsetofend, type StructDef } from './uapi/index.ts';

const IOMMU_TEST_DEV_CACHE_DEFAULT = 0xbaddad;
const IOMMU_TEST_IOTLB_DEFAULT = 0xbadbeef;
const IOMMU_HWPT_DATA_SELFTEST = 0xdead;
const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
const IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID = 0xdadbeef;
const IOMMU_VIOMMU_TYPE_SELFTEST = 0xdeadbeef;
const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST = 0xdeadbeef;
const IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID = 0xdadbeef;
const IOMMU_TEST_INVALIDATE_FLAG_ALL = 1;
const IOMMU_HW_INFO_TYPE_DEFAULT = 0;
const IOMMU_HW_INFO_TYPE_SELFTEST = 0xfeedbeef;
const NEST_PARENT = 1 << 0;
const DIRTY_TRACKING = 1 << 1;
const FAULT_ID_VALID = 1 << 2;
const ALLOC_PASID = 1 << 3;
const MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0;
const MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1;
const MOCK_FLAGS_DEVICE_PASID = 1 << 2;
const MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1;
const MOCK_ACCESS_RW_WRITE = 1;
const MOCK_ACCESS_RW_SLOW_PATH = 4;
const MOCK_PASID_WIDTH = 20;
const IOMMU_HW_CAP_DIRTY_TRACKING = 1n;
const GET_DIRTY_BITMAP_NO_CLEAR = 1;
const VFIO_TYPE1_IOMMU = 1;
const VFIO_TYPE1v2_IOMMU = 3;
const BASE = 0n;

/** struct iommu_hwpt_selftest { iotlb; pagetable_type } */
function hwptSelftest(iotlb = IOMMU_TEST_IOTLB_DEFAULT): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setUint32(0, iotlb, true);
  return b;
}
function u32s(...v: number[]): Uint8Array {
  const b = new Uint8Array(4 * v.length);
  const dv = new DataView(b.buffer);
  v.forEach((x, i) => {
    dv.setUint32(4 * i, x >>> 0, true);
  });
  return b;
}
function rangesBytes(r: [bigint, bigint][]): Uint8Array {
  const b = new Uint8Array(16 * Math.max(1, r.length));
  const dv = new DataView(b.buffer);
  r.forEach(([s, l], i) => {
    dv.setBigUint64(16 * i, s, true);
    dv.setBigUint64(16 * i + 8, l, true);
  });
  return b;
}

/** A fixture: setup returns its state; variants by kernel name. */
interface Fixture<V, S> {
  readonly name: string;
  readonly variants: Readonly<Record<string, V>>;
  setup(t: Kt, v: V): S;
  teardown?(t: Kt, s: S, v: V): void;
}

function TEST_F<V, S>(f: Fixture<V, S>, name: string, body: (t: Kt, self: S, v: V) => void): void {
  describe(`${f.name}.${name}`, () => {
    for (const [vname, v] of Object.entries(f.variants)) {
      test(vname, () => {
        const t = new Kt();
        const s = f.setup(t, v);
        body(t, s, v);
        f.teardown?.(t, s, v);
        t.teardown();
      });
    }
  });
}

// ================================================================================================
// FIXTURE(iommufd)
// ================================================================================================

const iommufd: Fixture<null, null> = { name: 'iommufd', variants: { '': null }, setup: () => null };

TEST_F(iommufd, 'simple_close', () => {});

TEST_F(iommufd, 'cmd_fail', (t) => {
  t.err('ENOENT', t._destroy(0));
  // Bad pointer: ioctl(fd, IOMMU_DESTROY, NULL)
  t.err('EFAULT', t.ioctlRaw(IOCTLS.IOMMU_DESTROY.cmd, null));
  // _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE - 1)
  t.err('ENOTTY', t.ioctlRaw(0x3b7f, build(STRUCTS.iommu_destroy, { id: 0 })));
});

TEST_F(iommufd, 'cmd_length', (t) => {
  const cases: [IoctlName, string][] = [
    ['IOMMU_DESTROY', 'id'],
    ['IOMMU_GET_HW_INFO', '__reserved'],
    ['IOMMU_HWPT_ALLOC', '__reserved'],
    ['IOMMU_HWPT_INVALIDATE', '__reserved'],
    ['IOMMU_IOAS_ALLOC', 'out_ioas_id'],
    ['IOMMU_IOAS_IOVA_RANGES', 'out_iova_alignment'],
    ['IOMMU_IOAS_ALLOW_IOVAS', 'allowed_iovas'],
    ['IOMMU_IOAS_MAP', 'iova'],
    ['IOMMU_IOAS_COPY', 'src_iova'],
    ['IOMMU_IOAS_UNMAP', 'length'],
    ['IOMMU_OPTION', 'val64'],
    ['IOMMU_VFIO_IOAS', '__reserved'],
    ['IOMMU_IOAS_MAP_FILE', 'iova'],
    ['IOMMU_VIOMMU_ALLOC', 'out_viommu_id'],
    ['IOMMU_VDEVICE_ALLOC', 'virt_id'],
    ['IOMMU_IOAS_CHANGE_PROCESS', '__reserved'],
  ];
  for (const [name, last] of cases) {
    const s = IOCTLS[name].struct as StructDef;
    const minSize = offsetofend(s, last);
    const bytes = new Uint8Array(s.size + 1);
    bytes[s.size] = 0xff;
    const setSize = (n: number) => new DataView(bytes.buffer).setUint32(0, n, true);
    setSize(minSize - 1);
    t.err('EINVAL', t.ioctl(name, {}, { bytes }), `${name} min-1`);
    setSize(s.size + 1);
    t.err('E2BIG', t.ioctl(name, {}, { bytes }), `${name} sizeof+1`);
    setSize(s.size);
    const rc = t.ioctl(name, {}, { bytes });
    setSize(s.size + 1);
    bytes[s.size] = 0;
    const rc2 = t.ioctl(name, {}, { bytes });
    assert.equal(rc2.ret, rc.ret, `${name}: a zero tail behaves as the exact size`);
    assert.equal(rc2.errno, rc.errno);
  }
});

TEST_F(iommufd, 'cmd_ex_fail', (t) => {
  const bytes = new Uint8Array(16);
  const dv = new DataView(bytes.buffer);
  dv.setUint32(0, 16, true);
  t.err('ENOENT', t.ioctl('IOMMU_DESTROY', {}, { bytes }));
  dv.setBigUint64(8, 1n, true);
  t.err('E2BIG', t.ioctl('IOMMU_DESTROY', {}, { bytes }));
  dv.setUint32(0, 8, true);
  t.err('ENOENT', t.ioctl('IOMMU_DESTROY', {}, { bytes }));
  dv.setUint32(0, 7, true);
  t.err('EINVAL', t.ioctl('IOMMU_DESTROY', {}, { bytes }));
});

TEST_F(iommufd, 'global_options', (t) => {
  const opt = (option_id: number, op: number, val64: bigint, object_id = 0) =>
    t.ioctl('IOMMU_OPTION', { option_id, op, val64, object_id });
  let r = t.ok(opt(0, 1, 1n));
  assert.equal(r.out['val64'], 0n);
  t.ok(opt(0, 0, 1n));
  t.err('EINVAL', opt(0, 0, 2n));
  r = t.ok(opt(0, 1, 1n));
  assert.equal(r.out['val64'], 1n);
  t.ok(opt(0, 0, 0n));
  t.err('ENOENT', opt(1, 1, 0n));
  t.err('ENOENT', opt(1, 0, 0n));
});

TEST_F(iommufd, 'simple_ioctls', (t) => {
  assert.equal(t.ioctlValue('VFIO_GET_API_VERSION', 0).ret, 0);
  assert.equal(t.ioctlValue('VFIO_CHECK_EXTENSION', VFIO_TYPE1v2_IOMMU).ret, 1);
});

TEST_F(iommufd, 'unmap_cmd', (t) => {
  const f = { iova: BigInt(MOCK_APERTURE_START), size: BigInt(PAGE_SIZE) };
  t.err('EINVAL', t.ioctl('VFIO_IOMMU_UNMAP_DMA', { ...f, argsz: 1 }));
  t.err('EINVAL', t.ioctl('VFIO_IOMMU_UNMAP_DMA', { ...f, flags: 2 ** 31 }));
  t.err('ENODEV', t.ioctl('VFIO_IOMMU_UNMAP_DMA', { ...f }));
});

TEST_F(iommufd, 'map_cmd', (t) => {
  const f = { iova: BigInt(MOCK_APERTURE_START), size: BigInt(PAGE_SIZE), vaddr: BigInt(t.buffer) };
  t.err('EINVAL', t.ioctl('VFIO_IOMMU_MAP_DMA', { ...f, argsz: 1 }));
  t.err('EINVAL', t.ioctl('VFIO_IOMMU_MAP_DMA', { ...f, flags: 2 ** 31 }));
  t.err('ENODEV', t.ioctl('VFIO_IOMMU_MAP_DMA', { ...f, flags: 3 }));
});

TEST_F(iommufd, 'info_cmd', (t) => {
  t.err('EINVAL', t.ioctl('VFIO_IOMMU_GET_INFO', { argsz: 1 }));
  t.err('ENODEV', t.ioctl('VFIO_IOMMU_GET_INFO', {}));
});

TEST_F(iommufd, 'set_iommu_cmd', (t) => {
  t.err('ENODEV', t.ioctlValue('VFIO_SET_IOMMU', VFIO_TYPE1v2_IOMMU));
  t.err('ENODEV', t.ioctlValue('VFIO_SET_IOMMU', VFIO_TYPE1_IOMMU));
});

TEST_F(iommufd, 'vfio_ioas', (t) => {
  t.err('ENODEV', t.ioctl('IOMMU_VFIO_IOAS', { op: 0 }));
  t.err('ENOENT', t.ioctl('IOMMU_VFIO_IOAS', { op: 1 }));
  const ioas = t.ioasAlloc();
  t.ok(t.ioctl('IOMMU_VFIO_IOAS', { op: 1, ioas_id: ioas }));
  const r = t.ok(t.ioctl('IOMMU_VFIO_IOAS', { op: 0 }));
  assert.equal(r.out['ioas_id'], ioas);
  t.ok(t.ioctl('IOMMU_VFIO_IOAS', { op: 2 }));
  t.err('ENODEV', t.ioctl('IOMMU_VFIO_IOAS', { op: 0 }));
});

// ================================================================================================
// FIXTURE(change_process)
// ================================================================================================

const change_process: Fixture<{ accounting: number }, { ioas: number }> = {
  name: 'change_process',
  variants: {
    account_none: { accounting: 0 },
    account_user: { accounting: 1 },
    account_mm: { accounting: 2 },
  },
  setup(t, v) {
    t.p.creds.capIpcLock = false; // drop_cap_ipc_lock
    if (v.accounting !== 0)
      t.ok(t.ioctl('IOMMU_OPTION', { option_id: 0, op: 0, val64: v.accounting === 2 ? 1n : 0n }));
    const ioas = t.ioasAlloc();
    t.mockDomain(ioas);
    return { ioas };
  },
};

TEST_F(change_process, 'basic', (t, s, v) => {
  const iova = t.ioasMap(s.ioas, t.buffer, PAGE_SIZE);
  t.err('EINVAL', t.ioctl('IOMMU_IOAS_CHANGE_PROCESS', {}));
  t.ioasUnmap(s.ioas, iova, PAGE_SIZE);
  t.ioasMapFile(s.ioas, t.mfd, 0, PAGE_SIZE);
  t.ok(t.ioctl('IOMMU_IOAS_CHANGE_PROCESS', {}));
  const parent = t.p;
  const child = parent.fork();
  const nlock = 1; // pages (the kernel test reads PAGE_SIZE / 1024 kB)
  assert.equal(parent.mm.pinnedVm, nlock);
  if (v.accounting === 2) assert.equal(parent.mm.lockedVm, nlock);
  assert.equal(child.mm.pinnedVm, 0);
  assert.equal(child.mm.lockedVm, 0);
  const saved = (t as { p: typeof child }).p;
  (t as { p: typeof child }).p = child;
  t.ok(t.ioctl('IOMMU_IOAS_CHANGE_PROCESS', {}));
  (t as { p: typeof child }).p = saved;
  assert.equal(parent.mm.pinnedVm, 0);
  assert.equal(parent.mm.lockedVm, 0);
  assert.equal(child.mm.pinnedVm, nlock);
  if (v.accounting === 2) assert.equal(child.mm.lockedVm, nlock);
  child.exit();
});

// ================================================================================================
// FIXTURE(iommufd_ioas)
// ================================================================================================

interface IoasVariant {
  mock_domains: number;
  memory_limit: number;
  pasid_capable: boolean;
}
interface IoasSelf {
  ioas: number;
  stdev: number;
  hwpt: number;
  device: number;
  base: bigint;
  devicePasid: number;
}

const iommufd_ioas: Fixture<IoasVariant, IoasSelf> = {
  name: 'iommufd_ioas',
  variants: {
    no_domain: { mock_domains: 0, memory_limit: 0, pasid_capable: false },
    mock_domain: { mock_domains: 1, memory_limit: 0, pasid_capable: true },
    two_mock_domain: { mock_domains: 2, memory_limit: 0, pasid_capable: false },
    mock_domain_limit: { mock_domains: 1, memory_limit: 16, pasid_capable: false },
  },
  setup(t, v) {
    const s: IoasSelf = { ioas: t.ioasAlloc(), stdev: 0, hwpt: 0, device: 0, base: BASE, devicePasid: 0 };
    t.ok(t.setTempMemoryLimit(v.memory_limit || 65536));
    for (let i = 0; i < v.mock_domains; i++) {
      const d = t.mockDomain(s.ioas);
      s.stdev = d.stdev;
      s.hwpt = d.hwpt;
      s.device = d.idev;
      for (let c = 0; c < 4; c++) t.ok(t.devCheckCache(d.idev, c, IOMMU_TEST_DEV_CACHE_DEFAULT));
      s.base = BigInt(MOCK_APERTURE_START);
    }
    if (v.pasid_capable) s.devicePasid = t.mockDomain(s.ioas, MOCK_FLAGS_DEVICE_PASID).idev;
    return s;
  },
  teardown(t) {
    t.ok(t.setTempMemoryLimit(65536));
  },
};

TEST_F(iommufd_ioas, 'ioas_auto_destroy', () => {});

TEST_F(iommufd_ioas, 'ioas_destroy', (t, s) => {
  if (s.stdev) t.err('EBUSY', t._destroy(s.ioas));
  else t.destroy(s.ioas);
});

TEST_F(iommufd_ioas, 'alloc_hwpt_nested', (t, s) => {
  const data = hwptSelftest();
  const SELF = IOMMU_HWPT_DATA_SELFTEST;
  const nested: number[] = [0, 0];
  if (s.device) {
    t.err('ENOENT', t._hwptAlloc(s.ioas, s.device, 0));
    t.err('EINVAL', t._hwptAlloc(s.device, s.device, 0));
    t.err('EOPNOTSUPP', t._hwptAlloc(s.device, s.ioas, NEST_PARENT | FAULT_ID_VALID));
    const parent = t.hwptAlloc(s.device, s.ioas, NEST_PARENT);
    const parentNotWork = t.hwptAlloc(s.device, s.ioas, 0);
    t.err('EINVAL', t._hwptAlloc(s.device, parent, 0, { dataType: 0, data }));
    t.err('EOPNOTSUPP', t._hwptAlloc(s.device, parent, 0, { dataType: SELF + 1, data }));
    t.err('EINVAL', t._hwptAlloc(s.device, parent, 0, { dataType: SELF, data: data.subarray(0, 3) }));
    t.err('EFAULT', t._hwptAlloc(s.device, parent, 0, { dataType: SELF, data: null, dataLen: 8 }));
    t.err('EOPNOTSUPP', t._hwptAlloc(s.device, parent, NEST_PARENT, { dataType: SELF, data }));
    t.err('EINVAL', t._hwptAlloc(s.device, parentNotWork, 0, { dataType: SELF, data }));

    const fault = t.faultAlloc();
    nested[0] = t.hwptAlloc(s.device, parent, 0, { dataType: SELF, data });
    nested[1] = t.hwptAlloc(s.device, parent, 0, { dataType: SELF, data });
    t.err(
      'ENOENT',
      t._hwptAlloc(s.device, parent, FAULT_ID_VALID, { faultId: UINT32_MAX, dataType: SELF, data }),
    );
    const iopf = t.hwptAlloc(s.device, parent, FAULT_ID_VALID, { faultId: fault.id, dataType: SELF, data });
    for (const h of nested) for (let i = 0; i < 4; i++) t.ok(t.checkIotlb(h, i, IOMMU_TEST_IOTLB_DEFAULT));

    t.err('EINVAL', t._hwptAlloc(s.device, nested[0]!, 0, { dataType: SELF, data }));
    t.err('EBUSY', t._destroy(parent));

    const INV = IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    const reqs = (...r: [number, number][]) => u32s(...r.flat());
    const inv = (h: number, b: Uint8Array | null, type: number, len: number, num: number, e?: ErrnoName) => {
      const r = t.invalidate(h, b, type, len, num);
      if (e) t.err(e, r.r);
      else t.ok(r.r);
      return r.num;
    };
    assert.equal(inv(parent, reqs([0, 0]), INV, 8, 1, 'EINVAL'), 0);
    assert.equal(inv(nested[0]!, reqs([0, 0]), INV, 8, 0), 0);
    assert.equal(
      inv(nested[0]!, reqs([0, 0]), IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, 8, 1, 'EINVAL'),
      0,
    );
    assert.equal(inv(nested[0]!, reqs([0, 0], [0, 0]), INV, 9, 1, 'EINVAL'), 0);
    assert.equal(inv(nested[0]!, reqs([0, 0]), INV, 1, 1, 'EINVAL'), 0);
    assert.equal(inv(nested[0]!, reqs([0xffffffff, 0]), INV, 8, 1, 'EOPNOTSUPP'), 0);
    assert.equal(inv(nested[0]!, null, INV, 8, 1, 'EINVAL'), 0);
    assert.equal(inv(nested[0]!, reqs([0, 0]), INV, 0, 1, 'EINVAL'), 0);
    assert.equal(inv(nested[0]!, reqs([0, 4]), INV, 8, 1, 'EINVAL'), 0);
    // newest kernels: entry_len > PAGE_SIZE and entry_num > 1 << 19 are refused up front
    assert.equal(inv(nested[0]!, reqs([0, 0]), INV, PAGE_SIZE + 1, 1, 'EINVAL'), 0);
    assert.equal(inv(nested[0]!, reqs([0, 0]), INV, 8, (1 << 19) + 1, 'EINVAL'), 0);

    const iotlbs = (h: number, v: number[]) => {
      for (const [i, x] of v.entries()) t.ok(t.checkIotlb(h, i, x));
    };
    const D = IOMMU_TEST_IOTLB_DEFAULT;
    assert.equal(inv(nested[0]!, reqs([0, 0], [0xffffffff, 1]), INV, 8, 2, 'EOPNOTSUPP'), 1);
    iotlbs(nested[0]!, [0, D, D, D]);
    assert.equal(inv(nested[0]!, reqs([0, 0], [0, 4]), INV, 8, 2, 'EINVAL'), 1);
    iotlbs(nested[0]!, [0, D, D, D]);
    assert.equal(inv(nested[0]!, reqs([0, 1]), INV, 8, 1), 1);
    iotlbs(nested[0]!, [0, 0, D, D]);
    assert.equal(inv(nested[0]!, reqs([0, 2], [0, 3]), INV, 8, 2), 2);
    iotlbs(nested[0]!, [0, 0, 0, 0]);
    assert.equal(inv(nested[1]!, reqs([IOMMU_TEST_INVALIDATE_FLAG_ALL, 0]), INV, 8, 1), 1);
    iotlbs(nested[1]!, [0, 0, 0, 0]);

    t.mockDomainReplace(s.stdev, nested[0]!);
    t.err('EBUSY', t._destroy(nested[0]!));
    t.mockDomainReplace(s.stdev, nested[1]!);
    t.err('EBUSY', t._destroy(nested[1]!));
    t.destroy(nested[0]!);
    t.mockDomainReplace(s.stdev, iopf);
    t.err('EBUSY', t._destroy(iopf));
    t.triggerIopf(s.device, fault.fd);
    t.mockDomainReplace(s.stdev, parent);
    t.destroy(nested[1]!);
    t.destroy(iopf);
    t.mockDomainReplace(s.stdev, s.ioas);
    t.destroy(parent);
    t.destroy(parentNotWork);
    assert.equal(t.p.close(fault.fd), undefined);
    t.destroy(fault.id);
  } else {
    t.err('ENOENT', t._hwptAlloc(s.device, s.ioas, 0));
    t.err('ENOENT', t._hwptAlloc(s.device, 0, 0, { dataType: SELF, data }));
    t.err('ENOENT', t._hwptAlloc(s.device, 0, 0, { dataType: SELF, data }));
    t.err('ENOENT', t._mockDomainReplace(s.stdev, 0));
    t.err('ENOENT', t._mockDomainReplace(s.stdev, 0));
  }
});

TEST_F(iommufd_ioas, 'hwpt_attach', (t, s) => {
  if (s.stdev) t.mockDomain(s.hwpt);
  else t.err('ENOENT', t._mockDomain(s.hwpt));
});

TEST_F(iommufd_ioas, 'ioas_area_destroy', (t, s) => {
  t.ioasMapFixed(s.ioas, t.buffer, PAGE_SIZE, s.base);
  if (s.stdev) t.err('EBUSY', t._destroy(s.ioas));
  else t.destroy(s.ioas);
});

TEST_F(iommufd_ioas, 'ioas_area_auto_destroy', (t, s) => {
  for (let i = 0; i < 10; i++) t.ioasMapFixed(s.ioas, t.buffer, PAGE_SIZE, s.base + BigInt(i * PAGE_SIZE));
});

TEST_F(iommufd_ioas, 'get_hw_info', (t, s, v) => {
  const check = (r: ReturnType<Kt['getHwInfo']>, dataLen: number) => {
    t.ok(r.r);
    assert.equal(r.r.out['out_data_type'], IOMMU_HW_INFO_TYPE_SELFTEST);
    assert.equal(r.r.out['data_len'], 8);
    for (let i = 8; i < dataLen; i++) assert.equal(r.data[i], 0, 'trailing bytes zeroed');
    const dv = new DataView(r.data.buffer, r.data.byteOffset);
    if (dataLen >= 8) assert.equal(dv.getUint32(4, true), 0xdeadbeef);
    if (dataLen >= 4) assert.equal(dv.getUint32(0, true), 0);
    return r.r;
  };
  if (s.device) {
    check(t.getHwInfo(s.device, 0), 0);
    check(t.getHwInfo(s.device, 8), 8);
    t.err('EOPNOTSUPP', t.getHwInfo(s.device, 8, { type: IOMMU_HW_INFO_TYPE_SELFTEST + 1 }).r);
    check(t.getHwInfo(s.device, 8, { type: IOMMU_HW_INFO_TYPE_SELFTEST }), 8);
    check(t.getHwInfo(s.device, 16), 16);
    check(t.getHwInfo(s.device, 4), 4);
    assert.equal(check(t.getHwInfo(s.device, 0), 0).out['out_max_pasid_log2'], 0);
    if (v.pasid_capable)
      assert.equal(check(t.getHwInfo(s.devicePasid, 0), 0).out['out_max_pasid_log2'], MOCK_PASID_WIDTH);
  } else {
    t.err('ENOENT', t.getHwInfo(s.device, 8, { type: IOMMU_HW_INFO_TYPE_DEFAULT }).r);
    t.err('ENOENT', t.getHwInfo(s.device, 16, { type: IOMMU_HW_INFO_TYPE_DEFAULT }).r);
  }
});

TEST_F(iommufd_ioas, 'area', (t, s) => {
  const P = BigInt(PAGE_SIZE);
  for (let i = 0n; i < 10n; i++) t.err('ENOENT', t._ioasUnmap(s.ioas, i * P, P));
  for (let i = 0n; i < 10n; i++) t.ioasMapFixed(s.ioas, t.buffer, P, s.base + i * P);
  for (let i = 0n; i < 10n; i++) t.ioasUnmap(s.ioas, s.base + i * P, P);
  t.ioasMapFixed(s.ioas, t.buffer, P * 2n, s.base + 16n * P);
  t.err('ENOENT', t._ioasUnmap(s.ioas, s.base + 16n * P, P));
  t.err('ENOENT', t._ioasUnmap(s.ioas, s.base + 17n * P, P));
  const fixed = (len: bigint, iova: bigint) =>
    t._ioasMap(s.ioas, t.buffer, len, iova, MAP_RW | MAP_FIXED_IOVA);
  t.err('EEXIST', fixed(P * 2n, s.base + 16n * P));
  t.err('EEXIST', fixed(P, s.base + 16n * P));
  t.err('EEXIST', fixed(P, s.base + 17n * P));
  t.err('EEXIST', fixed(P * 2n, s.base + 15n * P));
  t.err('EEXIST', fixed(P * 3n, s.base + 15n * P));
  t.ioasUnmap(s.ioas, 0, U64_MAX);
  t.ioasUnmap(s.ioas, 0, U64_MAX);
});

TEST_F(iommufd_ioas, 'unmap_fully_contained_areas', (t, s) => {
  const P = BigInt(PAGE_SIZE);
  const base = s.base + 4n * P;
  for (let i = 0n; i < 4n; i++) t.ioasMapFixed(s.ioas, t.buffer, 8n * P, base + i * 16n * P);
  t.err('ENOENT', t._ioasUnmap(s.ioas, base - 4n * P, 8n * P));
  t.err('ENOENT', t._ioasUnmap(s.ioas, base + 3n * 16n * P + 8n * P - 4n * P, 8n * P));
  const r = t.ok(t._ioasUnmap(s.ioas, base - 4n * P, 3n * 16n * P + 8n * P + 4n * P));
  assert.equal(r.out['length'], 32n * P);
});

TEST_F(iommufd_ioas, 'area_auto_iova', (t, s) => {
  const P = PAGE_SIZE;
  const ffsAlign = (len: number) => BigInt(len & -len);
  const iovas: bigint[] = [];
  for (let i = 0; i < 10; i++) iovas[i] = t.ioasMap(s.ioas, t.buffer, P);
  for (let i = 0; i < 10; i++) t.ioasUnmap(s.ioas, iovas[i]!, P);
  for (let i = 0; i < 10; i++) {
    const length = P * (i + 1);
    iovas[i] = s.stdev ? t.ioasMap(s.ioas, t.buffer, length) : t.ioasMap(s.ioas, 1n << 31n, length);
    assert.equal(iovas[i]! % ffsAlign(length), 0n);
  }
  for (let i = 0; i < 10; i++) t.ioasUnmap(s.ioas, iovas[i]!, P * (i + 1));
  const resStart = BigInt(P * 4);
  const resLen = BigInt(P * 100);
  t.ok(t.testCmd(1, s.ioas, 'add_reserved', { start: resStart, length: resLen }));
  for (let i = 0; i < 10; i++) {
    const length = P * (i + 1);
    iovas[i] = t.ioasMap(s.ioas, t.buffer, length);
    assert.equal(iovas[i]! % ffsAlign(length), 0n);
    assert.equal(iovas[i]! > resStart && iovas[i]! < resStart + resLen, false);
  }
  for (let i = 0; i < 10; i++) t.ioasUnmap(s.ioas, iovas[i]!, P * (i + 1));
  const allow = (r: [bigint, bigint]) =>
    t.ioctl('IOMMU_IOAS_ALLOW_IOVAS', {
      ioas_id: s.ioas,
      num_iovas: 1,
      allowed_iovas: BigInt(t.place(rangesBytes([r]))),
    });
  t.err('EADDRINUSE', allow([BigInt(P), BigInt(P * 600)]));
  const range: [bigint, bigint] = s.stdev
    ? [BigInt(MOCK_APERTURE_START + P), BigInt(MOCK_APERTURE_START + P * 600 - 1)]
    : [BigInt(P * 200), BigInt(P * 600 - 1)];
  t.ok(allow(range));
  for (let i = 0; i < 10; i++) {
    const length = BigInt(P * (i + 1));
    iovas[i] = t.ioasMap(s.ioas, t.buffer, length);
    assert.equal(iovas[i]! % ffsAlign(Number(length)), 0n);
    assert.ok(iovas[i]! >= range[0] && iovas[i]! <= range[1]);
    assert.ok(iovas[i]! + length > range[0] && iovas[i]! + length <= range[1] + 1n);
  }
  for (let i = 0; i < 10; i++) t.ioasUnmap(s.ioas, iovas[i]!, P * (i + 1));
});

TEST_F(iommufd_ioas, 'reserved_overflow', (t, s) => {
  t.ok(t.testCmd(1, s.ioas, 'add_reserved', { start: 6n, length: 0xffffffffffff8001n }));
  t.err('ENOSPC', t._ioasMap(s.ioas, t.buffer, 0x5000, 0, MAP_RW));
});

TEST_F(iommufd_ioas, 'area_allowed', (t, s) => {
  const P = BigInt(PAGE_SIZE);
  const allow = (r: [bigint, bigint][]) =>
    t.ioctl('IOMMU_IOAS_ALLOW_IOVAS', {
      ioas_id: s.ioas,
      num_iovas: r.length,
      allowed_iovas: BigInt(t.place(rangesBytes(r))),
    });
  t.ok(allow([[s.base, s.base + P * 600n]]));
  const res = { start: s.base + P, length: P };
  t.err('EADDRINUSE', t.testCmd(1, s.ioas, 'add_reserved', res));
  t.ok(allow([]));
  t.ok(t.testCmd(1, s.ioas, 'add_reserved', res));
  t.err('EADDRINUSE', allow([[s.base, s.base + P * 600n]]));
});

TEST_F(iommufd_ioas, 'copy_area', (t, s) => {
  const P = BigInt(PAGE_SIZE);
  t.ioasMapFixed(s.ioas, t.buffer, P, s.base);
  const copy = { flags: MAP_FIXED_IOVA | (1 << 1), dst_ioas_id: s.ioas, src_ioas_id: s.ioas, length: P };
  t.ok(t.ioctl('IOMMU_IOAS_COPY', { ...copy, src_iova: s.base, dst_iova: s.base + P }));
  const dst = t.ioasAlloc();
  t.ok(t.ioctl('IOMMU_IOAS_COPY', { ...copy, dst_ioas_id: dst, src_iova: s.base, dst_iova: 0n }));
});

TEST_F(iommufd_ioas, 'iova_ranges', (t, s) => {
  const P = BigInt(PAGE_SIZE);
  const ranges = t.buffer;
  const read = (i: number): [bigint, bigint] => {
    const b = t.p.peek(ranges + 16 * i, 16) as Uint8Array;
    const dv = new DataView(b.buffer);
    return [dv.getBigUint64(0, true), dv.getBigUint64(8, true)];
  };
  const cmd = (num: number) =>
    t.ioctl('IOMMU_IOAS_IOVA_RANGES', { ioas_id: s.ioas, num_iovas: num, allowed_iovas: BigInt(ranges) });
  const zero = () => t.p.poke(ranges, new Uint8Array(t.BUFFER_SIZE));
  let r = t.ok(cmd(t.BUFFER_SIZE / 16));
  assert.equal(r.out['num_iovas'], 1);
  if (!s.stdev) {
    assert.deepEqual(read(0), [0n, SIZE_MAX]);
    assert.equal(r.out['out_iova_alignment'], 1n);
  } else {
    assert.deepEqual(read(0), [BigInt(MOCK_APERTURE_START), BigInt(MOCK_APERTURE_LAST)]);
    assert.equal(r.out['out_iova_alignment'], BigInt(MOCK_PAGE_SIZE));
  }
  zero();
  r = cmd(0);
  t.err('EMSGSIZE', r);
  assert.equal(r.out['num_iovas'], 1);
  assert.deepEqual(read(0), [0n, 0n]);
  t.ok(t.testCmd(1, s.ioas, 'add_reserved', { start: P, length: P }));
  r = t.ok(cmd(t.BUFFER_SIZE / 16));
  if (!s.stdev) {
    assert.equal(r.out['num_iovas'], 2);
    assert.deepEqual(read(0), [0n, P - 1n]);
    assert.deepEqual(read(1), [P * 2n, SIZE_MAX]);
  } else {
    assert.equal(r.out['num_iovas'], 1);
    assert.deepEqual(read(0), [BigInt(MOCK_APERTURE_START), BigInt(MOCK_APERTURE_LAST)]);
  }
  zero();
  r = cmd(1);
  if (!s.stdev) {
    t.err('EMSGSIZE', r);
    assert.equal(r.out['num_iovas'], 2);
    assert.deepEqual(read(0), [0n, P - 1n]);
  } else {
    t.ok(r);
    assert.equal(r.out['num_iovas'], 1);
    assert.deepEqual(read(0), [BigInt(MOCK_APERTURE_START), BigInt(MOCK_APERTURE_LAST)]);
  }
  assert.deepEqual(read(1), [0n, 0n]);
});

TEST_F(iommufd_ioas, 'access_domain_destory', (t, s) => {
  const bufSize = 2 * HUGEPAGE_SIZE;
  const buf = t.mmap(bufSize, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE);
  t.ioasMapFixed(s.ioas, buf, bufSize, s.base);
  const access = t.createAccess(s.ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
  const r = t.ok(t.accessPages(access, s.base + BigInt(PAGE_SIZE), PAGE_SIZE, buf + PAGE_SIZE));
  if (s.stdev) t.destroy(s.stdev);
  t.ok(
    t._destroyAccessPages(access, (r.out['access_pages'] as Record<string, number>)['out_access_pages_id']!),
  );
  t.destroyAccess(access);
  assert.equal(t.p.munmap(buf, bufSize), undefined);
});

TEST_F(iommufd_ioas, 'access_pin', (t, s) => {
  const access = t.createAccess(s.ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
  const A = MOCK_APERTURE_START;
  const pagesId = (r: ReturnType<Kt['accessPages']>) =>
    (r.out['access_pages'] as Record<string, number>)['out_access_pages_id']!;
  for (let npages = 1; npages < t.BUFFER_SIZE / PAGE_SIZE; npages++) {
    const len = npages * PAGE_SIZE;
    t.ioasMapFixed(s.ioas, t.buffer, t.BUFFER_SIZE, A);
    t.ok(t._destroyAccessPages(access, pagesId(t.ok(t.accessPages(access, A, len, t.buffer)))));
    const first = pagesId(t.ok(t.accessPages(access, A, len, t.buffer)));
    t.ok(t._destroyAccessPages(access, pagesId(t.ok(t.accessPages(access, A, len, t.buffer)))));
    t.ok(t._destroyAccessPages(access, first));
    const held = pagesId(t.ok(t.accessPages(access, A, len, t.buffer)));
    const d = t.mockDomain(s.ioas);
    t.ok(t.checkMap(d.hwpt, t.buffer, A, t.BUFFER_SIZE));
    t.destroy(d.stdev);
    t.ok(t._destroyAccessPages(access, held));
    t.ioasUnmap(s.ioas, A, t.BUFFER_SIZE);
  }
  t.destroyAccess(access);
});

TEST_F(iommufd_ioas, 'access_pin_unmap', (t, s) => {
  const access = t.createAccess(s.ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
  t.ioasMapFixed(s.ioas, t.buffer, t.BUFFER_SIZE, MOCK_APERTURE_START);
  const r = t.ok(t.accessPages(access, MOCK_APERTURE_START, t.BUFFER_SIZE, t.buffer));
  t.ioasUnmap(s.ioas, MOCK_APERTURE_START, t.BUFFER_SIZE);
  t.err(
    'ENOENT',
    t._destroyAccessPages(access, (r.out['access_pages'] as Record<string, number>)['out_access_pages_id']!),
  );
});

/** check_access_rw: deterministic pseudo-random data instead of rand(). */
function checkAccessRw(t: Kt, access: number, iova: bigint, defFlags: number): void {
  let seed = 12345;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed >>> 16;
  };
  const fill = new Uint8Array(t.BUFFER_SIZE);
  for (let i = 0; i < fill.length; i++) fill[i] = rnd() & 0xff;
  t.p.poke(t.buffer, fill);
  const tmp = t.mmap(PAGE_SIZE);
  for (let io = iova + BigInt(PAGE_SIZE) - 50n; io < iova + BigInt(PAGE_SIZE) + 50n; io++) {
    for (let len = 1; len < 64; len += 7) {
      t.ok(t.accessRw(access, io, len, tmp, defFlags));
      const off = t.buffer + Number(io - iova);
      assert.deepEqual(t.p.peek(tmp, len), t.p.peek(off, len));
      const w = new Uint8Array(len);
      for (let i = 0; i < len; i++) w[i] = rnd() & 0xff;
      t.p.poke(tmp, w);
      t.ok(t.accessRw(access, io, len, tmp, defFlags | MOCK_ACCESS_RW_WRITE));
      assert.deepEqual(t.p.peek(off, len), w);
    }
  }
  const tmp2 = t.mmap(t.BUFFER_SIZE);
  t.ok(t.accessRw(access, iova, t.BUFFER_SIZE, tmp2, defFlags));
  assert.deepEqual(t.p.peek(tmp2, t.BUFFER_SIZE), t.p.peek(t.buffer, t.BUFFER_SIZE));
}

TEST_F(iommufd_ioas, 'access_rw', (t, s) => {
  const access = t.createAccess(s.ioas, 0);
  const iova = t.ioasMap(s.ioas, t.buffer, t.BUFFER_SIZE);
  checkAccessRw(t, access, iova, 0);
  checkAccessRw(t, access, iova, MOCK_ACCESS_RW_SLOW_PATH);
  t.ioasUnmap(s.ioas, iova, t.BUFFER_SIZE);
  t.destroyAccess(access);
});

TEST_F(iommufd_ioas, 'access_rw_unaligned', (t, s) => {
  const access = t.createAccess(s.ioas, 0);
  const iova = s.base + BigInt(MOCK_PAGE_SIZE);
  t.ioasMapFixed(s.ioas, t.buffer, t.BUFFER_SIZE, iova);
  checkAccessRw(t, access, iova, 0);
  t.ioasUnmap(s.ioas, iova, t.BUFFER_SIZE);
  t.destroyAccess(access);
});

TEST_F(iommufd_ioas, 'fork_gone', (t, s) => {
  const access = t.createAccess(s.ioas, 0);
  const parent = t.p;
  const child = parent.fork();
  (t as { p: typeof child }).p = child;
  t.ioasMapFixed(s.ioas, t.buffer, t.BUFFER_SIZE, MOCK_APERTURE_START);
  child.exit();
  (t as { p: typeof child }).p = parent;
  if (s.stdev) {
    t.mockDomain(s.ioas);
    checkAccessRw(t, access, BigInt(MOCK_APERTURE_START), 0);
  } else {
    t.err('EFAULT', t._mockDomain(s.ioas));
  }
  t.destroyAccess(access);
});

TEST_F(iommufd_ioas, 'fork_present', (t, s) => {
  const access = t.createAccess(s.ioas, 0);
  const parent = t.p;
  const child = parent.fork();
  (t as { p: typeof child }).p = child;
  t.ioasMapFixed(s.ioas, t.buffer, t.BUFFER_SIZE, MOCK_APERTURE_START);
  (t as { p: typeof child }).p = parent;
  t.mockDomain(s.ioas);
  checkAccessRw(t, access, BigInt(MOCK_APERTURE_START), 0);
  child.exit();
  t.destroyAccess(access);
});

TEST_F(iommufd_ioas, 'ioas_option_huge_pages', (t, s) => {
  const opt = (op: number, val64: bigint) =>
    t.ioctl('IOMMU_OPTION', { option_id: 1, op, val64, object_id: s.ioas });
  assert.equal(t.ok(opt(1, 3n)).out['val64'], 1n);
  t.ok(opt(0, 0n));
  assert.equal(t.ok(opt(1, 3n)).out['val64'], 0n);
  t.err('EINVAL', opt(0, 2n));
  t.ok(opt(0, 1n));
});

TEST_F(iommufd_ioas, 'ioas_iova_alloc', (t, s, v) => {
  for (let length = 1; length !== PAGE_SIZE * 2; length++) {
    if (v.mock_domains && length % MOCK_PAGE_SIZE)
      t.err('EINVAL', t._ioasMap(s.ioas, t.buffer, length, 0, MAP_RW));
    else t.ioasUnmap(s.ioas, t.ioasMap(s.ioas, t.buffer, length), length);
  }
});

TEST_F(iommufd_ioas, 'ioas_align_change', (t, s, v) => {
  const opt = (val64: bigint) => t.ioctl('IOMMU_OPTION', { option_id: 1, op: 0, val64, object_id: s.ioas });
  if (v.mock_domains) return;
  const A = BigInt(MOCK_APERTURE_START);
  const P = BigInt(PAGE_SIZE);
  t.ioasMapFixed(s.ioas, t.buffer, P, A);
  t.ok(opt(0n));
  t.err('EINVAL', t._ioasMap(s.ioas, t.buffer + MOCK_PAGE_SIZE, P, A + P, MAP_RW | MAP_FIXED_IOVA));
  t.ok(opt(0n));
  t.ok(opt(1n));
  t.ioasMapFixed(s.ioas, t.buffer + MOCK_PAGE_SIZE, P, A + P);
  t.err('EADDRINUSE', opt(0n));
  t.ioasUnmap(s.ioas, A + P, P);
  t.ioasUnmap(s.ioas, A, P);
});

TEST_F(iommufd_ioas, 'copy_sweep', (t, s, v) => {
  const dst = t.ioasAlloc();
  const A = BigInt(MOCK_APERTURE_START);
  const last = v.mock_domains ? A + BigInt(t.BUFFER_SIZE) - 1n : A + BigInt(t.BUFFER_SIZE) - 2n;
  t.ioasMapFixed(s.ioas, t.buffer, last - A + 1n, A);
  const len = BigInt(MOCK_PAGE_SIZE);
  for (let iova = A - BigInt(PAGE_SIZE); iova <= last; iova += 511n) {
    const r = t.ioctl('IOMMU_IOAS_COPY', {
      flags: MAP_FIXED_IOVA | (1 << 1),
      src_ioas_id: s.ioas,
      dst_ioas_id: dst,
      dst_iova: A,
      length: len,
      src_iova: iova,
    });
    if (iova < A || iova + len - 1n > last) t.err('ENOENT', r);
    else {
      t.ok(r);
      t.ioasUnmap(dst, A, len);
    }
  }
  t.destroy(dst);
});

TEST_F(iommufd_ioas, 'dmabuf_simple', (t, s) => {
  const size = PAGE_SIZE * 4;
  const dfd = t.getDmabuf(size);
  t.err('EINVAL', t._ioasMapFile(s.ioas, dfd, 0, 0, 0, MAP_RW));
  t.err('EINVAL', t._ioasMapFile(s.ioas, dfd, size, size, 0, MAP_RW));
  t.err('EINVAL', t._ioasMapFile(s.ioas, dfd, 0, size + 1, 0, MAP_RW));
  t.ioasMapFile(s.ioas, dfd, 0, size);
  t.p.close(dfd);
});

TEST_F(iommufd_ioas, 'dmabuf_revoke', (t, s, v) => {
  const size = PAGE_SIZE * 4;
  const dfd = t.getDmabuf(size);
  const iova = t.ioasMapFile(s.ioas, dfd, 0, size);
  t.revokeDmabuf(dfd, true);
  if (v.mock_domains) t.hwptAlloc(s.device, s.ioas, 0);
  t.err('ENODEV', t._ioasMapFile(s.ioas, dfd, 0, size, 0, MAP_RW));
  t.revokeDmabuf(dfd, false);
  t.ioasMapFile(s.ioas, dfd, 0, size);
  // Restore the iova back
  t.ioasUnmap(s.ioas, iova, size);
  t.ok(t._ioasMapFile(s.ioas, dfd, 0, size, iova, MAP_RW | MAP_FIXED_IOVA));
  t.p.close(dfd);
});

// ================================================================================================
// FIXTURE(iommufd_mock_domain)
// ================================================================================================

interface MdVariant {
  mock_domains: number;
  hugepages: boolean;
  file: boolean;
}
interface MdSelf {
  ioas: number;
  hwptIds: number[];
  stdevIds: number[];
  idevIds: number[];
  mmapFlags: number;
  mmapBufSize: number;
}

const iommufd_mock_domain: Fixture<MdVariant, MdSelf> = {
  name: 'iommufd_mock_domain',
  variants: {
    one_domain: { mock_domains: 1, hugepages: false, file: false },
    two_domains: { mock_domains: 2, hugepages: false, file: false },
    one_domain_hugepage: { mock_domains: 1, hugepages: true, file: false },
    two_domains_hugepage: { mock_domains: 2, hugepages: true, file: false },
    one_domain_file: { mock_domains: 1, hugepages: false, file: true },
    one_domain_file_hugepage: { mock_domains: 1, hugepages: true, file: true },
  },
  setup(t, v) {
    const s: MdSelf = {
      ioas: t.ioasAlloc(),
      hwptIds: [0, 0],
      stdevIds: [0, 0],
      idevIds: [0, 0],
      mmapFlags: 0,
      mmapBufSize: 0,
    };
    for (let i = 0; i < v.mock_domains; i++) {
      const d = t.mockDomain(s.ioas);
      s.stdevIds[i] = d.stdev;
      s.hwptIds[i] = d.hwpt;
      s.idevIds[i] = d.idev;
      for (let c = 0; c < 4; c++) t.ok(t.devCheckCache(s.idevIds[0]!, c, IOMMU_TEST_DEV_CACHE_DEFAULT));
    }
    s.mmapFlags = MAP_SHARED | MAP_ANONYMOUS;
    s.mmapBufSize = PAGE_SIZE * 8;
    if (v.hugepages) {
      s.mmapFlags |= MAP_HUGETLB | MAP_POPULATE;
      s.mmapBufSize = HUGEPAGE_SIZE * 2;
    }
    return s;
  },
};

function checkMockIova(t: Kt, s: MdSelf, va: number, iova: bigint, length: number): void {
  t.ok(t.checkMap(s.hwptIds[0]!, va, iova, length), 'check_mock_iova');
  if (s.hwptIds[1]) t.ok(t.checkMap(s.hwptIds[1], va, iova, length), 'check_mock_iova [1]');
}

/** memfd_mmap: a memfd of `length` mapped with `flags`. */
function memfdMmap(t: Kt, length: number, flags: number): { buf: number; mfd: number } {
  const mfd = t.p.memfdCreate('buffer', (flags & MAP_HUGETLB) !== 0);
  assert.equal(t.p.ftruncate(mfd, length), undefined);
  const buf = t.okNum(t.p.mmap(length, PROT_READ | PROT_WRITE, flags & ~MAP_HUGETLB, mfd, 0));
  return { buf, mfd };
}

TEST_F(iommufd_mock_domain, 'basic', (t, s, v) => {
  const bufSize = s.mmapBufSize;
  if (v.file) {
    const iova = t.ioasMapFile(s.ioas, t.mfd, 0, PAGE_SIZE);
    checkMockIova(t, s, t.mfdBuffer, iova, PAGE_SIZE);
    const { mfd } = memfdMmap(t, bufSize, MAP_SHARED);
    t.err('EINVAL', t._ioasMapFile(s.ioas, mfd, 0, bufSize + 1, 0, MAP_RW));
    assert.equal(t.p.ftruncate(mfd, 0), undefined);
    t.err('EINVAL', t._ioasMapFile(s.ioas, mfd, 0, bufSize, 0, MAP_RW));
    t.p.close(mfd);
  } else {
    const iova = t.ioasMap(s.ioas, t.buffer, PAGE_SIZE);
    checkMockIova(t, s, t.buffer, iova, PAGE_SIZE);
    const buf = t.mmap(bufSize, s.mmapFlags);
    assert.equal(t.p.munmap(buf + bufSize / 2, bufSize / 2), undefined);
    t.err('EFAULT', t._ioasMap(s.ioas, buf, bufSize, 0, MAP_RW));
    assert.equal(t.p.munmap(buf, bufSize / 2), undefined);
    t.err('EFAULT', t._ioasMap(s.ioas, buf, bufSize, 0, MAP_RW));
  }
});

TEST_F(iommufd_mock_domain, 'ro_unshare', (t, s) => {
  // open("/proc/self/exe") stands in as any regular file: a memfd with content.
  const { mfd } = memfdMmap(t, PAGE_SIZE, MAP_SHARED);
  t.p.poke(
    t.okNum(t.p.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0)),
    new Uint8Array(PAGE_SIZE).fill(7),
  );
  const buf = t.okNum(t.p.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0));
  t.p.close(mfd);
  const r = t.ok(t._ioasMap(s.ioas, buf, PAGE_SIZE, 0, 1 << 2));
  const iova = r.out['iova'] as bigint;
  checkMockIova(t, s, buf, iova, PAGE_SIZE);
  t.p.poke(buf, new Uint8Array(PAGE_SIZE).fill(1));
  checkMockIova(t, s, buf, iova, PAGE_SIZE);
  assert.equal(t.p.munmap(buf, PAGE_SIZE), undefined);
});

function allAligns(t: Kt, s: MdSelf, v: MdVariant, copy: boolean): void {
  const step = v.hugepages ? s.mmapBufSize / 16 : MOCK_PAGE_SIZE;
  const bufSize = s.mmapBufSize;
  let buf: number;
  let mfd = -1;
  if (v.file) ({ buf, mfd } = memfdMmap(t, bufSize, MAP_SHARED | (v.hugepages ? MAP_HUGETLB : 0)));
  else buf = t.mmap(bufSize, s.mmapFlags);
  t.checkRefs(buf, bufSize, 0);
  for (let start = 0; start < bufSize; start += step) {
    let end = v.hugepages ? bufSize : start + MOCK_PAGE_SIZE;
    for (; end < bufSize; end += MOCK_PAGE_SIZE) {
      const length = end - start;
      const iova = v.file
        ? t.ioasMapFile(s.ioas, mfd, start, length)
        : t.ioasMap(s.ioas, buf + start, length);
      let stdev = 0;
      const old = s.hwptIds[1]!;
      if (copy) {
        const d = t.mockDomain(s.ioas);
        stdev = d.stdev;
        s.hwptIds[1] = d.hwpt;
      }
      checkMockIova(t, s, buf + start, iova, length);
      const lo = Math.floor(start / PAGE_SIZE) * PAGE_SIZE;
      const hi = Math.floor(end / PAGE_SIZE) * PAGE_SIZE;
      if (hi > lo) t.checkRefs(buf + lo, hi - lo, 1);
      if (copy) {
        t.destroy(stdev);
        s.hwptIds[1] = old;
      }
      t.ioasUnmap(s.ioas, iova, length);
    }
  }
  t.checkRefs(buf, bufSize, 0);
  assert.equal(t.p.munmap(buf, bufSize), undefined);
  if (v.file) t.p.close(mfd);
}

TEST_F(iommufd_mock_domain, 'all_aligns', (t, s, v) => allAligns(t, s, v, false));
TEST_F(iommufd_mock_domain, 'all_aligns_copy', (t, s, v) => allAligns(t, s, v, true));

TEST_F(iommufd_mock_domain, 'user_copy', (t, s, v) => {
  const buf = v.file ? t.mfdBuffer : t.buffer;
  const A = BigInt(MOCK_APERTURE_START);
  const mapSrc = (ioas: number) =>
    v.file ? t.ioasMapFile(ioas, t.mfd, 0, t.BUFFER_SIZE) : t.ioasMap(ioas, buf, t.BUFFER_SIZE);
  const copy = (src: number, srcIova: bigint) =>
    t.ioctl('IOMMU_IOAS_COPY', {
      flags: MAP_FIXED_IOVA | (1 << 1),
      dst_ioas_id: s.ioas,
      dst_iova: A,
      length: BigInt(t.BUFFER_SIZE),
      src_ioas_id: src,
      src_iova: srcIova,
    });
  const ioas = t.ioasAlloc();
  let srcIova = mapSrc(ioas);
  const access = t.createAccess(ioas, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
  t.ok(t.accessPages(access, srcIova, t.BUFFER_SIZE, buf));
  t.ok(copy(ioas, srcIova));
  checkMockIova(t, s, buf, A, t.BUFFER_SIZE);
  const newIoas = t.ioasAlloc();
  srcIova = mapSrc(newIoas);
  t.ok(t.testCmd(11, access, 'access_replace_ioas', { ioas_id: newIoas }));
  t.ioasUnmap(s.ioas, A, t.BUFFER_SIZE);
  t.destroy(ioas);
  const r = t.ok(t.accessPages(access, srcIova, t.BUFFER_SIZE, buf));
  t.ok(copy(newIoas, srcIova));
  checkMockIova(t, s, buf, A, t.BUFFER_SIZE);
  t.ok(
    t._destroyAccessPages(access, (r.out['access_pages'] as Record<string, number>)['out_access_pages_id']!),
  );
  t.destroyAccess(access);
  t.destroy(newIoas);
});

TEST_F(iommufd_mock_domain, 'replace', (t, s, v) => {
  const ioas = t.ioasAlloc();
  t.mockDomainReplace(s.stdevIds[0]!, ioas);
  if (v.mock_domains === 1) t.err('ENOENT', t._mockDomainReplace(s.stdevIds[0]!, s.hwptIds[0]!));
  t.mockDomainReplace(s.stdevIds[0]!, ioas);
  if (v.mock_domains >= 2) {
    t.mockDomainReplace(s.stdevIds[0]!, s.hwptIds[1]!);
    t.mockDomainReplace(s.stdevIds[0]!, s.hwptIds[1]!);
    t.mockDomainReplace(s.stdevIds[0]!, s.hwptIds[0]!);
  }
  t.mockDomainReplace(s.stdevIds[0]!, s.ioas);
  t.destroy(ioas);
});

TEST_F(iommufd_mock_domain, 'alloc_hwpt', (t, s, v) => {
  for (let i = 0; i < v.mock_domains; i++) {
    t.err('EOPNOTSUPP', t._hwptAlloc(s.idevIds[i]!, s.ioas, ~NEST_PARENT >>> 0));
    const h0 = t.hwptAlloc(s.idevIds[i]!, s.ioas, 0);
    const h1 = t.hwptAlloc(s.idevIds[i]!, s.ioas, NEST_PARENT);
    t.mockDomainReplace(s.stdevIds[i]!, h0);
    t.err('EBUSY', t._destroy(h0));
    t.mockDomainReplace(s.stdevIds[i]!, h1);
    t.err('EBUSY', t._destroy(h1));
    t.mockDomainReplace(s.stdevIds[i]!, s.ioas);
    t.destroy(h1);
    const d = t.mockDomain(h0);
    t.destroy(d.stdev);
    t.destroy(h0);
  }
});

// ================================================================================================
// FIXTURE(iommufd_dirty_tracking)
// ================================================================================================

interface DtVariant {
  buffer_size: number;
  hugepages: boolean;
}
interface DtSelf {
  ioas: number;
  hwpt: number;
  stdev: number;
  idev: number;
  buffer: number;
  bitmap: number;
  bitmapSize: number;
}

const iommufd_dirty_tracking: Fixture<DtVariant, DtSelf> = {
  name: 'iommufd_dirty_tracking',
  variants: {
    domain_dirty8k: { buffer_size: 8 * 1024, hugepages: false },
    domain_dirty16k: { buffer_size: 16 * 1024, hugepages: false },
    domain_dirty64k: { buffer_size: 64 * 1024, hugepages: false },
    domain_dirty128k: { buffer_size: 128 * 1024, hugepages: false },
    domain_dirty320k: { buffer_size: 320 * 1024, hugepages: false },
    domain_dirty64M: { buffer_size: 64 * 1024 * 1024, hugepages: false },
    domain_dirty64M_huge: { buffer_size: 64 * 1024 * 1024, hugepages: true },
    domain_dirty128M: { buffer_size: 128 * 1024 * 1024, hugepages: false },
    domain_dirty128M_huge: { buffer_size: 128 * 1024 * 1024, hugepages: true },
  },
  setup(t, v) {
    let flags = MAP_SHARED | MAP_ANONYMOUS;
    let size = v.buffer_size;
    if (v.hugepages) {
      flags |= MAP_HUGETLB | MAP_POPULATE;
      size = Math.max(size, HUGEPAGE_SIZE);
    }
    const buffer = t.mmap(size, flags);
    const bitmapSize = v.buffer_size / MOCK_PAGE_SIZE;
    const bitmap = t.mmap(Math.ceil(bitmapSize / 8) + PAGE_SIZE);
    const ioas = t.ioasAlloc();
    const d = v.hugepages ? t.mockDomain(ioas, MOCK_FLAGS_DEVICE_HUGE_IOVA) : t.mockDomain(ioas);
    return { ioas, hwpt: d.hwpt, stdev: d.stdev, idev: d.idev, buffer, bitmap, bitmapSize };
  },
};

function setDirtyTracking(t: Kt, hwpt: number, on: boolean): void {
  t.ok(t.ioctl('IOMMU_HWPT_SET_DIRTY_TRACKING', { hwpt_id: hwpt, flags: on ? 1 : 0 }));
}

/** _test_mock_dirty_bitmaps */
function mockDirtyBitmaps(
  t: Kt,
  hwpt: number,
  length: number,
  iova: bigint,
  pageSize: number,
  pteSize: number,
  bitmap: number,
  nbits: number,
  flags: number,
): void {
  const npte = pteSize / pageSize;
  const pteset = 2 * npte;
  const nr = Math.floor(nbits / pteset) || 1;
  const size = Math.ceil(nbits / 8);
  const bits = new Uint8Array(size);
  for (let i = 0; i < nbits; i += pteset) bits[i >> 3]! |= 1 << (i & 7);
  t.p.poke(bitmap, bits);
  const r = t.ok(
    t.testCmd(13, hwpt, 'dirty', {
      iova,
      length: BigInt(length),
      page_size: BigInt(pageSize),
      uptr: BigInt(bitmap),
    }),
  );
  assert.equal((r.out['dirty'] as Record<string, bigint>)['out_nr_dirty'], BigInt(nr));
  const get = () => {
    t.p.poke(bitmap, new Uint8Array(size));
    t.ok(
      t.ioctl('IOMMU_HWPT_GET_DIRTY_BITMAP', {
        hwpt_id: hwpt,
        flags,
        iova,
        length: BigInt(length),
        page_size: BigInt(pageSize),
        data: BigInt(bitmap),
      }),
    );
    return t.p.peek(bitmap, size) as Uint8Array;
  };
  const test_bit = (b: Uint8Array, i: number) => ((b[i >> 3]! >> (i & 7)) & 1) === 1;
  let b = get();
  for (let i = 0; i < nbits; i += pteset) {
    for (let j = 0; j < pteset; j++) assert.equal(test_bit(b, i + j), j < npte, `bit ${i + j}`);
  }
  b = get();
  for (let i = 0; i < nbits; i += pteset)
    for (let j = 0; j < pteset; j++)
      assert.equal(test_bit(b, i + j), j < npte && (flags & GET_DIRTY_BITMAP_NO_CLEAR) !== 0);
}

TEST_F(iommufd_dirty_tracking, 'enforce_dirty', (t, s) => {
  const h = t.hwptAlloc(s.idev, s.ioas, DIRTY_TRACKING);
  const d = t.mockDomain(h);
  t.err('EINVAL', t._mockDomain(h, MOCK_FLAGS_DEVICE_NO_DIRTY));
  t.destroy(d.stdev);
  t.destroy(h);
  const ioas = t.ioasAlloc();
  const d2 = t.mockDomain(ioas, MOCK_FLAGS_DEVICE_NO_DIRTY);
  t.err('EOPNOTSUPP', t._hwptAlloc(d2.idev, ioas, DIRTY_TRACKING));
  t.destroy(d2.stdev);
});

TEST_F(iommufd_dirty_tracking, 'set_dirty_tracking', (t, s) => {
  const h = t.hwptAlloc(s.idev, s.ioas, DIRTY_TRACKING);
  const d = t.mockDomain(h);
  setDirtyTracking(t, h, true);
  setDirtyTracking(t, h, false);
  t.destroy(d.stdev);
  t.destroy(h);
});

TEST_F(iommufd_dirty_tracking, 'pasid_set_dirty_tracking', (t, s) => {
  const h = t.hwptAlloc(s.idev, s.ioas, ALLOC_PASID | DIRTY_TRACKING);
  const d = t.mockDomain(h, MOCK_FLAGS_DEVICE_PASID);
  t.ok(t._pasidAttach(d.stdev, 100, h));
  setDirtyTracking(t, h, true);
  setDirtyTracking(t, h, false);
  t.ok(t._pasidDetach(d.stdev, 100));
  t.destroy(d.stdev);
  const ioas = t.ioasAlloc();
  const d2 = t.mockDomain(ioas, MOCK_FLAGS_DEVICE_PASID | MOCK_FLAGS_DEVICE_NO_DIRTY);
  t.err('EINVAL', t._pasidAttach(d2.stdev, 100, h));
  t.destroy(d2.stdev);
  t.destroy(h);
});

TEST_F(iommufd_dirty_tracking, 'device_dirty_capability', (t, s) => {
  const h = t.hwptAlloc(s.idev, s.ioas, 0);
  const d = t.mockDomain(h);
  const r = t.ok(t.getHwInfo(s.idev, 0).r);
  assert.equal(
    (r.out['out_capabilities'] as bigint) & IOMMU_HW_CAP_DIRTY_TRACKING,
    IOMMU_HW_CAP_DIRTY_TRACKING,
  );
  t.destroy(d.stdev);
  t.destroy(h);
});

function getDirtyBitmapTest(t: Kt, s: DtSelf, v: DtVariant, flags: number): void {
  const pte = v.hugepages ? MOCK_HUGE_PAGE_SIZE : MOCK_PAGE_SIZE;
  const ioas = t.ioasAlloc();
  t.ioasMapFixed(ioas, s.buffer, v.buffer_size, MOCK_APERTURE_START);
  const h = t.hwptAlloc(s.idev, ioas, DIRTY_TRACKING);
  setDirtyTracking(t, h, true);
  const A = BigInt(MOCK_APERTURE_START);
  mockDirtyBitmaps(t, h, v.buffer_size, A, MOCK_PAGE_SIZE, pte, s.bitmap, s.bitmapSize, flags);
  mockDirtyBitmaps(
    t,
    h,
    v.buffer_size,
    A,
    MOCK_PAGE_SIZE,
    pte,
    s.bitmap + MOCK_PAGE_SIZE,
    s.bitmapSize,
    flags,
  );
  mockDirtyBitmaps(t, h, v.buffer_size, A, MOCK_PAGE_SIZE, pte, s.bitmap + 0xff1, s.bitmapSize, flags);
  t.destroy(h);
}

TEST_F(iommufd_dirty_tracking, 'get_dirty_bitmap', (t, s, v) => getDirtyBitmapTest(t, s, v, 0));
TEST_F(iommufd_dirty_tracking, 'get_dirty_bitmap_no_clear', (t, s, v) =>
  getDirtyBitmapTest(t, s, v, GET_DIRTY_BITMAP_NO_CLEAR),
);

// ================================================================================================
// FIXTURE(vfio_compat_mock_domain)
// ================================================================================================

const vfio_compat_mock_domain: Fixture<{ version: number }, { ioas: number }> = {
  name: 'vfio_compat_mock_domain',
  variants: { Ver1v2: { version: VFIO_TYPE1v2_IOMMU }, Ver1v0: { version: VFIO_TYPE1_IOMMU } },
  setup(t, v) {
    const ioas = t.ioasAlloc();
    t.mockDomain(ioas);
    t.ok(t.ioctl('IOMMU_VFIO_IOAS', { op: 1, ioas_id: ioas }));
    assert.equal(t.ioctlValue('VFIO_SET_IOMMU', v.version).ret, 0);
    return { ioas };
  },
};

TEST_F(vfio_compat_mock_domain, 'simple_close', () => {});

TEST_F(vfio_compat_mock_domain, 'option_huge_pages', (t, s, v) => {
  const r = t.ok(t.ioctl('IOMMU_OPTION', { option_id: 1, op: 1, val64: 3n, object_id: s.ioas }));
  assert.equal(r.out['val64'], v.version === VFIO_TYPE1_IOMMU ? 0n : 1n);
});

TEST_F(vfio_compat_mock_domain, 'get_info', (t) => {
  const info = (argsz: number) => {
    const bytes = new Uint8Array(t.BUFFER_SIZE).fill(0xaa);
    bytes.fill(0, 0, 24);
    new DataView(bytes.buffer).setUint32(0, argsz, true);
    const r = t.ioctl('VFIO_IOMMU_GET_INFO', {}, { bytes });
    t.ok(r);
    // ioctl_check_buf: nothing written past argsz
    for (let i = Math.max(argsz, 24); i < bytes.length; i++) assert.equal(r.bytes[i], 0xaa);
    return r;
  };
  let r = info(16);
  assert.notEqual(r.out['iova_pgsizes'], 0n);
  assert.equal(r.out['flags'], 3);
  r = info(24);
  assert.equal(r.out['flags'], 3);
  assert.equal(r.out['cap_offset'], 0);
  const caplen = r.out['argsz'] as number;
  assert.ok(caplen > 24);
  for (let i = 24; i < caplen; i++) {
    r = info(i);
    assert.equal(r.out['flags'], 3);
    if (!r.out['cap_offset']) continue;
    // check_vfio_info_cap_chain
    const b = r.bytes;
    const dv = new DataView(b.buffer);
    let cap = r.out['cap_offset'] as number;
    for (;;) {
      const id = dv.getUint16(cap, true);
      const next = dv.getUint32(cap + 4, true);
      assert.equal(dv.getUint16(cap + 2, true), 1);
      if (id === 1) {
        assert.equal(dv.getUint32(cap + 8, true), 1);
        assert.equal(dv.getBigUint64(cap + 16, true), BigInt(MOCK_APERTURE_START));
        assert.equal(dv.getBigUint64(cap + 24, true), BigInt(MOCK_APERTURE_LAST));
      } else assert.equal(id, 3);
      if (!next) break;
      cap = next;
    }
  }
});

TEST_F(vfio_compat_mock_domain, 'map', (t) => {
  const A = BigInt(MOCK_APERTURE_START);
  const B = BigInt(t.BUFFER_SIZE);
  const map = (vaddr: bigint, iova: bigint, size: bigint) =>
    t.ioctl('VFIO_IOMMU_MAP_DMA', { flags: 3, vaddr, iova, size });
  const unmap = (iova: bigint, size: bigint, flags = 0) =>
    t.ioctl('VFIO_IOMMU_UNMAP_DMA', { iova, size, flags });
  t.ok(map(BigInt(t.buffer), A, B));
  assert.equal(t.ok(unmap(A, B)).out['size'], B);
  t.ok(map(BigInt(t.buffer), A, B));
  t.err('EINVAL', unmap(A, B, 2));
  assert.equal(t.ok(unmap(0n, 0n, 2)).out['size'], B);
  const P = BigInt(PAGE_SIZE);
  const iovas: bigint[] = [];
  for (let i = 0n; i < B / P; i++) {
    iovas.push(A + i * P);
    t.ok(map(BigInt(t.buffer) + i * P, A + i * P, P));
  }
  iovas.reverse();
  [iovas[0], iovas[5]] = [iovas[5]!, iovas[0]!];
  for (const io of iovas) t.ok(unmap(io, P));
});

TEST_F(vfio_compat_mock_domain, 'huge_map', (t, _s, v) => {
  const size = 2 * HUGEPAGE_SIZE;
  const buf = t.mmap(size, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE);
  const A = BigInt(MOCK_APERTURE_START);
  t.ok(t.ioctl('VFIO_IOMMU_MAP_DMA', { flags: 3, vaddr: BigInt(buf), iova: A, size: BigInt(size) }));
  const piece = BigInt(size / 16);
  const order = [3, 0, 15, 7, 1, 12, 4, 9, 2, 14, 5, 11, 6, 13, 8, 10];
  for (const i of order) {
    const r = t.ioctl('VFIO_IOMMU_UNMAP_DMA', { iova: A + BigInt(i) * piece, size: piece });
    if (v.version === VFIO_TYPE1_IOMMU) t.ok(r);
    else t.err('ENOENT', r);
  }
});

// ================================================================================================
// FIXTURE(iommufd_viommu)
// ================================================================================================

interface ViSelf {
  ioas: number;
  stdev: number;
  hwpt: number;
  nested: number;
  device: number;
  viommu: number;
}

const iommufd_viommu: Fixture<{ viommu: number }, ViSelf> = {
  name: 'iommufd_viommu',
  variants: { no_viommu: { viommu: 0 }, mock_viommu: { viommu: 1 } },
  setup(t, v) {
    const s: ViSelf = { ioas: t.ioasAlloc(), stdev: 0, hwpt: 0, nested: 0, device: 0, viommu: 0 };
    t.ok(t.setTempMemoryLimit(65536));
    if (v.viommu) {
      const d = t.mockDomain(s.ioas);
      s.stdev = d.stdev;
      s.device = d.idev;
      s.hwpt = t.hwptAlloc(s.device, s.ioas, NEST_PARENT);
      s.viommu = t.ok(t.viommuAlloc(s.device, s.hwpt, IOMMU_VIOMMU_TYPE_SELFTEST)).out[
        'out_viommu_id'
      ] as number;
      s.nested = t.hwptAlloc(s.device, s.viommu, 0, {
        dataType: IOMMU_HWPT_DATA_SELFTEST,
        data: hwptSelftest(),
      });
    }
    return s;
  },
};

TEST_F(iommufd_viommu, 'viommu_auto_destroy', () => {});

TEST_F(iommufd_viommu, 'viommu_negative_tests', (t, s) => {
  if (s.device) {
    t.err('ENOENT', t.viommuAlloc(s.device, 0, IOMMU_VIOMMU_TYPE_SELFTEST));
    const h = t.hwptAlloc(s.device, s.ioas, 0);
    t.err('EINVAL', t.viommuAlloc(s.device, h, IOMMU_VIOMMU_TYPE_SELFTEST));
    t.destroy(h);
    t.err('EOPNOTSUPP', t.viommuAlloc(s.device, s.hwpt, 0xdead));
    t.err('EBUSY', t._destroy(s.hwpt));
    t.err('EBUSY', t._destroy(s.viommu));
  } else {
    t.err('ENOENT', t.viommuAlloc(s.device, s.hwpt, IOMMU_VIOMMU_TYPE_SELFTEST));
  }
});

TEST_F(iommufd_viommu, 'viommu_alloc_nested_iopf', (t, s) => {
  if (!s.device) return; // SKIP for no_viommu
  const data = hwptSelftest();
  const fault = t.faultAlloc();
  const SELF = IOMMU_HWPT_DATA_SELFTEST;
  t.err(
    'ENOENT',
    t._hwptAlloc(s.device, s.viommu, FAULT_ID_VALID, { faultId: UINT32_MAX, dataType: SELF, data }),
  );
  t.err(
    'EOPNOTSUPP',
    t._hwptAlloc(s.device, s.viommu, (FAULT_ID_VALID | (1 << 31)) >>> 0, {
      faultId: fault.id,
      dataType: SELF,
      data,
    }),
  );
  const iopf = t.hwptAlloc(s.device, s.viommu, FAULT_ID_VALID, { faultId: fault.id, dataType: SELF, data });
  t.err('ENOENT', t._mockDomainReplace(s.stdev, iopf));
  t.ok(t.vdeviceAlloc(s.viommu, s.device, 0x99));
  t.mockDomainReplace(s.stdev, iopf);
  t.err('EBUSY', t._destroy(iopf));
  t.triggerIopf(s.device, fault.fd);
  t.mockDomainReplace(s.stdev, s.ioas);
  t.destroy(iopf);
  t.p.close(fault.fd);
  t.destroy(fault.id);
});

TEST_F(iommufd_viommu, 'viommu_alloc_with_data', (t, s) => {
  if (!s.device) return; // SKIP for no_viommu
  // struct iommu_viommu_selftest { in_data; out_data; out_mmap_offset; out_mmap_length; }
  const data = new Uint8Array(24);
  new DataView(data.buffer).setUint32(0, 0xbeef, true);
  const va = t.place(data);
  const vid = t.ok(t.viommuAlloc(s.device, s.hwpt, IOMMU_VIOMMU_TYPE_SELFTEST, data, va)).out[
    'out_viommu_id'
  ] as number;
  const out = t.p.peek(va, 24) as Uint8Array;
  const dv = new DataView(out.buffer);
  assert.equal(dv.getUint32(4, true), 0xbeef);
  const off = Number(dv.getBigUint64(8, true));
  const len = Number(dv.getBigUint64(16, true));
  const mm = (l: number, o: number) => t.p.mmap(l, PROT_READ | PROT_WRITE, MAP_SHARED, t.fd, o);
  const errOf = (x: unknown) => (x as { code?: string }).code;
  assert.equal(errOf(mm(len, off + PAGE_SIZE)), 'ENXIO');
  assert.equal(errOf(mm(len, off + PAGE_SIZE * 2)), 'ENXIO');
  assert.equal(errOf(mm(len / 2, off)), 'ENXIO');
  assert.equal(errOf(mm(len * 2, off)), 'ENXIO');
  const test_ = t.okNum(mm(len, off));
  assert.equal(new DataView((t.p.peek(test_, 4) as Uint8Array).buffer).getUint32(0, true), 0xbeef);
  // The owner of the mmap region is blocked while it is mapped.
  t.err('EBUSY', t._destroy(vid));
  assert.equal(t.p.munmap(test_, len), undefined);
  t.destroy(vid);
});

TEST_F(iommufd_viommu, 'vdevice_alloc', (t, s) => {
  const SELFTEST_EVQ = 0xbeefbeef;
  if (s.device) {
    t.err('ENOENT', t._mockDomainReplace(s.stdev, s.nested));
    const q = t.ok(t._veventqAlloc(s.viommu, SELFTEST_EVQ));
    const qid = q.out['out_veventq_id'] as number;
    const qfd = q.out['out_veventq_fd'] as number;
    t.err('EEXIST', t._veventqAlloc(s.viommu, SELFTEST_EVQ));
    const prev = { seq: -1 };
    let vdev = t.ok(t.vdeviceAlloc(s.viommu, s.device, 0x99)).out['out_vdevice_id'] as number;
    t.mockDomainReplace(s.stdev, s.nested);
    t.triggerVevents(s.device, 1);
    assert.equal(t.readVevents(qfd, 1, 0x99, prev), null);
    t.err('EEXIST', t.vdeviceAlloc(s.viommu, s.device, 0x99));
    t.mockDomainReplace(s.stdev, s.ioas);
    t.destroy(vdev);
    vdev = t.ok(t.vdeviceAlloc(s.viommu, s.device, 0x88)).out['out_vdevice_id'] as number;
    t.mockDomainReplace(s.stdev, s.nested);
    t.triggerVevents(s.device, 3);
    assert.equal(t.readVevents(qfd, 3, 0x88, prev), 'EOVERFLOW');
    t.triggerVevents(s.device, 1);
    assert.equal(t.readVevents(qfd, 1, 0x88, prev), null);
    t.p.close(qfd);
    t.mockDomainReplace(s.stdev, s.ioas);
    t.destroy(vdev);
    t.destroy(qid);
  } else {
    t.err('ENOENT', t.vdeviceAlloc(s.viommu, s.device, 0x99));
  }
});

TEST_F(iommufd_viommu, 'hw_queue', (t, s) => {
  if (!s.viommu) return; // SKIP for no_viommu
  const Q = 0xdeadbeef;
  let iova = BigInt(MOCK_APERTURE_START);
  t.err('EOPNOTSUPP', t._hwQueueAlloc(s.viommu, 0, 0, iova, PAGE_SIZE));
  t.err('EINVAL', t._hwQueueAlloc(s.viommu, Q, 0, iova, 0));
  t.err('EOVERFLOW', t._hwQueueAlloc(s.viommu, Q, 0, U64_MAX, PAGE_SIZE));
  t.err('ENOENT', t._hwQueueAlloc(s.viommu, Q, 0, iova, PAGE_SIZE));
  iova = t.ioasMap(s.ioas, t.buffer, PAGE_SIZE);
  const iova2 = t.ioasMap(s.ioas, t.buffer + PAGE_SIZE, PAGE_SIZE);
  t.err('EIO', t._hwQueueAlloc(s.viommu, Q, 1, iova, PAGE_SIZE));
  t.err('EINVAL', t._hwQueueAlloc(s.viommu, Q, 2, iova, PAGE_SIZE));
  const q0 = t.ok(t._hwQueueAlloc(s.viommu, Q, 0, iova, PAGE_SIZE)).out['out_hw_queue_id'] as number;
  t.err('EEXIST', t._hwQueueAlloc(s.viommu, Q, 0, iova, PAGE_SIZE));
  t.err('EBUSY', t._ioasUnmap(s.ioas, iova, PAGE_SIZE));
  t.ioasUnmap(s.ioas, iova2, PAGE_SIZE);
  const q1 = t.ok(t._hwQueueAlloc(s.viommu, Q, 1, iova + BigInt(PAGE_SIZE / 2), PAGE_SIZE / 2)).out[
    'out_hw_queue_id'
  ] as number;
  t.err('EBUSY', t._destroy(q0));
  t.destroy(q1);
  t.destroy(q0);
  t.ioasUnmap(s.ioas, iova, PAGE_SIZE);
});

TEST_F(iommufd_viommu, 'vdevice_cache', (t, s) => {
  if (!s.device) return; // SKIP for no_viommu
  const vdev = t.ok(t.vdeviceAlloc(s.viommu, s.device, 0x99)).out['out_vdevice_id'] as number;
  const D = IOMMU_TEST_DEV_CACHE_DEFAULT;
  const caches = (v: number[]) => {
    for (const [i, x] of v.entries()) t.ok(t.devCheckCache(s.device, i, x));
  };
  caches([D, D, D, D]);
  const INV = IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
  const req = (...r: [number, number, number][]) => u32s(...r.flat());
  const inv = (b: Uint8Array | null, type: number, len: number, num: number, e?: ErrnoName) => {
    const r = t.invalidate(s.viommu, b, type, len, num);
    if (e) t.err(e, r.r);
    else t.ok(r.r);
    return r.num;
  };
  assert.equal(inv(req([0, 0, 0]), INV, 12, 0), 0);
  assert.equal(inv(req([0, 0, 0]), IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID, 12, 1, 'EINVAL'), 0);
  assert.equal(inv(req([0, 0, 0], [0, 0, 0]), INV, 13, 1, 'EINVAL'), 0);
  assert.equal(inv(req([0, 0, 0]), INV, 1, 1, 'EINVAL'), 0);
  assert.equal(inv(req([0xffffffff, 0x99, 0]), INV, 12, 1, 'EOPNOTSUPP'), 0);
  assert.equal(inv(null, INV, 12, 1, 'EINVAL'), 0);
  assert.equal(inv(req([0, 0x99, 0]), INV, 0, 1, 'EINVAL'), 0);
  assert.equal(inv(req([0, 0x99, 4]), INV, 12, 1, 'EINVAL'), 0);
  assert.equal(inv(req([0, 0x9, 0]), INV, 12, 1, 'EINVAL'), 0);
  assert.equal(inv(req([0, 0x99, 0], [0xffffffff, 0x99, 1]), INV, 12, 2, 'EOPNOTSUPP'), 1);
  caches([0, D, D, D]);
  assert.equal(inv(req([0, 0x99, 0], [0, 0x99, 4]), INV, 12, 2, 'EINVAL'), 1);
  caches([0, D, D, D]);
  assert.equal(inv(req([0, 0x99, 1]), INV, 12, 1), 1);
  caches([0, 0, D, D]);
  assert.equal(inv(req([0, 0x99, 2], [0, 0x99, 3]), INV, 12, 2), 2);
  caches([0, 0, 0, 0]);
  assert.equal(inv(req([IOMMU_TEST_INVALIDATE_FLAG_ALL, 0x99, 0]), INV, 12, 1), 1);
  caches([0, 0, 0, 0]);
  t.destroy(vdev);
});

TEST_F(iommufd_viommu, 'vdevice_tombstone', (t, s) => {
  if (!s.device) return; // SKIP for no_viommu
  const vdev = t.ok(t.vdeviceAlloc(s.viommu, s.device, 0x99)).out['out_vdevice_id'] as number;
  t.destroy(s.stdev);
  t.err('ENOENT', t._destroy(vdev));
});

// ================================================================================================
// FIXTURE(iommufd_device_pasid)
// ================================================================================================

interface DpSelf {
  ioas: number;
  hwpt: number;
  stdev: number;
  device: number;
  noPasidStdev: number;
  noPasidDevice: number;
}

const iommufd_device_pasid: Fixture<{ pasid_capable: boolean }, DpSelf> = {
  name: 'iommufd_device_pasid',
  variants: { no_pasid: { pasid_capable: false }, has_pasid: { pasid_capable: true } },
  setup(t, v) {
    const ioas = t.ioasAlloc();
    const d = t.mockDomain(ioas, MOCK_FLAGS_DEVICE_PASID);
    const s: DpSelf = {
      ioas,
      hwpt: d.hwpt,
      stdev: d.stdev,
      device: d.idev,
      noPasidStdev: 0,
      noPasidDevice: 0,
    };
    if (!v.pasid_capable) {
      const n = t.mockDomain(ioas, 0);
      s.noPasidStdev = n.stdev;
      s.noPasidDevice = n.idev;
    }
    return s;
  },
};

TEST_F(iommufd_device_pasid, 'pasid_attach', (t, s, v) => {
  const data = hwptSelftest();
  const SELF = IOMMU_HWPT_DATA_SELFTEST;
  let pasid = 100;
  const check = (p: number, h: number) => t.ok(t.pasidCheckHwpt(s.stdev, p, h), `check pasid ${p} = ${h}`);
  t.ok(t._pasidDetach(s.stdev, pasid));
  const parent = t.hwptAlloc(s.device, s.ioas, NEST_PARENT);
  const nested0 = t.hwptAlloc(s.device, parent, ALLOC_PASID, { dataType: SELF, data });
  const nested1 = t.hwptAlloc(s.device, parent, ALLOC_PASID, { dataType: SELF, data });
  const fault = t.faultAlloc();
  const iopf = t.hwptAlloc(s.device, parent, FAULT_ID_VALID | ALLOC_PASID, {
    faultId: fault.id,
    dataType: SELF,
    data,
  });
  const viommu = t.ok(t.viommuAlloc(s.device, parent, IOMMU_VIOMMU_TYPE_SELFTEST)).out[
    'out_viommu_id'
  ] as number;
  t.hwptAlloc(s.device, viommu, ALLOC_PASID, { dataType: SELF, data });
  const s2 = t.hwptAlloc(s.device, s.ioas, ALLOC_PASID);

  t.mockDomainReplace(s.stdev, parent);
  t.err('EINVAL', t._pasidAttach(s.stdev, pasid, s2));
  t.mockDomainReplace(s.stdev, s2);
  t.ok(t._pasidAttach(s.stdev, pasid, nested0));
  t.err('EINVAL', t._mockDomainReplace(s.stdev, parent));
  t.ok(t._pasidDetach(s.stdev, pasid));
  check(pasid, 0);

  if (!v.pasid_capable) {
    t.mockDomainReplace(s.noPasidStdev, nested0);
    t.mockDomainReplace(s.noPasidStdev, s.ioas);
    t.err('EINVAL', t._pasidAttach(s.noPasidStdev, pasid, parent));
    t.err('EINVAL', t._pasidAttach(s.noPasidStdev, pasid, s2));
  }

  t.err('EINVAL', t._pasidAttach(s.stdev, pasid, parent));
  check(pasid, 0);
  t.err('EINVAL', t._pasidAttach(s.stdev, pasid, s.ioas));
  check(pasid, 0);
  t.ok(t._pasidAttach(s.stdev, pasid, s2));
  check(pasid, s2);
  t.err('EBUSY', t._pasidAttach(s.stdev, pasid, nested0));
  t.ok(t._pasidDetach(s.stdev, pasid));
  check(pasid, 0);
  t.ok(t._pasidAttach(s.stdev, pasid, nested0));
  check(pasid, nested0);
  t.err('EBUSY', t._pasidAttach(s.stdev, pasid, nested0));
  t.ok(t._pasidDetach(s.stdev, pasid));

  pasid = 200;
  t.err('EINVAL', t._pasidReplace(s.stdev, pasid, s2));
  t.ok(t._pasidAttach(s.stdev, pasid, s2));
  check(pasid, s2);
  t.err('EINVAL', t._pasidReplace(s.stdev, pasid, s.ioas));
  check(pasid, s2);
  t.ok(t._pasidReplace(s.stdev, pasid, nested0));
  check(pasid, nested0);
  t.ok(t._pasidReplace(s.stdev, pasid, nested1));
  check(pasid, nested1);
  t.ok(t._pasidDetach(s.stdev, pasid));

  pasid = 1024;
  t.ok(t._pasidAttach(s.stdev, pasid, s2));
  check(pasid, s2);
  t.err('ENOMEM', t._pasidReplace(s.stdev, pasid, nested0));
  check(pasid, s2);
  t.ok(t._pasidDetach(s.stdev, pasid));

  pasid = 2048;
  t.ok(t._pasidAttach(s.stdev, pasid, iopf));
  check(pasid, iopf);
  t.triggerIopf(s.device, fault.fd, pasid);
  t.ok(t._pasidReplace(s.stdev, pasid, s2));
  check(pasid, s2);
  t.ok(t._pasidDetach(s.stdev, pasid));
  t.destroy(iopf);
  t.p.close(fault.fd);
  t.destroy(fault.id);
  t.mockDomainReplace(s.stdev, s.ioas);
});

void MOCK_PAGE_SIZE;
void IOMMU_HW_INFO_TYPE_DEFAULT;
