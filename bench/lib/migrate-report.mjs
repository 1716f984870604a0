// Medians and the results table of the migration benchmark, in the style of the pgbench report.
import { median, renderTable } from './report.mjs';

export { median };

/** Fills in each row's medians, tenants/s and ratios against the naive loop (the first row). */
export function summarise(rows) {
  for (const row of rows) {
    row.seconds = median(row.runs.map((r) => r.seconds));
    row.noopSeconds = median(row.runs.map((r) => r.noopSeconds));
    row.tenantsPerSecond = row.seconds ? row.tenants / row.seconds : null;
  }
  const naive = rows.find((r) => r.method === 'naive loop');
  for (const row of rows) {
    row.ratioVsNaive = naive?.tenantsPerSecond && row.tenantsPerSecond ? row.tenantsPerSecond / naive.tenantsPerSecond : null;
    row.noopSpeedupVsNaive = row !== naive && naive?.noopSeconds && row.noopSeconds ? naive.noopSeconds / row.noopSeconds : null;
  }
  return rows;
}

const num = (x, digits) => (x != null ? x.toFixed(digits) : '-');

/** One line per method: migration wall time and rate, ratio to the naive loop, then the no-op pass (speedup: naive s / this s). */
export function formatMigrateTable(rows) {
  const header = ['method', 'concurrency', 'tenants', 'seconds', 'tenants/s', 'vs naive', 'no-op s', 'no-op speedup'];
  const lines = rows.map((row) => {
    if (row.error) return [row.method, String(row.concurrency ?? '-'), String(row.tenants), 'error', '-', '-', '-', '-'];
    return [
      row.method,
      String(row.concurrency ?? '-'),
      String(row.tenants),
      num(row.seconds, 2),
      num(row.tenantsPerSecond, 0),
      row.ratioVsNaive != null ? `${row.ratioVsNaive.toFixed(2)}x` : '-',
      num(row.noopSeconds, 2),
      row.noopSpeedupVsNaive != null ? `${row.noopSpeedupVsNaive.toFixed(2)}x` : '-',
    ];
  });
  return renderTable(header, lines);
}
