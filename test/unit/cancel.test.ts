import { describe, expect, it } from 'vitest';
import { CancelRegistry, slotOf } from '../../src/proxy/cancel.js';

const key = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};

describe('CancelRegistry', () => {
  it('finds the session for the right key and nothing for a wrong one', () => {
    const reg = new CancelRegistry();
    const target = { cancel: () => {} };
    const k = reg.issue(target);
    expect(k.processId).toBeGreaterThan(0);
    expect(reg.find(k.processId, key(k.secretKey))).toBe(target);
    expect(reg.find(k.processId, key(k.secretKey ^ 1))).toBeNull();
    expect(reg.find(k.processId + 1, key(k.secretKey))).toBeNull();
    expect(reg.find(k.processId, Buffer.alloc(8))).toBeNull();
  });

  it('issues unique process ids and forgets revoked keys', () => {
    const reg = new CancelRegistry();
    const keys = Array.from({ length: 2000 }, () => reg.issue({ cancel: () => {} }));
    expect(new Set(keys.map((k) => k.processId)).size).toBe(2000);
    reg.revoke(keys[0]!.processId);
    expect(reg.find(keys[0]!.processId, key(keys[0]!.secretKey))).toBeNull();
    expect(reg.size).toBe(1999);
  });
});

describe('CancelRegistry with workers', () => {
  it("names its slot in the low byte of every processId it issues", () => {
    for (const slot of [0, 1, 5, 63]) {
      const reg = new CancelRegistry(slot, () => {});
      for (let i = 0; i < 200; i++) {
        const k = reg.issue({ cancel: () => {} });
        expect(slotOf(k.processId)).toBe(slot);
        expect(k.processId).toBeGreaterThan(0);
        expect(k.processId).toBeLessThanOrEqual(0x7fffffff);
      }
    }
  });

  it("cancels its own sessions and forwards another slot's key untouched, secret and all", () => {
    const forwarded: [number, number, string][] = [];
    const mine = new CancelRegistry(1, (slot, processId, secret) => forwarded.push([slot, processId, secret.toString('hex')]));
    let cancelled = 0;
    const k = mine.issue({ cancel: () => cancelled++ });
    expect(mine.cancel(k.processId, key(k.secretKey))).toBe('cancelled');
    expect(cancelled).toBe(1);
    expect(mine.cancel(k.processId, key(k.secretKey ^ 1))).toBe('unknown');
    expect(cancelled).toBe(1);

    const other = new CancelRegistry(2, () => {}).issue({ cancel: () => {} });
    expect(mine.cancel(other.processId, key(other.secretKey))).toBe('forwarded');
    expect(forwarded).toEqual([[2, other.processId, key(other.secretKey).toString('hex')]]);
  });

  it('without workers, a key naming another slot is simply unknown', () => {
    const reg = new CancelRegistry();
    expect(reg.cancel(0x12345601, key(7))).toBe('unknown');
  });
});
