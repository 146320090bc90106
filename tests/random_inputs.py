"""Random network inputs shared by the model tests."""

import torch

from brainfm_lightning.models import ModalityMAE


def random_inputs(net: ModalityMAE, present_rows, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``images`` ``[B, M, *img_size]``, ``modality_embeddings`` ``[B, M, modality_dim]`` and ``present`` bool."""
    generator = torch.Generator().manual_seed(seed)
    present = torch.tensor(present_rows, dtype=torch.bool)
    images = torch.randn(*present.shape, *net.img_size, generator=generator)
    embeddings = torch.randn(*present.shape, net.modality_dim, generator=generator)
    return images, embeddings, present
