// Migration jobs over HTTP: start one, follow its progress, and the status of every tenant.
import type { AdminContext, AdminRoute } from '../context.js';
import { notFound } from '../errors.js';
import { migrationJob, migrationStatus, tenantId } from '../schemas.js';

export const migrationRoutes = (ctx: AdminContext): AdminRoute[] => [
  {
    method: 'POST',
    url: '/v1/migrations',
    summary: 'Start a migration job (all tenants, or those named); one job runs at a time per instance',
    schema: {
      body: {
        type: 'object',
        additionalProperties: false,
        properties: {
          tenants: { type: 'array', items: tenantId, minItems: 1, maxItems: 10000 },
          concurrency: { type: 'integer', minimum: 1, maximum: 64 },
        },
      },
      response: { 202: migrationJob },
    },
    handler: async (req, reply) => {
      const body = (req.body ?? {}) as { tenants?: string[]; concurrency?: number };
      const job = await ctx.migrations.start(body);
      return reply.code(202).header('location', `/v1/migrations/${job.id}`).send(job);
    },
  },
  {
    method: 'GET',
    url: '/v1/migrations/status',
    summary: 'Where every tenant and the shared schema stand against the migration files',
    schema: { response: { 200: migrationStatus } },
    handler: async () => ctx.migrations.status(),
  },
  {
    method: 'GET',
    url: '/v1/migrations/:job',
    summary: 'A migration job: state, progress and per-tenant results',
    schema: {
      params: { type: 'object', required: ['job'], properties: { job: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,32}$' } } },
      response: { 200: migrationJob },
    },
    handler: async (req) => {
      const { job } = req.params as { job: string };
      const found = ctx.migrations.get(job);
      if (!found) throw notFound(`no migration job '${job}' on this instance (finished jobs are kept for a while, not across restarts)`);
      return found;
    },
  },
];
