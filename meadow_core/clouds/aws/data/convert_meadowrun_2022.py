"""Rebuild ``ec2-us-east-2-2022-11.json`` from Meadowrun's 2022 price test snapshot.

Usage: python meadow_core/clouds/aws/data/convert_meadowrun_2022.py SOURCE.json
(SOURCE: the ``aws-ec2-prices-us-east-2.json`` Meadowrun published.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from meadow_core.clouds.aws.catalog import EVICTION_BANDS, CatalogData, InstanceType, band_rate

_AVX = {1: ("avx",), 2: ("avx", "avx2"), 3: ("avx", "avx2", "avx512")}
_RENAME = {"amd_cpu": "amd"}
#: Meadowrun's file lists 1152 GB (the host memory); the A100s have 8 x 40 GB.
_GPU_MEMORY_FIX = {"p4d.24xlarge": 320.0}


def convert(rows: list[dict[str, object]]) -> CatalogData:
    data = CatalogData(
        region="us-east-2",
        date="2022-11",
        sources={
            "all": "Meadowrun's published test snapshot of public AWS prices "
            "(aws-ec2-prices-us-east-2.json), November 2022"
        },
        types={},
        on_demand={},
        spot={},
        eviction_band={},
    )
    band_of = {round(100 - band_rate(i), 3): i for i in range(len(EVICTION_BANDS))}
    for row in rows:
        name = str(row["name"])
        res = row["resources"]
        assert isinstance(res, dict)
        used, other = res["consumable"], res.get("non_consumable", {})
        flags = {"x86_64"}
        for key, value in other.items():
            if key == "avx":
                flags.update(_AVX[int(value)])
            elif key != "eviction_rate_inverse":
                flags.add(_RENAME.get(key, key))
        data.types[name] = InstanceType(
            name=name,
            logical_cpu=float(used["logical_cpu"]),
            memory_gb=float(used["memory_gb"]),
            gpus=float(used.get("gpu", 0)),
            gpu_memory_gb=_GPU_MEMORY_FIX.get(name, float(used.get("gpu_memory", 0))),
            architecture="x86_64",
            flags=frozenset(flags),
        )
        price = float(row["price"])  # type: ignore[arg-type]
        if row["on_demand_or_spot"] == "spot":
            data.spot[name] = price
            data.eviction_band[name] = band_of[round(float(other["eviction_rate_inverse"]), 3)]
        else:
            data.on_demand[name] = price
    return data


if __name__ == "__main__":
    source = json.loads(Path(sys.argv[1]).read_text())
    out = Path(__file__).with_name("ec2-us-east-2-2022-11.json")
    out.write_text(convert(source).to_json())
    print(f"wrote {out}")
