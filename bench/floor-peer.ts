// The far end of the transport floor (floor.ts): a child process that listens on 127.0.0.1, takes
// each connection as a Sheep node takes a direct TCP one (src/swarm/mesh.ts: Noise secret-stream
// with its key pair, then a Link proving the cluster secret) and answers every Write at once,
// without touching a disk. What the parent times against it is network, crypto and protocol only.
//
// Also here, for both ends: securing a TCP socket the way the mesh does.

import net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'
import type DHT from 'hyperdht'
import { SheepError } from '../src/errors'
import { Link, type RequestHandler, type SecureStream } from '../src/swarm/link'
import { secretStreamOver } from '../src/swarm/mesh'
import { Op } from '../src/swarm/messages'
import type { Member } from '../src/swarm/view'

/** What the parent sends a peer it has forked. */
export interface PeerStart { secret: string }
/** What the peer answers once it listens: its port and its node id (public key, hex). */
export interface PeerReady { port: number, id: string }

export interface LinkSetup {
  keyPair: DHT.KeyPair
  secret: Buffer
  /** This end's member record: its id must be keyPair's public key, or the other end drops the link. */
  self: Member
  onRequest: RequestHandler
  /** The node id the other end must have (the dialling side knows it); null: any. */
  expected: string | null
  log: (line: string) => void
}

export function memberOf (keyPair: DHT.KeyPair, port: number): Member {
  return { id: keyPair.publicKey.toString('hex'), host: '127.0.0.1', port, zone: '', weight: 1 }
}

/**
 * Secures a TCP socket as Mesh.accept and Mesh.dial do (no Nagle, Noise secret-stream, the mesh's
 * keep-alive and dead-connection timeout) and resolves with the Link once both proofs checked out.
 */
export async function linkOver (socket: net.Socket, initiator: boolean, setup: LinkSetup): Promise<Link> {
  const stream = secretStreamOver(socket, initiator, setup.keyPair)
  return await new Promise<Link>((resolve, reject) => {
    const failed = (err?: Error): void => reject(SheepError.unreachable(`no link over TCP: ${err?.message ?? 'the connection closed during the handshake'}`))
    stream.once('error', failed)
    stream.once('close', failed)
    stream.once('connect', () => {
      stream.off('error', failed)
      stream.off('close', failed)
      const remote = stream.remotePublicKey?.toString('hex') ?? ''
      if (setup.expected !== null && remote !== setup.expected) {
        stream.destroy()
        reject(SheepError.unreachable(`expected ${setup.expected}, the peer answered as ${remote}`))
        return
      }
      let link: Link
      try {
        link = new Link(stream as unknown as SecureStream, {
          kind: 'tcp',
          secret: () => setup.secret,
          gate: (_id, proves) => proves(setup.secret) ? null : 'it did not prove it holds the cluster secret',
          self: () => ({ member: setup.self, view: { epoch: 0, members: [] } }), onRequest: setup.onRequest, log: setup.log
        })
      } catch (err) {
        stream.destroy()
        reject(err)
        return
      }
      link.once('open', () => resolve(link))
      link.once('close', (why: string) => reject(SheepError.unreachable(`the link closed before it opened: ${why}`)))
    })
  })
}

/** The replica's side, minus the store: a Write is answered as soon as it is decoded. */
const answerAtOnce: RequestHandler = async req => {
  if (req.op !== Op.Write) throw SheepError.invalid(`a floor peer answers Write requests only, not op ${req.op}`)
  return { epoch: req.epoch }
}

async function serve (secret: Buffer, send: (ready: PeerReady) => void): Promise<void> {
  const keyPair = SecretStream.keyPair()
  const log = (line: string): void => { process.stderr.write(`floor peer: ${line}\n`) }
  const server = net.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  // The hello names the port, so connections are taken only once it is known (none come before `send`).
  const self = memberOf(keyPair, (server.address() as net.AddressInfo).port)
  server.on('connection', socket => {
    linkOver(socket, false, { keyPair, secret, self, onRequest: answerAtOnce, expected: null, log }).catch((err: Error) => log(err.message))
  })
  send({ port: self.port, id: self.id })
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
