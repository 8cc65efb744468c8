"""A trained intent model on disk, before export: torch weights + everything the export stage needs."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.data import Example
from models.text_encoder import IntentModel, base_model_dir
from runtime.errors import ExportError


@dataclass
class IntentCheckpoint:
    model: IntentModel
    labels: list[str]
    oos_label: str | None
    tokenizer_path: Path
    calibration: list[Example]
    meta: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), path / "model.pt")
        shutil.copyfile(self.tokenizer_path, path / "tokenizer.json")
        with open(path / "calibration.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((e.text, e.label) for e in self.calibration)
        meta = {**self.meta, "labels": self.labels, "oos_label": self.oos_label, "scale": self.model.scale}
        (path / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: Path) -> IntentCheckpoint:
        try:
            meta = json.loads((path / "meta.json").read_text())
            state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise ExportError(f"{path}: not an intent checkpoint ({Path(exc.filename).name} is missing)") from exc
        model = IntentModel.from_pretrained(len(meta["labels"]), base_model_dir(), scale=meta.get("scale", 20.0))
        model.load_state_dict(state)
        model.eval()
        with open(path / "calibration.csv", newline="", encoding="utf-8") as f:
            calibration = [Example(r["text"], r["label"]) for r in csv.DictReader(f)]
        return cls(model, meta["labels"], meta.get("oos_label"), path / "tokenizer.json", calibration, meta)
