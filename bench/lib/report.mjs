// The results tables printed at the end of a benchmark and the JSON written to bench/results/.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

const fmt = {
  tps: (r) => (r?.tps != null ? r.tps.toFixed(0) : r?.error ? 'error' : '-'),
  lat: (r) => (r?.latencyMs != null ? r.latencyMs.toFixed(3) : '-'),
  ratio: (x) => (x != null ? x.toFixed(2) : '-'),
};

/** pgtenant TPS divided by another target's, or null when either is missing. */
export function ratio(row, over) {
  const a = row.targets.pgtenant?.tps;
  const b = row.targets[over]?.tps;
  return a != null && b ? a / b : null;
}

/** A plain-text table: one line per workload, TPS and latency per target, then the ratios. */
export function formatTable(rows, targetNames) {
  const header = ['workload', 'clients'];
  for (const t of targetNames) header.push(`${t} tps`, `${t} ms`);
  header.push('pgtenant/pgbouncer', 'pgtenant/direct');
  const lines = rows.map((row) => {
    const cells = [row.workload, String(row.clients)];
    for (const t of targetNames) cells.push(fmt.tps(row.targets[t]), fmt.lat(row.targets[t]));
    cells.push(fmt.ratio(row.ratios.pgtenantOverPgbouncer), fmt.ratio(row.ratios.pgtenantOverDirect));
    return cells;
  });
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
