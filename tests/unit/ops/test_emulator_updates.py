"""The emulator's plain updates (dmd_tasks.ops.emulator_updates) end as moto's own update does.

In process (moto's mock, no sockets): the same UpdateItem and TransactWriteItems requests, on a
table with a stream and indexes, with moto's update and with the patch: the same items, answers,
errors and stream records; the plain ones without moto's validator, the others through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
from moto.dynamodb.parsing.validators import UpdateExpressionValidator

from dmd_tasks.ops.emulator import transact_write_items
from dmd_tasks.ops.emulator_updates import patch_updates
from tests.unit.ops.test_emulator import create_table

KEY = {"pk": {"S": "S#1"}, "sk": {"S": "N#1"}}

#: (request, whether it is plain: the patch applies it itself)
UPDATES: list[tuple[dict[str, Any], bool]] = [
    (
        {
            "UpdateExpression": "SET #s = :to, leaseUntil = :lease, gsi1pk = :g, gsi1sk = :gs REMOVE callStartedAt",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {
                ":to": {"S": "sending"},
                ":lease": {"N": "17.5"},
                ":g": {"S": "P#1"},
                ":gs": {"S": "0001"},
            },
            "ReturnValues": "ALL_NEW",
        },
        True,
    ),
    (
        {
            "UpdateExpression": "remove gsi1pk, gsi1sk, #missing set providerMessageId = :m, #p = :p, tags = :t",
            "ExpressionAttributeNames": {"#missing": "nothere", "#p": "parts"},
            "ExpressionAttributeValues": {
                ":m": {"S": "m-1"},
                ":p": {"N": "2"},
                ":t": {"M": {"a": {"L": [{"S": "x"}, {"N": "1"}]}, "b": {"SS": ["q", "r"]}}},
            },
            "ReturnValues": "UPDATED_OLD",
        },
        True,
    ),
    ({"UpdateExpression": "SET note = :e", "ExpressionAttributeValues": {":e": {"S": ""}}}, True),
    # each of these fails one of moto's checks: moto's path answers
    ({"UpdateExpression": "SET gsi1pk = :n", "ExpressionAttributeValues": {":n": {"N": "1"}}}, False),
    ({"UpdateExpression": "SET gsi2pk = :e", "ExpressionAttributeValues": {":e": {"S": ""}}}, False),
    ({"UpdateExpression": "SET sk = :v", "ExpressionAttributeValues": {":v": {"S": "N#2"}}}, False),
    ({"UpdateExpression": "SET a = :missing", "ExpressionAttributeValues": {":v": {"S": "x"}}}, False),
    ({"UpdateExpression": "SET status = :v", "ExpressionAttributeValues": {":v": {"S": "x"}}}, False),
    ({"UpdateExpression": "SET a = :v REMOVE a", "ExpressionAttributeValues": {":v": {"S": "x"}}}, False),
    # not plain: moto's path
    (
        {
            "UpdateExpression": "SET attempts = if_not_exists(attempts, :z) + :one, tags.c = :v",
            "ExpressionAttributeValues": {":z": {"N": "0"}, ":one": {"N": "1"}, ":v": {"S": "y"}},
            "ReturnValues": "ALL_NEW",
        },
        False,
    ),
    ({"UpdateExpression": "ADD n :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}, False),
    (
        {
            "UpdateExpression": "SET a = :v",
            "ConditionExpression": "attribute_exists(nope)",
            "ExpressionAttributeValues": {":v": {"S": "x"}},
        },
        False,
    ),
    ({"UpdateExpression": "SET big = :b", "ExpressionAttributeValues": {":b": {"S": "x" * 420_000}}}, True),
]


@pytest.fixture
def moto_update() -> Iterator[None]:
    """moto's own update_item and parse, restored after the test whatever it patched."""
    update, make = DynamoDBBackend.update_item, UpdateExpressionParser.__dict__["make"]
    transact = DynamoDBBackend.transact_write_items
    yield
    DynamoDBBackend.update_item = update  # type: ignore[method-assign]
    UpdateExpressionParser.make = make
    DynamoDBBackend.transact_write_items = transact  # type: ignore[method-assign]


def _run(patched: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any], list[bool]]:
    """Every request on a fresh table: (answers or errors, stream records, validator used per request)."""
    validated: list[bool] = []
    validate = UpdateExpressionValidator.validate

    def spy(self: Any) -> Any:
        validated[-1] = True
        return validate(self)

    monkeypatch.setattr(UpdateExpressionValidator, "validate", spy)
    with mock_aws():
        DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
        if patched:
            patch_updates(DynamoDBBackend)
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        streams = boto3.client("dynamodbstreams", region_name="us-east-1")
        stream = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
        arn = create_table(ddb, StreamSpecification=stream)["TableDescription"]["LatestStreamArn"]
        item = {**KEY, "status": {"S": "scheduled"}, "callStartedAt": {"N": "1"}, "gsi1pk": {"S": "P#0"}}
        ddb.put_item(TableName="t", Item=item)
        answers: list[Any] = []
        for request, _ in UPDATES:
            validated.append(False)
            try:
                answer = ddb.update_item(TableName="t", Key=KEY, **request)
                answers.append(answer.get("Attributes"))
            except ClientError as exc:
                answers.append((exc.response["Error"]["Code"], exc.response["Error"]["Message"]))
            answers.append(ddb.get_item(TableName="t", Key=KEY)["Item"])
        # a transaction of plain updates, and one on an item that is not there yet
        validated.append(False)
        other = {"pk": {"S": "S#1"}, "sk": {"S": "N#2"}}
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": "t",
                        "Key": key,
                        "UpdateExpression": "SET #s = :s REMOVE gsi1pk",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {":s": {"S": "sent"}},
                    }
                }
                for key in (KEY, other)
            ]
        )
        answers += [ddb.get_item(TableName="t", Key=k)["Item"] for k in (KEY, other)]
        shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        records = [
            (r["eventName"], r["dynamodb"].get("OldImage"), r["dynamodb"].get("NewImage"))
            for r in streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
        ]
    return answers, records, validated


def test_plain_updates_end_as_motos_own_and_the_rest_go_through_it(
    moto_update: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the same requests with moto's update and with the patch
    theirs, their_records, their_validations = _run(False, monkeypatch)
    ours, our_records, validated = _run(True, monkeypatch)
    # Then every answer, error, item and stream record is the same
    assert ours == theirs
    assert our_records == their_records
    assert len(our_records) >= 6
    # and the plain ones were applied without moto's validator, which moto used for each of them;
    # the others went as far into moto as before (a reserved word is refused before the update)
    for (_, plain), mine, moto in zip(UPDATES, validated, their_validations, strict=False):
        assert (mine, moto) == ((False, True) if plain else (moto, moto))
    assert sum(their_validations[: len(UPDATES)]) >= 10
    # the transaction: one plain update, one new item that moto creates
    assert validated[-1] is True
    # the errors are moto's: a sample
    errors = [a for a in theirs if isinstance(a, tuple)]
    assert len(errors) == 8
    assert any("Cannot update attribute sk" in message for _, message in errors)
