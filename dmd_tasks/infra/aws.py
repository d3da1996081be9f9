"""boto3 clients built from settings: the same code talks to moto locally and to AWS.

Clients are cached per process (and rebuilt after a fork, since a boto3 client must
not cross a fork), so a task never pays for a client construction.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import boto3
from botocore import handlers
from botocore.config import Config

from dmd_tasks.infra.metrics import AWS_REQUESTS, DYNAMODB_READ_UNITS, DYNAMODB_WRITE_ITEMS
from dmd_tasks.infra.settings import Settings

_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}
#: one boto3 session per credentials, shared by this process's clients (and inherited by forked
#: children): a session parses each service's model once (30-120 ms of CPU a service); a new
#: session per client parsed it again in every worker child
_sessions: dict[tuple[Any, ...], boto3.session.Session] = {}


def session_for(settings: Settings) -> boto3.session.Session:
    """A session of its own (provisioning, tools); clients on a task's path share one (``client``)."""
    return _new_session(*credentials(settings))


def _new_session(
    region: str | None, access_key_id: str | None, secret_access_key: str | None, session_token: str | None = None
) -> boto3.session.Session:
    return boto3.session.Session(
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
    )


def _client_key(settings: Settings, service: str) -> tuple[Any, ...]:
    """What makes two clients the same: the process (a client must not cross a fork), the service and
    every setting a client is built from (not the settings object's identity, which can be reused)."""
    region, access, secret = credentials(settings)
    return (
        os.getpid(),
        service,
        region,
        settings.aws_endpoint_url,
        access,
        secret,
        settings.aws_connect_timeout_seconds,
        settings.aws_read_timeout_seconds,
        settings.aws_max_pool_connections,
    )


def client(service: str, settings: Settings) -> Any:
    """A pooled boto3 client for ``service``, cached for this process and these settings."""
    key = _client_key(settings, service)
    found = _clients.get(key)
    if found is not None:
        return found
    with _lock:
        found = _clients.get(key)
        if found is None:
            config = Config(
                connect_timeout=settings.aws_connect_timeout_seconds,
                read_timeout=settings.aws_read_timeout_seconds,
                max_pool_connections=settings.aws_max_pool_connections,
                retries={"mode": "standard", "max_attempts": 5},
                # the requests are built by this code, not from input, and the service checks them
                # anyway: botocore's own walk of each parameter was an eighth of a send worker's CPU
                # (a 100-item transaction validated item by item before it is serialized)
                parameter_validation=False,
            )
            found = cast(Any, _shared_session(settings)).client(
                service, endpoint_url=settings.aws_endpoint_url, config=config
            )
            _clients[key] = found
    return found


def _shared_session(settings: Settings) -> boto3.session.Session:
    """This process's session for these settings' credentials (call with ``_lock`` held: a
    session is not safe to build clients from on two threads at once)."""
    return _session_with(*credentials(settings))


def credentials(settings: Settings) -> tuple[str, str | None, str | None]:
    """Region, access key id and secret key (None: boto3's default chain)."""
    secret = settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None
    access = settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None
    return settings.aws_region, access, secret


def _session_with(
    region: str | None, access_key_id: str | None, secret_access_key: str | None, session_token: str | None = None
) -> boto3.session.Session:
    """This process's session for these credentials (call with ``_lock`` held). Endpoints, timeouts
    and retries belong to a client, so one session serves every client of the credentials."""
    key = (region, access_key_id, secret_access_key, session_token)
    found = _sessions.get(key)
    if found is None:
        found = _sessions[key] = _new_session(*key)
    return found


def client_from_shared_session(
    service: str,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None = None,
    **client_kwargs: Any,
) -> Any:
    """A new client from this process's session for these credentials: for code that builds its
    own clients (kombu's SQS transport), so that it too parses each service model once."""
    with _lock:
        session = cast(Any, _session_with(region, access_key_id, secret_access_key, session_token))
        return session.client(service, **client_kwargs)


def warm(settings: Settings, services: tuple[str, ...] | None = None) -> None:
    """Parse these services' models (default: the ones the pipeline's tasks use) into the shared
    session now: a prefork worker calls this before it forks, so its children start with the models
    parsed (each child still makes its own clients)."""
    if services is None:
        eum = "eum" in (settings.sms_provider, settings.sms_failover_provider)
        services = ("dynamodb", "sqs", *(("pinpoint-sms-voice-v2",) if eum else ()))
    with _lock:
        session = cast(Any, _shared_session(settings))  # a service by name: the stubs type each literal
        for service in services:
            session.client(service, endpoint_url=settings.aws_endpoint_url)


_pools: dict[int, ThreadPoolExecutor] = {}


def io_pool(settings: Settings) -> ThreadPoolExecutor:
    """Threads for independent AWS calls issued together (batch writes, conditional writes), one
    pool per process (created where it is used: a pool must not cross a fork). Requests spend most
    of their time waiting on the network, so a few threads multiply a worker's throughput."""
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        with _lock:
            pool = _pools.get(pid)
            if pool is None:
                pool = _pools[pid] = ThreadPoolExecutor(
                    max_workers=settings.aws_io_threads, thread_name_prefix="aws-io"
                )
    return pool


def resource(service: str, settings: Settings) -> Any:
    """A boto3 resource (used only by provisioning and tools, never on a hot path)."""
    return cast(Any, session_for(settings)).resource(service, endpoint_url=settings.aws_endpoint_url)


# ---- request accounting --------------------------------------------------------------------------
# Every botocore session created after ``count_requests()`` (ours, and the ones kombu's SQS
# transport makes) registers these handlers, so each request the process signs is counted:
# the AWS bill of the pipeline, by service and operation, in the Prometheus metrics.

_WRITE_OPERATIONS = {"PutItem": 1, "UpdateItem": 1, "DeleteItem": 1}


def _on_sign(event_name: str = "", **_: Any) -> None:
    _kind, service, operation = event_name.split(".", 2)
    AWS_REQUESTS.labels(service, operation).inc()


def _on_dynamodb_params(params: dict[str, Any], model: Any = None, **_: Any) -> None:
    operation = getattr(model, "name", "")
    if operation == "BatchWriteItem":
        DYNAMODB_WRITE_ITEMS.labels(operation).inc(sum(len(v) for v in params.get("RequestItems", {}).values()))
    elif operation == "TransactWriteItems":  # DynamoDB bills two write units per item of a transaction
        DYNAMODB_WRITE_ITEMS.labels(operation).inc(2 * len(params.get("TransactItems", [])))
    elif operation in _WRITE_OPERATIONS:
        DYNAMODB_WRITE_ITEMS.labels(operation).inc()
    elif operation == "BatchGetItem":
        DYNAMODB_READ_UNITS.labels(operation).inc(
            sum(len(v.get("Keys", [])) for v in params.get("RequestItems", {}).values())
        )
    elif operation == "GetItem":
        DYNAMODB_READ_UNITS.labels(operation).inc()


def _on_dynamodb_response(http_response: Any = None, model: Any = None, **_: Any) -> None:
    operation = getattr(model, "name", "")
    if operation in ("Query", "Scan") and http_response is not None:
        size = len(http_response.content or b"")
        DYNAMODB_READ_UNITS.labels(operation).inc(max(1, -(-size // 4096)))


_HANDLERS = (
    ("before-sign", _on_sign),
    ("before-parameter-build.dynamodb", _on_dynamodb_params),
    ("after-call.dynamodb", _on_dynamodb_response),
)


def count_requests() -> None:
    """Count every AWS request of this process (and of processes it forks). Safe to call twice."""
    for spec in _HANDLERS:
        if spec not in handlers.BUILTIN_HANDLERS:
            handlers.BUILTIN_HANDLERS.append(spec)
