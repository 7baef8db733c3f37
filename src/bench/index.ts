// The benchmark table behind `pasidkit bench`: every workload of ../shared/bench/WORKLOADS.md
// that pasidkit implements, in the order the file lists them, plus peer implementations.

import { benchTranslateIotlbHit, benchTranslateNestedWalk } from '../hw/vtd/bench.ts';
import {
  benchAllocChurn,
  benchAllocChurnNumberAllocator,
  benchAllocFill,
  benchFind,
  benchPasidMemory,
} from '../ioasid/bench.ts';
import { benchIoasMapUnmap } from '../iommufd/bench.ts';
import { benchWirePipelined, benchWireRtt, benchWireRttAnchor } from '../server/bench.ts';
import type { BenchResult } from './harness.ts';

export interface Workload {
  name: string;
  run: () => BenchResult | Promise<BenchResult>;
  /** A peer implementation's line, printed after the workload's own. */
  peers?: (() => BenchResult | Promise<BenchResult>)[];
}

export const WORKLOADS: Workload[] = [
  { name: 'alloc-fill', run: benchAllocFill },
  { name: 'alloc-churn', run: benchAllocChurn, peers: [benchAllocChurnNumberAllocator] },
  { name: 'find', run: benchFind },
  { name: 'translate-iotlb-hit', run: () => benchTranslateIotlbHit() as BenchResult },
  { name: 'translate-nested-walk', run: () => benchTranslateNestedWalk() as BenchResult },
  { name: 'ioas-map-unmap', run: () => benchIoasMapUnmap() as unknown as BenchResult },
  {
    name: 'wire-rtt',
    run: async () => (await benchWireRtt()) as unknown as BenchResult,
    peers: [async () => (await benchWireRttAnchor()) as unknown as BenchResult],
  },
  { name: 'wire-pipelined', run: async () => (await benchWirePipelined()) as unknown as BenchResult },
  { name: 'pasid-memory', run: benchPasidMemory },
];
