// Crash consistency on a cluster (issue 15): the node a guest writes through is killed with
// SIGKILL at random moments of random writes and fsyncs, 8 times (SHEEP_CRASH_ROUNDS for more), and restarted; every sector
// fsync acknowledged reads back through it, and through another node.

import t from 'tap'
import { type Daemon, startCluster } from '../helpers/daemon'
import { CrashModel, SECTOR } from '../helpers/crash-model'
import { checkRound, crashRound, readAt, rounds, seedFrom } from '../helpers/crash-round'
import { Rng } from '../helpers/random'

const MiB = 2 ** 20

// Hundreds of daemon restarts: longer than tap's default time for a file.
t.setTimeout(20 * 60_000)

t.test('torture on 3 nodes, copies 3: SIGKILLs (8, or SHEEP_CRASH_ROUNDS) of the writing node; acknowledged sectors read back through it and another node', async t => {
  const seed = seedFrom(t, 'cluster torture')
  const rng = new Rng(seed)
  const nodes = await startCluster(t, 3)
  // Not the first node: it runs the DHT bootstrap the others restart from.
  const writer = nodes[1] as Daemon
  const other = nodes[2] as Daemon
  const r = writer.sheep(['image', 'create', 'vm.img', '64M', '--object-size', '64K', '--mount', writer.mount])
  t.equal(r.code, 0, `image created ${r.stderr}`)
  const img = writer.image('vm.img')
  const model = new CrashModel(64 * MiB / SECTOR)
  const ROUNDS = rounds(8)
  const failures: string[] = []
  let started = Date.now()
  let restarts = 0
  let round = 0
  while (round < ROUNDS && failures.length === 0) {
    round++
    await crashRound(writer, img, model, rng.int(1, 2 ** 31), rng.int(1, 80))
    started = Date.now()
    await writer.start()
    restarts += Date.now() - started
    failures.push(...checkRound(img, model, rng, 32).map(w => `round ${round} (seed ${seed}): ${w}`))
    // Another host reads the same bytes: its open loads the inode the writer synced.
    if (round % 10 === 0) {
      const mine = readAt(img, 0, 64 * MiB)
      const theirs = readAt(other.image('vm.img'), 0, 64 * MiB)
      if (!mine.equals(theirs)) failures.push(`round ${round} (seed ${seed}): node 3 reads other bytes than the writer's node`)
    }
  }
  t.same(failures, [], `every acknowledged sector read back after each crash (${model.writes} writes, ${model.syncs} fsyncs)`)
  t.comment(`${round} crashes of the writing node: mean restart ${Math.round(restarts / round)} ms; ${model.torn} sectors held part of a write under way`)
})
