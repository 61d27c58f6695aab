// The far end of the transport floor (floor.ts): a child process that listens on 127.0.0.1, takes
// each connection as a Sheep node takes a direct TCP one (src/swarm/mesh.ts: Noise handshake with
// its key pair, frames, then a Link proving the cluster secret) and answers every Write at once,
// without touching a disk. What the parent times against it is network, crypto and protocol only.
//
// Also here, for both ends: securing a TCP socket the way the mesh does.

import net from 'node:net'
import DHT from 'hyperdht'
import { SheepError } from '../src/errors'
import { directCarrier } from '../src/swarm/direct'
import type { WireMode } from '../src/swarm/frames'
import { Link, type RequestHandler } from '../src/swarm/link'
import { DEFAULT_MESH_TIMING } from '../src/swarm/mesh'
import { Op } from '../src/swarm/messages'
import type { Member } from '../src/swarm/view'

/** What the parent sends a peer it has forked. */
export interface PeerStart { secret: string }
/** What the peer answers once it listens: its ports (Sheep's direct path, raw TCP) and its node id (public key, hex). */
export interface PeerReady { port: number, rawPort: number, id: string }

export interface LinkSetup {
  keyPair: DHT.KeyPair
  secret: Buffer
  /** This end's member record: its id must be keyPair's public key, or the other end drops the link. */
  self: Member
  onRequest: RequestHandler
  /** The node id the other end must have (the dialling side knows it); null: any. */
  expected: string | null
  log: (line: string) => void
  wire: WireMode
}

export function memberOf (keyPair: DHT.KeyPair, port: number): Member {
  return { id: keyPair.publicKey.toString('hex'), host: '127.0.0.1', port, zone: '', weight: 1 }
}

/**
 * Secures a TCP socket as Mesh.accept and Mesh.dial do (no Nagle, Noise, frames, the mesh's
 * keep-alive and dead-connection timeout) and resolves with the Link once both proofs checked out.
 */
export async function linkOver (socket: net.Socket, initiator: boolean, setup: LinkSetup): Promise<Link> {
  const carrier = await directCarrier(socket, initiator, setup.keyPair, setup.wire, DEFAULT_MESH_TIMING).catch((err: Error) => {
    throw SheepError.unreachable(`no link over TCP: ${err.message}`)
  })
  if (setup.expected !== null && carrier.remoteId !== setup.expected) {
    carrier.destroy()
    throw SheepError.unreachable(`expected ${setup.expected}, the peer answered as ${carrier.remoteId}`)
  }
  const link = new Link(carrier, {
    kind: 'tcp',
    secret: () => setup.secret,
    gate: (_id, proves) => proves(setup.secret) ? null : 'it did not prove it holds the cluster secret',
    self: () => ({ member: setup.self, view: { epoch: 0, members: [] } }),
    onRequest: setup.onRequest,
    log: setup.log
  })
  return await new Promise<Link>((resolve, reject) => {
    link.once('open', () => resolve(link))
    link.once('close', (why: string) => reject(SheepError.unreachable(`the link closed before it opened: ${why}`)))
  })
}

/** The replica's side, minus the store: a Write is answered as soon as it is decoded. */
const answerAtOnce: RequestHandler = async req => {
  if (req.op !== Op.Write) throw SheepError.invalid(`a floor peer answers Write requests only, not op ${req.op}`)
  return { epoch: req.epoch }
}

/**
 * The floor's limit: the same bytes over TCP with nothing but a u32le length in front, answered
 * with 4 bytes; no crypto, no codec, no ids. One request at a time.
 */
export class RawEnd {
  private readonly socket: net.Socket
  /** The answering end: bytes of the length prefix read so far, and of the message still to come. */
  private readonly length = Buffer.alloc(4)
  private have = 0
  private left = 0
  /** The asking end: answer bytes seen, and who waits for the next whole answer. */
  private answers = 0
  private waiting: (() => void) | null = null

  constructor (socket: net.Socket, answering: boolean) {
    this.socket = socket
    socket.setNoDelay(true)
    socket.on('error', () => {})
    socket.on('data', (chunk: Buffer) => answering ? this.answer(chunk) : this.answered(chunk))
  }

  async send (data: Buffer): Promise<void> {
    const length = Buffer.allocUnsafe(4)
    length.writeUInt32LE(data.length, 0)
    await new Promise<void>(resolve => {
      this.waiting = resolve
      this.socket.cork()
      this.socket.write(length)
      if (data.length > 0) this.socket.write(data)
      this.socket.uncork()
    })
  }

  close (): void { this.socket.destroy() }

  private answered (chunk: Buffer): void {
    this.answers += chunk.length
    while (this.answers >= 4) {
      this.answers -= 4
      const w = this.waiting
      this.waiting = null
      w?.()
    }
  }

  /** Skips each message's bytes as they come (nothing is kept or copied) and answers it once whole. */
  private answer (chunk: Buffer): void {
    for (let at = 0; at < chunk.length;) {
      if (this.have < 4) {
        const n = Math.min(4 - this.have, chunk.length - at)
        chunk.copy(this.length, this.have, at, at + n)
        this.have += n
        at += n
        if (this.have === 4) this.left = this.length.readUInt32LE(0)
      } else {
        const n = Math.min(this.left, chunk.length - at)
        this.left -= n
        at += n
      }
      if (this.have === 4 && this.left === 0) {
        this.have = 0
        this.socket.write(Buffer.alloc(4))
      }
    }
  }
}

async function listening (): Promise<net.Server> {
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  return server
}

async function serve (secret: Buffer, send: (ready: PeerReady) => void): Promise<void> {
  const keyPair = DHT.keyPair()
  const log = (line: string): void => { process.stderr.write(`floor peer: ${line}\n`) }
  const server = await listening()
  const raw = await listening()
  raw.on('connection', socket => new RawEnd(socket, true))
  // The hello names the port, so connections are taken only once it is known (none come before `send`).
  const self = memberOf(keyPair, (server.address() as net.AddressInfo).port)
  server.on('connection', socket => {
    linkOver(socket, false, { keyPair, secret, self, onRequest: answerAtOnce, expected: null, log, wire: 'plain-authenticated' }).catch((err: Error) => log(err.message))
  })
  send({ port: self.port, rawPort: (raw.address() as net.AddressInfo).port, id: self.id })
}

function main (): void {
  const send = process.send?.bind(process)
  if (send === undefined) throw new Error('floor-peer.js is started by floor.js (child_process.fork), not on its own')
  // The parent gone, even killed outright, closes the IPC channel: a peer never outlives it.
  process.once('disconnect', () => process.exit(0))
  process.once('message', (msg: PeerStart) => {
    serve(Buffer.from(msg.secret, 'hex'), ready => send(ready)).catch((err: Error) => {
      process.stderr.write(`floor peer: ${err.message}\n`)
      process.exit(1)
    })
  })
}

if (require.main === module) main()
