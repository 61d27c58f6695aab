// copy_file_range between images, and within one.
//
// How this works: a range copied between two images at the same offset shares its whole blocks
// as a clone shares a snapshot's: the destination's owner entries become verbatim copies of the
// source's (Image.shareFrom), O(1) per block, no data read or written. That is only sound where
// the source's entries point at frozen inodes, whose objects no one writes in place; where the
// source owns a block itself, ImageStore.freeze first turns its current inode into a hidden
// snapshot and lets the image go on as a new inode reading through it, exactly as a snapshot
// does. From then on a write on either side copies up (Image.write), and gc frees the frozen
// objects once no live table reads them. The bytes of partial blocks at the ends of the range
// are copied. So is everything when the two offsets differ (an entry names the object of its own
// index: a block cannot move to another index without a copy), when the images differ in object
// size, and when the source cannot be frozen (on a cluster, another host has it open for
// writing: EBUSY).

import { SheepError } from '../errors'
import type { Image } from './image'
import type { ImageStore } from './image-store'

/** Copied bytes per call at most (callers loop), read and written COPY_CHUNK at a time. */
export const MAX_COPY = 64 * 2 ** 20
const COPY_CHUNK = 2 ** 20
/** Per call at most when whole blocks are shared: within the u32 a FUSE reply counts bytes in. */
export const MAX_SHARE = 2 ** 30
/** A source written again between its freeze and the share is frozen again this often at most; then the bytes are copied. */
const MAX_FREEZES = 3

/** One end of a copy: an image, and whether its handle may write (on a cluster, such I/O holds the write token). */
export interface CopyEnd { image: Image, writable: boolean }

type Store = Pick<ImageStore, 'io' | 'freeze'>

/**
 * Copies up to `len` bytes at srcPos of `from` to dstPos of `to` (growing it as a write would),
 * stopping at the source's end; returns how many. One call copies at most MAX_SHARE bytes when
 * it shares blocks and MAX_COPY otherwise.
 */
export async function copyRange (store: Store, from: CopyEnd, srcPos: number, to: CopyEnd, dstPos: number, len: number): Promise<number> {
  // A caller may ask for "all of it" (coreutils passes up to SSIZE_MAX): only the offsets must be exact.
  if (!Number.isSafeInteger(srcPos) || srcPos < 0 || !Number.isSafeInteger(dstPos) || dstPos < 0 || !(len >= 0)) {
    throw SheepError.invalid(`bad copy range ${srcPos} -> ${dstPos} + ${len}`)
  }
  if (!to.writable) throw SheepError.readOnly(to.image.name)
  const src = from.image
  const dst = to.image
  const end = Math.min(srcPos + len, src.size)
  if (srcPos >= end) return 0
  if (shareable(src, srcPos, dst, dstPos)) {
    const os = src.header.objectSize
    const stop = Math.min(end, srcPos + MAX_SHARE)
    const first = Math.ceil(srcPos / os)
    const last = Math.floor(stop / os)
    if (first < last && await share(store, src, dst, first, last)) {
      await copyBytes(store, from, srcPos, to, srcPos, first * os - srcPos)
      await copyBytes(store, from, last * os, to, last * os, stop - last * os)
      return stop - srcPos
    }
  }
  return await copyBytes(store, from, srcPos, to, dstPos, Math.min(end - srcPos, MAX_COPY))
}

function shareable (src: Image, srcPos: number, dst: Image, dstPos: number): boolean {
  // Copies may differ: shared objects keep those of the image they were written in, as a clone's
  // do (an image made by cp has the daemon's default, which need not be its source's).
  return src !== dst && srcPos === dstPos && !src.unlinked && !dst.unlinked && src.header.objectSize === dst.header.objectSize
}

/** Shares blocks [first, end) of src into dst, freezing src when it owns some; false: copy the bytes instead. */
async function share (store: Store, src: Image, dst: Image, first: number, end: number): Promise<boolean> {
  for (let freezes = 0; ; freezes++) {
    if (src.isSnapshot || !src.ownsAny(first, end)) {
      if (await store.io(dst, true, async () => await dst.shareFrom(src, first, end))) return true
    }
    if (freezes === MAX_FREEZES) return false
    try {
      await store.freeze(src)
    } catch (err) {
      if (err instanceof SheepError && err.code === 'EBUSY') return false
      throw err
    }
  }
}

/** Reads and writes n bytes; fewer if the source ends sooner (it shrank meanwhile). */
async function copyBytes (store: Store, from: CopyEnd, srcPos: number, to: CopyEnd, dstPos: number, n: number): Promise<number> {
  if (n === 0) return 0
  const buf = Buffer.allocUnsafe(Math.min(n, COPY_CHUNK))
  let done = 0
  while (done < n) {
    const got = await store.io(from.image, from.writable, async () => await from.image.read(srcPos + done, Math.min(COPY_CHUNK, n - done), buf))
    if (got === 0) break
    // The image has the bytes once write resolves: the buffer can take the next chunk.
    await store.io(to.image, true, async () => await to.image.write(dstPos + done, buf.subarray(0, got)))
    done += got
  }
  return done
}
