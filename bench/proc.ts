// Running the measuring tools (fio, qemu-img) as registered children with a time limit.

import { spawn, spawnSync } from 'node:child_process'
import * as cleanup from './cleanup'

export interface ToolResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** Wall-clock time from spawn to exit. */
  seconds: number
}

export interface ToolOptions {
  timeoutMs: number
  env?: NodeJS.ProcessEnv
  /** Called once the child has been spawned. */
  onSpawn?: () => void
}

/**
 * Runs a command to its end and collects its output. The child gets a process group of its own
 * so that a Ctrl-C in the terminal reaches only the benchmark, which then stops the tools before
 * the filesystems they use.
 */
export function runTool (cmd: string, args: string[], opts: ToolOptions): Promise<ToolResult> {
  if (cleanup.isClosing()) return Promise.reject(new Error('interrupted'))
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint()
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: opts.env ?? process.env })
    cleanup.trackChild(child, 'tool')
    opts.onSpawn?.()
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      void cleanup.stopChild(child, 3000)
    }, opts.timeoutMs)
    child.on('error', err => {
      clearTimeout(timer)
      reject(new Error(`cannot run ${cmd}: ${err.message}`))
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const seconds = Number(process.hrtime.bigint() - started) / 1e9
      if (timedOut) return reject(new Error(`${cmd} did not finish within ${Math.round(opts.timeoutMs / 1000)} s`))
      if (cleanup.isClosing()) return reject(new Error('interrupted'))
      resolve({ code, signal, stdout, stderr, seconds })
    })
  })
}

/** The first line a command prints for --version, or null when it cannot be run. */
export function versionOf (cmd: string, args = ['--version']): string | null {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 })
  if (r.error !== undefined || r.status !== 0) return null
  return (r.stdout || r.stderr).split('\n')[0]?.trim() ?? ''
}

/** Flushes the dirty pages of the filesystem holding `dir` (syncfs), so one job's writeback does not land in the next. */
export function syncFs (dir: string): void {
  spawnSync('sync', ['-f', dir], { stdio: 'ignore', timeout: 120_000 })
}
