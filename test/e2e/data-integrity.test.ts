// Data integrity on a real mount, checked against plain files on local disk: whole-image copies
// with qemu-img, thousands of random reads, writes and truncates compared with a reference file
// (one request at a time and several at once), thin provisioning as du/ls/df see it, durability
// through kill -9 of the daemon, and rename/unlink behaving as they do for files.
//
// Random choices come from a seeded PRNG; every failure message names the seed, and
// SHEEP_TEST_SEED=<n> replays a run.

import t from 'tap'
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { type Daemon, diskUsage, isMounted, qemuImg, qemuIo, startDaemon, tempDir, waitFor } from '../helpers/daemon'
import { Rng } from '../helpers/random'

const KiB = 2 ** 10
const MiB = 2 ** 20
const GiB = 2 ** 30

const SEED = process.env.SHEEP_TEST_SEED !== undefined && process.env.SHEEP_TEST_SEED !== ''
  ? Number(process.env.SHEEP_TEST_SEED) >>> 0
  : 0x5ee9d47a
t.comment(`seed=${SEED} (replay with SHEEP_TEST_SEED=${SEED})`)

// ---------------------------------------------------------------------------------------------
// Helpers kept here: they are specific to these checks.

/** A per-test seed derived from the run's seed, so tests do not shift each other's sequences. */
function seedFor (name: string): number {
  return (crypto.createHash('sha256').update(`${SEED}:${name}`).digest().readUInt32LE(0)) >>> 0
}

function hashFile (file: string): string {
  const h = crypto.createHash('sha256')
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(4 * MiB)
    for (let pos = 0; ;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos)
      if (n === 0) break
      h.update(buf.subarray(0, n))
      pos += n
    }
  } finally {
    fs.closeSync(fd)
  }
  return h.digest('hex')
}

/** Reads `len` bytes at `pos` (fewer at the end of the file). */
function preadAll (fd: number, len: number, pos: number): Buffer {
  const buf = Buffer.alloc(len)
  let done = 0
  while (done < len) {
    const n = fs.readSync(fd, buf, done, len - done, pos + done)
    if (n === 0) break
    done += n
  }
  return buf.subarray(0, done)
}

function pwriteAll (fd: number, data: Buffer, pos: number): void {
  let done = 0
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, pos + done)
}

function firstDiff (a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length)
  if (a.subarray(0, n).equals(b.subarray(0, n))) return a.length === b.length ? -1 : n
  let lo = 0
  let hi = n
  // Binary search over equal prefixes, then a short scan.
  while (hi - lo > 4096) {
    const mid = (lo + hi) >>> 1
    if (a.subarray(lo, mid).equals(b.subarray(lo, mid))) lo = mid
    else hi = mid
  }
  for (let i = lo; i < hi; i++) if (a[i] !== b[i]) return i
  return n
}

/** Compares two files byte for byte; null when equal, else a description of the first difference. */
function compareFiles (a: string, b: string): string | null {
  const sa = fs.statSync(a).size
  const sb = fs.statSync(b).size
  if (sa !== sb) return `sizes differ: ${a} has ${sa} bytes, ${b} has ${sb}`
  const fa = fs.openSync(a, 'r')
  const fb = fs.openSync(b, 'r')
  try {
    for (let pos = 0; pos < sa; pos += 4 * MiB) {
      const x = preadAll(fa, 4 * MiB, pos)
      const y = preadAll(fb, 4 * MiB, pos)
      const d = firstDiff(x, y)
      if (d >= 0) return `first difference at byte ${pos + d}: ${x[d]} vs ${y[d]}`
    }
  } finally {
    fs.closeSync(fa)
    fs.closeSync(fb)
  }
  return null
}

function filesUnder (dir: string): string[] {
  if (!fs.existsSync(dir)) return []
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter(e => e.isFile())
    .map(e => path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name))
}


function run (cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stdout}${r.stderr}`)
  return r.stdout
}

function errCode (fn: () => unknown): string | null {
  try {
    fn()
    return null
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err)
  }
}

// ---------------------------------------------------------------------------------------------

t.test('qemu-img convert of a 256 MiB random file onto the mount and back is bit-exact', async t => {
  const d = await startDaemon(t)
  const dir = tempDir(t)
  const src = path.join(dir, 'src.raw')
  const back = path.join(dir, 'back.raw')
  const img = d.image('x.img')
  const fd = fs.openSync(src, 'w')
  for (let i = 0; i < 16; i++) pwriteAll(fd, crypto.randomBytes(16 * MiB), i * 16 * MiB)
  fs.closeSync(fd)

  qemuImg(['convert', '-f', 'raw', '-O', 'raw', src, img])
  t.equal(fs.statSync(img).size, 256 * MiB, 'the image has the size of the source')
  qemuImg(['convert', '-f', 'raw', '-O', 'raw', img, back])
  const want = hashFile(src)
  t.equal(hashFile(back), want, 'the copy taken back off the mount hashes like the source')
  t.equal(compareFiles(src, back), null, 'and is byte-identical')
  const out = qemuImg(['compare', '-f', 'raw', '-F', 'raw', src, img])
  t.match(out, /Images are identical/, 'qemu-img compare finds the source and the image identical')
})

// ---------------------------------------------------------------------------------------------

const RANDOM_SPAN = 64 * MiB
const OBJECT = 1 * MiB

/** A size from 1 byte to 300 KiB, biased to both small and large. */
function ioSize (r: Rng): number {
  const k = r.next()
  if (k < 0.3) return r.int(1, 4 * KiB)
  if (k < 0.7) return r.int(1, 64 * KiB)
  return r.int(64 * KiB, 300 * KiB)
}

/** An offset anywhere in the span, near an object boundary, or near (and past) the end. */
function ioOffset (r: Rng, len: number, size: number): number {
  const k = r.next()
  let off: number
  if (k < 0.55) off = r.int(0, RANDOM_SPAN - 1)
  else if (k < 0.8) off = r.int(1, RANDOM_SPAN / OBJECT - 1) * OBJECT + r.int(-len, 512)
  else off = size + r.int(-256 * KiB, 2 * MiB)
  return Math.min(Math.max(0, off), RANDOM_SPAN - 1)
}

t.test('random reads, writes and truncates match a reference file on local disk', async t => {
  const seed = seedFor('random-ops')
  const r = new Rng(seed)
  const d = await startDaemon(t, ['--object-size', '1M'])
  const dir = tempDir(t)
  const refPath = path.join(dir, 'ref.raw')
  const img = d.image('random.img')
  const pool = r.bytes(4 * MiB)
  const OPS = 3000

  // An image made by create(2), growing like a file. Two descriptors: one through the page
  // cache, one with O_DIRECT so that reads reach the daemon rather than the kernel's cache.
  const cached = fs.openSync(img, 'w+')
  const direct = fs.openSync(img, fs.constants.O_RDWR | fs.constants.O_DIRECT)
  const ref = fs.openSync(refPath, 'w+')
  const fds = new Set([cached, direct, ref])
  const close = (fd: number): void => { if (fds.delete(fd)) fs.closeSync(fd) }
  t.teardown(() => { for (const fd of fds) { try { close(fd) } catch {} } })

  let size = 0
  const recent: string[] = []
  const counts = { write: 0, read: 0, truncate: 0, fsync: 0, pastEnd: 0 }
  let failure: string | null = null
  for (let i = 0; i < OPS && failure === null; i++) {
    const k = r.next()
    const fd = r.chance(0.4) ? direct : cached
    const via = fd === direct ? 'O_DIRECT' : 'cached'
    try {
      if (k < 0.47) {
        const len = ioSize(r)
        const off = ioOffset(r, len, size)
        const p = r.int(0, pool.length - len)
        const data = pool.subarray(p, p + len)
        recent.push(`#${i} write ${via} ${off}+${len}`)
        if (off > size) counts.pastEnd++
        const n = fs.writeSync(fd, data, 0, len, off)
        if (n !== len) { failure = `#${i} write of ${len} at ${off} wrote ${n}`; break }
        pwriteAll(ref, data, off)
        size = Math.max(size, off + len)
        counts.write++
      } else if (k < 0.97) {
        const len = ioSize(r)
        const off = r.int(0, size + 512 * KiB)
        recent.push(`#${i} read ${via} ${off}+${len}`)
        const got = preadAll(fd, len, off)
        const want = preadAll(ref, len, off)
        const at = firstDiff(got, want)
        if (at >= 0) {
          failure = got.length !== want.length
            ? `#${i} read of ${len} at ${off} returned ${got.length} bytes, the reference ${want.length} (size ${size})`
            : `#${i} read of ${len} at ${off} differs at byte ${off + at}: got ${got[at]}, want ${want[at]}`
          break
        }
        counts.read++
      } else if (k < 0.99) {
        const to = r.chance(0.5) ? r.int(0, size) : r.int(0, RANDOM_SPAN)
        recent.push(`#${i} ftruncate ${size} -> ${to}`)
        fs.ftruncateSync(cached, to)
        fs.ftruncateSync(ref, to)
        size = to
        counts.truncate++
      } else {
        recent.push(`#${i} fsync`)
        fs.fsyncSync(cached)
        counts.fsync++
      }
    } catch (err) {
      failure = `#${i} ${recent.at(-1) ?? ''} threw ${(err as Error).message}`
    }
    if (recent.length > 12) recent.shift()
  }
  if (failure !== null) t.fail(`seed=${SEED}: ${failure}; last operations:\n  ${recent.join('\n  ')}\n${d.log}`)
  else t.pass(`seed=${SEED}: ${OPS} operations agree (${JSON.stringify(counts)})`)

  t.equal(fs.fstatSync(cached).size, size, `seed=${SEED}: the image has the reference's size`)
  close(cached)
  close(direct)
  close(ref)
  // A fresh open drops the kernel's cached pages, so this reads what the daemon holds.
  t.equal(compareFiles(refPath, img), null, `seed=${SEED}: the whole image equals the reference file`)
  t.ok(fs.statSync(img).size > 16 * OBJECT, `seed=${SEED}: the run spanned many objects (size ${fs.statSync(img).size})`)
})

t.test('several requests in flight at once: concurrent writes and reads match the reference', async t => {
  const seed = seedFor('concurrent')
  const r = new Rng(seed)
  const d = await startDaemon(t, ['--object-size', '1M'])
  const dir = tempDir(t)
  const refPath = path.join(dir, 'ref.raw')
  const img = d.image('concurrent.img')
  const pool = r.bytes(4 * MiB)
  const ROUNDS = 60
  const SLOTS = 12

  const fh = await fs.promises.open(img, 'w+')
  const fhDirect = await fs.promises.open(img, fs.constants.O_RDWR | fs.constants.O_DIRECT)
  const ref = fs.openSync(refPath, 'w+')
  t.teardown(async () => { await fh.close().catch(() => {}); await fhDirect.close().catch(() => {}); try { fs.closeSync(ref) } catch {} })

  let failure: string | null = null
  let size = 0
  for (let round = 0; round < ROUNDS && failure === null; round++) {
    // Non-overlapping ranges packed into a few MiB, so that several land in the same object
    // (and in the same new object) at once; even slots are written while odd ones are read.
    const window = r.int(0, RANDOM_SPAN / OBJECT - 4) * OBJECT + r.int(0, OBJECT)
    const slot = r.chance(0.5) ? 128 * KiB : 384 * KiB
    const writes: Array<{ off: number, data: Buffer }> = []
    const reads: Array<{ off: number, len: number }> = []
    for (let s = 0; s < SLOTS; s++) {
      const len = r.int(1, slot)
      const off = window + s * slot + r.int(0, slot - len)
      if (s % 2 === 0 || round % 3 === 0) {
        const p = r.int(0, pool.length - len)
        writes.push({ off, data: pool.subarray(p, p + len) })
      } else {
        reads.push({ off, len })
      }
    }
    const before = reads.map(({ off, len }) => preadAll(ref, len, off))
    try {
      const results = await Promise.all([
        ...writes.map(({ off, data }, i) => (i % 3 === 2 ? fhDirect : fh).write(data, 0, data.length, off).then(w => w.bytesWritten)),
        ...reads.map(({ off, len }, i) => (i % 2 === 0 ? fhDirect : fh).read(Buffer.alloc(len), 0, len, off).then(x => x.buffer.subarray(0, x.bytesRead)))
      ])
      for (let i = 0; i < writes.length && failure === null; i++) {
        const w = writes[i] as { off: number, data: Buffer }
        if (results[i] !== w.data.length) failure = `round ${round}: write of ${w.data.length} at ${w.off} wrote ${String(results[i])}`
      }
      for (let i = 0; i < reads.length && failure === null; i++) {
        // These bytes are not written this round, but the writes may grow the file past them
        // meanwhile: then what lies beyond the old end reads either as nothing or as zeros.
        const got = results[writes.length + i] as Buffer
        const want = before[i] as Buffer
        const rd = reads[i] as { off: number, len: number }
        const at = got.length < want.length ? got.length : firstDiff(got.subarray(0, want.length), want)
        const nz = got.subarray(want.length).findIndex(b => b !== 0)
        if (at >= 0) failure = `round ${round}: concurrent read of ${rd.len} at ${rd.off} differs at byte ${rd.off + at} (got ${got.length} bytes, want ${want.length})`
        else if (nz >= 0) failure = `round ${round}: concurrent read of ${rd.len} at ${rd.off} past the old end (${size}) found byte ${got[want.length + nz]} at ${rd.off + want.length + nz}, not a zero`
      }
    } catch (err) {
      failure = `round ${round}: ${(err as Error).message}`
    }
    for (const { off, data } of writes) {
      pwriteAll(ref, data, off)
      size = Math.max(size, off + data.length)
    }
    // Everything just written, read back concurrently.
    if (failure === null) {
      const got = await Promise.all(writes.map(({ off, data }, i) => (i % 2 === 0 ? fh : fhDirect).read(Buffer.alloc(data.length), 0, data.length, off)))
      for (let i = 0; i < writes.length && failure === null; i++) {
        const w = writes[i] as { off: number, data: Buffer }
        const g = got[i] as { bytesRead: number, buffer: Buffer }
        const at = firstDiff(g.buffer.subarray(0, g.bytesRead), w.data)
        if (at >= 0) failure = `round ${round}: read-back of ${w.data.length} at ${w.off} differs at byte ${w.off + at}`
      }
    }
  }
  if (failure !== null) t.fail(`seed=${SEED}: ${failure}\n${d.log}`)
  else t.pass(`seed=${SEED}: ${ROUNDS} rounds of ${SLOTS} concurrent requests agree`)
  await fh.close()
  await fhDirect.close()
  t.equal(fs.statSync(img).size, size, `seed=${SEED}: the image has the reference's size`)
  t.equal(compareFiles(refPath, img), null, `seed=${SEED}: the whole image equals the reference file`)
})

// ---------------------------------------------------------------------------------------------

t.test('thin provisioning: ls shows the virtual size, du what is written, df the store disk', async t => {
  const d = await startDaemon(t)
  const img = d.image('thin.img')
  const base = diskUsage(d.store)
  qemuImg(['create', '-f', 'raw', img, '100G'])
  const afterCreate = diskUsage(d.store)
  t.ok(afterCreate - base < MiB, `a fresh 100 GiB image takes under 1 MiB of store (took ${afterCreate - base} bytes)`)
  const du0 = Number(run('du', ['-B1', img]).split(/\s/)[0])
  t.ok(du0 <= 64 * KiB, `du of the fresh image is ~0 (${du0} bytes)`)
  t.equal(fs.statSync(img).size, 100 * GiB, 'stat size is 100 GiB')

  const off = GiB
  qemuIo(img, [`write -P 0x5a ${off} ${64 * MiB}`, 'flush'])
  const objectSize = 4 * MiB
  // The kernel caches attributes for a second; wait for it to ask the daemon again.
  let blocksBytes = 0
  await waitFor(() => { blocksBytes = fs.statSync(img).blocks * 512; return blocksBytes >= 64 * MiB }, 3000)
  t.ok(blocksBytes >= 64 * MiB && blocksBytes <= 64 * MiB + objectSize,
    `st_blocks after writing 64 MiB is between 64 MiB and 64 MiB + one object (${blocksBytes})`)
  const du1 = Number(run('du', ['-B1', img]).split(/\s/)[0])
  t.equal(du1, blocksBytes, 'du reports the same')
  const grown = diskUsage(d.store) - afterCreate
  t.ok(grown >= 64 * MiB && grown <= 64 * MiB + objectSize + MiB, `the store grew by about 64 MiB (${grown})`)
  const ls = run('ls', ['-ln', img]).trim().split(/\s+/)
  t.equal(Number(ls[4]), 100 * GiB, '`ls -l` still shows 100 GiB')
  t.doesNotThrow(() => qemuIo(img, [`read -P 0x5a ${off} ${64 * MiB}`, `read -P 0 0 ${MiB}`, `read -P 0 ${100 * GiB - MiB} ${MiB}`]), 'data and holes read back')

  const m = fs.statfsSync(d.mount)
  const s = fs.statfsSync(d.store)
  const mCap = m.blocks * m.bsize
  const sCap = s.blocks * s.bsize
  t.ok(Math.abs(mCap - sCap) <= 0.03 * sCap, `df on the mount shows the store disk's capacity (${mCap} vs ${sCap})`)
  t.ok(Math.abs(m.bavail * m.bsize - s.bavail * s.bsize) <= 0.03 * sCap,
    `and about its free space (${m.bavail * m.bsize} vs ${s.bavail * s.bsize})`)
})

// ---------------------------------------------------------------------------------------------

/** After SIGKILL the mount is either gone or stale (ENOTCONN), never silently serving. */
function assertDeadMount (t: tap.Test, d: Daemon): void {
  const code = errCode(() => fs.statSync(d.mount))
  t.ok(!isMounted(d.mount) || code === 'ENOTCONN', `after kill -9 the mount is stale or gone (stat: ${code ?? 'ok'})`)
  t.not(errCode(() => fs.readdirSync(d.mount)), null, 'and lists nothing')
}

function assertLiveMount (t: tap.Test, d: Daemon): void {
  t.ok(isMounted(d.mount), 'the restarted daemon mounted again at the same place')
  t.equal(errCode(() => fs.statSync(d.mount)), null, 'and the mount answers')
}

t.test('kill -9: flushed and fsynced data survives, the restart clears the stale mount', async t => {
  const seed = seedFor('kill-flushed')
  const r = new Rng(seed)
  const d = await startDaemon(t, ['--object-size', '1M'])
  const img = d.image('crash.img')
  qemuImg(['create', '-f', 'raw', img, '64M'])
  const patterns: Array<[number, number, number]> = [
    [0, MiB, 0xa1],
    [3 * MiB - 512, MiB + 1024, 0xa2], // across an object boundary
    [40 * MiB + 7, 300 * KiB, 0xa3], // unaligned
    [64 * MiB - 4096, 4096, 0xa4] // the last block
  ]
  qemuIo(img, [...patterns.map(([o, l, p]) => `write -P ${p} ${o} ${l}`), 'flush'])
  // A node descriptor: one write inside the image, one growing it, then fsync; left open, as a
  // running VM would leave it.
  const inside = { off: 20 * MiB + 123, data: r.bytes(2 * MiB + 777) }
  const growing = { off: 64 * MiB, data: r.bytes(MiB + 5) }
  const fd = fs.openSync(img, 'r+')
  pwriteAll(fd, inside.data, inside.off)
  pwriteAll(fd, growing.data, growing.off)
  fs.fsyncSync(fd)
  const size = growing.off + growing.data.length

  await d.kill('SIGKILL')
  assertDeadMount(t, d)
  errCode(() => fs.closeSync(fd)) // its connection is gone; closing may report that

  await d.start()
  assertLiveMount(t, d)
  t.equal(fs.statSync(img).size, size, `seed=${SEED}: the size set by the fsynced growing write survived`)
  for (const [o, l, p] of patterns) {
    t.doesNotThrow(() => qemuIo(img, [`read -P ${p} ${o} ${l}`]), `seed=${SEED}: qemu-io pattern 0x${p.toString(16)} at ${o}+${l} reads back`)
  }
  const rfd = fs.openSync(img, 'r')
  for (const [name, w] of Object.entries({ inside, growing })) {
    const at = firstDiff(preadAll(rfd, w.data.length, w.off), w.data)
    t.equal(at, -1, `seed=${SEED}: the fsynced ${name} write at ${w.off}+${w.data.length} reads back${at >= 0 ? ` (differs at ${w.off + at})` : ''}`)
  }
  fs.closeSync(rfd)

  // Usable for new writes and new images.
  t.doesNotThrow(() => qemuIo(img, [`write -P 0xb1 ${10 * MiB} ${MiB}`, `read -P 0xb1 ${10 * MiB} ${MiB}`, `read -P 0xa1 0 ${MiB}`]), `seed=${SEED}: new writes work`)
  t.doesNotThrow(() => {
    qemuImg(['create', '-f', 'raw', d.image('after.img'), '8M'])
    qemuIo(d.image('after.img'), ['write -P 0xb2 0 8M', 'read -P 0xb2 0 8M'])
  }, `seed=${SEED}: a new image can be made and written`)
})

t.test('kill -9 during a stream of unsynced writes: everything fsynced survives, nothing reads EIO', async t => {
  const seed = seedFor('kill-stream')
  const r = new Rng(seed)
  const d = await startDaemon(t, ['--object-size', '1M'])
  const img = d.image('stream.img')
  const pool = r.bytes(4 * MiB)
  const PER_BATCH = 4
  const SYNC_EVERY = 3
  const KILL_AT = 32 // two unsynced batches done and one in flight when the daemon dies

  const fh = await fs.promises.open(img, 'w+')
  const chunks: Array<{ off: number, data: Buffer }> = []
  let synced = 0 // chunks[0, synced) were written before an fsync that succeeded
  let pos = 0
  let stopped: unknown = null
  let killed: Promise<void> | null = null
  for (let batch = 0; batch < KILL_AT + 50 && stopped === null; batch++) {
    const writes: Array<Promise<unknown>> = []
    for (let k = 0; k < PER_BATCH; k++) {
      const len = r.int(4 * KiB, 300 * KiB)
      const p = r.int(0, pool.length - len)
      const data = pool.subarray(p, p + len)
      const off = pos + (r.chance(0.3) ? r.int(1, 200 * KiB) : 0) // sometimes a hole
      chunks.push({ off, data })
      pos = off + len
      writes.push(fh.write(data, 0, len, off))
    }
    if (batch === KILL_AT) killed = d.kill('SIGKILL')
    try {
      await Promise.all(writes)
      if ((batch + 1) % SYNC_EVERY === 0) {
        const n = chunks.length
        await fh.sync()
        synced = n
      }
    } catch (err) {
      stopped = err
    }
  }
  t.ok(killed !== null && stopped !== null, `seed=${SEED}: the write stream was cut by the kill (${String((stopped as Error | null)?.message)})`)
  await killed
  await fh.close().catch(() => {})
  assertDeadMount(t, d)
  t.ok(synced >= (KILL_AT - SYNC_EVERY) * PER_BATCH, `seed=${SEED}: ${synced} of ${chunks.length} chunks were fsynced before the kill`)

  await d.start()
  assertLiveMount(t, d)
  const syncedEnd = chunks.slice(0, synced).reduce((e, c) => Math.max(e, c.off + c.data.length), 0)
  const size = fs.statSync(img).size
  t.ok(size >= syncedEnd, `seed=${SEED}: the size (${size}) covers every fsynced write (${syncedEnd})`)

  const fd = fs.openSync(img, 'r+')
  try {
    let bad: string | null = null
    for (let i = 0; i < synced && bad === null; i++) {
      const c = chunks[i] as { off: number, data: Buffer }
      try {
        const at = firstDiff(preadAll(fd, c.data.length, c.off), c.data)
        if (at >= 0) bad = `chunk ${i} at ${c.off}+${c.data.length} differs at byte ${c.off + at}`
      } catch (err) {
        bad = `chunk ${i} at ${c.off}+${c.data.length}: ${(err as Error).message}`
      }
    }
    t.equal(bad, null, `seed=${SEED}: all ${synced} fsynced chunks read back intact`)

    let readErr: string | null = null
    let total = 0
    for (let p = 0; p < size && readErr === null; p += MiB) {
      try { total += preadAll(fd, MiB, p).length } catch (err) { readErr = `at ${p}: ${(err as Error).message}` }
    }
    t.equal(readErr, null, `seed=${SEED}: the whole image reads without error`)
    t.equal(total, size, `seed=${SEED}: all ${size} bytes were read`)
    t.doesNotThrow(() => qemuIo(img, [`read 0 ${size}`]), `seed=${SEED}: qemu-io reads the whole image too`)

    // Bytes past the surviving size were never part of the file: growing it again must show
    // zeros, as for any file, whatever unsynced writes had put there before the kill.
    const grow = Math.max(pos - size, 0) + 2 * MiB
    fs.ftruncateSync(fd, size + grow)
    const tail = preadAll(fd, grow, size)
    const nz = tail.findIndex(b => b !== 0)
    t.equal(nz, -1, `seed=${SEED}: after growing from ${size} to ${size + grow} the new range reads as zeros${nz >= 0 ? ` (byte ${size + nz} is ${tail[nz]})` : ''}`)

    // And the image takes new writes.
    const data = r.bytes(MiB + 3)
    pwriteAll(fd, data, 5 * MiB - 1)
    fs.fsyncSync(fd)
    t.equal(firstDiff(preadAll(fd, data.length, 5 * MiB - 1), data), -1, `seed=${SEED}: new writes after the restart read back`)
  } finally {
    fs.closeSync(fd)
  }
})

// ---------------------------------------------------------------------------------------------

t.test('rename and unlink behave like files', async t => {
  const d = await startDaemon(t, ['--object-size', '1M'])
  const objects = path.join(d.store, 'objects')
  const a = d.image('a.img')
  const b = d.image('b.img')
  qemuImg(['create', '-f', 'raw', a, '8M'])
  qemuIo(a, ['write -P 0x61 0 8M'])

  run('mv', [a, b])
  t.same(fs.readdirSync(d.mount), ['b.img'], 'mv: only the new name is listed')
  t.equal(errCode(() => fs.statSync(a)), 'ENOENT', 'the old name is gone')
  t.doesNotThrow(() => qemuIo(b, ['read -P 0x61 0 8M']), 'the data moved with the name')

  // mv onto an existing image replaces it, and the replaced image's objects are freed.
  const c = d.image('c.img')
  const baseline = filesUnder(objects).length
  qemuImg(['create', '-f', 'raw', c, '4M'])
  qemuIo(c, ['write -P 0x63 0 4M'])
  t.ok(filesUnder(objects).length > baseline, 'c.img has objects in the store')
  run('mv', ['-f', b, c])
  t.same(fs.readdirSync(d.mount), ['c.img'], 'mv over an existing image: one name is left')
  t.doesNotThrow(() => qemuIo(c, ['read -P 0x61 0 8M']), 'it holds the moved image\'s data')
  t.equal(filesUnder(objects).length, baseline, 'the replaced image\'s objects are gone from the store')

  // Unlink while open: the name goes at once, the descriptor keeps working until closed.
  const before = filesUnder(objects).length
  const e = d.image('e.img')
  qemuImg(['create', '-f', 'raw', e, '4M'])
  qemuIo(e, ['write -P 0x65 0 4M'])
  const eFiles = filesUnder(objects).length - before
  t.ok(eFiles >= 5, `e.img has its inode and 4 data objects in the store (${eFiles} files)`)
  const fd = fs.openSync(e, 'r+')
  fs.unlinkSync(e)
  t.equal(errCode(() => fs.statSync(e)), 'ENOENT', 'the unlinked name is gone at once')
  t.notOk(fs.readdirSync(d.mount).includes('e.img'), 'and not listed')
  const list = d.sheep(['image', 'list', '--json', '--mount', d.mount])
  t.notOk((JSON.parse(list.stdout) as Array<{ name: string }>).some(i => i.name === 'e.img'), 'sheep image list no longer shows it')
  t.equal(filesUnder(objects).length - before, eFiles, 'its objects stay while it is open')

  const readOpen = errCode(() => {
    const got = preadAll(fd, 4 * MiB, 0)
    if (!got.equals(Buffer.alloc(4 * MiB, 0x65))) throw new Error('wrong data')
  })
  t.equal(readOpen, null, 'the open descriptor still reads the data')
  const writeOpen = errCode(() => {
    const data = Buffer.alloc(100 * KiB, 0x66)
    pwriteAll(fd, data, MiB - 50 * KiB)
    if (!preadAll(fd, data.length, MiB - 50 * KiB).equals(data)) throw new Error('wrong data')
  })
  t.equal(writeOpen, null, 'and still writes')
  t.equal(errCode(() => fs.fstatSync(fd)), null, 'and fstat works on it')

  fs.closeSync(fd)
  // The kernel sends RELEASE after close(2) returns; the daemon frees the objects then.
  const freed = await waitFor(() => filesUnder(objects).length === before, 5000)
  t.ok(freed, `after the last close its objects are gone from the store (${filesUnder(objects).length - before} left)`)
  t.same(fs.readdirSync(d.mount), ['c.img'], 'the other image is untouched')
  t.doesNotThrow(() => qemuIo(c, ['read -P 0x61 0 8M']), 'and its data too')

  // The name can be used again, for a new empty image.
  qemuImg(['create', '-f', 'raw', e, '1M'])
  t.doesNotThrow(() => qemuIo(e, ['read -P 0 0 1M']), 'a new image of the same name starts empty')
})
