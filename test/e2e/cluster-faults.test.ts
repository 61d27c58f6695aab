// Faults on a live cluster of separate processes: a node killed with SIGKILL in the middle of a
// stream of guest writes. Every write that was acknowledged must read back afterwards, from every
// surviving node's mount; writes stall only until the survivors commit a view without the dead node.

import t from 'tap'
import { execFile } from 'node:child_process'
import { type Daemon, qemuIo, startCluster, waitForView } from '../helpers/daemon'

const MiB = 2 ** 20

function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} on ${d.mount} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** One guest write through qemu-io; resolves true when qemu-io reports it done (acknowledged). */
async function write (file: string, pattern: number, offset: number, length: number): Promise<boolean> {
  return await new Promise(resolve => {
    execFile('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, file], { timeout: 120_000 }, (err, stdout, stderr) => {
      resolve(err === null && !/fail|error/i.test(stdout + stderr))
    })
  })
}

t.test('5 nodes, copies 2 and 3: kill -9 a node during writes; every acknowledged write reads back everywhere', async t => {
  const nodes = await startCluster(t, 5)
  const writer = nodes[0] as Daemon
  ok(writer, ['image', 'create', 'two.img', '48M', '--copies', '2'])
  ok(writer, ['image', 'create', 'three.img', '48M', '--copies', '3'])
  const victim = nodes[3] as Daemon
  const acknowledged: Array<{ image: string, pattern: number, offset: number }> = []
  let slowest = 0
  let killed = false
  const CHUNKS = 36
  for (let i = 0; i < CHUNKS; i++) {
    if (i === 12) {
      killed = true
      victim.kill('SIGKILL').catch(() => {}) // lands while the next writes are in flight
    }
    const image = i % 2 === 0 ? 'two.img' : 'three.img'
    const pattern = 1 + (i % 250)
    const offset = Math.floor(i / 2) * MiB + (i % 3) * 4096 // crosses 4 MiB objects, some unaligned
    const started = Date.now()
    const done = await write(writer.image(image), pattern, offset, MiB)
    slowest = Math.max(slowest, Date.now() - started)
    if (done) acknowledged.push({ image, pattern, offset })
  }
  t.ok(killed, 'the victim was killed during the stream')
  t.equal(acknowledged.length, CHUNKS, 'every write completed: the stream waited for the new view instead of failing')
  t.comment(`slowest write across the kill: ${slowest} ms (target: writes resume within 10 s)`)
  const survivors = nodes.filter(d => d !== victim)
  const view = await waitForView(survivors, 4)
  t.comment(`survivors agree on view ${view.epoch} of 4 members`)
  // Later writes overwrite parts of earlier ones: the expected bytes are the last write to each range.
  for (const image of ['two.img', 'three.img']) {
    const expected = Buffer.alloc(48 * MiB)
    for (const w of acknowledged.filter(a => a.image === image)) expected.fill(w.pattern, w.offset, w.offset + MiB)
    const reads: string[] = []
    for (let off = 0; off < expected.length;) {
      const value = expected[off] as number
      let end = off
      while (end < expected.length && expected[end] === value) end++
      reads.push(`read -P ${value} ${off} ${end - off}`)
      off = end
    }
    for (const d of survivors) {
      qemuIo(d.image(image), reads)
      t.pass(`${image} reads every acknowledged write through ${d === writer ? 'the writer' : 'another survivor'}'s mount`)
    }
  }
})
