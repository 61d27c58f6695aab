// Recovery's plan in one process: three real local stores, each served by the real replica
// handler; the links between them are direct calls that a test can cut (what the network does to
// a member that does not answer). Issue 11: a member that did not answer its list was taken to
// hold nothing, and a rejoining node served its stale copy.

import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { SheepError } from '../../src/errors'
import { LocalObjectStore } from '../../src/objects/local-store'
import { dataOid, type ObjectId, oidToHex, oidVid } from '../../src/objects/oid'
import type { ObjectStore } from '../../src/objects/types'
import { epochFloor, versionEpoch } from '../../src/objects/versions'
import type { Cluster } from '../../src/swarm/cluster'
import type { Link } from '../../src/swarm/link'
import { Op, type Request, type Response } from '../../src/swarm/messages'
import { Recovery } from '../../src/swarm/recovery'
import { replicaHandler } from '../../src/swarm/replica'
import type { View } from '../../src/swarm/view'
import { tmpDir } from './tmp'

interface Node {
  id: string
  dir: string
  store: LocalObjectStore
  up: boolean
  epoch: number
  serve: ObjectStore
  /** The view its recovery last started on, and that recovery (which hears who writes what). */
  view?: View
  recovery?: Recovery
  /** The epoch it had when it last started (crash()): its uncertain copies hold nothing later. */
  bootEpoch?: number
}

const EMPTY = new Uint8Array(0)

/** Every Recovery a test makes, stopped after it: a round left running retries on closed stores for ever. */
const made: Recovery[] = []
t.afterEach(() => { for (const r of made.splice(0)) r.stop() })
function track (r: Recovery): Recovery { made.push(r); return r }

interface Teardownable { teardown (fn: () => unknown): void }

async function makeNodes (t: Teardownable, ids: string[]): Promise<Map<string, Node>> {
  const nodes = new Map<string, Node>()
  for (const id of ids) {
    const dir = tmpDir(t)
    const store = await openReplica(t, dir)
    const node: Node = { id, dir, store, up: true, epoch: 1, serve: store }
    nodes.set(id, await asReplica(node, store))
  }
  return nodes
}

async function openReplica (t: Teardownable, dir: string): Promise<LocalObjectStore> {
  const store = new LocalObjectStore(dir)
  await store.open()
  t.teardown(async () => await store.close())
  return store
}

async function asReplica (node: Node, store: LocalObjectStore): Promise<Node> {
  node.store = store
  node.serve = store
  await store.asReplica(() => epochFloor(node.epoch), () => node.epoch)
  return node
}

/** Node n as a SIGKILL would leave it: a new store on a copy of its folder (what files hold, nothing of memory). */
/** n's process dies and starts again; `lost` says what of its folder the crash left otherwise. */
async function crash (t: Teardownable, n: Node, lost?: (dir: string) => void): Promise<void> {
  const copy = tmpDir(t)
  fs.cpSync(n.dir, copy, { recursive: true })
  fs.rmSync(path.join(copy, 'index', 'LOCK'), { force: true })
  lost?.(copy)
  n.dir = copy
  n.bootEpoch = n.epoch
  await asReplica(n, await openReplica(t, copy))
}

/** Each of nodes, in epoch 4, holds a 4 KiB copy of oid filled with 0x10, synced. */
async function holdInEpoch4 (nodes: Node[], oid: ObjectId): Promise<void> {
  for (const n of nodes) {
    n.epoch = 4
    await n.store.create(oid, 4096)
    await n.store.write(oid, 0, Buffer.alloc(4096, 0x10))
    await n.store.sync([oid])
  }
}

/**
 * Nodes a and b holding oid (holdInEpoch4), b's copy newer, filled with `fill`; b's whole-copy
 * reads fail with ENOTCONN and the reason refusal() gives, while it gives one.
 */
async function bAheadOfA (t: Teardownable, oid: ObjectId, fill: number, refusal: () => string | null): Promise<{ ids: string[], nodes: Map<string, Node>, a: Node, b: Node }> {
  const ids = ['a', 'b']
  const nodes = await makeNodes(t, ids)
  const [a, b] = ids.map(id => nodes.get(id) as Node) as [Node, Node]
  await holdInEpoch4([a, b], oid)
  await b.store.write(oid, 0, Buffer.alloc(4096, fill))
  await b.store.sync([oid])
  const readAll = b.store.readAll.bind(b.store)
  b.store.readAll = async (o: ObjectId) => {
    const why = refusal()
    if (why !== null) throw SheepError.unreachable(why)
    return await readAll(o)
  }
  return { ids, nodes, a, b }
}

/** What node `self` sees of the cluster: its epoch, and a link to each other node that is up. */
function clusterOf (nodes: Map<string, Node>, self: string): Cluster {
  const me = nodes.get(self) as Node
  const link = (id: string): Link | null => {
    const peer = nodes.get(id)
    if (peer === undefined || !peer.up) return null
    const serve = replicaHandler(peer.serve, {
      epoch: () => peer.epoch,
      quorate: () => true,
      asPrimary: async () => { throw new Error('not used') },
      release: async () => {},
      isMember: () => true,
      // The images' writer, when a test has one write through the replicas, is node w.
      tokenOf: async () => ({ holder: 'w', generation: 1, deleted: false }),
      writers: peer.recovery,
      bootEpoch: () => peer.bootEpoch ?? 0
    })
    return {
      async call (req: Omit<Request, 'id'>): Promise<Response> {
        const base: Response = { id: 0, error: '', message: '', epoch: peer.epoch, version: 0, size: 0, data: EMPTY }
        if (!peer.up) throw SheepError.unreachable(`${id} went away`)
        try {
          return { ...base, ...await serve({ ...req, id: 0 }, self) }
        } catch (err) {
          const e = err as SheepError
          return { ...base, error: e.code, message: e.message }
        }
      }
    } as unknown as Link
  }
  return { id: self, get epoch () { return me.epoch }, get bootEpoch () { return me.bootEpoch ?? 0 }, get view () { return me.view ?? null }, link, knownNodes: () => new Set(nodes.keys()) } as unknown as Cluster
}

function viewOf (epoch: number, ids: string[]): View {
  return { epoch, members: ids.map(id => ({ id, host: '127.0.0.1', port: 1, zone: '', weight: 1 })) }
}

async function readBack (store: { read: LocalObjectStore['read'] }, oid: ObjectId, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length)
  await store.read(oid, 0, length, out, 0)
  return out
}

t.test('a member that does not answer its list is not taken to hold nothing: I/O waits for its list, then gets its newer copy', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 0)
  // Epoch 3: a, b and c hold the block; then a is away while c (alone of the others) takes a
  // newer write in epoch 5, and b is replaced and loses its copy.
  for (const n of [a, b, c]) { n.epoch = 3; await n.store.create(oid, 4096); await n.store.write(oid, 0, Buffer.alloc(4096, 0x11)) }
  c.epoch = 5
  await c.store.write(oid, 0, Buffer.alloc(4096, 0x22))
  await b.store.remove(oid)
  // a comes back in epoch 6, while c does not answer yet.
  for (const n of [a, b, c]) n.epoch = 6
  c.up = false
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  recovery.imagesLoaded()
  recovery.start(viewOf(6, ids))
  const guarded = recovery.guarded()
  let answered = false
  const read = readBack(guarded, oid, 4096).finally(() => { answered = true })
  // The plan waits up to 5 s for links, then finds c's list missing and tries again.
  await new Promise(resolve => setTimeout(resolve, 6000))
  t.notOk(answered, 'a read of the block waits: c, which did not answer, may hold a newer copy')
  c.up = true
  const bytes = await read
  t.equal(bytes[0], 0x22, 'once c answers, a copies c\'s newer block first and reads it')
  t.equal((await a.store.stat(oid))?.version, (await c.store.stat(oid))?.version, 'a holds it at c\'s version')
})

t.test('a node catching up copies from every replica that holds the newest copies, not from one alone', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oids = Array.from({ length: 16 }, (_, i) => dataOid(1, i))
  for (const n of [b, c]) {
    n.epoch = 3
    for (const oid of oids) await n.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11))
  }
  const served = new Map<string, number>()
  for (const n of [b, c]) {
    const readAll = n.store.readAll.bind(n.store)
    n.serve = Object.assign(Object.create(n.store) as ObjectStore, {
      readAll: async (oid: ObjectId) => { served.set(n.id, (served.get(n.id) ?? 0) + 1); return await readAll(oid) }
    })
  }
  for (const n of [a, b, c]) n.epoch = 4
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  recovery.imagesLoaded()
  recovery.start(viewOf(4, ids))
  for (const oid of oids) t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0x11)
  t.equal([...served.values()].reduce((x, y) => x + y, 0), oids.length, 'each object copied once')
  t.ok((served.get('b') ?? 0) >= 4 && (served.get('c') ?? 0) >= 4, `from both b and c (${served.get('b') ?? 0} and ${served.get('c') ?? 0})`)
})

t.test('a copy known to be behind is refused while the newer copies are on a member that is down, not served as current', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 0)
  for (const n of [a, b, c]) { n.epoch = 3; await n.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11)) }
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  recovery.imagesLoaded()
  for (const n of [a, b, c]) n.epoch = 4
  recovery.start(viewOf(4, ids))
  t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0x11, 'view 4: every copy current')
  // Then c and b took a newer write and b a newer one still; a plan made while b was up marked
  // a's and c's copies behind b's.
  for (const n of [b, c]) { n.epoch = 5; await n.store.write(oid, 0, Buffer.alloc(4096, 0x22)) }
  b.epoch = 6
  await b.store.write(oid, 0, Buffer.alloc(4096, 0x33))
  for (const n of [a, c]) await n.store.setMissed([oid], true)
  // View 7: b is down.
  const view: View = { ...viewOf(7, ids), down: [{ id: 'b', since: 1 }] }
  for (const n of [a, b, c]) { n.epoch = 7; n.view = view }
  b.up = false
  recovery.start(view)
  const err = await readBack(recovery.guarded(), oid, 4096).then(() => null, (e: unknown) => e as SheepError)
  t.equal(err?.code, 'EIO', 'a refuses its copy: the newer ones are on b, which is down, and c\'s is behind too')
  t.match(err?.message ?? '', /behind a newer copy that no member answering now holds/, 'saying why')
  b.up = true
  for (const n of [a, b, c]) { n.epoch = 8; n.view = viewOf(8, ids) }
  recovery.start(viewOf(8, ids))
  t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0x33, 'once b is back, a copies b\'s newest copy and serves it')
})

t.test('a copy known to be behind is newer than every current copy listed (the newest is on a member gone): no node takes or serves an older copy over it', async t => {
  // d held the newest copy and is out; b's copy was marked behind d's, and c's copy is older
  // still (c was away while b and d took an acknowledged write). The object's replicas are now
  // a, b and c.
  const ids = ['a', 'b', 'c', 'd']
  const members = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c, d] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node, Node]
  const oid = dataOid(1, 0)
  for (const n of [b, c, d]) { n.epoch = 3; await n.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11)) }
  for (const n of [b, d]) { n.epoch = 5; await n.store.write(oid, 0, Buffer.alloc(4096, 0x22)) }
  d.epoch = 6
  await d.store.write(oid, 0, Buffer.alloc(4096, 0x33))
  await b.store.setMissed([oid], true)
  d.up = false
  const view = viewOf(7, members)
  for (const n of [a, b, c]) { n.epoch = 7; n.view = view }
  const recoveries = [a, b, c].map(n => track(new Recovery(n.store, clusterOf(nodes, n.id), { replicasOf: () => members, widest: () => members }, () => {})))
  for (const r of recoveries) { r.imagesLoaded(); r.start(view) }
  const [ra, rb, rc] = recoveries as [Recovery, Recovery, Recovery]
  for (const [name, r] of [['a', ra], ['b', rb], ['c', rc]] as const) {
    const err = await readBack(r.guarded(), oid, 4096).then(() => null, (e: unknown) => e as SheepError)
    t.equal(err?.code, 'EIO', `${name} serves nothing of it`)
  }
  t.equal((await readBack(b.store, oid, 4096))[0], 0x22, 'b keeps its copy (it holds the acknowledged write)')
  t.equal(await a.store.stat(oid), null, 'a took no copy of c\'s')
  t.equal((await c.store.stat(oid))?.missed, true, 'c\'s older copy is marked behind too, across a restart')
  d.up = true
  const back = viewOf(8, ids)
  for (const n of nodes.values()) { n.epoch = 8; n.view = back }
  for (const r of recoveries) r.start(back)
  for (const [name, r] of [['a', ra], ['b', rb], ['c', rc]] as const) t.equal((await readBack(r.guarded(), oid, 4096))[0], 0x33, `once d is back, ${name} copies its newest copy and serves it`)
})

t.test('a copy known to be behind whose newest copy cannot be read is not replaced by a copy older than itself', async t => {
  // a and b took an acknowledged write in epoch 5, c was away; b took one more in epoch 6 and a
  // missed it. b's newest copy then reads ENOENT (its file went, or it was removed meanwhile).
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 0)
  for (const n of [a, b, c]) { n.epoch = 3; await n.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11)) }
  for (const n of [a, b]) { n.epoch = 5; await n.store.write(oid, 0, Buffer.alloc(4096, 0x22)) }
  b.epoch = 6
  await b.store.write(oid, 0, Buffer.alloc(4096, 0x33))
  await a.store.setMissed([oid], true)
  b.store.readAll = async (o: ObjectId) => { throw SheepError.notFound(`object ${oidToHex(o)}`) }
  const view = viewOf(7, ids)
  for (const n of [a, b, c]) { n.epoch = 7; n.view = view }
  const logs: string[] = []
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, line => logs.push(line)))
  recovery.imagesLoaded()
  recovery.start(view)
  const got = await readBack(recovery.guarded(), oid, 4096).then(b => b[0], (e: unknown) => (e as SheepError).code)
  t.not(got, 0x11, `a does not take c's copy, older than its own (it reads ${String(got)})`)
  t.equal((await readBack(a.store, oid, 4096))[0], 0x22, 'a\'s store keeps the acknowledged write of epoch 5')
  t.match(logs.join('\n'), /no copy of .* newer than this node's could be read/, 'and says so')
})

t.test('a copy a crash left uncertain in an earlier epoch does not win over a copy known behind that holds a write of a later one', async t => {
  // b crashed in epoch 1 with a write in flight (its copy uncertain at an epoch-1 version); a and
  // c took an acknowledged write in epoch 2, then c one more that a missed (a's copy marked
  // behind). c is away; a and b plan.
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 0)
  for (const n of [a, b, c]) { await n.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11)); await n.store.sync([oid]) }
  await b.store.write(oid, 0, Buffer.alloc(4096, 0x12))
  await crash(t, b)
  for (const n of [a, c]) { n.epoch = 2; await n.store.write(oid, 0, Buffer.alloc(4096, 0x22)); await n.store.sync([oid]) }
  await c.store.write(oid, 0, Buffer.alloc(4096, 0x33))
  await c.store.sync([oid])
  await a.store.setMissed([oid], true)
  c.up = false
  const members = ['a', 'b']
  const view = viewOf(4, members)
  for (const n of [a, b]) { n.epoch = 4; n.view = view }
  const recoveries = [a, b].map(n => track(new Recovery(n.store, clusterOf(nodes, n.id), { replicasOf: () => members, widest: () => members }, () => {})))
  for (const r of recoveries) { r.imagesLoaded(); r.start(view) }
  for (const [name, r] of [['a', recoveries[0]], ['b', recoveries[1]]] as const) {
    const got = await readBack((r as Recovery).guarded(), oid, 4096).then(x => x[0], (e: unknown) => (e as SheepError).code)
    t.equal(got, 'EIO', `${name} serves neither b's epoch-1 copy nor a's copy known behind (${String(got)})`)
  }
  t.equal((await readBack(a.store, oid, 4096))[0], 0x22, 'a keeps the acknowledged write of epoch 2')
  c.up = true
  const back = viewOf(5, ids)
  for (const n of nodes.values()) { n.epoch = 5; n.view = back }
  for (const r of recoveries) r.start(back)
  for (const [name, r] of [['a', recoveries[0]], ['b', recoveries[1]]] as const) t.equal((await readBack((r as Recovery).guarded(), oid, 4096))[0], 0x33, `once c is back, ${name} serves its newest copy`)
})

t.test('a copy known to be behind whose object the others removed since is removed too, not kept for a force-start to serve', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 0)
  for (const n of [a, b, c]) { n.epoch = 3; await n.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11)) }
  await a.store.setMissed([oid], true)
  for (const n of [b, c]) { n.epoch = 5; await n.store.remove(oid) }
  for (const n of [a, b, c]) { n.epoch = 6; n.view = viewOf(6, ids) }
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  recovery.imagesLoaded()
  recovery.start(viewOf(6, ids))
  const err = await readBack(recovery.guarded(), oid, 4096).then(() => null, (e: unknown) => e as SheepError)
  t.equal(err?.code, 'ENOENT', 'a\'s old copy is gone: the object reads as removed')
  t.equal(await a.store.stat(oid), null, 'no copy left in a\'s store')
  t.same(await recovery.forceStart(), [], 'nothing left for a force-start to serve')
  await recovery.guarded().writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x22))
  t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0x22, 'and a first write makes it anew')
})

t.test('a node lists its copies for another member\'s plan only once the changes let in under an earlier view have ended', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const b = nodes.get('b') as Node
  const oid = dataOid(1, 0)
  for (const n of nodes.values()) { n.epoch = 3; n.view = viewOf(3, ids) }
  await b.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11))
  const before = (await b.store.stat(oid))?.version as number
  // b's disk holds a write of view 3 until the test lets it go.
  let letGo = (): void => {}
  let onDisk = false
  const held = new Promise<void>(resolve => { letGo = resolve })
  const disk = new Proxy(b.store, {
    get (target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown
      if (typeof value !== 'function') return value
      if (prop === 'write') return async (...args: unknown[]) => { onDisk = true; await held; return await (value as (...a: unknown[]) => Promise<unknown>).apply(target, args) }
      return (value as (...a: unknown[]) => unknown).bind(target)
    }
  }) as LocalObjectStore
  const recovery = track(new Recovery(disk, clusterOf(nodes, 'b'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  recovery.imagesLoaded()
  recovery.start(viewOf(3, ids))
  const writing = recovery.guarded().write(oid, 0, Buffer.alloc(4096, 0x22), before)
  while (!onDisk) await new Promise(resolve => setTimeout(resolve, 5))
  for (const n of nodes.values()) { n.epoch = 4; n.view = viewOf(4, ids) }
  recovery.start(viewOf(4, ids))
  let listed: number | undefined
  const listing = (async () => { for await (const info of recovery.guarded().list()) if (info.oid === oid) listed = info.version })()
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal(listed, undefined, 'no answer while view 3\'s write is under way')
  letGo()
  await writing
  await listing
  t.ok(listed !== undefined && listed > before, `then the copy is listed at the write's version (${listed ?? 'none'} > ${before})`)
})

t.test('an object most of whose replicas are down is not served from a copy that may have missed their newest writes, until enough are back or an operator forces it', async t => {
  // 5 members, the object's replicas a, b and c (the example of issue 11): a was away while b and
  // c took a write, then b and c go down and a comes back.
  const ids = ['a', 'b', 'c', 'd', 'e']
  const replicas = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = replicas.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 0)
  for (const n of [a, b, c]) { n.epoch = 3; await n.store.writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x11)); await n.store.sync([oid]) }
  for (const n of [b, c]) { n.epoch = 5; await n.store.write(oid, 0, Buffer.alloc(4096, 0x22)); await n.store.sync([oid]) }
  const logs: string[] = []
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => replicas, widest: () => replicas }, line => logs.push(line)))
  recovery.imagesLoaded()
  const down7: View = { ...viewOf(7, ids), down: [{ id: 'b', since: 1 }, { id: 'c', since: 1 }] }
  for (const n of nodes.values()) { n.epoch = 7; n.view = down7 }
  b.up = false
  c.up = false
  recovery.start(down7)
  const err = await readBack(recovery.guarded(), oid, 4096).then(() => null, (e: unknown) => e as SheepError)
  t.equal(err?.code, 'ENOTCONN', 'a does not serve its copy (before: it served 0x11, older than the write b and c took)')
  t.match(err?.message ?? '', /2 of its 3 replicas are down \(b, c\), and its newest copy may be on them/, 'saying why')
  t.ok(logs.some(l => /force-start/.test(l)), 'the log names the way out')
  t.same(await recovery.forceStart(), [oid], 'force-start names the object')
  t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0x11, 'forced: a serves its copy as it is')
  // View 8: c is back, b still down. Two of three replicas up hold any acknowledged write.
  const down8: View = { ...viewOf(8, ids), down: [{ id: 'b', since: 1 }] }
  c.up = true
  for (const n of nodes.values()) { n.epoch = 8; n.view = down8 }
  recovery.start(down8)
  t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0x22, 'with c back, a copies c\'s newer copy and serves it')
})

t.test('a copy whose unsynced writer is down is in doubt, as one whose writer left the view', async t => {
  const ids = ['a', 'b']
  const nodes = await makeNodes(t, ids)
  const a = nodes.get('a') as Node
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  const oid = dataOid(1, 0)
  a.view = viewOf(2, ['a', 'b', 'w'])
  recovery.changedBy(oid, 'w')
  t.notOk(recovery.inDoubt(oid), 'its writer w is up: not in doubt')
  a.view = { ...viewOf(3, ['a', 'b', 'w']), down: [{ id: 'w', since: 1 }] }
  t.ok(recovery.inDoubt(oid), 'w is down with changes of it unsynced: in doubt')
  a.view = viewOf(4, ['a', 'b', 'w'])
  t.notOk(recovery.inDoubt(oid), 'w is up again')
  recovery.syncedBy([oid], 'w')
  a.view = { ...viewOf(5, ['a', 'b', 'w']), down: [{ id: 'w', since: 1 }] }
  t.notOk(recovery.inDoubt(oid), 'once w synced it, w going down leaves no doubt')
})

t.test('an access to a block whose plan cannot be made fails with ENOTCONN, naming the silent member', async t => {
  const ids = ['a', 'b']
  const nodes = await makeNodes(t, ids)
  const [a, b] = ids.map(id => nodes.get(id) as Node) as [Node, Node]
  const oid = dataOid(1, 0)
  await a.store.create(oid, 4096)
  b.up = false
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  recovery.imagesLoaded()
  recovery.start(viewOf(2, ids))
  const err = await readBack(recovery.guarded(), oid, 4096).then(() => null, (e: unknown) => e as SheepError)
  t.equal(err?.code, 'ENOTCONN')
  t.match(err?.message ?? '', /no list from b/, 'the error names the member whose list is missing')
  recovery.start(viewOf(3, ['a'])) // a newer view without b ends the round that waited for it
  t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0, 'in a view without b the block is served')
})

t.test('every node dies at once while two replicas take different writes: after the restart all three hold one copy', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(2, 0)
  await holdInEpoch4([a, b, c], oid)
  // Two writes a writer had in flight when everything died: one reached a, the other b, none c.
  await a.store.write(oid, 0, Buffer.alloc(4096, 0xaa))
  await b.store.write(oid, 0, Buffer.alloc(4096, 0xbb))
  for (const n of [a, b, c]) await crash(t, n)
  const versions = await Promise.all([a, b, c].map(async n => await n.store.stat(oid)))
  t.same(versions.map(v => v?.version), [versions[0]?.version, versions[0]?.version, versions[0]?.version], 'all three copies give one version')
  t.same(versions.map(v => v?.uncertain === true), [true, true, false], 'and a and b know theirs may hold more')
  for (const n of [a, b, c]) n.epoch = 5
  const recoveries = [a, b, c].map(n => {
    const r = track(new Recovery(n.store, clusterOf(nodes, n.id), { replicasOf: () => ids, widest: () => ids }, () => {}))
    n.serve = r.guarded()
    r.imagesLoaded()
    return r
  })
  for (const r of recoveries) r.start(viewOf(5, ids))
  const bytes = await Promise.all([a, b, c].map(async n => (await readBack(n.serve, oid, 4096)).toString('hex')))
  t.equal(new Set(bytes).size, 1, 'every node reads the same bytes')
  t.ok(bytes[0] === Buffer.alloc(4096, 0xaa).toString('hex'), 'those of a, the lowest id among the copies of the highest version')
  const after = await Promise.all([a, b, c].map(async n => await n.store.stat(oid)))
  t.notOk(after.some(i => i?.uncertain === true), 'no copy is uncertain any more')
})

/**
 * Starts a recovery round on every node up, each serving through its guard from then on; `ids`
 * are every object's replicas (by default every member).
 */
function recoverAll (nodes: Map<string, Node>, view: View, logs: string[] = [], ids = view.members.map(m => m.id)): Recovery[] {
  return [...nodes.values()].filter(n => n.up).map(n => {
    n.epoch = view.epoch
    n.view = view
    const r = track(new Recovery(n.store, clusterOf(nodes, n.id), { replicasOf: () => ids, widest: () => ids }, line => logs.push(`${n.id}: ${line}`)))
    n.recovery = r
    n.serve = r.guarded()
    r.imagesLoaded()
    r.start(view)
    return r
  })
}

async function settled (recoveries: Recovery[]): Promise<void> {
  for (let i = 0; i < 500 && recoveries.some(r => r.status.pending > 0); i++) await new Promise(resolve => setTimeout(resolve, 10))
}

t.test('a writer that leaves the view with writes it never synced, each of which reached one replica: the replicas end up with one copy', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, [...ids, 'w'])
  const [a, b, c, w] = [...ids, 'w'].map(id => nodes.get(id) as Node) as [Node, Node, Node, Node]
  const oid = dataOid(2, 1)
  await holdInEpoch4([a, b, c], oid)
  // Writer w, a member of view 4 holding no copy: two concurrent writes, one reached a, the other
  // b, before w died. Neither was answered, and both replicas count one change.
  const rounds = recoverAll(nodes, viewOf(4, [...ids, 'w']), [], ids)
  await settled(rounds)
  const writeAs = async (to: Node, fill: number): Promise<void> => {
    const link = clusterOf(nodes, 'w').link(to.id) as Link
    const res = await link.call({ epoch: 4, op: Op.Write, oid, offset: 0, length: 0, version: 0, data: Buffer.alloc(4096, fill) }, 1000)
    t.equal(res.error, '', `w's write reached ${to.id} ${res.message}`)
  }
  await writeAs(a, 0xaa)
  await writeAs(b, 0xbb)
  const versions = await Promise.all([a, b].map(async n => (await n.store.stat(oid))?.version))
  t.equal(versions[0], versions[1], 'a and b give one version for different bytes')
  // w is gone; each node's recovery (which heard the writes) starts on the view without it.
  w.up = false
  const recoveries = rounds.slice(0, 3)
  const next = (epoch: number): void => {
    const view = viewOf(epoch, ids)
    for (const n of [a, b, c]) { n.epoch = epoch; n.view = view }
    for (const r of recoveries) r.start(view)
  }
  next(5)
  await settled(recoveries)
  const bytes = await Promise.all([a, b, c].map(async n => (await readBack(n.serve, oid, 4096)).toString('hex')))
  t.equal(new Set(bytes).size, 1, 'in the view without w every node reads the same bytes')
  t.ok([0xaa, 0xbb].includes(Buffer.from(bytes[0] as string, 'hex')[0] as number), 'those of one of w\'s writes')
  const after = await Promise.all([a, b, c].map(async n => await n.store.stat(oid)))
  t.equal(new Set(after.map(i => i?.version)).size, 1, 'at one version')
  const copied = (): number => recoveries.reduce((sum, r) => sum + r.status.copied, 0)
  t.equal(copied(), 2, 'the two others took the chosen copy')
  // Settled: the next view copies nothing for it.
  next(6)
  await settled(recoveries)
  await Promise.all([a, b, c].map(async n => await readBack(n.serve, oid, 4096)))
  t.same(recoveries.map(r => r.status.pending), [0, 0, 0], 'nothing is in doubt in the view after')
})

t.test('a copy marked missed stays so across a restart: never served nor copied, until a current copy replaces it', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(2, 2)
  await holdInEpoch4([a, b, c], oid)
  // c's disk failed the last write, which a and b took; then every node restarted.
  for (const n of [a, b]) await n.store.write(oid, 0, Buffer.alloc(4096, 0x20))
  await c.store.setMissed([oid], true)
  for (const n of [a, b, c]) await n.store.sync([oid])
  await crash(t, c)
  t.equal((await c.store.stat(oid))?.missed, true, 'the mark survived the restart')
  // c alone (a view of one, as if a and b were gone for good): its copy is not served.
  a.up = false
  b.up = false
  const alone = recoverAll(nodes, viewOf(5, ['c']))
  await settled(alone)
  const err = await readBack(c.serve, oid, 4096).then(() => null, (e: unknown) => e as SheepError)
  t.equal(err?.code, 'EIO', `c does not serve the copy that missed a change (${err?.message ?? 'it did'})`)
  // With a and b back, c takes their copy and serves it.
  a.up = true
  b.up = true
  for (const r of alone) r.stop()
  const all = recoverAll(nodes, viewOf(6, ids))
  await settled(all)
  t.equal((await readBack(c.serve, oid, 4096))[0], 0x20, 'c took the current copy from a or b')
  t.notOk((await c.store.stat(oid))?.missed, 'and its record is no longer marked')
  t.same(all.map(r => r.status.copied), [0, 0, 1], 'only c copied (a and b never took c\'s copy as one to copy)')
})

t.test('a background copy that failed (its source did not answer) is tried again without waiting for a use of the object', async t => {
  const oid = dataOid(2, 3)
  // b's first answer to a whole-copy request is lost (not in this view yet, say).
  let asked = 0
  const { ids, nodes, a, b } = await bAheadOfA(t, oid, 0x30, () => asked++ === 0 ? 'b is not there yet' : null)
  const logs: string[] = []
  recoverAll(nodes, viewOf(5, ids), logs)
  const want = (await b.store.stat(oid))?.version
  const deadline = Date.now() + 5000
  while ((await a.store.stat(oid))?.version !== want && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  t.equal((await a.store.stat(oid))?.version, want, 'a copied b\'s copy in the background, nothing having used it')
  t.equal(asked, 2, 'on its second try')
  t.ok(logs.some(l => /^a: recovery: object .*b is not there yet/.test(l)), 'the first failure is logged')
})

t.test('a copy a plan found behind stays so across a crash before it was copied: alone after the restart it is refused, not served', async t => {
  const oid = dataOid(2, 4)
  // b's whole copy does not come through before a dies.
  let refuse = true
  const { ids, nodes, a, b } = await bAheadOfA(t, oid, 0x40, () => refuse ? 'b is busy' : null)
  const first = recoverAll(nodes, viewOf(5, ids))
  const deadline = Date.now() + 5000
  while ((await a.store.stat(oid))?.missed !== true && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  t.equal((await a.store.stat(oid))?.missed, true, 'a\'s plan marked its copy behind in its record')
  for (const r of first) r.stop()
  await crash(t, a)
  b.up = false
  await settled(recoverAll(nodes, viewOf(6, ['a'])))
  const err = await readBack(a.serve, oid, 4096).then(() => null, (e: unknown) => e as SheepError)
  t.equal(err?.code, 'EIO', `restarted alone, a does not serve the copy it knew was behind (${err?.message ?? 'it did'})`)
  // The operator gives b up (sheep cluster force-start): a serves what it has, and says what.
  t.same(await a.recovery?.forceStart(), [oid], 'force-start names the copy it now serves as it is')
  t.equal((await readBack(a.serve, oid, 4096))[0], 0x10, 'a serves its copy')
  t.same(await a.recovery?.forceStart(), [], 'a second force-start has nothing left to name')
  refuse = false
  b.up = true
  await settled(recoverAll(nodes, viewOf(7, ids)))
  t.equal((await readBack(a.serve, oid, 4096))[0], 0x40, 'with b back, a takes b\'s copy and serves it')
})

t.test('a copy whose record outlived its file (a crash between the two) does not hold recovery up: the others keep what they have', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, c] = [nodes.get('a') as Node, nodes.get('c') as Node]
  const oid = dataOid(3, 15)
  // The write that created it was in flight when every node died: only c's record of it is left.
  c.epoch = 4
  await c.store.create(oid, 4096)
  // The record was put, the file not made yet.
  await crash(t, c, dir => fs.rmSync(path.join(dir, 'objects', oidVid(oid).toString(16).padStart(6, '0'), oidToHex(oid))))
  const recoveries = recoverAll(nodes, viewOf(5, ids))
  await settled(recoveries)
  t.same(recoveries.map(r => r.status.pending), [0, 0, 0], 'nothing to copy anywhere (a was once stuck at 1)')
  for (const n of [a, c]) {
    const err = await readBack(n.serve, oid, 4096).then(() => null, (e: unknown) => e as SheepError)
    t.equal(err?.code, 'ENOENT', `${n.id} has no copy, as before the crash (a answered EIO, for ever)`)
  }
})

t.test('a copy whose file went after its node started fails its reads with EIO and holds no one up; the plan goes on past it', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, c] = [nodes.get('a') as Node, nodes.get('c') as Node]
  const oid = dataOid(3, 15)
  const other = dataOid(3, 16)
  c.epoch = 4
  await c.store.create(oid, 4096)
  await c.store.create(other, 4096)
  await c.store.write(other, 0, Buffer.alloc(4096, 0x5c))
  await crash(t, c)
  fs.rmSync(path.join(c.dir, 'objects', oidVid(oid).toString(16).padStart(6, '0'), oidToHex(oid)))
  const logs: string[] = []
  const recoveries = recoverAll(nodes, viewOf(5, ids), logs)
  await settled(recoveries)
  t.equal(recoveries[0]?.status.pending, 0, 'a has nothing left to copy')
  const err = await readBack(a.serve, oid, 4096).then(() => null, (e: unknown) => e as SheepError)
  t.ok(err?.code === 'ENOENT' || err?.code === 'EIO', `a has no copy of the broken object (${err?.code ?? 'none'})`)
  t.ok(logs.some(l => /^a: recovery: no copy of .* could be read \(c: .*its file is gone/.test(l)), 'a says why it copied nothing')
  t.ok((await readBack(a.serve, other, 4096)).equals(Buffer.alloc(4096, 0x5c)), 'the other object c held reached a')
})

t.test('a copy that comes back after its object was removed is buried, not spread, and the tombstones go once every node saw them', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const [a, b, c] = ids.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(4, 0)
  for (const n of [a, b, c]) {
    n.epoch = 3
    await n.store.create(oid, 4096)
    await n.store.write(oid, 0, Buffer.alloc(4096, 0x77))
  }
  // c is away while a and b remove the object (a discard, or the image deleted).
  c.up = false
  for (const n of [a, b]) { n.epoch = 4; await n.store.remove(oid) }
  c.up = true
  const recoveries = recoverAll(nodes, viewOf(5, ids))
  await settled(recoveries)
  for (const n of [a, b, c]) {
    const err = await readBack(n.serve, oid, 4096).then(() => null, (e: unknown) => e as SheepError)
    t.equal(err?.code, 'ENOENT', `${n.id} serves no copy (before: c's came back to all three)`)
  }
  t.equal(await c.store.stat(oid), null, 'c buried its copy')
  t.equal(recoveries[2]?.status.buried, 1)
  // Every node has seen the remove once c buried its copy: the tombstones are collected, at the
  // latest in the next view's round (a node's round may have listed c before c buried).
  const later = recoverAll(nodes, viewOf(6, ids))
  const collected = (): number => [...recoveries, ...later].reduce((n, r) => n + r.status.collected, 0)
  for (let i = 0; i < 300 && collected() < 3; i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.equal(collected(), 3, 'each node dropped its tombstone')
  const left = []
  for (const n of [a, b, c]) for await (const info of n.store.list()) left.push(info)
  t.same(left, [], 'nothing is left of the object')
})

t.test('a copy placement moved away is dropped without a tombstone: the replicas keep theirs', async t => {
  const ids = ['a', 'b', 'c']
  const nodes = await makeNodes(t, ids)
  const oid = dataOid(5, 0)
  for (const n of nodes.values()) {
    n.epoch = 3
    await n.store.create(oid, 4096)
    await n.store.write(oid, 0, Buffer.alloc(4096, 0x55))
  }
  for (const n of nodes.values()) n.epoch = 4
  const c = nodes.get('c') as Node
  // Placement now gives the object to a and b only.
  const r = track(new Recovery(c.store, clusterOf(nodes, 'c'), { replicasOf: () => ['a', 'b'], widest: () => ['a', 'b'] }, () => {}))
  r.imagesLoaded()
  r.start(viewOf(4, ids))
  for (let i = 0; i < 300 && r.status.dropped === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.equal(r.status.dropped, 1, 'c dropped its copy')
  const left = []
  for await (const info of c.store.list()) left.push(info)
  t.same(left, [], 'and keeps no tombstone, which would be newer than the replicas\' copies (it made every node remove its copy)')
  for (const id of ['a', 'b']) t.equal((await readBack((nodes.get(id) as Node).store, oid, 4096))[0], 0x55, `${id} still has it`)
})

t.test('a change let in under one view and still waiting for its plan when the next view starts is refused with ESTALE, not applied in that view', async t => {
  const ids = ['a', 'b']
  const nodes = await makeNodes(t, ids)
  const [a, b] = ids.map(id => nodes.get(id) as Node) as [Node, Node]
  const oid = dataOid(1, 0)
  await a.store.create(oid, 4096)
  b.up = false // a's plan for view 2 waits for b's list
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}))
  recovery.imagesLoaded()
  recovery.start(viewOf(2, ids))
  const started = Date.now()
  const write = recovery.guarded().write(oid, 0, Buffer.alloc(4096, 0x77)).then(() => null, (e: unknown) => e as SheepError)
  await new Promise(resolve => setTimeout(resolve, 50))
  // View 3: a alone (its plan needs no list). In it a may not be a replica of the block any more,
  // and its copy is not one a plan made current for the write.
  recovery.start(viewOf(3, ['a']))
  const err = await write
  // Fails while the change goes on in view 3, on top of the copy, at a version of epoch 3.
  t.equal(err?.code, 'ESTALE', `the write is refused: ${err?.message ?? 'it was applied'}`)
  t.ok(Date.now() - started < 2000, `at once (${Date.now() - started} ms), not after the guard's wait: the new round's plan waits for changes let in before it`)
  t.equal((await readBack(recovery.guarded(), oid, 4096))[0], 0, 'the copy did not take it')
})

t.test('a change let in under one view and applied after the node moved to the next keeps the stamp of its own view', async t => {
  const nodes = await makeNodes(t, ['a'])
  const a = nodes.get('a') as Node
  const oid = dataOid(3, 0)
  a.epoch = 4
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ['a'], widest: () => ['a'] }, () => {}))
  // As a node wires it: its store's floor is the epoch of the last round whose plan began.
  await a.store.asReplica(() => epochFloor(recovery.stampEpoch), () => a.epoch)
  recovery.imagesLoaded()
  recovery.start(viewOf(4, ['a']))
  const guarded = recovery.guarded()
  await guarded.create(oid, 4096)
  t.equal(versionEpoch((await a.store.stat(oid))?.version ?? 0), 4, 'a change in view 4 is stamped in epoch 4')
  // The next write reaches the disk only after the node moved to view 5.
  let reach = (): void => {}
  const reached = new Promise<void>(resolve => { reach = resolve })
  let release = (): void => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const write = a.store.write.bind(a.store)
  a.store.write = async (o, offset, data, base) => {
    if (data[0] === 0x55) { reach(); await gate }
    await write(o, offset, data, base)
  }
  const late = guarded.write(oid, 0, Buffer.alloc(4096, 0x55))
  await reached
  // And one made on a version the copy never reaches (its writer's change before it was lost).
  const version = (await a.store.stat(oid))?.version ?? 0
  const waiting = guarded.write(oid, 0, Buffer.alloc(4096, 0x77), version + 2).then(() => null, (e: unknown) => e as SheepError)
  await new Promise(resolve => setTimeout(resolve, 50))
  const moved = Date.now()
  a.epoch = 5
  recovery.start(viewOf(5, ['a']))
  t.equal(recovery.stampEpoch, 4, 'the new round\'s plan waits for the changes let in under view 4')
  release()
  await late
  const err = await waiting
  t.equal(err?.code, 'ESTALE', `the one waiting for a change that is not coming gives way when the view moves: ${err?.message ?? 'it was applied'}`)
  t.ok(Date.now() - moved < 2000, `at once (${Date.now() - moved} ms), not after the chain's wait: it holds up the plan`)
  t.equal(versionEpoch((await a.store.stat(oid))?.version ?? 0), 4, 'which is stamped in epoch 4, as on replicas that applied it in time')
  a.store.write = write
  await guarded.write(oid, 0, Buffer.alloc(4096, 0x66))
  t.equal(recovery.stampEpoch, 5, 'then the plan of view 5 began')
  t.equal(versionEpoch((await a.store.stat(oid))?.version ?? 0), 5, 'and a change let in under view 5 is stamped in epoch 5')
})

t.test('a copy an earlier view\'s plan asked for, whose answer comes after the node moved on, does not land on the changes made since', async t => {
  const ids = ['a', 'b']
  const nodes = await makeNodes(t, ids)
  const [a, b] = ids.map(id => nodes.get(id) as Node) as [Node, Node]
  const oid = dataOid(1, 0)
  await holdInEpoch4([a, b], oid)
  b.epoch = 5
  await b.store.write(oid, 0, Buffer.alloc(4096, 0x22))
  await b.store.sync([oid])
  // b's answer to a's copy is held up (a slow network) until the test lets it go.
  let asked = (): void => {}
  const askedFor = new Promise<void>(resolve => { asked = resolve })
  let release = (): void => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const readAll = b.store.readAll.bind(b.store)
  b.store.readAll = async (o: ObjectId) => { const data = await readAll(o); asked(); await gate; return data }
  const view = viewOf(6, ids)
  for (const n of [a, b]) { n.epoch = 6; n.view = view }
  let ended = (_line: string): void => {}
  const copyEnded = new Promise<string>(resolve => { ended = resolve })
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, line => { if (line.includes('copying')) ended(line) }))
  recovery.imagesLoaded()
  recovery.start(view)
  await askedFor
  // b goes for good; a alone in view 7 is forced to serve what it has, and takes a write.
  b.up = false
  a.epoch = 7
  recovery.start(viewOf(7, ['a']))
  await recovery.forceStart()
  await recovery.guarded().write(oid, 0, Buffer.alloc(4096, 0x33))
  release()
  let timer: NodeJS.Timeout | undefined
  const said = await Promise.race([copyEnded, new Promise<string>(resolve => { timer = setTimeout(() => resolve('nothing said within 5 s'), 5000) })])
  clearTimeout(timer)
  t.match(said, /the view changed while the copy was on its way/, 'the late copy is dropped')
  t.equal((await readBack(a.store, oid, 4096))[0], 0x33, 'a keeps the write of view 7')
  t.equal(versionEpoch((await a.store.stat(oid))?.version ?? 0), 7, 'at its version')
})

/**
 * Nodes a and b in view 5, b holding eight objects of 256 KiB newer than a's, and a's recovery
 * kept to 1 MiB/s, not started yet.
 */
async function eightToCopy (t: Teardownable): Promise<{ ids: string[], nodes: Map<string, Node>, a: Node, b: Node, oids: ObjectId[], view: View, recovery: Recovery }> {
  const ids = ['a', 'b']
  const nodes = await makeNodes(t, ids)
  const [a, b] = ids.map(id => nodes.get(id) as Node) as [Node, Node]
  const oids = Array.from({ length: 8 }, (_, i) => dataOid(3, i))
  for (const n of [a, b]) n.epoch = 4
  for (const oid of oids) {
    for (const n of [a, b]) await n.store.create(oid, 256 * 1024)
    await b.store.write(oid, 0, Buffer.alloc(256 * 1024, 0x44))
  }
  await b.store.sync(oids)
  const view = viewOf(5, ids)
  for (const n of [a, b]) { n.epoch = 5; n.view = view }
  const recovery = track(new Recovery(a.store, clusterOf(nodes, 'a'), { replicasOf: () => ids, widest: () => ids }, () => {}, { rate: 1024 * 1024 }))
  a.recovery = recovery
  recovery.imagesLoaded()
  return { ids, nodes, a, b, oids, view, recovery }
}

t.test('background copies keep to the recovery rate; one an access asks for does not wait; status counts the bytes', async t => {
  const { oids, view, recovery } = await eightToCopy(t)
  const started = Date.now()
  recovery.start(view)
  // An access to the last object copies it at once, whatever the rate.
  const last = oids[7] as ObjectId
  t.same(await readBack(recovery.guarded(), last, 4), Buffer.alloc(4, 0x44), 'an access gets the newer copy')
  t.ok(Date.now() - started < 1500, `at once (${Date.now() - started} ms), not after the background copies`)
  for (let i = 0; i < 500 && recovery.status.pending > 0; i++) await new Promise(resolve => setTimeout(resolve, 20))
  const took = Date.now() - started
  t.equal(recovery.status.pending, 0)
  t.equal(recovery.status.copiedBytes, 8 * 256 * 1024, 'every byte copied is counted')
  // Seven background copies of 256 KiB at 1 MiB/s, two at a time, each worker waiting after its
  // copy until the bytes so far are what the rate allows: the seventh starts at 1.25 s at least.
  t.ok(took >= 1200, `the background copies took ${took} ms at 1 MiB/s`)
})

t.test('a view change in the middle of throttled copies carries their progress and the rate\'s budget into the new round', async t => {
  const { ids, a, b, oids, view, recovery } = await eightToCopy(t)
  const started = Date.now()
  recovery.start(view)
  while (recovery.status.copied < 3) await new Promise(resolve => setTimeout(resolve, 10))
  // The same members in a new view (one flapped): a new round, with objects still to copy.
  const next = viewOf(6, ids)
  for (const n of [a, b]) { n.epoch = 6; n.view = next }
  const moved = Date.now()
  recovery.start(next)
  for (let i = 0; i < 500 && !(recovery.status.epoch === 6 && recovery.status.pending === 0 && recovery.status.copied === 8); i++) await new Promise(resolve => setTimeout(resolve, 20))
  const took = Date.now() - started
  t.equal(recovery.status.copied, 8, 'the status counts the copies of both rounds')
  t.equal(recovery.status.copiedBytes, 8 * 256 * 1024, 'and their bytes')
  t.ok(recovery.status.startedAt >= started && recovery.status.startedAt < moved, 'from when the copying began, before the view change')
  // Eight copies of 256 KiB at 1 MiB/s: a budget restarted at the view change would let two more
  // through at once and end before 1.5 s.
  t.ok(took >= 1500, `the copies took ${took} ms at 1 MiB/s`)
  t.same(await readBack(recovery.guarded(), oids[0] as ObjectId, 4), Buffer.alloc(4, 0x44), 'and a holds the newer copies')
})

t.test('an object larger than one message (12 MiB) is copied in pieces by a node catching up', async t => {
  const ids = ['a', 'b']
  const nodes = await makeNodes(t, ids)
  const [a, b] = ids.map(id => nodes.get(id) as Node) as [Node, Node]
  const oid = dataOid(4, 0)
  const size = 12 * 2 ** 20
  for (const n of [a, b]) { n.epoch = 4; await n.store.create(oid, size) }
  const data = Buffer.alloc(size)
  for (let i = 0; i < size; i += 4096) data[i + 7] = (i / 4096) & 0xff
  await b.store.write(oid, 0, data)
  await b.store.sync([oid])
  const [ra] = recoverAll(nodes, viewOf(5, ids))
  t.ok((await readBack((ra as Recovery).guarded(), oid, size)).equals(data), 'a reads b\'s newer 12 MiB copy')
  t.equal((await a.store.stat(oid))?.version, (await b.store.stat(oid))?.version, 'at b\'s version')
})
