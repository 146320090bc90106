"""Does the pretrained MAE learn? Its masked-patch error beside an average-brain template and with names permuted."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.models.patch_embed import patch_view

EmbedFn = Callable[[Sequence[Sequence[str]], torch.Tensor], torch.Tensor]


@torch.no_grad()
def patch_template(net: ModalityMAE, batches: Iterable[Mapping[str, Any] | None]) -> dict[str, torch.Tensor]:
    """The mean patch of each sequence name at each grid position over ``batches`` (float64 sums).

    Returns:
        name -> ``[L, P]`` mean patches, in the layout of the MAE's targets (``L`` grid positions, ``P`` voxels).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for batch in batches:
        if batch is None:
            continue
        patches = patch_view(batch["images"], net.patch_size).reshape(*batch["images"].shape[:2],
                                                                       net.tokens_per_modality, -1)
        for b, row in enumerate(batch["modalities"]):
            for m, name in enumerate(row):
                if name and bool(batch["present"][b, m]):
                    sums[name] = sums.get(name, 0) + patches[b, m].double()
                    counts[name] = counts.get(name, 0) + 1
    return {name: (total / counts[name]).float() for name, total in sums.items()}


def rotate_names(modalities: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each session's present names shifted by one slot (FLAIR, T1, T2 -> T1, T2, FLAIR); padding stays."""
    rotated = []
    for row in modalities:
        names = [n for n in row if n]
        shifted = iter(names[1:] + names[:1])
        rotated.append([next(shifted) if n else "" for n in row])
    return rotated


@torch.no_grad()
def masked_patch_errors(
    net: ModalityMAE,
    embed: EmbedFn,
    batches: Iterable[Mapping[str, Any] | None],
    template: Mapping[str, torch.Tensor],
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
) -> dict[str, float]:
    """Mean squared error over the masked patches of ``batches``, each predictor scored on the same patches.

    For every batch and mask seed: the network's reconstruction, the ``template`` patch of the same sequence and
    grid position, zeros (the z-scored mean), and the network again with each session's sequence names rotated
    (:func:`rotate_names`) under the same mask, which tells whether the modality embedding is used. Reconstructions
    are compared in the input's z-scored voxel units (the network's raw output, as trained without
    ``norm_pix_loss``).

    Returns:
        ``model``, ``template``, ``zeros``, ``names_rotated`` (mean squared errors), ``rotated_over_model`` and
        ``patches`` (masked patches scored).
    """
    totals = dict.fromkeys(("model", "template", "zeros", "names_rotated"), 0.0)
    count = 0
    length = net.tokens_per_modality
    for batch in batches:
        if batch is None:
            continue
        images, present = batch["images"], batch["present"]
        embeddings = embed(batch["modalities"], images)
        rotated = embed(rotate_names(batch["modalities"]), images)
        for seed in seeds:
            offset = batch.get("head_offset")
            out = net(images, embeddings, present, generator=torch.Generator().manual_seed(seed), head_offset=offset)
            again = net(images, rotated, present, generator=torch.Generator().manual_seed(seed), head_offset=offset)
            rows, tokens = (out.valid & ~out.keep).nonzero(as_tuple=True)  # the order of pred_masked
            target = out.target_masked.double()
            guess = torch.stack([
                template[name][token % length] if (name := batch["modalities"][row][token // length]) in template
                else torch.zeros(target.shape[1]) for row, token in zip(rows.tolist(), tokens.tolist(), strict=True)
            ]).double()
            totals["model"] += float(((out.pred_masked.double() - target) ** 2).mean(1).sum())
            totals["names_rotated"] += float(((again.pred_masked.double() - target) ** 2).mean(1).sum())
            totals["template"] += float(((guess - target) ** 2).mean(1).sum())
            totals["zeros"] += float((target**2).mean(1).sum())
            count += len(target)
    if not count:
        raise ValueError("no masked patch to score: the batches were empty")
    errors = {name: total / count for name, total in totals.items()}
    return errors | {"rotated_over_model": errors["names_rotated"] / errors["model"], "patches": float(count)}


@torch.no_grad()
def write_montage(net: ModalityMAE, embed: EmbedFn, batches: Iterable[Mapping[str, Any] | None], path: Path,
                  seed: int = 0) -> Path:
    """A PNG of the session with the most sequences among ``batches``: original, masked input and reconstruction.

    The middle axial slice of every sequence, the mask drawn from ``seed`` (the first of
    :func:`masked_patch_errors`'s draws); the title says SYNTHETIC for demo data.

    Raises:
        ValueError: The batches were empty.
    """
    from brainfm_lightning.callbacks.reconstruction_montage import montage_panels, render_montage

    best: tuple[int, Mapping[str, Any], int] | None = None
    for batch in batches:
        if batch is None:
            continue
        counts = batch["present"].sum(1)
        row = int(counts.argmax())
        if best is None or int(counts[row]) > best[0]:
            best = (int(counts[row]), batch, row)
    if best is None:
        raise ValueError("no session to draw: the batches were empty")
    _, batch, row = best
    out = net(batch["images"], embed(batch["modalities"], batch["images"]), batch["present"],
              generator=torch.Generator().manual_seed(seed), head_offset=batch.get("head_offset"))
    names, panels = montage_panels(batch, out, net.grid, net.patch_size, row)
    title = f"{batch['session_ids'][row]}: masked patches reconstructed, middle axial slice"
    if str(batch["targets"][row].get("synthetic", "")).lower() in ("1", "true"):
        title = f"SYNTHETIC data: {title}"
    return render_montage(names, panels, title, path)
