// The inode object of an image: a fixed-size header, then the owner table.
//
//   [0, HEADER_BYTES)   the header, compact-encoding (format 1, fields below) in a frame (./frame.ts)
//   [HEADER_BYTES, HEADER_BYTES + 16 * blocks)  owner table (./owner-table.ts)

import c from 'compact-encoding'
import { SheepError } from '../errors'
import { frame, unframe } from './frame'
import { ENTRY_BYTES } from './owner-table'

export const HEADER_BYTES = 4096
const HEADER_FORMAT = 1

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
}

const headerEncoding: c.Encoding<InodeHeader> = {
  preencode (state, h) {
    c.uint.preencode(state, HEADER_FORMAT)
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
  },
  encode (state, h) {
    c.uint.encode(state, HEADER_FORMAT)
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
  },
  decode (state) {
    const format = c.uint.decode(state)
    if (format !== HEADER_FORMAT) throw new Error(`unknown inode format ${format}`)
    return {
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
      snapshotTime: c.uint.decode(state)
    }
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
