// Page frames for an IOMMU driver's in-memory structures (iommu_alloc_pages_node_sz and
// iommu_free_pages in drivers/iommu/iommu-pages.c): root and context tables, PASID directories
// and tables, page-table pages, the invalidation queue. A driver that programs real hardware
// gets them from the machine's physical memory, from the same pool the host's user pages come
// from (src/iommufd/process.ts PhysMem), so that one address space holds both and device DMA
// through the tables reaches the user's pages.

/** A source of zeroed 4 KiB frames of physical memory (frame number = physical address / 4096). */
export interface FrameAllocator {
  /** A zeroed frame, or 0 when memory is exhausted (frame 0 is never handed out). */
  allocFrame(): number;
  /** `n` physically contiguous zeroed frames, or 0 (iommu_alloc_pages_node_sz of a larger size). */
  allocFrames(n: number): number;
  /** Gives a frame back (it may be handed out again at once). */
  freeFrame(pfn: number): void;
}
