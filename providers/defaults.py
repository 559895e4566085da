"""Each provider's defaults, merged under a user's file the way Ray merges its `defaults.yaml`: a file
with only `cluster_name` and `provider` (plus auth) gets these node types; each top-level key the
file has replaces the default's whole. Node type names are Ray's, so a Ray user recognises them.
Instance types are current general-purpose ones (2026); no `ray` commands: launch starts its own
runtime. A node_config without an image gets the region's default image at bootstrap (aws).
"""

from __future__ import annotations

_GCP_DISK = {"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": {
    "diskSizeGb": 50, "sourceImage": "projects/deeplearning-platform-release/global/images/family/common-cpu"}}
_AZURE_IMAGE = {"imagePublisher": "microsoft-dsvm", "imageOffer": "ubuntu-2204", "imageSku": "2204-gen2",
                "imageVersion": "latest"}

DEFAULTS: dict[str, dict] = {
    "aws": {
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "aws", "region": "us-west-2", "availability_zone": "us-west-2a,us-west-2b",
                     "cache_stopped_nodes": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {"InstanceType": "m7i.large"}},
            "ray.worker.default": {"min_workers": 0, "max_workers": 2, "resources": {}, "spot": True,
                                   "node_config": {"InstanceType": "m7i.large"}},
        },
        "head_node_type": "ray.head.default",
    },
    "gcp": {
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "gcp", "region": "us-west1", "availability_zone": "us-west1-a"},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray_head_default": {"resources": {}, "node_config": {"machineType": "n4-standard-2",
                                                                  "disks": [_GCP_DISK]}},
            "ray_worker_small": {"min_workers": 0, "max_workers": 2, "resources": {}, "spot": True,
                                 "node_config": {"machineType": "n4-standard-2", "disks": [_GCP_DISK]}},
        },
        "head_node_type": "ray_head_default",
    },
    "azure": {
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "azure", "location": "westus2", "resource_group": "launch-cluster",
                     "cache_stopped_nodes": True},
        "auth": {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa", "ssh_public_key": "~/.ssh/id_rsa.pub"},
        "available_node_types": {
            "ray.head.default": {"resources": {}, "node_config": {"azure_arm_parameters": {
                "vmSize": "Standard_D2s_v5", **_AZURE_IMAGE}}},
            "ray.worker.default": {"min_workers": 0, "max_workers": 2, "resources": {}, "spot": True,
                                   "node_config": {"azure_arm_parameters": {"vmSize": "Standard_D2s_v5",
                                                                            **_AZURE_IMAGE}}},
        },
        "head_node_type": "ray.head.default",
    },
    "local": {  # nodes as processes on this machine
        "max_workers": 2,
        "idle_timeout_minutes": 5,
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "max_workers": 0},
            "ray.worker.default": {"min_workers": 0, "max_workers": 2, "resources": {"CPU": 1}},
        },
        "head_node_type": "ray.head.default",
    },
}


def defaults_for(provider: dict) -> dict | None:
    """The defaults of the provider a config's `provider` section names (None: it has none)."""
    kind = provider.get("type")
    return DEFAULTS.get(kind) if isinstance(kind, str) else None
