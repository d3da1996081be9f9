"""Create (or bring up to date) every AWS resource dmd needs. Idempotent; moto and AWS alike.

- the ``demand`` table (single-table design, stream NEW_AND_OLD_IMAGES, GSIs ``gsi1``/``gsi2``)
- the bridges' checkpoint table
- one SQS queue per Celery queue, each with a dead-letter queue and a redrive policy,
  and a dead-letter queue per bridge
- the intake queues the SQS bridge reads, each with a dead-letter queue and a redrive policy
- with ``DMD_DEMAND_PIPE_ROLE_ARN``, the EventBridge pipe from the demand table's stream to
  the demand intake queue, filtered to the changes the pipeline routes
- the SNS topic End User Messaging publishes SMS events to, subscribed by the events intake
  queue (whose policy lets the topic send), and, when End User Messaging sends (the provider or
  the failover provider), the configuration set whose event destination is that topic
- the Kinesis stream of SMS delivery statuses (and the demand-changes stream when configured)
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from botocore.exceptions import ClientError

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.topology import DLQ_OWNERS, INTAKE_QUEUES, QUEUE_NAMES
from dmd_tasks.store.keys import GSI1, GSI2

log = logging.getLogger(__name__)

#: SQS keeps a dead letter this long (14 days, the maximum) so an operator can replay it.
DLQ_RETENTION_SECONDS = 1_209_600

GSIS: list[dict[str, Any]] = [
    {
        "IndexName": GSI1,
        "KeySchema": [{"AttributeName": "gsi1pk", "KeyType": "HASH"}, {"AttributeName": "gsi1sk", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"},
    },
    {
        "IndexName": GSI2,
        "KeySchema": [{"AttributeName": "gsi2pk", "KeyType": "HASH"}, {"AttributeName": "gsi2sk", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    },
]


def provision(settings: Settings) -> dict[str, Any]:
    """Create what is missing; returns what exists afterwards (names, ARNs, URLs)."""
    report: dict[str, Any] = {}
    report["table"] = ensure_demand_table(settings)
    report["notifications_table"] = ensure_notifications_table(settings)
    report["checkpoint_table"] = ensure_checkpoint_table(settings)
    report["queues"] = ensure_queues(settings)
    report["intake_queues"] = ensure_intake_queues(settings)
    report["sms_events"] = ensure_sms_events_topic(settings)
    if settings.demand_pipe_role_arn:
        report["demand_pipe"] = ensure_demand_pipe(settings, report["table"]["stream_arn"])
    if "eum" in (settings.sms_provider, settings.sms_failover_provider) and settings.eum_configuration_set:
        topic_arn = report["sms_events"]["topic_arn"]
        aws.client("sns", settings).set_topic_attributes(
            TopicArn=topic_arn, AttributeName="Policy", AttributeValue=json.dumps(eum_topic_policy(settings, topic_arn))
        )
        report["eum_configuration_set"] = ensure_eum_configuration_set(settings, topic_arn)
    report["streams"] = [
        ensure_kinesis_stream(
            settings, name, shard_count=settings.sms_status_shards if name == settings.sms_status_stream_name else 1
        )
        for name in topology.kinesis_streams(settings)
    ]
    return report


def _table_exists(ddb: Any, name: str) -> dict[str, Any] | None:
    try:
        return ddb.describe_table(TableName=name)["Table"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise


def _wait_active(ddb: Any, name: str) -> dict[str, Any]:
    for _ in range(120):
        table = ddb.describe_table(TableName=name)["Table"]
        if table["TableStatus"] == "ACTIVE":
            return table
        time.sleep(1)
    raise TimeoutError(f"table {name} did not become ACTIVE")


def _create_table(ddb: Any, name: str, stream: bool) -> dict[str, Any]:
    """A table of the single-table shape (pk/sk, gsi1, gsi2), on demand, with or without a stream."""
    attrs = ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"]
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in attrs],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=GSIS,
        **({"StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}} if stream else {}),
    )
    log.info("created table %s", name)
    return _wait_active(ddb, name)


def ensure_notifications_table(settings: Settings) -> dict[str, Any]:
    """The pipeline's own table (notifications, phone claims): the demand table's shape, no stream."""
    ddb = aws.client("dynamodb", settings)
    name = settings.notifications_table_name
    table = _table_exists(ddb, name) or _create_table(ddb, name, stream=False)
    return {"name": name, "arn": table["TableArn"]}


def ensure_demand_table(settings: Settings) -> dict[str, Any]:
    ddb = aws.client("dynamodb", settings)
    name = settings.table_name
    table = _table_exists(ddb, name)
    if table is None:
        table = _create_table(ddb, name, stream=True)
    else:
        existing = {g["IndexName"] for g in table.get("GlobalSecondaryIndexes", [])}
        for gsi in GSIS:
            if gsi["IndexName"] not in existing:
                ddb.update_table(
                    TableName=name,
                    AttributeDefinitions=[
                        {"AttributeName": k["AttributeName"], "AttributeType": "S"} for k in gsi["KeySchema"]
                    ],
                    GlobalSecondaryIndexUpdates=[{"Create": gsi}],
                )
                table = _wait_active(ddb, name)
        table = _ensure_stream(ddb, table)
    if settings.demand_kinesis_stream_name:
        _enable_kinesis_destination(settings, table)
    return {"name": name, "arn": table["TableArn"], "stream_arn": table.get("LatestStreamArn")}


def _ensure_stream(ddb: Any, table: dict[str, Any]) -> dict[str, Any]:
    """The table's stream with NEW_AND_OLD_IMAGES (the bridge routes on both images).

    DynamoDB cannot change the view type of an enabled stream: a stream of another view type
    is disabled first, then a new one is enabled. The bridge reads the new stream from its
    start; changes written between the two calls are not on either stream, so say so.
    """
    name = table["TableName"]
    spec = table.get("StreamSpecification") or {}
    if spec.get("StreamEnabled") and spec.get("StreamViewType") == "NEW_AND_OLD_IMAGES":
        return table
    if spec.get("StreamEnabled"):
        log.warning("table %s: replacing its %s stream with a NEW_AND_OLD_IMAGES one", name, spec.get("StreamViewType"))
        ddb.update_table(TableName=name, StreamSpecification={"StreamEnabled": False})
        _wait_active(ddb, name)
    ddb.update_table(
        TableName=name, StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    )
    return _wait_active(ddb, name)


def _enable_kinesis_destination(settings: Settings, table: dict[str, Any]) -> None:
    ddb = aws.client("dynamodb", settings)
    stream = ensure_kinesis_stream(settings, settings.demand_kinesis_stream_name or "")
    destinations = ddb.describe_kinesis_streaming_destination(TableName=table["TableName"])
    active = {
        d["StreamArn"]
        for d in destinations.get("KinesisDataStreamDestinations", [])
        if d.get("DestinationStatus") in ("ACTIVE", "ENABLING")
    }
    if stream["arn"] not in active:
        ddb.enable_kinesis_streaming_destination(TableName=table["TableName"], StreamArn=stream["arn"])


def ensure_checkpoint_table(settings: Settings) -> dict[str, Any]:
    """A separate table: checkpoints written into ``demand`` would feed its own stream."""
    ddb = aws.client("dynamodb", settings)
    name = settings.checkpoint_table_name
    table = _table_exists(ddb, name)
    if table is None:
        ddb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "stream", "AttributeType": "S"},
                {"AttributeName": "shard", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "stream", "KeyType": "HASH"}, {"AttributeName": "shard", "KeyType": "RANGE"}],
        )
        table = _wait_active(ddb, name)
    return {"name": name, "arn": table["TableArn"]}


def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def _ensure_dlq(sqs: Any, settings: Settings, owner: str) -> tuple[str, str]:
    """The dead-letter queue of ``owner``: (URL, ARN)."""
    url = _ensure_queue(sqs, topology.dlq_name(settings, owner), {"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)})
    return url, sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _ensure_redriven(sqs: Any, settings: Settings, name: str, dlq_arn: str, visibility_seconds: int) -> str:
    """The queue ``name``, whose redrive policy moves a message received too often to ``dlq_arn``."""
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(settings.dlq_max_receive_count)})
    return _ensure_queue(
        sqs,
        topology.queue_name(settings, name),
        {"VisibilityTimeout": str(visibility_seconds), "RedrivePolicy": redrive},
    )


def ensure_queues(settings: Settings) -> dict[str, dict[str, str]]:
    sqs = aws.client("sqs", settings)
    out: dict[str, dict[str, str]] = {}
    for name in DLQ_OWNERS:
        dlq_url, dlq_arn = _ensure_dlq(sqs, settings, name)
        entry = {"dlq_url": dlq_url}
        if name in QUEUE_NAMES:
            entry["url"] = _ensure_redriven(sqs, settings, name, dlq_arn, settings.visibility_timeout_seconds)
        out[name] = entry
    return out


def ensure_intake_queues(settings: Settings) -> dict[str, dict[str, str]]:
    """The queues ``bridge-sqs`` reads, each with its dead-letter queue: a message the bridge
    cannot hand on (publishing fails every time) is moved there after ``dlq_max_receive_count``
    receives. (A message it cannot read is dead-lettered by the bridge itself, with the reason.)"""
    sqs = aws.client("sqs", settings)
    out: dict[str, dict[str, str]] = {}
    for name in INTAKE_QUEUES:
        dlq_url, dlq_arn = _ensure_dlq(sqs, settings, name)
        url = _ensure_redriven(sqs, settings, name, dlq_arn, settings.intake_visibility_timeout_seconds)
        out[name] = {"url": url, "dlq_url": dlq_url}
    return out


def ensure_sms_events_topic(settings: Settings) -> dict[str, str]:
    """The SNS topic of End User Messaging's SMS events, delivered to the intake queue
    ``intake-sms-events`` (SNS envelopes: bridge-sqs reads them). Idempotent: SNS answers a
    repeated CreateTopic and Subscribe with what exists."""
    sns, sqs = aws.client("sns", settings), aws.client("sqs", settings)
    topic_arn = sns.create_topic(Name=topology.sms_events_topic(settings))["TopicArn"]
    queue_url = topology.queue_url(settings, "intake-sms-events")
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "sms-events-topic",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    subscription = sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, ReturnSubscriptionArn=True)
    return {"topic_arn": topic_arn, "subscription_arn": subscription["SubscriptionArn"], "queue_url": queue_url}


#: The changes of the demand table the pipeline acts on (dmd_tasks.pipeline.routing): a new demand
#: row (routed to the shortener), and a sale written as ``waiting`` (it wakes beat's claim:
#: dmd_tasks.infra.wake). Everything else is filtered out by the pipe (not paid for, not sent to
#: the queue); the bridge still checks each change it gets.
DEMAND_PIPE_FILTERS = [
    {"eventName": ["INSERT"], "dynamodb": {"NewImage": {"entity": {"S": ["DEMAND"]}}}},
    {
        "eventName": ["INSERT", "MODIFY"],
        "dynamodb": {"NewImage": {"entity": {"S": ["SALE"]}, "status": {"S": ["waiting"]}}},
    },
]


def ensure_demand_pipe(settings: Settings, stream_arn: str | None) -> dict[str, Any]:
    """The EventBridge pipe from the demand table's stream to the intake queue ``intake-demand``,
    filtered to the changes the pipeline routes; records Pipes cannot deliver go to the queue's
    dead-letter queue. Created once (an existing pipe of that name is left as it is)."""
    if not stream_arn:
        raise RuntimeError("the demand table has no stream: the pipe has nothing to read")
    pipes, sqs = aws.client("pipes", settings), aws.client("sqs", settings)
    name = f"{settings.queue_name_prefix}demand-pipe"
    try:
        found = pipes.describe_pipe(Name=name)
        return {"name": name, "arn": found["Arn"], "created": False}
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("NotFoundException", "ResourceNotFoundException"):
            raise

    def arn(url: str) -> str:
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    target = arn(topology.queue_url(settings, "intake-demand"))
    dlq = arn(topology.sqs_url(settings, topology.dlq_name(settings, "intake-demand")))
    created = pipes.create_pipe(
        Name=name,
        RoleArn=settings.demand_pipe_role_arn,
        Source=stream_arn,
        SourceParameters={
            "FilterCriteria": {"Filters": [{"Pattern": json.dumps(p)} for p in DEMAND_PIPE_FILTERS]},
            "DynamoDBStreamParameters": {
                "StartingPosition": "TRIM_HORIZON" if settings.bridge_start_position == "TRIM_HORIZON" else "LATEST",
                "BatchSize": 10,
                "MaximumRetryAttempts": 10,
                "DeadLetterConfig": {"Arn": dlq},
            },
        },
        Target=target,
        DesiredState="RUNNING",
    )
    log.info("created pipe %s: %s -> %s", name, stream_arn, target)
    return {"name": name, "arn": created["Arn"], "created": True}


#: The event destination dmd gives its configuration set (every SMS event type, to the topic).
EUM_EVENT_DESTINATION = "dmd-sms-events"


def eum_topic_policy(settings: Settings, topic_arn: str) -> dict[str, Any]:
    """The events topic's policy: End User Messaging may publish to it, for this account's
    configuration set only (without it the delivery events are never delivered)."""
    partition = topic_arn.split(":")[1] if topic_arn.startswith("arn:") else "aws"
    account = settings.aws_account_id
    configuration_set = f"arn:{partition}:sms-voice:{settings.aws_region}:{account}:configuration-set/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "end-user-messaging-events",
                "Effect": "Allow",
                "Principal": {"Service": "sms-voice.amazonaws.com"},
                "Action": "sns:Publish",
                "Resource": topic_arn,
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": account},
                    "ArnLike": {"aws:SourceArn": configuration_set + (settings.eum_configuration_set or "")},
                },
            }
        ],
    }


def ensure_eum_configuration_set(settings: Settings, topic_arn: str) -> dict[str, Any]:
    """End User Messaging's configuration set ``eum_configuration_set`` with an SNS event
    destination to ``topic_arn`` for every SMS event type: what the delivery events need."""
    eum = aws.session_for(settings).client("pinpoint-sms-voice-v2", endpoint_url=settings.eum_endpoint_url)
    name = settings.eum_configuration_set
    if not name:
        raise ValueError("DMD_EUM_CONFIGURATION_SET is not set: there is no configuration set to provision")
    destinations: list[Any]
    try:
        found = eum.describe_configuration_sets(ConfigurationSetNames=[name])["ConfigurationSets"][0]
        destinations = list(found.get("EventDestinations", []))
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        eum.create_configuration_set(ConfigurationSetName=name)
        destinations = []
    topics = {d.get("SnsDestination", {}).get("TopicArn") for d in destinations}
    if topic_arn not in topics:
        eum.create_event_destination(
            ConfigurationSetName=name,
            EventDestinationName=EUM_EVENT_DESTINATION,
            MatchingEventTypes=["TEXT_ALL"],
            SnsDestination={"TopicArn": topic_arn},
        )
    return {"name": name, "topic_arn": topic_arn}


def ensure_kinesis_stream(settings: Settings, name: str, shard_count: int = 1) -> dict[str, Any]:
    kinesis = aws.client("kinesis", settings)
    try:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        kinesis.create_stream(StreamName=name, ShardCount=shard_count)
        summary = None
    for _ in range(120):
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            break
        time.sleep(1)
    assert summary is not None
    return {"name": name, "arn": summary["StreamARN"]}
