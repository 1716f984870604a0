// Liveness, readiness and the Prometheus scrape.
import type { AdminContext, AdminRoute } from '../context.js';

const status = { type: 'object', properties: { status: { type: 'string' } }, required: ['status'] };

export const healthRoutes = (ctx: AdminContext): AdminRoute[] => [
  {
    method: 'GET',
    url: '/healthz',
    summary: 'The process is up (no token needed)',
    public: true,
    schema: { response: { 200: status } },
    handler: async () => ({ status: 'ok' }),
  },
  {
    method: 'GET',
    url: '/readyz',
    summary: 'Ready for clients: 503 while the upstream is unreachable or the proxy shuts down',
    schema: { response: { 200: status } },
    handler: async () => {
      await ctx.ready();
      return { status: 'ready' };
    },
  },
  {
    method: 'GET',
    url: '/metrics',
    summary: 'Prometheus metrics (text exposition format)',
    schema: { response: { 200: { type: 'string' } } },
    handler: async (_req, reply) => {
      const { contentType, body } = await ctx.metrics.scrape();
      return reply.type(contentType).send(body);
    },
  },
];
