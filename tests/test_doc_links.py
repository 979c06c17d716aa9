"""The links of ``docs/*.md`` and ``README.md`` work where the repository is read as it is (its web
view, a clone) and on the site.

On the repository's view a relative link resolves among the repository's own files: a target must
be a file (or folder) git tracks or would track, not one ``make docs`` generates and git ignores
(``docs/notebooks/``, ``docs/index.md``); a learning-path notebook is linked as its source,
``../examples/NN_name.py``, which ``docs/hooks/repo_links.py`` makes the notebook's page on the site.
An ``#anchor`` must name a heading of its target under both slug rules, GitHub's and MkDocs' (a
heading whose two slugs differ cannot be linked from both); into a notebook, a heading of its
markdown cells. Images must lie under ``docs/`` (the site serves nothing else). Fast: no site
build (``tests/test_docs.py`` builds the site with ``mkdocs build --strict``).
"""

from __future__ import annotations

import importlib.util
import posixpath
import re
import subprocess
import unicodedata
from collections.abc import Callable

import pytest

from tests.helpers import ROOT


def _hook():
    spec = importlib.util.spec_from_file_location("repo_links", ROOT / "docs" / "hooks" / "repo_links.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _hook()  # one definition of what a Markdown link is, shared with the site's rewriting
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)


def repository_files() -> set[str]:
    """The files git tracks or would track (untracked, not ignored), that exist now."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the repository's files are unknown")
    return {name for name in listed.split("\0") if name and (ROOT / name).is_file()}


def _heading_text(text: str) -> tuple[str, str | None]:
    """The heading's text as rendered (markup dropped) and its explicit ``{#id}``, if any."""
    explicit = None
    if match := re.search(r"\s*\{:?([^}]*)\}\s*$", text):  # attr_list: { #id .class }
        ids = re.findall(r"#([\w-]+)", match[1])
        explicit = ids[0] if ids else None
        text = text[: match.start()]
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[`*$\\]", "", text).strip(), explicit


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's toc slugify (MkDocs' default): ASCII only, punctuation dropped."""
    value = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def github_slug(text: str) -> str:
    """GitHub's (github-slugger): lower case, punctuation dropped (letters of any script kept),
    each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _unique(slugs: list[str], separator: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for slug in slugs:
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}{separator}{seen[slug]}"
        else:
            seen[slug] = 0
        out.add(slug)
    return out


def markdown_anchors(text: str) -> tuple[set[str], set[str]]:
    """``(MkDocs anchors, GitHub anchors)`` of a Markdown file: its headings (ATX and setext, not
    in fenced code) and its HTML ``id``/``name`` attributes."""
    text = HOOK.FENCE.sub("", text)
    mkdocs, github, raw = [], [], []
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if match := re.match(r" {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line):
            raw.append(match[1])
        elif (
            i
            and lines[i - 1].strip()
            and re.fullmatch(r" {0,3}(=+|-+)\s*", line)
            and not lines[i - 1].startswith(("-", "*", " "))
        ):
            raw.append(lines[i - 1].strip())
    for heading in raw:
        shown, explicit = _heading_text(heading)
        mkdocs.append(explicit or mkdocs_slug(shown))
        github.append(github_slug(re.sub(r"[`*$\\]", "", heading)) if explicit else github_slug(shown))
    html_ids = set(re.findall(r"<[^>]+\s(?:id|name)=\"([^\"]+)\"", text))
    return _unique(mkdocs, "_") | html_ids, _unique(github, "-") | html_ids


def notebook_anchors(text: str) -> set[str]:
    """The MkDocs anchors of a notebook's page: the headings of its markdown cells (percent format)."""
    headings, markdown = [], False
    for line in text.split("\n"):
        if line.startswith("# %%"):
            markdown = "[markdown]" in line
        elif markdown and (match := re.match(r"# (#{1,6})\s+(.*?)\s*$", line)):
            headings.append(mkdocs_slug(_heading_text(match[2])[0]))
    return _unique(headings, "_")


def links(text: str) -> list[tuple[bool, str]]:
    """``(is an image, target)`` of every link of a Markdown text outside code."""
    text = HOOK.CODE_SPAN.sub("", HOOK.FENCE.sub("", text))
    found: list[tuple[bool, str]] = []

    def inline(chunk: str) -> None:
        for match in HOOK.LINK.finditer(chunk):
            target = match["target"]
            found.append((bool(match["bang"]), target[1:-1] if target.startswith("<") else target))
            inline(match["label"])  # an image inside a link

    inline(text)
    found += [(False, m["target"].strip("<>")) for m in HOOK.REFERENCE.finditer(text)]
    found += [(m[0].lower().startswith("<img"), m[1]) for m in HTML_LINK.finditer(text)]
    return found


def problems(path: str, text: str, files: set[str], read: Callable[[str], str]) -> list[str]:
    """What does not resolve among the links of ``text``, the file ``path`` (from the root)."""
    folders = {posixpath.dirname(f) for f in files}
    folders |= {"/".join(f.split("/")[:i]) for f in folders for i in range(1, f.count("/") + 1)}
    found = []
    for image, target in links(text):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|//", target):
            continue  # a URL
        where, _, anchor = target.partition("#")
        if where.startswith("/"):
            found.append(f"{path}: {target!r} is absolute; link relative to the file")
            continue
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), where)) if where else path
        if resolved.startswith("../") or resolved == "..":
            found.append(f"{path}: {target!r} leads out of the repository")
            continue
        if where and resolved not in files and resolved.rstrip("/") not in folders | {"."}:
            generated = {
                "docs/notebooks/": " (generated by `make docs` and git-ignored: link ../examples/NN_name.py)",
                "docs/index.md": " (generated by `make docs` from the README and git-ignored: link ../README.md)",
            }
            generated = next((why for start, why in generated.items() if resolved.startswith(start)), "")
            found.append(f"{path}: {target!r} -> {resolved} is not in the repository{generated}")
            continue
        if image and not resolved.startswith("docs/"):
            found.append(f"{path}: the image {target!r} is outside docs/, which the site does not serve")
        if not anchor:
            continue
        source = text if resolved == path else read(resolved)
        if re.fullmatch(r"examples/\d\d_\w+\.py", resolved):
            if anchor not in notebook_anchors(source):
                found.append(f"{path}: {target!r}: no heading of the notebook {resolved} has the slug {anchor!r}")
        elif resolved.endswith(".md"):
            on_site, on_github = markdown_anchors(source)
            on_site = on_site if resolved.startswith("docs/") or resolved == "README.md" else on_github
            missing = [name for name, slugs in (("the site", on_site), ("GitHub", on_github)) if anchor not in slugs]
            if missing:
                found.append(
                    f"{path}: {target!r}: no heading of {resolved} has the slug {anchor!r} on {' or '.join(missing)}"
                )
        else:
            found.append(f"{path}: {target!r}: an anchor into {resolved}, which has no headings")
    return found


FILES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    if p.name != "index.md"  # docs/index.md is the README, written by make docs and git-ignored
)


@pytest.mark.parametrize("path", FILES)
def test_every_link_resolves_on_the_repository_view(path):
    files = repository_files()
    assert path in files, f"{path} is not in the repository"
    found = problems(path, (ROOT / path).read_text(), files, lambda p: (ROOT / p).read_text())
    assert not found, "\n".join(found)


def test_a_broken_link_a_generated_page_a_wrong_anchor_and_a_stray_image_are_each_reported():
    files = {"README.md", "docs/usage.md", "docs/figures/a.png", "examples/05_monte_carlo.py", "benchmarks/r.json"}
    texts = {
        "docs/usage.md": "# Using it\n\n## Sharing runs, and moving them\n\nText.\n\n"
        "## Sharing runs, and moving them\n",
        "examples/05_monte_carlo.py": "# %% [markdown]\n# # 05 — Monte Carlo\n# ## The error, as 1/√N\n\n"
        "# %%\n# ## not a heading\n",
    }
    text = """# Synthetic

## The β-VAE

Fine: [a](usage.md), [b](usage.md#sharing-runs-and-moving-them),
[c](../examples/05_monte_carlo.py#the-error-as-1n), [d](../benchmarks/r.json), ![e](figures/a.png),
[f](#synthetic), [g](https://example.org/missing.md), `[h](gone-in-code.md)`, [i](../docs/).

Broken: [one](gone.md), [two](notebooks/05_monte_carlo.md), [three](usage.md#no-such-heading),
[four](#the-β-vae), ![five](../benchmarks/r.json), [six](../examples/05_monte_carlo.py#not-a-heading),
[seven](../../outside.md), [home](index.md), [![eight](figures/none.png)](usage.md), <img src="figures/nine.png">,
[eleven](usage.md#sharing-runs-and-moving-them_1) (a second heading of that name: `_1` here, `-1` on GitHub)

[ten]: gone-too.md
"""
    found = problems("docs/synthetic.md", text, files, texts.__getitem__)
    expected = [  # each broken link, by its target
        "'gone.md'",
        "'notebooks/05_monte_carlo.md'",
        "'usage.md#no-such-heading'",
        "'#the-β-vae'",
        "the image '../benchmarks/r.json'",
        "'../examples/05_monte_carlo.py#not-a-heading'",
        "'../../outside.md'",
        "'figures/none.png'",
        "'figures/nine.png'",
        "'gone-too.md'",
        "'index.md'",
        "'usage.md#sharing-runs-and-moving-them_1'",
    ]
    for needle in expected:
        assert sum(needle in line for line in found) == 1, (needle, found)
    assert len(found) == len(expected), found
    assert "link ../examples/NN_name.py" in next(line for line in found if "notebooks/05" in line)
    assert "link ../README.md" in next(line for line in found if "'index.md'" in line)
    assert "on the site" in next(line for line in found if "the-β-vae" in line)  # GitHub keeps the β


def test_the_site_hook_makes_repository_links_site_links():
    page = """See [Monte Carlo](../examples/05_monte_carlo.py#the-error), [the bench](../benchmarks/README.md),
[`benchmarks/r.json`](../benchmarks/r.json), [usage](usage.md#a), [web](https://example.org/x.py),
[![shot](screenshots/api.png)](../examples/10_latent_space.py), [home](../README.md#two-commands)
and `[code](../examples/01_x.py)`.

```
[fenced](../examples/01_x.py)
```

[ref]: ../examples/04_elbo.py
"""
    assert HOOK.rewrite(page, "learning.md") == page.replace(
        "../examples/05_monte_carlo.py#", "notebooks/05_monte_carlo.md#"
    ).replace("[the bench](../benchmarks/README.md)", "the bench (`benchmarks/README.md`)").replace(
        "[`benchmarks/r.json`](../benchmarks/r.json)", "`benchmarks/r.json`"
    ).replace("](../examples/10_latent_space.py)", "](notebooks/10_latent_space.md)").replace(
        "](../README.md#", "](index.md#"
    ).replace("[ref]: ../examples/04_elbo.py", "[ref]: notebooks/04_elbo.md")
    # a notebook's page (written from examples/NN_name.py) linking another notebook's source
    assert HOOK.rewrite("[next](07_vae_in_pyro.py#top) [p](../plugins.md)", "notebooks/06_reparam_vs_score.md") == (
        "[next](07_vae_in_pyro.md#top) [p](../plugins.md)"
    )


def test_the_docstrings_restructuredtext_is_rendered_as_markdown_for_the_api_page():
    """docs/hooks/rst_docstrings.py (the API page's griffe extension), without a site build."""
    griffe = pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("rst_docstrings", ROOT / "docs" / "hooks" / "rst_docstrings.py")
    rst = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rst)
    known = {"Config": "pyro_vae.config.Config", "pyro_vae.model.fit": "pyro_vae.training.loop.fit"}
    text = """Builds a :class:`Config` (see :func:`~pyro_vae.model.fit`, :meth:`torch.nn.Module.to`).
With :math:`w_k = p(x, z_k)` for C*H*W images, *emphasis*, ``literal_name`` and z_1::

    cfg = load_config("a.toml")   # :class:`Config` stays as written here

.. math::

    \\log p(x) \\ge \\mathcal L_K

:param a, b: two sizes.
"""
    assert rst.convert(text, known.get) == (
        'Builds a <autoref identifier="pyro_vae.config.Config" optional><code>Config</code></autoref> (see '
        '<autoref identifier="pyro_vae.training.loop.fit" optional><code>fit()</code></autoref>, '
        "<code>torch.nn.Module.to()</code>).\n"
        "With $w_k = p(x, z_k)$ for C\\*H\\*W images, *emphasis*, ``literal_name`` and z\\_1:\n\n"
        '```python\ncfg = load_config("a.toml")   # :class:`Config` stays as written here\n```\n\n'
        "$$\n\\log p(x) \\ge \\mathcal L_K\n$$\n\n"
        ":param a: two sizes.\n:param b: two sizes."
    )
    # every docstring of the package: no role and no "::" left outside its code blocks
    loader = griffe.GriffeLoader(extensions=griffe.load_extensions(rst.ReSTDocstrings), search_paths=[str(ROOT)])
    package = loader.load("pyro_vae")
    left = []

    def walk(obj):
        if obj.docstring is not None:
            prose = re.sub(r"(?ms)^(\s*)```.*?^\1```", "", obj.docstring.value)
            left.extend(f"{obj.path}: {m[0]}" for m in re.finditer(rf":(?:{rst.ROLES}|math):`|::\s*$", prose, re.M))
        for member in obj.members.values():
            if not member.is_alias:
                walk(member)

    walk(package)
    assert not left, left
