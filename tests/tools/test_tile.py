"""`segcontainer tile` and the split assignment the converters share."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segcontainer.cli import main as cli
from segcontainer.tools.splits import assign_splits
from segcontainer.tools.tile import IMAGE_FILL, tile_origins

SIZE = (70, 50)  # not a multiple of the tile size: border tiles are padded


def make_layout(root: Path, names: dict[str, list[str]], empty: tuple[str, ...] = ()) -> None:
    rng = np.random.default_rng(0)
    for split, split_names in names.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}_annotation").mkdir(parents=True, exist_ok=True)
        for name in split_names:
            pixels = rng.integers(0, 255, (SIZE[1], SIZE[0], 3)).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / split / f"{name}.png")
            labels = np.zeros(SIZE[::-1], dtype=np.uint8)
            if name not in empty:
                labels[0:10, 0:10] = 1  # foreground only in the top-left tile
            Image.fromarray(labels, "L").save(root / f"{split}_annotation" / f"{name}.png")
    (root / "class_names.txt").write_text("background\nthing\n")


def tiles(out: Path, split: str) -> list[str]:
    return sorted(p.stem for p in (out / split).iterdir())


def test_tile_origins_reach_the_far_edge() -> None:
    assert tile_origins(100, 32, 32) == [0, 32, 64, 96]
    assert tile_origins(64, 32, 32) == [0, 32]
    assert tile_origins(10, 32, 32) == [0]
    assert tile_origins(70, 32, 16) == [0, 16, 32, 48]


def test_tiles_are_named_by_origin_and_padded_with_ignore(tmp_path: Path, capsys) -> None:
    make_layout(tmp_path / "in", {"train": ["a"], "validation": ["b"]})
    assert cli(["tile", str(tmp_path / "in"), str(tmp_path / "out"), "--size", "32"]) == 0
    out = tmp_path / "out"
    expected = [f"a_x{x}_y{y}" for x in (0, 32, 64) for y in (0, 32)]
    assert tiles(out, "train") == sorted(expected)  # IN's split is kept
    assert tiles(out, "validation") == sorted(e.replace("a_", "b_") for e in expected)
    corner = np.array(Image.open(out / "train_annotation" / "a_x64_y32.png"))
    assert corner.shape == (32, 32)
    assert (corner[:18, :6] == 0).all() and (corner[18:, :] == 255).all()
    assert (corner[:, 6:] == 255).all()
    image = np.array(Image.open(out / "train" / "a_x64_y32.png"))
    source = np.array(Image.open(tmp_path / "in" / "train" / "a.png"))
    np.testing.assert_array_equal(image[:18, :6], source[32:, 64:])
    assert (image[18:, :] == IMAGE_FILL).all()
    assert (out / "class_names.txt").read_text() == "background\nthing\n"
    printed = capsys.readouterr().out
    assert "train           6 tiles" in printed and "class_names=background,thing" in printed


def test_every_image_and_group_stays_on_one_side(tmp_path: Path, capsys) -> None:
    names = [f"cam{c}_{i:03d}" for c in range(4) for i in range(3)]
    make_layout(tmp_path / "in", {"train": names}, empty=("cam0_001",))
    args = ["tile", str(tmp_path / "in"), str(tmp_path / "out"), "--size", "32", "--drop-empty"]
    assert cli([*args, "--group-by", r"^(cam\d)_", "--validation-fraction", "0.25"]) == 0
    sides = {
        split: {re.sub(r"_x\d+_y\d+$", "", t) for t in tiles(tmp_path / "out", split)}
        for split in ("train", "validation")
    }
    assert sides["train"] and sides["validation"] and not sides["train"] & sides["validation"]
    cameras = {split: {n[:4] for n in sides[split]} for split in sides}
    assert not cameras["train"] & cameras["validation"]  # whole cameras on one side
    # --drop-empty: only the top-left tile of each image holds foreground.
    all_tiles = tiles(tmp_path / "out", "train") + tiles(tmp_path / "out", "validation")
    assert all(t.endswith("_x0_y0") for t in all_tiles) and len(all_tiles) == 11
    assert "; 61 tiles without foreground dropped" in capsys.readouterr().out


def test_kept_split_refuses_a_group_on_both_sides(tmp_path: Path, capsys) -> None:
    make_layout(tmp_path / "in", {"train": ["cam1_000"], "validation": ["cam1_001"]})
    args = ["tile", str(tmp_path / "in"), str(tmp_path / "out"), "--size", "32"]
    assert cli([*args, "--group-by", r"^(cam\d)_"]) == 1
    assert "groups on both sides" in capsys.readouterr().err


def test_tile_errors_name_the_file(tmp_path: Path, capsys) -> None:
    make_layout(tmp_path / "in", {"train": ["a"]})
    mask = tmp_path / "in" / "train_annotation" / "a.png"
    Image.new("L", (20, 20)).save(mask)
    assert cli(["tile", str(tmp_path / "in"), str(tmp_path / "out"), "--size", "32"]) == 1
    assert f"{mask} is 20x20 but its image" in capsys.readouterr().err
    mask.unlink()
    assert cli(["tile", str(tmp_path / "in"), str(tmp_path / "out2"), "--size", "32"]) == 1
    assert str(tmp_path / "in" / "train" / "a.png") in capsys.readouterr().err


def test_split_is_deterministic_and_by_group() -> None:
    names = [f"v{v}_f{f}" for v in range(5) for f in range(4)]
    first, _ = assign_splits(names, 0.2, seed=0)
    assert first == assign_splits(names, 0.2, seed=0)[0]
    assert sum(s == "validation" for s in first.values()) == 4
    assert first != assign_splits(names, 0.2, seed=1)[0]
    grouped, unmatched = assign_splits([*names, "still"], 0.4, 0, re.compile(r"^(v\d)_"))
    assert unmatched == ["still"]
    for video in range(5):
        assert len({grouped[f"v{video}_f{f}"] for f in range(4)}) == 1
    with pytest.raises(Exception, match="--validation-fraction must be in"):
        assign_splits(names, 1.0, 0)


@pytest.mark.parametrize("command", ["groundtruth", "labelme", "tile", "validate", "evaluate"])
def test_help_shows_an_example(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli([command, "--help"])
    assert exit_info.value.code == 0
    assert f"example:\n  segcontainer {command} " in capsys.readouterr().out


def test_a_failed_tiling_removes_what_it_wrote(tmp_path: Path, capsys) -> None:
    """Issue 26 item 10: the first image's tiles are written, the second image fails; OUT is
    left as it was, so the rerun after the fix is not refused for a half-written layout."""
    make_layout(tmp_path / "in", {"train": ["a", "b"]})
    bad_mask = tmp_path / "in" / "train_annotation" / "b.png"
    Image.new("L", (20, 20)).save(bad_mask)
    out = tmp_path / "out"
    assert cli(["tile", str(tmp_path / "in"), str(out), "--size", "32"]) == 1
    assert "b.png is 20x20" in capsys.readouterr().err
    assert not out.exists()
    Image.fromarray(np.zeros(SIZE[::-1], dtype=np.uint8), "L").save(bad_mask)
    assert cli(["tile", str(tmp_path / "in"), str(out), "--size", "32"]) == 0
    assert len(tiles(out, "train")) + len(tiles(out, "validation")) == 12
