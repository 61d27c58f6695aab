// The replica side of the object protocol: a peer's request, checked against this node's epoch
// and against who may make it, carried out on the local object store.
//
// Who may: object requests come only from members of this node's view (a node that proved the
// secret but was not admitted, or was removed, gets EPERM). A change to an image's data or inode
// objects comes only from the host that holds the image's write token (./write-tokens.ts): a
// member that does not, tampered or confused, cannot overwrite or delete a disk another host
// writes. The holder of each image is looked up once per epoch and again when another member
// writes (the token moves within an epoch when a host asks the holder to let go). An image no
// host has taken the token of yet (just created, never opened for writing) has no holder: its
// data objects take no change, and its inode takes one from any member, as its creator writes it.

import { SheepError } from '../errors'
import type { TokenPurpose } from '../cow/tokens'
import { type ObjectId, ObjectType, oidToHex, oidType, oidVid } from '../objects/oid'
import type { ObjectStore } from '../objects/types'
import { chainVersion, versionEpoch } from '../objects/versions'
import { short } from './link'
import type { Recovery } from './recovery'
import { decode, encode, healSource, LIST_PAGE, MAX_DATA, objectList, type ObjectEntry, Op, oidList, type Request, type Response, type TokenRecord, usage, verifyAnswer } from './messages'

export interface ReplicaContext {
  epoch: () => number
  quorate: () => boolean
  /** Carries out a compare-and-replace as the object's primary (./gateway.ts). */
  asPrimary: (oid: bigint, data: Uint8Array, expected: number) => Promise<number>
  /** Another host takes the write token of image vid, which this host may hold (./write-tokens.ts). */
  release: (vid: number, purpose: TokenPurpose) => Promise<void>
  /** Whether node id is a member of this node's current view. */
  isMember: (id: string) => boolean
  /** Image vid's write-token record as the cluster has it now; null when no host took it yet. */
  tokenOf: (vid: number) => Promise<TokenRecord | null>
  /** Who changes and syncs which objects, and whether a copy is in doubt for it (./recovery.ts). */
  writers?: Pick<Recovery, 'changedBy' | 'syncedBy' | 'inDoubt'>
  /** Serves this node's copies that were behind (or only `only`'s) as they are (Recovery.forceStart); their ids. */
  forceStart?: (only?: ObjectId) => Promise<ObjectId[]>
  /** Checks and repairs of this node's copies for `sheep check` (./recovery.ts). */
  checks?: Pick<Recovery, 'verify' | 'repairCopy'>
  /** Cluster.bootEpoch, told with every List page: no copy a crash left uncertain here holds a change of a later epoch. */
  bootEpoch?: () => number
}

/** Requests that change an object. */
const CHANGES = new Set([Op.Create, Op.Write, Op.WriteFresh, Op.Truncate, Op.Remove, Op.Replace])
/** Changes made in the object's file, not by swapping in a whole new one. */
const IN_PLACE = new Set([Op.Write, Op.WriteFresh, Op.Truncate])
/** Holders remembered; past this many images the memory starts over (a lookup is one read). */
const HOLDERS_KEPT = 4096

/**
 * The largest object a replica takes: an inode of the largest image with the smallest objects
 * (4 KiB header + 16 bytes for each of 2^32 blocks) is 64 GiB; this leaves room above it.
 */
export const MAX_OBJECT_BYTES = 2 ** 37

export function replicaHandler (local: ObjectStore, ctx: ReplicaContext): (req: Request, from: string) => Promise<Partial<Response>> {
  const { epoch, quorate } = ctx
  const mayChange = writeGate(ctx)
  return async (req, from) => {
    // A node cut off from the majority of its view must not take writes: the majority may have
    // moved on without it.
    if (!quorate()) throw SheepError.unreachable('this replica cannot reach a majority of its view')
    const mine = epoch()
    // Another epoch may place this object elsewhere: the sender must first agree with us on the view.
    if (req.epoch !== mine) throw SheepError.stale(`request for epoch ${req.epoch}, this node is in epoch ${mine}`)
    if (!ctx.isMember(from)) throw new SheepError('EPERM', `node ${short(from)} is not a member of view ${mine}`)
    const done = (fields: Partial<Response> = {}): Partial<Response> => ({ epoch: mine, ...fields })
    // Sizes are checked before the store sees them: a made-up size of 2^52 must not become a
    // catalog record, a file or an allocation.
    const end = req.op === Op.Write ? req.offset + req.data.length
      : req.op === Op.Read ? req.offset + req.length
        : req.op === Op.Create || req.op === Op.Truncate ? req.length
          : req.op === Op.WriteFresh ? Math.max(req.length, req.offset + req.data.length) : 0
    if (end > MAX_OBJECT_BYTES) throw SheepError.tooBig(`object range ends at ${end}, past the largest object (${MAX_OBJECT_BYTES} bytes)`)
    // A change made on a version of a later epoch than this one was never made: refused, not
    // waited for (which would end with this copy marked missed).
    if ((req.op === Op.Write || req.op === Op.Truncate) && req.version > 0 && versionEpoch(req.version) > mine) throw SheepError.invalid(`a change made on version ${req.version}, of epoch ${versionEpoch(req.version)}, in epoch ${mine}`)
    if (CHANGES.has(req.op)) {
      await mayChange(req.oid, from, mine)
      // The view may have moved on while the token was read: the change must reach the store
      // (and recovery's guard, which tells the rounds of views apart) in the epoch it was sent in.
      if (epoch() !== mine) throw SheepError.stale(`request for epoch ${mine}, this node moved to epoch ${epoch()}`)
    }
    // Changes that go into the file in place: until the writer syncs, a replica's copy may hold
    // some of them and not others. A remove leaves nothing of the bytes to doubt.
    if (IN_PLACE.has(req.op)) ctx.writers?.changedBy(req.oid, from)
    else if (req.op === Op.Remove) ctx.writers?.syncedBy([req.oid], from)
    switch (req.op) {
      case Op.Create:
        await local.create(req.oid, req.length)
        return done()
      case Op.Read: {
        if (req.length > MAX_DATA) throw SheepError.invalid(`read of ${req.length} bytes, more than ${MAX_DATA}`)
        const data = Buffer.allocUnsafe(req.length)
        await local.read(req.oid, req.offset, req.length, data, 0)
        return done({ data })
      }
      case Op.ReadAll: {
        const info = await local.stat(req.oid)
        if (info === null) throw SheepError.notFound(`object ${req.oid.toString(16)}`)
        // Refused before the bytes are read into memory, and again after (a replace may run between).
        if (info.size > MAX_DATA) throw SheepError.tooBig(`object of ${info.size} bytes, more than ${MAX_DATA}: read it in pieces`)
        const data = await local.readAll(req.oid)
        if (data.length > MAX_DATA) throw SheepError.tooBig(`object of ${data.length} bytes, more than ${MAX_DATA}: read it in pieces`)
        return done({ data, size: data.length, version: info.version })
      }
      case Op.Write:
        await local.write(req.oid, req.offset, req.data, req.version)
        return done({ version: await changedTo(local, req.oid, req.version, mine) })
      case Op.WriteFresh:
        await local.writeFresh(req.oid, req.length, req.offset, req.data)
        return done({ version: await changedTo(local, req.oid, 0, mine) })
      case Op.Truncate:
        await local.truncate(req.oid, req.length, req.version)
        return done({ version: await changedTo(local, req.oid, req.version, mine) })
      case Op.Remove:
        await local.remove(req.oid)
        return done()
      case Op.Stat: {
        const info = await local.stat(req.oid)
        if (info === null) throw SheepError.notFound(`object ${req.oid.toString(16)}`)
        return done({ version: info.version, size: info.size })
      }
      case Op.List: {
        // One page: the objects from oid `req.oid` on, in oid order, at most LIST_PAGE of them
        // (a whole store could be past the message limit); `size` 1 says more follow.
        const page: ObjectEntry[] = []
        let more = false
        for await (const info of local.list(req.oid)) {
          if (info.oid < req.oid) continue // a store that ignored `from`
          if (page.length === LIST_PAGE) { more = true; break }
          // A copy known to be behind is no source, but says that no copy at its version or below is current.
          if (info.missed === true) page.push({ oid: info.oid, version: info.version, size: info.size, behind: true })
          else page.push(info.removed !== true && ctx.writers?.inDoubt(info.oid) === true ? { ...info, uncertain: true } : info)
        }
        return done({ data: encode(objectList, page), size: more ? 1 : 0, version: ctx.bootEpoch?.() ?? 0 })
      }
      case Op.Sync: {
        const oids = decode(oidList, req.data, 'sync list')
        await local.sync(oids)
        ctx.writers?.syncedBy(oids, from)
        return done()
      }
      case Op.Usage:
        return done({ data: encode(usage, await local.usage()) })
      case Op.Replace:
        // A version given is the one every replica records, so that they all agree on it.
        await local.replace(req.oid, req.data, req.version === 0 ? undefined : req.version)
        return done()
      case Op.ForceStart:
        if (ctx.forceStart === undefined) throw SheepError.unreachable('this node is still starting')
        return done({ data: encode(oidList, await ctx.forceStart(req.version === 1 ? req.oid : undefined)) })
      case Op.Verify: {
        if (ctx.checks === undefined) throw SheepError.unreachable('this node is still starting')
        const v = await ctx.checks.verify(req.oid)
        return done({ version: v.version, size: v.size, data: encode(verifyAnswer, { behind: v.behind, digest: v.digest }) })
      }
      case Op.Heal:
        if (ctx.checks === undefined) throw SheepError.unreachable('this node is still starting')
        await ctx.checks.repairCopy(req.oid, decode(healSource, req.data, 'heal source'))
        return done()
      case Op.Release:
        if (oidType(req.oid) !== ObjectType.Token) throw SheepError.invalid(`release of ${oidToHex(req.oid)}, which is not a token object`)
        await ctx.release(oidVid(req.oid), req.version === 1 ? 'change' : 'io')
        return done()
      case Op.CompareReplace:
        // Only records shared by every host change this way; an image's objects belong to its token's holder.
        if (oidType(req.oid) !== ObjectType.Meta && oidType(req.oid) !== ObjectType.Token) throw SheepError.invalid(`compare-and-replace of ${oidToHex(req.oid)}, which is not a directory or token object`)
        return done({ version: await ctx.asPrimary(req.oid, req.data, req.version) })
      default:
        throw SheepError.protocol(`unknown object operation ${req.op}`)
    }
  }
}

/**
 * The check that a change to an image's data or inode object comes from the image's token holder:
 * resolves when `from` may make it in `epoch`, EPERM when it may not.
 */
function writeGate (ctx: ReplicaContext): (oid: ObjectId, from: string, epoch: number) => Promise<void> {
  const holders = new Map<number, { epoch: number, holder: string }>()
  return async (oid, from, epoch) => {
    const type = oidType(oid)
    if (type !== ObjectType.Data && type !== ObjectType.Inode) return
    const vid = oidVid(oid)
    const known = holders.get(vid)
    if (known?.epoch === epoch && known.holder === from) return
    const record = await ctx.tokenOf(vid)
    if (record === null) {
      // Nobody took the token yet: its creator writes the new inode; data objects are written
      // only under a token.
      if (type === ObjectType.Inode) return
      throw new SheepError('EPERM', `node ${short(from)} changed object ${oidToHex(oid)} of image ${vid.toString(16)}, whose write token no host holds`)
    }
    if (holders.size >= HOLDERS_KEPT) holders.clear()
    holders.set(vid, { epoch, holder: record.holder })
    if (record.holder !== from) throw new SheepError('EPERM', `node ${short(from)} changed object ${oidToHex(oid)} of image ${vid.toString(16)}, whose write token node ${short(record.holder)} holds`)
  }
}

/**
 * The version a change made on version `base` (0: any) gave oid's copy, which the writer compares
 * across replicas (./write-chains.ts): every replica computes it alike for a change made on a
 * version; one counted here is read back.
 */
export async function changedTo (local: ObjectStore, oid: ObjectId, base: number, epoch: number): Promise<number> {
  return base > 0 ? chainVersion(base, epoch) : (await local.stat(oid))?.version ?? 0
}

/**
 * Every object a replica lists, page by page (Op.List): ask(from) sends a List request for the
 * objects from oid `from` on. A page answered with an error ends the listing with that answer
 * as `refused`. A replica that answers one page with everything (size 0) ends it too. With
 * `start` and `until`, the objects from `start` and below `until` (the pages stop past it).
 */
export async function listAll (ask: (from: bigint) => Promise<Response>, start = 0n, until?: bigint): Promise<{ entries: ObjectEntry[], refused: Response | null, bootEpoch: number }> {
  const entries: ObjectEntry[] = []
  let from = start
  for (;;) {
    const res = await ask(from)
    if (res.error !== '') return { entries, refused: res, bootEpoch: 0 }
    const page = decode(objectList, res.data, 'object list')
    entries.push(...(until === undefined ? page : page.filter(e => e.oid < until)))
    const last = page[page.length - 1]
    if (res.size !== 1 || last === undefined || (until !== undefined && last.oid >= until - 1n)) return { entries, refused: null, bootEpoch: res.version }
    // A page must move on, or a hostile or broken replica would keep us asking for ever.
    if (last.oid < from) throw SheepError.protocol('a List page went backwards')
    from = last.oid + 1n
  }
}
