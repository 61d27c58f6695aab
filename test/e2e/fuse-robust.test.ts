// The FUSE sessions under interrupted callers, operations slower than the I/O timeout, many
// lookups and a stop during the start, on a real mount with real processes. Slowness comes from
// the daemon's slow points (src/failpoints.ts): the armed read or write waits before its image
// call, as one held up on the network would.

import t from 'tap'
import { type ChildProcess, spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { Daemon, errCode, isMounted, qemuImg, startDaemon, tempDir, waitFor } from '../helpers/daemon'

const MiB = 2 ** 20
const libfuse2 = process.env.SHEEP_FUSE === 'libfuse2'

interface FuseStatus { inFlight: Record<string, number>, nodes: number }

function fuseStatus (d: Daemon): FuseStatus {
  const r = d.sheep(['status', '--json', '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep status: ${r.stderr}`)
  return (JSON.parse(r.stdout) as { fuse: FuseStatus }).fuse
}

/** A daemon whose n-th armed read or write (`point`: fuse-read, fuse-write) waits `ms` first; arm() arms it. */
async function slowDaemon (t: Parameters<typeof startDaemon>[0], point: string, ms: number, args: string[] = []): Promise<{ d: Daemon, arm: () => void, disarm: () => void }> {
  const armFile = path.join(tempDir(t, 'sheep-arm-'), 'armed')
  const d = await startDaemon(t, args, { SHEEP_FAILPOINT: point, SHEEP_FAILPOINT_DELAY: String(ms), SHEEP_FAILPOINT_ARM: armFile })
  return { d, arm: () => fs.writeFileSync(armFile, ''), disarm: () => fs.rmSync(armFile, { force: true }) }
}

/**
 * Python on the mount: `op` is "read" or "write"; prints "ok N" or the errno name. The buffer is
 * page-aligned (mmap): the kernel splits one whose pages are more than max_pages into two requests.
 * Files are opened without O_DIRECT: images are direct I/O on both sessions anyway.
 */
function pyIo (file: string, op: 'read' | 'write', offset: number, size: number, fill = 0, hold = false): ChildProcess {
  const code = `
import errno, mmap, os
fd = os.open(${JSON.stringify(file)}, os.O_RDWR)
buf = mmap.mmap(-1, ${size})
try:
    if ${JSON.stringify(op)} == "write":
        buf.write(bytes([${fill}]) * ${size})
        n = os.pwrite(fd, buf, ${offset})
    else:
        n = os.preadv(fd, [buf], ${offset})
    print("ok", n, flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
${hold ? 'import sys; sys.stdin.read()' : ''}
`
  return spawn('python3', ['-c', code], { stdio: [hold ? 'pipe' : 'ignore', 'pipe', 'inherit'] })
}

/**
 * Like pyIo, but the file stays open until `close` is called: what the call printed, and close.
 * (A close while the call still runs in the daemon releases the image under it.)
 */
async function pyIoHeld (file: string, op: 'read' | 'write', offset: number, size: number, fill = 0): Promise<{ said: string, close: () => Promise<void> }> {
  const p = pyIo(file, op, offset, size, fill, true)
  const exited = new Promise(resolve => p.once('exit', resolve))
  let out = ''
  const said = await new Promise<string>(resolve => {
    p.stdout?.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('\n')) resolve(out.trim()) })
    p.once('exit', () => resolve(out.trim()))
  })
  return { said, close: async () => { p.stdin?.end(); await exited } }
}

async function outcome (p: ChildProcess): Promise<string> {
  let out = ''
  p.stdout?.on('data', (d: Buffer) => { out += d.toString() })
  await new Promise(resolve => p.once('exit', resolve))
  return out.trim()
}

/** Where `buf` is not all `fill`: the runs of other bytes (for a failure's message). */
function describe (buf: Buffer, fill: number): string {
  const runs: string[] = []
  for (let i = 0; i < buf.length && runs.length < 8;) {
    if (buf[i] === fill) { i++; continue }
    let j = i
    while (j < buf.length && buf[j] === buf[i]) j++
    runs.push(`[${i}, ${j}): 0x${(buf[i] as number).toString(16)}`)
    i = j
  }
  return runs.join(', ')
}

function readAt (file: string, offset: number, size: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(size)
    fs.readSync(fd, buf, 0, size, offset)
    return buf
  } finally {
    fs.closeSync(fd)
  }
}

t.test('a reader killed while its READ waits in the daemon exits at once (INTERRUPT: EINTR)', { skip: libfuse2 && 'INTERRUPT is the kernel session\'s' }, async t => {
  const { d, arm, disarm } = await slowDaemon(t, 'fuse-read', 30_000)
  const img = d.image('i.img')
  qemuImg(['create', '-f', 'raw', img, '8M'])
  arm()
  const reader = pyIo(img, 'read', 0, 4096)
  const exited = new Promise(resolve => reader.once('exit', resolve))
  t.ok(await waitFor(() => fuseStatus(d).inFlight.read === 1, 10_000), 'the READ waits in the daemon')
  disarm()
  const killedAt = Date.now()
  reader.kill('SIGKILL')
  const gone = await Promise.race([exited.then(() => true), new Promise(resolve => setTimeout(resolve, 10_000, false))])
  t.ok(gone, 'the killed reader is gone')
  t.ok(Date.now() - killedAt < 5000, `within ${Date.now() - killedAt} ms, not after the 30 s the read still takes`)
  t.equal(await outcome(pyIo(img, 'read', 0, 4096)), 'ok 4096', 'the next read is served')
})

t.test('a killed writer waits for its WRITE, which lands whole', { skip: libfuse2 && 'INTERRUPT is the kernel session\'s' }, async t => {
  const { d, arm } = await slowDaemon(t, 'fuse-write', 2000)
  const img = d.image('w.img')
  qemuImg(['create', '-f', 'raw', img, '8M'])
  arm()
  const writer = pyIo(img, 'write', 0, MiB, 0xab)
  const exited = new Promise(resolve => writer.once('exit', resolve))
  t.ok(await waitFor(() => fuseStatus(d).inFlight.write === 1, 10_000), 'the WRITE waits in the daemon')
  writer.kill('SIGKILL')
  await exited
  t.same(fuseStatus(d).inFlight, {}, 'the killed writer ended only once its write was answered')
  const got = readAt(img, 0, MiB)
  t.ok(got.equals(Buffer.alloc(MiB, 0xab)), 'and every byte of it is in the image', { diff: describe(got, 0xab) })
})

for (const frontend of libfuse2 ? ['libfuse2'] : ['kernel', 'libfuse2']) {
  t.test(`${frontend}: a write and a read answered ETIMEDOUT never touch a request buffer after, while others reuse them`, async t => {
    const { d, arm, disarm } = await slowDaemon(t, 'fuse-write', 4000, ['--io-timeout', '1', '--fuse', frontend])
    const img = d.image('t.img')
    qemuImg(['create', '-f', 'raw', img, '16M'])
    // 1 MiB writes: the kernel session hands their buffers back to its readers; libfuse 2 takes
    // them as eight 128 KiB requests into its threads' buffers.
    const busy = async (op: 'read' | 'write', ms: number): Promise<void> => {
      const until = Date.now() + ms
      while (Date.now() < until) {
        await Promise.all([1, 2, 3].map(async i => {
          const said = await outcome(pyIo(img, op, (4 + i) * MiB, MiB, 0xb0 + i))
          if (said !== `ok ${MiB}`) throw new Error(`${op} at ${4 + i} MiB: ${said}`)
        }))
      }
    }
    arm()
    const started = Date.now()
    const slow = await pyIoHeld(img, 'write', 0, MiB, 0xaa)
    t.teardown(slow.close)
    t.equal(slow.said, 'ETIMEDOUT', 'the slow write is answered ETIMEDOUT')
    disarm()
    // Its image call starts 4 s after it came, and other requests take its buffer meanwhile.
    await busy('write', 4000 - (Date.now() - started) + 1000)
    t.ok(await waitFor(() => !readAt(img, 0, MiB).equals(Buffer.alloc(MiB)), 5000), 'the late write lands')
    // The kernel session took the write as one request; libfuse 2 as 128 KiB pieces, of which
    // the first, answered ETIMEDOUT, ended the write: the pieces after it were never sent.
    const got = readAt(img, 0, MiB)
    const landed = frontend === 'kernel' ? MiB : 128 * 1024
    t.ok(got.subarray(0, landed).equals(Buffer.alloc(landed, 0xaa)), 'with its own bytes, not those of a later request', { diff: describe(got.subarray(0, landed), 0xaa) })
    t.ok(got.subarray(landed).equals(Buffer.alloc(MiB - landed)), 'nothing else there')
    for (const i of [1, 2, 3]) t.ok(readAt(img, (4 + i) * MiB, MiB).equals(Buffer.alloc(MiB, 0xb0 + i)), `the writes after it hold theirs (${4 + i} MiB)`)
    t.match(d.log, /write .*(took longer than 1000 ms|ETIMEDOUT)/, 'the log says so')
  })

  t.test(`${frontend}: a read answered ETIMEDOUT never writes into a buffer another read got`, async t => {
    const { d, arm, disarm } = await slowDaemon(t, 'fuse-read', 4000, ['--io-timeout', '1', '--fuse', frontend])
    const img = d.image('r.img')
    qemuImg(['create', '-f', 'raw', img, '16M'])
    for (const [at, fill] of [[0, 0xaa], [5, 0xb1], [6, 0xb2], [7, 0xb3]] as const) t.equal(await outcome(pyIo(img, 'write', at * MiB, MiB, fill)), `ok ${MiB}`)
    arm()
    const started = Date.now()
    const slow = await pyIoHeld(img, 'read', 0, MiB)
    t.teardown(slow.close)
    t.equal(slow.said, 'ETIMEDOUT', 'the slow read is answered ETIMEDOUT')
    disarm()
    // The reads after it must each see their own bytes, never 0xaa from the late one.
    let reads = 0
    const until = Date.now() + 4000 - (Date.now() - started) + 1000
    while (Date.now() < until) {
      await Promise.all([1, 2, 3].map(async i => {
        const code = `import mmap, os, sys; fd = os.open(${JSON.stringify(img)}, os.O_RDONLY); b = mmap.mmap(-1, ${MiB}); os.preadv(fd, [b], ${(4 + i) * MiB}); sys.exit(0 if b[:] == bytes([${0xb0 + i}]) * ${MiB} else 1)`
        const p = spawn('python3', ['-c', code], { stdio: 'ignore' })
        const status = await new Promise(resolve => p.once('exit', resolve))
        if (status !== 0) throw new Error(`a read at ${4 + i} MiB saw other bytes`)
        reads++
      }))
    }
    t.ok(reads > 0, `${reads} reads beside the late one saw their own bytes`)
    t.equal(await outcome(pyIo(img, 'read', 0, MiB)), `ok ${MiB}`, 'the range the slow read wanted reads again')
  })
}

t.test('node ids balance: a long run of create, lookup, rename and unlink leaves the node table as it was', { skip: libfuse2 && 'node ids are the kernel session\'s' }, async t => {
  const d = await startDaemon(t)
  const before = fuseStatus(d).nodes
  const code = `
import os, sys
m = sys.argv[1]
open(os.path.join(m, "keep.img"), "wb").close()
for i in range(100):
    a, b = os.path.join(m, "n%d.img" % i), os.path.join(m, "m%d.img" % i)
    with open(a, "wb") as f:
        f.write(b"x" * 4096)
    os.stat(a)
    os.rename(a, b)
    os.stat(b)
    try:
        os.stat(a)
    except FileNotFoundError:
        pass
    if i % 3 == 0:
        os.rename(b, os.path.join(m, "keep.img"))
    else:
        os.unlink(b)
`
  const runs: number[] = []
  for (let run = 0; run < 2; run++) {
    const p = spawn('python3', ['-c', code, d.mount], { stdio: ['ignore', 'ignore', 'inherit'] })
    t.equal(await new Promise(resolve => p.once('exit', resolve)), 0, `run ${run + 1}: 100 images created, renamed, replaced or unlinked`)
    // FORGETs come when the kernel drops its inodes, soon after the last close and unlink.
    await waitFor(() => fuseStatus(d).nodes <= before + 2, 10_000)
    runs.push(fuseStatus(d).nodes)
  }
  t.ok(runs.every(n => n <= before + 2), `nodes: ${before} before, ${runs.join(' and ')} after each run (keep.img may stay known)`)
  t.same(fs.readdirSync(d.mount), ['keep.img'])
})

for (const frontend of libfuse2 ? ['libfuse2'] : ['kernel', 'libfuse2']) {
  t.test(`${frontend}: SIGTERM while the daemon is still starting, its mount up: it unmounts and exits`, async t => {
    const dir = tempDir(t)
    const armFile = path.join(dir, 'armed')
    fs.writeFileSync(armFile, '')
    const d = new Daemon(dir, ['--fuse', frontend], { SHEEP_FAILPOINT: 'node-start:mounted', SHEEP_FAILPOINT_DELAY: '2000', SHEEP_FAILPOINT_ARM: armFile })
    t.teardown(() => d.cleanupSync())
    const started = d.start().then(() => 'ready', (err: Error) => err.message)
    t.ok(await waitFor(() => isMounted(d.mount), 20_000), 'mounted, the start not done')
    const proc = d.proc as ChildProcess
    const exited = new Promise<number | null>(resolve => proc.once('exit', code => resolve(code)))
    proc.kill('SIGTERM')
    const code = await Promise.race([exited, new Promise<string>(resolve => setTimeout(resolve, 20_000, 'still running'))])
    t.equal(code, 0, 'the daemon exits')
    t.match(await started, /stopped while starting/, 'and says why it never became ready')
    t.notOk(isMounted(d.mount), 'no mount is left behind')
    t.equal(errCode(() => fs.readdirSync(d.mount)), 'ok', 'the mount point is a plain folder again')

    // And a start after it works.
    const again = new Daemon(dir, ['--fuse', frontend])
    t.teardown(async () => { await again.stop(); again.cleanupSync() })
    await again.start()
    t.ok(isMounted(again.mount), 'the next start mounts')
  })
}
