// A replica whose disk fails a write (issue 11): three real local stores, each behind its own
// recovery guard and the real replica handler, and the real gateway writing to them over links
// that are direct calls. One store's writes fail with ENOSPC on demand. Before: the guest's write
// failed although two replicas had taken it, and the third kept serving its old bytes until the
// next view.

import t from 'tap'
import fs from 'node:fs'
import type { LocalObjectStore } from '../../src/objects/local-store'
import { dataOid, type ObjectId, tokenOid } from '../../src/objects/oid'
import { SheepError } from '../../src/errors'
import { Op } from '../../src/swarm/messages'
import type { View } from '../../src/swarm/view'
import { objectFile } from './store-files'
import { gatewayOn, IDS, makeNodes, type Node, readVia, until, VIEW } from './three-replicas'
import { sheepError } from './tmp'

t.test('a write one replica\'s disk fails succeeds on the other two; that replica serves none of it until it is repaired, then the new bytes', async t => {
  const nodes = await makeNodes(t)
  const [a, c] = [nodes.get('a') as Node, nodes.get('c') as Node]
  const oid = dataOid(1, 0)
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, 4096)
  await writer.write(oid, 0, Buffer.alloc(4096, 0x11))
  c.full = true
  await writer.write(oid, 0, Buffer.alloc(4096, 0x22))
  t.pass('with c\'s disk full, a write to a, b and c succeeds: two of three took it')
  t.equal((await sheepError(async () => await readVia(c.recovery.guarded(), oid))).code, 'EIO', 'c refuses to serve its copy, which missed the write')
  t.equal(c.recovery.status.missed, 1, 'c counts one copy missed')
  t.equal((await c.store.stat(oid))?.missed, true, 'and its record says so (a restart keeps it)')
  t.equal(await readVia(gatewayOn(nodes, 'c'), oid), 0x22, 'a read on c\'s host gets the new bytes from another replica')
  await writer.write(oid, 0, Buffer.alloc(4096, 0x33))
  t.equal(await readVia(gatewayOn(nodes, 'c'), oid), 0x33, 'writes go on while c is full')
  c.full = false
  t.ok(await until(async () => c.recovery.status.missed === 0, 5000), 'once c has space, the writer\'s repair replaces c\'s copy within its retry time')
  t.equal(await readVia(c.recovery.guarded(), oid), 0x33, 'c\'s own copy now has the last write')
  t.notOk((await c.store.stat(oid))?.missed, 'its record is no longer marked')
  t.equal((await c.store.stat(oid))?.version, (await a.store.stat(oid))?.version, 'at a\'s version')
  t.equal(c.recovery.status.repaired, 1)
})

t.test('down replicas take no I/O: a change goes to the others while --min-copies of them are up, and waits otherwise', async t => {
  const nodes = await makeNodes(t)
  const [a, b, c] = IDS.map(id => nodes.get(id) as Node) as [Node, Node, Node]
  const oid = dataOid(1, 3)
  const cDown: View = { ...VIEW, down: [{ id: 'c', since: 1 }] }
  const writer = gatewayOn(nodes, 'a', 0, cDown)
  await writer.create(oid, 4096)
  await writer.write(oid, 0, Buffer.alloc(4096, 0x61))
  await writer.sync([oid])
  t.pass('with c down, a create, a write and a sync succeed on a and b')
  t.equal(await c.store.stat(oid), null, 'c, down, was sent none of them')
  t.equal((await b.store.stat(oid))?.version, (await a.store.stat(oid))?.version, 'a and b hold it at one version')
  t.equal(await readVia(gatewayOn(nodes, 'b', 0, cDown), oid), 0x61, 'reads go to the live replicas')
  const twoDown: View = { ...VIEW, down: [{ id: 'b', since: 1 }, { id: 'c', since: 1 }] }
  const err = await sheepError(async () => await gatewayOn(nodes, 'a', 0, twoDown).write(oid, 0, Buffer.alloc(4096, 0x62)))
  t.equal(err.code, 'ENOTCONN', 'with b and c down, one live replica is below the majority of 3: the write waits for a view, then fails')
  t.match(err.message, /1 of its 3 replicas are up, and a change needs 2/, 'saying why')
  t.equal(await readVia(a.recovery.guarded(), oid), 0x61, 'and nothing of it was written')
  await gatewayOn(nodes, 'a', 1, twoDown).write(oid, 0, Buffer.alloc(4096, 0x63))
  t.equal(await readVia(a.recovery.guarded(), oid), 0x63, '--min-copies 1: the live replica alone takes it')
})

t.test('a view that lost members keeps --min-copies: its writes wait for members instead of going to fewer replicas; a cluster that never had that many writes to what it has', async t => {
  const nodes = await makeNodes(t)
  const a = nodes.get('a') as Node
  const oid = dataOid(1, 4)
  const cOut: View = { epoch: 1, members: VIEW.members.filter(m => m.id !== 'c') }
  await gatewayOn(nodes, 'a', 0, cOut).writeFresh(oid, 4096, 0, Buffer.alloc(4096, 0x61))
  t.equal(await readVia(a.recovery.guarded(), oid), 0x61, 'c out: a majority of 3 copies is 2, which a and b still make')
  const err = await sheepError(async () => await gatewayOn(nodes, 'a', 3, cOut).write(oid, 0, Buffer.alloc(4096, 0x62)))
  t.equal(err.code, 'ENOTCONN', '--min-copies 3 with c out: the write waits for a view, then fails')
  t.match(err.message, /the view has 2 of its replicas, and a change needs 3/, 'saying why')
  t.equal(await readVia(a.recovery.guarded(), oid), 0x61, 'and nothing of it was written')
  const alone: View = { epoch: 1, members: VIEW.members.filter(m => m.id === 'a') }
  await gatewayOn(nodes, 'a', 3, alone, 1).write(oid, 0, Buffer.alloc(4096, 0x63))
  t.equal(await readVia(a.recovery.guarded(), oid), 0x63, 'a founding node that never had company writes to its one replica')
})

t.test('below --min-copies acknowledgements a write fails, and the copies that missed it are still repaired', async t => {
  const nodes = await makeNodes(t)
  const [b, c] = [nodes.get('b') as Node, nodes.get('c') as Node]
  const oid = dataOid(1, 0)
  const strict = gatewayOn(nodes, 'a', 3)
  await strict.create(oid, 4096)
  c.full = true
  t.equal((await sheepError(async () => await strict.write(oid, 0, Buffer.alloc(4096, 0x44)))).code, 'ENOSPC', '--min-copies 3: two acknowledgements are not enough')
  const majority = gatewayOn(nodes, 'a')
  b.full = true
  t.equal((await sheepError(async () => await majority.write(oid, 0, Buffer.alloc(4096, 0x55)))).code, 'ENOSPC', 'the default (a majority of 3): one is not enough')
  b.full = false
  c.full = false
  t.ok(await until(async () => b.recovery.status.missed === 0 && c.recovery.status.missed === 0, 5000), 'both copies that missed a write are repaired once there is space')
  for (const id of IDS) t.equal(await readVia((nodes.get(id) as Node).recovery.guarded(), oid), 0x55, `${id} holds what a wrote last`)
})

t.test('a holder another host fenced off hears ESTALE from a sync of what it wrote, not that it is durable', async t => {
  const nodes = await makeNodes(t)
  const oid = dataOid(1, 2)
  const writer = gatewayOn(nodes, 'a')
  let takenOver = false
  const asked: bigint[] = []
  writer.fenceWith(o => {
    asked.push(o)
    return takenOver ? Promise.reject(SheepError.stale('its write token was taken over')) : undefined
  })
  await writer.create(oid, 4096)
  await writer.write(oid, 0, Buffer.alloc(4096, 0x44))
  await writer.sync([oid])
  t.pass('synced while it holds the token')
  // The write was made; the sync that would make it durable comes after another host took over
  // (as when the holder's sync waited out a partition, and the majority moved on without it).
  await writer.write(oid, 0, Buffer.alloc(4096, 0x45))
  takenOver = true
  t.equal((await sheepError(async () => { await writer.sync([oid]) })).code, 'ESTALE', 'the sync after the take-over fails with ESTALE')
  t.ok(asked.filter(o => o === oid).length >= 4, 'each write and sync asked the fence first')
})

t.test('a compare-and-replace of a record removed before (a reused vid\'s token) goes above its tombstone, on every replica', async t => {
  const nodes = await makeNodes(t)
  const oid = tokenOid(5)
  const writer = gatewayOn(nodes, 'a')
  await writer.compareAndReplace(oid, Buffer.from('first'), 0)
  await writer.remove(oid)
  const tombstones: number[] = []
  for (const id of IDS) for await (const info of (nodes.get(id) as Node).store.list(oid)) if (info.oid === oid && info.removed === true) tombstones.push(info.version)
  t.equal(tombstones.length, 3, 'every replica keeps a tombstone')
  const version = await writer.compareAndReplace(oid, Buffer.from('again'), 0)
  t.ok(version > Math.max(...tombstones), `the new record's version ${version} is above the tombstones' (${tombstones.join(', ')})`)
  for (const id of IDS) t.equal((await (nodes.get(id) as Node).store.stat(oid))?.version, version, `${id} holds it at that version`)
})

t.test('two overlapping writes in flight at once reach every replica in one order; writes that do not overlap go side by side', async t => {
  const nodes = await makeNodes(t)
  const oid = dataOid(1, 3)
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, 8192)
  // b's disk is slow for the first write: sent side by side, b would take the second one first.
  ;(nodes.get('b') as Node).slowNext = 200
  await Promise.all([writer.write(oid, 0, Buffer.alloc(4096, 0x51)), writer.write(oid, 2048, Buffer.alloc(4096, 0x52))])
  const copies = await Promise.all(IDS.map(async id => (await (nodes.get(id) as Node).store.readAll(oid)).toString('hex')))
  t.equal(new Set(copies).size, 1, 'the three copies are byte-equal')
  t.equal(Buffer.from(copies[0] as string, 'hex')[3000], 0x52, 'with the later write over the earlier one')
  ;(nodes.get('b') as Node).slowNext = 200
  const started = Date.now()
  await Promise.all([writer.write(oid, 0, Buffer.alloc(1024, 0x61)), writer.write(oid, 4096, Buffer.alloc(1024, 0x62))])
  t.ok(Date.now() - started < 390, `writes to different ranges waited for each other no more than one slow write (${Date.now() - started} ms)`)
})

t.test('a change every replica\'s disk failed leaves no copy behind another: once the disks have room, the primary\'s copy is made current and the others take it', async t => {
  const nodes = await makeNodes(t)
  const oid = dataOid(1, 4)
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, 4096)
  await writer.write(oid, 0, Buffer.alloc(4096, 0x71))
  for (const n of nodes.values()) n.full = true
  t.equal((await sheepError(async () => { await writer.write(oid, 0, Buffer.alloc(4096, 0x72)) })).code, 'ENOSPC', 'the write fails: no replica took it')
  t.same([...nodes.values()].map(n => n.recovery.status.missed), [1, 1, 1], 'every replica marks its copy missed')
  for (const n of nodes.values()) n.full = false
  t.ok(await until(async () => [...nodes.values()].every(n => n.recovery.status.missed === 0), 5000), 'the writer\'s repair clears them all within its retry time (before: refused until an operator forced it)')
  const copies = await Promise.all(IDS.map(async id => (await (nodes.get(id) as Node).store.readAll(oid)).toString('hex')))
  t.equal(new Set(copies).size, 1, 'the three copies are byte-equal')
  await writer.write(oid, 0, Buffer.alloc(4096, 0x73))
  t.equal(await readVia(gatewayOn(nodes, 'c'), oid), 0x73, 'and the object takes writes again')
})

t.test('a write whose answer from one replica was lost leaves copies that may differ: the next write makes them one copy first', async t => {
  const nodes = await makeNodes(t)
  const oid = dataOid(1, 5)
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, 8192)
  await writer.write(oid, 0, Buffer.alloc(8192, 0x81))
  // b takes the write, its answer is lost: the writer fails the write (no new view comes) and
  // has not changed its own copy, while b and c have.
  ;(nodes.get('b') as Node).loseNextAnswer = true
  t.equal((await sheepError(async () => { await writer.write(oid, 0, Buffer.alloc(4096, 0x82)) })).code, 'ENOTCONN', 'the write fails')
  await writer.write(oid, 4096, Buffer.alloc(4096, 0x83))
  const copies = await Promise.all(IDS.map(async id => (await (nodes.get(id) as Node).store.readAll(oid)).toString('hex')))
  // Fails while the next write goes on top of copies that differ: a keeps 0x81 where b and c
  // have 0x82 (a later failure could leave such copies at one version, which recovery cannot order).
  t.equal(new Set(copies).size, 1, 'after the next write the three copies are byte-equal')
  const versions = await Promise.all(IDS.map(async id => (await (nodes.get(id) as Node).store.stat(oid))?.version))
  t.equal(new Set(versions).size, 1, `at one version (${versions.join(', ')})`)
})

t.test('a read at an object\'s primary whose link is not up yet (a view just committed) waits for it instead of a next view', async t => {
  const nodes = await makeNodes(t)
  const oid = tokenOid(6)
  await gatewayOn(nodes, 'a').compareAndReplace(oid, Buffer.from('holder'), 0)
  // a is the primary (first in placement); c asks while c's link to a is on its way.
  ;(nodes.get('a') as Node).linkUpAt = Date.now() + 300
  const started = Date.now()
  const found = await gatewayOn(nodes, 'c').readAtPrimary(oid)
  // Fails while the read fails at once and waits for a view that does not come (ENOTCONN).
  t.equal(found?.data.toString(), 'holder', `c reads the record at a once the link is up (${Date.now() - started} ms)`)
})

/** Flips bytes of a store's file of oid behind its back, as a failing disk would. */
function damage (store: LocalObjectStore, oid: ObjectId, offset: number): void {
  const fd = fs.openSync(objectFile(store.dir, oid), 'r+')
  try {
    fs.writeSync(fd, Buffer.alloc(16, 0xee), 0, 16, offset)
  } finally {
    fs.closeSync(fd)
  }
}

t.test('a read that finds this node\'s copy damaged gets the bytes from another replica, and the copy heals itself from one', async t => {
  const nodes = await makeNodes(t)
  const [a, c] = [nodes.get('a') as Node, nodes.get('c') as Node]
  const oid = dataOid(1, 0)
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, 64 * 1024)
  await writer.write(oid, 0, Buffer.alloc(64 * 1024, 0x11))
  await writer.sync([oid])
  damage(c.store, oid, 100)
  t.equal(await readVia(gatewayOn(nodes, 'c'), oid), 0x11, 'a read on c\'s host returns the good bytes')
  t.equal(c.recovery.status.damaged, 1, 'c counts its damaged copy')
  t.ok(await until(async () => c.recovery.status.healed === 1, 5000), 'and heals it from a replica')
  t.same(await c.store.readAll(oid), await a.store.readAll(oid), 'c\'s copy holds the replicas\' bytes again')
  t.notOk((await c.store.stat(oid))?.missed, 'and is no longer marked')
  t.equal(await readVia(c.recovery.guarded(), oid), 0x11, 'c serves it again')
  t.equal(c.store.checksumStatus().mismatches, 1, 'the store counted the mismatch once')
})

t.test('a copy healing from a source whose answer is slow: a write the copy refused meanwhile is not lost under the heal', async t => {
  const nodes = await makeNodes(t)
  const [a, c] = [nodes.get('a') as Node, nodes.get('c') as Node]
  const oid = dataOid(1, 0)
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, 4096)
  await writer.write(oid, 0, Buffer.alloc(4096, 0x11))
  await writer.sync([oid])
  damage(c.store, oid, 100)
  // c's heal reads a's copy (0x11) at once, and gets the answer only after the next write went
  // (c refused it: its copy is marked) and the writer's repair replaced c's copy with 0x22.
  a.holdNextAnswer = { op: Op.ReadAll, ms: 400 }
  t.equal(await readVia(gatewayOn(nodes, 'c'), oid), 0x11, 'the damaged copy is read elsewhere')
  await writer.write(oid, 0, Buffer.alloc(4096, 0x22))
  t.ok(await until(async () => c.recovery.status.missed === 0, 5000), 'the writer repairs the copy that refused its write')
  t.ok(await until(async () => c.recovery.status.healing === 0, 5000), 'the heal ends once the slow answer came')
  t.equal(await readVia(c.recovery.guarded(), oid), 0x22, 'after the slow answer came, c\'s copy still has the last write')
  t.equal(c.recovery.status.healed, 0, 'the heal gave way to the writer\'s repair')
})

t.test('objects larger than one message: a damaged copy heals in pieces, and a copy that missed a write is repaired in pieces', async t => {
  const nodes = await makeNodes(t)
  const [a, c] = [nodes.get('a') as Node, nodes.get('c') as Node]
  const oid = dataOid(1, 0)
  const size = 12 * 2 ** 20 // past MAX_DATA (8 MiB): no ReadAll or Replace carries it whole
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, size)
  const data = Buffer.alloc(size)
  for (let i = 0; i < size; i += 4096) data[i] = (i / 4096) & 0xff
  await writer.write(oid, 0, data)
  await writer.sync([oid])
  damage(c.store, oid, 10 * 2 ** 20 + 5)
  const out = Buffer.alloc(4096)
  await gatewayOn(nodes, 'c').read(oid, 10 * 2 ** 20, 4096, out, 0)
  t.same(out, data.subarray(10 * 2 ** 20, 10 * 2 ** 20 + 4096), 'the damaged chunk is read from another replica')
  t.ok(await until(async () => c.recovery.status.healed === 1, 10_000), 'c heals its 12 MiB copy')
  t.ok((await c.store.readAll(oid)).equals(await a.store.readAll(oid)), 'and holds the replicas\' bytes')

  c.full = true
  await writer.write(oid, 11 * 2 ** 20, Buffer.alloc(4096, 0x77))
  c.full = false
  t.ok(await until(async () => c.recovery.status.missed === 0, 10_000), 'the copy that missed a write is repaired: c takes it in pieces')
  t.ok((await c.store.readAll(oid)).equals(await a.store.readAll(oid)), 'c holds the last write too')
  t.equal((await c.store.stat(oid))?.version, (await a.store.stat(oid))?.version, 'at a\'s version')
})

t.test('a repair from a member that is not another replica of the object is refused, and the copy is left as it is', async t => {
  const nodes = await makeNodes(t)
  const c = nodes.get('c') as Node
  const oid = dataOid(1, 0)
  const writer = gatewayOn(nodes, 'a')
  await writer.create(oid, 4096)
  await writer.write(oid, 0, Buffer.alloc(4096, 0x11))
  for (const source of ['c', 'zz']) {
    const err = await sheepError(async () => await c.recovery.repairCopy(oid, source))
    t.equal(err.code, 'EINVAL', `source ${source}: EINVAL`)
    t.match(err.message, /is not another replica/)
  }
  t.equal(c.recovery.status.missed, 0, 'c\'s copy was not marked')
  t.equal(await readVia(c.recovery.guarded(), oid), 0x11, 'and is served as before')
})
