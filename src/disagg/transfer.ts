// Which transfer moves a room's KV pages (--disaggregation-transfer-backend):
//  - tcp: host-staged pages over the bootstrap connection (any backends, any hosts; page size and dtype converted);
//  - cuda-ipc: GPU to GPU within a node, no host copy (both workers on the cuda backend on the same machine); asked
//    for explicitly, anything that rules it out is an error naming the reason;
//  - auto (default): cuda-ipc where both sides can, else tcp.
// The decode side offers what it takes in its fetch; the prefill side picks. Same node = equal hostname and
// /proc/sys/kernel/random/boot_id (a container on another machine may share a hostname, never a boot id).
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { LlmError } from '../errors.js';
import type { BackendKind } from '../engine/types.js';
import type { NodeIdentity, TransferKind } from './frames.js';

/** --disaggregation-transfer-backend values that move pages ('fake' moves none and is handled before). */
export type TransferMode = 'tcp' | 'cuda-ipc' | 'auto';

let node: NodeIdentity | undefined;

export function thisNode(): NodeIdentity {
  if (!node) {
    let bootId = '';
    try {
      bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      // no boot id (not Linux): never the same node as anyone, so the GPU path is never picked by auto
    }
    node = { hostname: hostname(), boot_id: bootId };
  }
  return node;
}

export function sameNode(a: NodeIdentity, b: NodeIdentity): boolean {
  return a.boot_id !== '' && a.hostname === b.hostname && a.boot_id === b.boot_id;
}

function describeNode(n: NodeIdentity): string {
  return `${n.hostname} (boot id ${n.boot_id || 'unknown'})`;
}

/** Refuses, at start, a mode this worker's own backend cannot serve. */
export function checkTransferMode(mode: TransferMode, backend: BackendKind, role: 'prefill' | 'decode'): void {
  if (mode === 'cuda-ipc' && backend !== 'cuda') {
    throw new LlmError(
      'LLM_ERR_CONFIG',
      `--disaggregation-transfer-backend cuda-ipc moves KV pages GPU to GPU, but this ${role} worker runs the ${backend} backend; use --device cuda, or --disaggregation-transfer-backend tcp (or auto)`,
    );
  }
}

/** What a decode worker offers, in order of preference. */
export function decodeOffer(mode: TransferMode, backend: BackendKind, ipcUsable: boolean): TransferKind[] {
  if (mode === 'tcp') return ['tcp'];
  if (mode === 'cuda-ipc') return ['cuda-ipc'];
  return backend === 'cuda' && ipcUsable ? ['cuda-ipc', 'tcp'] : ['tcp'];
}

export interface PrefillSide {
  mode: TransferMode;
  backend: BackendKind;
  node: NodeIdentity;
  /** Whether this worker holds its pages for the GPU path (cuda backend, mode not tcp, pool exported). */
  ipcReady: boolean;
}

/** The prefill side's pick for one fetch; throws LLM_ERR_KV_TRANSFER naming why no offered transfer works. */
export function pickTransfer(prefill: PrefillSide, offer: readonly TransferKind[], decodeNode: NodeIdentity | null): TransferKind {
  const why: string[] = [];
  for (const kind of offer) {
    if (kind === 'tcp') {
      if (prefill.mode !== 'cuda-ipc') return 'tcp';
      why.push('tcp: this prefill worker runs with --disaggregation-transfer-backend cuda-ipc');
      continue;
    }
    if (prefill.mode === 'tcp') why.push('cuda-ipc: this prefill worker runs with --disaggregation-transfer-backend tcp');
    else if (prefill.backend !== 'cuda') why.push(`cuda-ipc: this prefill worker runs the ${prefill.backend} backend`);
    else if (!decodeNode || !sameNode(prefill.node, decodeNode)) {
      why.push(`cuda-ipc: the prefill worker is on ${describeNode(prefill.node)}, the decode worker on ${decodeNode ? describeNode(decodeNode) : 'an unknown node'}`);
    } else if (!prefill.ipcReady) why.push('cuda-ipc: this prefill worker could not export its KV pool');
    else return 'cuda-ipc';
  }
  throw new LlmError('LLM_ERR_KV_TRANSFER', `no KV transfer both sides can use (decode offers ${offer.join(', ')}): ${why.join('; ')}`);
}
