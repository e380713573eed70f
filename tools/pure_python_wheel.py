"""Repack a binary wheel's Python code as a pure-Python wheel (``py3-none-any``) that pip installs honestly.

Used by tools/install.sh for ``sal-detectron2``: its only wheel is tagged CPython 3.10 because of the
compiled ``detectron2/_C.cpython-310-*.so``, which no other interpreter can load (and which is built
against another torch). The new wheel holds exactly what is usable here: the Python files of the
named top-level package(s), without compiled extensions; its METADATA (name, version, declared
dependencies such as ``numpy<2``) is kept unchanged, and its WHEEL file and RECORD describe the new
content, so that ``pip install`` resolves the dependencies and ``pip check`` has nothing to report.

    python tools/pure_python_wheel.py sal_detectron2-0.7.2-cp310-none-any.whl OUT_DIR --package detectron2
"""
import argparse
import base64
import hashlib
import os
import re
import sys
import zipfile

COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def repack(wheel_path, out_dir, packages):
    """Write ``<name>-<version>-py3-none-any.whl`` into ``out_dir``; return its path."""
    match = re.match(r"([^-]+)-([^-]+)-", os.path.basename(wheel_path))
    if not match:
        raise SystemExit(f"error: {wheel_path} is not named like a wheel (name-version-tags.whl)")
    name, version = match.groups()
    dist_info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel_path) as source:
        names = source.namelist()
        code = [
            n for n in names
            if n.split("/")[0] in packages and not n.endswith("/") and not n.endswith(COMPILED_SUFFIXES)
        ]
        dropped = [n for n in names if n.split("/")[0] in packages and n.endswith(COMPILED_SUFFIXES)]
        if not code:
            raise SystemExit(f"error: {wheel_path} holds no files of {packages}")
        files = {n: source.read(n) for n in code}
        for extra in ("METADATA", "LICENSE"):
            if f"{dist_info}/{extra}" in names:
                files[f"{dist_info}/{extra}"] = source.read(f"{dist_info}/{extra}")
    note = f"; compiled extensions left out: {', '.join(dropped)}" if dropped else ""
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\n"
        f"Generator: escnet tools/pure_python_wheel.py (Python code of {os.path.basename(wheel_path)}{note})\n"
        "Root-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    ).encode()
    files[f"{dist_info}/top_level.txt"] = "".join(f"{p}\n" for p in packages).encode()
    record = [record_line(n, data) for n, data in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, f"{name}-{version}-py3-none-any.whl")
    tmp = target + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for n, data in files.items():
            out.writestr(n, data)
    os.replace(tmp, target)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("out_dir")
    parser.add_argument("--package", action="append", required=True, help="top-level package to keep (repeatable)")
    args = parser.parse_args(argv)
    print(repack(args.wheel, args.out_dir, args.package))


if __name__ == "__main__":
    sys.exit(main())
