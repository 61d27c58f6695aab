// One authenticated connection to a peer, over either path (Hyperswarm or direct TCP): a protomux
// channel whose opening handshake carries the cluster-secret proof, then requests and responses
// matched by id. Anything malformed, and a wrong proof, closes the connection.

import { EventEmitter } from 'node:events'
import type { Duplex } from 'node:stream'
import Protomux from 'protomux'
import { SheepError, toSheepError } from '../errors'
import { type Hello, hello as helloCodec, PROTOCOL, type Request, request as requestCodec, type Response, response as responseCodec } from './messages'
import { proofFor, proofIsValid } from './proof'
import type { Member, View } from './view'

/** A Noise secret-stream after its handshake (a Hyperswarm connection, or ours over TCP). */
export interface SecureStream extends Duplex {
  remotePublicKey: Buffer | null
  handshakeHash: Buffer | null
  isInitiator: boolean
}

export type LinkKind = 'swarm' | 'tcp'

export type RequestHandler = (req: Request, from: Link) => Promise<Partial<Response>>

export interface LinkOptions {
  kind: LinkKind
  secret: Buffer
  /** This node as the hello describes it, read when the channel opens. */
  self: () => { member: Member, view: View }
  onRequest: RequestHandler
  log: (line: string) => void
}

const EMPTY = new Uint8Array(0)

export class Link extends EventEmitter {
  readonly kind: LinkKind
  readonly remoteId: string
  /** The peer's hello, once its proof checked out. */
  peer: Hello | null = null
  private readonly stream: SecureStream
  private readonly opts: LinkOptions
  private readonly pending = new Map<number, { resolve: (r: Response) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>()
  private nextId = 1
  private closed = false
  private readonly sendRequest
  private readonly sendResponse

  /** Call once the stream's handshake is done (remotePublicKey and handshakeHash are set). */
  constructor (stream: SecureStream, opts: LinkOptions) {
    super()
    this.stream = stream
    this.opts = opts
    this.kind = opts.kind
    this.remoteId = stream.remotePublicKey?.toString('hex') ?? ''
    const handshakeHash = stream.handshakeHash
    if (handshakeHash === null || this.remoteId === '') throw new Error('a link needs a stream whose handshake is done')
    stream.on('error', (err: Error) => {
      // A malformed or oversized message ends up here too: protomux destroys the stream with it.
      if (!this.closed) opts.log(`closed ${this.kind} connection to ${this.remoteId}: ${err.message}`)
      this.shut(`connection error: ${err.message}`)
    })
    stream.on('close', () => this.shut('connection closed'))
    const mux = Protomux.from(stream)
    const channel = mux.createChannel<Hello>({
      protocol: PROTOCOL,
      handshake: helloCodec,
      onopen: h => this.opened(h, handshakeHash),
      onclose: () => this.shut('channel closed')
    })
    if (channel === null) throw new Error(`a ${PROTOCOL} channel is already open on this connection`)
    this.sendRequest = channel.addMessage({ encoding: requestCodec, onmessage: req => this.serve(req) })
    this.sendResponse = channel.addMessage({ encoding: responseCodec, onmessage: res => this.answered(res) })
    const { member, view } = opts.self()
    channel.open({ proof: proofFor(opts.secret, handshakeHash, stream.isInitiator), self: member, view })
  }

  get isOpen (): boolean { return this.peer !== null && !this.closed }

  /** Sends a request and waits for its response; ENOTCONN if the link closes or time runs out first. */
  async call (req: Omit<Request, 'id'>, timeoutMs: number): Promise<Response> {
    if (!this.isOpen) throw SheepError.unreachable(`no open ${this.kind} link to ${short(this.remoteId)}`)
    const id = this.nextId++
    return await new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(SheepError.unreachable(`${short(this.remoteId)} did not answer within ${timeoutMs} ms (${this.kind})`))
      }, timeoutMs)
      this.pending.set(id, { resolve, reject, timer })
      this.sendRequest.send({ ...req, id })
    })
  }

  close (why = 'closed here'): void {
    this.shut(why)
  }

  private opened (h: Hello, handshakeHash: Buffer): void {
    // The remote's proof was made for its role, which is the opposite of ours.
    if (!proofIsValid(this.opts.secret, handshakeHash, !this.stream.isInitiator, h.proof)) {
      this.opts.log(`dropped ${this.kind} connection from ${this.remoteId}: it did not prove it holds the cluster secret`)
      this.emit('rejected')
      this.shut('bad proof')
      return
    }
    if (h.self.id !== this.remoteId) {
      this.opts.log(`dropped ${this.kind} connection from ${this.remoteId}: its hello names another node (${h.self.id})`)
      this.emit('rejected')
      this.shut('hello for another node')
      return
    }
    this.peer = h
    this.emit('open', h)
  }

  private async serve (req: Request): Promise<void> {
    if (this.peer === null) return this.shut('a request before the proof')
    let res: Partial<Response>
    try {
      res = await this.opts.onRequest(req, this)
    } catch (err) {
      const e = toSheepError(err)
      res = { error: e.code, message: e.message }
    }
    if (this.closed) return
    this.sendResponse.send({ id: req.id, error: '', message: '', epoch: 0, version: 0, size: 0, data: EMPTY, ...res })
  }

  private answered (res: Response): void {
    const p = this.pending.get(res.id)
    if (p === undefined) return // timed out already
    this.pending.delete(res.id)
    clearTimeout(p.timer)
    p.resolve(res)
  }

  private shut (why: string): void {
    if (this.closed) return
    this.closed = true
    for (const p of this.pending.values()) {
      clearTimeout(p.timer)
      p.reject(SheepError.unreachable(`${this.kind} link to ${short(this.remoteId)} closed: ${why}`))
    }
    this.pending.clear()
    this.stream.destroy()
    this.emit('close', why)
  }
}

export function short (id: string): string {
  return id.slice(0, 8)
}
