"""Notifications against a real HTTP receiver: signed webhooks, Slack and PagerDuty payloads,
a command sink, a 500-call loop coalesced into one notification, retries after a 500 and a
timeout, a dead sink that never holds up a hold (and is shown to consoles), escalation with
its audit entry, expiry warnings, `expiry = "never"`, and `notify test`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import BROKER_BIN, PYTHON, ROOT, broker_cli, free_port, py_stdio_command, sdk_call, toml_list
from conftest import console_cli as console

AGENT = ROOT / "examples" / "agent.py"
SECRET = "whsec-test-0123456789"


class Receiver:
    """An HTTP server that records every POST by path. `script[path]` lists what to do for the
    next requests there: an int status, or "hang" (answer after 5 s)."""

    def __init__(self):
        self.posts: list[tuple[str, dict, bytes, float]] = []
        self.script: dict[str, list] = {}
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    outer.posts.append((self.path, dict(self.headers), body, time.time()))
                    todo = outer.script.get(self.path, [])
                    action = todo.pop(0) if todo else 200
                if action == "hang":
                    time.sleep(5)
                    action = 200
                out = b'{"status":"success"}'
                self.send_response(action)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[dict]:
        with self.lock:
            return [json.loads(b) for p, _, b, _ in self.posts if p == path]

    def wait(self, path: str, n: int, where=lambda b: True, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [b for b in self.bodies(path) if where(b)]
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise TimeoutError(f"{path}: fewer than {n} posts after {timeout}s: {self.bodies(path)}")

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def rule(extra: str = "") -> str:
    return f"""
    [policy]
    default = "allow"
    [[server]]
    name = "py"
    command = {toml_list(py_stdio_command())}
    [[rule]]
    name = "echo-needs-a-human"
    tools = ["py/echo"]
    action = "approve"
    {extra}
    """


def test_webhook_slack_pagerduty_and_command_sinks_get_well_formed_signed_events(broker, receiver, tmp_path):
    out = tmp_path / "command-events.jsonl"
    script = f"import sys, os; open({str(out)!r}, 'a').write(os.environ['TOLLGATE_EVENT'] + ' ' + sys.stdin.read() + '\\n')"
    b = broker(
        rule()
        + f"""
        [dlp]
        action = "approve"
        [[notify]]
        name = "hook"
        kind = "webhook"
        url = "{receiver.url('/hook')}"
        secret = "${{HOOK_SECRET}}"
        coalesce = "200ms"
        link_template = "https://tollgate.example/calls/{{id}}"
        [[notify]]
        name = "chat"
        kind = "slack"
        url = "{receiver.url('/slack')}"
        events = ["held"]
        coalesce = "200ms"
        link_template = "https://tollgate.example/calls/{{id}}"
        [[notify]]
        name = "pager"
        kind = "pagerduty"
        url = "{receiver.url('/pd')}"
        routing_key = "R0UT1NGKEY"
        coalesce = "200ms"
        [[notify]]
        name = "script"
        kind = "command"
        command = [{json.dumps(PYTHON)}, "-c", {json.dumps(script)}]
        coalesce = "200ms"
        """,
        env={"HOOK_SECRET": SECRET},
    )
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    secret = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    started = time.time()
    fut = sdk_call(b.url("py"), agent, "echo", {"message": f"deploy with {secret}"})

    [held] = receiver.wait("/hook", 1)
    _, headers, raw, at = next(p for p in receiver.posts if p[0] == "/hook")
    # The signature: HMAC-SHA256 over "<t>.<body>" with the secret from the environment.
    sig = dict(kv.split("=", 1) for kv in headers["tollgate-signature"].split(","))
    mac = hmac.new(SECRET.encode(), f"{sig['t']}.".encode() + raw, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, sig["v1"])
    assert abs(int(sig["t"]) - at) < 10 and headers["tollgate-event"] == "held"
    assert held["event"] == "held" and held["call"]["tool"] == "echo" and held["call"]["server"] == "py"
    assert held["call"]["client"] == "agent" and held["call"]["rule"] == "echo-needs-a-human"
    assert held["call"]["expires_at"] and held["pattern"]["calls"] == 1
    assert held["link"] == f"https://tollgate.example/calls/{held['call']['id']}"
    assert held["commands"]["approve"] == f"tollgate approve {held['call']['id']}"
    # DLP redaction applied: the secret never leaves in a notification.
    assert secret not in raw.decode() and "REDACTED" in held["call"]["arguments"]

    [slack] = receiver.wait("/slack", 1)
    assert "echo" in slack["text"] and slack["blocks"][0]["type"] == "header"
    fields = " ".join(f["text"] for f in slack["blocks"][1]["fields"])
    assert "py/echo" in fields and "agent" in fields and "echo-needs-a-human" in fields and "Expires" in fields
    assert any(b["type"] == "actions" and b["elements"][0]["url"].endswith(held["call"]["id"]) for b in slack["blocks"])
    assert f"tollgate approve {held['call']['id']}" in json.dumps(slack)
    assert secret not in json.dumps(slack)

    [trigger] = receiver.wait("/pd", 1)
    assert trigger["routing_key"] == "R0UT1NGKEY" and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"].startswith("tollgate/py/echo/")
    p = trigger["payload"]
    assert p["severity"] == "warning" and p["source"].startswith("tollgate-broker@") and "echo" in p["summary"]
    assert p["component"] == "py" and p["group"] == "echo" and p["class"] == "echo-needs-a-human"

    deadline = time.monotonic() + 20
    while not out.exists() or "held " not in out.read_text():
        assert time.monotonic() < deadline, b.log()[-2000:]
        time.sleep(0.1)
    kind, body = out.read_text().splitlines()[0].split(" ", 1)
    assert kind == "held" and json.loads(body)["call"]["id"] == held["call"]["id"]

    # A decision: the webhook and the command hear of it, PagerDuty resolves the same key.
    r = console(b, alice, "approve", held["call"]["id"])
    assert r.returncode == 0, r.stderr
    assert not fut.result(30).is_error
    [decided] = receiver.wait("/hook", 1, where=lambda e: e["event"] == "decided")
    assert decided["call"]["outcome"] == "approved" and decided["call"]["decisions"][0]["by"] == "alice"
    assert "approved by alice" in decided["summary"]
    [resolve] = receiver.wait("/pd", 1, where=lambda e: e["event_action"] == "resolve")
    assert resolve["dedup_key"] == trigger["dedup_key"]
    assert len(receiver.bodies("/slack")) == 1, "slack only asked for held events"
    # Delivery took under the coalescing gap plus a little, not seconds.
    assert at - started < 10


def test_a_500_call_loop_is_one_notification_and_failures_are_retried(broker, receiver, procs):
    receiver.script["/flaky"] = [500]
    receiver.script["/slow"] = ["hang"]
    b = broker(
        rule()
        + f"""
        [[notify]]
        name = "hook"
        kind = "webhook"
        url = "{receiver.url('/hook')}"
        coalesce = "3s"
        coalesce_max = "60s"
        [[notify]]
        name = "flaky"
        kind = "webhook"
        url = "{receiver.url('/flaky')}"
        events = ["held"]
        tools = ["py/echo"]
        coalesce = "3s"
        coalesce_max = "60s"
        [[notify]]
        name = "slow"
        kind = "webhook"
        url = "{receiver.url('/slow')}"
        events = ["held"]
        timeout = "1s"
        coalesce = "3s"
        coalesce_max = "60s"
        """
    )
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    procs.start("agent", [PYTHON, str(AGENT), b.url("py"), "--token", agent, "--loop", "500", "--json"])
    held = receiver.wait("/hook", 3, where=lambda e: e["event"] == "held", timeout=120)
    time.sleep(4)  # anything more would have come by now
    held = [e for e in receiver.bodies("/hook") if e["event"] == "held"]
    assert sorted(e["pattern"]["calls"] for e in held) == [1, 1, 500], [e["summary"] for e in held]
    loop = next(e for e in held if e["pattern"]["calls"] == 500)
    assert loop["summary"].startswith("500 calls of py/echo from agent held for approval")
    assert len(loop["pattern"]["ids"]) == 20 and loop["pattern"]["pending"] == 500

    # The flaky sink answered 500 once, then took the retry; the slow one timed out once. Each
    # got every one of the three notifications, one of them twice.
    for path in ("/flaky", "/slow"):
        got = receiver.wait(path, 4)
        time.sleep(1)
        got = receiver.bodies(path)
        assert len(got) == 4, (path, [e["summary"] for e in got])
        assert sorted(e["pattern"]["calls"] for e in {e["call"]["id"]: e for e in got}.values()) == [1, 1, 500]
    log = b.log()
    assert "notification failed; retrying" in log and "HTTP 500" in log and "no answer within 1s" in log

    # One bulk rejection of the loop: one decided notification.
    calls = json.loads(console(b, alice, "list", "--json").stdout)
    fingerprint = next(c["fingerprint"] for c in calls if c["arguments"]["message"].startswith("retry"))
    r = console(b, alice, "reject", "--fingerprint", fingerprint, "--reason", "runaway loop")
    assert r.returncode == 0, r.stderr
    [decided] = receiver.wait("/hook", 1, where=lambda e: e["event"] == "decided" and e["pattern"]["calls"] > 1, timeout=30)
    assert decided["pattern"]["calls"] == 500 and decided["call"]["outcome"] == "rejected"
    assert decided["pattern"]["pending"] == 0


def test_a_dead_or_hanging_sink_never_holds_up_a_hold_and_consoles_are_told(broker, receiver):
    receiver.script["/hang"] = ["hang"] * 100
    dead = free_port()
    b = broker(
        rule()
        + f"""
        [[notify]]
        name = "dead"
        kind = "webhook"
        url = "http://127.0.0.1:{dead}/nobody"
        events = ["held"]
        coalesce = "100ms"
        retries = 1
        queue = 2
        [[notify]]
        name = "hanging"
        kind = "webhook"
        url = "{receiver.url('/hang')}"
        events = ["held"]
        coalesce = "100ms"
        timeout = "10s"
        queue = 2
        """
    )
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    c = b.connect(alice)
    futs = []
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    for w in words:
        futs.append(sdk_call(b.url("py"), agent, "echo", {"message": w}))
    # Every call is held while both sinks are stuck.
    seen = {c.pending()["id"] for _ in range(12)}
    assert len(seen) == 12
    # The console hears that notifications are being dropped and which sink fails.
    deadline = time.monotonic() + 30
    health = {}
    while not (health.get("dropped", 0) > 0 and any(n == "dead" for n, _ in health.get("failing", []))):
        assert time.monotonic() < deadline, health
        health = c.next("notify", timeout=30)["health"]
    assert "notification dropped" in b.log()
    # A sink's URL can be its secret (Slack's is): errors shown and logged never carry it.
    assert all("/nobody" not in err for _, err in health["failing"]), health
    assert "/nobody" not in b.log()
    from test_operations import scrape, value

    samples = scrape(b)
    assert value(samples, "tollgate_notifications_total", result="dropped") >= health["dropped"] > 0
    assert value(samples, "tollgate_notifications_total", result="failed") >= 1
    c.decide(sorted(seen), "approve")
    for f in futs:
        assert not f.result(30).is_error


def test_escalation_expiry_warnings_and_calls_that_never_expire(broker, receiver, tmp_path):
    b = broker(
        f"""
        [policy]
        default = "allow"
        [[server]]
        name = "py"
        command = {toml_list(py_stdio_command())}
        [[rule]]
        name = "buckets"
        tools = ["py/delete_bucket"]
        action = "approve"
        hold = "retry"
        expiry = "never"
        escalate_after = "1s"
        escalate_to = ["pager"]
        [[rule]]
        name = "echo-short"
        tools = ["py/echo"]
        action = "approve"
        expiry = "3s"
        [[notify]]
        name = "hook"
        kind = "webhook"
        url = "{receiver.url('/hook')}"
        events = ["held", "expiring", "expired"]
        expiring_before = "2s"
        coalesce = "100ms"
        [[notify]]
        name = "pager"
        kind = "webhook"
        url = "{receiver.url('/pager')}"
        events = []
        coalesce = "100ms"
        """
    )
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    # Retry mode answers at once; the call stays pending, without an expiry.
    assert sdk_call(b.url("py"), agent, "delete_bucket", {"bucket": "prod"}).result(30).is_error
    [esc] = receiver.wait("/pager", 1, timeout=20)
    assert esc["event"] == "escalated" and esc["escalated_after_s"] == 1
    assert esc["call"]["tool"] == "delete_bucket" and esc["call"]["expires_at"] is None
    held = receiver.wait("/hook", 1, where=lambda e: e["call"]["tool"] == "delete_bucket")
    assert held[0]["event"] == "held"
    listed = console(b, alice, "list")
    assert "never" in listed.stdout, listed.stdout
    # A reload that changes the sinks starts a new notifier: it must not escalate again.
    b.config_path.write_text(b.config_path.read_text().replace('coalesce = "100ms"', 'coalesce = "150ms"'))
    import signal as _signal

    b.proc.popen.send_signal(_signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "configuration reloaded" not in b.log():
        assert time.monotonic() < deadline, b.log()[-2000:]
        time.sleep(0.1)
    time.sleep(1.5)
    assert len(receiver.bodies("/pager")) == 1
    # A short expiry: warned 2 s before, then expired (fail-closed: the client is refused).
    r = sdk_call(b.url("py"), agent, "echo", {"message": "hurry"}).result(30)
    assert r.is_error and "expired" in r.content[0].text
    events = [e["event"] for e in receiver.bodies("/hook") if e["call"]["tool"] == "echo"]
    assert events[:2] == ["held", "expiring"], events
    receiver.wait("/hook", 1, where=lambda e: e["event"] == "expired")
    # The bucket call is still pending (it never expires), and the audit recorded the escalation.
    time.sleep(1)
    pending = json.loads(console(b, alice, "list", "--json").stdout)
    assert [c["tool"] for c in pending] == ["delete_bucket"]
    audit = b.audit()
    escalated = [e for e in audit if e["outcome"] == "escalated"]
    assert len(escalated) == 1 and "escalated to pager" in escalated[0]["reason"]
    assert escalated[0]["call_id"] == esc["call"]["id"]
    assert broker_cli("audit", "verify", "--data-dir", str(b.data_dir)).returncode == 0


def test_check_warns_about_streams_that_never_expire_and_notify_test_reports_each_sink(receiver, tmp_path):
    dead = free_port()
    path = tmp_path / "c.toml"
    path.write_text(
        f"""
        [broker]
        auth = "none"
        [[server]]
        name = "py"
        command = {toml_list(py_stdio_command())}
        [[rule]]
        tools = ["py/echo"]
        action = "approve"
        expiry = "never"
        [[notify]]
        name = "good"
        kind = "webhook"
        url = "{receiver.url('/good')}"
        secret = "${{TG_TEST_SECRET}}"
        [[notify]]
        name = "dead"
        kind = "slack"
        url = "http://127.0.0.1:{dead}/x"
        """
    )
    env = {**os.environ, "TG_TEST_SECRET": "s"}
    r = subprocess.run([str(BROKER_BIN), "check", "--config", str(path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert 'warning: rule 1: expiry = "never" with hold = "stream"' in r.stderr
    r = subprocess.run([str(BROKER_BIN), "check", "--config", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "TG_TEST_SECRET is not set" in r.stderr
    r = subprocess.run(
        [str(BROKER_BIN), "notify", "test", "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    lines = dict(l.split(": ", 1) for l in r.stdout.splitlines())
    assert lines["good"].startswith("ok HTTP 200"), r.stdout
    assert lines["dead"].startswith("FAILED"), r.stdout
    [sample] = receiver.bodies("/good")
    assert sample["event"] == "held" and sample["call"]["rule"] == "notify-test"


def test_the_tui_alerts_when_away_and_watch_exec_runs_per_call(broker, tmp_path, procs):
    from test_console import tmux, wait_screen

    b = broker(rule())
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    cfg = tmp_path / "console.toml"
    cfg.write_text('notify = "osc"\nnotify_idle = "1s"\n')
    raw = tmp_path / "pane.raw"
    session = f"tollgate-alert-{os.getpid()}"
    from conftest import CONSOLE_BIN

    cmd = f"env TOLLGATE_URL={b.console} TOLLGATE_TOKEN={alice} {CONSOLE_BIN} --config {cfg}"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd)
    try:
        tmux("pipe-pane", "-t", session, "-o", f"cat >> {raw}")
        wait_screen(session, r"0 pending · ● connected")
        # watch --exec: a script per new pending call, with the message on stdin.
        seen = tmp_path / "exec.jsonl"
        watch = procs.start(
            "watch",
            [str(CONSOLE_BIN), "watch", "--exec", f'printf "%s " "$TOLLGATE_TOOL" >> {seen}; cat >> {seen}; echo >> {seen}'],
            {"TOLLGATE_URL": b.console, "TOLLGATE_TOKEN": alice, "XDG_CONFIG_HOME": "/nonexistent"},
        )
        time.sleep(1.5)  # the console is idle now
        fut = sdk_call(b.url("py"), agent, "echo", {"message": "while you were away"})
        wait_screen(session, r"1 pending")
        deadline = time.monotonic() + 10
        while b"\x1b]9;Tollgate: a call is waiting: py/echo from agent" not in (raw.read_bytes() if raw.exists() else b""):
            assert time.monotonic() < deadline, raw.read_bytes()[-500:] if raw.exists() else "no capture"
            time.sleep(0.1)
        data = raw.read_bytes()
        assert b"\x1b]777;notify;Tollgate;Tollgate: a call is waiting: py/echo from agent" in data
        deadline = time.monotonic() + 10
        while not seen.exists() or "echo {" not in seen.read_text():
            assert time.monotonic() < deadline, watch.stderr()
            time.sleep(0.1)
        tool, msg = seen.read_text().splitlines()[0].split(" ", 1)
        event = json.loads(msg)
        assert tool == "echo" and event["type"] == "call_pending" and event["call"]["arguments"]["message"] == "while you were away"
        # Another call within the quiet period (3 s) does not alert again (presence after a key
        # is covered by the alert module's unit tests).
        from test_console import keys

        before = raw.read_bytes().count(b"\x1b]9;")
        fut2 = sdk_call(b.url("py"), agent, "echo", {"message": "while you are here"})
        wait_screen(session, r"2 pending")
        time.sleep(0.5)
        assert raw.read_bytes().count(b"\x1b]9;") == before
        keys(session, "a")
        wait_screen(session, r"1 pending")
        keys(session, "a")
        wait_screen(session, r"0 pending")
        assert not fut.result(30).is_error and not fut2.result(30).is_error
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
