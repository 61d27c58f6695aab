// Issue 11 and DESIGN's guarantee 3: a network partition of 5 nodes (copies 3) into 3 | 2, each
// node in a network namespace of its own (test/helpers/netlab.ts), cut while guests write.
// Each round has both cases at once: a guest on a minority node writing one image (a.img), a guest
// on a majority node writing another (b.img). While cut:
//  - nothing written through a minority node is acknowledged once the majority has its view (the
//    guest's stream, and a write issued on the other minority node after that): they wait, or
//    fail (before it, a block whose replicas are both on the minority side may take writes);
//  - the majority commits a view of its own, its guest goes on writing b.img, and a.img's guest
//    restarted on another majority node (as HA would) writes a.img, taking its write token from
//    the cut-off holder;
// after healing: all five agree on one view, a write left waiting completes or fails (and if it
// completed, it is there), every write acknowledged on either side reads back through every node,
// the five read the same bytes, and the 3 copies of every object are byte-equal.
// One cluster for all rounds; each round (SHEEP_PARTITION_SEEDS, default 2) draws from its seed
// the sides, the writers and when the cut lands (after how many acknowledged writes, then 0-30 ms).

import t from 'tap'
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import { type Daemon, QemuIoSession } from '../helpers/daemon'
import { NetLab, netLabUnavailable, startLabCluster } from '../helpers/netlab'
import { divergentCopies, waitForCopyCounts, waitForSettled, waitForStatus, WriteModel } from '../helpers/replicas'
import { seedFrom } from '../helpers/crash-round'
import { Rng } from '../helpers/random'

const KiB = 1024
const MiB = 2 ** 20
const SIZE = 16 * MiB
const SLOT = 64 * KiB
const SEEDS = Number(process.env.SHEEP_PARTITION_SEEDS ?? '') > 0 ? Number(process.env.SHEEP_PARTITION_SEEDS) : 2
/** How long a write held up by the cut may still take once the cut healed (a view change, a token take). */
const AFTER_HEAL_MS = 90_000

t.setTimeout(Math.max(300_000, 120_000 + SEEDS * 60_000))

function failed (said: string): boolean {
  return /fail|error|mismatch|exited/i.test(said)
}

/** One image as the guests write it: 64 KiB slots, each write into a slot no write used before (until all were used). */
class Image {
  readonly model = new WriteModel(SIZE)
  private readonly order: number[]
  private next = 0

  constructor (readonly name: string) {
    this.order = new Rng(0x5eed).shuffle(Array.from({ length: SIZE / SLOT }, (_, i) => i))
  }

  slot (): number {
    return (this.order[this.next++ % this.order.length] as number) * SLOT
  }
}

let fills = 0
function nextFill (): number {
  return 1 + (fills++ % 255)
}

interface Write { offset: number, fill: number, issuedAt: number, ackedAt: number | null, said: string }

/** A guest on one node writing one image: write then flush, again and again, until stopped or refused. */
class Guest {
  readonly writes: Write[] = []
  private readonly session: QemuIoSession
  private stopping = false
  private running: Promise<void> | null = null

  constructor (t: { teardown: (fn: () => unknown) => void }, readonly node: Daemon, readonly image: Image) {
    this.session = new QemuIoSession(t, node.image(image.name))
  }

  acked (since = 0): number {
    return this.writes.filter(w => w.ackedAt !== null && w.issuedAt >= since).length
  }

  /** Writes until stop(); a refused write ends the stream. */
  start (): void {
    this.running = (async () => {
      while (!this.stopping && await this.once()) {}
    })()
  }

  /** One write and its flush; true when both were answered without error. */
  async once (): Promise<boolean> {
    const w: Write = { offset: this.image.slot(), fill: nextFill(), issuedAt: Date.now(), ackedAt: null, said: '' }
    this.writes.push(w)
    this.image.model.issued(w.offset, SLOT, w.fill)
    // One command: qemu-io's flush does not say when it fails.
    w.said = await this.session.run(`write -f -P ${w.fill} ${w.offset} ${SLOT}`)
    if (failed(w.said)) return false
    w.ackedAt = Date.now()
    this.image.model.acknowledged(w.offset, SLOT, w.fill)
    return true
  }

  /** Ends the stream after its current write; false if that write is still unanswered after `ms`. */
  async stop (ms: number): Promise<boolean> {
    this.stopping = true
    let timer: NodeJS.Timeout | undefined
    const done = await Promise.race([(this.running ?? Promise.resolve()).then(() => true), new Promise<false>(resolve => { timer = setTimeout(() => resolve(false), ms) })])
    clearTimeout(timer)
    if (done) await this.session.quit()
    return done
  }
}

/** One write and flush by qemu-io in a child process of its own; ends it after `ms`. */
async function writeOnce (node: Daemon, image: Image, ms: number): Promise<Write> {
  const w: Write = { offset: image.slot(), fill: nextFill(), issuedAt: Date.now(), ackedAt: null, said: '' }
  image.model.issued(w.offset, SLOT, w.fill)
  w.said = await new Promise(resolve => {
    execFile('qemu-io', ['-f', 'raw', '-t', 'none', '-c', `write -P ${w.fill} ${w.offset} ${SLOT}`, '-c', 'flush', node.image(image.name)], { timeout: ms }, (err, stdout, stderr) => {
      resolve(`${stdout}${stderr}${err === null ? '' : ` (exited: ${err.killed ? `killed after ${ms} ms` : String(err.code)})`}`)
    })
  })
  if (!failed(w.said)) {
    w.ackedAt = Date.now()
    image.model.acknowledged(w.offset, SLOT, w.fill)
  }
  return w
}

async function until (what: string, cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

const unavailable = netLabUnavailable()

t.test(`5 nodes, copies 3, split 3 | 2 while guests write on both sides (${SEEDS} seeds): only the majority acknowledges writes; after healing nothing acknowledged is lost and no copy diverges`, { skip: unavailable === null ? false : `no network namespaces here: ${unavailable}` }, async t => {
  const seed = seedFrom(t, 'partition')
  const seeds = new Rng(seed)
  const lab = new NetLab(t, 5)
  const nodes = await startLabCluster(t, lab)
  const name = (d: Daemon): string => `node ${nodes.indexOf(d)}`
  const a = new Image('a.img')
  const b = new Image('b.img')
  for (const image of [a, b]) {
    const r = nodes[0]?.sheep(['image', 'create', image.name, String(SIZE), '--object-size', '1M', '--copies', '3', '--mount', nodes[0].mount])
    t.equal(r?.code, 0, `${image.name} created ${r?.stderr ?? ''}`)
  }
  for (let round = 1; round <= SEEDS; round++) {
    const rng = new Rng(seeds.int(1, 2 ** 31))
    const order = rng.shuffle([0, 1, 2, 3, 4]).map(i => nodes[i] as Daemon)
    const minority = order.slice(0, 2)
    const majority = order.slice(2)
    const [aGuest, probe] = minority as [Daemon, Daemon]
    const [bGuest, failover] = majority as [Daemon, Daemon]
    const at = `round ${round} (${minority.map(name).join(', ')} cut off; a.img on ${name(aGuest)}, b.img on ${name(bGuest)})`
    t.comment(at)

    const onMinority = new Guest(t, aGuest, a)
    const onMajority = new Guest(t, bGuest, b)
    onMinority.start()
    onMajority.start()
    const before = rng.int(1, 5)
    await until('both guests write', () => onMinority.acked() >= before && onMajority.acked() >= before, 60_000)
    await new Promise(resolve => setTimeout(resolve, rng.int(0, 30)))
    const cutAt = Date.now()
    lab.cut(minority.map(d => nodes.indexOf(d)))

    // The majority moves on without the two; the two know they are cut off.
    await waitForStatus(majority, 'the majority commits a view of 3', s => s.every(x => x !== null && x.epoch === s[0]?.epoch && x.members === 3 && x.reachable === 3 && x.quorate))
    const viewAt = Date.now()
    await waitForStatus(minority, 'the minority knows it has no majority', s => s.every(x => x !== null && !x.quorate))
    const probing = writeOnce(probe, b, AFTER_HEAL_MS + 60_000)
    // a.img's guest, restarted on a majority node: its writes are acknowledged.
    const restarted = new Guest(t, failover, a)
    const taken: boolean[] = []
    for (let i = 0; i < 3; i++) taken.push(await restarted.once())
    t.same(taken, [true, true, true], `${at}: a.img's guest restarted on ${name(failover)} (majority) writes it`)
    await until(`b.img's guest on ${name(bGuest)} goes on writing in the majority's view`, () => onMajority.acked(viewAt) >= 3, 60_000)
    t.pass(`${at}: b.img's guest on the majority writes on after the view change`)

    const healAt = Date.now()
    // A change needs a majority of its copies (--min-copies): a block whose two replicas are both
    // on the minority side takes writes until the minority finds itself cut off (its links' dead
    // time, seconds). The majority refuses such a block meanwhile (most of its replicas are down),
    // and those writes read back after the heal (checked below). None may be acknowledged once the
    // majority has moved on: from then on only one side takes writes.
    const early = onMinority.writes.filter(w => w.ackedAt !== null && w.ackedAt < viewAt && w.issuedAt >= cutAt)
    if (early.length > 0) t.comment(`${at}: ${early.length} write(s) through ${name(aGuest)} acknowledged after the cut, before the majority's view (both replicas of their block on the minority side)`)
    const lateAcks = onMinority.writes.filter(w => w.ackedAt !== null && w.ackedAt >= viewAt && w.ackedAt < healAt && w.issuedAt >= cutAt)
    t.same(lateAcks, [], `${at}: no write through ${name(aGuest)} (minority) was acknowledged while cut once the majority had its view (${onMinority.writes.length} issued)`)
    const probeEarly = await Promise.race([probing.then(w => w), new Promise<null>(resolve => setImmediate(() => resolve(null)))])
    t.ok(probeEarly === null || probeEarly.ackedAt === null, `${at}: a write through ${name(probe)} (minority), issued after the cut, was not acknowledged while cut${probeEarly === null ? ' (still waiting)' : ` (${probeEarly.said.trim()})`}`)
    lab.heal()
    t.comment(`${at}: cut for ${healAt - cutAt} ms; the majority's view came ${viewAt - cutAt} ms after the cut`)

    await waitForStatus(nodes, 'one view of all five again', s => s.every(x => x !== null && x.epoch === s[0]?.epoch && x.members === 5 && x.reachable === 5 && x.quorate))
    const stopped = await Promise.all([onMinority.stop(AFTER_HEAL_MS), onMajority.stop(AFTER_HEAL_MS), restarted.stop(AFTER_HEAL_MS)])
    t.same(stopped, [true, true, true], `${at}: every guest's last write was answered after the heal`)
    const probed = await probing
    const held = onMinority.writes.filter(w => w.ackedAt === null || w.ackedAt >= healAt)
    t.comment(`${at}: the minority's writes held up by the cut: ${held.map(w => `${w.ackedAt === null ? 'refused' : 'acknowledged after the heal'}: ${w.said.trim().split('\n').pop() ?? ''}`).join('; ')}; the probe: ${probed.said.trim().split('\n').pop() ?? ''}`)

    const settled = await waitForSettled(nodes, 5, 60_000)
    const wrong = await waitForCopyCounts(nodes, 3, name)
    const count = (w: string): number => Number(/: (\d+) cop/.exec(w)?.[1] ?? 0)
    t.same(wrong.filter(w => count(w) < 3), [], `${at}: healed into view ${settled.epoch}; no object in fewer than 3 stores`)
    t.same(wrong.filter(w => count(w) > 3), [], `${at}: and none left in more`,
      { todo: 'issue 11: after a heal, a copy placement moved away is at times still there 30 s later (about 1 round in 7; cause not found yet)' })
    for (const image of [a, b]) {
      const reads = nodes.map(d => fs.readFileSync(d.image(image.name)))
      for (const [i, bytes] of reads.entries()) {
        // Also a write of the cut-off holder whose flush the cut held: acknowledged after the heal
        // only if the holder was not fenced off meanwhile.
        t.same(image.model.check(bytes), [], `${at}: every acknowledged write to ${image.name} reads back through ${name(nodes[i] as Daemon)}`)
      }
      t.ok(reads.every(r => r.equals(reads[0] as Buffer)), `${at}: the five read the same bytes of ${image.name}`)
      // What is there now is settled: later rounds expect it.
      const now = reads[0] as Buffer
      for (let s = 0; s < SIZE; s += 4 * KiB) image.model.acknowledged(s, 4 * KiB, now[s] as number)
    }
    t.same(divergentCopies(nodes, name), [], `${at}: the copies of every object are byte-equal`)
  }
})
