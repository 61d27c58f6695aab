// A member with a tampered binary, as a process of its own (a test's process blocks in spawnSync
// while it runs `sheep` commands, and a peer that misses its keep-alives is dropped): it holds the
// cluster secret and a key of its own, opens a link to each node's direct TCP port, answers no
// agreement request, and on command sends every node a forged 'decided' view.
//
// argv: secret (hex), ports (comma-separated). Prints `key HEX` once every link is open; then
// for each stdin line, sends every node one message and prints `sent ERRORS` (the error code each
// node answered, '' when it took the message):
// - `forge EPOCH ID,ID,...`: a decided view of EPOCH whose only member is itself, with its own
//   valid vote and made-up votes in the names of the ids given;
// - `write EPOCH OID` and `remove EPOCH OID` (OID in hex): an object write of 4 KiB of 0xee at
//   offset 0, or a remove, in EPOCH, as a member that holds no write token.
// Exits when stdin ends.

import crypto from 'node:crypto'
import net from 'node:net'
import readline from 'node:readline'
import DHT from 'hyperdht'
import { directCarrier } from '../../src/swarm/direct'
import { Link } from '../../src/swarm/link'
import { DEFAULT_MESH_TIMING } from '../../src/swarm/mesh'
import { agreement, encode, objectList, Op, type Request } from '../../src/swarm/messages'
import type { View } from '../../src/swarm/view'
import { voteSigner } from '../../src/swarm/votes'

async function main (): Promise<void> {
  const secret = Buffer.from(process.argv[2] ?? '', 'hex')
  const ports = (process.argv[3] ?? '').split(',').map(Number)
  const kp = DHT.keyPair(crypto.randomBytes(32))
  const key = kp.publicKey.toString('hex')
  const self = { id: key, host: '127.0.0.1', port: 0, zone: '', weight: 1 }
  const links = await Promise.all(ports.map(async port => {
    const socket = net.connect({ host: '127.0.0.1', port }).on('error', () => {})
    await new Promise(resolve => socket.once('connect', resolve))
    const carrier = await directCarrier(socket, true, kp, 'encrypted', DEFAULT_MESH_TIMING)
    const link = new Link(carrier, {
      kind: 'tcp',
      secret: () => secret,
      gate: (_id, proves) => proves(secret) ? null : 'bad proof',
      self: () => ({ member: self, view: { epoch: 0, members: [] } }),
      // An empty store: other members' recovery asks every member for its list of objects.
      onRequest: async req => req.op === Op.List ? { data: encode(objectList, []), size: 0 } : {},
      log: () => {}
    })
    await new Promise((resolve, reject) => { link.once('open', resolve); link.once('close', reject) })
    return link
  }))
  process.stdout.write(`key ${key}\n`)
  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    const [command, epoch, arg] = line.split(' ')
    const base: Omit<Request, 'id'> = { epoch: Number(epoch), op: Op.Agree, oid: 0n, offset: 0, length: 0, version: 0, data: Buffer.alloc(0) }
    let req: Omit<Request, 'id'>
    if (command === 'forge') {
      const forged: View = { epoch: Number(epoch), members: [self] }
      const ballot = { round: 1, proposer: key }
      const votes = [key, ...(arg ?? '').split(',')].map(id => ({ voter: id, signature: voteSigner(id === key ? kp : DHT.keyPair(crypto.randomBytes(32))).sign(ballot, forged) }))
      req = { ...base, epoch: 0, data: encode(agreement, { type: 'decided', view: forged, certificate: { ballot, votes } }) }
    } else if (command === 'write') {
      req = { ...base, op: Op.Write, oid: BigInt(`0x${arg ?? ''}`), data: Buffer.alloc(4096, 0xee) }
    } else {
      req = { ...base, op: Op.Remove, oid: BigInt(`0x${arg ?? ''}`) }
    }
    const answers = await Promise.all(links.map(async l => await l.call(req, 5000).then(r => r.error, (e: Error) => e.message)))
    process.stdout.write(`sent ${answers.join(',')}\n`)
  }
  process.exit(0)
}

main().catch(err => { process.stderr.write(`${(err as Error).stack ?? String(err)}\n`); process.exit(1) })
