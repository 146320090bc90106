"""The manifest: a CSV with one row per scan (``subject,session,modality,path`` plus optional columns)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_COLUMNS = ("subject", "session", "modality", "path")
# rows of these modalities hold segmentation masks, not images
LABEL_MODALITIES = frozenset({"seg", "label"})


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class Problem:
    """One defect found in a dataset (by ``brainfm data check`` or an index): the file it concerns and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Scan:
    """One image of a session."""

    modality: str
    path: Path


@dataclass
class Session:
    """One subject's visit: 1..M co-registered scans, an optional label mask and per-session targets."""

    subject: str
    session: str
    scans: list[Scan]
    label_path: Path | None = None
    targets: dict[str, str] = field(default_factory=dict)

    @property
    def session_id(self) -> str:
        """``subject/session``."""
        return f"{self.subject}/{self.session}"

    @property
    def modalities(self) -> list[str]:
        """The modality names of the session's scans, in order."""
        return [scan.modality for scan in self.scans]


def read_manifest(path: str | Path, problems: list[Problem] | None = None) -> list[Session]:
    """Read a manifest into sessions, in order of first appearance.

    ``path`` values are absolute or relative to the CSV's folder. Extra columns are per-session targets
    and must agree on every row of a session.

    Args:
        path: The CSV file.
        problems: ``None`` (training): the first bad row raises. A list (``brainfm data check``): each bad row
            is skipped and reported in it, each session left without images is dropped and reported.

    Returns:
        The sessions; modalities keep their row order.

    Raises:
        FileNotFoundError: The manifest does not exist.
        ManifestError: Missing columns; and, when ``problems`` is ``None``, empty fields, a modality twice in one
            session, a second label mask, a session without images, or per-session targets that differ between
            rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    root = path.resolve().parent

    def reject(line: int, file: Path, reason: str) -> None:
        if problems is None:
            raise ManifestError(f"{path}:{line}: {reason}")
        problems.append(Problem(file, f"{reason} ({path.name} line {line}, row ignored)"))

    sessions: dict[tuple[str, str], Session] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            expected = ",".join(REQUIRED_COLUMNS)
            raise ManifestError(f"{path}: missing column(s) {missing}; the header must start with {expected}")
        extra = [name for name in header if name not in REQUIRED_COLUMNS]
        for line, row in enumerate(reader, start=2):
            row = {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
            empty = [name for name in REQUIRED_COLUMNS if not row.get(name)]
            if empty:
                reject(line, path, f"empty field(s) {empty}")
                continue
            key = (row["subject"], row["session"])
            targets = {n: row.get(n, "") for n in extra}
            session = sessions.setdefault(key, Session(row["subject"], row["session"], [], targets=targets))
            scan_path = Path(row["path"])
            scan_path = scan_path if scan_path.is_absolute() else root / scan_path
            modality = row["modality"]
            if any(session.targets.get(n) != targets[n] for n in extra):
                reject(line, scan_path, f"per-session columns {extra} differ between rows of {session.session_id}")
            elif modality.lower() in LABEL_MODALITIES:
                if session.label_path is not None:
                    reject(line, scan_path, f"a second label mask for {session.session_id}")
                else:
                    session.label_path = scan_path
            elif modality in session.modalities:
                reject(line, scan_path, f"modality {modality!r} appears twice in session {session.session_id}")
            else:
                session.scans.append(Scan(modality, scan_path))
    empty_sessions = [s.session_id for s in sessions.values() if not s.scans]
    if empty_sessions and problems is None:
        raise ManifestError(f"{path}: session(s) without any image row: {empty_sessions[:5]}")
    for session_id in empty_sessions:
        problems.append(Problem(path, f"empty session {session_id}: no image row (only a label mask or bad rows)"))
    return [s for s in sessions.values() if s.scans]
