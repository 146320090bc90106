"""Share a network as a folder (or Hugging Face Hub repository) that loads without Lightning and without pickle.

A folder holds ``config.json`` (every constructor argument, sizes resolved), ``model.safetensors``, for exports of
trained checkpoints ``modality_table.safetensors`` (the sequences the network saw), and a model card ``README.md``.
Built on ``huggingface_hub``'s :class:`PyTorchModelHubMixin`, so ``push_to_hub`` works after ``hf auth login``;
loading is strict and never calls ``torch.load``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants, snapshot_download
from typing_extensions import override

from brainfm_lightning.modalities.table import ModalityTable

CONFIG_FILE = constants.CONFIG_NAME  # config.json
WEIGHTS_FILE = constants.SAFETENSORS_SINGLE_FILE  # model.safetensors
TABLE_FILE = "modality_table.safetensors"
NOT_RECORDED = "not recorded"

MODEL_CARD = """---
{{ card_data }}
---

# BrainFM-Lightning `{{ architecture }}`

{{ summary }}

| | |
|---|---|
| Network | `{{ architecture }}`, preset `{{ preset }}`: encoder {{ encoder }} |
| Crop (`img_size`) | {{ img_size }} voxels |
| Patch size | {{ patch_size }} voxels |
| Sequences seen in training | {{ sequences }} |
| Modality text encoder | {{ encoder_id }} |
| Training steps | {{ training_steps }} |
| Training data | {{ data_source }} |

## Use

```python
from {{ module }} import {{ architecture }}

net = {{ architecture }}.from_pretrained("PATH_OR_HUB_ID")  # strict; reads no pickle
table = net.modality_table  # name -> text embedding of the sequences above (None if not exported)
```

`config.json` holds every constructor argument, `model.safetensors` the weights and
`modality_table.safetensors` the modality table; no file in this folder is a pickle.
"""

T = TypeVar("T", bound="HubMixin")


def sizes_text(values: Any) -> str:
    """``(32, 32, 32)`` -> ``'32 x 32 x 32'``, for messages and the model card."""
    return " x ".join(str(v) for v in values)


def check_config_keys(config: Mapping[str, Any], cls: type) -> None:
    """Raise ``ValueError`` naming the keys of ``config`` that are not arguments of ``cls``'s constructor."""
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{cls.__name__} config: unknown keys {unknown}; expected some of {sorted(allowed)}")


class HubMixin(PyTorchModelHubMixin, library_name="brainfm-lightning", model_card_template=MODEL_CARD,
               tags=["medical-imaging", "mri", "3d", "brainfm-lightning"]):
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a network whose config is plain JSON.

    Subclasses define :meth:`hub_config`, :meth:`from_hub_config`, :meth:`config_mismatches` and
    :meth:`card_facts`. ``modality_table`` travels with the weights when it is set.
    """

    modality_table: ModalityTable | None = None

    def hub_config(self) -> dict[str, Any]:
        """JSON-able constructor arguments that rebuild this network."""
        raise NotImplementedError

    @classmethod
    def from_hub_config(cls: type[T], config: Mapping[str, Any]) -> T:
        """Build a network (random weights) from :meth:`hub_config`'s output; ``ValueError`` names bad keys."""
        raise NotImplementedError

    def config_mismatches(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        """Config values that disagree with the shapes in ``state``, one ``'key: ...'`` line each."""
        raise NotImplementedError

    def card_facts(self) -> dict[str, str]:
        """Values of the model card's fields that the network itself knows."""
        raise NotImplementedError

    def load_weights(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load ``state`` strictly.

        A ``ValueError`` names each contradicted config key, else each missing, unexpected or reshaped weight.

        Args:
            state: Tensor name -> tensor, as ``state_dict()`` names them.
            source: Where config and weights come from, for the message.
        """
        own = self.state_dict()  # type: ignore[attr-defined]
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        reshaped = [f"{k}: {tuple(state[k].shape)} in the weights, {tuple(own[k].shape)} in the network"
                    for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
        keys = self.config_mismatches(state)
        if keys:  # the root cause; the reshaped weights follow from it
            raise ValueError(f"{source}: the config does not match the weights: " + "; ".join(keys)
                             + f" ({len(reshaped)} weights of another shape, {len(missing)} missing, "
                               f"{len(unexpected)} unexpected)")
        if missing or unexpected or reshaped:
            raise ValueError(f"{source}: the weights do not fit the network: missing {missing}, unexpected "
                             f"{unexpected}, of another shape {reshaped}")
        self.load_state_dict(state, strict=True)  # type: ignore[attr-defined]

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, **kwargs: Any) -> str | None:
        """Write ``config.json``, ``model.safetensors``, the modality table (if set) and ``README.md``.

        Args:
            save_directory: The folder (created if needed).
            config: Defaults to :meth:`hub_config`.
            kwargs: ``model_card_kwargs`` (e.g. ``training_steps``, ``data_source``), ``push_to_hub``, ``repo_id``
                and the other arguments of ``huggingface_hub``'s ``save_pretrained``.
        """
        return super().save_pretrained(save_directory, config=config or self.hub_config(), **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        table_path = save_directory / TABLE_FILE
        if self.modality_table is not None:
            self.modality_table.save(table_path)
        else:
            table_path.unlink(missing_ok=True)  # a table of an earlier export would not belong to these weights

    @override
    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        facts = self.card_facts()
        table = self.modality_table
        facts |= {"sequences": ", ".join(table.names) if table is not None and len(table) else NOT_RECORDED,
                  "encoder_id": f"`{table.encoder_id}`" if table is not None else NOT_RECORDED,
                  "training_steps": NOT_RECORDED, "data_source": "not stated"}
        given = {k: str(v) for k, v in kwargs.items() if v is not None}
        return super().generate_model_card(*args, **(facts | given))

    @classmethod
    def _from_pretrained(
        cls: type[T],
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict | None = None,
        map_location: str | torch.device = "cpu",
        proxies: dict | None = None,
        resume_download: bool | None = None,
        **overrides: Any,
    ) -> T:
        # huggingface_hub passes the config it read as ``config`` and its keys again as ``overrides``; the folder's
        # own config.json is read again below, so both only matter where a caller overrides a value. Releases
        # before 1.0 also pass ``proxies`` and ``resume_download``, which a local snapshot does not need.
        if Path(model_id).is_dir():
            folder = Path(model_id)
        else:  # a hub id: the whole snapshot, so config, weights and table come from one revision
            folder = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, token=token,
                                            local_files_only=local_files_only,
                                            allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, TABLE_FILE,
                                                            "preprocessing.json"]))
        return cls._load_folder(folder, map_location, **overrides)

    @classmethod
    def _load_folder(cls: type[T], folder: str | Path, map_location: str | torch.device = "cpu",
                    **overrides: Any) -> T:
        """Read a folder written by :meth:`save_pretrained` (or ``brainfm export``), in evaluation mode.

        Args:
            folder: The folder.
            map_location: Device of the weights.
            overrides: Constructor arguments that replace the config's (e.g. ``gradient_checkpointing=True``).

        Raises:
            FileNotFoundError: ``config.json`` or ``model.safetensors`` is missing (named).
            ValueError: Unknown config keys, config values the weights contradict, missing, unexpected or reshaped
                weights, or an unreadable file (each named).
        """
        folder = Path(folder)
        config_path, weights_path, table_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE, folder / TABLE_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: not a folder written by save_pretrained or brainfm export")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{config_path} is not valid JSON: {error}") from error
        if not isinstance(config, dict):
            raise ValueError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
        net = cls.from_hub_config(config | overrides)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(weights_path, device=str(map_location))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from error
        net.load_weights(state, f"{folder}: {CONFIG_FILE} and {WEIGHTS_FILE}")
        if table_path.is_file():
            net.modality_table = ModalityTable.load(table_path)
        return net.eval()  # type: ignore[attr-defined]
