"""Draw (or import) semi-supervised splits: <out>/<num_labels>/<split>/{labeled,unlabeled,valid}_filename.txt.

The id pools come from the official id lists (--id-lists, default dataset/id_lists in the
repository, so this works from a plain clone) or from a downloaded dataset (--data-root).
Pools are sorted before drawing, so a split depends on the seed alone. Every fact of a
dataset (its lists, standard counts, default folder, the ids of a downloaded copy, the lines
of another repository's labeled.txt) comes from its entry in the registry
(dataset/registry.py: SplitRecipe); the datasets with one:

- VOC classic (92, 183, 366, 732, 1464): labeled drawn from the 1,464 train ids.
- VOC blended (662, 1323, 2646, 5291): labeled drawn from the 10,582 train_aug ids.
  In both, unlabeled = the train_aug ids that are not labeled; valid = the val ids.
- Cityscapes (186, 372, 744, 1488): labeled drawn from the 2,975 train ids, unlabeled the
  rest; valid = the 500 val ids.
- COCO-Stuff-10K (563, 1125, 2250, 4500: 1/16 ... 1/2): labeled drawn from the 9,000 train
  images of its imageLists/train.txt, unlabeled the rest; valid = its 1,000 test images.
  Its lists do not ship: --data-root.
- CamVid (23, 46, 92, 367): labeled drawn from the 367 train ids (train/0001TP_006690),
  unlabeled the rest (none for 367: supervised.py only); valid = the 233 test ids, where
  results are reported, or with --valid-set val the 101 val ids, for choosing a config
  (write those apart from the shipped splits: --out CamVid_split_val). A split root holds
  splits of one validation set only.

A dataset described by its config (Dataset.name: folder, dataset/folder.py) is drawn with
--config FILE: its training images with a mask are the labeled pool, every training image
(and its unlabeled_dir / unlabeled_list images) the rest, its validation images valid;
--out, --num-labels and --seed default to the config's Dataset.txt_dir, Dataset.num_labels
and Seed. An id is the image path relative to Dataset.data_dir less its suffix, so
--import-labeled reads UniMatch's "images/training/X.jpg annotations/training/X.png" lines.

A drawn split's folder is its seed (<split> = 3407: the paper's layout, which a config
selects with Dataset.split=seed and Seed=3407). --import-labeled FILE takes the labeled ids
from another repository's labeled.txt (UniMatch, U2PL: "JPEGImages/<id>.jpg
SegmentationClass/<id>.png" or "leftImg8bit/train/<city>/<name>_leftImg8bit.png gtFine/..."
lines, CamVid's "/SegNet/CamVid/train/<name>.png ..." lines, or bare ids) into the folder
--name, which a config selects with Dataset.split=<name>, with any Seed. A folder that holds
another split is never overwritten.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.registry import DATASETS, SplitRecipe  # noqa: E402
from dataset.splits import SEED_SPLIT, draw_split, split_dir, write_split  # noqa: E402
from utils.command_line import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ID_LISTS = REPO / "dataset" / "id_lists"  # the official id lists, shipped
DEFAULT_SEED = 3407
# the datasets whose splits are drawn from published id lists (their registry entry's recipe)
RECIPES: dict[str, SplitRecipe] = {n: s.splits for n, s in DATASETS.items() if s.splits}
VALID_SETS = tuple(dict.fromkeys(v for r in RECIPES.values() for v in r.valid_sets))


@dataclass(frozen=True)
class IdPools:
    """Sorted id pools of one dataset.

    ``fine``: where classic labeled ids are drawn from (VOC train; Cityscapes, CamVid train);
    ``train``: every training id, labeled + unlabeled (VOC train_aug; Cityscapes, CamVid
    train); ``val``: the validation ids (CamVid: test, or val with ``valid_set="val"``).
    """

    fine: list[str]
    train: list[str]
    val: list[str]


# --- pools -----------------------------------------------------------------------------


def _make_pools(fine: list[str], train: list[str], val: list[str], source: Path) -> IdPools:
    pools = IdPools(sorted(set(fine)), sorted(set(train)), sorted(set(val)))
    outside = sorted(set(pools.fine) - set(pools.train))
    if outside:
        raise UserError(
            f"{source}: {len(outside)} fine ids (e.g. {outside[0]}) are not training ids"
        )
    both = sorted(set(pools.train) & set(pools.val))
    if both:
        raise UserError(f"{source}: id {both[0]} is both a training and a validation id")
    return pools


def pools_from_id_lists(dataset: str, id_lists: Path, valid_set: str | None = None) -> IdPools:
    """Pools from the official lists named by the dataset's recipe (``voc_train.txt``, ...;
    ``valid_set``: the validation set, default the recipe's first)."""
    recipe = RECIPES[dataset]
    if recipe.id_lists is None:
        raise UserError(
            f"no id lists of {dataset} ship with the repository (they are not known without "
            "the data): give --data-root, the downloaded dataset"
        )
    return _make_pools(*recipe.id_lists.read(id_lists, valid_set or recipe.valid_sets[0]), id_lists)


def pools_from_data_root(dataset: str, root: Path, valid_set: str | None = None) -> IdPools:
    """Pools from a downloaded dataset folder, read as the dataset's recipe says (VOC: its
    ``ImageSets/Segmentation`` lists and the ``SegmentationClassAug`` labels; Cityscapes: the
    ``leftImg8bit/{train,val}`` images; CamVid: its list files)."""
    if not root.is_dir():
        raise UserError(f"--data-root {root} is not a folder")
    recipe = RECIPES[dataset]
    return _make_pools(*recipe.data_root(root, valid_set or recipe.valid_sets[0]), root)


# --- drawing and importing -------------------------------------------------------------


def check_split(labeled: list[str], unlabeled: list[str], pool: list[str], num_labels: int) -> None:
    """labeled and unlabeled partition ``pool`` exactly, with ``num_labels`` labeled."""
    lab, unl = set(labeled), set(unlabeled)
    ok = (
        len(lab) == len(labeled) == num_labels
        and len(unl) == len(unlabeled)
        and not lab & unl
        and lab | unl == set(pool)
    )
    if not ok:
        raise RuntimeError(f"split of {num_labels} labeled ids does not partition the pool")


def scheme_of(dataset: str, num_labels: int, scheme: str) -> str:
    """``classic`` (labeled drawn from the fine pool) or ``blended`` (from every training id);
    ``auto`` picks by the recipe's standard counts. A dataset whose recipe has no classic
    counts has one training pool (fine = train)."""
    recipe = RECIPES[dataset]
    if not recipe.classic:
        return "classic"
    if scheme != "auto":
        return scheme
    if num_labels in recipe.classic:
        return "classic"
    if num_labels in recipe.standard:
        return "blended"
    raise UserError(
        f"--num-labels {num_labels} is not a standard {dataset} split: give --scheme classic "
        "or blended"
    )


def draw(pools: IdPools, num_labels: int, seed: int, scheme: str) -> tuple[list[str], list[str]]:
    """Labeled ids drawn from ``fine`` (classic) or ``train`` (blended); unlabeled = the
    other training ids."""
    source = pools.fine if scheme == "classic" else pools.train
    labeled, _ = draw_split(source, num_labels, seed)
    chosen = set(labeled)
    unlabeled = [i for i in pools.train if i not in chosen]
    check_split(labeled, unlabeled, pools.train, num_labels)
    return labeled, unlabeled


def id_from_entry(entry: str, dataset: str) -> str:
    """The id named by the first path of a ``labeled.txt`` line (the recipe's parser: VOC the
    file stem, Cityscapes and CamVid ``<parent folder>/<stem>``), or a bare id as it is."""
    path = PurePosixPath(entry)
    return RECIPES[dataset].entry_id(path) if path.suffix else entry


def read_labeled_file(path: Path, dataset: str, pool: list[str], entry_id=None) -> list[str]:
    """Ids of a ``labeled.txt`` (each line's first path read by ``entry_id``, default the
    dataset's recipe); each must be a training id, none twice."""
    entry_id = entry_id or (lambda entry: id_from_entry(entry, dataset))
    if not path.is_file():
        raise UserError(f"--import-labeled file not found: {path}")
    pool_set, seen = set(pool), set()
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        image_id = entry_id(line.split()[0])
        if image_id not in pool_set:
            raise UserError(f"{path}:{line_no}: id {image_id} is not in the {dataset} training ids")
        if image_id in seen:
            raise UserError(f"{path}:{line_no}: id {image_id} is listed twice")
        seen.add(image_id)
    if not seen:
        raise UserError(f"--import-labeled file is empty: {path}")
    return sorted(seen)


# --- command line ----------------------------------------------------------------------

EXAMPLES = """examples:
  python tools/make_splits.py --dataset voc                   # the shipped VOC splits, byte for byte
  python tools/make_splits.py --dataset cityscapes --seed 1   # the four Cityscapes counts, seed 1
  python tools/make_splits.py --dataset voc --num-labels 92 --data-root data/VOCdevkit/VOC2012
  python tools/make_splits.py --dataset camvid                # the shipped CamVid splits (valid: test)
  python tools/make_splits.py --dataset camvid --valid-set val --seed 1 --num-labels 23 --out CamVid_split_val
      # validate on CamVid's val images to choose a config: Dataset.txt_dir=CamVid_split_val
  python tools/make_splits.py --dataset voc --import-labeled splits/pascal/662/labeled.txt --name unimatch
      # then train on it with: Dataset.num_labels=662 Dataset.split=unimatch (any Seed)
  python tools/make_splits.py --config my.yaml --num-labels 20 --seed 1
      # a folder dataset (Dataset.name: folder): 20 of its images with masks, into its txt_dir
  python tools/make_splits.py --config configs/ade20k.yaml --import-labeled labeled.txt --name unimatch
      # "images/training/X.jpg annotations/training/X.png" lines (UniMatch-V2, SemiVL)
"""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="make_splits.py", description=__doc__, epilog=EXAMPLES)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--dataset", choices=tuple(RECIPES), help="a dataset with a reader of its own"
    )
    which.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="a dataset described by its config (Dataset.name: folder): its ids come from its "
        "folders or list files; the defaults of --out, --num-labels and --seed are its "
        "Dataset.txt_dir, Dataset.num_labels and Seed",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--id-lists",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of the official id lists (default: dataset/id_lists in the repository)",
    )
    source.add_argument(
        "--data-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="take the ids from a downloaded dataset folder instead",
    )
    parser.add_argument(
        "--num-labels",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="labeled counts to draw (default: the standard ones of the dataset)",
    )
    parser.add_argument(
        "--scheme",
        choices=("auto", "classic", "blended"),
        default="auto",
        help="VOC: draw labeled ids from train (classic) or train_aug (blended); "
        "auto: by the standard counts (default)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed of the draw and name of the split folder (default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--valid-set",
        choices=VALID_SETS,
        default=None,
        help="a dataset with several validation lists (CamVid: its test images, the default, "
        "where results are reported, or its val images, to choose a config; write those with "
        "another --out)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="split root, the Dataset.txt_dir of a config (default: the dataset's folder in "
        f"the repository: {' / '.join(r.out for r in RECIPES.values())})",
    )
    parser.add_argument(
        "--import-labeled",
        type=Path,
        default=None,
        metavar="FILE",
        help="take the labeled ids from another repository's labeled.txt (needs --name)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="with --import-labeled: the split folder, <out>/<count>/<name>/; select it with "
        "Dataset.split=<name>",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name is not None and args.import_labeled is None:
        parser.error("--name only goes with --import-labeled")
    if args.import_labeled is not None:
        if args.name is None:
            parser.error(
                "--import-labeled needs --name NAME, the split folder (e.g. --name unimatch); "
                "train on it with Dataset.split=NAME"
            )
        if args.num_labels is not None:
            parser.error(
                "--num-labels does not go with --import-labeled (the file gives the count)"
            )
        if args.seed is not None:
            parser.error("--seed does not go with --import-labeled (nothing is drawn)")
        if not args.name or Path(args.name).name != args.name or args.name in (".", ".."):
            parser.error(f"--name {args.name!r} must be a plain folder name")
        if args.name == SEED_SPLIT:
            parser.error(
                f"--name {SEED_SPLIT} is reserved (Dataset.split={SEED_SPLIT} means the seed's folder)"
            )
    if args.config is not None:
        for flag in ("id_lists", "data_root", "valid_set"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} does not go with --config")
        return args  # the defaults come from the config (run)
    valid_sets = RECIPES[args.dataset].valid_sets
    if args.valid_set is not None and (len(valid_sets) == 1 or args.valid_set not in valid_sets):
        several = " or ".join(n for n, r in RECIPES.items() if len(r.valid_sets) > 1)
        parser.error(
            f"--valid-set only goes with --dataset {several} ({args.dataset} has one val set)"
            if len(valid_sets) == 1
            else f"--valid-set {args.valid_set}: {args.dataset} has {', '.join(valid_sets)}"
        )
    if args.seed is None:
        args.seed = DEFAULT_SEED
    if args.valid_set is None:
        args.valid_set = valid_sets[0]
    return args


def _lines(ids: list[str]) -> str:
    return "".join(f"{i}\n" for i in ids)


def _write_new(out: Path, folder: str | int, labeled, unlabeled, valid, hint: str) -> Path:
    """Write one split; a folder that holds another split is never overwritten, and a split
    root holds splits of one validation list (CamVid's test or val) only."""
    existing = split_dir(out, len(labeled), folder) / "labeled_filename.txt"
    if existing.is_file() and existing.read_text() != _lines(labeled):
        raise UserError(f"{existing} already holds another split: {hint}")
    other = next(
        (p for p in sorted(out.glob("*/*/valid_filename.txt")) if p.read_text() != _lines(valid)),
        None,
    )
    if other is not None:
        raise UserError(
            f"{other} lists other validation ids than this split (a split root holds one "
            "validation set): choose another --out, or the same --valid-set"
        )
    return write_split(out, len(labeled), folder, labeled, unlabeled, valid)


def from_config(args: argparse.Namespace) -> tuple[IdPools, Path, object]:
    """``--config``: the pools of a dataset described by its config, its split root, and the
    reader of labeled.txt lines; ``--num-labels`` and ``--seed`` default to the config's.
    A dataset with published id lists is drawn as with ``--dataset``."""
    from engine.config import load_config  # imports torch: only this path needs it
    from engine.data import DATASETS

    cfg = load_config(args.config)
    data = cfg["Dataset"]
    spec = DATASETS[data["name"]]
    if args.import_labeled is None:
        args.num_labels = args.num_labels or [data["num_labels"]]
        args.seed = cfg["Seed"] if args.seed is None else args.seed
    out = args.out or Path(data["txt_dir"])
    if spec.splits is not None:
        args.dataset, args.valid_set = data["name"], spec.splits.valid_sets[0]
        return pools_from_id_lists(args.dataset, DEFAULT_ID_LISTS), out, None
    if spec.layout is None:
        raise UserError(
            f"{args.config}: the splits of {data['name']} are drawn with: "
            + spec.split_command(data["txt_dir"], data["num_labels"], cfg["Seed"])
        )
    layout = spec.layout(data)
    return _make_pools(*layout.pools(), Path(data["data_dir"])), out, layout.entry_id


def run(args: argparse.Namespace) -> list[Path]:
    """Write the requested splits; return their folders."""
    if args.config is not None:
        pools, out, entry_id = from_config(args)
        if args.import_labeled is None:
            return draw_all(args, pools, out)
        return [import_labeled(args, pools, out, entry_id)]
    if args.data_root is not None:
        pools = pools_from_data_root(args.dataset, args.data_root, args.valid_set)
    else:
        pools = pools_from_id_lists(args.dataset, args.id_lists or DEFAULT_ID_LISTS, args.valid_set)
    out = args.out or REPO / RECIPES[args.dataset].out
    if args.import_labeled is not None:
        return [import_labeled(args, pools, out)]
    return draw_all(args, pools, out)


def import_labeled(args: argparse.Namespace, pools: IdPools, out: Path, entry_id=None) -> Path:
    """The split ``--name`` of the labeled ids in ``--import-labeled``."""
    what = args.dataset or str(args.config)
    labeled = read_labeled_file(args.import_labeled, what, pools.train, entry_id)
    chosen = set(labeled)
    unlabeled = [i for i in pools.train if i not in chosen]
    check_split(labeled, unlabeled, pools.train, len(labeled))
    return _write_new(out, args.name, labeled, unlabeled, pools.val, "choose another --name")


def draw_all(args: argparse.Namespace, pools: IdPools, out: Path) -> list[Path]:
    """The splits of ``--num-labels`` (default: the standard counts) drawn with ``--seed``."""
    folders = []
    for num_labels in args.num_labels or RECIPES[args.dataset].standard:
        scheme = scheme_of(args.dataset, num_labels, args.scheme) if args.dataset else "classic"
        labeled, unlabeled = draw(pools, num_labels, args.seed, scheme)
        hint = "choose another --out, or move it away"
        folders.append(_write_new(out, args.seed, labeled, unlabeled, pools.val, hint))
    return folders


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        folders = run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder in folders:
        print(f"wrote {folder}")
    if args.import_labeled is not None:
        n = folders[0].parent.name
        print(f"train on it with: Dataset.num_labels={n} Dataset.split={args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
