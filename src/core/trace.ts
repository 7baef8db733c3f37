// Trace events: what happened inside one step (notifications delivered, warnings the kernel
// would print, table walks, invalidations). A Tracer is a plain sink; models hold `Tracer | null`
// and test it before building an event, so tracing costs nothing when it is off.

export interface TraceEvent {
  /** Subsystem: 'ioasid', 'notify', 'vtd', 'walk', 'inval', 'iommufd', ... */
  kind: string;
  /** What happened, e.g. 'warn', 'IOASID_NOTIFY_FREE', 'fault'. */
  what: string;
  [key: string]: unknown;
}

export type Tracer = (ev: TraceEvent) => void;

/** Collects events into an array; the scenario runner drains it after each step. */
export class TraceBuffer {
  readonly events: TraceEvent[] = [];
  readonly sink: Tracer = (ev) => {
    this.events.push(ev);
  };
  drain(): TraceEvent[] {
    return this.events.splice(0, this.events.length);
  }
}
