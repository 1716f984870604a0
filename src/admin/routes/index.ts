// The route table: every admin route, in the order the OpenAPI document lists them.
import type { AdminContext, AdminRoute } from '../context.js';
import { connectionRoutes } from './connections.js';
import { healthRoutes } from './health.js';
import { migrationRoutes } from './migrations.js';
import { tenantRoutes } from './tenants.js';

export const routes = (ctx: AdminContext): AdminRoute[] => [...healthRoutes(ctx), ...tenantRoutes(ctx), ...connectionRoutes(ctx), ...migrationRoutes(ctx)];
