"""The clients a task works with, built once per process (after the worker forks).

Tasks receive their clients from here instead of building them; tests build a
``Services`` of their own settings and call the stage functions with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import redis

from dmd_tasks.campaigns import CampaignStore, open_campaign_store
from dmd_tasks.clients.bitly import BitlyClient, Shortener
from dmd_tasks.clients.sms import SmsClient, SmsSender
from dmd_tasks.ratelimit import SharedRateLimiter
from dmd_tasks.settings import Settings, get_settings
from dmd_tasks.store import DemandTable, NotificationRecords, SaleRecords


@dataclass
class Services:
    settings: Settings

    @cached_property
    def table(self) -> DemandTable:
        return DemandTable(self.settings)

    @cached_property
    def shortener(self) -> Shortener:
        return BitlyClient.from_settings(self.settings)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, health_check_interval=30)

    @cached_property
    def sales(self) -> SaleRecords:
        return SaleRecords(self.table)

    @cached_property
    def notifications(self) -> NotificationRecords:
        return NotificationRecords(self.table, self.settings.pending_shards)

    @cached_property
    def campaigns(self) -> CampaignStore:
        return open_campaign_store(self.settings)

    @cached_property
    def sms(self) -> SmsSender:
        return SmsClient.from_settings(self.settings)

    @cached_property
    def sms_rate_limiter(self) -> SharedRateLimiter:
        return SharedRateLimiter(self.redis, "dmd:rate:sms")


_current: tuple[int, Services] | None = None


def get_services() -> Services:
    global _current
    if _current is None or _current[0] != os.getpid():
        _current = (os.getpid(), Services(get_settings()))
    return _current[1]

