// `pgtenant proxy` as a process: the admin API comes up beside the proxy, with a generated token on loopback, and SIGTERM stops both.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type pg from 'pg';
import { bin, type TestDatabase } from '../support/db.js';
import { initializedDatabase } from '../support/proxy.js';

let db: TestDatabase;
let admin: pg.Pool;

beforeAll(async () => {
  ({ db, admin } = await initializedDatabase());
});

afterAll(async () => {
  await admin?.end();
  await db?.drop();
});

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

it('serves the admin API with a generated token that is logged once, and exits 0 on SIGTERM', async () => {
  const adminPort = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PGTENANT_') && k !== 'DATABASE_URL'));
  const child = spawn(process.execPath, [bin(), 'proxy', '--upstream', db.url, '--listen', '127.0.0.1:0', '--admin-listen', `127.0.0.1:${adminPort}`], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    const token = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no token logged within 10 s:\n${stderr}`)), 10_000);
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString('utf8');
        const line = stderr.split('\n').find((l) => l.includes('"adminToken"'));
        if (line && stderr.includes('admin API listening')) {
          clearTimeout(timer);
          resolve(JSON.parse(line).adminToken as string);
        }
      });
    });
    const base = `http://127.0.0.1:${adminPort}`;
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    expect((await fetch(`${base}/v1/tenants`)).status).toBe(401);
    const listed = await fetch(`${base}/v1/tenants`, { headers: { authorization: `Bearer ${token}` } });
    expect(listed.status).toBe(200);
    expect(await listed.json()).toEqual({ tenants: [], next: null });
    // Logged once: the token appears in exactly one line.
    expect(stderr.split('\n').filter((l) => l.includes(token))).toHaveLength(1);
  } finally {
    child.kill('SIGTERM');
  }
  expect(await exited).toBe(0);
  await expect(fetch(`http://127.0.0.1:${adminPort}/healthz`)).rejects.toThrow();
});
