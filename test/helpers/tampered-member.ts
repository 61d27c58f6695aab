// A member with a tampered binary, as a process of its own (a test's process blocks in spawnSync
// while it runs `sheep` commands, and a peer that misses its keep-alives is dropped): it holds the
// cluster secret and a key of its own, opens a link to each node's direct TCP port, answers no
// agreement request, and on command sends every node a forged 'decided' view.
//
// argv: secret (hex), ports (comma-separated). Prints `key HEX` once every link is open; then
// for each stdin line `forge EPOCH ID,ID,...` sends a view of EPOCH whose only member is itself,
// with its own valid vote and made-up votes in the names of the ids given, and prints
// `sent ERRORS` ('' per node that took the message). Exits when stdin ends.

import crypto from 'node:crypto'
import net from 'node:net'
import readline from 'node:readline'
import DHT from 'hyperdht'
import { Link, type SecureStream } from '../../src/swarm/link'
import { secretStreamOver } from '../../src/swarm/mesh'
import { agreement, encode, Op } from '../../src/swarm/messages'
import type { View } from '../../src/swarm/view'
import { voteSigner } from '../../src/swarm/votes'

async function main (): Promise<void> {
  const secret = Buffer.from(process.argv[2] ?? '', 'hex')
  const ports = (process.argv[3] ?? '').split(',').map(Number)
  const kp = DHT.keyPair(crypto.randomBytes(32))
  const key = kp.publicKey.toString('hex')
  const self = { id: key, host: '127.0.0.1', port: 0, zone: '', weight: 1 }
  const links = await Promise.all(ports.map(async port => {
    const stream = secretStreamOver(net.connect({ host: '127.0.0.1', port }).on('error', () => {}), true, kp)
    stream.on('error', () => {})
    await new Promise(resolve => stream.once('connect', resolve))
    const link = new Link(stream as unknown as SecureStream, {
      kind: 'tcp',
      secret: () => secret,
      gate: (_id, proves) => proves(secret) ? null : 'bad proof',
      self: () => ({ member: self, view: { epoch: 0, members: [] } }),
      onRequest: async () => ({}),
      log: () => {}
    })
    await new Promise((resolve, reject) => { link.once('open', resolve); link.once('close', reject) })
    return link
  }))
  process.stdout.write(`key ${key}\n`)
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const [, epoch, ids] = line.split(' ')
    const forged: View = { epoch: Number(epoch), members: [self] }
    const ballot = { round: 1, proposer: key }
    const votes = [key, ...(ids ?? '').split(',')].map(id => ({ voter: id, signature: voteSigner(id === key ? kp : DHT.keyPair(crypto.randomBytes(32))).sign(ballot, forged) }))
    const data = encode(agreement, { type: 'decided', view: forged, certificate: { ballot, votes } })
    const answers = await Promise.all(links.map(async l => await l.call({ epoch: 0, op: Op.Agree, oid: 0n, offset: 0, length: 0, version: 0, data }, 5000).then(r => r.error, (e: Error) => e.message)))
    process.stdout.write(`sent ${answers.join(',')}\n`)
  }
  process.exit(0)
}

main().catch(err => { process.stderr.write(`${(err as Error).stack ?? String(err)}\n`); process.exit(1) })
