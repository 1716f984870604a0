// The fuzz suites' budget: PGTENANT_FUZZ_RUNS multiplies the number of cases, PGTENANT_FUZZ_SEED replays a run.

function envNumber(name: string): number | null {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return null;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(raw)}`);
  return n;
}

export const FUZZ_MULTIPLIER = Math.max(envNumber('PGTENANT_FUZZ_RUNS') ?? 1, 0.01);
export const FUZZ_SEED = envNumber('PGTENANT_FUZZ_SEED') ?? (Math.random() * 2 ** 31) | 0;

/** fast-check parameters for a property worth `base` cases at the default budget. */
export const fuzzRuns = (base: number): { numRuns: number; seed: number } => ({
  numRuns: Math.max(1, Math.round(base * FUZZ_MULTIPLIER)),
  seed: FUZZ_SEED,
});
