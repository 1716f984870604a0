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

/** Sends a CancelRequest to the worker process that issued its key. */
export type CancelForwarder = (slot: number, processId: number, secretKey: Buffer) => void;

/** The worker slot a processId was issued by: its low byte, so any worker can tell where a cancel belongs. */
export const slotOf = (processId: number): number => processId & 0xff;

export type CancelOutcome = 'cancelled' | 'forwarded' | 'unknown';

export class CancelRegistry {
  private readonly byProcessId = new Map<number, { secret: Buffer; target: Cancellable }>();

  /**
   * `slot` is this worker's (0 without workers); `forward` reaches the others. With workers, the kernel or the
   * cluster primary picks the worker of each connection, so a CancelRequest often lands beside its session.
   */
  constructor(
    readonly slot = 0,
    private readonly forward: CancelForwarder | null = null,
  ) {}

  /** Issues a fresh key; processId is unique among live sessions and names this slot, the secret is random. */
  issue(target: Cancellable): CancelKey {
    let processId: number;
    do {
      processId = (randomBytes(4).readUInt32BE(0) & 0x7fffff00) | this.slot;
    } while (processId === 0 || this.byProcessId.has(processId));
    const secret = randomBytes(4);
    this.byProcessId.set(processId, { secret, target });
    return { processId, secretKey: secret.readInt32BE(0) };
  }

  revoke(processId: number): void {
    this.byProcessId.delete(processId);
  }

  /** Cancels the session a CancelRequest names, here or through the worker that issued the key. */
  cancel(processId: number, secretKey: Buffer): CancelOutcome {
    const slot = slotOf(processId);
    if (slot !== this.slot) {
      if (!this.forward) return 'unknown';
      this.forward(slot, processId, secretKey);
      return 'forwarded';
    }
    const target = this.find(processId, secretKey);
    target?.cancel();
    return target ? 'cancelled' : 'unknown';
  }

  /** The session a key names, or null when the key is unknown or wrong (compared in constant time). */
  find(processId: number, secretKey: Buffer): Cancellable | null {
    const entry = this.byProcessId.get(processId);
    if (!entry || secretKey.length !== entry.secret.length) return null;
    return timingSafeEqual(entry.secret, secretKey) ? entry.target : null;
  }

  get size(): number {
    return this.byProcessId.size;
  }
}
