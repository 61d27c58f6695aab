// Object versions: on a cluster they decide which copy of an object is the newest when replicas
// disagree (src/swarm/recovery.ts), so a version must order changes made in different views.
//
// A version is epoch * 2^32 + a count: every change a store makes in epoch e gives the object a
// version above both its last one and every version of an earlier epoch. Counts alone did not
// order them: a replica that took 150 writes of a block before it went away counted more than the
// replicas that truncated the image and wrote it anew meanwhile, and its old bytes came back.
// A one-host store has no epoch (0): its versions count changes, as they always did.

import { SheepError } from '../errors'

const COUNT_RANGE = 2 ** 32
/** Epochs past this would take versions beyond 2^53, where numbers stop being exact. */
export const MAX_VERSIONED_EPOCH = 2 ** 21 - 1

/** The version every change made in `epoch` goes above. */
export function epochFloor (epoch: number): number {
  if (!Number.isSafeInteger(epoch) || epoch < 0 || epoch > MAX_VERSIONED_EPOCH) {
    throw SheepError.tooBig(`epoch ${epoch} is past the ${MAX_VERSIONED_EPOCH} that object versions can order`)
  }
  return epoch * COUNT_RANGE
}

/** The version a change gives an object at `current`, made above `floor` (epochFloor). */
export function nextVersion (current: number, floor: number): number {
  return Math.max(current + 1, floor + 1)
}

/** The epoch a version was written in (0 for counts of a one-host store or of old stores). */
export function versionEpoch (version: number): number {
  return Math.floor(version / COUNT_RANGE)
}

/**
 * The version a writer's change made on version `base` gives a copy in `epoch`
 * (./version-chain.ts): every replica computes the same, so equal versions mean equal bytes.
 */
export function chainVersion (base: number, epoch: number): number {
  return nextVersion(base, epochFloor(epoch))
}
