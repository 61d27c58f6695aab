// Three daemons as one cluster while hostile peers hammer their direct TCP object ports: 2000
// connections in bounded batches, on loopback, each completing Noise with a made-up key and then
// sending a malformed channel open, garbage, or a frame with absurd lengths (and some garbage
// before Noise). Meanwhile a guest writes an image through node 1's mount. Afterwards no daemon
// died, every byte written reads back on the other nodes, and the logs name the offenders.
// Then a peer that holds the cluster secret advertises a weight of 0 and a port of 70000 in its
// hello: it is refused and banned, never adopted into a view, and I/O goes on.

import t, { type Test } from 'tap'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import DHT from 'hyperdht'
import { FrameType } from '../../src/swarm/frames'
import { encode, hello, requestHead, Op } from '../../src/swarm/messages'
import { proofFor } from '../../src/swarm/proof'
import type { Member } from '../../src/swarm/view'
import { clusterState, type Daemon, QemuIoSession, qemuIo, startCluster, waitFor } from '../helpers/daemon'
import { helloFrame, HUGE_PREFIXES, helloOf, hostileConnection, memberOf, mutate, requestFrame, type Sealed } from '../helpers/hostile'
import { Rng } from '../helpers/random'

const TOTAL = 2000
const BATCH = 100
const MiB = 2 ** 20
const BLOCKS = 32 // the writer writes 1 MiB blocks of a 32 MiB image, pass after pass

const SEED = process.env.SHEEP_FUZZ_SEED !== undefined ? Number(process.env.SHEEP_FUZZ_SEED) : crypto.randomInt(2 ** 31)
t.comment(`hostile seed ${SEED} (replay: SHEEP_FUZZ_SEED=${SEED})`)

function ok (d: Daemon, args: string[]): string {
  const r = d.sheep([...args, '--mount', d.mount])
  if (r.code !== 0) throw new Error(`sheep ${args.join(' ')} failed (${r.code}): ${r.stderr}`)
  return r.stdout
}

/** The direct TCP object port of each of nodes (in their order), from the view and each node's id in its log. */
function objectPorts (nodes: Daemon[]): number[] {
  const list = JSON.parse(ok(nodes[0] as Daemon, ['node', 'list', '--json'])) as Array<{ id: string, address: string }>
  return nodes.map(d => {
    const id = /; node ([0-9a-f]{64})/.exec(d.log)?.[1]
    const entry = list.find(n => n.id === id)
    if (entry === undefined) throw new Error(`node ${d.mount} (id ${id ?? '?'}) is not in the view`)
    return Number(entry.address.split(':').pop())
  })
}

function keyPair (): { publicKey: Buffer, secretKey: Buffer } { return DHT.keyPair(crypto.randomBytes(32)) }

/** Bytes on a plain TCP connection, before (instead of) Noise: a frame claiming 16 MiB, or noise. */
async function rawGarbage (port: number, bytes: Buffer): Promise<void> {
  await new Promise<void>(resolve => {
    const s = net.connect({ host: '127.0.0.1', port })
    s.on('error', () => {})
    s.on('close', () => resolve())
    s.on('connect', () => { s.write(bytes); setTimeout(() => s.destroy(), 200) })
  })
}

/** What one hostile connection sends; 'logged': its key must appear in the node's log. */
type Attack = (rng: Rng, key: string) => { frames: Array<Buffer | Sealed>, logged: boolean }
const ATTACK_NAMES = ['a mutated hello', 'a hello cut short', 'a view of 2^30 members', 'a request frame of 2^30 bytes', 'random bytes']

const ATTACKS: Attack[] = [
  // a mutated hello (it either fails to decode or fails the proof)
  (rng, key) => ({ frames: [helloFrame(mutate(rng, encode(hello, { ...helloOf(rng), self: memberOf(rng, key) })))], logged: true }),
  // a hello cut short
  (rng, key) => { const h = encode(hello, { ...helloOf(rng), self: memberOf(rng, key) }); return { frames: [helloFrame(h.subarray(0, rng.int(0, h.length - 1)))], logged: true } },
  // a valid-looking hello whose view claims 2^30 members (or more)
  (rng, key) => {
    const h = encode(hello, { proof: rng.bytes(32), self: memberOf(rng, key), view: { epoch: 0, members: [] } })
    return { frames: [helloFrame(Buffer.concat([h.subarray(0, -2), Buffer.from([0x07]), rng.pick(HUGE_PREFIXES.slice(0, 5)), rng.bytes(8)]))], logged: true }
  },
  // a hello, then a request frame whose length claims 2^30 bytes
  (rng, key) => ({
    frames: [helloFrame(encode(hello, { proof: rng.bytes(32), self: memberOf(rng, key), view: { epoch: 0, members: [] } })),
      Buffer.from([0, 0, 0, 0x40, FrameType.Request, 0, 0])],
    logged: true
  }),
  // random bytes after Noise (a frame prefix that may wait for more: then the node's timeouts end it)
  rng => ({ frames: [rng.bytes(rng.int(1, 300))], logged: false })
]

t.test('2000 hostile connections while a guest writes: no daemon dies, every byte reads back, offenders are logged', async t => {
  const nodes = await startCluster(t, 3)
  const [n1, n2, n3] = nodes as [Daemon, Daemon, Daemon]
  const ports = objectPorts(nodes)
  t.equal(ports.length, 3, `object ports ${ports.join(', ')}`)
  ok(n1, ['image', 'create', 'vm1.img', `${BLOCKS}M`, '--copies', '3'])
  const epochBefore = clusterState(n1)?.epoch

  // The guest: 1 MiB writes with a pattern per pass and block, until the flood is over.
  const guest = new QemuIoSession(t, n1.image('vm1.img'))
  const written = new Map<number, number>()
  let flooding = true
  let writes = 0
  const writer = (async () => {
    for (let pass = 0; flooding || pass < 1; pass++) {
      for (let b = 0; b < BLOCKS; b++) {
        const pattern = ((pass * 37 + b) % 254) + 1
        const said = await guest.run(`write -P ${pattern} ${b * MiB} 1M`)
        if (/error|fail/i.test(said)) throw new Error(`write of block ${b} failed: ${said}`)
        written.set(b, pattern)
        writes++
      }
    }
  })()

  const rng = new Rng(SEED)
  const expected: Array<{ key: string, node: number, attack: string }> = []
  let attacks = 0
  const started = Date.now()
  while (attacks < TOTAL) {
    const batch: Array<Promise<unknown>> = []
    for (let i = 0; i < BATCH && attacks < TOTAL; i++, attacks++) {
      const node = attacks % 3
      const port = ports[node] as number
      if (rng.chance(0.1)) {
        // garbage before Noise: a header claiming a 16 MiB message, or plain noise
        batch.push(rawGarbage(port, rng.chance(0.5) ? Buffer.concat([Buffer.from([0xff, 0xff, 0xff]), rng.bytes(100)]) : rng.bytes(rng.int(1, 200))))
        continue
      }
      const kp = keyPair()
      const key = kp.publicKey.toString('hex')
      const a = rng.int(0, ATTACKS.length - 1)
      const { frames, logged } = (ATTACKS[a] as Attack)(rng, key)
      if (logged) expected.push({ key, node, attack: ATTACK_NAMES[a] as string })
      batch.push(hostileConnection(port, kp, s => {
        for (const f of frames) s.write(f)
        setTimeout(() => s.destroy(), 200) // do not wait for the node's timeouts
      }, 2000))
    }
    await Promise.all(batch)
  }
  const floodMs = Date.now() - started
  flooding = false
  await writer
  await guest.quit()
  t.pass(`${TOTAL} hostile connections in ${floodMs} ms; the guest made ${writes} writes of 1 MiB meanwhile`)

  for (const [i, d] of nodes.entries()) t.ok(d.proc?.exitCode === null && d.proc.signalCode === null, `node ${i + 1} is alive`)
  const state = clusterState(n2)
  t.equal(state?.members, 3, 'the view still has the 3 members')
  t.equal(state?.reachable, 3, 'all reachable')
  t.equal(state?.epoch, epochBefore, 'no view change: no offender was adopted, no member was dropped')

  // Every block reads back with the last pattern written to it, on the two other nodes.
  for (const d of [n2, n3]) {
    qemuIo(d.image('vm1.img'), [...written].map(([b, p]) => `read -P ${p} ${b * MiB} 1M`))
    t.pass(`node ${d === n2 ? 2 : 3} reads back every byte written`)
  }

  // A malformed hello is logged as "closed tcp connection to KEY: ..." and one that decodes but
  // fails the proof as "dropped tcp connection from KEY: ...": either names the key.
  const logged = (e: { key: string, node: number }): boolean => (nodes[e.node] as Daemon).log.includes(` ${e.key}:`)
  await waitFor(() => expected.every(logged), 5000)
  const missing = expected.filter(e => !logged(e))
  t.same(missing.slice(0, 5), [], `each of the ${expected.length} malformed opens is logged with the offender's key by the node it hit (${missing.length} missing)`)
  const bans = nodes.map(d => (d.log.match(/banned [0-9a-f]{64} for/g) ?? []).length)
  t.ok(bans.every(n => n > 0), `offenders banned: ${bans.join(', ')} ban lines`)

  // The same cluster, one cluster start for both (the test must stay under a minute here).
  await t.test('a peer with the secret advertising weight 0 or port 70000 is refused and banned, never adopted', async t => await weightZero(t, nodes, ports))
})

/** On the same cluster, after the flood. */
async function weightZero (t: Test, nodes: Daemon[], ports: number[]): Promise<void> {
  const [n1, n2] = nodes as [Daemon, Daemon]
  const secret = Buffer.from((JSON.parse(fs.readFileSync(path.join(n1.store, 'cluster.json'), 'utf8')) as { secret: string }).secret, 'hex')
  ok(n1, ['image', 'create', 'vm2.img', '8M', '--copies', '3'])
  const epochBefore = clusterState(n1)?.epoch
  const bad: Array<[string, Partial<Member>]> = [['weight 0', { weight: 0 }], ['port 70000', { port: 70000 }], ['weight -5', { weight: -5 }]]
  for (const [what, change] of bad) {
    const kp = keyPair()
    const key = kp.publicKey.toString('hex')
    await hostileConnection(ports[0] as number, kp, s => {
      const self = { id: key, host: '127.0.0.1', port: 0, zone: '', weight: 1, ...change }
      // Encoded past the codec's checks where it would refuse (port): written field by field.
      s.write(helloFrame(looseHello(proofFor(secret, s.handshakeHash, true), self)))
      s.write(requestFrame(encode(requestHead, { id: 1, epoch: 1, op: Op.Stat, oid: 1n, offset: 0, length: 0, version: 0 })))
    }, 3000)
    t.ok(await waitFor(() => n1.log.includes(`closed tcp connection to ${key}`) && n1.log.includes(`banned ${key}`), 5000), `${what}: refused with a log line naming the peer, and banned`)
  }
  t.equal(clusterState(n1)?.epoch, epochBefore, 'no view change: the peer was never a join candidate')
  qemuIo(n2.image('vm2.img'), ['write -P 0x42 0 4M'])
  qemuIo(n1.image('vm2.img'), ['read -P 0x42 0 4M'])
  t.pass('I/O goes on across the cluster')
}

/** A hello with the given member record, encoded field by field (the codec refuses a port past 65535). */
function looseHello (proof: Buffer, m: Member): Buffer {
  const uint = (n: number): Buffer => n <= 0xfc ? Buffer.from([n]) : n <= 0xffff ? Buffer.from([0xfd, n & 0xff, n >> 8]) : Buffer.from([0xfe, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24])
  const str = (s: string): Buffer => Buffer.concat([uint(Buffer.byteLength(s)), Buffer.from(s)])
  const weight = Buffer.alloc(8)
  weight.writeDoubleLE(m.weight)
  // Then the view: epoch 0, no members, no flags, no removed ids.
  return Buffer.concat([proof, str(m.id), str(m.host), uint(m.port), str(m.zone), weight, uint(0), uint(0), uint(0), uint(0)])
}
