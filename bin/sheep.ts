// The `sheep` command: runs the daemon and talks to a running one over its control socket.

import path from 'node:path'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { SheepError } from '../src/errors'
import { formatSize, parseSize } from '../src/units'
import { call } from '../src/control/client'
import { controlSocketPath, sheepMountContaining } from '../src/control/paths'
import type { NodeStatus } from '../src/control/messages'
import type { ImageInfo } from '../src/cow/image-store'
import { VERSION } from '../src/version'
import { table, progressBar } from './output'

const DEFAULT_MOUNT = '/sheep'
const DEFAULT_STORE = '/var/lib/sheep'

const USAGE = `usage: sheep <command> [options]

daemon
  start [--store DIR] [--mount DIR] [--detach] [--copies N] [--object-size SIZE] [--io-timeout SECONDS]
                              run the daemon (foreground unless --detach); defaults ${DEFAULT_STORE}, ${DEFAULT_MOUNT}
  stop [--mount DIR] [--force]  unmount and stop; refuses while images are open unless --force
  status [--mount DIR] [--json]

images (NAME is a name, or a path such as ${DEFAULT_MOUNT}/vm1.img)
  image create NAME SIZE [--copies N] [--object-size SIZE]
  image list [--json]
  image resize NAME SIZE      SIZE may be +SIZE to grow by that much
  image rename NAME NEWNAME
  image delete NAME

Sizes take K, M, G, T suffixes (powers of 1024). Commands find the daemon through --mount
(default ${DEFAULT_MOUNT}) or through a path inside a mount.`

type Values = Record<string, string | boolean | undefined>

function fail (message: string, status = 1): never {
  process.stderr.write(`sheep: ${message}\n`)
  process.exit(status)
}

function usageError (message: string): never {
  fail(`${message}\n${USAGE}`, 2)
}

function size (text: string | undefined, what: string): number {
  if (text === undefined) usageError(`missing ${what}`)
  const n = parseSize(text)
  if (n === null) usageError(`bad ${what} ${JSON.stringify(text)} (examples: 20G, 512M, 1T)`)
  return n
}

function count (text: string | boolean | undefined, what: string): number | undefined {
  if (text === undefined) return undefined
  const n = Number(text)
  if (typeof text !== 'string' || !/^\d+$/.test(text) || !Number.isSafeInteger(n)) usageError(`bad ${what} ${JSON.stringify(text)}`)
  return n
}

/** The mount a command talks to, and the image name when NAME is given as a path. */
function target (values: Values, name?: string): { mount: string, name?: string } {
  if (name !== undefined && name.includes('/')) {
    const abs = path.resolve(name)
    const mount = sheepMountContaining(path.dirname(abs))
    if (mount === null) fail(`${name} is not inside a sheep mount`)
    const rel = path.relative(mount, abs)
    if (rel === '' || rel.includes('/')) fail(`${name} does not name an image (images sit directly in ${mount})`)
    return { mount, name: rel }
  }
  const given = typeof values.mount === 'string' ? values.mount : DEFAULT_MOUNT
  const mount = sheepMountContaining(given) ?? path.resolve(given)
  return { mount, name }
}

async function request<K extends Parameters<typeof call>[1]> (mount: string, op: K, args: Parameters<typeof call<K>>[2],
  onProgress?: (done: number, total: number) => void): ReturnType<typeof call<K>> {
  try {
    return await call(controlSocketPath(mount), op, args, onProgress)
  } catch (err) {
    if (err instanceof SheepError && err.code === 'ENOENT' && /no sheep daemon/.test(err.message)) {
      fail(`no sheep daemon is running for ${mount} (start one with: sheep start --mount ${mount})`)
    }
    throw err
  }
}

function imageRow (i: ImageInfo): string[] {
  return [i.name, formatSize(i.size), formatSize(i.allocated), String(i.copies), formatSize(i.objectSize),
    new Date(i.ctime).toISOString().replace('T', ' ').slice(0, 19), i.openHandles > 0 ? 'open' : '']
}
const IMAGE_HEADER = ['NAME', 'SIZE', 'USED', 'COPIES', 'OBJECT', 'CREATED', 'STATE']

async function main (argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(USAGE + '\n')
    return
  }
  if (command === '--version' || command === 'version') {
    process.stdout.write(VERSION + '\n')
    return
  }
  const parse = (options: NonNullable<ParseArgsConfig['options']>, maxPositionals: number): { values: Values, positionals: string[] } => {
    let parsed
    try {
      parsed = parseArgs({ args: rest, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true })
    } catch (err) {
      usageError((err as Error).message)
    }
    if ((parsed.values as Values).help) { process.stdout.write(USAGE + '\n'); process.exit(0) }
    if (parsed.positionals.length > maxPositionals) usageError(`unexpected argument ${JSON.stringify(parsed.positionals[maxPositionals])}`)
    return { values: parsed.values as Values, positionals: parsed.positionals }
  }
  const mountOpt = { mount: { type: 'string' as const } }
  const json = { json: { type: 'boolean' as const } }

  switch (command) {
    case 'start': {
      const { values } = parse({
        ...mountOpt,
        store: { type: 'string' },
        detach: { type: 'boolean' },
        copies: { type: 'string' },
        'object-size': { type: 'string' },
        'io-timeout': { type: 'string' }
      }, 0)
      const { startCommand } = await import('./start')
      await startCommand({
        store: typeof values.store === 'string' ? values.store : DEFAULT_STORE,
        mount: typeof values.mount === 'string' ? values.mount : DEFAULT_MOUNT,
        detach: values.detach === true,
        copies: count(values.copies, '--copies'),
        objectSize: values['object-size'] === undefined ? undefined : size(values['object-size'] as string, '--object-size'),
        ioTimeout: count(values['io-timeout'], '--io-timeout'),
        argv: rest
      })
      return
    }
    case 'stop': {
      const { values, positionals } = parse({ ...mountOpt, force: { type: 'boolean' } }, 1)
      const { mount } = target({ ...values, mount: positionals[0] ?? values.mount })
      const status = await request(mount, 'status', {})
      await request(mount, 'stop', { force: values.force === true })
      await waitForExit(status.pid)
      process.stdout.write(`stopped sheep on ${mount}\n`)
      return
    }
    case 'status': {
      const { values, positionals } = parse({ ...mountOpt, ...json }, 1)
      const { mount } = target({ ...values, mount: positionals[0] ?? values.mount })
      const s = await request(mount, 'status', {})
      if (values.json) { process.stdout.write(JSON.stringify(s, null, 2) + '\n'); return }
      process.stdout.write(formatStatus(s))
      return
    }
    case 'image': {
      const [sub, ...subRest] = rest
      rest.splice(0, rest.length, ...subRest)
      switch (sub) {
        case 'create': {
          const { values, positionals } = parse({ ...mountOpt, ...json, copies: { type: 'string' }, 'object-size': { type: 'string' } }, 2)
          const t = target(values, positionals[0])
          if (t.name === undefined) usageError('missing image name')
          const info = await request(t.mount, 'image.create', {
            name: t.name,
            size: size(positionals[1], 'size'),
            copies: count(values.copies, '--copies'),
            objectSize: values['object-size'] === undefined ? undefined : size(values['object-size'] as string, '--object-size')
          })
          if (values.json) process.stdout.write(JSON.stringify(info, null, 2) + '\n')
          else process.stdout.write(`created ${info.name}: ${formatSize(info.size)}, ${info.copies} copies, ${formatSize(info.objectSize)} objects\n`)
          return
        }
        case 'list': {
          const { values } = parse({ ...mountOpt, ...json }, 0)
          const list = await request(target(values).mount, 'image.list', {})
          if (values.json) { process.stdout.write(JSON.stringify(list, null, 2) + '\n'); return }
          process.stdout.write(table(IMAGE_HEADER, list.map(imageRow)))
          return
        }
        case 'resize': {
          const { values, positionals } = parse({ ...mountOpt, ...json }, 2)
          const t = target(values, positionals[0])
          if (t.name === undefined) usageError('missing image name')
          const spec = positionals[1]
          let newSize: number
          if (spec?.startsWith('+')) {
            const list = await request(t.mount, 'image.list', {})
            const current = list.find(i => i.name === t.name)
            if (current === undefined) fail(`image ${JSON.stringify(t.name)} does not exist`)
            newSize = current.size + size(spec.slice(1), 'size')
          } else {
            newSize = size(spec, 'size')
          }
          const info = await request(t.mount, 'image.resize', { name: t.name, size: newSize })
          if (values.json) process.stdout.write(JSON.stringify(info, null, 2) + '\n')
          else process.stdout.write(`resized ${info.name} to ${formatSize(info.size)}\n`)
          return
        }
        case 'rename': {
          const { values, positionals } = parse({ ...mountOpt }, 2)
          const t = target(values, positionals[0])
          if (t.name === undefined || positionals[1] === undefined) usageError('usage: sheep image rename NAME NEWNAME')
          let to = positionals[1]
          if (to.includes('/')) {
            const dest = target(values, to)
            if (dest.mount !== t.mount || dest.name === undefined) fail(`${to} is not in the same sheep mount as ${positionals[0]}`)
            to = dest.name
          }
          const info = await request(t.mount, 'image.rename', { from: t.name, to })
          process.stdout.write(`renamed ${t.name} to ${info.name}\n`)
          return
        }
        case 'delete': {
          const { values, positionals } = parse({ ...mountOpt }, 1)
          const t = target(values, positionals[0])
          if (t.name === undefined) usageError('missing image name')
          const bar = progressBar(`deleting ${t.name}`)
          await request(t.mount, 'image.delete', { name: t.name }, bar.update)
          bar.done()
          process.stdout.write(`deleted ${t.name}\n`)
          return
        }
        default:
          usageError(sub === undefined ? 'missing image command' : `unknown image command ${JSON.stringify(sub)}`)
      }
    }
    // eslint-disable-next-line no-fallthrough
    default:
      usageError(`unknown command ${JSON.stringify(command)}`)
  }
}

function formatStatus (s: NodeStatus): string {
  const pct = s.capacity > 0 ? ` (${((1 - s.free / s.capacity) * 100).toFixed(1)}% of the disk used)` : ''
  return [
    `sheep ${s.version}, pid ${s.pid}, up ${Math.round((Date.now() - s.startedAt) / 1000)} s`,
    `mount:    ${s.mount}`,
    `store:    ${s.store}`,
    `images:   ${s.images} (${s.openHandles} open handles), ${formatSize(s.provisioned)} provisioned, ${formatSize(s.allocated)} allocated`,
    `objects:  ${s.objects}, ${formatSize(s.storeBytes)} on disk`,
    `capacity: ${formatSize(s.capacity)}, ${formatSize(s.free)} free${pct}`,
    ...s.problems.map(p => `PROBLEM:  ${p}`),
    ''
  ].join('\n')
}

async function waitForExit (pid: number): Promise<void> {
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0)
    } catch {
      return
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  fail(`the daemon (pid ${pid}) did not exit within 60 s`)
}

main(process.argv.slice(2)).catch(err => {
  if (err instanceof SheepError) fail(err.message)
  fail(`unexpected error: ${(err as Error)?.stack ?? String(err)}`)
})

