// Recovery of large things (issue 12): 64 MiB objects and the 16 MiB inode of an image of 4 TiB
// (each more than one peer message holds: they move in pieces) with writes scattered over it, copied to the members placement gives them after a
// node is out and after a new one joins; the copies are whole, read back right through every
// host, and stay as sparse as their sources.

import t from 'tap'
import { type Daemon, qemuIo, startCluster, startDaemon } from '../helpers/daemon'
import { copyCounts, divergentCopies, waitForCopyCounts, waitForSettled } from '../helpers/replicas'

const TiB = 2 ** 40

function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} on ${d.mount} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** Where the 4 TiB image is written: both ends, the 2 TiB boundary and a few odd places between. */
const SCATTERED = [0, 1 * TiB + 12345 * 4096, 2 * TiB - 65536, 2 * TiB, 3 * TiB + 777 * 2 ** 20, 4 * TiB - 65536]

function writes (): string[] {
  return SCATTERED.map((at, i) => `write -P ${0x70 + i} ${at} 64K`)
}

function reads (): string[] {
  return [...SCATTERED.map((at, i) => `read -P ${0x70 + i} ${at} 64K`), `read -P 0 ${TiB} 1M`, `read -P 0 ${3 * TiB} 4M`]
}

t.test('64 MiB objects and a 4 TiB image with scattered writes recover when a node is out and when one joins', async t => {
  const nodes = await startCluster(t, 3)
  const [n1, n2, n3] = nodes as [Daemon, Daemon, Daemon]
  ok(n1, ['image', 'create', 'huge.img', '4T', '--copies', '2'])
  ok(n1, ['image', 'create', 'wide.img', '128M', '--copies', '2', '--object-size', '64M'])
  qemuIo(n1.image('huge.img'), writes())
  qemuIo(n1.image('wide.img'), ['write -P 0x5a 0 100M', 'write -P 0x5b 100M 28M'])

  // Out at once (the test harness's --out-after 0): the two left hold everything.
  await n3.kill('SIGKILL')
  await waitForSettled([n1, n2], 2)
  t.same(await waitForCopyCounts([n1, n2], 2), [], 'every object in both stores left')
  for (const d of [n1, n2]) {
    qemuIo(d.image('huge.img'), reads())
    qemuIo(d.image('wide.img'), ['read -P 0x5a 0 100M', 'read -P 0x5b 100M 28M'])
  }
  t.pass('both images read back right through n1 and n2')

  // A new node: placement gives it a share of the objects, 64 MiB ones and inodes among them.
  const token = ok(n1, ['cluster', 'token']).trim()
  const n4 = await startDaemon(t, ['--join', token])
  const all = [n1, n2, n4]
  await waitForSettled(all, 3, 120_000)
  // Data objects (type 0) have the images' 2 copies; inodes, the directory and tokens 3.
  const off = (): string[] => [...copyCounts(all)].filter(([oid, n]) => n !== (oid.startsWith('0') ? 2 : 3)).map(([oid, n]) => `${oid}: ${n} copies`)
  const deadline = Date.now() + 60_000
  while (off().length > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 200))
  t.same(off(), [], 'every data object in exactly 2 of the 3 stores, every record in 3, once the old holders dropped theirs')
  t.same(divergentCopies(all), [], 'and its copies hold the same bytes')
  qemuIo(n4.image('huge.img'), reads())
  qemuIo(n4.image('wide.img'), ['read -P 0x5a 0 100M', 'read -P 0x5b 100M 28M'])
  t.pass('the new node reads both images right')
})
