// Bringing this node's replicas up to date when the view changes: a node that rejoins holds stale
// copies of what was written while it was away, and a node that placement gives new objects does
// not hold them yet.
//
// How this works: on each new view, before this node touches any object again, it asks every
// member for its list of (object, version) and marks as pending each object placement now gives
// it whose newest version is elsewhere. Any access to a pending object - a peer's write, a local
// read - first copies the whole object from the member with the newest version (later writes
// wait for that copy, so none is lost under it); the rest are copied in the background, a few at
// a time. Then the node drops its copies of objects placement no longer gives it, once every
// current replica holds them at least as new.
//
// Between views: a change this node's disk failed (EIO, ENOSPC) leaves its copy behind the
// others', which took it. The copy is marked missed at once, and every access to it here fails
// with EIO (readers go to another replica; the writer counts one acknowledgement less) until a
// whole copy replaces it: the writer's repair, which it sends once its writes to the object are
// done (./gateway.ts), or this recovery's copy at the next view. So a replica that missed a
// change never serves the bytes it missed, nor takes changes on top of them.
//
// A writer that leaves the view (it died, or was cut off) with changes it never synced may have
// left its replicas different at one version: two concurrent writes, each of which reached only
// one replica, count alike. A replica therefore remembers which member last changed each object
// since that member synced it, and lists a copy whose writer is no longer a member as uncertain:
// the plans then agree on one copy of it and the others take that one.
//
// A read that finds this node's copy damaged (bytes that do not match their checksums, a file
// short or gone) marks it missed as a failed change does, and the reader goes to another
// replica. This node then heals the copy itself (heal()): once no change of the object is under
// way here, it takes a whole copy from a replica at least as new as its own. A change refused
// meanwhile may still be on its way to that source: then the copy stays missed, and the writer,
// which knows it was refused, repairs it.

import { isDiskFailure, SheepError, toSheepError } from '../errors'
import { type ObjectId, oidToHex } from '../objects/oid'
import type { LocalObjectStore } from '../objects/local-store'
import type { ObjectInfo, ObjectStore, StoreUsage } from '../objects/types'
import { versionEpoch } from '../objects/versions'
import type { Cluster } from './cluster'
import { Op, type ObjectEntry, type Response } from './messages'
import type { Link } from './link'
import { listAll } from './replica'
import { isDown, liveMembers, type View } from './view'

/** Background copies in flight at once: recovery must leave the disk and network to guests. */
const PARALLEL_COPIES = 2
const STALE_ATTEMPTS = 100
/** Looks for copies this node may drop, while replicas are still copying them. */
const DROP_PASSES = 30

/** Recovery's waits. A simulator that runs thousands of clusters scales them down. */
export interface RecoveryTiming {
  /** Polls: for links to the members, and for a copy being written here to be done. */
  staleWaitMs: number
  /** Between two looks for copies this node may drop. */
  dropRetryMs: number
  /** Pauses before copies that failed are tried again: the first, doubling up to the last. */
  recopyFirstMs: number
  recopyMaxMs: number
  /** How long a round waits for links to every member before it asks them for their lists. */
  connectWaitMs: number
  /** A plan that lacked a member's list is made again after this, doubling up to the most. */
  planRetryMs: number
  planRetryMaxMs: number
  /** How long an access waits for the round's plan before it fails (a request's own timeout is 10 s). */
  guardWaitMs: number
  /** A request of recovery's own (a list, a copy) fails after this. */
  requestTimeoutMs: number
}

export const RECOVERY_TIMING: RecoveryTiming = {
  staleWaitMs: 20,
  dropRetryMs: 1000,
  recopyFirstMs: 1000,
  recopyMaxMs: 30_000,
  connectWaitMs: 5000,
  planRetryMs: 200,
  planRetryMaxMs: 3000,
  guardWaitMs: 8000,
  requestTimeoutMs: 30_000
}

export interface RecoveryOptions {
  /** Bytes per second of background copies (0: no bound). */
  rate?: number
  /** Replicas a change needs (0: a majority of the object's). */
  minCopies?: number
  timing?: Partial<RecoveryTiming>
}

interface Deferred { promise: Promise<void>, resolve: () => void, done: boolean }

function deferred (): Deferred {
  let resolve!: () => void
  const promise = new Promise<void>(r => { resolve = r })
  const d: Deferred = { promise, resolve: () => { d.done = true; resolve() }, done: false }
  return d
}

function settled (): Deferred {
  const d = deferred()
  d.resolve()
  return d
}
const EMPTY = new Uint8Array(0)

/** Pieces a copy of an object larger than one message is read in. */
const COPY_PIECE = 4 * 2 ** 20
/** A copy read in pieces is read again when the source's version moved meanwhile, this many times at most. */
const COPY_TRIES = 3

/**
 * A member's whole copy of oid, and its version: in one answer where it fits (ReadAll, as of one
 * moment), else in pieces between two Stats that must agree on the version (a change landed
 * between two pieces could tear the copy). The answer's error, if any, as a Response has it.
 */
export async function fetchWhole (link: Link, epoch: number, oid: ObjectId, timeoutMs = RECOVERY_TIMING.requestTimeoutMs): Promise<Pick<Response, 'error' | 'message' | 'data' | 'version'>> {
  const ask = async (op: Op, offset = 0, length = 0): Promise<Response> => await link.call({ epoch, op, oid, offset, length, version: 0, data: EMPTY }, timeoutMs)
  const whole = await ask(Op.ReadAll)
  if (whole.error !== 'EFBIG') return whole
  for (let tries = 0; tries < COPY_TRIES; tries++) {
    const before = await ask(Op.Stat)
    if (before.error !== '') return before
    const data = Buffer.alloc(before.size)
    for (let at = 0; at < before.size; at += COPY_PIECE) {
      const piece = await ask(Op.Read, at, Math.min(COPY_PIECE, before.size - at))
      if (piece.error !== '') return piece
      data.set(piece.data, at)
    }
    const after = await ask(Op.Stat)
    if (after.error !== '') return after
    if (after.version === before.version && after.size === before.size) return { error: '', message: '', data, version: before.version }
  }
  return { error: 'EAGAIN', message: `object ${oidToHex(oid)} kept changing while it was read in pieces`, data: EMPTY, version: 0 }
}

/** The local store recovery works on: an object store that can settle a copy a crash left in doubt. */
export type RecoveryStore = ObjectStore & Pick<LocalObjectStore, 'settle' | 'drop' | 'dropTombstone' | 'setMissed' | 'verify'>

/** The copy of an object recovery takes as the newest so far. */
interface Copy { node: string, version: number, uncertain: boolean, removed: boolean }

/**
 * Whether node's entry is newer than `known`: the higher version; at one version, the member with
 * the lower id, so that every member's plan picks the same copy (two copies at one version may
 * differ when a crash left one of them uncertain).
 */
function newer (node: string, e: ObjectEntry, known: Copy): boolean {
  return e.version > known.version || (e.version === known.version && node < known.node)
}

/**
 * Sources of oid, newest first, with those at the newest version taken in a turn that moves with
 * the object: a node catching up copies from every replica that has the newest copies, not all
 * from the one with the lowest id. (Copies in doubt keep the one order every plan agrees on.)
 */
function spread (oid: ObjectId, sorted: Copy[]): string[] {
  const top = sorted.filter(c => c.version === sorted[0]?.version).length
  const turn = top > 1 ? Number(oid % BigInt(top)) : 0
  return [...sorted.slice(turn, top), ...sorted.slice(0, turn), ...sorted.slice(top)].map(c => c.node)
}

export interface RecoveryStatus {
  epoch: number
  pending: number
  /** See copiedBytes. */
  copied: number
  dropped: number
  missed: number
  repaired: number
  buried: number
  collected: number
  /** Since the node started: reads that found this node's copy damaged, and those copies healed from a replica since. */
  damaged: number
  healed: number
  /** Damaged copies this node is healing now. */
  healing: number
  /**
   * Objects and bytes copied since this node last had nothing to copy, and when that copying
   * began (ms since the epoch): a view change in the middle of it carries them into the new round.
   */
  copiedBytes: number
  startedAt: number
}

export class Recovery {
  private readonly raw: RecoveryStore
  private readonly cluster: Cluster
  /** Replicas of oid; null while its image is not known here (created elsewhere a moment ago). */
  private readonly replicasOf: (oid: ObjectId) => string[] | null
  private readonly log: (line: string) => void
  /**
   * Object -> the other members holding a copy of it, newest first, for objects this node must
   * copy first: a copy that cannot be read (a crash left its record without its file) gives way
   * to the next.
   */
  private readonly pending = new Map<ObjectId, string[]>()
  /** Copies under way, each with the round whose plan asked for it. */
  private readonly copying = new Map<ObjectId, { round: number, run: Promise<void> }>()
  /** Changes under way here, by the round they were let in under, and plans waiting for earlier rounds' to end. */
  private readonly changesIn = new Map<number, number>()
  private changeWaiters: Array<() => void> = []
  /**
   * Resolved once the pending set of the current round is known; every access waits for it. A
   * round that finds its view outdated never resolves its own: the next round's start does.
   */
  private ready = settled()
  /** Members whose list the current round's plan still lacks. */
  private waitingFor: string[] = []
  private round = 0
  private planned = 0
  private stats: RecoveryStatus = { epoch: 0, pending: 0, copied: 0, dropped: 0, missed: 0, repaired: 0, buried: 0, collected: 0, damaged: 0, healed: 0, healing: 0, copiedBytes: 0, startedAt: 0 }
  /** Copies here that missed a change the other replicas took (see the note at the top). */
  private readonly missed = new Map<ObjectId, string>()
  private repairs = 0
  private damagedCount = 0
  /** Bytes per second background copies keep to (0: no bound), and what they copied since throttleFrom (0: not started). */
  private readonly rate: number
  private throttled = 0
  private throttleFrom = 0
  private healedCount = 0
  /** Changes of each object under way here. */
  private readonly changing = new Map<ObjectId, { count: number, idle: Array<() => void> }>()
  /** Changes of each missed copy refused since it was marked (see heal()). */
  private readonly refused = new Map<ObjectId, number>()
  /** Heals running or waiting to run. */
  private readonly healing = new Set<ObjectId>()

  /** Replicas of oid for the most copies any image may ask: a superset of its real replicas. */
  private readonly widest: (oid: ObjectId) => string[]
  /** A plan has listed this node's copies once: marks found after that are this process's own. */
  private started = false
  /** Object -> the member whose changes to this copy are not synced yet (see the note at the top). */
  private readonly unsynced = new Map<ObjectId, string>()

  /** Resolved once every image's copies are known (the node has loaded its images). */
  private readonly copiesKnown = deferred()
  /** The writers' --min-copies (0: a majority of an object's copies): how many down replicas may hold a write the others lack. */
  private readonly minCopies: number
  private readonly timing: RecoveryTiming
  /** The epoch in which an operator forced this node to serve objects whose newest copy may be on down members (forceStart). */
  private forcedEpoch = -1
  /** Objects refused in this epoch because too many of their replicas are down, for force-start to name. */
  private readonly waitedDown = new Set<ObjectId>()
  /** Objects this node holds no copy of while no current copy is listed (see plan), and why: refused until the next plan. */
  private readonly noCurrentCopy = new Map<ObjectId, string>()

  constructor (raw: RecoveryStore, cluster: Cluster, placement: { replicasOf: (oid: ObjectId) => string[] | null, widest: (oid: ObjectId) => string[] }, log: (line: string) => void, opts: RecoveryOptions = {}) {
    this.raw = raw
    this.rate = opts.rate ?? 0
    this.minCopies = opts.minCopies ?? 0
    this.timing = { ...RECOVERY_TIMING, ...opts.timing }
    this.cluster = cluster
    this.replicasOf = placement.replicasOf
    this.widest = placement.widest
    this.log = log
  }

  /**
   * Until the images are loaded, the copies of their data objects are unknown; the plan takes
   * every object this node might hold (the widest placement: placement's replicas for fewer
   * copies are a prefix of those for more), copies one before any access to it, and copies in
   * the background, or drops, only once copies are known.
   */
  imagesLoaded (): void {
    this.copiesKnown.resolve()
  }

  /**
   * The epoch this node's changes are stamped in (the store's version floor): that of the last
   * round whose plan began. A change let in under an earlier view and applied after this node
   * moved on keeps that view's stamp, as on the replicas that applied it in time; with the new
   * view's it looked newer than their later changes (found by the replication simulator, with
   * removes: an acknowledged write lost).
   */
  get stampEpoch (): number { return this.planned }

  /** The objects this node still has to copy in this round. */
  get pendingObjects (): ObjectId[] { return [...this.pending.keys()] }

  get status (): RecoveryStatus { return { ...this.stats, pending: this.pending.size, missed: this.missed.size, repaired: this.repairs, damaged: this.damagedCount, healed: this.healedCount, healing: this.healing.size } }

  /** Ends the current round: its plan retries and copies stop (the node, or a test, is done). */
  stop (): void {
    this.round++
    this.ready.resolve()
  }

  /** Starts a recovery round for view (a newer view starts a new round; the old one stops). */
  start (view: View): void {
    const round = ++this.round
    // A member flapping in the middle of a long copy must not restart the operator's progress,
    // nor the rate's budget (which would let a burst through at each view).
    const unfinished = this.pending.size > 0
    const { copied, copiedBytes, startedAt } = unfinished ? this.stats : { copied: 0, copiedBytes: 0, startedAt: Date.now() }
    if (!unfinished) this.throttleFrom = 0
    this.stats = { epoch: view.epoch, pending: 0, copied, dropped: 0, missed: 0, repaired: 0, buried: 0, collected: 0, damaged: 0, healed: 0, healing: 0, copiedBytes, startedAt }
    this.waitedDown.clear()
    const previous = this.ready
    const ready = deferred()
    this.ready = ready
    this.waitingFor = []
    previous.resolve() // its waiters look again and find this round's
    void this.run(view, round, ready)
  }

  /**
   * Plans the round, then copies and drops. A plan that cannot be made (a member did not answer
   * its list) is tried again until it can or a newer view comes: serving before it is known which
   * copy is the newest could serve, and then write on top of, a stale one.
   */
  private async run (view: View, round: number, ready: Deferred): Promise<void> {
    // Down in this view: the others move on without this node, which serves nothing (it is not
    // quorate) until a view lists it up again, and plans then.
    if (isDown(view, this.cluster.id)) return
    for (let wait = this.timing.planRetryMs; round === this.round; wait = Math.min(wait * 2, this.timing.planRetryMaxMs)) {
      try {
        if (!await this.plan(view, round)) return
      } catch (err) {
        if (round !== this.round) return
        this.log(`recovery for view ${view.epoch}: ${(err as Error).message}; I/O waits, trying again in ${wait} ms`)
        await new Promise(resolve => setTimeout(resolve, wait))
        continue
      }
      ready.resolve()
      try {
        await this.drain(round)
        await this.dropMoved(view, round)
      } catch (err) {
        // What is still pending is copied before it is used (guard).
        this.log(`recovery for view ${view.epoch}: ${(err as Error).message}`)
      }
      return
    }
  }

  /**
   * Waits until oid may be used here: after the round's plan, and after its copy if it is pending.
   * ENOTCONN when the plan is not made within timing.guardWaitMs (a member does not answer and the
   * view does not drop it): the caller's request fails clearly instead of hanging.
   */
  async guard (oid: ObjectId, round = this.round): Promise<void> {
    // Every I/O of this node's replica comes through here: no timer once the plan is made.
    if (this.ready.done && round === this.round) {
      if (this.pending.has(oid)) await this.copy(oid)
      this.sameRound(oid, round)
      this.refuseDownHeld(oid)
      return
    }
    const deadline = Date.now() + this.timing.guardWaitMs
    // A newer round ends the wait at once: its plan waits for the changes let in under this one.
    for (;;) {
      this.sameRound(oid, round)
      if (this.ready.done) break
      const left = deadline - Date.now()
      let timer: NodeJS.Timeout | undefined
      const timedOut = left <= 0 || await Promise.race([
        this.ready.promise.then(() => false),
        new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), left) })
      ]).finally(() => clearTimeout(timer))
      if (timedOut) {
        throw SheepError.unreachable(`object ${oidToHex(oid)}: recovery of view ${this.stats.epoch} cannot tell which copy is the newest yet` +
          (this.waitingFor.length > 0 ? ` (no list from ${this.waitingFor.map(id => id.slice(0, 8)).join(', ')})` : ''))
      }
    }
    if (this.pending.has(oid)) await this.copy(oid)
    this.sameRound(oid, round)
    this.refuseDownHeld(oid)
  }

  /**
   * Peering with down members (docs/ARCHITECTURE.md, "Down and out"): a change is acknowledged
   * once `needed` of an object's replicas took it, so the newest acknowledged change is on any
   * replicas - needed + 1 of them. With fewer of them up (the others down: a restart of the whole
   * cluster, two nodes lost at once), the newest copy may be on one that is down, and this
   * node's may be one that missed it (it was down itself then): no I/O until enough are back or
   * out, or an operator forces it (forceStart). ENOTCONN: the requester waits for the next view.
   */
  private refuseDownHeld (oid: ObjectId): void {
    const view = this.cluster.view
    if (view?.down === undefined || view.down.length === 0 || this.forcedEpoch === view.epoch) return
    const replicas = this.replicasOf(oid) ?? this.widest(oid)
    const down = replicas.filter(id => isDown(view, id))
    if (down.length === 0) return
    const needed = Math.min(replicas.length, this.minCopies > 0 ? this.minCopies : Math.floor(replicas.length / 2) + 1)
    if (replicas.length - down.length >= replicas.length - needed + 1) return
    if (!this.waitedDown.has(oid)) this.log(`object ${oidToHex(oid)}: ${down.length} of its ${replicas.length} replicas are down (${down.map(id => id.slice(0, 8)).join(', ')}), and its newest copy may be on them: no I/O to it until they are back or out, or \`sheep cluster force-start\``)
    this.waitedDown.add(oid)
    throw SheepError.unreachable(`object ${oidToHex(oid)}: ${down.length} of its ${replicas.length} replicas are down (${down.map(id => id.slice(0, 8)).join(', ')}), and its newest copy may be on them`)
  }

  /**
   * A request let in under one view must not be served under the next: there this node may not
   * be a replica of the object, and a change would go on top of a copy no plan made current, at a
   * version of the new epoch that makes it look the newest (found by the replication simulator:
   * a synced write lost). The sender tries again in the new view.
   */
  private sameRound (oid: ObjectId, round: number): void {
    if (round !== this.round) throw SheepError.stale(`object ${oidToHex(oid)}: the view changed while the request waited for recovery`)
  }

  /**
   * Runs a change of this node's copy, let in under the current round (see plan()); one that
   * repairs a copy that missed a change (`repair`) is let in though the copy is refused.
   */
  private async admitted<T> (oid: ObjectId, fn: () => Promise<T>, repair = false): Promise<T> {
    const round = this.round
    const flight = this.changing.get(oid) ?? { count: 0, idle: [] }
    flight.count++
    this.changing.set(oid, flight)
    try {
      return await this.counted(round, async () => {
        await this.guard(oid, round)
        if (!repair) {
          if (this.missed.has(oid)) this.refused.set(oid, (this.refused.get(oid) ?? 0) + 1)
          this.refuseMissed(oid)
        }
        return await fn()
      })
    } finally {
      if (--flight.count === 0) {
        this.changing.delete(oid)
        for (const wake of flight.idle.splice(0)) wake()
      }
    }
  }

  /** Runs a change of this node's store under round: the next round's plan waits for it (earlierChanges). */
  private async counted<T> (round: number, fn: () => Promise<T>): Promise<T> {
    this.changesIn.set(round, (this.changesIn.get(round) ?? 0) + 1)
    try {
      return await fn()
    } finally {
      const left = (this.changesIn.get(round) ?? 1) - 1
      if (left > 0) this.changesIn.set(round, left)
      else {
        this.changesIn.delete(round)
        for (const wake of this.changeWaiters.splice(0)) wake()
      }
    }
  }

  /**
   * The store's objects once no change let in under an earlier round is under way, as this
   * node's own plan waits (plan): another member's plan must not list a copy such a change is
   * about to move past (found by the replication simulator: an old view's first write landed on
   * two replicas after the third's plan had listed their older copies, so the third took no copy
   * and wrote the new view's changes on its own, at the same versions with other bytes).
   */
  private async * settledList (from?: ObjectId, until?: ObjectId): AsyncIterable<ObjectInfo> {
    await this.earlierChanges(this.round)
    yield * this.raw.list(from, until)
  }

  /** Resolves once no change let in under a round before `round` is under way. */
  private async earlierChanges (round: number): Promise<void> {
    while ([...this.changesIn.keys()].some(r => r < round)) await new Promise<void>(resolve => this.changeWaiters.push(resolve))
  }

  /** A change of oid failed on this node's disk: its copy is behind the replicas that took it. */
  private async miss (oid: ObjectId, err: unknown, what = 'a change failed here'): Promise<void> {
    const why = toSheepError(err).message
    if (!this.missed.has(oid)) this.log(`object ${oidToHex(oid)}: ${what} (${why}); this copy is not served until a replica's copy replaces it`)
    this.missed.set(oid, why)
    // Kept in its record too: after a restart the copy must not look current, nor be copied.
    await this.raw.setMissed([oid], true).catch(e => this.log(`object ${oidToHex(oid)}: cannot mark the copy missed in the index: ${(e as Error).message}`))
  }

  /** Member `writer` is about to change oid here. */
  changedBy (oid: ObjectId, writer: string): void {
    this.unsynced.set(oid, writer)
  }

  /** Member `writer` synced oids here: what it changed of them is durable on this copy. */
  syncedBy (oids: Iterable<ObjectId>, writer: string): void {
    for (const oid of oids) if (this.unsynced.get(oid) === writer) this.unsynced.delete(oid)
  }

  /**
   * The operator's override (`sheep cluster force-start`) when the newer copies will not come back:
   * this node's copies that were behind (marked missed, by a failed change or by a plan) are
   * served as they are from now on. Resolves with their ids; what was written to those objects
   * after they fell behind is lost unless a newer copy comes back after all (recovery takes it).
   * With `only`, just that object's copy (a change every replica failed: none is behind another).
   */
  async forceStart (only?: ObjectId): Promise<ObjectId[]> {
    // After the round's plan, which marks copies behind again from what it listed: forced before
    // it ended, a copy was refused again at once (as long as the plan can be made at all).
    let timer: NodeJS.Timeout | undefined
    await Promise.race([this.ready.promise, new Promise(resolve => { timer = setTimeout(resolve, this.timing.guardWaitMs) })])
    clearTimeout(timer)
    const waited = only === undefined ? [...this.waitedDown] : []
    if (only === undefined && this.cluster.view !== null) {
      // Objects whose newest copy may be on down members are served as they are here, in this view.
      this.forcedEpoch = this.cluster.view.epoch
      this.waitedDown.clear()
      if (waited.length > 0) this.log(`force-start: ${waited.length} objects whose newest copy may be on down members are served as they are: ${waited.map(oidToHex).join(', ')}`)
    }
    if (only === undefined) this.noCurrentCopy.clear()
    else this.noCurrentCopy.delete(only)
    const behind = new Set(only === undefined ? this.missed.keys() : this.missed.has(only) ? [only] : [])
    for await (const info of this.raw.list(only)) {
      if (only !== undefined && info.oid !== only) break
      if (info.missed === true) behind.add(info.oid)
    }
    if (behind.size === 0) return waited
    await this.raw.setMissed(behind, false)
    for (const oid of behind) this.missed.delete(oid)
    this.log(`force-start: ${behind.size} copies that were behind newer ones are served as they are: ${[...behind].map(oidToHex).join(', ')}`)
    return [...new Set([...behind, ...waited])]
  }

  /** Whether this copy of oid may differ from the others at its version: its writer left the view, or went down, unsynced. */
  inDoubt (oid: ObjectId): boolean {
    const writer = this.unsynced.get(oid)
    return writer !== undefined && (this.cluster.view?.members.some(m => m.id === writer) !== true || isDown(this.cluster.view, writer))
  }

  /**
   * A read found this node's copy of oid damaged (err: EIO from the store): it is served no more,
   * and healed from another replica (see the note at the top).
   */
  async damaged (oid: ObjectId, err: unknown): Promise<void> {
    this.damagedCount++
    await this.miss(oid, err, 'a read found this copy damaged')
    this.healLater(oid, 0)
  }

  /**
   * `sheep check`: this node's copy of oid read whole and checked (EIO if damaged, ENOENT if
   * none), or found behind. Finding it damaged does not heal it: that is `--repair`'s to do.
   */
  async verify (oid: ObjectId): Promise<{ behind: boolean, version: number, size: number, digest: number }> {
    await this.guard(oid)
    const info = await this.raw.stat(oid)
    if (info === null) throw SheepError.notFound(`object ${oidToHex(oid)}`)
    if (this.missed.has(oid)) return { behind: true, version: info.version, size: info.size, digest: 0 }
    return { behind: false, ...await this.raw.verify(oid) }
  }

  /**
   * `sheep check --repair`: replaces this node's copy of oid (damaged, missing, behind, or
   * different from the others at its version) with `source`'s whole copy, as a heal does.
   */
  async repairCopy (oid: ObjectId, source: string): Promise<void> {
    await this.guard(oid)
    if (source === this.cluster.id || this.replicasOf(oid)?.includes(source) !== true) throw SheepError.invalid(`object ${oidToHex(oid)}: member ${source.slice(0, 8)} is not another replica of it`)
    await this.miss(oid, SheepError.corrupt('sheep check found it differs from the copy it chose'), 'an operator\'s repair replaces this copy')
    if (!await this.heal(oid, [source], true)) throw SheepError.unreachable(`object ${oidToHex(oid)}: no copy to repair it from`)
  }

  private healLater (oid: ObjectId, ms: number): void {
    if (ms === 0 && this.healing.has(oid)) return
    this.healing.add(oid)
    const round = this.round
    const run = async (): Promise<void> => {
      let healed = false
      try {
        healed = await this.heal(oid)
      } catch (err) {
        this.log(`object ${oidToHex(oid)}: cannot heal this node's damaged copy yet: ${(err as Error).message}`)
      }
      // Another round's plan copies what is still missed.
      if (healed || round !== this.round || !this.missed.has(oid)) {
        this.healing.delete(oid)
        return
      }
      this.healLater(oid, Math.min(Math.max(ms * 2, this.timing.recopyFirstMs), this.timing.recopyMaxMs))
    }
    if (ms === 0) void run()
    else setTimeout(() => { void run() }, ms).unref()
  }

  /**
   * Replaces this node's missed copy of oid with a replica's at least as new, once no change of
   * it is under way here. True when done: healed, or repaired by the writer meanwhile, or left to
   * the writer's repair because a change was refused since (that change may not be in what the
   * source sent; the writer, which knows it was refused, repairs the copy once it is done).
   */
  private async heal (oid: ObjectId, from?: string[], repair = false): Promise<boolean> {
    const flight = this.changing.get(oid)
    if (flight !== undefined) await new Promise<void>(resolve => flight.idle.push(resolve))
    if (!this.missed.has(oid)) return true
    const refusedBefore = this.refused.get(oid) ?? 0
    const own = (await this.raw.stat(oid))?.version ?? 0
    const sources = (from ?? this.replicasOf(oid) ?? []).filter(n => n !== this.cluster.id)
    const why: string[] = []
    for (const source of sources) {
      const link = this.cluster.link(source)
      if (link === null) { why.push(`${source.slice(0, 8)}: not connected`); continue }
      const res = await fetchWhole(link, this.cluster.epoch, oid, this.timing.requestTimeoutMs)
      if (res.error !== '') { why.push(`${source.slice(0, 8)}: ${res.message}`); continue }
      // Older than this copy: a change this node took has not reached it yet.
      if (res.version < own) { why.push(`${source.slice(0, 8)}: its copy is older (version ${res.version} < ${own})`); continue }
      let healed = false
      await this.admitted(oid, async () => {
        if (!this.missed.has(oid) || (this.refused.get(oid) ?? 0) !== refusedBefore) return
        // Refused (ENOENT) when the writer removed the object meanwhile: the store keeps the
        // tombstone (a removed object once came back on its replicas: the replication simulator).
        await this.raw.replace(oid, res.data, res.version)
        if ((this.refused.get(oid) ?? 0) !== refusedBefore) {
          // Refused during the replace: the copy stays missed until the writer's repair lands.
          await this.raw.setMissed([oid], true)
          return
        }
        this.mended(oid)
        healed = true
      }, true)
      if (healed && repair) this.log(`object ${oidToHex(oid)}: this node's copy was replaced by ${source.slice(0, 8)}'s (sheep check --repair)`)
      else if (healed) {
        this.healedCount++
        this.log(`object ${oidToHex(oid)}: this node's damaged copy was healed from ${source.slice(0, 8)}'s`)
      }
      return true
    }
    throw SheepError.unreachable(`no replica holds a copy to heal it from${why.length > 0 ? ` (${why.join('; ')})` : ''}`)
  }

  /** A whole copy replaced oid here: it is current again. */
  private mended (oid: ObjectId): void {
    this.refused.delete(oid)
    if (!this.missed.delete(oid)) return
    this.repairs++
    this.log(`object ${oidToHex(oid)}: replaced by a current copy`)
  }

  private refuseMissed (oid: ObjectId): void {
    const why = this.missed.get(oid)
    if (why !== undefined) throw SheepError.corrupt(`object ${oidToHex(oid)}: this replica's copy missed a change (${why}) and is not repaired yet`)
    const none = this.noCurrentCopy.get(oid)
    if (none !== undefined) throw SheepError.corrupt(`object ${oidToHex(oid)}: no current copy is listed (${none})`)
  }

  /** A read of this node's copy failed: a damaged copy is healed; the error goes to the reader, which tries another replica. */
  private async readFailed (oid: ObjectId, err: unknown): Promise<never> {
    if (err instanceof SheepError && err.code === 'EIO' && !this.missed.has(oid)) await this.damaged(oid, err)
    throw err
  }

  /** The store this node's replica serves: every access waits for its object's recovery first. */
  guarded (): ObjectStore {
    const raw = this.raw
    const guard = async (oid: ObjectId): Promise<void> => await this.guard(oid)
    // A change this disk failed leaves the copy behind the replicas that took it.
    const change = async <T>(oid: ObjectId, fn: () => Promise<T>): Promise<T> => await this.admitted(oid, async () => {
      try {
        return await fn()
      } catch (err) {
        if (isDiskFailure(err)) await this.miss(oid, err)
        throw err
      }
    })
    const use = async (oid: ObjectId): Promise<void> => {
      await guard(oid)
      this.refuseMissed(oid)
    }
    return {
      async create (oid, size) { await change(oid, async () => await raw.create(oid, size)) },
      read: async (oid, offset, length, target, targetOffset) => {
        await use(oid)
        await raw.read(oid, offset, length, target, targetOffset).catch(async err => await this.readFailed(oid, err))
      },
      async write (oid, offset, data, base) { await change(oid, async () => await raw.write(oid, offset, data, base)) },
      async writeFresh (oid, size, offset, data) { await change(oid, async () => await raw.writeFresh(oid, size, offset, data)) },
      readAll: async oid => {
        await use(oid)
        return await raw.readAll(oid).catch(async err => await this.readFailed(oid, err))
      },
      replace: async (oid, data, version) => {
        // A whole copy at a replica's version is what repairs a copy that missed a change.
        if (version === undefined || !this.missed.has(oid)) return await change(oid, async () => await raw.replace(oid, data, version))
        await this.admitted(oid, async () => {
          await raw.replace(oid, data, version)
          this.mended(oid)
        }, true)
      },
      async compareAndReplace (oid, data, expected) { return await change(oid, async () => await raw.compareAndReplace(oid, data, expected)) },
      async truncate (oid, size, base) { await change(oid, async () => await raw.truncate(oid, size, base)) },
      remove: async oid => {
        // A remove makes a copy that missed a change agree with the replicas that removed it.
        const missed = this.missed.has(oid)
        if (!missed) {
          await change(oid, async () => await raw.remove(oid))
          // A read may have found the copy going meanwhile and marked it: a tombstone misses nothing.
          this.mended(oid)
          return
        }
        await this.admitted(oid, async () => {
          await raw.remove(oid)
          this.mended(oid)
        }, true)
      },
      async stat (oid) { await use(oid); return await raw.stat(oid) },
      list: (from, until): AsyncIterable<ObjectInfo> => this.settledList(from, until),
      async sync (oids) { await raw.sync(oids) },
      async usage (): Promise<StoreUsage> { return await raw.usage() }
    }
  }

  /**
   * Works out which objects this node must copy before it serves them in view. False when a member
   * answered from a newer epoch: this view is outdated and a round for the newer one will come.
   */
  private async plan (view: View, round: number): Promise<boolean> {
    // A change let in under an earlier view and still under way would land after this plan
    // listed the copy it changes.
    await this.earlierChanges(round)
    if (round !== this.round) return false
    this.planned = view.epoch
    this.pending.clear()
    this.noCurrentCopy.clear()
    const self = this.cluster.id
    const newest = new Map<ObjectId, Copy>()
    const copies = new Map<ObjectId, Copy[]>()
    // Down members are not asked: they took no change since they went down, and catch up when a
    // view lists them up again. (A copy that only down members hold at its newest version is not
    // waited for: docs/ARCHITECTURE.md, "Not built yet".)
    const others = liveMembers(view).filter(m => m.id !== self)
    // A node that just started has no links yet: give the members a moment to connect.
    const deadline = Date.now() + this.timing.connectWaitMs
    while (others.some(m => this.cluster.link(m.id) === null) && Date.now() < deadline && round === this.round) {
      await new Promise(resolve => setTimeout(resolve, this.timing.staleWaitMs))
    }
    const lists = await Promise.all(others.map(async m => ({ node: m.id, list: await this.listOf(m.id, view.epoch) })))
    if (lists.some(l => l.list === 'newer')) return false
    // A member that did not answer may hold the newest copy of anything: it is never taken to
    // hold nothing.
    this.waitingFor = lists.filter(l => l.list === null).map(l => l.node)
    if (this.waitingFor.length > 0) throw SheepError.unreachable(`no list from ${this.waitingFor.map(id => id.slice(0, 8)).join(', ')}`)
    // Copies known to be behind (here and on the others), by the highest version among them: no
    // source, but no copy at or below that version is current either.
    const behindAt = new Map<ObjectId, number>()
    const consider = (node: string, e: ObjectEntry): void => {
      if (e.behind === true) {
        behindAt.set(e.oid, Math.max(behindAt.get(e.oid) ?? -1, e.version))
        return
      }
      const copy = { node, version: e.version, uncertain: e.uncertain === true, removed: e.removed === true }
      const known = newest.get(e.oid)
      if (known === undefined || newer(node, e, known)) newest.set(e.oid, copy)
      if (node === self || copy.removed) return
      const all = copies.get(e.oid) ?? []
      all.push(copy)
      copies.set(e.oid, all)
    }
    /** Each member's Cluster.bootEpoch: its copies a crash left uncertain hold no change of a later epoch. */
    const bootOf = new Map<string, number>([[self, this.cluster.bootEpoch]])
    for (const { node, list } of lists) {
      if (list === 'newer' || list === null) continue
      bootOf.set(node, list.bootEpoch)
      for (const e of list.entries) consider(node, e)
    }
    const local = new Map<ObjectId, ObjectEntry>()
    /** This node's copies known to be behind, by version. */
    const knownBehind = new Map<ObjectId, number>()
    for await (const stored of this.raw.list()) {
      if (stored.missed === true) {
        // Behind: as if this node held none, until a current copy comes. One marked before this
        // process started is refused meanwhile; the newer copies it was behind may not be back.
        if (!this.started && !this.missed.has(stored.oid)) this.missed.set(stored.oid, 'it was behind the other replicas\' copies when this node stopped')
        knownBehind.set(stored.oid, stored.version)
        consider(self, { ...stored, behind: true })
        continue
      }
      const info = stored.removed !== true && this.inDoubt(stored.oid) ? { ...stored, uncertain: true } : stored
      local.set(info.oid, info)
      consider(self, info)
    }
    if (round !== this.round) return false
    this.started = true
    /** This node's copies found behind, each with the version it is behind. */
    const behind = new Map<ObjectId, number>()
    for (const [oid, best] of newest) {
      if (!this.widest(oid).includes(self)) continue
      const mine = local.get(oid)
      const behindVersion = behindAt.get(oid)
      // An uncertain copy may hold changes past its version, but none of an epoch after its
      // node's last run (found by the replication simulator: a node that crashed in epoch 1 came
      // back uncertain at an epoch-1 version, was settled, and replaced the copy, marked behind,
      // that held an acknowledged write of epoch 2).
      const mayHoldPast = best.uncertain && versionEpoch(behindVersion ?? 0) <= (bootOf.get(best.node) ?? 0)
      if (behindVersion !== undefined && best.version < behindVersion && !mayHoldPast) {
        // A copy known to be behind a newer one is newer than every current copy
        // listed: the newer copy is on a member that is not answering (down, out, or cut off),
        // and taking or serving an older copy would lose what the behind one holds (found by
        // the replication simulator: a node took a third replica's stale copy over its own,
        // marked behind, and a synced write was lost). Refused here too until a newer copy
        // comes, or force-start. (A copy a crash left uncertain may hold changes past its
        // recorded version: the newest one can be such a copy, and is settled as before.)
        const why = `a copy at version ${behindVersion}, itself behind a newer one, is newer than every copy listed`
        if (mine !== undefined && mine.removed !== true) {
          this.missed.set(oid, why)
          behind.set(oid, behindVersion)
        } else {
          // Nor may this node make a copy of its own by a first write.
          this.noCurrentCopy.set(oid, why)
        }
        continue
      }
      if (best.removed) {
        // Removed after this node's copy was made: the copy came back from a node that was away
        // (maybe this one) and must neither be served nor spread; one known behind neither
        // (its mark would keep it, and force-start could serve it).
        const held = mine !== undefined && mine.removed !== true ? mine.version : knownBehind.get(oid)
        if (held !== undefined && held <= best.version) {
          this.log(`view ${view.epoch}: object ${oidToHex(oid)} at version ${held} was removed at version ${best.version} (${best.node.slice(0, 8)}): removed here too`)
          await this.raw.remove(oid)
          this.missed.delete(oid)
          this.stats.buried++
        }
        continue
      }
      if (best.node === self) {
        // Every replica gets this node's copy: one a crash left in doubt becomes newer than the
        // others (whose bytes may differ at its version) before anyone reads it.
        if (mine?.uncertain === true) {
          // A copy that cannot be read (its file went) settles nothing: the others' plans find
          // it unreadable and give way to the next copy. It must not hold up every other object.
          await this.raw.settle(oid).catch(err => this.log(`view ${view.epoch}: cannot settle object ${oidToHex(oid)}: ${(err as Error).message}`))
          this.unsynced.delete(oid)
        }
        continue
      }
      if (mine === undefined || mine.removed === true || mine.version < best.version || mine.uncertain === true || best.uncertain) {
        // Copies that would be an improvement: newer than this node's, or as new when a crash left
        // either in doubt (all must then take the one the plans agree on, first in this order).
        // A copy known to be behind is no source, but no copy older than it, or than this node's
        // copy or tombstone, is one either: when the newer ones cannot be read, this node keeps
        // what it has (found by the replication simulator: a node whose newest source answered
        // ENOENT fell back to a third node's older copy, which that node was itself copying from
        // this one). At one version, a copy in doubt takes the one the plans agree on.
        const floor = mine === undefined ? (knownBehind.get(oid) ?? 0) - 1 : mine.removed === true ? mine.version
          : mine.uncertain === true || best.uncertain ? mine.version - 1 : mine.version
        const sorted = (copies.get(oid) ?? []).filter(c => c.version > floor).sort((a, b) => b.version - a.version || (a.node < b.node ? -1 : 1))
        if (sorted.length === 0) continue
        const doubt = best.uncertain || sorted.some(c => c.uncertain) || mine?.uncertain === true
        this.pending.set(oid, doubt ? sorted.map(c => c.node) : spread(oid, sorted))
        if (mine !== undefined && mine.removed !== true && mine.version < best.version) behind.set(oid, best.version)
      }
    }
    // A copy known to be behind whose newer copies no member answering now lists (they are on a
    // member that is down, or gone) is refused, not served as current: found by the replication
    // simulator, a copy that missed two synced writes was read after the member holding the newest
    // copy went down and the only other one was itself marked behind. It is served again once a
    // newer copy comes (or `sheep cluster force-start`).
    for (const oid of knownBehind.keys()) {
      if (this.pending.has(oid) || this.missed.has(oid) || newest.get(oid)?.removed === true) continue
      this.missed.set(oid, 'it is behind a newer copy that no member answering now holds')
    }
    // Copies known to be behind stay known so across a crash before they are copied: a restart
    // of every node must not make them look current where the newer copies do not come back.
    await this.raw.setMissed(behind.keys(), true, behind).catch(err => this.log(`view ${view.epoch}: cannot mark copies behind in the index: ${(err as Error).message}`))
    this.stats.pending = this.pending.size
    if (this.pending.size > 0) this.log(`view ${view.epoch}: ${this.pending.size} objects to copy to this node`)
    return true
  }

  /**
   * Background copies keep to the recovery rate (bytes per second; 0: none): after each, a
   * worker waits until the bytes copied so far in this round are what the rate allows. A copy
   * an access asks for (guard) does not wait.
   */
  private async throttle (bytes: number, round: number): Promise<void> {
    if (this.rate <= 0 || bytes === 0) return
    this.throttled += bytes
    const ahead = this.throttled / this.rate * 1000 - (Date.now() - this.throttleFrom)
    if (ahead > 0 && round === this.round) await new Promise(resolve => setTimeout(resolve, ahead).unref())
  }

  /** Copies what is still pending, a few at a time; stops when a newer round starts. */
  private async drain (round: number): Promise<void> {
    if (this.throttleFrom === 0) {
      this.throttled = 0
      this.throttleFrom = Date.now()
    }
    await this.copiesKnown.promise
    // Only the wide plan listed these: this node is not one of their replicas after all. (Those
    // of images not known here yet are copied when first used.)
    for (const oid of [...this.pending.keys()]) if (this.replicasOf(oid)?.includes(this.cluster.id) !== true) this.pending.delete(oid)
    // A copy that failed (a source that did not answer, or not in this view yet) is tried again
    // after the others, then again with backoff while this round lasts: left for its first use,
    // this copy stayed stale, and the copy placement moved away stayed too (the partition test
    // saw an object in 4 stores 30 s after a heal).
    for (let pause = this.timing.recopyFirstMs; ; pause = Math.min(2 * pause, this.timing.recopyMaxMs)) {
      const failed = new Set<ObjectId>()
      // One walk of the pending objects shared by the workers (a Map's iterator sees what is added
      // after it and skips what is deleted): finding each next one from the start cost O(n²).
      const walk = this.pending.keys()
      const take = (): ObjectId | undefined => {
        for (let r = walk.next(); r.done !== true; r = walk.next()) {
          if (this.copying.get(r.value)?.round !== round && !failed.has(r.value)) return r.value
        }
        return undefined
      }
      const worker = async (): Promise<void> => {
        for (;;) {
          if (round !== this.round) return
          const next = take()
          if (next === undefined) return
          try {
            const before = this.stats.copiedBytes
            await this.copy(next)
            await this.throttle(this.stats.copiedBytes - before, round)
          } catch (err) {
            // Copied before it is used (guard); the others go on.
            this.log(`recovery: object ${oidToHex(next)}: ${(err as Error).message}`)
            failed.add(next)
          }
        }
      }
      await Promise.all(Array.from({ length: PARALLEL_COPIES }, worker))
      if (failed.size === 0 || round !== this.round) return
      await new Promise(resolve => setTimeout(resolve, pause).unref())
    }
  }

  /**
   * Copies oid whole from the member with its newest version (once, however many ask). A member
   * whose copy cannot be read (EIO, or gone: ENOENT) gives way to the next newest; when none can,
   * this node keeps what it has. One that does not answer fails the copy, to be tried again.
   */
  private async copy (oid: ObjectId): Promise<void> {
    const round = this.round
    const running = this.copying.get(oid)
    if (running?.round === round) return await running.run
    const sources = this.pending.get(oid)
    if (sources === undefined) return
    const run = (async () => {
      const unreadable: string[] = []
      for (const source of sources) {
        const link = this.cluster.link(source)
        if (link === null) throw SheepError.unreachable(`recovery source ${source.slice(0, 8)} for ${oidToHex(oid)} is not connected`)
        const res = await fetchWhole(link, this.cluster.epoch, oid, this.timing.requestTimeoutMs)
        if (res.error === 'EIO' || res.error === 'ENOENT') {
          unreadable.push(`${source.slice(0, 8)}: ${res.message}`)
          continue
        }
        // A source whose view moved on while it waited is asked again, as any request would be.
        if (res.error !== '') throw new SheepError(res.error === 'ESTALE' ? 'ESTALE' : 'EIO', `copying ${oidToHex(oid)} from ${source.slice(0, 8)}: ${res.message}`)
        // A copy an earlier view's plan chose, whose answer came late, must not land on the
        // changes made since (found by the replication simulator: an acknowledged write of a later
        // view overwritten by the copy an earlier one asked for). The next plan waits for it.
        if (round !== this.round) throw SheepError.stale(`copying ${oidToHex(oid)}: the view changed while the copy was on its way`)
        await this.counted(round, async () => await this.raw.replace(oid, res.data, res.version))
        this.pending.delete(oid)
        this.unsynced.delete(oid)
        this.mended(oid)
        this.stats.copied++
        this.stats.copiedBytes += res.data.length
        return
      }
      this.pending.delete(oid)
      this.log(`recovery: no copy of ${oidToHex(oid)} newer than this node's could be read (${unreadable.join('; ')}); this node keeps what it has`)
      // And serves it, after a restart too (the plan marked it behind).
      if (!this.missed.has(oid)) await this.raw.setMissed([oid], false)
    })()
    const entry = { round, run }
    this.copying.set(oid, entry)
    try {
      await run
    } finally {
      if (this.copying.get(oid) === entry) this.copying.delete(oid)
    }
  }

  /**
   * Drops local copies placement no longer gives this node, once every replica has them; looks
   * again a little later while some replica is still copying.
   */
  private async dropMoved (view: View, round: number): Promise<void> {
    for (let pass = 0; pass < DROP_PASSES && round === this.round; pass++) {
      if (await this.dropPass(view, round)) return
      await new Promise(resolve => setTimeout(resolve, this.timing.dropRetryMs))
    }
  }

  /** One look; true when nothing is left to drop. */
  private async dropPass (view: View, round: number): Promise<boolean> {
    const self = this.cluster.id
    const moved: ObjectInfo[] = []
    const tombstones: ObjectInfo[] = []
    for await (const info of this.raw.list()) {
      if (info.removed === true) { tombstones.push(info); continue }
      const replicas = this.replicasOf(info.oid)
      // An object of an image not known here yet is kept: its copies are unknown.
      if (replicas !== null && !replicas.includes(self)) moved.push(info)
    }
    if (moved.length === 0 && !this.mayCollect(view, tombstones)) return true
    const held = new Map<string, Map<ObjectId, ObjectEntry>>()
    // A replica that is down holds nothing countable: its copies stay where they are until it is back.
    for (const m of liveMembers(view)) {
      if (m.id === self) continue
      const list = await this.listOf(m.id, view.epoch)
      if (list === 'newer') return true
      // A copy known to be behind holds nothing a moved copy may be dropped for.
      if (list !== null) held.set(m.id, new Map(list.entries.filter(e => e.behind !== true).map(e => [e.oid, e])))
    }
    await this.collectTombstones(view, round, tombstones, held)
    if (moved.length === 0) return true
    let left = 0
    for (const info of moved) {
      if (round !== this.round) return true
      const replicas = this.replicasOf(info.oid) ?? []
      const everywhere = replicas.length > 0 && replicas.every(r => (held.get(r)?.get(info.oid)?.version ?? -1) >= info.version)
      if (!everywhere) { left++; continue }
      await this.raw.drop(info.oid)
      this.unsynced.delete(info.oid)
      this.stats.dropped++
    }
    return left === 0
  }

  /**
   * Whether tombstones may be collected in view: there are some, and every node that was a member
   * of a view this node knows, and not removed, is a member of this one (a node that is away may
   * come back with a copy the tombstone makes old).
   */
  private mayCollect (view: View, tombstones: ObjectInfo[]): boolean {
    if (tombstones.length === 0) return false
    const now = new Set(view.members.map(m => m.id))
    return [...this.cluster.knownNodes()].every(id => now.has(id))
  }

  /** Drops each tombstone that every member has seen: none holds a copy older than it. */
  private async collectTombstones (view: View, round: number, tombstones: ObjectInfo[], held: Map<string, Map<ObjectId, ObjectEntry>>): Promise<void> {
    if (!this.mayCollect(view, tombstones)) return
    const others = view.members.filter(m => m.id !== this.cluster.id)
    if (others.some(m => !held.has(m.id))) return
    for (const t of tombstones) {
      if (round !== this.round) return
      const seen = others.every(m => {
        const e = (held.get(m.id) as Map<ObjectId, ObjectEntry>).get(t.oid)
        return e === undefined || e.removed === true || e.version > t.version
      })
      if (!seen) continue
      await this.raw.dropTombstone(t.oid, t.version)
      this.stats.collected++
    }
  }

  /**
   * A member's objects; null if it cannot answer, 'newer' if it is in a later epoch than ours. A
   * member still in an earlier epoch is asked again: it learns the view in a moment.
   */
  private async listOf (node: string, epoch: number): Promise<{ entries: ObjectEntry[], bootEpoch: number } | null | 'newer'> {
    for (let attempt = 0; attempt < STALE_ATTEMPTS; attempt++) {
      const link = this.cluster.link(node)
      if (link === null) return null
      try {
        const { entries, refused, bootEpoch } = await listAll(async from =>
          await link.call({ epoch, op: Op.List, oid: from, offset: 0, length: 0, version: 0, data: EMPTY }, this.timing.requestTimeoutMs))
        if (refused === null) return { entries, bootEpoch }
        if (refused.error !== 'ESTALE') return null
        if (refused.epoch > epoch) return 'newer'
      } catch {
        return null
      }
      // It learns the view from the commit broadcast in a moment.
      await new Promise(resolve => setTimeout(resolve, this.timing.staleWaitMs))
    }
    return null
  }
}
