// The adapter core: what each filesystem operation does to the images, whichever session (the
// kernel protocol in ./kernel, or fuse-native in ./libfuse2.ts) received it. Every function
// returns its result or throws; the sessions turn a throw into an errno through ./errno.ts.
//
//   /<image>                       every image, a regular file of its virtual size
//   /.snapshots/<image>/<tag>      every snapshot, a read-only file (/.snapshots is not listed)
//
// Images have an owner, a group and a mode, which the kernel checks (default_permissions). A
// snapshot and its image's folder in /.snapshots take the image's as they are now, without write
// bits (the folder's x where the image has r): whoever cannot read an image reads none of its
// snapshots, nor their names.
//
// Extended attributes user.sheep.* describe an image; setting user.sheep.snapshot takes a snapshot.
// Other security.*, trusted.* and user.* attributes are kept in the image's header, as ext4 keeps
// them (limits: src/cow/xattrs.ts); a snapshot has those its image had when it was taken.

import fs from 'node:fs'
import { SheepError } from '../errors'
import type { Image } from '../cow/image'
import type { CreateOptions, ImageStore } from '../cow/image-store'
import { copyRange } from '../cow/copy-range'
import type { InodeHeader } from '../cow/inode'
import { MAX_NAME_BYTES } from '../cow/names'
import { findXattr } from '../cow/xattrs'
import { slowpoint } from '../failpoints'

const S_IFDIR = fs.constants.S_IFDIR
const S_IFREG = fs.constants.S_IFREG
const O_ACCMODE = 3
const STATFS_BLOCK = 4096
/** The filesystem's name and subtype (fuse.sheep in /proc/self/mountinfo: how the command finds a mount). */
export const FUSE_FSNAME = 'sheep'
export const SNAPSHOT_DIR = '.snapshots'
const XATTR = 'user.sheep.'
/** Namespaces of the attributes an image stores (ext4's, but for system.*: ACLs are not served). */
const STORED_XATTRS = ['security.', 'trusted.', 'user.']
/** setxattr(2) flags. */
const XATTR_CREATE = 1
const XATTR_REPLACE = 2
/** fallocate(2) modes (linux/falloc.h), passed through unchanged by both sessions. */
export const FALLOC_FL_KEEP_SIZE = 0x01
export const FALLOC_FL_PUNCH_HOLE = 0x02
export const FALLOC_FL_ZERO_RANGE = 0x10
/** lseek(2) whence values the kernel leaves to the filesystem. */
export const SEEK_DATA = 3
export const SEEK_HOLE = 4
/** (uid_t)-1 / (gid_t)-1: "leave unchanged" in chown. */
export const UNCHANGED_ID = 0xffffffff
/** The mount's root without a mode asked for: only root makes images in it. */
export const DEFAULT_ROOT_MODE = 0o755

export interface AdapterOptions {
  /** Options for images made by create(2), e.g. by `qemu-img create`. */
  createOptions: CreateOptions
  /** The mount root's mode (owned by root), as tmpfs's mode=: 0o1777 lets every user make images, each deleting only its own. */
  rootMode?: number
  log: (line: string) => void
}

/** Who asked: the user and group an image made by create(2) belongs to. */
export interface Caller { uid: number, gid: number }

/** Attributes of a file or folder; times in milliseconds since the epoch. */
export interface Stat {
  mode: number
  uid: number
  gid: number
  size: number
  blocks: number
  blksize: number
  nlink: number
  atime: number
  mtime: number
  ctime: number
}

export interface StatFs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  fsid: number
  flag: number
  namemax: number
}

export interface DirEntry { name: string, dir: boolean }

type Target =
  | { kind: 'root' }
  | { kind: 'image', image: Image }
  | { kind: 'snapshots' }
  | { kind: 'folder', name: string }
  | { kind: 'snapshot', image: Image }

interface Handle { image: Image, writable: boolean }

export type FsCore = ReturnType<typeof adapterCore>

export function adapterCore (images: ImageStore, opts: AdapterOptions) {
  const handles = new Map<number, Handle>()
  let nextHandle = 1
  const mountTime = Date.now()
  // libfuse renames a file that is unlinked while open to a hidden name, and unlinks that name
  // after the last release; the image leaves the directory at once and lives on here. (The
  // kernel session unlinks at once and reaches the image through its handles.)
  const hidden = new Map<string, Image>()
  const HIDDEN_NAME = /^\/\.fuse_hidden[0-9a-f]+$/

  /** What a path names; ENOENT for anything else. */
  const resolve = (path: string): Target => {
    if (path === '/') return { kind: 'root' }
    const h = hidden.get(path)
    if (h !== undefined) return { kind: 'image', image: h }
    const parts = path.slice(1).split('/')
    if (parts[0] === SNAPSHOT_DIR) {
      if (parts.length === 1) return { kind: 'snapshots' }
      const name = parts[1] as string
      if (parts.length === 2) {
        if (!images.snapshotFolders().includes(name)) throw SheepError.notFound(path)
        return { kind: 'folder', name }
      }
      if (parts.length === 3) return { kind: 'snapshot', image: images.getSnapshot(name, parts[2] as string) }
      throw SheepError.notFound(path)
    }
    if (parts.length !== 1) throw SheepError.notFound(path)
    return { kind: 'image', image: images.get(parts[0] as string) }
  }
  const imageAt = (path: string): Image => {
    const t = resolve(path)
    if (t.kind === 'image') return t.image
    if (t.kind === 'snapshot') throw SheepError.readOnly(path)
    throw new SheepError('EISDIR', path)
  }
  const handle = (fd: number): Handle => {
    const h = handles.get(fd)
    if (h === undefined) throw new SheepError('EINVAL', `bad file handle ${fd}`)
    return h
  }
  const newHandle = (image: Image, writable: boolean): number => {
    const fd = nextHandle++
    handles.set(fd, { image, writable })
    return fd
  }
  // The header these change is written by the holder of the image's write token (on a cluster).
  const asHolder = async (image: Image, change: (image: Image) => Promise<void>): Promise<void> => await images.io(image, true, async () => await change(image))
  const dirStat: Stat = { mode: S_IFDIR | 0o755, uid: 0, gid: 0, size: 4096, blocks: 0, blksize: STATFS_BLOCK, nlink: 2, atime: mountTime, mtime: mountTime, ctime: mountTime }
  const rootStat: Stat = { ...dirStat, mode: S_IFDIR | ((opts.rootMode ?? DEFAULT_ROOT_MODE) & 0o7777) }
  /**
   * Whose owner, group and mode a snapshot reports: its image's. A handle open on a snapshot
   * outlives an image deleted (with its snapshots) meanwhile; it then has the snapshot's own.
   */
  const ownerOf = (snap: Image): InodeHeader => {
    try {
      return images.get(snap.name).header
    } catch (err) {
      if (err instanceof SheepError && err.code === 'ENOENT') return snap.header
      throw err
    }
  }
  const folderStat = (name: string): Stat => {
    const h = images.get(name).header
    const read = h.mode & 0o444
    return { ...dirStat, mode: S_IFDIR | read | (read >> 2), uid: h.uid, gid: h.gid }
  }
  const stat = (image: Image): Stat => {
    const h = image.header
    const time = image.isSnapshot ? h.snapshotTime : h.mtime
    const owner = image.isSnapshot ? ownerOf(image) : h
    return {
      mode: S_IFREG | (image.isSnapshot ? owner.mode & 0o7555 : h.mode),
      uid: owner.uid,
      gid: owner.gid,
      size: h.size,
      blocks: Math.ceil(image.allocatedBytes / 512),
      blksize: STATFS_BLOCK,
      nlink: 1,
      atime: time,
      mtime: time,
      ctime: time
    }
  }
  const sheepXattrs = (image: Image): Record<string, string> => {
    const info = images.info(image)
    const out: Record<string, string> = {
      'user.sheep.vid': image.vid.toString(16),
      'user.sheep.copies': String(info.copies),
      'user.sheep.object_size': String(info.objectSize),
      'user.sheep.allocated': String(info.allocated)
    }
    if (info.parent !== '') out['user.sheep.parent'] = info.parent
    if (image.isSnapshot) {
      out['user.sheep.tag'] = image.header.tag
      out['user.sheep.snapshot_time'] = new Date(image.header.snapshotTime).toISOString()
    } else {
      out['user.sheep.snapshots'] = images.snapshotsOf(image.name).map(s => s.header.tag).join(',')
    }
    return out
  }
  /** The image whose header stores attribute `name`: EROFS for a snapshot, ENOTSUP for a folder or another namespace. */
  const storing = (path: string, name: string): Image => {
    if (!STORED_XATTRS.some(ns => name.startsWith(ns))) throw new SheepError('ENOTSUP', `${name}: only security.*, trusted.* and user.* attributes are kept`)
    const t = resolve(path)
    if (t.kind === 'snapshot') throw SheepError.readOnly(path)
    if (t.kind !== 'image') throw new SheepError('ENOTSUP', `${path}: folders keep no attributes`)
    return t.image
  }
  const onlyImages = (): never => { throw new SheepError('EPERM', 'the mount holds images only') }

  return {
    getattr (path: string): Stat {
      const t = resolve(path)
      switch (t.kind) {
        case 'image': case 'snapshot': return stat(t.image)
        case 'root': return rootStat
        case 'folder': return folderStat(t.name)
        default: return dirStat
      }
    },
    /** Attributes through an open handle: an unlinked image has no path left. */
    fgetattr (fd: number): Stat {
      return stat(handle(fd).image)
    },
    readdir (path: string): DirEntry[] {
      const t = resolve(path)
      const dots = [{ name: '.', dir: true }, { name: '..', dir: true }]
      switch (t.kind) {
        // .snapshots is reached by name and not listed, as ZFS's .zfs: ls, du and cp -r see images only.
        case 'root': return [...dots, ...images.names().map(name => ({ name, dir: false }))]
        case 'snapshots': return [...dots, ...images.snapshotFolders().map(name => ({ name, dir: true }))]
        case 'folder': return [...dots, ...images.snapshotsOf(t.name).map(s => ({ name: s.header.tag, dir: false }))]
        default: throw new SheepError('ENOTDIR', path)
      }
    },
    access (path: string): void {
      resolve(path)
    },
    async statfs (): Promise<StatFs> {
      const u = await images.usage()
      const count = images.list().length
      return {
        bsize: STATFS_BLOCK,
        frsize: STATFS_BLOCK,
        blocks: Math.floor(u.capacity / STATFS_BLOCK),
        bfree: Math.floor(u.free / STATFS_BLOCK),
        bavail: Math.floor(u.free / STATFS_BLOCK),
        files: count + 0xffff,
        ffree: 0xffff,
        favail: 0xffff,
        fsid: 0,
        flag: 0,
        namemax: MAX_NAME_BYTES
      }
    },
    /** Opens a file; returns its handle. */
    async open (path: string, flags: number): Promise<number> {
      const t = resolve(path)
      const writable = (flags & O_ACCMODE) !== fs.constants.O_RDONLY
      if (t.kind === 'snapshot') {
        if (writable) throw SheepError.readOnly(path)
        return newHandle(images.openSnapshot(t.image.name, t.image.header.tag), false)
      }
      if (t.kind !== 'image') throw new SheepError('EISDIR', path)
      if (hidden.has(path)) {
        t.image.openCount++
        if (writable) t.image.openWriters++
        return newHandle(t.image, writable)
      }
      return newHandle(await images.acquire(t.image.name, writable), writable)
    },
    /** Creates an empty image of `caller`'s with `mode` (the umask applied) and opens it for writing; returns its handle. */
    async create (path: string, mode: number, caller: Caller): Promise<number> {
      const name = path.slice(1)
      if (name.startsWith(SNAPSHOT_DIR + '/')) throw SheepError.readOnly(path)
      await images.create(name, 0, { ...opts.createOptions, mode: mode & 0o7777, uid: caller.uid, gid: caller.gid })
      return newHandle(images.openImage(name, true), true)
    },
    async release (fd: number): Promise<void> {
      const h = handle(fd)
      handles.delete(fd)
      await images.closeImage(h.image, h.writable)
    },
    /** Reads into `buf` (at most `len` bytes); returns the bytes read. */
    async read (fd: number, pos: number, len: number, buf: Buffer): Promise<number> {
      const h = handle(fd)
      await slowpoint('fuse-read') // a read that outlives the I/O timeout (tests)
      return await images.io(h.image, h.writable, () => h.image.read(pos, len, buf))
    },
    /** Writes all of `buf`; returns its length. */
    async write (fd: number, pos: number, buf: Buffer): Promise<number> {
      const h = handle(fd)
      await slowpoint('fuse-write') // a write that outlives the I/O timeout (tests)
      await images.io(h.image, h.writable, () => h.image.write(pos, buf))
      return buf.length
    },
    /**
     * fallocate(2). Images are thin: mode 0 and KEEP_SIZE reserve nothing, and without KEEP_SIZE
     * grow the image to the range's end. PUNCH_HOLE (with KEEP_SIZE, as the kernel requires) and
     * ZERO_RANGE make the range read as zeros and free the whole objects in it. Other modes
     * (collapse, insert, unshare): ENOTSUP.
     */
    async fallocate (fd: number, mode: number, offset: number, length: number): Promise<void> {
      const h = handle(fd)
      const known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
      if ((mode & ~known) !== 0 || ((mode & FALLOC_FL_PUNCH_HOLE) !== 0 && (mode & FALLOC_FL_ZERO_RANGE) !== 0)) {
        throw new SheepError('ENOTSUP', `fallocate mode 0x${mode.toString(16)} is not supported`)
      }
      if (!h.writable) throw SheepError.readOnly(h.image.name)
      if ((mode & FALLOC_FL_KEEP_SIZE) === 0 && offset + length > h.image.size) await this.ftruncate(fd, offset + length)
      if ((mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) !== 0) await images.io(h.image, true, async () => await h.image.discard(offset, length))
    },
    /**
     * copy_file_range(2): whole blocks at the same offset of two images are shared copy-on-write,
     * the rest is copied by the daemon (../cow/copy-range.ts). Returns the bytes copied.
     */
    async copyFileRange (fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): Promise<number> {
      return await copyRange(images, handle(fdIn), offIn, handle(fdOut), offOut, len)
    },
    /** lseek(2) SEEK_DATA / SEEK_HOLE from the owner table; ENXIO past the end or with no data after. */
    lseek (fd: number, offset: number, whence: number): number {
      if (whence !== SEEK_DATA && whence !== SEEK_HOLE) throw SheepError.invalid(`lseek whence ${whence}`)
      const at = handle(fd).image.seek(offset, whence === SEEK_HOLE)
      if (at === null) throw new SheepError('ENXIO', `no ${whence === SEEK_HOLE ? 'hole' : 'data'} at or after ${offset}`)
      return at
    },
    async flush (fd: number): Promise<void> {
      const h = handle(fd)
      if (h.writable) await images.writeOut(h.image, async () => await h.image.flush())
    },
    async fsync (fd: number): Promise<void> {
      const h = handle(fd)
      await images.writeOut(h.image, async () => await h.image.sync())
    },
    async truncate (path: string, size: number): Promise<void> {
      await images.resize(imageAt(path).name, size)
    },
    async ftruncate (fd: number, size: number): Promise<void> {
      const { image } = handle(fd)
      // An unlinked image has no name left to resize it by.
      if (image.unlinked) await image.resize(size)
      else await images.resize(image.name, size)
    },
    async unlink (path: string): Promise<void> {
      if (hidden.delete(path)) return
      const t = resolve(path)
      if (t.kind === 'snapshot') await images.deleteSnapshot(t.image.name, t.image.header.tag)
      else await images.remove(imageAt(path).name)
    },
    async rename (from: string, to: string): Promise<void> {
      const image = imageAt(from)
      if (HIDDEN_NAME.test(to)) {
        await images.remove(image.name)
        hidden.set(to, image)
        return
      }
      if (to.lastIndexOf('/') !== 0) throw new SheepError('EPERM', 'images live in the mount\'s root only')
      await images.rename(image.name, to.slice(1), { replace: true })
    },
    async utimens (path: string, mtime: number): Promise<void> {
      await asHolder(imageAt(path), i => i.setTimes(Math.round(mtime)))
    },
    async chmod (path: string, mode: number): Promise<void> {
      await asHolder(imageAt(path), i => i.setOwnership({ mode }))
    },
    async chown (path: string, uid: number, gid: number): Promise<void> {
      await asHolder(imageAt(path), i => i.setOwnership({ uid: uid === UNCHANGED_ID ? undefined : uid, gid: gid === UNCHANGED_ID ? undefined : gid }))
    },
    /** setxattr(2): user.sheep.snapshot takes a snapshot; security.*, trusted.* and user.* are stored. */
    async setxattr (path: string, name: string, value: Buffer, flags: number): Promise<void> {
      if (name.startsWith(XATTR)) {
        if (name !== `${XATTR}snapshot`) throw new SheepError('EPERM', `${name} is read-only`)
        await images.snapshot(imageAt(path).name, value.toString('utf8'))
        return
      }
      const image = storing(path, name)
      const present = findXattr(image.header.xattrs, name) !== undefined
      if ((flags & XATTR_CREATE) !== 0 && present) throw SheepError.exists(`${path}: attribute ${name}`)
      if ((flags & XATTR_REPLACE) !== 0 && !present) throw new SheepError('ENODATA', `${path} has no attribute ${name}`)
      await asHolder(image, i => i.setXattr(name, value))
    },
    /** null: no such attribute (ENODATA), what folders and unknown names answer. */
    getxattr (path: string, name: string): Buffer | null {
      const t = resolve(path)
      if (t.kind !== 'image' && t.kind !== 'snapshot') return null
      if (name.startsWith(XATTR)) {
        const value = sheepXattrs(t.image)[name]
        return value === undefined ? null : Buffer.from(value)
      }
      return findXattr(t.image.header.xattrs, name) ?? null
    },
    listxattr (path: string): string[] {
      const t = resolve(path)
      return t.kind === 'image' || t.kind === 'snapshot' ? [...t.image.header.xattrs.map(x => x.name), ...Object.keys(sheepXattrs(t.image))] : []
    },
    async removexattr (path: string, name: string): Promise<void> {
      if (name.startsWith(XATTR)) throw new SheepError('EPERM', `${name} is read-only`)
      await asHolder(storing(path, name), i => i.setXattr(name, null))
    },
    mkdir: onlyImages,
    mknod: onlyImages,
    symlink: onlyImages,
    link: onlyImages,
    rmdir (path: string): never {
      throw path === '/' ? SheepError.busy('/') : new SheepError('ENOTDIR', path)
    }
  }
}
