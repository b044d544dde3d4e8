// The official Phoenix JavaScript client (npm `phoenix`, with `ws` as the
// WebSocket) against a running starcite: join from a cursor, batches, reconnect
// with rejoin from the last cursor, gap handling, many topics on one socket,
// lifecycle.
//
// Environment:
//   STARCITE_WRITE_URL   http base URL used for creates and appends
//   STARCITE_SOCKET_URL  http base URL whose /v1/socket is joined (may be another node)
//   STARCITE_PREFIX      session id prefix (unique per run)
// Exits 0 when every check passed; prints one line per check.

import { Socket } from "phoenix";
import WebSocket from "ws";

const WRITE = process.env.STARCITE_WRITE_URL;
const SOCKET = process.env.STARCITE_SOCKET_URL || WRITE;
const PREFIX = process.env.STARCITE_PREFIX || `js${Date.now()}`;
const STEP_MS = 15000;

if (!WRITE) {
  console.error("STARCITE_WRITE_URL is required");
  process.exit(2);
}

const overall = setTimeout(() => {
  console.error("FAIL: whole run timed out");
  process.exit(1);
}, 120000);

function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}

function check(cond, msg) {
  if (!cond) fail(msg);
}

async function http(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(WRITE + path, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json().catch(() => null);
    // A cluster may answer 503 while a group elects its leader: retry briefly.
    if (res.status === 503 && attempt < 40) {
      await sleep(250);
      continue;
    }
    return { status: res.status, json };
  }
}

const producerSeq = new Map();
async function append(session, n) {
  for (let i = 0; i < n; i++) {
    const seq = (producerSeq.get(session) || 0) + 1;
    producerSeq.set(session, seq);
    const r = await http("POST", `/v1/sessions/${session}/append`, {
      type: "message",
      payload: { n: seq },
      producer_id: "js",
      producer_seq: seq,
    });
    check(r.status === 201, `append to ${session}: ${r.status} ${JSON.stringify(r.json)}`);
  }
}

async function create(id) {
  const r = await http("POST", "/v1/sessions", { id, title: id });
  check(r.status === 201, `create ${id}: ${r.status} ${JSON.stringify(r.json)}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function waitFor(what, cond) {
  return new Promise((resolve) => {
    const started = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - started > STEP_MS) fail(`timed out waiting for ${what}`);
      setTimeout(tick, 10);
    };
    tick();
  });
}

function joinOk(channel, what) {
  return new Promise((resolve) => {
    channel
      .join()
      .receive("ok", resolve)
      .receive("error", (e) => fail(`${what}: join error ${JSON.stringify(e)}`))
      .receive("timeout", () => fail(`${what}: join timeout`));
  });
}

function newSocket() {
  const socket = new Socket(SOCKET.replace(/^http/, "ws") + "/v1/socket", {
    transport: WebSocket,
    params: {},
    heartbeatIntervalMs: 1000,
    reconnectAfterMs: () => 100,
    rejoinAfterMs: () => 100,
  });
  socket.connect();
  return socket;
}

/// A tail the way the SDK keeps one: the last cursor seen, rejoined from it.
function tail(socket, session, opts = {}) {
  const state = { cursor: opts.cursor ?? 0, seqs: [], pushes: [], gaps: [], joins: 0 };
  const params = () => {
    const p = { cursor: state.cursor };
    if (opts.batch_size) p.batch_size = opts.batch_size;
    return p;
  };
  const channel = socket.channel(`tail:${session}`, params);
  channel.on("events", (payload) => {
    check(Array.isArray(payload.events), `events is a list on ${session}`);
    state.pushes.push(payload.events.length);
    for (const e of payload.events) {
      check(e.cursor === e.seq, `cursor == seq on ${session}`);
      check(e.seq === state.cursor + 1, `${session}: got seq ${e.seq} after cursor ${state.cursor}`);
      state.cursor = e.seq;
      state.seqs.push(e.seq);
    }
  });
  channel.on("gap", (gap) => state.gaps.push(gap));
  channel.on("phx_reply", () => {});
  state.channel = channel;
  return state;
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
const same = (x, y) => JSON.stringify(x) === JSON.stringify(y);

async function main() {
  const s1 = `${PREFIX}-s1`;
  const s2 = `${PREFIX}-s2`;
  await create(s1);
  await create(s2);
  await append(s1, 5);
  await append(s2, 2);

  const socket = newSocket();

  // 1. Join from a cursor with batches: replay 3..5 in pushes of at most 2.
  const t1 = tail(socket, s1, { cursor: 2, batch_size: 2 });
  await joinOk(t1.channel, "tail s1");
  await waitFor("replay of s1", () => t1.cursor === 5);
  check(same(t1.seqs, [3, 4, 5]), `replay seqs ${t1.seqs}`);
  check(same(t1.pushes, [2, 1]), `replay pushes ${t1.pushes}`);
  console.log("ok join from cursor 2, batch_size 2: pushes", t1.pushes);

  // 2. Live.
  await append(s1, 2);
  await waitFor("live events of s1", () => t1.cursor === 7);
  console.log("ok live events 6..7");

  // 3. The connection drops; the client reconnects and rejoins from its cursor.
  const opens = [];
  socket.onOpen(() => opens.push(Date.now()));
  socket.conn.close(4000, "test drop");
  await append(s1, 3);
  await waitFor("rejoin after reconnect", () => t1.cursor === 10 && opens.length >= 1);
  check(same(t1.seqs, range(3, 10)), `after reconnect: ${t1.seqs}`);
  console.log("ok reconnect: rejoined from cursor 7, got 8..10 exactly once");

  // 4. Gap: a cursor past the end; rejoin from next_cursor as the SDK does.
  let t2 = tail(socket, s2, { cursor: 40 });
  await joinOk(t2.channel, "tail s2");
  await waitFor("gap", () => t2.gaps.length === 1);
  const gap = t2.gaps[0];
  check(gap.type === "gap" && gap.reason === "resume_invalidated", `gap ${JSON.stringify(gap)}`);
  check(gap.from_cursor === 40 && gap.next_cursor === 2, `gap cursors ${JSON.stringify(gap)}`);
  await new Promise((resolve) => t2.channel.leave().receive("ok", resolve));
  t2 = tail(socket, s2, { cursor: gap.next_cursor });
  await joinOk(t2.channel, "tail s2 after gap");
  await append(s2, 1);
  await waitFor("event after gap", () => t2.cursor === 3);
  check(same(t2.seqs, [3]), `after gap: ${t2.seqs}`);
  console.log("ok gap resume_invalidated, rejoined from next_cursor", gap.next_cursor);

  // 5. Many topics on one socket.
  const many = [];
  for (let i = 0; i < 12; i++) {
    const id = `${PREFIX}-m${i}`;
    await create(id);
    await append(id, 2);
    many.push(tail(socket, id, { batch_size: 10 }));
  }
  await Promise.all(many.map((t, i) => joinOk(t.channel, `tail m${i}`)));
  await waitFor("replay on 12 topics", () => many.every((t) => t.cursor === 2));
  for (let i = 0; i < 12; i++) await append(`${PREFIX}-m${i}`, 1);
  await waitFor("live on 12 topics", () => many.every((t) => t.cursor === 3));
  check(many.every((t) => same(t.seqs, [1, 2, 3])), "many topics seqs");
  console.log("ok 12 tail topics + 2 more on one socket");

  // 6. Lifecycle: create, PATCH, archive twice (one event), unarchive,
  // published by the node that ran the command and seen on this socket's node.
  {
    const events = [];
    const lc = socket.channel("lifecycle", {});
    lc.on("lifecycle", (p) => events.push(p.event));
    await joinOk(lc, "lifecycle");
    const id = `${PREFIX}-lc`;
    const kinds = () => events.filter((e) => e.session_id === id).map((e) => e.kind);
    await create(id);
    await waitFor("session.created", () => kinds().includes("session.created"));
    const created = events.find((e) => e.kind === "session.created" && e.session_id === id);
    check(created.tenant_id && created.title === id && created.version === 1,
      `lifecycle event ${JSON.stringify(created)}`);
    const p = await http("PATCH", `/v1/sessions/${id}`, { title: "renamed" });
    check(p.status === 200, `patch ${id}: ${p.status} ${JSON.stringify(p.json)}`);
    for (const path of ["archive", "archive", "unarchive"]) {
      const r = await http("POST", `/v1/sessions/${id}/${path}`, {});
      check(r.status === 200, `${path} ${id}: ${r.status} ${JSON.stringify(r.json)}`);
    }
    await waitFor("session.unarchived", () => kinds().includes("session.unarchived"));
    const want = ["session.activated", "session.created", "session.updated",
      "session.archived", "session.unarchived"];
    check(same(kinds(), want), `lifecycle kinds ${JSON.stringify(kinds())}`);
    const updated = events.find((e) => e.kind === "session.updated" && e.session_id === id);
    check(updated.title === "renamed" && updated.version === 2, `updated ${JSON.stringify(updated)}`);
    console.log("ok lifecycle created, updated, archived once, unarchived");
  }

  socket.disconnect();
  clearTimeout(overall);
  console.log("PASS");
}

main().catch((e) => fail(e && e.stack ? e.stack : String(e)));
