"""Hardening: what a hostile client, a revoked approver or a crash-happy operator must not be
able to do. Each test here failed before the fix it names (issue 17)."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
from websockets.exceptions import ConnectionClosed

from conftest import INIT, Stream, broker_cli, everything_stdio_command, free_port, post, py_stdio_command, sdk_call, toml_list


def holding(extra: str = "", broker_extra: str = "") -> str:
    """everything over stdio; echo is held for a person, everything else allowed."""
    return f"""
    [broker]
    keepalive = "300ms"
    {broker_extra}
    [policy]
    default = "allow"

    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}

    [[rule]]
    name = "echo-needs-a-human"
    tools = ["everything/echo"]
    action = "approve"
    {extra}
    """


def closed_reason(console, timeout: float = 10) -> str:
    """Wait until the broker closes a console's WebSocket; its close reason."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            console.recv(timeout=max(0.1, deadline - time.monotonic()))
    except ConnectionClosed as e:
        return e.rcvd.reason if e.rcvd else ""
    except TimeoutError:
        pass
    raise AssertionError(f"the console was not closed within {timeout}s")


# 1. Revoking a token stops an open console.


def test_a_revoked_approver_cannot_decide_and_is_disconnected(broker):
    b = broker(holding())
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    bob = b.connect(b.token("bob", "approver"))
    fut = sdk_call(b.url("everything"), agent, "echo", {"message": "after revocation"})
    call = bob.pending()
    alice.pending()
    out = broker_cli("token", "revoke", "--data-dir", str(b.data_dir), "bob")
    assert out.returncode == 0, out.stderr
    # A decision sent at once, on the connection opened before the revocation, is refused.
    try:
        answer = bob.request(
            {"type": "decide", "target": {"by": "ids", "ids": [call["id"]]}, "verdict": "approve"},
            "decided",
        )
        assert answer["type"] == "error" or not answer["results"][0]["ok"], answer
    except ConnectionClosed:
        pass
    # The connection is closed, saying why.
    reason = closed_reason(bob)
    assert "revoked" in reason, reason
    # The call is still pending: alice decides it.
    [res] = alice.decide(call["id"], "reject", "checked after bob left")
    assert res["ok"], res
    assert fut.result(timeout=30).is_error is True
    trail = b.audit("--call", call["id"])
    assert [e["outcome"] for e in trail] == ["pending", "rejected"]
    assert trail[-1]["approvers"] == ["alice"]


def test_a_changed_role_reaches_open_consoles(broker):
    b = broker(holding())
    b.token("carol", "approver")
    carol = b.connect(b.token("dave", "approver"))
    out = broker_cli("token", "revoke", "--data-dir", str(b.data_dir), "dave")
    assert out.returncode == 0, out.stderr
    b.token("dave", "viewer")
    reason = closed_reason(carol)
    assert "revoked" in reason or "changed" in reason, reason


# 2. An MCP session belongs to the identity that created it.


def test_another_identity_cannot_use_read_or_end_someone_elses_session(broker):
    b = broker(holding())
    alice_agent = b.token("agent-a", "viewer")
    mallory = b.token("agent-m", "viewer")
    viewer = b.connect(b.token("vic", "viewer"))
    own = {"authorization": f"Bearer {alice_agent}"}
    init = post(b.url("everything"), INIT, own)
    assert init.status_code == 200, init.text
    sid = init.headers["mcp-session-id"]
    sess = {**own, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    fut = sdk_call(b.url("everything"), alice_agent, "echo", {"message": "mine"})
    seen = viewer.pending()
    assert "session" not in seen, "consoles are not shown session ids"
    theirs = {"authorization": f"Bearer {mallory}", "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    listed = post(b.url("everything"), {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}, theirs)
    assert listed.status_code == 404, listed.text
    stream = httpx.get(b.url("everything"), headers={**theirs, "accept": "text/event-stream"}, timeout=10)
    assert stream.status_code == 404, stream.text
    ended = httpx.delete(b.url("everything"), headers=theirs, timeout=10)
    assert ended.status_code == 404, ended.text
    # The owner's session is untouched.
    mine = post(b.url("everything"), {"jsonrpc": "2.0", "id": 10, "method": "tools/list"}, sess)
    assert mine.status_code == 200 and "echo" in mine.text, mine.text
    viewer.close()
    b.connect(b.token("alice", "approver")).decide(seen["id"], "approve")
    assert fut.result(timeout=30).content[0].text == "Echo: mine"


# 3. An approval acknowledged just before a crash does not vanish.


def test_an_approved_call_cut_by_kill_9_is_reported_outcome_unknown_and_never_rerun(broker, everything_http):
    port = free_port()
    cfg = f"""
    [broker]
    keepalive = "300ms"
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    url = "{everything_http}"
    [[rule]]
    name = "slow-needs-a-human"
    tools = ["everything/trigger-long-running-operation"]
    action = "approve"
    """
    b = broker(cfg, listen=f"127.0.0.1:{port}")
    auth = {"authorization": f"Bearer {b.token('agent', 'viewer')}"}
    alice = b.connect(b.token("alice", "approver"))
    init = post(b.url("everything"), {**INIT, "id": 0}, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25", "accept": "application/json, text/event-stream"}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    slow = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "trigger-long-running-operation", "arguments": {"duration": 30, "steps": 30}, "_meta": {"progressToken": "p1"}}}
    stream = Stream("POST", b.url("everything"), sess, slow)
    call = alice.pending()
    [ok] = alice.decide(call["id"], "approve")
    assert ok["ok"], ok

    def upstream_progress():
        return [i for i, d in stream.events if '"progress"' in d and "Waiting for approval" not in d]

    deadline = time.monotonic() + 20
    while not upstream_progress() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_progress(), f"the upstream never started: {stream.events}"
    last_id = stream.events[-1][0]
    b.proc.stop(signal.SIGKILL)
    stream.done.wait(10)

    b2 = broker(cfg, name="restarted", data_name="broker", listen=f"127.0.0.1:{port}")
    alice2 = b2.connect(b2.token("alice2", "approver"))
    assert alice2.snapshot["pending"] == [], "an approved call is not held again"
    resumed = Stream("GET", b2.url("everything"), {**sess, "last-event-id": last_id})
    assert resumed.done.wait(20)
    [answer] = resumed.results()
    assert answer["id"] == 1 and answer["result"]["isError"] is True, answer
    assert "Outcome unknown" in answer["result"]["content"][0]["text"], answer
    trail = b2.audit("--call", call["id"])
    assert [e["outcome"] for e in trail] == ["pending", "approved", "abandoned"], trail
    assert "outcome unknown" in (trail[-1].get("reason") or ""), trail[-1]

    # Reported once: another restart leaves the audit as it was, and the chain verifies.
    b2.proc.stop(signal.SIGKILL)
    b3 = broker(cfg, name="again", data_name="broker", listen=f"127.0.0.1:{port}")
    assert [e["outcome"] for e in b3.audit("--call", call["id"])] == ["pending", "approved", "abandoned"]
    b3.proc.stop()
    ok = broker_cli("audit", "verify", "--data-dir", str(b3.data_dir))
    assert ok.returncode == 0, ok.stderr


# 4. DLP is linear, bounded, and off the async workers.


def test_a_flood_of_secrets_is_refused_at_the_limit_and_the_broker_stays_responsive(broker):
    b = broker(holding("", '[dlp]\naction = "redact"'))
    agent = b.token("agent", "viewer")
    auth = {"authorization": f"Bearer {agent}"}
    init = post(b.url("everything"), INIT, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    # ~3.9 MB: one AWS-key-like token 190 000 times (this once cost 26 s of CPU per call).
    flood = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get-sum", "arguments": {"a": 1, "b": 2, "note": "AKIAIOSFODNN7EXAMPLE " * 190_000}}}
    body = json.dumps(flood)
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(post, b.url("everything"), body, {**sess, "content-type": "application/json"}, timeout=120) for _ in range(3)]
        # Liveness, not speed: while three floods are scanned, the broker still answers at
        # once (before the fix, /healthz and the consoles froze for 24 s).
        while not all(c.done() for c in calls):
            assert httpx.get(f"{b.base}/healthz", timeout=10).status_code == 200
            time.sleep(0.2)
        answers = [c.result() for c in calls]
    for r in answers:
        text = r.json()["result"]["content"][0]["text"]
        assert "more than 256 secrets" in text and r.json()["result"]["isError"] is True, text
    trail = b.audit()
    blocked = [e for e in trail if e["outcome"] == "blocked"]
    assert len(blocked) == 3, trail
    assert all("more than 256 secrets" in e["reason"] for e in blocked)
    # The store never kept the flood, nor any of its keys.
    leaked = [p for p in b.data_dir.rglob("*") if p.is_file() and b"AKIAIOSFODNN7EXAMPLE" in p.read_bytes()]
    assert not leaked, leaked


# 5. Connection caps, header timeouts and the open-file limit.


def _addr(b) -> tuple[str, int]:
    host, port = b.base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _connect(addr, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(addr, timeout=10, source_address=(source, 0))
    return s


def _ended(s: socket.socket, timeout: float) -> bytes:
    """Read until the broker closes the connection; what it sent."""
    s.settimeout(timeout)
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return got
        got += chunk


def test_idle_and_slowloris_connections_are_closed_after_the_header_timeout(broker):
    b = broker(holding(broker_extra='header_timeout = "1s"'))
    addr = _addr(b)
    idle = _connect(addr)
    slow = _connect(addr)
    slow.sendall(b"POST /mcp/everything HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    kept = _connect(addr)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    kept.settimeout(10)
    assert b"200 OK" in kept.recv(4096)
    # Each is closed by the broker (recv returns end-of-file well before 10 s); a kept-alive
    # connection idle after its request too.
    for s in (idle, slow, kept):
        _ended(s, 10)


def test_one_peer_cannot_take_every_connection(broker):
    b = broker(holding(broker_extra='max_connections = 30\nmax_connections_per_peer = 20\nheader_timeout = "60s"'))
    addr = _addr(b)
    hogs = [_connect(addr) for _ in range(20)]
    over = _connect(addr)
    answer = _ended(over, 10).decode()
    assert answer.startswith("HTTP/1.1 503"), answer
    assert "127.0.0.1 has 20 connections open" in answer and "max_connections_per_peer" in answer, answer
    # Another address is still served, and fills the rest...
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    assert other.get(f"{b.base}/healthz", timeout=10).status_code == 200
    more = [_connect(addr, "127.0.0.2") for _ in range(10)]
    # ...until the broker's own limit, which a third address meets.
    full = _ended(_connect(addr, "127.0.0.3"), 10).decode()
    assert full.startswith("HTTP/1.1 503") and "max_connections" in full, full
    assert "connection refused" in b.log()
    # Closing connections gives their places back.
    for s in hogs + more:
        s.close()
    other.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            r = httpx.get(f"{b.base}/healthz", timeout=5)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the places of closed connections were not given back"
        time.sleep(0.1)


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit(broker):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        b = broker(holding())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{b.proc.popen.pid}/limits").read_text()
    [line] = [l for l in limits.splitlines() if l.startswith("Max open files")]
    assert line.split()[3:5] == [str(hard), str(hard)], line


# 6. Stdio sessions (a child process each) are limited per client and per server.


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_sessions_and_their_children_are_limited_per_client_and_per_server(broker):
    b = broker(holding(broker_extra="max_sessions_per_client = 3\nmax_sessions_per_server = 5"))
    agent = {"authorization": f"Bearer {b.token('agent', 'viewer')}"}
    other = {"authorization": f"Bearer {b.token('other', 'viewer')}"}
    mine = [post(b.url("everything"), INIT, agent) for _ in range(3)]
    assert all(r.status_code == 200 for r in mine), [r.text for r in mine]
    over = post(b.url("everything"), INIT, agent)
    assert over.status_code == 429, over.text
    err = over.json()["error"]
    assert "max_sessions_per_client" in err["message"] and '"agent" has 3 MCP sessions open' in err["message"], err
    assert all(post(b.url("everything"), INIT, other).status_code == 200 for _ in range(2))
    full = post(b.url("everything"), INIT, other)
    assert full.status_code == 503 and "max_sessions_per_server" in full.json()["error"]["message"], full.text
    # Five children, not the eight initialize requests made.
    assert len(_children(b.proc.popen.pid)) == 5
    # Ending a session frees its place.
    gone = httpx.delete(b.url("everything"), headers={**agent, "mcp-session-id": mine[0].headers["mcp-session-id"]}, timeout=10)
    assert gone.status_code == 200
    assert post(b.url("everything"), INIT, agent).status_code == 200
    assert "session refused" in b.log()


# 7. A full disk: calls the broker cannot record are refused, it says so, and nothing is lost.


def _mount_tmpfs(path: Path, size: str) -> list[str]:
    """Mount a small tmpfs at `path`; returns the command that unmounts it."""
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    return [*sudo, "umount", "-l", str(path)]


def _fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (256 << 10))
                f.flush()
        except OSError:
            pass
    return filler


def test_on_a_full_disk_calls_are_refused_visibly_and_no_audit_entry_is_lost(broker, tmp_path):
    unmount = _mount_tmpfs(tmp_path / "broker-data", "24m")
    try:
        b = broker(holding())
        auth = {"authorization": f"Bearer {b.token('agent', 'viewer')}"}
        alice = b.connect(b.token("alice", "approver"))
        init = post(b.url("everything"), INIT, auth)
        sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)

        def call(i):
            body = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "get-sum", "arguments": {"a": i, "b": 1}}}
            return post(b.url("everything"), body, sess).text

        assert "isError" not in call(1)
        filler = _fill(b.data_dir)
        ran, refused = [], []
        for i in range(2, 40):
            text = call(i)
            if "cannot write its audit trail" in text:
                refused.append(i)
                if len(refused) >= 3:
                    break
            else:
                assert str(i + 1) in text, text
                ran.append(i)
            time.sleep(0.1)
        assert len(refused) >= 3, f"calls were still forwarded on a full disk: {ran}"
        # Visible: health checks, consoles, the log.
        sick = httpx.get(f"{b.base}/healthz", timeout=10)
        assert sick.status_code == 503 and "cannot write" in sick.text, sick.text
        assert httpx.get(b.console.replace("ws://", "http://").replace("/v1/console", "/healthz"), timeout=10).status_code == 503
        status = alice.next("store", timeout=15)
        assert status["failing"]["error"], status
        assert "the store cannot write" in b.log()
        # Room again: the broker recovers by itself and writes what it kept.
        filler.unlink()
        deadline = time.monotonic() + 15
        while httpx.get(f"{b.base}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.2)
        assert "failing" not in alice.next("store", timeout=15, where=lambda m: "failing" not in m)
        assert "isError" not in call(100)
        trail = b.audit()
        by_id = {e["request_id"]: e for e in trail}
        for i in [1, *ran, 100]:
            assert by_id[i]["outcome"] == "allowed", (i, by_id.get(i))
        for i in refused:
            assert by_id[i]["outcome"] == "blocked" and "the store could not write" in by_id[i]["reason"], by_id.get(i)
        ok = broker_cli("audit", "verify", "--data-dir", str(b.data_dir))
        assert ok.returncode == 0, ok.stderr
    finally:
        subprocess.run(unmount, check=False)


# 8. A secret DLP found is kept out of everything stored: errors, request ids, `_meta`.


def test_secrets_never_reach_the_store_through_errors_ids_or_meta(broker):
    ghp = "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
    akia = "AKIA" + "IOSFODNN7EXAMPLE"
    b = broker(f"""
    [broker]
    keepalive = "300ms"
    [policy]
    default = "allow"
    [[server]]
    name = "py"
    command = {toml_list(py_stdio_command())}
    """)
    auth = {"authorization": f"Bearer {b.token('agent', 'viewer')}"}
    alice = b.connect(b.token("alice", "approver"))
    init = post(b.url("py"), INIT, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    post(b.url("py"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    # DLP (action approve) holds the call; once approved, the upstream's error echoes both
    # secrets back.
    strict = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "strict", "arguments": {"token": ghp, "note": akia}}}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, b.url("py"), strict, sess, timeout=60)
        held = alice.pending()
        assert alice.decide(held["id"], "approve")[0]["ok"]
        echoed = answer.result().text
    assert ghp in echoed, "the client itself gets the upstream's answer unchanged"
    # A secret in _meta holds the call too, and the console sees it masked.
    meta = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hi"}, "_meta": {"progressToken": "p2", "auth": ghp}}}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, b.url("py"), meta, sess, timeout=60)
        held = alice.pending()
        assert any(f["path"] == "params._meta/auth" for f in held["findings"]), held["findings"]
        assert ghp not in json.dumps(held)
        assert alice.decide(held["id"], "approve")[0]["ok"]
        assert "Echo: hi" in answer.result().text
    # A secret as the request id: refused, answered with the client's own id.
    sneaky = post(b.url("py"), {"jsonrpc": "2.0", "id": akia, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x"}}}, sess).json()
    assert sneaky["id"] == akia and sneaky["result"]["isError"] is True
    assert "request id contains what looks like a secret" in sneaky["result"]["content"][0]["text"]
    trail = b.audit()
    files = [p.read_bytes() for p in b.data_dir.rglob("*") if p.is_file()]
    assert any(b"Input validation error: token '[REDACTED" in f for f in files), "the error is kept, scrubbed"
    stored = [p for p in b.data_dir.rglob("*") if p.is_file() and (ghp.encode() in p.read_bytes() or akia.encode() in p.read_bytes())]
    assert not stored, f"a secret reached the store: {stored}"
    assert ghp not in json.dumps(trail) and akia not in json.dumps(trail)


# 9. The data directory is its owner's only.


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_the_data_directory_and_its_files_are_private_and_wider_ones_are_reported(broker, tmp_path):
    b = broker(holding())
    b.token("agent", "viewer")
    b.proc.stop()
    assert _mode(b.data_dir) == 0o700
    for name in ["tokens.json", "journal", "sled"]:
        assert _mode(b.data_dir / name) in (0o600, 0o700), (name, oct(_mode(b.data_dir / name)))
    # A directory an older install left open is reported at start, with the fix.
    old = tmp_path / "old-data"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    (old / "tokens.json").write_text('{"tokens": []}')
    (old / "tokens.json").chmod(0o644)
    b2 = broker(holding(), name="old", data_name="old")
    log = b2.log()
    assert "readable by others" in log and "chmod -R go-rwx" in log, log[-2000:]
    assert str(old) in log


# 10. Origin and Host: a browser page reaches neither the MCP endpoint nor the console API.


def test_browser_pages_are_kept_out_by_origin_and_host(broker):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    b = broker(holding(broker_extra='allowed_hosts = ["tollgate.internal"]'))
    agent = {"authorization": f"Bearer {b.token('agent', 'viewer')}"}
    alice = b.token("alice", "approver")
    # The console API checks Origin like the MCP endpoint, token or not.
    with pytest.raises(InvalidStatus) as refused:
        connect(b.console, additional_headers={"Authorization": f"Bearer {alice}", "Origin": "https://evil.example"}, open_timeout=10)
    assert refused.value.response.status_code == 403
    assert b"Origin" in refused.value.response.body
    ok = connect(b.console, additional_headers={"Authorization": f"Bearer {alice}", "Origin": "http://localhost:5173"}, open_timeout=10)
    ok.close()
    # A DNS-rebound page's same-origin request carries no Origin, but the attacker's Host.
    rebound = post(b.url("everything"), INIT, {**agent, "host": "rebind.evil.example:8080"})
    assert rebound.status_code == 403 and "Host" in rebound.json()["error"]["message"], rebound.text
    named = post(b.url("everything"), INIT, {**agent, "host": "tollgate.internal:8080"})
    assert named.status_code == 200, named.text
    # Look-alike loopback origins are parsed strictly.
    for origin in ["http://127.0.0.1:80@evil.example", "http://[::1]evil.example"]:
        r = post(b.url("everything"), INIT, {**agent, "origin": origin})
        assert r.status_code == 403, (origin, r.text)


# 11. A tools/call sent as a notification is refused, not forwarded unseen.


def test_a_tools_call_notification_is_refused(broker):
    b = broker(holding())
    auth = {"authorization": f"Bearer {b.token('agent', 'viewer')}"}
    init = post(b.url("everything"), INIT, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    sneaky = post(b.url("everything"), {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "unseen"}}}, sess)
    assert sneaky.status_code == 400, sneaky.text
    assert "must be a request with an id" in sneaky.json()["error"]["message"]
    assert "refused a tools/call sent as a notification" in b.log()
    # Other notifications still pass.
    assert post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}, sess).status_code == 202
    assert b.audit() == []


# 12. Small leaks: the 404 names no servers; handshake requests need their session.


def test_no_server_list_for_strangers_and_no_sessionless_handshake_requests(broker):
    b = broker(holding())
    nope = httpx.get(f"{b.base}/nope", timeout=10)
    assert nope.status_code == 404 and "everything" not in nope.text, nope.text
    auth = {"authorization": f"Bearer {b.token('agent', 'viewer')}"}
    listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
    bare = post(b.url("everything"), listing, {**auth, "mcp-protocol-version": "2025-11-25"})
    assert bare.status_code == 400 and "needs an Mcp-Session-Id" in bare.text, bare.text
    odd = post(b.url("everything"), listing, {**auth, "mcp-protocol-version": "2025-11-25", "mcp-session-id": "s\xe9ssion".encode("latin-1")})
    assert odd.status_code == 400 and "visible ASCII" in odd.text, odd.text
    # An authenticated client naming a server that does not exist learns which do.
    unknown = post(b.url("missing"), INIT, auth)
    assert unknown.status_code == 404 and "everything" in unknown.text
    # The real session still works.
    init = post(b.url("everything"), INIT, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    assert "tools" in post(b.url("everything"), listing, sess).text
