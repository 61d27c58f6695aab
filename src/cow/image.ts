// One image: guest I/O split over its data objects, thin allocation, resize and sync.
//
// How this works: block idx of the image lives in data object (owner[idx], idx). A write to a
// hole first creates the object and records owner[idx] in the inode (a 4-byte write), then writes
// the data in place. The size and times live in the inode header, written when they change by a
// metadata operation, on sync, and when the last handle closes; a crash before that loses only
// what was never synced. Every guest I/O holds the shared side of the image lock; resize holds
// the exclusive side, so it never races a write into a block it frees.

import { SheepError } from '../errors'
import { dataOid, inodeOid, MAX_INDEX, type ObjectId } from '../objects/oid'
import type { ObjectStore } from '../objects/types'
import { blockCount, decodeHeader, encodeHeader, HEADER_BYTES, type InodeHeader, inodeObjectSize, tableOffset } from './inode'
import { RwLock } from './lock'
import { OwnerTable } from './owner-table'

export const DEFAULT_OBJECT_SIZE = 4 * 2 ** 20
export const MIN_OBJECT_SIZE = 64 * 2 ** 10
export const MAX_OBJECT_SIZE = 64 * 2 ** 20
/** The largest virtual size: the owner table of such an image is 64 MiB at 4 MiB objects. */
export const MAX_IMAGE_SIZE = 64 * 2 ** 40

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
  readonly header: InodeHeader
  private readonly objects: ObjectStore
  private readonly table: OwnerTable
  private readonly lock = new RwLock()
  private readonly allocating = new Map<number, Promise<void>>()
  private dirtyData = new Set<ObjectId>()
  /** Owner-table entries or the header were written since the inode was last synced. */
  private inodeDirty = false
  /** The size changed since the header was written: sync must write it. */
  private headerDirty = false
  /** Only the times changed: written on flush (close), not worth a disk sync of its own. */
  private timesDirty = false
  private owned: number
  /** Open handles; an unlinked image is freed when the last one closes. */
  openCount = 0
  unlinked = false

  private constructor (objects: ObjectStore, header: InodeHeader, table: OwnerTable) {
    this.objects = objects
    this.header = header
    this.table = table
    this.owned = table.count(header.vid)
  }

  get vid (): number { return this.header.vid }
  get name (): string { return this.header.name }
  get size (): number { return this.header.size }
  private get inode (): ObjectId { return inodeOid(this.header.vid) }

  /** Bytes of data objects this image owns, counted up to its virtual size. */
  get allocatedBytes (): number {
    const os = this.header.objectSize
    let bytes = this.owned * os
    const last = blockCount(this.header.size, os) - 1
    if (last >= 0 && this.table.get(last) === this.vid) bytes -= (last + 1) * os - this.header.size
    return bytes
  }

  /** Blocks whose owner is this image. */
  ownedBlocks (): number[] {
    const out: number[] = []
    for (const [idx, vid] of this.table.entries()) if (vid === this.vid) out.push(idx)
    return out
  }

  static async create (objects: ObjectStore, header: InodeHeader): Promise<Image> {
    const oid = inodeOid(header.vid)
    await objects.create(oid, inodeObjectSize(header.size, header.objectSize))
    await objects.write(oid, 0, encodeHeader(header))
    await objects.sync([oid])
    return new Image(objects, header, new OwnerTable(blockCount(header.size, header.objectSize)))
  }

  static async load (objects: ObjectStore, vid: number): Promise<Image> {
    const oid = inodeOid(vid)
    const bytes = await objects.readAll(oid)
    const header = decodeHeader(bytes.subarray(0, HEADER_BYTES), `image ${vid.toString(16)}`)
    if (header.vid !== vid) throw SheepError.corrupt(`inode ${vid.toString(16)} claims vid ${header.vid.toString(16)}`)
    const table = new OwnerTable(blockCount(header.size, header.objectSize))
    const tableEnd = inodeObjectSize(header.size, header.objectSize)
    table.load(0, bytes.subarray(HEADER_BYTES, Math.min(bytes.length, tableEnd)))
    // Entries past the size are left from a shrink or an unsynced grow that a crash cut short.
    if (bytes.length > tableEnd) await objects.truncate(oid, tableEnd)
    // Unsynced writes past the size may have reached the last block before a crash; the bytes
    // past the end of a file must read as zeros when it grows again.
    const cut = header.size % header.objectSize
    const last = blockCount(header.size, header.objectSize) - 1
    if (cut !== 0 && table.get(last) === vid) {
      await objects.write(dataOid(vid, last), cut, Buffer.alloc(header.objectSize - cut))
      await objects.sync([dataOid(vid, last)])
    }
    return new Image(objects, header, table)
  }

  /** Reads up to `length` bytes at `pos` into target; returns how many (0 at or past the end). */
  async read (pos: number, length: number, target: Uint8Array): Promise<number> {
    if (!this.lock.tryShared()) await this.lock.acquireShared()
    try {
      const end = Math.min(pos + length, this.header.size)
      if (pos >= end) return 0
      const os = this.header.objectSize
      const pending: Promise<void>[] = []
      for (let off = pos; off < end;) {
        const idx = Math.floor(off / os)
        const inObject = off - idx * os
        const n = Math.min(os - inObject, end - off)
        const owner = this.table.get(idx)
        if (owner === 0) target.fill(0, off - pos, off - pos + n)
        else pending.push(this.objects.read(dataOid(owner, idx), inObject, n, target, off - pos))
        off += n
      }
      if (pending.length === 1) await pending[0]
      else if (pending.length > 1) await Promise.all(pending)
      return end - pos
    } finally {
      this.lock.releaseShared()
    }
  }

  /** Writes all of data at pos, growing the image if it ends past the current size. */
  async write (pos: number, data: Uint8Array): Promise<void> {
    if (!Number.isSafeInteger(pos) || pos < 0) throw SheepError.invalid(`bad offset ${pos}`)
    const end = pos + data.length
    if (end > MAX_IMAGE_SIZE) throw SheepError.tooBig(`write ends at ${end}, past the maximum image size ${MAX_IMAGE_SIZE}`)
    if (!this.lock.tryShared()) await this.lock.acquireShared()
    try {
      if (end > this.header.size) this.grow(end)
      const os = this.header.objectSize
      const pending: Promise<void>[] = []
      for (let off = pos; off < end;) {
        const idx = Math.floor(off / os)
        const inObject = off - idx * os
        const n = Math.min(os - inObject, end - off)
        pending.push(this.writeBlock(idx, inObject, data.subarray(off - pos, off - pos + n)))
        off += n
      }
      if (pending.length === 1) await pending[0]
      else await Promise.all(pending)
      this.header.mtime = Date.now()
      this.timesDirty = true
    } finally {
      this.lock.releaseShared()
    }
  }

  private async writeBlock (idx: number, inObject: number, data: Uint8Array): Promise<void> {
    // A hole already reads as zeros: writing zeros there allocates nothing.
    if (this.table.get(idx) === 0 && !this.allocating.has(idx) && isZero(data)) return
    if (this.table.get(idx) !== this.vid) await this.allocate(idx)
    const oid = dataOid(this.vid, idx)
    this.dirtyData.add(oid)
    await this.objects.write(oid, inObject, data)
  }

  private allocate (idx: number): Promise<void> {
    let p = this.allocating.get(idx)
    if (p === undefined) {
      p = this.createBlock(idx).finally(() => this.allocating.delete(idx))
      this.allocating.set(idx, p)
    }
    return p
  }

  private async createBlock (idx: number): Promise<void> {
    if (this.table.get(idx) === this.vid) return
    if (this.table.get(idx) !== 0) throw new SheepError('ENOTSUP', 'copy-up from a parent image is not implemented')
    const oid = dataOid(this.vid, idx)
    await this.objects.create(oid, this.header.objectSize)
    // The object exists before the entry that points at it does.
    await this.objects.write(this.inode, tableOffset(idx), OwnerTable.encodeEntry(this.vid))
    this.table.set(idx, this.vid)
    this.owned++
    this.inodeDirty = true
  }

  private grow (size: number): void {
    if (size <= this.header.size) return
    this.header.size = size
    this.table.resize(blockCount(size, this.header.objectSize))
    this.headerDirty = true
  }

  /** Sets the virtual size; a shrink frees whole blocks past the end and zeroes the cut block's tail. */
  async resize (size: number): Promise<void> {
    checkImageSize(size, this.header.objectSize)
    await this.lock.withExclusive(async () => {
      const old = this.header.size
      if (size === old) return
      const os = this.header.objectSize
      if (size > old) {
        this.grow(size)
        this.header.mtime = Date.now()
        await this.saveHeader()
        return
      }
      const keep = blockCount(size, os)
      const cut = size % os
      if (cut !== 0 && this.table.get(keep - 1) === this.vid) {
        // A later grow must read zeros here, as it would from a file.
        await this.objects.write(dataOid(this.vid, keep - 1), cut, Buffer.alloc(os - cut))
        await this.objects.sync([dataOid(this.vid, keep - 1)])
      }
      const freed: number[] = []
      for (const [idx, vid] of this.table.entries()) if (idx >= keep && vid === this.vid) freed.push(idx)
      // Durable new size first: a crash after it leaves only unreferenced objects, which the
      // next start collects.
      this.header.size = size
      this.header.mtime = Date.now()
      await this.saveHeader()
      await this.objects.truncate(this.inode, inodeObjectSize(size, os))
      this.table.resize(keep)
      for (const idx of freed) {
        const oid = dataOid(this.vid, idx)
        this.dirtyData.delete(oid)
        await this.objects.remove(oid)
        this.owned--
      }
    })
  }

  /** Makes every acknowledged write and the current size durable. */
  async sync (): Promise<void> {
    const data = this.dirtyData
    this.dirtyData = new Set()
    try {
      if (data.size > 0) await this.objects.sync(data)
    } catch (err) {
      for (const oid of data) this.dirtyData.add(oid)
      throw err
    }
    if (this.headerDirty) await this.writeHeader()
    if (this.inodeDirty) {
      this.inodeDirty = false
      try {
        await this.objects.sync([this.inode])
      } catch (err) {
        this.inodeDirty = true
        throw err
      }
    }
  }

  /** Writes the header if it changed, without waiting for the disk (close-to-open consistency). */
  async flush (): Promise<void> {
    if (this.headerDirty || this.timesDirty) await this.writeHeader()
  }

  async setTimes (mtime: number): Promise<void> {
    this.header.mtime = mtime
    await this.saveHeader()
  }

  async setOwnership (attrs: { mode?: number, uid?: number, gid?: number }): Promise<void> {
    if (attrs.mode !== undefined) this.header.mode = attrs.mode & 0o7777
    if (attrs.uid !== undefined) this.header.uid = attrs.uid
    if (attrs.gid !== undefined) this.header.gid = attrs.gid
    await this.saveHeader()
  }

  async rename (name: string): Promise<void> {
    this.header.name = name
    await this.saveHeader()
  }

  /** Deletes every object this image owns, then its inode. */
  async destroy (onProgress?: (done: number, total: number) => void): Promise<void> {
    await this.lock.withExclusive(async () => {
      const blocks = this.ownedBlocks()
      let done = 0
      for (const idx of blocks) {
        await this.objects.remove(dataOid(this.vid, idx))
        this.table.set(idx, 0)
        this.owned--
        onProgress?.(++done, blocks.length)
      }
      await this.objects.remove(this.inode)
    })
  }

  private async writeHeader (): Promise<void> {
    const [sizeChanged, timesChanged] = [this.headerDirty, this.timesDirty]
    this.headerDirty = false
    this.timesDirty = false
    try {
      await this.objects.write(this.inode, 0, encodeHeader(this.header))
    } catch (err) {
      this.headerDirty ||= sizeChanged
      this.timesDirty ||= timesChanged
      throw err
    }
    this.inodeDirty = true
  }

  /** Writes and syncs the header: metadata operations are durable when they return. */
  private async saveHeader (): Promise<void> {
    await this.writeHeader()
    this.inodeDirty = false
    await this.objects.sync([this.inode])
  }
}

const ZEROS = Buffer.alloc(2 ** 20)

function isZero (data: Uint8Array): boolean {
  for (let off = 0; off < data.length; off += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - off)
    if (Buffer.compare(data.subarray(off, off + n), ZEROS.subarray(0, n)) !== 0) return false
  }
  return true
}
