// The daemon's side of the control socket. Every request is checked before it reaches the node;
// a malformed one gets an EINVAL answer and changes nothing.

import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { SheepError, toSheepError } from '../errors'
import { MAX_REQUEST_BYTES, OPS, type Op, type Reply, type Request, type Requests } from './messages'

export type Progress = (done: number, total: number) => void
export type Handlers = { [K in Op]: (args: Requests[K]['args'], progress: Progress) => Promise<Requests[K]['result']> }

export class ControlServer {
  private readonly server: net.Server
  private readonly socketPath: string

  constructor (socketPath: string, handlers: Handlers, log: (line: string) => void) {
    this.socketPath = socketPath
    // allowHalfOpen: a client may close its side after the request (nc -U, socat) and still get the answer.
    this.server = net.createServer({ allowHalfOpen: true }, socket => {
      let buffered = ''
      let handled = false
      socket.setEncoding('utf8')
      socket.on('error', () => {})
      socket.on('data', (chunk: string) => {
        if (handled) return
        buffered += chunk
        const nl = buffered.indexOf('\n')
        if (nl < 0) {
          if (buffered.length > MAX_REQUEST_BYTES) { handled = true; answer(socket, errorReply(SheepError.invalid('request too long'))) }
          return
        }
        handled = true
        let request: Request
        try {
          const line = buffered.slice(0, nl)
          if (Buffer.byteLength(line) > MAX_REQUEST_BYTES) throw SheepError.invalid('request too long')
          request = parseRequest(line)
        } catch (err) {
          answer(socket, errorReply(err))
          return
        }
        const progress: Progress = (done, total) => { if (!socket.destroyed) socket.write(JSON.stringify({ type: 'progress', done, total }) + '\n') }
        const handler = handlers[request.op] as (args: unknown, progress: Progress) => Promise<unknown>
        handler(request.args, progress).then(
          result => answer(socket, { type: 'result', ok: true, result: result ?? null }),
          err => {
            if (!(err instanceof SheepError)) log(`control ${request.op} failed: ${(err as Error)?.stack ?? String(err)}`)
            answer(socket, errorReply(err))
          })
      })
    })
  }

  async listen (): Promise<void> {
    await fs.promises.mkdir(path.dirname(this.socketPath), { recursive: true, mode: 0o755 })
    // A socket file left by a daemon that died; the store lock proves no live daemon owns it.
    await fs.promises.rm(this.socketPath, { force: true })
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(this.socketPath, () => { this.server.off('error', reject); resolve() })
    })
    await fs.promises.chmod(this.socketPath, 0o600)
  }

  async close (): Promise<void> {
    await new Promise<void>(resolve => this.server.close(() => resolve()))
    await fs.promises.rm(this.socketPath, { force: true })
  }
}

function answer (socket: net.Socket, reply: Reply): void {
  if (!socket.destroyed) socket.end(JSON.stringify(reply) + '\n')
}

function errorReply (err: unknown): Reply {
  const e = toSheepError(err)
  return { type: 'result', ok: false, error: { code: e.code, message: e.message } }
}

const isString = (v: unknown): v is string => typeof v === 'string'
const isSize = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
const optional = <T>(check: (v: unknown) => v is T) => (v: unknown): v is T | undefined => v === undefined || check(v)
const isBool = (v: unknown): v is boolean => typeof v === 'boolean'

const SHAPES: { [K in Op]: Record<string, (v: unknown) => boolean> } = {
  status: {},
  'image.list': {},
  'image.create': { name: isString, size: isSize, objectSize: optional(isSize), copies: optional(isSize) },
  'image.delete': { name: isString },
  'image.resize': { name: isString, size: isSize },
  'image.rename': { from: isString, to: isString },
  'image.clone': { source: isString, tag: optional(isString), name: isString },
  'image.flatten': { name: isString },
  'image.tree': {},
  'cluster.token': {},
  'node.list': {},
  'node.admit': { id: isString },
  'node.remove': { id: isString },
  'cluster.rotate': {},
  'snapshot.create': { name: isString, tag: isString },
  'snapshot.list': { name: isString },
  'snapshot.delete': { name: isString, tag: isString },
  'snapshot.rollback': { name: isString, tag: isString },
  stop: { force: optional(isBool) }
}

export function parseRequest (line: string): Request {
  let raw: unknown
  try {
    raw = JSON.parse(line)
  } catch {
    throw SheepError.invalid('request is not JSON')
  }
  if (typeof raw !== 'object' || raw === null) throw SheepError.invalid('request must be an object')
  const { op, args = {} } = raw as { op?: unknown, args?: unknown }
  if (!isString(op) || !(OPS as readonly string[]).includes(op)) throw SheepError.invalid(`unknown operation ${JSON.stringify(op)}`)
  if (typeof args !== 'object' || args === null || Array.isArray(args)) throw SheepError.invalid('args must be an object')
  const shape = SHAPES[op as Op]
  for (const key of Object.keys(args)) if (!Object.hasOwn(shape, key)) throw SheepError.invalid(`${op}: unknown argument ${JSON.stringify(key)}`)
  for (const [key, check] of Object.entries(shape)) {
    if (!check((args as Record<string, unknown>)[key])) throw SheepError.invalid(`${op}: bad or missing argument ${JSON.stringify(key)}`)
  }
  return { op: op as Op, args: args as Requests[Op]['args'] }
}
