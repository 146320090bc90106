"""scripts/label_efficiency.py: the splits it fixes, the data config it writes, its options."""

import importlib.util
import inspect
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_efficiency.py"
spec = importlib.util.spec_from_file_location("label_efficiency_script", SCRIPT)
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def test_test_validation_and_labelled_pool_are_disjoint_and_cover_the_labelled_set():
    splits = [set(script.TEST), set(script.VAL), set(script.LABELLED_POOL)]
    assert sum(map(len, splits)) == 48 == len(set().union(*splits))
    assert len(script.TEST) == 12 and len(script.LABELLED_POOL) == 32


def test_data_config_reads_the_split_manifest_at_4_mm(tmp_path):
    path = script.data_config(tmp_path / "d.yaml", tmp_path / "m.csv", tmp_path / "cache")
    init = json.loads(path.read_text())["data"]["init_args"]
    assert init["manifest"] == str(tmp_path / "m.csv") and init["spacing"] == 4.0 and init["crop_size"] == 32
    assert init["with_label"] is True and init["cache_dir"] == str(tmp_path / "cache")
    assert init["augment"] is False


def test_augment_reaches_the_manifest_datamodule_as_its_augment_argument(tmp_path):
    from data_modules import ManifestDataModule

    init = json.loads(script.data_config(tmp_path / "d.yaml", tmp_path / "m.csv", tmp_path / "c", augment=True)
                      .read_text())["data"]["init_args"]
    assert init["augment"] is True
    assert set(init) <= set(inspect.signature(ManifestDataModule).parameters)  # every key reaches the datamodule


@pytest.mark.parametrize(("unseen", "pool", "name"), [("PD", ["T1", "T2", "FLAIR"], "PD-TSE"),
                                                     ("FLAIR", ["T1", "T2", "PD"], "T2-FLAIR-3D-SPACE")])
def test_the_unseen_sequence_is_kept_out_of_the_pool_and_renamed_for_the_unet(unseen, pool, name):
    from brainfm_lightning.data.demo import CONTRASTS

    assert set(script.DEMO_SEQUENCES) == set(CONTRASTS) == set(script.UNSEEN_NAMES)
    assert list(script.pool_sequences(unseen)) == pool
    assert json.loads(script.unet_channels(unseen)) == [*pool, name]
    assert script.evaluation_overrides("unet", "tokens", unseen) == [
        "--set", f"model.init_args.modalities={script.unet_channels(unseen)}"]


@pytest.mark.parametrize("model", ["scratch", "pretrained", "frozen_random", "no_cln"])
def test_brainfm_segmenters_are_evaluated_with_the_stem_and_fusion_they_were_trained_with(model):
    assert script.evaluation_overrides(model, "tokens", "PD", "mean_var") == [
        "--set", "model.init_args.head.init_args.stem=tokens",
        "--set", "model.init_args.head.init_args.fusion=mean_var"]


def test_the_stem_and_fusion_overrides_build_the_trained_segmenter():
    from brainfm_lightning.commands.config import build_from_configs

    configs = [str(script.CONFIGS / "finetune/seg_demo.yaml"), str(script.CONFIGS / "model/test.yaml")]
    options = script.evaluation_overrides("scratch", "per_sequence", "PD", "mean_var")
    module, _ = build_from_configs(configs, [tuple(o.split("=", 1)) for o in options[1::2]])
    assert module.segmenter.stem == "per_sequence" and module.segmenter.fusion == "mean_var"
    assert module.segmenter.decoder.stem_merge is not None


def test_the_default_recipe_is_the_measured_one_and_augmentation_can_be_switched_off():
    """Defaults: 800 augmented fine-tuning steps, mean-and-variance fusion (docs/label_efficiency.md 2.13)."""
    default = script.build_parser().parse_args([])
    assert default.augment is True and default.fusion == "mean_var" and default.steps == 800
    assert script.build_parser().parse_args(["--no-augment"]).augment is False
    assert script.build_parser().parse_args(["--augment"]).augment is True


def test_help_and_bad_values(capsys):
    with pytest.raises(SystemExit) as done:
        script.main(["--help"])
    out = capsys.readouterr().out
    from brainfm_lightning.models.seg_head import STEMS

    assert done.value.code == 0 and "--ablation-sizes" in out
    assert "--stem {" + ",".join(STEMS) + "}" in out  # every segmenter stem, as ModalityUNETR lists them
    assert "--lesions {ms,heterotopia}" in out
    assert "--fusion {mean,mean_var}" in out
    assert "--augment" in out and "--no-augment" in out
    with pytest.raises(SystemExit) as bad:
        script.main(["--steps", "0"])
    assert bad.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        script.main(["--head-only-steps", "-1"])
    assert bad.value.code == 2 and "--head-only-steps must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        script.main(["--pretrained-layer-decay", "1.5"])
    assert bad.value.code == 2 and "--pretrained-layer-decay must lie in (0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        script.main(["--min-lesion-ml", "-2"])
    assert bad.value.code == 2 and "--min-lesion-ml must be >= 0, got -2" in capsys.readouterr().err


def test_post_processed_scores_lie_beside_the_raw_ones():
    assert script.evaluation_folder(0.0) == "robustness"  # where every earlier run's scores lie
    assert script.evaluation_folder(1.0) == "robustness_min1ml"
    assert script.evaluation_folder(0.25) == "robustness_min0.25ml"


def test_pretrained_segmenters_take_their_own_layer_decay_and_head_only_steps():
    from brainfm_lightning.commands.config import build_from_configs

    assert script.pretrained_overrides(0.0, None) == []  # the fine-tuning config's own recipe
    overrides = script.pretrained_overrides(100, 1.0)  # as `brainfm fit` options: --KEY VALUE ...
    configs = [str(script.CONFIGS / "finetune/seg_demo.yaml"), str(script.CONFIGS / "model/test.yaml")]
    module, _ = build_from_configs(configs, [(key.removeprefix("--"), value)
                                             for key, value in zip(overrides[::2], overrides[1::2], strict=True)])
    assert module.hparams.layer_decay == 1.0 and module.hparams.head_only_steps == 100
    default, _ = build_from_configs(configs, [])
    assert default.hparams.layer_decay == 0.75 and default.hparams.head_only_steps == 0


def test_each_lesion_kind_has_its_labelled_folder():
    from brainfm_lightning.data.demo import LESION_KINDS

    roots = {kind: script.labelled_root(kind) for kind in LESION_KINDS}
    assert roots["ms"] == script.REPO / "data/demo_4mm"  # where every earlier run's labelled set lies
    assert roots["heterotopia"] == script.REPO / "data/demo_4mm_heterotopia"


def test_paired_rows_set_pretraining_against_scratch_and_each_variant_against_the_method():
    dice = {script.METHOD: [0.7, 0.5, 0.8], script.SCRATCH: [0.5, 0.4, 0.3], "U-Net (fixed channels)": [0.6] * 3,
            "BrainFM (no VICReg)": [0.5, 0.3, 0.6], script.FROZEN["frozen_random"]: [0.1, 0.2, 0.3]}
    records = [{"model": model, "n_labelled": 8, "seed": seed, "condition": "all",
                "cases": [{"dice": d, "dice_with_lesion": d / 2}]}
               for model, values in dice.items() for seed, d in enumerate(values)]
    rows = script.paired_rows(records)
    pairs = {(r["model"], r["reference"], r["metric"]) for r in rows}
    variants = ("BrainFM (no VICReg)", script.FROZEN["frozen_random"])
    for metric in script.PAIRED_METRICS:
        assert {m for m, ref, k in pairs if ref == script.SCRATCH and k == metric} == set(dice) - {script.SCRATCH}
        assert {m for m, ref, k in pairs if ref == script.METHOD and k == metric} == set(variants)
    no_vicreg = next(r for r in rows if r["model"] == "BrainFM (no VICReg)" and r["reference"] == script.METHOD
                     and r["metric"] == "dice")
    assert no_vicreg["differences"] == "-0.200 -0.200 -0.200" and no_vicreg["n_ahead"] == 0
    assert no_vicreg["mean"] == pytest.approx(-0.2)
