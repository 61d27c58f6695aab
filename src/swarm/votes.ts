// Votes on views, signed with the node's own key pair. The Noise key pair hyperdht makes from the
// node's seed is an ed25519 signing key pair (crypto_sign_seed_keypair in hyperdht/lib/crypto.js),
// and its public key is the node id: so a vote can be checked by anyone who knows the voter's id,
// and made only by the node that holds the seed. The cluster secret plays no part: every member
// knows it, so it cannot tell one member's word from another's.

import sodium from 'sodium-native'
import { encode, voteBody } from './messages'
import type { Ballot, VoteSigner } from './view-agreement'
import type { View } from './view'

const DOMAIN = Buffer.from('sheep/1 vote\0')
const NODE_ID = /^[0-9a-f]{64}$/
const SIGNATURE = /^[0-9a-f]{128}$/

function message (ballot: Ballot, view: View): Buffer {
  return Buffer.concat([DOMAIN, encode(voteBody, { ballot, view })])
}

/** The vote signer of the node whose key pair this is. */
export function voteSigner (keyPair: { publicKey: Buffer, secretKey: Buffer }): VoteSigner {
  return {
    sign (ballot, view) {
      const signature = Buffer.alloc(sodium.crypto_sign_BYTES)
      sodium.crypto_sign_detached(signature, message(ballot, view), keyPair.secretKey)
      return signature.toString('hex')
    },
    verify: voteIsValid
  }
}

/** Whether signature is the vote of node `voter` (its id, the public key in hex) for view under ballot. */
export function voteIsValid (voter: string, ballot: Ballot, view: View, signature: string): boolean {
  if (!NODE_ID.test(voter) || !SIGNATURE.test(signature)) return false
  try {
    return sodium.crypto_sign_verify_detached(Buffer.from(signature, 'hex'), message(ballot, view), Buffer.from(voter, 'hex'))
  } catch {
    // A view that does not encode (a member record out of range) has no valid vote.
    return false
  }
}
