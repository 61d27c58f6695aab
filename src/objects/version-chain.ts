// A replica's side of writer-stamped versions (docs/ARCHITECTURE.md, "Writer-stamped versions").
// The image's writer sends each change of an object "made on version B" (the version every
// replica's copy reaches once the changes it sent before are applied), and every replica gives
// the change the same next version (./versions.ts chainVersion). So two copies at one version
// hold the same bytes: they took the same changes in the same order.
//
// Changes of one object arrive out of order when several are in flight. A change made on a
// version that the changes let in before it will reach goes ahead at once, beside them (writes
// the writer sends side by side never overlap: it orders overlapping ones itself); a truncate
// goes alone, after the changes before it and before those after it. The copy's version moves
// to a change's only once every change before it is done too. A change made on a version the
// copy is not on its way to waits for the changes that bring it there; if the copy is at
// another version once that wait is over, it missed a change and refuses this one with EIO (the
// replica then marks the copy missed, and the writer repairs it: src/swarm/recovery.ts,
// gateway.ts). A change sent again that the copy holds or is applying is not applied twice.

import { SheepError } from '../errors'
import { type ObjectId, oidToHex } from './oid'

/**
 * How long a change waits for the one it was made on. Beyond a writer's request timeout the
 * change it waits for is not coming: the copy missed it.
 */
export const CHAIN_WAIT_MS = 10_000
/** How often a waiting change looks whether the view moved on (then it gives way at once). */
const VIEW_LOOK_MS = 100

/** A change let in and not yet done, in the order of their versions. */
interface Under { version: number, alone: boolean, done: boolean }

export class VersionChains {
  private readonly under = new Map<ObjectId, Under[]>()
  private readonly waiters = new Map<ObjectId, Array<() => void>>()
  private readonly waitMs: number

  constructor (waitMs = CHAIN_WAIT_MS) {
    this.waitMs = waitMs
  }

  /**
   * Lets in a change of oid made on version `base` that gives it `version` (`alone`: a truncate):
   * resolves true when it is to be applied (then call finish() once it is over), false when the
   * copy holds it already. `current()` is the copy's version now, null when it holds no copy;
   * `sameView()` false once the view the change came in has ended: a waiting change is then
   * refused with ESTALE (the writer sends it again in the new view), so that it does not hold up
   * the new view's recovery, which waits for the changes let in before it.
   */
  async admit (oid: ObjectId, base: number, version: number, alone: boolean, current: () => number | null | Promise<number | null>, sameView: () => boolean): Promise<boolean> {
    const deadline = Date.now() + this.waitMs
    for (;;) {
      if (!sameView()) throw SheepError.stale(`object ${oidToHex(oid)}: the view changed while a change waited for the one it was made after`)
      const at = await current()
      if (at === null) throw SheepError.notFound(`object ${oidToHex(oid)}`)
      const list = this.under.get(oid)
      if (at === version) return false
      if (list?.some(u => u.version === version) === true) {
        // Sent again while the first is being applied.
        while (this.under.get(oid)?.some(u => u.version === version) === true && Date.now() < deadline) await this.moved(oid, deadline)
        return false
      }
      const last = list?.[list.length - 1]
      const tip = last?.version ?? at
      if (tip === base && (last === undefined || (!alone && !last.alone))) {
        const entry = { version, alone, done: false }
        if (list === undefined) this.under.set(oid, [entry])
        else list.push(entry)
        return true
      }
      // Waited for: changes under way, or the one this change was made on.
      if ((list === undefined && at >= base) || Date.now() >= deadline) {
        throw SheepError.corrupt(`object ${oidToHex(oid)}: this copy is at version ${at}, and a change was made on version ${base}: it missed a change`)
      }
      await this.moved(oid, deadline)
    }
  }

  /**
   * The change let in at `version` is over (applied or failed: one that failed marks the copy
   * missed): the version the copy reaches now that every change before it is done, null while
   * one before it is still under way.
   */
  finish (oid: ObjectId, version: number): number | null {
    const list = this.under.get(oid)
    const entry = list?.find(u => u.version === version)
    if (list === undefined || entry === undefined) return null
    entry.done = true
    let reached: number | null = null
    while (list.length > 0 && (list[0] as Under).done) reached = (list.shift() as Under).version
    if (list.length === 0) this.under.delete(oid)
    this.wake(oid)
    return reached
  }

  /** oid's copy was replaced or removed: changes let in before no longer move its version. */
  reset (oid: ObjectId): void {
    this.under.delete(oid)
    this.wake(oid)
  }

  /** oid's version changed: changes waiting for it look again. */
  wake (oid: ObjectId): void {
    const list = this.waiters.get(oid)
    if (list === undefined) return
    this.waiters.delete(oid)
    for (const resolve of list) resolve()
  }

  private async moved (oid: ObjectId, deadline: number): Promise<void> {
    await new Promise<void>(resolve => {
      const timer = setTimeout(resolve, Math.max(0, Math.min(VIEW_LOOK_MS, deadline - Date.now())))
      const list = this.waiters.get(oid) ?? []
      list.push(() => { clearTimeout(timer); resolve() })
      this.waiters.set(oid, list)
    })
  }
}
