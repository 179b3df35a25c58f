"""The egress policy as configured: the global lists (app_setting "egress"), the portal's
lists, and the app's own database and Redis (always refused). See mail/egress.py for how a
destination is decided."""
import ipaddress
import socket
from dataclasses import replace
from functools import lru_cache
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import bindparam, select

from . import audit, db
from .audit import Actor
from .mail.egress import Network, Policy, Protected, Rule, parse_rules
from .models import AppSetting, Portal

GLOBAL = "egress"


class RulesInvalid(ValueError):
    """A list of rules cannot be read; str() names the line."""


_SETTING = select(AppSetting.value).where(AppSetting.name == bindparam("name"))


def global_rules() -> dict:
    value = db.session().execute(_SETTING, {"name": GLOBAL}).scalar()
    return {"allow": "", "deny": "", **(value or {})}


@lru_cache(maxsize=1024)
def _parsed(text: str, source: str) -> tuple[Rule, ...]:
    """Rules are immutable: a list's text is parsed once per process, not at every check."""
    return tuple(parse_rules(text, source))


def policy_for(portal: Portal | None) -> Policy:
    rules = global_rules()
    try:
        return Policy(
            portal_deny=_parsed(portal.egress_deny if portal else "", "the portal's deny list"),
            portal_allow=_parsed(portal.egress_allow if portal else "", "the portal's allow list"),
            global_deny=_parsed(rules["deny"], "the global deny list"),
            global_allow=_parsed(rules["allow"], "the global allow list"),
            protected=current_app.extensions["mailroom.protected"])
    except ValueError:  # stored rules are checked when saved; if one is broken anyway, refuse everything
        return Policy(portal_deny=tuple(parse_rules("*", "a damaged rule list (refusing everything)")),
                      portal_deny_hint="a super-admin saves the egress lists again: “Egress policy” in the top bar, "
                                       "and the portal's “Settings”")


def for_portal(portal: Portal) -> Network:
    return Network(policy_for(portal), extra_ca_pem=current_app.config.get("EXTRA_CA_PEM", ""))


def for_server(portal: Portal, server, proxy=None) -> Network:
    """The portal's network as a server's connections take it: through the server's proxy (its saved
    one, or `proxy` for unsaved values). SecretUnreadable when the keys cannot read its password."""
    from .credentials import saved_proxy

    return replace(for_portal(portal), proxy=proxy if proxy is not None else saved_proxy(server))


def check_rules(text: str, what: str) -> str:
    """The rules cleaned (stripped lines), or RulesInvalid naming the bad line."""
    try:
        parse_rules(text, what)
    except ValueError as error:
        raise RulesInvalid(str(error)) from None
    return "\n".join(line.strip() for line in (text or "").splitlines() if line.strip())


def set_global_rules(actor: Actor, allow: str, deny: str) -> None:
    before = global_rules()
    after = {"allow": check_rules(allow, "the allow list"), "deny": check_rules(deny, "the deny list")}
    setting = db.session().get(AppSetting, GLOBAL) or AppSetting(name=GLOBAL)
    setting.value = after
    db.session().add(setting)
    changes = audit.diff({"egress_allow": before["allow"], "egress_deny": before["deny"]},
                         {"egress_allow": after["allow"], "egress_deny": after["deny"]})
    if changes:
        audit.record(actor, "egress.updated", "the global egress policy", changes)
    db.session().commit()


def set_portal_rules(actor: Actor, portal: Portal, allow: str, deny: str) -> None:
    allow, deny = check_rules(allow, "the allow list"), check_rules(deny, "the deny list")
    changes = audit.diff({"egress_allow": portal.egress_allow, "egress_deny": portal.egress_deny},
                         {"egress_allow": allow, "egress_deny": deny})
    portal.egress_allow, portal.egress_deny = allow, deny
    db.session().add(portal)
    if changes:
        audit.record(actor, "egress.updated", f"the egress policy of “{portal.name}”", changes, portal.id)
    db.session().commit()


def protected_endpoints(config) -> tuple[Protected, ...]:
    """The app's own database and Redis, as addresses and ports, resolved once at start."""
    endpoints = []
    for what, url, default_port in (("the app's own database", config["DATABASE_URL"], 5432),
                                    ("the app's own Redis", config.get("REDIS_URL") or "", 6379)):
        parts = urlsplit(url.replace("+psycopg", "").replace("+asyncpg", ""))
        if not parts.hostname or parts.scheme.startswith("sqlite"):
            continue
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or default_port, 0, socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = frozenset(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos)
        endpoints.append(Protected(what, addresses, parts.port or default_port))
    return tuple(endpoints)


def decide(portal: Portal | None, host: str, port: int) -> str:
    """What the policy says of host:port, in words, without connecting (the name is resolved)."""
    from .mail.deadline import Deadline
    from .mail.egress import EgressRefused

    try:
        addresses = for_portal(portal).resolve(host, port, Deadline(5)) if portal else \
            Network(policy_for(None)).resolve(host, port, Deadline(5))
    except EgressRefused as refused:
        return f"Refused: {refused}"
    except (OSError, UnicodeError) as error:
        return f"{host} could not be resolved ({getattr(error, 'strerror', None) or error})"
    return f"Allowed: {host} port {port} ({', '.join(sockaddr[0] for _, sockaddr in addresses)})"


def init_app(app) -> None:
    app.extensions["mailroom.protected"] = protected_endpoints(app.config)
