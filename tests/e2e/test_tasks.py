"""Tasks: a client that cannot hold a request open for minutes makes a task-augmented call, gets
a task id at once and polls. The broker is the task receiver for held calls even though the
upstreams here have no task support: the TypeScript SDK's 2025-11-25 tasks client and a raw
2026-07-28 tasks-extension client (SEP-2848's shape) both get the upstream's result after
approval, a refusal as a completed task with isError, and cancellation."""

from __future__ import annotations

import signal
import threading

import httpx2 as httpx

from conftest import everything_stdio_command, free_port, py_stdio_command, run_ts, toml_list

TASKS_EXT = "io.modelcontextprotocol/tasks"
DISPOSITION = "io.modelcontextprotocol/tool-approval-disposition"


def config(name: str, command: list[str]) -> str:
    return f"""
    [policy]
    default = "allow"
    [[server]]
    name = "{name}"
    command = {toml_list(command)}
    [[rule]]
    name = "echo-needs-a-human"
    tools = ["{name}/echo"]
    action = "approve"
    approvers = ["alice"]
    """


def test_typescript_tasks_client_gets_the_result_of_an_approved_held_call(broker):
    b = broker(config("everything", everything_stdio_command()))
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    seen = {}

    def approve():
        call = alice.pending(timeout=30)
        seen["call"] = call
        alice.decide(call["id"], "approve")

    t = threading.Thread(target=approve, daemon=True)
    t.start()
    out = run_ts(
        {
            "target": {"url": b.url("everything"), "token": agent},
            "capabilities": {"tasks": {"list": {}, "cancel": {}}},
            "run": "task",
            "tool": "echo",
            "arguments": {"message": "as a task"},
        }
    )
    t.join(30)
    # The broker offers every tool as a task to a client that declared task support.
    assert out["taskSupport"]["echo"] == "optional"
    assert seen["call"]["hold"]["mode"] == "task" and out["taskId"] == seen["call"]["id"]
    types = [m["type"] for m in out["messages"]]
    assert types[0] == "taskCreated" and types[-1] == "result", out["messages"]
    waiting = [m for m in out["messages"] if m["status"] == "working" and m["statusMessage"]]
    assert any("Waiting for approval by alice" in m["statusMessage"] for m in waiting), out["messages"]
    assert out["result"]["content"][0]["text"] == "Echo: as a task"
    assert out["result"]["_meta"][DISPOSITION] == "approved-executed"


def test_typescript_tasks_client_calls_an_allowed_tool_as_a_task_too(broker):
    b = broker(config("everything", everything_stdio_command()))
    agent = b.token("agent", "viewer")
    out = run_ts(
        {
            "target": {"url": b.url("everything"), "token": agent},
            "capabilities": {"tasks": {"list": {}, "cancel": {}}},
            "run": "task",
            "tool": "get-sum",
            "arguments": {"a": 20, "b": 22},
        }
    )
    assert "42" in out["result"]["content"][0]["text"], out


def modern_headers(token: str, method: str, name: str | None = None) -> dict:
    h = {
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": method,
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    if name:
        h["mcp-name"] = name
    return h


def meta(with_tasks: bool = True) -> dict:
    m = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    if with_tasks:
        m["io.modelcontextprotocol/clientCapabilities"] = {"extensions": {TASKS_EXT: {}}}
    return m


def rpc(url: str, token: str, i: int, method: str, params: dict, name: str | None = None) -> dict:
    body = {"jsonrpc": "2.0", "id": i, "method": method, "params": {**params, "_meta": meta()}}
    r = httpx.post(url, json=body, headers=modern_headers(token, method, name), timeout=30)
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        import json

        datas = [line[6:] for line in r.text.splitlines() if line.startswith("data: ") and line[6:]]
        return json.loads(datas[-1])
    return r.json()


def test_tasks_extension_client_polls_tasks_get_for_result_refusal_and_cancel(broker):
    b = broker(config("py", py_stdio_command()))
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    url = b.url("py")

    discover = rpc(url, agent, 1, "server/discover", {})
    assert TASKS_EXT in discover["result"]["capabilities"]["extensions"]
    assert "io.modelcontextprotocol/tool-approval" in discover["result"]["capabilities"]["extensions"]

    outcomes = {}
    for i, (verdict, msg) in enumerate((("approve", "yes"), ("reject", "no"), ("cancel", "stop")), start=10):
        created = rpc(url, agent, i, "tools/call", {"name": "echo", "arguments": {"message": msg}}, "echo")["result"]
        assert created["resultType"] == "task" and created["status"] == "working", created
        task_id = created["taskId"]
        assert "io.modelcontextprotocol/model-immediate-response" in created["_meta"]
        call = alice.pending()
        assert call["id"] == task_id and call["hold"]["mode"] == "task"
        polled = rpc(url, agent, i + 100, "tasks/get", {"taskId": task_id})["result"]
        assert polled["status"] == "working" and "Waiting for approval by alice" in polled["statusMessage"]
        if verdict == "cancel":
            ack = rpc(url, agent, i + 200, "tasks/cancel", {"taskId": task_id})
            assert ack["result"] == {}
            alice.next("call_cancelled")
        else:
            alice.decide(task_id, verdict, "not today" if verdict == "reject" else None)
        for _ in range(100):
            done = rpc(url, agent, i + 300, "tasks/get", {"taskId": task_id})["result"]
            if done["status"] != "working":
                break
        outcomes[verdict] = done
    ok = outcomes["approve"]
    assert ok["status"] == "completed" and ok["resultType"] == "complete"
    assert ok["result"]["content"][0]["text"].endswith("yes") and ok["result"]["_meta"][DISPOSITION] == "approved-executed"
    no = outcomes["reject"]
    assert no["status"] == "completed" and no["result"]["isError"] is True
    assert no["result"]["content"][0]["text"].startswith("Rejected by alice: not today")
    assert no["result"]["_meta"][DISPOSITION] == "denied-not-executed"
    assert outcomes["cancel"]["status"] == "cancelled"

    stranger = b.token("mallory", "viewer")
    other = rpc(url, stranger, 99, "tasks/get", {"taskId": ok["taskId"]})
    assert "another client" in other["error"]["message"]


def poll_until_done(url: str, token: str, i: int, task_id: str) -> dict:
    for n in range(200):
        done = rpc(url, token, i + n, "tasks/get", {"taskId": task_id})["result"]
        if done["status"] != "working":
            return done
    raise AssertionError(f"task {task_id} still working: {done}")


def test_pending_tasks_survive_kill_9_and_end_with_their_decisions(broker):
    """A pending task has no connection and, while it waits, no task of its own in the broker:
    after kill -9 it is recovered from the store, decided, and its client polls the result."""
    port = free_port()
    b = broker(config("py", py_stdio_command()), listen=f"127.0.0.1:{port}")
    agent = b.token("agent", "viewer")
    alice_token = b.token("alice", "approver")
    alice = b.connect(alice_token)
    ids = {}
    for i, msg in ((10, "approved after the crash"), (11, "rejected after the crash")):
        created = rpc(b.url("py"), agent, i, "tools/call", {"name": "echo", "arguments": {"message": msg}}, "echo")["result"]
        assert created["status"] == "working", created
        assert alice.pending()["id"] == created["taskId"]
        ids[msg] = created["taskId"]
    b.proc.stop(signal.SIGKILL)

    b2 = broker(config("py", py_stdio_command()), name="restarted", data_name="broker", listen=f"127.0.0.1:{port}")
    alice2 = b2.connect(alice_token)
    assert {c["id"] for c in alice2.snapshot["pending"]} == set(ids.values())
    ok_id, no_id = ids["approved after the crash"], ids["rejected after the crash"]
    waiting = rpc(b2.url("py"), agent, 20, "tasks/get", {"taskId": ok_id})["result"]
    assert waiting["status"] == "working" and "Waiting for approval by alice" in waiting["statusMessage"], waiting
    assert alice2.decide(ok_id, "approve")[0]["ok"]
    assert alice2.decide(no_id, "reject", "too late")[0]["ok"]

    ok = poll_until_done(b2.url("py"), agent, 100, ok_id)
    assert ok["status"] == "completed" and ok["result"]["content"][0]["text"].endswith("approved after the crash"), ok
    assert ok["result"]["_meta"][DISPOSITION] == "approved-executed"
    no = poll_until_done(b2.url("py"), agent, 400, no_id)
    assert no["status"] == "completed" and no["result"]["isError"] is True, no
    assert no["result"]["content"][0]["text"].startswith("Rejected by alice: too late")

    by_call = {}
    for e in b2.audit():
        by_call.setdefault(e["call_id"], []).append(e["outcome"])
    assert by_call[ok_id] == ["pending", "approved"]
    assert by_call[no_id] == ["pending", "rejected"]


def test_the_2026_07_28_error_codes(broker):
    """The spec's own codes, as renumbered in the released 2026-07-28 schema: -32020 header
    mismatch, -32021 missing client capability, -32022 unsupported protocol version; each with
    HTTP 400 and the data the schema defines."""
    b = broker(config("py", py_stdio_command()))
    agent = b.token("agent", "viewer")
    url = b.url("py")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {**meta(), "io.modelcontextprotocol/protocolVersion": "1900-01-01"}}}
    h = {**modern_headers(agent, "tools/list"), "mcp-protocol-version": "1900-01-01"}
    r = httpx.post(url, json=body, headers=h, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == -32022 and err["data"]["requested"] == "1900-01-01"
    assert "2026-07-28" in err["data"]["supported"] and "2025-11-25" in err["data"]["supported"]

    mismatch = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": meta()}}, headers=modern_headers(agent, "tools/call"), timeout=30)
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020, mismatch.text

    created = rpc(url, agent, 3, "tools/call", {"name": "echo", "arguments": {"message": "m"}}, "echo")["result"]
    bare = {"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"taskId": created["taskId"], "_meta": meta(with_tasks=False)}}
    r = httpx.post(url, json=bare, headers=modern_headers(agent, "tasks/get"), timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == -32021 and err["data"] == {"requiredCapabilities": {"extensions": {TASKS_EXT: {}}}}, err
