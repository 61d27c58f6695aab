// The membership of the cluster as every node agrees on it: a numbered list of members.
// Placement is a pure function of a view; views change only through agreement (./view-agreement.ts).

import { isIP } from 'node:net'

export interface Member {
  /** The node's Noise public key, 64 hex digits: its identity for as long as its store lives. */
  id: string
  /** Where the node's direct TCP object path listens. */
  host: string
  port: number
  /** Failure domain; '' when not set. Replicas of an object go to distinct zones where possible. */
  zone: string
  /** Share of objects relative to the other members: the capacity it contributes, in whole GiB (>= 1). */
  weight: number
}

export interface View {
  epoch: number
  /** Sorted by id. */
  members: Member[]
  /**
   * Ids taken out for good (`sheep node remove`), sorted: refused at the proof step even with
   * the secret, and their votes never count. Absent when none; every view carries the list on.
   */
  removed?: string[]
  /** True when the cluster was founded with `--admission manual`: joiners wait as candidates for `sheep node admit`. Absent: automatic. */
  manual?: boolean
  /**
   * Members that are down, sorted by id: gone from the mesh for less than the cluster's out-after
   * time. They keep their place in placement (their objects do not move) but take no I/O; when
   * one comes back it catches up on what changed, and past out-after it leaves the members.
   * Absent when none.
   */
  down?: DownMember[]
}

export interface DownMember {
  id: string
  /** When the coordinator found it gone, in ms since the Unix epoch: the clock out-after counts from. */
  since: number
}

/** Whether member id of view is down (see View.down). */
export function isDown (view: View | null, id: string): boolean {
  return view?.down?.some(d => d.id === id) === true
}

/** The members of view that are not down. */
export function liveMembers (view: View): Member[] {
  return view.down === undefined ? view.members : view.members.filter(m => !isDown(view, m.id))
}

/** The most removed ids a view carries (a bound for decoding; removals are rare). */
export const MAX_REMOVED = 4096

/** The most votes a view's certificate carries (one per member of a view, at most). */
export const MAX_VOTES = 1024

export function sortMembers (members: Member[]): Member[] {
  return [...members].sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
}

/** The largest weight a member may give (capacity in GiB: 2^40 GiB is 1 ZiB, far above any host). */
export const MAX_WEIGHT = 2 ** 40
/** The longest zone name. */
export const MAX_ZONE = 64
/** The longest host name (DNS's limit). */
export const MAX_HOST = 253

const HOST_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/

/**
 * What is wrong with a member record's address, zone and weight, or null: checked wherever a
 * member comes from outside (a peer's hello or view, the views file), so that a bad one is
 * refused when it is parsed, never adopted into a view. A weight of 0 would give a member no
 * ring points (placement refuses it, and every I/O of the cluster would stop); a port past
 * 65535 would throw when dialled.
 */
export function memberProblem (m: Member): string | null {
  if (typeof m.host !== 'string' || m.host === '' || m.host.length > MAX_HOST) return `host must be 1 to ${MAX_HOST} characters`
  if (isIP(m.host) === 0 && !HOST_NAME.test(m.host)) return `host ${JSON.stringify(m.host.slice(0, 64))} is neither an IP address nor a host name`
  if (!Number.isSafeInteger(m.port) || m.port < 0 || m.port > 65535) return `port ${String(m.port)} is not in [0, 65535]`
  if (typeof m.zone !== 'string' || m.zone.length > MAX_ZONE || CONTROL.test(m.zone)) return `zone must be at most ${MAX_ZONE} printable characters`
  if (!Number.isSafeInteger(m.weight) || m.weight < 1 || m.weight > MAX_WEIGHT) return `weight ${String(m.weight)} is not an integer in [1, ${MAX_WEIGHT}]`
  return null
}
