// Snapshots, clones, rollback and flatten end to end: real daemons on real FUSE mounts, driven by
// the sheep command, qemu-img, qemu-io, setfattr/getfattr and plain file I/O through the mount.
//
// What the tests prove (DESIGN.md, "Images, objects and copy-on-write"):
//   - a snapshot reads the bytes the image had when it was taken, whatever is written afterwards,
//     down to sub-block (64 KiB) copy-up of a 4 KiB write and unaligned writes; it is read-only,
//     and a handle open on it never reads other bytes, even after the snapshot is deleted;
//   - chains of snapshot -> clone -> snapshot ... read right at every level, whatever the order in
//     which they are deleted, and deleting everything leaves no object behind;
//   - rollback restores the snapshot's bytes exactly and is refused while the image is written;
//   - flatten makes a clone independent of its parent;
//   - snapshot and clone are O(1): instant and near free on a 100 GiB image;
//   - a snapshot taken under a stream of guest writes holds every write acknowledged before it and
//     none issued after it, with no torn block;
//   - xattrs, listings, qemu-img on snapshot files; bad input gets one clear line and changes nothing.
// State checks repeated after every step ask the control socket directly (what `--json` prints);
// every operation under test goes through the sheep command, the mount or QEMU's tools.
//
// The cases run twice: against one daemon (./snapshots.test.ts) and against node 1 of a cluster
// of three (./cluster-snapshots.test.ts), whose mount and command they drive. A SnapshotEnv says
// what differs: which stores hold the objects (checks of object files look at all of them), how
// a restarted daemon is back, and how to stop and start again on copies of the stores.

import t from 'tap'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { Daemon, diskUsage, qemuImg, qemuIo, type RunResult, SHEEP_BIN, tempDir, waitFor } from '../helpers/daemon'
import { call } from '../../src/control/client'
import type { Op, Requests } from '../../src/control/messages'
import { controlSocketPath } from '../../src/control/paths'
import type { ImageInfo, SnapshotInfo, TreeNode } from '../../src/cow/image-store'

const KiB = 2 ** 10
const MiB = 2 ** 20
const GiB = 2 ** 30
const SUB_BLOCK = 64 * KiB // a 4 MiB object has 64 sub-blocks

type T = tap.Test

/** Starts what a case runs against (cleaned up when t ends); returns the daemon the case drives. */
export type Start = (t: T, args?: string[]) => Promise<Daemon>

/** What differs between one daemon and a cluster. */
export interface SnapshotEnv {
  /** Every daemon whose store may hold objects of d's images, d first: [d] on one host, every node of d's cluster. */
  nodes: (d: Daemon) => Daemon[]
  /** Called after `await d.stop(); await d.start()`: resolves once d serves as it did (on a cluster, once every node is in one view again). */
  restarted: (d: Daemon) => Promise<void>
  /** Stops d cleanly, and every other node of its cluster, so that their stores can be copied. */
  stopAll: (d: Daemon) => Promise<void>
  /** Starts on copies of the stores of d and its nodes, stopped with stopAll, each with the arguments it had; returns what stands for d. */
  startOnCopy: (t: T, d: Daemon) => Promise<Daemon>
  /**
   * Deletes the chain in every order (one host), or only in the one that adds something on a
   * cluster: loaded from disk by every node at once, middle first, with a restart halfway. Which
   * snapshots nothing reads through any more is the same question on both, and each order costs a
   * cluster about 20 s.
   */
  everyDeletionOrder: boolean
  /**
   * Every refused command of the bad-input case (one host), or on a cluster only those refused
   * at the directory's commit, where a replica could be left changed (names that exist): the
   * others are refused before any object is read, the same on both, at 2 s each on a cluster.
   */
  everyBadInput: boolean
}

// ---------------------------------------------------------------------------------------------
// helpers

/** Runs the sheep command against d; fails the test (with stderr) unless it exits 0. */
function sheepOk (t: T, d: Daemon, args: string[], what?: string): string {
  const r = d.sheep([...args, '--mount', d.mount])
  t.equal(r.code, 0, what ?? `sheep ${args.join(' ')}${r.code === 0 ? '' : `: ${r.stderr.trim()}`}`)
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** Runs the sheep command and measures its wall time. */
function timedSheep (d: Daemon, args: string[]): { r: RunResult, ms: number } {
  const start = performance.now()
  const r = d.sheep([...args, '--mount', d.mount])
  return { r, ms: performance.now() - start }
}

/** A failed command: non-zero exit, one line on stderr that starts with "sheep:" and matches re. */
function oneLineError (t: T, r: RunResult, re: RegExp, what: string): void {
  const err = r.stderr.trim()
  t.not(r.code, 0, `${what}: non-zero exit`)
  t.equal(err.split('\n').length, 1, `${what}: one line (${JSON.stringify(err)})`)
  t.match(err, /^sheep: /, `${what}: says it is sheep`)
  t.match(err, re, `${what}: says why`)
  t.notMatch(err, /unexpected error|\n\s+at /, `${what}: no stack trace`)
}

function snapPath (d: Daemon, name: string, tag: string): string {
  return path.join(d.mount, '.snapshots', name, tag)
}

function sha256 (file: string): string {
  const hash = crypto.createHash('sha256')
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(4 * MiB)
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null)
      if (n === 0) break
      hash.update(buf.subarray(0, n))
    }
  } finally {
    fs.closeSync(fd)
  }
  return hash.digest('hex')
}

/** Object files in one store (names are 16 hex digits: type, vid, index). */
function storeObjects (d: Daemon): string[] {
  const root = path.join(d.store, 'objects')
  const out: string[] = []
  for (const e of fs.readdirSync(root, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(e.name)
  }
  return out.sort()
}

/** Object ids in any of the stores, each once: on one host, the object files of its store. */
function objectFiles (stores: Daemon[]): string[] {
  return [...new Set(stores.flatMap(storeObjects))].sort()
}

/** The directory meta object, the one object an empty store keeps. */
const DIRECTORY_OBJECT = '2000000000000001'

/** Copies a cluster keeps of inodes and the directory (src/node.ts, METADATA_COPIES). */
const METADATA_COPIES = 3

/**
 * Every data object is in exactly min(copies, stores) of the stores, every inode and the
 * directory in min(METADATA_COPIES, stores): on one host, each object in its store once; on a
 * cluster, an image's --copies placed on that many nodes, no more, no fewer.
 */
function checkCopies (t: T, stores: Daemon[], copies: number, when: string): void {
  const held = new Map<string, number>()
  for (const d of stores) for (const oid of storeObjects(d)) held.set(oid, (held.get(oid) ?? 0) + 1)
  const want = (oid: string): number => Math.min(oid.startsWith('0') ? copies : METADATA_COPIES, stores.length)
  const wrong = [...held].filter(([oid, n]) => n !== want(oid)).map(([oid, n]) => `${oid} in ${n}`)
  t.same(wrong.slice(0, 10), [], `${when}: each of ${held.size} objects in as many stores as it should be (data ${Math.min(copies, stores.length)}, metadata ${want(DIRECTORY_OBJECT)}, of ${stores.length})${wrong.length > 10 ? `; ${wrong.length} wrong` : ''}`)
}


const imageList = (t: T, d: Daemon): ImageInfo[] => JSON.parse(sheepOk(t, d, ['image', 'list', '--json'], 'image list --json')) as ImageInfo[]
const snapshotList = (t: T, d: Daemon, name: string): SnapshotInfo[] => JSON.parse(sheepOk(t, d, ['snapshot', 'list', name, '--json'], `snapshot list ${name}`)) as SnapshotInfo[]
const tree = (t: T, d: Daemon): TreeNode[] => JSON.parse(sheepOk(t, d, ['image', 'tree', '--json'], 'image tree --json')) as TreeNode[]

/**
 * Asks the daemon over its control socket, as the command does (its --json output is this
 * answer verbatim): for state checks repeated after every step, where starting a node process
 * per query would make the tests slow.
 */
async function ask<K extends Op> (d: Daemon, op: K, args: Requests[K]['args']): Promise<Requests[K]['result']> {
  const saved = process.env.SHEEP_RUN_DIR
  process.env.SHEEP_RUN_DIR = d.runDir
  let socket: string
  try {
    socket = controlSocketPath(d.mount)
  } finally {
    if (saved === undefined) delete process.env.SHEEP_RUN_DIR
    else process.env.SHEEP_RUN_DIR = saved
  }
  return await call(socket, op, args)
}

/** A write the model applies: `len` bytes of `byte` at `off`. */
interface Write { off: number, len: number, byte: number }

function expected (size: number, writes: Write[]): Buffer {
  const b = Buffer.alloc(size)
  for (const w of writes) b.fill(w.byte, w.off, w.off + w.len)
  return b
}

/** Where the first difference between two buffers is, for a readable failure. */
function firstDiff (a: Buffer, b: Buffer): string {
  if (a.length !== b.length) return `length ${a.length} != ${b.length}`
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return `first difference at ${i}: 0x${(a[i] as number).toString(16)} != expected 0x${(b[i] as number).toString(16)}`
  }
  return 'equal'
}

function readsAs (t: T, file: string, want: Buffer, what: string): boolean {
  const got = fs.readFileSync(file)
  const ok = got.equals(want)
  t.ok(ok, ok ? `${what} reads right` : `${what}: ${firstDiff(got, want)}`)
  return ok
}

// ---------------------------------------------------------------------------------------------
// chain helpers (2.)

const CHAIN_DEPTH = 6 // images img0 .. img5, each with a snapshot: img5 reads through 5 snapshots
const CHAIN_SIZE = 8 * MiB // two 4 MiB objects, so levels share objects at sub-block level

interface ChainItem { name: string, tag: string, writes: Write[] }
const itemPath = (d: Daemon, i: ChainItem): string => i.tag === '' ? d.image(i.name) : snapPath(d, i.name, i.tag)
const itemLabel = (i: ChainItem): string => i.tag === '' ? i.name : `${i.name}@${i.tag}`

/**
 * Builds img0 -> img0@t0 -> img1 (clone) -> img1@t1 -> img2 ... Level i writes its own pattern
 * to its own range (unaligned, crossing sub-blocks, some crossing objects); after its snapshot,
 * image i also overwrites part of its own range and of its parent's range, which neither its
 * snapshot nor its descendants may see. Returns the items in creation order.
 */
function buildChain (t: T, d: Daemon): ChainItem[] {
  const items: ChainItem[] = []
  let inherited: Write[] = []
  sheepOk(t, d, ['image', 'create', 'img0', String(CHAIN_SIZE)])
  for (let i = 0; i < CHAIN_DEPTH; i++) {
    const name = `img${i}`
    if (i > 0) sheepOk(t, d, ['clone', `img${i - 1}@t${i - 1}`, name])
    const own: Write = { off: i * (MiB + 256 * KiB) + 123 * (i + 1), len: 600 * KiB + 77 * i, byte: 0x10 + i }
    qemuIo(d.image(name), [`write -P ${own.byte} ${own.off} ${own.len}`])
    const atSnapshot = [...inherited, own]
    sheepOk(t, d, ['snapshot', 'create', name, `t${i}`])
    const after: Write[] = [{ off: own.off + 100 * KiB + 1, len: 50 * KiB, byte: 0xa0 + i }]
    if (i > 0) after.push({ off: inherited[inherited.length - 1]!.off + 10 * KiB + 5, len: 20 * KiB, byte: 0xc0 + i })
    qemuIo(d.image(name), after.map(w => `write -P ${w.byte} ${w.off} ${w.len}`))
    items.push({ name, tag: '', writes: [...atSnapshot, ...after] }, { name, tag: `t${i}`, writes: atSnapshot })
    inherited = atSnapshot
  }
  return items
}

async function checkChain (t: T, d: Daemon, remaining: ChainItem[], when: string): Promise<void> {
  let ok = true
  for (const item of remaining) {
    const got = fs.readFileSync(itemPath(d, item))
    const want = expected(CHAIN_SIZE, item.writes)
    if (!got.equals(want)) { ok = false; t.fail(`${when}: ${itemLabel(item)}: ${firstDiff(got, want)}`) }
  }
  t.ok(ok, `${when}: all ${remaining.length} remaining images and snapshots read right`)
  const images = remaining.filter(i => i.tag === '').map(i => i.name).sort()
  const snapshots = remaining.filter(i => i.tag !== '').map(itemLabel).sort()
  t.same((await ask(d, 'image.list', {})).map(i => i.name).sort(), images, `${when}: image list`)
  const nodes = await ask(d, 'image.tree', {})
  t.same(nodes.filter(n => n.kind === 'snapshot').map(n => `${n.name}@${n.tag}`).sort(), snapshots, `${when}: snapshots in the tree`)
  t.same(fs.readdirSync(d.mount).filter(n => n !== '.snapshots').sort(), images, `${when}: ls of the mount`)
  const listed = fs.readdirSync(path.join(d.mount, '.snapshots')).flatMap(n => fs.readdirSync(path.join(d.mount, '.snapshots', n)).map(tag => `${n}@${tag}`))
  t.same(listed.sort(), snapshots, `${when}: ls of .snapshots`)
}

/** Deletes one item: an image (with its snapshots) or a snapshot. */
function deleteItem (t: T, d: Daemon, item: ChainItem): void {
  if (item.tag === '') sheepOk(t, d, ['image', 'delete', item.name])
  else sheepOk(t, d, ['snapshot', 'delete', item.name, item.tag])
}

/** Deletes the items in the given order, checking everything left after each deletion. */
async function deleteInOrder (t: T, env: SnapshotEnv, d: Daemon, items: ChainItem[], sequence: ChainItem[], opts: { restartAfter?: number } = {}): Promise<void> {
  t.equal(new Set(sequence).size, items.length, 'the order names every item once')
  let remaining = [...items]
  let step = 0
  for (const item of sequence) {
    if (!remaining.includes(item)) continue // a snapshot that went with its image
    deleteItem(t, d, item)
    remaining = remaining.filter(i => i !== item && !(item.tag === '' && i.name === item.name))
    step++
    t.equal(fs.existsSync(itemPath(d, item)), false, `${itemLabel(item)} is gone`)
    if (step === opts.restartAfter) {
      await d.stop()
      await d.start()
      await env.restarted(d)
      checkCopies(t, env.nodes(d), CHAIN_COPIES, 'after the restart')
      await checkChain(t, d, remaining, `after a restart with ${remaining.length} left`)
    }
    await checkChain(t, d, remaining, `after deleting ${itemLabel(item)}`)
  }
  // Deletion of an image still held by a FUSE release that has not arrived yet finishes with it.
  const stores = env.nodes(d)
  const clean = await waitFor(() => objectFiles(stores).join() === DIRECTORY_OBJECT, 5000)
  t.ok(clean, `no object is left but the directory (${objectFiles(stores).length} files: ${objectFiles(stores).slice(0, 5).join(' ')})`)
  t.same(tree(t, d), [], 'image tree --json is empty')
  t.same(imageList(t, d), [], 'image list --json is empty')
}

/**
 * A daemon, not started yet, on a copy of the store of stopped daemon `from`, with the arguments
 * `from` had; stopped and removed when the test ends (as startDaemon does).
 */
export function daemonOnCopy (t: T, from: Daemon): Daemon {
  const d = new Daemon(tempDir(t), from.extraArgs)
  execFileSync('cp', ['-a', '--sparse=always', from.store, d.store])
  t.teardown(async () => {
    await Promise.race([d.stop(), new Promise(resolve => setTimeout(resolve, 15_000).unref())])
    d.cleanupSync()
  })
  return d
}

const CHAIN_COPIES = 1
const CHAIN_ARGS = ['--copies', String(CHAIN_COPIES)]
const middleFirst = (items: ChainItem[]): ChainItem[] => {
  const mid = (items.length - 1) / 2
  return items.map((item, i) => ({ item, i })).sort((a, b) => Math.abs(a.i - mid) - Math.abs(b.i - mid) || a.i - b.i).map(x => x.item)
}

/** getfattr -d output as a map of user.* attributes. */
function getfattr (file: string): Record<string, string> {
  const r = spawnSync('getfattr', ['-d', '--absolute-names', file], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`getfattr -d ${file} failed: ${r.stderr}`)
  const out: Record<string, string> = {}
  for (const line of r.stdout.split('\n')) {
    const m = /^([^=#]+)="(.*)"$/.exec(line)
    if (m) out[m[1] as string] = m[2] as string
  }
  return out
}

export function snapshotCases (start: Start, env: SnapshotEnv): void {
  // ---------------------------------------------------------------------------------------------
  // 1. a snapshot keeps pattern A while the image gets pattern B; snapshot files are read-only

  t.test('a snapshot reads what the image held; later writes, down to 4 KiB and unaligned, only change the image', async t => {
    const d = await start(t)
    const name = 'vm.img'
    const img = d.image(name)
    const size = 32 * MiB
    qemuImg(['create', '-f', 'raw', img, String(size)])
    qemuIo(img, [`write -P 0xaa 0 ${size}`])
    sheepOk(t, d, ['snapshot', 'create', name, 'A'])
    const snap = snapPath(d, name, 'A')
    t.equal(fs.statSync(snap).size, size, 'the snapshot file has the image size')

    const B: Write[] = [
      { off: 4 * MiB + 2 * MiB, len: 4 * KiB, byte: 0xb1 }, // 4 KiB into the middle of a 4 MiB object
      { off: 12345, len: 1000, byte: 0xb2 }, // unaligned, inside one sub-block
      { off: 8 * MiB - 777, len: 2000, byte: 0xb3 }, // unaligned, across an object boundary
      { off: 20 * MiB + SUB_BLOCK - 100, len: SUB_BLOCK + 200, byte: 0xb4 }, // partial, whole, partial sub-blocks
      { off: 24 * MiB, len: 4 * MiB, byte: 0xb5 }, // a whole object
      { off: 16 * MiB + 3, len: 1, byte: 0xb6 }, // one byte
      { off: size - 3, len: 3, byte: 0xb7 } // the last bytes
    ]
    for (const w of B) qemuIo(img, [`write -P ${w.byte} ${w.off} ${w.len}`])

    // Through qemu-io, read-only: the snapshot is A everywhere.
    t.doesNotThrow(() => qemuIo(snap, [`read -P 0xaa 0 ${size}`], ['-r']), 'the snapshot reads A everywhere (qemu-io -r)')
    // The image: B where written, A right around each write.
    for (const w of B) {
      const around: string[] = []
      if (w.off >= 512) around.push(`read -P 0xaa ${w.off - 512} 512`)
      if (w.off + w.len + 512 <= size) around.push(`read -P 0xaa ${w.off + w.len} 512`)
      t.doesNotThrow(() => qemuIo(img, [`read -P ${w.byte} ${w.off} ${w.len}`, ...around], ['-r']), `image reads 0x${w.byte.toString(16)} at ${w.off}+${w.len}, A around it`)
    }
    // Byte for byte, the whole of both.
    readsAs(t, img, expected(size, [{ off: 0, len: size, byte: 0xaa }, ...B]), 'the whole image (B where written, A elsewhere)')
    readsAs(t, snap, Buffer.alloc(size, 0xaa), 'the whole snapshot (A)')

    // The 4 KiB write copied up one sub-block, not the object: the image owns a sub-block there.
    const own = imageList(t, d).find(i => i.name === name) as ImageInfo
    const subBlocksWritten = 1 /* 4K */ + 1 /* 12345 */ + 2 /* boundary */ + 3 /* 20M */ + 64 /* whole object */ + 1 + 1
    t.equal(own.allocated, subBlocksWritten * SUB_BLOCK, `after the snapshot the image owns only the sub-blocks written (${subBlocksWritten} x 64 KiB)`)

    // Read-only, whichever way one tries.
    const code = (fn: () => unknown): string => { try { fn(); return 'ok' } catch (err) { return (err as NodeJS.ErrnoException).code ?? String(err) } }
    t.equal(code(() => fs.closeSync(fs.openSync(snap, 'r+'))), 'EROFS', 'open(snapshot, O_RDWR) fails with EROFS')
    t.equal(code(() => fs.closeSync(fs.openSync(snap, 'w'))), 'EROFS', 'open(snapshot, O_WRONLY|O_TRUNC) fails with EROFS')
    t.equal(code(() => fs.truncateSync(snap, 0)), 'EROFS', 'truncate(snapshot) fails with EROFS')
    t.equal(code(() => fs.truncateSync(snap, size * 2)), 'EROFS', 'growing the snapshot fails with EROFS')
    const q = spawnSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0xcc 0 4096', snap], { encoding: 'utf8' })
    t.not(q.status, 0, 'qemu-io (read-write) on the snapshot fails')
    t.match(q.stdout + q.stderr, /Read-only file system/, `qemu-io says why: ${(q.stdout + q.stderr).trim().split('\n')[0] ?? ''}`)
    t.equal(fs.statSync(snap).size, size, 'the snapshot keeps its size')
    readsAs(t, snap, Buffer.alloc(size, 0xaa), 'the snapshot after the failed writes')

    // Deleted while open for reading (a backup copying it, say): the reader must never get other
    // bytes. Images keep reading after rm while open; a snapshot should too, or fail the read.
    const fd = fs.openSync(snap, 'r')
    try {
      sheepOk(t, d, ['snapshot', 'delete', name, 'A'])
      t.equal(fs.existsSync(snap), false, 'the deleted snapshot leaves .snapshots')
      const buf = Buffer.alloc(size)
      let outcome: string
      try {
        const n = fs.readSync(fd, buf, 0, size, 0)
        outcome = n === size && buf.equals(Buffer.alloc(size, 0xaa)) ? 'A' : `other bytes (${firstDiff(buf.subarray(0, n), Buffer.alloc(n, 0xaa))})`
      } catch (err) {
        outcome = `error ${(err as NodeJS.ErrnoException).code ?? String(err)}`
      }
      t.ok(outcome === 'A' || outcome.startsWith('error'), `a handle open on a deleted snapshot reads its bytes or fails, never other bytes: ${outcome}`)
    } finally {
      fs.closeSync(fd)
    }
    readsAs(t, img, expected(size, [{ off: 0, len: size, byte: 0xaa }, ...B]), 'the image after its snapshot is deleted')
  })

  // ---------------------------------------------------------------------------------------------
  // 2. chains of snapshots and clones, deleted in several orders

  t.test('chains of snapshots and clones, depth 6, deleted in several orders', async t => {
    if (env.everyDeletionOrder) {
      await t.test('oldest first, on the daemon that built the chain (images take their snapshots with them)', async t => {
        const d = await start(t, CHAIN_ARGS)
        const items = buildChain(t, d)
        await checkChain(t, d, items, 'built')
        checkCopies(t, env.nodes(d), CHAIN_COPIES, 'built')
        await deleteInOrder(t, env, d, items, items)
      })
    }
    // The other orders each run on a fresh daemon started on a copy of one chain's store, built
    // once and cleanly stopped: the chain must also come back whole from disk.
    const builder = await start(t, CHAIN_ARGS)
    const items = buildChain(t, builder)
    await checkChain(t, builder, items, 'built')
    checkCopies(t, env.nodes(builder), CHAIN_COPIES, 'built')
    await env.stopAll(builder)
    if (env.everyDeletionOrder) {
      await t.test('newest first (each snapshot, then its image)', async t => {
        const d = await env.startOnCopy(t, builder)
        await checkChain(t, d, items, 'loaded')
        checkCopies(t, env.nodes(d), CHAIN_COPIES, 'loaded')
        await deleteInOrder(t, env, d, items, [...items].reverse())
      })
    }
    await t.test('middle first, outwards, with a restart halfway', async t => {
      const d = await env.startOnCopy(t, builder)
      await checkChain(t, d, items, 'loaded')
      checkCopies(t, env.nodes(d), CHAIN_COPIES, 'loaded')
      await deleteInOrder(t, env, d, items, middleFirst(items), { restartAfter: 4 })
    })
    if (env.everyDeletionOrder) {
      await t.test('every snapshot first (oldest first, still read through by clones), then the images', async t => {
        const d = await env.startOnCopy(t, builder)
        await checkChain(t, d, items, 'loaded')
        checkCopies(t, env.nodes(d), CHAIN_COPIES, 'loaded')
        await deleteInOrder(t, env, d, items, [...items.filter(i => i.tag !== ''), ...items.filter(i => i.tag === '')])
      })
    }
  })


  // ---------------------------------------------------------------------------------------------
  // 3. rollback

  t.test('rollback restores the snapshot exactly; refused while the image is open for writing', async t => {
    const d = await start(t)
    const name = 'r.img'
    const img = d.image(name)
    sheepOk(t, d, ['image', 'create', name, `${40 * MiB}`])
    qemuIo(img, [`write -P 0x31 0 ${5 * MiB}`, `write -P 0x32 ${9 * MiB + 12345} ${3 * MiB}`, `write -P 0x33 ${40 * MiB - 4096} 4096`])
    const before = sha256(img)
    sheepOk(t, d, ['snapshot', 'create', name, 'good'])
    t.equal(sha256(snapPath(d, name, 'good')), before, 'the snapshot hashes as the image did')

    // Change it every way: overwrite, unaligned, a new object, and a grow.
    qemuIo(img, [`write -P 0x41 ${2 * MiB} ${4 * KiB}`, `write -P 0x42 ${9 * MiB + 100} 333`, `write -P 0x43 ${20 * MiB} ${6 * MiB}`])
    sheepOk(t, d, ['image', 'resize', name, `${64 * MiB}`])
    qemuIo(img, [`write -P 0x44 ${50 * MiB} ${MiB}`])
    const changed = sha256(img)
    t.not(changed, before, 'the image changed')

    // Open for writing: refused, and nothing changes.
    const fd = fs.openSync(img, 'r+')
    let closed = false
    t.teardown(() => { if (!closed) fs.closeSync(fd) })
    const listBefore = snapshotList(t, d, name)
    const refused = d.sheep(['snapshot', 'rollback', name, 'good', '--mount', d.mount])
    oneLineError(t, refused, /open for writing/, 'rollback of an image open for writing')
    t.equal(fs.fstatSync(fd).size, 64 * MiB, 'the size is unchanged')
    t.equal(sha256(img), changed, 'the bytes are unchanged')
    t.same(snapshotList(t, d, name), listBefore, 'the snapshots are unchanged')
    fs.closeSync(fd)
    closed = true

    // The kernel sends FUSE release after close() returns: retry, bounded, until it has arrived.
    let attempts = 0
    let last: RunResult = refused
    const deadline = Date.now() + 10_000
    for (;;) {
      attempts++
      last = d.sheep(['snapshot', 'rollback', name, 'good', '--mount', d.mount])
      if (last.code === 0 || Date.now() > deadline || !/open for writing/.test(last.stderr)) break
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    t.equal(last.code, 0, `rollback works once the image is closed (${attempts} attempt(s)) ${last.stderr.trim()}`)
    t.comment(`rollback succeeded after ${attempts} attempt(s)`)
    t.equal(fs.statSync(img).size, 40 * MiB, 'the size is the snapshot\'s')
    t.equal(sha256(img), before, 'sha256 of the image equals the snapshot\'s from before the writes')
    t.equal(sha256(snapPath(d, name, 'good')), before, 'the snapshot is untouched')

    // A rolled-back image is a normal image on top of the snapshot: write, roll back again.
    qemuIo(img, [`write -P 0x51 ${MiB + 1} 9999`])
    t.not(sha256(img), before, 'writable after the rollback')
    t.equal(sha256(snapPath(d, name, 'good')), before, 'and the snapshot still holds its bytes')
    const ro = fs.openSync(img, 'r') // a reader does not block a rollback
    try {
      const r = await (async () => {
        const end = Date.now() + 10_000
        for (;;) {
          const r = d.sheep(['snapshot', 'rollback', name, 'good', '--mount', d.mount])
          if (r.code === 0 || Date.now() > end || !/open for writing/.test(r.stderr)) return r
          await new Promise(resolve => setTimeout(resolve, 20))
        }
      })()
      t.equal(r.code, 0, `rollback with a read-only handle open ${r.stderr.trim()}`)
    } finally {
      fs.closeSync(ro)
    }
    t.equal(sha256(img), before, 'rolled back again')

    // Nothing is leaked: with the image gone, only the directory is left.
    sheepOk(t, d, ['image', 'delete', name])
    const stores = env.nodes(d)
    t.ok(await waitFor(() => objectFiles(stores).join() === DIRECTORY_OBJECT, 5000), `no object is left but the directory (${objectFiles(stores).join(' ')})`)
  })

  // ---------------------------------------------------------------------------------------------
  // 4. flatten

  t.test('flatten: a clone keeps its bytes without its parent, and becomes a root', async t => {
    const d = await start(t)
    const base = d.image('base.img')
    sheepOk(t, d, ['image', 'create', 'base.img', `${24 * MiB}`])
    qemuIo(base, [`write -P 0x61 0 ${6 * MiB}`, `write -P 0x62 ${13 * MiB + 7} ${MiB}`, `write -P 0x63 ${24 * MiB - 512} 512`])
    sheepOk(t, d, ['snapshot', 'create', 'base.img', 'old'])
    qemuIo(base, [`write -P 0x64 ${MiB} ${MiB}`])
    // The implicit form: a snapshot is taken for the clone.
    const out = sheepOk(t, d, ['clone', base, d.image('child.img')])
    t.match(out, /child\.img/, `clone says what it did: ${out.trim()}`)
    const child = d.image('child.img')
    t.equal(sha256(child), sha256(base), 'the clone reads as its parent did')
    // Partial copy-ups (a 4 KiB write in a shared object, an unaligned one), a whole object, a new one.
    qemuIo(child, [`write -P 0x71 ${2 * MiB + 4096} 4096`, `write -P 0x72 ${13 * MiB + 77} 1000`, `write -P 0x73 ${16 * MiB} ${4 * MiB}`, `write -P 0x74 ${9 * MiB} ${64 * KiB}`])
    const childHash = sha256(child)
    const baseHash = sha256(base)
    t.not(childHash, baseHash, 'the clone has its own writes')
    // On a cluster, what node 1 made reads the same through the other nodes' mounts.
    const [, n2, n3] = env.nodes(d)
    if (n2 !== undefined && n3 !== undefined) {
      const oldOn3 = snapPath(n3, 'base.img', 'old')
      t.ok(await waitFor(() => fs.existsSync(oldOn3), 5000), 'node 3 lists base.img@old, taken through node 1')
      t.equal(sha256(oldOn3), sha256(snapPath(d, 'base.img', 'old')), 'base.img@old reads the same through node 3 as through node 1')
      t.ok(await waitFor(() => fs.existsSync(n2.image('child.img')), 5000), 'node 2 lists child.img, cloned on node 1')
      t.equal(sha256(n2.image('child.img')), childHash, 'child.img, cloned and written through node 1, reads the same through node 2')
    }

    sheepOk(t, d, ['image', 'flatten', 'child.img'])
    t.equal(sha256(child), childHash, 'flatten changes no byte')
    const childInfo = imageList(t, d).find(i => i.name === 'child.img') as ImageInfo
    t.equal(childInfo.parent, '', 'the clone has no parent any more')
    t.equal(childInfo.allocated, 24 * MiB, 'it owns every block it reads (all six 4 MiB objects hold data)')

    const snaps = snapshotList(t, d, 'base.img').map(s => s.tag)
    t.same(snaps.sort(), ['for-child.img', 'old'].sort(), 'the parent has its own snapshot and the clone\'s')
    for (const tag of snaps) sheepOk(t, d, ['snapshot', 'delete', 'base.img', tag])
    sheepOk(t, d, ['image', 'delete', 'base.img'])
    t.equal(sha256(child), childHash, 'the clone reads the same bytes after its parent and every snapshot are gone')
    if (n2 !== undefined && n3 !== undefined) {
      const gone = (n: Daemon): boolean => !fs.readdirSync(n.mount).includes('base.img') && !fs.readdirSync(path.join(n.mount, '.snapshots')).includes('base.img')
      t.ok(await waitFor(() => gone(n2) && gone(n3), 5000), 'nodes 2 and 3 no longer list base.img or its snapshots')
      t.equal(sha256(n2.image('child.img')), childHash, 'the flattened clone reads the same through node 2 without its parent')
    }

    const nodes = tree(t, d)
    t.same(nodes.map(n => [n.name, n.tag, n.kind, n.parent]), [['child.img', '', 'image', 0]], 'image tree --json: the clone alone, a root')
    const text = sheepOk(t, d, ['image', 'tree'])
    t.match(text, /^child\.img {2}\[/, `image tree shows it as a root: ${text.trim()}`)
    t.equal(text.trim().split('\n').length, 1, 'and nothing else')
    // Only the clone's objects are left (and the directory).
    const vid = childInfo.vid.toString(16).padStart(6, '0')
    const stray = objectFiles(env.nodes(d)).filter(f => f !== DIRECTORY_OBJECT && f.slice(2, 8) !== vid)
    t.same(stray, [], 'no object of the parent or its snapshots is left')
  })

  // ---------------------------------------------------------------------------------------------
  // 5. snapshot and clone are O(1) in the image size

  t.test('snapshot and clone of a 100 GiB image: instant, near free, and copy-up by sub-block', async t => {
    const d = await start(t, ['--copies', '1'])
    const name = 'big.img'
    const img = d.image(name)
    sheepOk(t, d, ['image', 'create', name, '100G'])
    const at = 10 * GiB
    qemuIo(img, [`write -P 0x5b ${at} ${64 * MiB}`])
    t.equal(fs.statSync(img).blocks * 512, 64 * MiB, 'the image holds 64 MiB')
    // What each store grows by (on a cluster every store keeps every inode, and data per --copies).
    const stores = env.nodes(d)
    const storeBefore = stores.map(s => diskUsage(s.store))
    const growth = (): number => Math.max(...stores.map((s, i) => diskUsage(s.store) - (storeBefore[i] as number)))

    const snap = timedSheep(d, ['snapshot', 'create', name, 's1'])
    t.equal(snap.r.code, 0, `snapshot create ${snap.r.stderr.trim()}`)
    t.comment(`snapshot create of a 100 GiB image (64 MiB written): ${snap.ms.toFixed(0)} ms`)
    const clone = timedSheep(d, ['clone', `${name}@s1`, 'clone.img'])
    t.equal(clone.r.code, 0, `clone ${clone.r.stderr.trim()}`)
    t.comment(`clone of the snapshot: ${clone.ms.toFixed(0)} ms`)
    const implicit = timedSheep(d, ['clone', img, d.image('clone2.img')])
    t.equal(implicit.r.code, 0, `clone with an implicit snapshot ${implicit.r.stderr.trim()}`)
    t.comment(`clone with an implicit snapshot: ${implicit.ms.toFixed(0)} ms`)

    // Their times are in the log, not asserted (a loaded CI machine is no clock): what makes them
    // O(1) in the image's size is that they write next to nothing, checked here.
    const grown = growth()
    t.comment(`store grew by ${(grown / KiB).toFixed(0)} KiB for two snapshots and two clones${stores.length > 1 ? ' (the most of any store)' : ''}`)
    t.ok(grown < MiB, `the store grew by ${grown} bytes (< 1 MiB)`)
    const c = d.image('clone.img')
    const st = fs.statSync(c)
    t.equal(st.size, 100 * GiB, 'the clone is 100 GiB')
    t.ok(st.blocks * 512 <= 4 * KiB, `du of the clone is ~0 (${st.blocks * 512} bytes)`)
    t.doesNotThrow(() => qemuIo(c, [`read -P 0x5b ${at} ${64 * MiB}`, `read -P 0 ${at - MiB} ${MiB}`, `read -P 0 ${100 * GiB - MiB} ${MiB}`], ['-r']), 'the clone reads the parent\'s data, zeros elsewhere')

    const w = at + 2 * MiB + 3 * 4096
    qemuIo(c, [`write -P 0x6c ${w} 4096`])
    const du = fs.statSync(c).blocks * 512
    t.comment(`du of the clone after a 4 KiB write: ${du} bytes`)
    t.ok(du >= 4 * KiB && du <= st.blocks * 512 + SUB_BLOCK, `a 4 KiB write costs the clone at most one 64 KiB sub-block (du ${du})`)
    t.doesNotThrow(() => qemuIo(c, [`read -P 0x6c ${w} 4096`, `read -P 0x5b ${at} ${w - at}`, `read -P 0x5b ${w + 4096} ${at + 64 * MiB - w - 4096}`], ['-r']), 'the clone reads its write and the shared rest')
    t.doesNotThrow(() => qemuIo(img, [`read -P 0x5b ${at} ${64 * MiB}`], ['-r']), 'the parent is untouched')
    t.doesNotThrow(() => qemuIo(snapPath(d, name, 's1'), [`read -P 0x5b ${at} ${64 * MiB}`], ['-r']), 'the snapshot is untouched')
    t.ok(growth() < 2 * MiB, 'the copy-up did not copy the 4 MiB object')
    checkCopies(t, stores, 1, 'after the copy-up')
  })

  // ---------------------------------------------------------------------------------------------
  // 6. a snapshot under a stream of writes

  t.test('a snapshot under a stream of writes: acknowledged writes in, later writes out, no torn slot', async t => {
    const d = await start(t)
    const name = 'busy.img'
    const img = d.image(name)
    const SLOT = 64 * KiB
    const SLOTS = 2048 // 128 MiB
    const PREFILLED = 1024 // slots [0, 1024) hold old data, [1024, 2048) are holes
    sheepOk(t, d, ['image', 'create', name, `${SLOTS * SLOT}`])
    qemuIo(img, [`write -P 0x11 0 ${PREFILLED * SLOT}`])
    const oldByte = (slot: number): number => slot < PREFILLED ? 0x11 : 0
    // Each write fills its slot with a 32-bit word unique to the slot (never 0x11111111 or 0).
    const word = (slot: number): number => (0x5a000000 | (slot + 1)) >>> 0
    const slotData = (slot: number): Buffer => { const b = Buffer.alloc(SLOT); for (let o = 0; o < SLOT; o += 4) b.writeUInt32LE(word(slot), o); return b }
    // Alternate between the prefilled half and the holes: copy-up and allocation both race the snapshot.
    const slotOf = (k: number): number => k % 2 === 0 ? k / 2 : PREFILLED + (k - 1) / 2

    interface Rec { slot: number, issued: number, acked: number }
    const recs: Rec[] = []
    let snapStart = Infinity
    let snapEnd = Infinity
    let snapResult: { code: number | null, stderr: string } | null = null
    const fh = await fs.promises.open(img, 'r+')
    let snapshotDone: Promise<void> | null = null
    let afterCount = 0
    try {
      for (let k = 0; k < SLOTS; k++) {
        const slot = slotOf(k)
        const rec: Rec = { slot, issued: performance.now(), acked: Infinity }
        recs.push(rec)
        await fh.write(slotData(slot), 0, SLOT, slot * SLOT)
        await fh.sync()
        rec.acked = performance.now()
        if (k === 64) {
          // Mid-stream: the snapshot command runs while the writes go on.
          snapStart = performance.now()
          snapshotDone = new Promise<void>(resolve => {
            const p = spawn(process.execPath, [SHEEP_BIN, 'snapshot', 'create', name, 'mid', '--mount', d.mount], { env: d.env, stdio: ['ignore', 'ignore', 'pipe'] })
            let stderr = ''
            p.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
            p.on('close', code => { snapEnd = performance.now(); snapResult = { code, stderr }; resolve() })
          })
        }
        if (snapEnd !== Infinity && rec.issued > snapEnd) afterCount++
        if (afterCount >= 64) break
      }
      await snapshotDone
    } finally {
      await fh.close()
    }
    const res = snapResult as { code: number | null, stderr: string } | null
    t.equal(res?.code, 0, `snapshot create under writes ${res?.stderr.trim() ?? ''}`)
    const before = recs.filter(r => r.acked < snapStart)
    const after = recs.filter(r => r.issued > snapEnd)
    const during = recs.length - before.length - after.length
    t.comment(`${recs.length} writes: ${before.length} acknowledged before the snapshot started, ${during} in flight during its ${(snapEnd - snapStart).toFixed(0)} ms, ${after.length} issued after it returned`)
    t.ok(before.length > 0 && after.length > 0, 'writes on both sides of the snapshot')

    const snapBytes = fs.readFileSync(snapPath(d, name, 'mid'))
    const imgBytes = fs.readFileSync(img)
    const written = new Map(recs.map(r => [r.slot, r]))
    let torn = 0
    let missing = 0
    let leaked = 0
    let imageWrong = 0
    let newInSnap = 0
    const isAll = (b: Buffer, byte: number): boolean => b.equals(Buffer.alloc(b.length, byte))
    for (let slot = 0; slot < SLOTS; slot++) {
      const s = snapBytes.subarray(slot * SLOT, (slot + 1) * SLOT)
      const i = imgBytes.subarray(slot * SLOT, (slot + 1) * SLOT)
      const rec = written.get(slot)
      const isOld = isAll(s, oldByte(slot))
      const isNew = s.equals(slotData(slot))
      if (!isOld && !isNew) { torn++; if (torn <= 3) t.fail(`slot ${slot} is torn in the snapshot`) }
      if (isNew) newInSnap++
      if (rec === undefined) {
        if (isNew) { leaked++; t.fail(`slot ${slot} was never written but holds new data`) }
        if (!isAll(i, oldByte(slot))) imageWrong++
        continue
      }
      if (rec.acked < snapStart && !isNew) { missing++; if (missing <= 3) t.fail(`slot ${slot}, acknowledged before the snapshot, is not in it`) }
      if (rec.issued > snapEnd && isNew) { leaked++; if (leaked <= 3) t.fail(`slot ${slot}, written after the snapshot returned, is in it`) }
      if (!i.equals(slotData(slot))) { imageWrong++; if (imageWrong <= 3) t.fail(`slot ${slot} does not hold its write in the image`) }
    }
    t.equal(torn, 0, 'no torn slot in the snapshot')
    t.equal(missing, 0, `every write acknowledged before the snapshot started is in it (${before.length})`)
    t.equal(leaked, 0, `no write issued after the snapshot returned is in it (${after.length})`)
    t.equal(imageWrong, 0, `the image holds every write (${recs.length}) and nothing else`)
    t.comment(`${newInSnap} slots new in the snapshot`)
  })

  // ---------------------------------------------------------------------------------------------
  // 7. xattrs, listings, qemu-img on snapshot files, the tree

  t.test('xattrs, ls of .snapshots, snapshot list --json, qemu-img on snapshot files, image tree', async t => {
    const d = await start(t, ['--copies', '2'])
    const name = 'x.img'
    const img = d.image(name)
    sheepOk(t, d, ['image', 'create', name, `${16 * MiB}`])
    qemuIo(img, [`write -P 0x21 0 ${3 * MiB}`, `write -P 0x22 ${9 * MiB} 777`])
    const attrs0 = getfattr(img)
    t.same(Object.keys(attrs0).sort(), ['user.sheep.allocated', 'user.sheep.copies', 'user.sheep.object_size', 'user.sheep.snapshots', 'user.sheep.vid'], 'getfattr -d: the user.sheep.* attributes of an image without a parent')
    t.equal(attrs0['user.sheep.copies'], '2', 'copies')
    t.equal(attrs0['user.sheep.object_size'], String(4 * MiB), 'object_size')
    t.equal(attrs0['user.sheep.allocated'], String(8 * MiB), 'allocated: two 4 MiB objects')
    t.equal(Number(attrs0['user.sheep.allocated']), fs.statSync(img).blocks * 512, 'allocated is what du counts')
    t.equal(attrs0['user.sheep.snapshots'], '', 'no snapshots yet')

    const t0 = Date.now()
    const set = spawnSync('setfattr', ['-n', 'user.sheep.snapshot', '-v', 'first', img], { encoding: 'utf8' })
    t.equal(set.status, 0, `setfattr -n user.sheep.snapshot takes a snapshot ${set.stderr.trim()}`)
    const attrs1 = getfattr(img)
    t.equal(attrs1['user.sheep.snapshots'], 'first', 'getfattr lists it')
    t.equal(attrs1['user.sheep.parent'], `${name}@first`, 'the image now reads through it')
    t.equal(attrs1['user.sheep.allocated'], '0', 'right after a snapshot the image owns nothing')
    t.not(attrs1['user.sheep.vid'], attrs0['user.sheep.vid'], 'the image goes on under a new vid')
    const snapAttrs = getfattr(snapPath(d, name, 'first'))
    t.equal(snapAttrs['user.sheep.tag'], 'first', 'the snapshot file has its tag')
    t.equal(snapAttrs['user.sheep.vid'], attrs0['user.sheep.vid'], 'the snapshot keeps the vid the image had')

    qemuIo(img, [`write -P 0x23 ${4096} 4096`, `write -P 0x24 ${12 * MiB} ${MiB}`])
    const allocBeforeSecond = Number(getfattr(img)['user.sheep.allocated'])
    t.equal(allocBeforeSecond, SUB_BLOCK + 4 * MiB, 'a 4 KiB copy-up (one sub-block) and a new object')
    checkCopies(t, env.nodes(d), 2, 'copies 2, after the writes')
    sheepOk(t, d, ['snapshot', 'create', name, 'second'])
    const t1 = Date.now()
    t.same(fs.readdirSync(path.join(d.mount, '.snapshots')), [name], 'ls /mnt/.snapshots lists the image')
    t.same(fs.readdirSync(path.join(d.mount, '.snapshots', name)).sort(), ['first', 'second'], 'ls /mnt/.snapshots/x.img lists the tags')
    const ls = spawnSync('ls', [path.join(d.mount, '.snapshots', name)], { encoding: 'utf8' })
    t.same(ls.stdout.trim().split('\n'), ['first', 'second'], 'and so does ls(1)')

    const list = snapshotList(t, d, name)
    t.same(list.map(s => s.tag), ['first', 'second'], 'snapshot list --json, oldest first')
    for (const s of list) {
      t.equal(s.name, name, `${s.tag}: name`)
      t.equal(s.size, 16 * MiB, `${s.tag}: size`)
      t.ok(s.snapshotTime >= t0 - 1000 && s.snapshotTime <= t1 + 1000, `${s.tag}: time ${new Date(s.snapshotTime).toISOString()}`)
    }
    t.equal(list[0]?.pinned, 8 * MiB, 'first pins what the image owned when it was taken')
    t.equal(list[1]?.pinned, allocBeforeSecond, 'second pins only what was written since first')
    const human = sheepOk(t, d, ['snapshot', 'list', name])
    t.match(human, /TAG\s+TAKEN\s+SIZE\s+PINS/, 'the human listing has its header')
    t.match(human, /first/, 'and its rows')

    // qemu-img reads snapshot files as raw images.
    const dir = tempDir(t)
    const out = path.join(dir, 'out.qcow2')
    const snap = snapPath(d, name, 'first')
    qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', snap, out])
    const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', snap, out], { encoding: 'utf8' })
    t.equal(cmp.status, 0, 'qemu-img compare: exit 0')
    t.match(cmp.stdout, /Images are identical/, `qemu-img compare of the snapshot and its qcow2 copy: ${cmp.stdout.trim()}`)
    const differ = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', img, out], { encoding: 'utf8' })
    t.equal(differ.status, 1, `and the image, written since, differs: ${differ.stdout.trim()}`)
    const info = JSON.parse(qemuImg(['info', '--output=json', '-f', 'raw', snap])) as { 'virtual-size': number }
    t.equal(info['virtual-size'], 16 * MiB, 'qemu-img info on the snapshot file')

    // A clone, and the tree.
    sheepOk(t, d, ['clone', `${name}@first`, 'y.img'])
    t.equal(getfattr(d.image('y.img'))['user.sheep.parent'], `${name}@first`, 'getfattr shows the clone\'s parent')
    const nodes = tree(t, d)
    const by = (label: string): TreeNode => {
      const n = nodes.find(n => (n.tag === '' ? n.name : `${n.name}@${n.tag}`) === label)
      if (n === undefined) throw new Error(`${label} is not in the tree: ${JSON.stringify(nodes)}`)
      return n
    }
    t.equal(nodes.length, 4, 'four nodes: two snapshots, the image, the clone')
    t.equal(by(`${name}@first`).parent, 0, 'first is a root')
    t.equal(by(`${name}@first`).kind, 'snapshot', 'of kind snapshot')
    t.equal(by(`${name}@second`).parent, by(`${name}@first`).vid, 'second comes from first')
    t.equal(by(name).parent, by(`${name}@second`).vid, 'the image comes from second')
    t.equal(by('y.img').parent, by(`${name}@first`).vid, 'the clone comes from first')
    t.equal(by('y.img').kind, 'image', 'the clone is an image')
    t.equal(by(name).vid.toString(16), getfattr(img)['user.sheep.vid'], 'tree and getfattr agree on the vid')
    const text = sheepOk(t, d, ['image', 'tree']).trimEnd().split('\n')
    t.comment(text.join('\n'))
    const lineOf = (re: RegExp): number => text.findIndex(l => re.test(l))
    t.match(text[0], /^x\.img@first {2}\[/, 'the tree starts at the root snapshot')
    t.ok(lineOf(/^[├└]── x\.img@second /) > 0, 'second is a child of first')
    t.ok(lineOf(/^[│ ] {3}└── x\.img {2}\[/) > lineOf(/x\.img@second/), 'the image is a child of second')
    t.ok(lineOf(/^[├└]── y\.img {2}\[/) > 0, 'the clone is a child of first')
  })

  // ---------------------------------------------------------------------------------------------
  // 8. bad input

  t.test('bad input: one clear line, a non-zero exit, and nothing changes', async t => {
    const d = await start(t)
    sheepOk(t, d, ['image', 'create', 'b.img', `${8 * MiB}`])
    qemuIo(d.image('b.img'), [`write -P 0x77 0 ${MiB}`])
    sheepOk(t, d, ['snapshot', 'create', 'b.img', 't1'])
    sheepOk(t, d, ['clone', 'b.img@t1', 'c.img'])
    sheepOk(t, d, ['snapshot', 'create', 'c.img', 't2'])
    const hashes = (): string[] => [sha256(d.image('b.img')), sha256(d.image('c.img'))]
    // What `image list --json` and `image tree --json` print, what the mount lists, what the store holds.
    const state = async (): Promise<string> => JSON.stringify({
      images: (await ask(d, 'image.list', {})).map(({ openHandles: _o, ...rest }) => rest),
      tree: await ask(d, 'image.tree', {}),
      mount: fs.readdirSync(d.mount).sort(),
      snapshotDirs: fs.readdirSync(path.join(d.mount, '.snapshots')).sort().map(n => [n, fs.readdirSync(path.join(d.mount, '.snapshots', n)).sort()]),
      objects: env.nodes(d).map(storeObjects)
    })
    /** The tree in short, for a failure message: label <- parent label. */
    const describeState = (json: string): string => {
      const nodes = (JSON.parse(json) as { tree: TreeNode[] }).tree
      const label = (n: TreeNode | undefined): string => n === undefined ? '-' : n.tag === '' ? n.name : `${n.name}@${n.tag}`
      return nodes.map(n => `${label(n)} <- ${label(nodes.find(p => p.vid === n.parent))}`).join(', ')
    }
    const cliList = sheepOk(t, d, ['image', 'list', '--json'])
    const cliTree = sheepOk(t, d, ['image', 'tree'])
    const bytes = hashes()

    const cases: Array<[string[], RegExp, string]> = [
      [['snapshot', 'create', 'nosuch.img', 'x'], /nosuch\.img.*does not exist/, 'snapshot of an unknown image'],
      [['snapshot', 'list', 'nosuch.img'], /nosuch\.img.*does not exist/, 'snapshots of an unknown image'],
      [['snapshot', 'delete', 'nosuch.img', 't1'], /nosuch\.img.*does not exist/, 'delete a snapshot of an unknown image'],
      [['snapshot', 'delete', 'b.img', 'nosuch'], /b\.img@nosuch.*does not exist/, 'delete an unknown tag'],
      [['snapshot', 'rollback', 'b.img', 'nosuch'], /b\.img@nosuch.*does not exist/, 'roll back to an unknown tag'],
      [['snapshot', 'rollback', 'nosuch.img', 't1'], /nosuch\.img.*does not exist/, 'roll back an unknown image'],
      [['clone', 'b.img@nosuch', 'n.img'], /b\.img@nosuch.*does not exist/, 'clone an unknown tag'],
      [['clone', 'nosuch.img@t1', 'n.img'], /nosuch\.img.*does not exist/, 'clone a snapshot of an unknown image'],
      [['clone', 'nosuch.img', 'n.img'], /nosuch\.img.*does not exist/, 'clone an unknown image'],
      [['image', 'flatten', 'nosuch.img'], /nosuch\.img.*does not exist/, 'flatten an unknown image'],
      [['snapshot', 'create', 'b.img', 't1'], /b\.img@t1.*already exists/, 'a duplicate tag'],
      [['snapshot', 'create', 'b.img', 'a/b'], /must not contain "\/"/, 'tag "a/b"'],
      [['snapshot', 'create', 'b.img', 'x@y'], /must not contain "@"/, 'tag "x@y"'],
      [['snapshot', 'create', 'b.img', ''], /must not be empty/, 'an empty tag'],
      [['snapshot', 'create', 'b.img', '..'], /is not an? snapshot tag/, 'tag ".."'],
      [['clone', 'b.img@t1', 'c.img'], /c\.img.*already exists/, 'clone onto an existing image'],
      [['clone', 'b.img@t1', 'b.img'], /b\.img.*already exists/, 'clone a snapshot onto its own image'],
      [['clone', 'c.img@t2', 'b.img'], /b\.img.*already exists/, 'clone a clone onto its ancestor (a cycle)'],
      [['clone', 'b.img@t1', 'x@y.img'], /must not contain "@"/, 'clone to a name with "@"'],
      [['clone', 'b.img@t1', ''], /must not be empty|missing/, 'clone to an empty name'],
      // The implicit-snapshot form must not leave its snapshot behind when the clone is refused.
      [['clone', d.image('b.img'), d.image('c.img')], /c\.img.*already exists/, 'clone (implicit snapshot) onto an existing image'],
      [['clone', d.image('b.img'), d.image('b.img')], /b\.img.*already exists/, 'clone (implicit snapshot) of an image onto itself']
    ]
    for (const [args, re, what] of env.everyBadInput ? cases : cases.filter(([, re]) => /already exists/.test(re.source))) {
      const before = await state()
      const r = d.sheep([...args, '--mount', d.mount])
      oneLineError(t, r, re, what)
      const after = await state()
      t.equal(after, before, `${what}: nothing changed`)
      if (after !== before) t.comment(`${what}: before ${describeState(before)}; after ${describeState(after)}`)
    }

    // Through the mount: setfattr with a duplicate or bad tag is refused, and changes nothing.
    for (const [tag, what] of [['t1', 'duplicate tag'], ['a/b', 'tag "a/b"'], ['x@y', 'tag "x@y"'], ['', 'empty tag']] as const) {
      const before = await state()
      const r = spawnSync('setfattr', ['-n', 'user.sheep.snapshot', '-v', tag, d.image('b.img')], { encoding: 'utf8' })
      t.not(r.status, 0, `setfattr, ${what}: fails`)
      t.equal(r.stderr.trim().split('\n').length, 1, `setfattr, ${what}: one line: ${r.stderr.trim()}`)
      t.equal(await state(), before, `setfattr, ${what}: nothing changed`)
    }
    t.same(hashes(), bytes, 'the images read the same bytes')
    // And as the command shows it (where the implicit-snapshot clones above went wrong, this differs too).
    t.equal(sheepOk(t, d, ['image', 'list', '--json']), cliList, 'sheep image list --json: as before')
    t.equal(sheepOk(t, d, ['image', 'tree']), cliTree, 'sheep image tree: as before')
  })
}
