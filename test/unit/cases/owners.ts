// `sheep image create`'s --owner, --group and --mode (bin/owners.ts).

import t from 'tap'
import { MAX_ID, parseMode, resolveId } from '../../../bin/owners'

t.test('parseMode reads octal modes as chmod(1) does, and nothing else', async t => {
  const ok: Array<[string, number]> = [['0600', 0o600], ['600', 0o600], ['0', 0], ['640', 0o640], ['0o644', 0o644], ['1777', 0o1777], ['7777', 0o7777], ['04755', 0o4755]]
  for (const [text, mode] of ok) t.equal(parseMode(text), mode, text)
  for (const text of ['', '8', '0608', '17777', '00600x', 'rw-------', 'u=rw', '-600', '0x180', ' 600', '600 ', '6.0']) t.equal(parseMode(text), null, JSON.stringify(text))
})

t.test('resolveId takes numbers as they are and names through NSS', async t => {
  t.equal(resolveId('passwd', '0'), 0)
  t.equal(resolveId('passwd', '107'), 107, 'a number needs no such user')
  t.equal(resolveId('group', String(MAX_ID)), MAX_ID)
  t.match(resolveId('passwd', String(MAX_ID + 1)), /^user id 4294967295 is past 4294967294$/, '(uid_t)-1 is chown\'s "unchanged"')
  t.equal(resolveId('passwd', 'root'), 0, 'root by name')
  t.equal(resolveId('group', 'root'), 0, 'group root by name')
  t.match(resolveId('passwd', 'no-such-user-sheep'), /^no user "no-such-user-sheep" on this host$/)
  t.match(resolveId('group', 'no-such-group-sheep'), /^no group "no-such-group-sheep" on this host$/)
  for (const text of ['', '-1', 'a b', 'root:root', '../x', '1.5']) t.match(resolveId('passwd', text), /is not a user name or number|past/, JSON.stringify(text))
})
