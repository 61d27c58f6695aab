import type { ObjectId } from './oid'

export interface ObjectInfo {
  oid: ObjectId
  /** Bumped by every write; the newest version wins when replicas disagree. */
  version: number
  /** Logical size in bytes; the object file is never shorter (a shorter one is corrupt). */
  size: number
  /**
   * A cluster replica's copy a crash left in doubt: writes were changing it, so its bytes may be
   * newer than its version says (LocalObjectStore.asReplica). Recovery settles it.
   */
  uncertain?: boolean
  /**
   * A tombstone, listed by a cluster replica only: the object was removed at this version, and a
   * copy of it at a lower version that comes back (from a node that was away) is not current.
   */
  removed?: boolean
  /**
   * A cluster replica's copy behind the others' (a change its disk failed, or a newer copy a
   * recovery plan found elsewhere: src/swarm/recovery.ts): not current until a whole copy
   * replaces it, and never a source for the others. Kept across restarts.
   */
  missed?: boolean
}

export interface StoreUsage {
  /** Bytes of the filesystem that holds the store. */
  capacity: number
  /** Bytes still free for the store on that filesystem. */
  free: number
}

/**
 * The object interface that src/cow builds on. One node's local store implements it now; the
 * cluster gateway in src/swarm implements the same interface with replicated I/O.
 * Errors are SheepErrors: ENOENT for a missing object, EIO for a corrupt or truncated one,
 * ENOSPC when the store is full.
 */
export interface ObjectStore {
  /** Creates an object of `size` bytes that reads as zeros. EEXIST if it exists. */
  create (oid: ObjectId, size: number): Promise<void>
  /**
   * The first write into a new block: makes the object `size` bytes that read as zeros, creating
   * it or emptying a copy a writer that died before its block was recorded left, then writes
   * `data` at `offset`. One round trip on a cluster, where create then write took two.
   */
  writeFresh (oid: ObjectId, size: number, offset: number, data: Uint8Array): Promise<void>
  /** Fills target[targetOffset, targetOffset + length) from the object's bytes at `offset`. */
  read (oid: ObjectId, offset: number, length: number, target: Uint8Array, targetOffset: number): Promise<void>
  /**
   * Writes in place; grows the object if the write ends past its size. `base` (a cluster replica,
   * from the image's writer): the change was made on the copy at that version and gives it the
   * next one in this epoch (./version-chain.ts); 0 or none: any version, the store counts one up.
   */
  write (oid: ObjectId, offset: number, data: Uint8Array, base?: number): Promise<void>
  /** The whole object. */
  readAll (oid: ObjectId): Promise<Buffer>
  /**
   * Replaces the whole content atomically (creating the object if needed). `version` is the
   * version to record instead of the next one: a recovery copy keeps its source's.
   */
  replace (oid: ObjectId, data: Uint8Array, version?: number): Promise<void>
  /**
   * Replaces the whole content only if the object's version is still `expected` (0: it must not
   * exist), else EAGAIN; resolves with the new version. How metadata changes stay atomic when
   * several hosts make them at once.
   */
  compareAndReplace (oid: ObjectId, data: Uint8Array, expected: number): Promise<number>
  /** Sets the object's size; bytes past a shrink are gone, bytes past a grow read as zeros. `base` as for write. */
  truncate (oid: ObjectId, size: number, base?: number): Promise<void>
  /** Deletes the object; a missing object is not an error. */
  remove (oid: ObjectId): Promise<void>
  stat (oid: ObjectId): Promise<ObjectInfo | null>
  /**
   * Every object; with `from`, only those whose id is at least `from` (one page of a long
   * listing), and with `until` only those whose id is below it (one image's data objects).
   */
  list (from?: ObjectId, until?: ObjectId): AsyncIterable<ObjectInfo>
  /** Makes everything written to these objects durable. */
  sync (oids: Iterable<ObjectId>): Promise<void>
  usage (): Promise<StoreUsage>
}
