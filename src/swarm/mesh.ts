// The connections between nodes. Hyperswarm finds the cluster's nodes on the topic derived from the
// secret and gives each its identity (Noise key pair); object traffic then moves to a direct TCP
// connection with the same Noise handshake and proof, carrying frames (./direct.ts), because UDX
// and a secret-stream cost far more for bulk data (../../docs/ARCHITECTURE.md, "Transport"). The
// Hyperswarm link stays as the fallback. Settings that Hyperswarm needs without internet: our own
// bootstrap node, an explicit bind address, nodes declared reachable, frequent refresh while
// members are missing.

import { EventEmitter } from 'node:events'
import dgram from 'node:dgram'
import net from 'node:net'
import DHT from 'hyperdht'
import Hyperswarm from 'hyperswarm'
import { BanTable, type BanOptions } from './bans'
import { muxCarrier, type Carrier, type SecureStream } from './carrier'
import { directCarrier } from './direct'
import type { WireMode } from './frames'
import { type Gate, Link, type LinkKind, type RequestHandler, short } from './link'
import { topicOf } from './proof'
import type { Member, View } from './view'

export interface Address { host: string, port: number }

export interface MeshTiming {
  /** Keep-alive interval on idle connections. */
  keepAliveMs: number
  /** A connection silent this long is dead (a killed or frozen peer). */
  deadAfterMs: number
  /** Discovery refresh while known members are not connected. */
  refreshMs: number
  /** Wait before dialling a peer's TCP path again after it failed. */
  redialMs: number
}

/**
 * TCP connections accepted whose peer has not proven the secret yet. Past this a new connection
 * is closed at once: each may hold buffers until its hello times out, and members reconnect
 * (or use the Hyperswarm path) when a flood passes.
 */
export const MAX_UNPROVEN = 128

/** How long closing waits for the topic to be unannounced. */
const UNANNOUNCE_MS = 1500

export const DEFAULT_MESH_TIMING: MeshTiming = { keepAliveMs: 1000, deadAfterMs: 3000, refreshMs: 500, redialMs: 1000 }

export interface MeshOptions {
  keyPair: DHT.KeyPair
  /** The secret this node proves with (it may change: a rotation). */
  secret: () => Buffer
  /** The secrets whose topics this node announces itself on and looks for peers on. */
  topics: () => Buffer[]
  /** Who may in, at the proof step (./admission.ts). */
  gate: Gate
  /** The address to bind the DHT node and the TCP listener to, and to advertise. */
  host: string
  /** TCP port of the object path; 0 picks one; null: no direct path, objects go over Hyperswarm. */
  tcpPort: number | null
  /** What the direct path's frames hide: plain-authenticated only where both ends ask for it. */
  wire?: WireMode
  /** DHT bootstrap nodes to use (besides our own, if any). */
  bootstrap: Address[]
  /** Run a DHT bootstrap node on host:port (0 picks a port) for clusters without internet. */
  bootstrapPort: number | null
  /** This node's hello (its member record, with this mesh's tcpPort, and its view), read when a link opens. */
  self: () => { member: Member, view: View }
  /** Ids of nodes we expect to be connected to: discovery is refreshed while one is missing. */
  wanted: () => Iterable<string>
  onRequest: RequestHandler
  log: (line: string) => void
  timing?: Partial<MeshTiming>
  /** How long and how many peers that sent garbage or a wrong proof are banned. */
  bans?: Partial<BanOptions>
  /** A link without a valid hello by then is closed (./link.ts). */
  helloTimeoutMs?: number
}

export interface Peer {
  id: string
  /** Its latest hello: who it is and the newest view it knew. */
  hello: NonNullable<Link['peer']>
  swarm: Link | null
  tcp: Link | null
}

/** Emits 'peer-up' (peer), 'peer-down' (id), 'hello' (peer) whenever a link opens with news. */
export class Mesh extends EventEmitter {
  readonly id: string
  private readonly opts: MeshOptions
  private readonly timing: MeshTiming
  private readonly peers = new Map<string, Peer>()
  private readonly dialling = new Set<string>()
  readonly banned: BanTable
  /** Accepted TCP connections not yet proven (see MAX_UNPROVEN), and whether a refusal was logged. */
  private unproven = 0
  private floodLogged = false
  private bootstrapNode: DHT | null = null
  private swarm: Hyperswarm | null = null
  /** Discovery per topic (hex), one per secret of topics(). */
  private readonly discoveries = new Map<string, Hyperswarm.Discovery>()
  private server: net.Server | null = null
  private readonly tcpSockets = new Set<net.Socket>()
  private refreshTimer: NodeJS.Timeout | null = null
  private closing = false
  tcpPort = 0
  bootstrapAddress: Address | null = null

  constructor (opts: MeshOptions) {
    super()
    this.opts = opts
    this.timing = { ...DEFAULT_MESH_TIMING, ...opts.timing }
    this.id = opts.keyPair.publicKey.toString('hex')
    this.banned = new BanTable(opts.bans)
  }

  /** Every address a joining node can bootstrap from: ours if we run one, then the configured ones. */
  get bootstrapList (): Address[] {
    return [...(this.bootstrapAddress === null ? [] : [this.bootstrapAddress]), ...this.opts.bootstrap]
  }

  async start (): Promise<void> {
    const { host } = this.opts
    if (this.opts.tcpPort !== null) {
      this.server = net.createServer(socket => this.accept(socket))
      await listen(this.server, this.opts.tcpPort, host)
      this.tcpPort = (this.server.address() as net.AddressInfo).port
    }
    if (this.opts.bootstrapPort !== null) {
      // A bootstrap node must know its own address (nobody can tell it): hence a fixed port.
      const port = this.opts.bootstrapPort === 0 ? await freeUdpPort(host) : this.opts.bootstrapPort
      this.bootstrapNode = DHT.bootstrapper(port, host, { host })
      await this.bootstrapNode.ready()
      this.bootstrapAddress = { host, port }
    }
    const bootstrap = this.bootstrapList
    if (bootstrap.length === 0) throw new Error('no DHT bootstrap node: give --bootstrap host:port or run one with --bootstrap-port')
    const dht = new DHT({ host, bootstrap, ephemeral: false, firewalled: false, connectionKeepAlive: this.timing.keepAliveMs, keyPair: this.opts.keyPair })
    this.swarm = new Hyperswarm({ dht, keyPair: this.opts.keyPair, firewall: key => this.banned.has(key.toString('hex')) })
    this.swarm.on('connection', (conn, info) => this.swarmConnection(conn, info))
    await this.retopic()
    this.scheduleRefresh()
  }

  /** Joins the topics of the secrets topics() gives now and leaves the others (after a rotation step). */
  async retopic (): Promise<void> {
    const swarm = this.swarm
    if (swarm === null || this.closing) return
    const wanted = new Map(this.opts.topics().map(s => { const t = topicOf(s); return [t.toString('hex'), t] }))
    const joined: Array<Promise<void>> = []
    for (const [hex, topic] of wanted) {
      if (this.discoveries.has(hex)) continue
      const d = swarm.join(topic, { client: true, server: true })
      this.discoveries.set(hex, d)
      joined.push(d.flushed())
    }
    for (const [hex, d] of this.discoveries) {
      if (wanted.has(hex)) continue
      this.discoveries.delete(hex)
      await d.destroy().catch(() => {})
    }
    await Promise.all(joined)
  }

  /** Closes every link to id now (a removed node; the gate refuses it from then on). */
  drop (id: string, why: string): void {
    const p = this.peers.get(id)
    p?.tcp?.close(why)
    p?.swarm?.close(why)
  }

  peer (id: string): Peer | undefined { return this.peers.get(id) }
  get connected (): Peer[] { return [...this.peers.values()] }

  /** The link to use for a request to id: TCP when it is open, else Hyperswarm. */
  link (id: string, prefer: LinkKind = 'tcp'): Link | null {
    const p = this.peers.get(id)
    if (p === undefined) return null
    const first = prefer === 'tcp' ? p.tcp : p.swarm
    const second = prefer === 'tcp' ? p.swarm : p.tcp
    if (first?.isOpen === true) return first
    if (second?.isOpen === true) return second
    return null
  }

  async close (): Promise<void> {
    if (this.closing) return
    this.closing = true
    if (this.refreshTimer !== null) clearTimeout(this.refreshTimer)
    for (const p of this.peers.values()) {
      p.tcp?.close('node stopping')
      p.swarm?.close('node stopping')
    }
    for (const s of this.tcpSockets) s.destroy()
    // Unannouncing lets a restart of this node be found at once (a stale announcement sends
    // peers to a dead address, and Hyperswarm backs off); but it can take seconds when the
    // DHT nodes it asks are gone already: give it a moment, then force (also ends its DHT node).
    const swarm = this.swarm
    if (swarm !== null) {
      await Promise.race([swarm.destroy().catch(() => {}), new Promise(resolve => setTimeout(resolve, UNANNOUNCE_MS).unref())])
      await swarm.destroy({ force: true })
    }
    await this.bootstrapNode?.destroy()
    if (this.server !== null) await new Promise<void>(resolve => this.server?.close(() => resolve()))
  }

  /** Refuses id's connections for a while (the table is bounded, see ./bans.ts). */
  private ban (id: string, why: string): void {
    if (id === this.id) return
    this.banned.ban(id)
    this.opts.log(`banned ${id} for ${Math.round(this.banned.durationMs / 1000)} s: ${why}`)
  }

  private scheduleRefresh (): void {
    if (this.closing) return
    const missing = [...this.opts.wanted()].some(id => id !== this.id && this.link(id) === null)
    // Nodes that join at the same moment miss each other and Hyperswarm looks again only after
    // minutes: look often while a member is missing, now and then while we are alone.
    const alone = this.peers.size === 0
    const delay = missing ? this.timing.refreshMs : alone ? 4 * this.timing.refreshMs : 0
    if (delay === 0) {
      this.refreshTimer = setTimeout(() => this.scheduleRefresh(), 4 * this.timing.refreshMs)
      return
    }
    this.refreshTimer = setTimeout(() => {
      Promise.all([...this.discoveries.values()].map(async d => await d.refresh().catch(() => {}))).finally(() => this.scheduleRefresh())
    }, delay)
  }

  private swarmConnection (conn: Hyperswarm.Connection, info: Hyperswarm.PeerInfo): void {
    conn.on('error', () => {}) // reported by the link; an unhandled ECONNRESET would kill the node
    conn.setTimeout(this.timing.deadAfterMs)
    let carrier: Carrier
    try {
      carrier = muxCarrier(conn as unknown as SecureStream)
    } catch (err) {
      this.opts.log(`dropped a swarm connection: ${(err as Error).message}`)
      conn.destroy()
      return
    }
    this.adopt(carrier, 'swarm', () => info.ban(true))
  }

  private accept (socket: net.Socket): void {
    socket.on('error', () => {}) // an ECONNRESET before the secret-stream takes it must not kill the node
    if (this.closing || this.unproven >= MAX_UNPROVEN) {
      if (!this.floodLogged) this.opts.log(`refusing TCP connections: ${this.unproven} not yet proven (from ${socket.remoteAddress ?? '?'} and others)`)
      this.floodLogged = true
      socket.destroy()
      return
    }
    this.floodLogged = false
    this.unproven++
    let proven = false
    const settle = (): void => {
      if (proven) return
      proven = true
      this.unproven--
    }
    this.tcpSockets.add(socket)
    socket.on('close', () => {
      this.tcpSockets.delete(socket)
      settle()
    })
    this.secure(socket, false, null, settle)
  }

  private dial (peer: Peer): void {
    const { id } = peer
    if (this.closing || this.server === null || peer.tcp !== null || this.dialling.has(id) || this.id > id) return
    const { host, port } = peer.hello.self
    if (port === 0) return
    this.dialling.add(id)
    let socket: net.Socket
    try {
      socket = net.connect({ host, port })
    } catch (err) {
      // Hellos are checked when decoded; this is a last guard, never a crash.
      this.dialling.delete(id)
      this.opts.log(`cannot dial ${short(id)} at ${host}:${port}: ${(err as Error).message}`)
      return
    }
    socket.on('error', () => {})
    this.tcpSockets.add(socket)
    socket.on('close', () => this.tcpSockets.delete(socket))
    this.secure(socket, true, id)
  }

  /** A TCP connection: once its Noise handshake is done, it becomes a link like any other. */
  private secure (socket: net.Socket, initiator: boolean, expected: string | null, proven: () => void = () => {}): void {
    const done = (): void => { if (expected !== null) this.dialling.delete(expected) }
    socket.on('close', () => {
      done()
      const p = expected === null ? undefined : this.peers.get(expected)
      // The TCP path failed while the peer is still there: try it again later.
      if (p !== undefined && p.tcp === null && !this.closing) setTimeout(() => this.dial(p), this.timing.redialMs).unref()
    })
    directCarrier(socket, initiator, this.opts.keyPair, this.opts.wire ?? 'encrypted', this.timing).then(carrier => {
      done()
      const remote = carrier.remoteId
      if (this.banned.has(remote)) {
        carrier.destroy()
        return
      }
      if (expected !== null && remote !== expected) {
        this.opts.log(`dropped TCP connection to ${expected}: it answered as ${remote}`)
        carrier.destroy()
        return
      }
      this.adopt(carrier, 'tcp', null, proven)
    }, () => done()) // the socket is destroyed: its close redials
  }

  private adopt (carrier: Carrier, kind: LinkKind, ban: (() => void) | null, proven: () => void = () => {}): void {
    if (this.closing) { carrier.destroy(); return }
    let link: Link
    try {
      link = new Link(carrier, { kind, secret: this.opts.secret, gate: this.opts.gate, self: this.opts.self, onRequest: this.opts.onRequest, log: this.opts.log, helloTimeoutMs: this.opts.helloTimeoutMs })
    } catch (err) {
      this.opts.log(`dropped a ${kind} connection: ${(err as Error).message}`)
      carrier.destroy()
      return
    }
    link.once('rejected', (why: string) => {
      this.ban(link.remoteId, why)
      ban?.()
    })
    link.once('misbehaved', (why: string) => this.ban(link.remoteId, why))
    link.once('open', hello => {
      proven()
      const existing = this.peers.get(link.remoteId)
      const peer: Peer = existing ?? { id: link.remoteId, hello, swarm: null, tcp: null }
      peer.hello = hello
      const old = peer[kind]
      peer[kind] = link
      if (old !== null && old !== link) old.close('replaced by a newer connection')
      if (existing === undefined) {
        this.peers.set(peer.id, peer)
        this.opts.log(`connected to ${short(peer.id)} at ${hello.self.host}:${hello.self.port} (${kind})`)
        this.emit('peer-up', peer)
      } else {
        this.emit('hello', peer)
      }
      if (kind === 'swarm') this.dial(peer)
    })
    link.once('close', () => {
      const peer = this.peers.get(link.remoteId)
      if (peer === undefined || peer[kind] !== link) return
      peer[kind] = null
      if (peer.swarm === null && peer.tcp === null) {
        this.peers.delete(peer.id)
        this.opts.log(`lost ${short(peer.id)}`)
        this.emit('peer-down', peer.id)
      }
    })
  }
}

/** A UDP port nothing uses right now, for a bootstrap node asked to pick one (tests, first start). */
async function freeUdpPort (host: string): Promise<number> {
  const socket = dgram.createSocket('udp4')
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(0, host, () => resolve())
  })
  const { port } = socket.address()
  await new Promise<void>(resolve => socket.close(() => resolve()))
  return port
}

async function listen (server: net.Server, port: number, host: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
}
