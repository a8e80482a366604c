"""Repeated-call patterns, temporary rules and budgets against a real broker: a Python mcp SDK
agent loops on one risky call, the console API sees one pattern, one decision answers every
call and blocks the next at once; approvals can pre-approve a bounded number of identical
calls; budgets cap what one client can put in front of people, under concurrency."""

from __future__ import annotations

import json
import time
from collections import Counter

from conftest import console_cli, everything_stdio_command, sdk_burst, sdk_call, toml_list

RISKY = {"message": "retry: delete session 7"}


def config(extra: str = "") -> str:
    return f"""
    [broker]
    keepalive = "2s"
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}
    [[rule]]
    name = "retries-need-a-human"
    tools = ["everything/echo"]
    when = {{ arg = "/message", matches = "^retry" }}
    action = "approve"
    {extra}
    """


def fire(url: str, token: str, n: int, args: dict) -> list:
    """n identical echo calls at once on one SDK session; returns the results, in no order."""
    return sdk_burst(url, token, [("echo", args)] * n)


def wait_snapshot(con, n: int, timeout: float = 90, agent=None) -> list[dict]:
    deadline = time.monotonic() + timeout
    pending = []
    while time.monotonic() < deadline:
        pending = con.request({"type": "snapshot"}, "snapshot")["pending"]
        if len(pending) >= n:
            return pending
        if agent is not None and agent.done():
            agent.result()  # raises what went wrong in the agent
            raise AssertionError(f"the agent finished with only {len(pending)} calls pending")
        time.sleep(0.3)
    raise TimeoutError(f"{len(pending)} of {n} calls pending after {timeout}s")


def test_a_500_call_loop_is_one_pattern_rejected_once_and_the_501st_is_refused_at_once(broker):
    import concurrent.futures

    b = broker(config('[loops]\nthreshold = 50\nwindow = "5m"'))
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    url = b.url("everything")

    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop = pool.submit(fire, url, agent, 500, RISKY)
    pending = wait_snapshot(alice, 500, agent=loop)

    # One pattern: every call has the same exact and shape fingerprint; past the threshold the
    # calls carry the loop flag with their count.
    assert len({c["fingerprint"] for c in pending}) == 1
    assert len({c["shape"] for c in pending}) == 1
    fingerprint = pending[0]["fingerprint"]
    looping = [c for c in pending if c.get("signals", {}).get("looping")]
    assert len(looping) == 451, "calls 50 to 500 are over the threshold"
    assert max(c.get("signals", {}).get("repeats", 0) for c in pending) == 500

    answer = alice.request(
        {
            "type": "decide",
            "target": {"by": "fingerprint", "fingerprint": fingerprint},
            "verdict": "reject",
            "reason": "runaway loop",
            "block_for_ms": 15 * 60_000,
        },
        "decided",
        timeout=60,
    )
    assert len(answer["results"]) == 500 and all(r["ok"] for r in answer["results"])
    rule = answer["rule"]
    assert rule["kind"] == "block" and rule["by"] == "alice" and rule["fingerprint"] == fingerprint
    assert rule["until_ms"] - rule["created_ms"] == 15 * 60_000

    results = loop.result(120)
    assert len(results) == 500
    assert all(r.is_error is True and r.content[0].text.startswith("Rejected by alice: runaway loop") for r in results)

    # The 501st: refused at once by the rule, never queued.
    late = sdk_call(url, agent, "echo", RISKY).result(30)
    assert late.is_error is True
    text = late.content[0].text
    assert "refused this call to everything/echo at once: alice rejected this repeated call" in text, text
    assert rule["id"] in text and "runaway loop" in text
    assert alice.request({"type": "snapshot"}, "snapshot")["pending"] == []
    rules = alice.request({"type": "list_rules"}, "rules")["rules"]
    assert [(r["id"], r["hits"]) for r in rules] == [(rule["id"], 1)]
    # Other calls of the same tool are not caught by the rule.
    assert sdk_call(url, agent, "echo", {"message": "hello"}).result(30).content[0].text == "Echo: hello"

    trail = b.audit("--tool", "echo")
    final = {}
    for e in trail:  # oldest first: the last entry per call is its outcome
        final[e["call_id"]] = e
    risky_hash = Counter(e["args_hash"] for e in final.values()).most_common(1)[0][0]
    loop_calls = {k: e for k, e in final.items() if e["args_hash"] == risky_hash}
    statuses = Counter(e["outcome"] for e in loop_calls.values())
    assert len(loop_calls) == 501 and statuses == {"rejected": 500, "blocked": 1}, statuses
    assert all(e["approvers"] == ["alice"] for e in loop_calls.values())
    blocked = next(e for e in loop_calls.values() if e["outcome"] == "blocked")
    assert blocked["reason"].startswith(f"temporary rule {rule['id']} by alice until ")
    assert blocked["rule"]["name"] == rule["id"]
    # Every held call was audited as pending first, then rejected.
    pend = Counter(e["outcome"] for e in trail if e["call_id"] in loop_calls)
    assert pend["pending"] == 500


def test_approve_next_lets_a_bounded_number_through_and_rules_are_listed_and_revoked(broker):
    b = broker(config())
    agent = b.token("agent", "viewer")
    alice_token = b.token("alice", "approver")
    viewer = b.token("vera", "viewer")
    alice = b.connect(alice_token)
    url = b.url("everything")

    first = sdk_call(url, agent, "echo", RISKY)
    call = alice.pending()
    out = console_cli(b, alice_token, "approve", "--fingerprint", call["fingerprint"], "--allow-next", "2", "--for", "10m", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["results"][0]["ok"] and got["rule"]["kind"] == "allow" and got["rule"]["remaining"] == 2
    assert first.result(30).content[0].text == "Echo: retry: delete session 7"

    # The next two identical calls run without a person; the third waits again.
    for _ in range(2):
        assert sdk_call(url, agent, "echo", RISKY).result(30).content[0].text == "Echo: retry: delete session 7"
    third = sdk_call(url, agent, "echo", RISKY)
    held = alice.pending()
    assert held["fingerprint"] == call["fingerprint"]
    listed = json.loads(console_cli(b, alice_token, "rules", "--json").stdout)
    assert listed == [], "a used-up allow rule is gone"

    # A different call is never covered by an allowance, even of the same tool.
    out = console_cli(b, alice_token, "reject", "--fingerprint", held["fingerprint"], "--reason", "stop", "--block-for", "5m")
    assert out.returncode == 0, out.stderr
    assert "temporary rule t-" in out.stdout and "refuse new calls" in out.stdout
    assert third.result(30).content[0].text.startswith("Rejected by alice: stop")
    listed = json.loads(console_cli(b, alice_token, "rules", "--json").stdout)
    assert len(listed) == 1 and listed[0]["kind"] == "block"
    rule_id = listed[0]["id"]

    # Consoles hear about rule changes; viewers cannot revoke; approvers can.
    alice.next("rules", where=lambda m: m.get("req") is None and [r["id"] for r in m["rules"]] == [rule_id])
    denied = console_cli(b, viewer, "rules", "revoke", rule_id)
    assert denied.returncode == 5 and "viewer" in denied.stderr
    missing = console_cli(b, alice_token, "rules", "revoke", "t-00000000")
    assert missing.returncode == 3, missing.stderr
    done = console_cli(b, alice_token, "rules", "revoke", rule_id)
    assert done.returncode == 0 and f"revoked {rule_id}" in done.stdout, done.stderr
    assert alice.next("rules", where=lambda m: m.get("req") is None and not m["rules"])["rules"] == []
    # Revoked: the call is held again instead of refused.
    again = sdk_call(url, agent, "echo", RISKY)
    alice.decide(alice.pending()["id"], "reject", "done")
    assert again.result(30).content[0].text.startswith("Rejected by alice: done")

    # Bad requests are refused before anything is decided.
    err = alice.request(
        {"type": "decide", "target": {"by": "ids", "ids": ["x"]}, "verdict": "reject", "block_for_ms": 1000}, "error"
    )
    assert "by fingerprint" in err["message"]
    err = alice.request(
        {"type": "decide", "target": {"by": "fingerprint", "fingerprint": "f"}, "verdict": "approve", "allow_next": {"count": 5000, "for_ms": 1000}},
        "error",
    )
    assert "between 1 and 1000" in err["message"]

    # A shape covers calls that differ in numbers: rejecting them together is allowed,
    # approving them together is not.
    c8 = sdk_call(url, agent, "echo", {"message": "retry: delete session 8"})
    c9 = sdk_call(url, agent, "echo", {"message": "retry: delete session 9"})
    first, second = alice.pending(), alice.pending()
    assert first["shape"] == second["shape"] and first["fingerprint"] != second["fingerprint"]
    shape = {"by": "fingerprint", "fingerprint": first["shape"]}
    err = alice.request({"type": "decide", "target": shape, "verdict": "approve"}, "error")
    assert "shape fingerprint" in err["message"] and "approved by exact fingerprint or by id" in err["message"]
    done = alice.request({"type": "decide", "target": shape, "verdict": "reject", "reason": "no"}, "decided")
    assert len(done["results"]) == 2 and all(r["ok"] for r in done["results"])
    assert c8.result(30).is_error is True and c9.result(30).is_error is True

    trail = b.audit("--status", "allowed", "--tool", "echo")
    pre = [e for e in trail if "pre-approved by alice" in (e.get("reason") or "")]
    assert len(pre) == 2 and all(e["approvers"] == ["alice"] for e in pre)


def test_budgets_cap_pending_calls_and_daily_cost_per_client_under_concurrency(broker):
    b = broker(
        config(
            """
    [[budget]]
    name = "reviews"
    tools = ["everything/echo"]
    max_pending = 3
    [[budget]]
    name = "spend"
    tools = ["everything/get-sum"]
    daily = 5
    costs = [{ tools = ["everything/get-sum"], weight = 2 }]
    """
        )
    )
    a = b.token("agent-a", "viewer")
    other = b.token("agent-b", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    url = b.url("everything")

    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(2)
    burst = pool.submit(fire, url, a, 10, RISKY)
    # Three are held; seven are refused at once (the burst finishes only when the three are
    # decided, so wait for the refusals through the queue's size).
    held = wait_snapshot(alice, 3)
    time.sleep(1.0)
    assert len(alice.request({"type": "snapshot"}, "snapshot")["pending"]) == 3
    # Another client has its own account.
    b_call = sdk_call(url, other, "echo", RISKY)
    alice.pending(where=lambda c: c["client"] == "agent-b")
    alice.decide([c["id"] for c in held], "reject", "enough")
    results = burst.result(60)
    refused = [r for r in results if "budget" in r.content[0].text]
    assert len(refused) == 7, [r.content[0].text for r in results]
    assert all('budget "reviews" is exhausted (at most 3 pending calls per client; 3 are pending)' in r.content[0].text for r in refused)
    # Decided calls free their places.
    again = sdk_call(url, a, "echo", RISKY)
    held_ids = {c["id"] for c in held}
    fresh = alice.pending(where=lambda c: c["client"] == "agent-a" and c["id"] not in held_ids)
    assert alice.decide(fresh["id"], "approve")[0]["ok"]
    assert again.result(30).is_error is not True
    b_pending = [c for c in alice.request({"type": "snapshot"}, "snapshot")["pending"] if c["client"] == "agent-b"]
    alice.decide([c["id"] for c in b_pending], "approve")
    assert b_call.result(30).is_error is not True

    # Daily cost: get-sum weighs 2 against 5 units, so of 4 concurrent calls exactly 2 run.
    got = sdk_burst(url, a, [("get-sum", {"a": i, "b": 1}) for i in range(4)])
    ran = [r for r in got if r.is_error is not True]
    over = [r for r in got if r.is_error is True]
    assert len(ran) == 2 and len(over) == 2, [r.content[0].text for r in got]
    assert all("daily budget of 5 units per client: 4 spent" in r.content[0].text for r in over)
    assert all("resets at 00:00 UTC" in r.content[0].text for r in over)

    limited = b.audit("--status", "rate_limited")
    assert len(limited) == 9 and all(e["client"] == "agent-a" for e in limited)
    assert sum(e["reason"].startswith('budget "reviews"') for e in limited) == 7
    assert sum(e["reason"].startswith('budget "spend"') for e in limited) == 2


def test_loops_can_hold_calls_the_policy_would_allow(broker):
    b = broker(config('[loops]\nthreshold = 4\nwindow = "5m"\naction = "approve"'))
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    url = b.url("everything")
    for i in range(3):
        assert sdk_call(url, agent, "echo", {"message": f"poll {i}"}).result(30).is_error is not True
    # The fourth call of the same shape (only the digits differ) is held for a person.
    fourth = sdk_call(url, agent, "echo", {"message": "poll 3"})
    held = alice.pending()
    assert held["signals"]["looping"] is True and held["signals"]["repeats"] == 4
    assert held["reason"].startswith("possible runaway loop: 4 calls of this shape within 5m")
    alice.decide(held["id"], "approve")
    assert fourth.result(30).content[0].text == "Echo: poll 3"
