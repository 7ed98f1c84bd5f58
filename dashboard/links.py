"""Shareable URLs: each page keeps its main choices in the query string, and pages link to each other.

``/errors?family=F&test_set=T`` opens Errors with that family and test set chosen, and opening the
same address later (or sending it to a colleague) restores them. Two rules keep the address bar and
the widgets agreeing without fighting:

* :func:`adopt` (before a widget is drawn) copies a parameter into the widget's state only when the
  URL brings a value this page has not seen yet (a link was followed, an address was typed), so the
  user's own changes are never overwritten on the next rerun;
* :func:`publish` (after the widgets) writes the current choices back and records them as seen.

What was seen is forgotten when the page changes (:func:`enter`, called by ``app.py``), so following
the same link twice restores it twice. Links are either Streamlit page links (same session, no reload)
or plain relative URLs (:func:`href`) for HTML thumbnails and table link columns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from urllib.parse import urlencode

import streamlit as st

from .navigation import PAGES, PageSpec

# the query parameters, one name per concept, shared by every page
PATCH = "patch"  # a stored patch id
SET = "set"  # an embedding set: recipe id (or model name)
OUTPUT = "output"  # one output of that set
FAMILY = "family"  # a run family id (repeatable on Compare)
FOLD = "fold"  # -1 = fold ensemble, 0..4
TEST_SET = "test_set"

_SEEN = "_url_seen"  # session key: {widget key: the raw URL values last adopted or published}
_PAGE = "_url_page"


def spec(key: str) -> PageSpec:
    return next(p for p in PAGES if p.key == key)


def enter(page_key: str) -> None:
    """Forget what the previous page adopted and published (``app.py``, every run)."""
    if st.session_state.get(_PAGE) != page_key:
        st.session_state[_PAGE] = page_key
        st.session_state[_SEEN] = {}


def _seen() -> dict:
    return st.session_state.setdefault(_SEEN, {})


def _raw(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def adopt(key: str, param: str, valid: Collection | Callable[[object], bool] | None = None,
          cast: Callable[[str], object] = str, many: bool = False) -> bool:
    """Set widget state ``key`` from URL parameter ``param`` when the URL holds values not yet seen.

    Values that fail ``cast`` or ``valid`` (a collection of allowed values, or a predicate) are left
    out; ``many``: the widget holds a list (a multiselect). Returns whether the state was set."""
    raw = tuple(st.query_params.get_all(param))
    seen = _seen()
    if not raw or seen.get(key) == raw:
        return False
    seen[key] = raw
    vals = []
    for r in raw:
        try:
            v = cast(r)
        except (TypeError, ValueError):
            continue
        ok = valid is None or (valid(v) if callable(valid) else v in valid)
        if ok:
            vals.append(v)
    if not vals:
        return False
    st.session_state[key] = vals if many else vals[0]
    return True


def publish(param: str, key: str, value) -> None:
    """Write widget ``key``'s current ``value`` to the address bar as ``param`` (None or empty: drop
    it), and record it as seen so the next rerun does not adopt it back."""
    raw = _raw(value)
    _seen()[key] = raw
    if tuple(st.query_params.get_all(param)) == raw:
        return
    if raw:
        st.query_params[param] = list(raw) if len(raw) > 1 else raw[0]
    elif param in st.query_params:
        del st.query_params[param]


def bound(key: str, param: str, widget: Callable[[], object], **adopt_kw):
    """Draw ``widget`` (a callable drawing one widget with ``key=key``) with its state bound to URL
    parameter ``param``: adopted before, published after. Returns the widget's value."""
    adopt(key, param, **adopt_kw)
    value = widget()
    publish(param, key, value)
    return value


def href(page_key: str, **params) -> str:
    """A relative URL of a page with these query parameters (None left out), for HTML links and
    ``LinkColumn`` cells: ``href("similarity", patch="ab12")`` -> ``similarity?patch=ab12``."""
    q = urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    return (page_key or ".") + (f"?{q}" if q else "")


def page_link(container, page_key: str, label: str, help: str | None = None, **params) -> None:
    """A link to another page in the same session (no reload) with these query parameters."""
    container.page_link(str(spec(page_key).path), label=label, help=help,
                        query_params={k: v for k, v in params.items() if v is not None})
