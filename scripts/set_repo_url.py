"""Keep the repository's URL in one place: pyproject.toml's `[project.urls] Repository`.

A fork has to change every place that names the repository, together:
- the Colab install cell of every notebook: `"dpo-edu @ git+https://github.com/OWNER/NAME"`
  (CONTRIBUTING.md quotes that cell);
- the Colab badges and links, `https://colab.research.google.com/github/OWNER/NAME/blob/main/notebooks/...`,
  in each notebook's header, README.md and CONTRIBUTING.md.

    python scripts/set_repo_url.py                                      # check them: exit 1 and list the ones that differ
    python scripts/set_repo_url.py --set https://github.com/OWNER/NAME  # rewrite pyproject.toml, then all of them

Colab opens notebooks from GitHub only, so the URL must be https://github.com/OWNER/NAME.
`--set` also replaces any other mention of the old URL in those files (a `git clone` line, say).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GITHUB_URL = re.compile(r"https://github\.com/(?P<repo>[\w.-]+/[\w.-]+?)(?:\.git)?/?")
# Repository = "..." inside the [project.urls] table (up to the next table)
REPOSITORY_LINE = re.compile(r'^(\[project\.urls\]\n(?:[^\[].*\n|\n)*?Repository\s*=\s*")([^"]+)(")', re.M)
# the two ways the text names the repository; [^...\\] stops at the quote, escaped or not, that ends the URL
INSTALL = re.compile(r"git\+(?P<url>https://[^\s\"'`\\]+)")
COLAB = re.compile(r"colab\.research\.google\.com/github/(?P<repo>[\w.-]+/[\w.-]+)/blob/")


def repository_url(root: Path = ROOT) -> str:
    """The `Repository` entry of root/pyproject.toml's [project.urls] table."""
    match = REPOSITORY_LINE.search((root / "pyproject.toml").read_text())
    if match is None:
        raise ValueError(f"{root / 'pyproject.toml'} has no [project.urls] Repository = \"...\"")
    return match.group(2)


def owner_and_name(url: str) -> str:
    """'OWNER/NAME' of https://github.com/OWNER/NAME (a trailing '.git' or '/' is allowed)."""
    match = GITHUB_URL.fullmatch(url)
    if match is None:
        raise ValueError(f"not a GitHub repository URL (https://github.com/OWNER/NAME): {url!r}")
    return match.group("repo")


def texts(root: Path) -> list[tuple[str, str]]:
    """(place, text) for README.md, CONTRIBUTING.md and every cell of notebooks/*.ipynb."""
    places = [(name, (root / name).read_text()) for name in ("README.md", "CONTRIBUTING.md") if (root / name).exists()]
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        places += [(f"notebooks/{path.name}, cell {index}", "".join(cell["source"])) for index, cell in enumerate(cells)]
    return places


def mismatches(root: Path = ROOT) -> list[str]:
    """One line per place whose install URL or Colab link is not pyproject's repository; [] when all agree."""
    url = repository_url(root)
    repo = owner_and_name(url)
    found = []
    for place, text in texts(root):
        found += [f"{place}: git+{m['url']} (pyproject: git+{url})" for m in INSTALL.finditer(text) if m["url"] != url]
        found += [f"{place}: Colab link to {m['repo']} (pyproject: {repo})" for m in COLAB.finditer(text) if m["repo"] != repo]
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        if not INSTALL.search(path.read_text()):
            found.append(f"notebooks/{path.name}: no install line ('dpo-edu @ git+...')")
    return found


def rewrite(text: str, old_url: str, new_url: str) -> str:
    """text with every install URL, Colab link and mention of old_url pointing at new_url."""
    repo = owner_and_name(new_url)
    text = text.replace(old_url, new_url)
    text = INSTALL.sub(lambda m: f"git+{new_url}", text)
    return COLAB.sub(lambda m: f"colab.research.google.com/github/{repo}/blob/", text)


def set_url(new_url: str, root: Path = ROOT) -> list[Path]:
    """Point pyproject.toml, README.md, CONTRIBUTING.md and every notebook at new_url; returns the files changed."""
    new_url = new_url.rstrip("/").removesuffix(".git")
    owner_and_name(new_url)  # refuse a non-GitHub URL before touching anything
    old_url = repository_url(root)
    pyproject = root / "pyproject.toml"
    changed = [pyproject] if old_url != new_url else []
    pyproject.write_text(REPOSITORY_LINE.sub(lambda m: m.group(1) + new_url + m.group(3), pyproject.read_text()))
    for path in [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "notebooks").glob("*.ipynb"))]:
        if not path.exists():
            continue
        text = path.read_text()
        new_text = rewrite(text, old_url, new_url)  # a URL has no character that JSON escapes
        if new_text != text:
            path.write_text(new_text)
            changed.append(path)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="new_url", metavar="URL", help="point every place at this GitHub URL")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args()
    if args.new_url:
        for path in set_url(args.new_url, args.root):
            print(f"rewrote {path.relative_to(args.root)}")
    found = mismatches(args.root)
    for line in found:
        print(line)
    print(f"{len(found)} place(s) differ from {repository_url(args.root)}" if found
          else f"every notebook, README.md and CONTRIBUTING.md use {repository_url(args.root)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
