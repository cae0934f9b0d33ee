"""A merged GGUF model for the phone's llama.cpp chat apps (PocketPal, ChatterUI): which file of
an export to push, its name on the phone, and what to do there afterwards.

Those apps load one GGUF model file picked from the phone's storage and cannot apply a LoRA
adapter, so only a merged model is pushed (`export RUN --format merged-gguf` writes
RUN/export/merged-OUTTYPE.gguf); a GGUF adapter is refused with the command that makes the
merged model. The file goes to the shared Download folder, which the apps' file pickers open,
named RUN-QUANTISATION.gguf: the apps list a model by its file name, and merged-q4_k_m.gguf from
several runs would look alike there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.api.errors import UserError

DOWNLOAD = "/sdcard/Download"  # the phone's shared Download folder (adb's shell user may write)
MERGED_GLOB = "merged-*.gguf"  # what `export --format merged-gguf` writes by default


@dataclass(frozen=True)
class PhoneModel:
    path: Path
    quantisation: str  # llama.cpp's file type: "Q4_K_M", "Q8_0", "F16"; "" when unrecorded

    @property
    def phone_name(self) -> str:
        """RUN-QUANTISATION.gguf for an export in RUN/export/, else the file's own name (with
        its quantisation added when the name does not say it)."""
        path = self.path.resolve()
        stem = path.parent.parent.name if path.parent.name == "export" else path.stem
        if self.quantisation and self.quantisation.lower() not in stem.lower():
            stem = f"{stem}-{self.quantisation}"
        return re.sub(r"[^A-Za-z0-9._-]", "_", stem) + ".gguf"


def header(path: Path) -> tuple[str, str]:
    """general.type ("model" | "adapter"; "model" when unset) and the quantisation of a GGUF."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, OSError) as exc:
        raise UserError(f"{path}: not a readable GGUF file ({str(exc)[:120]}); export the merged "
                        "model again") from None

    def value(key: str):
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    file_type = value("general.file_type")
    try:
        quantisation = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        quantisation = ""
    return str(value("general.type") or "model"), quantisation


def _refuse_adapter(path: Path) -> None:
    run = path.resolve().parent.parent if path.resolve().parent.name == "export" else Path("RUN")
    raise UserError(
        f"{path} is a LoRA adapter, not a model: PocketPal and ChatterUI load one merged GGUF "
        "model and cannot apply a LoRA adapter. Export the merged model and push that: "
        f"`python -m engine export {run} --format merged-gguf --outtype q4_k_m`, then "
        f"`python -m engine push {run / 'export' / 'merged-q4_k_m.gguf'}`")


def _model(path: Path) -> PhoneModel:
    kind, quantisation = header(path)
    if kind == "adapter":
        _refuse_adapter(path)
    return PhoneModel(path, quantisation)


def find(export: Path) -> PhoneModel | None:
    """The merged model to push for EXPORT_DIR (the .gguf itself, or the one merged model of a
    folder); None when it holds no GGUF at all (an ExecuTorch folder, or no export)."""
    if export.is_file():
        return _model(export) if export.suffix == ".gguf" else None
    merged = sorted(export.glob(MERGED_GLOB)) if export.is_dir() else []
    if len(merged) > 1:
        names = ", ".join(p.name for p in merged)
        raise UserError(f"{export} holds {len(merged)} merged models ({names}); give the one to "
                        f"push, e.g. `python -m engine push {merged[0]}`")
    if merged:
        return _model(merged[0])
    for path in sorted(export.glob("*.gguf")) if export.is_dir() else []:
        if header(path)[0] == "adapter":
            _refuse_adapter(path)
    return None


def next_step(name: str, folder: str) -> str:
    """What to do on the phone once NAME is in FOLDER."""
    where = "Download" if folder == DOWNLOAD else folder
    return (f"On the phone: open PocketPal → Models → + → Add Local Model → pick {name} from "
            f"{where}; or ChatterUI → Models → Import Model → pick {name} from {where} (if the "
            f"picker does not list it, open the phone's storage in its menu, then {where})")
