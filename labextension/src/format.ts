/**
 * The one number formatter of the panel and status bar: a line-by-line port of
 * `nbserverless/metering/format.py`. Both are tested against `tests/format_examples.json`.
 * Rules: never scientific notation; fixed significant digits; `–` for no data.
 */

/** A value that does not exist yet (not 0). */
export const NO_DATA = '–';
/** Significant digits of amounts below $1. */
export const MONEY_SIG = 2;
/** Below this (and above 0) money reads `<$0.000001`. */
export const MONEY_MIN = 0.000001;
/** Significant digits of latencies and durations. */
export const TIME_SIG = 3;

function missing(v: number | null | undefined): v is null | undefined {
  return (
    v === null ||
    v === undefined ||
    typeof v !== 'number' ||
    !Number.isFinite(v)
  );
}

/** `value` with `digits` significant digits in fixed notation: `sig(0.0000381, 2)` is `0.000038`. */
export function sig(value: number, digits: number): string {
  const a = Math.abs(value);
  if (a === 0) {
    return '0';
  }
  const exp = parseInt(a.toExponential(digits - 1).split('e')[1], 10);
  const decimals = Math.max(0, digits - 1 - exp);
  return value.toFixed(decimals);
}

function grouped(n: number, decimals: number): string {
  return n.toLocaleString('en-US', {
    minimumFractionDigits: decimals,
    maximumFractionDigits: decimals
  });
}

/** USD: `$0`, `<$0.000001`, `$0.000038`, `$0.12`, `$12.35`, `$1,234.50`. */
export function money(usd: number | null | undefined): string {
  if (missing(usd)) {
    return NO_DATA;
  }
  const sign = usd < 0 ? '-' : '';
  const a = Math.abs(usd);
  if (a === 0) {
    return '$0';
  }
  if (a < MONEY_MIN) {
    return `${sign}<$0.000001`;
  }
  if (a < 0.995) {
    return `${sign}$${sig(a, MONEY_SIG)}`;
  }
  return `${sign}$${grouped(a, 2)}`;
}

/** A duration in seconds: `0.250 s`, `12.3 s`, `1m05s`, `1h02m`. */
export function seconds(s: number | null | undefined): string {
  if (missing(s)) {
    return NO_DATA;
  }
  const v = Math.max(0, s);
  if (v < 59.95) {
    return `${sig(v, TIME_SIG)} s`;
  }
  const r = Math.round(v);
  const two = (n: number) => `${n}`.padStart(2, '0');
  if (r < 3600) {
    return `${Math.floor(r / 60)}m${two(r % 60)}s`;
  }
  return `${Math.floor(r / 3600)}h${two(Math.floor((r % 3600) / 60))}m`;
}

/** A latency in milliseconds: `800 µs`, `12.3 ms`, `1.06 s`. */
export function ms(value: number | null | undefined): string {
  if (missing(value)) {
    return NO_DATA;
  }
  const v = Math.max(0, value);
  if (v > 0 && v < 0.9995) {
    return `${sig(v * 1000, TIME_SIG)} µs`;
  }
  if (v < 999.5) {
    return `${sig(v, TIME_SIG)} ms`;
  }
  return seconds(v / 1000);
}

/** A count with thousands separators: `1,234`. */
export function count(n: number | null | undefined): string {
  if (missing(n)) {
    return NO_DATA;
  }
  return grouped(Math.round(n), 0);
}

/** `0.734` is `73%`; under 10 %, one decimal: `5.3%`. */
export function percent(fraction: number | null | undefined): string {
  if (missing(fraction)) {
    return NO_DATA;
  }
  const p = fraction * 100;
  return `${Math.abs(p) >= 9.95 ? p.toFixed(0) : p.toFixed(1)}%`;
}
