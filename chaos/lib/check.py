"""Checks for the fault drills (stdlib only). Each command prints one line: the
summary on success (exit 0), or the first problem found (exit 1).

    check.py jobs VIEWS [--outcome O[,O...]] [--running N | --running-min N --running-max N]
                        [--error-kind K] [--attempt N] ID...
        VIEWS/ID.json is `fleet status ID --json` of each job (any store). Every job
        is terminal with a result.json whose outcome is the state, has exactly one
        terminal transition in its history, and the expected number of `running`
        transitions (one per attempt that started).
    check.py webhooks VIEWS RECEIVED SECRET ID[=N]...
        Each job has N (default 1) webhook deliveries in status.json, all delivered; each
        delivery_id arrived at the receiver (RECEIVED: its JSON lines), with a valid
        X-Fleet-Signature; prints how many attempts the deliveries took.
    check.py tree STORE_DIR ID...
        Every file of a local store is batches/*.json or jobs/<valid id>/..., and
        the job directories are exactly the given ids.
    check.py observations STORE_DIR ID MAX_CHARS [TEXT...]
        The job's largest observation is at most MAX_CHARS characters and holds
        each TEXT.
    check.py dead FLEET_STATUS_JSON PREFIX N
        `fleet status --fleet --json` shows N messages in PREFIXfleet.dead and none
        waiting in PREFIXfleet.jobs.
    check.py llm LLM_LOG RUNS [--step K=N] ID...
        The scripted LLM's own request log (`fleet mock-llm --request-log`) shows RUNS
        conversations started (requests for step 0) for each job (its task is
        "chaos drill job ID"), and N requests for step K when given.
    check.py ledger FILE ID...
        Each ID is on exactly one line of FILE (a side effect each run appends to,
        outside the workspace), and nothing else is.
"""

import hashlib
import hmac
import json
import os
import re
import sys

TERMINAL = {"succeeded", "failed", "stuck", "max_iterations", "timed_out",
            "budget_exceeded", "cancelled", "rejected"}
VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Fail(Exception):
    pass


def load_view(views, job_id):
    path = os.path.join(views, job_id + ".json")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise Fail(f"{job_id}: no status view")
    if not text.strip():
        raise Fail(f"{job_id}: not in the store (lost)")
    return json.loads(text)


def take(args, flag, default=None):
    if flag in args:
        i = args.index(flag)
        v = args[i + 1]
        del args[i:i + 2]
        return v
    return default


def cmd_jobs(args):
    views = args.pop(0)
    outcomes = take(args, "--outcome")
    running = take(args, "--running")
    rmin = int(take(args, "--running-min", running or 1))
    rmax = int(take(args, "--running-max", running or 1))
    kind = take(args, "--error-kind")
    attempt = take(args, "--attempt")
    allowed = set(outcomes.split(",")) if outcomes else None
    parts = []
    for job_id in args:
        v = load_view(views, job_id)
        s, r = v.get("status") or {}, v.get("result")
        state = s.get("state")
        if state not in TERMINAL:
            raise Fail(f"{job_id}: state {state}, not terminal (lost or stuck)")
        if r is None:
            raise Fail(f"{job_id}: {state} but no result.json")
        if r.get("outcome") != state:
            raise Fail(f"{job_id}: result.json says {r.get('outcome')}, status.json {state}")
        if allowed and state not in allowed:
            err = (r.get("error") or {})
            raise Fail(f"{job_id}: outcome {state} (error {err.get('kind')}: "
                       f"{(err.get('message') or '')[:160]}), expected {outcomes}")
        hist = s.get("history") or []
        terminal = [t for t in hist if t.get("state") in TERMINAL]
        if len(terminal) != 1:
            seq = ",".join(t.get("state") for t in hist)
            raise Fail(f"{job_id}: {len(terminal)} terminal transitions ({seq}): ran to an end twice")
        runs = [t for t in hist if t.get("state") == "running"]
        if not rmin <= len(runs) <= rmax:
            seq = ",".join(t.get("state") for t in hist)
            raise Fail(f"{job_id}: {len(runs)} running transitions ({seq}), expected "
                       f"{rmin}..{rmax}")
        if kind and (r.get("error") or {}).get("kind") != kind:
            raise Fail(f"{job_id}: error.kind {(r.get('error') or {}).get('kind')}, expected {kind}")
        if attempt and str(r.get("attempt")) != attempt:
            raise Fail(f"{job_id}: attempt {r.get('attempt')}, expected {attempt}")
        workers = sorted({t.get("worker") for t in runs if t.get("worker")})
        parts.append(f"{job_id}={state}/runs={len(runs)}/workers={len(workers)}")
    return " ".join(parts)


def cmd_webhooks(args):
    views, received, secret = args[0], args[1], args[2]
    got = {}
    with open(received) as f:
        for line in f:
            rec = json.loads(line)
            h = {k.lower(): v for k, v in rec["headers"].items()}
            body = rec["body"].encode()
            sig = h.get("x-fleet-signature", "")
            want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(sig, want):
                raise Fail(f"delivery {h.get('x-fleet-delivery')}: bad signature {sig[:20]}")
            payload = json.loads(body)
            if payload.get("delivery_id") != h.get("x-fleet-delivery"):
                raise Fail("delivery_id in the body differs from X-Fleet-Delivery")
            got.setdefault(payload["delivery_id"], []).append(payload)
    attempts = []
    for arg in args[3:]:
        job_id, _, n = arg.partition("=")
        want = int(n or 1)
        s = load_view(views, job_id)["status"]
        hooks = [w for w in s.get("webhooks") or [] if w.get("event") == "job.completed"]
        if len(hooks) != want:
            raise Fail(f"{job_id}: {len(hooks)} webhook deliveries recorded in status.json, "
                       f"expected {want}")
        for w in hooks:
            if not w.get("delivered"):
                raise Fail(f"{job_id}: webhook to {w.get('url')} not delivered after "
                           f"{w.get('attempts')} attempts: {w.get('last_error')}")
            if w["delivery_id"] not in got:
                raise Fail(f"{job_id}: delivery {w['delivery_id']} recorded as delivered, "
                           "never received")
            p = got[w["delivery_id"]][0]
            if p.get("job_id") != job_id or p.get("outcome") != s.get("state"):
                raise Fail(f"{job_id}: payload says {p.get('job_id')} {p.get('outcome')}")
            attempts.append(w.get("attempts", 0))
    if max(attempts, default=0) < 2:
        raise Fail("every delivery went through at the first attempt: the receiver was "
                   "never down for them")
    dupes = sum(len(v) - 1 for v in got.values())
    return (f"{len(attempts)} deliveries, attempts {sorted(attempts)}, "
            f"{len(got)} distinct delivery ids received, {dupes} duplicate(s)")


def cmd_tree(args):
    root, ids = args[0], set(args[1:])
    seen = set()
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            parts = rel.split(os.sep)
            n += 1
            if parts[0] == "batches" and len(parts) == 2 and name.endswith(".json"):
                continue
            if parts[0] == "jobs" and len(parts) >= 3 and VALID_ID.match(parts[1]) \
                    and parts[1] not in (".", ".."):
                seen.add(parts[1])
                continue
            raise Fail(f"unexpected file in the store: {rel!r}")
    if seen != ids:
        raise Fail(f"job directories {sorted(seen)}, expected {sorted(ids)}")
    return f"{n} files, all under jobs/<valid id>/ or batches/"


def cmd_observations(args):
    root, job_id, limit, needles = args[0], args[1], int(args[2]), args[3:]
    path = os.path.join(root, "jobs", job_id, "events.jsonl")
    biggest = ""
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            if e.get("kind") == "ObservationEvent" and len(e.get("content", "")) > len(biggest):
                biggest = e["content"]
    if not biggest:
        raise Fail(f"{job_id}: no observation in events.jsonl")
    if len(biggest) > limit:
        raise Fail(f"{job_id}: an observation of {len(biggest)} characters (limit {limit})")
    for n in needles:
        if n not in biggest:
            raise Fail(f"{job_id}: {n!r} is not in the largest observation")
    cut = re.search(r"(\d+) of (\d+) bytes of output were cut", biggest)
    note = f", {cut.group(1)} of {cut.group(2)} bytes cut" if cut else ""
    return f"largest observation {len(biggest)} characters{note}"


def cmd_dead(args):
    with open(args[0]) as f:
        v = json.load(f)
    prefix, want = args[1], int(args[2])
    queues = v.get("queues")
    if not isinstance(queues, list):
        raise Fail(f"no queue stats: {queues}")
    by = {q["name"]: q for q in queues}
    dead = by.get(prefix + "fleet.dead", {}).get("messages")
    jobs = by.get(prefix + "fleet.jobs", {}).get("messages")
    if dead != want or jobs != 0:
        raise Fail(f"{prefix}fleet.dead holds {dead} (expected {want}), "
                   f"{prefix}fleet.jobs {jobs} (expected 0)")
    return f"{dead} in {prefix}fleet.dead, fleet.jobs empty"


def llm_steps(log):
    """job id -> list of steps requested, from the scripted LLM's log."""
    pat = re.compile(r"chaos drill job ([A-Za-z0-9._-]+)")
    steps = {}
    with open(log) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            m = pat.search(r.get("user") or "")
            if m:
                steps.setdefault(m.group(1), []).append(r.get("step"))
    return steps


def cmd_llm(args):
    log, runs = args.pop(0), int(args.pop(0))
    step = take(args, "--step")
    steps = llm_steps(log)
    for job_id in args:
        got = steps.get(job_id, [])
        if got.count(0) != runs:
            raise Fail(f"{job_id}: the LLM saw {got.count(0)} runs start, expected {runs} (steps {got})")
        if step:
            k, n = (int(x) for x in step.split("="))
            if got.count(k) != n:
                raise Fail(f"{job_id}: the LLM got {got.count(k)} requests for step {k}, expected {n} (steps {got})")
    return f"{len(args)} jobs: {runs} run(s) each by the LLM's log" + (f", step {step}" if step else "")


def cmd_ledger(args):
    path, ids = args[0], args[1:]
    with open(path) as f:
        lines = [l.strip() for l in f if l.strip()]
    counts = {}
    for l in lines:
        counts[l] = counts.get(l, 0) + 1
    for job_id in ids:
        if counts.get(job_id) != 1:
            raise Fail(f"{job_id}: {counts.get(job_id, 0)} runs in the ledger, expected 1")
    extra = set(counts) - set(ids)
    if extra:
        raise Fail(f"unexpected ledger lines: {sorted(extra)[:5]}")
    return f"{len(ids)} jobs, each run once by the ledger"


def main(argv):
    cmds = {"jobs": cmd_jobs, "webhooks": cmd_webhooks, "tree": cmd_tree,
            "observations": cmd_observations, "dead": cmd_dead, "llm": cmd_llm,
            "ledger": cmd_ledger}
    if not argv or argv[0] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(cmds[argv[0]](list(argv[1:])))
        return 0
    except Fail as e:
        print(e)
        return 1
    except (OSError, ValueError, KeyError, IndexError) as e:
        print(f"check failed: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
