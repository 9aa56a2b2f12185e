"""Config overrides: parsing by field type, clear errors, round trip through JSON."""

import json

import pytest

from dataparams.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    shorthand_overrides,
)


def test_overrides_are_parsed_by_type():
    cfg = apply_overrides(
        TrainConfig(),
        [
            "optim.lr=0.2",
            "optim.epochs=12",
            "optim.milestones=3,6",
            "data.subset=none",
            "curriculum.instance_curriculum=true",
            "curriculum.clamp=[0.1, 10]",
            "method_options={\"q\": 0.5}",
            "seed=7",
        ],
    )
    assert cfg.optim.lr == 0.2 and cfg.optim.epochs == 12 and cfg.optim.milestones == [3, 6]
    assert cfg.data.subset is None and cfg.curriculum.instance_curriculum is True
    assert cfg.curriculum.clamp == [0.1, 10.0] and cfg.method_options == {"q": 0.5} and cfg.seed == 7
    assert TrainConfig().optim.lr != 0.2  # the input is not modified


@pytest.mark.parametrize(
    "item,match",
    [
        ("optim.lrr=1", "unknown field 'optim.lrr'; valid: optim.epochs"),
        ("nosuch=1", "unknown field 'nosuch'"),
        ("optim.epochs=abc", "optim.epochs: expected an integer"),
        ("optim.epochs=2.5", "expected an integer"),
        ("curriculum.class_curriculum=maybe", "expected true/false"),
        ("optim.lr=nan", "NaN"),
        ("optim.lr", "section.field=value"),
        ("seed.x=1", "seed is not a section"),
    ],
)
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), [item])


def test_round_trip_through_json():
    cfg = apply_overrides(TrainConfig(), ["curriculum.clamp=none", "report_epochs=84"])
    again = config_from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg


def test_unknown_key_in_saved_config():
    data = config_to_dict(TrainConfig())
    data["optim"]["bogus"] = 1
    with pytest.raises(ConfigError, match="optim.bogus"):
        config_from_dict(data)


def test_shorthand_options_become_overrides_and_zero_is_kept():
    # seed 0 and 0 workers are values, not "unset"; an empty data dir is unset.
    got = shorthand_overrides(data_dir="", epochs=3, seed=0, workers=0)
    assert got == ["optim.epochs=3", "seed=0", "data.workers=0"]
    cfg = apply_overrides(TrainConfig(), got)
    assert (cfg.optim.epochs, cfg.seed, cfg.data.workers) == (3, 0, 0)
    assert shorthand_overrides() == []


def test_table_fields_parse_and_a_config_without_them_is_the_same_run():
    from dataparams.config import diff_configs

    cfg = apply_overrides(TrainConfig(), ["data.feature_columns=f0,f1", "data.label_column=species",
                                          'data.image_column=none'])
    assert cfg.data.feature_columns == ["f0", "f1"] and cfg.data.label_column == "species"
    assert cfg.data.image_column is None and cfg.data.split is None
    # A config.json written before these fields existed reads as their defaults: an old run is
    # neither retrained nor refused for them.
    new = config_to_dict(TrainConfig())
    old = json.loads(json.dumps(new))
    for name in ("label_column", "image_column", "feature_columns", "id_column", "split"):
        del old["data"][name]
    assert diff_configs(old, new) == [] and config_from_dict(old) == TrainConfig()
