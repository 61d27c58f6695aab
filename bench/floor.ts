// The floor the transport alone puts under a replicated write, measured in the same run as the
// cluster columns it bounds. With three copies a guest write is answered once both remote replicas
// have it, and libfuse 2 hands a 1 MiB O_DIRECT write over as eight 128 KiB requests one after the
// other: each request costs at least one round trip to two peers at once, a sync one more. Two
// child processes (floor-peer.ts) play the replicas, reached as Sheep's nodes reach each other
// over direct TCP (Noise secret-stream, Link, the protocol's codecs), and answer each Write at
// once: what is timed is network, crypto and protocol, no disk. Requests go one at a time, each to
// both peers, the next only once both have answered.
//
// `node dist/bench/floor.js` measures it on its own and prints the three figures.

import { type ChildProcess, fork } from 'node:child_process'
import crypto from 'node:crypto'
import net from 'node:net'
import path from 'node:path'
import DHT from 'hyperdht'
import { isErrorCode, SheepError } from '../src/errors'
import { DEFAULT_REQUEST_TIMEOUT_MS } from '../src/swarm/gateway'
import { type Link, type RequestHandler, short } from '../src/swarm/link'
import { Op, type Request } from '../src/swarm/messages'
import type { WireMode } from '../src/swarm/frames'
import { newSecret } from '../src/swarm/proof'
import type { Member } from '../src/swarm/view'
import * as cleanup from './cleanup'
import { linkOver, memberOf, type PeerReady, type PeerStart, RawEnd } from './floor-peer'
import { median } from './report'
import { FLOOR_BYTES, FLOOR_IDS, FLOOR_PATH, type FloorId } from './rows'

export interface FloorStats {
  meanUs: number
  medianUs: number
  /** Requests timed (each one sent to both peers). */
  requests: number
}

export type FloorResult = Record<FloorId, FloorStats>

/** The remote replicas of a three-copy write. */
const PEERS = 2
/** Enough for the JIT and TCP's window to settle; not timed. */
const WARMUP = { requests: 200, ms: 500 }
/** Per figure, whichever limit comes first: the machine is shared and the run is long already. */
const MEASURED = { requests: 2000, ms: 2000 }
/** A peer that has not listened by then is stuck. */
const READY_MS = 10_000
const OUTPUT_TAIL = 4096

interface Peer {
  child: ChildProcess
  /** The end of its stderr, for error messages. */
  output: () => string
}

/** One way to send a Write's bytes to a peer and wait for its answer. */
type Send = (data: Buffer) => Promise<void>

/** Starts both peers, times every figure, and stops the peers whatever happens. */
export async function measureFloor (): Promise<FloorResult> {
  const secret = newSecret()
  const peers = Array.from({ length: PEERS }, forkPeer)
  const closers: Array<() => void> = []
  try {
    const keyPair = DHT.keyPair()
    const self = memberOf(keyPair, 0)
    const readies = await Promise.all(peers.map(async p => await whenReady(p, secret)))
    const ends = async (path: 'encrypted' | 'plain-authenticated' | 'raw'): Promise<Send[]> => await Promise.all(readies.map(async ready => {
      if (path === 'raw') {
        const socket = net.connect({ host: '127.0.0.1', port: ready.rawPort })
        await new Promise(resolve => socket.once('connect', resolve))
        const raw = new RawEnd(socket, false)
        closers.push(() => raw.close())
        return async (data: Buffer) => await raw.send(data)
      }
      const link = await connect(ready, secret, keyPair, self, path)
      closers.push(() => link.close('the floor is measured'))
      return async (data: Buffer) => await write(link, data)
    }))
    const paths = { encrypted: await ends('encrypted'), 'plain-authenticated': await ends('plain-authenticated'), raw: await ends('raw') }
    const result: Partial<FloorResult> = {}
    for (const id of FLOOR_IDS) result[id] = await timeBoth(paths[FLOOR_PATH[id]], FLOOR_BYTES[id])
    return result as FloorResult
  } finally {
    for (const close of closers) close()
    await Promise.all(peers.map(async p => await cleanup.stopChild(p.child, 1000)))
  }
}

export function formatFloor (id: FloorId, s: FloorStats): string {
  return `${id} mean ${Math.round(s.meanUs)} µs, median ${Math.round(s.medianUs)} µs (${s.requests} requests)`
}

function forkPeer (): Peer {
  // detached: a Ctrl-C in the terminal reaches only the benchmark, which stops its children (cleanup.ts).
  const child = fork(path.join(__dirname, 'floor-peer.js'), [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], detached: true })
  cleanup.trackChild(child, 'tool')
  let output = ''
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { output = (output + d).slice(-OUTPUT_TAIL) })
  return { child, output: () => output }
}

/** Gives the peer the secret and waits for the port it listens on. */
async function whenReady (peer: Peer, secret: Buffer): Promise<PeerReady> {
  const { child } = peer
  const what = `floor peer (pid ${child.pid ?? 'none'})`
  return await new Promise<PeerReady>((resolve, reject) => {
    const done = (): void => {
      clearTimeout(timer)
      child.off('exit', onExit)
      child.off('error', fail)
    }
    const fail = (err: Error): void => {
      done()
      const output = peer.output().trim()
      reject(new Error(`${what}: ${err.message}${output === '' ? '' : `; its output:\n${output}`}`))
    }
    const onExit = (code: number | null, signal: string | null): void => fail(new Error(`exited (${code ?? signal}) before it listened`))
    const timer = setTimeout(() => fail(new Error(`did not listen within ${READY_MS / 1000} s`)), READY_MS)
    child.once('exit', onExit)
    child.once('error', fail)
    child.once('message', (msg: PeerReady) => {
      done()
      resolve(msg)
    })
    const start: PeerStart = { secret: secret.toString('hex') }
    child.send(start)
  })
}

/** Nothing asks this end anything; a peer that does is broken. */
const refuse: RequestHandler = async req => { throw SheepError.invalid(`the floor's parent takes no requests (op ${req.op})`) }

async function connect (ready: PeerReady, secret: Buffer, keyPair: DHT.KeyPair, self: Member, wire: WireMode): Promise<Link> {
  const socket = net.connect({ host: '127.0.0.1', port: ready.port })
  const log = (line: string): void => { process.stderr.write(`floor: ${line}\n`) }
  return await linkOver(socket, true, { keyPair, secret, self, onRequest: refuse, expected: ready.id, log, wire })
}

/** Times one Write of `bytes` to every peer at once, answered by all, again and again after a warm-up. */
async function timeBoth (ends: Send[], bytes: number): Promise<FloorStats> {
  const data = crypto.randomBytes(bytes)
  const once = async (): Promise<number> => {
    const start = process.hrtime.bigint()
    await Promise.all(ends.map(async send => await send(data)))
    return Number(process.hrtime.bigint() - start) / 1000
  }
  await repeat(once, WARMUP)
  const samples = await repeat(once, MEASURED)
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length
  return { meanUs: mean, medianUs: median(samples) as number, requests: samples.length }
}

/** Calls fn one call after the other until either limit is reached (at least once); its results. */
async function repeat (fn: () => Promise<number>, limit: { requests: number, ms: number }): Promise<number[]> {
  const out: number[] = []
  const end = Date.now() + limit.ms
  do out.push(await fn())
  while (out.length < limit.requests && Date.now() < end)
  return out
}

/** As the gateway sends a Write to a replica: its error answer is an error here too. */
async function write (link: Link, data: Buffer): Promise<void> {
  const req: Omit<Request, 'id'> = { epoch: 1, op: Op.Write, oid: 1n, offset: 0, length: 0, version: 0, data }
  const res = await link.call(req, DEFAULT_REQUEST_TIMEOUT_MS)
  if (res.error !== '') throw new SheepError(isErrorCode(res.error) ? res.error : 'EIO', `floor peer ${short(link.remoteId)}: ${res.message}`)
}

if (require.main === module) {
  // On its own, nothing else stops the peers on Ctrl-C (they also exit when this process is gone).
  process.once('SIGINT', () => {
    cleanup.cleanupSync()
    process.exit(130)
  })
  measureFloor().then(r => {
    for (const id of FLOOR_IDS) process.stdout.write(formatFloor(id, r[id]) + '\n')
  }, (err: Error) => {
    process.stderr.write(`floor: ${err.message}\n`)
    process.exitCode = 1
  })
}
