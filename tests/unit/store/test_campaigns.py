"""The embedded campaign store (montydb on disk in the run directory): put, get, and a stored campaign gone bad."""

from __future__ import annotations

import os
import uuid
from datetime import time

import pytest

from dmd_tasks.domain.campaigns import Campaign, SendWindow
from dmd_tasks.domain.errors import InvalidCampaign, PermanentError
from dmd_tasks.infra.settings import Settings, load_settings
from dmd_tasks.store.campaigns import CampaignStore, open_campaign_store


@pytest.fixture()
def store(settings: Settings) -> CampaignStore:
    assert settings.mongo_url is None  # the embedded store
    return open_campaign_store(settings)


def campaign(**extra: object) -> Campaign:
    fields: dict[str, object] = {
        "saleId": f"sale{uuid.uuid4().hex[:12]}",
        "eventId": "ev1",
        "template": "Tickets are on sale: {{ short_url }}",
        "window": SendWindow(start=time(22), end=time(2)),
        "ratePerSecond": 12.5,
        **extra,
    }
    return Campaign.model_validate(fields)


def test_a_campaign_reads_back_as_it_was_put(store: CampaignStore) -> None:
    written = campaign()
    store.put(written)
    assert store.get(written.sale_id) == written


def test_a_sale_without_a_campaign_has_none(store: CampaignStore) -> None:
    assert store.get(f"sale{uuid.uuid4().hex[:12]}") is None


def test_putting_again_replaces_the_campaign(store: CampaignStore) -> None:
    first = campaign()
    store.put(first)
    second = first.model_copy(update={"rate_per_second": 99.0, "template": "Now: {{ short_url }}"})
    store.put(second)
    assert store.get(first.sale_id) == second


def test_campaigns_are_kept_on_disk_for_the_next_process(store: CampaignStore, settings: Settings) -> None:
    written = campaign()
    store.put(written)
    assert open_campaign_store(settings).get(written.sale_id) == written
    assert (settings.run_dir.resolve() / "campaigns").is_dir()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"template": "{{ unknown_variable }}"}, "invalid"),
        ({"ratePerSecond": 0}, "invalid"),
        ({"saleId": "bad id"}, "invalid"),
    ],
)
def test_a_stored_campaign_that_no_longer_validates_is_invalid(
    store: CampaignStore, change: dict[str, object], message: str
) -> None:
    # Given a campaign document changed around the API (another writer, an older version)
    written = campaign()
    store.put(written)
    document = store._collection.find_one({"_id": written.sale_id})
    document.update(change)
    store._collection.replace_one({"_id": written.sale_id}, document)
    # Then reading it is a permanent error that names the sale
    with pytest.raises(InvalidCampaign, match=f"campaign of sale {written.sale_id} is {message}") as raised:
        store.get(written.sale_id)
    assert isinstance(raised.value, PermanentError)


@pytest.mark.skipif(
    not os.environ.get("DMD_TEST_MONGO_URL"), reason="no MongoDB here; set DMD_TEST_MONGO_URL to check the pymongo path"
)
def test_the_mongodb_store_reads_back_what_it_was_given() -> None:
    store = open_campaign_store(load_settings(mongo_url=os.environ["DMD_TEST_MONGO_URL"]))
    campaign = Campaign(saleId=f"s{uuid.uuid4().hex[:6]}", eventId="e1", template="{{ short_url }}")
    store.put(campaign)
    assert store.get(campaign.sale_id) == campaign
    assert store.get("missing") is None


@pytest.mark.parametrize(
    ("template", "parts"),
    [
        ("{{ short_url }} " + "€" * 460, 7),  # GSM-7, two septets each: 944 > 6 × 153
        ("{{ short_url }} \u2764 " + "x" * 380, 7),  # one non-GSM character: UCS-2, 67 units a part
    ],
)
def test_a_campaign_whose_message_would_take_too_many_parts_is_refused(
    store: CampaignStore, template: str, parts: int
) -> None:
    refused = campaign(template=template)
    with pytest.raises(InvalidCampaign, match=f"{parts} SMS parts"):
        store.put(refused)
    assert store.get(refused.sale_id) is None
    # six parts are allowed
    fits = campaign(template="{{ short_url }} \u2764 " + "x" * 370)  # UCS-2: 395 units, 6 × 67 = 402
    store.put(fits)
    assert store.get(fits.sale_id) == fits
