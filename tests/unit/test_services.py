"""``Services``: the clients a stage works with, each built once from its own settings; and
``get_services``, one per process, so that no client crosses a fork."""

from __future__ import annotations

import multiprocessing
import uuid
from multiprocessing.connection import Connection

import pytest

from dmd_tasks.clients.http import UpstreamRefused
from dmd_tasks.infra.settings import load_settings
from dmd_tasks.services import Services, get_services

CLIENTS = (
    "table",
    "events",
    "demand",
    "sales",
    "notifications",
    "campaigns",
    "shortener",
    "sms",
    "redis",
    "sms_throttle",
    "sms_circuit",
)


@pytest.mark.parametrize("name", CLIENTS)
def test_each_client_is_built_once_per_services_and_not_shared_between_them(settings, name: str) -> None:
    services = Services(settings)
    assert getattr(services, name) is getattr(services, name)
    assert getattr(Services(settings), name) is not getattr(services, name)


def test_the_clients_are_built_from_the_services_own_settings(stack) -> None:
    sharded = Services(load_settings(pending_shards=3))
    assert list(sharded.notifications.shards()) == [0, 1, 2]

    # a shortener built from another token than the process's is refused by Bitly
    wrong_token = Services(load_settings(bitly_token="not-the-token"))
    with pytest.raises(UpstreamRefused) as raised:
        wrong_token.shortener.shorten(f"https://www.ticketmaster.com/e/{uuid.uuid4().hex}")
    assert raised.value.status_code == 403


def test_the_send_rate_limit_is_shared_by_every_services(settings, stack) -> None:
    # Given one process's sender took a slot of a sale's 1-a-second campaign rate
    sale = f"s{uuid.uuid4().hex[:8]}"
    Services(settings).sms_throttle.campaign(sale).acquire(1, timeout_seconds=5)
    # Then another's (another worker process) has to wait for the next second
    assert Services(settings).sms_throttle.campaign(sale).reserve(1, timeout_seconds=5) > 0.5


def test_a_process_has_one_services_built_from_its_settings(settings) -> None:
    services = get_services()
    assert get_services() is services
    assert services.settings == settings


def _child(parent: Services, answers: Connection) -> None:
    mine = get_services()
    answers.send((mine is not parent, get_services() is mine, mine.settings == parent.settings))
    answers.close()


def test_a_forked_child_builds_services_of_its_own(settings) -> None:
    parent = get_services()
    fork = multiprocessing.get_context("fork")
    receive, send = fork.Pipe(duplex=False)
    child = fork.Process(target=_child, args=(parent, send))
    child.start()
    send.close()
    try:
        assert receive.poll(30)
        own, kept, same_settings = receive.recv()
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert own, "the child reused the parent's Services (and its clients)"
    assert kept, "the child did not keep its own Services"
    assert same_settings
    assert get_services() is parent  # the parent's is untouched
