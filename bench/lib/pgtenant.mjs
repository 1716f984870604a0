// The pgtenant proxy as a child process (session or transaction mode, one or more workers), with the admin API off and quiet logs.
import { join } from 'node:path';
import { freePort, startChild, stopChild, waitForPort } from './processes.mjs';

/** Starts `pgtenant proxy`; on failure the error carries the proxy's own stderr. */
export async function startProxy(repoRoot, upstreamUrl, { poolMode = 'session', poolSize = 30, workers = 1, extraArgs = [] } = {}) {
  const port = await freePort();
  const args = [
    join(repoRoot, 'bin', 'pgtenant.js'),
    'proxy',
    '--upstream', upstreamUrl,
    '--listen', `127.0.0.1:${port}`,
    '--admin-listen', 'off',
    '--pool-mode', poolMode,
    '--pool-size', String(poolSize),
    '--workers', String(workers),
    '--log-level', 'warn',
    ...extraArgs,
  ];
  const child = startChild(process.execPath, args, { cwd: repoRoot });
  try {
    await waitForPort(port, child);
  } catch (err) {
    await stopChild(child);
    const detail = child.output.text.trim().split('\n').slice(-15).join('\n');
    throw new Error(`pgtenant proxy ${err.message}${detail ? `; its output:\n${detail}` : ' (no output)'}`);
  }
  return { port, child };
}
