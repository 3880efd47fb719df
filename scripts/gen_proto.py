#!/usr/bin/env python3
"""Generate the Python code of the protobuf contract, or check that the committed code is up to date.

    python scripts/gen_proto.py           # regenerate services/neuroflow/proto/**/*_pb2.py(i)
    python scripts/gen_proto.py --check   # exit 1 with a diff when the committed code is stale

Takes every ``proto/**/*.proto`` and runs ``grpc_tools.protoc`` with ``--python_out`` and ``--mypy_out``
(mypy-protobuf's ``protoc-gen-mypy``, from the same environment as this interpreter). The well-known
types (``google/protobuf/timestamp.proto``) come from the copy bundled with grpc_tools, so no system
protoc is needed. The generated files are committed: running neuroflow needs only ``protobuf``.

Import layout. protoc names modules after the proto package path: ``proto/neuroflow/v1/events.proto``
becomes module ``neuroflow.v1.events_pb2`` and imports its dependency as ``from neuroflow.v1 import
common_pb2``. In this repository the code lives inside the ``neuroflow`` Python package, at
``neuroflow.proto.neuroflow.v1``, so those imports would not resolve. After generation this script
rewrites, deterministically, exactly two kinds of line (and fails if protoc's output no longer has
them, rather than leaving broken code):

* ``from neuroflow.v1 import common_pb2 as ...`` (in ``.py`` and ``.pyi``) becomes
  ``from neuroflow.proto.neuroflow.v1 import common_pb2 as ...``;
* the module name passed to ``_builder.BuildTopDescriptorsAndMessages`` (used as the classes'
  ``__module__``, e.g. for pickling) gets the same prefix.

The serialised descriptors are left alone: the wire names stay ``neuroflow.v1.StudyReady``.
Missing ``__init__.py`` files of the generated packages are created (never overwritten).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPOSITORY_ROOT / "proto"
OUTPUT_ROOT = REPOSITORY_ROOT / "services" / "neuroflow" / "proto"
# Python package that OUTPUT_ROOT is: generated modules are importable below it.
OUTPUT_PACKAGE = "neuroflow.proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")
INIT_TEXT = '"""Generated protobuf code (scripts/gen_proto.py); the contract itself is in proto/."""\n'


def proto_files() -> list[Path]:
    """Every .proto file of the contract, relative to PROTO_ROOT, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def proto_packages(files: list[Path]) -> set[str]:
    """Dotted Python package of each proto directory (``neuroflow/v1`` -> ``neuroflow.v1``)."""
    return {".".join(f.parent.parts) for f in files}


def run_protoc(files: list[Path], out_dir: Path) -> None:
    """Run grpc_tools.protoc on ``files`` writing ``*_pb2.py`` and ``*_pb2.pyi`` under ``out_dir``.

    Raises SystemExit with protoc's message when it fails (syntax error, missing import)."""
    import grpc_tools  # deferred: only the generator needs grpcio-tools, never the runtime

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    if not plugin.is_file():
        found = shutil.which("protoc-gen-mypy")
        if found is None:
            raise SystemExit("protoc-gen-mypy not found: pip install mypy-protobuf into this environment")
        plugin = Path(found)
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}", f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out_dir}", f"--mypy_out={out_dir}",
        *(str(f) for f in files),
    ]
    result = subprocess.run(command, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")


def rewrite_imports(text: str, packages: set[str], *, is_stub: bool, name: str) -> str:
    """Prefix imports of generated modules (and the module name given to the builder) with
    OUTPUT_PACKAGE, as described in the module docstring. Refuses output it does not recognise."""
    alternatives = "|".join(re.escape(p) for p in sorted(packages, key=len, reverse=True))
    import_line = re.compile(rf"^from ({alternatives}) import (\w+_pb2) as (\w+)$", re.MULTILINE)
    text = import_line.sub(rf"from {OUTPUT_PACKAGE}.\1 import \2 as \3", text)
    if not is_stub:
        builder = re.compile(
            rf"^(_builder\.BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')"
            rf"(({alternatives})\.\w+_pb2)'",
            re.MULTILINE,
        )
        text, count = builder.subn(rf"\g<1>{OUTPUT_PACKAGE}.\2'", text)
        if count != 1:
            raise SystemExit(f"{name}: protoc output changed shape (no BuildTopDescriptorsAndMessages line); "
                             "update rewrite_imports in scripts/gen_proto.py")
    leftover = re.search(rf"^(from|import) ({alternatives})[ .]", text, re.MULTILINE)
    if leftover:
        raise SystemExit(f"{name}: import not rewritten: {leftover.group(0)!r}; update scripts/gen_proto.py")
    return text


def generate(out_dir: Path) -> list[Path]:
    """Generate and post-process every module into ``out_dir``; returns their paths relative to it."""
    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    run_protoc(files, out_dir)
    packages = proto_packages(files)
    generated = _generated_modules(out_dir)
    for relative in generated:
        path = out_dir / relative
        text = path.read_text(encoding="utf-8")
        path.write_text(rewrite_imports(text, packages, is_stub=path.suffix == ".pyi", name=str(relative)),
                        encoding="utf-8")
    return generated


def committed_files() -> list[Path]:
    """Generated modules currently in OUTPUT_ROOT, relative to it."""
    return _generated_modules(OUTPUT_ROOT)


def _generated_modules(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def package_inits(generated: list[Path]) -> list[Path]:
    """The ``__init__.py`` every generated module needs to be importable, relative to OUTPUT_ROOT."""
    needed = {Path("__init__.py")}
    for relative in generated:
        for parent in relative.parents:
            needed.add(parent / "__init__.py")
    return sorted(needed)


def check(fresh_dir: Path, generated: list[Path]) -> list[str]:
    """Differences between freshly generated code and OUTPUT_ROOT, one entry per file, with a diff."""
    problems: list[str] = []
    for relative in generated:
        fresh = (fresh_dir / relative).read_text(encoding="utf-8")
        target = OUTPUT_ROOT / relative
        if not target.is_file():
            problems.append(f"missing: {relative}")
            continue
        committed = target.read_text(encoding="utf-8")
        if committed != fresh:
            diff = difflib.unified_diff(committed.splitlines(), fresh.splitlines(), f"committed/{relative}",
                                        f"generated/{relative}", lineterm="", n=1)
            lines = list(diff)
            more = f"\n... ({len(lines) - 40} more diff lines)" if len(lines) > 40 else ""
            shown = "\n".join(lines[:40]) + more
            problems.append(f"differs: {relative}\n{shown}")
    for relative in sorted(set(committed_files()) - set(generated)):
        problems.append(f"stale (no .proto generates it): {relative}")
    for relative in package_inits(generated):
        if not (OUTPUT_ROOT / relative).is_file():
            problems.append(f"missing package file: {relative}")
    return problems


def write(fresh_dir: Path, generated: list[Path]) -> None:
    """Replace the generated modules in OUTPUT_ROOT and remove those no .proto generates any more."""
    for relative in sorted(set(committed_files()) - set(generated)):
        (OUTPUT_ROOT / relative).unlink()
        print(f"removed stale {relative}")
    for relative in generated:
        target = OUTPUT_ROOT / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh_dir / relative, target)
        print(f"wrote {target.relative_to(REPOSITORY_ROOT)}")
    for relative in package_inits(generated):
        init = OUTPUT_ROOT / relative
        if not init.is_file():
            init.write_text(INIT_TEXT, encoding="utf-8")
            print(f"created {init.relative_to(REPOSITORY_ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing every generated file that is out of date")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="neuroflow-proto-") as tmp:
        fresh_dir = Path(tmp)
        generated = generate(fresh_dir)
        if args.check:
            problems = check(fresh_dir, generated)
            if problems:
                print("generated protobuf code is out of date; run: python scripts/gen_proto.py\n")
                print("\n\n".join(problems))
                return 1
            print(f"generated protobuf code is up to date ({len(generated)} files)")
            return 0
        write(fresh_dir, generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
