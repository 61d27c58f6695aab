// The Noise handshake that opens a direct (TCP) connection: XX over ed25519, the pattern, curve
// and node keys of Hyperswarm's secret-stream, so a node has one identity on both paths. Its
// messages go with a 3-byte little-endian length. What it yields are the two directions' keys
// (./frames.ts seals with them) and the handshake hash the cluster-secret proof binds to.

import type net from 'node:net'
import Noise from 'noise-handshake'
import curve from 'noise-curve-ed'
import { SheepError } from '../errors'

export interface NoiseSession {
  isInitiator: boolean
  /** Keys to send and to receive with: secret to this connection's two ends. */
  tx: Buffer
  rx: Buffer
  /** The transcript's hash: the same at both ends, never the same on two connections. */
  hash: Buffer
  remotePublicKey: Buffer
  /** What the peer sent after its last handshake message (its first frames), to be read first. */
  rest: Buffer
}

export interface KeyPair { publicKey: Buffer, secretKey: Buffer }

/** XX's messages are a key or two with their tags: anything longer is not a handshake. */
const MAX_MESSAGE = 256

/**
 * Runs the handshake on a connected socket; rejects with EPROTO on a malformed or failed one and
 * ENOTCONN if the socket closes or stays silent for timeoutMs first. Once it resolves, the socket
 * is paused with nothing read past `rest`: whoever takes it over attaches and resumes.
 */
export async function noiseHandshake (socket: net.Socket, initiator: boolean, keyPair: KeyPair, timeoutMs: number): Promise<NoiseSession> {
  const noise = new Noise('XX', initiator, keyPair, { curve })
  noise.initialise(Buffer.alloc(0))
  return await new Promise<NoiseSession>((resolve, reject) => {
    let pending: Buffer = Buffer.alloc(0)
    const finish = (err: Error | null, session?: NoiseSession): void => {
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('close', onClose)
      socket.pause()
      if (err !== null) {
        socket.destroy()
        reject(err)
      } else {
        resolve(session as NoiseSession)
      }
    }
    const send = (): void => {
      const m = noise.send()
      const framed = Buffer.allocUnsafe(3 + m.byteLength)
      framed.writeUIntLE(m.byteLength, 0, 3)
      framed.set(m, 3)
      socket.write(framed)
    }
    const done = (rest: Buffer): void => {
      finish(null, {
        isInitiator: initiator,
        tx: Buffer.from(noise.tx as Uint8Array),
        rx: Buffer.from(noise.rx as Uint8Array),
        hash: Buffer.from(noise.hash as Uint8Array),
        remotePublicKey: Buffer.from(noise.rs as Uint8Array),
        rest
      })
    }
    const onData = (chunk: Buffer): void => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk])
      try {
        while (pending.length >= 3) {
          const n = pending.readUIntLE(0, 3)
          if (n > MAX_MESSAGE) throw SheepError.protocol(`a handshake message of ${n} bytes`)
          if (pending.length < 3 + n) return
          const message = pending.subarray(3, 3 + n)
          pending = pending.subarray(3 + n)
          try {
            noise.recv(message)
          } catch (err) {
            throw SheepError.protocol(`Noise handshake failed: ${(err as Error).message}`)
          }
          if (!noise.complete) send()
          if (noise.complete) return done(pending)
        }
      } catch (err) {
        finish(err as Error)
      }
    }
    const onClose = (): void => finish(SheepError.unreachable('the connection closed during the Noise handshake'))
    const timer = setTimeout(() => finish(SheepError.unreachable(`no Noise handshake within ${timeoutMs} ms`)), timeoutMs)
    timer.unref()
    socket.on('data', onData)
    socket.on('close', onClose)
    if (initiator) send()
  })
}
