// A worker thread of the replication simulator's test: runs the seeds it is given, a few at once
// (a seed mostly waits on its timers and its store's thread pool), and posts each seed's outcome.
// Its own thread keeps the seeds clear of tap's async hooks, which cost a quarter of a seed's CPU.

import { parentPort, workerData } from 'node:worker_threads'
import { runSeed, type SeedRun } from './replication-sim'

interface Work { seeds: number[], atOnce: number }

async function main (): Promise<void> {
  const { seeds, atOnce } = workerData as Work
  let next = 0
  const lane = async (): Promise<void> => {
    while (next < seeds.length) {
      const seed = seeds[next++] as number
      let run: SeedRun
      try {
        run = await runSeed(seed)
      } catch (err) {
        run = { seed, failures: [`the seed threw: ${(err as Error).stack ?? String(err)}`], diverged: [], log: [] }
      }
      // The log is large: only a seed that went wrong sends it.
      parentPort?.postMessage(run.failures.length > 0 || run.diverged.length > 0 ? run : { ...run, log: [] })
    }
  }
  await Promise.all(Array.from({ length: atOnce }, lane))
}

void main()
