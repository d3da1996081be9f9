"""SALE items: claiming due sales, the generator's lease and checkpoint, the active list.

A sale is ``waiting`` (in gsi1 under ``SALES#waiting`` by notify time), then
``generating`` under a lease (gsi1 ``SALES#generating`` by lease expiry, gsi2
``ACTIVE_SALES``), then ``generated`` (or ``failed`` with a reason), and leaves the active
list once the reconciler has seen none of its notifications in flight, twice.

The SALE item is the product's: re-saving a sale replaces it. So the pipeline records each
sale's runs on an item of its own (``RUN``, beside it): a claim starts a run only if none
ran yet or an operator asked for one (``dmd sales rerun``); a sale re-written as ``waiting``
after it ran is restored to its run's state instead of being generated again.
"""

from __future__ import annotations

from dmd_tasks.store.sales.base import sale_item
from dmd_tasks.store.sales.claiming import Claiming
from dmd_tasks.store.sales.retiring import Retiring
from dmd_tasks.store.sales.running import Running

__all__ = ["SaleRecords", "sale_item"]


class SaleRecords(Claiming, Running, Retiring):
    """Every write and read of SALE items, by who makes it (one module each)."""
