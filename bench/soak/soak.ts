// The fault soak, shared by test/fault-soak.test.ts (bounded) and bench/soak/run.ts (long, with figures): a seeded
// random schedule of greedy completions and chats (streamed and whole), clients that go away at random moments, and
// the hostile requests, sent at a fixed concurrency through a real deployment (bench/soak/deployment.ts) while a
// worker is SIGKILLed and replaced, etcd is restarted and NATS is restarted. Greedy sampling makes every answer
// known: each (api, prompt, max_tokens) is asked once, unfaulted, before the soak, and every response the soak
// completes must equal it. Every request has a deadline, so a hang is counted, not waited for.
import { SoakDeployment, SOAK_MODEL, metricSum, rssBytes, type DeploymentOptions, type SoakWorker } from './deployment.js';

export interface SoakOptions {
  requests: number;
  concurrency: number;
  seed: number;
  /** Per-request deadline: a request still open after it counts as hung. */
  deadlineMs: number;
  /** Share of requests whose client disconnects at a random moment. */
  disconnectShare: number;
  deployment: DeploymentOptions;
  /** Progress lines (faults, milestones); silent when absent. */
  progress?: (line: string) => void;
}

export const DEFAULT_DEPLOYMENT: DeploymentOptions = { workers: 2, migrationLimit: 3, routerMode: 'kv', streamDelayMs: 5 };

type Api = 'completions' | 'chat';
type HostileKind = 'prompts-20000-n16' | 'choices-64000' | 'prompt-5MB';
const HOSTILE_KINDS: readonly HostileKind[] = ['prompts-20000-n16', 'choices-64000', 'prompt-5MB'];

interface Plain {
  api: Api;
  stream: boolean;
  prompt: string;
  maxTokens: number;
}

type Planned =
  | ({ kind: 'normal' } & Plain)
  | ({ kind: 'disconnect'; afterMs: number; afterEvents: number } & Plain)
  | { kind: 'hostile'; hostile: HostileKind };

/** What became of one request. */
type Outcome =
  | { result: 'ok'; ms: number }
  | { result: 'cancelled' }
  | { result: 'refused'; status: number; ms: number }
  | { result: 'lost' | 'wrong' | 'hung'; detail: string };

export interface FaultRecord {
  fault: string;
  /** Requests finished when it began, and when it was over (both below the total: it happened under load). */
  atRequest: number;
  endRequest: number;
  ms: number;
}

export interface WorkerFigures {
  instanceId: string;
  /** sglang:num_used_tokens (KV pages held by requests, in tokens) when idle before the soak, and after it. */
  kvUsedTokensBefore: number;
  kvUsedTokensAfter: number;
  runningAfter: number;
  inflightAfter: number;
  rssBefore: number | null;
  rssAfter: number | null;
  cancellations: number;
  aborted: number;
  /** Requests it received (dynamo_component_requests_total). */
  served: number;
}

export interface SoakReport {
  requests: number;
  completed: number;
  cancelled: number;
  /** Disconnect requests whose answer came back before the client left (checked like any other). */
  disconnectsCompletedFirst: number;
  refused: number;
  lost: string[];
  wrong: string[];
  hung: string[];
  /** Hostile requests that were not refused with a 4xx (any other status, or no answer). */
  hostileNotRefused: string[];
  hostileStatuses: Record<string, number[]>;
  hostileMaxMs: number;
  latencyMs: { p50: number; p99: number; max: number };
  /** The three slowest completed requests: what they were and when they started (requests finished by then). */
  slowest: string[];
  faults: FaultRecord[];
  workers: WorkerFigures[];
  frontendRss: { before: number | null; after: number | null };
  /** Time from the last request's end until every worker reported nothing running or in flight. */
  idleAfterMs: number;
  durationS: number;
  expectedAnswers: number;
}

/** mulberry32: a small seeded generator, so a failing schedule can be run again exactly. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const PROMPTS = [
  'Once upon a time',
  'Once upon a time there was a dog',
  'Lily and Tom went to the park',
  'The little cat saw a big red ball',
  'One day, Ben found a box',
  'Sue had a new doll. She',
  'The sun was hot and the kids',
  'Max was sad because',
];
const MAX_TOKENS = [8, 24, 48];

function plan(options: SoakOptions): Planned[] {
  const random = rng(options.seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
  const schedule: Planned[] = [];
  for (let i = 0; i < options.requests; i++) {
    const plain: Plain = { api: random() < 0.5 ? 'completions' : 'chat', stream: random() < 0.5, prompt: pick(PROMPTS), maxTokens: pick(MAX_TOKENS) };
    const roll = random();
    if (roll < 0.01) schedule.push({ kind: 'hostile', hostile: pick(HOSTILE_KINDS) });
    else if (roll < 0.01 + options.disconnectShare) {
      schedule.push({ kind: 'disconnect', ...plain, afterMs: Math.floor(random() * 300), afterEvents: 1 + Math.floor(random() * 12) });
    } else schedule.push({ kind: 'normal', ...plain });
  }
  // each hostile kind at least once, at seeded places spread over the run
  HOSTILE_KINDS.forEach((hostile, k) => {
    const at = Math.floor(((k + 0.5 + random() * 0.5) / HOSTILE_KINDS.length) * (options.requests - 1));
    schedule[at] = { kind: 'hostile', hostile };
  });
  return schedule;
}

let hostileBodies: Record<HostileKind, string> | undefined;
function hostileBody(kind: HostileKind): string {
  hostileBodies ??= {
    // ~100 KB: 20,000 prompts x n=16 = 320,000 choices
    'prompts-20000-n16': JSON.stringify({ model: SOAK_MODEL, prompt: Array.from({ length: 20_000 }, () => 'hi'), n: 16, max_tokens: 1 }),
    'choices-64000': JSON.stringify({ model: SOAK_MODEL, prompt: Array.from({ length: 4_000 }, () => 'hi'), n: 16, max_tokens: 1 }),
    'prompt-5MB': JSON.stringify({ model: SOAK_MODEL, prompt: 'once upon a time '.repeat(5 * 1024 * 1024 / 17), max_tokens: 1 }),
  };
  return hostileBodies[kind];
}

function requestBody(p: Plain): string {
  const common = { model: SOAK_MODEL, max_tokens: p.maxTokens, temperature: 0, stream: p.stream };
  return JSON.stringify(p.api === 'chat' ? { ...common, messages: [{ role: 'user', content: p.prompt }] } : { ...common, prompt: p.prompt });
}

const keyOf = (p: Plain) => `${p.api}|${p.maxTokens}|${p.prompt}`;

interface Answer {
  text: string;
  finish: string | null;
}

interface ChoicePayload {
  text?: string;
  delta?: { content?: string | null };
  message?: { content?: string | null };
  finish_reason?: string | null;
}

function choiceText(c: ChoicePayload | undefined): string {
  return c?.text ?? c?.delta?.content ?? c?.message?.content ?? '';
}

/**
 * `work`, or the signal's reason once it aborts. Node 20's fetch leaves the next body read pending forever when the
 * abort comes after the whole body has arrived (a client leaving at the last event; reproduced against a plain
 * node:http server, so not a server fault): the soak must neither wait on that read nor call it a hang.
 */
function untilAbort<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    work.catch(() => undefined);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/**
 * Sends one plain request and reads its whole answer. `cut` (optional) is called after each streamed event with
 * the count so far and may abort. Throws on a transport error or abort; a non-200 or an error event is returned.
 */
async function ask(url: string, p: Plain, signal: AbortSignal, onEvent?: (events: number) => void): Promise<{ status: number; answer?: Answer; error?: string }> {
  const path = p.api === 'chat' ? '/v1/chat/completions' : '/v1/completions';
  const res = await untilAbort(fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: requestBody(p), signal }), signal);
  if (res.status !== 200) return { status: res.status, error: (await untilAbort(res.text(), signal)).slice(0, 300) };
  if (!p.stream) {
    const body = (await untilAbort(res.json(), signal)) as { choices: ChoicePayload[] };
    return { status: 200, answer: { text: choiceText(body.choices[0]), finish: body.choices[0]?.finish_reason ?? null } };
  }
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let text = '';
  let finish: string | null = null;
  let events = 0;
  let done = false;
  // a read that outlives an abort is let go with the reader's lock; cancelling the body closes the connection
  signal.addEventListener('abort', () => void reader.cancel().catch(() => undefined), { once: true });
  for (;;) {
    const chunk = await untilAbort(reader.read(), signal);
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    let cut: number;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith('data: ')) continue;
      const payload = event.slice(6);
      if (payload === '[DONE]') {
        done = true;
        continue;
      }
      const data = JSON.parse(payload) as { choices?: ChoicePayload[]; error?: { message: string } };
      if (data.error) return { status: 200, error: `error event: ${data.error.message}` };
      const c = data.choices?.[0];
      text += choiceText(c);
      if (c?.finish_reason) finish = c.finish_reason;
      onEvent?.(++events);
    }
  }
  if (!done) return { status: 200, error: `stream ended without [DONE] after ${events} events (${JSON.stringify(text.slice(0, 60))})` };
  return { status: 200, answer: { text, finish } };
}

function describe(p: Plain): string {
  return `${p.api}${p.stream ? ' stream' : ''} max_tokens ${p.maxTokens} "${p.prompt}"`;
}

async function runOne(url: string, p: Planned, expected: Map<string, Answer>, deadlineMs: number): Promise<Outcome> {
  const controller = new AbortController();
  let hung = false;
  let cancelledByUs = false;
  const deadline = setTimeout(() => {
    hung = true;
    controller.abort();
  }, deadlineMs);
  const t0 = performance.now();
  try {
    if (p.kind === 'hostile') {
      let status: number;
      try {
        const signal = controller.signal;
        const res = await untilAbort(fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: hostileBody(p.hostile), signal }), signal);
        status = res.status;
        await untilAbort(res.arrayBuffer(), signal);
      } catch (e) {
        return hung ? { result: 'hung', detail: `hostile ${p.hostile}: no answer in ${deadlineMs} ms` } : { result: 'lost', detail: `hostile ${p.hostile}: ${String(e)}` };
      }
      const ms = performance.now() - t0;
      return status >= 400 && status < 500 ? { result: 'refused', status, ms } : { result: 'lost', detail: `hostile ${p.hostile}: HTTP ${status}` };
    }
    let cutTimer: NodeJS.Timeout | undefined;
    const leave = () => {
      cancelledByUs = true;
      controller.abort();
    };
    if (p.kind === 'disconnect' && !p.stream) cutTimer = setTimeout(leave, p.afterMs);
    const onEvent = p.kind === 'disconnect' && p.stream ? (n: number) => n >= p.afterEvents && leave() : undefined;
    let got: Awaited<ReturnType<typeof ask>>;
    try {
      got = await ask(url, p, controller.signal, onEvent);
    } catch (e) {
      if (cancelledByUs) return { result: 'cancelled' };
      if (hung) return { result: 'hung', detail: `${describe(p)}: no end in ${deadlineMs} ms` };
      return { result: 'lost', detail: `${describe(p)}: ${String(e)}` };
    } finally {
      clearTimeout(cutTimer);
    }
    if (cancelledByUs) return { result: 'cancelled' };
    if (!got.answer) return { result: 'lost', detail: `${describe(p)}: HTTP ${got.status} ${got.error}` };
    const want = expected.get(keyOf(p))!;
    if (got.answer.text !== want.text || got.answer.finish !== want.finish) {
      return { result: 'wrong', detail: `${describe(p)}: got ${JSON.stringify(got.answer)}, expected ${JSON.stringify(want)}` };
    }
    return { result: 'ok', ms: performance.now() - t0 };
  } finally {
    clearTimeout(deadline);
  }
}

/** Each distinct (api, prompt, max_tokens) once, whole and unfaulted: the answers every soak response must equal. */
async function expectedAnswers(url: string): Promise<Map<string, Answer>> {
  const expected = new Map<string, Answer>();
  for (const api of ['completions', 'chat'] as const) {
    for (const maxTokens of MAX_TOKENS) {
      await Promise.all(
        PROMPTS.map(async (prompt) => {
          const p: Plain = { api, stream: false, prompt, maxTokens };
          const got = await ask(url, p, AbortSignal.timeout(60_000));
          if (!got.answer) throw new Error(`expected answer for ${describe(p)}: HTTP ${got.status} ${got.error}`);
          expected.set(keyOf(p), got.answer);
        }),
      );
    }
  }
  return expected;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function idleFigures(d: SoakDeployment, w: SoakWorker): Promise<{ used: number; running: number; inflight: number; cancellations: number; aborted: number; served: number }> {
  const text = await d.metrics(w);
  return {
    used: metricSum(text, 'sglang:num_used_tokens'),
    running: metricSum(text, 'sglang:num_running_reqs') + metricSum(text, 'sglang:num_queue_reqs'),
    inflight: metricSum(text, 'dynamo_component_inflight_requests'),
    cancellations: metricSum(text, 'dynamo_component_cancellation_total'),
    aborted: metricSum(text, 'sglang:num_aborted_requests_total'),
    served: metricSum(text, 'dynamo_component_requests_total'),
  };
}

/** Waits until every worker has nothing running, queued or in flight; returns how long that took. */
async function waitIdle(d: SoakDeployment, limitMs: number): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < limitMs) {
    const all = await Promise.all(d.workers.map((w) => idleFigures(d, w)));
    if (all.every((f) => f.running === 0 && f.inflight === 0)) return performance.now() - t0;
    await sleep(50);
  }
  return performance.now() - t0;
}

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const say = options.progress ?? (() => undefined);
  const started = performance.now();
  const d = await SoakDeployment.start(options.deployment);
  try {
    say(`deployment up: ${d.workers.length} workers, frontend ${d.frontendUrl}`);
    const expected = await expectedAnswers(d.frontendUrl);
    say(`${expected.size} expected answers computed`);
    await waitIdle(d, 30_000);

    const baseline = new Map<string, { used: number; rss: number | null }>();
    for (const w of d.workers) baseline.set(w.instanceId, { used: (await idleFigures(d, w)).used, rss: rssBytes(w.proc.child.pid) });
    // the replacement starts under load, never idle: its KV baseline is the idle one of the worker it replaces (same
    // model and settings), its RSS the one it has when it starts serving
    const noteReplacement = (w: SoakWorker, replaced: SoakWorker) =>
      baseline.set(w.instanceId, { used: baseline.get(replaced.instanceId)!.used, rss: rssBytes(w.proc.child.pid) });
    const frontendRssBefore = rssBytes(d.frontend?.child.pid);
    // a replaced worker's counters die with it: kept here so the totals cover the whole run
    const departed: WorkerFigures[] = [];

    const schedule = plan(options);
    let next = 0;
    let finished = 0;
    const startedAfter: number[] = [];
    const outcomes: Outcome[] = [];
    const faults: FaultRecord[] = [];
    const reached = async (share: number) => {
      while (finished < share * schedule.length) await sleep(20);
    };
    const timed = async (fault: string, act: () => Promise<void>) => {
      const atRequest = finished;
      const t0 = performance.now();
      say(`fault: ${fault} at request ${atRequest}`);
      await act();
      say(`fault: ${fault} done`);
      faults.push({ fault, atRequest, endRequest: finished, ms: Math.round(performance.now() - t0) });
    };

    // etcd and NATS restarts early, then the worker kill; the last tenth of the schedule waits for the replacement
    // worker, so every fault is over while load goes on and the recovered deployment is what serves the end
    let faultsOver = false;
    const faulting = (async () => {
      await reached(0.1);
      await timed('etcd restart', () => d.etcd.restart());
      await reached(0.25);
      await timed('NATS restart', () => d.nats.restart());
      await reached(0.4);
      // the worker with requests in flight, so the kill lands mid-stream and migration has work to do
      const loads = await Promise.all(d.workers.map(async (w) => (await idleFigures(d, w)).inflight));
      const victim = d.workers[Math.max(0, loads.findIndex((n) => n > 0))];
      const before = await idleFigures(d, victim);
      departed.push({
        instanceId: victim.instanceId, kvUsedTokensBefore: baseline.get(victim.instanceId)!.used, kvUsedTokensAfter: Number.NaN,
        runningAfter: Number.NaN, inflightAfter: Number.NaN, rssBefore: baseline.get(victim.instanceId)!.rss, rssAfter: null,
        cancellations: before.cancellations, aborted: before.aborted, served: before.served,
      });
      await timed(`worker ${victim.instanceId} SIGKILL (${loads[d.workers.indexOf(victim)]} in flight)`, () => d.killWorker(victim));
      await timed('worker restart', async () => {
        const fresh = await d.startWorker();
        d.workers.push(fresh);
        noteReplacement(fresh, victim);
      });
    })().finally(() => (faultsOver = true));

    const client = async () => {
      while (next < schedule.length) {
        if (next >= 0.9 * schedule.length && !faultsOver) {
          await sleep(20);
          continue;
        }
        const i = next++;
        startedAfter[i] = finished;
        outcomes[i] = await runOne(d.frontendUrl, schedule[i], expected, options.deadlineMs);
        finished++;
        if (finished % 250 === 0) say(`${finished}/${schedule.length} requests done`);
      }
    };
    await Promise.all([...Array.from({ length: options.concurrency }, client), faulting]);

    say('all requests ended');
    const idleAfterMs = await waitIdle(d, 30_000);
    // KV pages freed by an abort reach the gauge on the scheduler's next step: give it a moment to settle
    await sleep(500);
    const workers: WorkerFigures[] = [...departed];
    for (const w of d.workers) {
      const f = await idleFigures(d, w);
      const base = baseline.get(w.instanceId)!;
      workers.push({
        instanceId: w.instanceId, kvUsedTokensBefore: base.used, kvUsedTokensAfter: f.used, runningAfter: f.running, inflightAfter: f.inflight,
        rssBefore: base.rss, rssAfter: rssBytes(w.proc.child.pid), cancellations: f.cancellations, aborted: f.aborted, served: f.served,
      });
    }

    const lost: string[] = [];
    const wrong: string[] = [];
    const hung: string[] = [];
    const hostileNotRefused: string[] = [];
    const latencies: number[] = [];
    const timedOk: { i: number; ms: number }[] = [];
    const hostileStatuses: Record<string, number[]> = {};
    let cancelled = 0;
    let refused = 0;
    let disconnectsCompletedFirst = 0;
    let hostileMaxMs = 0;
    schedule.forEach((p, i) => {
      const o = outcomes[i];
      if (o.result === 'ok') {
        latencies.push(o.ms);
        timedOk.push({ i, ms: o.ms });
        if (p.kind === 'disconnect') disconnectsCompletedFirst++;
      } else if (o.result === 'cancelled') cancelled++;
      else if (o.result === 'refused' && p.kind === 'hostile') {
        refused++;
        (hostileStatuses[p.hostile] ??= []).push(o.status);
        hostileMaxMs = Math.max(hostileMaxMs, o.ms);
      } else if (p.kind === 'hostile') hostileNotRefused.push(o.result === 'refused' ? `HTTP ${o.status}` : o.detail);
      else if (o.result === 'lost') lost.push(o.detail);
      else if (o.result === 'wrong') wrong.push(o.detail);
      else if (o.result === 'hung') hung.push(o.detail);
    });
    latencies.sort((a, b) => a - b);
    return {
      requests: schedule.length,
      completed: latencies.length,
      cancelled,
      disconnectsCompletedFirst,
      refused,
      lost,
      wrong,
      hung,
      hostileNotRefused,
      hostileStatuses,
      hostileMaxMs: Math.round(hostileMaxMs),
      latencyMs: { p50: Math.round(percentile(latencies, 0.5)), p99: Math.round(percentile(latencies, 0.99)), max: Math.round(latencies.at(-1) ?? 0) },
      slowest: timedOk
        .sort((a, b) => b.ms - a.ms)
        .slice(0, 3)
        .map(({ i, ms }) => {
          const p = schedule[i];
          return `${Math.round(ms)} ms: ${p.kind} ${p.kind === 'hostile' ? p.hostile : describe(p)}, started after request ${startedAfter[i]}`;
        }),
      faults,
      workers,
      frontendRss: { before: frontendRssBefore, after: rssBytes(d.frontend?.child.pid) },
      idleAfterMs: Math.round(idleAfterMs),
      durationS: Math.round((performance.now() - started) / 100) / 10,
      expectedAnswers: expected.size,
    };
  } catch (e) {
    throw new Error(`${String(e)}\n${d.logs()}`);
  } finally {
    await d.stop();
  }
}

const mib = (b: number | null) => (b === null ? 'gone' : `${(b / 1024 / 1024).toFixed(0)} MiB`);

/** The report as Markdown lines (bench/RESULTS.md and the test's diagnostics). */
export function formatReport(r: SoakReport): string {
  const lines = [
    `| requests | completed | cancelled by client | disconnects answered first | hostile refused (4xx) | lost | wrong | hung | p50 ms | p99 ms | max ms |`,
    `|---|---|---|---|---|---|---|---|---|---|---|`,
    `| ${r.requests} | ${r.completed} | ${r.cancelled} | ${r.disconnectsCompletedFirst} | ${r.refused} | ${r.lost.length} | ${r.wrong.length} | ${r.hung.length} | ${r.latencyMs.p50} | ${r.latencyMs.p99} | ${r.latencyMs.max} |`,
    '',
    `Faults: ${r.faults.map((f) => `${f.fault} at requests ${f.atRequest}–${f.endRequest} (${f.ms} ms)`).join('; ')}.`,
    `Hostile statuses: ${Object.entries(r.hostileStatuses).map(([k, v]) => `${k} → ${[...new Set(v)].join('/')} ×${v.length}`).join('; ')}; slowest refusal ${r.hostileMaxMs} ms.`,
    `Slowest: ${r.slowest.join('; ')}.`,
    `Idle after the last request: ${r.idleAfterMs} ms. Frontend RSS ${mib(r.frontendRss.before)} → ${mib(r.frontendRss.after)}.`,
    '',
    '| worker | requests served | KV used tokens before → after | running/in flight after | RSS before → after | cancellations | engine aborts |',
    '|---|---|---|---|---|---|---|',
    ...r.workers.map((w) =>
      Number.isNaN(w.kvUsedTokensAfter)
        ? `| ${w.instanceId} (SIGKILLed) | ${w.served} (until killed) | ${w.kvUsedTokensBefore} → killed | – | ${mib(w.rssBefore)} → killed | ${w.cancellations} (until killed) | ${w.aborted} |`
        : `| ${w.instanceId} | ${w.served} | ${w.kvUsedTokensBefore} → ${w.kvUsedTokensAfter} | ${w.runningAfter}/${w.inflightAfter} | ${mib(w.rssBefore)} → ${mib(w.rssAfter)} | ${w.cancellations} | ${w.aborted} |`,
    ),
  ];
  return lines.join('\n');
}
