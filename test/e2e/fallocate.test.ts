// fallocate(1), SEEK_DATA/SEEK_HOLE (qemu-img map) and copy_file_range (cp) on a real mount: reached through the kernel
// protocol only (libfuse 2 never passes them on), so skipped when SHEEP_FUSE=libfuse2.

import t from 'tap'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import { qemuImg, qemuIo, startDaemon, storedObjects } from '../helpers/daemon'

const MiB = 2 ** 20
const libfuse2 = process.env.SHEEP_FUSE === 'libfuse2'

function fallocate (args: string[]): { code: number | null, stderr: string } {
  const r = spawnSync('fallocate', args, { encoding: 'utf8', timeout: 60_000 })
  return { code: r.status, stderr: r.stderr }
}

t.test('punch hole and zero range free whole objects and read zeros; mode 0 succeeds; collapse is refused; qemu-img map sees the holes', { skip: libfuse2 && 'libfuse 2 does not pass fallocate or lseek on' }, async t => {
  const d = await startDaemon(t)
  const img = d.image('vm1.img')
  qemuImg(['create', '-f', 'raw', img, '16M'])
  qemuIo(img, ['write -P 0x5a 0 16M'])
  const objects = storedObjects(d).length

  t.equal(fallocate(['-p', '-o', '4M', '-l', '8M', img]).code, 0, 'fallocate --punch-hole (PUNCH_HOLE | KEEP_SIZE)')
  t.equal(storedObjects(d).length, objects - 2, 'the two whole objects in the range are freed')
  t.equal(fs.statSync(img).size, 16 * MiB, 'the size is kept')
  t.equal(fs.statSync(img).blocks * 512, 8 * MiB, 'du counts what is left')
  const map = JSON.parse(qemuImg(['map', '--output=json', '-f', 'raw', img])) as Array<{ start: number, length: number, data: boolean }>
  t.same(map.map(e => [e.start, e.length, e.data]), [[0, 4 * MiB, true], [4 * MiB, 8 * MiB, false], [12 * MiB, 4 * MiB, true]], 'SEEK_DATA/SEEK_HOLE: qemu-img map sees the hole')

  t.equal(fallocate(['-z', '-o', '1M', '-l', '1M', img]).code, 0, 'fallocate --zero-range')
  t.equal(fallocate(['-l', '16M', img]).code, 0, 'mode 0 on the existing range succeeds')
  t.doesNotThrow(() => qemuIo(img, ['read -P 0x5a 0 1M', 'read -P 0 1M 1M', 'read -P 0x5a 2M 2M', 'read -P 0 4M 8M', 'read -P 0x5a 12M 4M']), 'zeros where punched and zeroed, the rest kept')
  const collapse = fallocate(['-c', '-o', '0', '-l', '4M', img])
  t.not(collapse.code, 0, 'fallocate --collapse-range fails')
  t.match(collapse.stderr, /Operation not supported/, 'with EOPNOTSUPP')
  t.equal(fs.statSync(img).size, 16 * MiB, 'and changes nothing')
})

t.test('cp copies through copy_file_range in the daemon, bit-exact, holes kept, blocks shared', { skip: libfuse2 && 'libfuse 2 does not pass copy_file_range on' }, async t => {
  const d = await startDaemon(t)
  const src = d.image('src.img')
  const dst = d.image('dst.img')
  qemuImg(['create', '-f', 'raw', src, '24M'])
  qemuIo(src, ['write -P 0x11 0 3M', 'write -P 0x22 13M 1M'])
  const r = spawnSync('cp', ['--sparse=never', src, dst], { encoding: 'utf8', timeout: 60_000 })
  t.equal(r.status, 0, `cp: ${r.stderr}`)
  t.doesNotThrow(() => qemuImg(['compare', '-f', 'raw', '-F', 'raw', src, dst]), 'the copy is identical')
  const status = JSON.parse(d.sheep(['status', '--json', '--mount', d.mount]).stdout) as { fuse: { requests: Record<string, { count: number }> } }
  t.ok((status.fuse.requests.copy_file_range?.count ?? 0) > 0, 'the kernel sent COPY_FILE_RANGE')
  t.equal(fs.statSync(dst).blocks, 0, 'the written blocks are shared with the source, the holes stay holes: the copy allocates nothing (test/e2e/copy-range.test.ts)')
})
