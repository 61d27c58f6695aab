// The replica side of the object protocol: a peer's request, checked against this node's epoch,
// carried out on the local object store.

import { SheepError } from '../errors'
import type { TokenPurpose } from '../cow/tokens'
import { ObjectType, oidToHex, oidType, oidVid } from '../objects/oid'
import type { ObjectStore } from '../objects/types'
import { decode, encode, LIST_PAGE, MAX_DATA, objectList, type ObjectEntry, Op, oidList, type Request, type Response, usage } from './messages'

export interface ReplicaContext {
  epoch: () => number
  quorate: () => boolean
  /** Carries out a compare-and-replace as the object's primary (./gateway.ts). */
  asPrimary: (oid: bigint, data: Uint8Array, expected: number) => Promise<number>
  /** Another host takes the write token of image vid, which this host may hold (./write-tokens.ts). */
  release: (vid: number, purpose: TokenPurpose) => Promise<void>
}

/**
 * The largest object a replica takes: an inode of the largest image with the smallest objects
 * (4 KiB header + 16 bytes for each of 2^32 blocks) is 64 GiB; this leaves room above it.
 */
export const MAX_OBJECT_BYTES = 2 ** 37

export function replicaHandler (local: ObjectStore, ctx: ReplicaContext): (req: Request) => Promise<Partial<Response>> {
  const { epoch, quorate } = ctx
  return async req => {
    // A node cut off from the majority of its view must not take writes: the majority may have
    // moved on without it.
    if (!quorate()) throw SheepError.unreachable('this replica cannot reach a majority of its view')
    const mine = epoch()
    // Another epoch may place this object elsewhere: the sender must first agree with us on the view.
    if (req.epoch !== mine) throw SheepError.stale(`request for epoch ${req.epoch}, this node is in epoch ${mine}`)
    const done = (fields: Partial<Response> = {}): Partial<Response> => ({ epoch: mine, ...fields })
    // Sizes are checked before the store sees them: a made-up size of 2^52 must not become a
    // catalog record, a file or an allocation.
    const end = req.op === Op.Write ? req.offset + req.data.length : req.op === Op.Read ? req.offset + req.length : req.op === Op.Create || req.op === Op.Truncate ? req.length : 0
    if (end > MAX_OBJECT_BYTES) throw SheepError.tooBig(`object range ends at ${end}, past the largest object (${MAX_OBJECT_BYTES} bytes)`)
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
        await local.write(req.oid, req.offset, req.data)
        return done()
      case Op.Truncate:
        await local.truncate(req.oid, req.length)
        return done()
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
          page.push(info)
        }
        return done({ data: encode(objectList, page), size: more ? 1 : 0 })
      }
      case Op.Sync:
        await local.sync(decode(oidList, req.data, 'sync list'))
        return done()
      case Op.Usage:
        return done({ data: encode(usage, await local.usage()) })
      case Op.Replace:
        // A version given is the one every replica records, so that they all agree on it.
        await local.replace(req.oid, req.data, req.version === 0 ? undefined : req.version)
        return done()
      case Op.Release:
        if (oidType(req.oid) !== ObjectType.Token) throw SheepError.invalid(`release of ${oidToHex(req.oid)}, which is not a token object`)
        await ctx.release(oidVid(req.oid), req.version === 1 ? 'change' : 'io')
        return done()
      case Op.CompareReplace:
        return done({ version: await ctx.asPrimary(req.oid, req.data, req.version) })
      default:
        throw SheepError.protocol(`unknown object operation ${req.op}`)
    }
  }
}

/**
 * Every object a replica lists, page by page (Op.List): ask(from) sends a List request for the
 * objects from oid `from` on. A page answered with an error ends the listing with that answer
 * as `refused`. A replica that answers one page with everything (size 0) ends it too.
 */
export async function listAll (ask: (from: bigint) => Promise<Response>): Promise<{ entries: ObjectEntry[], refused: Response | null }> {
  const entries: ObjectEntry[] = []
  let from = 0n
  for (;;) {
    const res = await ask(from)
    if (res.error !== '') return { entries, refused: res }
    const page = decode(objectList, res.data, 'object list')
    entries.push(...page)
    const last = page[page.length - 1]
    if (res.size !== 1 || last === undefined) return { entries, refused: null }
    // A page must move on, or a hostile or broken replica would keep us asking for ever.
    if (last.oid < from) throw SheepError.protocol('a List page went backwards')
    from = last.oid + 1n
  }
}
