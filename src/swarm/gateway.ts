// The object store that src/cow uses on a cluster: every object lives on the replicas placement
// gives it in the current view, and each call goes to them.
//
// How this works: a write (and create, truncate, remove, replace, sync) goes to every replica at
// once and succeeds only when every one of them has it; a read is served by this node's replica
// when it holds one, else by the next replica that answers. Every request carries this node's
// epoch; a replica in another epoch refuses it (ESTALE), a vanished one cannot answer (ENOTCONN):
// then the call waits for the next view, which places the object on live nodes, and runs again
// on its replicas there (writing the same bytes twice is harmless). A replica that a new view
// added and that lacks the object gets a whole copy from one that has it before the write goes
// on. A replica whose disk fails the change (EIO, ENOSPC) does not fail it while at least
// `minCopies` replicas took it: that replica refuses its copy until this node replaces it with a
// current one (./recovery.ts), and reads go to another replica meanwhile. A node that cannot
// reach a majority of its view refuses writes and serves no reads: a minority partition never
// accepts a write nor answers from a copy the majority moved past.

import { isDiskFailure, isErrorCode, SheepError, toSheepError } from '../errors'
import { type ObjectId, ObjectType, oidToHex, oidType } from '../objects/oid'
import type { ObjectInfo, ObjectStore, StoreUsage } from '../objects/types'
import { epochFloor, nextVersion } from '../objects/versions'
import type { Cluster } from './cluster'
import { decode, encode, healSource, MAX_DATA, Op, oidList, type Request, type Response, SYNC_BATCH, usage as usageCodec } from './messages'
import { changedTo, listAll } from './replica'
import { type ChainLink, WriteChains } from './write-chains'
import { isDown, liveMembers, type Member } from './view'

export interface GatewayOptions {
  /** Copies an object should have (capped by the view's size). */
  copiesOf: (oid: ObjectId) => number
  /** One request to one replica. */
  requestTimeoutMs?: number
  /** How long a call waits for a new view when a replica is gone, before it fails. */
  viewWaitMs?: number
  /**
   * Replicas that must take a change for it to succeed when others' disks fail it; 0: a majority
   * of the object's copies. Capped by the replicas the view has.
   */
  minCopies?: number
  /** Makes this node's copy of oid current as it is, though it missed a change (Recovery.forceStart). */
  serveAsItIs?: (oid: ObjectId) => Promise<void>
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000
export const DEFAULT_VIEW_WAIT_MS = 60_000
const STOPPING_VIEW_WAIT_MS = 3000
/** Pieces in which large objects move (messages are bounded by MAX_DATA). */
const PIECE = 4 * 2 ** 20
/** A replica whose epoch lags ours is told about the new view in a moment: ask again this soon. */
const STALE_RETRY_MS = 20
/** A repair of a copy that missed a change (its disk is full, say) is tried again after this, doubling up to the most. */
const REPAIR_RETRY_MS = 1000
const REPAIR_RETRY_MAX_MS = 30_000

const EMPTY = new Uint8Array(0)
/** Requests that go to every replica of an object, all of which must take them. */
const EVERY_REPLICA = new Set([Op.Create, Op.Write, Op.WriteFresh, Op.Truncate, Op.Remove, Op.Replace, Op.Sync])

type Fields = Partial<Omit<Request, 'id' | 'epoch' | 'op'>>

/** A change sent to one replica in one attempt, made on version `base` (0: any); resolves with the version it gave the copy. */
type Change = (target: string, epoch: number, attempt: number, base: number) => Promise<number | void>

/**
 * How a change is ordered among the writer's (./write-chains.ts): made on the tip, in `steps`
 * requests (a write in pieces); a learner of the tip (a first write); or outside any chain.
 */
type Chaining = { steps: number } | 'learn' | null

const UNCHAINED: ChainLink = { base: 0, settle: () => {} }

/**
 * Asked before every write of an object in an epoch: undefined to go on, or a promise to wait for
 * first (ESTALE: this host must not write it). Write tokens fence a holder this way (./write-tokens.ts).
 */
export type WriteFence = (oid: ObjectId, epoch: number) => Promise<void> | undefined

export class Gateway implements ObjectStore {
  private readonly local: ObjectStore
  private readonly cluster: Cluster
  private readonly opts: Required<GatewayOptions>
  /** How long a call waits for a new view; shorter once the node is stopping. */
  private viewWaitMs: number
  /** Compare-and-replace calls this node runs as primary, one at a time per object. */
  private readonly primaryQueue = new Map<ObjectId, Promise<void>>()
  private fence: WriteFence = () => undefined
  private stopped = false
  /** Changes of each object under way here, and the waiters for none (see repairLater()). */
  private readonly inFlight = new Map<ObjectId, { count: number, idle: Array<() => void> }>()
  /** Objects whose first change their replicas missed failed on every one of them (see repairNow()). */
  private readonly failedEverywhere = new Set<ObjectId>()
  /** Writes of each object under way here, by byte range (see write()). */
  private readonly writing = new Map<ObjectId, Array<{ offset: number, end: number, done: Promise<void> }>>()
  /** Objects being repaired: their changes wait. */
  private readonly repairs = new Map<ObjectId, Promise<void>>()
  /** Replicas whose disk failed a change of each object, to repair. */
  private readonly missedBy = new Map<ObjectId, Set<string>>()
  /** Objects whose repair is to be tried again after a wait. */
  private readonly repairsDue = new Set<ObjectId>()
  /**
   * Objects a change of which failed on some replica (a lost link: it may or may not have taken
   * it): their copies may differ at one version until even() makes them one.
   */
  private readonly uneven = new Set<ObjectId>()
  /** What every replica's copy of each object this host writes is at (writer-stamped versions). */
  private readonly chains = new WriteChains()

  constructor (local: ObjectStore, cluster: Cluster, opts: GatewayOptions) {
    this.local = local
    this.cluster = cluster
    this.opts = { requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS, viewWaitMs: DEFAULT_VIEW_WAIT_MS, minCopies: 0, serveAsItIs: async () => { throw SheepError.unreachable('this node has no recovery to serve a copy as it is') }, ...opts }
    this.viewWaitMs = this.opts.viewWaitMs
  }

  async create (oid: ObjectId, size: number): Promise<void> {
    this.chains.forget(oid)
    await this.everywhere(oid, async (target, epoch, attempt) => {
      try {
        await this.send(target, epoch, Op.Create, { oid, length: size })
      } catch (err) {
        // A retry after a view change finds the object where the first attempt made it.
        if (!(attempt > 1 && err instanceof SheepError && err.code === 'EEXIST')) throw err
      }
    })
  }

  async writeFresh (oid: ObjectId, size: number, offset: number, data: Uint8Array): Promise<void> {
    // Again after a view change: the same bytes over what the first try left (nothing else
    // writes a block before its first write is answered).
    await this.everywhere(oid, async (target, epoch) => {
      const first = data.subarray(0, PIECE)
      const version = (await this.send(target, epoch, Op.WriteFresh, { oid, length: size, offset, data: first })).version
      if (first.length === data.length) return version
      return await this.writeTo(target, epoch, oid, offset + first.length, data.subarray(first.length), version)
    }, WriteChains.chained(oid) ? 'learn' : null)
  }

  async read (oid: ObjectId, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void> {
    await this.fromOne(oid, async (node, epoch) => {
      if (node === this.cluster.id) return await this.local.read(oid, offset, length, target, targetOffset)
      for (let done = 0; done < length;) {
        const n = Math.min(PIECE, length - done)
        const res = await this.send(node, epoch, Op.Read, { oid, offset: offset + done, length: n })
        if (res.data.length !== n) throw SheepError.protocol(`a replica answered ${res.data.length} bytes for a read of ${n}`)
        target.set(res.data, targetOffset + done)
        done += n
      }
    })
  }

  async write (oid: ObjectId, offset: number, data: Uint8Array): Promise<void> {
    // Overlapping writes in flight at once (a guest may have them) go one after the other: sent
    // side by side, two replicas could apply them in opposite orders and keep different bytes
    // at one version. Others go side by side.
    const end = offset + data.length
    const ranges = this.writing.get(oid) ?? []
    this.writing.set(oid, ranges)
    const chaining = WriteChains.chained(oid) ? { steps: Math.max(1, Math.ceil(data.length / PIECE)) } : null
    const send = async (): Promise<void> => { await this.everywhere(oid, async (target, epoch, _attempt, base) => await this.writeTo(target, epoch, oid, offset, data, base), chaining) }
    const before = ranges.filter(r => r.offset < end && offset < r.end)
    // The common case, nothing overlapping under way, costs no promise beyond the write's own.
    const done = before.length === 0 ? send() : Promise.all(before.map(async r => await r.done.catch(() => {}))).then(send)
    const mine = { offset, end, done }
    ranges.push(mine)
    try {
      await mine.done
    } finally {
      ranges.splice(ranges.indexOf(mine), 1)
      if (ranges.length === 0 && this.writing.get(oid) === ranges) this.writing.delete(oid)
    }
  }

  async readAll (oid: ObjectId): Promise<Buffer> {
    // Whole in one answer where it fits, so that a replace cannot slip between a stat and a read.
    const whole = await this.fromOne(oid, async (node, epoch) => {
      if (node === this.cluster.id) return await this.local.readAll(oid)
      try {
        return Buffer.from((await this.send(node, epoch, Op.ReadAll, { oid })).data)
      } catch (err) {
        if (err instanceof SheepError && err.code === 'EFBIG') return null
        throw err
      }
    })
    if (whole !== null) return whole
    // Larger objects (inodes of huge images) are written in place, never replaced: pieces are safe.
    const info = await this.stat(oid)
    if (info === null) throw SheepError.notFound(`object ${oidToHex(oid)}`)
    const out = Buffer.alloc(info.size)
    await this.read(oid, 0, info.size, out, 0)
    return out
  }

  async replace (oid: ObjectId, data: Uint8Array): Promise<void> {
    if (data.length > MAX_DATA) throw SheepError.tooBig(`object ${oidToHex(oid)}: a whole-object replace of ${data.length} bytes is more than ${MAX_DATA}`)
    this.chains.forget(oid)
    await this.everywhere(oid, async (target, epoch) => { await this.send(target, epoch, Op.Replace, { oid, data }) })
    // Records such as the image directory: the other hosts look at once instead of at their next poll.
    if (oidType(oid) === ObjectType.Meta) this.cluster.notify(oid)
  }

  /**
   * An object's bytes and version as its primary replica has them, which is what
   * compareAndReplace compares against; null if it does not exist. The version is read first: if
   * the object is replaced in between, a compare-and-replace against it fails and is tried again.
   */
  async readAtPrimary (oid: ObjectId): Promise<{ version: number, data: Buffer } | null> {
    for (;;) {
      const epoch = this.cluster.epoch
      const primary = this.primaryOf(oid)
      try {
        if (primary === null) throw SheepError.unreachable(`object ${oidToHex(oid)}: every replica is down`)
        if (primary === this.cluster.id) {
          const info = await this.local.stat(oid)
          return info === null ? null : { version: info.version, data: await this.local.readAll(oid) }
        }
        await this.primaryLink(primary)
        const res = await this.send(primary, epoch, Op.ReadAll, { oid })
        return { version: res.version, data: Buffer.from(res.data) }
      } catch (err) {
        if (err instanceof SheepError && err.code === 'ENOENT') return null
        await this.afterFailure(epoch, err)
      }
    }
  }

  /**
   * Waits up to the request timeout for the link to the primary, which alone can answer: just
   * after a view commits it may still be on its way, and a request sent now would fail and wait
   * for a next view that a settled cluster does not make (a thawed holder's token read waited a
   * minute for it, and its late write failed with ENOTCONN instead of ESTALE).
   */
  private async primaryLink (primary: string): Promise<void> {
    if (this.cluster.link(primary) === null) await this.cluster.linkTo(primary, this.opts.requestTimeoutMs)
  }

  /** Runs on the object's primary replica, which serialises these per object and writes every replica. */
  async compareAndReplace (oid: ObjectId, data: Uint8Array, expected: number): Promise<number> {
    if (data.length > MAX_DATA) throw SheepError.tooBig(`object ${oidToHex(oid)}: a whole-object replace of ${data.length} bytes is more than ${MAX_DATA}`)
    for (;;) {
      const epoch = this.cluster.epoch
      const primary = this.primaryOf(oid)
      try {
        if (primary === null) throw SheepError.unreachable(`object ${oidToHex(oid)}: every replica is down`)
        if (primary !== this.cluster.id) await this.primaryLink(primary)
        const version = primary === this.cluster.id
          ? await this.asPrimary(oid, data, expected)
          : (await this.send(primary, epoch, Op.CompareReplace, { oid, data, version: expected })).version
        if (oidType(oid) === ObjectType.Meta) this.cluster.notify(oid)
        return version
      } catch (err) {
        await this.afterFailure(epoch, err)
      }
    }
  }

  /** The version of this replica's tombstone of oid; 0 when it holds none. */
  private async tombstoneVersion (oid: ObjectId): Promise<number> {
    for await (const info of this.local.list(oid)) return info.oid === oid && info.removed === true ? info.version : 0
    return 0
  }

  /** The primary's side of compareAndReplace: check its own version, then replace on every replica. */
  async asPrimary (oid: ObjectId, data: Uint8Array, expected: number): Promise<number> {
    const prev = this.primaryQueue.get(oid) ?? Promise.resolve()
    const run = prev.then(async () => {
      const current = (await this.local.stat(oid))?.version ?? 0
      if (current !== expected) throw SheepError.conflict(`object ${oidToHex(oid)} is at version ${current}, not ${expected}`)
      // Every replica records the new version, whatever it counted before: a replica whose count
      // strayed (a replace that reached it and not the others) agrees again. Above every version
      // of an earlier epoch: a replace an earlier primary got to one replica only is older. And
      // above the tombstone of a record removed before (a token record of a reused vid): from 0,
      // a replica that missed this replace would bury it with its tombstone at the next view.
      const version = nextVersion(Math.max(current, await this.tombstoneVersion(oid)), epochFloor(this.cluster.epoch))
      await this.everywhere(oid, async (target, epoch) => { await this.send(target, epoch, Op.Replace, { oid, data, version }) })
      return version
    })
    const tail = run.then(() => {}, () => {})
    this.primaryQueue.set(oid, tail)
    try {
      return await run
    } finally {
      if (this.primaryQueue.get(oid) === tail) this.primaryQueue.delete(oid)
    }
  }

  async truncate (oid: ObjectId, size: number): Promise<void> {
    await this.everywhere(oid, async (target, epoch, _attempt, base) => (await this.send(target, epoch, Op.Truncate, { oid, length: size, version: base })).version,
      WriteChains.chained(oid) ? { steps: 1 } : null)
  }

  async remove (oid: ObjectId): Promise<void> {
    this.chains.forget(oid)
    await this.everywhere(oid, async (target, epoch) => { await this.send(target, epoch, Op.Remove, { oid }) })
  }

  async stat (oid: ObjectId): Promise<ObjectInfo | null> {
    try {
      return await this.fromOne(oid, async (node, epoch) => {
        if (node === this.cluster.id) {
          const info = await this.local.stat(oid)
          if (info === null) throw SheepError.notFound(`object ${oidToHex(oid)}`)
          return info
        }
        const res = await this.send(node, epoch, Op.Stat, { oid })
        return { oid, version: res.version, size: res.size }
      })
    } catch (err) {
      if (err instanceof SheepError && err.code === 'ENOENT') return null
      throw err
    }
  }

  /** Every object of the cluster, once, at its newest version among the members that answer; none whose newest is a tombstone. */
  async * list (from = 0n, until?: ObjectId): AsyncIterable<ObjectInfo> {
    const seen = new Map<ObjectId, ObjectInfo>()
    for await (const info of this.local.list(from, until)) seen.set(info.oid, info)
    const epoch = this.cluster.epoch
    const others = this.liveMembers().filter(m => m.id !== this.cluster.id)
    const lists = await Promise.all(others.map(async m => (await listAll(async at => await this.send(m.id, epoch, Op.List, { oid: at }), from, until)).entries))
    for (const list of lists) {
      for (const info of list) {
        const known = seen.get(info.oid)
        if (known === undefined || known.version < info.version) seen.set(info.oid, info)
      }
    }
    for (const info of seen.values()) if (info.oid >= from && (until === undefined || info.oid < until) && info.removed !== true) yield info
  }

  async sync (oids: Iterable<ObjectId>): Promise<void> {
    const all = [...oids]
    if (all.length === 0) return
    // What is durable must be one copy: the one every replica holds.
    for (const oid of all) if (this.repairs.has(oid) || this.uneven.has(oid)) await this.even(oid)
    for (;;) {
      await this.inQuorum()
      // A holder that another host fenced off must not hear that its writes are durable: they
      // may have reached only replicas whose copies the other host's newer ones replaced.
      const epoch = await this.fenced(all)
      const byNode = new Map<string, ObjectId[]>()
      for (const oid of all) {
        for (const node of this.liveOf(this.replicasOf(oid))) {
          const list = byNode.get(node) ?? []
          list.push(oid)
          byNode.set(node, list)
        }
      }
      const results = await Promise.allSettled([...byNode].map(async ([node, list]) => {
        if (node === this.cluster.id) return await this.local.sync(list)
        // A Sync names at most SYNC_BATCH oids (the peer refuses a longer list).
        for (let i = 0; i < list.length; i += SYNC_BATCH) {
          await this.send(node, epoch, Op.Sync, { data: encode(oidList, list.slice(i, i + SYNC_BATCH)) })
        }
      }))
      const failed = results.find(r => r.status === 'rejected')
      if (failed === undefined) return
      await this.afterFailure(epoch, failed.reason)
    }
  }

  /** The cluster's raw capacity and free space: the sum over the members that answer. */
  async usage (): Promise<StoreUsage> {
    const total = await this.local.usage()
    const epoch = this.cluster.epoch
    const others = this.liveMembers().filter(m => m.id !== this.cluster.id)
    const answers = await Promise.allSettled(others.map(async m => decode(usageCodec, (await this.send(m.id, epoch, Op.Usage, {})).data)))
    for (const a of answers) {
      if (a.status === 'fulfilled') {
        total.capacity += a.value.capacity
        total.free += a.value.free
      }
    }
    return total
  }

  /**
   * The node is stopping: what it still writes out (headers, entries) waits only briefly for a
   * view, so that stopping the last nodes of a cluster, which may have no majority left, does
   * not hang.
   */
  stopping (): void {
    this.viewWaitMs = Math.min(this.viewWaitMs, STOPPING_VIEW_WAIT_MS)
    this.stopped = true
  }

  /** One member's store capacity and free space; null if it does not answer. */
  async memberUsage (id: string): Promise<StoreUsage | null> {
    if (id === this.cluster.id) return await this.local.usage()
    try {
      return decode(usageCodec, (await this.send(id, this.cluster.epoch, Op.Usage, {})).data)
    } catch {
      return null
    }
  }

  /** This host took or let go image vid's write token: what it knew of the image's copies may be out of date. */
  forgetImage (vid: number): void {
    this.chains.forgetImage(vid)
  }

  /** Sets what every write asks before it goes out in an epoch. */
  fenceWith (fence: WriteFence): void {
    this.fence = fence
  }

  /** The replicas of oid in the current view, primary first; some may be down (see liveOf). */
  replicasOf (oid: ObjectId): string[] {
    return this.cluster.placement.replicas(oid, this.opts.copiesOf(oid))
  }

  /** Those of replicas that are not down: the ones I/O goes to. */
  private liveOf (replicas: string[]): string[] {
    const view = this.cluster.view
    return view?.down === undefined ? replicas : replicas.filter(n => !isDown(view, n))
  }

  private liveMembers (): Member[] {
    const view = this.cluster.view
    return view === null ? [] : liveMembers(view)
  }

  /** The replica that serialises oid's compare-and-replace calls: its first that is not down; null when all are. */
  private primaryOf (oid: ObjectId): string | null {
    return this.liveOf(this.replicasOf(oid))[0] ?? null
  }

  /**
   * Replicas that must take a change of oid (others down, or their disks failing it): --min-copies,
   * else a majority of its copies; at most its copies the largest view this node knows gave it.
   * A view that lost members (they went out) does not lower that: changes wait for members to
   * come back or join (a cluster that never had that many, a founding node alone, writes to
   * the replicas it has).
   */
  private needed (oid: ObjectId, replicas: number): number {
    const copies = this.opts.copiesOf(oid)
    const wanted = this.opts.minCopies > 0 ? this.opts.minCopies : Math.floor(copies / 2) + 1
    return Math.min(wanted, Math.max(replicas, Math.min(copies, this.cluster.largestView)))
  }

  /** Writes data in pieces, each made on the version the one before gave the copy (the first on `base`); the version the last gave. */
  private async writeTo (target: string, epoch: number, oid: ObjectId, offset: number, data: Uint8Array, base: number): Promise<number> {
    for (let done = 0; ;) {
      const piece = data.subarray(done, done + PIECE)
      const fields = { oid, offset: offset + done, data: piece, version: base }
      try {
        base = (await this.send(target, epoch, Op.Write, fields)).version
      } catch (err) {
        if (!(err instanceof SheepError && err.code === 'ENOENT')) throw err
        // A replica this view added does not hold the object yet: copy it over, then write.
        await this.copyTo(target, epoch, oid)
        base = (await this.send(target, epoch, Op.Write, fields)).version
      }
      done += piece.length
      if (done >= data.length) return base
    }
  }

  /** Gives `target` a whole copy of oid, at its version, from another replica that holds it (none of `exclude`). */
  private async copyTo (target: string, epoch: number, oid: ObjectId, exclude: ReadonlySet<string> = new Set()): Promise<void> {
    const candidates = this.replicasOf(oid).filter(n => n !== target && !exclude.has(n))
    const sources = this.liveOf(candidates)
    // A replica that is down may hold the only other copy: that is not "no replica holds it".
    let failure: unknown = sources.length < candidates.length || sources.length === 0 ? SheepError.unreachable(`object ${oidToHex(oid)}: no current replica to copy it from is up`) : null
    for (const source of sources) {
      let bytes: Buffer
      let version: number
      try {
        // Larger than one message: the target takes the copy itself, in pieces (Recovery.repairCopy).
        const size = source === this.cluster.id ? (await this.local.stat(oid))?.size : (await this.send(source, epoch, Op.Stat, { oid })).size
        if (size !== undefined && size > MAX_DATA) {
          await this.send(target, epoch, Op.Heal, { oid, data: encode(healSource, source) })
          return
        }
        if (source === this.cluster.id) {
          version = (await this.local.stat(oid))?.version ?? 0
          bytes = await this.local.readAll(oid)
        } else {
          const info = await this.send(source, epoch, Op.Stat, { oid })
          const size = info.size
          version = info.version
          bytes = Buffer.alloc(size)
          for (let done = 0; done < size; done += PIECE) {
            const n = Math.min(PIECE, size - done)
            const res = await this.send(source, epoch, Op.Read, { oid, offset: done, length: n })
            bytes.set(res.data, done)
          }
        }
      } catch (err) {
        if (!(err instanceof SheepError && err.code === 'ENOENT')) failure = err
        continue
      }
      await this.send(target, epoch, Op.Replace, { oid, data: bytes, version })
      return
    }
    // ENOENT only when every replica asked said it has none.
    if (failure !== null) throw toSheepError(failure)
    throw SheepError.notFound(`object ${oidToHex(oid)} (no replica holds it)`)
  }

  /**
   * Runs fn on every replica of oid; when one fails because the view changed, again in the new
   * view. This node's own copy is changed only once the others took the change in this epoch: a
   * node that was frozen or cut off, and does not know yet that the view moved on without it, must
   * not change its copy with what the others refuse (its copy would then differ from theirs at
   * the same version, which recovery cannot tell).
   */
  private async everywhere (oid: ObjectId, fn: Change, chaining: Chaining = null): Promise<void> {
    // The common case, no repair and copies even, costs no promise.
    if (this.repairs.has(oid) || this.uneven.has(oid)) await this.even(oid)
    const flight = this.inFlight.get(oid) ?? { count: 0, idle: [] }
    this.inFlight.set(oid, flight)
    flight.count++
    try {
      await this.everywhereOnce(oid, fn, chaining)
    } finally {
      if (--flight.count === 0) {
        this.inFlight.delete(oid)
        for (const wake of flight.idle.splice(0)) wake()
      }
    }
  }

  /**
   * Waits until this node is a member of its view and reaches a majority of it. A view that still
   * leaves it out (the majority's, learned as a cut heals) is waited out too: requests sent in it
   * would be refused with EPERM, which the guest must not see for a node about to rejoin.
   */
  private async inQuorum (): Promise<void> {
    while (!this.cluster.quorate) await this.cluster.quorum(this.viewWaitMs)
  }

  /** The current epoch, once the fence lets this host change (or sync) every one of oids in it. */
  private async fenced (oids: ObjectId[]): Promise<number> {
    for (;;) {
      const epoch = this.cluster.epoch
      const waits = oids.map(oid => this.fence(oid, epoch)).filter(w => w !== undefined)
      if (waits.length === 0) return epoch
      await Promise.all(waits)
    }
  }

  private async everywhereOnce (oid: ObjectId, fn: Change, chaining: Chaining): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      await this.inQuorum()
      const epoch = await this.fenced([oid])
      const replicas = this.replicasOf(oid)
      // Down replicas take no change: they catch up when a view lists them up again (./recovery.ts).
      const live = this.liveOf(replicas)
      const needed = this.needed(oid, replicas.length)
      if (live.length < needed) {
        await this.afterFailure(epoch, SheepError.unreachable(replicas.length < needed
          ? `object ${oidToHex(oid)}: the view has ${replicas.length} of its replicas, and a change needs ${needed} (the cluster had ${this.cluster.largestView} members; --min-copies)`
          : `object ${oidToHex(oid)}: ${live.length} of its ${replicas.length} replicas are up, and a change needs ${needed}`))
        continue
      }
      // Sent again after a view change, a change is made on any version: recovery may have moved the copies.
      const link = chaining === null ? UNCHAINED
        : chaining === 'learn' || attempt > 1 ? await this.chains.learn(oid, epoch) : await this.chains.next(oid, epoch, chaining.steps)
      // Settled before a wait for the next view: the object's other changes must not wait behind it.
      let settled = false
      const settle = (versions: number[] | null): void => {
        if (settled) return
        settled = true
        link.settle(versions)
      }
      try {
        const others = live.filter(n => n !== this.cluster.id)
        const results = await Promise.allSettled(others.map(async target => await fn(target, epoch, attempt, link.base)))
        const answered: number[] = []
        const failed = new Map<string, unknown>()
        results.forEach((r, i) => {
          if (r.status === 'rejected') failed.set(others[i] as string, r.reason)
          else if (r.value !== undefined) answered.push(r.value)
        })
        const lost = [...failed.values()].find(err => !isDiskFailure(err))
        if (lost !== undefined) {
          this.uneven.add(oid)
          settle(null)
          await this.afterFailure(epoch, lost)
          continue
        }
        if (others.length < live.length) {
          try {
            const version = await fn(this.cluster.id, epoch, attempt, link.base)
            if (version !== undefined) answered.push(version)
          } catch (err) {
            if (!isDiskFailure(err)) {
              this.uneven.add(oid)
              settle(null)
              await this.afterFailure(epoch, err)
              continue
            }
            failed.set(this.cluster.id, err)
          }
        }
        // Copies counted up from versions that differed: they may differ in bytes too.
        if (link.base === 0 && chaining !== null && answered.some(v => v !== answered[0])) this.uneven.add(oid)
        if (failed.size === 0) {
          settle(answered)
          return
        }
        // The copies that missed it are repaired (below) from one that may be at another version
        // (failedEverywhere: the primary's as it is): the tip is learned again after.
        // Those whose disks failed it refuse the object until a current copy replaces theirs.
        if (failed.size === replicas.length && !this.missedBy.has(oid)) this.failedEverywhere.add(oid)
        const missed = this.missedBy.get(oid) ?? new Set()
        for (const node of failed.keys()) missed.add(node)
        this.missedBy.set(oid, missed)
        this.repairLater(oid, 0)
        if (live.length - failed.size < needed) throw toSheepError(failed.values().next().value)
        return
      } finally {
        settle(null)
      }
    }
  }

  /**
   * Waits for a repair of oid under way, and makes its copies one again after a change of it
   * failed on some replica (see uneven): a replica whose link went may have taken the change or
   * not, and the next change would go on top of either, leaving copies that differ in bytes at
   * one version, which no recovery can order (found by test/unit/replication-sim.test.ts). Once
   * no change of oid is under way here (new ones wait), the copy at the highest version (the
   * first in placement order among equals) replaces every other, at its version: counts are not
   * stamps, a copy recovery made while a write was on its way counts that write twice. What the
   * failed change wrote stays or goes with it: it was never acknowledged, and every acknowledged
   * change is in every copy.
   */
  private async even (oid: ObjectId): Promise<void> {
    for (;;) {
      const repair = this.repairs.get(oid)
      if (repair !== undefined) { await repair; continue }
      if (!this.uneven.has(oid)) return
      const run = (async () => {
        const flight = this.inFlight.get(oid)
        if (flight !== undefined) await new Promise<void>(resolve => flight.idle.push(resolve))
        for (;;) {
          await this.inQuorum()
          const epoch = await this.fenced([oid])
          try {
            await this.evenIn(oid, epoch)
            this.uneven.delete(oid)
            return
          } catch (err) {
            await this.afterFailure(epoch, err)
          }
        }
      })()
      this.repairs.set(oid, run.then(() => {}, () => {}))
      try {
        await run
      } finally {
        this.repairs.delete(oid)
      }
    }
  }

  private async evenIn (oid: ObjectId, epoch: number): Promise<void> {
    const replicas = this.liveOf(this.replicasOf(oid))
    const versions = await Promise.all(replicas.map(async node => {
      try {
        return node === this.cluster.id ? (await this.local.stat(oid))?.version ?? 0 : (await this.send(node, epoch, Op.Stat, { oid })).version
      } catch (err) {
        if (err instanceof SheepError && err.code === 'ENOENT') return 0
        throw err
      }
    }))
    const top = Math.max(...versions)
    if (top === 0) return
    const source = replicas[versions.indexOf(top)] as string
    const others = new Set(replicas.filter(node => node !== source))
    for (const node of others) await this.copyTo(node, epoch, oid, others)
    this.chains.set(oid, epoch, top)
  }

  /**
   * Replaces the copies of oid that missed a change with a current one, once no change of it is
   * under way here (changes wait meanwhile): a copy taken while a change is on its way to the
   * source could lack it. A repair that fails is tried again later; the copy is refused by its
   * own replica until then.
   */
  private repairLater (oid: ObjectId, ms: number): void {
    if (this.stopped || this.repairs.has(oid) || this.repairsDue.has(oid)) return
    if (ms === 0) return this.repairNow(oid, ms)
    this.repairsDue.add(oid)
    setTimeout(() => {
      this.repairsDue.delete(oid)
      this.repairNow(oid, ms)
    }, ms).unref()
  }

  private repairNow (oid: ObjectId, ms: number): void {
    if (this.stopped) return
    const run = (async () => {
      const flight = this.inFlight.get(oid)
      if (flight !== undefined) await new Promise<void>(resolve => flight.idle.push(resolve))
      const nodes = this.missedBy.get(oid) ?? new Set<string>()
      const epoch = this.cluster.epoch
      const replicas = this.replicasOf(oid)
      // Every replica failed the first change they missed (a one-copy image on a full disk, say),
      // and so refused every later one: none holds what another lacks, and none would be a
      // source. The primary's copy becomes the current one as it is, and the others take it.
      const primary = replicas[0]
      if (primary !== undefined && this.failedEverywhere.has(oid) && replicas.every(r => nodes.has(r))) {
        if (primary === this.cluster.id) await this.opts.serveAsItIs(oid)
        else await this.send(primary, epoch, Op.ForceStart, { oid, version: 1 })
        nodes.delete(primary)
      }
      for (const node of [...nodes]) {
        // A node the view no longer gives the object: recovery drops its copy. One that is down
        // catches up when it is back (its copy stays marked missed until then).
        if (!replicas.includes(node) || isDown(this.cluster.view, node)) { nodes.delete(node); continue }
        try {
          await this.copyTo(node, epoch, oid, nodes)
          nodes.delete(node)
        } catch (err) {
          // No longer this host's to write (its token moved): the new holder's writes find the copy refused and repair it.
          if (err instanceof SheepError && err.code === 'EPERM') { nodes.delete(node); continue }
          if (!(err instanceof SheepError && err.code === 'ENOENT')) continue
          // No current replica holds it: the change it missed was a remove.
          await this.send(node, epoch, Op.Remove, { oid }).then(() => nodes.delete(node), () => {})
        }
      }
      return nodes.size === 0
    })()
    const done = run.then(() => {}, () => {})
    this.repairs.set(oid, done)
    const again = Math.min(Math.max(ms * 2, REPAIR_RETRY_MS), REPAIR_RETRY_MAX_MS)
    run.then(finished => {
      this.repairs.delete(oid)
      if (!finished) return this.repairLater(oid, again)
      this.missedBy.delete(oid)
      this.failedEverywhere.delete(oid)
    }, () => {
      this.repairs.delete(oid)
      this.repairLater(oid, again)
    })
  }

  /**
   * Runs fn on one replica of oid, this node's own first, moving to the next while they fail. A
   * node cut off from the majority of its view serves no read either, not even from its own copy:
   * the majority may have changed the object since.
   */
  private async fromOne<T> (oid: ObjectId, fn: (node: string, epoch: number) => Promise<T>): Promise<T> {
    for (;;) {
      await this.inQuorum()
      const epoch = this.cluster.epoch
      const all = this.replicasOf(oid)
      const replicas = this.liveOf(all)
      const order = replicas.includes(this.cluster.id) ? [this.cluster.id, ...replicas.filter(n => n !== this.cluster.id)] : replicas
      let absent: unknown = null
      // Every replica down: it is served again when one comes back, or once they are out.
      let lost: unknown = replicas.length === 0 ? SheepError.unreachable(`object ${oidToHex(oid)}: every replica is down`) : null
      let failed: unknown = null
      for (const node of order) {
        try {
          return await fn(node, epoch)
        } catch (err) {
          if (err instanceof SheepError && err.code === 'ENOENT') absent = err
          else if (retryable(err)) lost ??= err
          // A disk that failed it (or a copy that missed a change): another replica may serve it.
          else if (isDiskFailure(err)) failed ??= err
          else throw err
        }
      }
      // A replica that may hold it is gone for now: ask again in the next view.
      if (lost !== null) {
        await this.afterFailure(epoch, lost)
        continue
      }
      // Some replica has it but cannot read it: that is not "it does not exist".
      throw failed ?? absent ?? SheepError.unreachable(`object ${oidToHex(oid)}: no replica in view ${epoch}`)
    }
  }

  /** After a replica failed: rethrows anything but a lost replica or a stale epoch, else waits for a view to retry in. */
  async afterFailure (epoch: number, reason: unknown): Promise<void> {
    const err = toSheepError(reason)
    if (!retryable(err)) throw err
    if (err.code === 'ESTALE' && this.cluster.epoch === epoch) {
      // The replica may be ahead (we learn its view in a moment) or behind (it learns ours).
      await Promise.race([this.cluster.nextView(epoch, this.viewWaitMs).catch(() => {}), sleep(STALE_RETRY_MS)])
      return
    }
    if (this.cluster.epoch !== epoch) return
    try {
      await this.cluster.nextView(epoch, this.viewWaitMs)
    } catch {
      throw SheepError.unreachable(`${err.message}; no new view came within ${this.viewWaitMs / 1000} s`)
    }
  }

  /** One request to one member (this node's own store for it), its error as a SheepError. */
  async send (target: string, epoch: number, op: Op, fields: Fields): Promise<Response> {
    if (target === this.cluster.id) return await this.sendLocal(epoch, op, fields)
    // A change needs every replica: one whose link is not up yet (the view just committed) is
    // waited for, else the change would wait for the next view, which a settled cluster does not
    // make (a minute, then ENOTCONN). A read goes on to the next replica instead.
    const link = this.cluster.link(target) ?? (EVERY_REPLICA.has(op) ? await this.cluster.linkTo(target, this.opts.requestTimeoutMs) : null)
    if (link === null) throw SheepError.unreachable(`replica ${target.slice(0, 8)} is not connected`)
    const res = await link.call({ epoch, op, oid: 0n, offset: 0, length: 0, version: 0, data: EMPTY, ...fields }, this.opts.requestTimeoutMs)
    if (res.error !== '') throw new SheepError(isErrorCode(res.error) ? res.error : 'EIO', `replica ${target.slice(0, 8)}: ${res.message}`)
    return res
  }

  /**
   * This node's own replica, without a round trip through the codec. Every local path is a
   * change, made in the epoch it was sent in as a peer's is (replica.ts): the writer's own copy is
   * changed after the others took the change, and in a newer view it would get that view's next
   * version (not the one the others gave it) on a copy placement may have moved away (found by
   * the replication simulator: a moved copy missed a later write at the same version, and was
   * read when placement brought the object back). ESTALE: the change is sent again in the new view.
   */
  private async sendLocal (epoch: number, op: Op, f: Fields): Promise<Response> {
    const oid = f.oid ?? 0n
    if (epoch !== this.cluster.epoch) throw SheepError.stale(`change of object ${oidToHex(oid)} for epoch ${epoch}, this node moved to epoch ${this.cluster.epoch}`)
    const res: Response = { id: 0, error: '', message: '', epoch, version: 0, size: 0, data: EMPTY }
    const base = f.version ?? 0
    switch (op) {
      case Op.Create: await this.local.create(oid, f.length ?? 0); break
      case Op.Write:
        await this.local.write(oid, f.offset ?? 0, f.data ?? EMPTY, base)
        res.version = await changedTo(this.local, oid, base, epoch)
        break
      case Op.WriteFresh:
        await this.local.writeFresh(oid, f.length ?? 0, f.offset ?? 0, f.data ?? EMPTY)
        res.version = await changedTo(this.local, oid, 0, epoch)
        break
      case Op.Replace: await this.local.replace(oid, f.data ?? EMPTY, f.version === undefined || f.version === 0 ? undefined : f.version); break
      case Op.Truncate:
        await this.local.truncate(oid, f.length ?? 0, base)
        res.version = await changedTo(this.local, oid, base, epoch)
        break
      case Op.Remove: await this.local.remove(oid); break
      default: throw new Error(`no local path for operation ${op}`)
    }
    return res
  }
}

function retryable (err: unknown): boolean {
  return err instanceof SheepError && (err.code === 'ENOTCONN' || err.code === 'ESTALE')
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}
