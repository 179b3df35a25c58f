"""Which servers a message may go through, in which order: the portal's delivery policy.

- failover: the enabled servers in the list's order; the first is the primary, the others
  are tried when it fails temporarily (or is out of order).
- spread: every usable enabled server in turn (round robin on the message's id), so that
  messages are shared among them.

Either way a server is skipped while it is held (it refuses its credentials, or its OAuth
grant needs re-authorization: only an admin can fix that) or failing (it failed temporarily:
only the probe, not the mail, tries it until it works again). No database access here.
"""
from dataclasses import dataclass, field

from ..models import DeliveryPolicy, MailServer


@dataclass
class Route:
    primary: MailServer | None  # the first enabled server
    candidates: list[MailServer] = field(default_factory=list)  # usable, in the order to try
    failing: list[MailServer] = field(default_factory=list)  # skipped until a probe passes
    held: list[MailServer] = field(default_factory=list)  # skipped until an admin fixes them


def is_held(server: MailServer) -> bool:
    credential = server.credential
    return server.held_since is not None or bool(credential and credential.needs_reauthorization)


def held_reason(server: MailServer) -> str:
    if server.held_reason:
        return server.held_reason
    credential = server.credential
    return (credential.last_error if credential and credential.last_error else
            "its OAuth authorization needs to be renewed")


def route(policy: str, servers: list[MailServer], turn: int = 0) -> Route:
    """`servers` in the list's order; `turn` picks where spread starts (the message's id)."""
    enabled = [s for s in servers if s.enabled]
    result = Route(primary=enabled[0] if enabled else None)
    for server in enabled:
        if is_held(server):
            result.held.append(server)
        elif server.failing_since is not None:
            result.failing.append(server)
        else:
            result.candidates.append(server)
    if policy == DeliveryPolicy.SPREAD and result.candidates:
        start = turn % len(result.candidates)
        result.candidates = result.candidates[start:] + result.candidates[:start]
    return result
