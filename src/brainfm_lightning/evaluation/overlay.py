"""A quick-look PNG of a predicted mask over its scan: three orthogonal slices through the predicted lesions."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def plot_overlay(scan: str | Path, mask: np.ndarray, path: str | Path, title: str | None = None,
                 reference_mask: np.ndarray | None = None) -> Path:
    """Save sagittal, coronal and axial slices of ``scan`` with ``mask`` (red) and ``reference_mask`` (outline).

    Both masks are on the scan's own grid (as :class:`~brainfm_lightning.callbacks.SegmentationWriter` writes them);
    the scan and masks are shown in RAS, each slice through the centre of mass of the predicted foreground (the
    volume's centre when nothing is predicted), with square pixels in mm.

    Args:
        scan: The reference scan file.
        mask: Label map ``[X, Y, Z]`` on the scan's grid; foreground is any label above 0.
        path: The PNG to write (parents are created).
        title: Figure title (default: the scan's file name).
        reference_mask: Optional ground truth on the same grid, drawn as a contour.

    Returns:
        ``path``.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    image = nib.load(scan)
    ornt = nib.orientations.io_orientation(image.affine)
    to_ras = nib.orientations.apply_orientation
    data = to_ras(np.asarray(image.dataobj, dtype=np.float32), ornt)
    predicted = to_ras(np.asarray(mask) > 0, ornt)
    truth = to_ras(np.asarray(reference_mask) > 0, ornt) if reference_mask is not None else None
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)[np.argsort(ornt[:, 0])]
    centre = (np.round(np.argwhere(predicted).mean(axis=0)).astype(int) if predicted.any()
              else np.asarray(data.shape) // 2)
    low, high = np.percentile(data, [1, 99.5])
    figure = Figure(figsize=(12, 4.4))
    axes = figure.subplots(1, 3)
    views = (("sagittal", 0, (1, 2)), ("coronal", 1, (0, 2)), ("axial", 2, (0, 1)))
    for ax, (name, axis, (u, v)) in zip(axes, views, strict=True):
        index = [slice(None)] * 3
        index[axis] = int(centre[axis])
        aspect = zooms[v] / zooms[u]
        ax.imshow(data[tuple(index)].T, cmap="gray", origin="lower", vmin=low, vmax=high, aspect=aspect)
        overlay = np.ma.masked_where(~predicted[tuple(index)].T, predicted[tuple(index)].T)
        ax.imshow(overlay, cmap=ListedColormap(["red"]), origin="lower", alpha=0.5, aspect=aspect)
        if truth is not None and truth[tuple(index)].any():
            ax.contour(truth[tuple(index)].T.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(f"{name} slice {int(centre[axis])} (RAS; right is R or A)")
        ax.axis("off")
    volume_ml = float(predicted.sum()) * float(np.prod(zooms)) / 1000.0
    legend = "red: prediction" + (", cyan: reference" if truth is not None else "")
    figure.suptitle(f"{title or Path(scan).name}: {volume_ml:.2f} ml predicted ({legend})")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path
