// The images' write tokens on a cluster (src/cow/tokens.ts says what they are for). Image vid's
// token is a record in its token object (ObjectType.Token, METADATA copies): the holder's node id
// and a generation. A host takes it by compare-and-replace on that object, after asking the
// holder, if it is a member of the view, to write out what it kept of the image and let go
// (Op.Release). A holder that is no longer a member is not asked: like a crashed host, it loses
// what it had not written out. A holder that is a member but does not answer is waited out: the
// next view drops it, or it answers then.

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
  /** The generation of each token this host took last. */
  private readonly taken = new Map<number, number>()

  constructor (gateway: Gateway, cluster: Cluster) {
    this.gateway = gateway
    this.cluster = cluster
  }

  async take (vid: number, purpose: TokenPurpose): Promise<boolean> {
    const oid = tokenOid(vid)
    for (;;) {
      // The version first: if the record is replaced before it is read, the swap below fails.
      const version = (await this.gateway.stat(oid))?.version ?? 0
      let current: TokenRecord | null = null
      if (version > 0) {
        try {
          current = decode(tokenRecord, await this.gateway.readAll(oid))
        } catch (err) {
          if (err instanceof SheepError && err.code === 'ENOENT') continue // deleted meanwhile
          if (err instanceof RangeError) throw SheepError.corrupt(`the write token of image ${vid.toString(16)} is unreadable: ${err.message}`)
          throw err
        }
      }
      // No record: nobody took the token yet, or the image was deleted, which forgets it.
      if (current === null && await this.gateway.stat(inodeOid(vid)) === null) throw SheepError.stale(`image ${vid.toString(16)} was deleted on another host`)
      const mine = current !== null && current.holder === this.cluster.id && current.generation === this.taken.get(vid)
      if (mine) return false
      if (current !== null && current.holder !== this.cluster.id && !await this.release(current.holder, vid, purpose)) continue
      const generation = (current?.generation ?? 0) + 1
      try {
        await this.gateway.compareAndReplace(oid, encode(tokenRecord, { holder: this.cluster.id, generation }), version)
      } catch (err) {
        if (err instanceof SheepError && err.code === 'EAGAIN') continue // another host took it first
        throw err
      }
      this.taken.set(vid, generation)
      // No record: nobody ever held the token, nothing was changed under it.
      return current !== null
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
      if (err instanceof SheepError && err.code === 'EBUSY') {
        throw SheepError.busy(`image in use on node ${short(holder)} (${member.host}:${member.port}): ${err.message.replace(/^replica [0-9a-f]+: /, '')}`)
      }
      await this.gateway.afterFailure(epoch, err)
      return false
    }
  }
}
