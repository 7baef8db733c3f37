// The generic ioctl validation of research iommufd.md A.0 (main.c iommufd_fops_ioctl and
// copy_struct_from_user) and the VFIO cdev size rules of A.22, one case per outcome, in the
// kernel's order; several cases are the selftests' own (cmd_fail, cmd_length, cmd_ex_fail).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { KernelError } from '../../core/errno.ts';
import {
  _IO,
  _IOWR,
  build,
  copyStructFromUser,
  decode,
  IOCTLS,
  type IoctlDef,
  iommu_destroy,
  iommu_option,
  iommufdIoctlCheck,
  respondField,
  ucmdRespond,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_detach_iommufd_pt,
  vfioAttachIommufdPtCheck,
  vfioBindIommufdCheck,
  vfioDetachIommufdPtCheck,
} from './index.ts';

const T = { testCmd: true } as const;

function errno(r: ReturnType<typeof iommufdIoctlCheck>): string {
  if (r.kind === 'error') return r.error.code;
  return r.kind;
}

function withSize(bytes: Uint8Array, size: number): Uint8Array {
  new DataView(bytes.buffer, bytes.byteOffset).setUint32(0, size, true);
  return bytes;
}

const iommufdIoctls = Object.values(IOCTLS).filter((d) => d.family === 'iommufd') as IoctlDef[];

describe('iommufd dispatch (A.0)', () => {
  test('numbers below the base go to the VFIO compat handler, without reading the argument', () => {
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.VFIO_GET_API_VERSION.cmd, null, T)), 'compat');
    assert.equal(errno(iommufdIoctlCheck(_IO(0x3b, 0x7f), null, T)), 'compat');
  });

  test('numbers past the table go to compat; the table ends at the test command only with CONFIG_IOMMUFD_TEST', () => {
    assert.equal(errno(iommufdIoctlCheck(_IO(0x3b, 0xa1), null, T)), 'compat');
    assert.equal(errno(iommufdIoctlCheck(_IO(0x3b, 0x95), null, { testCmd: false })), 'compat');
    assert.equal(
      errno(iommufdIoctlCheck(IOCTLS.IOMMU_TEST_CMD.cmd, build(iommu_destroy), { testCmd: false })),
      'compat',
    );
    assert.equal(
      errno(iommufdIoctlCheck(IOCTLS.IOMMU_TEST_CMD.cmd, build(IOCTLS.IOMMU_TEST_CMD.struct!), T)),
      'ok',
    );
  });

  test('the size is read before the table lookup: a NULL argument is EFAULT, even for a hole', () => {
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, null, T)), 'EFAULT');
    assert.equal(errno(iommufdIoctlCheck(_IO(0x3b, 0x95), null, T)), 'EFAULT');
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, new Uint8Array(3), T)), 'EFAULT');
  });

  test('a hole in the table, another type character or a sized encoding is ENOTTY', () => {
    const arg = build(iommu_destroy);
    assert.equal(errno(iommufdIoctlCheck(_IO(0x3b, 0x95), arg, T)), 'ENOTTY');
    assert.equal(errno(iommufdIoctlCheck(_IO(0x3b, 0x9f), arg, T)), 'ENOTTY');
    assert.equal(errno(iommufdIoctlCheck(_IOWR(0x3b, 0x80, 8), arg, T)), 'ENOTTY');
    assert.equal(errno(iommufdIoctlCheck(_IO(0x78, 0x80), arg, T)), 'ENOTTY');
  });

  test('cmd_length: size = min_size - 1 is EINVAL for every ioctl', () => {
    for (const d of iommufdIoctls) {
      assert.ok(d.struct);
      const arg = withSize(new Uint8Array(d.struct.size + 8), d.struct.minSize - 1);
      assert.equal(errno(iommufdIoctlCheck(d.cmd, arg, T)), 'EINVAL', d.name);
    }
  });

  test('cmd_length: sizeof+1 with a trailing 0xff is E2BIG; with a trailing 0 it is the same as sizeof', () => {
    for (const d of iommufdIoctls) {
      assert.ok(d.struct);
      const bytes = new Uint8Array(d.struct.size + 1);
      for (let i = 4; i < d.struct.size; i++) bytes[i] = (i * 37) & 0xff;
      withSize(bytes, d.struct.size + 1);
      bytes[d.struct.size] = 0xff;
      assert.equal(errno(iommufdIoctlCheck(d.cmd, bytes, T)), 'E2BIG', d.name);
      bytes[d.struct.size] = 0;
      const big = iommufdIoctlCheck(d.cmd, bytes, T);
      const exact = iommufdIoctlCheck(d.cmd, withSize(bytes.slice(0, d.struct.size), d.struct.size), T);
      assert.ok(big.kind === 'ok' && exact.kind === 'ok', d.name);
      assert.deepEqual(big.kbuf.subarray(4), exact.kbuf.subarray(4), d.name);
    }
  });

  test('cmd_ex_fail: DESTROY with a 16-byte struct, a short one, and size 7', () => {
    const arg = withSize(new Uint8Array(16), 16);
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, arg, T)), 'ok');
    arg[12] = 1;
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, arg, T)), 'E2BIG');
    withSize(arg, 8);
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, arg, T)), 'ok');
    withSize(arg, 7);
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, arg, T)), 'EINVAL');
  });

  test('a size past the readable bytes faults; a non-zero byte seen first is E2BIG', () => {
    const arg = withSize(new Uint8Array(12), 64);
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, arg, T)), 'EFAULT');
    arg[10] = 5;
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_DESTROY.cmd, arg, T)), 'E2BIG');
    // Shorter than sizeof but longer than what is readable: the head copy faults.
    const map = withSize(new Uint8Array(30), 32);
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_IOAS_MAP.cmd, map, T)), 'EINVAL');
    const hwpt = withSize(new Uint8Array(30), 32);
    assert.equal(errno(iommufdIoctlCheck(IOCTLS.IOMMU_HWPT_ALLOC.cmd, hwpt, T)), 'EFAULT');
  });

  test('a shorter user struct is zero-extended and bytes past size are never read', () => {
    const arg = new Uint8Array(48).fill(0xee);
    withSize(arg, 24);
    const r = iommufdIoctlCheck(IOCTLS.IOMMU_HWPT_ALLOC.cmd, arg, T);
    assert.ok(r.kind === 'ok');
    assert.equal(r.userSize, 24);
    assert.equal(r.kbuf.length, 48);
    assert.deepEqual([...r.kbuf.subarray(24)], new Array(24).fill(0));
    assert.deepEqual([...r.kbuf.subarray(4, 24)], new Array(20).fill(0xee));
  });

  test('property: an accepted struct is the user prefix, zero-extended to sizeof', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...iommufdIoctls),
        fc.uint8Array({ minLength: 0, maxLength: 96 }),
        fc.nat({ max: 100 }),
        (d, bytes, size) => {
          assert.ok(d.struct);
          if (bytes.length >= 4) withSize(bytes, size);
          const r = iommufdIoctlCheck(d.cmd, bytes, T);
          if (bytes.length < 4) return assert.equal(errno(r), 'EFAULT');
          if (size < d.struct.minSize) return assert.equal(errno(r), 'EINVAL');
          const tail = bytes.subarray(d.struct.size, Math.min(size, bytes.length));
          if (tail.some((b) => b !== 0)) return assert.equal(errno(r), 'E2BIG');
          if (size > bytes.length) return assert.equal(errno(r), 'EFAULT');
          assert.ok(r.kind === 'ok');
          const n = Math.min(size, d.struct.size);
          assert.deepEqual(r.kbuf.subarray(0, n), bytes.subarray(0, n));
          assert.ok(r.kbuf.subarray(n).every((b) => b === 0));
        },
      ),
      { numRuns: 500 },
    );
  });

  test('copy_struct_from_user on its own', () => {
    assert.equal((copyStructFromUser(8, null, 4) as { code: string }).code, 'EFAULT');
    assert.equal((copyStructFromUser(8, null, 0) as Uint8Array).length, 8);
  });
});

describe('write-back', () => {
  test('iommufd_ucmd_respond copies min(user size, length) and leaves the rest', () => {
    const arg = new Uint8Array(16).fill(0xaa);
    const kbuf = new Uint8Array(12).fill(1);
    assert.equal(ucmdRespond(arg, kbuf, 8), undefined);
    assert.deepEqual([...arg.subarray(0, 9)], [1, 1, 1, 1, 1, 1, 1, 1, 0xaa]);
  });

  test('a short user buffer gets the leading bytes and EFAULT', () => {
    const arg = new Uint8Array(6);
    const r = ucmdRespond(arg, new Uint8Array(12).fill(2), 12);
    assert.equal(r?.code, 'EFAULT');
    assert.deepEqual([...arg], [2, 2, 2, 2, 2, 2]);
  });

  test('IOMMU_OPTION writes back only val64', () => {
    const arg = build(iommu_option, { option_id: 1, op: 1 });
    const kbuf = build(iommu_option, { option_id: 9, op: 0, val64: 5n });
    assert.equal(respondField(arg, iommu_option, 'val64', kbuf), undefined);
    const d = decode(iommu_option, arg);
    assert.equal(d.val64, 5n);
    assert.equal(d.option_id, 1);
  });
});

describe('VFIO cdev argument rules (A.22)', () => {
  const code = (r: unknown): string => (r instanceof KernelError ? r.code : 'ok');

  test('BIND: argsz below 16, faults, trailing bytes, flags and a negative fd', () => {
    assert.equal(code(vfioBindIommufdCheck(null)), 'EFAULT');
    assert.equal(code(vfioBindIommufdCheck(build(vfio_device_bind_iommufd, { argsz: 15 }))), 'EINVAL');
    assert.equal(
      code(vfioBindIommufdCheck(build(vfio_device_bind_iommufd, { argsz: 16, iommufd: 3 }))),
      'ok',
    );
    assert.equal(code(vfioBindIommufdCheck(build(vfio_device_bind_iommufd, { iommufd: -1 }))), 'EINVAL');
    assert.equal(code(vfioBindIommufdCheck(build(vfio_device_bind_iommufd, { flags: 2 }))), 'EINVAL');
    const big = new Uint8Array(32);
    big.set(build(vfio_device_bind_iommufd, { argsz: 32, flags: 1, token_uuid_ptr: 0x1000n }));
    const ok = vfioBindIommufdCheck(big);
    assert.ok(!(ok instanceof Error));
    assert.equal(ok.args.token_uuid_ptr, 0x1000n);
    big[31] = 1;
    assert.equal(code(vfioBindIommufdCheck(big)), 'E2BIG');
    // argsz 16 does not cover token_uuid_ptr: it reads as zero.
    const short = build(vfio_device_bind_iommufd, { argsz: 16, token_uuid_ptr: 0x1000n });
    const r = vfioBindIommufdCheck(short);
    assert.ok(!(r instanceof Error));
    assert.equal(r.args.token_uuid_ptr, 0n);
  });

  test('ATTACH: fixed head, argsz, flags, PASID support and the PASID extension', () => {
    const P = { pasidSupported: true };
    assert.equal(code(vfioAttachIommufdPtCheck(new Uint8Array(8), P)), 'EFAULT');
    assert.equal(
      code(vfioAttachIommufdPtCheck(build(vfio_device_attach_iommufd_pt, { argsz: 11 }), P)),
      'EINVAL',
    );
    assert.equal(
      code(vfioAttachIommufdPtCheck(build(vfio_device_attach_iommufd_pt, { flags: 2 }), P)),
      'EINVAL',
    );
    const pasid = build(vfio_device_attach_iommufd_pt, { flags: 1, pt_id: 7, pasid: 100 });
    assert.equal(code(vfioAttachIommufdPtCheck(pasid, { pasidSupported: false })), 'EOPNOTSUPP');
    const r = vfioAttachIommufdPtCheck(pasid, P);
    assert.ok(!(r instanceof Error));
    assert.equal(r.args.pasid, 100);
    assert.equal(r.args.pt_id, 7);
    assert.equal(
      code(vfioAttachIommufdPtCheck(build(vfio_device_attach_iommufd_pt, { argsz: 12, flags: 1 }), P)),
      'EINVAL',
    );
    assert.equal(code(vfioAttachIommufdPtCheck(pasid.subarray(0, 12), P)), 'EFAULT');
    // Without the flag the pasid field is not read, and trailing bytes are never checked.
    const noflag = new Uint8Array(64).fill(0xff);
    noflag.set(build(vfio_device_attach_iommufd_pt, { argsz: 64, pt_id: 3 }).subarray(0, 12));
    const r2 = vfioAttachIommufdPtCheck(noflag, P);
    assert.ok(!(r2 instanceof Error));
    assert.equal(r2.args.pasid, 0);
  });

  test('DETACH: the same rules with an 8-byte head', () => {
    const P = { pasidSupported: true };
    assert.equal(code(vfioDetachIommufdPtCheck(new Uint8Array(4), P)), 'EFAULT');
    assert.equal(
      code(vfioDetachIommufdPtCheck(build(vfio_device_detach_iommufd_pt, { argsz: 7 }), P)),
      'EINVAL',
    );
    assert.equal(code(vfioDetachIommufdPtCheck(build(vfio_device_detach_iommufd_pt, { argsz: 8 }), P)), 'ok');
    assert.equal(
      code(vfioDetachIommufdPtCheck(build(vfio_device_detach_iommufd_pt, { argsz: 8, flags: 1 }), P)),
      'EINVAL',
    );
    assert.equal(
      code(
        vfioDetachIommufdPtCheck(build(vfio_device_detach_iommufd_pt, { flags: 1 }), {
          pasidSupported: false,
        }),
      ),
      'EOPNOTSUPP',
    );
    const r = vfioDetachIommufdPtCheck(build(vfio_device_detach_iommufd_pt, { flags: 1, pasid: 9 }), P);
    assert.ok(!(r instanceof Error));
    assert.equal(r.args.pasid, 9);
  });
});
