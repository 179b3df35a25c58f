"""CPU per message through ONE kept SMTP session (open_connection + send), to compare two trees.

    .venv/bin/python bench/kept_session_cpu.py OUT.md NAME=TREE [NAME=TREE ...] [--n 2000] [--rounds 3]

Starts bench/smtp_peer.py --accept (STARTTLS and AUTH required, in its own process, so its CPU is
not counted) and, for each round, runs one client process per tree, interleaved, each with
PYTHONPATH=TREE: it builds N envelopes first, sends a few to warm up, then sends N over one kept
session and reports time.process_time() and wall time per message and how many threads it started
(threading.Thread.start calls) while sending. Writes a Markdown table to OUT.md.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CLIENT = r'''
import json, sys, threading, time
import webapp
from webapp.mail.auth import PasswordAuth
from webapp.mail.config import Sender, ServerConfig
from webapp.mail.egress import Network, Policy, parse_rules
from webapp.mail.envelope import Envelope
from webapp.mail.message import build_message
from webapp.mail.smtp import Security, SmtpSettings
from webapp.mail.transport import open_connection

peer, n = json.loads(sys.argv[1]), int(sys.argv[2])
sender = Sender("mailer@example.test", "Portal Mailer")
network = Network(Policy(global_allow=tuple(parse_rules("127.0.0.0/8", "the bench's allow list"))))
settings = SmtpSettings(host="127.0.0.1", port=peer["port"], security=Security.STARTTLS, ca_cert=peer["ca_pem"])
config = ServerConfig("smtp", sender, settings, network=network, auth=PasswordAuth(peer["username"], peer["password"]),
                      timeout=30.0, label="Bench peer")
envelopes = [Envelope.of(build_message(sender, ["to@example.org"], f"Message {i}", "Body\n")) for i in range(n + 50)]
started = [0]
original = threading.Thread.start
def counting_start(self, *a, **k):
    started[0] += 1
    return original(self, *a, **k)
threading.Thread.start = counting_start
connection = open_connection(config)
try:
    for envelope in envelopes[:50]:
        connection.send(envelope)
    started[0] = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for envelope in envelopes[50:]:
        connection.send(envelope)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    threads_started, alive = started[0], threading.active_count()
finally:
    connection.close()
print(json.dumps({"tree": webapp.__file__, "cpu_ms": 1000 * cpu / n, "wall_ms": 1000 * wall / n,
                  "threads_started": threads_started, "alive_after": alive}))
'''


def main() -> None:
    args = sys.argv[1:]
    out = Path(args.pop(0))
    n = int(args[args.index("--n") + 1]) if "--n" in args else 2000
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 3
    trees = [a.split("=", 1) for a in args if "=" in a]
    python = sys.executable
    with tempfile.TemporaryDirectory() as work:
        peer_process = subprocess.Popen([python, str(HERE / "smtp_peer.py"), work, "--accept"])
        try:
            while not (Path(work) / "peer.json").exists():
                time.sleep(0.1)
            peer = (Path(work) / "peer.json").read_text()
            results = []
            for round_ in range(1, rounds + 1):
                for name, tree in trees:
                    env = dict(os.environ, PYTHONPATH=tree)
                    load = os.getloadavg()
                    answer = subprocess.run([python, "-c", CLIENT, peer, str(n)], env=env, cwd=tree,
                                            capture_output=True, text=True, check=True)
                    row = json.loads(answer.stdout.strip().splitlines()[-1])
                    assert row["tree"].startswith(tree), row["tree"]
                    results.append({"round": round_, "name": name, "load": load, **row})
                    print(results[-1], flush=True)
        finally:
            peer_process.terminate()
            peer_process.wait()
    lines = [f"N = {n} messages through one kept SMTP session (STARTTLS + AUTH, aiosmtpd --accept peer in its own "
             f"process on 127.0.0.1), {rounds} rounds, interleaved; CPU = time.process_time() of the client process.",
             "", "| round | tree | CPU ms/msg | wall ms/msg | threads started while sending | threads alive after | "
                 "load avg (1/5/15) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['round']} | {r['name']} | {r['cpu_ms']:.3f} | {r['wall_ms']:.3f} | {r['threads_started']} | "
                     f"{r['alive_after']} | {' / '.join(f'{x:.2f}' for x in r['load'])} |")
    lines.append("")
    for name, _ in trees:
        cpu = sorted(r["cpu_ms"] for r in results if r["name"] == name)
        lines.append(f"- {name}: CPU ms/msg median {cpu[len(cpu) // 2]:.3f} (min {cpu[0]:.3f}, max {cpu[-1]:.3f})")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
