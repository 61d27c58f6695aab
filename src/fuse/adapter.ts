// The FUSE adapter: each operation is one call on the image API, its error mapped to an errno.
// The mount's root lists the images; every image is a regular file of its virtual size.

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
const STATFS_BLOCK = 4096

export interface AdapterOptions {
  /** Options for images made by create(2), e.g. by `qemu-img create`. */
  createOptions: CreateOptions
  log: (line: string) => void
}

export function fuseOperations (images: ImageStore, opts: AdapterOptions): Record<string, Op> {
  const handles = new Map<number, Image>()
  let nextHandle = 1
  const mountTime = new Date()

  // Which image a path names; throws ENOENT for anything that is not "/<image>".
  // libfuse renames a file that is unlinked while open to a hidden name, and unlinks that name
  // after the last release; the image leaves the directory at once and lives on here.
  const hidden = new Map<string, Image>()
  const HIDDEN = /^\/\.fuse_hidden[0-9a-f]+$/
  const imageAt = (path: string): Image => {
    const h = hidden.get(path)
    if (h !== undefined) return h
    const name = path.slice(1)
    if (name.includes('/')) throw SheepError.notFound(path)
    return images.get(name)
  }
  const handle = (fd: number): Image => {
    const image = handles.get(fd)
    if (image === undefined) throw new SheepError('EINVAL', `bad file handle ${fd}`)
    return image
  }
  const newHandle = (image: Image): number => {
    const fd = nextHandle++
    handles.set(fd, image)
    return fd
  }
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
  const stat = (image: Image): Record<string, unknown> => {
    const h = image.header
    return {
      mode: S_IFREG | h.mode,
      uid: h.uid,
      gid: h.gid,
      size: h.size,
      blocks: Math.ceil(image.allocatedBytes / 512),
      blksize: STATFS_BLOCK,
      nlink: 1,
      atime: new Date(h.mtime),
      mtime: new Date(h.mtime),
      ctime: new Date(h.mtime)
    }
  }

  return {
    init (cb: Cb) { cb(0) },
    getattr (path: string, cb: Cb) {
      run('getattr', path, cb, () => {
        if (path === '/') return [0, { mode: S_IFDIR | 0o755, nlink: 2, size: 4096, atime: mountTime, mtime: mountTime, ctime: mountTime }]
        return [0, stat(imageAt(path))]
      })
    },
    readdir (path: string, cb: Cb) {
      run('readdir', path, cb, () => {
        if (path !== '/') throw new SheepError('ENOTDIR', path)
        return [0, ['.', '..', ...images.names()]]
      })
    },
    access (path: string, _mode: number, cb: Cb) {
      run('access', path, cb, () => { if (path !== '/') imageAt(path); return 0 })
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
    open (path: string, _flags: number, cb: Cb) {
      run('open', path, cb, () => {
        if (path === '/') throw new SheepError('EISDIR', path)
        imageAt(path)
        return [0, newHandle(images.openImage(path.slice(1)))]
      })
    },
    create (path: string, mode: number, cb: Cb) {
      run('create', path, cb, async () => {
        const name = path.slice(1)
        await images.create(name, 0, { ...opts.createOptions, mode: mode & 0o7777 })
        return [0, newHandle(images.openImage(name))]
      })
    },
    release (path: string, fd: number, cb: Cb) {
      run('release', path, cb, async () => {
        const image = handle(fd)
        handles.delete(fd)
        await images.closeImage(image)
        return 0
      })
    },
    read (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      run('read', path, cb, () => handle(fd).read(pos, len, buf))
    },
    write (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      run('write', path, cb, async () => {
        await handle(fd).write(pos, len === buf.length ? buf : buf.subarray(0, len))
        return len
      })
    },
    flush (path: string, fd: number, cb: Cb) {
      run('flush', path, cb, async () => { await handle(fd).flush(); return 0 })
    },
    fsync (path: string, _datasync: number, fd: number, cb: Cb) {
      run('fsync', path, cb, async () => { await handle(fd).sync(); return 0 })
    },
    truncate (path: string, size: number, cb: Cb) {
      run('truncate', path, cb, async () => { await images.resize(imageAt(path).name, size); return 0 })
    },
    ftruncate (path: string, fd: number, size: number, cb: Cb) {
      run('ftruncate', path, cb, async () => {
        const image = handle(fd)
        // An unlinked image has no name left to resize it by.
        if (image.unlinked) await image.resize(size)
        else await images.resize(image.name, size)
        return 0
      })
    },
    unlink (path: string, cb: Cb) {
      run('unlink', path, cb, async () => {
        if (hidden.delete(path)) return 0
        await images.remove(imageAt(path).name)
        return 0
      })
    },
    rename (from: string, to: string, cb: Cb) {
      run('rename', from, cb, async () => {
        if (to.lastIndexOf('/') !== 0) throw new SheepError('EPERM', 'images live in the mount\'s root only')
        if (HIDDEN.test(to)) {
          const image = imageAt(from)
          await images.remove(image.name)
          hidden.set(to, image)
          return 0
        }
        await images.rename(imageAt(from).name, to.slice(1))
        return 0
      })
    },
    utimens (path: string, _atime: number, mtime: number, cb: Cb) {
      run('utimens', path, cb, async () => { await imageAt(path).setTimes(Math.round(Number(mtime))); return 0 })
    },
    chmod (path: string, mode: number, cb: Cb) {
      run('chmod', path, cb, async () => { await imageAt(path).setOwnership({ mode }); return 0 })
    },
    chown (path: string, uid: number, gid: number, cb: Cb) {
      run('chown', path, cb, async () => {
        // (uid_t)-1 means "leave unchanged".
        await imageAt(path).setOwnership({ uid: uid === 0xffffffff ? undefined : uid, gid: gid === 0xffffffff ? undefined : gid })
        return 0
      })
    },
    mkdir (path: string, _mode: number, cb: Cb) { fail('mkdir', path, new SheepError('EPERM', 'the mount holds images only'), cb) },
    rmdir (path: string, cb: Cb) { fail('rmdir', path, path === '/' ? SheepError.busy('/') : new SheepError('ENOTDIR', path), cb) },
    mknod (path: string, _mode: number, _dev: number, cb: Cb) { fail('mknod', path, new SheepError('EPERM', 'the mount holds images only'), cb) },
    symlink (_target: string, path: string, cb: Cb) { fail('symlink', path, new SheepError('EPERM', 'the mount holds images only'), cb) },
    link (_from: string, path: string, cb: Cb) { fail('link', path, new SheepError('EPERM', 'the mount holds images only'), cb) }
  }
}
