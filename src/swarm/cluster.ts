// One node's membership in the cluster: the mesh of connections, the agreed view and its history,
// and the loop that proposes a new view when the members this node can reach differ from it.
//
// How this works: every node knows the committed view (./view-agreement.ts keeps it on disk) and
// which nodes it is connected to (./mesh.ts). The coordinator - the member of the current view
// with the lowest id among those this node can reach, itself included - proposes a new view when
// a member is gone (its links closed: a few seconds after a kill or freeze) or a connected node
// that is not a member asks to join (its hello shows no view with it in) and admission is
// automatic; with manual admission (the view says so) such a node stays a candidate until an
// operator admits it (admit()). Removing a node (remove()) is a view change too: it leaves the
// members and joins the view's removed list, which the proof step of every connection checks
// (./admission.ts). Paxos among the current members decides; other nodes learn the result from
// the commit broadcast, or from a newer view in a peer's hello, and take it only with the
// majority's signed votes (./view-agreement.ts). Requests are answered only by nodes whose epoch
// is the sender's. Rotating the secret (rotateSecret()) tells every member the new one in two
// steps, so that no two members ever refuse each other's proofs.

import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from '../errors'
import type { WireMode } from './frames'
import { agreement, decode, encode, Op, type Request, type Response, secretUpdate } from './messages'
import { admissionProblem, listenedSecrets, type Secrets } from './admission'
import { type Address, DEFAULT_MESH_TIMING, Mesh, type MeshTiming } from './mesh'
import type { Link } from './link'
import { type Identity, saveSecrets, writeDurably } from './identity'
import { newSecret } from './proof'
import { Placement } from './placement'
import { hasMajority, type AgreementMessage, type PersistedState, ViewKeeper } from './view-agreement'
import { nextView } from './next-view'
import { isDown, type Member, memberProblem, type View } from './view'
import { voteSigner } from './votes'

export interface ClusterTiming extends MeshTiming {
  /** How often membership is checked besides on connection events. */
  checkMs: number
  /** Timeout of one agreement request. */
  agreeTimeoutMs: number
}

export const DEFAULT_CLUSTER_TIMING: Omit<ClusterTiming, keyof MeshTiming> = { checkMs: 500, agreeTimeoutMs: 1000 }

/** How long an operator's view change (admit, remove) keeps trying while other proposals win. */
const CHANGE_TIMEOUT_MS = 30_000
/** Wait between two tries of an operator's view change. */
const CHANGE_RETRY_MS = 200
/** The shortest id prefix an operator may name a node by. */
const MIN_ID_PREFIX = 8

export interface ClusterOptions {
  storeDir: string
  identity: Identity
  host: string
  /** Null: no direct TCP path (objects over Hyperswarm only). */
  tcpPort: number | null
  /** What the direct path's frames hide (./frames.ts); default encrypted. */
  wire?: WireMode
  bootstrapPort: number | null
  zone: string
  /** Capacity this node contributes, in whole GiB (>= 1): its share of objects. */
  weight: number
  /** Joining an existing cluster: never found one of our own. */
  joining: boolean
  /** When founding: joiners wait as candidates until an operator admits them (kept in the view). */
  manualAdmission: boolean
  /**
   * How long a member gone from the mesh stays down (kept in placement, taking no I/O) before the
   * coordinator takes it out of the view and its objects are copied elsewhere; 0: out at once.
   */
  outAfterMs: number
  log: (line: string) => void
  timing?: Partial<ClusterTiming>
}

/** Serves object requests (./replica.ts); set once the object layer is up. */
export type ObjectHandler = (req: Request, from: string) => Promise<Partial<Response>>

const VIEWS_FILE = 'views.json'

/** Emits 'view' (view, previous) after each newer committed view, 'notify' (oid) from peers. */
export class Cluster extends EventEmitter {
  readonly id: string
  readonly mesh: Mesh
  private readonly opts: ClusterOptions
  private readonly timing: ClusterTiming
  private readonly keeper: ViewKeeper
  /** Cluster.bootEpoch. */
  private storedEpoch = 0
  private secrets: Secrets
  private placementCache: { epoch: number, placement: Placement } | null = null
  private largestCache = { epoch: -1, members: 0 }
  /** Members the current view added, and until when their links are given to open (see nextView). */
  private arriving: { ids: string[], until: number } = { ids: [], until: 0 }
  private objectHandler: ObjectHandler | null = null
  private checkTimer: NodeJS.Timeout | null = null
  private checking = false
  private closed = false

  constructor (opts: ClusterOptions) {
    super()
    this.opts = opts
    this.timing = { ...DEFAULT_MESH_TIMING, ...DEFAULT_CLUSTER_TIMING, ...opts.timing }
    this.id = opts.identity.keyPair.publicKey.toString('hex')
    this.secrets = opts.identity.secrets
    const file = path.join(opts.storeDir, VIEWS_FILE)
    this.keeper = new ViewKeeper({
      self: this.id,
      storage: {
        load: async () => await readJson(file),
        save: async (state: PersistedState) => writeDurably(file, JSON.stringify(state) + '\n')
      },
      transport: {
        request: async (to, msg, timeoutMs) => await this.agree(to, msg, timeoutMs),
        send: (to, msg) => { this.agree(to, msg, this.timing.agreeTimeoutMs).catch(() => {}) }
      },
      votes: voteSigner(opts.identity.keyPair),
      log: opts.log,
      requestTimeoutMs: this.timing.agreeTimeoutMs
    })
    this.mesh = new Mesh({
      keyPair: opts.identity.keyPair,
      secret: () => this.secrets.current,
      topics: () => listenedSecrets(this.secrets),
      gate: (id, proves) => admissionProblem(this.secrets, this.view, id, proves),
      host: opts.host,
      tcpPort: opts.tcpPort,
      wire: opts.wire,
      bootstrap: opts.identity.bootstrap,
      bootstrapPort: opts.bootstrapPort,
      self: () => ({ member: this.self, view: this.view ?? { epoch: 0, members: [] } }),
      wanted: () => (this.view?.members ?? []).map(m => m.id),
      onRequest: async (req, from) => await this.serve(req, from),
      log: opts.log,
      timing: opts.timing
    })
    this.keeper.onChange((view, previous) => {
      this.opts.log(`view ${view.epoch}: ${view.members.length} member${view.members.length === 1 ? '' : 's'} (${view.members.map(m => m.id.slice(0, 8)).join(', ')})` +
        `${view.down === undefined ? '' : `, down: ${view.down.map(d => d.id.slice(0, 8)).join(', ')}`}${view.removed === undefined ? '' : `, ${view.removed.length} removed`}`)
      const before = new Set(previous?.members.map(m => m.id))
      this.arriving = { ids: view.members.map(m => m.id).filter(id => !before.has(id)), until: Date.now() + this.timing.deadAfterMs }
      // The gate refuses a removed key from now on; links it opened before go once it was told.
      for (const id of view.removed ?? []) void this.tellRemoved(id, view)
      if (view.removed?.includes(this.id) === true) this.opts.log('this node was removed from the cluster: its key is refused by every member')
      this.emit('view', view, previous)
      this.check()
    })
  }

  /**
   * Sends node id, which view removed, that view with its votes before dropping its links: once
   * they are gone every member refuses it at the proof step, and only the view tells it why (a
   * removed node that learned nothing went on as a member of the view before, unable to reach a
   * majority, and started again as one).
   */
  private async tellRemoved (id: string, view: View): Promise<void> {
    const decided = this.keeper.decidedOf(view.epoch)
    if (decided !== null) await this.agree(id, decided, this.timing.agreeTimeoutMs)
    this.mesh.drop(id, 'removed from the cluster')
  }

  /** This node as a member: its address is the mesh's TCP listener. */
  get self (): Member {
    return { id: this.id, host: this.opts.host, port: this.mesh.tcpPort, zone: this.opts.zone, weight: this.opts.weight }
  }

  get view (): View | null { return this.keeper.view }

  /** Every node a view this node knows listed as a member, but those removed for good. */
  knownNodes (): Set<string> {
    const ids = new Set<string>()
    for (const v of this.keeper.history) for (const m of v.members) ids.add(m.id)
    for (const id of this.view?.removed ?? []) ids.delete(id)
    return ids
  }
  get epoch (): number { return this.keeper.view?.epoch ?? 0 }

  /**
   * The epoch of the view this node had stored when it started (0: none). A copy its last run
   * left uncertain holds no change stamped in a later epoch: that run never knew one.
   */
  get bootEpoch (): number { return this.storedEpoch }
  get bootstrapList (): Address[] { return this.mesh.bootstrapList }
  get secret (): Buffer { return this.secrets.current }

  /** Connected nodes that are not members (nor removed): with manual admission they wait for admit(). */
  get candidates (): Member[] {
    const view = this.view
    return this.mesh.connected.filter(p => view?.members.some(m => m.id === p.id) !== true).map(p => p.hello.self)
  }

  /** This node is not a member yet and a peer's view says joiners wait to be admitted. */
  get awaitingAdmission (): boolean {
    return this.mesh.connected.some(p => p.hello.view.manual === true && !p.hello.view.members.some(m => m.id === this.id))
  }

  /**
   * The most members a view this node knows had. A change keeps needing the replicas a cluster
   * of that size gave it after members went out (Gateway.needed); a founding node alone writes.
   */
  get largestView (): number {
    if (this.largestCache.epoch !== this.epoch) {
      let members = 0
      for (const v of this.keeper.history) members = Math.max(members, v.members.length)
      this.largestCache = { epoch: this.epoch, members }
    }
    return this.largestCache.members
  }

  /** Placement over the current view (empty before this node has one). */
  get placement (): Placement {
    const view = this.view
    if (view === null) throw SheepError.unreachable('this node is not a member of a cluster view yet')
    if (this.placementCache?.epoch !== view.epoch) this.placementCache = { epoch: view.epoch, placement: new Placement(view.members) }
    return this.placementCache.placement
  }

  /**
   * Whether this node reaches a majority of its view: a minority must not accept writes. A node
   * its view lists as down is not either, until a view lists it up again: the others wrote
   * without it meanwhile, and its copies are current only once that view's recovery made them so.
   */
  get quorate (): boolean {
    const view = this.view
    if (view === null || !view.members.some(m => m.id === this.id) || isDown(view, this.id)) return false
    return hasMajority(view, [this.id, ...this.mesh.connected.map(p => p.id)])
  }

  link (id: string): Link | null { return this.mesh.link(id) }

  setObjectHandler (handler: ObjectHandler): void { this.objectHandler = handler }

  async start (): Promise<void> {
    // Peers refuse a hello whose address, zone or weight is out of range (./view.ts): say so
    // here rather than be refused and banned by every one of them.
    const problem = memberProblem({ ...this.self, port: 0 })
    if (problem !== null) throw SheepError.invalid(`this node's member record: ${problem}`)
    await this.keeper.open()
    this.storedEpoch = this.epoch
    await this.mesh.start()
    if (this.view === null && !this.opts.joining) await this.keeper.found(this.self, this.opts.manualAdmission)
    else if (this.view !== null) this.opts.log(`rejoining with view ${this.view.epoch} from the store`)
    this.mesh.on('peer-up', () => this.check())
    this.mesh.on('peer-down', () => this.check())
    this.mesh.on('hello', () => this.check())
    this.scheduleCheck()
  }

  /**
   * Resolves once this node reaches a majority of its view, or a new view comes (links come back
   * without one when this node was only cut off, or frozen, for a moment); ENOTCONN after ms.
   */
  async quorum (ms: number): Promise<void> {
    const epoch = this.epoch
    if (await this.until(() => this.quorate || this.epoch !== epoch, ms)) return
    throw SheepError.unreachable(`this node cannot reach a majority of its view (epoch ${epoch}), and no new view came within ${ms} ms`)
  }

  /**
   * The link to member id of the current view, waiting up to ms for it to open (just after a view
   * commits, a member's link may still be on its way); null if it does not, or the view moves on.
   */
  async linkTo (id: string, ms: number): Promise<Link | null> {
    if (this.view?.members.some(m => m.id === id) !== true) return this.link(id)
    const epoch = this.epoch
    await this.until(() => this.link(id) !== null || this.epoch !== epoch, ms)
    return this.link(id)
  }

  /** Whether `done` holds now or turns true within ms, asked again at each new link and each view. */
  private async until (done: () => boolean, ms: number): Promise<boolean> {
    if (done()) return true
    return await new Promise<boolean>(resolve => {
      const check = (): void => { if (done()) finish(true) }
      const finish = (result: boolean): void => {
        clearTimeout(timer)
        this.mesh.off('peer-up', check)
        this.off('view', check)
        resolve(result)
      }
      const timer = setTimeout(() => finish(false), ms)
      this.mesh.on('peer-up', check)
      this.on('view', check)
    })
  }

  /** Resolves with the first view newer than `epoch` this node learns; ENOTCONN after ms. */
  async nextView (epoch: number, ms: number): Promise<View> {
    const now = this.view
    if (now !== null && now.epoch > epoch) return now
    return await new Promise<View>((resolve, reject) => {
      const done = (view: View): void => {
        if (view.epoch <= epoch) return
        clearTimeout(timer)
        this.off('view', done)
        resolve(view)
      }
      const timer = setTimeout(() => {
        this.off('view', done)
        reject(SheepError.unreachable(`no new view after epoch ${epoch} within ${ms} ms`))
      }, ms)
      this.on('view', done)
    })
  }

  /**
   * The id of the member or candidate whose id starts with prefix (at least MIN_ID_PREFIX hex
   * digits, as `sheep node list` shows them); ENOENT if none, EINVAL if several.
   */
  resolveId (prefix: string): string {
    if (!new RegExp(`^[0-9a-f]{${MIN_ID_PREFIX},64}$`).test(prefix)) throw SheepError.invalid(`a node id is ${MIN_ID_PREFIX} to 64 hex digits, not ${JSON.stringify(prefix.slice(0, 80))}`)
    const ids = [...new Set([...(this.view?.members ?? []), ...this.candidates].map(m => m.id))].filter(id => id.startsWith(prefix))
    if (ids.length === 0) throw SheepError.notFound(`a member or candidate with id ${prefix}`)
    if (ids.length > 1) throw SheepError.invalid(`id ${prefix} names ${ids.length} nodes: give more digits`)
    return ids[0] as string
  }

  /** Makes candidate `id` (connected, not a member) a member; resolves with the view that lists it. */
  async admit (id: string): Promise<View> {
    return await this.changeView(`admitting ${id}`, v => v.members.some(m => m.id === id), v => {
      const peer = this.mesh.peer(id)
      if (peer === undefined) throw SheepError.unreachable(`node ${id} is not connected to this node: start it with a join token first`)
      return { members: [...v.members, peer.hello.self] }
    })
  }

  /**
   * Takes node `id` out for good: it leaves the members and joins the view's removed list, so its
   * key is refused by every member from then on, whatever secret it proves.
   */
  async remove (id: string): Promise<View> {
    if (id === this.id) throw SheepError.invalid('a node cannot remove itself: run sheep node remove on another member')
    return await this.changeView(`removing ${id}`, v => v.removed?.includes(id) === true,
      v => ({ members: v.members.filter(m => m.id !== id), removed: [...v.removed ?? [], id] }))
  }

  /**
   * Gives the cluster a new secret, in two steps to every member (see the note at the top):
   * first as next, then as current. Resolves with the members that did not take both steps:
   * they must be restarted with the new join token (docs/ARCHITECTURE.md, "Identity and admission").
   */
  async rotateSecret (): Promise<{ missed: string[] }> {
    const view = this.view
    if (view === null || !this.quorate) throw SheepError.unreachable('this node does not reach a majority of its view: the secret cannot be rotated now')
    const secret = newSecret()
    const others = view.members.filter(m => m.id !== this.id).map(m => m.id)
    const tell = async (commit: boolean): Promise<string[]> => {
      const failed = await Promise.all(others.map(async id => {
        try {
          const res = await this.link(id)?.call({ epoch: this.epoch, op: Op.Secret, oid: 0n, offset: 0, length: 0, version: 0, data: encode(secretUpdate, { secret, commit }) }, this.timing.agreeTimeoutMs)
          return res?.error === '' ? null : id
        } catch {
          return id
        }
      }))
      return failed.filter((id): id is string => id !== null)
    }
    this.takeSecret(secret, false)
    const first = await tell(false)
    this.takeSecret(secret, true)
    const second = await tell(true)
    return { missed: [...new Set([...first, ...second])] }
  }

  /** Tells every connected member that object oid changed (best effort). */
  notify (oid: bigint): void {
    for (const p of this.mesh.connected) {
      this.link(p.id)?.call({ epoch: this.epoch, op: Op.Notify, oid, offset: 0, length: 0, version: 0, data: EMPTY }, this.timing.agreeTimeoutMs).catch(() => {})
    }
  }

  async close (): Promise<void> {
    this.closed = true
    if (this.checkTimer !== null) clearTimeout(this.checkTimer)
    await this.keeper.close()
    await this.mesh.close()
  }

  private async serve (req: Request, from: Link): Promise<Partial<Response>> {
    switch (req.op) {
      case Op.Agree: {
        const answer = await this.keeper.handle(from.remoteId, decode(agreement, req.data))
        return { data: answer === null ? EMPTY : encode(agreement, answer) }
      }
      case Op.Notify:
        this.emit('notify', req.oid)
        return {}
      case Op.Secret: {
        if (this.view?.members.some(m => m.id === from.remoteId) !== true) throw new SheepError('EPERM', 'only a member may rotate the cluster secret')
        const update = decode(secretUpdate, req.data)
        this.takeSecret(Buffer.from(update.secret), update.commit)
        return {}
      }
      default:
        if (this.objectHandler === null) throw SheepError.unreachable('this node does not serve objects yet')
        return await this.objectHandler(req, from.remoteId)
    }
  }

  private async agree (to: string, msg: AgreementMessage, timeoutMs: number): Promise<AgreementMessage | null> {
    const link = this.link(to)
    if (link === null) return null
    try {
      const res = await link.call({ epoch: this.epoch, op: Op.Agree, oid: 0n, offset: 0, length: 0, version: 0, data: encode(agreement, msg) }, timeoutMs)
      if (res.error !== '' || res.data.length === 0) return null
      return decode(agreement, res.data)
    } catch {
      return null
    }
  }

  /** One rotation step on this node: saved before it is answered, then the topics follow. */
  private takeSecret (secret: Buffer, commit: boolean): void {
    const s = this.secrets
    if (commit) {
      if (s.current.equals(secret)) return
      this.secrets = { current: secret, next: null, previous: s.current }
    } else {
      if (s.current.equals(secret) || s.next?.equals(secret) === true) return
      this.secrets = { ...s, next: secret }
    }
    saveSecrets(this.opts.storeDir, this.secrets)
    this.opts.log(commit ? 'cluster secret rotated: proving with the new one' : 'a new cluster secret was announced (rotation under way)')
    // Not awaited: announcing on a topic takes seconds of DHT round trips, and the member that
    // rotates waits for this answer (the links between members do not depend on it).
    this.mesh.retopic().catch(err => this.opts.log(`announcing on the new secret's topic: ${(err as Error).message}`))
  }

  /**
   * Proposes next(view) until done(view) holds: the coordinator's own proposals may win rounds
   * meanwhile, and then the change is made again on the view they decided.
   */
  private async changeView (what: string, done: (v: View) => boolean, next: (v: View) => { members: Member[], removed?: string[] }): Promise<View> {
    const deadline = Date.now() + CHANGE_TIMEOUT_MS
    for (;;) {
      const view = this.view
      if (view === null || !view.members.some(m => m.id === this.id)) throw SheepError.invalid('this node is not a member of a view')
      if (done(view)) return view
      if (Date.now() > deadline) throw SheepError.busy(`${what}: no view was decided within ${CHANGE_TIMEOUT_MS} ms`)
      try {
        await this.keeper.propose(next(view))
      } catch (err) {
        if (!(err instanceof SheepError && err.code === 'EBUSY')) throw err
        await new Promise(resolve => setTimeout(resolve, CHANGE_RETRY_MS))
      }
    }
  }

  private scheduleCheck (): void {
    if (this.closed) return
    this.checkTimer = setTimeout(() => {
      this.check()
      this.scheduleCheck()
    }, this.timing.checkMs)
  }

  /** Learns newer views from peers, and proposes the next one if this node is the coordinator. */
  private check (): void {
    if (this.checking || this.closed) return
    this.checking = true
    this.reconcile().catch(err => this.opts.log(`membership: ${(err as Error).message}`)).finally(() => { this.checking = false })
  }

  private async reconcile (): Promise<void> {
    const peers = this.mesh.connected
    const newer = peers.filter(p => p.hello.view.epoch > this.epoch).map(p => p.id)
    if (newer.length > 0) await this.keeper.refresh(newer)
    const view = this.view
    if (view === null) return
    // The periodic check (checkMs) sees out-after pass.
    const now = Date.now()
    const next = nextView(view, {
      self: this.self,
      peers: peers.map(p => p.hello.self),
      now,
      outAfterMs: this.opts.outAfterMs,
      arriving: now < this.arriving.until ? this.arriving.ids : [],
      former: [...this.knownNodes()]
    })
    if (next === null) return
    const downNote = next.down.length === 0 ? '' : ` (down: ${next.down.map(d => d.id.slice(0, 8)).join(', ')})`
    this.opts.log(`proposing view ${view.epoch + 1}: ${next.members.map(m => m.id.slice(0, 8)).join(', ')}${downNote}`)
    await this.keeper.propose(next)
  }
}

const EMPTY = new Uint8Array(0)

async function readJson (file: string): Promise<PersistedState | null> {
  try {
    return JSON.parse(await fs.promises.readFile(file, 'utf8')) as PersistedState
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw SheepError.corrupt(`${file}: ${(err as Error).message}`)
  }
}
