// `sheep start`: the daemon in the foreground, or a detached daemon that reports back once its
// mount answers (through a pipe on fd 3), so `--detach` returns only when /sheep is usable.

import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from '../src/errors'
import { checkStoreFolder, type ClusterNodeOptions, type ScrubSettings, SheepNode } from '../src/node'
import type { Frontend } from '../src/fuse/mount'

export interface StartOptions {
  store: string
  mount: string
  detach: boolean
  copies?: number
  objectSize?: number
  ioTimeout?: number
  fuse: Frontend | 'auto'
  /** The mount root's mode (default 0755). */
  rootMode?: number
  scrub?: ScrubSettings
  cluster?: ClusterNodeOptions
  /** The arguments of `start`, to hand to the detached daemon. */
  argv: string[]
}

const READY_FD = 3

function log (line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`)
}

export async function startCommand (opts: StartOptions): Promise<void> {
  if (opts.detach) return await startDetached(opts)
  const report = process.env.SHEEP_READY_FD === String(READY_FD)
    ? (line: string) => { try { fs.writeSync(READY_FD, line + '\n'); fs.closeSync(READY_FD) } catch {} }
    : () => {}
  const node = new SheepNode({
    store: opts.store,
    mount: opts.mount,
    createOptions: { copies: opts.copies, objectSize: opts.objectSize },
    ioTimeout: opts.ioTimeout === undefined ? undefined : opts.ioTimeout * 1000,
    fuse: opts.fuse,
    rootMode: opts.rootMode,
    scrub: opts.scrub,
    cluster: opts.cluster,
    log
  })
  const onSignal = (signal: string): void => {
    log(`${signal}: stopping`)
    node.stop(true).catch(err => { log(`stop failed: ${(err as Error).message}`); process.exit(1) })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  process.on('SIGHUP', () => {})
  try {
    await node.start()
  } catch (err) {
    report(`error: ${(err as Error).message}`)
    // A signal during the start: it closed what it had opened, the mount included.
    if (err instanceof SheepError && err.code === 'ESHUTDOWN') process.exit(0)
    throw err
  }
  report('ready')
  await node.stopped
  process.exit(0)
}

async function startDetached (opts: StartOptions): Promise<void> {
  // Refuse a foreign folder before the log file lands in it.
  await checkStoreFolder(path.resolve(opts.store))
  await fs.promises.mkdir(opts.store, { recursive: true })
  const logFile = path.join(path.resolve(opts.store), 'sheep.log')
  const out = fs.openSync(logFile, 'a')
  const args = opts.argv.filter(a => a !== '--detach')
  const child = spawn(process.execPath, [path.join(__dirname, 'sheep.js'), 'start', ...args], {
    detached: true,
    stdio: ['ignore', out, out, 'pipe'],
    env: { ...process.env, SHEEP_READY_FD: String(READY_FD) }
  })
  fs.closeSync(out)
  const pipe = child.stdio[READY_FD] as NodeJS.ReadableStream
  let said = ''
  pipe.setEncoding('utf8')
  pipe.on('data', (chunk: string) => { said += chunk })
  const exitCode = await new Promise<number | null>(resolve => {
    pipe.on('end', () => resolve(null))
    child.on('exit', code => resolve(code ?? 1))
  })
  const line = said.trim()
  if (line === 'ready') {
    child.unref()
    ;(pipe as unknown as { destroy: () => void }).destroy()
    process.stdout.write(`sheep started (pid ${child.pid}): ${path.resolve(opts.mount)} is ready; log in ${logFile}\n`)
    process.exit(0)
  }
  const reason = line.startsWith('error: ') ? line.slice(7) : `the daemon exited${exitCode === null ? '' : ` with status ${exitCode}`} before its mount was ready; see ${logFile}`
  process.stderr.write(`sheep: ${reason}\n`)
  process.exit(1)
}
