// vitest globalSetup: one PostgreSQL server per test run (existing URL, testcontainers image, or embedded), provided as pgAdminUrl.
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { startEmbeddedPostgres } from '../../src/embedded-postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Superuser URL of the test server (database `postgres` or the one given). */
    pgAdminUrl: string;
  }
}

type Teardown = () => Promise<void>;

async function fromImage(image: string): Promise<{ url: string; stop: Teardown }> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const password = 'pgtenant-test';
  const container = await new GenericContainer(image)
    .withEnvironment({
      POSTGRES_PASSWORD: password,
      POSTGRES_HOST_AUTH_METHOD: 'scram-sha-256',
      POSTGRES_INITDB_ARGS: '--auth=scram-sha-256',
    })
    .withCommand(['postgres', '-c', 'max_connections=300', '-c', 'fsync=off'])
    .withExposedPorts(5432)
    // The entrypoint starts a temporary server for init scripts first; the second message is the real one.
    .withWaitStrategy(Wait.forLogMessage(/database system is ready to accept connections/, 2))
    .start();
  const url = `postgres://postgres:${password}@${container.getHost()}:${container.getMappedPort(5432)}/postgres`;
  return { url, stop: async () => void (await container.stop()) };
}

async function embedded(): Promise<{ url: string; stop: Teardown }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'pgtenant-test-'));
  // As root the server runs as user postgres, which must reach the data dir inside this folder.
  await chmod(dir, 0o755);
  const server = await startEmbeddedPostgres({ dataDir: path.join(dir, 'data'), persistent: false });
  return {
    url: server.url,
    stop: async () => {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export default async function setup(project: TestProject): Promise<Teardown> {
  const existing = process.env.PGTENANT_TEST_DATABASE_URL;
  const image = process.env.PGTENANT_TEST_IMAGE;
  const server = existing
    ? { url: existing, stop: async () => undefined }
    : image
      ? await fromImage(image)
      : await embedded();
  project.provide('pgAdminUrl', server.url);
  return server.stop;
}
