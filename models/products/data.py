"""The Grocery Store dataset's files, read strictly: ``classes.csv`` and list files (``train.txt``, ``val.txt``).

A list line is ``relative/path.jpg, fine_id, coarse_id`` (paths relative to the data directory). Every
problem is a ``DataError`` naming the file and line: a wrong id silently trains the wrong product, and a
missing picture found 40 minutes into training wastes the run, so all of it is checked before the first step.
"""

from __future__ import annotations

import csv
import os
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import DataError, InputError

CLASSES_FILE = "classes.csv"
# Listing every missing file of a broken copy would bury the message; the count says the rest.
MAX_LISTED = 5


@dataclass(frozen=True)
class Catalog:
    """Class names and the fine → coarse tree (each fine class belongs to exactly one coarse class)."""

    fine_names: tuple[str, ...]
    coarse_names: tuple[str, ...]
    fine_to_coarse: tuple[int, ...]
    source: str = ""

    @property
    def n_fine(self) -> int:
        return len(self.fine_names)

    @property
    def n_coarse(self) -> int:
        return len(self.coarse_names)

    def as_dict(self) -> dict:
        return {"fine": list(self.fine_names), "coarse": list(self.coarse_names),
                "fine_to_coarse": list(self.fine_to_coarse)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> Catalog:
        return cls(tuple(d["fine"]), tuple(d["coarse"]), tuple(int(c) for c in d["fine_to_coarse"]), source)


@dataclass(frozen=True)
class Item:
    path: Path
    fine: int
    coarse: int
    line: int  # 1-based line in the list file, for error messages


def _int(text: str, what: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{where}: {what} {text.strip()!r} is not an integer") from None


def find_classes_file(data_dir: Path, list_file: Path | None = None) -> Path:
    for cand in (data_dir / CLASSES_FILE, *( [list_file.parent / CLASSES_FILE] if list_file else [])):
        if cand.is_file():
            return cand
    raise DataError(f"{data_dir / CLASSES_FILE} not found: the data directory needs the dataset's classes.csv "
                    "(columns: class name, class id, coarse class name, coarse class id)")


def read_classes(path: str | os.PathLike[str]) -> Catalog:
    """``classes.csv``: a header row, then ``name, id, coarse name, coarse id[, ...]``; ids must run 0..n-1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    fine: dict[int, str] = {}
    coarse: dict[int, str] = {}
    tree: dict[int, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and one row per class")
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        where = f"{path}:{n}"
        if len(row) < 4:
            raise DataError(f"{where}: expected at least 4 columns (name, id, coarse name, coarse id), got {len(row)}")
        fid, cid = _int(row[1], "class id", where), _int(row[3], "coarse class id", where)
        if fid in fine:
            raise DataError(f"{where}: class id {fid} appears twice")
        if coarse.setdefault(cid, row[2].strip()) != row[2].strip():
            raise DataError(f"{where}: coarse id {cid} is named {coarse[cid]!r} earlier but {row[2].strip()!r} here")
        fine[fid], tree[fid] = row[0].strip(), cid
    for what, ids in (("class", fine), ("coarse class", coarse)):
        if sorted(ids) != list(range(len(ids))):
            gaps = sorted(set(range(max(ids) + 1)) - set(ids))[:MAX_LISTED] if ids else []
            raise DataError(f"{path}: {what} ids must run 0..{len(ids) - 1} without gaps (missing: {gaps})")
    return Catalog(tuple(fine[i] for i in range(len(fine))), tuple(coarse[i] for i in range(len(coarse))),
                   tuple(tree[i] for i in range(len(fine))), source=str(path))


def read_list(list_file: str | os.PathLike[str], data_dir: str | os.PathLike[str], catalog: Catalog,
              check_files: bool = True) -> list[Item]:
    """Every line of ``list_file``, checked against ``catalog`` and (``check_files``) the disk."""
    list_file, data_dir = Path(list_file), Path(data_dir)
    if not list_file.is_file():
        raise DataError(f"list file {list_file} not found")
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} not found")
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{list_file} is not UTF-8 text (byte {exc.start})") from None
    items: list[Item] = []
    missing: list[str] = []
    root = data_dir.resolve()
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_file}:{n}"
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0]:
            raise DataError(f"{where}: expected 'relative/path.jpg, fine_id, coarse_id', got {line[:120]!r}")
        fid, cid = _int(parts[1], "fine id", where), _int(parts[2], "coarse id", where)
        if not 0 <= fid < catalog.n_fine:
            raise DataError(f"{where}: fine id {fid} is outside 0..{catalog.n_fine - 1} ({catalog.source or 'classes.csv'})")
        if not 0 <= cid < catalog.n_coarse:
            raise DataError(f"{where}: coarse id {cid} is outside 0..{catalog.n_coarse - 1}")
        if catalog.fine_to_coarse[fid] != cid:
            raise DataError(f"{where}: coarse id {cid} does not match classes.csv, where {catalog.fine_names[fid]!r} "
                            f"(fine {fid}) belongs to coarse {catalog.fine_to_coarse[fid]}")
        rel = parts[0].lstrip("/")
        path = data_dir / rel
        if not path.resolve().is_relative_to(root):
            raise DataError(f"{where}: path {parts[0]!r} points outside the data directory")
        if check_files and not path.is_file():
            missing.append(f"{rel} (line {n})")
        items.append(Item(path, fid, cid, n))
    if missing:
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{list_file}: {len(missing)} image(s) missing under {data_dir}: "
                        f"{', '.join(missing[:MAX_LISTED])}{more}")
    if not items:
        raise DataError(f"{list_file} lists no images")
    return items


def load_dataset(data_dir: str | os.PathLike[str], list_file: str | os.PathLike[str] | None = None,
                 check_files: bool = True) -> tuple[Catalog, list[Item]]:
    """``classes.csv`` + one list file (``--list``; relative names are looked up in ``data_dir`` too)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} not found")
    lf = Path(list_file) if list_file else data_dir / "train.txt"
    if not lf.is_file() and not lf.is_absolute() and (data_dir / lf).is_file():
        lf = data_dir / lf
    catalog = read_classes(find_classes_file(data_dir, lf))
    return catalog, read_list(lf, data_dir, catalog, check_files)


def load_item_image(item: Item) -> np.ndarray:
    """Decode one listed image (BGR, as the kiosk's camera delivers); a bad file is a DataError naming it."""
    from runtime.vision.images import load_image

    try:
        return load_image(item.path)
    except InputError as exc:
        raise DataError(f"{item.path} (line {item.line}): {exc.message}") from exc


def load_image_rgb_square(item: Item, side: int) -> np.ndarray:
    """Decode one listed image as RGB uint8, its short side resized to ``side`` (the cache the training loop
    crops from: decoding 348-px JPEGs every epoch would cost more than the augmentation)."""
    import cv2

    bgr = load_item_image(item)
    h, w = bgr.shape[:2]
    s = side / min(h, w)
    if s != 1.0:
        bgr = cv2.resize(bgr, (max(side, round(w * s)), max(side, round(h * s))),
                         interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return np.ascontiguousarray(bgr[..., ::-1])


def stratified_holdout(items: Sequence[Item], fraction: float, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """(train, held out): ``fraction`` of each fine class, at least one image where a class has two or more."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"holdout fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        by_class[it.fine].append(it)
    rng = random.Random(seed)
    train, held = [], []
    for fid in sorted(by_class):
        group = list(by_class[fid])
        rng.shuffle(group)
        k = 0 if fraction == 0 or len(group) < 2 else max(1, round(len(group) * fraction))
        held += group[:k]
        train += group[k:]
    return train, held


def class_counts(items: Sequence[Item]) -> Counter:
    return Counter(it.fine for it in items)
