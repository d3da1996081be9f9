"""``dmd provision`` against moto: every resource, created once, brought up to date when it exists.

Each test provisions names of its own (tables, queue prefix, streams), deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto.events.models import EventPattern

from dmd_tasks.infra import aws, topology
from dmd_tasks.infra.settings import Settings
from dmd_tasks.infra.topology import BRIDGE_NAMES, DLQ_OWNERS, INTAKE_QUEUES, QUEUE_NAMES
from dmd_tasks.ops.provision import (
    DEMAND_PIPE_FILTERS,
    DLQ_RETENTION_SECONDS,
    _ensure_stream,
    ensure_kinesis_stream,
    provision,
)
from dmd_tasks.pipeline.records import parse_change
from dmd_tasks.pipeline.routing import is_sale_waiting, route_change
from dmd_tasks.store.codec import serialize
from tests.helpers import pipes_change


@pytest.fixture()
def fresh(settings, stack) -> Iterator[Settings]:
    """Settings naming resources nobody has provisioned yet (and a non-default receive count)."""
    run = uuid.uuid4().hex[:8]
    mine = settings.model_copy(
        update={
            "table_name": f"test-demand-{run}",
            "checkpoint_table_name": f"test-checkpoints-{run}",
            "queue_name_prefix": f"t{run}-",
            "sms_status_stream_name": f"test-sms-status-{run}",
            "dlq_max_receive_count": 3,
            "visibility_timeout_seconds": 700,
        }
    )
    yield mine
    remove(mine, [f"test-demand-changes-{run}"])


def remove(settings: Settings, extra_streams: list[str]) -> None:
    ddb, sqs, kinesis = (aws.client(s, settings) for s in ("dynamodb", "sqs", "kinesis"))
    for table in (settings.table_name, settings.checkpoint_table_name):
        with contextlib.suppress(ClientError):
            ddb.delete_table(TableName=table)
    for url in sqs.list_queues(QueueNamePrefix=settings.queue_name_prefix).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    for stream in (settings.sms_status_stream_name, *extra_streams):
        with contextlib.suppress(ClientError):
            kinesis.delete_stream(StreamName=stream)


def attributes(settings: Settings, url: str) -> dict[str, str]:
    return aws.client("sqs", settings).get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_provisioning_twice_reports_the_same_resources_and_creates_nothing_more(fresh: Settings) -> None:
    # When everything is provisioned, then provisioned again
    first = provision(fresh)
    second = provision(fresh)

    # Then both runs report the same names, ARNs and URLs
    assert second == first
    assert first["table"]["name"] == fresh.table_name and first["table"]["stream_arn"]
    assert first["checkpoint_table"]["name"] == fresh.checkpoint_table_name
    assert [s["name"] for s in first["streams"]] == [fresh.sms_status_stream_name]
    assert set(first["queues"]) == set(DLQ_OWNERS)
    # And there is one queue per Celery queue and one dead-letter queue per owner, no more
    sqs = aws.client("sqs", fresh)
    urls = sqs.list_queues(QueueNamePrefix=fresh.queue_name_prefix)["QueueUrls"]
    assert set(first["intake_queues"]) == set(INTAKE_QUEUES)
    assert sorted(u.rsplit("/", 1)[1] for u in urls) == sorted(
        [topology.queue_name(fresh, q) for q in (*QUEUE_NAMES, *INTAKE_QUEUES)]
        + [topology.dlq_name(fresh, o) for o in (*DLQ_OWNERS, *INTAKE_QUEUES)]
    )


def test_each_queue_has_its_dead_letter_queue_behind_a_redrive_policy(fresh: Settings) -> None:
    report = provision(fresh)

    for name in QUEUE_NAMES:
        entry = report["queues"][name]
        assert entry["url"] == topology.queue_url(fresh, name)
        assert entry["dlq_url"] == topology.dlq_url(fresh, name)
        queue, dlq = attributes(fresh, entry["url"]), attributes(fresh, entry["dlq_url"])
        redrive = json.loads(queue["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dlq["QueueArn"], name
        assert int(redrive["maxReceiveCount"]) == 3, name
        assert queue["VisibilityTimeout"] == "700"
        assert dlq["MessageRetentionPeriod"] == str(DLQ_RETENTION_SECONDS)
        assert "RedrivePolicy" not in dlq


def test_a_bridge_has_a_dead_letter_queue_and_no_queue_of_its_own(fresh: Settings) -> None:
    report = provision(fresh)
    sqs = aws.client("sqs", fresh)

    for name in BRIDGE_NAMES:
        assert report["queues"][name] == {"dlq_url": topology.dlq_url(fresh, name)}
        assert attributes(fresh, report["queues"][name]["dlq_url"])["MessageRetentionPeriod"] == "1209600"
        with pytest.raises(ClientError):
            sqs.get_queue_url(QueueName=topology.queue_name(fresh, name))


def test_a_changed_receive_count_is_applied_to_queues_that_exist(fresh: Settings) -> None:
    provision(fresh)

    report = provision(fresh.model_copy(update={"dlq_max_receive_count": 7}))

    for name in QUEUE_NAMES:
        redrive = json.loads(attributes(fresh, report["queues"][name]["url"])["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) == 7, name


def test_the_demand_table_has_both_indexes_and_a_new_and_old_images_stream(fresh: Settings) -> None:
    report = provision(fresh)

    table = aws.client("dynamodb", fresh).describe_table(TableName=fresh.table_name)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    indexes = {g["IndexName"]: g for g in table["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"gsi1", "gsi2"}
    assert [k["AttributeName"] for k in indexes["gsi1"]["KeySchema"]] == ["gsi1pk", "gsi1sk"]
    assert [k["AttributeName"] for k in indexes["gsi2"]["KeySchema"]] == ["gsi2pk", "gsi2sk"]
    assert indexes["gsi1"]["Projection"]["ProjectionType"] == "ALL"
    assert indexes["gsi2"]["Projection"]["ProjectionType"] == "KEYS_ONLY"
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert report["table"] == {
        "name": fresh.table_name,
        "arn": table["TableArn"],
        "stream_arn": table["LatestStreamArn"],
    }


def test_a_table_that_exists_without_indexes_or_stream_is_brought_up_to_date(fresh: Settings) -> None:
    # Given a demand table made by hand: the key, nothing else
    ddb = aws.client("dynamodb", fresh)
    ddb.create_table(
        TableName=fresh.table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )

    report = provision(fresh)

    table = ddb.describe_table(TableName=fresh.table_name)["Table"]
    assert {g["IndexName"] for g in table.get("GlobalSecondaryIndexes", [])} == {"gsi1", "gsi2"}
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert report["table"]["stream_arn"] == table["LatestStreamArn"]


def test_the_checkpoint_table_is_keyed_by_stream_and_shard_and_has_no_stream(fresh: Settings) -> None:
    report = provision(fresh)

    table = aws.client("dynamodb", fresh).describe_table(TableName=fresh.checkpoint_table_name)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"stream": "HASH", "shard": "RANGE"}
    assert not table.get("StreamSpecification", {}).get("StreamEnabled", False)
    assert report["checkpoint_table"] == {"name": fresh.checkpoint_table_name, "arn": table["TableArn"]}


def test_the_status_stream_is_created_active(fresh: Settings) -> None:
    report = provision(fresh)

    summary = aws.client("kinesis", fresh).describe_stream_summary(StreamName=fresh.sms_status_stream_name)
    summary = summary["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE"
    assert report["streams"] == [{"name": fresh.sms_status_stream_name, "arn": summary["StreamARN"]}]


def test_a_kinesis_stream_is_created_once_with_its_shards(fresh: Settings) -> None:
    # (the demand table's own Kinesis destination cannot be provisioned on moto, which lacks the
    # DynamoDB Kinesis streaming destination API; its stream is made the same way as this one)
    name = f"test-demand-changes-{fresh.queue_name_prefix[1:-1]}"

    first = ensure_kinesis_stream(fresh, name, shard_count=2)
    second = ensure_kinesis_stream(fresh, name, shard_count=2)

    assert second == first and first["name"] == name
    assert len(aws.client("kinesis", fresh).list_shards(StreamName=name)["Shards"]) == 2


def test_a_table_whose_stream_has_another_view_type_gets_a_new_and_old_images_stream() -> None:
    """DynamoDB refuses to change an enabled stream's view type: provision disables it, waits, enables
    NEW_AND_OLD_IMAGES. (moto never enables a second stream on a table, so the calls are checked
    against botocore's Stubber, in the order DynamoDB requires them.)"""
    ddb = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x").client(
        "dynamodb"
    )
    keys_only = {
        "TableName": "tbl",
        "TableStatus": "ACTIVE",
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
    }
    both = {
        "TableName": "tbl",
        "TableStatus": "ACTIVE",
        "LatestStreamArn": "arn:aws:dynamodb:us-east-1:123456789012:table/tbl/stream/2026-11-26T00:00:00.000",
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    }
    with Stubber(ddb) as stub:
        stub.add_response("update_table", {}, {"TableName": "tbl", "StreamSpecification": {"StreamEnabled": False}})
        stub.add_response(
            "describe_table", {"Table": {"TableName": "tbl", "TableStatus": "ACTIVE"}}, {"TableName": "tbl"}
        )
        stub.add_response(
            "update_table",
            {},
            {
                "TableName": "tbl",
                "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
            },
        )
        stub.add_response("describe_table", {"Table": both}, {"TableName": "tbl"})
        table = _ensure_stream(ddb, keys_only)
        stub.assert_no_pending_responses()
    assert (
        table["LatestStreamArn"] == "arn:aws:dynamodb:us-east-1:123456789012:table/tbl/stream/2026-11-26T00:00:00.000"
    )


def test_a_table_with_the_right_stream_is_left_alone() -> None:
    table = {"TableName": "tbl", "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}}
    assert _ensure_stream(object(), table) is table  # no call made: the client is not even a client


# --- the demand pipe (EventBridge Pipes: the demand stream read without bridge-demand) ----------


def change(event_name: str, new: dict[str, Any] | None, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """A DynamoDB Streams record as Pipes filters it (and puts it on the intake queue)."""
    record = pipes_change(new or old or {})
    record["eventName"] = event_name
    if new is None:
        del record["dynamodb"]["NewImage"]
    if old is not None:
        record["dynamodb"]["OldImage"] = serialize(old)
    return record


def notification(status: str) -> dict[str, Any]:
    return {"pk": "SALE#s1", "sk": "NOTIFICATION#f1", "entity": "NOTIFICATION", "id": "s1:f1", "status": status}


def sale(status: str) -> dict[str, Any]:
    return {
        "pk": "SALE#s1",
        "sk": "SALE",
        "entity": "SALE",
        "id": "s1",
        "status": status,
        "notifyAt": "2026-12-07T10:00:00Z",
    }


def test_the_demand_pipe_passes_exactly_the_changes_the_pipeline_routes() -> None:
    # the pipe's filters, read as EventBridge reads them (moto's implementation of its patterns)
    patterns = [EventPattern.load(json.dumps(f)) for f in DEMAND_PIPE_FILTERS]
    demand = {"pk": "EVENT#e1", "sk": "DEMAND#f1", "entity": "DEMAND", "eventId": "e1", "fanId": "f1"}
    event = {"pk": "EVENT#e1", "sk": "EVENT", "entity": "EVENT", "url": "https://www.ticketmaster.com/e/1"}
    cases = [
        change("INSERT", demand),
        change("MODIFY", demand, demand),
        change("REMOVE", None, demand),
        change("INSERT", event),
        change("INSERT", notification("pending")),
        change("MODIFY", notification("scheduled"), notification("pending")),
        change("MODIFY", notification("sent"), notification("sending")),
        change("MODIFY", notification("scheduled"), notification("sending")),  # a retry
        change("INSERT", sale("waiting")),
        change("MODIFY", sale("generating"), sale("waiting")),
        change("MODIFY", sale("waiting"), sale("generated")),  # re-written by the product: a re-run
        change("REMOVE", None, sale("waiting")),
    ]
    for record in cases:
        passed = any(p.matches_event(record) for p in patterns)  # type: ignore[arg-type]
        routed = record["eventName"] != "REMOVE" and route_change(parse_change(record)) is not None
        wakes = is_sale_waiting(parse_change(record))
        assert passed == (routed or wakes), (record["eventName"], record["dynamodb"].get("NewImage"))
    # the demand row's INSERT, and the two writes of a waiting sale
    assert sum(any(p.matches_event(r) for p in patterns) for r in cases) == 3  # type: ignore[arg-type]


def test_provision_creates_the_demand_pipe_when_given_its_role(fresh: Settings) -> None:
    piped = fresh.model_copy(update={"demand_pipe_role_arn": "arn:aws:iam::123456789012:role/dmd-pipe"})
    first = provision(piped)["demand_pipe"]
    assert first["created"] and first["name"] == f"{fresh.queue_name_prefix}demand-pipe"
    again = provision(piped)["demand_pipe"]
    assert again == {**first, "created": False}
    pipe = aws.client("pipes", piped).describe_pipe(Name=first["name"])
    assert pipe["Source"] == provision(piped)["table"]["stream_arn"]
    assert pipe["Target"].endswith(f":{fresh.queue_name_prefix}intake-demand")
    filters = pipe["SourceParameters"]["FilterCriteria"]["Filters"]
    assert [json.loads(f["Pattern"]) for f in filters] == DEMAND_PIPE_FILTERS
    params = pipe["SourceParameters"]["DynamoDBStreamParameters"]
    assert params["DeadLetterConfig"]["Arn"].endswith(f":{fresh.queue_name_prefix}intake-demand-dlq")
    aws.client("pipes", piped).delete_pipe(Name=first["name"])
    assert "demand_pipe" not in provision(fresh)  # not asked for: none


@pytest.mark.parametrize("role", ["sms_provider", "sms_failover_provider"])
def test_the_end_user_messaging_configuration_set_is_made_when_it_sends_at_all(fresh: Settings, sim, role: str) -> None:
    # Given End User Messaging as the provider, or only as the failover provider (the simulator plays it)
    endpoint = f"http://{fresh.simulator_host}:{fresh.simulator_port}"
    name = f"dmd-{role.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    mine = fresh.model_copy(
        update={
            role: "eum",
            "eum_configuration_set": name,
            "eum_endpoint_url": endpoint,
            "eum_origination_identity": "+18005550199",
        }
    )

    # When provisioned, then the configuration set exists, its events going to the SMS events topic
    report = provision(mine)
    assert report["eum_configuration_set"] == {"name": name, "topic_arn": report["sms_events"]["topic_arn"]}
    eum = aws.session_for(mine).client("pinpoint-sms-voice-v2", endpoint_url=endpoint)
    (found,) = eum.describe_configuration_sets(ConfigurationSetNames=[name])["ConfigurationSets"]
    assert [d["SnsDestination"]["TopicArn"] for d in found["EventDestinations"]] == [report["sms_events"]["topic_arn"]]
    # and the topic lets End User Messaging publish those events, from this configuration set only
    topic = report["sms_events"]["topic_arn"]
    policy = json.loads(aws.client("sns", mine).get_topic_attributes(TopicArn=topic)["Attributes"]["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"Service": "sms-voice.amazonaws.com"} and statement["Action"] == "sns:Publish"
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"].endswith(f":configuration-set/{name}")
