// The `sheep` command against real daemons: image create/list/resize/rename/delete by name and by
// path, human and --json output, exit codes and one-line messages for every kind of mistake,
// status, stop (refused while an image is open, clean unmount after), start --detach, and what
// every command says when no daemon runs.

import t, { type Test } from 'tap'
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { type Daemon, errCode, isMounted, qemuIo, type RunResult, SHEEP_BIN, startDaemon, tempDir, unmountIfMounted, waitFor } from '../helpers/daemon'

const MiB = 2 ** 20
const GiB = 2 ** 30

interface ImageInfo { name: string, vid: number, size: number, allocated: number, objectSize: number, copies: number, openHandles: number }
interface Status { pid: number, mount: string, store: string, images: number, openHandles: number, provisioned: number }

/** Runs the sheep command synchronously with the given environment. */
function sheepCli (args: string[], env: NodeJS.ProcessEnv): RunResult {
  const r = spawnSync(process.execPath, [SHEEP_BIN, ...args], { env, encoding: 'utf8', timeout: 60_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

/**
 * Runs the sheep command without blocking this process. Needed for `sheep stop` against a daemon
 * that is this process's child: stop waits until the daemon's pid is gone, and only this
 * process's event loop reaps it (a spawnSync would leave it a zombie and stop would wait 60 s).
 */
async function sheepAsync (args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  const proc = spawn(process.execPath, [SHEEP_BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  proc.stdout.on('data', (c: Buffer) => { stdout += c.toString() })
  proc.stderr.on('data', (c: Buffer) => { stderr += c.toString() })
  const timer = setTimeout(() => proc.kill('SIGKILL'), 90_000)
  const code = await new Promise<number | null>(resolve => proc.once('close', code => resolve(code)))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

function envFor (runDir: string): NodeJS.ProcessEnv {
  return { ...process.env, SHEEP_RUN_DIR: runDir }
}

function listImages (d: Daemon): ImageInfo[] {
  const r = d.sheep(['image', 'list', '--json', '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep image list failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as ImageInfo[]
}

function statusOf (d: Daemon): Status {
  const r = d.sheep(['status', '--json', '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep status failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as Status
}


const lines = (text: string): string[] => text.trim().split('\n')
const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

function pidAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** The exit code of a child once it has exited; null if it does not within `ms`. */
function exitOf (proc: ChildProcess, ms = 20_000): Promise<number | null> {
  return new Promise(resolve => {
    if (proc.exitCode !== null) return resolve(proc.exitCode)
    const timer = setTimeout(() => resolve(null), ms)
    proc.once('exit', code => { clearTimeout(timer); resolve(code) })
  })
}

/** Checks an error that is the user's mistake in the daemon's eyes: exit 1, one line. */
function oneLineError (t: Test, r: RunResult, re: RegExp, what: string): void {
  t.equal(r.code, 1, `${what}: exit 1`)
  t.equal(lines(r.stderr).length, 1, `${what}: one line: ${JSON.stringify(r.stderr)}`)
  t.match(r.stderr, re, `${what}: says why`)
  t.equal(r.stdout, '', `${what}: nothing on stdout`)
}

/** Checks a usage error: exit 2, the reason on the first line, then the usage. */
function usageError (t: Test, r: RunResult, re: RegExp, what: string): void {
  t.equal(r.code, 2, `${what}: exit 2`)
  t.match(lines(r.stderr)[0], re, `${what}: the first line says why: ${JSON.stringify(lines(r.stderr)[0])}`)
  t.match(r.stderr, /usage: sheep <command>/, `${what}: usage follows`)
}

t.test('image create, list, resize, rename and delete, by name and by path', async t => {
  const d = await startDaemon(t)
  const M = ['--mount', d.mount]

  const c1 = d.sheep(['image', 'create', 'vm1', '1G', ...M])
  t.equal(c1.code, 0, `create by name: ${c1.stderr}`)
  t.equal(c1.stdout, 'created vm1: 1 GiB, 3 copies, 4 MiB objects\n', 'create says what it made')
  const c2 = d.sheep(['image', 'create', d.image('vm2.img'), '512M', '--copies', '2', '--object-size', '1M'])
  t.equal(c2.code, 0, `create by path inside the mount, no --mount needed: ${c2.stderr}`)
  t.equal(c2.stdout, 'created vm2.img: 512 MiB, 2 copies, 1 MiB objects\n', 'with the given copies and object size')
  const c3 = d.sheep(['image', 'create', 'vm3.img', '1.5G', '--json', ...M])
  t.equal(c3.code, 0, `create --json: ${c3.stderr}`)
  t.match(JSON.parse(c3.stdout), { name: 'vm3.img', size: 1.5 * GiB, copies: 3, objectSize: 4 * MiB }, 'create --json prints the image')

  t.same(fs.readdirSync(d.mount).sort(), ['vm1', 'vm2.img', 'vm3.img'], 'the mount lists the new images')
  t.equal(fs.statSync(d.image('vm1')).size, GiB, 'vm1 is a 1 GiB file')
  t.equal(fs.statSync(d.image('vm2.img')).size, 512 * MiB, 'vm2.img is a 512 MiB file')

  const human = d.sheep(['image', 'list', ...M])
  t.equal(human.code, 0, 'list')
  const rows = lines(human.stdout)
  t.match(rows[0], /^NAME\s+SIZE\s+USED\s+COPIES\s+OBJECT\s+CREATED\s+SNAPSHOTS\s+PARENT\s+STATE$/, 'list has a header')
  t.equal(rows.length, 4, 'and one row per image')
  t.match(rows[1], /^vm1\s+1 GiB\s+0 B\s+3\s+4 MiB\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+0$/, 'vm1 row')
  t.match(rows[2], /^vm2\.img\s+512 MiB\s+0 B\s+2\s+1 MiB\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+0$/, 'vm2.img row')
  t.match(rows[3], /^vm3\.img\s+1\.5 GiB\s+/, 'vm3.img row')
  t.same(listImages(d).map(i => [i.name, i.size, i.copies, i.objectSize]),
    [['vm1', GiB, 3, 4 * MiB], ['vm2.img', 512 * MiB, 2, MiB], ['vm3.img', 1.5 * GiB, 3, 4 * MiB]], 'list --json')

  const r1 = d.sheep(['image', 'resize', 'vm1', '2G', ...M])
  t.equal(r1.code, 0, `resize to an absolute size: ${r1.stderr}`)
  t.equal(r1.stdout, 'resized vm1 to 2 GiB\n', 'resize says the new size')
  t.equal(listImages(d).find(i => i.name === 'vm1')?.size, 2 * GiB, 'the daemon has the new size')
  const r2 = d.sheep(['image', 'resize', d.image('vm1'), '+512M', '--json'])
  t.equal(r2.code, 0, `resize by +SIZE and by path: ${r2.stderr}`)
  t.match(JSON.parse(r2.stdout), { name: 'vm1', size: 2.5 * GiB }, 'resize --json prints the image')
  // Data written before a shrink and the renames must be there after them.
  qemuIo(d.image('vm1'), ['write -P 0xa1 0 1M', `write -P 0xa2 ${GiB - MiB} 1M`, `write -P 0xa3 ${GiB} 1M`])
  const r3 = d.sheep(['image', 'resize', 'vm1', '1G', ...M])
  t.equal(r3.code, 0, `shrink back: ${r3.stderr}`)
  t.equal(listImages(d).find(i => i.name === 'vm1')?.size, GiB, 'shrunk to 1 GiB')
  t.equal(d.sheep(['image', 'resize', 'vm1', '+1M', ...M]).code, 0, 'grow by 1 MiB')
  t.doesNotThrow(() => qemuIo(d.image('vm1'), [`read -P 0xa2 ${GiB - MiB} 1M`, `read -P 0 ${GiB} 1M`]), 'the cut-off data is gone: the regrown MiB reads as zeros')
  t.equal(d.sheep(['image', 'resize', 'vm1', '1G', ...M]).code, 0, 'back to 1 GiB')

  // What the mount shows right after a command changed an image the kernel has just looked up
  // (so it holds its entry and attributes): QEMU started right after `sheep image resize` must
  // see the new size, and an old name must be gone after rename or delete.
  const window = (name: string): number => {
    t.equal(d.sheep(['image', 'create', name, '1G', ...M]).code, 0, `create ${name}, not yet seen through the mount`)
    t.equal(fs.statSync(d.image(name)).size, GiB, `the first stat of ${name} shows 1 GiB`)
    return Date.now()
  }
  let since = window('fresh1')
  t.equal(d.sheep(['image', 'resize', 'fresh1', '2G', ...M]).code, 0, 'resize fresh1')
  const statSize = fs.statSync(d.image('fresh1')).size
  const fd = fs.openSync(d.image('fresh1'), 'r')
  const fstatSize = fs.fstatSync(fd).size
  fs.closeSync(fd)
  t.equal(statSize, 2 * GiB, `stat on the mount shows the new size right after sheep image resize (${Date.now() - since} ms after the lookup)`)
  t.equal(fstatSize, 2 * GiB, 'so does fstat of a new open, as QEMU does')
  since = window('fresh2')
  t.equal(d.sheep(['image', 'rename', 'fresh2', 'fresh3', ...M]).code, 0, 'rename fresh2 to fresh3')
  t.equal(errCode(() => fs.statSync(d.image('fresh2'))), 'ENOENT', `the old name is gone right after sheep image rename (${Date.now() - since} ms after the lookup)`)
  since = window('fresh4')
  t.equal(d.sheep(['image', 'delete', 'fresh4', ...M]).code, 0, 'delete fresh4')
  t.equal(errCode(() => fs.statSync(d.image('fresh4'))), 'ENOENT', `a deleted image is gone right after sheep image delete (${Date.now() - since} ms after the lookup)`)
  for (const name of ['fresh1', 'fresh3']) t.equal(d.sheep(['image', 'delete', name, ...M]).code, 0, `delete ${name}`)

  const n1 = d.sheep(['image', 'rename', 'vm1', 'vm4', ...M])
  t.equal(n1.code, 0, `rename by name: ${n1.stderr}`)
  t.equal(n1.stdout, 'renamed vm1 to vm4\n', 'rename says so')
  const n2 = d.sheep(['image', 'rename', d.image('vm4'), d.image('vm5.img')])
  t.equal(n2.code, 0, `rename by paths: ${n2.stderr}`)
  t.same(fs.readdirSync(d.mount).sort(), ['vm2.img', 'vm3.img', 'vm5.img'], 'the mount shows the new name only')
  t.doesNotThrow(() => qemuIo(d.image('vm5.img'), ['read -P 0xa1 0 1M', `read -P 0xa2 ${GiB - MiB} 1M`]), 'the data moved with the name')

  const x1 = d.sheep(['image', 'delete', 'vm5.img', ...M])
  t.equal(x1.code, 0, `delete by name: ${x1.stderr}`)
  t.equal(x1.stdout, 'deleted vm5.img\n', 'delete says so')
  const x2 = d.sheep(['image', 'delete', d.image('vm2.img')])
  t.equal(x2.code, 0, `delete by path: ${x2.stderr}`)
  t.same(fs.readdirSync(d.mount), ['vm3.img'], 'the mount lists what is left')
  t.same(listImages(d).map(i => i.name), ['vm3.img'], 'and so does list')
  t.equal(d.sheep(['image', 'delete', 'vm3.img', ...M]).code, 0, 'delete the last one')
  t.equal(d.sheep(['image', 'list', ...M]).stdout, 'NAME  SIZE  USED  COPIES  OBJECT  CREATED  SNAPSHOTS  PARENT  STATE\n', 'an empty list is just the header')
  t.equal(d.sheep(['image', 'list', '--json', ...M]).stdout.trim(), '[]', 'and [] in JSON')
})

t.test('mistakes: exit codes and one-line messages, and nothing changes', async t => {
  const d = await startDaemon(t)
  const M = ['--mount', d.mount]
  t.equal(d.sheep(['image', 'create', 'vm1', '1G', ...M]).code, 0, 'setup: vm1')
  t.equal(d.sheep(['image', 'create', 'vm2', '2G', ...M]).code, 0, 'setup: vm2')
  qemuIo(d.image('vm2'), ['write -P 0xb2 0 1M'])

  // Unknown images.
  oneLineError(t, d.sheep(['image', 'delete', 'nope', ...M]), /^sheep: image "nope" does not exist$/m, 'delete unknown')
  oneLineError(t, d.sheep(['image', 'resize', 'nope', '2G', ...M]), /^sheep: image "nope" does not exist$/m, 'resize unknown')
  oneLineError(t, d.sheep(['image', 'resize', 'nope', '+2G', ...M]), /^sheep: image "nope" does not exist$/m, 'resize +SIZE unknown')
  oneLineError(t, d.sheep(['image', 'rename', 'nope', 'other', ...M]), /^sheep: image "nope" does not exist$/m, 'rename unknown')
  oneLineError(t, d.sheep(['image', 'delete', d.image('nope.img')]), /^sheep: image "nope.img" does not exist$/m, 'delete unknown by path')

  // Names taken, names refused by the daemon, sizes out of range.
  oneLineError(t, d.sheep(['image', 'create', 'vm1', '1G', ...M]), /^sheep: image "vm1" already exists$/m, 'create a duplicate (EEXIST)')
  oneLineError(t, d.sheep(['image', 'create', d.image('vm1'), '5G']), /already exists/, 'create a duplicate by path')
  oneLineError(t, d.sheep(['image', 'create', 'a@b', '1G', ...M]), /must not contain "@"/, 'create a bad name')
  oneLineError(t, d.sheep(['image', 'create', '.snapshots', '1G', ...M]), /reserved/, 'create a reserved name')
  oneLineError(t, d.sheep(['image', 'create', 'x'.repeat(256), '1G', ...M]), /longer than 255 bytes/, 'create a long name')
  oneLineError(t, d.sheep(['image', 'rename', 'vm1', 'x@y', ...M]), /must not contain "@"/, 'rename to a bad name')
  oneLineError(t, d.sheep(['image', 'create', 'huge', '65T', ...M]), /larger than the maximum/, 'create past 64 TiB')
  oneLineError(t, d.sheep(['image', 'resize', 'vm1', '65T', ...M]), /larger than the maximum/, 'resize past 64 TiB')
  oneLineError(t, d.sheep(['image', 'resize', 'vm1', '+64T', ...M]), /larger than the maximum/, 'resize by + past 64 TiB')
  oneLineError(t, d.sheep(['image', 'create', 'odd', '1G', '--object-size', '3M', ...M]), /object size must be a power of two/, 'a bad object size')
  oneLineError(t, d.sheep(['image', 'create', 'zero', '1G', '--copies', '0', ...M]), /copies must be from 1/, 'zero copies')

  // Paths that do not name an image in a mount.
  const outside = tempDir(t)
  oneLineError(t, d.sheep(['image', 'create', path.join(outside, 'vm.img'), '1G']), /is not inside a sheep mount/, 'a path outside any mount')
  oneLineError(t, d.sheep(['image', 'create', d.image('sub/vm.img'), '1G']), /does not name an image/, 'a nested path in the mount')

  // Bad sizes are usage errors: the reason first, then the usage.
  for (const bad of ['12Q', 'abc', '1.5.5', '0x10', '1.3K', '']) {
    usageError(t, d.sheep(['image', 'create', 'sz', bad, ...M]), new RegExp(`^sheep: bad size ${escape(JSON.stringify(bad))}`), `size ${JSON.stringify(bad)}`)
  }
  usageError(t, d.sheep(['image', 'create', 'sz', '-1', ...M]), /^sheep: .*'-1'/, 'size -1 (read as an option)')
  usageError(t, d.sheep(['image', 'resize', 'vm1', '+abc', ...M]), /^sheep: bad size "abc"/, 'resize +abc')
  usageError(t, d.sheep(['image', 'resize', 'vm1', '+', ...M]), /^sheep: bad size ""/, 'resize +')
  usageError(t, d.sheep(['image', 'create', 'sz', '1G', '--copies', 'three', ...M]), /^sheep: bad --copies "three"/, '--copies three')
  usageError(t, d.sheep(['start', '--min-copies', '0', '--join', 'x', ...M]), /^sheep: bad --min-copies 0: at least 1/, '--min-copies 0')
  usageError(t, d.sheep(['start', '--min-copies', 'two', '--join', 'x', ...M]), /^sheep: bad --min-copies "two"/, '--min-copies two')
  usageError(t, d.sheep(['start', '--min-copies', '2', ...M]), /^sheep: --min-copies is for a cluster/, '--min-copies without a cluster')
  usageError(t, d.sheep(['start', '--out-after', '1.5', '--join', 'x', ...M]), /^sheep: bad --out-after "1.5"/, '--out-after 1.5')
  usageError(t, d.sheep(['start', '--out-after', '10m', '--join', 'x', ...M]), /^sheep: bad --out-after "10m"/, '--out-after 10m')
  usageError(t, d.sheep(['start', '--out-after', '60', ...M]), /^sheep: --out-after is for a cluster/, '--out-after without a cluster')

  // Unknown commands and options, missing and extra arguments.
  usageError(t, d.sheep(['frobnicate']), /^sheep: unknown command "frobnicate"$/, 'unknown command')
  usageError(t, d.sheep(['image', 'frob']), /^sheep: unknown image command "frob"$/, 'unknown image command')
  usageError(t, d.sheep(['image']), /^sheep: missing image command$/, 'image alone')
  usageError(t, d.sheep(['image', 'list', '--bogus', ...M]), /^sheep: Unknown option '--bogus'/, 'unknown option')
  usageError(t, d.sheep(['status', '--verbose', ...M]), /^sheep: Unknown option '--verbose'/, 'unknown option to status')
  usageError(t, d.sheep(['image', 'create', ...M]), /^sheep: missing image name$/, 'create without a name')
  usageError(t, d.sheep(['image', 'create', 'sz', ...M]), /^sheep: missing size$/, 'create without a size')
  usageError(t, d.sheep(['image', 'resize', 'vm1', ...M]), /^sheep: missing size$/, 'resize without a size')
  usageError(t, d.sheep(['image', 'resize', ...M]), /^sheep: missing image name$/, 'resize without a name')
  usageError(t, d.sheep(['image', 'rename', 'vm1', ...M]), /^sheep: usage: sheep image rename NAME NEWNAME$/, 'rename without a new name')
  usageError(t, d.sheep(['image', 'delete', ...M]), /^sheep: missing image name$/, 'delete without a name')
  usageError(t, d.sheep(['image', 'delete', 'vm1', 'vm2', ...M]), /^sheep: unexpected argument "vm2"$/, 'delete with two names')
  usageError(t, d.sheep(['image', 'list', 'extra', ...M]), /^sheep: unexpected argument "extra"$/, 'list with an argument')
  usageError(t, d.sheep(['image', 'list', '--mount']), /^sheep: Option '--mount <value>' argument missing/, '--mount without a value')

  const help = d.sheep(['--help'])
  t.equal(help.code, 0, '--help exits 0')
  t.match(help.stdout, /^usage: sheep <command>/, '--help prints the usage on stdout')

  t.same(listImages(d).map(i => [i.name, i.size]), [['vm1', GiB], ['vm2', 2 * GiB]], 'none of the mistakes changed any image')
  t.same(fs.readdirSync(d.mount).sort(), ['vm1', 'vm2'], 'the mount agrees')
  t.doesNotThrow(() => qemuIo(d.image('vm2'), ['read -P 0xb2 0 1M']), 'vm2 still holds its data')

  // Last, as it changes vm1 if the command gets it wrong: NEWNAME as a path outside the mount.
  const out = d.sheep(['image', 'rename', d.image('vm1'), path.join(outside, 'vm9')])
  t.not(out.code, 0, 'rename to a path outside the mount is refused, not turned into a rename inside the mount')
  t.same(fs.readdirSync(d.mount).sort(), ['vm1', 'vm2'], 'vm1 keeps its name')
})

t.test('rename onto an existing image is refused (EEXIST) and loses nothing', async t => {
  const d = await startDaemon(t)
  const M = ['--mount', d.mount]
  t.equal(d.sheep(['image', 'create', 'a', '64M', ...M]).code, 0, 'setup: a')
  t.equal(d.sheep(['image', 'create', 'b', '64M', ...M]).code, 0, 'setup: b')
  qemuIo(d.image('a'), ['write -P 0xaa 0 1M'])
  qemuIo(d.image('b'), ['write -P 0xbb 0 1M'])
  oneLineError(t, d.sheep(['image', 'rename', 'a', 'b', ...M]), /^sheep: image "b" already exists$/m, 'rename a onto b')
  t.same(fs.readdirSync(d.mount).sort(), ['a', 'b'], 'both names are still there')
  t.doesNotThrow(() => qemuIo(d.image('b'), ['read -P 0xbb 0 1M']), 'b keeps its own data')
})

t.test('status, human and --json, found by --mount, by a positional mount or by a path inside it', async t => {
  const d = await startDaemon(t)
  t.equal(d.sheep(['image', 'create', 'vm1', '3G', '--mount', d.mount]).code, 0, 'setup')
  qemuIo(d.image('vm1'), ['write -P 1 0 4M'])

  const human = d.sheep(['status', '--mount', d.mount])
  t.equal(human.code, 0, `status: ${human.stderr}`)
  t.match(human.stdout, new RegExp(`^sheep \\S+, pid ${d.pid}, up \\d+ s$`, 'm'), 'version, pid and uptime')
  t.match(human.stdout, new RegExp(`^mount: +${d.mount}$`, 'm'), 'the mount')
  t.match(human.stdout, new RegExp(`^store: +${d.store}$`, 'm'), 'the store')
  t.match(human.stdout, /^images: +1 \(0 open handles\), 3 GiB provisioned, 4 MiB allocated$/m, 'images, provisioned and allocated')
  t.match(human.stdout, /^capacity: .* free/m, 'capacity')

  const json = JSON.parse(d.sheep(['status', '--json', '--mount', d.mount]).stdout) as Status
  t.match(json, { pid: d.pid, mount: d.mount, store: d.store, images: 1, openHandles: 0, provisioned: 3 * GiB }, 'status --json')
  for (const where of [d.mount, d.image('vm1')]) {
    const r = d.sheep(['status', '--json', where])
    t.equal(r.code, 0, `status ${where}: ${r.stderr}`)
    t.equal((JSON.parse(r.stdout) as Status).pid, d.pid, `status finds the daemon from ${where}`)
  }
})

t.test('stop refuses while an image is open, then stops with a clean unmount', async t => {
  const d = await startDaemon(t)
  t.equal(d.sheep(['image', 'create', 'vm1', '1G', '--mount', d.mount]).code, 0, 'setup')
  const proc = d.proc as ChildProcess
  let fd: number | null = fs.openSync(d.image('vm1'), 'r+')
  t.teardown(() => { if (fd !== null) try { fs.closeSync(fd) } catch {} })

  const refused = d.sheep(['stop', '--mount', d.mount])
  oneLineError(t, refused, /^sheep: images are open: vm1; close them first or stop with --force$/m, 'stop with an open image')
  t.equal(statusOf(d).openHandles, 1, 'the daemon still runs and counts the open handle')
  t.ok(isMounted(d.mount), 'the mount is still there')
  t.same(fs.readdirSync(d.mount), ['vm1'], 'and answers')
  fs.writeSync(fd, Buffer.alloc(4096, 0x5e), 0, 4096, 0)

  fs.closeSync(fd)
  fd = null
  // FUSE sends RELEASE after close(2) returns, asynchronously: wait (bounded) for the daemon to see it.
  const deadline = Date.now() + 5000
  while (statusOf(d).openHandles !== 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  t.equal(statusOf(d).openHandles, 0, 'the handle is closed')

  const stopped = await sheepAsync(['stop', '--mount', d.mount], d.env)
  t.equal(stopped.code, 0, `stop: ${stopped.stderr}`)
  t.equal(stopped.stdout, `stopped sheep on ${d.mount}\n`, 'stop says so')
  t.notOk(isMounted(d.mount), 'when stop returns, the mount is gone from /proc/self/mountinfo')
  t.equal(await exitOf(proc), 0, 'the daemon exited with status 0')
  t.match(d.log, /Z stopped\n/, 'after its whole teardown (images written out, store closed)')
  t.same(fs.readdirSync(d.runDir).filter(n => n.endsWith('.sock')), [], 'its control socket is removed')
  oneLineError(t, d.sheep(['status', '--mount', d.mount]), /no sheep daemon is running for/, 'status after stop')

  await d.start()
  t.doesNotThrow(() => qemuIo(d.image('vm1'), ['read -P 0x5e 0 4k', 'read -P 0 4k 1M']), 'after a restart the data written before stop is there')
})

t.test('stop --force with an image held open by another process: the daemon exits and the mount is gone', async t => {
  const d = await startDaemon(t)
  t.equal(d.sheep(['image', 'create', 'vm1', '1G', '--mount', d.mount]).code, 0, 'setup')
  const proc = d.proc as ChildProcess
  // A process of its own holds the image, so that this one holds nothing on the mount.
  const holder = spawn('sh', ['-c', 'exec sleep 600 < "$0"', d.image('vm1')], { stdio: 'ignore' })
  t.teardown(() => { if (holder.exitCode === null && holder.signalCode === null) holder.kill('SIGKILL') })
  t.ok(await waitFor(() => statusOf(d).openHandles === 1, 5000), 'the image is open')

  const stopped = await sheepAsync(['stop', '--force', '--mount', d.mount], d.env)
  t.equal(stopped.code, 0, `stop --force: ${stopped.stderr}`)
  t.notOk(isMounted(d.mount), 'the mount is gone')
  t.equal(await exitOf(proc), 0, 'the daemon exited with status 0 though a file was still open')
  t.match(d.log, /Z stopped\n/, 'after its whole teardown')
})

t.test('start --detach returns once the mount answers; stop stops it', async t => {
  const dir = tempDir(t)
  const store = path.join(dir, 'store')
  const mount = path.join(dir, 'mnt')
  const env = envFor(path.join(dir, 'run'))
  let pid = 0
  t.teardown(() => {
    // If stop failed: end the daemon by its pid, from start's output or from status.
    if (pid === 0) {
      try { pid = (JSON.parse(sheepCli(['status', '--json', '--mount', mount], env).stdout) as Status).pid } catch {}
    }
    if (pid > 0 && pidAlive(pid)) try { process.kill(pid, 'SIGKILL') } catch {}
    unmountIfMounted(mount)
  })

  const started = sheepCli(['start', '--detach', '--store', store, '--mount', mount], env)
  pid = Number(/\(pid (\d+)\)/.exec(started.stdout)?.[1] ?? 0)
  // Right away, with no wait of any kind: the mount must already answer.
  const entries = fs.readdirSync(mount)
  const mounted = isMounted(mount)
  const dev = fs.statSync(mount).dev
  t.equal(started.code, 0, `start --detach exits 0: ${started.stderr}`)
  t.same(entries, [], 'readdir on the mount works immediately')
  t.ok(mounted, 'the mount is in /proc/self/mountinfo')
  t.not(dev, fs.statSync(dir).dev, 'it is a different filesystem from its parent')
  t.equal(started.stdout, `sheep started (pid ${pid}): ${mount} is ready; log in ${path.join(store, 'sheep.log')}\n`, 'start says the pid, the mount and the log')
  t.ok(pid > 0 && pidAlive(pid), 'the daemon runs')

  const status = sheepCli(['status', '--json', '--mount', mount], env)
  t.equal(status.code, 0, `status: ${status.stderr}`)
  t.match(JSON.parse(status.stdout), { pid, mount, store }, 'status --json shows the detached daemon')
  t.equal(sheepCli(['image', 'create', 'vm1', '64M', '--mount', mount], env).code, 0, 'it takes commands')
  t.doesNotThrow(() => qemuIo(path.join(mount, 'vm1'), ['write -P 7 0 1M', 'read -P 7 0 1M']), 'and I/O')
  t.match(fs.readFileSync(path.join(store, 'sheep.log'), 'utf8'), /serving/, 'it logs to the store\'s sheep.log')

  const again = sheepCli(['start', '--detach', '--store', store, '--mount', mount], env)
  t.equal(again.code, 1, 'starting it twice fails')
  t.equal(lines(again.stderr).length, 1, `with one line: ${JSON.stringify(again.stderr)}`)

  const stopped = sheepCli(['stop', '--mount', mount], env)
  t.equal(stopped.code, 0, `stop: ${stopped.stderr}`)
  t.equal(stopped.stdout, `stopped sheep on ${mount}\n`, 'stop says so')
  t.notOk(pidAlive(pid), 'the daemon process is gone')
  t.notOk(isMounted(mount), 'the mount is gone')
  oneLineError(t, sheepCli(['status', '--mount', mount], env), /no sheep daemon is running for/, 'status after stop')
})

t.test('commands with no daemon running say so on one line and exit 1', async t => {
  const dir = tempDir(t)
  const mount = path.join(dir, 'mnt')
  fs.mkdirSync(mount)
  const env = envFor(path.join(dir, 'run'))
  const M = ['--mount', mount]
  const commands = [
    ['status', ...M], ['status', '--json', ...M], ['status', mount], ['stop', ...M], ['stop', '--force', ...M],
    ['image', 'list', ...M], ['image', 'list', '--json', ...M], ['image', 'create', 'vm1', '1G', ...M],
    ['image', 'resize', 'vm1', '2G', ...M], ['image', 'resize', 'vm1', '+1G', ...M],
    ['image', 'rename', 'vm1', 'vm2', ...M], ['image', 'delete', 'vm1', ...M]
  ]
  const expected = new RegExp(`^sheep: no sheep daemon is running for ${mount} \\(start one with: sheep start --mount ${mount}\\)$`, 'm')
  for (const args of commands) oneLineError(t, sheepCli(args, env), expected, `sheep ${args.slice(0, 2).join(' ')}`)
  oneLineError(t, sheepCli(['image', 'create', path.join(mount, 'vm1.img'), '1G'], env), /is not inside a sheep mount/, 'a path in a directory that is not mounted')
  t.same(fs.readdirSync(mount), [], 'nothing appeared in the mount directory')

  // After a crash: a stale socket file and a dead FUSE mount are left behind.
  const d = await startDaemon(t)
  await d.kill('SIGKILL')
  t.ok(fs.readdirSync(d.runDir).some(n => n.endsWith('.sock')), 'the crashed daemon left its socket file')
  const started = Date.now()
  oneLineError(t, d.sheep(['status', '--mount', d.mount]), /no sheep daemon is running for/, 'status after a crash')
  oneLineError(t, d.sheep(['image', 'list', '--mount', d.mount]), /no sheep daemon is running for/, 'image list after a crash')
  oneLineError(t, d.sheep(['image', 'delete', d.image('vm1.img')]), /no sheep daemon is running for/, 'image delete by path after a crash')
  t.ok(Date.now() - started < 10_000, 'and they answer at once')
})
