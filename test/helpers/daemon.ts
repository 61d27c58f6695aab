// Test harness: real sheep daemons as separate processes, each with its own temporary store,
// mount and control-socket folder, torn down (processes ended by PID, mounts unmounted, folders
// removed) when the test ends, passes or fails, and when the test process itself exits.

import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

export const ROOT = path.join(__dirname, '..', '..', '..')
export const SHEEP_BIN = path.join(ROOT, 'bin', 'sheep')

interface Teardownable {
  teardown (fn: () => unknown): void
  /** tap's: false once an assertion of the test failed (or it timed out). */
  passing?: () => boolean
}

/** Lines of each daemon's log shown when its test failed. */
const LOG_TAIL_LINES = 60

export interface RunResult { code: number | null, stdout: string, stderr: string }

/**
 * Cluster tests take a member that is gone out at once (`--out-after 0`, re-replication at the
 * next view), as every fault test before down members was written for; those of down members
 * (test/e2e/down-out.test.ts) give their own --out-after.
 */
function clusterDefaults (args: string[]): string[] {
  const clustered = args.includes('--join') || args.includes('--bootstrap-port') || args.includes('--bootstrap')
  return clustered && !args.includes('--out-after') ? ['--out-after', '0'] : []
}

export class Daemon {
  readonly dir: string
  readonly store: string
  readonly mount: string
  readonly runDir: string
  readonly extraArgs: string[]
  /** Added to the daemon's environment (failpoints). */
  readonly extraEnv: NodeJS.ProcessEnv
  /** A command the daemon is started under, which must exec it (nsenter into a network namespace). */
  readonly wrap: string[]
  proc: ChildProcess | null = null
  log = ''

  constructor (dir: string, extraArgs: string[], extraEnv: NodeJS.ProcessEnv = {}, wrap: string[] = []) {
    this.dir = dir
    this.extraEnv = extraEnv
    this.wrap = wrap
    this.store = path.join(dir, 'store')
    this.mount = path.join(dir, 'mnt')
    this.runDir = path.join(dir, 'run')
    this.extraArgs = extraArgs
  }

  get pid (): number {
    if (this.proc?.pid === undefined) throw new Error('daemon not running')
    return this.proc.pid
  }

  get env (): NodeJS.ProcessEnv {
    return { ...process.env, SHEEP_RUN_DIR: this.runDir }
  }

  /** Starts the daemon in the foreground of a child process and waits until its mount is ready. */
  async start (): Promise<void> {
    const argv = [process.execPath, SHEEP_BIN, 'start', '--store', this.store, '--mount', this.mount, ...clusterDefaults(this.extraArgs), ...this.extraArgs]
    // The wrapper execs the daemon: the PID stays the daemon's.
    const [cmd, ...args] = [...this.wrap, ...argv] as [string, ...string[]]
    const proc = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      env: { ...this.env, ...this.extraEnv, SHEEP_READY_FD: '3' }
    })
    this.proc = proc
    live.add(this)
    if (proc.pid !== undefined) tellReaper(`track ${proc.pid} ${this.dir}`)
    proc.stdout?.on('data', (d: Buffer) => { this.log += d.toString() })
    proc.stderr?.on('data', (d: Buffer) => { this.log += d.toString() })
    const ready = proc.stdio[3] as NodeJS.ReadableStream
    let said = ''
    ready.setEncoding('utf8')
    ready.on('data', (c: string) => { said += c })
    await new Promise<void>((resolve, reject) => {
      ready.on('end', () => said.trim() === 'ready' ? resolve() : reject(new Error(`daemon did not start: ${said.trim() || this.log}`)))
      proc.on('exit', code => reject(new Error(`daemon exited with ${code} before it was ready: ${said.trim() || this.log}`)))
    })
  }

  /** Ends the daemon the way a crash would. */
  async kill (signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const proc = this.proc
    if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = new Promise(resolve => proc.once('exit', resolve))
    proc.kill(signal)
    await exited
  }

  /** A clean stop: SIGTERM, then wait for exit (and the unmount it does). */
  async stop (): Promise<void> {
    await this.kill('SIGTERM')
  }

  /** Runs the sheep command against this daemon. */
  sheep (args: string[], opts: { input?: string } = {}): RunResult {
    const r = spawnSync(process.execPath, [SHEEP_BIN, ...args], { env: this.env, encoding: 'utf8', input: opts.input, timeout: 120_000 })
    return { code: r.status, stdout: r.stdout, stderr: r.stderr }
  }

  image (name: string): string {
    return path.join(this.mount, name)
  }

  /** Synchronous cleanup, safe to call more than once and from an exit handler. */
  cleanupSync (): void {
    const proc = this.proc
    if (proc && proc.exitCode === null && proc.signalCode === null && proc.pid !== undefined) {
      try { process.kill(proc.pid, 'SIGKILL') } catch {}
    }
    unmountIfMounted(this.mount)
    live.delete(this)
    if (proc?.pid !== undefined) tellReaper(`forget ${proc.pid}`)
  }
}

const live = new Set<Daemon>()

let reaper: ChildProcess | null = null

/** Tells the reaper (./reaper.ts), started with the first daemon, what to end if this process dies. */
export function tellReaper (line: string): void {
  if (reaper === null) {
    reaper = spawn(process.execPath, [path.join(__dirname, 'reaper.js')], { stdio: ['pipe', 'ignore', 'ignore'], detached: true })
    reaper.unref()
  }
  reaper.stdin?.write(line + '\n')
}
process.on('exit', () => {
  for (const d of live) d.cleanupSync()
})

export function isMounted (dir: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some(l => l.split(' ')[4] === dir)
}

export function unmountIfMounted (dir: string): void {
  if (!isMounted(dir)) return
  try { execFileSync('fusermount', ['-uz', dir], { stdio: 'ignore' }) } catch {}
}

/** A fresh temporary folder, removed (after everything in it is unmounted) when the test ends. */
export function tempDir (t: Teardownable, prefix = 'sheep-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => {
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const mnt = line.split(' ')[4]
      if (mnt !== undefined && mnt.startsWith(dir + '/')) unmountIfMounted(mnt)
    }
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return dir
}

/**
 * A daemon in a fresh folder, not started yet (start() resolves when its mount is ready: a node
 * waiting to be admitted is started without waiting for that); stopped and cleaned up when the
 * test ends.
 */
export function newDaemon (t: Teardownable, extraArgs: string[] = [], extraEnv: NodeJS.ProcessEnv = {}, wrap: string[] = []): Daemon {
  const d = new Daemon(tempDir(t), extraArgs, extraEnv, wrap)
  t.teardown(async () => {
    // What the daemons said is what tells a hang or a failure in CI apart: keep it before it goes.
    if (t.passing?.() === false) process.stderr.write(`--- last lines of the log of the daemon at ${d.mount} (pid ${d.proc?.pid ?? 'none'}):\n${d.log.split('\n').slice(-LOG_TAIL_LINES).join('\n')}\n`)
    // The whole log, for a failure its last lines do not explain (SHEEP_TEST_LOG_DIR=folder).
    const keep = process.env.SHEEP_TEST_LOG_DIR
    if (keep !== undefined && keep !== '') fs.writeFileSync(path.join(keep, `${path.basename(d.dir)}.log`), d.log)
    await Promise.race([d.stop(), new Promise(resolve => setTimeout(resolve, 15_000).unref())])
    d.cleanupSync()
  })
  return d
}

/** Starts a daemon in a fresh folder; it is stopped and cleaned up when the test ends. */
export async function startDaemon (t: Teardownable, extraArgs: string[] = [], extraEnv: NodeJS.ProcessEnv = {}): Promise<Daemon> {
  const d = newDaemon(t, extraArgs, extraEnv)
  await d.start()
  return d
}

/** Spinning processes that keep cores busy; paused (SIGSTOP) and resumed (SIGCONT) by their PIDs. */
export interface BusyLoops {
  pause: () => void
  resume: () => void
}

/**
 * Keeps n cores busy until the test ends (spinning child processes, ended by their PIDs, by the
 * reaper too if this process dies): crash windows that an idle machine hides open up under load.
 */
export function busyLoops (t: Teardownable, n: number): BusyLoops {
  const dir = tempDir(t, 'sheep-busy-')
  const pids: number[] = []
  for (let i = 0; i < n; i++) {
    const proc = spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' })
    if (proc.pid === undefined) continue
    const pid = proc.pid
    pids.push(pid)
    tellReaper(`track ${pid} ${dir}`)
    t.teardown(() => {
      try { process.kill(pid, 'SIGKILL') } catch {}
      tellReaper(`forget ${pid}`)
    })
  }
  const signal = (sig: NodeJS.Signals): void => { for (const pid of pids) { try { process.kill(pid, sig) } catch {} } }
  return { pause: () => signal('SIGSTOP'), resume: () => signal('SIGCONT') }
}

/** Runs qemu-io on a raw image with the given commands; throws with its output if any fails. */
export function qemuIo (file: string, commands: string[], extra: string[] = []): string {
  const r = spawnSync('qemu-io', ['-f', 'raw', ...extra, ...commands.flatMap(c => ['-c', c]), file], { encoding: 'utf8', timeout: 300_000 })
  const out = r.stdout + r.stderr
  if (r.status !== 0 || /fail|error|mismatch/i.test(out)) throw new Error(`qemu-io ${commands.join(' ; ')} failed (${r.status}): ${out}`)
  return out
}

/**
 * qemu-io kept running on one image, as a guest is: commands go to it one at a time, each
 * answered with what qemu-io printed for it. It holds the image open in a process of its own, so
 * that this test process holds no descriptor on a mount whose daemon may be frozen (a child's
 * close-on-exec would wait for that daemon). Ended by its PID when the test ends.
 * Its `flush` command prints nothing when the flush fails (only qemu-io's exit status says so, at
 * the end): a write that must be known durable is `write -f` (FUA), which flushes after writing
 * and prints "write failed" when either fails.
 */
export class QemuIoSession {
  private readonly proc: ChildProcess
  private out = ''
  private waiting: ((said: string) => void) | null = null

  constructor (t: Teardownable, file: string) {
    // O_DIRECT (-t none): every command reaches the daemon, none is served by the page cache.
    this.proc = spawn('qemu-io', ['-f', 'raw', '-t', 'none', file], { stdio: ['pipe', 'pipe', 'pipe'] })
    const take = (d: Buffer): void => { this.out += d.toString(); this.answer() }
    this.proc.stdout?.on('data', take)
    this.proc.stderr?.on('data', take)
    this.proc.on('exit', () => { this.waiting?.(`${this.out}(qemu-io exited)`); this.waiting = null })
    t.teardown(() => { if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL') })
  }

  /** Runs one qemu-io command (such as "write -P 0x5a 0 4k") and resolves with what it printed. */
  async run (command: string): Promise<string> {
    if (this.waiting !== null) throw new Error('one qemu-io command at a time')
    const said = new Promise<string>(resolve => { this.waiting = resolve })
    this.proc.stdin?.write(`${command}\n`)
    this.answer()
    return await said
  }

  /** Closes the image and ends qemu-io. */
  async quit (): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return
    const exited = new Promise(resolve => this.proc.once('exit', resolve))
    this.proc.stdin?.end('quit\n')
    await exited
  }

  // qemu-io prints its prompt before each command it reads: the text up to the next prompt
  // answers the command before.
  private answer (): void {
    const prompt = 'qemu-io> '
    const first = this.out.indexOf(prompt)
    if (first < 0 || this.waiting === null) return
    const next = this.out.indexOf(prompt, first + prompt.length)
    if (next < 0) return
    const said = this.out.slice(first + prompt.length, next)
    this.out = this.out.slice(next)
    const resolve = this.waiting
    this.waiting = null
    resolve(said)
  }
}

export function qemuImg (args: string[]): string {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', timeout: 300_000 })
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed (${r.status}): ${r.stdout}${r.stderr}`)
  return r.stdout
}

/** Bytes the files under `dir` really occupy (st_blocks), as du counts them. */
export function diskUsage (dir: string): number {
  let total = 0
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const full = path.join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name)
    const st = fs.lstatSync(full)
    total += st.blocks * 512
  }
  return total
}

/** Polls a condition the system makes true asynchronously (a FUSE release, a peer's notice) for at most `ms`. */
export async function waitFor (cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (cond()) return true
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

/** The errno name a synchronous fs call fails with, or 'ok'. */
export function errCode (fn: () => unknown): string {
  try {
    fn()
    return 'ok'
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    // libuv has no name for some (ESTALE is "Unknown system error -116"): the number has one.
    const named = e.errno === undefined ? undefined : Object.entries(os.constants.errno).find(([, n]) => n === -(e.errno as number))?.[0]
    return named ?? e.code ?? String(err)
  }
}

/**
 * Starts n daemons as one cluster on loopback: the first founds it and runs the DHT bootstrap
 * node, the others join with its token. Resolves once every node's view lists all n as reachable.
 */
export async function startCluster (t: Teardownable, n: number, extraArgs: string[] = []): Promise<Daemon[]> {
  // A fixed port, so that the first node restarts on the address the others bootstrap from.
  const first = await startDaemon(t, ['--bootstrap-port', String(await freeUdpPort()), ...extraArgs])
  const token = first.sheep(['cluster', 'token', '--mount', first.mount])
  if (token.code !== 0) throw new Error(`sheep cluster token failed: ${token.stderr}`)
  const nodes = [first]
  for (let i = 1; i < n; i++) nodes.push(await startDaemon(t, ['--join', token.stdout.trim(), ...extraArgs]))
  await waitForView(nodes, n)
  return nodes
}

export async function freeUdpPort (): Promise<number> {
  const socket = dgram.createSocket('udp4')
  await new Promise<void>(resolve => socket.bind(0, '127.0.0.1', () => resolve()))
  const { port } = socket.address()
  await new Promise<void>(resolve => socket.close(() => resolve()))
  return port
}

export interface ClusterState { epoch: number, members: number, reachable: number, quorate: boolean }

export function clusterState (d: Daemon): ClusterState | null {
  const r = d.sheep(['status', '--json', '--mount', d.mount])
  if (r.code !== 0) return null
  return (JSON.parse(r.stdout) as { cluster: ClusterState | null }).cluster
}

/** Waits until every node of `nodes` is in a view of `members` members, all reachable, at one epoch. */
export async function waitForView (nodes: Daemon[], members: number, timeoutMs = 30_000): Promise<ClusterState> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const states = nodes.map(clusterState)
    const s = states[0]
    if (s != null && states.every(x => x != null && x.epoch === s.epoch && x.members === members && x.reachable === members)) return s
    if (Date.now() > deadline) throw new Error(`no common view of ${members} members within ${timeoutMs} ms: ${JSON.stringify(states)}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

/** Object ids (file names) in a daemon's store. */
export function storedObjects (d: Daemon): string[] {
  const dir = path.join(d.store, 'objects')
  if (!fs.existsSync(dir)) return []
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter(e => e.isFile() && /^[0-9a-f]{16}$/.test(e.name)).map(e => e.name).sort()
}
