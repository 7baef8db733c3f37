// The debug-mode check that every object's `users` count is exactly what the reference graph
// of research iommufd.md B.1 explains: the table's own reference, plus one for each object,
// attachment, open fd, live mmap or bound driver that depends on it. Run after every ioctl when
// PASIDKIT_DEBUG=1 (research G: "refcounts equal the reference graph").

import { invariant } from '../core/invariants.ts';
import { IommufdDevice } from './device.ts';
import { FaultObject, HwptNested, HwptPaging, Vdevice, Viommu } from './hw_pagetable.ts';
import { IommufdAccess } from './ioas.ts';
import type { IommufdCtx, IommufdObject } from './main.ts';
import { HwQueue, Veventq } from './viommu.ts';

export function checkUsersGraph(ctx: IommufdCtx): void {
  const exp = new Map<IommufdObject, number>();
  const add = (o: IommufdObject | null, n = 1): void => {
    if (o && ctx.objects.get(o.id) === o) exp.set(o, (exp.get(o) ?? 1) + n);
  };
  for (const o of ctx.objects.values()) {
    if (!exp.has(o)) exp.set(o, 1);
    if (o instanceof HwptPaging) {
      add(o.ioas);
      add(o.fault);
    } else if (o instanceof HwptNested) {
      add(o.viommu ?? o.parent);
      add(o.fault);
    } else if (o instanceof Viommu) {
      add(o.hwpt);
      add(o, ctx.mmapRefs.get(o) ?? 0);
    } else if (o instanceof Vdevice) add(o.viommu);
    else if (o instanceof Veventq) {
      add(o.viommu);
      add(o, o.fileRefs);
    } else if (o instanceof FaultObject) add(o, o.fileRefs);
    else if (o instanceof HwQueue) {
      add(o.viommu);
      add(o.prev);
    } else if (o instanceof IommufdAccess) {
      add(o.ioas);
      add(o); // the access driver, until iommufd_access_destroy
    } else if (o instanceof IommufdDevice) add(o); // the bound driver, until unbind
  }
  for (const ig of ctx.groups.values()) {
    for (const a of ig.pasidAttach.values()) {
      for (const idev of a.devices.values()) {
        add(idev);
        add(a.hwpt);
      }
    }
  }
  for (const [o, n] of exp) {
    invariant(
      o.users === n,
      `iommufd: ${o.type} ${o.id} has users ${o.users}, the reference graph explains ${n}`,
    );
  }
}
