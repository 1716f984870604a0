// Live connections of this instance by tenant, and ending a tenant's sessions on every instance.
import type { AdminContext, AdminRoute } from '../context.js';
import { idParams, tenantConnections } from '../schemas.js';

export const connectionRoutes = (ctx: AdminContext): AdminRoute[] => [
  {
    method: 'GET',
    url: '/v1/connections',
    summary: "Client and server connections of this instance, by tenant and state",
    schema: {
      response: {
        200: {
          type: 'object',
          required: ['clients', 'servers', 'tenants'],
          properties: { clients: { type: 'integer' }, servers: { type: 'integer' }, tenants: { type: 'array', items: tenantConnections } },
        },
      },
    },
    handler: async () => {
      const tenants = (await ctx.proxy.connections()).sort((a, b) => (a.tenant ?? '').localeCompare(b.tenant ?? ''));
      const sum = (counts: Record<string, number>) => Object.values(counts).reduce((a, b) => a + b, 0);
      return {
        clients: tenants.reduce((n, t) => n + sum(t.clients), 0),
        servers: tenants.reduce((n, t) => n + sum(t.servers), 0),
        tenants,
      };
    },
  },
  {
    method: 'POST',
    url: '/v1/tenants/:id/disconnect',
    summary: "End a tenant's open sessions (57P01) here at once, and on every other instance through NOTIFY",
    schema: {
      params: idParams,
      response: {
        200: {
          type: 'object',
          required: ['tenant', 'disconnected'],
          properties: { tenant: { type: 'string' }, disconnected: { type: 'integer', description: 'Sessions ended on this instance' } },
        },
      },
    },
    handler: async (req) => {
      const { id } = req.params as { id: string };
      await ctx.tenants.get(id); // 404 before anything is ended
      // Count here first: this proxy hears its own NOTIFY too, and may have ended them before the reply counted.
      const disconnected = await ctx.proxy.disconnectTenant(id, `an administrator disconnected tenant "${id}"`);
      await ctx.tenants.disconnect(id);
      return { tenant: id, disconnected };
    },
  },
];
