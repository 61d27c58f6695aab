// The background scrub (src/objects/scrub.ts) over a real LocalObjectStore: it finds a damaged
// object and says whose image it is, keeps to its rate, and remembers its last pass.

import t from 'tap'
import fs from 'node:fs'
import { SheepError } from '../../src/errors'
import { LocalObjectStore } from '../../src/objects/local-store'
import { dataOid, inodeOid, type ObjectId, oidToHex } from '../../src/objects/oid'
import { Scrubber } from '../../src/objects/scrub'
import { objectFile } from './store-files'
import { tmpDir } from './tmp'

const KiB = 1024

async function filled (t: { teardown: (fn: () => unknown) => void }, objects: ObjectId[], size: number): Promise<LocalObjectStore> {
  const store = new LocalObjectStore(tmpDir(t))
  await store.open()
  t.teardown(async () => await store.close())
  for (const [i, oid] of objects.entries()) {
    await store.create(oid, size)
    await store.write(oid, 0, Buffer.alloc(size, i + 1))
  }
  await store.sync(objects)
  return store
}

async function until (what: () => boolean, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end && !what();) await new Promise(resolve => setTimeout(resolve, 10))
  return what()
}

t.test('a pass finds the damaged object, counts it against its image, and remembers when it ended', async t => {
  const objects = [dataOid(1, 0), dataOid(1, 1), inodeOid(1), dataOid(2, 0), dataOid(2, 1), inodeOid(2)]
  const store = await filled(t, objects, 64 * KiB)
  const bad = dataOid(2, 1)
  const fd = fs.openSync(objectFile(store.dir, bad), 'r+')
  fs.writeSync(fd, Buffer.alloc(8, 0xee), 0, 8, 5000)
  fs.closeSync(fd)
  const damaged: string[] = []
  const scrub = new Scrubber(store, { rate: 64 * 2 ** 20, interval: 3600, damaged: async (oid, err) => { damaged.push(`${oidToHex(oid)} ${err.code}`) }, log: () => {} })
  t.teardown(() => scrub.stop())
  scrub.start()
  t.ok(await until(() => scrub.status.lastPassAt !== null, 10_000), 'the first pass runs at start and ends')
  t.same(damaged, [`${oidToHex(bad)} EIO`], 'it found the damaged object, and only it')
  const s = scrub.status
  t.equal(s.checked, objects.length, 'every object checked')
  t.equal(s.lastPassFound, 1)
  t.same(s.images.get(1), { checkedAt: s.images.get(1)?.checkedAt, found: 0 }, 'image 1: whole')
  t.equal(s.images.get(2)?.found, 1, 'image 2: one damaged (its inode, walked later, does not reset it)')
  const again = new Scrubber(store, { rate: 64 * 2 ** 20, interval: 3600, damaged: async () => { throw new SheepError('EIO', 'not expected') }, log: () => {} })
  t.equal(again.status.lastPassAt, s.lastPassAt, 'a restart knows when the last pass ended (the next is due an interval later)')
})

t.test('a pass keeps to its rate: 1 MiB at 2 MiB/s takes half a second at least', async t => {
  const objects = Array.from({ length: 4 }, (_, i) => dataOid(3, i))
  const store = await filled(t, objects, 256 * KiB)
  const scrub = new Scrubber(store, { rate: 2 * 2 ** 20, interval: 3600, damaged: async () => {}, log: () => {} })
  t.teardown(() => scrub.stop())
  const started = Date.now()
  scrub.start()
  t.ok(await until(() => scrub.status.lastPassAt !== null, 10_000))
  const took = Date.now() - started
  t.ok(took >= 450, `took ${took} ms`)
  t.equal(scrub.status.bytes, 1024 * KiB)
})

t.test('a pass over more objects than one page of the index checks every one of them once', async t => {
  const objects = Array.from({ length: 1005 }, (_, i) => dataOid(4, i))
  const store = await filled(t, objects, 4 * KiB)
  const scrub = new Scrubber(store, { rate: 2 ** 30, interval: 3600, damaged: async () => {}, log: () => {} })
  t.teardown(() => scrub.stop())
  scrub.start()
  t.ok(await until(() => scrub.status.lastPassAt !== null, 30_000))
  t.equal(scrub.status.checked, 1005)
})
