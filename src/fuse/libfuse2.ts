// The fuse-native (libfuse 2) session: fuse-native's callback operations over the adapter core.
// The fallback where the daemon cannot speak the kernel protocol itself (not root).

import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import { SheepError } from '../errors'
import { FUSE_FSNAME, type FsCore } from './adapter'
import { ERRNO, failedOp } from './errno'

type Cb = (result: number, ...rest: unknown[]) => void

const DAEMON = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }
type Op = (...args: any[]) => void

/** libfuse 2 caps requests at 128 KiB. */
const MAX_REQUEST = 131072
/** Free I/O buffers of MAX_REQUEST bytes kept: about as many as requests libfuse's threads hold. */
const SPARE_BUFFERS = 16

/**
 * libfuse's read and write buffers are its own: once an operation is answered, its thread takes
 * the next request into the same memory. An operation answered ETIMEDOUT goes on in the daemon
 * (an image call cannot be cancelled), so it must never hold libfuse's buffer: a write's bytes
 * are copied out before the call starts, and a read lands in a buffer of the daemon's, copied
 * into libfuse's only while the read is still unanswered. The daemon's buffers go back to the
 * pool when the call is over, not when it was answered. (fuse-native's own timeout answers
 * without telling the operation, so it is off and this one takes its place.)
 */
export function libfuse2Operations (core: FsCore, opts: { ioTimeout: number, log: (line: string) => void }): Record<string, Op> {
  const log = opts.log
  const spare: Buffer[] = []
  const take = (len: number): Buffer => len > MAX_REQUEST ? Buffer.allocUnsafe(len) : spare.pop() ?? Buffer.allocUnsafeSlow(MAX_REQUEST)
  const giveBack = (buf: Buffer): void => { if (buf.length === MAX_REQUEST && spare.length < SPARE_BUFFERS) spare.push(buf) }

  // Runs an operation and answers it once: with its result, its error (any throw, synchronous or
  // not, becomes an errno, never a crash), or ETIMEDOUT after the I/O timeout, whichever comes
  // first. `answer` gives fuse-native the result: by default 0, and the value if there is one.
  // `fn` is told whether the operation is still unanswered.
  const run = <T>(op: string, path: string, cb: Cb, fn: (unanswered: () => boolean) => Promise<T> | T, answer: (value: T) => void = v => v === undefined ? cb(0) : cb(0, v)): void => {
    let answered = false
    const once = (reply: () => void): void => {
      if (answered) return
      answered = true
      clearTimeout(timer)
      reply()
    }
    const timer = setTimeout(() => once(() => {
      log(`fuse: ${op} ${path} took longer than ${opts.ioTimeout} ms: answered ETIMEDOUT`)
      cb(ERRNO.ETIMEDOUT)
    }), opts.ioTimeout)
    const fail = (err: unknown): void => once(() => cb(failedOp(op, path, err, log)))
    let result
    try {
      result = fn(() => !answered)
    } catch (err) {
      fail(err)
      return
    }
    Promise.resolve(result).then(v => once(() => answer(v)), fail)
  }

  return {
    init (cb: Cb) { cb(0) },
    getattr (path: string, cb: Cb) { run('getattr', path, cb, () => core.getattr(path)) },
    readdir (path: string, cb: Cb) { run('readdir', path, cb, () => core.readdir(path).map(e => e.name)) },
    access (path: string, _mode: number, cb: Cb) { run('access', path, cb, () => core.access(path)) },
    statfs (path: string, cb: Cb) { run('statfs', path, cb, async () => await core.statfs()) },
    open (path: string, flags: number, cb: Cb) { run('open', path, cb, async () => await core.open(path, flags)) },
    // fuse-native does not pass the caller (libfuse's fuse_get_context) on: an image made here
    // is the daemon's own user's.
    create (path: string, mode: number, cb: Cb) { run('create', path, cb, async () => await core.create(path, mode, DAEMON)) },
    release (path: string, fd: number, cb: Cb) { run('release', path, cb, async () => await core.release(fd)) },
    // fuse-native takes a read's or write's byte count in place of the 0 of success.
    read (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      run('read', path, cb, async unanswered => {
        const own = take(len)
        try {
          const n = await core.read(fd, pos, len, own.subarray(0, len))
          // The answer follows in this turn's microtasks: the timeout's timer cannot come in between.
          if (unanswered()) own.copy(buf, 0, 0, n)
          return n
        } finally {
          giveBack(own)
        }
      }, n => cb(n))
    },
    write (path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb) {
      run('write', path, cb, async () => {
        const own = take(len)
        buf.copy(own, 0, 0, len)
        try {
          return await core.write(fd, pos, own.subarray(0, len))
        } finally {
          giveBack(own)
        }
      }, n => cb(n))
    },
    flush (path: string, fd: number, cb: Cb) { run('flush', path, cb, async () => await core.flush(fd)) },
    fsync (path: string, _datasync: number, fd: number, cb: Cb) { run('fsync', path, cb, async () => await core.fsync(fd)) },
    truncate (path: string, size: number, cb: Cb) { run('truncate', path, cb, async () => await core.truncate(path, size)) },
    ftruncate (path: string, fd: number, size: number, cb: Cb) { run('ftruncate', path, cb, async () => await core.ftruncate(fd, size)) },
    unlink (path: string, cb: Cb) { run('unlink', path, cb, async () => await core.unlink(path)) },
    rename (from: string, to: string, cb: Cb) { run('rename', from, cb, async () => await core.rename(from, to)) },
    utimens (path: string, _atime: number, mtime: number, cb: Cb) { run('utimens', path, cb, async () => await core.utimens(path, Number(mtime))) },
    chmod (path: string, mode: number, cb: Cb) { run('chmod', path, cb, async () => await core.chmod(path, mode)) },
    chown (path: string, uid: number, gid: number, cb: Cb) { run('chown', path, cb, async () => await core.chown(path, uid, gid)) },
    setxattr (path: string, name: string, buf: Buffer, _position: number, flags: number, cb: Cb) {
      run('setxattr', path, cb, async () => await core.setxattr(path, name, buf, flags))
    },
    getxattr (path: string, name: string, _position: number, cb: Cb) { run('getxattr', path, cb, () => core.getxattr(path, name)) },
    listxattr (path: string, cb: Cb) { run('listxattr', path, cb, () => core.listxattr(path)) },
    removexattr (path: string, name: string, cb: Cb) { run('removexattr', path, cb, async () => await core.removexattr(path, name)) },
    mkdir (path: string, _mode: number, cb: Cb) { run('mkdir', path, cb, () => core.mkdir()) },
    rmdir (path: string, cb: Cb) { run('rmdir', path, cb, () => core.rmdir(path)) },
    mknod (path: string, _mode: number, _dev: number, cb: Cb) { run('mknod', path, cb, () => core.mknod()) },
    symlink (_target: string, path: string, cb: Cb) { run('symlink', path, cb, () => core.symlink()) },
    link (_from: string, path: string, cb: Cb) { run('link', path, cb, () => core.link()) }
  }
}

type FuseClass = typeof import('fuse-native')

/** Why fuse-native cannot mount here, or null. */
export function libfuse2Missing (): string | null {
  if (!fs.existsSync('/dev/fuse')) return 'FUSE is missing: /dev/fuse does not exist (load the fuse module, or give the container /dev/fuse)'
  try {
    execFileSync('fusermount', ['-V'], { stdio: 'ignore' })
  } catch {
    return 'FUSE is missing: fusermount is not installed (Debian: apt-get install fuse libfuse2)'
  }
  try {
    require('fuse-native')
  } catch (err) {
    return `FUSE is missing: cannot load libfuse 2 (Debian: apt-get install libfuse2): ${(err as Error).message.split('\n')[0]}`
  }
  return null
}

export class Libfuse2Mount {
  private constructor (readonly dir: string, private readonly fuse: InstanceType<FuseClass>) {}

  /** Mounts `dir` through fuse-native; `ioTimeout` ms after which an operation is answered ETIMEDOUT. */
  static async mount (dir: string, core: FsCore, opts: { ioTimeout: number, log: (line: string) => void }): Promise<Libfuse2Mount> {
    const missing = libfuse2Missing()
    if (missing) throw new SheepError('ENOTSUP', missing)
    const Fuse = require('fuse-native') as FuseClass
    // fuse-native whitelists only some -o options; its option string goes to libfuse verbatim.
    // attr_timeout/entry_timeout=0: no attribute or name caching, so a resize, rename or delete
    // through the command shows at once (fuse-native's attrTimeout option drops 0).
    // direct_io: no page cache in front of the images. Every read sees the store as it is (as
    // other hosts will write it), and writes skip the kernel's page-cache path, which asks the
    // daemon for security.capability before every write once getxattr is implemented (FUSE
    // never marks its inodes S_NOSEC): measured, 4K writes and fsync got 1.3-2x faster.
    const extra = ['big_writes', `max_write=${MAX_REQUEST}`, 'allow_other', 'default_permissions', 'attr_timeout=0', 'entry_timeout=0', 'direct_io']
    class SheepFuse extends Fuse {
      protected override _fuseOptions (): string {
        return super._fuseOptions() + ',' + extra.join(',')
      }
    }
    const fuse = new SheepFuse(dir, libfuse2Operations(core, opts), {
      mkdir: true,
      maxRead: MAX_REQUEST,
      fsname: FUSE_FSNAME,
      subtype: FUSE_FSNAME,
      timeout: false
    })
    await new Promise<void>((resolve, reject) => fuse.mount(err => {
      if (err === null || err === undefined) return resolve()
      if (/in use/i.test(err.message)) return reject(SheepError.busy(`mount point ${dir} is busy: ${err.message}`))
      reject(new SheepError('EIO', `cannot mount ${dir}: ${err.message}`))
    }))
    opts.log(`fuse: libfuse 2 (fuse-native), requests up to ${MAX_REQUEST >> 10} KiB`)
    return new Libfuse2Mount(dir, fuse)
  }

  async unmount (): Promise<void> {
    await new Promise<void>((resolve, reject) => this.fuse.unmount(err => err ? reject(new SheepError('EBUSY', `cannot unmount ${this.dir}: ${err.message}`)) : resolve()))
  }
}
