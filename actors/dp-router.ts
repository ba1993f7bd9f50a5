// The worker's data-parallel router (--dp-size N): chooses, per request, which of the worker's N groups (each a
// Supervisor over its own scheduler, TP ranks and KV pool) serves it. A request that names a data-parallel rank
// (routing.dp_rank, the frontend KV router's choice; u32::MAX means unset) goes to that group; one that does not goes
// to the group with the least KV usage (pages held by requests, over the pool), then the shortest queue (requests this
// router sent there and not finished), then the lowest rank. A group that fails restarts on its own (its Supervisor);
// the others keep serving. With one group every request goes to it. It runs on the main thread, beside the
// supervisors it picks from: a choice reads their load snapshots, nothing crosses a thread.
import { LlmError } from '../src/errors.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';
import type { GenerateOptions, Supervisor, SupervisorLoad } from './supervisor.js';

/** routing.dp_rank's "unset" (u32::MAX), as the reference writes it. */
export const DP_RANK_UNSET = 0xffff_ffff;

export class DataParallelRouter {
  /** Requests sent to each group and not finished yet: counted here too, so a burst that arrives between two load
   * samples still spreads. */
  private readonly inflight: number[];

  /** `groups[d]` serves data-parallel rank d. */
  constructor(readonly groups: readonly Supervisor[]) {
    if (groups.length === 0) throw new LlmError('LLM_ERR_INTERNAL', 'a data-parallel router needs at least one group');
    groups.forEach((g, d) => {
      if (g.dpRank !== d) throw new LlmError('LLM_ERR_INTERNAL', `group ${d} serves dp rank ${g.dpRank}`);
    });
    this.inflight = groups.map(() => 0);
  }

  /** The group a request goes to. Throws LLM_ERR_BAD_REQUEST for a dp_rank this worker does not have. */
  pick(request: PreprocessedRequest): Supervisor {
    const named = request.routing?.dp_rank;
    if (named !== undefined && named !== null && named !== DP_RANK_UNSET) {
      if (named >= this.groups.length) {
        throw new LlmError('LLM_ERR_BAD_REQUEST', `routing.dp_rank ${named}: this worker has data-parallel ranks 0..${this.groups.length - 1}`);
      }
      return this.groups[named];
    }
    let best = 0;
    let bestKey: [number, number] | null = null;
    this.groups.forEach((g, d) => {
      const key = this.loadKey(g, d);
      if (bestKey === null || key[0] < bestKey[0] || (key[0] === bestKey[0] && key[1] < bestKey[1])) {
        best = d;
        bestKey = key;
      }
    });
    return this.groups[best];
  }

  /** Streams the request on the group pick() chooses. */
  async *generate(request: PreprocessedRequest, options: GenerateOptions = {}): AsyncGenerator<LlmResponseChunk> {
    const group = this.pick(request);
    const d = group.dpRank;
    this.inflight[d]++;
    try {
      yield* group.generate(request, options);
    } finally {
      this.inflight[d]--;
    }
  }

  /** KV usage (the fraction of the pool held by requests, as of the group's last step; 0 before its first), then the
   * requests this router has in the group (waiting or running: exact, where the step's counts lag). A restarting
   * group sorts last: its requests would wait for the restart. */
  private loadKey(group: Supervisor, d: number): [number, number] {
    if (!group.serving) return [Number.POSITIVE_INFINITY, this.inflight[d]];
    const load: SupervisorLoad = group.load();
    const used = Math.max(0, load.kvUsedPages - load.kvEvictablePages);
    return [load.kvTotalPages > 0 ? used / load.kvTotalPages : 0, this.inflight[d]];
  }
}
