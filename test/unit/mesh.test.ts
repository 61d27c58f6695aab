// The mesh on real Hyperswarm and TCP connections on loopback, in one process: nodes find each
// other through one node's own DHT bootstrap, prove the secret, open a TCP path beside the
// Hyperswarm one, and answer requests on both; an outsider and a peer sending garbage are dropped.

import t from 'tap'
import crypto from 'node:crypto'
import DHT from 'hyperdht'
import Hyperswarm from 'hyperswarm'
import { Mesh, type Peer } from '../../src/swarm/mesh'
import { muxCarrier } from '../../src/swarm/carrier'
import { Link } from '../../src/swarm/link'
import { newSecret, topicOf } from '../../src/swarm/proof'
import { Op, type Request } from '../../src/swarm/messages'
import type { Member } from '../../src/swarm/view'

interface Teardownable { teardown (fn: () => unknown): void }

const FAST = { keepAliveMs: 500, deadAfterMs: 1500, refreshMs: 200, redialMs: 200 }

interface Node { mesh: Mesh, member: () => Member, logs: string[], requests: Request[] }

async function node (t: Teardownable, secret: Buffer, bootstrap: Array<{ host: string, port: number }>, runBootstrap = false): Promise<Node> {
  const keyPair = DHT.keyPair(crypto.randomBytes(32))
  const id = keyPair.publicKey.toString('hex')
  const logs: string[] = []
  const requests: Request[] = []
  const wanted = new Set<string>()
  let mesh!: Mesh
  const member = (): Member => ({ id, host: '127.0.0.1', port: mesh.tcpPort, zone: '', weight: 1 })
  mesh = new Mesh({
    keyPair,
    secret: () => secret,
    topics: () => [secret],
    gate: (_id: string, proves: (s: Buffer) => boolean) => proves(secret) ? null : 'it did not prove it holds the cluster secret',
    host: '127.0.0.1',
    tcpPort: 0,
    bootstrap,
    bootstrapPort: runBootstrap ? 0 : null,
    self: () => ({ member: member(), view: { epoch: 0, members: [] } }),
    wanted: () => wanted,
    onRequest: async (req, link) => {
      requests.push(req)
      return { data: Buffer.from(`${link.kind}:${req.offset}`) }
    },
    log: line => logs.push(line),
    timing: FAST
  })
  t.teardown(async () => await mesh.close())
  await mesh.start()
  return { mesh, member, logs, requests }
}

async function until (what: string, check: () => boolean, ms = 10000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

const both = (p: Peer | undefined): boolean => p?.tcp?.isOpen === true && p.swarm?.isOpen === true

t.test('three nodes mesh over Hyperswarm and TCP and answer on both paths', async t => {
  const secret = newSecret()
  const a = await node(t, secret, [], true)
  const boot = a.mesh.bootstrapList
  t.equal(boot.length, 1, 'the first node runs a bootstrap node')
  const b = await node(t, secret, boot)
  const c = await node(t, secret, boot)
  const all = [a, b, c]
  await until('every pair connected on both paths', () =>
    all.every(x => all.every(y => x === y || both(x.mesh.peer(y.mesh.id)))))
  t.pass('every pair has a TCP and a Hyperswarm link')
  for (const kind of ['tcp', 'swarm'] as const) {
    const link = a.mesh.link(c.mesh.id, kind)
    t.equal(link?.kind, kind)
    const res = await link!.call({ epoch: 1, op: Op.Read, oid: 5n, offset: 42, length: 0, version: 0, data: new Uint8Array(0) }, 2000)
    t.equal(Buffer.from(res.data).toString(), `${kind}:42`, `a request over ${kind} gets its answer`)
  }
  t.same(c.mesh.peer(a.mesh.id)?.hello.self, a.member(), 'the hello carries the member record')
})

/** A raw Hyperswarm node on the cluster's topic, speaking through a Link with the secret it was given. */
async function intruder (t: Teardownable, topicSecret: Buffer, linkSecret: Buffer, bootstrap: Array<{ host: string, port: number }>, onLink: (link: Link, conn: Hyperswarm.Connection) => void): Promise<void> {
  const keyPair = DHT.keyPair(crypto.randomBytes(32))
  const dht = new DHT({ host: '127.0.0.1', bootstrap, ephemeral: false, firewalled: false, keyPair })
  const swarm = new Hyperswarm({ dht, keyPair })
  t.teardown(async () => await swarm.destroy())
  const id = keyPair.publicKey.toString('hex')
  swarm.on('connection', conn => {
    conn.on('error', () => {})
    const link = new Link(muxCarrier(conn as never), {
      kind: 'swarm',
      secret: () => linkSecret,
      gate: (_id: string, proves: (s: Buffer) => boolean) => proves(linkSecret) ? null : 'it did not prove it holds the cluster secret',
      self: () => ({ member: { id, host: '127.0.0.1', port: 0, zone: '', weight: 1 }, view: { epoch: 0, members: [] } }),
      onRequest: async () => ({}),
      log: () => {}
    })
    onLink(link, conn)
  })
  await swarm.join(topicOf(topicSecret), { client: true, server: true }).flushed()
}

t.test('a node that knows the topic but not the secret is dropped, with a log line naming it', async t => {
  const secret = newSecret()
  const a = await node(t, secret, [], true)
  let served = false
  let rejectedAt: string | null = null
  await intruder(t, secret, newSecret(), a.mesh.bootstrapList, (link, conn) => {
    link.once('close', () => { rejectedAt ??= conn.remotePublicKey.toString('hex') })
    link.once('open', () => { served = true })
  })
  await until('the member drops the intruder', () => a.logs.some(l => l.includes('did not prove it holds the cluster secret')))
  t.equal(a.mesh.connected.length, 0, 'the intruder is not a peer')
  t.notOk(served, 'the member\'s hello did not satisfy the intruder either (its proof is for the real secret)')
  t.equal(rejectedAt, a.mesh.id, 'its connection to the member was closed')
  t.same(a.requests, [], 'no request reached the member')
})

t.test('a member sending garbage is dropped with a log line; the daemon goes on', async t => {
  const secret = newSecret()
  const a = await node(t, secret, [], true)
  await intruder(t, secret, secret, a.mesh.bootstrapList, (link, conn) => {
    link.once('open', () => {
      // A frame protomux cannot decode: an unknown channel and a length that runs past the end.
      conn.write(Buffer.from([0x01, 0xff, 0xff, 0xff, 0xff, 0x0f]))
    })
  })
  await until('the garbage closes the connection', () => a.logs.some(l => /closed swarm connection to [0-9a-f]{64}/.test(l)))
  await until('the sender is gone', () => a.mesh.connected.length === 0)
  const b = await node(t, secret, a.mesh.bootstrapList)
  await until('a new member still connects', () => both(a.mesh.peer(b.mesh.id)))
  t.pass('the daemon goes on serving members')
})
