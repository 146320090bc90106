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
        return f"{self.subject}/{self.session}"

    @property
    def modalities(self) -> list[str]:
        return [scan.modality for scan in self.scans]


def read_manifest(path: str | Path) -> list[Session]:
    """Read a manifest into sessions, in order of first appearance.

    ``path`` values are absolute or relative to the CSV's folder. Extra columns are per-session targets
    and must agree on every row of a session.

    Args:
        path: The CSV file.

    Returns:
        The sessions; modalities keep their row order.

    Raises:
        FileNotFoundError: The manifest does not exist.
        ManifestError: Missing columns, empty fields, a modality twice in one session, a session without images,
            or per-session targets that differ between rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    root = path.resolve().parent
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
            empty = [name for name in REQUIRED_COLUMNS if not row[name]]
            if empty:
                raise ManifestError(f"{path}:{line}: empty field(s) {empty}")
            key = (row["subject"], row["session"])
            targets = {n: row[n] for n in extra}
            session = sessions.setdefault(key, Session(row["subject"], row["session"], [], targets=targets))
            if any(session.targets.get(n) != row[n] for n in extra):
                raise ManifestError(
                    f"{path}:{line}: per-session columns {extra} differ between rows of {session.session_id}"
                )
            scan_path = Path(row["path"])
            scan_path = scan_path if scan_path.is_absolute() else root / scan_path
            modality = row["modality"]
            if modality.lower() in LABEL_MODALITIES:
                if session.label_path is not None:
                    raise ManifestError(f"{path}:{line}: a second label mask for {session.session_id}")
                session.label_path = scan_path
            elif modality in session.modalities:
                raise ManifestError(
                    f"{path}:{line}: modality {modality!r} appears twice in session {session.session_id}"
                )
            else:
                session.scans.append(Scan(modality, scan_path))
    empty_sessions = [s.session_id for s in sessions.values() if not s.scans]
    if empty_sessions:
        raise ManifestError(f"{path}: session(s) without any image row: {empty_sessions[:5]}")
    return list(sessions.values())
