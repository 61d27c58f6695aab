// Which copy of an object is the newest, when replicas that missed changes come back (issue 11).
// Versions used to be each replica's count of the writes it took: a replica that was written
// more often before it went away won over newer data written with fewer writes while it was gone.

import t from 'tap'
import fs from 'node:fs'
import { type Daemon, qemuIo, startCluster, storedObjects, waitForView } from '../helpers/daemon'
import { divergentCopies, waitForCopyCounts, waitForSettled } from '../helpers/replicas'

const KiB = 1024
const MiB = 2 ** 20

function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} on ${d.mount} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** The daemons whose stores hold the object named by its 16-hex-digit id. */
function holders (nodes: Daemon[], oid: string): Daemon[] {
  return nodes.filter(d => storedObjects(d).includes(oid))
}

t.test('5 nodes, copies 3: two replicas of a block written 150 times miss a truncate, a regrow and a new write; after they return every host reads the new bytes', async t => {
  const nodes = await startCluster(t, 5)
  const writer = nodes[0] as Daemon
  ok(writer, ['image', 'create', 'vm.img', '8M', '--copies', '3'])
  const before = new Set(nodes.flatMap(storedObjects))
  // 150 writes into the first block: each replica counts 150 writes of its data object.
  qemuIo(writer.image('vm.img'), Array.from({ length: 150 }, (_, i) => `write -P ${1 + (i % 200)} 0 64k`))
  const fresh = [...new Set(nodes.flatMap(storedObjects))].filter(oid => !before.has(oid))
  // The new objects: the first data object (type 0 in the top nibble), and nothing else.
  const data = fresh.filter(oid => oid.startsWith('0'))
  t.equal(data.length, 1, `one data object was written (${fresh.join(', ')})`)
  const block = data[0] as string
  const replicas = holders(nodes, block)
  t.equal(replicas.length, 3, 'it has 3 replicas')
  // Two of them go away (never the writer, which stays to write): 3 of 5 keep a majority.
  const gone = replicas.filter(d => d !== writer).slice(0, 2)
  for (const d of gone) await d.kill('SIGKILL')
  const stayed = nodes.filter(d => !gone.includes(d))
  await waitForView(stayed, 3)
  // What `qemu-img create` does to an existing image: cut to 0, grow back; then a new write.
  fs.truncateSync(writer.image('vm.img'), 0)
  fs.truncateSync(writer.image('vm.img'), 8 * MiB)
  qemuIo(writer.image('vm.img'), ['write -P 0xee 0 4k', 'flush'])
  for (const d of gone) await d.start()
  await waitForView(nodes, 5)
  // Recovery runs when the view changes; give every host a read of its own after it.
  for (const d of nodes) {
    qemuIo(d.image('vm.img'), ['read -P 0xee 0 4k', `read -P 0 4k ${64 * KiB - 4 * KiB}`, `read -P 0 ${64 * KiB} ${8 * MiB - 64 * KiB}`])
  }
  t.pass('every host reads the new 4 KiB and zeros after it, not the bytes from before the truncate')
  // Once recovery settled, again: a copy that won late would show now.
  const settled = await waitForRecovery(nodes)
  t.ok(settled, 'recovery settled on every host')
  for (const d of nodes) qemuIo(d.image('vm.img'), ['read -P 0xee 0 4k', `read -P 0 4k ${8 * MiB - 4 * KiB}`])
  t.pass('and still after recovery settled')
})

t.test('5 nodes, copies 3: three nodes killed one at a time with recovery in between, everything overwritten, the dead restarted together: every node serves only the new bytes', async t => {
  const nodes = await startCluster(t, 5)
  const name = (d: Daemon): string => `node ${nodes.indexOf(d) + 1}`
  const writer = nodes[0] as Daemon
  ok(writer, ['image', 'create', 'vm.img', '16M', '--object-size', '1M', '--copies', '3'])
  qemuIo(writer.image('vm.img'), ['write -P 0x11 0 16M', 'flush'])
  // Each death is repaired before the next: 5, then 4, then 3 members; with 2 left, copies are 2.
  const dead = [nodes[4], nodes[3], nodes[2]] as Daemon[]
  let alive = [...nodes]
  for (const d of dead) {
    await d.kill('SIGKILL')
    alive = alive.filter(x => x !== d)
    const view = await waitForSettled(alive, alive.length)
    t.same(await waitForCopyCounts(alive, Math.min(3, alive.length), name), [], `${name(d)} killed; view ${view.epoch} of ${alive.length} recovered: every object in ${Math.min(3, alive.length)} live stores`)
  }
  // Every block overwritten while the dead (who hold the majority of the old copies) are away.
  qemuIo(writer.image('vm.img'), ['write -P 0x22 0 16M', 'flush'])
  await Promise.all(dead.map(async d => await d.start()))
  await waitForView(nodes, 5)
  // At once, recovery under way or not: a copy still pending is copied before it is served.
  for (const d of dead) qemuIo(d.image('vm.img'), ['read -P 0x22 0 16M'])
  t.pass('each restarted node reads only the new bytes, right after it is back in the view')
  const view = await waitForSettled(nodes, 5)
  t.same(await waitForCopyCounts(nodes, 3, name), [], `view ${view.epoch} of 5 recovered: every object in 3 stores`)
  for (const d of nodes) qemuIo(d.image('vm.img'), ['read -P 0x22 0 16M'])
  t.pass('every node reads only the new bytes once recovery settled')
  t.same(divergentCopies(nodes, name), [], 'no store kept an old copy: the copies of every object are byte-equal')
})

/** True once no host has objects left to copy (sheep status --json: cluster.recovering 0). */
async function waitForRecovery (nodes: Daemon[]): Promise<boolean> {
  const deadline = Date.now() + 60_000
  for (;;) {
    const pending = nodes.map(d => {
      const r = d.sheep(['status', '--json', '--mount', d.mount])
      if (r.code !== 0) return 1
      const s = JSON.parse(r.stdout) as { cluster: { recovering: number } | null }
      return s.cluster?.recovering ?? 1
    })
    if (pending.every(n => n === 0)) return true
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}
