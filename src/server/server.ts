// The wire server behind `pasidkit serve` (../shared/spec/WIRE.md): Unix and loopback-TCP stream
// sockets where each connection is one process of a shared emulated host, with its own fd table
// and address space. The server only decodes frames and encodes replies; every semantic (errno,
// write-back, fds inside structs, pinning) comes from the ioctl engine (src/iommufd/engine.ts)
// and the Process model (src/iommufd/process.ts).
//
// Framing is done on the bytes as they arrive: a frame is parsed in place from the socket's chunk
// when it is whole, and only a partial frame at the end of a chunk is copied into a per-connection
// buffer. The sockets the server accepts read into a buffer of their connection's own (adopt),
// so a read costs no allocation and no stream machinery. Replies are encoded into a
// per-connection scratch buffer, reused once the socket has taken its bytes, and sent with one
// write per batch (one batch = the frames of one chunk), so that a pipelining client costs one
// syscall per batch each way. Requests are executed in order, synchronously, which is what makes replies
// come back in request order and what makes a frame that has arrived whole finish before a
// graceful shutdown closes its connection.
//
// Policy that is the server's own, not the kernel's (each refusal is a clean errno and a log
// line): the frame limit; per-connection limits on open files (RLIMIT_NOFILE: EMFILE), on mapped
// memory (RLIMIT_AS: ENOMEM) and on memfd size (RLIMIT_FSIZE: EFBIG); replies larger than the frame
// limit (PEEK: E2BIG, READ: a short read); and back-pressure, so that a client that sends without
// reading stalls itself rather than the server's memory.

import { lstatSync, statSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { ERRNO, type KernelError } from '../core/errno.ts';
import { type IommufdHost, ioctlInPlace, ioctlValue } from '../iommufd/engine.ts';
import type { Process } from '../iommufd/process.ts';
import { IOCTLS } from '../iommufd/uapi/index.ts';
import { createHost } from './host.ts';
import {
  DEFAULT_MAX_FRAME,
  MAP_FIXED,
  MIN_LENGTH,
  OP,
  OP_NAMES,
  PrefixViews,
  RESPONSE_HEADER,
  readU64,
  writeI64,
} from './protocol.ts';

/** A structured log event; the default logger prints it as one JSON line on stderr. */
export type LogEvent = { event: string } & Record<string, unknown>;
export type Logger = (e: LogEvent) => void;

export const stderrLogger: Logger = (e) => {
  process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), ...e })}\n`);
};

export interface ServerOptions {
  /** The shared emulated host (default: the engine's default host). */
  readonly host?: IommufdHost;
  /** When `host` is not given: CONFIG_IOMMUFD_TEST (default true). */
  readonly testCmd?: boolean;
  /** Connections run as root (default) or as an ordinary user (`--unprivileged`). */
  readonly privileged?: boolean;
  /** The largest `length` a frame may carry (default 16 MiB). */
  readonly maxFrame?: number;
  /** Open files per connection (default 1024, Linux's default RLIMIT_NOFILE). */
  readonly maxFiles?: number;
  /** Bytes of user memory a connection may have mapped (default 1 GiB). */
  readonly maxMemory?: number;
  /** One log line per request. */
  readonly verbose?: boolean;
  readonly log?: Logger;
}

export type ListenTarget =
  | { readonly path: string }
  | { readonly host: string; readonly port: number; readonly allowRemote?: boolean };

export const DEFAULT_MAX_FILES = 1024;
export const DEFAULT_MAX_MEMORY = 1024 * 1024 * 1024;
/** Linux's PATH_MAX, including the NUL the wire does not carry. */
const PATH_MAX = 4096;
/** MFD_NAME_MAX_LEN of mm/memfd.c. */
const MFD_NAME_MAX_LEN = 249;
const PAGE_SIZE = 4096;
/** Stop executing frames while this much of a connection's output is waiting for the socket. */
const OUT_HIGH_WATER = 4 * 1024 * 1024;
const OUT_INITIAL = 16 * 1024;
/** A reply scratch buffer larger than this is not reused once written. */
const OUT_KEEP = 256 * 1024;
/** What a connection reads into, reused for every read. */
const READ_BUFFER = 64 * 1024;
/** A partial-frame buffer bigger than this is dropped once empty, so idle connections stay small. */
const PEND_KEEP = 256 * 1024;
/** How long a graceful shutdown waits for a client to take its last replies. */
const SHUTDOWN_GRACE_MS = 2000;

const EMPTY = Buffer.alloc(0);

const E = ERRNO;

/** Request numbers whose success installs a new fd in the caller's table (get_unused_fd_flags). */
const FD_IOCTLS = new Set<number>([IOCTLS.IOMMU_FAULT_QUEUE_ALLOC.cmd, IOCTLS.IOMMU_VEVENTQ_ALLOC.cmd]);
const TEST_CMD = IOCTLS.IOMMU_TEST_CMD.cmd;
/** IOMMU_TEST_OP_CREATE_ACCESS and IOMMU_TEST_OP_DMABUF_GET return an fd too. */
const FD_TEST_OPS = new Set<number>([5, 22]);

/** True for an address only this machine can reach (127.0.0.0/8, ::1, localhost). */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (net.isIPv6(h)) {
    if (h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
    const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(h);
    return m !== null && m[1]!.startsWith('127.');
  }
  return false;
}

interface Listener {
  readonly server: net.Server;
  readonly description: string;
  /** The Unix socket file we created, to remove on close (only if it is still ours). */
  readonly path?: string;
  readonly ino?: number;
}

export class WireServer {
  readonly host: IommufdHost;
  readonly privileged: boolean;
  readonly maxFrame: number;
  readonly maxFiles: number;
  readonly maxMemory: number;
  readonly verbose: boolean;
  readonly log: Logger;
  private readonly listeners: Listener[] = [];
  private readonly conns = new Set<Connection>();
  private nextConnId = 1;
  private closing: Promise<void> | null = null;

  constructor(opts: ServerOptions = {}) {
    this.host = opts.host ?? createHost(null, { testCmd: opts.testCmd ?? true });
    this.privileged = opts.privileged ?? true;
    this.maxFrame = opts.maxFrame ?? DEFAULT_MAX_FRAME;
    this.maxFiles = opts.maxFiles ?? DEFAULT_MAX_FILES;
    this.maxMemory = opts.maxMemory ?? DEFAULT_MAX_MEMORY;
    this.verbose = opts.verbose ?? false;
    this.log = opts.log ?? stderrLogger;
    if (!Number.isSafeInteger(this.maxFrame) || this.maxFrame < MIN_LENGTH || this.maxFrame > 0xffffffff)
      throw new RangeError(`maxFrame must be an integer in [${MIN_LENGTH}, 2^32-1]`);
  }

  /** Connections currently open. */
  get connections(): number {
    return this.conns.size;
  }

  /** The addresses listened on, as "unix:PATH" or "tcp:HOST:PORT". */
  get addresses(): string[] {
    return this.listeners.map((l) => l.description);
  }

  /**
   * Listens on a Unix socket path or a TCP address (loopback only unless `allowRemote`). A stale
   * socket file (nobody accepting) is replaced; a live one, or a file that is not a socket, is
   * an error. Resolves with the address description (the real port for port 0).
   */
  async listen(target: ListenTarget): Promise<string> {
    if (this.closing) throw new Error('the server is shutting down');
    // Paused until the connection takes the socket over with its own read buffer (see adopt).
    const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (s) => this.serve(s, true));
    if ('path' in target) {
      await removeStaleSocket(target.path);
      await listenOn(server, { path: target.path });
      server.on('error', (e) => this.log({ event: 'listener-error', error: e.message }));
      const ino = statSync(target.path).ino;
      const description = `unix:${target.path}`;
      this.listeners.push({ server, description, path: target.path, ino });
      this.log({ event: 'listening', address: description });
      return description;
    }
    if (!target.allowRemote && !isLoopback(target.host))
      throw new Error(`${target.host} is not a loopback address (remote clients need allowRemote)`);
    await listenOn(server, { host: target.host, port: target.port });
    server.on('error', (e) => this.log({ event: 'listener-error', error: e.message }));
    const a = server.address() as net.AddressInfo;
    const description = `tcp:${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    this.listeners.push({ server, description });
    this.log({ event: 'listening', address: description });
    return description;
  }

  /** Serves one already-connected stream socket as a new client process. */
  attach(socket: net.Socket): void {
    this.serve(socket, false);
  }

  /** `accepted`: a socket of our own listeners, paused since it was accepted. */
  private serve(socket: net.Socket, accepted: boolean): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const c = new Connection(this, socket, this.nextConnId++, accepted);
    this.conns.add(c);
    c.onGone = () => {
      this.conns.delete(c);
    };
  }

  /**
   * Graceful shutdown: stop accepting, let every connection finish the frames it has received
   * whole, send their replies, close every client (each one's process exits: fds closed, objects
   * destroyed, pins released), and remove the socket files. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.log({ event: 'shutdown', connections: this.conns.size });
    const stopped = this.listeners.map(
      (l) =>
        new Promise<void>((resolve) => {
          l.server.close(() => resolve());
        }),
    );
    await Promise.all([...this.conns].map((c) => c.shutdown()));
    await Promise.all(stopped);
    for (const l of this.listeners) {
      if (l.path === undefined) continue;
      try {
        // Only our own socket file: another server may have replaced it meanwhile.
        if (statSync(l.path).ino === l.ino) unlinkSync(l.path);
      } catch {
        // Already gone.
      }
    }
    this.log({ event: 'stopped' });
  }

  // Unprivileged connections each run as a user of their own: Linux charges pinned memory to
  // the user (user->locked_vm), and one client's pins must not count against another's
  // RLIMIT_MEMLOCK. A uid is reused only after its connection is gone, when it holds nothing.
  private readonly freeUids: number[] = [];
  private nextUid = 1000;

  takeUid(): number {
    return this.freeUids.pop() ?? this.nextUid++;
  }

  /** Called by a connection after its process exited: closed contexts leave the host's set. */
  reap(proc: Process): void {
    if (!this.privileged) this.freeUids.push(proc.creds.uid);
    // IommufdHost.contexts keeps released contexts until a debug check prunes them; a
    // long-running server prunes them itself, or every connection would leave one behind.
    for (const ctx of this.host.contexts) if (ctx.closed) this.host.contexts.delete(ctx);
  }
}

function listenOn(server: net.Server, opts: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    server.once('error', onError);
    server.listen(opts, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

async function removeStaleSocket(path: string): Promise<void> {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const s = net.connect({ path });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
  if (live) throw new Error(`${path}: another server is listening there`);
  unlinkSync(path);
}

/** One client: a socket, the process it is, and the framing state. */
class Connection {
  readonly srv: WireServer;
  readonly socket: net.Socket;
  readonly id: number;
  readonly proc: Process;
  onGone: () => void = () => {};
  private readonly maxFrame: number;
  private readonly verbose: boolean;
  private readonly started = Date.now();
  // Partial-frame buffer: pend[0, pendLen) are received bytes not yet executed.
  private pend: Buffer = EMPTY;
  private pendLen = 0;
  // An oversized frame being skipped: bytes still to skip, and the tag to answer.
  private discard = 0;
  private discardTag = 0;
  // Reply scratch: out[0, outLen) are encoded replies not yet written.
  private out: Buffer = Buffer.allocUnsafe(OUT_INITIAL);
  private outLen = 0;
  private readonly views = new PrefixViews();
  /** The reply payload of the request being executed (null: none). */
  private payload: Uint8Array | null = null;
  /** Waiting for 'drain' before executing more frames. */
  private blocked = false;
  /** Shutting down: every frame received whole runs, whatever the back-pressure. */
  private draining = false;
  /** No more frames are executed (protocol error or shutdown). */
  private ending = false;
  private gone = false;
  private endReason = 'eof';
  private requests = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  private closed: Promise<void>;

  /** `paused`: accepted paused by one of the server's listeners, so it may be taken over (adopt). */
  constructor(srv: WireServer, accepted: net.Socket, id: number, paused: boolean) {
    this.srv = srv;
    this.id = id;
    const socket = (paused && adopt(accepted, (n, b) => this.onData(b, n))) || accepted;
    this.socket = socket;
    this.maxFrame = srv.maxFrame;
    this.verbose = srv.verbose;
    this.proc = srv.host.spawn(
      srv.privileged ? { privileged: true } : { privileged: false, uid: srv.takeUid() },
    );
    const peer = socket.remoteAddress !== undefined ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    srv.log({ event: 'connect', conn: id, pid: this.proc.pid, peer });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.teardown();
        resolve();
      });
    });
    if (socket === accepted) {
      socket.on('data', (chunk: Buffer) => this.onData(chunk, chunk.length));
      if (paused) socket.resume();
    }
    socket.on('drain', () => this.onDrain());
    socket.on('error', (e: NodeJS.ErrnoException) => {
      this.endReason = `error ${e.code ?? e.message}`;
    });
  }

  // ---- input -------------------------------------------------------------------------------

  /** chunk[0, n) has arrived; nothing of it may be kept past this call but by copying. */
  private onData(chunk: Buffer, n: number): boolean {
    if (this.ending) return true;
    this.bytesIn += n;
    if (this.pendLen === 0 && !this.blocked) {
      // The common case: whole frames straight from the chunk, only a tail is kept.
      const used = this.run(chunk, n);
      if (used < n) this.keep(chunk, used, n);
    } else {
      this.append(chunk, n);
      if (!this.blocked) this.runPending();
    }
    this.flush();
    return true;
  }

  private onDrain(): void {
    if (!this.blocked || this.ending) return;
    this.blocked = false;
    this.socket.resume();
    this.runPending();
    this.flush();
  }

  private runPending(): void {
    const used = this.run(this.pend, this.pendLen);
    if (used > 0) {
      this.pend.copyWithin(0, used, this.pendLen);
      this.pendLen -= used;
    }
    if (this.pendLen === 0 && this.pend.length > PEND_KEEP) this.pend = EMPTY;
  }

  /** Copies b[from, to) to the (empty) pending buffer. */
  private keep(b: Buffer, from: number, to: number): void {
    this.ensurePend(to - from);
    b.copy(this.pend, 0, from, to);
    this.pendLen = to - from;
  }

  private append(chunk: Buffer, n: number): void {
    this.ensurePend(this.pendLen + n);
    chunk.copy(this.pend, this.pendLen, 0, n);
    this.pendLen += n;
  }

  /**
   * Room for `n` bytes. The buffer doubles as bytes arrive (each byte is copied about twice at
   * most) rather than trusting a frame's announced length: four bytes must not make the server
   * reserve 16 MiB for a client that may never send them.
   */
  private ensurePend(n: number): void {
    if (this.pend.length >= n) return;
    let cap = Math.max(this.pend.length * 2, 4096);
    while (cap < n) cap *= 2;
    const nb = Buffer.allocUnsafe(cap);
    this.pend.copy(nb, 0, 0, this.pendLen);
    this.pend = nb;
  }

  /**
   * Executes every whole frame of b[0, end) in order; returns how many bytes were consumed.
   * Stops early at a partial frame, when output backs up, or on a protocol error.
   */
  private run(b: Buffer, end: number): number {
    // The engine reports failures as KernelError values, which the server only turns into an
    // errno: their stack traces are never read, and capturing one costs more than the rest of
    // a failing ioctl. So no stacks while frames execute, except with --verbose, where an
    // internal error's log line should say where it came from.
    const limit = Error.stackTraceLimit;
    if (!this.verbose) Error.stackTraceLimit = 0;
    try {
      return this.runFrames(b, end);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }

  private runFrames(b: Buffer, end: number): number {
    let off = 0;
    while (off < end && !this.ending) {
      if (this.discard > 0) {
        const n = Math.min(this.discard, end - off);
        off += n;
        this.discard -= n;
        if (this.discard === 0) this.replyErr(this.discardTag, E.E2BIG);
        continue;
      }
      const avail = end - off;
      if (avail < 4) break;
      const len = b.readUInt32LE(off);
      if (len < MIN_LENGTH) {
        this.protocolError(`frame length ${len} is below ${MIN_LENGTH}`);
        return end;
      }
      if (len > this.maxFrame) {
        if (avail < 12) break;
        this.discardTag = b.readUInt32LE(off + 8);
        this.discard = len + 4;
        this.srv.log({
          event: 'frame-too-large',
          conn: this.id,
          tag: this.discardTag,
          length: len,
          limit: this.maxFrame,
        });
        continue;
      }
      if (avail < len + 4) break;
      this.execute(b, off, len);
      off += len + 4;
      if (!this.draining && this.outLen + this.socket.writableLength >= OUT_HIGH_WATER) {
        this.flush();
        if (this.socket.writableLength >= OUT_HIGH_WATER) {
          this.blocked = true;
          this.socket.pause();
          this.srv.log({ event: 'backpressure', conn: this.id, unsent: this.socket.writableLength });
          break;
        }
      }
    }
    return off;
  }

  private protocolError(why: string): void {
    this.srv.log({ event: 'protocol-error', conn: this.id, reason: why });
    this.endReason = 'protocol-error';
    this.finish();
  }

  /** Stop executing, send what is encoded, close after the peer has it. */
  private finish(): void {
    if (this.ending) return;
    this.ending = true;
    this.flush();
    this.socket.end(() => this.socket.destroy());
  }

  // ---- execution ---------------------------------------------------------------------------

  private execute(b: Buffer, off: number, len: number): void {
    const op = b.readUInt32LE(off + 4);
    const tag = b.readUInt32LE(off + 8);
    const fd = b.readInt32LE(off + 12);
    const p = off + 16;
    const pe = off + 4 + len;
    this.requests++;
    const t0 = this.verbose ? performance.now() : 0;
    let ret: number;
    this.payload = null;
    try {
      ret = this.dispatch(op, fd, b, p, pe);
    } catch (e) {
      // A bug in the model, never the client's input: the client gets EIO, the log the detail.
      this.srv.log({
        event: 'internal-error',
        conn: this.id,
        op: OP_NAMES[op] ?? op,
        tag,
        error: e instanceof Error ? (e.stack ?? e.message) : String(e),
      });
      ret = -E.EIO;
      this.payload = op === OP.IOCTL && pe - p >= 4 ? b.subarray(p + 4, pe) : null;
    }
    const payload = this.payload;
    if (payload === null) this.header(tag, ret, 0);
    else {
      this.header(tag, ret, payload.length);
      copyBytes(payload, 0, this.out, this.outLen, payload.length);
      this.outLen += payload.length;
      this.payload = null;
    }
    if (this.verbose) {
      this.srv.log({
        event: 'request',
        conn: this.id,
        op: OP_NAMES[op] ?? op,
        tag,
        fd,
        length: len,
        ret,
        us: Math.round((performance.now() - t0) * 1000),
      });
    }
  }

  /** Runs one request; returns `ret` and leaves the reply payload, if any, in `this.payload`. */
  private dispatch(op: number, fd: number, b: Buffer, p: number, pe: number): number {
    const n = pe - p;
    const proc = this.proc;
    switch (op) {
      case OP.IOCTL: {
        if (n < 4) return -E.EINVAL;
        const request = b.readUInt32LE(p);
        // A copy with its own ArrayBuffer: the engine may view it by .buffer, and it must not
        // alias the connection's receive buffer. The engine writes back into it, as into the
        // user memory of a real ioctl, and it is the reply payload (same length as sent).
        const arg = new Uint8Array(n - 4);
        copyBytes(b, p + 4, arg, 0, n - 4);
        this.payload = arg;
        if (this.wouldExceedFiles(request, arg)) return -E.EMFILE;
        return ioctlInPlace(proc, fd, request, arg);
      }
      case OP.IOCTL_VALUE: {
        if (n !== 12) return -E.EINVAL;
        const request = b.readUInt32LE(p);
        const raw = b.readBigUInt64LE(p + 4);
        if (this.wouldExceedFiles(request, this.userArg(raw))) return -E.EMFILE;
        return ioctlValue(proc, fd, request, raw).ret;
      }
      case OP.OPEN: {
        const path = cString(b, p, pe);
        if (path.bytes >= PATH_MAX) return -E.ENAMETOOLONG;
        if (this.filesAtLimit()) return -E.EMFILE;
        return retOf(proc.open(path.text));
      }
      case OP.CLOSE:
        if (n !== 0) return -E.EINVAL;
        return voidRet(proc.close(fd));
      case OP.MMAP: {
        if (n !== 24) return -E.EINVAL;
        const length = readU64(b, p);
        const prot = b.readUInt32LE(p + 8);
        const flags = b.readUInt32LE(p + 12);
        const offset = readU64(b, p + 16);
        // The frame carries no address, so MAP_FIXED would ask for address 0, which is below
        // vm.mmap_min_addr: refused as Linux refuses it (and page 0 stays a faulting NULL).
        if (flags & MAP_FIXED) return -E.EPERM;
        if (Number.isNaN(offset)) return -E.EOVERFLOW;
        if (Number.isNaN(length) || length > this.srv.maxMemory) return -E.ENOMEM;
        if (length > 0 && this.mapped() + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE > this.srv.maxMemory) {
          this.srv.log({ event: 'limit', conn: this.id, limit: 'memory', max: this.srv.maxMemory });
          return -E.ENOMEM;
        }
        return retOf(proc.mmap(length, prot, flags, fd, offset));
      }
      case OP.MUNMAP: {
        if (n !== 16) return -E.EINVAL;
        const va = readU64(b, p);
        const length = readU64(b, p + 8);
        if (Number.isNaN(va) || Number.isNaN(length) || !Number.isSafeInteger(va + length)) return -E.EINVAL;
        return voidRet(proc.munmap(va, length));
      }
      case OP.PEEK: {
        if (n !== 12) return -E.EINVAL;
        const va = readU64(b, p);
        const length = b.readUInt32LE(p + 8);
        if (length + MIN_LENGTH > this.maxFrame) return -E.E2BIG;
        if (Number.isNaN(va) || !Number.isSafeInteger(va + length)) return -E.EFAULT;
        const r = proc.peek(va, length);
        if (!(r instanceof Uint8Array)) return -r.errno;
        this.payload = r;
        return 0;
      }
      case OP.POKE: {
        if (n < 8) return -E.EINVAL;
        const va = readU64(b, p);
        if (Number.isNaN(va) || !Number.isSafeInteger(va + n - 8)) return -E.EFAULT;
        return voidRet(proc.poke(va, b.subarray(p + 8, pe)));
      }
      case OP.READ: {
        if (n !== 4) return -E.EINVAL;
        // read(2) may return fewer bytes than asked: a count past the frame limit reads less.
        const count = Math.min(b.readUInt32LE(p), this.maxFrame - MIN_LENGTH);
        const r = proc.read(fd, count);
        if (!(r instanceof Uint8Array)) return -r.errno;
        this.payload = r;
        return r.length;
      }
      case OP.WRITE:
        return retOf(proc.write(fd, new Uint8Array(b.subarray(p, pe))));
      case OP.MEMFD_CREATE: {
        const name = cString(b, p, pe);
        if (name.bytes > MFD_NAME_MAX_LEN) return -E.EINVAL;
        if (this.filesAtLimit()) return -E.EMFILE;
        return proc.memfdCreate(name.text);
      }
      case OP.FTRUNCATE: {
        if (n !== 8) return -E.EINVAL;
        // off_t is signed: a u64 with the top bit set is a negative length.
        if (b.readUInt32LE(p + 4) >= 0x8000_0000) return -E.EINVAL;
        const size = readU64(b, p);
        if (Number.isNaN(size) || size > this.srv.maxMemory) {
          this.srv.log({ event: 'limit', conn: this.id, limit: 'file-size', max: this.srv.maxMemory });
          return -E.EFBIG;
        }
        return voidRet(proc.ftruncate(fd, size));
      }
      default:
        return -E.EINVAL;
    }
  }

  private filesAtLimit(): boolean {
    if (!this.filesFull()) return false;
    this.srv.log({ event: 'limit', conn: this.id, limit: 'files', max: this.srv.maxFiles });
    return true;
  }

  /** An ioctl that would install an fd while the table is full fails as get_unused_fd_flags does. */
  private wouldExceedFiles(request: number, arg: Uint8Array | null): boolean {
    if (FD_IOCTLS.has(request >>> 0)) return this.filesAtLimit();
    if (request === TEST_CMD && arg !== null && arg.length >= 8) {
      const testOp = arg[4]! | (arg[5]! << 8) | (arg[6]! << 16) | (arg[7]! << 24);
      if (FD_TEST_OPS.has(testOp >>> 0)) return this.filesAtLimit();
    }
    return false;
  }

  /** The first bytes an IOCTL_VALUE pointer points at (only read when the fd table is full). */
  private userArg(raw: bigint): Uint8Array | null {
    if (raw === 0n || raw > BigInt(Number.MAX_SAFE_INTEGER - 8) || !this.filesFull()) return null;
    const r = this.proc.peek(Number(raw), 8);
    return r instanceof Uint8Array ? r : null;
  }

  private filesFull(): boolean {
    return this.proc.openFds().length >= this.srv.maxFiles;
  }

  private mapped(): number {
    let s = 0;
    for (const v of this.proc.mm.vmas) s += v.end - v.start;
    return s;
  }

  // ---- replies -----------------------------------------------------------------------------

  private ensureOut(n: number): void {
    if (this.outLen + n <= this.out.length) return;
    let cap = this.out.length * 2;
    while (cap < this.outLen + n) cap *= 2;
    const nb = Buffer.allocUnsafe(cap);
    this.out.copy(nb, 0, 0, this.outLen);
    this.out = nb;
  }

  private header(tag: number, ret: number, payload: number): void {
    this.ensureOut(RESPONSE_HEADER + payload);
    const o = this.out;
    const at = this.outLen;
    o.writeUInt32LE(MIN_LENGTH + payload, at);
    o.writeUInt32LE(tag, at + 4);
    writeI64(o, ret, at + 8);
    this.outLen = at + RESPONSE_HEADER;
  }

  private replyErr(tag: number, errno: number): void {
    this.header(tag, -errno, 0);
  }

  /** out[0, n) as a Buffer. */
  private outView(n: number): Buffer {
    return this.views.get(this.out, n);
  }

  private flush(): void {
    const n = this.outLen;
    if (n === 0 || this.gone) return;
    this.outLen = 0;
    this.bytesOut += n;
    const s = this.socket;
    s.write(this.outView(n));
    // With nothing left queued in the socket the kernel has taken the bytes, and the scratch
    // buffer is free again; otherwise the socket holds those bytes and replies go to a new one.
    // A scratch buffer grown by a big batch is dropped, so idle connections stay small.
    if (s.writableLength !== 0 || this.out.length > OUT_KEEP) this.out = Buffer.allocUnsafe(OUT_INITIAL);
  }

  // ---- end of the connection -----------------------------------------------------------------

  /** Graceful shutdown: finish the frames received whole, reply, close. */
  shutdown(): Promise<void> {
    if (!this.ending && !this.gone) {
      this.endReason = 'shutdown';
      this.draining = true;
      if (this.blocked) {
        this.blocked = false;
        this.runPending();
      }
      this.finish();
      const t = setTimeout(() => this.socket.destroy(), SHUTDOWN_GRACE_MS);
      t.unref();
      void this.closed.then(() => clearTimeout(t));
    }
    return this.closed;
  }

  /** The socket is closed: the process exits (every fd closed, objects destroyed, pins released). */
  private teardown(): void {
    if (this.gone) return;
    this.gone = true;
    this.ending = true;
    this.pend = EMPTY;
    this.out = EMPTY;
    let error: string | undefined;
    try {
      this.proc.exit();
    } catch (e) {
      error = e instanceof Error ? (e.stack ?? e.message) : String(e);
      this.srv.log({ event: 'internal-error', conn: this.id, op: 'exit', error });
    }
    this.srv.reap(this.proc);
    this.srv.log({
      event: 'disconnect',
      conn: this.id,
      pid: this.proc.pid,
      reason: this.endReason,
      requests: this.requests,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      ms: Date.now() - this.started,
    });
    this.onGone();
  }
}

/**
 * The accepted socket's connection, as a socket that reads into `buffer` and hands each read to
 * `onread` (Node's `onread` option, which net.Server does not offer for the sockets it accepts),
 * a buffer of the connection's own, reused for every read:
 * no Buffer per read and no stream machinery between the read and the frame parser. The
 * listener accepts paused, so nothing has been read yet; the accepted socket keeps only its
 * place in the server's connection count, released when the new one closes. Null where the
 * socket has no libuv stream handle to take over (then the 'data' events serve).
 */
function adopt(accepted: net.Socket, onread: (n: number, b: Buffer) => boolean): net.Socket | null {
  const shell = accepted as unknown as { _handle?: { useUserBuffer?: unknown; reading?: boolean } | null };
  const handle = shell._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function' || handle.reading || accepted.destroyed)
    return null;
  shell._handle = null;
  const socket = new net.Socket({
    handle,
    readable: true,
    writable: true,
    onread: {
      buffer: Buffer.allocUnsafe(READ_BUFFER),
      callback: (n: number, b: Uint8Array) => onread(n, b as Buffer),
    },
  } as net.SocketConstructorOpts);
  if ((socket as unknown as typeof shell)._handle !== handle) {
    // A Node that no longer takes over a handle this way: the accepted socket serves as it is.
    shell._handle = handle;
    return null;
  }
  socket.once('close', () => accepted.destroy());
  return socket;
}

function retOf(r: number | KernelError): number {
  return typeof r === 'number' ? r : -r.errno;
}

function voidRet(r: KernelError | undefined): number {
  return r === undefined ? 0 : -r.errno;
}

/** Copies src[from, from + n) to dst at `to`; by hand for the few bytes of a typical struct. */
function copyBytes(src: Uint8Array, from: number, dst: Uint8Array, to: number, n: number): void {
  if (n > 64) {
    dst.set(src.subarray(from, from + n), to);
    return;
  }
  for (let i = 0; i < n; i++) dst[to + i] = src[from + i]!;
}

/**
 * A path or name from the wire. The kernel reads a C string, so bytes after a NUL (a client that
 * sent the terminator after all) are not part of it.
 */
function cString(b: Buffer, p: number, pe: number): { text: string; bytes: number } {
  const nul = b.subarray(p, pe).indexOf(0);
  const end = nul < 0 ? pe : p + nul;
  return { text: b.toString('utf8', p, end), bytes: end - p };
}
