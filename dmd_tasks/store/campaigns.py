"""The campaign store: campaigns by sale id in a pymongo(-compatible) collection.

A MongoDB collection through pymongo when ``DMD_MONGO_URL`` is set; otherwise an embedded
pymongo-compatible store on disk (montydb, SQLite engine, in the run directory), so the
local stack needs no MongoDB server. ``CampaignStore`` uses only the API the two share.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from dmd_tasks.domain.campaigns import Campaign
from dmd_tasks.domain.errors import InvalidCampaign
from dmd_tasks.infra.extras import require
from dmd_tasks.infra.settings import Settings


class CampaignStore:
    def __init__(self, collection: Any, max_parts: int = 6) -> None:
        self._collection = collection
        self._max_parts = max_parts

    def put(self, campaign: Campaign) -> None:
        """Store a campaign; InvalidCampaign if its message would take more than the allowed SMS parts."""
        segments = campaign.estimated_segments()
        if segments.parts > self._max_parts:
            raise InvalidCampaign(
                f"campaign of sale {campaign.sale_id}: its message would take {segments.parts} SMS parts "
                f"({segments.encoding}, {segments.units} units), more than the {self._max_parts} allowed"
            )
        document = {"_id": campaign.sale_id, **campaign.model_dump(mode="json", by_alias=True)}
        self._collection.replace_one({"_id": campaign.sale_id}, document, upsert=True)

    def get(self, sale_id: str) -> Campaign | None:
        """The sale's campaign, None if it has none; InvalidCampaign if the stored one no longer validates."""
        document = self._collection.find_one({"_id": sale_id})
        if document is None:
            return None
        document.pop("_id", None)
        try:
            return Campaign.model_validate(document)
        except ValidationError as exc:
            raise InvalidCampaign(f"campaign of sale {sale_id} is invalid: {exc.errors()[0]['msg']}") from exc


#: what opening the embedded store imports on its first use (montydb 2.5, its SQLite storage)
_EMBEDDED_DRIVER = (
    "montydb",
    "montydb.storage.sqlite",
    "montydb.types._nobson",
    "montydb.types.objectid",
    "montydb.types.tz_util",
    "bson",
)


def load_driver(settings: Settings) -> None:
    """Import the store's driver now, without connecting: a prefork worker calls this before it
    forks, so that its children do not each import it (~10 ms of CPU) on their first send."""
    for module in ("pymongo",) if settings.mongo_url is not None else _EMBEDDED_DRIVER:
        try:
            importlib.import_module(module)
        except ImportError:  # not installed: opening the store says so (``require``)
            return


def open_campaign_store(settings: Settings) -> CampaignStore:
    client: Any
    if settings.mongo_url is not None:
        import pymongo  # only deployments with a MongoDB load the driver

        client = pymongo.MongoClient(settings.mongo_url.get_secret_value(), serverSelectionTimeoutMS=5000)
    else:
        require("the embedded campaign store (no DMD_MONGO_URL)", "montydb")
        from montydb import MontyClient, set_storage  # only the embedded store loads montydb

        path = settings.run_dir.resolve() / "campaigns"
        path.mkdir(parents=True, exist_ok=True)
        if not (path / "monty.storage.cfg").exists():
            set_storage(str(path), storage="sqlite")
        client = MontyClient(str(path))
    return CampaignStore(client[settings.mongo_database]["campaigns"], settings.max_message_parts)
