// The membership of the cluster as every node agrees on it: a numbered list of members.
// Placement is a pure function of a view; views change only through agreement (./view-agreement.ts).

export interface Member {
  /** The node's Noise public key, 64 hex digits: its identity for as long as its store lives. */
  id: string
  /** Where the node's direct TCP object path listens. */
  host: string
  port: number
  /** Failure domain; '' when not set. Replicas of an object go to distinct zones where possible. */
  zone: string
  /** Share of objects relative to the other members: the capacity it contributes, in bytes. */
  weight: number
}

export interface View {
  epoch: number
  /** Sorted by id. */
  members: Member[]
}

export function sortMembers (members: Member[]): Member[] {
  return [...members].sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
}
