// copy_file_range on a real mount (src/cow/copy-range.ts): `cp` of a 1 GiB written image shares
// its blocks copy-on-write (the time is logged, not asserted), the copy allocates nothing until
// written, writes to either side never show in the other, a restart keeps both, deleting either
// leaves the other intact; and seeded os.copy_file_range calls, aligned and not, between images
// and within one, give what the same calls give on ext4. Kernel protocol only (libfuse 2 does not
// pass copy_file_range on). On a 2-node cluster, with a 32 MiB image (a 1 GiB one would cost
// minutes of replication): a source another host has open for writing is copied as bytes, one it
// closed is frozen and shared, and its later writes never reach the copy.

import t from 'tap'
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { type Daemon, startCluster, startDaemon, storedObjects, tempDir, waitFor } from '../helpers/daemon'

const MiB = 2 ** 20
const GiB = 2 ** 30
const libfuse2 = process.env.SHEEP_FUSE === 'libfuse2'
const skip = libfuse2 && 'libfuse 2 does not pass copy_file_range on'

function run (cmd: string, args: string[]): { code: number | null, stdout: string, stderr: string, ms: number } {
  const started = Date.now()
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000, maxBuffer: 16 * MiB })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - started }
}

function sha256 (file: string): string {
  const r = run('sha256sum', [file])
  if (r.code !== 0) throw new Error(`sha256sum ${file}: ${r.stderr}`)
  return r.stdout.split(' ')[0] as string
}

/** Data objects in the store (type 0: the first hex digit of the id). */
function dataObjects (d: Daemon): number {
  return storedObjects(d).filter(n => n.startsWith('0')).length
}

const BLOCK = 4 * MiB
const SECTOR = 4096
const NOISE = crypto.randomBytes(BLOCK)

/** Block idx of the test image: random bytes, every 4 KiB sector stamped with its block and sector (none repeats). */
function block (idx: number): Buffer {
  const b = Buffer.from(NOISE)
  for (let s = 0; s < BLOCK / SECTOR; s++) { b.writeUInt32LE(idx, s * SECTOR); b.writeUInt32LE(s, s * SECTOR + 4) }
  return b
}

function contentAt (pos: number, length: number): Buffer {
  const out = Buffer.alloc(length)
  for (let off = 0; off < length;) {
    const idx = Math.floor((pos + off) / BLOCK)
    const inBlock = (pos + off) % BLOCK
    const n = Math.min(BLOCK - inBlock, length - off)
    block(idx).copy(out, off, inBlock, inBlock + n)
    off += n
  }
  return out
}

/**
 * Writes the test image's content to file (fsynced), unless file is null; returns its sha256,
 * with `patch` ([offset, bytes]) laid over it.
 */
function writeImage (file: string | null, size: number, patch?: [number, Buffer]): string {
  const hash = crypto.createHash('sha256')
  const fd = file === null ? null : fs.openSync(file, 'w')
  try {
    for (let idx = 0; idx * BLOCK < size; idx++) {
      const b = block(idx)
      if (patch !== undefined) {
        const [at, bytes] = patch
        const from = Math.max(at, idx * BLOCK)
        const to = Math.min(at + bytes.length, (idx + 1) * BLOCK)
        if (from < to) bytes.copy(b, from - idx * BLOCK, from - at, to - at)
      }
      if (fd !== null) fs.writeSync(fd, b, 0, b.length, idx * BLOCK)
      hash.update(b)
    }
    if (fd !== null) fs.fsyncSync(fd)
  } finally {
    if (fd !== null) fs.closeSync(fd)
  }
  return hash.digest('hex')
}

function readAt (file: string, pos: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const b = Buffer.alloc(length)
    const n = fs.readSync(fd, b, 0, length, pos)
    return b.subarray(0, n)
  } finally {
    fs.closeSync(fd)
  }
}

function writeAt (file: string, pos: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  try {
    fs.writeSync(fd, data, 0, data.length, pos)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

t.test('cp of a 1 GiB written image shares its blocks; writes diverge; a restart and deleting either keep the other', { skip }, async t => {
  const d = await startDaemon(t)
  const a = d.image('a.img')
  const b = d.image('b.img')
  const started = Date.now()
  const want = writeImage(a, GiB)
  t.comment(`a.img: 1 GiB written in ${Date.now() - started} ms`)
  const dataBefore = dataObjects(d)
  t.equal(dataBefore, 256, 'a.img holds 256 data objects of 4 MiB')

  const cp = run('cp', [a, b])
  t.equal(cp.code, 0, `cp: ${cp.stderr}`)
  t.comment(`cp of a 1 GiB written image: ${cp.ms} ms`)
  const status = JSON.parse(d.sheep(['status', '--json', '--mount', d.mount]).stdout) as { fuse: { requests: Record<string, { count: number }> } }
  t.ok((status.fuse.requests.copy_file_range?.count ?? 0) > 0, 'cp went through COPY_FILE_RANGE')
  t.equal(fs.statSync(b).size, GiB)
  t.equal(fs.statSync(b).blocks, 0, 'the copy allocates nothing (st_blocks 0)')
  t.equal(dataObjects(d), dataBefore, 'no data object was written for the copy')
  const hashed = Date.now()
  t.equal(sha256(b), want, 'the copy reads as the source')
  t.comment(`sha256 of the copy through the mount: ${Date.now() - hashed} ms`)

  // Divergent writes: each lands on its own side only.
  const toA = crypto.randomBytes(4096)
  const toB = crypto.randomBytes(MiB + 3)
  writeAt(a, 5 * MiB + 100, toA)
  writeAt(b, 100 * MiB - 7, toB)
  const check = (when: string): void => {
    t.ok(readAt(a, 5 * MiB + 100, 4096).equals(toA), `${when}: a reads its write`)
    t.ok(readAt(b, 5 * MiB + 100, 4096).equals(contentAt(5 * MiB + 100, 4096)), `${when}: b does not see a's write`)
    t.ok(readAt(b, 100 * MiB - 7, toB.length).equals(toB), `${when}: b reads its write`)
    t.ok(readAt(a, 100 * MiB - 7, toB.length).equals(contentAt(100 * MiB - 7, toB.length)), `${when}: a does not see b's write`)
  }
  check('after the writes')
  t.ok(fs.statSync(b).blocks * 512 <= 2 * 4 * MiB, `the copy owns only the blocks it wrote (${fs.statSync(b).blocks * 512} bytes)`)

  await d.stop()
  await d.start()
  check('after a restart')
  t.notMatch(d.log, /set aside/, 'the restart set nothing aside')

  fs.unlinkSync(a)
  t.equal(sha256(b), writeImage(null, GiB, [100 * MiB - 7, toB]), 'b intact after a is deleted')
  t.ok(dataObjects(d) > 250, 'the blocks b reads are kept')
  fs.unlinkSync(b)
  t.equal(dataObjects(d), 0, 'deleting both frees every data object')
})

// The same seeded calls on the mount and on ext4: os.copy_file_range aligned (whole 4 MiB blocks
// at the same offset, shared) and not (copied), between images and within one; overlapping
// ranges within one file must fail the same way on both.
const SCRIPT = `
import os, random, sys, errno
seed, sheep, ext4 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
M = 1 << 20
SIZE = 24 * M
rng = random.Random(seed)
names = ['x.img', 'y.img']
for n in names:
    content = bytearray(rng.randbytes(SIZE))
    content[8 * M:16 * M] = bytes(8 * M)  # a hole
    for root in (sheep, ext4):
        with open(os.path.join(root, n), 'wb') as f:
            f.write(content[:8 * M])
            f.seek(16 * M)
            f.write(content[16 * M:])
def copy(root, src, dst, sp, dp, n):
    fi = os.open(os.path.join(root, src), os.O_RDONLY)
    fo = os.open(os.path.join(root, dst), os.O_WRONLY)
    try:
        done = 0
        while done < n:
            got = os.copy_file_range(fi, fo, n - done, sp + done, dp + done)
            if got == 0:
                break
            done += got
        return done
    except OSError as e:
        return 'errno %d' % e.errno
    finally:
        os.close(fi)
        os.close(fo)
shared = overlapping = 0
for step in range(24):
    src, dst = rng.choice(names), rng.choice(names)
    kind = rng.choice(['aligned', 'unaligned', 'mixed'])
    if kind == 'aligned':
        sp = rng.randrange(0, 5) * 4 * M
        n = rng.randrange(1, 3) * 4 * M
    else:
        sp = rng.randrange(0, SIZE)
        n = rng.randrange(1, 6 * M)
    dp = sp if (src != dst and kind != 'unaligned') else rng.randrange(0, SIZE)
    if src == dst and sp < dp + n and dp < sp + n:
        overlapping += 1
    elif src != dst and sp == dp:
        shared += 1
    got = [copy(root, src, dst, sp, dp, n) for root in (sheep, ext4)]
    if got[0] != got[1]:
        print('step %d: %s %d -> %s %d + %d: sheep %s, ext4 %s' % (step, src, sp, dst, dp, n, got[0], got[1]))
        sys.exit(1)
print('%d same-offset copies between images, %d overlapping within one' % (shared, overlapping))
`

t.test('seeded os.copy_file_range calls, aligned and not, between images and within one, equal the same calls on ext4', { skip }, async t => {
  const d = await startDaemon(t)
  const scratch = tempDir(t, 'sheep-copy-ext4-')
  const seed = Number(process.env.SHEEP_TEST_SEED ?? '') || crypto.randomInt(1, 2 ** 31)
  const r = run('python3', ['-c', SCRIPT, String(seed), d.mount, scratch])
  t.equal(r.code, 0, `seed ${seed} (SHEEP_TEST_SEED replays it): ${r.stdout}${r.stderr}`)
  t.comment(`seed ${seed}: ${r.stdout.trim()} (${r.ms} ms)`)
  for (const name of ['x.img', 'y.img']) {
    t.equal(fs.statSync(d.image(name)).size, fs.statSync(path.join(scratch, name)).size, `${name}: same size`)
    t.equal(sha256(d.image(name)), sha256(path.join(scratch, name)), `seed ${seed}: ${name} equals the ext4 file`)
  }
  await d.stop()
  await d.start()
  t.notMatch(d.log, /set aside/, 'a restart sets nothing aside')
  for (const name of ['x.img', 'y.img']) t.equal(sha256(d.image(name)), sha256(path.join(scratch, name)), `${name} after a restart`)
})

function vidOf (file: string): string {
  return run('getfattr', ['-n', 'user.sheep.vid', '--only-values', '--absolute-names', file]).stdout
}

t.test('on a 2-node cluster: a source open for writing on the other host is copied as bytes; once closed it is shared, and its later writes never show in the copy', { skip }, async t => {
  const [h1, h2] = await startCluster(t, 2) as [Daemon, Daemon]
  const made = h1.sheep(['image', 'create', 'vm.img', '32M', '--copies', '2', '--mount', h1.mount])
  t.equal(made.code, 0, made.stderr)
  const data = crypto.randomBytes(32 * MiB)
  const fd = fs.openSync(h1.image('vm.img'), 'r+')
  let open = true
  t.teardown(() => { if (open) fs.closeSync(fd) })
  fs.writeSync(fd, data, 0, data.length, 0)
  fs.fsyncSync(fd)
  t.ok(await waitFor(() => fs.existsSync(h2.image('vm.img')), 10_000), 'h2 sees the image')

  const busy = run('cp', [h2.image('vm.img'), h2.image('c1.img')])
  t.equal(busy.code, 0, `cp on h2 while h1 writes the source: ${busy.stderr}`)
  t.equal(fs.statSync(h2.image('c1.img')).blocks * 512, 32 * MiB, 'h1 refused the freeze (open for writing there): the bytes were copied')
  t.ok(readAt(h2.image('c1.img'), 0, data.length).equals(data), 'the copy reads as the source')
  const later = Buffer.alloc(MiB, 0x77)
  fs.writeSync(fd, later, 0, later.length, 0)
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  open = false
  later.copy(data, 0)
  // The kernel sends RELEASE after close(2) returns: wait until h1 has no handle open.
  t.ok(await waitFor(() => !(JSON.parse(h1.sheep(['image', 'list', '--json', '--mount', h1.mount]).stdout) as Array<{ name: string, openHandles: number }>)
    .some(i => i.name === 'vm.img' && i.openHandles > 0), 10_000), 'h1 closed the source')

  const vid = vidOf(h1.image('vm.img'))
  const shared = run('cp', [h2.image('vm.img'), h2.image('c2.img')])
  t.equal(shared.code, 0, `cp on h2 once h1 closed the source: ${shared.stderr}`)
  t.equal(fs.statSync(h2.image('c2.img')).blocks, 0, 'now the blocks are shared: the copy allocates nothing')
  t.ok(readAt(h2.image('c2.img'), 0, data.length).equals(data), 'and has h1\'s last write')
  // h1 writes the source again at once (before its directory poll): its open finds the new
  // inode, takes the token back, and copies up; nothing lands in place.
  const fd2 = fs.openSync(h1.image('vm.img'), 'r+')
  fs.writeSync(fd2, Buffer.alloc(MiB, 0x88), 0, MiB, 8 * MiB)
  fs.fsyncSync(fd2)
  fs.closeSync(fd2)
  t.not(vidOf(h1.image('vm.img')), vid, 'h1 wrote the source as its new inode')
  t.ok(readAt(h2.image('c2.img'), 0, data.length).equals(data), 'h1\'s write after the copy does not show in the copy on h2')
  t.ok(await waitFor(() => fs.existsSync(h1.image('c2.img')), 10_000))
  t.ok(readAt(h1.image('c2.img'), 0, data.length).equals(data), 'nor on h1, which reads the copy through the frozen inode')
  t.ok(readAt(h2.image('c1.img'), 8 * MiB, MiB).equals(data.subarray(8 * MiB, 9 * MiB)), 'nor in the byte copy')
})
