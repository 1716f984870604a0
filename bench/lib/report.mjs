// The results tables printed at the end of a benchmark and the JSON written to bench/results/.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

const fmt = {
  tps: (r) => (r?.tps != null ? r.tps.toFixed(0) : r?.error ? 'error' : '-'),
  ratio: (x) => (x != null ? x.toFixed(2) : '-'),
};

/** The median of the values that are not null or undefined; null when there are none. */
export function median(values) {
  const xs = values.filter((v) => v != null).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const mid = Math.floor(xs.length / 2);
  return xs.length % 2 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2;
}

/** A whole number from the environment, within bounds, or the fallback when unset. */
export function wholeNumberFromEnv(name, fallback, min, max) {
  const raw = process.env[name] ?? String(fallback);
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be a whole number from ${min} to ${max}, got '${raw}'`);
  return n;
}

/** One target's TPS divided by another's, or null when either is missing. */
export function ratio(row, a, b) {
  const x = row.targets[a]?.tps;
  const y = row.targets[b]?.tps;
  return x != null && y ? x / y : null;
}

/** A plain-text table: one line per workload, TPS per target, then the named ratios (row.ratios keys). */
export function formatTable(rows, targetNames, ratioNames) {
  const header = ['workload', 'clients', ...targetNames, ...ratioNames];
  const lines = rows.map((row) => [
    row.workload,
    String(row.clients),
    ...targetNames.map((t) => fmt.tps(row.targets[t])),
    ...ratioNames.map((r) => fmt.ratio(row.ratios[r])),
  ]);
  return renderTable(header, lines);
}

/** Header, a rule and the lines; the first `leftColumns` columns align left, the rest (numbers) right. */
export function renderTable(header, lines, leftColumns = 1) {
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const render = (cells) => cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [render(header), widths.map((w) => '-'.repeat(w)).join('  '), ...lines.map(render)].join('\n');
}

export function writeJson(path, data) {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(data, null, 2) + '\n');
}
