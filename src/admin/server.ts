// The admin HTTP server (fastify): token check before anything else, the route table, one error shape, OpenAPI.
import { readFileSync } from 'node:fs';
import swagger from '@fastify/swagger';
import { Ajv } from 'ajv';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { HostPort } from '../config.js';
import type { Logger } from '../logger.js';
import { bearerCheck } from './auth.js';
import type { AdminContext } from './context.js';
import { errorBody, notFound, toAdminError, unauthorized } from './errors.js';
import { routes } from './routes/index.js';
import { errorSchema } from './schemas.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Served without a token. */
    public?: boolean;
  }
}

/** Requests are small JSON documents; anything bigger is refused with 413 before it is read whole. */
const BODY_LIMIT = 64 * 1024;
const ERROR_STATUSES = [400, 401, 404, 409, 413, 415, 500, 503];

export interface AdminServer {
  readonly address: { host: string; port: number };
  readonly app: FastifyInstance;
  close(): Promise<void>;
}

export interface AdminServerOptions {
  listen: HostPort;
  token: string;
  context: AdminContext;
  log: Logger;
}

function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

export async function buildAdminApp(opts: Omit<AdminServerOptions, 'listen'>): Promise<FastifyInstance> {
  const log = opts.log.child({ component: 'admin' });
  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    // A line per request would drown the proxy's own; failures are logged by the error handler.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
  });
  // Unknown fields are an error to report, not something to drop quietly. Query strings and paths are text, so
  // their numbers and booleans are converted; a JSON body already has types, and a wrong one is an error
  // (a password of 12345678 must not quietly become "12345678").
  const strict = new Ajv({ coerceTypes: false, useDefaults: true, removeAdditional: false, allErrors: false });
  const lenient = new Ajv({ coerceTypes: 'array', useDefaults: true, removeAdditional: false, allErrors: false });
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? strict : lenient).compile(schema));
  // JSON only: a text/plain body gets 415 rather than a confusing validation error.
  app.removeContentTypeParser(['text/plain']);
  await app.register(swagger, {
    openapi: {
      info: { title: 'pgtenant admin API', version: packageVersion() },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  const authorized = bearerCheck(opts.token);
  app.addHook('onRequest', async (req) => {
    if (req.routeOptions.config.public) return;
    if (!authorized(req.headers.authorization)) throw unauthorized();
  });
  app.addHook('onResponse', async (req, reply) => {
    opts.context.metrics.adminRequests.inc({ route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });
  app.setErrorHandler(async (err, req, reply) => {
    const { error, internal } = toAdminError(err);
    if (internal) log.error({ err, method: req.method, url: req.url }, 'admin request failed');
    if (error.status === 401) void reply.header('www-authenticate', 'Bearer');
    return reply.code(error.status).send(errorBody(error));
  });
  app.setNotFoundHandler(async (req) => {
    throw notFound(`no route ${req.method} ${req.url.split('?')[0]}`);
  });

  const errors = Object.fromEntries(ERROR_STATUSES.map((s) => [s, errorSchema]));
  for (const route of routes(opts.context)) {
    app.route({
      method: route.method,
      url: route.url,
      config: { public: route.public === true },
      schema: {
        summary: route.summary,
        ...(route.public ? { security: [] } : {}),
        ...route.schema,
        response: { ...errors, ...route.schema.response },
      },
      handler: route.handler,
    });
  }
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}

export async function startAdminServer(opts: AdminServerOptions): Promise<AdminServer> {
  const app = await buildAdminApp(opts);
  await app.listen({ host: opts.listen.host, port: opts.listen.port });
  const bound = app.server.address() as { address: string; port: number };
  const address = { host: bound.address, port: bound.port };
  opts.log.info({ component: 'admin', listen: `${address.host}:${address.port}` }, 'admin API listening');
  return { address, app, close: () => app.close() };
}
