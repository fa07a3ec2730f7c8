"""Every document, test and module the README, the docs and the code point to is in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_every_cited_document_exists():
    cited = []
    for page in [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            cited.append((page, (page.parent / target).resolve()))
    for source in [*(ROOT / "fpa_ray").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for target in re.findall(r"\b((?:docs|deploy|benchmarks)/[\w/.-]+\.md)\b", source.read_text()):
            cited.append((source, ROOT / target))
        for name in re.findall(r"\b([A-Z]+\.md)\b", source.read_text()):  # a bare name: it must be at the root
            cited.append((source, ROOT / name))
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "deploy").rglob("*.md"), *(ROOT / "deploy").rglob("*.yaml")]:
        for target in re.findall(r"\b((?:tests|benchmarks|fpa_ray)/[\w/]+\.py)\b", page.read_text()):  # a test or module named in prose
            cited.append((page, ROOT / target))
    missing = [f"{source.relative_to(ROOT)} -> {target}" for source, target in cited if not target.exists()]
    assert len(cited) > 20 and not missing, missing
