"""The monitor's refresh of the cloud's live spot prices (a part of autoscaler/monitor.py's Monitor)."""

from __future__ import annotations

from autoscaler.pricing import LIVE_STALE_S, LivePrice, live_wanted
from autoscaler.upkeep import _describe


class LivePrices:
    """A part of the Monitor (its cfg, lifecycle, pool, clock, live_prices, prices_asked, event), not used alone."""

    def refresh_prices(self, now: float) -> None:
        """Every provider.spot_prices_every_s, the cloud's spot prices of the spot types (on a thread: a slow cloud
        holds no tick); a failure keeps the prices it had, said in the event log."""
        wanted = live_wanted(self.cfg)
        provider = self.lifecycle.provider
        if (not wanted or not provider.capabilities.live_spot_prices
                or now - self.prices_asked < provider.spot_prices_every_s):
            return
        self.prices_asked = now

        def ask() -> None:
            try:
                found = provider.spot_prices(wanted)
            except Exception as e:  # noqa: BLE001  the catalog's prices serve meanwhile
                self.event("prices-failed", error=_describe(e))
                return
            at = self.clock()
            stale = max(LIVE_STALE_S, 2 * provider.spot_prices_every_s)  # (a list asked daily is not stale in an hour)
            self.live_prices.update({m: LivePrice(p, at, stale) for m, p in found.items()})
            self.event("prices", spot={m: round(p, 6) for m, p in sorted(found.items())})

        self.pool.submit(ask)
