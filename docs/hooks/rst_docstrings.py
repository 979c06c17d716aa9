"""Griffe extension: the package's Sphinx-style (reST) docstrings rendered as what they say.

mkdocstrings renders a docstring's text as Markdown, but pyro_vae's docstrings are reST written for
Sphinx, and Markdown would show their markup as it stands (``:class:`` before a code span, ``::``
closing a paragraph). Once griffe has loaded the package (:meth:`ReSTDocstrings.on_package`), every
docstring's text is converted here, in memory; the package's files are not touched:

- a cross-reference role (``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``,
  ``:exc:``, ``:obj:``, ``:const:``, with or without ``py:``) becomes the code Sphinx shows (``~``
  keeps the last name, ``()`` after a function or method, an explicit ``title <target>``), linked
  to the object's entry on the API page where it has one: the name is resolved as Sphinx resolves
  it (the enclosing class, then the module, then the full path; here imports count too) to its
  canonical path, and given to mkdocs-autorefs as an *optional* reference, which links where
  mkdocstrings rendered that object and leaves the code alone where it did not (an undocumented or
  private object, another package's);
- ``:math:`x``` becomes ``$x$`` and a ``.. math::`` directive ``$$ ... $$`` (pymdownx.arithmatex,
  then MathML by ``mathml.py``);
- a paragraph ending in ``::`` followed by an indented literal block becomes the paragraph ending in
  ``:`` (``::`` alone, or after a space, disappears) and a fenced code block (TOML, Python where it
  parses as Python, else plain text), verbatim as reST shows it; a block quote (an indented
  block without the ``::``) is shown the same way, preformatted, for its aligned columns;
- prose is escaped where Markdown would read markup that reST does not: ``_``, a ``*`` that is not
  reST emphasis (``C*H*W``), ``$``, ``<`` before a letter, ``>`` or ``#`` starting a line; a reST
  backslash escape shows the character after it, and a bare URL becomes a link;
- ``:param a, b: ...`` becomes one field per name, as the Sphinx parser griffe uses
  (``docstring_style: sphinx``) reads one name per field.

``double backquotes`` are already Markdown code spans and need nothing. Configured in
``mkdocs.yml`` under the python handler's ``options: extensions:``, by path.
"""

from __future__ import annotations

import ast
import html
import re
import textwrap
from typing import Any

import griffe

ROLES = "class|func|meth|mod|attr|data|exc|obj|const"
INLINE = re.compile(
    rf"(?P<literal>``.+?``)"  # an inline literal: left as it is (Markdown reads it the same way)
    rf"|(?<![\w`]):(?:py:)?(?P<role>{ROLES}):`(?P<text>[^`]+)`"
    rf"|(?<![\w`]):math:`(?P<math>[^`]+)`"
    rf"|(?P<field>^[ \t]*:[a-z]+(?: [^:`\n]+)?:(?!`))"  # a field's marker (:param x:), for the Sphinx parser
    rf"|(?P<url>\bhttps?://[^\s<>`]*[^\s<>`.,;:!?)\]'\"])",  # a standalone hyperlink
    re.S | re.M,
)
# reST emphasis and strong emphasis, by its inline-markup rules: after a space or an opening
# punctuation mark, before a space or a closing one; any other * is an asterisk (C*H*W)
EMPHASIS = re.compile(
    r"(?<![^\s\-:/'\"<(\[{])(\*\*?)(?=\S)(?P<body>(?:(?!\1).)+?)(?<=\S)\1(?=[\s\-.,:;!?\\/'\")\]}>]|$)", re.S
)
MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::(?P<rest>.*)$")
DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::")
SPLIT_PARAMS = re.compile(
    r"^(?P<indent>\s*):(?P<kind>param|parameter|arg|argument|key|keyword) (?P<names>\w+(?:, *\w+)+):(?P<rest>.*)$"
)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_language(lines: list[str]) -> str:
    if any(re.fullmatch(r"\[[\w.\-]+\]\s*", line) for line in lines):
        return "toml"
    try:
        ast.parse("\n".join(lines))
    except SyntaxError:
        return "text"
    return "python"


def _indented_block(lines: list[str], start: int, base: int) -> int:
    """The end (exclusive) of the block of lines from ``start`` indented deeper than ``base``,
    blank lines inside it included and trailing ones left out."""
    end = i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        if lines[i].strip():
            end = i + 1
        i += 1
    return end


def _fence(lines: list[str], pad: str, opening: str, closing: str) -> list[str]:
    body = textwrap.dedent("\n".join(lines)).split("\n")
    return [pad + opening, *(pad + line if line else "" for line in body), pad + closing]


def convert(text: str, resolve) -> str:
    """``text`` (a docstring, reST) as Markdown; ``resolve(target)`` is the canonical path of the
    object a role names, or None."""
    lines = text.split("\n")
    out: list[str] = []  # Markdown, with the verbatim blocks held back as placeholders
    verbatim: list[list[str]] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.extend(_inline("\n".join(paragraph), resolve).split("\n"))
            paragraph.clear()

    def hold(block: list[str]) -> None:
        flush()
        verbatim.append(block)
        out.append(f"\x00{len(verbatim) - 1}\x00")

    i = 0
    while i < len(lines):
        line = lines[i]
        if match := SPLIT_PARAMS.match(line):  # ":param a, b: text" -> ":param a: text" + ":param b: text"
            end = _indented_block(lines, i + 1, _indent(line))
            rest = lines[i + 1 : end]
            for name in re.split(r", *", match["names"]):
                paragraph.extend([f"{match['indent']}:{match['kind']} {name}:{match['rest']}", *rest])
            i = end
            continue
        if match := MATH_DIRECTIVE.match(line):
            base = _indent(line)
            end = _indented_block(lines, i + 1, base)
            body = [match["rest"].strip(), *textwrap.dedent("\n".join(lines[i + 1 : end])).split("\n")]
            body = [b for b in body if not re.match(r"\s*:\w+:", b)]  # directive options (:label:, :nowrap:)
            pad = match["indent"]
            block: list[str] = []
            for equation in re.split(r"\n\s*\n", "\n".join(body).strip()):
                block += ["", pad + "$$", *(pad + e.strip() for e in equation.split("\n")), pad + "$$"]
            hold(block)
            i = end
            continue
        if line.rstrip().endswith("::") and not DIRECTIVE.match(line):
            base = _indent(line)
            stripped = line.rstrip()
            if stripped.strip() == "::":
                marker_gone = None
            elif stripped[-3:-2].isspace():
                marker_gone = stripped[:-2].rstrip()
            else:
                marker_gone = stripped[:-1]
            if marker_gone is not None:
                paragraph.append(marker_gone)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j > i + 1 and j < len(lines) and _indent(lines[j]) > base:
                end = _indented_block(lines, j, base)
                block = lines[j:end]
                language = _block_language(textwrap.dedent("\n".join(block)).split("\n"))
                hold(_fence(block, " " * base, "```" + language, "```"))
                i = end
                continue
            i += 1
            continue
        previous = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if (
            line.strip()
            and i
            and not lines[i - 1].strip()
            and _indent(line) > _indent(previous) == 0
            and not re.match(r":\w|[-*+] |\d+[.)] ", previous)  # not a field's or a list item's next paragraph
        ):
            # A block quote (indented, not introduced by "::"): in these docstrings always aligned
            # columns, so it is shown as they are, preformatted, as a literal block would be.
            end = _indented_block(lines, i, 0)
            hold(_fence(lines[i:end], "", "```text", "```"))
            i = end
            continue
        if not line.strip():
            flush()
            out.append(line)
        else:
            paragraph.append(line)
        i += 1
    flush()
    markdown = re.sub(r"\n{3,}", "\n\n", "\n".join(out))  # (not inside the verbatim blocks)
    # each block with one blank line before and after it, as Markdown needs
    block = re.compile(r"\n*\x00(\d+)\x00\n*")
    markdown = block.sub(lambda m: "\x01" + "\n".join(verbatim[int(m[1])]).strip("\n") + "\x01", markdown)
    return re.sub("\x01+", "\n\n", markdown).strip("\n")


def _plain(text: str) -> str:
    """reST prose with what Markdown would read as markup, and reST does not, escaped: ``_``
    (never emphasis in reST), ``*`` outside reST emphasis, ``$`` (not maths), ``<`` before a
    letter (not HTML), ``>`` and ``#`` starting a line (not a quotation or a heading). A reST
    backslash escape shows the character after it (and an escaped space nothing)."""

    def character(match: re.Match) -> str:
        if match[1] is not None:
            return ""
        char = match[2] or match[3]
        return "\\" + char if not char.isalnum() and not char.isspace() else char

    def escape(part: str) -> str:
        part = re.sub(r"\\(\s)|\\(.)|([_*$])", character, part)
        part = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", part)
        return re.sub(r"(?m)^([ \t]*)([>#])", r"\1\\\2", part)

    out, last = [], 0
    for match in EMPHASIS.finditer(text):
        out += [escape(text[last : match.start()]), match[1], escape(match["body"]), match[1]]
        last = match.end()
    return "".join(out + [escape(text[last:])])


def _inline(text: str, resolve) -> str:
    def replace(match: re.Match) -> str:
        if match["literal"] or match["field"]:
            return match[0]
        if match["url"]:
            return f"<{match['url']}>"
        if match["math"] is not None:
            return "$" + " ".join(match["math"].split()) + "$"
        role, content = match["role"], " ".join(match["text"].split())
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^<>]+)>", content)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            title = target = content
        link = not target.startswith("!")
        target = target.lstrip("!~")
        if not explicit:
            title = title.lstrip("!.")
            if title.startswith("~"):
                title = title[1:].rpartition(".")[2]
            if role in ("func", "meth") and not title.endswith(")"):
                title += "()"  # as Sphinx's add_function_parentheses
        target = target.removesuffix("()")
        code = f"<code>{html.escape(title)}</code>"
        path = resolve(target) if link else None
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    out, last = [], 0
    for match in INLINE.finditer(text):
        out += [_plain(text[last : match.start()]), replace(match)]
        last = match.end()
    return "".join(out + [_plain(text[last:])])


class ReSTDocstrings(griffe.Extension):
    """Converts every docstring of a loaded package from reST to Markdown (see the module's docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        collection = loader.modules_collection

        def walk(obj: griffe.Object):
            yield obj
            for member in obj.members.values():
                if not member.is_alias:
                    yield from walk(member)

        objects = list(walk(pkg))
        paths = [obj.path for obj in objects]

        def lookup(path: str) -> str | None:
            try:
                found = collection[path]
                if found.is_alias:
                    found = found.final_target
            except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                return None
            return found.path

        for obj in objects:
            if obj.docstring is None:
                continue
            scopes = []  # the object itself when it has members of its own, then its enclosing class and module
            scope = obj if (obj.is_class or obj.is_module) else obj.parent
            while scope is not None:
                scopes.append(scope.path)
                scope = scope.parent

            def resolve(target: str, scopes: list[str] = scopes) -> str | None:
                specific = target.startswith(".")
                target = target.lstrip(".")
                for candidate in [*(f"{s}.{target}" for s in scopes), target]:
                    if found := lookup(candidate):
                        return found
                if specific:  # Sphinx's ".name": a unique object whose path ends with it
                    matches = [p for p in paths if p.endswith("." + target)]
                    if len(matches) == 1:
                        return matches[0]
                return None

            obj.docstring.value = convert(obj.docstring.value, resolve)
