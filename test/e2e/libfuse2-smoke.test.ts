// The libfuse 2 fallback (fuse-native) on the core cases: the daemons of this file run with
// SHEEP_FUSE=libfuse2 (./use-libfuse2.ts), and the cases of ./qemu-patterns.test.ts and
// ./data-integrity.test.ts run against them. The full suite runs on the default, the kernel
// protocol. Also: which session runs is chosen by --fuse or SHEEP_FUSE and shown by status.

import './use-libfuse2'
import './qemu-patterns.test'
import './data-integrity.test'
import t from 'tap'
import { startDaemon } from '../helpers/daemon'

interface Status { fuse: { frontend: string, inFlight?: Record<string, number>, requests?: Record<string, { count: number }> } | null }

t.test('--fuse and SHEEP_FUSE choose the session; status and the log say which runs', async t => {
  const fallback = await startDaemon(t)
  const s = JSON.parse(fallback.sheep(['status', '--json', '--mount', fallback.mount]).stdout) as Status
  t.same(s.fuse, { frontend: 'libfuse2' }, 'SHEEP_FUSE=libfuse2')
  t.match(fallback.log, /fuse: libfuse 2/, 'the log says so')
  t.match(fallback.sheep(['status', '--mount', fallback.mount]).stdout, /^fuse: +libfuse 2/m)

  const kernel = await startDaemon(t, ['--fuse', 'kernel'])
  const k = JSON.parse(kernel.sheep(['status', '--json', '--mount', kernel.mount]).stdout) as Status
  t.equal(k.fuse?.frontend, 'kernel', '--fuse kernel wins over the environment')
  t.ok((k.fuse?.requests?.init?.count ?? 0) === 1, 'one INIT counted')
  t.match(kernel.log, /fuse: kernel protocol 7\.31/, 'the log says so')
  t.match(kernel.sheep(['status', '--mount', kernel.mount]).stdout, /^fuse: +kernel protocol; requests in flight: /m)

  const bad = fallback.sheep(['start', '--fuse', 'fuse3', '--store', '/nonexistent', '--mount', '/nonexistent'])
  t.equal(bad.code, 2, 'an unknown session is a usage error')
  t.match(bad.stderr, /bad --fuse "fuse3": kernel or libfuse2/)
})
