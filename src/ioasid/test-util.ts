// Helpers shared by the IOASID test files (not itself a test): notifier recorders, custom
// allocators with a visible backing store, and small assertion helpers.

import assert from 'node:assert/strict';
import { ERRNO, type ErrnoName, KernelError } from '../core/errno.ts';
import { TraceBuffer, type TraceEvent } from '../core/trace.ts';
import { Machine, type MachineOptions } from '../machine.ts';
import { INVALID_IOASID, type IoasidAllocatorOps, type IoasidSet } from './ioasid.ts';
import {
  IOASID_NOTIFY_NAMES,
  type IoasidNbArgs,
  type IoasidNotifyVal,
  NOTIFY_OK,
  type NotifierBlock,
} from './notifier.ts';

export interface Ev {
  nb: string;
  event: string;
  id: number;
  spid: number;
  set: IoasidSet | null;
  pdata: unknown;
}

/** A notifier block that records what it receives into a shared log, and may act on each event. */
export class Recorder implements NotifierBlock {
  readonly name: string;
  priority: number;
  ret: number;
  readonly log: Ev[];
  on: ((event: IoasidNotifyVal, args: IoasidNbArgs) => void) | null = null;

  constructor(name: string, priority: number, log: Ev[], ret: number = NOTIFY_OK) {
    this.name = name;
    this.priority = priority;
    this.log = log;
    this.ret = ret;
  }

  notifierCall(event: IoasidNotifyVal, args: IoasidNbArgs): number {
    this.log.push({
      nb: this.name,
      event: IOASID_NOTIFY_NAMES[event],
      id: args.id,
      spid: args.spid,
      set: args.set,
      pdata: args.pdata,
    });
    if (this.on !== null) this.on(event, args);
    return this.ret;
  }
}

/** Short form of a log: "nb:EVENT:id". */
export function brief(log: readonly Ev[]): string[] {
  return log.map((e) => `${e.nb}:${e.event.replace('IOASID_NOTIFY_', '')}:${e.id}`);
}

export interface Fixture {
  m: Machine;
  tb: TraceBuffer;
  /** Warning events traced since the last call (drains them). */
  warnings(): TraceEvent[];
}

export function fixture(opts: MachineOptions = {}): Fixture {
  const tb = new TraceBuffer();
  const m = new Machine({ debug: true, tracer: tb.sink, ...opts });
  return {
    m,
    tb,
    warnings: () => tb.drain().filter((e) => e.kind === 'ioasid' && e.what === 'warn'),
  };
}

export function assertErr(x: unknown, code: ErrnoName, what = ''): asserts x is KernelError {
  assert.ok(x instanceof KernelError, `${what}: expected a KernelError ${code}, got ${String(x)}`);
  assert.equal(x.code, code, what);
  assert.equal(x.errno, ERRNO[code]);
}

export function assertSet(x: IoasidSet | KernelError): asserts x is IoasidSet {
  assert.ok(!(x instanceof KernelError), `expected a set, got ${String(x)}`);
}

/** A custom allocator's function pair with its own backing store: lowest free ID in its range. */
export interface AllocatorFns {
  alloc: IoasidAllocatorOps['alloc'];
  free: IoasidAllocatorOps['free'];
  used: Set<number>;
  calls: string[];
}

export function lowestFreeFns(lo: number, hi: number): AllocatorFns {
  const used = new Set<number>();
  const calls: string[] = [];
  return {
    used,
    calls,
    alloc(min, max) {
      calls.push(`alloc(${min},${max})`);
      for (let i = Math.max(min, lo); i <= Math.min(max, hi); i++) {
        if (!used.has(i)) {
          used.add(i);
          return i;
        }
      }
      return INVALID_IOASID;
    },
    free(id) {
      calls.push(`free(${id})`);
      used.delete(id);
    },
  };
}

export function opsOf(fns: AllocatorFns, pdata: unknown = null): IoasidAllocatorOps {
  return { alloc: fns.alloc, free: fns.free, pdata };
}
