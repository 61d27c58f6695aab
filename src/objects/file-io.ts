// Calls on object files: open, positioned read and write, truncate, sync.
//
// Small reads and writes run on the event loop's own thread (readSync/writeSync) instead of
// libuv's thread pool. Handing a call to a pool thread and back costs two thread wake-ups, and on
// a virtual machine with few cores a wake-up is tens of microseconds of CPU and more of waiting
// (docs/ARCHITECTURE.md, "Small I/O on the event loop"): for a replica that is most of what a 4 KiB
// write costs it. A call stays inline only while such calls are quick: one that takes longer than
// `slowMs` (the page cache did not hold the bytes, or the kernel throttled a writer of dirty pages)
// sends the next ones to the pool for `poolMs`. The event loop, which also answers peers and keeps
// links alive, is then blocked by at most one slow call per `poolMs`. Syncs always go to the pool:
// they wait for the disk.
//
// Writes larger than a piece (128 KiB) are made of pwrites of at most a piece. The size of one
// pwrite(2) sets the size of the page-cache folios it creates on ext4 (large folios, kernel 6.x),
// and every later write into a folio walks all of its buffer heads: measured here, a 4 KiB
// overwrite cost 21 µs of CPU in a folio made by a 1 MiB pwrite, 8 µs in one made by 128 KiB and
// 4.5 µs by 4 KiB. One 1 MiB FUSE WRITE as one pwrite made every later 4 KiB write into it slower
// than the whole rest of the daemon's work on it. Pieces cost a little more for large writes
// (inline, ~240 against ~200 µs of CPU per MiB written first, ~145 against ~210 for an
// overwrite), which is why they are not smaller. Writes up to the largest FUSE request (1 MiB) go
// inline piece by piece: pieces through the pool would cost a thread hop each (~50 µs here).

import fs from 'node:fs'
import { performance } from 'node:perf_hooks'

export interface FileIoOptions {
  /** Reads and writes up to this many bytes may run inline (0: never). */
  maxInline?: number
  /** An inline call that took longer than this sends calls to the pool for a while. */
  slowMs?: number
  /** How long calls go to the pool after a slow inline one. */
  poolMs?: number
  /** Writes up to this many bytes may run inline, in pieces of writePiece (0: never). */
  maxInlineWrite?: number
  /** The largest pwrite(2) an inline write is made of. */
  writePiece?: number
}

/** A FUSE request's largest size: whole guest requests go inline, whole-object copies do not. */
export const DEFAULT_MAX_INLINE = 128 * 1024
export const DEFAULT_SLOW_MS = 2
export const DEFAULT_POOL_MS = 1000
/** The largest FUSE request (the kernel frontend's max_write). */
export const DEFAULT_MAX_INLINE_WRITE = 1024 * 1024
/** libfuse 2's request size: folios no larger than what it made (see above). */
export const DEFAULT_WRITE_PIECE = 128 * 1024

type PooledCall = (fd: number, buf: Uint8Array, off: number, len: number, pos: number, done: (err: NodeJS.ErrnoException | null, n: number) => void) => void
type InlineCall = (fd: number, buf: Uint8Array, off: number, len: number, pos: number) => number

export class FileIo {
  private readonly maxInline: number
  private readonly slowMs: number
  private readonly poolMs: number
  private readonly maxInlineWrite: number
  private readonly writePiece: number
  /** Until then (performance.now()), calls go to the pool. */
  private poolUntil = 0

  constructor (opts: FileIoOptions = {}) {
    this.maxInline = opts.maxInline ?? DEFAULT_MAX_INLINE
    this.slowMs = opts.slowMs ?? DEFAULT_SLOW_MS
    this.poolMs = opts.poolMs ?? DEFAULT_POOL_MS
    this.maxInlineWrite = opts.maxInlineWrite ?? DEFAULT_MAX_INLINE_WRITE
    this.writePiece = opts.writePiece ?? DEFAULT_WRITE_PIECE
  }

  /** Whether a call of `length` bytes would run inline now. */
  inline (length: number): boolean {
    return length <= this.maxInline && performance.now() >= this.poolUntil
  }

  async read (fd: number, buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    return await this.call(fs.read, fs.readSync, fd, buf, off, len, pos)
  }

  /** Writes up to `len` bytes; returns how many were written (a short write ends the pieces). */
  async write (fd: number, buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    if (len <= this.maxInline || len > this.maxInlineWrite) return await this.call(fs.write, fs.writeSync, fd, buf, off, len, pos)
    const start = performance.now()
    // A large write after a slow call goes to the pool in one call, its folios as large as it is.
    if (start < this.poolUntil) return await this.call(fs.write, fs.writeSync, fd, buf, off, len, pos)
    try {
      let done = 0
      while (done < len) {
        const piece = Math.min(this.writePiece, len - done)
        const n = fs.writeSync(fd, buf, off + done, piece, pos + done)
        done += n
        if (n < piece) break
      }
      return done
    } finally {
      this.timed(start)
    }
  }

  private async call (pooled: PooledCall, inline: InlineCall, fd: number, buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
    const start = performance.now()
    if (len > this.maxInline || start < this.poolUntil) return await new Promise((resolve, reject) => pooled(fd, buf, off, len, pos, (err, n) => err ? reject(err) : resolve(n)))
    try {
      return inline(fd, buf, off, len, pos)
    } finally {
      this.timed(start)
    }
  }

  private timed (start: number): void {
    const end = performance.now()
    if (end - start > this.slowMs) this.poolUntil = end + this.poolMs
  }
}

// Callback-style fs calls: they skip the FileHandle machinery of fs.promises on the hot path.
export async function openFile (file: string, flags: number): Promise<number> {
  return await new Promise((resolve, reject) => fs.open(file, flags, 0o600, (err, fd) => err ? reject(err) : resolve(fd)))
}

export async function ftruncate (fd: number, size: number): Promise<void> {
  await new Promise<void>((resolve, reject) => fs.ftruncate(fd, size, err => err ? reject(err) : resolve()))
}

export async function fdatasync (fd: number): Promise<void> {
  await new Promise<void>((resolve, reject) => fs.fdatasync(fd, err => err ? reject(err) : resolve()))
}

export async function syncPath (file: string): Promise<void> {
  const fd = await openFile(file, fs.constants.O_RDONLY)
  try { await fdatasync(fd) } finally { fs.closeSync(fd) }
}

/** Makes the names in a folder durable: a file created or renamed there is found after a power cut. */
export async function syncDir (dir: string): Promise<void> {
  const fd = await openFile(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  try {
    await new Promise<void>((resolve, reject) => fs.fsync(fd, err => err ? reject(err) : resolve()))
  } finally {
    fs.closeSync(fd)
  }
}
