// Things waiting to be made durable (folders to fsync, the catalog to flush), and the syncs of
// them under way. A sync makes durable what was added before it and waits for the syncs already
// under way, since those may hold what its caller depends on: two overlapping callers each return
// only once everything added before them is on disk. A failed sync puts its items back and fails
// every caller that waited for it.

export class SyncQueue<T> {
  private readonly unsynced = new Set<T>()
  private readonly underWay = new Set<Promise<void>>()
  private readonly syncAll: (items: T[]) => Promise<void>

  constructor (syncAll: (items: T[]) => Promise<void>) {
    this.syncAll = syncAll
  }

  add (item: T): void {
    this.unsynced.add(item)
  }

  async sync (): Promise<void> {
    if (this.unsynced.size > 0) {
      const items = [...this.unsynced]
      this.unsynced.clear()
      const run = this.syncAll(items).catch(err => {
        for (const item of items) this.unsynced.add(item)
        throw err
      })
      this.underWay.add(run)
      const forget = (): void => { this.underWay.delete(run) }
      run.then(forget, forget)
    }
    if (this.underWay.size > 0) await Promise.all(this.underWay)
  }
}
