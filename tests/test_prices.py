"""The price catalog: built from recorded slices of public price sources (never the network), looked up
by region and spot, and shown by `launch prices`."""

from __future__ import annotations

import json

import pytest

from autoscaler import price_catalog, pricing
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
    h100 = gcp["a3-highgpu-1g"]
    assert h100["regions"]["us-east4"] == {"on_demand": 1.18251, "spot": 0.21294, "source": "test"}
    # GCP's GPU families name no accelerator in the rows: known from the machine type
    assert (h100["accelerators"], gcp["a2-megagpu-16g"]["accelerators"]) == ({"H100": 1}, {"A100": 16})
    assert gcp["a2-ultragpu-8g"]["accelerators"] == {"A100-80GB": 8}


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
           "gcp": {"a3-highgpu-1g": {"regions": {"us-central1": {"on_demand": 9.9, "spot": None, "source": "old"},
                                                 "asia-east1": {"on_demand": 1.4, "spot": None, "source": "old"}}},
                   "n2-standard-2": {"regions": {"us-central1": {"on_demand": 0.1, "spot": None, "source": "old"}}}}}
    out.write_text(json.dumps(old))
    assert price_catalog.main(["--skypilot", f"gcp={DATA / 'skypilot-gcp-vms.csv'}", "--date", "2026-12-05",
                               "--commit", "abc", "-o", str(out)]) == 0
    built = json.loads(out.read_text())
    regions = built["gcp"]["a3-highgpu-1g"]["regions"]
    assert regions["us-central1"]["on_demand"] == 1.18251 and regions["us-central1"]["source"] == "skypilot-gcp-2026-12-05"
    assert regions["asia-east1"]["source"] == "old"  # not in the new source: kept
    assert built["gcp"]["n2-standard-2"] == old["gcp"]["n2-standard-2"]
    assert built["sources"]["skypilot-gcp-2026-12-05"]["date"] == "2026-12-05"
    assert "at abc" in built["sources"]["skypilot-gcp-2026-12-05"]["what"]


def test_the_shipped_catalog_dates_every_price_and_no_spot_price_exceeds_on_demand():
    catalog = json.loads((ROOT / "autoscaler" / "prices.json").read_text())
    assert catalog["format"] == price_catalog.FORMAT
    for cloud in ("aws", "gcp", "azure", "gcp_accelerators"):
        for machine, entry in catalog[cloud].items():
            for region, p in entry["regions"].items():
                assert catalog["sources"][p["source"]]["date"], (cloud, machine, region)
                assert p["on_demand"] > 0 and (p["spot"] is None or 0 < p["spot"] <= p["on_demand"]), (machine, region)


def _config(region: str, **types) -> object:
    return parse_config({"cluster_name": "c", "provider": {"type": "gcp", "region": region, "project_id": "p",
                                                            "availability_zone": f"{region}-a"},
                         "auth": {"ssh_user": "u"}, "head_node_type": "head",
                         "available_node_types": {"head": {"node_config": {"machineType": "n2-standard-2"},
                                                           "max_workers": 0}, **types}})


def test_a_node_type_is_priced_in_its_region_spot_when_spot_and_says_from_where():
    h100 = {"node_config": {"machineType": "a3-highgpu-1g"}}
    cfg = _config("us-east4", od=h100, sp={**h100, "spot": True},
                  preemptible={"node_config": {"machineType": "a3-highgpu-1g", "scheduling": [{"preemptible": True}]}},
                  a100={"node_config": {"machineType": "a2-ultragpu-1g"}},
                  declared={**h100, "cost_per_hour": 3.0}, unknown={"node_config": {"machineType": "z9-x"},
                                                                    "resources": {"CPU": 4}})
    q = {n: pricing.quote(cfg, n) for n in cfg.available_node_types}
    assert (q["od"].per_hour, q["sp"].per_hour, q["preemptible"].per_hour) == (1.18251, 0.21294, 0.21294)
    assert q["sp"].source == "catalog: skypilot-gcp-2026-12-05, us-east4 spot"
    assert q["a100"].per_hour == 1.23833  # us-east4's own price, not us-central1's 1.09962
    assert (q["declared"].per_hour, q["declared"].source) == (3.0, "the config's cost_per_hour")
    assert q["unknown"].source.startswith("estimate") and q["unknown"].per_hour == pytest.approx(0.16)
    # a type the catalog prices in another region only: the cloud's default region's price, said so
    far = pricing.quote(_config("asia-south1", od=h100), "od")
    assert far.per_hour == 1.18251 and "us-central1's price (none for asia-south1)" in far.source
    # a spot type whose price has no spot figure: on demand, said so
    n2 = pricing.quote(_config("us-central1", sp={"node_config": {"machineType": "n2-standard-2"}, "spot": True}), "sp")
    assert "no spot price: on-demand" in n2.source


def test_launch_prices_lists_the_cheapest_first_and_prices_a_configs_node_types(tmp_path):
    r = cli("prices", "--gpu", "h100", "--spot", "--json", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and all("H100" in row["accelerators"] for row in rows)
    assert [row["spot"] for row in rows] == sorted(row["spot"] for row in rows)
    r = cli("prices", "--gpu", "A100", "--region", "us-central1", home=tmp_path / "home")
    assert r.returncode == 0 and "a2-megagpu-16g" in r.stdout and "$/GPU-h" in r.stdout
    path = write_config(tmp_path / "c.yaml", {
        "cluster_name": "c", "provider": {"type": "gcp", "region": "us-east4", "availability_zone": "us-east4-a",
                                          "project_id": "p"}, "auth": {"ssh_user": "u"}, "head_node_type": "head",
        "available_node_types": {"head": {"node_config": {"machineType": "n2-standard-2"}, "max_workers": 0},
                                 "h100": {"node_config": {"machineType": "a3-highgpu-1g"}, "spot": True}}})
    r = cli("prices", str(path), "--json", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert {row["node_type"]: row["per_hour"] for row in json.loads(r.stdout)}["h100"] == 0.21294
    for args, line in ((["--cloud", "gpc"], "error: --cloud: 'gpc': expected aws, gcp or azure"),
                       (["--gpu", "B300"], "error: prices: no instance type of the catalog matches --gpu B300")):
        r = cli("prices", *args, home=tmp_path / "home")
        assert r.returncode == 2 and r.stderr.strip() == line and "Traceback" not in r.stderr
