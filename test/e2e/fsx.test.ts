// A seeded fsx-style run through the real mount (./fsx.py): 10,000 random writes, reads,
// truncates, punches, zero ranges, allocations and range copies within an image and between two,
// each checked against a reference file on the local filesystem, snapshots taken along the way,
// then requests at and past the limits. The daemon must not crash and no byte may differ.
// SHEEP_FSX_SEED replays a run; the seed is in the test's log either way.

import t from 'tap'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { ROOT, startDaemon, tempDir } from '../helpers/daemon'

const OPS = 10_000
const OBJECT_SIZE = 256 * 1024

t.test(`fsx: ${OPS} seeded random operations match a reference file`, { skip: process.env.SHEEP_FUSE === 'libfuse2' && 'fallocate and copy_file_range reach the kernel session only' }, async t => {
  const seed = Number(process.env.SHEEP_FSX_SEED ?? Math.floor(Math.random() * 2 ** 31))
  t.comment(`fsx seed ${seed} (replay with SHEEP_FSX_SEED=${seed})`)
  // Small objects: more object and sub-block boundaries in files of a few MiB.
  const d = await startDaemon(t, ['--object-size', String(OBJECT_SIZE)])
  const ref = tempDir(t, 'sheep-fsx-ref-')
  const started = Date.now()
  const p = spawn('python3', [path.join(ROOT, 'test', 'e2e', 'fsx.py'), '--mount', d.mount, '--ref', ref, '--seed', String(seed),
    '--ops', String(OPS), '--object-size', String(OBJECT_SIZE)], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  p.stdout.on('data', (b: Buffer) => { out += b.toString() })
  p.stderr.on('data', (b: Buffer) => { out += b.toString() })
  const code = await new Promise(resolve => p.once('exit', resolve))
  t.comment(out.trim())
  t.comment(`fsx took ${Date.now() - started} ms`)
  t.equal(code, 0, `fsx passed (seed ${seed})`)
  t.equal(d.proc?.exitCode, null, 'the daemon is still running')
  t.equal(d.sheep(['status', '--mount', d.mount]).code, 0, 'and answers')
  t.notMatch(d.log, /unexpected error/, 'no request hit a bug (its stack would be logged)')
})
