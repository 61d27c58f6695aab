// Every message of the peer protocol, as compact-encoding codecs, in one place. The protocol runs
// on one protomux channel per connection, the same over the Hyperswarm and the TCP path; see
// docs/PROTOCOL.md ("Peer protocol") for the meaning of each field.

import c from 'compact-encoding'
import type { AgreementMessage, Ballot } from './view-agreement'
import type { Member, View } from './view'

export const PROTOCOL = 'sheep/1'

/** The largest data a request or response carries; larger objects move in pieces. */
export const MAX_DATA = 8 * 2 ** 20
/** The most members a view may list (a bound for decoding, far above any real cluster). */
export const MAX_MEMBERS = 1024
const MAX_STRING = 1024

type Codec<T> = c.Encoding<T>

function bounded (max: number): Codec<string> {
  return {
    preencode (state, s) { c.string.preencode(state, s) },
    encode (state, s) { c.string.encode(state, s) },
    decode (state) {
      const s = c.string.decode(state)
      if (s.length > max) throw new RangeError(`string of ${s.length} characters, more than ${max}`)
      return s
    }
  }
}

const shortString = bounded(MAX_STRING)

const data: Codec<Uint8Array> = {
  preencode (state, b) { c.buffer.preencode(state, b) },
  encode (state, b) { c.buffer.encode(state, b) },
  decode (state) {
    const b = c.buffer.decode(state) ?? new Uint8Array(0)
    if (b.length > MAX_DATA) throw new RangeError(`data of ${b.length} bytes, more than ${MAX_DATA}`)
    return b
  }
}

function struct<T extends object> (fields: { [K in keyof T]: Codec<T[K]> }): Codec<T> {
  const entries = Object.entries(fields) as Array<[keyof T, Codec<unknown>]>
  return {
    preencode (state, v) { for (const [k, f] of entries) f.preencode(state, v[k]) },
    encode (state, v) { for (const [k, f] of entries) f.encode(state, v[k]) },
    decode (state) {
      const v: Partial<T> = {}
      for (const [k, f] of entries) v[k] = f.decode(state) as T[keyof T]
      return v as T
    }
  }
}

function boundedArray<T> (item: Codec<T>, max: number): Codec<T[]> {
  const plain = c.array(item)
  return {
    preencode: plain.preencode,
    encode: plain.encode,
    decode (state) {
      // The count comes first; refuse before decoding items a hostile peer made up.
      const start = state.start
      const n = c.uint.decode(state)
      if (n > max) throw new RangeError(`list of ${n} items, more than ${max}`)
      state.start = start
      return plain.decode(state)
    }
  }
}

const nodeId: Codec<string> = {
  preencode (state, s) { c.string.preencode(state, s) },
  encode (state, s) { c.string.encode(state, s) },
  decode (state) {
    const s = c.string.decode(state)
    if (!/^[0-9a-f]{64}$/.test(s)) throw new RangeError('a node id is 64 hex digits')
    return s
  }
}

export const member: Codec<Member> = struct<Member>({
  id: nodeId,
  host: shortString,
  port: c.uint,
  zone: shortString,
  weight: c.float64
})

export const view: Codec<View> = struct<View>({
  epoch: c.uint,
  members: boundedArray(member, MAX_MEMBERS)
})

/** Sent by each side when the channel opens; a wrong proof closes the connection at once. */
export interface Hello {
  /** Keyed hash proving the sender holds the cluster secret (./proof.ts). */
  proof: Uint8Array
  /** The sender as a member: its id must be the connection's remote public key. */
  self: Member
  /** The sender's newest committed view (epoch 0: it has none yet, it is joining). */
  view: View
}

export const hello: Codec<Hello> = struct<Hello>({
  proof: c.fixed32,
  self: member,
  view
})

/** What a request asks a replica to do; the numbers are on the wire, never reuse one. */
export enum Op {
  Create = 1,
  Read = 2,
  Write = 3,
  Truncate = 4,
  Remove = 5,
  Stat = 6,
  List = 7,
  Sync = 8,
  Usage = 9,
  /** Replace the whole object if its version is still `version` (0: it must not exist). */
  Replace = 10,
  // 11 is reserved (never sent).
  /** A view agreement message (./view-agreement.ts) in `data`. */
  Agree = 12,
  /** Something in the cluster changed (`oid` names the object); no answer expected but an ack. */
  Notify = 13,
  /**
   * To the object's primary replica: replace it only if its version is `version` (0: it must not
   * exist); the primary writes every replica before it answers with the new version. EAGAIN if
   * the version moved.
   */
  CompareReplace = 14,
  /** The whole object in one answer (up to MAX_DATA), as of one moment: no torn read across a replace. */
  ReadAll = 15,
  /**
   * To the holder of the write token of image `oidVid(oid)` (oid: its token object): write out
   * what you kept of the image and let the token go. `version` 1: for a change of the image,
   * refused (EBUSY) while the holder has it open for writing.
   */
  Release = 16
}

export interface Request {
  /** Chosen by the sender, echoed in the response. */
  id: number
  /** The sender's epoch: a replica in another epoch refuses with ESTALE. */
  epoch: number
  op: Op
  oid: bigint
  offset: number
  length: number
  version: number
  data: Uint8Array
}

export const request: Codec<Request> = struct<Request>({
  id: c.uint,
  epoch: c.uint,
  op: c.uint,
  oid: c.biguint64,
  offset: c.uint,
  length: c.uint,
  version: c.uint,
  data
})

export interface Response {
  id: number
  /** '' on success, else a SheepError code. */
  error: string
  message: string
  /** The replica's epoch. */
  epoch: number
  version: number
  size: number
  data: Uint8Array
}

export const response: Codec<Response> = struct<Response>({
  id: c.uint,
  error: shortString,
  message: bounded(4 * MAX_STRING),
  epoch: c.uint,
  version: c.uint,
  size: c.uint,
  data
})

export interface ObjectEntry { oid: bigint, version: number, size: number }

/** The answer to List: every object a replica holds. */
export const objectList: Codec<ObjectEntry[]> = boundedArray(struct<ObjectEntry>({
  oid: c.biguint64,
  version: c.uint,
  size: c.uint
}), MAX_DATA / 10)

export const oidList: Codec<bigint[]> = boundedArray(c.biguint64, MAX_DATA / 8)

/**
 * An image's token object (ObjectType.Token): who holds its write token, how many takes so far,
 * and whether the image is being deleted (its token is then never given again).
 */
export interface TokenRecord { holder: string, generation: number, deleted: boolean }
export const tokenRecord: Codec<TokenRecord> = struct<TokenRecord>({ holder: nodeId, generation: c.uint, deleted: c.bool })

export interface Usage { capacity: number, free: number }
export const usage: Codec<Usage> = struct<Usage>({ capacity: c.uint, free: c.uint })

const ballot: Codec<Ballot> = struct<Ballot>({ round: c.uint, proposer: nodeId })

function nullable<T> (codec: Codec<T>): Codec<T | null> {
  return {
    preencode (state, v) { c.bool.preencode(state, v !== null); if (v !== null) codec.preencode(state, v) },
    encode (state, v) { c.bool.encode(state, v !== null); if (v !== null) codec.encode(state, v) },
    decode (state) { return c.bool.decode(state) ? codec.decode(state) : null }
  }
}

const accepted = nullable(struct<{ ballot: Ballot, view: View }>({ ballot, view }))

const AGREEMENT_TYPES = ['prepare', 'promise', 'accept', 'accepted', 'nack', 'decided', 'query'] as const

/** A view agreement message (./view-agreement.ts), carried in the data of an Agree request or response. */
export const agreement: Codec<AgreementMessage> = {
  preencode (state, m) { c.uint.preencode(state, 0); fieldsOf(m, (codec, v) => codec.preencode(state, v)) },
  encode (state, m) { c.uint.encode(state, AGREEMENT_TYPES.indexOf(m.type)); fieldsOf(m, (codec, v) => codec.encode(state, v)) },
  decode (state) {
    const type = AGREEMENT_TYPES[c.uint.decode(state)]
    switch (type) {
      case 'prepare': return { type, epoch: c.uint.decode(state), ballot: ballot.decode(state) }
      case 'promise': return { type, epoch: c.uint.decode(state), ballot: ballot.decode(state), accepted: accepted.decode(state) }
      case 'accept': return { type, epoch: c.uint.decode(state), ballot: ballot.decode(state), view: view.decode(state) }
      case 'accepted': return { type, epoch: c.uint.decode(state), ballot: ballot.decode(state) }
      case 'nack': return { type, epoch: c.uint.decode(state), ballot: ballot.decode(state), promised: ballot.decode(state) }
      case 'decided': return { type, view: view.decode(state) }
      case 'query': return { type }
      default: throw new RangeError('unknown agreement message type')
    }
  }
}

/** Visits the fields of m after its type, in wire order. */
function fieldsOf (m: AgreementMessage, visit: <T>(codec: Codec<T>, value: T) => void): void {
  switch (m.type) {
    case 'prepare': visit(c.uint, m.epoch); visit(ballot, m.ballot); break
    case 'promise': visit(c.uint, m.epoch); visit(ballot, m.ballot); visit(accepted, m.accepted); break
    case 'accept': visit(c.uint, m.epoch); visit(ballot, m.ballot); visit(view, m.view); break
    case 'accepted': visit(c.uint, m.epoch); visit(ballot, m.ballot); break
    case 'nack': visit(c.uint, m.epoch); visit(ballot, m.ballot); visit(ballot, m.promised); break
    case 'decided': visit(view, m.view); break
    case 'query': break
  }
}

export function encode<T> (codec: Codec<T>, value: T): Buffer {
  return c.encode(codec, value)
}

/** Decodes a whole buffer; trailing bytes or a short buffer are errors. */
export function decode<T> (codec: Codec<T>, bytes: Uint8Array): T {
  const state = c.state(0, bytes.length, bytes)
  const value = codec.decode(state)
  if (state.start !== state.end) throw new RangeError(`${state.end - state.start} bytes left over`)
  return value
}
