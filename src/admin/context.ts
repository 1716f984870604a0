// What admin routes are given to work with, and the shape of a route: the route table is data over these.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ProxyControl } from '../proxy/activity.js';
import type { TenantService } from '../tenants/service.js';
import type { Metrics } from './metrics.js';
import type { MigrationService } from './migrations.js';

export interface AdminContext {
  readonly tenants: TenantService;
  /** The proxy whose sessions the connection routes report and end. */
  readonly proxy: ProxyControl;
  readonly migrations: MigrationService;
  readonly metrics: Metrics;
  /** Resolves when the upstream answers and the proxy is not shutting down; rejects with an AdminError otherwise. */
  ready(): Promise<void>;
}

export interface RouteSchema {
  params?: unknown;
  querystring?: unknown;
  body?: unknown;
  /** By status code; error responses are added for every route. */
  response: Record<number, unknown>;
}

export interface AdminRoute {
  readonly method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  readonly url: string;
  readonly summary: string;
  /** Served without a token (only /healthz). */
  readonly public?: boolean;
  readonly schema: RouteSchema;
  readonly handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>;
}
