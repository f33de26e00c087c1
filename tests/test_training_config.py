"""Recipe configs: every shipped YAML loads and validates; overrides and errors name their keys."""

from pathlib import Path

import pytest

from msta_fast.training.config import DEFAULTS, ConfigError, build_config, load_yaml, method_config, parse_override

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def test_every_config_loads_and_validates():
    files = sorted(CONFIGS.rglob("*.yaml"))  # recursive: subfolders too
    assert len(files) >= 10, files
    for path in files:
        cfg = build_config(path)
        assert cfg["setting"] == path.parent.name, path
        assert cfg["dataset"] == path.stem, path


def test_paper_table1_values_in_real_configs():
    b2n = build_config(CONFIGS / "b2n" / "hmdb.yaml")
    assert (b2n["optim"]["lr"], b2n["optim"]["epochs"], b2n["adapter"]["dim"], b2n["adapter"]["scale"]) == (
        1e-3, 11, 256, 0.005)
    fs = build_config(CONFIGS / "fs" / "ucf.yaml")
    assert (fs["adapter"]["dim"], fs["adapter"]["start_layer"], fs["optim"]["epochs"]) == (128, 8, 50)
    full = build_config(CONFIGS / "full" / "k400.yaml")
    assert (full["optim"]["batch_size"], full["optim"]["lr"], full["adapter"]["scale"]) == (256, 8e-3, 0.001)
    assert (full["eval"]["num_clips"], full["eval"]["num_crops"]) == (4, 3)


def test_overrides_parse_as_yaml_and_win():
    assert parse_override("optim.lr=2e-3") == ("optim.lr", 2e-3)
    assert parse_override("protocol.seeds=[1, 3]") == ("protocol.seeds", [1, 3])
    cfg = build_config(CONFIGS / "b2n" / "synthetic.yaml", {"loss.consistency": False},
                       ["optim.epochs=3", "adapter.options={temporal_kernel: [3, 3, 3]}"])
    assert cfg["optim"]["epochs"] == 3 and cfg["loss"]["consistency"] is False
    assert cfg["adapter"]["options"] == {"temporal_kernel": [3, 3, 3]}
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
