// IOASID notifications (research ioasid-core.md D; PROFILE.md P4, P8, P9): the events, their
// payload, and a notifier chain with Linux's atomic-notifier ordering: higher priority first,
// equal priority in registration order, and a return value carrying NOTIFY_STOP_MASK stops the
// chain. Delivery walks a snapshot of the chain, so a callback may register, unregister or call
// back into the core (P9) without disturbing the walk in progress.

import type { IoasidSet } from './ioasid.ts';

export const IOASID_NOTIFY_ALLOC = 1;
export const IOASID_NOTIFY_FREE = 2;
export const IOASID_NOTIFY_BIND = 3;
export const IOASID_NOTIFY_UNBIND = 4;
export type IoasidNotifyVal = 1 | 2 | 3 | 4;

export const IOASID_NOTIFY_NAMES: Record<IoasidNotifyVal, string> = {
  1: 'IOASID_NOTIFY_ALLOC',
  2: 'IOASID_NOTIFY_FREE',
  3: 'IOASID_NOTIFY_BIND',
  4: 'IOASID_NOTIFY_UNBIND',
};

/** Flags of ioasid_notify(): which chains an event goes to. */
export const IOASID_NOTIFY_FLAG_ALL = 1 << 0;
export const IOASID_NOTIFY_FLAG_SET = 1 << 1;

/** Priorities (P4: the v3 code's values). */
export const IOASID_PRIO_LAST = 0;
export const IOASID_PRIO_DEVICE = 1;
export const IOASID_PRIO_IOMMU = 2;
export const IOASID_PRIO_CPU = 3;

/** include/linux/notifier.h */
export const NOTIFY_DONE = 0x0000;
export const NOTIFY_OK = 0x0001;
export const NOTIFY_STOP_MASK = 0x8000;
export const NOTIFY_BAD = NOTIFY_STOP_MASK | 0x0002;
export const NOTIFY_STOP = NOTIFY_OK | NOTIFY_STOP_MASK;

/** struct ioasid_nb_args: a snapshot taken when the event is emitted. */
export interface IoasidNbArgs {
  id: number;
  spid: number;
  set: IoasidSet | null;
  pdata: unknown;
}

/** struct notifier_block: the callback and its priority. */
export interface NotifierBlock {
  notifierCall(event: IoasidNotifyVal, args: IoasidNbArgs): number;
  priority: number;
}

export interface ChainEntry {
  nb: NotifierBlock;
  priority: number;
}

export class NotifierChain {
  private entries: ChainEntry[] = [];
  /** Called after every change of membership (the core keeps its fast-path flags by it). */
  onChange: (() => void) | null = null;

  get length(): number {
    return this.entries.length;
  }

  has(nb: NotifierBlock): boolean {
    return this.entries.some((e) => e.nb === nb);
  }

  /** Inserts after every entry of higher or equal priority. False if `nb` is already on the chain. */
  register(nb: NotifierBlock): boolean {
    if (this.has(nb)) return false;
    const priority = nb.priority;
    let i = 0;
    while (i < this.entries.length && this.entries[i]!.priority >= priority) i++;
    // Copy on write: a walk in progress keeps its snapshot.
    const next = this.entries.slice();
    next.splice(i, 0, { nb, priority });
    this.entries = next;
    this.onChange?.();
    return true;
  }

  unregister(nb: NotifierBlock): boolean {
    const i = this.entries.findIndex((e) => e.nb === nb);
    if (i < 0) return false;
    const next = this.entries.slice();
    next.splice(i, 1);
    this.entries = next;
    this.onChange?.();
    return true;
  }

  /** Calls every block in order until one returns a value with NOTIFY_STOP_MASK; returns the last value. */
  call(event: IoasidNotifyVal, args: IoasidNbArgs): number {
    return NotifierChain.callEntries(this.entries, event, args);
  }

  /** The chain as it is now (entries are copy-on-write, so later changes do not touch it). */
  snapshot(): readonly ChainEntry[] {
    return this.entries;
  }

  /** Walks a snapshot taken earlier (see call). */
  static callEntries(snapshot: readonly ChainEntry[], event: IoasidNotifyVal, args: IoasidNbArgs): number {
    let ret = NOTIFY_DONE;
    for (const e of snapshot) {
      ret = e.nb.notifierCall(event, args);
      if ((ret & NOTIFY_STOP_MASK) !== 0) break;
    }
    return ret;
  }

  blocks(): NotifierBlock[] {
    return this.entries.map((e) => e.nb);
  }

  clear(): void {
    this.entries = [];
    this.onChange?.();
  }
}
