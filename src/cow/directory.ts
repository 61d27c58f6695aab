// The image directory: one meta object listing every image's name and vid. It is small (a few
// hundred bytes per image) and replaced whole on every change, atomically.
//
// Format 1: a frame (./frame.ts) around compact-encoding uint format, array of
// { string name, string tag, uint vid, uint flags }. An image has tag ''; a snapshot has its tag.
// A deleted snapshot that other images still read through is kept, hidden (flag 1); so is an
// image's inode frozen for a copy (./copy-range.ts), tagged `copy@<ms>`.

import c from 'compact-encoding'
import { SheepError } from '../errors'
import { metaOid } from '../objects/oid'
import type { ObjectStore } from '../objects/types'
import { frame, unframe } from './frame'

export const DIRECTORY_OID = metaOid(1)
const DIRECTORY_FORMAT = 1

export const HIDDEN = 1

export interface DirectoryEntry { name: string, tag: string, vid: number, flags: number }

const entryEncoding: c.Encoding<DirectoryEntry> = {
  preencode (state, e) { c.string.preencode(state, e.name); c.string.preencode(state, e.tag); c.uint.preencode(state, e.vid); c.uint.preencode(state, e.flags) },
  encode (state, e) { c.string.encode(state, e.name); c.string.encode(state, e.tag); c.uint.encode(state, e.vid); c.uint.encode(state, e.flags) },
  decode (state) { return { name: c.string.decode(state), tag: c.string.decode(state), vid: c.uint.decode(state), flags: c.uint.decode(state) } }
}

const directoryEncoding: c.Encoding<DirectoryEntry[]> = {
  preencode (state, list) { c.uint.preencode(state, DIRECTORY_FORMAT); c.array(entryEncoding).preencode(state, list) },
  encode (state, list) { c.uint.encode(state, DIRECTORY_FORMAT); c.array(entryEncoding).encode(state, list) },
  decode (state) {
    const format = c.uint.decode(state)
    if (format !== DIRECTORY_FORMAT) throw new Error(`unknown directory format ${format}`)
    return c.array(entryEncoding).decode(state)
  }
}

export function encodeDirectory (entries: DirectoryEntry[]): Buffer {
  return frame(c.encode(directoryEncoding, entries))
}

/** The directory as the store holds it; a read the store fails with EIO (damage its checksums found) says it is the directory. */
export async function readDirectory (objects: Pick<ObjectStore, 'readAll'>): Promise<DirectoryEntry[]> {
  let bytes: Buffer
  try {
    bytes = await objects.readAll(DIRECTORY_OID)
  } catch (err) {
    if (err instanceof SheepError && err.code === 'EIO') throw SheepError.corrupt(`the image directory is corrupt: ${err.message}`)
    throw err
  }
  return decodeDirectory(bytes)
}

export function decodeDirectory (bytes: Uint8Array): DirectoryEntry[] {
  const body = unframe(bytes, 'the image directory', true)
  try {
    const state = c.state(0, body.length, body)
    const entries = directoryEncoding.decode(state)
    if (state.start !== body.length) throw new Error('trailing bytes')
    return entries
  } catch (err) {
    throw SheepError.corrupt(`the image directory is corrupt: ${(err as Error).message}`)
  }
}
