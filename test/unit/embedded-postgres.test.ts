// Re-creating the binaries' library symlinks that npm skips when install scripts are blocked.
import { mkdir, mkdtemp, readlink, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { hydrateSymlinks } from '../../src/embedded-postgres.js';

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

it('creates missing relative links from native/pg-symlinks.json and leaves existing ones alone', async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'pgtenant-hydrate-'));
  await mkdir(path.join(dir, 'native', 'lib'), { recursive: true });
  await writeFile(path.join(dir, 'native', 'lib', 'libpq.so.5.17'), 'lib');
  await writeFile(path.join(dir, 'native', 'lib', 'libpq.so'), 'a real file stays');
  const links = [
    { source: 'native/lib/libpq.so.5.17', target: 'native/lib/libpq.so.5' },
    { source: 'native/lib/libpq.so.5.17', target: 'native/lib/libpq.so' },
  ];
  await writeFile(path.join(dir, 'native', 'pg-symlinks.json'), JSON.stringify(links));
  await hydrateSymlinks(dir);
  await hydrateSymlinks(dir);
  expect(await readlink(path.join(dir, 'native', 'lib', 'libpq.so.5'))).toBe('libpq.so.5.17');
  expect(await readFile(path.join(dir, 'native', 'lib', 'libpq.so.5'), 'utf8')).toBe('lib');
  expect(await readFile(path.join(dir, 'native', 'lib', 'libpq.so'), 'utf8')).toBe('a real file stays');
});
