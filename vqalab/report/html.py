"""Cleaning the HTML of a notebook's outputs before it goes into a report page."""

from __future__ import annotations

import re

# Elements that run code, load other documents or change how the page resolves links: in a
# notebook's outputs they can only come from data (a user-typed name in an HTML table), so they
# are shown as text. nbconvert's own sanitizer also escapes ordinary tags (<p>, <th>).
UNSAFE_ELEMENTS = ("script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "link",
                   "meta", "form", "noscript", "template")
URL_ATTRIBUTES = ("src", "srcset", "href", "xlink:href", "action", "formaction", "poster", "data",
                  "background", "lowsrc")
_EXTERNAL_CSS = re.compile(r"@import|url\(\s*['\"]?\s*(?:https?:)?//", re.IGNORECASE)


def _unsafe_url(tag: str, attribute: str, value: str) -> bool:
    url = re.sub(r"[\s\x00-\x1f]+", "", value).lower()
    if url.startswith(("javascript:", "vbscript:", "data:text/html", "data:application")):
        return True
    # links may point anywhere (following one is the reader's choice); nothing may be fetched
    return not (tag == "a" and attribute == "href") and url.startswith(("http:", "https:", "//", "ftp:"))


def neutralize_html(fragment: str) -> str:
    """``fragment`` with scripts, external loads and event handlers shown as text or removed."""
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(fragment, "html.parser")
    for element in soup.find_all(UNSAFE_ELEMENTS):
        element.replace_with(NavigableString(str(element)))
    for style in soup.find_all("style"):
        if _EXTERNAL_CSS.search(style.get_text()):
            style.replace_with(NavigableString(str(style)))
    for element in soup.find_all(True):
        for attribute in list(element.attrs):
            value = element.attrs[attribute]
            value = " ".join(value) if isinstance(value, list) else str(value)
            name = attribute.lower()
            if name.startswith("on") \
                    or (name in URL_ATTRIBUTES and _unsafe_url(element.name, name, value)) \
                    or (name == "style" and _EXTERNAL_CSS.search(value)):
                del element.attrs[attribute]
    return str(soup)
