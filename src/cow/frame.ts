// The frame around every metadata record src/cow stores: u32 LE length, u32 LE CRC-32 of the
// body, the body. A record that fails its length or CRC check is corrupt, never guessed at.

import zlib from 'node:zlib'
import { SheepError } from '../errors'

export const FRAME_OVERHEAD = 8

export function frame (body: Uint8Array): Buffer {
  const out = Buffer.alloc(FRAME_OVERHEAD + body.length)
  out.writeUInt32LE(body.length, 0)
  out.writeUInt32LE(zlib.crc32(body), 4)
  out.set(body, FRAME_OVERHEAD)
  return out
}

/**
 * The body of the frame at the start of `bytes`. With `exact`, nothing may follow the frame;
 * without it, the rest is padding (a fixed-size region).
 */
export function unframe (bytes: Uint8Array, what: string, exact: boolean): Buffer {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (buf.length < FRAME_OVERHEAD) throw SheepError.corrupt(`${what} is corrupt: truncated`)
  const len = buf.readUInt32LE(0)
  const end = FRAME_OVERHEAD + len
  // No record has an empty body; an all-zero region is a record never written.
  if (len === 0 || end > buf.length || (exact && end !== buf.length)) throw SheepError.corrupt(`${what} is corrupt: bad length ${len}`)
  const body = buf.subarray(FRAME_OVERHEAD, end)
  if (zlib.crc32(body) !== buf.readUInt32LE(4)) throw SheepError.corrupt(`${what} is corrupt: checksum mismatch`)
  return body
}
