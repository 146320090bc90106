"""What the masked autoencoder sees and rebuilds, and whether its features collapse, at every validation end."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from brainfm_lightning.models import MAEOutput, unpatchify


def collapse_metrics(features: torch.Tensor, eps: float = 1e-12) -> dict[str, float]:
    """Mean per-dimension standard deviation and effective rank of encoder features.

    The effective rank (Roy & Vetterli, 2007; RankMe) is ``exp(H(p))`` with ``p = s / sum(s)`` the normalised
    singular values of the ``[N, D]`` feature matrix: 1 when all features point one way, ``min(N, D)`` when the
    singular values are equal. A falling value warns of (dimensional) collapse.

    Args:
        features: ``[N, D]``, e.g. :meth:`MAEOutput.visible_features`.
        eps: Guards ``log(0)``.

    Returns:
        ``feature_std`` and ``feature_effective_rank``.
    """
    z = features.detach().double().cpu()
    std = z.std(dim=0).mean().item() if z.shape[0] > 1 else 0.0
    singular = torch.linalg.svdvals(z)
    p = singular / singular.sum().clamp_min(eps)
    entropy = -(p * (p + eps).log()).sum().item()
    return {"feature_std": std, "feature_effective_rank": math.exp(entropy)}


def montage_panels(
    batch: Mapping[str, Any], out: MAEOutput, grid: tuple[int, int, int], patch_size: tuple[int, int, int],
    session: int = 0, norm_pix_loss: bool = False,
) -> tuple[list[str], np.ndarray]:
    """Middle axial slices of one session: original, masked input (NaN where hidden), reconstruction.

    The reconstruction shows the network's prediction in the masked patches and the input in the visible ones
    (MAE's "reconstruction + visible"); with ``norm_pix_loss`` the prediction is put back on each patch's scale.

    Returns:
        The session's modality names (one row each) and float ``[rows, 3, X, Y]`` slices.
    """
    present = batch["present"][session].cpu()
    slots = int(present.shape[0])
    pred, target = out.pred[session : session + 1].float(), out.target[session : session + 1].float()
    if norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    hidden = out.is_masked[session : session + 1, :, None].expand_as(target)
    masked_input = target.masked_fill(hidden, float("nan"))
    rebuilt = torch.where(hidden, pred, target)
    volumes = [unpatchify(x, slots, grid, patch_size)[0].detach().cpu() for x in (target, masked_input, rebuilt)]
    rows = [m for m in range(slots) if present[m]]
    z = volumes[0].shape[-1] // 2
    panels = np.stack([[v[m, :, :, z].numpy() for v in volumes] for m in rows])
    return [batch["modalities"][session][m] for m in rows], panels


def render_montage(names: list[str], panels: np.ndarray, title: str, path: Path) -> Path:
    """Write the panels as a PNG grid: rows = modalities, columns = original / masked input / reconstruction."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = len(names)
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.3 * rows + 0.4), squeeze=False)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#1f4e9c")  # hidden patches in blue
    for row, name in enumerate(names):
        low, high = np.nanpercentile(panels[row, 0], [1, 99])
        for col, label in enumerate(("original", "masked input", "reconstruction")):
            ax = axes[row, col]
            ax.imshow(panels[row, col].T, cmap=cmap, vmin=low, vmax=high, origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_folder(trainer: L.Trainer) -> Path:
    """The run's own folder, where ModelCheckpoint puts ``checkpoints/``: ``save_dir/name/version`` of the logger."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version


class ReconstructionMontage(L.Callback):
    """At each validation end, a montage and collapse metrics on one fixed validation batch (rank 0 only).

    Takes the first validation batch (the same sessions and crops every epoch), runs the network with a fixed mask
    (seed 0, as the module's ``validation_step`` for batch 0), and

    - writes ``montages/reconstruction-step{N}.png`` under the run's folder (any logger): one row per modality of
      session ``session_index``, columns original / masked input / reconstruction, middle axial slice;
    - logs it with ``log_image`` to every :class:`WandbLogger` (key ``val/reconstruction``);
    - logs ``val/feature_std`` and ``val/feature_effective_rank`` of the encoder's visible-token features of the
      whole batch (:func:`collapse_metrics`).

    Args:
        session_index: Which session of the first validation batch to draw.
        every_n_validations: Draw at every n-th validation (the metrics too).
    """

    def __init__(self, session_index: int = 0, every_n_validations: int = 1) -> None:
        if session_index < 0 or every_n_validations < 1:
            raise ValueError(f"session_index must be >= 0 and every_n_validations >= 1, got {session_index}, "
                             f"{every_n_validations}")
        self.session_index = session_index
        self.every_n_validations = every_n_validations
        self._batch: dict[str, Any] | None = None
        self._validations = 0

    @override
    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.is_global_zero and batch_idx == 0 and dataloader_idx == 0 and batch is not None:
            self._batch = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch, self._batch = self._batch, None
        if trainer.sanity_checking or not trainer.is_global_zero or batch is None:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        session = min(self.session_index, len(batch["session_ids"]) - 1)
        device = pl_module.device
        on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            out: MAEOutput = pl_module(on_device, generator=generator)
        net = pl_module.net
        names, panels = montage_panels(batch, out, net.grid, net.patch_size, session,
                                       bool(getattr(pl_module.hparams, "norm_pix_loss", False)))
        step = trainer.global_step
        title = f"{batch['session_ids'][session]}, global step {step}, middle axial slice"
        if str(batch.get("targets", [{}] * (session + 1))[session].get("synthetic", "")).lower() in ("1", "true"):
            title = f"SYNTHETIC data: {title}"  # the demo dataset says so wherever it appears
        path = render_montage(names, panels, title,
                              run_folder(trainer) / "montages" / f"reconstruction-step{step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/reconstruction", images=[str(path)], step=step,
                                 caption=[f"{batch['session_ids'][session]}: " + ", ".join(names)])
        metrics = collapse_metrics(out.visible_features())
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, rank_zero_only=True)
