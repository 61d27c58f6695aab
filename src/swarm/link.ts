// One authenticated connection to a peer, over either path (Hyperswarm or direct TCP) and its
// carrier (./carrier.ts): the hello carries the cluster-secret proof, then requests and responses
// are matched by id. Anything malformed, and a wrong proof, closes the connection: this
// connection only, never the node. The carrier's callbacks here catch everything (protomux must
// never see a throw), and an error ends in closing the connection with a log line naming the peer.

import { EventEmitter } from 'node:events'
import type { Carrier } from './carrier'
import { SheepError, toSheepError } from '../errors'
import { type Hello, MAX_DATA, MAX_MESSAGE, Op, type Request, type Response } from './messages'
import { proofFor, proofIsValid } from './proof'
import type { Member, View } from './view'

export type LinkKind = 'swarm' | 'tcp'

export type RequestHandler = (req: Request, from: Link) => Promise<Partial<Response>>

/**
 * Whether the peer with key remoteId may in, given what its proof proves (`proves(secret)`): null
 * if so, else why not (./admission.ts).
 */
export type Gate = (remoteId: string, proves: (secret: Buffer) => boolean) => string | null

export interface LinkOptions {
  kind: LinkKind
  /** The secret this node proves with, read when the channel opens. */
  secret: () => Buffer
  gate: Gate
  /** This node as the hello describes it, read when the channel opens. */
  self: () => { member: Member, view: View }
  onRequest: RequestHandler
  log: (line: string) => void
  /** A connection whose channel is not open with a valid proof by then is closed (default 10 s). */
  helloTimeoutMs?: number
}

const EMPTY = new Uint8Array(0)
const HELLO_TIMEOUT_MS = 10_000
/** How long a refused peer's connection may take to flush our hello before it is destroyed. */
const FLUSH_MS = 1000
/**
 * Requests of one peer served at once. Past this the link stops reading from the connection
 * until half are answered (TCP pushes back on the peer): a peer cannot make this node hold
 * thousands of 8 MiB read buffers. Far above what a member's gateway sends one node at once.
 */
export const MAX_SERVING = 256
/**
 * Bytes of answers written while the connection would not drain. A peer that asks and never
 * reads its answers would otherwise have them pile up in this node's memory; past this its link
 * is closed. A member that reads lags far less (its requests in flight bound what it is owed).
 */
export const MAX_UNSENT = 256 * 2 ** 20

/**
 * What protomux, compact-encoding and the secret-stream say when the peer's bytes are malformed
 * (framing, a bad header or message, a failed decryption); the direct path's frames say EPROTO.
 * Anything else, such as Hyperswarm closing the second of two connections between the same nodes
 * ("Duplicate connection", routine when a restarted node reconnects), a timeout or a destroyed
 * stream, happens to good members too.
 */
const MALFORMED = /^(Out of bounds|Array is too big|Incorrect buffer size|uint must be |Invalid (open|reject) message|Invalid (header|header message|message) received|Remote exceeded backlog)/

/**
 * Whether an error that closed a connection shows the peer sent something malformed (it is then
 * banned for a while), rather than a network failure or a timeout, which a good member has too.
 */
export function isMisbehaviour (err: Error): boolean {
  if (err instanceof SheepError) return err.code === 'EPROTO'
  if (typeof (err as NodeJS.ErrnoException).code === 'string') return false // ECONNRESET, EPIPE...
  return MALFORMED.test(err.message)
}

export class Link extends EventEmitter {
  readonly kind: LinkKind
  readonly remoteId: string
  /** The peer's hello, once its proof checked out. */
  peer: Hello | null = null
  private readonly carrier: Carrier
  private readonly opts: LinkOptions
  private readonly pending = new Map<number, { resolve: (r: Response) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }>()
  private nextId = 1
  private closed = false
  private serving = 0
  private paused = false
  private unsent = 0
  private readonly helloTimer: NodeJS.Timeout

  /** Call once the carrier's handshake is done. */
  constructor (carrier: Carrier, opts: LinkOptions) {
    super()
    this.carrier = carrier
    this.opts = opts
    this.kind = opts.kind
    this.remoteId = carrier.remoteId
    // A peer that completes Noise (any key does) and then sends nothing, or never a valid
    // hello, must not hold the connection open for ever.
    this.helloTimer = setTimeout(() => {
      if (this.peer !== null || this.closed) return
      opts.log(`closed ${this.kind} connection to ${this.remoteId}: no valid hello within ${opts.helloTimeoutMs ?? HELLO_TIMEOUT_MS} ms`)
      this.shut('no hello')
    }, opts.helloTimeoutMs ?? HELLO_TIMEOUT_MS)
    this.helloTimer.unref()
    const { member, view } = opts.self()
    carrier.open({ proof: proofFor(opts.secret(), carrier.handshakeHash, carrier.isInitiator), self: member, view }, {
      hello: h => this.opened(h),
      request: req => { void this.serve(req) },
      response: res => this.answered(res),
      drain: () => { this.unsent = 0 },
      error: err => {
        if (this.closed) return
        opts.log(`closed ${this.kind} connection to ${this.remoteId}: ${err.message}`)
        if (isMisbehaviour(err)) this.emit('misbehaved', err.message)
        this.shut(`connection error: ${err.message}`)
      },
      close: why => this.shut(why)
    })
  }

  get isOpen (): boolean { return this.peer !== null && !this.closed }

  /** Whether this link's data goes authenticated only, not encrypted (./frames.ts). */
  get plain (): boolean { return this.carrier.plain }

  /** Sends a request and waits for its response; ENOTCONN if the link closes or time runs out first. */
  async call (req: Omit<Request, 'id'>, timeoutMs: number): Promise<Response> {
    if (!this.isOpen) throw SheepError.unreachable(`no open ${this.kind} link to ${short(this.remoteId)}`)
    // The peer would refuse it and close the connection: refuse it here instead.
    if (req.data.length > MAX_DATA) throw SheepError.tooBig(`a request of ${req.data.length} bytes, more than the ${MAX_DATA} a message carries`)
    const id = this.nextId++
    return await new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(SheepError.unreachable(`${short(this.remoteId)} did not answer within ${timeoutMs} ms (${this.kind})`))
      }, timeoutMs)
      this.pending.set(id, { resolve, reject, timer })
      this.carrier.sendRequest({ ...req, id })
    })
  }

  close (why = 'closed here'): void {
    this.shut(why)
  }

  /** The carrier's hello: must not throw (see the note at the top). */
  private opened (h: Hello): void {
    try {
      this.checkHello(h)
    } catch (err) {
      this.opts.log(`closed ${this.kind} connection to ${this.remoteId}: ${(err as Error).message}`)
      this.shut('failed to open')
    }
  }

  private checkHello (h: Hello): void {
    clearTimeout(this.helloTimer)
    // The remote's proof was made for its role, which is the opposite of ours.
    const refused = this.opts.gate(this.remoteId, secret => proofIsValid(secret, this.carrier.handshakeHash, !this.carrier.isInitiator, h.proof))
    if (refused !== null) {
      this.opts.log(`dropped ${this.kind} connection from ${this.remoteId}: ${refused}`)
      this.emit('rejected', refused)
      // Ended rather than destroyed: our hello may still be in the stream's buffer, and the
      // peer should refuse us in turn with a log line of its own (an old join token's holder
      // and the member both say so), not just see the connection drop.
      this.shut('refused at the proof', true)
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

  /** The carrier's request: its promise must never reject (see the note at the top). */
  private async serve (req: Request): Promise<void> {
    if (this.peer === null) return this.shut('a request before the proof')
    this.serving++
    if (this.serving >= MAX_SERVING && !this.paused) {
      this.paused = true
      this.carrier.pause()
    }
    try {
      let res: Partial<Response>
      try {
        res = await this.opts.onRequest(req, this)
      } catch (err) {
        const e = toSheepError(err)
        res = { error: e.code, message: e.message }
      }
      if (this.closed) return
      let answer: Response = { id: req.id, error: '', message: '', epoch: 0, version: 0, size: 0, data: EMPTY, ...res }
      // An answer the peer's decoder would refuse (and close the link for) becomes an error
      // answer: larger data must be asked for in pieces (List pages, ReadAll refuses).
      if (answer.data.length > MAX_DATA) {
        answer = { ...answer, error: 'EFBIG', message: `the answer has ${answer.data.length} bytes, more than the ${MAX_DATA} a message carries`, data: EMPTY }
      }
      if (answer.message.length > MAX_MESSAGE / 4) answer.message = answer.message.slice(0, MAX_MESSAGE / 4 - 3) + '...'
      if (!this.carrier.sendResponse(answer)) {
        this.unsent += answer.data.length + 64
        if (this.unsent > MAX_UNSENT) {
          this.opts.log(`closed ${this.kind} connection to ${this.remoteId}: it does not read its answers (${this.unsent} bytes waiting)`)
          this.shut('the peer does not read')
        }
      }
    } catch (err) {
      // A bug, not the peer's doing: this link goes, the node stays.
      this.opts.log(`closed ${this.kind} connection to ${this.remoteId}: answering request ${req.id} failed: ${(err as Error).message}`)
      this.shut('failed to answer')
    } finally {
      // Written to the store by now (the handler is done, and it keeps no reference).
      if (req.op === Op.Write) this.carrier.recycle(req.data)
      this.serving--
      if (this.paused && this.serving <= MAX_SERVING / 2) {
        this.paused = false
        if (!this.closed) this.carrier.resume()
      }
    }
  }

  private answered (res: Response): void {
    const p = this.pending.get(res.id)
    if (p === undefined) return // timed out already
    this.pending.delete(res.id)
    clearTimeout(p.timer)
    p.resolve(res)
  }

  /** Closes the link; `flush`: what was written goes out first (the stream is destroyed at the latest after FLUSH_MS). */
  private shut (why: string, flush = false): void {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.helloTimer)
    for (const p of this.pending.values()) {
      clearTimeout(p.timer)
      p.reject(SheepError.unreachable(`${this.kind} link to ${short(this.remoteId)} closed: ${why}`))
    }
    this.pending.clear()
    if (flush) {
      this.carrier.end()
      setTimeout(() => this.carrier.destroy(), FLUSH_MS).unref()
    } else {
      this.carrier.destroy()
    }
    this.emit('close', why)
  }
}

export function short (id: string): string {
  return id.slice(0, 8)
}
