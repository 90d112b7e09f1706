/**
 * What the API is given. egressd resolves every option once, from one table
 * of flags, variables and defaults (cli/config.ts, `egressd --help`); the
 * API reads none itself.
 */
export interface ApiConfig {
  /** The admin bearer key; '' disables admin access. Not enumerable: never logged or spread. */
  adminKey: string;
  /** Node of a computer registered without `node`; '' means none (then `node` is required). */
  defaultNode: string;
  /**
   * Sandbox roots: computers' cgroups lie strictly below one; a tenant key's
   * cgroup prefix lies below one too (default `<first root>/<tenant>`). ''
   * (no root) accepts any cgroup: only for tests of the API alone.
   */
  cgroupRoots: string[];
  /** How long PUT and DELETE of a policy wait for the agent without `?wait=`, ms. */
  waitTimeoutMs: number;
  /** The largest `?wait=`, ms. */
  maxWaitMs: number;
  bodyLimitBytes: number;
  maxRules: number;
  /** Event streams one key may hold open in one process (429 beyond). */
  ssePerKey: number;
  /** Event streams one process holds open (503 beyond). */
  sseMax: number;
  /** on: the dashboard at /ui/ and cookie sessions (api/session.ts); off: neither exists. */
  ui: 'on' | 'off';
  /** Seconds without a request after which a dashboard session ends. */
  uiSessionIdle: number;
  /** Seconds after its sign-in at which a dashboard session ends, however busy. */
  uiSessionMax: number;
}
