"""The approver's console against a real broker: the scriptable CLI (with its exit codes) and
the TUI driven in tmux, deciding real held calls made with the Python mcp SDK."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CONSOLE_BIN, PYTHON, ROOT, everything_stdio_command, filesystem_stdio_command, toml_list
from conftest import console_cli as console

AGENT = ROOT / "examples" / "agent.py"


def config() -> str:
    return f"""
    [broker]
    keepalive = "2s"
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}
    [[rule]]
    name = "echo-needs-a-human"
    tools = ["everything/echo"]
    action = "approve"
    """


def start_agent(procs, b, token: str, loop: int):
    return procs.start(
        "agent",
        [PYTHON, str(AGENT), b.url("everything"), "--token", token, "--loop", str(loop), "--json"],
    )


def agent_results(proc, timeout: float = 120) -> dict:
    proc.popen.wait(timeout)
    out = proc.stdout().strip().splitlines()
    assert out, proc.stderr()[-2000:]
    return json.loads(out[-1])


def wait_pending(b, token: str, n: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = console(b, token, "list", "--json")
        assert r.returncode == 0, r.stderr
        calls = json.loads(r.stdout)
        if len(calls) >= n:
            return calls
        time.sleep(0.3)
    raise TimeoutError(f"fewer than {n} held calls after {timeout}s")


def test_cli_lists_shows_decides_and_reports_refusals_with_exit_codes(broker, procs):
    b = broker(config())
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    viewer = b.token("vic", "viewer")
    a = start_agent(procs, b, agent, loop=3)
    calls = wait_pending(b, alice, 5)
    by = {c["arguments"]["message"]: c for c in calls}
    ship = by["deploy v2.3.1 to production"]["id"]
    prod = by["drop table orders on production"]["id"]

    table = console(b, alice, "list")
    assert table.returncode == 0 and "everything/echo" in table.stdout and ship in table.stdout
    shown = console(b, alice, "show", ship)
    assert shown.returncode == 0 and '"message": "deploy v2.3.1 to production"' in shown.stdout
    assert "echo-needs-a-human" in shown.stdout

    refused = console(b, viewer, "approve", ship)
    assert refused.returncode == 5 and "is a viewer" in refused.stderr
    ok = console(b, alice, "approve", ship, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)[0]["outcome"] == "approved"
    again = console(b, alice, "approve", ship)
    assert again.returncode == 4 and "already approved by alice" in again.stderr
    missing = console(b, alice, "reject", "0190c1a2-0000-7000-8000-000000000000", "--reason", "x")
    assert missing.returncode == 3 and "no such call" in missing.stderr
    no_reason = console(b, alice, "reject", prod)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    assert console(b, alice, "reject", prod, "--reason", "use staging").returncode == 0
    loop_fp = by["retry: delete session 7"]["fingerprint"]
    # A viewer asking for a temporary rule is refused for its role (5) like any decision, and
    # errors name the CLI's flags and commands, never protocol fields.
    for args in (
        ["reject", "--fingerprint", loop_fp, "--reason", "x", "--block-for", "15m"],
        ["approve", "--fingerprint", loop_fp, "--allow-next", "3"],
    ):
        r = console(b, viewer, *args)
        assert r.returncode == 5 and "is a viewer" in r.stderr, (args, r.returncode, r.stderr)
    too_long = console(b, alice, "reject", "--fingerprint", loop_fp, "--reason", "x", "--block-for", "48h")
    assert too_long.returncode == 2 and "--block-for" in too_long.stderr and "24h" in too_long.stderr
    gone_rule = console(b, alice, "rules", "revoke", "t-00000000")
    assert gone_rule.returncode == 3 and "tollgate rules" in gone_rule.stderr, gone_rule.stderr
    for r in (too_long, gone_rule):
        assert not re.search(r"list_rules|block_for_ms|allow_next|\{\"by\"", r.stderr), r.stderr
    bulk = console(b, alice, "reject", "--fingerprint", loop_fp, "--reason", "runaway loop", "--json")
    assert bulk.returncode == 0 and len(json.loads(bulk.stdout)) == 3

    got = agent_results(a)
    assert got["ship"] == ["Echo: deploy v2.3.1 to production"]
    assert got["prod"][0].startswith("Rejected by alice: use staging.")
    assert len(got["loop"]) == 3 and all(t.startswith("Rejected by alice: runaway loop") for t in got["loop"])

    audit = console(b, alice, "audit", "--status", "rejected", "--json")
    assert audit.returncode == 0 and len(json.loads(audit.stdout)) == 4
    gone = console(b, alice, "show", prod)
    assert gone.returncode == 0 and "rejected" in gone.stdout and "use staging" in gone.stdout
    bad = console(b, "tg_wrong", "list")
    assert bad.returncode == 1 and "refused the token (HTTP 401)" in bad.stderr
    b.proc.stop()
    down = console(b, alice, "list")
    assert down.returncode == 1 and "cannot reach the broker" in down.stderr


def test_watch_streams_events_as_json_lines(broker, procs):
    b = broker(config())
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    env = {**os.environ, "TOLLGATE_URL": b.console, "TOLLGATE_TOKEN": alice}
    w = subprocess.Popen([str(CONSOLE_BIN), "watch", "--json"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(0.5)
        a = start_agent(procs, b, agent, loop=0)
        calls = wait_pending(b, alice, 2)
        for c in calls:
            assert console(b, alice, "approve", c["id"]).returncode == 0
        agent_results(a)
        seen = []
        while len([m for m in seen if m["type"] == "call_decided"]) < 2:
            seen.append(json.loads(w.stdout.readline()))
        assert [m["type"] for m in seen].count("call_pending") == 2
    finally:
        w.kill()
        w.wait()


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_screen(session: str, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = screen(session)
        if re.search(pattern, s):
            return s
        time.sleep(0.2)
    raise TimeoutError(f"screen never showed {pattern!r}:\n{screen(session)}")


def keys(session: str, *ks: str, literal: bool = False) -> None:
    for k in ks:
        tmux("send-keys", "-t", session, *(["-l"] if literal else []), k)
        time.sleep(0.15)


@pytest.fixture
def tmux_session():
    name = f"tollgate-e2e-{os.getpid()}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_tui_approves_rejects_and_rejects_a_500_call_loop_in_tmux(broker, procs, tmux_session):
    b = broker(config())
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")
    a = start_agent(procs, b, agent, loop=500)
    wait_pending(b, alice, 502, timeout=120)
    cmd = f"env TOLLGATE_URL={b.console} TOLLGATE_TOKEN={alice} XDG_CONFIG_HOME=/nonexistent {CONSOLE_BIN}"
    tmux("new-session", "-d", "-s", tmux_session, "-x", "100", "-y", "30", cmd)
    s = wait_screen(tmux_session, r"502 pending · ● connected")
    assert "alice (approver)" in s and "everything/echo" in s

    # Approve one: filter to it, then a.
    keys(tmux_session, "/")
    keys(tmux_session, "deploy v2.3.1", literal=True)
    keys(tmux_session, "Enter")
    wait_screen(tmux_session, r"Queue · 1 call ")
    keys(tmux_session, "a")
    wait_screen(tmux_session, r"echo approved by alice")

    # Reject one with a reason.
    keys(tmux_session, "/", "C-u")
    keys(tmux_session, "drop table", literal=True)
    keys(tmux_session, "Enter")
    wait_screen(tmux_session, r"Queue · 1 call ")
    keys(tmux_session, "r")
    wait_screen(tmux_session, r"Reason \(shown to the agent\)")
    keys(tmux_session, "use staging", literal=True)
    keys(tmux_session, "Enter")
    wait_screen(tmux_session, r"echo rejected by alice: use staging")

    # The loop: clear the filter; grouped by default, the 500 calls are the one row left.
    keys(tmux_session, "/", "C-u", "Enter")
    s = wait_screen(tmux_session, r"500 calls in 1 group")
    # Past the default loop threshold (20 of one shape a minute) the row is flagged as a loop.
    assert re.search(r"›.*everything/echo\s+agent\s+500\s+\[loop\] \[\d+/min\] message=retry: delete session", s), s
    # x: reject the whole pattern and block it for 15 minutes.
    keys(tmux_session, "x")
    wait_screen(tmux_session, r"and refuse new calls of this pattern for 15m")
    keys(tmux_session, "y")
    keys(tmux_session, "runaway loop", literal=True)
    keys(tmux_session, "Enter")
    s = wait_screen(tmux_session, r"· 0 pending", timeout=60)
    assert "No calls are waiting for approval." in s
    wait_screen(tmux_session, r"\[sort age · by identical call · 1 rule\]")

    got = agent_results(a, timeout=120)
    assert got["ship"] == ["Echo: deploy v2.3.1 to production"]
    assert got["prod"][0].startswith("Rejected by alice: use staging.")
    assert len(got["loop"]) == 500
    assert all(t.startswith("Rejected by alice: runaway loop.") for t in got["loop"])

    # The rules view lists the block rule; D revokes it.
    keys(tmux_session, "t")
    s = wait_screen(tmux_session, r"Temporary rules · 1")
    assert re.search(r"› t-[0-9a-f]{8}\s+block\s+everything/echo\s+alice\s+1[45]m\d\ds\s+0\s+runaway loop", s), s
    keys(tmux_session, "D")
    wait_screen(tmux_session, r"No temporary rules")
    keys(tmux_session, "Escape")

    keys(tmux_session, "q")
    time.sleep(0.5)
    assert subprocess.run(["tmux", "has-session", "-t", tmux_session], capture_output=True).returncode != 0, "q quits"


def test_tui_triages_a_mornings_mixed_queue_by_tool_in_thirteen_keys(broker, procs, tmux_session, tmp_path):
    """5 SDK agents, 50 different held calls on the reference filesystem server: approve the 40
    reads (read_file, list_directory), reject the 10 writes (write_file, move_file) with one
    reason. Grouped by tool and sorted by tool the rows are list_directory, move_file,
    read_file, write_file whatever order the agents' calls came in."""
    root = tmp_path / "files"
    for n in range(1, 6):
        for i in range(4):
            (root / f"a{n}" / f"d{i}").mkdir(parents=True)
            (root / f"a{n}" / f"d{i}" / "inside.txt").write_text("x")
            (root / f"a{n}" / f"f{i}.txt").write_text(f"agent {n} file {i}")
    b = broker(f"""
    [policy]
    default = "allow"
    [[server]]
    name = "files"
    command = {toml_list(filesystem_stdio_command(str(root)))}
    [[rule]]
    name = "files-need-a-human"
    tools = ["files/read_file", "files/list_directory", "files/write_file", "files/move_file"]
    action = "approve"
    """)
    alice = b.token("alice", "approver")
    agents = [
        procs.start(
            f"agent-{n}",
            [PYTHON, str(AGENT), b.url("files"), "--token", b.token(f"agent-{n}", "viewer"),
             "--script", "files", "--root", str(root), "--agent", str(n), "--json"],
        )
        for n in range(1, 6)
    ]
    wait_pending(b, alice, 50, timeout=120)
    cmd = f"env TOLLGATE_URL={b.console} TOLLGATE_TOKEN={alice} XDG_CONFIG_HOME=/nonexistent {CONSOLE_BIN}"
    tmux("new-session", "-d", "-s", tmux_session, "-x", "120", "-y", "30", cmd)
    wait_screen(tmux_session, r"50 pending · ● connected")
    pressed: list[str] = []

    def press(*ks: str) -> None:
        pressed.extend(ks)
        keys(tmux_session, *ks)

    press("g")
    wait_screen(tmux_session, r"Queue · 50 calls in 4 tools")
    press("s", "s")
    wait_screen(tmux_session, r"\[sort tool · by tool\]")
    press("PPage")
    s = wait_screen(tmux_session, r"› .*files/list_directory\s+5 clients\s+20")
    assert re.search(r"files/read_file\s+5 clients\s+20", s), s

    def approve_row(done: str, left: str) -> None:
        press("a")
        wait_screen(tmux_session, r"Approve 20 calls\?")
        press("y")
        wait_screen(tmux_session, done)
        # The answer can come before the last of the calls' leave events.
        wait_screen(tmux_session, re.escape(left))

    approve_row(r"20 calls approved", "Queue · 30 calls in 3 tools")
    # The next row came under the cursor: move_file; read_file is one down.
    press("j")
    wait_screen(tmux_session, r"› .*files/read_file")
    approve_row(r"from this console so far: 40 approved, 0 rejected", "Queue · 10 calls in 2 tools")
    # What is left are the writes: select them all and reject them with one reason.
    press("*")
    wait_screen(tmux_session, r"10 selected")
    press("R")
    s = wait_screen(tmux_session, r"Reject 10 calls\?")
    assert "files/move_file ×5" in s and "files/write_file ×5" in s, s
    press("y")
    wait_screen(tmux_session, r"Reason \(shown to the agent\)")
    keys(tmux_session, "no writes before the freeze ends", literal=True)
    press("Enter")
    wait_screen(tmux_session, r"10 calls rejected · from this console so far: 40 approved, 10 rejected")
    # The answer can come before the last of the calls' leave events.
    wait_screen(tmux_session, r"· 0 pending")
    assert len(pressed) == 13, pressed

    for n, a in enumerate(agents, start=1):
        got = agent_results(a)
        assert sorted(got["read"]) == [f"agent {n} file {i}" for i in range(4)], got
        assert all("[FILE] inside.txt" in t for t in got["list"]), got
        for label in ("write", "move"):
            assert got[label][0].startswith("Rejected by alice: no writes before the freeze ends"), got
        assert not (root / f"a{n}" / "new.txt").exists() and (root / f"a{n}" / "f0.txt").exists()
    audit = json.loads(console(b, alice, "audit", "--json", "--limit", "200").stdout)
    statuses = [e["outcome"] for e in audit if e.get("outcome") in ("approved", "rejected")]
    assert statuses.count("approved") == 40 and statuses.count("rejected") == 10, statuses
