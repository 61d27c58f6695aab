// Issue 11: the whole cluster killed with SIGKILL at once under guest writes, then started again
// (all nodes together, as hosts boot after a power cut of the rack). Every write the guest had
// acknowledged (write, then flush, both answered) reads back through every node's mount; a write
// in flight at the kill is there wholly or not at all in each sector; and once recovery settled,
// every object is in 3 stores and its 3 copies are the same bytes.

import t from 'tap'
import { type Daemon, QemuIoSession, startCluster, waitForView } from '../helpers/daemon'
import { divergentCopies, waitForCopyCounts, waitForSettled, WriteModel } from '../helpers/replicas'
import { seedFrom } from '../helpers/crash-round'
import { Rng } from '../helpers/random'
import { execFile } from 'node:child_process'
import fs from 'node:fs'

const KiB = 1024
const MiB = 2 ** 20
const SIZE = 16 * MiB

// One round in the suite; SHEEP_WHOLE_CRASH_ROUNDS for a longer run.
const ROUNDS = Number(process.env.SHEEP_WHOLE_CRASH_ROUNDS ?? '') > 0 ? Number(process.env.SHEEP_WHOLE_CRASH_ROUNDS) : 1

t.setTimeout(Math.max(300_000, ROUNDS * 90_000))

// This test found that a crash between the catalog record of a new object and its file left a
// record whose file is gone, and recovery stuck for good on that copy (src/swarm/recovery.ts now
// copies from the next newest member; test/unit/recovery.test.ts has the case in one process).

/** qemu-io on an image in a child process, for at most `ms`; resolves with what it printed (and how it ended). */
async function qemuIoAsync (file: string, commands: string[], ms: number): Promise<string> {
  return await new Promise(resolve => {
    execFile('qemu-io', ['-f', 'raw', '-t', 'none', ...commands.flatMap(c => ['-c', c]), file], { timeout: ms }, (err, stdout, stderr) => {
      resolve(`${stdout}${stderr}${err === null ? '' : ` (exited: ${err.killed ? `killed after ${ms} ms` : String(err.code)})`}`)
    })
  })
}

function failed (said: string): boolean {
  return /fail|error|mismatch|exited/i.test(said)
}

t.test(`3 nodes, copies 3: every daemon killed at once under writes, ${ROUNDS} times; after a restart of all, every acknowledged write reads back on every host and the 3 copies of each object are equal`, async t => {
  const seed = seedFrom(t, 'whole-cluster crash')
  const rng = new Rng(seed)
  const nodes = await startCluster(t, 3)
  const name = (d: Daemon): string => `node ${nodes.indexOf(d) + 1}`
  const writer = nodes[1] as Daemon
  const r = writer.sheep(['image', 'create', 'vm.img', String(SIZE), '--object-size', '1M', '--copies', '3', '--mount', writer.mount])
  t.equal(r.code, 0, `image created ${r.stderr}`)
  const model = new WriteModel(SIZE)
  let id = 0
  for (let round = 1; round <= ROUNDS; round++) {
    const session = new QemuIoSession(t, writer.image('vm.img'))
    // Kill once this many writes were acknowledged, while the next one is in flight.
    const before = rng.int(3, 25)
    const delay = rng.int(0, 15)
    let acked = 0
    let killing: Promise<unknown> | null = null
    for (;;) {
      const fill = 1 + (id++ % 255)
      const length = (rng.chance(0.7) ? rng.int(1, 4) : rng.int(5, 64)) * 4 * KiB
      const offset = rng.int(0, (SIZE - length) / (4 * KiB)) * 4 * KiB
      model.issued(offset, length, fill)
      // Written and flushed in one command: qemu-io's flush does not say when it fails.
      const write = session.run(`write -f -P ${fill} ${offset} ${length}`)
      if (acked === before) {
        // Every daemon at once: each kill() signals in this same tick, then waits for the exit.
        killing = new Promise(resolve => setTimeout(resolve, delay)).then(async () => await Promise.all(nodes.map(async d => await d.kill('SIGKILL'))))
      }
      if (failed(await write)) break
      model.acknowledged(offset, length, fill)
      acked++
    }
    t.ok(killing !== null, `round ${round}: the cluster was killed under writes (sent after ${before} acknowledged writes; ${acked} were by the time it landed)`)
    await killing
    await session.quit()
    // Together: after a stop of the whole cluster, a node's start waits for a majority of its last view.
    await Promise.all(nodes.map(async d => await d.start()))
    await waitForView(nodes, 3)
    const settled = await waitForSettled(nodes, 3, 30_000).then(s => `in view ${s.epoch}`, (err: Error) => err)
    t.type(settled, 'string', `round ${round}: recovery settled ${typeof settled === 'string' ? settled : `(${settled.message})`}`)
    t.same(await waitForCopyCounts(nodes, 3, name), [], `round ${round}: every object is in 3 stores`)
    const images = nodes.map(d => fs.readFileSync(d.image('vm.img')))
    for (const [i, image] of images.entries()) {
      t.same(model.check(image), [], `round ${round}: every acknowledged write reads back through ${name(nodes[i] as Daemon)}`)
    }
    t.ok(images.every(b => b.equals(images[0] as Buffer)), `round ${round}: every host reads the same bytes`)
    t.same(divergentCopies(nodes, name), [], `round ${round}: the 3 copies of every object are byte-equal`)
    // Every node came back, and recovery settled: the operator's override has nothing to give up.
    const asked = nodes[round % nodes.length] as Daemon
    const forced = asked.sheep(['cluster', 'force-start', '--mount', asked.mount])
    t.same({ code: forced.code, out: forced.stdout.trim() }, { code: 0, out: 'no copy was behind: nothing is lost' }, `round ${round}: sheep cluster force-start asks every member and finds no copy behind ${forced.stderr}`)
    // What is there now is settled: the next round's model starts from it.
    const now = images[0] as Buffer
    for (let s = 0; s < SIZE; s += 4 * KiB) model.acknowledged(s, 4 * KiB, now[s] as number)
    // The guest goes on: every block takes a write again, through each host (a block whose
    // object recovery cannot settle would refuse it or hold it up).
    const refused: string[] = []
    for (let block = 0; block < SIZE / MiB; block++) {
      const fill = 1 + (id++ % 255)
      const offset = block * MiB + rng.int(0, 255) * 4 * KiB
      const through = nodes[block % nodes.length] as Daemon
      model.issued(offset, 4 * KiB, fill)
      const said = await qemuIoAsync(through.image('vm.img'), [`write -P ${fill} ${offset} 4k`, 'flush'], 30_000)
      if (failed(said)) refused.push(`block ${block} through ${name(through)}: ${said.trim()}`)
      else model.acknowledged(offset, 4 * KiB, fill)
    }
    t.same(refused, [], `round ${round}: every block takes a write after the restart`)
  }
})
