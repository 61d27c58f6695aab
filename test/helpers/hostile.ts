// What a hostile peer sends, for the fuzzing and hostile-peer tests: valid peer messages made up
// from a seeded generator, a mutator that breaks them in the ways a decoder must survive (bit
// flips, truncation, extension, huge length and count prefixes, random bytes), the protomux
// frames that carry them on the Hyperswarm path and an in-memory stream a Link can run on, and a
// connection to a node's direct (TCP) port that sends what a test makes up, sealed or not.

import { EventEmitter } from 'node:events'
import net from 'node:net'
import c from 'compact-encoding'
import { FrameSealer, frameKeys, FrameType } from '../../src/swarm/frames'
import { noiseHandshake } from '../../src/swarm/noise'
import { Rng } from './random'
import type { AgreementMessage } from '../../src/swarm/view-agreement'
import type { Hello, ObjectEntry, Request, Response, TokenRecord, Usage, VerifyAnswer } from '../../src/swarm/messages'
import { PROTOCOL } from '../../src/swarm/messages'
import type { Member, View } from '../../src/swarm/view'

const HOSTS = ['127.0.0.1', '10.1.2.3', '::1', 'fe80::1', 'node-1', 'a.example.org']
const ZONES = ['', 'rack-1', 'zone b', 'z'.repeat(64)]
const CODES = ['', 'ENOENT', 'EIO', 'ESTALE', 'EPROTO', 'EAGAIN']

export function nodeId (rng: Rng): string { return rng.bytes(32).toString('hex') }

/** A number as a peer may send it: mostly small, sometimes near the edges of its encodings. */
export function uintOf (rng: Rng): number {
  return rng.pick([0, 1, rng.int(0, 0xfc), rng.int(0xfd, 0xffff), rng.int(0x10000, 0xffffffff), Number.MAX_SAFE_INTEGER, rng.int(0, 2 ** 40)])
}

export function memberOf (rng: Rng, id = nodeId(rng)): Member {
  return { id, host: rng.pick(HOSTS), port: rng.int(0, 65535), zone: rng.pick(ZONES), weight: rng.int(1, 5000) }
}

export function viewOf (rng: Rng): View {
  if (rng.chance(0.2)) return { epoch: 0, members: [] }
  const members = Array.from({ length: rng.int(1, 4) }, () => memberOf(rng)).sort((a, b) => a.id < b.id ? -1 : 1)
  const v: View = { epoch: rng.int(1, 2 ** 32), members }
  if (rng.chance(0.3)) v.removed = Array.from({ length: rng.int(1, 3) }, () => nodeId(rng)).sort()
  if (rng.chance(0.3)) v.manual = true
  // Down members: some of the members, never all of them.
  if (members.length > 1 && rng.chance(0.3)) v.down = members.slice(0, rng.int(1, members.length - 1)).map(m => ({ id: m.id, since: rng.int(0, 2 ** 42) }))
  return v
}

/** 64 random bytes in hex, shaped like an ed25519 signature. */
export function signatureOf (rng: Rng): string { return rng.bytes(64).toString('hex') }

export function helloOf (rng: Rng): Hello {
  return { proof: rng.bytes(32), self: memberOf(rng), view: viewOf(rng) }
}

export function requestOf (rng: Rng): Request {
  return {
    id: uintOf(rng), epoch: uintOf(rng), op: rng.int(0, 17), oid: rng.bytes(8).readBigUInt64LE(0),
    offset: uintOf(rng), length: uintOf(rng), version: uintOf(rng), data: rng.bytes(rng.pick([0, 1, 7, 64]))
  }
}

export function responseOf (rng: Rng): Response {
  return {
    id: uintOf(rng), error: rng.pick(CODES), message: rng.pick(['', 'no such object', 'é'.repeat(20)]),
    epoch: uintOf(rng), version: uintOf(rng), size: uintOf(rng), data: rng.bytes(rng.pick([0, 3, 40]))
  }
}

export function objectListOf (rng: Rng): ObjectEntry[] {
  return Array.from({ length: rng.int(0, 6) }, () => {
    const e: ObjectEntry = { oid: rng.bytes(8).readBigUInt64LE(0), version: uintOf(rng), size: uintOf(rng) }
    if (rng.chance(0.3)) e.uncertain = true
    else if (rng.chance(0.3)) e.removed = true
    else if (rng.chance(0.3)) e.behind = true
    return e
  })
}

export function oidListOf (rng: Rng): bigint[] {
  return Array.from({ length: rng.int(0, 8) }, () => rng.bytes(8).readBigUInt64LE(0))
}

export function tokenRecordOf (rng: Rng): TokenRecord {
  return { holder: nodeId(rng), generation: uintOf(rng), deleted: rng.chance(0.5) }
}

export function usageOf (rng: Rng): Usage { return { capacity: uintOf(rng), free: uintOf(rng) } }

export function verifyAnswerOf (rng: Rng): VerifyAnswer { return { behind: rng.chance(0.5), digest: rng.int(0, 0xffffffff) } }

export function agreementOf (rng: Rng): AgreementMessage {
  const ballot = { round: rng.int(1, 1000), proposer: nodeId(rng) }
  const epoch = rng.int(1, 1000)
  const nonEmpty = (): View => { const v = viewOf(rng); return v.epoch === 0 ? { epoch: 1, members: [memberOf(rng)] } : v }
  switch (rng.int(0, 6)) {
    case 0: return { type: 'prepare', epoch, ballot }
    case 1: return { type: 'promise', epoch, ballot, accepted: rng.chance(0.5) ? null : { ballot, view: nonEmpty() } }
    case 2: return { type: 'accept', epoch, ballot, view: nonEmpty() }
    case 3: return { type: 'accepted', epoch, ballot, signature: signatureOf(rng) }
    case 4: return { type: 'nack', epoch, ballot, promised: { round: ballot.round + 1, proposer: nodeId(rng) } }
    case 5: return {
      type: 'decided',
      view: nonEmpty(),
      certificate: rng.chance(0.3) ? null : { ballot, votes: Array.from({ length: rng.int(0, 4) }, () => ({ voter: nodeId(rng), signature: signatureOf(rng) })) }
    }
    default: return { type: 'query', epoch: uintOf(rng) }
  }
}

/** Varints a count or length prefix may claim: 2^30, 2^32 - 1, 2^53 and past, 2^64 - 1. */
export const HUGE_PREFIXES: readonly Buffer[] = [
  Buffer.from([0xfe, 0x00, 0x00, 0x00, 0x40]),
  Buffer.from([0xfe, 0xff, 0xff, 0xff, 0xff]),
  Buffer.from([0xfd, 0xff, 0xff]),
  Buffer.from([0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00]),
  Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
  Buffer.from([0xfc])
]

/**
 * One broken variant of a valid encoding. Truncation at every length is done by the caller
 * (systematically); this picks one of the other mutations at random.
 */
export function mutate (rng: Rng, valid: Buffer): Buffer {
  const b = Buffer.from(valid)
  switch (rng.int(0, 7)) {
    case 0: { // flip 1 to 8 bits
      if (b.length === 0) return rng.bytes(1)
      for (let n = rng.int(1, 8); n > 0; n--) {
        const i = rng.int(0, b.length - 1)
        b[i] = (b[i] as number) ^ (1 << rng.int(0, 7))
      }
      return b
    }
    case 1: { // a byte set to a varint marker or an edge value
      if (b.length === 0) return Buffer.from([0xff])
      b[rng.int(0, b.length - 1)] = rng.pick([0x00, 0x01, 0xfc, 0xfd, 0xfe, 0xff, 0x80, 0x7f])
      return b
    }
    case 2: { // a huge prefix written over the bytes at some position (a count, a length, a field)
      const at = rng.int(0, b.length)
      const huge = rng.pick(HUGE_PREFIXES)
      return Buffer.concat([b.subarray(0, at), huge, b.subarray(Math.min(b.length, at + huge.length))])
    }
    case 3: { // a huge prefix inserted
      const at = rng.int(0, b.length)
      return Buffer.concat([b.subarray(0, at), rng.pick(HUGE_PREFIXES), b.subarray(at)])
    }
    case 4: // extended with random bytes
      return Buffer.concat([b, rng.bytes(rng.int(1, 32))])
    case 5: { // a random range cut out
      if (b.length < 2) return rng.bytes(rng.int(0, 8))
      const from = rng.int(0, b.length - 1)
      return Buffer.concat([b.subarray(0, from), b.subarray(rng.int(from + 1, b.length))])
    }
    case 6: { // a random range overwritten with random bytes
      const from = rng.int(0, b.length)
      const n = rng.int(1, 16)
      return Buffer.concat([b.subarray(0, from), rng.bytes(n), b.subarray(Math.min(b.length, from + n))])
    }
    default: // random bytes of a random length
      return rng.bytes(rng.pick([0, 1, 2, 5, 16, 77, 200, rng.int(0, 600)]))
  }
}

function uintBytes (n: number): Buffer {
  const state = c.state()
  c.uint.preencode(state, n)
  state.buffer = Buffer.alloc(state.end)
  c.uint.encode(state, n)
  return state.buffer as Buffer
}

/** A protomux message opening the sheep/1 channel (local id `channel`) with this handshake payload. */
export function openFrame (payload: Uint8Array, channel = 1, protocol = PROTOCOL): Buffer {
  const state = c.state()
  c.string.preencode(state, protocol)
  state.buffer = Buffer.alloc(state.end)
  c.string.encode(state, protocol)
  return Buffer.concat([Buffer.from([0, 1]), uintBytes(channel), state.buffer, Buffer.from([0]), payload])
}

/** A protomux message of type `type` (0 request, 1 response) on the channel the peer opened as `channel`. */
export function messageFrame (type: number, payload: Uint8Array, channel = 1): Buffer {
  return Buffer.concat([uintBytes(channel), uintBytes(type), payload])
}

/**
 * A stream a Link can run on without a network: what the Link writes is kept (or dropped), what a
 * test pushes comes out as 'data' as a secret-stream delivers each message. destroy(err) emits
 * 'error' and 'close' as streamx does.
 */
export class FakeSecureStream extends EventEmitter {
  remotePublicKey: Buffer | null
  handshakeHash: Buffer | null
  isInitiator: boolean
  destroyed = false
  destroyError: Error | null = null
  written = 0
  userData: unknown = null

  constructor (remotePublicKey: Buffer, handshakeHash: Buffer, isInitiator: boolean) {
    super()
    this.remotePublicKey = remotePublicKey
    this.handshakeHash = handshakeHash
    this.isInitiator = isInitiator
  }

  push (frame: Buffer): void {
    if (!this.destroyed) this.emit('data', frame)
  }

  write (data: Uint8Array): boolean { this.written += data.length; return true }
  end (): void { this.destroy() }
  pause (): this { return this }
  resume (): this { return this }

  destroy (err?: Error): void {
    if (this.destroyed) return
    this.destroyed = true
    this.destroyError = err ?? null
    if (err !== undefined) this.emit('error', err)
    this.emit('close')
  }
}

/** A frame of the direct path, sealed with the connection's keys when it is written. */
export interface Sealed { type: FrameType, head: Uint8Array, data?: Uint8Array, flags?: number }

/** A hello frame with this payload (the hello's encoding, or anything else) as its data. */
export function helloFrame (payload: Uint8Array): Sealed { return { type: FrameType.Hello, head: Buffer.alloc(0), data: payload } }
/** A request frame: its head (requestHead's encoding, or anything else) and data. */
export function requestFrame (head: Uint8Array, data: Uint8Array = Buffer.alloc(0)): Sealed { return { type: FrameType.Request, head, data } }
export function responseFrame (head: Uint8Array, data: Uint8Array = Buffer.alloc(0)): Sealed { return { type: FrameType.Response, head, data } }

/** A hostile peer's end of a direct connection, after the Noise handshake. */
export interface HostileConnection {
  handshakeHash: Buffer
  /** Raw bytes as they are, or a frame sealed as a member would seal it (then `tamper` may change its bytes). */
  write: (what: Buffer | Sealed, tamper?: (sealed: Buffer) => void) => void
  /** Keep-alive frames every ms, as a member idle on the connection sends them. */
  keepAlive: (ms: number) => void
  destroy: () => void
}

/**
 * A TCP connection to a node's object port that completes the Noise handshake with keyPair (any
 * key is accepted at that stage), then runs act on it; resolves when the connection is closed (by
 * either side) or after ms. Loopback only.
 */
export async function hostileConnection (port: number, keyPair: { publicKey: Buffer, secretKey: Buffer }, act: (conn: HostileConnection) => void, ms = 5000): Promise<{ connected: boolean, closedByPeer: boolean }> {
  const socket = net.connect({ host: '127.0.0.1', port })
  socket.on('error', () => {})
  let connected = false
  let closedByPeer = false
  let ticker: NodeJS.Timeout | null = null
  const closed = new Promise<void>(resolve => socket.once('close', () => resolve()))
  const timer = setTimeout(() => socket.destroy(), ms)
  socket.on('end', () => { closedByPeer = true })
  try {
    await new Promise((resolve, reject) => { socket.once('connect', resolve); socket.once('close', reject) })
    const session = await noiseHandshake(socket, true, keyPair, ms)
    connected = true
    const sealer = new FrameSealer(frameKeys(session.tx, session.rx).send)
    const conn: HostileConnection = {
      handshakeHash: session.hash,
      write (what, tamper) {
        if (socket.destroyed) return
        if (Buffer.isBuffer(what)) { socket.write(what); return }
        const sealed = Buffer.concat(sealer.seal(what.type, what.head, what.data, what.flags))
        tamper?.(sealed)
        socket.write(sealed)
      },
      keepAlive (every) {
        ticker = setInterval(() => conn.write({ type: FrameType.KeepAlive, head: Buffer.alloc(0) }), every)
      },
      destroy: () => { socket.destroy() }
    }
    socket.on('data', () => {})
    socket.resume()
    try { act(conn) } catch { socket.destroy() }
  } catch {
    socket.destroy()
  }
  await closed
  clearTimeout(timer)
  if (ticker !== null) clearInterval(ticker)
  return { connected, closedByPeer }
}
