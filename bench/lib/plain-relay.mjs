// A plain Node.js TCP relay (pipe both ways, nothing parsed): pgtenant's forwarding without routing, for the routing-cost row.
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { freePort, startChild, stopChild, waitForPort } from './processes.mjs';

/** Relays every connection on `listenPort` to PostgreSQL on `serverPort`, one server connection per client. */
function relay(listenPort, serverPort) {
  net
    .createServer({ noDelay: true }, (client) => {
      const server = net.connect({ host: '127.0.0.1', port: serverPort, noDelay: true });
      client.pipe(server);
      server.pipe(client);
      const end = () => {
        client.destroy();
        server.destroy();
      };
      client.on('error', end).on('close', end);
      server.on('error', end).on('close', end);
    })
    .listen(listenPort, '127.0.0.1');
}

/** Starts the relay as a child process, like the other targets. */
export async function startPlainRelay(serverPort) {
  const port = await freePort();
  const child = startChild(process.execPath, [fileURLToPath(import.meta.url), String(port), String(serverPort)]);
  try {
    await waitForPort(port, child);
  } catch (err) {
    await stopChild(child);
    throw err;
  }
  return { port, child };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) relay(Number(process.argv[2]), Number(process.argv[3]));
