"""The price catalog: built from recorded slices of public price sources (never the network), looked up
by region and spot, and shown by `launch prices`."""

from __future__ import annotations

import json

import pytest

from autoscaler import price_catalog, pricing
from providers import prices
from lifecycle.config import parse_config
from tests.infra import ROOT, cli, write_config

DATA = ROOT / "tests" / "data" / "prices"


def _read(cloud: str) -> dict:
    with open(DATA / f"skypilot-{cloud}-vms.csv", newline="") as f:
        return price_catalog.read_skypilot(cloud, f, "test")


def test_a_skypilot_catalog_becomes_per_region_prices_with_the_cheapest_zones_spot():
    aws, gcp = _read("aws"), _read("gcp")
    c1 = aws["c1.medium"]["regions"]
    assert c1["us-east-1"] == {"on_demand": 0.13, "spot": 0.0325, "source": "test"}  # its 4 zones' lowest
    assert set(c1) == {"us-east-1", "us-west-2", "eu-west-1"}
    assert (aws["c1.medium"]["cpus"], aws["c1.medium"]["memory_gib"]) == (2.0, 1.69921875)
    # GCP's rows price a GPU family's machine without its GPUs (their prices are rows of their own, which
    # this slice lacks): not published at a fraction of its price
    assert gcp == {}


def test_a_gcp_gpu_machine_is_priced_with_its_gpus_where_the_file_prices_them():
    recorded = (DATA / "skypilot-gcp-vms.csv").read_text().splitlines()
    header, rows = recorded[0], [r for r in recorded[1:] if r.startswith(("a3-highgpu-1g,", "a2-megagpu-16g,"))]
    # GPU rows in the file's own form (no instance type; the accelerator named), prices made up for the test
    gpus = [",,,H100,1,H100,us-east4,us-east4-a,10.0,3.0", ",,,A100,1,A100,us-central1,us-central1-a,2.0,"]
    got = price_catalog.read_skypilot("gcp", [header, *rows, *gpus], "test")
    assert got["a3-highgpu-1g"]["regions"] == {"us-east4": {"on_demand": 11.18251, "spot": 3.21294, "source": "test"}}
    assert got["a3-highgpu-1g"]["accelerators"] == {"H100": 1}
    # 16 A100s on top of the host; no spot price for the GPU: no spot price for the machine
    assert got["a2-megagpu-16g"]["regions"] == {"us-central1": {"on_demand": 40.79698, "spot": None, "source": "test"}}


def test_a_file_that_is_not_a_catalog_is_named_and_changes_nothing(tmp_path, capsys):
    bad = tmp_path / "vms.csv"
    bad.write_text("InstanceType,Price\nx,1\n")
    out = tmp_path / "prices.json"
    out.write_text(json.dumps({"format": 2, "aws": {}}))
    assert price_catalog.main(["--skypilot", f"aws={bad}", "--date", "2026-12-05", "-o", str(out)]) == 2
    assert "not a SkyPilot catalog: no MemoryGiB, Region, SpotPrice, vCPUs column" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"format": 2, "aws": {}}
    bad.write_text((DATA / "skypilot-aws-vms.csv").read_text().replace("0.051,", "cheap,", 1))
    assert price_catalog.main(["--skypilot", f"aws={bad}", "--date", "2026-12-05", "-o", str(out)]) == 2
    assert "line 2: Price: 'cheap' is not a number" in capsys.readouterr().err


def test_a_build_lays_new_prices_over_the_catalog_and_dates_them(tmp_path):
    out = tmp_path / "prices.json"
    old = {"format": 2, "sources": {"old": {"what": "by hand", "date": "2024-06"}},
           "aws": {"c1.medium": {"regions": {"us-east-1": {"on_demand": 9.9, "spot": None, "source": "old"},
                                             "sa-east-1": {"on_demand": 1.4, "spot": None, "source": "old"}}},
                   "m5.large": {"regions": {"us-east-1": {"on_demand": 0.1, "spot": None, "source": "old"}}}}}
    out.write_text(json.dumps(old))
    assert price_catalog.main(["--skypilot", f"aws={DATA / 'skypilot-aws-vms.csv'}", "--date", "2026-12-05",
                               "--commit", "abc", "-o", str(out)]) == 0
    built = json.loads(out.read_text())
    regions = built["aws"]["c1.medium"]["regions"]
    assert regions["us-east-1"] == {"on_demand": 0.13, "spot": 0.0325, "source": "skypilot-aws-2026-12-05"}
    assert regions["sa-east-1"]["source"] == "old"  # not in the new source: kept
    assert built["aws"]["m5.large"] == old["aws"]["m5.large"]
    assert built["sources"]["skypilot-aws-2026-12-05"]["date"] == "2026-12-05"
    assert "at abc" in built["sources"]["skypilot-aws-2026-12-05"]["what"]


def test_the_shipped_catalog_dates_every_price_and_no_spot_price_exceeds_on_demand():
    catalog = json.loads(prices.CATALOG.read_text())
    assert catalog["format"] == price_catalog.FORMAT
    for cloud in ("aws", "gcp", "azure", "gcp_accelerators"):
        for machine, entry in catalog[cloud].items():
            for region, p in entry["regions"].items():
                assert catalog["sources"][p["source"]]["date"], (cloud, machine, region)
                assert p["on_demand"] > 0 and (p["spot"] is None or 0 < p["spot"] <= p["on_demand"]), (machine, region)


@pytest.fixture
def recorded_catalog(monkeypatch):
    """The catalog as built from the recorded AWS slice (spot prices in several regions)."""
    built = {"format": 2, "sources": {"test": {"what": "tests/data/prices", "date": "2026-12-05"}},
             "default_regions": {"aws": "us-east-1"}, "aws": _read("aws")}
    monkeypatch.setattr(prices, "catalog", lambda: built)
    return built


def _config(region: str, **types) -> object:
    return parse_config({"cluster_name": "c", "provider": {"type": "aws", "region": region},
                         "auth": {"ssh_user": "u"}, "head_node_type": "head",
                         "available_node_types": {"head": {"node_config": {"InstanceType": "c3.2xlarge"},
                                                           "max_workers": 0}, **types}})


def test_a_node_type_is_priced_in_its_region_spot_when_spot_and_says_from_where(recorded_catalog):
    c1 = {"node_config": {"InstanceType": "c1.medium"}}
    cfg = _config("us-west-2", od=c1, sp={**c1, "spot": True},
                  market={"node_config": {"InstanceType": "c1.medium",
                                          "InstanceMarketOptions": {"MarketType": "spot"}}},
                  declared={**c1, "cost_per_hour": 3.0},
                  unknown={"node_config": {"InstanceType": "z9.huge"}, "resources": {"CPU": 4}})
    q = {n: pricing.quote(cfg, n) for n in cfg.available_node_types}
    assert (q["od"].per_hour, q["sp"].per_hour, q["market"].per_hour) == (0.13, 0.0415, 0.0415)
    assert q["sp"].source == "catalog: test (2026-12-05), us-west-2 spot"
    assert (q["declared"].per_hour, q["declared"].source) == (3.0, "the config's cost_per_hour")
    assert q["unknown"].source.startswith("estimate") and q["unknown"].per_hour == pytest.approx(0.16)
    # a type the catalog prices in other regions only: the cloud's default region's price, said so
    far = pricing.quote(_config("ap-south-1", od=c1), "od")
    assert far.per_hour == 0.13 and "us-east-1's price (none for ap-south-1)" in far.source
    # a type the catalog has in the region itself
    assert pricing.quote(_config("us-east-1", a1={"node_config": {"InstanceType": "a1.large"}}), "a1").per_hour == 0.051
    spot_in = pricing.offers(cloud="aws", spot=True)
    assert [o.spot for o in spot_in] == sorted(o.spot for o in spot_in) and spot_in[0].machine == "c1.medium"


def test_launch_prices_lists_the_cheapest_first_and_prices_a_configs_node_types(tmp_path):
    r = cli("prices", "--cloud", "aws", "--json", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and [row["on_demand"] for row in rows] == sorted(row["on_demand"] for row in rows)
    assert all(row["date"] for row in rows)
    r = cli("prices", "--cloud", "gcp", "--region", "us-central1", home=tmp_path / "home")
    assert r.returncode == 0 and "a2-highgpu-8g" in r.stdout and "$/GPU-h" in r.stdout
    path = write_config(tmp_path / "c.yaml", {
        "cluster_name": "c", "provider": {"type": "aws", "region": "us-west-2"}, "auth": {"ssh_user": "u"},
        "head_node_type": "head", "available_node_types": {
            "head": {"node_config": {"InstanceType": "m5.large"}, "max_workers": 0},
            "a100": {"node_config": {"InstanceType": "p4d.24xlarge"}, "spot": True}}})
    r = cli("prices", str(path), "--json", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    rows = {row["node_type"]: row for row in json.loads(r.stdout)}
    assert rows["a100"]["per_hour"] == 21.96
    assert rows["a100"]["source"] == ("catalog: skypilot-aws-p4d (2026-12), us-east-1's price (none for us-west-2) "
                                      "on-demand, no spot price: on-demand")
    for args, line in ((["--cloud", "gpc"], "error: --cloud: 'gpc': expected aws, gcp or azure"),
                       (["--gpu", "B300"], "error: prices: no instance type of the catalog matches --gpu B300")):
        r = cli("prices", *args, home=tmp_path / "home")
        assert r.returncode == 2 and r.stderr.strip() == line and "Traceback" not in r.stderr
