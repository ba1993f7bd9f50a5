// The frontend's prefill router (reference §3.1): when a model has prefill workers (cards with model_type Prefill
// under the same display name), each request first goes to one of them with max_tokens 1 and a fresh
// bootstrap_room, in the background, and the decode request leaves as soon as the prefill worker accepted it,
// carrying the same bootstrap_info; the decode worker fetches the prompt's KV pages from that prefill worker's
// bootstrap server by room. The prefill request is not tied to the client's cancellation: the prefill side must
// see the transfer through (or time out) to release its pages. A decode request that failed on its KV transfer
// before any token may be migrated like a dead worker's (discovered-models.ts): it is routed again, to a prefill
// worker that can be reached. Without prefill workers requests pass through unchanged (aggregated serving).
import { errorFromItem } from '../protocol/transport.js';
import { LlmError } from '../errors.js';
import { EndpointClient } from '../runtime/client.js';
import type { Discovery, RecordWatch } from '../runtime/discovery/index.js';
import type { ResponseServer } from '../runtime/request-plane/response-server.js';
import type { ModelRecord } from '../protocol/discovery.js';
import type { Annotated } from '../protocol/transport.js';
import { modelTypeFromWire, ModelTypeFlag } from '../protocol/mdc.js';
import { BootstrapInfoSchema, type BootstrapInfo, type PreprocessedRequest } from '../protocol/request.js';
import { LlmResponseChunkSchema } from '../protocol/response.js';
import { parseWire } from '../protocol/validate.js';
import { randomBootstrapRoom } from '../disagg/service.js';
import { logger } from '../runtime/log.js';

const log = logger('frontend.discovery');

export interface PrefillRouterOptions {
  discovery: Discovery;
  namespace?: string;
  responses: ResponseServer;
  log?: (line: string) => void;
}

interface PrefillWorker {
  endpointKey: string;
  record: ModelRecord;
  bootstrap: { bootstrap_host: string; bootstrap_port: number } | null;
}

export class PrefillRouter {
  private workers = new Map<string, PrefillWorker[]>();
  /** Models seen with prefill workers (their other workers decode only), until the model leaves discovery. */
  private readonly disaggregated = new Set<string>();
  /** Disaggregated models whose prefill workers are all gone (logged once). */
  private readonly lostPrefill = new Set<string>();
  private readonly clients = new Map<string, Promise<EndpointClient>>();
  private next = 0;

  private constructor(
    private readonly options: PrefillRouterOptions,
    private readonly watch: RecordWatch<ModelRecord>,
  ) {
    watch.onChange((records) => this.refresh(records));
  }

  static async create(options: PrefillRouterOptions): Promise<PrefillRouter> {
    const watch = options.discovery.watchModels(options.namespace);
    await watch.ready;
    const router = new PrefillRouter(options, watch);
    router.refresh(watch.list());
    return router;
  }

  /** True when `model` is served disaggregated: it has prefill workers, or had them and still has workers that
   * need them (its decode workers cannot answer a request without a prefill worker). */
  serves(model: string): boolean {
    return (this.workers.get(model)?.length ?? 0) > 0 || this.disaggregated.has(model);
  }

  /** Starts the prefill half of a request in the background and returns the decode request to send now. The
   * prefill request is sent once accepted by a prefill worker (an ACK, not its completion): one that cannot be
   * reached is marked down and the next is tried, so a dead prefill worker costs no decode-side timeout. */
  async route(model: string, request: PreprocessedRequest): Promise<PreprocessedRequest> {
    const workers = this.workers.get(model);
    if (!workers?.length) {
      if (!this.disaggregated.has(model)) return request;
      // an outage, not the client's fault: the decode workers would refuse the request for lack of bootstrap info
      throw new LlmError('LLM_ERR_TRANSPORT', `model "${model}" is served disaggregated and none of its prefill workers is in discovery`);
    }
    const tried = new Set<bigint>();
    let lastError: unknown;
    for (;;) {
      const candidates: PrefillWorker[] = [];
      for (const w of workers) {
        const id = w.record.instance_id;
        if (!tried.has(id) && (await this.client(w.record)).available().some((r) => r.instance_id === id)) candidates.push(w);
      }
      if (!candidates.length) {
        const why = lastError instanceof Error ? `: ${lastError.message}` : '';
        throw new LlmError('LLM_ERR_TRANSPORT', `model "${model}": none of its ${workers.length} prefill worker(s) can be reached${why}`);
      }
      const worker = candidates[this.next++ % candidates.length];
      try {
        const info = await this.startPrefill(worker, request);
        return {
          ...request,
          bootstrap_info: info,
          router_config_override: { ...request.router_config_override, overlap_score_weight: 0, assume_kv_reuse: false, track_prefill_tokens: false },
        };
      } catch (err) {
        // an instance that refused the request never saw it: another may take it
        if (!(err instanceof LlmError && (err.code === 'LLM_ERR_TRANSPORT' || err.code === 'LLM_ERR_TIMEOUT'))) throw err;
        tried.add(worker.record.instance_id);
        lastError = err;
      }
    }
  }

  /** Sends the prefill request (max_tokens 1) and leaves its stream draining; returns the bootstrap info. */
  private async startPrefill(worker: PrefillWorker, request: PreprocessedRequest): Promise<BootstrapInfo> {
    const client = await this.client(worker.record);
    const prefillRequest = (bootstrap: BootstrapInfo | null): PreprocessedRequest => ({
      ...request,
      stop_conditions: { ...request.stop_conditions, max_tokens: 1 },
      bootstrap_info: bootstrap,
      routing: { ...request.routing, prefill_worker_id: worker.record.instance_id },
    });
    if (worker.bootstrap) {
      const info = { ...worker.bootstrap, bootstrap_room: randomBootstrapRoom() };
      const stream = await client.direct(prefillRequest(info), worker.record.instance_id);
      this.drain(stream[Symbol.asyncIterator](), worker);
      return info;
    }
    // No published bootstrap endpoint: the prefill worker's first chunk says where to fetch the pages.
    const stream = (await client.direct(prefillRequest(null), worker.record.instance_id))[Symbol.asyncIterator]();
    const info = await firstBootstrap(stream, worker.endpointKey);
    this.drain(stream, worker);
    return info;
  }

  close(): void {
    this.watch.close();
    for (const c of this.clients.values()) void c.then((client) => client.close(), () => undefined);
  }

  private drain(stream: AsyncIterator<Annotated>, worker: PrefillWorker): void {
    void (async () => {
      for (let r = await stream.next(); !r.done; r = await stream.next()) {
        const annotated = r.value;
        if (annotated.event === 'error' || annotated.error !== undefined) {
          throw new LlmError('LLM_ERR_KV_TRANSFER', `prefill worker ${worker.record.instance_id.toString(16)}: ${errorFromItem(annotated).message}`);
        }
      }
    })().catch((err: unknown) => this.options.log?.(`prefill request on ${worker.endpointKey} failed: ${(err as Error).message}`));
  }

  private refresh(records: ModelRecord[]): void {
    const workers = new Map<string, PrefillWorker[]>();
    for (const r of records) {
      const card = r.card_json;
      let bits: number;
      try {
        bits = modelTypeFromWire(card.model_type);
      } catch {
        continue;
      }
      if ((bits & ModelTypeFlag.Prefill) === 0) continue;
      const list = workers.get(card.display_name) ?? [];
      list.push({ endpointKey: `${r.namespace}/${r.component}/${r.endpoint}`, record: r, bootstrap: card.runtime_config?.disaggregated_endpoint ?? null });
      workers.set(card.display_name, list);
    }
    for (const [name, list] of workers) if (!this.workers.has(name)) this.options.log?.(`model "${name}": ${list.length} prefill worker(s), serving disaggregated`);
    // outages logged once each, with their recovery
    const named = new Set(records.map((r) => r.card_json.display_name));
    for (const name of workers.keys()) {
      this.disaggregated.add(name);
      if (this.lostPrefill.delete(name)) log.info('model has prefill workers again', { model: name, prefillWorkers: workers.get(name)?.length });
    }
    for (const name of [...this.disaggregated]) {
      if (!named.has(name)) {
        // the model left discovery altogether: if it comes back it may be served aggregated
        this.disaggregated.delete(name);
        this.lostPrefill.delete(name);
      } else if (!workers.has(name) && !this.lostPrefill.has(name)) {
        this.lostPrefill.add(name);
        log.error('model has no prefill worker left: its requests get 503 until one registers', { model: name });
      }
    }
    this.workers = workers;
  }

  private client(r: ModelRecord): Promise<EndpointClient> {
    const key = `${r.namespace}/${r.component}/${r.endpoint}`;
    let c = this.clients.get(key);
    if (c === undefined) {
      c = EndpointClient.create({ discovery: this.options.discovery, namespace: r.namespace, component: r.component, endpoint: r.endpoint, responses: this.options.responses });
      this.clients.set(key, c);
    }
    return c;
  }
}

async function firstBootstrap(stream: AsyncIterator<Annotated>, where: string): Promise<BootstrapInfo> {
  for (let r = await stream.next(); !r.done; r = await stream.next()) {
    const annotated = r.value;
    if (annotated.event === 'error' || annotated.error !== undefined) {
      throw new LlmError('LLM_ERR_KV_TRANSFER', `prefill worker on ${where} failed before giving its bootstrap info: ${errorFromItem(annotated).message}`);
    }
    if (annotated.data === undefined) continue;
    const chunk = parseWire(LlmResponseChunkSchema, annotated.data, 'prefill response', 'LLM_ERR_PROTOCOL');
    return parseWire(BootstrapInfoSchema, chunk.disaggregated_params, 'prefill disaggregated_params', 'LLM_ERR_PROTOCOL');
  }
  throw new LlmError('LLM_ERR_KV_TRANSFER', `prefill worker on ${where} ended its stream without bootstrap info`);
}
