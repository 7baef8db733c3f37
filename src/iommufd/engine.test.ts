// Tests of the ioctl engine's own contract (WIRE.md): file descriptors and processes, raw
// pointer arguments, write-back on failure, fds returned inside structs, privileges, and the
// VFIO device cdev path with RID and PASID attach/replace/detach (research A.22).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { IommufdHost, ioctl, ioctlStruct, ioctlValue } from './engine.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PAGE_SIZE, PROT_READ, PROT_WRITE } from './process.ts';
import { Kt } from './test-utils.ts';
import { build, decodeAny, IOCTLS } from './uapi/index.ts';

describe('process', () => {
  test('descriptors are the lowest free, as in Linux', () => {
    const host = new IommufdHost();
    const p = host.spawn();
    assert.equal(p.open('/dev/iommu'), 0);
    assert.equal(p.open('/dev/iommu'), 1);
    assert.equal(p.memfdCreate('x'), 2);
    assert.equal(p.close(1), undefined);
    assert.equal(p.open('/dev/vfio/devices/vfio0'), 1);
    assert.equal(p.close(7)?.code, 'EBADF');
    assert.equal((p.open('/dev/nope') as { code: string }).code, 'ENOENT');
  });

  test('mmap, poke, peek, munmap of a middle part, private fork copies', () => {
    const host = new IommufdHost();
    const p = host.spawn();
    const va = p.mmap(4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS) as number;
    assert.equal(p.poke(va + PAGE_SIZE - 2, new Uint8Array([1, 2, 3, 4])), undefined);
    assert.deepEqual(p.peek(va + PAGE_SIZE - 2, 4), new Uint8Array([1, 2, 3, 4]));
    const c = p.fork();
    c.poke(va, new Uint8Array([9]));
    assert.deepEqual(p.peek(va, 1), new Uint8Array([0]));
    assert.equal(p.munmap(va + PAGE_SIZE, PAGE_SIZE), undefined);
    assert.equal((p.peek(va + PAGE_SIZE, 1) as { code: string }).code, 'EFAULT');
    assert.deepEqual(p.peek(va + PAGE_SIZE - 2, 2), new Uint8Array([1, 2]));
    assert.deepEqual(p.peek(va + 2 * PAGE_SIZE, 2), new Uint8Array([0, 0]));
    c.exit();
    p.exit();
    assert.equal(host.phys.live, 0);
  });

  test('memfd pages are shared by every mapping; ftruncate releases them', () => {
    const host = new IommufdHost();
    const p = host.spawn();
    const fd = p.memfdCreate('m');
    p.ftruncate(fd, 2 * PAGE_SIZE);
    const a = p.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd) as number;
    const b = p.mmap(2 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd) as number;
    p.poke(a + 5, new Uint8Array([42]));
    assert.deepEqual(p.peek(b + 5, 1), new Uint8Array([42]));
    p.munmap(a, 2 * PAGE_SIZE);
    p.munmap(b, 2 * PAGE_SIZE);
    p.close(fd);
    assert.equal(host.phys.live, 0);
  });
});

describe('ioctl engine', () => {
  test('EBADF on a closed fd; ENOTTY for an iommufd ioctl on a memfd', () => {
    const t = new Kt();
    const d = IOCTLS.IOMMU_IOAS_ALLOC;
    assert.equal(ioctl(t.p, 99, d.cmd, build(d.struct!)).error?.code, 'EBADF');
    assert.equal(ioctl(t.p, t.mfd, d.cmd, build(d.struct!)).error?.code, 'ENOTTY');
  });

  test('a raw pointer argument is read from and written back to process memory', () => {
    const t = new Kt();
    const d = IOCTLS.IOMMU_IOAS_ALLOC;
    const va = t.place(build(d.struct!));
    assert.equal(ioctlValue(t.p, t.fd, d.cmd, BigInt(va)).ret, 0);
    const out = decodeAny(d.struct!, t.p.peek(va, 12) as Uint8Array);
    assert.equal(out['out_ioas_id'], 1);
    assert.equal(ioctlValue(t.p, t.fd, d.cmd, 0n).error?.code, 'EFAULT');
    assert.equal(ioctlValue(t.p, t.fd, d.cmd, 0x1234_5000n).error?.code, 'EFAULT');
  });

  test('ioctlStruct: by name with fields, decoded write-back; integer-argument ioctls', () => {
    const t = new Kt();
    const r = ioctlStruct(t.p, t.fd, 'IOMMU_IOAS_ALLOC');
    assert.equal(r.ret, 0);
    assert.equal(r.out['out_ioas_id'], 1);
    const r2 = ioctlStruct(t.p, t.fd, 'IOMMU_IOAS_IOVA_RANGES', { ioas_id: 1, num_iovas: 0 });
    assert.equal(r2.error?.code, 'EMSGSIZE');
    assert.equal(r2.out['num_iovas'], 1);
    assert.equal(ioctlStruct(t.p, t.fd, 'VFIO_CHECK_EXTENSION', { arg: 3 }).ret, 1);
  });

  test('bytes past the struct are never read, and a failed ioctl leaves no object or ID', () => {
    const t = new Kt();
    const ioas = t.ioasAlloc();
    // A HWPT_ALLOC that fails after the object was reserved: the next ID is still 2.
    t.err('ENOENT', t._hwptAlloc(5, ioas, 0));
    assert.equal(t.ioasAlloc(), 2);
  });

  test('pins that start inside a mapping and cross into the next one get the right pages', () => {
    const t = new Kt();
    const ioas = t.ioasAlloc();
    // Two adjacent shared mappings, mapped as one area.
    const a = t.okNum(
      t.p.mmap(4 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0, 0x7000_0000_0000),
    );
    t.okNum(
      t.p.mmap(
        4 * PAGE_SIZE,
        PROT_READ | PROT_WRITE,
        MAP_SHARED | MAP_ANONYMOUS | 0x10,
        -1,
        0,
        a + 4 * PAGE_SIZE,
      ),
    );
    for (let i = 0; i < 8; i++) t.p.poke(a + i * PAGE_SIZE, new Uint8Array([i]));
    const iova = t.ioasMap(ioas, a, 8 * PAGE_SIZE);
    const acc = t.createAccess(ioas, 1);
    // ACCESS_PAGES compares the pinned pages with the user's pages (EBADE otherwise).
    t.ok(t.accessPages(acc, iova + BigInt(2 * PAGE_SIZE), 4 * PAGE_SIZE, a + 2 * PAGE_SIZE));
    t.ok(t.accessPages(acc, iova + BigInt(5 * PAGE_SIZE), 3 * PAGE_SIZE, a + 5 * PAGE_SIZE));
    t.ok(t.accessPages(acc, iova, 8 * PAGE_SIZE, a));
    t.checkRefs(a, 2 * PAGE_SIZE, 1);
    t.destroyAccess(acc);
    t.checkRefs(a, 8 * PAGE_SIZE, 0);
    t.teardown();
  });

  test('fds returned inside structs belong to the process (fault queue)', () => {
    const t = new Kt();
    const f = t.faultAlloc();
    assert.equal(f.fd, 2); // memfd 0, /dev/iommu 1: the lowest free
    assert.equal((t.p.read(f.fd, 7) as { code: string }).code, 'ESPIPE');
    assert.deepEqual(t.p.read(f.fd, 40), new Uint8Array(0));
    assert.equal((t.p.write(f.fd, new Uint8Array(8)) as { code: string }).code, 'EINVAL');
    t.err('EBUSY', t._destroy(f.id));
    t.p.close(f.fd);
    t.destroy(f.id);
  });

  test('an unprivileged process may not set RLIMIT_MODE and is charged for pins', () => {
    const t = new Kt({ privileged: false });
    t.err('EPERM', t.ioctl('IOMMU_OPTION', { option_id: 0, op: 0, val64: 1n }));
    const ioas = t.ioasAlloc();
    t.mockDomain(ioas);
    t.ioasMap(ioas, t.buffer, 4 * PAGE_SIZE);
    assert.equal(t.p.user.lockedVm, 4);
    t.p.creds.rlimitMemlock = 6 * PAGE_SIZE;
    t.err('ENOMEM', t._ioasMap(ioas, t.buffer + 4 * PAGE_SIZE, 4 * PAGE_SIZE, 0, 6));
    assert.equal(t.p.user.lockedVm, 4);
    t.teardown();
    assert.equal(t.p.user.lockedVm, 0);
  });
});

describe('VFIO device cdev', () => {
  const attach = (t: Kt, fd: number, pt: number, pasid?: number) =>
    t.ioctl(
      'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
      pasid === undefined ? { pt_id: pt } : { pt_id: pt, flags: 1, pasid },
      { fd },
    );
  const detach = (t: Kt, fd: number, pasid?: number) =>
    t.ioctl('VFIO_DEVICE_DETACH_IOMMUFD_PT', pasid === undefined ? {} : { flags: 1, pasid }, { fd });

  test('bind, attach (auto-domain), second attach is a replace, detach, close unbinds', () => {
    const t = new Kt();
    const dfd = t.okNum(t.p.open('/dev/vfio/devices/vfio0'));
    t.err('EINVAL', attach(t, dfd, 1));
    t.err('EBADFD', t.ioctl('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: t.mfd }, { fd: dfd }));
    const b = t.ok(t.ioctl('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: t.fd }, { fd: dfd }));
    const devid = b.out['out_devid'] as number;
    t.err('EINVAL', t.ioctl('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: t.fd }, { fd: dfd }));
    const ioas = t.ioasAlloc();
    const r = t.ok(attach(t, dfd, ioas));
    const hwpt = r.out['pt_id'] as number;
    assert.notEqual(hwpt, ioas);
    t.err('EBUSY', t._destroy(devid));
    const ioas2 = t.ioasAlloc();
    const r2 = t.ok(attach(t, dfd, ioas2));
    assert.notEqual(r2.out['pt_id'], hwpt);
    t.err('ENOENT', t._destroy(hwpt));
    t.ok(detach(t, dfd));
    t.ok(detach(t, dfd));
    t.p.close(dfd);
    t.teardown();
  });

  test('PASID: attach needs a PASID HWPT, a second attach replaces, detach of unattached is fine', () => {
    const t = new Kt();
    const dfd = t.okNum(t.p.open('/dev/vfio/devices/vfio1'));
    const devid = t.ok(t.ioctl('VFIO_DEVICE_BIND_IOMMUFD', { iommufd: t.fd }, { fd: dfd })).out[
      'out_devid'
    ] as number;
    const ioas = t.ioasAlloc();
    const plain = t.hwptAlloc(devid, ioas, 0);
    const p1 = t.hwptAlloc(devid, ioas, 1 << 3);
    const p2 = t.hwptAlloc(devid, ioas, 1 << 3);
    t.ok(attach(t, dfd, p1));
    t.err('EINVAL', attach(t, dfd, plain, 5));
    t.err('EINVAL', attach(t, dfd, ioas, 5));
    t.ok(attach(t, dfd, p1, 5));
    t.ok(attach(t, dfd, p2, 5));
    t.err('EBUSY', t._destroy(p2));
    t.ok(detach(t, dfd, 5));
    t.ok(detach(t, dfd, 6));
    t.err(
      'EINVAL',
      t.ioctl('VFIO_DEVICE_ATTACH_IOMMUFD_PT', { pt_id: p1, flags: 1, argsz: 12 }, { fd: dfd }),
    );
    t.ok(attach(t, dfd, p2, 7));
    t.p.close(dfd); // detaches PASIDs, the RID, and unbinds
    t.destroy(p2);
    t.destroy(p1);
    t.destroy(plain);
    t.teardown();
  });
});
