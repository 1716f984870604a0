// `npm run bench:framer`: the hot-path framers alone (no sockets): nanoseconds and heap bytes per chunk of pgbench-like traffic.
import { performance } from 'node:perf_hooks';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { renderTable } from './lib/report.mjs';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const load = (path) => import(pathToFileURL(join(repoRoot, 'dist', path)).href);
const { HeaderScanner } = await load('proxy/protocol/scanner.js');
const { ClientStream } = await load('proxy/client-stream.js');
const { ServerStream } = await load('proxy/server-stream.js');
const { ServerAnswers } = await load('proxy/server-answers.js');
const { BackendStatements } = await load('proxy/upstream.js');

/** A message: type letter, Int32 length (itself included), body. */
function msg(type, ...body) {
  const b = Buffer.concat(body.map((x) => (typeof x === 'string' ? Buffer.from(x, 'latin1') : x)));
  const out = Buffer.alloc(5 + b.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}
const int16 = (n) => Buffer.from([n >> 8, n & 0xff]);
const int32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const SQL = 'SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0';
const aid = '71842';
// What pgbench -S sends and gets back per transaction, one chunk each way.
const rowDescription = msg('T', int16(1), 'abalance\0', int32(16404), int16(3), int32(23), int16(4), int32(-1), int16(0));
const dataRow = msg('D', int16(1), int32(4), '-617');
const answer = [rowDescription, dataRow, msg('C', 'SELECT 1\0'), msg('Z', 'I')];
const traffic = {
  'simple (Query)': {
    client: msg('Q', SQL.replace('$1', aid)),
    server: Buffer.concat(answer),
  },
  'extended, unnamed statement': {
    client: Buffer.concat([msg('P', '\0', SQL, int16(0)), msg('B', '\0\0', int16(0), int16(1), int32(aid.length), aid, int16(0)), msg('D', 'P\0'), msg('E', '\0', int32(0)), msg('S')]),
    server: Buffer.concat([msg('1'), msg('2'), ...answer]),
  },
  'extended, prepared (Bind of a named statement)': {
    client: Buffer.concat([msg('B', '\0P0_1\0', int16(0), int16(1), int32(aid.length), aid, int16(0)), msg('E', '\0', int32(0)), msg('S')]),
    server: Buffer.concat([msg('2'), dataRow, msg('C', 'SELECT 1\0'), msg('Z', 'I')]),
    prepare: msg('P', 'P0_1\0', SQL, int16(0)),
  },
};

/** Median ns per call and heap bytes per call of `fn`, over batches (a batch in which a GC ran is not counted for bytes). */
function measure(fn, { batches = 30, perBatch = 20_000 } = {}) {
  for (let i = 0; i < perBatch * 5; i++) fn(); // warm up: optimised code is what runs in the proxy
  const ns = [];
  const bytes = [];
  for (let b = 0; b < batches; b++) {
    const heapBefore = process.memoryUsage().heapUsed;
    const t0 = performance.now();
    for (let i = 0; i < perBatch; i++) fn();
    const t1 = performance.now();
    const grew = process.memoryUsage().heapUsed - heapBefore;
    ns.push(((t1 - t0) * 1e6) / perBatch);
    if (grew >= 0) bytes.push(grew / perBatch);
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return { ns: median(ns), bytes: bytes.length ? median(bytes) : NaN };
}

const rows = [];
for (const [name, t] of Object.entries(traffic)) {
  const answers = new ServerAnswers();
  const client = new ClientStream(answers);
  const server = new ServerStream(answers);
  const statements = new BackendStatements();
  if (t.prepare) {
    // The named statement exists on the client and on this backend, as in a steady pgbench -M prepared run.
    client.process(t.prepare, statements.names);
    server.process(Buffer.concat([msg('3'), msg('1')]), statements);
    server.process(msg('1'), statements);
  }
  const tx = () => {
    client.process(t.client, statements.names);
    server.process(t.server, statements);
  };
  const scanners = [new HeaderScanner('frontend'), new HeaderScanner('backend')];
  const session = () => {
    scanners[0].scan(t.client);
    scanners[1].scan(t.server);
  };
  const messages = (buf) => {
    let n = 0;
    for (let i = 0; i < buf.length; i += 1 + buf.readInt32BE(i + 1)) n++;
    return n;
  };
  const perTx = messages(t.client) + messages(t.server);
  for (const [mode, fn] of [['session (HeaderScanner)', session], ['transaction (ClientStream + ServerStream)', tx]]) {
    const r = measure(fn);
    rows.push([name, mode, String(perTx), r.ns.toFixed(0), (r.ns / perTx).toFixed(1), Number.isNaN(r.bytes) ? '-' : r.bytes.toFixed(0)]);
  }
}
process.stdout.write(
  'One transaction = one client chunk and one server chunk, as pgbench -S sends them; medians of 30 batches.\n' +
    renderTable(['traffic', 'framer', 'messages', 'ns/tx', 'ns/message', 'heap bytes/tx'], rows, 2) +
    '\n',
);
