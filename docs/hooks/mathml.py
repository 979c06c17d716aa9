"""MkDocs hook: the site's maths typeset at build time into MathML, which browsers draw natively.

``pymdownx.arithmatex`` (generic mode) leaves ``$...$`` as ``<span class="arithmatex">\\(...\\)</span>``
and ``$$...$$`` as ``<div class="arithmatex">\\[...\\]</div>``; each is replaced here by the
``<math>`` element ``latex2mathml`` makes of it. No script, font or CDN is involved, at build or
view time. A formula latex2mathml cannot read fails the build, naming the page and the formula.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

MATH = re.compile(r'<(span|div) class="arithmatex">\s*\\([(\[])(.*?)\\[)\]]\s*</\1>', re.S)


def on_page_content(content: str, page, config, files) -> str:
    def typeset(match: re.Match) -> str:
        tag, opening, tex = match.groups()
        display = "block" if opening == "[" else "inline"
        try:
            mathml = convert(html.unescape(tex), display=display)
        except Exception as exc:  # latex2mathml raises several kinds; the page and formula say which
            raise ValueError(f"{page.file.src_path}: cannot typeset {tex!r}: {exc}") from exc
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return MATH.sub(typeset, content)
