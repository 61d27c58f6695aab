// The direct path: TCP between members' object ports, our Noise handshake (./noise.ts), then
// frames (./frames.ts) carrying the hello, requests and responses. Close to raw TCP: no stream
// layered on another, data written as it is (one writev a frame), AES-256-GCM at memory speed.

import type net from 'node:net'
import { SheepError } from '../errors'
import type { Carrier, CarrierEvents } from './carrier'
import { type Frame, FrameReader, frameKeys, FrameSealer, FrameType, MAX_BODY, WANTS_PLAIN, type WireMode } from './frames'
import { decode, encode, type Hello, hello as helloCodec, type Request, requestHead, type Response, responseHead } from './messages'
import { type KeyPair, noiseHandshake, type NoiseSession } from './noise'

export interface DirectTiming {
  /** A frame at least this often on an idle connection (default 5 s). */
  keepAliveMs: number
  /** A connection silent this long is dead (default 20 s); also the handshake's deadline. */
  deadAfterMs: number
}

const EMPTY = Buffer.alloc(0)

/**
 * Runs the Noise handshake on a connected socket and makes it a carrier; rejects (the socket
 * destroyed) if the handshake fails or times out.
 */
export async function directCarrier (socket: net.Socket, initiator: boolean, keyPair: KeyPair, wire: WireMode, timing: DirectTiming): Promise<FramedCarrier> {
  socket.setNoDelay(true)
  socket.setKeepAlive(true, timing.keepAliveMs)
  const session = await noiseHandshake(socket, initiator, keyPair, timing.deadAfterMs)
  return new FramedCarrier(socket, session, wire, timing)
}

export class FramedCarrier implements Carrier {
  readonly remoteId: string
  readonly handshakeHash: Buffer
  readonly isInitiator: boolean
  private readonly socket: net.Socket
  private readonly session: NoiseSession
  private readonly wire: WireMode
  private readonly timing: DirectTiming
  private readonly sealer: FrameSealer
  private readonly reader: FrameReader
  private on: CarrierEvents | null = null
  private helloSeen = false
  private sentAt = 0
  /** When the peer's last bytes came: a socket's own timeout counts our keep-alives as activity. */
  private heardAt = Date.now()
  /** Not reading (the Link serves too much already): the peer's silence is ours then. */
  private paused = false
  private keepAlive: NodeJS.Timeout | null = null
  private failed = false

  constructor (socket: net.Socket, session: NoiseSession, wire: WireMode, timing: DirectTiming) {
    this.socket = socket
    this.session = session
    this.wire = wire
    this.timing = timing
    this.remoteId = session.remotePublicKey.toString('hex')
    this.handshakeHash = session.hash
    this.isInitiator = session.isInitiator
    const keys = frameKeys(session.tx, session.rx)
    this.sealer = new FrameSealer(keys.send)
    this.reader = new FrameReader(keys.receive)
  }

  open (hello: Hello, on: CarrierEvents): void {
    this.on = on
    const { socket } = this
    socket.on('error', err => this.fail(err))
    socket.on('close', () => {
      if (this.keepAlive !== null) clearInterval(this.keepAlive)
      on.close('connection closed')
    })
    socket.on('drain', () => on.drain())
    socket.on('data', (chunk: Buffer) => this.received(chunk))
    // A frozen, killed or cut-off peer sends nothing, not even keep-alives: silence is death.
    this.keepAlive = setInterval(() => {
      const now = Date.now()
      if (!this.paused && now - this.heardAt > this.timing.deadAfterMs) return this.fail(SheepError.unreachable(`nothing heard for ${this.timing.deadAfterMs} ms`))
      if (now - this.sentAt >= this.timing.keepAliveMs) this.write(FrameType.KeepAlive, EMPTY, EMPTY)
    }, Math.min(this.timing.keepAliveMs, this.timing.deadAfterMs) / 4)
    this.keepAlive.unref()
    // The hello goes as data: with its view (up to 1024 members) it may be larger than a head.
    this.write(FrameType.Hello, EMPTY, encode(helloCodec, hello), this.wire === 'plain-authenticated' ? WANTS_PLAIN : 0)
    // What came with the handshake is read after the caller's listeners are on (they attach once
    // the Link's constructor, which calls open, returns); the socket stays paused until then.
    process.nextTick(() => {
      if (this.session.rest.length > 0) this.received(this.session.rest)
      socket.resume()
    })
  }

  sendRequest (req: Request): boolean {
    return this.write(FrameType.Request, encode(requestHead, req), req.data)
  }

  sendResponse (res: Response): boolean {
    return this.write(FrameType.Response, encode(responseHead, res), res.data)
  }

  recycle (data: Uint8Array): void { this.reader.ready(data) }

  get plain (): boolean { return this.sealer.plain }

  pause (): void {
    this.paused = true
    this.socket.pause()
  }

  resume (): void {
    this.paused = false
    this.heardAt = Date.now()
    this.socket.resume()
  }
  end (): void { this.socket.end() }
  destroy (): void { this.socket.destroy() }

  private write (type: FrameType, head: Uint8Array, data: Uint8Array, flags = 0): boolean {
    if (this.socket.destroyed || this.failed) return false
    this.sentAt = Date.now()
    const pieces = this.sealer.seal(type, head, data, flags)
    this.socket.cork()
    let ok = true
    for (const p of pieces) if (p.length > 0) ok = this.socket.write(p)
    this.socket.uncork()
    return ok
  }

  private received (chunk: Buffer): void {
    if (this.failed) return
    this.heardAt = Date.now()
    try {
      this.reader.push(chunk, f => this.deliver(f))
    } catch (err) {
      this.fail(err as Error)
    }
  }

  private deliver (f: Frame): void {
    const on = this.on as CarrierEvents
    switch (f.type) {
      case FrameType.KeepAlive: return
      case FrameType.Hello: {
        if (this.helloSeen) throw SheepError.protocol('a second hello')
        if (f.head.length > 0) throw SheepError.protocol('a hello with a head')
        this.helloSeen = true
        const h = decode(helloCodec, f.data, 'hello')
        // Plain frames only when both ends asked: each end sends them once it saw the other's hello.
        const plain = this.wire === 'plain-authenticated' && (f.flags & WANTS_PLAIN) !== 0
        this.sealer.plain = plain
        this.reader.acceptPlain = plain
        this.reader.maxBody = MAX_BODY
        on.hello(h)
        return
      }
      case FrameType.Request:
        on.request({ ...decode(requestHead, f.head, 'request'), data: f.data })
        return
      case FrameType.Response:
        on.response({ ...decode(responseHead, f.head, 'response'), data: f.data })
    }
  }

  /** The connection ends with err, reported once; close follows from the socket. */
  private fail (err: Error): void {
    if (this.failed) return
    this.failed = true
    this.on?.error(err)
    this.socket.destroy()
  }
}
