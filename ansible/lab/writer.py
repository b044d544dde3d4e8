#!/usr/bin/env python3
"""Bounded background writer and checker for the Ansible lab.

  writer.py write --nodes 10.77.0.11:4000,... --tag run1 --out acks.json
                  [--sessions 4] [--duration 900] [--max-appends 20000]
                  [--interval 0.05] [--stop-file PATH]
      Creates --sessions sessions, then appends to them one at a time, rotating
      over the nodes' addresses. A failed or ambiguous append (connection
      error, timeout, 503, 429) is retried with the identical body on the next
      node (the server dedupes producer retries), so every append is either
      acknowledged once or still unknown when the writer stops. Stops at
      --duration, --max-appends or when --stop-file exists; writes every
      acknowledgement (session, seq, producer, producer_seq, time) to --out.

  writer.py verify --nodes ... --acks acks.json [--max-gap 20]
      Reads every session back through a tail WebSocket from cursor 0 on each
      node given and checks: seqs gap-free from 1; every acknowledged append
      present exactly once, at its acknowledged seq; no (producer,
      producer_seq) present twice; acknowledgements kept flowing (no gap
      between two consecutive acks longer than --max-gap seconds).

Only talks to the addresses it is given (the lab's own network namespace).
"""

import argparse
import http.client
import json
import os
import sys
import time

import websocket  # websocket-client (PyPI), pinned in ansible/lab/requirements.txt


def post(node, path, body, timeout=5.0):
    host, port = node.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw or b"null")
        except ValueError:
            return resp.status, {"raw": raw[:200].decode("utf-8", "replace")}
    finally:
        conn.close()


def write(args):
    nodes = args.nodes.split(",")
    sessions = [f"lab-{args.tag}-{k}" for k in range(args.sessions)]
    deadline = time.monotonic() + args.duration
    started = time.time()
    outcomes = {}
    acks = []
    next_node = 0

    def stopping():
        return (
            time.monotonic() >= deadline
            or (args.stop_file and os.path.exists(args.stop_file))
        )

    def send(path, body, ok_statuses):
        """Retries the identical request over the nodes until an answer in
        ok_statuses, a client error, or the stop condition."""
        nonlocal next_node
        while True:
            node = nodes[next_node % len(nodes)]
            next_node += 1
            try:
                status, reply = post(node, path, body)
            except (OSError, http.client.HTTPException) as e:
                status, reply = -1, {"error": type(e).__name__}
            key = f"{status} {reply.get('error', '') if isinstance(reply, dict) else ''}".strip()
            outcomes[key] = outcomes.get(key, 0) + 1
            if status in ok_statuses:
                return status, reply
            if 400 <= status < 500 and status != 429:
                raise SystemExit(f"writer: {path} answered {status} {reply} for {body}")
            if stopping():
                return None, None
            time.sleep(0.2)

    for s in sessions:
        status, reply = send("/v1/sessions", {"id": s}, (201, 409))
        if status is None:
            break
    pseq = {s: 0 for s in sessions}
    unknown = 0
    n = 0
    while not stopping() and n < args.max_appends:
        s = sessions[n % len(sessions)]
        producer = f"{args.tag}-w{n % len(sessions)}"
        pseq[s] += 1
        body = {
            "type": "lab.write",
            "payload": {"n": pseq[s], "tag": args.tag},
            "producer_id": producer,
            "producer_seq": pseq[s],
        }
        status, reply = send(f"/v1/sessions/{s}/append", body, (201,))
        if status is None:
            unknown += 1  # in flight at the stop: may or may not be there, at most once
            break
        acks.append(
            {
                "session": s,
                "seq": reply["seq"],
                "producer_id": producer,
                "producer_seq": pseq[s],
                "deduped": reply.get("deduped", False),
                "t": time.time(),
            }
        )
        n += 1
        time.sleep(args.interval)
    out = {
        "tag": args.tag,
        "nodes": nodes,
        "sessions": sessions,
        "started": started,
        "stopped": time.time(),
        "acks": acks,
        "unknown": unknown,
        "outcomes": outcomes,
    }
    with open(args.out + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(args.out + ".tmp", args.out)
    print(
        f"writer {args.tag}: {len(acks)} acknowledged appends in {out['stopped'] - started:.1f} s, "
        f"{unknown} unknown at stop; outcomes {outcomes}"
    )


def read_session(node, session, want_last, timeout):
    """All events of a session through a tail from cursor 0, until seq >= want_last."""
    ws = websocket.create_connection(
        f"ws://{node}/v1/sessions/{session}/tail?cursor=0&batch_size=1000", timeout=timeout
    )
    events = []
    deadline = time.monotonic() + timeout
    try:
        while (not events or events[-1]["seq"] < want_last) and time.monotonic() < deadline:
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                frame = ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            if not frame:
                break
            item = json.loads(frame)
            events.extend(item if isinstance(item, list) else [item])
    finally:
        ws.close()
    return events


def verify(args):
    with open(args.acks) as f:
        run = json.load(f)
    acks = run["acks"]
    errors = []
    by_session = {}
    for a in acks:
        by_session.setdefault(a["session"], []).append(a)
    checked = 0
    for node in args.nodes.split(","):
        for s in run["sessions"]:
            want = by_session.get(s, [])
            want_last = max((a["seq"] for a in want), default=0)
            try:
                events = read_session(node, s, want_last, args.timeout)
            except (OSError, websocket.WebSocketException) as e:
                errors.append(f"{node} {s}: tail failed: {e!r}")
                continue
            seqs = [e["seq"] for e in events]
            if seqs != list(range(1, len(seqs) + 1)):
                errors.append(f"{node} {s}: seqs not gap-free from 1: {seqs[:10]}...")
            seen = {}
            for e in events:
                key = (e.get("producer_id"), e.get("producer_seq"))
                if key in seen:
                    errors.append(f"{node} {s}: {key} present twice (seq {seen[key]} and {e['seq']})")
                seen[key] = e["seq"]
            for a in want:
                at = seen.get((a["producer_id"], a["producer_seq"]))
                if at is None:
                    errors.append(f"{node} {s}: acknowledged {a} missing (read up to seq {seqs[-1] if seqs else 0})")
                elif at != a["seq"]:
                    errors.append(f"{node} {s}: acknowledged {a} found at seq {at}")
            checked += len(want)
    gaps = [b["t"] - a["t"] for a, b in zip(acks, acks[1:])]
    max_gap = max(gaps, default=0.0)
    if args.max_gap and max_gap > args.max_gap:
        errors.append(f"appends stalled: {max_gap:.1f} s between two acknowledgements (limit {args.max_gap} s)")
    if args.min_acks and len(acks) < args.min_acks:
        errors.append(f"only {len(acks)} acknowledged appends (want at least {args.min_acks})")
    summary = (
        f"verify {run['tag']}: {len(acks)} acknowledged appends over {len(run['sessions'])} sessions, "
        f"checked {checked} (ack, node) pairs, longest pause between acks {max_gap:.1f} s, "
        f"{len(errors)} error(s)"
    )
    print(summary)
    for e in errors[:20]:
        print("  " + e)
    return 1 if errors else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--nodes", required=True)
    w.add_argument("--tag", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--sessions", type=int, default=4)
    w.add_argument("--duration", type=float, default=900)
    w.add_argument("--max-appends", type=int, default=20000)
    w.add_argument("--interval", type=float, default=0.05)
    w.add_argument("--stop-file")
    v = sub.add_parser("verify")
    v.add_argument("--nodes", required=True)
    v.add_argument("--acks", required=True)
    v.add_argument("--timeout", type=float, default=30)
    v.add_argument("--max-gap", type=float, default=0)
    v.add_argument("--min-acks", type=int, default=1)
    args = p.parse_args()
    if args.cmd == "write":
        write(args)
        return 0
    return verify(args)


if __name__ == "__main__":
    sys.exit(main())
