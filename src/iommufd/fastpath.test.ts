// Differential tests of the ioctl path's fast forms against the generic forms they replace:
// IOMMU_IOAS_ALLOC and IOMMU_DESTROY reading and writing kbuf directly against the same handlers
// written with the generic codec (u.cmd and respond), the lazily decoded Ucmd against an eager
// decode, and ioctlInPlace against ioctl. Random argument bytes, sizes, short user buffers and
// fault injection: every outcome (ret or errno, written-back bytes, objects and IDs left) must
// be the same.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type KernelError, kerr } from '../core/errno.ts';
import { IommufdHost, ioctl, ioctlInPlace } from './engine.ts';
import { destroyIoctl, Ioas, ioasAlloc } from './ioas.ts';
import { IommufdFile } from './main.ts';
import type { Process } from './process.ts';
import { build, IOCTLS, type IoctlName, iommufdIoctlCheck } from './uapi/index.ts';
import { makeUcmd, respond, type Ucmd } from './ucmd.ts';

/** IOMMU_IOAS_ALLOC as written with the generic codec (the reference). */
function refIoasAlloc(u: Ucmd): number | KernelError {
  const c = u.cmd;
  if (c['flags'] !== 0) return kerr('EOPNOTSUPP', 'IOMMU_IOAS_ALLOC: flags must be 0');
  const ioas = u.ctx.alloc(new Ioas(u.ctx));
  if (!(ioas instanceof Ioas)) return ioas;
  const err = respond(u, { out_ioas_id: ioas.id });
  if (err) {
    u.ctx.abortAndDestroy(ioas);
    return err;
  }
  u.ctx.finalize(ioas);
  return 0;
}

/** IOMMU_DESTROY as written with the generic codec (the reference). */
function refDestroy(u: Ucmd): number | KernelError {
  return u.ctx.destroyId(u.cmd['id'] as number) ?? 0;
}

interface Side {
  readonly host: IommufdHost;
  readonly p: Process;
  readonly file: IommufdFile;
}

function side(): Side {
  const host = new IommufdHost();
  const p = host.spawn();
  const fd = p.open('/dev/iommu') as number;
  const file = p.file(fd);
  assert.ok(file instanceof IommufdFile);
  return { host, p, file };
}

/** One call of `handler` the way the engine makes it; the outcome as comparable data. */
function call(
  s: Side,
  name: IoctlName,
  handler: (u: Ucmd) => number | KernelError,
  bytes: Uint8Array | null,
): { ret: number | string; arg: number[] | null; ids: number[] } {
  const arg = bytes ? bytes.slice() : null;
  const chk = iommufdIoctlCheck(IOCTLS[name].cmd, arg, { testCmd: true });
  let ret: number | string;
  if (chk.kind === 'ok') {
    const r = handler(
      makeUcmd(s.p, s.file.ctx, chk.struct, chk.kbuf, arg ?? new Uint8Array(0), chk.userSize),
    );
    ret = typeof r === 'number' ? r : r.code;
  } else ret = chk.kind === 'error' ? chk.error.code : 'compat';
  const ids = [...s.file.ctx.objects.keys()].sort((a, b) => a - b);
  return { ret, arg: arg ? [...arg] : null, ids };
}

/** An argument: the struct with `size` and the other u32 fields from the model, cut or padded. */
const argBytes = () =>
  fc.record({
    size: fc.oneof(fc.constantFrom(0, 4, 8, 12, 16, 20), fc.nat({ max: 64 })),
    second: fc.oneof(fc.constantFrom(0, 1, 2, 3), fc.nat()),
    third: fc.oneof(fc.constant(0), fc.nat()),
    // How many bytes the user's buffer really has (a short one faults).
    have: fc.oneof(fc.constant(-1), fc.nat({ max: 24 })),
    tail: fc.constantFrom(0, 1),
    isNull: fc.nat({ max: 9 }).map((x) => x === 0),
  });

type ArgModel = {
  size: number;
  second: number;
  third: number;
  have: number;
  tail: number;
  isNull: boolean;
};

function bytesOf(m: ArgModel): Uint8Array | null {
  if (m.isNull) return null;
  const len = m.have < 0 ? Math.max(m.size, 12) : m.have;
  const b = new Uint8Array(len);
  const dv = new DataView(b.buffer);
  const put = (off: number, v: number) => {
    if (off + 4 <= len) dv.setUint32(off, v >>> 0, true);
  };
  put(0, m.size);
  put(4, m.second);
  put(8, m.third);
  if (len > 12) b[len - 1] = m.tail;
  return b;
}

describe('IOAS_ALLOC and DESTROY fast handlers', () => {
  test('give what the generic-codec handlers give, for any argument bytes', () => {
    const op = fc.oneof(
      argBytes().map((m) => ({ kind: 'alloc' as const, m })),
      argBytes().map((m) => ({ kind: 'destroy' as const, m })),
      // DESTROY of a small ID that may exist, with a well-formed struct.
      fc.nat({ max: 8 }).map((id) => ({ kind: 'destroyId' as const, id })),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40, size: 'medium' }), (ops) => {
        const fast = side();
        const ref = side();
        for (const o of ops) {
          let name: IoctlName;
          let bytes: Uint8Array | null;
          if (o.kind === 'destroyId') {
            name = 'IOMMU_DESTROY';
            bytes = build(IOCTLS.IOMMU_DESTROY.struct!, { id: o.id });
          } else {
            name = o.kind === 'alloc' ? 'IOMMU_IOAS_ALLOC' : 'IOMMU_DESTROY';
            bytes = bytesOf(o.m);
          }
          const isAlloc = name === 'IOMMU_IOAS_ALLOC';
          const a = call(fast, name, isAlloc ? ioasAlloc : destroyIoctl, bytes);
          const b = call(ref, name, isAlloc ? refIoasAlloc : refDestroy, bytes);
          assert.deepEqual(a, b);
        }
        fast.host.checkInvariants();
        ref.host.checkInvariants();
      }),
      { numRuns: 300 },
    );
  });

  test('fail the same way at every injected fault', () => {
    const alloc = build(IOCTLS.IOMMU_IOAS_ALLOC.struct!);
    for (let n = 1; n < 12; n++) {
      const fast = side();
      const ref = side();
      const seq = (s: Side, fastPath: boolean) => {
        s.host.faults.failNth(n);
        const out: unknown[] = [];
        for (let i = 0; i < 4; i++) {
          out.push(call(s, 'IOMMU_IOAS_ALLOC', fastPath ? ioasAlloc : refIoasAlloc, alloc));
          const id = [...s.file.ctx.objects.keys()][0] ?? 1;
          const d = build(IOCTLS.IOMMU_DESTROY.struct!, { id });
          out.push(call(s, 'IOMMU_DESTROY', fastPath ? destroyIoctl : refDestroy, d));
        }
        out.push([...s.host.faults.injected]);
        s.host.faults.disarm();
        return out;
      };
      assert.deepEqual(seq(fast, true), seq(ref, false), `fail_nth ${n}`);
    }
  });

  test('a lazily decoded cmd shows the struct as the user passed it, also after respond()', () => {
    const s = side();
    const arg = build(IOCTLS.IOMMU_IOAS_ALLOC.struct!, { out_ioas_id: 77 });
    const chk = iommufdIoctlCheck(IOCTLS.IOMMU_IOAS_ALLOC.cmd, arg, { testCmd: true });
    assert.equal(chk.kind, 'ok');
    if (chk.kind !== 'ok') return;
    const u = makeUcmd(s.p, s.file.ctx, chk.struct, chk.kbuf, arg, chk.userSize);
    assert.equal(respond(u, { out_ioas_id: 5 }), undefined);
    assert.equal(u.cmd['out_ioas_id'], 77);
    assert.equal(new DataView(arg.buffer).getUint32(8, true), 5);
  });
});

describe('ioctlInPlace', () => {
  test('returns what ioctl returns and leaves the bytes ioctl writes back', () => {
    const names: IoctlName[] = [
      'IOMMU_IOAS_ALLOC',
      'IOMMU_DESTROY',
      'IOMMU_IOAS_IOVA_RANGES',
      'IOMMU_OPTION',
      'IOMMU_IOAS_UNMAP',
      'IOMMU_VFIO_IOAS',
    ];
    const op = fc.record({
      name: fc.constantFrom(...names),
      fd: fc.constantFrom(0, 0, 0, 1, 5),
      id: fc.nat({ max: 4 }),
      cut: fc.nat({ max: 48 }),
      junk: fc.nat({ max: 255 }),
      isNull: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30, size: 'medium' }), (ops) => {
        const a = new IommufdHost().spawn();
        const b = new IommufdHost().spawn();
        a.open('/dev/iommu');
        b.open('/dev/iommu');
        for (const o of ops) {
          const def = IOCTLS[o.name];
          const hasIoas = def.struct!.fields.some((f) => f.name === 'ioas_id');
          const full = build(def.struct!, hasIoas ? { ioas_id: o.id } : {});
          const bytes = o.isNull ? null : full.subarray(0, Math.min(full.length, o.cut + 4)).slice();
          if (bytes && bytes.length > 4) bytes[bytes.length - 1] = o.junk & 1;
          const r = ioctl(a, o.fd, def.cmd, bytes);
          const mine = bytes ? bytes.slice() : null;
          const ret = ioctlInPlace(b, o.fd, def.cmd, mine);
          assert.equal(ret, r.ret);
          assert.deepEqual(mine ? [...mine] : [], [...r.arg]);
        }
      }),
      { numRuns: 200 },
    );
  });
});
