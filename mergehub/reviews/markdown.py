"""Review comments as HTML: CommonMark plus tables and strikethrough, with every piece of raw HTML
in the source escaped (never passed through), links limited to safe schemes, and no images (an
image would be fetched from wherever the comment points, by every reader's browser)."""

from __future__ import annotations

from functools import lru_cache

from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # "js-default": html off (raw HTML is escaped as text) and markdown-it's link validation,
    # which refuses javascript:, vbscript:, file: and data: URLs (a refused link stays text).
    parser = MarkdownIt("js-default", {"linkify": False, "typographer": False}).disable("image")

    def link_open(renderer, tokens, idx, options, env):
        # a reader's click leaves MergeHub without telling the linked site where from; the
        # link is the commenter's, not an endorsement
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return renderer.renderToken(tokens, idx, options, env)

    parser.add_render_rule("link_open", link_open)
    return parser


def render(source: str) -> SafeString:
    """``source`` (a comment's Markdown) as HTML that is safe to put on a page as is."""
    return mark_safe(_parser().render(source or ""))  # safe: raw HTML escaped, links validated
