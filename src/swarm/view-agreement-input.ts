// Checking untrusted input of the view agreement (./view-agreement.ts): the messages peers send
// and the state saved on disk. Each parser builds a fresh frozen object from the fields it checked,
// so nothing unchecked or shared with the caller ends up in the keeper's state.

import { SheepError } from '../errors'
import { type DownMember, MAX_REMOVED, MAX_VOTES, type Member, memberProblem, type View } from './view'
import type { AcceptedValue, AgreementMessage, Ballot, Certificate, InstanceState, PersistedState, Vote } from './view-agreement'

/** Format 2 added the certificates; a format 1 state loads with none. */
export const STATE_FORMAT = 2

type Fields = Record<string, unknown>

/** For error messages: never throws, whatever x is. */
function describe (x: unknown): string {
  return typeof x === 'number' || typeof x === 'boolean' ? String(x) : typeof x === 'string' ? JSON.stringify(x) : typeof x
}

/** parseMessage for handle(): whatever goes wrong, the caller gets EINVAL naming the sender. */
export function parseFrom (from: string, x: unknown): AgreementMessage {
  try {
    return parseMessage(x)
  } catch (err) {
    throw SheepError.invalid(`malformed agreement message from ${from}: ${err instanceof Error ? err.message : describe(err)}`)
  }
}

function fields (x: unknown, what: string): Fields {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw SheepError.invalid(`${what} is not an object`)
  return x as Fields
}

function int (x: unknown, min: number, max: number, what: string): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min || x > max) {
    throw SheepError.invalid(`${what} must be an integer in [${min}, ${max}], not ${describe(x)}`)
  }
  return x
}

function str (x: unknown, what: string, nonEmpty: boolean): string {
  if (typeof x !== 'string' || (nonEmpty && x === '')) throw SheepError.invalid(`${what} must be a${nonEmpty ? ' non-empty' : ''} string`)
  return x
}

function parseBallot (x: unknown, what: string): Ballot {
  const f = fields(x, what)
  return Object.freeze({ round: int(f.round, 1, Number.MAX_SAFE_INTEGER, `${what}.round`), proposer: str(f.proposer, `${what}.proposer`, true) })
}

function parseMember (x: unknown, what: string): Member {
  const f = fields(x, what)
  const weight = f.weight
  if (typeof weight !== 'number') throw SheepError.invalid(`${what}.weight must be a number`)
  const m = {
    id: str(f.id, `${what}.id`, true),
    host: str(f.host, `${what}.host`, false),
    port: int(f.port, 0, 65535, `${what}.port`),
    zone: str(f.zone, `${what}.zone`, false),
    weight
  }
  // The same rules as the wire's (./view.ts): a weight of 0 would stop every I/O of the cluster.
  const problem = memberProblem(m)
  if (problem !== null) throw SheepError.invalid(`${what}: ${problem}`)
  return Object.freeze(m)
}

const ascendingIds = (ids: string[]): boolean => ids.every((id, i) => i === 0 || (ids[i - 1] ?? '') < id)

/**
 * A view: epoch >= 1, at least one member, members sorted by id without duplicates; removed ids
 * (absent when none) sorted, none of them a member; manual only as true.
 */
export function parseView (x: unknown, what = 'view'): View {
  const f = fields(x, what)
  const epoch = int(f.epoch, 1, Number.MAX_SAFE_INTEGER, `${what}.epoch`)
  if (!Array.isArray(f.members) || f.members.length === 0) throw SheepError.invalid(`${what}.members must be a non-empty array`)
  const members = f.members.map((m, i) => parseMember(m, `${what}.members[${i}]`))
  if (!ascendingIds(members.map(m => m.id))) throw SheepError.invalid(`${what}.members must be sorted by id without duplicates`)
  const view: View = { epoch, members: Object.freeze(members) as Member[] }
  if (f.removed !== undefined) {
    if (!Array.isArray(f.removed) || f.removed.length === 0 || f.removed.length > MAX_REMOVED) throw SheepError.invalid(`${what}.removed must be a non-empty array of at most ${MAX_REMOVED} ids, or absent`)
    const removed = f.removed.map((id, i) => str(id, `${what}.removed[${i}]`, true))
    if (!ascendingIds(removed)) throw SheepError.invalid(`${what}.removed must be sorted without duplicates`)
    if (removed.some(id => members.some(m => m.id === id))) throw SheepError.invalid(`${what} lists a removed id as a member`)
    view.removed = Object.freeze(removed) as string[]
  }
  if (f.manual !== undefined) {
    if (f.manual !== true) throw SheepError.invalid(`${what}.manual must be true or absent`)
    view.manual = true
  }
  if (f.down !== undefined) {
    if (!Array.isArray(f.down) || f.down.length === 0 || f.down.length >= members.length) throw SheepError.invalid(`${what}.down must be a non-empty array of fewer members than the view has, or absent`)
    const down = f.down.map((d, i) => {
      const g = fields(d, `${what}.down[${i}]`)
      return Object.freeze({ id: str(g.id, `${what}.down[${i}].id`, true), since: int(g.since, 0, Number.MAX_SAFE_INTEGER, `${what}.down[${i}].since`) })
    })
    if (!ascendingIds(down.map(d => d.id))) throw SheepError.invalid(`${what}.down must be sorted by id without duplicates`)
    if (down.some(d => !members.some(m => m.id === d.id))) throw SheepError.invalid(`${what} lists as down a node that is not a member`)
    view.down = Object.freeze(down) as DownMember[]
  }
  return Object.freeze(view)
}

const SIGNATURE = /^[0-9a-f]{128}$/

function parseSignature (x: unknown, what: string): string {
  if (typeof x !== 'string' || !SIGNATURE.test(x)) throw SheepError.invalid(`${what} must be 128 hex digits`)
  return x
}

function parseCertificate (x: unknown, what: string): Certificate | null {
  if (x === null) return null
  const f = fields(x, what)
  if (!Array.isArray(f.votes) || f.votes.length > MAX_VOTES) throw SheepError.invalid(`${what}.votes must be an array of at most ${MAX_VOTES}`)
  const votes = f.votes.map((v, i) => {
    const g = fields(v, `${what}.votes[${i}]`)
    return Object.freeze({ voter: str(g.voter, `${what}.votes[${i}].voter`, true), signature: parseSignature(g.signature, `${what}.votes[${i}].signature`) })
  })
  return Object.freeze({ ballot: parseBallot(f.ballot, `${what}.ballot`), votes: Object.freeze(votes) as Vote[] })
}

function parseAccepted (x: unknown, epoch: number, what: string): AcceptedValue | null {
  if (x === null) return null
  const f = fields(x, what)
  const view = parseView(f.view, `${what}.view`)
  if (view.epoch !== epoch) throw SheepError.invalid(`${what}.view is for epoch ${view.epoch}, not ${epoch}`)
  return Object.freeze({ ballot: parseBallot(f.ballot, `${what}.ballot`), view })
}

/** Checks every field of a peer message (EINVAL if anything is wrong) and returns a clean copy. */
export function parseMessage (x: unknown): AgreementMessage {
  const f = fields(x, 'the message')
  // Instance 1 does not exist (view 1 is founded, not agreed), so instances start at 2.
  const epoch = (): number => int(f.epoch, 2, Number.MAX_SAFE_INTEGER, 'epoch')
  const ballot = (): Ballot => parseBallot(f.ballot, 'ballot')
  switch (f.type) {
    case 'prepare': return { type: 'prepare', epoch: epoch(), ballot: ballot() }
    case 'promise': {
      const e = epoch()
      return { type: 'promise', epoch: e, ballot: ballot(), accepted: parseAccepted(f.accepted, e, 'accepted') }
    }
    case 'accept': {
      const e = epoch()
      const view = parseView(f.view, 'view')
      if (view.epoch !== e) throw SheepError.invalid(`view is for epoch ${view.epoch}, not ${e}`)
      return { type: 'accept', epoch: e, ballot: ballot(), view }
    }
    case 'accepted': return { type: 'accepted', epoch: epoch(), ballot: ballot(), signature: parseSignature(f.signature, 'signature') }
    case 'nack': return { type: 'nack', epoch: epoch(), ballot: ballot(), promised: parseBallot(f.promised, 'promised') }
    case 'decided': return { type: 'decided', view: parseView(f.view, 'view'), certificate: parseCertificate(f.certificate, 'certificate') }
    case 'query': return { type: 'query', epoch: int(f.epoch, 0, Number.MAX_SAFE_INTEGER, 'epoch') }
    default: throw SheepError.invalid(`unknown message type ${describe(f.type)}`)
  }
}

/** Checks a loaded state; anything wrong is EIO (the store is damaged, not the caller wrong). */
export function parseState (x: unknown): PersistedState {
  try {
    const f = fields(x, 'the state')
    if (f.format !== 1 && f.format !== STATE_FORMAT) throw SheepError.invalid(`unknown format ${describe(f.format)}`)
    if (!Array.isArray(f.history) || !Array.isArray(f.instances)) throw SheepError.invalid('history and instances must be arrays')
    const history = f.history.map((v, i) => parseView(v, `history[${i}]`))
    // Format 1 had no certificates: its views were checked by nothing but their sender.
    const saved = f.format === 1 ? history.map(() => null) : f.certificates
    if (!Array.isArray(saved) || saved.length !== history.length) throw SheepError.invalid('certificates must be an array as long as history')
    const certificates = saved.map((c, i) => parseCertificate(c, `certificates[${i}]`))
    const instances = f.instances.map((x, i): InstanceState => {
      const g = fields(x, `instances[${i}]`)
      const epoch = int(g.epoch, 2, Number.MAX_SAFE_INTEGER, `instances[${i}].epoch`)
      return Object.freeze({
        epoch,
        promised: g.promised === null ? null : parseBallot(g.promised, `instances[${i}].promised`),
        accepted: parseAccepted(g.accepted, epoch, `instances[${i}].accepted`)
      })
    })
    const ascending = (epochs: number[]): boolean => epochs.every((e, i) => i === 0 || (epochs[i - 1] ?? 0) < e)
    const latest = history.at(-1)?.epoch ?? 0
    if (!ascending(history.map(v => v.epoch)) || !ascending(instances.map(i => i.epoch)) || instances.some(i => i.epoch <= latest)) {
      throw SheepError.invalid('epochs out of order')
    }
    return { format: STATE_FORMAT, lastRound: int(f.lastRound, 0, Number.MAX_SAFE_INTEGER, 'lastRound'), history, certificates, instances }
  } catch (err) {
    throw SheepError.corrupt(`the saved view agreement state is corrupt: ${err instanceof Error ? err.message : describe(err)}`)
  }
}
