"""LightningModule for masked-autoencoder pretraining: glue between the network, the losses and the loops."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from typing_extensions import override

from brainfm_lightning.callbacks.loop_timing import is_logging_step
from brainfm_lightning.losses import covariance_loss, masked_mse_loss, pretraining_loss, variance_loss
from brainfm_lightning.models import MAEOutput, ModalityMAE
from brainfm_lightning.modules.modality_embedding import ModalityEmbeddingMixin, injected_hparams_to_ignore
from brainfm_lightning.modules.schedule import cosine_with_warmup, parameter_groups, stepping_batches, warmup_steps
from brainfm_lightning.modules.skipping import SkippedBatchMixin


class MAEPretrainModule(SkippedBatchMixin, ModalityEmbeddingMixin):
    """Pretrains a :class:`ModalityMAE` with ``L_MAE + lambda_var * L_var + lambda_cov * L_cov`` (Eq. (4)).

    Args:
        net: The masked autoencoder.
        optimizer: Optimizer factory (AdamW by default); receives parameter groups without weight decay on
            norms, biases and embeddings.
        weight_decay: Weight decay of the other parameters.
        warmup_steps: Learning-rate warm-up, in optimizer steps (>= 1) or as a fraction of all steps (< 1).
        min_lr_ratio: Final learning rate of the cosine schedule over the peak.
        lambda_var: Target weight of the variance term (the paper's 0.1); ramped by ``VICRegWarmup``.
        lambda_cov: Target weight of the covariance term (the paper's 0.003).
        var_eps: ``eps`` of Eq. (2).
        norm_pix_loss: Reconstruct per-patch normalised voxels (MAE's ``norm_pix_loss``).
        text_encoder: ``minilm``, ``biobert`` or a local model folder; embeds modality names not in the table.
        modality_table: Optional precomputed table (``brainfm modalities embed``) to start from.
        descriptions: Extra modality name -> text to embed.
        aliases: Extra alias -> canonical modality name.
        nonfinite_loss: ``error`` stops at a non-finite loss naming the step and sessions; ``skip`` trains the step
            as a zero loss (:class:`SkippedBatchMixin`: DDP ranks keep stepping together) and counts it.
        shuffle_modality_names: Permute each training session's sequence names at random in every step (images
            stay in place), so the names carry no information: the ablation that tells what the modality embedding
            adds. Validation and test keep the true names.
        compile: ``torch.compile`` the transformer blocks when the Trainer sets the model up (GPU runs; the first
            steps pay for compilation). A mode string (``default``, ``reduce-overhead``, ``max-autotune``) picks
            the mode; the packed attention stays eager.
    """

    def __init__(
        self,
        net: ModalityMAE,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        weight_decay: float = 0.05,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.0,
        lambda_var: float = 0.1,
        lambda_cov: float = 0.003,
        var_eps: float = 1e-4,
        norm_pix_loss: bool = False,
        text_encoder: str = "minilm",
        modality_table: str | None = None,
        descriptions: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
        nonfinite_loss: Literal["error", "skip"] = "error",
        shuffle_modality_names: bool = False,
        compile: bool | Literal["default", "reduce-overhead", "max-autotune"] = False,
    ) -> None:
        super().__init__()
        if lambda_var < 0 or lambda_cov < 0:
            raise ValueError(f"lambda_var and lambda_cov must be >= 0, got {lambda_var}, {lambda_cov}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if nonfinite_loss not in ("error", "skip"):
            raise ValueError(f"nonfinite_loss must be 'error' or 'skip', got {nonfinite_loss!r}")
        self.save_hyperparameters(ignore=injected_hparams_to_ignore())
        self.net = net
        self.optimizer_factory: Callable = optimizer
        self.modality_dim = net.modality_dim
        self.text_encoder, self.modality_table_path = text_encoder, modality_table
        self.descriptions, self.aliases = descriptions, aliases
        self.regularizer_scale = 1.0  # VICRegWarmup ramps this from 0 to 1
        self.compile_mode = compile
        self._blocks_compiled = False
        self._init_modality_table()

    @override
    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> MAEOutput:
        images = batch["images"]
        return self.net(images, self.modality_embeddings(batch["modalities"], images), batch["present"], generator,
                        batch.get("head_offset"))

    def compute_losses(self, out: MAEOutput) -> dict[str, torch.Tensor]:
        """The terms of ``L = L_MAE + lambda_var * L_var + lambda_cov * L_cov``, their sum and the ramped weights."""
        z = out.visible_features()
        terms = {
            "loss_mae": masked_mse_loss(out.pred_masked, out.target_masked, norm_pix_loss=self.hparams.norm_pix_loss),
            "loss_var": variance_loss(z, eps=self.hparams.var_eps),
            "loss_cov": covariance_loss(z),
        }
        lambda_var = self.hparams.lambda_var * self.regularizer_scale
        lambda_cov = self.hparams.lambda_cov * self.regularizer_scale
        terms["loss"] = pretraining_loss(terms["loss_mae"], terms["loss_var"], terms["loss_cov"],
                                         lambda_var, lambda_cov)
        return terms | {"lambda_var": torch.tensor(lambda_var), "lambda_cov": torch.tensor(lambda_cov)}

    @override
    def training_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor:
        if batch is None:  # every session was bad input; Lightning's loop skips such batches before this
            return self.skipped_step_loss()
        generator = self._training_mask_generator(batch_idx, batch["images"].device)
        if self.hparams.shuffle_modality_names:  # a generator of its own: the masks stay those of a plain run
            names_generator = torch.Generator().manual_seed((generator.initial_seed() + 1) % 2**63)
            batch = dict(batch) | {"modalities": shuffled_names(batch["modalities"], names_generator)}
        terms = self.compute_losses(self(batch, generator=generator))
        if not torch.isfinite(terms["loss"]):
            message = (f"non-finite loss {terms['loss'].item()} at global step {self.global_step} "
                       f"(batch {batch_idx}, sessions {batch['session_ids']})")
            if self.hparams.nonfinite_loss == "error":
                raise FloatingPointError(message)
            self.print(f"skipping step: {message}")
            self._log_skipped(batch)
            return self.skipped_step_loss()
        batch_size = len(batch["session_ids"])
        if is_logging_step(self.trainer):  # per-step values; each self.log costs ~0.5 ms even when not written
            self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False, batch_size=batch_size)
        self.log("train/loss_mae_epoch", terms["loss_mae"], on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=True)
        self._log_skipped(batch)
        return terms["loss"]

    def _log_skipped(self, batch: Mapping[str, Any]) -> None:
        """Bad input skipped while this batch was built (the warnings name the files), summed per epoch."""
        for key in ("skipped_scans", "skipped_sessions"):
            self.log(f"data/{key}", float(batch.get(key, 0)), on_step=False, on_epoch=True, reduce_fx="sum",
                     sync_dist=True, batch_size=1)

    def _training_mask_generator(self, batch_idx: int, device: torch.device) -> torch.Generator:
        """Mask noise seeded by (run seed, step, batch, rank), so a resumed run draws the masks of an uninterrupted one.

        Lightning restores weights, optimizer, scheduler and loop state but not torch's global RNG; masks drawn from
        it would differ after a resume (or a Slurm requeue). The run seed is the one ``seed_everything`` set.
        """
        entropy = [torch.initial_seed(), self.global_step, batch_idx, self.global_rank]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
        return torch.Generator(device=device).manual_seed(seed)

    @override
    def validation_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is None:
            return
        # the same mask for the same batch every epoch, so validation curves are comparable
        generator = torch.Generator(device=batch["images"].device).manual_seed(batch_idx)
        terms = self.compute_losses(self(batch, generator=generator))
        self.log_dict({f"val/{k}": v for k, v in terms.items() if k.startswith("loss")},
                      batch_size=len(batch["session_ids"]), sync_dist=True)

    @override
    def test_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        if batch is None:
            return
        generator = torch.Generator(device=batch["images"].device).manual_seed(batch_idx)
        terms = self.compute_losses(self(batch, generator=generator))
        self.log_dict({f"test/{k}": v for k, v in terms.items() if k.startswith("loss")},
                      batch_size=len(batch["session_ids"]), sync_dist=True)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any]:
        """Session embeddings: the encoder's tokens (no masking) averaged over valid positions."""
        images = batch["images"]
        pooled = self.net.encode_pooled(images, self.modality_embeddings(batch["modalities"], images), batch["present"],
                                        batch.get("head_offset"))
        return {"session_ids": batch["session_ids"], "modalities": batch["modalities"], "embedding": pooled}

    def configure_model(self) -> None:
        """Compile the transformer blocks once, if asked (Lightning calls this before every stage)."""
        if self.compile_mode and not self._blocks_compiled:
            options = {} if self.compile_mode is True else {"mode": self.compile_mode}
            self.net.encoder.compile_blocks(**options)
            self.net.decoder.compile_blocks(**options)
            self._blocks_compiled = True

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(parameter_groups(self.net, self.hparams.weight_decay))
        total = stepping_batches(self.trainer)
        warmup = warmup_steps(self.hparams.warmup_steps, total)
        scheduler = cosine_with_warmup(optimizer, total, warmup, self.hparams.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["net_config"] = dict(self.net.config)  # rebuilds the network without Lightning


def shuffled_names(modalities: Sequence[Sequence[str]], generator: torch.Generator) -> list[list[str]]:
    """Each session's present (non-empty) names in a random order over the same slots; padding stays empty."""
    result = []
    for row in modalities:
        names = [n for n in row if n]
        order = iter([names[i] for i in torch.randperm(len(names), generator=generator).tolist()])
        result.append([next(order) if n else "" for n in row])
    return result
