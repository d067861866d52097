"""The build step that puts the pages and the browser libraries inside the package.

pyproject.toml holds the metadata; this file only adds to setuptools' `build_py` (and
`sdist`) so that a wheel carries, inside `rm_flask/`:
- `templates/` and `static/`, from the top of the checkout;
- `vendor/`: the files of `rm_flask.assets.VENDOR_FILES`, taken from `node_modules/` and
  checked against package-lock.json: each must equal the same file in the npm tarball
  whose digest is the lock's `integrity` (read from npm's cache; `npm cache add` fills
  it when it lacks the tarball).
A machine that installs the wheel then needs no Node.js.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _vendor_files() -> dict[str, tuple[str, str, str, str]]:
    # rm_flask/assets.py imports only the standard library; the package's dependencies
    # are not installed where a wheel is built.
    spec = importlib.util.spec_from_file_location("_rm_assets", HERE / "rm_flask" / "assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VENDOR_FILES


class BuildError(RuntimeError):
    pass


def _npm_cache() -> Path:
    configured = os.environ.get("npm_config_cache")
    if configured:
        return Path(configured)
    npm = shutil.which("npm")
    if npm:
        out = subprocess.run([npm, "config", "get", "cache"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return Path.home() / ".npm"


def _locked_tarball(package: str) -> bytes:
    """The npm tarball of `package` that package-lock.json names, its digest checked."""
    lock = json.loads((HERE / "package-lock.json").read_text(encoding="utf-8"))
    entry = lock.get("packages", {}).get(f"node_modules/{package}")
    if not entry or "integrity" not in entry:
        raise BuildError(f"package-lock.json has no integrity for {package}: run `npm install`")
    algorithm, _, encoded = entry["integrity"].partition("-")
    digest = base64.b64decode(encoded)
    hexdigest = digest.hex()
    # cacache's layout: content-v2/<algorithm>/<2 hex>/<2 hex>/<the rest of the digest>.
    content = _npm_cache() / "_cacache" / "content-v2" / algorithm
    cached = content / hexdigest[:2] / hexdigest[2:4] / hexdigest[4:]
    if not cached.is_file() and shutil.which("npm"):
        subprocess.run(["npm", "cache", "add", f"{package}@{entry['version']}"], check=False,
                       capture_output=True)
    if not cached.is_file():
        raise BuildError(f"the npm tarball of {package}@{entry['version']} is not in npm's cache "
                         f"({content}) and npm could not fetch it: run `npm ci`")
    data = cached.read_bytes()
    if hashlib.new(algorithm, data).digest() != digest:
        raise BuildError(f"npm's cached tarball of {package} does not match package-lock.json")
    return data


def _checked_vendor_file(package: str, inside: str, tarballs: dict[str, bytes]) -> Path:
    """node_modules/`package`/`inside`, once it equals the locked tarball's copy."""
    installed = HERE / "node_modules" / package / inside
    if not installed.is_file():
        raise BuildError(f"{installed.relative_to(HERE)} is missing: run `npm ci` before building")
    if package not in tarballs:
        tarballs[package] = _locked_tarball(package)
    with tarfile.open(fileobj=io.BytesIO(tarballs[package]), mode="r:gz") as tar:
        member = tar.extractfile(f"package/{inside}")
        expected = member.read() if member else None
    if expected != installed.read_bytes():
        raise BuildError(f"{installed.relative_to(HERE)} differs from {package}'s locked tarball "
                         "(package-lock.json): run `npm ci`")
    return installed


class BuildWithAssets(build_py):
    """setuptools' build_py, then the pages and the checked vendor files into the package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "rm_flask"
        for folder in ("templates", "static"):
            shutil.rmtree(target / folder, ignore_errors=True)
            shutil.copytree(HERE / folder, target / folder)
        vendor = target / "vendor"
        vendor.mkdir(parents=True, exist_ok=True)
        tarballs: dict[str, bytes] = {}
        for name, (package, inside, _, _) in _vendor_files().items():
            shutil.copyfile(_checked_vendor_file(package, inside, tarballs), vendor / name)


class SdistWithAssets(sdist):
    """The source archive carries the checked vendor files where a checkout has them, so
    that a wheel built from it (as `python -m build` does) finds them."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        tarballs: dict[str, bytes] = {}
        for package, inside, _, _ in _vendor_files().values():
            source = _checked_vendor_file(package, inside, tarballs)
            dest = Path(base_dir) / source.relative_to(HERE)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)


setup(cmdclass={"build_py": BuildWithAssets, "sdist": SdistWithAssets})
