// The rounds of the crash tortures (test/e2e/crash-*.test.ts): a guest (crash-writer) writes
// into an image until the daemon under it is killed with SIGKILL, then, after the restart, the
// sectors are checked against the model of what was acknowledged.

import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type { Daemon } from './daemon'
import { type CrashModel, SECTOR } from './crash-model'
import type { Rng } from './random'

const WRITER = path.join(__dirname, 'crash-writer.js')

/** The seed of a randomised test: SHEEP_TEST_SEED when given (a replay), else a new one; said in the test's output. */
export function seedFrom (t: { comment: (...args: unknown[]) => void }, name: string): number {
  const given = Number(process.env.SHEEP_TEST_SEED ?? '')
  const seed = Number.isInteger(given) && given > 0 ? given : crypto.randomInt(1, 2 ** 31)
  t.comment(`${name}: seed ${seed} (replay with SHEEP_TEST_SEED=${seed})`)
  return seed
}

/** How many crash rounds a torture runs: its CI default, or SHEEP_CRASH_ROUNDS for a longer run. */
export function rounds (ciDefault: number): number {
  const given = Number(process.env.SHEEP_CRASH_ROUNDS ?? '')
  return Number.isInteger(given) && given > 0 ? given : ciDefault
}

/** Runs crash-writer on `file` and kills `victim` with SIGKILL once the writer has made `after` writes. */
export async function crashRound (victim: Daemon, file: string, model: CrashModel, seed: number, after: number): Promise<void> {
  const proc = spawn(process.execPath, [WRITER, file, String(seed), String(model.nextSeq), String(model.sectors)], { stdio: ['ignore', 'pipe', 'pipe'] })
  let pending = ''
  let said = ''
  let writes = 0
  let killing: Promise<void> | null = null
  proc.stdout.setEncoding('utf8')
  proc.stderr.on('data', (c: Buffer) => { said += c.toString() })
  proc.stdout.on('data', (chunk: string) => {
    pending += chunk
    const lines = pending.split('\n')
    pending = lines.pop() ?? ''
    for (const line of lines) {
      model.take(line)
      if (line.startsWith('W ') && ++writes >= after && killing === null) killing = victim.kill('SIGKILL')
      if (line.startsWith('E ')) said += line
    }
  })
  const code = await new Promise<number | null>(resolve => proc.on('close', resolve))
  if (killing === null) throw new Error(`the writer stopped after ${writes} writes, before the kill (exit ${code}): ${said}`)
  await killing
}

/**
 * Reads the sectors the round wrote and `sample` others ever written through `file`, checks them
 * against the model and settles them; returns what was wrong (at most a few lines).
 */
export function checkRound (file: string, model: CrashModel, rng: Rng, sample: number): string[] {
  const wrong: string[] = []
  const ever = model.everWritten()
  const sectors = new Set([...model.touched(), ...Array.from({ length: Math.min(sample, ever.length) }, () => ever[rng.int(0, ever.length - 1)] as number)])
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(SECTOR)
    for (const s of sectors) {
      fs.readSync(fd, buf, 0, SECTOR, s * SECTOR)
      const w = model.check(s, buf)
      if (w !== null) wrong.push(w)
      if (wrong.length >= 5) break
    }
  } finally {
    fs.closeSync(fd)
  }
  model.endRound()
  return wrong
}

/** Reads `length` bytes at `offset` of a file through a mount. */
export function readAt (file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    let done = 0
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, offset + done)
      if (n === 0) break
      done += n
    }
    return buf
  } finally {
    fs.closeSync(fd)
  }
}
