// The FUSE adapter: each operation is one call on the image API, its error mapped to an errno.
//
//   /<image>                       every image, a regular file of its virtual size
//   /.snapshots/<image>/<tag>      every snapshot, a read-only file (/.snapshots is not listed)
//
// Extended attributes user.sheep.* describe an image; setting user.sheep.snapshot takes a snapshot.

import fs from 'node:fs'
import { SheepError } from '../errors'
import type { Image } from '../cow/image'
import type { CreateOptions, ImageStore } from '../cow/image-store'
import { MAX_NAME_BYTES } from '../cow/names'
import { errnoOf } from './errno'

type Cb = (result: number, ...rest: unknown[]) => void
type Op = (...args: any[]) => void

const S_IFDIR = fs.constants.S_IFDIR
const S_IFREG = fs.constants.S_IFREG
const O_ACCMODE = 3
const STATFS_BLOCK = 4096
export const SNAPSHOT_DIR = '.snapshots'
const XATTR = 'user.sheep.'

export interface AdapterOptions {
  /** Options for images made by create(2), e.g. by `qemu-img create`. */
  createOptions: CreateOptions
  log: (line: string) => void
}

type Target =
  | { kind: 'root' }
  | { kind: 'image', image: Image }
  | { kind: 'snapshots' }
  | { kind: 'folder', name: string }
  | { kind: 'snapshot', image: Image }

interface Handle { image: Image, writable: boolean }

export function fuseOperations (images: ImageStore, opts: AdapterOptions): Record<string, Op> {
  const handles = new Map<number, Handle>()
  let nextHandle = 1
  const mountTime = new Date()
  // libfuse renames a file that is unlinked while open to a hidden name, and unlinks that name
  // after the last release; the image leaves the directory at once and lives on here.
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
  const fail = (op: string, path: string, err: unknown, cb: Cb): void => {
    const errno = errnoOf(err)
    if (err instanceof SheepError && err.code === 'EIO') opts.log(`${op} ${path}: ${err.message}`)
    else if (!(err instanceof SheepError)) opts.log(`${op} ${path}: unexpected error: ${(err as Error)?.stack ?? String(err)}`)
    cb(errno)
  }
  // Runs an operation; any throw, synchronous or not, becomes an errno, never a crash.
  const run = (op: string, path: string, cb: Cb, fn: () => Promise<number | [number, unknown]> | number | [number, unknown]): void => {
    let result
    try {
      result = fn()
    } catch (err) {
      fail(op, path, err, cb)
      return
    }
    Promise.resolve(result).then(r => Array.isArray(r) ? cb(r[0], r[1]) : cb(r), err => fail(op, path, err, cb))
  }
  const dirStat = { mode: S_IFDIR | 0o755, nlink: 2, size: 4096, atime: mountTime, mtime: mountTime, ctime: mountTime }
  const stat = (image: Image): Record<string, unknown> => {
    const h = image.header
    const time = new Date(image.isSnapshot ? h.snapshotTime : h.mtime)
    return {
      mode: S_IFREG | (image.isSnapshot ? h.mode & 0o7555 : h.mode),
      uid: h.uid,
      gid: h.gid,
      size: h.size,
      blocks: Math.ceil(image.allocatedBytes / 512),
      blksize: STATFS_BLOCK,
      nlink: 1,
      atime: time,
      mtime: time,
      ctime: time
    }
  }
  const xattrs = (image: Image): Record<string, string> => {
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

  return {
    init (cb: Cb) { cb(0) },
    getattr (path: string, cb: Cb) {
      run('getattr', path, cb, () => {
        const t = resolve(path)
        if (t.kind === 'image' || t.kind === 'snapshot') return [0, stat(t.image)]
        return [0, dirStat]
      })
    },
    readdir (path: string, cb: Cb) {
      run('readdir', path, cb, () => {
        const t = resolve(path)
        switch (t.kind) {
          // .snapshots is reached by name and not listed, as ZFS's .zfs: ls, du and cp -r see images only.
          case 'root': return [0, ['.', '..', ...images.names()]]
          case 'snapshots': return [0, ['.', '..', ...images.snapshotFolders()]]
          case 'folder': return [0, ['.', '..', ...images.snapshotsOf(t.name).map(s => s.header.tag)]]
          default: throw new SheepError('ENOTDIR', path)
        }
      })
    },
    access (path: string, _mode: number, cb: Cb) {
      run('access', path, cb, () => { resolve(path); return 0 })
    },
    statfs (path: string, cb: Cb) {
      run('statfs', path, cb, async () => {
        const u = await images.usage()
        const count = images.list().length
        return [0, {
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
        }]
      })
    },
    open (path: string, flags: number, cb: Cb) {
      run('open', path, cb, async () => {
        const t = resolve(path)
        const writable = (flags & O_ACCMODE) !== fs.constants.O_RDONLY
        if (t.kind === 'snapshot') {
          if (writable) throw SheepError.readOnly(path)
          return [0, newHandle(images.openSnapshot(t.image.name, t.image.header.tag), false)]
        }
        if (t.kind !== 'image') throw new SheepError('EISDIR', path)
        if (hidden.has(path)) {
          t.image.openCount++
          if (writable) t.image.openWriters++
          return [0, newHandle(t.image, writable)]
        }
        return [0, newHandle(await images.acquire(t.image.name, writable), writable)]
      })
    },
    create (path: string, mode: number, cb: Cb) {
      run('create', path, cb, async () => {
        const name = path.slice(1)
        if (name.startsWith(SNAPSHOT_DIR + '/')) throw SheepError.readOnly(path)
        await images.create(name, 0, { ...opts.createOptions, mode: mode & 0o7777 })
        return [0, newHandle(images.openImage(name, true), true)]
      })
    },
    release (path: string, fd: number, cb: Cb) {
      run('release', path, cb, async () => {
        const h = handle(fd)
        handles.delete(fd)
        await images.closeImage(h.image, h.writable)
        return 0
      })
    },
    read (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      run('read', path, cb, () => {
        const h = handle(fd)
        return images.io(h.image, h.writable, () => h.image.read(pos, len, buf))
      })
    },
    write (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      run('write', path, cb, async () => {
        const h = handle(fd)
        await images.io(h.image, h.writable, () => h.image.write(pos, len === buf.length ? buf : buf.subarray(0, len)))
        return len
      })
    },
    flush (path: string, fd: number, cb: Cb) {
      run('flush', path, cb, async () => { const h = handle(fd); if (h.writable) await images.writeOut(h.image, async () => await h.image.flush()); return 0 })
    },
    fsync (path: string, _datasync: number, fd: number, cb: Cb) {
      run('fsync', path, cb, async () => { const h = handle(fd); await images.writeOut(h.image, async () => await h.image.sync()); return 0 })
    },
    truncate (path: string, size: number, cb: Cb) {
      run('truncate', path, cb, async () => { await images.resize(imageAt(path).name, size); return 0 })
    },
    ftruncate (path: string, fd: number, size: number, cb: Cb) {
      run('ftruncate', path, cb, async () => {
        const { image } = handle(fd)
        // An unlinked image has no name left to resize it by.
        if (image.unlinked) await image.resize(size)
        else await images.resize(image.name, size)
        return 0
      })
    },
    unlink (path: string, cb: Cb) {
      run('unlink', path, cb, async () => {
        if (hidden.delete(path)) return 0
        const t = resolve(path)
        if (t.kind === 'snapshot') await images.deleteSnapshot(t.image.name, t.image.header.tag)
        else await images.remove(imageAt(path).name)
        return 0
      })
    },
    rename (from: string, to: string, cb: Cb) {
      run('rename', from, cb, async () => {
        const image = imageAt(from)
        if (HIDDEN_NAME.test(to)) {
          await images.remove(image.name)
          hidden.set(to, image)
          return 0
        }
        if (to.lastIndexOf('/') !== 0) throw new SheepError('EPERM', 'images live in the mount\'s root only')
        await images.rename(image.name, to.slice(1), { replace: true })
        return 0
      })
    },
    utimens (path: string, _atime: number, mtime: number, cb: Cb) {
      run('utimens', path, cb, async () => { await asHolder(imageAt(path), i => i.setTimes(Math.round(Number(mtime)))); return 0 })
    },
    chmod (path: string, mode: number, cb: Cb) {
      run('chmod', path, cb, async () => { await asHolder(imageAt(path), i => i.setOwnership({ mode })); return 0 })
    },
    chown (path: string, uid: number, gid: number, cb: Cb) {
      run('chown', path, cb, async () => {
        // (uid_t)-1 means "leave unchanged".
        await asHolder(imageAt(path), i => i.setOwnership({ uid: uid === 0xffffffff ? undefined : uid, gid: gid === 0xffffffff ? undefined : gid }))
        return 0
      })
    },
    setxattr (path: string, name: string, value: Buffer, _position: number, _flags: number, cb: Cb) {
      run('setxattr', path, cb, async () => {
        if (name !== `${XATTR}snapshot`) {
          throw name.startsWith(XATTR) ? new SheepError('EPERM', `${name} is read-only`) : new SheepError('ENOTSUP', `${name} is not supported`)
        }
        await images.snapshot(imageAt(path).name, value.toString('utf8'))
        return 0
      })
    },
    getxattr (path: string, name: string, _position: number, cb: Cb) {
      run('getxattr', path, cb, () => {
        const t = resolve(path)
        // null: ENODATA, what folders and unknown names answer.
        const value = t.kind === 'image' || t.kind === 'snapshot' ? xattrs(t.image)[name] : undefined
        return [0, value === undefined ? null : Buffer.from(value)]
      })
    },
    listxattr (path: string, cb: Cb) {
      run('listxattr', path, cb, () => {
        const t = resolve(path)
        return [0, t.kind === 'image' || t.kind === 'snapshot' ? Object.keys(xattrs(t.image)) : []]
      })
    },
    removexattr (path: string, name: string, cb: Cb) {
      fail('removexattr', path, name.startsWith(XATTR) ? new SheepError('EPERM', `${name} is read-only`) : new SheepError('ENOTSUP', name), cb)
    },
    mkdir (path: string, _mode: number, cb: Cb) { fail('mkdir', path, new SheepError('EPERM', 'the mount holds images only'), cb) },
    rmdir (path: string, cb: Cb) { fail('rmdir', path, path === '/' ? SheepError.busy('/') : new SheepError('ENOTDIR', path), cb) },
    mknod (path: string, _mode: number, _dev: number, cb: Cb) { fail('mknod', path, new SheepError('EPERM', 'the mount holds images only'), cb) },
    symlink (_target: string, path: string, cb: Cb) { fail('symlink', path, new SheepError('EPERM', 'the mount holds images only'), cb) },
    link (_from: string, path: string, cb: Cb) { fail('link', path, new SheepError('EPERM', 'the mount holds images only'), cb) }
  }
}
