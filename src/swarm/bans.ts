// Keys of peers that sent something malformed or failed the secret proof, refused for a while.
// Bounded: a peer can make up as many keys as it likes (Noise accepts any), so the table keeps
// the newest `max` bans and forgets the oldest first; each ban also ends after `ms`. A ban is a
// brake, not a wall: what stops a hostile peer is that its input closes only its own connection.

export interface BanOptions {
  /** How long a ban lasts. */
  ms: number
  /** The most keys banned at once. */
  max: number
  /** Milliseconds, monotonic; a test may pass its own clock. */
  now?: () => number
}

export const DEFAULT_BANS: BanOptions = { ms: 10 * 60_000, max: 4096 }

export class BanTable {
  private readonly ms: number
  private readonly max: number
  private readonly now: () => number
  /** id -> when its ban ends; insertion order is ban order, so the first entry ends first. */
  private readonly until = new Map<string, number>()

  constructor (opts: Partial<BanOptions> = {}) {
    this.ms = opts.ms ?? DEFAULT_BANS.ms
    this.max = Math.max(1, opts.max ?? DEFAULT_BANS.max)
    this.now = opts.now ?? (() => performance.now())
  }

  get size (): number {
    this.expire()
    return this.until.size
  }

  get durationMs (): number { return this.ms }

  /** Bans id (again: its ban starts over). */
  ban (id: string): void {
    this.until.delete(id)
    this.until.set(id, this.now() + this.ms)
    this.expire()
    while (this.until.size > this.max) {
      const oldest = this.until.keys().next().value
      if (oldest === undefined) break
      this.until.delete(oldest)
    }
  }

  has (id: string): boolean {
    const end = this.until.get(id)
    if (end === undefined) return false
    if (end > this.now()) return true
    this.until.delete(id)
    return false
  }

  /** Drops the bans that ended: all at the front, as every ban lasts the same time. */
  private expire (): void {
    const now = this.now()
    for (const [id, end] of this.until) {
      if (end > now) break
      this.until.delete(id)
    }
  }
}
