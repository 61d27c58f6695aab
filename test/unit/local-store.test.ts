// LocalObjectStore on real temporary directories.

import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { FileIo } from '../../src/objects/file-io'
import { LocalObjectStore } from '../../src/objects/local-store'
import { dataOid, inodeOid, metaOid, oidToHex } from '../../src/objects/oid'
import type { ObjectInfo } from '../../src/objects/types'
import { epochFloor, versionEpoch } from '../../src/objects/versions'
import { crashCopy, objectFile, pattern, read } from './store-files'
import { sheepError, tmpDir } from './tmp'

const KiB = 1024
const MiB = 2 ** 20

interface Teardownable { teardown (fn: () => unknown): void }

async function openStore (t: Teardownable, dir: string, opts = {}): Promise<LocalObjectStore> {
  const store = new LocalObjectStore(dir, opts)
  await store.open()
  t.teardown(() => store.close())
  return store
}

async function listAll (store: LocalObjectStore): Promise<ObjectInfo[]> {
  const out: ObjectInfo[] = []
  for await (const info of store.list()) out.push(info)
  return out.sort((a, b) => a.oid < b.oid ? -1 : a.oid > b.oid ? 1 : 0)
}

t.test('open initialises an empty directory, a missing one, and reopens its own', async t => {
  const root = tmpDir(t)
  const dir = path.join(root, 'a', 'b')
  const store = new LocalObjectStore(dir)
  await store.open()
  t.equal(fs.readFileSync(path.join(dir, 'FORMAT'), 'utf8'), 'sheep-store 1\n')
  t.same(await listAll(store), [])
  await store.close()
  await store.close() // twice is harmless
  const again = await openStore(t, dir)
  t.same(await listAll(again), [])
})

t.test('create, read zeros, write, read back', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = dataOid(1, 0)
  await store.create(oid, 4 * MiB)
  t.same(await store.stat(oid), { oid, version: 1, size: 4 * MiB })
  t.ok((await read(store, oid, 0, 4 * MiB)).equals(Buffer.alloc(4 * MiB)), 'a new object reads as zeros')
  const data = pattern(10000, 1)
  await store.write(oid, 12345, data)
  t.ok((await read(store, oid, 12345, data.length)).equals(data))
  t.ok((await read(store, oid, 0, 12345)).equals(Buffer.alloc(12345)), 'zeros before')
  t.ok((await read(store, oid, 12345 + data.length, 5000)).equals(Buffer.alloc(5000)), 'zeros after')
  // Into the middle of a bigger target.
  const target = Buffer.alloc(100, 0xcc)
  await store.read(oid, 12345, 10, target, 50)
  t.ok(target.subarray(0, 50).equals(Buffer.alloc(50, 0xcc)), 'target before targetOffset untouched')
  t.ok(target.subarray(50, 60).equals(data.subarray(0, 10)))
  t.ok(target.subarray(60).equals(Buffer.alloc(40, 0xcc)), 'target after the range untouched')
  const info = await store.stat(oid)
  t.equal(info?.size, 4 * MiB, 'a write inside does not change the size')
  t.equal(info?.version, 2, 'a write bumps the version')
  t.equal(await store.stat(dataOid(1, 1)), null, 'stat of a missing object is null')
})

t.test('zero-length objects and reads', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = metaOid(5)
  await store.create(oid, 0)
  t.equal((await store.readAll(oid)).length, 0)
  await store.read(oid, 0, 0, Buffer.alloc(0), 0)
  t.pass('an empty read of an empty object')
})

t.test('reads past the end are refused', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = dataOid(1, 0)
  await store.create(oid, 100)
  const err = await sheepError(() => read(store, oid, 50, 51))
  t.equal(err.code, 'EINVAL')
  t.match(err.message, oidToHex(oid))
})

t.test('a write past the end grows the object', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = inodeOid(3)
  await store.create(oid, 10)
  await store.write(oid, 100, Buffer.from('hello'))
  t.equal((await store.stat(oid))?.size, 105)
  const all = await store.readAll(oid)
  t.equal(all.length, 105)
  t.ok(all.subarray(0, 100).equals(Buffer.alloc(100)))
  t.equal(all.subarray(100).toString(), 'hello')
})

t.test('a 4 KiB write into a 4 MiB object does not rewrite the object', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = dataOid(7, 3)
  await store.create(oid, 4 * MiB)
  const file = objectFile(dir, oid)
  t.equal(fs.statSync(file).size, 4 * MiB, 'the file has the object size')
  t.ok(fs.statSync(file).blocks * 512 <= 64 * KiB, `a new object is sparse (${fs.statSync(file).blocks * 512} bytes allocated)`)
  const ino = fs.statSync(file).ino
  await store.write(oid, 2 * MiB, pattern(4 * KiB, 2))
  await store.sync([oid])
  const st = fs.statSync(file)
  t.equal(st.ino, ino, 'written in place, not replaced')
  t.equal(st.size, 4 * MiB)
  t.ok(st.blocks * 512 <= 64 * KiB, `after a 4 KiB write only ${st.blocks * 512} bytes are allocated`)
  t.ok((await read(store, oid, 2 * MiB, 4 * KiB)).equals(pattern(4 * KiB, 2)))
})

t.test('EEXIST on double create; ENOENT on missing objects', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = dataOid(1, 1)
  await store.create(oid, 10)
  await store.write(oid, 0, Buffer.from('keep'))
  const dup = await sheepError(() => store.create(oid, 20))
  t.equal(dup.code, 'EEXIST')
  t.match(dup.message, oidToHex(oid))
  t.equal((await store.readAll(oid)).subarray(0, 4).toString(), 'keep', 'a refused create changes nothing')
  t.equal((await store.stat(oid))?.size, 10)

  const missing = dataOid(1, 2)
  for (const [label, op] of [
    ['read', () => read(store, missing, 0, 1)],
    ['write', () => store.write(missing, 0, Buffer.from('x'))],
    ['readAll', () => store.readAll(missing)],
    ['truncate', () => store.truncate(missing, 5)]
  ] as const) {
    const err = await sheepError(op)
    t.equal(err.code, 'ENOENT', `${label} of a missing object`)
    t.match(err.message, oidToHex(missing))
  }
  t.equal(await store.stat(missing), null, 'a failed write did not create it')
  await store.remove(missing)
  t.pass('removing a missing object is not an error')
})

t.test('replace', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = metaOid(1)
  await store.replace(oid, Buffer.from('first version'))
  t.same(await store.stat(oid), { oid, version: 1, size: 13 }, 'replace creates')
  t.equal((await store.readAll(oid)).toString(), 'first version')
  await store.replace(oid, Buffer.from('v2'))
  t.same(await store.stat(oid), { oid, version: 2, size: 2 }, 'shrinks, bumps the version')
  t.equal((await store.readAll(oid)).toString(), 'v2')
  await store.replace(oid, pattern(100000, 3))
  t.ok((await store.readAll(oid)).equals(pattern(100000, 3)), 'grows')
  // Replace an object whose descriptor is cached, then write in place into the new file.
  const d = dataOid(2, 0)
  await store.create(d, 100)
  await store.write(d, 0, Buffer.from('old'))
  await store.replace(d, Buffer.from('new content'))
  t.equal((await store.readAll(d)).toString(), 'new content', 'reads the new file, not the old descriptor')
  await store.write(d, 0, Buffer.from('NEW'))
  t.equal((await store.readAll(d)).toString(), 'NEW content')
  t.equal(fs.readFileSync(objectFile(dir, d)).toString(), 'NEW content', 'the write went to the new file')
  t.notOk(fs.existsSync(objectFile(dir, d) + '.tmp'), 'no temporary file left')
})

t.test('marks of copies found behind and whole copies of them, at once: a mark never puts back a replaced copy\'s record, nor marks a copy that is current', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = dataOid(3, 0)
  await store.writeFresh(oid, 8192, 0, pattern(8192, 1))
  const old = (await store.stat(oid))?.version as number
  // A recovery plan found the copy behind version old + 10; a copy at that version came before the plan marked it.
  const current = old + 10
  await store.replace(oid, pattern(8192, 2), current)
  await store.setMissed([oid], true, new Map([[oid, current]]))
  t.same(await store.stat(oid), { oid, version: current, size: 8192 }, 'the copy is current, and not marked')
  // The mark first, then a replace: the replace clears it, and its record is the one kept.
  await Promise.all([store.setMissed([oid], true), store.replace(oid, pattern(8192, 3), current + 1)])
  t.same(await store.stat(oid), { oid, version: current + 1, size: 8192 }, 'the replace that came after the mark is kept, unmarked')
  await store.setMissed([oid], true, new Map([[oid, current + 5]]))
  t.equal((await store.stat(oid))?.missed, true, 'a copy below the version given is marked')
  await store.close()
  const again = await openStore(t, dir)
  await again.asReplica(() => epochFloor(1), () => 1)
  t.same(await again.stat(oid), { oid, version: current + 1, size: 8192, missed: true }, 'and so it stays across a restart (of a cluster replica, whose marks they are)')
  t.ok((await again.readAll(oid)).equals(pattern(8192, 3)), 'with the bytes of the last replace')
})

t.test('a whole copy at or below the version its object was removed at is refused: a tombstone is not undone by an older copy', async t => {
  const store = await openStore(t, tmpDir(t))
  await store.asReplica(() => epochFloor(1), () => 1)
  const oid = dataOid(4, 0)
  await store.writeFresh(oid, 4096, 0, pattern(4096, 1))
  const copy = (await store.stat(oid))?.version as number
  await store.remove(oid)
  const err = await sheepError(async () => { await store.replace(oid, pattern(4096, 1), copy) })
  t.equal(err.code, 'ENOENT', 'a copy of the version removed is refused')
  t.match(err.message, /removed at version/, 'saying so')
  t.equal(await store.stat(oid), null, 'the object stays removed')
  await store.replace(oid, pattern(4096, 2), copy + 10)
  t.equal((await store.stat(oid))?.version, copy + 10, 'a copy newer than the remove is taken')
})

t.test('readAll of an object with no open descriptor, racing replaces of other sizes, returns one whole version', async t => {
  // One open descriptor at most: every readAll of the object loads it afresh (record, then file).
  const store = await openStore(t, tmpDir(t), { maxOpenFiles: 1 })
  const oid = metaOid(7)
  const other = metaOid(8)
  const versions = [pattern(300, 1), pattern(70000, 2), pattern(5, 3), pattern(40000, 4)]
  await store.replace(other, Buffer.from('evicts'))
  await store.replace(oid, versions[0] as Buffer)
  let torn = 0
  let reads = 0
  for (let round = 0; round < 20; round++) {
    let replaced = false
    const replacing = store.replace(oid, versions[(round + 1) % versions.length] as Buffer).finally(() => { replaced = true })
    // Read it again and again while the replace runs, each time loading it afresh.
    while (!replaced) {
      await store.readAll(other)
      const r = await store.readAll(oid)
      reads++
      if (!versions.some(v => v.equals(r))) torn++
    }
    await replacing
  }
  t.ok(reads >= 20, `${reads} reads while the replaces ran`)
  t.equal(torn, 0, 'no read paired one version\'s size with another\'s bytes')
})

t.test('truncate', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = dataOid(1, 0)
  await store.create(oid, 1000)
  await store.write(oid, 0, Buffer.alloc(1000, 0x5a))
  await store.truncate(oid, 300)
  t.equal((await store.stat(oid))?.size, 300)
  t.equal((await store.readAll(oid)).length, 300)
  t.equal((await sheepError(() => read(store, oid, 0, 301))).code, 'EINVAL')
  await store.truncate(oid, 2000)
  const all = await store.readAll(oid)
  t.equal(all.length, 2000)
  t.ok(all.subarray(0, 300).equals(Buffer.alloc(300, 0x5a)), 'kept bytes stay')
  t.ok(all.subarray(300).equals(Buffer.alloc(1700)), 'bytes past a shrink and grow read as zeros')
  const v = (await store.stat(oid))?.version
  await store.truncate(oid, 2000)
  t.equal((await store.stat(oid))?.version, v, 'same size: no change')
  await store.truncate(oid, 0)
  t.equal((await store.readAll(oid)).length, 0)
})

t.test('remove, list, stat', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oids = [dataOid(1, 0), dataOid(1, 5), inodeOid(1), dataOid(2, 0), inodeOid(2), metaOid(1)]
  for (const [i, oid] of oids.entries()) await store.create(oid, 100 + i)
  await store.write(dataOid(1, 5), 0, Buffer.from('x'))
  const listed = await listAll(store)
  t.same(listed.map(i => i.oid), [...oids].sort((a, b) => a < b ? -1 : 1))
  t.same(listed.find(i => i.oid === dataOid(1, 5)), { oid: dataOid(1, 5), version: 2, size: 101 }, 'list shows current versions')
  for (const [i, oid] of oids.entries()) t.equal((await store.stat(oid))?.size, 100 + i)

  await store.remove(dataOid(1, 0))
  await store.remove(dataOid(1, 5))
  await store.remove(inodeOid(1))
  t.equal(await store.stat(dataOid(1, 0)), null)
  t.notOk(fs.existsSync(objectFile(dir, dataOid(1, 0))), 'file gone')
  t.notOk(fs.existsSync(path.dirname(objectFile(dir, inodeOid(1)))), 'the image folder goes with its inode')
  t.same((await listAll(store)).map(i => i.oid), [dataOid(2, 0), inodeOid(2), metaOid(1)].sort((a, b) => a < b ? -1 : 1))
  // A removed object can be created again, fresh.
  await store.create(dataOid(1, 0), 10)
  t.same(await store.stat(dataOid(1, 0)), { oid: dataOid(1, 0), version: 1, size: 10 })
  t.ok((await store.readAll(dataOid(1, 0))).equals(Buffer.alloc(10)))
})

t.test('sync and usage', async t => {
  const store = await openStore(t, tmpDir(t), { maxOpenFiles: 1 })
  const a = dataOid(1, 0)
  const b = dataOid(1, 1)
  await store.create(a, 100)
  await store.create(b, 100) // evicts a's descriptor
  await store.write(a, 0, Buffer.from('a'))
  await store.write(b, 0, Buffer.from('b'))
  await store.sync([a, b])
  await store.sync([])
  t.pass('sync of open and closed objects')
  const u = await store.usage()
  t.ok(u.capacity > 0, 'capacity')
  t.ok(u.free >= 0 && u.free <= u.capacity, 'free within capacity')
})

t.test('reopen after close keeps contents, versions and sizes', async t => {
  const dir = tmpDir(t)
  const store = new LocalObjectStore(dir)
  await store.open()
  const a = dataOid(9, 0)
  const b = inodeOid(9)
  await store.create(a, 64 * KiB)
  for (let i = 0; i < 5; i++) await store.write(a, i * 100, pattern(100, i)) // versions 2..6, size unchanged
  await store.create(b, 10)
  await store.write(b, 0, pattern(50, 9)) // grows
  await store.truncate(b, 40)
  await store.replace(metaOid(1), Buffer.from('dir'))
  const before = await listAll(store)
  await store.close()
  const err = await sheepError(() => store.stat(a))
  t.equal(err.code, 'ESHUTDOWN', 'a closed store refuses requests')

  const again = await openStore(t, dir)
  t.same(await listAll(again), before, 'same versions and sizes')
  t.same(await again.stat(a), { oid: a, version: 6, size: 64 * KiB })
  const bytes = await again.readAll(a)
  for (let i = 0; i < 5; i++) t.ok(bytes.subarray(i * 100, i * 100 + 100).equals(pattern(100, i)))
  t.ok((await again.readAll(b)).equals(pattern(40, 9)))
  t.equal((await again.readAll(metaOid(1))).toString(), 'dir')
})

t.test('a truncated object file is EIO naming the object', async t => {
  const dir = tmpDir(t)
  const store = new LocalObjectStore(dir)
  await store.open()
  const oid = dataOid(0x42, 7)
  await store.create(oid, 64 * KiB)
  await store.write(oid, 0, pattern(64 * KiB, 4))
  await store.close()
  fs.truncateSync(objectFile(dir, oid), 1000)

  const again = await openStore(t, dir)
  t.equal((await again.stat(oid))?.size, 64 * KiB, 'the index still has the size')
  for (const [label, op] of [
    ['read of the lost part', () => read(again, oid, 32 * KiB, 100)],
    ['read of the kept part', () => read(again, oid, 0, 100)],
    ['readAll', () => again.readAll(oid)],
    ['write', () => again.write(oid, 0, Buffer.from('x'))]
  ] as const) {
    const err = await sheepError(op)
    t.equal(err.code, 'EIO', `${label}: EIO`)
    t.match(err.message, oidToHex(oid), `${label}: names the object`)
    t.match(err.message, /truncated/, `${label}: ${err.message}`)
  }
})

t.test('a missing object file with an index record is EIO', async t => {
  const dir = tmpDir(t)
  const store = new LocalObjectStore(dir)
  await store.open()
  const oid = dataOid(0x43, 1)
  await store.create(oid, 4 * KiB)
  await store.close()
  fs.rmSync(objectFile(dir, oid))
  const again = await openStore(t, dir)
  for (const op of [() => read(again, oid, 0, 10), () => again.readAll(oid), () => again.write(oid, 0, Buffer.from('x'))]) {
    const err = await sheepError(op)
    t.equal(err.code, 'EIO')
    t.match(err.message, oidToHex(oid))
    t.match(err.message, /missing/)
  }
  t.notOk(fs.existsSync(objectFile(dir, oid)), 'a write did not recreate it as zeros')
})

t.test('a second store on the same directory is EBUSY', async t => {
  const dir = tmpDir(t)
  const first = await openStore(t, dir)
  await first.create(dataOid(1, 0), 10)
  const second = new LocalObjectStore(dir)
  const err = await sheepError(() => second.open())
  t.equal(err.code, 'EBUSY')
  t.match(err.message, /in use/)
  t.equal((await first.stat(dataOid(1, 0)))?.size, 10, 'the first store still works')
  await first.close()
  const third = await openStore(t, dir)
  t.equal((await third.stat(dataOid(1, 0)))?.size, 10, 'opens once the first has closed')
})

t.test('a non-empty directory that is not a store is EINVAL', async t => {
  const dir = tmpDir(t)
  fs.writeFileSync(path.join(dir, 'precious.txt'), 'do not touch')
  const err = await sheepError(() => new LocalObjectStore(dir).open())
  t.equal(err.code, 'EINVAL')
  t.match(err.message, /not empty/)
  t.same(fs.readdirSync(dir), ['precious.txt'], 'nothing written into it')

  const dir2 = tmpDir(t)
  fs.writeFileSync(path.join(dir2, 'FORMAT'), 'sheep-store 99\n')
  const err2 = await sheepError(() => new LocalObjectStore(dir2).open())
  t.equal(err2.code, 'EINVAL')
  t.match(err2.message, /unknown store format/)

  const dir3 = tmpDir(t)
  fs.mkdirSync(path.join(dir3, 'lost+found'))
  const ok = await openStore(t, dir3)
  t.same(await listAll(ok), [], 'lost+found alone is allowed')
})

t.test('the descriptor cache with maxOpenFiles: 2, many objects, sequential I/O', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir, { maxOpenFiles: 2 })
  const oids = Array.from({ length: 20 }, (_, i) => dataOid(5, i))
  for (const oid of oids) await store.create(oid, 8 * KiB)
  for (const [i, oid] of oids.entries()) await store.write(oid, 0, pattern(8 * KiB, i))
  for (const [i, oid] of [...oids.entries()].reverse()) t.ok((await store.readAll(oid)).equals(pattern(8 * KiB, i)), `object ${i}`)
  await store.sync(oids)
  const fds = fs.readdirSync('/proc/self/fd').map(fd => { try { return fs.readlinkSync(`/proc/self/fd/${fd}`) } catch { return '' } })
  const open = fds.filter(f => f.startsWith(path.join(dir, 'objects')))
  t.ok(open.length <= 2, `${open.length} object files open`)
})

t.test('the descriptor cache with maxOpenFiles: 2 and concurrent I/O', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir, { maxOpenFiles: 2 })
  const n = 24
  const oids = Array.from({ length: n }, (_, i) => dataOid(6, i))
  await Promise.all(oids.map(oid => store.create(oid, 16 * KiB)))
  // Concurrent writes of 4 KiB pieces into every object, then concurrent reads.
  const writes: Array<Promise<void>> = []
  for (const [i, oid] of oids.entries()) {
    for (let part = 0; part < 4; part++) writes.push(store.write(oid, part * 4 * KiB, pattern(4 * KiB, i * 4 + part)))
  }
  const w = await Promise.allSettled(writes)
  const wfail = w.filter(r => r.status === 'rejected').map(r => String((r as PromiseRejectedResult).reason))
  t.same(wfail.slice(0, 3), [], `every concurrent write succeeds (${wfail.length} of ${writes.length} failed)`)
  const reads = await Promise.allSettled(oids.map(oid => store.readAll(oid)))
  const rfail = reads.filter(r => r.status === 'rejected').map(r => String((r as PromiseRejectedResult).reason))
  t.same(rfail.slice(0, 3), [], `every concurrent read succeeds (${rfail.length} of ${n} failed)`)
  // Whatever happened above, check the bytes through sequential reads and in the files on disk:
  // a failed write leaves zeros, a write through another object's descriptor leaves foreign bytes.
  await store.sync(oids)
  const wrong: string[] = []
  for (const [i, oid] of oids.entries()) {
    const viaStore = await store.readAll(oid)
    const onDisk = fs.readFileSync(objectFile(dir, oid))
    for (let part = 0; part < 4; part++) {
      const want = pattern(4 * KiB, i * 4 + part)
      const range = [part * 4 * KiB, (part + 1) * 4 * KiB] as const
      const got = viaStore.subarray(...range)
      if (!got.equals(want)) wrong.push(`object ${i} part ${part}: ${got.equals(Buffer.alloc(4 * KiB)) ? 'zeros' : 'foreign bytes'}`)
      else if (!onDisk.subarray(...range).equals(want)) wrong.push(`object ${i} part ${part}: file differs`)
    }
  }
  t.same(wrong.slice(0, 5), [], `every object holds its own bytes (${wrong.length} of ${writes.length} pieces wrong)`)
})

t.test('readAll racing replace returns one whole version, never a mix of two', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = metaOid(7)
  const versions = Array.from({ length: 40 }, (_, i) => Buffer.alloc(100 + 37 * i, i + 1))
  await store.replace(oid, versions[0] as Buffer)
  const seen: string[] = []
  const reads: Array<Promise<void>> = []
  for (const v of versions.slice(1)) {
    reads.push(store.readAll(oid).then(b => { if (!versions.some(x => x.equals(b))) seen.push(`${b.length} bytes matching no version`) }))
    await store.replace(oid, v)
  }
  await Promise.all(reads)
  t.same(seen, [], `${reads.length} reads, each a whole version`)
})

t.test('compareAndReplace succeeds only on the expected version', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = metaOid(8)
  t.equal(await store.compareAndReplace(oid, Buffer.from('one'), 0), 1, '0: the object must not exist yet')
  t.equal((await sheepError(async () => await store.compareAndReplace(oid, Buffer.from('x'), 0))).code, 'EAGAIN', 'it exists now')
  t.equal(await store.compareAndReplace(oid, Buffer.from('two'), 1), 2)
  const both = await Promise.allSettled([store.compareAndReplace(oid, Buffer.from('a'), 2), store.compareAndReplace(oid, Buffer.from('b'), 2)])
  t.same(both.map(r => r.status).sort(), ['fulfilled', 'rejected'], 'of two racing on one version, one wins')
  t.ok(['a', 'b'].includes((await store.readAll(oid)).toString()))
  await store.replace(oid, Buffer.from('copy'), 42)
  t.equal((await store.stat(oid))?.version, 42, 'replace can record a given version (a recovery copy keeps its source\'s)')
})

t.test('small I/O on the event loop and through the pool give the same bytes and the same errors', async t => {
  for (const [label, io] of [['inline', {}], ['inline in small pieces', { writePiece: 3000 }], ['pool', { maxInline: 0, maxInlineWrite: 0 }], ['pool after a slow call', { slowMs: -1 }]] as const) {
    const dir = tmpDir(t)
    const store = await openStore(t, dir, { io })
    const oid = dataOid(9, 1)
    await store.create(oid, 1 * MiB)
    const data = pattern(200 * KiB, 3) // more than one call takes: written inline in pieces, or in one piece through the pool
    await store.write(oid, 1000, data)
    await store.write(oid, 5000, pattern(4 * KiB, 4))
    data.set(pattern(4 * KiB, 4), 4000)
    t.ok((await read(store, oid, 1000, data.length)).equals(data), `${label}: large and small writes read back`)
    t.ok((await read(store, oid, 0, 1000)).equals(Buffer.alloc(1000)), `${label}: zeros before`)
    const file = objectFile(dir, oid)
    fs.truncateSync(file, 2000)
    const err = await sheepError(() => read(store, oid, 4096, 4096))
    t.equal(err.code, 'EIO', `${label}: a read past the file's end is EIO`)
    t.match(err.message, /truncated/, `${label}: ${err.message}`)
  }
})

t.test('FileIo: inline while calls are quick, the pool for a while after a slow one', async t => {
  const dir = tmpDir(t)
  const fd = fs.openSync(path.join(dir, 'f'), 'w+')
  t.teardown(() => fs.closeSync(fd))
  // A call counts as slow only past slowMs: a minute, so that a loaded machine cannot make this one slow.
  const quick = new FileIo({ maxInline: 8 * KiB, slowMs: 60_000 })
  t.ok(quick.inline(8 * KiB), 'up to maxInline: inline')
  t.notOk(quick.inline(8 * KiB + 1), 'larger: the pool')
  t.equal(await quick.write(fd, pattern(8 * KiB, 5), 0, 8 * KiB, 0), 8 * KiB)
  t.ok(quick.inline(1), 'a quick call keeps calls inline')

  const slow = new FileIo({ slowMs: -1, poolMs: 30 }) // every inline call counts as slow
  t.ok(slow.inline(1))
  const b = Buffer.alloc(8 * KiB)
  t.equal(await slow.read(fd, b, 0, b.length, 0), 8 * KiB)
  t.ok(b.equals(pattern(8 * KiB, 5)), 'read back what was written')
  t.notOk(slow.inline(1), 'after a slow call: the pool')
  t.equal(await slow.read(fd, b, 0, 10, 0), 10, 'the pool still reads')
  await new Promise(resolve => setTimeout(resolve, 100))
  t.ok(slow.inline(1), 'inline again once poolMs has passed')

  // Errors of inline calls come back as rejections, as the pool's do.
  const ro = fs.openSync(path.join(dir, 'f'), 'r')
  t.teardown(() => fs.closeSync(ro))
  for (const io of [quick, new FileIo({ maxInline: 0 })]) {
    await t.rejects(io.write(ro, Buffer.from('x'), 0, 1, 0), { code: 'EBADF' }, 'a write to a read-only descriptor')
    await t.rejects(io.read(2 ** 31 - 2, b, 0, 1, 0), { code: 'EBADF' }, 'a read of a descriptor that is not open')
  }
})

/** A store opened as a cluster's replica in `epoch` (LocalObjectStore.asReplica). */
async function openReplica (t: Teardownable, dir: string, epoch: number): Promise<LocalObjectStore> {
  const store = await openStore(t, dir)
  await store.asReplica(() => epochFloor(epoch), () => epoch)
  return store
}

t.test('an object grown by concurrent writes and syncs keeps its largest size in the index, even after a crash', async t => {
  // Issue 15: the index records of one object written back to back landed in either order, and
  // an inode's recorded size went back, cutting off owner entries after a kill -9.
  for (let round = 0; round < 50; round++) {
    const dir = tmpDir(t)
    const store = await openStore(t, dir)
    const oid = inodeOid(7)
    await store.create(oid, 64)
    await Promise.all(Array.from({ length: 16 }, async (_, i) => {
      await store.write(oid, 64 + i * 16, pattern(16, i))
      await store.sync([oid])
    }))
    const crashed = await openStore(t, crashCopy(t, dir))
    const size = (await crashed.stat(oid))?.size
    if (size !== 64 + 16 * 16) {
      t.fail(`round ${round}: the index says ${size} bytes after the crash, not ${64 + 16 * 16}`)
      return
    }
    await crashed.close()
    await store.close()
  }
  t.pass('50 rounds of 16 concurrent growing writes and syncs: the index kept the final size each time')
})

t.test('objects set aside keep their bytes out of the store, and a new object of the same id can be made', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = dataOid(3, 9)
  await store.create(oid, 8 * KiB)
  await store.write(oid, 0, pattern(8 * KiB, 1))
  const kept = await store.setAside(oid)
  t.equal(await store.stat(oid), null, 'gone from the index')
  t.ok(fs.readFileSync(kept).equals(pattern(8 * KiB, 1)), 'its bytes are in the strays folder')
  await store.create(oid, 8 * KiB)
  t.ok((await read(store, oid, 0, 8 * KiB)).equals(Buffer.alloc(8 * KiB)), 'the new object reads zeros')
  await store.write(oid, 0, pattern(8 * KiB, 2))
  const again = await store.setAside(oid)
  t.not(again, kept, 'a second stray of the same id gets a name of its own')
  t.same(await store.strays(), { dir: path.dirname(kept), objects: 2, bytes: (await store.strays()).bytes }, 'both are counted')
  t.ok((await store.strays()).bytes >= 16 * KiB, 'and their bytes')
})

t.test('an unreadable index record is reported and skipped by listings, never fatal', async t => {
  const dir = tmpDir(t)
  let store = await openStore(t, dir)
  await store.create(dataOid(1, 1), 4 * KiB)
  await store.create(dataOid(1, 2), 4 * KiB)
  await store.close()
  const { ClassicLevel } = await import('classic-level')
  const db = new ClassicLevel<string, Buffer>(path.join(dir, 'index'), { keyEncoding: 'utf8', valueEncoding: 'buffer' })
  await db.put(oidToHex(dataOid(1, 2)), Buffer.from([9, 9, 9]))
  await db.close()
  store = await openStore(t, dir)
  t.same((await listAll(store)).map(i => i.oid), [dataOid(1, 1)], 'the readable record is listed')
  t.match(store.problems(), [new RegExp(`store index record "${oidToHex(dataOid(1, 2))}" is unreadable`)], 'the other is reported')
  t.ok(fs.existsSync(objectFile(dir, dataOid(1, 2))), 'its object file is left alone')
})

t.test('a size an object grew to is recorded once its file is synced; a longer file is cut to its record when loaded', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = inodeOid(8)
  await store.create(oid, 64)
  await store.write(oid, 64, pattern(64, 1))
  t.equal((await store.stat(oid))?.size, 128, 'the store reads the grown size at once')
  let crashed = await openStore(t, crashCopy(t, dir))
  t.equal((await crashed.stat(oid))?.size, 64, 'before a sync the index still has the old size (the file may not hold more after a power cut)')
  t.equal((await crashed.readAll(oid)).length, 64, 'and the object loads at that size')
  t.equal(fs.statSync(objectFile(crashed.dir, oid)).size, 64, 'its file was cut to it: a later growth reads zeros there, not these bytes')
  await crashed.close()
  await store.sync([oid])
  crashed = await openStore(t, crashCopy(t, dir))
  t.ok((await crashed.readAll(oid)).subarray(64).equals(pattern(64, 1)), 'after the sync the grown bytes are part of it')
})

t.test('versions: every change made in an epoch orders above every version of an earlier epoch', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  let epoch = 0
  await store.asReplica(() => epochFloor(epoch), () => epoch)
  const oid = dataOid(7, 0)
  const other = dataOid(7, 1)
  await store.create(oid, 4096)
  await store.create(other, 4096)
  for (let i = 0; i < 150; i++) await store.write(oid, 0, pattern(512, i))
  const counted = (await store.stat(oid))?.version as number
  t.equal(counted, 151, 'in epoch 0 (one host) a version counts changes')
  epoch = 5
  await store.write(other, 0, pattern(512, 1))
  const later = (await store.stat(other))?.version as number
  t.ok(later > counted, `one write in epoch 5 (${later}) is newer than 151 writes before it (${counted})`)
  t.equal(versionEpoch(later), 5)
  await store.truncate(oid, 1024)
  t.equal(versionEpoch((await store.stat(oid))?.version as number), 5, 'a truncate moves the version into the epoch too')
  await store.write(other, 0, pattern(512, 2))
  t.equal((await store.stat(other))?.version, later + 1, 'within an epoch changes count on')
  const meta = metaOid(0)
  const v1 = await store.compareAndReplace(meta, Buffer.from('a'), 0)
  t.equal(v1, (await store.stat(meta))?.version, 'compare-and-replace answers the version it recorded')
  t.equal(versionEpoch(v1), 5)
  epoch = 6
  const v2 = await store.compareAndReplace(meta, Buffer.from('b'), v1)
  t.equal(versionEpoch(v2), 6)
  t.equal(v2, (await store.stat(meta))?.version)
  await store.close()
  const again = await openStore(t, dir)
  t.equal((await again.stat(other))?.version, later + 1, 'versions survive a reopen')
  t.throws(() => epochFloor(2 ** 21), { code: 'EFBIG' }, 'an epoch versions cannot order is refused, not rounded')
})

t.test('a replica marks a record dirty before its file changes: a crash leaves the copy uncertain, a sync or a settle makes it certain', async t => {
  const dir = tmpDir(t)
  const store = await openReplica(t, dir, 3)
  const oid = dataOid(9, 0)
  await store.create(oid, 4096)
  await store.sync([oid])
  const clean = await openReplica(t, crashCopy(t, dir), 4)
  t.notOk((await clean.stat(oid))?.uncertain, 'created and synced: certain')
  await clean.close()
  // Written, not synced: the bytes changed and the version the record gives does not say so.
  await store.write(oid, 0, pattern(512, 1))
  const crashed = await openReplica(t, crashCopy(t, dir), 4)
  const info = await crashed.stat(oid)
  t.equal(info?.uncertain, true, 'written since its last sync: uncertain after the crash')
  t.same((await listAll(crashed)).map(i => i.uncertain), [true], 'and listed so')
  await crashed.settle(oid)
  const settled = await crashed.stat(oid)
  t.notOk(settled?.uncertain, 'settled: certain')
  t.equal(versionEpoch(settled?.version as number), 4, 'with a version of the epoch it was settled in, above every copy of before')
  await crashed.close()
  // A sync with no write in flight records the version the bytes have, and a clean record.
  await store.sync([oid])
  const synced = await openReplica(t, crashCopy(t, dir), 4)
  t.notOk((await synced.stat(oid))?.uncertain, 'synced after the write: certain again')
  await synced.close()
  // A truncate changes the file too; a store that is no replica marks nothing.
  await store.truncate(oid, 1024)
  const cut = await openReplica(t, crashCopy(t, dir), 4)
  t.equal((await cut.stat(oid))?.uncertain, true, 'truncated since the last sync: uncertain')
  await cut.close()
  await store.close()
  const plain = await openStore(t, tmpDir(t))
  await plain.create(oid, 4096)
  await plain.write(oid, 0, pattern(512, 2))
  t.notOk((await plain.stat(oid))?.uncertain, 'one host: no marks, nothing uncertain')
})

t.test('a replica\'s create is uncertain until a sync; a crash between its record and its file leaves a tombstone below it, not a copy that cannot be read', async t => {
  const dir = tmpDir(t)
  const store = await openReplica(t, dir, 3)
  const oid = dataOid(9, 1)
  await store.create(oid, 4096)
  const created = await store.stat(oid)
  const whole = await openReplica(t, crashCopy(t, dir), 4)
  t.equal((await whole.stat(oid))?.uncertain, true, 'created, not synced: uncertain after a crash')
  await whole.close()
  // As if the crash came after the record and before the file.
  const cut = crashCopy(t, dir)
  fs.rmSync(objectFile(cut, oid))
  const torn = await openReplica(t, cut, 4)
  t.equal(await torn.stat(oid), null, 'record without a file: no copy')
  t.same((await listAll(torn)).map(i => ({ version: i.version, removed: i.removed })), [{ version: (created?.version as number) - 1, removed: true }], 'listed as a tombstone just below the create\'s version')
  await torn.create(oid, 4096)
  t.ok(((await torn.stat(oid))?.version as number) > (created?.version as number) - 1, 'a create goes above it again')
  await torn.close()
  await store.sync([oid])
  const synced = await openReplica(t, crashCopy(t, dir), 4)
  t.notOk((await synced.stat(oid))?.uncertain, 'synced: certain')
  await synced.close()
  await store.close()
})

t.test('writeFresh makes a new object with its first bytes, or empties one a dead writer left around them', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = dataOid(4, 2)
  await store.writeFresh(oid, 8192, 1024, pattern(512, 1))
  const expect = Buffer.alloc(8192)
  pattern(512, 1).copy(expect, 1024)
  t.ok((await store.readAll(oid)).equals(expect), 'absent: created, zeros around the bytes')
  await store.write(oid, 4096, pattern(4096, 2))
  await store.truncate(oid, 6000)
  await store.writeFresh(oid, 8192, 0, pattern(100, 3))
  const fresh = Buffer.alloc(8192)
  pattern(100, 3).copy(fresh, 0)
  t.ok((await store.readAll(oid)).equals(fresh), 'present: nothing of what was there before shows, at the size given')
  await store.sync([oid])
  const reopened = await openStore(t, crashCopy(t, store.dir))
  t.ok((await reopened.readAll(oid)).equals(fresh), 'and so after a sync and a crash')
  await reopened.close()
  await store.close()
})

t.test('a copy marked missed says so in its record across a crash, and through writes; a replace or a remove clears it', async t => {
  const dir = tmpDir(t)
  const store = await openReplica(t, dir, 3)
  const oid = dataOid(9, 3)
  await store.create(oid, 4096)
  await store.setMissed([oid], true)
  t.equal((await store.stat(oid))?.missed, true, 'marked')
  await store.write(oid, 0, pattern(100, 1))
  await store.sync([oid])
  const crashed = await openReplica(t, crashCopy(t, dir), 4)
  t.same((await listAll(crashed)).map(i => i.missed), [true], 'still marked after a write, a sync and a crash')
  await crashed.replace(oid, pattern(4096, 2), 9)
  t.notOk((await crashed.stat(oid))?.missed, 'a replace by a current copy clears it')
  await crashed.setMissed([oid], true)
  await crashed.remove(oid)
  await crashed.create(oid, 4096)
  t.notOk((await crashed.stat(oid))?.missed, 'so does a remove')
  await crashed.close()
  await store.close()
})

t.test('a replica keeps a tombstone of what it removed, above the copy\'s version; a re-create goes above it; one host keeps none', async t => {
  const dir = tmpDir(t)
  const store = await openReplica(t, dir, 3)
  const oid = dataOid(9, 0)
  const never = dataOid(9, 1)
  await store.create(oid, 4096)
  await store.write(oid, 0, pattern(512, 1))
  const before = (await store.stat(oid))?.version as number
  await store.remove(oid)
  await store.remove(never)
  t.equal(await store.stat(oid), null, 'removed: stat finds nothing')
  t.equal((await sheepError(async () => await store.readAll(oid))).code, 'ENOENT', 'nor does a read')
  const listed = await listAll(store)
  t.same(listed.map(i => ({ oid: i.oid, removed: i.removed })), [{ oid, removed: true }, { oid: never, removed: true }], 'both listed as tombstones (one of an object it never held)')
  t.ok((listed[0]?.version as number) > before, 'the tombstone is newer than the copy it removed')
  t.same((await store.allocatedBytes()).objects, 0, 'and counts for no object')
  await store.close()
  const reopened = await openReplica(t, dir, 3)
  t.equal((await listAll(reopened)).filter(i => i.removed === true).length, 2, 'tombstones survive a reopen')
  await reopened.create(oid, 4096)
  const again = await reopened.stat(oid)
  t.ok((again?.version as number) > (listed[0]?.version as number), 'a re-create is newer than the tombstone')
  t.notOk(again?.removed)
  await reopened.dropTombstone(never, 0)
  t.equal((await listAll(reopened)).length, 2, 'a tombstone newer than the version given stays')
  await reopened.dropTombstone(never, listed[1]?.version as number)
  await reopened.dropTombstone(oid, Number.MAX_SAFE_INTEGER)
  t.same((await listAll(reopened)).map(i => ({ oid: i.oid, removed: i.removed })), [{ oid, removed: undefined }], 'dropped once seen; a live object is never dropped that way')
  const plain = await openStore(t, tmpDir(t))
  await plain.create(oid, 4096)
  await plain.remove(oid)
  t.same(await listAll(plain), [], 'one host: nothing kept')
})

t.test('index records of format 1 still load, as clean', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = dataOid(3, 1)
  await store.create(oid, 100)
  await store.close()
  const { ClassicLevel } = await import('classic-level')
  const db = new ClassicLevel<string, Buffer>(path.join(dir, 'index'), { keyEncoding: 'utf8', valueEncoding: 'buffer' })
  await db.put(oidToHex(oid), Buffer.from([1, 7, 100]))
  await db.close()
  const again = await openStore(t, dir)
  await again.asReplica(() => 0, () => 0)
  t.same(await again.stat(oid), { oid, version: 7, size: 100 })
})

t.test('a whole-object replace is sparse: chunks of zeros stay holes, and read back as zeros', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = dataOid(5, 0)
  const data = Buffer.alloc(4 * MiB)
  pattern(8 * KiB, 3).copy(data, 2 * MiB + 100)
  data[4 * MiB - 1] = 7
  await store.replace(oid, data)
  const blocks = fs.statSync(objectFile(dir, oid)).blocks * 512
  t.ok(blocks <= 64 * KiB, `4 MiB with 12 KiB of data allocates ${blocks} bytes`)
  t.same(await store.readAll(oid), data, 'and reads back whole')
})

t.test('a sync of objects whose copies went since they were written (dropped, removed) syncs nothing of them; a file gone under a live record is EIO', async t => {
  const dir = tmpDir(t)
  let store = await openReplica(t, dir, 3)
  const [dropped, removed, lost] = [dataOid(6, 0), dataOid(6, 1), dataOid(6, 2)]
  for (const oid of [dropped, removed, lost]) {
    await store.create(oid, 64 * KiB)
    await store.write(oid, 0, pattern(64 * KiB, 6))
  }
  await store.sync([lost])
  await store.drop(dropped)
  await store.remove(removed)
  await store.sync([dropped, removed])
  t.pass('a writer\'s sync of a copy placement moved away (recovery dropped it) or removed succeeds here: before, ENOENT, which its host took for "the image was deleted"')
  await store.close()
  store = await openReplica(t, dir, 3)
  fs.rmSync(objectFile(dir, lost))
  const err = await sheepError(() => store.sync([lost]))
  t.equal(err.code, 'EIO', 'a file gone under its record: EIO')
  t.match(err.message, /missing from the store/)
})

t.test('a read that takes an object just as a replace finds it idle reads one file with that file\'s checksums', async t => {
  const store = await openStore(t, tmpDir(t))
  const oid = dataOid(1, 0)
  await store.create(oid, 8192)
  await store.write(oid, 0, Buffer.alloc(8192, 1))
  await store.sync([oid])
  // Internals, to hold a read in the file and to see the replace waiting for it.
  const inside = store as unknown as { io: { read: FileIo['read'] }, entries: Map<bigint, { idle?: () => void }> }
  const read = inside.io.read.bind(inside.io)
  const failures: string[] = []
  // The second read comes that many microtasks after the first one ends: one of them lands
  // between the first read's release and the replace's continuation.
  for (let ticks = 0; ticks < 16; ticks++) {
    let hold = true
    let release = (): void => {}
    const gate = new Promise<void>(resolve => { release = resolve })
    inside.io.read = async (...args: Parameters<FileIo['read']>) => {
      if (hold) { hold = false; await gate }
      return await read(...args)
    }
    const first = store.read(oid, 0, 8192, Buffer.alloc(8192), 0)
    const replaced = store.replace(oid, Buffer.alloc(8192, ticks + 2))
    while (inside.entries.get(oid)?.idle === undefined) await new Promise(resolve => setTimeout(resolve, 1))
    release()
    for (let i = 0; i < ticks; i++) await null
    const target = Buffer.alloc(8192)
    const second = await store.read(oid, 0, 8192, target, 0).then(() => null, (e: unknown) => e as Error)
    await first
    await replaced
    if (second !== null) failures.push(`after ${ticks} microtasks: ${second.message}`)
    else if (!target.every(b => b === target[0])) failures.push(`after ${ticks} microtasks: bytes of two files`)
  }
  inside.io.read = read
  t.same(failures, [], 'every read is whole and matches its checksums')
})

t.test('close waits for the calls under way before it closes their descriptors', async t => {
  const store = new LocalObjectStore(tmpDir(t))
  await store.open()
  const oid = dataOid(1, 0)
  await store.create(oid, 8192)
  const inside = store as unknown as { io: { write: FileIo['write'] } }
  const write = inside.io.write.bind(inside.io)
  let release = (): void => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  let inFile = (): void => {}
  const reached = new Promise<void>(resolve => { inFile = resolve })
  inside.io.write = async (...args: Parameters<FileIo['write']>) => { inFile(); await gate; return await write(...args) }
  const writing = store.write(oid, 0, Buffer.alloc(8192, 7))
  await reached
  let closed = false
  const closing = store.close().then(() => { closed = true }, () => { closed = true })
  // Without the wait, close is over in a few milliseconds; with it, it cannot be before the release.
  await new Promise(resolve => setTimeout(resolve, 500))
  t.notOk(closed, 'close waits while a write is on its way to the file')
  release()
  await writing
  await closing
  t.pass('the write ended on its own descriptor, then the store closed')
})
