// An interval tree over inclusive u64 ranges [start, last] (bigint), the model's counterpart of
// the kernel's lib/interval_tree.c that io_pagetable.c builds its area, reserved and allowed
// trees on (research iommufd.md B.2). Like the kernel's it holds possibly overlapping intervals,
// orders them by start, and answers "the lowest-start node intersecting [s, l]" and "the next
// one after this node", which is all io_pagetable needs; spans() gives the kernel's
// interval_tree_span_iter view (maximal used runs and the holes between them).
//
// Implementation: a treap keyed by (start, insertion sequence) and augmented with the largest
// `last` of each subtree, so every query is O(log n) for the disjoint trees (areas) and output-
// sensitive for overlapping ones (reserved). Priorities come from a fixed-seed generator, so
// runs are reproducible.

import { invariant } from '../core/invariants.ts';

export class IntervalNode<T> {
  readonly start: bigint;
  readonly last: bigint;
  readonly value: T;
  /** Insertion sequence: orders equal starts and identifies the node. */
  readonly seq: number;
  left: IntervalNode<T> | null = null;
  right: IntervalNode<T> | null = null;
  readonly prio: number;
  maxLast: bigint;
  /** The smallest start in the subtree. */
  minStart: bigint;
  /** The total length of the subtree's intervals (meaningful for disjoint trees). */
  sumLen: bigint;
  constructor(start: bigint, last: bigint, value: T, seq: number, prio: number) {
    this.start = start;
    this.last = last;
    this.value = value;
    this.seq = seq;
    this.prio = prio;
    this.maxLast = last;
    this.minStart = start;
    this.sumLen = last - start + 1n;
  }
}

function cmpKey<T>(a: IntervalNode<T>, start: bigint, seq: number): number {
  if (a.start !== start) return a.start < start ? -1 : 1;
  return a.seq - seq;
}

function update<T>(n: IntervalNode<T>): void {
  let m = n.last;
  let sum = n.last - n.start + 1n;
  if (n.left) {
    if (n.left.maxLast > m) m = n.left.maxLast;
    sum += n.left.sumLen;
  }
  if (n.right) {
    if (n.right.maxLast > m) m = n.right.maxLast;
    sum += n.right.sumLen;
  }
  n.maxLast = m;
  n.minStart = n.left ? n.left.minStart : n.start;
  n.sumLen = sum;
}

/** In a disjoint tree: the subtree's intervals are back to back, one run with no gap. */
function contiguous<T>(n: IntervalNode<T>): boolean {
  return n.sumLen === n.maxLast - n.minStart + 1n;
}

/** A run scan either ended (`end` = its last byte) or continues at `next`. */
type RunScan =
  | { readonly ended: true; readonly end: bigint }
  | { readonly ended: false; readonly next: bigint };

function rotateRight<T>(n: IntervalNode<T>): IntervalNode<T> {
  const l = n.left!;
  n.left = l.right;
  l.right = n;
  update(n);
  update(l);
  return l;
}

function rotateLeft<T>(n: IntervalNode<T>): IntervalNode<T> {
  const r = n.right!;
  n.right = r.left;
  r.left = n;
  update(n);
  update(r);
  return r;
}

export interface Span {
  readonly isHole: boolean;
  readonly start: bigint;
  readonly last: bigint;
}

export class IntervalTree<T> {
  private root: IntervalNode<T> | null = null;
  private seq = 0;
  private rng = 0x9e3779b9;
  private count = 0;

  get size(): number {
    return this.count;
  }

  get empty(): boolean {
    return this.root === null;
  }

  private nextPrio(): number {
    // xorshift32
    let x = this.rng;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.rng = x >>> 0;
    return this.rng;
  }

  /**
   * Inserts [start, last]. Like the kernel's tree this accepts start > last (a reservation
   * whose length wrapped): such a node then intersects exactly the queries the kernel's would.
   */
  insert(start: bigint, last: bigint, value: T): IntervalNode<T> {
    const node = new IntervalNode(start, last, value, ++this.seq, this.nextPrio());
    this.root = this.insertAt(this.root, node);
    this.count++;
    return node;
  }

  private insertAt(n: IntervalNode<T> | null, node: IntervalNode<T>): IntervalNode<T> {
    if (n === null) return node;
    if (cmpKey(node, n.start, n.seq) < 0) {
      n.left = this.insertAt(n.left, node);
      if (n.left.prio > n.prio) return rotateRight(n);
    } else {
      n.right = this.insertAt(n.right, node);
      if (n.right.prio > n.prio) return rotateLeft(n);
    }
    update(n);
    return n;
  }

  /** Removes a node previously returned by insert; removing one that is not there is a bug. */
  remove(node: IntervalNode<T>): void {
    const before = this.count;
    this.root = this.removeAt(this.root, node);
    invariant(this.count === before - 1, 'interval tree: removed node was in the tree');
  }

  private removeAt(n: IntervalNode<T> | null, node: IntervalNode<T>): IntervalNode<T> | null {
    if (n === null) return null;
    if (n === node) {
      this.count--;
      return this.merge(n.left, n.right);
    }
    if (cmpKey(node, n.start, n.seq) < 0) n.left = this.removeAt(n.left, node);
    else n.right = this.removeAt(n.right, node);
    update(n);
    return n;
  }

  private merge(a: IntervalNode<T> | null, b: IntervalNode<T> | null): IntervalNode<T> | null {
    if (a === null) return b;
    if (b === null) return a;
    if (a.prio > b.prio) {
      a.right = this.merge(a.right, b);
      update(a);
      return a;
    }
    b.left = this.merge(a, b.left);
    update(b);
    return b;
  }

  /** interval_tree_iter_first: the lowest-start node that intersects [start, last]. */
  iterFirst(start: bigint, last: bigint): IntervalNode<T> | null {
    return this.first(this.root, start, last, null);
  }

  /** interval_tree_iter_next: the next node after `node` (in start order) intersecting [start, last]. */
  iterNext(node: IntervalNode<T>, start: bigint, last: bigint): IntervalNode<T> | null {
    return this.first(this.root, start, last, node);
  }

  private first(
    n: IntervalNode<T> | null,
    s: bigint,
    l: bigint,
    after: IntervalNode<T> | null,
  ): IntervalNode<T> | null {
    while (n !== null) {
      if (n.maxLast < s) return null;
      if (after !== null && cmpKey(n, after.start, after.seq) <= 0) {
        n = n.right;
        continue;
      }
      const r = this.first(n.left, s, l, after);
      if (r !== null) return r;
      if (n.start > l) return null;
      if (n.last >= s) return n;
      n = n.right;
    }
    return null;
  }

  /**
   * For a tree of disjoint intervals (io_pagetable's areas): the last byte of the run of
   * back-to-back intervals that contains `p`, or null when no interval contains `p`. Whole
   * contiguous subtrees are skipped, so this is O(log n) however long the run is; it lets the
   * IOVA allocator step over thousands of adjacent areas at once.
   */
  contiguousEnd(p: bigint): bigint | null {
    const n0 = this.iterFirst(p, p);
    if (n0 === null) return null;
    const r = this.scanAfter(this.root, n0, n0.last + 1n);
    return r.ended ? r.end : r.next - 1n;
  }

  /** Continue a run expecting the next interval at `next`, over the nodes after `after`. */
  private scanAfter(n: IntervalNode<T> | null, after: IntervalNode<T>, next: bigint): RunScan {
    while (n !== null && cmpKey(n, after.start, after.seq) <= 0) n = n.right;
    if (n === null) return { ended: false, next };
    const r = this.scanAfter(n.left, after, next);
    if (r.ended) return r;
    if (n.start !== r.next) return { ended: true, end: r.next - 1n };
    return this.scan(n.right, n.last + 1n);
  }

  /** Continue a run expecting the next interval at `next`, over a whole subtree. */
  private scan(n: IntervalNode<T> | null, next: bigint): RunScan {
    if (n === null) return { ended: false, next };
    if (n.minStart !== next) return { ended: true, end: next - 1n };
    if (contiguous(n)) return { ended: false, next: n.maxLast + 1n };
    const r = this.scan(n.left, next);
    if (r.ended) return r;
    if (n.start !== r.next) return { ended: true, end: r.next - 1n };
    return this.scan(n.right, n.last + 1n);
  }

  /** Every node intersecting [start, last], in start order. */
  *overlapping(start: bigint, last: bigint): Generator<IntervalNode<T>> {
    for (let n = this.iterFirst(start, last); n !== null; n = this.iterNext(n, start, last)) yield n;
  }

  /** Every node, in start order. */
  *nodes(): Generator<IntervalNode<T>> {
    const stack: IntervalNode<T>[] = [];
    let n = this.root;
    while (n !== null || stack.length > 0) {
      while (n !== null) {
        stack.push(n);
        n = n.left;
      }
      const top = stack.pop()!;
      yield top;
      n = top.right;
    }
  }

  /**
   * interval_tree_span_iter over [first, last]: alternating maximal "used" runs (the union of
   * the nodes, touching nodes merged) and holes, clipped to the window, in order.
   */
  *spans(first: bigint, last: bigint): Generator<Span> {
    let pos = first;
    for (let n = this.iterFirst(first, last); n !== null; ) {
      if (n.start > pos) {
        yield { isHole: true, start: pos, last: n.start - 1n };
        pos = n.start;
      }
      let usedLast = n.last;
      let next = this.iterNext(n, first, last);
      while (next !== null && (next.start <= usedLast || next.start === usedLast + 1n)) {
        if (next.last > usedLast) usedLast = next.last;
        next = this.iterNext(next, first, last);
      }
      if (usedLast >= last) {
        yield { isHole: false, start: pos, last };
        return;
      }
      yield { isHole: false, start: pos, last: usedLast };
      pos = usedLast + 1n;
      n = next;
    }
    yield { isHole: true, start: pos, last };
  }

  clear(): void {
    this.root = null;
    this.count = 0;
  }

  /** BST order, heap order of priorities, and the maxLast augmentation. */
  checkInvariants(): void {
    let seen = 0;
    const walk = (
      n: IntervalNode<T> | null,
      lo: IntervalNode<T> | null,
      hi: IntervalNode<T> | null,
    ): void => {
      if (n === null) return;
      seen++;
      if (lo) invariant(cmpKey(n, lo.start, lo.seq) > 0, 'interval tree: BST order (left bound)');
      if (hi) invariant(cmpKey(n, hi.start, hi.seq) < 0, 'interval tree: BST order (right bound)');
      if (n.left) invariant(n.left.prio <= n.prio, 'interval tree: heap order (left)');
      if (n.right) invariant(n.right.prio <= n.prio, 'interval tree: heap order (right)');
      let m = n.last;
      if (n.left && n.left.maxLast > m) m = n.left.maxLast;
      if (n.right && n.right.maxLast > m) m = n.right.maxLast;
      invariant(n.maxLast === m, 'interval tree: maxLast augmentation');
      invariant(n.minStart === (n.left ? n.left.minStart : n.start), 'interval tree: minStart augmentation');
      const sum = n.last - n.start + 1n + (n.left?.sumLen ?? 0n) + (n.right?.sumLen ?? 0n);
      invariant(n.sumLen === sum, 'interval tree: sumLen augmentation');
      walk(n.left, lo, n);
      walk(n.right, n, hi);
    };
    walk(this.root, null, null);
    invariant(seen === this.count, 'interval tree: node count');
  }
}
