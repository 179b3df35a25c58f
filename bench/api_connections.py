"""Kept HTTPS connections of the API transports (Microsoft Graph, the Gmail API, EWS), ratios to a
connection per message measured in the same run.

    make bench-api-connections     (or: PYTHONPATH=$PWD .venv/bin/python bench/api_connections.py;
                                    about 2-4 minutes at the default size)

For each case, N messages through one kept connection (`mail.transport.open_connection(config)`, then
`.send(envelope)` N times, then `.close()`: what a delivery run does since the transports keep their
connection) against the same N through `mail.transport.send_message(config, envelope)`, a new
connection per message (the baseline: what every message cost before). The cases:

    graph        Microsoft Graph, app-only OAuth (client credentials after admin consent)
    gmail        the Gmail API, a service-account key (Google's JWT bearer grant)
    ews-basic    EWS, Basic, Exchange version "auto" (the version probed per connection)
    ews-ntlm     EWS, NTLM (the peer refuses Basic; the NTLM handshake is per connection)
    ews-sent     EWS, Basic, "Save a copy to Sent Items" (Sent Items looked up per connection)

The servers are saved through the app's own form (`POST /p/bench/servers/new`, signed in as the
portal's admin) on a throwaway instance (a temporary folder, a migrated SQLite database, the egress
policy allowing 127.0.0.0/8 as the tests' `app` fixture does), and the ServerConfig is the one the
delivery queue builds (`checks.config_for`), once per case, for both arms alike. The peers are the
tests' own (tests/peers/: graph.py, gmail.py, ews.py, oauth.py for the tokens, a fresh trustme CA
trusted through EXTRA_CA_CERTS), on 127.0.0.1, in a child process of their own: the CPU time of
this process (time.process_time) is then Mailroom's side alone. The peer process's CPU per message
is given beside it (in the JSON). In that process every peer answers with TCP_NODELAY, as
tests/peers/https.py already does for Graph and Gmail: the EWS peer (http.server) writes a
response's headers and body apart, and without it the body waits for the client's delayed ACK
(about 40 ms on Linux), a cost of the peer, not of Exchange or Mailroom. BENCH_PEER_NODELAY=0
leaves the EWS peer as the tests run it. Requests and TCP connections are counted at the peer (the
TCP connections it accepted; the distinct client address:port of its requests is in the JSON too,
and can be fewer: Linux reuses a loopback port in TIME_WAIT), token requests at the authorization
server.

Rounds are interleaved (every case, both arms, then again), the arm that goes first alternating
from round to round, after one short warm-up of each arm; the load average (os.getloadavg) is noted
at the start and end of every round. The headline per case is the median of the per-round ratios
kept ÷ per-message (messages/s; CPU per message), with min and max. Nothing is asserted on time;
the exit status is 1 only when the bench could not measure (a message refused, a peer that did not
start). Results: bench/results/api-connections-<time>.json and a markdown table on stdout (and in
BENCH_API_MARKDOWN when set).

Environment (all optional): BENCH_API_MESSAGES (200 per arm and round), BENCH_API_ROUNDS (3),
BENCH_ONLY (e.g. "graph,ews-ntlm"), BENCH_API_MARKDOWN (a file for the table), BENCH_PEER_NODELAY
(1; 0: see above), BENCH_KEEP=1 (keep the temporary folder).
"""
import io
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

MESSAGES = int(os.environ.get("BENCH_API_MESSAGES", 200))
ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", 3))
WARMUP = 5  # messages per arm, once per case, not counted
CASES = ("graph", "gmail", "ews-basic", "ews-ntlm", "ews-sent")
ONLY = [c for c in os.environ.get("BENCH_ONLY", ",".join(CASES)).split(",") if c in CASES]
MARKDOWN = os.environ.get("BENCH_API_MARKDOWN")
NODELAY = os.environ.get("BENCH_PEER_NODELAY", "1") != "0"

HOST = "127.0.0.1"
SLUG = "bench"
MAILBOX = "sender@example.test"
RECIPIENT = "jane@example.org"
TENANT = "contoso.example"
CLIENT_ID = "mailroom-bench"
CLIENT_SECRET = "bench-secret-VALUE-7"
REDIRECT_URI = "https://bench.example.com/oauth/callback"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
EWS_USER = "EXAMPLE\\mailer"
EWS_PASSWORD = "Ews-Bench-7wq"
ADMIN = "admin@example.com"


def say(text: str = "") -> None:
    print(text, flush=True)


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "rounds": [round(v, 3) for v in values]}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------- the peers, in a process of their own

def serve_peers(pipe, work: str) -> None:
    """The child process: the tests' peers on 127.0.0.1 until told to stop. Answers ("take", peer) with
    what that peer saw since the last take (requests, connections, messages) and this process's CPU."""
    sys.path.insert(0, str(ROOT))
    import logging
    import socketserver

    import trustme

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the OAuth server's access log
    if NODELAY:
        socketserver.StreamRequestHandler.disable_nagle_algorithm = True
    accepted: dict[int, int] = {}  # listening port -> TCP connections accepted (every peer is a socketserver)
    verify = socketserver.BaseServer.verify_request

    def counting(server, request, client_address):
        accepted[server.server_address[1]] = accepted.get(server.server_address[1], 0) + 1  # one accepting thread
        return verify(server, request, client_address)

    socketserver.BaseServer.verify_request = counting

    from tests.peers.ews import DEFAULT_MAILBOXES, EwsPeer
    from tests.peers.gmail import GmailPeer
    from tests.peers.graph import GraphPeer
    from tests.peers.oauth import OAuthServer, make_service_account_key
    from tests.peers.tls import server_context

    ca = trustme.CA()
    ca_file = Path(work) / "bench-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    authority = OAuthServer(ca)
    authority.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], app_roles={"Mail.Send"})
    authority.grant_admin_consent(CLIENT_ID)  # what a tenant administrator's "Accept" does
    peers = {
        "graph": GraphPeer(authority, users={MAILBOX: {"id": "5f0c8a2e-7b1d-4c3e-9a6f-2d8e1b4c7a90",
                                                       "displayName": "Sender"}}, context=server_context(ca)),
        "gmail": GmailPeer(authority, users={MAILBOX}, context=server_context(ca)),
        "ews": EwsPeer(server_context(ca), DEFAULT_MAILBOXES, {EWS_USER: EWS_PASSWORD}),
        "ews-ntlm": EwsPeer(server_context(ca), DEFAULT_MAILBOXES, {EWS_USER: EWS_PASSWORD}),
    }
    peers["ews-ntlm"].require_ntlm = True  # Basic refused: 401 with WWW-Authenticate: NTLM only
    key = make_service_account_key(authority, subjects={MAILBOX}, scopes={GMAIL_SEND})
    pipe.send({"ca_file": str(ca_file), "issuer": authority.issuer, "key": key,
               **{name: peer.url for name, peer in peers.items()}})
    try:
        while True:
            command, *args = pipe.recv()
            if command == "stop":
                break
            if command == "take":
                peer = peers[args[0]]
                port = urlsplit(peer.url).port
                requests, sent, connections = list(peer.requests), len(peer.sent), accepted.pop(port, 0)
                peer.requests.clear()
                peer.sent.clear()
                tokens = len(authority.requests)
                authority.requests.clear()
                pipe.send({"requests": len(requests), "connections": connections,
                           "client_ports": len({r.client for r in requests}),
                           "statuses": sorted({r.status for r in requests}), "messages": sent,
                           "token_requests": tokens, "cpu_s": time.process_time()})
    finally:
        for peer in peers.values():
            peer.stop()
        authority.stop()


class Peers:
    def __init__(self, work: Path):
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=serve_peers, args=(child, str(work)), name="bench-peers", daemon=True)
        self.process.start()
        if not self.pipe.poll(60):
            raise RuntimeError("the peers did not start within 60 s")
        self.info = self.pipe.recv()

    def take(self, name: str) -> dict:
        self.pipe.send(("take", name))
        if not self.pipe.poll(30):
            raise RuntimeError("the peer process did not answer")
        return self.pipe.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.pipe.send(("stop",))
            except OSError:
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


# ---------------------------------------------------------------- the app and its saved servers

def forms(info: dict) -> dict[str, tuple[str, dict]]:
    """Each case's peer and form, as tests/test_graph.py, test_gmail.py and test_ews.py fill them in."""
    common = {"timeout": "10", "from_address": MAILBOX, "sender_name": "Help Desk",
              "reply_to": "support@example.test", "max_connections": "5", "enabled": "y"}
    issuer = info["issuer"]
    ews = {**common, "protocol": "ews", "ews_version": "auto", "mailbox": MAILBOX, "auth_type": "basic",
           "username": EWS_USER, "password": EWS_PASSWORD, "confirm_password": EWS_PASSWORD, "mechanism": "auto",
           "_shown": ["ews", "basic"]}
    return {
        "graph": ("graph", {**common, "description": "Graph", "protocol": "graph", "graph_endpoint": info["graph"],
                            "auth_type": "oauth", "provider": "microsoft", "cloud": "global", "tenant": TENANT,
                            "flow": "app", "username": MAILBOX, "client_id": CLIENT_ID,
                            "client_secret": CLIENT_SECRET, "authorize_url": "",
                            "token_url": f"{issuer}/{TENANT}/oauth2/v2.0/token",
                            "scope": "https://graph.microsoft.com/.default",
                            "_shown": ["graph", "oauth", "microsoft"]}),
        "gmail": ("gmail", {**common, "description": "Gmail API", "protocol": "gmail", "gmail_endpoint": info["gmail"],
                            "auth_type": "service_account", "username": MAILBOX, "scope": GMAIL_SEND,
                            "key": (io.BytesIO(json.dumps(info["key"]).encode()), "service-account.json"),
                            "_shown": ["gmail", "service_account"]}),
        "ews-basic": ("ews", {**ews, "description": "EWS Basic", "ews_url": info["ews"]}),
        "ews-ntlm": ("ews-ntlm", {**ews, "description": "EWS NTLM", "ews_url": info["ews-ntlm"], "mechanism": "ntlm"}),
        "ews-sent": ("ews", {**ews, "description": "EWS Sent Items", "ews_url": info["ews"], "save_copy": "y"}),
    }


def make_app(work: Path, ca_file: str):
    from cryptography.fernet import Fernet

    from webapp import create_app, db
    from webapp.models import AppSetting

    url = f"sqlite:///{work / 'bench.sqlite3'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    app = create_app({"DATABASE_URL": url, "AUTO_MIGRATE": False, "SECRET_KEY": os.urandom(24).hex(),
                      "SECRET_KEYS": Fernet.generate_key().decode(), "EXTRA_CA_CERTS": ca_file},
                     instance_path=str(work / "instance"))
    with app.app_context():  # the peers listen on loopback, which the egress policy refuses by default
        db.session().add(AppSetting(name="egress", value={"allow": "127.0.0.0/8", "deny": ""}))
        db.session().commit()
    return app


def save_servers(app, info: dict) -> dict[str, int]:
    """Signs in as the portal's admin and saves each case's server through the real form."""
    from sqlmodel import select

    from tests.conftest import Client, Factory
    from webapp import db
    from webapp.models import MailServer, Role

    make = Factory(app)
    portal = make.portal(slug=SLUG, name="Bench", base_url="https://bench.example.com")
    make.member(portal, ADMIN, Role.ADMIN)
    admin = Client(app).login(ADMIN)
    ids = {}
    for case in ONLY:
        _, form = forms(info)[case]
        response = admin.post(f"/p/{SLUG}/servers/new", form)
        if response.status_code != 303:
            raise RuntimeError(f"{case}: the server form answered {response.status_code}")
        with app.app_context():
            ids[case] = db.session().exec(select(MailServer.id).where(
                MailServer.description == form["description"])).one()
    return ids


def envelopes(count: int) -> list:
    from email.message import EmailMessage

    from webapp.mail.envelope import Envelope

    out = []
    for number in range(count):
        message = EmailMessage()
        message["From"], message["To"] = f"Help Desk <{MAILBOX}>", RECIPIENT
        message["Subject"] = f"Ticket #{number} was updated"
        message.set_content(f"Hello,\n\nthe ticket #{number} was updated by the help desk.\n\nRegards\n")
        out.append(Envelope.of(message))
    return out


# ---------------------------------------------------------------- measuring

def kept(config, batch: list) -> None:
    from webapp.mail.transport import open_connection

    connection = open_connection(config)
    try:
        for envelope in batch:
            connection.send(envelope)
    finally:
        connection.close()


def per_message(config, batch: list) -> None:
    from webapp.mail.transport import send_message

    for envelope in batch:
        send_message(config, envelope)


ARMS = {"kept": kept, "per_message": per_message}


def measure(peers: Peers, peer: str, arm: str, config, batch: list) -> dict:
    before = peers.take(peer)  # clears the peer's counts
    wall, cpu = time.perf_counter(), time.process_time()
    ARMS[arm](config, batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    seen = peers.take(peer)
    count = len(batch)
    if seen["messages"] != count:
        raise RuntimeError(f"{peer}, {arm}: the peer received {seen['messages']} of {count} messages")
    return {"messages": count, "seconds": round(wall, 3), "per_s": round(count / wall, 1),
            "cpu_ms_per_message": round(1000 * cpu / count, 3),
            "peer_cpu_ms_per_message": round(1000 * (seen["cpu_s"] - before["cpu_s"]) / count, 3),
            "requests": seen["requests"], "connections": seen["connections"], "client_ports": seen["client_ports"],
            "statuses": seen["statuses"],
            "token_requests": seen["token_requests"]}


def run(peers: Peers, app, ids: dict[str, int], info: dict) -> dict:
    from webapp import checks, db
    from webapp.models import MailServer, Portal

    record = {}
    with app.app_context():
        configs = {}
        for case in ONLY:
            server = db.session().get(MailServer, ids[case])
            configs[case] = checks.config_for(db.session().get(Portal, server.portal_id), server)
        peer_of = {case: forms(info)[case][0] for case in ONLY}
        for case in ONLY:  # warm-up: imports, the token cache, first connections
            for arm in ARMS:
                measure(peers, peer_of[case], arm, configs[case], envelopes(WARMUP))
        rounds = {case: [] for case in ONLY}
        for number in range(ROUNDS):
            start_load = load()
            order = list(ARMS) if number % 2 == 0 else list(reversed(ARMS))
            for case in ONLY:
                figures = {arm: measure(peers, peer_of[case], arm, configs[case], envelopes(MESSAGES))
                           for arm in order}
                figures["order"] = order
                rounds[case].append(figures)
                say(f"  round {number + 1}, {case}: kept {figures['kept']['per_s']} msg/s "
                    f"({figures['kept']['cpu_ms_per_message']} ms CPU/msg, {figures['kept']['connections']} "
                    f"connections, {figures['kept']['requests']} requests); per message "
                    f"{figures['per_message']['per_s']} msg/s ({figures['per_message']['cpu_ms_per_message']} ms, "
                    f"{figures['per_message']['connections']} connections, {figures['per_message']['requests']} "
                    "requests)")
            end_load = load()
            for case in ONLY:
                rounds[case][-1]["load"] = {"start": start_load, "end": end_load}
            say(f"  round {number + 1}: load average {start_load} at the start, {end_load} at the end")
    for case in ONLY:
        figures = rounds[case]
        record[case] = {
            "messages": MESSAGES,
            "rate_ratio": spread([r["kept"]["per_s"] / r["per_message"]["per_s"] for r in figures]),
            "cpu_ratio": spread([r["kept"]["cpu_ms_per_message"] / r["per_message"]["cpu_ms_per_message"]
                                 for r in figures]),
            **{arm: {"per_s": spread([r[arm]["per_s"] for r in figures]),
                     "cpu_ms_per_message": spread([r[arm]["cpu_ms_per_message"] for r in figures]),
                     "peer_cpu_ms_per_message": spread([r[arm]["peer_cpu_ms_per_message"] for r in figures]),
                     "requests": [r[arm]["requests"] for r in figures],
                     "connections": [r[arm]["connections"] for r in figures],
                     "token_requests": [r[arm]["token_requests"] for r in figures]} for arm in ARMS},
            "rounds": figures,
        }
    return record


# ---------------------------------------------------------------- the report

LABELS = {"graph": "Graph, app-only OAuth", "gmail": "Gmail API, service account", "ews-basic": "EWS, Basic",
          "ews-ntlm": "EWS, NTLM", "ews-sent": "EWS, Basic + copy to Sent Items"}


def counts(values: list[int]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))


def table(record: dict) -> str:
    cases = record.get("cases", {})
    lines = [f"{MESSAGES} messages per arm, {ROUNDS} rounds (median of the per-round ratios, [min–max]); "
             "requests and connections as counted at the peer, per arm and round.", "",
             "| protocol | kept msg/s | per-message msg/s | ratio msg/s | kept CPU ms/msg | per-message CPU ms/msg "
             "| ratio CPU/msg | requests kept / per-message | connections kept / per-message | load (start → end) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case, f in cases.items():
        loads = [r["load"] for r in f["rounds"]]
        lines.append(
            f"| {LABELS[case]} | {f['kept']['per_s']['median']} | {f['per_message']['per_s']['median']} "
            f"| **{f['rate_ratio']['median']}** [{f['rate_ratio']['min']}–{f['rate_ratio']['max']}] "
            f"| {f['kept']['cpu_ms_per_message']['median']} | {f['per_message']['cpu_ms_per_message']['median']} "
            f"| **{f['cpu_ratio']['median']}** [{f['cpu_ratio']['min']}–{f['cpu_ratio']['max']}] "
            f"| {counts(f['kept']['requests'])} / {counts(f['per_message']['requests'])} "
            f"| {counts(f['kept']['connections'])} / {counts(f['per_message']['connections'])} "
            f"| {loads[0]['start'][0]} → {loads[-1]['end'][0]} |")
    lines += ["", f"Load average (1 min) at start {record['load_average']['start'][0]}, at end "
              f"{record['load_average'].get('end', ['?'])[0]}; {os.cpu_count()} cores. CPU is this process's "
              "(time.process_time), the peers run in a child process."]
    return "\n".join(lines) + "\n"


def on_term(signum, _frame):
    raise SystemExit(128 + signum)  # the finally below stops the peers and removes the folder


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_term)
    import harness
    from run import code_version

    work = Path(tempfile.mkdtemp(prefix="mailroom-api-connections-bench-"))
    record = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code": code_version(),
              "messages": MESSAGES, "rounds": ROUNDS, "cases_measured": ONLY,
              "load_average": {"start": load()}}
    status, peers = 0, None
    try:
        say(f"Starting the peers (graph, gmail, ews, ews with NTLM, oauth) on {HOST}; instance in {work}")
        peers = Peers(work)
        app = make_app(work, peers.info["ca_file"])
        ids = save_servers(app, peers.info)
        say(f"{MESSAGES} messages per arm, {ROUNDS} rounds: {', '.join(ONLY)}")
        record["cases"] = run(peers, app, ids, peers.info)
    except (RuntimeError, OSError) as error:
        record["error"] = str(error)
        say(f"error: {error}")
        status = 1
    except Exception as error:  # a DeliveryError or anything else: the bench could not measure
        record["error"] = f"{type(error).__name__}: {error}"
        say(f"error: {record['error']}")
        status = 1
    finally:
        if peers is not None:
            peers.stop()
        record["load_average"]["end"] = load()
        record["code_after"] = code_version()
        harness.leave(work, say)
    out = harness.write_record(record, "api-connections")
    if record.get("cases"):
        text = table(record)
        say()
        say(text)
        if MARKDOWN:
            Path(MARKDOWN).parent.mkdir(parents=True, exist_ok=True)
            Path(MARKDOWN).write_text(text)
    say(f"record: {out}")
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
