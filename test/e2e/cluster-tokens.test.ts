// The write token of an image on a cluster (src/cow/tokens.ts, src/swarm/write-tokens.ts): two
// hosts with the same image open for writing, as in a live migration, each see every block the
// other allocated once they do I/O after it; a change (resize, snapshot, delete) from a host that
// does not hold the token is refused while the holder has the image open for writing; an image
// changed elsewhere under an open handle fails that handle's I/O with ESTALE, never with old bytes;
// a holder killed with SIGKILL loses its token to the next host once the view drops it; a holder
// frozen (SIGSTOP) until another host took its token over is fenced: nothing it sends after it
// thaws lands, and its open handles fail with ESTALE until reopened.

import t from 'tap'
import fs from 'node:fs'
import { type Daemon, errCode, qemuIo, QemuIoSession, startCluster, waitForView } from '../helpers/daemon'

const MiB = 2 ** 20

function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} on ${d.mount} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

function fill (byte: number, length: number): Buffer {
  return Buffer.alloc(length, byte)
}

function readAt (fd: number, pos: number, length: number): Buffer {
  const b = Buffer.alloc(length)
  const n = fs.readSync(fd, b, 0, length, pos)
  if (n !== length) throw new Error(`short read: ${n} of ${length} at ${pos}`)
  return b
}

/** Opens `file` for reading and writing, closed when the test ends (if the test did not). */
function openRw (t: { teardown: (fn: () => void) => void }, file: string): { fd: number, close: () => void } {
  const fd = fs.openSync(file, 'r+')
  let open = true
  const close = (): void => { if (open) { open = false; fs.closeSync(fd) } }
  t.teardown(close)
  return { fd, close }
}

t.test('write tokens on a 2-node cluster', async t => {
  const [a, b] = await startCluster(t, 2) as [Daemon, Daemon]

  t.test('live migration: each host reads what the other allocated while both had the image open', async t => {
    ok(a, ['image', 'create', 'mig.img', '64M', '--copies', '2'])
    const onA = openRw(t, a.image('mig.img'))
    fs.writeSync(onA.fd, fill(0x11, MiB), 0, MiB, 0)
    // The destination opens while the source runs, and loads the inode as it is then.
    const onB = openRw(t, b.image('mig.img'))
    t.ok(readAt(onB.fd, 0, MiB).equals(fill(0x11, MiB)), 'B reads what A wrote before B opened')
    // A's first I/O after B's takes the token back; this block is allocated after B loaded the inode.
    fs.writeSync(onA.fd, fill(0x22, MiB), 0, MiB, 40 * MiB)
    fs.writeSync(onA.fd, fill(0x23, 4096), 0, 4096, 4096)
    // Switch-over: B's I/O takes the token; A writes out the entries it kept, B loads them.
    t.ok(readAt(onB.fd, 40 * MiB, MiB).equals(fill(0x22, MiB)), 'B reads the block A allocated after B opened')
    t.ok(readAt(onB.fd, 0, 8192).equals(Buffer.concat([fill(0x11, 4096), fill(0x23, 4096)])), 'and A\'s overwrite')
    fs.writeSync(onB.fd, fill(0x33, MiB), 0, MiB, 20 * MiB)
    t.ok(readAt(onA.fd, 20 * MiB, MiB).equals(fill(0x33, MiB)), 'A reads the block B allocated')
    onA.close()
    onB.close()
    qemuIo(a.image('mig.img'), ['read -P 0x11 0 4K', 'read -P 0x23 4K 4K', 'read -P 0x11 8K 1016K', 'read -P 0 1M 19M',
      'read -P 0x33 20M 1M', 'read -P 0 21M 19M', 'read -P 0x22 40M 1M', 'read -P 0 41M 23M'])
    t.pass('after both closed: every block where the last writer put it, on A')
    qemuIo(b.image('mig.img'), ['read -P 0x22 40M 1M', 'read -P 0x33 20M 1M'])
    t.pass('and on B')
  })

  t.test('a change is refused while the holder has the image open for writing, and done once it closed', async t => {
    ok(a, ['image', 'create', 'busy.img', '32M', '--copies', '2'])
    const onA = openRw(t, a.image('busy.img'))
    fs.writeSync(onA.fd, fill(0x44, MiB), 0, MiB, 0)
    for (const args of [['image', 'resize', 'busy.img', '64M'], ['snapshot', 'create', 'busy.img', 's1'], ['image', 'delete', 'busy.img']]) {
      const r = b.sheep([...args, '--mount', b.mount])
      t.not(r.code, 0, `${args.join(' ')} on B fails`)
      t.match(r.stderr, /in use on node [0-9a-f]{8} \(127\.0\.0\.1:\d+\).*open for writing/, `and says where: ${r.stderr.trim()}`)
      t.equal(r.stderr.trim().split('\n').length, 1, 'in one line')
    }
    t.equal(fs.fstatSync(onA.fd).size, 32 * MiB, 'the size did not change')
    t.ok(readAt(onA.fd, 0, MiB).equals(fill(0x44, MiB)), 'A goes on reading its bytes')
    // chmod changes no block: it takes the token like I/O does, A writing or not.
    fs.chmodSync(b.image('busy.img'), 0o640)
    fs.writeSync(onA.fd, fill(0x45, 4096), 0, 4096, 8 * MiB)
    const st = fs.fstatSync(onA.fd)
    t.equal(st.mode & 0o777, 0o640, 'A writes on, and sees the mode B set')
    t.equal(st.size, 32 * MiB, 'with the size unchanged')
    onA.close()
    ok(b, ['image', 'resize', 'busy.img', '64M'])
    ok(b, ['snapshot', 'create', 'busy.img', 's1'])
    t.equal(fs.statSync(a.image('busy.img')).size, 64 * MiB, 'A sees the resize')
    qemuIo(a.image('busy.img'), ['read -P 0x44 0 1M', 'read -P 0x45 8M 4K', 'write -P 0x55 0 1M'])
    qemuIo(a.image('.snapshots/busy.img/s1'), ['read -P 0x44 0 1M'], ['-r'])
    t.pass('A writes after the snapshot B took; the snapshot keeps the old bytes')
  })

  t.test('an image snapshotted by its writer fails I/O on another host\'s open handle with ESTALE until reopened', async t => {
    ok(a, ['image', 'create', 'snap.img', '16M', '--copies', '2'])
    const onA = openRw(t, a.image('snap.img'))
    fs.writeSync(onA.fd, fill(0x71, MiB), 0, MiB, 0)
    const onB = openRw(t, b.image('snap.img'))
    ok(a, ['snapshot', 'create', 'snap.img', 'before'])
    fs.writeSync(onA.fd, fill(0x72, 4096), 0, 4096, 0)
    for (const attempt of ['first', 'second']) t.equal(errCode(() => readAt(onB.fd, 0, 4096)), 'ESTALE', `B's ${attempt} read`)
    t.equal(errCode(() => fs.writeSync(onB.fd, fill(0x73, 4096), 0, 4096, 0)), 'ESTALE', 'and a write: nothing lands in the snapshot')
    onB.close()
    onA.close()
    qemuIo(b.image('snap.img'), ['read -P 0x72 0 4K', 'read -P 0x71 4K 1020K'])
    qemuIo(b.image('.snapshots/snap.img/before'), ['read -P 0x71 0 1M'], ['-r'])
    t.pass('opened again on B: the image and the snapshot as A left them')
  })

  t.test('an image deleted on another host fails I/O on a handle still open here with ESTALE', async t => {
    ok(a, ['image', 'create', 'gone.img', '16M', '--copies', '2'])
    const onA = openRw(t, a.image('gone.img'))
    // B writes last, so B holds the token and A is not asked before the delete.
    qemuIo(b.image('gone.img'), ['write -P 0x66 0 1M'])
    ok(b, ['image', 'delete', 'gone.img'])
    t.equal(errCode(() => readAt(onA.fd, 0, 4096)), 'ESTALE', 'a read on A')
    t.equal(errCode(() => fs.writeSync(onA.fd, fill(1, 4096), 0, 4096, 0)), 'ESTALE', 'a write on A')
    onA.close()
    t.notOk(fs.readdirSync(a.mount).includes('gone.img'), 'the image is gone on A too')
  })
})

t.test('the writer of an image dies (kill -9): another host takes its token over and reads every synced write', async t => {
  const [n1, writer, taker] = await startCluster(t, 3) as [Daemon, Daemon, Daemon]
  ok(n1, ['image', 'create', 'ha.img', '64M', '--copies', '2'])
  const onWriter = fs.openSync(writer.image('ha.img'), 'r+')
  // New blocks (their owner entries reach the inode at the fsync) and an overwrite.
  for (const [byte, pos] of [[0x81, 0], [0x82, 30 * MiB], [0x83, 63 * MiB]]) fs.writeSync(onWriter, fill(byte as number, MiB), 0, MiB, pos as number)
  fs.fsyncSync(onWriter)
  fs.writeSync(onWriter, fill(0x84, 4096), 0, 4096, 0)
  fs.fsyncSync(onWriter)
  // Open before the death, as a migration's destination is (a VM restarted elsewhere opens after
  // it, which the open's own reload covers).
  const onTaker = openRw(t, taker.image('ha.img'))
  await writer.kill('SIGKILL')
  try { fs.closeSync(onWriter) } catch {} // its mount is gone with its daemon
  const start = Date.now()
  t.ok(readAt(onTaker.fd, 0, 4096).equals(fill(0x84, 4096)), 'the taker reads the last synced write')
  t.ok(Date.now() - start < 15_000, `once the dead holder is out of the view (${Date.now() - start} ms)`)
  t.ok(readAt(onTaker.fd, 4096, MiB - 4096).equals(fill(0x81, MiB - 4096)), 'and the block around it')
  t.ok(readAt(onTaker.fd, 30 * MiB, MiB).equals(fill(0x82, MiB)), 'and the other blocks the writer allocated')
  t.ok(readAt(onTaker.fd, 63 * MiB, MiB).equals(fill(0x83, MiB)), 'up to the last block')
  fs.writeSync(onTaker.fd, fill(0x85, MiB), 0, MiB, 10 * MiB)
  onTaker.close()
  qemuIo(n1.image('ha.img'), ['read -P 0x84 0 4K', 'read -P 0x85 10M 1M', 'read -P 0x82 30M 1M', 'read -P 0x83 63M 1M'])
  t.pass('a third host reads what both wrote')
})

t.test('a writer frozen (SIGSTOP) while another host took its token over is fenced when it thaws', async t => {
  const nodes = await startCluster(t, 3)
  const [n1, writer, taker] = nodes as [Daemon, Daemon, Daemon]
  ok(n1, ['image', 'create', 'fence.img', '16M', '--copies', '3'])
  // The guest on the writer: qemu-io in a process of its own, the image open throughout.
  const guest = new QemuIoSession(t, writer.image('fence.img'))
  t.match(await guest.run('write -f -P 0x91 0 1M'), /wrote 1048576/, 'the writer writes and flushes')
  process.kill(writer.pid, 'SIGSTOP')
  t.teardown(() => { try { process.kill(writer.pid, 'SIGCONT') } catch {} })
  // The guest goes on writing: its write waits in the kernel for the frozen daemon.
  const late = guest.run('write -P 0x92 0 4k')
  // The VM is restarted on another host once the frozen one is out of the view.
  await waitForView([n1, taker], 2)
  const onTaker = openRw(t, taker.image('fence.img'))
  fs.writeSync(onTaker.fd, fill(0x93, 4096), 0, 4096, 0)
  fs.fsyncSync(onTaker.fd)
  process.kill(writer.pid, 'SIGCONT')
  t.match(await late, /write failed: Stale file handle/, 'the write the frozen host had not done fails when it thaws')
  t.match(await guest.run('read -P 0x91 4k 4k'), /read failed: Stale file handle/, 'so does later I/O through its handle')
  t.match(await guest.run('write -P 0x94 8k 4k'), /write failed: Stale file handle/, 'writes too')
  t.ok(readAt(onTaker.fd, 0, MiB).equals(Buffer.concat([fill(0x93, 4096), fill(0x91, MiB - 4096)])), 'the taker goes on with its own bytes')
  await waitForView(nodes, 3)
  qemuIo(n1.image('fence.img'), ['read -P 0x93 0 4K', 'read -P 0x91 4K 1020K', 'read -P 0 1M 15M'])
  t.pass('a third host reads what the taker wrote, nothing of the thawed host\'s')
  await guest.quit()
  onTaker.close()
  qemuIo(writer.image('fence.img'), ['read -P 0x93 0 4K', 'write -P 0x95 8K 4K', 'read -P 0x91 4K 4K'])
  t.pass('reopened, the thawed host reads the image as the taker left it, and writes again')
  qemuIo(taker.image('fence.img'), ['read -P 0x95 8K 4K'])
  t.pass('which the taker sees')
})
