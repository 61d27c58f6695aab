// qemu-img and qemu-io on a real mount: patterns written and verified at chosen offsets,
// including the last byte of the image and across object boundaries.

import t from 'tap'
import fs from 'node:fs'
import { qemuImg, qemuIo, startDaemon } from '../helpers/daemon'

const MiB = 2 ** 20

t.test('patterns at edges, across object boundaries and at the last byte', async t => {
  const d = await startDaemon(t)
  const img = d.image('vm1.img')
  qemuImg(['create', '-f', 'raw', img, '1G'])
  t.equal(fs.statSync(img).size, 2 ** 30, 'virtual size is the size given to qemu-img')
  const size = 2 ** 30
  const cases: Array<[number, number, number]> = [
    [0, 4096, 0xab], // first block
    [4 * MiB - 512, 1024, 0x11], // straddles the first object boundary
    [8 * MiB - 64 * 1024, 192 * 1024, 0x22], // straddles another boundary, 128 KiB requests
    [100 * MiB + 512, 3 * MiB, 0x33], // unaligned, spans objects
    [size - 512, 512, 0x44], // the last sector
    [size - 1, 1, 0x55] // the last byte
  ]
  for (const [off, len, p] of cases) qemuIo(img, [`write -P ${p} ${off} ${len}`])
  for (const [off, len, p] of cases.slice(0, 4)) t.doesNotThrow(() => qemuIo(img, [`read -P ${p} ${off} ${len}`]), `reads back 0x${p.toString(16)} at ${off}`)
  t.doesNotThrow(() => qemuIo(img, [`read -P 0x44 ${size - 512} 511`, `read -P 0x55 ${size - 1} 1`]), 'last sector and last byte')
  t.doesNotThrow(() => qemuIo(img, ['read -P 0 4096 4096', `read -P 0 ${200 * MiB} ${4 * MiB}`]), 'unwritten ranges read as zeros')
  // Both directions at once, with direct I/O, as QEMU's cache=none does.
  t.doesNotThrow(() => qemuIo(img, [`aio_write -P 0x66 ${16 * MiB} ${MiB}`, `aio_write -P 0x77 ${20 * MiB} ${MiB}`, 'aio_flush',
    `read -P 0x66 ${16 * MiB} ${MiB}`, `read -P 0x77 ${20 * MiB} ${MiB}`], ['-t', 'none']), 'O_DIRECT aio writes')
})

t.test('qemu-img info and check see a raw file of the right size', async t => {
  const d = await startDaemon(t)
  const img = d.image('disk.raw')
  qemuImg(['create', '-f', 'raw', img, '20G'])
  const info = JSON.parse(qemuImg(['info', '--output=json', img])) as { 'virtual-size': number, format: string }
  t.equal(info['virtual-size'], 20 * 2 ** 30)
  t.equal(info.format, 'raw')
  const list = d.sheep(['image', 'list', '--json', '--mount', d.mount])
  t.equal(list.code, 0, list.stderr)
  const images = JSON.parse(list.stdout) as Array<{ name: string, size: number }>
  t.same(images.map(i => [i.name, i.size]), [['disk.raw', 20 * 2 ** 30]])
})
