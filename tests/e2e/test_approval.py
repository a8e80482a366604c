"""Held calls: a tools/call that policy marks `approve` waits, durably, until a person decides on
a console (a real WebSocket), and the real SDK client gets the upstream's result, the
approver's refusal, a timeout message, or sees its cancellation recorded."""

from __future__ import annotations

import json
import threading
import time

import httpx2 as httpx
import pytest

from conftest import everything_stdio_command, post, py_stdio_command, run_ts, sdk_call, toml_list


def held_config(server_line: str, rule_extra: str = "", broker_extra: str = "") -> str:
    return f"""
    [broker]
    keepalive = "300ms"
    {broker_extra}
    [policy]
    default = "allow"

    [[server]]
    name = "everything"
    {server_line}

    [[rule]]
    name = "echo-needs-a-human"
    tools = ["everything/echo"]
    action = "approve"
    {rule_extra}
    """


def stdio_everything() -> str:
    return f"command = {toml_list(everything_stdio_command())}"


@pytest.fixture
def held(broker):
    """A broker holding everything/echo, an agent identity and an approver console."""

    def start(rule_extra: str = "", server_line: str | None = None, broker_extra: str = ""):
        b = broker(held_config(server_line or stdio_everything(), rule_extra, broker_extra))
        agent = b.token("agent", "viewer")
        alice = b.connect(b.token("alice", "approver"))
        return b, agent, alice

    return start


def test_approved_call_returns_the_upstreams_result(held):
    b, agent, alice = held()
    fut = sdk_call(b.url("everything"), agent, "echo", {"message": "ship it"})
    call = alice.pending()
    assert (call["tool"], call["client"], call["outcome"]) == ("echo", "agent", "pending")
    assert call["arguments"] == {"message": "ship it"} and call["rule"]["name"] == "echo-needs-a-human"
    assert call["hold"]["mode"] == "stream" and len(call["args_hash"]) == 64
    [res] = alice.decide(call["id"], "approve")
    assert res["ok"] and res["outcome"] == "approved", res
    result = fut.result(timeout=30)
    assert result.is_error is not True
    assert result.content[0].text == "Echo: ship it"
    decided = alice.next("call_decided")["call"]
    assert decided["decisions"][0]["by"] == "alice"
    trail = b.audit("--call", call["id"])
    assert [e["outcome"] for e in trail] == ["pending", "approved"]
    assert trail[1]["approvers"] == ["alice"]


def test_rejected_call_is_a_tool_error_with_approver_and_reason(held):
    b, agent, alice = held()
    fut = sdk_call(b.url("everything"), agent, "echo", {"message": "prod"})
    call = alice.pending()
    [res] = alice.decide(call["id"], "reject", "use the staging bucket")
    assert res["ok"] and res["outcome"] == "rejected"
    result = fut.result(timeout=30)
    assert result.is_error is True
    assert result.content[0].text.startswith("Rejected by alice: use the staging bucket.")
    [entry] = b.audit("--status", "rejected")
    assert entry["reason"] == "use the staging bucket" and entry["approvers"] == ["alice"]


def test_expired_call_says_it_timed_out_and_is_audited_as_expired(held):
    b, agent, alice = held('expiry = "1s"')
    fut = sdk_call(b.url("everything"), agent, "echo", {"message": "late"})
    call = alice.pending()
    expired = alice.next("call_expired")["call"]
    assert expired["id"] == call["id"] and expired["outcome"] == "expired"
    result = fut.result(timeout=30)
    assert result.is_error is True
    assert "Timed out waiting for approval" in result.content[0].text
    assert "Rejected" not in result.content[0].text
    [late] = alice.decide(call["id"], "approve")
    assert not late["ok"] and late["message"].startswith("already expired at"), late
    assert [e["outcome"] for e in b.audit("--call", call["id"])] == ["pending", "expired"]


def test_notifications_cancelled_turns_a_held_call_into_cancelled(held):
    b, agent, alice = held()
    auth = {"authorization": f"Bearer {agent}"}
    init = post(b.url("everything"), {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}, auth)
    session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25", **auth}
    post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    call_body = {"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x"}}}
    seen: list[str] = []

    def stream():
        with httpx.stream("POST", b.url("everything"), json=call_body, headers={"accept": "application/json, text/event-stream", **session}, timeout=30) as r:
            for line in r.iter_lines():
                seen.append(line)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    call = alice.pending()
    r = post(b.url("everything"), {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 42, "reason": "user hit stop"}}, session)
    assert r.status_code == 202
    cancelled = alice.next("call_cancelled")["call"]
    assert cancelled["id"] == call["id"] and "user hit stop" in cancelled["reason"]
    t.join(10)
    assert any("cancelled while it waited for approval" in line for line in seen), seen
    assert [e["outcome"] for e in b.audit("--call", call["id"])] == ["pending", "cancelled"]


def test_closing_the_stream_cancels_on_2026_07_28_but_not_before(broker):
    b = broker(
        f"""
        [broker]
        keepalive = "300ms"
        [policy]
        default = "allow"
        [[server]]
        name = "py"
        command = {toml_list(py_stdio_command())}
        [[rule]]
        name = "hold-echo"
        tools = ["py/echo"]
        action = "approve"
        """
    )
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    modern = {
        "authorization": f"Bearer {agent}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo",
        "accept": "application/json, text/event-stream",
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "m"}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
    }
    with httpx.stream("POST", b.url("py"), json=body, headers=modern, timeout=30) as r:
        assert r.status_code == 200
        call = alice.pending()
    cancelled = alice.next("call_cancelled")["call"]
    assert cancelled["id"] == call["id"] and "closed its request stream" in cancelled["reason"]


def test_typescript_client_waits_past_its_request_timeout_thanks_to_progress(held, everything_http):
    b, agent, alice = held(server_line=f'url = "{everything_http}"')
    def approve_late():
        # 3.5 s after the call is held, so the client's wait is measured from its hold.
        call = alice.pending()
        time.sleep(3.5)
        alice.decide(call["id"], "approve")

    approver = threading.Thread(target=approve_late, daemon=True)
    approver.start()
    # A 1.5 s request timeout would fail a 3.5 s wait without the broker's progress keep-alives.
    out = run_ts(
        {
            "target": {"url": b.url("everything"), "token": agent},
            "run": "held",
            "tool": "echo",
            "arguments": {"message": "patience"},
            "timeoutMs": 1500,
            "_meta": {"progressToken": None},
        }
    )
    approver.join(10)
    assert "error" not in out, out
    assert out["result"]["content"][0]["text"] == "Echo: patience"
    assert out["waitedMs"] >= 3000
    assert len(out["progress"]) >= 5 and out["progress"] == sorted(set(out["progress"])), out["progress"]


def test_typescript_client_without_progress_reset_times_out_while_held(held):
    b, agent, alice = held()
    out = run_ts(
        {
            "target": {"url": b.url("everything"), "token": agent},
            "run": "held",
            "tool": "echo",
            "arguments": {"message": "x"},
            "timeoutMs": 1000,
            "resetTimeoutOnProgress": False,
        }
    )
    # The control for the test above: the timeout is real.
    assert "timed out" in out["error"].lower(), out


def test_retry_mode_answers_at_once_and_lets_the_identical_call_through_once(held):
    b, agent, alice = held('hold = "retry"')
    first = sdk_call(b.url("everything"), agent, "echo", {"message": "again"}).result(timeout=30)
    assert first.is_error is True
    text = first.content[0].text
    assert "queued as call" in text and "repeat the identical call" in text
    call = alice.pending()
    assert text.split("queued as call ")[1].startswith(call["id"])
    still = sdk_call(b.url("everything"), agent, "echo", {"message": "again"}).result(timeout=30)
    assert still.is_error is True and "still awaiting human approval" in still.content[0].text
    alice.decide(call["id"], "approve")
    other = sdk_call(b.url("everything"), agent, "echo", {"message": "different"}).result(timeout=30)
    assert other.is_error is True and "queued as call" in other.content[0].text
    ran = sdk_call(b.url("everything"), agent, "echo", {"message": "again"}).result(timeout=30)
    assert ran.is_error is not True and ran.content[0].text == "Echo: again"
    once = sdk_call(b.url("everything"), agent, "echo", {"message": "again"}).result(timeout=30)
    assert once.is_error is True and "queued as call" in once.content[0].text


def test_decisions_are_refused_with_reasons_and_the_connection_stays_usable(held):
    b, agent, alice = held('approvers = ["bob", "role:admin", "agent"]')
    viewer = b.connect(b.token("vic", "viewer"))
    scoped = b.connect(b.token("fay", "approver", "other"))
    bob = b.connect(b.token("bob", "approver"))
    self_approver = b.connect(agent)
    fut = sdk_call(b.url("everything"), agent, "echo", {"message": "rbac"})
    call = alice.pending()
    cid = call["id"]
    assert viewer.hello["role"] == "viewer" and viewer.pending()["id"] == cid
    assert "is a viewer" in viewer.decide(cid, "approve")[0]["message"]
    assert "only for server(s) other; this call is for everything" in scoped.decide(cid, "approve")[0]["message"]
    assert "names who may decide: bob, role:admin, agent; alice is not among them" in alice.decide(cid, "approve")[0]["message"]
    # The agent's own token is a viewer, so it is refused as a viewer; as an admin it would
    # still be refused for approving its own call (unit-tested in queue::rules).
    assert not self_approver.decide(cid, "approve")[0]["ok"]
    bad = alice.request({"type": "decide", "target": {"by": "ids"}}, "error")
    assert "not a valid console message" in bad["message"]
    alice.ws.send("this is not json")
    assert "not a valid console message" in alice.next("error")["message"]
    assert "no such call" in alice.decide("0190c1a2-0000-7000-8000-000000000000", "approve")[0]["message"]
    [ok] = bob.decide(cid, "approve")
    assert ok["ok"], ok
    assert fut.result(timeout=30).content[0].text == "Echo: rbac"
    [late] = alice.decide(cid, "reject")
    assert late["message"].startswith("already approved by bob at"), late


def test_self_approval_is_refused_even_for_admins(held):
    b, _, alice = held()
    root = b.token("root", "admin")
    fut = sdk_call(b.url("everything"), root, "echo", {"message": "mine"})
    call = alice.pending()
    mine = b.connect(root)
    [r] = mine.decide(call["id"], "approve")
    assert not r["ok"] and "root made this call; nobody may approve their own call" in r["message"]
    alice.decide(call["id"], "approve")
    assert fut.result(timeout=30).content[0].text == "Echo: mine"


def test_bad_tokens_are_refused_before_the_websocket_opens(held):
    from websockets.exceptions import InvalidStatus

    b, _, _ = held()
    with pytest.raises(InvalidStatus) as e:
        b.connect("tg_not_a_token")
    assert e.value.response.status_code == 401
    r = httpx.get(b.console.replace("ws://", "http://"), headers={"authorization": "Bearer x"})
    assert r.status_code == 401 and "token add" in r.text


def test_two_consoles_deciding_at_once_exactly_one_wins(held):
    b, agent, alice = held()
    bob = b.connect(b.token("bob", "approver"))
    rounds = 15
    futs = [sdk_call(b.url("everything"), agent, "echo", {"message": f"race {i}"}) for i in range(rounds)]
    ids = sorted({alice.pending()["id"] for _ in range(rounds)})
    assert len(ids) == rounds
    for i, cid in enumerate(ids):
        verdicts = ("approve", "reject") if i % 2 else ("reject", "approve")
        answers = {}
        barrier = threading.Barrier(2)

        def decide(console, name, verdict):
            barrier.wait()
            answers[name] = console.decide(cid, verdict, "race")[0]

        ts = [threading.Thread(target=decide, args=(c, n, v)) for c, n, v in ((alice, "alice", verdicts[0]), (bob, "bob", verdicts[1]))]
        [t.start() for t in ts]
        [t.join(20) for t in ts]
        winners = [n for n, a in answers.items() if a["ok"]]
        assert len(winners) == 1, answers
        loser = "bob" if winners == ["alice"] else "alice"
        assert answers[loser]["message"].startswith(f"already {answers[winners[0]]['outcome']} by {winners[0]}"), answers
    results = [f.result(timeout=30) for f in futs]
    assert len(results) == rounds
    trail = b.audit()
    finals = [e for e in trail if e["outcome"] in ("approved", "rejected")]
    assert len(finals) == rounds and len({e["call_id"] for e in finals}) == rounds


def test_deciding_a_fingerprint_covers_every_identical_pending_call(held):
    b, agent, alice = held()
    futs = [sdk_call(b.url("everything"), agent, "echo", {"message": "loop"}) for _ in range(6)]
    odd = sdk_call(b.url("everything"), agent, "echo", {"message": "other"})
    calls = [alice.pending() for _ in range(7)]
    loop = [c for c in calls if c["arguments"]["message"] == "loop"]
    assert len({c["fingerprint"] for c in loop}) == 1
    res = alice.request(
        {"type": "decide", "target": {"by": "fingerprint", "fingerprint": loop[0]["fingerprint"]}, "verdict": "reject", "reason": "runaway loop"},
        "decided",
    )["results"]
    assert len(res) == 6 and all(r["ok"] for r in res)
    for f in futs:
        assert f.result(timeout=30).content[0].text.startswith("Rejected by alice: runaway loop")
    snap = alice.request({"type": "snapshot"}, "snapshot")
    assert [c["arguments"]["message"] for c in snap["pending"]] == ["other"]
    alice.decide(snap["pending"][0]["id"], "approve")
    assert odd.result(timeout=30).content[0].text == "Echo: other"


def test_audit_query_over_the_console_and_the_cli_filters(held):
    b, agent, alice = held()
    for msg, verdict in (("a", "approve"), ("b", "reject")):
        fut = sdk_call(b.url("everything"), agent, "echo", {"message": msg})
        alice.decide(alice.pending()["id"], verdict)
        fut.result(timeout=30)
    got = alice.request({"type": "audit_query", "filter": {"status": "rejected", "client": "agent"}}, "audit_result")
    assert [e["outcome"] for e in got["entries"]] == ["rejected"]
    got = alice.request({"type": "audit_query", "filter": {"approver": "alice"}}, "audit_result")
    assert sorted(e["outcome"] for e in got["entries"]) == ["approved", "rejected"]
    b.proc.stop()
    from conftest import broker_cli

    csv = broker_cli("audit", "--config", str(b.config_path), "--csv", "--tool", "echo", "--since", "1h")
    assert csv.returncode == 0, csv.stderr
    lines = csv.stdout.splitlines()
    assert lines[0].startswith("seq,time,status") and len(lines) == 5
    table = broker_cli("audit", "--config", str(b.config_path), "--approver", "alice")
    assert "approved" in table.stdout and "rejected" in table.stdout and "pending" not in table.stdout
    bad = broker_cli("audit", "--config", str(b.config_path), "--status", "maybe")
    assert bad.returncode != 0 and "unknown status" in bad.stderr
    ok = broker_cli("audit", "verify", "--config", str(b.config_path))
    assert ok.returncode == 0 and "audit chain OK: 4 entries" in ok.stdout, ok.stdout + ok.stderr


def test_typescript_client_abort_cancels_its_held_call(held):
    b, agent, alice = held()
    out = {}
    t = threading.Thread(
        target=lambda: out.update(
            run_ts({"target": {"url": b.url("everything"), "token": agent}, "run": "cancel", "tool": "echo", "arguments": {"message": "never mind"}, "cancelAfterMs": 1500})
        ),
        daemon=True,
    )
    t.start()
    call = alice.pending()
    cancelled = alice.next("call_cancelled", timeout=20)["call"]
    t.join(30)
    assert cancelled["id"] == call["id"] and "test cancels the call" in cancelled["reason"]
    assert out["cancelled"] is True


def test_tokens_are_managed_while_the_broker_runs(held):
    from websockets.exceptions import InvalidStatus

    from conftest import broker_cli

    b, agent, alice = held()
    listed = broker_cli("token", "list", "--data-dir", str(b.data_dir), "--json")
    names = {json.loads(line)["name"]: json.loads(line) for line in listed.stdout.splitlines()}
    assert names["alice"]["role"] == "approver" and names["agent"]["role"] == "viewer"
    assert agent not in listed.stdout and "sha256" not in listed.stdout
    dup = broker_cli("token", "add", "--data-dir", str(b.data_dir), "--name", "alice", "--role", "admin")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad_role = broker_cli("token", "add", "--data-dir", str(b.data_dir), "--name", "x", "--role", "root")
    assert bad_role.returncode == 2 and "unknown role" in bad_role.stderr
    revoked = broker_cli("token", "revoke", "--data-dir", str(b.data_dir), "agent")
    assert revoked.returncode == 0, revoked.stderr
    r = post(b.url("everything"), {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}, {"authorization": f"Bearer {agent}"})
    assert r.status_code == 401
    with pytest.raises(InvalidStatus):
        b.connect(agent)
    again = broker_cli("token", "revoke", "--data-dir", str(b.data_dir), "agent")
    assert again.returncode == 1 and "no identity named" in again.stderr
