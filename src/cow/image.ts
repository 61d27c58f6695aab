// One image or snapshot: guest I/O over data objects, thin allocation, copy-on-write, resize, sync.
//
// How this works: entry idx of the owner table (./owner-table.ts) says which data object holds
// block idx. A write to a hole creates the object and records the entry (a 16-byte write), then
// writes in place. A write to a block the image shares with a snapshot copies up: it creates the
// image's own object, copies only the sub-blocks the write covers partly (sub-blocks it covers
// wholly need no copy), writes, then records which sub-blocks are now the image's own. Reads of
// the other sub-blocks go on through the snapshot's entry (`backing`), which never changes. The
// guest is answered once its own bytes are written; the old bytes around them follow in the
// block's queue, which reads, sync and the exclusive operations wait for.
//
// The size and times live in the inode header, written when a metadata operation changes them,
// on sync, and when the last handle closes; a crash before that loses only what was never synced.
// Every guest I/O holds the shared side of the image lock; resize, snapshot, rollback and flatten
// hold the exclusive side. Writes to a block that is not wholly the image's own are serialised
// per block.

import { SheepError } from '../errors'
import { failpoint } from '../failpoints'
import { dataOid, inodeOid, MAX_INDEX, type ObjectId } from '../objects/oid'
import type { ObjectStore } from '../objects/types'
import { blockCount, decodeHeader, encodeHeader, HEADER_BYTES, type InodeHeader, inodeObjectSize, tableOffset } from './inode'
import { Mutex, RwLock } from './lock'
import { TokenHold } from './tokens'
import { OwnerTable, SUBBLOCKS } from './owner-table'
import { withXattr } from './xattrs'

export const DEFAULT_OBJECT_SIZE = 4 * 2 ** 20
export const MIN_OBJECT_SIZE = 64 * 2 ** 10
export const MAX_OBJECT_SIZE = 64 * 2 ** 20
/** The largest virtual size: the owner table of such an image is 256 MiB at 4 MiB objects. */
export const MAX_IMAGE_SIZE = 64 * 2 ** 40
/** Snapshots of snapshots of ...: how deep a read may follow backing entries. */
const MAX_CHAIN = 4096

/** Finds the owner table of another inode (a snapshot a block reads through). */
export type TableLookup = (vid: number) => OwnerTable | undefined

export function checkImageSize (size: number, objectSize: number): void {
  if (!Number.isSafeInteger(size) || size < 0) throw SheepError.invalid(`bad image size ${size}`)
  if (size > MAX_IMAGE_SIZE || blockCount(size, objectSize) > MAX_INDEX + 1) {
    throw SheepError.tooBig(`image size ${size} is larger than the maximum ${MAX_IMAGE_SIZE}`)
  }
}

export function checkObjectSize (objectSize: number): void {
  if (!Number.isInteger(objectSize) || objectSize < MIN_OBJECT_SIZE || objectSize > MAX_OBJECT_SIZE ||
      (objectSize & (objectSize - 1)) !== 0) {
    throw SheepError.invalid(`object size must be a power of two from ${MIN_OBJECT_SIZE} to ${MAX_OBJECT_SIZE}`)
  }
}

export class Image {
  private _header: InodeHeader
  private table: OwnerTable
  private readonly objects: ObjectStore
  private readonly tableOf: TableLookup
  private readonly lock = new RwLock()
  /** Writes of the inode object (entries, header) and its syncs, one at a time: see sync(). */
  private readonly inodeWrites = new Mutex()
  /** Syncs, one at a time: see sync(). */
  private readonly syncs = new Mutex()
  /** Per-block queues for writes that allocate or copy up. */
  private readonly blockQueues = new Map<number, Promise<void>>()
  /** Data objects written or created since the last sync. */
  private dirtyData = new Set<ObjectId>()
  /** Owner-table entries changed in memory and not yet written to the inode. */
  private readonly dirtyEntries = new Set<number>()
  /** Moves when adopt() replaces the table: a sync under way then has lost what it was to write. */
  private adoptions = 0
  /** Entries a sync under way took out of dirtyEntries and has not written yet. */
  private syncingEntries = 0
  /** Owner-table entries or the header were written since the inode was last synced. */
  private inodeDirty = false
  /** The size changed since the header was written: sync must write it. */
  private headerDirty = false
  /** Only the times changed: written on flush (close), not worth a disk sync of its own. */
  private timesDirty = false
  /** Set when a copy-up failed after its write was answered; every later I/O gets it. */
  private failure: SheepError | undefined
  /** Sub-blocks of objects this image owns that hold data. */
  private ownedSubblocks: number
  /** Open handles, and how many of them may write; an unlinked image is freed when the last closes. */
  openCount = 0
  openWriters = 0
  unlinked = false
  /** On a cluster: whether this host holds the image's write token (./tokens.ts). */
  readonly token = new TokenHold()

  private constructor (objects: ObjectStore, header: InodeHeader, table: OwnerTable, tableOf: TableLookup) {
    this.objects = objects
    this._header = header
    this.table = table
    this.tableOf = tableOf
    this.ownedSubblocks = countOwned(table, header.vid)
  }

  get header (): InodeHeader { return this._header }
  get vid (): number { return this._header.vid }
  get name (): string { return this._header.name }
  get size (): number { return this._header.size }
  get isSnapshot (): boolean { return this._header.tag !== '' }
  get owners (): OwnerTable { return this.table }
  private get inode (): ObjectId { return inodeOid(this._header.vid) }
  private get subSize (): number { return this._header.objectSize / SUBBLOCKS }

  /** Data not yet synced, or owner entries or header fields changed here and not yet written to the inode. */
  get hasUnwritten (): boolean { return this.dirtyData.size > 0 || this.dirtyEntries.size > 0 || this.headerDirty || this.timesDirty }

  /** Bytes of data this image holds in objects of its own, counted up to its virtual size. */
  get allocatedBytes (): number {
    let bytes = this.ownedSubblocks * this.subSize
    const os = this._header.objectSize
    const last = blockCount(this._header.size, os) - 1
    if (last >= 0 && this.table.owner(last) === this.vid && this.table.isFull(last)) bytes -= (last + 1) * os - this._header.size
    return bytes
  }

  /** Writes a new inode (header and table) and returns its image. */
  static async create (objects: ObjectStore, header: InodeHeader, table: OwnerTable, tableOf: TableLookup): Promise<Image> {
    await Image.writeInode(objects, header, table)
    return new Image(objects, header, table, tableOf)
  }

  /** Writes and syncs a whole new inode object: the header and the table's entries in use. */
  static async writeInode (objects: ObjectStore, header: InodeHeader, table: OwnerTable): Promise<void> {
    const oid = inodeOid(header.vid)
    await objects.create(oid, inodeObjectSize(header.size, header.objectSize))
    await objects.write(oid, 0, encodeHeader(header))
    for (const { first, bytes } of table.encodedRuns()) await objects.write(oid, tableOffset(first), bytes)
    await objects.sync([oid])
  }

  /**
   * Loads inode vid. With `repair`, entries past the size are cut off the inode: only right for
   * the sole writer of the image at start-up. On a cluster another host may be writing the
   * image, whose entries land before its new size does.
   */
  static async load (objects: ObjectStore, vid: number, tableOf: TableLookup, repair: boolean): Promise<Image> {
    const oid = inodeOid(vid)
    const bytes = await objects.readAll(oid)
    const header = decodeHeader(bytes.subarray(0, HEADER_BYTES), `image ${vid.toString(16)}`)
    if (header.vid !== vid) throw SheepError.corrupt(`inode ${vid.toString(16)} claims vid ${header.vid.toString(16)}`)
    const table = new OwnerTable(blockCount(header.size, header.objectSize))
    const tableEnd = inodeObjectSize(header.size, header.objectSize)
    table.load(0, bytes.subarray(HEADER_BYTES, Math.min(bytes.length, tableEnd)))
    // Entries past the size are left from a shrink or an unsynced grow that a crash cut short.
    if (repair && bytes.length > tableEnd) await objects.truncate(oid, tableEnd)
    return new Image(objects, header, table, tableOf)
  }

  /**
   * Bytes past the end of a file must read as zeros when it grows again. A crash can leave other
   * bytes in the last block past the size: unsynced writes past it that reached the block, or the
   * owner entry of a copy_file_range that shared the whole block, which reached the inode while
   * the copy's grow did not (the block then reads the source's bytes). Run by the sole writer at
   * start, and on a cluster by a host that takes the write token from another (which may have
   * died): the tail is read, and written only when it is not zeros.
   */
  async zeroTail (): Promise<void> {
    const os = this._header.objectSize
    const cut = this._header.size % os
    const last = blockCount(this._header.size, os) - 1
    if (cut === 0 || this.table.owner(last) === 0 || await this.readsZeros(last, cut, os - cut)) return
    await this.ownWholly(last)
    await this.writeData(last, cut, Buffer.alloc(os - cut))
    // With the entry of a copy-up: until it is on disk the inode reads the block elsewhere.
    await this.sync()
  }

  /** Whether [inObject, inObject + n) of block idx reads as zeros, past the size or not. */
  private async readsZeros (idx: number, inObject: number, n: number): Promise<boolean> {
    const bytes = Buffer.alloc(n)
    const pending: Promise<void>[] = []
    if (this.table.isFull(idx)) pending.push(this.objects.read(dataOid(this.table.owner(idx), idx), inObject, n, bytes, 0))
    else this.readShared(idx, inObject, n, bytes, 0, pending)
    await Promise.all(pending)
    return isZero(bytes)
  }

  /** Reads up to `length` bytes at `pos` into target; returns how many (0 at or past the end). */
  async read (pos: number, length: number, target: Uint8Array): Promise<number> {
    if (!this.lock.tryShared()) await this.lock.acquireShared()
    try {
      const end = Math.min(pos + length, this._header.size)
      if (pos < end && this.blockQueues.size > 0) await this.blocksSettled(pos, end)
      this.checkFailure()
      if (pos >= end) return 0
      const pending: Promise<void>[] = []
      this.eachBlock(pos, end, (idx, inObject, n, at) => {
        const owner = this.table.owner(idx)
        if (owner === 0) target.fill(0, at, at + n)
        else if (this.table.isFull(idx)) pending.push(this.objects.read(dataOid(owner, idx), inObject, n, target, at))
        else this.readShared(idx, inObject, n, target, at, pending)
      })
      if (pending.length === 1) await pending[0]
      else if (pending.length > 1) await Promise.all(pending)
      return end - pos
    } finally {
      this.lock.releaseShared()
    }
  }

  /** Calls fn for each block [pos, end) touches: block index, offset in it, length, offset from pos. */
  private eachBlock (pos: number, end: number, fn: (idx: number, inObject: number, n: number, at: number) => void): void {
    const os = this._header.objectSize
    for (let off = pos; off < end;) {
      const idx = Math.floor(off / os)
      const inObject = off - idx * os
      const n = Math.min(os - inObject, end - off)
      fn(idx, inObject, n, off - pos)
      off += n
    }
  }

  /** Reads from a block whose sub-blocks come from several objects, one read per run. */
  private readShared (idx: number, inObject: number, n: number, target: Uint8Array, targetOffset: number, pending: Promise<void>[]): void {
    const sub = this.subSize
    const end = inObject + n
    let runStart = inObject
    let runSource = this.sourceOf(this.table, idx, Math.floor(inObject / sub))
    const flush = (upTo: number): void => {
      const at = targetOffset + runStart - inObject
      if (runSource === 0) target.fill(0, at, at + upTo - runStart)
      else pending.push(this.objects.read(dataOid(runSource, idx), runStart, upTo - runStart, target, at))
    }
    for (let s = (Math.floor(inObject / sub) + 1) * sub; s < end; s += sub) {
      const source = this.sourceOf(this.table, idx, s / sub)
      if (source !== runSource) {
        flush(s)
        runStart = s
        runSource = source
      }
    }
    flush(end)
  }

  /** The vid whose object holds sub-block `sub` of block idx as seen through `table`; 0 for zeros. */
  private sourceOf (table: OwnerTable, idx: number, sub: number): number {
    let t = table
    for (let depth = 0; depth < MAX_CHAIN; depth++) {
      const owner = t.owner(idx)
      if (owner === 0 || t.hasSubblock(idx, sub)) return owner
      const backing = t.backing(idx)
      if (backing === 0) return 0
      const next = this.tableOf(backing)
      if (next === undefined) throw SheepError.corrupt(`${this.name}: block ${idx} reads through inode ${backing.toString(16)}, which is gone`)
      t = next
    }
    throw SheepError.corrupt(`${this.name}: block ${idx} has a backing chain longer than ${MAX_CHAIN}`)
  }

  /** Writes all of data at pos, growing the image if it ends past the current size. */
  async write (pos: number, data: Uint8Array): Promise<void> {
    if (this.isSnapshot) throw SheepError.readOnly(`snapshot ${this.name}@${this._header.tag}`)
    if (!Number.isSafeInteger(pos) || pos < 0) throw SheepError.invalid(`bad offset ${pos}`)
    const end = pos + data.length
    if (end > MAX_IMAGE_SIZE) throw SheepError.tooBig(`write ends at ${end}, past the maximum image size ${MAX_IMAGE_SIZE}`)
    if (!this.lock.tryShared()) await this.lock.acquireShared()
    try {
      this.checkFailure()
      if (end > this._header.size) this.grow(end)
      const pending: Promise<void>[] = []
      this.eachBlock(pos, end, (idx, inObject, n, at) => pending.push(this.writeBlock(idx, inObject, data.subarray(at, at + n))))
      if (pending.length === 1) await pending[0]
      else await Promise.all(pending)
      this._header.mtime = Date.now()
      this.timesDirty = true
    } finally {
      this.lock.releaseShared()
    }
  }

  private async writeBlock (idx: number, inObject: number, data: Uint8Array): Promise<void> {
    const t = this.table
    if (t.owner(idx) === this.vid && t.isFull(idx)) return await this.writeData(idx, inObject, data)
    // A hole already reads as zeros: writing zeros there allocates nothing.
    if (t.owner(idx) === 0 && !this.blockQueues.has(idx) && isZero(data)) return
    let direct = false
    let answered = false
    let answer!: () => void
    const acknowledged = new Promise<void>(resolve => { answer = () => { answered = true; resolve() } })
    const run = this.serialised(idx, async () => {
      if (t.owner(idx) === this.vid && t.isFull(idx)) { direct = true; return }
      // A new block: its first write makes it, and the writes queued behind it then run side by side.
      if (t.owner(idx) === 0) { await this.allocate(idx, inObject, data); return }
      if (t.owner(idx) !== this.vid) await this.startCopyUp(idx)
      await this.copyUpWrite(idx, inObject, data, answer)
    })
    // Once the guest has its answer, a failure of the copy-up behind it can only be reported later.
    const failed = run.catch(err => { if (answered) this.fail(idx, err); else throw err })
    await Promise.race([acknowledged, failed])
    if (direct) await this.writeData(idx, inObject, data)
  }

  /**
   * Writes data into a block that still reads partly through a snapshot. Sub-blocks the write
   * covers only partly need their old bytes around the new ones; reading them would cost the guest
   * a second disk round trip, so the guest is answered as soon as its own bytes are in, and the
   * merged sub-blocks are written behind that answer. Until they are, the block's queue holds
   * everything else that touches the block (reads, writes, sync, snapshot wait for it).
   */
  private async copyUpWrite (idx: number, inObject: number, data: Uint8Array, answer: () => void): Promise<void> {
    const t = this.table
    const sub = this.subSize
    const end = inObject + data.length
    const first = Math.floor(inObject / sub)
    const last = Math.floor((end - 1) / sub)
    const head = !t.hasSubblock(idx, first) && inObject > first * sub
    const tail = !t.hasSubblock(idx, last) && end < (last + 1) * sub
    const own = this.writeData(idx, inObject, data)
    if (!head && !tail) {
      await own
      this.markPresent(idx, first, last)
      return
    }
    const from = head ? first * sub : inObject
    const to = tail ? (last + 1) * sub : end
    // Only the old bytes outside the write are read, so the guest's bytes can go into the merged
    // buffer now: its own buffer is the caller's again once it has its answer.
    const merged = Buffer.allocUnsafe(to - from)
    const reads: Promise<void>[] = []
    if (head) this.readShared(idx, from, inObject - from, merged, 0, reads)
    if (tail) this.readShared(idx, end, to - end, merged, end - from, reads)
    merged.set(data, inObject - from)
    const oldBytes = Promise.all(reads)
    oldBytes.catch(() => {}) // awaited below; a failure before then must not go unhandled
    await own
    // Counted now, so that du right after the write sees it; marked present once it is all there.
    let added = 0
    for (let s = first; s <= last; s++) if (!t.hasSubblock(idx, s)) added++
    this.ownedSubblocks += added
    answer()
    await oldBytes
    // The guest's bytes go out again inside the merged write: the same bytes, and nothing else
    // writes to this block until the queue moves on.
    await this.writeData(idx, from, merged)
    this.table.addSubblocks(idx, first, last)
    this.saveEntry(idx)
  }

  /** A copy-up the guest was already answered for failed: the block no longer reads what was written. */
  private fail (idx: number, err: unknown): void {
    this.failure ??= SheepError.corrupt(`${this.name}: copy-on-write of block ${idx} failed after the write was answered: ${(err as Error).message}`)
  }

  private checkFailure (): void {
    if (this.failure !== undefined) throw this.failure
  }

  /** Waits for everything queued on blocks (copy-ups still being written behind their answer). */
  private async settled (): Promise<void> {
    if (this.blockQueues.size > 0) await Promise.all(this.blockQueues.values())
  }

  /** Waits for queued work on the blocks [pos, end) touches. */
  private async blocksSettled (pos: number, end: number): Promise<void> {
    const os = this._header.objectSize
    const first = Math.floor(pos / os)
    const last = Math.floor((end - 1) / os)
    const waits: Promise<void>[] = []
    for (const [idx, queued] of this.blockQueues) if (idx >= first && idx <= last) waits.push(queued)
    await Promise.all(waits)
  }

  /** Runs fn under the exclusive lock, after every copy-up still being written has landed. */
  private async withExclusive<T> (fn: () => Promise<T>): Promise<T> {
    return await this.lock.withExclusive(async () => {
      await this.settled()
      return await fn()
    })
  }

  private async writeData (idx: number, inObject: number, data: Uint8Array): Promise<void> {
    const oid = dataOid(this.vid, idx)
    await this.objects.write(oid, inObject, data)
    // Added once written: a sync that began while this write was under way must not take the
    // object off the list before the write reaches it.
    this.dirtyData.add(oid)
  }

  /** Runs fn after every earlier serialised operation on block idx. */
  private async serialised (idx: number, fn: () => Promise<void>): Promise<void> {
    const prev = this.blockQueues.get(idx)
    const run = (prev ?? Promise.resolve()).then(fn)
    const tail = run.then(() => {}, () => {})
    this.blockQueues.set(idx, tail)
    try {
      await run
    } finally {
      if (this.blockQueues.get(idx) === tail) this.blockQueues.delete(idx)
    }
  }

  /** A hole becomes an object of this image, written with its first bytes (zeros around them). */
  private async allocate (idx: number, inObject: number, data: Uint8Array): Promise<void> {
    const oid = dataOid(this.vid, idx)
    await this.objects.writeFresh(oid, this._header.objectSize, inObject, data)
    // Its size and name must be durable before the entry that points at it is (sync()).
    this.dirtyData.add(oid)
    this.table.setFull(idx, this.vid)
    this.saveEntry(idx)
    this.ownedSubblocks += SUBBLOCKS
  }

  /** A block shared with a snapshot gets an object of this image that still reads through it. */
  private async startCopyUp (idx: number): Promise<void> {
    const from = this.table.owner(idx)
    await this.createObject(idx)
    this.table.setEmpty(idx, this.vid, from)
  }

  /**
   * Creates the data object of block idx, which no entry of this image points at. One left by a
   * crash before its entry was synced (never acknowledged) is emptied: the block is a hole to
   * this image, and must read as zeros around the new bytes.
   */
  private async createObject (idx: number): Promise<void> {
    const oid = dataOid(this.vid, idx)
    try {
      await this.objects.create(oid, this._header.objectSize)
    } catch (err) {
      if (!(err instanceof SheepError) || err.code !== 'EEXIST') throw err
      await this.objects.remove(oid)
      await this.objects.create(oid, this._header.objectSize)
    }
    // Its size and name must be durable before the entry that points at it is (sync()).
    this.dirtyData.add(oid)
  }

  /** Copies sub-blocks [first, last] from wherever they read from into this image's object. */
  private async copySubblocks (idx: number, first: number, last: number): Promise<void> {
    const sub = this.subSize
    const buf = Buffer.alloc((last - first + 1) * sub)
    const reads: Promise<void>[] = []
    this.readShared(idx, first * sub, buf.length, buf, 0, reads)
    await Promise.all(reads)
    await this.writeData(idx, first * sub, buf)
  }

  private markPresent (idx: number, first: number, last: number): void {
    const before = this.table.presentCount(idx)
    this.table.addSubblocks(idx, first, last)
    this.ownedSubblocks += this.table.presentCount(idx) - before
    this.saveEntry(idx)
  }

  /** Makes block idx wholly this image's own (copying what it still reads through others). */
  private async ownWholly (idx: number): Promise<void> {
    const t = this.table
    if (t.owner(idx) === 0 || (t.owner(idx) === this.vid && t.isFull(idx))) return
    if (t.owner(idx) !== this.vid) await this.startCopyUp(idx)
    let s = 0
    while (s < SUBBLOCKS) {
      if (t.hasSubblock(idx, s)) { s++; continue }
      let e = s
      while (e + 1 < SUBBLOCKS && !t.hasSubblock(idx, e + 1)) e++
      await this.copySubblocks(idx, s, e)
      s = e + 1
    }
    this.markPresent(idx, 0, SUBBLOCKS - 1)
  }

  /**
   * Entries reach the inode with the next flush or sync, like the data they describe: a crash
   * before that loses only unsynced writes (a new object nothing points at is collected at start).
   */
  private saveEntry (idx: number): void {
    this.dirtyEntries.add(idx)
  }

  /** Writes the given owner entries into the inode object (not synced). */
  private async writeEntries (entries: number[]): Promise<void> {
    try {
      await Promise.all(entries.map(idx => this.objects.write(this.inode, tableOffset(idx), this.table.encodeEntry(idx))))
    } catch (err) {
      for (const idx of entries) this.dirtyEntries.add(idx)
      throw err
    }
    if (entries.length > 0) this.inodeDirty = true
  }

  private grow (size: number): void {
    if (size <= this._header.size) return
    this._header.size = size
    this.table.resize(blockCount(size, this._header.objectSize))
    this.headerDirty = true
  }

  /** Sets the virtual size; a shrink frees whole blocks past the end and zeroes the cut block's tail. */
  async resize (size: number): Promise<void> {
    if (this.isSnapshot) throw SheepError.readOnly(`snapshot ${this.name}@${this._header.tag}`)
    checkImageSize(size, this._header.objectSize)
    await this.withExclusive(async () => {
      const old = this._header.size
      if (size === old) return
      const os = this._header.objectSize
      if (size > old) {
        this.grow(size)
        this._header.mtime = Date.now()
        await this.saveHeader()
        return
      }
      const keep = blockCount(size, os)
      const cut = size % os
      if (cut !== 0 && this.table.owner(keep - 1) !== 0) {
        // A later grow must read zeros here, as it would from a file.
        await this.ownWholly(keep - 1)
        await this.writeData(keep - 1, cut, Buffer.alloc(os - cut))
      }
      const freed = [...this.table.ownedBy(this.vid)].filter(idx => idx >= keep)
      // Durable new size first, with the zeroed tail and its block's entry (a copy-up of a block
      // shared with a snapshot): a crash after it leaves only unreferenced objects, which the
      // next start collects.
      this._header.size = size
      this._header.mtime = Date.now()
      this.headerDirty = true
      await this.sync()
      await this.objects.truncate(this.inode, inodeObjectSize(size, os))
      for (const idx of freed) {
        const oid = dataOid(this.vid, idx)
        this.dirtyData.delete(oid)
        this.ownedSubblocks -= this.table.presentCount(idx)
        await this.objects.remove(oid)
      }
      this.table.resize(keep)
    })
  }

  /**
   * Makes [pos, pos + length) read as zeros, up to the size (fallocate's PUNCH_HOLE and
   * ZERO_RANGE): whole blocks in the range become holes, their objects freed where this image
   * owns them (a block shared with a snapshot only stops pointing at it), and the partial
   * blocks at its ends get zeros written. The cleared entries are synced before the objects go,
   * as in a shrink: a crash between leaves only unreferenced objects, collected at start.
   */
  async discard (pos: number, length: number): Promise<void> {
    if (this.isSnapshot) throw SheepError.readOnly(`snapshot ${this.name}@${this._header.tag}`)
    if (!Number.isSafeInteger(pos) || pos < 0 || !Number.isSafeInteger(length) || length < 0) throw SheepError.invalid(`bad range ${pos}+${length}`)
    const end = Math.min(pos + length, this._header.size)
    if (pos >= end) return
    const os = this._header.objectSize
    const firstWhole = Math.ceil(pos / os)
    const endWhole = Math.floor(end / os)
    if (firstWhole >= endWhole) return await this.write(pos, Buffer.alloc(end - pos))
    if (pos < firstWhole * os) await this.write(pos, Buffer.alloc(firstWhole * os - pos))
    if (endWhole * os < end) await this.write(endWhole * os, Buffer.alloc(end - endWhole * os))
    await this.withExclusive(async () => {
      const freed: number[] = []
      let cleared = 0
      for (let idx = firstWhole; idx < endWhole; idx++) {
        const owner = this.table.owner(idx)
        if (owner === 0) continue
        cleared++
        if (owner === this.vid) {
          this.ownedSubblocks -= this.table.presentCount(idx)
          freed.push(idx)
        }
        this.table.clear(idx)
        this.saveEntry(idx)
      }
      if (cleared === 0) return
      this._header.mtime = Date.now()
      this.timesDirty = true
      await this.sync()
      for (const idx of freed) {
        const oid = dataOid(this.vid, idx)
        this.dirtyData.delete(oid)
        await this.objects.remove(oid)
      }
    })
  }

  /**
   * Makes blocks [first, end) read as they read in `source`, another image, at the same indexes
   * (copy_file_range of whole blocks), with no data copied: each entry becomes a verbatim copy of
   * the source's. That is only sound while the source's entries there point at frozen inodes
   * (snapshots, or what ImageStore.freeze left), whose objects nobody writes in place: when the
   * source owns one of the blocks this returns false and changes nothing (freeze it, then try
   * again). Blocks this image owned there are freed once the new entries are durable, as in
   * discard; otherwise the entries reach the inode with the next sync, like a write's.
   */
  async shareFrom (source: Image, first: number, end: number): Promise<boolean> {
    if (this.isSnapshot) throw SheepError.readOnly(`snapshot ${this.name}@${this._header.tag}`)
    const os = this._header.objectSize
    if (source._header.objectSize !== os) throw SheepError.invalid(`${source.name} and ${this.name} have different object sizes`)
    return await this.withExclusive(async () => {
      this.checkFailure()
      const from = source.table
      // Checked and copied with no await in between: a write into the source that was answered
      // has made its block the source's own by then, and is seen here.
      if (!source.isSnapshot && source.ownsAny(first, end)) return false
      this.grow(end * os)
      const freed: number[] = []
      for (let idx = first; idx < end; idx++) {
        if (this.table.owner(idx) === this.vid) {
          this.ownedSubblocks -= this.table.presentCount(idx)
          freed.push(idx)
        }
        this.table.copyEntry(idx, from)
        this.saveEntry(idx)
      }
      this._header.mtime = Date.now()
      this.timesDirty = true
      if (freed.length === 0) return true
      await this.sync()
      for (const idx of freed) {
        const oid = dataOid(this.vid, idx)
        this.dirtyData.delete(oid)
        await this.objects.remove(oid)
      }
      return true
    })
  }

  /** Whether this image's own objects hold any of blocks [first, end) (a copy must freeze it first). */
  ownsAny (first: number, end: number): boolean {
    for (let idx = first; idx < end; idx++) if (this.table.owner(idx) === this.vid) return true
    return false
  }

  /**
   * lseek's SEEK_DATA (the first offset at or after pos in a block that holds data) and
   * SEEK_HOLE (the first in a hole, or the size), from the owner table: block granularity, as a
   * block that exists may hold zeros. Null: no data at or after pos, or pos at or past the end.
   */
  seek (pos: number, hole: boolean): number | null {
    const size = this._header.size
    if (!Number.isSafeInteger(pos) || pos < 0 || pos >= size) return null
    const os = this._header.objectSize
    const blocks = blockCount(size, os)
    for (let idx = Math.floor(pos / os); idx < blocks; idx++) {
      if ((this.table.owner(idx) === 0) === hole) return Math.max(pos, idx * os)
    }
    return hole ? size : null
  }

  /**
   * Makes every acknowledged write and the current size durable, in this order (each step
   * durable before the next begins; docs/ARCHITECTURE.md "Crash safety" says why each crash
   * point is safe):
   * 1. the data objects written or created since the last sync: their bytes, their files' names
   *    and sizes, their catalog records;
   * 2. the owner entries and header changed up to the moment the data to sync was taken,
   *    written into the inode object;
   * 3. the inode object: its bytes, then its record (a size it grew to).
   * Entries and data are taken at the same moment, so an entry written in step 2 points at an
   * object made durable in step 1 or by an earlier sync. Syncs run one at a time: one that
   * overlaps another waits for it, since the other may have taken what its caller wrote. Step 2
   * and 3 also hold `inodeWrites`, which every other write of the inode takes.
   */
  async sync (): Promise<void> {
    await this.syncs.run(async () => { await this.syncOnce() })
  }

  private async syncOnce (): Promise<void> {
    await this.settled()
    this.checkFailure()
    const data = this.dirtyData
    this.dirtyData = new Set()
    const entries = [...this.dirtyEntries]
    this.dirtyEntries.clear()
    const adoptions = this.adoptions
    this.syncingEntries = entries.length
    // Another host took the token and this host loaded the inode again while this sync waited (a
    // partition, say): the entries it was to write are gone from the table, and so are the writes
    // they described. The sync fails, as fsync after lost writeback does, instead of succeeding.
    const checkAdopted = (): void => {
      if (this.adoptions !== adoptions) throw SheepError.corrupt(`${this.name}: another host took the image's write token before the blocks written here were recorded: those writes are lost`)
    }
    try {
      try {
        if (data.size > 0) await this.objects.sync(data)
      } catch (err) {
        for (const oid of data) this.dirtyData.add(oid)
        if (this.adoptions === adoptions) for (const idx of entries) this.dirtyEntries.add(idx)
        throw err
      }
      failpoint('image-sync:after-data')
      checkAdopted()
      await this.inodeWrites.run(async () => {
        checkAdopted()
        await this.writeEntries(entries)
        checkAdopted()
        if (this.headerDirty) await this.writeHeader()
        failpoint('image-sync:after-entries')
        if (this.inodeDirty) {
          this.inodeDirty = false
          try {
            await this.objects.sync([this.inode])
          } catch (err) {
            this.inodeDirty = true
            throw err
          }
        }
        failpoint('image-sync:after-inode')
      })
    } finally {
      this.syncingEntries = 0
    }
  }

  /**
   * On close: what was written becomes durable (as NFS commits on close), so an entry never
   * reaches the inode before the object it points at; only a change of times is written without
   * waiting for the disk.
   */
  async flush (): Promise<void> {
    if (this.dirtyData.size > 0 || this.dirtyEntries.size > 0 || this.headerDirty) return await this.sync()
    await this.settled()
    this.checkFailure()
    if (this.timesDirty) await this.inodeWrites.run(async () => { await this.writeHeader() })
  }

  async setTimes (mtime: number): Promise<void> {
    this._header.mtime = mtime
    await this.saveHeader()
  }

  async setOwnership (attrs: { mode?: number, uid?: number, gid?: number }): Promise<void> {
    if (attrs.mode !== undefined) this._header.mode = attrs.mode & 0o7777
    if (attrs.uid !== undefined) this._header.uid = attrs.uid
    if (attrs.gid !== undefined) this._header.gid = attrs.gid
    await this.saveHeader()
  }

  /** Sets (a value) or removes (null) an extended attribute and saves the header; limits in ./xattrs.ts. */
  async setXattr (name: string, value: Buffer | null): Promise<void> {
    this._header.xattrs = withXattr(this._header.xattrs, name, value, this.name)
    await this.saveHeader()
  }

  /**
   * Takes the owner, group, mode and extended attributes of `fresh`, this inode's header as
   * another host saved it, while handles here keep the rest (what they read is as of their open).
   */
  adoptAttributes (fresh: InodeHeader): void {
    this._header.mode = fresh.mode
    this._header.uid = fresh.uid
    this._header.gid = fresh.gid
    this._header.xattrs = fresh.xattrs
  }

  /** Changes header fields that name the inode (name, tag, parent) and saves them. */
  async relabel (fields: Partial<Pick<InodeHeader, 'name' | 'tag' | 'parent' | 'snapshotTime'>>): Promise<void> {
    Object.assign(this._header, fields)
    await this.saveHeader()
  }

  /**
   * Takes the header and table of `fresh`, the same inode loaded again after another host changed
   * it; call with the exclusive lock held. Whatever this image kept unwritten is stale then (its
   * token was taken without asking it: it was out of the view) and is dropped; returns how many
   * entries that was.
   */
  adopt (fresh: Image): number {
    const dropped = this.dirtyEntries.size + this.syncingEntries
    this.adoptions++
    this._header = fresh._header
    this.table = fresh.table
    this.ownedSubblocks = fresh.ownedSubblocks
    this.dirtyEntries.clear()
    this.headerDirty = false
    this.timesDirty = false
    return dropped
  }

  /** Runs fn with no guest I/O in flight or starting on this image. */
  async exclusive<T> (fn: () => Promise<T>): Promise<T> {
    return await this.withExclusive(fn)
  }

  /**
   * Becomes inode `header.vid` (already written, with a table like this one's) while the state
   * so far stays behind as the returned image; call with the exclusive lock held.
   */
  takeOver (header: InodeHeader, table: OwnerTable): Image {
    const previous = new Image(this.objects, this._header, this.table, this.tableOf)
    this._header = header
    this.table = table
    this.ownedSubblocks = countOwned(table, header.vid)
    this.dirtyData = new Set()
    this.dirtyEntries.clear()
    this.inodeDirty = false
    this.headerDirty = false
    this.timesDirty = false
    return previous
  }

  /** Copies every shared block into objects of this image; onProgress counts blocks. */
  async flatten (onProgress?: (done: number, total: number) => void): Promise<void> {
    await this.withExclusive(async () => {
      const blocks = [...this.table.blocks()].filter(idx => !(this.table.owner(idx) === this.vid && this.table.isFull(idx)))
      let done = 0
      for (const idx of blocks) {
        await this.ownWholly(idx)
        onProgress?.(++done, blocks.length)
      }
      await this.sync()
      this._header.parent = 0
      await this.saveHeader()
    })
  }

  /** Deletes data objects of this inode that `referenced` does not list, and clears their entries. */
  /** Whether this inode owns a block outside `referenced` (one freeUnreferenced would free). */
  ownsOutside (referenced: Set<number>): boolean {
    for (const idx of this.table.ownedBy(this.vid)) if (!referenced.has(idx)) return true
    return false
  }

  async freeUnreferenced (referenced: Set<number> | undefined): Promise<number> {
    const freed = [...this.table.ownedBy(this.vid)].filter(idx => !referenced?.has(idx))
    if (freed.length === 0) return 0
    for (const idx of freed) {
      this.ownedSubblocks -= this.table.presentCount(idx)
      this.table.clear(idx)
      this.saveEntry(idx)
    }
    // The entries are gone on disk before the objects are.
    await this.sync()
    for (const idx of freed) await this.objects.remove(dataOid(this.vid, idx))
    return freed.length
  }

  /** Deletes every object this inode owns, then the inode. */
  async destroy (onProgress?: (done: number, total: number) => void): Promise<void> {
    await this.withExclusive(async () => {
      const blocks = [...this.table.ownedBy(this.vid)]
      let done = 0
      for (const idx of blocks) {
        await this.objects.remove(dataOid(this.vid, idx))
        this.table.clear(idx)
        onProgress?.(++done, blocks.length)
      }
      this.ownedSubblocks = 0
      await this.objects.remove(this.inode)
    })
  }

  private async writeHeader (): Promise<void> {
    const [sizeChanged, timesChanged] = [this.headerDirty, this.timesDirty]
    this.headerDirty = false
    this.timesDirty = false
    try {
      await this.objects.write(this.inode, 0, encodeHeader(this._header))
    } catch (err) {
      this.headerDirty ||= sizeChanged
      this.timesDirty ||= timesChanged
      throw err
    }
    this.inodeDirty = true
  }

  /** Writes and syncs the header: metadata operations are durable when they return. */
  private async saveHeader (): Promise<void> {
    await this.inodeWrites.run(async () => {
      await this.writeHeader()
      this.inodeDirty = false
      await this.objects.sync([this.inode])
    })
  }
}

function countOwned (table: OwnerTable, vid: number): number {
  let n = 0
  for (const idx of table.ownedBy(vid)) n += table.presentCount(idx)
  return n
}

const ZEROS = Buffer.alloc(2 ** 20)

function isZero (data: Uint8Array): boolean {
  for (let off = 0; off < data.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - off)
    if (Buffer.compare(data.subarray(off, off + n), ZEROS.subarray(0, n)) !== 0) return false
  }
  return true
}
