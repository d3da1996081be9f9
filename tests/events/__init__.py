"""Sample records in AWS's exact formats (the JSON files beside this module), and a loader."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load(name: str) -> dict[str, Any]:
    """A fresh copy of the sample ``name`` (a file of this folder)."""
    return copy.deepcopy(json.loads((HERE / name).read_text()))


def demand_insert(event_id: str, fan_id: str, seq: int) -> dict[str, Any]:
    """The DynamoDB Streams INSERT of a demand row, with its own event id and sequence number."""
    record = load("ddb_stream_demand_insert.json")
    record["eventID"] = f"e{seq}"
    record["dynamodb"]["SequenceNumber"] = str(seq)
    image = record["dynamodb"]["NewImage"]
    image["eventId"] = {"S": event_id}
    image["fanId"] = {"S": fan_id}
    return record
