// What a Link runs on: an authenticated connection that carries the hello, requests and
// responses. Two kinds: protomux over a Noise secret-stream (Hyperswarm's connections, whose keys
// stay inside the stream), and frames over TCP after our own Noise handshake (./direct.ts).
//
// Protomux runs our decoders and callbacks inside its own handlers and hands what they throw to
// safety-catch, which rethrows a RangeError or TypeError as an uncaught exception; so nothing may
// throw into protomux: codecs are wrapped by wire(), and the Link's callbacks catch everything.

import type { Duplex } from 'node:stream'
import Protomux from 'protomux'
import { type Hello, hello as helloCodec, PROTOCOL, type Request, request as requestCodec, type Response, response as responseCodec, wire } from './messages'

/** What a carrier hands to its Link; none of these may throw. */
export interface CarrierEvents {
  hello: (h: Hello) => void
  request: (req: Request) => void
  response: (res: Response) => void
  /** What was written has gone out (after a send returned false). */
  drain: () => void
  /** The connection failed or the peer sent something malformed; close follows. */
  error: (err: Error) => void
  close: (why: string) => void
}

export interface Carrier {
  /** The peer's public key, hex. */
  readonly remoteId: string
  /** The Noise handshake's hash, which the cluster-secret proof binds to. */
  readonly handshakeHash: Buffer
  readonly isInitiator: boolean
  /** Whether what goes out is authenticated only, not encrypted (--wire plain-authenticated at both ends). */
  readonly plain: boolean
  /** Sends this end's hello, then hands what the peer sends to `on`. Once. */
  open: (hello: Hello, on: CarrierEvents) => void
  /** false: the connection pushes back (a drain follows). */
  sendRequest: (req: Request) => boolean
  sendResponse: (res: Response) => boolean
  /** A request's data is done with (a Write's, once written): its memory may carry the next. */
  recycle: (data: Uint8Array) => void
  /** Stops and restarts reading from the peer (TCP pushes back on it meanwhile). */
  pause: () => void
  resume: () => void
  /** Closes once what was written has gone out. */
  end: () => void
  destroy: () => void
}

/** A Noise secret-stream after its handshake (a Hyperswarm connection). */
export interface SecureStream extends Duplex {
  remotePublicKey: Buffer | null
  handshakeHash: Buffer | null
  isInitiator: boolean
}

/** One protomux channel on a secret-stream, whose opening handshake is the hello. */
export function muxCarrier (stream: SecureStream): Carrier {
  const remoteId = stream.remotePublicKey?.toString('hex') ?? ''
  const handshakeHash = stream.handshakeHash
  if (handshakeHash === null || remoteId === '') throw new Error('a link needs a stream whose handshake is done')
  let send: { request: (r: Request) => boolean, response: (r: Response) => boolean } | null = null
  return {
    remoteId,
    handshakeHash,
    isInitiator: stream.isInitiator,
    plain: false,
    open (hello, on) {
      // A malformed or oversized message ends up here too: protomux destroys the stream with it.
      stream.on('error', (err: Error) => on.error(err))
      stream.on('close', () => on.close('connection closed'))
      stream.on('drain', () => on.drain())
      const mux = Protomux.from(stream)
      const channel = mux.createChannel<Hello>({
        protocol: PROTOCOL,
        handshake: wire(helloCodec, 'hello'),
        onopen: h => on.hello(h),
        onclose: () => on.close('channel closed')
      })
      if (channel === null) throw new Error(`a ${PROTOCOL} channel is already open on this connection`)
      const request = channel.addMessage({ encoding: wire(requestCodec, 'request'), onmessage: req => on.request(req) })
      const response = channel.addMessage({ encoding: wire(responseCodec, 'response'), onmessage: res => on.response(res) })
      send = { request: r => request.send(r), response: r => response.send(r) }
      channel.open(hello)
    },
    sendRequest: r => send?.request(r) ?? false,
    sendResponse: r => send?.response(r) ?? false,
    // protomux hands over buffers of its own: nothing to give back.
    recycle: () => {},
    pause: () => { stream.pause() },
    resume: () => { stream.resume() },
    end: () => { stream.end() },
    destroy: () => { stream.destroy() }
  }
}
