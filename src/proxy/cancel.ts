// Cancel keys issued by the proxy (BackendKeyData) and the lookup that routes a CancelRequest to its one session.
import { randomBytes, timingSafeEqual } from 'node:crypto';

/** What a cancel needs from the session that owns a key. */
export interface Cancellable {
  cancel(): void;
}

export interface CancelKey {
  readonly processId: number;
  readonly secretKey: number;
}

export class CancelRegistry {
  private readonly byProcessId = new Map<number, { secret: Buffer; target: Cancellable }>();

  /** Issues a fresh key; processId is unique among live sessions, the secret random. */
  issue(target: Cancellable): CancelKey {
    let processId: number;
    do {
      processId = randomBytes(4).readUInt32BE(0) & 0x7fffffff;
    } while (processId === 0 || this.byProcessId.has(processId));
    const secret = randomBytes(4);
    this.byProcessId.set(processId, { secret, target });
    return { processId, secretKey: secret.readInt32BE(0) };
  }

  revoke(processId: number): void {
    this.byProcessId.delete(processId);
  }

  /** The session a CancelRequest names, or null when the key is unknown or wrong (compared in constant time). */
  find(processId: number, secretKey: Buffer): Cancellable | null {
    const entry = this.byProcessId.get(processId);
    if (!entry || secretKey.length !== entry.secret.length) return null;
    return timingSafeEqual(entry.secret, secretKey) ? entry.target : null;
  }

  get size(): number {
    return this.byProcessId.size;
  }
}
