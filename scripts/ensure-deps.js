#!/usr/bin/env node
// Makes a fresh clone ready to build and test: Node packages, and the system packages FUSE and
// QEMU's tools come from. As root it installs what is missing with apt-get; otherwise it prints
// the one command to run. Uses Node built-ins only, since it runs before `npm ci`.
'use strict'
const { execFileSync, spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const bench = process.argv.includes('--bench')

function say (line) { process.stderr.write(`ensure-deps: ${line}\n`) }

const [major, minor] = process.versions.node.split('.').map(Number)
if (major < 20 || (major === 20 && minor < 15)) {
  say(`Node.js ${process.versions.node} is too old: Sheep needs 20.15 or newer`)
  process.exit(1)
}

function has (cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0
}
function hasLib (name) {
  const out = spawnSync('sh', ['-c', 'ldconfig -p 2>/dev/null || /sbin/ldconfig -p'], { encoding: 'utf8' }).stdout || ''
  return out.includes(name)
}

const missing = []
if (!has('fusermount')) missing.push('fuse')
if (!hasLib('libfuse.so.2')) missing.push('libfuse2')
if (!has('qemu-img') || !has('qemu-io')) missing.push('qemu-utils')
if (!has('setfattr') || !has('getfattr')) missing.push('attr')
if (bench && !has('fio')) missing.push('fio')
// A guest booted off the mount (test/e2e/guest-boot.test.ts): QEMU, a static busybox for its
// initramfs, and a kernel with virtio block modules to boot. Installed when it can be; without
// them that test says what is missing and skips, the rest runs.
const guest = []
if (!has('qemu-system-x86_64')) guest.push('qemu-system-x86')
if (!/install ok installed/.test(spawnSync('dpkg-query', ['-W', '-f=${Status}', 'busybox-static'], { encoding: 'utf8' }).stdout || '')) guest.push('busybox-static')
if (!fs.existsSync('/boot') || !fs.readdirSync('/boot').some(f => f.startsWith('vmlinuz-'))) guest.push('linux-image-cloud-amd64')

if (missing.length > 0) {
  const cmd = `apt-get update && apt-get install -y ${missing.join(' ')}`
  if (process.getuid && process.getuid() === 0 && has('apt-get')) {
    say(`installing ${missing.join(', ')}`)
    execFileSync('sh', ['-c', `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing.join(' ')} >/dev/null`], { stdio: 'inherit' })
  } else {
    say(`missing system packages: ${missing.join(', ')}. Install them as root with:\n  ${cmd}`)
    process.exit(1)
  }
}
if (guest.length > 0 && process.getuid && process.getuid() === 0 && has('apt-get')) {
  say(`installing ${guest.join(', ')} (for the guest boot test)`)
  const r = spawnSync('sh', ['-c', `apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${guest.join(' ')} >/dev/null`], { stdio: 'inherit' })
  if (r.status !== 0) say(`could not install ${guest.join(', ')}: the guest boot test will skip`)
}
if (!fs.existsSync('/dev/fuse')) {
  say('/dev/fuse does not exist: load the fuse kernel module (modprobe fuse) or give this container /dev/fuse')
  process.exit(1)
}

// Node packages: install when absent or older than the lock file.
const lock = path.join(root, 'package-lock.json')
const marker = path.join(root, 'node_modules', '.package-lock.json')
if (!fs.existsSync(marker) || fs.statSync(marker).mtimeMs < fs.statSync(lock).mtimeMs) {
  say('installing Node packages (npm ci)')
  execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: root, stdio: 'inherit' })
}
