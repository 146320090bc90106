"""save_pretrained / from_pretrained / push_to_hub of the networks: strict, complete, no pickle, offline hub ids."""

import json
import shutil

import huggingface_hub
import numpy as np
import pytest
import torch
from exported import assert_no_pickle
from safetensors.torch import load_file, save_file

from brainfm_lightning.modalities import ModalityTable
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.models.seg_head import ModalityUNETR


def tiny_mae(seed: int = 0, positions: str = "head") -> ModalityMAE:
    torch.manual_seed(seed)
    net = ModalityMAE.from_preset("test", positions=positions)
    rows = np.random.default_rng(seed).standard_normal((2, 384)).astype(np.float32)
    net.modality_table = ModalityTable(["T1", "FLAIR"], rows, "test-encoder", ["T1-weighted", "FLAIR"])
    return net


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def refuse_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained called torch.load")

    monkeypatch.setattr(torch, "load", refuse)


def test_round_trip_writes_every_constructor_argument_and_loads_without_torch_load(tmp_path, monkeypatch):
    net = tiny_mae()
    net.save_pretrained(tmp_path, model_card_kwargs={"training_steps": 7, "data_source": "SYNTHETIC demo"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "modality_table.safetensors",
                                                          "model.safetensors"]
    assert_no_pickle(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"img_size": [32, 32, 32], "patch_size": [16, 16, 16], "modality_dim": 384, "embed_dim": 48,
                      "depth": 2, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2,
                      "mlp_ratio": 4.0, "mask_ratio": 0.75, "conditioning": "cln", "modality_norm": False,
                      "modality_init_gain": 1.0, "positions": "head", "pad_free": True,
                      "gradient_checkpointing": False, "preset": "test"}  # preset sizes resolved
    card = (tmp_path / "README.md").read_text()
    for fact in ("preset `test`", "32 x 32 x 32", "16 x 16 x 16", "T1, FLAIR", "| Training steps | 7 |",
                 "SYNTHETIC demo", "library_name: brainfm-lightning"):
        assert fact in card, fact

    refuse_unpickling(monkeypatch)
    loaded = ModalityMAE.from_pretrained(tmp_path)
    assert_same_weights(net, loaded)
    assert not loaded.training
    assert loaded.modality_table.names == ["T1", "FLAIR"]
    assert np.array_equal(loaded.modality_table.vectors, net.modality_table.vectors)
    assert ModalityMAE.from_pretrained(tmp_path, gradient_checkpointing=True).config["gradient_checkpointing"]


def test_segmenter_round_trip_rebuilds_head_and_encoder(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = ModalityUNETR(ModalityMAE.from_preset("test"), num_classes=3, feature_size=4, feature_layers=[1, 1, 2])
    net.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["num_classes"], config["feature_size"], config["feature_layers"]) == (3, 4, [1, 1, 2])
    assert config["net"]["embed_dim"] == 48
    assert not (tmp_path / "modality_table.safetensors").exists()
    refuse_unpickling(monkeypatch)
    loaded = ModalityUNETR.from_pretrained(tmp_path)
    assert_same_weights(net, loaded)
    assert loaded.feature_layers == net.feature_layers and loaded.modality_table is None
    images, embeddings = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 384)
    with torch.no_grad():
        assert torch.equal(net.eval()(images, embeddings, torch.ones(1, 1, dtype=torch.bool)),
                           loaded(images, embeddings, torch.ones(1, 1, dtype=torch.bool)))


@pytest.mark.parametrize(("key", "value", "named", "positions"), [
    ("embed_dim", 64, "embed_dim: the config says 64, the weights hold 48", "head"),
    ("depth", 3, "depth: the config says 3, the weights hold 2", "head"),
    ("modality_dim", 768, "modality_dim: the config says 768, the weights hold 384", "head"),
    ("img_size", [64, 64, 64], "img_size", "crop"),  # head positions hold no per-cell weights: any crop size loads
    ("positions", "crop", "pos_embed", "head"),
    ("embed_dims", 48, "unknown keys ['embed_dims']", "head"),
])
def test_a_tampered_config_fails_naming_the_key(tmp_path, key, value, named, positions):
    tiny_mae(positions=positions).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {key: value}))
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        ModalityMAE.from_pretrained(tmp_path)


def test_a_tampered_segmenter_config_names_the_nested_key(tmp_path):
    ModalityUNETR(ModalityMAE.from_preset("test"), num_classes=2, feature_size=4).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["net"]["embed_dim"], config["num_classes"] = 96, 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="net.embed_dim: the config says 96.*num_classes: the config says 5"):
        ModalityUNETR.from_pretrained(tmp_path)


def test_missing_and_unexpected_weights_are_named(tmp_path):
    tiny_mae().save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["encoder.extra.weight"] = state.pop("decoder_pred.bias")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['decoder_pred.bias'\], unexpected \['encoder.extra.weight'\]"):
        ModalityMAE.from_pretrained(tmp_path)


def test_a_folder_without_config_or_weights_is_refused_naming_the_file(tmp_path):
    tiny_mae().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        ModalityMAE.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        ModalityMAE.from_pretrained(tmp_path)


def test_a_hub_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    net = tiny_mae()
    # the cache layout huggingface_hub downloads into: refs/main names the snapshot folder
    repo = tmp_path / "cache" / "models--brainfm--tiny-test"
    commit = "0123456789abcdef0123456789abcdef01234567"
    net.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    refuse_unpickling(monkeypatch)
    loaded = ModalityMAE.from_pretrained("brainfm/tiny-test", cache_dir=tmp_path / "cache")
    assert_same_weights(net, loaded)
    assert loaded.modality_table.names == ["T1", "FLAIR"]
    with pytest.raises(FileNotFoundError, match="local cache"):  # offline: no download is tried
        ModalityMAE.from_pretrained("brainfm/not-cached", cache_dir=tmp_path / "cache")


def test_push_to_hub_uploads_the_same_folder(tmp_path, monkeypatch):
    uploaded = {}

    class FakeApi:  # records what would be uploaded; no network
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded.update({p.name: p.read_bytes() for p in folder_path.iterdir()})
            shutil.copytree(folder_path, tmp_path / "pushed")
            return f"https://huggingface.co/{repo_id}"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    net = tiny_mae()
    net.push_to_hub("brainfm/tiny-test", model_card_kwargs={"data_source": "SYNTHETIC demo"})
    assert sorted(uploaded) == ["README.md", "config.json", "modality_table.safetensors", "model.safetensors"]
    assert "SYNTHETIC demo" in uploaded["README.md"].decode()
    assert_same_weights(net, ModalityMAE.from_pretrained(tmp_path / "pushed"))
