// Bounds a command's shutdown: once SIGTERM or SIGINT arrives, the process has `timeoutMs` to finish its drain
// (servers closed, streams ended, threads stopped). A step that never settles (a pending promise, a thread that
// does not stop) would otherwise keep the process alive for good; at the bound the process exits, with a log line
// naming the bound. The timer is unref'd: it never keeps a process alive that would end on its own.
import { logger } from '../runtime/log.js';

const log = logger('cli.shutdown');

/** What closing takes beyond a worker's grace period (threads, servers, the event plane); the frontend's whole bound. */
export const SHUTDOWN_MARGIN_MS = 10_000;

/** Exit code of a shutdown cut short by its bound. */
export const SHUTDOWN_TIMEOUT_EXIT_CODE = 1;

export function armShutdownWatchdog(timeoutMs: number, what: string): void {
  const arm = (sig: NodeJS.Signals) => {
    process.off('SIGTERM', arm);
    process.off('SIGINT', arm);
    setTimeout(() => {
      log.error('shutdown did not finish within its drain timeout: exiting', { command: what, signal: sig, timeoutMs });
      process.exit(SHUTDOWN_TIMEOUT_EXIT_CODE);
    }, timeoutMs).unref();
  };
  process.on('SIGTERM', arm);
  process.on('SIGINT', arm);
}
