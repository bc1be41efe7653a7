#!/usr/bin/env python3
"""The differential test: the same scripted trajectories through the OpenHands SDK
and through `fleet run --workspace local`, compared observation by observation as
the model sees them.

Both agents talk to one scripted OpenAI-compatible server run here. It serves each
trajectory's steps (the step is the number of assistant messages in the request)
and keeps the tool results each agent sent back, so the comparison is made on
what reached the model, not on either agent's own records. Paths are compared
with the workspace replaced by `<ws>`; a step's arguments may name `{ws}`, learned
from the answer to the first step (`pwd`).

A difference is fine only when trajectories.json lists it under `known` with its
reason (the README's "where we differ on purpose" says the same); any other one,
or a different stuck verdict, fails the run (exit 1).

    python driver.py --fleet target/debug/fleet [--only NAME] [--json FILE]

Runs under a Python that has openhands-sdk and openhands-tools (see
scripts/openhands-diff.sh, which makes that venv).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
CWD_LINE = re.compile(r"\[Current working directory: ([^\]\n]+)\]")


class Script:
    """What the scripted server serves and what it was sent."""

    def __init__(self, trajectories):
        self.trajectories = trajectories
        self.lock = threading.Lock()
        self.requests = {}  # model name -> list of message lists
        self.ws = {}  # model name -> workspace path

    def reply(self, model, messages):
        side, _, name = model.partition("--")
        steps = self.trajectories[name]["steps"]
        step = sum(1 for m in messages if m.get("role") == "assistant")
        with self.lock:
            self.requests.setdefault(model, []).append(messages)
            if model not in self.ws:
                for m in messages:
                    if m.get("role") == "tool":
                        found = CWD_LINE.search(text_of(m))
                        if found:
                            self.ws[model] = found.group(1)
                            break
        if step >= len(steps):
            return None
        tool, args = steps[step]["tool"], steps[step]["args"]
        ws = self.ws.get(model, "/nonexistent")
        args = json.loads(json.dumps(args).replace("{ws}", ws))
        return {
            "id": f"chatcmpl-{side}-{step}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": f"call_{step}",
                                "type": "function",
                                "function": {"name": tool, "arguments": json.dumps(args)},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


def text_of(message):
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def serve(script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            model = body.get("model", "").removeprefix("openai/")
            answer = script.reply(model, body.get("messages", []))
            status = 200 if answer else 400
            data = json.dumps(answer or {"error": {"message": "script ended", "type": "invalid_request_error"}})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_sdk(name, spec, base_url, terminal_type):
    from openhands.sdk import LLM, Agent, Conversation
    from openhands.sdk.tool import Tool
    from openhands.sdk.workspace import LocalWorkspace
    from openhands.tools.file_editor import FileEditorTool
    from openhands.tools.terminal import TerminalTool
    from pydantic import SecretStr

    tmp = tempfile.mkdtemp(prefix="ohdiff-")
    try:
        llm = LLM(model=f"openai/sdk--{name}", base_url=base_url, api_key=SecretStr("x"), usage_id="agent",
                  num_retries=0)
        terminal = {"no_change_timeout_seconds": spec.get("no_output_timeout_secs", 30)}
        if terminal_type != "auto":
            terminal["terminal_type"] = terminal_type
        agent = Agent(llm=llm, tools=[Tool(name=TerminalTool.name, params=terminal), Tool(name=FileEditorTool.name)])
        conv = Conversation(agent=agent, workspace=LocalWorkspace(working_dir=os.path.realpath(tmp)),
                            visualizer=None, max_iteration_per_run=len(spec["steps"]) + 2)
        conv.send_message(spec["task"])
        try:
            conv.run()
        except Exception as e:  # the verdict below says what happened
            print(f"  sdk {name}: run raised {type(e).__name__}: {e}"[:300], file=sys.stderr)
        status = str(getattr(conv.state.execution_status, "value", conv.state.execution_status))
        conv.close()
        return {"finished": "finished", "stuck": "stuck"}.get(status, status)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_fleet(name, spec, base_url, fleet):
    tmp = tempfile.mkdtemp(prefix="fleetdiff-")
    try:
        job = {
            "id": f"diff-{name}",
            "task": spec["task"],
            "llm": {"model": f"fleet--{name}", "base_url": base_url},
            "limits": {"no_output_timeout_secs": spec.get("no_output_timeout_secs", 30),
                       "max_iterations": len(spec["steps"]) + 2},
        }
        jobs = os.path.join(tmp, "jobs.json")
        with open(jobs, "w") as f:
            json.dump([job], f)
        env = dict(os.environ, LLM_API_KEY="x")
        out = subprocess.run(
            [fleet, "run", jobs, "--workspace", "local", "--store", os.path.join(tmp, "store"), "--quiet", "--json"],
            capture_output=True, text=True, env=env, timeout=600,
        )
        with open(os.path.join(tmp, "store", "jobs", job["id"], "result.json")) as f:
            outcome = json.load(f)["outcome"]
        if out.returncode not in (0, 1):
            print(out.stderr[-2000:], file=sys.stderr)
        return {"succeeded": "finished"}.get(outcome, outcome)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def observations(script, model):
    """The tool results in the longest request the agent made."""
    reqs = script.requests.get(model, [])
    if not reqs:
        return []
    last = max(reqs, key=len)
    ws = script.ws.get(model)
    out = []
    for m in last:
        if m.get("role") == "tool":
            t = text_of(m)
            if ws:
                t = t.replace(ws, "<ws>")
            out.append(t.strip())
    return out


def clip(s, n=400):
    s = s.replace("\n", "⏎")
    return s if len(s) <= n else s[: n // 2] + " … " + s[-n // 2 :]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet", required=True)
    ap.add_argument("--only")
    ap.add_argument("--json")
    ap.add_argument("--terminal-type", choices=["auto", "tmux", "subprocess"], default="auto",
                    help="the SDK's terminal backend (auto: tmux when installed, as its users get)")
    a = ap.parse_args()
    with open(os.path.join(HERE, "trajectories.json")) as f:
        doc = json.load(f)
    trajectories = doc["trajectories"]
    known = doc["known"]
    script = Script(trajectories)
    server = serve(script)
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    report, unexplained, explained = [], 0, 0
    for name, spec in trajectories.items():
        if a.only and name != a.only:
            continue
        t0 = time.time()
        verdict_fleet = run_fleet(name, spec, base_url, os.path.abspath(a.fleet))
        t1 = time.time()
        verdict_sdk = run_sdk(name, spec, base_url, a.terminal_type)
        t2 = time.time()
        ours, theirs = observations(script, f"fleet--{name}"), observations(script, f"sdk--{name}")
        print(f"## {name}: fleet {verdict_fleet} ({t1 - t0:.1f} s), OpenHands SDK {verdict_sdk} ({t2 - t1:.1f} s)")
        if verdict_fleet != verdict_sdk:
            print(f"  verdicts differ: fleet {verdict_fleet}, SDK {verdict_sdk}")
            unexplained += 1
        for i in range(max(len(ours), len(theirs))):
            step = spec["steps"][i] if i < len(spec["steps"]) else {"tool": "?", "args": {}}
            o = ours[i] if i < len(ours) else "<none>"
            t = theirs[i] if i < len(theirs) else "<none>"
            label = f"{name}/{i}"
            what = f"{step['tool']} {json.dumps(step['args'])[:70]}"
            row = {"step": label, "call": what, "fleet": o, "sdk": t}
            if o == t:
                print(f"  {label:<14} same      {what}")
                row["verdict"] = "same"
            elif label in known:
                print(f"  {label:<14} differs   {what}\n      why: {known[label]}\n      fleet: {clip(o)}\n      sdk:   {clip(t)}")
                row["verdict"] = "known"
                explained += 1
            else:
                print(f"  {label:<14} DIFFERS   {what}\n      fleet: {clip(o)}\n      sdk:   {clip(t)}")
                row["verdict"] = "unexplained"
                unexplained += 1
            report.append(row)
    same = sum(1 for r in report if r["verdict"] == "same")
    print(f"\n{same} observations the same, {explained} different on purpose, {unexplained} unexplained")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    server.shutdown()
    sys.exit(1 if unexplained else 0)


if __name__ == "__main__":
    main()
