// Tests of the uAPI tables and codecs against the kernel's literal numbers (research iommufd.md
// A.0–A.24, checked against include/uapi/linux/iommufd.h, vfio.h and iommufd_test.h), and
// round-trip properties of every struct codec.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  _IO,
  _IOC_DIR,
  _IOC_NR,
  _IOC_SIZE,
  _IOC_TYPE,
  _IOWR,
  build,
  coveredBytes,
  decode,
  decodeAny,
  encode,
  type Field,
  fieldSize,
  IOCTLS,
  ioctlByCmd,
  ioctlByName,
  iommu_hw_info,
  iommu_ioas_map,
  iommu_test_cmd,
  offsetof,
  POINTER_FIELDS,
  pointerFields,
  STRUCTS,
  type StructDef,
  TEST_OP_MEMBER,
  UAPI_CONSTANTS,
} from './index.ts';

describe('ioctl numbers', () => {
  // The literal values of research A.0's command table and A.22 (and the Rust crate's
  // IOMMU_DESTROY == 15232 check), not recomputed with _IO.
  const literal: Record<string, number> = {
    IOMMU_DESTROY: 0x3b80,
    IOMMU_IOAS_ALLOC: 0x3b81,
    IOMMU_IOAS_ALLOW_IOVAS: 0x3b82,
    IOMMU_IOAS_COPY: 0x3b83,
    IOMMU_IOAS_IOVA_RANGES: 0x3b84,
    IOMMU_IOAS_MAP: 0x3b85,
    IOMMU_IOAS_UNMAP: 0x3b86,
    IOMMU_OPTION: 0x3b87,
    IOMMU_VFIO_IOAS: 0x3b88,
    IOMMU_HWPT_ALLOC: 0x3b89,
    IOMMU_GET_HW_INFO: 0x3b8a,
    IOMMU_HWPT_SET_DIRTY_TRACKING: 0x3b8b,
    IOMMU_HWPT_GET_DIRTY_BITMAP: 0x3b8c,
    IOMMU_HWPT_INVALIDATE: 0x3b8d,
    IOMMU_FAULT_QUEUE_ALLOC: 0x3b8e,
    IOMMU_IOAS_MAP_FILE: 0x3b8f,
    IOMMU_VIOMMU_ALLOC: 0x3b90,
    IOMMU_VDEVICE_ALLOC: 0x3b91,
    IOMMU_IOAS_CHANGE_PROCESS: 0x3b92,
    IOMMU_VEVENTQ_ALLOC: 0x3b93,
    IOMMU_HW_QUEUE_ALLOC: 0x3b94,
    IOMMU_TEST_CMD: 0x3ba0,
    VFIO_DEVICE_BIND_IOMMUFD: 0x3b76,
    VFIO_DEVICE_ATTACH_IOMMUFD_PT: 0x3b77,
    VFIO_DEVICE_DETACH_IOMMUFD_PT: 0x3b78,
    VFIO_GET_API_VERSION: 0x3b64,
    VFIO_CHECK_EXTENSION: 0x3b65,
    VFIO_SET_IOMMU: 0x3b66,
    VFIO_IOMMU_GET_INFO: 0x3b70,
    VFIO_IOMMU_MAP_DMA: 0x3b71,
    VFIO_IOMMU_UNMAP_DMA: 0x3b72,
    VFIO_IOMMU_DIRTY_PAGES: 0x3b75,
  };

  test('each request number equals the kernel literal', () => {
    assert.deepEqual(Object.keys(IOCTLS).sort(), Object.keys(literal).sort());
    for (const [name, cmd] of Object.entries(literal)) {
      assert.equal(ioctlByName(name)?.cmd, cmd, name);
      assert.equal(ioctlByCmd(cmd)?.name, name, name);
      assert.equal(UAPI_CONSTANTS[name], cmd, name);
    }
    assert.equal(IOCTLS.IOMMU_DESTROY.cmd, 15232);
  });

  test('_IO has no size or direction bits; the helpers invert it', () => {
    for (const d of Object.values(IOCTLS)) {
      assert.equal(_IOC_TYPE(d.cmd), 0x3b);
      assert.equal(_IOC_NR(d.cmd), d.nr);
      assert.equal(_IOC_SIZE(d.cmd), 0);
      assert.equal(_IOC_DIR(d.cmd), 0);
    }
    const w = _IOWR(0x3b, 0x80, 8);
    assert.equal(w, 0xc0083b80);
    assert.equal(_IOC_NR(w), 0x80);
    assert.equal(_IOC_SIZE(w), 8);
    assert.equal(_IO(0x3b, 0x7f), 0x3b7f);
    assert.throws(() => _IO(0x3b, 0x100), RangeError);
  });

  test('min_size and sizeof of every iommufd ioctl (A.0 table)', () => {
    const expect: Record<string, [number, number]> = {
      IOMMU_DESTROY: [8, 8],
      IOMMU_IOAS_ALLOC: [12, 12],
      IOMMU_IOAS_ALLOW_IOVAS: [24, 24],
      IOMMU_IOAS_COPY: [40, 40],
      IOMMU_IOAS_IOVA_RANGES: [32, 32],
      IOMMU_IOAS_MAP: [40, 40],
      IOMMU_IOAS_UNMAP: [24, 24],
      IOMMU_OPTION: [24, 24],
      IOMMU_VFIO_IOAS: [12, 12],
      IOMMU_HWPT_ALLOC: [48, 24],
      IOMMU_GET_HW_INFO: [40, 32],
      IOMMU_HWPT_SET_DIRTY_TRACKING: [16, 16],
      IOMMU_HWPT_GET_DIRTY_BITMAP: [48, 48],
      IOMMU_HWPT_INVALIDATE: [32, 32],
      IOMMU_FAULT_QUEUE_ALLOC: [16, 16],
      IOMMU_IOAS_MAP_FILE: [40, 40],
      IOMMU_VIOMMU_ALLOC: [40, 24],
      IOMMU_VDEVICE_ALLOC: [24, 24],
      IOMMU_IOAS_CHANGE_PROCESS: [8, 8],
      IOMMU_VEVENTQ_ALLOC: [32, 28],
      IOMMU_HW_QUEUE_ALLOC: [40, 40],
      IOMMU_TEST_CMD: [72, 68],
      VFIO_DEVICE_BIND_IOMMUFD: [24, 16],
      VFIO_DEVICE_ATTACH_IOMMUFD_PT: [16, 12],
      VFIO_DEVICE_DETACH_IOMMUFD_PT: [12, 8],
      VFIO_IOMMU_GET_INFO: [24, 16],
      VFIO_IOMMU_MAP_DMA: [32, 32],
      VFIO_IOMMU_UNMAP_DMA: [24, 24],
    };
    for (const [name, [size, min]] of Object.entries(expect)) {
      const s = ioctlByName(name)?.struct;
      assert.ok(s, name);
      assert.equal(s.size, size, `${name} sizeof`);
      assert.equal(s.minSize, min, `${name} min_size`);
    }
  });
});

describe('struct layouts', () => {
  // [field, offset, size] from research A.1–A.24 (offsets computed there with gcc) and the
  // kernel headers for the driver data structs.
  const layouts: Record<string, [string, number, number][]> = {
    iommu_destroy: [
      ['size', 0, 4],
      ['id', 4, 4],
    ],
    iommu_ioas_alloc: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['out_ioas_id', 8, 4],
    ],
    iommu_iova_range: [
      ['start', 0, 8],
      ['last', 8, 8],
    ],
    iommu_ioas_iova_ranges: [
      ['size', 0, 4],
      ['ioas_id', 4, 4],
      ['num_iovas', 8, 4],
      ['__reserved', 12, 4],
      ['allowed_iovas', 16, 8],
      ['out_iova_alignment', 24, 8],
    ],
    iommu_ioas_allow_iovas: [
      ['size', 0, 4],
      ['ioas_id', 4, 4],
      ['num_iovas', 8, 4],
      ['__reserved', 12, 4],
      ['allowed_iovas', 16, 8],
    ],
    iommu_ioas_map: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['ioas_id', 8, 4],
      ['__reserved', 12, 4],
      ['user_va', 16, 8],
      ['length', 24, 8],
      ['iova', 32, 8],
    ],
    iommu_ioas_map_file: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['ioas_id', 8, 4],
      ['fd', 12, 4],
      ['start', 16, 8],
      ['length', 24, 8],
      ['iova', 32, 8],
    ],
    iommu_ioas_copy: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['dst_ioas_id', 8, 4],
      ['src_ioas_id', 12, 4],
      ['length', 16, 8],
      ['dst_iova', 24, 8],
      ['src_iova', 32, 8],
    ],
    iommu_ioas_unmap: [
      ['size', 0, 4],
      ['ioas_id', 4, 4],
      ['iova', 8, 8],
      ['length', 16, 8],
    ],
    iommu_option: [
      ['size', 0, 4],
      ['option_id', 4, 4],
      ['op', 8, 2],
      ['__reserved', 10, 2],
      ['object_id', 12, 4],
      ['val64', 16, 8],
    ],
    iommu_vfio_ioas: [
      ['size', 0, 4],
      ['ioas_id', 4, 4],
      ['op', 8, 2],
      ['__reserved', 10, 2],
    ],
    iommu_hwpt_alloc: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['dev_id', 8, 4],
      ['pt_id', 12, 4],
      ['out_hwpt_id', 16, 4],
      ['__reserved', 20, 4],
      ['data_type', 24, 4],
      ['data_len', 28, 4],
      ['data_uptr', 32, 8],
      ['fault_id', 40, 4],
      ['__reserved2', 44, 4],
    ],
    iommu_hwpt_vtd_s1: [
      ['flags', 0, 8],
      ['pgtbl_addr', 8, 8],
      ['addr_width', 16, 4],
      ['__reserved', 20, 4],
    ],
    iommu_hw_info_vtd: [
      ['flags', 0, 4],
      ['__reserved', 4, 4],
      ['cap_reg', 8, 8],
      ['ecap_reg', 16, 8],
    ],
    iommu_hw_info: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['dev_id', 8, 4],
      ['data_len', 12, 4],
      ['data_uptr', 16, 8],
      ['in_data_type', 24, 4],
      ['out_data_type', 24, 4],
      ['out_max_pasid_log2', 28, 1],
      ['__reserved', 29, 3],
      ['out_capabilities', 32, 8],
    ],
    iommu_hwpt_set_dirty_tracking: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['hwpt_id', 8, 4],
      ['__reserved', 12, 4],
    ],
    iommu_hwpt_get_dirty_bitmap: [
      ['size', 0, 4],
      ['hwpt_id', 4, 4],
      ['flags', 8, 4],
      ['__reserved', 12, 4],
      ['iova', 16, 8],
      ['length', 24, 8],
      ['page_size', 32, 8],
      ['data', 40, 8],
    ],
    iommu_hwpt_invalidate: [
      ['size', 0, 4],
      ['hwpt_id', 4, 4],
      ['data_uptr', 8, 8],
      ['data_type', 16, 4],
      ['entry_len', 20, 4],
      ['entry_num', 24, 4],
      ['__reserved', 28, 4],
    ],
    iommu_hwpt_vtd_s1_invalidate: [
      ['addr', 0, 8],
      ['npages', 8, 8],
      ['flags', 16, 4],
      ['__reserved', 20, 4],
    ],
    iommu_hwpt_pgfault: [
      ['flags', 0, 4],
      ['dev_id', 4, 4],
      ['pasid', 8, 4],
      ['grpid', 12, 4],
      ['perm', 16, 4],
      ['__reserved', 20, 4],
      ['addr', 24, 8],
      ['length', 32, 4],
      ['cookie', 36, 4],
    ],
    iommu_hwpt_page_response: [
      ['cookie', 0, 4],
      ['code', 4, 4],
    ],
    iommu_fault_alloc: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['out_fault_id', 8, 4],
      ['out_fault_fd', 12, 4],
    ],
    iommu_viommu_alloc: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['type', 8, 4],
      ['dev_id', 12, 4],
      ['hwpt_id', 16, 4],
      ['out_viommu_id', 20, 4],
      ['data_len', 24, 4],
      ['__reserved', 28, 4],
      ['data_uptr', 32, 8],
    ],
    iommu_vdevice_alloc: [
      ['size', 0, 4],
      ['viommu_id', 4, 4],
      ['dev_id', 8, 4],
      ['out_vdevice_id', 12, 4],
      ['virt_id', 16, 8],
    ],
    iommu_ioas_change_process: [
      ['size', 0, 4],
      ['__reserved', 4, 4],
    ],
    iommu_veventq_alloc: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['viommu_id', 8, 4],
      ['type', 12, 4],
      ['veventq_depth', 16, 4],
      ['out_veventq_id', 20, 4],
      ['out_veventq_fd', 24, 4],
      ['__reserved', 28, 4],
    ],
    iommu_hw_queue_alloc: [
      ['size', 0, 4],
      ['flags', 4, 4],
      ['viommu_id', 8, 4],
      ['type', 12, 4],
      ['index', 16, 4],
      ['out_hw_queue_id', 20, 4],
      ['nesting_parent_iova', 24, 8],
      ['length', 32, 8],
    ],
    vfio_device_bind_iommufd: [
      ['argsz', 0, 4],
      ['flags', 4, 4],
      ['iommufd', 8, 4],
      ['out_devid', 12, 4],
      ['token_uuid_ptr', 16, 8],
    ],
    vfio_device_attach_iommufd_pt: [
      ['argsz', 0, 4],
      ['flags', 4, 4],
      ['pt_id', 8, 4],
      ['pasid', 12, 4],
    ],
    vfio_device_detach_iommufd_pt: [
      ['argsz', 0, 4],
      ['flags', 4, 4],
      ['pasid', 8, 4],
    ],
    iommu_test_cmd: [
      ['size', 0, 4],
      ['op', 4, 4],
      ['id', 8, 4],
      ['__reserved', 12, 4],
      ['last', 64, 4],
    ],
    iommu_hwpt_selftest: [
      ['iotlb', 0, 4],
      ['pagetable_type', 4, 4],
    ],
    iommu_hwpt_invalidate_selftest: [
      ['flags', 0, 4],
      ['iotlb_id', 4, 4],
    ],
    iommu_viommu_selftest: [
      ['in_data', 0, 4],
      ['out_data', 4, 4],
      ['out_mmap_offset', 8, 8],
      ['out_mmap_length', 16, 8],
    ],
    iommu_viommu_invalidate_selftest: [
      ['flags', 0, 4],
      ['vdev_id', 4, 4],
      ['cache_id', 8, 4],
    ],
  };

  function findField(s: StructDef, name: string): Field | undefined {
    for (const f of s.fields) {
      if (f.type === 'union') {
        const m = f.members.find((x) => x.name === name);
        if (m) return m;
      } else if (f.name === name) return f;
    }
    return undefined;
  }

  test('every field offset and size matches the kernel', () => {
    for (const [sname, fields] of Object.entries(layouts)) {
      const s = (STRUCTS as Record<string, StructDef>)[sname];
      assert.ok(s, sname);
      for (const [fname, off, size] of fields) {
        assert.equal(offsetof(s, fname), off, `${sname}.${fname} offset`);
        const f = findField(s, fname);
        assert.ok(f, `${sname}.${fname}`);
        assert.equal(fieldSize(f), size, `${sname}.${fname} size`);
      }
    }
  });

  test('IOMMU_TEST_CMD union members sit at the absolute offsets of research A.24', () => {
    const abs = (member: string, field: string): number => {
      const u = iommu_test_cmd.fields.find((f) => f.type === 'union');
      assert.ok(u && u.type === 'union');
      const m = u.members.find((x) => x.name === member);
      assert.ok(m && m.type === 'struct');
      return u.offset + m.offset + offsetof(m.struct, field);
    };
    const expect: [string, string, number][] = [
      ['add_reserved', 'start', 16],
      ['add_reserved', 'length', 24],
      ['mock_domain', 'out_stdev_id', 16],
      ['mock_domain', 'out_hwpt_id', 20],
      ['mock_domain', 'out_idev_id', 24],
      ['check_map', 'iova', 16],
      ['check_map', 'length', 24],
      ['check_map', 'uptr', 32],
      ['check_refs', 'length', 16],
      ['check_refs', 'uptr', 24],
      ['check_refs', 'refs', 32],
      ['create_access', 'out_access_fd', 16],
      ['create_access', 'flags', 20],
      ['destroy_access_pages', 'access_pages_id', 16],
      ['access_pages', 'flags', 16],
      ['access_pages', 'out_access_pages_id', 20],
      ['access_pages', 'iova', 24],
      ['access_pages', 'length', 32],
      ['access_pages', 'uptr', 40],
      ['access_rw', 'iova', 16],
      ['access_rw', 'length', 24],
      ['access_rw', 'uptr', 32],
      ['access_rw', 'flags', 40],
      ['memory_limit', 'limit', 16],
      ['mock_domain_replace', 'pt_id', 16],
      ['access_replace_ioas', 'ioas_id', 16],
      ['mock_domain_flags', 'dev_flags', 28],
      ['dirty', 'flags', 16],
      ['dirty', 'iova', 24],
      ['dirty', 'length', 32],
      ['dirty', 'page_size', 40],
      ['dirty', 'uptr', 48],
      ['dirty', 'out_nr_dirty', 56],
      ['check_iotlb', 'id', 16],
      ['check_iotlb', 'iotlb', 20],
      ['trigger_iopf', 'dev_id', 16],
      ['trigger_iopf', 'pasid', 20],
      ['trigger_iopf', 'grpid', 24],
      ['trigger_iopf', 'perm', 28],
      ['trigger_iopf', 'addr', 32],
      ['check_dev_cache', 'id', 16],
      ['check_dev_cache', 'cache', 20],
      ['trigger_vevent', 'dev_id', 16],
      ['pasid_attach', 'pasid', 16],
      ['pasid_attach', 'pt_id', 20],
      ['pasid_replace', 'pt_id', 20],
      ['pasid_detach', 'pasid', 16],
      ['pasid_check', 'hwpt_id', 20],
      ['dmabuf_get', 'length', 16],
      ['dmabuf_get', 'open_flags', 20],
      ['dmabuf_revoke', 'dmabuf_fd', 16],
      ['dmabuf_revoke', 'revoked', 20],
    ];
    for (const [m, f, off] of expect) assert.equal(abs(m, f), off, `${m}.${f}`);
  });

  test('every IOMMU_TEST_OP_* names a union member', () => {
    for (let op = 1; op <= 23; op++) assert.ok(TEST_OP_MEMBER[op], `op ${op}`);
    assert.equal(UAPI_CONSTANTS['IOMMU_TEST_OP_DMABUF_REVOKE'], 23);
  });
});

describe('codecs', () => {
  test('decode gives u64 as bigint, the rest as number, signed s32', () => {
    const b = build(iommu_ioas_map, {
      flags: 7,
      ioas_id: 3,
      user_va: 0xffff_ffff_ffff_f000n,
      length: 4096,
      iova: 0n,
    });
    const d = decode(iommu_ioas_map, b);
    assert.equal(d.size, 40);
    assert.equal(d.user_va, 0xffff_ffff_ffff_f000n);
    assert.equal(d.length, 4096n);
    assert.equal(typeof d.flags, 'number');
    const mf = decode(STRUCTS.iommu_ioas_map_file, build(STRUCTS.iommu_ioas_map_file, { fd: -1 }));
    assert.equal(mf.fd, -1);
  });

  test('decode zero-extends past the user size, as copy_struct_from_user does', () => {
    const b = build(iommu_ioas_map, { flags: 7, iova: 0x1234n });
    const d = decode(iommu_ioas_map, b, 32);
    assert.equal(d.iova, 0n);
    assert.equal(d.flags, 7);
  });

  test('encode writes in place, only the given fields, never past the limit', () => {
    const b = new Uint8Array(40).fill(0xaa);
    encode(iommu_ioas_map, { iova: 0x0102030405060708n }, b, 36);
    assert.deepEqual([...b.subarray(32, 40)], [8, 7, 6, 5, 0xaa, 0xaa, 0xaa, 0xaa]);
    assert.equal(b[0], 0xaa);
  });

  test('encode refuses unknown names and values that do not fit', () => {
    assert.throws(() => build(iommu_ioas_map, { flgas: 1 }), /no field named flgas/);
    assert.throws(() => build(iommu_ioas_map, { flags: 2 ** 32 }), /does not fit in u32/);
    assert.throws(() => build(iommu_ioas_map, { length: -1 }), /does not fit in u64/);
    assert.throws(() => build(iommu_hw_info, { __reserved: [1, 2, 3, 4] }), /holds 3/);
    assert.throws(() => build(iommu_ioas_map, { iova: 1.5 }), /not an integer/);
  });

  test('build defaults size/argsz to sizeof', () => {
    assert.equal(decode(iommu_ioas_map, build(iommu_ioas_map)).size, 40);
    assert.equal(
      decode(STRUCTS.vfio_device_attach_iommufd_pt, build(STRUCTS.vfio_device_attach_iommufd_pt)).argsz,
      16,
    );
    assert.equal(decode(iommu_ioas_map, build(iommu_ioas_map, { size: 8 })).size, 8);
  });

  test('IOMMU_TEST_CMD decodes the member its op selects, every member for an unknown op', () => {
    const d = decode(
      iommu_test_cmd,
      build(iommu_test_cmd, { op: 1, id: 2, add_reserved: { start: 6, length: 7 } }),
    );
    assert.deepEqual(d.add_reserved, { start: 6n, length: 7n });
    assert.equal(d.mock_domain, undefined);
    const all = decodeAny(iommu_test_cmd, build(iommu_test_cmd, { op: 0x1000 }));
    for (const m of Object.values(TEST_OP_MEMBER)) assert.ok(m in all, m);
  });

  for (const [name, s] of Object.entries(STRUCTS) as [string, StructDef][]) {
    test(`${name}: bytes → decode → encode round-trips every covered byte`, () => {
      const cov = coveredBytes(s);
      fc.assert(
        fc.property(fc.uint8Array({ minLength: s.size, maxLength: s.size }), (bytes) => {
          const d = decodeAny(s, bytes);
          const out = new Uint8Array(s.size);
          encode(s, d, out);
          assert.deepEqual(decodeAny(s, out), d);
          const selective = s.fields.some((f) => f.type === 'union' && f.select);
          if (!selective)
            for (let i = 0; i < s.size; i++) assert.equal(out[i], cov[i] ? bytes[i] : 0, `byte ${i}`);
          const inPlace = bytes.slice();
          encode(s, d, inPlace);
          assert.deepEqual(inPlace, bytes);
        }),
        { numRuns: 50 },
      );
    });
  }

  test('IOMMU_TEST_CMD: object → build → decode is the identity for every op', () => {
    const arbScalar = (f: Field): fc.Arbitrary<unknown> => {
      if (f.type === 'union' || f.type === 'struct') throw new Error('scalar only');
      const one =
        f.type === 'u64'
          ? fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })
          : f.type === 's32'
            ? fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 })
            : fc.integer({ min: 0, max: 2 ** (8 * fieldSize(f)) - 1 });
      return one;
    };
    const u = iommu_test_cmd.fields.find((f) => f.type === 'union');
    assert.ok(u && u.type === 'union');
    const arbs = Object.entries(TEST_OP_MEMBER).map(([op, member]) => {
      const m = u.members.find((x) => x.name === member);
      assert.ok(m && m.type === 'struct');
      const rec: Record<string, fc.Arbitrary<unknown>> = {};
      for (const f of m.struct.fields) rec[f.name] = arbScalar(f);
      return fc.record(
        {
          size: fc.constant(72),
          op: fc.constant(Number(op)),
          id: fc.nat({ max: 2 ** 32 - 1 }),
          __reserved: fc.nat({ max: 2 ** 32 - 1 }),
          [member]: fc.record(rec, { noNullPrototype: true }),
          last: fc.nat({ max: 2 ** 32 - 1 }),
        },
        { noNullPrototype: true },
      );
    });
    fc.assert(
      fc.property(fc.oneof(...arbs), (obj) => {
        assert.deepEqual(decodeAny(iommu_test_cmd, build(iommu_test_cmd, obj)), obj);
      }),
      { numRuns: 300 },
    );
  });
});

describe('constants', () => {
  test('flag and type values the selftests rely on', () => {
    const c = UAPI_CONSTANTS;
    assert.equal(c['IOMMU_IOAS_MAP_FIXED_IOVA'], 1);
    assert.equal(c['IOMMU_IOAS_MAP_WRITEABLE'], 2);
    assert.equal(c['IOMMU_IOAS_MAP_READABLE'], 4);
    assert.equal(c['IOMMU_HWPT_ALLOC_PASID'], 8);
    assert.equal(c['IOMMU_HWPT_FAULT_ID_VALID'], 4);
    assert.equal(c['IOMMU_HW_INFO_TYPE_INTEL_VTD'], 1);
    assert.equal(c['IOMMU_HW_INFO_TYPE_SELFTEST'], 0xfeedbeef);
    assert.equal(c['IOMMU_HWPT_DATA_SELFTEST'], 0xdead);
    assert.equal(c['IOMMU_OPTION_HUGE_PAGES'], 1);
    assert.equal(c['IOMMU_OPTION_OP_GET'], 1);
    assert.equal(c['MOCK_APERTURE_START'], 1 << 24);
    assert.equal(c['MOCK_APERTURE_LAST'], 2 ** 31 - 1);
    assert.equal(c['MOCK_PAGE_SIZE'], 2048);
    assert.equal(c['VFIO_DEVICE_ATTACH_PASID'], 1);
    assert.equal(c['U64_MAX'], 2n ** 64n - 1n);
    assert.equal(c['IOMMUFD_CMD_HW_QUEUE_ALLOC'], 0x94);
  });
});

describe('pointer fields', () => {
  test('every pointer field and its companions name real fields of u64/u32 type', () => {
    const resolve = (s: StructDef, path: string): Field | undefined => {
      const [head, tail] = path.split('.') as [string, string | undefined];
      for (const f of s.fields) {
        if (f.type === 'union') {
          const m = f.members.find((x) => x.name === head);
          if (m && tail === undefined) return m;
          if (m && m.type === 'struct') return resolve(m.struct, tail!);
        } else if (f.name === head) return f;
      }
      return undefined;
    };
    for (const p of POINTER_FIELDS) {
      const s = (STRUCTS as Record<string, StructDef>)[p.struct];
      assert.ok(s, p.struct);
      const f = resolve(s, p.field);
      assert.ok(f && f.type === 'u64', `${p.struct}.${p.field} is a u64`);
      for (const c of [p.count, p.len, p.elemBy?.field]) {
        if (c !== undefined) assert.ok(resolve(s, c), `${p.struct}.${c}`);
      }
    }
    assert.equal(pointerFields('iommu_hwpt_alloc')[0]?.elemBy?.map[0xdead]?.name, 'iommu_hwpt_selftest');
  });
});
