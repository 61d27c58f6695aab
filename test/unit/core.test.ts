// The unit tests of the pure layers, run in one process (each test file costs a process start):
// object ids, sizes and names, the owner table, the inode and directory codecs, the control
// request parser, the command's owner and mode options, the async locks, placement, the peer
// codecs, the replica's checks, the admission gate and the secrets a store keeps. Each group
// lives in ./cases/.

import './cases/oid'
import './cases/units-names'
import './cases/owner-table'
import './cases/codecs'
import './cases/control-parse'
import './cases/owners'
import './cases/lock'
import './cases/placement'
import './cases/peer-messages'
import './cases/replica'
import './cases/admission'
