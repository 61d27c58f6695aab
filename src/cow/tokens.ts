// The write token of each image (DESIGN.md "Replicated I/O"). On a cluster one host at a time does
// I/O through writable handles of an image or changes it (resize, snapshot, rename, ...): a host
// takes the token before either, and the host that held it first writes out the owner-table
// entries and header it kept, so the taker, which loads the inode again, misses nothing. That is
// what makes live migration safe: the destination's first I/O after the source stopped takes the
// token and sees every block the source allocated. A change refused by the holder because it has
// the image open for writing is EBUSY: resize or snapshot a running VM's disk on its host.
// The cluster's tokens are in src/swarm/write-tokens.ts; a one-host node has none.

export type TokenPurpose = 'io' | 'change'

export interface WriteTokens {
  /**
   * Makes this host the holder of image vid's token, after the holder has written out what it
   * kept (for 'change' it refuses with EBUSY while it has the image open for writing). Resolves
   * true when another host held the token since this host last did: what this host loaded of
   * the image may be stale. ESTALE when the image was deleted.
   */
  take: (vid: number, purpose: TokenPurpose) => Promise<boolean>
  /** This host let image vid's token go (another host is taking it): its next take must swap. */
  released: (vid: number) => void
  /** Marks image vid's token deleted before its objects go: a take from now on is ESTALE. */
  bury: (vid: number) => Promise<void>
  /** Deletes the token record, once the image's objects are gone. */
  forget: (vid: number) => Promise<void>
}

/** What this host knows of one image's token. */
export class TokenHold {
  /** This host holds the token. */
  held = false
  /** Moves on every release, so that a take a release overtook can tell. */
  turn = 0
  /** Another host held the token since this host loaded the inode: load it again before any I/O. */
  reloadOwed = false
  /** Why this image can no longer be used here (changed into a snapshot, or deleted, elsewhere). */
  lost: string | null = null
  /** Takes in progress, one per purpose. */
  readonly taking: Partial<Record<TokenPurpose, Promise<void>>> = {}
  /** I/O and changes started under the token and not finished: a release waits for them. */
  private users = 0
  private readonly idle: Array<() => void> = []

  get busy (): boolean { return this.users > 0 }

  enter (): void { this.users++ }

  leave (): void {
    if (--this.users === 0) for (const wake of this.idle.splice(0)) wake()
  }

  async drained (): Promise<void> {
    if (this.users > 0) await new Promise<void>(resolve => this.idle.push(resolve))
  }
}
