// Prometheus counters of the request plane's trust checks (trust.ts), read from the plane's Ingress at scrape time.
import { Counter, type Registry } from 'prom-client';
import type { IngressTrustCounters } from './ingress.js';

const NAMES: Record<keyof IngressTrustCounters, [string, string]> = {
  unauthenticated: ['dynamo_component_request_plane_unauthenticated_total', 'Requests refused for a missing or invalid request-plane proof'],
  replyAddressRefused: ['dynamo_component_request_plane_reply_address_refused_total', 'Requests refused because their reply address is not allowed'],
  replyWriteTimeouts: ['dynamo_component_reply_write_timeouts_total', 'Reply streams cut (and their requests cancelled) because the reader stopped reading'],
};

/** Registers one counter per trust outcome of `counters` (an Ingress's `trustCounters`) in `registry`. */
export function registerTrustMetrics(registry: Registry, counters: Readonly<IngressTrustCounters>): void {
  for (const key of Object.keys(NAMES) as Array<keyof IngressTrustCounters>) {
    const [name, help] = NAMES[key];
    let exported = 0;
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const now = counters[key];
        if (now > exported) this.inc(now - exported);
        exported = now;
      },
    });
  }
}
