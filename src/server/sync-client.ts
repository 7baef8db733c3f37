// The synchronous client of the wire protocol (../shared/spec/WIRE.md), exported as
// `pasidkit/sync-client`: one connection is one process on the emulated host, and each call
// writes its frame and then blocks in read(2) on the socket until the answer is in, as a C
// program blocks in ioctl(2). It is the client for callers with one request in flight that want
// each answer before they go on: the scenario runner's family 4 under `pasidkit run --connect`,
// a test written step by step, the `wire-rtt` benchmark. For many requests in flight, or a
// program that must keep its event loop running, use the pipelined client (client.ts).
//
// Why a blocking read and not the event loop: with one request in flight, every answer wakes
// the caller, and on the small VMs this project runs on, waking a task parked in epoll_wait (as
// every libuv loop is) costs the waking side several microseconds more than waking one parked
// in read(2); the README's Benchmarks section has the measurements. A blocking socket also
// needs no worker thread or shared buffer per call.
//
// Node has no blocking connect and no fcntl(2), so a worker thread connects, turns the socket
// to blocking mode through its libuv handle (uv_stream_set_blocking), hands over the descriptor
// and then keeps the handle, and with it the descriptor, open until end(). That worker never
// returns to its event loop, so its loop never reads the socket: this thread owns the stream.

import { readSync, writeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { ERRNO, errnoName, KernelError, UsageError } from '../core/errno.ts';
import {
  build,
  decode,
  IOCTLS,
  type IoctlName,
  type StructDef,
  type UapiObject,
} from '../iommufd/uapi/index.ts';
import { IoctlError, parseTarget } from './client.ts';
import {
  DESTROY_PAYLOAD,
  IOAS_ALLOC_PAYLOAD,
  IOCTL_VALUE_PAYLOAD,
  ioctlValueArg,
  MIN_LENGTH,
  MMAP_PAYLOAD,
  OP,
  OUT_IOAS_ID,
  putDestroy,
  putIoasAlloc,
  putIoctl,
  putIoctlValue,
  putMmap,
  REQUEST_HEADER,
  RESPONSE_HEADER,
  readI64,
  wireCode,
  wireFailure,
} from './protocol.ts';

// States of ctl[0], the handshake with the worker; ctl[1] is the descriptor once CONNECTED.
const CONNECTING = 0;
const CONNECTED = 1;
const FAILED = 2;
const CLOSE = 3;
const EIO = ERRNO.EIO;

const WORKER = `
const { workerData } = require('node:worker_threads');
const net = require('node:net');
const { sab, target } = workerData;
const ctl = new Int32Array(sab);
function done(state, fd) {
  Atomics.store(ctl, 1, fd);
  Atomics.store(ctl, 0, state);
  Atomics.notify(ctl, 0);
}
const sock = target.path !== undefined
  ? net.createConnection(target.path)
  : net.createConnection(target.port, target.host);
// Paused before it connects: net.Socket would otherwise start reading right after 'connect'.
sock.pause();
sock.on('error', (e) => done(${FAILED}, -(e.errno ?? 0) || -1));
sock.on('connect', () => {
  let fd = -1;
  try {
    const h = sock._handle;
    if (target.port !== undefined) sock.setNoDelay(true);
    if (h.reading) { h.reading = false; h.readStop(); }
    if (typeof h.fd === 'number' && h.fd >= 0 && h.setBlocking(true) === 0) fd = h.fd;
  } catch {}
  if (fd < 0) {
    // A Node whose stream handles cannot do this: EIO rather than a wait for the timeout.
    sock.destroy();
    return done(${FAILED}, -${EIO});
  }
  done(${CONNECTED}, fd);
  while (Atomics.load(ctl, 0) !== ${CLOSE}) Atomics.wait(ctl, 0, ${CONNECTED});
  sock.destroy();
});
`;

/** A reply as it came: `ret` (>= 0, or -errno) and its own copy of the payload. */
export interface SyncReply {
  readonly ret: number;
  readonly payload: Buffer;
}

const EMPTY = Buffer.alloc(0);
const INITIAL = 4096;
/** WIRE.md's default frame limit plus the headers: no reply of a sane server is longer. */
const MAX_REPLY = 16 * 1024 * 1024 + 64;

// A signal that interrupts the read or write (a handler installed without SA_RESTART) is not
// the connection failing: the call is made again, as libc's callers of read(2) do.
function readFd(fd: number, b: Buffer, off: number, len: number): number {
  for (;;) {
    try {
      return readSync(fd, b, off, len, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINTR') throw e;
    }
  }
}

function writeFd(fd: number, b: Buffer, off: number, len: number): number {
  for (;;) {
    try {
      return writeSync(fd, b, off, len);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINTR') throw e;
    }
  }
}

function describe(t: { path: string } | { host: string; port: number }): string {
  return 'path' in t ? t.path : `${t.host}:${t.port}`;
}

export class PasidkitSyncClient {
  private readonly ctl = new Int32Array(new SharedArrayBuffer(8));
  private readonly worker: Worker;
  private readonly fd: number;
  private nextTag = 1;
  private out = Buffer.allocUnsafe(INITIAL);
  private in = Buffer.allocUnsafe(INITIAL);
  private dead: KernelError | null = null;

  /**
   * Connects to a server (a Unix socket path, or `HOST:PORT` / `tcp://HOST:PORT`), blocking
   * until connected; throws a KernelError (ECONNREFUSED, ENOENT, ETIMEDOUT, ...) if it cannot.
   */
  constructor(target: string, timeoutMs = 10_000) {
    const where = parseTarget(target);
    this.worker = new Worker(WORKER, { eval: true, workerData: { sab: this.ctl.buffer, target: where } });
    this.worker.unref();
    const deadline = Date.now() + timeoutMs;
    let state: number;
    while ((state = Atomics.load(this.ctl, 0)) === CONNECTING) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      Atomics.wait(this.ctl, 0, CONNECTING, left);
    }
    if (state !== CONNECTED) {
      void this.worker.terminate();
      const errno = -Atomics.load(this.ctl, 1);
      const code = state === CONNECTING ? 'ETIMEDOUT' : (errnoName(errno) ?? 'ECONNREFUSED');
      throw new KernelError(code, `cannot connect to the pasidkit server at ${describe(where)}`);
    }
    this.fd = Atomics.load(this.ctl, 1);
  }

  /** Whether end() was called or the connection was lost. */
  get ended(): boolean {
    return this.dead !== null;
  }

  /** Closes the connection: the server's process for it exits (every fd closed). */
  end(): void {
    if (this.dead) return;
    this.dead = new KernelError('ECONNRESET', 'the connection to the pasidkit server is closed');
    Atomics.store(this.ctl, 0, CLOSE);
    Atomics.notify(this.ctl, 0);
  }

  // ---- framing -----------------------------------------------------------------------------

  /** Writes a request header for a payload of `payload` bytes; returns the payload's offset. */
  private begin(op: number, fd: number, payload: number): number {
    if (this.dead) throw this.dead;
    const size = REQUEST_HEADER + payload;
    if (size > this.out.length) {
      if (size - 4 > MAX_REPLY) throw new UsageError(`a frame of ${size} bytes is above the wire limit`);
      this.out = Buffer.allocUnsafe(Math.max(size, 2 * this.out.length));
    }
    const o = this.out;
    o.writeUInt32LE(MIN_LENGTH + payload, 0);
    o.writeUInt32LE(op, 4);
    o.writeUInt32LE(this.nextTag, 8);
    o.writeInt32LE(fd, 12);
    return REQUEST_HEADER;
  }

  /**
   * Sends out[0, REQUEST_HEADER + payload) and reads its reply into `this.in`; returns the
   * reply's `length` field. A lost connection, or a reply that is not the answer to this
   * request, closes the client and throws.
   */
  private exchange(payload: number): number {
    const size = REQUEST_HEADER + payload;
    const tag = this.nextTag;
    this.nextTag = (tag + 1) >>> 0;
    try {
      let sent = 0;
      while (sent < size) sent += writeFd(this.fd, this.out, sent, size - sent);
      let got = 0;
      let need = 4;
      for (;;) {
        const n = readFd(this.fd, this.in, got, this.in.length - got);
        if (n === 0) return this.lost('the pasidkit server closed the connection');
        got += n;
        if (got < 4) continue;
        need = 4 + this.in.readUInt32LE(0);
        if (got >= need) break;
        if (need > this.in.length) {
          if (need > MAX_REPLY) return this.lost(`a reply of ${need} bytes`);
          const nb = Buffer.allocUnsafe(Math.max(need, 2 * this.in.length));
          this.in.copy(nb, 0, 0, got);
          this.in = nb;
        }
      }
      const len = need - 4;
      if (len < MIN_LENGTH || got !== need || this.in.readUInt32LE(4) !== tag)
        return this.lost(`the pasidkit server's reply (length ${len}) is not the answer to request ${tag}`);
      return len;
    } catch (e) {
      if (e instanceof KernelError) throw e;
      const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
      return this.lost(`connection error: ${code}`);
    }
  }

  private lost(why: string): never {
    const e = new KernelError('ECONNRESET', why);
    this.end();
    this.dead = e;
    throw e;
  }

  private payloadOf(len: number): Buffer {
    const plen = len - MIN_LENGTH;
    if (plen <= 0) return EMPTY;
    const p = Buffer.allocUnsafe(plen);
    this.in.copy(p, 0, RESPONSE_HEADER, RESPONSE_HEADER + plen);
    return p;
  }

  // ---- raw ops -----------------------------------------------------------------------------

  /** Any frame, answered as it came (a negative `ret` is not an exception here). */
  call(op: number, fd: number, payload: Uint8Array = EMPTY): SyncReply {
    const at = this.begin(op, fd, payload.length);
    this.out.set(payload, at);
    const len = this.exchange(payload.length);
    return { ret: readI64(this.in, 8), payload: this.payloadOf(len) };
  }

  private num(op: number, fd: number, payload: Uint8Array, what: string): number {
    const r = this.call(op, fd, payload);
    if (r.ret < 0) throw wireFailure(what, r.ret);
    return r.ret;
  }

  open(path: string): number {
    return this.num(OP.OPEN, -1, Buffer.from(path, 'utf8'), `open ${path}`);
  }

  close(fd: number): void {
    this.num(OP.CLOSE, fd, EMPTY, `close fd ${fd}`);
  }

  /** ioctl(2) with a pointer to `arg`; returns the bytes as the kernel left them. */
  ioctl(fd: number, request: number, arg: Uint8Array): { ret: number; arg: Buffer } {
    const at = this.begin(OP.IOCTL, fd, 4 + arg.length);
    putIoctl(this.out, at, request, arg);
    const len = this.exchange(4 + arg.length);
    const ret = readI64(this.in, 8);
    const out = this.payloadOf(len);
    if (ret < 0)
      throw new IoctlError(wireCode(ret), `ioctl 0x${(request >>> 0).toString(16)} on fd ${fd}`, out);
    return { ret, arg: out };
  }

  /** ioctl(2) with a raw argument: an integer, 0 (no argument) or a VA in this process. */
  ioctlValue(fd: number, request: number, raw: bigint | number = 0): number {
    const arg = ioctlValueArg(raw);
    const at = this.begin(OP.IOCTL_VALUE, fd, IOCTL_VALUE_PAYLOAD);
    putIoctlValue(this.out, at, request, arg);
    this.exchange(IOCTL_VALUE_PAYLOAD);
    const ret = readI64(this.in, 8);
    if (ret < 0) throw wireFailure(`ioctl 0x${(request >>> 0).toString(16)} on fd ${fd}`, ret);
    return ret;
  }

  /** mmap(2) at an address the kernel picks; returns the VA. */
  mmap(length: number, prot: number, flags: number, fd = -1, offset = 0): number {
    const at = this.begin(OP.MMAP, fd, MMAP_PAYLOAD);
    putMmap(this.out, at, length, prot, flags, offset);
    this.exchange(MMAP_PAYLOAD);
    const ret = readI64(this.in, 8);
    if (ret < 0) throw wireFailure(`mmap of ${length} bytes`, ret);
    return ret;
  }

  // ---- typed ioctls ------------------------------------------------------------------------

  /**
   * Any ioctl of the uAPI table by name, with its struct built from `fields` (`size`/`argsz`
   * default to sizeof); returns the return value and the decoded written-back struct.
   */
  ioctlStruct(
    fd: number,
    name: IoctlName,
    fields: Readonly<Record<string, unknown>> = {},
  ): { ret: number; out: UapiObject } {
    const def = IOCTLS[name];
    const s = def.struct as StructDef | null;
    if (s === null) throw new UsageError(`${name} takes an integer argument: use ioctlValue`);
    const arg = build(s, fields);
    const at = this.begin(OP.IOCTL, fd, 4 + arg.length);
    putIoctl(this.out, at, def.cmd, arg);
    const len = this.exchange(4 + arg.length);
    const ret = readI64(this.in, 8);
    if (ret < 0) throw new IoctlError(wireCode(ret), `${name} on fd ${fd}`, this.payloadOf(len));
    return { ret, out: decode(s, this.payloadOf(len)) as unknown as UapiObject };
  }

  /** IOMMU_IOAS_ALLOC: a new IOAS; returns its ID. */
  ioasAlloc(fd: number): number {
    const at = this.begin(OP.IOCTL, fd, IOAS_ALLOC_PAYLOAD);
    putIoasAlloc(this.out, at);
    const len = this.exchange(IOAS_ALLOC_PAYLOAD);
    const ret = readI64(this.in, 8);
    if (ret < 0)
      throw new IoctlError(
        wireCode(ret),
        `ioctl 0x${IOAS_ALLOC_CMD.toString(16)} on fd ${fd}`,
        this.payloadOf(len),
      );
    if (len - MIN_LENGTH < OUT_IOAS_ID + 4)
      throw new KernelError('EIO', `IOMMU_IOAS_ALLOC on fd ${fd}: a reply too short to hold the ID`);
    return this.in.readUInt32LE(RESPONSE_HEADER + OUT_IOAS_ID);
  }

  /** IOMMU_DESTROY of any object ID. */
  destroy(fd: number, id: number): void {
    const at = this.begin(OP.IOCTL, fd, DESTROY_PAYLOAD);
    putDestroy(this.out, at, id);
    const len = this.exchange(DESTROY_PAYLOAD);
    const ret = readI64(this.in, 8);
    if (ret < 0) throw new IoctlError(wireCode(ret), `IOMMU_DESTROY of ${id}`, this.payloadOf(len));
  }
}

const IOAS_ALLOC_CMD = IOCTLS.IOMMU_IOAS_ALLOC.cmd;
