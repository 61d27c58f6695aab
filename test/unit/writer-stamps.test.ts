// Writer-stamped versions (issue 11; src/objects/version-chain.ts, src/swarm/write-chains.ts): a
// writer sends each change of an object as made on the version every replica's copy is at, and
// every replica gives it the same next version. Before, each replica counted the changes it took:
// two replicas that each took a different one of two writes counted alike, and held different
// bytes at one version, which no recovery can order.

import t from 'tap'
import { LocalObjectStore } from '../../src/objects/local-store'
import { dataOid, type ObjectId } from '../../src/objects/oid'
import { chainVersion, epochFloor } from '../../src/objects/versions'
import { Op } from '../../src/swarm/messages'
import { type Era, gatewayOn, IDS, makeNodes, nextEpoch, type Node } from './three-replicas'
import { sheepError, tmpDir } from './tmp'

interface Teardownable { teardown (fn: () => unknown): void }

const CHAIN_WAIT_MS = 300

async function replicaStore (t: Teardownable): Promise<LocalObjectStore> {
  const store = new LocalObjectStore(tmpDir(t), { chainWaitMs: CHAIN_WAIT_MS })
  await store.open()
  t.teardown(async () => await store.close())
  await store.asReplica(() => epochFloor(1), () => 1)
  return store
}

async function versionOf (store: LocalObjectStore, oid: ObjectId): Promise<number> {
  return (await store.stat(oid))?.version ?? 0
}

/** The version a change made on `base` gives a copy in epoch 1. */
const after = (base: number): number => chainVersion(base, 1)

t.test('a replica applies a writer\'s changes in the order of their versions, whatever order they arrive in', async t => {
  const store = await replicaStore(t)
  const oid = dataOid(1, 0)
  await store.create(oid, 8192)
  const v0 = await versionOf(store, oid)
  const v1 = after(v0)
  // A write into the second 4 KiB made on v0, then a truncate to 4 KiB made on v1: the truncate
  // arrives first.
  const truncate = store.truncate(oid, 4096, v1)
  await new Promise(resolve => setTimeout(resolve, 50))
  t.equal((await store.stat(oid))?.size, 8192, 'the truncate waits for the write it was made after')
  await store.write(oid, 4096, Buffer.alloc(4096, 2), v0)
  await truncate
  const info = await store.stat(oid)
  t.equal(info?.version, after(v1), 'the copy is at the truncate\'s version')
  t.equal(info?.size, 4096, 'and its size (in arrival order, the write grew it back to 8 KiB)')
  // Writes that do not overlap go side by side; the version moves once all before are done.
  const v2 = after(v1)
  const third = store.write(oid, 2048, Buffer.alloc(1024, 5), after(after(v2)))
  const second = store.write(oid, 1024, Buffer.alloc(1024, 4), after(v2))
  await Promise.all([store.write(oid, 0, Buffer.alloc(1024, 3), v2), second, third])
  t.equal(await versionOf(store, oid), after(after(after(v2))), 'three writes arriving last first: the copy is at the last one\'s version')
  t.same([...(await store.readAll(oid)).subarray(0, 3072).filter((_, i) => i % 1024 === 0)], [3, 4, 5], 'holding all three')
})

t.test('a change the copy holds already (a whole copy brought it before the request came) is not applied again', async t => {
  const store = await replicaStore(t)
  const oid = dataOid(1, 1)
  await store.create(oid, 4096)
  const v0 = await versionOf(store, oid)
  const withIt = Buffer.alloc(4096, 0x5a)
  await store.replace(oid, withIt, after(v0))
  await store.write(oid, 0, Buffer.alloc(4096, 0x5a), v0)
  t.equal(await versionOf(store, oid), after(v0), 'the copy keeps the version of the copy it took (counted again, it looked newer than the others)')
})

t.test('a copy at another version than a change was made on refuses it with EIO: it missed a change', async t => {
  const store = await replicaStore(t)
  const oid = dataOid(1, 2)
  await store.create(oid, 4096)
  const v0 = await versionOf(store, oid)
  let started = Date.now()
  const ahead = await sheepError(async () => { await store.write(oid, 0, Buffer.alloc(16, 1), after(after(v0))) })
  t.equal(ahead.code, 'EIO', 'made on a version the copy never reaches')
  t.match(ahead.message, /missed a change/)
  t.ok(Date.now() - started >= CHAIN_WAIT_MS - 10, `after waiting for the change before it (${Date.now() - started} ms)`)
  await store.write(oid, 0, Buffer.alloc(16, 2), v0)
  started = Date.now()
  // (Made on v0 again, it would be the change the copy holds: a writer makes one change on each version.)
  const behind = await sheepError(async () => { await store.write(oid, 0, Buffer.alloc(16, 3), v0 - 1) })
  t.equal(behind.code, 'EIO', 'made on a version the copy has moved past, and not one it holds')
  t.ok(Date.now() - started < CHAIN_WAIT_MS, 'at once: nothing to wait for')
  t.equal((await store.readAll(oid))[0], 2, 'neither was applied')
  t.equal((await sheepError(async () => { await store.write(dataOid(1, 3), 0, Buffer.alloc(16, 1), v0) })).code, 'ENOENT', 'no copy: ENOENT, at once')
})

t.test('a change waiting for the one it was made after gives way with ESTALE when the view changes, not after the whole wait', async t => {
  let epoch = 1
  const store = new LocalObjectStore(tmpDir(t), { chainWaitMs: 5000 })
  await store.open()
  t.teardown(async () => await store.close())
  await store.asReplica(() => epochFloor(epoch), () => epoch)
  const oid = dataOid(1, 6)
  await store.create(oid, 4096)
  const v0 = await versionOf(store, oid)
  const started = Date.now()
  const waiting = sheepError(async () => { await store.write(oid, 0, Buffer.alloc(16, 1), after(v0)) })
  await new Promise(resolve => setTimeout(resolve, 50))
  epoch = 2
  const err = await waiting
  t.equal(err.code, 'ESTALE', 'refused for the writer to send it again in the new view')
  t.ok(Date.now() - started < 1000, `within ${Date.now() - started} ms (a new view's recovery waits for changes let in before it)`)
})

async function copies (nodes: Map<string, Node>, oid: ObjectId): Promise<Array<{ id: string, version: number, bytes: string }>> {
  return await Promise.all(IDS.map(async id => {
    const store = (nodes.get(id) as Node).store
    return { id, version: await versionOf(store, oid), bytes: (await store.readAll(oid)).toString('hex') }
  }))
}

t.test('writes of one object in flight at once reach every replica in one order: equal versions and bytes, though one replica took them late', async t => {
  const nodes = await makeNodes(t, { chainWaitMs: 2000 })
  const oid = dataOid(1, 4)
  const writer = gatewayOn(nodes, 'a')
  await writer.writeFresh(oid, 65536, 0, Buffer.alloc(4096, 1))
  ;(nodes.get('b') as Node).slowNext = 100
  await Promise.all(Array.from({ length: 8 }, async (_, i) => { await writer.write(oid, i * 8192, Buffer.alloc(8192, 0x10 + i)) }))
  const all = await copies(nodes, oid)
  t.equal(new Set(all.map(c => c.version)).size, 1, `one version (${all.map(c => c.version).join(', ')})`)
  t.equal(new Set(all.map(c => c.bytes)).size, 1, 'the same bytes')
  t.same(IDS.map(id => (nodes.get(id) as Node).recovery.status.missed), [0, 0, 0], 'no copy missed one')
})

t.test('two writes in flight, each lost on its way to a different replica, the writer gives up: no two copies are left at one version with different bytes', async t => {
  const nodes = await makeNodes(t, { chainWaitMs: CHAIN_WAIT_MS })
  const [b, c] = [nodes.get('b') as Node, nodes.get('c') as Node]
  const oid = dataOid(1, 5)
  const writer = gatewayOn(nodes, 'a')
  await writer.writeFresh(oid, 8192, 0, Buffer.alloc(8192, 0))
  // b never sees the first write, c never sees the second.
  b.dropWrite = req => req.data[0] === 1
  c.dropWrite = req => req.data[0] === 2
  const results = await Promise.allSettled([writer.write(oid, 0, Buffer.alloc(4096, 1)), writer.write(oid, 4096, Buffer.alloc(4096, 2))])
  t.same(results.map(r => r.status), ['rejected', 'rejected'], 'both writes fail (a link went, and no new view comes)')
  const all = await copies(nodes, oid)
  t.comment(all.map(x => `${x.id}: version ${x.version}, ${x.bytes.slice(0, 2)}..${x.bytes.slice(8192, 8194)}`).join('; '))
  const clash = all.flatMap(x => all.filter(y => y.id > x.id && y.version === x.version && y.bytes !== x.bytes).map(y => `${x.id} and ${y.id}`))
  t.same(clash, [], 'copies at one version hold the same bytes (counted, b and c each took one write and both stood at the next count)')
  t.equal(b.recovery.status.missed, 1, 'b, which got the second write without the first, refuses its copy until it is repaired')
})

t.test('the writer\'s own copy takes a change only in the epoch it was sent in: one whose view moved on before its own turn is sent again in the new view', async t => {
  const era: Era = { epoch: 1 }
  const nodes = await makeNodes(t, { chainWaitMs: 2000, era })
  const [a, b, c] = IDS.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 7)
  const writer = gatewayOn(nodes, 'a', 0, undefined, IDS.length, era)
  await writer.writeFresh(oid, 8192, 0, Buffer.alloc(8192, 0))
  const before = await versionOf(b.store, oid)
  // b and c take the write at once; their answers come back after a view (epoch 2) that
  // places the object on b and c only: a's copy is one placement moved away.
  b.holdNextAnswer = { op: Op.Write, ms: 150 }
  c.holdNextAnswer = { op: Op.Write, ms: 150 }
  const writing = writer.write(oid, 0, Buffer.alloc(4096, 7))
  for (let i = 0; i < 100 && (await versionOf(b.store, oid) === before || await versionOf(c.store, oid) === before); i++) await new Promise(resolve => setTimeout(resolve, 5))
  // a's plan for epoch 2 waits for b's list a while (its link is not up): the writer's own
  // turn comes under that round, before a's copy could be dropped.
  b.linkUpAt = Date.now() + 400
  nextEpoch(nodes, era, ['b', 'c'])
  await writing
  // A first try that failed on one replica leaves the copies uneven until the next sync or change.
  await writer.sync([oid])
  const [mine, theirs] = [await versionOf(a.store, oid), await versionOf(b.store, oid)]
  t.equal(await versionOf(c.store, oid), theirs, 'b and c at one version')
  t.equal((await b.store.readAll(oid))[0], 7, 'holding the write')
  t.ok(mine < theirs, `a's moved copy (version ${mine}) took no change in epoch 2: it is not newer than the replicas' (${theirs}); taking it at epoch 2's first version would have made it look the newest with bytes a later write never reaches`)
})

t.test('a write made on a version of a later epoch (bad input from a peer) is refused with EINVAL at once, and the copy is not marked missed', async t => {
  const nodes = await makeNodes(t, { chainWaitMs: 2000 })
  const b = nodes.get('b') as Node
  const oid = dataOid(1, 7)
  await gatewayOn(nodes, 'a').writeFresh(oid, 4096, 0, Buffer.alloc(4096, 1))
  const started = Date.now()
  const err = await sheepError(async () => await b.serve({ id: 0, epoch: 1, op: Op.Write, oid, offset: 0, length: 0, version: epochFloor(5) + 1, data: Buffer.alloc(16, 9) }, 'a'))
  t.equal(err.code, 'EINVAL', err.message)
  t.ok(Date.now() - started < 1000, 'not after waiting for a change that cannot come')
  t.equal(b.recovery.status.missed, 0, 'b\'s copy is still served')
  t.equal((await b.store.readAll(oid))[0], 1, 'and unchanged')
})
