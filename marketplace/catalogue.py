"""Loads the catalogues (regions, chips, models) from the CSV fixtures the project keeps.

The fixtures are the project's own copy of ../shared/data. Loading is an upsert by natural key,
so it is safe to run again (the migration runs it once; ``manage.py load_catalogues`` refreshes).
Model classes are passed in so a data migration can use its historical models.
"""
from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

from django.utils.text import slugify

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _rows(name: str) -> list[dict[str, str]]:
    with open(FIXTURES / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def chip_code(vendor: str, model: str) -> str:
    return slugify(f"{vendor} {model}")


def load_catalogues(*, Region, ChipType, AIModel) -> dict[str, int]:
    regions = _rows("regions.csv")
    by_code = {}
    # Parents come before children in the file; two passes keep that from mattering.
    for row in regions:
        region, _ = Region.objects.update_or_create(
            code=row["code"],
            defaults={"name_en": row["name_en"], "name_zh": row["name_zh"], "kind": row["kind"],
                      "hub": row["hub"], "lat": float(row["lat"]), "lon": float(row["lon"])},
        )
        by_code[row["code"]] = region
    for row in regions:
        if row["parent"]:
            Region.objects.filter(code=row["code"]).update(parent=by_code[row["parent"]])

    chips = _rows("chips.csv")
    for row in chips:
        ChipType.objects.update_or_create(
            vendor=row["vendor"], model=row["model"],
            defaults={"code": chip_code(row["vendor"], row["model"]),
                      "memory_gb": int(row["memory_gb"]) if row["memory_gb"] else None,
                      "memory_type": row["memory_type"],
                      "bf16_tflops": int(row["bf16_dense_tflops_approx"]) if row["bf16_dense_tflops_approx"] else None,
                      "domestic": row["domestic"] == "yes", "notes": row["notes"]},
        )

    models = _rows("models.csv")
    for row in models:
        AIModel.objects.update_or_create(
            name=row["name"],
            defaults={"params_billion": Decimal(row["params_billion"]),
                      "native_precision": row["native_precision"], "architecture": row["architecture"],
                      "notes": row["notes"]},
        )
    return {"regions": len(regions), "chips": len(chips), "models": len(models)}
