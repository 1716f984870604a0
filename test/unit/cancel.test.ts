import { describe, expect, it } from 'vitest';
import { CancelRegistry } from '../../src/proxy/cancel.js';

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
