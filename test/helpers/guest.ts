// A tiny Linux guest for QEMU: the host's Debian kernel (a /boot/vmlinuz-* with its modules) and
// an initramfs made here, a newc cpio archive holding static busybox, the virtio block modules
// and an init script the test writes. The archive is written in this file, so that device nodes
// need no mknod and nothing depends on the host's cpio.

import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

/** Modules that make /dev/vda appear, in load order (each after those it depends on). */
const VIRTIO_BLK = ['virtio_ring', 'virtio', 'virtio_pci_legacy_dev', 'virtio_pci_modern_dev', 'virtio_pci', 'virtio_blk']
const BUSYBOX = '/bin/busybox'

export interface GuestKernel { kernel: string, modules: Buffer[] }

/** Why no guest can boot here (a missing tool or kernel), or null. */
export function guestMissing (): string | null {
  if (spawnSync('sh', ['-c', 'command -v qemu-system-x86_64'], { stdio: 'ignore' }).status !== 0) return 'qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)'
  if (!isStatic(BUSYBOX)) return `no static busybox at ${BUSYBOX} (Debian: apt-get install busybox-static)`
  if (findKernel() === null) return 'no kernel in /boot with virtio block modules (Debian: apt-get install linux-image-cloud-amd64)'
  return null
}

/** Whether `file` is a 64-bit ELF executable without a program interpreter (PT_INTERP): statically linked. */
function isStatic (file: string): boolean {
  if (!fs.existsSync(file)) return false
  const elf = fs.readFileSync(file)
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return false
  const phoff = Number(elf.readBigUInt64LE(0x20))
  const phentsize = elf.readUInt16LE(0x36)
  const phnum = elf.readUInt16LE(0x38)
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize
    if (at + 4 > elf.length) return false
    if (elf.readUInt32LE(at) === 3) return false // PT_INTERP
  }
  return true
}

/** The newest /boot/vmlinuz-* whose modules hold the virtio block driver (or whose config builds it in). */
export function findKernel (): GuestKernel | null {
  if (!fs.existsSync('/boot')) return null
  const versions = fs.readdirSync('/boot').filter(f => f.startsWith('vmlinuz-')).map(f => f.slice('vmlinuz-'.length)).sort().reverse()
  for (const v of versions) {
    const modules = moduleFiles(v)
    if (modules !== null) return { kernel: `/boot/vmlinuz-${v}`, modules }
  }
  return null
}

function moduleFiles (version: string): Buffer[] | null {
  const config = `/boot/config-${version}`
  const builtIn = fs.existsSync(config) && /^CONFIG_VIRTIO_BLK=y$/m.test(fs.readFileSync(config, 'utf8'))
  if (builtIn) return []
  const root = `/lib/modules/${version}/kernel/drivers`
  if (!fs.existsSync(root)) return null
  const all = fs.readdirSync(root, { recursive: true, encoding: 'utf8' })
  const out: Buffer[] = []
  for (const m of VIRTIO_BLK) {
    const file = all.find(f => path.basename(f) === `${m}.ko` || path.basename(f) === `${m}.ko.xz`)
    if (file === undefined) {
      // Built into this kernel (virtio_pci_legacy_dev on older ones does not exist at all).
      if (m !== 'virtio_blk') continue
      return null
    }
    const full = path.join(root, file)
    if (!full.endsWith('.xz')) out.push(fs.readFileSync(full))
    else {
      const r = spawnSync('xz', ['-dc', full], { maxBuffer: 64 * 2 ** 20 })
      if (r.status !== 0) return null
      out.push(r.stdout)
    }
  }
  return out
}

interface Entry { name: string, mode: number, data?: Buffer, rdev?: [number, number] }

/** A newc cpio archive (the kernel's initramfs format) of these entries. */
function cpio (entries: Entry[]): Buffer {
  const parts: Buffer[] = []
  let ino = 1
  const pad = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4)
  const add = (e: Entry): void => {
    const data = e.data ?? Buffer.alloc(0)
    const name = Buffer.from(e.name + '\0')
    const fields = [ino++, e.mode, 0, 0, 1, 0, data.length, 0, 0, e.rdev?.[0] ?? 0, e.rdev?.[1] ?? 0, name.length, 0]
    const head = Buffer.from('070701' + fields.map(f => f.toString(16).padStart(8, '0')).join(''))
    parts.push(head, name, pad(head.length + name.length), data, pad(data.length))
  }
  for (const e of entries) add(e)
  add({ name: 'TRAILER!!!', mode: 0 })
  return Buffer.concat(parts)
}

/**
 * An initramfs whose /init (a busybox shell script, `script`) runs after proc, sys and dev are
 * mounted and the virtio block modules loaded; `files` are put in / beside it.
 */
export function initramfs (guest: GuestKernel, script: string, files: Record<string, Buffer> = {}): Buffer {
  const dir = 0o040755
  const file = 0o100644
  const exe = 0o100755
  const init = [
    '#!/bin/busybox sh',
    '/bin/busybox --install -s /bin',
    'mount -t proc proc /proc',
    'mount -t sysfs sys /sys',
    'mount -t devtmpfs dev /dev',
    ...guest.modules.map((_, i) => `insmod /lib/m${i}.ko`),
    script,
    'poweroff -f'
  ].join('\n') + '\n'
  return cpio([
    { name: 'bin', mode: dir },
    { name: 'lib', mode: dir },
    { name: 'dev', mode: dir },
    { name: 'proc', mode: dir },
    { name: 'sys', mode: dir },
    // The kernel opens /dev/console for init before anything is mounted.
    { name: 'dev/console', mode: 0o020600, rdev: [5, 1] },
    { name: 'bin/busybox', mode: exe, data: fs.readFileSync(BUSYBOX) },
    ...guest.modules.map((data, i) => ({ name: `lib/m${i}.ko`, mode: file, data })),
    ...Object.entries(files).map(([name, data]) => ({ name, mode: file, data })),
    { name: 'init', mode: exe, data: Buffer.from(init) }
  ])
}
