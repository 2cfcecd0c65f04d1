"""The strict config loader: every kind of bad value stops with one line and exit status 2."""

import copy
import re
import subprocess
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import yaml

from engine.config import (
    REQUIRED,
    SCHEMA,
    Key,
    all_keys,
    apply_overrides,
    attribute_of,
    config_section,
    load_config,
    typed,
    validate,
)
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["voc", "cityscapes", "demo"]


def raw(name: str = "voc") -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    for section, spec in SCHEMA.items():
        assert section in cfg
        if not isinstance(spec, Key):  # every key but those of another dataset (folder)
            read = {k for k, s in spec.items() if s.dataset in ("", cfg["Dataset"]["name"])}
            assert set(cfg[section]) == read


def test_paper_values_in_voc_and_cityscapes():
    voc, city = (load_config(ROOT / "configs" / f"{n}.yaml") for n in ("voc", "cityscapes"))
    for cfg in (voc, city):
        assert cfg["Seed"] == 3407
        assert cfg["EMA"]["alpha"] == 0.99 and cfg["Loss"]["alpha"] == 0.99
        assert cfg["Optim"]["lr"] == pytest.approx(6.4e-3)
        assert cfg["Loss"]["un_threshold"] == 0.97 and cfg["Loss"]["weak_threshold"] == 0.7
        assert cfg["Loss"]["temp"] == 0.5
        assert (cfg["Loss"]["num_queries"], cfg["Loss"]["num_negatives"]) == (256, 512)
        assert cfg["Training"]["total_iter"] == 80000
        assert (cfg["Network"]["base_width"], cfg["Network"]["decoder_channels"]) == (64, 256)
    assert voc["Dataset"]["crop_size"] == [512, 512] and voc["Dataset"]["batch_size"] == 8
    assert city["Dataset"]["crop_size"] == [769, 769] and city["Dataset"]["batch_size"] == 4
    assert voc["Loss"]["sup_loss"] == "ce" and city["Loss"]["sup_loss"] == "ohem"
    assert voc["Network"]["num_class"] == 21 and city["Network"]["num_class"] == 19


def _bad(cfg, match):
    with pytest.raises(UserError, match=match) as info:
        validate(cfg, "x.yaml")
    assert "\n" not in str(info.value)


def test_unknown_key():
    cfg = raw()
    cfg["Loss"]["tmep"] = 0.5
    _bad(cfg, r"unknown key Loss\.tmep")
    cfg = raw()
    cfg["Extra"] = {}
    _bad(cfg, r"unknown key Extra; expected one of Seed, Network")


def test_unknown_keys_and_values_suggest_the_schemas():
    cfg = raw()
    cfg["Dataset"]["num_label"] = cfg["Dataset"].pop("num_labels")
    _bad(cfg, r"x\.yaml: unknown key Dataset\.num_label; did you mean Dataset\.num_labels\?$")
    cfg = raw()
    cfg["Loss"]["no_such_thing"] = 1  # nothing close: the section's keys
    _bad(cfg, r"unknown key Loss\.no_such_thing; Loss has sup_loss, ohem_thresh")
    cfg = raw()
    cfg["Dataset"]["name"] = "VOC"
    _bad(cfg, r"Dataset\.name: got 'VOC', expected one of voc, .*; did you mean voc\?$")
    for item, hint in [
        ("Dataset.num_label=92", "did you mean Dataset.num_labels?"),
        ("Los.temp=0.5", "did you mean Loss.temp?"),
        ("seed=1", "did you mean Seed?"),
    ]:
        with pytest.raises(UserError) as err:
            apply_overrides(raw(), [item])
        assert str(err.value).endswith(hint), str(err.value)


# The paper code's config/VOC_config_baseline.yaml, key for key (its values are the paper's).
PAPER_YAML = """Network:
  name: DeepLabv3Plus
  num_class: 21
EMA:
  alpha: 0.99
Optim:
  lr: 6.4e-3
  weight_decay: 5e-4
Lr_Scheduler:
  name: PolyLR
  step_size: 90
  gamma: 0.1
Dataset:
  name: VOC
  data_dir: /
  txt_dir: /
  num_labels: 331
  batch_size: 8
  crop_size: !!python/tuple [512,512]
  scale_size: !!python/tuple [0.5,1.5]
  mix_mode: cutmix
Training_Setting:
  epoch: 200
  save_dir: ./checkpoints/
Seed: 3407
Loss:
  is_available: True
  warm_up: 0
Distributed:
  world_size: 2
  gpu_id: 0,1
"""


def test_the_paper_codes_yaml_says_what_to_write(tmp_path):
    paper = tmp_path / "VOC_config_baseline.yaml"
    paper.write_text(PAPER_YAML)
    with pytest.raises(UserError) as err:
        load_config(paper)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{paper}: line 19: ")
    assert "!!python/tuple" in message and "write a list" in message
    cfg = yaml.safe_load(PAPER_YAML.replace("!!python/tuple ", ""))
    for key, hint in [  # the order the loader meets them: sections first
        ("Lr_Scheduler", "Optim.power"),
        ("Training_Setting", "Training.total_iter"),
        ("Distributed", "--nproc-per-node"),
        ("Network.name", "always DeepLabv3+"),
        ("Loss.is_available", "always on"),
    ]:
        paper.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with pytest.raises(UserError) as err:
            load_config(paper)
        message = str(err.value)
        assert f"unknown key {key} (a key of the paper code's YAML)" in message, message
        assert hint in message and "configs/voc.yaml" in message
        section, _, leaf = key.rpartition(".")
        del (cfg[section] if section else cfg)[leaf or key]


def test_yaml_errors_keep_their_cause(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("Seed: 1\nNetwork:\n  backbone: resnet18\n num_class: 3\n")
    with pytest.raises(UserError) as err:
        load_config(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: line 4: not valid YAML: ") and "expected" in message


@pytest.mark.parametrize(
    "section,key,value,match",
    [
        ("Optim", "lr", -0.1, r"Optim\.lr: got -0\.1, expected > 0"),
        ("Optim", "lr", "fast", r"Optim\.lr: got 'fast', expected a number"),
        ("Loss", "un_threshold", 1.5, r"Loss\.un_threshold: got 1\.5, expected in \[0, 1\]"),
        ("Loss", "weak_threshold", -0.1, r"Loss\.weak_threshold"),
        ("Dataset", "crop_size", [0, 512], r"Dataset\.crop_size: got \[0, 512\]"),
        ("Dataset", "crop_size", [512], r"Dataset\.crop_size: .* two"),
        ("Dataset", "num_labels", 10583, r"Dataset\.num_labels: got 10583, expected <= 10582"),
        ("Dataset", "batch_size", 2.5, r"Dataset\.batch_size: got 2\.5, expected an integer"),
        ("Dataset", "mix_mode", "mixup", r"Dataset\.mix_mode: got 'mixup'"),
        ("Network", "backbone", "vgg16", r"Network\.backbone: got 'vgg16'"),
        ("Network", "output_stride", 32, r"Network\.output_stride"),
        ("Training", "amp", "yes", r"Training\.amp: got 'yes', expected true or false"),
        ("Dataset", "scale_size", [1.5, 0.5], r"Dataset\.scale_size"),
    ],
)
def test_bad_values(section, key, value, match):
    cfg = raw()
    cfg[section][key] = value
    _bad(cfg, match)


def test_yaml_1_1_exponent_string_is_a_float():
    cfg = raw()
    cfg["Optim"]["weight_decay"] = "5e-4"  # what yaml.safe_load makes of `5e-4`
    assert validate(cfg)["Optim"]["weight_decay"] == pytest.approx(5e-4)


def test_random_init_must_be_explicit():
    cfg = raw()
    cfg["Network"]["pretrained"] = ""
    _bad(cfg, r"Network\.pretrained.*random_init")
    cfg["Network"]["random_init"] = True
    assert validate(cfg)["Network"]["pretrained"] == ""


def test_narrow_backbone_may_take_pretrained_weights():
    """Any base width may load a weights file; whether its tensors fit is the loader's check
    (tests/test_network.py), which names the keys."""
    cfg = raw("voc")
    assert (
        validate(cfg)["Network"]["base_width"],
        validate(cfg)["Network"]["decoder_channels"],
    ) == (64, 256)
    cfg["Network"]["base_width"] = 16
    assert validate(cfg)["Network"]["base_width"] == 16


def test_overrides_are_typed_by_the_value_they_replace():
    cfg = apply_overrides(
        raw(),
        [
            "Dataset.num_labels=183",
            "Seed=1",
            "Optim.lr=1e-2",
            "Dataset.crop_size=[321,321]",
            "Training.amp=false",
            "Network.pretrained=001.pth",
        ],
    )
    cfg = validate(cfg)
    assert cfg["Dataset"]["num_labels"] == 183 and cfg["Seed"] == 1
    assert cfg["Optim"]["lr"] == pytest.approx(0.01) and isinstance(cfg["Optim"]["lr"], float)
    assert cfg["Dataset"]["crop_size"] == [321, 321]
    assert cfg["Training"]["amp"] is False
    assert cfg["Network"]["pretrained"] == "001.pth"


@pytest.mark.parametrize(
    "item,match",
    [
        ("Dataset.nope=1", "unknown key 'Dataset.nope'"),
        ("Nope.x=1", "unknown section 'Nope'"),
        ("Dataset", "expected Section.key=value"),
        ("Dataset=3", "unknown key 'Dataset'"),
    ],
)
def test_bad_overrides(item, match):
    with pytest.raises(UserError, match=match):
        apply_overrides(raw(), [item])


def test_override_validated_like_yaml():
    with pytest.raises(UserError, match=r"Loss\.temp: got 0\.0"):
        load_config(ROOT / "configs" / "voc.yaml", ["Loss.temp=0"])


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "engine.config", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_cli_prints_merged_config():
    res = run_cli("configs/voc.yaml", "Dataset.num_labels=183")
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["Dataset"]["num_labels"] == 183


@pytest.mark.parametrize(
    "args", [("configs/voc.yaml", "Loss.temp=-1"), ("nope.yaml",), ("configs/voc.yaml", "X.y=1")]
)
def test_cli_bad_input_exits_2_with_one_line(args):
    res = run_cli(*args)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "Traceback" not in res.stderr


def test_invalid_yaml_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("Seed: [1,\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config(bad)


# ------------------------------------------------------------------------------ the schema


def readme_keys(text: str) -> set[str]:
    """The keys the README's Configuration table names (``Section.*`` = the whole section)."""
    table = text.split("| key | meaning |", 1)[1].split("\n\n", 1)[0]
    keys: set[str] = set()
    for row in table.splitlines()[2:]:
        for name in re.findall(r"`([A-Z][\w]*(?:\.[\w*]+)?)`", row.split(" | ")[0]):
            section, _, key = name.partition(".")
            keys |= set(f"{section}.{k}" for k in SCHEMA[section]) if key == "*" else {name}
    return keys


def test_readme_key_table_lists_the_schemas_keys() -> None:
    """Fails naming a schema key the README's table lacks, or a key it lists that the schema
    does not have."""
    listed = readme_keys((ROOT / "README.md").read_text())
    schema = set(all_keys())
    assert not schema - listed, f"keys missing from README's table: {sorted(schema - listed)}"
    assert not listed - schema, f"README lists keys the schema lacks: {sorted(listed - schema)}"


def test_missing_key_takes_its_default_unless_required():
    cfg = raw()
    del cfg["Dataset"]["crop_size"], cfg["Loss"]
    out = validate(cfg)
    assert out["Dataset"]["crop_size"] == [512, 512] and out["Loss"]["temp"] == 0.5
    for section, key in (("Dataset", "num_labels"), ("Network", "num_class")):
        cfg = raw()
        del cfg[section][key]
        _bad(cfg, rf"missing key {section}\.{key}")
    assert SCHEMA["Seed"].default == 3407  # the paper's


def test_defaults_are_the_papers_voc_values_and_voc_yaml_only_repeats_them():
    """configs/voc.yaml names values a reader of the paper looks for; each equals its default."""
    for section, keys in raw("voc").items():
        for key, value in keys.items():
            default = SCHEMA[section][key].default
            if default is not REQUIRED:
                assert validate({**raw(), section: {**raw()[section], key: value}})  # valid
                assert value == default, (section, key)


def test_a_full_config_whose_values_are_the_defaults_stays_valid():
    full = load_config(ROOT / "configs" / "voc.yaml")
    assert validate(copy.deepcopy(full)) == full


def test_a_key_added_in_one_place_reaches_configs_resume_evaluate_and_help(monkeypatch):
    """One declaration in the schema: configs read its default, an older checkpoint's config
    (without the key) resumes and is read by evaluate's config check, overrides take it,
    ``python -m engine.config --help`` lists it, and the README check names it."""
    from engine.checkpoints import inference_config
    from engine.resume import check_resume, check_resume_compatible

    old = load_config(ROOT / "configs" / "demo.yaml")  # written before the key existed
    new_key = Key("float", _unit_check, "in [0, 1]", "a new loss weight", default=0.25)
    monkeypatch.setitem(SCHEMA["Loss"], "new_weight", new_key)
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg["Loss"]["new_weight"] == 0.25
    assert load_config(ROOT / "configs" / "voc.yaml")["Loss"]["new_weight"] == 0.25
    assert load_config(ROOT / "configs" / "demo.yaml", ["Loss.new_weight=1"])["Loss"][
        "new_weight"
    ] == pytest.approx(1.0)
    path = Path("run/latest.pth")
    check_resume_compatible(old, cfg, path)
    assert check_resume({"config": old, "iteration": 1, "world_size": 1}, cfg, 1, path, False) == []
    changed = load_config(ROOT / "configs" / "demo.yaml", ["Loss.new_weight=0.5"])
    with pytest.raises(UserError, match=r"Loss.new_weight \(0.25 -> 0.5\)"):
        check_resume({"config": old, "iteration": 1, "world_size": 1}, changed, 1, path, False)
    assert inference_config({"config": old}, path, None)["Loss"]["new_weight"] == 0.25
    assert inference_config({"config": old}, path, ROOT / "configs" / "demo.yaml") == cfg
    from engine.config import build_parser

    assert "Loss.new_weight = 0.25: a new loss weight" in build_parser().format_help()
    assert "Loss.new_weight" not in readme_keys((ROOT / "README.md").read_text())
    assert "Loss.new_weight" in all_keys()


def _unit_check(v: float) -> bool:
    return 0 <= v <= 1


# --------------------------------------------------------------------------- typed access


def test_typed_config_reads_every_key_of_the_dict_as_an_attribute():
    cfg = load_config(ROOT / "configs" / "voc.yaml")
    c = typed(cfg)
    assert c.seed == cfg["Seed"]
    for section, spec in SCHEMA.items():
        if isinstance(spec, Key):
            continue
        node = getattr(c, attribute_of(section))
        for key, value in cfg[section].items():
            got = getattr(node, key)
            assert got == (tuple(value) if isinstance(value, list) else value), f"{section}.{key}"
    assert c.loss.un_threshold == cfg["Loss"]["un_threshold"] == 0.97
    assert c.ramp_scheduler.max_epoch == cfg["Ramp_Scheduler"]["max_epoch"]
    assert c.dataset.crop_size == (512, 512)
    assert c.dataset.classes is None  # a folder key: voc does not read it
    with pytest.raises(FrozenInstanceError):
        c.loss.un_threshold = 0.5
    with pytest.raises(AttributeError, match="no key 'un_treshold'; did you mean un_threshold"):
        c.loss.un_treshold  # noqa: B018
    assert load_config(ROOT / "configs" / "voc.yaml") == cfg  # the dict is left as it was


def test_a_key_added_to_the_schema_is_an_attribute_of_its_section_with_its_default(monkeypatch):
    monkeypatch.setitem(
        SCHEMA["Loss"], "new_weight", Key("float", _unit_check, "in [0, 1]", "new", default=0.25)
    )
    assert typed(load_config(ROOT / "configs" / "demo.yaml")).loss.new_weight == 0.25
    assert config_section("Loss").new_weight == 0.25
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["Loss.new_weight=1"])
    assert typed(cfg).loss.new_weight == 1.0
