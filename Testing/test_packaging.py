"""The extension as the Slicer Extensions Index checks it before listing it.

The index (Slicer/ExtensionsIndex: its scripts/check_description_files.py, run on every pull request, and
the Tier 1 checklist of its pull-request template) clones the repository named in the catalog entry
ResMTNet.json and checks: the entry against the catalog-entry JSON schema it names (v1.0.2, in
Slicer/Slicer Schemas/), with LF line endings; the extension's name (the entry's file name) against the
top-level CMakeLists.txt project() and the rule that it does not start with "Slicer"; the repository's name
(it does start with "Slicer"); the scm_url's scheme; the category; EXTENSION_ICONURL and
EXTENSION_SCREENSHOTURLS in CMakeLists.txt, each an image that downloads; a licence file in the repository
root; the repository's size (100 MB at most, history included); that each build dependency is an
extension of the index. The older .s4ext checks (category, contributors, description, https homepage and
icon, http screenshots, scmurl scheme, scm not local) still apply to Extension.s4ext.

Here the same rules are checked offline, by our own code: an image URL must name a file of this repository
(at the revision the entry names) that is an image; the schema's rules are written out below and the
validator is shown to reject entries that break each of them. What needs the network is left to the index
itself: that GitHub serves the files (after a push), the repository's "3d-slicer-extension" topic, and the
index's list of extensions (PyTorch is one: SlicerPyTorch, PyTorch.json).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_CMAKE = REPO / "CMakeLists.txt"
S4EXT = REPO / "Extension.s4ext"
CATALOG_ENTRY = REPO / "ResMTNet.json"
README = REPO / "README.md"
EXTENSION_NAME = CATALOG_ENTRY.stem

SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json"
# The rules of catalog-entry schema v1.0.2 (draft-07): required keys, no other keys, each key's JSON type,
# and the enum / range constraints it sets.
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
SCHEMA_TYPES = {"$schema": "string", "category": "string", "scm_url": "string", "scm_revision": "string",
                "scm_type": "string", "build_dependencies": "array", "dicom_support_rule": "string",
                "build_subdirectory": "string", "enabled": "boolean", "tier": "integer"}
SCHEMA_ENUMS = {"scm_type": ("git", "local")}
SCHEMA_RANGES = {"tier": (1, 5)}
# Categories the index accepts (its list has about sixty; these are the ones that could describe us).
ACCEPTED_CATEGORIES = {"Segmentation", "Quantification", "Analysis", "Chest Imaging Platform", "Examples"}
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
REPOSITORY_SIZE_LIMIT = 100 * 1024 * 1024
IMAGE_SIZE_LIMIT = 500 * 1024  # ours: icons and screenshots stay small in the repository


def _json_type_ok(value: Any, json_type: str) -> bool:
    if json_type == "string":
        return isinstance(value, str)
    if json_type == "boolean":
        return isinstance(value, bool)
    if json_type == "integer":  # JSON Schema: any number without a fractional part (1.0 too), never a boolean
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                            and value.is_integer())
    if json_type == "array":
        return isinstance(value, list)
    raise ValueError(json_type)


def schema_errors(entry: Any) -> list[str]:
    """What in ``entry`` breaks catalog-entry schema v1.0.2 (empty when it is valid)."""
    if not isinstance(entry, dict):
        return ["the entry is not a JSON object"]
    errors = [f"{key} is required" for key in SCHEMA_REQUIRED if key not in entry]
    errors += [f"{key} is not a property of the schema" for key in entry if key not in SCHEMA_TYPES]
    for key, value in entry.items():
        json_type = SCHEMA_TYPES.get(key)
        if json_type is None:
            continue
        if not _json_type_ok(value, json_type):
            errors.append(f"{key} must be a JSON {json_type}")
            continue
        if key in SCHEMA_ENUMS and value not in SCHEMA_ENUMS[key]:
            errors.append(f"{key} must be one of {SCHEMA_ENUMS[key]}")
        if key in SCHEMA_RANGES and not SCHEMA_RANGES[key][0] <= value <= SCHEMA_RANGES[key][1]:
            errors.append(f"{key} must lie within {SCHEMA_RANGES[key]}")
        if key == "build_dependencies" and not all(isinstance(item, str) for item in value):
            errors.append("build_dependencies items must be strings")
    return errors


def catalog_entry() -> dict:
    return json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))


def cmake_metadata() -> dict[str, str]:
    return dict(re.findall(r'set\(\s*EXTENSION_(\w+)\s+"([^"]*)"\s*\)', TOP_CMAKE.read_text()))


def s4ext_metadata() -> dict[str, str | None]:
    """Extension.s4ext as the index reads it: the first word of a line is the key, the rest its value."""
    entries: dict[str, str | None] = {}
    for line in S4EXT.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        entries[key] = value.strip() or None
    return entries


def github_repository() -> tuple[str, str]:
    """(owner, name) of the repository the catalog entry names."""
    parts = urllib.parse.urlsplit(catalog_entry()["scm_url"])
    owner, name = parts.path.strip("/").split("/")[:2]
    return owner, name.removesuffix(".git")


def repository_path(url: str) -> str | None:
    """The file of this repository that a raw.githubusercontent.com URL names (None for other URLs);
    the URL must name the revision the catalog entry builds."""
    parts = urllib.parse.urlsplit(url)
    owner, name = github_repository()
    if parts.netloc != "raw.githubusercontent.com":
        return None
    segments = parts.path.strip("/").split("/")
    if segments[:2] != [owner, name]:
        return None
    assert segments[2] == catalog_entry()["scm_revision"], f"{url}: not at revision {catalog_entry()['scm_revision']}"
    return "/".join(segments[3:])


def tracked_files() -> set[str] | None:
    """Files git tracks here (None outside a git checkout)."""
    run = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if run.returncode != 0:
        return None
    return {p for p in run.stdout.decode().split("\0") if p}


def image_kind(path: Path) -> str | None:
    head = path.read_bytes()[:8]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def image_urls() -> list[str]:
    cmake = cmake_metadata()
    return [cmake["ICONURL"], *cmake["SCREENSHOTURLS"].split()]


# ------------------------------------------------------------------------------------------------
# The catalog entry (ResMTNet.json)


def test_catalog_entry_is_valid_json_with_lf_line_endings_and_names_schema_v1_0_2():
    raw = CATALOG_ENTRY.read_bytes()
    assert b"\r" not in raw, "the index refuses CR or CRLF line endings"
    entry = json.loads(raw)
    assert entry["$schema"].split("#")[0] == SCHEMA_URL
    assert schema_errors(entry) == []


@pytest.mark.parametrize("change, error", [
    ({"category": None}, "category is required"),
    ({"scm_url": None}, "scm_url is required"),
    ({"$schema": None}, "$schema is required"),
    ({"homepage": "https://example.org"}, "homepage is not a property of the schema"),
    ({"tier": 6}, "tier must lie within (1, 5)"),
    ({"tier": 0}, "tier must lie within (1, 5)"),
    ({"tier": True}, "tier must be a JSON integer"),
    ({"tier": 1.5}, "tier must be a JSON integer"),
    ({"enabled": 1}, "enabled must be a JSON boolean"),
    ({"scm_type": "svn"}, "scm_type must be one of ('git', 'local')"),
    ({"build_dependencies": "PyTorch"}, "build_dependencies must be a JSON array"),
    ({"build_dependencies": ["PyTorch", 3]}, "build_dependencies items must be strings"),
    ({"scm_revision": 7}, "scm_revision must be a JSON string"),
])
def test_schema_check_rejects_what_schema_v1_0_2_rejects(change, error):
    entry = catalog_entry()
    for key, value in change.items():
        if value is None:
            del entry[key]
        else:
            entry[key] = value
    assert error in schema_errors(entry)


def test_extension_name_matches_cmake_project_and_does_not_start_with_slicer():
    project = re.search(r"^\s*project\s*\(\s*([^\s)]+)", TOP_CMAKE.read_text(), re.M | re.I)
    assert project and project.group(1) == EXTENSION_NAME
    assert not EXTENSION_NAME.lower().startswith("slicer")


def test_repository_name_starts_with_slicer_and_scm_url_scheme_is_git_or_https():
    entry = catalog_entry()
    assert "://" in entry["scm_url"]
    assert urllib.parse.urlsplit(entry["scm_url"]).scheme in ("git", "https")
    owner, name = github_repository()
    assert owner and name.startswith("Slicer")
    assert entry.get("scm_type", "git") == "git"


def test_category_is_one_the_index_accepts_and_agrees_everywhere():
    entry = catalog_entry()
    assert entry["category"] in ACCEPTED_CATEGORIES
    assert cmake_metadata()["CATEGORY"] == s4ext_metadata()["category"] == entry["category"]


def test_build_dependencies_agree_with_cmake_and_s4ext():
    depends = cmake_metadata()["DEPENDS"].split()
    depends = [] if depends == ["NA"] else depends
    assert catalog_entry().get("build_dependencies", []) == depends == (s4ext_metadata()["depends"] or "").split()


def test_tier_is_1_experimental_as_cmake_status_says():
    assert catalog_entry().get("tier", 1) == 1
    assert cmake_metadata()["STATUS"] == "Experimental"


# ------------------------------------------------------------------------------------------------
# CMakeLists.txt metadata and Extension.s4ext


def test_cmake_metadata_has_every_field_of_the_extension_template():
    cmake = cmake_metadata()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "STATUS",
                "DEPENDS"):
        assert cmake.get(key, "").strip(), f"EXTENSION_{key} is missing or empty"
    # a summary in 1-2 sentences, as the index's checklist asks
    assert 1 <= len(re.findall(r"[.!?](\s|$)", cmake["DESCRIPTION"])) <= 2


def test_homepage_is_the_repository_and_every_url_is_https():
    cmake = cmake_metadata()
    owner, name = github_repository()
    assert cmake["HOMEPAGE"] == f"https://github.com/{owner}/{name}"
    for url in [cmake["HOMEPAGE"], *image_urls()]:
        assert url.startswith("https://"), url


def test_s4ext_passes_the_description_file_checks_and_agrees_with_cmake():
    s4ext = s4ext_metadata()
    for key in ("category", "contributors", "description", "homepage", "iconurl", "scm", "scmurl"):
        assert s4ext.get(key), f"{key} is missing or empty"
    assert s4ext["homepage"].startswith("https://") and s4ext["iconurl"].startswith("https://")
    assert all(url.startswith("http") for url in (s4ext.get("screenshoturls") or "").split())
    assert urllib.parse.urlsplit(s4ext["scmurl"]).scheme in ("git", "https", "svn")
    assert s4ext["scm"] == "git"  # "local" is refused
    assert s4ext["scmurl"] == catalog_entry()["scm_url"] and s4ext["scmrevision"] == catalog_entry()["scm_revision"]
    cmake = cmake_metadata()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "STATUS"):
        assert s4ext[key.lower()] == cmake[key], key


# ------------------------------------------------------------------------------------------------
# Files the metadata points at


def test_icon_and_screenshot_urls_name_images_this_repository_has():
    tracked = tracked_files()
    assert image_urls(), "an icon and at least one screenshot"
    for url in image_urls():
        path = repository_path(url)
        assert path, f"{url}: not a raw URL into {'/'.join(github_repository())}"
        assert url.lower().endswith((".png", ".jpg", ".jpeg", ".gif")), url
        file = REPO / path
        assert file.is_file(), f"{url}: {path} does not exist in the repository"
        if tracked is not None:
            assert path in tracked, f"{url}: {path} is not committed"
        assert image_kind(file) == file.suffix.lower().lstrip(".").replace("jpg", "jpeg"), f"{path}: not an image"
        assert file.stat().st_size <= IMAGE_SIZE_LIMIT, f"{path}: {file.stat().st_size} bytes"


def test_every_url_into_this_repository_names_a_file_it_has():
    owner, name = github_repository()
    pattern = re.compile(rf"https://raw\.githubusercontent\.com/{owner}/{name}/[^\s\"')>\]]+")
    for source in (TOP_CMAKE, S4EXT, CATALOG_ENTRY, README):
        for url in pattern.findall(source.read_text(encoding="utf-8")):
            path = repository_path(url)
            assert path and (REPO / path).is_file(), f"{source.name}: {url} names no file of the repository"


def test_license_file_in_the_root_is_the_apache_license_the_project_names():
    licenses = [REPO / n for n in LICENSE_NAMES if (REPO / n).is_file()]
    assert licenses, "no licence file in the repository root"
    text = licenses[0].read_text()
    assert re.search(r"Apache License\s+Version 2\.0, January 2004", text)
    for heading in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "1. Definitions.",
                    "2. Grant of Copyright License.", "3. Grant of Patent License.", "4. Redistribution.",
                    "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert heading in text, heading
    assert re.search(r'license\s*=\s*\{\s*text\s*=\s*"Apache-2\.0"\s*\}', (REPO / "pyproject.toml").read_text())
    readme = README.read_text(encoding="utf-8")
    assert "Apache-2.0" in readme and licenses[0].name in readme  # the licence named on the homepage


def test_homepage_readme_names_the_extension_and_shows_the_screenshot():
    readme = README.read_text(encoding="utf-8")
    assert readme.startswith(f"# {EXTENSION_NAME}")
    for url in cmake_metadata()["SCREENSHOTURLS"].split():
        assert re.search(rf"!\[[^\]]*\]\({re.escape(repository_path(url))}\)", readme), url


def test_repository_with_its_history_stays_under_the_index_size_limit():
    """The published branch (HEAD and its history) as a clone of it transfers, plus its checkout.

    Counted from the objects HEAD reaches (`git rev-list --disk-usage`), not from this clone's pack
    files: those also hold whatever other refs and unreachable objects the clone happened to copy, so
    their size depends on how the checkout was made, not on what the index would clone.
    """
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout")
    files = sum((REPO / p).stat().st_size for p in tracked if (REPO / p).is_file())
    usage = subprocess.run(["git", "rev-list", "--objects", "--disk-usage", "HEAD"], cwd=REPO,
                           capture_output=True, text=True)
    if usage.returncode != 0:
        pytest.skip(f"git here cannot count reachable objects (needs 2.38+): {usage.stderr.strip()}")
    history = int(usage.stdout.strip())
    assert files + history < REPOSITORY_SIZE_LIMIT, (
        f"{(files + history) / 2**20:.1f} MB: {files / 2**20:.1f} MB checked out, {history / 2**20:.1f} MB of history")


# ------------------------------------------------------------------------------------------------
# What ships: the weights and their model card, not the repository's documentation

MODULE_CMAKE = REPO / "ResMTNet" / "CMakeLists.txt"
SHIPPED_MODEL_FILES = ("resmtnet-phantom.pt", "MODEL_CARD.md")


def cmake_resources() -> list[str]:
    """The files the scripted module's CMakeLists.txt installs as resources."""
    listed = re.search(r"set\(MODULE_PYTHON_RESOURCES\s+(.*?)\)", MODULE_CMAKE.read_text(), re.S)
    assert listed, "MODULE_PYTHON_RESOURCES not found"
    return [line.split("#")[0].strip() for line in listed.group(1).splitlines() if line.split("#")[0].strip()]


def test_extension_ships_the_weights_and_model_card_but_not_the_model_history():
    resources = cmake_resources()
    for name in SHIPPED_MODEL_FILES:
        assert f"Resources/Models/{name}" in resources, name
    assert not [r for r in resources if "MODEL_HISTORY" in r], resources
    assert (REPO / "docs" / "MODEL_HISTORY.md").is_file()
    assert not (REPO / "ResMTNet" / "Resources" / "Models" / "MODEL_HISTORY.md").exists()


@pytest.mark.slow
def test_wheel_ships_the_weights_and_model_card_but_not_the_model_history(tmp_path):
    """The wheel as pip builds it, from a copy of the sources (so no build folder lands in the checkout)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "ResMTNet", source / "ResMTNet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            str(source), "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    if build.returncode != 0 and "No module named pip" in build.stderr:
        pytest.skip("pip is not installed in this environment")
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "wheel").glob("resmtnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in SHIPPED_MODEL_FILES:
        assert f"resmtnet/Models/{name}" in names, name
    assert not [n for n in names if "MODEL_HISTORY" in n], names


def test_readme_and_docs_link_only_to_files_the_repository_has():
    """Relative Markdown links of the README and docs/ (the README points users there) resolve."""
    pages = [README, *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 1, "docs/ holds the pages the README links to"
    readme_links = set()
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(REPO)}: {target} names no file"
            if page == README:
                readme_links.add(path)
    assert set(pages[1:]) <= readme_links, "every page of docs/ is linked from the README"
