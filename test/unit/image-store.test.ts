// Images and the image store over a real LocalObjectStore in a temporary directory.

import t, { type Test } from 'tap'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { LocalObjectStore } from '../../src/objects/local-store'
import { dataOid, inodeOid, metaOid, type ObjectId, ObjectType, oidIndex, oidToHex, oidType, oidVid } from '../../src/objects/oid'
import { ImageStore } from '../../src/cow/image-store'
import type { Image } from '../../src/cow/image'
import { DIRECTORY_OID } from '../../src/cow/directory'
import { inodeObjectSize } from '../../src/cow/inode'
import { sheepError, tmpDir } from './tmp'
import { SharedTokens } from '../helpers/shared-tokens'

const KiB = 1024
const MiB = 2 ** 20
const OS = 64 * KiB // object size for these tests
const OPTS = { objectSize: OS, copies: 1 }

interface Teardownable { teardown (fn: () => unknown): void }

interface Env { dir: string, objects: LocalObjectStore, images: ImageStore }

/** Opens a store and an image store on dir; both are closed at teardown unless closed before. */
async function openEnv (t: Teardownable, dir: string): Promise<Env & { collected: number }> {
  const objects = new LocalObjectStore(dir)
  await objects.open()
  const images = new ImageStore(objects)
  t.teardown(async () => {
    await images.close().catch(() => {})
    await objects.close()
  })
  const { collected, strays } = await images.open()
  // Counted together: after a clean close a start-up has nothing to delete or set aside.
  return { dir, objects, images, collected: collected + strays }
}

async function closeEnv (env: Env): Promise<void> {
  await env.images.close()
  await env.objects.close()
}

function pattern (length: number, seed: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i++) b[i] = (i * 13 + seed * 101 + 7) & 0xff
  return b
}

async function readImage (image: Image, pos: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length, 0xaa)
  const n = await image.read(pos, length, b)
  return b.subarray(0, n)
}

async function allObjects (objects: LocalObjectStore): Promise<ObjectId[]> {
  const out: ObjectId[] = []
  for await (const info of objects.list()) out.push(info.oid)
  return out
}

/** Indexes of the data objects of vid in the store, sorted. */
async function dataIndexes (objects: LocalObjectStore, vid: number): Promise<number[]> {
  return (await allObjects(objects)).filter(o => oidType(o) === ObjectType.Data && oidVid(o) === vid).map(oidIndex).sort((a, b) => a - b)
}

async function objectsOf (objects: LocalObjectStore, vid: number): Promise<number> {
  return (await allObjects(objects)).filter(o => oidType(o) !== ObjectType.Meta && oidVid(o) === vid).length
}

t.test('create, list, lookup, info', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  t.same(images.list(), [])
  const b = await images.create('b.img', 10 * MiB, OPTS)
  const a = await images.create('a.img', 0, { objectSize: OS, copies: 2, mode: 0o100600, uid: 5, gid: 6 })
  const c = await images.create('c.img', 1) // defaults: 4 MiB objects, 3 copies
  t.same(images.list().map(i => i.name), ['a.img', 'b.img', 'c.img'], 'sorted by name')
  t.equal(lookup(images, 'b.img'), b)
  t.equal(images.get('a.img'), a)
  t.equal(lookup(images, 'nope'), undefined)
  t.equal((await sheepError(() => images.get('nope'))).code, 'ENOENT')
  t.not(a.vid, b.vid)
  t.ok(a.vid >= 1 && a.vid <= 0xffffff)
  const info = images.info(a)
  t.match(info, { name: 'a.img', vid: a.vid, size: 0, allocated: 0, objectSize: OS, copies: 2, parent: '', openHandles: 0, snapshots: 0 })
  t.equal(a.header.mode, 0o600, 'mode keeps only permission bits')
  t.equal(a.header.uid, 5)
  t.match(images.info(c), { objectSize: 4 * MiB, copies: 3, size: 1 })
  t.equal(images.info(b).size, 10 * MiB)
  // Only the inodes and the directory exist: creation allocates no data.
  t.equal((await allObjects(objects)).length, 4)
  t.equal((await objects.stat(inodeOid(b.vid)))?.size, inodeObjectSize(10 * MiB, OS))
})

t.test('create refuses bad arguments and duplicates', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  await images.create('vm.img', MiB, OPTS)
  const dup = await sheepError(() => images.create('vm.img', 2 * MiB, OPTS))
  t.equal(dup.code, 'EEXIST')
  t.match(dup.message, 'vm.img')
  t.equal(images.get('vm.img').size, MiB, 'the existing image is untouched')
  const cases: Array<[string, () => Promise<unknown>, string]> = [
    ['bad name', () => images.create('a/b', MiB, OPTS), 'EINVAL'],
    ['empty name', () => images.create('', MiB, OPTS), 'EINVAL'],
    ['negative size', () => images.create('x', -1, OPTS), 'EINVAL'],
    ['fractional size', () => images.create('x', 1.5, OPTS), 'EINVAL'],
    ['NaN size', () => images.create('x', NaN, OPTS), 'EINVAL'],
    ['too big', () => images.create('x', 64 * 2 ** 40 + 1, OPTS), 'EFBIG'],
    ['object size not a power of two', () => images.create('x', MiB, { objectSize: 100 * KiB }), 'EINVAL'],
    ['object size too small', () => images.create('x', MiB, { objectSize: 32 * KiB }), 'EINVAL'],
    ['object size too big', () => images.create('x', MiB, { objectSize: 128 * MiB }), 'EINVAL'],
    ['zero copies', () => images.create('x', MiB, { copies: 0 }), 'EINVAL'],
    ['too many copies', () => images.create('x', MiB, { copies: 32 }), 'EINVAL']
  ]
  for (const [label, op, code] of cases) t.equal((await sheepError(op)).code, code, label)
  t.same(images.list().map(i => i.name), ['vm.img'])
  t.equal((await allObjects(objects)).length, 2, 'failed creates leave no objects')
  const big = await images.create('big', 64 * 2 ** 40, OPTS)
  t.equal(big.size, 64 * 2 ** 40, 'the maximum size is allowed')
})

t.test('concurrent creates of the same name: exactly one succeeds', async t => {
  const { images } = await openEnv(t, tmpDir(t))
  const results = await Promise.allSettled(Array.from({ length: 5 }, () => images.create('same', MiB, OPTS)))
  t.equal(results.filter(r => r.status === 'fulfilled').length, 1)
  t.equal(images.list().length, 1)
})

t.test('holes read as zeros; reads stop at the end', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('holes', 5 * OS + 1000, OPTS)
  t.ok((await readImage(image, 0, image.size)).equals(Buffer.alloc(image.size)), 'the whole image is zeros')
  await image.write(2 * OS + 10, Buffer.from('data'))
  const all = await readImage(image, 0, image.size)
  t.equal(all.length, image.size)
  t.equal(all.subarray(2 * OS + 10, 2 * OS + 14).toString(), 'data')
  all.fill(0, 2 * OS + 10, 2 * OS + 14)
  t.ok(all.equals(Buffer.alloc(image.size)), 'zeros around the write, in the same block and in holes')
  t.equal((await readImage(image, image.size - 10, 100)).length, 10, 'a read over the end is cut at the end')
  t.equal((await readImage(image, image.size, 100)).length, 0, 'a read at the end returns nothing')
  t.equal((await readImage(image, image.size + 5 * OS, 100)).length, 0, 'a read past the end returns nothing')
  t.equal((await readImage(image, 0, 0)).length, 0)
  t.same(await dataIndexes(objects, image.vid), [2], 'only the written block exists')
})

t.test('writes across object boundaries', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('span', 8 * OS, OPTS)
  const writes: Array<[number, Buffer]> = [
    [OS - 100, pattern(300, 1)], // straddles 0|1
    [3 * OS - 1, pattern(2, 2)], // last byte of 2, first of 3
    [4 * OS + 5, pattern(2 * OS + 10, 3)], // 4, 5, 6 and into 7? no: ends at 6*OS+15
    [8 * OS - 1, pattern(1, 4)] // the very last byte
  ]
  for (const [pos, data] of writes) await image.write(pos, data)
  const expected = Buffer.alloc(8 * OS)
  for (const [pos, data] of writes) data.copy(expected, pos)
  t.ok((await readImage(image, 0, 8 * OS)).equals(expected), 'the whole image reads back')
  for (const [pos, data] of writes) t.ok((await readImage(image, pos, data.length)).equals(data), `read at ${pos}`)
  // Unaligned reads across boundaries.
  t.ok((await readImage(image, OS - 50, OS + 100)).equals(expected.subarray(OS - 50, 2 * OS + 50)))
  t.same(await dataIndexes(objects, image.vid), [0, 1, 2, 3, 4, 5, 6, 7])
  t.equal(image.size, 8 * OS, 'writes inside do not change the size')
  t.equal(images.info(image).allocated, 8 * OS)
  // Overwrite in place: no new objects, new bytes.
  await image.write(OS - 100, pattern(300, 9))
  t.ok((await readImage(image, OS - 100, 300)).equals(pattern(300, 9)))
  t.same(await dataIndexes(objects, image.vid), [0, 1, 2, 3, 4, 5, 6, 7])
})

t.test('concurrent writes into the same new block allocate it once', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('race', 4 * OS, OPTS)
  const parts = Array.from({ length: 16 }, (_, i) => pattern(OS / 16, i))
  await Promise.all(parts.map((p, i) => image.write(OS + i * p.length, p)))
  t.ok((await readImage(image, OS, OS)).equals(Buffer.concat(parts)), 'every piece is there')
  t.same(await dataIndexes(objects, image.vid), [1])
  t.equal(images.info(image).allocated, OS)
})

t.test('a write past the end grows the image', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('grow', 100 * KiB, OPTS)
  const data = pattern(5000, 5)
  await image.write(3 * OS + 7, data)
  t.equal(image.size, 3 * OS + 7 + 5000)
  t.equal(images.info(image).size, image.size)
  t.ok((await readImage(image, 100 * KiB, 3 * OS + 7 - 100 * KiB)).equals(Buffer.alloc(3 * OS + 7 - 100 * KiB)), 'the gap reads as zeros')
  t.ok((await readImage(image, 3 * OS + 7, 5000)).equals(data))
  t.same(await dataIndexes(objects, image.vid), [3])
  await image.write(0, Buffer.alloc(0))
  t.equal(image.size, 3 * OS + 7 + 5000, 'an empty write changes nothing')
  t.equal((await sheepError(() => image.write(-1, Buffer.from('x')))).code, 'EINVAL')
  t.equal((await sheepError(() => image.write(64 * 2 ** 40, Buffer.from('x')))).code, 'EFBIG')
  t.equal(image.size, 3 * OS + 7 + 5000)
})

t.test('resize: grow reads zeros, shrink frees objects and zeroes the cut block', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('rs', 4 * OS, OPTS)
  await image.write(0, pattern(4 * OS, 1))
  t.same(await dataIndexes(objects, image.vid), [0, 1, 2, 3])

  await images.resize('rs', 6 * OS)
  t.equal(image.size, 6 * OS)
  t.ok((await readImage(image, 4 * OS, 2 * OS)).equals(Buffer.alloc(2 * OS)), 'grown part reads zeros')
  t.ok((await readImage(image, 0, 4 * OS)).equals(pattern(4 * OS, 1)), 'old part kept')

  // Shrink into the middle of block 1.
  const cut = OS + 1000
  await images.resize('rs', cut)
  t.equal(image.size, cut)
  t.same(await dataIndexes(objects, image.vid), [0, 1], 'blocks past the end are freed')
  t.equal((await objects.stat(inodeOid(image.vid)))?.size, inodeObjectSize(cut, OS), 'the owner table is cut')
  t.equal(images.info(image).allocated, cut)
  t.ok((await readImage(image, 0, cut)).equals(pattern(4 * OS, 1).subarray(0, cut)), 'kept bytes kept')
  t.equal((await readImage(image, 0, 4 * OS)).length, cut, 'reads stop at the new end')

  // Grow again: everything past the cut reads as zeros, in the cut block and after it.
  await images.resize('rs', 4 * OS)
  t.ok((await readImage(image, 0, cut)).equals(pattern(4 * OS, 1).subarray(0, cut)))
  t.ok((await readImage(image, cut, 4 * OS - cut)).equals(Buffer.alloc(4 * OS - cut)), 'no old bytes come back')
  t.same(await dataIndexes(objects, image.vid), [0, 1])

  // A grow by write after a shrink also reads zeros in the gap.
  await images.resize('rs', OS + 10)
  await image.write(OS + 500, Buffer.from('z'))
  t.ok((await readImage(image, OS + 10, 490)).equals(Buffer.alloc(490)), 'the gap left by the shrink is zeros')

  // Shrink on a block boundary, then to zero.
  await images.resize('rs', OS)
  t.same(await dataIndexes(objects, image.vid), [0])
  await images.resize('rs', 0)
  t.same(await dataIndexes(objects, image.vid), [])
  t.equal(images.info(image).allocated, 0)
  await images.resize('rs', 2 * OS)
  t.ok((await readImage(image, 0, 2 * OS)).equals(Buffer.alloc(2 * OS)))

  t.equal((await sheepError(() => images.resize('nope', 0))).code, 'ENOENT')
  t.equal((await sheepError(() => images.resize('rs', -5))).code, 'EINVAL')
  t.equal((await sheepError(() => images.resize('rs', 64 * 2 ** 40 + 1))).code, 'EFBIG')
})

t.test('a shrink waits for writes in flight and they cannot land past the end', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('rw', 4 * OS, OPTS)
  const writes = [0, 1, 2, 3].map(i => image.write(i * OS, pattern(OS, i)))
  const shrink = images.resize('rw', OS)
  await Promise.all(writes)
  await shrink
  t.equal(image.size, OS)
  t.same(await dataIndexes(objects, image.vid), [0])
  t.ok((await readImage(image, 0, OS)).equals(pattern(OS, 0)))
})

t.test('delete frees every object', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const keep = await images.create('keep', 2 * OS, OPTS)
  await keep.write(0, pattern(2 * OS, 1))
  const gone = await images.create('gone', 10 * OS, OPTS)
  await gone.write(0, pattern(5 * OS, 2))
  const progress: Array<[number, number]> = []
  await images.remove('gone', (done, total) => progress.push([done, total]))
  t.same(images.list().map(i => i.name), ['keep'])
  t.equal(await objectsOf(objects, gone.vid), 0, 'no object of the deleted image is left')
  t.same(progress, [[1, 5], [2, 5], [3, 5], [4, 5], [5, 5]])
  t.equal(await objectsOf(objects, keep.vid), 3, 'the other image keeps its inode and blocks')
  t.ok((await readImage(keep, 0, 2 * OS)).equals(pattern(2 * OS, 1)))
  t.equal((await sheepError(() => images.remove('gone'))).code, 'ENOENT')
  // The name can be used again, for a new empty image.
  const again = await images.create('gone', OS, OPTS)
  t.ok((await readImage(again, 0, OS)).equals(Buffer.alloc(OS)))
})

t.test('delete while open keeps data readable until the last close', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('open.img', 4 * OS, OPTS)
  await image.write(0, pattern(3 * OS, 7))
  const h1 = images.openImage('open.img', true)
  const h2 = images.openImage('open.img')
  t.equal(h1, image)
  t.equal(images.info(image).openHandles, 2)
  t.equal(image.openWriters, 1, 'one of the handles may write')
  await images.remove('open.img')
  t.equal(lookup(images, 'open.img'), undefined, 'the name is gone at once')
  t.equal((await sheepError(() => images.openImage('open.img'))).code, 'ENOENT')
  t.ok((await readImage(h1, 0, 3 * OS)).equals(pattern(3 * OS, 7)), 'still readable through the handle')
  await h1.write(3 * OS, pattern(OS, 8))
  t.ok((await readImage(h1, 3 * OS, OS)).equals(pattern(OS, 8)), 'and writable')
  t.equal(await objectsOf(objects, image.vid), 5, 'objects stay while open')
  await images.closeImage(h1, true)
  t.equal(image.openWriters, 0)
  t.equal(await objectsOf(objects, image.vid), 5, 'objects stay while one handle is open')
  t.ok((await readImage(h2, 0, 3 * OS)).equals(pattern(3 * OS, 7)))
  await images.closeImage(h2)
  t.equal(await objectsOf(objects, image.vid), 0, 'the last close frees every object')
  t.same(await allObjects(objects), [DIRECTORY_OID])
})

t.test('closing an open image that was not deleted keeps it', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const image = await images.create('x', OS, OPTS)
  const h = images.openImage('x', true)
  await h.write(0, Buffer.from('abc'))
  await images.closeImage(h, true)
  t.equal(images.get('x'), image)
  t.same([image.openCount, image.openWriters], [0, 0])
  t.equal(await objectsOf(objects, image.vid), 2)
})

t.test('rename', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const a = await images.create('a', 2 * OS, OPTS)
  await a.write(0, pattern(OS, 1))
  await images.rename('a', 'b')
  t.same(images.list().map(i => i.name), ['b'])
  t.equal(images.get('b'), a)
  t.equal(a.name, 'b')
  t.equal(a.header.name, 'b')
  t.ok((await readImage(a, 0, OS)).equals(pattern(OS, 1)))
  await images.rename('b', 'b')
  t.same(images.list().map(i => i.name), ['b'], 'rename onto itself is a no-op')
  t.equal((await sheepError(() => images.rename('nope', 'c'))).code, 'ENOENT')
  t.equal((await sheepError(() => images.rename('b', 'x/y'))).code, 'EINVAL')
  t.equal((await sheepError(() => images.rename('b', '.snapshots'))).code, 'EINVAL')
  t.same(images.list().map(i => i.name), ['b'])
  t.equal(await objectsOf(objects, a.vid), 2)
})

t.test('rename over an existing image replaces it and frees its objects', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  const src = await images.create('src', 2 * OS, OPTS)
  await src.write(0, pattern(2 * OS, 1))
  const dst = await images.create('dst', 4 * OS, OPTS)
  await dst.write(0, pattern(4 * OS, 2))
  const taken = await sheepError(() => images.rename('src', 'dst'))
  t.equal(taken.code, 'EEXIST', 'without replace, an existing name is refused')
  t.same(images.list().map(i => i.name), ['dst', 'src'], 'and nothing changed')
  t.ok((await readImage(images.get('dst'), 0, 4 * OS)).equals(pattern(4 * OS, 2)))
  t.equal(await objectsOf(objects, dst.vid), 5)
  await images.rename('src', 'dst', { replace: true })
  t.same(images.list().map(i => i.name), ['dst'])
  t.equal(images.get('dst'), src)
  t.ok((await readImage(images.get('dst'), 0, 2 * OS)).equals(pattern(2 * OS, 1)), 'the new name has the renamed image')
  t.equal(await objectsOf(objects, dst.vid), 0, 'the replaced image is freed')
  t.equal(await objectsOf(objects, src.vid), 3)
})

t.test('rename over an open image frees it at its last close', async t => {
  const { images, objects } = await openEnv(t, tmpDir(t))
  await images.create('src', OS, OPTS)
  const dst = await images.create('dst', OS, OPTS)
  await dst.write(0, pattern(OS, 3))
  const h = images.openImage('dst')
  await images.rename('src', 'dst', { replace: true })
  t.ok((await readImage(h, 0, OS)).equals(pattern(OS, 3)), 'the open handle still reads the replaced image')
  t.equal(await objectsOf(objects, dst.vid), 2)
  await images.closeImage(h)
  t.equal(await objectsOf(objects, dst.vid), 0)
})

t.test('sync, then reopen a new ImageStore on the same store', async t => {
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const a = await env.images.create('a.img', 3 * OS, OPTS)
  await a.write(OS - 10, pattern(OS, 1))
  await a.write(5 * OS + 3, pattern(100, 2)) // grows by write
  await a.sync()
  await a.sync() // nothing to do
  const b = await env.images.create('b.img', 2 * OS, { objectSize: 128 * KiB, copies: 2 })
  await b.write(0, pattern(1000, 3))
  await env.images.rename('b.img', 'c.img')
  await env.images.create('d.img', 0, OPTS)
  await env.images.remove('d.img')
  const before = env.images.list().map(i => env.images.info(i))
  const bytesA = await readImage(a, 0, a.size)
  const bytesB = await readImage(b, 0, b.size)
  const objectsBefore = (await allObjects(env.objects)).sort()
  await closeEnv(env)

  const again = await openEnv(t, dir)
  t.equal(again.collected, 0, 'nothing to collect after a clean close')
  t.same(again.images.list().map(i => again.images.info(i)), before, 'same images, sizes and attributes')
  t.ok((await readImage(again.images.get('a.img'), 0, 10 * OS)).equals(bytesA), 'same bytes in a.img')
  t.ok((await readImage(again.images.get('c.img'), 0, 10 * OS)).equals(bytesB), 'same bytes in c.img')
  t.same((await allObjects(again.objects)).sort(), objectsBefore, 'same objects')
  // And it keeps working: more writes, shrink, reopen once more.
  await again.images.resize('a.img', OS)
  await again.images.get('c.img').write(200 * KiB, Buffer.from('tail'))
  await closeEnv(again)
  const third = await openEnv(t, dir)
  t.equal(third.collected, 0)
  t.equal(third.images.get('a.img').size, OS)
  t.same(await dataIndexes(third.objects, third.images.get('a.img').vid), [0])
  t.equal((await readImage(third.images.get('c.img'), 200 * KiB, 4)).toString(), 'tail')
})

t.test('metadata is durable without close: create, rename, resize, sync', async t => {
  // The object store is closed (its catalog flushed) but the image store is not: only what the
  // image layer made durable itself may be relied on.
  const dir = tmpDir(t)
  const objects = new LocalObjectStore(dir)
  await objects.open()
  const images = new ImageStore(objects)
  await images.open()
  const a = await images.create('a', 4 * OS, OPTS)
  await a.write(0, pattern(OS, 1))
  await a.write(6 * OS, pattern(10, 2)) // grows
  await a.sync()
  await images.create('b', OS, OPTS)
  await images.rename('b', 'c')
  await images.resize('c', 3 * OS)
  await objects.close()

  const again = await openEnv(t, dir)
  t.same(again.images.list().map(i => i.name), ['a', 'c'])
  t.equal(again.images.get('a').size, 6 * OS + 10, 'synced size')
  t.equal(again.images.get('c').size, 3 * OS, 'resized size')
  t.ok((await readImage(again.images.get('a'), 0, OS)).equals(pattern(OS, 1)))
  t.ok((await readImage(again.images.get('a'), 6 * OS, 10)).equals(pattern(10, 2)))
  t.equal(again.collected, 0)
})

t.test('open deletes what is certainly garbage and sets aside blocks inside an image that nothing points at', async t => {
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const a = await env.images.create('a', 4 * OS, OPTS)
  await a.write(0, pattern(OS, 1))
  await a.write(2 * OS, pattern(OS, 2))
  const b = await env.images.create('b', 2 * OS, OPTS)
  await b.write(OS, pattern(OS, 3))
  const unknownVid = [a.vid, b.vid].includes(0x123456) ? 0x123457 : 0x123456
  const garbage = [
    dataOid(unknownVid, 0), // data of an image that does not exist
    dataOid(unknownVid, 9),
    inodeOid(unknownVid), // inode of an image not in the directory
    dataOid(a.vid, 100) // past a's end
  ]
  // Inside an image, where a crash before a sync leaves them, but so would a lost entry.
  const doubtful = [dataOid(a.vid, 1), dataOid(a.vid, 3), dataOid(b.vid, 0)]
  for (const oid of [...garbage, ...doubtful]) {
    await env.objects.create(oid, OS)
    await env.objects.write(oid, 0, Buffer.from('orphan'))
  }
  const keepMeta = metaOid(77)
  await env.objects.create(keepMeta, 10) // meta objects are not the image store's to collect
  const owned = [inodeOid(a.vid), dataOid(a.vid, 0), dataOid(a.vid, 2), inodeOid(b.vid), dataOid(b.vid, 1), DIRECTORY_OID, keepMeta]
  await closeEnv(env)

  const logged: string[] = []
  const objects = new LocalObjectStore(dir)
  await objects.open()
  t.teardown(() => objects.close())
  const images = new ImageStore(objects, { log: line => logged.push(line), setAside: async oid => await objects.setAside(oid) })
  const repairs = await images.open()
  t.same(repairs, { collected: garbage.length, strays: doubtful.length }, 'open says what it deleted and what it set aside')
  t.equal(logged.length, garbage.length + doubtful.length, 'each is logged')
  t.ok(logged.some(l => l.includes(`set aside object ${oidToHex(dataOid(a.vid, 3))} (block 3 of image "a")`)), 'the log names the block and the image')
  const left = await allObjects(objects)
  for (const oid of [...garbage, ...doubtful]) t.notOk(left.includes(oid), `${oid.toString(16)} is out of the store`)
  t.same([...left].sort(), [...owned].sort(), 'owned objects stay')
  const strays = await objects.strays()
  t.equal(strays.objects, doubtful.length, 'the doubtful ones are kept in the strays folder')
  for (const oid of doubtful) {
    t.equal(fs.readFileSync(path.join(strays.dir, oidToHex(oid))).subarray(0, 6).toString(), 'orphan', `${oidToHex(oid)} kept its bytes`)
  }
  t.ok((await readImage(images.get('a'), 0, OS)).equals(pattern(OS, 1)))
  t.ok((await readImage(images.get('a'), OS, OS)).equals(Buffer.alloc(OS)), 'the hole still reads as zeros')
  t.ok((await readImage(images.get('a'), 2 * OS, OS)).equals(pattern(OS, 2)))
  t.ok((await readImage(images.get('b'), 0, 2 * OS)).equals(Buffer.concat([Buffer.alloc(OS), pattern(OS, 3)])))
  // Writing into a's former orphan block works (the object was moved out of the way).
  await images.get('a').write(OS + 100, Buffer.from('new'))
  t.ok((await readImage(images.get('a'), OS, 103)).equals(Buffer.concat([Buffer.alloc(100), Buffer.from('new')])))
  await images.close()
})

t.test('without a place to set them aside, doubtful blocks stay; a write into one reads zeros around it', async t => {
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const a = await env.images.create('a', 4 * OS, OPTS)
  const stray = dataOid(a.vid, 1)
  await env.objects.create(stray, OS)
  await env.objects.write(stray, 0, pattern(OS, 9))
  await closeEnv(env)
  const again = await openEnv(t, dir)
  t.same(await dataIndexes(again.objects, a.vid), [1], 'kept where it was')
  t.ok((await readImage(again.images.get('a'), OS, OS)).equals(Buffer.alloc(OS)), 'the block is still a hole')
  await again.images.get('a').write(OS + 4096, Buffer.from('new'))
  t.ok((await readImage(again.images.get('a'), OS, 4099)).equals(Buffer.concat([Buffer.alloc(4096), Buffer.from('new')])),
    'the write allocates the block afresh: none of the old bytes show')
})

t.test('a crash between removing the name and freeing the objects is collected on open', async t => {
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const a = await env.images.create('a', 2 * OS, OPTS)
  await a.write(0, pattern(2 * OS, 1))
  env.images.openImage('a')
  await env.images.remove('a') // deferred: the image is open
  await env.objects.close() // "crash": the handle is never closed
  const again = await openEnv(t, dir)
  t.equal(again.collected, 3, 'inode and two blocks collected')
  t.equal(await objectsOf(again.objects, a.vid), 0)
})

t.test('a new image never reuses the vid of a deleted image that is still open', async t => {
  // crypto.randomInt is Node's; it is replaced here only to force the collision deterministically.
  const { images, objects } = await openEnv(t, tmpDir(t))
  const picks = [0x42, 0x42, 0x43, 0x44]
  const original = crypto.randomInt
  ;(crypto as { randomInt: unknown }).randomInt = () => picks.shift() ?? 0x99
  t.teardown(() => { (crypto as { randomInt: unknown }).randomInt = original })
  const old = await images.create('old', 2 * OS, OPTS)
  t.equal(old.vid, 0x42)
  await old.write(0, pattern(OS, 1))
  const h = images.openImage('old')
  await images.remove('old')
  // The random pick collides with the deleted-but-open image's vid; create must pick another.
  let fresh: Image | undefined
  try {
    fresh = await images.create('fresh', 2 * OS, OPTS)
  } catch (err) {
    t.fail(`create of a new name failed: ${(err as Error).message}`)
  }
  if (fresh !== undefined) {
    t.not(fresh.vid, old.vid, 'the open, deleted image still owns its vid')
    await fresh.write(OS, pattern(OS, 2))
  }
  await images.closeImage(h)
  ;(crypto as { randomInt: unknown }).randomInt = original
  t.equal(await objectsOf(objects, old.vid), fresh?.vid === old.vid ? 2 : 0, 'the old image is freed at its last close')
  if (fresh !== undefined) {
    t.ok(await objects.stat(inodeOid(fresh.vid)), 'the new image keeps its inode')
    t.ok((await readImage(fresh, OS, OS)).equals(pattern(OS, 2)), 'the new image keeps its data')
  }
})

t.test('an inode with a corrupt header marks its image broken; the others work', async t => {
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const bad = await env.images.create('bad', 2 * OS, OPTS)
  await bad.write(0, pattern(2 * OS, 1))
  const good = await env.images.create('good', OS, OPTS)
  await good.write(0, pattern(OS, 2))
  await closeEnv(env)
  // Flip one byte of bad's header, directly in the object store.
  const objects = new LocalObjectStore(dir)
  await objects.open()
  const b = Buffer.alloc(1)
  await objects.read(inodeOid(bad.vid), 12, 1, b, 0)
  await objects.write(inodeOid(bad.vid), 12, Buffer.from([(b[0] as number) ^ 0x01]))
  await objects.close()

  const again = await openEnv(t, dir)
  t.equal(again.collected, 0, 'the broken image\'s objects are not collected')
  t.same(again.images.names(), ['bad', 'good'])
  t.same(again.images.list().map(i => i.name), ['good'])
  const err = await sheepError(() => again.images.get('bad'))
  t.equal(err.code, 'EIO')
  t.match(err.message, /"bad" is unreadable/)
  t.match(again.images.problems(), [/"bad" is unreadable/])
  t.equal((await sheepError(() => again.images.create('bad', OS, OPTS))).code, 'EEXIST', 'its name stays taken')
  t.ok((await readImage(again.images.get('good'), 0, OS)).equals(pattern(OS, 2)))
  t.equal(await objectsOf(again.objects, bad.vid), 3)
  await again.images.remove('bad')
  t.same(again.images.names(), ['good'])
  t.equal(await objectsOf(again.objects, bad.vid), 0, 'deleting it frees its objects')
})

t.test('while an inode is broken, no deleted snapshot it may read through is freed', async t => {
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const base = await env.images.create('base', 2 * OS, OPTS)
  await base.write(0, pattern(2 * OS, 4))
  await env.images.snapshot('base', 's')
  const clone = await env.images.clone('base', 's', 'clone')
  const snapVid = env.images.getSnapshot('base', 's').vid
  await env.images.remove('base') // the snapshot stays, hidden: the clone reads through it
  await closeEnv(env)
  const objects = new LocalObjectStore(dir)
  await objects.open()
  await objects.write(inodeOid(clone.vid), 12, Buffer.from([0xff, 0xff, 0xff, 0xff])) // the clone's header is now garbage
  await objects.close()
  const again = await openEnv(t, dir)
  t.match(again.images.problems(), [/"clone" is unreadable/])
  t.equal(await objectsOf(again.objects, snapVid), 3, 'the hidden snapshot keeps its inode and both blocks')
})

t.test('a missing inode marks its image broken instead of failing open', async t => {
  // The directory names an image whose inode object is gone: a corrupt store, so EIO for that
  // image, like a corrupt inode; the other images must still be served.
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const lost = await env.images.create('lost', OS, OPTS)
  const good = await env.images.create('good', OS, OPTS)
  await good.write(0, pattern(OS, 3))
  await closeEnv(env)
  const objects = new LocalObjectStore(dir)
  await objects.open()
  await objects.remove(inodeOid(lost.vid))
  await objects.close()

  const objects2 = new LocalObjectStore(dir)
  await objects2.open()
  t.teardown(() => objects2.close())
  const images = new ImageStore(objects2)
  let openError: unknown = null
  try { await images.open() } catch (err) { openError = err }
  t.equal(openError, null, `open succeeds (got ${String(openError)})`)
  if (openError === null) {
    t.equal((await sheepError(() => images.get('lost'))).code, 'EIO')
    t.ok((await readImage(images.get('good'), 0, OS)).equals(pattern(OS, 3)))
    await images.close()
  }
})

t.test('a corrupted directory is detected, not taken as a rename', async t => {
  const dir = tmpDir(t)
  const env = await openEnv(t, dir)
  const image = await env.images.create('vm1.img', OS, OPTS)
  await image.write(0, pattern(OS, 4))
  await closeEnv(env)
  // Flip one bit of the name inside the directory object.
  const objects = new LocalObjectStore(dir)
  await objects.open()
  const bytes = await objects.readAll(DIRECTORY_OID)
  const at = bytes.indexOf('vm1.img')
  t.ok(at > 0)
  bytes[at + 1] = (bytes[at + 1] as number) ^ 0x01 // "vm1.img" -> "vl1.img"
  await objects.replace(DIRECTORY_OID, bytes)
  await objects.close()

  const objects2 = new LocalObjectStore(dir)
  await objects2.open()
  t.teardown(() => objects2.close())
  const images = new ImageStore(objects2)
  let openError: unknown = null
  try { await images.open() } catch (err) { openError = err }
  const names = openError === null ? images.names() : []
  t.notSame(names, ['vl1.img'], `the image is not silently renamed (names: ${JSON.stringify(names)})`)
  t.ok(openError !== null || images.problems().length > 0, 'the corruption is reported')
  if (openError === null) await images.close()
})

function lookup (images: ImageStore, name: string): Image | undefined {
  return images.list().find(i => i.name === name)
}

t.test('two image stores over one object store (two hosts of a cluster): what one does, the other sees; loading never repairs', async t => {
  const objects = new LocalObjectStore(tmpDir(t))
  await objects.open()
  t.teardown(async () => await objects.close())
  const a = new ImageStore(objects, { soleWriter: false })
  const b = new ImageStore(objects, { soleWriter: false })
  await a.open()
  await b.open()
  const img = await a.create('vm', 4 * OS, OPTS)
  const h = a.openImage('vm', true)
  await h.write(0, pattern(6 * OS, 1)) // grows the image past its size: header written at flush
  await h.flush()
  await b.refresh()
  t.equal(b.get('vm').size, 6 * OS, 'b sees the new size after a refresh')
  const inode = inodeOid(img.vid)
  const full = (await objects.stat(inode))?.size
  // The writer's entries land before its header: another host loading in between sees entries
  // past the size it reads, and must leave them alone.
  await h.write(6 * OS, pattern(2 * OS, 2))
  const entriesOnly = a.get('vm') as unknown as { writeEntries: (entries: number[]) => Promise<void>, dirtyEntries: Set<number> }
  await entriesOnly.writeEntries([...entriesOnly.dirtyEntries])
  const grown = (await objects.stat(inode))?.size as number
  t.ok(grown > (full as number), 'the entries past the old size are in the inode')
  await b.refresh()
  t.equal((await objects.stat(inode))?.size, grown, 'loading on b did not cut them off')
  await a.closeImage(h, true)
  await b.refresh()
  const back = Buffer.alloc(8 * OS)
  const hb = await b.acquire('vm', false)
  await hb.read(0, back.length, back)
  t.ok(back.equals(Buffer.concat([pattern(6 * OS, 1), pattern(2 * OS, 2)])), 'b reads every write of a')
  await b.closeImage(hb)
  // A name created on a wins; b, creating the same name on its stale directory, gets EEXIST.
  await a.create('x', OS, OPTS)
  t.equal((await sheepError(async () => await b.create('x', OS, OPTS))).code, 'EEXIST', 'compare-and-swap: b reloads and finds x taken')
  await a.close()
  await b.close()
})

/** Two image stores over one object store, as two hosts of a cluster with their write tokens. */
async function twoHosts (t: Test): Promise<{ shared: SharedTokens, a: ImageStore, b: ImageStore, objects: LocalObjectStore }> {
  const objects = new LocalObjectStore(tmpDir(t))
  await objects.open()
  t.teardown(async () => await objects.close())
  const stores = new Map<string, () => ImageStore>([['a', () => a], ['b', () => b]])
  const shared = new SharedTokens(objects, stores)
  const a: ImageStore = new ImageStore(objects, { soleWriter: false, tokens: shared.forStore('a') })
  const b: ImageStore = new ImageStore(objects, { soleWriter: false, tokens: shared.forStore('b') })
  await a.open()
  await b.open()
  return { shared, a, b, objects }
}

t.test('write tokens: the holder writes out what it kept before another store takes over; changes wait for it to close', async t => {
  const { shared, a, b } = await twoHosts(t)
  await a.create('vm', 8 * OS, OPTS)
  await b.refresh()
  const ha = await a.acquire('vm', true)
  const hb = await b.acquire('vm', true)
  await a.io(ha, true, async () => await ha.write(0, pattern(2 * OS, 1)))
  t.same(shared.takes, ['a io'], 'the first I/O of a writable handle takes the token')
  await a.io(ha, true, async () => await ha.write(5 * OS, pattern(OS, 2)))
  t.same(shared.takes, ['a io'], 'later I/O under the token does not ask again')

  // b loaded the inode before a allocated anything: its first I/O takes the token and reloads.
  const back = Buffer.alloc(6 * OS)
  await b.io(hb, true, async () => await hb.read(0, back.length, back))
  t.ok(back.equals(Buffer.concat([pattern(2 * OS, 1), Buffer.alloc(3 * OS), pattern(OS, 2)])), 'b reads every block a allocated')
  t.notOk(ha.token.held, 'a let the token go')
  await b.io(hb, true, async () => await hb.write(3 * OS, pattern(OS, 3)))
  const fromA = Buffer.alloc(OS)
  await a.io(ha, true, async () => await ha.read(3 * OS, OS, fromA))
  t.ok(fromA.equals(pattern(OS, 3)), 'and a reads what b allocated, after taking the token back')
  t.same(shared.takes, ['a io', 'b io', 'a io'])

  // A read-only handle takes no token.
  const ro = await b.acquire('vm', false)
  await b.io(ro, false, async () => await ro.read(0, OS, Buffer.alloc(OS)))
  t.same(shared.takes, ['a io', 'b io', 'a io'], 'no take for a read-only handle')
  await b.closeImage(ro)

  // a holds the token and has the image open for writing: b's changes are refused.
  for (const change of [async () => await b.resize('vm', 16 * OS), async () => await b.snapshot('vm', 's'), async () => await b.remove('vm')]) {
    const err = await sheepError(change)
    t.equal(err.code, 'EBUSY', `refused: ${err.message}`)
  }
  t.equal(a.get('vm').size, 8 * OS, 'nothing changed')
  await a.closeImage(ha, true)
  await b.closeImage(hb, true)
  await b.resize('vm', 16 * OS)
  t.equal(b.get('vm').size, 16 * OS, 'once a closed, b resizes')

  // A new view: each store checks again at its next I/O; nothing moved, nothing is reloaded.
  const hb2 = await b.acquire('vm', true)
  b.recheckTokens()
  t.notOk(hb2.token.held)
  await b.io(hb2, true, async () => await hb2.write(0, pattern(OS, 4)))
  t.ok(hb2.token.held, 'taken again at the next I/O')

  // Snapshotted by the holder while open on the other store: ESTALE there, at every I/O until reopened.
  await b.io(hb2, true, async () => await hb2.write(0, pattern(OS, 5)))
  const stale = await a.acquire('vm', true)
  await b.snapshot('vm', 'snap')
  for (const attempt of ['first', 'second']) {
    const e = await sheepError(async () => await a.io(stale, true, async () => await stale.write(0, pattern(OS, 6))))
    t.equal(e.code, 'ESTALE', `${attempt} I/O on a handle of an image snapshotted elsewhere: ${e.message}`)
  }
  await a.closeImage(stale, true)
  await a.refresh()
  const fresh = await a.acquire('vm', true)
  const now = Buffer.alloc(OS)
  await a.io(fresh, true, async () => await fresh.read(0, OS, now))
  t.ok(now.equals(pattern(OS, 5)), 'opened again, it reads the image as it is')
  await a.closeImage(fresh, true)

  // Deleted by the other store while open here: ESTALE, not old bytes.
  const ha2 = await a.acquire('vm', true)
  await b.closeImage(hb2, true)
  const hb3 = await b.acquire('vm', true)
  await b.io(hb3, true, async () => await hb3.write(0, pattern(OS, 7))) // b holds the token; a did no I/O
  await b.closeImage(hb3, true)
  await b.remove('vm')
  const err = await sheepError(async () => await a.io(ha2, true, async () => await ha2.read(0, OS, Buffer.alloc(OS))))
  t.equal(err.code, 'ESTALE', `I/O on a handle of an image deleted elsewhere: ${err.message}`)
  await a.closeImage(ha2, true)
  await a.close()
  await b.close()
})

t.test('write tokens: objects a holder made (first writes of blocks) and died before recording are removed when another host takes the token', async t => {
  const { shared, a, b, objects } = await twoHosts(t)
  await a.create('vm', 8 * OS, OPTS)
  await b.refresh()
  const ha = await a.acquire('vm', true)
  await a.io(ha, true, async () => await ha.write(0, pattern(OS, 1)))
  await a.io(ha, true, async () => await ha.sync())
  const vid = (lookup(a, 'vm') as Image).vid
  // a's first write of block 3 made its object; a died before the owner entry was written.
  await objects.writeFresh(dataOid(vid, 3), OS, 0, pattern(OS, 2))
  shared.dead.add('a')
  const hb = await b.acquire('vm', true)
  const back = Buffer.alloc(4 * OS)
  await b.io(hb, true, async () => await hb.read(0, back.length, back))
  t.equal(await objects.stat(dataOid(vid, 3)), null, 'the object no entry points at is gone (before: kept until the next first write of block 3)')
  t.not(await objects.stat(dataOid(vid, 0)), null, 'the recorded block stays')
  t.ok(back.equals(Buffer.concat([pattern(OS, 1), Buffer.alloc(3 * OS)])), 'the image reads as a synced it')
  await b.io(hb, true, async () => await hb.write(3 * OS, pattern(OS, 3)))
  await b.closeImage(hb, true)
  await b.close()
})

t.test('write tokens: a holder that died after writing past the size; the next holder grows the image and reads zeros there', async t => {
  const { shared, a, b } = await twoHosts(t)
  await a.create('vm', OS + 1000, OPTS)
  await b.refresh()
  const ha = await a.acquire('vm', true)
  await a.io(ha, true, async () => await ha.write(0, pattern(OS + 1000, 1)))
  await a.io(ha, true, async () => await ha.sync())
  // Past the size, in the block the size ends in: the bytes reach the object, the new size only
  // the memory of a, which dies before its next sync.
  await a.io(ha, true, async () => await ha.write(OS + 2000, pattern(1000, 2)))
  shared.dead.add('a')
  const hb = await b.acquire('vm', true)
  await b.io(hb, true, async () => await hb.read(0, 1, Buffer.alloc(1)))
  t.equal(b.get('vm').size, OS + 1000, 'b finds the size a synced')
  await b.closeImage(hb, true)
  await b.resize('vm', 2 * OS)
  const h = await b.acquire('vm', false)
  const tail = Buffer.alloc(OS - 1000)
  await b.io(h, false, async () => await h.read(OS + 1000, tail.length, tail))
  // Fails while only a sole writer's start-up zeroes what lies past the size in the last block.
  t.ok(tail.equals(Buffer.alloc(tail.length)), 'zeros past the old size, not the dead holder\'s unsynced bytes')
  await b.closeImage(h)
  await b.close()
})
