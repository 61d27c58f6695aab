// Everything the benchmark starts is registered here and torn down in this order, whether the run
// ends well, fails or is interrupted: tool processes (fio, qemu-img) first so that nothing holds
// the mounts, then the filesystem daemons, then any mount still there (fusermount -u, then -uz),
// then the temporary folders. Only processes this process spawned are ever signalled, by PID.

import { type ChildProcess, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

export type ChildKind = 'tool' | 'daemon'

const children = new Map<ChildProcess, ChildKind>()
const mounts: string[] = []
const dirs: string[] = []
let closing = false
let running: Promise<string[]> | null = null

export function exited (child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null
}

/** Whether cleanup has begun; nothing new may be started after that. */
export function isClosing (): boolean {
  return closing
}

/** Registers a child this process spawned. Once cleanup has begun, the child is killed at once. */
export function trackChild (child: ChildProcess, kind: ChildKind): void {
  if (child.pid === undefined) return
  children.set(child, kind)
  child.once('exit', () => children.delete(child))
  if (closing) child.kill('SIGKILL')
}

export function trackMount (dir: string): void {
  const abs = path.resolve(dir)
  if (!mounts.includes(abs)) mounts.push(abs)
}

export function trackDir (dir: string): void {
  const abs = path.resolve(dir)
  if (!dirs.includes(abs)) dirs.push(abs)
}

function within (p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise(resolve => {
    const timer = setTimeout(() => resolve(false), ms)
    p.then(() => { clearTimeout(timer); resolve(true) }, () => { clearTimeout(timer); resolve(true) })
  })
}

/** SIGTERM, then SIGKILL if the child has not exited after graceMs. */
export async function stopChild (child: ChildProcess, graceMs: number): Promise<void> {
  if (exited(child) || child.pid === undefined) return
  const gone = new Promise<void>(resolve => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  if (await within(gone, graceMs)) return
  child.kill('SIGKILL')
  await within(gone, 5000)
}

function unescapeMountPath (p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

function mountPoints (): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map(line => line.split(' ')[4])
    .filter((m): m is string => m !== undefined && m !== '')
    .map(unescapeMountPath)
}

export function isMounted (dir: string): boolean {
  const abs = path.resolve(dir)
  return mountPoints().includes(abs)
}

function mountsUnder (dir: string): string[] {
  const prefix = path.resolve(dir) + '/'
  return mountPoints().filter(m => m.startsWith(prefix))
}

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** fusermount -u (a few tries, the daemon may still be letting go), then -uz. True when unmounted. */
export async function unmount (dir: string): Promise<boolean> {
  for (let i = 0; i < 3; i++) {
    if (!isMounted(dir)) return true
    spawnSync('fusermount', ['-u', dir], { stdio: 'ignore', timeout: 10_000 })
    if (!isMounted(dir)) return true
    await sleep(300)
  }
  spawnSync('fusermount', ['-uz', dir], { stdio: 'ignore', timeout: 10_000 })
  return !isMounted(dir)
}

function removeDir (dir: string, warnings: string[]): void {
  const still = mountsUnder(dir)
  if (still.length > 0) {
    warnings.push(`not removing ${dir}: still mounted there: ${still.join(', ')}`)
    return
  }
  try {
    fs.rmSync(dir, { recursive: true, force: true })
  } catch (err) {
    warnings.push(`cannot remove ${dir}: ${(err as Error).message}`)
  }
}

/** Stops and removes everything registered; safe to call again and concurrently. Returns warnings. */
export function cleanupAll (): Promise<string[]> {
  closing = true
  if (running !== null) return running
  running = (async () => {
    const warnings: string[] = []
    const of = (kind: ChildKind): ChildProcess[] => [...children].filter(([, k]) => k === kind).map(([c]) => c)
    await Promise.all(of('tool').map(c => stopChild(c, 3000)))
    await Promise.all(of('daemon').map(c => stopChild(c, 20_000)))
    for (const dir of [...mounts].reverse()) {
      if (!await unmount(dir)) warnings.push(`cannot unmount ${dir}`)
    }
    for (const c of children.keys()) if (!exited(c)) warnings.push(`process ${c.pid} did not exit`)
    for (const dir of [...dirs].reverse()) removeDir(dir, warnings)
    return warnings
  })().finally(() => { running = null })
  return running
}

/** The last resort, for an exit handler or a second Ctrl-C: SIGKILL, lazy unmount, remove. */
export function cleanupSync (): void {
  closing = true
  for (const c of children.keys()) {
    if (!exited(c) && c.pid !== undefined) {
      try { process.kill(c.pid, 'SIGKILL') } catch {}
    }
  }
  for (const dir of [...mounts].reverse()) {
    if (isMounted(dir)) spawnSync('fusermount', ['-uz', dir], { stdio: 'ignore', timeout: 10_000 })
  }
  const warnings: string[] = []
  for (const dir of [...dirs].reverse()) {
    if (fs.existsSync(dir)) removeDir(dir, warnings)
  }
  for (const w of warnings) process.stderr.write(`bench: ${w}\n`)
}
