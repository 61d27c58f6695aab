// The images' write tokens on a cluster (src/cow/tokens.ts says what they are for). Image vid's
// token is a record in its token object (ObjectType.Token, METADATA copies): the holder's node id,
// a generation and a deleted mark. A host takes it by compare-and-replace on that object, after
// asking the holder, if it is a member of the view, to write out what it kept of the image and
// let go (Op.Release). A holder that is no longer a member, or is down, is not asked: like a
// crashed host, it loses what it had not written out. A holder that is a member but does not answer is waited
// out: the next view drops it, or it answers then.
//
// Fencing: a host that held a token and was out of the view while another host took it without
// asking (it was frozen, or cut off) must not write after it thaws, neither the I/O it had admitted
// nor any later: its image handles get ESTALE (open it again). It learns so because a holder
// confirms its hold in every new epoch before it writes an object of the image in that epoch: by
// compare-and-replace, so that of a confirmation and a take without asking, both made from one
// version of the record, only one succeeds. Replicas refuse requests of older epochs, so what
// the thawed host sent before it learned the new view does not land either.

import { SheepError } from '../errors'
import { inodeOid, type ObjectId, ObjectType, oidType, oidVid, tokenOid } from '../objects/oid'
import type { TokenPurpose, WriteTokens } from '../cow/tokens'
import type { Cluster } from './cluster'
import type { Gateway } from './gateway'
import { short } from './link'
import { decode, encode, Op, type TokenRecord, tokenRecord } from './messages'
import { isDown } from './view'

export class ClusterTokens implements WriteTokens {
  private readonly gateway: Gateway
  private readonly cluster: Cluster
  /** Images whose token this host took and has not let go. */
  private readonly taken = new Set<number>()
  /** The epoch in which this host last made sure it holds each of those. */
  private readonly confirmed = new Map<number, number>()
  /** Confirmations under way: every write and sync of an image in a new epoch waits for the one. */
  private readonly confirming = new Map<number, Promise<void>>()

  constructor (gateway: Gateway, cluster: Cluster) {
    this.gateway = gateway
    this.cluster = cluster
  }

  async take (vid: number, purpose: TokenPurpose): Promise<boolean> {
    for (;;) {
      const epoch = this.cluster.epoch
      const { version, current } = await this.read(vid)
      if (current?.deleted === true) throw SheepError.stale(`image ${vid.toString(16)} was deleted on another host`)
      // No record: nobody took the token yet, or the image is gone (its record goes last).
      if (current === null && await this.gateway.stat(inodeOid(vid)) === null) throw SheepError.stale(`image ${vid.toString(16)} was deleted on another host`)
      if (this.taken.has(vid) && current !== null) {
        if (await this.reassert(vid, epoch, version, current)) return false
        continue
      }
      if (current !== null && current.holder !== this.cluster.id && !await this.release(current.holder, vid, purpose)) continue
      if (!await this.swap(vid, version, { holder: this.cluster.id, generation: (current?.generation ?? 0) + 1, deleted: false }, epoch)) continue
      return current !== null
    }
  }

  released (vid: number): void {
    this.taken.delete(vid)
    this.confirmed.delete(vid)
    this.gateway.forgetImage(vid)
  }

  /**
   * Called by the gateway before it writes object oid in epoch `epoch`: if the object is one of an
   * image whose token this host holds, makes sure it still does in that epoch (at most one read and
   * one swap of the record per image and epoch; nothing to wait for otherwise). ESTALE when another
   * host took the token without asking this one.
   */
  fence (oid: ObjectId, epoch: number): Promise<void> | undefined {
    const type = oidType(oid)
    if (type !== ObjectType.Data && type !== ObjectType.Inode) return undefined
    const vid = oidVid(oid)
    if (!this.taken.has(vid) || this.confirmed.get(vid) === epoch) return undefined
    let confirming = this.confirming.get(vid)
    if (confirming === undefined) {
      confirming = this.confirm(vid).finally(() => this.confirming.delete(vid))
      this.confirming.set(vid, confirming)
    }
    return confirming
  }

  private async confirm (vid: number): Promise<void> {
    // A release that came meanwhile waits for the write at hand before the taker swaps: go on.
    while (this.taken.has(vid) && this.confirmed.get(vid) !== this.cluster.epoch) {
      const epoch = this.cluster.epoch
      const { version, current } = await this.read(vid)
      if (!this.taken.has(vid)) return
      if (current === null || current.deleted) {
        this.released(vid)
        throw SheepError.stale(`image ${vid.toString(16)} was deleted on another host`)
      }
      await this.reassert(vid, epoch, version, current)
    }
  }

  /**
   * This host took vid's token and has not let it go: true once it made sure it still holds it in
   * `epoch`, false if the record moved meanwhile (read it again). ESTALE if another host holds it.
   * Only this host names itself the holder, so a record naming it is its own, whatever the
   * generation (a swap whose answer a view change lost moved it on).
   */
  private async reassert (vid: number, epoch: number, version: number, current: TokenRecord): Promise<boolean> {
    if (current.holder !== this.cluster.id) {
      this.released(vid)
      throw SheepError.stale(`its write token was taken over by node ${short(current.holder)} while this host was out of the cluster`)
    }
    if (this.confirmed.get(vid) === epoch) return true
    return await this.swap(vid, version, { ...current, generation: current.generation + 1 }, epoch)
  }

  async bury (vid: number): Promise<void> {
    this.released(vid)
    for (;;) {
      const { version, current } = await this.read(vid)
      if (current?.deleted === true) return
      if (await this.swap(vid, version, { holder: this.cluster.id, generation: (current?.generation ?? 0) + 1, deleted: true })) return
    }
  }

  async forget (vid: number): Promise<void> {
    this.released(vid)
    try {
      await this.gateway.remove(tokenOid(vid))
    } catch (err) {
      if (!(err instanceof SheepError && err.code === 'ENOENT')) throw err
    }
  }

  /** Image vid's token record as the token object's primary has it; null if no host took it yet. */
  async record (vid: number): Promise<TokenRecord | null> {
    return (await this.read(vid)).current
  }

  /**
   * The record and the version it was read at (0: there is none), as the token object's primary
   * has them: a swap is compared against the primary's version, and a replica whose count strayed
   * would make every swap against its version fail.
   */
  private async read (vid: number): Promise<{ version: number, current: TokenRecord | null }> {
    const found = await this.gateway.readAtPrimary(tokenOid(vid))
    if (found === null) return { version: 0, current: null }
    try {
      return { version: found.version, current: decode(tokenRecord, found.data) }
    } catch (err) {
      if (err instanceof RangeError) throw SheepError.corrupt(`the write token of image ${vid.toString(16)} is unreadable: ${err.message}`)
      throw err
    }
  }

  /**
   * Replaces the record if it is still at `version`; false if another host changed it first. A
   * record naming this host as the live holder makes it the holder, confirmed in `epoch` if the
   * swap was done in it.
   */
  private async swap (vid: number, version: number, record: TokenRecord, epoch?: number): Promise<boolean> {
    try {
      await this.gateway.compareAndReplace(tokenOid(vid), encode(tokenRecord, record), version)
      if (!record.deleted) {
        this.taken.add(vid)
        // Another host may have changed the image's objects since this one last wrote them.
        this.gateway.forgetImage(vid)
        if (epoch === this.cluster.epoch) this.confirmed.set(vid, epoch)
      }
      return true
    } catch (err) {
      if (err instanceof SheepError && err.code === 'EAGAIN') return false
      throw err
    }
  }

  /**
   * Asks holder to let image vid's token go. False when the view changed meanwhile (the holder
   * did not answer): the caller reads the token again.
   */
  private async release (holder: string, vid: number, purpose: TokenPurpose): Promise<boolean> {
    const epoch = this.cluster.epoch
    const member = this.cluster.view?.members.find(m => m.id === holder)
    // Like a holder out of the view, one that is down is not asked: it is fenced when it is back.
    if (member === undefined || isDown(this.cluster.view, holder)) return true
    try {
      await this.gateway.send(holder, epoch, Op.Release, { oid: tokenOid(vid), version: purpose === 'change' ? 1 : 0 })
      return true
    } catch (err) {
      const said = err instanceof SheepError ? err.message.replace(/^replica [0-9a-f]+: /, '') : ''
      if (err instanceof SheepError && err.code === 'EBUSY') throw SheepError.busy(`image in use on node ${short(holder)} (${member.host}:${member.port}): ${said}`)
      if (err instanceof SheepError && err.code === 'ENOENT') throw SheepError.stale(`image ${vid.toString(16)} was deleted on another host: ${said}`)
      await this.gateway.afterFailure(epoch, err)
      return false
    }
  }
}
