"""Worker events and remote control over Redis, while tasks travel over SQS.

Celery's SQS transport carries neither the event exchange nor the broadcast mailbox
(no fanout), so Flower sees nothing and ``celery inspect`` gets no reply. This component
moves exactly those two channels to Redis (``DMD_MONITOR_REDIS_URL``, default the Redis
of the pipeline) and leaves task traffic on SQS:

- ``MonitorConsumer`` (the worker's consumer class): the stock Events step, Heart and
  heartbeats publish to Redis; ``MonitorControlStep`` replaces the Control step with a
  Redis mailbox consumed by a thread, whose commands run on the worker's event loop.
- ``MonitorControl`` (``app.control``): ``inspect``/``control`` broadcasts and replies go
  to Redis, so ``celery -A dmd_tasks.celery_app inspect ping`` works as usual.
- ``MonitorAppEvents`` (``app.events``): ``Task.send_event`` and ``task-sent`` (which
  Celery would publish to SQS, where it is dropped) go to Redis.
- ``MonitorDispatcher`` never retries forever: with Redis down, a heartbeat would
  otherwise block the worker's event loop and stop task consumption; events are
  buffered (bounded) instead.

Flower then runs against Redis: ``dmd flower``. It is written to be offered upstream:
it touches no dmd module, only Celery and kombu.
"""

from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from typing import Any, ClassVar

from celery import bootsteps
from celery.app.control import Control as AppControl
from celery.app.events import Events as AppEvents
from celery.events.dispatcher import EventDispatcher
from celery.exceptions import ImproperlyConfigured
from celery.signals import before_task_publish
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer
from celery.worker.consumer.control import Control as ControlStep
from celery.worker.pidbox import Pidbox
from kombu import Connection
from kombu.pools import connections as connection_pools
from kombu.pools import producers as producer_pools
from kombu.utils.functional import lazy

logger = get_logger(__name__)


# Keep a Redis outage from stalling the worker (socket ops are bounded).
DEFAULT_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "socket_keepalive": True,
}


def monitor_connection(app: Any) -> Connection:
    """New (lazy) kombu connection to the events/control broker."""
    url = app.conf.get("monitor_broker_url")
    if not url:
        raise ImproperlyConfigured("monitor_broker_url is not set")
    # Do NOT inherit broker_transport_options (they are SQS options).
    options = dict(DEFAULT_TRANSPORT_OPTIONS, **(app.conf.get("monitor_broker_transport_options") or {}))
    return Connection(url, connect_timeout=app.conf.broker_connection_timeout, transport_options=options)


def _redis_producer_pool(app: Any) -> Any:
    return lazy(lambda: producer_pools[monitor_connection(app)])


def monitor_mailbox(app: Any) -> Any:
    """Copy of app.control.mailbox whose replies/broadcasts go to Redis.

    kombu's Mailbox publishes through ``producer_pool`` (default: the task
    broker's pool = SQS) and ignores the channel it is given.
    """
    mailbox = app.control.mailbox(None)  # shallow copy
    mailbox.__dict__.pop("producer_pool", None)  # drop cached SQS pool
    mailbox._producer_pool = _redis_producer_pool(app)
    return mailbox


class MonitorControl(AppControl):
    """app.control: broadcast/inspect go to Redis unless a connection is given."""

    def __init__(self, app: Any = None) -> None:
        super().__init__(app)
        self.mailbox._producer_pool = _redis_producer_pool(app)

    def _after_fork(self) -> None:
        self.mailbox.__dict__.pop("producer_pool", None)

    def broadcast(
        self,
        command: str,
        arguments: Any = None,
        destination: Any = None,
        connection: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if connection is not None:
            return super().broadcast(command, arguments, destination, connection, *args, **kwargs)
        pool = connection_pools[monitor_connection(self.app)]
        with pool.acquire(block=True) as conn:
            return super().broadcast(command, arguments, destination, conn, *args, **kwargs)


class MonitorDispatcher(EventDispatcher):
    """Event dispatcher that never retries forever.

    The Heart bootstep sends worker-heartbeat with retry=True and no
    retry_policy -> kombu retries the connection forever *inside the worker
    event loop*: with Redis down, the worker would stop consuming SQS tasks.
    Here a failed publish is buffered (bounded) and flushed later.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbound_buffer: deque[Any] = deque(self._outbound_buffer, maxlen=1000)

    def _publish(
        self,
        event: Any,
        producer: Any,
        routing_key: str,
        retry: bool = False,
        retry_policy: Any = None,
        **kwargs: Any,
    ) -> Any:
        return super()._publish(event, producer, routing_key, retry=False, **kwargs)


class MonitorAppEvents(AppEvents):
    """app.events: Task.send_event()/default_dispatcher publish to Redis."""

    dispatcher_cls = f"{__name__}:MonitorDispatcher"

    @contextmanager
    def default_dispatcher(
        self, hostname: str | None = None, enabled: bool = True, buffer_while_offline: bool = False
    ) -> Iterator[Any]:
        pool = producer_pools[monitor_connection(self.app)]
        with (
            pool.acquire(block=True) as prod,
            self.Dispatcher(prod.connection, hostname, enabled, prod.channel, buffer_while_offline) as d,
        ):
            yield d


#: The dispatcher of an open ``task_sent_batch`` block, if any (per thread and task context);
#: ``_BATCH_OFF`` inside a block whose events are off (the monitoring Redis did not answer).
_BATCH_OFF = object()
_sent_batch: contextvars.ContextVar[Any] = contextvars.ContextVar("monitor_sent_batch", default=None)


@contextmanager
def task_sent_batch(app: Any) -> Iterator[None]:
    """Gather the task-sent events of the tasks published in the block into one message.

    A publisher enqueueing many tasks at once (ten per SQS call, a thousand per stream
    page) would otherwise open a producer and publish to Redis once per task, which
    profiled at over 80 % of a bridge's CPU per record. Receivers (Flower) take the list
    as they take a worker's buffered task events.
    """
    if not app.conf.get("monitor_task_sent_event") or _sent_batch.get() is not None:
        yield  # off, or nested (the outer block flushes)
        return
    with ExitStack() as stack:
        try:
            prod = stack.enter_context(producer_pools[monitor_connection(app)].acquire(block=True, timeout=2))
            dispatcher = app.events.Dispatcher(
                prod.connection, enabled=True, channel=prod.channel, buffer_group=["task"], buffer_limit=100_000
            )
        except Exception as exc:  # pylint: disable=broad-except
            # monitoring must never stop tasks from being published, nor slow them down:
            # the batch's tasks do not try Redis again one by one
            logger.warning("task-sent events off for this batch: %r", exc)
            dispatcher = None
        token = _sent_batch.set(dispatcher if dispatcher is not None else _BATCH_OFF)
        try:
            yield
        finally:
            _sent_batch.reset(token)
            if dispatcher is not None:
                try:
                    dispatcher.flush()
                except Exception as exc:  # pylint: disable=broad-except
                    logger.warning("task-sent events not published: %r", exc)
                dispatcher.close()


def _task_sent_handler(app: Any) -> Callable[..., None]:
    # Replaces task_send_sent_event (which publishes via the SQS producer
    # to the 'celeryev' exchange, where SQS silently drops it).
    def on_before_publish(
        sender: Any = None, headers: Any = None, exchange: Any = None, routing_key: Any = None, **kwargs: Any
    ) -> None:
        if not headers or "id" not in headers:  # protocol 1: ignore
            return
        batch = _sent_batch.get()
        if batch is _BATCH_OFF:
            return
        # (an open batch exists only when the events are on: look the setting up outside one)
        if batch is None and not app.conf.get("monitor_task_sent_event"):
            return
        try:
            with nullcontext(batch) if batch is not None else app.events.default_dispatcher() as d:
                d.send(
                    "task-sent",
                    uuid=headers["id"],
                    name=headers["task"],
                    args=headers.get("argsrepr"),
                    kwargs=headers.get("kwargsrepr"),
                    retries=headers.get("retries"),
                    eta=headers.get("eta"),
                    expires=headers.get("expires"),
                    root_id=headers.get("root_id"),
                    parent_id=headers.get("parent_id"),
                    queue=routing_key,
                    exchange=getattr(exchange, "name", exchange),
                    routing_key=routing_key,
                )
        except Exception as exc:  # pylint: disable=broad-except
            logger.warning("task-sent event not published: %r", exc)

    return on_before_publish


class RedisPidbox(Pidbox):
    """Worker mailbox consumed from Redis by a background thread.

    Commands run on the worker's event loop (hub.call_soon is thread-safe),
    so handlers touching consumer state stay single-threaded.
    """

    def __init__(self, c: Any) -> None:
        super().__init__(c)
        self.node.mailbox = monitor_mailbox(c.app)
        self._thread: threading.Thread | None = None
        self._shutdown = threading.Event()
        self._resets = 0
        self.consumer: Any = None

    def on_message(self, body: Any, message: Any) -> None:  # called in the pidbox thread
        hub = self.c.hub
        if hub is not None:
            hub.call_soon(Pidbox.on_message, self, body, message)
        else:
            Pidbox.on_message(self, body, message)

    def reset(self) -> None:  # may be called from any thread: ask the loop to redo
        self._resets += 1

    def start(self, c: Any) -> None:
        self.on_stop()
        self._shutdown = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._shutdown,), name="RedisPidbox", daemon=True)
        self._thread.start()

    def on_stop(self) -> None:
        if self._thread is not None:
            self._shutdown.set()
            self._thread.join(5)
            self._thread = None

    def _listen(self, conn: Any) -> None:
        if self.consumer is not None:
            with suppress(Exception):
                self.consumer.cancel()
        if self.node.channel is not None:
            with suppress(Exception):
                self.node.channel.close()
        self.node.mailbox.connection = conn
        self.node.channel = conn.channel()
        self.consumer = self.node.listen(callback=self.on_message)
        self.consumer.on_decode_error = self.c.on_decode_error

    def _run(self, shutdown: threading.Event) -> None:
        delay = 1
        while not shutdown.is_set():
            conn = monitor_connection(self.c.app)
            try:
                conn.connect()
                logger.info("pidbox: Connected to %s.", conn.as_uri())
                resets = self._resets
                self._listen(conn)
                delay = 1
                while not shutdown.is_set():
                    if resets != self._resets:
                        resets = self._resets
                        self._listen(conn)
                    with suppress(TimeoutError):
                        conn.drain_events(timeout=1.0)
            except conn.connection_errors + conn.channel_errors as exc:
                logger.error("pidbox: Redis connection error: %r, retrying in %ss", exc, delay)
                shutdown.wait(delay)
                delay = min(delay * 2, 30)
            finally:
                self.consumer = None
                self.node.channel = None
                with suppress(Exception):
                    conn.release()

    def _close_channel(self, c: Any) -> None:
        pass  # the thread owns its channel/connection

    def shutdown(self, c: Any) -> None:
        self.on_stop()


class MonitorControlStep(ControlStep):
    """Remote-control bootstep that works even if the broker has no fanout."""

    name = ControlStep.name

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.is_green = False
        self.box = RedisPidbox(c)
        self.start = self.box.start
        self.stop = self.box.stop
        self.shutdown = self.box.shutdown
        bootsteps.StartStopStep.__init__(self, c, **kwargs)

    def include_if(self, c: Any) -> bool:
        return bool(c.app.conf.worker_enable_remote_control)


class MonitorConsumer(Consumer):
    """Worker consumer: tasks on the broker, events + pidbox on Redis."""

    class Blueprint(Consumer.Blueprint):
        default_steps: ClassVar[list[object]] = [
            MonitorControlStep if s == "celery.worker.consumer.control:Control" else s
            for s in Consumer.Blueprint.default_steps
        ]

    def connection_for_write(self, url: Any = None, heartbeat: Any = None) -> Any:
        # Only caller in celery/worker is the Events bootstep
        # (consumer/events.py:38) -> the event dispatcher goes to Redis.
        # Task publishing uses app.amqp.producer_pool, not this method.
        return self.ensure_connected(monitor_connection(self.app))


def install(app: Any, url: str | None = None, task_sent_event: bool | None = None) -> Any:
    """Wire an existing app (call before the app is finalized/used).

    Reads nothing from the app's configuration: ``monitor_broker_url`` and
    ``monitor_task_sent_event`` may come from the configuration (or from the arguments)
    and are looked up when used.
    """
    if url:
        app.conf.monitor_broker_url = url
    if task_sent_event is not None:
        app.conf.monitor_task_sent_event = task_sent_event
    app.conf.worker_consumer = f"{__name__}:MonitorConsumer"
    app.control_cls = MonitorControl
    app.events_cls = MonitorAppEvents
    app.__dict__.pop("control", None)
    app.__dict__.pop("events", None)
    app._monitor_task_sent = _task_sent_handler(app)  # keep a strong ref
    before_task_publish.connect(app._monitor_task_sent, weak=False)
    return app
