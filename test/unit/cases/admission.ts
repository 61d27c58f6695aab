// Who gets in at the proof step (src/swarm/admission.ts), and the secrets a store keeps across a
// rotation and a restart (src/swarm/identity.ts).

import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { admissionProblem, listenedSecrets, type Secrets } from '../../../src/swarm/admission'
import { encodeToken, decodeToken, loadIdentity, saveSecrets } from '../../../src/swarm/identity'
import { newSecret } from '../../../src/swarm/proof'
import type { View } from '../../../src/swarm/view'
import { tmpDir } from '../tmp'

const id = (n: number): string => n.toString(16).padStart(64, '0')
const member = (n: number): View['members'][number] => ({ id: id(n), host: '127.0.0.1', port: 1, zone: '', weight: 1 })

t.test('admission gate: current, next, previous (members only), removed keys', async t => {
  const [s1, s2, s3] = [newSecret(), newSecret(), newSecret()]
  const view: View = { epoch: 4, members: [member(1), member(2)], removed: [id(9)] }
  const by = (secret: Buffer) => (s: Buffer): boolean => s.equals(secret)
  const before: Secrets = { current: s1, next: null, previous: null }
  const during: Secrets = { current: s1, next: s2, previous: null }
  const after: Secrets = { current: s2, next: null, previous: s1 }
  t.equal(admissionProblem(before, view, id(3), by(s1)), null, 'the current secret gets anyone in (a joiner)')
  t.match(admissionProblem(before, view, id(3), by(s2)), /did not prove it holds the cluster secret/, 'an unknown secret does not')
  t.equal(admissionProblem(during, view, id(2), by(s2)), null, 'during a rotation: a member that switched already gets in')
  t.equal(admissionProblem(during, view, id(2), by(s1)), null, 'and one that did not')
  t.equal(admissionProblem(after, view, id(2), by(s1)), null, 'after it: a member still proving the previous secret gets in')
  t.match(admissionProblem(after, view, id(3), by(s1)), /rotated out \(an old join token\), and it is not a member/, 'a non-member with the previous secret (an old token) does not')
  t.match(admissionProblem(after, null, id(3), by(s1)), /rotated out/, 'nor with no view yet')
  t.match(admissionProblem(after, view, id(3), by(s3)), /did not prove/, 'a secret never known')
  t.match(admissionProblem(after, view, id(9), by(s2)), /removed from the cluster/, 'a removed key with the current secret is refused')
  t.same(listenedSecrets(during), [s1, s2], 'announced on the current and next secrets\' topics')
  t.same(listenedSecrets(after), [s2, s1], 'and the previous one\'s after, so that an old token is refused rather than left looking')
})

t.test('identity: a rotated secret survives a restart with the first token; an unknown one replaces it', async t => {
  const dir = tmpDir(t)
  const [s1, s2, s3] = [newSecret(), newSecret(), newSecret()]
  const boot = [{ host: '127.0.0.1', port: 4000 }]
  const token1 = decodeToken(encodeToken(s1, boot))
  const first = loadIdentity(dir, token1, [])
  t.ok(first.secrets.current.equals(s1), 'joining with a token takes its secret')
  saveSecrets(dir, { current: s2, next: null, previous: s1 })
  const again = loadIdentity(dir, token1, [])
  t.ok(again.secrets.current.equals(s2) && again.secrets.previous?.equals(s1) === true, 'restarted with the first token (its command line), it keeps the rotated secret')
  t.notOk(again.rotatedWhileDown)
  t.ok(again.keyPair.publicKey.equals(first.keyPair.publicKey), 'and its key')
  const back = loadIdentity(dir, decodeToken(encodeToken(s3, boot)), [])
  t.ok(back.rotatedWhileDown, 'a token with a secret the store does not know: rotated while it was down')
  t.ok(back.secrets.current.equals(s3) && back.secrets.previous?.equals(s2) === true, 'it becomes current, the old current previous')
  t.ok(back.keyPair.publicKey.equals(first.keyPair.publicKey), 'the key stays')
  const saved = JSON.parse(fs.readFileSync(path.join(dir, 'cluster.json'), 'utf8')) as Record<string, unknown>
  t.same(Object.keys(saved).sort(), ['bootstrap', 'format', 'previous', 'secret', 'seed'], 'saved as format 1 with the optional fields')
  fs.writeFileSync(path.join(dir, 'cluster.json'), JSON.stringify({ ...saved, next: 'xyz' }))
  t.throws(() => loadIdentity(dir, null, []), /not a cluster identity this version understands/, 'a malformed next secret is refused')
})
