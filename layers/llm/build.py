"""Build the LLM layer zip: ``python/llmfn_llm/**.py``, byte-for-byte reproducible.

Usage: ``python layers/llm/build.py [OUT_DIR]`` (default ``./build/layers``);
prints ``<sha256>  <path>`` like ``sha256sum``. Owns the zip layout only; it
must not bundle ``openai`` (the function brings its own).
"""
from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

LAYER_DIR = Path(__file__).resolve().parent
PACKAGE_DIR = LAYER_DIR / "python" / "llmfn_llm"
# Relative to the current folder: this file may also be the copy inside an installed llmfn.
DEFAULT_OUT_DIR = Path("build") / "layers"
ZIP_NAME = "llmfn-llm-layer.zip"
# Fixed metadata, so that the same sources always give the same bytes.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644
COMPRESS_LEVEL = 9


def layer_members() -> list[tuple[str, Path]]:
    """(name in the zip, source file), sorted by name; no __pycache__."""
    files = (p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    return sorted((p.relative_to(LAYER_DIR).as_posix(), p) for p in files)


def build_layer(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / ZIP_NAME
    partial = out / (ZIP_NAME + ".partial")
    with zipfile.ZipFile(partial, "w") as zf:
        for name, path in layer_members():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.create_system = 3  # unix, so that the mode bits are read
            info.external_attr = FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=COMPRESS_LEVEL)
    partial.replace(target)
    return target


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = build_layer(args[0] if args else DEFAULT_OUT_DIR)
    print(f"{file_sha256(path)}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
