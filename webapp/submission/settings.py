"""The listener's settings, typed once from the app's configuration (config.py: SUBMISSION_*)."""
import socket
from dataclasses import dataclass

from limits import RateLimitItem, parse


@dataclass(frozen=True)
class RelaySettings:
    host: str
    starttls_port: int
    tls_port: int
    cert_file: str | None
    key_file: str | None
    hostname: str
    max_message_bytes: int
    max_recipients: int
    auth_failures: RateLimitItem
    auth_failure_delay: float
    proxy_protocol: bool
    idle_timeout: float

    @classmethod
    def from_config(cls, config) -> "RelaySettings":
        if bool(config["SUBMISSION_TLS_CERT"]) != bool(config["SUBMISSION_TLS_KEY"]):
            raise ValueError("SUBMISSION_TLS_CERT and SUBMISSION_TLS_KEY go together: set both, or neither "
                             "(then the listener uses a self-signed certificate in the instance folder)")
        return cls(
            host=str(config["SUBMISSION_HOST"]),
            starttls_port=int(config["SUBMISSION_STARTTLS_PORT"]),
            tls_port=int(config["SUBMISSION_TLS_PORT"]),
            cert_file=config["SUBMISSION_TLS_CERT"] or None,
            key_file=config["SUBMISSION_TLS_KEY"] or None,
            hostname=config["SUBMISSION_HOSTNAME"] or socket.getfqdn(),
            max_message_bytes=int(config["SUBMISSION_MAX_MESSAGE_BYTES"]),
            max_recipients=int(config["SUBMISSION_MAX_RECIPIENTS"]),
            auth_failures=parse(str(config["SUBMISSION_AUTH_FAILURES_PER_ADDRESS"])),
            auth_failure_delay=float(config["SUBMISSION_AUTH_FAILURE_DELAY"]),
            proxy_protocol=bool(config["SUBMISSION_PROXY_PROTOCOL"]),
            idle_timeout=float(config["SUBMISSION_IDLE_TIMEOUT"]),
        )
