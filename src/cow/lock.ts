// Async locks. The shared side of RwLock is taken without a promise when nothing exclusive is
// pending, because every guest I/O takes it.

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

export class RwLock {
  private shared = 0
  private exclusive = false
  private readonly waitingExclusive: Array<() => void> = []
  private waitingShared: Array<() => void> = []

  /** Takes the shared side at once if possible; returns false if the caller must wait. */
  tryShared (): boolean {
    if (this.exclusive || this.waitingExclusive.length > 0) return false
    this.shared++
    return true
  }

  async acquireShared (): Promise<void> {
    if (this.tryShared()) return
    await new Promise<void>(resolve => this.waitingShared.push(resolve))
  }

  releaseShared (): void {
    this.shared--
    if (this.shared === 0) this.wake()
  }

  async acquireExclusive (): Promise<void> {
    if (!this.exclusive && this.shared === 0) {
      this.exclusive = true
      return
    }
    await new Promise<void>(resolve => this.waitingExclusive.push(resolve))
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
    if (this.exclusive || this.shared > 0) return
    const next = this.waitingExclusive.shift()
    if (next) {
      this.exclusive = true
      next()
      return
    }
    const readers = this.waitingShared
    this.waitingShared = []
    this.shared += readers.length
    for (const r of readers) r()
  }
}
