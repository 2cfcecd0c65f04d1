"""The split tool and the shipped split folders."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.splits import read_ids, read_split
from tools.make_splits import DEFAULT_ID_LISTS, IdPools, check_split, draw, pools_from_data_root
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
VOC_SIZES = {92: 1464, 183: 1464, 366: 1464, 732: 1464, 1464: 1464}  # classic: drawn from train
VOC_SIZES.update({662: 10582, 1323: 10582, 2646: 10582, 5291: 10582})  # blended: from train_aug
CITY_SIZES = (186, 372, 744, 1488)
CAMVID_SIZES = (23, 46, 92, 367)  # of the 367 train images; 367: the full-label ceiling
CAMVID_SEEDS = (3407, 1, 2)
CAMVID_LISTS = DEFAULT_ID_LISTS / "camvid"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def run_tool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.make_splits", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tiny_pools() -> IdPools:
    train = [f"t{i:03d}" for i in range(30)]
    extra = [f"x{i:03d}" for i in range(70)]
    return IdPools(fine=train, train=sorted(train + extra), val=["v1", "v2"])


def write_tiny_id_lists(folder: Path) -> IdPools:
    pools = tiny_pools()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "voc_train.txt").write_text(
        "\n".join(pools.fine[::-1]) + "\n"
    )  # order must not matter
    (folder / "voc_trainaug.txt").write_text("\n".join(pools.train) + "\n")
    (folder / "voc_val.txt").write_text("\n".join(pools.val) + "\n")
    city = [f"aachen/aachen_{i:06d}_000019" for i in range(10)]
    (folder / "cityscapes_train.txt").write_text("\n".join(city) + "\n")
    (folder / "cityscapes_val.txt").write_text("frankfurt/frankfurt_000000_000294\n")
    return pools


# --- drawing ---------------------------------------------------------------------------


def test_draw_is_deterministic_disjoint_and_exact():
    pools = tiny_pools()
    labeled, unlabeled = draw(pools, 10, 3407, "classic")
    assert (labeled, unlabeled) == draw(pools, 10, 3407, "classic")
    assert len(labeled) == 10 and len(unlabeled) == 90 and not set(labeled) & set(unlabeled)
    assert set(labeled) | set(unlabeled) == set(pools.train)
    assert set(labeled) <= set(pools.fine)  # classic: from the finely annotated ids
    assert draw(pools, 10, 1, "classic")[0] != labeled
    shuffled = IdPools(pools.fine[::-1], pools.train[::-1], pools.val)
    assert draw(shuffled, 10, 3407, "classic")[0] == labeled
    blended = [draw(pools, 50, seed, "blended")[0] for seed in range(3)]
    assert all(len(b) == 50 and set(b) <= set(pools.train) for b in blended)
    assert any(set(b) - set(pools.fine) for b in blended)  # blended reaches past train


def test_check_split_rejects_bad_partitions():
    pool = ["a", "b", "c", "d"]
    check_split(["a"], ["b", "c", "d"], pool, 1)
    for labeled, unlabeled, n in [
        (["a"], ["b", "c"], 1),  # misses d
        (["a"], ["a", "b", "c", "d"], 1),  # overlap
        (["a", "b"], ["c", "d"], 1),  # wrong size
        (["a", "a"], ["b", "c", "d"], 2),  # duplicate
    ]:
        with pytest.raises(RuntimeError):
            check_split(labeled, unlabeled, pool, n)


# --- the shipped splits ----------------------------------------------------------------


def test_shipped_split_sizes():
    for n in VOC_SIZES:
        folder = REPO / "VOC_split" / str(n) / "3407"
        labeled, unlabeled = (
            lines(folder / "labeled_filename.txt"),
            lines(folder / "unlabeled_filename.txt"),
        )
        assert len(set(labeled)) == len(labeled) == n
        assert len(set(unlabeled)) == len(unlabeled) == 10582 - n
        assert not set(labeled) & set(unlabeled)
        assert len(lines(folder / "valid_filename.txt")) == 1449
    for n in CITY_SIZES:
        folder = REPO / "CityScapes_split" / str(n) / "3407"
        labeled, unlabeled = (
            lines(folder / "labeled_filename.txt"),
            lines(folder / "unlabeled_filename.txt"),
        )
        assert len(set(labeled)) == len(labeled) == n
        assert len(set(unlabeled)) == len(unlabeled) == 2975 - n
        assert not set(labeled) & set(unlabeled)
        assert len(lines(folder / "valid_filename.txt")) == 500


def test_official_id_lists_ship_inside_the_repository():
    assert DEFAULT_ID_LISTS == REPO / "dataset" / "id_lists"
    sizes = {"voc_train": 1464, "voc_trainaug": 10582, "voc_val": 1449}
    sizes.update({"cityscapes_train": 2975, "cityscapes_val": 500})
    sizes.update({"camvid/train": 367, "camvid/val": 101, "camvid/test": 233})
    for name, size in sizes.items():
        ids = lines(DEFAULT_ID_LISTS / f"{name}.txt")
        assert len(ids) == len(set(ids)) == size, name
    for folder in ("train", "val", "test"):  # folder/stem ids, sorted
        ids = lines(CAMVID_LISTS / f"{folder}.txt")
        assert ids == sorted(ids) and all(i.startswith(f"{folder}/") for i in ids), folder


def test_shipped_camvid_splits_partition_the_train_images_and_validate_on_test():
    train, test = lines(CAMVID_LISTS / "train.txt"), lines(CAMVID_LISTS / "test.txt")
    for n in CAMVID_SIZES:
        drawn = []
        for seed in CAMVID_SEEDS:
            folder = REPO / "CamVid_split" / str(n) / str(seed)
            labeled = lines(folder / "labeled_filename.txt")
            unlabeled = lines(folder / "unlabeled_filename.txt")
            assert len(set(labeled)) == len(labeled) == n
            assert len(set(unlabeled)) == len(unlabeled) == 367 - n
            assert not set(labeled) & set(unlabeled)
            assert sorted(labeled + unlabeled) == train
            assert lines(folder / "valid_filename.txt") == test
            drawn.append(labeled)
        if n < 367:  # each seed draws its own
            assert len({tuple(d) for d in drawn}) == len(CAMVID_SEEDS), n
    # the full-label split: every train image labeled, an empty unlabeled list, read as such
    assert (REPO / "CamVid_split" / "367" / "3407" / "unlabeled_filename.txt").read_bytes() == b""
    ids = read_split(REPO / "CamVid_split", 367, 3407)
    assert ids["unlabeled"] == [] and ids["labeled"] == train and ids["valid"] == test


def test_shipped_splits_partition_the_official_pools():
    voc_train = set(lines(DEFAULT_ID_LISTS / "voc_train.txt"))
    voc_aug = set(lines(DEFAULT_ID_LISTS / "voc_trainaug.txt"))
    voc_val = lines(DEFAULT_ID_LISTS / "voc_val.txt")
    for n, source in VOC_SIZES.items():
        folder = REPO / "VOC_split" / str(n) / "3407"
        labeled = set(lines(folder / "labeled_filename.txt"))
        assert labeled | set(lines(folder / "unlabeled_filename.txt")) == voc_aug
        assert labeled <= (voc_train if source == 1464 else voc_aug)
        assert sorted(lines(folder / "valid_filename.txt")) == sorted(voc_val)
    assert not any(
        set(lines(REPO / "VOC_split" / str(n) / "3407" / "labeled_filename.txt")) <= voc_train
        for n in (2646, 5291)
    )
    city_train = set(lines(DEFAULT_ID_LISTS / "cityscapes_train.txt"))
    for n in CITY_SIZES:
        folder = REPO / "CityScapes_split" / str(n) / "3407"
        union = set(lines(folder / "labeled_filename.txt")) | set(
            lines(folder / "unlabeled_filename.txt")
        )
        assert union == city_train


def test_regenerating_the_shipped_splits_is_byte_identical(tmp_path):
    """From a copy of the code alone (nothing beside it), as from a plain clone."""
    clone = tmp_path / "clone"
    for package in ("tools", "dataset", "utils"):
        shutil.copytree(REPO / package, clone / package, ignore=shutil.ignore_patterns("__py*"))
    shipped_splits = (
        ("voc", "VOC_split", (3407,), 9),
        ("cityscapes", "CityScapes_split", (3407,), 4),
        ("camvid", "CamVid_split", CAMVID_SEEDS, 4),
    )
    for dataset, shipped, seeds, counts in shipped_splits:
        out = tmp_path / shipped
        for seed in seeds:
            result = run_tool(
                "--dataset", dataset, "--seed", str(seed), "--out", str(out), cwd=clone
            )
            assert result.returncode == 0, result.stderr
        files = sorted(p.relative_to(REPO / shipped) for p in (REPO / shipped).rglob("*.txt"))
        assert files == sorted(p.relative_to(out) for p in out.rglob("*.txt"))
        assert len(files) == 3 * counts * len(seeds)
        for rel in files:
            assert (out / rel).read_bytes() == (REPO / shipped / rel).read_bytes(), rel


# --- importing, data roots, errors -----------------------------------------------------


def test_import_labeled_txt(tmp_path):
    pools = write_tiny_id_lists(tmp_path / "lists")
    labeled_txt = tmp_path / "labeled.txt"
    labeled_txt.write_text(
        "JPEGImages/x005.jpg SegmentationClass/x005.png\n"
        "JPEGImages/t001.jpg SegmentationClass/t001.png\n\n"
        "t007\n"
    )
    out = tmp_path / "out"
    args = ["--dataset", "voc", "--id-lists", str(tmp_path / "lists"), "--out", str(out)]
    result = run_tool(*args, "--import-labeled", str(labeled_txt), "--name", "unimatch")
    assert result.returncode == 0, result.stderr
    folder = out / "3" / "unimatch"
    assert lines(folder / "labeled_filename.txt") == ["t001", "t007", "x005"]
    unlabeled = lines(folder / "unlabeled_filename.txt")
    assert unlabeled == [i for i in pools.train if i not in {"t001", "t007", "x005"}]
    assert lines(folder / "valid_filename.txt") == pools.val

    city_txt = tmp_path / "city_labeled.txt"
    city_txt.write_text(
        "leftImg8bit/train/aachen/aachen_000003_000019_leftImg8bit.png "
        "gtFine/train/aachen/aachen_000003_000019_gtFine_labelTrainIds.png\n"
    )
    out = tmp_path / "out_city"  # a split root is one dataset's (one validation list)
    args = ["--dataset", "cityscapes", "--id-lists", str(tmp_path / "lists"), "--out", str(out)]
    result = run_tool(*args, "--import-labeled", str(city_txt), "--name", "u2pl")
    assert result.returncode == 0, result.stderr
    assert "Dataset.num_labels=1 Dataset.split=u2pl" in result.stdout
    assert lines(out / "1" / "u2pl" / "labeled_filename.txt") == ["aachen/aachen_000003_000019"]
    assert len(lines(out / "1" / "u2pl" / "unlabeled_filename.txt")) == 9


def test_import_beside_the_seed_split_of_the_same_count(tmp_path):
    """An imported split has its own folder: the drawn (seed) split of the same count stays."""
    write_tiny_id_lists(tmp_path / "lists")
    out = tmp_path / "out"
    base = ["--dataset", "voc", "--id-lists", str(tmp_path / "lists"), "--out", str(out)]
    assert run_tool(*base, "--num-labels", "3", "--scheme", "blended").returncode == 0
    drawn = (out / "3" / "3407" / "labeled_filename.txt").read_text()
    (tmp_path / "labeled.txt").write_text("t001\nt002\nt003\n")
    result = run_tool(*base, "--import-labeled", str(tmp_path / "labeled.txt"), "--name", "u2pl")
    assert result.returncode == 0, result.stderr
    assert (out / "3" / "3407" / "labeled_filename.txt").read_text() == drawn
    assert lines(out / "3" / "u2pl" / "labeled_filename.txt") == ["t001", "t002", "t003"]
    again = run_tool(*base, "--import-labeled", str(tmp_path / "labeled.txt"), "--name", "u2pl")
    assert again.returncode == 0, again.stderr  # the same split again: nothing changes


def test_data_root_pools(tmp_path):
    voc = tmp_path / "VOC"
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("b\na\n")
    (sets / "val.txt").write_text("v\n")
    (voc / "SegmentationClassAug").mkdir()
    for name in ["a", "b", "c", "d", "v"]:
        (voc / "SegmentationClassAug" / f"{name}.png").touch()
    pools = pools_from_data_root("voc", voc)
    assert pools == IdPools(fine=["a", "b"], train=["a", "b", "c", "d"], val=["v"])

    city = tmp_path / "cityscapes"
    for split, name in [("train", "aachen/aachen_000001_000019"), ("train", "bochum/bochum_000000_000313"),
                        ("val", "lindau/lindau_000000_000019")]:  # fmt: skip
        path = city / "leftImg8bit" / split / f"{name}_leftImg8bit.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    pools = pools_from_data_root("cityscapes", city)
    assert pools.train == ["aachen/aachen_000001_000019", "bochum/bochum_000000_000313"]
    assert pools.fine == pools.train and pools.val == ["lindau/lindau_000000_000019"]

    out = tmp_path / "out"
    result = run_tool(
        "--dataset", "cityscapes", "--data-root", str(city), "--num-labels", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    folder = out / "1" / "3407"
    both = lines(folder / "labeled_filename.txt") + lines(folder / "unlabeled_filename.txt")
    assert sorted(both) == pools.train


def write_camvid_lists(root: Path) -> None:
    """SegNet list files of a tiny CamVid folder: 6 train, 2 val, 3 test images."""
    sets = {"train": [f"0001TP_{i:06d}" for i in range(6)], "val": ["0016E5_07959", "0016E5_07961"]}
    sets["test"] = ["0001TP_008550", "Seq05VD_f00000", "Seq05VD_f00030"]
    root.mkdir(parents=True, exist_ok=True)
    for folder, names in sets.items():
        text = "".join(
            f"/SegNet/CamVid/{folder}/{n}.png /SegNet/CamVid/{folder}annot/{n}.png\n"
            for n in names[::-1]  # the order must not matter
        )
        (root / f"{folder}.txt").write_text(text)


def test_camvid_from_a_data_root_validates_on_test_or_on_val(tmp_path):
    root = tmp_path / "CamVid"
    write_camvid_lists(root)
    pools = pools_from_data_root("camvid", root)
    assert pools.train == pools.fine == [f"train/0001TP_{i:06d}" for i in range(6)]
    assert pools.val == ["test/0001TP_008550", "test/Seq05VD_f00000", "test/Seq05VD_f00030"]
    assert pools_from_data_root("camvid", root, "val").val == [
        "val/0016E5_07959",
        "val/0016E5_07961",
    ]

    base = ["--dataset", "camvid", "--data-root", str(root), "--num-labels", "2", "6"]
    out = tmp_path / "splits"
    assert run_tool(*base, "--out", str(out)).returncode == 0
    assert lines(out / "2" / "3407" / "valid_filename.txt") == pools.val
    assert len(lines(out / "2" / "3407" / "unlabeled_filename.txt")) == 4
    assert (out / "6" / "3407" / "unlabeled_filename.txt").read_text() == ""  # all labeled
    # val goes to a root of its own: a root holds the splits of one validation set
    mixed = run_tool(*base, "--seed", "1", "--valid-set", "val", "--out", str(out))
    assert mixed.returncode == 2 and "valid_filename.txt" in mixed.stderr
    assert "--valid-set" in mixed.stderr and len(mixed.stderr.strip().splitlines()) == 1
    assert not (out / "2" / "1").exists()
    val_out = tmp_path / "splits_val"
    result = run_tool(*base, "--valid-set", "val", "--out", str(val_out))
    assert result.returncode == 0, result.stderr
    assert lines(val_out / "2" / "3407" / "labeled_filename.txt") == lines(
        out / "2" / "3407" / "labeled_filename.txt"
    )  # the same draw; only the validation list differs
    assert (
        lines(val_out / "2" / "3407" / "valid_filename.txt")
        == pools_from_data_root("camvid", root, "val").val
    )

    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/0001TP_000000.png /SegNet/CamVid/trainannot/0001TP_000001.png\n"
    )
    bad = run_tool(*base, "--out", str(tmp_path / "bad"))
    message = bad.stderr.strip()
    assert bad.returncode == 2 and len(message.splitlines()) == 1, message
    assert f"{root / 'train.txt'}:1:" in message and "does not match" in message


def test_camvid_import_labeled_reads_segnet_lines(tmp_path):
    labeled = tmp_path / "labeled.txt"
    labeled.write_text(
        "/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n"
        "train/0016E5_00390\n"
    )
    out = tmp_path / "out"
    args = ["--dataset", "camvid", "--out", str(out), "--import-labeled", str(labeled)]
    result = run_tool(*args, "--name", "other")
    assert result.returncode == 0, result.stderr
    folder = out / "2" / "other"
    assert lines(folder / "labeled_filename.txt") == ["train/0001TP_006690", "train/0016E5_00390"]
    assert len(lines(folder / "unlabeled_filename.txt")) == 365
    assert lines(folder / "valid_filename.txt") == lines(CAMVID_LISTS / "test.txt")


def test_only_the_unlabeled_list_may_be_empty(tmp_path):
    folder = tmp_path / "1" / "3407"
    folder.mkdir(parents=True)
    for kind in ("labeled", "unlabeled", "valid"):
        (folder / f"{kind}_filename.txt").write_text("a\n")
    (folder / "unlabeled_filename.txt").write_text("")
    assert read_split(tmp_path, 1, 3407)["unlabeled"] == []
    for kind in ("labeled", "valid"):
        (folder / f"{kind}_filename.txt").write_text("\n")
        with pytest.raises(UserError, match="split file is empty"):
            read_split(tmp_path, 1, 3407)
        (folder / f"{kind}_filename.txt").write_text("a\n")
    with pytest.raises(UserError, match="split file is empty"):
        read_ids(folder / "unlabeled_filename.txt")


@pytest.mark.parametrize(
    "case, extra, needle",
    [
        ("missing import file", ["--import-labeled", "{tmp}/nope.txt", "--name", "a"], "nope.txt"),
        ("id not in pool", ["--import-labeled", "{tmp}/unknown.txt", "--name", "a"], "zzz"),
        ("duplicate id", ["--import-labeled", "{tmp}/dup.txt", "--name", "a"], "t001"),
        ("missing id lists", ["--id-lists", "{tmp}/missing"], "voc_train.txt"),
        ("too many labels", ["--num-labels", "31", "--scheme", "classic"], "31"),
        ("non-standard count", ["--num-labels", "5"], "--scheme"),
        (
            "overwrite another split",
            ["--import-labeled", "{tmp}/other.txt", "--name", "3407"],
            "labeled_filename.txt",
        ),
        ("overwrite a drawn split", ["--num-labels", "1", "--scheme", "classic"], "--out"),
        ("import without a name", ["--import-labeled", "{tmp}/other.txt"], "--name"),
        (
            "import with a seed",
            ["--import-labeled", "{tmp}/other.txt", "--name", "x", "--seed", "1"],
            "--seed",
        ),
        ("reserved name", ["--import-labeled", "{tmp}/other.txt", "--name", "seed"], "reserved"),
        ("misspelt flag", ["--num_labels", "92"], "did you mean --num-labels?"),
        ("valid set of voc", ["--valid-set", "val"], "--valid-set only goes with --dataset camvid"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, case, extra, needle):
    write_tiny_id_lists(tmp_path / "lists")
    (tmp_path / "unknown.txt").write_text("JPEGImages/zzz.jpg SegmentationClass/zzz.png\n")
    (tmp_path / "dup.txt").write_text("t001\nJPEGImages/t001.jpg SegmentationClass/t001.png\n")
    (tmp_path / "other.txt").write_text("t002\n")
    existing = tmp_path / "out" / "1" / "3407"
    existing.mkdir(parents=True)
    (existing / "labeled_filename.txt").write_text("t000\n")  # seed 3407 draws t001
    args = ["--dataset", "voc", "--out", str(tmp_path / "out")]
    if "--id-lists" not in extra:
        args += ["--id-lists", str(tmp_path / "lists")]
    result = run_tool(*args, *(a.format(tmp=tmp_path) for a in extra))
    assert result.returncode == 2, (case, result.stderr)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error:"), message
    assert needle in message, message


# --- Dataset.split: the split folder, apart from the seed ------------------------------


def demo_cfg(txt_dir: Path, *extra: str) -> dict:
    from engine.config import DEFAULT_CONFIG, load_config

    return load_config(
        DEFAULT_CONFIG, [f"Dataset.txt_dir={txt_dir}", "Dataset.num_labels=16", *extra]
    )


def test_dataset_split_selects_a_named_folder_with_any_seed(tiny_split, tmp_path):
    from dataset.splits import write_split
    from engine.data import build_datasets, split_name

    txt = tmp_path / "splits"
    shutil.copytree(tiny_split, txt)
    seed_ids = lines(txt / "16" / "3407" / "labeled_filename.txt")
    named = sorted(lines(txt / "16" / "3407" / "unlabeled_filename.txt")[:16])
    rest = sorted(
        set(seed_ids) | set(lines(txt / "16" / "3407" / "unlabeled_filename.txt")) - set(named)
    )
    valid = lines(txt / "16" / "3407" / "valid_filename.txt")
    write_split(txt, 16, "u2pl", named, rest, valid)
    for seed in (1, 3407):
        cfg = demo_cfg(txt, "Dataset.split=u2pl", f"Seed={seed}")
        assert split_name(cfg) == "u2pl"
        assert build_datasets(cfg)["labeled"].ids == named
    cfg = demo_cfg(txt, "Seed=3407")  # the default: the folder named by the seed
    assert cfg["Dataset"]["split"] == "seed" and split_name(cfg) == "3407"
    assert build_datasets(cfg)["labeled"].ids == seed_ids
    assert build_datasets(demo_cfg(txt, "Dataset.split=3407", "Seed=1"))["labeled"].ids == seed_ids


@pytest.mark.parametrize(
    "extra, command",
    [
        (
            ["Seed=1"],
            "python -m demo.fashion_scenes --write-splits --num-labels 16 --seeds 1 --txt-dir ",
        ),
        (["Dataset.split=u2pl"], "write its labeled / unlabeled / valid_filename.txt there"),
    ],
)
def test_a_missing_split_folder_says_how_to_make_it(tiny_split, extra, command):
    from engine.data import build_datasets

    with pytest.raises(UserError) as err:
        build_datasets(demo_cfg(tiny_split, *extra))
    message = str(err.value)
    assert "\n" not in message and message.startswith("split folder not found: ")
    assert str(tiny_split / "16" / ("1" if "Seed=1" in extra else "u2pl")) in message
    assert command in message


def test_the_split_command_of_voc_and_cityscapes_runs(tmp_path):
    """The command the error prints for VOC draws exactly the folder it asked for."""
    from engine.data import DATASETS

    command = DATASETS["voc"].split_command(str(tmp_path / "VOC_split"), 100, 1)
    assert command == (
        f"python tools/make_splits.py --dataset voc --num-labels 100 --seed 1 --scheme classic "
        f"--out {tmp_path / 'VOC_split'}"
    )
    result = subprocess.run(command.split(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(lines(tmp_path / "VOC_split" / "100" / "1" / "labeled_filename.txt")) == 100
    default = DATASETS["cityscapes"].split_command("CityScapes_split", 186, 2)
    assert default == "python tools/make_splits.py --dataset cityscapes --num-labels 186 --seed 2"
