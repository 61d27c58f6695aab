// Local users through real mounts, with a real unprivileged user made for the test (useradd,
// removed with userdel -r when the test ends, passed or failed): the kernel denies what ext4
// would deny (reading or writing a root-owned 0600 image, reading its snapshots or listing their
// names) and allows it after chown or chmod, on both hosts of a 2-node cluster and after both
// restarted; an image made through the mount is its maker's, with the mode asked for; security.*,
// trusted.* and user.* attributes are kept like ext4's, on both hosts and across restarts; the
// libfuse 2 session enforces the same; the control socket answers root only, and a socket path
// or folder another user owns makes `sheep start` fail, naming it.

import t, { type Test } from 'tap'
import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Daemon, type RunResult, SHEEP_BIN, startCluster, startDaemon, tempDir, waitFor, waitForView } from '../helpers/daemon'

interface User { name: string, uid: number, gid: number }

function run (cmd: string, args: string[]): RunResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 })
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? (r.error?.message ?? '') }
}

function must (cmd: string, args: string[]): string {
  const r = run(cmd, args)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** A new user and its own group, deleted (with anything of its home) when the test ends. */
function makeUser (t: Test): User {
  const name = `sheept${process.pid.toString(36)}${crypto.randomBytes(3).toString('hex')}`
  must('useradd', ['--no-create-home', '--user-group', '--shell', '/usr/sbin/nologin', name])
  t.teardown(() => { run('userdel', ['-r', name]) })
  return { name, uid: Number(must('id', ['-u', name])), gid: Number(must('id', ['-g', name])) }
}

/** Runs a command as `user`, with no supplementary groups. */
function as (user: User, args: string[]): RunResult {
  return run('setpriv', [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--', ...args])
}

/** 'ok', 'denied' (EACCES), or what else the command said. */
function outcome (r: RunResult): string {
  if (r.code === 0) return 'ok'
  return /Permission denied/.test(r.stderr) ? 'denied' : `failed (${r.code}): ${r.stderr.trim()}`
}

const read = (user: User, file: string): string => outcome(as(user, ['head', '-c', '4096', file]))
const write = (user: User, file: string): string => outcome(as(user, ['dd', 'if=/dev/zero', `of=${file}`, 'bs=4096', 'count=1', 'conv=notrunc', 'status=none']))
const list = (user: User, dir: string): string => outcome(as(user, ['ls', dir]))

function sheep (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

function getfattr (file: string, name: string): string | null {
  const r = run('getfattr', ['--absolute-names', '--only-values', '-n', name, file])
  return r.code === 0 ? r.stdout : null
}

/** The daemon's folder is the test's (0700): let the user reach the mount inside it. */
function reachable (d: Daemon): void {
  fs.chmodSync(d.dir, 0o711)
}

const perm = (file: string): { mode: number, uid: number, gid: number } => {
  const st = fs.statSync(file)
  return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }
}

t.test('permissions on a 2-node cluster, across restarts', async t => {
  const user = makeUser(t)
  // 1777, as tmpfs's mode=1777: every user may make images, each deleting only its own.
  const [a, b] = await startCluster(t, 2, ['--root-mode', '1777']) as [Daemon, Daemon]
  reachable(a)
  reachable(b)
  const hosts: Array<[string, Daemon]> = [['A', a], ['B', b]]

  sheep(a, ['image', 'create', 'root.img', '8M', '--copies', '2'])
  fs.writeFileSync(a.image('root.img'), Buffer.alloc(4096, 0x5a), { flag: 'r+' })
  sheep(a, ['snapshot', 'create', 'root.img', 's1'])
  sheep(a, ['image', 'create', 'shared.img', '8M', '--copies', '2'])
  sheep(a, ['snapshot', 'create', 'shared.img', 's1'])
  t.same(perm(a.image('root.img')), { mode: 0o600, uid: 0, gid: 0 }, 'sheep image create: root:root 0600 by default')
  t.same(perm(path.join(a.mount, '.snapshots/root.img/s1')), { mode: 0o400, uid: 0, gid: 0 }, 'its snapshot: the same without write bits')
  t.same(perm(path.join(a.mount, '.snapshots/root.img')), { mode: 0o500, uid: 0, gid: 0 }, 'its snapshots\' folder: r-x where the image has r')

  for (const [host, d] of hosts) {
    const ok = await waitFor(() => fs.existsSync(d.image('shared.img')) && fs.existsSync(path.join(d.mount, '.snapshots/shared.img/s1')), 5000)
    t.ok(ok, `${host}: the images are there`)
    t.equal(read(user, d.image('root.img')), 'denied', `${host}: a user cannot read a root 0600 image`)
    t.equal(write(user, d.image('root.img')), 'denied', `${host}: nor write it`)
    t.equal(read(user, path.join(d.mount, '.snapshots/root.img/s1')), 'denied', `${host}: nor read its snapshot`)
    t.equal(list(user, path.join(d.mount, '.snapshots/root.img')), 'denied', `${host}: nor list its snapshots' names`)
    t.equal(outcome(as(user, ['rm', '-f', d.image('root.img')])), 'failed (1): rm: cannot remove \'' + d.image('root.img') + '\': Operation not permitted', `${host}: nor delete it (sticky root)`)
  }

  // chown on A; chmod on B: each shows on the other host within the refresh bound (about 1 s),
  // also where the image is open (its handles keep what they read; the attributes follow).
  const held = [fs.openSync(b.image('shared.img'), 'r'), fs.openSync(a.image('root.img'), 'r')]
  const release = (): void => { for (const fd of held.splice(0)) fs.closeSync(fd) }
  t.teardown(release)
  fs.chownSync(a.image('shared.img'), user.uid, user.gid)
  fs.chmodSync(b.image('root.img'), 0o644)
  t.ok(await waitFor(() => perm(b.image('shared.img')).uid === user.uid && perm(a.image('root.img')).mode === 0o644, 5000), 'each change shows on the other host, where the image is open')
  release()
  for (const [host, d] of hosts) {
    t.ok(await waitFor(() => perm(d.image('shared.img')).uid === user.uid && perm(d.image('root.img')).mode === 0o644, 5000), `${host}: both changes show`)
    t.same(perm(d.image('shared.img')), { mode: 0o600, uid: user.uid, gid: user.gid }, `${host}: shared.img is the user's`)
    t.equal(read(user, d.image('shared.img')), 'ok', `${host}: the user reads the image chowned to it`)
    t.equal(write(user, d.image('shared.img')), 'ok', `${host}: and writes it`)
    t.equal(read(user, path.join(d.mount, '.snapshots/shared.img/s1')), 'ok', `${host}: and reads its snapshot`)
    t.equal(list(user, path.join(d.mount, '.snapshots/shared.img')), 'ok', `${host}: and lists its snapshots`)
    t.equal(read(user, d.image('root.img')), 'ok', `${host}: reads root.img after chmod 644`)
    t.equal(write(user, d.image('root.img')), 'denied', `${host}: but does not write it`)
    t.equal(read(user, path.join(d.mount, '.snapshots/root.img/s1')), 'ok', `${host}: its snapshot follows the image's mode`)
  }
  t.same(fs.readFileSync(a.image('shared.img')).subarray(0, 4096), Buffer.alloc(4096), 'what the user wrote is there')

  // Made through the mount by the user, with the mode it asked for (umask applied by the kernel).
  const made = as(user, ['sh', '-c', `umask 027 && : > ${a.image('mine.img')}`])
  t.equal(made.code, 0, `the user makes an image through the mount: ${made.stderr}`)
  for (const [host, d] of hosts) {
    t.ok(await waitFor(() => fs.existsSync(d.image('mine.img')), 5000), `${host}: mine.img is there`)
    t.same(perm(d.image('mine.img')), { mode: 0o640, uid: user.uid, gid: user.gid }, `${host}: the user's, 0666 & ~027`)
  }

  // Extended attributes, as sVirt and libvirt's DAC driver leave them; the kernel keeps trusted.* and security.* for root.
  const label = 'system_u:object_r:svirt_image_t:s0:c392,c662'
  must('setfattr', ['-n', 'security.selinux', '-v', label, a.image('shared.img')])
  must('setfattr', ['-n', 'trusted.libvirt.security.dac', '-v', '+107:+107', a.image('shared.img')])
  must('setfattr', ['-n', 'user.note', '-v', 'hello', a.image('shared.img')])
  must('setfattr', ['-n', 'trusted.gone', '-v', 'x', a.image('shared.img')])
  must('setfattr', ['-x', 'trusted.gone', a.image('shared.img')])
  t.equal(getfattr(a.image('shared.img'), 'security.selinux'), label, 'security.* round trip')
  t.equal(getfattr(a.image('shared.img'), 'trusted.gone'), null, 'a removed attribute is gone')
  const big = run('setfattr', ['-n', 'user.big', '-v', 'x'.repeat(4000), a.image('shared.img')])
  t.match(big.stderr, /No space left on device/, 'a value past the header\'s room: ENOSPC, as ext4 with 4 KiB blocks')
  t.match(as(user, ['setfattr', '-n', 'trusted.x', '-v', '1', a.image('shared.img')]).stderr, /Operation not permitted/, 'the user may not set trusted.* even on its image')
  t.match(run('setfattr', ['-n', 'user.sheep.vid', '-v', '1', a.image('shared.img')]).stderr, /Operation not permitted/, 'user.sheep.* stay Sheep\'s')
  t.match(run('setfattr', ['-n', 'security.selinux', '-v', label, path.join(a.mount, '.snapshots/shared.img/s1')]).stderr, /Read-only file system/, 'a snapshot\'s attributes are read-only')
  // B picks up A's changes by a refresh, which may land between two of them (after trusted.gone
  // was set and before it was removed): it waits for the last one.
  t.ok(await waitFor(() => getfattr(b.image('shared.img'), 'trusted.gone') === null && getfattr(b.image('shared.img'), 'user.note') === 'hello', 5000), 'B: the removed one is gone')
  t.equal(getfattr(b.image('shared.img'), 'trusted.libvirt.security.dac'), '+107:+107', 'B: trusted.* as A set it')
  t.equal(getfattr(b.image('shared.img'), 'user.note'), 'hello', 'B: user.*')

  // Both hosts stop and start again on their stores.
  await b.stop()
  await a.stop()
  // Together, as hosts boot: a node's images load once a majority of the last view answers.
  await Promise.all([a.start(), b.start()])
  await waitForView([a, b], 2)
  for (const [host, d] of hosts) {
    t.same(perm(d.image('shared.img')), { mode: 0o600, uid: user.uid, gid: user.gid }, `${host} after the restart: chown kept`)
    t.same(perm(d.image('root.img')), { mode: 0o644, uid: 0, gid: 0 }, `${host} after the restart: chmod kept`)
    t.same(perm(d.image('mine.img')), { mode: 0o640, uid: user.uid, gid: user.gid }, `${host} after the restart: the user's image`)
    t.equal(read(user, d.image('shared.img')), 'ok', `${host} after the restart: the user reads its image`)
    t.equal(write(user, d.image('root.img')), 'denied', `${host} after the restart: and still cannot write root's`)
    t.equal(getfattr(d.image('shared.img'), 'security.selinux'), label, `${host} after the restart: security.* kept`)
    t.equal(getfattr(d.image('shared.img'), 'trusted.libvirt.security.dac'), '+107:+107', `${host} after the restart: trusted.* kept`)
  }
  fs.chmodSync(b.image('root.img'), 0o600)
  t.ok(await waitFor(() => read(user, a.image('root.img')) === 'denied', 5000), 'chmod 600 on B: A denies the user again')

  // The control socket: its folder is root's, 0700. (tap puts NODE_OPTIONS into every child's
  // environment, which would have the user's node write into tap's folder: env -i.)
  t.same(perm(a.runDir), { mode: 0o700, uid: 0, gid: 0 }, 'the control socket\'s folder: 0700, root\'s')
  const status = as(user, ['env', '-i', `SHEEP_RUN_DIR=${a.runDir}`, process.execPath, SHEEP_BIN, 'status', '--mount', a.mount])
  t.not(status.code, 0, 'the user\'s sheep status is refused')
  t.match(status.stderr, /^sheep: permission denied: .*\.sock answers only root and the user the daemon runs as\n$/, `and says why: ${status.stderr.trim()}`)
  t.equal(a.sheep(['status', '--mount', a.mount]).code, 0, 'root\'s is answered')
})

t.test('the libfuse 2 session enforces the same', async t => {
  const user = makeUser(t)
  const d = await startDaemon(t, ['--fuse', 'libfuse2'])
  reachable(d)
  t.match(sheep(d, ['status']), /fuse: +libfuse 2/, 'libfuse 2 serves the mount')
  sheep(d, ['image', 'create', 'vm.img', '8M'])
  sheep(d, ['image', 'create', 'theirs.img', '8M', '--owner', user.name, '--group', String(user.gid), '--mode', '0640'])
  t.same(perm(d.image('theirs.img')), { mode: 0o640, uid: user.uid, gid: user.gid }, '--owner by name, --group by number, --mode')
  t.equal(read(user, d.image('vm.img')), 'denied', 'a root 0600 image: denied')
  t.equal(read(user, d.image('theirs.img')), 'ok', 'its own: read')
  t.equal(outcome(as(user, ['sh', '-c', `: > ${d.image('new.img')}`])), 'denied', 'the root is 0755 by default: the user makes no image')
  fs.chownSync(d.image('vm.img'), user.uid, -1)
  t.equal(write(user, d.image('vm.img')), 'ok', 'after chown: written')
  must('setfattr', ['-n', 'security.selinux', '-v', 'l1', d.image('vm.img')])
  t.equal(getfattr(d.image('vm.img'), 'security.selinux'), 'l1', 'security.* round trip')

  for (const [args, message] of [
    [['--owner', 'no-such-user-sheep'], /^sheep: bad --owner: no user "no-such-user-sheep" on this host\n/],
    [['--group', 'no-such-group-sheep'], /^sheep: bad --group: no group "no-such-group-sheep" on this host\n/],
    [['--owner', '4294967295'], /^sheep: bad --owner: user id 4294967295 is past 4294967294\n/],
    [['--mode', '0999'], /^sheep: bad --mode "0999": an octal mode such as 0600 or 0640\n/],
    [['--mode', 'rw-r--r--'], /^sheep: bad --mode "rw-r--r--"/]
  ] as Array<[string[], RegExp]>) {
    const r = d.sheep(['image', 'create', 'bad.img', '8M', ...args, '--mount', d.mount])
    t.equal(r.code, 2, `${args.join(' ')}: a usage error`)
    t.match(r.stderr, message, `${args.join(' ')}: ${r.stderr.split('\n')[0]}`)
  }
  t.notOk(fs.existsSync(d.image('bad.img')), 'and nothing was made')
})

/** A daemon not yet started in a fresh folder, cleaned up when the test ends. */
function daemonIn (t: Test): Daemon {
  const d = new Daemon(tempDir(t), [])
  t.teardown(() => d.cleanupSync())
  return d
}

function socketOf (d: Daemon): string {
  const key = crypto.createHash('sha256').update(path.resolve(d.mount)).digest('hex').slice(0, 20)
  return path.join(d.runDir, `${key}.sock`)
}

t.test('sheep start refuses a control socket path or folder another user owns, naming it', async t => {
  const user = makeUser(t)
  const bySocket = daemonIn(t)
  fs.mkdirSync(bySocket.runDir, { mode: 0o700 })
  const sock = socketOf(bySocket)
  fs.writeFileSync(sock, '')
  fs.chownSync(sock, user.uid, user.gid)
  await t.rejects(bySocket.start(), new RegExp(`control socket ${sock.replace(/[.]/g, '\\.')} already exists and belongs to uid ${user.uid}, not to this daemon's user \\(uid 0\\)`), 'a socket path of the user\'s')
  t.ok(fs.existsSync(sock), 'and it is left alone')

  const byFolder = daemonIn(t)
  fs.mkdirSync(byFolder.runDir, { mode: 0o700 })
  fs.chownSync(byFolder.runDir, user.uid, user.gid)
  await t.rejects(byFolder.start(), new RegExp(`control socket folder ${byFolder.runDir.replace(/[.]/g, '\\.')} belongs to uid ${user.uid}`), 'a folder of the user\'s')

  const writable = daemonIn(t)
  fs.mkdirSync(writable.runDir)
  fs.chmodSync(writable.runDir, 0o777)
  await t.rejects(writable.start(), /control socket folder .* may be written by other users \(mode 0777\)/, 'a folder others may write')

  // One of root's that only others may read (as versions before made /run/sheep) is narrowed to 0700.
  const old = daemonIn(t)
  fs.mkdirSync(old.runDir, { mode: 0o755 })
  fs.chmodSync(old.runDir, 0o755)
  await old.start()
  t.same(perm(old.runDir), { mode: 0o700, uid: 0, gid: 0 }, 'a 0755 folder of root\'s: narrowed to 0700')
  t.match(old.log, /mode narrowed to 0700/, 'and the log says so')
  await old.stop()
})
