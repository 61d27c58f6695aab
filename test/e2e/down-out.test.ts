// Down versus out (issue 12): a member gone for less than --out-after is down. It keeps its place
// in placement, writes go on with the other replicas, and when it comes back it copies only what
// changed meanwhile. Past --out-after it is out: it leaves the view and its objects are copied to
// the others so that every image keeps its copies.

import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { type Daemon, qemuIo, startCluster } from '../helpers/daemon'
import { divergentCopies, waitForCopyCounts, waitForStatus } from '../helpers/replicas'

const MiB = 2 ** 20

interface Status {
  epoch: number
  members: number
  reachable: number
  quorate: boolean
  recovering: number
  down: Array<{ node: string, since: number }>
  recovery: { epoch: number, copied: number, copiedBytes: number } | null
}

function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} on ${d.mount} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

function status (d: Daemon): Status {
  return (JSON.parse(ok(d, ['status', '--json'])) as { cluster: Status }).cluster
}

function nodeId (d: Daemon): string {
  return (JSON.parse(ok(d, ['status', '--json'])) as { cluster: { node: string } }).cluster.node
}

/** Allocated bytes of each object file of a store, by object id. */
function allocations (d: Daemon): Map<string, number> {
  const out = new Map<string, number>()
  const dir = path.join(d.store, 'objects')
  for (const e of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile() && /^[0-9a-f]{16}$/.test(e.name)) out.set(e.name, fs.statSync(path.join(e.parentPath, e.name)).blocks * 512)
  }
  return out
}

t.test('a member down for less than --out-after: writes go on without it, it keeps its place, and back it copies only what changed', async t => {
  const nodes = await startCluster(t, 3, ['--out-after', '600'])
  const [n1, n2, n3] = nodes as [Daemon, Daemon, Daemon]
  const gone = nodeId(n3)
  ok(n1, ['image', 'create', 'vm.img', '128M', '--copies', '3'])
  qemuIo(n1.image('vm.img'), ['write -P 0x11 0 128M'])
  // n3 holds this image's write token when it dies.
  ok(n1, ['image', 'create', 'n3.img', '8M', '--copies', '3'])
  qemuIo(n3.image('n3.img'), ['write -P 0x33 0 8M'])

  await n3.kill('SIGKILL')
  const killedAt = Date.now()
  await waitForStatus([n1, n2], 'n3 down in a view of 3 members that n1 and n2 share', states => states.every(s => {
    const c = s as unknown as Status | null
    return c != null && c.members === 3 && c.quorate && c.down.length === 1 && c.down[0]?.node === gone
  }), 30_000)
  t.pass(`n3 is down ${Date.now() - killedAt} ms after its kill, and still one of 3 members`)
  t.match(ok(n1, ['status']), /^down: {5}node [0-9a-f]{16} for \d+ s: its objects stay placed on it/m, 'sheep status says which member is down')
  const list = JSON.parse(ok(n1, ['node', 'list', '--json'])) as Array<{ id: string, state: string }>
  t.match(list.find(n => n.id === gone)?.state, /^down/, 'sheep node list shows it down')

  // About a tenth of vm.img rewritten, in 4 whole objects, plus a small write into a fifth; and
  // a write into n3.img, whose token holder is down: it is taken without asking n3.
  const changed = [
    'write -P 0x22 8M 4M', 'write -P 0x22 40M 4M', 'write -P 0x22 72M 4M', 'write -P 0x22 120M 4M', 'write -P 0x23 100M 64K'
  ]
  qemuIo(n1.image('vm.img'), changed)
  qemuIo(n2.image('n3.img'), ['write -P 0x34 1M 64K'])
  const changedBytes = 16 * MiB + 2 * 64 * 1024
  qemuIo(n2.image('vm.img'), ['read -P 0x22 8M 4M', 'read -P 0x23 100M 64K', 'read -P 0x11 0 8M'])
  t.pass('the writes were acknowledged with n3 down, and read back through another host')
  t.equal(status(n1).members, 3, 'n3 is still a member: nothing moved')
  const checked = n1.sheep(['check', 'vm.img', '--json', '--mount', n1.mount])
  t.equal(checked.code, 1, 'sheep check exits 1 while a replica is down')
  const onN3 = (JSON.parse(checked.stdout) as { images: Array<{ problems: Array<{ copies: Array<{ node: string, state: string, detail?: string }> }> }> })
    .images.flatMap(i => i.problems.flatMap(p => p.copies)).filter(c => c.node === gone)
  t.ok(onN3.length > 0 && onN3.every(c => c.state === 'unreachable' && /is down/.test(c.detail ?? '')), 'and names n3\'s copies as on a member that is down')

  await n3.start()
  const settled = await waitForStatus(nodes, 'one view of 3 members, none down, nothing left to recover', states => {
    const s = states as unknown as Array<Status | null>
    const first = s[0]
    return first != null && s.every(x => x != null && x.epoch === first.epoch && x.members === 3 && x.reachable === 3 && x.quorate && x.down.length === 0 && x.recovering === 0)
  }, 60_000)
  t.ok(settled.length === 3, 'n3 is back up in the view of every node')
  const recovery = status(n3).recovery
  t.ok(recovery !== null, 'n3 says what its recovery copied')
  const copied = recovery?.copiedBytes ?? 0
  t.comment(`n3 copied ${recovery?.copied ?? 0} objects, ${(copied / MiB).toFixed(2)} MiB, for ${(changedBytes / MiB).toFixed(2)} MiB written while it was down`)
  t.ok(copied >= 16 * MiB, 'n3 copied the objects that changed')
  t.ok(copied <= 2 * changedBytes, `and within twice what changed (${copied} <= ${2 * changedBytes} bytes), not the 136 MiB it holds`)
  t.same(divergentCopies(nodes), [], 'every copy of every object holds the same bytes')
  // n3 reads its own copies first: stale ones would show here.
  qemuIo(n3.image('vm.img'), ['read -P 0x11 0 8M', 'read -P 0x22 8M 4M', 'read -P 0x11 12M 28M', 'read -P 0x22 40M 4M', 'read -P 0x11 44M 28M',
    'read -P 0x22 72M 4M', 'read -P 0x11 76M 24M', 'read -P 0x23 100M 64K', 'read -P 0x11 102464K 20416K', 'read -P 0x22 120M 4M', 'read -P 0x11 124M 4M'])
  qemuIo(n3.image('n3.img'), ['read -P 0x33 0 1M', 'read -P 0x34 1M 64K', 'read -P 0x33 1088K 7104K'])
  t.pass('n3 serves the writes it missed')
})

t.test('a member gone for longer than --out-after is out: its objects are copied to the others, sparse as they were', async t => {
  const nodes = await startCluster(t, 3, ['--out-after', '4'])
  const [n1, n2, n3] = nodes as [Daemon, Daemon, Daemon]
  ok(n1, ['image', 'create', 'sparse.img', '256M', '--copies', '2'])
  // Scattered writes: most of each object it touches stays a hole.
  qemuIo(n1.image('sparse.img'), Array.from({ length: 24 }, (_, i) => `write -P ${0x40 + i} ${i * 10 + 1}M 64K`))
  const before = allocations(n3)
  await n3.kill('SIGKILL')
  const killedAt = Date.now()
  await waitForStatus([n1, n2], 'n3 down', states => states.every(s => (s as unknown as Status | null)?.down.length === 1), 30_000)
  const out = await waitForStatus([n1, n2], 'n3 out: a view of 2 members', states => states.every(s => s != null && s.members === 2 && s.recovering === 0), 60_000)
  const outAfter = Date.now() - killedAt
  t.ok(out.length === 2, `n3 was out ${outAfter} ms after its kill`)
  t.ok(outAfter >= 4000, 'not before --out-after (4 s) had passed')
  t.same(await waitForCopyCounts([n1, n2], 2), [], 'every object is in both remaining stores: copies 2 kept')
  const after = [allocations(n1), allocations(n2)]
  let compared = 0
  const denser: string[] = []
  for (const [oid, source] of before) {
    for (const alloc of after) {
      const copy = alloc.get(oid)
      if (copy === undefined) continue
      compared++
      if (copy > source) denser.push(`object ${oid}: a copy allocates ${copy} bytes, n3's ${source}`)
    }
  }
  t.ok(compared >= 24, `${compared} copies compared with n3's`)
  t.same(denser, [], 'none allocates more than n3\'s copy of it: holes stayed holes')
  qemuIo(n2.image('sparse.img'), Array.from({ length: 24 }, (_, i) => `read -P ${0x40 + i} ${i * 10 + 1}M 64K`).concat(['read -P 0 0 1M', 'read -P 0 250M 6M']))
  t.pass('the image reads back right without n3')
})

/** The rate qemu-io reports for its one command, in MiB/s ("(37.5 MiB/sec and ...)"). */
function rateOf (out: string): number {
  const m = /\(([\d.]+) (KiB|MiB|GiB)\/sec/.exec(out)
  if (m === null) throw new Error(`no rate in qemu-io's output: ${out}`)
  return Number(m[1]) * { KiB: 1 / 1024, MiB: 1, GiB: 1024 }[m[2] as 'KiB' | 'MiB' | 'GiB']
}

t.test('--recovery-rate: a returning member copies at that rate, shows its progress, and a guest writing another image goes on', async t => {
  const RATE = 4 * MiB
  const nodes = await startCluster(t, 3, ['--out-after', '600', '--recovery-rate', '4M'])
  const [n1, n2, n3] = nodes as [Daemon, Daemon, Daemon]
  ok(n1, ['image', 'create', 'a.img', '48M', '--copies', '3'])
  ok(n1, ['image', 'create', 'b.img', '32M', '--copies', '3'])
  qemuIo(n1.image('b.img'), ['write -P 0x51 0 32M'])
  const quiet = rateOf(qemuIo(n1.image('b.img'), ['write -P 0x52 0 32M'], ['-t', 'none']))
  await n3.kill('SIGKILL')
  await waitForStatus([n1, n2], 'n3 down', states => states.every(s => (s as unknown as Status | null)?.down.length === 1), 30_000)
  qemuIo(n1.image('a.img'), ['write -P 0x61 0 48M'])

  await n3.start()
  const started = Date.now()
  // n3 copies a.img's 12 objects back; b.img did not change while it was down.
  const during = rateOf(qemuIo(n1.image('b.img'), ['write -P 0x53 0 32M'], ['-t', 'none']))
  const list = JSON.parse(ok(n3, ['image', 'list', '--json'])) as Array<{ name: string, recovering?: { objects: number } }>
  const listed = list.find(i => i.name === 'a.img')?.recovering?.objects ?? 0
  t.ok(listed > 0, `sheep image list on n3 shows a.img recovering (${listed} objects left)`)
  t.match(ok(n3, ['image', 'list']), /a\.img .*recovering \d+ objects?/, 'in its table too')
  t.equal(list.find(i => i.name === 'b.img')?.recovering, undefined, 'and b.img not')
  await waitForStatus([n3], 'n3 has nothing left to copy', states => states[0]?.recovering === 0 && (states[0] as unknown as Status).down.length === 0, 120_000)
  const took = (Date.now() - started) / 1000
  const copied = status(n3).recovery?.copiedBytes ?? 0
  t.comment(`n3 copied ${(copied / MiB).toFixed(1)} MiB in ${took.toFixed(1)} s at --recovery-rate 4M; a guest's 32 MiB O_DIRECT write to another image ran at ${during.toFixed(1)} MiB/s during it, ${quiet.toFixed(1)} MiB/s before (${(during / quiet).toFixed(2)}x)`)
  t.ok(copied >= 48 * MiB, 'n3 copied a.img back')
  // Two copies start at once, then each waits until the bytes copied so far fit the rate.
  t.ok(took >= (copied - 2 * 4 * MiB) / RATE * 0.9, `the copies kept to the rate: ${took.toFixed(1)} s for ${(copied / MiB).toFixed(1)} MiB`)
  qemuIo(n3.image('a.img'), ['read -P 0x61 0 48M'])
  qemuIo(n3.image('b.img'), ['read -P 0x53 0 32M'])
  t.same(divergentCopies(nodes), [], 'every copy holds the same bytes')
})
