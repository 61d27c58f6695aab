// --wire plain-authenticated on real daemons: links between two nodes that ask for it carry
// plain-authenticated frames, a link to a node that does not stays encrypted, and replicated I/O
// goes through both; `sheep status` says which.

import t from 'tap'
import { type Daemon, freeUdpPort, qemuIo, startDaemon, waitFor, waitForView } from '../helpers/daemon'

interface Links { direct: number, plain: number, swarm: number }

function links (d: Daemon): Links | null {
  const r = d.sheep(['status', '--json', '--mount', d.mount])
  if (r.code !== 0) return null
  return (JSON.parse(r.stdout) as { cluster: { links: Links } | null }).cluster?.links ?? null
}

t.test('two nodes ask for plain-authenticated frames, a third does not: plain between the two only; a write with 3 copies reads back everywhere', async t => {
  const plain = ['--wire', 'plain-authenticated']
  const first = await startDaemon(t, ['--bootstrap-port', String(await freeUdpPort()), ...plain])
  const token = first.sheep(['cluster', 'token', '--mount', first.mount]).stdout.trim()
  const second = await startDaemon(t, ['--join', token, ...plain])
  const third = await startDaemon(t, ['--join', token])
  const nodes = [first, second, third]
  await waitForView(nodes, 3)
  const want: Array<[Daemon, Links]> = [
    [first, { direct: 2, plain: 1, swarm: 0 }],
    [second, { direct: 2, plain: 1, swarm: 0 }],
    [third, { direct: 2, plain: 0, swarm: 0 }]
  ]
  t.ok(await waitFor(() => want.every(([d, l]) => JSON.stringify(links(d)) === JSON.stringify(l)), 15_000),
    `links as asked (${nodes.map(d => JSON.stringify(links(d))).join(' ')})`)
  t.match(first.sheep(['status', '--mount', first.mount]).stdout, /links: +2 direct \(TCP; 1 plain-authenticated, the others encrypted\)/, 'sheep status says so')
  t.match(third.sheep(['status', '--mount', third.mount]).stdout, /links: +2 direct \(TCP, encrypted\)/, 'and on the node that did not ask')
  const r = first.sheep(['image', 'create', 'vm.img', '16M', '--copies', '3', '--mount', first.mount])
  t.equal(r.code, 0, `image created: ${r.stderr}`)
  qemuIo(first.image('vm.img'), ['write -P 0x5a 0 8M', 'write -P 0xa5 8M 8M'])
  for (const d of [second, third]) qemuIo(d.image('vm.img'), ['read -P 0x5a 0 8M', 'read -P 0xa5 8M 8M'])
  t.pass('written on the first node, read back on the other two')
  qemuIo(third.image('vm.img'), ['write -P 0x33 4M 4M'])
  for (const d of [first, second]) qemuIo(d.image('vm.img'), ['read -P 0x5a 0 4M', 'read -P 0x33 4M 4M', 'read -P 0xa5 8M 8M'])
  t.pass('written on the third, read back on the first two')
})

t.test('--wire is checked: an unknown mode, or without a cluster\'s direct path, is a usage error', async t => {
  const { spawnSync } = await import('node:child_process')
  const { SHEEP_BIN } = await import('../helpers/daemon')
  const run = (args: string[]): { code: number | null, stderr: string } => {
    const r = spawnSync(SHEEP_BIN, ['start', ...args], { encoding: 'utf8', timeout: 20_000 })
    return { code: r.status, stderr: r.stderr }
  }
  const bad = run(['--bootstrap-port', '1', '--wire', 'none'])
  t.equal(bad.code, 2, 'an unknown mode: exit 2')
  t.match(bad.stderr, /bad --wire "none": encrypted or plain-authenticated/, bad.stderr.trim())
  const alone = run(['--wire', 'plain-authenticated'])
  t.equal(alone.code, 2, 'without a cluster: exit 2')
  t.match(alone.stderr, /--wire is for the direct path of a cluster/, alone.stderr.trim())
  const noDirect = run(['--bootstrap-port', '1', '--no-direct', '--wire', 'plain-authenticated'])
  t.equal(noDirect.code, 2, 'with --no-direct: exit 2')
})
