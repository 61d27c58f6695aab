// The set of images and snapshots: the directory, and every operation that changes it
// (create, delete, rename, resize, snapshot, clone, rollback, flatten), plus freeing objects
// nothing refers to any more.
//
// How this works: every image and snapshot is an inode with its own vid. A snapshot freezes the
// image's current inode under the tag and gives the image a new inode whose owner table is a copy
// (so no data moves); a clone is a new image whose table is a copy of a snapshot's. The directory
// object maps (name, tag) to vids and is replaced atomically: it is the commit point of every
// operation here, and operations run one at a time. A deleted snapshot that live images still
// read through stays in the directory, hidden, until nothing reads through it (see gc()).
// Crashes leave at worst objects or inodes the directory does not reach; open() collects them.

import crypto from 'node:crypto'
import { SheepError } from '../errors'
import { dataOid, inodeOid, MAX_VID, ObjectType, oidIndex, oidToHex, oidType, oidVid } from '../objects/oid'
import type { ObjectStore, StoreUsage } from '../objects/types'
import type { ObjectId } from '../objects/oid'
import { DIRECTORY_OID, type DirectoryEntry, encodeDirectory, HIDDEN, readDirectory } from './directory'
import { checkImageSize, checkObjectSize, DEFAULT_OBJECT_SIZE, Image } from './image'
import { blockCount, decodeHeader, HEADER_BYTES, type InodeHeader } from './inode'
import { Mutex } from './lock'
import { validateImageName, validateTag } from './names'
import { OwnerTable } from './owner-table'
import type { TokenPurpose, WriteTokens } from './tokens'

export const DEFAULT_COPIES = 3
export const MAX_COPIES = 31
/** A new image's mode without one asked for: root's alone (libvirt chowns an image to its guest). */
export const DEFAULT_MODE = 0o600

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
  /** "image@tag" of the snapshot this was made from; '' for none. */
  parent: string
  ctime: number
  mtime: number
  openHandles: number
  snapshots: number
}

export interface SnapshotInfo {
  name: string
  tag: string
  vid: number
  size: number
  /** Bytes held by this snapshot alone: freed when it is deleted and no clone needs them. */
  pinned: number
  snapshotTime: number
}

export interface TreeNode {
  vid: number
  name: string
  tag: string
  kind: 'image' | 'snapshot' | 'deleted snapshot'
  /** vid of the snapshot it was made from; 0 for a root. */
  parent: number
  size: number
  allocated: number
  time: number
}

export interface ImageStoreOptions {
  log?: (line: string) => void
  /**
   * This store's images are written through this ImageStore only (one host): open repairs what a
   * crash left - objects nothing refers to, owner entries past an image's size, bytes past its
   * end in its last block. False on a cluster, where another host may be between those steps.
   */
  soleWriter?: boolean
  /** On a cluster, the images' write tokens (./tokens.ts); a one-host store has none. */
  tokens?: WriteTokens
  /**
   * Keeps an object the start-up repair is in doubt about out of the way of the images (the
   * local store moves it to its strays folder) and says where it went. Without it such an
   * object stays where it is, reported in the log.
   */
  setAside?: (oid: ObjectId) => Promise<string>
  /**
   * On a cluster, how many copies a byte written takes: statfs (df) shows the members' space
   * divided by it, what images can still hold, not the raw sum.
   */
  copiesPerByte?: () => number
}

/** What open() did with objects nothing refers to. */
export interface OpenRepairs {
  /** Deleted: objects of images the directory no longer has, blocks past an image's end. */
  collected: number
  /** Kept aside: blocks inside an image that its inode does not point at. */
  strays: number
}

type Progress = (done: number, total: number) => void

/** A metadata operation that keeps losing its commit to other hosts gives up after this many tries. */
const MAX_COMMIT_ATTEMPTS = 20

const snapKey = (name: string, tag: string): string => `${name}\u0000${tag}`

export class ImageStore {
  readonly objects: ObjectStore
  /** The directory as committed: vid -> entry. */
  private readonly dir = new Map<number, DirectoryEntry>()
  /** Every loaded inode: images, snapshots (visible or hidden), unlinked images still open. */
  private readonly inodes = new Map<number, Image>()
  /** Directory entries whose inode cannot be read: kept, never collected, deletable. */
  private readonly broken = new Map<number, string>()
  private byName = new Map<string, Image>()
  private snapshots = new Map<string, Image>()
  private readonly unlinkedOpen = new Set<Image>()
  private readonly meta = new Mutex()
  /** Versions of the directory and of each inode as last loaded: refresh() reloads what moved. */
  private dirVersion = 0
  private readonly inodeVersions = new Map<number, number>()
  /** Versions of inodes open here whose attributes alone were taken (reloadInode). */
  private readonly attributeVersions = new Map<number, number>()
  private readonly log: (line: string) => void
  private readonly soleWriter: boolean
  private readonly pendingDestroy = new Set<Promise<void>>()
  private readonly tableOf = (vid: number): OwnerTable | undefined => this.inodes.get(vid)?.owners
  private readonly tokens: WriteTokens | undefined
  private readonly setAside: ((oid: ObjectId) => Promise<string>) | undefined
  /** Images whose objects are being deleted: their token is not given to another host. */
  private readonly dying = new Set<number>()

  private readonly copiesPerByte: () => number

  constructor (objects: ObjectStore, opts: ImageStoreOptions = {}) {
    this.objects = objects
    this.log = opts.log ?? (() => {})
    this.soleWriter = opts.soleWriter ?? true
    this.tokens = opts.tokens
    this.setAside = opts.setAside
    this.copiesPerByte = opts.copiesPerByte ?? (() => 1)
  }

  /** Loads the directory and every inode, then deletes what nothing refers to. */
  async open (): Promise<OpenRepairs> {
    const dirInfo = await this.objects.stat(DIRECTORY_OID)
    this.dirVersion = dirInfo?.version ?? 0
    const entries = dirInfo === null ? [] : await readDirectory(this.objects)
    for (const e of entries) {
      this.dir.set(e.vid, e)
      let image: Image
      try {
        image = await Image.load(this.objects, e.vid, this.tableOf, this.soleWriter)
      } catch (err) {
        // A missing inode is damage too: the directory names it.
        if (!(err instanceof SheepError) || (err.code !== 'EIO' && err.code !== 'ENOENT')) throw err
        this.broken.set(e.vid, err.message)
        this.log(`${label(e)} is unreadable and kept as it is: ${err.message}`)
        continue
      }
      this.inodes.set(e.vid, image)
      this.inodeVersions.set(e.vid, (await this.objects.stat(inodeOid(e.vid)))?.version ?? 0)
    }
    for (const [vid, image] of this.inodes) {
      const e = this.dir.get(vid) as DirectoryEntry
      // The directory is the commit point: a header that missed a rename or a snapshot follows it.
      if (image.name !== e.name || image.header.tag !== e.tag) {
        const relabel = async (): Promise<void> => await image.relabel({ name: e.name, tag: e.tag, snapshotTime: e.tag === '' ? 0 : image.header.snapshotTime || Date.now() })
        if (this.tokens === undefined) await relabel()
        else {
          // On a cluster as the holder of its token; one that another host has open for writing
          // keeps its header until a later change there.
          try {
            await this.changing(image, relabel)
          } catch (err) {
            this.log(`${label(e)}: its header still says ${JSON.stringify(image.header.tag === '' ? image.name : `${image.name}@${image.header.tag}`)}: ${(err as Error).message}`)
          }
        }
      }
      if (this.soleWriter && !image.isSnapshot) await image.zeroTail()
    }
    this.reindex()
    const repairs = this.soleWriter ? await this.collectGarbage() : { collected: 0, strays: 0 }
    await this.metaOp(async () => await this.gc())
    return repairs
  }

  /** Writes out every image's header; waits for deferred deletions. */
  async close (): Promise<void> {
    await Promise.all([...this.pendingDestroy])
    // One image that cannot be written out must not keep the others from being written.
    let first: unknown
    for (const image of this.inodes.values()) {
      if (image.isSnapshot) continue
      try {
        // What a new view left unchecked is written out only by the token's holder.
        await this.writeOut(image, async () => { await image.flush(); await image.sync() })
      } catch (err) {
        first ??= err
      }
    }
    if (first !== undefined) throw first
  }

  /** One line per image or snapshot that could not be loaded. */
  problems (): string[] {
    return [...this.broken].map(([vid, reason]) => `${label(this.dir.get(vid) as DirectoryEntry)} is unreadable: ${reason}`)
  }

  /** Every image name in the directory, unreadable images included. */
  names (): string[] {
    const broken = [...this.broken.keys()].map(v => this.dir.get(v) as DirectoryEntry).filter(e => e.tag === '').map(e => e.name)
    return [...this.byName.keys(), ...broken].sort()
  }

  list (): Image[] {
    return [...this.byName.values()].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  }

  get (name: string): Image {
    const image = this.byName.get(name)
    if (image !== undefined) return image
    for (const [vid, reason] of this.broken) {
      const e = this.dir.get(vid) as DirectoryEntry
      if (e.tag === '' && e.name === name) throw SheepError.corrupt(`image ${JSON.stringify(name)} is unreadable: ${reason}`)
    }
    throw SheepError.notFound(`image ${JSON.stringify(name)}`)
  }

  getSnapshot (name: string, tag: string): Image {
    const snap = this.snapshots.get(snapKey(name, tag))
    if (snap === undefined) {
      this.get(name)
      throw SheepError.notFound(`snapshot ${JSON.stringify(`${name}@${tag}`)}`)
    }
    return snap
  }

  /** Visible snapshots of an image, oldest first. */
  snapshotsOf (name: string): Image[] {
    return [...this.snapshots.values()].filter(s => s.name === name).sort((a, b) => a.header.snapshotTime - b.header.snapshotTime)
  }

  /** Names of images that have snapshots (the folders of /.snapshots). */
  snapshotFolders (): string[] {
    return [...new Set([...this.snapshots.values()].map(s => s.name))].sort()
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
      parent: this.describe(h.parent),
      ctime: h.ctime,
      mtime: h.mtime,
      openHandles: image.openCount,
      snapshots: this.snapshotsOf(h.name).length
    }
  }

  snapshotInfo (snap: Image): SnapshotInfo {
    const h = snap.header
    return { name: h.name, tag: h.tag, vid: h.vid, size: h.size, pinned: snap.allocatedBytes, snapshotTime: h.snapshotTime }
  }

  /**
   * The vids whose objects image `name` reads or pins: its own, its snapshots', and those of the
   * chain it was cloned from (hidden parents too).
   */
  vidsOf (name: string): Set<number> {
    const vids = new Set<number>()
    for (const image of [this.get(name), ...this.snapshotsOf(name)]) {
      for (let vid = image.header.vid; vid !== 0 && !vids.has(vid);) {
        vids.add(vid)
        vid = this.inodes.get(vid)?.header.parent ?? 0
      }
    }
    return vids
  }

  /** "image@tag" for a snapshot vid, "(deleted) image@tag" for a hidden one, '' for 0. */
  describe (vid: number): string {
    if (vid === 0) return ''
    const e = this.dir.get(vid)
    if (e === undefined) return `(gone ${vid.toString(16)})`
    const name = e.tag === '' ? e.name : `${e.name}@${e.tag}`
    return (e.flags & HIDDEN) !== 0 ? `(deleted) ${name}` : name
  }

  /** Every inode with its parent link, for `sheep image tree`. */
  tree (): TreeNode[] {
    const nodes: TreeNode[] = []
    for (const [vid, image] of this.inodes) {
      const e = this.dir.get(vid)
      if (e === undefined) continue
      const h = image.header
      nodes.push({
        vid,
        name: e.name,
        tag: e.tag,
        kind: e.tag === '' ? 'image' : (e.flags & HIDDEN) !== 0 ? 'deleted snapshot' : 'snapshot',
        parent: h.parent,
        size: h.size,
        allocated: image.allocatedBytes,
        time: e.tag === '' ? h.ctime : h.snapshotTime
      })
    }
    return nodes.sort((a, b) => a.time - b.time)
  }

  async create (name: string, size: number, opts: CreateOptions = {}): Promise<Image> {
    validateImageName(name)
    const objectSize = opts.objectSize ?? DEFAULT_OBJECT_SIZE
    checkObjectSize(objectSize)
    checkImageSize(size, objectSize)
    const copies = checkCopies(opts.copies ?? DEFAULT_COPIES)
    return await this.metaOp(async () => {
      this.checkFree(name)
      const now = Date.now()
      const header: InodeHeader = {
        vid: this.newVid(),
        name,
        size,
        objectSize,
        copies,
        parent: 0,
        ctime: now,
        mtime: now,
        mode: (opts.mode ?? DEFAULT_MODE) & 0o7777,
        uid: opts.uid ?? 0,
        gid: opts.gid ?? 0,
        tag: '',
        snapshotTime: 0,
        xattrs: []
      }
      const image = await Image.create(this.objects, header, emptyTable(header), this.tableOf)
      await this.commit(() => this.dir.set(header.vid, { name, tag: '', vid: header.vid, flags: 0 }),
        () => this.dir.delete(header.vid), header.vid)
      this.inodes.set(header.vid, image)
      this.reindex()
      return image
    })
  }

  /**
   * Deletes an image and its snapshots. The name goes at once; the image's objects go now, or
   * when its last open handle closes (as for a file); snapshot objects go when nothing reads
   * through them.
   */
  async remove (name: string, onProgress?: Progress): Promise<void> {
    const image = await this.metaOp(async () => {
      const brokenVid = [...this.broken.keys()].find(v => { const e = this.dir.get(v) as DirectoryEntry; return e.tag === '' && e.name === name })
      if (!this.byName.has(name) && brokenVid !== undefined) {
        await this.removeBroken(brokenVid)
        return undefined
      }
      const image = this.get(name)
      await this.changing(image, async () => await this.unlinkImage(image))
      return image
    })
    if (image === undefined) return
    if (image.openCount === 0) await this.destroy(image, onProgress)
    await this.metaOp(async () => await this.gc())
  }

  /**
   * Renames an image and its snapshots. An existing image of the new name is an EEXIST error,
   * or, with `replace` (what rename(2) does), deleted.
   */
  async rename (from: string, to: string, opts: { replace?: boolean } = {}): Promise<void> {
    validateImageName(to)
    const replaced = await this.metaOp(async () => {
      const image = this.get(from)
      if (from === to) return undefined
      const old = this.byName.get(to)
      if (old === undefined || opts.replace !== true) this.checkFree(to)
      const moved = [image, ...this.snapshotsOf(from)]
      const rename = async (): Promise<void> => {
        await this.commit(() => {
          if (old) this.dropFromDirectory(old)
          for (const i of moved) (this.dir.get(i.vid) as DirectoryEntry).name = to
        }, () => {
          for (const i of moved) (this.dir.get(i.vid) as DirectoryEntry).name = from
          if (old) this.restoreToDirectory(old)
        })
        if (old) this.markUnlinked(old)
        // Each header by the holder of its inode's token: replicas take nothing else (src/swarm/replica.ts).
        for (const i of moved) await (i === image ? i.relabel({ name: to }) : this.changing(i, async () => await i.relabel({ name: to })))
      }
      // The name is in the header too, which the token's holder writes.
      await this.changing(image, async () => old === undefined ? await rename() : await this.changing(old, rename))
      this.reindex()
      return old
    })
    if (replaced === undefined) return
    if (replaced.openCount === 0) await this.destroy(replaced)
    await this.metaOp(async () => await this.gc())
  }

  async resize (name: string, size: number): Promise<void> {
    await this.metaOp(async () => {
      const image = this.get(name)
      await this.changing(image, async () => await image.resize(size))
    })
  }

  /** Freezes the image's current state as snapshot `tag`, with no data copied. */
  async snapshot (name: string, tag: string): Promise<Image> {
    validateTag(tag)
    return await this.metaOp(async () => await this.snapshotLocked(name, tag))
  }

  private async snapshotLocked (name: string, tag: string): Promise<Image> {
    const image = this.get(name)
    if (this.snapshots.has(snapKey(name, tag))) throw SheepError.exists(`snapshot ${JSON.stringify(`${name}@${tag}`)}`)
    return await this.freezeLocked(image, tag, 0)
  }

  /**
   * Freezes what image owns so that a copy can share its blocks (copy-range.ts): its current
   * inode becomes a hidden snapshot, and the image goes on as a new inode reading through it, as
   * after a snapshot. Nothing writes in place into a frozen inode's objects, and gc frees them
   * once no live table reads them, as it does a deleted snapshot's. No-op for a snapshot, or an
   * image no longer in the directory under its name. EBUSY while another host of a cluster has
   * it open for writing.
   */
  async freeze (image: Image): Promise<void> {
    await this.metaOp(async () => {
      if (image.isSnapshot || this.byName.get(image.name) !== image) return
      // '@' is in no user's tag: this never takes the name of a snapshot one may create.
      await this.freezeLocked(image, `copy@${Date.now()}`, HIDDEN)
    })
  }

  /** The current inode of image becomes snapshot `tag` (with directory `flags`); the image goes on as a new inode. */
  private async freezeLocked (image: Image, tag: string, flags: number): Promise<Image> {
    const name = image.name
    return await this.changing(image, async () => await image.exclusive(async () => {
      // Every acknowledged write is in the snapshot; writes that wait on the lock land after it.
      await image.flush()
      await image.sync()
      const frozen = image.vid
      const header: InodeHeader = { ...image.header, vid: this.newVid(), parent: frozen, tag: '', snapshotTime: 0 }
      const table = image.owners.clone()
      await Image.writeInode(this.objects, header, table)
      const entry = this.dir.get(frozen) as DirectoryEntry
      await this.commit(() => {
        entry.tag = tag
        entry.flags |= flags
        this.dir.set(header.vid, { name, tag: '', vid: header.vid, flags: 0 })
      }, () => {
        entry.tag = ''
        entry.flags &= ~flags
        this.dir.delete(header.vid)
      }, header.vid)
      const snap = image.takeOver(header, table)
      this.newInode(image)
      // Writes waiting on the lock go on into the new inode's objects, which replicas take only
      // from the holder of its token (src/swarm/replica.ts): take it before they do.
      await this.hold(image, 'change')
      await snap.relabel({ tag, snapshotTime: Date.now() })
      this.inodes.set(header.vid, image)
      this.inodes.set(frozen, snap)
      this.reindex()
      return snap
    }))
  }

  /** A new writable image that reads as snapshot name@tag reads, with no data copied. */
  async clone (name: string, tag: string, newName: string, opts: CreateOptions = {}): Promise<Image> {
    validateImageName(newName)
    if (opts.copies !== undefined) checkCopies(opts.copies)
    return await this.metaOp(async () => await this.cloneLocked(name, tag, newName, opts))
  }

  /** A clone of the image as it is now, through a snapshot `for-<newName>` taken for it; all or nothing. */
  async cloneCurrent (name: string, newName: string, opts: CreateOptions = {}): Promise<Image> {
    validateImageName(newName)
    if (opts.copies !== undefined) checkCopies(opts.copies)
    return await this.metaOp(async () => {
      this.get(name)
      this.checkFree(newName)
      const snap = await this.snapshotLocked(name, this.freeTag(name, `for-${newName}`))
      return await this.cloneLocked(name, snap.header.tag, newName, opts)
    })
  }

  private async cloneLocked (name: string, tag: string, newName: string, opts: CreateOptions): Promise<Image> {
    const snap = this.getSnapshot(name, tag)
    this.checkFree(newName)
    const h = snap.header
    const now = Date.now()
    const header: InodeHeader = {
      ...h,
      vid: this.newVid(),
      name: newName,
      copies: opts.copies ?? h.copies,
      parent: h.vid,
      ctime: now,
      mtime: now,
      tag: '',
      snapshotTime: 0
    }
    const image = await Image.create(this.objects, header, snap.owners.clone(), this.tableOf)
    await this.commit(() => this.dir.set(header.vid, { name: newName, tag: '', vid: header.vid, flags: 0 }),
      () => this.dir.delete(header.vid), header.vid)
    this.inodes.set(header.vid, image)
    this.reindex()
    return image
  }

  /** A tag for an implicit snapshot (e.g. of a clone made from an image): unused among name's snapshots. */
  private freeTag (name: string, base: string): string {
    let tag = base
    for (let n = 2; this.snapshots.has(snapKey(name, tag)); n++) tag = `${base}-${n}`
    return tag
  }

  /** Makes the image read exactly as snapshot tag does; refused while the image is open for writing. */
  async rollback (name: string, tag: string): Promise<void> {
    await this.metaOp(async () => {
      const image = this.get(name)
      const snap = this.getSnapshot(name, tag)
      await this.changing(image, async () => await image.exclusive(async () => {
        // Checked with guest I/O drained, as late as it can be.
        if (image.openWriters > 0) throw SheepError.busy(`${name} is open for writing: stop what uses it first`)
        const now = Date.now()
        const header: InodeHeader = { ...image.header, vid: this.newVid(), size: snap.size, parent: snap.vid, mtime: now }
        const table = snap.owners.clone()
        await Image.writeInode(this.objects, header, table)
        const previous = image.vid
        const entry = this.dir.get(previous) as DirectoryEntry
        await this.commit(() => {
          this.dir.delete(previous)
          this.dir.set(header.vid, { ...entry, vid: header.vid })
        }, () => {
          this.dir.delete(header.vid)
          this.dir.set(previous, entry)
        }, header.vid)
        const old = image.takeOver(header, table)
        this.newInode(image)
        this.inodes.delete(previous)
        this.inodes.set(header.vid, image)
        await this.destroyObjects(old)
      }))
      this.reindex()
      await this.gc()
    })
  }

  /** Deletes a snapshot; its objects are freed unless a clone or the image still reads them. */
  async deleteSnapshot (name: string, tag: string): Promise<void> {
    await this.metaOp(async () => {
      const snap = this.getSnapshot(name, tag)
      const e = this.dir.get(snap.vid) as DirectoryEntry
      await this.commit(() => { e.flags |= HIDDEN }, () => { e.flags &= ~HIDDEN })
      this.reindex()
      await this.gc()
    })
  }

  /** Copies every block the image shares, so it no longer depends on any snapshot. */
  async flatten (name: string, onProgress?: Progress): Promise<void> {
    await this.metaOp(async () => {
      const image = this.get(name)
      await this.changing(image, async () => await image.flatten(onProgress))
      await this.gc()
    })
  }

  /** Opens a handle on an image; every openImage() is paired with one closeImage(). */
  /** The copies image vid asks for (undefined for an unknown vid). */
  copiesOf (vid: number): number | undefined {
    return this.inodes.get(vid)?.header.copies
  }

  /**
   * Picks up what other hosts of a cluster changed: the directory when its version moved (new,
   * renamed and deleted images and snapshots), and the inodes of images not open here whose
   * version moved (writes, resizes). An image open here is written only from here.
   */
  async refresh (): Promise<void> {
    await this.meta.run(async () => await this.reload())
  }

  /** The body of refresh(), with the meta mutex held. */
  private async reload (): Promise<void> {
    await this.reloadDirectory()
    for (const vid of this.dir.keys()) await this.reloadInode(vid)
    this.reindex()
  }

  /** Loads the directory again if its version moved; with the meta mutex held. */
  private async reloadDirectory (): Promise<void> {
    const info = await this.objects.stat(DIRECTORY_OID)
    if (info !== null && info.version !== this.dirVersion) {
      const entries = await readDirectory(this.objects)
      this.dirVersion = info.version
      const listed = new Set(entries.map(e => e.vid))
      for (const vid of [...this.dir.keys()]) {
        if (listed.has(vid)) continue
        this.dir.delete(vid)
        if ((this.inodes.get(vid)?.openCount ?? 0) === 0) {
          this.inodes.delete(vid)
          this.inodeVersions.delete(vid)
          this.attributeVersions.delete(vid)
        }
      }
      for (const e of entries) this.dir.set(e.vid, e)
    }
  }

  /**
   * Opens a handle like openImage, after loading again what another host changed of the
   * directory, of the image's inode and of the inodes it reads through (a snapshot loaded here
   * while it was still the image).
   */
  async acquire (name: string, writable: boolean): Promise<Image> {
    await this.meta.run(async () => {
      // Another host may have snapshotted or copied the image since the last poll: the name then
      // stands for a new inode, and the one loaded here as the image is frozen (writes: EROFS).
      await this.reloadDirectory()
      const entry = [...this.dir.values()].find(e => e.tag === '' && e.name === name)
      if (entry !== undefined) await this.reloadChain(entry.vid)
      this.reindex()
    })
    return this.openImage(name, writable)
  }

  /**
   * reloadInode for vid and each inode it reads through: those it was made from (snapshot or
   * clone parents) and those its entries name (a copy shares blocks of another image's frozen
   * inode, which this host may not have loaded yet).
   */
  private async reloadChain (vid: number): Promise<void> {
    const seen = new Set<number>([0, vid])
    const todo = [vid]
    const add = (v: number): void => { if (!seen.has(v)) { seen.add(v); todo.push(v) } }
    for (let v = todo.pop(); v !== undefined; v = todo.pop()) {
      await this.reloadInode(v)
      const image = this.inodes.get(v)
      if (image === undefined) continue
      add(image.header.parent)
      const t = image.owners
      for (const idx of t.blocks()) { add(t.owner(idx)); add(t.backing(idx)) }
    }
  }

  /**
   * Loads inode vid again if its version moved and no handle here has it open. Of one open here,
   * only its owner, group, mode and extended attributes are taken, unless this host holds its
   * token (then no other host changes it): the kernel checks a new open against them.
   */
  private async reloadInode (vid: number): Promise<void> {
    const image = this.inodes.get(vid)
    // An instance in use keeps its token state: a release must wait for what runs under it.
    const inUse = image !== undefined && (image.openCount > 0 || image.token.busy)
    if (inUse && (this.tokens === undefined || image.token.held)) return
    const version = (await this.objects.stat(inodeOid(vid)))?.version
    if (inUse) {
      if (version !== undefined && version !== (this.attributeVersions.get(vid) ?? this.inodeVersions.get(vid))) {
        const bytes = Buffer.alloc(HEADER_BYTES)
        const turn = image.token.turn
        try {
          await this.objects.read(inodeOid(vid), 0, HEADER_BYTES, bytes, 0)
          const fresh = decodeHeader(bytes, `image ${vid.toString(16)}`)
          // Taken meanwhile, this host may have changed them after that read: the next refresh reads again.
          if (image.token.held || image.token.turn !== turn) return
          image.adoptAttributes(fresh)
          this.attributeVersions.set(vid, version)
        } catch (err) {
          // The handles open here go on; the next refresh tries again.
          this.log(`${image.name}: attributes not refreshed: ${(err as Error).message}`)
        }
      }
      return
    }
    // An instance lost to another host is replaced by a fresh one once nothing here uses it.
    if (version === undefined || (image !== undefined && image.token.lost === null && version === this.inodeVersions.get(vid))) return
    try {
      this.inodes.set(vid, await Image.load(this.objects, vid, this.tableOf, false))
      this.inodeVersions.set(vid, version)
      this.attributeVersions.delete(vid)
      this.broken.delete(vid)
    } catch (err) {
      this.broken.set(vid, (err as Error).message)
    }
  }

  /**
   * Runs I/O through a handle on image. On a cluster, I/O through a writable handle holds the
   * image's write token: the first takes it (loading the inode again if another host had it),
   * and a release waits until the I/O under it is done.
   */
  io<T> (image: Image, writable: boolean, fn: () => Promise<T>): Promise<T> {
    // Not async: one host's I/O is not wrapped in a promise more than it was without tokens.
    if (!writable || this.tokens === undefined) return fn()
    return this.underToken(image, 'io', fn)
  }

  /**
   * Runs a flush or sync of image: as the holder of its token when this host kept something
   * unwritten of it. Not otherwise: every close of a descriptor (close-on-exec in a forked child
   * too) sends a flush, which must not take the token from the host that writes the image.
   */
  writeOut<T> (image: Image, fn: () => Promise<T>): Promise<T> {
    return this.io(image, image.hasUnwritten, fn)
  }

  /** Runs a change of image (resize, snapshot, ...) as the holder of its token, which waits for it before a release. */
  private async changing<T> (image: Image, fn: () => Promise<T>): Promise<T> {
    return this.tokens === undefined ? await fn() : await this.underToken(image, 'change', fn)
  }

  private async underToken<T> (image: Image, purpose: TokenPurpose, fn: () => Promise<T>): Promise<T> {
    const token = image.token
    while (!token.held) await this.hold(image, purpose)
    token.enter()
    try {
      return await fn()
    } catch (err) {
      // The store refuses writes of a host whose token another host took (ESTALE): fenced.
      if (err instanceof SheepError && err.code === 'ESTALE') throw this.lose(image, `${image.name}: ${err.message}; open it again`)
      throw err
    } finally {
      token.leave()
    }
  }

  /**
   * Another host takes image vid's token: this host writes out the owner-table entries and the
   * header it kept of the image, and gives up its hold. For a change, refuses (EBUSY) while the
   * image is open for writing here; ENOENT while its objects are being deleted.
   */
  async releaseToken (vid: number, purpose: TokenPurpose): Promise<void> {
    if (this.dying.has(vid)) throw SheepError.notFound(`image ${vid.toString(16)} is being deleted`)
    const image = this.inodes.get(vid)
    if (purpose === 'change' && image !== undefined && image.openWriters > 0) throw SheepError.busy(`${image.name} is open for writing there`)
    this.tokens?.released(vid)
    if (image === undefined) return
    const token = image.token
    const turn = ++token.turn
    // Even when not holding: a new view (recheckTokens) leaves what was kept unwritten.
    const held = token.held
    token.held = false
    try {
      await token.drained()
      await image.exclusive(async () => await image.flush())
    } catch (err) {
      // Still this host's, unless something moved the token since: what it kept is not written out.
      if (token.turn === turn) token.held = held
      throw err
    }
  }

  /**
   * A new view: this host may have been out of the last one, and another host may have taken a
   * token without asking it. The next I/O makes sure (a read of the token, when nothing moved);
   * what this host kept stays until then, or until a release writes it out.
   */
  recheckTokens (): void {
    for (const image of this.inodes.values()) {
      image.token.turn++
      image.token.held = false
    }
  }

  /** Makes this host the holder of image's write token, loading its inode again if another host had it. */
  private async hold (image: Image, purpose: TokenPurpose): Promise<void> {
    const tokens = this.tokens
    if (tokens === undefined) return
    const token = image.token
    while (!token.held) {
      // One take per purpose at a time: a guest I/O must not fail because a change was refused.
      let taking = token.taking[purpose]
      if (taking === undefined) {
        taking = this.takeOnce(tokens, image, purpose).finally(() => { delete token.taking[purpose] })
        token.taking[purpose] = taking
      }
      await taking
    }
  }

  private async takeOnce (tokens: WriteTokens, image: Image, purpose: TokenPurpose): Promise<void> {
    const token = image.token
    if (token.lost !== null) throw SheepError.stale(token.lost)
    const turn = token.turn
    const vid = image.vid
    let moved: boolean
    try {
      moved = await tokens.take(vid, purpose)
    } catch (err) {
      if (err instanceof SheepError && err.code === 'ESTALE') throw this.lose(image, `${image.name}: ${err.message}; open it again`)
      throw err
    }
    if (moved) token.reloadOwed = true
    // Owed until a load succeeds: the next take finds the token this host's and would not say so.
    if (token.reloadOwed) await image.exclusive(async () => await this.reloadHeld(image, vid))
    // A release that came in meanwhile (another host asked) wins: the caller takes it again.
    if (token.turn === turn && image.vid === vid) token.held = true
  }

  /** Loads inode vid again into image, open here, after another host held its token. */
  private async reloadHeld (image: Image, vid: number): Promise<void> {
    if (image.vid !== vid) return // it went on as a new inode meanwhile (a snapshot here)
    let fresh: Image
    try {
      fresh = await Image.load(this.objects, vid, this.tableOf, false)
    } catch (err) {
      if (err instanceof SheepError && err.code === 'ENOENT') throw this.lose(image, `${image.name} was deleted or rolled back on another host: open it again`)
      throw err
    }
    if (fresh.isSnapshot && !image.isSnapshot) throw this.lose(image, `${image.name} was snapshotted on another host while open here: open it again`)
    const dropped = image.adopt(fresh)
    if (!image.isSnapshot) {
      await image.zeroTail()
      await this.collectOrphans(image)
    }
    image.token.reloadOwed = false
    if (dropped > 0) this.log(`${image.name}: dropped ${dropped} owner entries not written out before another host took the image's write token`)
    this.inodeVersions.set(vid, (await this.objects.stat(inodeOid(vid)))?.version ?? 0)
  }

  /**
   * After this host took an image's write token from another: the image's data objects that its
   * owner table does not point at are that host's orphans. It made them (a block's first write)
   * and died, or was cut off, before it recorded them; it can no longer record them (its writes
   * are refused once the token moved), and nothing in them was acknowledged as synced. Before,
   * they were left until the next first write of their block emptied them.
   */
  private async collectOrphans (image: Image): Promise<void> {
    const vid = image.vid
    const owned = new Set(image.owners.ownedBy(vid))
    const first = dataOid(vid, 0)
    const orphans: ObjectId[] = []
    for await (const info of this.objects.list(first, first + 2n ** 32n)) {
      if (oidType(info.oid) === ObjectType.Data && oidVid(info.oid) === vid && !owned.has(oidIndex(info.oid))) orphans.push(info.oid)
    }
    for (const oid of orphans) await this.objects.remove(oid)
    if (orphans.length > 0) this.log(`${image.name}: removed ${orphans.length} objects that the last holder of its write token wrote and never recorded`)
  }

  /** This instance of an image can no longer do I/O here: every later try is ESTALE too. */
  private lose (image: Image, why: string): SheepError {
    if (image.token.lost === null) this.log(`${image.name}: handles open here fail from now on (ESTALE): ${why}`)
    image.token.lost = why
    return SheepError.stale(why)
  }

  /** The image went on as a new inode: the token it held was the old one's. */
  private newInode (image: Image): void {
    image.token.turn++
    image.token.held = false
    image.token.reloadOwed = false
  }

  openImage (name: string, writable = false): Image {
    const image = this.get(name)
    image.openCount++
    if (writable) image.openWriters++
    return image
  }

  /** Opens a read-only handle on a snapshot. */
  openSnapshot (name: string, tag: string): Image {
    const snap = this.getSnapshot(name, tag)
    snap.openCount++
    return snap
  }

  /** An open handle was closed; frees an unlinked image with the last one. */
  async closeImage (image: Image, writable = false): Promise<void> {
    image.openCount--
    if (writable) image.openWriters--
    if (image.openCount > 0) return
    if (image.unlinked) {
      await this.destroy(image)
      await this.metaOp(async () => await this.gc())
    } else if (image.isSnapshot) {
      // A deleted snapshot read to the end is freed now.
      await this.metaOp(async () => await this.gc())
    } else if (image.token.lost === null) {
      // (An image lost to a change elsewhere has nothing here worth writing out.)
      await this.writeOut(image, async () => await image.flush())
    }
  }

  async usage (): Promise<StoreUsage> {
    const raw = await this.objects.usage()
    const copies = Math.max(1, this.copiesPerByte())
    return { capacity: Math.floor(raw.capacity / copies), free: Math.floor(raw.free / copies) }
  }

  private checkFree (name: string): void {
    const taken = [...this.dir.values()].some(e => e.tag === '' && e.name === name)
    if (taken) throw SheepError.exists(`image ${JSON.stringify(name)}`)
  }

  /** Applies a change to the directory and writes it; undoes the change if the write fails. */
  private async commit (change: () => void, undo: () => void, newInode?: number): Promise<void> {
    change()
    try {
      // Against the version this host last loaded: if another host changed the directory since,
      // this fails (EAGAIN) and metaOp runs the whole operation again on the new directory.
      this.dirVersion = await this.objects.compareAndReplace(DIRECTORY_OID, encodeDirectory([...this.dir.values()]), this.dirVersion)
    } catch (err) {
      undo()
      // The inode written for this change was never named: nothing else will ever free it.
      if (newInode !== undefined) await this.objects.remove(inodeOid(newInode)).catch(() => {})
      throw err
    }
  }

  /**
   * Runs a metadata operation under the meta mutex; when its directory commit loses to another
   * host's (EAGAIN), loads the new directory and runs it again from its checks, so that of two
   * hosts creating one name exactly one succeeds and the other gets EEXIST.
   */
  private async metaOp<T> (fn: () => Promise<T>): Promise<T> {
    return await this.meta.run(async () => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await fn()
        } catch (err) {
          if (!(err instanceof SheepError && err.code === 'EAGAIN') || attempt >= MAX_COMMIT_ATTEMPTS) throw err
          await this.reload()
        }
      }
    })
  }

  /** The image leaves the directory (its snapshots stay, hidden, while anything reads through them). */
  private async unlinkImage (image: Image): Promise<void> {
    await this.commit(() => this.dropFromDirectory(image), () => this.restoreToDirectory(image))
    this.markUnlinked(image)
    this.reindex()
  }

  private dropFromDirectory (image: Image): void {
    this.dir.delete(image.vid)
    for (const s of this.snapshotsOf(image.name)) (this.dir.get(s.vid) as DirectoryEntry).flags |= HIDDEN
  }

  private restoreToDirectory (image: Image): void {
    this.dir.set(image.vid, { name: image.name, tag: '', vid: image.vid, flags: 0 })
    for (const s of this.snapshotsOf(image.name)) (this.dir.get(s.vid) as DirectoryEntry).flags &= ~HIDDEN
  }

  private markUnlinked (image: Image): void {
    image.unlinked = true
    this.unlinkedOpen.add(image)
  }

  private reindex (): void {
    const byName = new Map<string, Image>()
    const snapshots = new Map<string, Image>()
    for (const [vid, e] of this.dir) {
      const image = this.inodes.get(vid)
      if (image === undefined || (e.flags & HIDDEN) !== 0) continue
      if (e.tag === '') byName.set(e.name, image)
      else snapshots.set(snapKey(e.name, e.tag), image)
    }
    this.byName = byName
    this.snapshots = snapshots
  }

  private async destroy (image: Image, onProgress?: Progress): Promise<void> {
    const p = this.destroyObjects(image, onProgress)
    this.pendingDestroy.add(p)
    try {
      await p
    } finally {
      this.pendingDestroy.delete(p)
      this.unlinkedOpen.delete(image)
      this.inodes.delete(image.vid)
    }
  }

  /**
   * Deletes an image's objects. Its token is marked deleted first, so that no host takes it and
   * writes into objects going away, and its record goes last.
   */
  private async destroyObjects (image: Image, onProgress?: Progress): Promise<void> {
    const vid = image.vid
    this.dying.add(vid)
    try {
      await this.tokens?.bury(vid)
      await image.destroy(onProgress)
      await this.tokens?.forget(vid)
    } finally {
      this.dying.delete(vid)
    }
  }

  /** Deletes an unreadable inode's directory entry, then every object of its vid. */
  private async removeBroken (vid: number): Promise<void> {
    const entry = this.dir.get(vid) as DirectoryEntry
    await this.commit(() => this.dir.delete(vid), () => this.dir.set(vid, entry))
    this.broken.delete(vid)
    await this.tokens?.bury(vid)
    const doomed = []
    for await (const info of this.objects.list()) {
      if (oidType(info.oid) !== ObjectType.Meta && oidVid(info.oid) === vid) doomed.push(info.oid)
    }
    for (const oid of doomed) await this.objects.remove(oid)
    await this.tokens?.forget(vid)
  }

  /**
   * Frees what only hidden snapshots hold: a hidden snapshot nothing reads through is deleted
   * with its objects; one that is still read through loses the objects nobody reads. Runs under
   * the meta mutex. Blocks that became wholly an image's own since the last run may leave
   * snapshot objects unread; this run frees them.
   */
  private async gc (): Promise<void> {
    // On a cluster another host may have made an image (a clone, a copy's target) or shared blocks
    // into one that reads through a hidden inode since the last poll: go by the store's tables.
    if (this.tokens !== undefined) await this.reload()
    const hidden = [...this.dir.values()].filter(e => (e.flags & HIDDEN) !== 0 && this.inodes.has(e.vid))
    if (hidden.length === 0) return
    // An inode that cannot be read may read through any snapshot: while one is broken, what
    // nothing readable refers to is not known to be unreferenced, and nothing is freed.
    if (this.broken.size > 0) return
    const referenced = new Map<number, Set<number>>()
    // Open handles keep a deleted snapshot readable, as an unlinked file stays readable.
    const open = hidden.map(e => this.inodes.get(e.vid) as Image).filter(i => i.openCount > 0)
    const live = [...this.byName.values(), ...this.snapshots.values(), ...this.unlinkedOpen, ...open]
    const tables: OwnerTable[] = []
    for (const image of live) {
      const table = await this.currentTable(image)
      // What an unreadable table reads through is unknown: free nothing this time.
      if (table === null) return
      tables.push(table)
    }
    for (const own of tables) {
      for (const idx of own.blocks()) {
        let t: OwnerTable | undefined = own
        while (t !== undefined) {
          const owner = t.owner(idx)
          if (owner === 0) break
          let set = referenced.get(owner)
          if (set === undefined) { set = new Set(); referenced.set(owner, set) }
          set.add(idx)
          if (t.isFull(idx) || t.backing(idx) === 0) break
          t = this.tableOf(t.backing(idx))
        }
      }
    }
    // The tables read above are the ones in memory: what they no longer point at must be so on
    // disk too before it is freed, or a crash brings back inodes that read through freed objects.
    for (const image of live) if (image.hasUnwritten) await image.sync()
    const unneeded = hidden.filter(e => !referenced.has(e.vid) && (this.inodes.get(e.vid) as Image).openCount === 0)
    if (unneeded.length > 0) {
      await this.commit(() => { for (const e of unneeded) this.dir.delete(e.vid) }, () => { for (const e of unneeded) this.dir.set(e.vid, e) })
      for (const e of unneeded) await this.destroy(this.inodes.get(e.vid) as Image)
    }
    for (const e of hidden) {
      const image = this.inodes.get(e.vid)
      const keep = referenced.get(e.vid)
      // As the holder of the snapshot's token, which the host that froze it may still hold.
      if (image !== undefined && keep !== undefined && image.ownsOutside(keep)) await this.changing(image, async () => await image.freeUnreferenced(keep))
    }
  }

  /**
   * image's owner table as the store has it: reload() leaves the table of an image open here as
   * it is, and on a cluster another host holding its token may have written it since.
   */
  private async currentTable (image: Image): Promise<OwnerTable | null> {
    if (this.tokens === undefined || image.token.held || (image.openCount === 0 && !image.token.busy)) return image.owners
    try {
      return (await Image.load(this.objects, image.vid, this.tableOf, false)).owners
    } catch (err) {
      this.log(`${image.name}: not collecting deleted snapshots now, its owner table is unreadable: ${(err as Error).message}`)
      return null
    }
  }

  private newVid (): number {
    const used = new Set([...this.dir.keys(), ...this.inodes.keys()])
    if (used.size >= MAX_VID) throw SheepError.noSpace('no free image ids')
    for (;;) {
      const vid = crypto.randomInt(1, MAX_VID + 1)
      if (!used.has(vid)) return vid
    }
  }

  /**
   * What a crash can leave behind, sorted by what is certain. Deleted: objects of images the
   * directory (the commit point of create and delete) does not have, and data objects past the
   * end an image's durable header gives (a shrink, or a grow never synced). Kept aside: a data
   * object inside an image that its inode does not point at. A crash between creating it and
   * syncing its entry leaves one (its writes were never acknowledged by an fsync), but so would
   * an entry lost to damage, and data is never deleted on a guess. Objects of images whose inode
   * cannot be read, and objects whose index record cannot be read, are not touched.
   */
  private async collectGarbage (): Promise<OpenRepairs> {
    const owned = new Map<number, Set<number>>()
    const doomed: ObjectId[] = []
    const doubtful: ObjectId[] = []
    for await (const info of this.objects.list()) {
      const type = oidType(info.oid)
      const vid = oidVid(info.oid)
      if (type === ObjectType.Meta || this.broken.has(vid)) continue
      const image = this.inodes.get(vid)
      if (image === undefined) {
        doomed.push(info.oid)
        continue
      }
      if (type !== ObjectType.Data) continue
      let set = owned.get(vid)
      if (set === undefined) { set = new Set(image.owners.ownedBy(vid)); owned.set(vid, set) }
      const idx = oidIndex(info.oid)
      if (set.has(idx)) continue
      if (idx >= blockCount(image.size, image.header.objectSize)) doomed.push(info.oid)
      else doubtful.push(info.oid)
    }
    for (const oid of doomed) {
      this.log(`collecting unreferenced object ${oidToHex(oid)}`)
      await this.objects.remove(oid)
    }
    for (const oid of doubtful) {
      const where = this.inodes.get(oidVid(oid)) as Image
      const what = `object ${oidToHex(oid)} (block ${oidIndex(oid)} of ${where.isSnapshot ? 'snapshot' : 'image'} ${JSON.stringify(where.name)}), which its inode does not point at`
      if (this.setAside === undefined) {
        this.log(`kept ${what}`)
        continue
      }
      this.log(`set aside ${what}, as ${await this.setAside(oid)}`)
    }
    return { collected: doomed.length, strays: doubtful.length }
  }
}

function checkCopies (copies: number): number {
  if (!Number.isInteger(copies) || copies < 1 || copies > MAX_COPIES) throw SheepError.invalid(`copies must be from 1 to ${MAX_COPIES}`)
  return copies
}

function emptyTable (header: InodeHeader): OwnerTable {
  return new OwnerTable(blockCount(header.size, header.objectSize))
}

function label (e: DirectoryEntry): string {
  return e.tag === '' ? `image ${JSON.stringify(e.name)}` : `snapshot ${JSON.stringify(`${e.name}@${e.tag}`)}`
}
