// The composition root: builds one node from its options and starts and stops its parts in order
// (store, images, mount, control socket; the reverse on stop).

import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from './errors'
import { slowpoint } from './failpoints'
import { type CreateOptions, ImageStore, MAX_COPIES } from './cow/image-store'
import { LocalObjectStore, STRAYS_DIR } from './objects/local-store'
import { Scrubber } from './objects/scrub'
import { type Frontend, Mount } from './fuse/mount'
import { ControlServer, type Handlers, type Progress } from './control/server'
import { controlSocketPath } from './control/paths'
import type { ClusterStatus, ForcedCopies, NodeInfo, NodeStatus, RecoveryProgress, ScrubReport } from './control/messages'
import { VERSION } from './version'
import type { ObjectStore, StoreUsage } from './objects/types'
import { type ObjectId, ObjectType, oidToHex, oidType, oidVid } from './objects/oid'
import { epochFloor } from './objects/versions'
// The cluster's modules load only on a cluster node (joinCluster): Hyperswarm and its stack take
// most of a one-host daemon's start-up otherwise, and a restart after a crash is on the clock.
import type { Cluster } from './swarm/cluster'
import type { Gateway } from './swarm/gateway'
import type { Recovery } from './swarm/recovery'
import type { CheckReport } from './swarm/check'
import { isDown, type View } from './swarm/view'
import type { ClusterTokens } from './swarm/write-tokens'
import type { Address, Peer } from './swarm/mesh'
import type { WireMode } from './swarm/frames'

export const DEFAULT_IO_TIMEOUT_MS = 120_000

export interface NodeOptions {
  store: string
  mount: string
  /** Defaults for images made through the mount (create(2)). */
  createOptions?: CreateOptions
  ioTimeout?: number
  /** The FUSE session: the kernel protocol, libfuse 2, or (default) the first of them that works. */
  fuse?: Frontend | 'auto'
  /** The mount root's mode (default 0755, as src/fuse/adapter.ts's DEFAULT_ROOT_MODE). */
  rootMode?: number
  log?: (line: string) => void
  /** Cluster mode: without it the node keeps every object in its own store, with no network. */
  cluster?: ClusterNodeOptions
  /** The background scrub (./objects/scrub.ts); none without it. */
  scrub?: ScrubSettings
}

/** Bytes per second (0: no scrub), and seconds from the end of a pass to the next. */
export interface ScrubSettings { rate: number, interval: number }

export interface ClusterNodeOptions {
  /** Address to bind and advertise (default 127.0.0.1). */
  host: string
  /** Null: no direct TCP path, object traffic over Hyperswarm only (hosts that TCP cannot reach). */
  tcpPort: number | null
  /** plain-authenticated: the direct path's frames are authenticated, not encrypted, where both ends ask for it. */
  wire?: WireMode
  bootstrapPort: number | null
  bootstrap: Address[]
  /** A join token from `sheep cluster token` on a member. */
  join: string | null
  zone: string
  /** When founding: joiners wait as candidates until `sheep node admit` (the view keeps it). */
  admission: 'auto' | 'manual'
  /** Replicas that must take a write when others are down or their disks fail it; 0: a majority of its copies (./swarm/gateway.ts). */
  minCopies: number
  /** Bytes per second recovery's background copies keep to; 0: no bound (./swarm/recovery.ts). */
  recoveryRate?: number
  /** Seconds a member gone from the mesh is down before it is out (./swarm/cluster.ts); 0: out at once. */
  outAfter?: number
}

export const DEFAULT_OUT_AFTER = 600

/** Copies of inodes and the directory: metadata is kept at least this safe. */
const METADATA_COPIES = 3
const DEFAULT_COPIES = 3
const REFRESH_MS = 1000
/** How long `sheep status` waits for the members' store space. */
const RAW_USAGE_WAIT_MS = 1000
/** How long a joining node waits to be let in before its start fails. */
const JOIN_WAIT_MS = 60_000

export class SheepNode {
  readonly storeDir: string
  readonly mountDir: string
  private readonly opts: NodeOptions
  private readonly log: (line: string) => void
  private objects: LocalObjectStore | null = null
  private cluster: Cluster | null = null
  private refreshTimer: NodeJS.Timeout | null = null
  private recovery: Recovery | null = null
  private gateway: Gateway | null = null
  private images: ImageStore | null = null
  private scrubber: Scrubber | null = null
  private mount: Mount | null = null
  private control: ControlServer | null = null
  private startedAt = 0
  private stopping: Promise<void> | null = null
  /** The start in progress, if any. */
  private starting: Promise<void> | null = null
  /** Set by a stop that came while the node was starting: the start gives up at its next step. */
  private stopAsked = false
  /** Resolves when the node has stopped, whoever stopped it. */
  readonly stopped: Promise<void>
  private markStopped!: () => void

  constructor (opts: NodeOptions) {
    this.opts = opts
    this.storeDir = path.resolve(opts.store)
    this.mountDir = path.resolve(opts.mount)
    this.log = opts.log ?? (() => {})
    this.stopped = new Promise(resolve => { this.markStopped = resolve })
  }

  /**
   * Opens the store, the images, the mount and the control socket. A stop that comes meanwhile
   * (SIGTERM) waits for the step in progress; the start then closes what it opened, the mount
   * included, and fails with ESHUTDOWN.
   */
  async start (): Promise<void> {
    this.starting = this.open()
    try {
      await this.starting
    } finally {
      this.starting = null
    }
  }

  private giveUpIfStopping (): void {
    if (this.stopAsked) throw new SheepError('ESHUTDOWN', 'stopped while starting')
  }

  private async open (): Promise<void> {
    this.startedAt = Date.now()
    await ControlServer.check(controlSocketPath(this.mountDir), this.log)
    const objects = new LocalObjectStore(this.storeDir, { log: this.log })
    try {
      await objects.open()
    } catch (err) {
      if (err instanceof SheepError && err.code === 'EBUSY') {
        const pid = readPid(this.storeDir)
        throw SheepError.busy(`store ${this.storeDir} is in use by another sheep daemon${pid ? ` (pid ${pid})` : ''}`)
      }
      throw err
    }
    this.objects = objects
    try {
      this.giveUpIfStopping()
      fs.writeFileSync(path.join(this.storeDir, 'sheep.pid'), `${process.pid}\n`)
      const { store, tokens } = this.opts.cluster === undefined ? { store: objects, tokens: undefined } : await this.joinCluster(objects, this.opts.cluster)
      const soleWriter = this.cluster === null
      const setAside = soleWriter ? async (oid: ObjectId) => await objects.setAside(oid) : undefined
      // df on a cluster: what images of the default copies can still hold, not the members' raw sum.
      const copiesPerByte = (): number => Math.min(this.opts.createOptions?.copies ?? DEFAULT_COPIES, this.cluster?.view?.members.length ?? 1)
      const images = new ImageStore(store, { log: this.log, soleWriter, tokens, setAside, copiesPerByte })
      this.giveUpIfStopping()
      const { collected, strays } = await images.open()
      if (collected > 0) this.log(`collected ${collected} unreferenced objects`)
      if (strays > 0) this.log(`set aside ${strays} objects no image points at in ${path.join(this.storeDir, STRAYS_DIR)} (see sheep status)`)
      this.images = images
      this.recovery?.imagesLoaded()
      this.startScrub(objects)
      if (this.cluster !== null) this.followCluster(this.cluster, images)
      const mount = new Mount(this.mountDir)
      await mount.mount(images, {
        createOptions: this.opts.createOptions ?? {},
        ioTimeout: this.opts.ioTimeout ?? DEFAULT_IO_TIMEOUT_MS,
        frontend: this.opts.fuse ?? 'auto',
        rootMode: this.opts.rootMode,
        log: this.log
      })
      this.mount = mount
      await slowpoint('node-start:mounted') // a signal while the mount is up and the start goes on (tests)
      this.giveUpIfStopping()
      const control = new ControlServer(controlSocketPath(this.mountDir), this.handlers(), this.log)
      await control.listen()
      this.control = control
      this.giveUpIfStopping()
    } catch (err) {
      await this.teardown()
      throw err
    }
    this.log(`sheep ${VERSION} serving ${this.mountDir} from store ${this.storeDir} (pid ${process.pid})`)
  }

  /** Starts the cluster membership and returns the replicated object store over the local one, and the write tokens. */
  private async joinCluster (objects: LocalObjectStore, opts: ClusterNodeOptions): Promise<{ store: ObjectStore, tokens: ClusterTokens }> {
    const [{ Cluster }, { Gateway }, { Recovery }, { replicaHandler }, { ClusterTokens }, { decodeToken, loadIdentity }] = await Promise.all([
      import('./swarm/cluster'), import('./swarm/gateway'), import('./swarm/recovery'), import('./swarm/replica'),
      import('./swarm/write-tokens'), import('./swarm/identity')])
    const token = opts.join === null ? null : decodeToken(opts.join)
    const identity = loadIdentity(this.storeDir, token, opts.bootstrap)
    if (identity.rotatedWhileDown) this.log('the join token carries a new cluster secret: the cluster rotated it while this node was down; the old one is kept as previous')
    const usage = await objects.usage()
    const cluster = new Cluster({
      storeDir: this.storeDir,
      identity,
      host: opts.host,
      tcpPort: opts.tcpPort,
      wire: opts.wire,
      bootstrapPort: opts.bootstrapPort,
      zone: opts.zone,
      // Whole GiB, so that free space moving does not change the member record (and the view).
      weight: Math.max(1, Math.floor(usage.capacity / 2 ** 30)),
      joining: token !== null,
      manualAdmission: opts.admission === 'manual',
      outAfterMs: (opts.outAfter ?? DEFAULT_OUT_AFTER) * 1000,
      log: this.log
    })
    this.cluster = cluster
    let gateway: Gateway | null = null
    let tokens: ClusterTokens | null = null
    const recovery = new Recovery(objects, cluster, {
      replicasOf: oid => oidType(oid) === ObjectType.Data && this.images?.copiesOf(oidVid(oid)) === undefined ? null : (gateway as Gateway).replicasOf(oid),
      widest: oid => cluster.placement.replicas(oid, oidType(oid) === ObjectType.Data ? MAX_COPIES : METADATA_COPIES)
    }, this.log, { rate: opts.recoveryRate ?? 0, minCopies: opts.minCopies })
    this.recovery = recovery
    // Changes made in a later view are newer than any of an earlier one (src/objects/versions.ts);
    // copies a crash left in doubt are settled by recovery.
    await objects.asReplica(() => epochFloor(recovery.stampEpoch), () => cluster.epoch)
    await cluster.start()
    // Everything this node serves, to peers and to itself, waits for its object's recovery first.
    const local = recovery.guarded()
    cluster.setObjectHandler(replicaHandler(local, {
      epoch: () => cluster.epoch,
      bootEpoch: () => cluster.bootEpoch,
      quorate: () => cluster.quorate,
      asPrimary: async (oid, data, expected) => {
        if (gateway === null) throw SheepError.unreachable('this node is still starting')
        return await gateway.asPrimary(oid, data, expected)
      },
      // Before its images are loaded a node has none open, and nothing to write out.
      release: async (vid, purpose) => await this.images?.releaseToken(vid, purpose),
      isMember: id => cluster.view?.members.some(m => m.id === id) === true,
      tokenOf: async vid => {
        if (tokens === null) throw SheepError.unreachable('this node is still starting')
        return await tokens.record(vid)
      },
      writers: recovery,
      checks: recovery,
      forceStart: async only => await recovery.forceStart(only)
    }))
    // A joining node serves nothing until a view lists it; with manual admission it waits for
    // an operator as long as it takes. A removed node never will be listed again.
    let view = cluster.view
    let waitLogged = false
    while (view === null || !view.members.some(m => m.id === cluster.id)) {
      if (view?.removed?.includes(cluster.id) === true) throw SheepError.invalid(`this node (${cluster.id}) was removed from the cluster in view ${view.epoch}: its key is refused; to come back it must start on an empty store, as a new node`)
      try {
        view = await cluster.nextView(view?.epoch ?? 0, JOIN_WAIT_MS)
      } catch (err) {
        if (!(err instanceof SheepError && err.code === 'ENOTCONN' && cluster.awaitingAdmission)) throw err
      }
      this.giveUpIfStopping()
      if (!waitLogged && cluster.awaitingAdmission) {
        waitLogged = true
        this.log(`candidate ${cluster.id}: the cluster admits nodes by hand; run 'sheep node admit ${cluster.id.slice(0, 16)}' on a member`)
      }
    }
    this.log(`member of a cluster of ${view.members.length} (epoch ${view.epoch}); node ${cluster.id}`)
    const copiesOf = (oid: ObjectId): number => oidType(oid) === ObjectType.Data
      ? this.images?.copiesOf(oidVid(oid)) ?? DEFAULT_COPIES
      : METADATA_COPIES
    gateway = new Gateway(local, cluster, { copiesOf, minCopies: opts.minCopies, serveAsItIs: async oid => { await recovery.forceStart(oid) } })
    this.gateway = gateway
    recovery.start(view)
    cluster.on('view', (next: View) => { if (next.members.some(m => m.id === cluster.id)) recovery.start(next) })
    const held = new ClusterTokens(gateway, cluster)
    tokens = held
    gateway.fenceWith((oid, epoch) => held.fence(oid, epoch))
    return { store: gateway, tokens: held }
  }

  /** Picks up other hosts' image changes: at once when told, and every REFRESH_MS in case a notice was lost. */
  private followCluster (cluster: Cluster, images: ImageStore): void {
    let running = false
    const refresh = (): void => {
      if (running || this.images !== images) return
      running = true
      images.refresh()
        .catch(err => this.log(`refreshing images from the cluster: ${(err as Error).message}`))
        .finally(() => { running = false })
    }
    cluster.on('notify', refresh)
    cluster.on('view', () => images.recheckTokens())
    this.refreshTimer = setInterval(refresh, REFRESH_MS)
  }

  /** Stops the node. Refuses (EBUSY) while images are open, unless forced. */
  async stop (force = false): Promise<void> {
    if (this.stopping) return await this.stopping
    if (this.starting !== null) {
      this.stopAsked = true
      // A start that gave up closed what it had opened; one that finished is torn down here.
      this.stopping = this.starting.then(async () => await this.teardown(() => this.log('stopped')), () => this.log('stopped'))
      return await this.stopping
    }
    const open = this.images?.list().filter(i => i.openCount > 0) ?? []
    if (open.length > 0 && !force) {
      throw SheepError.busy(`images are open: ${open.map(i => i.name).join(', ')}; close them first or stop with --force`)
    }
    this.stopping = this.teardown(() => this.log('stopped'))
    return await this.stopping
  }

  private async teardown (onDone?: () => void): Promise<void> {
    try {
      if (this.refreshTimer !== null) clearInterval(this.refreshTimer)
      await this.control?.close()
      this.control = null
      await this.mount?.unmount()
      this.mount = null
      this.gateway?.stopping()
      try {
        await this.images?.close()
      } catch (err) {
        // Say what could not be written out, and still release the store and leave the cluster.
        this.log(`stopping: writing out images failed: ${(err as Error).message}`)
      }
      this.images = null
      this.scrubber?.stop()
      this.scrubber = null
      // A round still copying would go on retrying over links that are closing, on a closed store.
      this.recovery?.stop()
      this.recovery = null
      await this.cluster?.close()
      this.cluster = null
      if (this.objects) fs.rmSync(path.join(this.storeDir, 'sheep.pid'), { force: true })
      await this.objects?.close()
      this.objects = null
      onDone?.()
    } finally {
      this.markStopped()
    }
  }

  async status (): Promise<NodeStatus> {
    const images = this.imageStore()
    const objects = this.objects as LocalObjectStore
    const list = images.list()
    const usage = await objects.usage()
    const stored = await objects.allocatedBytes()
    return {
      version: VERSION,
      pid: process.pid,
      store: this.storeDir,
      mount: this.mountDir,
      startedAt: this.startedAt,
      images: list.length,
      openHandles: list.reduce((n, i) => n + i.openCount, 0),
      provisioned: list.reduce((n, i) => n + i.size, 0),
      allocated: list.reduce((n, i) => n + i.allocatedBytes, 0),
      capacity: usage.capacity,
      free: usage.free,
      objects: stored.objects,
      storeBytes: stored.bytes,
      problems: [...images.problems(), ...objects.problems()],
      checksums: objects.checksumStatus(),
      scrub: this.scrubStatus(images),
      strays: await objects.strays(),
      fuse: this.mount?.status() ?? null,
      cluster: this.clusterStatus(list.map(i => ({ name: i.name, copies: i.header.copies })), await this.rawUsage())
    }
  }

  /**
   * Every reachable member's store space, for `sheep status`; null when it is not known within a
   * second (a member cut off but not yet out of the view would hold a status call for its whole
   * request timeout).
   */
  private async rawUsage (): Promise<StoreUsage | null> {
    const gateway = this.gateway
    if (gateway === null) return null
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<null>(resolve => { timer = setTimeout(() => resolve(null), RAW_USAGE_WAIT_MS) })
    try {
      return await Promise.race([gateway.usage().catch(() => null), late])
    } finally {
      clearTimeout(timer)
    }
  }

  private scrubStatus (images: ImageStore): ScrubReport | null {
    const s = this.scrubber?.status
    if (s === undefined) return null
    return {
      rate: s.rate,
      running: s.running,
      checked: s.checked,
      bytes: s.bytes,
      lastPassAt: s.lastPassAt,
      lastPassFound: s.lastPassFound,
      images: [...s.images].map(([vid, i]) => ({ image: images.describe(vid) || `(vid ${vid.toString(16)})`, checkedAt: i.checkedAt, found: i.found }))
    }
  }

  private clusterStatus (images: Array<{ name: string, copies: number }>, raw: StoreUsage | null): ClusterStatus | null {
    const cluster = this.cluster
    const view = cluster?.view
    if (cluster == null || view == null) return null
    const members = view.members.length
    return {
      node: cluster.id,
      epoch: view.epoch,
      members,
      reachable: view.members.filter(m => m.id === cluster.id || cluster.link(m.id) !== null).length,
      links: linkCounts(cluster.mesh.connected),
      quorate: cluster.quorate,
      recovering: this.recovery?.status.pending ?? 0,
      recovery: this.recoveryProgress(),
      raw,
      degraded: images.filter(i => i.copies > members).map(i => `${i.name} asks for ${i.copies} copies, the cluster has ${members} node${members === 1 ? '' : 's'}`),
      down: (view.down ?? []).map(d => ({ node: d.id, since: d.since })),
      damaged: this.recovery?.status.damaged ?? 0,
      healed: this.recovery?.status.healed ?? 0,
      healing: this.recovery?.status.healing ?? 0
    }
  }

  /** What recovery still has to copy here, by image, and when it may be done at the rate it keeps. */
  private recoveryProgress (): RecoveryProgress | null {
    const recovery = this.recovery
    if (recovery === null) return null
    const s = recovery.status
    const byImage = new Map<string, number>()
    for (const oid of recovery.pendingObjects) {
      const name = oidType(oid) === ObjectType.Data || oidType(oid) === ObjectType.Inode ? (this.images?.describe(oidVid(oid)) || `(vid ${oidVid(oid).toString(16)})`) : '(cluster records)'
      byImage.set(name, (byImage.get(name) ?? 0) + 1)
    }
    const seconds = (Date.now() - s.startedAt) / 1000
    const rate = seconds > 0 ? s.copiedBytes / seconds : 0
    const perObject = s.copied > 0 ? s.copiedBytes / s.copied : 0
    const eta = (objects: number): number | null => objects === 0 ? 0 : rate > 0 && perObject > 0 ? Math.round(objects * perObject / rate) : null
    return {
      epoch: s.epoch,
      copied: s.copied,
      copiedBytes: s.copiedBytes,
      rate,
      images: [...byImage].map(([image, objects]) => ({ image, objects, etaSeconds: eta(objects) })),
      etaSeconds: eta(s.pending)
    }
  }

  private joinedCluster (): Cluster {
    if (this.cluster === null) throw SheepError.invalid('this node runs without a cluster (start it with --bootstrap-port, --bootstrap or --join)')
    return this.cluster
  }

  /**
   * `sheep cluster force-start`: this node and every other member serve their copies that were
   * behind as they are (Recovery.forceStart); says which, node by node.
   */
  private async forceStart (): Promise<{ nodes: ForcedCopies[], missed: string[] }> {
    const cluster = this.joinedCluster()
    if (this.recovery === null || this.gateway === null) throw SheepError.unreachable('this node is still starting')
    const { decode, Op, oidList } = await import('./swarm/messages')
    const nodes: ForcedCopies[] = [{ node: cluster.id, objects: (await this.recovery.forceStart()).map(oidToHex) }]
    const missed: string[] = []
    const epoch = cluster.epoch
    for (const m of cluster.view?.members ?? []) {
      if (m.id === cluster.id) continue
      try {
        const res = await this.gateway.send(m.id, epoch, Op.ForceStart, {})
        nodes.push({ node: m.id, objects: decode(oidList, res.data, 'force-start answer').map(oidToHex) })
      } catch (err) {
        this.log(`force-start: member ${m.id.slice(0, 8)} did not answer: ${(err as Error).message}`)
        missed.push(m.id)
      }
    }
    return { nodes, missed }
  }

  /** The background scrub of this node's store: on a cluster, what it finds damaged is healed from a replica. */
  private startScrub (objects: LocalObjectStore): void {
    const settings = this.opts.scrub
    if (settings === undefined || settings.rate <= 0) return
    const scrubber = new Scrubber(objects, {
      ...settings,
      damaged: async (oid, err) => { await this.recovery?.damaged(oid, err) },
      log: this.log
    })
    this.scrubber = scrubber
    scrubber.start()
  }

  /** `sheep check`: this node's copies, and on a cluster every member's, read whole and compared (./swarm/check.ts). */
  private async check (name: string | undefined, repair: boolean, progress: Progress): Promise<CheckReport> {
    const images = this.imageStore()
    const objects = this.objects as LocalObjectStore
    const { checkCluster, checkLocal, verifyWith } = await import('./swarm/check')
    const opts = { vids: name === undefined ? undefined : images.vidsOf(name), repair, progress }
    const describe = (vid: number): string => images.describe(vid)
    const cluster = this.cluster
    if (cluster === null) return await checkLocal(objects, describe, opts)
    const recovery = this.recovery
    const gateway = this.gateway
    if (recovery === null || gateway === null) throw SheepError.unreachable('this node is still starting')
    const [{ decode, encode, healSource, Op, verifyAnswer }, { listAll }] = await Promise.all([import('./swarm/messages'), import('./swarm/replica')])
    const self = cluster.id
    return await checkCluster({
      members: () => cluster.view?.members.map(m => m.id) ?? [self],
      list: async node => {
        const held: ObjectId[] = []
        if (node === self) {
          for await (const info of objects.list()) if (info.removed !== true) held.push(info.oid)
          return held
        }
        const { entries } = await listAll(async from => await gateway.send(node, cluster.epoch, Op.List, { oid: from }))
        return entries.filter(e => e.removed !== true).map(e => e.oid)
      },
      replicasOf: oid => gateway.replicasOf(oid),
      verify: async (node, oid) => await verifyWith(async () => {
        if (node === self) return await recovery.verify(oid)
        const down = cluster.view?.down?.find(d => d.id === node)
        if (down !== undefined) throw SheepError.unreachable(`its member is down (for ${Math.round((Date.now() - down.since) / 1000)} s): the copy is checked once it is back`)
        const res = await gateway.send(node, cluster.epoch, Op.Verify, { oid })
        const answer = decode(verifyAnswer, res.data, 'verify answer')
        return { behind: answer.behind, version: res.version, digest: answer.digest }
      }),
      heal: async (node, oid, source) => {
        if (node === self) await recovery.repairCopy(oid, source)
        else await gateway.send(node, cluster.epoch, Op.Heal, { oid, data: encode(healSource, source) })
      },
      describe
    }, opts)
  }

  private async nodeList (): Promise<NodeInfo[]> {
    const cluster = this.joinedCluster()
    const gateway = this.gateway as Gateway
    const candidates = cluster.candidates.map(m => ({
      id: m.id, address: `${m.host}:${m.port}`, zone: m.zone, weight: m.weight, capacity: null, used: null, state: 'candidate'
    }))
    const members = await Promise.all((cluster.view?.members ?? []).map(async m => {
      const link = cluster.link(m.id)
      const self = m.id === cluster.id
      const usage = self || link !== null ? await gateway.memberUsage(m.id) : null
      return {
        id: m.id,
        address: `${m.host}:${m.port}`,
        zone: m.zone,
        weight: m.weight,
        capacity: usage?.capacity ?? null,
        used: usage === null ? null : usage.capacity - usage.free,
        state: self ? 'self' : isDown(cluster.view, m.id) ? 'down (its objects stay placed on it)' : link === null ? 'unreachable' : `up (${link.kind})`
      }
    }))
    return [...members, ...candidates]
  }

  private imageStore (): ImageStore {
    if (this.images === null || this.stopping) throw SheepError.closing()
    return this.images
  }

  private handlers (): Handlers {
    return {
      status: async () => await this.status(),
      'image.list': async () => {
        const recovering = new Map((this.recoveryProgress()?.images ?? []).map(i => [i.image, i]))
        return this.imageStore().list().map(i => {
          const info = this.imageStore().info(i)
          const r = recovering.get(info.name)
          return r === undefined ? info : { ...info, recovering: { objects: r.objects, etaSeconds: r.etaSeconds } }
        })
      },
      'image.create': async ({ name, size, objectSize, copies, uid, gid, mode }) => {
        const images = this.imageStore()
        const defaults = this.opts.createOptions
        return images.info(await images.create(name, size, {
          objectSize: objectSize ?? defaults?.objectSize,
          copies: copies ?? defaults?.copies,
          uid,
          gid,
          mode
        }))
      },
      'image.delete': async ({ name }, progress) => { await this.imageStore().remove(name, progress); return null },
      'image.resize': async ({ name, size }) => {
        const images = this.imageStore()
        await images.resize(name, size)
        return images.info(images.get(name))
      },
      'image.rename': async ({ from, to }) => {
        const images = this.imageStore()
        await images.rename(from, to)
        return images.info(images.get(to))
      },
      'image.clone': async ({ source, tag, name }) => {
        const images = this.imageStore()
        return images.info(tag === undefined ? await images.cloneCurrent(source, name) : await images.clone(source, tag, name))
      },
      'image.flatten': async ({ name }, progress) => {
        const images = this.imageStore()
        await images.flatten(name, progress)
        return images.info(images.get(name))
      },
      'image.tree': async () => this.imageStore().tree(),
      'snapshot.create': async ({ name, tag }) => {
        const images = this.imageStore()
        return images.snapshotInfo(await images.snapshot(name, tag))
      },
      'snapshot.list': async ({ name }) => {
        const images = this.imageStore()
        images.get(name)
        return images.snapshotsOf(name).map(s => images.snapshotInfo(s))
      },
      'snapshot.delete': async ({ name, tag }) => { await this.imageStore().deleteSnapshot(name, tag); return null },
      'snapshot.rollback': async ({ name, tag }) => {
        const images = this.imageStore()
        await images.rollback(name, tag)
        return images.info(images.get(name))
      },
      'cluster.token': async () => {
        const cluster = this.joinedCluster()
        const { encodeToken } = await import('./swarm/identity')
        return { token: encodeToken(cluster.secret, cluster.bootstrapList) }
      },
      'node.list': async () => await this.nodeList(),
      'node.admit': async ({ id }) => {
        const cluster = this.joinedCluster()
        const full = cluster.resolveId(id)
        return { id: full, epoch: (await cluster.admit(full)).epoch }
      },
      'node.remove': async ({ id }) => {
        const cluster = this.joinedCluster()
        const full = cluster.resolveId(id)
        return { id: full, epoch: (await cluster.remove(full)).epoch }
      },
      'cluster.rotate': async () => {
        const cluster = this.joinedCluster()
        const { missed } = await cluster.rotateSecret()
        const { encodeToken } = await import('./swarm/identity')
        return { token: encodeToken(cluster.secret, cluster.bootstrapList), missed }
      },
      'cluster.forceStart': async () => await this.forceStart(),
      check: async ({ name, repair }, progress) => await this.check(name, repair === true, progress),
      stop: async ({ force }) => {
        // Answer first, then stop: the stop closes this very socket.
        const open = this.imageStore().list().filter(i => i.openCount > 0)
        if (open.length > 0 && force !== true) {
          throw SheepError.busy(`images are open: ${open.map(i => i.name).join(', ')}; close them first or stop with --force`)
        }
        setImmediate(() => { this.stop(true).catch(err => this.log(`stop failed: ${(err as Error).message}`)) })
        return null
      }
    }
  }
}

/** Throws EINVAL unless `dir` is a store or may become one. */
export async function checkStoreFolder (dir: string): Promise<void> {
  await LocalObjectStore.check(dir)
}

function readPid (storeDir: string): number | null {
  try {
    const pid = Number(fs.readFileSync(path.join(storeDir, 'sheep.pid'), 'utf8').trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

/** How the peers are reached: a direct link if there is one, else Hyperswarm's. */
function linkCounts (peers: Peer[]): ClusterStatus['links'] {
  const direct = peers.filter(p => p.tcp?.isOpen === true)
  return { direct: direct.length, plain: direct.filter(p => p.tcp?.plain === true).length, swarm: peers.length - direct.length }
}
