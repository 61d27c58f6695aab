// The control protocol between the `sheep` command and its local daemon: one JSON request per
// connection over a unix socket, answered by zero or more progress lines and one result line.

import type { ErrorCode } from '../errors'
import type { ImageInfo, SnapshotInfo, TreeNode } from '../cow/image-store'
import type { FuseStatus } from '../fuse/mount'
import type { CheckReport } from '../swarm/check'
import type { ChecksumStatus } from '../objects/local-store'

export interface Requests {
  status: { args: Record<string, never>, result: NodeStatus }
  'image.list': { args: Record<string, never>, result: ImageListEntry[] }
  /** uid, gid, mode: the file's (default 0, 0, 0600). */
  'image.create': { args: { name: string, size: number, objectSize?: number, copies?: number, uid?: number, gid?: number, mode?: number }, result: ImageInfo }
  'image.delete': { args: { name: string }, result: null }
  'image.resize': { args: { name: string, size: number }, result: ImageInfo }
  'image.rename': { args: { from: string, to: string }, result: ImageInfo }
  /** Without a tag, a snapshot of the source is taken first. */
  'image.clone': { args: { source: string, tag?: string, name: string }, result: ImageInfo }
  'image.flatten': { args: { name: string }, result: ImageInfo }
  'image.tree': { args: Record<string, never>, result: TreeNode[] }
  'snapshot.create': { args: { name: string, tag: string }, result: SnapshotInfo }
  'snapshot.list': { args: { name: string }, result: SnapshotInfo[] }
  'snapshot.delete': { args: { name: string, tag: string }, result: null }
  'snapshot.rollback': { args: { name: string, tag: string }, result: ImageInfo }
  stop: { args: { force?: boolean }, result: null }
  'cluster.token': { args: Record<string, never>, result: { token: string } }
  'node.list': { args: Record<string, never>, result: NodeInfo[] }
  /** `id`: a node id or a prefix of at least 8 hex digits; the result names it whole, with the view's epoch. */
  'node.admit': { args: { id: string }, result: { id: string, epoch: number } }
  'node.remove': { args: { id: string }, result: { id: string, epoch: number } }
  /** `missed`: members that did not take the new secret (restart them with the new token). */
  'cluster.rotate': { args: Record<string, never>, result: { token: string, missed: string[] } }
  /** Every member serves its copies that were behind as they are; `missed`: members that did not answer. */
  'cluster.forceStart': { args: Record<string, never>, result: { nodes: ForcedCopies[], missed: string[] } }
  /** Every copy of every object (of image `name` and its snapshots) read and compared; with repair, bad copies replaced. */
  check: { args: { name?: string, repair?: boolean }, result: CheckReport }
}

/** An image as `sheep image list` shows it: with what recovery still has to copy of it to this node, if anything. */
export type ImageListEntry = ImageInfo & { recovering?: { objects: number, etaSeconds: number | null } }

/** What one member of `sheep cluster force-start` serves as it is now: its copies that were behind newer ones. */
export interface ForcedCopies {
  node: string
  /** Object ids in hex. */
  objects: string[]
}

/** A member of the cluster view as `sheep node list` shows it. */
export interface NodeInfo {
  id: string
  address: string
  zone: string
  /** Capacity the node contributes (bytes): its share of objects. */
  weight: number
  capacity: number | null
  used: number | null
  /** 'self', 'up' (connected: tcp or swarm path), 'down', or 'candidate' (connected, waiting to be admitted). */
  state: string
}

export interface ClusterStatus {
  node: string
  epoch: number
  members: number
  reachable: number
  /** How this node reaches the others: direct TCP links (of them plain-authenticated), Hyperswarm only. */
  links: { direct: number, plain: number, swarm: number }
  /** Whether this node reaches a majority of its view (writes stop without one). */
  quorate: boolean
  /** Objects this node still has to copy before its replicas are current (after a view change). */
  recovering: number
  recovery: RecoveryProgress | null
  /** Every reachable member's store space summed (df on the mount shows it divided by the default copies); null if unknown. */
  raw: { capacity: number, free: number } | null
  /** Images that ask for more copies than the view has members. */
  degraded: string[]
  /**
   * Members that are down (gone, not out yet): they keep their objects, writes go to the other
   * replicas; since when (ms since the Unix epoch, the coordinator's clock).
   */
  down: Array<{ node: string, since: number }>
  /** Since the node started: reads that found its own copy damaged, copies healed from a replica, heals under way. */
  damaged: number
  healed: number
  healing: number
}

export type Op = keyof Requests
export const OPS: readonly Op[] = ['status', 'image.list', 'image.create', 'image.delete', 'image.resize', 'image.rename',
  'image.clone', 'image.flatten', 'image.tree', 'snapshot.create', 'snapshot.list', 'snapshot.delete', 'snapshot.rollback', 'stop',
  'cluster.token', 'node.list', 'node.admit', 'node.remove', 'cluster.rotate', 'cluster.forceStart', 'check']

export interface Request<K extends Op = Op> { op: K, args: Requests[K]['args'] }

export type Reply =
  | { type: 'progress', done: number, total: number }
  | { type: 'result', ok: true, result: unknown }
  | { type: 'result', ok: false, error: { code: ErrorCode, message: string } }

export interface NodeStatus {
  version: string
  pid: number
  store: string
  mount: string
  startedAt: number
  images: number
  openHandles: number
  /** Virtual bytes of all images. */
  provisioned: number
  /** Bytes of data objects the images own. */
  allocated: number
  capacity: number
  free: number
  objects: number
  /** Bytes the object files occupy on the store's disk. */
  storeBytes: number
  /** Damage found, one line each (unreadable images, unreadable index records). */
  problems: string[]
  /** What the store's checksums found since the node started (mismatches: reads of damaged chunks). */
  checksums: ChecksumStatus
  /** The background scrub of this node's store; null when it is off. */
  scrub: ScrubReport | null
  /** Objects a start-up set aside because no image points at them (the store's strays folder). */
  strays: { dir: string, objects: number, bytes: number }
  /** The FUSE session serving the mount (kernel or libfuse2), with the kernel one's requests by operation. */
  fuse: FuseStatus | null
  /** Null for a node running without a cluster. */
  cluster: ClusterStatus | null
}

/** Recovery on this node in the current view. */
export interface RecoveryProgress {
  epoch: number
  /** Objects and bytes copied to this node in this view so far, and bytes per second since the view began. */
  copied: number
  copiedBytes: number
  rate: number
  /** Objects still to copy, by image, and the seconds each may take at the rate so far (null: not known yet). */
  images: Array<{ image: string, objects: number, etaSeconds: number | null }>
  /** Seconds left at the rate so far; null while nothing has been copied to measure it by. */
  etaSeconds: number | null
}

export interface ScrubReport {
  /** Bytes per second at most. */
  rate: number
  running: boolean
  /** Objects and bytes checked in the pass under way (or the last one). */
  checked: number
  bytes: number
  /** When the last whole pass ended (ms since the epoch), and the damaged copies it found. */
  lastPassAt: number | null
  lastPassFound: number
  /** Each image's objects on this node: when a pass last walked them all, and what it found. */
  images: Array<{ image: string, checkedAt: number, found: number }>
}

/** Longest request line the daemon reads; anything longer is refused. */
export const MAX_REQUEST_BYTES = 64 * 1024
