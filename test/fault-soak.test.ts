// The bounded fault soak (the long one is bench/soak/run.ts): a real deployment on the CPU backend — etcd, NATS,
// two `start` workers on stories260K, a KV-routing `frontend` with --migration-limit 3 — takes a seeded mix of
// greedy completions and chats, streamed and whole, clients that leave at random moments and the hostile requests,
// while a worker is SIGKILLed and replaced, etcd is restarted and NATS is restarted. Nothing a client waits for may
// be lost, wrong or left hanging; the hostile requests are refused with a 4xx; when it is over the workers are idle
// with no KV pages held and no large memory growth, and the cancellations were counted.
import t from 'tap';
import { DEFAULT_DEPLOYMENT, formatReport, runSoak } from '../bench/soak/soak.js';

const MiB = 1024 * 1024;
// generous: the allocator and V8 keep what a burst made them take; a leak per request over hundreds of requests
// (each answer, prompt or KV page kept) shows well above it only in the long bench, whose figures go to RESULTS.md
const RSS_GROWTH_BOUND = 256 * MiB;

t.test('a fault soak: no lost, wrong or hung responses; hostile requests refused; no KV or memory left behind', async (t) => {
  const report = await runSoak({
    requests: 400,
    concurrency: 8,
    seed: 22,
    deadlineMs: 60_000,
    disconnectShare: 0.15,
    deployment: DEFAULT_DEPLOYMENT,
  });
  t.comment(formatReport(report));

  t.same(report.lost, [], 'no response lost');
  t.same(report.wrong, [], 'every completed response is the greedy answer');
  t.same(report.hung, [], 'every request ended before its deadline');
  t.same(report.hostileNotRefused, [], 'every hostile request was refused with a 4xx');
  t.ok(report.refused >= 3, `each hostile kind was sent (${report.refused} refused)`);
  t.equal(report.completed + report.cancelled + report.refused, report.requests, 'every request is accounted for');
  t.ok(report.cancelled > 0, `clients left mid-request (${report.cancelled})`);

  t.same(report.faults.map((f) => f.fault.split(' ')[0]), ['etcd', 'NATS', 'worker', 'worker'], 'kill, restart, etcd and NATS restarts all happened');
  for (const f of report.faults) t.ok(f.endRequest < report.requests, `${f.fault} happened under load (requests ${f.atRequest}–${f.endRequest})`);

  const live = report.workers.filter((w) => !Number.isNaN(w.kvUsedTokensAfter));
  t.equal(live.length, 2, 'two workers at the end (one of them the replacement)');
  for (const w of live) {
    t.ok(w.served > 0, `worker ${w.instanceId} served requests (${w.served})`);
    t.equal(w.runningAfter + w.inflightAfter, 0, `worker ${w.instanceId}: nothing running or in flight`);
    t.equal(w.kvUsedTokensAfter, w.kvUsedTokensBefore, `worker ${w.instanceId}: KV in use back to its baseline (${w.kvUsedTokensBefore} tokens)`);
    t.ok(w.rssBefore !== null && w.rssAfter !== null && w.rssAfter - w.rssBefore < RSS_GROWTH_BOUND, `worker ${w.instanceId}: RSS ${w.rssBefore} → ${w.rssAfter}`);
  }
  const fe = report.frontendRss;
  t.ok(fe.before !== null && fe.after !== null && fe.after - fe.before < RSS_GROWTH_BOUND, `frontend RSS ${fe.before} → ${fe.after}`);
  const cancellations = report.workers.reduce((n, w) => n + w.cancellations, 0);
  const aborted = report.workers.reduce((n, w) => n + w.aborted, 0);
  t.ok(cancellations > 0, `the workers counted cancellations (${cancellations})`);
  t.ok(aborted > 0, `the engines aborted the cancelled requests (${aborted})`);
});
