// A replica's side of writer-stamped versions (docs/ARCHITECTURE.md, "Versions"). The image's
// writer sends each change of an object "made on version B" (the version it knows every replica's
// copy is at after the changes it sent before), and every replica gives the change the same next
// version (./versions.ts chainVersion). So two copies at one version hold the same bytes: they
// took the same changes in the same order. A change that arrives before the one it was made on
// (requests of one object overlap in flight) waits for it; a copy that is at another version once
// that wait is over missed a change, and refuses this one with EIO (the replica then marks the
// copy missed, and the writer repairs it: src/swarm/recovery.ts, gateway.ts). A change sent again
// (a lost answer) that the copy holds already is not applied twice.

import { SheepError } from '../errors'
import { type ObjectId, oidToHex } from './oid'

/**
 * How long a change waits for the one it was made on. Beyond a writer's request timeout the
 * change it waits for is not coming: the copy missed it.
 */
export const CHAIN_WAIT_MS = 10_000

export class VersionChains {
  /** The version a change let in and still under way will give each object. */
  private readonly under = new Map<ObjectId, number>()
  private readonly waiters = new Map<ObjectId, Array<() => void>>()
  private readonly waitMs: number

  constructor (waitMs = CHAIN_WAIT_MS) {
    this.waitMs = waitMs
  }

  /**
   * Lets in a change of oid made on version `base` that gives it `version`: resolves true when
   * it is to be applied (then call done(oid) once it is over), false when the copy holds it
   * already. `current()` is the copy's version now, null when it holds no copy (ENOENT).
   */
  async admit (oid: ObjectId, base: number, version: number, current: () => Promise<number | null>): Promise<boolean> {
    const deadline = Date.now() + this.waitMs
    for (;;) {
      const at = await current()
      if (at === null) throw SheepError.notFound(`object ${oidToHex(oid)}`)
      const under = this.under.get(oid)
      if (under === undefined) {
        if (at === version) return false
        if (at === base) {
          this.under.set(oid, version)
          return true
        }
      }
      // Waited for: the change under way, or the one this change was made on.
      const waiting = under !== undefined || at < base
      if (!waiting || Date.now() >= deadline) {
        throw SheepError.corrupt(`object ${oidToHex(oid)}: this copy is at version ${at}, and a change was made on version ${base}: it missed a change`)
      }
      await this.moved(oid, deadline)
    }
  }

  /** The change let in by admit() is over, applied or not. */
  done (oid: ObjectId): void {
    this.under.delete(oid)
    this.wake(oid)
  }

  /** oid's version changed (or its copy went): changes waiting for it look again. */
  wake (oid: ObjectId): void {
    const list = this.waiters.get(oid)
    if (list === undefined) return
    this.waiters.delete(oid)
    for (const resolve of list) resolve()
  }

  private async moved (oid: ObjectId, deadline: number): Promise<void> {
    await new Promise<void>(resolve => {
      const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))
      const list = this.waiters.get(oid) ?? []
      list.push(() => { clearTimeout(timer); resolve() })
      this.waiters.set(oid, list)
    })
  }
}
