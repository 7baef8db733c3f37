// A synchronous client of the wire protocol (../shared/spec/WIRE.md), for callers that run step
// by step and cannot await: the scenario runner's family 4 under `pasidkit run --connect`. A
// worker thread owns the socket; the caller hands it one frame at a time through a shared
// buffer and blocks on Atomics.wait until the answer is there. One instance is one connection,
// so one remote process: closing it is that process's exit.

import { Worker } from 'node:worker_threads';
import { ERRNO, type ErrnoName, errnoName, KernelError, kerr } from '../core/errno.ts';
import { OP } from './protocol.ts';

const HEADER = 16;
const MAX = 16 * 1024 * 1024 + 64;

// States of ctl[0]: who may act on the shared buffer.
const IDLE = 0;
const REQUEST = 1;
const RESPONSE = 2;
const CONNECTED = 3;
const FAILED = 4;

const WORKER = `
const { workerData } = require('node:worker_threads');
const net = require('node:net');
const { sab, target } = workerData;
const ctl = new Int32Array(sab, 0, 4);
const data = new Uint8Array(sab, 16);
const sock = target.path !== undefined ? net.createConnection(target.path) : net.createConnection(target.port, target.host);
let buf = Buffer.alloc(0);
function fail() { Atomics.store(ctl, 0, ${FAILED}); Atomics.notify(ctl, 0); }
sock.on('error', fail);
sock.on('close', fail);
sock.on('connect', () => { Atomics.store(ctl, 0, ${CONNECTED}); Atomics.notify(ctl, 0); next(); });
sock.on('data', (d) => {
  buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
  if (buf.length < 4) return;
  const len = buf.readUInt32LE(0);
  if (buf.length < 4 + len) return;
  data.set(buf.subarray(0, 4 + len), 0);
  buf = buf.subarray(4 + len);
  Atomics.store(ctl, 2, 4 + len);
  Atomics.store(ctl, 0, ${RESPONSE});
  Atomics.notify(ctl, 0);
  next();
});
async function next() {
  for (;;) {
    const s = Atomics.load(ctl, 0);
    if (s === ${REQUEST}) break;
    if (s === ${FAILED}) return;
    const w = Atomics.waitAsync(ctl, 0, s);
    if (w.async) await w.value;
  }
  const n = Atomics.load(ctl, 1);
  sock.write(Buffer.from(data.subarray(0, n)));
}
`;

export type WireTarget = { path: string } | { host: string; port: number };

/** `SOCKET` or `HOST:PORT` as the CLI takes it. */
export function parseWireTarget(s: string): WireTarget {
  const m = /^(?:tcp:\/\/)?(\[[^\]]+\]|[^:/]+):(\d+)$/.exec(s);
  if (m && !s.includes('/')) return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
  return { path: s };
}

export interface SyncReply {
  ret: number;
  payload: Uint8Array;
}

export class SyncWireClient {
  private readonly sab = new SharedArrayBuffer(HEADER + MAX);
  private readonly ctl = new Int32Array(this.sab, 0, 4);
  private readonly data = new Uint8Array(this.sab, HEADER);
  private readonly worker: Worker;
  private tag = 1;
  private closed = false;

  constructor(target: WireTarget, timeoutMs = 10_000) {
    this.worker = new Worker(WORKER, { eval: true, workerData: { sab: this.sab, target } });
    this.worker.unref();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = Atomics.load(this.ctl, 0);
      if (s === CONNECTED) break;
      if (s === FAILED || Date.now() > deadline) {
        void this.worker.terminate();
        throw new Error(`cannot connect to the pasidkit server at ${describe(target)}`);
      }
      Atomics.wait(this.ctl, 0, s, 50);
    }
    Atomics.store(this.ctl, 0, IDLE);
  }

  /** One request, one answer. Throws if the connection is gone. */
  call(op: number, fd: number, payload: Uint8Array): SyncReply {
    if (this.closed) throw new Error('the connection to the pasidkit server is closed');
    const len = 12 + payload.length;
    if (len + 4 > MAX) throw new RangeError('frame too large');
    const dv = new DataView(this.sab, HEADER);
    const tag = this.tag++ >>> 0;
    dv.setUint32(0, len, true);
    dv.setUint32(4, op, true);
    dv.setUint32(8, tag, true);
    dv.setInt32(12, fd, true);
    this.data.set(payload, 16);
    Atomics.store(this.ctl, 1, len + 4);
    Atomics.store(this.ctl, 0, REQUEST);
    Atomics.notify(this.ctl, 0);
    for (;;) {
      const s = Atomics.load(this.ctl, 0);
      if (s === RESPONSE) break;
      if (s === FAILED) {
        this.closed = true;
        throw new Error('the pasidkit server closed the connection');
      }
      Atomics.wait(this.ctl, 0, s, 1000);
    }
    const n = Atomics.load(this.ctl, 2);
    const rlen = dv.getUint32(0, true);
    const rtag = dv.getUint32(4, true);
    if (rtag !== tag || rlen + 4 !== n) throw new Error('the pasidkit server answered out of order');
    const ret = Number(dv.getBigInt64(8, true));
    const out = this.data.slice(16, 4 + rlen);
    Atomics.store(this.ctl, 0, IDLE);
    return { ret, payload: out };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    void this.worker.terminate();
  }
}

function describe(t: WireTarget): string {
  return 'path' in t ? t.path : `${t.host}:${t.port}`;
}

/** -errno as a KernelError, for results that came over the wire. */
export function wireError(ret: number, what: string): KernelError {
  const name = errnoName(-ret) as ErrnoName | undefined;
  return name !== undefined
    ? kerr(name, `${what} (remote)`)
    : new KernelError('EIO', `${what}: errno ${-ret}`);
}

export const WIRE_OP = OP;
export { ERRNO };
