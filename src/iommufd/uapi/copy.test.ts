// Differential test of the hand-written byte copies of dispatch.ts (copy_struct_from_user and
// iommufd_ucmd_respond) against their definition as copyFromUser / copyToUser compositions,
// which they replace on the ioctl path: same result or errno, same bytes, same message.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { type KernelError, kerr } from '../../core/errno.ts';
import { copyFromUser, copyStructFromUser, copyToUser, type UserArg, ucmdRespond } from './dispatch.ts';

/** copy_struct_from_user as the composition of the zero check and copyFromUser. */
function refCopyStructFromUser(ksize: number, arg: UserArg, usize: number): Uint8Array | KernelError {
  const size = Math.min(ksize, usize);
  if (usize > ksize) {
    if (arg === null) return kerr('EFAULT', 'copy_struct_from_user: bad user address');
    for (let i = ksize; i < usize; i++) {
      if (i >= arg.length) return kerr('EFAULT', 'copy_struct_from_user: bad user address');
      if (arg[i] !== 0)
        return kerr('E2BIG', `non-zero byte at offset ${i}, past the ${ksize}-byte struct the kernel knows`);
    }
  }
  const head = copyFromUser(arg, 0, size, 'copy_struct_from_user');
  if (!(head instanceof Uint8Array)) return head;
  const k = new Uint8Array(ksize);
  k.set(head);
  return k;
}

/** iommufd_ucmd_respond as copyToUser of the kernel copy's prefix. */
function refUcmdRespond(arg: UserArg, kbuf: Uint8Array, userSize: number, len = kbuf.length) {
  return copyToUser(arg, 0, kbuf.subarray(0, Math.min(userSize, len)), 'iommufd_ucmd_respond');
}

const outcome = (r: Uint8Array | KernelError | undefined) =>
  r === undefined ? 'ok' : r instanceof Uint8Array ? [...r] : { code: r.code, message: r.message };

const userBytes = fc.oneof(
  fc.constant(null),
  fc.uint8Array({ maxLength: 80, size: 'max' }),
  // Zero from some offset on, so that the bytes past the kernel's struct are often all zero.
  fc
    .tuple(fc.uint8Array({ maxLength: 80, size: 'max' }), fc.nat({ max: 80 }))
    .map(([a, zeroFrom]) => a.fill(0, zeroFrom)),
);

test('copyStructFromUser equals its copyFromUser composition', () => {
  fc.assert(
    fc.property(fc.nat({ max: 72 }), userBytes, fc.nat({ max: 96 }), (ksize, arg, usize) => {
      assert.deepEqual(
        outcome(copyStructFromUser(ksize, arg, usize)),
        outcome(refCopyStructFromUser(ksize, arg, usize)),
      );
    }),
    { numRuns: 2000 },
  );
});

test('ucmdRespond equals copyToUser of the kernel copy', () => {
  fc.assert(
    fc.property(
      userBytes,
      fc.uint8Array({ maxLength: 72, size: 'max' }),
      fc.nat({ max: 96 }),
      fc.option(fc.nat({ max: 96 }), { nil: undefined }),
      (arg, kbuf, userSize, len) => {
        const a = arg?.slice() ?? null;
        const b = arg?.slice() ?? null;
        const ra = len === undefined ? ucmdRespond(a, kbuf, userSize) : ucmdRespond(a, kbuf, userSize, len);
        const rb =
          len === undefined ? refUcmdRespond(b, kbuf, userSize) : refUcmdRespond(b, kbuf, userSize, len);
        assert.deepEqual(outcome(ra), outcome(rb));
        assert.deepEqual(a, b);
      },
    ),
    { numRuns: 2000 },
  );
});
