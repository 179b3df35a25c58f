"""Every place a server's settings connect to, checked against the egress policy before a check or a
sample mail connects to any.

A check stops at the first destination the policy refuses, so settings that need two destinations
allowed (a token endpoint and the API, a proxy and the server) would be refused one Validate (or
sample mail) after another. refused_step() names them all at once when there are several, without
connecting anywhere; its "Refused destination" details are what the report's Allow button adds for
the portal.
"""
from dataclasses import replace
from urllib.parse import urlsplit

from . import proxy
from .auth import BearerAuth
from .deadline import Deadline, DeadlineExceeded
from .egress import REFUSED_ALL_HINT, EgressRefused, egress_details
from .report import Outcome, Step

STEP = "Egress policy"


def destinations(config) -> list[tuple[str, str, int]]:
    """(what, host, port) of each place a check or sample mail of `config` reaches through its network
    (its proxy apart): the server or its service endpoint, the OAuth token endpoint (the one its token
    source posts to: a service account's token_uri too), the mail receiver."""
    found = []
    settings = config.settings.destination()
    if settings.get("host"):
        found.append(("Mail server", settings["host"], settings["port"]))
    for key in ("url", "endpoint"):
        if settings.get(key):
            found.append(("Service endpoint", *_host_and_port(settings[key])))
    token_url = config.auth.tokens.endpoint() if isinstance(config.auth, BearerAuth) else ""
    if token_url:
        found.append(("Token endpoint", *_host_and_port(token_url)))
    if config.receiver is not None:
        found.append(("Mail receiver", config.receiver.settings.host.strip(), config.receiver.settings.port))
    return [(what, host, port) for what, host, port in found if host]


def _host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:  # not a port: the connection says so in its own step
        port = None
    return parts.hostname or "", port or (80 if parts.scheme == "http" else 443)


def refusals(config, deadline: Deadline) -> list[tuple[str, EgressRefused]]:
    """(what, refusal) for each destination the policy refuses, as the connection would check it: the
    proxy's own address, and every other destination through the proxy (by name only when the proxy
    resolves names). A name that does not resolve is left to the check's own step."""
    network, refused = config.network, []
    if network.proxy is not None:
        settings = network.proxy.settings
        _check(refused, "Proxy", lambda: replace(network, proxy=None).resolve(settings.host, settings.port, deadline))
    for what, host, port in destinations(config):
        _check(refused, what, lambda: proxy.targets(network, host, port, deadline))
    return refused


def _check(refused: list, what: str, resolve) -> None:
    try:
        resolve()
    except EgressRefused as refusal:
        refused.append((what, refusal))
    except (OSError, DeadlineExceeded):
        pass


def refused_step(config, deadline: Deadline) -> Step | None:
    """A failed step naming every refused destination when the policy refuses more than one; None
    otherwise (one refusal fails the step that meets it, in that step's words)."""
    has_proxy = config.network.proxy is not None
    if len(destinations(config)) + has_proxy < 2:
        return None
    refused = refusals(config, deadline)
    rules = {rule: None for _, refusal in refused for rule in egress_details(refusal)}
    if len(rules) < 2:
        return None
    details = [(what, str(refusal).removeprefix("the egress policy refuses ")) for what, refusal in refused]
    return Step(STEP, Outcome.FAILED, f"the egress policy refuses {len(rules)} destinations of these settings; "
                                      "nothing was sent to any of them", [*details, *rules], REFUSED_ALL_HINT)
