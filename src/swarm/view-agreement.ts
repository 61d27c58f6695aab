// Agreement on views: which members the cluster has at each epoch. The protocol and its failure
// cases are written down in docs/VIEWS.md; this is its implementation.
//
// How this works:
// - View 1 is written by the founding node alone (found()). View e+1 is chosen by one
//   single-decree Paxos instance whose acceptors are the members of view e.
// - A ViewKeeper is all three Paxos roles of one node: acceptor and learner in handle(), proposer
//   in propose(). Its state (acceptor state per open instance, the history of committed views, the
//   highest round it ever used) is saved through AgreementStorage before any answer leaves it.
// - Nothing here knows the network or real time: requests go through AgreementTransport, time
//   through Clock, and the retry backoff draws from `random`, so tests run it on a simulator.

import { Mutex } from '../cow/lock'
import { SheepError } from '../errors'
import { type Member, memberProblem, type View, sortMembers } from './view'

/** How long a proposer waits for one answer before counting the member as silent. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 1000
/** How long propose() keeps trying before it gives up with EBUSY. */
export const DEFAULT_PROPOSE_TIMEOUT_MS = 30_000
/** Backoff after a failed round: full jitter up to min(max, base * 2^attempt). */
export const DEFAULT_BACKOFF_BASE_MS = 50
export const DEFAULT_BACKOFF_MAX_MS = 2000

/** Ordered by round, then by proposer id. */
export interface Ballot { round: number, proposer: string }

export interface AcceptedValue { ballot: Ballot, view: View }

/** Plain objects of numbers, strings, ballots, views and null, so a codec can encode them as they are. */
export type AgreementMessage =
  | { type: 'prepare', epoch: number, ballot: Ballot }
  | { type: 'promise', epoch: number, ballot: Ballot, accepted: AcceptedValue | null }
  | { type: 'accept', epoch: number, ballot: Ballot, view: View }
  | { type: 'accepted', epoch: number, ballot: Ballot }
  | { type: 'nack', epoch: number, ballot: Ballot, promised: Ballot }
  /** A committed view: the commit broadcast, and the answer of a node that knows the outcome. */
  | { type: 'decided', view: View }
  /** Asks a node for its latest view; answered with 'decided' (or nothing if it has none). */
  | { type: 'query' }

/** The acceptor side of the instance that decides view `epoch`. */
export interface InstanceState { epoch: number, promised: Ballot | null, accepted: AcceptedValue | null }

export const STATE_FORMAT = 1

export interface PersistedState {
  format: typeof STATE_FORMAT
  /** The highest round this node ever used as a proposer; never reused, even after a crash. */
  lastRound: number
  /** Every committed view this node learned, by increasing epoch (gaps where it missed some). */
  history: View[]
  /** Open instances, all above the latest view's epoch, by increasing epoch. */
  instances: InstanceState[]
}

export interface AgreementStorage {
  load (): Promise<PersistedState | null>
  /** Must be durable when it resolves: answers are sent only after it does. */
  save (state: PersistedState): Promise<void>
}

export interface AgreementTransport {
  /** Sends msg to node `to`; resolves with its answer, or null if none came within timeoutMs. */
  request (to: string, msg: AgreementMessage, timeoutMs: number): Promise<AgreementMessage | null>
  /** Best effort, no answer expected (the commit broadcast). */
  send (to: string, msg: AgreementMessage): void
}

export interface Clock {
  /** Milliseconds, monotonic. */
  now (): number
  /** Resolves after ms, or at once when signal aborts. */
  sleep (ms: number, signal: AbortSignal): Promise<void>
}

export const systemClock: Clock = {
  now: () => performance.now(),
  sleep: (ms, signal) => new Promise(resolve => {
    const done = (): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done)
    if (signal.aborted) done()
  })
}

export interface ViewKeeperOptions {
  /** This node's id (Member.id). */
  self: string
  storage: AgreementStorage
  transport: AgreementTransport
  clock?: Clock
  /** Uniform in [0, 1); only spreads retries. */
  random?: () => number
  requestTimeoutMs?: number
  proposeTimeoutMs?: number
  backoffBaseMs?: number
  backoffMaxMs?: number
}

export type ViewListener = (view: View, previous: View | null) => void

/** The size of a majority of n members. */
export function majority (n: number): number {
  return Math.floor(n / 2) + 1
}

/** Whether the reachable ids (include this node itself if it is a member) are a majority of view. */
export function hasMajority (view: View, reachableIds: Iterable<string>): boolean {
  const reachable = new Set(reachableIds)
  return view.members.filter(m => reachable.has(m.id)).length >= majority(view.members.length)
}

export function compareBallots (a: Ballot, b: Ballot): number {
  if (a.round !== b.round) return a.round - b.round
  return a.proposer < b.proposer ? -1 : a.proposer > b.proposer ? 1 : 0
}

export class ViewKeeper {
  readonly self: string
  private readonly storage: AgreementStorage
  private readonly transport: AgreementTransport
  private readonly clock: Clock
  private readonly random: () => number
  private readonly requestTimeoutMs: number
  private readonly proposeTimeoutMs: number
  private readonly backoffBaseMs: number
  private readonly backoffMaxMs: number
  /** Null until open(). Replaced whole (never mutated) and only after storage saved the new one. */
  private state: PersistedState | null = null
  /** Serialises read-modify-save of the state, so no answer is based on an unsaved change. */
  private readonly lock = new Mutex()
  private readonly listeners = new Set<ViewListener>()
  private readonly stop = new AbortController()
  private readonly stopped: Promise<null>
  private proposal: Promise<View> | null = null

  constructor (opts: ViewKeeperOptions) {
    this.self = opts.self
    this.storage = opts.storage
    this.transport = opts.transport
    this.clock = opts.clock ?? systemClock
    this.random = opts.random ?? Math.random
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS
    this.proposeTimeoutMs = opts.proposeTimeoutMs ?? DEFAULT_PROPOSE_TIMEOUT_MS
    this.backoffBaseMs = opts.backoffBaseMs ?? DEFAULT_BACKOFF_BASE_MS
    this.backoffMaxMs = opts.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS
    this.stopped = new Promise(resolve => this.stop.signal.addEventListener('abort', () => resolve(null)))
  }

  async open (): Promise<void> {
    if (this.state) throw SheepError.invalid('the view keeper is already open')
    const saved = await this.storage.load()
    this.state = saved === null
      ? { format: STATE_FORMAT, lastRound: 0, history: [], instances: [] }
      : parseState(saved)
  }

  /** The latest committed view this node knows, or null before it founded or joined a cluster. */
  get view (): View | null {
    return this.state?.history.at(-1) ?? null
  }

  /** A copy: the committed views this node learned, by increasing epoch. */
  get history (): View[] {
    return [...this.state?.history ?? []]
  }

  /** Called after each newer view is durable; returns the function that unsubscribes. */
  onChange (listener: ViewListener): () => void {
    this.listeners.add(listener)
    return () => { this.listeners.delete(listener) }
  }

  /** Writes view 1 with this node as its only member. */
  async found (member: Member): Promise<View> {
    this.mustBeOpen()
    if (member.id !== this.self) throw SheepError.invalid(`the founding member must be this node (${this.self}), not ${member.id}`)
    const view = parseView({ epoch: 1, members: [member] }, 'view')
    await this.lock.run(async () => {
      if (this.mustBeOpen().history.length > 0) throw SheepError.exists(`view ${this.view?.epoch ?? 0}`)
      await this.save({ ...this.mustBeOpen(), history: [view] })
    })
    this.emit(view, null)
    return view
  }

  /**
   * The acceptor and learner side: answers one request from node `from`. A malformed message is
   * refused with EINVAL and changes nothing. Null means "no answer" (also after close()).
   */
  async handle (from: string, msg: unknown): Promise<AgreementMessage | null> {
    this.mustBeOpen()
    if (this.stop.signal.aborted) return null
    const m = parseFrom(from, msg)
    switch (m.type) {
      case 'prepare': return await this.lock.run(() => this.onPrepare(m.epoch, m.ballot))
      case 'accept': return await this.lock.run(() => this.onAccept(m.epoch, m.ballot, m.view))
      case 'decided':
        await this.learn(m.view)
        return null
      case 'query': {
        const view = this.view
        return view ? { type: 'decided', view } : null
      }
      default: throw SheepError.invalid(`agreement message from ${from}: a '${m.type}' is an answer, not a request`)
    }
  }

  /**
   * Runs Paxos for epoch current+1 with this candidate until that epoch is decided, and resolves
   * with the view that is then current: the decided one, which may be another proposer's
   * candidate, or a later one if this node learned of it meanwhile. Rejects with EBUSY when no
   * decision came within proposeTimeoutMs (for example in a minority partition) or when another
   * proposal of this node is running, ESHUTDOWN when closed.
   */
  async propose (candidate: { members: Member[] }): Promise<View> {
    this.mustBeOpen()
    const base = this.view
    if (!base) throw SheepError.invalid('this node has no view yet: found a cluster or join one first')
    if (this.proposal) throw SheepError.busy('a view change is already being proposed on this node')
    const view = parseView({ epoch: base.epoch + 1, members: sortMembers(candidate.members) }, 'candidate')
    this.proposal = this.runProposal(base, view)
    try {
      return await this.proposal
    } finally {
      this.proposal = null
    }
  }

  /** Asks these peers for their latest view and adopts the newest; resolves with the current view. */
  async refresh (peers: readonly string[]): Promise<View | null> {
    const answers = await Promise.all(peers.filter(p => p !== this.self).map(p => this.ask(p, { type: 'query' })))
    for (const a of answers) if (a?.type === 'decided') await this.learn(a.view)
    return this.view
  }

  /** Stops a running proposal (it rejects with ESHUTDOWN) and waits for pending saves. */
  async close (): Promise<void> {
    this.stop.abort()
    await this.proposal?.catch(() => {})
    await this.lock.run(async () => {})
  }

  private mustBeOpen (): PersistedState {
    if (!this.state) throw SheepError.invalid('the view keeper is not open')
    return this.state
  }

  private async save (next: PersistedState): Promise<void> {
    await this.storage.save(next)
    this.state = next
  }

  private emit (view: View, previous: View | null): void {
    for (const listener of [...this.listeners]) listener(view, previous)
  }

  // ---- acceptor (called under the lock) ----

  /** The answer for an instance this node already knows to be decided, else null. */
  private decidedAnswer (epoch: number): AgreementMessage | null {
    const view = this.view
    return view && epoch <= view.epoch ? { type: 'decided', view } : null
  }

  private instance (epoch: number): InstanceState {
    return this.mustBeOpen().instances.find(i => i.epoch === epoch) ?? { epoch, promised: null, accepted: null }
  }

  private async putInstance (inst: InstanceState): Promise<void> {
    const state = this.mustBeOpen()
    const instances = [...state.instances.filter(i => i.epoch !== inst.epoch), inst].sort((a, b) => a.epoch - b.epoch)
    await this.save({ ...state, instances })
  }

  private async onPrepare (epoch: number, ballot: Ballot): Promise<AgreementMessage> {
    const decided = this.decidedAnswer(epoch)
    if (decided) return decided
    const inst = this.instance(epoch)
    if (inst.promised) {
      const order = compareBallots(ballot, inst.promised)
      if (order < 0) return { type: 'nack', epoch, ballot, promised: inst.promised }
      // The same ballot again is a duplicate: the promise is already saved.
      if (order === 0) return { type: 'promise', epoch, ballot, accepted: inst.accepted }
    }
    await this.putInstance({ ...inst, promised: ballot })
    return { type: 'promise', epoch, ballot, accepted: inst.accepted }
  }

  private async onAccept (epoch: number, ballot: Ballot, view: View): Promise<AgreementMessage> {
    const decided = this.decidedAnswer(epoch)
    if (decided) return decided
    const inst = this.instance(epoch)
    if (inst.promised && compareBallots(ballot, inst.promised) < 0) return { type: 'nack', epoch, ballot, promised: inst.promised }
    // A ballot carries one value only (its proposer never reuses a round), so the same ballot
    // already accepted is a duplicate.
    if (!inst.accepted || compareBallots(inst.accepted.ballot, ballot) !== 0) {
      await this.putInstance({ epoch, promised: ballot, accepted: { ballot, view } })
    }
    return { type: 'accepted', epoch, ballot }
  }

  // ---- learner ----

  /** Adopts a committed view if it is newer than the latest one; drops the instances it settles. */
  private async learn (view: View): Promise<void> {
    const previous = await this.lock.run(async () => {
      const state = this.mustBeOpen()
      const latest = this.view
      if (this.stop.signal.aborted || (latest && view.epoch <= latest.epoch)) return undefined
      // Instances up to view.epoch are decided; from now on they are answered with 'decided', so
      // their acceptor state is never needed again.
      await this.save({
        ...state,
        history: [...state.history, view],
        instances: state.instances.filter(i => i.epoch > view.epoch)
      })
      return latest
    })
    if (previous !== undefined) this.emit(view, previous)
  }

  // ---- proposer ----

  private async runProposal (base: View, candidate: View): Promise<View> {
    const epoch = candidate.epoch
    const acceptors = base.members.map(m => m.id)
    const need = majority(acceptors.length)
    const deadline = this.clock.now() + this.proposeTimeoutMs
    let seenRound = 0
    let why = `no round finished for epoch ${epoch}`
    for (let attempt = 0; ; attempt++) {
      if (this.stop.signal.aborted) throw SheepError.closing()
      const current = this.view
      if (current && current.epoch >= epoch) return current
      if (this.clock.now() >= deadline) {
        throw SheepError.busy(`no view was decided for epoch ${epoch} within ${this.proposeTimeoutMs} ms: ${why}`)
      }

      const ballot: Ballot = { round: await this.nextRound(seenRound), proposer: this.self }
      const phase1 = await this.gather(epoch, acceptors, need, { type: 'prepare', epoch, ballot },
        a => a.type === 'promise' && a.epoch === epoch && compareBallots(a.ballot, ballot) === 0)
      let outcome = phase1
      if (!phase1.decided && phase1.yes.length >= need) {
        const view = highestAccepted(phase1.yes) ?? candidate
        outcome = await this.gather(epoch, acceptors, need, { type: 'accept', epoch, ballot, view },
          a => a.type === 'accepted' && a.epoch === epoch && compareBallots(a.ballot, ballot) === 0)
        if (!outcome.decided && outcome.yes.length >= need) {
          for (const id of new Set([...base.members, ...view.members].map(m => m.id))) {
            if (id !== this.self) this.transport.send(id, { type: 'decided', view })
          }
          await this.learn(view)
          continue
        }
      }
      if (outcome.decided) {
        await this.learn(outcome.decided)
        continue
      }
      if (outcome.outranked) {
        seenRound = Math.max(seenRound, outcome.outranked.round)
        why = `outranked by ballot (${outcome.outranked.round}, ${outcome.outranked.proposer})`
      } else {
        why = `only ${outcome.yes.length} of the ${need} answers needed came from the ${acceptors.length} members of view ${base.epoch}`
      }
      const window = Math.min(this.backoffMaxMs, this.backoffBaseMs * 2 ** attempt)
      await this.clock.sleep(Math.min(this.random() * window, Math.max(0, deadline - this.clock.now())), this.stop.signal)
    }
  }

  /** A round above every round this node used before (saved first) and above `seen`. */
  private async nextRound (seen: number): Promise<number> {
    return await this.lock.run(async () => {
      const state = this.mustBeOpen()
      const round = Math.max(state.lastRound, seen) + 1
      await this.save({ ...state, lastRound: round })
      return round
    })
  }

  /**
   * Sends msg to every acceptor and collects answers until `need` of them are yes, a majority has
   * become impossible, or one answers with a view that settles `epoch`. Late answers are ignored:
   * they belong to a round that is over.
   */
  private async gather (epoch: number, acceptors: string[], need: number, msg: AgreementMessage,
    isYes: (a: AgreementMessage) => boolean): Promise<Tally> {
    return await new Promise(resolve => {
      const tally: Tally = { yes: [], decided: null, outranked: null }
      let pending = acceptors.length
      let done = false
      for (const to of acceptors) {
        void this.ask(to, msg).then(a => {
          if (done) return
          pending--
          if (a?.type === 'decided' && a.view.epoch >= epoch) tally.decided = a.view
          else if (a && isYes(a)) tally.yes.push(a)
          else if (a?.type === 'nack' && (!tally.outranked || compareBallots(a.promised, tally.outranked) > 0)) tally.outranked = a.promised
          if (tally.decided || tally.yes.length >= need || tally.yes.length + pending < need) {
            done = true
            resolve(tally)
          }
        })
      }
    })
  }

  /** One request; never rejects: silence, a failure, a malformed answer and close() are all null. */
  private async ask (to: string, msg: AgreementMessage): Promise<AgreementMessage | null> {
    const answer = to === this.self
      ? this.handle(to, msg)
      : this.transport.request(to, msg, this.requestTimeoutMs)
    try {
      const a = await Promise.race([answer, this.stopped])
      return a === null ? null : parseMessage(a)
    } catch {
      return null
    }
  }
}

interface Tally { yes: AgreementMessage[], decided: View | null, outranked: Ballot | null }

/** The value of the promise with the highest accepted ballot, if any promise carries one. */
function highestAccepted (promises: AgreementMessage[]): View | null {
  let best: AcceptedValue | null = null
  for (const p of promises) {
    if (p.type === 'promise' && p.accepted && (!best || compareBallots(p.accepted.ballot, best.ballot) > 0)) best = p.accepted
  }
  return best?.view ?? null
}

// ---- checking untrusted input (peer messages, the saved state) ----
// Each parser builds a fresh frozen object from the fields it checked, so nothing unchecked or
// shared with the caller ends up in the state.

type Fields = Record<string, unknown>

/** For error messages: never throws, whatever x is. */
function describe (x: unknown): string {
  return typeof x === 'number' || typeof x === 'boolean' ? String(x) : typeof x === 'string' ? JSON.stringify(x) : typeof x
}

/** parseMessage for handle(): whatever goes wrong, the caller gets EINVAL naming the sender. */
function parseFrom (from: string, x: unknown): AgreementMessage {
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

/** A view: epoch >= 1, at least one member, members sorted by id without duplicates. */
export function parseView (x: unknown, what = 'view'): View {
  const f = fields(x, what)
  const epoch = int(f.epoch, 1, Number.MAX_SAFE_INTEGER, `${what}.epoch`)
  if (!Array.isArray(f.members) || f.members.length === 0) throw SheepError.invalid(`${what}.members must be a non-empty array`)
  const members = f.members.map((m, i) => parseMember(m, `${what}.members[${i}]`))
  for (let i = 1; i < members.length; i++) {
    if (!((members[i - 1]?.id ?? '') < (members[i]?.id ?? ''))) throw SheepError.invalid(`${what}.members must be sorted by id without duplicates`)
  }
  return Object.freeze({ epoch, members: Object.freeze(members) as Member[] })
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
    case 'accepted': return { type: 'accepted', epoch: epoch(), ballot: ballot() }
    case 'nack': return { type: 'nack', epoch: epoch(), ballot: ballot(), promised: parseBallot(f.promised, 'promised') }
    case 'decided': return { type: 'decided', view: parseView(f.view, 'view') }
    case 'query': return { type: 'query' }
    default: throw SheepError.invalid(`unknown message type ${describe(f.type)}`)
  }
}

/** Checks a loaded state; anything wrong is EIO (the store is damaged, not the caller wrong). */
function parseState (x: unknown): PersistedState {
  try {
    const f = fields(x, 'the state')
    if (f.format !== STATE_FORMAT) throw SheepError.invalid(`unknown format ${describe(f.format)}`)
    if (!Array.isArray(f.history) || !Array.isArray(f.instances)) throw SheepError.invalid('history and instances must be arrays')
    const history = f.history.map((v, i) => parseView(v, `history[${i}]`))
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
    return { format: STATE_FORMAT, lastRound: int(f.lastRound, 0, Number.MAX_SAFE_INTEGER, 'lastRound'), history, instances }
  } catch (err) {
    throw SheepError.corrupt(`the saved view agreement state is corrupt: ${err instanceof Error ? err.message : describe(err)}`)
  }
}
