// Agreement on views: which members the cluster has at each epoch. The protocol and its failure
// cases are written down in docs/VIEWS.md; this is its implementation.
//
// How this works:
// - View 1 is written by the founding node alone (found()). View e+1 is chosen by one
//   single-decree Paxos instance whose acceptors are the members of view e.
// - A ViewKeeper is all three Paxos roles of one node: acceptor and learner in handle(), proposer
//   in propose(). Its state (acceptor state per open instance, the history of committed views, the
//   highest round it ever used) is saved through AgreementStorage before any answer leaves it.
// - Votes are signed: an acceptor's 'accepted' carries its signature on (ballot, view), and a
//   'decided' carries the certificate, the votes of a majority of the previous view's members
//   for one ballot. A learner adopts a view only with a valid certificate checked against the
//   view before it (which it must know: a node that missed views fetches them one by one), so a
//   member that lies cannot make the others adopt a view nobody decided.
// - Nothing here knows the network, real time or keys: requests go through AgreementTransport,
//   time through Clock, signatures through VoteSigner, and the retry backoff draws from
//   `random`, so tests run it on a simulator.

import { Mutex } from '../cow/lock'
import { SheepError } from '../errors'
import { type DownMember, type Member, type View, sortMembers } from './view'
import { parseFrom, parseMessage, parseState, parseView, STATE_FORMAT } from './view-agreement-input'

/** How long a proposer waits for one answer before counting the member as silent. */
export const DEFAULT_REQUEST_TIMEOUT_MS = 1000
/** How long propose() keeps trying before it gives up with EBUSY. */
export const DEFAULT_PROPOSE_TIMEOUT_MS = 30_000
/** Backoff after a failed round: full jitter up to min(max, base * 2^attempt). */
export const DEFAULT_BACKOFF_BASE_MS = 50
export const DEFAULT_BACKOFF_MAX_MS = 2000

/** How many refused sender/epoch pairs are remembered, so as to log each once; then it starts over. */
const MAX_REFUSALS_KEPT = 1024

/** Ordered by round, then by proposer id. */
export interface Ballot { round: number, proposer: string }

export interface AcceptedValue { ballot: Ballot, view: View }

/** A member's vote: its signature (128 hex digits) on (ballot, view), made when it accepted that view. */
export interface Vote { voter: string, signature: string }

/** Why a view is committed: the votes of a majority of the previous view's members, all for one ballot. */
export interface Certificate { ballot: Ballot, votes: Vote[] }

/** Signs this node's votes and checks other nodes' (ed25519 with the node keys: ./votes.ts). */
export interface VoteSigner {
  sign (ballot: Ballot, view: View): string
  /** Whether signature is voter's vote for (ballot, view); never throws. */
  verify (voter: string, ballot: Ballot, view: View, signature: string): boolean
}

/** Plain objects of numbers, strings, ballots, views and null, so a codec can encode them as they are. */
export type AgreementMessage =
  | { type: 'prepare', epoch: number, ballot: Ballot }
  | { type: 'promise', epoch: number, ballot: Ballot, accepted: AcceptedValue | null }
  | { type: 'accept', epoch: number, ballot: Ballot, view: View }
  /** The acceptor's vote for the view it accepted under ballot. */
  | { type: 'accepted', epoch: number, ballot: Ballot, signature: string }
  | { type: 'nack', epoch: number, ballot: Ballot, promised: Ballot }
  /**
   * A committed view with its certificate (null only for view 1, which is founded, not agreed, and
   * views saved before votes were signed): the commit broadcast, and the answer of a node that
   * knows the outcome.
   */
  | { type: 'decided', view: View, certificate: Certificate | null }
  /** Asks a node for its view of `epoch` (0: its latest); answered with 'decided' (or nothing if it has none). */
  | { type: 'query', epoch: number }

/** The acceptor side of the instance that decides view `epoch`. */
export interface InstanceState { epoch: number, promised: Ballot | null, accepted: AcceptedValue | null }

export interface PersistedState {
  format: typeof STATE_FORMAT
  /** The highest round this node ever used as a proposer; never reused, even after a crash. */
  lastRound: number
  /** Every committed view this node learned, by increasing epoch (gaps where it missed some). */
  history: View[]
  /** The certificate of each view of history, in the same order (null: founded, or saved before format 2). */
  certificates: Array<Certificate | null>
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
  votes: VoteSigner
  /** Where refused views are reported (the log). */
  log?: (line: string) => void
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
  private readonly votes: VoteSigner
  private readonly log: (line: string) => void
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
  /** Sender/epoch pairs whose refusal was logged (see refused()). */
  private readonly refusals = new Set<string>()

  constructor (opts: ViewKeeperOptions) {
    this.self = opts.self
    this.storage = opts.storage
    this.transport = opts.transport
    this.votes = opts.votes
    this.log = opts.log ?? (() => {})
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
      ? { format: STATE_FORMAT, lastRound: 0, history: [], certificates: [], instances: [] }
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

  /** Writes view 1 with this node as its only member; `manual`: joiners wait for an admission. */
  async found (member: Member, manual = false): Promise<View> {
    this.mustBeOpen()
    if (member.id !== this.self) throw SheepError.invalid(`the founding member must be this node (${this.self}), not ${member.id}`)
    const view = parseView({ epoch: 1, members: [member], ...(manual ? { manual } : {}) }, 'view')
    await this.lock.run(async () => {
      if (this.mustBeOpen().history.length > 0) throw SheepError.exists(`view ${this.view?.epoch ?? 0}`)
      await this.save({ ...this.mustBeOpen(), history: [view], certificates: [null] })
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
        await this.learnFrom(from, m.view, m.certificate)
        return null
      case 'query': return this.decidedOf(m.epoch)
      default: throw SheepError.invalid(`agreement message from ${from}: a '${m.type}' is an answer, not a request`)
    }
  }

  /**
   * Runs Paxos for epoch current+1 with this candidate (its removed list defaults to the current
   * view's; the admission mode is always carried on) until that epoch is decided, and resolves
   * with the view that is then current: the decided one, which may be another proposer's
   * candidate, or a later one if this node learned of it meanwhile. Rejects with EBUSY when no
   * decision came within proposeTimeoutMs (for example in a minority partition) or when another
   * proposal of this node is running, ESHUTDOWN when closed.
   */
  async propose (candidate: { members: Member[], removed?: string[], down?: DownMember[] }): Promise<View> {
    this.mustBeOpen()
    const base = this.view
    if (!base) throw SheepError.invalid('this node has no view yet: found a cluster or join one first')
    if (this.proposal) throw SheepError.busy('a view change is already being proposed on this node')
    const removed = [...new Set(candidate.removed ?? base.removed ?? [])].sort()
    // Down members that are still members, unless the candidate says which are down.
    const down = (candidate.down ?? base.down ?? []).filter(d => candidate.members.some(m => m.id === d.id)).sort((a, b) => a.id < b.id ? -1 : 1)
    const view = parseView({
      epoch: base.epoch + 1,
      members: sortMembers(candidate.members),
      ...(removed.length > 0 ? { removed } : {}),
      ...(base.manual === true ? { manual: true } : {}),
      ...(down.length > 0 ? { down } : {})
    }, 'candidate')
    this.proposal = this.runProposal(base, view)
    try {
      return await this.proposal
    } finally {
      this.proposal = null
    }
  }

  /**
   * Asks these peers for their latest view and adopts the newest that checks out (fetching the
   * views this node missed from the peer that told it); resolves with the current view.
   */
  async refresh (peers: readonly string[]): Promise<View | null> {
    const others = peers.filter(p => p !== this.self)
    const answers = await Promise.all(others.map(async p => ({ from: p, answer: await this.ask(p, { type: 'query', epoch: 0 }) })))
    for (const { from, answer } of answers) {
      if (answer?.type === 'decided') await this.learnFrom(from, answer.view, answer.certificate)
    }
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
    return view && epoch <= view.epoch ? this.decidedOf(0) : null
  }

  /** 'decided' with this node's view of epoch (0: its latest) and its certificate, or null if it has none. */
  decidedOf (epoch: number): AgreementMessage | null {
    const state = this.mustBeOpen()
    const i = epoch === 0 ? state.history.length - 1 : state.history.findIndex(v => v.epoch === epoch)
    const view = state.history[i]
    return view === undefined ? null : { type: 'decided', view, certificate: state.certificates[i] ?? null }
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
    // already accepted is a duplicate. The vote is for the value saved: a proposer that sent
    // another value under the same ballot (a lying member) gets no signature for it.
    if (!inst.accepted || compareBallots(inst.accepted.ballot, ballot) !== 0) {
      await this.putInstance({ epoch, promised: ballot, accepted: { ballot, view } })
    } else if (JSON.stringify(inst.accepted.view) !== JSON.stringify(view)) {
      throw SheepError.invalid(`ballot (${ballot.round}, ${ballot.proposer}) of epoch ${epoch} already carried another view`)
    }
    return { type: 'accepted', epoch, ballot, signature: this.votes.sign(ballot, view) }
  }

  // ---- learner ----

  /**
   * Why view, said to be committed with this certificate, must not be adopted: a string (refused
   * for good), 'gap' (this node does not know the view before it, so cannot check it yet), or
   * null (it checks out, or it is not newer than what this node has).
   */
  private verdict (view: View, certificate: Certificate | null): string | 'gap' | null {
    const history = this.mustBeOpen().history
    const latest = history.at(-1)
    // A node that has no view yet takes the first one a peer that proved the secret gives it:
    // there is nothing it could check it against (docs/VIEWS.md, "Signed votes").
    if (latest === undefined || view.epoch <= latest.epoch) return null
    const previous = history.find(v => v.epoch === view.epoch - 1)
    if (previous === undefined) return 'gap'
    return certificateProblem(previous, view, certificate, this.votes)
  }

  /**
   * Adopts a view a peer says is committed, if its certificate checks out (logs and drops it
   * otherwise); when this node missed the views before it, fetches them from that peer first,
   * one epoch at a time, each checked against the one before.
   */
  private async learnFrom (from: string, view: View, certificate: Certificate | null): Promise<void> {
    for (;;) {
      const verdict = this.verdict(view, certificate)
      if (verdict === null) return await this.learn(view, certificate)
      if (verdict !== 'gap') {
        this.refused(from, view.epoch, verdict)
        return
      }
      const next = (this.view?.epoch ?? 0) + 1
      const answer = await this.ask(from, { type: 'query', epoch: next })
      if (answer?.type !== 'decided' || answer.view.epoch !== next) return
      const step = this.verdict(answer.view, answer.certificate)
      if (step !== null) {
        this.refused(from, next, step === 'gap' ? 'it does not follow this node\'s views' : step)
        return
      }
      await this.learn(answer.view, answer.certificate)
      if (this.stop.signal.aborted) return
    }
  }

  /**
   * Logs a refused view once per sender and epoch: a member whose hello claims a later view is
   * asked for it at every membership check, and a liar would fill the log twice a second.
   */
  private refused (from: string, epoch: number, why: string): void {
    const key = `${from}/${epoch}`
    if (this.refusals.has(key)) return
    if (this.refusals.size >= MAX_REFUSALS_KEPT) this.refusals.clear()
    this.refusals.add(key)
    this.log(`refused view ${epoch} from ${from}: ${why}`)
  }

  /**
   * Adopts a committed view whose certificate was checked, if it is newer than the latest one;
   * drops the instances it settles.
   */
  private async learn (view: View, certificate: Certificate | null): Promise<void> {
    const previous = await this.lock.run(async () => {
      const state = this.mustBeOpen()
      const latest = this.view
      if (this.stop.signal.aborted || (latest && view.epoch <= latest.epoch)) return undefined
      // Instances up to view.epoch are decided; from now on they are answered with 'decided', so
      // their acceptor state is never needed again.
      await this.save({
        ...state,
        history: [...state.history, view],
        certificates: [...state.certificates, certificate],
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
        (_from, a) => a.type === 'promise' && a.epoch === epoch && compareBallots(a.ballot, ballot) === 0)
      let outcome = phase1
      if (!phase1.decided && phase1.yes.length >= need) {
        const view = highestAccepted(phase1.yes.map(y => y.answer)) ?? candidate
        outcome = await this.gather(epoch, acceptors, need, { type: 'accept', epoch, ballot, view },
          (from, a) => a.type === 'accepted' && a.epoch === epoch && compareBallots(a.ballot, ballot) === 0 &&
            this.votes.verify(from, ballot, view, a.signature))
        if (!outcome.decided && outcome.yes.length >= need) {
          const votes = outcome.yes.map(({ from, answer }) => ({ voter: from, signature: answer.type === 'accepted' ? answer.signature : '' }))
          const certificate: Certificate = { ballot, votes }
          for (const id of new Set([...base.members, ...view.members].map(m => m.id))) {
            if (id !== this.self) this.transport.send(id, { type: 'decided', view, certificate })
          }
          await this.learn(view, certificate)
          continue
        }
      }
      if (outcome.decided) {
        await this.learnFrom(outcome.decided.from, outcome.decided.view, outcome.decided.certificate)
        if ((this.view?.epoch ?? 0) < epoch) why = `${outcome.decided.from} answered with view ${outcome.decided.view.epoch}, which this node could not take`
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
    isYes: (from: string, a: AgreementMessage) => boolean): Promise<Tally> {
    return await new Promise(resolve => {
      const tally: Tally = { yes: [], decided: null, outranked: null }
      let pending = acceptors.length
      let done = false
      for (const to of acceptors) {
        void this.ask(to, msg).then(a => {
          if (done) return
          pending--
          // A 'decided' that fails its check counts as silence, so that a lying member cannot
          // end every round with one; one this node cannot check yet ('gap') ends the round,
          // and learnFrom fetches the views missed.
          if (a?.type === 'decided' && a.view.epoch >= epoch) {
            const verdict = this.verdict(a.view, a.certificate)
            if (verdict === null || verdict === 'gap') tally.decided = { from: to, view: a.view, certificate: a.certificate }
            else this.refused(to, a.view.epoch, verdict)
          } else if (a && isYes(to, a)) tally.yes.push({ from: to, answer: a })
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

interface Tally {
  yes: Array<{ from: string, answer: AgreementMessage }>
  decided: { from: string, view: View, certificate: Certificate | null } | null
  outranked: Ballot | null
}

/**
 * Why certificate does not prove that view (epoch e) was committed after previous (epoch e - 1),
 * or null if it does: it needs valid votes, all for its ballot, of a majority of previous's
 * members; a vote of a non-member or of a removed id does not count, nor a second vote of one voter.
 */
export function certificateProblem (previous: View, view: View, certificate: Certificate | null, votes: VoteSigner): string | null {
  if (view.epoch !== previous.epoch + 1) return `view ${view.epoch} does not follow view ${previous.epoch}`
  if (certificate === null) return 'it carries no votes'
  const removed = new Set(previous.removed ?? [])
  const voters = new Set<string>()
  for (const v of certificate.votes) {
    if (voters.has(v.voter) || removed.has(v.voter) || !previous.members.some(m => m.id === v.voter)) continue
    if (votes.verify(v.voter, certificate.ballot, view, v.signature)) voters.add(v.voter)
  }
  const need = majority(previous.members.length)
  return voters.size >= need ? null : `${voters.size} valid votes of members of view ${previous.epoch}, ${need} needed`
}

/** The value of the promise with the highest accepted ballot, if any promise carries one. */
function highestAccepted (promises: AgreementMessage[]): View | null {
  let best: AcceptedValue | null = null
  for (const p of promises) {
    if (p.type === 'promise' && p.accepted && (!best || compareBallots(p.accepted.ballot, best.ballot) > 0)) best = p.accepted
  }
  return best?.view ?? null
}
