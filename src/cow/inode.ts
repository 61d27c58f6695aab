// The inode object of an image: a fixed-size header, then the owner table.
//
//   [0, HEADER_BYTES)   the header, compact-encoding (format 1 or 2, fields below) in a frame (./frame.ts)
//   [HEADER_BYTES, HEADER_BYTES + 16 * blocks)  owner table (./owner-table.ts)
//
// Format 2 adds the image's extended attributes after the fields of format 1. A header without
// any is still written as format 1, so that a node of the version before reads it; both load.

import c from 'compact-encoding'
import { SheepError } from '../errors'
import { frame, unframe } from './frame'
import { ENTRY_BYTES } from './owner-table'

export const HEADER_BYTES = 4096
const FORMAT_PLAIN = 1
const FORMAT_XATTRS = 2

/** An extended attribute (limits: ./xattrs.ts). Headers share these: replace them, never change one in place. */
export interface Xattr { readonly name: string, readonly value: Buffer }

export interface InodeHeader {
  vid: number
  name: string
  /** Virtual size in bytes. */
  size: number
  objectSize: number
  copies: number
  /** vid of the snapshot this image (or snapshot) was made from; 0 for none. */
  parent: number
  ctime: number
  mtime: number
  mode: number
  uid: number
  gid: number
  /** A snapshot's tag; '' for a writable image. */
  tag: string
  /** When the snapshot was taken (ms); 0 for a writable image. */
  snapshotTime: number
  /** Extended attributes (security.*, trusted.*, user.*), sorted by name. */
  xattrs: readonly Xattr[]
}

const xattrEncoding = c.array({
  preencode (state, x: Xattr) { c.string.preencode(state, x.name); c.buffer.preencode(state, x.value) },
  encode (state, x: Xattr) { c.string.encode(state, x.name); c.buffer.encode(state, x.value) },
  decode (state): Xattr {
    const name = c.string.decode(state)
    // compact-encoding's buffer writes an empty value as null: a valid attribute of no bytes.
    const value = c.buffer.decode(state)
    return { name, value: value === null ? Buffer.alloc(0) : Buffer.from(value) }
  }
})

const headerEncoding: c.Encoding<InodeHeader> = {
  preencode (state, h) {
    c.uint.preencode(state, h.xattrs.length === 0 ? FORMAT_PLAIN : FORMAT_XATTRS)
    c.uint.preencode(state, h.vid)
    c.string.preencode(state, h.name)
    c.uint.preencode(state, h.size)
    c.uint.preencode(state, h.objectSize)
    c.uint.preencode(state, h.copies)
    c.uint.preencode(state, h.parent)
    c.uint.preencode(state, h.ctime)
    c.uint.preencode(state, h.mtime)
    c.uint.preencode(state, h.mode)
    c.uint.preencode(state, h.uid)
    c.uint.preencode(state, h.gid)
    c.string.preencode(state, h.tag)
    c.uint.preencode(state, h.snapshotTime)
    if (h.xattrs.length > 0) xattrEncoding.preencode(state, h.xattrs as Xattr[])
  },
  encode (state, h) {
    c.uint.encode(state, h.xattrs.length === 0 ? FORMAT_PLAIN : FORMAT_XATTRS)
    c.uint.encode(state, h.vid)
    c.string.encode(state, h.name)
    c.uint.encode(state, h.size)
    c.uint.encode(state, h.objectSize)
    c.uint.encode(state, h.copies)
    c.uint.encode(state, h.parent)
    c.uint.encode(state, h.ctime)
    c.uint.encode(state, h.mtime)
    c.uint.encode(state, h.mode)
    c.uint.encode(state, h.uid)
    c.uint.encode(state, h.gid)
    c.string.encode(state, h.tag)
    c.uint.encode(state, h.snapshotTime)
    if (h.xattrs.length > 0) xattrEncoding.encode(state, h.xattrs as Xattr[])
  },
  decode (state) {
    const format = c.uint.decode(state)
    if (format !== FORMAT_PLAIN && format !== FORMAT_XATTRS) throw new Error(`unknown inode format ${format}`)
    const h: InodeHeader = {
      vid: c.uint.decode(state),
      name: c.string.decode(state),
      size: c.uint.decode(state),
      objectSize: c.uint.decode(state),
      copies: c.uint.decode(state),
      parent: c.uint.decode(state),
      ctime: c.uint.decode(state),
      mtime: c.uint.decode(state),
      mode: c.uint.decode(state),
      uid: c.uint.decode(state),
      gid: c.uint.decode(state),
      tag: c.string.decode(state),
      snapshotTime: c.uint.decode(state),
      xattrs: []
    }
    if (format === FORMAT_XATTRS) h.xattrs = xattrEncoding.decode(state)
    return h
  }
}

export function encodeHeader (h: InodeHeader): Buffer {
  const out = frame(c.encode(headerEncoding, h))
  if (out.length > HEADER_BYTES) throw SheepError.invalid('inode header too large')
  return out
}

export function decodeHeader (bytes: Uint8Array, what: string): InodeHeader {
  const body = unframe(bytes.subarray(0, HEADER_BYTES), `${what}: inode header`, false)
  try {
    return c.decode(headerEncoding, body)
  } catch (err) {
    throw SheepError.corrupt(`${what}: inode header undecodable: ${(err as Error).message}`)
  }
}

export function blockCount (size: number, objectSize: number): number {
  return Math.ceil(size / objectSize)
}

export function inodeObjectSize (size: number, objectSize: number): number {
  return HEADER_BYTES + ENTRY_BYTES * blockCount(size, objectSize)
}

export function tableOffset (idx: number): number {
  return HEADER_BYTES + ENTRY_BYTES * idx
}
