"""The clients a task works with, built once per process (after the worker forks).

Tasks receive their clients from here instead of building them; tests build a
``Services`` of their own settings and call the stage functions with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dmd_tasks.clients.bitly import BitlyClient, Shortener
from dmd_tasks.clients.providers import build_provider
from dmd_tasks.domain.providers import SmsProvider
from dmd_tasks.infra.circuit import CircuitSettings, ProviderCircuit
from dmd_tasks.infra.deadline import Gate, Pace
from dmd_tasks.infra.failover import ProviderRoute, ProviderRouter
from dmd_tasks.infra.ratelimit import SmsThrottle
from dmd_tasks.infra.settings import Settings, get_settings
from dmd_tasks.infra.wake import Doorbell, Wake
from dmd_tasks.store.campaigns import CampaignStore, open_campaign_store
from dmd_tasks.store.demand import DemandRecords
from dmd_tasks.store.events import EventRecords
from dmd_tasks.store.lookups import SendLookups
from dmd_tasks.store.notifications import NotificationRecords
from dmd_tasks.store.sales import SaleRecords
from dmd_tasks.store.table import DemandTable


def sms_account(settings: Settings, provider: str | None = None) -> str:
    """The provider account a cap and a circuit belong to: the provider (default: the primary)
    and its sender."""
    if (provider or settings.sms_provider) == "eum":
        return f"eum:{settings.eum_origination_identity}"
    return f"sms:{settings.sms_sender_id}"


@dataclass
class Services:
    settings: Settings

    @cached_property
    def table(self) -> DemandTable:
        return DemandTable(self.settings)

    @cached_property
    def events(self) -> EventRecords:
        return EventRecords(self.table)

    @cached_property
    def demand(self) -> DemandRecords:
        return DemandRecords(self.table)

    @cached_property
    def sales(self) -> SaleRecords:
        return SaleRecords(self.table)

    @cached_property
    def notifications(self) -> NotificationRecords:
        return NotificationRecords(self.notifications_table, self.settings.pending_shards)

    @cached_property
    def notifications_table(self) -> DemandTable:
        """Notifications and phone claims: the pipeline's own table, with no stream."""
        return self.table.for_notifications()

    @cached_property
    def campaigns(self) -> CampaignStore:
        return open_campaign_store(self.settings)

    @cached_property
    def send_lookups(self) -> SendLookups:
        """The campaigns and events a send batch reads, kept 30 s (per process, rebuilt after fork)."""
        return SendLookups(self.campaigns, self.events, self.settings.shorten_allowed_hosts)

    @cached_property
    def shortener(self) -> Shortener:
        return BitlyClient.from_settings(self.settings)

    @cached_property
    def sms(self) -> SmsProvider:
        return build_provider(self.settings)

    @cached_property
    def write_pace(self) -> Pace:
        """How long a round of parallel conditional writes to the table takes in this process now
        (measured): the scheduler sizes its batches from it (``dmd_tasks.infra.deadline``)."""
        return Pace(initial=0.02)

    @cached_property
    def redis(self) -> redis.Redis:
        # One retry, at once, and only for a dropped connection (Redis restarted: the pooled socket
        # is stale). redis-py's default also retries timeouts with backoff, so one call to a frozen
        # Redis held its caller for 20 s: past a task's soft time limit, into its hard one.
        return redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )

    @cached_property
    def unconfirmed_gate(self) -> Gate:
        """When the reconciler last looked at the unconfirmed sends (it does so now and then)."""
        return Gate()

    @cached_property
    def status_doorbell(self) -> Doorbell:
        """Rung after a send batch: the status bridge reads the receipts' stream at once."""
        return Doorbell(self.redis, self.settings.sms_status_stream_name)

    @cached_property
    def wake(self) -> Wake:
        """Beat's idle gate: tasks that found no work rest; new work wakes them."""
        return Wake(self.redis)

    @cached_property
    def sms_throttle(self) -> SmsThrottle:
        """The campaign rate and the account's part cap every SMS send passes."""
        return self._throttle(self.settings.sms_provider, self.settings.sms_account_parts_per_second)

    def _throttle(self, provider: str, cap: float) -> SmsThrottle:
        return SmsThrottle(
            self.redis, sms_account(self.settings, provider), cap, headroom=self.settings.sms_account_headroom
        )

    @cached_property
    def sms_circuit(self) -> ProviderCircuit:
        """The provider's circuit, shared by every send worker (a 429 or an outage pauses them all)."""
        return self._circuit(self.settings.sms_provider)

    @cached_property
    def sms_router(self) -> ProviderRouter:
        """The providers a send can go through (one, or two with failover: dmd_tasks.infra.failover)."""
        s = self.settings
        routes = [
            ProviderRoute(
                self.sms,
                self.sms_throttle,
                self.sms_circuit,
                s.sms_account_parts_per_second,
                1.0 - s.sms_failover_weight if s.sms_failover_provider else 1.0,
            )
        ]
        if s.sms_failover_provider:
            cap = s.sms_failover_parts_per_second or s.sms_account_parts_per_second
            routes.append(
                ProviderRoute(
                    build_provider(s, s.sms_failover_provider),
                    self._throttle(s.sms_failover_provider, cap),
                    self._circuit(s.sms_failover_provider),
                    cap,
                    s.sms_failover_weight,
                )
            )
        return ProviderRouter(routes, min_calls=s.circuit_min_calls, error_ratio=s.circuit_error_ratio)

    def _circuit(self, provider: str) -> ProviderCircuit:
        s = self.settings
        return ProviderCircuit(
            self.redis,
            sms_account(s, provider),
            CircuitSettings(
                window_seconds=s.circuit_window_seconds,
                bucket_seconds=max(1.0, s.circuit_window_seconds / 6),
                min_calls=s.circuit_min_calls,
                error_ratio=s.circuit_error_ratio,
                open_seconds=s.circuit_open_seconds,
                streak_failures=s.circuit_streak_failures,
                probe_timeout_seconds=s.sms_timeout_seconds + 5,
            ),
        )


_current: tuple[int, Services] | None = None


def get_services() -> Services:
    """This process's services (a forked child builds its own: clients must not cross a fork)."""
    global _current
    if _current is None or _current[0] != os.getpid():
        _current = (os.getpid(), Services(get_settings()))
    return _current[1]
