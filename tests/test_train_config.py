"""RunConfig: the paper's recipe by default, strict reading, overrides, run length, hash."""
from __future__ import annotations

import json

import pytest

from derainkit.errors import ConfigError
from derainkit.train.config import DEFAULT_EPOCHS, RunConfig


def test_defaults_are_the_msgnn_recipe():
    cfg = RunConfig()
    assert (cfg.model, cfg.loss, cfg.optimizer, cfg.lr, cfg.betas, cfg.weight_decay) == \
        ("msgnn", "ssim", "adam", 5e-4, (0.9, 0.999), 0.0)
    assert (cfg.crop, cfg.batch, cfg.lr_milestones, cfg.lr_gamma, cfg.seed) == (64, 8, (0.6, 0.8), 0.1, 66)
    assert cfg.grad_clip is None and cfg.precision == "fp32" and not cfg.compile
    # 500 epochs of 1,800 pairs at batch 8 = 112,500 iterations, drops at 67,500 and 90,000 (reference §3.1).
    assert cfg.run_epochs == DEFAULT_EPOCHS == 500
    assert cfg.total_iterations(1800) == 112_500
    assert cfg.milestones(112_500) == [67_500, 90_000]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict({"model": "prenet", "learning_rate": 1e-3})
    msg = str(exc.value)
    assert "learning_rate" in msg and "valid keys" in msg and "'lr'" in msg and "'exemplar'" in msg


@pytest.mark.parametrize("data, match", [
    ({"exemplar": "nearest"}, r"exemplar='nearest'.*official"),
    ({"loss": "ssmi"}, r"loss='ssmi'"),
    ({"lr_milestones": [0.8, 0.6]}, "increasing fractions"),
    ({"lr_milestones": [0.5, 1.5]}, "increasing fractions"),
    ({"crop": 0}, "crop=0"),
    ({"crop": "big"}, "crop='big' must be an integer"),
    ({"iterations": 10, "epochs": 2}, "either iterations"),
    ({"precision": "fp16"}, "precision='fp16'"),
    ({"val_protocols": ["psnr"]}, "unknown protocol 'psnr'"),
    ({"betas": [0.9]}, "two numbers"),
    ({"channels_last": "yes"}, "true or false"),
    ({"device": "gpu"}, "device='gpu'"),
    ({"model": "prenet", "model_config": {"stagez": 2}}, r"model_config \(model 'prenet'\).*stagez.*valid keys"),
])
def test_invalid_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(data)


def test_file_round_trip_yaml_and_json(tmp_path):
    cfg = RunConfig(model="prenet", model_config={"stages": 2}, iterations=10, val_data=None, exemplar="none")
    y = tmp_path / "run.yaml"
    import yaml

    y.write_text(yaml.safe_dump(cfg.to_dict()))
    j = tmp_path / "run.json"
    j.write_text(json.dumps(cfg.to_dict()))
    assert RunConfig.from_file(y) == cfg == RunConfig.from_file(j)
    assert RunConfig.from_file(y).config_hash() == cfg.config_hash()
    # YAML 1.1 reads "5e-4" as a string; numbers are coerced.
    y.write_text("model: prenet\nlr: 5e-4\niterations: 3\n")
    assert RunConfig.from_file(y).lr == 5e-4


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [prenet\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        RunConfig.from_file(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        RunConfig.from_file(bad)
    bad.write_text("modle: prenet\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown run config key\(s\) \['modle'\]"):
        RunConfig.from_file(bad)


def test_overrides():
    cfg = RunConfig(model="prenet")
    new = cfg.with_overrides(["lr=1e-4", "model_config.stages=2", "lr_milestones=[0.5, 0.75]", "val_data=null",
                              "iterations=100", "exemplar=random"])
    assert new.lr == 1e-4 and new.model_config == {"stages": 2} and new.lr_milestones == (0.5, 0.75)
    assert new.val_data is None and new.iterations == 100 and new.epochs is None and new.exemplar == "random"
    # Setting one run length clears the other.
    assert new.with_overrides(["epochs=3"]).iterations is None
    assert new.with_overrides(["epochs=3"]).epochs == 3.0
    with pytest.raises(ConfigError, match="either iterations"):
        cfg.with_overrides(["epochs=3", "iterations=4"])
    with pytest.raises(ConfigError, match=r"unknown run config key 'lrr'.*valid keys"):
        cfg.with_overrides(["lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        cfg.with_overrides(["lr"])
    with pytest.raises(ConfigError, match="stagez"):
        cfg.with_overrides(["model_config.stagez=2"])
    with pytest.raises(ConfigError, match="not a mapping"):
        cfg.with_overrides(["lr.x=2"])


def test_run_length_from_epochs():
    cfg = RunConfig(model="prenet", epochs=2.5, batch=8)
    assert cfg.total_iterations(200) == 63  # ceil(2.5 * 200 / 8)
    assert RunConfig(model="prenet", iterations=7).total_iterations(200) == 7
    assert RunConfig(model="prenet", iterations=10).milestones(10) == [6, 8]


def test_hash_names_the_computation():
    base = RunConfig(model="prenet", iterations=10)
    h = base.config_hash()
    assert len(h) == 12 and int(h, 16) >= 0
    assert RunConfig(model="prenet", iterations=10).config_hash() == h  # stable
    assert base.with_overrides(["lr=1e-3"]).config_hash() != h
    assert base.with_overrides(["seed=1"]).config_hash() != h
    # Where the run is written and how many loader workers prepare batches do not change results.
    for o in (["out_dir=/elsewhere"], ["num_workers=4"], ["checkpoint_every=7"]):
        assert base.with_overrides(o).config_hash() == h
    # The model config is compared with the model's defaults filled in.
    assert base.with_overrides(["model_config.stages=6"]).config_hash() == h
    assert base.with_overrides(["model_config.stages=2"]).config_hash() != h
    assert base.run_dir().as_posix() == f"runs/prenet/{h}"
