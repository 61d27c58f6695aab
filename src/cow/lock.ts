// Async locks. The shared side of RwLock is taken without a promise when nothing is queued,
// because every guest I/O takes it.

export class Mutex {
  private tail: Promise<void> = Promise.resolve()

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const prev = this.tail
    let release!: () => void
    this.tail = new Promise<void>(resolve => { release = resolve })
    await prev
    try {
      return await fn()
    } finally {
      release()
    }
  }
}

/**
 * Readers share, a writer excludes everyone. Waiters are served in arrival order (consecutive
 * readers together), so neither side can starve the other; a new reader queues behind a waiting
 * writer.
 */
export class RwLock {
  private shared = 0
  private exclusive = false
  private queue: Array<{ exclusive: boolean, grant: () => void }> = []

  /** Takes the shared side at once if possible; returns false if the caller must wait. */
  tryShared (): boolean {
    if (this.exclusive || this.queue.length > 0) return false
    this.shared++
    return true
  }

  async acquireShared (): Promise<void> {
    if (this.tryShared()) return
    await new Promise<void>(resolve => this.queue.push({ exclusive: false, grant: resolve }))
  }

  releaseShared (): void {
    this.shared--
    this.wake()
  }

  async acquireExclusive (): Promise<void> {
    if (!this.exclusive && this.shared === 0 && this.queue.length === 0) {
      this.exclusive = true
      return
    }
    await new Promise<void>(resolve => this.queue.push({ exclusive: true, grant: resolve }))
  }

  releaseExclusive (): void {
    this.exclusive = false
    this.wake()
  }

  async withExclusive<T> (fn: () => Promise<T>): Promise<T> {
    await this.acquireExclusive()
    try {
      return await fn()
    } finally {
      this.releaseExclusive()
    }
  }

  private wake (): void {
    if (this.exclusive) return
    while (this.queue.length > 0) {
      const next = this.queue[0] as { exclusive: boolean, grant: () => void }
      if (next.exclusive) {
        if (this.shared > 0) return
        this.queue.shift()
        this.exclusive = true
        next.grant()
        return
      }
      this.queue.shift()
      this.shared++
      next.grant()
    }
  }
}
