// Router recovery from a worker's local KV indexer (reference §5.1): with the local indexer on (not
// `--durable-kv-events`, not a disagg decode worker) each worker keeps its last 1024 KV events per dp rank and serves
// `worker_kv_indexer_query_dp{rank}` on the request plane, so a router that starts after the worker (or lost events)
// can catch up. The shapes follow Dynamo's `WorkerKvQueryRequest` / `WorkerKvQueryResponse` (lib/kv-router,
// indexer): a JSON request body, and one response item, a serde externally tagged enum (`{"Events": {...}}`,
// `{"TreeDump": {...}}`, `{"TooNew": {...}}`, `{"InvalidRange": {...}}`, `{"Error": "..."}`).
import { Type, type StaticDecode } from '@sinclair/typebox';
import { Nullable, Opt, U32, U64 } from './common.js';
import { RouterEventSchema } from './events.js';

/** Events each dp rank's local indexer keeps (Dynamo's WORKER_KV_INDEXER_BUFFER_SIZE). */
export const WORKER_KV_INDEXER_BUFFER_SIZE = 1024;

/** `worker_kv_indexer_query_dp{rank}`: one query endpoint per dp rank. */
export function workerKvIndexerQueryEndpoint(dpRank: number): string {
  return `worker_kv_indexer_query_dp${dpRank}`;
}

export const WorkerKvQueryRequestSchema = Type.Object(
  {
    worker_id: U64({ description: 'the queried worker (its instance id); another id is answered with Error' }),
    dp_rank: Type.Optional(U32()),
    start_event_id: Opt(U64({ description: 'first event wanted (inclusive); absent or null: a dump of every cached block' })),
    end_event_id: Opt(U64({ description: 'last event wanted (inclusive), for validation; answers run to the newest event' })),
  },
  { $id: 'WorkerKvQueryRequest', title: 'WorkerKvQueryRequest' },
);
export type WorkerKvQueryRequest = StaticDecode<typeof WorkerKvQueryRequestSchema>;

const EventBatchSchema = Type.Object({
  events: Type.Array(RouterEventSchema),
  last_event_id: U64({ description: "the worker's newest event id when answering (0 when it has none)" }),
});

export const WorkerKvQueryResponseSchema = Type.Union(
  [
    Type.Object(
      { Events: EventBatchSchema },
      { additionalProperties: false, description: 'buffered events with their own ids, from start_event_id to the newest' },
    ),
    Type.Object(
      { TreeDump: EventBatchSchema },
      {
        additionalProperties: false,
        description: 'every cached block as stored events with synthetic ids 0..: the range was not asked for or is older than the buffer',
      },
    ),
    Type.Object(
      { TooNew: Type.Object({ requested_start: Nullable(U64()), requested_end: Nullable(U64()), newest_available: U64() }) },
      { additionalProperties: false },
    ),
    Type.Object({ InvalidRange: Type.Object({ start_id: U64(), end_id: U64() }) }, { additionalProperties: false }),
    Type.Object({ Error: Type.String() }, { additionalProperties: false }),
  ],
  { $id: 'WorkerKvQueryResponse', title: 'WorkerKvQueryResponse' },
);
export type WorkerKvQueryResponse = StaticDecode<typeof WorkerKvQueryResponseSchema>;
