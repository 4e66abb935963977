"""Sanitising the HTML of a notebook's outputs before it goes into a shared report page.

Notebook outputs carry data: a pandas table (Styler output is not escaped) shows user-typed run
names as HTML. Whatever they contain, a report page must not run code, fetch anything from the
network or leave the page. ``sanitize_html`` is an allow-list over the elements and attributes
notebook outputs use (tables, text, lists, code, images as ``data:image/...`` URIs, class and
inline styles, Styler's ``<style>`` blocks), done by ``nh3`` (the ammonia sanitiser, which parses
like a browser: content that a browser would read as markup is treated as markup). Everything
else is removed: ``<script>`` (with its content), ``<svg>``/``<math>`` and their animation,
``<iframe>``/``<object>``/``<embed>``, forms, ``on*`` handlers, ``javascript:`` and non-image
``data:`` URLs, and CSS that fetches (``@import``, ``url(...)`` other than an embedded image).
"""

from __future__ import annotations

import re

import nh3

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
# CSS that loads something (or, in old browsers, runs script); embedded images are fine.
CSS_FETCH = re.compile(r"@import|expression\s*\(|javascript:|url\s*\(\s*['\"]?\s*(?!data:image/)", re.IGNORECASE)
STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.IGNORECASE | re.DOTALL)


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    """nh3 attribute filter: the value to keep, or None to drop the attribute."""
    if tag == "img" and attribute == "src":
        return value if EMBEDDED_IMAGE.fullmatch(value.strip()) else None
    if attribute == "href" and re.sub(r"[\s\x00-\x1f]+", "", value).lower().startswith("data:"):
        return None  # a link may go to a web page, never to a document carried in the URL
    if attribute == "style" and CSS_FETCH.search(value):
        return None
    return value


def _drop_fetching_css(match: re.Match) -> str:
    start, css, end = match.groups()
    return f"{start}/* removed: the style loaded external content */{end}" if CSS_FETCH.search(css) else match.group(0)


def sanitize_html(fragment: str) -> str:
    """``fragment`` reduced to the allow-listed elements and attributes (see the module docstring)."""
    cleaned = nh3.clean(
        fragment,
        tags=ALLOWED_TAGS,
        clean_content_tags=DROPPED_WITH_CONTENT,
        attributes=ALLOWED_ATTRIBUTES,
        generic_attribute_prefixes=ALLOWED_ATTRIBUTE_PREFIXES,
        attribute_filter=_filter_attribute,
        url_schemes=LINK_SCHEMES | {"data"},  # data: only survives as an image source (_filter_attribute)
        strip_comments=True,
        link_rel="noopener noreferrer",
    )
    # nh3 keeps an allowed <style> element's text as it is: CSS that fetches is emptied here.
    # nh3's output is well-formed, so every "<style" left in it starts a real element.
    return STYLE_BLOCK.sub(_drop_fetching_css, cleaned)
