// The writer's side of writer-stamped versions (../objects/version-chain.ts): for each object of an
// image this host writes, the version every replica's copy reaches once the changes sent so far
// in this epoch are applied (its tip). The next change is sent as made on the tip, so that every
// replica gives it the same version and applies the changes in one order.
//
// A tip is known only within one epoch and one hold of the image's write token: recovery may
// settle or replace copies at a view change, and another holder may change them meanwhile. An
// unknown tip is learned from the answers of one change sent as made on any version (each
// replica counts it up from its own); other changes of the object wait for that one. Answers
// that disagree leave the tip unknown: the copies differ, and the writer makes them one first
// (Gateway.even), which sets the tip again.

import { type ObjectId, ObjectType, oidType, oidVid } from '../objects/oid'
import { chainVersion } from '../objects/versions'

/** How a change of an object is sent: made on `base` (0: any), and what to do with the replicas' answers. */
export interface ChainLink {
  base: number
  /** The versions the replicas answered (a learner's), or null when the change failed. */
  settle: (versions: number[] | null) => void
}

/** Tips kept; past this many the oldest are forgotten (the next change of those learns again). */
const TIPS_KEPT = 65_536

export class WriteChains {
  private readonly tips = new Map<ObjectId, { epoch: number, version: number }>()
  private readonly learning = new Map<ObjectId, Promise<void>>()

  /** Only an image's data and inode objects have one writer, its token's holder. */
  static chained (oid: ObjectId): boolean {
    const type = oidType(oid)
    return type === ObjectType.Data || type === ObjectType.Inode
  }

  /**
   * The link of the next change of oid in epoch, made of `steps` requests each made on the one
   * before (a write in pieces): on the tip when it is known, else a learner (learn()).
   */
  async next (oid: ObjectId, epoch: number, steps = 1): Promise<ChainLink> {
    for (;;) {
      const tip = this.tips.get(oid)
      if (tip !== undefined && tip.epoch === epoch) {
        const base = tip.version
        for (let i = 0; i < steps; i++) tip.version = chainVersion(tip.version, epoch)
        // A change that failed on some replica leaves copies that may differ: the tip is lost.
        return { base, settle: versions => { if (versions === null) this.forget(oid) } }
      }
      const learner = this.learning.get(oid)
      if (learner === undefined) return this.learner(oid, epoch)
      await learner
    }
  }

  /**
   * A change of oid made on any version, whose answers set the tip when they agree (a first
   * write, a change sent again after a view change): once no other learner of oid is under way.
   */
  async learn (oid: ObjectId, epoch: number): Promise<ChainLink> {
    for (let learner = this.learning.get(oid); learner !== undefined; learner = this.learning.get(oid)) await learner
    return this.learner(oid, epoch)
  }

  private learner (oid: ObjectId, epoch: number): ChainLink {
    let learned = (): void => {}
    this.learning.set(oid, new Promise<void>(resolve => { learned = resolve }))
    this.tips.delete(oid)
    return {
      base: 0,
      settle: versions => {
        this.learning.delete(oid)
        const first = versions?.[0]
        if (first !== undefined && versions?.every(v => v === first) === true) this.set(oid, epoch, first)
        learned()
      }
    }
  }

  /** Every replica's copy of oid is at `version` in epoch (they were made one). */
  set (oid: ObjectId, epoch: number, version: number): void {
    this.tips.delete(oid)
    if (this.tips.size >= TIPS_KEPT) {
      const oldest = this.tips.keys().next().value
      if (oldest !== undefined) this.tips.delete(oldest)
    }
    this.tips.set(oid, { epoch, version })
  }

  /** oid changed other than by a chained change (a replace, a remove): its tip is unknown. */
  forget (oid: ObjectId): void {
    this.tips.delete(oid)
  }

  /** This host took or let go image vid's write token: another host may have changed its objects. */
  forgetImage (vid: number): void {
    for (const oid of this.tips.keys()) if (oidVid(oid) === vid) this.tips.delete(oid)
  }
}
