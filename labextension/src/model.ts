/**
 * The data model of the Serverless panel: parsing and validating the snapshots the kernel
 * sends over the `nbserverless` comm (DESIGN.md "Comm message schema"), formatting, and a
 * render throttle. Pure TypeScript with no JupyterLab imports, so jest tests it directly.
 */
import { count, money, ms, percent, seconds } from './format';

/** Target name of the comm between the kernel and the lab. */
export const COMM_TARGET = 'nbserverless';

/** The newest snapshot schema version this extension understands. */
export const SCHEMA_VERSION = 2;

/** Every schema version this extension accepts (version 1 has no node or wait fields). */
export const SCHEMA_VERSIONS: readonly number[] = [1, 2];

/** Cluster summary, from `nbserverless.cluster.summary()`. */
export interface IClusterSummary {
  address: string | null;
  nodes: number;
  cpus: number;
  cpus_used: number;
  gpus: number;
  gpus_used: number;
  /** Version 2 from here; null (or empty) from a version-1 kernel. */
  worker_nodes: number | null;
  nodes_pending: number | null;
  nodes_peak: number | null;
  autoscaling: boolean | null;
  node_cost: number | null;
  node_cost_always_on: number | null;
  /** `[unix time, nodes]` at each change, oldest first. */
  node_history: [number, number][];
}

/** One function, class handle or `%%serverless` cell. */
export interface IFunctionStats {
  name: string;
  kind: string;
  invocations: number;
  errors: number;
  retries: number;
  cold_starts: number;
  in_flight: number;
  queued: number;
  replicas: number;
  peak_replicas: number;
  cancellations: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  exec_p50_ms: number | null;
  exec_p95_ms: number | null;
  cost: number;
  cost_idle: number;
  always_on_cost: number | null;
  saving: number | null;
  /** Calls waiting for a node to come up (version 2; 0 from version 1). */
  waiting_for_node: number;
  /** For how long, in seconds. */
  waiting_for_node_s: number;
  /** The keep-alive in force, e.g. `keep-alive 40 s (learned)`; null when unknown. */
  keep_alive: string | null;
}

/** `waiting for a node (12.0 s)` while calls of `f` wait for a node, else ''. */
export function waitingText(f: IFunctionStats): string {
  return f.waiting_for_node > 0
    ? `waiting for a node (${seconds(f.waiting_for_node_s)})`
    : '';
}

/** The details of one function: shown in its row's tooltip and expanded row. */
export function functionDetails(f: IFunctionStats): [string, string][] {
  const none = f.invocations === 0;
  const wait = waitingText(f);
  return [
    ['Kind', f.kind],
    ...(wait ? ([['Waiting', wait]] as [string, string][]) : []),
    ['Keep-alive', f.keep_alive ?? '–'],
    ['Errors', count(f.errors)],
    ['Cancelled', count(f.cancellations)],
    ['Retries', count(f.retries)],
    ['Cold starts', count(f.cold_starts)],
    ['Running / queued', `${count(f.in_flight)} / ${count(f.queued)}`],
    [
      'p50 run / end-to-end',
      `${ms(none ? null : f.exec_p50_ms)} / ${ms(none ? null : f.p50_ms)}`
    ],
    [
      'p95 run / end-to-end',
      `${ms(none ? null : f.exec_p95_ms)} / ${ms(none ? null : f.p95_ms)}`
    ],
    ['Replicas now / peak', `${count(f.replicas)} / ${count(f.peak_replicas)}`],
    ['Idle cost (est.)', money(f.cost_idle)],
    ['Always-on (est.)', money(f.always_on_cost)],
    ['Saving', percent(f.saving)]
  ];
}

/**
 * The cluster summary's items. A version-2 snapshot adds nodes now / pending / peak and the
 * estimated node cost with its always-on equivalent (the peak node count kept up).
 */
export function clusterItems(s: ISnapshot): [string, string][] {
  const c = s.cluster;
  const items: [string, string][] = [['Cluster', c.address ?? 'not connected']];
  if (c.nodes_peak === null) {
    items.push(['Nodes', `${c.nodes}`]);
  } else {
    items.push([
      c.autoscaling ? 'Nodes (autoscaling)' : 'Nodes',
      `${count(c.nodes)} now · ${count(c.nodes_pending ?? 0)} pending · peak ${count(c.nodes_peak)}`
    ]);
  }
  items.push(
    ['CPUs used', formatUsed(c.cpus_used, c.cpus)],
    ['GPUs used', formatUsed(c.gpus_used, c.gpus)]
  );
  if (c.node_cost !== null) {
    items.push([
      'Node cost (est.)',
      `${money(c.node_cost)} (always-on ${money(c.node_cost_always_on)})`
    ]);
  }
  return items;
}

/**
 * Nodes over time, sampled at `points` even steps from the first change in `history` to
 * `now` (so the x axis is time); [] without history.
 */
export function nodeSeries(
  history: [number, number][],
  now: number,
  points = 60
): number[] {
  if (history.length === 0) {
    return [];
  }
  const t0 = history[0][0];
  const span = Math.max(now - t0, 1e-9);
  const out: number[] = [];
  let j = 0;
  for (let i = 0; i < points; i++) {
    const t = t0 + (span * i) / (points - 1);
    while (j + 1 < history.length && history[j + 1][0] <= t) {
      j++;
    }
    out.push(history[j][1]);
  }
  return out;
}

/** The `points` attribute of an SVG polyline plotting `values` in a `width` × `height` box. */
export function sparklinePoints(
  values: number[],
  width: number,
  height: number
): string {
  const vals = values.length >= 2 ? values : [values[0] ?? 0, values[0] ?? 0];
  const lo = Math.min(...vals);
  const span = Math.max(...vals) - lo || 1;
  const step = (width - 2) / (vals.length - 1);
  return vals
    .map(
      (v, i) =>
        `${(1 + i * step).toFixed(1)},${(height - 2 - ((v - lo) / span) * (height - 4)).toFixed(1)}`
    )
    .join(' ');
}

/** Totals over all functions of the kernel. */
export interface ITotals {
  invocations: number;
  errors: number;
  cost: number;
  replicas: number;
  saving: number | null;
}

/** The session's cost budget (`nbs.config(budget=...)`), when one is set. */
export interface IBudget {
  limit: number;
  spent: number;
  /** 80 % of the budget or more is spent. */
  warn: boolean;
  /** The budget is spent: new calls raise BudgetExceededError. */
  exceeded: boolean;
}

/** A validated snapshot. */
export interface ISnapshot {
  version: number;
  time: number;
  cluster: IClusterSummary;
  functions: IFunctionStats[];
  totals: ITotals;
  budget: IBudget | null;
}

/** The budget line of the panel and status bar, or '' without a budget below 80 %. */
export function budgetText(b: IBudget | null): string {
  if (b === null || !b.warn) {
    return '';
  }
  const what = b.exceeded
    ? 'Budget spent: new calls are refused'
    : `${percent(b.spent / b.limit)} of the budget spent`;
  return `${what} (${money(b.spent)} of ${money(b.limit)}, estimate)`;
}

/** Result of parsing a comm message. */
export type ParseResult =
  { ok: true; snapshot: ISnapshot } | { ok: false; error: string };

/** A command the lab sends to the kernel. */
export type Command = 'scale_to_zero' | 'reset' | 'refresh';

/** The message for a command, per DESIGN.md. */
export function commandMessage(command: Command): {
  type: 'command';
  command: Command;
} {
  return { type: 'command', command };
}

/**
 * Parse and validate one kernel -> lab message.
 *
 * Unknown message types, other schema versions and malformed snapshots are rejected with a
 * reason; missing or non-finite numbers in an otherwise valid snapshot become 0 (counts) or
 * null (latencies, always-on figures). Functions with the same name are merged to one row
 * (the last wins), so the table never shows duplicates.
 */
export function parseSnapshot(data: unknown): ParseResult {
  if (!Private.isObject(data)) {
    return { ok: false, error: 'message is not an object' };
  }
  if (data.type !== 'snapshot') {
    return {
      ok: false,
      error: `unknown message type ${JSON.stringify(data.type)}`
    };
  }
  if (
    typeof data.version !== 'number' ||
    !SCHEMA_VERSIONS.includes(data.version)
  ) {
    return {
      ok: false,
      error: `unsupported snapshot version ${JSON.stringify(data.version)}`
    };
  }
  if (!Array.isArray(data.functions)) {
    return { ok: false, error: 'snapshot.functions is not a list' };
  }
  if (data.cluster !== undefined && !Private.isObject(data.cluster)) {
    return { ok: false, error: 'snapshot.cluster is not an object' };
  }
  if (data.totals !== undefined && !Private.isObject(data.totals)) {
    return { ok: false, error: 'snapshot.totals is not an object' };
  }
  const byName = new Map<string, IFunctionStats>();
  for (const raw of data.functions) {
    const f = Private.parseFunction(raw);
    if (f === null) {
      return { ok: false, error: 'a function entry has no name' };
    }
    byName.delete(f.name); // re-insert: keeps the kernel's order of last appearance
    byName.set(f.name, f);
  }
  const functions = Array.from(byName.values());
  const c = (data.cluster ?? {}) as Record<string, unknown>;
  const cluster: IClusterSummary = {
    address:
      typeof c.address === 'string' && c.address !== '' ? c.address : null,
    nodes: Private.count(c.nodes),
    cpus: Private.num(c.cpus) ?? 0,
    cpus_used: Private.num(c.cpus_used) ?? 0,
    gpus: Private.num(c.gpus) ?? 0,
    gpus_used: Private.num(c.gpus_used) ?? 0,
    worker_nodes: Private.countOrNull(c.worker_nodes),
    nodes_pending: Private.countOrNull(c.nodes_pending),
    nodes_peak: Private.countOrNull(c.nodes_peak),
    autoscaling: typeof c.autoscaling === 'boolean' ? c.autoscaling : null,
    node_cost: Private.num(c.node_cost),
    node_cost_always_on: Private.num(c.node_cost_always_on),
    node_history: Private.parseHistory(c.node_history)
  };
  const t = (data.totals ?? {}) as Record<string, unknown>;
  const alwaysOn = functions
    .map(f => f.always_on_cost)
    .filter((a): a is number => a !== null);
  const totals: ITotals = {
    invocations:
      Private.num(t.invocations) !== null
        ? Private.count(t.invocations)
        : functions.reduce((a, f) => a + f.invocations, 0),
    errors:
      Private.num(t.errors) !== null
        ? Private.count(t.errors)
        : functions.reduce((a, f) => a + f.errors, 0),
    cost: Private.num(t.cost) ?? functions.reduce((a, f) => a + f.cost, 0),
    replicas:
      Private.num(t.replicas) !== null
        ? Private.count(t.replicas)
        : functions.reduce((a, f) => a + f.replicas, 0),
    saving: null
  };
  totals.saving =
    Private.num(t.saving) ??
    (alwaysOn.length
      ? Private.savingOf(
          totals.cost,
          alwaysOn.reduce((a, b) => a + b, 0)
        )
      : null);
  return {
    ok: true,
    snapshot: {
      version: data.version,
      time: Private.num(data.time) ?? 0,
      cluster,
      functions,
      totals,
      budget: Private.parseBudget(data.budget)
    }
  };
}

/** An estimated cost in USD (the shared formatter, `format.ts`). */
export const formatCost = money;

/** A latency in ms: `0.800 ms`, `12.3 ms`, `1.06 s`; `–` for no data. */
export const formatMs = ms;

/** `73%` for a saving of 0.73 (negative: always-on would have been cheaper). */
export const formatSaving = percent;

/** `1,234` */
export const formatCount = count;

/** `3 / 8` for used / total resources (used to one decimal when fractional). */
export function formatUsed(used: number, total: number): string {
  const u = Number.isInteger(used) ? `${used}` : used.toFixed(1);
  const t = Number.isInteger(total) ? `${total}` : total.toFixed(1);
  return `${u} / ${t}`;
}

/** The states the panel can be in for the active notebook. */
export type LinkState =
  | 'no-notebook' // no notebook is open
  | 'no-kernel' // the notebook has no kernel (or it is starting)
  | 'dead' // the kernel died
  | 'not-loaded' // a kernel without `%load_ext nbserverless`
  | 'live'; // snapshots arrive

/** What the empty state says for each state but `live`. */
export function emptyMessage(state: LinkState): string {
  switch (state) {
    case 'no-notebook':
      return 'Open a notebook to see its serverless functions.';
    case 'no-kernel':
      return 'This notebook has no running kernel.';
    case 'dead':
      return 'The kernel of this notebook is dead. Restart it, then run %load_ext nbserverless.';
    case 'not-loaded':
      return 'nbserverless is not loaded in this kernel. Run %load_ext nbserverless in the notebook.';
    default:
      return '';
  }
}

/** The status bar text, e.g. `⚡ 2 replicas · $0.0031`. */
export function statusText(
  state: LinkState,
  snapshot: ISnapshot | null
): string {
  if (state !== 'live' || snapshot === null) {
    return '⚡ –';
  }
  const n = snapshot.totals.replicas;
  const warn = snapshot.budget?.warn ? ' ⚠' : '';
  return `⚡ ${n} ${n === 1 ? 'replica' : 'replicas'} · ${formatCost(
    snapshot.totals.cost
  )}${warn}`;
}

/** The status bar tooltip: says the cost is an estimate. */
export function statusTooltip(
  state: LinkState,
  snapshot: ISnapshot | null
): string {
  if (state !== 'live' || snapshot === null) {
    return `nbserverless: ${emptyMessage(state)} Click to open the Serverless panel.`;
  }
  const t = snapshot.totals;
  return (
    `nbserverless: ${t.replicas} replicas running, ${formatCount(
      t.invocations
    )} calls, ` +
    `estimated cost ${formatCost(t.cost)} (an estimate from the price table, not a bill). ` +
    (snapshot.budget?.warn ? `${budgetText(snapshot.budget)}. ` : '') +
    'Click to open the Serverless panel.'
  );
}

/**
 * Calls `fn` at most once per `intervalMs`: the first call runs at once, calls within the
 * interval are folded into one trailing call at its end, so the last state is always shown.
 */
export class Throttler {
  constructor(
    private readonly fn: () => void,
    private readonly intervalMs: number,
    private readonly clock: () => number = () => Date.now()
  ) {}

  /** Ask for a call. */
  invoke(): void {
    if (this._disposed) {
      return;
    }
    if (this._timer !== null) {
      return; // a trailing call is already scheduled
    }
    const wait = this._last + this.intervalMs - this.clock();
    if (wait <= 0) {
      this._run();
      return;
    }
    this._timer = setTimeout(() => {
      this._timer = null;
      this._run();
    }, wait);
  }

  /** Stop; a scheduled call is dropped. */
  dispose(): void {
    this._disposed = true;
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _run(): void {
    if (this._disposed) {
      return;
    }
    this._last = this.clock();
    this.fn();
  }

  private _last = -Infinity;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _disposed = false;
}

namespace Private {
  export function isObject(v: unknown): v is Record<string, unknown> {
    return typeof v === 'object' && v !== null && !Array.isArray(v);
  }

  /** A finite number or null. */
  export function num(v: unknown): number | null {
    return typeof v === 'number' && Number.isFinite(v) ? v : null;
  }

  /** `saving` = 1 − cost / always_on_cost (SPEC.md), or null when undefined. */
  export function savingOf(
    cost: number | null,
    alwaysOn: number | null
  ): number | null {
    if (cost === null || alwaysOn === null || alwaysOn <= 0) {
      return null;
    }
    return 1 - cost / alwaysOn;
  }

  export function parseBudget(raw: unknown): IBudget | null {
    if (!isObject(raw)) {
      return null;
    }
    const limit = num(raw.limit);
    if (limit === null || limit <= 0) {
      return null;
    }
    const spent = num(raw.spent) ?? 0;
    return {
      limit,
      spent,
      warn: raw.warn === true || spent >= 0.8 * limit,
      exceeded: raw.exceeded === true || spent >= limit
    };
  }

  /** A non-negative integer count, or null when absent or not a number. */
  export function countOrNull(v: unknown): number | null {
    return num(v) === null ? null : count(v);
  }

  /** `[[time, nodes], ...]` pairs of finite numbers; anything else is dropped. */
  export function parseHistory(raw: unknown): [number, number][] {
    if (!Array.isArray(raw)) {
      return [];
    }
    const out: [number, number][] = [];
    for (const p of raw) {
      if (Array.isArray(p) && p.length === 2) {
        const t = num(p[0]);
        const n = num(p[1]);
        if (t !== null && n !== null) {
          out.push([t, n]);
        }
      }
    }
    return out;
  }

  /** A non-negative integer count; anything else is 0. */
  export function count(v: unknown): number {
    const n = num(v);
    return n === null || n < 0 ? 0 : Math.round(n);
  }

  export function parseFunction(raw: unknown): IFunctionStats | null {
    if (!isObject(raw)) {
      return null;
    }
    const name = raw.name;
    if (typeof name !== 'string' || name === '') {
      return null;
    }
    return {
      name,
      kind: typeof raw.kind === 'string' ? raw.kind : 'function',
      invocations: count(raw.invocations),
      errors: count(raw.errors),
      retries: count(raw.retries),
      cold_starts: count(raw.cold_starts),
      cancellations: count(raw.cancellations),
      in_flight: count(raw.in_flight),
      queued: count(raw.queued),
      replicas: count(raw.replicas),
      peak_replicas: count(raw.peak_replicas),
      p50_ms: num(raw.p50_ms),
      p95_ms: num(raw.p95_ms),
      p99_ms: num(raw.p99_ms),
      exec_p50_ms: num(raw.exec_p50_ms),
      exec_p95_ms: num(raw.exec_p95_ms),
      cost: num(raw.cost) ?? 0,
      cost_idle: num(raw.cost_idle) ?? 0,
      always_on_cost: num(raw.always_on_cost),
      saving:
        num(raw.saving) ?? savingOf(num(raw.cost), num(raw.always_on_cost)),
      waiting_for_node: count(raw.waiting_for_node),
      waiting_for_node_s: Math.max(0, num(raw.waiting_for_node_s) ?? 0),
      keep_alive:
        typeof raw.keep_alive === 'string' && raw.keep_alive !== ''
          ? raw.keep_alive
          : null
    };
  }
}
