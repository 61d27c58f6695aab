// Chunk checksums (src/objects/checksums.ts) and how LocalObjectStore keeps and checks them: a
// disk's change to an object's bytes is found on read, and no sequence of the store's own calls,
// crashes included, makes a read fail that should not.

import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'
import { Catalog } from '../../src/objects/catalog'
import { CHUNK, chunkSum, combineChunk, crc32, ObjectSums, ZERO_SUM } from '../../src/objects/checksums'
import { LocalObjectStore, type LocalStoreOptions } from '../../src/objects/local-store'
import { dataOid, type ObjectId, oidToHex } from '../../src/objects/oid'
import { Rng } from '../helpers/random'
import { crashCopy, objectFile, pattern, read } from './store-files'
import { sheepError, tmpDir } from './tmp'

const KiB = 1024

interface Teardownable { teardown (fn: () => unknown): void }

async function openStore (t: Teardownable, dir: string, opts: LocalStoreOptions = {}): Promise<LocalObjectStore> {
  const store = new LocalObjectStore(dir, { bootId: 'boot-1', ...opts })
  await store.open()
  t.teardown(() => store.close())
  return store
}

/** Changes bytes of an object's file behind the store's back, as a failing disk would. */
function damage (dir: string, oid: ObjectId, offset: number, length = 16): void {
  const fd = fs.openSync(objectFile(dir, oid), 'r+')
  try {
    const b = Buffer.alloc(length)
    fs.readSync(fd, b, 0, length, offset)
    for (let i = 0; i < length; i++) b[i] = (b[i] as number) ^ 0x5a
    fs.writeSync(fd, b, 0, length, offset)
  } finally {
    fs.closeSync(fd)
  }
}

t.test('a chunk\'s checksum counts the bytes past an object\'s end as zeros; checksums survive their encoding', async t => {
  const short = pattern(100, 1)
  const padded = Buffer.alloc(CHUNK)
  short.copy(padded)
  t.equal(chunkSum(short), chunkSum(padded), 'a short last chunk sums as the whole chunk with zeros after it')
  t.equal(chunkSum(new Uint8Array(0)), ZERO_SUM)
  const data = pattern(3 * CHUNK + 10, 2)
  const sums = ObjectSums.of(data)
  t.same(sums.mismatches(0, data), [])
  const again = ObjectSums.decode(sums.encode(data.length))
  t.same(again.mismatches(0, data), [], 'decoded, they match the same bytes')
  t.equal(again.get(10), ZERO_SUM, 'chunks past the object are zero chunks')
  const bent = Buffer.from(data)
  bent[CHUNK + 5] = (bent[CHUNK + 5] as number) ^ 1
  t.same(sums.mismatches(0, bent), [1], 'one flipped bit: its chunk')
  sums.cut(1)
  t.equal(sums.get(2), ZERO_SUM, 'a cut forgets the chunks from there')
  t.throws(() => ObjectSums.decode(new Uint8Array(7)))
  const bytes = pattern(10_000, 9)
  t.equal(crc32(bytes), zlib.crc32(bytes), 'the CRC-32 in use gives zlib\'s values (its fallback, and the store\'s format)')
  t.equal(crc32(bytes.subarray(5000), crc32(bytes.subarray(0, 5000))), zlib.crc32(bytes), 'continued from an initial value too')
})

t.test('a read checks its whole chunks with one CRC against their checksums combined, and still names each damaged chunk', async t => {
  const rng = new Rng(0x5eed)
  for (const n of [2, 3, 17, 256]) {
    const data = pattern(n * CHUNK, n)
    let combined = crc32(data.subarray(0, CHUNK))
    for (let k = 1; k < n; k++) combined = combineChunk(combined, crc32(data.subarray(k * CHUNK, (k + 1) * CHUNK)))
    t.equal(combined, crc32(data), `${n} chunks: their checksums combined are the CRC of all of them`)
  }
  const data = pattern(64 * CHUNK + 1000, 7)
  const sums = ObjectSums.of(data)
  t.same(sums.mismatches(0, data), [], 'whole chunks and a short last one: all match')
  t.same(sums.mismatches(5, data.subarray(5 * CHUNK)), [], 'from a later chunk too')
  for (let round = 0; round < 20; round++) {
    const bent = Buffer.from(data)
    const chunks = [...new Set(Array.from({ length: rng.int(1, 4) }, () => rng.int(0, 64)))].sort((a, b) => a - b)
    for (const c of chunks) {
      const at = c * CHUNK + rng.int(0, c === 64 ? 999 : CHUNK - 1)
      bent[at] = (bent[at] as number) ^ (1 << rng.int(0, 7))
    }
    t.same(sums.mismatches(0, bent), chunks, `damage in chunks ${chunks.join(', ')}: exactly those named`)
  }
})

t.test('bytes a disk changed are EIO on read, through a restart too; the rest of the object reads', async t => {
  const dir = tmpDir(t)
  let store = await openStore(t, dir)
  const oid = dataOid(7, 3)
  const data = pattern(1024 * KiB, 3)
  await store.create(oid, data.length)
  await store.write(oid, 0, data)
  await store.sync([oid])
  t.same(await read(store, oid, 0, data.length), data, 'clean: reads back')

  damage(dir, oid, 300_000)
  const err = await sheepError(() => read(store, oid, 299_000, 8 * KiB))
  t.equal(err.code, 'EIO', 'a read over the damage is EIO')
  t.match(err.message, new RegExp(`object ${oidToHex(oid)}: the 4 KiB at byte ${Math.floor(300_000 / CHUNK) * CHUNK} do not match their checksums`), 'naming the object and the chunk')
  t.equal((await sheepError(() => read(store, oid, 300_010, 2))).code, 'EIO', 'so is a 2-byte read inside the damaged chunk')
  t.equal((await sheepError(() => store.readAll(oid))).code, 'EIO', 'and a whole-object read')
  t.same(await read(store, oid, 0, 290_000), data.subarray(0, 290_000), 'the chunks before it read')
  t.same(await read(store, oid, 310_000, 1000), data.subarray(310_000, 311_000), 'and those after it')
  const status = store.checksumStatus()
  t.equal(status.mismatches, 3)
  t.equal(status.recent[0]?.offset, Math.floor(300_000 / CHUNK) * CHUNK, 'the damaged chunk is named')

  await store.close()
  store = await openStore(t, dir)
  t.equal((await sheepError(() => read(store, oid, 299_000, 8 * KiB))).code, 'EIO', 'after a clean restart the checksums come from the index')
  await store.write(oid, Math.floor(300_000 / CHUNK) * CHUNK, Buffer.alloc(CHUNK, 1))
  const whole = await store.readAll(oid)
  const at = Math.floor(300_000 / CHUNK) * CHUNK
  t.ok(whole.subarray(at, at + CHUNK).equals(Buffer.alloc(CHUNK, 1)), 'rewriting the chunk whole mends it')
})

t.test('a process crash: chunks written since the last sync get their checksums from the file, the others are still checked', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const written = dataOid(1, 0)
  const quiet = dataOid(1, 1)
  for (const oid of [written, quiet]) {
    await store.create(oid, 256 * KiB)
    await store.write(oid, 0, pattern(256 * KiB, 1))
  }
  await store.sync([written, quiet])
  // After the sync: writes the index's checksums do not know of, at the moment of the crash.
  await store.write(written, 5000, pattern(10_000, 9))
  await store.write(written, 64 * KiB, pattern(CHUNK, 8))
  const copy = crashCopy(t, dir)
  damage(copy, quiet, 100_000)
  const crashed = await openStore(t, copy)
  const want = pattern(256 * KiB, 1)
  pattern(10_000, 9).copy(want, 5000)
  pattern(CHUNK, 8).copy(want, 64 * KiB)
  t.same(await crashed.readAll(written), want, 'the object written at the crash reads as written, with no EIO')
  t.equal((await sheepError(() => crashed.readAll(quiet))).code, 'EIO', 'one synced before is still checked')
  t.equal(crashed.checksumStatus().rebuilt, 1, 'only the written one was summed anew')
})

t.test('a crash of the machine (another boot, the store not closed): every object is summed anew from its bytes', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = dataOid(2, 0)
  await store.create(oid, 64 * KiB)
  await store.write(oid, 0, pattern(64 * KiB, 4))
  await store.sync([oid])
  // A power cut can keep a write's bytes and lose its dirty mark: bytes the checksums do not know.
  const copy = crashCopy(t, dir)
  damage(copy, oid, 1000)
  const sameBoot = crashCopy(t, copy)
  const lines: string[] = []
  const rebooted = await openStore(t, copy, { bootId: 'boot-2', log: l => lines.push(l) })
  const got = await rebooted.readAll(oid)
  t.equal(got.length, 64 * KiB, 'after a reboot: no EIO')
  t.match(lines.join('\n'), /the machine stopped with the store open/, 'and the store says why it cannot check them')
  await rebooted.close()
  const again = await openStore(t, copy, { bootId: 'boot-3' })
  t.same(await again.readAll(oid), got, 'closed cleanly since: the new checksums hold')
  await again.close()
  damage(copy, oid, 20_000)
  const checked = await openStore(t, copy, { bootId: 'boot-4' })
  t.equal((await sheepError(() => checked.readAll(oid))).code, 'EIO', 'a later change by the disk is found again')
  const process = await openStore(t, sameBoot, { bootId: 'boot-1' })
  t.equal((await sheepError(() => process.readAll(oid))).code, 'EIO', 'the same boot (a process crash) checks as before')
})

t.test('a store without checksums (from before them) gets them from its objects\' bytes', async t => {
  const dir = tmpDir(t)
  let store = await openStore(t, dir)
  const oid = dataOid(3, 0)
  await store.create(oid, 64 * KiB)
  await store.write(oid, 100, pattern(50_000, 5))
  await store.close()
  const catalog = new Catalog(path.join(dir, 'index'))
  await catalog.open()
  await catalog.delSums(oid)
  await catalog.close()
  store = await openStore(t, dir)
  const want = Buffer.alloc(64 * KiB)
  pattern(50_000, 5).copy(want, 100)
  t.same(await store.readAll(oid), want)
  t.equal(store.checksumStatus().rebuilt, 1)
  await store.close()
  damage(dir, oid, 200)
  store = await openStore(t, dir)
  t.equal((await sheepError(() => store.readAll(oid))).code, 'EIO', 'and checks them from then on')
})

t.test('writes of one object side by side into different chunks (a guest\'s queue) take their checksums from their data, not by reading the file back', async t => {
  const dir = tmpDir(t)
  const store = await openStore(t, dir)
  const oid = dataOid(1, 0)
  await store.create(oid, 4096 * KiB)
  const readSync = fs.readSync
  let readBack = 0
  fs.readSync = ((...args: Parameters<typeof fs.readSync>) => { readBack++; return readSync(...args) }) as typeof fs.readSync
  try {
    await Promise.all([0, 1, 2, 3].map(async i => { await store.write(oid, i * 1024 * KiB, pattern(1024 * KiB, i + 1)) }))
  } finally {
    fs.readSync = readSync
  }
  t.equal(readBack, 0, 'no chunk read back (before: their chunks were read back from the file once none was under way)')
  t.same(await store.readAll(oid), Buffer.concat([0, 1, 2, 3].map(i => pattern(1024 * KiB, i + 1))), 'every chunk reads against its checksum')
  damage(dir, oid, 3000 * KiB)
  t.equal((await sheepError(async () => await read(store, oid, 3000 * KiB, 4 * KiB))).code, 'EIO', 'and damage is still found')
})

t.test('seeded: writes (aligned or not, concurrent into shared chunks), truncates, replaces, syncs, restarts and crashes never fail a read, and reads match a model', async t => {
  const seed = Number(process.env.SHEEP_TEST_SEED ?? '') || Math.floor(Math.random() * 2 ** 31)
  t.comment(`seed ${seed} (SHEEP_TEST_SEED replays it)`)
  const rng = new Rng(seed)
  const below = (n: number): number => rng.int(0, n - 1)
  let dir = tmpDir(t)
  // The thread pool for every I/O: writes into one object run at once and end in any order.
  const opts: LocalStoreOptions = { io: { maxInline: below(2) === 0 ? 0 : 128 * KiB, maxInlineWrite: 0 } }
  let store = await openStore(t, dir, opts)
  const oids = [dataOid(9, 0), dataOid(9, 1), dataOid(9, 2)]
  const model = new Map<ObjectId, Buffer>()
  const MAX = 96 * KiB
  for (let step = 0; step < 400; step++) {
    const oid = oids[below(oids.length)] as ObjectId
    const cur = model.get(oid)
    const what = below(100)
    if (cur === undefined) {
      const size = below(MAX)
      await store.create(oid, size)
      model.set(oid, Buffer.alloc(size))
    } else if (what < 45) {
      // Several writes at once into disjoint ranges that may share chunks.
      const n = 1 + below(4)
      let at = below(Math.max(1, cur.length))
      const writes: Array<{ offset: number, data: Buffer }> = []
      for (let i = 0; i < n && at < MAX; i++) {
        const len = 1 + below(below(2) === 0 ? 600 : 3 * CHUNK)
        const data = pattern(Math.min(len, MAX - at), step * 8 + i)
        writes.push({ offset: at, data })
        at += data.length + below(300)
      }
      await Promise.all(writes.map(async w => await store.write(oid, w.offset, w.data)))
      let next = cur
      for (const w of writes) {
        if (w.offset + w.data.length > next.length) next = Buffer.concat([next, Buffer.alloc(w.offset + w.data.length - next.length)])
        w.data.copy(next, w.offset)
      }
      model.set(oid, next)
    } else if (what < 60) {
      const size = below(MAX)
      await store.truncate(oid, size)
      model.set(oid, size <= cur.length ? Buffer.from(cur.subarray(0, size)) : Buffer.concat([cur, Buffer.alloc(size - cur.length)]))
    } else if (what < 65) {
      const data = pattern(below(MAX), step)
      await store.replace(oid, data)
      model.set(oid, data)
    } else if (what < 80) {
      await store.sync([oid])
    } else if (what < 85) {
      await store.close()
      store = await openStore(t, dir, opts)
    } else if (what < 88) {
      // A process crash after syncing everything: nothing is lost, and nothing may read as damaged.
      await store.sync([...model.keys()])
      const copy = crashCopy(t, dir)
      dir = copy
      store = await openStore(t, dir, opts)
    }
    // Reads, some of them while writes run.
    const obj = model.get(oid) as Buffer
    if (obj.length > 0) {
      const off = below(obj.length)
      const len = 1 + below(obj.length - off)
      const got = await read(store, oid, off, len)
      if (!got.equals(obj.subarray(off, off + len))) {
        t.fail(`step ${step}: object ${oidToHex(oid)} [${off}, ${off + len}) reads other bytes than written`)
        return
      }
    }
  }
  for (const [oid, want] of model) {
    const got = await store.readAll(oid)
    if (!got.equals(want)) t.fail(`object ${oidToHex(oid)} differs at the end`)
  }
  t.equal(store.checksumStatus().mismatches, 0, 'no read found a mismatch')
})
