// Power cuts at random moments under the image layer (issue 15: "fsync'ed writes lost after a
// crash: make it impossible, not unlikely"). An ImageStore runs on a PowerCutStore
// (test/helpers/power-cut-store.ts), an in-memory disk with a volatile cache; random cycles of
// guest writes, fsyncs, flushes (closes) and metadata operations, some issued together so they
// interleave, end in a power cut, sometimes with calls still in flight. A new ImageStore opens
// what the cut left and must show:
// - every byte a completed fsync acknowledged (and no later acknowledged write replaced), exactly;
//   any byte written after it, either its old or its new value (candidates per 512-byte sector,
//   compared byte by byte);
// - a size the image had since its last guarantee (fsync, resize, snapshot, create, clone);
// - every metadata operation that resolved (create, resize, snapshot, clone, rename, delete,
//   snapshot delete); one in flight at the cut, either all of it or none of it;
// - no error from open(), no image it cannot read.
// The model is then reset to what was read, and the next cycle goes on from there.
//
// The seed is printed; SHEEP_TEST_SEED=<n> replays a run, SHEEP_TEST_CYCLES=<n> sets its length.
// Deterministic: the stores' delays come from the seed, and image ids (crypto.randomInt in
// image-store.ts) are drawn from it too while this test runs.

import t from 'tap'
import crypto from 'node:crypto'
import { ImageStore } from '../../src/cow/image-store'
import type { Image } from '../../src/cow/image'
import { oidToHex, type ObjectId } from '../../src/objects/oid'
import { SheepError } from '../../src/errors'
import { PowerCutStore } from '../helpers/power-cut-store'
import { Rng } from '../helpers/random'
import { settle } from './tmp'

const KiB = 1024
const OS = 64 * KiB // the smallest object size: 1 KiB sub-blocks, many blocks per image
const SECTOR = 512
const MAX_SIZE = 3 * OS + OS / 2
const NAMES = ['a', 'b', 'c', 'd']
const MAX_SNAPSHOTS = 5
const CYCLES = Number(process.env.SHEEP_TEST_CYCLES ?? '') || 2500
const ZERO_SECTOR = Buffer.alloc(SECTOR)

// ---- the model ----

/** One value a sector or size had, and the write that gave it (0: known durable). */
interface Cand<T> { v: T, w: number }

/**
 * The values something had since its guarantee point: cands[0] is on disk for sure, the last is
 * current. A completed sync moves the guarantee to the newest value acknowledged before it began.
 */
class Hist<T> {
  cands: Array<Cand<T>>
  base = 0
  constructor (v: T) { this.cands = [{ v, w: 0 }] }
  get current (): T { return (this.cands[this.cands.length - 1] as Cand<T>).v }
  push (v: T, w: number): void { this.cands.push({ v, w }) }
  /** Absolute index of the newest value whose write was acknowledged. */
  ackedMark (acked: Set<number>): number {
    for (let i = this.cands.length - 1; i > 0; i--) if (acked.has((this.cands[i] as Cand<T>).w)) return this.base + i
    return this.base
  }

  guarantee (mark: number): void {
    const k = mark - this.base
    if (k <= 0) return
    this.cands.splice(0, k)
    this.base = mark
  }

  copy (): Hist<T> {
    const h = new Hist<T>(this.current)
    h.cands = this.cands.map(c => ({ ...c }))
    h.base = this.base
    return h
  }

  /** Nothing older than the current value can come back. */
  collapse (): void { this.guarantee(this.base + this.cands.length - 1) }
}

interface ImageModel { size: number, sizes: Hist<number>, sectors: Array<Hist<Buffer>> }
interface World { images: Map<string, ImageModel>, snaps: Map<string, Buffer> }

const snapKey = (name: string, tag: string): string => `${name}@${tag}`

function imageFrom (content: Buffer): ImageModel {
  const sectors: Array<Hist<Buffer>> = []
  // Views of content, which nothing changes (values are never changed in place).
  for (let off = 0; off < content.length; off += SECTOR) {
    if (off + SECTOR <= content.length) { sectors.push(new Hist(content.subarray(off, off + SECTOR))); continue }
    const b = Buffer.alloc(SECTOR)
    content.copy(b, 0, off)
    sectors.push(new Hist(b))
  }
  return { size: content.length, sizes: new Hist(content.length), sectors }
}

function content (m: ImageModel): Buffer {
  const out = Buffer.alloc(m.size)
  m.sectors.forEach((h, s) => h.current.copy(out, s * SECTOR, 0, Math.min(SECTOR, m.size - s * SECTOR)))
  return out
}

function copyWorld (w: World): World {
  const images = new Map<string, ImageModel>()
  for (const [name, m] of w.images) images.set(name, { size: m.size, sizes: m.sizes.copy(), sectors: m.sectors.map(h => h.copy()) })
  return { images, snaps: new Map(w.snaps) }
}

/** The image grows like a file: new sectors read as zeros. */
function growModel (m: ImageModel, size: number, w: number): void {
  if (size <= m.size) return
  while (m.sectors.length * SECTOR < size) m.sectors.push(new Hist(ZERO_SECTOR))
  m.size = size
  m.sizes.push(size, w)
}

/** A write as issued: the image grows at once, each sector it touches gains a candidate value. */
function issueWrite (m: ImageModel, pos: number, data: Buffer, w: number): void {
  const end = pos + data.length
  growModel(m, end, w)
  for (let s = Math.floor(pos / SECTOR); s * SECTOR < end; s++) {
    const h = m.sectors[s] as Hist<Buffer>
    const b = Buffer.from(h.current)
    const from = Math.max(pos, s * SECTOR)
    const to = Math.min(end, (s + 1) * SECTOR)
    data.copy(b, from - s * SECTOR, from - pos, to - pos)
    h.push(b, w)
  }
}

interface SyncMarks { m: ImageModel, sectors: Array<[Hist<Buffer>, number]>, size: number }

function syncMarks (m: ImageModel, acked: Set<number>): SyncMarks {
  return { m, sectors: m.sectors.map(h => [h, h.ackedMark(acked)]), size: m.sizes.ackedMark(acked) }
}

function applyMarks (marks: SyncMarks): void {
  for (const [h, mark] of marks.sectors) h.guarantee(mark)
  marks.m.sizes.guarantee(marks.size)
}

/** A resize that returned: durable, with zeros past a shrink. */
function resizeModel (m: ImageModel, size: number): void {
  if (size > m.size) {
    growModel(m, size, 0)
  } else {
    m.sectors.length = Math.ceil(size / SECTOR)
    const cut = size % SECTOR
    const last = m.sectors[m.sectors.length - 1]
    if (cut !== 0 && last !== undefined) {
      for (const c of last.cands) { const b = Buffer.from(c.v); b.fill(0, cut); c.v = b }
    }
    m.size = size
  }
  m.sizes = new Hist(size)
}

/** Every value is on disk (a snapshot synced the image first; a new inode was written). */
function collapse (m: ImageModel): void {
  for (const h of m.sectors) h.collapse()
  m.sizes.collapse()
}

function deleteModel (w: World, name: string): void {
  w.images.delete(name)
  for (const key of [...w.snaps.keys()]) if (key.startsWith(`${name}@`)) w.snaps.delete(key)
}

function renameModel (w: World, from: string, to: string): void {
  deleteModel(w, to)
  w.images.set(to, w.images.get(from) as ImageModel)
  w.images.delete(from)
  for (const [key, c] of [...w.snaps]) {
    if (!key.startsWith(`${from}@`)) continue
    w.snaps.delete(key)
    w.snaps.set(`${to}@${key.slice(from.length + 1)}`, c)
  }
}

// ---- checking what a restart finds ----

async function readWhole (read: (pos: number, len: number, buf: Buffer) => Promise<number>, size: number): Promise<Buffer> {
  const buf = Buffer.alloc(size)
  const n = await read(0, size, buf)
  if (n !== size) throw new Error(`read ${n} bytes of ${size}`)
  return buf
}

async function checkWorld (images: ImageStore, w: World): Promise<string | null> {
  const names = images.names()
  const expected = [...w.images.keys()].sort()
  if (names.join() !== expected.join()) return `images are [${names.join(' ')}], expected [${expected.join(' ')}]`
  const problems = images.problems()
  if (problems.length > 0) return `unreadable: ${problems.join('; ')}`
  for (const [name, m] of w.images) {
    const image = images.get(name)
    const sizes = m.sizes.cands.map(c => c.v)
    if (!sizes.includes(image.size)) return `${name}: size ${image.size}, expected one of [${sizes.join(' ')}]`
    let actual: Buffer
    try {
      actual = await readWhole(async (p, l, b) => await image.read(p, l, b), image.size)
    } catch (err) {
      return `${name}: read failed: ${(err as SheepError).code ?? ''} ${(err as Error).message}`
    }
    for (let s = 0; s * SECTOR < image.size; s++) {
      const got = actual.subarray(s * SECTOR, Math.min(image.size, (s + 1) * SECTOR))
      const h = m.sectors[s]
      if (h === undefined) return `${name}: sector ${s} is past every size the model knows`
      if (h.cands.some(c => c.v.subarray(0, got.length).equals(got))) continue
      for (let i = 0; i < got.length; i++) {
        if (h.cands.some(c => c.v[i] === got[i])) continue
        const at = s * SECTOR + i
        return `${name}: byte ${at} (${describeBlock(images, image, Math.floor(at / OS))}, sector ${s}) is ${got[i]}, expected one of ` +
          `[${h.cands.map(c => `${c.v[i]}${c.w === 0 ? '(durable)' : `(w${c.w})`}`).join(' ')}]; ` +
          `sector reads ${hexStart(got, i)}, the acknowledged value ${hexStart(h.cands[0]?.v ?? ZERO_SECTOR, i)}`
      }
    }
  }
  const snaps = new Map<string, Buffer | Error>()
  for (const folder of images.snapshotFolders()) {
    for (const snap of images.snapshotsOf(folder)) {
      try {
        snaps.set(snapKey(folder, snap.header.tag), await readWhole(async (p, l, b) => await snap.read(p, l, b), snap.size))
      } catch (err) {
        snaps.set(snapKey(folder, snap.header.tag), err as Error)
      }
    }
  }
  const got = [...snaps.keys()].sort().join(' ')
  const want = [...w.snaps.keys()].sort().join(' ')
  if (got !== want) return `snapshots are [${got}], expected [${want}]`
  for (const [key, c] of w.snaps) {
    const actual = snaps.get(key) as Buffer | Error
    if (actual instanceof Error) return `snapshot ${key}: read failed: ${actual.message}`
    if (!actual.equals(c)) return `snapshot ${key}: ${describeDiff(actual, c)}`
  }
  return null
}

/** Where a block reads from, for failure reports: the owner entry and the inodes it names. */
function describeBlock (images: ImageStore, image: Image, idx: number): string {
  const t = image.owners
  const who = (vid: number): string => {
    const node = images.tree().find(n => n.vid === vid)
    return `${vid.toString(16)}${node === undefined ? '' : ` ${node.name}${node.tag === '' ? '' : `@${node.tag}`}${node.kind === 'deleted snapshot' ? ' (deleted)' : ''}`}`
  }
  const present = t.owner(idx) === 0 ? '' : t.isFull(idx) ? ' full' : ` ${t.presentCount(idx)} sub-blocks present, backing ${who(t.backing(idx))}`
  return `block ${idx} of ${who(image.vid)}: owner ${who(t.owner(idx))}${present}`
}

function hexStart (b: Buffer, i: number): string {
  return `…${b.subarray(Math.max(0, i - 2), i + 6).toString('hex')}`
}

function describeDiff (got: Buffer, want: Buffer): string {
  if (got.length !== want.length) return `size ${got.length}, expected ${want.length}`
  let i = 0
  while (i < got.length && got[i] === want[i]) i++
  return `byte ${i} (block ${Math.floor(i / OS)}) is ${got[i] ?? '-'}, expected ${want[i] ?? '-'}`
}

/** The model as a restart found it: exact, all durable. */
async function worldFrom (images: ImageStore): Promise<World> {
  const w: World = { images: new Map(), snaps: new Map() }
  for (const image of images.list()) {
    w.images.set(image.name, imageFrom(await readWhole(async (p, l, b) => await image.read(p, l, b), image.size)))
  }
  for (const folder of images.snapshotFolders()) {
    for (const snap of images.snapshotsOf(folder)) {
      w.snaps.set(snapKey(folder, snap.header.tag), await readWhole(async (p, l, b) => await snap.read(p, l, b), snap.size))
    }
  }
  return w
}

// ---- the run ----

interface Stats { cycles: number, crashesInFlight: number, inFlightMeta: number, setAside: number, ops: Record<string, number>, maxInFlight: number }

interface Outcome { error: string | null, log: string[], stats: Stats }

/** Cycles of operations a failure report shows (SHEEP_TEST_HISTORY). */
const HISTORY = Number(process.env.SHEEP_TEST_HISTORY ?? '') || 4

/** A metadata operation: what it does to the model when it returns, and the call itself. */
interface MetaOp { what: string, apply: (w: World) => void, run: (images: ImageStore) => Promise<unknown>, before?: (w: World) => void }

async function run (seed: number, cycles: number): Promise<Outcome> {
  const rng = new Rng(seed)
  const stats: Stats = { cycles: 0, crashesInFlight: 0, inFlightMeta: 0, setAside: 0, ops: {}, maxInFlight: 0 }
  let log: string[] = []
  const history: string[][] = []
  const count = (op: string): void => { stats.ops[op] = (stats.ops[op] ?? 0) + 1 }
  const POOL = rng.bytes(2 * MAX_SIZE)
  let store = new PowerCutStore(rng.int(1, 2 ** 31))
  const asides: ObjectId[] = []
  const openStore = async (objects: PowerCutStore): Promise<ImageStore> => {
    const images = new ImageStore(objects, {
      soleWriter: true,
      setAside: async oid => { asides.push(oid); return await objects.setAside(oid) }
    })
    await images.open()
    return images
  }
  let images = await openStore(store)
  let world: World = { images: new Map(), snaps: new Map() }
  const acked = new Set<number>([0])
  let nextWrite = 1
  let nextTag = 1
  /**
   * Bumped by each power cut. The ImageStore that was running keeps going for a few microtask
   * turns after the cut (on a dead store, whose calls never settle): what it answers then was
   * never answered before the cut, and must not change the model.
   */
  let generation = 0
  const live = <A extends unknown[]>(fn: (...args: A) => void) => {
    const gen = generation
    return (...args: A): void => { if (gen === generation) fn(...args) }
  }
  /** A call failed: the first failure ends the run. */
  let failure: string | null = null
  const fail = (what: string) => (err: unknown): void => {
    failure ??= `${what} failed: ${(err as SheepError).code ?? ''} ${(err as Error).stack ?? String(err)}`
  }

  const write = (name: string, pos: number, data: Buffer): Promise<void> => {
    const w = nextWrite++
    const m = world.images.get(name) as ImageModel
    log.push(`write ${name} [${pos}, ${pos + data.length}) w${w}${isZero(data) ? ' zeros' : ''}`)
    issueWrite(m, pos, data, w)
    count('write')
    const image = images.get(name)
    return images.io(image, true, async () => await image.write(pos, data))
      .then(live(() => { acked.add(w); log.push(`  w${w} acknowledged`) }), live(fail(`write w${w}`)))
  }
  const fsync = (name: string): Promise<void> => {
    const marks = syncMarks(world.images.get(name) as ImageModel, acked)
    const id = nextWrite++
    log.push(`fsync ${name} #${id}`)
    count('fsync')
    const image = images.get(name)
    return images.writeOut(image, async () => await image.sync())
      .then(live(() => { applyMarks(marks); log.push(`  fsync #${id} returned`) }), live(fail(`fsync ${name}`)))
  }
  const flush = (name: string): Promise<void> => {
    const id = nextWrite++
    log.push(`flush ${name} #${id}`)
    count('flush')
    const image = images.get(name)
    return images.writeOut(image, async () => await image.flush())
      .then(live(() => { log.push(`  flush #${id} returned`) }), live(fail(`flush ${name}`)))
  }

  const randomWrite = (name: string, batch?: Set<number>): Promise<void> | null => {
    const m = world.images.get(name) as ImageModel
    let pos: number
    let len: number
    for (let tries = 0; ; tries++) {
      if (tries > 10) return null
      const kind = rng.int(0, 9)
      len = kind < 3 ? rng.int(1, 4 * KiB) : kind < 6 ? rng.int(1, OS + OS / 2) : SECTOR * rng.int(1, 64)
      if (rng.chance(0.25)) pos = Math.max(0, m.size - rng.int(0, 2 * KiB)) + rng.int(0, OS) // at or past the end
      else pos = rng.int(0, Math.max(0, m.size - 1))
      if (kind >= 6) pos -= pos % SECTOR
      if (pos + len > MAX_SIZE) len = MAX_SIZE - pos
      if (len <= 0) continue
      // Writes issued together touch different sectors: their order is the guest's business.
      if (batch !== undefined) {
        const sectors = range(Math.floor(pos / SECTOR), Math.floor((pos + len - 1) / SECTOR))
        if (sectors.some(s => batch.has(s))) continue
        for (const s of sectors) batch.add(s)
      }
      break
    }
    // Slices of one random pool at random places: cheap, and two writes rarely carry the same bytes.
    const from = rng.int(0, POOL.length - len)
    const data = rng.chance(0.1) ? Buffer.alloc(len) : Buffer.from(POOL.subarray(from, from + len))
    return write(name, pos, data)
  }

  /** Writes, fsyncs and flushes issued without waiting for each other. */
  const batch = (): Array<Promise<void>> => {
    const names = [...world.images.keys()]
    const name = rng.pick(names)
    const sectors = new Map<string, Set<number>>()
    const calls: Array<Promise<void>> = []
    const n = rng.int(2, 5)
    for (let i = 0; i < n; i++) {
      // Mostly one image: the interleavings inside one Image are the point.
      const target = rng.chance(0.8) ? name : rng.pick(names)
      const k = rng.int(0, 9)
      if (k < 4) {
        let set = sectors.get(target)
        if (set === undefined) { set = new Set(); sectors.set(target, set) }
        const p = randomWrite(target, set)
        if (p !== null) calls.push(p)
      } else if (k < 8) {
        calls.push(fsync(target))
      } else {
        calls.push(flush(target))
      }
    }
    return calls
  }

  const metaOp = (): MetaOp | null => {
    const names = [...world.images.keys()]
    const free = NAMES.filter(n => !world.images.has(n))
    const k = rng.int(0, 9)
    if (names.length === 0 || (k === 0 && free.length > 0)) {
      const name = rng.pick(free)
      const size = rng.chance(0.3) ? 0 : rng.int(1, MAX_SIZE)
      return { what: `create ${name} ${size}`, apply: w => { w.images.set(name, imageFrom(Buffer.alloc(size))) }, run: async i => await i.create(name, size, { objectSize: OS, copies: 1 }) }
    }
    const name = rng.pick(names)
    const m = world.images.get(name) as ImageModel
    if (k <= 3) {
      const size = rng.chance(0.5) ? rng.int(0, m.size) : rng.int(0, MAX_SIZE)
      const old = m.size
      return {
        what: `resize ${name} ${old} -> ${size}`,
        apply: w => { resizeModel(w.images.get(name) as ImageModel, size) },
        run: async i => await i.resize(name, size),
        // Not returned yet: a shrink may have zeroed its cut block's tail already (and synced it).
        before: w => {
          const mm = w.images.get(name) as ImageModel
          if (size >= old) return
          const blockEnd = Math.min(old, Math.ceil(size / OS) * OS)
          for (let s = Math.floor(size / SECTOR); s * SECTOR < blockEnd; s++) {
            const h = mm.sectors[s] as Hist<Buffer>
            const b = Buffer.from(h.current)
            b.fill(0, Math.max(0, size - s * SECTOR))
            h.push(b, -1)
          }
        }
      }
    }
    if (k <= 5) {
      if (world.snaps.size >= MAX_SNAPSHOTS) {
        const key = rng.pick([...world.snaps.keys()])
        const [sn, tag] = key.split('@') as [string, string]
        return { what: `delete snapshot ${key}`, apply: w => { w.snaps.delete(key) }, run: async i => await i.deleteSnapshot(sn, tag) }
      }
      const tag = `s${nextTag++}`
      return {
        what: `snapshot ${name}@${tag}`,
        apply: w => { const mm = w.images.get(name) as ImageModel; collapse(mm); w.snaps.set(snapKey(name, tag), content(mm)) },
        run: async i => await i.snapshot(name, tag)
      }
    }
    if (k === 6 && world.snaps.size > 0 && free.length > 0) {
      const key = rng.pick([...world.snaps.keys()])
      const [sn, tag] = key.split('@') as [string, string]
      const to = rng.pick(free)
      return { what: `clone ${key} -> ${to}`, apply: w => { w.images.set(to, imageFrom(w.snaps.get(key) as Buffer)) }, run: async i => await i.clone(sn, tag, to, { copies: 1 }) }
    }
    if (k === 7) {
      const to = rng.chance(0.3) ? rng.pick(NAMES) : (free.length > 0 ? rng.pick(free) : rng.pick(NAMES))
      if (to === name) return null
      const replace = world.images.has(to)
      return { what: `rename ${name} -> ${to}${replace ? ' (replacing)' : ''}`, apply: w => { renameModel(w, name, to) }, run: async i => await i.rename(name, to, { replace }) }
    }
    if (k === 8 && names.length > 1) return { what: `delete ${name}`, apply: w => { deleteModel(w, name) }, run: async i => await i.remove(name) }
    return null
  }

  try {
    for (let cycle = 0; cycle < cycles; cycle++) {
      stats.cycles = cycle + 1
      // The last few cycles: a failure may come from what an earlier cycle's cut left.
      history.push(log)
      if (history.length > HISTORY) history.shift()
      log = [`cycle ${cycle}`]
      asides.length = 0
      // Steps, each waited for; then the last, cut short by the power cut.
      const steps = rng.int(0, 6)
      for (let step = 0; step <= steps; step++) {
        const last = step === steps
        const k = world.images.size === 0 ? 0 : rng.int(0, 9)
        let calls: Array<Promise<unknown>>
        let worlds: World[] | null = null
        let metaReturned = false
        if (k <= 1) {
          const op = metaOp()
          if (op === null) { step--; continue }
          count(op.what.split(' ')[0] as string)
          log.push(op.what)
          if (last) {
            // In flight at the cut: all of it or none of it.
            const before = copyWorld(world)
            op.before?.(before)
            const after = copyWorld(world)
            op.apply(after)
            worlds = [before, after]
            calls = [op.run(images).then(live(() => { metaReturned = true; log.push(`  ${op.what} returned`) }), live(fail(op.what)))]
            world = after
          } else {
            calls = [op.run(images).then(() => { op.apply(world); log.push(`  ${op.what} returned`) }, fail(op.what))]
          }
        } else if (k <= 4) {
          const p = randomWrite(rng.pick([...world.images.keys()]))
          calls = p === null ? [] : [p]
        } else if (k <= 6) {
          calls = [fsync(rng.pick([...world.images.keys()]))]
        } else if (k === 7) {
          calls = [flush(rng.pick([...world.images.keys()]))]
        } else {
          calls = batch()
        }
        if (!last) {
          await Promise.all(calls)
          if (failure !== null) return { error: failure, log: [...history.flat(), ...log], stats }
          continue
        }
        // The power cut: at once, after some turns of the event loop's microtasks, or after all.
        const wait = rng.int(0, 3)
        if (wait === 3) await Promise.all(calls)
        else await settle(wait === 0 ? 0 : rng.int(1, wait === 1 ? 40 : 300))
        if (failure !== null) return { error: failure, log: [...history.flat(), ...log], stats }
        const inFlight = store.inFlight
        stats.maxInFlight = Math.max(stats.maxInFlight, inFlight)
        if (inFlight > 0) stats.crashesInFlight++
        // A metadata call that returned before the cut: its "after" world only.
        const returned = metaReturned
        if (worlds !== null && !returned) stats.inFlightMeta++
        log.push(`POWER CUT (${inFlight} store calls in flight)`)
        generation++
        store = store.crash(rng)
        try {
          images = await openStore(store)
        } catch (err) {
          return { error: `open after the cut failed: ${(err as SheepError).code ?? ''} ${(err as Error).stack ?? String(err)}`, log: [...history.flat(), ...log], stats }
        }
        stats.setAside += asides.length
        if (asides.length > 0) log.push(`open set aside ${asides.map(oidToHex).join(' ')}`)
        const candidates = worlds === null || returned ? [world] : worlds
        let problem: string | null = null
        for (const w of candidates) {
          problem = await checkWorld(images, w)
          if (problem === null) break
        }
        if (problem !== null) return { error: `after the power cut: ${problem}`, log: [...history.flat(), ...log], stats }
        world = await worldFrom(images)
      }
    }
  } catch (err) {
    return { error: `${(err as SheepError).code ?? ''} ${(err as Error).stack ?? String(err)}`, log: [...history.flat(), ...log], stats }
  }
  return { error: null, log, stats }
}

function range (a: number, b: number): number[] {
  const out: number[] = []
  for (let i = a; i <= b; i++) out.push(i)
  return out
}

function isZero (b: Buffer): boolean {
  for (const x of b) if (x !== 0) return false
  return true
}

t.test('power cuts at random moments lose no fsynced byte and no returned metadata operation', async t => {
  const given = process.env.SHEEP_TEST_SEED
  const seed = given !== undefined && given !== '' ? Number(given) : crypto.randomInt(1, 2 ** 31)
  if (!Number.isInteger(seed)) { t.fail(`SHEEP_TEST_SEED must be an integer, got ${JSON.stringify(given)}`); return }
  // Image ids from the seed too, so that a replay makes the same calls in the same order.
  const realRandomInt = crypto.randomInt
  const vids = new Rng(seed ^ 0x5eed)
  const seeded = (min: number, max?: number): number => max === undefined ? vids.int(0, min - 1) : vids.int(min, max - 1)
  Object.defineProperty(crypto, 'randomInt', { value: seeded, configurable: true, writable: true })
  t.teardown(() => { Object.defineProperty(crypto, 'randomInt', { value: realRandomInt, configurable: true, writable: true }) })
  const started = Date.now()
  const { error, log, stats } = await run(seed, CYCLES)
  const secs = ((Date.now() - started) / 1000).toFixed(1)
  t.comment(`seed ${seed}: ${stats.cycles} cycles in ${secs} s; ${stats.crashesInFlight} cuts with store calls in flight (at most ${stats.maxInFlight}), ` +
    `${stats.inFlightMeta} with a metadata operation in flight, ${stats.setAside} objects set aside; ${JSON.stringify(stats.ops)}`)
  if (error !== null) {
    t.comment(`operations of the last cycles (the seed replays them):\n  ${log.join('\n  ')}`)
    t.fail(`seed ${seed} (replay with SHEEP_TEST_SEED=${seed}), cycle ${stats.cycles - 1}: ${error}`)
  } else {
    t.pass(`seed ${seed}: ${stats.cycles} power cuts, every fsynced byte and every returned metadata operation survived each`)
  }
})
