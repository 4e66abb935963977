"""Sanitising the HTML of a notebook's outputs before it goes into a shared report page.

Notebook outputs carry data: a pandas table (Styler output is not escaped) shows user-typed run
names as HTML. Whatever they contain, a report page must not run code, fetch anything from the
network, leave the page, or change how the rest of the page looks. ``sanitize_html`` is an
allow-list over the elements and attributes notebook outputs use (tables, text, lists, code, images
as ``data:image/...`` URIs, class and inline styles, Styler's ``<style>`` blocks), done by ``nh3``
(the ammonia sanitiser, which parses like a browser: content that a browser would read as markup is
treated as markup). Everything else is removed: ``<script>`` (with its content), ``<svg>``/``<math>``
and their animation, ``<iframe>``/``<object>``/``<embed>``, forms, ``on*`` handlers, ``javascript:``
and non-image ``data:`` URLs.

CSS (style attributes and ``<style>`` blocks) is parsed by ``tinycss2``, which decodes CSS escapes
(``u\\72l(`` is ``url(``) as a browser does, and only allow-listed properties whose values hold
plain keywords, numbers, colours, strings and a few functions (``rgb()``, ``calc()``, gradients) are
kept: no ``url()``/``image-set()``, no at-rule (``@import``, ``@font-face``, ``@media`` ...), no
``position``, ``z-index``, ``transform``, ``opacity``, outlines, shadows or negative margins (nothing
can be laid over the page).
A ``<style>`` whose text holds tags (a run named ``<style>`` in a table cell) is shown as text.
Each output is cleaned on its own (``scope``): its tags are balanced, so an unclosed element cannot
swallow the next output, and it is wrapped in ``<div class="vqalab-scope-...">`` with every selector
of its ``<style>`` blocks prefixed by that class, so its styles apply inside that output only.
"""

from __future__ import annotations

import re

import nh3
import tinycss2

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "details",
    "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
    "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong", "style",
    "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul", "var",
}
# Removed together with their content (the rest of a disallowed element's text stays, as text).
DROPPED_WITH_CONTENT = {"script", "noscript", "template", "iframe", "object", "embed", "svg", "math"}
ALLOWED_ATTRIBUTES = {
    "*": {"class", "id", "style", "title", "lang", "dir", "tabindex"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "table": {"border", "cellpadding", "cellspacing"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign", "scope"},
    "col": {"span", "width"},
    "ol": {"start", "type"},
    "style": {"type"},
}
# nbconvert marks output areas with data-mime-type (its CSS styles stderr by it); data-* cannot run code.
ALLOWED_ATTRIBUTE_PREFIXES = {"data-"}
LINK_SCHEMES = {"http", "https", "mailto"}  # following a link is the reader's choice
EMBEDDED_IMAGE = re.compile(r"data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*", re.IGNORECASE)
# ids of the report's own sections (report_templates): an output taking one would receive its links
PAGE_IDS = re.compile(r"contents|environment|parameters|since-last-week|study-.*", re.DOTALL)  # ids match by case
STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.IGNORECASE | re.DOTALL)
STYLE_START, STYLE_END = re.compile(r"<style(?=[\s/>])", re.IGNORECASE), re.compile(r"</style", re.IGNORECASE)
MARKUP = re.compile(r"<[A-Za-z/!?]")  # never in real CSS: the start of a tag, end tag or comment

# CSS: properties that colour, size and align boxes and text in the flow. Nothing that positions a
# box out of the flow or over others (position, inset, top/left, z-index, transform, translate), that
# paints outside its box or above the page's content (outline, box-shadow, text-shadow; opacity and
# filter lift a box above the flow) and nothing whose value is a resource (cursor, list-style-image,
# content, mask, behavior).
ALLOWED_CSS_PROPERTIES = {
    "color", "background", "background-color", "background-image", "background-position", "background-size",
    "background-repeat", "background-clip", "visibility", "display", "float", "clear", "box-sizing",
    "width", "height", "min-width", "min-height", "max-width", "max-height",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left", "border-color", "border-style",
    "border-width", "border-radius", "border-collapse", "border-spacing",
    *(f"border-{side}-{part}" for side in ("top", "right", "bottom", "left") for part in ("color", "style", "width")),
    "font", "font-family", "font-size", "font-style", "font-weight", "font-variant", "line-height",
    "letter-spacing", "word-spacing", "text-align", "text-decoration", "text-transform", "vertical-align",
    "white-space", "word-break", "overflow-wrap", "word-wrap", "text-overflow", "direction",
    "overflow", "overflow-x", "overflow-y", "table-layout", "caption-side", "empty-cells",
    "list-style-type", "list-style-position",
}
# Functions in a value: colours, arithmetic and gradients; none of them loads anything.
ALLOWED_CSS_FUNCTIONS = {
    "rgb", "rgba", "hsl", "hsla", "calc", "min", "max", "clamp",
    "linear-gradient", "repeating-linear-gradient", "radial-gradient", "repeating-radial-gradient",
}
VALUE_TOKENS = {"whitespace", "ident", "number", "percentage", "dimension", "hash", "string"}
VALUE_LITERALS = {",", "/", "+", "-", "*"}
# Selectors: type, class, id, attribute and these pseudo-classes, with descendant/child/sibling steps.
ALLOWED_PSEUDO_CLASSES = {"hover", "first-child", "last-child", "only-child", "first-of-type", "last-of-type",
                          "only-of-type", "empty"}
ALLOWED_PSEUDO_FUNCTIONS = {"nth-child", "nth-last-child", "nth-of-type", "nth-last-of-type"}
COMBINATORS = {">", "+", "~"}
SCOPE_PREFIX = "vqalab-scope-"  # class of the element wrapping one cleaned output


def _tokens_are_plain(tokens, literals=VALUE_LITERALS) -> bool:
    """True when a value is only keywords, numbers, colours, strings and allowed functions of those
    (tinycss2 tokens: escapes are already decoded, ``u\\72l(x)`` arrives as a url token)."""
    for token in tokens:
        if token.type == "function":
            if token.lower_name not in ALLOWED_CSS_FUNCTIONS or not _tokens_are_plain(token.arguments):
                return False
        elif token.type == "literal":
            if token.value not in literals:
                return False
        elif token.type not in VALUE_TOKENS:  # url, at-keyword, blocks, unicode-range, bad tokens...
            return False
    return True


NO_NEGATIVE = ("margin", "letter-spacing", "word-spacing")  # a negative one moves content over its neighbours


def _negative(tokens) -> bool:
    return any(t.type in ("number", "dimension", "percentage") and t.value < 0 for t in tokens)


def clean_declarations(css) -> str:
    """The allowed declarations of ``css`` (a style attribute's text, or a rule's content tokens),
    serialised as ``name: value; ...``; '' when none is left."""
    kept = []
    for item in tinycss2.parse_blocks_contents(css, skip_comments=True, skip_whitespace=True):
        if item.type != "declaration":  # nested rules, at-rules, parse errors
            continue
        name = item.lower_name  # escapes decoded: b\61ckground is background
        if (name not in ALLOWED_CSS_PROPERTIES or not _tokens_are_plain(item.value)
                or (name.startswith(NO_NEGATIVE) and _negative(item.value))):
            continue
        value = tinycss2.serialize(item.value).strip()
        kept.append(f"{name}: {value}{' !important' if item.important else ''}")
    return _no_markup("; ".join(kept))


def _selector_is_plain(tokens) -> bool:
    if not tokens or (tokens[0].type == "literal" and tokens[0].value in COMBINATORS):
        return False  # "~ .x" after the scope would reach the scope's siblings
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.type in ("whitespace", "ident", "hash") or (token.type == "literal" and token.value in ("*", *COMBINATORS)):
            pass
        elif token.type == "literal" and token.value == ".":
            if i + 1 >= len(tokens) or tokens[i + 1].type != "ident":
                return False
            i += 1
        elif token.type == "literal" and token.value == ":":  # one colon: pseudo-elements (::) are refused
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if following is None:
                return False
            if following.type == "ident" and following.lower_value in ALLOWED_PSEUDO_CLASSES:
                pass
            elif following.type == "function" and following.lower_name in ALLOWED_PSEUDO_FUNCTIONS:
                if not all(a.type in ("whitespace", "ident", "number", "dimension")
                           or (a.type == "literal" and a.value in "+-") for a in following.arguments):
                    return False
            else:
                return False
            i += 1
        elif token.type == "[] block":
            if not all(a.type in ("whitespace", "ident", "string")
                       or (a.type == "literal" and a.value in ("=", "~=", "|=", "^=", "$=", "*=")) for a in token.content):
                return False
        else:
            return False
        i += 1
    return True


def _is_scoped(tokens) -> bool:
    return (len(tokens) >= 3 and tokens[0].type == "literal" and tokens[0].value == "."
            and tokens[1].type == "ident" and tokens[1].value.startswith(SCOPE_PREFIX)
            and tokens[2].type == "whitespace")


def _selectors(prelude, scope: str | None) -> list[str]:
    """The plain selectors of a rule, each prefixed with ``.scope`` (``scope`` None: only those
    already prefixed with a scope class are kept)."""
    selectors, current = [], []
    for token in [*prelude, None]:
        if token is None or (token.type == "literal" and token.value == ","):
            while current and current[0].type == "whitespace":
                current.pop(0)
            while current and current[-1].type == "whitespace":
                current.pop()
            if current and _selector_is_plain(current) and (scope is not None or _is_scoped(current)):
                text = tinycss2.serialize(current)
                selectors.append(f".{scope} {text}" if scope is not None else text)
            current = []
        else:
            current.append(token)
    return selectors


def clean_stylesheet(css: str, scope: str | None) -> str:
    """The rules of a ``<style>`` block with plain selectors and allowed declarations, every selector
    prefixed with ``.scope``. At-rules (``@import``, ``@font-face``, ``@media``, escaped or not) are
    dropped. ``scope`` None keeps only rules already scoped (a second cleaning of a cleaned page)."""
    rules = []
    for rule in tinycss2.parse_stylesheet(css, skip_comments=True, skip_whitespace=True):
        if rule.type != "qualified-rule":
            continue
        selectors = _selectors(rule.prelude, scope)
        declarations = clean_declarations(rule.content)
        if selectors and declarations:
            rules.append(f"{', '.join(selectors)} {{ {declarations} }}")
    return _no_markup("\n".join(rules))


def _no_markup(css: str) -> str:
    """``<`` can only be left inside a CSS string: written as its escape, it cannot end the element."""
    return css.replace("<", "\\3c ")


def _style_tags_holding_markup_as_text(fragment: str) -> str:
    """``fragment`` with each ``<style`` start tag whose text (up to ``</style``) holds markup written
    as text (``&lt;style``): a run named ``<style>`` in a table cell would otherwise turn the rest of
    the output into a stylesheet. A real stylesheet (pandas puts one before its table) holds no tags."""
    parts, done = [], 0
    for start in STYLE_START.finditer(fragment):
        if start.start() < done:
            continue
        tag_end = fragment.find(">", start.end())
        end = STYLE_END.search(fragment, start.end())
        text = fragment[tag_end + 1:end.start() if end else len(fragment)] if tag_end >= 0 else ""
        if MARKUP.search(text):
            parts.append(fragment[done:start.start()] + "&lt;" + start.group()[1:])
            done = start.end()
    return "".join(parts) + fragment[done:]


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    """nh3 attribute filter: the value to keep, or None to drop the attribute."""
    if tag == "img" and attribute == "src":
        return value if EMBEDDED_IMAGE.fullmatch(value.strip()) else None
    if attribute == "href" and re.sub(r"[\s\x00-\x1f]+", "", value).lower().startswith("data:"):
        return None  # a link may go to a web page, never to a document carried in the URL
    if attribute == "style":
        return clean_declarations(value) or None
    if attribute == "id" and PAGE_IDS.fullmatch(value.strip()):
        return None
    return value


def sanitize_html(fragment: str, scope: str | None = None) -> str:
    """``fragment`` reduced to the allow-listed elements, attributes and CSS (see the module docstring).

    ``scope``: a class name starting with ``SCOPE_PREFIX``, unique to this output in the report: the
    result is wrapped in an element of that class and its ``<style>`` rules apply inside it only.
    None: style rules not already scoped that way are dropped.
    """
    if scope is not None and not re.fullmatch(rf"{SCOPE_PREFIX}[A-Za-z0-9_-]+", scope):
        raise ValueError(f"scope {scope!r}: expected {SCOPE_PREFIX} followed by letters, digits, - or _")
    cleaned = nh3.clean(
        _style_tags_holding_markup_as_text(fragment),
        tags=ALLOWED_TAGS,
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        generic_attribute_prefixes=ALLOWED_ATTRIBUTE_PREFIXES,
        attribute_filter=_filter_attribute,
        url_schemes=LINK_SCHEMES | {"data"},  # data: only survives as an image source (_filter_attribute)
        strip_comments=True,
        link_rel="noopener noreferrer",
    )
    # nh3 keeps an allowed <style> element's text as it is; nh3's output is well-formed, so every
    # "<style" left in it starts a real element.
    cleaned = STYLE_BLOCK.sub(lambda m: m.group(1) + clean_stylesheet(m.group(2), scope) + m.group(3), cleaned)
    return f'<div class="{scope}">{cleaned}</div>' if scope is not None else cleaned
