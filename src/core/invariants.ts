// The debug mode: after every operation, each registered model checks its own invariants
// (refcounts match references, quotas match live IDs, caches agree with tables) and a violation
// throws InvariantError at once, naming the rule. It is a bug detector for pasidkit itself, so
// it throws rather than returning an errno.
//
// Switching it on: `new Machine({ debug: true })` or `setDebug(true)` from the API, `--check` on
// the CLI, or PASIDKIT_DEBUG=1 in the environment (the test suite runs with it on).

export class InvariantError extends Error {
  override readonly name = 'InvariantError';
}

let debugDefault = process.env['PASIDKIT_DEBUG'] === '1' || process.env['PASIDKIT_DEBUG'] === 'true';

/** The default for objects created from now on. */
export function setDebug(on: boolean): void {
  debugDefault = on;
}

export function debugEnabled(): boolean {
  return debugDefault;
}

export function invariant(cond: unknown, rule: string): asserts cond {
  if (!cond) throw new InvariantError(`invariant violated: ${rule}`);
}
