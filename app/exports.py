"""A run's exports on disk as the Export tab shows them: the newest one, what it is and how it
was verified (one line with the key numbers), the command that loads it into Ollama, and the
ones a phone takes.

The engine writes them (engine/export/): RUN/export/NAME.gguf with NAME.verification.json and
NAME.Modelfile beside it (merged-OUTTYPE.gguf for a merged model); RUN/export/executorch*/
folders with the verification in their metadata.json. Read with the standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

MODELFILE = ".Modelfile"
METADATA = "metadata.json"
MERGED_PREFIX = "merged-"  # a merged GGUF model: the one GGUF phone chat apps load (no LoRA)


def newest_export(run_dir: Path) -> Path | None:
    """The run's newest export: a GGUF file with its Modelfile (the base converted for an
    adapter has none) or an ExecuTorch folder; None when it has none."""
    folder = run_dir / "export"
    exports = [path for path in folder.glob("*.gguf") if path.with_suffix(MODELFILE).is_file()]
    exports += [metadata.parent for metadata in folder.glob(f"executorch*/{METADATA}")]
    return max(exports, key=lambda path: _written(path).stat().st_mtime, default=None)


def phone_exports(run_dir: Path) -> list[Path]:
    """The run's exports `push` takes, newest first: ExecuTorch folders and merged GGUF models
    (a GGUF adapter is not one: PocketPal and ChatterUI cannot apply a LoRA adapter)."""
    folder = run_dir / "export"
    exports = [metadata.parent for metadata in folder.glob(f"executorch*/{METADATA}")]
    exports += folder.glob(f"{MERGED_PREFIX}*.gguf")
    return sorted(exports, key=lambda path: _written(path).stat().st_mtime, reverse=True)


def phone_label(export: Path) -> str:
    """What pushing the export puts where, for the Export tab's choice."""
    if export.is_dir():
        return f"ExecuTorch {export.name} → a folder of its own on the phone (ExecuTorch apps)"
    weights = export.stem.removeprefix(MERGED_PREFIX).upper()
    return (f"merged GGUF {weights}, {export.stat().st_size / 2**20:.1f} MiB → the phone's "
            "Download folder (PocketPal, ChatterUI)")


def _written(export: Path) -> Path:
    # A folder's own time changes with any file added to it; its metadata is written last.
    return export / METADATA if export.is_dir() else export


def describe(export: Path) -> str:
    """Two lines: the export (its size and path), then its verification verdict."""
    try:
        if export.is_dir():
            return _describe_executorch(export)
        return _describe_gguf(export)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{export}: cannot read its verification report ({exc})"


def _describe_executorch(folder: Path) -> str:
    metadata = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    report = metadata["verification"]
    # The adapter layout: a small per-run program plus the base's shared weights.
    sizes = f"model.pte {metadata['program_bytes'] / 2**20:.1f} MiB" + (
        f" + foundation.ptd {metadata['data_bytes'] / 2**20:.1f} MiB (the base, shared by this "
        "base's exports)" if metadata.get("data_bytes") else "")
    return (f"ExecuTorch export ({metadata['export']['quantize']}, {sizes}): {folder}\n"
            f"checked in the ExecuTorch runtime against PyTorch with the adapter on "
            f"{report['prompts']} held-out prompts ({report['positions']} positions): "
            f"max |Δlogit| {report['max_abs_diff']:.3g}, top-1 agreement "
            f"{report['top1_agreement']:.1%}")


def _describe_gguf(path: Path) -> str:
    size = f", {path.stat().st_size / 2**20:.1f} MiB" if path.is_file() else ""
    head = f"GGUF export{size}: {path}"
    report_path = path.with_name(f"{path.stem}.verification.json")
    if not report_path.is_file():
        return f"{head}\nnot verified in llama.cpp (no {report_path.name}; export it here to check it)"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    correlation = report["delta_correlation"]
    change = (f"LoRA-change correlation {correlation:.5f}" if correlation is not None else
              f"LoRA change too small to correlate (rms {report['delta_rms']:.2g})")
    verdict = (f"verified in llama.cpp against torch + peft on {report['positions']} positions: "
               f"top-1 {report['top1_agreement']:.1%}, {change}, max |Δlogit| "
               f"{report['max_abs_diff']:.3g}")
    if report.get("float_base"):
        verdict += (f"; on an f16 copy of the base: top-1 "
                    f"{report['float_base']['top1_agreement']:.1%}")
    if report.get("quantised"):
        quantised = report["quantised"]
        verdict += (f"; {quantised['outtype']} vs f16: top-1 "
                    f"{quantised['top1_agreement_with_f16']:.1%}, logit cosine "
                    f"{quantised['mean_logit_cosine_with_f16']:.4f}")
    return f"{head}\n{verdict}"


def modelfile(export: Path) -> Path | None:
    """The Ollama Modelfile beside a GGUF export, None for other exports."""
    path = export.with_suffix(MODELFILE)
    return path if export.suffix == ".gguf" and path.is_file() else None


def ollama_command(modelfile: Path) -> str:
    """`ollama create NAME -f MODELFILE`, NAME made of the run's and the export's names."""
    run_name = modelfile.parent.parent.name
    name = re.sub(r"[^a-z0-9._-]+", "-", f"{run_name}-{modelfile.stem}".lower()).strip("-.")
    quoted = subprocess.list2cmdline([str(modelfile)]) if os.name == "nt" else \
        shlex.quote(str(modelfile))
    return f"ollama create {name or 'edgetune'} -f {quoted}"
