"""The client compatibility matrix: real MCP clients and agent frameworks, each pinned, through
the broker. For each: the tools it lists equal the server's own, an allowed call works, a denied
call reaches it as a tool error with the rule's reason, a call held for 90 s then approved
returns the normal result, one rejected returns a tool error, and a call it cancels is
`cancelled` in the audit (where the client says so). docs/clients.md is the matrix in prose.

All clients run at once against one broker, so the 90 s hold is waited once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from mcp import Client, StdioServerParameters

from conftest import BROKER_BIN, CONSOLE_BIN, HERE, PYTHON, everything_stdio_command, toml_list
from conftest import console_cli as console

HOLD = float(os.environ.get("TOLLGATE_MATRIX_HOLD", "90"))
CLIENTS = HERE / "clients"
AGENTS_PY = HERE / ".venv-agents" / "bin" / "python"
LANGCHAIN_PY = HERE / ".venv-langchain" / "bin" / "python"
INSPECTOR = HERE / "node_modules" / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
INSPECTOR_015 = HERE / "node_modules" / "inspector-0.15" / "cli" / "build" / "index.js"
MCP_REMOTE = HERE / "node_modules" / "mcp-remote" / "dist" / "proxy.js"
REASON = "messages starting with deny are refused"


def config(auth: str = "") -> str:
    return f"""
    [broker]
    {auth}
    keepalive = "5s"
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}
    [[rule]]
    name = "no-deny"
    tools = ["everything/echo"]
    when = {{ arg = "/message", matches = "^deny" }}
    action = "deny"
    reason = "{REASON}"
    [[rule]]
    name = "hold-for-a-person"
    tools = ["everything/echo"]
    when = {{ arg = "/message", matches = "^hold" }}
    action = "approve"
    expiry = "10m"
    [[rule]]
    name = "retry-for-a-person"
    tools = ["everything/echo"]
    when = {{ arg = "/message", matches = "^retry" }}
    action = "approve"
    hold = "retry"
    """


def direct_tools() -> list[str]:
    """The server's own tools, listed by the official Python SDK over stdio."""
    import anyio

    async def run() -> list[str]:
        cmd = everything_stdio_command()
        async with Client(StdioServerParameters(command=cmd[0], args=cmd[1:])) as c:
            return sorted(t.name for t in (await c.list_tools()).tools)

    return anyio.run(run)


def inspector(script: Path, url: str, token: str | None, *args: str) -> list[str]:
    cmd = ["node", str(script)]
    if script == INSPECTOR:
        cmd.append("--cli")
    cmd += [url, "--transport", "http", *args]
    if token:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    return cmd


def inspector_call(script: Path, url: str, token: str | None, message: str) -> list[str]:
    return inspector(script, url, token, "--method", "tools/call", "--tool-name", "echo", "--tool-arg", f"message={message}")


def run_json(cmd: list[str]) -> tuple[int, dict | None, str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    try:
        return r.returncode, json.loads(r.stdout), r.stderr
    except json.JSONDecodeError:
        return r.returncode, None, r.stdout + r.stderr


def inspector_text(doc: dict | None) -> str:
    return " ".join(c.get("text", "") for c in (doc or {}).get("content", []))


class Pending:
    """Every held call, by id: its message (the audit does not carry arguments), from
    `tollgate watch --json` started before any call, so calls cancelled within a second are
    known too."""

    def __init__(self, b, token: str, procs, name: str):
        self.b, self.token, self.seen = b, token, {}
        env = {"TOLLGATE_URL": b.console, "TOLLGATE_TOKEN": token, "XDG_CONFIG_HOME": "/nonexistent"}
        self.watch = procs.start(f"watch-{name}", [str(CONSOLE_BIN), "watch", "--json"], env)

    def poll(self) -> list[dict]:
        for line in self.watch.stdout().splitlines():
            m = json.loads(line)
            if m.get("type") == "call_pending":
                self.seen[m["call"]["id"]] = m["call"]["arguments"]["message"]
        r = console(self.b, self.token, "list", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def decide(self) -> None:
        for c in self.poll():
            m = c["arguments"]["message"]
            if "reject" in m or "cancel" in m:
                args = ["reject", c["id"], "--reason", "not today" if "reject" in m else "cleaning up"]
            else:
                args = ["approve", c["id"]]
            r = console(self.b, self.token, *args)
            assert r.returncode in (0, 4), (args, r.stderr)

    def outcomes(self) -> dict[str, str]:
        r = console(self.b, self.token, "audit", "--json", "--limit", "1000")
        out = {}
        for e in json.loads(r.stdout):  # oldest first: the last entry of a call wins
            if e["call_id"] in self.seen:
                out[self.seen[e["call_id"]]] = e["outcome"]
        return out


def test_every_client_in_the_matrix(broker, procs, everything_http, tmp_path):
    direct = direct_tools()
    b = broker(config())
    # Inspector 0.15 cannot send headers, so it needs a broker without authentication.
    open_b = broker(config('auth = "none"'), name="open")
    # Each client its own identity, as separate agents (each may open 16 sessions).
    tokens = {n: b.token(n, "viewer") for n in ["openai-agents", "pydantic-ai", "fastmcp", "langchain", "mcp-remote", "tollgate-connect", "inspector-2.12"]}
    alice = b.token("alice", "approver")
    alice_open = open_b.token("alice", "approver")
    pending = Pending(b, alice, procs, "main")
    pending_open = Pending(open_b, alice_open, procs, "open")
    base = b.base
    urls = {
        "openai-agents": f"{base}/mcp",  # the default server: the broker's only one
        "pydantic-ai": f"{base}/everything/mcp",
        "fastmcp": f"{base}/mcp/everything",
        "langchain": f"{base}/everything/mcp",
    }
    # Each client cancels its held call once the test has seen it held (the file appears).
    cancel_now = tmp_path / "cancel-now"
    drivers = {}
    for fw, url in urls.items():
        py = LANGCHAIN_PY if fw == "langchain" else AGENTS_PY
        drivers[fw] = procs.start(
            fw,
            [str(py), str(CLIENTS / "frameworks.py"), fw, "--url", url, "--direct-url", everything_http,
             "--token", tokens[fw], "--cancel-when", str(cancel_now)],
        )
    drivers["mcp-remote"] = procs.start(
        "mcp-remote",
        [PYTHON, str(CLIENTS / "bridge.py"), "mcp-remote", "--token", tokens["mcp-remote"], "--cancel-when", str(cancel_now), "--",
         "node", str(MCP_REMOTE), f"{base}/everything/mcp", "--header", f"Authorization: Bearer {tokens['mcp-remote']}"],
    )
    drivers["tollgate-connect"] = procs.start(
        "tollgate-connect",
        [PYTHON, str(CLIENTS / "bridge.py"), "tollgate-connect", "--token", tokens["tollgate-connect"], "--cancel-when", str(cancel_now), "--",
         str(BROKER_BIN), "connect", f"{base}/everything/mcp"],
    )
    # The Inspector CLIs: one process per request.
    insp: dict[str, dict] = {}
    for name, script, url, tok in (
        ("inspector-2.12", INSPECTOR, f"{base}/everything/mcp", tokens["inspector-2.12"]),
        ("inspector-0.15", INSPECTOR_015, f"{open_b.base}/everything/mcp", None),
    ):
        code, listed, err = run_json(inspector(script, url, tok, "--method", "tools/list"))
        assert code == 0 and listed, err
        code, direct_listed, err = run_json(inspector(script, everything_http, None, "--method", "tools/list"))
        assert code == 0 and direct_listed, err
        r = insp[name] = {
            "tools": sorted(t["name"] for t in listed["tools"]),
            "direct_tools": sorted(t["name"] for t in direct_listed["tools"]),
        }
        code, doc, err = run_json(inspector_call(script, url, tok, f"allowed {name}"))
        r["allowed"] = {"code": code, "text": inspector_text(doc) or err}
        code, doc, err = run_json(inspector_call(script, url, tok, f"deny {name}"))
        r["denied"] = {"code": code, "error": bool((doc or {}).get("isError")), "text": inspector_text(doc) or err}
        # A one-shot CLI waits for a held call only as long as its SDK's request timeout: its
        # recipe is retry mode (queued at once; repeat the call once it is decided).
        r["procs"] = {
            step: subprocess.Popen(inspector_call(script, url, tok, f"hold {step} {name}"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for step in ("default", "cancel")
        }
        for step in ("approve", "reject"):
            code, doc, err = run_json(inspector_call(script, url, tok, f"retry {step} {name}"))
            r[f"queued {step}"] = {"code": code, "error": bool((doc or {}).get("isError")), "text": inspector_text(doc) or err}
        r["repeat"] = (script, url, tok)
    t0 = time.monotonic()
    # 7 clients x 4 held calls on the broker (the Inspector 2.12 has no default step), 3 on the
    # open one; the cancels leave within seconds.
    deadline = t0 + 180
    expected = {f"hold {s} {n}" for n in drivers for s in ("default", "approve", "reject", "cancel")}
    expected |= {f"hold {s} inspector-2.12" for s in ("default", "cancel")}
    expected |= {f"retry {s} inspector-2.12" for s in ("approve", "reject")}
    while not expected <= set(pending.seen.values()) or len(pending_open.seen) < 4:
        missing = expected - set(pending.seen.values())
        stderr = {n: p.stderr()[-1500:] for n, p in drivers.items() if any(n in m for m in missing)}
        assert time.monotonic() < deadline, (missing, sorted(pending_open.seen.values()), stderr)
        pending.poll()
        pending_open.poll()
        time.sleep(1)
    cancel_now.touch()
    # The Inspector has no way to cancel but to stop: its process is interrupted.
    for r in insp.values():
        r["procs"]["cancel"].send_signal(signal.SIGINT)
    while time.monotonic() < t0 + HOLD:
        pending.poll()
        pending_open.poll()
        time.sleep(2)
    pending.decide()
    pending_open.decide()

    results = {}
    for name, p in drivers.items():
        p.popen.wait(120)
        lines = p.stdout().strip().splitlines()
        assert lines and lines[-1].startswith("{") and '"tools"' in lines[-1], (name, p.stderr()[-3000:])
        results[name] = json.loads(lines[-1])
    for name, r in insp.items():
        out, err = r["procs"]["default"].communicate(timeout=120)
        try:
            doc = json.loads(out)
        except json.JSONDecodeError:
            doc = None
        r["default"] = {"code": r["procs"]["default"].returncode, "text": inspector_text(doc) or (out + err)[-500:]}
        r["procs"]["cancel"].wait(30)
        for step in ("approve", "reject"):
            code, doc, err = run_json(inspector_call(*r["repeat"], f"retry {step} {name}"))
            r[step] = {"code": code, "error": bool((doc or {}).get("isError")), "text": inspector_text(doc) or err}
        del r["procs"], r["repeat"]
        results[name] = r
    time.sleep(1)
    outcomes = pending.outcomes() | pending_open.outcomes()

    matrix = {}
    for name, r in results.items():
        row = matrix[name] = {
            # The server offers more tools to clients declaring more capabilities: each client's
            # list is compared with its own, made directly (the bridges' client is the Python SDK).
            "tools equal": r["tools"] == r.get("direct_tools", direct),
            "allowed": r["allowed"]["text"],
            "denied": r["denied"],
            "approved after hold": r.get("approve"),
            "rejected after hold": r.get("reject"),
            "default wait": r.get("default"),
            "queued (retry mode)": r.get("queued approve"),
            "cancel in audit": outcomes.get(f"hold cancel {name}"),
            "default hold in audit": outcomes.get(f"hold default {name}"),
        }
        assert row["tools equal"], (name, r["tools"], r.get("direct_tools", direct))
        assert f"Echo: allowed {name}" in r["allowed"]["text"], (name, r["allowed"])
        assert REASON in r["denied"]["text"], (name, r["denied"])
        held = "retry" if name.startswith("inspector") else "hold"
        assert f"Echo: {held} approve {name}" in r["approve"]["text"], (name, r["approve"])
        assert "Rejected by alice: not today" in r["reject"]["text"], (name, r["reject"])
    out = os.environ.get("TOLLGATE_MATRIX_OUT")
    if out:
        Path(out).write_text(json.dumps(matrix, indent=2))

    # How each reports a tool error to the agent: a result flagged isError, or the framework's
    # own tool-error exception (which its agent loop hands to the model).
    raised = {n: results[n]["denied"].get("raised") for n in drivers}
    assert raised == {
        "openai-agents": None,
        "pydantic-ai": "ModelRetry",
        "fastmcp": "ToolError",
        "langchain": None,
        "mcp-remote": None,
        "tollgate-connect": None,
    }, raised
    assert results["mcp-remote"]["denied"]["error"] and results["tollgate-connect"]["denied"]["error"]
    for n in ("inspector-2.12", "inspector-0.15"):
        assert results[n]["denied"]["error"] and results[n]["reject"]["error"], results[n]
        assert "is queued as call" in results[n]["queued approve"]["text"], results[n]
    # Waiting by default: openai-agents gives up after its 5 s session timeout, tells the broker
    # (the call is cancelled, not left for an approver) and the model sees a generic error; the
    # others wait for the 90 s hold.
    d = results["openai-agents"]["default"]
    assert d["seconds"] < 30 and "An error occurred while running the tool" in d["text"], d
    assert outcomes["hold default openai-agents"] == "cancelled", outcomes
    for n in ("pydantic-ai", "fastmcp", "langchain", "mcp-remote", "tollgate-connect"):
        assert f"Echo: hold default {n}" in results[n]["default"]["text"], (n, results[n]["default"])
    # The Inspector CLIs give up after their SDK's 60 s request timeout (seen when the hold is
    # longer: TOLLGATE_MATRIX_HOLD shortens it when working on this test).
    for n in ("inspector-2.12", "inspector-0.15") if HOLD > 65 else ():
        d = results[n]["default"]
        assert d["code"] != 0 and "timed out" in d["text"].lower(), (n, d)
    # Cancelling: the MCP SDKs send notifications/cancelled, and the broker records it; the 1.x
    # Python SDK under langchain does not, nor does an interrupted Inspector: those calls stay
    # held until decided or expired.
    for n in ("openai-agents", "pydantic-ai", "fastmcp", "mcp-remote", "tollgate-connect"):
        assert outcomes[f"hold cancel {n}"] == "cancelled", (n, outcomes)
    for n in ("langchain", "inspector-2.12", "inspector-0.15"):
        assert outcomes[f"hold cancel {n}"] == "rejected", (n, outcomes)


def test_each_server_answers_at_three_paths_and_mcp_needs_a_default_among_several(broker, tmp_path):
    """`/mcp/<server>`, `/<server>/mcp`, and `/mcp` for `[broker] default_server`."""
    import anyio
    import httpx2 as httpx
    from mcp.client.streamable_http import streamable_http_client

    two = f"""
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}
    [[server]]
    name = "other"
    command = {toml_list(everything_stdio_command())}
    """
    b = broker(two)
    token = b.token("agent", "viewer")

    async def echo(url: str) -> str:
        http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"})
        async with Client(streamable_http_client(url, http_client=http)) as c:
            r = await c.call_tool("echo", {"message": "hi"})
            return r.content[0].text

    for path in ("/mcp/everything", "/everything/mcp", "/other/mcp"):
        assert anyio.run(echo, b.base + path) == "Echo: hi", path
    # Several servers and no default: /mcp names them, to a client with a valid token only.
    import urllib.request
    from urllib.error import HTTPError

    def post(url: str, tok: str | None) -> tuple[int, str]:
        req = urllib.request.Request(url, data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json, text/event-stream")
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except HTTPError as e:
            return e.code, e.read().decode()

    code, body = post(b.base + "/mcp", token)
    assert code == 404 and "no [broker] default_server" in body and "everything, other" in body, body
    code, body = post(b.base + "/mcp", None)
    assert code == 401 and "everything" not in body, body
    b.proc.stop()
    named = broker(two.replace("[policy]", '[broker]\ndefault_server = "other"\n[policy]', 1), name="named")
    token = named.token("agent", "viewer")
    assert anyio.run(echo, named.base + "/mcp") == "Echo: hi"
    # check refuses a default that is not a server.
    bad = tmp_path / "bad.toml"
    bad.write_text(two.replace("[policy]", '[broker]\ndefault_server = "nope"\n[policy]', 1))
    r = subprocess.run([str(BROKER_BIN), "check", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and 'default_server "nope" is not a configured server' in r.stdout + r.stderr, r.stdout + r.stderr
