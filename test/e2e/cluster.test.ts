// Three daemons as one cluster on loopback, each with its own store and FUSE mount: what one host
// writes through its mount, the others read through theirs, with every object in exactly as many
// stores as the image asks; images created, resized and deleted on one host are seen on all.

import t from 'tap'
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import { Daemon, isMounted, qemuIo, SHEEP_BIN, startCluster, startDaemon, storedObjects, tempDir } from '../helpers/daemon'

const MiB = 2 ** 20

async function eventually (what: string, check: () => boolean, ms = 5000): Promise<number> {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > ms) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return Date.now() - start
}

/** Runs a sheep command on d; throws (failing the test) unless it succeeds. */
function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} on ${d.mount} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** How many stores hold each object. */
function holders (nodes: Daemon[]): Map<string, number> {
  const count = new Map<string, number>()
  for (const d of nodes) for (const oid of storedObjects(d)) count.set(oid, (count.get(oid) ?? 0) + 1)
  return count
}

t.test('3 nodes, copies 3: written on node 1, read on nodes 2 and 3; every object in exactly 3 stores', async t => {
  const nodes = await startCluster(t, 3)
  const [n1, n2, n3] = nodes as [Daemon, Daemon, Daemon]
  ok(n1, ['image', 'create', 'vm1.img', '256M', '--copies', '3'])
  const seen = await eventually('vm1.img in ls on node 3', () => fs.readdirSync(n3.mount).includes('vm1.img'))
  t.ok(seen < 2000, `node 3 lists the new image after ${seen} ms`)
  t.equal(fs.statSync(n2.image('vm1.img')).size, 256 * MiB, 'node 2 sees its size')

  qemuIo(n1.image('vm1.img'), ['write -P 0x5a 0 64M', 'write -P 0xa5 100M 3M', 'write -P 0x33 255M 1M'])
  for (const d of [n3, n2]) {
    qemuIo(d.image('vm1.img'), ['read -P 0x5a 0 64M', 'read -P 0 64M 36M', 'read -P 0xa5 100M 3M', 'read -P 0x33 255M 1M'])
    t.pass(`${d === n3 ? 'node 3' : 'node 2'} reads the same bytes`)
  }
  const count = holders(nodes)
  const data = [...count.keys()].filter(oid => oid.startsWith('0'))
  t.equal(data.length, 16 + 1 + 1, 'the written blocks are objects (16 + 1 + 1 of 4 MiB)')
  t.same([...count.entries()].filter(([, n]) => n !== 3), [], 'every object (data, inode, directory) is in exactly 3 stores')

  // A write on node 3 into what node 1 wrote, read back on node 1.
  qemuIo(n3.image('vm1.img'), ['write -P 0x77 1M 1M'])
  qemuIo(n1.image('vm1.img'), ['read -P 0x5a 0 1M', 'read -P 0x77 1M 1M', 'read -P 0x5a 2M 62M'])
  t.pass('a write on node 3 is read on node 1')

  ok(n2, ['image', 'resize', 'vm1.img', '512M'])
  await eventually('the resize seen on node 1', () => fs.statSync(n1.image('vm1.img')).size === 512 * MiB)
  t.pass('a resize on node 2 is seen on node 1')
  ok(n3, ['image', 'delete', 'vm1.img'])
  await eventually('the delete seen on nodes 1 and 2', () => !fs.readdirSync(n1.mount).includes('vm1.img') && !fs.readdirSync(n2.mount).includes('vm1.img'))
  t.same(nodes.map(d => storedObjects(d).filter(oid => !oid.startsWith('2'))), [[], [], []], 'deleting frees its objects in every store')
})

t.test('copies is capped by the cluster size and the status says so', async t => {
  const nodes = await startCluster(t, 2)
  const [n1, n2] = nodes as [Daemon, Daemon]
  ok(n1, ['image', 'create', 'a.img', '16M', '--copies', '3'])
  ok(n1, ['image', 'create', 'b.img', '16M', '--copies', '1'])
  qemuIo(n1.image('a.img'), ['write -P 1 0 8M'])
  qemuIo(n1.image('b.img'), ['write -P 2 0 8M'])
  const count = holders(nodes)
  const dataOf = (vidPrefix: (oid: string) => boolean): number[] => [...count.entries()].filter(([oid]) => oid.startsWith('0') && vidPrefix(oid)).map(([, n]) => n)
  const a = JSON.parse(ok(n1, ['image', 'list', '--json'])) as Array<{ name: string, vid: number }>
  const vidOf = (name: string): string => (a.find(i => i.name === name)?.vid ?? -1).toString(16).padStart(6, '0')
  t.same(dataOf(oid => oid.slice(2, 8) === vidOf('a.img')), [2, 2], 'copies 3 on 2 nodes: each block on both')
  t.same(dataOf(oid => oid.slice(2, 8) === vidOf('b.img')), [1, 1], 'copies 1: each block on one node')
  const status = ok(n2, ['status'])
  t.match(status, /cluster: +epoch \d+, 2 members, 2 reachable/)
  t.match(status, /copies: +degraded: a\.img asks for 3 copies, the cluster has 2 nodes/)
  const list = ok(n2, ['node', 'list'])
  t.match(list, /self/)
  t.match(list, /up \(tcp\)/)
  const nodesJson = JSON.parse(ok(n2, ['node', 'list', '--json'])) as Array<{ id: string, capacity: number | null, used: number | null, state: string }>
  t.equal(nodesJson.length, 2, 'both members listed')
  t.ok(nodesJson.every(n => typeof n.capacity === 'number' && n.capacity > 0 && typeof n.used === 'number'), 'with capacity and use for each')
  t.same(nodesJson.map(n => n.state).sort(), ['self', 'up (tcp)'])
})

/** Runs a sheep command on d without blocking the event loop; resolves with its exit code and stderr. */
async function sheepAsync (d: Daemon, args: string[]): Promise<{ code: number, stderr: string }> {
  return await new Promise(resolve => {
    execFile(process.execPath, [SHEEP_BIN, ...args, '--mount', d.mount], { env: d.env, timeout: 60_000 }, (err, _stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stderr })
    })
  })
}

t.test('two hosts creating the same names at once: exactly one of each pair succeeds', async t => {
  const nodes = await startCluster(t, 3)
  const [n1, n2, n3] = nodes as [Daemon, Daemon, Daemon]
  const names = Array.from({ length: 8 }, (_, i) => `race${i}.img`)
  const results = await Promise.all(names.flatMap(name => [
    sheepAsync(n1, ['image', 'create', name, `${1 + names.indexOf(name)}M`]),
    sheepAsync(n2, ['image', 'create', name, `${100 + names.indexOf(name)}M`])
  ]))
  for (const [i, name] of names.entries()) {
    const a = results[2 * i] as { code: number, stderr: string }
    const b = results[2 * i + 1] as { code: number, stderr: string }
    t.equal([a.code, b.code].filter(c => c === 0).length, 1, `${name}: one create succeeded (exit codes ${a.code}, ${b.code})`)
    const loser = a.code === 0 ? b : a
    t.match(loser.stderr, /already exists/, `${name}: the other got EEXIST (${loser.stderr.trim()})`)
  }
  const lists = nodes.map(d => (JSON.parse(ok(d, ['image', 'list', '--json'])) as Array<{ name: string, vid: number }>))
  t.same(lists[1], lists[0], 'node 2 lists what node 1 lists')
  t.same(lists[2], lists[0], 'so does node 3')
  t.same(lists[0]?.map(i => i.name).sort(), names, 'each name once')
  const vids = new Set(lists[0]?.map(i => i.vid.toString(16).padStart(6, '0')))
  const stray = nodes.flatMap(d => storedObjects(d)).filter(oid => !oid.startsWith('2') && !vids.has(oid.slice(2, 8)))
  t.same(stray, [], 'the losers left no inode behind')
  ok(n3, ['image', 'delete', 'race0.img'])
})

t.test('bad cluster input: a clear one-line error, a non-zero exit, nothing started', async t => {
  const d = new Daemon(tempDir(t), [])
  const start = (args: string[]): { code: number | null, err: string } => {
    const r = d.sheep(['start', '--store', d.store, '--mount', d.mount, ...args])
    return { code: r.code, err: r.stderr.trim().split('\n')[0] ?? '' }
  }
  const cases: Array<[string[], RegExp, number]> = [
    [['--join', 'not-a-token'], /bad join token \(it does not start with sheep1\.\)/, 1],
    [['--join', 'sheep1.c2hvcnQ.127.0.0.1:1'], /bad join token \(the secret is not 32 bytes\)/, 1],
    [['--bootstrap', 'nohost'], /--bootstrap: bad address "nohost": expected host:port/, 2],
    [['--bootstrap-port', '70000'], /bad --bootstrap-port 70000: a port is 0 to 65535/, 2],
    [['--zone', 'a'], /--zone, --host, --port and --no-direct are for a cluster/, 2],
    [['--bootstrap-port', '0', '--no-direct', '--port', '5000'], /--port is the direct path's port: not with --no-direct/, 2]
  ]
  for (const [args, re, code] of cases) {
    const r = start(args)
    t.equal(r.code, code, `${args.join(' ')}: exit ${code}`)
    t.match(r.err, re, `${args.join(' ')}: says why`)
  }
  t.notOk(isMounted(d.mount), 'nothing is mounted')
  t.notOk(fs.existsSync(`${d.store}/cluster.json`), 'no cluster identity was written')
  const one = await startDaemon(t)
  const r = one.sheep(['cluster', 'token', '--mount', one.mount])
  t.not(r.code, 0, 'cluster token on a one-host node fails')
  t.match(r.stderr, /runs without a cluster/, 'and says why')
  t.match(one.sheep(['node', 'list', '--mount', one.mount]).stderr, /runs without a cluster/, 'so does node list')
  t.match(one.sheep(['cluster', 'force-start', '--mount', one.mount]).stderr, /runs without a cluster/, 'and cluster force-start')
})
