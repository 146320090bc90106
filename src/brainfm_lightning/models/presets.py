"""Named sizes of :class:`ModalityMAE` (timm-style presets)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # a training step in well under a second on a CPU core; for tests
    "test": dict(img_size=32, patch_size=16, modality_dim=384, embed_dim=48, depth=2, num_heads=2,
                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2),
    # the CPU quickstart on the demo data
    "small": dict(img_size=64, patch_size=16, modality_dim=384, embed_dim=192, depth=6, num_heads=3,
                  decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    # ViT-B, the paper's FOMO25 setup (BioBERT modality embeddings)
    "base": dict(img_size=128, patch_size=16, modality_dim=768, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


def preset_config(name: str) -> dict[str, Any]:
    """Keyword arguments of a named preset.

    Raises:
        ValueError: ``name`` is not a known preset.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[name])
