// The filesystems the benchmark compares, each behind one interface so that more columns (the
// three-node cluster of cluster.ts, another baseline) are one more class each.

import { type ChildProcess, spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { call } from '../src/control/client'
import type { Op, Requests } from '../src/control/messages'
import { controlSocketPath } from '../src/control/paths'
import type { Frontend } from '../src/fuse/mount'
import * as cleanup from './cleanup'
import type { Goals } from './rows'

/** What the copy-on-write measurements need of a target that has snapshots and clones. */
export interface CowAccess {
  /** Sends one request to the target's control socket and waits for its answer. */
  call: <K extends Op>(op: K, args: Requests[K]['args']) => Promise<Requests[K]['result']>
  /** The folder holding the whole store (data and index), whose disk usage is measured. */
  storeDir: string
  /** The folder of the objects of one image or snapshot (by vid) inside storeDir. */
  vidDir: (vid: number) => string
}

export interface Target {
  /**
   * 'fuse': a filesystem served by daemons (pids()), whose CPU per request is measured; 'plain':
   * a folder on the local disk with no daemon (ext4.ts, the physical limit), fio rows and convert only.
   */
  readonly kind: 'fuse' | 'plain'
  /** Column heading, e.g. "sheep (1 host)". */
  readonly name: string
  /** The folder the benchmark's files go in. */
  readonly mount: string
  /** Targets as ratios against the baseline (the first target), by row id; none for the baseline. */
  readonly goals: Goals
  /** A one-line description for the report, known after setup. */
  readonly description: string
  /** Starts the filesystem; resolves when its mount is usable. */
  setup (): Promise<void>
  /** Stops everything setup started and unmounts; safe to call more than once, and after a failed setup. */
  teardown (): Promise<void>
  /** Copies of each byte the guest writes that the target keeps (the floor of its store writes per guest byte). */
  readonly copies: number
  /** PIDs of the processes whose memory and disk writes count as this target's (its daemons), in a fixed order. */
  pids (): number[]
  /** What to call each of pids() in the report, in the same order. */
  pidLabels (): string[]
  /** Folders on the local disk whose files hold the target's data (read to warm the page cache; their growth is measured). */
  dataDirs (): string[]
  /** Null while healthy; otherwise what went wrong (a daemon exited), with its last output. */
  problem (): string | null
  /**
   * The daemons' last output, quoted with a failed measurement that problem() does not explain
   * (a job that failed or hung while every daemon still runs): the clue is usually in their logs.
   */
  diagnose? (): string
  /** Checked after each measurement (not timed); what it finds wrong goes into notes(). */
  verify? (after: string): Promise<void>
  /** Things seen during the run that the report should mention under the target's description (a cluster view that changed). */
  notes? (): string[]
  /** The daemons' log files, copied to bench/results/logs/ when the run had failures (the temporary folder goes). */
  logFiles? (): string[]
  /** Present on targets with snapshots and clones (Sheep); they get the copy-on-write table too. */
  readonly cow?: CowAccess
  /** fio options appended to every job's on this target (fio takes the last value of an option). */
  readonly fioOptions?: string[]
  /** qemu-img convert options for this target (before the file names). */
  readonly qemuImgOptions?: string[]
}

const LOG_TAIL = 64 * 1024

/** A long-running child (a FUSE daemon) with its output kept for error messages, and in a file if asked. */
export class DaemonProcess {
  readonly label: string
  /** Where all of its output also goes; the tail kept in memory is for error messages only. */
  readonly logFile: string | null
  child: ChildProcess | null = null
  output = ''

  constructor (label: string, logFile: string | null = null) {
    this.label = label
    this.logFile = logFile
  }

  spawn (cmd: string, args: string[], env: NodeJS.ProcessEnv, extraFds = 0): ChildProcess {
    const stdio: Array<'ignore' | 'pipe'> = ['ignore', 'pipe', 'pipe']
    for (let i = 0; i < extraFds; i++) stdio.push('pipe')
    // detached: a Ctrl-C in the terminal reaches only the benchmark, which stops things in order.
    const child = spawn(cmd, args, { stdio, env, detached: true })
    this.child = child
    cleanup.trackChild(child, 'daemon')
    const log = this.logFile === null ? null : fs.createWriteStream(this.logFile, { flags: 'a' })
    child.once('close', () => log?.end())
    const keep = (d: Buffer): void => {
      log?.write(d)
      this.output += d.toString()
      if (this.output.length > LOG_TAIL) this.output = this.output.slice(-LOG_TAIL / 2)
    }
    child.stdout?.on('data', keep)
    child.stderr?.on('data', keep)
    return child
  }

  get pid (): number | null {
    return this.child?.pid ?? null
  }

  problem (): string | null {
    const c = this.child
    if (c === null) return `${this.label} is not running`
    if (!cleanup.exited(c)) return null
    return `${this.label} (pid ${c.pid}) exited (${c.exitCode ?? c.signalCode}); its last output:\n${tail(this.output)}`
  }

  async stop (graceMs: number): Promise<void> {
    if (this.child !== null) await cleanup.stopChild(this.child, graceMs)
  }

  /** Resolves when `ready` does; rejects when the process exits first or the time runs out. */
  waitFor (ready: Promise<void>, timeoutMs: number): Promise<void> {
    const child = this.child
    if (child === null) return Promise.reject(new Error(`${this.label} was not started`))
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.label} was not ready within ${timeoutMs / 1000} s; its output:\n${tail(this.output)}`)), timeoutMs)
      const onExit = (code: number | null, signal: string | null): void => {
        clearTimeout(timer)
        // Let the last output arrive before quoting it.
        setTimeout(() => reject(new Error(`${this.label} exited (${code ?? signal}) before it was ready; its output:\n${tail(this.output)}`)), 100)
      }
      child.once('exit', onExit)
      ready.then(() => { clearTimeout(timer); child.off('exit', onExit); resolve() },
        err => { clearTimeout(timer); child.off('exit', onExit); reject(err) })
    })
  }
}

export function tail (text: string, lines = 20): string {
  const all = text.trimEnd().split('\n')
  return all.slice(-lines).map(l => '    ' + l).join('\n') || '    (nothing)'
}

/** The Node passthrough FUSE filesystem from shared/bench: the baseline every ratio is against. */
export class PassthroughTarget implements Target {
  readonly kind = 'fuse'
  readonly name = 'passthrough'
  readonly goals: Goals = {}
  readonly copies = 1
  readonly mount: string
  readonly backing: string
  description = 'Node passthrough FUSE'
  private readonly script: string
  private readonly nodePath: string
  private readonly daemon = new DaemonProcess('the passthrough')

  /** dir: an empty folder of its own; script: passthrough.js; nodeModules: where fuse-native is. */
  constructor (dir: string, script: string, nodeModules: string) {
    this.backing = path.join(dir, 'backing')
    this.mount = path.join(dir, 'mnt')
    this.script = script
    this.nodePath = nodeModules
  }

  async setup (): Promise<void> {
    fs.mkdirSync(this.backing, { recursive: true })
    fs.mkdirSync(this.mount, { recursive: true })
    cleanup.trackMount(this.mount)
    const env = { ...process.env, NODE_PATH: [this.nodePath, process.env.NODE_PATH].filter(Boolean).join(path.delimiter) }
    const child = this.daemon.spawn(process.execPath, [this.script, this.backing, this.mount,
      '--big-writes', '--max-write=131072', '--max-read=131072'], env)
    const mounted = new Promise<void>(resolve => {
      let out = ''
      const onData = (d: Buffer): void => {
        out += d.toString()
        const line = out.split('\n').slice(0, -1).find(l => l.startsWith('mounted '))
        if (line !== undefined) {
          child.stdout?.off('data', onData)
          this.description = `node ${path.basename(this.script)}: ${line.replace(/^mounted \S+ at \S+ /, '')}`
          resolve()
        }
      }
      child.stdout?.on('data', onData)
    })
    await this.daemon.waitFor(mounted, 30_000)
    if (!cleanup.isMounted(this.mount)) throw new Error(`the passthrough said it mounted ${this.mount}, but nothing is mounted there`)
  }

  async teardown (): Promise<void> {
    // The passthrough unmounts itself on SIGTERM.
    await this.daemon.stop(10_000)
    if (!await cleanup.unmount(this.mount)) throw new Error(`cannot unmount ${this.mount}`)
  }

  pids (): number[] {
    const pid = this.daemon.pid
    return pid === null ? [] : [pid]
  }

  pidLabels (): string[] {
    return ['the passthrough']
  }

  dataDirs (): string[] {
    return [this.backing]
  }

  problem (): string | null {
    return this.daemon.problem()
  }
}

export interface SheepTargetOptions {
  /** Column heading. */
  name: string
  /** The repository root: bin/sheep is started from there. */
  root: string
  /** Copies for images made through the mount. */
  copies: number
  goals: Goals
  /** The FUSE frontend to ask for (`sheep start --fuse`): named, so that a fallback cannot pass unnoticed. */
  fuse: Frontend
  /** Whether the copy-on-write table runs on this target (one column is enough). */
  cow: boolean
}

/** One Sheep daemon with a store, mount and control-socket folder of its own. */
export class SheepTarget implements Target {
  readonly kind = 'fuse'
  readonly name: string
  readonly goals: Goals
  readonly copies: number
  readonly mount: string
  readonly store: string
  readonly runDir: string
  readonly cow?: CowAccess
  description: string
  private readonly opts: SheepTargetOptions
  private readonly daemon = new DaemonProcess('the sheep daemon')

  constructor (dir: string, opts: SheepTargetOptions) {
    this.name = opts.name
    this.goals = opts.goals
    this.copies = opts.copies
    this.opts = opts
    this.store = path.join(dir, 'store')
    this.mount = path.join(dir, 'mnt')
    this.runDir = path.join(dir, 'run')
    this.description = `bin/sheep start --copies ${opts.copies} --fuse ${opts.fuse}`
    const socket = socketOf(this.mount, this.runDir)
    if (opts.cow) {
      this.cow = {
        call: async (op, args) => await call(socket, op, args),
        storeDir: this.store,
        // src/objects/local-store.ts: objects/<vid, 6 hex digits>/<object id>.
        vidDir: vid => path.join(this.store, 'objects', vid.toString(16).padStart(6, '0'))
      }
    }
  }

  async setup (): Promise<void> {
    fs.mkdirSync(this.runDir, { recursive: true })
    cleanup.trackMount(this.mount)
    const args = [path.join(this.opts.root, 'bin', 'sheep'), 'start', '--store', this.store, '--mount', this.mount,
      '--copies', String(this.opts.copies), '--fuse', this.opts.fuse]
    await startSheep(this.daemon, args, this.runDir, 60_000)
    if (!cleanup.isMounted(this.mount)) throw new Error(`the sheep daemon said ready, but nothing is mounted at ${this.mount}`)
    const frontend = await frontendOf(socketOf(this.mount, this.runDir), this.opts.fuse, 'the sheep daemon')
    this.description = `bin/sheep start --copies ${this.opts.copies} --fuse ${this.opts.fuse}; FUSE frontend ${frontend} ` +
      `(\`sheep status\`); UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? '8, its default'}`
  }

  async teardown (): Promise<void> {
    // SIGTERM makes the daemon stop (force) and unmount; a stuck one is killed after the grace time.
    await this.daemon.stop(30_000)
    if (!await cleanup.unmount(this.mount)) throw new Error(`cannot unmount ${this.mount}`)
  }

  pids (): number[] {
    const pid = this.daemon.pid
    return pid === null ? [] : [pid]
  }

  pidLabels (): string[] {
    return ['the daemon']
  }

  dataDirs (): string[] {
    return [path.join(this.store, 'objects')]
  }

  problem (): string | null {
    return this.daemon.problem()
  }

  diagnose (): string {
    return `the daemon's last output:\n${tail(this.daemon.output)}`
  }
}

/**
 * Runs `node ARGS` (bin/sheep start ...) as `daemon` with SHEEP_RUN_DIR set, and resolves once the
 * daemon says it is ready: it writes one line on fd 3 and closes it, "ready" or "error: ...".
 */
export async function startSheep (daemon: DaemonProcess, args: string[], runDir: string, timeoutMs: number): Promise<void> {
  const child = daemon.spawn(process.execPath, args, { ...process.env, SHEEP_RUN_DIR: runDir, SHEEP_READY_FD: '3' }, 1)
  const pipe = child.stdio[3] as NodeJS.ReadableStream
  const ready = new Promise<void>((resolve, reject) => {
    let said = ''
    pipe.setEncoding('utf8')
    pipe.on('data', (c: string) => { said += c })
    pipe.on('end', () => {
      if (said.trim() === 'ready') return resolve()
      // Let the last output arrive before quoting it.
      setTimeout(() => reject(new Error(`${daemon.label} did not start${said.trim() ? `: ${said.trim()}` : ''}; its output:\n${tail(daemon.output)}`)), 100)
    })
  })
  await daemon.waitFor(ready, timeoutMs)
}

/**
 * The FUSE frontend a daemon reports (`status`, what `sheep status --json` prints as fuse.frontend);
 * throws when it is not the one asked for, since the column's name would then be wrong.
 */
export async function frontendOf (socket: string, wanted: Frontend, who: string): Promise<Frontend> {
  const s = await call(socket, 'status', {})
  const got = s.fuse?.frontend
  if (got !== wanted) throw new Error(`${who} serves its mount with ${got ?? 'no FUSE session'}, not the ${wanted} frontend asked for`)
  return got
}

/** The daemon's control socket: controlSocketPath() of the mount, with SHEEP_RUN_DIR as the daemon gets it. */
export function socketOf (mount: string, runDir: string): string {
  const saved = process.env.SHEEP_RUN_DIR
  process.env.SHEEP_RUN_DIR = runDir
  try {
    return controlSocketPath(mount)
  } finally {
    if (saved === undefined) delete process.env.SHEEP_RUN_DIR
    else process.env.SHEEP_RUN_DIR = saved
  }
}
