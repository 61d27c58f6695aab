// Write tokens shared by image stores of one process (unit tests of two hosts over one store).

import { inodeOid } from '../../src/objects/oid'
import type { LocalObjectStore } from '../../src/objects/local-store'
import type { ImageStore } from '../../src/cow/image-store'
import type { WriteTokens } from '../../src/cow/tokens'
import { SheepError } from '../../src/errors'

/**
 * Write tokens between image stores of one process, kept as the cluster keeps them
 * (src/swarm/write-tokens.ts, tested on real nodes in test/e2e/cluster-tokens.test.ts): one
 * record per image (holder, generation, deleted) and, per store, the generation it took; a take
 * asks the holder to release first and says whether another store held the token since.
 */
export class SharedTokens {
  private readonly records = new Map<number, { holder: string, generation: number, deleted: boolean }>()
  readonly takes: string[] = []
  /** Stores whose host died: a take goes past them without asking, as a new view lets the cluster do. */
  readonly dead = new Set<string>()
  constructor (private readonly objects: LocalObjectStore, private readonly stores: Map<string, () => ImageStore>) {}

  forStore (name: string): WriteTokens {
    const taken = new Map<number, number>()
    return {
      take: async (vid, purpose) => {
        this.takes.push(`${name} ${purpose}`)
        for (;;) {
          const current = this.records.get(vid)
          if (current?.deleted === true || (current === undefined && await this.objects.stat(inodeOid(vid)) === null)) throw SheepError.stale(`image ${vid} was deleted`)
          if (current !== undefined && current.holder === name && current.generation === taken.get(vid)) return false
          if (current !== undefined && current.holder !== name && !this.dead.has(current.holder)) await (this.stores.get(current.holder) as () => ImageStore)().releaseToken(vid, purpose)
          if (this.records.get(vid) !== current) continue // the swap would fail
          const generation = (current?.generation ?? 0) + 1
          this.records.set(vid, { holder: name, generation, deleted: false })
          taken.set(vid, generation)
          return current !== undefined
        }
      },
      released: vid => { taken.delete(vid) },
      bury: async vid => { this.records.set(vid, { holder: name, generation: (this.records.get(vid)?.generation ?? 0) + 1, deleted: true }) },
      forget: async vid => { this.records.delete(vid) }
    }
  }
}
