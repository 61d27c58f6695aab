// Damage as a disk does it (issue 12): bytes flipped inside one replica's object files, another
// replica's files gone, on a live 3-node cluster with copies 3. Reads through every host return
// the right bytes; `sheep check` reports each bad copy; `sheep check --repair` replaces them and
// a second check is clean; a read that meets a damaged copy heals it by itself. On one host,
// `sheep check` finds a damaged object and says it cannot be repaired.

import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { type Daemon, qemuIo, startCluster, startDaemon, storedObjects, waitFor, waitForView } from '../helpers/daemon'
import { divergentCopies, waitForSettled } from '../helpers/replicas'
import type { CheckReport } from '../../src/swarm/check'

const MiB = 2 ** 20

function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} on ${d.mount} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

function nodeId (d: Daemon): string {
  return (JSON.parse(ok(d, ['status', '--json'])) as { cluster: { node: string } }).cluster.node
}

function check (d: Daemon, args: string[] = []): { code: number | null, report: CheckReport } {
  const r = d.sheep(['check', '--json', ...args, '--mount', d.mount])
  if (r.code !== 0 && r.code !== 1) throw new Error(`sheep check failed (${r.code}): ${r.stderr}`)
  return { code: r.code, report: JSON.parse(r.stdout) as CheckReport }
}

/** Path of an object's file in a daemon's store. */
function objectPath (d: Daemon, name: string): string {
  return path.join(d.store, 'objects', name.slice(2, 8), name)
}

/** Flips 16 bytes in the middle of an object file, as a failing disk would. */
function flip (file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const b = Buffer.alloc(16)
    fs.readSync(fd, b, 0, 16, offset)
    for (let i = 0; i < 16; i++) b[i] = (b[i] as number) ^ 0xff
    fs.writeSync(fd, b, 0, 16, offset)
  } finally {
    fs.closeSync(fd)
  }
}

/** The copies of the report that are not right, as "object@node state". */
function bad (report: CheckReport): string[] {
  return report.images.flatMap(i => i.problems.flatMap(o => o.copies.filter(c => c.state !== 'ok').map(c => `${o.oid}@${c.node.slice(0, 8)} ${c.state}`))).sort()
}

/** Reads the whole image through a host, checking the pattern written. */
function readsRight (d: Daemon): string {
  return qemuIo(d.image('vm.img'), ['read -P 0x11 0 12M', 'read -P 0 12M 4M', 'read -P 0x22 16M 8M', 'read -P 0 24M 8M'])
}

t.test('3 nodes, copies 3: one replica\'s bytes flipped, another\'s files deleted: check reports both, --repair fixes both, reads are right everywhere, and reads heal what they meet', async t => {
  const nodes = await startCluster(t, 3)
  const [a, b, c] = nodes as [Daemon, Daemon, Daemon]
  ok(a, ['image', 'create', 'vm.img', '32M', '--copies', '3'])
  qemuIo(a.image('vm.img'), ['write -P 0x11 0 12M', 'write -P 0x22 16M 8M'])
  await waitForSettled(nodes, 3)
  const clean = check(a)
  t.equal(clean.code, 0, 'a healthy cluster checks clean')
  t.equal(clean.report.problems, 0)
  t.ok(clean.report.objects >= 5, `every object checked (${clean.report.objects})`)
  // The three stores share this host's disk: df on the mount shows their space divided by the
  // three copies an image takes, and sheep status the raw sum.
  const disk = fs.statfsSync(a.store)
  const mounted = fs.statfsSync(a.mount)
  const within = (x: number, y: number): boolean => Math.abs(x - y) <= y * 0.01
  t.ok(within(mounted.blocks * mounted.bsize, disk.blocks * disk.bsize), `df: ${mounted.blocks * mounted.bsize} bytes, the disk has ${disk.blocks * disk.bsize}`)
  const raw = (JSON.parse(ok(a, ['status', '--json'])) as { cluster: { raw: { capacity: number } } }).cluster.raw.capacity
  t.ok(within(raw, 3 * disk.blocks * disk.bsize), `sheep status: raw ${raw} bytes, three times the disk`)

  const dataOf = (d: Daemon): string[] => storedObjects(d).filter(n => n.startsWith('0'))
  const objects = dataOf(b)
  t.equal(objects.length, 5, 'five 4 MiB data objects written, on every replica')
  const flipped = objects.slice(0, 4)
  for (const name of flipped) flip(objectPath(b, name), 2 * MiB + 1000)
  // A running daemon keeps its files open: the deleted ones are gone for it after a restart.
  const deleted = objects.slice(3, 5)
  await c.stop()
  for (const name of deleted) fs.rmSync(objectPath(c, name))
  await c.start()
  await waitForView(nodes, 3)
  await waitForSettled(nodes, 3)

  const [idB, idC] = [nodeId(b), nodeId(c)]
  const want = [...flipped.map(o => `${o}@${idB.slice(0, 8)} damaged`), ...deleted.map(o => `${o}@${idC.slice(0, 8)} damaged`)].sort()
  const found = check(a)
  t.equal(found.code, 1, 'check exits 1 while copies are bad')
  t.same(bad(found.report), want, 'it names each flipped copy on b and each deleted one on c')
  t.match(JSON.stringify(found.report), /do not match their checksums/, 'flipped bytes: a checksum mismatch')
  t.match(JSON.stringify(found.report), /its file is gone/, 'a deleted file: said so')
  const text = a.sheep(['check', 'vm.img', '--mount', a.mount])
  t.equal(text.code, 1)
  t.match(text.stdout, /vm\.img: 6 objects, 5 with copies not right/, 'the text report is per image')

  const repaired = check(a, ['--repair'])
  t.equal(repaired.code, 0, 'check --repair exits 0 once it fixed them')
  t.equal(repaired.report.repaired, 6, 'six copies repaired')
  t.equal(repaired.report.problems, 0)
  const again = check(c)
  t.equal(again.code, 0, 'a second check (from another host) is clean')
  t.same(divergentCopies(nodes), [], 'the replicas\' files hold the same bytes')
  for (const d of nodes) t.doesNotThrow(() => readsRight(d), `reads through ${d === a ? 'a' : d === b ? 'b' : 'c'} return the written bytes`)

  // Damage again, and only read: each host's reads meet its own copy first.
  for (const name of flipped) flip(objectPath(b, name), MiB + 77)
  for (const d of nodes) t.doesNotThrow(() => readsRight(d), `with b's copies damaged, reads through ${d === a ? 'a' : d === b ? 'b' : 'c'} are right`)
  const healed = await waitFor(() => {
    const s = JSON.parse(ok(b, ['status', '--json'])) as { cluster: { damaged: number, healed: number, healing: number } }
    return s.cluster.damaged === 4 && s.cluster.healed === 4 && s.cluster.healing === 0
  }, 30_000)
  t.ok(healed, 'b found its four damaged copies by reading them, and healed them from replicas')
  t.match(ok(b, ['status']), /healing: +4 damaged copies found by reads here, 4 healed/, 'sheep status says so')
  t.equal(check(a).code, 0, 'and a check finds nothing left to repair')
})

t.test('one host: check finds a damaged object, names its image, and cannot repair it', async t => {
  const d = await startDaemon(t)
  ok(d, ['image', 'create', 'solo.img', '8M'])
  qemuIo(d.image('solo.img'), ['write -P 0x33 0 8M'])
  t.equal(check(d).code, 0, 'clean at first')
  const none = d.sheep(['check', 'nosuch.img', '--mount', d.mount])
  t.equal(none.code, 1, 'check of an image that does not exist fails')
  t.match(none.stderr, /nosuch\.img.*does not exist/, `and says so: ${none.stderr.trim()}`)
  const spin = d.sheep(['start', '--store', d.store + '-other', '--mount', d.mount + '-other', '--scrub-interval', '0'])
  t.equal(spin.code, 2, '--scrub-interval 0 is a usage error')
  t.match(spin.stderr, /--scrub-interval 0/)
  t.equal(d.sheep(['check', '--repair', 'yes', '--mount', d.mount]).code, 1, 'a stray argument names no image: fails')
  const name = storedObjects(d).filter(n => n.startsWith('0'))[1] as string
  flip(objectPath(d, name), 4096 * 10 + 5)
  const found = check(d)
  t.equal(found.code, 1)
  t.same(bad(found.report), [`${name}@local damaged`])
  t.equal(found.report.images.find(i => i.problems.length > 0)?.image, 'solo.img', 'the damaged object is solo.img\'s')
  const repair = check(d, ['--repair'])
  t.equal(repair.code, 1, 'nothing to repair it from: still a problem')
  t.match(JSON.stringify(repair.report), /no whole copy to repair it from/)
  t.throws(() => qemuIo(d.image('solo.img'), ['read -P 0x33 4M 4M']), 'a guest read of the damaged chunk fails (EIO), as a disk\'s would')
  t.match(ok(d, ['status']), /checks: +\d+ reads? found chunks that do not match their checksums/, 'sheep status counts it')
})

t.test('3 nodes scrubbing every 2 s: a copy damaged on one node is found by its scrub and healed, with no read or check', async t => {
  const nodes = await startCluster(t, 3, ['--scrub-rate', '64M', '--scrub-interval', '2'])
  const [a, b] = nodes as [Daemon, Daemon, Daemon]
  ok(a, ['image', 'create', 'vm.img', '32M', '--copies', '3'])
  qemuIo(a.image('vm.img'), ['write -P 0x11 0 12M', 'write -P 0x22 16M 8M'])
  await waitForSettled(nodes, 3)
  const name = storedObjects(b).filter(n => n.startsWith('0'))[2] as string
  flip(objectPath(b, name), 3 * MiB + 5)
  const status = (): { scrub: { lastPassFound: number, images: Array<{ image: string, found: number }> }, cluster: { healed: number, healing: number } } => JSON.parse(ok(b, ['status', '--json']))
  // The status shows the last pass that ended: the one after the heal, 2 s later, finds nothing,
  // and the heal may be over before the pass that found the copy ends (CI saw only 0s when the
  // wait stopped at the heal). Looked at until both are seen: that pass shows for a whole interval.
  const found = new Set<number>()
  let healed = false
  t.ok(await waitFor(() => {
    const s = status()
    found.add(s.scrub.images.find(i => i.image === 'vm.img')?.found ?? 0)
    healed ||= s.cluster.healed === 1 && s.cluster.healing === 0
    return healed && found.has(1)
  }, 60_000), 'b\'s scrub found the copy and b healed it from a replica')
  t.ok(found.has(1) && !found.has(2), `status: a pass found one damaged copy of vm.img (passes showed ${[...found].join(', ')})`)
  t.match(ok(b, ['status']), /scrub: +64 MiB\/s/, 'and says the scrub\'s rate')
  t.same(divergentCopies(nodes), [], 'the copies are the same bytes again')
  t.equal(check(a).code, 0, 'a check finds nothing')
})
