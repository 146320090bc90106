"""Checks of exported network folders: no pickle inside, and outputs of a fresh process that cannot unpickle.

Run as a script (``python exported.py MODULE CLASS FOLDER INPUTS OUT``), it loads ``CLASS.from_pretrained(FOLDER)``
with Lightning unimportable and ``torch.load``/``pickle`` refusing, and writes the network's outputs on ``INPUTS``.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip of pickles
PICKLE_PROTOCOL_MARK = 0x80  # a pickle of protocol >= 2 starts with PROTO


def assert_no_pickle(folder: Path) -> None:
    """No file of ``folder`` is a pickle or a zip (of pickles)."""
    for path in Path(folder).iterdir():
        head = path.read_bytes()[:4]
        assert not head.startswith(ZIP_MAGIC), f"{path.name} is a zip archive"
        assert not (head and head[0] == PICKLE_PROTOCOL_MARK and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), \
            f"{path.name} is a pickle"


def example_inputs(table_rows: int, img_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two sessions of two slots (the second has one modality) and the table row of each slot."""
    generator = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(2, 2, img_size, img_size, img_size, generator=generator),
            "present": torch.tensor([[True, True], [True, False]]),
            "rows": torch.tensor([[0, min(1, table_rows - 1)], [table_rows - 1, 0]])}


def network_outputs(net: torch.nn.Module, vectors: torch.Tensor, inputs: dict[str, torch.Tensor]) -> dict:
    """Unmasked tokens and a seeded masked forward of a ModalityMAE, or a ModalityUNETR's logits."""
    embeddings = vectors[inputs["rows"]]  # [B, M, modality_dim] rows of the modality table
    images, present = inputs["images"], inputs["present"]
    with torch.no_grad():
        if type(net).__name__ == "ModalityUNETR":
            return {"logits": net(images, embeddings, present)}
        tokens, valid = net.encode(images, embeddings, present)
        out = net(images, embeddings, present, generator=torch.Generator().manual_seed(0))
    return {"tokens": tokens, "valid": valid, "pred_masked": out.pred_masked, "keep": out.keep}


def outputs_in_fresh_process(module: str, name: str, folder: Path, inputs: dict, work: Path) -> dict:
    """``network_outputs`` of ``name.from_pretrained(folder)`` in a new Python process, offline."""
    inputs_path, out_path = work / "inputs.safetensors", work / "outputs.safetensors"
    save_file(inputs, str(inputs_path))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, __file__, module, name, str(folder), str(inputs_path), str(out_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(str(out_path))


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("reading an exported folder called torch.load or unpickled")


if __name__ == "__main__":
    for blocked in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        sys.modules[blocked] = None  # importing them now raises ImportError
    import importlib

    module_name, class_name, folder, inputs_file, out_file = sys.argv[1:]
    cls = getattr(importlib.import_module(module_name), class_name)
    torch.load, pickle.load, pickle.loads = _refuse, _refuse, _refuse
    net = cls.from_pretrained(folder)
    vectors = torch.from_numpy(net.modality_table.vectors)
    save_file(network_outputs(net, vectors, load_file(inputs_file)), out_file)
