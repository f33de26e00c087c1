"""Recipe configs: every shipped YAML loads and validates; overrides and errors name their keys."""

from pathlib import Path

import pytest

from msta_fast.methods.msta import MSTAConfig
from msta_fast.training.config import (
    DEFAULTS,
    ConfigError,
    build_config,
    check_methods,
    load_yaml,
    method_config,
    method_options,
    parse_override,
)

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def test_every_config_loads_and_validates():
    files = sorted(CONFIGS.rglob("*.yaml"))  # recursive: subfolders too
    assert len(files) >= 10, files
    for path in files:
        cfg = build_config(path)
        assert cfg["setting"] == path.parent.name, path
        assert cfg["dataset"] == path.stem, path


def test_paper_table1_values_in_real_configs():
    def msta(cfg):
        return method_options(cfg, "msta")[1]

    b2n = build_config(CONFIGS / "b2n" / "hmdb.yaml")
    assert (b2n["optim"]["lr"], b2n["optim"]["epochs"], msta(b2n).dim, msta(b2n).scale) == (1e-3, 11, 256, 0.005)
    fs = build_config(CONFIGS / "fs" / "ucf.yaml")
    assert (msta(fs).dim, msta(fs).start_layer, fs["optim"]["epochs"]) == (128, 8, 50)
    full = build_config(CONFIGS / "full" / "k400.yaml")
    assert (full["optim"]["batch_size"], full["optim"]["lr"], msta(full).scale) == (256, 8e-3, 0.001)
    assert (full["eval"]["num_clips"], full["eval"]["num_crops"]) == (4, 3)
    for path in sorted(CONFIGS.rglob("*.yaml")):
        check_methods(build_config(path))  # every method's options in every shipped config are valid


def test_overrides_parse_as_yaml_and_win():
    assert parse_override("optim.lr=2e-3") == ("optim.lr", 2e-3)
    assert parse_override("protocol.seeds=[1, 3]") == ("protocol.seeds", [1, 3])
    cfg = build_config(CONFIGS / "b2n" / "synthetic.yaml", {"loss.msta.consistency": False},
                       ["optim.epochs=3", "adapter.msta.temporal_kernel=[3, 3, 3]"])
    assert cfg["optim"]["epochs"] == 3 and cfg["loss"]["msta"]["consistency"] is False
    _, config, loss = method_options(cfg, "msta")
    assert config == MSTAConfig(dim=32, scale=0.1, temporal_kernel=(3, 3, 3)) and loss.consistency is False
    assert DEFAULTS["optim"]["epochs"] == 11  # the defaults are not mutated


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.learning_rate"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="optim.epochs must be int"):
        build_config(None, overrides=["optim.epochs=two"])
    with pytest.raises(ConfigError, match="setting must be one of"):
        build_config(None, overrides=["setting=b2x"])
    with pytest.raises(ConfigError, match="key=value"):
        build_config(None, overrides=["optim.lr"])


def test_method_overrides_merge_per_method():
    cfg = build_config(None, overrides=["method_overrides={full: {optim: {lr: 1.0e-5}}}"])
    assert method_config(cfg, "full")["optim"]["lr"] == 1e-5
    assert method_config(cfg, "msta")["optim"]["lr"] == cfg["optim"]["lr"]
    cfg = build_config(None, overrides=["method_overrides={full: {optim: {lr_typo: 1}}}"])
    with pytest.raises(ConfigError, match="lr_typo"):
        method_config(cfg, "full")


def test_method_options_are_checked_against_the_method():
    """adapter.<method> and loss.<method> take only that method's options: a wrong one names the key."""
    with pytest.raises(ConfigError, match="adapter.lora: 'lora' has no option 'dim'; its options: rank"):
        check_methods(build_config(None, overrides=["methods=[lora]", "adapter.lora.dim=64"]))
    with pytest.raises(ConfigError, match="adapter.msta: dropout must be in"):
        check_methods(build_config(None, overrides=["adapter.msta.dropout=1.5"]))
    with pytest.raises(ConfigError, match=r"loss.m2clip: unknown option\(s\) \['mlm_weigth'\]"):
        check_methods(build_config(None, overrides=["methods=[m2clip]", "loss.m2clip.mlm_weigth=0.2"]))
    with pytest.raises(ConfigError, match="loss.lora: method 'lora' has no loss options"):
        check_methods(build_config(None, overrides=["methods=[lora]", "loss.lora.weight=1"]))
    with pytest.raises(ConfigError, match="methods: unknown method 'prompt'"):
        check_methods(build_config(None, overrides=["methods=[prompt]"]))
    _, config, _ = method_options(build_config(None, overrides=["adapter.lora.rank=16"]), "lora")
    assert config.rank == 16


@pytest.mark.parametrize("override, message", [
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
    ("protocol.seeds=[]", "protocol.seeds must be a non-empty list"),
    ("optim.lr=.nan", "optim.lr must be a finite number > 0"),
    ("optim.lr=.inf", "optim.lr must be a finite number > 0"),
    ("protocol.shots=[0]", "protocol.shots must be a non-empty list of integers >= 1"),
    ("methods=[msta, msta]", "methods lists a method twice"),
    ("loss.template=a video", "loss.template must contain {}"),
])
def test_values_are_checked_before_any_work_starts(override, message):
    with pytest.raises(ConfigError, match=message.replace("{}", "\\{\\}")):
        build_config(None, overrides=[override])


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        build_config(None, overrides=["eval.batch_size=0", "optim.lr=-1"])
    assert "eval.batch_size" in str(err.value) and "optim.lr" in str(err.value)
