// The last line of cleanup: a small process of its own that ends what a test process started if
// that process dies without ending it. tap ends a test file that overran its time with SIGKILL
// when a synchronous call (qemu-io run with spawnSync) holds its event loop, and then no teardown
// or exit handler runs. The test process tells this one, on its stdin, "track <pid> <folder>" for
// each daemon it starts (its mount is <folder>/mnt) and "forget <pid>" once it ended it; when
// stdin closes (the test process is gone, however it went), every daemon still tracked is killed
// by its PID, its mount unmounted and its folder removed. Started by daemon.ts, detached, so that
// a signal to the test's process group does not end it first. "netns <name>" and "forget-netns
// <name>" do the same for a network namespace a test made (test/helpers/netlab.ts): deleted
// after the daemons are killed.

import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

const tracked = new Map<number, string>()
const namespaces = new Set<string>()
let pending = ''

process.stdin.setEncoding('utf8')
process.stdin.on('data', (chunk: string) => {
  pending += chunk
  const lines = pending.split('\n')
  pending = lines.pop() ?? ''
  for (const line of lines) {
    const [verb, pid, folder] = line.split(' ')
    if (verb === 'track' && pid !== undefined && folder !== undefined) tracked.set(Number(pid), folder)
    else if (verb === 'forget' && pid !== undefined) tracked.delete(Number(pid))
    else if (verb === 'netns' && pid !== undefined) namespaces.add(pid) // here the second word is a name
    else if (verb === 'forget-netns' && pid !== undefined) namespaces.delete(pid)
  }
})
process.stdin.on('end', () => {
  for (const [pid, folder] of tracked) {
    try { process.kill(pid, 'SIGKILL') } catch {}
    try { execFileSync('fusermount', ['-uz', path.join(folder, 'mnt')], { stdio: 'ignore' }) } catch {}
    fs.rmSync(folder, { recursive: true, force: true })
  }
  for (const name of namespaces) {
    try { execFileSync('ip', ['netns', 'delete', name], { stdio: 'ignore' }) } catch {}
  }
  process.exit(0)
})
