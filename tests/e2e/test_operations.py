"""Running the broker as a service: Prometheus metrics scraped and parsed with the Prometheus
project's own OpenMetrics parser after a scripted run (counts checked against the audit trail),
/livez and /readyz, and `tollgate-broker status`."""

from __future__ import annotations

import json
import subprocess
import time

import httpx2 as httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import BROKER_BIN, free_port, py_stdio_command, sdk_call, toml_list
from conftest import console_cli as console


def scrape(b) -> dict:
    """name -> list of (labels, value) for every sample; the text must parse as OpenMetrics."""
    r = httpx.get(f"{b.admin}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    out: dict = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(samples: dict, name: str, **labels) -> float:
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == w for k, w in labels.items()))


def config(extra: str = "") -> str:
    return f"""
    [policy]
    default = "allow"
    [dlp]
    action = "deny"
    [[server]]
    name = "py"
    command = {toml_list(py_stdio_command())}
    [[rule]]
    name = "no-buckets"
    tools = ["py/delete_bucket"]
    action = "deny"
    reason = "not here"
    [[rule]]
    name = "echo-needs-a-human"
    tools = ["py/echo"]
    when = {{ arg = "/message", matches = "^hold" }}
    action = "approve"
    [[limit]]
    name = "slow-sleeps"
    tools = ["py/sleep"]
    per_client = "1/min"
    {extra}
    """


def test_metrics_count_what_the_audit_trail_records(broker):
    b = broker(config())
    assert b.admin.startswith("http://127.0.0.1:")
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    before = scrape(b)
    assert value(before, "tollgate_build_info", version="0.1.0") == 1
    assert value(before, "tollgate_calls_total") == 0

    for i in range(3):
        assert not sdk_call(b.url("py"), agent, "echo", {"message": f"plain {i}"}).result(30).is_error
    assert sdk_call(b.url("py"), agent, "delete_bucket", {"bucket": "x"}).result(30).is_error
    assert sdk_call(b.url("py"), agent, "echo", {"message": "key AKIAIOSFODNN7EXAMPLE"}).result(30).is_error
    assert not sdk_call(b.url("py"), agent, "sleep", {"seconds": 0}).result(30).is_error
    assert sdk_call(b.url("py"), agent, "sleep", {"seconds": 0}).result(30).is_error  # rate limited
    held = sdk_call(b.url("py"), agent, "echo", {"message": "hold me"})
    c = b.connect(alice)
    call = c.pending()
    mid = scrape(b)
    assert value(mid, "tollgate_pending_calls", server="py") == 1
    assert value(mid, "tollgate_consoles_connected") == 1
    assert 0 < value(mid, "tollgate_pending_oldest_seconds", server="py") < 60
    c.decide(call["id"], "approve")
    assert not held.result(30).is_error
    rejected = sdk_call(b.url("py"), agent, "echo", {"message": "hold this one too"})
    c.decide(c.pending()["id"], "reject", "no")
    assert rejected.result(30).is_error
    c.close()

    deadline = time.monotonic() + 10
    while True:
        after = scrape(b)
        # Every entry written: 5 allowed, 1 blocked (policy) + 1 blocked (dlp), 1 rate limited,
        # 2 pending, 1 approved, 1 rejected.
        if value(after, "tollgate_calls_total") >= 12 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value(after, "tollgate_pending_calls") == 0
    assert value(after, "tollgate_consoles_connected") == 0
    assert value(after, "tollgate_guard_refusals_total", kind="policy") == 1
    assert value(after, "tollgate_guard_refusals_total", kind="dlp") == 1
    assert value(after, "tollgate_guard_refusals_total", kind="rate") == 1
    assert value(after, "tollgate_hold_duration_seconds_count", outcome="approved") == 1
    assert value(after, "tollgate_hold_duration_seconds_count", outcome="rejected") == 1
    assert value(after, "tollgate_decision_latency_seconds_count") == 1
    assert value(after, "tollgate_upstream_duration_seconds_count", server="py") == 5
    assert value(after, "tollgate_store_commit_duration_seconds_count") >= 1
    assert value(after, "tollgate_journal_bytes") > 0
    counted = {
        (l["outcome"], l["tool"]): v for l, v in after["tollgate_calls_total"] if v > 0
    }

    audit = b.audit()
    from collections import Counter

    expected = Counter((e["outcome"], e["tool"]) for e in audit)
    assert counted == {k: float(v) for k, v in expected.items()}, (counted, expected)


def test_readiness_names_what_failed_and_status_says_the_same(broker, tmp_path):
    port = free_port()
    dead = free_port()
    b = broker(
        (config()
        + f"""
        [[server]]
        name = "remote"
        url = "http://127.0.0.1:{dead}/mcp"
        [[server]]
        name = "missing"
        command = ["/nonexistent/mcp-server"]
        """)
        .replace("[policy]", f'[broker]\nadmin_listen = "127.0.0.1:{port}"\n[policy]', 1)
    )
    live = httpx.get(f"{b.admin}/livez", timeout=10)
    assert live.status_code == 200
    ready = httpx.get(f"{b.admin}/readyz", timeout=10)
    assert ready.status_code == 503
    lines = ready.text.splitlines()
    assert "ok   store" in lines and "ok   server py" in lines
    assert any(l.startswith("FAIL server remote: cannot connect to 127.0.0.1:") for l in lines), lines
    assert 'FAIL server missing: cannot find an executable "/nonexistent/mcp-server" to start' in lines
    # A page from another origin cannot read it.
    assert httpx.get(f"{b.admin}/metrics", headers={"origin": "https://evil.example"}, timeout=10).status_code == 403

    r = subprocess.run([str(BROKER_BIN), "status", "--config", str(b.config_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "FAIL server remote" in r.stdout and r.stdout.strip().endswith("not ready"), r.stdout
    b.proc.stop()
    r = subprocess.run([str(BROKER_BIN), "status", "--config", str(b.config_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no answer from" in r.stderr, r.stderr

    # A broker whose upstreams are all there is ready.
    ok = broker(config().replace("[policy]", f'[broker]\nadmin_listen = "127.0.0.1:{free_port()}"\n[policy]', 1), name="ok")
    r = subprocess.run([str(BROKER_BIN), "status", "--config", str(ok.config_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip().endswith("ready"), r.stdout + r.stderr


def test_json_logs_tie_every_line_of_a_call_to_it_and_never_hold_secrets(broker):
    b = broker(config().replace("[policy]", '[broker]\nlog_format = "json"\n[policy]', 1), env={"RUST_LOG": "debug"})
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    secret = "AKIA" + "IOSFODNN7EXAMPLE"
    assert sdk_call(b.url("py"), agent, "echo", {"message": f"key {secret}"}).result(30).is_error
    assert sdk_call(b.url("py"), agent, "delete_bucket", {"bucket": "x"}).result(30).is_error
    held = sdk_call(b.url("py"), agent, "echo", {"message": "hold on"})
    c = b.connect(alice)
    call = c.pending()
    c.decide(call["id"], "approve")
    assert not held.result(30).is_error
    b.proc.stop()
    log = b.log()
    assert secret not in log
    lines = [json.loads(l) for l in log.splitlines() if l.strip()]
    assert lines and all("level" in l and "fields" in l for l in lines)
    about = [l for l in lines if l.get("span", {}).get("name") == "call"]
    held_line = next(l for l in about if l["fields"].get("message") == "held for approval")
    assert held_line["span"]["call"] == call["id"]
    assert (held_line["span"]["client"], held_line["span"]["server"], held_line["span"]["tool"]) == ("agent", "py", "echo")
    refused = [l for l in about if l["span"]["tool"] == "delete_bucket"]
    assert refused and all(l["span"]["call"] and l["span"]["client"] == "agent" for l in refused)


def test_systemd_hears_ready_watchdog_reloading_and_stopping(broker, tmp_path):
    import signal
    import socket

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    b = broker(config(), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})

    def messages(until: str, limit: int = 200) -> list[str]:
        got = []
        for _ in range(limit):
            m = sock.recv(4096).decode()
            got.append(m)
            if until in m.split("\n"):
                return got
        raise AssertionError(f"no {until} in {got}")

    first = messages("READY=1")
    ready = next(m for m in first if "READY=1" in m.split("\n"))
    assert "STATUS=serving 1 servers" in ready
    start = time.monotonic()
    messages("WATCHDOG=1")
    messages("WATCHDOG=1")  # again, every WatchdogSec/2
    assert time.monotonic() - start < 5
    b.proc.popen.send_signal(signal.SIGHUP)
    reload = messages("RELOADING=1")[-1].split("\n")
    assert any(l.startswith("MONOTONIC_USEC=") for l in reload), reload
    messages("READY=1")
    b.proc.popen.send_signal(signal.SIGTERM)
    messages("STOPPING=1")
    assert b.proc.popen.wait(15) == 0


def test_the_packaged_unit_passes_systemd_analyze_verify(tmp_path):
    from conftest import ROOT

    unit = (ROOT / "packaging" / "tollgate-broker.service").read_text()
    # verify checks that ExecStart's program exists: point it at the binary under test.
    (tmp_path / "tollgate-broker.service").write_text(unit.replace("/usr/local/bin/tollgate-broker", str(BROKER_BIN)))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "tollgate-broker.service")],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stdout + r.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "DynamicUser=yes" in unit
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit


def complete(binary, words: list[str]) -> list[str]:
    """What bash offers for `words` after sourcing the binary's completion script."""
    name = binary.name
    script = f"""
    source <({binary} completions bash) || exit 3
    fn=$(complete -p {name} | sed -E 's/.* -F ([^ ]+) .*/\\1/')
    COMP_WORDS=({' '.join(words)} "")
    COMP_CWORD={len(words)}
    COMP_LINE="{' '.join(words)} "
    COMP_POINT=${{#COMP_LINE}}
    $fn {name} "" {words[-1]}
    printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_completions_work_in_bash_and_man_pages_render(tmp_path):
    from conftest import CONSOLE_BIN

    assert {"serve", "check", "status", "audit", "notify", "completions"} <= set(complete(BROKER_BIN, ["tollgate-broker"]))
    assert {"text", "json"} == set(complete(BROKER_BIN, ["tollgate-broker", "serve", "--log-format"]))
    assert {"approve", "reject", "watch", "audit", "list"} <= set(complete(CONSOLE_BIN, ["tollgate"]))
    for binary, first in ((BROKER_BIN, "tollgate-broker.1"), (CONSOLE_BIN, "tollgate.1")):
        out = subprocess.run([str(binary), "man", "--dir", str(tmp_path / binary.name)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        pages = out.stdout.split()
        assert pages[0].endswith(first) and len(pages) > 5
        text = (tmp_path / binary.name / first).read_text()
        assert text.startswith(".ie") or ".TH" in text
    serve = (tmp_path / "tollgate-broker" / "tollgate-broker-serve.1").read_text()
    assert "log\\-format" in serve or "log-format" in serve


def test_audit_follow_streams_new_entries_from_a_running_broker_and_resumes(broker, procs):
    port = free_port()
    b = broker(config().replace("[policy]", f'[broker]\nadmin_listen = "127.0.0.1:{port}"\n[policy]', 1))
    agent = b.token("agent", "viewer")
    reader = b.token("shipper", "viewer")
    assert not sdk_call(b.url("py"), agent, "echo", {"message": "before following"}).result(30).is_error
    f = procs.start(
        "follow",
        [str(BROKER_BIN), "audit", "--follow", "--json", "--config", str(b.config_path)],
        {"TOLLGATE_TOKEN": reader},
    )
    time.sleep(1)
    for i in range(3):
        assert not sdk_call(b.url("py"), agent, "echo", {"message": f"followed {i}"}).result(30).is_error
    assert sdk_call(b.url("py"), agent, "delete_bucket", {"bucket": "x"}).result(30).is_error

    def lines(proc, n, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [json.loads(l) for l in proc.stdout().splitlines() if l.strip()]
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise TimeoutError(proc.stdout() + proc.stderr())

    got = lines(f, 4)
    assert [e["outcome"] for e in got] == ["allowed"] * 3 + ["blocked"]
    seqs = [e["seq"] for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + 4)) and seqs[0] == 2  # entry 1 came before
    f.stop()
    # Resume after the second: the rest again, without gaps or repeats.
    g = procs.start(
        "follow2",
        [str(BROKER_BIN), "audit", "--follow", "--json", "--after", str(seqs[1]), "--config", str(b.config_path)],
        {"TOLLGATE_TOKEN": reader},
    )
    assert [e["seq"] for e in lines(g, 2)] == seqs[2:]
    g.stop()
    bad = subprocess.run(
        [str(BROKER_BIN), "audit", "--follow", "--config", str(b.config_path), "--token", "tg_wrong"],
        capture_output=True, text=True, timeout=30,
    )
    assert bad.returncode == 1 and "refused the token (HTTP 401)" in bad.stderr, bad.stderr
    audit = b.audit()
    assert [e["seq"] for e in audit][1:5] == seqs


def test_live_reload_keeps_held_calls_applies_new_rules_and_refuses_a_broken_config(broker):
    import signal

    port = free_port()
    base = config().replace("[policy]", f'[broker]\nadmin_listen = "127.0.0.1:{port}"\n[policy]', 1)
    b = broker(base)
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    root = b.token("root", "admin")
    c = b.connect(alice)
    held = sdk_call(b.url("py"), agent, "echo", {"message": "hold across the reload"})
    call = c.pending()
    assert not sdk_call(b.url("py"), agent, "echo", {"message": "allowed before"}).result(30).is_error

    def reload(token=root, url=None):
        args = ["--url", url] if url else []
        return subprocess.run([str(BROKER_BIN), "reload", "--config", str(b.config_path), "--token", token, *args],
                              capture_output=True, text=True, timeout=60)

    # A new rule, and a new server.
    text = b.config_path.read_text()
    text += '\n[[rule]]\nname = "no-more-echo"\ntools = ["py/echo"]\nwhen = { arg = "/message", matches = "^after" }\naction = "deny"\nreason = "echo is closed now"\n'
    text += f'\n[[server]]\nname = "py2"\ncommand = {toml_list(py_stdio_command())}\n'
    b.config_path.write_text(text)
    r = reload()
    assert r.returncode == 0, r.stderr
    assert "reloaded: policy" in r.stdout and "server py2 added" in r.stdout, r.stdout
    m = c.next("config")
    assert m.get("refused") is None and m["policy"]
    denied = sdk_call(b.url("py"), agent, "echo", {"message": "after the reload"}).result(30)
    assert denied.is_error and "echo is closed now" in denied.content[0].text
    assert not sdk_call(b.url("py2"), agent, "echo", {"message": "new server"}).result(30).is_error
    # The held call kept its place and runs once approved.
    c.decide(call["id"], "approve")
    assert held.result(30).content[0].text == "Echo: hold across the reload"

    # A broken config is refused with its problems; the running one stays.
    good = b.config_path.read_text()
    b.config_path.write_text(good + '\n[[rule]]\ntools = ["nowhere/x"]\naction = "maybe"\n')
    # The command reads the file first and says so without asking the broker...
    r = reload()
    assert r.returncode == 2 and 'unknown action "maybe"' in r.stderr, r.stderr
    # ...and the broker refuses it too (asked directly), with every problem's line and column.
    r = reload(url=b.admin)
    assert r.returncode == 1 and "refused" in r.stderr and 'unknown action "maybe"' in r.stderr, r.stderr
    assert f"{b.config_path}:43:10" in r.stderr
    m = c.next("config")
    assert m["refused"] and "maybe" in m["refused"]
    still = sdk_call(b.url("py"), agent, "echo", {"message": "after the refusal"}).result(30)
    assert still.is_error and "echo is closed now" in still.content[0].text
    # Only an admin may reload; SIGHUP does the same, and a removed server is gone.
    assert reload(alice, url=b.admin).returncode == 1
    b.config_path.write_text(good.replace('name = "py2"', 'name = "py3"'))
    b.proc.popen.send_signal(signal.SIGHUP)
    m = c.next("config")
    assert m.get("refused") is None
    assert sdk_call(b.url("py3"), agent, "echo", {"message": "renamed"}).result(30).content[0].text == "Echo: renamed"
    r = httpx.post(b.url("py2"), json={}, headers={"authorization": f"Bearer {agent}"}, timeout=10)
    assert r.status_code == 404
    # A setting read only at start is named, and the rest still applies.
    b.config_path.write_text(b.config_path.read_text().replace(f'admin_listen = "127.0.0.1:{port}"', f'admin_listen = "127.0.0.1:{port}"\nkeepalive = "7s"', 1))
    r = reload()
    assert r.returncode == 0 and "needs a restart to change: keepalive" in r.stdout, r.stdout + r.stderr
    samples = scrape(b)
    assert value(samples, "tollgate_config_reloads_total", result="applied") == 3
    assert value(samples, "tollgate_config_reloads_total", result="refused") == 1
    c.close()
    b.proc.stop()


def test_a_clients_trace_context_reaches_the_record_the_logs_and_a_stdio_upstream(broker):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    import anyio

    b = broker(config() + '\n[[rule]]\nname = "traced-held"\ntools = ["py/traced"]\naction = "approve"\n')
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def run():
        http = httpx.AsyncClient(headers={"Authorization": f"Bearer {agent}", "traceparent": tp}, timeout=60)
        async with Client(streamable_http_client(b.url("py"), http_client=http)) as c:
            return await c.call_tool("traced", {})

    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(anyio.run, run)
    c = b.connect(alice)
    call = c.pending()
    assert call["trace"] == tp
    c.decide(call["id"], "approve")
    # The stdio server saw no HTTP header: the broker put the trace context in _meta.
    assert fut.result(30).content[0].text == tp
    c.close()
    b.proc.stop()
    log = b.log()
    decided = next(l for l in log.splitlines() if " decided" in l and call["id"] in l)
    assert "trace=" + tp in decided.replace('"', ""), decided
    assert "trace_id=4bf92f3577b34da6a3ce929d0e0e4736" in log
    # An invalid traceparent is not recorded.
    ok = broker(config(), name="other")
    t = ok.token("agent", "viewer")
    assert not sdk_call(ok.url("py"), t, "echo", {"message": "x"}).result(30).is_error
