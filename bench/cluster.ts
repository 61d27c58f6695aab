// The three-node cluster column: three Sheep daemons on this host as one cluster, images with three
// copies, fio through the first node's mount. Each node has a store, mount and control-socket
// folder (SHEEP_RUN_DIR) of its own, as three hosts would.
//
// Node 1 founds the cluster and runs the DHT bootstrap node (--bootstrap-port, a free UDP port);
// nodes 2 and 3 join with its token (`cluster.token` on its control socket, what `sheep cluster
// token` prints), one after the other: a joining daemon says ready only once it is in a view. Then
// setup waits until every node's status shows a view of three members, all reachable, at one epoch.
// Two variants: object traffic over direct TCP connections (the default), or over Hyperswarm only
// (--no-direct), the path for hosts TCP cannot reach.

import dgram from 'node:dgram'
import fs from 'node:fs'
import path from 'node:path'
import { call } from '../src/control/client'
import type { ClusterStatus } from '../src/control/messages'
import * as cleanup from './cleanup'
import type { Goals } from './rows'
import { DaemonProcess, frontendOf, socketOf, startSheep, tail, type Target } from './targets'

/** Nodes and copies: every node holds a copy of every object. */
const NODES = 3
const COPIES = 3
/** Every node serves its mount with the kernel-protocol frontend, Sheep's default (issue 10). */
const FRONTEND = 'kernel'
/** A joining node waits up to 60 s to be let in (src/node.ts); this is for the whole view to settle after that. */
const VIEW_WAIT_MS = 60_000
/** A control request that takes longer means a stuck daemon; the control client itself waits forever. */
const CALL_TIMEOUT_MS = 15_000

export type ClusterPath = 'tcp' | 'hyperswarm'
export const CLUSTER_PATHS: readonly ClusterPath[] = ['tcp', 'hyperswarm']

export interface ClusterTargetOptions {
  /** The repository root: bin/sheep is started from there. */
  root: string
  /** How object traffic between the nodes travels. */
  path: ClusterPath
  goals: Goals
}

class ClusterNode {
  readonly index: number
  readonly store: string
  readonly mount: string
  readonly runDir: string
  readonly socket: string
  readonly daemon: DaemonProcess

  constructor (dir: string, index: number) {
    this.index = index
    this.store = path.join(dir, 'store')
    this.mount = path.join(dir, 'mnt')
    this.runDir = path.join(dir, 'run')
    this.socket = socketOf(this.mount, this.runDir)
    // Beside the store, not in it: a store folder holds only what the daemon put there.
    this.daemon = new DaemonProcess(`node ${index}`, path.join(dir, 'sheep.log'))
  }

  async state (): Promise<ClusterStatus | null> {
    return (await within(call(this.socket, 'status', {}), `status on node ${this.index}`)).cluster
  }
}

/** Three daemons as one cluster; the benchmark's files go through node 1's mount. */
export class ClusterTarget implements Target {
  readonly kind = 'fuse'
  readonly name: string
  readonly goals: Goals
  readonly copies = COPIES
  readonly mount: string
  description: string
  private readonly opts: ClusterTargetOptions
  private readonly nodes: ClusterNode[]
  private readonly seen: string[] = []

  /** dir: an empty folder of its own. */
  constructor (dir: string, opts: ClusterTargetOptions) {
    this.opts = opts
    this.name = `sheep (${NODES} nodes, ${opts.path})`
    this.goals = opts.goals
    this.nodes = Array.from({ length: NODES }, (_, i) => new ClusterNode(path.join(dir, `node${i + 1}`), i + 1))
    this.mount = (this.nodes[0] as ClusterNode).mount
    this.description = this.describe()
  }

  private describe (port?: number, frontend = 'not yet known'): string {
    const extra = this.opts.path === 'hyperswarm' ? ' --no-direct' : ''
    return `${NODES} daemons on this host, one cluster: node 1 \`bin/sheep start --copies ${COPIES} --fuse ${FRONTEND} --bootstrap-port ${port ?? 'P'}${extra}\`, ` +
      `nodes 2–${NODES} \`--join TOKEN${extra}\`; object traffic over ${this.opts.path === 'tcp' ? 'direct TCP connections' : 'Hyperswarm only'}; ` +
      `fio and qemu-img through node 1's mount; FUSE frontend ${frontend} (\`sheep status\`); ` +
      `UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? '8, its default'}`
  }

  private args (node: ClusterNode, cluster: string[]): string[] {
    return [path.join(this.opts.root, 'bin', 'sheep'), 'start', '--store', node.store, '--mount', node.mount,
      '--copies', String(COPIES), '--fuse', FRONTEND, ...cluster, ...(this.opts.path === 'hyperswarm' ? ['--no-direct'] : [])]
  }

  async setup (): Promise<void> {
    for (const n of this.nodes) {
      fs.mkdirSync(n.runDir, { recursive: true })
      cleanup.trackMount(n.mount)
    }
    const [first, ...others] = this.nodes as [ClusterNode, ...ClusterNode[]]
    const port = await freeUdpPort()
    this.description = this.describe(port)
    await startSheep(first.daemon, this.args(first, ['--bootstrap-port', String(port)]), first.runDir, 60_000)
    const { token } = await within(call(first.socket, 'cluster.token', {}), 'cluster.token on node 1')
    // One at a time, as an operator would: each start returns once that node is in a view.
    for (const n of others) await startSheep(n.daemon, this.args(n, ['--join', token]), n.runDir, 90_000)
    for (const n of this.nodes) {
      if (!cleanup.isMounted(n.mount)) throw new Error(`node ${n.index} said ready, but nothing is mounted at ${n.mount}`)
    }
    await this.waitForView()
    for (const n of this.nodes) await within(frontendOf(n.socket, FRONTEND, `node ${n.index}`), `status on node ${n.index}`)
    this.description = this.describe(port, `${FRONTEND} on all ${NODES} nodes`)
  }

  /** Until every node is in one view of NODES members, all reachable from each. */
  private async waitForView (): Promise<void> {
    const deadline = Date.now() + VIEW_WAIT_MS
    for (;;) {
      const states = await Promise.all(this.nodes.map(async n => await n.state().catch((err: Error) => err)))
      const ok = states.every(s => s !== null && !(s instanceof Error) && s.members === NODES && s.reachable === NODES &&
        s.epoch === (states[0] as ClusterStatus).epoch)
      if (ok) return
      const dead = this.problem()
      if (dead !== null) throw new Error(dead)
      if (Date.now() > deadline) {
        throw new Error(`no common view of ${NODES} reachable members within ${VIEW_WAIT_MS / 1000} s: ${this.describeStates(states)}\n${this.diagnose()}`)
      }
      await new Promise(resolve => setTimeout(resolve, 250))
    }
  }

  private describeStates (states: Array<ClusterStatus | null | Error>): string {
    return states.map((s, i) => `node ${i + 1}: ${s === null
      ? 'no view'
      : s instanceof Error ? `status failed (${s.message})` : `epoch ${s.epoch}, ${s.reachable} of ${s.members} reachable${s.quorate ? '' : ', no majority'}`}`).join('; ')
  }

  /** After each measurement: a view that lost a member means the column measured fewer copies than it claims. */
  async verify (after: string): Promise<void> {
    const states = await Promise.all(this.nodes.map(async n => await n.state().catch((err: Error) => err)))
    const ok = states.every(s => s !== null && !(s instanceof Error) && s.members === NODES && s.reachable === NODES)
    if (!ok) this.seen.push(`after ${after}: ${this.describeStates(states)}`)
  }

  async teardown (): Promise<void> {
    // All at once: SIGTERM makes each daemon stop (force) and unmount; a stuck one is killed after the grace time.
    await Promise.all(this.nodes.map(async n => await n.daemon.stop(30_000)))
    const stuck: string[] = []
    for (const n of this.nodes) if (!await cleanup.unmount(n.mount)) stuck.push(n.mount)
    if (stuck.length > 0) throw new Error(`cannot unmount ${stuck.join(', ')}`)
  }

  pids (): number[] {
    return this.nodes.map(n => n.daemon.pid).filter((pid): pid is number => pid !== null)
  }

  pidLabels (): string[] {
    return this.nodes.filter(n => n.daemon.pid !== null).map(n => n.index === 1 ? 'node 1 (mounted)' : `node ${n.index}`)
  }

  dataDirs (): string[] {
    return this.nodes.map(n => path.join(n.store, 'objects'))
  }

  problem (): string | null {
    const dead = this.nodes.map(n => n.daemon.problem()).filter((p): p is string => p !== null)
    return dead.length === 0 ? null : dead.join('\n  ')
  }

  diagnose (): string {
    return this.nodes.map(n => `node ${n.index}'s last output (all of it in ${n.daemon.logFile ?? 'memory'}):\n${tail(n.daemon.output, 12)}`).join('\n')
  }

  notes (): string[] {
    return this.seen
  }

  /** Each node's log file, to keep when the run had failures (the temporary folder goes). */
  logFiles (): string[] {
    return this.nodes.map(n => n.daemon.logFile).filter((f): f is string => f !== null)
  }
}

/** The promise's outcome, or an error once CALL_TIMEOUT_MS have passed. */
async function within<T> (p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${CALL_TIMEOUT_MS / 1000} s`)), CALL_TIMEOUT_MS)
  })
  try {
    return await Promise.race([p, late])
  } finally {
    clearTimeout(timer)
  }
}

/** A UDP port nothing listens on now, for the DHT bootstrap node. */
async function freeUdpPort (): Promise<number> {
  const socket = dgram.createSocket('udp4')
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(0, '127.0.0.1', () => resolve())
  })
  const { port } = socket.address()
  await new Promise<void>(resolve => socket.close(() => resolve()))
  return port
}
