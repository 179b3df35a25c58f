"""One connection of bench/delivery.py's Python SMTP client (goal 3), in its own process.

    python bench/smtp_client.py SPEC_JSON

SPEC: host, port, count, start_at (time.time() to begin at: every connection of a round starts
together), message (the raw MIME, latin-1), mail_from, to, and for the submission listener
starttls + cafile (its certificate, pinned: checked against itself, not by host name) + username
+ password. Connects (STARTTLS, AUTH when asked), sends `count` messages over that one
connection with smtplib, each with its own Message-ID, QUITs; prints {"started", "ended"} as JSON.
A refused message is an error (smtplib raises; exit status 1): a rate of refusals means nothing.
"""
import json
import smtplib
import ssl
import sys
import time


def main(spec: dict) -> dict:
    message = spec["message"].encode("latin-1")
    marker = b"Message-ID: <"
    head, _, rest = message.partition(marker)
    rest = rest.split(b">", 1)[1]
    delay = spec["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    started = time.time()
    with smtplib.SMTP(spec["host"], spec["port"], timeout=60) as client:
        client.ehlo("bench.example")
        if spec.get("starttls"):
            context = ssl.create_default_context(cafile=spec["cafile"])
            context.check_hostname = False  # pinned: the listener's own certificate is the only one trusted
            client.starttls(context=context)
            client.ehlo("bench.example")
            client.login(spec["username"], spec["password"])
        for number in range(spec["count"]):
            raw = head + marker + f"{spec['tag']}.{number}@bench.example".encode() + b">" + rest
            refused = client.sendmail(spec["mail_from"], [spec["to"]], raw)
            if refused:
                raise SystemExit(f"refused: {refused}")
    return {"started": started, "ended": time.time()}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
