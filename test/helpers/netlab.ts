// Network partitions for end-to-end tests: every node of a cluster runs in a network namespace of
// its own (entered with nsenter --net only, so its FUSE mount and control socket stay in the
// test's mount namespace), with one veth into a hub namespace whose two bridges are the two sides
// of a cut. Cutting moves the ports of one side onto the second bridge: nothing crosses, packets
// are dropped, as by a failed switch; healing moves them back. Nothing is made in the test's own
// namespace (no interface, no address, no rule), the addresses (10.77.0.x) live only inside the
// lab's namespaces, and every namespace is deleted when the test ends, also by the reaper if the
// test process dies first.

import { spawnSync } from 'node:child_process'
import { type Daemon, newDaemon, tellReaper, waitForView } from './daemon'

interface Teardownable {
  teardown (fn: () => unknown): void
  passing?: () => boolean
}

let labs = 0

function ip (args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 })
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed (${r.status}): ${r.stderr}`)
}

/** Why this machine cannot run a lab (not root, no ip or nsenter, no namespaces), or null. */
export function netLabUnavailable (): string | null {
  if (process.getuid?.() !== 0) return 'network namespaces need root'
  for (const cmd of ['ip', 'nsenter']) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status !== 0) return `${cmd} is not installed (iproute2, util-linux)`
  }
  const probe = `shp-${process.pid}-probe`
  const r = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' })
  if (r.status !== 0) return `cannot make a network namespace: ${r.stderr.trim()}`
  const veth = spawnSync('ip', ['-n', probe, 'link', 'add', 'name', 'a', 'type', 'veth', 'peer', 'name', 'b'], { encoding: 'utf8' })
  spawnSync('ip', ['netns', 'delete', probe])
  if (veth.status !== 0) return `cannot make a veth pair: ${veth.stderr.trim()}`
  return null
}

export class NetLab {
  readonly size: number
  private readonly prefix: string
  private readonly made: string[] = []

  constructor (t: Teardownable, size: number) {
    this.size = size
    this.prefix = `shp-${process.pid}-${++labs}`
    t.teardown(() => this.remove())
    const hub = this.hub
    this.add(hub)
    for (const br of ['br0', 'br1']) {
      ip(['-n', hub, 'link', 'add', 'name', br, 'type', 'bridge'])
      ip(['-n', hub, 'link', 'set', br, 'up'])
    }
    for (let i = 0; i < size; i++) {
      const ns = this.namespace(i)
      this.add(ns)
      ip(['-n', hub, 'link', 'add', 'name', `v${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns])
      ip(['-n', hub, 'link', 'set', `v${i}`, 'master', 'br0', 'up'])
      ip(['-n', ns, 'addr', 'add', `${this.host(i)}/24`, 'dev', 'eth0'])
      ip(['-n', ns, 'link', 'set', 'eth0', 'up'])
      ip(['-n', ns, 'link', 'set', 'lo', 'up'])
    }
  }

  /** The address node i binds to (`sheep start --host`). */
  host (i: number): string {
    return `10.77.0.${i + 1}`
  }

  /** The command prefix that runs a process in node i's network namespace (and in no other namespace of its own). */
  wrap (i: number): string[] {
    return ['nsenter', `--net=/run/netns/${this.namespace(i)}`, '--']
  }

  /** Cuts the nodes of `side` off from the others: each side still reaches its own nodes. */
  cut (side: number[]): void {
    for (const i of side) ip(['-n', this.hub, 'link', 'set', `v${i}`, 'master', 'br1'])
  }

  /** Undoes every cut. */
  heal (): void {
    for (let i = 0; i < this.size; i++) ip(['-n', this.hub, 'link', 'set', `v${i}`, 'master', 'br0'])
  }

  private get hub (): string {
    return `${this.prefix}-hub`
  }

  private namespace (i: number): string {
    return `${this.prefix}-n${i}`
  }

  private add (ns: string): void {
    ip(['netns', 'add', ns])
    this.made.push(ns)
    tellReaper(`netns ${ns}`)
  }

  /** Deletes the namespaces this lab made (their interfaces go with them); safe to call twice. */
  remove (): void {
    for (const ns of this.made.splice(0).reverse()) {
      spawnSync('ip', ['netns', 'delete', ns], { stdio: 'ignore' })
      tellReaper(`forget-netns ${ns}`)
    }
  }
}

/**
 * Starts one daemon per lab node as one cluster: node 0 founds it and runs the DHT bootstrap node
 * on its address, the others join with its token. Resolves once every node's view lists all.
 */
export async function startLabCluster (t: Teardownable, lab: NetLab, extraArgs: string[] = []): Promise<Daemon[]> {
  // The port is free: the namespace is the lab's own.
  const first = newDaemon(t, ['--host', lab.host(0), '--bootstrap-port', '49737', ...extraArgs], {}, lab.wrap(0))
  await first.start()
  const token = first.sheep(['cluster', 'token', '--mount', first.mount])
  if (token.code !== 0) throw new Error(`sheep cluster token failed: ${token.stderr}`)
  const nodes = [first]
  for (let i = 1; i < lab.size; i++) {
    const d = newDaemon(t, ['--host', lab.host(i), '--join', token.stdout.trim(), ...extraArgs], {}, lab.wrap(i))
    await d.start()
    nodes.push(d)
  }
  await waitForView(nodes, lab.size)
  return nodes
}
