// A real QEMU guest on the mount: the host's Debian kernel with a busybox initramfs
// (../helpers/guest.ts) boots under TCG (nested KVM is not available here) off a virtio disk that
// is an image on /sheep, once with cache=none,aio=threads and once with cache=none,aio=io_uring.
// Each boot's init writes a pattern of its own to the disk, syncs, drops its page cache, reads
// back every pattern written so far and prints their checksums on the serial console; the test
// compares those and the image's bytes as the host reads them.

import t from 'tap'
import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { qemuImg, startDaemon, tempDir } from '../helpers/daemon'
import { findKernel, guestMissing, initramfs } from '../helpers/guest'
import { Rng } from '../helpers/random'

const MiB = 2 ** 20
const PATTERN = 4 * MiB
const BOOT_TIMEOUT_MS = 60_000
const missing = guestMissing()

/** Boots the guest; resolves with what it printed on its serial console once QEMU exits. */
async function boot (t: Parameters<typeof tempDir>[0], image: string, aio: string, initrd: string, kernel: string): Promise<string> {
  const qemu = spawn('qemu-system-x86_64', ['-accel', 'tcg', '-m', '192', '-nodefaults', '-no-reboot', '-display', 'none', '-serial', 'stdio',
    '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 panic=-1 quiet',
    '-drive', `file=${image},format=raw,if=none,id=d0,cache=none,aio=${aio}`, '-device', 'virtio-blk-pci,drive=d0'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { if (qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL') })
  let out = ''
  qemu.stdout.on('data', (b: Buffer) => { out += b.toString() })
  qemu.stderr.on('data', (b: Buffer) => { out += b.toString() })
  const timer = setTimeout(() => qemu.kill('SIGKILL'), BOOT_TIMEOUT_MS)
  const code = await new Promise(resolve => qemu.once('exit', (c, sig) => resolve(c ?? sig)))
  clearTimeout(timer)
  if (code !== 0) throw new Error(`qemu (aio=${aio}) ended with ${String(code)}: ${out.slice(-3000)}`)
  return out
}

t.test('a Linux guest boots off an image on the mount and writes and reads its disk, with aio=threads and aio=io_uring', { skip: missing ?? false }, async t => {
  const guest = findKernel()
  if (guest === null) throw new Error('no kernel') // guestMissing() said there was one
  const d = await startDaemon(t)
  const image = d.image('guest.img')
  qemuImg(['create', '-f', 'raw', image, '64M'])
  const work = tempDir(t, 'sheep-guest-')
  const rng = new Rng(20261206)
  const written: Array<{ at: number, bytes: Buffer }> = []
  for (const [i, aio] of ['threads', 'io_uring'].entries()) {
    const bytes = rng.bytes(PATTERN)
    const at = (1 + 8 * i) * MiB
    written.push({ at, bytes })
    // dd writes through the guest's page cache and syncs; dropping that cache makes the reads
    // after it come from the disk, that is from the daemon.
    const script = [
      'i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done',
      `dd if=/pattern of=/dev/vda bs=1M seek=${at / MiB} count=${PATTERN / MiB} conv=fsync`,
      'echo 3 > /proc/sys/vm/drop_caches',
      ...written.map(w => `echo "SHEEP-SUM ${w.at} $(dd if=/dev/vda bs=1M skip=${w.at / MiB} count=${PATTERN / MiB} 2>/dev/null | md5sum)"`)
    ].join('\n')
    const initrd = path.join(work, `initrd-${aio}.cpio`)
    fs.writeFileSync(initrd, initramfs(guest, script, { pattern: bytes }))
    const started = Date.now()
    const console = await boot(t, image, aio, initrd, guest.kernel)
    t.comment(`aio=${aio}: booted, wrote and read back in ${Date.now() - started} ms (${guest.kernel})`)
    for (const w of written) {
      const sum = crypto.createHash('md5').update(w.bytes).digest('hex')
      t.match(console, new RegExp(`SHEEP-SUM ${w.at} ${sum}`), `aio=${aio}: the guest reads back the pattern at ${w.at / MiB} MiB`)
    }
    const fd = fs.openSync(image, 'r')
    const back = Buffer.alloc(PATTERN)
    fs.readSync(fd, back, 0, PATTERN, at)
    fs.closeSync(fd)
    t.ok(back.equals(bytes), `aio=${aio}: the host reads the guest's bytes in the image`)
  }
})
