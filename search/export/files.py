"""Writing an export: the formats, the graphs (:mod:`search.models.graphs`), and publishing the folder atomically
(written into a temporary sibling, renamed into place at the end)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from search.export.card import CARD, README
from search.export.errors import ExportError, VerificationError
from search.export.verification import Verification
from search.models.graphs import ONNX_FILE, TORCHSCRIPT_FILE, write_graphs  # noqa: F401  (re-exported)

FORMATS = ("torchscript", "onnx", "state_dict")
STATE_DICT_FILE = "state_dict.pt"
MEMBERS_DIR = "state_dicts"      # an ensemble's members, one state dict each
EXPORT_FILES = frozenset({CARD, README, STATE_DICT_FILE, TORCHSCRIPT_FILE, ONNX_FILE})  # what an export writes


def parse_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"torchscript,onnx"`` or a list → a tuple in canonical order; unknown names raise ExportError."""
    if formats is None:
        return FORMATS
    names = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format {unknown[0]!r}; formats: {', '.join(FORMATS)}")
    if not names:
        raise ExportError(f"give at least one format: {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def check_onnx_packages(formats: Sequence[str], verify_export: bool) -> None:
    """Refuse, before anything is written, an ONNX export (or its verification) without its packages."""
    needed = (["onnx"] if "onnx" in formats else []) + (["onnxruntime"] if "onnx" in formats and verify_export else [])
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            raise ExportError(f"the onnx format needs the {name} package: python3 -m pip install {name} (or leave "
                              f"onnx out of --format)") from None


def check_out_dir(out: str | Path, force: bool) -> Path:
    """The absolute output folder, if it can be written: new, empty, or (with ``force``) an earlier export.

    ``force`` replaces only a folder that holds a ``model_card.json`` and nothing but what an export writes
    (:data:`EXPORT_FILES`, the ensemble's ``state_dicts/`` of ``.pt`` files), so a mistyped ``--out``, or an export
    folder someone added their own files to, is never wiped out.
    """
    out = Path(out).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"--out {out} exists and is not a folder")
        entries = list(out.iterdir())
        if entries:
            if not force:
                raise ExportError(f"--out {out} exists and is not empty ({len(entries)} entries); pass --force to "
                                  f"replace an earlier export")
            if not (out / CARD).is_file():
                raise ExportError(f"--out {out} is not empty and holds no {CARD}, so it is not an earlier export; "
                                  f"--force replaces only exports: choose a new or empty folder")
            foreign = sorted(p.name for p in entries if not _export_entry(p))
            if foreign:
                raise ExportError(f"--out {out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''} "
                                  f"besides an earlier export; --force replaces only a folder with nothing but an "
                                  f"export's files: move them, or choose a new or empty folder")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"cannot create --out {out}: {ancestor} is not a folder")
    # Try it rather than ask os.access: that says yes to root whatever the permission bits, and cannot know that a
    # file system such as /proc refuses new entries to everyone.
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=f".{out.name}.probe-"))
    except OSError:
        raise ExportError(f"cannot create --out {out}: {ancestor} is not writable") from None
    return out


def _export_entry(path: Path) -> bool:
    """Whether ``path`` (an entry of an earlier export's folder) is one an export writes; links never are."""
    if path.is_symlink():
        return False
    if path.name == MEMBERS_DIR and path.is_dir():
        return all(p.is_file() and not p.is_symlink() and p.suffix == ".pt" for p in path.iterdir())
    return path.name in EXPORT_FILES and path.is_file()


def publish(out: Path, force: bool, write: Callable[[Path], Verification | None]) -> Verification | None:
    """Run ``write`` on a temporary sibling folder of ``out``, then rename it to ``out``; clean up on failure."""
    created = []  # parent folders made here, removed again on failure
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp = None
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        except OSError as e:
            raise ExportError(f"cannot write --out {out}: {e.strerror or e}") from None
        try:
            verification = write(tmp)
        except VerificationError as e:
            raise VerificationError(f"{e}; nothing was written to {out}") from None
        except OSError as e:
            raise ExportError(f"cannot write --out {out}: {e.strerror or e}") from None
        tmp.chmod(0o755)  # mkdtemp makes it private
        check_out_dir(out, force)  # again: something may have appeared there meanwhile
        _swap(tmp, out)
        tmp = None
        return verification
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _swap(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-")) / "export"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    finally:
        shutil.rmtree(old.parent, ignore_errors=True)
