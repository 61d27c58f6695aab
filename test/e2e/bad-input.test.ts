// Guarantee 4 of DESIGN.md ("Guarantees the tests must prove"): bad input gets a clear error and
// loses nothing. Bad names and offsets through the mount, corrupt and missing object files in the
// store, a second daemon on a busy store or mount point, a foreign store directory, and garbage on
// the control socket.

import t from 'tap'
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { type Daemon, errCode, isMounted, qemuImg, qemuIo, type RunResult, SHEEP_BIN, startDaemon, tempDir, unmountIfMounted } from '../helpers/daemon'
import { MAX_IMAGE_SIZE } from '../../src/cow/image'

const KiB = 2 ** 10
const MiB = 2 ** 20
const TiB = 2 ** 40

/** The part of a tap test the helpers need. */
interface T { teardown (fn: () => unknown): void }


/** qemu-io output of commands that are expected to fail. */
function qemuIoFailure (file: string, commands: string[], extra: string[] = []): string {
  const r = spawnSync('qemu-io', ['-f', 'raw', ...extra, ...commands.flatMap(c => ['-c', c]), file], { encoding: 'utf8', timeout: 60_000 })
  return r.stdout + r.stderr
}

interface ImageInfo { name: string, vid: number, size: number, allocated: number }

function images (d: Daemon): ImageInfo[] {
  const r = d.sheep(['image', 'list', '--json', '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep image list failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as ImageInfo[]
}

const vidHex = (vid: number): string => vid.toString(16).padStart(6, '0')
/** File name of data object (vid, idx): type 0, reserved 0, vid (6 hex), index (8 hex). */
const dataObjectName = (vid: number, idx: number): string => `00${vidHex(vid)}${idx.toString(16).padStart(8, '0')}`
const inodeObjectName = (vid: number): string => `10${vidHex(vid)}00000000`

function alive (d: Daemon): boolean {
  const p = d.proc
  return p !== null && p.exitCode === null && p.signalCode === null
}

/**
 * Whether the daemon's log matches re within 5 s. The harness collects the log from a pipe, so
 * lines arrive only while this process's event loop runs (not during spawnSync calls).
 */
async function waitForLog (d: Daemon, re: RegExp): Promise<boolean> {
  const deadline = Date.now() + 5000
  while (!re.test(d.log)) {
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return true
}

/** Resolves with the exit code once the process has exited and its output is read; null after `ms`. */
function closed (proc: ChildProcess, ms = 20_000): Promise<number | null> {
  return new Promise(resolve => {
    if (proc.exitCode !== null && (proc.stdout?.closed ?? true) && (proc.stderr?.closed ?? true)) return resolve(proc.exitCode)
    const timer = setTimeout(() => resolve(null), ms)
    proc.once('close', code => { clearTimeout(timer); resolve(code) })
  })
}

/**
 * Runs `sheep start ...` in the foreground, expecting it to give up. If it does not exit within
 * 20 s it is killed (and the test sees code null). Teardown kills it by PID and unmounts `mounts`.
 */
async function runDaemon (t: T, args: string[], env: NodeJS.ProcessEnv, mounts: string[]): Promise<RunResult> {
  const proc = spawn(process.execPath, [SHEEP_BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    try { if (proc.exitCode === null && proc.signalCode === null && proc.pid !== undefined) process.kill(proc.pid, 'SIGKILL') } catch {}
    for (const m of mounts) unmountIfMounted(m)
  })
  let stdout = ''
  let stderr = ''
  proc.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  proc.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  const code = await closed(proc)
  if (code === null && proc.pid !== undefined) try { process.kill(proc.pid, 'SIGKILL') } catch {}
  return { code, stdout, stderr }
}

/** Runs the sheep command synchronously with the given environment. */
function sheepCli (args: string[], env: NodeJS.ProcessEnv): RunResult {
  const r = spawnSync(process.execPath, [SHEEP_BIN, ...args], { env, encoding: 'utf8', timeout: 60_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/** Registers a teardown that kills a detached daemon whose start printed "(pid N)", if any. */
function killDetachedAfter (t: T, r: RunResult, mounts: string[]): void {
  const pid = Number(/\(pid (\d+)\)/.exec(r.stdout)?.[1])
  t.teardown(() => {
    if (Number.isInteger(pid) && pid > 0) try { process.kill(pid, 'SIGKILL') } catch {}
    for (const m of mounts) unmountIfMounted(m)
  })
}

/** Every file under dir, relative, with its size and a hash of its content. */
function snapshotTree (dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const parent = e.parentPath ?? (e as unknown as { path: string }).path
    const full = path.join(parent, e.name)
    const rel = path.relative(dir, full)
    if (e.isDirectory()) out[rel + '/'] = 'dir'
    else out[rel] = crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex')
  }
  return out
}

/** The daemon's control socket, as src/control/paths.ts computes it for SHEEP_RUN_DIR = runDir. */
function controlSocket (d: Daemon): string {
  const key = crypto.createHash('sha256').update(path.resolve(d.mount)).digest('hex').slice(0, 20)
  return path.join(d.runDir, `${key}.sock`)
}

interface Reply { type: string, ok?: boolean, result?: unknown, error?: { code: string, message: string } }

/**
 * Sends raw bytes on a new control connection and returns the first reply line (parsed), or the
 * raw text when the daemon closed without a full line. With halfClose the client shuts down its
 * writing side after the request, as `nc -U` or socat do.
 */
function sendRaw (socketPath: string, data: string, opts: { halfClose?: boolean } = {}): Promise<Reply | string> {
  return new Promise(resolve => {
    const socket = net.createConnection(socketPath)
    let text = ''
    let done = false
    const finish = (): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      const nl = text.indexOf('\n')
      if (nl < 0) return resolve(text === '' ? '<closed without an answer>' : text)
      try {
        resolve(JSON.parse(text.slice(0, nl)) as Reply)
      } catch {
        resolve(text)
      }
    }
    const timer = setTimeout(() => { text = text || '<no answer within 10 s>'; finish() }, 10_000)
    socket.setEncoding('utf8')
    socket.on('connect', () => { if (opts.halfClose) socket.end(data); else socket.write(data) })
    socket.on('data', (c: string) => { text += c; if (text.includes('\n')) finish() })
    socket.on('error', () => finish())
    socket.on('close', () => finish())
  })
}

t.test('bad names through the mount get the right errno and create nothing', async t => {
  const d = await startDaemon(t)
  const keep = d.image('keep.img')
  const content = Buffer.alloc(64 * KiB, 0x5a)
  fs.writeFileSync(keep, content)

  const bad: Array<[string, string, string]> = [
    ['a@b.img', 'EINVAL', '"@" separates image and snapshot'],
    ['x'.repeat(256), 'ENAMETOOLONG', '256 ASCII bytes'],
    ['é'.repeat(128), 'ENAMETOOLONG', '128 characters but 256 UTF-8 bytes'],
    ['y'.repeat(2000), 'ENAMETOOLONG', '2000 bytes'],
    ['.sheep', 'EINVAL', 'reserved .sheep'],
    ['.sheep-control', 'EINVAL', 'reserved .sheep*'],
    ['tab\tname', 'EINVAL', 'control character']
  ]
  for (const [name, code, why] of bad) {
    t.equal(errCode(() => fs.openSync(d.image(name), 'w')), code, `create ${why} -> ${code}`)
    t.equal(errCode(() => fs.statSync(d.image(name))), name.length > 1000 ? 'ENAMETOOLONG' : 'ENOENT', `${why}: nothing was created`)
  }
  // .snapshots is the (unlisted) folder of snapshot files: not a file, and nothing can be made in it.
  t.equal(errCode(() => fs.openSync(d.image('.snapshots'), 'w')), 'EISDIR', 'create .snapshots -> EISDIR')
  t.ok(fs.statSync(d.image('.snapshots')).isDirectory(), '.snapshots is still the snapshot folder')
  t.equal(errCode(() => fs.openSync(d.image('.snapshots/x.img'), 'w')), 'EROFS', 'create inside .snapshots -> EROFS')
  const longest = 'z'.repeat(255)
  t.equal(errCode(() => fs.closeSync(fs.openSync(d.image(longest), 'w'))), 'ok', 'a 255-byte name is fine')
  fs.unlinkSync(d.image(longest))

  t.equal(errCode(() => fs.mkdirSync(d.image('dir'))), 'EPERM', 'mkdir -> EPERM')
  t.equal(errCode(() => fs.openSync(d.image('dir/x.img'), 'w')), 'ENOENT', 'a nested path -> ENOENT')
  t.equal(errCode(() => fs.openSync(d.image('a/b/c.img'), 'w')), 'ENOENT', 'a deeper nested path -> ENOENT')
  t.equal(errCode(() => fs.openSync(path.join(keep, 'x'), 'w')), 'ENOTDIR', 'a path under an image -> ENOTDIR')
  t.equal(errCode(() => fs.symlinkSync('keep.img', d.image('link'))), 'EPERM', 'symlink -> EPERM')
  t.equal(errCode(() => fs.linkSync(keep, d.image('hard'))), 'EPERM', 'link -> EPERM')

  const renames: Array<[string, string]> = [
    ['a@b.img', 'EINVAL'],
    ['x'.repeat(300), 'ENAMETOOLONG'],
    ['.snapshots', 'EISDIR'],
    ['.sheepdog', 'EINVAL'],
    ['dir/x.img', 'ENOENT']
  ]
  for (const [to, code] of renames) {
    t.equal(errCode(() => fs.renameSync(keep, d.image(to))), code, `rename to ${to.slice(0, 20)} -> ${code}`)
  }
  t.same(fs.readdirSync(d.mount), ['keep.img'], 'the mount lists only the original image')
  t.same(images(d).map(i => i.name), ['keep.img'], 'the daemon knows only the original image')
  t.ok(fs.readFileSync(keep).equals(content), 'the original image is intact after the refused renames')
})

t.test('offsets: EFBIG past the maximum size, reads past the end return 0, writes past the end grow', async t => {
  t.equal(MAX_IMAGE_SIZE, 64 * TiB, 'the maximum image size is 64 TiB')
  const MAX = MAX_IMAGE_SIZE
  const d = await startDaemon(t)
  const img = d.image('grow.img')
  fs.writeFileSync(img, '')
  const fd = fs.openSync(img, 'r+')
  let open = true
  t.teardown(() => { if (open) try { fs.closeSync(fd) } catch {} })
  const page = Buffer.alloc(4096, 0xc3)

  t.equal(errCode(() => fs.writeSync(fd, page, 0, page.length, MAX)), 'EFBIG', 'a write at the maximum size -> EFBIG')
  t.equal(errCode(() => fs.writeSync(fd, page, 0, page.length, 2 ** 50)), 'EFBIG', 'a write at 1 PiB -> EFBIG')
  t.equal(errCode(() => fs.truncateSync(img, MAX + 1)), 'EFBIG', 'truncate to one byte past the maximum -> EFBIG')
  t.equal(errCode(() => fs.ftruncateSync(fd, MAX + 4096)), 'EFBIG', 'ftruncate past the maximum -> EFBIG')
  t.equal(fs.fstatSync(fd).size, 0, 'the refused operations left the size at 0')
  t.equal(images(d)[0]?.size, 0, 'and the daemon agrees')

  // A write past the end grows the image like a file; the gap reads as zeros.
  const at = 10 * MiB + 100
  t.equal(fs.writeSync(fd, page, 0, page.length, at), page.length, 'a write 10 MiB past the end succeeds')
  t.equal(fs.fstatSync(fd).size, at + page.length, 'the size grew to the end of the write')
  t.equal(images(d)[0]?.size, at + page.length, 'the daemon has the new size')
  const hole = Buffer.alloc(at, 0xff)
  t.equal(fs.readSync(fd, hole, 0, hole.length, 0), at, 'the gap reads in full')
  t.ok(hole.every(b => b === 0), 'the gap reads as zeros')
  const back = Buffer.alloc(page.length)
  fs.readSync(fd, back, 0, back.length, at)
  t.ok(back.equals(page), 'the written bytes read back')

  // Reads at or past the end return 0 bytes; a read across the end returns what is left.
  const size = at + page.length
  const buf = Buffer.alloc(8192)
  t.equal(fs.readSync(fd, buf, 0, buf.length, size), 0, 'a read at the end returns 0 bytes')
  t.equal(fs.readSync(fd, buf, 0, buf.length, size + 12345), 0, 'a read past the end returns 0 bytes')
  t.equal(fs.readSync(fd, buf, 0, buf.length, 2 ** 52), 0, 'a read far past the maximum returns 0 bytes')
  t.equal(fs.readSync(fd, buf, 0, buf.length, size - 100), 100, 'a read across the end returns the bytes up to it')

  // Up to the maximum exactly.
  t.equal(fs.writeSync(fd, page, 0, page.length, MAX - page.length), page.length, 'a write ending exactly at the maximum succeeds')
  t.equal(fs.fstatSync(fd).size, MAX, 'the image is now 64 TiB')
  fs.readSync(fd, back, 0, back.length, MAX - page.length)
  t.ok(back.equals(page), 'the last page of a 64 TiB image reads back')
  t.equal(errCode(() => fs.writeSync(fd, page, 0, 1, MAX)), 'EFBIG', 'one byte at the maximum -> EFBIG')
  let straddle = -1
  const code = errCode(() => { straddle = fs.writeSync(fd, page, 0, page.length, MAX - 2048) })
  t.ok(code === 'EFBIG' || (code === 'ok' && straddle <= 2048), `a write across the maximum fails or is cut at it (${code}, ${straddle})`)
  t.equal(fs.fstatSync(fd).size, MAX, 'the size never exceeds the maximum')
  t.equal(fs.readSync(fd, buf, 0, buf.length, MAX), 0, 'reads at the maximum return 0 bytes')
  const info = images(d)[0]
  t.equal(info?.size, MAX, 'the daemon reports 64 TiB')
  t.ok((info?.allocated ?? Infinity) <= 3 * 4 * MiB, 'and only the written blocks are allocated')
  fs.closeSync(fd)
  open = false
  t.equal(d.sheep(['status', '--mount', d.mount]).code, 0, 'the daemon is fine')
})

t.test('a truncated or deleted object file reads as EIO; other blocks and the daemon carry on', async t => {
  const d = await startDaemon(t)
  const img = d.image('vm1.img')
  qemuImg(['create', '-f', 'raw', img, '32M'])
  // Blocks 0..4 of 4 MiB: 0, 2, 4 stay good; 1 gets truncated; 3 gets deleted. 5..7 are holes.
  qemuIo(img, ['write -P 0x11 0 4M', 'write -P 0x22 4M 4M', 'write -P 0x33 8M 4M', 'write -P 0x44 12M 4M', 'write -P 0x55 16M 4M'])
  const vid = images(d)[0]?.vid as number
  await d.stop()
  t.notOk(isMounted(d.mount), 'the clean stop unmounted')

  const dir = path.join(d.store, 'objects', vidHex(vid))
  const files = fs.readdirSync(dir).sort()
  t.same(files.filter(n => n.startsWith('0')), [0, 1, 2, 3, 4].map(i => dataObjectName(vid, i)), 'one data object per written block')
  t.same(files.filter(n => n.startsWith('1')), [inodeObjectName(vid)], 'and one inode')
  const truncated = dataObjectName(vid, 1)
  const deleted = dataObjectName(vid, 3)
  fs.truncateSync(path.join(dir, truncated), 1000)
  fs.rmSync(path.join(dir, deleted))

  await d.start()
  t.match(qemuIoFailure(img, ['read -P 0x22 4M 4M']), /read failed: Input\/output error/, 'reading the truncated block fails with EIO')
  t.match(qemuIoFailure(img, ['read -P 0x22 4M 512']), /read failed: Input\/output error/,
    'even its first bytes, which the short file still holds, are not returned')
  t.match(qemuIoFailure(img, ['read -P 0x44 12M 4M']), /read failed: Input\/output error/, 'reading the deleted block fails with EIO')
  t.match(qemuIoFailure(img, ['read -P 0x22 4M 4k'], ['-t', 'none']), /read failed: Input\/output error/, 'also with O_DIRECT')

  const fd = fs.openSync(img, 'r+')
  try {
    const buf = Buffer.alloc(4096)
    t.equal(errCode(() => fs.readSync(fd, buf, 0, buf.length, 4 * MiB + 8192)), 'EIO', 'fs.readSync of the truncated block throws EIO')
    t.equal(errCode(() => fs.readSync(fd, buf, 0, buf.length, 12 * MiB)), 'EIO', 'fs.readSync of the deleted block throws EIO')
    t.equal(errCode(() => fs.writeSync(fd, Buffer.alloc(4096, 0x99), 0, 4096, 4 * MiB)), 'EIO', 'a write into the truncated block fails with EIO too')
  } finally {
    fs.closeSync(fd)
  }
  t.equal(fs.statSync(path.join(dir, truncated)).size, 1000, 'the failed write did not touch the truncated file')

  t.doesNotThrow(() => qemuIo(img, ['read -P 0x11 0 4M', 'read -P 0x33 8M 4M', 'read -P 0x55 16M 4M', 'read -P 0 20M 12M']),
    'the other blocks and the holes read correctly')
  t.doesNotThrow(() => qemuIo(img, ['read -P 0x11 4190208 4096', 'read -P 0x33 8M 4096', 'read -P 0x33 12578816 4096', 'read -P 0x55 16M 4096'],
    ['-t', 'none']), 'the blocks next to the broken ones read correctly with O_DIRECT')
  t.doesNotThrow(() => qemuIo(img, ['write -P 0x66 20M 1M', 'read -P 0x66 20M 1M']), 'new writes to a hole of the same image work')

  t.ok(alive(d), 'the daemon process has not exited')
  const status = d.sheep(['status', '--mount', d.mount])
  t.equal(status.code, 0, `sheep status works: ${status.stderr}`)
  t.ok(await waitForLog(d, new RegExp(`${truncated}.*truncated`)), 'the log names the truncated object')
  t.ok(await waitForLog(d, new RegExp(`${deleted}.*missing`)), 'the log names the missing object')

  const del = d.sheep(['image', 'delete', 'vm1.img', '--mount', d.mount])
  t.equal(del.code, 0, `the broken image can still be deleted: ${del.stderr}`)
  t.notOk(fs.existsSync(dir), 'its objects are gone')
  t.ok(alive(d), 'the daemon is still running')
})

t.test('a corrupt inode header: the daemon starts, only that image is broken (EIO), nothing is deleted', async t => {
  const d = await startDaemon(t)
  const img = d.image('vm1.img')
  const other = d.image('other.img')
  qemuImg(['create', '-f', 'raw', img, '16M'])
  qemuImg(['create', '-f', 'raw', other, '16M'])
  qemuIo(img, ['write -P 0x66 0 1M', 'write -P 0x67 8M 1M'])
  qemuIo(other, ['write -P 0x77 4M 1M'])
  const vid = images(d).find(i => i.name === 'vm1.img')?.vid as number
  await d.stop()

  const folder = path.join(d.store, 'objects', vidHex(vid))
  const inode = path.join(folder, inodeObjectName(vid))
  // Byte 12 lies in the encoded header (after its length and CRC): flipping it breaks the checksum.
  const original = fs.readFileSync(inode)
  const broken = Buffer.from(original)
  broken[12] = (broken[12] as number) ^ 0xff
  fs.writeFileSync(inode, broken)
  const folderBefore = snapshotTree(folder)
  const filesBefore = Object.keys(snapshotTree(path.join(d.store, 'objects')))

  await d.start()
  t.same(fs.readdirSync(d.mount).sort(), ['other.img', 'vm1.img'], 'the mount still lists the broken image')
  t.equal(errCode(() => fs.statSync(img)), 'EIO', 'stat of the broken image -> EIO')
  t.equal(errCode(() => fs.openSync(img, 'r')), 'EIO', 'open of the broken image -> EIO')
  t.match(qemuIoFailure(img, ['read 0 4k']), /Input\/output error/, 'qemu-io cannot use it')
  t.equal(errCode(() => fs.openSync(img, 'w')), 'EIO', 'creating a file of that name through the mount fails')
  const dup = d.sheep(['image', 'create', 'vm1.img', '1M', '--mount', d.mount])
  t.not(dup.code, 0, 'sheep image create of that name fails')
  t.match(dup.stderr, /already exists|unreadable/, `and says why: ${dup.stderr.trim()}`)
  t.doesNotThrow(() => qemuIo(other, ['read -P 0x77 4M 1M', 'write -P 0x78 0 1M', 'read -P 0x78 0 1M']), 'the other image works')

  const status = d.sheep(['status', '--mount', d.mount])
  t.equal(status.code, 0, `sheep status works: ${status.stderr}`)
  t.match(status.stdout, /vm1\.img.*checksum/, 'sheep status names the broken image and why')
  const json = JSON.parse(d.sheep(['status', '--json', '--mount', d.mount]).stdout) as { problems?: string[] }
  t.equal(json.problems?.length, 1, 'status --json lists one problem')
  t.match(json.problems?.[0], /vm1\.img/, 'naming the image')
  t.ok(await waitForLog(d, /vm1\.img.*checksum/), 'the log names the image and the damage')
  t.ok(alive(d), 'the daemon runs')
  t.same(snapshotTree(folder), folderBefore, 'the broken image\'s objects are untouched')
  const filesAfter = new Set(Object.keys(snapshotTree(path.join(d.store, 'objects'))))
  t.same(filesBefore.filter(f => !filesAfter.has(f)), [], 'no object file was collected')

  await d.stop()
  fs.writeFileSync(inode, original)
  await d.start()
  t.doesNotThrow(() => qemuIo(img, ['read -P 0x66 0 1M', 'read -P 0 1M 7M', 'read -P 0x67 8M 1M']), 'with the header repaired, every byte is back')
})

t.test('a corrupt image directory: the daemon refuses to start with one clear line and deletes nothing', async t => {
  const d = await startDaemon(t)
  const img = d.image('vm1.img')
  qemuImg(['create', '-f', 'raw', img, '8M'])
  qemuIo(img, ['write -P 0x31 0 1M'])
  await d.stop()

  // The directory is meta object 1: type 2, vid 0, index 1.
  const file = path.join(d.store, 'objects', '000000', '2000000000000001')
  const original = fs.readFileSync(file)
  const broken = Buffer.from(original)
  broken[original.length - 1] = (broken[original.length - 1] as number) ^ 0xff
  fs.writeFileSync(file, broken)
  const before = snapshotTree(path.join(d.store, 'objects'))

  const mark = d.log.length
  const starting = d.start()
  const proc = d.proc as ChildProcess
  const exited = closed(proc)
  const ready = await starting.then(() => true, () => false)
  t.notOk(ready, 'the daemon does not become ready')
  if (ready) await d.stop()
  t.equal(await exited, 1, 'it exits with status 1')
  const output = d.log.slice(mark).trim()
  t.equal(output.split('\n').length, 1, `exactly one line of output: ${JSON.stringify(output)}`)
  t.match(output, /^sheep: .*directory.*(corrupt|checksum)/, 'it says the image directory is corrupt')
  t.notMatch(output, /\n\s+at /, 'no stack trace')
  t.notOk(isMounted(d.mount), 'nothing is left mounted')
  t.same(snapshotTree(path.join(d.store, 'objects')), before, 'no object was collected or changed')

  fs.writeFileSync(file, original)
  await d.start()
  t.doesNotThrow(() => qemuIo(img, ['read -P 0x31 0 1M']), 'with the directory repaired, the image is back')
})

t.test('a second daemon on the same store or the same mount point is refused with one line', async t => {
  const d = await startDaemon(t)
  const img = d.image('vm1.img')
  qemuImg(['create', '-f', 'raw', img, '8M'])
  qemuIo(img, ['write -P 0x21 0 1M'])
  const other = tempDir(t)
  const env = { ...process.env, SHEEP_RUN_DIR: d.runDir }
  const mountA = path.join(other, 'mnt-a')
  const mountB = path.join(other, 'mnt-b')

  const sameStore = await runDaemon(t, ['start', '--store', d.store, '--mount', mountA], env, [mountA])
  t.not(sameStore.code, 0, 'a second daemon on the same store exits non-zero')
  t.not(sameStore.code, null, 'and it exits by itself')
  t.equal(sameStore.stderr.trim().split('\n').length, 1, `one line: ${JSON.stringify(sameStore.stderr)}`)
  t.match(sameStore.stderr, /^sheep: store .* is in use by another sheep daemon/, 'it says the store is in use')
  t.match(sameStore.stderr, new RegExp(`pid ${d.pid}`), 'and by which pid')
  t.notOk(isMounted(mountA), 'it mounted nothing')

  const store2 = path.join(other, 'store-2')
  const sameMount = await runDaemon(t, ['start', '--store', store2, '--mount', d.mount], env, [])
  t.not(sameMount.code, 0, 'a second daemon on the same mount point exits non-zero')
  t.not(sameMount.code, null, 'and it exits by itself')
  t.equal(sameMount.stderr.trim().split('\n').length, 1, `one line: ${JSON.stringify(sameMount.stderr)}`)
  t.match(sameMount.stderr, /^sheep: mount point .* is busy/, 'it says the mount point is busy')

  const detachedStore = sheepCli(['start', '--detach', '--store', d.store, '--mount', mountB], env)
  killDetachedAfter(t, detachedStore, [mountB])
  t.not(detachedStore.code, 0, '--detach on the same store exits non-zero')
  t.equal(detachedStore.stderr.trim().split('\n').length, 1, `one line: ${JSON.stringify(detachedStore.stderr)}`)
  t.match(detachedStore.stderr, /^sheep: store .* is in use by another sheep daemon/, '--detach prints the reason')
  t.notOk(isMounted(mountB), 'it mounted nothing')

  const detachedMount = sheepCli(['start', '--detach', '--store', path.join(other, 'store-3'), '--mount', d.mount], env)
  killDetachedAfter(t, detachedMount, [])
  t.not(detachedMount.code, 0, '--detach on the same mount point exits non-zero')
  t.equal(detachedMount.stderr.trim().split('\n').length, 1, `one line: ${JSON.stringify(detachedMount.stderr)}`)
  t.match(detachedMount.stderr, /^sheep: mount point .* is busy/, '--detach prints the reason')

  t.ok(alive(d), 'the first daemon still runs')
  const status = d.sheep(['status', '--json', '--mount', d.mount])
  t.equal(status.code, 0, `its control socket still answers: ${status.stderr}`)
  t.equal((JSON.parse(status.stdout) as { pid: number }).pid, d.pid, 'and it is the first daemon that answers')
  t.same(fs.readdirSync(d.mount), ['vm1.img'], 'its mount still answers')
  t.doesNotThrow(() => qemuIo(img, ['read -P 0x21 0 1M']), 'its data is intact')
})

t.test('a non-empty directory that is not a sheep store is refused and left as it was', async t => {
  const dir = tempDir(t)
  const foreign = path.join(dir, 'home')
  fs.mkdirSync(path.join(foreign, 'docs'), { recursive: true })
  fs.writeFileSync(path.join(foreign, 'precious.txt'), 'do not delete\n')
  fs.writeFileSync(path.join(foreign, 'docs', 'data.bin'), crypto.randomBytes(10_000))
  const before = snapshotTree(foreign)
  const mount = path.join(dir, 'mnt')
  const env = { ...process.env, SHEEP_RUN_DIR: path.join(dir, 'run') }

  const r = await runDaemon(t, ['start', '--store', foreign, '--mount', mount], env, [mount])
  t.not(r.code, 0, 'start exits non-zero')
  t.not(r.code, null, 'and it exits by itself')
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${JSON.stringify(r.stderr)}`)
  t.match(r.stderr, /^sheep: .*home is not empty and is not a sheep store/, 'it says why')
  t.same(snapshotTree(foreign), before, 'the directory is exactly as it was')
  t.notOk(isMounted(mount), 'nothing was mounted')

  const detached = sheepCli(['start', '--detach', '--store', foreign, '--mount', mount], env)
  killDetachedAfter(t, detached, [mount])
  t.not(detached.code, 0, '--detach exits non-zero')
  t.match(detached.stderr, /^sheep: .*home is not empty and is not a sheep store/, '--detach says why')
  const after = snapshotTree(foreign)
  for (const [file, hash] of Object.entries(before)) t.equal(after[file], hash, `--detach left ${file} as it was`)
  t.same(after, before, '--detach added nothing to the foreign directory either')
})

t.test('garbage on the control socket gets EINVAL and the daemon keeps working', async t => {
  const d = await startDaemon(t)
  qemuImg(['create', '-f', 'raw', d.image('keep.img'), '8M'])
  const sock = controlSocket(d)
  t.ok(fs.existsSync(sock), 'the control socket is where src/control/paths.ts puts it')

  const pad = 'x'.repeat(100 * KiB)
  const cases: Array<[string, string]> = [
    ['not JSON', 'garbage\n'],
    ['an empty line', '\n'],
    ['a JSON number', '42\n'],
    ['a JSON string', '"status"\n'],
    ['JSON null', 'null\n'],
    ['a JSON array', '["status"]\n'],
    ['no op', '{"args":{}}\n'],
    ['an unknown op', '{"op":"format-disk","args":{}}\n'],
    ['an op named like an Object property', '{"op":"constructor","args":{}}\n'],
    ['a non-string op', '{"op":7}\n'],
    ['args as an array', '{"op":"status","args":[]}\n'],
    ['args as a string', '{"op":"image.list","args":"all"}\n'],
    ['an unknown argument', '{"op":"status","args":{"verbose":true}}\n'],
    ['an unknown argument named like an Object property', '{"op":"status","args":{"toString":1}}\n'],
    ['create: a number for the name', '{"op":"image.create","args":{"name":5,"size":1048576}}\n'],
    ['create: a string for the size', '{"op":"image.create","args":{"name":"a","size":"1G"}}\n'],
    ['create: size -1', '{"op":"image.create","args":{"name":"a","size":-1}}\n'],
    ['create: a fractional size', '{"op":"image.create","args":{"name":"a","size":1.5}}\n'],
    ['create: size 1e300', '{"op":"image.create","args":{"name":"a","size":1e300}}\n'],
    ['create: no size', '{"op":"image.create","args":{"name":"a"}}\n'],
    ['create: a bad object size', '{"op":"image.create","args":{"name":"a","size":1048576,"objectSize":3}}\n'],
    ['create: zero copies', '{"op":"image.create","args":{"name":"a","size":1048576,"copies":0}}\n'],
    ['create: a name with "/"', '{"op":"image.create","args":{"name":"../etc","size":1048576}}\n'],
    ['create: a name with "@"', '{"op":"image.create","args":{"name":"a@b","size":1048576}}\n'],
    ['resize: a boolean size', '{"op":"image.resize","args":{"name":"keep.img","size":true}}\n'],
    ['rename: a number for the new name', '{"op":"image.rename","args":{"from":"keep.img","to":1}}\n'],
    ['delete: null for the name', '{"op":"image.delete","args":{"name":null}}\n'],
    ['stop: a string for force', '{"op":"stop","args":{"force":"yes"}}\n'],
    ['a 100 KiB line of garbage', pad + '\n'],
    ['a 100 KiB line that is otherwise a valid request', `{"op":"status","args":{},"pad":"${pad}"}\n`]
  ]
  for (const [what, line] of cases) {
    const reply = await sendRaw(sock, line)
    t.match(reply, { type: 'result', ok: false, error: { code: 'EINVAL' } }, `${what} -> EINVAL`)
    const status = await sendRaw(sock, '{"op":"status","args":{}}\n')
    t.match(status, { ok: true }, `the daemon answers after ${what}`)
  }

  // A connection that sends nothing, and one that hangs up mid-line, do not block others.
  const idle = net.createConnection(sock)
  t.teardown(() => { idle.destroy() })
  await new Promise(resolve => idle.once('connect', resolve))
  const partial = net.createConnection(sock)
  await new Promise(resolve => partial.once('connect', resolve))
  partial.write('{"op":"image.cre')
  partial.destroy()
  t.match(await sendRaw(sock, '{"op":"image.list","args":{}}\n'), { ok: true }, 'an idle and a broken connection do not block others')

  // A client that shuts down its side after the request (nc -U, socat) still gets the answer.
  t.match(await sendRaw(sock, 'garbage\n', { halfClose: true }), { ok: false, error: { code: 'EINVAL' } }, 'half-closed garbage -> EINVAL')
  t.match(await sendRaw(sock, '{"op":"status","args":{}}\n', { halfClose: true }), { ok: true }, 'a half-closed valid request gets its answer')

  t.ok(alive(d), 'the daemon process is still running')
  const cli = d.sheep(['status', '--mount', d.mount])
  t.equal(cli.code, 0, `sheep status works: ${cli.stderr}`)
  t.same(images(d).map(i => [i.name, i.size]), [['keep.img', 8 * MiB]], 'no request changed the images')
  t.same(fs.readdirSync(d.mount), ['keep.img'], 'the mount agrees')
})
