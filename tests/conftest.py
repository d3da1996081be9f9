"""Test configuration: every test session gets its own local stack.

The environment is set here, before the first test reads settings (``get_settings()`` parses
them once per process): a moto server, the simulators and every HTTP port on free ports, a
Redis database of this session's own (``tests/redis_db.py``) on the machine's Redis (or one
the launcher starts), and a run directory in a temp folder. End-to-end fixtures start real
processes from the Procfile with the same environment. Two sessions at once do not meet.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dmd_tasks.infra import aws
from dmd_tasks.ops.provision import ensure_queues
from dmd_tasks.ops.stack import free_port
from simulators.faults import Faults
from tests import redis_db
from tests.helpers import clear_circuits
from tests.queues import Queues

_RUN_DIR = Path(tempfile.mkdtemp(prefix="dmd-test-"))
if os.environ.get("DMD_TEST_REDIS_URL"):
    _REDIS_URL = os.environ["DMD_TEST_REDIS_URL"]
else:
    _BASE_REDIS = "redis://127.0.0.1:6379/0"
    _REDIS_URL, _REDIS_DB = redis_db.claim(_BASE_REDIS)
    atexit.register(redis_db.release, _BASE_REDIS, _REDIS_DB)
TEST_ENV = {
    "DMD_PROFILE": "local",
    "DMD_MOTO_PORT": str(free_port()),
    "DMD_SIMULATOR_PORT": str(free_port()),
    "DMD_API_PORT": str(free_port()),
    "DMD_FLOWER_PORT": str(free_port()),
    "DMD_METRICS_PORT": str(free_port()),
    "DMD_REDIS_URL": _REDIS_URL,
    "DMD_RUN_DIR": str(_RUN_DIR),
    "DMD_LOG_LEVEL": "INFO",
    "DMD_BRIDGE_IDLE_SLEEP_SECONDS": "0.2",
    "DMD_BRIDGE_IDLE_MAX_SLEEP_SECONDS": "0.2",
    # tests put records on the status stream themselves, with no send to ring the status bridge's
    # doorbell: it reads as often as the others (tests/e2e/test_doorbell.py sets its own)
    "DMD_BRIDGE_DOORBELL_MAX_SLEEP_SECONDS": "0.2",
    "DMD_SQS_POLLING_INTERVAL_SECONDS": "0.1",
    # a worker a test stops leaves its last long poll open on moto until it times out, and that poll
    # takes the next message of its queue out of sight for the visibility timeout: short polls here
    "DMD_SQS_WAIT_TIME_SECONDS": "1",
    "DMD_INTAKE_WAIT_SECONDS": "1",
}
TEST_ENV["DMD_AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{TEST_ENV['DMD_MOTO_PORT']}"
for _provider in ("BITLY", "SMS", "DISCOVERY", "ACCOUNTS"):
    TEST_ENV[f"DMD_{_provider}_BASE_URL"] = f"http://127.0.0.1:{TEST_ENV['DMD_SIMULATOR_PORT']}"
os.environ.update(TEST_ENV)


@pytest.fixture(scope="session")
def settings():
    from dmd_tasks.infra.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def stack(settings) -> Iterator[object]:
    """moto server, Redis and the simulators, provisioned; stopped at the end of the session."""
    import redis

    from dmd_tasks.ops.provision import provision
    from dmd_tasks.ops.stack import Stack

    local = Stack(settings)
    local.up()
    try:
        provision(settings)
        redis.Redis.from_url(settings.redis_url).flushdb()
        yield local
    finally:
        local.down()


@pytest.fixture(scope="session")
def sim(settings, stack):
    """A small client of the simulators' control API."""
    from simulators.control import SimulatorControl

    control = SimulatorControl(f"http://{settings.simulator_host}:{settings.simulator_port}")
    control.reset()
    return control


@pytest.fixture()
def queues(settings, stack) -> Iterator[Queues]:
    """SQS queues of this test's own (``tests/queues.py``), deleted afterwards."""
    mine = settings.model_copy(update={"queue_name_prefix": f"t{uuid.uuid4().hex[:10]}-"})
    created = ensure_queues(mine)
    yield Queues(mine)
    sqs = aws.client("sqs", mine)
    for entry in created.values():
        for url in entry.values():
            sqs.delete_queue(QueueUrl=url)


@pytest.fixture()
def faults(sim) -> Iterator[Callable[..., None]]:
    """``faults("sms", error_rate=1.0)``: simulator faults for this test, back to the defaults after it."""
    changed: set[str] = set()

    def configure(provider: str, **values: Any) -> None:
        changed.add(provider)
        sim.configure(**{provider: values})

    clear_circuits()  # a provider's circuit is shared (Redis): each test starts with it closed
    try:
        yield configure
    finally:
        for provider in changed:
            sim.configure(**{provider: Faults().public()})
        clear_circuits()


#: Fixtures that talk to a real service over a socket: the session's local stack, or a server the
#: test starts itself (``canned``, a proxy). A test using any of them (directly or through another
#: fixture) is in the ``stack`` tier; one using none is a ``unit`` test and runs with sockets off.
SOCKET_FIXTURES = frozenset({"stack", "canned", "proxy", "lone_redis"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test gets exactly one tier marker (``make unit`` / ``make test`` / ``make chaos`` pick by
    them): ``chaos`` and ``e2e`` by their folder, ``stack`` when it needs a socket, ``unit``
    otherwise. A unit test runs with every socket but Unix ones refused (pytest-socket), so a test
    that quietly needs moto or Redis fails loudly instead of passing only after a stack test."""
    for item in items:
        folder = item.path.relative_to(Path(__file__).parent).parts[0]
        if folder in ("chaos", "e2e"):
            tier = folder
        elif item.get_closest_marker("stack") or SOCKET_FIXTURES & set(getattr(item, "fixturenames", ())):
            tier = "stack"
        else:
            tier = "unit"
            item.add_marker(pytest.mark.disable_socket)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """An end-to-end test that fails says where every bridge's shards stand (the lease table), so
    that a failure seen only in a CI log can be told apart: no lease, a finished one, a stale owner."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed or not ({"e2e", "chaos"} & {m.name for m in item.iter_markers()}):
        return
    from dmd_tasks.infra.settings import get_settings

    try:
        settings = get_settings()
        scan = aws.client("dynamodb", settings).get_paginator("scan")
        items = [item for page in scan.paginate(TableName=settings.checkpoint_table_name) for item in page["Items"]]
    except Exception as exc:  # the stack may be what failed
        report.sections.append(("bridge leases", f"could not read them: {exc!r}"))
        return
    lines = []
    for lease in sorted(items, key=lambda i: (i["stream"]["S"], i["shard"]["S"])):
        consumer, _, stream = lease["stream"]["S"].partition("|")
        fields = {k: next(iter(v.values())) for k, v in lease.items() if k not in ("stream", "shard")}
        lines.append(f"{consumer} {stream.split(':', 5)[-1]} {lease['shard']['S']}: {fields}")
    report.sections.append(("bridge leases", "\n".join(lines) or "none"))
    report.sections.append(("notifications not final", _not_final(settings)))


def _not_final(settings: Any) -> str:
    """Every notification of the table not in a final status, counted by sale and status, with a few
    of them (no phone numbers): what a timed-out wait was waiting for."""
    from dmd_tasks.domain.entities import TERMINAL_STATUSES

    final = {s.value for s in TERMINAL_STATUSES}
    shown = ("sk", "status", "attempts", "round", "reason", "providerMessageId", "leaseUntil", "callStartedAt")
    try:
        scan = aws.client("dynamodb", settings).get_paginator("scan")
        pages = scan.paginate(
            TableName=settings.notifications_table_name,
            FilterExpression="begins_with(sk, :n)",
            ExpressionAttributeValues={":n": {"S": "NOTIFICATION#"}},
        )
        items = [i for page in pages for i in page["Items"] if i.get("status", {}).get("S") not in final]
    except Exception as exc:  # the stack may be what failed
        return f"could not read them: {exc!r}"
    counts = Counter((i["pk"]["S"], i.get("status", {}).get("S", "?")) for i in items)
    lines = [f"{pk} {status}: {n}" for (pk, status), n in sorted(counts.items())]
    lines += [str({k: next(iter(v.values())) for k, v in i.items() if k in shown}) for i in items[:10]]
    return "\n".join(lines) or "none"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault scenarios' figures (``[chaos] name {...}``), one line each, after the results."""
    lines: dict[str, None] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == "chaos":
                    lines[f"{value}  ({report.nodeid.rsplit('::', 1)[-1]})"] = None
    if lines:
        terminalreporter.section("fault scenario figures")
        for line in lines:
            terminalreporter.line(line)
