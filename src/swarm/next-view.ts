// What the coordinator proposes next (Cluster.reconcile; docs/ARCHITECTURE.md, "Down and out"):
// the members it reaches as they now describe themselves, the members it does not reach kept as
// down until --out-after has passed since they went, and the non-members waiting to join. Pure,
// so that the rule is tested apart from the mesh.

import { hasMajority } from './view-agreement'
import { type DownMember, isDown, type Member, type View } from './view'

export interface Reachable {
  /** This node, as it describes itself now. */
  self: Member
  /** The other members and candidates this node has a link to, as each describes itself. */
  peers: Member[]
  /** The coordinator's clock (ms). */
  now: number
  /** How long a member stays down before the next view leaves it out (0: out at once). */
  outAfterMs: number
  /**
   * Members the current view added whose links may still be opening: not taken as gone yet.
   * Without this, a coordinator not yet linked to a member just admitted took it down, or out
   * with --out-after 0, in the view right after the one that added it.
   */
  arriving: string[]
  /**
   * Nodes that were members of an earlier view and were not removed: they come back without an
   * operator under manual admission, which is there to keep unknown keys out.
   */
  former: string[]
}

/**
 * The next view's members and down list when this node is the coordinator of `view` (the lowest
 * id among the members it reaches, which are a majority) and something changed; else null.
 */
export function nextView (view: View, r: Reachable): { members: Member[], down: DownMember[] } | null {
  const self = r.self.id
  if (!view.members.some(m => m.id === self)) return null
  const reachable = new Map(r.peers.map(p => [p.id, p]))
  const alive = view.members.filter(m => m.id === self || reachable.has(m.id))
  if (!hasMajority(view, alive.map(m => m.id))) return null
  if (alive.map(m => m.id).sort()[0] !== self) return null
  // Newcomers: linked nodes that are not members (removed keys never get a link: the gate refuses
  // them). With manual admission they wait for `sheep node admit`.
  const joiners = r.peers.filter(p => !view.members.some(m => m.id === p.id) && (view.manual !== true || r.former.includes(p.id)))
  // A member gone is down (it keeps its place) until out-after has passed since it went; then out.
  const down: DownMember[] = []
  for (const m of view.members.filter(m => !alive.includes(m) && !r.arriving.includes(m.id))) {
    const since = view.down?.find(d => d.id === m.id)?.since ?? r.now
    if (r.now - since < r.outAfterMs) down.push({ id: m.id, since })
  }
  const kept = view.members.filter(m => alive.includes(m) || r.arriving.includes(m.id) || down.some(d => d.id === m.id))
  const members = [...kept.map(m => m.id === self ? r.self : (reachable.get(m.id) ?? m)), ...joiners]
  const same = members.length === view.members.length && members.every(d => view.members.some(m => sameMember(m, d))) &&
    down.length === (view.down?.length ?? 0) && down.every(d => isDown(view, d.id))
  return same ? null : { members, down }
}

function sameMember (a: Member, b: Member): boolean {
  return a.id === b.id && a.host === b.host && a.port === b.port && a.zone === b.zone && a.weight === b.weight
}
