// Test helpers: hand-written bytes, every two-way split of a stream, and seeded random splits.

/** Bytes from hex pairs and quoted ASCII, e.g. hex('52 00 00 00 08', '"abc"', '00'). */
export function hex(...parts: string[]): Buffer {
  const out: number[] = [];
  for (const part of parts) {
    if (part.startsWith('"') && part.endsWith('"')) {
      out.push(...Buffer.from(part.slice(1, -1), 'latin1'));
    } else {
      for (const pair of part.split(/\s+/).filter(Boolean)) out.push(parseInt(pair, 16));
    }
  }
  return Buffer.from(out);
}

/** Each way to cut a stream in two, including the empty cuts at either end. */
export function* splitsInTwo(stream: Buffer): Generator<Buffer[]> {
  for (let k = 0; k <= stream.length; k++) yield [stream.subarray(0, k), stream.subarray(k)];
}

export const bytewise = (stream: Buffer): Buffer[] => [...stream].map((b) => Buffer.from([b]));

/** mulberry32: small deterministic PRNG so a failing split can be replayed from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Cuts a stream into random pieces (copies, so nothing relies on shared memory). */
export function randomSplit(stream: Buffer, random: () => number, maxPiece = 16): Buffer[] {
  const pieces: Buffer[] = [];
  let i = 0;
  while (i < stream.length) {
    const size = Math.floor(random() * (maxPiece + 1)); // 0 allowed: empty chunks happen
    pieces.push(Buffer.from(stream.subarray(i, i + size)));
    i += size;
  }
  return pieces;
}

/** Builds a typed message: type letter, Int32 length including itself, body. */
export function typed(type: string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const header = Buffer.alloc(5);
  header[0] = type.charCodeAt(0);
  header.writeInt32BE(4 + b.length, 1);
  return Buffer.concat([header, b]);
}
