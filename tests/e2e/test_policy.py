"""Policy decides every tools/call; refusals reach the model as tool errors naming the rule, and
every decision is in the store."""

from __future__ import annotations

import hashlib
import subprocess

import anyio
from mcp import Client, StdioServerParameters

from conftest import BROKER_BIN, everything_stdio_command, post, py_stdio_command, run_ts, sdk_client, toml_list

TOKEN = "s3cret-token-for-tests"
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()


def policy_config(server_line: str) -> str:
    return f"""
    [policy]
    default = "allow"

    [[client]]
    name = "agent-7"
    token_sha256 = "{TOKEN_SHA}"

    [[server]]
    name = "everything"
    {server_line}

    [[rule]]
    name = "no-echo"
    tools = ["everything/echo"]
    action = "deny"
    reason = "echo is off limits in this test"

    [[rule]]
    name = "hold-destructive"
    tools = ["*"]
    when = {{ annotation = "destructiveHint", equals = true }}
    action = "approve"

    [[rule]]
    name = "big-sums"
    tools = ["everything/get-sum"]
    when = {{ arg = "/a", gt = 1000 }}
    action = "deny"
    """


def test_denied_echo_is_a_tool_error_naming_the_rule_and_is_recorded(broker):
    b = broker(policy_config(f"command = {toml_list(everything_stdio_command())}"))

    async def run():
        async with _client(b) as c:
            denied = await c.call_tool("echo", {"message": "hi"})
            small = await c.call_tool("get-sum", {"a": 1, "b": 2})
            big = await c.call_tool("get-sum", {"a": 5000, "b": 2})
            return denied, small, big

    denied, small, big = anyio.run(run)
    assert denied.is_error is True
    text = denied.content[0].text
    assert 'rule "no-echo"' in text and "echo is off limits in this test" in text
    assert small.is_error is not True and "3" in small.content[0].text
    assert big.is_error is True and 'rule "big-sums"' in big.content[0].text

    records = b.audit()
    by_tool = [(r["tool"], r["outcome"], r["rule"]["name"], r["client"]) for r in records]
    assert ("echo", "blocked", "no-echo", "agent-7") in by_tool
    assert ("get-sum", "allowed", "default", "agent-7") in by_tool
    assert ("get-sum", "blocked", "big-sums", "agent-7") in by_tool
    allowed = next(r for r in records if r["outcome"] == "allowed")
    # The trail keeps the canonical arguments' hash (the arguments stay in the call record).
    assert allowed["args_hash"] == hashlib.sha256(b'{"a":1,"b":2}').hexdigest()
    assert allowed["request_id"] is not None and allowed["seq"] >= 1 and len(allowed["hash"]) == 64


def _client(b):
    return sdk_client(b.url("everything"), TOKEN, timeout=30)


def test_typescript_client_sees_the_denial_too(broker, everything_http):
    b = broker(policy_config(f'url = "{everything_http}"'))
    out = run_ts({"target": {"url": b.url("everything"), "token": TOKEN}, "run": "list_and_echo"})
    assert out["echo"]["isError"] is True
    assert 'rule "no-echo"' in out["echo"]["content"][0]["text"]


def test_annotation_rule_holds_destructive_tools_once_tools_list_was_seen(broker):
    b = broker(
        f"""
        [broker]
        auth = "none"
        [policy]
        default = "allow"
        [[server]]
        name = "py"
        command = {toml_list(py_stdio_command())}
        [[rule]]
        name = "hold-destructive"
        tools = ["*"]
        when = {{ annotation = "destructiveHint", equals = true }}
        action = "approve"
        expiry = "1s"
        """
    )

    async def run():
        async with Client(b.url("py")) as c:
            await c.list_tools()
            held = await c.call_tool("delete_bucket", {"bucket": "prod"})
            fine = await c.call_tool("echo", {"message": "ok"})
            return held, fine

    held, fine = anyio.run(run)
    assert held.is_error is True
    # Nobody approves within the rule's expiry, so the held call times out (unlike echo).
    assert "Timed out waiting for approval" in held.content[0].text
    assert fine.is_error is not True


def test_missing_or_wrong_token_is_refused_with_401(broker):
    b = broker(policy_config(f"command = {toml_list(everything_stdio_command())}"))
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = post(b.url("everything"), init)
    assert r.status_code == 401 and "missing bearer token" in r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = post(b.url("everything"), init, {"authorization": "Bearer wrong"})
    assert r.status_code == 401 and "invalid bearer token" in r.text


def test_hash_token_prints_the_digest_for_the_config():
    out = subprocess.run([str(BROKER_BIN), "hash-token"], input=TOKEN, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == TOKEN_SHA
