// Snapshots, clones, rollback and flatten end to end against one daemon: the cases are in
// ./snapshot-cases.ts (which says what they prove); ./cluster-snapshots.test.ts runs them on a cluster.

import { startDaemon } from '../helpers/daemon'
import { daemonOnCopy, snapshotCases } from './snapshot-cases'

snapshotCases(startDaemon, {
  nodes: d => [d],
  everyDeletionOrder: true,
  everyBadInput: true,
  restarted: async () => {},
  stopAll: async d => { await d.stop() },
  startOnCopy: async (t, from) => {
    const d = daemonOnCopy(t, from)
    await d.start()
    return d
  }
})
