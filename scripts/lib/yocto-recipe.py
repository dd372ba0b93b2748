#!/usr/bin/env python3
"""Checks the Yocto recipe against the tree it builds (scripts/check-yocto runs it; bitbake
cannot fetch its toolchain here, so what a build would trip on is checked by reading):

- the recipe builds this tree (externalsrc at the repository's top), not a remote revision;
- its version is Cargo.toml's;
- LIC_FILES_CHKSUM is LICENSE's md5;
- LICENSE lists edgehook's licence and every crate's compiled in (scripts/licenses yocto);
- cargo does not strip when the release profile would (oe-core's already-stripped QA error);
- the package depends on ca-certificates (HTTPS sinks), and the distro must have systemd;
- the layer declares scarthgap, or says in conf/layer.conf why not.

Prints each problem and exits 1 if there is any.
"""
import hashlib
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
LAYER = ROOT / "yocto-layer"
RECIPES = sorted((LAYER / "recipes-connectivity/edgehook").glob("edgehook_*.bb"))


def assignments(path: pathlib.Path) -> dict[str, list[tuple[str, str]]]:
    """Every `VAR op "value"` of a bitbake file (continuation lines joined): VAR → [(op, value)]."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, list[tuple[str, str]]] = {}
    pattern = r'^(?:export\s+)?([A-Za-z0-9_:${}\-]+)\s*(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)\s*"(.*)"\s*$'
    for line in text.splitlines():
        m = re.match(pattern, line.strip())
        if m:
            found.setdefault(m.group(1), []).append((m.group(2), " ".join(m.group(3).split())))
    return found


def value(found: dict, var: str) -> str:
    """The words a variable ends up with, for the plain operators used in the recipe."""
    words = ""
    for op, v in found.get(var, []):
        words = v if op in ("=", ":=", "?=", "??=") else f"{words} {v}".strip()
    return words


def main() -> int:
    problems = []
    if len(RECIPES) != 1:
        print(f"expected one edgehook_*.bb, found {[r.name for r in RECIPES]}")
        return 1
    recipe = RECIPES[0]
    bb = assignments(recipe)
    text = recipe.read_text()
    inherits = " ".join(re.findall(r"^inherit\s+(.*)$", text, re.M)).split()

    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    version = recipe.stem.split("_", 1)[1]
    if version != cargo["package"]["version"]:
        problems.append(f"{recipe.name}: version {version}, Cargo.toml says {cargo['package']['version']}")

    # The source: this tree, never a fixed remote revision that drifts from it.
    if "SRCREV" in bb or any(re.search(r"\bgit://|https?://", v) for _, v in bb.get("SRC_URI", [])):
        problems.append(f"{recipe.name}: builds a remote revision (SRC_URI/SRCREV), not the tree the layer is in")
    top = "${@os.path.abspath(os.path.join('${THISDIR}', '..', '..', '..'))}"
    if "externalsrc" not in inherits or value(bb, "EXTERNALSRC") != top:
        problems.append(f"{recipe.name}: does not build the tree the layer is in (inherit externalsrc, EXTERNALSRC := \"{top}\")")
    if recipe.parent.parent.parent.parent.resolve() != ROOT:
        problems.append(f"{recipe.name}: is not three levels under the repository's top")

    lic = re.search(r"file://LICENSE;md5=([0-9a-f]{32})", value(bb, "LIC_FILES_CHKSUM"))
    md5 = hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest()
    if not lic or lic.group(1) != md5:
        problems.append(f"{recipe.name}: LIC_FILES_CHKSUM is not file://LICENSE;md5={md5}")

    expected = subprocess.run([str(ROOT / "scripts/licenses"), "yocto"], capture_output=True,
                              text=True, check=True).stdout.strip()
    if value(bb, "LICENSE") != expected:
        problems.append(f"{recipe.name}: LICENSE is \"{value(bb, 'LICENSE')}\"; the crates compiled in make it \"{expected}\" (scripts/licenses yocto)")

    if cargo.get("profile", {}).get("release", {}).get("strip") not in (None, False, "none"):
        if value(bb, "CARGO_PROFILE_RELEASE_STRIP") != "false" or not re.search(
                r"^export\s+CARGO_PROFILE_RELEASE_STRIP\b", text, re.M):
            problems.append(f"{recipe.name}: the release profile strips, which oe-core's QA refuses (already-stripped): export CARGO_PROFILE_RELEASE_STRIP = \"false\"")

    if "ca-certificates" not in value(bb, "RDEPENDS:${PN}").split():
        problems.append(f"{recipe.name}: no RDEPENDS:${{PN}} on ca-certificates (HTTPS sinks fail on a minimal image)")
    if "systemd" not in value(bb, "REQUIRED_DISTRO_FEATURES").split() or "features_check" not in inherits:
        problems.append(f"{recipe.name}: no REQUIRED_DISTRO_FEATURES = \"systemd\" with inherit features_check")
    if "scripts/licenses notices" not in text:
        problems.append(f"{recipe.name}: installs no third-party notices (scripts/licenses notices)")

    conf = assignments(LAYER / "conf/layer.conf")
    reason = re.search(r"^# scarthgap: not declared\. .*Rust", (LAYER / "conf/layer.conf").read_text(), re.M | re.S)
    if "scarthgap" not in value(conf, "LAYERSERIES_COMPAT_edgehook").split() and not reason:
        problems.append("conf/layer.conf: neither scarthgap in LAYERSERIES_COMPAT_edgehook nor a '# scarthgap: not declared. …' reason")

    for p in problems:
        print(p)
    if not problems:
        print(f"{recipe.name}: builds this tree, version {version}, LICENSE and LIC_FILES_CHKSUM match, not stripped by cargo, ca-certificates, systemd required")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
