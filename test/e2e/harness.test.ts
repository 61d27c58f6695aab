// The test harness itself: a test process killed outright (as tap does with one that overran its
// time while a synchronous call held its event loop) leaves no daemon, mount or folder behind.

import t from 'tap'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { isMounted, waitFor } from '../helpers/daemon'

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

t.test('a test process killed with SIGKILL: its reaper ends its daemon, unmounts it and removes its folder', async t => {
  const helpers = path.join(__dirname, '..', 'helpers', 'daemon.js')
  // A test process of its own: starts a daemon through the harness, says where, then blocks.
  const script = `const { startDaemon } = require(${JSON.stringify(helpers)});
    startDaemon({ teardown () {} }).then(d => { console.log(JSON.stringify({ pid: d.pid, dir: d.dir, mount: d.mount })); require('node:child_process').spawnSync('sleep', ['60']) })`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  t.ok(await waitFor(() => out.includes('\n'), 30_000), 'the test process started a daemon')
  const daemon = JSON.parse(out) as { pid: number, dir: string, mount: string }
  t.ok(alive(daemon.pid) && isMounted(daemon.mount), 'which runs, mounted')
  child.kill('SIGKILL')
  t.ok(await waitFor(() => !alive(daemon.pid) && !isMounted(daemon.mount) && !fs.existsSync(daemon.dir), 15_000),
    'once the test process is gone: no daemon, no mount, no folder')
})
