// PgBouncer as the reference pooler (session or transaction mode): found or installed, configured in a temp dir, run in the foreground.
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findExecutable } from './pgbench.mjs';
import { freePort, onCleanup, runCommand, startChild, stopChild, waitForPort } from './processes.mjs';

const isRoot = process.getuid?.() === 0;

/** Installs Debian's pgbouncer package, keeping its packaged daemon from starting (it would take port 6432). */
async function aptInstall(log) {
  log('pgbouncer is not on PATH; installing the Debian package (apt-get install -y pgbouncer)...');
  const policy = '/usr/sbin/policy-rc.d';
  const ownPolicy = !existsSync(policy);
  if (ownPolicy) writeFileSync(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  try {
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    for (const args of [['update'], ['install', '-y', '--no-install-recommends', 'pgbouncer']]) {
      const r = await runCommand('apt-get', args, { env, timeoutMs: 300_000 });
      if (r.code !== 0) throw new Error(`apt-get ${args[0]} failed: ${r.stderr.trim().split('\n').slice(-3).join(' ')}`);
    }
  } finally {
    if (ownPolicy) rmSync(policy, { force: true });
  }
}

/** The pgbouncer binary, installing it when root; null (after saying why) when it is not available. */
export async function ensurePgbouncer(log) {
  const found = findExecutable('pgbouncer') ?? (existsSync('/usr/sbin/pgbouncer') ? '/usr/sbin/pgbouncer' : null);
  if (found) return found;
  if (!isRoot) {
    log('pgbouncer is not installed and this is not root: skipping the PgBouncer column (apt-get install pgbouncer).');
    return null;
  }
  try {
    await aptInstall(log);
  } catch (err) {
    log(`could not install pgbouncer (${err.message}): skipping the PgBouncer column.`);
    return null;
  }
  return findExecutable('pgbouncer') ?? (existsSync('/usr/sbin/pgbouncer') ? '/usr/sbin/pgbouncer' : null);
}

/** pgbouncer will not run as root: the system user it drops to, with its uid/gid for file ownership. */
function unprivilegedUser() {
  for (const name of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }));
      const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }));
      return { name, uid, gid };
    } catch {
      // try the next candidate
    }
  }
  throw new Error("running as root and neither a 'postgres' nor a 'nobody' user exists for pgbouncer -u");
}

export function pgbouncerVersion(bin) {
  try {
    return execFileSync(bin, ['--version'], { encoding: 'utf8' }).split('\n')[0].trim();
  } catch {
    return null;
  }
}

/** Starts pgbouncer in front of the server; resolves with its port once it accepts connections. */
export async function startPgbouncer(bin, { serverPort, user, password, poolMode = 'session', poolSize = 30, maxClientConn = 400 }) {
  const dir = mkdtempSync(join(tmpdir(), 'pgtenant-bench-pgbouncer-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const logfile = join(dir, 'pgbouncer.log');
  const ini = join(dir, 'pgbouncer.ini');
  const userlist = join(dir, 'userlist.txt');
  const quote = (s) => `"${s.replace(/"/g, '""')}"`;
  writeFileSync(userlist, `${quote(user)} ${quote(password)}\n`, { mode: 0o600 });
  writeFileSync(
    ini,
    [
      '[databases]',
      `* = host=127.0.0.1 port=${serverPort}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${userlist}`,
      `pool_mode = ${poolMode}`,
      `max_client_conn = ${maxClientConn}`,
      `default_pool_size = ${poolSize}`,
      'server_tls_sslmode = disable',
      'client_tls_sslmode = disable',
      'log_connections = 0',
      'log_disconnections = 0',
      `logfile = ${logfile}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const args = ['-q'];
  if (isRoot) {
    const u = unprivilegedUser();
    for (const p of [dir, ini, userlist]) chownSync(p, u.uid, u.gid);
    args.push('-u', u.name);
  }
  args.push(ini);
  const child = startChild(bin, args);
  try {
    await waitForPort(port, child);
  } catch (err) {
    await stopChild(child);
    const logged = existsSync(logfile) ? readFileSync(logfile, 'utf8') : '';
    const detail = (child.output.text + logged).trim().split('\n').slice(-10).join('\n');
    throw new Error(`pgbouncer ${err.message}\n${detail}`);
  }
  return { port, child };
}
