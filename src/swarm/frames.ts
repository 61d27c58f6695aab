// Frames of the direct (TCP) path after its Noise handshake (./noise.ts): one message a frame,
//
//   prefix  7 bytes, authenticated: u32le body length, u8 type (| PLAIN), u16le head length
//   body    the message's head (its fields, compact-encoding) then its data
//   tag     16 bytes
//
// sealed with AES-256-GCM under a key per direction and the frame's number as nonce, so a frame
// that was changed, cut, replayed, reordered or dropped fails the next check. Encrypted, the head
// and data are ciphertext; PLAIN (both ends run --wire plain-authenticated) leaves them readable
// and authenticates them as additional data: GMAC, several times cheaper, never without integrity.
// The data is never copied into a message buffer: a frame goes out as its pieces (one writev).

import crypto from 'node:crypto'
import { SheepError } from '../errors'
import { BodyPool } from './body-pool'
import { MAX_DATA } from './messages'

export enum FrameType { KeepAlive = 0, Hello = 1, Request = 2, Response = 3 }
/** A frame bit: head and data are not encrypted (authenticated only). */
export const PLAIN = 0x80
/** A hello frame bit: its sender asks for PLAIN frames (--wire plain-authenticated). */
export const WANTS_PLAIN = 0x40
export const PREFIX = 7
export const TAG = 16
export const MAX_HEAD = 0xffff
export const MAX_BODY = MAX_HEAD + MAX_DATA
/**
 * The largest frame before the peer's hello (a hello with a view of 1024 members is about 400 KB):
 * any key passes Noise, and 128 unproven connections must not hold 8 MiB each.
 */
export const MAX_UNPROVEN_BODY = 2 ** 20

export type WireMode = 'encrypted' | 'plain-authenticated'
export const WIRE_MODES: readonly WireMode[] = ['encrypted', 'plain-authenticated']

const ALGORITHM = 'aes-256-gcm'
const EMPTY = Buffer.alloc(0)

/**
 * This end's frame keys from the Noise split (tx, rx): bound to this use, so they are never the
 * keys of anything else made from the same handshake.
 */
export function frameKeys (tx: Buffer, rx: Buffer): { send: Buffer, receive: Buffer } {
  const derive = (k: Buffer): Buffer => crypto.createHmac('sha256', k).update('sheep/1 frames aes-256-gcm').digest()
  return { send: derive(tx), receive: derive(rx) }
}

/** The nonce of frame n of a direction: 4 zero bytes, then n (below 2^53) as 8 little-endian bytes. */
function nonce (iv: Buffer, n: number): Buffer {
  iv.writeUInt32LE(n >>> 0, 4)
  iv.writeUInt32LE(Math.floor(n / 2 ** 32), 8)
  return iv
}

export class FrameSealer {
  /** Set once both ends asked for plain-authenticated frames. */
  plain = false
  private readonly key: Buffer
  private readonly iv = Buffer.alloc(12)
  private sent = 0

  constructor (key: Buffer) {
    this.key = key
  }

  /** The frame's pieces, to be written in order; `flags` are WANTS_PLAIN on a hello. */
  seal (type: FrameType, head: Uint8Array, data: Uint8Array = EMPTY, flags = 0): Uint8Array[] {
    if (head.length > MAX_HEAD) throw SheepError.tooBig(`a message head of ${head.length} bytes, more than the ${MAX_HEAD} a frame carries`)
    if (data.length > MAX_DATA) throw SheepError.tooBig(`data of ${data.length} bytes, more than the ${MAX_DATA} a frame carries`)
    const prefix = Buffer.allocUnsafe(PREFIX)
    prefix.writeUInt32LE(head.length + data.length, 0)
    prefix[4] = type | flags | (this.plain ? PLAIN : 0)
    prefix.writeUInt16LE(head.length, 5)
    const cipher = crypto.createCipheriv(ALGORITHM, this.key, nonce(this.iv, this.sent++))
    cipher.setAAD(prefix)
    if (this.plain) {
      if (head.length > 0) cipher.setAAD(head)
      if (data.length > 0) cipher.setAAD(data)
      cipher.final()
      return [prefix, head, data, cipher.getAuthTag()]
    }
    const h = cipher.update(head)
    const d = data.length > 0 ? cipher.update(data) : EMPTY
    cipher.final()
    return [prefix, h, d, cipher.getAuthTag()]
  }
}

export interface Frame {
  type: FrameType
  /** The prefix's flag bits (WANTS_PLAIN, PLAIN). */
  flags: number
  head: Buffer
  data: Buffer
}

/**
 * Reads frames out of the bytes of a connection however they are cut. Each is checked before it
 * is handed on; anything wrong (a length past the limits, an unknown type, a PLAIN frame this end
 * did not agree to, a failed tag) is a SheepError EPROTO and the connection must close.
 */
export class FrameReader {
  /** Set once both ends asked for plain-authenticated frames. */
  acceptPlain = false
  /** The largest body taken; raised from MAX_UNPROVEN_BODY once the peer's hello is in. */
  maxBody = MAX_UNPROVEN_BODY
  private readonly key: Buffer
  private readonly iv = Buffer.alloc(12)
  private received = 0
  private readonly prefix = Buffer.alloc(PREFIX)
  private readonly tag = Buffer.alloc(TAG)
  private have = 0
  private state: 'prefix' | 'body' | 'tag' = 'prefix'
  private left = 0
  private type = FrameType.KeepAlive
  private flags = 0
  private headLength = 0
  private decipher: crypto.DecipherGCM | null = null
  /** The frame's body, filled as its bytes come (decrypted), and how much of it is. */
  private body: Buffer = EMPTY
  private filled = 0
  /** Where bodies come from; what a Write request carried goes back to it (ready()). */
  readonly pool = new BodyPool()

  constructor (key: Buffer) {
    this.key = key
  }

  /** A frame's data is done with: its memory may carry a later frame. */
  ready (data: Uint8Array): void {
    this.pool.give(data)
  }

  /** Feeds the next bytes of the connection; hands each whole, authentic frame to `frame`. */
  push (chunk: Buffer, frame: (f: Frame) => void): void {
    let at = 0
    while (at < chunk.length) {
      if (this.state === 'prefix') {
        const n = Math.min(PREFIX - this.have, chunk.length - at)
        chunk.copy(this.prefix, this.have, at, at + n)
        this.have += n
        at += n
        if (this.have === PREFIX) this.begin()
      } else if (this.state === 'body') {
        const n = Math.min(this.left, chunk.length - at)
        this.take(chunk.subarray(at, at + n))
        this.left -= n
        at += n
        if (this.left === 0) this.state = 'tag'
      } else {
        const n = Math.min(TAG - this.have, chunk.length - at)
        chunk.copy(this.tag, this.have, at, at + n)
        this.have += n
        at += n
        if (this.have === TAG) frame(this.end())
      }
    }
  }

  private begin (): void {
    const body = this.prefix.readUInt32LE(0)
    const byte = this.prefix[4] as number
    this.type = byte & 0x3f
    this.flags = byte & (PLAIN | WANTS_PLAIN)
    this.headLength = this.prefix.readUInt16LE(5)
    if (this.type > FrameType.Response) throw SheepError.protocol(`a frame of unknown type ${this.type}`)
    if ((this.flags & WANTS_PLAIN) !== 0 && this.type !== FrameType.Hello) throw SheepError.protocol('a frame other than the hello asks for plain frames')
    if ((this.flags & PLAIN) !== 0 && !this.acceptPlain) throw SheepError.protocol('a plain-authenticated frame where frames are encrypted')
    if (this.headLength > body) throw SheepError.protocol(`a frame whose head (${this.headLength} bytes) is longer than its body (${body})`)
    if (body - this.headLength > MAX_DATA || body > this.maxBody) throw SheepError.protocol(`a frame of ${body} bytes, more than ${Math.min(this.maxBody, MAX_BODY)}`)
    if (this.type === FrameType.KeepAlive && body !== 0) throw SheepError.protocol(`a keep-alive frame of ${body} bytes`)
    this.decipher = crypto.createDecipheriv(ALGORITHM, this.key, nonce(this.iv, this.received++))
    this.decipher.setAAD(this.prefix)
    this.left = body
    this.have = 0
    this.body = body === 0 ? EMPTY : this.pool.take(body)
    this.filled = 0
    this.state = body === 0 ? 'tag' : 'body'
  }

  private take (slice: Buffer): void {
    const decipher = this.decipher as crypto.DecipherGCM
    if ((this.flags & PLAIN) !== 0) decipher.setAAD(slice)
    // GCM's output is as long as its input.
    this.filled += ((this.flags & PLAIN) !== 0 ? slice : decipher.update(slice)).copy(this.body, this.filled)
  }

  private end (): Frame {
    const decipher = this.decipher as crypto.DecipherGCM
    decipher.setAuthTag(this.tag)
    try {
      decipher.final()
    } catch {
      throw SheepError.protocol('a frame failed its authentication check')
    }
    const body = this.body
    const f: Frame = { type: this.type, flags: this.flags, head: body.subarray(0, this.headLength), data: body.subarray(this.headLength) }
    this.body = EMPTY
    this.decipher = null
    this.have = 0
    this.state = 'prefix'
    return f
  }
}
