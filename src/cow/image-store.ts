// The set of images: the directory (name -> vid), image creation, deletion, rename and resize,
// and collection of objects that no image refers to any more.
//
// Metadata operations run one at a time and are durable when they return. Deletion removes the
// name first and the objects after (or after the last open handle closes, as for a file), so a
// crash in between leaves only unreferenced objects, which open() collects.

import crypto from 'node:crypto'
import { SheepError } from '../errors'
import { MAX_VID, ObjectType, oidIndex, oidToHex, oidType, oidVid } from '../objects/oid'
import type { ObjectStore, StoreUsage } from '../objects/types'
import { decodeDirectory, DIRECTORY_OID, encodeDirectory } from './directory'
import { checkImageSize, checkObjectSize, DEFAULT_OBJECT_SIZE, Image } from './image'
import { Mutex } from './lock'
import { validateImageName } from './names'

export const DEFAULT_COPIES = 3
export const MAX_COPIES = 31

export interface CreateOptions {
  objectSize?: number
  copies?: number
  mode?: number
  uid?: number
  gid?: number
}

export interface ImageInfo {
  name: string
  vid: number
  size: number
  allocated: number
  objectSize: number
  copies: number
  parent: number
  ctime: number
  mtime: number
  openHandles: number
}

export interface ImageStoreOptions {
  log?: (line: string) => void
}

export class ImageStore {
  readonly objects: ObjectStore
  private readonly byName = new Map<string, Image>()
  /** Images whose inode cannot be read: kept in the directory, never collected, deletable. */
  private readonly broken = new Map<string, { vid: number, reason: string }>()
  private readonly meta = new Mutex()
  private readonly log: (line: string) => void
  private readonly pendingDestroy = new Set<Promise<void>>()
  /** Unlinked images still open: their vids stay taken until they are destroyed. */
  private readonly unlinkedOpen = new Set<Image>()

  constructor (objects: ObjectStore, opts: ImageStoreOptions = {}) {
    this.objects = objects
    this.log = opts.log ?? (() => {})
  }

  /** Loads the directory and every inode, then deletes objects nothing refers to. */
  async open (): Promise<{ collected: number }> {
    const dir = await this.objects.stat(DIRECTORY_OID) === null ? [] : decodeDirectory(await this.objects.readAll(DIRECTORY_OID))
    for (const { name, vid } of dir) {
      let image: Image
      try {
        image = await Image.load(this.objects, vid)
      } catch (err) {
        // A missing inode is damage too: the directory names it.
        if (!(err instanceof SheepError) || (err.code !== 'EIO' && err.code !== 'ENOENT')) throw err
        this.broken.set(name, { vid, reason: err.message })
        this.log(`image ${JSON.stringify(name)} is unreadable and kept as it is: ${err.message}`)
        continue
      }
      if (image.name !== name) await image.rename(name)
      this.byName.set(name, image)
    }
    return { collected: await this.collectGarbage() }
  }

  /** Writes out every image's header; waits for deferred deletions. */
  async close (): Promise<void> {
    await Promise.all([...this.pendingDestroy])
    for (const image of this.byName.values()) {
      await image.flush()
      await image.sync()
    }
  }

  /** One line per image that could not be loaded. */
  problems (): string[] {
    return [...this.broken].map(([name, b]) => `image ${JSON.stringify(name)} is unreadable: ${b.reason}`)
  }

  /** Every name in the directory, unreadable images included. */
  names (): string[] {
    return [...this.byName.keys(), ...this.broken.keys()].sort()
  }

  list (): Image[] {
    return [...this.byName.values()].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  }

  lookup (name: string): Image | undefined {
    return this.byName.get(name)
  }

  get (name: string): Image {
    const image = this.byName.get(name)
    if (image === undefined) {
      const broken = this.broken.get(name)
      if (broken) throw SheepError.corrupt(`image ${JSON.stringify(name)} is unreadable: ${broken.reason}`)
      throw SheepError.notFound(`image ${JSON.stringify(name)}`)
    }
    return image
  }

  info (image: Image): ImageInfo {
    const h = image.header
    return {
      name: h.name,
      vid: h.vid,
      size: h.size,
      allocated: image.allocatedBytes,
      objectSize: h.objectSize,
      copies: h.copies,
      parent: h.parent,
      ctime: h.ctime,
      mtime: h.mtime,
      openHandles: image.openCount
    }
  }

  async create (name: string, size: number, opts: CreateOptions = {}): Promise<Image> {
    validateImageName(name)
    const objectSize = opts.objectSize ?? DEFAULT_OBJECT_SIZE
    checkObjectSize(objectSize)
    checkImageSize(size, objectSize)
    const copies = opts.copies ?? DEFAULT_COPIES
    if (!Number.isInteger(copies) || copies < 1 || copies > MAX_COPIES) throw SheepError.invalid(`copies must be from 1 to ${MAX_COPIES}`)
    return await this.meta.run(async () => {
      if (this.byName.has(name) || this.broken.has(name)) throw SheepError.exists(`image ${JSON.stringify(name)}`)
      const now = Date.now()
      const image = await Image.create(this.objects, {
        vid: this.newVid(),
        name,
        size,
        objectSize,
        copies,
        parent: 0,
        ctime: now,
        mtime: now,
        mode: (opts.mode ?? 0o644) & 0o7777,
        uid: opts.uid ?? 0,
        gid: opts.gid ?? 0
      })
      this.byName.set(name, image)
      try {
        await this.saveDirectory()
      } catch (err) {
        this.byName.delete(name)
        throw err
      }
      return image
    })
  }

  /**
   * Removes the name at once; the objects go now, or when the last open handle closes.
   * onProgress reports objects freed when that happens now.
   */
  async remove (name: string, onProgress?: (done: number, total: number) => void): Promise<void> {
    if (this.broken.has(name)) return await this.removeBroken(name)
    const image = await this.meta.run(async () => {
      const image = this.get(name)
      this.byName.delete(name)
      try {
        await this.saveDirectory()
      } catch (err) {
        this.byName.set(name, image)
        throw err
      }
      image.unlinked = true
      this.unlinkedOpen.add(image)
      return image
    })
    if (image.openCount === 0) await this.destroy(image, onProgress)
  }

  /** Renames; an existing image of the new name is replaced, as rename(2) replaces a file. */
  async rename (from: string, to: string): Promise<void> {
    validateImageName(to)
    const replaced = await this.meta.run(async () => {
      const image = this.get(from)
      if (from === to) return undefined
      const old = this.byName.get(to)
      this.byName.delete(from)
      this.byName.set(to, image)
      try {
        await this.saveDirectory()
      } catch (err) {
        this.byName.delete(to)
        if (old) this.byName.set(to, old)
        this.byName.set(from, image)
        throw err
      }
      await image.rename(to)
      if (old) {
        old.unlinked = true
        this.unlinkedOpen.add(old)
      }
      return old
    })
    if (replaced && replaced.openCount === 0) await this.destroy(replaced)
  }

  async resize (name: string, size: number): Promise<void> {
    await this.meta.run(async () => await this.get(name).resize(size))
  }

  /** Opens a handle on an image; every openImage() is paired with one closeImage(). */
  openImage (name: string): Image {
    const image = this.get(name)
    image.openCount++
    return image
  }

  /** An open handle was closed; frees an unlinked image with the last one. */
  async closeImage (image: Image): Promise<void> {
    image.openCount--
    if (image.openCount > 0) return
    if (image.unlinked) await this.destroy(image)
    else await image.flush()
  }

  async usage (): Promise<StoreUsage> {
    return await this.objects.usage()
  }

  private async destroy (image: Image, onProgress?: (done: number, total: number) => void): Promise<void> {
    const p = image.destroy(onProgress)
    this.pendingDestroy.add(p)
    try {
      await p
    } finally {
      this.pendingDestroy.delete(p)
      this.unlinkedOpen.delete(image)
    }
  }

  /** Deletes an unreadable image: its name, then every object of its vid. */
  private async removeBroken (name: string): Promise<void> {
    await this.meta.run(async () => {
      const broken = this.broken.get(name)
      if (broken === undefined) throw SheepError.notFound(`image ${JSON.stringify(name)}`)
      this.broken.delete(name)
      try {
        await this.saveDirectory()
      } catch (err) {
        this.broken.set(name, broken)
        throw err
      }
      const doomed = []
      for await (const info of this.objects.list()) {
        if (oidType(info.oid) !== ObjectType.Meta && oidVid(info.oid) === broken.vid) doomed.push(info.oid)
      }
      for (const oid of doomed) await this.objects.remove(oid)
    })
  }

  private newVid (): number {
    const used = new Set([...this.byName.values(), ...this.broken.values(), ...this.unlinkedOpen].map(i => i.vid))
    if (used.size >= MAX_VID) throw SheepError.noSpace('no free image ids')
    for (;;) {
      const vid = crypto.randomInt(1, MAX_VID + 1)
      if (!used.has(vid)) return vid
    }
  }

  private async saveDirectory (): Promise<void> {
    const entries = [...this.byName.entries(), ...this.broken.entries()].map(([name, image]) => ({ name, vid: image.vid }))
    await this.objects.replace(DIRECTORY_OID, encodeDirectory(entries))
  }

  /** Deletes objects that belong to no image in the directory, or to a block it no longer owns. */
  private async collectGarbage (): Promise<number> {
    const byVid = new Map<number, Image>()
    for (const image of this.byName.values()) byVid.set(image.vid, image)
    const keep = new Set([...this.broken.values()].map(b => b.vid))
    const owned = new Map<number, Set<number>>()
    const ownedBy = (image: Image): Set<number> => {
      let set = owned.get(image.vid)
      if (set === undefined) { set = new Set(image.ownedBlocks()); owned.set(image.vid, set) }
      return set
    }
    const orphans = []
    for await (const info of this.objects.list()) {
      const type = oidType(info.oid)
      if (type === ObjectType.Meta || keep.has(oidVid(info.oid))) continue
      const image = byVid.get(oidVid(info.oid))
      if (image === undefined) orphans.push(info.oid)
      else if (type === ObjectType.Data && !ownedBy(image).has(oidIndex(info.oid))) orphans.push(info.oid)
    }
    for (const oid of orphans) {
      this.log(`collecting unreferenced object ${oidToHex(oid)}`)
      await this.objects.remove(oid)
    }
    return orphans.length
  }
}
