"""Several brokers sharing one PostgreSQL store: one queue, one audit chain, the first decision
wins across brokers, and a decision reaches the client wherever it waits.

Every test takes its own database in the session's throwaway cluster (see `postgres` in
conftest), real brokers, the official Python SDK as the agent and real console WebSockets.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import threading
import time

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from conftest import BROKER_BIN, EVERYTHING, sdk_burst, sdk_call, sdk_client

RETRY = '[policy]\ndefault = "allow"\n[[rule]]\nname = "echo"\ntools = ["ev/echo"]\naction = "approve"\nhold = "retry"\n'
SERVER = f'[[server]]\nname = "ev"\ncommand = ["node", "{EVERYTHING}"]\n'


def config(node: str, extra: str = "", policy: str = '[policy]\ndefault = "approve"\n', store: str = "") -> str:
    return f'[broker]\n{extra}[store]\nkind = "postgres"\nurl = "${{TOLLGATE_PG_URL}}"\nnode = "{node}"\n{store}{SERVER}{policy}'


def cli(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOLLGATE_PG_URL": url}
    return subprocess.run([str(BROKER_BIN), *args], capture_output=True, text=True, timeout=timeout, env=env)


def migrate(url: str, tmp_path, store: str = "") -> None:
    path = tmp_path / "migrate.toml"
    path.write_text(config("migrate", store=store))
    out = cli(url, "migrate", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "migrated from version 0" in out.stdout, out.stdout


class Cluster:
    """Brokers sharing one database, with the same identities."""

    def __init__(self, broker, postgres, tmp_path, nodes=("a", "b"), extra: str = "", policy=None, store: str = "", url_tail: str = ""):
        self.url = postgres.database() + url_tail
        migrate(self.url, tmp_path, store)
        self.env = {"TOLLGATE_PG_URL": self.url}
        self.start_broker = broker
        self.extra, self.policy, self.store = extra, policy, store
        self.brokers = {}
        # The identities live in the database, for every broker.
        self.config_path = tmp_path / "migrate.toml"
        self.tokens = {name: self.token(name, role) for name, role in (("agent", "viewer"), ("alice", "approver"), ("bob", "approver"))}
        for n in nodes:
            self.start(n)

    def token(self, name: str, role: str) -> str:
        out = cli(self.url, "token", "add", "--config", str(self.config_path), "--name", name, "--role", role)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def start(self, node: str):
        kw = {} if self.policy is None else {"policy": self.policy}
        b = self.start_broker(config(node, self.extra, store=self.store, **kw), name=node, env=self.env)
        self.brokers[node] = b
        return b

    def __getitem__(self, node: str):
        return self.brokers[node]

    def audit(self, *args: str) -> list[dict]:
        out = cli(self.url, "audit", "--config", str(self["a"].config_path), "--json", "--limit", "100000", *args)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def verify(self) -> str:
        out = cli(self.url, "audit", "verify", "--config", str(self["a"].config_path))
        assert out.returncode == 0, out.stderr
        return out.stdout


def test_a_call_held_on_one_broker_is_approved_on_another_and_answered_where_it_waits(broker, postgres, tmp_path):
    c = Cluster(broker, postgres, tmp_path)
    on_a = c["a"].connect(c.tokens["alice"])
    on_b = c["b"].connect(c.tokens["bob"])
    result = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "held on a"})
    call = on_b.pending(timeout=20)
    assert call == on_a.pending(timeout=20)
    assert call["arguments"] == {"message": "held on a"}

    [r] = on_b.decide(call["id"], "approve")
    assert r["ok"], r
    got = result.result(timeout=30)
    assert not got.is_error, got
    assert got.content[0].text == "Echo: held on a"
    # The console on A saw B's approver decide it.
    decided = on_a.next("call_decided", where=lambda m: m["call"]["id"] == call["id"])
    assert decided["call"]["outcome"] == "approved"
    assert decided["call"]["decisions"][-1]["by"] == "bob"
    # A late decision on A is told who won.
    [late] = on_a.decide(call["id"], "reject")
    assert not late["ok"] and "bob" in late["message"], late

    statuses = [e["outcome"] for e in c.audit("--call", call["id"])]
    assert statuses == ["pending", "approved"], statuses
    assert "audit chain OK" in c.verify()


def test_two_consoles_on_two_brokers_racing_for_one_call_have_exactly_one_winner(broker, postgres, tmp_path):
    rounds = int(os.environ.get("TOLLGATE_HA_ROUNDS", "200"))
    c = Cluster(broker, postgres, tmp_path)
    alice = c["a"].connect(c.tokens["alice"])
    bob = c["b"].connect(c.tokens["bob"])
    answers: list = []
    done = threading.Event()

    async def agent():
        async with sdk_client(c["a"].url("ev"), c.tokens["agent"]) as s:
            for i in range(rounds):
                answers.append(await s.call_tool("echo", {"message": f"round {i}"}))
        done.set()

    pool = concurrent.futures.ThreadPoolExecutor(3)
    agent_done = pool.submit(anyio.run, agent)
    wins = {"alice": 0, "bob": 0}
    for i in range(rounds):
        call = alice.pending(timeout=30, where=lambda c, i=i: c["arguments"] == {"message": f"round {i}"})
        bob.pending(timeout=30, where=lambda c: c["id"] == call["id"])
        go = threading.Barrier(2)

        def decide(console, verdict):
            go.wait()
            return console.decide(call["id"], verdict, "no" if verdict == "reject" else None)[0]

        a, b = pool.submit(decide, alice, "approve"), pool.submit(decide, bob, "reject")
        a, b = a.result(timeout=30), b.result(timeout=30)
        assert a["ok"] != b["ok"], f"round {i}: {a} {b}"
        winner, loser = ("alice", b) if a["ok"] else ("bob", a)
        wins[winner] += 1
        assert winner in loser["message"], f"round {i}: the loser is told who won: {loser}"
        deadline = time.monotonic() + 30
        while len(answers) <= i and time.monotonic() < deadline:
            time.sleep(0.01)
        answer = answers[i]
        assert answer.is_error == (winner == "bob"), f"round {i}: {winner} won but the client got {answer}"
        if winner == "bob":
            assert "Rejected by bob" in answer.content[0].text
    agent_done.result(timeout=60)
    assert len(answers) == rounds, "one answer per call"
    entries = c.audit("--status", "approved") + c.audit("--status", "rejected")
    assert len(entries) == rounds, f"one decision per call in the audit trail: {len(entries)}"
    assert "audit chain OK" in c.verify()
    print(f"wins over {rounds} rounds: {wins}")


def test_a_runaway_held_on_two_brokers_is_rejected_by_fingerprint_from_a_third(broker, postgres, tmp_path):
    n = int(os.environ.get("TOLLGATE_HA_RUNAWAY", "250"))
    c = Cluster(broker, postgres, tmp_path, nodes=("a", "b", "c"))
    bob = c["b"].connect(c.tokens["bob"])
    calls = [("echo", {"message": "loop"})] * n
    pool = concurrent.futures.ThreadPoolExecutor(2)
    on_a = pool.submit(sdk_burst, c["a"].url("ev"), c.tokens["agent"], calls)
    on_c = pool.submit(sdk_burst, c["c"].url("ev"), c.tokens["agent"], calls)
    first = bob.pending(timeout=30)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listed = bob.request({"type": "snapshot"}, "snapshot")["pending"]
        if len(listed) == 2 * n:
            break
        time.sleep(0.5)
    assert len(listed) == 2 * n, f"B lists the calls held on A and C: {len(listed)}"
    msg = {
        "type": "decide",
        "target": {"by": "fingerprint", "fingerprint": first["fingerprint"]},
        "verdict": "reject",
        "reason": "runaway loop",
    }
    results = bob.request(msg, "decided", timeout=120)["results"]
    assert len(results) == 2 * n and all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    for burst in (on_a, on_c):
        got = burst.result(timeout=120)
        assert len(got) == n
        assert all(r.is_error and "runaway loop" in r.content[0].text for r in got)
    assert len(c.audit("--status", "rejected")) == 2 * n
    assert "audit chain OK" in c.verify()


def test_a_killed_brokers_held_calls_stay_in_the_shared_queue_and_are_taken_back(broker, postgres, tmp_path):
    c = Cluster(broker, postgres, tmp_path, policy=RETRY)
    bob = c["b"].connect(c.tokens["bob"])
    first = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "retry me"}).result(timeout=30)
    assert first.is_error and "approval" in first.content[0].text, first
    call = bob.pending(timeout=20)
    c["a"].proc.popen.send_signal(signal.SIGKILL)
    c["a"].proc.popen.wait(timeout=10)
    # A is gone; its call is still in the shared queue, listed and decided on B.
    listed = bob.request({"type": "snapshot"}, "snapshot")["pending"]
    assert [x["id"] for x in listed] == [call["id"]]
    [r] = bob.decide(call["id"], "approve")
    assert r["ok"], r
    # A comes back as the same node and lets the approved repeat through, once.
    a2 = c.start_broker(config("a", policy=RETRY), name="a2", env=c.env, data_name="a")
    again = sdk_call(a2.url("ev"), c.tokens["agent"], "echo", {"message": "retry me"}).result(timeout=30)
    assert not again.is_error and again.content[0].text == "Echo: retry me", again
    assert "audit chain OK" in c.verify()


def test_brokers_refuse_clearly_while_postgres_is_down_and_resume_by_themselves(broker, tmp_path):
    from conftest import PgCluster

    pg = PgCluster()
    pg.start()
    try:
        c = Cluster(broker, pg, tmp_path)
        bob = c["b"].connect(c.tokens["bob"])
        held = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "before"})
        call = bob.pending(timeout=20)
        pg.stop("fast")
        refused = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "while down"}).result(timeout=60)
        assert refused.is_error and "PostgreSQL" in refused.content[0].text, refused
        [r] = bob.decide(call["id"], "approve")
        assert not r["ok"] and "could not be saved" in r["message"], r
        pg.start()
        # Everything resumes by itself: the held call is still held, and decided now.
        deadline = time.monotonic() + 30
        while True:
            [r] = bob.decide(call["id"], "approve")
            if r["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r["ok"], r
        got = held.result(timeout=30)
        assert not got.is_error and got.content[0].text == "Echo: before", got
        after = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "after"})
        call2 = bob.pending(timeout=30, where=lambda x: x["arguments"] == {"message": "after"})
        [r] = bob.decide(call2["id"], "approve")
        assert r["ok"], r
        assert after.result(timeout=30).content[0].text == "Echo: after"
        assert "audit chain OK" in c.verify()
    finally:
        pg.remove()


def test_postgres_crashing_under_load_loses_no_accepted_hold_or_decision(broker, tmp_path):
    """Four agents on two brokers make allowed and held calls without pause while an approver
    on B approves whatever is held; PostgreSQL is killed (`-m immediate`, crash recovery on
    restart) in the middle. Every call ends answered or clearly refused; no call runs that no
    console saw held; every hold a console saw ends approved (and its client answered) or, if
    its client was told it was not queued, closed; the audit verifies."""
    from conftest import PgCluster

    pg = PgCluster()
    pg.start()
    stop = threading.Event()
    try:
        policy = '[policy]\ndefault = "allow"\n[[rule]]\nname = "echo"\ntools = ["ev/echo"]\naction = "approve"\n'
        c = Cluster(broker, pg, tmp_path, policy=policy)
        approver = c["b"].connect(c.tokens["bob"])
        seen: dict[str, str] = {}  # call id -> its message
        agents: list = []

        def approve_all():
            # Until every agent has its last answer: a call held just before they stop waits too.
            while not all(f.done() for f in agents):
                try:
                    call = approver.pending(timeout=0.5)
                except TimeoutError:
                    continue
                seen[call["id"]] = call["arguments"]["message"]
                while True:
                    [r] = approver.decide(call["id"], "approve")
                    if r["ok"] or "could not be saved" not in r["message"]:
                        break
                    # Refused while the database is down, saying so: try again.
                    time.sleep(0.2)

        def agent(node: str, n: int) -> list:
            out = []

            async def run():
                async with sdk_client(c[node].url("ev"), c.tokens["agent"]) as s:
                    i = 0
                    while not stop.is_set():
                        i += 1
                        tool, args = ("get-sum", {"a": n, "b": i}) if i % 2 else ("echo", {"message": f"{node}{n}-{i}"})
                        try:
                            r = await s.call_tool(tool, args)
                            out.append((tool, args, r.is_error, r.content[0].text))
                        except MCPError as e:
                            # An approved call whose claim could not be written is not sent,
                            # and its client is told so with a JSON-RPC error.
                            out.append((tool, args, True, str(e)))

            anyio.run(run)
            return out

        pool = concurrent.futures.ThreadPoolExecutor(5)
        agents.extend(pool.submit(agent, node, n) for node, n in (("a", 1), ("a", 2), ("b", 3), ("b", 4)))
        approving = pool.submit(approve_all)
        time.sleep(3)
        pg.stop("immediate")
        time.sleep(2)
        pg.start()
        time.sleep(4)
        stop.set()
        results = [r for f in agents for r in f.result(timeout=120)]
        approving.result(timeout=120)

        answered: dict[str, str] = {}  # echo message -> what its client was told
        sums = refused = 0
        for tool, args, is_error, text in results:
            if is_error:
                # Clear: it names the store, and says the call was not run or not sent.
                assert "PostgreSQL" in text, (tool, args, text)
                refused += 1
            elif tool == "get-sum":
                assert text == f"The sum of {args['a']} and {args['b']} is {args['a'] + args['b']}.", text
                sums += 1
            else:
                assert text == f"Echo: {args['message']}", text
            if tool == "echo":
                answered[args["message"]] = "ok" if not is_error else "not queued" if "could not queue it" in text else "not sent" if "not forwarded" in text else text
        assert refused, "some calls came while PostgreSQL was down"
        ran = {m for m, a in answered.items() if a == "ok"}
        assert ran and sums, (len(ran), sums)
        # No held call ran that no console saw.
        assert ran <= set(seen.values()), ran - set(seen.values())

        outcomes: dict[str, list[str]] = {}
        for e in c.audit():
            outcomes.setdefault(e["call_id"], []).append(e["outcome"])
        for call, message in seen.items():
            told = answered[message]
            if told in ("ok", "not sent"):
                assert outcomes.get(call) == ["pending", "approved"], (call, told, outcomes.get(call))
            else:
                # Held after all (its commit's answer was lost with the connection), then closed
                # by the refusal its client was given, before or after bob approved it.
                assert told == "not queued" and outcomes[call][0] == "pending" and outcomes[call][-1] == "blocked", (call, told, outcomes.get(call))
        allowed = sum(1 for v in outcomes.values() if v == ["allowed"])
        assert allowed >= sums, (allowed, sums)
        assert "audit chain OK" in c.verify()
    finally:
        stop.set()
        pg.remove()


def test_a_task_held_on_a_killed_broker_and_approved_on_another_is_answered_when_it_returns(broker, postgres, tmp_path):
    from conftest import py_stdio_command, toml_list
    from test_tasks import DISPOSITION, poll_until_done, rpc

    policy = f'[policy]\ndefault = "approve"\n[[server]]\nname = "py"\ncommand = {toml_list(py_stdio_command())}\n'
    c = Cluster(broker, postgres, tmp_path, policy=policy)
    bob = c["b"].connect(c.tokens["bob"])
    agent = c.tokens["agent"]
    created = rpc(c["a"].url("py"), agent, 10, "tools/call", {"name": "echo", "arguments": {"message": "approved while a was down"}}, "echo")["result"]
    assert created["status"] == "working", created
    task_id = created["taskId"]
    assert bob.pending(timeout=20)["id"] == task_id
    c["a"].proc.popen.send_signal(signal.SIGKILL)
    c["a"].proc.popen.wait(timeout=10)
    [r] = bob.decide(task_id, "approve")
    assert r["ok"], r
    # A comes back, forwards what was approved meanwhile (only A holds that client), once.
    a2 = c.start_broker(config("a", policy=policy), name="a2", env=c.env, data_name="a")
    done = poll_until_done(a2.url("py"), agent, 100, task_id)
    assert done["status"] == "completed", done
    assert done["result"]["content"][0]["text"].endswith("approved while a was down"), done
    assert done["result"]["_meta"][DISPOSITION] == "approved-executed"
    assert [e["outcome"] for e in c.audit("--call", task_id)] == ["pending", "approved"]
    assert "audit chain OK" in c.verify()


def test_brokers_reach_postgres_over_tls_and_check_its_certificate(broker, tmp_path):
    from certs import issue, make_ca
    from conftest import PgCluster

    ca = make_ca(tmp_path)
    pg = PgCluster()
    pg.start(tls=issue(ca, pg.root, "pg-server", dns=("localhost",), ips=("127.0.0.1",)))
    try:
        # A server whose certificate nobody vouched for is refused, and the error says so.
        url = pg.database() + "?sslmode=require"
        bare = tmp_path / "no-ca.toml"
        bare.write_text(config("x"))
        out = cli(url, "migrate", "--config", str(bare))
        assert out.returncode != 0 and "certificate" in out.stderr.lower(), out.stderr

        c = Cluster(broker, pg, tmp_path, store=f'ca = "{ca.cert}"\n', url_tail="?sslmode=require")
        bob = c["b"].connect(c.tokens["bob"])
        result = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "over tls"})
        call = bob.pending(timeout=20)
        assert bob.decide(call["id"], "approve")[0]["ok"]
        assert result.result(timeout=30).content[0].text == "Echo: over tls"
        db = c.url.rsplit("/", 1)[1].split("?")[0]
        used = pg.sql(db, "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'tollgate-broker%'")
        count, all_tls = used.split("|")
        assert int(count) >= 4 and all_tls == "t", used
    finally:
        pg.remove()


def test_identities_are_shared_added_and_revoked_for_every_broker_at_once(broker, postgres, tmp_path):
    c = Cluster(broker, postgres, tmp_path)
    carol = c.token("carol", "approver")
    # Added after both brokers started: each reads the identities again within a second.
    deadline = time.monotonic() + 10
    while True:
        try:
            on_b = c["b"].connect(carol)
            break
        except Exception:
            assert time.monotonic() < deadline, "carol's token never worked on b"
            time.sleep(0.2)
    on_a = c["a"].connect(carol)
    listed = cli(c.url, "token", "list", "--config", str(c.config_path), "--json")
    assert {json.loads(line)["name"] for line in listed.stdout.splitlines()} == {"agent", "alice", "bob", "carol"}
    out = cli(c.url, "token", "revoke", "--config", str(c.config_path), "carol")
    assert out.returncode == 0, out.stderr
    # Both consoles are closed: the revocation reached both brokers.
    for console in (on_a, on_b):
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                console.recv(timeout=1)
            except TimeoutError:
                continue
            except Exception:
                closed = True
        assert closed, "a revoked identity's console stays open"


def test_a_survivor_adopts_a_dead_brokers_calls_and_answers_their_clients(broker, postgres, tmp_path):
    """kill -9 of A with a stream and a task held; B adopts them after node_timeout: the task is
    polled and completed on B, the stream client resumes on B with Last-Event-ID."""
    from conftest import INIT, Stream, post, py_stdio_command, toml_list
    from test_tasks import DISPOSITION, rpc

    policy = f'[policy]\ndefault = "approve"\n[[server]]\nname = "py"\ncommand = {toml_list(py_stdio_command())}\n'
    c = Cluster(broker, postgres, tmp_path, policy=policy, extra='keepalive = "300ms"\nresume_grace = "60s"\n', store='node_timeout = "2s"\n')
    bob = c["b"].connect(c.tokens["bob"])
    agent = c.tokens["agent"]
    auth = {"authorization": f"Bearer {agent}"}

    task_id = rpc(c["a"].url("py"), agent, 10, "tools/call", {"name": "echo", "arguments": {"message": "task of a"}}, "echo")["result"]["taskId"]
    init = post(c["a"].url("ev"), INIT, auth)
    sess = {**auth, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25", "accept": "application/json, text/event-stream"}
    post(c["a"].url("ev"), {"jsonrpc": "2.0", "method": "notifications/initialized"}, sess)
    held = Stream("POST", c["a"].url("ev"), sess, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "stream of a"}}})
    pending = {bob.pending(timeout=20)["id"], bob.pending(timeout=20)["id"]}
    assert task_id in pending
    [stream_id] = pending - {task_id}
    assert held.first.wait(10)
    last_id = held.events[0][0]
    assert last_id.startswith(f"tg-{stream_id}-"), last_id

    c["a"].proc.popen.send_signal(signal.SIGKILL)
    c["a"].proc.popen.wait(timeout=10)
    held.done.wait(10)
    # Within a few node_timeouts B adopts both: the task is B's to answer now.
    deadline = time.monotonic() + 30
    while True:
        try:
            polled = rpc(c["b"].url("py"), agent, 50, "tasks/get", {"taskId": task_id})
        except AssertionError as e:  # not B's task yet: refused
            polled = {"refused": str(e)}
        if "result" in polled:
            break
        assert time.monotonic() < deadline, f"B never adopted the task: {polled}"
        time.sleep(0.5)
    assert polled["result"]["status"] == "working", polled
    resumed = Stream("GET", c["b"].url("ev"), {**sess, "last-event-id": last_id})
    # Still listed once on B's console, and decided there.
    listed = [x["id"] for x in bob.request({"type": "snapshot"}, "snapshot")["pending"]]
    assert sorted(listed) == sorted(pending), listed
    for call_id in pending:
        [r] = bob.decide(call_id, "approve")
        assert r["ok"], r
    assert resumed.done.wait(30)
    [result] = resumed.results()
    assert result["result"]["content"][0]["text"] == "Echo: stream of a", result
    for n in range(200):
        done = rpc(c["b"].url("py"), agent, 100 + n, "tasks/get", {"taskId": task_id})["result"]
        if done["status"] != "working":
            break
        time.sleep(0.05)
    assert done["status"] == "completed" and done["result"]["content"][0]["text"].endswith("task of a"), done
    assert done["result"]["_meta"][DISPOSITION] == "approved-executed"
    for call_id in pending:
        assert [e["outcome"] for e in c.audit("--call", call_id)] == ["pending", "approved"]
    assert "audit chain OK" in c.verify()


def test_an_approved_retry_runs_once_on_whichever_broker_the_client_repeats_it(broker, postgres, tmp_path):
    c = Cluster(broker, postgres, tmp_path, policy=RETRY)
    bob = c["b"].connect(c.tokens["bob"])
    on_a = c["a"].connect(c.tokens["alice"])
    first = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "again"}).result(timeout=30)
    assert first.is_error and "approval" in first.content[0].text, first
    call = bob.pending(timeout=20)
    assert bob.decide(call["id"], "approve")[0]["ok"]
    # A heard of the approval too, so both brokers hold the grant.
    on_a.next("call_decided", where=lambda m: m["call"]["id"] == call["id"])
    # Repeated on B (the load balancer sent it there): it runs, once.
    ran = sdk_call(c["b"].url("ev"), c.tokens["agent"], "echo", {"message": "again"}).result(timeout=30)
    assert not ran.is_error and ran.content[0].text == "Echo: again", ran
    # Repeated once more, on A: the grant is used, so this is a new call, held.
    again = sdk_call(c["a"].url("ev"), c.tokens["agent"], "echo", {"message": "again"}).result(timeout=30)
    assert again.is_error and "approval" in again.content[0].text, again
    assert bob.pending(timeout=20)["id"] != call["id"]


def test_temporary_rules_made_on_one_broker_hold_on_every_broker_and_an_allowance_is_used_once(broker, postgres, tmp_path):
    c = Cluster(broker, postgres, tmp_path)
    on_a = c["a"].connect(c.tokens["alice"])
    on_b = c["b"].connect(c.tokens["bob"])
    agent = c.tokens["agent"]
    seen: set[str] = set()

    def rules_become(console, ids):
        """What a broker's console lists as rules reaches `ids` (each broker keeps a copy)."""
        deadline = time.monotonic() + 20
        while True:
            got = sorted(r["id"] for r in console.request({"type": "list_rules"}, "rules")["rules"])
            if got == sorted(ids):
                return
            assert time.monotonic() < deadline, (got, ids)
            time.sleep(0.05)

    def new_pending(console, message):
        call = console.pending(timeout=30, where=lambda call: call["arguments"] == {"message": message} and call["id"] not in seen)
        seen.add(call["id"])
        return call

    # A pattern rejected and blocked from B's console, for a call held on A...
    first = sdk_call(c["a"].url("ev"), agent, "echo", {"message": "loop"})
    held = new_pending(on_b, "loop")
    answer = on_b.request(
        {"type": "decide", "target": {"by": "fingerprint", "fingerprint": held["fingerprint"]}, "verdict": "reject", "reason": "runaway", "block_for_ms": 600_000},
        "decided",
        timeout=30,
    )
    block = answer["rule"]
    assert block["kind"] == "block" and block["by"] == "bob", answer
    assert first.result(timeout=30).is_error
    # ...is refused at once on A.
    rules_become(on_a, [block["id"]])
    refused = sdk_call(c["a"].url("ev"), agent, "echo", {"message": "loop"}).result(timeout=30)
    assert refused.is_error and block["id"] in refused.content[0].text, refused

    # An allowance of 3 made on A. Six identical calls at once, three on each broker: the
    # brokers together let exactly three through; the other three wait for a person.
    lead = sdk_call(c["a"].url("ev"), agent, "echo", {"message": "fine"})
    held = new_pending(on_a, "fine")
    answer = on_a.request(
        {"type": "decide", "target": {"by": "fingerprint", "fingerprint": held["fingerprint"]}, "verdict": "approve", "allow_next": {"count": 3, "for_ms": 600_000}},
        "decided",
        timeout=30,
    )
    allow = answer["rule"]
    assert allow["kind"] == "allow" and allow["remaining"] == 3, answer
    assert lead.result(timeout=30).content[0].text == "Echo: fine"
    rules_become(on_b, [block["id"], allow["id"]])
    calls = [sdk_call(c[n].url("ev"), agent, "echo", {"message": "fine"}) for n in ("a", "b", "a", "b", "a", "b")]
    waiting = [new_pending(on_b, "fine") for _ in range(3)]
    deadline = time.monotonic() + 30
    while sum(f.done() for f in calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    through = [f.result() for f in calls if f.done()]
    assert len(through) == 3 and all(not r.is_error and r.content[0].text == "Echo: fine" for r in through), through
    # Used up: gone from both brokers' rules.
    rules_become(on_a, [block["id"]])
    rules_become(on_b, [block["id"]])
    results = on_b.decide([w["id"] for w in waiting], "reject", "enough")
    assert all(r["ok"] for r in results), results
    answers = [f.result(timeout=30) for f in calls]
    assert sum(r.is_error for r in answers) == 3, answers

    # Revoked on A: gone on B too, where the pattern is held again rather than refused.
    gone = on_a.request({"type": "revoke_rule", "id": block["id"]}, "rules")
    assert gone["rules"] == [], gone
    rules_become(on_b, [])
    again = sdk_call(c["b"].url("ev"), agent, "echo", {"message": "loop"})
    held = new_pending(on_a, "loop")
    assert not again.done()
    assert on_a.decide(held["id"], "reject", "done")[0]["ok"]
    assert again.result(timeout=30).is_error

    # Every call's decision is in the one audit chain, and it verifies.
    assert "audit chain OK" in c.verify()


class CutOff:
    """A network namespace joined to the host by two veth pairs: over one, a broker started in
    it (`prefix`) reaches PostgreSQL at `host`; over the other, the tests reach the broker at
    `inner`. `cut` takes the host's end of the first link down: the broker's packets to
    PostgreSQL go nowhere and nothing resets its connections (a partition, as a dead switch
    makes one); `heal` brings it back up."""

    def __init__(self):
        tag = os.getpid() % 100_000
        n = os.getpid() % 200 + 20
        self.ns = f"tgcut{tag}"
        self.prefix = ["ip", "netns", "exec", self.ns]
        self.sh("ip", "netns", "add", self.ns)
        self.sh(*self.prefix, "ip", "link", "set", "lo", "up")
        self.links = []
        for kind, net in (("p", f"10.213.{n}"), ("t", f"10.214.{n}")):
            outer, inner = f"tg{kind}h{tag}", f"tg{kind}n{tag}"
            self.sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self.sh("ip", "link", "set", inner, "netns", self.ns)
            self.sh("ip", "addr", "add", f"{net}.1/24", "dev", outer)
            self.sh("ip", "link", "set", outer, "up")
            self.sh(*self.prefix, "ip", "addr", "add", f"{net}.2/24", "dev", inner)
            self.sh(*self.prefix, "ip", "link", "set", inner, "up")
            self.links.append(outer)
        self.pg_link = self.links[0]
        self.host, self.inner = f"10.213.{n}.1", f"10.214.{n}.2"

    @staticmethod
    def sh(*args: str) -> None:
        out = subprocess.run(args, capture_output=True, text=True)
        assert out.returncode == 0, (args, out.stderr)

    def cut(self) -> None:
        self.sh("ip", "link", "set", self.pg_link, "down")

    def heal(self) -> None:
        self.sh("ip", "link", "set", self.pg_link, "up")

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CAP_NET_ADMIN); CI runs as root")
def test_a_broker_cut_off_from_postgres_by_the_network_refuses_clearly_and_catches_up(broker, tmp_path):
    from conftest import PgCluster

    net = CutOff()
    pg = PgCluster()
    try:
        pg.start(also=net.host)
        c = Cluster(broker, pg, tmp_path, nodes=("b",))
        inner_url = c.url.replace("127.0.0.1", net.host)
        # The veth pair is a private network between the tests and the broker.
        a = broker(config("a", "allow_plaintext = true\n"), name="a", env={"TOLLGATE_PG_URL": inner_url}, prefix=net.prefix,
                   listen=f"{net.inner}:0", console_listen=f"{net.inner}:0")
        c.brokers["a"] = a
        agent = c.tokens["agent"]
        bob = c["b"].connect(c.tokens["bob"])
        held = sdk_call(a.url("ev"), agent, "echo", {"message": "before the cut"})
        call = bob.pending(timeout=20)

        net.cut()
        # A hold on the cut-off broker fails within seconds (TCP would retransmit for a quarter
        # of an hour), saying why, and is not run.
        started = time.monotonic()
        refused = sdk_call(a.url("ev"), agent, "echo", {"message": "while cut off"}).result(timeout=120)
        took = time.monotonic() - started
        assert refused.is_error and "PostgreSQL" in refused.content[0].text, refused
        assert took < 60, f"the refusal took {took:.0f} s"
        # B, not cut off, decides the call A holds.
        [r] = bob.decide(call["id"], "approve")
        assert r["ok"], r
        time.sleep(2)
        net.heal()
        # A catches up by itself: the approval reaches the client waiting on A, once.
        got = held.result(timeout=120)
        assert not got.is_error and got.content[0].text == "Echo: before the cut", got
        after = sdk_call(a.url("ev"), agent, "echo", {"message": "after"})
        call2 = bob.pending(timeout=60, where=lambda x: x["arguments"] == {"message": "after"})
        [r] = bob.decide(call2["id"], "approve")
        assert r["ok"], r
        assert after.result(timeout=60).content[0].text == "Echo: after"
        statuses = [e["outcome"] for e in c.audit("--call", call["id"])]
        assert statuses == ["pending", "approved"], statuses
        assert "audit chain OK" in c.verify()
    finally:
        net.remove()
        pg.remove()
