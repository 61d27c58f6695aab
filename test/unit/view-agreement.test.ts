// View agreement (src/swarm/view-agreement.ts, protocol in docs/VIEWS.md).
//
// Most tests run whole clusters of ViewKeepers on a simulated network in virtual time: a seeded
// random source decides loss, duplication, delay (and so reordering) and replays of old messages;
// a partition filter cuts links; nodes crash and restart with only what their storage saved.
// Beside the tests' own assertions, the cluster checks Paxos safety all along: at most one value
// is chosen (accepted by a majority of the previous view) per epoch, every learned view was
// chosen, and no two nodes learn different views for one epoch. Each seeded run reports its seed.

import t from 'tap'
import crypto from 'node:crypto'
import DHT from 'hyperdht'
import type { SheepError } from '../../src/errors'
import type { Member, View } from '../../src/swarm/view'
import {
  type AgreementMessage, type AgreementStorage, type AgreementTransport, type Ballot, type Certificate, type Clock,
  type PersistedState, type VoteSigner, ViewKeeper, certificateProblem, compareBallots, hasMajority, majority
} from '../../src/swarm/view-agreement'
import { parseMessage, STATE_FORMAT } from '../../src/swarm/view-agreement-input'
import { voteIsValid, voteSigner } from '../../src/swarm/votes'
import { settle, sheepError } from './tmp'
import { mulberry32 } from '../helpers/random'

// ---------------------------------------------------------------------------------------------
// Fixtures

function member (id: string, weight = 100): Member {
  return { id, host: '10.0.0.' + String(id.charCodeAt(0) - 64), port: 7000, zone: '', weight }
}

function view (epoch: number, ids: string[]): View {
  return { epoch, members: [...ids].sort().map(id => member(id)) }
}

/** The members of `members` with `id`'s weight set to w: a distinct candidate per proposer. */
function withWeight (members: Member[], id: string, w: number): Member[] {
  return members.map(m => m.id === id ? { ...m, weight: w } : m)
}

/** A deep copy of plain data. */
function clone<T> (x: T): T {
  return JSON.parse(JSON.stringify(x)) as T
}

function key (v: View): string {
  return JSON.stringify(v.members)
}

function stateWith (history: View[], instances: PersistedState['instances'] = []): PersistedState {
  return { format: STATE_FORMAT, lastRound: 0, history, certificates: history.map(() => null), instances }
}

// Votes: the simulated nodes are named A, B, C...; each has a real ed25519 key pair made from its
// name, and signs and checks votes with the production code (../../src/swarm/votes.ts).
const simKeys = new Map<string, DHT.KeyPair>()
function simKey (id: string): DHT.KeyPair {
  let k = simKeys.get(id)
  if (k === undefined) {
    k = DHT.keyPair(crypto.createHash('sha256').update(id).digest())
    simKeys.set(id, k)
  }
  return k
}

/** Node id's signer; it checks a vote against the key pair of the voter's name. */
function simVotes (id: string): VoteSigner {
  return { sign: voteSigner(simKey(id)).sign, verify: (voter, ballot, v, sig) => voteIsValid(simKey(voter).publicKey.toString('hex'), ballot, v, sig) }
}

/** A certificate for v under ballot with the votes of these voters. */
function certify (v: View, ballot: Ballot, voters: string[]): Certificate {
  return { ballot, votes: voters.map(id => ({ voter: id, signature: simVotes(id).sign(ballot, v) })) }
}

// ---------------------------------------------------------------------------------------------
// Virtual time: a queue of events run in time order. Between two events every pending promise
// reaction runs (setImmediate comes after the microtask queue is empty), and nothing in the code
// under test waits on real I/O, so a run is a pure function of its seed.

interface SimEvent { at: number, seq: number, fn: () => void, cancelled: boolean }

class Sim {
  now = 0
  private seq = 0
  private readonly heap: SimEvent[] = []

  at (delayMs: number, fn: () => void): { cancel: () => void } {
    const e: SimEvent = { at: this.now + Math.max(0, delayMs), seq: this.seq++, fn, cancelled: false }
    this.heap.push(e)
    let i = this.heap.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.before(e, this.get(parent))) break
      this.heap[i] = this.get(parent)
      i = parent
    }
    this.heap[i] = e
    return { cancel: () => { e.cancelled = true } }
  }

  readonly clock: Clock = {
    now: () => this.now,
    sleep: (ms, signal) => new Promise(resolve => {
      if (signal.aborted) return resolve()
      const onAbort = (): void => { timer.cancel(); resolve() }
      const timer = this.at(ms, () => { signal.removeEventListener('abort', onAbort); resolve() })
      signal.addEventListener('abort', onAbort, { once: true })
    })
  }

  /** Runs events until `done()` or until the queue is empty or `limitMs` of virtual time passed. */
  async run (done: () => boolean, limitMs = 600_000): Promise<void> {
    const end = this.now + limitMs
    for (;;) {
      await new Promise(resolve => setImmediate(resolve))
      if (done()) return
      let e = this.pop()
      while (e?.cancelled) e = this.pop()
      if (!e || e.at > end) return
      this.now = e.at
      e.fn()
    }
  }

  private get (i: number): SimEvent {
    const e = this.heap[i]
    if (!e) throw new Error('heap index out of range')
    return e
  }

  private before (a: SimEvent, b: SimEvent): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }

  private pop (): SimEvent | undefined {
    const top = this.heap[0]
    const last = this.heap.pop()
    if (!top || !last || top === last) return top
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      let best = last
      if (l < this.heap.length && this.before(this.get(l), best)) { m = l; best = this.get(l) }
      if (r < this.heap.length && this.before(this.get(r), best)) { m = r; best = this.get(r) }
      if (m === i) break
      this.heap[i] = best
      i = m
    }
    this.heap[i] = last
    return top
  }
}

/** Runs the simulation until p settles and returns its outcome. */
async function drive<T> (sim: Sim, p: Promise<T>, limitMs?: number): Promise<T> {
  let done = false
  const watched = p.finally(() => { done = true })
  watched.catch(() => {})
  await sim.run(() => done, limitMs)
  if (!done) throw new Error(`the simulation stalled at ${sim.now} ms`)
  return await watched
}

// ---------------------------------------------------------------------------------------------
// The simulated cluster

interface NetOptions {
  loss: number // chance that one transmission is lost
  duplicate: number // chance that it arrives twice
  minDelayMs: number
  maxDelayMs: number // delays are uniform in between, so messages overtake each other
  replay: number // chance, per message sent, that an old message is delivered again now
}

const PERFECT: NetOptions = { loss: 0, duplicate: 0, minDelayMs: 1, maxDelayMs: 1, replay: 0 }
const LOSSY: NetOptions = { loss: 0.2, duplicate: 0.2, minDelayMs: 1, maxDelayMs: 60, replay: 0.05 }
const TIMING = { requestTimeoutMs: 150, proposeTimeoutMs: 20_000, backoffBaseMs: 20, backoffMaxMs: 400 }
/** A save becomes durable this long after it is issued; a crash in between loses it. */
const SAVE_MS = 1
const REPLAY_LOG = 200

interface SimNode {
  id: string
  /** What the node's disk holds. */
  durable: PersistedState | null
  saves: number
  /** Bumped by a crash: storage, transport and answers of an older incarnation are dead. */
  incarnation: number
  keeper: ViewKeeper | null
}

class Cluster {
  readonly sim = new Sim()
  readonly rand: () => number
  net: NetOptions
  cut: (from: string, to: string, msg: AgreementMessage) => boolean = () => false
  /** Rewrites what a node sends (to feed garbage to the others). */
  mangle: ((from: string, msg: AgreementMessage) => unknown) | null = null
  onDurable: ((node: SimNode, state: PersistedState) => void) | null = null
  readonly nodes = new Map<string, SimNode>()
  /** Safety violations and unexpected errors; every test expects it empty. */
  readonly problems: string[] = []
  /** Every committed view any node learned, by epoch. */
  readonly views = new Map<number, View>()
  private readonly seeded = new Set<number>()
  private readonly chosen = new Map<number, string>()
  private readonly acceptances = new Map<string, { view: string, by: Set<string> }>()
  private readonly sent: Array<{ from: string, to: string, msg: AgreementMessage }> = []

  constructor (seed: number, ids: string[], net = PERFECT, private readonly timing = (_id: string) => TIMING) {
    this.rand = mulberry32(seed)
    this.net = net
    for (const id of ids) this.nodes.set(id, { id, durable: null, saves: 0, incarnation: 0, keeper: null })
  }

  node (id: string): SimNode {
    const n = this.nodes.get(id)
    if (!n) throw new Error(`no node ${id}`)
    return n
  }

  keeper (id: string): ViewKeeper {
    const k = this.node(id).keeper
    if (!k) throw new Error(`node ${id} is down`)
    return k
  }

  /**
   * Gives every node the history [{first}, {members}], as if the first had founded the cluster and
   * added the others at once. Members default to every node.
   */
  seedHistory (ids = [...this.nodes.keys()]): View {
    const history = [view(1, ids.slice(0, 1)), view(2, ids)]
    for (const n of this.nodes.values()) n.durable = stateWith(history)
    for (const v of history) {
      this.views.set(v.epoch, v)
      this.seeded.add(v.epoch)
    }
    return history[1] as View
  }

  async start (id: string): Promise<ViewKeeper> {
    const node = this.node(id)
    const inc = node.incarnation
    const keeper = new ViewKeeper({
      self: id,
      votes: simVotes(id),
      storage: this.storage(node, inc),
      transport: this.transport(node, inc),
      clock: this.sim.clock,
      random: this.rand,
      ...this.timing(id)
    })
    keeper.onChange(v => this.observe(id, v))
    await keeper.open()
    node.keeper = keeper
    return keeper
  }

  async startAll (): Promise<void> {
    for (const id of this.nodes.keys()) await this.start(id)
  }

  /** The node stops at once: unsaved state, answers in flight and its proposal die with it. */
  crash (id: string): void {
    const node = this.node(id)
    node.incarnation++
    void node.keeper?.close()
    node.keeper = null
  }

  /** Crashes now, restarts after downMs of virtual time. */
  bounce (id: string, downMs: number): void {
    this.crash(id)
    this.sim.at(downMs, () => { if (!this.node(id).keeper) void this.start(id) })
  }

  /** Whole-history check at the end: every saved history agrees with the learned views. */
  checkHistories (): void {
    for (const n of this.nodes.values()) {
      const history = n.durable?.history ?? []
      history.forEach((v, i) => {
        const known = this.views.get(v.epoch)
        if (!known || key(known) !== key(v)) this.problems.push(`${n.id} saved a view for epoch ${v.epoch} nobody learned`)
        if (i > 0 && (history[i - 1]?.epoch ?? 0) >= v.epoch) this.problems.push(`${n.id}: history out of order`)
      })
    }
  }

  private observe (id: string, v: View): void {
    const known = this.views.get(v.epoch)
    if (known && key(known) !== key(v)) this.problems.push(`epoch ${v.epoch}: ${id} learned ${key(v)}, another node learned ${key(known)}`)
    if (!this.seeded.has(v.epoch) && v.epoch > 1 && this.chosen.get(v.epoch) !== key(v)) {
      this.problems.push(`epoch ${v.epoch}: ${id} learned a view no majority accepted`)
    }
    this.views.set(v.epoch, v)
  }

  /** The Paxos invariant, checked on what the acceptors durably accepted. */
  private checkAccepted (node: SimNode, state: PersistedState): void {
    for (const inst of state.instances) {
      if (!inst.accepted) continue
      const { ballot, view: v } = inst.accepted
      const k = `${inst.epoch}/${ballot.round}/${ballot.proposer}`
      const entry = this.acceptances.get(k) ?? { view: key(v), by: new Set<string>() }
      this.acceptances.set(k, entry)
      if (entry.view !== key(v)) this.problems.push(`ballot ${k} carried two values`)
      entry.by.add(node.id)
      const base = this.views.get(inst.epoch - 1)
      if (!base || base.members.filter(m => entry.by.has(m.id)).length < majority(base.members.length)) continue
      const chosen = this.chosen.get(inst.epoch)
      if (chosen !== undefined && chosen !== entry.view) this.problems.push(`epoch ${inst.epoch}: two values chosen`)
      this.chosen.set(inst.epoch, entry.view)
    }
  }

  private storage (node: SimNode, inc: number): AgreementStorage {
    return {
      load: async () => node.durable === null ? null : clone(node.durable),
      save: async state => {
        // Kept as is: the keeper replaces its state whole and never mutates one it saved.
        await new Promise<void>((resolve, reject) => this.sim.at(SAVE_MS, () => {
          // A crashed incarnation's save never lands.
          if (node.incarnation !== inc) return reject(new Error('the node crashed'))
          node.durable = state
          node.saves++
          this.checkAccepted(node, state)
          this.onDurable?.(node, state)
          resolve()
        }))
      }
    }
  }

  private transport (node: SimNode, inc: number): AgreementTransport {
    const alive = (): boolean => node.incarnation === inc
    return {
      request: async (to, msg, timeoutMs) => await new Promise(resolve => {
        if (!alive()) return resolve(null)
        const timer = this.sim.at(timeoutMs, () => resolve(null))
        this.post(node.id, to, msg, answer => { timer.cancel(); resolve(answer as AgreementMessage) })
      }),
      send: (to, msg) => { if (alive()) this.post(node.id, to, msg, null) }
    }
  }

  /** A request or one-way message, plus now and then a replay of an old one. */
  private post (from: string, to: string, msg: AgreementMessage, onAnswer: ((a: unknown) => void) | null): void {
    if (this.sent.length > 0 && this.rand() < this.net.replay) {
      const old = this.sent[Math.floor(this.rand() * this.sent.length)]
      if (old) this.transmit(old.from, old.to, old.msg, m => this.arrive(old.from, old.to, m, null))
    }
    this.sent.push({ from, to, msg })
    if (this.sent.length > REPLAY_LOG) this.sent.shift()
    this.transmit(from, to, msg, m => this.arrive(from, to, m, onAnswer))
  }

  /** One hop: maybe lost, maybe twice, after a random delay; a cut link carries nothing. */
  private transmit (from: string, to: string, msg: AgreementMessage, deliver: (m: unknown) => void): void {
    if (this.cut(from, to, msg) || this.rand() < this.net.loss) return
    const payload = this.mangle ? this.mangle(from, msg) : msg
    const copies = this.rand() < this.net.duplicate ? 2 : 1
    for (let i = 0; i < copies; i++) {
      const delay = this.net.minDelayMs + this.rand() * (this.net.maxDelayMs - this.net.minDelayMs)
      // No copy: the receiver parses the message into fresh objects anyway.
      this.sim.at(delay, () => { if (!this.cut(from, to, msg)) deliver(payload) })
    }
  }

  private arrive (from: string, to: string, msg: unknown, onAnswer: ((a: unknown) => void) | null): void {
    const node = this.nodes.get(to)
    const keeper = node?.keeper
    if (!node || !keeper) return
    const inc = node.incarnation
    keeper.handle(from, msg).then(answer => {
      if (answer && onAnswer && node.incarnation === inc) this.transmit(to, from, answer, onAnswer)
    }, (err: Error) => {
      if (node.incarnation === inc && !this.mangle) this.problems.push(`${to} failed on a message from ${from}: ${err.message}`)
    })
  }
}

type Outcome = { ok: View } | { err: SheepError }

async function outcome (p: Promise<View>): Promise<Outcome> {
  try {
    return { ok: await p }
  } catch (err) {
    return { err: err as SheepError }
  }
}

/** Proposes `times` changes in a row from node id, each a distinct candidate; stops if the node dies. */
async function duel (c: Cluster, id: string, tag: number, times: number): Promise<Outcome[]> {
  const results: Outcome[] = []
  for (let k = 0; k < times; k++) {
    const keeper = c.node(id).keeper
    const base = keeper?.view
    if (!keeper || !base) break
    const r = await outcome(keeper.propose({ members: withWeight(base.members, id, 1000 * tag + k) }))
    results.push(r)
    if ('ok' in r && r.ok.epoch <= base.epoch) c.problems.push(`${id}: propose resolved with epoch ${r.ok.epoch} from base ${base.epoch}`)
    if ('err' in r && r.err.code === 'ESHUTDOWN') break
  }
  return results
}

const IDS = ['A', 'B', 'C', 'D', 'E']

async function seededCluster (seed: number, net = PERFECT, timing = (_id: string) => TIMING): Promise<{ c: Cluster, base: View }> {
  const c = new Cluster(seed, IDS, net, timing)
  const base = c.seedHistory()
  await c.startAll()
  return { c, base }
}

/** After the chaos: heal, let every node ask every other, and check they all hold the latest view. */
async function healAndCompare (c: Cluster): Promise<void> {
  c.net = PERFECT
  c.cut = () => false
  for (const id of c.nodes.keys()) if (!c.node(id).keeper) await c.start(id)
  const ids = [...c.nodes.keys()]
  await drive(c.sim, Promise.all(ids.map(async id => await c.keeper(id).refresh(ids))))
  const latest = Math.max(...c.views.keys())
  for (const id of ids) {
    if (c.keeper(id).view?.epoch !== latest) c.problems.push(`${id} is at epoch ${c.keeper(id).view?.epoch ?? 0}, not ${latest}, after healing`)
  }
  c.checkHistories()
}

// ---------------------------------------------------------------------------------------------
// Pure helpers

t.test('majority, hasMajority and ballot order', async t => {
  t.same([1, 2, 3, 4, 5, 6].map(majority), [1, 2, 2, 3, 3, 4])
  const v1 = view(1, ['A'])
  const v2 = view(2, ['A', 'B'])
  const v5 = view(5, IDS)
  t.ok(hasMajority(v1, ['A']), 'a lone member is its own majority')
  t.notOk(hasMajority(v1, []))
  t.notOk(hasMajority(v2, ['A']), 'one of two is not a majority')
  t.ok(hasMajority(v2, ['A', 'B']))
  t.notOk(hasMajority(v5, ['A', 'B']), 'the 2 of a 2|3 split')
  t.ok(hasMajority(v5, ['C', 'D', 'E']), 'the 3 of a 2|3 split')
  t.notOk(hasMajority(v5, ['A', 'B', 'A', 'B', 'X', 'Y']), 'duplicates and strangers do not count')
  t.ok(hasMajority(v5, new Set(['A', 'C', 'E'])), 'any iterable')

  const b = (round: number, proposer: string): Ballot => ({ round, proposer })
  t.ok(compareBallots(b(1, 'Z'), b(2, 'A')) < 0, 'round first')
  t.ok(compareBallots(b(2, 'B'), b(2, 'A')) > 0, 'then proposer id')
  t.equal(compareBallots(b(3, 'C'), b(3, 'C')), 0)
})

// ---------------------------------------------------------------------------------------------
// One acceptor, driven by hand

class TestStorage implements AgreementStorage {
  state: PersistedState | null
  saves = 0
  gate: Promise<void> | null = null
  fail = false

  constructor (state: PersistedState | null = null) { this.state = state }

  async load (): Promise<PersistedState | null> {
    return this.state && clone(this.state)
  }

  async save (state: PersistedState): Promise<void> {
    if (this.gate) await this.gate
    if (this.fail) throw new Error('the disk is on fire')
    this.state = clone(state)
    this.saves++
  }
}

const silent: AgreementTransport = { request: async () => null, send: () => {} }

/** Node B as an acceptor of the instance of epoch 3 (view 2 = {A, B, C}). */
async function acceptorB (storage = new TestStorage(stateWith([view(1, ['A']), view(2, ['A', 'B', 'C'])]))):
Promise<{ k: ViewKeeper, storage: TestStorage }> {
  const k = new ViewKeeper({ self: 'B', votes: simVotes('B'), storage, transport: silent })
  await k.open()
  return { k, storage }
}

const prepare = (round: number, proposer: string, epoch = 3): AgreementMessage => ({ type: 'prepare', epoch, ballot: { round, proposer } })
const accept = (round: number, proposer: string, v: View): AgreementMessage => ({ type: 'accept', epoch: v.epoch, ballot: { round, proposer }, view: v })

t.test('acceptor: promise, nack, accept, duplicates, decided', async t => {
  const { k, storage } = await acceptorB()
  const vA = view(3, ['A', 'B'])
  const vC = view(3, ['B', 'C'])
  t.same(await k.handle('A', prepare(1, 'A')), { type: 'promise', epoch: 3, ballot: { round: 1, proposer: 'A' }, accepted: null })
  t.equal(storage.saves, 1, 'the promise was saved')
  t.same(await k.handle('A', prepare(1, 'A')), { type: 'promise', epoch: 3, ballot: { round: 1, proposer: 'A' }, accepted: null }, 'a duplicate prepare is promised again')
  t.equal(storage.saves, 1, 'without saving again')
  t.equal((await k.handle('C', prepare(2, 'C')))?.type, 'promise', 'a higher ballot is promised')
  t.same(await k.handle('A', prepare(1, 'Z')), { type: 'nack', epoch: 3, ballot: { round: 1, proposer: 'Z' }, promised: { round: 2, proposer: 'C' } },
    'a lower ballot is refused with the promised one')
  t.same(await k.handle('A', accept(1, 'A', vA)), { type: 'nack', epoch: 3, ballot: { round: 1, proposer: 'A' }, promised: { round: 2, proposer: 'C' } },
    'accept under a ballot below the promise is refused')
  const voteC = { type: 'accepted', epoch: 3, ballot: { round: 2, proposer: 'C' }, signature: simVotes('B').sign({ round: 2, proposer: 'C' }, vC) }
  t.same(await k.handle('C', accept(2, 'C', vC)), voteC, 'accepted, with B\'s vote')
  const saves = storage.saves
  t.same(await k.handle('C', accept(2, 'C', vC)), voteC, 'a duplicate accept')
  t.match(await sheepError(() => k.handle('C', accept(2, 'C', vA))), { code: 'EINVAL', message: /already carried another view/ },
    'another view under a ballot already accepted gets no vote')
  t.equal(storage.saves, saves, 'is not saved again')
  t.same(await k.handle('D', prepare(3, 'D')), { type: 'promise', epoch: 3, ballot: { round: 3, proposer: 'D' }, accepted: { ballot: { round: 2, proposer: 'C' }, view: vC } },
    'a later promise carries the accepted value')
  t.same(await k.handle('D', prepare(9, 'D', 2)), { type: 'decided', view: view(2, ['A', 'B', 'C']), certificate: null }, 'a stale epoch is answered with the latest view')
  t.same(await k.handle('D', { type: 'query', epoch: 0 }), { type: 'decided', view: view(2, ['A', 'B', 'C']), certificate: null })
  t.same(await k.handle('D', { type: 'query', epoch: 1 }), { type: 'decided', view: view(1, ['A']), certificate: null }, 'a query names an epoch')
  t.equal(await k.handle('D', { type: 'query', epoch: 7 }), null, 'one it does not know is not answered')

  const changes: Array<[number, number | undefined]> = []
  k.onChange((v, prev) => changes.push([v.epoch, prev?.epoch]))
  const certC = certify(vC, { round: 2, proposer: 'C' }, ['B', 'C'])
  t.equal(await k.handle('C', { type: 'decided', view: vC, certificate: certC }), null, 'a commit needs no answer')
  t.same(changes, [[3, 2]], 'the change is announced')
  t.same(k.view, vC)
  t.same(storage.state?.history.at(-1), vC, 'and saved')
  t.same(storage.state?.instances, [], 'the settled instance is dropped')
  t.same(await k.handle('D', prepare(10, 'D')), { type: 'decided', view: vC, certificate: certC }, 'its instance now answers decided, with the certificate')
  t.same(await k.handle('D', accept(10, 'D', vA)), { type: 'decided', view: vC, certificate: certC })
  t.equal(await k.handle('C', { type: 'decided', view: view(2, ['A']), certificate: null }), null)
  t.same(k.view, vC, 'an older commit changes nothing')
  t.same(changes.length, 1)
  await k.close()
})

t.test('acceptor: an answer leaves only after the save resolved', async t => {
  const { k, storage } = await acceptorB()
  let open!: () => void
  storage.gate = new Promise(resolve => { open = resolve })
  let answered = false
  const p = k.handle('A', prepare(5, 'A')).then(a => { answered = true; return a })
  await settle()
  t.notOk(answered, 'no answer while the save is pending')
  open()
  t.equal((await p)?.type, 'promise')
  t.ok(answered)

  storage.gate = null
  storage.fail = true
  await t.rejects(k.handle('C', prepare(6, 'C')), { message: 'the disk is on fire' }, 'a failed save means no answer')
  storage.fail = false
  t.same(await k.handle('Z', prepare(5, '0')), { type: 'nack', epoch: 3, ballot: { round: 5, proposer: '0' }, promised: { round: 5, proposer: 'A' } },
    'and the unsaved promise was not made: (5, A) still holds, not (6, C)')

  const restarted = await acceptorB(storage)
  t.equal((await restarted.k.handle('Z', prepare(4, 'Z')))?.type, 'nack', 'after a restart the saved promise still holds')
  t.equal((await restarted.k.handle('Z', prepare(5, 'A')))?.type, 'promise')
})

t.test('keeper lifecycle and misuse', async t => {
  const storage = new TestStorage()
  const k = new ViewKeeper({ self: 'A', votes: simVotes('A'), storage, transport: silent })
  t.equal((await sheepError(() => k.handle('B', { type: 'query', epoch: 0 }))).code, 'EINVAL', 'handle before open')
  await k.open()
  t.equal((await sheepError(() => k.open())).code, 'EINVAL', 'open twice')
  t.equal(k.view, null)
  t.equal(await k.handle('B', { type: 'query', epoch: 0 }), null, 'a node without a view has nothing to tell')
  t.match((await sheepError(() => k.propose({ members: [member('A')] }))), { code: 'EINVAL', message: /no view yet/ })
  t.equal((await sheepError(() => k.found(member('B')))).code, 'EINVAL', 'only this node can found')
  const v1 = await k.found(member('A'))
  t.same(v1, view(1, ['A']))
  t.same(storage.state?.history, [v1], 'view 1 is saved')
  t.equal((await sheepError(() => k.found(member('A')))).code, 'EEXIST', 'founding twice')
  t.equal((await sheepError(() => k.propose({ members: [member('A'), member('A')] }))).code, 'EINVAL', 'duplicate members')
  t.equal((await sheepError(() => k.propose({ members: [] }))).code, 'EINVAL', 'no members')
  t.equal((await sheepError(() => k.propose({ members: [{ ...member('B'), port: -1 }] }))).code, 'EINVAL', 'a bad member')
  const v2 = await k.propose({ members: [member('B'), member('A')] })
  t.same(v2, view(2, ['A', 'B']), 'a lone member decides alone; members come back sorted')
  t.throws(() => { (v2.members as unknown as unknown[]).push(1) }, 'views handed out are frozen')
  const h = k.history
  h.pop()
  t.equal(k.history.length, 2, 'history is a copy')
  await k.close()
  t.equal(await k.handle('B', { type: 'query', epoch: 0 }), null, 'a closed keeper does not answer')

  t.match(await sheepError(async () => await new ViewKeeper({ self: 'A', votes: simVotes('A'), storage: new TestStorage({ ...stateWith([]), format: 7 } as unknown as PersistedState), transport: silent }).open()),
    { code: 'EIO', message: /corrupt: unknown format 7/ }, 'an unknown state format')
  const bad = stateWith([view(2, ['A']), view(1, ['A'])])
  t.equal((await sheepError(() => new ViewKeeper({ self: 'A', votes: simVotes('A'), storage: new TestStorage(bad), transport: silent }).open())).code, 'EIO', 'a history out of order')
})

t.test('propose: one at a time, a deadline, and close', async t => {
  // View 2 = {A, B} and B never answers: A can never reach 2 of 2.
  const slow: AgreementTransport = { request: async (_to, _msg, ms) => await new Promise(resolve => setTimeout(() => resolve(null), ms)), send: () => {} }
  const storage = new TestStorage(stateWith([view(1, ['A']), view(2, ['A', 'B'])]))
  const k = new ViewKeeper({ self: 'A', votes: simVotes('A'), storage, transport: slow, requestTimeoutMs: 5, proposeTimeoutMs: 60, backoffBaseMs: 5, backoffMaxMs: 10 })
  await k.open()
  const first = k.propose({ members: [member('A')] })
  t.match(await sheepError(() => k.propose({ members: [member('A'), member('C')] })), { code: 'EBUSY', message: /already being proposed/ })
  t.match(await sheepError(() => first), { code: 'EBUSY', message: /no view was decided for epoch 3 within 60 ms: only 1 of the 2 answers needed came from the 2 members of view 2/ })
  t.ok((storage.state?.lastRound ?? 0) >= 1, 'rounds used are saved')
  const rounds = storage.state?.lastRound ?? 0

  const k2 = new ViewKeeper({ self: 'A', votes: simVotes('A'), storage, transport: slow, requestTimeoutMs: 5, proposeTimeoutMs: 60_000 })
  await k2.open()
  const p = k2.propose({ members: [member('A')] })
  await new Promise(resolve => setTimeout(resolve, 20))
  const started = Date.now()
  await k2.close()
  t.equal((await sheepError(() => p)).code, 'ESHUTDOWN', 'close stops a running proposal')
  t.ok(Date.now() - started < 1000, 'promptly')
  t.ok((storage.state?.lastRound ?? 0) > rounds, 'a restarted proposer continues above its saved round')
})

// ---------------------------------------------------------------------------------------------
// 1. Single proposer

t.test('1. one proposer, 5 acceptors: its candidate is decided, learned by all, saved', async t => {
  const { c, base } = await seededCluster(1)
  const candidate = withWeight(base.members, 'C', 500)
  const decided = await drive(c.sim, c.keeper('A').propose({ members: candidate }))
  t.same(decided, { epoch: 3, members: candidate })
  await c.sim.run(() => false, 1000) // let the commit broadcast land
  for (const id of IDS) {
    t.same(c.keeper(id).view, decided, `${id} learned it`)
    t.same(c.node(id).durable?.history, [view(1, ['A']), base, decided], `${id} saved the history`)
  }
  for (const id of IDS) c.crash(id)
  await c.startAll()
  for (const id of IDS) t.same(c.keeper(id).view, decided, `${id} has it after a restart`)
  // A few more in a row, from different nodes.
  for (const [i, id] of ['B', 'E', 'A'].entries()) {
    const v = await drive(c.sim, c.keeper(id).propose({ members: withWeight(decided.members, id, i + 1) }))
    t.equal(v.epoch, 4 + i, `${id} decided epoch ${4 + i}`)
    await c.sim.run(() => false, 100) // its commit reaches the next proposer
  }
  c.checkHistories()
  t.same(c.problems, [])
})

// ---------------------------------------------------------------------------------------------
// 2. Dueling proposers on a bad network

t.test('2. dueling proposers under loss, duplication, delay and replays: one view per epoch', async t => {
  const SEEDS = 200
  let decided = 0
  for (let seed = 0; seed < SEEDS; seed++) {
    const { c } = await seededCluster(seed, LOSSY)
    const proposers = seed % 2 === 0 ? ['A', 'B'] : ['A', 'C', 'E']
    const results = await drive(c.sim, Promise.all(proposers.map(async (id, i) => {
      await new Promise<void>(resolve => c.sim.at(c.rand() * 30, resolve))
      return await duel(c, id, i + 1, 3)
    })))
    const oks = results.flat().filter(r => 'ok' in r).length
    decided += oks
    if (oks === 0) c.problems.push('no proposal completed although every node was connected')
    await healAndCompare(c)
    t.same(c.problems, [], `seed ${seed} (${proposers.length} proposers)`)
  }
  t.ok(decided >= SEEDS, `${decided} proposals completed`)
})

// ---------------------------------------------------------------------------------------------
// 3. Acceptors crash between promise and accept

t.test('3. acceptors crashing and restarting between promise and accept', async t => {
  const SEEDS = 100
  let bounced = 0
  for (let seed = 0; seed < SEEDS; seed++) {
    const { c } = await seededCluster(10_000 + seed, { ...LOSSY, loss: 0.1 })
    const proposers = ['A', 'B']
    // An acceptor that has just saved a promise (not an accepted value) crashes before answering,
    // losing its answer and any save still in flight, and comes back later.
    c.onDurable = (node, state) => {
      if (proposers.includes(node.id)) return
      if (state.instances.some(i => i.promised && !i.accepted) && c.rand() < 0.3) {
        bounced++
        c.bounce(node.id, c.rand() * 300)
      }
    }
    await drive(c.sim, Promise.all(proposers.map(async (id, i) => await duel(c, id, i + 1, 3))))
    c.onDurable = null
    await healAndCompare(c)
    t.same(c.problems, [], `seed ${10_000 + seed}`)
  }
  t.ok(bounced > SEEDS, `${bounced} acceptor crashes`)
})

// ---------------------------------------------------------------------------------------------
// 4. Proposer crash mid-round

/** Nodes that durably accepted a value from `proposer` for epoch 3. */
function acceptedFrom (c: Cluster, proposer: string): string[] {
  return [...c.nodes.values()].filter(n => n.durable?.instances.some(i => i.epoch === 3 && i.accepted?.ballot.proposer === proposer)).map(n => n.id)
}

t.test('4a. proposer crash after a majority accepted: the next proposer decides that value', async t => {
  const { c, base } = await seededCluster(4)
  const x = withWeight(base.members, 'A', 1)
  const y = withWeight(base.members, 'B', 2)
  let crashed = false
  c.onDurable = () => {
    if (!crashed && acceptedFrom(c, 'A').length >= 3) {
      crashed = true
      c.crash('A') // before any 'accepted' answer it needed could reach it
    }
  }
  const a = outcome(c.keeper('A').propose({ members: x }))
  await c.sim.run(() => crashed)
  t.ok('err' in await a, 'the crashed proposal died with its node')
  t.ok(crashed, 'A crashed mid-round')
  t.equal(c.keeper('B').view?.epoch, 2, 'nobody learned anything yet')
  const decided = await drive(c.sim, c.keeper('B').propose({ members: y }))
  t.same(decided.members, x, 'B decided the value a majority accepted, not its own')
  await c.start('A')
  t.equal(c.keeper('A').view?.epoch, 2, 'A restarts without knowing the outcome')
  t.same(await drive(c.sim, c.keeper('A').propose({ members: y })), decided, 'its next proposal learns it')
  await healAndCompare(c)
  t.same(c.problems, [])
})

t.test('4b. proposer crash after a minority accepted: any value may win, but only one', async t => {
  for (let seed = 0; seed < 20; seed++) {
    const c = new Cluster(seed, IDS, { ...PERFECT, maxDelayMs: 40 })
    const base = c.seedHistory()
    await c.startAll()
    const x = withWeight(base.members, 'A', 1)
    // A's accept reaches only C (and A itself): 2 of 5.
    c.cut = (from, to, msg) => from === 'A' && msg.type === 'accept' && to !== 'C'
    let crashed = false
    c.onDurable = () => {
      if (!crashed && acceptedFrom(c, 'A').length >= 2) { crashed = true; c.crash('A') }
    }
    void outcome(c.keeper('A').propose({ members: x }))
    await c.sim.run(() => crashed)
    c.cut = () => false
    const proposer = seed % 2 === 0 ? 'B' : 'C' // C holds A's value, B does not
    const decided = await drive(c.sim, c.keeper(proposer).propose({ members: withWeight(base.members, proposer, 2) }))
    if (proposer === 'C') t.same(decided.members, x, `seed ${seed}: C's promise to itself carries A's value`)
    await healAndCompare(c)
    t.same(c.problems, [], `seed ${seed}`)
  }
})

t.test('4c. proposers crashing mid-round at random and proposing again after a restart', async t => {
  for (let seed = 0; seed < 60; seed++) {
    const { c } = await seededCluster(20_000 + seed, LOSSY)
    // A and B duel; each crashes once at a random time and, back up, proposes new candidates
    // at once, knowing only what it saved (its rounds, its view). D finishes after them.
    let started = 0
    let finished = 0
    const track = (p: Promise<unknown>): void => {
      started++
      p.then(() => finished++, () => finished++)
    }
    track(duel(c, 'A', 1, 3))
    track(duel(c, 'B', 2, 3))
    for (const [i, id] of ['A', 'B'].entries()) {
      c.sim.at(c.rand() * 400, () => {
        c.crash(id)
        c.sim.at(c.rand() * 500, () => track(c.start(id).then(async () => await duel(c, id, 3 + i, 2))))
      })
    }
    await c.sim.run(() => started === 4 && finished === 4)
    if (finished !== 4) c.problems.push('the simulation stalled')
    const last = await drive(c.sim, duel(c, 'D', 5, 1))
    if (!('ok' in (last[0] ?? {}))) c.problems.push('D did not complete')
    await healAndCompare(c)
    t.same(c.problems, [], `seed ${20_000 + seed}`)
  }
})

t.test('4d. a restarted proposer never reuses a ballot', async t => {
  // A is not a member of view 2 = {B, C, D}, so its own acceptor cannot remind it of what it sent.
  const c = new Cluster(44, ['A', 'B', 'C', 'D'])
  const base = c.seedHistory(['B', 'C', 'D'])
  await c.startAll()
  const x = withWeight(base.members, 'B', 1)
  const y = withWeight(base.members, 'B', 2)
  c.cut = (from, to, msg) => from === 'A' && msg.type === 'accept' && to !== 'C'
  let crashed = false
  c.onDurable = () => {
    if (!crashed && acceptedFrom(c, 'A').includes('C')) { crashed = true; c.crash('A') }
  }
  void outcome(c.keeper('A').propose({ members: x }))
  await c.sim.run(() => crashed)
  t.same(acceptedFrom(c, 'A'), ['C'], 'only C accepted x, under A\'s first ballot')
  c.onDurable = null
  // Back up, A proposes y at once; its phase 1 misses C. Had it forgotten its round, it would
  // send y under the ballot C accepted x with: one ballot, two values.
  await c.start('A')
  c.cut = (from, to, msg) => from === 'A' && msg.type === 'prepare' && to === 'C'
  const decided = await drive(c.sim, c.keeper('A').propose({ members: y }))
  t.same(decided.members, y, 'y is decided (x was never chosen)')
  t.ok((c.node('A').durable?.lastRound ?? 0) >= 2, 'under a later round')
  t.same(c.problems, [])
})

// ---------------------------------------------------------------------------------------------
// 5. Partition

t.test('5. partition 2|3: the minority never decides, the majority does, the minority learns after healing', async t => {
  const minority = new Set(['A', 'B'])
  const split = (from: string, to: string): boolean => minority.has(from) !== minority.has(to)
  {
    const { c, base } = await seededCluster(5)
    c.cut = split
    t.notOk(hasMajority(base, ['A', 'B']), 'A and B see they are a minority')
    t.ok(hasMajority(base, ['C', 'D', 'E']))
    const [a, cc] = await drive(c.sim, Promise.all([
      outcome(c.keeper('A').propose({ members: withWeight(base.members, 'A', 1) })),
      outcome(c.keeper('C').propose({ members: withWeight(base.members, 'C', 3) }))
    ]))
    t.match(a, { err: { code: 'EBUSY', message: /only 2 of the 3 answers needed came from the 5 members of view 2/ } }, 'the minority gives up')
    t.ok('ok' in cc, 'the majority decides')
    const decided = (cc as { ok: View }).ok
    t.equal(c.keeper('A').view?.epoch, 2, 'A did not learn across the cut')
    t.equal(c.keeper('B').view?.epoch, 2)
    c.cut = () => false
    t.same(await drive(c.sim, c.keeper('A').propose({ members: withWeight(base.members, 'A', 1) })), decided,
      'after healing, A\'s stale prepare is answered with the decided view')
    t.same(await drive(c.sim, c.keeper('B').refresh(['C'])), decided, 'B catches up by asking')
    await healAndCompare(c)
    t.same(c.problems, [])
  }
  // Both sides proposing repeatedly on a bad network: nothing the minority proposes is ever
  // decided. (The minority gives up sooner: its vain attempts would be the bulk of the events.)
  const timing = (id: string): typeof TIMING => minority.has(id) ? { ...TIMING, proposeTimeoutMs: 3000 } : TIMING
  for (let seed = 0; seed < 30; seed++) {
    const { c } = await seededCluster(30_000 + seed, LOSSY, timing)
    c.cut = split
    const results = await drive(c.sim, Promise.all([duel(c, 'A', 1, 2), duel(c, 'B', 2, 2), duel(c, 'D', 3, 2)]))
    const problems = c.problems
    if (results[0]?.some(r => 'ok' in r) || results[1]?.some(r => 'ok' in r)) problems.push('the minority decided')
    if (!results[2]?.every(r => 'ok' in r)) problems.push('the majority did not decide')
    for (const v of c.views.values()) if (v.members.some(m => m.weight === 1000 || m.weight === 2000 || m.weight === 1001 || m.weight === 2001)) problems.push(`a minority candidate won epoch ${v.epoch}`)
    await healAndCompare(c)
    for (const id of minority) if (c.keeper(id).view?.epoch !== 4) problems.push(`${id} did not learn epoch 4`)
    t.same(problems, [], `seed ${30_000 + seed}`)
  }
})

// ---------------------------------------------------------------------------------------------
// 6. Missed epochs and stale requests

t.test('6. a node that missed epochs learns the latest view; stale requests get the decided view', async t => {
  const { c, base } = await seededCluster(6)
  c.crash('E')
  let v = base
  for (let i = 0; i < 3; i++) v = await drive(c.sim, c.keeper('A').propose({ members: withWeight(v.members, 'A', i + 1) }))
  t.equal(v.epoch, 5, 'three epochs passed without E (4 of 5 up)')
  await c.sim.run(() => false, 100) // the commits land
  t.match(await c.keeper('B').handle('E', prepare(1, 'E', 3)), { type: 'decided', view: v }, 'a prepare for epoch 3 gets view 5')
  t.match(await c.keeper('B').handle('E', accept(1, 'E', { ...v, epoch: 4 })), { type: 'decided', view: v }, 'an accept for epoch 4 too')

  const e = await c.start('E')
  const changes: Array<[number, number | undefined]> = []
  e.onChange((nv, prev) => changes.push([nv.epoch, prev?.epoch]))
  t.equal(e.view?.epoch, 2)
  t.same(await drive(c.sim, e.propose({ members: withWeight(base.members, 'E', 9) })), v, 'E\'s proposal for epoch 3 ends with view 5')
  t.same(changes, [[3, 2], [4, 3], [5, 4]], 'from 2 to 5 through the views it missed: each is checked against the one before')
  t.same(e.history.map(h => h.epoch), [1, 2, 3, 4, 5], 'its history has no gap')

  // Learning from commits alone: E is cut off for two epochs, then hears the third commit.
  c.cut = (from, to) => from === 'E' || to === 'E'
  for (let i = 0; i < 2; i++) v = await drive(c.sim, c.keeper('B').propose({ members: withWeight(v.members, 'B', i + 1) }))
  c.cut = () => false
  v = await drive(c.sim, c.keeper('B').propose({ members: withWeight(v.members, 'B', 7) }))
  await c.sim.run(() => false, 1000)
  t.equal(v.epoch, 8)
  t.same(e.view, v, 'E learned view 8 from its commit, after fetching 6 and 7 from its sender')
  t.same(changes, [[3, 2], [4, 3], [5, 4], [6, 5], [7, 6], [8, 7]])
  c.checkHistories()
  t.same(c.problems, [])
})

// ---------------------------------------------------------------------------------------------
// 7. Join and leave

t.test('7. join from a single-member view; leave with a dead member', async t => {
  const c = new Cluster(7, ['A', 'B', 'C'])
  await c.startAll()
  t.same(await drive(c.sim, c.keeper('A').found(member('A'))), view(1, ['A']))
  // No one else is asked: A alone is the majority of {A}.
  c.cut = (_from, _to, msg) => msg.type !== 'decided'
  const v2 = await drive(c.sim, c.keeper('A').propose({ members: [member('A'), member('B')] }))
  t.same(v2, view(2, ['A', 'B']))
  await c.sim.run(() => false, 100)
  t.same(c.keeper('B').view, v2, 'B learned it from the commit')
  t.same(c.keeper('B').history, [v2], 'B starts its history at the view that added it')
  c.cut = () => false
  const v3 = await drive(c.sim, c.keeper('B').propose({ members: [member('A'), member('B'), member('C')] }))
  t.same(v3, view(3, ['A', 'B', 'C']), 'B proposes with A and B as acceptors (2 of 2)')
  await c.sim.run(() => false, 100)
  t.same(c.keeper('C').view, v3)

  c.crash('C')
  const v4 = await drive(c.sim, c.keeper('A').propose({ members: [member('A'), member('B')] }))
  t.same(v4, view(4, ['A', 'B']), 'with C dead, A and B are 2 of 3')
  c.crash('B')
  t.match(await drive(c.sim, outcome(c.keeper('A').propose({ members: [member('A')] }))), { err: { code: 'EBUSY' } },
    'with B dead, A alone is 1 of 2 and can decide nothing')
  await c.start('C')
  t.same(await drive(c.sim, c.keeper('C').refresh(['A'])), v4, 'the removed node learns it was removed')
  t.same(c.problems, [])
})

t.test('7b. down members: a view keeps them as members; proposals carry them on until told otherwise', async t => {
  const c = new Cluster(8, ['A', 'B', 'C'])
  await c.startAll()
  await drive(c.sim, c.keeper('A').found(member('A')))
  await drive(c.sim, c.keeper('A').propose({ members: [member('A'), member('B'), member('C')] }))
  await c.sim.run(() => false, 100)
  c.crash('C')
  const down = [{ id: 'C', since: 1234 }]
  const v3 = await drive(c.sim, c.keeper('A').propose({ members: [member('A'), member('B'), member('C')], down }))
  t.same(v3, { ...view(3, ['A', 'B', 'C']), down }, 'C is down and still a member: A and B are 2 of 3')
  await c.sim.run(() => false, 100)
  const v4 = await drive(c.sim, c.keeper('B').propose({ members: [member('A'), member('B'), { ...member('C'), port: 2 }] }))
  t.same(v4, { epoch: 4, members: [member('A'), member('B'), { ...member('C'), port: 2 }], down }, 'a proposal that does not say which are down keeps the current view\'s')
  await c.sim.run(() => false, 100)
  const v5 = await drive(c.sim, c.keeper('A').propose({ members: [member('A'), member('B')] }))
  t.same(v5, view(5, ['A', 'B']), 'out: C leaves the members, and the down list with it')
  t.same(c.problems, [])
})

// ---------------------------------------------------------------------------------------------
// 8. Malformed input

t.test('8. malformed messages: EINVAL, no state change, no crash', async t => {
  const { k, storage } = await acceptorB()
  const ballot = { round: 99, proposer: 'A' }
  const v3 = view(3, ['A', 'B'])
  const bad: Array<[string, unknown]> = [
    ['null', null],
    ['a number', 42],
    ['a string', 'prepare'],
    ['an array', [{ type: 'prepare', epoch: 3, ballot }]],
    ['no type', { epoch: 3, ballot }],
    ['an unknown type', { type: 'hello', epoch: 3, ballot }],
    ['a type that is not a string', { type: 7, epoch: 3, ballot }],
    ['an object without prototype', Object.create(null)],
    ['a field whose getter throws', { get type (): string { throw new Error('boom') } }],
    ['epoch a string', { type: 'prepare', epoch: '3', ballot }],
    ['epoch NaN', { type: 'prepare', epoch: NaN, ballot }],
    ['epoch fractional', { type: 'prepare', epoch: 3.5, ballot }],
    ['epoch negative', { type: 'prepare', epoch: -3, ballot }],
    ['epoch Infinity', { type: 'prepare', epoch: Infinity, ballot }],
    ['epoch beyond 2^53', { type: 'prepare', epoch: 2 ** 53, ballot }],
    ['epoch a bigint', { type: 'prepare', epoch: 3n, ballot }],
    ['epoch 1, which is founded, never agreed', { type: 'prepare', epoch: 1, ballot }],
    ['ballot missing', { type: 'prepare', epoch: 3 }],
    ['ballot null', { type: 'prepare', epoch: 3, ballot: null }],
    ['round 0', { type: 'prepare', epoch: 3, ballot: { round: 0, proposer: 'A' } }],
    ['round a string', { type: 'prepare', epoch: 3, ballot: { round: '9', proposer: 'A' } }],
    ['proposer empty', { type: 'prepare', epoch: 3, ballot: { round: 99, proposer: '' } }],
    ['proposer a number', { type: 'prepare', epoch: 3, ballot: { round: 99, proposer: 1 } }],
    ['accept without view', { type: 'accept', epoch: 3, ballot }],
    ['accept of a view for another epoch', { type: 'accept', epoch: 3, ballot, view: view(4, ['A']) }],
    ['accept with no members', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [] } }],
    ['members not an array', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: 'A' } }],
    ['a member without port', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ id: 'A', host: 'h', zone: '', weight: 1 }] } }],
    ['a port out of range', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), port: 70000 }] } }],
    ['a negative weight', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), weight: -1 }] } }],
    ['a NaN weight', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), weight: NaN }] } }],
    ['a weight of 0 (it would stop every I/O of the cluster)', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), weight: 0 }] } }],
    ['a weight that is not whole', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), weight: 1.5 }] } }],
    ['an empty host', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), host: '' }] } }],
    ['a host that is no address', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), host: 'a b' }] } }],
    ['a zone too long', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [{ ...member('A'), zone: 'z'.repeat(65) }] } }],
    ['an empty member id', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [member('')] } }],
    ['members unsorted', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [member('B'), member('A')] } }],
    ['members duplicated', { type: 'accept', epoch: 3, ballot, view: { epoch: 3, members: [member('A'), member('A')] } }],
    ['decided without view', { type: 'decided' }],
    ['decided of epoch 0', { type: 'decided', view: { epoch: 0, members: [member('A')] } }],
    ['promise sent as a request', { type: 'promise', epoch: 3, ballot, accepted: null }],
    ['promise with an accepted value of another epoch', { type: 'promise', epoch: 3, ballot, accepted: { ballot, view: view(4, ['A']) } }],
    ['accepted sent as a request', { type: 'accepted', epoch: 3, ballot, signature: 'ab'.repeat(64) }],
    ['decided with a signature that is not 64 bytes', { type: 'decided', view: v3, certificate: { ballot, votes: [{ voter: 'A', signature: 'ab' }] } }],
    ['decided with votes that are not an array', { type: 'decided', view: v3, certificate: { ballot, votes: 'A' } }],
    ['decided with a certificate without ballot', { type: 'decided', view: v3, certificate: { votes: [] } }],
    ['a view whose removed ids are unsorted', { type: 'decided', view: { ...v3, removed: ['Y', 'X'] }, certificate: null }],
    ['a view that lists a removed id as a member', { type: 'decided', view: { ...v3, removed: ['A'] }, certificate: null }],
    ['a view whose manual flag is false', { type: 'decided', view: { ...v3, manual: false }, certificate: null }],
    ['a view that lists as down a node that is not a member', { type: 'decided', view: { ...v3, down: [{ id: 'Z', since: 1 }] }, certificate: null }],
    ['a view whose down members are unsorted', { type: 'decided', view: { ...v3, down: [{ id: 'B', since: 1 }, { id: 'A', since: 1 }] }, certificate: null }],
    ['a view with every member down', { type: 'decided', view: { ...v3, down: v3.members.map(m => ({ id: m.id, since: 1 })) }, certificate: null }],
    ['a view whose down member has no time', { type: 'decided', view: { ...v3, down: [{ id: 'A' }] }, certificate: null }],
    ['a view whose down list is empty', { type: 'decided', view: { ...v3, down: [] }, certificate: null }],
    ['query without epoch', { type: 'query' }],
    ['nack sent as a request', { type: 'nack', epoch: 3, ballot, promised: ballot }]
  ]
  for (const [what, msg] of bad) {
    const err = await sheepError(() => k.handle('X', msg))
    t.equal(err.code, 'EINVAL', `${what}: EINVAL (${err.message})`)
    t.match(err.message, /from X/, `${what}: the error names the sender`)
  }
  t.equal(storage.saves, 0, 'nothing was saved')
  t.equal(k.view?.epoch, 2, 'the view did not move')
  t.same(await k.handle('A', prepare(1, 'A')), { type: 'promise', epoch: 3, ballot: { round: 1, proposer: 'A' }, accepted: null },
    'and no promise was made: round 1 is still promised')

  t.same(parseMessage(accept(2, 'A', v3)), accept(2, 'A', v3), 'a valid message parses to an equal copy')
  t.same(parseMessage({ type: 'query', epoch: 0, junk: 1 }), { type: 'query', epoch: 0 }, 'unknown extra fields are dropped')

  // Garbage in answers: B answers A with nonsense; A treats it as silence and decides with C.
  const c = new Cluster(8, ['A', 'B', 'C'])
  const base = c.seedHistory()
  await c.startAll()
  c.mangle = (from, msg) => from === 'B' ? { ...msg, epoch: 'soon' } : msg
  const decided = await drive(c.sim, c.keeper('A').propose({ members: withWeight(base.members, 'A', 5) }))
  t.equal(decided.epoch, 3, 'A decided despite B\'s garbage')
  t.same(c.problems, [])
})

// ---------------------------------------------------------------------------------------------
// 9. Signed votes: a member that lies cannot make the others adopt a view nobody decided

t.test('9a. certificates: a majority of valid votes of the previous view\'s members, for one ballot', async t => {
  const prev: View = { ...view(4, ['A', 'B', 'C', 'D']), removed: ['Z'] }
  const next = view(5, ['A', 'B', 'C'])
  const ballot = { round: 7, proposer: 'A' }
  const votes = simVotes('A')
  const problem = (c: Certificate | null, v = next): string | null => certificateProblem(prev, v, c, votes)
  t.equal(problem(certify(next, ballot, ['A', 'B', 'C'])), null, '3 valid votes of 4 members: a majority')
  t.equal(problem(certify(next, ballot, ['D', 'B', 'C', 'A'])), null, 'all 4, in any order')
  t.match(problem(null), /no votes/, 'no certificate')
  t.match(problem(certify(next, ballot, ['A', 'B'])), /2 valid votes of members of view 4, 3 needed/, '2 of 4 is no majority')
  t.match(problem(certify(next, ballot, ['A', 'B', 'B', 'B'])), /2 valid votes/, 'a voter counts once')
  t.match(problem(certify(next, ballot, ['A', 'B', 'E'])), /2 valid votes/, 'a non-member\'s vote does not count')
  t.match(problem(certify(next, ballot, ['A', 'B', 'Z'])), /2 valid votes/, 'a removed key\'s vote does not count')
  const forged = certify(next, ballot, ['A', 'B'])
  forged.votes.push({ voter: 'C', signature: simVotes('A').sign(ballot, next) })
  t.match(problem(forged), /2 valid votes/, 'a vote signed by another key than its voter\'s does not count')
  const mixed = certify(next, ballot, ['A', 'B'])
  mixed.votes.push({ voter: 'C', signature: simVotes('C').sign({ round: 6, proposer: 'C' }, next) })
  t.match(problem(mixed), /2 valid votes/, 'a vote under another ballot does not count')
  const other = view(5, ['A', 'B', 'D'])
  t.match(problem(certify(next, ballot, ['A', 'B', 'C']), other), /0 valid votes/, 'votes for one view do not certify another')
  t.match(problem(certify(view(6, ['A']), ballot, ['A', 'B', 'C']), view(6, ['A'])), /does not follow view 4/, 'only the next epoch')
  const flipped = certify(next, ballot, ['A', 'B', 'C'])
  const sig = Buffer.from(flipped.votes[2]?.signature ?? '', 'hex')
  sig[5] = (sig[5] as number) ^ 1
  flipped.votes[2] = { voter: 'C', signature: sig.toString('hex') }
  t.match(problem(flipped), /2 valid votes/, 'a signature with one bit flipped does not count')
})

t.test('9b. an acceptor refuses a forged decided view and logs it; it takes one with a majority of votes', async t => {
  const lines: string[] = []
  const storage = new TestStorage(stateWith([view(1, ['A']), view(2, ['A', 'B', 'C'])]))
  const k = new ViewKeeper({ self: 'B', votes: simVotes('B'), storage, transport: silent, log: line => lines.push(line) })
  await k.open()
  const forged = view(3, ['C'])
  const ballot = { round: 1, proposer: 'C' }
  const tries: Array<[string, Certificate | null]> = [
    ['no certificate', null],
    ['only the forger\'s own vote', certify(forged, ballot, ['C'])],
    ['the forger\'s vote and made-up ones of the others', { ballot, votes: [...certify(forged, ballot, ['C']).votes, { voter: 'A', signature: 'ab'.repeat(64) }, { voter: 'B', signature: 'cd'.repeat(64) }] }],
    ['votes the others gave to another view', { ballot, votes: [...certify(forged, ballot, ['C']).votes, ...certify(view(3, ['A', 'B', 'C']), ballot, ['A']).votes] }]
  ]
  for (const [what, certificate] of tries) {
    t.equal(await k.handle('C', { type: 'decided', view: forged, certificate }), null, `${what}: no answer`)
    t.equal(k.view?.epoch, 2, `${what}: not adopted`)
  }
  t.match(lines, [/^refused view 3 from C: it carries no votes$/], 'the refusal is logged with the sender and why, once per sender and epoch (a liar is asked again at every membership check)')
  await k.handle('D', { type: 'decided', view: forged, certificate: null })
  t.match(lines[1], /^refused view 3 from D: /, 'another sender is logged too')
  t.equal(storage.saves, 0, 'nothing was saved')
  const good = view(3, ['A', 'B'])
  await k.handle('A', { type: 'decided', view: good, certificate: certify(good, { round: 2, proposer: 'A' }, ['A', 'C']) })
  t.same(k.view, good, 'a view with 2 valid votes of the 3 members is adopted')
  t.same(storage.state?.certificates.at(-1), certify(good, { round: 2, proposer: 'A' }, ['A', 'C']), 'and saved with its certificate')
  await k.close()
})

t.test('9c. a lying member in a live cluster: its forged views and votes change nothing', async t => {
  const { c, base } = await seededCluster(91)
  // E lies: it broadcasts a view of its own, first with no votes, then with votes it signed
  // itself in the others' names, and every 'accepted' it sends carries a forged signature.
  const forged: View = { epoch: 3, members: [member('E', 9)] }
  const ballot = { round: 50, proposer: 'E' }
  c.mangle = (from, msg) => from === 'E' && msg.type === 'accepted' ? { ...msg, signature: simVotes('E').sign(msg.ballot, forged) } : msg
  for (const certificate of [null, { ballot, votes: ['A', 'B', 'C', 'E'].map(id => ({ voter: id, signature: simVotes('E').sign(ballot, forged) })) }]) {
    for (const id of ['A', 'B', 'C', 'D']) await drive(c.sim, c.keeper(id).handle('E', { type: 'decided', view: forged, certificate }))
  }
  for (const id of ['A', 'B', 'C', 'D']) t.equal(c.keeper(id).view?.epoch, 2, `${id} did not adopt the forged view`)
  // A proposes: E's forged vote does not count, so A needs 3 of A, B, C, D.
  c.cut = (from, to) => (from === 'B' || to === 'B') && (from === 'A' || to === 'A')
  const decided = await drive(c.sim, c.keeper('A').propose({ members: withWeight(base.members, 'A', 3) }))
  t.same(decided, { epoch: 3, members: withWeight(base.members, 'A', 3) }, 'A decided with the honest majority (C, D and itself)')
  c.cut = () => false
  await c.sim.run(() => false, 200)
  for (const id of ['C', 'D']) t.same(c.keeper(id).view, decided, `${id} learned it from the commit`)
  t.same(await drive(c.sim, c.keeper('B').refresh(['A'])), decided, 'B, cut off from A, learns it when it asks')
  t.same(c.problems, [])
})

t.test('9d. a node that missed views fetches them, each checked; a forged step stops it', async t => {
  const { c, base } = await seededCluster(92)
  c.crash('E')
  let v = base
  for (let i = 0; i < 3; i++) v = await drive(c.sim, c.keeper('A').propose({ members: withWeight(v.members, 'A', i + 1) }))
  await c.sim.run(() => false, 100)
  await c.start('E')
  // B lies about epoch 3 when E asks for it; A tells the truth.
  c.mangle = (from, msg) => from === 'B' && msg.type === 'decided' && msg.view.epoch === 3 ? { ...msg, view: view(3, ['B']) } : msg
  await drive(c.sim, c.keeper('E').refresh(['B']))
  t.equal(c.keeper('E').view?.epoch, 2, 'a chain with a forged step is not taken')
  await drive(c.sim, c.keeper('E').refresh(['A']))
  t.same(c.keeper('E').view, v, 'from an honest member it fetches views 3 and 4, then takes view 5')
  t.same(c.keeper('E').history.map(h => h.epoch), [1, 2, 3, 4, 5], 'with no gap')
  t.same(c.problems, [])
})
