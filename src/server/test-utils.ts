// Helpers for the wire server's tests (not a test itself): an in-process server on a temporary
// Unix socket with its log captured, and a raw connection that sends hand-made frames and reads
// replies frame by frame, so that framing can be tested byte for byte (../shared/spec/WIRE.md).

import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { KernelError } from '../core/errno.ts';
import { IOCTLS } from '../iommufd/uapi/index.ts';
import { IoctlError } from './client.ts';
import { MIN_LENGTH, RESPONSE_HEADER, readI64 } from './protocol.ts';
import { type LogEvent, type ServerOptions, WireServer } from './server.ts';

/** A fresh directory for socket files; removed by the returned cleanup. */
export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'pasidkit-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface TestServer {
  readonly server: WireServer;
  readonly path: string;
  readonly logs: LogEvent[];
  stop(): Promise<void>;
}

const live = new Set<TestServer>();

/** A server listening on a temporary Unix socket, logging into `logs`. */
export async function startServer(opts: ServerOptions = {}): Promise<TestServer> {
  const { dir, cleanup } = tempDir();
  const logs: LogEvent[] = [];
  const server = new WireServer({ log: (e) => logs.push(e), ...opts });
  const path = join(dir, 's.sock');
  await server.listen({ path });
  const t: TestServer = {
    server,
    path,
    logs,
    async stop() {
      live.delete(t);
      await server.close();
      cleanup();
    },
  };
  live.add(t);
  return t;
}

/** Stops every server still running (an afterEach hook: a failed test must not hang the run). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((t) => t.stop()));
}

export interface Frame {
  readonly tag: number;
  readonly ret: number;
  readonly payload: Buffer;
}

/** A request frame: u32 length | u32 op | u32 tag | i32 fd | payload. */
export function frame(op: number, tag: number, fd: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(16 + payload.length);
  b.writeUInt32LE(MIN_LENGTH + payload.length, 0);
  b.writeUInt32LE(op >>> 0, 4);
  b.writeUInt32LE(tag >>> 0, 8);
  b.writeInt32LE(fd, 12);
  b.set(payload, 16);
  return b;
}

export function u32(...v: number[]): Buffer {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => {
    b.writeUInt32LE(x >>> 0, 4 * i);
  });
  return b;
}

export function u64(...v: (number | bigint)[]): Buffer {
  const b = Buffer.alloc(8 * v.length);
  v.forEach((x, i) => {
    b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(x)), 8 * i);
  });
  return b;
}

/** A connection that speaks raw frames. */
export class RawConn {
  readonly socket: net.Socket;
  private buf = Buffer.alloc(0);
  private readonly frames: Frame[] = [];
  private waiter: (() => void) | null = null;
  ended = false;
  readonly closed: Promise<void>;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (;;) {
        if (this.buf.length < 4) break;
        const len = this.buf.readUInt32LE(0);
        if (this.buf.length < len + 4) break;
        this.frames.push({
          tag: this.buf.readUInt32LE(4),
          ret: readI64(this.buf, 8),
          payload: Buffer.from(this.buf.subarray(RESPONSE_HEADER, len + 4)),
        });
        this.buf = this.buf.subarray(len + 4);
      }
      this.wake();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  static connect(path: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ path });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RawConn(s));
      });
    });
  }

  send(b: Uint8Array): void {
    this.socket.write(b);
  }

  /** The next reply; rejects if the connection closes first or after `ms`. */
  async next(ms = 5000): Promise<Frame> {
    const deadline = Date.now() + ms;
    for (;;) {
      const f = this.frames.shift();
      if (f) return f;
      if (this.ended) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('no reply in time');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  }

  /** Sends one request and returns its reply (checking the tag). */
  async call(op: number, fd: number, payload?: Uint8Array, tag = 7): Promise<Frame> {
    this.send(frame(op, tag, fd, payload));
    const f = await this.next();
    if (f.tag !== tag) throw new Error(`tag ${f.tag}, expected ${tag}`);
    return f;
  }

  /** Replies received and not yet taken. */
  get pending(): number {
    return this.frames.length;
  }

  close(): Promise<void> {
    this.socket.end();
    return this.closed;
  }
}

/** Waits until `cond()` holds (polling), or throws after `ms`. */
export async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// ---- random calls of the clients' hot paths, for differential tests --------------------------

/** A settled promise as comparable data (a KernelError by class, errno, message and argument). */
export async function outcome(p: Promise<unknown>): Promise<unknown> {
  try {
    return { value: await p };
  } catch (e) {
    if (!(e instanceof KernelError)) throw e;
    const arg = e instanceof IoctlError ? [...e.arg] : null;
    return { error: e.constructor.name, code: e.code, message: e.message, arg };
  }
}

export type Step =
  | { k: 'alloc'; fd: number }
  | { k: 'destroy'; fd: number; id: number }
  | { k: 'value'; fd: number; request: number; raw: bigint | number };

const I = IOCTLS;
/** One call of the hot typed paths, with fds and IDs good and bad (see `connect...` in the tests). */
export const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ k: fc.constant('alloc' as const), fd: fc.constantFrom(0, 0, 0, 1, 2, 9, -1) }),
  fc.record({
    k: fc.constant('destroy' as const),
    fd: fc.constantFrom(0, 0, 0, 1, 2, 9),
    id: fc.oneof(fc.nat({ max: 6 }), fc.constantFrom(0x7fffffff, 0xffffffff, -1)),
  }),
  fc.record({
    k: fc.constant('value' as const),
    fd: fc.constantFrom(0, 0, 1, 2, 9),
    request: fc.constantFrom(
      I.VFIO_GET_API_VERSION.cmd,
      I.VFIO_CHECK_EXTENSION.cmd,
      I.VFIO_SET_IOMMU.cmd,
      I.IOMMU_DESTROY.cmd,
      0x3b7f,
    ),
    raw: fc.oneof(
      fc.constantFrom(0, 1, 8, 0xffffffff, 2 ** 32, -1),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    ),
  }),
);
