// One node's membership in the cluster: the mesh of connections, the agreed view and its history,
// and the loop that proposes a new view when the members this node can reach differ from it.
//
// How this works: every node knows the committed view (./view-agreement.ts keeps it on disk) and
// which nodes it is connected to (./mesh.ts). The coordinator - the member of the current view
// with the lowest id among those this node can reach, itself included - proposes a new view when
// a member is gone (its links closed: a few seconds after a kill or freeze) or a connected node
// that is not a member asks to join (its hello shows no view with it in). Paxos among the current
// members decides; other nodes learn the result from the commit broadcast, or from a newer view
// in a peer's hello. Requests are answered only by nodes whose epoch is the sender's.

import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from '../errors'
import { agreement, decode, encode, Op, type Request, type Response } from './messages'
import { type Address, Mesh, type MeshTiming, type Peer } from './mesh'
import type { Link } from './link'
import { type Identity, writeDurably } from './identity'
import { Placement } from './placement'
import { hasMajority, type AgreementMessage, type PersistedState, ViewKeeper } from './view-agreement'
import { type Member, memberProblem, type View } from './view'

export interface ClusterTiming extends MeshTiming {
  /** How often membership is checked besides on connection events. */
  checkMs: number
  /** Timeout of one agreement request. */
  agreeTimeoutMs: number
}

export const DEFAULT_CLUSTER_TIMING: Omit<ClusterTiming, keyof MeshTiming> = { checkMs: 500, agreeTimeoutMs: 1000 }

export interface ClusterOptions {
  storeDir: string
  identity: Identity
  host: string
  /** Null: no direct TCP path (objects over Hyperswarm only). */
  tcpPort: number | null
  bootstrapPort: number | null
  zone: string
  /** Capacity this node contributes, in whole GiB (>= 1): its share of objects. */
  weight: number
  /** Joining an existing cluster: never found one of our own. */
  joining: boolean
  log: (line: string) => void
  timing?: Partial<ClusterTiming>
}

/** Serves object requests (./replica.ts); set once the object layer is up. */
export type ObjectHandler = (req: Request, from: Link) => Promise<Partial<Response>>

const VIEWS_FILE = 'views.json'

/** Emits 'view' (view, previous) after each newer committed view, 'notify' (oid) from peers. */
export class Cluster extends EventEmitter {
  readonly id: string
  readonly mesh: Mesh
  private readonly opts: ClusterOptions
  private readonly timing: ClusterTiming
  private readonly keeper: ViewKeeper
  private placementCache: { epoch: number, placement: Placement } | null = null
  private objectHandler: ObjectHandler | null = null
  private checkTimer: NodeJS.Timeout | null = null
  private checking = false
  private closed = false

  constructor (opts: ClusterOptions) {
    super()
    this.opts = opts
    this.timing = { ...DEFAULT_CLUSTER_TIMING, ...opts.timing } as ClusterTiming
    this.id = opts.identity.keyPair.publicKey.toString('hex')
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
      requestTimeoutMs: this.timing.agreeTimeoutMs
    })
    this.mesh = new Mesh({
      keyPair: opts.identity.keyPair,
      secret: opts.identity.secret,
      host: opts.host,
      tcpPort: opts.tcpPort,
      bootstrap: opts.identity.bootstrap,
      bootstrapPort: opts.bootstrapPort,
      self: () => ({ member: this.self, view: this.view ?? { epoch: 0, members: [] } }),
      wanted: () => (this.view?.members ?? []).map(m => m.id),
      onRequest: async (req, from) => await this.serve(req, from),
      log: opts.log,
      timing: opts.timing
    })
    this.keeper.onChange((view, previous) => {
      this.opts.log(`view ${view.epoch}: ${view.members.length} member${view.members.length === 1 ? '' : 's'} (${view.members.map(m => m.id.slice(0, 8)).join(', ')})`)
      this.emit('view', view, previous)
      this.check()
    })
  }

  /** This node as a member: its address is the mesh's TCP listener. */
  get self (): Member {
    return { id: this.id, host: this.opts.host, port: this.mesh.tcpPort, zone: this.opts.zone, weight: this.opts.weight }
  }

  get view (): View | null { return this.keeper.view }
  get epoch (): number { return this.keeper.view?.epoch ?? 0 }
  get bootstrapList (): Address[] { return this.mesh.bootstrapList }
  get secret (): Buffer { return this.opts.identity.secret }

  /** Placement over the current view (empty before this node has one). */
  get placement (): Placement {
    const view = this.view
    if (view === null) throw SheepError.unreachable('this node is not a member of a cluster view yet')
    if (this.placementCache?.epoch !== view.epoch) this.placementCache = { epoch: view.epoch, placement: new Placement(view.members) }
    return this.placementCache.placement
  }

  /** Whether this node reaches a majority of its view: a minority must not accept writes. */
  get quorate (): boolean {
    const view = this.view
    if (view === null || !view.members.some(m => m.id === this.id)) return false
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
    await this.mesh.start()
    if (this.view === null && !this.opts.joining) await this.keeper.found(this.self)
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
    if (this.quorate) return
    const epoch = this.epoch
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (!this.quorate && this.epoch === epoch) return
        stop()
        resolve()
      }
      const stop = (): void => {
        clearTimeout(timer)
        this.mesh.off('peer-up', check)
        this.off('view', check)
      }
      const timer = setTimeout(() => {
        stop()
        reject(SheepError.unreachable(`this node cannot reach a majority of its view (epoch ${epoch}), and no new view came within ${ms} ms`))
      }, ms)
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
      default:
        if (this.objectHandler === null) throw SheepError.unreachable('this node does not serve objects yet')
        return await this.objectHandler(req, from)
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
    if (view === null || !view.members.some(m => m.id === this.id)) return
    const reachable = new Map<string, Peer>(peers.map(p => [p.id, p]))
    const alive = view.members.filter(m => m.id === this.id || reachable.has(m.id))
    if (!hasMajority(view, alive.map(m => m.id))) return
    const coordinator = alive.map(m => m.id).sort()[0]
    if (coordinator !== this.id) return
    // Newcomers: connected nodes that are not members and whose own view does not list them yet.
    const joiners = peers.filter(p => !view.members.some(m => m.id === p.id)).map(p => p.hello.self)
    const desired = [...alive.map(m => m.id === this.id ? this.self : (reachable.get(m.id)?.hello.self ?? m)), ...joiners]
    const same = desired.length === view.members.length && desired.every(d => view.members.some(m => sameMember(m, d)))
    if (same) return
    this.opts.log(`proposing view ${view.epoch + 1}: ${desired.map(m => m.id.slice(0, 8)).join(', ')}`)
    await this.keeper.propose({ members: desired })
  }
}

const EMPTY = new Uint8Array(0)

function sameMember (a: Member, b: Member): boolean {
  return a.id === b.id && a.host === b.host && a.port === b.port && a.zone === b.zone && a.weight === b.weight
}

async function readJson (file: string): Promise<PersistedState | null> {
  try {
    return JSON.parse(await fs.promises.readFile(file, 'utf8')) as PersistedState
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw SheepError.corrupt(`${file}: ${(err as Error).message}`)
  }
}
