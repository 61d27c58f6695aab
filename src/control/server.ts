// The daemon's side of the control socket. Every request is checked before it reaches the node;
// a malformed one gets an EINVAL answer and changes nothing.
//
// Who may ask: root and the daemon's own user, no one else. Node cannot ask the kernel who is on
// the other end of a unix socket (no SO_PEERCRED), so the file system decides: the socket lives
// in a folder of the daemon's user that no one else may enter (0700), and is itself 0600. A
// folder or socket path there that another user owns, or that others may write, is refused at
// start rather than used: whoever owns it could stand in for the daemon or watch its commands.

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
  private readonly log: (line: string) => void

  constructor (socketPath: string, handlers: Handlers, log: (line: string) => void) {
    this.socketPath = socketPath
    this.log = log
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

  /**
   * Fails unless the socket's folder and path are this user's to use (see the top): what `start`
   * checks first, before it mounts anything.
   */
  static async check (socketPath: string, log: (line: string) => void): Promise<void> {
    await ownFolder(path.dirname(socketPath), log)
    await staleSocket(socketPath)
  }

  async listen (): Promise<void> {
    await ControlServer.check(this.socketPath, this.log)
    // A socket left by a daemon that died: the store lock, held by now, proves no live daemon owns it.
    if (await staleSocket(this.socketPath)) await fs.promises.rm(this.socketPath)
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

const uid = (): number => process.getuid?.() ?? 0

/**
 * Makes `dir` (0700) or checks it: a folder (not a link), of this process's user, that no one
 * else may write. One only others may read or enter (as versions before made /run/sheep, 0755)
 * is narrowed to 0700.
 */
async function ownFolder (dir: string, log: (line: string) => void): Promise<void> {
  await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 })
  const st = await fs.promises.lstat(dir)
  const fix = `remove it, or set SHEEP_RUN_DIR to a folder of this user's`
  if (!st.isDirectory()) throw new SheepError('EACCES', `control socket folder ${dir} is not a folder (a link or a file): ${fix}`)
  if (st.uid !== uid()) throw new SheepError('EACCES', `control socket folder ${dir} belongs to uid ${st.uid}, not to this daemon's user (uid ${uid()}): ${fix}`)
  if ((st.mode & 0o022) !== 0) {
    throw new SheepError('EACCES', `control socket folder ${dir} may be written by other users (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}): ${fix}, or chmod 700 it`)
  }
  if ((st.mode & 0o077) !== 0) {
    await fs.promises.chmod(dir, 0o700)
    log(`control socket folder ${dir}: mode narrowed to 0700 (no other user may reach the socket)`)
  }
}

/** Whether a socket of this user's is at `socketPath` (a daemon's, live or dead); refuses anything else there. */
async function staleSocket (socketPath: string): Promise<boolean> {
  let st: fs.Stats
  try {
    st = await fs.promises.lstat(socketPath)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw err
  }
  if (st.uid !== uid()) throw new SheepError('EACCES', `control socket ${socketPath} already exists and belongs to uid ${st.uid}, not to this daemon's user (uid ${uid()}): remove it if no sheep daemon uses it`)
  if (!st.isSocket()) throw SheepError.exists(`control socket ${socketPath} exists and is not a socket: remove it`)
  return true
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
/** A uid or gid a file may have ((uid_t)-1 is chown's "unchanged"). */
const isId = (v: unknown): v is number => isSize(v) && v < 0xffffffff
const isMode = (v: unknown): v is number => isSize(v) && v <= 0o7777

const SHAPES: { [K in Op]: Record<string, (v: unknown) => boolean> } = {
  status: {},
  'image.list': {},
  'image.create': { name: isString, size: isSize, objectSize: optional(isSize), copies: optional(isSize), uid: optional(isId), gid: optional(isId), mode: optional(isMode) },
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
  'cluster.forceStart': {},
  check: { name: optional(isString), repair: optional(isBool) },
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
