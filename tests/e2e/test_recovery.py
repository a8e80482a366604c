"""A broker killed with calls held loses none of them: after restart they are listed, a client
that resumes its stream with Last-Event-ID gets the answer, retry-mode calls stay decidable, the
rest are closed as abandoned, and the audit chain still verifies."""

from __future__ import annotations

import signal

from conftest import Stream, broker_cli, free_port, post


def config(everything_http: str) -> str:
    return f"""
    [broker]
    keepalive = "300ms"
    resume_grace = "8s"
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    url = "{everything_http}"
    [[rule]]
    name = "hold-echo"
    tools = ["everything/echo"]
    action = "approve"
    [[rule]]
    name = "retry-sums"
    tools = ["everything/get-sum"]
    action = "approve"
    hold = "retry"
    """


def test_held_calls_survive_kill_9_and_each_ends_answered_or_abandoned(broker, everything_http):
    port = free_port()
    b = broker(config(everything_http), listen=f"127.0.0.1:{port}")
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    auth = {"authorization": f"Bearer {agent}"}
    init = post(b.url("everything"), {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25", "accept": "application/json, text/event-stream"}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)

    def call(i, tool, args):
        return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": args}}

    resumed = Stream("POST", b.url("everything"), sess, call(1, "echo", {"message": "after the crash"}))
    first = alice.pending()
    forgotten = Stream("POST", b.url("everything"), sess, call(2, "echo", {"message": "nobody waits"}))
    second = alice.pending()
    retry = post(b.url("everything"), call(3, "get-sum", {"a": 2, "b": 3}), sess).json()
    assert "queued as call" in retry["result"]["content"][0]["text"]
    third = alice.pending()
    # A retry-mode call approved before the crash can still be repeated (once) after it.
    post(b.url("everything"), call(5, "get-sum", {"a": 7, "b": 8}), sess)
    early = alice.pending()
    assert alice.decide(early["id"], "approve")[0]["ok"]
    assert resumed.first.wait(10)
    last_id = resumed.events[0][0]
    assert last_id.startswith(f"tg-{first['id']}-") and last_id.endswith(".1"), resumed.events

    b.proc.stop(signal.SIGKILL)
    resumed.done.wait(10)
    forgotten.done.wait(10)

    b2 = broker(config(everything_http), name="restarted", data_name="broker", listen=f"127.0.0.1:{port}")
    alice2 = b2.connect(b2.token("alice2", "approver"))
    listed = {c["id"]: c for c in alice2.snapshot["pending"]}
    assert set(listed) == {first["id"], second["id"], third["id"]}, listed.keys()

    again = Stream("GET", b2.url("everything"), {**sess, "last-event-id": last_id})
    [ok] = alice2.decide(first["id"], "approve")
    assert ok["ok"], ok
    assert again.done.wait(20)
    [result] = again.results()
    assert result["id"] == 1 and result["result"]["content"][0]["text"] == "Echo: after the crash"

    abandoned = alice2.next("call_abandoned", timeout=30)["call"]
    assert abandoned["id"] == second["id"] and "after the broker restarted" in abandoned["reason"]

    alice2.decide(third["id"], "approve")
    ran = post(b2.url("everything"), call(4, "get-sum", {"a": 2, "b": 3}), sess)
    assert "5" in ran.text and "isError" not in ran.text, ran.text
    before_crash = post(b2.url("everything"), call(6, "get-sum", {"a": 7, "b": 8}), sess)
    assert "15" in before_crash.text and "isError" not in before_crash.text, before_crash.text
    once = post(b2.url("everything"), call(7, "get-sum", {"a": 7, "b": 8}), sess)
    assert "queued as call" in once.text

    trail = b2.audit()
    by_call = {}
    for e in trail:
        by_call.setdefault(e["call_id"], []).append(e["outcome"])
    assert by_call[first["id"]] == ["pending", "approved"]
    assert by_call[second["id"]] == ["pending", "abandoned"]
    assert by_call[third["id"]] == ["pending", "approved"]
    ok = broker_cli("audit", "verify", "--data-dir", str(b2.data_dir))
    assert ok.returncode == 0, ok.stderr
    anchor = ok.stdout.strip().split("anchor for later checks: ")[1]
    again_ok = broker_cli("audit", "verify", "--data-dir", str(b2.data_dir), "--anchor", anchor)
    assert again_ok.returncode == 0, again_ok.stderr
    bad = broker_cli("audit", "verify", "--data-dir", str(b2.data_dir), "--anchor", "2:" + "0" * 64)
    assert bad.returncode == 1 and "no longer has the anchored hash" in bad.stderr


def test_a_stdio_session_is_restored_for_a_held_call_after_kill_9(broker):
    from conftest import everything_stdio_command, toml_list

    port = free_port()
    cfg = f"""
    [broker]
    keepalive = "300ms"
    resume_grace = "10s"
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}
    [[rule]]
    name = "hold-echo"
    tools = ["everything/echo"]
    action = "approve"
    """
    b = broker(cfg, listen=f"127.0.0.1:{port}")
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    auth = {"authorization": f"Bearer {agent}"}
    init = post(b.url("everything"), {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25", "accept": "application/json, text/event-stream"}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    held = Stream("POST", b.url("everything"), sess, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "survives"}}})
    call = alice.pending()
    assert held.first.wait(10)
    last_id = held.events[0][0]

    b.proc.stop(signal.SIGKILL)
    held.done.wait(10)
    b2 = broker(cfg, name="restarted", data_name="broker", listen=f"127.0.0.1:{port}")
    alice2 = b2.connect(b2.token("alice2", "approver"))
    assert [c["id"] for c in alice2.snapshot["pending"]] == [call["id"]]
    resumed = Stream("GET", b2.url("everything"), {**sess, "last-event-id": last_id})
    assert alice2.decide(call["id"], "approve")[0]["ok"]
    assert resumed.done.wait(30)
    [result] = resumed.results()
    assert result["result"]["content"][0]["text"] == "Echo: survives"
    # The restored session carries the client's next requests too.
    more = post(b2.url("everything"), {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get-sum", "arguments": {"a": 2, "b": 3}}}, sess)
    assert more.status_code == 200 and "5" in more.text, more.text
