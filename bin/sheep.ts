// The `sheep` command: runs the daemon and talks to a running one over its control socket.

import path from 'node:path'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { SheepError } from '../src/errors'
import { formatSize, parseSize } from '../src/units'
import { call } from '../src/control/client'
import { controlSocketPath, sheepMountContaining } from '../src/control/paths'
import type { ImageListEntry, NodeStatus } from '../src/control/messages'
import type { CheckReport } from '../src/swarm/check'
import type { TreeNode } from '../src/cow/image-store'
import { VERSION } from '../src/version'
import { FRONTENDS, type Frontend } from '../src/fuse/mount'
import { WIRE_MODES, type WireMode } from '../src/swarm/frames'
import { table, progressBar } from './output'
import { parseMode, resolveId } from './owners'

const DEFAULT_MOUNT = '/sheep'
const DEFAULT_STORE = '/var/lib/sheep'
/** The background scrub: gentle enough to leave a disk to its guests, a pass a day at most. */
const DEFAULT_SCRUB_RATE = 4 * 2 ** 20
const DEFAULT_SCRUB_INTERVAL = 86_400

const USAGE = `usage: sheep <command> [options]

daemon
  start [--store DIR] [--mount DIR] [--detach] [--copies N] [--object-size SIZE] [--io-timeout SECONDS]
        [--fuse kernel|libfuse2] [--root-mode OCTAL] [--scrub-rate SIZE] [--scrub-interval SECONDS]
                              run the daemon (foreground unless --detach); defaults ${DEFAULT_STORE}, ${DEFAULT_MOUNT};
                              FUSE through the kernel protocol where it works (root), else libfuse 2
                              (default from $SHEEP_FUSE); --root-mode: the mount root's (0755: only root
                              makes images; 1777: every user may, each deleting only its own);
                              the background scrub reads every object here against its checksums at
                              --scrub-rate per second (default 4M; 0: off), a pass every
                              --scrub-interval seconds (default 86400)
  stop [--mount DIR] [--force]  unmount and stop; refuses while images are open unless --force
  status [--mount DIR] [--json]

cluster (without these options a node keeps everything in its own store)
  start ... --bootstrap-port PORT   found a cluster (or rejoin one) and run the DHT bootstrap node others need offline
  start ... --admission manual      when founding: joiners wait as candidates until 'node admit' (default auto)
  start ... --join TOKEN            join the cluster a token names (a member that was down while the
                                    secret was rotated comes back with the new token)
  start ... --bootstrap HOST:PORT   a DHT bootstrap node to use (repeatable)
  start ... [--host ADDR] [--port PORT] [--zone ZONE]   address to bind and advertise (127.0.0.1), object port, failure zone
  start ... --no-direct             object traffic over Hyperswarm only (slower; for hosts TCP cannot reach)
  start ... --wire MODE             encrypted (default) or plain-authenticated: the direct path's data is not
                                    encrypted, only authenticated (a trusted storage network), with members that
                                    ask for it too
  start ... --min-copies N          replicas that must take a write when others are down or their disks fail it (default: a majority of its copies)
  start ... --recovery-rate SIZE    bytes per second that copies to a node catching up keep to (default: no bound);
                                    an I/O to an object not copied yet copies it at once
  start ... --out-after SECONDS     a member gone this long is out: its objects are copied to others (default 600);
                                    before that it is down: writes go on without it, and it catches up when back
  cluster token                     one line: the cluster secret and where to bootstrap (keep it secret)
  cluster rotate-secret             a new secret for every member; prints the new token (old tokens stop working)
  cluster force-start               after a restart, serve copies that were behind newer ones which are not coming
                                    back, as they are; prints them (what was written to them since is lost)
  node list [--json]                members of the view (id, address, zone, weight, capacity, used, state) and candidates
  node admit ID                     make a candidate a member (clusters founded with --admission manual)
  node remove ID                    take a node out for good: its key is refused from then on

images (NAME is a name, or a path such as ${DEFAULT_MOUNT}/vm1.img)
  image create NAME SIZE [--copies N] [--object-size SIZE] [--owner USER] [--group GROUP] [--mode OCTAL]
                              the file's owner and group (names or numbers) and mode: default root, root, 0600
  image list [--json]
  image resize NAME SIZE      SIZE may be +SIZE to grow by that much
  image rename NAME NEWNAME
  image delete NAME            also deletes its snapshots (clones keep what they need)
  image tree [--json]          images, snapshots and clones as a tree
  image flatten NAME           copy what a clone shares, so it no longer needs its snapshot

checks
  check [NAME] [--repair] [--json]
                               read every copy of every object (of NAME and its snapshots) and check
                               it against its checksums; on a cluster, compare the copies: missing,
                               damaged, behind or divergent ones are listed per image; --repair replaces
                               them with the copy chosen (the newest whole one). Exit status 1 while
                               problems remain

snapshots (instant, whatever the size; read-only files in ${DEFAULT_MOUNT}/.snapshots/NAME/TAG)
  snapshot create NAME TAG
  snapshot list NAME [--json]
  snapshot delete NAME TAG
  snapshot rollback NAME TAG   NAME must not be open for writing
  clone NAME@TAG NEWNAME       an instant writable clone of a snapshot
  clone NAME NEWNAME           the same, of a snapshot taken for it now

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

function id (db: 'passwd' | 'group', text: string | boolean | undefined, what: string): number | undefined {
  if (typeof text !== 'string') return undefined
  const n = resolveId(db, text)
  if (typeof n === 'string') usageError(`bad ${what}: ${n}`)
  return n
}

function mode (text: string | boolean | undefined, what: string): number | undefined {
  if (typeof text !== 'string') return undefined
  const n = parseMode(text)
  if (n === null) usageError(`bad ${what} ${JSON.stringify(text)}: an octal mode such as 0600 or 0640`)
  return n
}

function portNumber (text: string | boolean | string[] | undefined, what: string): number | undefined {
  const n = count(typeof text === 'string' || text === undefined ? text : String(text), what)
  if (n !== undefined && n > 65535) usageError(`bad ${what} ${n}: a port is 0 to 65535`)
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

const when = (ms: number): string => new Date(ms).toISOString().replace('T', ' ').slice(0, 19)

function imageRow (i: ImageListEntry): string[] {
  const recovering = i.recovering === undefined ? [] : [`recovering ${i.recovering.objects} object${i.recovering.objects === 1 ? '' : 's'}${i.recovering.etaSeconds === null ? '' : ` (~${i.recovering.etaSeconds} s)`}`]
  return [i.name, formatSize(i.size), formatSize(i.allocated), String(i.copies), formatSize(i.objectSize),
    when(i.ctime), String(i.snapshots), i.parent, [...i.openHandles > 0 ? ['open'] : [], ...recovering].join(', ')]
}
const IMAGE_HEADER = ['NAME', 'SIZE', 'USED', 'COPIES', 'OBJECT', 'CREATED', 'SNAPSHOTS', 'PARENT', 'STATE']

/** NAME@TAG, a path to an image (with @TAG), or a path under .snapshots; the tag may be absent. */
function snapshotRef (values: Values, text: string | undefined): { mount: string, name: string, tag?: string } {
  if (text === undefined) usageError('missing image name')
  const snapDir = /^(.*)\/\.snapshots\/([^/]+)\/([^/]+)$/.exec(path.resolve(text))
  if (text.includes('/') && snapDir) {
    const mount = sheepMountContaining(snapDir[1] as string)
    if (mount === null || mount !== snapDir[1]) fail(`${text} is not inside a sheep mount`)
    return { mount, name: snapDir[2] as string, tag: snapDir[3] as string }
  }
  const at = text.indexOf('@')
  const t = target(values, at < 0 ? text : text.slice(0, at))
  if (t.name === undefined) usageError('missing image name')
  return { mount: t.mount, name: t.name, tag: at < 0 ? undefined : text.slice(at + 1) }
}

function formatTree (nodes: TreeNode[]): string {
  const children = new Map<number, TreeNode[]>()
  const byVid = new Map(nodes.map(n => [n.vid, n]))
  for (const n of nodes) {
    const parent = byVid.has(n.parent) ? n.parent : 0
    children.set(parent, [...(children.get(parent) ?? []), n])
  }
  const lines: string[] = []
  const walk = (n: TreeNode, prefix: string, last: boolean, root: boolean): void => {
    const label = n.kind === 'image' ? n.name : `${n.name}@${n.tag}${n.kind === 'deleted snapshot' ? ' (deleted, kept for clones)' : ''}`
    lines.push(`${root ? '' : prefix + (last ? '└── ' : '├── ')}${label}  [${formatSize(n.size)}, ${formatSize(n.allocated)} own, ${when(n.time)}]`)
    const kids = children.get(n.vid) ?? []
    kids.forEach((k, i) => walk(k, root ? '' : prefix + (last ? '    ' : '│   '), i === kids.length - 1, false))
  }
  for (const root of children.get(0) ?? []) walk(root, '', true, true)
  return lines.join('\n') + (lines.length > 0 ? '\n' : '')
}

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
        'io-timeout': { type: 'string' },
        fuse: { type: 'string' },
        'bootstrap-port': { type: 'string' },
        bootstrap: { type: 'string', multiple: true },
        join: { type: 'string' },
        zone: { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        'no-direct': { type: 'boolean' },
        wire: { type: 'string' },
        admission: { type: 'string' },
        'min-copies': { type: 'string' },
        'recovery-rate': { type: 'string' },
        'out-after': { type: 'string' },
        'root-mode': { type: 'string' },
        'scrub-rate': { type: 'string' },
        'scrub-interval': { type: 'string' }
      }, 0)
      const { startCommand } = await import('./start')
      const { parseAddress } = await import('../src/swarm/identity')
      const bootstrap = (values.bootstrap as string[] | undefined ?? []).map(a => {
        try { return parseAddress(a) } catch (err) { return usageError(`--bootstrap: ${(err as Error).message}`) }
      })
      const fuse = typeof values.fuse === 'string' ? values.fuse : process.env.SHEEP_FUSE ?? 'auto'
      if (fuse !== 'auto' && !FRONTENDS.includes(fuse as Frontend)) usageError(`bad --fuse ${JSON.stringify(fuse)}: kernel or libfuse2`)
      const clustered = values['bootstrap-port'] !== undefined || bootstrap.length > 0 || values.join !== undefined
      if (!clustered && (values.zone !== undefined || values.host !== undefined || values.port !== undefined || values['no-direct'] !== undefined)) {
        usageError('--zone, --host, --port and --no-direct are for a cluster: add --bootstrap-port, --bootstrap or --join')
      }
      if (values['no-direct'] === true && values.port !== undefined) usageError('--port is the direct path\'s port: not with --no-direct')
      const wire = values.wire ?? 'encrypted'
      if (!WIRE_MODES.includes(wire as WireMode)) usageError(`bad --wire ${JSON.stringify(wire)}: ${WIRE_MODES.join(' or ')}`)
      if (values.wire !== undefined && (!clustered || values['no-direct'] === true)) usageError('--wire is for the direct path of a cluster: add --bootstrap-port, --bootstrap or --join, without --no-direct')
      const minCopies = count(values['min-copies'], '--min-copies')
      if (minCopies === 0) usageError('bad --min-copies 0: at least 1')
      if (minCopies !== undefined && !clustered) usageError('--min-copies is for a cluster: add --bootstrap-port, --bootstrap or --join')
      if (values['recovery-rate'] !== undefined && !clustered) usageError('--recovery-rate is for a cluster: add --bootstrap-port, --bootstrap or --join')
      const outAfter = count(values['out-after'], '--out-after')
      if (outAfter !== undefined && !clustered) usageError('--out-after is for a cluster: add --bootstrap-port, --bootstrap or --join')
      // 0 would start each pass as the last ends: an empty store's scrub would spin.
      if (count(values['scrub-interval'], '--scrub-interval') === 0) usageError('bad --scrub-interval 0: at least 1 (second); --scrub-rate 0 turns the scrub off')
      const admission = values.admission ?? 'auto'
      if (admission !== 'auto' && admission !== 'manual') usageError(`bad --admission ${JSON.stringify(admission)}: auto or manual`)
      if (values.admission !== undefined && values['bootstrap-port'] === undefined) usageError('--admission is for founding a cluster: add --bootstrap-port')
      await startCommand({
        store: typeof values.store === 'string' ? values.store : DEFAULT_STORE,
        mount: typeof values.mount === 'string' ? values.mount : DEFAULT_MOUNT,
        detach: values.detach === true,
        copies: count(values.copies, '--copies'),
        objectSize: values['object-size'] === undefined ? undefined : size(values['object-size'] as string, '--object-size'),
        ioTimeout: count(values['io-timeout'], '--io-timeout'),
        fuse: fuse as Frontend | 'auto',
        rootMode: mode(values['root-mode'], '--root-mode'),
        scrub: {
          rate: values['scrub-rate'] === undefined ? DEFAULT_SCRUB_RATE : size(values['scrub-rate'] as string, '--scrub-rate'),
          interval: count(values['scrub-interval'], '--scrub-interval') ?? DEFAULT_SCRUB_INTERVAL
        },
        cluster: clustered
          ? {
              host: typeof values.host === 'string' ? values.host : '127.0.0.1',
              tcpPort: values['no-direct'] === true ? null : portNumber(values.port, '--port') ?? 0,
              wire: wire as WireMode,
              bootstrapPort: portNumber(values['bootstrap-port'], '--bootstrap-port') ?? null,
              bootstrap,
              join: typeof values.join === 'string' ? values.join : null,
              zone: typeof values.zone === 'string' ? values.zone : '',
              admission,
              minCopies: minCopies ?? 0,
              recoveryRate: values['recovery-rate'] === undefined ? 0 : size(values['recovery-rate'] as string, '--recovery-rate'),
              ...(outAfter === undefined ? {} : { outAfter })
            }
          : undefined,
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
          const { values, positionals } = parse({
            ...mountOpt,
            ...json,
            copies: { type: 'string' },
            'object-size': { type: 'string' },
            owner: { type: 'string' },
            group: { type: 'string' },
            mode: { type: 'string' }
          }, 2)
          const t = target(values, positionals[0])
          if (t.name === undefined) usageError('missing image name')
          const info = await request(t.mount, 'image.create', {
            name: t.name,
            size: size(positionals[1], 'size'),
            copies: count(values.copies, '--copies'),
            objectSize: values['object-size'] === undefined ? undefined : size(values['object-size'] as string, '--object-size'),
            uid: id('passwd', values.owner, '--owner'),
            gid: id('group', values.group, '--group'),
            mode: mode(values.mode, '--mode')
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
        case 'tree': {
          const { values } = parse({ ...mountOpt, ...json }, 0)
          const nodes = await request(target(values).mount, 'image.tree', {})
          process.stdout.write(values.json ? JSON.stringify(nodes, null, 2) + '\n' : formatTree(nodes))
          return
        }
        case 'flatten': {
          const { values, positionals } = parse({ ...mountOpt }, 1)
          const t = target(values, positionals[0])
          if (t.name === undefined) usageError('missing image name')
          const bar = progressBar(`flattening ${t.name}`)
          await request(t.mount, 'image.flatten', { name: t.name }, bar.update)
          bar.done()
          process.stdout.write(`flattened ${t.name}: it no longer depends on a snapshot\n`)
          return
        }
        default:
          usageError(sub === undefined ? 'missing image command' : `unknown image command ${JSON.stringify(sub)}`)
      }
    }
    // eslint-disable-next-line no-fallthrough
    case 'snapshot': {
      const [sub, ...subRest] = rest
      rest.splice(0, rest.length, ...subRest)
      const { values, positionals } = parse({ ...mountOpt, ...json }, sub === 'list' ? 1 : 2)
      const t = target(values, positionals[0])
      if (t.name === undefined) usageError('missing image name')
      const tag = positionals[1]
      if (sub !== 'list' && tag === undefined) usageError('missing snapshot tag')
      switch (sub) {
        case 'create': {
          const s = await request(t.mount, 'snapshot.create', { name: t.name, tag: tag as string })
          if (values.json) process.stdout.write(JSON.stringify(s, null, 2) + '\n')
          else process.stdout.write(`snapshot ${s.name}@${s.tag} taken\n`)
          return
        }
        case 'list': {
          const list = await request(t.mount, 'snapshot.list', { name: t.name })
          if (values.json) { process.stdout.write(JSON.stringify(list, null, 2) + '\n'); return }
          process.stdout.write(table(['TAG', 'TAKEN', 'SIZE', 'PINS'], list.map(s => [s.tag, when(s.snapshotTime), formatSize(s.size), formatSize(s.pinned)])))
          return
        }
        case 'delete':
          await request(t.mount, 'snapshot.delete', { name: t.name, tag: tag as string })
          process.stdout.write(`deleted snapshot ${t.name}@${tag}\n`)
          return
        case 'rollback':
          await request(t.mount, 'snapshot.rollback', { name: t.name, tag: tag as string })
          process.stdout.write(`rolled ${t.name} back to ${tag}\n`)
          return
        default:
          usageError(sub === undefined ? 'missing snapshot command' : `unknown snapshot command ${JSON.stringify(sub)}`)
      }
    }
    // eslint-disable-next-line no-fallthrough
    case 'clone': {
      const { values, positionals } = parse({ ...mountOpt, ...json }, 2)
      const src = snapshotRef(values, positionals[0])
      if (positionals[1] === undefined) usageError('missing the new image name')
      const dest = target(values, positionals[1].includes('/') ? positionals[1] : undefined)
      const name = positionals[1].includes('/') ? dest.name : positionals[1]
      if (name === undefined || (positionals[1].includes('/') && dest.mount !== src.mount)) fail(`${positionals[1]} is not in the same sheep mount as ${positionals[0]}`)
      const info = await request(src.mount, 'image.clone', { source: src.name, tag: src.tag, name })
      if (values.json) process.stdout.write(JSON.stringify(info, null, 2) + '\n')
      else process.stdout.write(`cloned ${info.parent} to ${info.name}\n`)
      return
    }
    case 'cluster': {
      const { values, positionals } = parse({ ...mountOpt }, 1)
      const sub = positionals[0]
      if (sub !== 'token' && sub !== 'rotate-secret' && sub !== 'force-start') usageError(sub === undefined ? 'missing cluster command (token, rotate-secret, force-start)' : `unknown cluster command ${JSON.stringify(sub)}`)
      if (sub === 'force-start') {
        const { nodes, missed } = await request(target(values).mount, 'cluster.forceStart', {})
        const forced = nodes.filter(n => n.objects.length > 0)
        if (forced.length === 0) process.stdout.write('no copy was behind: nothing is lost\n')
        for (const n of forced) {
          process.stdout.write(`node ${n.node.slice(0, 16)}: ${n.objects.length} cop${n.objects.length === 1 ? 'y' : 'ies'} behind newer ones now served as they are; what was written to these objects since may be lost: ${n.objects.join(' ')}\n`)
        }
        for (const id of missed) process.stderr.write(`sheep: member ${id} did not answer: run force-start again once it is reachable\n`)
        if (missed.length > 0) process.exitCode = 1
        return
      }
      if (sub === 'rotate-secret') {
        const { token, missed } = await request(target(values).mount, 'cluster.rotate', {})
        process.stdout.write(token + '\n')
        for (const id of missed) process.stderr.write(`sheep: member ${id} did not take the new secret: restart it with --join and the new token\n`)
        return
      }
      const { token } = await request(target(values).mount, 'cluster.token', {})
      process.stdout.write(token + '\n')
      return
    }
    case 'check': {
      const { values, positionals } = parse({ ...mountOpt, ...json, repair: { type: 'boolean' } }, 1)
      const t = target(values, positionals[0])
      const bar = progressBar(`checking ${t.name ?? 'every image'}`)
      const report = await request(t.mount, 'check', { name: t.name, repair: values.repair === true }, bar.update)
      bar.done()
      process.stdout.write(values.json ? JSON.stringify(report, null, 2) + '\n' : formatCheck(report))
      if (report.problems > 0) process.exit(1)
      return
    }
    case 'node': {
      const { values, positionals } = parse({ ...mountOpt, ...json }, 2)
      const sub = positionals[0]
      if (sub === 'admit' || sub === 'remove') {
        const id = positionals[1]
        if (id === undefined) usageError(`usage: sheep node ${sub} ID`)
        const r = await request(target(values).mount, sub === 'admit' ? 'node.admit' : 'node.remove', { id })
        process.stdout.write(`${sub === 'admit' ? 'admitted' : 'removed'} node ${r.id} (view ${r.epoch})\n`)
        return
      }
      if (sub !== 'list') usageError(sub === undefined ? 'missing node command (list, admit, remove)' : `unknown node command ${JSON.stringify(sub)}`)
      const nodes = await request(target(values).mount, 'node.list', {})
      if (values.json) { process.stdout.write(JSON.stringify(nodes, null, 2) + '\n'); return }
      const size = (n: number | null): string => n === null ? '-' : formatSize(n)
      process.stdout.write(table(['ID', 'ADDRESS', 'ZONE', 'WEIGHT', 'CAPACITY', 'USED', 'STATE'],
        nodes.map(n => [n.id.slice(0, 16), n.address, n.zone === '' ? '-' : n.zone, String(n.weight), size(n.capacity), size(n.used), n.state])))
      return
    }
    // eslint-disable-next-line no-fallthrough
    default:
      usageError(`unknown command ${JSON.stringify(command)}`)
  }
}

function formatCheck (r: CheckReport): string {
  const lines = [`checked ${r.objects} object${r.objects === 1 ? '' : 's'}: ${r.problems === 0 ? 'every copy is right' : `${r.problems} cop${r.problems === 1 ? 'y is' : 'ies are'} not right`}` +
    (r.repaired > 0 ? `, ${r.repaired} repaired` : '')]
  for (const id of r.unlisted) lines.push(`member ${id.slice(0, 16)} did not list its objects: only what placement gives it was checked there`)
  for (const image of r.images) {
    const bad = image.problems.filter(o => o.copies.some(c => c.state !== 'ok')).length
    lines.push(`${image.image}: ${image.objects} object${image.objects === 1 ? '' : 's'}, ${bad === 0 ? 'all right' : `${bad} with copies not right`}${image.repaired > 0 ? `, ${image.repaired} cop${image.repaired === 1 ? 'y' : 'ies'} repaired` : ''}`)
    for (const o of image.problems) {
      for (const c of o.copies) {
        if (c.state === 'ok' && c.repaired !== true) continue
        const what = c.repaired === true ? 'repaired' : c.state
        lines.push(`  object ${o.oid} on ${c.node.slice(0, 16)}: ${what}${c.detail === undefined ? '' : ` (${c.detail})`}`)
      }
    }
  }
  return lines.join('\n') + '\n'
}

function formatRecovery (r: NonNullable<NodeStatus['cluster']>['recovery'] & object): string {
  const eta = r.etaSeconds === null ? '' : `, about ${r.etaSeconds} s left`
  return ` (${r.images.map(i => `${i.image}: ${i.objects}`).join(', ')}); ${r.copied} copied (${formatSize(r.copiedBytes)}) at ${formatSize(Math.round(r.rate))}/s${eta}`
}

function formatFuse (f: NonNullable<NodeStatus['fuse']>): string {
  if (f.frontend === 'libfuse2') return 'libfuse 2 (fuse-native)'
  const held = Object.entries(f.inFlight ?? {}).map(([op, n]) => `${op} ${n}`)
  return `kernel protocol; requests in flight: ${held.length === 0 ? 'none' : held.join(', ')}`
}

function formatStatus (s: NodeStatus): string {
  const pct = s.capacity > 0 ? ` (${((1 - s.free / s.capacity) * 100).toFixed(1)}% of the disk used)` : ''
  return [
    `sheep ${s.version}, pid ${s.pid}, up ${Math.round((Date.now() - s.startedAt) / 1000)} s`,
    `mount:    ${s.mount}`,
    ...(s.fuse === null ? [] : [`fuse:     ${formatFuse(s.fuse)}`]),
    `store:    ${s.store}`,
    `images:   ${s.images} (${s.openHandles} open handles), ${formatSize(s.provisioned)} provisioned, ${formatSize(s.allocated)} allocated`,
    `objects:  ${s.objects}, ${formatSize(s.storeBytes)} on disk`,
    `capacity: ${formatSize(s.capacity)}, ${formatSize(s.free)} free${pct}`,
    ...(s.cluster === null
      ? []
      : [`cluster:  epoch ${s.cluster.epoch}, ${s.cluster.members} members, ${s.cluster.reachable} reachable${s.cluster.quorate ? '' : ' - NO MAJORITY: writes wait'}; node ${s.cluster.node.slice(0, 16)}`,
          `links:    ${s.cluster.links.direct} direct (TCP${s.cluster.links.plain > 0 ? `; ${s.cluster.links.plain} plain-authenticated, the others encrypted` : ', encrypted'}), ${s.cluster.links.swarm} over Hyperswarm only`,
          ...(s.cluster.raw === null ? [] : [`raw:      ${formatSize(s.cluster.raw.capacity)}, ${formatSize(s.cluster.raw.free)} free on the reachable members' stores (df shows it divided by the copies of new images)`]),
          ...s.cluster.down.map(d => `down:     node ${d.node.slice(0, 16)} for ${Math.max(0, Math.round((Date.now() - d.since) / 1000))} s: its objects stay placed on it and writes go to their other replicas; out after --out-after`),
          ...(s.cluster.recovering > 0 ? [`recovery: ${s.cluster.recovering} objects still to copy to this node${s.cluster.recovery === null ? '' : formatRecovery(s.cluster.recovery)}`] : []),
          s.cluster.degraded.length === 0 ? 'copies:   satisfied' : `copies:   degraded: ${s.cluster.degraded.join('; ')}`]),
    ...(s.checksums.mismatches === 0 && s.checksums.rebuilt === 0
      ? []
      : [`checks:   ${s.checksums.mismatches} read${s.checksums.mismatches === 1 ? '' : 's'} found chunks that do not match their checksums${s.checksums.recent.length > 0 ? ` (last: object ${s.checksums.recent[s.checksums.recent.length - 1]?.oid ?? ''})` : ''}; ${s.checksums.rebuilt} object${s.checksums.rebuilt === 1 ? '' : 's'} summed anew after a crash`]),
    ...(s.scrub === null
      ? []
      : [`scrub:    ${formatSize(s.scrub.rate)}/s; ${s.scrub.running ? `a pass is under way (${s.scrub.checked} objects so far)` : 'idle'}; last whole pass ${s.scrub.lastPassAt === null ? 'never' : `${when(s.scrub.lastPassAt)}, ${s.scrub.lastPassFound === 0 ? 'nothing damaged' : `${s.scrub.lastPassFound} damaged`}`}`,
          ...s.scrub.images.map(i => `          ${i.image}: checked ${when(i.checkedAt)}, ${i.found === 0 ? 'whole' : `${i.found} damaged`}`)]),
    ...(s.cluster === null || (s.cluster.damaged === 0 && s.cluster.healing === 0)
      ? []
      : [`healing:  ${s.cluster.damaged} damaged cop${s.cluster.damaged === 1 ? 'y' : 'ies'} found by reads here, ${s.cluster.healed} healed from a replica, ${s.cluster.healing} under way`]),
    ...(s.strays.objects === 0
      ? []
      : [`strays:   ${s.strays.objects} objects (${formatSize(s.strays.bytes)}) set aside in ${s.strays.dir}: blocks no image points at, left by a crash before a sync; delete them once no guest misses data`]),
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

