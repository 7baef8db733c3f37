// The process a scenario file's family-4 steps act as: either a process of the local machine's
// iommufd host (the default), or a connection to a `pasidkit serve` (`pasidkit run --connect`),
// which is a process of the remote host. Both offer the same calls, the ones WIRE.md defines,
// so the family-4 operations neither know nor care where the kernel runs.

import { type KernelError, kerr } from '../core/errno.ts';
import { type IoctlResult, ioctl, ioctlValue } from '../iommufd/engine.ts';
import type { Process } from '../iommufd/process.ts';
import {
  IOCTL_VALUE_PAYLOAD,
  ioctlValueArg,
  MMAP_PAYLOAD,
  OP,
  putIoctl,
  putIoctlValue,
  putMmap,
  wireFailure,
} from '../server/protocol.ts';
import type { PasidkitSyncClient, SyncReply } from '../server/sync-client.ts';
import { StepError } from './values.ts';

export interface ScenarioProcess {
  open(path: string): number | KernelError;
  close(fd: number): KernelError | undefined;
  mmap(
    length: number,
    prot: number,
    flags: number,
    fd?: number,
    offset?: number,
    addr?: number,
  ): number | KernelError;
  munmap(va: number, length: number): KernelError | undefined;
  peek(va: number, length: number): Uint8Array | KernelError;
  poke(va: number, bytes: Uint8Array): KernelError | undefined;
  read(fd: number, count: number): Uint8Array | KernelError;
  write(fd: number, bytes: Uint8Array): number | KernelError;
  memfdCreate(name: string, hugetlb?: boolean): number | KernelError;
  ftruncate(fd: number, size: number): KernelError | undefined;
  /** Open descriptors, when they can be known (a remote process cannot list them: []). */
  openFds(): number[];
  ioctl(fd: number, request: number, arg: Uint8Array): IoctlResult;
  ioctlValue(fd: number, request: number, raw: bigint): IoctlResult;
  exit(): void;
}

/** A process of the local host: every call goes straight to the engine. */
export class LocalProcess implements ScenarioProcess {
  readonly proc: Process;
  constructor(proc: Process) {
    this.proc = proc;
  }
  open(path: string) {
    return this.proc.open(path);
  }
  close(fd: number) {
    return this.proc.close(fd);
  }
  mmap(length: number, prot: number, flags: number, fd = -1, offset = 0, addr = 0) {
    return this.proc.mmap(length, prot, flags, fd, offset, addr);
  }
  munmap(va: number, length: number) {
    return this.proc.munmap(va, length);
  }
  peek(va: number, length: number) {
    return this.proc.peek(va, length);
  }
  poke(va: number, bytes: Uint8Array) {
    return this.proc.poke(va, bytes);
  }
  read(fd: number, count: number) {
    return this.proc.read(fd, count);
  }
  write(fd: number, bytes: Uint8Array) {
    return this.proc.write(fd, bytes);
  }
  memfdCreate(name: string, hugetlb = false) {
    return this.proc.memfdCreate(name, hugetlb);
  }
  ftruncate(fd: number, size: number) {
    return this.proc.ftruncate(fd, size);
  }
  openFds() {
    return this.proc.openFds();
  }
  ioctl(fd: number, request: number, arg: Uint8Array) {
    return ioctl(this.proc, fd, request, arg);
  }
  ioctlValue(fd: number, request: number, raw: bigint) {
    return ioctlValue(this.proc, fd, request, raw);
  }
  exit() {
    this.proc.exit();
  }
}

const enc = new TextEncoder();

function u64le(...vals: (number | bigint)[]): Uint8Array {
  const b = new Uint8Array(vals.length * 8);
  const dv = new DataView(b.buffer);
  for (let i = 0; i < vals.length; i++) dv.setBigUint64(i * 8, BigInt(vals[i]!), true);
  return b;
}

/** A process on a `pasidkit serve` host: one connection, each call one frame. */
export class RemoteProcess implements ScenarioProcess {
  private readonly c: PasidkitSyncClient;
  constructor(client: PasidkitSyncClient) {
    this.c = client;
  }
  /**
   * One frame. A lost connection is no errno of the emulated kernel: it fails the step (and
   * every later one of the file) with what happened, rather than as an internal error.
   */
  private call(op: number, fd: number, payload: Uint8Array): SyncReply {
    try {
      return this.c.call(op, fd, payload);
    } catch (e) {
      throw new StepError(`the connection to the pasidkit server is lost: ${(e as Error).message}`);
    }
  }
  private num(op: number, fd: number, payload: Uint8Array, what: string): number | KernelError {
    const r = this.call(op, fd, payload);
    return r.ret < 0 ? wireFailure(what, r.ret) : r.ret;
  }
  private none(op: number, fd: number, payload: Uint8Array, what: string): KernelError | undefined {
    const r = this.num(op, fd, payload, what);
    return typeof r === 'number' ? undefined : r;
  }
  open(path: string) {
    return this.num(OP.OPEN, -1, enc.encode(path), `open ${path}`);
  }
  close(fd: number) {
    return this.none(OP.CLOSE, fd, new Uint8Array(0), `close ${fd}`);
  }
  mmap(length: number, prot: number, flags: number, fd = -1, offset = 0, addr = 0) {
    if (addr !== 0) return kerr('EINVAL', 'mmap: the wire protocol takes no address');
    const p = Buffer.allocUnsafe(MMAP_PAYLOAD);
    putMmap(p, 0, length, prot, flags, offset);
    return this.num(OP.MMAP, fd, p, 'mmap');
  }
  munmap(va: number, length: number) {
    return this.none(OP.MUNMAP, -1, u64le(va, length), 'munmap');
  }
  peek(va: number, length: number) {
    const p = new Uint8Array(12);
    const dv = new DataView(p.buffer);
    dv.setBigUint64(0, BigInt(va), true);
    dv.setUint32(8, length, true);
    const r = this.call(OP.PEEK, -1, p);
    return r.ret < 0 ? wireFailure('peek', r.ret) : r.payload;
  }
  poke(va: number, bytes: Uint8Array) {
    const p = new Uint8Array(8 + bytes.length);
    new DataView(p.buffer).setBigUint64(0, BigInt(va), true);
    p.set(bytes, 8);
    return this.none(OP.POKE, -1, p, 'poke');
  }
  read(fd: number, count: number) {
    const p = new Uint8Array(4);
    new DataView(p.buffer).setUint32(0, count, true);
    const r = this.call(OP.READ, fd, p);
    return r.ret < 0 ? wireFailure('read', r.ret) : r.payload;
  }
  write(fd: number, bytes: Uint8Array) {
    return this.num(OP.WRITE, fd, bytes, 'write');
  }
  memfdCreate(name: string, hugetlb = false) {
    if (hugetlb) return kerr('EINVAL', 'memfd_create: the wire protocol takes no flags');
    return this.num(OP.MEMFD_CREATE, -1, enc.encode(name), 'memfd_create');
  }
  ftruncate(fd: number, size: number) {
    return this.none(OP.FTRUNCATE, fd, u64le(size), 'ftruncate');
  }
  openFds() {
    return [];
  }
  ioctl(fd: number, request: number, arg: Uint8Array): IoctlResult {
    const p = Buffer.allocUnsafe(4 + arg.length);
    putIoctl(p, 0, request, arg);
    const r = this.call(OP.IOCTL, fd, p);
    const out = r.payload.length === arg.length ? r.payload : arg;
    return r.ret < 0
      ? { ret: r.ret, arg: out, error: wireFailure('ioctl', r.ret) }
      : { ret: r.ret, arg: out };
  }
  ioctlValue(fd: number, request: number, raw: bigint): IoctlResult {
    const p = Buffer.allocUnsafe(IOCTL_VALUE_PAYLOAD);
    putIoctlValue(p, 0, request, ioctlValueArg(raw));
    const r = this.call(OP.IOCTL_VALUE, fd, p);
    return r.ret < 0
      ? { ret: r.ret, arg: new Uint8Array(0), error: wireFailure('ioctl', r.ret) }
      : { ret: r.ret, arg: new Uint8Array(0) };
  }
  exit() {
    this.c.end();
  }
}
