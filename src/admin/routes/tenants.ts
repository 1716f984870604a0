// Tenant lifecycle over HTTP: the same TenantService as `pgtenant tenants`.
import { emptyConnections } from '../../proxy/activity.js';
import { MAX_POOL_SIZE, MAX_TENANT_CLIENTS } from '../../tenants/service.js';
import type { TenantState } from '../../tenants/types.js';
import type { AdminContext, AdminRoute } from '../context.js';
import { badRequest } from '../errors.js';
import { idParams, tenant, tenantDetails, tenantId } from '../schemas.js';

const MAX_PAGE = 1000;

export const tenantRoutes = (ctx: AdminContext): AdminRoute[] => [
  {
    method: 'GET',
    url: '/v1/tenants',
    summary: 'List tenants in id order, a page at a time (pass `next` back as `after`)',
    schema: {
      querystring: {
        type: 'object',
        additionalProperties: false,
        properties: {
          limit: { type: 'integer', minimum: 1, maximum: MAX_PAGE, default: 100 },
          after: tenantId,
          state: { type: 'string', enum: ['active', 'suspended'] },
        },
      },
      response: {
        200: {
          type: 'object',
          required: ['tenants', 'next'],
          properties: { tenants: { type: 'array', items: tenant }, next: { type: ['string', 'null'] } },
        },
      },
    },
    handler: async (req) => {
      const q = req.query as { limit: number; after?: string; state?: TenantState };
      // One extra row tells whether another page follows.
      const rows = await ctx.tenants.list({ limit: q.limit + 1, ...(q.after ? { after: q.after } : {}), ...(q.state ? { state: q.state } : {}) });
      const page = rows.slice(0, q.limit);
      return { tenants: page, next: rows.length > q.limit ? page.at(-1)!.id : null };
    },
  },
  {
    method: 'POST',
    url: '/v1/tenants',
    summary: 'Create a tenant (role, schema, registry row) and apply the tenant migrations',
    schema: {
      body: {
        type: 'object',
        required: ['id'],
        additionalProperties: false,
        properties: {
          id: tenantId,
          password: { type: 'string', minLength: 8, maxLength: 1024, description: 'Role isolation only; generated and returned once when absent' },
        },
      },
      response: {
        201: {
          type: 'object',
          required: ['tenant', 'password', 'migrationsApplied'],
          properties: { tenant, password: { type: ['string', 'null'], description: 'The generated password, shown this once' }, migrationsApplied: { type: 'integer' } },
        },
      },
    },
    handler: async (req, reply) => {
      const body = req.body as { id: string; password?: string };
      const created = await ctx.tenants.create(body.id, body.password === undefined ? {} : { password: body.password });
      return reply.code(201).header('location', `/v1/tenants/${created.tenant.id}`).send(created);
    },
  },
  {
    method: 'GET',
    url: '/v1/tenants/:id',
    summary: "A tenant with its schema version and this instance's live connections",
    schema: { params: idParams, response: { 200: tenantDetails } },
    handler: async (req) => {
      const { id } = req.params as { id: string };
      const details = await ctx.tenants.details(id);
      const live = (await ctx.proxy.connections()).find((c) => c.tenant === id) ?? emptyConnections(id);
      return { ...details, connections: { clients: live.clients, servers: live.servers } };
    },
  },
  {
    method: 'PATCH',
    url: '/v1/tenants/:id',
    summary: "Suspend (new sessions refused at once; ?disconnect=true also ends open ones) or resume a tenant, or set its pool size or client cap",
    schema: {
      params: idParams,
      querystring: { type: 'object', additionalProperties: false, properties: { disconnect: { type: 'boolean', default: false } } },
      body: {
        type: 'object',
        minProperties: 1,
        additionalProperties: false,
        properties: {
          state: { type: 'string', enum: ['active', 'suspended'] },
          poolSize: { type: ['integer', 'null'], minimum: 1, maximum: MAX_POOL_SIZE, description: "null: back to the proxy's --pool-size" },
          maxClients: { type: ['integer', 'null'], minimum: 0, maximum: MAX_TENANT_CLIENTS, description: "0: no cap; null: back to the proxy's --max-tenant-clients" },
        },
      },
      response: { 200: tenant },
    },
    handler: async (req) => {
      const { id } = req.params as { id: string };
      const { state, poolSize, maxClients } = req.body as { state?: TenantState; poolSize?: number | null; maxClients?: number | null };
      const { disconnect } = req.query as { disconnect: boolean };
      let record = poolSize === undefined ? null : await ctx.tenants.setPoolSize(id, poolSize);
      if (maxClients !== undefined) record = await ctx.tenants.setMaxClients(id, maxClients);
      if (state) record = state === 'active' ? await ctx.tenants.resume(id) : await ctx.tenants.suspend(id, { disconnect });
      return record;
    },
  },
  {
    method: 'DELETE',
    url: '/v1/tenants/:id',
    summary: 'Drop a tenant: ends its sessions, then drops schema, role and rows in one transaction (?confirm={id} required)',
    schema: {
      params: idParams,
      querystring: { type: 'object', additionalProperties: false, properties: { confirm: { type: 'string' } } },
      response: { 200: { type: 'object', required: ['id', 'dropped'], properties: { id: { type: 'string' }, dropped: { type: 'boolean' } } } },
    },
    handler: async (req) => {
      const { id } = req.params as { id: string };
      const { confirm } = req.query as { confirm?: string };
      if (confirm !== id) {
        throw badRequest('confirmation_required', `dropping deletes the tenant's data for good: repeat its id as ?confirm=${id}`, 'confirm');
      }
      await ctx.tenants.drop(id);
      return { id, dropped: true };
    },
  },
];
