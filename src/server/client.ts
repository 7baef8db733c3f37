// The TypeScript client of the wire protocol (../shared/spec/WIRE.md), to be exported as
// `pasidkit/client`: one connection to a `pasidkit serve` server is one process on the emulated
// host, and every method is the system call of the same name on that process. Requests are
// pipelined: any number may be outstanding, the server answers in request order, and each reply
// is matched to its request by tag.
//
// The raw calls mirror the wire ops (open, close, ioctl, ioctlValue, mmap, munmap, peek, poke,
// read, write, memfdCreate, ftruncate). A failed call rejects with a KernelError carrying the
// Linux errno; a failed ioctl rejects with an IoctlError, a KernelError that also carries the
// argument bytes as the kernel left them (some ioctls write results back when they fail).
// Typed helpers build the real uAPI structs with the codecs of src/iommufd/uapi and decode the
// written-back struct; pointers inside structs are VAs in this connection's own memory (made
// with mmap and filled with poke), exactly as a C program passes pointers into its own memory.

import net from 'node:net';
import { type ErrnoName, KernelError, UsageError } from '../core/errno.ts';
import {
  build,
  type DecodedStruct,
  decode,
  IOCTLS,
  IOMMUFD_ENUMS,
  IOMMUFD_TEST_ENUMS,
  type IoctlName,
  STRUCTS,
  type StructDef,
  type TEST_CMD_UNION,
  type UapiObject,
  VFIO_ENUMS,
} from '../iommufd/uapi/index.ts';
import {
  DESTROY_PAYLOAD,
  IOAS_ALLOC_PAYLOAD,
  IOCTL_VALUE_PAYLOAD,
  ioctlValueArg,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MIN_LENGTH,
  MMAP_PAYLOAD,
  OP,
  OUT_IOAS_ID,
  PROT_READ,
  PROT_WRITE,
  PrefixViews,
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
  writeI64,
} from './protocol.ts';

/** A reply as it came: `ret` (>= 0, or -errno) and the payload. */
export interface WireReply {
  readonly ret: number;
  readonly payload: Buffer;
}

export interface IoctlReply {
  /** The ioctl's return value (>= 0). */
  readonly ret: number;
  /** The argument bytes as the kernel left them. */
  readonly arg: Buffer;
}

/** A failed ioctl: the errno and the argument bytes as the kernel left them. */
export class IoctlError extends KernelError {
  readonly arg: Buffer;
  constructor(code: ErrnoName, message: string, arg: Buffer) {
    super(code, message);
    this.arg = arg;
  }
}

const errnoCode = wireCode;
const failure = wireFailure;

// What a reply resolves its promise with, decided when the request is made: the hot typed
// calls get their result straight out of the receive buffer, with no reply object, no payload
// copy and no further async layer.
/** The reply as it came ({ret, payload}). */
const K_RAW = 0;
/** ioctlValue: ret, or a KernelError. */
const K_VALUE = 1;
/** ioasAlloc: the new IOAS ID from the written-back struct, or an IoctlError. */
const K_IOAS_ALLOC = 2;
/** destroy: undefined, or an IoctlError. */
const K_DESTROY = 3;

type Resolve = (v: unknown) => void;
type Reject = (e: Error) => void;

// `new Promise(capture)` hands back its resolving functions without a closure per request.
let capturedResolve: Resolve = () => {};
let capturedReject: Reject = () => {};
function capture(resolve: Resolve, reject: Reject): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

const EMPTY = Buffer.alloc(0);
const OUT_INITIAL = 16 * 1024;
const READ_BUFFER = 64 * 1024;

/** `tcp://HOST:PORT`, `HOST:PORT` (HOST may be `[v6]`), or else a Unix socket path. */
export function parseTarget(target: string): { path: string } | { host: string; port: number } {
  const t = target.startsWith('tcp://') ? target.slice(6) : target;
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(t);
  if (m && (target.startsWith('tcp://') || !target.includes('/'))) {
    const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
    const port = Number(m[2]);
    if (port > 65535) throw new UsageError(`${target}: port above 65535`);
    return { host, port };
  }
  if (target.startsWith('tcp://')) throw new UsageError(`${target}: expected tcp://HOST:PORT`);
  return { path: target };
}

export class PasidkitClient {
  private readonly socket: net.Socket;
  // Outstanding requests, oldest first, in a ring of `mask + 1` slots: [head, head + count).
  private mask = 63;
  private head = 0;
  private count = 0;
  private qTag = new Float64Array(64);
  private qKind = new Uint8Array(64);
  /** Per kind: the fd (K_VALUE, K_IOAS_ALLOC), for error messages. */
  private qFd = new Float64Array(64);
  /** Per kind: the request number (K_VALUE, K_IOAS_ALLOC) or the object ID (K_DESTROY). */
  private qAux = new Float64Array(64);
  private qResolve: (Resolve | undefined)[] = new Array<Resolve | undefined>(64);
  private qReject: (Reject | undefined)[] = new Array<Reject | undefined>(64);
  private nextTag = 1;
  // Outgoing frames not yet written: out[0, outLen).
  private out = Buffer.allocUnsafe(OUT_INITIAL);
  private outLen = 0;
  private readonly views = new PrefixViews();
  private flushQueued = false;
  private readonly flushTask = (): void => this.flush();
  // A partial reply carried over between reads.
  private pend: Buffer = EMPTY;
  private pendLen = 0;
  private dead: KernelError | null = null;
  private readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.fail(new KernelError('ECONNRESET', 'the connection to the pasidkit server is closed'));
        resolve();
      });
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.fail(new KernelError('ECONNRESET', `connection error: ${e.code ?? e.message}`));
    });
  }

  /** Connects to a server: a Unix socket path, or `HOST:PORT` / `tcp://HOST:PORT`. */
  static connect(target: string): Promise<PasidkitClient> {
    const where = parseTarget(target);
    return new Promise((resolve, reject) => {
      let client: PasidkitClient | null = null;
      const buffer = Buffer.allocUnsafe(READ_BUFFER);
      // Replies are parsed straight out of one reused read buffer (no Buffer per read).
      const onread = {
        buffer,
        callback: (n: number, b: Uint8Array): boolean => {
          client!.onRead(b as Buffer, n);
          return true;
        },
      };
      const socket = net.connect(
        'path' in where ? { path: where.path, onread } : { host: where.host, port: where.port, onread },
      );
      client = new PasidkitClient(socket);
      const onError = (e: Error) => reject(e);
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        socket.setNoDelay(true);
        resolve(client!);
      });
    });
  }

  /** Requests sent and not yet answered. */
  get outstanding(): number {
    return this.count;
  }

  /** Closes the connection (the server's process for it exits) once every reply is in. */
  async end(): Promise<void> {
    this.flush();
    this.socket.end();
    await this.closed;
  }

  /** Drops the connection at once; outstanding requests fail with ECONNRESET. */
  abort(): void {
    this.socket.destroy();
  }

  // ---- framing -----------------------------------------------------------------------------

  private fail(e: KernelError): void {
    if (this.dead) return;
    this.dead = e;
    const rejects = this.qReject;
    const resolves = this.qResolve;
    for (let i = 0; i < this.count; i++) {
      const at = (this.head + i) & this.mask;
      const reject = rejects[at]!;
      rejects[at] = resolves[at] = undefined;
      reject(e);
    }
    this.head = 0;
    this.count = 0;
  }

  /** Reserves a request frame; returns the offset of its payload in `this.out` (its tag is `this.nextTag - 1`). */
  private begin(op: number, fd: number, payload: number): number {
    const size = REQUEST_HEADER + payload;
    if (this.outLen + size > this.out.length) {
      let cap = this.out.length * 2;
      while (cap < this.outLen + size) cap *= 2;
      const nb = Buffer.allocUnsafe(cap);
      this.out.copy(nb, 0, 0, this.outLen);
      this.out = nb;
    }
    const tag = this.nextTag;
    this.nextTag = (tag + 1) >>> 0;
    const o = this.out;
    const at = this.outLen;
    o.writeUInt32LE(MIN_LENGTH + payload, at);
    o.writeUInt32LE(op, at + 4);
    o.writeUInt32LE(tag, at + 8);
    o.writeInt32LE(fd, at + 12);
    this.outLen = at + size;
    return at + REQUEST_HEADER;
  }

  /** Queues the frame just built; its reply settles the promise as `kind` says. */
  private send<T>(kind: number, fd: number, aux: number): Promise<T> {
    if (this.dead) {
      this.outLen = 0;
      return Promise.reject(this.dead);
    }
    if (!this.flushQueued) {
      this.flushQueued = true;
      // Every request made in the same tick goes out in one write.
      queueMicrotask(this.flushTask);
    }
    if (this.count > this.mask) this.grow();
    const at = (this.head + this.count) & this.mask;
    this.count++;
    this.qTag[at] = (this.nextTag - 1) >>> 0;
    this.qKind[at] = kind;
    this.qFd[at] = fd;
    this.qAux[at] = aux;
    const p = new Promise<T>(capture as (resolve: (v: T) => void, reject: Reject) => void);
    this.qResolve[at] = capturedResolve;
    this.qReject[at] = capturedReject;
    return p;
  }

  /** Doubles the ring, oldest request first. */
  private grow(): void {
    const n = this.mask + 1;
    const tag = new Float64Array(2 * n);
    const kind = new Uint8Array(2 * n);
    const fd = new Float64Array(2 * n);
    const aux = new Float64Array(2 * n);
    const res = new Array<Resolve | undefined>(2 * n);
    const rej = new Array<Reject | undefined>(2 * n);
    for (let i = 0; i < this.count; i++) {
      const j = (this.head + i) & this.mask;
      tag[i] = this.qTag[j]!;
      kind[i] = this.qKind[j]!;
      fd[i] = this.qFd[j]!;
      aux[i] = this.qAux[j]!;
      res[i] = this.qResolve[j];
      rej[i] = this.qReject[j];
    }
    this.qTag = tag;
    this.qKind = kind;
    this.qFd = fd;
    this.qAux = aux;
    this.qResolve = res;
    this.qReject = rej;
    this.head = 0;
    this.mask = 2 * n - 1;
  }

  /** out[0, n) as a Buffer. */
  private outView(n: number): Buffer {
    return this.views.get(this.out, n);
  }

  private flush(): void {
    this.flushQueued = false;
    const n = this.outLen;
    if (n === 0 || this.dead) return;
    this.outLen = 0;
    const s = this.socket;
    s.write(this.outView(n));
    // Nothing left queued in the socket: the kernel has the bytes and the buffer is ours again.
    // Otherwise the socket still holds those bytes, and new frames go to a new buffer.
    if (s.writableLength !== 0) this.out = Buffer.allocUnsafe(Math.max(OUT_INITIAL, n));
  }

  private onRead(chunk: Buffer, n: number): void {
    let b = chunk;
    let end = n;
    if (this.pendLen > 0) {
      const need = this.pendLen + n;
      if (this.pend.length < need) {
        const nb = Buffer.allocUnsafe(Math.max(need, this.pend.length * 2));
        this.pend.copy(nb, 0, 0, this.pendLen);
        this.pend = nb;
      }
      chunk.copy(this.pend, this.pendLen, 0, n);
      b = this.pend;
      end = need;
    }
    let off = 0;
    while (end - off >= 4) {
      const len = b.readUInt32LE(off);
      if (len < MIN_LENGTH) {
        this.fail(new KernelError('EIO', `malformed reply: length ${len}`));
        this.socket.destroy();
        return;
      }
      if (end - off < len + 4) break;
      const tag = b.readUInt32LE(off + 4);
      if (this.count === 0 || this.qTag[this.head] !== tag) {
        this.fail(new KernelError('EIO', `reply with tag ${tag} does not match the oldest request`));
        this.socket.destroy();
        return;
      }
      const at = this.head;
      this.head = (at + 1) & this.mask;
      this.count--;
      const resolve = this.qResolve[at]!;
      const reject = this.qReject[at]!;
      this.qResolve[at] = this.qReject[at] = undefined;
      this.settle(this.qKind[at]!, at, b, off, len, resolve, reject);
      off += len + 4;
    }
    const rest = end - off;
    if (rest === 0) this.pendLen = 0;
    else if (b === this.pend) {
      this.pend.copyWithin(0, off, end);
      this.pendLen = rest;
    } else {
      if (this.pend.length < rest) this.pend = Buffer.allocUnsafe(Math.max(rest, 4096));
      chunk.copy(this.pend, 0, off, end);
      this.pendLen = rest;
    }
  }

  /** Settles the request in ring slot `at` with the reply frame at b[off, off + 4 + len). */
  private settle(
    kind: number,
    at: number,
    b: Buffer,
    off: number,
    len: number,
    resolve: Resolve,
    reject: Reject,
  ): void {
    const ret = readI64(b, off + 8);
    const p = off + RESPONSE_HEADER;
    const plen = len - MIN_LENGTH;
    if (kind === K_VALUE) {
      if (ret < 0)
        reject(failure(`ioctl 0x${(this.qAux[at]! >>> 0).toString(16)} on fd ${this.qFd[at]}`, ret));
      else resolve(ret);
    } else if (kind === K_IOAS_ALLOC) {
      if (ret < 0) {
        const msg = `ioctl 0x${(this.qAux[at]! >>> 0).toString(16)} on fd ${this.qFd[at]}`;
        reject(new IoctlError(errnoCode(ret), msg, copyOut(b, p, plen)));
      } else if (plen >= OUT_IOAS_ID + 4) resolve(b.readUInt32LE(p + OUT_IOAS_ID));
      else {
        // A reply too short to hold the ID fails as reading it from the payload would.
        try {
          resolve(copyOut(b, p, plen).readUInt32LE(OUT_IOAS_ID));
        } catch (e) {
          reject(e as Error);
        }
      }
    } else if (kind === K_DESTROY) {
      if (ret < 0)
        reject(new IoctlError(errnoCode(ret), `IOMMU_DESTROY of ${this.qAux[at]}`, copyOut(b, p, plen)));
      else resolve(undefined);
    } else resolve({ ret, payload: copyOut(b, p, plen) } satisfies WireReply);
  }

  // ---- raw ops -----------------------------------------------------------------------------

  /** Any frame, answered as it came (a negative `ret` is not an exception here). */
  call(op: number, fd: number, payload: Uint8Array = EMPTY): Promise<WireReply> {
    const at = this.begin(op, fd, payload.length);
    this.out.set(payload, at);
    return this.send(K_RAW, fd, 0);
  }

  private async num(op: number, fd: number, payload: Uint8Array, what: () => string): Promise<number> {
    const r = await this.call(op, fd, payload);
    if (r.ret < 0) throw failure(what(), r.ret);
    return r.ret;
  }

  open(path: string): Promise<number> {
    return this.num(OP.OPEN, -1, Buffer.from(path, 'utf8'), () => `open ${path}`);
  }

  async close(fd: number): Promise<void> {
    await this.num(OP.CLOSE, fd, EMPTY, () => `close fd ${fd}`);
  }

  /** ioctl(2) with a pointer to `arg`; resolves with the bytes as the kernel left them. */
  async ioctl(fd: number, request: number, arg: Uint8Array): Promise<IoctlReply> {
    const at = this.begin(OP.IOCTL, fd, 4 + arg.length);
    putIoctl(this.out, at, request, arg);
    const r = await this.send<WireReply>(K_RAW, fd, 0);
    if (r.ret < 0) {
      const code = errnoCode(r.ret);
      throw new IoctlError(code, `ioctl 0x${(request >>> 0).toString(16)} on fd ${fd}`, r.payload);
    }
    return { ret: r.ret, arg: r.payload };
  }

  /** ioctl(2) answered as it came, without an exception for -errno. */
  async ioctlRaw(fd: number, request: number, arg: Uint8Array): Promise<{ ret: number; arg: Buffer }> {
    const at = this.begin(OP.IOCTL, fd, 4 + arg.length);
    putIoctl(this.out, at, request, arg);
    const r = await this.send<WireReply>(K_RAW, fd, 0);
    return { ret: r.ret, arg: r.payload };
  }

  /** ioctl(2) with a raw argument: an integer, 0 (no argument) or a VA in this process. */
  ioctlValue(fd: number, request: number, raw: bigint | number = 0): Promise<number> {
    const arg = ioctlValueArg(raw);
    const at = this.begin(OP.IOCTL_VALUE, fd, IOCTL_VALUE_PAYLOAD);
    putIoctlValue(this.out, at, request, arg);
    return this.send<number>(K_VALUE, fd, request >>> 0);
  }

  /** mmap(2) at an address the kernel picks; resolves with the VA. */
  mmap(
    length: number,
    prot: number = PROT_READ | PROT_WRITE,
    flags: number = MAP_PRIVATE | MAP_ANONYMOUS,
    fd = -1,
    offset = 0,
  ): Promise<number> {
    const at = this.begin(OP.MMAP, fd, MMAP_PAYLOAD);
    putMmap(this.out, at, length, prot, flags, offset);
    return this.send<WireReply>(K_RAW, fd, 0).then((r) => {
      if (r.ret < 0) throw failure(`mmap of ${length} bytes`, r.ret);
      return r.ret;
    });
  }

  async munmap(va: number, length: number): Promise<void> {
    const p = Buffer.allocUnsafe(16);
    writeI64(p, va, 0);
    writeI64(p, length, 8);
    await this.num(OP.MUNMAP, -1, p, () => `munmap 0x${va.toString(16)}`);
  }

  async peek(va: number, length: number): Promise<Buffer> {
    const p = Buffer.allocUnsafe(12);
    writeI64(p, va, 0);
    p.writeUInt32LE(length, 8);
    const r = await this.call(OP.PEEK, -1, p);
    if (r.ret < 0) throw failure(`peek 0x${va.toString(16)}`, r.ret);
    return r.payload;
  }

  async poke(va: number, bytes: Uint8Array): Promise<void> {
    const at = this.begin(OP.POKE, -1, 8 + bytes.length);
    writeI64(this.out, va, at);
    this.out.set(bytes, at + 8);
    const r = await this.send<WireReply>(K_RAW, -1, 0);
    if (r.ret < 0) throw failure(`poke 0x${va.toString(16)}`, r.ret);
  }

  async read(fd: number, count: number): Promise<Buffer> {
    const p = Buffer.allocUnsafe(4);
    p.writeUInt32LE(count, 0);
    const r = await this.call(OP.READ, fd, p);
    if (r.ret < 0) throw failure(`read fd ${fd}`, r.ret);
    return r.payload;
  }

  write(fd: number, bytes: Uint8Array): Promise<number> {
    return this.num(OP.WRITE, fd, bytes, () => `write fd ${fd}`);
  }

  memfdCreate(name: string): Promise<number> {
    return this.num(OP.MEMFD_CREATE, -1, Buffer.from(name, 'utf8'), () => `memfd_create ${name}`);
  }

  async ftruncate(fd: number, size: number): Promise<void> {
    const p = Buffer.allocUnsafe(8);
    writeI64(p, size, 0);
    await this.num(OP.FTRUNCATE, fd, p, () => `ftruncate fd ${fd}`);
  }

  // ---- typed ioctls ------------------------------------------------------------------------

  /**
   * Any ioctl of the uAPI table by name, with its struct built from `fields` (`size`/`argsz`
   * default to sizeof); resolves with the return value and the decoded written-back struct.
   */
  async ioctlStruct(
    fd: number,
    name: IoctlName,
    fields: Readonly<Record<string, unknown>> = {},
  ): Promise<{ ret: number; out: UapiObject }> {
    const def = IOCTLS[name];
    const s = def.struct as StructDef | null;
    if (s === null) throw new UsageError(`${name} takes an integer argument: use ioctlValue`);
    const r = await this.typed(fd, name, s, fields);
    return { ret: r.ret, out: r.out as unknown as UapiObject };
  }

  /** An ioctl with its struct table `s` (typed decode of the written-back struct). */
  private async typed<S extends StructDef>(
    fd: number,
    name: IoctlName,
    s: S,
    fields: Readonly<Record<string, unknown>>,
  ): Promise<{ ret: number; out: DecodedStruct<S> }> {
    const cmd = IOCTLS[name].cmd;
    const r = await this.ioctlRaw(fd, cmd, build(s, fields));
    if (r.ret < 0) throw new IoctlError(errnoCode(r.ret), `${name} on fd ${fd}`, r.arg);
    return { ret: r.ret, out: decode(s, r.arg) };
  }

  /** IOMMU_IOAS_ALLOC: a new IOAS; resolves with its ID. */
  ioasAlloc(fd: number): Promise<number> {
    // Not an async function (one promise per call, not two), so a bad argument is turned into
    // a rejection by hand, as an async function would.
    try {
      const at = this.begin(OP.IOCTL, fd, IOAS_ALLOC_PAYLOAD);
      putIoasAlloc(this.out, at);
      return this.send<number>(K_IOAS_ALLOC, fd, IOCTLS.IOMMU_IOAS_ALLOC.cmd);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** IOMMU_DESTROY of any object ID. */
  destroy(fd: number, id: number): Promise<void> {
    try {
      const at = this.begin(OP.IOCTL, fd, DESTROY_PAYLOAD);
      putDestroy(this.out, at, id);
      return this.send<void>(K_DESTROY, fd, id);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * IOMMU_IOAS_MAP of [userVa, userVa + length) of this process's memory; with `iova` the map is
   * at that IOVA (IOMMU_IOAS_MAP_FIXED_IOVA), else the kernel picks. Readable and writeable
   * unless `flags` says otherwise. Resolves with the IOVA.
   */
  async ioasMap(
    fd: number,
    a: {
      ioasId: number;
      userVa: number | bigint;
      length: number | bigint;
      iova?: number | bigint;
      flags?: number;
    },
  ): Promise<bigint> {
    const flags = (a.flags ?? MAP_READABLE | MAP_WRITEABLE) | (a.iova !== undefined ? MAP_FIXED_IOVA : 0);
    const { out } = await this.typed(fd, 'IOMMU_IOAS_MAP', STRUCTS.iommu_ioas_map, {
      ioas_id: a.ioasId,
      flags,
      user_va: BigInt(a.userVa),
      length: BigInt(a.length),
      iova: BigInt(a.iova ?? 0),
    });
    return out.iova;
  }

  /** IOMMU_IOAS_MAP_FILE of [start, start + length) of a memfd. Resolves with the IOVA. */
  async ioasMapFile(
    fd: number,
    a: {
      ioasId: number;
      memfd: number;
      start: number | bigint;
      length: number | bigint;
      iova?: number | bigint;
      flags?: number;
    },
  ): Promise<bigint> {
    const flags = (a.flags ?? MAP_READABLE | MAP_WRITEABLE) | (a.iova !== undefined ? MAP_FIXED_IOVA : 0);
    const { out } = await this.typed(fd, 'IOMMU_IOAS_MAP_FILE', STRUCTS.iommu_ioas_map_file, {
      ioas_id: a.ioasId,
      flags,
      fd: a.memfd,
      start: BigInt(a.start),
      length: BigInt(a.length),
      iova: BigInt(a.iova ?? 0),
    });
    return out.iova;
  }

  /** IOMMU_IOAS_UNMAP of [iova, iova + length) (0 and 2^64-1 unmaps everything); resolves with the bytes unmapped. */
  async ioasUnmap(
    fd: number,
    ioasId: number,
    iova: number | bigint,
    length: number | bigint,
  ): Promise<bigint> {
    const { out } = await this.typed(fd, 'IOMMU_IOAS_UNMAP', STRUCTS.iommu_ioas_unmap, {
      ioas_id: ioasId,
      iova: BigInt(iova),
      length: BigInt(length),
    });
    return out.length;
  }

  /** IOMMU_IOAS_COPY of a mapping from one IOAS to another; resolves with the destination IOVA. */
  async ioasCopy(
    fd: number,
    a: {
      dstIoasId: number;
      srcIoasId: number;
      srcIova: number | bigint;
      length: number | bigint;
      dstIova?: number | bigint;
      flags?: number;
    },
  ): Promise<bigint> {
    const flags = (a.flags ?? MAP_READABLE | MAP_WRITEABLE) | (a.dstIova !== undefined ? MAP_FIXED_IOVA : 0);
    const { out } = await this.typed(fd, 'IOMMU_IOAS_COPY', STRUCTS.iommu_ioas_copy, {
      dst_ioas_id: a.dstIoasId,
      src_ioas_id: a.srcIoasId,
      flags,
      length: BigInt(a.length),
      dst_iova: BigInt(a.dstIova ?? 0),
      src_iova: BigInt(a.srcIova),
    });
    return out.dst_iova;
  }

  /** IOMMU_IOAS_IOVA_RANGES: the usable IOVA ranges and the required alignment. */
  async ioasIovaRanges(
    fd: number,
    ioasId: number,
  ): Promise<{ ranges: { start: bigint; last: bigint }[]; alignment: bigint }> {
    const s = STRUCTS.iommu_ioas_iova_ranges;
    // First ask how many (EMSGSIZE writes num_iovas back), then fetch them.
    const probe = await this.ioctlRaw(
      fd,
      IOCTLS.IOMMU_IOAS_IOVA_RANGES.cmd,
      build(s, { ioas_id: ioasId, num_iovas: 0 }),
    );
    let out = decode(s, probe.arg);
    if (probe.ret < 0 && errnoCode(probe.ret) !== 'EMSGSIZE')
      throw new IoctlError(errnoCode(probe.ret), 'IOMMU_IOAS_IOVA_RANGES', probe.arg);
    const n = out.num_iovas;
    const ranges: { start: bigint; last: bigint }[] = [];
    if (n > 0) {
      const bytes = n * STRUCTS.iommu_iova_range.size;
      const raw = await this.withScratch(bytes, async (va) => {
        const r = await this.typed(fd, 'IOMMU_IOAS_IOVA_RANGES', STRUCTS.iommu_ioas_iova_ranges, {
          ioas_id: ioasId,
          num_iovas: n,
          allowed_iovas: BigInt(va),
        });
        out = r.out;
        return this.peek(va, bytes);
      });
      for (let i = 0; i < n; i++) {
        const e = decode(STRUCTS.iommu_iova_range, raw.subarray(i * 16, i * 16 + 16));
        ranges.push({ start: e.start, last: e.last });
      }
    }
    return { ranges, alignment: out.out_iova_alignment };
  }

  /** IOMMU_IOAS_ALLOW_IOVAS: replace the IOAS's allowed ranges (empty: allow everything). */
  async ioasAllowIovas(
    fd: number,
    ioasId: number,
    ranges: readonly { start: bigint; last: bigint }[],
  ): Promise<void> {
    const bytes = Buffer.alloc(ranges.length * 16);
    ranges.forEach((r, i) => {
      bytes.writeBigUInt64LE(r.start, i * 16);
      bytes.writeBigUInt64LE(r.last, i * 16 + 8);
    });
    await this.withScratch(Math.max(bytes.length, 1), async (va) => {
      if (bytes.length > 0) await this.poke(va, bytes);
      await this.typed(fd, 'IOMMU_IOAS_ALLOW_IOVAS', STRUCTS.iommu_ioas_allow_iovas, {
        ioas_id: ioasId,
        num_iovas: ranges.length,
        allowed_iovas: ranges.length > 0 ? BigInt(va) : 0n,
      });
    });
  }

  /** IOMMU_OPTION: set (op 0) or get (op 1) an option; resolves with val64 as the kernel left it. */
  async option(
    fd: number,
    a: { optionId: number; op: number; objectId?: number; val64?: bigint },
  ): Promise<bigint> {
    const { out } = await this.typed(fd, 'IOMMU_OPTION', STRUCTS.iommu_option, {
      option_id: a.optionId,
      op: a.op,
      object_id: a.objectId ?? 0,
      val64: a.val64 ?? 0n,
    });
    return out.val64;
  }

  /**
   * IOMMU_HWPT_ALLOC: a HWPT for device `devId` on `ptId` (an IOAS, or a parent HWPT for a
   * nested one, with driver `data` of `dataType`). Resolves with the HWPT ID.
   */
  async hwptAlloc(
    fd: number,
    a: {
      devId: number;
      ptId: number;
      flags?: number;
      faultId?: number;
      dataType?: number;
      data?: Uint8Array;
    },
  ): Promise<number> {
    const run = async (va: number) => {
      const { out } = await this.typed(fd, 'IOMMU_HWPT_ALLOC', STRUCTS.iommu_hwpt_alloc, {
        dev_id: a.devId,
        pt_id: a.ptId,
        flags: a.flags ?? 0,
        fault_id: a.faultId ?? 0,
        data_type: a.dataType ?? 0,
        data_len: a.data?.length ?? 0,
        data_uptr: BigInt(va),
      });
      return out.out_hwpt_id;
    };
    const data = a.data;
    if (data === undefined || data.length === 0) return run(0);
    return this.withScratch(data.length, async (va) => {
      await this.poke(va, data);
      return run(va);
    });
  }

  /** IOMMU_GET_HW_INFO of device `devId`: the struct and up to `dataLen` bytes of driver data. */
  async getHwInfo(
    fd: number,
    devId: number,
    dataLen = 64,
  ): Promise<{ info: DecodedStruct<typeof STRUCTS.iommu_hw_info>; data: Buffer }> {
    return this.withScratch(Math.max(dataLen, 1), async (va) => {
      const { out } = await this.typed(fd, 'IOMMU_GET_HW_INFO', STRUCTS.iommu_hw_info, {
        dev_id: devId,
        data_len: dataLen,
        data_uptr: dataLen > 0 ? BigInt(va) : 0n,
      });
      const data = dataLen > 0 ? await this.peek(va, out.data_len) : EMPTY;
      return { info: out, data };
    });
  }

  /** IOMMU_FAULT_QUEUE_ALLOC: a fault queue object and the fd to read faults from. */
  async faultQueueAlloc(fd: number): Promise<{ id: number; fd: number }> {
    const { out } = await this.typed(fd, 'IOMMU_FAULT_QUEUE_ALLOC', STRUCTS.iommu_fault_alloc, {});
    return { id: out.out_fault_id, fd: out.out_fault_fd };
  }

  /**
   * IOMMU_TEST_CMD (CONFIG_IOMMUFD_TEST) with operation `op` on object `id`; `member` names the
   * union member the operation reads (TEST_CMD_UNION), `fields` its fields. Resolves with the
   * ioctl's return and the decoded struct.
   */
  testCmd(
    fd: number,
    op: number,
    id: number,
    member?: keyof typeof TEST_CMD_UNION,
    fields: Readonly<Record<string, unknown>> = {},
  ): Promise<{ ret: number; out: DecodedStruct<typeof STRUCTS.iommu_test_cmd> }> {
    return this.typed(
      fd,
      'IOMMU_TEST_CMD',
      STRUCTS.iommu_test_cmd,
      member ? { op, id, [member]: fields } : { op, id },
    );
  }

  /**
   * IOMMU_TEST_OP_MOCK_DOMAIN: a mock device bound to this iommufd and attached to `ptId` (an
   * IOAS gets a new paging HWPT). Resolves with the selftest device, HWPT and device IDs.
   */
  async testMockDomain(
    fd: number,
    ptId: number,
  ): Promise<{ stdevId: number; hwptId: number; idevId: number }> {
    const { out } = await this.testCmd(fd, IOMMUFD_TEST_ENUMS.IOMMU_TEST_OP_MOCK_DOMAIN, ptId, 'mock_domain');
    const m = out.mock_domain!;
    return { stdevId: m.out_stdev_id, hwptId: m.out_hwpt_id, idevId: m.out_idev_id };
  }

  /** VFIO_DEVICE_BIND_IOMMUFD of an open /dev/vfio/devices/vfioN to an iommufd; resolves with the device ID. */
  async vfioBind(deviceFd: number, iommufd: number): Promise<number> {
    const { out } = await this.typed(deviceFd, 'VFIO_DEVICE_BIND_IOMMUFD', STRUCTS.vfio_device_bind_iommufd, {
      iommufd,
    });
    return out.out_devid;
  }

  /**
   * VFIO_DEVICE_ATTACH_IOMMUFD_PT of the device's RID, or of `pasid`, to `ptId` (a second attach
   * replaces). Resolves with the HWPT actually attached (an IOAS gets an automatic domain).
   */
  async vfioAttach(deviceFd: number, ptId: number, pasid?: number): Promise<number> {
    const { out } = await this.typed(
      deviceFd,
      'VFIO_DEVICE_ATTACH_IOMMUFD_PT',
      STRUCTS.vfio_device_attach_iommufd_pt,
      pasid === undefined ? { pt_id: ptId } : { pt_id: ptId, flags: VFIO_DEVICE_ATTACH_PASID, pasid },
    );
    return out.pt_id;
  }

  /** VFIO_DEVICE_DETACH_IOMMUFD_PT of the RID, or of `pasid`. */
  async vfioDetach(deviceFd: number, pasid?: number): Promise<void> {
    await this.typed(
      deviceFd,
      'VFIO_DEVICE_DETACH_IOMMUFD_PT',
      STRUCTS.vfio_device_detach_iommufd_pt,
      pasid === undefined ? {} : { flags: VFIO_DEVICE_ATTACH_PASID, pasid },
    );
  }

  /** Runs `fn` with a private anonymous mapping of `length` bytes, unmapped afterwards. */
  async withScratch<T>(length: number, fn: (va: number) => Promise<T>): Promise<T> {
    const va = await this.mmap(length);
    try {
      return await fn(va);
    } finally {
      await this.munmap(va, length).catch(() => {});
    }
  }
}

const MAP_FIXED_IOVA = IOMMUFD_ENUMS.IOMMU_IOAS_MAP_FIXED_IOVA;
const MAP_WRITEABLE = IOMMUFD_ENUMS.IOMMU_IOAS_MAP_WRITEABLE;
const MAP_READABLE = IOMMUFD_ENUMS.IOMMU_IOAS_MAP_READABLE;
const VFIO_DEVICE_ATTACH_PASID = VFIO_ENUMS.VFIO_DEVICE_ATTACH_PASID;

/** A reply payload as a Buffer of its own (the receive buffer is reused). */
function copyOut(b: Buffer, p: number, plen: number): Buffer {
  if (plen <= 0) return EMPTY;
  const out = Buffer.allocUnsafe(plen);
  b.copy(out, 0, p, p + plen);
  return out;
}

// The op numbers, and the mmap values a caller passes to mmap().
export { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, OP, OP_NAMES, PROT_READ, PROT_WRITE } from './protocol.ts';
