// Memory for the bodies of large frames, used again once what they carried is done with. A
// sequential write brings a body of 1 MiB or more per request to every replica; a fresh buffer
// for each is memory V8 counts against its external limit, and a full collection came every few
// of them (docs/BENCHMARKS.md, "The receive side's buffers"). Only bodies whose owner says they
// are done with come back: a Write request's data once the store wrote it (./link.ts).

/** Bodies smaller than this are allocated as usual (Node's own slab takes the small ones). */
export const POOLED_MIN = 64 * 1024
/**
 * Free buffers kept at most, per connection: one request at a time needs one, and the memory
 * kept is bounded (4 bodies of 4 MiB, a gateway's largest piece, are 16 MiB a peer).
 */
const MAX_FREE = 4

export class BodyPool {
  private readonly free: ArrayBuffer[] = []
  private readonly ours = new WeakSet<ArrayBuffer>()

  /** A buffer of exactly `size` bytes, of unspecified content. */
  take (size: number): Buffer {
    if (size < POOLED_MIN) return Buffer.allocUnsafe(size)
    const at = this.free.findIndex(b => b.byteLength >= size)
    const memory = at < 0 ? undefined : this.free.splice(at, 1)[0]
    if (memory !== undefined) return Buffer.from(memory, 0, size)
    // Memory of its own, not zeroed: bodies of one kind (1 MiB writes) are of one size.
    const fresh = Buffer.allocUnsafeSlow(size)
    this.ours.add(fresh.buffer)
    return fresh
  }

  /** Gives back the memory of a buffer take() made, once nothing refers to it any more; others are left alone. */
  give (buf: Uint8Array): void {
    const memory = buf.buffer
    if (!(memory instanceof ArrayBuffer) || !this.ours.has(memory) || this.free.includes(memory)) return
    if (this.free.length < MAX_FREE) this.free.push(memory)
  }
}
