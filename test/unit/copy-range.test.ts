// copy_file_range between images (src/cow/copy-range.ts) over a real LocalObjectStore: blocks
// shared copy-on-write, copy-up on either side, delete, gc, shrink, discard, snapshots of a copy,
// a restart, the cluster's write tokens; and byte copies of unaligned ranges against a model.

import t from 'tap'
import { LocalObjectStore } from '../../src/objects/local-store'
import { ObjectType, oidType, oidVid } from '../../src/objects/oid'
import { ImageStore } from '../../src/cow/image-store'
import type { Image } from '../../src/cow/image'
import { copyRange } from '../../src/cow/copy-range'
import { tmpDir } from './tmp'
import { SharedTokens } from '../helpers/shared-tokens'
import { Rng } from '../helpers/random'

const KiB = 1024
const OS = 64 * KiB
const OPTS = { objectSize: OS, copies: 1 }

interface Teardownable { teardown (fn: () => unknown): void }

interface Env { objects: LocalObjectStore, images: ImageStore, repairs: number, close: () => Promise<void> }

/** Opens a store and an image store on dir; closed at teardown unless closed before (a restart). */
async function openEnv (t: Teardownable, dir: string): Promise<Env> {
  const objects = new LocalObjectStore(dir)
  await objects.open()
  const images = new ImageStore(objects)
  let closed = false
  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    await images.close()
    await objects.close()
  }
  t.teardown(close)
  const { collected, strays } = await images.open()
  return { objects, images, repairs: collected + strays, close }
}

function pattern (length: number, seed: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i++) b[i] = (i * 13 + seed * 101 + 7) & 0xff
  return b
}

async function readAll (image: Image): Promise<Buffer> {
  const b = Buffer.alloc(image.size)
  const n = await image.read(0, b.length, b)
  return b.subarray(0, n)
}

/** Data objects in the store, by vid. */
async function dataObjects (objects: LocalObjectStore): Promise<Map<number, number>> {
  const out = new Map<number, number>()
  for await (const info of objects.list()) {
    if (oidType(info.oid) !== ObjectType.Data) continue
    out.set(oidVid(info.oid), (out.get(oidVid(info.oid)) ?? 0) + 1)
  }
  return out
}

async function countData (objects: LocalObjectStore): Promise<number> {
  let n = 0
  for (const c of (await dataObjects(objects)).values()) n += c
  return n
}

/** copy_file_range as the adapter calls it, looping like a caller until len or the source's end. */
async function copy (images: ImageStore, src: Image, srcPos: number, dst: Image, dstPos: number, len: number): Promise<number> {
  let done = 0
  while (done < len) {
    const n = await copyRange(images, { image: src, writable: false }, srcPos + done, { image: dst, writable: true }, dstPos + done, len - done)
    if (n === 0) break
    done += n
  }
  return done
}

/** a.img: 8 blocks and a half written with a pattern; b.img empty. */
async function twoImages (images: ImageStore): Promise<{ a: Image, b: Image, content: Buffer }> {
  const a = await images.create('a.img', 0, OPTS)
  const content = pattern(8 * OS + OS / 2, 1)
  await a.write(0, content)
  await a.sync()
  const b = await images.create('b.img', 0, OPTS)
  return { a, b, content }
}

t.test('a copy of a whole image shares every block: no data object is written', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { images, objects } = env
  const { a, b, content } = await twoImages(images)
  const vidBefore = a.vid
  const before = await countData(objects)
  t.equal(await copy(images, a, 0, b, 0, 2 * content.length), content.length, 'copies up to the source\'s end')
  t.equal(b.size, content.length, 'the copy grew to the source\'s size')
  t.ok((await readAll(b)).equals(content), 'the copy reads as the source')
  t.ok((await readAll(a)).equals(content), 'the source reads as before')
  t.equal(b.allocatedBytes, OS / 2, 'the copy owns only the half block copied as bytes')
  t.equal(await countData(objects), before + 1, 'one new data object: the half block at the end')
  t.not(a.vid, vidBefore, 'the source went on as a new inode')
  t.equal(a.allocatedBytes, 0, 'the source owns nothing now: its blocks are frozen')
  const frozen = images.tree().find(n => n.vid === vidBefore)
  t.equal(frozen?.kind, 'deleted snapshot', 'its old inode is kept hidden')
  t.match(frozen?.tag, /^copy@/)
  // A second copy of a frozen source freezes nothing more.
  const c = await images.create('c.img', 0, OPTS)
  const vidNow = a.vid
  await copy(images, a, 0, c, 0, content.length)
  t.equal(a.vid, vidNow, 'a source that owns nothing in the range is not frozen again')
  t.ok((await readAll(c)).equals(content))
})

t.test('a length past what a number holds exactly (coreutils asks for up to SSIZE_MAX) copies to the source\'s end', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { a, b, content } = await twoImages(env.images)
  t.equal(await copyRange(env.images, { image: a, writable: false }, 0, { image: b, writable: true }, 0, 2 ** 63 - 1), content.length)
  t.ok((await readAll(b)).equals(content))
  const err = await copyRange(env.images, { image: a, writable: false }, 2 ** 63, { image: b, writable: true }, 0, 1).catch((e: Error) => e)
  t.match(err, { code: 'EINVAL' }, 'an offset past 2^53 is refused')
})

t.test('writes to either side never show in the other; delete of either leaves the other intact; gc frees what nothing reads', async t => {
  const dir = tmpDir(t)
  let env = await openEnv(t, dir)
  const { a, b, content } = await twoImages(env.images)
  const frozen = a.vid
  await copy(env.images, a, 0, b, 0, content.length)
  // Copy-ups on both sides: a partial sub-block, a whole block, across a block boundary.
  const aWant = Buffer.from(content)
  const bWant = Buffer.from(content)
  const write = async (image: Image, want: Buffer, pos: number, data: Buffer): Promise<void> => {
    await image.write(pos, data)
    data.copy(want, pos)
  }
  await write(a, aWant, 100, pattern(300, 2))
  await write(b, bWant, 3 * OS + 5000, pattern(OS, 3))
  await write(b, bWant, 5 * OS, pattern(OS, 4))
  await write(a, aWant, 5 * OS - 10, pattern(20, 5))
  t.ok((await readAll(a)).equals(aWant), 'a reads its writes and the shared rest')
  t.ok((await readAll(b)).equals(bWant), 'b reads its writes and the shared rest')
  await a.sync()
  await b.sync()

  // A restart between steps: the frozen inode is kept, nothing is collected or set aside.
  await env.close()
  env = await openEnv(t, dir)
  t.equal(env.repairs, 0, 'a start after the copy repairs nothing')
  t.ok((await readAll(env.images.get('a.img'))).equals(aWant), 'a after a restart')
  t.ok((await readAll(env.images.get('b.img'))).equals(bWant), 'b after a restart')

  await env.images.remove('a.img')
  t.ok((await readAll(env.images.get('b.img'))).equals(bWant), 'b intact after a is deleted')
  t.ok(((await dataObjects(env.objects)).get(frozen) ?? 0) > 0, 'the frozen objects b reads are kept')
  // b overwrites every block it still shares: the next gc frees them all.
  const bImg = env.images.get('b.img')
  await bImg.write(0, Buffer.alloc(9 * OS, 0x5a))
  await bImg.sync()
  await env.close()
  env = await openEnv(t, dir)
  t.equal(env.repairs, 0)
  t.equal((await dataObjects(env.objects)).get(frozen) ?? 0, 0, 'nothing reads the frozen inode any more: gc freed it')
  t.notOk(env.images.tree().some(n => n.vid === frozen), 'and its entry')
  t.ok((await readAll(env.images.get('b.img'))).subarray(0, 9 * OS).equals(Buffer.alloc(9 * OS, 0x5a)))
})

t.test('deleting the copy first leaves the source intact; deleting both frees everything', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { a, b, content } = await twoImages(env.images)
  await copy(env.images, a, 0, b, 0, content.length)
  await b.write(OS, pattern(100, 9))
  await env.images.remove('b.img')
  t.ok((await readAll(env.images.get('a.img'))).equals(content), 'a intact after the copy is deleted')
  await env.images.remove('a.img')
  t.equal(await countData(env.objects), 0, 'no data object left')
  t.same(env.images.tree(), [], 'no inode left, hidden or not')
})

t.test('a copy onto blocks the destination owned frees them once the new entries are durable', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { a, b, content } = await twoImages(env.images)
  await b.write(0, Buffer.alloc(4 * OS, 0x33))
  await b.sync()
  await copy(env.images, a, OS, b, OS, 2 * OS)
  const want = Buffer.alloc(4 * OS, 0x33)
  content.copy(want, OS, OS, 3 * OS)
  t.ok((await readAll(b)).equals(want), 'only the copied blocks changed')
  t.equal((await dataObjects(env.objects)).get(b.vid), 2, 'blocks 1 and 2 of b were freed')
  t.equal(b.allocatedBytes, 2 * OS)
})

t.test('shrink, grow and discard on either side of a copy', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { images } = env
  const { a, b, content } = await twoImages(images)
  await copy(images, a, 0, b, 0, content.length)
  await images.resize('b.img', 2 * OS + 100)
  await images.resize('b.img', 4 * OS)
  const bWant = Buffer.alloc(4 * OS)
  content.copy(bWant, 0, 0, 2 * OS + 100)
  t.ok((await readAll(b)).equals(bWant), 'b: zeros past the cut after a grow')
  t.ok((await readAll(a)).equals(content), 'a untouched by b\'s shrink')
  await a.discard(OS / 2, 3 * OS)
  const aWant = Buffer.from(content)
  aWant.fill(0, OS / 2, OS / 2 + 3 * OS)
  t.ok((await readAll(a)).equals(aWant), 'a: the punched range reads zeros')
  t.ok((await readAll(b)).equals(bWant), 'b untouched by a\'s discard')
  await b.discard(0, 4 * OS)
  t.ok((await readAll(b)).equals(Buffer.alloc(4 * OS)), 'b: all zeros')
  t.ok((await readAll(a)).equals(aWant), 'a untouched by b\'s discard')
})

t.test('snapshots, rollback, clone and flatten of a copy', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { images } = env
  const { a, b, content } = await twoImages(images)
  await copy(images, a, 0, b, 0, content.length)
  await images.snapshot('b.img', 's1')
  await b.write(0, pattern(2 * OS, 7))
  t.ok((await readAll(images.getSnapshot('b.img', 's1'))).equals(content), 'the snapshot of the copy reads the copied bytes')
  const c = await images.clone('b.img', 's1', 'c.img')
  await images.rollback('b.img', 's1')
  t.ok((await readAll(images.get('b.img'))).equals(content), 'rolled back to the copy')
  await images.remove('a.img')
  await images.flatten('c.img')
  t.ok((await readAll(c)).equals(content), 'the clone, flattened, after the source is gone')
  t.equal(c.allocatedBytes, content.length)
  // A snapshot taken as the copy's source: frozen already, so nothing is frozen for it.
  const snap = images.getSnapshot('b.img', 's1')
  const d = await images.create('d.img', 0, OPTS)
  await copy(images, snap, 0, d, 0, content.length)
  t.ok((await readAll(d)).equals(content), 'a copy from a snapshot')
  t.equal(d.allocatedBytes, OS / 2)
})

t.test('a source written between copies is frozen again; object sizes that differ copy bytes; copies that differ do not', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { images } = env
  const { a, b, content } = await twoImages(images)
  await copy(images, a, 0, b, 0, 4 * OS)
  const first = a.vid
  await a.write(OS, pattern(OS, 8)) // a owns block 1 again
  await copy(images, a, 0, b, 0, 4 * OS)
  t.not(a.vid, first, 'frozen again')
  const want = Buffer.from(content.subarray(0, 4 * OS))
  pattern(OS, 8).copy(want, OS)
  t.ok((await readAll(b)).equals(want), 'the second copy has a\'s write')
  const big = await images.create('big.img', 0, { objectSize: 2 * OS, copies: 1 })
  await copy(images, a, 0, big, 0, 4 * OS)
  t.equal(big.allocatedBytes, 4 * OS, 'another object size: the bytes are copied')
  const three = await images.create('three.img', 0, { objectSize: OS, copies: 3 })
  await copy(images, a, 0, three, 0, 4 * OS)
  t.equal(three.allocatedBytes, 0, 'more copies than the source keeps: shared all the same, as a clone\'s blocks are')
  t.ok((await readAll(three)).equals(want))
})

t.test('seeded unaligned ranges, between images and within one, equal a model', async t => {
  const env = await openEnv(t, tmpDir(t))
  const { images } = env
  const rng = new Rng(20261206)
  const size = 12 * OS
  const names = ['x.img', 'y.img']
  const model = new Map<string, Buffer>()
  for (const [i, name] of names.entries()) {
    const image = await images.create(name, size, OPTS)
    const data = pattern(size, 20 + i)
    data.fill(0, 3 * OS, 5 * OS) // a hole in each
    await image.write(0, data)
    model.set(name, data)
  }
  for (let step = 0; step < 60; step++) {
    const from = names[rng.int(0, 1)] as string
    const to = names[rng.int(0, 1)] as string
    const aligned = rng.int(0, 2) === 0
    const srcPos = aligned ? rng.int(0, 10) * OS : rng.int(0, size - 1)
    const dstPos = from !== to && rng.int(0, 1) === 0 ? srcPos : rng.int(0, size - 1)
    let len = rng.int(1, 6 * OS)
    // Overlapping ranges within one file are refused by the kernel (EINVAL) before they reach us.
    if (from === to && srcPos < dstPos + len && dstPos < srcPos + len) continue
    len = Math.min(len, size - srcPos, size - dstPos)
    const src = model.get(from) as Buffer
    const dst = model.get(to) as Buffer
    const moved = Buffer.from(src.subarray(srcPos, srcPos + len))
    moved.copy(dst, dstPos)
    t.equal(await copy(images, images.get(from), srcPos, images.get(to), dstPos, len), len)
    // Writes after the copy land on one side only.
    const w = rng.int(0, size - 512)
    const bytes = pattern(512, step)
    await images.get(to).write(w, bytes)
    bytes.copy(dst, w)
  }
  for (const name of names) t.ok((await readAll(images.get(name))).equals(model.get(name) as Buffer), `${name} equals the model`)
})

/** Two hosts' image stores over one object store, with write tokens between them. */
async function twoHosts (t: Teardownable): Promise<{ objects: LocalObjectStore, h1: ImageStore, h2: ImageStore }> {
  const objects = new LocalObjectStore(tmpDir(t))
  await objects.open()
  t.teardown(async () => await objects.close())
  const stores = new Map<string, () => ImageStore>([['h1', () => h1], ['h2', () => h2]])
  const shared = new SharedTokens(objects, stores)
  const h1: ImageStore = new ImageStore(objects, { soleWriter: false, tokens: shared.forStore('h1') })
  const h2: ImageStore = new ImageStore(objects, { soleWriter: false, tokens: shared.forStore('h2') })
  await h1.open()
  await h2.open()
  return { objects, h1, h2 }
}

t.test('write tokens: a source open for writing on another host is copied as bytes; once closed, it is frozen and its new writes go to new objects', async t => {
  const { objects, h1, h2 } = await twoHosts(t)
  await h1.create('vm.img', 4 * OS, OPTS)
  const writer = await h1.acquire('vm.img', true)
  await h1.io(writer, true, async () => await writer.write(0, pattern(4 * OS, 1)))
  await h1.io(writer, true, async () => await writer.flush())
  await h2.refresh()
  await h2.create('copy.img', 0, OPTS)
  const out = await h2.acquire('copy.img', true)
  const src = await h2.acquire('vm.img', false)
  const n = await copyRange(h2, { image: src, writable: false }, 0, { image: out, writable: true }, 0, 4 * OS)
  t.equal(n, 4 * OS)
  t.equal(out.allocatedBytes, 4 * OS, 'the writer on h1 refused the freeze (EBUSY): the bytes were copied')
  t.ok(writer.token.held, 'h1 kept its token')
  await h1.io(writer, true, async () => await writer.write(0, pattern(OS, 2)))
  await h2.closeImage(src)
  await h1.closeImage(writer, true)

  // Closed on h1: h2 freezes it (taking its token) and shares.
  const src2 = await h2.acquire('vm.img', false)
  const frozen = src2.vid
  await h2.create('copy2.img', 0, OPTS)
  const out2 = await h2.acquire('copy2.img', true)
  await copyRange(h2, { image: src2, writable: false }, 0, { image: out2, writable: true }, 0, 4 * OS)
  t.equal(out2.allocatedBytes, 0, 'shared')
  t.not(src2.vid, frozen, 'frozen on h2')
  const want = pattern(4 * OS, 1)
  pattern(OS, 2).copy(want)
  t.ok((await readAll(out2)).equals(want), 'the copy has the writer\'s last write')
  await h2.closeImage(src2)
  await h2.closeImage(out2, true)
  await h2.closeImage(out, true)

  // h1 writes again, without a poll of the directory first: its open finds the new inode, takes
  // the token back, and copies up.
  const again = await h1.acquire('vm.img', true)
  t.equal(again.vid, src2.vid, 'h1 opens the image as the new inode')
  await h1.io(again, true, async () => await again.write(2 * OS, pattern(OS, 3)))
  await h1.io(again, true, async () => await again.flush())
  await h1.closeImage(again, true)
  await h2.refresh()
  const check = await h2.acquire('copy2.img', false)
  t.ok((await readAll(check)).equals(want), 'h1\'s write after the copy does not show in it')
  await h2.closeImage(check)
  const objectsOfFrozen = (await dataObjects(objects)).get(frozen) ?? 0
  t.equal(objectsOfFrozen, 4, 'the frozen objects were never written in place, nor freed')
  await h1.close()
  await h2.close()
})

t.test('two hosts: gc on a host that has the copy open from before it was written keeps what the copy shares', async t => {
  const { h1, h2 } = await twoHosts(t)
  await h1.create('vm.img', 4 * OS, OPTS)
  await h1.create('copy.img', 4 * OS, OPTS)
  await h1.create('other.img', OS, OPTS)
  const content = pattern(4 * OS, 5)
  const writer = await h1.acquire('vm.img', true)
  await h1.io(writer, true, async () => await writer.write(0, content))
  await h1.closeImage(writer, true)
  // h1 reads copy.img (still empty) through a handle it keeps open: its table here stays as loaded.
  const reader = await h1.acquire('copy.img', false)
  // h2 copies vm.img into copy.img (vm.img's blocks are frozen and shared), then overwrites vm.img:
  // the frozen blocks are now read by copy.img alone.
  await h2.refresh()
  const src = await h2.acquire('vm.img', false)
  const dst = await h2.acquire('copy.img', true)
  await copyRange(h2, { image: src, writable: false }, 0, { image: dst, writable: true }, 0, 4 * OS)
  t.equal(dst.allocatedBytes, 0, 'shared')
  await h2.closeImage(src)
  await h2.closeImage(dst, true)
  const w2 = await h2.acquire('vm.img', true)
  await h2.io(w2, true, async () => await w2.write(0, pattern(4 * OS, 6)))
  await h2.closeImage(w2, true)
  // A delete on h1 runs its gc, which sees the frozen inode hidden and copy.img as h1 loaded it.
  await h1.refresh()
  await h1.remove('other.img')
  await h1.closeImage(reader)
  await h1.refresh()
  const check = await h1.acquire('copy.img', false)
  t.ok((await readAll(check)).equals(content), 'copy.img still reads what was copied: its shared blocks were not freed')
  await h1.closeImage(check)
  await h1.close()
  await h2.close()
})
