// JSON schemas of the admin API's inputs and outputs: they validate requests, shape responses and make /openapi.json.
import { CLIENT_STATES, SERVER_STATES } from '../proxy/activity.js';
import { TENANT_ID_PATTERN } from '../tenants/ids.js';

const str = { type: 'string' } as const;
const nullableStr = { type: ['string', 'null'] } as const;
const int = { type: 'integer' } as const;
const time = { type: 'string', format: 'date-time' } as const;
const strings = { type: 'array', items: str } as const;

function object(properties: Record<string, unknown>, optional: readonly string[] = []): Record<string, unknown> {
  return { type: 'object', properties, required: Object.keys(properties).filter((k) => !optional.includes(k)), additionalProperties: false };
}

export const tenantId = { type: 'string', pattern: TENANT_ID_PATTERN, description: 'Tenant id: 1-63 lowercase letters, digits and _, not starting with a digit' };

export const errorSchema = object({ error: object({ code: str, message: str, field: str }, ['field']) });

export const tenant = object({
  id: str,
  schema: str,
  role: { ...nullableStr, description: 'Login role; null in schema isolation' },
  state: { type: 'string', enum: ['active', 'suspended'] },
  poolSize: { type: ['integer', 'null'], description: "Backends in the tenant's pools on each proxy; null: the proxy's --pool-size" },
  maxClients: { type: ['integer', 'null'], description: "Client connections the tenant may hold at once on each proxy (0: no cap); null: the proxy's --max-tenant-clients" },
  createdAt: time,
  updatedAt: time,
});

const countsOf = (states: readonly string[]) => object(Object.fromEntries(states.map((s) => [s, int])));
export const clientCounts = countsOf(CLIENT_STATES);
export const serverCounts = countsOf(SERVER_STATES);

export const tenantConnections = object({
  tenant: { ...nullableStr, description: 'null for clients still logging in' },
  clients: clientCounts,
  servers: serverCounts,
});

export const tenantDetails = object({
  ...(tenant.properties as Record<string, unknown>),
  schemaVersion: { ...nullableStr, description: 'Highest migration version applied' },
  migrationsApplied: int,
  connections: object({ clients: clientCounts, servers: serverCounts }),
});

export const idParams = object({ id: tenantId });

const failure = object({ code: str, sqlstate: nullableStr, version: nullableStr, message: str });
const appliedFile = object({ version: str, name: str, durationMs: int });
const tenantResult = object(
  {
    tenant: str,
    status: { type: 'string', enum: ['migrated', 'up_to_date', 'failed', 'not_attempted'] },
    applied: { type: 'array', items: appliedFile },
    attempts: int,
    durationMs: int,
    error: failure,
  },
  ['error'],
);
const progress = object({ done: int, total: int, failed: int, elapsedMs: int });

export const migrationJob = object({
  id: str,
  state: { type: 'string', enum: ['running', 'succeeded', 'failed'] },
  createdAt: time,
  finishedAt: { type: ['string', 'null'], format: 'date-time' },
  tenants: { type: ['array', 'null'], items: str },
  concurrency: int,
  progress,
  results: { type: 'array', items: tenantResult },
  summary: {
    type: ['object', 'null'],
    properties: {
      ok: { type: 'boolean' },
      total: int,
      migrated: int,
      upToDate: int,
      failed: int,
      notAttempted: int,
      filesApplied: int,
      shared: object({ applied: { type: 'array', items: appliedFile }, error: failure }, ['error']),
      concurrency: int,
      durationMs: int,
    },
  },
  error: { type: ['object', 'null'], properties: { code: str, message: str } },
});

const plan = object({ current: nullableStr, pending: strings, changed: strings });
export const migrationStatus = object({
  latest: nullableStr,
  tenantFiles: int,
  sharedFiles: int,
  total: int,
  upToDate: int,
  behind: int,
  changed: int,
  shared: plan,
  tenants: {
    type: 'array',
    items: object({ id: str, schema: str, role: nullableStr, state: str, current: nullableStr, pending: strings, changed: strings, unknown: int }),
  },
});
