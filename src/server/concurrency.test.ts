// Concurrency (issue 5 acceptance): 16 clients at once, each running a random valid sequence of
// iommufd ioctls over its own connection for a bounded time (IOAS alloc/destroy, map/unmap with
// the errno each case must give, mock domains attached and removed, the domain's page table
// checked against the user memory, the memory itself read back). Every result is compared with
// a per-client reference model that knows nothing of the other clients: any cross-talk between
// connections shows up as a mismatch. When all have disconnected, no object or pin remains.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type KernelError, UsageError } from '../core/errno.ts';
import { IOMMUFD_TEST_ENUMS } from '../iommufd/uapi/index.ts';
import { PasidkitClient } from './client.ts';
import { hostUsage } from './host.ts';
import { MAP_ANONYMOUS, MAP_SHARED, PROT_READ, PROT_WRITE } from './protocol.ts';
import { startServer, until } from './test-utils.ts';

const CLIENTS = 16;
const SECONDS = 3;
const MAX_OPS = 3000;
const PAGES = 64;
const PAGE = 4096;
/** Mapping slots: IOVA 16 MiB + slot * 64 KiB, inside the mock domain's aperture. */
const SLOTS = 32;
const SLOT = 64 * 1024;
const IOVA0 = 1 << 24;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

class Rng {
  private x: number;
  constructor(seed: number) {
    this.x = seed;
  }
  below(n: number): number {
    let x = this.x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.x = x | 0;
    return (x >>> 0) % n;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.below(a.length)]!;
  }
}

interface MapRec {
  page: number;
  pages: number;
}
interface IoasRec {
  maps: Map<number, MapRec>;
  /** Mock devices (stdev IDs) attached through a domain on this IOAS. */
  devs: Set<number>;
}
interface DevRec {
  ioas: number;
  hwpt: number;
  idev: number;
}

/** What the kernel must answer, as one client alone sees it. */
class Model {
  readonly ioas = new Map<number, IoasRec>();
  readonly devs = new Map<number, DevRec>();
  /** Every live object ID of this client's context. */
  readonly ids = new Set<number>();
}

async function errno(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof UsageError) throw e;
    return (e as KernelError).code ?? String(e);
  }
}

async function runClient(path: string, seed: number, deadline: number): Promise<number> {
  const r = new Rng(seed);
  const c = await PasidkitClient.connect(path);
  const fd = await c.open('/dev/iommu');
  const buf = await c.mmap(PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
  // Each client's memory carries its own seed, so a page from another client would show.
  const pattern = Buffer.alloc(PAGES * PAGE);
  for (let i = 0; i < pattern.length; i += 4) pattern.writeUInt32LE((seed * 0x9e3779b1 + i) >>> 0, i);
  for (let off = 0; off < pattern.length; off += 64 * 1024)
    await c.poke(buf + off, pattern.subarray(off, off + 64 * 1024));
  const m = new Model();
  const fail = (what: string, want: unknown, got: unknown) =>
    assert.fail(`client ${seed}: ${what}: expected ${String(want)}, got ${String(got)}`);
  const expectErr = async (what: string, p: Promise<unknown>, want: string) => {
    const got = await errno(p);
    if (got !== want) fail(what, want, got);
  };
  const anyIoas = () => (m.ioas.size ? r.pick([...m.ioas.keys()]) : null);
  let ops = 0;
  while (Date.now() < deadline && ops < MAX_OPS) {
    ops++;
    const k = r.below(100);
    const ioasId = anyIoas();
    if (k < 12 || ioasId === null) {
      const id = await c.ioasAlloc(fd);
      if (m.ids.has(id)) fail('IOAS_ALLOC', 'a fresh ID', `${id}, already live`);
      m.ids.add(id);
      m.ioas.set(id, { maps: new Map(), devs: new Set() });
    } else if (k < 20) {
      const rec = m.ioas.get(ioasId)!;
      if (rec.devs.size > 0)
        await expectErr(`DESTROY of IOAS ${ioasId} with a domain`, c.destroy(fd, ioasId), 'EBUSY');
      else {
        await expectErr(`DESTROY of IOAS ${ioasId}`, c.destroy(fd, ioasId), 'ok');
        m.ioas.delete(ioasId);
        m.ids.delete(ioasId);
      }
    } else if (k < 23) {
      const id = 5000 + r.below(1000);
      await expectErr(`DESTROY of unknown ${id}`, c.destroy(fd, id), 'ENOENT');
    } else if (k < 45) {
      const rec = m.ioas.get(ioasId)!;
      const slot = r.below(SLOTS);
      const pages = 1 + r.below(8);
      const page = r.below(PAGES - pages + 1);
      const p = c.ioasMap(fd, {
        ioasId,
        userVa: buf + page * PAGE,
        length: pages * PAGE,
        iova: IOVA0 + slot * SLOT,
      });
      if (rec.maps.has(slot)) await expectErr(`MAP over slot ${slot}`, p, 'EEXIST');
      else {
        await expectErr(`MAP at slot ${slot}`, p, 'ok');
        rec.maps.set(slot, { page, pages });
      }
    } else if (k < 62) {
      const rec = m.ioas.get(ioasId)!;
      const slot = r.below(SLOTS);
      const mp = rec.maps.get(slot);
      const iova = IOVA0 + slot * SLOT;
      if (mp === undefined)
        await expectErr(`UNMAP of empty slot ${slot}`, c.ioasUnmap(fd, ioasId, iova, PAGE), 'ENOENT');
      else {
        const n = await c.ioasUnmap(fd, ioasId, iova, mp.pages * PAGE);
        if (n !== BigInt(mp.pages * PAGE)) fail(`UNMAP of slot ${slot}`, mp.pages * PAGE, n);
        rec.maps.delete(slot);
      }
    } else if (k < 65) {
      const rec = m.ioas.get(ioasId)!;
      let total = 0;
      for (const mp of rec.maps.values()) total += mp.pages * PAGE;
      const n = await c.ioasUnmap(fd, ioasId, 0, U64_MAX);
      if (n !== BigInt(total)) fail(`UNMAP of everything in IOAS ${ioasId}`, total, n);
      rec.maps.clear();
    } else if (k < 72) {
      if (m.devs.size >= 3) continue;
      const d = await c.testMockDomain(fd, ioasId);
      for (const id of [d.stdevId, d.idevId])
        if (m.ids.has(id)) fail('MOCK_DOMAIN', 'fresh IDs', `${id} already live`);
      // A compatible automatic domain already on this IOAS is shared, as the kernel does.
      const shared = [...m.devs.values()].find((x) => x.ioas === ioasId);
      if (shared ? d.hwptId !== shared.hwpt : m.ids.has(d.hwptId))
        fail('MOCK_DOMAIN HWPT', shared ? `the shared ${shared.hwpt}` : 'a fresh ID', d.hwptId);
      m.ids.add(d.stdevId).add(d.hwptId).add(d.idevId);
      m.devs.set(d.stdevId, { ioas: ioasId, hwpt: d.hwptId, idev: d.idevId });
      m.ioas.get(ioasId)!.devs.add(d.stdevId);
    } else if (k < 78) {
      if (m.devs.size === 0) continue;
      const stdev = r.pick([...m.devs.keys()]);
      const d = m.devs.get(stdev)!;
      // Destroying the selftest device unbinds it; its automatic HWPT goes with the last user.
      await expectErr(`DESTROY of mock device ${stdev}`, c.destroy(fd, stdev), 'ok');
      m.devs.delete(stdev);
      m.ids.delete(stdev);
      m.ids.delete(d.idev);
      m.ioas.get(d.ioas)!.devs.delete(stdev);
      const stillUsed = [...m.devs.values()].some((x) => x.hwpt === d.hwpt);
      if (!stillUsed) m.ids.delete(d.hwpt);
      await expectErr(
        `DESTROY of auto HWPT ${d.hwpt}`,
        c.destroy(fd, d.hwpt),
        stillUsed ? 'EBUSY' : 'ENOENT',
      );
    } else if (k < 90) {
      // The domain's page table maps each mapping onto this client's own pages.
      const withDom = [...m.devs.values()].filter((d) => m.ioas.get(d.ioas)!.maps.size > 0);
      if (withDom.length === 0) continue;
      const d = r.pick(withDom);
      const [slot, mp] = r.pick([...m.ioas.get(d.ioas)!.maps.entries()]);
      const res = await c.testCmd(fd, IOMMUFD_TEST_ENUMS.IOMMU_TEST_OP_MD_CHECK_MAP, d.hwpt, 'check_map', {
        iova: BigInt(IOVA0 + slot * SLOT),
        length: BigInt(mp.pages * PAGE),
        uptr: BigInt(buf + mp.page * PAGE),
      });
      if (res.ret !== 0) fail(`MD_CHECK_MAP of slot ${slot}`, 0, res.ret);
    } else {
      const page = r.below(PAGES);
      const got = await c.peek(buf + page * PAGE, 64);
      if (!got.equals(pattern.subarray(page * PAGE, page * PAGE + 64)))
        fail(`memory of page ${page}`, 'own pattern', 'other bytes');
    }
  }
  await c.end();
  return ops;
}

describe('concurrency', () => {
  test(`${CLIENTS} clients, random valid ioctl sequences, each matching its own reference model`, {
    timeout: 60_000,
  }, async (ctx) => {
    const t = await startServer({ log: () => {} });
    try {
      const deadline = Date.now() + SECONDS * 1000;
      const ops = await Promise.all(
        Array.from({ length: CLIENTS }, (_, i) => runClient(t.path, i + 1, deadline)),
      );
      ctx.diagnostic(`ops per client: ${ops.join(' ')}`);
      assert.ok(
        ops.every((n) => n >= 20),
        'every client got a fair share of the server',
      );
      await until(() => t.server.connections === 0);
      assert.deepEqual(hostUsage(t.server.host), { contexts: 0, objects: 0, pins: 0, pages: 0, domains: 0 });
    } finally {
      await t.stop();
    }
  });
});
