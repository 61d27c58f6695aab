// The snapshot cases of ./snapshot-cases.ts on a cluster of three daemons on loopback: every case
// drives node 1's mount and command as it drives a single daemon, while the objects live in all
// three stores (checks of object files look at all of them, and at how many hold each object).
// The flatten case also reads what node 1 made through nodes 2 and 3. A restart restarts node 1,
// which keeps its store, identity and bootstrap port and rejoins; the cases that start again from
// copied stores copy all three and restart the whole cluster from them.

import t, { type Test } from 'tap'
import { type Daemon, startCluster, waitForView } from '../helpers/daemon'
import { daemonOnCopy, snapshotCases } from './snapshot-cases'

const NODES = 3

// Ten clusters of three are started and stopped here, and stopping a node can take seconds
// (its DHT node unannounces to peers already gone): the file takes about five minutes, more than
// the 300 s a test file gets by default (package.json).
t.setTimeout(15 * 60_000)

/** The nodes of each cluster the cases run on, by the node they drive (node 1). */
const clusters = new WeakMap<Daemon, Daemon[]>()

function nodesOf (d: Daemon): Daemon[] {
  const nodes = clusters.get(d)
  if (nodes === undefined) throw new Error(`${d.mount} is not node 1 of a cluster started here`)
  return nodes
}

async function start (t: Test, args: string[] = []): Promise<Daemon> {
  const nodes = await startCluster(t, NODES, args)
  const first = nodes[0] as Daemon
  clusters.set(first, nodes)
  dumpLogsOnFailure(t, nodes)
  return first
}

/** When t fails, every node's log goes to stderr (registered after the daemons: runs before they stop). */
function dumpLogsOnFailure (t: Test, nodes: Daemon[]): void {
  t.teardown(() => {
    if (t.passing()) return
    for (const [i, n] of nodes.entries()) console.error(`--- node ${i + 1} (${n.store}) log:\n${n.log}`)
  })
}

snapshotCases(start, {
  nodes: nodesOf,
  everyDeletionOrder: false,
  everyBadInput: false,
  restarted: async d => { await waitForView(nodesOf(d), NODES) },
  // Node by node, last first, each time until the rest agree on a view without it while they
  // are a majority: a deterministic history in the stores that are copied next.
  stopAll: async d => {
    const nodes = nodesOf(d)
    for (let up = nodes.length - 1; up >= 0; up--) {
      await (nodes[up] as Daemon).stop()
      if (2 * up > NODES) await waitForView(nodes.slice(0, up), up)
    }
  },
  // The whole cluster again on copies of its stores, with the arguments each node had (node 1
  // its bootstrap port, the others the join token).
  startOnCopy: async (t, from) => {
    const nodes = nodesOf(from).map(n => daemonOnCopy(t, n))
    // All at once, as hosts boot: a node's images load once a majority of the last view answers.
    await Promise.all(nodes.map(async n => await n.start()))
    await waitForView(nodes, NODES)
    const first = nodes[0] as Daemon
    clusters.set(first, nodes)
    dumpLogsOnFailure(t, nodes)
    return first
  }
})
