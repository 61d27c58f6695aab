// Who may open a link with this node, decided at the proof step of every connection (./link.ts):
// what a peer proved (which of the cluster's secrets it holds) and what the view says of its key.
//
// How this works: a node keeps up to three secrets (./identity.ts). It proves with `current`.
// It takes a proof by `current` from anyone; by `next` (a rotation under way: only members were
// told it) from anyone too; by `previous` (the secret before the last rotation) only from a member
// of its view, so that a member that has not switched yet still gets in while a newcomer with an
// old join token does not. A key the view lists as removed is refused whatever it proves.

import type { View } from './view'

export interface Secrets {
  /** Proofs are made with it, and new members join with it (the join token carries it). */
  current: Buffer
  /** Announced by a rotation's first phase, current after its second (`sheep cluster rotate-secret`). */
  next: Buffer | null
  /** The one current before the last rotation: accepted from members only. */
  previous: Buffer | null
}

/** Null if a peer with key `remoteId` may in, else why not (logged, and the key is banned for a while). */
export function admissionProblem (secrets: Secrets, view: View | null, remoteId: string, proves: (secret: Buffer) => boolean): string | null {
  if (view?.removed?.includes(remoteId) === true) return 'it was removed from the cluster (sheep node remove), so its key is refused'
  if (proves(secrets.current)) return null
  if (secrets.next !== null && proves(secrets.next)) return null
  if (secrets.previous !== null && proves(secrets.previous)) {
    if (view?.members.some(m => m.id === remoteId) === true) return null
    return 'it proved a cluster secret that was rotated out (an old join token), and it is not a member'
  }
  return 'it did not prove it holds the cluster secret'
}

/** The secrets whose topics this node announces itself on: all it keeps (see the note at the top). */
export function listenedSecrets (secrets: Secrets): Buffer[] {
  return [secrets.current, secrets.next, secrets.previous].filter((s): s is Buffer => s !== null)
}
