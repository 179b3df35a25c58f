"""The pure parts of delivery: the retry schedule, the periodic jobs' clock, the route a
message takes under each policy, and the settings read from the configuration."""
import random
from datetime import UTC, datetime, timedelta

import pytest

from webapp.delivery.backoff import retry_delay
from webapp.delivery.queue import Every
from webapp.delivery.routing import route
from webapp.delivery.settings import DeliverySettings
from webapp.delivery.worker import server_failed
from webapp.mail.report import DeliveryError, Outcome, Report, Step
from webapp.models import Credential, DeliveryPolicy, MailServer, utcnow

POSTFIX = DeliverySettings(retry_first=300, retry_max=4000, retry_jitter=0.0)


def test_the_wait_doubles_from_the_first_to_the_longest_like_postfix():
    assert [retry_delay(n, POSTFIX) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]


def test_jitter_spreads_the_wait_within_its_bounds():
    settings = DeliverySettings(retry_first=300, retry_max=4000, retry_jitter=0.2)
    waits = [retry_delay(2, settings, rng=random.Random(seed)) for seed in range(200)]
    assert all(480 <= w <= 720 for w in waits) and len(set(waits)) > 150


def test_never_sooner_than_the_service_asked():
    assert retry_delay(1, POSTFIX, retry_after=3600) == 3600
    assert retry_delay(1, POSTFIX, retry_after=10) == 300


def test_every_is_due_once_per_period_and_not_at_the_first_look():
    every = Every(60)
    start = datetime(2026, 12, 6, 10, 0, 30)
    looks = [start + timedelta(seconds=s) for s in range(0, 181, 7)]
    due = [moment for moment in looks if every(moment)]
    assert [(d.hour, d.minute) for d in due] == [(10, 1), (10, 2), (10, 3)]


def test_every_daily_with_an_offset_fires_at_that_hour_utc():
    every = Every(86400, offset=6 * 3600)
    assert not every(datetime(2026, 12, 6, 5, 59, 59, tzinfo=UTC))
    assert every(datetime(2026, 12, 6, 6, 0, 1, tzinfo=UTC))
    assert not every(datetime(2026, 12, 6, 18, 0, 0, tzinfo=UTC))


def _server(n, **values) -> MailServer:
    server = MailServer(id=n, portal_id=1, position=n, description=f"S{n}", **values)
    server.credential = Credential(server_id=n)
    return server


def test_failover_tries_the_usable_servers_in_the_lists_order():
    servers = [_server(1), _server(2), _server(3)]
    way = route(DeliveryPolicy.FAILOVER, servers, turn=7)
    assert way.primary.id == 1 and [s.id for s in way.candidates] == [1, 2, 3]


def test_held_failing_and_disabled_servers_are_skipped():
    servers = [_server(1, failing_since=utcnow()), _server(2, held_since=utcnow()), _server(3, enabled=False),
               _server(4)]
    servers[3].credential.needs_reauthorization = False
    grant_dead = _server(5)
    grant_dead.credential.needs_reauthorization = True
    way = route(DeliveryPolicy.FAILOVER, [*servers, grant_dead])
    assert way.primary.id == 1 and [s.id for s in way.candidates] == [4]
    assert [s.id for s in way.failing] == [1] and [s.id for s in way.held] == [2, 5]


def test_spread_starts_at_a_different_server_for_each_message():
    servers = [_server(1), _server(2), _server(3)]
    firsts = [route(DeliveryPolicy.SPREAD, servers, turn=t).candidates[0].id for t in range(6)]
    assert firsts == [1, 2, 3, 1, 2, 3]
    assert [s.id for s in route(DeliveryPolicy.SPREAD, servers, turn=1).candidates] == [2, 3, 1]


def _error(step: str, code=None, retry_after=None, temporary=True, throttled=False) -> DeliveryError:
    return DeliveryError(Report(steps=[Step(step, Outcome.FAILED, "failed", code=code, retry_after=retry_after,
                                            temporary=temporary, throttled=throttled)]))


@pytest.mark.parametrize("step, code, retry_after, server_down", [
    ("Connect", None, None, True),
    ("TLS", None, None, True),
    ("Greeting", 421, None, True),
    ("Authenticate", 454, None, True),
    ("RCPT TO", 451, None, False),  # greylisting: this message, later
    ("DATA", 452, None, False),
    ("DATA", 421, None, True),  # the server is closing: it is the server
    ("sendMail", 429, 30.0, False),  # throttled: the service works, slower
    ("sendMail", 503, None, True),
])
def test_which_temporary_failures_say_the_server_is_out_of_order(step, code, retry_after, server_down):
    assert server_failed(_error(step, code, retry_after)) is server_down


@pytest.mark.parametrize("step, code", [
    ("messages.send", 403),  # Gmail's rateLimitExceeded / dailyLimitExceeded: no time in the message
    ("sendMail", 429),  # Graph's 429 without a Retry-After
    ("CreateItem", 500),  # Exchange's ErrorServerBusy without BackOffMilliseconds
])
def test_a_rate_limit_without_a_time_does_not_say_the_server_is_out_of_order(step, code):
    assert server_failed(_error(step, code, None, throttled=True)) is False
    assert server_failed(_error(step, code, None)) is True  # the same answer, not a rate limit


def test_settings_come_from_the_configuration_with_their_units():
    from webapp.config import Defaults

    config = {name: getattr(Defaults, name) for name in dir(Defaults) if name.startswith("DELIVERY_")}
    settings = DeliverySettings.from_config({**config, "DELIVERY_LIFETIME_HOURS": 0.5, "DELIVERY_KEEP_DAYS": 30})
    assert settings.lifetime == timedelta(minutes=30) and settings.keep == timedelta(days=30)
    assert settings.retry_first == 300 and settings.retry_max == 4000 and settings.notice_interval == timedelta(hours=1)
