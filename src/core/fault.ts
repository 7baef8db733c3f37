// Fault injection in the manner of the kernel's fail_nth (Documentation/fault-injection):
// every site that allocates memory in the modelled kernel asks the injector first, and the Nth
// such call after arming fails as the allocation would (-ENOMEM). Tests sweep N upward until an
// operation completes without reaching N, proving each failure path is clean and leaks nothing.
//
// Switching it on: `FaultInjector.failNth(n)` from the API, `--fail-nth N` on the CLI, or the
// environment variable PASIDKIT_FAIL_NTH=N (read by `FaultInjector.fromEnv`).

export class FaultInjector {
  /** Calls left before the failing one; 0 = disarmed. Checked on hot paths, so kept a plain number. */
  private countdown = 0;
  private sites: string[] | null = null;
  /** Total injectable calls seen while armed (for sweeps: if it stays below N, the op never reached N). */
  calls = 0;
  /** Sites that have failed since the last arm, in order. */
  readonly injected: string[] = [];

  static fromEnv(env: NodeJS.ProcessEnv = process.env): FaultInjector {
    const fi = new FaultInjector();
    const n = Number(env['PASIDKIT_FAIL_NTH'] ?? 0);
    if (Number.isInteger(n) && n > 0) fi.failNth(n);
    return fi;
  }

  /** Arm: the nth injectable call from now fails (1 = the very next). `sites` limits which sites count. */
  failNth(n: number, sites?: readonly string[]): void {
    if (!Number.isInteger(n) || n < 0)
      throw new RangeError(`fail_nth must be a non-negative integer, got ${n}`);
    this.countdown = n;
    this.calls = 0;
    this.sites = sites ? [...sites] : null;
    this.injected.length = 0;
  }

  disarm(): void {
    this.countdown = 0;
    this.sites = null;
  }

  get armed(): boolean {
    return this.countdown > 0;
  }

  /**
   * Ask whether the allocation at `site` fails. Cheap when disarmed: callers write
   * `if (fi.armed && fi.shouldFail('site'))` on hot paths.
   */
  shouldFail(site: string): boolean {
    if (this.countdown === 0) return false;
    if (this.sites !== null && !this.sites.includes(site)) return false;
    this.calls++;
    if (--this.countdown === 0) {
      this.injected.push(site);
      return true;
    }
    return false;
  }
}
