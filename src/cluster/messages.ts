// Messages between the cluster primary and its proxy workers, sent as JSON over the cluster's IPC channel.

/** What the primary asks every worker, for the admin API. */
export type WorkerOp = { op: 'connections' } | { op: 'disconnect'; tenant: string; reason: string } | { op: 'metrics' };

/** A CancelRequest on its way to the worker whose slot issued the key; the secret is base64. */
export interface ForwardedCancel {
  pgtenant: 'cancel';
  slot: number;
  processId: number;
  secretKey: string;
}

export type ToWorker = ({ pgtenant: 'request'; id: number } & WorkerOp) | ForwardedCancel;

export type FromWorker = { pgtenant: 'reply'; id: number; value?: unknown; error?: string } | ForwardedCancel;

/** True for pgtenant's own messages (cluster's internal ones never reach 'message' listeners, others might). */
export function isPgtenantMessage<T extends { pgtenant: string }>(m: unknown): m is T {
  return typeof m === 'object' && m !== null && typeof (m as { pgtenant?: unknown }).pgtenant === 'string';
}

/** Names the worker's slot (0..workers-1) in its environment; a restarted worker takes its predecessor's slot. */
export const WORKER_SLOT_ENV = 'PGTENANT_WORKER_SLOT';
