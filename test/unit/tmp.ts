// Shared by the unit tests: real temporary directories, removed when the test ends.

import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { SheepError } from '../../src/errors'

interface Teardownable { teardown (fn: () => unknown): void }

export function tmpDir (t: Teardownable, prefix = 'sheep-unit-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Runs fn and returns the SheepError it throws (or rejects with); fails if it does not throw one. */
export async function sheepError (fn: () => unknown): Promise<SheepError> {
  try {
    await fn()
  } catch (err) {
    if (err instanceof SheepError) return err
    throw new Error(`expected a SheepError, got ${String(err)}`)
  }
  throw new Error('expected a SheepError, nothing was thrown')
}

/** Drains pending promise reactions deterministically (no timers). */
export async function settle (rounds = 50): Promise<void> {
  for (let i = 0; i < rounds; i++) await Promise.resolve()
}
