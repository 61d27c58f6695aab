// The image directory: one meta object listing every image's name and vid. It is small (a few
// hundred bytes per image) and replaced whole on every change, atomically.
//
// Format 1 (compact-encoding): uint format, array of { string name, uint vid }.

import c from 'compact-encoding'
import { SheepError } from '../errors'
import { metaOid } from '../objects/oid'

export const DIRECTORY_OID = metaOid(1)
const DIRECTORY_FORMAT = 1

export interface DirectoryEntry { name: string, vid: number }

const entryEncoding: c.Encoding<DirectoryEntry> = {
  preencode (state, e) { c.string.preencode(state, e.name); c.uint.preencode(state, e.vid) },
  encode (state, e) { c.string.encode(state, e.name); c.uint.encode(state, e.vid) },
  decode (state) { return { name: c.string.decode(state), vid: c.uint.decode(state) } }
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
  return c.encode(directoryEncoding, entries)
}

export function decodeDirectory (bytes: Uint8Array): DirectoryEntry[] {
  try {
    return c.decode(directoryEncoding, bytes)
  } catch (err) {
    throw SheepError.corrupt(`the image directory is corrupt: ${(err as Error).message}`)
  }
}
