// The images' write tokens on a cluster (src/cow/tokens.ts says what they are for). Image vid's
// token is a record in its token object (ObjectType.Token, METADATA copies): the holder's node id,
// a generation and a deleted mark. A host takes it by compare-and-replace on that object, after
// asking the holder, if it is a member of the view, to write out what it kept of the image and
// let go (Op.Release). A holder that is no longer a member is not asked: like a crashed host, it
// loses what it had not written out. A holder that is a member but does not answer is waited
// out: the next view drops it, or it answers then.

import { SheepError } from '../errors'
import { inodeOid, tokenOid } from '../objects/oid'
import type { TokenPurpose, WriteTokens } from '../cow/tokens'
import type { Cluster } from './cluster'
import type { Gateway } from './gateway'
import { short } from './link'
import { decode, encode, Op, type TokenRecord, tokenRecord } from './messages'

export class ClusterTokens implements WriteTokens {
  private readonly gateway: Gateway
  private readonly cluster: Cluster
  /** The generation of each token this host holds, as it took it; gone once it let the token go. */
  private readonly taken = new Map<number, number>()

  constructor (gateway: Gateway, cluster: Cluster) {
    this.gateway = gateway
    this.cluster = cluster
  }

  async take (vid: number, purpose: TokenPurpose): Promise<boolean> {
    for (;;) {
      const { version, current } = await this.read(vid)
      if (current?.deleted === true) throw SheepError.stale(`image ${vid.toString(16)} was deleted on another host`)
      // No record: nobody took the token yet, or the image is gone (its record goes last).
      if (current === null && await this.gateway.stat(inodeOid(vid)) === null) throw SheepError.stale(`image ${vid.toString(16)} was deleted on another host`)
      if (current !== null && current.holder === this.cluster.id && current.generation === this.taken.get(vid)) return false
      if (current !== null && current.holder !== this.cluster.id && !await this.release(current.holder, vid, purpose)) continue
      const generation = (current?.generation ?? 0) + 1
      if (!await this.swap(vid, version, { holder: this.cluster.id, generation, deleted: false })) continue
      this.taken.set(vid, generation)
      return current !== null
    }
  }

  released (vid: number): void {
    this.taken.delete(vid)
  }

  async bury (vid: number): Promise<void> {
    this.taken.delete(vid)
    for (;;) {
      const { version, current } = await this.read(vid)
      if (current?.deleted === true) return
      if (await this.swap(vid, version, { holder: this.cluster.id, generation: (current?.generation ?? 0) + 1, deleted: true })) return
    }
  }

  async forget (vid: number): Promise<void> {
    this.taken.delete(vid)
    try {
      await this.gateway.remove(tokenOid(vid))
    } catch (err) {
      if (!(err instanceof SheepError && err.code === 'ENOENT')) throw err
    }
  }

  /** The record and the version it was read at (0: there is none). */
  private async read (vid: number): Promise<{ version: number, current: TokenRecord | null }> {
    const oid = tokenOid(vid)
    for (;;) {
      // The version first: if the record is replaced before it is read, a swap against it fails.
      const version = (await this.gateway.stat(oid))?.version ?? 0
      if (version === 0) return { version, current: null }
      try {
        return { version, current: decode(tokenRecord, await this.gateway.readAll(oid)) }
      } catch (err) {
        if (err instanceof SheepError && err.code === 'ENOENT') continue // removed meanwhile
        if (err instanceof RangeError) throw SheepError.corrupt(`the write token of image ${vid.toString(16)} is unreadable: ${err.message}`)
        throw err
      }
    }
  }

  /** Replaces the record if it is still at `version`; false if another host changed it first. */
  private async swap (vid: number, version: number, record: TokenRecord): Promise<boolean> {
    try {
      await this.gateway.compareAndReplace(tokenOid(vid), encode(tokenRecord, record), version)
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
    if (member === undefined) return true
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
