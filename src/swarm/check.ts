// `sheep check`: every object's copies compared across the cluster, as Ceph's deep scrub does for
// a placement group. Each replica placement gives an object reads its copy whole and checks its
// checksums (Op.Verify); the copies are then compared by version and by a digest of their bytes.
// A copy is missing (the replica holds none), damaged (its bytes do not match their checksums,
// or its file is short or gone), behind (older than the newest, or marked missed), divergent
// (at the newest version, with other bytes than the copy chosen), or unreachable (its member did
// not answer). The copy chosen is the newest whole one; at one version, the bytes most copies
// hold, and on a tie the first replica's. With repair, each problem copy is replaced by the
// chosen one (Op.Heal) and checked again.
//
// An image being written while it is checked may show a copy behind for a moment: an object
// with problems is checked a second time before it is reported.

import { SheepError } from '../errors'
import type { LocalObjectStore } from '../objects/local-store'
import { type ObjectId, ObjectType, oidToHex, oidType, oidVid } from '../objects/oid'

export type CopyState = 'ok' | 'missing' | 'damaged' | 'behind' | 'divergent' | 'unreachable'

export interface CopyReport {
  node: string
  state: CopyState
  version?: number
  /** Why, for anything but ok. */
  detail?: string
  /** After a repair: what the copy is now. */
  repaired?: boolean
}

export interface ObjectReport { oid: string, copies: CopyReport[] }

export interface ImageReport {
  /** The image (or snapshot) the objects belong to, or what is left of its name. */
  image: string
  objects: number
  /** Objects with a copy that is not ok, after any repair. */
  problems: ObjectReport[]
  /** Copies repaired. */
  repaired: number
}

export interface CheckReport {
  objects: number
  images: ImageReport[]
  /** Copies not ok after the check (and the repair, if asked). */
  problems: number
  repaired: number
  /** Members that did not give their object lists: their copies were checked only where placement put them. */
  unlisted: string[]
}

/** A copy as a replica's Verify answered. */
export type Verified =
  | { state: 'ok', version: number, digest: number }
  | { state: 'behind', version: number }
  | { state: 'missing' | 'damaged' | 'unreachable', detail: string }

/** What the check needs of the cluster (src/node.ts gives it the gateway's links and this node's recovery). */
export interface CheckContext {
  members: () => string[]
  /** Object ids (no tombstones) a member holds. */
  list: (node: string) => Promise<ObjectId[]>
  /** Where placement puts oid's copies, first replica first. */
  replicasOf: (oid: ObjectId) => string[]
  verify: (node: string, oid: ObjectId) => Promise<Verified>
  /** Replaces node's copy of oid with source's. */
  heal: (node: string, oid: ObjectId, source: string) => Promise<void>
  /** A name for the image (or snapshot) vid; '' for objects of no image (the directory, tokens). */
  describe: (vid: number) => string
}

export interface CheckOptions {
  /** Only the objects of these vids (an image and its snapshots). */
  vids?: ReadonlySet<number>
  repair?: boolean
  progress?: (done: number, total: number) => void
}

/** Objects verified at once: each replica reads a whole object, so a few keep the disks busy enough. */
const PARALLEL = 4

export async function checkCluster (ctx: CheckContext, opts: CheckOptions = {}): Promise<CheckReport> {
  const members = ctx.members()
  const unlisted: string[] = []
  const all = new Set<ObjectId>()
  await Promise.all(members.map(async m => {
    try {
      for (const oid of await ctx.list(m)) all.add(oid)
    } catch {
      unlisted.push(m)
    }
  }))
  const oids = [...all].filter(oid => opts.vids === undefined || (oidType(oid) !== ObjectType.Meta && opts.vids.has(oidVid(oid)))).sort((a, b) => a < b ? -1 : a > b ? 1 : 0)
  const reports = new Map<ObjectId, CopyReport[]>()
  let done = 0
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < oids.length) {
      const oid = oids[next++] as ObjectId
      let copies = await checkObject(ctx, oid)
      if (copies.some(c => c.state !== 'ok')) copies = await checkObject(ctx, oid)
      if (opts.repair === true && copies.some(c => c.state !== 'ok')) copies = await repairObject(ctx, oid, copies)
      reports.set(oid, copies)
      opts.progress?.(++done, oids.length)
    }
  }
  await Promise.all(Array.from({ length: Math.min(PARALLEL, oids.length) }, worker))

  const images = new Map<string, ImageReport>()
  let problems = 0
  let repaired = 0
  for (const oid of oids) {
    const copies = reports.get(oid) as CopyReport[]
    const name = oidType(oid) === ObjectType.Meta || oidType(oid) === ObjectType.Token ? '(cluster records)' : ctx.describe(oidVid(oid)) || `(vid ${oidVid(oid).toString(16)})`
    const image = images.get(name) ?? { image: name, objects: 0, problems: [], repaired: 0 }
    images.set(name, image)
    image.objects++
    const fixed = copies.filter(c => c.repaired === true).length
    image.repaired += fixed
    repaired += fixed
    const bad = copies.filter(c => c.state !== 'ok').length
    problems += bad
    if (bad > 0 || fixed > 0) image.problems.push({ oid: oidToHex(oid), copies })
  }
  return { objects: oids.length, images: [...images.values()], problems, repaired, unlisted }
}

async function checkObject (ctx: CheckContext, oid: ObjectId): Promise<CopyReport[]> {
  const replicas = ctx.replicasOf(oid)
  const found = await Promise.all(replicas.map(async node => ({ node, v: await ctx.verify(node, oid) })))
  const chosen = choose(found)
  return found.map(({ node, v }): CopyReport => {
    if (v.state === 'ok') {
      if (chosen === null || (v.version === chosen.version && v.digest === chosen.digest)) return { node, state: 'ok', version: v.version }
      if (v.version < chosen.version) return { node, state: 'behind', version: v.version, detail: `version ${v.version}, the newest is ${chosen.version}` }
      return { node, state: 'divergent', version: v.version, detail: `other bytes than ${chosen.node.slice(0, 8)}'s copy at version ${v.version}` }
    }
    if (v.state === 'behind') return { node, state: 'behind', version: v.version, detail: 'marked as behind the others (it missed a change)' }
    return { node, state: v.state, detail: v.detail }
  })
}

/** The copy every other should hold: the newest whole one; at one version the bytes most hold, then the first replica's. */
function choose (found: Array<{ node: string, v: Verified }>): { node: string, version: number, digest: number } | null {
  const whole = found.filter((f): f is { node: string, v: Extract<Verified, { state: 'ok' }> } => f.v.state === 'ok')
  if (whole.length === 0) return null
  const newest = Math.max(...whole.map(f => f.v.version))
  const top = whole.filter(f => f.v.version === newest)
  const votes = new Map<number, number>()
  for (const f of top) votes.set(f.v.digest, (votes.get(f.v.digest) ?? 0) + 1)
  const most = Math.max(...votes.values())
  const pick = top.find(f => votes.get(f.v.digest) === most) as (typeof top)[number]
  return { node: pick.node, version: pick.v.version, digest: pick.v.digest }
}

async function repairObject (ctx: CheckContext, oid: ObjectId, copies: CopyReport[]): Promise<CopyReport[]> {
  const source = copies.find(c => c.state === 'ok')
  if (source === undefined) {
    return copies.map(c => c.state === 'ok' ? c : { ...c, detail: `${c.detail ?? c.state}; no whole copy to repair it from` })
  }
  const failures = new Map<string, string>()
  for (const c of copies) {
    if (c.state === 'ok' || c.state === 'unreachable') continue
    try {
      await ctx.heal(c.node, oid, source.node)
    } catch (err) {
      failures.set(c.node, (err instanceof SheepError || err instanceof Error) ? err.message : String(err))
    }
  }
  const after = await checkObject(ctx, oid)
  return after.map(c => {
    const before = copies.find(b => b.node === c.node)
    const wasBad = before !== undefined && before.state !== 'ok' && before.state !== 'unreachable'
    if (c.state === 'ok') return wasBad ? { ...c, repaired: true, detail: `was ${before.state}${before.detail === undefined ? '' : `: ${before.detail}`}` } : c
    const why = failures.get(c.node)
    return why === undefined ? c : { ...c, detail: `${c.detail ?? c.state}; the repair failed: ${why}` }
  })
}

/**
 * One host without a cluster: every object of its store read whole and checked. A damaged one
 * has no other copy to be repaired from.
 */
export async function checkLocal (store: Pick<LocalObjectStore, 'list' | 'verify'>, describe: (vid: number) => string, opts: CheckOptions = {}): Promise<CheckReport> {
  const oids: ObjectId[] = []
  for await (const info of store.list()) {
    if (info.removed === true) continue
    if (opts.vids === undefined || (oidType(info.oid) !== ObjectType.Meta && opts.vids.has(oidVid(info.oid)))) oids.push(info.oid)
  }
  const self = 'local'
  return await checkCluster({
    members: () => [self],
    list: async () => oids,
    replicasOf: () => [self],
    verify: async (_node, oid) => await verifyWith(async () => ({ behind: false, ...await store.verify(oid) })),
    heal: async () => { throw SheepError.unreachable('this node runs without a cluster: there is no other copy') },
    describe
  }, opts)
}

/** A Verify answer (or this node's own verify) as the check sees it. */
export async function verifyWith (fn: () => Promise<{ behind: boolean, version: number, digest: number }>): Promise<Verified> {
  try {
    const v = await fn()
    return v.behind ? { state: 'behind', version: v.version } : { state: 'ok', version: v.version, digest: v.digest }
  } catch (err) {
    const e = err instanceof SheepError ? err : SheepError.corrupt(String(err))
    if (e.code === 'ENOENT') return { state: 'missing', detail: 'the replica holds no copy' }
    if (e.code === 'EIO') return { state: 'damaged', detail: e.message }
    return { state: 'unreachable', detail: e.message }
  }
}
