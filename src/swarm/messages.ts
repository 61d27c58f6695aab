// Every message of the peer protocol, as compact-encoding codecs, in one place. The protocol runs
// on one protomux channel per connection, the same over the Hyperswarm and the TCP path; see
// docs/PROTOCOL.md ("Peer protocol") for the meaning of each field.

import c from 'compact-encoding'
import { isErrorCode, SheepError } from '../errors'
import type { AgreementMessage, Ballot, Certificate, Vote } from './view-agreement'
import { type DownMember, MAX_REMOVED, MAX_VOTES, type Member, memberProblem, type View } from './view'

export const PROTOCOL = 'sheep/1'

/** The largest data a request or response carries; larger objects move in pieces. */
export const MAX_DATA = 8 * 2 ** 20
/** The most members a view may list (a bound for decoding, far above any real cluster). */
export const MAX_MEMBERS = 1024
/** The longest string field, in UTF-8 bytes (an error message may be 4 times this). */
export const MAX_STRING = 1024
/** The most entries one List answer carries; the asker pages on (about 2.6 MB at most). */
export const LIST_PAGE = 100_000

type Codec<T> = c.Encoding<T>

// Every decoder here throws SheepError EPROTO on bad input, never a RangeError or TypeError:
// protomux hands errors from a decoder to safety-catch, which rethrows RangeError and TypeError
// as uncaught exceptions (the daemon dies) and only closes the stream for other errors. The
// codecs given to protomux are wrapped by wire() as well, in case compact-encoding throws one.

function bad (message: string): SheepError { return SheepError.protocol(message) }

/** Any error thrown while decoding, as the one type the protocol uses, naming what was decoded. */
export function asProtocolError (err: unknown, what: string): SheepError {
  if (err instanceof SheepError) {
    // Named in place rather than wrapped: a hostile peer makes many of these.
    if (err.code === 'EPROTO' && !err.message.startsWith('malformed ')) err.message = `malformed ${what}: ${err.message}`
    return err
  }
  return bad(`malformed ${what}: ${err instanceof Error ? err.message : String(err)}`)
}

/** Reads a length or count prefix; a truncated or absurd one is refused before anything is allocated. */
function prefix (state: c.State, what: string): number {
  const n = c.uint.decode(state)
  if (!Number.isSafeInteger(n)) throw bad(`${what}: length prefix ${n} out of range`)
  return n
}

/** A uint that must be a safe integer (compact-encoding's uint64 form goes past 2^53). */
const safeUint: Codec<number> = {
  preencode (state, n) { c.uint.preencode(state, n) },
  encode (state, n) { c.uint.encode(state, n) },
  decode (state) {
    const n = c.uint.decode(state)
    if (!Number.isSafeInteger(n)) throw bad(`integer ${n} out of range`)
    return n
  }
}

function bounded (max: number): Codec<string> {
  return {
    preencode (state, s) { c.string.preencode(state, s) },
    encode (state, s) { c.string.encode(state, s) },
    decode (state) {
      // The byte length is checked before the bytes are read into a string.
      const start = state.start
      const n = prefix(state, 'string')
      if (n > max) throw bad(`string of ${n} bytes, more than ${max}`)
      if (n > state.end - state.start) throw bad(`string of ${n} bytes, only ${state.end - state.start} left`)
      state.start = start
      return c.string.decode(state)
    }
  }
}

const shortString = bounded(MAX_STRING)

const data: Codec<Uint8Array> = {
  preencode (state, b) { c.buffer.preencode(state, b) },
  encode (state, b) { c.buffer.encode(state, b) },
  decode (state) {
    const start = state.start
    const n = prefix(state, 'data')
    if (n > MAX_DATA) throw bad(`data of ${n} bytes, more than ${MAX_DATA}`)
    if (n > state.end - state.start) throw bad(`data of ${n} bytes, only ${state.end - state.start} left`)
    state.start = start
    return c.buffer.decode(state) ?? new Uint8Array(0)
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

/** A decoded value must also pass check (which throws SheepError) before anyone sees it. */
function checked<T> (codec: Codec<T>, check: (v: T) => void): Codec<T> {
  return {
    preencode: codec.preencode,
    encode: codec.encode,
    decode (state) {
      const v = codec.decode(state)
      check(v)
      return v
    }
  }
}

/**
 * A list of at most max items, each at least minBytes long encoded: a count prefix is checked
 * against both before anything is allocated, so a count of 2^30 costs nothing.
 */
function boundedArray<T> (item: Codec<T>, max: number, minBytes: number): Codec<T[]> {
  const plain = c.array(item)
  return {
    preencode: plain.preencode,
    encode: plain.encode,
    decode (state) {
      const n = prefix(state, 'list')
      if (n > max) throw bad(`list of ${n} items, more than ${max}`)
      if (n * minBytes > state.end - state.start) throw bad(`list of ${n} items in ${state.end - state.start} bytes`)
      const out: T[] = []
      for (let i = 0; i < n; i++) out.push(item.decode(state))
      return out
    }
  }
}

/** A bool is one byte, 0 or 1: anything else is malformed (one value, one encoding). */
const strictBool: Codec<boolean> = {
  preencode (state, b) { c.bool.preencode(state, b) },
  encode (state, b) { c.bool.encode(state, b) },
  decode (state) {
    const b = c.uint8.decode(state)
    if (b > 1) throw bad(`bool byte ${b}`)
    return b === 1
  }
}

const NODE_ID = /^[0-9a-f]{64}$/

const nodeId: Codec<string> = checked(bounded(64), s => {
  if (!NODE_ID.test(s)) throw bad('a node id is 64 hex digits')
})

const port: Codec<number> = checked(safeUint, n => {
  if (n > 65535) throw bad(`port ${n} is not in [0, 65535]`)
})

/** A weight on the wire is a float64 (its first format); it must still be a whole number >= 1. */
const weight: Codec<number> = c.float64

/** A member record; an address, zone or weight out of range is refused here, not when used. */
export const member: Codec<Member> = checked(struct<Member>({
  id: nodeId,
  host: shortString,
  port,
  zone: shortString,
  weight
}), m => {
  const problem = memberProblem(m)
  if (problem !== null) throw bad(`member ${m.id.slice(0, 8)}: ${problem}`)
})

/** The fewest bytes any member record takes (empty strings, a 1-byte port, the 8-byte weight). */
const MIN_MEMBER_BYTES = 1 + 1 + 1 + 1 + 8

/**
 * Epoch 0 (no view yet) has no members and nothing else; any other lists members sorted by id,
 * without duplicates, removed ids sorted, none of them a member, and down members sorted, each
 * of them a member.
 */
export function viewProblem (v: View): string | null {
  if (v.epoch === 0) return v.members.length === 0 && v.removed === undefined && v.manual === undefined && v.down === undefined ? null : 'a view of epoch 0 lists members or settings'
  if (v.members.length === 0) return `view ${v.epoch} has no members`
  for (let i = 1; i < v.members.length; i++) {
    if (!((v.members[i - 1]?.id ?? '') < (v.members[i]?.id ?? ''))) return `view ${v.epoch}: members not sorted by id, or listed twice`
  }
  const removed = v.removed ?? []
  for (let i = 1; i < removed.length; i++) {
    if (!((removed[i - 1] ?? '') < (removed[i] ?? ''))) return `view ${v.epoch}: removed ids not sorted, or listed twice`
  }
  if (removed.some(id => v.members.some(m => m.id === id))) return `view ${v.epoch} lists a removed id as a member`
  const down = v.down ?? []
  for (let i = 1; i < down.length; i++) {
    if (!((down[i - 1]?.id ?? '') < (down[i]?.id ?? ''))) return `view ${v.epoch}: down members not sorted, or listed twice`
  }
  if (down.some(d => !v.members.some(m => m.id === d.id))) return `view ${v.epoch} lists as down a node that is not a member`
  if (down.length === v.members.length) return `view ${v.epoch} has every member down`
  return null
}

const members = boundedArray(member, MAX_MEMBERS, MIN_MEMBER_BYTES)
const removedIds = boundedArray(nodeId, MAX_REMOVED, 65)
const downMembers = boundedArray(struct<DownMember>({ id: nodeId, since: safeUint }), MAX_MEMBERS, 66)
/** View flags: bit 0, manual admission. */
const MANUAL = 1

/** Epoch, members, flags, removed ids, down members; the optional fields are absent when empty (one value, one encoding). */
export const view: Codec<View> = checked<View>({
  preencode (state, v) {
    safeUint.preencode(state, v.epoch)
    members.preencode(state, v.members)
    c.uint.preencode(state, v.manual === true ? MANUAL : 0)
    removedIds.preencode(state, v.removed ?? [])
    downMembers.preencode(state, v.down ?? [])
  },
  encode (state, v) {
    safeUint.encode(state, v.epoch)
    members.encode(state, v.members)
    c.uint.encode(state, v.manual === true ? MANUAL : 0)
    removedIds.encode(state, v.removed ?? [])
    downMembers.encode(state, v.down ?? [])
  },
  decode (state) {
    const v: View = { epoch: safeUint.decode(state), members: members.decode(state) }
    const flags = c.uint.decode(state)
    if ((flags & ~MANUAL) !== 0) throw bad(`unknown view flags ${flags}`)
    const removed = removedIds.decode(state)
    if (removed.length > 0) v.removed = removed
    if (flags === MANUAL) v.manual = true
    const down = downMembers.decode(state)
    if (down.length > 0) v.down = down
    return v
  }
}, v => {
  const problem = viewProblem(v)
  if (problem !== null) throw bad(problem)
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
  Release = 16,
  /** From a member: a new cluster secret in `data` (secretUpdate); no epoch check. */
  Secret = 17,
  /** Make `oid` `length` bytes of zeros (create it, or empty a copy a dead writer left), then write `data` at `offset`. */
  WriteFresh = 18,
  /** From a member (`sheep cluster force-start`): serve your copies that were behind as they are; answer their ids in `data` (oidList). */
  ForceStart = 19,
  /**
   * From a member (`sheep check`): read your copy of `oid` whole, checking its checksums; answer
   * its `version` and `size`, and in `data` a verifyAnswer. EIO if it is damaged, ENOENT if none.
   */
  Verify = 20,
  /**
   * From a member (`sheep check --repair`): replace your copy of `oid` with a whole copy from the
   * member whose id is `data` (a string), which must be at least as new as yours; answered once done.
   */
  Heal = 21
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

const requestFields = {
  id: safeUint,
  epoch: safeUint,
  op: safeUint,
  oid: c.biguint64,
  offset: safeUint,
  length: safeUint,
  version: safeUint
}

export const request: Codec<Request> = struct<Request>({ ...requestFields, data })
/** A request without its data, which a frame of the direct path carries beside it (./frames.ts). */
export const requestHead: Codec<Omit<Request, 'data'>> = struct<Omit<Request, 'data'>>(requestFields)

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

/** The longest error message a response carries; a longer one is cut before sending (./link.ts). */
export const MAX_MESSAGE = 4 * MAX_STRING

const responseFields = {
  id: safeUint,
  error: shortString,
  message: bounded(MAX_MESSAGE),
  epoch: safeUint,
  version: safeUint,
  size: safeUint
}

function knownError (r: { error: string }): void {
  if (r.error !== '' && !isErrorCode(r.error)) throw bad(`unknown error code ${JSON.stringify(r.error.slice(0, 32))}`)
}

export const response: Codec<Response> = checked(struct<Response>({ ...responseFields, data }), knownError)
/** A response without its data (see requestHead). */
export const responseHead: Codec<Omit<Response, 'data'>> = checked(struct<Omit<Response, 'data'>>(responseFields), knownError)

export interface ObjectEntry { oid: bigint, version: number, size: number, uncertain?: boolean, removed?: boolean, behind?: boolean }

/**
 * An entry's flags, one value each: 1 a crash left the copy uncertain (ObjectInfo.uncertain), 2 a
 * tombstone (ObjectInfo.removed), 4 a copy known to be behind a newer one (ObjectInfo.missed:
 * never a source, but no copy at or below its version is current either); no other value.
 */
const UNCERTAIN = 1
const REMOVED = 2
const BEHIND = 4

const objectEntry: Codec<ObjectEntry> = {
  preencode (state, e) { c.biguint64.preencode(state, e.oid); safeUint.preencode(state, e.version); safeUint.preencode(state, e.size); c.uint.preencode(state, entryFlags(e)) },
  encode (state, e) { c.biguint64.encode(state, e.oid); safeUint.encode(state, e.version); safeUint.encode(state, e.size); c.uint.encode(state, entryFlags(e)) },
  decode (state) {
    const e: ObjectEntry = { oid: c.biguint64.decode(state), version: safeUint.decode(state), size: safeUint.decode(state) }
    const flags = c.uint.decode(state)
    if (flags !== 0 && flags !== UNCERTAIN && flags !== REMOVED && flags !== BEHIND) throw bad(`object entry flags ${flags}: unknown bits`)
    if (flags === UNCERTAIN) e.uncertain = true
    if (flags === REMOVED) e.removed = true
    if (flags === BEHIND) e.behind = true
    return e
  }
}

function entryFlags (e: ObjectEntry): number {
  return e.removed === true ? REMOVED : e.behind === true ? BEHIND : e.uncertain === true ? UNCERTAIN : 0
}

/** The answer to List: every object a replica holds, and its tombstones. */
export const objectList: Codec<ObjectEntry[]> = boundedArray(objectEntry, LIST_PAGE, 11)

/** The most oids one Sync request names; a longer list is sent in several requests. */
export const SYNC_BATCH = 100_000
export const oidList: Codec<bigint[]> = boundedArray(c.biguint64, SYNC_BATCH, 8)

/**
 * An image's token object (ObjectType.Token): who holds its write token, how many takes so far,
 * and whether the image is being deleted (its token is then never given again).
 */
export interface TokenRecord { holder: string, generation: number, deleted: boolean }
export const tokenRecord: Codec<TokenRecord> = struct<TokenRecord>({ holder: nodeId, generation: safeUint, deleted: strictBool })

/** A copy as Verify found it: behind (marked missed, not served until replaced), and a digest of its bytes. */
export interface VerifyAnswer { behind: boolean, digest: number }
export const verifyAnswer: Codec<VerifyAnswer> = struct<VerifyAnswer>({ behind: strictBool, digest: c.uint32 })
/** A member's id; whether it names another replica of the object is the healing replica's to check. */
export const healSource: Codec<string> = bounded(64)

export interface Usage { capacity: number, free: number }
export const usage: Codec<Usage> = struct<Usage>({ capacity: safeUint, free: safeUint })

const ballot: Codec<Ballot> = struct<Ballot>({ round: safeUint, proposer: nodeId })

function nullable<T> (codec: Codec<T>): Codec<T | null> {
  return {
    preencode (state, v) { c.bool.preencode(state, v !== null); if (v !== null) codec.preencode(state, v) },
    encode (state, v) { c.bool.encode(state, v !== null); if (v !== null) codec.encode(state, v) },
    decode (state) { return strictBool.decode(state) ? codec.decode(state) : null }
  }
}

const accepted = nullable(struct<{ ballot: Ballot, view: View }>({ ballot, view }))

/** An ed25519 signature, 64 bytes on the wire, 128 hex digits in memory (agreement messages are plain data). */
const signature: Codec<string> = {
  preencode (state) { c.fixed64.preencode(state, Buffer.alloc(64)) },
  encode (state, hex) {
    const b = Buffer.from(hex, 'hex')
    if (b.length !== 64) throw bad('a signature is 64 bytes')
    c.fixed64.encode(state, b)
  },
  decode (state) { return Buffer.from(c.fixed64.decode(state)).toString('hex') }
}

const certificate = nullable(struct<Certificate>({
  ballot,
  votes: boundedArray(struct<Vote>({ voter: nodeId, signature }), MAX_VOTES, 65 + 64)
}))

const AGREEMENT_TYPES = ['prepare', 'promise', 'accept', 'accepted', 'nack', 'decided', 'query'] as const

/** A view agreement message (./view-agreement.ts), carried in the data of an Agree request or response. */
export const agreement: Codec<AgreementMessage> = {
  preencode (state, m) { c.uint.preencode(state, 0); fieldsOf(m, (codec, v) => codec.preencode(state, v)) },
  encode (state, m) { c.uint.encode(state, AGREEMENT_TYPES.indexOf(m.type)); fieldsOf(m, (codec, v) => codec.encode(state, v)) },
  decode (state) {
    const n = c.uint.decode(state)
    const type = n < AGREEMENT_TYPES.length ? AGREEMENT_TYPES[n] : undefined
    const epoch = safeUint
    switch (type) {
      case 'prepare': return { type, epoch: epoch.decode(state), ballot: ballot.decode(state) }
      case 'promise': return { type, epoch: epoch.decode(state), ballot: ballot.decode(state), accepted: accepted.decode(state) }
      case 'accept': return { type, epoch: epoch.decode(state), ballot: ballot.decode(state), view: view.decode(state) }
      case 'accepted': return { type, epoch: epoch.decode(state), ballot: ballot.decode(state), signature: signature.decode(state) }
      case 'nack': return { type, epoch: epoch.decode(state), ballot: ballot.decode(state), promised: ballot.decode(state) }
      case 'decided': return { type, view: view.decode(state), certificate: certificate.decode(state) }
      case 'query': return { type, epoch: epoch.decode(state) }
      default: throw bad(`unknown agreement message type ${n}`)
    }
  }
}

/** Visits the fields of m after its type, in wire order. */
function fieldsOf (m: AgreementMessage, visit: <T>(codec: Codec<T>, value: T) => void): void {
  switch (m.type) {
    case 'prepare': visit(c.uint, m.epoch); visit(ballot, m.ballot); break
    case 'promise': visit(c.uint, m.epoch); visit(ballot, m.ballot); visit(accepted, m.accepted); break
    case 'accept': visit(c.uint, m.epoch); visit(ballot, m.ballot); visit(view, m.view); break
    case 'accepted': visit(c.uint, m.epoch); visit(ballot, m.ballot); visit(signature, m.signature); break
    case 'nack': visit(c.uint, m.epoch); visit(ballot, m.ballot); visit(ballot, m.promised); break
    case 'decided': visit(view, m.view); visit(certificate, m.certificate); break
    case 'query': visit(c.uint, m.epoch); break
  }
}

export function encode<T> (codec: Codec<T>, value: T): Buffer {
  return c.encode(codec, value)
}

/**
 * Decodes a whole buffer; trailing bytes, a short buffer or any bad field is a SheepError EPROTO
 * (nothing else is thrown).
 */
export function decode<T> (codec: Codec<T>, bytes: Uint8Array, what = 'message'): T {
  try {
    const state = c.state(0, bytes.length, bytes)
    const value = codec.decode(state)
    if (state.start !== state.end) throw bad(`${state.end - state.start} bytes left over`)
    return value
  } catch (err) {
    throw asProtocolError(err, what)
  }
}

/**
 * A codec as protomux may call it on network input: its decode throws only SheepError, whatever
 * goes wrong inside (see the note at the top).
 */
export function wire<T> (codec: Codec<T>, what: string): Codec<T> {
  return {
    preencode: codec.preencode,
    encode: codec.encode,
    decode (state) {
      try {
        return codec.decode(state)
      } catch (err) {
        throw asProtocolError(err, what)
      }
    }
  }
}

/**
 * What a member signs when it accepts a view (./votes.ts): the view under one ballot, prefixed so
 * that the signature means nothing else.
 */
export interface VoteBody { ballot: Ballot, view: View }
export const voteBody: Codec<VoteBody> = struct<VoteBody>({ ballot, view })

/**
 * A rotation step (`sheep cluster rotate-secret`), sent by the member that runs it to every
 * other: first `commit` false (keep the secret as next: accept proofs made with it, announce
 * on its topic), then true (prove with it from now on; the old one becomes previous).
 */
export interface SecretUpdate { secret: Uint8Array, commit: boolean }
export const secretUpdate: Codec<SecretUpdate> = struct<SecretUpdate>({ secret: c.fixed32, commit: strictBool })
