// Port of tools/testing/selftests/iommu/iommufd_fail_nth.c (research iommufd.md C.2): each
// body runs once without injection (it must succeed), then again with the Nth fault site
// failing, N = 1, 2, ... until a run completes without reaching the Nth site; any errno is an
// acceptable outcome of an injected run. After every iteration the fixture teardown closes
// everything and the model must be back to zero: no live context, object, pinned page,
// charged page, mock domain or mock device state left (the kernel test relies on KASAN/kmemleak
// and MD_CHECK_REFS for the same proof). The fault sites are every allocation, lookup and pin
// site of the model (FaultInjector, src/core/fault.ts).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { IommufdHost, ioctl } from './engine.ts';
import { MAP_ANONYMOUS, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE, type Process } from './process.ts';
import { build, decodeAny, IOCTLS, type IoctlName } from './uapi/index.ts';

const MOCK_APERTURE_START = 1n << 24n;
const RW = (1 << 1) | (1 << 2);
const FIXED = 1;
const BUFFER_SIZE = 2 * 1024 * 1024;

/** FIXTURE(basic_fail_nth), with the process-global buffer and memfd of the kernel test. */
class State {
  readonly host = new IommufdHost();
  readonly p: Process = this.host.spawn();
  readonly buffer: number;
  readonly mfd: number;
  fd = -1;
  accessId = 0;
  stdevId = 0;
  pasid = 0;
  constructor() {
    this.buffer = this.p.mmap(BUFFER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
    this.mfd = this.p.memfdCreate('buffer');
    this.p.ftruncate(this.mfd, BUFFER_SIZE);
    this.p.mmap(BUFFER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, this.mfd, 0);
  }
  setup(): void {
    this.fd = -1;
    this.accessId = 0;
    this.stdevId = 0;
    this.pasid = 0;
  }
  /** ioctl; null on failure (the bodies "return -1"), else the struct as written back. */
  io(name: IoctlName, fields: Record<string, unknown>): Record<string, unknown> | null {
    const def = IOCTLS[name];
    const r = ioctl(this.p, this.fd, def.cmd, build(def.struct!, fields));
    return r.ret === 0 ? decodeAny(def.struct!, r.arg) : null;
  }
  test(
    op: number,
    id: number,
    member: string | null,
    fields: Record<string, unknown> = {},
  ): Record<string, unknown> | null {
    const r = this.io('IOMMU_TEST_CMD', member ? { op, id, [member]: fields } : { op, id });
    return r && member ? (r[member] as Record<string, unknown>) : r;
  }
  teardown(): void {
    if (this.accessId) assert.equal(this.p.close(this.accessId), undefined);
    if (this.pasid && this.stdevId) this.test(20, this.stdevId, 'pasid_detach', { pasid: this.pasid });
    if (this.fd !== -1) {
      assert.equal(this.p.close(this.fd), undefined);
      // teardown_iommufd: reopen and check no page of the buffer is pinned.
      const fd = this.p.open('/dev/iommu');
      assert.equal(typeof fd, 'number');
      this.fd = fd as number;
      assert.ok(
        this.test(4, 0, 'check_refs', { length: BigInt(BUFFER_SIZE), uptr: BigInt(this.buffer), refs: 0 }),
      );
      this.p.close(this.fd);
      this.fd = -1;
    }
    this.checkNoLeaks();
  }
  /** Everything the model allocates on behalf of the process is back to zero. */
  checkNoLeaks(): void {
    this.host.checkInvariants();
    for (const ctx of this.host.contexts) assert.equal(ctx.closed, true, 'an iommufd context is still open');
    assert.equal(this.host.phys.totalPins(), 0, 'pinned pages leaked');
    assert.equal(this.p.mm.pinnedVm, 0, 'VmPin leaked');
    assert.equal(this.p.mm.lockedVm, 0, 'VmLck leaked');
    assert.equal(this.p.user.lockedVm, 0, 'user locked_vm leaked');
    assert.equal(this.host.mock.liveDomains.size, 0, 'mock domains leaked');
    for (const d of this.host.devices) {
      assert.equal(d.group.ownerCnt, 0, 'a VFIO device is still owned');
      assert.equal(d.group.pasidArray.size, 0, 'a PASID is still attached');
    }
  }
}

/**
 * TEST_FAIL_NTH: iteration 0 without injection must pass; then sweep N until the body runs to
 * the end without the Nth site being reached; the final run must pass. Limit 400 as the kernel.
 */
function TEST_FAIL_NTH(name: string, body: (s: State, enable: () => void) => boolean): void {
  describe(`basic_fail_nth.${name}`, () => {
    test('sweep', (t) => {
      const s = new State();
      let iteration = 0;
      let result = false;
      for (;;) {
        assert.ok(iteration < 400, 'fail_nth iteration limit');
        s.setup();
        const enable = () => {
          if (iteration) s.host.faults.failNth(iteration);
        };
        result = body(s, enable);
        const injected = s.host.faults.injected.length > 0;
        s.host.faults.disarm();
        s.host.faults.injected.length = 0;
        s.teardown();
        if (iteration === 0) assert.equal(result, true, 'the body succeeds without fault injection');
        else if (!injected) break;
        iteration++;
      }
      assert.equal(result, true, 'the final run succeeds');
      assert.ok(iteration > 1, 'some fault sites were swept');
      t.diagnostic(`${iteration} fault sites swept`);
    });
  });
}

function open(s: State): boolean {
  const fd = s.p.open('/dev/iommu');
  if (typeof fd !== 'number') return false;
  s.fd = fd;
  return true;
}
function ioasAlloc(s: State): number {
  return (s.io('IOMMU_IOAS_ALLOC', {})?.['out_ioas_id'] as number | undefined) ?? 0;
}
function mockDomain(
  s: State,
  ioas: number,
  flags?: number,
): { stdev: number; hwpt: number; idev: number } | null {
  const r =
    flags === undefined
      ? s.test(2, ioas, 'mock_domain')
      : s.test(12, ioas, 'mock_domain_flags', { dev_flags: flags });
  if (!r) return null;
  return {
    stdev: r['out_stdev_id'] as number,
    hwpt: r['out_hwpt_id'] as number,
    idev: r['out_idev_id'] as number,
  };
}
function map(s: State, ioas: number, va: number, length: number, iova = 0n, flags = RW): bigint | null {
  const r = s.io('IOMMU_IOAS_MAP', {
    ioas_id: ioas,
    user_va: BigInt(va),
    length: BigInt(length),
    iova,
    flags,
  });
  return r ? (r['iova'] as bigint) : null;
}
function destroy(s: State, id: number): boolean {
  return s.io('IOMMU_DESTROY', { id }) !== null;
}
function memLimit(s: State, limit: number): boolean {
  return s.test(9, 0, 'memory_limit', { limit }) !== null;
}
function createAccess(s: State, ioas: number, flags: number): boolean {
  const r = s.test(5, ioas, 'create_access', { flags });
  if (!r) return false;
  s.accessId = r['out_access_fd'] as number;
  return true;
}
function closeAccess(s: State): boolean {
  const ok = s.p.close(s.accessId) === undefined;
  s.accessId = 0;
  return ok;
}

/* Cover ioas.c */
TEST_FAIL_NTH('basic', (s, enable) => {
  enable();
  if (!open(s)) return false;
  const ioas = ioasAlloc(s);
  if (!ioas) return false;
  const ranges = s.p.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
  if (!s.io('IOMMU_IOAS_IOVA_RANGES', { num_iovas: 10, ioas_id: ioas, allowed_iovas: BigInt(ranges) }))
    return false;
  const r = new Uint8Array(16);
  const dv = new DataView(r.buffer);
  dv.setBigUint64(0, 16n * 1024n, true);
  dv.setBigUint64(8, BigInt(BUFFER_SIZE + 16 * 1024 * 600 - 1), true);
  s.p.poke(ranges, r);
  if (!s.io('IOMMU_IOAS_ALLOW_IOVAS', { ioas_id: ioas, num_iovas: 1, allowed_iovas: BigInt(ranges) }))
    return false;
  const iova = map(s, ioas, s.buffer, BUFFER_SIZE);
  if (iova === null) return false;
  if (
    !s.io('IOMMU_IOAS_COPY', {
      flags: RW,
      dst_ioas_id: ioas,
      src_ioas_id: ioas,
      src_iova: iova,
      length: 160n,
    })
  )
    return false;
  if (!s.io('IOMMU_IOAS_UNMAP', { ioas_id: ioas, iova, length: BigInt(BUFFER_SIZE) })) return false;
  // Failure path of no IOVA to unmap
  s.io('IOMMU_IOAS_UNMAP', { ioas_id: ioas, iova, length: BigInt(BUFFER_SIZE) });
  return true;
});

/* iopt_area_fill_domains() and iopt_area_fill_domain() */
function mapDomain(file: boolean) {
  return (s: State, enable: () => void): boolean => {
    if (!open(s)) return false;
    const ioas = ioasAlloc(s);
    if (!ioas || !memLimit(s, 32)) return false;
    enable();
    let d = mockDomain(s, ioas);
    if (!d) return false;
    const ok = file
      ? s.io('IOMMU_IOAS_MAP_FILE', { ioas_id: ioas, fd: s.mfd, start: 0n, length: 262144n, flags: RW })
      : map(s, ioas, s.buffer, 262144);
    if (ok === null) return false;
    if (!destroy(s, d.stdev)) return false;
    d = mockDomain(s, ioas);
    return d !== null;
  };
}
TEST_FAIL_NTH('map_domain', mapDomain(false));
TEST_FAIL_NTH('map_file_domain', mapDomain(true));

TEST_FAIL_NTH('map_two_domains', (s, enable) => {
  if (!open(s)) return false;
  const ioas = ioasAlloc(s);
  if (!ioas || !memLimit(s, 32)) return false;
  let d1 = mockDomain(s, ioas);
  if (!d1) return false;
  enable();
  let d2 = mockDomain(s, ioas);
  if (!d2) return false;
  if (map(s, ioas, s.buffer, 262144) === null) return false;
  if (!destroy(s, d1.stdev) || !destroy(s, d2.stdev)) return false;
  d1 = mockDomain(s, ioas);
  if (!d1) return false;
  d2 = mockDomain(s, ioas);
  return d2 !== null;
});

TEST_FAIL_NTH('access_rw', (s, enable) => {
  if (!open(s)) return false;
  const ioas = ioasAlloc(s);
  if (!ioas || !memLimit(s, 32)) return false;
  const iova = map(s, ioas, s.buffer, 262144);
  if (iova === null) return false;
  enable();
  if (!createAccess(s, ioas, 0)) return false;
  const tmp = s.p.mmap(64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
  for (const flags of [0, 1, 4, 5]) {
    if (!s.test(8, s.accessId, 'access_rw', { iova, length: 64n, uptr: BigInt(tmp), flags })) return false;
  }
  const big = s.p.mmap(4096 * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
  if (!s.test(8, s.accessId, 'access_rw', { iova, length: BigInt(4096 * 8), uptr: BigInt(big), flags: 4 }))
    return false;
  return closeAccess(s);
});

/* pages.c access functions */
function accessPin(withDomain: boolean) {
  return (s: State, enable: () => void): boolean => {
    if (!open(s)) return false;
    const ioas = ioasAlloc(s);
    if (!ioas || !memLimit(s, 32)) return false;
    const d = withDomain ? mockDomain(s, ioas) : null;
    if (withDomain && !d) return false;
    const iova = map(s, ioas, s.buffer, BUFFER_SIZE);
    if (iova === null) return false;
    if (!createAccess(s, ioas, 1)) return false;
    enable();
    const r = s.test(7, s.accessId, 'access_pages', {
      iova,
      length: BigInt(BUFFER_SIZE),
      uptr: BigInt(s.buffer),
    });
    if (!r) return false;
    if (!s.test(6, s.accessId, 'destroy_access_pages', { access_pages_id: r['out_access_pages_id'] }))
      return false;
    if (!closeAccess(s)) return false;
    if (d && !destroy(s, d.stdev)) return false;
    return true;
  };
}
TEST_FAIL_NTH('access_pin', accessPin(false));
TEST_FAIL_NTH('access_pin_domain', accessPin(true));

/* device.c */
TEST_FAIL_NTH('device', (s, enable) => {
  if (!open(s)) return false;
  const ioas = ioasAlloc(s);
  const ioas2 = ioasAlloc(s);
  if (!ioas || !ioas2) return false;
  if (map(s, ioas, s.buffer, PAGE_SIZE, MOCK_APERTURE_START, RW | FIXED) === null) return false;
  if (map(s, ioas2, s.buffer, PAGE_SIZE, MOCK_APERTURE_START, RW | FIXED) === null) return false;
  enable();
  const d = mockDomain(s, ioas, 1 << 2);
  if (!d) return false;
  s.stdevId = d.stdev;
  const info = s.p.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
  if (!s.io('IOMMU_GET_HW_INFO', { dev_id: d.idev, data_len: 8, data_uptr: BigInt(info) })) return false;
  const hwptAlloc = (pt: number, flags: number, extra: Record<string, unknown> = {}) =>
    (s.io('IOMMU_HWPT_ALLOC', { dev_id: d.idev, pt_id: pt, flags, ...extra })?.['out_hwpt_id'] as
      | number
      | undefined) ?? 0;
  let hwpt = hwptAlloc(ioas, 1 << 3);
  if (!hwpt) return false;
  if (!s.test(10, s.stdevId, 'mock_domain_replace', { pt_id: ioas2 })) return false;
  if (!s.test(10, s.stdevId, 'mock_domain_replace', { pt_id: hwpt })) return false;
  hwpt = hwptAlloc(ioas, (1 << 0) | (1 << 3));
  if (!hwpt) return false;
  const v = s.io('IOMMU_VIOMMU_ALLOC', { dev_id: d.idev, hwpt_id: hwpt, type: 0xdeadbeef });
  if (!v) return false;
  const viommuId = v['out_viommu_id'] as number;
  if (!s.io('IOMMU_VDEVICE_ALLOC', { viommu_id: viommuId, dev_id: d.idev, virt_id: 0n })) return false;
  const hwq = {
    viommu_id: viommuId,
    type: 0xdeadbeef,
    index: 0,
    nesting_parent_iova: MOCK_APERTURE_START,
    length: BigInt(PAGE_SIZE),
  };
  if (!s.io('IOMMU_HW_QUEUE_ALLOC', hwq)) return false;
  const f = s.io('IOMMU_FAULT_QUEUE_ALLOC', {});
  if (!f) return false;
  s.p.close(f['out_fault_fd'] as number);
  const data = s.p.mmap(PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS) as number;
  s.p.poke(data, new Uint8Array([0xef, 0xbe, 0xad, 0x0b, 0, 0, 0, 0]));
  if (
    !hwptAlloc(hwpt, 1 << 2, {
      fault_id: f['out_fault_id'],
      data_type: 0xdead,
      data_len: 8,
      data_uptr: BigInt(data),
    })
  )
    return false;
  const q = s.io('IOMMU_VEVENTQ_ALLOC', { viommu_id: viommuId, type: 0xbeefbeef, veventq_depth: 2 });
  if (!q) return false;
  s.p.close(q['out_veventq_fd'] as number);
  const testHwpt = hwptAlloc(ioas, 1 << 3);
  if (!testHwpt) return false;
  s.pasid = 200;
  if (!s.test(18, s.stdevId, 'pasid_attach', { pasid: s.pasid, pt_id: hwpt })) {
    s.pasid = 0;
    return false;
  }
  if (!s.test(19, s.stdevId, 'pasid_replace', { pasid: s.pasid, pt_id: testHwpt })) return false;
  if (!s.test(20, s.stdevId, 'pasid_detach', { pasid: s.pasid })) return false;
  s.pasid = 0;
  return true;
});
