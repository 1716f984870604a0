// The pieces of one chunk to write, in order: one list per direction, reused for every chunk, so framing allocates nothing.

const EMPTY = Buffer.alloc(0);

/**
 * A list that is emptied by count, never by shrinking an array: V8 gives up an array's storage when its length
 * drops and allocates it again at the next push, which would be an allocation per chunk.
 */
export class Pieces {
  private readonly items: Buffer[] = [EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY];
  length = 0;

  add(piece: Buffer): void {
    if (this.length < this.items.length) this.items[this.length] = piece;
    else this.items.push(piece);
    this.length++;
  }

  get(k: number): Buffer {
    return this.items[k]!;
  }

  /** Empties the list, letting go of the chunks it held. */
  clear(): void {
    for (let k = 0; k < this.length; k++) this.items[k] = EMPTY;
    this.length = 0;
  }

  /** Their total size in bytes. */
  get size(): number {
    let total = 0;
    for (let k = 0; k < this.length; k++) total += this.items[k]!.length;
    return total;
  }

  /** Everything in one new buffer: for a socket, one write of a small copy costs less than a write per piece. */
  concat(): Buffer {
    const out = Buffer.allocUnsafe(this.size);
    let at = 0;
    for (let k = 0; k < this.length; k++) at += this.items[k]!.copy(out, at);
    return out;
  }
}
