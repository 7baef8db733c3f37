#!/usr/bin/env node
// Runs every *.test.ts under src/ with node:test (Node 20 has no test globs), with the
// invariant checker on: the tests must hold with PASIDKIT_DEBUG=1, as DEVELOPERS.md asks.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function walk(dir, out) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}
const filter = process.argv.slice(2);
const files = walk('src', []).filter((f) => filter.length === 0 || filter.some((s) => f.includes(s)));
files.sort();
const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=spec', ...files], {
  stdio: 'inherit',
  env: { ...process.env, PASIDKIT_DEBUG: process.env.PASIDKIT_DEBUG ?? '1' },
});
process.exit(r.status ?? 1);
