"""One strictly validated YAML config per dataset, with ``Section.key=value`` overrides.

Each key is declared once, in ``SCHEMA`` below: its kind, range, meaning, default (the paper's
VOC value) and whether a resume may change it. A config holds what differs from the defaults
(a key without a default must be given), no other key, and every value is checked for type
and range. A problem stops with one line naming the key, the value and
what was expected (``UserError``; the entry points print it and exit with status 2).

    python -m engine.config configs/voc.yaml Dataset.num_labels=183 Dataset.split=3407 Seed=1
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from dataset.batch_augment import MIX_MODES
from dataset.folder import LABEL_FORMATS
from dataset.registry import FOLDER
from dataset.splits import SEED_SPLIT
from engine.data import DATASETS
from engine.evaluation import EVAL_MODES
from network import BACKBONES
from utils.command_line import ArgumentParser, did_you_mean
from utils.errors import UserError
from utils.labels import IGNORE_VALUE
from utils.losses import SUP_LOSSES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"  # what the entry scripts run without --config


REQUIRED = object()  # Key.default of a key that must be given

# Key.resume: whether a resumed run may change the key (engine/resume.py applies it).
MODEL = "model"  # never: it defines the model (and its classes); a checkpoint fits no other
FIXED = "fixed"  # never: the run's data order and batches follow it
FREE = "free"  # always: where the files are, how often the loop logs, saves and evaluates
ASK = "ask"  # with --allow-changes (logged): it changes the rest of the run


@dataclass(frozen=True)
class Key:
    """Schema entry, the one declaration of a config key: the expected kind of value, a
    range check, what it means, its ``default`` (the paper's VOC value; ``REQUIRED``: the
    config must give it) and whether a resume may change it (``resume``).

    ``dataset``: the ``Dataset.name`` that reads the key (``folder``): a config of another
    dataset must leave it out. A config may leave out any key with a default (a whole
    section too), and so may an older checkpoint's config: it reads as the default."""

    kind: str  # "int", "float", "bool", "str", "int2", "float2", "strs", "colours"
    check: Callable[[Any], bool] = lambda v: True
    expect: str = ""
    doc: str = ""
    dataset: str = ""
    default: Any = REQUIRED
    resume: str = ASK


def _unit(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _pos(v: float) -> bool:
    return v > 0


def _nonneg(v: float) -> bool:
    return v >= 0


def _byte(v: int) -> bool:
    return 0 <= v <= 255


def _unique(v: list) -> bool:
    return len(set(v)) == len(v)


def _suffix(v: str) -> bool:
    return "/" not in v and "\\" not in v


def _folder_name(v: str) -> bool:
    return v not in ("", ".", "..") and "/" not in v and "\\" not in v


def _choice(options: Sequence[str]) -> Callable[[Any], bool]:
    return lambda v: v in options


def _folder(
    kind: str,
    doc: str,
    default: Any = REQUIRED,
    check=lambda v: True,
    expect="",
    resume: str = ASK,
):
    """A key of the generic ``folder`` dataset (``dataset/folder.py``): left out elsewhere."""
    return Key(kind, check, expect, doc, dataset=FOLDER, default=default, resume=resume)


def _relative(v: str) -> bool:
    return not Path(v).is_absolute() and ".." not in Path(v).parts


_INSIDE = "a folder inside Dataset.data_dir ('' = none)"


SCHEMA: dict[str, Any] = {
    "Seed": Key(
        "int",
        _nonneg,
        ">= 0",
        "global seed (data order, augmentation, init)",
        default=3407,
        resume=FIXED,
    ),
    "Network": {
        "backbone": Key(
            "str",
            _choice(BACKBONES),
            f"one of {', '.join(BACKBONES)}",
            "ResNet variant; resnet101_deepstem = the v1c deep-stem layout",
            default="resnet101",
            resume=MODEL,
        ),
        "num_class": Key("int", lambda v: v >= 2, ">= 2", "number of classes C", resume=MODEL),
        "output_stride": Key(
            "int", _choice((8, 16)), "8 or 16", "backbone output stride", default=8, resume=MODEL
        ),
        "rep_dim": Key("int", _pos, "> 0", "representation dimension D", default=256, resume=MODEL),
        "base_width": Key(
            "int",
            _pos,
            "> 0",
            "ResNet stem / layer1 width (64 standard; ImageNet weights need 64)",
            default=64,
            resume=MODEL,
        ),
        "decoder_channels": Key(
            "int", _pos, "> 0", "ASPP and head width (256 in DeepLabv3+)", default=256, resume=MODEL
        ),
        "pretrained": Key(
            "str",
            doc="local path of ImageNet backbone weights; empty = none",
            default="pretrained/resnet101.pth",
            resume=FREE,
        ),
        "random_init": Key(
            "bool", doc="allow training without pretrained weights", default=False, resume=FREE
        ),
        "sync_bn": Key("bool", doc="SyncBatchNorm when distributed on GPUs", default=True),
    },
    "EMA": {
        "alpha": Key("float", _unit, "in [0, 1]", "teacher EMA decay cap alpha_t", default=0.99),
    },
    "Optim": {
        "lr": Key("float", _pos, "> 0", "base learning rate", default=0.0064),
        "momentum": Key("float", lambda v: 0 <= v < 1, "in [0, 1)", "SGD momentum", default=0.9),
        "weight_decay": Key("float", _nonneg, ">= 0", "SGD weight decay", default=0.0005),
        "nesterov": Key("bool", doc="Nesterov momentum", default=True),
        "power": Key("float", _pos, "> 0", "poly schedule power", default=0.9),
        "min_lr": Key("float", _nonneg, ">= 0", "floor of the poly schedule", default=0.0001),
    },
    "Dataset": {
        "name": Key(
            "str",
            _choice(DATASETS),
            f"one of {', '.join(DATASETS)}",
            "dataset layout",
            resume=MODEL,
        ),
        "data_dir": Key("str", lambda v: v != "", "a path", "dataset root", resume=FREE),
        "txt_dir": Key("str", lambda v: v != "", "a path", "split folder root", resume=FREE),
        "num_labels": Key(
            "int", _pos, "> 0", "labeled images (selects the split folder)", resume=FIXED
        ),
        "split": Key(
            "str",
            _folder_name,
            f"{SEED_SPLIT} or a plain folder name",
            f"split folder under <txt_dir>/<num_labels>/: {SEED_SPLIT} = the one named by Seed",
            default="seed",
            resume=FIXED,
        ),
        "batch_size": Key(
            "int", _pos, "> 0", "labeled = unlabeled images per process", default=8, resume=FIXED
        ),
        "crop_size": Key(
            "int2",
            lambda v: min(v) > 0,
            "two positive ints",
            "training crop [H, W]",
            default=[512, 512],
            resume=FIXED,
        ),
        "scale_size": Key(
            "float2",
            lambda v: 0 < v[0] <= v[1],
            "0 < min <= max",
            "random rescale range",
            default=[0.5, 1.5],
        ),
        "mix_mode": Key(
            "str",
            _choice(MIX_MODES),
            f"one of {', '.join(MIX_MODES)}",
            "mixing of the unlabeled batch",
            default="cutmix",
        ),
        "num_workers": Key(
            "int", _nonneg, ">= 0", "data loader workers per process", default=4, resume=FREE
        ),
        # the generic dataset of a folder of images and masks (Dataset.name: folder); folders
        # are relative to Dataset.data_dir, list files to the working directory
        "classes": _folder(
            "strs",
            "class names, index = class id (Network.num_class of them)",
            check=_unique,
            expect="a list of distinct class names",
        ),
        "image_dir": _folder(
            "str", "training images (nested folders)", "", _relative, _INSIDE, resume=FREE
        ),
        "label_dir": _folder(
            "str", "their masks, the same relative paths", "", _relative, _INSIDE, resume=FREE
        ),
        "train_list": _folder(
            "str", "instead of the folders: a file of 'image [label]' lines", "", resume=FREE
        ),
        "unlabeled_dir": _folder(
            "str", "more training images without masks", "", _relative, _INSIDE, resume=FREE
        ),
        "unlabeled_list": _folder(
            "str", "or a file of such image paths, one a line", "", resume=FREE
        ),
        "val_image_dir": _folder("str", "validation images", "", _relative, _INSIDE, resume=FREE),
        "val_label_dir": _folder("str", "their masks", "", _relative, _INSIDE, resume=FREE),
        "val_list": _folder(
            "str", "instead of the folders: a file of 'image label' lines", "", resume=FREE
        ),
        "image_suffix": _folder(
            "str",
            "image file ending ('' = .jpg, .jpeg or .png)",
            "",
            _suffix,
            "'' or e.g. .jpg",
            resume=FREE,
        ),
        "label_suffix": _folder(
            "str", "mask file ending, e.g. _mask.png", ".png", _suffix, "e.g. .png", resume=FREE
        ),
        "label_format": _folder(
            "str",
            "masks: index (grey values), palette (P-mode indices), rgb (colours in Dataset.colors)",
            "index",
            _choice(LABEL_FORMATS),
            f"one of {', '.join(LABEL_FORMATS)}",
        ),
        "colors": _folder("colours", "label_format rgb: the [r, g, b] of each class", []),
        "ignore_colors": _folder("colours", "label_format rgb: colours read as ignore", []),
        "ignore_index": _folder(
            "int", "stored value of ignored pixels", IGNORE_VALUE, _byte, "in 0..255"
        ),
        "reduce_zero_label": _folder("bool", "stored 0 -> ignore, the others one lower", False),
        "palette": _folder(
            "colours", "colours of predicted masks ([] = VOC's or colors)", [], resume=FREE
        ),
    },
    "Loss": {
        "sup_loss": Key("str", _choice(SUP_LOSSES), "ce or ohem", "supervised loss", default="ce"),
        "ohem_thresh": Key("float", _unit, "in [0, 1]", "OHEM probability threshold", default=0.7),
        "ohem_min_kept": Key(
            "int", _nonneg, ">= 0", "OHEM min kept pixels per image", default=50000
        ),
        "un_threshold": Key(
            "float", _unit, "in [0, 1]", "confidence counted in the unsup weight", default=0.97
        ),
        "weak_threshold": Key(
            "float",
            _unit,
            "in [0, 1]",
            "pseudo-labeled pixel valid for the contrastive loss",
            default=0.7,
        ),
        "strong_threshold": Key("float", _unit, "in [0, 1]", "hard-anchor bound", default=0.8),
        "temp": Key("float", _pos, "> 0", "contrastive temperature and rep-space tau", default=0.5),
        "num_queries": Key("int", _pos, "> 0", "anchors per class", default=256),
        "num_negatives": Key("int", _pos, "> 0", "negatives per anchor", default=512),
        "alpha": Key("float", _unit, "in [0, 1]", "prototype EMA alpha_p", default=0.99),
        "warm_up": Key(
            "int", _nonneg, ">= 0", "cross_label epochs on logit-space labels", default=20
        ),
        "rep_un_threshold": Key(
            "float",
            _unit,
            "in [0, 1]",
            "cross_label after warm-up: rep-space confidence counted in the unsup weight",
            default=0.97,
        ),
        "weight_counts_ignored": Key(
            "bool", doc="paper's unsup weight numerator (may exceed 1)", default=True
        ),
    },
    "Ramp_Scheduler": {
        "begin_epoch": Key("int", _nonneg, ">= 0", "contrastive weight is 0 before it", default=0),
        "max_epoch": Key("int", _pos, "> 0", "weight is min_value from it on", default=200),
        "max_value": Key("float", _nonneg, ">= 0", "weight at begin_epoch", default=1.0),
        "min_value": Key("float", _nonneg, ">= 0", "floor of the weight", default=0.0),
        "ramp_mult": Key("float", doc="exponent multiplier (-5)", default=-5.0),
    },
    "Training": {
        "total_iter": Key("int", _pos, "> 0", "training iterations", default=80000),
        "eval_interval": Key(
            "int", _pos, "> 0", "evaluate the teacher every N iterations", default=4000, resume=FREE
        ),
        "eval_mode": Key(
            "str",
            _choice(EVAL_MODES),
            "whole, sliding or crop",
            "val protocol",
            default="whole",
            resume=FREE,
        ),
        "eval_crop_size": Key(
            "int2",
            lambda v: min(v) > 0,
            "two positive ints",
            "window of the sliding / crop protocols",
            default=[512, 512],
            resume=FREE,
        ),
        "save_interval": Key(
            "int", _pos, "> 0", "iterations between latest.pth writes", default=1000, resume=FREE
        ),
        "log_interval": Key(
            "int", _pos, "> 0", "iterations between log lines", default=20, resume=FREE
        ),
        "amp": Key(
            "bool", doc="mixed precision on GPU (bf16 where supported, else fp16)", default=True
        ),
        "compile": Key("bool", doc="torch.compile the student", default=False),
        "channels_last": Key("bool", doc="channels_last memory format on GPU", default=True),
        "joint_forward": Key(
            "bool", doc="labeled + unlabeled through one student forward", default=False
        ),
        "teacher_on_labeled": Key(
            "bool", doc="paper quirk: teacher also runs on labeled batch", default=False
        ),
    },
}


def keys_of(*resume: str) -> tuple[str, ...]:
    """The dotted keys whose ``Key.resume`` is one of ``resume``, in schema order."""
    return tuple(k for k in all_keys() if spec_of(k).resume in resume)


def spec_of(dotted: str) -> Key:
    """The ``Key`` of ``Section.key`` (or ``Seed``)."""
    section, _, key = dotted.partition(".")
    return SCHEMA[section][key] if key else SCHEMA[section]


def with_defaults(cfg: dict) -> dict:
    """A copy of (an older checkpoint's) ``cfg`` with every key it lacks that has a default
    filled in with it (a key of another dataset's left out): what a config written before
    the key existed meant."""
    cfg = copy.deepcopy(cfg)
    name = cfg.get("Dataset", {}).get("name") if isinstance(cfg.get("Dataset"), dict) else None
    for section, spec in SCHEMA.items():
        if isinstance(spec, Key):
            if spec.default is not REQUIRED:
                cfg.setdefault(section, copy.deepcopy(spec.default))
            continue
        node = cfg.setdefault(section, {})
        if not isinstance(node, dict):
            continue
        for key, kspec in spec.items():
            if kspec.default is not REQUIRED and kspec.dataset in ("", name):
                node.setdefault(key, copy.deepcopy(kspec.default))
    return cfg


def _fail(key: str, value: Any, expect: str) -> UserError:
    return UserError(f"config key {key}: got {value!r}, expected {expect}")


def _coerce(key: str, spec: Key, value: Any) -> Any:
    """Check the type of one value (ints are accepted for floats; '5e-4' strings too)."""
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise _fail(key, value, "true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(key, value, "an integer")
        return value
    if kind == "float":
        return _to_float(key, value)
    if kind == "str":
        if not isinstance(value, str):
            raise _fail(key, value, "a string")
        return value
    if kind == "strs":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise _fail(key, value, "a list of names")
        return list(value)
    if kind == "colours":
        return _colours(key, value)
    if kind in ("int2", "float2"):
        if not isinstance(value, list) or len(value) != 2:
            raise _fail(key, value, "a list of two numbers")
        if kind == "int2":
            if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise _fail(key, value, "a list of two integers")
            return list(value)
        return [_to_float(key, v) for v in value]
    raise AssertionError(kind)


def _colours(key: str, value: Any) -> list[list[int]]:
    """``[[r, g, b], ...]`` or a flat ``[r, g, b, r, g, b, ...]`` -> ``[[r, g, b], ...]``."""
    expect = "a list of [r, g, b] (or a flat list r, g, b, r, g, b, ...) of ints 0..255"
    if not isinstance(value, list):
        raise _fail(key, value, expect)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(value) % 3:
            raise _fail(key, value, expect)
        value = [value[i : i + 3] for i in range(0, len(value), 3)]
    for rgb in value:
        if (
            not isinstance(rgb, list)
            or len(rgb) != 3
            or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in rgb)
        ):
            raise _fail(key, rgb, expect)
    return [list(rgb) for rgb in value]


def _to_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _fail(key, value, "a number")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
        try:
            out = float(value)
        except ValueError:
            raise _fail(key, value, "a number") from None
    else:
        raise _fail(key, value, "a number")
    if not math.isfinite(out):
        raise _fail(key, value, "a finite number")
    return out


# Keys of the paper code's YAML files (config/VOC_config_baseline.yaml, ...) that this schema
# does not have, and what to write instead.
PAPER_KEYS = {
    "Network.name": "the network is always DeepLabv3+: drop it (Network.backbone picks the ResNet)",
    "Lr_Scheduler": "the poly schedule is Optim.power and Optim.min_lr here",
    "Training_Setting": "write Training.total_iter (iterations, not epochs) and --work-dir "
    "(for save_dir)",
    "Loss.is_available": "drop it (the contrastive loss is always on; supervised.py is the "
    "baseline without it)",
    "Distributed": "start processes with --nproc-per-node N (world_size) and choose GPUs with "
    "CUDA_VISIBLE_DEVICES (gpu_id)",
}


def all_keys() -> list[str]:
    """Every dotted key of the schema (``Seed``, ``Network.backbone``, ...)."""
    out = []
    for name, spec in SCHEMA.items():
        out += [name] if isinstance(spec, Key) else [f"{name}.{key}" for key in spec]
    return out


def unknown_key(source: str, dotted: str) -> UserError:
    """ "unknown key" with what to write instead: the paper code's keys say their new
    spelling, others the closest key of the schema (or the keys of their section)."""
    if dotted in PAPER_KEYS:
        return UserError(
            f"{source}: unknown key {dotted} (a key of the paper code's YAML): "
            f"{PAPER_KEYS[dotted]}; start from configs/voc.yaml or configs/cityscapes.yaml"
        )
    section, _, key = dotted.rpartition(".")
    hint = did_you_mean(dotted, all_keys())
    if not hint and section in SCHEMA and not isinstance(SCHEMA[section], Key):
        hint = f"; {section} has {', '.join(SCHEMA[section])}"
    elif not hint and not section:
        hint = f"; expected one of {', '.join(SCHEMA)}"
    return UserError(f"{source}: unknown key {dotted}{hint}")


def validate(cfg: Any, source: str = "config") -> dict:
    """Return a validated deep copy of ``cfg`` or raise ``UserError``."""
    if not isinstance(cfg, dict):
        raise UserError(f"{source}: expected a YAML mapping of sections, got {type(cfg).__name__}")
    out: dict = {}
    for name in cfg:
        if name not in SCHEMA:
            raise unknown_key(source, str(name))
    for name, spec in SCHEMA.items():
        if isinstance(cfg.get(name), dict):
            for key in cfg[name]:
                if isinstance(spec, dict) and key not in spec:
                    raise unknown_key(source, f"{name}.{key}")
    for name, spec in SCHEMA.items():
        if isinstance(spec, Key):
            if name in cfg:
                out[name] = _check(name, spec, cfg[name])
            elif spec.default is REQUIRED:
                raise UserError(f"{source}: missing key {name}")
            else:
                out[name] = copy.deepcopy(spec.default)
            continue
        value = cfg.get(name, {})  # a section left out: its keys' defaults
        if not isinstance(value, dict):
            raise _fail(name, value, "a section (mapping)")
        section = {}
        for key, kspec in spec.items():
            if kspec.dataset and kspec.dataset != section.get("name"):
                if key in value:
                    raise UserError(
                        f"{source}: key {name}.{key} is read with Dataset.name "
                        f"{kspec.dataset} only (this config names {section.get('name')})"
                    )
                continue
            if key not in value:
                if kspec.default is REQUIRED:
                    raise UserError(f"{source}: missing key {name}.{key}")
                section[key] = copy.deepcopy(kspec.default)
                continue
            section[key] = _check(f"{name}.{key}", kspec, value[key])
        out[name] = section
    _check_relations(out)
    return out


def _check(key: str, spec: Key, value: Any) -> Any:
    value = _coerce(key, spec, value)
    if not spec.check(value):
        choice = isinstance(value, str) and spec.expect.startswith("one of ")
        hint = (
            did_you_mean(value, spec.expect.removeprefix("one of ").split(", ")) if choice else ""
        )
        raise UserError(f"config key {key}: got {value!r}, expected {spec.expect}{hint}")
    return value


def _check_relations(cfg: dict) -> None:
    net, data, ramp = cfg["Network"], cfg["Dataset"], cfg["Ramp_Scheduler"]
    if not net["pretrained"] and not net["random_init"]:
        raise UserError(
            "config key Network.pretrained: got '', expected a local weights file "
            "(or set Network.random_init=true to train from scratch)"
        )
    if data["name"] == FOLDER:
        _check_folder(data, net["num_class"])
    pool = DATASETS[data["name"]].pool_size  # None: counted from the data
    if pool is not None and data["num_labels"] > pool:
        raise _fail(
            "Dataset.num_labels", data["num_labels"], f"<= {pool} (the {data['name']} pool)"
        )
    if ramp["max_epoch"] <= ramp["begin_epoch"]:
        raise _fail("Ramp_Scheduler.max_epoch", ramp["max_epoch"], "> Ramp_Scheduler.begin_epoch")
    if ramp["min_value"] > ramp["max_value"]:
        raise _fail("Ramp_Scheduler.min_value", ramp["min_value"], "<= Ramp_Scheduler.max_value")


def _check_folder(data: dict, num_class: int) -> None:
    """The keys of a ``folder`` dataset fit together (each error names a key)."""
    classes = len(data["classes"])
    if num_class != classes:
        raise _fail("Network.num_class", num_class, f"{classes}, the number of Dataset.classes")
    for images, masks, listed in (
        ("image_dir", "label_dir", "train_list"),
        ("val_image_dir", "val_label_dir", "val_list"),
    ):
        if bool(data[images]) == bool(data[listed]):
            raise _fail(
                f"Dataset.{images}", data[images], f"a folder or Dataset.{listed}, one of them"
            )
        if bool(data[images]) != bool(data[masks]):
            raise _fail(f"Dataset.{masks}", data[masks], f"a folder, with Dataset.{images}")
    if data["unlabeled_dir"] and data["unlabeled_list"]:
        raise _fail("Dataset.unlabeled_list", data["unlabeled_list"], "'' with unlabeled_dir")
    stored = range(1, classes + 1) if data["reduce_zero_label"] else range(classes)
    if data["ignore_index"] in stored:
        what = f"{stored.start}..{stored.stop - 1}" + (
            " (reduce_zero_label)" if data["reduce_zero_label"] else ""
        )
        raise _fail("Dataset.ignore_index", data["ignore_index"], f"a value outside {what}")
    rgb = data["label_format"] == "rgb"
    stored_classes = classes + int(data["reduce_zero_label"])
    if rgb and len(data["colors"]) != stored_classes:
        raise _fail(
            "Dataset.colors",
            data["colors"],
            f"{stored_classes} colours, one per class"
            + (" (the first read as 0: ignore)" if data["reduce_zero_label"] else ""),
        )
    for key in ("colors", "ignore_colors"):
        if data[key] and not rgb:
            raise _fail(f"Dataset.{key}", data[key], "[] (read with label_format rgb only)")
    colours = [tuple(c) for c in data["colors"] + data["ignore_colors"]]
    if len(set(colours)) != len(colours):
        raise _fail("Dataset.colors", data["colors"], "distinct colours (ignore_colors too)")


# --------------------------------------------------------------------------- typed access

# The Python type of each Key.kind (lists become tuples: a section is frozen all the way down).
KIND_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "int2": tuple[int, int],
    "float2": tuple[float, float],
    "strs": tuple[str, ...],
    "colours": tuple[tuple[int, int, int], ...],
}


class Section:
    """Base of the typed config (:func:`typed`): frozen dataclasses generated from ``SCHEMA``,
    one field per key, so a key is still declared once. A name the schema lacks is an
    ``AttributeError`` that names the closest key."""

    def __getattr__(self, name: str) -> Any:  # called only for a name that is not a field
        if name.startswith("__"):
            raise AttributeError(name)
        hint = did_you_mean(name, [f.name for f in fields(self)])  # type: ignore[arg-type]
        raise AttributeError(f"config section {type(self).__name__} has no key {name!r}{hint}")


def _frozen(value: Any) -> Any:
    """Lists (of lists) as tuples."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def attribute_of(section: str) -> str:
    """The attribute of a schema section in :func:`typed`: ``Ramp_Scheduler`` ->
    ``ramp_scheduler``, ``EMA`` -> ``ema``, ``Seed`` -> ``seed``."""
    return section.lower()


def section_class(name: str) -> type[Section]:
    """The frozen dataclass of the schema section ``name`` (as the schema is now): a field per
    key, of its kind's type, with its default; a key of one dataset (``Key.dataset``) is None
    where the config's dataset does not read it."""
    specs: list[tuple] = []
    for key, spec in SCHEMA[name].items():
        kind, meta = KIND_TYPES[spec.kind], {"doc": spec.doc}
        if spec.dataset:
            specs.append((key, kind | None, field(default=None, metadata=meta)))
        elif spec.default is REQUIRED:
            specs.append((key, kind, field(metadata=meta)))
        else:
            specs.append((key, kind, field(default=_frozen(spec.default), metadata=meta)))
    return make_dataclass(name, specs, bases=(Section,), frozen=True, kw_only=True)


def config_section(name: str, /, **values: Any) -> Section:
    """The schema section ``name`` with ``values``, its other keys at their defaults (tests and
    tools that call one stage of the step)."""
    return section_class(name)(**{key: _frozen(v) for key, v in values.items()})


def typed(cfg: Mapping[str, Any]) -> Section:
    """The validated config ``cfg`` as frozen dataclasses: ``typed(cfg).loss.un_threshold`` is
    ``cfg["Loss"]["un_threshold"]``. The dict stays what checkpoints and ``config.yaml``
    hold; this is how the engine reads it."""
    specs: list[tuple] = []
    values: dict[str, Any] = {}
    for name, spec in SCHEMA.items():
        attr = attribute_of(name)
        if isinstance(spec, Key):
            specs.append((attr, KIND_TYPES[spec.kind]))
            values[attr] = _frozen(cfg[name])
        else:
            cls = section_class(name)
            specs.append((attr, cls))
            values[attr] = cls(**{key: _frozen(v) for key, v in cfg[name].items()})
    config = make_dataclass("Config", specs, bases=(Section,), frozen=True, kw_only=True)
    return config(**values)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(yaml_error(path, exc)) from None


def yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: the file, the line, and the cause (a python tag says what to write)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}:" if mark is not None else ""
    problem = str(getattr(exc, "problem", None) or exc).strip().splitlines()[0]
    if "tag:yaml.org,2002:python/" in problem:
        tag = problem.split("tag:yaml.org,2002:", 1)[1].split("'", 1)[0]
        return (
            f"{path}:{where} the tag !!{tag} is not read (configs are plain YAML, read with "
            "yaml.safe_load): write a list, e.g. crop_size: [512, 512]"
        )
    context = getattr(exc, "context", None)
    cause = f"{context}, {problem}" if context else problem
    return f"{path}:{where} not valid YAML: {cause}"


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    """Apply ``Section.key=value`` (or ``Seed=1``) pairs, typed by the value they replace."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r}: expected Section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.split(".")
        node = cfg
        if len(parts) == 2 and isinstance(SCHEMA.get(parts[0]), dict):
            node.setdefault(parts[0], {})  # a section left out of the file: its defaults
        elif len(parts) == 1 and isinstance(SCHEMA.get(dotted), Key):
            spec = SCHEMA[dotted]
            if spec.default is not REQUIRED:
                node.setdefault(dotted, copy.deepcopy(spec.default))
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                hint = did_you_mean(dotted, all_keys())
                raise UserError(f"override {item!r}: unknown section {part!r}{hint}")
            node = node[part]
        leaf = parts[-1]
        section = SCHEMA.get(parts[0]) if len(parts) == 2 else None
        spec = section.get(leaf) if isinstance(section, dict) else None
        if isinstance(node, dict) and leaf not in node and spec and spec.default is not REQUIRED:
            node[leaf] = copy.deepcopy(spec.default)  # left out of the file: its default
        if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
            hint = did_you_mean(dotted, all_keys())
            raise UserError(f"override {item!r}: unknown key {dotted!r}{hint}")
        node[leaf] = _parse_override(dotted, raw, node[leaf])
    return cfg


def _parse_override(key: str, raw: str, old: Any) -> Any:
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        raise _fail(key, raw, "a YAML scalar or list") from None
    if isinstance(old, str):
        return raw  # strings stay strings ("001" stays "001")
    if isinstance(old, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        return _to_float(key, value)
    return value


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Load, override and validate a config file."""
    raw = load_yaml(path)
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return validate(raw, str(path))


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def keys_help() -> str:
    """Every key of the schema, one a line: its default (the paper's VOC value; "required":
    none) and its meaning; a key of one dataset says which."""
    lines = []
    for dotted in all_keys():
        spec = spec_of(dotted)
        default = "required" if spec.default is REQUIRED else json.dumps(spec.default)
        only = f" (Dataset.name {spec.dataset} only)" if spec.dataset else ""
        lines.append(f"  {dotted} = {default}: {spec.doc}{only}")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m engine.config",
        description="Print the merged, validated config (what a run with these arguments "
        "would use),\nor stop with one line naming the bad key and value. A key a config "
        "leaves out takes its default.",
        epilog="example:\n  python -m engine.config configs/voc.yaml Dataset.num_labels=183 "
        "Dataset.split=3407 Seed=1\n\nkeys (= default, the paper's VOC value):\n"
        + keys_help()
        + "\n",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument(
        "overrides", nargs="*", default=[], metavar="Section.key=value", help="config overrides"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        cfg = load_config(args.config, args.overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(dump_config(cfg), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
